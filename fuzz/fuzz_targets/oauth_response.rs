//! The shared response parsers in `providers` that every OAuth-style kind
//! (MakeLeaps, Autovit, `oauth2`) runs on a partner's answer:
//! `check_status`, `json_object`, `required_str`/`opt_str`/`opt_secs` and
//! `oauth_grant`, then `Token::from_grant`, `token::refresh_at` and the
//! TOKEN answer for what they accept.
//!
//! Input: one header line, then the response body:
//!
//! ```text
//! 400 ct=application/json d=784111777 r=120 s=hunter2 n=1795000000 f=900 u=1
//! {"error":"invalid_client","error_description":"bad secret hunter2"}
//! ```
//!
//! The line's first word is the status (200 if it is not a number); `ct=`
//! the Content-Type, `d=` the `Date` header (unix seconds), `r=` Retry-After
//! seconds, `s=` a configured secret (repeatable), `n=` our clock (unix
//! seconds, 0 ..= year 9999), `f=` the configured token_lifetime in seconds,
//! `u=` which token URL (0-3). Unknown words are ignored.
//!
//! Invariants: no panic; a status is classified as the doc comment of
//! `check_status` says, keeping `Retry-After`; an error message never
//! quotes a configured secret, nor holds a control character but tab; an accepted
//! grant becomes a token that lives 1 s ..= 366 days, renews inside its
//! lifetime, and whose TOKEN answer is one line of JSON carrying it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::http::{strip_query, Response};
use shop_auth_agent::providers::{self, ErrorKind, ProviderError};
use shop_auth_agent::token::{self, Token};
use std::time::Duration;

const URLS: [&str; 4] = [
    "https://api.makeleaps.example/user/oauth2/token/?tenant=q",
    "http://127.0.0.1:9/api/open/oauth/token",
    "https://[::1]:8443/oauth/token#frag",
    "token.example",
];
const MAX_LIFETIME: i64 = 366 * 24 * 3600;
const YEAR_9999_END: i64 = 253_402_300_799;

struct Case<'a> {
    resp: Response,
    secrets: Vec<&'a str>,
    now: i64,
    fallback: Duration,
    url: &'static str,
}

fn read(data: &[u8]) -> Option<Case<'_>> {
    let nl = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let head = std::str::from_utf8(&data[..nl]).ok()?;
    let body = data.get(nl + 1..).unwrap_or(&[]).to_vec();
    let mut words = head.split(' ');
    let status = words
        .next()
        .and_then(|w| w.parse::<u16>().ok())
        .unwrap_or(200);
    let mut case = Case {
        resp: Response {
            status,
            body,
            retry_after: None,
            date: None,
            content_type: None,
        },
        secrets: Vec::new(),
        now: 1_795_000_000,
        fallback: Duration::from_secs(900),
        url: URLS[0],
    };
    for w in words {
        if let Some(v) = w.strip_prefix("ct=") {
            // What `HeaderValue::to_str` lets through: visible ASCII and tab.
            if v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)) {
                case.resp.content_type = Some(v.to_owned());
            }
        } else if let Some(v) = w.strip_prefix("d=") {
            case.resp.date = v.parse().ok();
        } else if let Some(v) = w.strip_prefix("r=") {
            case.resp.retry_after = v.parse().ok().map(Duration::from_secs);
        } else if let Some(v) = w.strip_prefix("s=") {
            case.secrets.push(v);
        } else if let Some(v) = w.strip_prefix("n=") {
            case.now = v.parse::<i64>().ok()?.clamp(0, YEAR_9999_END);
        } else if let Some(v) = w.strip_prefix("f=") {
            case.fallback = Duration::from_secs(v.parse().ok()?);
        } else if let Some(v) = w.strip_prefix("u=") {
            case.url = URLS[v.parse::<usize>().ok()? % URLS.len()];
        }
    }
    // A real Date header is what parse_http_date accepts: years 0-9999.
    if case
        .resp
        .date
        .is_some_and(|d| !(-62_167_219_200..=YEAR_9999_END).contains(&d))
    {
        return None;
    }
    Some(case)
}

