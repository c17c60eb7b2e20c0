//! The standard RFC 6749 token endpoint: client credentials (§4.4) or
//! resource owner password (§4.3) grants, refresh (§6) when a refresh token
//! was issued. HTTP Basic client authentication form-encodes the id and
//! secret before base64 (§2.3.1); a public client (no secret) sends its
//! `client_id` in the body (§3.2.1).

use super::rfc6749::{refresh_fields, Client, ClientAuth};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::Http;
use crate::secret::Secret;
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "oauth2",
    persist: true,
    parse,
};

#[derive(Debug, Clone, PartialEq)]
pub enum OAuth2Grant {
    ClientCredentials,
    Password { username: String, password: Secret },
}

#[derive(Debug, Clone, PartialEq)]
pub struct OAuth2 {
    token_url: String,
    client: Client,
    grant: OAuth2Grant,
    scope: Option<String>,
    /// More form fields for every request (`audience`, `resource`, …).
    extra: Vec<(String, String)>,
}

fn parse(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    let token_url = keys.url("token_url", None);
    let id = keys.required_string("client_id");
    let secret = keys.secret("client_secret");
    let auth = ClientAuth::from_keys(keys, ClientAuth::Basic);
    let scope = keys.string("scope");
    let grant = match keys.required_choice(
        "grant_type",
        &[("client_credentials", false), ("password", true)],
    )? {
        false => OAuth2Grant::ClientCredentials,
        true => {
            let username = keys.required_string("username");
            let password = keys.required_secret("password");
            OAuth2Grant::Password {
                username: username?,
                password: password?,
            }
        }
    };
    let extra = keys.string_table("extra");
    Some(Arc::new(OAuth2 {
        token_url: token_url?,
        client: Client {
            id: id?,
            secret,
            auth,
        },
        grant,
        scope,
        extra,
    }))
}

impl OAuth2 {
    /// The grant's fields with the scope and extras; `token` is the
    /// refresh token a renewal carries.
    fn post(
        &self,
        http: &Http,
        grant: &[(&str, &str)],
        token: &str,
    ) -> Result<Grant, ProviderError> {
        let mut form: Vec<(&str, &str)> = grant.to_vec();
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        form.extend(self.extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        self.client
            .token_request(http, &self.token_url, &form, &scrub_list(self, &[token]))
    }
}

impl Provider for OAuth2 {
    fn identity(&self) -> String {
        let who = match &self.grant {
            OAuth2Grant::ClientCredentials => "",
            OAuth2Grant::Password { username, .. } => username,
        };
        let scope = self.scope.as_deref().unwrap_or("");
        format!("{} {} {who} {scope}", self.token_url, self.client.id)
    }

    fn secrets(&self) -> Vec<&Secret> {
        let password = match &self.grant {
            OAuth2Grant::ClientCredentials => None,
            OAuth2Grant::Password { password, .. } => Some(password),
        };
        self.client.secret.iter().chain(password).collect()
    }

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
                "",
            ),
        }
    }

    fn renew(&self, http: &Http, refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        Some(self.post(http, &refresh_fields(refresh), refresh.expose()))
    }
}
