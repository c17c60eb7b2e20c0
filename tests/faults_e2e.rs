//! Bad partners and what the agent does about them: the old token stays
//! served, errors are classified, retries are spaced; and no secret or token
//! ever reaches the log.

use crate::util::*;
use standins::{Kind, Mode, Standin, StandinOptions};
use std::sync::Arc;
use std::time::Duration;

/// An agent with every kind, a valid token for each, and short retries.
fn running(tag: &str) -> (TempDir, Standin, Agent) {
    running_with(tag, false)
}

/// `sealed`: with a store key, so that refresh tokens are kept on disk.
fn running_with(tag: &str, sealed: bool) -> (TempDir, Standin, Agent) {
    let dir = TempDir::new(tag);
    let partners = standin();
    // Rotation needs a partner that takes Autovit's refresh grant.
    takes_autovit_refresh_grant(&partners);
    let agent_keys = if sealed {
        store_key_config(&dir, 1)
    } else {
        String::new()
    };
    let text = config_text(
        &dir,
        &agent_keys,
        &format!(
            "[defaults]\ntimeout = \"2s\"\nmax_backoff = \"2s\"\nrefresh_cooldown = \"0s\"\n\n{}",
            partners.providers_toml()
        ),
    );
    write_config(&dir, &text);
    let agent = Agent::start(&dir);
    (dir, partners, agent)
}

#[test]
fn bad_partner_answers_keep_the_old_token_and_are_classified() {
    let (_dir, partners, agent) = running("badanswers");
    let mut good = agent.wait_token("makeleaps")["access_token"].clone();
    let cases: Vec<(Mode, &str)> = vec![
        (Mode::Body("<html>oops</html>".into()), "bad_response"),
        (Mode::Body(String::new()), "bad_response"),
        (
            Mode::Body("{\"access_token\": \"trunc".into()),
            "bad_response",
        ),
        (
            Mode::Body("{\"token_type\":\"Bearer\"}".into()),
            "bad_response",
        ),
        // A token that would break the POS's Authorization header.
        (
            Mode::Body(
                "{\"access_token\":\"ok\\r\\nX-Injected: 1\",\"token_type\":\"bearer\",\"expires_in\":3600}"
                    .into(),
            ),
            "bad_response",
        ),
        (Mode::Huge(50 << 20), "bad_response"),
        (Mode::Delay(Duration::from_secs(4)), "transient"),
        (Mode::Close, "transient"),
        (
            Mode::Status {
                status: 500,
                body: "{}".into(),
                retry_after: None,
            },
            "transient",
        ),
    ];
    for (mode, class) in cases {
        let label = format!("{mode:?}");
        let label = &label[..label.len().min(60)];
        good = healthy(&agent, &partners, Kind::MakeLeaps, "makeleaps")["access_token"].clone();
        partners.set_mode(Kind::MakeLeaps, mode);
        let a = agent.ask("REFRESH makeleaps");
        assert_eq!(a["ok"], false, "{label}: {a}");
        assert_eq!(a["error"], "refresh_failed", "{label}");
        let message = a["message"].as_str().unwrap();
        assert!(message.starts_with(class), "{label}: {message}");
        assert!(a["retry_in"].as_u64().unwrap() >= 1);
        // The still-valid token keeps being served, at once.
        let t = agent.ask("TOKEN makeleaps");
        assert_eq!(t["access_token"], good, "{label}");
        assert_eq!(t["state"], "renewing", "{label}");
        let st = agent.wait_status("makeleaps", "last_error", |p| p["last_error"].is_string());
        assert!(st["last_error"].as_str().unwrap().starts_with(class));
    }
    partners.set_mode(Kind::MakeLeaps, Mode::Normal);
    // Recovery: the next scheduled attempt (max_backoff 2 s) succeeds.
    let renewed = wait_for("a fresh token after recovery", || {
        let a = agent.ask("TOKEN makeleaps");
        (a["access_token"] != good && a["state"] == "fresh").then_some(a)
    });
    assert!(partners.is_live(renewed["access_token"].as_str().unwrap()));
    let st = agent.wait_status("makeleaps", "cleared error", |p| p["failures"] == 0);
    assert!(st["last_error"].is_null());
}

