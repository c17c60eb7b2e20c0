//! Carrental (docs/partners.md, "carrental"): JSON `{userName, password}` to
//! `/authtoken`; the answer's fields are all strings. `expires` is used when
//! it parses (its format is not documented, so every plausible one is read);
//! else `expiresIn` as seconds (its unit is not documented either; seconds is
//! what a field named so means everywhere else); the token module then falls
//! back to the JWT `exp` (the document calls the token a JWT) and finally to
//! `token_lifetime`. No renewal: log in again.

use super::{check_status, json_object, opt_secs, opt_str, required_str};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::{Http, Response};
use crate::secret::Secret;
use crate::timefmt::parse_timestamp;
use serde_json::json;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "carrental",
    persist: true,
    parse: parse_keys,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Carrental {
    url: String,
    username: String,
    password: Secret,
}

fn parse_keys(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    let url = keys.url("url", None);
    let username = keys.required_string("username");
    let password = keys.required_secret("password");
    Some(Arc::new(Carrental {
        url: url?,
        username: username?,
        password: password?,
    }))
}

fn parse(resp: &Response, url: &str, secrets: &[&str]) -> Result<Grant, ProviderError> {
    check_status(resp, url, secrets)?;
    let obj = json_object(resp, url)?;
    let expires_at = match obj.get("expires") {
        Some(serde_json::Value::String(s)) => parse_timestamp(s),
        Some(serde_json::Value::Number(n)) => {
            n.as_i64().and_then(|v| parse_timestamp(&v.to_string()))
        }
        _ => None,
    };
    Ok(Grant {
        access: Secret::new(required_str(&obj, "token", url)?),
        refresh: None,
        token_type: opt_str(&obj, "type"),
        scope: None,
        expires_at,
        expires_in: opt_secs(&obj, "expiresIn"),
        server_date: resp.date,
    })
}

impl Provider for Carrental {
    fn identity(&self) -> String {
        format!("{} {}", self.url, self.username)
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.password]
    }

    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let body = json!({"userName": self.username, "password": self.password.expose()});
        let resp = http.post_json(&self.url, None, &body)?;
        parse(&resp, &self.url, &scrub_list(self, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::resp;
    use crate::providers::ErrorKind;

    #[test]
    fn string_fields_in_their_forms() {
        let g = parse(
            &resp(200, r#"{"type":"Bearer","token":"t","expiresIn":"3600","issued":"2026-11-18T09:46:40Z","expires":"2026-11-18T10:46:40.000+00:00"}"#),
            "https://c/authtoken",
            &[],
        )
        .unwrap();
        assert_eq!(g.expires_at, Some(1_794_998_800));
        assert_eq!(g.expires_in, Some(3600));
        assert_eq!(g.token_type.as_deref(), Some("Bearer"));
        let g = parse(
            &resp(
                200,
                r#"{"token":"t","expiresIn":"86399.5","expires":"tomorrow"}"#,
            ),
            "https://c/a",
            &[],
        )
        .unwrap();
        assert_eq!(g.expires_at, None);
        assert_eq!(g.expires_in, Some(86399));
        let g = parse(
            &resp(200, r#"{"token":"t","expires":1794998800000}"#),
            "https://c/a",
            &[],
        )
        .unwrap();
        assert_eq!(g.expires_at, Some(1_794_998_800));
        let e = parse(&resp(200, r#"{"type":"Bearer"}"#), "https://c/a", &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse);
        let e = parse(
            &resp(404, "No user found with username: x"),
            "https://c/a",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
    }
}
