//! Autovit (docs/partners.md, "autovit"): OAuth 2 with the `password` or the
//! vendor's own `partner` grant; client id and secret by HTTP Basic (its curl
//! example, `-u id:secret`, sends them as is) or as form fields (its raw
//! example). Renewal with `grant_type=refresh_token`, which the document does
//! not show but its answers carry a `refresh_token` for.

use super::rfc6749::{refresh_fields, Client, ClientAuth};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::Http;
use crate::secret::Secret;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "autovit",
    persist: true,
    parse,
};

#[derive(Debug, Clone, PartialEq)]
pub enum AutovitGrant {
    Password {
        username: String,
        password: Secret,
    },
    Partner {
        partner_code: String,
        partner_secret: Secret,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Autovit {
    token_url: String,
    client: Client,
    grant: AutovitGrant,
}

fn parse(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    let token_url = keys.url(
        "token_url",
        Some("https://www.autovit.ro/api/open/oauth/token"),
    );
    // The document types client_id as a Number; a string is taken too.
    let id = keys.required_id("client_id");
    let secret = keys.required_secret("client_secret");
    let auth = ClientAuth::from_keys(keys, ClientAuth::BasicAsIs);
    let grant = match keys.required_choice("grant_type", &[("password", 0), ("partner", 1)])? {
        0 => {
            let username = keys.required_string("username");
            let password = keys.required_secret("password");
            AutovitGrant::Password {
                username: username?,
                password: password?,
            }
        }
        _ => {
            let partner_code = keys.required_string("partner_code");
            let partner_secret = keys.required_secret("partner_secret");
            AutovitGrant::Partner {
                partner_code: partner_code?,
                partner_secret: partner_secret?,
            }
        }
    };
    Some(Arc::new(Autovit {
        token_url: token_url?,
        client: Client {
            id: id?,
            secret: Some(secret?),
            auth,
        },
        grant,
    }))
}

impl Provider for Autovit {
    fn identity(&self) -> String {
        let who = match &self.grant {
            AutovitGrant::Password { username, .. } => username,
            AutovitGrant::Partner { partner_code, .. } => partner_code,
        };
        format!("{} {} {who}", self.token_url, self.client.id)
    }

    fn secrets(&self) -> Vec<&Secret> {
        let grant = match &self.grant {
            AutovitGrant::Password { password, .. } => password,
            AutovitGrant::Partner { partner_secret, .. } => partner_secret,
        };
        self.client.secret.iter().chain([grant]).collect()
    }

    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let fields = match &self.grant {
            AutovitGrant::Password { username, password } => [
                ("grant_type", "password"),
                ("username", username.as_str()),
                ("password", password.expose()),
            ],
            AutovitGrant::Partner {
                partner_code,
                partner_secret,
            } => [
                ("grant_type", "partner"),
                ("partner_code", partner_code.as_str()),
                ("partner_secret", partner_secret.expose()),
            ],
        };
        self.client
            .token_request(http, &self.token_url, &fields, &scrub_list(self, &[]))
    }

    fn renew(&self, http: &Http, refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        Some(self.client.token_request(
            http,
            &self.token_url,
            &refresh_fields(refresh),
            &scrub_list(self, &[refresh.expose()]),
        ))
    }
}
