//! `jwt::claims` (the `exp`/`iat` of an access token: AutoLeap's and
//! Carrental's lifetimes come from it) and the base64 it decodes with, then
//! what the scheduler does with the claims: `clock::partner_skew` on `iat`
//! and `Token::from_grant` on `exp`.
//!
//! Input: a mode byte, then either a whole token (mode even) or a JSON
//! payload (mode odd) that is base64-encoded between a header and a
//! signature (mode & 2: standard alphabet, padded; else URL-safe), so the
//! fuzzer can work on the JSON directly.
//!
//! Invariants: no panic, no overflow; base64 round-trips; a payload that is
//! a JSON object is read, an integer `exp`/`iat` in years 1970-9999 comes
//! back as written and any other is dropped; claims survive
//! `encode_unsigned`; a token lives 1 s ..= 366 days, its JWT `exp` used
//! exactly when it lies 1 s ..= 366 days ahead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::base64;
use shop_auth_agent::jwt;
use shop_auth_agent::providers::Grant;
use shop_auth_agent::secret::Secret;
use shop_auth_agent::token::{LifetimeSource, Token};
use std::time::Duration;

const NOWS: [i64; 3] = [0, 1_795_000_000, 253_402_300_799];
const MAX_LIFETIME: i64 = 366 * 24 * 3600;
/// 9999-12-31T23:59:59Z: the latest time `jwt::claims` keeps.
const MAX_TIME: i64 = 253_402_300_799;
const FALLBACK: Duration = Duration::from_secs(900);

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode & 1 == 0 {
        match std::str::from_utf8(rest) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        }
    } else {
        let payload = if mode & 2 == 0 {
            base64::encode_url(rest)
        } else {
            base64::encode(rest)
        };
        assert_eq!(
            base64::decode(&payload).as_deref(),
            Some(rest),
            "base64 round trip"
        );
        let t = format!("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.{payload}.c2ln");
        let claims = jwt::claims(&t);
        if let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice(rest) {
            if t.len() <= 16 * 1024 {
                let c = claims.expect("a JSON object payload is read");
                for (k, got) in [("exp", c.exp), ("iat", c.iat)] {
                    if let Some(n) = obj.get(k).and_then(serde_json::Value::as_i64) {
                        let want = Some(n).filter(|n| (0..=MAX_TIME).contains(n));
                        assert_eq!(got, want, "{k}");
                    }
                }
            }
        }
        t
    };
    let claims = jwt::claims(&token);
    if let Some(c) = claims {
        for t in [c.exp, c.iat].into_iter().flatten() {
            assert!((0..=MAX_TIME).contains(&t), "implausible time {t} kept");
        }
        // The encoder's output reads back the same.
        let mut v = serde_json::Map::new();
        if let Some(e) = c.exp {
            v.insert("exp".into(), e.into());
        }
        if let Some(i) = c.iat {
            v.insert("iat".into(), i.into());
        }
        let again = jwt::encode_unsigned(&serde_json::Value::Object(v));
        assert_eq!(jwt::claims(&again), Some(c));
    }
    for now in NOWS {
        // The scheduler, after every grant.
        let _ = shop_auth_agent::clock::partner_skew(now, None, claims.and_then(|c| c.iat));
        let grant = Grant {
            access: Secret::new(token.clone()),
            ..Grant::default()
        };
        let (t, source) = Token::from_grant(grant, now, FALLBACK);
        let lifetime = t.expires_at - t.obtained_at;
        assert!(
            (1..=MAX_LIFETIME).contains(&lifetime),
            "lifetime {lifetime}"
        );
        match claims.and_then(|c| c.exp).map(|e| e - now) {
            Some(ahead) if (1..=MAX_LIFETIME).contains(&ahead) => {
                assert_eq!((source, lifetime), (LifetimeSource::Jwt, ahead));
            }
            _ => assert_eq!(
                (source, lifetime),
                (LifetimeSource::Configured, FALLBACK.as_secs() as i64)
            ),
        }
    }
});
