//! MakeLeaps (docs/partners.md, "makeleaps"): OAuth 2 client credentials with
//! HTTP Basic. The vendor's Python encodes `client_id:client_secret` as is
//! (no form-encoding first), so we do the same. No refresh tokens: a new
//! token is a new login.

use super::rfc6749::{Client, ClientAuth};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::Http;
use crate::secret::Secret;
use std::sync::Arc;

/// MakeLeaps asks integrators not to save its tokens ("for security
/// reasons we recommend against it"); a reboot costs it one
/// client_credentials request. `persist = true` keeps them anyway.
pub const KIND: Kind = Kind {
    name: "makeleaps",
    persist: false,
    parse,
};

#[derive(Debug, Clone, PartialEq)]
pub struct MakeLeaps {
    token_url: String,
    client: Client,
    scope: Option<String>,
}

fn parse(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    // The vendor text says /user/oath2/token/, its code /user/oauth2/token/;
    // the code is what a working client sends.
    let token_url = keys.url(
        "token_url",
        Some("https://api.makeleaps.com/user/oauth2/token/"),
    );
    let id = keys.required_string("client_id");
    let secret = keys.required_secret("client_secret");
    let scope = keys.string("scope");
    Some(Arc::new(MakeLeaps {
        token_url: token_url?,
        client: Client {
            id: id?,
            secret: Some(secret?),
            auth: ClientAuth::BasicAsIs,
        },
        scope,
    }))
}

impl Provider for MakeLeaps {
    fn identity(&self) -> String {
        format!("{} {}", self.token_url, self.client.id)
    }

    fn secrets(&self) -> Vec<&Secret> {
        self.client.secret.iter().collect()
    }

    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let mut form = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope {
            form.push(("scope", scope));
        }
        self.client
            .token_request(http, &self.token_url, &form, &scrub_list(self, &[]))
    }
}
