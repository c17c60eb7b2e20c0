//! The one HTTP client wrapper every provider uses: ureq 3 over rustls with
//! the `ring` provider, trusting the system store plus the provider's own CA,
//! with a timeout on every request and a cap on every body read. Transport
//! failures come back classified; status codes are left to the providers
//! (see `providers::check_status`).

use crate::providers::{ErrorKind, ProviderError};
use crate::secret::Secret;
use crate::timefmt::{now_unix, parse_http_date};
use std::io;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use ureq::tls::{Certificate, RootCerts, TlsConfig};

/// The largest response body read; a token answer is a few hundred bytes.
pub const MAX_BODY: u64 = 64 * 1024;

/// A partner's answer, body already read.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After`, as a delay from now.
    pub retry_after: Option<Duration>,
    /// The `Date` header, unix seconds.
    pub date: Option<i64>,
    pub content_type: Option<String>,
}

/// Which proxy partner requests go through (`proxy` in the config).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ProxySetting {
    /// Straight to the partner, whatever the environment says.
    #[default]
    Off,
    /// `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY`, as the
    /// environment gives them (`proxy = "env"`).
    Env,
    /// This proxy for every request, loopback included. A `Secret`: the
    /// URL may carry the proxy's password.
    Url(Secret),
}

impl ProxySetting {
    /// Reads a config value: `"env"`, `"none"` or an `http://` or
    /// `https://` proxy URL. The error never repeats the value.
    pub fn parse(value: &str) -> Result<ProxySetting, String> {
        match value {
            "env" => Ok(ProxySetting::Env),
            "none" => Ok(ProxySetting::Off),
            url => {
                let ok = (url.starts_with("http://") || url.starts_with("https://"))
                    && ureq::Proxy::new(url).is_ok();
                if ok {
                    Ok(ProxySetting::Url(Secret::new(url)))
                } else {
                    Err(
                        "expected \"env\", \"none\" or a proxy URL like \"http://proxy.lan:3128\""
                            .to_owned(),
                    )
                }
            }
        }
    }

    fn proxy(&self) -> Option<ureq::Proxy> {
        match self {
            ProxySetting::Off => None,
            ProxySetting::Env => ureq::Proxy::try_from_env(),
            ProxySetting::Url(url) => ureq::Proxy::new(url.expose()).ok(),
        }
    }
}

pub struct Http {
    agent: ureq::Agent,
    timeout: Duration,
}

/// The system's trusted CAs, read once: `$SSL_CERT_FILE`, else Debian's bundle.
fn system_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let path = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/etc/ssl/certs/ca-certificates.crt".into());
        match std::fs::read(&path) {
            Ok(pem) => parse_certs(&pem),
            Err(e) => {
                log::warn!(
                    "no system CA bundle at {} ({e}); only ca_file CAs are trusted",
                    path.display()
                );
                Vec::new()
            }
        }
    })
}

fn parse_certs(pem: &[u8]) -> Vec<Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

/// Checks that a PEM file holds at least one certificate; returns how many.
pub fn check_ca_pem(pem: &[u8]) -> Result<usize, String> {
    match parse_certs(pem).len() {
        0 => Err("holds no PEM certificate".to_owned()),
        n => Ok(n),
    }
}

