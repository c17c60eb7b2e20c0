//! The config loader, `config::parse` (what `load` and `check-config` run
//! on the file's text), on any text. It resolves secrets from files, the
//! environment and systemd credentials, and reads `ca_file`s: here the
//! environment is a fixed map, relative paths resolve inside a private
//! temporary directory holding a few fixture files, and an input whose
//! parsed TOML names a `file`/`ca_file` outside it (absolute, or with a `..`)
//! is skipped before the loader sees it, so no input reads other files. The
//! loader writes nothing.
//!
//! Invariants: no panic; parsing is deterministic; an error never quotes an
//! inline secret (`client_secret`, `auth_key`, `password`, `partner_secret`)
//! nor the secrets in the fixture files and environment. A secret is judged
//! quoted when the message holds it and no longer does once that one
//! occurrence in the text is replaced by a different string of the same
//! shape (so text the message quotes for another reason does not count).
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::config;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

const FILE_SECRET: &str = "FS-s3cr3t-from-file";
const CREDENTIAL_SECRET: &str = "CR-s3cr3t-credential";
const ENV_SECRET: &str = "EV-s3cr3t-from-env";
const SECRET_KEYS: [&str; 4] = ["client_secret", "auth_key", "password", "partner_secret"];
// Any PEM certificate block passes `http::check_ca_pem`.
const CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MIIBszCCAVmgAwIBAgIUQnVpbHQgZm9yIHRoZSBmdXp6IHRhcmdldDAKBggqhkjO\n\
PQQDAjAUMRIwEAYDVQQDDAlmdXp6LXRlc3QwHhcNMjYwMTAxMDAwMDAwWhcNMzYw\n\
-----END CERTIFICATE-----\n";

fn sandbox() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "shop-auth-agent-fuzz-config-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(dir.join("creds")).unwrap();
        std::fs::write(dir.join("secret.txt"), format!("{FILE_SECRET}\n")).unwrap();
        std::fs::write(dir.join("empty.txt"), "").unwrap();
        std::fs::write(dir.join("ca.pem"), CA_PEM).unwrap();
        std::fs::write(dir.join("not-a-ca.pem"), "hello\n").unwrap();
        std::fs::write(dir.join("creds").join("client_secret"), CREDENTIAL_SECRET).unwrap();
        dir
    })
}

fn env(name: &str) -> Option<String> {
    match name {
        "CREDENTIALS_DIRECTORY" => Some(sandbox().join("creds").display().to_string()),
        "SECRET_FROM_ENV" => Some(ENV_SECRET.to_owned()),
        "STATE_DIRECTORY" => Some("/var/lib/shop-auth-agent-fuzz:/other".to_owned()),
        _ => None,
    }
}

/// Whether every `file`/`ca_file` the text names stays inside the sandbox.
fn confined(v: &toml::Value) -> bool {
    match v {
        toml::Value::Table(t) => t.iter().all(|(k, v)| match (k.as_str(), v) {
            ("file" | "ca_file", toml::Value::String(p)) => {
                !p.contains('\0')
                    && Path::new(p)
                        .components()
                        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
            }
            _ => confined(v),
        }),
        toml::Value::Array(a) => a.iter().all(confined),
        _ => true,
    }
}

fn run(text: &str, world_readable: bool) -> Result<config::Settings, String> {
    config::parse(text, "fuzz.toml", Some(sandbox()), world_readable, &env).map_err(|e| {
        assert!(!e.problems.is_empty(), "an error with no problem");
        e.to_string()
    })
}

/// Inline secrets as written: `KEY = "VALUE` or `KEY = 'VALUE`, the value's
/// leading run of `[A-Za-z0-9_-]`, 8 characters or more.
fn inline_secrets(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for key in SECRET_KEYS {
        for (at, _) in text.match_indices(key) {
            let rest = &text[at + key.len()..];
            let rest = rest.trim_start_matches([' ', '\t']);
            let Some(rest) = rest.strip_prefix('=') else {
                continue;
            };
            let rest = rest.trim_start_matches([' ', '\t']);
            let Some(rest) = rest.strip_prefix(['"', '\'']) else {
                continue;
            };
            let n = rest
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
                .count();
            if n >= 8 {
                let start = text.len() - rest.len();
                out.push((start, &rest[..n]));
            }
        }
    }
    out
}

/// The same shape, every character different.
fn disguise(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='y' | 'A'..='Y' | '0'..='8' => (c as u8 + 1) as char,
            'z' => 'a',
            'Z' => 'A',
            '9' => '0',
            other => other,
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(tree) = text.parse::<toml::Table>() {
        if !confined(&toml::Value::Table(tree)) {
            return;
        }
    }
    let first = run(text, false);
    assert_eq!(run(text, false), first, "parsing is not deterministic");
    let _ = run(text, true);
    let Err(message) = first else { return };

    for s in [FILE_SECRET, CREDENTIAL_SECRET, ENV_SECRET] {
        if !text.contains(s) {
            assert!(
                !message.contains(s),
                "secret {s:?} from outside the text quoted: {message}"
            );
        }
    }
    for (at, secret) in inline_secrets(text) {
        if text.matches(secret).count() != 1 || !message.contains(secret) {
            continue;
        }
        let mut other = String::with_capacity(text.len());
        other.push_str(&text[..at]);
        other.push_str(&disguise(secret));
        other.push_str(&text[at + secret.len()..]);
        if let Err(m) = run(&other, false) {
            assert!(
                m.contains(secret),
                "inline secret {secret:?} quoted in the error:\n{message}"
            );
        }
    }
});