#[test]
fn rejected_credentials_are_retried_slowly_and_shown() {
    let (_dir, partners, agent) = running("rejected");
    partners.set_mode(Kind::Autovit, Mode::Reject);
    partners.set_mode(Kind::Carrental, Mode::Reject);
    for name in ["autovit", "carrental"] {
        let st = agent.wait_status(name, "rejected", |p| p["state"] == "rejected");
        assert!(
            st["last_error"].as_str().unwrap().starts_with("rejected"),
            "{st}"
        );
        // The next attempt is a minute away, not seconds.
        let next = st["next_attempt"].as_str().unwrap();
        let next = shop_auth_agent::timefmt::parse_timestamp(next).unwrap();
        let now = shop_auth_agent::timefmt::now_unix();
        assert!(next - now >= 55, "{name}: retry in {}s", next - now);
        let a = agent.ask(&format!("TOKEN {name}"));
        assert_eq!(a["error"], "no_token");
        assert!(a["retry_in"].as_u64().unwrap() >= 55);
    }
    // Autovit's vendor error body reaches the status, classified.
    let st = agent.wait_status("autovit", "vendor message", |p| p["state"] == "rejected");
    assert!(
        st["last_error"].as_str().unwrap().contains("invalid_"),
        "{st}"
    );
    // One attempt each, not a loop (autovit_partner shares the kind but is
    // a separate provider; count only the password grant).
    let password_logins = partners
        .requests(Kind::Autovit)
        .iter()
        .filter(|r| r.action == "password")
        .count();
    assert_eq!(password_logins, 1);
    assert_eq!(partners.count(Kind::Carrental), 1);
    // A POS hammering REFRESH and INVALIDATE does not hurry the partner:
    // each is answered at once from the last outcome.
    let mut c = agent.client();
    for i in 0..20 {
        let verb = if i % 2 == 0 { "REFRESH" } else { "INVALIDATE" };
        let a = c.ask(&format!("{verb} carrental"));
        assert_eq!(a["error"], "refresh_failed", "{a}");
        assert!(
            a["message"].as_str().unwrap().starts_with("rejected"),
            "{a}"
        );
        assert!(a["retry_in"].as_u64().unwrap() >= 50, "{a}");
    }
    assert_eq!(partners.count(Kind::Carrental), 1);
}

#[test]
fn retry_after_is_honoured() {
    let dir = TempDir::new("retryafter");
    let partners = standin();
    partners.set_mode(
        Kind::OAuth2,
        Mode::Status {
            status: 429,
            body: "{\"error\":\"slow_down\"}".into(),
            retry_after: Some(120),
        },
    );
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let agent = Agent::start(&dir);
    let st = agent.wait_status("oauth2", "a failure", |p| p["failures"] == 1);
    assert!(st["last_error"].as_str().unwrap().starts_with("transient"));
    let next =
        shop_auth_agent::timefmt::parse_timestamp(st["next_attempt"].as_str().unwrap()).unwrap();
    let wait = next - shop_auth_agent::timefmt::now_unix();
    assert!((115..=121).contains(&wait), "next attempt in {wait}s");
}