/// What a secret looks like in a message once control characters are
/// blanked (the form the scrubbing must catch too).
fn blanked(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A character that would break a log line (a tab does not).
fn breaks_line(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// The string fields `check_status` quotes from an error body.
fn partner_fields(body: &[u8]) -> Vec<String> {
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(body) else {
        return Vec::new();
    };
    [
        "error",
        "error_description",
        "error_human_title",
        "error_human_message",
        "message",
    ]
    .iter()
    .filter_map(|k| obj.get(*k)?.as_str().map(str::to_owned))
    .collect()
}

fn check_error(case: &Case, e: &ProviderError) {
    let status = case.resp.status;
    assert!(
        !e.message.chars().any(breaks_line),
        "control character in {e:?}"
    );
    if (200..300).contains(&status) {
        assert_eq!(e.kind, ErrorKind::BadResponse, "{e:?}");
        return;
    }
    let want = match status {
        408 | 429 | 500..=599 => ErrorKind::Transient,
        400..=499 => ErrorKind::Rejected,
        _ => ErrorKind::Transient,
    };
    assert_eq!(e.kind, want, "status {status}: {e:?}");
    assert_eq!(e.retry_after, case.resp.retry_after);
    let prefix = format!("HTTP {status} from {}", strip_query(case.url));
    let said = e
        .message
        .strip_prefix(&prefix)
        .expect("message names status and URL");
    let said = said.strip_prefix(": ").unwrap_or(said);
    // Only the partner's own words follow; none of them may be a secret.
    // (Secrets with `*` or spaces could be re-formed by the `***` and
    // ` — ` the scrubbing and joining insert; they are not checked.)
    for s in &case.secrets {
        if s.is_empty() || s.contains('*') || s.contains(' ') {
            continue;
        }
        assert!(!said.contains(s), "secret {s:?} quoted in {:?}", e.message);
        // A secret with a control character that the partner echoes comes
        // out blanked; that form counts too (when the partner did echo it).
        let b = blanked(s);
        if b.trim().len() >= 4
            && partner_fields(&case.resp.body)
                .iter()
                .any(|f| f.contains(s))
        {
            assert!(
                !said.contains(&b),
                "secret {s:?} quoted (blanked) in {:?}",
                e.message
            );
        }
    }
}

fn check_token(case: &Case, t: &Token) {
    let lifetime = t.expires_at - t.obtained_at;
    assert_eq!(t.obtained_at, case.now);
    assert!(
        (1..=MAX_LIFETIME).contains(&lifetime),
        "lifetime {lifetime}"
    );
    assert!(!t.token_type.is_empty());
    for before in [
        Duration::ZERO,
        Duration::from_secs(300),
        Duration::from_secs(u64::MAX),
    ] {
        for jitter in [0.0, 0.5, 0.999_999] {
            let at = token::refresh_at(t, before, jitter);
            assert!(
                (t.obtained_at..t.expires_at.max(t.obtained_at + 1)).contains(&at),
                "refresh at {at} outside {}..{}",
                t.obtained_at,
                t.expires_at
            );
        }
    }
    let line = shop_auth_agent::protocol::token("fuzz", t, "fresh", case.now);
    assert!(!line.contains('\n'));
    let v: serde_json::Value = serde_json::from_str(&line).expect("TOKEN answer is JSON");
    assert_eq!(v["access_token"], t.access.expose());
    assert_eq!(v["expires_in"], lifetime);
}

fuzz_target!(|data: &[u8]| {
    let Some(case) = read(data) else { return };
    let url = case.url;

    // The helpers one by one.
    let status = providers::check_status(&case.resp, url, &case.secrets);
    match &status {
        Ok(()) => assert!((200..300).contains(&case.resp.status)),
        Err(e) => check_error(&case, e),
    }
    match providers::json_object(&case.resp, url) {
        Ok(obj) => {
            for field in ["access_token", "token", "accessToken"] {
                if let Ok(s) = providers::required_str(&obj, field, url) {
                    assert!(!s.is_empty() && s.trim() == s);
                }
            }
            for field in ["refresh_token", "token_type", "scope"] {
                if let Some(s) = providers::opt_str(&obj, field) {
                    assert!(!s.is_empty() && s.trim() == s);
                }
            }
            for field in ["expires_in", "expiresIn"] {
                if let Some(n) = providers::opt_secs(&obj, field) {
                    assert!(n < 1_000_000_000_000, "{field} read as {n}");
                }
            }
        }
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::BadResponse);
            assert!(!e.message.chars().any(breaks_line), "{e:?}");
        }
    }

    // The whole parse, as MakeLeaps, Autovit and oauth2 run it.
    match providers::oauth_grant(&case.resp, url, &case.secrets) {
        Ok(grant) => {
            assert!(status.is_ok());
            assert!(!grant.access.expose().is_empty());
            assert_eq!(grant.server_date, case.resp.date);
            let iat = shop_auth_agent::jwt::claims(grant.access.expose()).and_then(|c| c.iat);
            // What the scheduler does with every grant.
            let _ = shop_auth_agent::clock::partner_skew(case.now, grant.server_date, iat);
            let (t, _source) = Token::from_grant(grant, case.now, case.fallback);
            check_token(&case, &t);
        }
        Err(e) => check_error(&case, &e),
    }
});