impl Http {
    /// A client with `timeout` for each whole request, trusting the system
    /// store plus `extra_ca_pem`.
    pub fn new(
        timeout: Duration,
        extra_ca_pem: Option<&[u8]>,
        proxy: &ProxySetting,
    ) -> Result<Http, String> {
        let mut roots: Vec<Certificate<'static>> = system_roots().to_vec();
        if let Some(pem) = extra_ca_pem {
            let extra = parse_certs(pem);
            if extra.is_empty() {
                return Err("holds no PEM certificate".to_owned());
            }
            roots.extend(extra);
        }
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::new_with_certs(&roots))
            .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            // A token endpoint that redirects is misconfigured; say so
            // rather than follow it with credentials.
            .max_redirects(0)
            .user_agent(concat!("shop-auth-agent/", env!("CARGO_PKG_VERSION")))
            // No pool: renewals are minutes apart, partners close idle
            // connections long before, and each pooled connection holds
            // ureq's buffers (~256 KiB) for nothing.
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .accept("application/json")
            // ureq reads HTTP_PROXY and friends by default. A proxy sees every
            // credential we send; it is not the environment's to choose, but
            // the config's (`proxy`).
            .proxy(proxy.proxy())
            .tls_config(tls)
            .build();
        Ok(Http {
            agent: config.new_agent(),
            timeout,
        })
    }

    /// A client for `timeout` and `extra_ca_pem`, shared with every provider
    /// that asks for the same: each client holds its own copy of the
    /// system's trusted CAs (~0.8 MiB parsed), which five providers need
    /// only once.
    pub fn shared(
        timeout: Duration,
        extra_ca_pem: Option<&[u8]>,
        proxy: &ProxySetting,
    ) -> Result<Arc<Http>, String> {
        type Key = (Duration, Option<Vec<u8>>, ProxySetting);
        static CLIENTS: std::sync::Mutex<Vec<(Key, std::sync::Weak<Http>)>> =
            std::sync::Mutex::new(Vec::new());
        let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
        clients.retain(|(_, weak)| weak.strong_count() > 0);
        let key: Key = (timeout, extra_ca_pem.map(<[u8]>::to_vec), proxy.clone());
        if let Some(http) = clients
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(http);
        }
        let http = Arc::new(Http::new(timeout, extra_ca_pem, proxy)?);
        clients.push((key, Arc::downgrade(&http)));
        Ok(http)
    }

    /// POSTs an `application/x-www-form-urlencoded` body; `basic` is the
    /// (user, password) pair for HTTP Basic, used exactly as given.
    pub fn post_form(
        &self,
        url: &str,
        basic: Option<(&str, &str)>,
        form: &[(&str, &str)],
    ) -> Result<Response, ProviderError> {
        let mut req = self.agent.post(url);
        if let Some((user, password)) = basic {
            req = req.header("Authorization", basic_header(user, password));
        }
        let result = req.send_form(form.iter().copied());
        self.finish(url, result)
    }

    /// POSTs a JSON body, with a Bearer token when given.
    pub fn post_json(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Response, ProviderError> {
        let mut req = self
            .agent
            .post(url)
            .header("Content-Type", "application/json");
        if let Some(token) = bearer {
            req = req.header("Authorization", format!("Bearer {token}"));
        }
        let result = req.send(body.to_string());
        self.finish(url, result)
    }

    fn finish(
        &self,
        url: &str,
        result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Response, ProviderError> {
        let mut resp = result.map_err(|e| self.classify(url, e))?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v, now_unix()));
        let date = header("date").and_then(|v| parse_http_date(&v));
        let content_type = header("content-type");
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.classify(url, e))?;
        Ok(Response {
            status,
            body,
            retry_after,
            date,
            content_type,
        })
    }

    fn classify(&self, url: &str, e: ureq::Error) -> ProviderError {
        let host = host_of(url);
        let transient = ProviderError::transient;
        match e {
            ureq::Error::Timeout(_) => transient(format!(
                "{} timed out after {}s",
                strip_query(url),
                self.timeout.as_secs_f64()
            )),
            ureq::Error::HostNotFound => transient(format!("DNS lookup of {host} failed")),
            ureq::Error::ConnectionFailed => transient(format!("connect to {host} failed")),
            ureq::Error::Io(io) => match io.kind() {
                io::ErrorKind::ConnectionRefused => {
                    transient(format!("connect to {host}: connection refused"))
                }
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => transient(format!(
                    "{} timed out after {}s",
                    strip_query(url),
                    self.timeout.as_secs_f64()
                )),
                // rustls reports handshake failures through the stream as I/O errors.
                _ if io
                    .get_ref()
                    .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
                {
                    transient(format!("TLS handshake with {host} failed: {io}"))
                }
                _ => transient(format!("talking to {host}: {io}")),
            },
            ureq::Error::Tls(m) => transient(format!("TLS handshake with {host} failed: {m}")),
            ureq::Error::Rustls(r) => transient(format!("TLS handshake with {host} failed: {r}")),
            ureq::Error::BodyExceedsLimit(_) => ProviderError::new(
                ErrorKind::BadResponse,
                format!("response from {host} larger than {} KiB", MAX_BODY / 1024),
            ),
            ureq::Error::LargeResponseHeader(..) => ProviderError::new(
                ErrorKind::BadResponse,
                format!("response headers from {host} too large"),
            ),
            other => transient(format!("talking to {host}: {other}")),
        }
    }
}

/// `Authorization: Basic base64(user:password)` (RFC 7617).
pub fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        crate::base64::encode(format!("{user}:{password}").as_bytes())
    )
}

/// `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(v: &str, now: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    parse_http_date(v).map(|at| Duration::from_secs((at - now).max(0) as u64))
}

/// `scheme://host:port` of a URL, for messages.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or(rest)
}

/// A URL without its query string or fragment, for messages.
pub fn strip_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one canned response to one request on 127.0.0.1:0.
    fn canned(response: Vec<u8>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let mut seen = Vec::new();
            // Read the request head and its (small) body.
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    return;
                }
                seen.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(&response);
        });
        format!("http://{addr}/token")
    }

    fn client() -> Http {
        Http::new(Duration::from_secs(5), None, &ProxySetting::Off).unwrap()
    }

    #[test]
    fn reads_status_headers_and_body() {
        let url = canned(
            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
                .to_vec(),
        );
        let r = client()
            .post_form(&url, Some(("id", "s")), &[("grant_type", "x")])
            .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(r.date, Some(784_111_777));
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn caps_the_body() {
        let mut resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            MAX_BODY + 1
        )
        .into_bytes();
        resp.extend(std::iter::repeat_n(b'x', MAX_BODY as usize + 1));
        let url = canned(resp);
        let e = client()
            .post_json(&url, None, &serde_json::json!({}))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadResponse, "{e}");
    }

    #[test]
    fn connection_refused_is_transient() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let e = client()
            .post_form(&format!("http://{addr}/token"), None, &[])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Transient);
        assert!(e.message.contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn helpers() {
        assert_eq!(
            basic_header("Aladdin", "open sesame"),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(host_of("https://a.example:8443/x?y"), "a.example:8443");
        assert_eq!(strip_query("https://a/x?secret=1"), "https://a/x");
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:37 GMT", 784_111_777),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert!(check_ca_pem(b"not a pem").is_err());
    }
}
