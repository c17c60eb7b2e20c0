//! The agent as a whole: every verb, every kind, renewal, reload, shutdown,
//! restart from the store.

use crate::util::*;
use standins::{Kind, Mode};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

fn all_kinds(tag: &str) -> (TempDir, standins::Standin, Agent) {
    let dir = TempDir::new(tag);
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    (dir, partners, agent)
}

#[test]
fn every_kind_gets_a_live_token() {
    let (_dir, partners, agent) = all_kinds("kinds");
    for name in PROVIDERS {
        let a = agent.wait_token(name);
        assert_eq!(a["provider"], name);
        assert_eq!(a["token_type"], "Bearer");
        assert_eq!(a["state"], "fresh");
        let token = a["access_token"].as_str().unwrap();
        assert!(
            partners.is_live(token),
            "{name}: token not issued by the partner"
        );
        let expires_in = a["expires_in"].as_i64().unwrap();
        // The stand-ins issue one-hour tokens; each kind states it its own way.
        assert!((3590..=3600).contains(&expires_in), "{name}: {expires_in}");
        assert!(a["expires_at"].as_str().unwrap().ends_with('Z'));
    }
    // The oauth2 provider's extra form field reached the partner.
    let r = partners.requests(Kind::OAuth2);
    assert!(r[0]
        .params
        .iter()
        .any(|(k, v)| k == "audience" && v == "pos"));
    let status = agent.ask("STATUS");
    let providers = status["providers"].as_array().unwrap();
    assert_eq!(providers.len(), PROVIDERS.len());
    for p in providers {
        assert_eq!(p["state"], "fresh", "{p}");
        assert_eq!(p["failures"], 0);
        assert!(p["last_refresh"].is_string());
        assert!(p.get("access_token").is_none());
    }
}

#[test]
fn ping_status_and_errors_on_one_connection() {
    let (_dir, _partners, agent) = all_kinds("verbs");
    let mut c = agent.client();
    let ping = c.ask("ping");
    assert_eq!(ping["ok"], true);
    assert_eq!(ping["version"], env!("CARGO_PKG_VERSION"));
    let unknown = c.ask("TOKEN nosuch");
    assert_eq!(unknown["error"], "unknown_provider");
    for bad in [
        "",
        "FETCH x",
        "TOKEN",
        "TOKEN a b",
        "TOKEN UPPER",
        "PING extra",
    ] {
        let a = c.ask(bad);
        assert_eq!(a["ok"], false, "{bad:?}");
        assert_eq!(a["error"], "bad_request", "{bad:?}");
        assert!(a["message"].as_str().unwrap().len() > 3);
    }
    // Binary junk is a bad request too, and the connection stays usable.
    c.send_raw(b"\x00\xff\xfe\x01garbage\n");
    assert_eq!(c.read_answer().unwrap()["error"], "bad_request");
    // (TOKEN waits 3 s for a first login; an emulated ARM1176 in a busy
    // suite can take longer, so the login is awaited first.)
    agent.wait_token("makeleaps");
    assert_eq!(c.ask("token makeleaps")["ok"], true);
    // Two requests in one write get two answers, in order.
    c.send_raw(b"PING\nTOKEN nosuch\n");
    assert_eq!(c.read_answer().unwrap()["ok"], true);
    assert_eq!(c.read_answer().unwrap()["error"], "unknown_provider");
}

#[test]
fn oversized_line_gets_bad_request_and_close() {
    let (_dir, _partners, agent) = all_kinds("oversize");
    // Exactly 1024 bytes with the newline is allowed.
    let mut c = agent.client();
    let line = format!("PING{}\n", " ".repeat(1024 - 5));
    assert_eq!(line.len(), 1024);
    c.send_raw(line.as_bytes());
    assert_eq!(c.read_answer().unwrap()["ok"], true);
    // One more byte is not; the connection is then closed.
    let mut c = agent.client();
    c.send_raw(format!("PING{}\n", " ".repeat(1024 - 4)).as_bytes());
    assert_eq!(c.read_answer().unwrap()["error"], "bad_request");
    assert!(c.read_answer().is_none());
    // A megabyte without a newline: same, and the agent is fine.
    let mut c = agent.client();
    let _ = c.try_send(&vec![b'A'; 1 << 20]);
    assert_eq!(c.read_answer().unwrap()["error"], "bad_request");
    assert_eq!(agent.ask("PING")["ok"], true);
}