#[test]
fn a_partner_over_https_with_a_private_ca() {
    let dir = TempDir::new("tls");
    let ca = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "shop-auth-agent test CA");
    let ca_cert = ca_params.self_signed(&ca).unwrap();
    // A stand-in serving a certificate for 127.0.0.1 signed by the CA,
    // valid now or long expired.
    let serve = |expired: bool| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &ca_cert, &ca).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
        Standin::start(StandinOptions {
            tls: Some(Arc::new(server)),
            ..StandinOptions::default()
        })
        .unwrap()
    };
    let partners = serve(false);
    let expired = serve(true);
    assert!(partners.base_url().starts_with("https://"));
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();
    let with_ca = partners.providers_toml().replace(
        "[providers.makeleaps]\n",
        &format!(
            "[providers.makeleaps]\nca_file = {:?}\n",
            ca_file.display().to_string()
        ),
    );
    let only = |text: &str, keep: &[&str]| {
        let mut out = text.to_owned();
        for name in PROVIDERS {
            if !keep.contains(&name) {
                out = crate::agent_e2e::remove_section(&out, name);
            }
        }
        out
    };
    // An expired certificate from the trusted CA: refused all the same.
    let stale = only(&expired.providers_toml(), &["autoleap"]).replace(
        "[providers.autoleap]\n",
        &format!(
            "[providers.autoleap]\nca_file = {:?}\n",
            ca_file.display().to_string()
        ),
    );
    // makeleaps trusts the test CA; carrental does not and must fail TLS.
    write_config(
        &dir,
        &config_text(
            &dir,
            "",
            &format!("{}\n{stale}", only(&with_ca, &["makeleaps", "carrental"])),
        ),
    );
    let agent = Agent::start(&dir);
    let a = agent.wait_token("makeleaps");
    assert!(partners.is_live(a["access_token"].as_str().unwrap()));
    let st = agent.wait_status("carrental", "a TLS failure", |p| {
        p["failures"].as_u64() >= Some(1)
    });
    let err = st["last_error"].as_str().unwrap();
    assert!(err.starts_with("transient") && err.contains("TLS"), "{err}");
    assert_eq!(agent.ask("TOKEN carrental")["error"], "no_token");
    let st = agent.wait_status("autoleap", "an expired certificate", |p| {
        p["failures"].as_u64() >= Some(1)
    });
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.starts_with("transient") && err.contains("TLS") && err.contains("xpired"),
        "{err}"
    );
    assert_eq!(
        expired.count(Kind::AutoLeap),
        0,
        "no request over a bad TLS session"
    );
}

#[test]
fn no_secret_or_token_reaches_the_log() {
    let dir = TempDir::new("leak");
    let partners = standin_with_lifetime(Duration::from_secs(4));
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let mut agent = Agent::start(&dir);
    // A full run: logins, renewals, every verb, a failure, a reload, a stop.
    for name in PROVIDERS {
        let first = agent.wait_token(name)["access_token"].clone();
        wait_for("a renewal", || {
            (agent.ask(&format!("TOKEN {name}"))["access_token"] != first).then_some(())
        });
        agent.ask(&format!("REFRESH {name}"));
        agent.ask(&format!("INVALIDATE {name}"));
    }
    // What clients see carries no secret and no token either (but TOKEN's
    // own answer): STATUS, failures, the CLI's table.
    let mut shown = vec![agent.ask("STATUS").to_string()];
    agent.ask("LOGOUT autoleap");
    partners.set_mode(Kind::MakeLeaps, Mode::Reject);
    // A renewal already on its way when the partner turned (4-s tokens are
    // renewed almost without pause under emulation) answers the REFRESH
    // that joins it with its token, as TOKEN would: ask until the refusal.
    let refused = wait_for("a refused REFRESH", || {
        let a = agent.ask("REFRESH makeleaps");
        (a["ok"] != true).then_some(a)
    });
    shown.push(refused.to_string());
    shown.push(agent.ask("STATUS").to_string());
    shown.push(stdout(&agent.cli(&["status"])));
    // A partner whose error fields echo the request back: its Basic
    // header (base64 of id:secret), its form or JSON body.
    for kind in Kind::ALL {
        partners.set_mode(kind, Mode::Echo);
    }
    for name in PROVIDERS {
        shown.push(agent.ask(&format!("REFRESH {name}")).to_string());
    }
    let status = agent.ask("STATUS").to_string();
    assert!(
        status.matches("invalid_client").count() >= 5,
        "the echoes reached STATUS: {status}"
    );
    shown.push(status);
    agent.signal(libc::SIGHUP);
    agent.ask("PING");
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    let log = agent.log_text();
    assert!(
        log.contains("makeleaps"),
        "the log is empty or unexpected:\n{log}"
    );
    let issued = partners.issued();
    assert!(issued.len() >= 12, "only {} tokens issued", issued.len());
    // Each secret as the requests carried it: as is, form-encoded, and
    // inside the Basic headers; and every token issued.
    for s in secret_forms().iter().chain(&issued) {
        assert!(!log.contains(s), "the log contains a secret or token");
        for text in &shown {
            assert!(
                !text.contains(s),
                "an answer contains a secret or token: {text}"
            );
        }
    }
}

