//! `[agent] metrics_file`: the real agent writes node_exporter's textfile
//! for its providers, in step with STATUS, readable by all, with no token
//! or secret in it; a missing folder costs one warning, not the agent; and
//! `promtool check metrics` accepts what it writes.

use crate::util::*;
use serde_json::Value;
use standins::{creds, Kind, Mode, Standin};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// An agent with every kind and `metrics_file` at `prom`.
fn running(tag: &str, prom: impl Fn(&TempDir) -> PathBuf) -> (TempDir, Standin, Agent, PathBuf) {
    let dir = TempDir::new(tag);
    let partners = standin();
    let prom = prom(&dir);
    let text = config_text(
        &dir,
        &format!("metrics_file = {:?}", prom.display().to_string()),
        &format!(
            "[defaults]\ntimeout = \"2s\"\nmax_backoff = \"2s\"\nrefresh_cooldown = \"0s\"\n\n{}",
            partners.providers_toml()
        ),
    );
    write_config(&dir, &text);
    let agent = Agent::start(&dir);
    (dir, partners, agent, prom)
}

/// The value of the series `series` (name and labels, as written).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn state(text: &str, provider: &str, state: &str) -> Option<f64> {
    value(
        text,
        &format!("shop_auth_agent_provider_state{{provider=\"{provider}\",state=\"{state}\"}}"),
    )
}

fn attempts(text: &str, provider: &str, result: &str) -> f64 {
    value(
        text,
        &format!("shop_auth_agent_attempts_total{{provider=\"{provider}\",result=\"{result}\"}}"),
    )
    .unwrap_or_else(|| panic!("no attempts_total for {provider} {result}:\n{text}"))
}

