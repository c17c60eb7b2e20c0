//! The partners at the edges of their documents, as a real partner may
//! answer where the stand-ins' defaults are kind: a refused refresh grant,
//! a server writing local times without a zone, opaque tokens.

use crate::util::*;
use standins::{Format, Kind, Mode};
use std::time::Duration;

/// The `autovit` provider's token requests, by grant, in order
/// (`autovit_partner` shares the kind; it sends its client id in the body).
fn grants(partners: &standins::Standin) -> Vec<(String, u16)> {
    partners
        .requests(Kind::Autovit)
        .into_iter()
        .filter(|r| !r.params.iter().any(|(k, _)| k == "client_id"))
        .map(|r| (r.action, r.status))
        .collect()
}

#[test]
fn a_refused_refresh_grant_is_remembered_across_restarts() {
    let dir = TempDir::new("nogrant");
    // Autovit's default stand-in refuses the refresh grant, as its document
    // lists only password and partner. A store key keeps refresh tokens.
    let partners = standin_with_lifetime(Duration::from_secs(4));
    let keys = store_key_config(&dir, 1);
    write_config(&dir, &config_text(&dir, &keys, &partners.providers_toml()));
    let mut agent = Agent::start(&dir);
    let first = agent.wait_token("autovit")["access_token"].clone();
    // Two renewals: the first tries the refresh grant once, then logs in;
    // the second logs in directly.
    let mut last = first;
    for _ in 0..2 {
        last = wait_for("a renewal", || {
            let t = agent.ask("TOKEN autovit")["access_token"].clone();
            (t != last).then_some(t)
        });
    }
    let tried = |g: &[(String, u16)]| g.iter().filter(|(a, _)| a == "refresh_token").count();
    assert_eq!(
        grants(&partners),
        vec![
            ("password".to_owned(), 200),
            ("refresh_token".to_owned(), 400),
            ("password".to_owned(), 200),
            ("password".to_owned(), 200),
        ]
    );
    assert!(
        agent.log_text().contains("refuses the refresh grant"),
        "said once in the log"
    );
    // After a restart too (remembered with the stored token).
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    let agent = Agent::start(&dir);
    let before = grants(&partners).len();
    let now = agent.ask("TOKEN autovit")["access_token"].clone();
    wait_for("a renewal after the restart", || {
        let t = agent.ask("TOKEN autovit")["access_token"].clone();
        (t != now && grants(&partners).len() > before).then_some(())
    });
    assert_eq!(tried(&grants(&partners)), 1, "{:?}", grants(&partners));
}

#[test]
fn a_refused_refresh_grant_is_remembered_when_the_login_after_it_fails() {
    let dir = TempDir::new("nogrant-fail");
    // Hour-long tokens: nothing is renewed until the test asks (REFRESH),
    // however slow an emulator makes the first login.
    let partners = standin();
    let keys = store_key_config(&dir, 1);
    write_config(&dir, &config_text(&dir, &keys, &partners.providers_toml()));
    let mut agent = Agent::start(&dir);
    agent.wait_token("autovit");
    // The partner refuses the refresh grant and is too busy for logins.
    let busy = Mode::Status {
        status: 503,
        body: r#"{"error":"temporarily_unavailable"}"#.into(),
        retry_after: None,
    };
    partners.set_mode(Kind::Autovit, Mode::Only("password".into(), Box::new(busy)));
    agent.ask("REFRESH autovit");
    // The agent retries by itself after its backoff.
    wait_for("two failed renewals", || {
        (grants(&partners).len() >= 4).then_some(())
    });
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    let pair = |a: &str, s: u16| (a.to_owned(), s);
    assert_eq!(
        grants(&partners)[..4],
        [
            pair("password", 200),
            pair("refresh_token", 400),
            pair("password", 503),
            pair("password", 503),
        ],
        "the refusal is remembered though no token came with it"
    );
    // Stored so: after a restart the next renewal logs in.
    partners.set_mode(Kind::Autovit, Mode::Normal);
    let before = grants(&partners).len();
    let agent = Agent::start(&dir);
    wait_for("a login after the restart", || {
        agent.ask("REFRESH autovit");
        grants(&partners)[before..]
            .iter()
            .any(|(_, s)| *s == 200)
            .then_some(())
    });
    let after = grants(&partners);
    assert!(
        after[before..].iter().all(|(a, _)| a == "password"),
        "{after:?}"
    );
}

