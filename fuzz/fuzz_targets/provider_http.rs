//! Every partner kind's response parsing, through the only public path to
//! it: `providers::build(settings).login/renew/logout(&Http)`, against a
//! server on 127.0.0.1 that reads the request and answers with the fuzz
//! input as the raw HTTP response, then closes. This covers AutoLeap's and
//! Carrental's private `parse`, the OAuth kinds' `oauth_grant`, and
//! `http::Http`'s reading of status, `Retry-After`, `Date`, `Content-Type`
//! and the capped body (ureq's HTTP/1.1 parser included).
//!
//! Input: one selector byte, then the response bytes, e.g.
//! `aHTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{"success":true,...}`.
//! Selector: a/A/L AutoLeap login/renew/logout, m MakeLeaps login, v/p/V
//! Autovit password login/partner login/renew, c Carrental login, o/k/O
//! oauth2 password login/client-credentials login/renew; any other byte
//! picks one of these by its value.
//!
//! Invariants: no panic; an error message holds none of the configured
//! secrets nor the tokens sent, and no control character (it goes to the
//! log and STATUS as one line); an accepted grant becomes a token that
//! lives 1 s ..= 366 days.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::http::Http;
use shop_auth_agent::providers::{
    self, AutovitGrant, ClientAuth, Grant, KindSettings, OAuth2Grant, ProviderError,
};
use shop_auth_agent::secret::Secret;
use shop_auth_agent::token::Token;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const AUTH_KEY: &str = "AK-s3cr3t-autoleap-key";
const CLIENT_SECRET: &str = "CS-s3cr3t-client-secret";
const PASSWORD: &str = "PW-s3cr3t-password";
const PARTNER_SECRET: &str = "PS-s3cr3t-partner-secret";
const REFRESH: &str = "RT-s3cr3t-refresh-token";
const ACCESS: &str = "AT-s3cr3t-access-token";
const NOW: i64 = 1_795_000_000;
const MAX_LIFETIME: i64 = 366 * 24 * 3600;

struct Server {
    addr: SocketAddr,
    response: Arc<Mutex<Vec<u8>>>,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Reads one request (head and Content-Length body, so that closing
/// afterwards sends FIN, not RST), writes the canned bytes, closes.
fn serve(mut s: TcpStream, response: &Mutex<Vec<u8>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = find(&buf, b"\r\n\r\n") {
            break p + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let answer = response.lock().unwrap().clone();
    let _ = s.write_all(&answer);
    let _ = s.shutdown(Shutdown::Write);
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // A client that stops reading a big body must not kill the fuzzer.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        let addr = listener.local_addr().unwrap();
        let response = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::clone(&response);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                serve(s, &shared);
            }
        });
        Server { addr, response }
    })
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Login,
    Renew,
    Logout,
}

