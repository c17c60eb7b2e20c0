//! Base64 (RFC 4648) for HTTP Basic credentials and JWT segments, from the
//! `base64` crate (the one ureq uses): the standard alphabet with padding,
//! the URL-safe one without, and a lenient decoder for what partners send.

use base64::alphabet;
use base64::engine::general_purpose::{
    GeneralPurpose, GeneralPurposeConfig, STANDARD, URL_SAFE_NO_PAD,
};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Padding optional, stray low bits in the last character tolerated: JWTs
/// are read for their claims only, not verified.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const LENIENT_URL: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
const LENIENT_STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);

/// Standard alphabet, padded (HTTP Basic, RFC 7617).
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// URL-safe alphabet, unpadded (JWT, RFC 7515).
pub fn encode_url(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// Decodes either alphabet, with or without padding.
pub fn decode(s: &str) -> Option<Vec<u8>> {
    LENIENT_URL
        .decode(s)
        .or_else(|_| LENIENT_STANDARD.decode(s))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4648_vectors() {
        for (plain, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(encode(plain.as_bytes()), enc);
            assert_eq!(decode(enc).unwrap(), plain.as_bytes());
        }
        assert_eq!(encode_url(b"\xfb\xff"), "-_8");
        assert_eq!(encode(b"\xfb\xff"), "+/8=");
        assert_eq!(decode("-_8").unwrap(), decode("+/8=").unwrap());
        assert_eq!(decode("a"), None);
        assert_eq!(decode("a!b"), None);
    }
}