#[test]
fn a_lost_rotation_answer_falls_back_to_a_login_and_rotations_survive_a_crash() {
    let (dir, partners, mut agent) = running_with("rotation", true);
    let actions = |p: &Standin| -> Vec<(String, u16)> {
        p.requests(Kind::Autovit)
            .into_iter()
            .filter(|r| r.action != "partner") // autovit_partner shares the kind
            .map(|r| (r.action, r.status))
            .collect()
    };
    let first = agent.wait_token("autovit");
    // A renewal rotates the refresh token; then kill -9 at once: the new
    // refresh token was on disk before it was handed out.
    let renewed = agent.ask("REFRESH autovit");
    assert_eq!(renewed["ok"], true, "{renewed}");
    assert_ne!(renewed["access_token"], first["access_token"]);
    agent.kill9();
    let agent = Agent::start(&dir);
    let again = agent.ask("REFRESH autovit");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(
        actions(&partners),
        [
            ("password".to_owned(), 200),
            ("refresh_token".to_owned(), 200),
            ("refresh_token".to_owned(), 200),
        ]
    );

    // The partner rotates but the answer is lost: the agent holds a dead
    // refresh token and must not wedge on it.
    partners.set_mode(Kind::Autovit, Mode::LoseAnswer);
    let lost = agent.ask("REFRESH autovit");
    assert_eq!(lost["error"], "refresh_failed", "{lost}");
    let t = agent.ask("TOKEN autovit");
    assert_eq!(
        t["access_token"], again["access_token"],
        "still served: {t}"
    );
    partners.set_mode(Kind::Autovit, Mode::Normal);
    let back = wait_for("a token after the lost rotation", || {
        let a = agent.ask("TOKEN autovit");
        (a["ok"] == true && a["access_token"] != again["access_token"]).then_some(a)
    });
    assert!(partners.is_live(back["access_token"].as_str().unwrap()));
    let tail: Vec<_> = actions(&partners).into_iter().skip(3).collect();
    assert_eq!(
        tail,
        [
            ("refresh_token".to_owned(), 200), // rotated, answer lost
            ("refresh_token".to_owned(), 400), // the old one is dead now
            ("password".to_owned(), 200),      // so a full login
        ]
    );
}

/// The longest TOKEN took (on fresh connections) while `busy` ran.
fn token_latency_during(
    agent: &Agent,
    name: &str,
    good: &serde_json::Value,
    busy: impl FnOnce() + Send,
) -> Duration {
    let done = std::sync::atomic::AtomicBool::new(false);
    /// Ends the measuring loop also when `busy` panics (its assertion fails).
    struct Done<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let _done = Done(&done);
            busy();
        });
        let mut worst = Duration::ZERO;
        let mut asked = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) || asked == 0 {
            let start = std::time::Instant::now();
            let a = agent.ask(&format!("TOKEN {name}"));
            worst = worst.max(start.elapsed());
            asked += 1;
            assert_eq!(a["access_token"], good["access_token"], "{a}");
            std::thread::sleep(Duration::from_millis(20));
        }
        worst
    })
}

