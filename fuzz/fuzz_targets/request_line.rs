//! The socket request parser, `protocol::parse`, on any bytes (the server
//! hands it each line without its `\n`). Invariants: it never panics; an
//! accepted request re-formats canonically and parses back to itself; a
//! trailing `\r` changes nothing; every answer built from the outcome is
//! one line of JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shop_auth_agent::protocol::{self, ErrorCode, Request};
use shop_auth_agent::secret::Secret;
use shop_auth_agent::token::Token;

fn one_json_line(line: &str) -> serde_json::Value {
    assert!(!line.contains('\n'), "answer spans lines: {line:?}");
    serde_json::from_str(line).unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}"))
}

fn canonical(r: &Request) -> String {
    match r {
        Request::Token(n) => format!("TOKEN {n}"),
        Request::Refresh(n) => format!("REFRESH {n}"),
        Request::Invalidate(n, None) => format!("INVALIDATE {n}"),
        Request::Invalidate(n, Some(t)) => format!("INVALIDATE {n} {t}"),
        Request::Logout(n) => format!("LOGOUT {n}"),
        Request::Status => "STATUS".to_owned(),
        Request::Ping => "PING".to_owned(),
    }
}

fuzz_target!(|data: &[u8]| {
    let parsed = protocol::parse(data);
    if !data.ends_with(b"\r") {
        let mut with_cr = data.to_vec();
        with_cr.push(b'\r');
        assert_eq!(
            protocol::parse(&with_cr),
            parsed,
            "a trailing CR changed the outcome"
        );
    }
    match parsed {
        Ok(req) => {
            let text = std::str::from_utf8(data).expect("accepted non-UTF-8");
            let text = text.strip_suffix('\r').unwrap_or(text);
            let again = canonical(&req);
            assert_eq!(protocol::parse(again.as_bytes()), Ok(req), "{again:?}");
            // The verb is the first word, whatever its case.
            let verb = again.split(' ').next().unwrap();
            let first = text.split(' ').find(|w| !w.is_empty()).unwrap();
            assert!(first.eq_ignore_ascii_case(verb), "{text:?} read as {verb}");
            if let Some(name) = req.provider() {
                assert!(shop_auth_agent::config::valid_name(name), "{name:?}");
                assert!(text.contains(name));
                let t = Token {
                    access: Secret::new("fuzz-access"),
                    refresh: None,
                    token_type: "Bearer".into(),
                    scope: None,
                    obtained_at: 1_795_000_000,
                    expires_at: 1_795_003_600,
                };
                let v = one_json_line(&protocol::token(name, &t, "fresh", 1_795_000_001));
                assert_eq!(v["provider"], name);
                assert_eq!(v["expires_in"], 3599);
                let v = one_json_line(&protocol::logged_out(name));
                assert_eq!(v["provider"], name);
            }
        }
        Err(message) => {
            assert!(!message.is_empty());
            assert!(message.len() < 200, "{message:?}");
            assert!(!message.chars().any(char::is_control), "{message:?}");
            let v = one_json_line(&protocol::error(ErrorCode::BadRequest, &message, None));
            assert_eq!(v["ok"], false);
            assert_eq!(v["error"], "bad_request");
            assert_eq!(v["message"], message.as_str());
        }
    }
});