/// The settings, the operation, and the secrets its request carries.
fn settings(sel: u8, base: &str) -> (KindSettings, Op, &'static [&'static str]) {
    let autoleap = || KindSettings::AutoLeap {
        base_url: format!("{base}/v2/"),
        partner_id: "partner-1".into(),
        auth_key: Secret::new(AUTH_KEY),
    };
    let autovit = |grant, client_auth| KindSettings::Autovit {
        token_url: format!("{base}/api/open/oauth/token"),
        client_id: "autovit-client".into(),
        client_secret: Secret::new(CLIENT_SECRET),
        grant,
        client_auth,
    };
    let password = || AutovitGrant::Password {
        username: "shop@example.com".into(),
        password: Secret::new(PASSWORD),
    };
    let oauth2 = |grant, client_auth| KindSettings::OAuth2 {
        token_url: format!("{base}/oauth/token?tenant=7"),
        client_id: "oauth-client".into(),
        client_secret: Some(Secret::new(CLIENT_SECRET)),
        grant,
        client_auth,
        scope: Some("read".into()),
        extra: vec![("audience".into(), "pos".into())],
    };
    let o_password = || OAuth2Grant::Password {
        username: "shop".into(),
        password: Secret::new(PASSWORD),
    };
    const ORDER: &[u8] = b"aALmvpVcokO";
    let sel = if ORDER.contains(&sel) {
        sel
    } else {
        ORDER[usize::from(sel) % ORDER.len()]
    };
    match sel {
        b'a' => (autoleap(), Op::Login, &[AUTH_KEY]),
        b'A' => (autoleap(), Op::Renew, &[AUTH_KEY, REFRESH]),
        b'L' => (autoleap(), Op::Logout, &[AUTH_KEY, ACCESS, REFRESH]),
        b'm' => (
            KindSettings::MakeLeaps {
                token_url: format!("{base}/user/oauth2/token/"),
                client_id: "makeleaps-client".into(),
                client_secret: Secret::new(CLIENT_SECRET),
                scope: Some("read write".into()),
            },
            Op::Login,
            &[CLIENT_SECRET],
        ),
        b'v' => (
            autovit(password(), ClientAuth::Basic),
            Op::Login,
            &[CLIENT_SECRET, PASSWORD],
        ),
        b'p' => (
            autovit(
                AutovitGrant::Partner {
                    partner_code: "partner-code".into(),
                    partner_secret: Secret::new(PARTNER_SECRET),
                },
                ClientAuth::Body,
            ),
            Op::Login,
            &[CLIENT_SECRET, PARTNER_SECRET],
        ),
        b'V' => (
            autovit(password(), ClientAuth::Body),
            Op::Renew,
            &[CLIENT_SECRET, REFRESH],
        ),
        b'c' => (
            KindSettings::Carrental {
                url: format!("{base}/authtoken"),
                username: "carrental-user".into(),
                password: Secret::new(PASSWORD),
            },
            Op::Login,
            &[PASSWORD],
        ),
        b'o' => (
            oauth2(o_password(), ClientAuth::Body),
            Op::Login,
            &[CLIENT_SECRET, PASSWORD],
        ),
        b'k' => (
            oauth2(OAuth2Grant::ClientCredentials, ClientAuth::Basic),
            Op::Login,
            &[CLIENT_SECRET],
        ),
        _ => (
            oauth2(o_password(), ClientAuth::Basic),
            Op::Renew,
            &[CLIENT_SECRET, REFRESH],
        ),
    }
}

fn check_error(e: &ProviderError, sent: &[&str]) {
    // A body that is no token is described by its size and Content-Type,
    // which the message quotes as the partner sent it (no partner puts a
    // client's secret in a Content-Type header); the rest is checked.
    let ours = e.message.split("content-type ").next().unwrap_or("");
    for &s in sent {
        assert!(!ours.contains(s), "secret {s:?} in error {e:?}");
    }
    // A tab does not break the log line; the others do.
    assert!(
        !e.message.chars().any(|c| c.is_control() && c != '\t'),
        "control character in error {e:?}"
    );
}

fn check_grant(grant: Grant) {
    assert!(!grant.access.expose().trim().is_empty());
    let iat = shop_auth_agent::jwt::claims(grant.access.expose()).and_then(|c| c.iat);
    // What the scheduler does with every grant.
    let _ = shop_auth_agent::clock::partner_skew(NOW, grant.server_date, iat);
    let (t, _) = Token::from_grant(grant, NOW, Duration::from_secs(900));
    let lifetime = t.expires_at - t.obtained_at;
    assert!(
        (1..=MAX_LIFETIME).contains(&lifetime),
        "lifetime {lifetime}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, response)) = data.split_first() else {
        return;
    };
    let server = server();
    *server.response.lock().unwrap() = response.to_vec();
    let (kind, op, sent) = settings(sel, &format!("http://{}", server.addr));
    let provider = providers::build(&kind);
    // A new client each time: no pooled connection outlives its answer.
    let http = Http::new(Duration::from_secs(5), None).expect("client");
    match op {
        Op::Login => match provider.login(&http) {
            Ok(g) => check_grant(g),
            Err(e) => check_error(&e, sent),
        },
        Op::Renew => match provider.renew(&http, &Secret::new(REFRESH)) {
            Some(Ok(g)) => check_grant(g),
            Some(Err(e)) => check_error(&e, sent),
            None => {}
        },
        Op::Logout => {
            let refresh = Secret::new(REFRESH);
            if let Err(e) = provider.logout(&http, &Secret::new(ACCESS), Some(&refresh)) {
                check_error(&e, sent);
            }
        }
    }
});
