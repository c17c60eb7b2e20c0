//! The date parsers partners' answers go through: `timefmt::parse_timestamp`
//! (Carrental's `expires`, as a string or as a JSON number),
//! `timefmt::parse_http_date` (the `Date` header) and
//! `http::parse_retry_after`, then `Token::from_grant` with the result, as
//! the Carrental kind and the scheduler use them; and the formatters
//! (`format_rfc3339`, `format_http_date`) on any i64.
//!
//! Input: `expires` text, optionally `\n` and a `Date` header value. The
//! first 8 bytes are also read as an i64 for the formatters.
//!
//! Invariants: no panic, no overflow; what parses lies in years 0-9999 (a
//! bare number excepted) and formats back to text that parses to the same
//! instant; Retry-After as a date is the time until it; a token made with
//! the parsed expiry lives 1 s ..= 366 days.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::http::parse_retry_after;
use shop_auth_agent::providers::Grant;
use shop_auth_agent::secret::Secret;
use shop_auth_agent::timefmt::{
    format_http_date, format_rfc3339, parse_http_date, parse_timestamp,
};
use shop_auth_agent::token::Token;
use std::time::Duration;

const YEAR_0: i64 = -62_167_219_200;
const YEAR_9999_END: i64 = 253_402_300_799;
const NOWS: [i64; 4] = [0, 1_795_000_000, 4_102_444_800, YEAR_9999_END];
const MAX_LIFETIME: i64 = 366 * 24 * 3600;

fn check_formats(t: i64) {
    let iso = format_rfc3339(t);
    let http = format_http_date(t);
    if (YEAR_0..=YEAR_9999_END).contains(&t) {
        assert_eq!(parse_timestamp(&iso), Some(t), "{iso}");
        assert_eq!(parse_http_date(&http), Some(t), "{http}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some(b) = data.get(..8) {
        check_formats(i64::from_le_bytes(b.try_into().unwrap()));
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expires, date) = match text.split_once('\n') {
        Some((e, d)) => (e, Some(d)),
        None => (text, None),
    };

    let at = parse_timestamp(expires);
    if let Some(t) = at {
        let digits = expires.trim();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            // ISO or HTTP forms: a civil time, less an offset under a day.
            assert!(
                (YEAR_0 - 86_400..=YEAR_9999_END + 86_400).contains(&t),
                "{expires:?} read as {t}"
            );
            check_formats(t);
        } else {
            assert!(t >= 0);
        }
    }
    // Carrental's `expires` as a JSON number goes through its decimal text.
    if let Ok(v) = expires.trim().parse::<i64>() {
        let _ = parse_timestamp(&v.to_string());
    }

    for s in [Some(expires), date].into_iter().flatten() {
        let http = parse_http_date(s);
        if let Some(t) = http {
            assert!(
                (YEAR_0..=YEAR_9999_END + 1).contains(&t),
                "{s:?} read as {t}"
            );
            check_formats(t);
        }
        for now in NOWS {
            let ra = parse_retry_after(s, now);
            if let (Some(d), Some(t), Err(_)) = (ra, http, s.trim().parse::<u64>()) {
                assert_eq!(d.as_secs() as i64, (t - now).max(0), "{s:?} at {now}");
            }
        }
    }

    let server_date = date.and_then(parse_http_date);
    for now in NOWS {
        let grant = Grant {
            access: Secret::new("opaque"),
            expires_at: at,
            server_date,
            ..Grant::default()
        };
        let (t, _) = Token::from_grant(grant, now, Duration::from_secs(900));
        let lifetime = t.expires_at - t.obtained_at;
        assert!(
            (1..=MAX_LIFETIME).contains(&lifetime),
            "lifetime {lifetime}"
        );
        assert!(t.expires_at > now);
    }
});
