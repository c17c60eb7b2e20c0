//! The socket protocol, v1: parsing request lines and formatting answers.
//! Pure functions; the server does the I/O.
//!
//! Wire format (docs/protocol.md is the contract):
//! - The client writes one request per line: UTF-8, at most 1024 bytes
//!   including the `\n` (an `INVALIDATE` naming a token: 8 KiB), words
//!   separated by spaces, the verb case-insensitive: `TOKEN name`, `STATUS`,
//!   `REFRESH name`, `INVALIDATE name [token]`, `LOGOUT name`, `PING`.
//! - Each request gets exactly one answer line: a JSON object with `"ok"`.
//!   Success answers carry the verb's fields; failures are
//!   `{"ok":false,"error":CODE,"message":"…"}` (plus `retry_in` seconds when
//!   known, and the provider's `state` for provider failures), CODE one of `bad_request`, `unknown_provider`, `forbidden`,
//!   `no_token`, `refresh_failed`, `internal`.
//! - A line longer than 1024 bytes gets `bad_request` and the connection is
//!   closed; an idle connection is closed after 60 s.

use crate::timefmt::format_rfc3339;
use crate::token::Token;
use serde::Serialize;
use std::sync::Arc;

/// The longest request line, newline included.
pub const MAX_LINE: usize = 1024;
/// The longest `INVALIDATE name token` line: room for a long JWT.
pub const MAX_INVALIDATE_LINE: usize = 8 * 1024;

/// The longest line allowed for a request starting with `start`.
pub fn line_limit(start: &[u8]) -> usize {
    const VERB: &[u8] = b"INVALIDATE ";
    if start.len() >= VERB.len() && start[..VERB.len()].eq_ignore_ascii_case(VERB) {
        MAX_INVALIDATE_LINE
    } else {
        MAX_LINE
    }
}

/// One request; names borrow from the request line, so parsing allocates
/// nothing (the server answers TOKEN without allocating).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    Token(&'a str),
    Status,
    Refresh(&'a str),
    /// The provider, and the token the client saw refused, if it says.
    Invalidate(&'a str, Option<&'a str>),
    Logout(&'a str),
    Ping,
}

impl<'a> Request<'a> {
    /// The provider a request is about, if any.
    pub fn provider(&self) -> Option<&'a str> {
        match *self {
            Request::Token(n)
            | Request::Refresh(n)
            | Request::Invalidate(n, _)
            | Request::Logout(n) => Some(n),
            Request::Status | Request::Ping => None,
        }
    }
}

/// Parses one request line (without its newline; a trailing `\r` is allowed).
/// The error is the message for a `bad_request` answer.
pub fn parse<'a>(line: &'a [u8]) -> Result<Request<'a>, String> {
    let line = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
    let line = line.strip_suffix('\r').unwrap_or(line);
    let mut words = line.split(' ').filter(|w| !w.is_empty());
    let verb = words.next().ok_or("empty request")?;
    let arg = words.next();
    // Only INVALIDATE takes a second argument: the token it saw refused.
    let token = if verb.eq_ignore_ascii_case("INVALIDATE") {
        words.next()
    } else {
        None
    };
    if words.next().is_some() {
        return Err("too many words".to_owned());
    }
    if line.len() + 1 > line_limit(line.as_bytes()) {
        return Err(format!("request line longer than {MAX_LINE} bytes"));
    }
    let name = |arg: Option<&'a str>| -> Result<&'a str, String> {
        let name =
            arg.ok_or_else(|| format!("{} needs a provider name", verb.to_ascii_uppercase()))?;
        if crate::config::valid_name(name) {
            Ok(name)
        } else {
            Err("provider names are 1 to 64 of a-z, 0-9, _ and -".to_owned())
        }
    };
    let none = |arg: Option<&str>, r: Request<'a>| match arg {
        None => Ok(r),
        Some(_) => Err(format!("{} takes no argument", verb.to_ascii_uppercase())),
    };
    let is = |v: &str| verb.eq_ignore_ascii_case(v);
    if is("TOKEN") {
        name(arg).map(Request::Token)
    } else if is("REFRESH") {
        name(arg).map(Request::Refresh)
    } else if is("INVALIDATE") {
        name(arg).map(|n| Request::Invalidate(n, token))
    } else if is("LOGOUT") {
        name(arg).map(Request::Logout)
    } else if is("STATUS") {
        none(arg, Request::Status)
    } else if is("PING") {
        none(arg, Request::Ping)
    } else {
        Err("unknown verb; expected TOKEN, STATUS, REFRESH, INVALIDATE, LOGOUT or PING".into())
    }
}

/// The failure codes a client can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    UnknownProvider,
    Forbidden,
    NoToken,
    RefreshFailed,
    Internal,
}

#[derive(Serialize)]
struct ErrorAnswer<'a> {
    ok: bool,
    error: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_in: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'a str>,
}

