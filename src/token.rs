//! A token as the agent keeps it, and the arithmetic of time around it: when
//! a grant expires, when to renew, how long to back off. Pure functions: the
//! caller passes `now` (unix seconds) and the random draws, so tests need no
//! clock.

use crate::providers::Grant;
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A token the agent holds (and persists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub access: Secret,
    pub refresh: Option<Secret>,
    pub token_type: String,
    pub scope: Option<String>,
    /// Unix seconds, local wall clock at the moment the grant arrived.
    pub obtained_at: i64,
    /// Unix seconds, local wall clock.
    pub expires_at: i64,
    /// The partner refused the refresh grant (`unsupported_grant_type`,
    /// `unauthorized_client`): renewals log in directly, and a refresh
    /// token it still hands out is not kept. Carried from token to token of
    /// the account, persisted with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refresh_refused: bool,
}

/// Where a token's lifetime came from, for the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifetimeSource {
    ExpiresAt,
    ExpiresIn,
    Jwt,
    Configured,
}

impl LifetimeSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LifetimeSource::ExpiresAt => "expiry time in the response",
            LifetimeSource::ExpiresIn => "expires_in in the response",
            LifetimeSource::Jwt => "JWT exp claim",
            LifetimeSource::Configured => "token_lifetime (config)",
        }
    }
}

// A lifetime from the partner longer than this is not believed (a partner
// sending milliseconds where seconds are meant, say): the next source in
// the order is used instead. A year is already generous.
pub const MAX_LIFETIME: i64 = 366 * 24 * 3600;

impl Token {
    /// Turns a grant into a token obtained at `now`. The lifetime comes from
    /// the response's absolute expiry, else its relative lifetime, else the
    /// JWT `exp` claim, else `fallback` (docs/partners.md's order); a source whose
    /// lifetime is not positive or longer than a year is skipped. Absolute
    /// times from the partner are read relative to its `Date` header when it
    /// sent one, so a partner clock that differs from ours does not shift
    /// expiry.
    pub fn from_grant(grant: Grant, now: i64, fallback: Duration) -> (Token, LifetimeSource) {
        let reference = grant.server_date.unwrap_or(now);
        let believable = |secs: i64| (1..=MAX_LIFETIME).contains(&secs);
        let absolute = |at: i64| at.saturating_sub(reference);
        let (lifetime, source) =
            if let Some(at) = grant.expires_at.filter(|&at| believable(absolute(at))) {
                (absolute(at), LifetimeSource::ExpiresAt)
            } else if let Some(secs) = grant
                .expires_in
                .filter(|&s| believable(s.min(i64::MAX as u64) as i64))
            {
                (secs as i64, LifetimeSource::ExpiresIn)
            } else if let Some(exp) = crate::jwt::claims(grant.access.expose())
                .and_then(|c| c.exp)
                .filter(|&exp| believable(absolute(exp)))
            {
                (absolute(exp), LifetimeSource::Jwt)
            } else {
                // Clamped before the cast (a fuzzed 2^63 s wrapped to 1 s).
                (
                    fallback.as_secs().clamp(1, MAX_LIFETIME as u64) as i64,
                    LifetimeSource::Configured,
                )
            };
        let lifetime = lifetime.clamp(1, MAX_LIFETIME);
        let token = Token {
            access: grant.access,
            refresh: grant.refresh,
            token_type: normalise_type(grant.token_type.as_deref()),
            scope: grant.scope,
            obtained_at: now,
            expires_at: now.saturating_add(lifetime),
            refresh_refused: false,
        };
        (token, source)
    }

    pub fn lifetime(&self) -> i64 {
        (self.expires_at - self.obtained_at).max(1)
    }

    /// Whole seconds left; a token with less than one second is expired.
    pub fn expires_in(&self, now: i64) -> i64 {
        self.expires_at - now
    }

    pub fn is_valid(&self, now: i64) -> bool {
        self.expires_in(now) >= 1
    }
}

/// "bearer" (Autovit), "Bearer" (MakeLeaps) and nothing at all (AutoLeap,
/// Carrental's "type" when missing) all mean a Bearer token.
fn normalise_type(t: Option<&str>) -> String {
    match t.map(str::trim) {
        None | Some("") => "Bearer".to_owned(),
        Some(t) if t.eq_ignore_ascii_case("bearer") => "Bearer".to_owned(),
        Some(t) => t.to_owned(),
    }
}

/// When to renew: `obtained_at + clamp(lifetime − refresh_before, ½·lifetime,
/// ⅘·lifetime)`, moved earlier by `jitter` (a draw in [0, 1)) times 5 % of the
/// lifetime so that terminals do not synchronise (docs/design.md).
pub fn refresh_at(token: &Token, refresh_before: Duration, jitter: f64) -> i64 {
    let lifetime = token.lifetime() as f64;
    let before = refresh_before.as_secs_f64();
    let offset = (lifetime - before).clamp(0.5 * lifetime, 0.8 * lifetime);
    let early = jitter.clamp(0.0, 1.0) * 0.05 * lifetime;
    token.obtained_at + (offset - early).floor().max(0.0) as i64
}

