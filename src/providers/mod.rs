//! The partner kinds. Each kind lives in its own file and implements
//! [`Provider`]: log in, renew (where the kind can), log out (where it can).
//! A provider only speaks HTTP and parses answers; when to call it, and what
//! to do with the outcome, is the scheduler's business.

mod autoleap;
mod autovit;
mod carrental;
mod makeleaps;
mod oauth2;

use crate::http::Http;
use crate::secret::Secret;
use std::fmt;
use std::time::Duration;

/// What a partner handed out. Lifetime fields are as the partner stated them;
/// `token::Token::from_grant` turns them into an absolute expiry.
#[derive(Debug, Clone, Default)]
pub struct Grant {
    pub access: Secret,
    pub refresh: Option<Secret>,
    /// As sent by the partner (`"bearer"`, `"Bearer"`, …); normalised later.
    pub token_type: Option<String>,
    pub scope: Option<String>,
    /// Absolute expiry (unix seconds) when the partner sent one (Carrental `expires`).
    pub expires_at: Option<i64>,
    /// Relative lifetime in seconds (`expires_in`, Carrental `expiresIn`).
    pub expires_in: Option<u64>,
    /// The server's `Date` header (unix seconds), when it sent a parseable one.
    pub server_date: Option<i64>,
}

/// How a failure should be treated by the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Network trouble, timeouts, 408, 429, 5xx: retry with backoff.
    Transient,
    /// The partner refused the credentials (400 invalid_grant/invalid_client,
    /// 401, 403, 404 and other 4xx): retry slowly, show plainly.
    Rejected,
    /// The partner answered 2xx but the body could not be read as a token:
    /// retried like a transient error, reported as what it is.
    BadResponse,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::Rejected => "rejected",
            ErrorKind::BadResponse => "bad_response",
        }
    }
}

/// A classified failure. `message` never holds a secret or a token: it is
/// built from status codes, URLs and the partner's own error fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderError {
    pub kind: ErrorKind,
    pub message: String,
    /// From a `Retry-After` header, when the partner sent one.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        ProviderError {
            kind,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn transient(message: impl Into<String>) -> ProviderError {
        ProviderError::new(ErrorKind::Transient, message)
    }
    pub fn rejected(message: impl Into<String>) -> ProviderError {
        ProviderError::new(ErrorKind::Rejected, message)
    }
    pub fn bad_response(message: impl Into<String>) -> ProviderError {
        ProviderError::new(ErrorKind::BadResponse, message)
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.message)
    }
}

impl std::error::Error for ProviderError {}

/// One partner kind.
pub trait Provider: Send + Sync {
    /// A full login with the configured credentials.
    fn login(&self, http: &Http) -> Result<Grant, ProviderError>;

    /// Renew with a refresh token. `None` when the kind has no renewal, so
    /// the caller logs in again; `Some(Err)` makes the caller fall back to
    /// a full login.
    fn renew(&self, _http: &Http, _refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        None
    }

    /// Revoke the tokens at the partner where the kind supports it.
    /// Kinds without a revoke endpoint do nothing and succeed.
    fn logout(
        &self,
        _http: &Http,
        _access: &Secret,
        _refresh: Option<&Secret>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// How the OAuth-style kinds present their client id and secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic `Authorization` header.
    Basic,
    /// `client_id` / `client_secret` form fields.
    Body,
}

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
pub enum OAuth2Grant {
    ClientCredentials,
    Password { username: String, password: Secret },
}

/// The validated, kind-specific part of a provider's configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum KindSettings {
    AutoLeap {
        base_url: String,
        partner_id: String,
        auth_key: Secret,
    },
    MakeLeaps {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
    },
    Autovit {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        grant: AutovitGrant,
        client_auth: ClientAuth,
    },
    Carrental {
        url: String,
        username: String,
        password: Secret,
    },
    OAuth2 {
        token_url: String,
        client_id: String,
        client_secret: Option<Secret>,
        grant: OAuth2Grant,
        client_auth: ClientAuth,
        scope: Option<String>,
        extra: Vec<(String, String)>,
    },
}

impl KindSettings {
    /// The `kind` string as written in the config.
    pub fn kind(&self) -> &'static str {
        match self {
            KindSettings::AutoLeap { .. } => "autoleap",
            KindSettings::MakeLeaps { .. } => "makeleaps",
            KindSettings::Autovit { .. } => "autovit",
            KindSettings::Carrental { .. } => "carrental",
            KindSettings::OAuth2 { .. } => "oauth2",
        }
    }
}

/// The provider implementation for validated settings.
pub fn build(settings: &KindSettings) -> Box<dyn Provider> {
    match settings.clone() {
        KindSettings::AutoLeap {
            base_url,
            partner_id,
            auth_key,
        } => Box::new(autoleap::AutoLeap::new(base_url, partner_id, auth_key)),
        KindSettings::MakeLeaps {
            token_url,
            client_id,
            client_secret,
            scope,
        } => Box::new(makeleaps::MakeLeaps::new(
            token_url,
            client_id,
            client_secret,
            scope,
        )),
        KindSettings::Autovit {
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
        } => Box::new(autovit::Autovit::new(
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
        )),
        KindSettings::Carrental {
            url,
            username,
            password,
        } => Box::new(carrental::Carrental::new(url, username, password)),
        KindSettings::OAuth2 {
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
            scope,
            extra,
        } => Box::new(oauth2::OAuth2::new(
            token_url,
            client_id,
            client_secret,
            grant,
            client_auth,
            scope,
            extra,
        )),
    }
}

/// Joins a base URL and a path with exactly one `/` (PRODUCT.md).
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}
