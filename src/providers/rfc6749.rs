//! The RFC 6749 token request, shared by every kind that speaks it
//! (MakeLeaps, Autovit, `oauth2`): a form POST to the token endpoint with
//! the client authenticated one of three ways, and a §5.1 answer.

use super::{check_status, json_object, opt_secs, opt_str, required_str};
use super::{Grant, ProviderError};
use crate::config::KindKeys;
use crate::http::{Http, Response};
use crate::secret::Secret;

/// How the client id and secret travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with id and secret form-encoded first, as §2.3.1 asks.
    Basic,
    /// HTTP Basic with id and secret as they are: what the MakeLeaps and
    /// Autovit examples send (their Python and curl encode nothing), and the
    /// same bytes as `Basic` for the ids and secrets they hand out.
    BasicAsIs,
    /// `client_id` / `client_secret` form fields (§2.3.1's alternative).
    Body,
}

impl ClientAuth {
    /// The `client_auth` key: `"basic"` (HTTP Basic as the kind reads it:
    /// `basic`) or `"body"`; `basic` when absent.
    pub fn from_keys(keys: &mut KindKeys, basic: ClientAuth) -> ClientAuth {
        keys.choice(
            "client_auth",
            &[("basic", basic), ("body", ClientAuth::Body)],
        )
        .unwrap_or(basic)
    }
}

/// The client as the token endpoint knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Client {
    pub id: String,
    /// `None`: a public client (§2.1), which sends only its id, in the body
    /// (§3.2.1).
    pub secret: Option<Secret>,
    pub auth: ClientAuth,
}

impl Client {
    /// POSTs `fields` (the grant's own, scope and extras included) to
    /// `url` with the client's authentication, and reads the §5.1 answer.
    /// `scrub` (from [`super::scrub_list`]) is scrubbed from any error the
    /// partner words.
    pub fn token_request(
        &self,
        http: &Http,
        url: &str,
        fields: &[(&str, &str)],
        scrub: &[&str],
    ) -> Result<Grant, ProviderError> {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        let encoded;
        let basic = match (&self.secret, self.auth) {
            (Some(secret), ClientAuth::Basic) => {
                encoded = (form_urlencode(&self.id), form_urlencode(secret.expose()));
                Some((encoded.0.as_str(), encoded.1.as_str()))
            }
            (Some(secret), ClientAuth::BasicAsIs) => Some((self.id.as_str(), secret.expose())),
            (Some(secret), ClientAuth::Body) => {
                form.push(("client_id", &self.id));
                form.push(("client_secret", secret.expose()));
                None
            }
            (None, _) => {
                form.push(("client_id", &self.id));
                None
            }
        };
        let resp = http.post_form(url, basic, &form)?;
        oauth_grant(&resp, url, scrub)
    }
}

/// The refresh grant (§6) fields for `refresh`.
pub fn refresh_fields(refresh: &Secret) -> [(&'static str, &str); 2] {
    [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.expose()),
    ]
}

/// An RFC 6749 §5.1 token response.
pub fn oauth_grant(resp: &Response, url: &str, secrets: &[&str]) -> Result<Grant, ProviderError> {
    check_status(resp, url, secrets)?;
    let obj = json_object(resp, url)?;
    Ok(Grant {
        access: Secret::new(required_str(&obj, "access_token", url)?),
        refresh: opt_str(&obj, "refresh_token").map(Secret::new),
        token_type: opt_str(&obj, "token_type"),
        scope: opt_str(&obj, "scope"),
        expires_at: None,
        expires_in: opt_secs(&obj, "expires_in"),
        server_date: resp.date,
    })
}

/// `application/x-www-form-urlencoded` encoding of one value, as §2.3.1 asks
/// for the client id and secret before HTTP Basic.
pub fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::resp;
    use crate::providers::ErrorKind;

    #[test]
    fn oauth_responses() {
        let g = oauth_grant(
            &resp(200, r#"{"access_token":"a","token_type":"bearer","expires_in":"3600","refresh_token":"r","scope":"s"}"#),
            "https://x/t",
            &[],
        )
        .unwrap();
        assert_eq!(g.access.expose(), "a");
        assert_eq!(g.refresh.unwrap().expose(), "r");
        assert_eq!(g.expires_in, Some(3600));
        for (body, needle) in [
            ("", "not JSON"),
            ("<html>", "not JSON"),
            ("[1]", "not an object"),
            (r#"{"token_type":"Bearer"}"#, "has no access_token"),
            (r#"{"access_token":""}"#, "empty access_token"),
            (r#"{"access_token":5}"#, "not a string"),
        ] {
            let e = oauth_grant(&resp(200, body), "https://x/t", &[]).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadResponse);
            assert!(e.message.contains(needle), "{body}: {e}");
        }
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_urlencode("s3cr:t+/= x"), "s3cr%3At%2B%2F%3D+x");
    }
}
