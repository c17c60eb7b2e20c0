//! The partner kinds. Each kind lives in its own file and implements
//! [`Provider`]: log in, renew (where the kind can), log out (where it can).
//! A provider only speaks HTTP and parses answers; when to call it, and what
//! to do with the outcome, is the scheduler's business.

mod autoleap;
mod autovit;
mod carrental;
mod makeleaps;
mod oauth2;
pub mod rfc6749;

use crate::config::KindKeys;
use crate::http::Http;
use crate::secret::Secret;
use std::any::Any;
use std::fmt;
use std::sync::Arc;
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

/// The longest token handed out: room for large JWTs, and an
/// `INVALIDATE name token` line naming it still fits the protocol's 8 KiB.
pub const MAX_TOKEN: usize = 8000;

/// Whether `token` may go into `Authorization: Bearer` as it is: RFC 6750's
/// b64token (letters, digits, `-._~+/`, then `=` padding), not empty, at
/// most [`MAX_TOKEN`] bytes. Anything else — a newline, a quote, a NUL —
/// would let a partner inject into the POS's headers or our answers.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    !body.is_empty()
        && token.len() <= MAX_TOKEN
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// A grant whose tokens can be handed out; a bad partner answer otherwise
/// (the value is not repeated in the error).
pub fn checked(grant: Grant) -> Result<Grant, ProviderError> {
    let bad = |what: &str| {
        ProviderError::new(
            ErrorKind::BadResponse,
            format!(
                "the {what} token is not a plain Bearer token (RFC 6750: letters, digits, \
                 -._~+/ and = padding, at most {MAX_TOKEN} bytes)"
            ),
        )
    };
    if !is_b64token(grant.access.expose()) {
        return Err(bad("access"));
    }
    if grant
        .refresh
        .as_ref()
        .is_some_and(|r| !is_b64token(r.expose()))
    {
        return Err(bad("refresh"));
    }
    Ok(grant)
}

/// How a failure should be treated by the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// The partner refused the grant type itself (RFC 6749 §5.2
    /// `unsupported_grant_type` or `unauthorized_client`), not the
    /// credentials or the token in it.
    pub grant_refused: bool,
}

impl ProviderError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ProviderError {
        ProviderError {
            kind,
            message: message.into(),
            retry_after: None,
            grant_refused: false,
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

/// One configured partner account of some kind. Its settings are its
/// fields (Debug must redact: hold secrets as [`Secret`]).
pub trait Provider: Send + Sync + fmt::Debug + DynEq {
    /// What identifies the account at the partner (URL, user, client id),
    /// without any secret: a stored token is reused only while it is the same.
    fn identity(&self) -> String;

    /// Every configured secret the account's requests carry: scrubbed from
    /// whatever a partner says back (see [`scrub_list`]).
    fn secrets(&self) -> Vec<&Secret>;

    /// A full login with the configured credentials.
    fn login(&self, http: &Http) -> Result<Grant, ProviderError>;

    /// Renew with a refresh token. `None` when the kind has no renewal, so
    /// the caller logs in again; `Some(Err)` makes the caller fall back to
    /// a full login.
    fn renew(&self, _http: &Http, _refresh: &Secret) -> Option<Result<Grant, ProviderError>> {
        None
    }

    /// Whether [`Provider::logout`] revokes anything at the partner. A kind
    /// that implements `logout` must say true here: the executor calls
    /// `logout` only then (renewing an expired access token for it first).
    fn revokes(&self) -> bool {
        false
    }

    /// Revoke the tokens at the partner where the kind supports it.
    /// Kinds without a revoke endpoint do nothing and succeed. Called with
    /// a valid access token (the executor renews an expired one first).
    fn logout(
        &self,
        _http: &Http,
        _access: &Secret,
        _refresh: Option<&Secret>,
    ) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// A partner kind: its name in the config's `kind` key, whether its tokens
/// are persisted when the config does not say, and how it reads its keys.
/// Each kind's file holds its `KIND`, and [`KINDS`] lists them: that line
/// and the file are all a new kind needs.
pub struct Kind {
    pub name: &'static str,
    /// The default of the `persist` key.
    pub persist: bool,
    /// Reads the kind's own keys of a `[providers.NAME]` section (every
    /// problem reported through `keys`); `None` when one was wrong.
    pub parse: fn(&mut KindKeys) -> Option<Arc<dyn Provider>>,
}

/// Every kind the config accepts, in the order error messages list them.
pub const KINDS: &[&Kind] = &[
    &autoleap::KIND,
    &makeleaps::KIND,
    &autovit::KIND,
    &carrental::KIND,
    &oauth2::KIND,
];

/// The kind named `name`.
pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// Equality through `dyn Provider`: settings compare their providers to
/// tell a changed account (a fresh start) from changed timings.
pub trait DynEq {
    fn as_any(&self) -> &dyn Any;
    fn dyn_eq(&self, other: &dyn Any) -> bool;
}

impl<T: PartialEq + 'static> DynEq for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn dyn_eq(&self, other: &dyn Any) -> bool {
        other.downcast_ref::<T>().is_some_and(|o| self == o)
    }
}

/// A configured partner account: its kind and the provider built from the
/// kind's keys (secrets included, so a changed secret is a changed account).
#[derive(Clone)]
pub struct Partner {
    kind: &'static Kind,
    provider: Arc<dyn Provider>,
}

impl Partner {
    pub fn new(kind: &'static Kind, provider: Arc<dyn Provider>) -> Partner {
        Partner { kind, provider }
    }