#[test]
fn network_faults_keep_the_agent_responsive_and_recover() {
    let (_dir, partners, agent) = running("netfaults");
    let mut good = agent.wait_token("makeleaps");
    let cases: Vec<(&str, Mode, &str)> = vec![
        ("blackholed", Mode::Hang, "transient"),
        (
            "one byte a second",
            Mode::Trickle(Duration::from_secs(1)),
            "transient",
        ),
        ("connection dropped", Mode::Close, "transient"),
        (
            "503",
            Mode::Status {
                status: 503,
                body: String::new(),
                retry_after: None,
            },
            "transient",
        ),
        ("50 MB body", Mode::Huge(50 << 20), "bad_response"),
        (
            "truncated JSON",
            Mode::Body("{\"access_token\":\"ab".into()),
            "bad_response",
        ),
    ];
    let mut report = Vec::new();
    for (label, mode, class) in cases {
        good = healthy(&agent, &partners, Kind::MakeLeaps, "makeleaps");
        partners.set_mode(Kind::MakeLeaps, mode);
        let worst = token_latency_during(&agent, "makeleaps", &good, || {
            let a = agent.ask("REFRESH makeleaps");
            assert_eq!(a["error"], "refresh_failed", "{label}: {a}");
        });
        // Never behind the partner call (which takes up to the 2 s timeout);
        // the < 50 ms figure is measured by `cargo bench` on a quiet machine.
        assert!(
            worst < Duration::from_secs(1),
            "{label}: TOKEN took {worst:?}"
        );
        let st = agent.wait_status("makeleaps", "a classified error", |p| {
            p["last_error"].is_string()
        });
        assert!(
            st["last_error"].as_str().unwrap().starts_with(class),
            "{label}: {st}"
        );
        report.push(format!("{label}: {} ms", worst.as_millis()));
    }
    println!(
        "netfaults: worst TOKEN latency during each fault: {}",
        report.join(", ")
    );
    // Recovered: a fresh token within max_backoff (2 s) plus an attempt.
    partners.set_mode(Kind::MakeLeaps, Mode::Normal);
    let start = std::time::Instant::now();
    wait_for("a fresh token", || {
        let a = agent.ask("TOKEN makeleaps");
        (a["access_token"] != good["access_token"] && a["state"] == "fresh").then_some(a)
    });
    assert!(
        start.elapsed() < Duration::from_secs(2 + 2 + 5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_refused_connection_is_a_transient_error() {
    let dir = TempDir::new("refused");
    // A port that was just free: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    write_config(
        &dir,
        &config_text(
            &dir,
            "",
            &format!(
                "[providers.gone]\nkind = \"makeleaps\"\ntoken_url = \"http://127.0.0.1:{port}/user/oauth2/token/\"\nclient_id = \"x\"\nclient_secret = \"y\"\n"
            ),
        ),
    );
    let agent = Agent::start(&dir);
    let st = agent.wait_status("gone", "a failure", |p| p["failures"].as_u64() >= Some(1));
    let e = st["last_error"].as_str().unwrap();
    assert!(e.starts_with("transient") && e.contains("refused"), "{e}");
}

#[test]
fn a_name_that_does_not_resolve_is_a_transient_error() {
    let dir = TempDir::new("dns");
    // .invalid never resolves (RFC 6761), with or without a network; the
    // lookup either fails or runs into the timeout: transient both ways.
    write_config(
        &dir,
        &config_text(
            &dir,
            "",
            "[providers.nowhere]\nkind = \"makeleaps\"\ntoken_url = \"https://partner.shop-auth-agent.invalid/user/oauth2/token/\"\nclient_id = \"x\"\nclient_secret = \"y\"\ntimeout = \"3s\"\n",
        ),
    );
    let agent = Agent::start(&dir);
    let start = std::time::Instant::now();
    assert_eq!(agent.ask("PING")["ok"], true);
    let st = agent.wait_status("nowhere", "a failure", |p| {
        p["failures"].as_u64() >= Some(1)
    });
    let e = st["last_error"].as_str().unwrap();
    assert!(e.starts_with("transient"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(20));
    assert_eq!(agent.ask("TOKEN nowhere")["error"], "no_token");
}

#[test]
#[should_panic(expected = "token-shaped")]
fn the_suite_wide_leak_check_would_see_a_token() {
    assert_no_leak(&format!("INFO makeleaps: got {}", "c0ffee12".repeat(5)));
}

/// RUST_LOG=trace, the most an administrator can ask for, still logs no
/// token: the store's, the TLS library's and the HTTP client's own lines are
/// capped (sled's trace lines print whole records).
#[test]
fn trace_logging_leaks_nothing() {
    let dir = TempDir::new("trace");
    let partners = standin();
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml());
    write_config(&dir, &config_text(&dir, "", &providers));
    let mut agent = Agent::spawn(&dir, &[("RUST_LOG", "trace")]);
    agent.wait_ready();
    for name in PROVIDERS {
        agent.wait_token(name);
        assert_eq!(agent.ask(&format!("REFRESH {name}"))["ok"], true);
    }
    agent.signal(libc::SIGTERM);
    agent.wait_exit();
    let log = agent.log_text();
    assert!(log.contains("DEBUG"), "not verbose:\n{log}");
    assert_no_leak(&log);
    // Also bytes printed as lists of numbers, as sled prints keys and values.
    let decoded = decode_byte_lists(&log);
    for t in partners.issued() {
        assert!(!log.contains(&t), "a token reached the log at trace level");
        assert!(
            !decoded.contains(&t),
            "a token reached the log as a byte list"
        );
    }
}

/// Every `[n, n, …]` list of byte values in `text`, decoded and joined.
fn decode_byte_lists(text: &str) -> String {
    let mut out = String::new();
    for part in text.split('[').skip(1) {
        let Some(list) = part.split(']').next() else {
            continue;
        };
        let bytes: Option<Vec<u8>> = list
            .split(',')
            .map(|n| n.trim().parse::<u8>().ok())
            .collect();
        if let Some(b) = bytes.filter(|b| b.len() > 8) {
            out.push_str(&String::from_utf8_lossy(&b));
            out.push('\n');
        }
    }
    out
}

/// Proxy variables in the environment are not used: a proxy would see
/// every credential the agent sends (and a local user who can set the
/// service's environment is not who decides where they go).
#[test]
fn proxy_variables_in_the_environment_are_ignored() {
    let dir = TempDir::new("proxyenv");
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let url = format!("http://{}", trap.local_addr().unwrap());
    let env: Vec<(&str, &str)> = [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .iter()
    .map(|k| (*k, url.as_str()))
    .collect();
    let mut env = env;
    env.push(("NO_PROXY", ""));
    env.push(("no_proxy", ""));
    let agent = Agent::spawn(&dir, &env);
    agent.wait_ready();
    for name in PROVIDERS {
        agent.wait_token(name);
    }
    assert!(
        trap.accept().is_err(),
        "the agent connected to the proxy named in its environment"
    );
}

/// A CONNECT proxy on loopback that tunnels to the target and records
/// each CONNECT's target.
fn tunnel_proxy() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap() <= 2 {
                        break;
                    }
                }
                let target = line.split(' ').nth(1).unwrap_or("").to_owned();
                log.lock().unwrap().push(line.trim().to_owned());
                let Ok(upstream) = TcpStream::connect(&target) else {
                    return;
                };
                let mut client = client;
                client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .unwrap();
                let (mut up_r, mut up_w) = (upstream.try_clone().unwrap(), upstream);
                let mut down_w = client;
                let mut down_r = reader;
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut up_r, &mut down_w);
                });
                let _ = std::io::copy(&mut down_r, &mut up_w);
            });
        }
    });
    (url, seen)
}

