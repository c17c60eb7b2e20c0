//! Sealing stored records with `[agent] store_key`: ChaCha20-Poly1305 from
//! `ring` (the crate rustls already links), a fresh random 96-bit nonce for
//! every write, and the record's sled key (`provider/<name>`) as associated
//! data, so a record copied under another provider's name does not open.
//! ChaCha20 rather than AES-GCM: a Raspberry Pi 4's Cortex-A72 has no AES
//! instructions, where ChaCha20 is fast and constant-time in software.
//!
//! A sealed record: `SAASEAL1` (8 bytes), the nonce (12 bytes), then the
//! ciphertext of the record's JSON with its 16-byte tag. A plain record (no
//! key, or written by an older agent) is the JSON itself and starts with
//! `{`, so the two are told apart by their first byte.

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use std::fmt;

pub const MAGIC: &[u8; 8] = b"SAASEAL1";
const TAG_LEN: usize = 16;

/// The 32-byte store key from the config. Redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreKey([u8; 32]);

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreKey(***)")
    }
}

impl StoreKey {
    pub fn from_bytes(bytes: [u8; 32]) -> StoreKey {
        StoreKey(bytes)
    }

    /// 32 bytes written as 64 hex digits or in base64 (either alphabet,
    /// padded or not). Surrounding whitespace is ignored. The error never
    /// quotes the text.
    pub fn parse(text: &str) -> Result<StoreKey, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            (0..32)
                .map(|i| u8::from_str_radix(&t[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .ok()
        } else {
            crate::base64::decode(t)
        };
        match bytes.as_deref().map(<[u8; 32]>::try_from) {
            // 32 equal bytes (all zeros, say) is a placeholder, not a key.
            Some(Ok(key)) if key.iter().all(|&b| b == key[0]) => {
                Err("is one byte repeated, not a random key \
                     (make one with: head -c 32 /dev/urandom | base64)"
                    .to_owned())
            }
            Some(Ok(key)) => Ok(StoreKey(key)),
            Some(Err(_)) | None => Err("expected 32 bytes as 64 hex digits or in base64 \
                 (make one with: head -c 32 /dev/urandom | base64)"
                .to_owned()),
        }
    }
}

/// A key ready to seal and open records.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl Sealer {
    pub fn new(key: &StoreKey) -> Sealer {
        let unbound =
            UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("a 32-byte ChaCha20-Poly1305 key");
        Sealer {
            key: LessSafeKey::new(unbound),
            rng: SystemRandom::new(),
        }
    }

    /// `plain` sealed for the sled key `aad`, under a fresh random nonce.
    /// `Err` only when the kernel gives no random bytes.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, ring::error::Unspecified> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce)?;
        let mut out = Vec::with_capacity(MAGIC.len() + NONCE_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The plain bytes of a record sealed for `aad` with this key; `None`
    /// when it was sealed with another key or for another name, or damaged.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        let rest = sealed.strip_prefix(MAGIC)?;
        if rest.len() < NONCE_LEN + TAG_LEN {
            return None;
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut body)
            .ok()?;
        Some(plain.to_vec())
    }
}

/// Whether `bytes` are a sealed record (as opposed to plain JSON).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.starts_with(MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> StoreKey {
        StoreKey([b; 32])
    }

    #[test]
    fn seals_and_opens_with_a_fresh_nonce_each_time() {
        let s = Sealer::new(&key(1));
        let a = s.seal(b"provider/x", b"{\"t\":1}").unwrap();
        let b = s.seal(b"provider/x", b"{\"t\":1}").unwrap();
        assert!(is_sealed(&a));
        assert_ne!(a, b, "same plain text, different nonce and ciphertext");
        assert_eq!(a.len(), 8 + 12 + 7 + 16);
        assert_eq!(s.open(b"provider/x", &a).unwrap(), b"{\"t\":1}");
        assert_eq!(s.open(b"provider/x", &b).unwrap(), b"{\"t\":1}");
    }

    #[test]
    fn another_key_another_name_or_any_changed_byte_does_not_open() {
        let s = Sealer::new(&key(1));
        let sealed = s.seal(b"provider/x", b"{}").unwrap();
        assert_eq!(Sealer::new(&key(2)).open(b"provider/x", &sealed), None);
        assert_eq!(s.open(b"provider/y", &sealed), None);
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 1;
            assert_eq!(s.open(b"provider/x", &b), None, "flip at {i}");
        }
        for cut in 0..sealed.len() {
            assert_eq!(s.open(b"provider/x", &sealed[..cut]), None, "cut at {cut}");
        }
        assert_eq!(s.open(b"provider/x", b"{}"), None);
        assert!(!is_sealed(b"{\"identity\":\"x\"}"));
    }

    #[test]
    fn keys_parse_from_hex_or_base64_and_nothing_else() {
        let hex = "00".repeat(31) + "ff";
        let mut want = [0u8; 32];
        want[31] = 0xff;
        assert_eq!(StoreKey::parse(&hex).unwrap(), StoreKey(want));
        assert_eq!(
            StoreKey::parse(&hex.to_uppercase()).unwrap(),
            StoreKey(want)
        );
        let b64 = crate::base64::encode(&want);
        assert_eq!(
            StoreKey::parse(&format!(" {b64}\n")).unwrap(),
            StoreKey(want)
        );
        assert_eq!(
            StoreKey::parse(b64.trim_end_matches('=')).unwrap(),
            StoreKey(want)
        );
        for bad in [
            "",
            "abc",
            &hex[..62],
            &(hex.clone() + "00"),
            &crate::base64::encode(&[0u8; 31]),
            &crate::base64::encode(&[0u8; 33]),
            &crate::base64::encode(&[0u8; 32]),
            &"ab".repeat(32),
            "correct horse battery staple correct horse battery staple12345",
        ] {
            let e = StoreKey::parse(bad).unwrap_err();
            assert!(
                bad.is_empty() || !e.contains(bad),
                "the key text is not quoted"
            );
        }
        assert_eq!(format!("{:?}", key(7)), "StoreKey(***)");
    }
}