    /// The `kind` string as written in the config.
    pub fn kind(&self) -> &'static str {
        self.kind.name
    }

    pub fn provider(&self) -> &Arc<dyn Provider> {
        &self.provider
    }

    /// What identifies the account at the partner, without any secret.
    pub fn identity(&self) -> String {
        format!("{} {}", self.kind.name, self.provider.identity())
    }
}

impl PartialEq for Partner {
    fn eq(&self, other: &Partner) -> bool {
        self.kind.name == other.kind.name && self.provider.dyn_eq(other.provider.as_any())
    }
}

impl fmt::Debug for Partner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The providers' own Debug: secrets in them print redacted.
        self.provider.fmt(f)
    }
}

/// The strings to scrub from a partner's answer to a request of `p`: its
/// configured secrets and the tokens the request carried (`more`).
pub fn scrub_list<'a>(p: &'a dyn Provider, more: &[&'a str]) -> Vec<&'a str> {
    let mut list: Vec<&str> = p.secrets().into_iter().map(Secret::expose).collect();
    list.extend_from_slice(more);
    list
}

/// Joins a base URL and a path with exactly one `/` (docs/partners.md).
pub fn join_url(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

// ---- Shared parsing for the kinds ----------------------------------------

use crate::http::{host_of, strip_query, Response};
use serde_json::{Map, Value};

/// Turns a non-2xx status into a classified error. 408, 429 and 5xx are
/// transient; every other 4xx is "rejected": 400 invalid_grant /
/// invalid_client, 401, 403 and 404 are what docs/partners.md names, and any other
/// 4xx (say 400 invalid_request) cannot be fixed by retrying fast either.
/// `secrets` are scrubbed from the partner's own message, in case it echoes
/// one back.
pub fn check_status(resp: &Response, url: &str, secrets: &[&str]) -> Result<(), ProviderError> {
    let status = resp.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let mut message = format!("HTTP {status} from {}", strip_query(url));
    if let Some(said) = partner_message(resp, secrets) {
        message.push_str(": ");
        message.push_str(&said);
    }
    let kind = match status {
        408 | 429 | 500..=599 => ErrorKind::Transient,
        400..=499 => ErrorKind::Rejected,
        // 1xx/3xx: a redirect or something stranger; retry later.
        _ => ErrorKind::Transient,
    };
    let error_code = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| Some(v.get("error")?.as_str()?.to_owned()));
    Err(ProviderError {
        kind,
        message,
        retry_after: resp.retry_after,
        grant_refused: status == 400
            && matches!(
                error_code.as_deref(),
                Some("unsupported_grant_type" | "unauthorized_client")
            ),
    })
}

/// The partner's own words: its error fields if the body is a JSON object
/// (RFC 6749's `error`/`error_description`, Autovit's `error_human_*`,
/// AutoLeap's `message`), or a `text/plain` body (Carrental's "No user
/// found with username", which tells a wrong user from a wrong URL). Never
/// another body (an HTML page, a stack trace); scrubbed of `secrets`, control
/// characters blanked, at most 200 characters.
fn partner_message(resp: &Response, secrets: &[&str]) -> Option<String> {
    let parts = match serde_json::from_slice::<Value>(&resp.body) {
        Ok(v) => json_parts(v.as_object()?, secrets),
        Err(_) => {
            let plain = resp
                .content_type
                .as_deref()
                .is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with("text/plain"));
            if !plain {
                return None;
            }
            let text = String::from_utf8_lossy(&resp.body);
            let said = crate::secret::scrub(&text, secrets);
            vec![said.split_whitespace().collect::<Vec<_>>().join(" ")]
        }
    };
    let parts: Vec<String> = parts.into_iter().filter(|s| !s.is_empty()).collect();
    if parts.is_empty() {
        return None;
    }
    let mut text: String = parts
        .join(" — ")
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > 200 {
        text = text.chars().take(199).collect::<String>() + "…";
    }
    Some(text)
}

