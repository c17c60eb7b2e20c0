//! Shared test scaffolding: temp dirs, configs, the real agent binary as a
//! child process, a socket client, and polling with deadlines (never sleeps
//! as synchronisation).

#![allow(dead_code)]

use serde_json::Value;
use standins::{Standin, StandinOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The providers `Standin::providers_toml` configures.
pub const PROVIDERS: [&str; 6] = [
    "autoleap",
    "autovit",
    "autovit_partner",
    "carrental",
    "makeleaps",
    "oauth2",
];

pub const BIN: &str = env!("CARGO_BIN_EXE_shop-auth-agent");

/// The runner cargo starts this test binary with, split on whitespace:
/// `CARGO_TARGET_<TRIPLE>_RUNNER` for the target the suite was built for,
/// as `cross test` sets it in its images (e.g. `qemu-aarch64 -L
/// /usr/aarch64-linux-gnu`) and `packaging/arm-test` and
/// `.cargo/config.toml` set it for the ARM targets. Empty when none is set.
///
/// The triple is read from the agent binary's path: cargo puts what it builds
/// for `--target T` in `<target-dir>/T/<profile>/`. A native build (no
/// `--target`) has no triple there and runs the agent directly.
pub fn runner() -> Vec<String> {
    let triple = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .and_then(Path::file_name)
        .and_then(|t| t.to_str())
        .unwrap_or_default();
    if triple.is_empty() {
        return Vec::new();
    }
    let var = format!(
        "CARGO_TARGET_{}_RUNNER",
        triple.to_ascii_uppercase().replace(['-', '.'], "_")
    );
    std::env::var(var)
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Whether the agent runs through a runner (qemu-user under `cross test` or
/// `packaging/arm-test`), where everything is many times slower than on the
/// device.
pub fn emulated() -> bool {
    !runner().is_empty()
}

/// Generous: the suite also runs under qemu-user emulation.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A command running the agent binary, through the runner cargo runs this
/// test binary with (see [`runner`]), so that no binfmt_misc is needed:
/// cross's containers have none.
pub fn bin() -> Command {
    let mut words = runner().into_iter();
    match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(BIN);
            c
        }
        None => Command::new(BIN),
    }
}

/// Linux capabilities the tests that skip look for.
pub const CAP_CHOWN: u32 = 0;
pub const CAP_SETGID: u32 = 6;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SYS_ADMIN: u32 = 21;

/// Whether this process holds `cap` in its effective set. Being root is not
/// enough: a container's root usually lacks CAP_SYS_ADMIN, and a container
/// may run the suite as another user (cross runs it as the caller's uid).
pub fn has_cap(cap: u32) -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << cap) != 0)
}