/// The window over which a provider's first login after start is spread
/// (when no valid token is held). Short enough that a POS asking for a
/// token at once still gets it within TOKEN's 3 s wait, and as wide as
/// the contract allows ("the first login happens within 2 s of start") to
/// spread a fleet of terminals powered on together.
pub const FIRST_LOGIN_WINDOW: Duration = Duration::from_secs(2);

/// Delay of the first login after start, for a draw in [0, 1).
pub fn first_login_delay(draw: f64) -> Duration {
    FIRST_LOGIN_WINDOW.mul_f64(draw.clamp(0.0, 1.0))
}

/// Delay before retry number `failures` (1 = after the first failure) of a
/// transient error: full jitter between 1 s and an exponential ceiling
/// (2 s, 4 s, 8 s, … up to `max_backoff`); `Retry-After` is honoured (up to
/// an hour). Drawn from 1 s up rather than clamped to it, so that terminals
/// failing together (a fleet against an overloaded partner) do not all come
/// back at exactly 1 s.
pub fn transient_backoff(
    failures: u32,
    max_backoff: Duration,
    retry_after: Option<Duration>,
    draw: f64,
) -> Duration {
    let floor = Duration::from_secs(1);
    let exp = failures.clamp(1, 30);
    let ceiling = Duration::from_secs(1u64 << exp).min(max_backoff.max(floor));
    let jittered = floor + (ceiling - floor).mul_f64(draw.clamp(0.0, 1.0));
    match retry_after {
        Some(ra) => jittered.max(ra.min(Duration::from_secs(3600))),
        None => jittered,
    }
}

