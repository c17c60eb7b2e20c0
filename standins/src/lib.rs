//! Loopback stand-ins for the partner APIs, in one small HTTP/1.1 server
//! (plain or TLS) on 127.0.0.1. `shop-auth-agent dev` runs the agent against
//! it, and the end-to-end tests drive it: it follows the partners' APIs as
//! docs/partners.md records them (paths, bodies, error shapes), checks what it receives
//! strictly, counts requests, remembers what it issued, and can be switched
//! into fault modes per kind.
//!
//! Where a document is silent the stand-in chooses, and says so below.

mod util;

use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;
use util::{base64, format_http_date, format_rfc3339, jwt, now_unix, rand};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    AutoLeap,
    MakeLeaps,
    Autovit,
    Carrental,
    OAuth2,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::AutoLeap,
        Kind::MakeLeaps,
        Kind::Autovit,
        Kind::Carrental,
        Kind::OAuth2,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::AutoLeap => "autoleap",
            Kind::MakeLeaps => "makeleaps",
            Kind::Autovit => "autovit",
            Kind::Carrental => "carrental",
            Kind::OAuth2 => "oauth2",
        }
    }
}

/// The credentials the stand-ins accept. The secret values are distinctive
/// so that leak tests can search logs for them.
pub mod creds {
    pub const AUTOLEAP_PARTNER_ID: &str = "dev-partner";
    pub const AUTOLEAP_AUTH_KEY: &str = "dev-autoleap-key-7f3a91";
    pub const MAKELEAPS_CLIENT_ID: &str = "dev-makeleaps-client";
    pub const MAKELEAPS_CLIENT_SECRET: &str = "dev-makeleaps-secret-c41d07";
    pub const AUTOVIT_CLIENT_ID: &str = "123";
    pub const AUTOVIT_CLIENT_SECRET: &str = "dev-autovit-secret-02468a";
    pub const AUTOVIT_USERNAME: &str = "shop@example.com";
    pub const AUTOVIT_PASSWORD: &str = "dev-autovit-password-9e2b";
    pub const AUTOVIT_PARTNER_CODE: &str = "partner-name";
    pub const AUTOVIT_PARTNER_SECRET: &str = "dev-autovit-partner-5d8c";
    pub const CARRENTAL_USERNAME: &str = "shop-17";
    pub const CARRENTAL_PASSWORD: &str = "dev-carrental-password-61f0";
    pub const OAUTH2_CLIENT_ID: &str = "pos terminal";
    // Needs form-encoding before HTTP Basic (RFC 6749 §2.3.1).
    pub const OAUTH2_CLIENT_SECRET: &str = "dev-s3cr:t+/=-oauth2-88aa";
    pub const OAUTH2_USERNAME: &str = "cashier";
    pub const OAUTH2_PASSWORD: &str = "dev-oauth2-password-3b3b";
}

/// How a kind answers, for tests of the agent's handling of bad partners.
#[derive(Debug, Clone)]
pub enum Mode {
    Normal,
    /// A fixed answer to every request of the kind.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// 200 with this body.
    Body(String),
    /// 200 with a body of this many bytes of filler.
    Huge(usize),
    /// Answer normally after this delay.
    Delay(Duration),
    /// Read the request, never answer.
    Hang,
    /// Read the request, close without answering.
    Close,
    /// Carry the request out (a refresh token is rotated, a new token
    /// issued), then close without answering: the answer lost on the way.
    LoseAnswer,
    /// Answer normally, one byte per this interval (a dying link).
    Trickle(Duration),
    /// Answer as the vendor does for wrong credentials.
    Reject,
    /// 401 whose error fields echo the request: its `Authorization`
    /// header and its body, as a careless partner's error page does.
    Echo,
    /// The inner mode for requests of one action (a `grant_type`, or the
    /// path's action such as `logout`), normal answers to the others.
    Only(String, Box<Mode>),
}

/// How a kind writes its answers, beyond what its document fixes: the forms
/// a real partner plausibly takes that the defaults do not show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// Opaque tokens (hex) where the kind's examples show JWTs (AutoLeap,
    /// Carrental): the agent then has no `exp` to read.
    pub opaque: bool,
    /// Carrental's `issued` and `expires` in this UTC offset (seconds east)
    /// without saying so, as a server on local time writes them; `None`:
    /// with `+00:00`, as the document's sample.
    pub local_offset: Option<i64>,
    /// Whether `grant_type=refresh_token` is taken. Autovit's document
    /// lists only `password` and `partner`, so its stand-in refuses it
    /// (`unsupported_grant_type`) unless told otherwise.
    pub refresh_grant: bool,
}

impl Format {
    /// The defaults for `kind`.
    pub fn of(kind: Kind) -> Format {
        Format {
            opaque: false,
            local_offset: None,
            refresh_grant: kind != Kind::Autovit,
        }
    }
}