/// `Err` with the reason when this process cannot start a client as another
/// uid (setuid and setgid in the child need CAP_SETUID and CAP_SETGID).
pub fn can_switch_users() -> Result<(), String> {
    if has_cap(CAP_SETUID) && has_cap(CAP_SETGID) {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    Err(format!(
        "running a client as another uid needs CAP_SETUID and CAP_SETGID, \
         which this process (euid {euid}) lacks: run the suite as root, \
         outside a container or in one that keeps those capabilities"
    ))
}

/// Says on stdout that (and why) a test or part of one is skipped; the
/// test then passes. Shown with `--nocapture`, and in the output of a test
/// that fails.
pub fn skip(why: &str) {
    println!("SKIP: {why}");
}

/// Polls `f` until it returns `Some`, failing the test at the deadline.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("saa-test-{tag}-{}", shop_auth_agent::rand::hex(10)));
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Makes the Autovit stand-in take the refresh grant its document does not
/// list (it refuses it by default, as the partner plausibly does).
pub fn takes_autovit_refresh_grant(partners: &Standin) {
    partners.set_format(
        standins::Kind::Autovit,
        standins::Format {
            refresh_grant: true,
            ..standins::Format::of(standins::Kind::Autovit)
        },
    );
}

pub fn standin() -> Standin {
    Standin::start(StandinOptions::default()).unwrap()
}

pub fn standin_with_lifetime(lifetime: Duration) -> Standin {
    Standin::start(StandinOptions {
        lifetime,
        ..StandinOptions::default()
    })
    .unwrap()
}

/// `[defaults]` for tests that renew again and again with REFRESH: no
/// cooldown (each REFRESH asks the partner unless a backoff runs).
pub const NO_COOLDOWN: &str = "[defaults]\nrefresh_cooldown = \"0s\"\n";

/// A config for an agent in `dir` with `providers` TOML appended.
pub fn config_text(dir: &TempDir, extra_agent: &str, providers: &str) -> String {
    format!(
        "[agent]\nsocket = {:?}\nstate_dir = {:?}\n{extra_agent}\n\n{providers}",
        dir.join("agent.sock").display().to_string(),
        dir.join("state").display().to_string(),
    )
}

/// Writes a store key (32 bytes of `byte`, base64) to `<dir>/store-key` and
/// returns the `[agent]` line that uses it.
pub fn store_key_config(dir: &TempDir, byte: u8) -> String {
    let path = dir.join("store-key");
    // Distinct keys per `byte`, none of them one byte repeated (refused).
    let bytes: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(7) ^ byte).collect();
    let key = shop_auth_agent::base64::encode(&bytes);
    std::fs::write(&path, format!("{key}\n")).unwrap();
    format!("store_key = {{ file = {:?} }}", path.display().to_string())
}

pub fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

/// The real binary running `run`, its stderr captured to a file.
pub struct Agent {
    pub child: Child,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `shop-auth-agent run --config <dir>/config.toml` and waits for its socket.
    pub fn start(dir: &TempDir) -> Agent {
        let agent = Agent::spawn(dir, &[]);
        agent.wait_ready();
        agent
    }

    pub fn spawn(dir: &TempDir, env: &[(&str, &str)]) -> Agent {
        let config = dir.join("config.toml");
        // Each start appends to the same log, so leak checks see every run.
        let log = dir.join("agent.log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut cmd = bin();
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("SHOP_AUTH_AGENT_SOCKET")
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        Agent {
            child,
            socket: dir.join("agent.sock"),
            config,
            log,
        }
    }

    pub fn wait_ready(&self) {
        wait_for("the agent's socket", || {
            UnixStream::connect(&self.socket).ok().map(|_| ())
        });
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// One request on a fresh connection.
    pub fn ask(&self, line: &str) -> Value {
        self.client().ask(line)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0);
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the agent to exit", || self.child.try_wait().unwrap())
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Polls STATUS until `f` holds for the named provider's entry.
    pub fn wait_status(&self, name: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        wait_for(what, || {
            let s = self.ask("STATUS");
            s["providers"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["provider"] == name).cloned())
                .filter(|p| f(p))
        })
    }

    /// Polls TOKEN until it answers ok.
    pub fn wait_token(&self, name: &str) -> Value {
        wait_for(&format!("a token for {name}"), || {
            let a = self.ask(&format!("TOKEN {name}"));
            (a["ok"] == true).then_some(a)
        })
    }

    /// Runs a client subcommand of the binary against this agent.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        bin()
            .args(args)
            .env("SHOP_AUTH_AGENT_SOCKET", &self.socket)
            .env_remove("SHOP_AUTH_AGENT_CONFIG")
            .output()
            .unwrap()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Every agent the suite runs has its log searched for secrets and
        // tokens, whatever the test was about.
        if !std::thread::panicking() {
            assert_no_leak(&self.log_text());
        }
    }
}