/// The error fields of a JSON error body, each scrubbed and trimmed.
fn json_parts(obj: &Map<String, Value>, secrets: &[&str]) -> Vec<String> {
    [
        "error",
        "error_description",
        "error_human_title",
        "error_human_message",
        "message",
    ]
    .iter()
    .filter_map(|k| obj.get(*k)?.as_str())
    // Scrubbed first, as the partner wrote it: blanking control characters
    // or trimming first would hide a secret that holds one (a tab, a CR
    // from a Windows-saved secret file) from the match (found by fuzzing).
    .map(|part| crate::secret::scrub(part, secrets))
    .map(|part| part.trim().to_owned())
    .collect()
}

/// The body as a JSON object, or a BadResponse saying what arrived instead
/// (its size and content type, never its text).
pub fn json_object(resp: &Response, url: &str) -> Result<Map<String, Value>, ProviderError> {
    let describe = || {
        // The partner's header, shortened and made printable: it is text
        // the partner chose, like a body (noticed while fuzzing).
        let ct: String = resp
            .content_type
            .as_deref()
            .unwrap_or("none")
            .chars()
            .take(60)
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        format!("{} bytes, content-type {ct}", resp.body.len())
    };
    match serde_json::from_slice::<Value>(&resp.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ProviderError::bad_response(format!(
            "response from {} is JSON but not an object ({})",
            host_of(url),
            describe()
        ))),
        Err(_) => Err(ProviderError::bad_response(format!(
            "response from {} is not JSON ({})",
            host_of(url),
            describe()
        ))),
    }
}

/// A required, non-empty string field.
pub fn required_str(
    obj: &Map<String, Value>,
    field: &str,
    url: &str,
) -> Result<String, ProviderError> {
    match obj.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) => Err(ProviderError::bad_response(format!(
            "response from {} has an empty {field}",
            host_of(url)
        ))),
        Some(_) => Err(ProviderError::bad_response(format!(
            "response from {} has a {field} that is not a string",
            host_of(url)
        ))),
        None => Err(ProviderError::bad_response(format!(
            "response from {} has no {field}",
            host_of(url)
        ))),
    }
}

