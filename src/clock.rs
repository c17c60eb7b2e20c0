//! What the agent believes the time is. A Raspberry Pi has no real-time
//! clock: at boot its wall clock is whatever fake-hwclock saved last (or
//! 1970), and it jumps when NTP synchronises. Tokens are stamped with wall
//! time (that is what survives a reboot), so the agent watches the wall
//! clock against the monotonic one and shifts its stamps when it jumps, and
//! at boot it distrusts a clock that is behind the newest time it stored.
//!
//! Pure functions: the caller passes wall and monotonic readings.

use std::time::Instant;

/// Steps smaller than this are not jumps: NTP slews small corrections, and
/// reading two clocks one after the other is not exact.
pub const JUMP_THRESHOLD_MS: i64 = 2_000;

/// A partner clock (its `Date` header, a JWT `iat`) farther than this from
/// ours says ours is wrong; closer is network delay and rounding.
pub const SKEW_TOLERANCE: i64 = 60;

/// Notices wall-clock jumps by comparing the wall clock's advance with the
/// monotonic clock's since the last reading.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Wall milliseconds minus monotonic milliseconds since `origin`.
    offset_ms: i64,
    origin: Instant,
}

impl Watch {
    pub fn new(wall_ms: i64, mono: Instant) -> Watch {
        Watch {
            offset_ms: wall_ms,
            origin: mono,
        }
    }

    /// The jump in whole seconds (positive: the wall clock went forward
    /// more than time passed) when the wall clock moved by more than
    /// [`JUMP_THRESHOLD_MS`] against the monotonic clock since the last
    /// jump was reported; `None` otherwise.
    pub fn check(&mut self, wall_ms: i64, mono: Instant) -> Option<i64> {
        let elapsed = mono.saturating_duration_since(self.origin).as_millis() as i64;
        let offset = wall_ms - elapsed;
        let jump = offset - self.offset_ms;
        if jump.abs() <= JUMP_THRESHOLD_MS {
            return None;
        }
        self.offset_ms = offset;
        // Rounded to the nearest second, the unit of the stamps it shifts.
        Some((jump + jump.signum() * 500) / 1000)
    }
}

/// How far the partner's clock is ahead of ours (negative: behind), from
/// its `Date` header or else the token's JWT `iat`, when it differs by more
/// than [`SKEW_TOLERANCE`]; `Some(0)` when it agrees with ours, `None` when
/// the answer carried no time.
pub fn partner_skew(now: i64, server_date: Option<i64>, jwt_iat: Option<i64>) -> Option<i64> {
    let theirs = server_date.or(jwt_iat)?;
    let skew = theirs.saturating_sub(now);
    Some(if skew.unsigned_abs() <= SKEW_TOLERANCE as u64 {
        0
    } else {
        skew
    })
}

/// At start: seconds the wall clock is behind the newest time the store
/// holds (a token obtained or a renewal logged "in the future" means the
/// clock has gone back, typically a Pi booted before NTP synchronised);
/// `None` when the clock is plausible.
pub fn behind_at_boot(now: i64, newest_stored: Option<i64>) -> Option<i64> {
    let newest = newest_stored?;
    (newest - now > SKEW_TOLERANCE).then_some(newest - now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn time_passing_is_not_a_jump() {
        let t0 = Instant::now();
        let mut w = Watch::new(1_000_000_000, t0);
        assert_eq!(w.check(1_000_060_000, t0 + Duration::from_secs(60)), None);
        // Reading jitter and slewing under the threshold are not jumps.
        assert_eq!(w.check(1_000_061_900, t0 + Duration::from_secs(60)), None);
        assert_eq!(w.check(1_000_058_100, t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn jumps_are_reported_once_each_way() {
        let t0 = Instant::now();
        let mut w = Watch::new(1_000_000_000, t0);
        // NTP steps the clock a day forward ten seconds in.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(w.check(1_000_010_000 + 86_400_000, t1), Some(86_400));
        assert_eq!(w.check(1_000_010_000 + 86_400_000, t1), None);
        // Someone sets it back an hour.
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(
            w.check(1_000_015_000 + 86_400_000 - 3_600_000, t2),
            Some(-3600)
        );
        assert_eq!(
            w.check(1_000_020_000 + 82_800_000, t2 + Duration::from_secs(5)),
            None
        );
        // Rounded to whole seconds.
        let t3 = t2 + Duration::from_secs(5);
        assert_eq!(w.check(1_000_020_000 + 82_800_000 + 2_600, t3), Some(3));
    }

    #[test]
    fn partner_skew_prefers_the_date_header_and_ignores_small_differences() {
        assert_eq!(partner_skew(1000, None, None), None);
        assert_eq!(partner_skew(1000, Some(1030), None), Some(0));
        assert_eq!(partner_skew(1000, Some(5000), Some(1000)), Some(4000));
        assert_eq!(partner_skew(1000, None, Some(900)), Some(-100));
        assert_eq!(partner_skew(1000, Some(1000), Some(9000)), Some(0));
        // Absurd times saturate instead of overflowing (found by fuzzing).
        assert_eq!(partner_skew(1000, Some(i64::MIN), None), Some(i64::MIN));
        assert_eq!(partner_skew(-1000, Some(i64::MAX), None), Some(i64::MAX));
    }

    #[test]
    fn a_clock_behind_the_store_is_noticed() {
        assert_eq!(behind_at_boot(1000, None), None);
        assert_eq!(behind_at_boot(1000, Some(900)), None);
        assert_eq!(behind_at_boot(1000, Some(1050)), None); // within tolerance
        assert_eq!(behind_at_boot(1000, Some(5000)), Some(4000));
    }
}
