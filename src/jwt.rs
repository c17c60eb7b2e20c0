//! Reading the `exp` and `iat` claims of a JWT-shaped access token (AutoLeap
//! states no lifetime; its tokens are JWTs), and making unsigned JWT-shaped
//! tokens for the stand-in partners. Signatures are not checked: the agent
//! is not the token's audience, it only wants to know when to renew.

use crate::base64;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Claims {
    pub exp: Option<i64>,
    pub iat: Option<i64>,
}

// Real JWTs are a few KiB at most; anything bigger is not worth decoding.
const MAX_TOKEN: usize = 16 * 1024;

/// The claims of a JWT, or `None` if `token` is not one.
/// 9999-12-31T23:59:59Z.
const MAX_TIME: i64 = 253_402_300_799;

pub fn claims(token: &str) -> Option<Claims> {
    if token.len() > MAX_TOKEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64::decode(payload)?;
    let v: Value = serde_json::from_slice(&json).ok()?;
    let obj = v.as_object()?;
    // Only plausible times (years 1970 to 9999): anything else is not a
    // clock reading, and near i64's ends it overflowed the skew arithmetic
    // (found by fuzzing).
    let num = |k: &str| -> Option<i64> {
        let n = obj.get(k)?;
        n.as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite() && f.abs() < 1e15)
                    .map(|f| f.floor() as i64)
            })
            .filter(|t| (0..=MAX_TIME).contains(t))
    };
    Some(Claims {
        exp: num("exp"),
        iat: num("iat"),
    })
}

/// `base64url(header).base64url(claims).signature`, unsigned (`alg: none`).
#[cfg(test)]
pub fn encode_unsigned(claims: &Value) -> String {
    let header = base64::encode_url(br#"{"alg":"none","typ":"JWT"}"#);
    let body = base64::encode_url(claims.to_string().as_bytes());
    let sig = base64::encode_url(crate::rand::hex(32).as_bytes());
    format!("{header}.{body}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let t = encode_unsigned(
            &serde_json::json!({"exp": 1_795_003_600, "iat": 1_795_000_000, "sub": "x"}),
        );
        assert_eq!(
            claims(&t),
            Some(Claims {
                exp: Some(1_795_003_600),
                iat: Some(1_795_000_000)
            })
        );
        assert!(!t.contains('='));
    }

    #[test]
    fn reads_a_real_world_shaped_token() {
        // header {"alg":"HS256","typ":"JWT"}, payload {"sub":"1234567890","name":"John Doe","iat":1516239022,"exp":1516242622.7}
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyLCJleHAiOjE1MTYyNDI2MjIuN30.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_eq!(
            claims(t),
            Some(Claims {
                exp: Some(1_516_242_622),
                iat: Some(1_516_239_022)
            })
        );
    }

    #[test]
    fn opaque_and_malformed_tokens_are_not_jwts() {
        for t in [
            "abc123xyz456",
            "4df20e702bfaeee96ecd6cbbc4ff384c166f5567",
            "a.b",
            "a.b.c.d",
            "x.!!!.y",
            "x.bm90IGpzb24.y", // "not json"
            "x.WzEsMl0.y",     // [1,2]: not an object
        ] {
            assert_eq!(claims(t).and_then(|c| c.exp), None, "{t}");
        }
        assert_eq!(claims(&format!("a.{}.c", "A".repeat(MAX_TOKEN))), None);
    }
}