/// An optional string field; empty counts as absent.
pub fn opt_str(obj: &Map<String, Value>, field: &str) -> Option<String> {
    obj.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// An optional count of seconds: a number, or a number in a string (floats
/// floored), as partners variously send `expires_in`.
pub fn opt_secs(obj: &Map<String, Value>, field: &str) -> Option<u64> {
    let v = obj.get(field)?;
    let f = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (0.0..1e12).contains(&f).then(|| f.floor() as u64)
}

#[cfg(test)]
mod tests {

    #[test]
    fn only_plain_bearer_tokens_are_handed_out() {
        for ok in [
            "abc",
            "eyJh.eyJz.sig-_~+/",
            "YWJj==",
            &"x".repeat(MAX_TOKEN),
        ] {
            assert!(is_b64token(ok), "{ok}");
        }
        for bad in [
            "",
            "=",
            "a b",
            "a\nb",
            "a\"}{",
            "a\0",
            "a=b",
            "é",
            &"x".repeat(MAX_TOKEN + 1),
        ] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
        let grant = |access: &str, refresh: Option<&str>| Grant {
            access: Secret::new(access),
            refresh: refresh.map(Secret::new),
            ..Grant::default()
        };
        assert!(checked(grant("ok", Some("ok"))).is_ok());
        let e = checked(grant("a\r\nX-Evil: 1", None)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse);
        assert!(!e.to_string().contains("Evil"), "the value is not repeated");
        assert!(checked(grant("ok", Some("r t"))).is_err());
    }
    use super::*;

    pub fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
            retry_after: None,
            date: None,
            content_type: Some("application/json".into()),
        }
    }

    #[test]
    fn statuses_are_classified() {
        let url = "https://p.example/token?x=1";
        for (status, kind) in [
            (500, ErrorKind::Transient),
            (503, ErrorKind::Transient),
            (408, ErrorKind::Transient),
            (429, ErrorKind::Transient),
            (400, ErrorKind::Rejected),
            (401, ErrorKind::Rejected),
            (403, ErrorKind::Rejected),
            (404, ErrorKind::Rejected),
            (302, ErrorKind::Transient),
        ] {
            let e = check_status(&resp(status, ""), url, &[]).unwrap_err();
            assert_eq!(e.kind, kind, "{status}");
            assert!(e
                .message
                .starts_with(&format!("HTTP {status} from https://p.example/token")));
            assert!(!e.message.contains("x=1"));
        }
        assert!(check_status(&resp(200, ""), url, &[]).is_ok());
    }

    #[test]
    fn partner_messages_are_quoted_short_and_scrubbed() {
        let body = r#"{"error":"invalid_grant","error_description":"Invalid partner credentials parameter","error_human_title":"Niepoprawna wartość","error_human_message":""}"#;
        let e = check_status(&resp(400, body), "https://x/t", &[]).unwrap_err();
        assert_eq!(
            e.message,
            "HTTP 400 from https://x/t: invalid_grant — Invalid partner credentials parameter — Niepoprawna wartość"
        );
        let tab = r#"{"error":"invalid_client","error_description":"bad secret pass\tword99"}"#;
        let e = check_status(&resp(401, tab), "https://x/t", &["pass\tword99"]).unwrap_err();
        assert!(!e.message.contains("word99"), "{}", e.message);
        let echo = r#"{"error":"invalid_client","error_description":"bad secret hunter2"}"#;
        let e = check_status(&resp(401, echo), "https://x/t", &["hunter2"]).unwrap_err();
        assert!(!e.message.contains("hunter2"));
        assert!(e.message.contains("***"));
        let long = format!(r#"{{"message":"{}"}}"#, "a".repeat(500));
        let e = check_status(&resp(401, &long), "https://x/t", &[]).unwrap_err();
        assert!(e.message.chars().count() < 260);
        // A non-JSON error body is not quoted at all.
        let e = check_status(
            &resp(500, "<html>secret stack trace</html>"),
            "https://x/t",
            &[],
        )
        .unwrap_err();
        assert_eq!(e.message, "HTTP 500 from https://x/t");
        // A plain-text one is, scrubbed, on one line, cut short.
        let mut plain = resp(
            404,
            &format!("No user found\r\nwith password hunter2 {}", "x".repeat(400)),
        );
        plain.content_type = Some("text/plain; charset=utf-8".into());
        let e = check_status(&plain, "https://x/t", &["hunter2"]).unwrap_err();
        assert!(
            e.message
                .starts_with("HTTP 404 from https://x/t: No user found with password *** x"),
            "{}",
            e.message
        );
        assert!(e.message.chars().count() < 260);
    }

    #[test]
    fn seconds_in_their_many_forms() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(opt_secs(&obj(serde_json::json!({"e": 60})), "e"), Some(60));
        assert_eq!(
            opt_secs(&obj(serde_json::json!({"e": "60"})), "e"),
            Some(60)
        );
        assert_eq!(
            opt_secs(&obj(serde_json::json!({"e": "59.9"})), "e"),
            Some(59)
        );
        assert_eq!(opt_secs(&obj(serde_json::json!({"e": -1})), "e"), None);
        assert_eq!(opt_secs(&obj(serde_json::json!({"e": "soon"})), "e"), None);
    }

    #[test]
    fn url_join() {
        assert_eq!(
            join_url("https://a/v2/", "/partners/login"),
            "https://a/v2/partners/login"
        );
        assert_eq!(
            join_url("https://a/v2", "partners/login"),
            "https://a/v2/partners/login"
        );
    }
}
