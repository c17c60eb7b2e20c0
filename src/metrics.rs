//! Fleet metrics: `[agent] metrics_file`, a Prometheus text-format file for
//! node_exporter's textfile collector. A thread of its own, `metrics`,
//! rewrites it whenever what it shows changes (the scheduler's condition
//! variable wakes it) and at least once a minute, so that node_exporter's
//! `node_textfile_mtime_seconds` tells a living agent from a dead one.
//!
//! What it shows is what STATUS shows (state, expiry, last success), plus
//! attempt counters and two health flags; never a token, a secret or an
//! error text (partner error bodies could quote either). Times are Unix
//! timestamps, not durations, as Prometheus advises: an alert computes
//! `… - time()` itself, and a file read a minute late is still right.
//!
//! The file is replaced by rename (readers see the old one or the new one)
//! and made 0644 on its descriptor, whatever the agent's umask 077, so that
//! node_exporter's user can read it. It is not fsynced: a power cut may
//! lose it, and the next minute writes it again, without wearing the SD
//! card every minute.

use crate::lifecycle::Outcome;
use crate::scheduler::Scheduler;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// The states of `shop_auth_agent_provider_state`, as STATUS names them.
pub const STATES: [&str; 6] = [
    "fresh",
    "renewing",
    "expired",
    "none",
    "rejected",
    "logged_out",
];

/// The results of `shop_auth_agent_attempts_total`: a token, or the
/// failure's [`ErrorKind`](crate::providers::ErrorKind).
pub const RESULTS: [&str; 4] = ["ok", "transient", "rejected", "bad_response"];

/// The file is rewritten at least this often, changed or not.
pub const PERIOD: Duration = Duration::from_secs(60);

/// Attempts to obtain a token since the agent started, per provider, by
/// result (in [`RESULTS`] order). Logouts are not counted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempts(BTreeMap<String, [u64; RESULTS.len()]>);

impl Attempts {
    /// Counts the outcome of one of `name`'s attempts.
    pub fn count(&mut self, name: &str, outcome: &Outcome) {
        let result = match outcome {
            Outcome::Token(_) => "ok",
            Outcome::Failed { kind, .. } => kind.as_str(),
            Outcome::LoggedOut { .. } => return,
        };
        let Some(i) = RESULTS.iter().position(|r| *r == result) else {
            return;
        };
        if let Some(counts) = self.0.get_mut(name) {
            counts[i] += 1;
        } else {
            let mut counts = [0; RESULTS.len()];
            counts[i] = 1;
            self.0.insert(name.to_owned(), counts);
        }
    }

    /// `name`'s counts, in [`RESULTS`] order.
    pub fn of(&self, name: &str) -> [u64; RESULTS.len()] {
        self.0.get(name).copied().unwrap_or_default()
    }
}

/// Everything the file shows, taken at one moment under the scheduler's
/// lock. Equal snapshots render equal files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Sorted by name.
    pub providers: Vec<ProviderMetrics>,
    pub clock_trusted: bool,
    pub store_writable: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMetrics {
    pub name: String,
    /// One of [`STATES`].
    pub state: &'static str,
    /// The held token's expiry (Unix seconds), if one is held.
    pub expires_at: Option<i64>,
    /// When a token was last obtained (Unix seconds), if ever.
    pub last_success: Option<i64>,
    /// In [`RESULTS`] order.
    pub attempts: [u64; RESULTS.len()],
}

/// A label value in the text format: `\`, `"` and newlines escaped.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The file's text: the Prometheus text exposition format (0.0.4), every
/// family with its HELP and TYPE, one family's lines together.
pub fn render(s: &Snapshot, version: &str) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in lines {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let provider = |p: &ProviderMetrics| format!("provider=\"{}\"", escape(&p.name));
    let mut states = Vec::new();
    for p in &s.providers {
        // A state this list does not know still shows, as the one set.
        let unknown = (!STATES.contains(&p.state)).then_some(p.state);
        for state in STATES.iter().copied().chain(unknown) {
            let on = u8::from(state == p.state);
            let labels = format!("{{{},state=\"{}\"}}", provider(p), escape(state));
            states.push((labels, on.to_string()));
        }
    }
    family(
        "shop_auth_agent_provider_state",
        "gauge",
        "The provider's state as STATUS names it: 1 for the current one, 0 for the others.",
        &states,
    );
    let times = |f: fn(&ProviderMetrics) -> Option<i64>| -> Vec<(String, String)> {
        s.providers
            .iter()
            .filter_map(|p| f(p).map(|t| (format!("{{{}}}", provider(p)), t.to_string())))
            .collect()
    };
    family(
        "shop_auth_agent_token_expiry_timestamp_seconds",
        "gauge",
        "When the held token expires (Unix time); absent while no token is held.",
        &times(|p| p.expires_at),
    );
    family(
        "shop_auth_agent_last_success_timestamp_seconds",
        "gauge",
        "When a token was last obtained from the partner (Unix time); absent if never.",
        &times(|p| p.last_success),
    );
    let mut attempts = Vec::new();
    for p in &s.providers {
        for (result, n) in RESULTS.iter().zip(p.attempts) {
            let labels = format!("{{{},result=\"{result}\"}}", provider(p));
            attempts.push((labels, n.to_string()));
        }
    }
    family(
        "shop_auth_agent_attempts_total",
        "counter",
        "Attempts to obtain a token since the agent started, by result.",
        &attempts,
    );
    let flag = |b: bool| vec![(String::new(), u8::from(b).to_string())];
    family(
        "shop_auth_agent_clock_trusted",
        "gauge",
        "1 while the wall clock is trusted, 0 while it disagrees with the partners' or the store's.",
        &flag(s.clock_trusted),
    );
    family(
        "shop_auth_agent_store_writable",
        "gauge",
        "1 while the token store can be written, 0 while tokens are kept in memory only.",
        &flag(s.store_writable),
    );
    family(
        "shop_auth_agent_build_info",
        "gauge",
        "The agent's version; always 1.",
        &[(format!("{{version=\"{}\"}}", escape(version)), "1".into())],
    );
    out
}

