//! What the stand-ins need of time, randomness and encodings, written here
//! rather than taken from the agent: a test double that shares the code
//! under test would agree with its bugs.

use std::io::Read;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// (year, month, day) of a count of days since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `2026-11-22T15:04:05Z`.
pub fn format_rfc3339(unix: i64) -> String {
    let (y, mo, d) = civil(unix.div_euclid(86_400));
    let s = unix.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
pub fn format_http_date(unix: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = unix.div_euclid(86_400);
    let (y, mo, d) = civil(days);
    let s = unix.rem_euclid(86_400);
    format!(
        "{}, {d:02} {} {y:04} {:02}:{:02}:{:02} GMT",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[mo as usize - 1],
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

pub mod rand {
    use super::Read;

    /// `n` random lowercase hex digits, from the kernel.
    pub fn hex(n: usize) -> String {
        let mut bytes = vec![0u8; n.div_ceil(2)];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .expect("reading /dev/urandom");
        let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        s.truncate(n);
        s
    }
}

pub mod base64 {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    use base64::Engine;

    #[cfg(test)]
    pub fn encode(data: &[u8]) -> String {
        STANDARD.encode(data)
    }

    pub fn encode_url(data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(data)
    }

    /// Standard alphabet, padded: what HTTP Basic (RFC 7617) sends.
    pub fn decode(s: &str) -> Option<Vec<u8>> {
        STANDARD.decode(s).ok()
    }
}

pub mod jwt {
    use super::base64;
    use serde_json::Value;

    /// `base64url(header).base64url(claims).signature`, unsigned.
    pub fn encode_unsigned(claims: &Value) -> String {
        let header = base64::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64::encode_url(claims.to_string().as_bytes());
        let sig = base64::encode_url(super::rand::hex(32).as_bytes());
        format!("{header}.{body}.{sig}")
    }

    #[cfg(test)]
    pub fn claims(token: &str) -> Option<Value> {
        use ::base64::Engine;
        let body = token.split('.').nth(1)?;
        let bytes = ::base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_as_partners_write_them() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_http_date(784_111_777),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(rand::hex(7).len(), 7);
    }
}