pub fn error(code: ErrorCode, message: &str, retry_in: Option<u64>) -> String {
    provider_error(code, message, retry_in, None)
}

/// A failure about one provider, with its state when known (`none`,
/// `renewing`, `expired`: try later; `rejected`, `logged_out`: a person
/// must act).
pub fn provider_error(
    code: ErrorCode,
    message: &str,
    retry_in: Option<u64>,
    state: Option<&str>,
) -> String {
    to_line(&ErrorAnswer {
        ok: false,
        error: code,
        message,
        retry_in,
        state,
    })
}

/// The fields of a TOKEN answer that depend only on the provider and the
/// token, in wire order; `expires_in` and `state` follow (see
/// [`write_token_tail`]).
#[derive(Serialize)]
struct TokenHead<'a> {
    ok: bool,
    provider: &'a str,
    token_type: &'a str,
    access_token: &'a str,
    expires_at: String,
}

/// Appends `{"ok":true,…,"expires_at":"…"`, the object left open.
fn write_token_head(out: &mut Vec<u8>, provider: &str, token: &Token) {
    serde_json::to_writer(
        &mut *out,
        &TokenHead {
            ok: true,
            provider,
            token_type: &token.token_type,
            access_token: token.access.expose(),
            expires_at: format_rfc3339(token.expires_at),
        },
    )
    .expect("answers always serialise");
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
}

/// Appends `,"expires_in":N,"state":"…"}`; allocates nothing once `out`
/// has room.
fn write_token_tail(out: &mut Vec<u8>, expires_in: i64, state: &str) {
    use std::io::Write;
    out.extend_from_slice(b",\"expires_in\":");
    write!(out, "{expires_in}").expect("writing to a Vec cannot fail");
    out.extend_from_slice(b",\"state\":");
    serde_json::to_writer(&mut *out, state).expect("a string always serialises");
    out.push(b'}');
}

/// The TOKEN answer (also what REFRESH and INVALIDATE answer, and what token
/// files hold). `state` is `fresh` or `renewing`.
pub fn token(provider: &str, token: &Token, state: &str, now: i64) -> String {
    let mut out = Vec::with_capacity(256);
    write_token_head(&mut out, provider, token);
    write_token_tail(&mut out, token.expires_in(now).max(0), state);
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// TOKEN answers for one connection, byte for byte those of [`token`]. The
/// part that depends only on the provider and the token is serialised once
/// per token and kept (with the token's `Arc`, so that pointer equality
/// means the same token); each answer then copies it and writes the two
/// fields that change with time.
#[derive(Default)]
pub struct TokenAnswers {
    token: Option<Arc<Token>>,
    provider: String,
    head: Vec<u8>,
}

impl TokenAnswers {
    /// Appends the answer (without newline) to `out`.
    pub fn write(
        &mut self,
        out: &mut Vec<u8>,
        provider: &str,
        token: &Arc<Token>,
        state: &str,
        now: i64,
    ) {
        let same =
            self.token.as_ref().is_some_and(|t| Arc::ptr_eq(t, token)) && self.provider == provider;
        if !same {
            self.head.clear();
            write_token_head(&mut self.head, provider, token);
            self.token = Some(Arc::clone(token));
            self.provider.clear();
            self.provider.push_str(provider);
        }
        out.extend_from_slice(&self.head);
        write_token_tail(out, token.expires_in(now).max(0), state);
    }
}

/// One provider in the STATUS answer: no token values.
#[derive(Debug, Clone, Serialize)]
pub struct ProviderStatus {
    pub provider: String,
    pub kind: &'static str,
    pub state: &'static str,
    #[serde(serialize_with = "time_or_null")]
    pub expires_at: Option<i64>,
    #[serde(serialize_with = "time_or_null")]
    pub last_refresh: Option<i64>,
    pub last_error: Option<String>,
    pub failures: u32,
    #[serde(serialize_with = "time_or_null")]
    pub next_attempt: Option<i64>,
}

fn time_or_null<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_rfc3339(*t)),
        None => s.serialize_none(),
    }
}

#[derive(Serialize)]
struct StatusAnswer<'a> {
    ok: bool,
    providers: &'a [ProviderStatus],
    #[serde(skip_serializing_if = "Option::is_none")]
    config_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    clock: Option<&'a str>,
}

/// STATUS; `config_error` is set while a reloaded config was refused,
/// `store_error` while tokens cannot be written to disk, `clock` while the
/// wall clock is not trusted (see [`crate::clock`]).
pub fn status(
    providers: &[ProviderStatus],
    config_error: Option<&str>,
    store_error: Option<&str>,
    clock: Option<&str>,
) -> String {
    to_line(&StatusAnswer {
        ok: true,
        providers,
        config_error,
        store_error,
        clock,
    })
}

pub fn ping() -> String {
    to_line(&serde_json::json!({"ok": true, "version": env!("CARGO_PKG_VERSION")}))
}

pub fn logged_out(provider: &str) -> String {
    to_line(&serde_json::json!({"ok": true, "provider": provider}))
}