#[test]
fn short_lifetime_tokens_are_renewed_before_expiry() {
    let dir = TempDir::new("renew");
    let partners = standin_with_lifetime(Duration::from_secs(4));
    // A partner that takes Autovit's undocumented refresh grant.
    takes_autovit_refresh_grant(&partners);
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    for name in ["makeleaps", "autovit", "autoleap", "carrental"] {
        let first = agent.wait_token(name)["access_token"].clone();
        // A 4 s token is renewed between 2 s and 3.2 s after it was obtained.
        let second = wait_for("a renewed token", || {
            let a = agent.ask(&format!("TOKEN {name}"));
            (a["ok"] == true && a["access_token"] != first).then_some(a)
        });
        assert!(partners.is_live(second["access_token"].as_str().unwrap()));
    }
    // Autovit renews with its refresh token rather than logging in again.
    let actions: Vec<String> = partners
        .requests(Kind::Autovit)
        .iter()
        .filter(|r| r.path.contains("oauth/token"))
        .map(|r| r.action.clone())
        .collect();
    assert!(actions.iter().any(|a| a == "refresh_token"), "{actions:?}");
    // AutoLeap too, through generateNewAccessToken.
    assert!(partners
        .requests(Kind::AutoLeap)
        .iter()
        .any(|r| r.path.ends_with("generateNewAccessToken")));
}

#[test]
fn refresh_and_invalidate_answer_with_a_new_token() {
    let (_dir, partners, agent) = all_kinds("invalidate");
    let first = agent.wait_token("makeleaps");
    let refreshed = agent.ask("REFRESH makeleaps");
    assert_eq!(refreshed["ok"], true, "{refreshed}");
    assert_ne!(refreshed["access_token"], first["access_token"]);
    assert_eq!(
        agent.ask("TOKEN makeleaps")["access_token"],
        refreshed["access_token"]
    );
    assert_eq!(partners.count(Kind::MakeLeaps), 2);
}

