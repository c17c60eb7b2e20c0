//! A small non-cryptographic random source for jitter and for the stand-in
//! partners' token strings. Seeded once per process from the kernel
//! (`/dev/urandom`, or the time and pid if that is unreadable), mixed with
//! the machine id: terminals powered on together, early in boot when the
//! kernel's pool may still be thin, still draw different jitter, so a fleet
//! does not synchronise its logins and renewals.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

static STATE: OnceLock<AtomicU64> = OnceLock::new();

fn seed() -> u64 {
    let mut buf = [0u8; 8];
    let from_kernel = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_ok();
    let base = if from_kernel {
        u64::from_le_bytes(buf)
    } else {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ (u64::from(std::process::id()) << 32)
    };
    let machine = std::fs::read("/etc/machine-id").unwrap_or_default();
    base ^ fnv1a(&machine)
}

/// FNV-1a: spreads the machine id's bytes over 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// SplitMix64 over a shared atomic counter: lock-free, good enough for jitter.
pub fn u64() -> u64 {
    let state = STATE.get_or_init(|| AtomicU64::new(seed()));
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform float in `[0, 1)`.
pub fn unit() -> f64 {
    (u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// `n` random lowercase hex digits.
pub fn hex(n: usize) -> String {
    let mut s = String::with_capacity(n);
    while s.len() < n {
        let v = u64();
        for i in 0..16 {
            if s.len() == n {
                break;
            }
            let d = ((v >> (i * 4)) & 0xF) as u32;
            s.push(char::from_digit(d, 16).unwrap_or('0'));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn unit_is_in_range_and_varies() {
        let xs: Vec<f64> = (0..1000).map(|_| super::unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
    }

    #[test]
    fn machine_ids_spread() {
        let a = super::fnv1a(b"0123456789abcdef0123456789abcdef");
        let b = super::fnv1a(b"0123456789abcdef0123456789abcdee");
        // Different seeds; the SplitMix output function spreads even a
        // one-bit difference over the whole stream.
        assert_ne!(a, b);
    }

    #[test]
    fn hex_has_the_asked_length() {
        let h = super::hex(37);
        assert_eq!(h.len(), 37);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(super::hex(16), super::hex(16));
    }
}
