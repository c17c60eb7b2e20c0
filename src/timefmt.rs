//! Time as text: RFC 3339 output, the many date forms partners send
//! (Carrental's `expires`, HTTP `Date` and `Retry-After`), and config
//! durations. Civil-date arithmetic after Howard Hinnant's algorithms; no
//! crates, no panics on any input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock seconds since the epoch (negative before 1970).
pub fn now_unix() -> i64 {
    now_unix_ms().div_euclid(1000)
}

/// Wall-clock milliseconds since the epoch.
pub fn now_unix_ms() -> i64 {
    let real = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    };
    real.saturating_add(test_clock_offset_ms())
}

/// The environment variable naming a file whose content (seconds, may be
/// negative) is added to the wall clock. For the clock tests only: they
/// cannot set the machine's clock, and libfaketime does not reach a binary
/// running under qemu-user. Read only by debug builds (what `cargo test`
/// runs); a release build, the one packaged, ignores it.
pub const TEST_CLOCK_ENV: &str = "SHOP_AUTH_AGENT_TEST_CLOCK_OFFSET_FILE";

#[cfg(not(debug_assertions))]
fn test_clock_offset_ms() -> i64 {
    0
}

#[cfg(debug_assertions)]
fn test_clock_offset_ms() -> i64 {
    static FILE: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    match FILE.get_or_init(|| std::env::var_os(TEST_CLOCK_ENV).map(Into::into)) {
        None => 0,
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0)
            .saturating_mul(1000),
    }
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

