//! Local users as an attacker on a shop terminal would be: the agent's CLI
//! run as other uids (root starts it with setuid, so these tests need CAP_SETUID
//! and CAP_SETGID and skip otherwise), storms of client requests, and connections that
//! never read. What is checked is what the partner sees (requests counted
//! by the stand-in) and what other users get.

use crate::util::*;
use serde_json::Value;
use standins::{Kind, Mode, Standin};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

/// A POS user in the provider's allow list, and one who is not.
const POS1: u32 = 4243;
const POS2: u32 = 4242;

/// An agent whose socket any local user can open; `makeleaps` is for POS1
/// only, the others are open to all. Root (this test) is the administrator.
fn shop(tag: &str, agent_extra: &str) -> (TempDir, Standin, Agent) {
    let dir = TempDir::new(tag);
    let partners = standin();
    let providers = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        &format!("[providers.makeleaps]\nallow_uids = [{POS1}]\n"),
    );
    let text = config_text(
        &dir,
        &format!("socket_mode = \"0666\"\n{agent_extra}"),
        &format!("[defaults]\ntimeout = \"2s\"\n\n{providers}"),
    );
    write_config(&dir, &text);
    let agent = Agent::start(&dir);
    (dir, partners, agent)
}

/// The agent's CLI run as `uid` (and that gid).
fn as_user(agent: &Agent, uid: u32, args: &[&str]) -> (i32, Value) {
    let out = bin()
        .args(args)
        .env("SHOP_AUTH_AGENT_SOCKET", &agent.socket)
        .env_remove("SHOP_AUTH_AGENT_CONFIG")
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap();
    let text = stdout(&out);
    let json = serde_json::from_str(text.trim()).unwrap_or(Value::String(text));
    (exit_code(&out), json)
}

/// One request as `uid`, through `token --json` or `status --json`.
fn token_as(agent: &Agent, uid: u32, name: &str) -> (i32, Value) {
    as_user(agent, uid, &["token", name, "--json"])
}

#[test]
fn logout_is_for_administrators_and_survives_no_storm() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    let (_dir, partners, agent) = shop("admin", "");
    agent.wait_token("oauth2");
    // A POS user cannot log everyone out.
    let (code, _) = as_user(&agent, POS2, &["logout", "oauth2"]);
    assert_eq!(code, 77, "forbidden");
    let (code, t) = token_as(&agent, POS2, "oauth2");
    assert_eq!(code, 0, "{t}");
    // The administrator can; then TOKEN says a person must act (77).
    assert_eq!(agent.ask("LOGOUT oauth2")["ok"], true);
    let (code, t) = token_as(&agent, POS2, "oauth2");
    assert_eq!((code, t["state"].as_str()), (77, Some("logged_out")), "{t}");
    // Neither a POS user's REFRESH nor INVALIDATE logs it back in.
    let before = partners.count(Kind::OAuth2);
    let (code, r) = as_user(&agent, POS2, &["refresh", "oauth2", "--json"]);
    assert_eq!(code, 77, "{r}");
    assert_eq!(agent.ask("INVALIDATE oauth2")["error"], "refresh_failed");
    assert_eq!(partners.count(Kind::OAuth2), before);
    // The administrator's REFRESH does.
    let r = agent.ask("REFRESH oauth2");
    assert_eq!(r["ok"], true, "{r}");

    // Rejected credentials: LOGOUT and REFRESH, again and again, by the
    // administrator even, do not reach the partner before the slow retry.
    partners.set_mode(Kind::Carrental, Mode::Reject);
    let failed = agent.ask("INVALIDATE carrental");
    assert_eq!(failed["error"], "refresh_failed", "{failed}");
    let rejected = partners.count(Kind::Carrental);
    let mut c = agent.client();
    for _ in 0..20 {
        c.ask("LOGOUT carrental");
        let a = c.ask("REFRESH carrental");
        assert_eq!(a["error"], "refresh_failed", "{a}");
    }
    assert_eq!(
        partners.count(Kind::Carrental),
        rejected,
        "LOGOUT lifted the slow retry"
    );
    let (code, t) = token_as(&agent, POS2, "carrental");
    assert_eq!((code, t["state"].as_str()), (77, Some("logged_out")), "{t}");
}