#[test]
fn a_configured_proxy_carries_every_partner_request() {
    let dir = TempDir::new("proxy");
    let partners = standin();
    let (url, seen) = tunnel_proxy();
    // For every provider by [agent]; "env" for one, which then follows
    // HTTP_PROXY; "none" for another.
    let providers = format!("{NO_COOLDOWN}\n{}", partners.providers_toml())
        .replace(
            "[providers.oauth2]\n",
            "[providers.oauth2]\nproxy = \"none\"\n",
        )
        .replace(
            "[providers.carrental]\n",
            "[providers.carrental]\nproxy = \"env\"\n",
        );
    write_config(
        &dir,
        &config_text(&dir, &format!("proxy = {url:?}"), &providers),
    );
    let (env_url, env_seen) = tunnel_proxy();
    let agent = Agent::spawn(
        &dir,
        &[
            ("HTTP_PROXY", env_url.as_str()),
            ("http_proxy", env_url.as_str()),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ],
    );
    agent.wait_ready();
    for name in PROVIDERS {
        agent.wait_token(name);
    }
    let target = partners.base_url().trim_start_matches("http://").to_owned();
    let connects = |seen: &Arc<std::sync::Mutex<Vec<String>>>| {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|l| l.starts_with("CONNECT ") && l.contains(&target))
            .count()
    };
    // Four providers over the agent's proxy, loopback or not; carrental
    // over the environment's; oauth2 over none.
    assert!(connects(&seen) >= 4, "{:?}", seen.lock().unwrap());
    assert!(connects(&env_seen) >= 1, "{:?}", env_seen.lock().unwrap());
    let carrental_before = connects(&env_seen);
    let all_before = connects(&seen) + carrental_before;
    let oauth2_before = partners.count(Kind::OAuth2);
    assert_eq!(agent.ask("REFRESH oauth2")["ok"], true);
    assert!(partners.count(Kind::OAuth2) > oauth2_before);
    assert_eq!(connects(&seen) + connects(&env_seen), all_before);
    // A proxy URL that does not parse is a config error that does not
    // repeat the value (it may hold the proxy's password).
    write_config(
        &dir,
        &config_text(
            &dir,
            "proxy = \"ftp://user:pw123@x\"",
            &partners.providers_toml(),
        ),
    );
    let out = bin()
        .args(["check-config", "--config"])
        .arg(dir.join("config.toml"))
        .output()
        .unwrap();
    assert_eq!(exit_code(&out), 78);
    let err = stderr(&out);
    assert!(
        err.contains("agent.proxy") && !err.contains("pw123"),
        "{err}"
    );
}