/// Unix seconds for a UTC civil time, `None` if any field is out of range.
fn to_unix(y: i64, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> Option<i64> {
    let valid = (0..=9999).contains(&y)
        && (1..=12).contains(&mo)
        && d >= 1
        && d <= days_in_month(y, mo)
        && h < 24
        && mi < 60
        && s < 61; // a leap second is read as :59 + 1
    valid.then(|| {
        days_from_civil(y, mo, d) * 86_400 + i64::from(h) * 3600 + i64::from(mi) * 60 + i64::from(s)
    })
}

/// `2026-11-22T15:04:05Z`: UTC, whole seconds.
pub fn format_rfc3339(unix: i64) -> String {
    let (y, mo, d) = civil_from_days(unix.div_euclid(86_400));
    let secs = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Sun, 06 Nov 1994 08:49:37 GMT` (IMF-fixdate, RFC 9110 §5.6.7).
#[cfg(test)]
pub fn format_http_date(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let secs = unix.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(mo - 1) as usize],
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// A cursor over ASCII text for the parsers below.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cur<'_> {
    fn digits(&mut self, n: usize) -> Option<u32> {
        let s = self.b.get(self.i..self.i + n)?;
        if !s.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.i += n;
        Some(s.iter().fold(0, |a, &c| a * 10 + u32::from(c - b'0')))
    }
    fn eat(&mut self, c: u8) -> bool {
        if self.b.get(self.i) == Some(&c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
    fn done(&self) -> bool {
        self.i == self.b.len()
    }
}

/// Reads a timestamp of unknown form, as Carrental's `expires` may be:
/// RFC 3339 / ISO 8601 (`T` or space, optional fraction, `Z`, `±HH:MM`,
/// `±HHMM`, or no offset = read as UTC), an HTTP date, or epoch seconds or
/// milliseconds as digits.
pub fn parse_timestamp(s: &str) -> Option<i64> {
    parse_stamp(s).map(|s| s.at)
}

/// A timestamp and whether its text fixed the time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Unix seconds; a time without a zone is read as UTC.
    pub at: i64,
    /// `false` for an ISO time without `Z` or offset: written in the
    /// writer's zone, which we do not know, so `at` may be hours off.
    pub zoned: bool,
}

/// [`parse_timestamp`], saying whether the zone was given: epoch digits and
/// HTTP dates (GMT by definition) always fix it.
pub fn parse_stamp(s: &str) -> Option<Stamp> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes().all(|c| c.is_ascii_digit()) {
        let v: i64 = s.parse().ok()?;
        // 13+ digits, or beyond year 5138 in seconds: milliseconds.
        let at = if s.len() >= 13 || v > 100_000_000_000 {
            v / 1000
        } else {
            v
        };
        return Some(Stamp { at, zoned: true });
    }
    parse_iso(s).or_else(|| parse_http_date(s).map(|at| Stamp { at, zoned: true }))
}

fn parse_iso(s: &str) -> Option<Stamp> {
    let mut c = Cur {
        b: s.as_bytes(),
        i: 0,
    };
    let y = c.digits(4)?;
    let ok = c.eat(b'-');
    let mo = c.digits(2)?;
    let ok = ok && c.eat(b'-');
    let d = c.digits(2)?;
    if !ok || !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return None;
    }
    let h = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let mi = c.digits(2)?;
    let sec = if c.eat(b':') { c.digits(2)? } else { 0 };
    if c.eat(b'.') || c.eat(b',') {
        let start = c.i;
        while c.peek().is_some_and(|b| b.is_ascii_digit()) {
            c.i += 1;
        }
        if c.i == start {
            return None;
        }
    }
    let zoned = c.peek().is_some();
    let offset: i64 = match c.peek() {
        None => 0,
        Some(b'Z') | Some(b'z') => {
            c.i += 1;
            0
        }
        Some(sign @ (b'+' | b'-')) => {
            c.i += 1;
            let oh = c.digits(2)?;
            c.eat(b':');
            let om = c.digits(2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let v = i64::from(oh * 3600 + om * 60);
            if sign == b'+' {
                v
            } else {
                -v
            }
        }
        Some(_) => return None,
    };
    if !c.done() {
        return None;
    }
    Some(Stamp {
        at: to_unix(i64::from(y), mo, d, h, mi, sec)? - offset,
        zoned,
    })
}

fn month_index(name: &str) -> Option<u32> {
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .map(|i| i as u32 + 1)
}

fn parse_hms(t: &str) -> Option<(u32, u32, u32)> {
    let mut c = Cur {
        b: t.as_bytes(),
        i: 0,
    };
    let h = c.digits(2)?;
    let ok = c.eat(b':');
    let m = c.digits(2)?;
    let ok = ok && c.eat(b':');
    let s = c.digits(2)?;
    (ok && c.done()).then_some((h, m, s))
}

/// An HTTP date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), and the
/// obsolete RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`) and asctime
/// (`Sun Nov  6 08:49:37 1994`) forms.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let words: Vec<&str> = s.split_whitespace().collect();
    match words.as_slice() {
        // IMF-fixdate; also tolerates "+0000" or "UTC" for GMT.
        [wd, day, mon, year, time, zone]
            if wd.ends_with(',') && matches!(*zone, "GMT" | "UTC" | "+0000" | "Z") =>
        {
            let (h, mi, sec) = parse_hms(time)?;
            let year: i64 = year.parse().ok()?;
            to_unix(year, month_index(mon)?, day.parse().ok()?, h, mi, sec)
        }
        // RFC 850: two-digit years are read as 19xx/20xx, as RFC 9110 asks.
        [wd, date, time, "GMT"] if wd.ends_with(',') => {
            let mut parts = date.split('-');
            let (day, mon, year) = (parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || year.len() != 2 {
                return None;
            }
            let yy: i64 = year.parse().ok()?;
            let year = if yy < 70 { 2000 + yy } else { 1900 + yy };
            let (h, mi, sec) = parse_hms(time)?;
            to_unix(year, month_index(mon)?, day.parse().ok()?, h, mi, sec)
        }
        [_wd, mon, day, time, year] => {
            let (h, mi, sec) = parse_hms(time)?;
            to_unix(
                year.parse().ok()?,
                month_index(mon)?,
                day.parse().ok()?,
                h,
                mi,
                sec,
            )
        }
        _ => None,
    }
}

/// A config duration: `"250ms"`, `"90s"`, `"5m"`, `"1h"`, `"2d"`, `"1h30m"`;
/// also written out, as people do: `"5 minutes"`, `"1 hour 30 min"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("expected a duration like \"90s\", \"5m\" or \"1h\", got {s:?}");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = t;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let unit = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit == 0 {
            return Err(format!(
                "{s:?} has no unit; write e.g. \"{n}s\" or \"{n}m\""
            ));
        }
        let part = match rest[..unit].to_ascii_lowercase().as_str() {
            "ms" | "millisecond" | "milliseconds" => Duration::from_millis(n),
            "s" | "sec" | "secs" | "second" | "seconds" => Duration::from_secs(n),
            "m" | "min" | "mins" | "minute" | "minutes" => {
                Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?)
            }
            "h" | "hr" | "hrs" | "hour" | "hours" => {
                Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?)
            }
            "d" | "day" | "days" => Duration::from_secs(n.checked_mul(86_400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = rest[unit..].trim_start();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_rfc3339(2_147_483_648), "2038-01-19T03:14:08Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        for t in [
            0,
            1,
            68_169_600,
            951_868_799,
            1_795_000_000,
            4_102_444_800,
            253_402_300_799,
        ] {
            assert_eq!(parse_timestamp(&format_rfc3339(t)), Some(t), "{t}");
            assert_eq!(parse_http_date(&format_http_date(t)), Some(t), "{t}");
        }
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }

    #[test]
    fn reads_the_plausible_forms() {
        let t = 1_794_995_200; // 2026-11-18T09:46:40Z
        for s in [
            "2026-11-18T09:46:40Z",
            "2026-11-18t09:46:40z",
            "2026-11-18 09:46:40",
            "2026-11-18T09:46:40",
            "2026-11-18T09:46:40.123456789Z",
            "2026-11-18T10:46:40+01:00",
            "2026-11-18T10:46:40.5+0100",
            "2026-11-18T04:46:40-05:00",
            " 2026-11-18T09:46:40Z ",
            "Wed, 18 Nov 2026 09:46:40 GMT",
            "1794995200",
            "1794995200000",
            "1794995200999",
        ] {
            assert_eq!(parse_timestamp(s), Some(t), "{s}");
        }
        assert_eq!(parse_timestamp("2026-11-18T09:46Z"), Some(t - 40));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
    }

    #[test]
    fn rejects_garbage_and_impossible_dates() {
        for s in [
            "",
            "soon",
            "2026-13-01T00:00:00Z",
            "2026-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01T00:00:00+25:00",
            "2026-01-01T00:00:00Zjunk",
            "2026-01-01T00:00:00.Z",
            "2026-01-01",
            "Wed, 18 Foo 2026 09:46:40 GMT",
            "99999999999999999999999",
            "日本語2026-01-01T00:00:00Z",
            "2026-01-01T00:00:0日",
        ] {
            assert_eq!(parse_timestamp(s), None, "{s:?}");
        }
        assert_eq!(parse_timestamp("2024-02-29T00:00:00Z"), Some(1_709_164_800));
    }

    #[test]
    fn says_whether_the_zone_was_given() {
        for (s, zoned) in [
            ("2026-11-18T09:46:40Z", true),
            ("2026-11-18T11:46:40+02:00", true),
            ("2026-11-18T09:46:40", false),
            ("2026-11-18 09:46:40.123", false),
            ("Wed, 18 Nov 2026 09:46:40 GMT", true),
            ("1794995200", true),
        ] {
            let stamp = parse_stamp(s).unwrap();
            assert_eq!(stamp.zoned, zoned, "{s}");
            assert_eq!(stamp.at, 1_794_995_200, "{s}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        // As people write them.
        assert_eq!(parse_duration("5 minutes"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("5 m"), Ok(Duration::from_secs(300)));
        assert_eq!(
            parse_duration("1 hour 30 min"),
            Ok(Duration::from_secs(5400))
        );
        assert_eq!(parse_duration("90 Seconds"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("5 fortnights").is_err());
        assert!(parse_duration("90").unwrap_err().contains("no unit"));
        for bad in ["", "abc", "-5s", "5w", "99999999999999999999d", "1.5h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
