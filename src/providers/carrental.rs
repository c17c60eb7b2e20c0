//! Carrental (docs/partners.md, "carrental"): JSON `{userName, password}` to
//! `/authtoken`; the answer's fields are all strings. Its lifetime is the
//! shortest of the signals that do not depend on the partner's time zone
//! ([`Signals`]); the token is served as a Bearer token whatever `type`
//! says. No renewal: log in again.

use super::{check_status, json_object, opt_secs, required_str};
use super::{scrub_list, Grant, Kind, Provider, ProviderError};
use crate::config::KindKeys;
use crate::http::host_of;
use crate::http::{Http, Response};
use crate::secret::Secret;
use crate::timefmt::{now_unix, parse_stamp, Stamp};
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const KIND: Kind = Kind {
    name: "carrental",
    persist: true,
    parse: parse_keys,
};

#[derive(Debug, Clone, PartialEq)]
pub struct Carrental {
    url: String,
    username: String,
    password: Secret,
}

fn parse_keys(keys: &mut KindKeys) -> Option<Arc<dyn Provider>> {
    let url = keys.url("url", None);
    let username = keys.required_string("username");
    let password = keys.required_secret("password");
    Some(Arc::new(Carrental {
        url: url?,
        username: username?,
        password: password?,
    }))
}

/// A timestamp field, as a string or a number.
fn stamp(obj: &serde_json::Map<String, serde_json::Value>, field: &str) -> Option<Stamp> {
    match obj.get(field)? {
        serde_json::Value::String(s) => parse_stamp(s),
        serde_json::Value::Number(n) => n.as_i64().and_then(|v| parse_stamp(&v.to_string())),
        _ => None,
    }
}

/// The lifetime signals of an answer, each in seconds, and the one taken.
///
/// Carrental's document shows `expiresIn`, `issued` and `expires` as
/// strings and says nothing of units or zones; its sample times carry a
/// `+00:00`, but a server writing its local time without an offset was
/// seen, and read as UTC that made a one-hour token look three hours long
/// (so POS users got a dead token for two). So only signals that do not
/// depend on the partner's zone are used, and the shortest wins:
/// `expiresIn`; `expires − issued` (both in the partner's zone, which
/// cancels, when both or neither name it); the JWT's `exp − iat`; and
/// `expires` itself when it names its zone (against the `Date` header).
/// An offset-less `expires` alone is not trusted: the lifetime then comes
/// from the JWT `exp` or `token_lifetime`, and a warning says so once.
#[derive(Debug, Default, PartialEq)]
struct Signals {
    expires_in: Option<i64>,
    expires_minus_issued: Option<i64>,
    jwt_exp_minus_iat: Option<i64>,
    expires_zoned: Option<i64>,
    /// An `expires` whose zone is unknown and that nothing else confirms.
    zone_unknown: bool,
}

impl Signals {
    fn read(
        obj: &serde_json::Map<String, serde_json::Value>,
        token: &str,
        reference: i64,
    ) -> Signals {
        let expires = stamp(obj, "expires");
        let issued = stamp(obj, "issued");
        let jwt = crate::jwt::claims(token);
        let mut s = Signals {
            expires_in: opt_secs(obj, "expiresIn").map(|v| v.min(i64::MAX as u64) as i64),
            expires_minus_issued: match (expires, issued) {
                (Some(e), Some(i)) if e.zoned == i.zoned => Some(e.at - i.at),
                _ => None,
            },
            jwt_exp_minus_iat: jwt.and_then(|c| Some(c.exp? - c.iat?)),
            expires_zoned: expires.filter(|e| e.zoned).map(|e| e.at - reference),
            zone_unknown: false,
        };
        s.zone_unknown = expires.is_some_and(|e| !e.zoned) && s.shortest().is_none();
        s
    }