fn to_line<T: Serialize>(value: &T) -> String {
    // Our answer types hold only strings, numbers and options: cannot fail.
    serde_json::to_string(value).expect("answers always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn parses_every_verb_case_insensitively() {
        assert_eq!(parse(b"TOKEN invoices"), Ok(Request::Token("invoices")));
        assert_eq!(parse(b"token  invoices\r"), Ok(Request::Token("invoices")));
        assert_eq!(parse(b"Refresh a"), Ok(Request::Refresh("a")));
        assert_eq!(parse(b"INVALIDATE a"), Ok(Request::Invalidate("a", None)));
        assert_eq!(
            parse(b"invalidate a eyJ.x-y_z"),
            Ok(Request::Invalidate("a", Some("eyJ.x-y_z")))
        );
        assert!(parse(b"REFRESH a b").is_err());
        let long = format!("INVALIDATE a {}", "x".repeat(4000));
        assert!(parse(long.as_bytes()).is_ok());
        let long = format!("TOKEN {}", "x".repeat(1100));
        assert!(parse(long.as_bytes()).is_err());
        assert_eq!(parse(b"logout a"), Ok(Request::Logout("a")));
        assert_eq!(parse(b"status"), Ok(Request::Status));
        assert_eq!(parse(b"PING"), Ok(Request::Ping));
    }

    #[test]
    fn rejects_bad_lines_with_a_reason() {
        for bad in [
            &b""[..],
            b"   ",
            b"TOKEN",
            b"TOKEN a b",
            b"TOKEN Invoices",
            b"TOKEN ../etc",
            b"PING x",
            b"FETCH a",
            b"\xff\xfe",
        ] {
            assert!(
                parse(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn token_answer_has_the_documented_shape() {
        let t = Token {
            access: Secret::new("abc"),
            refresh: Some(Secret::new("never-shown")),
            token_type: "Bearer".into(),
            scope: None,
            obtained_at: 1_795_000_000,
            expires_at: 1_795_003_600,
            refresh_refused: false,
        };
        let line = token("invoices", &t, "fresh", 1_795_000_001);
        // The exact bytes: field order is part of what clients have seen.
        assert_eq!(
            line,
            format!(
                r#"{{"ok":true,"provider":"invoices","token_type":"Bearer","access_token":"abc","expires_at":"{}","expires_in":3599,"state":"fresh"}}"#,
                format_rfc3339(1_795_003_600)
            )
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["provider"], "invoices");
        assert_eq!(v["token_type"], "Bearer");
        assert_eq!(v["access_token"], "abc");
        assert_eq!(v["expires_in"], 3599);
        assert_eq!(v["state"], "fresh");
        assert_eq!(v["expires_at"], format_rfc3339(1_795_003_600));
        assert!(!line.contains("never-shown"));
        assert!(!line.contains('\n'));
    }

    #[test]
    fn cached_token_answers_are_the_same_bytes() {
        let t = |access: &str, expires_at| {
            Arc::new(Token {
                access: Secret::new(access),
                refresh: None,
                token_type: "Bearer".into(),
                scope: None,
                obtained_at: 1_795_000_000,
                expires_at,
                refresh_refused: false,
            })
        };
        let (a, b) = (t("a\"b\\c", 1_795_003_600), t("next", 1_795_007_200));
        let mut answers = TokenAnswers::default();
        let mut out = Vec::new();
        for (name, tok, state, now) in [
            ("invoices", &a, "fresh", 1_795_000_001),
            ("invoices", &a, "renewing", 1_795_003_000),
            ("invoices", &b, "fresh", 1_795_003_001),
            ("cars", &b, "fresh", 1_795_003_002),
            ("cars", &b, "fresh", 1_795_999_999),
        ] {
            out.clear();
            answers.write(&mut out, name, tok, state, now);
            assert_eq!(
                String::from_utf8(out.clone()).unwrap(),
                token(name, tok, state, now)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["expires_in"], 0);
    }

    #[test]
    fn errors_and_status() {
        let e: serde_json::Value =
            serde_json::from_str(&error(ErrorCode::NoToken, "none yet", Some(3))).unwrap();
        assert_eq!(e["ok"], false);
        assert_eq!(e["error"], "no_token");
        assert_eq!(e["retry_in"], 3);
        let s = status(
            &[ProviderStatus {
                provider: "a".into(),
                kind: "makeleaps",
                state: "none",
                expires_at: None,
                last_refresh: Some(0),
                last_error: None,
                failures: 0,
                next_attempt: None,
            }],
            None,
            None,
            Some("untrusted: 5000s behind the partners' clocks"),
        );
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["providers"][0]["expires_at"], serde_json::Value::Null);
        assert_eq!(v["providers"][0]["last_refresh"], "1970-01-01T00:00:00Z");
        assert!(v.get("config_error").is_none());
        assert!(v["clock"].as_str().unwrap().starts_with("untrusted"));
    }
}