/// Runs `cmd` with core dumps allowed (RLIMIT_CORE unlimited) in `cwd`,
/// waits for `ready`, crashes it with SIGABRT (what a failed assertion in
/// C code raises; Rust catches a SIGSEGV that is not a fault), and says whether the kernel
/// dumped its core.
fn dumps_core(
    mut cmd: std::process::Command,
    cwd: &std::path::Path,
    ready: impl Fn() -> bool,
) -> bool {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    std::fs::create_dir_all(cwd).unwrap();
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            let unlimited = libc::rlimit {
                rlim_cur: libc::RLIM_INFINITY,
                rlim_max: libc::RLIM_INFINITY,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &unlimited);
            Ok(())
        });
    }
    let mut child = cmd
        .current_dir(cwd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the process to be ready", || ready().then_some(()));
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGABRT) };
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGABRT));
    status.core_dumped()
}

#[test]
fn a_crash_dumps_no_core() {
    if emulated() {
        println!("SKIP: under an emulator the crash and its core are the emulator's");
        return;
    }
    // The control's core must land in its temp folder: only with a plain
    // relative core_pattern (a pipe to systemd-coredump or apport, or an
    // absolute path, would put it elsewhere).
    let pattern = std::fs::read_to_string("/proc/sys/kernel/core_pattern").unwrap_or_default();
    if pattern.starts_with('|') || pattern.starts_with('/') || pattern.trim().is_empty() {
        skip(&format!(
            "core_pattern is {:?}: the control process's core would land outside the test's folder",
            pattern.trim()
        ));
        return;
    }
    let dir = TempDir::new("core");
    // The control: this machine does write a core for a process that lets it.
    let mut sleep = std::process::Command::new("sleep");
    sleep.arg("60");
    let started = std::time::Instant::now();
    if !dumps_core(sleep, &dir.join("control"), || {
        started.elapsed() > Duration::from_millis(200)
    }) {
        println!("SKIP: this machine dumps no core even for a process that allows it");
        return;
    }
    let partners = standin();
    write_config(&dir, &config_text(&dir, "", &partners.providers_toml()));
    let mut run = bin();
    run.arg("run")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .env_remove("NOTIFY_SOCKET");
    let socket = dir.join("agent.sock");
    let dumped = dumps_core(run, &dir.join("agent"), || {
        // Secrets read, tokens held: what a core would carry.
        partners.count(Kind::Carrental) > 0
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    assert!(!dumped, "the agent dumped its core");
}