/// INVALIDATE naming the token it saw refused, as two POS processes sharing
/// a token send it; and the cooldown after a forced renewal.
#[test]
fn invalidate_names_the_refused_token_and_storms_cost_one_request() {
    let (_dir, partners, agent) = all_kinds("invalidate-token");
    // After a scheduled login the first INVALIDATE is honoured.
    let first = agent.wait_token("makeleaps")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let renewed = agent.ask(&format!("INVALIDATE makeleaps {first}"));
    assert_eq!(renewed["ok"], true, "{renewed}");
    let second = renewed["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(partners.count(Kind::MakeLeaps), 2);
    // The second POS process's INVALIDATE of the same (old) token: the new
    // one at once, no request. And a storm of REFRESH and token-less
    // INVALIDATE within the cooldown (10 s): the same, no request.
    let mut c = agent.client();
    let late = c.ask(&format!("INVALIDATE makeleaps {first}"));
    assert_eq!(late["access_token"], second.as_str(), "{late}");
    // A long JWT fits (lines naming a token may be 8 KiB).
    let long = c.ask(&format!("INVALIDATE makeleaps eyJ{}", "x".repeat(3000)));
    assert_eq!(long["access_token"], second.as_str(), "{long}");
    for i in 0..50 {
        let verb = ["REFRESH makeleaps", "INVALIDATE makeleaps"][i % 2];
        let a = c.ask(verb);
        assert_eq!(a["access_token"], second.as_str(), "{verb}: {a}");
    }
    assert_eq!(
        partners.count(Kind::MakeLeaps),
        2,
        "the storm reached the partner"
    );
    // The fresh token itself refused within the cooldown: a partner that
    // refuses every fresh token is not looped. It is not served again.
    let refused = c.ask(&format!("INVALIDATE makeleaps {second}"));
    assert_eq!(refused["error"], "refresh_failed", "{refused}");
    assert!(
        refused["retry_in"].as_u64().is_some_and(|n| n <= 10),
        "{refused}"
    );
    let t = c.ask("TOKEN makeleaps");
    assert_eq!(t["error"], "no_token", "{t}");
    assert_eq!(t["state"], "none", "{t}");
    assert!(t["retry_in"].is_u64(), "{t}");
    for verb in ["REFRESH makeleaps", "INVALIDATE makeleaps"] {
        let a = c.ask(verb);
        assert_eq!(a["error"], "refresh_failed", "{verb}: {a}");
    }
    assert_eq!(partners.count(Kind::MakeLeaps), 2);
    // After the cooldown the agent renews by itself.
    let third = agent.wait_token("makeleaps");
    assert_ne!(third["access_token"], second.as_str());
    assert_eq!(partners.count(Kind::MakeLeaps), 3);
}

#[test]
fn concurrent_invalidates_cause_one_login() {
    let (_dir, partners, agent) = all_kinds("coalesce");
    agent.wait_token("carrental");
    // Slow the partner so that all requests overlap one attempt.
    partners.set_mode(Kind::Carrental, Mode::Delay(Duration::from_secs(3)));
    let before = partners.count(Kind::Carrental);
    let socket = agent.socket.clone();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || Client::connect(&socket).ask("INVALIDATE carrental"))
        })
        .collect();
    let answers: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let tokens: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|a| {
            assert_eq!(a["ok"], true, "{a}");
            a["access_token"].as_str().unwrap().to_owned()
        })
        .collect();
    let logins = partners.count(Kind::Carrental) - before;
    assert_eq!(logins, 1, "{logins} logins for 8 concurrent INVALIDATEs");
    assert_eq!(tokens.len(), 1);
}

#[test]
fn logout_revokes_and_stays_logged_out_until_refresh() {
    let (dir, partners, mut agent) = all_kinds("logout");
    let token = agent.wait_token("autoleap")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = agent.ask("LOGOUT autoleap");
    assert_eq!(a, serde_json::json!({"ok": true, "provider": "autoleap"}));
    assert!(
        !partners.is_live(&token),
        "the partner still accepts the token"
    );
    let logout = partners
        .requests(Kind::AutoLeap)
        .into_iter()
        .find(|r| r.path.ends_with("partners/logout"))
        .expect("a logout request");
    assert_eq!(logout.status, 200);
    let t = agent.ask("TOKEN autoleap");
    assert_eq!(t["error"], "no_token");
    let st = agent.wait_status("autoleap", "logged_out", |p| p["state"] == "logged_out");
    assert_eq!(st["next_attempt"], serde_json::Value::Null);
    // Logged out survives a restart.
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    let agent = Agent::start(&dir);
    agent.wait_status("autoleap", "logged_out after restart", |p| {
        p["state"] == "logged_out"
    });
    // REFRESH logs in again.
    let r = agent.ask("REFRESH autoleap");
    assert_eq!(r["ok"], true, "{r}");
    assert!(partners.is_live(r["access_token"].as_str().unwrap()));
}

#[test]
fn sighup_adds_removes_and_keeps_tokens() {
    let dir = TempDir::new("sighup");
    let partners = standin();
    let all = partners.providers_toml();
    // Start with everything but carrental.
    let without_carrental = remove_section(&all, "carrental");
    write_config(&dir, &config_text(&dir, "", &without_carrental));
    let agent = Agent::start(&dir);
    let kept = agent.wait_token("makeleaps")["access_token"].clone();
    assert_eq!(agent.ask("TOKEN carrental")["error"], "unknown_provider");
    // Add carrental, remove autoleap.
    let next = remove_section(&all, "autoleap");
    write_config(&dir, &config_text(&dir, "", &next));
    agent.signal(libc::SIGHUP);
    agent.wait_token("carrental");
    wait_for("autoleap to be removed", || {
        (agent.ask("TOKEN autoleap")["error"] == "unknown_provider").then_some(())
    });
    assert_eq!(agent.ask("TOKEN makeleaps")["access_token"], kept);
    // A broken config is refused; the old one stays in force and STATUS says so.
    write_config(
        &dir,
        &format!("{next}\n[providers.broken]\nkind = \"nope\"\n"),
    );
    agent.signal(libc::SIGHUP);
    let status = wait_for("config_error in STATUS", || {
        let s = agent.ask("STATUS");
        s.get("config_error").is_some().then_some(s)
    });
    assert!(status["config_error"]
        .as_str()
        .unwrap()
        .contains("providers.broken.kind"));
    assert_eq!(agent.ask("TOKEN makeleaps")["access_token"], kept);
    assert_eq!(agent.ask("TOKEN carrental")["ok"], true);
}

