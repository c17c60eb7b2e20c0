//! The standard RFC 6749 token endpoint: client credentials (§4.4) or
//! resource owner password (§4.3) grants, refresh (§6) when a refresh token
//! was issued. HTTP Basic client authentication form-encodes the id and
//! secret before base64 (§2.3.1); a public client (no secret) sends its
//! `client_id` in the body (§3.2.1).

use super::{form_urlencode, oauth_grant};
use crate::http::Http;
use crate::providers::{ClientAuth, Grant, OAuth2Grant, Provider, ProviderError};
use crate::secret::Secret;

pub struct OAuth2 {
    token_url: String,
    client_id: String,
    client_secret: Option<Secret>,
    grant: OAuth2Grant,
    client_auth: ClientAuth,
    scope: Option<String>,
    extra: Vec<(String, String)>,
}

impl OAuth2 {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: Option<Secret>,
        grant: OAuth2Grant,
        client_auth: ClientAuth,
        scope: Option<String>,
        extra: Vec<(String, String)>,
    ) -> OAuth2 {
        OAuth2 {
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
            scope,
            extra,
        }
    }

    fn post(
        &self,
        http: &Http,
        fields: &[(&str, &str)],
        extra_secret: &str,
    ) -> Result<Grant, ProviderError> {
        let mut form: Vec<(&str, &str)> = fields.to_vec();
        let encoded;
        let basic = match (&self.client_secret, self.client_auth) {
            (Some(secret), ClientAuth::Basic) => {
                encoded = (
                    form_urlencode(&self.client_id),
                    form_urlencode(secret.expose()),
                );
                Some((encoded.0.as_str(), encoded.1.as_str()))
            }
            (Some(secret), ClientAuth::Body) => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", secret.expose()));
                None
            }
            (None, _) => {
                form.push(("client_id", &self.client_id));
                None
            }
        };
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        form.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let resp = http.post_form(&self.token_url, basic, &form)?;
        let secret = self
            .client_secret
            .as_ref()
            .map(Secret::expose)
            .unwrap_or("");
        oauth_grant(&resp, &self.token_url, &[secret, extra_secret])
    }
}

impl Provider for OAuth2 {
    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        match &self.grant {
            OAuth2Grant::ClientCredentials => {
                self.post(http, &[("grant_type", "client_credentials")], "")
            }
            OAuth2Grant::Password { username, password } => self.post(
                http,
                &[
                    ("grant_type", "password"),
                    ("username", username),
                    ("password", password.expose()),
                ],
                password.expose(),
            ),
        }
    }

    fn renew(&self, http: &Http, refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        Some(self.post(
            http,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh.expose()),
            ],
            refresh.expose(),
        ))
    }
}
