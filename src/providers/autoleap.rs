//! AutoLeap Partner API (docs/partners.md, "autoleap"): JSON login with
//! `partnerId`/`authKey`, renewal through `generateNewAccessToken`, and a
//! logout that revokes. The answers carry no lifetime; the access token is a
//! JWT whose `exp` the token module reads (else `token_lifetime`).

use super::{check_status, join_url, json_object, opt_str, required_str};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::{Http, Response};
use crate::secret::Secret;
use serde_json::json;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "autoleap",
    persist: true,
    parse: parse_keys,
};

#[derive(Debug, Clone, PartialEq)]
pub struct AutoLeap {
    base_url: String,
    partner_id: String,
    auth_key: Secret,
}

fn parse_keys(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    let base_url = keys.url("base_url", Some("https://partnerapi.myautoleap.com/v2/"));
    let partner_id = keys.required_string("partner_id");
    let auth_key = keys.required_secret("auth_key");
    Some(Arc::new(AutoLeap {
        base_url: base_url?,
        partner_id: partner_id?,
        auth_key: auth_key?,
    }))
}

impl AutoLeap {
    fn url(&self, path: &str) -> String {
        join_url(&self.base_url, path)
    }
}

/// `{"success":true,"data":{"accessToken","refreshToken"}}`. The document
/// shows only success bodies; a 200 with `success:false` is read as a
/// refusal carrying the partner's `message`, and tokens at the top level
/// (no `data`) are accepted too.
fn parse(resp: &Response, url: &str, secrets: &[&str]) -> Result<Grant, ProviderError> {
    check_status(resp, url, secrets)?;
    let obj = json_object(resp, url)?;
    if obj.get("success") == Some(&serde_json::Value::Bool(false)) {
        // Through partner_message like every other partner's words: the
        // secrets the request carried scrubbed, control characters blanked
        // (a raw quote of `message` was found by fuzzing).
        let said = super::partner_message(resp, secrets).unwrap_or_else(|| "no message".into());
        return Err(ProviderError::rejected(format!(
            "{} answered success=false: {said}",
            crate::http::strip_query(url)
        )));
    }
    let data = match obj.get("data") {
        Some(serde_json::Value::Object(d)) => d.clone(),
        _ => obj,
    };
    Ok(Grant {
        access: Secret::new(required_str(&data, "accessToken", url)?),
        refresh: opt_str(&data, "refreshToken").map(Secret::new),
        server_date: resp.date,
        ..Grant::default()
    })
}

impl Provider for AutoLeap {
    fn identity(&self) -> String {
        format!("{} {}", self.base_url, self.partner_id)
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.auth_key]
    }

    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let url = self.url("partners/login");
        let body = json!({"partnerId": self.partner_id, "authKey": self.auth_key.expose()});
        parse(
            &http.post_json(&url, None, &body)?,
            &url,
            &scrub_list(self, &[]),
        )
    }

    fn renew(&self, http: &Http, refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        let url = self.url("partners/generateNewAccessToken");
        let body = json!({"refreshToken": refresh.expose()});
        Some(
            http.post_json(&url, None, &body)
                .and_then(|r| parse(&r, &url, &scrub_list(self, &[refresh.expose()]))),
        )
    }

    fn revokes(&self) -> bool {
        true
    }

    fn logout(
        &self,
        http: &Http,
        access: &Secret,
        refresh: Option<&Secret>,
    ) -> Result<(), ProviderError> {
        let url = self.url("partners/logout");
        // The document's body names the refresh token; without one, only
        // the Bearer token is revoked (never `"refreshToken":""`).
        let body = match refresh {
            Some(r) => json!({"refreshToken": r.expose()}),
            None => json!({}),
        };
        let resp = http.post_json(&url, Some(access.expose()), &body)?;
        let refresh = refresh.map(Secret::expose).unwrap_or("");
        check_status(&resp, &url, &scrub_list(self, &[access.expose(), refresh]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::resp;
    use crate::providers::ErrorKind;

    #[test]
    fn reads_the_documented_answers_and_variants() {
        let g = parse(
            &resp(200, r#"{ "success": true, "data": { "accessToken": "abc123xyz456", "refreshToken": "rT0k3n4950506" } }"#),
            "https://a/v2/partners/login",
            &[],
        )
        .unwrap();
        assert_eq!(g.access.expose(), "abc123xyz456");
        assert_eq!(g.refresh.unwrap().expose(), "rT0k3n4950506");
        assert_eq!(g.expires_in, None);
        let g = parse(&resp(200, r#"{"accessToken":"t"}"#), "https://a/x", &[]).unwrap();
        assert_eq!(g.access.expose(), "t");
        let e = parse(
            &resp(200, r#"{"success":false,"message":"Invalid partner"}"#),
            "https://a/x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("Invalid partner"));
        // The partner's words are scrubbed of what the request carried and
        // cannot forge log lines.
        let echo = r#"{"success":false,"message":"token rTsecret1 bad\nINFO forged"}"#;
        let e = parse(&resp(200, echo), "https://x/t", &["rTsecret1"]).unwrap_err();
        assert!(!e.message.contains("rTsecret1"), "{}", e.message);
        assert!(!e.message.contains('\n'), "{}", e.message);
        let e = parse(
            &resp(200, r#"{"success":true,"data":{}}"#),
            "https://a/x",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse);
        assert!(e.message.contains("accessToken"));
    }
}
