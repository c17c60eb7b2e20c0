//! `Secret`: the one type that holds credentials and tokens. Its `Debug` and
//! `Display` print `***`, so no log line, error message or panic can leak one
//! by accident; the value is reached only through [`Secret::expose`].

use serde::{Deserialize, Serialize};
use std::fmt;

/// A credential or a token. Compare, clone and persist it; print it never.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that must send it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// `text` with every secret in `secrets` replaced by `***`: as written,
/// form- or percent-encoded, and inside base64 in either alphabet at any
/// alignment (an echoed `Authorization: Basic` header carries
/// `base64(id:secret)`). A base64 run holding a secret goes whole. Secrets
/// shorter than 4 bytes are only matched as written: their base64 core
/// would be too short to tell from chance.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    let mut out = text.to_owned();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        let mut forms: Vec<String> = vec![secret.to_string()];
        // As encoders write them: form-encoding (`*` kept, space `+`),
        // RFC 3986 (`~` kept, space `%20`), each with upper- or lower-case
        // hex digits.
        for (keep, space) in [("-._*", "+"), ("-._~", "%20"), ("-._*", "%20")] {
            let upper = percent_encode(secret, keep, space);
            forms.push(lower_hex(&upper));
            forms.push(upper);
        }
        forms.sort();
        forms.dedup();
        for written in &forms {
            out = out.replace(written.as_str(), "***");
            if written.len() >= 4 {
                for core in base64_cores(written.as_bytes()) {
                    out = blank_base64_runs(&out, &core);
                }
            }
        }
    }
    out
}

/// `s` percent-encoded, keeping letters, digits and the bytes in `keep`;
/// a space becomes `space`.
fn percent_encode(s: &str, keep: &str, space: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.as_bytes().contains(&b) {
            out.push(b as char);
        } else if b == b' ' {
            out.push_str(space);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The hex digits after each `%` in lower case.
fn lower_hex(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut after = 0;
    for c in s.chars() {
        if c == '%' {
            after = 2;
            out.push(c);
        } else if after > 0 {
            after -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// For each alignment of `data` after 0, 1 or 2 bytes of something else,
/// and each alphabet: the base64 characters that depend on `data` alone.
fn base64_cores(data: &[u8]) -> Vec<String> {
    let mut cores = Vec::new();
    for skip in 0..3usize {
        let mut buf = vec![0u8; skip];
        buf.extend_from_slice(data);
        let bits_before = skip * 8;
        let first = bits_before.div_ceil(6);
        let end = (bits_before + data.len() * 8) / 6;
        for encoded in [crate::base64::encode(&buf), crate::base64::encode_url(&buf)] {
            if end > first {
                cores.push(encoded[first..end].to_owned());
            }
        }
    }
    cores
}

/// `text` with every maximal run of base64 characters that contains `core`
/// replaced by `***`.
fn blank_base64_runs(text: &str, core: &str) -> String {
    let is_b64 = |c: char| c.is_ascii_alphanumeric() || "+/-_=".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(core) {
        let start = rest[..at]
            .char_indices()
            .rev()
            .take_while(|(_, c)| is_b64(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let after = at + core.len();
        let end = rest[after..]
            .char_indices()
            .find(|(_, c)| !is_b64(*c))
            .map_or(rest.len(), |(i, _)| after + i);
        out.push_str(&rest[..start]);
        out.push_str("***");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_every_form_a_secret_can_be_echoed_in() {
        let secret = "s3cr:t pass/word";
        let basic = crate::base64::encode(b"client-id:s3cr:t pass/word");
        let form = crate::providers::rfc6749::form_urlencode(secret);
        let url_b64 = crate::base64::encode_url(format!("xy{secret}").as_bytes());
        for echoed in [
            format!("bad secret {secret}."),
            format!("Authorization: Basic {basic} refused"),
            format!("body was client_secret={form}&x=1"),
            format!("client_secret={}", form.replace('+', "%20")),
            format!(
                "client_secret={}",
                form.replace("%3A", "%3a").replace("%2F", "%2f")
            ),
            format!("token {url_b64}"),
        ] {
            let out = scrub(&echoed, &[secret]);
            assert!(out.contains("***"), "{echoed} -> {out}");
            for leak in [secret, "s3cr", basic.as_str(), &basic[12..], &form] {
                assert!(!out.contains(leak), "{echoed} -> {out}");
            }
        }
        // Python's quote(): `~` kept, `*` encoded, lower or upper hex.
        let odd = "tilde~star*sec ret";
        for echoed in ["x=tilde~star%2Asec%20ret", "x=tilde~star%2asec%20ret"] {
            assert_eq!(scrub(echoed, &[odd]), "x=***", "{echoed}");
        }
        // The words around it stay.
        assert_eq!(
            scrub(&format!("Basic {basic} refused"), &[secret]),
            "Basic *** refused"
        );
        // Nothing to find, nothing changed; short secrets only as written.
        assert_eq!(scrub("all fine", &[secret, "", "ab"]), "all fine");
        assert_eq!(scrub("a ab b", &["ab"]), "a *** b");
    }

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn serializes_transparently_for_the_store() {
        let s = Secret::new("abc");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"abc\"");
    }
}