    fn all(&self) -> [(&'static str, Option<i64>); 4] {
        [
            ("expiresIn", self.expires_in),
            ("expires-issued", self.expires_minus_issued),
            ("JWT exp-iat", self.jwt_exp_minus_iat),
            ("expires", self.expires_zoned),
        ]
    }

    /// The shortest believable lifetime (a positive one, up to a year).
    fn shortest(&self) -> Option<i64> {
        self.all()
            .iter()
            .filter_map(|(_, v)| *v)
            .filter(|v| (1..=crate::token::MAX_LIFETIME).contains(v))
            .min()
    }

    /// The signals, when they differ by more than a minute: for the log.
    fn disagreement(&self) -> Option<String> {
        let given: Vec<(&str, i64)> = self
            .all()
            .iter()
            .filter_map(|(name, v)| v.map(|v| (*name, v)))
            .collect();
        let lo = given.iter().map(|(_, v)| *v).min()?;
        let hi = given.iter().map(|(_, v)| *v).max()?;
        (hi - lo > 60).then(|| {
            given
                .iter()
                .map(|(name, v)| format!("{name} {v}s"))
                .collect::<Vec<_>>()
                .join(", ")
        })
    }
}

fn parse(resp: &Response, url: &str, secrets: &[&str]) -> Result<Grant, ProviderError> {
    check_status(resp, url, secrets)?;
    let obj = json_object(resp, url)?;
    let access = required_str(&obj, "token", url)?;
    let signals = Signals::read(&obj, &access, resp.date.unwrap_or_else(now_unix));
    if let Some(said) = signals.disagreement() {
        log::warn!(
            "carrental {}: lifetime signals disagree ({said}); the shortest is used",
            host_of(url)
        );
    }
    if signals.zone_unknown {
        static ONCE: AtomicBool = AtomicBool::new(false);
        if !ONCE.swap(true, Ordering::Relaxed) {
            log::warn!(
                "carrental {}: expires has no time zone and nothing confirms it; \
                 the lifetime comes from the token or token_lifetime",
                host_of(url)
            );
        }
    }
    Ok(Grant {
        access: Secret::new(access),
        refresh: None,
        // The document says the token goes in `Authorization: Bearer`,
        // whatever `type` says ("JWT" names the format, not the scheme).
        token_type: None,
        scope: None,
        expires_at: None,
        expires_in: signals.shortest().map(|v| v as u64),
        server_date: resp.date,
    })
}

impl Provider for Carrental {
    fn identity(&self) -> String {
        format!("{} {}", self.url, self.username)
    }

    fn secrets(&self) -> Vec<&Secret> {
        vec![&self.password]
    }

    fn login(&self, http: &Http) -> Result<Grant, ProviderError> {
        let body = json!({"userName": self.username, "password": self.password.expose()});
        let resp = http.post_json(&self.url, None, &body)?;
        parse(&resp, &self.url, &scrub_list(self, &[]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::tests::resp;
    use crate::providers::ErrorKind;

    fn grant(body: &str) -> Grant {
        parse(&resp(200, body), "https://c/authtoken", &[]).unwrap()
    }

    #[test]
    fn the_shortest_zone_independent_lifetime_wins() {
        // The document's sample: all agree (expires names its zone, read
        // against our clock here, as the test response has no Date).
        let now = now_unix();
        let at = |t: i64| crate::timefmt::format_rfc3339(t).replace('Z', ".000+00:00");
        let g = grant(&format!(
            r#"{{"type":"Bearer","token":"t","expiresIn":"3600","issued":"{}","expires":"{}"}}"#,
            at(now),
            at(now + 3600)
        ));
        let lifetime = g.expires_in.unwrap();
        assert!((3598..=3600).contains(&lifetime), "{lifetime}");
        assert_eq!(g.expires_at, None);
        // A server writing local time (UTC+2) without an offset: read as
        // UTC, expires is two hours too late; expires − issued and
        // expiresIn agree on an hour.
        let local = |t: i64| crate::timefmt::format_rfc3339(t + 7200).replace('Z', "");
        let g = grant(&format!(
            r#"{{"token":"t","expiresIn":"3600","issued":"{}","expires":"{}"}}"#,
            local(now),
            local(now + 3600)
        ));
        assert_eq!(g.expires_in, Some(3600));
        // The same without expiresIn: the difference still holds.
        let g = grant(&format!(
            r#"{{"token":"t","issued":"{}","expires":"{}"}}"#,
            local(now),
            local(now + 3600)
        ));
        assert_eq!(g.expires_in, Some(3600));
        // An offset-less expires alone is not trusted: no lifetime from the
        // answer (the JWT or token_lifetime decides).
        let g = grant(&format!(
            r#"{{"token":"t","expires":"{}"}}"#,
            local(now + 3600)
        ));
        assert_eq!(g.expires_in, None);
        // Disagreeing signals: the shortest.
        let g = grant(r#"{"token":"t","expiresIn":"86399.5","expires":"tomorrow"}"#);
        assert_eq!(g.expires_in, Some(86399));
        let g = grant(&format!(
            r#"{{"token":"t","expiresIn":"7200","expires":{}}}"#,
            (now + 1800) * 1000
        ));
        let lifetime = g.expires_in.unwrap();
        assert!((1798..=1800).contains(&lifetime), "{lifetime}");
        // A JWT's exp − iat counts too.
        let jwt = crate::jwt::encode_unsigned(&serde_json::json!({"iat": now, "exp": now + 600}));
        let g = grant(&format!(r#"{{"token":"{jwt}","expiresIn":"3600"}}"#));
        assert_eq!(g.expires_in, Some(600));
    }

    #[test]
    fn served_as_bearer_and_errors_classified() {
        let g = grant(r#"{"type":"JWT","token":"t"}"#);
        assert_eq!(g.token_type, None, "normalised to Bearer later");
        let e = parse(&resp(200, r#"{"type":"Bearer"}"#), "https://c/a", &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse);
        let mut plain = resp(404, "No user found with username: x");
        plain.content_type = Some("text/plain".into());
        let e = parse(&plain, "https://c/a", &[]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Rejected);
        assert!(e.message.contains("No user found with username"), "{e}");
    }
}
