//! `timefmt::parse_duration`, the config's durations (`token_lifetime`,
//! `refresh_before`, `timeout`, `max_backoff`), then the arithmetic that
//! uses each: `Token::from_grant`'s fallback lifetime (on any duration),
//! and for those the config accepts (at most 3650 days) `token::refresh_at`,
//! `token::transient_backoff`, `token::rejected_backoff`, and, for the
//! longest (over 3000 days), one `http::Http` request with it as the
//! timeout, to a loopback port that refuses.
//!
//! Invariants: no panic, no overflow; a parsed duration re-written as
//! milliseconds parses back to itself; a grant with no stated lifetime
//! lives `token_lifetime` capped at 366 days (at least 1 s); renewal falls
//! inside the lifetime; backoff stays within 1 s ..= max(max_backoff, 1 h)
//! plus jitter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::http::Http;
use shop_auth_agent::providers::Grant;
use shop_auth_agent::secret::Secret;
use shop_auth_agent::timefmt::parse_duration;
use shop_auth_agent::token::{self, Token};
use std::time::Duration;

const MAX_LIFETIME: u64 = 366 * 24 * 3600;
/// The longest duration `config` accepts (its private `MAX_DURATION`).
const CONFIG_MAX: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A loopback URL nothing listens on (connections are refused at once).
fn closed_url() -> &'static str {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
        format!("http://{}/token", l.local_addr().unwrap())
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let d = match parse_duration(text) {
        Ok(d) => d,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    if let Ok(ms) = u64::try_from(d.as_millis()) {
        if d.subsec_nanos() % 1_000_000 == 0 {
            assert_eq!(parse_duration(&format!("{ms}ms")), Ok(d));
        }
    }
    if d.is_zero() {
        return; // the config refuses zero durations
    }
    let now = 1_795_000_000;
    // token_lifetime: the fallback when a partner states no lifetime.
    let grant = Grant {
        access: Secret::new("opaque"),
        ..Grant::default()
    };
    let (t, _) = Token::from_grant(grant, now, d);
    let want = d.as_secs().clamp(1, MAX_LIFETIME) as i64;
    assert_eq!(
        t.expires_at - t.obtained_at,
        want,
        "token_lifetime {text:?}"
    );
    if d > CONFIG_MAX {
        return; // "is too long (at most 3650d)"; the config target covers that
    }
    // refresh_before.
    for jitter in [0.0, 0.999] {
        let at = token::refresh_at(&t, d, jitter);
        assert!((t.obtained_at..t.expires_at).contains(&at) || t.expires_at - t.obtained_at == 1);
    }
    // timeout: each request's deadline is now + timeout.
    if d > Duration::from_secs(3000 * 24 * 3600) {
        let http = Http::new(d, None).expect("client");
        let _ = http.post_form(closed_url(), None, &[("grant_type", "x")]);
    }
    // max_backoff.
    for failures in [0, 1, 5, 31, u32::MAX] {
        for draw in [0.0, 0.5, 0.999] {
            let b = token::transient_backoff(failures, d, None, draw);
            assert!(b >= Duration::from_secs(1) && b <= d.max(Duration::from_secs(1)));
            let b = token::transient_backoff(failures, d, Some(d), draw);
            assert!(b >= Duration::from_secs(1));
            assert!(b <= d.max(Duration::from_secs(3600)).max(Duration::from_secs(1)));
            let r = token::rejected_backoff(failures, draw);
            assert!(r >= Duration::from_secs(60) && r <= Duration::from_secs(3960));
        }
    }
});