#[test]
fn forced_renewal_storms_cost_at_most_one_partner_request() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    let (_dir, partners, agent) = shop("storms", "");
    for name in ["oauth2", "autovit", "carrental"] {
        agent.wait_token(name);
    }
    let mut counts = Vec::new();
    // Healthy partner: 50 REFRESH.
    let before = partners.count(Kind::OAuth2);
    let mut c = agent.client();
    for _ in 0..50 {
        assert_eq!(c.ask("REFRESH oauth2")["ok"], true);
    }
    counts.push(("50 REFRESH, healthy", partners.count(Kind::OAuth2) - before));
    // 429 with Retry-After: 3600: 20 REFRESH.
    partners.set_mode(
        Kind::Autovit,
        Mode::Status {
            status: 429,
            body: "{}".into(),
            retry_after: Some(3600),
        },
    );
    let before = partners.count(Kind::Autovit);
    for _ in 0..20 {
        c.ask("REFRESH autovit");
    }
    counts.push((
        "20 REFRESH, 429 Retry-After 3600",
        partners.count(Kind::Autovit) - before,
    ));
    // 500: 20 INVALIDATE by a user of the socket; the token stays served
    // for the others (it was never named as refused).
    partners.set_mode(
        Kind::Carrental,
        Mode::Status {
            status: 500,
            body: "{}".into(),
            retry_after: None,
        },
    );
    let before = partners.count(Kind::Carrental);
    // The first from a POS user's CLI, the rest on one connection (quick
    // enough, even under emulation, to end before the scheduled retry
    // after the first failure's 1-2 s backoff, which is the schedule's
    // request, not the storm's).
    as_user(&agent, POS2, &["refresh", "carrental"]);
    for _ in 1..20 {
        c.ask("REFRESH carrental");
    }
    counts.push((
        "20 REFRESH by a POS user, 500",
        partners.count(Kind::Carrental) - before,
    ));
    // 500 again, 20 INVALIDATE naming no token (each "the current one"):
    // one renewal attempt, the rest refused during its backoff.
    agent.wait_token("autoleap");
    partners.set_mode(
        Kind::AutoLeap,
        Mode::Status {
            status: 500,
            body: "{}".into(),
            retry_after: None,
        },
    );
    let before = partners.count(Kind::AutoLeap);
    for _ in 0..20 {
        c.ask("INVALIDATE autoleap");
    }
    counts.push((
        "20 INVALIDATE, 500",
        partners.count(Kind::AutoLeap) - before,
    ));
    println!("storms: partner requests: {counts:?}");
    for (storm, n) in &counts {
        assert!(*n <= 1, "{storm}: {n} partner requests");
    }
    let (code, t) = token_as(&agent, POS1, "carrental");
    assert_eq!(code, 0, "the others still get the token: {t}");
}

#[test]
fn status_shows_errors_only_to_those_allowed_and_rejected_exits_78() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    let (_dir, partners, agent) = shop("status-filter", "");
    agent.wait_token("makeleaps");
    partners.set_mode(Kind::MakeLeaps, Mode::Reject);
    // Only the administrator may bring it to a renewal now.
    let a = agent.ask("INVALIDATE makeleaps");
    assert_eq!(a["error"], "refresh_failed", "{a}");
    let error_seen_by = |uid: u32| -> Value {
        let (code, s) = as_user(&agent, uid, &["status", "--json"]);
        assert_eq!(code, 0, "{s}");
        s["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["provider"] == "makeleaps")
            .unwrap()["last_error"]
            .clone()
    };
    assert!(error_seen_by(POS1).is_string(), "allowed: sees it");
    assert!(error_seen_by(POS2).is_null(), "not allowed: does not");
    let (code, t) = token_as(&agent, POS1, "makeleaps");
    assert_eq!(code, 78, "credentials rejected: a person must act: {t}");
    assert_eq!(t["state"], "rejected");
}

#[test]
fn connections_that_never_read_do_not_lock_out_another_user() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    let (_dir, _partners, agent) = shop("fair", "");
    agent.wait_token("oauth2");
    // 260 connections of one user (root, here), each writing requests and
    // never reading the answers.
    let mut held = Vec::new();
    let flood = "STATUS\n".repeat(1500);
    for _ in 0..260 {
        let Ok(mut s) = UnixStream::connect(&agent.socket) else {
            continue;
        };
        // As much as the socket takes at once; the agent's answers pile up
        // unread on the other side.
        s.set_nonblocking(true).unwrap();
        let _ = s.write_all(flood.as_bytes());
        held.push(s);
    }
    // Another user is answered, every time, promptly.
    let bound = if emulated() {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(1)
    };
    let mut took = Vec::new();
    for _ in 0..10 {
        let start = Instant::now();
        let (code, t) = token_as(&agent, POS2, "oauth2");
        took.push(start.elapsed());
        assert_eq!(code, 0, "{t}");
    }
    let worst = took.iter().max().copied().unwrap_or_default();
    println!("fair: another user's TOKEN (a CLI process each) took {took:?}");
    assert!(worst < bound, "{worst:?}");
    assert!(agent.log_text().contains("max_connections_per_uid"));
    drop(held);
}