pub struct StandinOptions {
    pub lifetime: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Default for StandinOptions {
    fn default() -> Self {
        StandinOptions {
            lifetime: Duration::from_secs(3600),
            tls: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct RequestRecord {
    pub kind: Kind,
    pub path: String,
    /// "login", "refresh", "logout", or the OAuth grant_type.
    pub action: String,
    pub status: u16,
    /// Fields received, secret values replaced by "***".
    pub params: Vec<(String, String)>,
}

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
const MAX_RECORDS: usize = 10_000;
const SECRET_FIELDS: [&str; 7] = [
    "authKey",
    "password",
    "client_secret",
    "partner_secret",
    "refresh_token",
    "refreshToken",
    "access_token",
];

#[derive(Default)]
struct State {
    modes: HashMap<Kind, Mode>,
    formats: HashMap<Kind, Format>,
    lifetime: Duration,
    records: VecDeque<RequestRecord>,
    counts: HashMap<Kind, usize>,
    /// Live access tokens and their expiry.
    access: HashMap<String, i64>,
    /// Live refresh tokens: kind and the access token issued with it.
    refresh: HashMap<String, (Kind, String)>,
    issued: Vec<String>,
}

struct Inner {
    state: Mutex<State>,
    stopping: AtomicBool,
    stopped: Condvar,
    addr: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct Standin {
    inner: Arc<Inner>,
}

impl Standin {
    /// Binds 127.0.0.1 on an ephemeral port and starts serving.
    pub fn start(opts: StandinOptions) -> io::Result<Standin> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                lifetime: opts.lifetime,
                ..State::default()
            }),
            stopping: AtomicBool::new(false),
            stopped: Condvar::new(),
            addr: listener.local_addr()?,
            tls: opts.tls,
        });
        let me = Arc::clone(&inner);
        thread::Builder::new()
            .name("standin".into())
            .spawn(move || accept_loop(listener, me))?;
        Ok(Standin { inner })
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    pub fn base_url(&self) -> String {
        let scheme = if self.inner.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.inner.addr)
    }

    /// The URL to configure for a kind.
    pub fn url(&self, kind: Kind) -> String {
        let path = match kind {
            Kind::AutoLeap => "/v2/",
            Kind::MakeLeaps => "/user/oauth2/token/",
            Kind::Autovit => "/api/open/oauth/token",
            Kind::Carrental => "/authtoken",
            Kind::OAuth2 => "/oauth2/token",
        };
        format!("{}{path}", self.base_url())
    }

    pub fn set_mode(&self, kind: Kind, mode: Mode) {
        self.inner.lock().modes.insert(kind, mode);
    }

    pub fn set_format(&self, kind: Kind, format: Format) {
        self.inner.lock().formats.insert(kind, format);
    }

    pub fn set_lifetime(&self, lifetime: Duration) {
        self.inner.lock().lifetime = lifetime;
    }

