//! MakeLeaps (docs/partners.md, "makeleaps"): OAuth 2 client credentials with
//! HTTP Basic. The vendor's Python encodes `client_id:client_secret` as is
//! (no form-encoding first), so we do the same. No refresh tokens: a new
//! token is a new login.

use super::oauth_grant;
use crate::http::Http;
use crate::providers::{Grant, Provider, ProviderError};
use crate::secret::Secret;

pub struct MakeLeaps {
    token_url: String,
    client_id: String,
    client_secret: Secret,
    scope: Option<String>,
}

impl MakeLeaps {
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    ) -> MakeLeaps {
        MakeLeaps {
            token_url,
            client_id,
            client_secret,
            scope,
        }
    }
}

impl Provider for MakeLeaps {
    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        let basic = Some((self.client_id.as_str(), self.client_secret.expose()));
        let resp = http.post_form(&self.token_url, basic, &form)?;
        oauth_grant(&resp, &self.token_url, &[self.client_secret.expose()])
    }
}
