//! Autovit (docs/partners.md, "autovit"): OAuth 2 with the `password` or the
//! vendor's own `partner` grant; client id and secret by HTTP Basic (its curl
//! example, `-u id:secret`, sends them as is) or as form fields (its raw
//! example). Renewal with `grant_type=refresh_token`, which the document does
//! not show but its answers carry a `refresh_token` for.

use super::oauth_grant;
use crate::http::Http;
use crate::providers::{AutovitGrant, ClientAuth, Grant, Provider, ProviderError};
use crate::secret::Secret;

pub struct Autovit {
    token_url: String,
    client_id: String,
    client_secret: Secret,
    grant: AutovitGrant,
    client_auth: ClientAuth,
}

impl Autovit {
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: Secret,
        grant: AutovitGrant,
        client_auth: ClientAuth,
    ) -> Autovit {
        Autovit {
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
        }
    }

    fn post(
        &self,
        http: &Http,
        fields: &[(&str, &str)],
        extra_secret: &str,
    ) -> Result<Grant, ProviderError> {
        let mut form: Vec<(&str, &str)> = Vec::with_capacity(fields.len() + 2);
        let basic = match self.client_auth {
            ClientAuth::Basic => Some((self.client_id.as_str(), self.client_secret.expose())),
            ClientAuth::Body => {
                form.push(("client_id", &self.client_id));
                form.push(("client_secret", self.client_secret.expose()));
                None
            }
        };
        form.extend_from_slice(fields);
        let resp = http.post_form(&self.token_url, basic, &form)?;
        oauth_grant(
            &resp,
            &self.token_url,
            &[self.client_secret.expose(), extra_secret],
        )
    }
}

impl Provider for Autovit {
    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        match &self.grant {
            AutovitGrant::Password { username, password } => self.post(
                http,
                &[
                    ("grant_type", "password"),
                    ("username", username),
                    ("password", password.expose()),
                ],
                password.expose(),
            ),
            AutovitGrant::Partner {
                partner_code,
                partner_secret,
            } => self.post(
                http,
                &[
                    ("grant_type", "partner"),
                    ("partner_code", partner_code),
                    ("partner_secret", partner_secret.expose()),
                ],
                partner_secret.expose(),
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