    pub fn requests(&self, kind: Kind) -> Vec<RequestRecord> {
        let st = self.inner.lock();
        st.records
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    pub fn count(&self, kind: Kind) -> usize {
        self.inner.lock().counts.get(&kind).copied().unwrap_or(0)
    }

    pub fn issued(&self) -> Vec<String> {
        self.inner.lock().issued.clone()
    }

    pub fn is_live(&self, access_token: &str) -> bool {
        let st = self.inner.lock();
        st.access
            .get(access_token)
            .is_some_and(|&exp| exp > now_unix())
    }

    /// `[providers.*]` sections for every kind, pointing here. MakeLeaps is
    /// given `persist = true` (its default is not to keep tokens) so that
    /// every kind's tokens survive a restart in `dev` and in the tests.
    pub fn providers_toml(&self) -> String {
        use creds::*;
        format!(
            "[providers.autoleap]\nkind = \"autoleap\"\nbase_url = {al:?}\npartner_id = {AUTOLEAP_PARTNER_ID:?}\nauth_key = {AUTOLEAP_AUTH_KEY:?}\n\n\
             [providers.makeleaps]\nkind = \"makeleaps\"\ntoken_url = {ml:?}\nclient_id = {MAKELEAPS_CLIENT_ID:?}\nclient_secret = {MAKELEAPS_CLIENT_SECRET:?}\npersist = true\n\n\
             [providers.autovit]\nkind = \"autovit\"\ntoken_url = {av:?}\nclient_id = {AUTOVIT_CLIENT_ID}\nclient_secret = {AUTOVIT_CLIENT_SECRET:?}\ngrant_type = \"password\"\nusername = {AUTOVIT_USERNAME:?}\npassword = {AUTOVIT_PASSWORD:?}\nclient_auth = \"basic\"\n\n\
             [providers.autovit_partner]\nkind = \"autovit\"\ntoken_url = {av:?}\nclient_id = {AUTOVIT_CLIENT_ID:?}\nclient_secret = {AUTOVIT_CLIENT_SECRET:?}\ngrant_type = \"partner\"\npartner_code = {AUTOVIT_PARTNER_CODE:?}\npartner_secret = {AUTOVIT_PARTNER_SECRET:?}\nclient_auth = \"body\"\n\n\
             [providers.carrental]\nkind = \"carrental\"\nurl = {cr:?}\nusername = {CARRENTAL_USERNAME:?}\npassword = {CARRENTAL_PASSWORD:?}\n\n\
             [providers.oauth2]\nkind = \"oauth2\"\ntoken_url = {oa:?}\nclient_id = {OAUTH2_CLIENT_ID:?}\nclient_secret = {OAUTH2_CLIENT_SECRET:?}\ngrant_type = \"client_credentials\"\nscope = \"read write\"\nextra = {{ audience = \"pos\" }}\n",
            al = self.url(Kind::AutoLeap),
            ml = self.url(Kind::MakeLeaps),
            av = self.url(Kind::Autovit),
            cr = self.url(Kind::Carrental),
            oa = self.url(Kind::OAuth2),
        )
    }

    /// Stops accepting and releases connections held by `Mode::Hang`.
    pub fn stop(&self) {
        if self.inner.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        self.inner.stopped.notify_all();
        // Wake the blocked accept().
        let _ = TcpStream::connect(self.inner.addr);
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: TcpListener, inner: Arc<Inner>) {
    for conn in listener.incoming() {
        if inner.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = conn else { continue };
        let me = Arc::clone(&inner);
        let _ = thread::Builder::new()
            .name("standin-conn".into())
            .spawn(move || serve_conn(stream, &me));
    }
}

fn serve_conn(tcp: TcpStream, inner: &Inner) {
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = tcp.set_nodelay(true);
    match &inner.tls {
        None => serve_stream(tcp, inner),
        Some(cfg) => {
            if let Ok(conn) = rustls::ServerConnection::new(Arc::clone(cfg)) {
                serve_stream(rustls::StreamOwned::new(conn, tcp), inner)
            }
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    retry_after: Option<u64>,
}

impl Answer {
    fn json(status: u16, v: Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: v.to_string().into_bytes(),
            retry_after: None,
        }
    }
    fn text(status: u16, t: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain",
            body: t.as_bytes().to_vec(),
            retry_after: None,
        }
    }
}

enum Read1 {
    Request(Request),
    TooLarge,
    Malformed,
    Gone,
}

fn serve_stream<S: Read + Write>(mut s: S, inner: &Inner) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let req = match read_request(&mut s, &mut buf) {
            Read1::Request(r) => r,
            Read1::TooLarge => {
                let _ = write_answer(&mut s, &Answer::text(413, "request too large"), true);
                return;
            }
            Read1::Malformed => {
                let _ = write_answer(&mut s, &Answer::text(400, "malformed request"), true);
                return;
            }
            Read1::Gone => return,
        };
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        match handle(inner, &req) {
            Outcome::Answer(a) => {
                if write_answer(&mut s, &a, close).is_err() || close {
                    return;
                }
            }
            Outcome::Huge(n) => {
                let _ = write_huge(&mut s, n);
                return;
            }
            Outcome::Trickle(a, every) => {
                let mut bytes = Vec::new();
                let _ = write_answer(&mut bytes, &a, true);
                for b in bytes {
                    if s.write_all(&[b]).and_then(|()| s.flush()).is_err() {
                        return;
                    }
                    let st = inner.lock();
                    let _ = inner
                        .stopped
                        .wait_timeout_while(st, every, |_| !inner.stopping.load(Ordering::SeqCst));
                    if inner.stopping.load(Ordering::SeqCst) {
                        return;
                    }
                }
                return;
            }
            Outcome::Hang => {
                let mut st = inner.lock();
                while !inner.stopping.load(Ordering::SeqCst) {
                    st = inner
                        .stopped
                        .wait_timeout(st, Duration::from_millis(200))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                return;
            }
            Outcome::Close => return,
        }
    }
}

fn read_request<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Read1 {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if p > MAX_HEAD {
                return Read1::TooLarge;
            }
            break p;
        }
        if buf.len() > MAX_HEAD {
            return Read1::TooLarge;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Read1::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let Ok(head) = std::str::from_utf8(&buf[..head_end]) else {
        return Read1::Malformed;
    };
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(path), Some(version)) = (first.next(), first.next(), first.next())
    else {
        return Read1::Malformed;
    };
    if !version.starts_with("HTTP/1.") {
        return Read1::Malformed;
    }
    let mut headers = Vec::new();
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            return Read1::Malformed;
        };
        headers.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body: Vec::new(),
    };
    buf.drain(..head_end + 4);
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        match read_chunked(s, buf) {
            Some(Ok(body)) => req.body = body,
            Some(Err(())) => return Read1::TooLarge,
            None => return Read1::Gone,
        }
        return Read1::Request(req);
    }
    let len = match req.header("content-length").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= MAX_BODY => n,
        Some(Ok(_)) => return Read1::TooLarge,
        Some(Err(_)) => return Read1::Malformed,
    };
    while buf.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return Read1::Gone,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    req.body = buf.drain(..len).collect();
    Read1::Request(req)
}