/// `text` without the `[providers.NAME]` section.
pub fn remove_section(text: &str, name: &str) -> String {
    let header = format!("[providers.{name}]");
    let mut out = String::new();
    let mut skipping = false;
    for line in text.lines() {
        if line.trim_start().starts_with('[') {
            skipping = line.trim() == header;
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn sigterm_removes_the_socket_and_exits_zero() {
    let (_dir, _partners, mut agent) = all_kinds("sigterm");
    agent.wait_token("oauth2");
    agent.signal(libc::SIGTERM);
    let status = agent.wait_exit();
    assert_eq!(status.code(), Some(0));
    assert!(!agent.socket.exists());
    // The client says the agent is unreachable: exit 69.
    let out = agent.cli(&["token", "oauth2"]);
    assert_eq!(exit_code(&out), 69, "{}", stderr(&out));
}

#[test]
fn killed_agent_restarts_with_partners_down_and_serves_the_same_token() {
    let dir = TempDir::new("kill9");
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let mut agent = Agent::start(&dir);
    let before: Vec<_> = PROVIDERS
        .iter()
        .map(|n| agent.wait_token(n)["access_token"].clone())
        .collect();
    agent.kill9();
    partners.stop();
    let agent = Agent::start(&dir);
    for (name, token) in PROVIDERS.iter().zip(before) {
        // At once: no waiting for a login that cannot happen.
        let a = agent.ask(&format!("TOKEN {name}"));
        assert_eq!(a["ok"], true, "{name}: {a}");
        assert_eq!(a["access_token"], token, "{name}");
    }
}

#[test]
fn token_file_is_written_with_mode_0640() {
    let dir = TempDir::new("tokenfile");
    let partners = standin();
    let file = dir.join("tokens/ml.json");
    let providers = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        &format!(
            "[providers.makeleaps]\nfile = {:?}\n",
            file.display().to_string()
        ),
    );
    write_config(&dir, &config_text(&dir, "", &providers));
    let agent = Agent::start(&dir);
    let answer = agent.wait_token("makeleaps");
    let content = wait_for("the token file", || std::fs::read_to_string(&file).ok());
    assert!(content.ends_with('\n'));
    let v: serde_json::Value = serde_json::from_str(content.trim_end()).unwrap();
    assert_eq!(v["access_token"], answer["access_token"]);
    assert_eq!(v["provider"], "makeleaps");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    // LOGOUT removes it.
    agent.ask("LOGOUT makeleaps");
    assert!(!file.exists());
}

#[test]
fn socket_mode_is_applied_and_state_dir_is_private() {
    let dir = TempDir::new("modes");
    let partners = standin();
    write_config(
        &dir,
        &config_text(&dir, "socket_mode = \"0600\"", &partners.providers_toml()),
    );
    let agent = Agent::start(&dir);
    let mode = std::fs::metadata(&agent.socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The store opens at its first write, after the socket is up.
    let meta = wait_for("the state dir", || {
        std::fs::metadata(dir.join("state")).ok()
    });
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_second_agent_on_the_same_socket_refuses_to_start() {
    let (dir, _partners, _agent) = all_kinds("twice");
    let mut second = Agent::spawn(&dir, &[]);
    let status = second.wait_exit();
    assert!(!status.success());
    assert!(second.log_text().contains("another agent is listening"));
}

#[test]
fn tells_systemd_ready_status_watchdog_reload_and_stop() {
    use std::os::unix::net::UnixDatagram;
    let dir = TempDir::new("notify");
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let notify = path.display().to_string();
    let mut agent = Agent::spawn(
        &dir,
        &[("NOTIFY_SOCKET", &notify), ("WATCHDOG_USEC", "400000")],
    );
    let mut buf = [0u8; 4096];
    let mut next = || {
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut seen = Vec::new();
    let mut wait_msg = |want: &str, seen: &mut Vec<String>| loop {
        let m = next();
        seen.push(m.clone());
        if m.contains(want) {
            return m;
        }
    };
    let ready = wait_msg("READY=1", &mut seen);
    // Ready once the socket is bound, before any login has to succeed.
    assert!(ready.contains("STATUS="), "{ready}");
    assert!(agent.socket.exists());
    wait_msg("WATCHDOG=1", &mut seen);
    let status = wait_msg("STATUS=6/6 providers have a valid token", &mut seen);
    assert!(!status.contains("READY"));
    agent.signal(libc::SIGHUP);
    wait_msg("RELOADING=1", &mut seen);
    wait_msg("READY=1", &mut seen);
    agent.signal(libc::SIGTERM);
    wait_msg("STOPPING=1", &mut seen);
    assert!(agent.wait_exit().success());
    // No token value in anything told to systemd.
    for token in partners.issued() {
        assert!(!seen.iter().any(|m| m.contains(&token)));
    }
}

/// MakeLeaps' document asks integrators not to save its tokens: by default
/// the agent keeps them in memory only (a restart logs in again).
#[test]
fn makeleaps_tokens_stay_off_the_disk_by_default() {
    let dir = TempDir::new("ml-persist");
    let partners = standin();
    let providers = partners.providers_toml().replace("persist = true\n", "");
    write_config(&dir, &config_text(&dir, "", &providers));
    let mut agent = Agent::start(&dir);
    let ml = agent.wait_token("makeleaps")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let cr = agent.wait_token("carrental")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    let mut on_disk = Vec::new();
    let mut stack = vec![dir.join("state")];
    while let Some(p) = stack.pop() {
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                on_disk.extend(std::fs::read(e.path()).unwrap());
            }
        }
    }
    let on_disk = String::from_utf8_lossy(&on_disk);
    assert!(!on_disk.contains(&ml), "a MakeLeaps token reached the disk");
    assert!(on_disk.contains(&cr), "the other kinds' tokens are kept");
    // After a restart with the partner down: no MakeLeaps token.
    partners.set_mode(Kind::MakeLeaps, standins::Mode::Close);
    let agent = Agent::start(&dir);
    assert_eq!(agent.ask("TOKEN carrental")["access_token"], cr.as_str());
    assert_eq!(agent.ask("TOKEN makeleaps")["error"], "no_token");
}

/// A token a client saw refused while no renewal could start (a backoff
/// runs) is not served again, not even after a restart.
#[test]
fn a_refused_token_stays_refused_across_a_restart() {
    let (dir, partners, mut agent) = all_kinds("refused-restart");
    let t = agent.wait_token("makeleaps")["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    partners.set_mode(
        Kind::MakeLeaps,
        Mode::Status {
            status: 500,
            body: "{}".into(),
            retry_after: Some(3600),
        },
    );
    assert_eq!(agent.ask("REFRESH makeleaps")["error"], "refresh_failed");
    let a = agent.ask(&format!("INVALIDATE makeleaps {t}"));
    assert_eq!(a["error"], "refresh_failed", "a backoff runs: {a}");
    assert_eq!(agent.ask("TOKEN makeleaps")["error"], "no_token");
    agent.signal(libc::SIGTERM);
    assert!(agent.wait_exit().success());
    partners.set_mode(Kind::MakeLeaps, Mode::Close);
    let agent = Agent::start(&dir);
    let a = agent.ask("TOKEN makeleaps");
    assert_eq!(a["error"], "no_token", "the refused token came back: {a}");
}