/// How long to wait before the next write when nothing changes: until the
/// earliest token expiry still ahead (a state changes then, with no event)
/// or [`PERIOD`], whichever is sooner.
fn next_write(s: &Snapshot, now: i64) -> Duration {
    s.providers
        .iter()
        .filter_map(|p| p.expires_at)
        .filter(|&t| t >= now)
        // A second past it: the token is then expired by any reading.
        .map(|t| Duration::from_secs((t - now) as u64 + 1))
        .fold(PERIOD, Duration::min)
}

/// Writes the file: 0644, replaced by rename, not fsynced.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    crate::tokenfile::replace(path, text.as_bytes(), None, 0o644, false)
}

/// Starts the `metrics` thread, which writes `path` until the scheduler
/// shuts down. A folder that is missing or not writable is logged (once
/// per cause) and tried again at the next write; the agent runs on.
pub fn spawn(scheduler: Arc<Scheduler>, path: PathBuf) -> std::io::Result<()> {
    thread::Builder::new()
        .name("metrics".into())
        .stack_size(128 * 1024)
        .spawn(move || run(&scheduler, &path))
        .map(|_| ())
}

fn run(scheduler: &Scheduler, path: &Path) {
    let version = env!("CARGO_PKG_VERSION");
    let mut last: Option<Snapshot> = None;
    let mut due = Instant::now();
    let mut failing: Option<std::io::ErrorKind> = None;
    while let Some(snapshot) = scheduler.metrics(last.as_ref(), due) {
        match write(path, &render(&snapshot, version)) {
            Ok(()) => {
                if failing.take().is_some() {
                    log::info!("metrics: writing {} works again", path.display());
                }
            }
            Err(e) => {
                if failing != Some(e.kind()) {
                    log::warn!(
                        "metrics: cannot write {}: {e}; trying again in a minute \
                         (the unit needs ReadWritePaths= for its folder, and the \
                         agent's user write access to it)",
                        path.display()
                    );
                }
                failing = Some(e.kind());
            }
        }
        due = Instant::now() + next_write(&snapshot, crate::timefmt::now_unix());
        last = Some(snapshot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::ErrorKind;
    use crate::secret::Secret;
    use crate::token::Token;

    fn failed(kind: ErrorKind) -> Outcome {
        Outcome::Failed {
            kind,
            message: "rejected: HTTP 401 secret-in-body".into(),
            retry_after: None,
            refresh_refused: false,
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            providers: vec![
                ProviderMetrics {
                    name: "invoices".into(),
                    state: "fresh",
                    expires_at: Some(1_700_003_600),
                    last_success: Some(1_700_000_000),
                    attempts: [3, 1, 0, 0],
                },
                ProviderMetrics {
                    name: "rentals".into(),
                    state: "rejected",
                    expires_at: None,
                    last_success: None,
                    attempts: [0, 0, 2, 0],
                },
            ],
            clock_trusted: true,
            store_writable: false,
        }
    }

    #[test]
    fn every_state_is_shown_one_hot() {
        let text = render(&snapshot(), "1.2.3");
        for (provider, current) in [("invoices", "fresh"), ("rentals", "rejected")] {
            for state in STATES {
                let line = format!(
                    "shop_auth_agent_provider_state{{provider=\"{provider}\",state=\"{state}\"}} {}\n",
                    u8::from(state == current)
                );
                assert!(text.contains(&line), "{line} missing in\n{text}");
            }
        }
        let ones = text
            .lines()
            .filter(|l| l.starts_with("shop_auth_agent_provider_state{") && l.ends_with(" 1"))
            .count();
        assert_eq!(ones, 2);
    }

    #[test]
    fn timestamps_counters_and_flags() {
        let text = render(&snapshot(), "1.2.3");
        for line in [
            "shop_auth_agent_token_expiry_timestamp_seconds{provider=\"invoices\"} 1700003600\n",
            "shop_auth_agent_last_success_timestamp_seconds{provider=\"invoices\"} 1700000000\n",
            "shop_auth_agent_attempts_total{provider=\"invoices\",result=\"ok\"} 3\n",
            "shop_auth_agent_attempts_total{provider=\"invoices\",result=\"transient\"} 1\n",
            "shop_auth_agent_attempts_total{provider=\"rentals\",result=\"rejected\"} 2\n",
            "shop_auth_agent_attempts_total{provider=\"rentals\",result=\"bad_response\"} 0\n",
            "shop_auth_agent_clock_trusted 1\n",
            "shop_auth_agent_store_writable 0\n",
            "shop_auth_agent_build_info{version=\"1.2.3\"} 1\n",
            "# TYPE shop_auth_agent_attempts_total counter\n",
            "# TYPE shop_auth_agent_provider_state gauge\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        // No token, no timestamp: no series (not a 0 that reads as 1970).
        assert!(!text.contains("seconds{provider=\"rentals\"}"));
        // Every family has its HELP and TYPE, once.
        for family in [
            "provider_state",
            "token_expiry_timestamp_seconds",
            "last_success_timestamp_seconds",
            "attempts_total",
            "clock_trusted",
            "store_writable",
            "build_info",
        ] {
            for kind in ["HELP", "TYPE"] {
                let head = format!("# {kind} shop_auth_agent_{family} ");
                assert_eq!(text.matches(&head).count(), 1, "{head}");
            }
        }
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = snapshot();
        s.providers[0].name = "a\"b\\c\nd".into();
        let text = render(&s, "0.1\"x");
        assert!(text.contains("{provider=\"a\\\"b\\\\c\\nd\",state=\"fresh\"} 1\n"));
        assert!(text.contains("build_info{version=\"0.1\\\"x\"} 1\n"));
        // Every line is whole: the newline in the name did not break one.
        for line in text.lines() {
            assert!(line.starts_with("# ") || line.starts_with("shop_auth_agent_"));
        }
    }

    #[test]
    fn an_unknown_state_still_shows() {
        let mut s = snapshot();
        s.providers[0].state = "sleeping";
        let text = render(&s, "1");
        assert!(text.contains("{provider=\"invoices\",state=\"sleeping\"} 1\n"));
        assert!(text.contains("{provider=\"invoices\",state=\"fresh\"} 0\n"));
    }

    #[test]
    fn counting_attempts_keeps_no_token_or_message() {
        let mut a = Attempts::default();
        let token = Token {
            access: Secret::new("eyJsecret-access"),
            refresh: Some(Secret::new("refresh-secret")),
            token_type: "Bearer".into(),
            scope: None,
            obtained_at: 1_700_000_000,
            expires_at: 1_700_003_600,
            refresh_refused: false,
        };
        a.count("invoices", &Outcome::Token(token));
        a.count("invoices", &failed(ErrorKind::Transient));
        a.count("invoices", &failed(ErrorKind::BadResponse));
        a.count("invoices", &failed(ErrorKind::BadResponse));
        a.count("rentals", &failed(ErrorKind::Rejected));
        a.count("rentals", &Outcome::LoggedOut { unrevoked: None });
        assert_eq!(a.of("invoices"), [1, 1, 0, 2]);
        assert_eq!(a.of("rentals"), [0, 0, 1, 0]);
        assert_eq!(a.of("other"), [0; 4]);
        let mut s = snapshot();
        s.providers[0].attempts = a.of("invoices");
        let text = render(&s, "1");
        for secret in ["eyJ", "secret", "HTTP 401"] {
            assert!(!text.contains(secret), "{secret} in\n{text}");
        }
    }

    #[test]
    fn the_next_write_comes_at_the_earliest_expiry_or_a_minute() {
        let s = snapshot();
        assert_eq!(next_write(&s, 1_700_000_000), PERIOD);
        assert_eq!(next_write(&s, 1_700_003_590), Duration::from_secs(11));
        // Past expiry: nothing more to wait for but the minute.
        assert_eq!(next_write(&s, 1_700_003_700), PERIOD);
    }

    #[test]
    fn the_file_is_replaced_and_readable_by_all_whatever_the_umask() {
        let dir = std::env::temp_dir().join(format!("saa-metrics-{}", crate::rand::hex(10)));
        std::fs::create_dir(&dir).unwrap();
        let path = dir.join("shop_auth_agent.prom");
        // Created 0600 (narrowed further by the agent's umask 077), then
        // set to 0644 on the descriptor: the umask of the test does not
        // matter.
        write(&path, "a 1\n").unwrap();
        write(&path, "a 2\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        // No temporary file left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        // A missing folder is an error, not a panic or a new folder.
        assert!(write(&dir.join("gone/x.prom"), "a 1\n").is_err());
        assert!(!dir.join("gone").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