/// A chunked body; `Some(Err)` when it is too large, `None` when the peer went.
fn read_chunked<S: Read>(s: &mut S, buf: &mut Vec<u8>) -> Option<Result<Vec<u8>, ()>> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut fill = |buf: &mut Vec<u8>| -> Option<()> {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                Some(())
            }
        }
    };
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if buf.len() > MAX_HEAD {
                return Some(Err(()));
            }
            fill(buf)?;
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers (none expected) end with an empty line.
            while buf.windows(2).position(|w| w == b"\r\n").is_none() {
                fill(buf)?;
            }
            let p = buf.windows(2).position(|w| w == b"\r\n")?;
            buf.drain(..p + 2);
            return Some(Ok(body));
        }
        if body.len() + size > MAX_BODY {
            return Some(Err(()));
        }
        while buf.len() < size + 2 {
            fill(buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn write_answer<S: Write>(s: &mut S, a: &Answer, close: bool) -> io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nDate: {}\r\n",
        a.status,
        reason(a.status),
        a.content_type,
        a.body.len(),
        format_http_date(now_unix())
    );
    if let Some(ra) = a.retry_after {
        head.push_str(&format!("Retry-After: {ra}\r\n"));
    }
    head.push_str(if close {
        "Connection: close\r\n\r\n"
    } else {
        "Connection: keep-alive\r\n\r\n"
    });
    let mut out = head.into_bytes();
    out.extend_from_slice(&a.body);
    s.write_all(&out)?;
    s.flush()
}

fn write_huge<S: Write>(s: &mut S, n: usize) -> io::Result<()> {
    write!(
        s,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
    )?;
    let filler = [b' '; 16 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(filler.len());
        s.write_all(&filler[..k])?;
        left -= k;
    }
    s.flush()
}

enum Outcome {
    Answer(Answer),
    Trickle(Answer, Duration),
    Huge(usize),
    Hang,
    Close,
}

fn route(path: &str) -> Option<(Kind, &'static str)> {
    let path = path.split('?').next().unwrap_or(path);
    Some(match path {
        "/v2/partners/login" => (Kind::AutoLeap, "login"),
        "/v2/partners/generateNewAccessToken" => (Kind::AutoLeap, "refresh"),
        "/v2/partners/logout" => (Kind::AutoLeap, "logout"),
        "/user/oauth2/token/" => (Kind::MakeLeaps, ""),
        "/api/open/oauth/token" => (Kind::Autovit, ""),
        "/authtoken" => (Kind::Carrental, "login"),
        "/oauth2/token" => (Kind::OAuth2, ""),
        _ => return None,
    })
}

/// The fields of a request: a JSON object or a form body.
fn fields(req: &Request) -> Option<Map<String, Value>> {
    let ct = req.header("content-type").unwrap_or("");
    if ct.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&req.body).ok()? {
            Value::Object(m) => Some(m),
            _ => None,
        }
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let text = std::str::from_utf8(&req.body).ok()?;
        let mut m = Map::new();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            m.insert(form_decode(k)?, Value::String(form_decode(v)?));
        }
        Some(m)
    } else {
        None
    }
}

fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// HTTP Basic credentials, decoded but otherwise as sent.
fn basic(req: &Request) -> Option<(String, String)> {
    let v = req.header("authorization")?;
    let enc = v.strip_prefix("Basic ")?;
    let text = String::from_utf8(base64::decode(enc.trim())?).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn handle(inner: &Inner, req: &Request) -> Outcome {
    let Some((kind, fixed_action)) = route(&req.path) else {
        return Outcome::Answer(Answer::text(404, "not found"));
    };
    let fields = fields(req);
    let action = if fixed_action.is_empty() {
        fields
            .as_ref()
            .and_then(|f| f.get("grant_type")?.as_str().map(str::to_owned))
            .unwrap_or_default()
    } else {
        fixed_action.to_owned()
    };
    let params: Vec<(String, String)> = fields
        .iter()
        .flatten()
        .map(|(k, v)| {
            let v = if SECRET_FIELDS.contains(&k.as_str()) {
                "***".to_owned()
            } else {
                v.as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| v.to_string())
            };
            (k.clone(), v)
        })
        .collect();
    let mode = {
        let mut st = inner.lock();
        *st.counts.entry(kind).or_insert(0) += 1;
        match st.modes.get(&kind).cloned().unwrap_or(Mode::Normal) {
            Mode::Only(only, inner) if only == action => *inner,
            Mode::Only(..) => Mode::Normal,
            other => other,
        }
    };
    let (outcome, status) = match mode {
        // An `Only` within an `Only` answers normally.
        Mode::Normal
        | Mode::Reject
        | Mode::Delay(_)
        | Mode::LoseAnswer
        | Mode::Trickle(_)
        | Mode::Only(..) => {
            if let Mode::Delay(d) = mode {
                let st = inner.lock();
                let _ = inner
                    .stopped
                    .wait_timeout_while(st, d, |_| !inner.stopping.load(Ordering::SeqCst));
            }
            let reject = matches!(mode, Mode::Reject);
            let a = if req.method != "POST" {
                Answer::text(405, "method not allowed")
            } else {
                match fields {
                    None => Answer::text(415, "expected a JSON or form body"),
                    Some(f) => vendor(inner, kind, &action, req, &f, reject),
                }
            };
            let status = a.status;
            match mode {
                Mode::LoseAnswer => (Outcome::Close, status),
                Mode::Trickle(every) => (Outcome::Trickle(a, every), status),
                _ => (Outcome::Answer(a), status),
            }
        }
        Mode::Status {
            status,
            body,
            retry_after,
        } => (
            Outcome::Answer(Answer {
                status,
                content_type: "application/json",
                body: body.into_bytes(),
                retry_after,
            }),
            status,
        ),
        Mode::Body(b) => (
            Outcome::Answer(Answer {
                status: 200,
                content_type: "application/json",
                body: b.into_bytes(),
                retry_after: None,
            }),
            200,
        ),
        Mode::Echo => {
            let said = format!(
                "{} {}",
                req.header("authorization").unwrap_or(""),
                String::from_utf8_lossy(&req.body)
            );
            let body = serde_json::json!({
                "error": "invalid_client",
                "error_description": said,
                "message": said,
            });
            (Outcome::Answer(Answer::json(401, body)), 401)
        }
        Mode::Huge(n) => (Outcome::Huge(n), 200),
        Mode::Hang => (Outcome::Hang, 0),
        Mode::Close => (Outcome::Close, 0),
    };
    let mut st = inner.lock();
    if st.records.len() >= MAX_RECORDS {
        st.records.pop_front();
    }
    st.records.push_back(RequestRecord {
        kind,
        path: req.path.clone(),
        action,
        status,
        params,
    });
    outcome
}