#[test]
fn refresh_never_logs_in_each_time() {
    let dir = TempDir::new("refreshnever");
    let partners = standin_with_lifetime(Duration::from_secs(4));
    takes_autovit_refresh_grant(&partners);
    let providers = partners.providers_toml().replace(
        "[providers.autovit]\n",
        "[providers.autovit]\nrefresh = \"never\"\n",
    );
    write_config(&dir, &config_text(&dir, "", &providers));
    let agent = Agent::start(&dir);
    let mut last = agent.wait_token("autovit")["access_token"].clone();
    for _ in 0..2 {
        last = wait_for("a renewal", || {
            let t = agent.ask("TOKEN autovit")["access_token"].clone();
            (t != last).then_some(t)
        });
    }
    let g = grants(&partners);
    assert!(
        g.len() >= 3 && g.iter().all(|(a, _)| a == "password"),
        "{g:?}"
    );
}

#[test]
fn a_carrental_on_local_time_with_opaque_tokens_gets_its_true_lifetime() {
    let dir = TempDir::new("localtime");
    let partners = standin();
    // UTC+2 written without an offset; no JWT to read an exp from.
    partners.set_format(
        Kind::Carrental,
        Format {
            opaque: true,
            local_offset: Some(7200),
            ..Format::of(Kind::Carrental)
        },
    );
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    let t = agent.wait_token("carrental");
    let left = t["expires_in"].as_i64().unwrap();
    // The stand-in's tokens live an hour; read as UTC, `expires` says three.
    assert!((3500..=3600).contains(&left), "{t}");
    assert_eq!(t["token_type"], "Bearer");
    // Without expiresIn and issued, the offset-less expires alone is not
    // trusted: token_lifetime (15 minutes by default) is used, and the log
    // says why once.
    partners.set_mode(
        Kind::Carrental,
        standins::Mode::Body(format!(
            r#"{{"type":"JWT","token":"opaque0123","expires":"{}"}}"#,
            "2099-01-01T00:00:00"
        )),
    );
    assert_eq!(agent.ask("INVALIDATE carrental")["ok"], true);
    let t = wait_for("the new token", || {
        let t = agent.ask("TOKEN carrental");
        (t["access_token"] == "opaque0123").then_some(t)
    });
    let left = t["expires_in"].as_i64().unwrap();
    assert!((800..=900).contains(&left), "{t}");
    assert_eq!(t["token_type"], "Bearer", "type JWT is not the scheme");
    assert!(agent.log_text().contains("expires has no time zone"));
}

#[test]
fn an_autoleap_logout_renews_an_expired_token_to_revoke_it_and_says_when_it_cannot() {
    let dir = TempDir::new("revoke");
    let partners = standin_with_lifetime(Duration::from_secs(3));
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    agent.wait_token("autoleap");
    // A partner that refuses the revocation: logged out here all the same,
    // and STATUS says the partner may still hold live tokens.
    partners.set_mode(Kind::AutoLeap, standins::Mode::Reject);
    assert_eq!(agent.ask("LOGOUT autoleap")["ok"], true);
    let st = agent.wait_status("autoleap", "logged out", |p| p["state"] == "logged_out");
    let said = st["last_error"].as_str().unwrap_or("");
    assert!(said.contains("revocation at the partner failed"), "{st}");
    assert!(agent
        .log_text()
        .contains("revocation at the partner failed"));
    partners.set_mode(Kind::AutoLeap, standins::Mode::Normal);
    assert_eq!(agent.ask("REFRESH autoleap")["ok"], true);
    // Renewals fail with an hour's Retry-After: the token expires, held.
    partners.set_mode(
        Kind::AutoLeap,
        standins::Mode::Status {
            status: 503,
            body: "{}".into(),
            retry_after: Some(3600),
        },
    );
    agent.wait_status("autoleap", "the token expired", |p| p["state"] == "expired");
    partners.set_mode(Kind::AutoLeap, standins::Mode::Normal);
    let before = partners.requests(Kind::AutoLeap).len();
    assert_eq!(agent.ask("LOGOUT autoleap")["ok"], true);
    let after: Vec<(String, u16)> = partners.requests(Kind::AutoLeap)[before..]
        .iter()
        .map(|r| (r.action.clone(), r.status))
        .collect();
    // Renewed (no login), then revoked with the live token.
    assert_eq!(
        after,
        vec![("refresh".to_owned(), 200), ("logout".to_owned(), 200)]
    );
    let logout = partners.requests(Kind::AutoLeap).pop().unwrap();
    assert!(
        logout.params.iter().any(|(k, _)| k == "refreshToken"),
        "{:?}",
        logout.params
    );
    let st = agent.wait_status("autoleap", "logged out", |p| p["state"] == "logged_out");
    // (The renewal failure stays shown: a logout lifts no backoff.)
    assert!(
        !st["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("revocation"),
        "{st}"
    );
}