/// Whether `uid` (with group `gid`) can read `path`, tried by `cat` run as
/// that user.
fn can_read(uid: u32, gid: u32, path: &std::path::Path) -> bool {
    std::process::Command::new("cat")
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}

#[test]
fn token_files_are_read_by_no_more_than_the_socket_serves() {
    if let Err(why) = can_switch_users() {
        skip(&why);
        return;
    }
    const SHOP_GROUP: u32 = 4300;
    let dir = TempDir::new("files");
    let partners = standin();
    let file = |sub: &str| dir.join(&format!("{sub}/tokens/t.json"));
    let providers = partners
        .providers_toml()
        // Allowed to POS1 by uid only: no group may read its file.
        .replace(
            "[providers.makeleaps]\n",
            &format!(
                "[providers.makeleaps]\nallow_uids = [{POS1}]\nfile = {:?}\n",
                file("ml")
            ),
        )
        // Allowed to a group: the file is that group's.
        .replace(
            "[providers.carrental]\n",
            &format!(
                "[providers.carrental]\nallow_gids = [{SHOP_GROUP}]\nfile = {:?}\n",
                file("cr")
            ),
        )
        // Open to all: the socket's group (here the agent's own).
        .replace(
            "[providers.oauth2]\n",
            &format!("[providers.oauth2]\nfile = {:?}\n", file("oa")),
        );
    write_config(
        &dir,
        &config_text(&dir, "socket_mode = \"0666\"\n", &providers),
    );
    let agent = Agent::start(&dir);
    for name in ["makeleaps", "carrental", "oauth2"] {
        agent.wait_token(name);
    }
    let mode = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(p).unwrap();
        (m.mode() & 0o777, m.gid())
    };
    wait_for("the token files", || {
        ["ml", "cr", "oa"]
            .iter()
            .all(|s| file(s).exists())
            .then_some(())
    });
    assert_eq!(mode(&file("ml")).0, 0o600);
    assert_eq!(mode(file("ml").parent().unwrap()).0, 0o700);
    assert_eq!(mode(&file("cr")), (0o640, SHOP_GROUP));
    assert_eq!(mode(file("cr").parent().unwrap()), (0o750, SHOP_GROUP));
    assert_eq!(mode(&file("oa")).0, 0o640);
    // Tried as the users themselves.
    assert!(
        !can_read(POS1, POS1, &file("ml")),
        "not even the allowed uid"
    );
    assert!(!can_read(POS2, POS2, &file("ml")));
    assert!(can_read(POS2, SHOP_GROUP, &file("cr")), "the allowed group");
    assert!(
        !can_read(POS2, POS2, &file("cr")),
        "forbidden on the socket"
    );
    let (code, _) = token_as(&agent, POS2, "carrental");
    assert_eq!(code, 77, "and on the socket");
    // check-config says who can read the MakeLeaps file.
    let out = bin()
        .args(["check-config", "--config"])
        .arg(dir.join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 0, "{}", stderr(&out));
    assert!(
        stdout(&out).contains("providers.makeleaps: the token file"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_token_file_in_a_folder_a_pos_user_controls_is_refused() {
    if !has_cap(CAP_CHOWN) {
        skip("giving a folder to another user needs CAP_CHOWN, which this process lacks");
        return;
    }
    // The attack: POS2 owns the token file's folder and plants a link in
    // it to a file of the agent's (the old fixed temporary name).
    let dir = TempDir::new("plant");
    let theirs = dir.join("pos2");
    std::fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::chown(&theirs, Some(POS2), Some(POS2)).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    std::os::unix::fs::symlink(&victim, theirs.join(".open.json.tmp")).unwrap();
    let partners = standin();
    let providers = partners.providers_toml().replace(
        "[providers.oauth2]\n",
        &format!(
            "[providers.oauth2]\nfile = {:?}\n",
            theirs.join("open.json")
        ),
    );
    write_config(&dir, &config_text(&dir, "", &providers));
    for args in [&["check-config"][..], &["run"][..]] {
        let out = bin()
            .args(args)
            .arg("--config")
            .arg(dir.join("config.toml"))
            .output()
            .unwrap();
        assert_eq!(exit_code(&out), 78, "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("providers.oauth2.file") && err.contains("owned by uid 4242"),
            "{err}"
        );
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
    assert_eq!(partners.count(Kind::OAuth2), 0);
}