fn str_field<'a>(f: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    f.get(k)?.as_str()
}

/// Issues a token pair; the access token is a JWT where the vendor's is one.
fn issue(
    inner: &Inner,
    kind: Kind,
    jwt_token: bool,
    with_refresh: bool,
) -> (String, Option<String>, u64) {
    let mut st = inner.lock();
    let now = now_unix();
    let lifetime = st.lifetime.as_secs().max(1);
    let jwt_token = jwt_token && !st.format(kind).opaque;
    let access = if jwt_token {
        jwt::encode_unsigned(&json!({
            "iat": now, "exp": now + lifetime as i64, "sub": kind.as_str(), "jti": rand::hex(16)
        }))
    } else {
        rand::hex(40)
    };
    st.access.insert(access.clone(), now + lifetime as i64);
    st.issued.push(access.clone());
    let refresh = with_refresh.then(|| {
        let r = format!("rT{}", rand::hex(30));
        st.refresh.insert(r.clone(), (kind, access.clone()));
        st.issued.push(r.clone());
        r
    });
    (access, refresh, lifetime)
}

/// Consumes a live refresh token of `kind` (rotation: it works once).
fn take_refresh(inner: &Inner, kind: Kind, token: &str) -> bool {
    let mut st = inner.lock();
    match st.refresh.get(token) {
        Some((k, _)) if *k == kind => {
            st.refresh.remove(token);
            true
        }
        _ => false,
    }
}

impl State {
    fn format(&self, kind: Kind) -> Format {
        self.formats.get(&kind).copied().unwrap_or(Format::of(kind))
    }
}

fn vendor(
    inner: &Inner,
    kind: Kind,
    action: &str,
    req: &Request,
    f: &Map<String, Value>,
    reject: bool,
) -> Answer {
    match kind {
        Kind::AutoLeap => autoleap(inner, action, req, f, reject),
        Kind::MakeLeaps => makeleaps(inner, req, f, reject),
        Kind::Autovit => autovit(inner, req, f, reject),
        Kind::Carrental => carrental(inner, req, f, reject),
        Kind::OAuth2 => oauth2(inner, req, f, reject),
    }
}

/// autoleap.txt shows only success bodies; for failures the stand-in answers
/// 401 `{"success":false,"message":…}`, the shape its logout success suggests.
fn autoleap(
    inner: &Inner,
    action: &str,
    req: &Request,
    f: &Map<String, Value>,
    reject: bool,
) -> Answer {
    let refused = |m: &str| Answer::json(401, json!({"success": false, "message": m}));
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json")
    {
        return Answer::json(
            400,
            json!({"success": false, "message": "JSON body expected"}),
        );
    }
    let pair = |inner: &Inner| {
        let (access, refresh, _) = issue(inner, Kind::AutoLeap, true, true);
        Answer::json(
            200,
            json!({"success": true, "data": {"accessToken": access, "refreshToken": refresh}}),
        )
    };
    match action {
        "login" => {
            let (Some(id), Some(key)) = (str_field(f, "partnerId"), str_field(f, "authKey")) else {
                return Answer::json(
                    400,
                    json!({"success": false, "message": "partnerId and authKey are required"}),
                );
            };
            if reject || id != creds::AUTOLEAP_PARTNER_ID || key != creds::AUTOLEAP_AUTH_KEY {
                return refused("Invalid partner credentials");
            }
            pair(inner)
        }
        "refresh" => match str_field(f, "refreshToken") {
            Some(r) if !reject && take_refresh(inner, Kind::AutoLeap, r) => pair(inner),
            _ => refused("Invalid refresh token"),
        },
        _ => {
            let bearer = req
                .header("authorization")
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let mut st = inner.lock();
            // An access token past its exp is refused, as a JWT check does.
            let live = st.access.get(bearer).is_some_and(|&exp| exp > now_unix());
            if reject || !live {
                return refused("Unauthorized");
            }
            st.access.remove(bearer);
            if let Some(r) = str_field(f, "refreshToken") {
                st.refresh.remove(r);
            }
            Answer::json(
                200,
                json!({"success": true, "message": "Successfully logged out"}),
            )
        }
    }
}