/// Delay before retry number `failures` after rejected credentials: 60 s,
/// doubling to an hour; `max_backoff` does not shorten it (docs/design.md).
/// A little jitter (up to 10 %) keeps a fleet with a shared bad credential apart.
pub fn rejected_backoff(failures: u32, draw: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    let base = Duration::from_secs(60u64 << exp).min(Duration::from_secs(3600));
    base + base.mul_f64(0.1 * draw.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(access: &str) -> Grant {
        Grant {
            access: Secret::new(access),
            ..Grant::default()
        }
    }

    fn token(obtained: i64, lifetime: i64) -> Token {
        Token {
            access: Secret::new("a"),
            refresh: None,
            token_type: "Bearer".into(),
            scope: None,
            obtained_at: obtained,
            expires_at: obtained + lifetime,
            refresh_refused: false,
        }
    }

    #[test]
    fn lifetime_sources_in_order() {
        let now = 1_000_000;
        let fallback = Duration::from_secs(900);
        let mut g = grant("opaque");
        g.expires_at = Some(now + 100);
        g.expires_in = Some(50);
        let (t, s) = Token::from_grant(g.clone(), now, fallback);
        assert_eq!((t.expires_at, s), (now + 100, LifetimeSource::ExpiresAt));

        g.expires_at = Some(now - 5); // already past: not believed
        let (t, s) = Token::from_grant(g.clone(), now, fallback);
        assert_eq!((t.expires_at, s), (now + 50, LifetimeSource::ExpiresIn));

        // Milliseconds where seconds are meant: not believed either.
        let mut ms = grant("opaque");
        ms.expires_at = Some((now + 3600) * 1000);
        ms.expires_in = Some(3_600_000_000);
        let (t, s) = Token::from_grant(ms, now, fallback);
        assert_eq!((t.expires_at, s), (now + 900, LifetimeSource::Configured));

        let jwt = crate::jwt::encode_unsigned(&serde_json::json!({"exp": now + 70}));
        let (t, s) = Token::from_grant(grant(&jwt), now, fallback);
        assert_eq!((t.expires_at, s), (now + 70, LifetimeSource::Jwt));

        let (t, s) = Token::from_grant(grant("opaque"), now, fallback);
        assert_eq!((t.expires_at, s), (now + 900, LifetimeSource::Configured));
        assert_eq!(t.token_type, "Bearer");
        // A huge configured lifetime is capped, not wrapped to 1 s (fuzzing).
        let (t, _) = Token::from_grant(grant("opaque"), now, Duration::from_secs(1 << 63));
        assert_eq!(t.lifetime(), MAX_LIFETIME);
    }

    #[test]
    fn absolute_expiry_is_read_against_the_server_clock() {
        // The partner's clock is an hour ahead of ours; its token lives 10 minutes.
        let now = 1_000_000;
        let mut g = grant("opaque");
        g.server_date = Some(now + 3600);
        g.expires_at = Some(now + 3600 + 600);
        let (t, _) = Token::from_grant(g, now, Duration::from_secs(1));
        assert_eq!(t.expires_at, now + 600);
    }

    #[test]
    fn token_type_is_normalised() {
        for (given, want) in [
            (Some("bearer"), "Bearer"),
            (Some("BEARER"), "Bearer"),
            (None, "Bearer"),
            (Some(""), "Bearer"),
            (Some("MAC"), "MAC"),
        ] {
            let mut g = grant("x");
            g.token_type = given.map(str::to_owned);
            let (t, _) = Token::from_grant(g, 0, Duration::from_secs(60));
            assert_eq!(t.token_type, want);
        }
    }

    #[test]
    fn validity_is_whole_seconds() {
        let t = token(100, 10);
        assert!(t.is_valid(108));
        assert!(t.is_valid(109));
        assert!(!t.is_valid(110));
        assert_eq!(t.expires_in(105), 5);
    }

    #[test]
    fn refresh_deadline_clamps_between_half_and_four_fifths() {
        let five_min = Duration::from_secs(300);
        // 1 h: lifetime − 5 min = 55 min, clamped to 48 min (⅘).
        assert_eq!(refresh_at(&token(0, 3600), five_min, 0.0), 2880);
        // 8 min: 3 min is under ½ → 4 min.
        assert_eq!(refresh_at(&token(0, 480), five_min, 0.0), 240);
        // 10 h: 9h55m clamped to 8 h.
        assert_eq!(refresh_at(&token(0, 36000), five_min, 0.0), 28800);
        // refresh_before = 1 min on 30 min: 29 min clamped to 24 min.
        assert_eq!(
            refresh_at(&token(10, 1800), Duration::from_secs(60), 0.0),
            10 + 1440
        );
        // refresh_before 20 min on 1 h: 40 min is inside the clamp.
        assert_eq!(
            refresh_at(&token(0, 3600), Duration::from_secs(1200), 0.0),
            2400
        );
        // Jitter moves it at most 5 % of the lifetime earlier.
        assert_eq!(refresh_at(&token(0, 3600), five_min, 0.999_999), 2880 - 180);
        assert_eq!(refresh_at(&token(0, 3600), five_min, 0.5), 2880 - 90);
    }

    #[test]
    fn transient_backoff_grows_with_full_jitter_and_caps() {
        let max = Duration::from_secs(300);
        let s = |f, d| transient_backoff(f, max, None, d).as_secs_f64();
        assert_eq!(s(1, 0.0), 1.0); // never under 1 s
        assert_eq!(s(1, 1.0), 2.0);
        assert_eq!(s(1, 0.5), 1.5); // the first retry is jittered too
        assert_eq!(s(3, 1.0), 8.0);
        assert_eq!(s(3, 0.5), 4.5);
        assert_eq!(s(3, 0.0), 1.0);
        assert_eq!(s(20, 1.0), 300.0);
        assert_eq!(s(u32::MAX, 0.5), 150.5);
        // A max_backoff under 1 s still waits 1 s.
        assert_eq!(
            transient_backoff(5, Duration::from_millis(10), None, 1.0),
            Duration::from_secs(1)
        );
        // Retry-After wins when longer, capped at an hour.
        let ra = |secs| transient_backoff(1, max, Some(Duration::from_secs(secs)), 0.5);
        assert_eq!(ra(30), Duration::from_secs(30));
        assert_eq!(ra(86400), Duration::from_secs(3600));
    }

    #[test]
    fn rejected_credentials_cost_a_handful_of_attempts_per_hour() {
        // Shortest waits (draw 0): the most attempts a day can hold.
        let mut at = 0u64;
        let mut attempts = vec![0u32; 24];
        let mut failures = 0;
        while at < 24 * 3600 {
            attempts[(at / 3600) as usize] += 1;
            failures += 1;
            at += rejected_backoff(failures, 0.0).as_secs();
        }
        // 0, 1, 3, 7, 15 and 31 minutes in the first hour, then hourly.
        assert_eq!(attempts[0], 6, "{attempts:?}");
        assert!(attempts[1..].iter().all(|&n| n <= 2), "{attempts:?}");
        assert!(attempts.iter().sum::<u32>() <= 6 + 24, "{attempts:?}");
    }

    #[test]
    fn rejected_backoff_starts_at_a_minute_and_caps_at_an_hour() {
        assert_eq!(rejected_backoff(1, 0.0), Duration::from_secs(60));
        assert_eq!(rejected_backoff(2, 0.0), Duration::from_secs(120));
        assert_eq!(rejected_backoff(7, 0.0), Duration::from_secs(3600));
        assert_eq!(rejected_backoff(1000, 0.0), Duration::from_secs(3600));
        assert_eq!(rejected_backoff(1, 1.0), Duration::from_secs(66));
    }
}