/// Every stand-in credential in each form a request carries it: as is,
/// form-encoded, and inside the HTTP Basic headers (base64 of `id:secret`).
pub fn secret_forms() -> Vec<String> {
    use shop_auth_agent::providers::rfc6749::form_urlencode as form;
    use standins::creds::*;
    let b64 = |s: String| shop_auth_agent::base64::encode(s.as_bytes());
    let secrets = [
        AUTOLEAP_AUTH_KEY,
        MAKELEAPS_CLIENT_SECRET,
        AUTOVIT_CLIENT_SECRET,
        AUTOVIT_PASSWORD,
        AUTOVIT_PARTNER_SECRET,
        CARRENTAL_PASSWORD,
        OAUTH2_CLIENT_SECRET,
        OAUTH2_PASSWORD,
    ];
    let mut forms: Vec<String> = secrets.iter().map(|s| s.to_string()).collect();
    forms.extend(secrets.iter().map(|s| form(s)));
    forms.extend([
        b64(format!("{MAKELEAPS_CLIENT_ID}:{MAKELEAPS_CLIENT_SECRET}")),
        b64(format!("{AUTOVIT_CLIENT_ID}:{AUTOVIT_CLIENT_SECRET}")),
        b64(format!(
            "{}:{}",
            form(OAUTH2_CLIENT_ID),
            form(OAUTH2_CLIENT_SECRET)
        )),
    ]);
    forms.sort();
    forms.dedup();
    forms
}

/// Fails if `text` holds a stand-in credential in any form a request
/// carries it ([`secret_forms`]) or anything shaped like the tokens the
/// stand-ins issue (40 hex digits, `rT` + 30 hex digits, a JWT).
pub fn assert_no_leak(text: &str) {
    for secret in secret_forms() {
        assert!(!text.contains(&secret), "a secret reached the log");
    }
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        assert!(run < 30, "something token-shaped reached the log");
    }
    for (i, _) in text.match_indices("eyJ") {
        let tail = &text[i..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'))
            .unwrap_or(tail.len());
        assert!(len < 20, "a JWT reached the log");
    }
}

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        Client {
            writer: s.try_clone().unwrap(),
            reader: BufReader::new(s),
        }
    }

    /// Writes without asserting: the agent may close the connection first.
    pub fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Reads one answer line; `None` at end of stream.
    pub fn read_answer(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => {
                assert!(line.ends_with('\n'), "answer without newline: {line:?}");
                Some(serde_json::from_str(&line).unwrap())
            }
        }
    }

    pub fn ask(&mut self, line: &str) -> Value {
        self.send_raw(format!("{line}\n").as_bytes());
        self.read_answer().expect("an answer")
    }
}

pub fn exit_code(out: &std::process::Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Lets the partner answer normally until the provider is healthy again
/// (no failure pending, so no backoff: the next REFRESH goes to the partner
/// at once) and returns the token it then serves. Tests that go through
/// failure after failure use it between two: a forced renewal waits for the
/// backoff of the failure before.
pub fn healthy(
    agent: &Agent,
    partners: &standins::Standin,
    kind: standins::Kind,
    name: &str,
) -> Value {
    partners.set_mode(kind, standins::Mode::Normal);
    agent.wait_status(name, "a renewal after the failures", |p| {
        p["failures"] == 0 && p["state"] == "fresh"
    });
    agent.wait_token(name)
}

/// Asks for renewals of every provider in turn until the agent dies or
/// `stop` is set, noting the last token each answer handed out.
pub fn refresh_until_dead(
    socket: PathBuf,
    served: Arc<Mutex<std::collections::HashMap<String, String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let Ok(stream) = UnixStream::connect(&socket) else {
        return;
    };
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        for name in PROVIDERS {
            if writer
                .write_all(format!("REFRESH {name}\n").as_bytes())
                .is_err()
            {
                return;
            }
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => {}
                _ => return, // killed mid-answer
            }
            let a: Value = serde_json::from_str(&line).unwrap();
            if let Some(t) = a["access_token"].as_str() {
                served.lock().unwrap().insert(name.to_owned(), t.to_owned());
            }
        }
    }
}