fn oauth_answer(
    inner: &Inner,
    kind: Kind,
    with_refresh: bool,
    token_type: &str,
    scope: &str,
) -> Answer {
    let (access, refresh, lifetime) = issue(inner, kind, false, with_refresh);
    let mut v = json!({"access_token": access, "token_type": token_type, "expires_in": lifetime, "scope": scope});
    if let Some(r) = refresh {
        v["refresh_token"] = Value::String(r);
    }
    Answer::json(200, v)
}

fn makeleaps(inner: &Inner, req: &Request, f: &Map<String, Value>, reject: bool) -> Answer {
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/x-www-form-urlencoded")
    {
        return Answer::json(400, json!({"error": "invalid_request"}));
    }
    let ok_client = basic(req).is_some_and(|(id, secret)| {
        id == creds::MAKELEAPS_CLIENT_ID && secret == creds::MAKELEAPS_CLIENT_SECRET
    });
    if reject || !ok_client {
        return Answer::json(401, json!({"error": "invalid_client"}));
    }
    if str_field(f, "grant_type") != Some("client_credentials") {
        return Answer::json(400, json!({"error": "unsupported_grant_type"}));
    }
    oauth_answer(inner, Kind::MakeLeaps, false, "Bearer", "read write")
}

fn autovit_error(status: u16, error: &str, description: &str) -> Answer {
    Answer::json(
        status,
        json!({"error": error, "error_description": description,
               "error_human_title": "Niepoprawna wartość", "error_human_message": ""}),
    )
}

fn autovit(inner: &Inner, req: &Request, f: &Map<String, Value>, reject: bool) -> Answer {
    // Both of the document's examples send a form.
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/x-www-form-urlencoded")
    {
        return autovit_error(400, "invalid_request", "Form body expected");
    }
    // Client id and secret by HTTP Basic (the curl example) or in the body
    // (the raw example); either is accepted, as the vendor's examples differ.
    let client = basic(req).or_else(|| {
        Some((
            str_field(f, "client_id")?.to_owned(),
            str_field(f, "client_secret")?.to_owned(),
        ))
    });
    let ok_client = client.is_some_and(|(id, secret)| {
        id == creds::AUTOVIT_CLIENT_ID && secret == creds::AUTOVIT_CLIENT_SECRET
    });
    if !ok_client {
        return autovit_error(401, "invalid_client", "Invalid client credentials");
    }
    if reject {
        // The document's own error example.
        return autovit_error(
            400,
            "invalid_grant",
            "Invalid partner credentials parameter",
        );
    }
    let granted = match str_field(f, "grant_type") {
        Some("password") => {
            str_field(f, "username") == Some(creds::AUTOVIT_USERNAME)
                && str_field(f, "password") == Some(creds::AUTOVIT_PASSWORD)
        }
        Some("partner") => {
            str_field(f, "partner_code") == Some(creds::AUTOVIT_PARTNER_CODE)
                && str_field(f, "partner_secret") == Some(creds::AUTOVIT_PARTNER_SECRET)
        }
        Some("refresh_token") if inner.lock().format(Kind::Autovit).refresh_grant => {
            str_field(f, "refresh_token").is_some_and(|r| take_refresh(inner, Kind::Autovit, r))
        }
        _ => {
            return autovit_error(
                400,
                "unsupported_grant_type",
                "Allowed grant types: password, partner",
            );
        }
    };
    if !granted {
        return autovit_error(
            400,
            "invalid_grant",
            "Invalid partner credentials parameter",
        );
    }
    oauth_answer(inner, Kind::Autovit, true, "bearer", "adverts-write read")
}

fn carrental(inner: &Inner, req: &Request, f: &Map<String, Value>, reject: bool) -> Answer {
    // The document's request is JSON (`Content-Type: application/json`).
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json")
    {
        return Answer::text(415, "Unsupported Media Type");
    }
    let (Some(user), Some(password)) = (str_field(f, "userName"), str_field(f, "password")) else {
        return Answer::text(400, "");
    };
    if user != creds::CARRENTAL_USERNAME {
        return Answer::text(404, &format!("No user found with username: {user}"));
    }
    if reject || password != creds::CARRENTAL_PASSWORD {
        return Answer::text(401, "");
    }
    let (token, _, lifetime) = issue(inner, Kind::Carrental, true, false);
    let now = now_unix();
    let time = |t: i64| match inner.lock().format(Kind::Carrental).local_offset {
        Some(offset) => format_rfc3339(t + offset).replace('Z', ".000"),
        None => format_rfc3339(t).replace('Z', ".000+00:00"),
    };
    // All strings, as the document's example shows.
    Answer::json(
        200,
        json!({"type": "Bearer", "token": token, "expiresIn": lifetime.to_string(),
               "issued": time(now), "expires": time(now + lifetime as i64)}),
    )
}