/// What STATUS says of `provider`: (state, expires_at as Unix seconds).
fn status_of(status: &Value, provider: &str) -> (String, Option<i64>) {
    let p = status["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["provider"] == provider)
        .unwrap();
    let expires = p["expires_at"]
        .as_str()
        .map(|t| shop_auth_agent::timefmt::parse_timestamp(t).unwrap());
    (p["state"].as_str().unwrap().to_owned(), expires)
}

/// Polls until the file agrees with STATUS for every provider (state one-hot,
/// expiry the same or both absent) and `also` holds; returns the file.
fn agreeing(agent: &Agent, prom: &Path, what: &str, also: impl Fn(&str) -> bool) -> String {
    wait_for(what, || {
        let text = std::fs::read_to_string(prom).ok()?;
        let status = agent.ask("STATUS");
        let agrees = PROVIDERS.iter().all(|p| {
            let (current, expires) = status_of(&status, p);
            let expiry = value(
                &text,
                &format!("shop_auth_agent_token_expiry_timestamp_seconds{{provider=\"{p}\"}}"),
            );
            let one_hot = [
                "fresh",
                "renewing",
                "expired",
                "none",
                "rejected",
                "logged_out",
            ]
            .iter()
            .all(|s| state(&text, p, s) == Some(if *s == current { 1.0 } else { 0.0 }));
            one_hot && expiry == expires.map(|t| t as f64)
        });
        (agrees && also(&text)).then_some(text)
    })
}

/// No token the stand-ins issued, no credential, nothing token-shaped.
fn assert_no_secret(text: &str, partners: &Standin) {
    let issued = partners.issued();
    assert!(!issued.is_empty());
    for t in issued {
        assert!(!text.contains(&t), "an issued token is in the metrics file");
    }
    for secret in [creds::CARRENTAL_PASSWORD, creds::OAUTH2_PASSWORD] {
        assert!(!text.contains(secret));
    }
    assert_no_leak(text);
}

#[test]
fn metrics_file_follows_status_and_attempts_and_holds_no_secret() {
    let (_dir, partners, agent, prom) = running("metrics", |d| d.join("shop_auth_agent.prom"));
    for name in PROVIDERS {
        agent.wait_token(name);
    }
    let text = agreeing(&agent, &prom, "every provider fresh in the file", |t| {
        PROVIDERS.iter().all(|p| state(t, p, "fresh") == Some(1.0))
    });
    for p in PROVIDERS {
        assert!(attempts(&text, p, "ok") >= 1.0, "{p}:\n{text}");
        assert_eq!(attempts(&text, p, "rejected"), 0.0);
        let success = value(
            &text,
            &format!("shop_auth_agent_last_success_timestamp_seconds{{provider=\"{p}\"}}"),
        )
        .unwrap();
        let now = shop_auth_agent::timefmt::now_unix() as f64;
        assert!(success <= now && success > now - 600.0, "{p}: {success}");
    }
    assert_eq!(value(&text, "shop_auth_agent_clock_trusted"), Some(1.0));
    assert_eq!(value(&text, "shop_auth_agent_store_writable"), Some(1.0));
    let build = format!(
        "shop_auth_agent_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&text, &build), Some(1.0));
    // Readable by node_exporter's user although the agent runs with umask 077.
    let mode = std::fs::metadata(&prom).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o644);
    assert_no_secret(&text, &partners);

    // The partner refuses the credentials: a refused token, then a
    // rejected login.
    partners.set_mode(Kind::Carrental, Mode::Reject);
    let a = agent.ask("INVALIDATE carrental");
    assert_eq!(a["ok"], false, "{a}");
    let text = agreeing(&agent, &prom, "carrental rejected in the file", |t| {
        state(t, "carrental", "rejected") == Some(1.0)
    });
    assert_eq!(state(&text, "carrental", "fresh"), Some(0.0));
    assert!(attempts(&text, "carrental", "rejected") >= 1.0, "{text}");
    // The others go on.
    assert_eq!(state(&text, "oauth2", "fresh"), Some(1.0));
    assert_eq!(attempts(&text, "oauth2", "rejected"), 0.0);

    // Requests answered from the last outcome are no attempts: the counters
    // match what the partner saw (Carrental has one request per attempt).
    for _ in 0..3 {
        assert_eq!(agent.ask("REFRESH carrental")["ok"], false);
    }
    let before = attempts(&text, "oauth2", "ok");
    assert_eq!(agent.ask("REFRESH oauth2")["ok"], true);
    let text = agreeing(&agent, &prom, "oauth2's renewal in the file", |t| {
        attempts(t, "oauth2", "ok") > before
    });
    let carrental: f64 = ["ok", "transient", "rejected", "bad_response"]
        .iter()
        .map(|r| attempts(&text, "carrental", r))
        .sum();
    assert_eq!(carrental, partners.count(Kind::Carrental) as f64, "{text}");
    assert_no_secret(&text, &partners);
    // Nothing but the file in its folder: no temporary file left.
    let names: Vec<_> = std::fs::read_dir(prom.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("prom"))
        .collect();
    assert_eq!(names, ["shop_auth_agent.prom"]);
}

#[test]
fn a_missing_metrics_folder_costs_one_warning_not_the_agent() {
    let (dir, _partners, agent, prom) = running("metricsdir", |d| {
        d.join("node-exporter/shop_auth_agent.prom")
    });
    for name in PROVIDERS {
        agent.wait_token(name);
    }
    // Several changes, each a write that fails.
    for _ in 0..3 {
        assert_eq!(agent.ask("REFRESH oauth2")["ok"], true);
    }
    wait_for("the warning", || {
        agent
            .log_text()
            .contains("metrics: cannot write")
            .then_some(())
    });
    // The folder appears (node_exporter installed later): the next change
    // is written.
    std::fs::create_dir(dir.join("node-exporter")).unwrap();
    assert_eq!(agent.ask("REFRESH oauth2")["ok"], true);
    wait_for("the metrics file", || prom.exists().then_some(()));
    let log = wait_for("the log line saying so", || {
        let log = agent.log_text();
        log.contains("works again").then_some(log)
    });
    assert_eq!(log.matches("metrics: cannot write").count(), 1, "{log}");
    assert_eq!(agent.ask("PING")["ok"], true);
}

#[test]
fn metrics_file_passes_promtool_check() {
    let promtool = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    let Some(promtool) = promtool else {
        // CI installs Debian's prometheus package and sets this.
        assert!(
            std::env::var_os("SHOP_AUTH_AGENT_REQUIRE_PROMTOOL").is_none(),
            "promtool not found (and SHOP_AUTH_AGENT_REQUIRE_PROMTOOL is set)"
        );
        println!("SKIP promtool not found (Debian: apt-get install prometheus)");
        return;
    };
    let (dir, partners, agent, prom) =
        running("metricspromtool", |d| d.join("shop_auth_agent.prom"));
    partners.set_mode(Kind::Carrental, Mode::Reject);
    agent.wait_token("oauth2");
    // Every kind of series: fresh ones with times, a rejected one without.
    let text = agreeing(&agent, &prom, "a file with fresh and rejected", |t| {
        state(t, "oauth2", "fresh") == Some(1.0) && state(t, "carrental", "rejected") == Some(1.0)
    });
    let out = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&prom).unwrap())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        stdout(&out),
        stderr(&out)
    );
    // README's example alert rules are valid too.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = &readme[readme
        .find("\n## Fleet metrics\n")
        .expect("README: Fleet metrics")..];
    let start = section.find("```yaml\n").expect("README: alert rules") + "```yaml\n".len();
    let rules = &section[start..start + section[start..].find("```").unwrap()];
    assert!(rules.contains("ShopAuthTokenExpiringWhileRenewalsFail"));
    let file = dir.join("rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        stdout(&out),
        stderr(&out)
    );
}
