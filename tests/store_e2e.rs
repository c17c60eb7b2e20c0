//! Encryption at rest: with `[agent] store_key` no token issued reaches any
//! file of the state dir; a restart with the key restores the tokens, one
//! with a wrong key logs in afresh. Without a key, no refresh token is
//! written.

use crate::util::*;
use standins::{Kind, Mode, Standin};

/// Every byte of every file under `dir` (sled's files, the mirror, ...).
fn all_bytes(dir: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.extend(std::fs::read(e.path()).unwrap());
            }
        }
    }
    out
}

/// The tokens of `tokens` found anywhere in the state dir.
fn on_disk(dir: &TempDir, tokens: &[String]) -> Vec<String> {
    let bytes = all_bytes(&dir.join("state"));
    tokens
        .iter()
        .filter(|t| bytes.windows(t.len()).any(|w| w == t.as_bytes()))
        .cloned()
        .collect()
}

/// Starts the agent, gets every provider's token and renews each a few
/// times; returns the tokens last served, after a clean stop.
fn run_and_renew(dir: &TempDir) -> Vec<(String, String)> {
    let mut agent = Agent::start(dir);
    for name in PROVIDERS {
        agent.wait_token(name);
        for _ in 0..3 {
            let a = agent.ask(&format!("REFRESH {name}"));
            assert_eq!(a["ok"], true, "{name}: {a}");
        }
    }
    let served = PROVIDERS
        .iter()
        .map(|&n| {
            let t = agent.ask(&format!("TOKEN {n}"))["access_token"]
                .as_str()
                .unwrap()
                .to_owned();
            (n.to_owned(), t)
        })
        .collect();
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    served
}

fn all_partners(partners: &Standin, mode: Mode) {
    for kind in Kind::ALL {
        partners.set_mode(kind, mode.clone());
    }
}

#[test]
fn a_sealed_store_holds_no_token_and_a_wrong_key_means_a_fresh_login() {
    let dir = TempDir::new("sealed");
    let partners = standin();
    let config = config_text(
        &dir,
        &store_key_config(&dir, 1),
        &format!("{NO_COOLDOWN}\n{}", partners.providers_toml()),
    );
    write_config(&dir, &config);
    let served = run_and_renew(&dir);
    let issued = partners.issued();
    assert!(issued.len() >= PROVIDERS.len() * 4, "{}", issued.len());
    assert!(
        issued.iter().any(|t| t.starts_with("rT")),
        "refresh tokens issued"
    );
    assert_eq!(on_disk(&dir, &issued), Vec::<String>::new());

    // The key restores every token, with every partner unreachable.
    all_partners(&partners, Mode::Close);
    let mut agent = Agent::start(&dir);
    for (name, token) in &served {
        assert_eq!(
            agent.ask(&format!("TOKEN {name}"))["access_token"],
            token.as_str()
        );
    }
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    assert!(!agent.log_text().contains("do not open"));

    // A wrong key: one clear line, no crash, a fresh login for each.
    store_key_config(&dir, 2);
    all_partners(&partners, Mode::Normal);
    let before = agent.log_text().len();
    let mut agent = Agent::start(&dir);
    for (name, old) in &served {
        let fresh = agent.wait_token(name);
        assert_ne!(fresh["access_token"], old.as_str(), "{name}");
    }
    let log = agent.log_text()[before..].to_owned();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("store_key")).collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert!(
        lines[0].contains("6 stored records do not open with agent.store_key"),
        "{}",
        lines[0]
    );
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    assert_eq!(on_disk(&dir, &partners.issued()), Vec::<String>::new());
    // The fresh tokens replaced the records: the new key restores them.
    all_partners(&partners, Mode::Close);
    let agent = Agent::start(&dir);
    for name in PROVIDERS {
        assert_eq!(agent.ask(&format!("TOKEN {name}"))["ok"], true, "{name}");
    }
}

#[test]
fn without_a_key_no_refresh_token_is_written() {
    let dir = TempDir::new("nokey");
    let partners = standin();
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let served = run_and_renew(&dir);
    let refresh: Vec<String> = partners
        .issued()
        .into_iter()
        .filter(|t| t.starts_with("rT"))
        .collect();
    assert!(!refresh.is_empty());
    assert_eq!(on_disk(&dir, &refresh), Vec::<String>::new());
    // Access tokens are kept (plain, as documented) and restored.
    let access: Vec<String> = served.iter().map(|(_, t)| t.clone()).collect();
    assert_eq!(on_disk(&dir, &access).len(), access.len());

    // Asked for explicitly: kept.
    write_config(
        &dir,
        &config_text(&dir, "persist_refresh_tokens = true", &providers),
    );
    run_and_renew(&dir);
    let refresh: Vec<String> = partners
        .issued()
        .into_iter()
        .filter(|t| t.starts_with("rT"))
        .collect();
    assert!(!on_disk(&dir, &refresh).is_empty());
}