fn oauth2(inner: &Inner, req: &Request, f: &Map<String, Value>, reject: bool) -> Answer {
    let err = |status: u16, e: &str| Answer::json(status, json!({"error": e}));
    if !req
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/x-www-form-urlencoded")
    {
        return err(400, "invalid_request");
    }
    // RFC 6749 §2.3.1: Basic credentials are form-encoded before base64.
    let client = match basic(req) {
        Some((id, secret)) => form_decode(&id).zip(form_decode(&secret)),
        None => Some((
            str_field(f, "client_id").unwrap_or("").to_owned(),
            str_field(f, "client_secret").unwrap_or("").to_owned(),
        )),
    };
    let ok_client = client.is_some_and(|(id, secret)| {
        id == creds::OAUTH2_CLIENT_ID && secret == creds::OAUTH2_CLIENT_SECRET
    });
    if reject || !ok_client {
        return err(401, "invalid_client");
    }
    let scope = str_field(f, "scope").unwrap_or("read").to_owned();
    match str_field(f, "grant_type") {
        Some("client_credentials") => oauth_answer(inner, Kind::OAuth2, false, "Bearer", &scope),
        Some("password") => {
            if str_field(f, "username") == Some(creds::OAUTH2_USERNAME)
                && str_field(f, "password") == Some(creds::OAUTH2_PASSWORD)
            {
                oauth_answer(inner, Kind::OAuth2, true, "Bearer", &scope)
            } else {
                err(400, "invalid_grant")
            }
        }
        Some("refresh_token") => {
            if str_field(f, "refresh_token").is_some_and(|r| take_refresh(inner, Kind::OAuth2, r)) {
                oauth_answer(inner, Kind::OAuth2, true, "Bearer", &scope)
            } else {
                err(400, "invalid_grant")
            }
        }
        _ => err(400, "unsupported_grant_type"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written HTTP/1.1 client: one request, the status and body back.
    fn post(s: &Standin, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        c.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        parse_response(&out)
    }

    fn parse_response(out: &str) -> (u16, String) {
        let status = out
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    const JSON: (&str, &str) = ("Content-Type", "application/json");
    const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

    #[test]
    fn autoleap_login_refresh_logout() {
        let s = Standin::start(StandinOptions::default()).unwrap();
        let body = format!(
            r#"{{"partnerId":"{}","authKey":"{}"}}"#,
            creds::AUTOLEAP_PARTNER_ID,
            creds::AUTOLEAP_AUTH_KEY
        );
        let (st, b) = post(&s, "/v2/partners/login", &[JSON], &body);
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        let access = v["data"]["accessToken"].as_str().unwrap().to_owned();
        let refresh = v["data"]["refreshToken"].as_str().unwrap().to_owned();
        assert!(jwt::claims(&access).unwrap()["exp"].is_i64());
        assert!(s.is_live(&access));
        let rb = format!(r#"{{"refreshToken":"{refresh}"}}"#);
        let (st, b) = post(&s, "/v2/partners/generateNewAccessToken", &[JSON], &rb);
        assert_eq!(st, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        let access2 = v["data"]["accessToken"].as_str().unwrap().to_owned();
        // Rotation: the old refresh token works once.
        assert_eq!(
            post(&s, "/v2/partners/generateNewAccessToken", &[JSON], &rb).0,
            401
        );
        let auth = format!("Bearer {access2}");
        let (st, _) = post(
            &s,
            "/v2/partners/logout",
            &[JSON, ("Authorization", &auth)],
            "{}",
        );
        assert_eq!(st, 200);
        assert!(!s.is_live(&access2));
        let bad = r#"{"partnerId":"dev-partner","authKey":"wrong"}"#;
        assert_eq!(post(&s, "/v2/partners/login", &[JSON], bad).0, 401);
        assert_eq!(s.count(Kind::AutoLeap), 5);
        let recs = s.requests(Kind::AutoLeap);
        assert_eq!(recs[0].action, "login");
        assert!(recs[0]
            .params
            .iter()
            .any(|(k, v)| k == "authKey" && v == "***"));
    }

    #[test]
    fn oauth_kinds_and_client_auth() {
        let s = Standin::start(StandinOptions::default()).unwrap();
        let ml = format!(
            "Basic {}",
            base64::encode(
                format!(
                    "{}:{}",
                    creds::MAKELEAPS_CLIENT_ID,
                    creds::MAKELEAPS_CLIENT_SECRET
                )
                .as_bytes()
            )
        );
        let (st, b) = post(
            &s,
            "/user/oauth2/token/",
            &[FORM, ("Authorization", &ml)],
            "grant_type=client_credentials",
        );
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(
            post(
                &s,
                "/user/oauth2/token/",
                &[FORM],
                "grant_type=client_credentials"
            )
            .0,
            401
        );

        let av = format!(
            "client_id=123&client_secret={}&grant_type=partner&partner_code=partner-name&partner_secret={}",
            creds::AUTOVIT_CLIENT_SECRET,
            creds::AUTOVIT_PARTNER_SECRET
        );
        let (st, b) = post(&s, "/api/open/oauth/token", &[FORM], &av);
        assert_eq!(st, 200, "{b}");
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["token_type"], "bearer");
        let refresh = v["refresh_token"].as_str().unwrap();
        let rb = format!(
            "client_id=123&client_secret={}&grant_type=refresh_token&refresh_token={refresh}",
            creds::AUTOVIT_CLIENT_SECRET
        );
        // The refresh grant is not in Autovit's document: refused unless
        // the format says otherwise; a JSON body is refused too.
        let (st, b) = post(&s, "/api/open/oauth/token", &[FORM], &rb);
        assert_eq!(st, 400);
        assert!(b.contains("unsupported_grant_type"), "{b}");
        assert_eq!(post(&s, "/api/open/oauth/token", &[JSON], "{}").0, 400);
        s.set_format(
            Kind::Autovit,
            Format {
                refresh_grant: true,
                ..Format::of(Kind::Autovit)
            },
        );
        assert_eq!(post(&s, "/api/open/oauth/token", &[FORM], &rb).0, 200);
        let (st, b) = post(&s, "/api/open/oauth/token", &[FORM], &rb);
        assert_eq!(st, 400);
        assert!(b.contains("error_human_title"));

        // oauth2: Basic with form-encoded id and secret.
        let enc = |x: &str| -> String {
            x.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                        (b as char).to_string()
                    }
                    b' ' => "+".to_owned(),
                    _ => format!("%{b:02X}"),
                })
                .collect()
        };
        let oa = format!(
            "Basic {}",
            base64::encode(
                format!(
                    "{}:{}",
                    enc(creds::OAUTH2_CLIENT_ID),
                    enc(creds::OAUTH2_CLIENT_SECRET)
                )
                .as_bytes()
            )
        );
        let (st, b) = post(
            &s,
            "/oauth2/token",
            &[FORM, ("Authorization", &oa)],
            "grant_type=client_credentials&scope=read+write&audience=pos",
        );
        assert_eq!(st, 200, "{b}");
        assert!(b.contains("\"scope\":\"read write\""));
        let rec = s.requests(Kind::OAuth2).pop().unwrap();
        assert!(rec.params.contains(&("audience".into(), "pos".into())));
        // Raw (not form-encoded) Basic credentials are refused.
        let raw = format!(
            "Basic {}",
            base64::encode(
                format!(
                    "{}:{}",
                    creds::OAUTH2_CLIENT_ID,
                    creds::OAUTH2_CLIENT_SECRET
                )
                .as_bytes()
            )
        );
        assert_eq!(
            post(
                &s,
                "/oauth2/token",
                &[FORM, ("Authorization", &raw)],
                "grant_type=client_credentials"
            )
            .0,
            401
        );
    }

    #[test]
    fn carrental_answers_and_modes() {
        let s = Standin::start(StandinOptions::default()).unwrap();
        let body = format!(
            r#"{{"userName":"{}","password":"{}"}}"#,
            creds::CARRENTAL_USERNAME,
            creds::CARRENTAL_PASSWORD
        );
        let (st, b) = post(&s, "/authtoken", &[JSON], &body);
        assert_eq!(st, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["expiresIn"], "3600");
        assert!(v["expires"].as_str().unwrap().ends_with(".000+00:00"));
        assert!(jwt::claims(v["token"].as_str().unwrap()).is_some());
        // A form body is refused; a server on local time and opaque tokens.
        let form = format!(
            "userName={}&password={}",
            creds::CARRENTAL_USERNAME,
            creds::CARRENTAL_PASSWORD
        );
        assert_eq!(post(&s, "/authtoken", &[FORM], &form).0, 415);
        s.set_format(
            Kind::Carrental,
            Format {
                opaque: true,
                local_offset: Some(7200),
                ..Format::of(Kind::Carrental)
            },
        );
        let (_, b) = post(&s, "/authtoken", &[JSON], &body);
        let v: Value = serde_json::from_str(&b).unwrap();
        let expires = v["expires"].as_str().unwrap();
        assert!(
            expires.ends_with(".000") && !expires.contains('+'),
            "{expires}"
        );
        assert!(jwt::claims(v["token"].as_str().unwrap()).is_none());
        s.set_format(Kind::Carrental, Format::of(Kind::Carrental));
        assert_eq!(
            post(
                &s,
                "/authtoken",
                &[JSON],
                r#"{"userName":"x","password":"y"}"#
            )
            .0,
            404
        );
        s.set_mode(
            Kind::Carrental,
            Mode::Status {
                status: 503,
                body: String::new(),
                retry_after: Some(7),
            },
        );
        assert_eq!(post(&s, "/authtoken", &[JSON], &body).0, 503);
        s.set_mode(Kind::Carrental, Mode::Body("<html>".into()));
        assert_eq!(
            post(&s, "/authtoken", &[JSON], &body),
            (200, "<html>".into())
        );
        s.set_mode(Kind::Carrental, Mode::Close);
        assert_eq!(post(&s, "/authtoken", &[JSON], &body).0, 0);
        s.set_mode(Kind::Carrental, Mode::Reject);
        assert_eq!(post(&s, "/authtoken", &[JSON], &body).0, 401);
    }

    #[test]
    fn keep_alive_and_oversized_requests() {
        let s = Standin::start(StandinOptions::default()).unwrap();
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let one = "POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        c.write_all(format!("{one}{one}").as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.windows(12).filter(|w| w == b"HTTP/1.1 404").count() < 2 {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buf[..n]);
        }
        let big = format!(
            "POST /authtoken HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD + 10)
        );
        let mut c = TcpStream::connect(s.addr()).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.write_all(big.as_bytes());
        let mut out = String::new();
        let _ = c.read_to_string(&mut out);
        assert_eq!(parse_response(&out).0, 413);
        assert_eq!(post(&s, "/authtoken", &[JSON], "{}").0, 400);
    }
}
