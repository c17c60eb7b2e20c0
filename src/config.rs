//! The configuration: TOML text → checked [`Settings`]. Parsing walks the TOML
//! tree by hand rather than through serde's derive so that every problem is
//! reported at once, each with its key path, and unknown keys are errors.
//! Secrets are resolved here (inline, file, env, systemd credential), so a
//! config that loads is a config the agent can run with.

use crate::http::ProxySetting;
use crate::paths::{self, Env};
use crate::providers::{self, Partner};
use crate::secret::Secret;
use crate::sys;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::{Table, Value};

/// Everything the agent runs with, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub agent: AgentSettings,
    /// Sorted by name.
    pub providers: Vec<ProviderSettings>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub socket: PathBuf,
    pub socket_mode: u32,
    /// The group given to the socket and token files; `None` keeps the process's.
    pub socket_group: Option<u32>,
    pub state_dir: PathBuf,
    /// Groups whose members may LOGOUT (and log back in); root always may.
    pub admin_gids: Vec<u32>,
    /// Connections one uid may hold open at once.
    pub max_connections_per_uid: usize,
    /// The proxy for partner requests, unless a provider names its own.
    pub proxy: ProxySetting,
    /// `store_key` and `persist_refresh_tokens`: how stored records are
    /// written (sealed, and whether with refresh tokens).
    pub store: crate::store::Protection,
    /// The Prometheus text file for node_exporter (`metrics_file`); off
    /// when `None`.
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub name: String,
    /// The kind and its own settings (docs/design.md, "Adding a kind").
    pub partner: Partner,
    /// Used when the partner states no lifetime and the token is no JWT.
    pub token_lifetime: Duration,
    pub refresh_before: Duration,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// Forced renewals within this long of a successful one get its token
    /// without a partner request; zero turns it off.
    pub refresh_cooldown: Duration,
    pub persist: bool,
    pub ca_pem: Option<Vec<u8>>,
    pub file: Option<PathBuf>,
    /// Who may read the token file besides root and the agent.
    pub file_readers: crate::tokenfile::Readers,
    /// `None`: anyone who can open the socket.
    pub access: Option<Access>,
    /// `proxy`, else `[agent] proxy`.
    pub proxy: ProxySetting,
    /// Whether renewals may use the refresh grant.
    pub refresh: RefreshMode,
}

/// `refresh = "auto" | "never"`: whether a kind that can renew with a
/// refresh token does (auto: until the partner refuses the grant, which is
/// then remembered), or always logs in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshMode {
    #[default]
    Auto,
    Never,
}

/// Who may read a provider's token, resolved to ids at load time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Access {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl Access {
    /// Root always passes; otherwise the uid, the primary gid or a supplementary group must match.
    pub fn allows(&self, peer: &sys::Peer) -> bool {
        peer.uid == 0
            || self.uids.contains(&peer.uid)
            || self.gids.contains(&peer.gid)
            || peer.groups.iter().any(|g| self.gids.contains(g))
    }
}

impl ProviderSettings {
    /// What identifies the account at the partner, without any secret: a
    /// stored token is only reused when this is unchanged.
    pub fn identity(&self) -> String {
        self.partner.identity()
    }
}

/// One thing wrong with the config, at a key path like `providers.x.timeout`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// Every problem found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{}",
            self.source,
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.path.is_empty() {
                write!(f, "\n  {}", p.message)?;
            } else {
                write!(f, "\n  {}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);
const DEFAULT_REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// A quarter of the server's connection cap: one POS user holding
/// connections open cannot lock the others out.
const DEFAULT_MAX_CONNECTIONS_PER_UID: usize = 64;
// Used only when a partner states no lifetime and its token is no JWT.
// Short on purpose: guessing too long would serve an expired token, guessing
// too short only costs an early login.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);
const DEFAULT_SOCKET_MODE: u32 = 0o660;

/// Reads and checks the config file at `path`.
pub fn load(path: &Path, env: Env) -> Result<Settings, ConfigError> {
    load_with(path, env, None).map(|(s, _)| s)
}

/// [`load`]; with `check`, credentials come from the unit's sources
/// (see [`load_for_check`]).
fn load_with(
    path: &Path,
    env: Env,
    check: Option<Vec<(String, PathBuf, bool)>>,
) -> Result<(Settings, Notes), ConfigError> {
    let source = path.display().to_string();
    let fail = |message: String| ConfigError {
        source: source.clone(),
        problems: vec![Problem {
            path: String::new(),
            message,
        }],
    };
    let (bytes, meta) = read_trusted(path, "cannot read").map_err(fail)?;
    let text = String::from_utf8(bytes).map_err(|_| fail("cannot read: not UTF-8".into()))?;
    let world_readable = meta.permissions().mode() & 0o004 != 0;
    // Relative file paths in the config are the config folder's, and are
    // reported resolved: "file /etc/shop-auth-agent/x not readable".
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    parse_with(
        &text,
        &source,
        absolute.parent(),
        world_readable,
        env,
        check,
    )
}

/// What `check-config` says besides problems.
pub type Notes = Vec<String>;

/// [`load`] as `check-config` runs it, outside the service: a
/// `{ credential = "NAME" }` secret, which systemd hands only to the running
/// unit, is read from the unit's `LoadCredential=NAME:PATH` when this user
/// can read that file (root), and otherwise reported in the notes as
/// resolved by systemd at start (`LoadCredentialEncrypted=` always is),
/// rather than failing the check.
pub fn load_for_check(path: &Path, env: Env) -> Result<(Settings, Notes), ConfigError> {
    let check = match env("CREDENTIALS_DIRECTORY") {
        Some(_) => None,
        None => Some(unit_credentials(Path::new("/"))),
    };
    load_with(path, env, check)
}

/// `LoadCredential=` and `LoadCredentialEncrypted=` of the installed unit
/// under `root`, read as systemd does: the unit file from the first folder
/// that has one (`/etc` before `/run` before `/usr/local/lib` before
/// `/usr/lib`), then its drop-ins in the order of their file names across
/// those folders (a name in an earlier folder hides the same name in a
/// later one); later lines win, and an empty value clears the list.
/// name → (path, encrypted).
fn unit_credentials(root: &Path) -> Vec<(String, PathBuf, bool)> {
    let unit = "shop-auth-agent.service";
    let dirs = [
        "etc/systemd/system",
        "run/systemd/system",
        "usr/local/lib/systemd/system",
        "usr/lib/systemd/system",
        "lib/systemd/system",
    ];
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .map(|d| root.join(d).join(unit))
        .find(|p| p.is_file())
        .into_iter()
        .collect();
    let mut dropins: std::collections::BTreeMap<std::ffi::OsString, PathBuf> =
        std::collections::BTreeMap::new();
    for dir in dirs.iter().rev() {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(format!("{unit}.d"))) {
            for p in entries.flatten().map(|e| e.path()) {
                if let (Some(name), true) =
                    (p.file_name(), p.extension().is_some_and(|e| e == "conf"))
                {
                    dropins.insert(name.to_owned(), p);
                }
            }
        }
    }
    files.extend(dropins.into_values());
    let mut found: Vec<(String, PathBuf, bool)> = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let (encrypted, value) = if let Some(v) = line.strip_prefix("LoadCredential=") {
                (false, v)
            } else if let Some(v) = line.strip_prefix("LoadCredentialEncrypted=") {
                (true, v)
            } else {
                continue;
            };
            if value.is_empty() {
                found.retain(|(_, _, e)| *e != encrypted);
            } else if let Some((name, source)) = value.split_once(':') {
                found.retain(|(n, _, _)| n != name);
                found.push((name.to_owned(), PathBuf::from(source), encrypted));
            }
        }
    }
    found
}

/// Checks config text. `base` resolves relative file paths; `world_readable`
/// says whether the text came from a file others can read (inline secrets are
/// then refused, as ssh refuses a readable key).
pub fn parse(
    text: &str,
    source: &str,
    base: Option<&Path>,
    world_readable: bool,
    env: Env,
) -> Result<Settings, ConfigError> {
    parse_with(text, source, base, world_readable, env, None).map(|(s, _)| s)
}

fn parse_with(
    text: &str,
    source: &str,
    base: Option<&Path>,
    world_readable: bool,
    env: Env,
    check: Option<Vec<(String, PathBuf, bool)>>,
) -> Result<(Settings, Notes), ConfigError> {
    let mut cx = Cx {
        problems: Vec::new(),
        env,
        base: base.map(Path::to_path_buf),
        world_readable,
        check,
        notes: Vec::new(),
    };
    let root = match text.parse::<Table>() {
        Ok(t) => t,
        Err(e) => {
            // Not `e.to_string()`: it quotes the offending line, and with
            // it an inline secret that holds a stray `\` or `"` (found by
            // fuzzing). The message and a line:column never quote values.
            let at = e
                .span()
                .map(|span| {
                    let before = &text[..span.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!(" (line {line}, column {column})")
                })
                .unwrap_or_default();
            cx.problem("", format!("not valid TOML: {}{at}", one_line(e.message())));
            return Err(cx.into_error(source));
        }
    };
    let mut root = Fields::new("", root);
    let agent_fields = root.table(&mut cx, "agent");
    let agent = parse_agent(&mut cx, agent_fields);
    let default_fields = root.table(&mut cx, "defaults");
    let defaults = parse_defaults(&mut cx, default_fields);
    let mut providers = Vec::new();
    if let Some(mut table) = root.table(&mut cx, "providers") {
        let names: Vec<String> = table.table.keys().cloned().collect();
        for name in names {
            let path = join(&table.path, &name);
            if !valid_name(&name) {
                cx.problem(&path, "provider names are 1 to 64 of a-z, 0-9, _ and -");
            }
            if let Some(fields) = table.table(&mut cx, &name) {
                if let Some(p) = parse_provider(&mut cx, &name, fields, &defaults, agent.as_ref()) {
                    providers.push(p);
                }
            }
        }
        table.finish(&mut cx);
    }
    root.finish(&mut cx);
    if !cx.problems.is_empty() {
        return Err(cx.into_error(source));
    }
    providers.sort_by(|a, b| a.name.cmp(&b.name));
    let settings = Settings {
        agent: agent.expect("agent settings exist when there are no problems"),
        providers,
    };
    Ok((settings, cx.notes))
}

/// `[a-z0-9_-]{1,64}`: the provider name rule, shared with the protocol parser.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

struct Cx<'a> {
    problems: Vec<Problem>,
    env: Env<'a>,
    base: Option<PathBuf>,
    world_readable: bool,
    /// `check-config` outside the service: the unit's credential sources
    /// (name, path, encrypted), read in place of `$CREDENTIALS_DIRECTORY`.
    check: Option<Vec<(String, PathBuf, bool)>>,
    notes: Notes,
}

impl Cx<'_> {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn into_error(self, source: &str) -> ConfigError {
        ConfigError {
            source: source.to_owned(),
            problems: self.problems,
        }
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = PathBuf::from(p);
        match &self.base {
            Some(base) if p.is_relative() => base.join(p),
            _ => p,
        }
    }
}

/// A TOML table being consumed: each key taken is removed, and what is left
/// at `finish` is reported as unknown.
struct Fields {
    path: String,
    table: Table,
    /// Every key looked for: what an unknown key may be a misspelling of.
    asked: Vec<String>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    v.type_str()
}

impl Fields {
    fn new(path: &str, table: Table) -> Fields {
        Fields {
            path: path.to_owned(),
            table,
            asked: Vec::new(),
        }
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        self.note_asked(key);
        self.table.remove(key)
    }

    fn has(&mut self, key: &str) -> bool {
        self.note_asked(key);
        self.table.contains_key(key)
    }

    fn note_asked(&mut self, key: &str) {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_owned());
        }
    }

    fn string(&mut self, cx: &mut Cx, key: &str) -> Option<String> {
        match self.take(key)? {
            Value::String(s) if s.is_empty() => {
                cx.problem(&self.key(key), "is empty");
                None
            }
            Value::String(s) => Some(s),
            other => {
                cx.problem(
                    &self.key(key),
                    format!("expected a string, got {}", type_name(&other)),
                );
                None
            }
        }
    }

    fn required_string(&mut self, cx: &mut Cx, key: &str) -> Option<String> {
        if !self.has(key) {
            cx.problem(&self.key(key), "is required");
            return None;
        }
        self.string(cx, key)
    }

    fn boolean(&mut self, cx: &mut Cx, key: &str) -> Option<bool> {
        match self.take(key)? {
            Value::Boolean(b) => Some(b),
            other => {
                cx.problem(
                    &self.key(key),
                    format!("expected true or false, got {}", type_name(&other)),
                );
                None
            }
        }
    }

    fn duration(&mut self, cx: &mut Cx, key: &str) -> Option<Duration> {
        self.duration_from(cx, key, false)
    }

    /// A duration that may also be zero ("0s": off).
    fn duration_or_zero(&mut self, cx: &mut Cx, key: &str) -> Option<Duration> {
        self.duration_from(cx, key, true)
    }

    fn duration_from(&mut self, cx: &mut Cx, key: &str, zero: bool) -> Option<Duration> {
        let s = self.string(cx, key)?;
        match crate::timefmt::parse_duration(&s) {
            Ok(d) if d.is_zero() && !zero => {
                cx.problem(&self.key(key), "must be longer than zero");
                None
            }
            // Found by fuzzing: durations near 2^63 s wrap when turned into
            // seconds of a lifetime, and overflow Instant arithmetic (a
            // timeout of that size panicked every request).
            Ok(d) if d > MAX_DURATION => {
                cx.problem(&self.key(key), "is too long (at most 3650d)");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                cx.problem(&self.key(key), e);
                None
            }
        }
    }

    fn table(&mut self, cx: &mut Cx, key: &str) -> Option<Fields> {
        match self.take(key)? {
            Value::Table(t) => Some(Fields::new(&self.key(key), t)),
            other => {
                cx.problem(
                    &self.key(key),
                    format!("expected a table, got {}", type_name(&other)),
                );
                None
            }
        }
    }

    fn list<T>(
        &mut self,
        cx: &mut Cx,
        key: &str,
        mut item: impl FnMut(&mut Cx, &str, Value) -> Option<T>,
    ) -> Option<Vec<T>> {
        let path = self.key(key);
        match self.take(key)? {
            Value::Array(items) => {
                let mut out = Vec::new();
                for (i, v) in items.into_iter().enumerate() {
                    if let Some(t) = item(cx, &format!("{path}[{i}]"), v) {
                        out.push(t);
                    }
                }
                Some(out)
            }
            other => {
                cx.problem(&path, format!("expected a list, got {}", type_name(&other)));
                None
            }
        }
    }

    /// A secret: inline string, or `{ file }`, `{ env }`, `{ credential }`.
    fn secret(&mut self, cx: &mut Cx, key: &str) -> Option<Secret> {
        let path = self.key(key);
        let value = self.take(key)?;
        let resolved = match value {
            Value::String(s) => {
                if cx.world_readable {
                    Err("an inline secret in a config that everyone can read; \
                         chmod o-r the config, or use { file = \"...\" } or { credential = \"...\" }"
                        .to_owned())
                } else {
                    Ok(s)
                }
            }
            Value::Table(t) => {
                let keys: Vec<&String> = t.keys().collect();
                match (keys.len(), t.iter().next()) {
                    (1, Some((how, Value::String(arg)))) => read_secret(cx, how, arg),
                    _ => Err(
                        "expected a string, or a table with one of file, env or credential"
                            .to_owned(),
                    ),
                }
            }
            other => Err(format!(
                "expected a string or {{ file | env | credential = \"...\" }}, got {}",
                type_name(&other)
            )),
        };
        match resolved {
            Ok(s) if s.is_empty() => {
                cx.problem(&path, "the secret is empty");
                None
            }
            Ok(s) => Some(Secret::new(s)),
            Err(e) => {
                cx.problem(&path, e);
                None
            }
        }
    }

    fn required_secret(&mut self, cx: &mut Cx, key: &str) -> Option<Secret> {
        if !self.has(key) {
            cx.problem(&self.key(key), "is required");
            return None;
        }
        self.secret(cx, key)
    }

    fn finish(self, cx: &mut Cx) {
        for key in self.table.keys() {
            let message = match did_you_mean(key, &self.asked) {
                Some(k) => format!("unknown key; did you mean {k}?"),
                None => "unknown key".to_owned(),
            };
            cx.problem(&join(&self.path, key), message);
        }
    }
}

/// What stands for a credential `check-config` cannot read: 64 hex digits,
/// not all the same, so that even a `store_key` passes its checks. Never
/// used to run.
const DEFERRED_CREDENTIAL: &str =
    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The known key closest to `key`, if it is a plausible misspelling: at
/// most two edits apart (a third of the key's length at most).
fn did_you_mean<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    let limit = (key.chars().count() / 3).clamp(1, 2);
    known
        .iter()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.as_str())
}

/// Levenshtein distance, with an adjacent swap counting as one edit.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

/// A file the agent takes orders or secrets from, checked ([`trusted_file`])
/// and read through one descriptor: what is checked is what is read, even
/// if the name is swapped in between.
/// `unreadable` words an I/O error ("cannot read", "not readable").
fn read_trusted(path: &Path, unreadable: &str) -> Result<(Vec<u8>, std::fs::Metadata), String> {
    use std::io::Read;
    let io = |e: std::io::Error| format!("{unreadable}: {e}");
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    trusted_file(&meta)?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(io)?;
    Ok((bytes, meta))
}

fn read_secret(cx: &mut Cx, how: &str, arg: &str) -> Result<String, String> {
    let from_file = |path: &Path, what: String| -> Result<String, String> {
        let mut s =
            std::fs::read_to_string(path).map_err(|e| format!("{what} not readable: {e}"))?;
        // README, "Configuration": one trailing newline is trimmed, nothing else.
        if s.ends_with('\n') {
            s.pop();
        }
        Ok(s)
    };
    match how {
        "file" => {
            let path = cx.resolve(arg);
            let (bytes, _) = read_trusted(&path, "not readable")
                .map_err(|e| format!("file {} {e}", path.display()))?;
            let mut s = String::from_utf8(bytes)
                .map_err(|_| format!("file {} is not UTF-8", path.display()))?;
            // README, "Configuration": one trailing newline is trimmed, nothing else.
            if s.ends_with('\n') {
                s.pop();
            }
            Ok(s)
        }
        "env" => (cx.env)(arg).ok_or_else(|| format!("environment variable {arg} is not set")),
        "credential" => {
            if arg.is_empty() || arg.contains('/') {
                return Err(format!("credential name {arg:?} is not a plain name"));
            }
            if let Some(sources) = &cx.check {
                let source = sources.iter().find(|(n, _, _)| n == arg).cloned();
                match source {
                    Some((_, path, false)) if std::fs::File::open(&path).is_ok() => {
                        return from_file(&path, format!("credential {arg} ({})", path.display()));
                    }
                    Some((_, path, encrypted)) => cx.notes.push(format!(
                        "credential {arg}: resolved by systemd at start (LoadCredential{}={arg}:{}{})",
                        if encrypted { "Encrypted" } else { "" },
                        path.display(),
                        if encrypted { "" } else { ", not readable here" }
                    )),
                    None => cx.notes.push(format!(
                        "credential {arg}: resolved by systemd at start; the installed unit \
                         names no LoadCredential={arg}:/path, add one (systemctl edit shop-auth-agent)"
                    )),
                }
                return Ok(DEFERRED_CREDENTIAL.to_owned());
            }
            let dir = (cx.env)("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                format!(
                    "credential {arg}: $CREDENTIALS_DIRECTORY is not set \
                     (give the unit LoadCredential={arg}:/path)"
                )
            })?;
            let path = Path::new(&dir).join(arg);
            from_file(&path, format!("credential {}", path.display()))
        }
        other => Err(format!(
            "unknown secret source {other:?}; use file, env or credential"
        )),
    }
}

fn parse_agent(cx: &mut Cx, fields: Option<Fields>) -> Option<AgentSettings> {
    let mut f = fields.unwrap_or_else(|| Fields::new("agent", Table::new()));
    let socket = f.string(cx, "socket").map(|s| cx.resolve(&s));
    let socket_mode = match f.take("socket_mode") {
        None => DEFAULT_SOCKET_MODE,
        Some(v) => {
            let parsed = match &v {
                Value::String(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8).ok(),
                Value::Integer(i) => u32::try_from(*i).ok(),
                _ => None,
            };
            match parsed {
                Some(m) if m <= 0o777 => m,
                _ => {
                    cx.problem(
                        &f.key("socket_mode"),
                        "expected an octal file mode like \"0660\"",
                    );
                    DEFAULT_SOCKET_MODE
                }
            }
        }
    };
    let socket_group = match f.string(cx, "socket_group") {
        // The default group exists only where the .deb created it.
        None => sys::group_id(paths::DEFAULT_GROUP).ok().flatten(),
        Some(name) => match sys::group_id(&name) {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => {
                cx.problem(&f.key("socket_group"), format!("no group named {name:?}"));
                None
            }
            Err(e) => {
                cx.problem(&f.key("socket_group"), format!("looking up {name:?}: {e}"));
                None
            }
        },
    };
    let state_dir = f.string(cx, "state_dir").map(|s| cx.resolve(&s));
    let admin_gids = f
        .list(cx, "admin_groups", by_name(sys::group_id, "group"))
        .unwrap_or_default();
    let max_connections_per_uid = match f.take("max_connections_per_uid") {
        None => DEFAULT_MAX_CONNECTIONS_PER_UID,
        Some(Value::Integer(n)) if (1..=crate::server::MAX_CONNECTIONS as i64).contains(&n) => {
            n as usize
        }
        Some(_) => {
            cx.problem(
                &f.key("max_connections_per_uid"),
                format!(
                    "expected a number from 1 to {}",
                    crate::server::MAX_CONNECTIONS
                ),
            );
            DEFAULT_MAX_CONNECTIONS_PER_UID
        }
    };
    // 32 random bytes from any secret source. Refresh tokens are stored
    // sealed with a key; without one, only when asked (a reboot then costs
    // a full login rather than leaving a refresh token on the card).
    let key = match f.has("store_key") {
        true => f.secret(cx, "store_key"),
        false => default_store_key(cx, &f.key("store_key")),
    }
    .and_then(|s| {
        crate::store::StoreKey::parse(s.expose())
            .map_err(|e| cx.problem(&f.key("store_key"), e))
            .ok()
    });
    let proxy = match f.string(cx, "proxy") {
        Some(v) => proxy_setting(cx, &f.key("proxy"), &v),
        None => ProxySetting::Off,
    };
    let keep_refresh = f.boolean(cx, "persist_refresh_tokens");
    let metrics_file = f.string(cx, "metrics_file").and_then(|s| {
        // node_exporter's textfile collector reads only *.prom files.
        let path = cx.resolve(&s);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.len() > ".prom".len() && name.ends_with(".prom") && !s.ends_with('/') {
            Some(path)
        } else {
            let why = "expected a file name ending in .prom (node_exporter reads only those)";
            cx.problem(&f.key("metrics_file"), why);
            None
        }
    });
    let store = crate::store::Protection {
        keep_refresh: keep_refresh.unwrap_or(key.is_some()),
        key,
    };
    f.finish(cx);
    Some(AgentSettings {
        socket: paths::agent_socket(socket, cx.env),
        socket_mode,
        socket_group,
        state_dir: paths::state_dir(state_dir, cx.env),
        admin_gids,
        max_connections_per_uid,
        store,
        proxy,
        metrics_file,
    })
}

/// Without `store_key` in the config: the systemd credential `store-key`
/// when the unit passes one (the .deb's drop-in does), so that a config
/// written from scratch still seals the store.
fn default_store_key(cx: &mut Cx, path: &str) -> Option<Secret> {
    let dir = (cx.env)("CREDENTIALS_DIRECTORY")?;
    if !Path::new(&dir).join(STORE_KEY_CREDENTIAL).exists() {
        return None;
    }
    read_secret(cx, "credential", STORE_KEY_CREDENTIAL)
        .map(Secret::new)
        .map_err(|e| cx.problem(path, e))
        .ok()
}

/// The credential name the .deb's unit drop-in loads the store key as.
pub const STORE_KEY_CREDENTIAL: &str = "store-key";

/// The keys `[defaults]` may set, with their values after defaulting.
#[derive(Debug, Clone)]
struct Defaults {
    token_lifetime: Duration,
    refresh_before: Duration,
    timeout: Duration,
    max_backoff: Duration,
    refresh_cooldown: Duration,
    /// `None`: not set, the kind decides (MakeLeaps: not persisted).
    persist: Option<bool>,
}

fn parse_defaults(cx: &mut Cx, fields: Option<Fields>) -> Defaults {
    let mut d = Defaults {
        token_lifetime: DEFAULT_TOKEN_LIFETIME,
        refresh_before: DEFAULT_REFRESH_BEFORE,
        timeout: DEFAULT_TIMEOUT,
        max_backoff: DEFAULT_MAX_BACKOFF,
        refresh_cooldown: DEFAULT_REFRESH_COOLDOWN,
        persist: None,
    };
    if let Some(f) = fields {
        let f = apply_common(cx, f, &mut d);
        f.finish(cx);
    }
    d
}

/// Takes the keys shared by `[defaults]` and every provider, overriding `d`.
fn apply_common(cx: &mut Cx, mut f: Fields, d: &mut Defaults) -> Fields {
    if let Some(v) = f.duration(cx, "token_lifetime") {
        d.token_lifetime = v;
    }
    if let Some(v) = f.duration(cx, "refresh_before") {
        d.refresh_before = v;
    }
    if let Some(v) = f.duration(cx, "timeout") {
        d.timeout = v;
    }
    if let Some(v) = f.duration(cx, "max_backoff") {
        d.max_backoff = v;
    }
    if let Some(v) = f.duration_or_zero(cx, "refresh_cooldown") {
        d.refresh_cooldown = v;
    }
    if let Some(v) = f.boolean(cx, "persist") {
        d.persist = Some(v);
    }
    f
}

fn parse_provider(
    cx: &mut Cx,
    name: &str,
    f: Fields,
    defaults: &Defaults,
    agent: Option<&AgentSettings>,
) -> Option<ProviderSettings> {
    let socket_group = agent.and_then(|a| a.socket_group);
    let mut d = defaults.clone();
    let mut f = apply_common(cx, f, &mut d);
    let ca_pem = f.string(cx, "ca_file").and_then(|p| {
        let path = cx.resolve(&p);
        let checked = read_trusted(&path, "not readable")
            .map(|(pem, _)| pem)
            .map_err(|e| format!("file {} {e}", path.display()))
            .and_then(|pem| crate::http::check_ca_pem(&pem).map(|_| pem));
        checked.map_err(|e| cx.problem(&f.key("ca_file"), e)).ok()
    });
    let file = f.string(cx, "file").map(|p| cx.resolve(&p));
    if let Some(path) = &file {
        if let Err(e) = crate::tokenfile::check_dir(path, &trusted_uids()) {
            cx.problem(&f.key("file"), e);
        }
    }
    let proxy = match f.string(cx, "proxy") {
        Some(v) => proxy_setting(cx, &f.key("proxy"), &v),
        None => agent.map(|a| a.proxy.clone()).unwrap_or_default(),
    };
    let refresh = match f.string(cx, "refresh").as_deref() {
        None | Some("auto") => RefreshMode::Auto,
        Some("never") => RefreshMode::Never,
        Some(other) => {
            cx.problem(
                &f.key("refresh"),
                format!("expected \"auto\" or \"never\", got {other:?}"),
            );
            RefreshMode::Auto
        }
    };
    let file_group = f.string(cx, "file_group");
    let file_group_key = f.key("file_group");
    let access = parse_access(cx, &mut f);
    let file_readers = file_readers(cx, &file_group_key, file_group, &access, socket_group);
    let partner = match f.required_string(cx, "kind") {
        Some(name) => parse_kind(cx, &mut f, &name),
        None => {
            // Without a kind the other keys cannot be judged; don't call them unknown.
            f.table.clear();
            None
        }
    };
    f.finish(cx);
    let (kind, provider) = partner?;
    let persist = d.persist.unwrap_or(kind.persist);
    Some(ProviderSettings {
        name: name.to_owned(),
        partner: Partner::new(kind, provider),
        token_lifetime: d.token_lifetime,
        refresh_before: d.refresh_before,
        timeout: d.timeout,
        max_backoff: d.max_backoff,
        refresh_cooldown: d.refresh_cooldown,
        persist,
        ca_pem,
        file,
        file_readers,
        access,
        proxy,
        refresh,
    })
}

fn proxy_setting(cx: &mut Cx, path: &str, value: &str) -> ProxySetting {
    ProxySetting::parse(value).unwrap_or_else(|e| {
        cx.problem(path, e);
        ProxySetting::Off
    })
}

/// A file the agent takes orders or secrets from (the config, a secret
/// file, a CA): only root or the agent's user may own it, and no one else
/// may write it. A POS user who could write the config would point a
/// `token_url` at their own listener.
fn trusted_file(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    if !trusted_uids().contains(&meta.uid()) {
        return Err(format!(
            "is owned by uid {}, not root or the agent's user; chown root it",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {mode:04o}); chmod go-w it"
        ));
    }
    Ok(())
}

/// Root, the agent's own user, and the packaged service user: the owners a
/// token file's folders (and the config's files) may have.
pub fn trusted_uids() -> Vec<u32> {
    let mut uids = vec![0, sys::current_uid()];
    uids.extend(sys::user_id(paths::DEFAULT_GROUP).ok().flatten());
    uids
}

/// Who may read a provider's token file. It must not widen the allow
/// lists: without them, the socket group (anyone who can reach the socket
/// may read the token anyway) or `file_group`; with them, `file_group` must
/// be one of the allowed groups and defaults to the first; allow lists
/// that name no group leave the file to root and the agent (0600).
fn file_readers(
    cx: &mut Cx,
    key: &str,
    file_group: Option<String>,
    access: &Option<Access>,
    socket_group: Option<u32>,
) -> crate::tokenfile::Readers {
    use crate::tokenfile::Readers;
    let gid = match file_group {
        None => None,
        Some(name) => match sys::group_id(&name) {
            Ok(Some(gid)) => Some(gid),
            Ok(None) => {
                cx.problem(key, format!("no group named {name:?}"));
                return Readers::Nobody;
            }
            Err(e) => {
                cx.problem(key, format!("looking up {name:?}: {e}"));
                return Readers::Nobody;
            }
        },
    };
    match (access, gid) {
        (None, Some(gid)) => Readers::Group(Some(gid)),
        (None, None) => Readers::Group(socket_group),
        (Some(a), Some(gid)) if a.gids.contains(&gid) => Readers::Group(Some(gid)),
        (Some(_), Some(_)) => {
            cx.problem(
                key,
                "must be one of the provider's allow_groups or allow_gids: \
                 the token file must not be readable by more than the socket serves",
            );
            Readers::Nobody
        }
        (Some(a), None) => a
            .gids
            .first()
            .map_or(Readers::Nobody, |gid| Readers::Group(Some(*gid))),
    }
}

/// A list item naming a user or group, resolved to its id.
fn by_name(
    lookup: fn(&str) -> std::io::Result<Option<u32>>,
    what: &'static str,
) -> impl Fn(&mut Cx, &str, Value) -> Option<u32> {
    move |cx: &mut Cx, path: &str, v: Value| match v {
        Value::String(name) => match lookup(&name) {
            Ok(Some(id)) => Some(id),
            Ok(None) => {
                cx.problem(path, format!("no {what} named {name:?}"));
                None
            }
            Err(e) => {
                cx.problem(path, format!("looking up {name:?}: {e}"));
                None
            }
        },
        _ => {
            cx.problem(path, format!("expected a {what} name"));
            None
        }
    }
}

fn parse_access(cx: &mut Cx, f: &mut Fields) -> Option<Access> {
    let keys = ["allow_uids", "allow_gids", "allow_users", "allow_groups"];
    if !keys.iter().any(|k| f.has(k)) {
        return None;
    }
    let int = |cx: &mut Cx, path: &str, v: Value| match v {
        Value::Integer(i) if (0..=i64::from(u32::MAX)).contains(&i) => Some(i as u32),
        _ => {
            cx.problem(path, "expected a numeric id");
            None
        }
    };
    let mut access = Access::default();
    access
        .uids
        .extend(f.list(cx, "allow_uids", int).unwrap_or_default());
    access
        .gids
        .extend(f.list(cx, "allow_gids", int).unwrap_or_default());
    access.uids.extend(
        f.list(cx, "allow_users", by_name(sys::user_id, "user"))
            .unwrap_or_default(),
    );
    access.gids.extend(
        f.list(cx, "allow_groups", by_name(sys::group_id, "group"))
            .unwrap_or_default(),
    );
    Some(access)
}

/// An absolute http(s) URL; plain http only to a loopback host, since the
/// request carries credentials.
fn check_url(s: &str) -> Result<(), String> {
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| format!("{s:?} is not an absolute URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = if host.starts_with('[') {
        host.split(']').next().map(|h| &h[1..]).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    if host.is_empty() {
        return Err(format!("{s:?} has no host"));
    }
    match scheme {
        "https" => Ok(()),
        "http" => {
            let loopback = host == "localhost"
                || host
                    .parse::<std::net::IpAddr>()
                    .map(|ip| ip.is_loopback())
                    .unwrap_or(false);
            if loopback {
                Ok(())
            } else {
                Err(format!(
                    "{s:?} would send credentials unencrypted; use https (plain http is allowed only to a loopback host)"
                ))
            }
        }
        _ => Err(format!("{s:?}: only http and https URLs are supported")),
    }
}

/// The kind named `name` with its keys read, or the problems reported.
fn parse_kind(
    cx: &mut Cx,
    f: &mut Fields,
    name: &str,
) -> Option<(
    &'static providers::Kind,
    std::sync::Arc<dyn providers::Provider>,
)> {
    let Some(kind) = providers::kind(name) else {
        let names: Vec<&str> = providers::KINDS.iter().map(|k| k.name).collect();
        cx.problem(
            &f.key("kind"),
            format!(
                "unknown kind {name:?}; expected one of {}",
                names.join(", ")
            ),
        );
        // The other keys cannot be judged; don't call them unknown.
        f.table.clear();
        return None;
    };
    let provider = (kind.parse)(&mut KindKeys { cx, f })?;
    Some((kind, provider))
}

/// A provider section's keys as a partner kind reads them
/// (`providers/<kind>.rs`): each read takes its key, a wrong value is
/// reported with its path and gives `None`, and keys no one reads are
/// reported as unknown afterwards.
pub struct KindKeys<'a, 'e> {
    cx: &'a mut Cx<'e>,
    f: &'a mut Fields,
}

impl KindKeys<'_, '_> {
    /// Reports a problem at `key` of this section.
    pub fn problem(&mut self, key: &str, message: impl Into<String>) {
        let path = self.f.key(key);
        self.cx.problem(&path, message);
    }

    pub fn string(&mut self, key: &str) -> Option<String> {
        self.f.string(self.cx, key)
    }

    pub fn required_string(&mut self, key: &str) -> Option<String> {
        self.f.required_string(self.cx, key)
    }

    /// A required id that partners may type as a string or a number
    /// (Autovit's `client_id` is a Number in its document); kept as text.
    pub fn required_id(&mut self, key: &str) -> Option<String> {
        match self.f.table.get(key) {
            Some(Value::Integer(n)) => {
                let n = *n;
                self.f.take(key);
                Some(n.to_string())
            }
            _ => self.required_string(key),
        }
    }

    pub fn secret(&mut self, key: &str) -> Option<Secret> {
        self.f.secret(self.cx, key)
    }

    pub fn required_secret(&mut self, key: &str) -> Option<Secret> {
        self.f.required_secret(self.cx, key)
    }

    /// A URL (see [`check_url`]); `default` when absent, required when
    /// there is no default.
    pub fn url(&mut self, key: &str, default: Option<&str>) -> Option<String> {
        let value = match default {
            Some(d) => self.string(key).or_else(|| Some(d.to_owned())),
            None => self.required_string(key),
        }?;
        match check_url(&value) {
            Ok(()) => Some(value),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    /// One of `options` by its name; `None` when absent or wrong (reported).
    pub fn choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        let value = self.string(key)?;
        match options.iter().find(|(name, _)| *name == value) {
            Some((_, t)) => Some(*t),
            None => {
                let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
                let expected = match names.split_last() {
                    Some((last, [])) => last.clone(),
                    Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                    None => String::new(),
                };
                self.problem(key, format!("expected {expected}, got {value:?}"));
                None
            }
        }
    }

    /// A required choice; when it is missing or wrong, the section's other
    /// keys depend on it and cannot be judged, so they are not reported as
    /// unknown (`grant_type = "pasword"` is one problem, not three).
    pub fn required_choice<T: Copy>(&mut self, key: &str, options: &[(&str, T)]) -> Option<T> {
        let chosen = if self.f.has(key) {
            self.choice(key, options)
        } else {
            self.problem(key, "is required");
            None
        };
        if chosen.is_none() {
            self.f.table.clear();
        }
        chosen
    }

    /// A table of strings (`extra = { audience = "…" }`), in key order.
    pub fn string_table(&mut self, key: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(t) = self.f.table(self.cx, key) {
            for (k, v) in t.table {
                match v {
                    Value::String(s) => out.push((k, s)),
                    other => self.cx.problem(
                        &join(&t.path, &k),
                        format!("expected a string, got {}", type_name(&other)),
                    ),
                }
            }
        }
        out
    }
}

/// The longest duration a setting takes: ten years.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 24 * 3600);

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Settings {
        parse(text, "test", None, false, &no_env).unwrap_or_else(|e| panic!("{e}"))
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "test", None, false, &no_env) {
            Ok(_) => panic!("config was accepted"),
            Err(e) => e
                .problems
                .iter()
                .map(|p| format!("{}: {}", p.path, p.message))
                .collect(),
        }
    }

    #[test]
    fn check_config_reads_credentials_where_the_unit_loads_them() {
        let root = std::env::temp_dir().join(format!("saa-cfg-unit-{}", crate::rand::hex(10)));
        let dropins = root.join("etc/systemd/system/shop-auth-agent.service.d");
        std::fs::create_dir_all(&dropins).unwrap();
        std::fs::create_dir_all(root.join("lib/systemd/system")).unwrap();
        std::fs::write(
            root.join("lib/systemd/system/shop-auth-agent.service"),
            "[Service]\nLoadCredential=ml:/old/path\n",
        )
        .unwrap();
        let secret = root.join("ml.secret");
        std::fs::write(&secret, "from-unit\n").unwrap();
        std::fs::write(
            dropins.join("50-x.conf"),
            format!(
                "[Service]\nLoadCredential=ml:{}\nLoadCredentialEncrypted=store-key:/etc/credstore.encrypted/k\n",
                secret.display()
            ),
        )
        .unwrap();
        let sources = unit_credentials(&root);
        assert_eq!(sources.len(), 2, "{sources:?}");
        assert!(sources.contains(&("ml".into(), secret.clone(), false)));
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            "[agent]\nstore_key = { credential = \"store-key\" }\n\
             [providers.a]\nkind = \"makeleaps\"\nclient_id = \"c\"\nclient_secret = { credential = \"ml\" }\n\
             [providers.b]\nkind = \"carrental\"\nurl = \"https://x/a\"\nusername = \"u\"\npassword = { credential = \"nowhere\" }\n",
        )
        .unwrap();
        let (s, notes) = load_with(&config, &no_env, Some(sources)).unwrap();
        assert_eq!(
            s.providers[0].partner.provider().secrets()[0].expose(),
            "from-unit"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(
            notes[0].contains("store-key: resolved by systemd at start (LoadCredentialEncrypted")
        );
        assert!(notes[1].contains("nowhere") && notes[1].contains("names no LoadCredential"));
        // Run as the service would, without $CREDENTIALS_DIRECTORY: refused.
        assert!(load(&config, &no_env).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_wrong_grant_type_is_one_problem() {
        let p = problems(
            "[providers.a]\nkind = \"autovit\"\nclient_id = 1\nclient_secret = \"s\"\ngrant_type = \"pasword\"\nusername = \"u\"\npassword = \"p\"\n",
        );
        assert_eq!(
            p,
            vec![
                "providers.a.grant_type: expected \"password\" or \"partner\", got \"pasword\""
                    .to_owned()
            ]
        );
    }

    #[test]
    fn an_unknown_key_names_the_key_it_may_mean() {
        let p = problems(
            "[agent]\nsocket_mod = \"0600\"\n[providers.a]\nkind = \"carrental\"\nurl = \"https://x/a\"\nusername = \"u\"\npasword = \"p\"\ncolour = \"blue\"\n",
        );
        assert!(
            p.contains(&"agent.socket_mod: unknown key; did you mean socket_mode?".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(&"providers.a.pasword: unknown key; did you mean password?".to_owned()),
            "{p:?}"
        );
        assert!(
            p.contains(&"providers.a.colour: unknown key".to_owned()),
            "{p:?}"
        );
    }

    #[test]
    fn files_others_can_write_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("saa-cfg-w-{}", crate::rand::hex(10)));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("config.toml");
        let secret = dir.join("key");
        std::fs::write(&secret, "k").unwrap();
        std::fs::write(
            &config,
            "[providers.a]\nkind = \"autoleap\"\npartner_id = \"P\"\nauth_key = { file = \"key\" }\n",
        )
        .unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        chmod(&secret, 0o640);
        for mode in [0o600, 0o640, 0o644] {
            chmod(&config, mode);
            load(&config, &no_env).unwrap_or_else(|e| panic!("{mode:o}: {e}"));
        }
        for mode in [0o662, 0o620, 0o666] {
            chmod(&config, mode);
            let e = load(&config, &no_env).unwrap_err().to_string();
            assert!(e.contains("writable by group or others"), "{mode:o}: {e}");
        }
        chmod(&config, 0o600);
        chmod(&secret, 0o660);
        let e = load(&config, &no_env).unwrap_err();
        assert_eq!(e.problems[0].path, "providers.a.auth_key", "{e}");
        assert!(e.to_string().contains("writable by group or others"), "{e}");
        chmod(&secret, 0o600);
        // Owned by a POS user: refused, for the config and for a secret.
        if sys::current_uid() == 0 {
            std::os::unix::fs::chown(&secret, Some(4242), None).unwrap();
            let e = load(&config, &no_env).unwrap_err().to_string();
            assert!(e.contains("owned by uid 4242"), "{e}");
            std::os::unix::fs::chown(&config, Some(4242), None).unwrap();
            let e = load(&config, &no_env).unwrap_err().to_string();
            assert!(e.contains("owned by uid 4242"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_files_are_never_readable_by_more_than_the_allow_lists() {
        use crate::tokenfile::Readers;
        let readers = |extra: &str| {
            let text = format!(
                "[providers.a]\nkind = \"carrental\"\nurl = \"https://x/a\"\nusername = \"u\"\npassword = \"p\"\n{extra}"
            );
            parse(&text, "test", None, false, &no_env).map(|s| s.providers[0].file_readers)
        };
        let socket_group = sys::group_id(paths::DEFAULT_GROUP).ok().flatten();
        assert_eq!(readers("").unwrap(), Readers::Group(socket_group));
        assert_eq!(
            readers("file_group = \"root\"").unwrap(),
            Readers::Group(Some(0))
        );
        assert_eq!(
            readers("allow_gids = [5, 0]").unwrap(),
            Readers::Group(Some(5))
        );
        assert_eq!(
            readers("allow_gids = [5, 0]\nfile_group = \"root\"").unwrap(),
            Readers::Group(Some(0))
        );
        assert_eq!(readers("allow_uids = [1000]").unwrap(), Readers::Nobody);
        let e = readers("allow_gids = [5]\nfile_group = \"root\"").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].path, "providers.a.file_group");
        assert!(e.problems[0].message.contains("allow_groups"), "{e}");
        let e = readers("file_group = \"no-such-group-here\"").unwrap_err();
        assert!(e.to_string().contains("no group named"), "{e}");
    }

    #[test]
    fn a_toml_syntax_error_does_not_quote_the_line() {
        // A password with a stray backslash: an invalid escape.
        let p = problems("[providers.x]\nkind = \"carrental\"\npassword = \"Tr0ub4dor\\&3\"\n");
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("not valid TOML"), "{p:?}");
        assert!(p[0].contains("line 3"), "{p:?}");
        assert!(!p[0].contains("Tr0ub4dor"), "{p:?}");
    }

    #[test]
    fn absurd_durations_are_refused() {
        let p = problems(
            "[defaults]\ntimeout = \"9223372036854775808s\"\ntoken_lifetime = \"3651d\"\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|p| p.contains("too long")), "{p:?}");
        parse_ok("[defaults]\ntoken_lifetime = \"3650d\"\n");
    }

    #[test]
    fn makeleaps_tokens_are_not_persisted_unless_asked() {
        let ml = "kind = \"makeleaps\"\nclient_id = \"a\"\nclient_secret = \"b\"\n";
        let cr = "kind = \"carrental\"\nurl = \"https://x.invalid/t\"\nusername = \"u\"\npassword = \"p\"\n";
        let persist = |text: &str| {
            parse_ok(text)
                .providers
                .iter()
                .map(|p| (p.name.clone(), p.persist))
                .collect::<Vec<_>>()
        };
        let base = format!("[providers.ml]\n{ml}\n[providers.cr]\n{cr}");
        assert_eq!(
            persist(&base),
            [("cr".to_owned(), true), ("ml".to_owned(), false)]
        );
        let asked = format!("[providers.ml]\n{ml}persist = true\n[providers.cr]\n{cr}");
        assert_eq!(persist(&asked)[1], ("ml".to_owned(), true));
        let by_default = format!("[defaults]\npersist = true\n\n{base}");
        assert_eq!(persist(&by_default)[1], ("ml".to_owned(), true));
        let none = format!("[defaults]\npersist = false\n\n{base}");
        assert_eq!(persist(&none)[0], ("cr".to_owned(), false));
    }

    #[test]
    fn empty_config_runs_with_defaults() {
        let s = parse_ok("");
        assert!(s.providers.is_empty());
        assert_eq!(s.agent.socket, PathBuf::from(paths::DEFAULT_SOCKET));
        assert_eq!(s.agent.socket_mode, 0o660);
    }

    #[test]
    fn metrics_file_is_off_by_default_and_must_be_a_prom_file() {
        assert_eq!(parse_ok("").agent.metrics_file, None);
        let s = parse_ok("[agent]\nmetrics_file = \"/var/lib/prometheus/node-exporter/a.prom\"\n");
        assert_eq!(
            s.agent.metrics_file.as_deref(),
            Some(Path::new("/var/lib/prometheus/node-exporter/a.prom"))
        );
        let base = Path::new("/etc/shop-auth-agent");
        let s = parse(
            "[agent]\nmetrics_file = \"m/a.prom\"\n",
            "t",
            Some(base),
            false,
            &no_env,
        );
        assert_eq!(
            s.unwrap().agent.metrics_file.as_deref(),
            Some(Path::new("/etc/shop-auth-agent/m/a.prom"))
        );
        for bad in ["/x/metrics.txt", "/x/.prom", "/x/a.prom/", "\"\""] {
            let value = if bad.starts_with('"') {
                bad.to_owned()
            } else {
                format!("{bad:?}")
            };
            let p = problems(&format!("[agent]\nmetrics_file = {value}\n"));
            assert!(p[0].starts_with("agent.metrics_file: "), "{bad}: {p:?}");
        }
    }

    #[test]
    fn providers_take_defaults_and_overrides() {
        let s = parse_ok(
            r#"
            [agent]
            socket = "/tmp/x.sock"
            socket_mode = "0600"
            [defaults]
            timeout = "5s"
            [providers.b]
            kind = "makeleaps"
            client_id = "abc"
            client_secret = "s"
            timeout = "7s"
            [providers.a]
            kind = "carrental"
            url = "https://example.com/authtoken"
            username = "u"
            password = "p"
            allow_uids = [1000]
            "#,
        );
        assert_eq!(s.agent.socket_mode, 0o600);
        assert_eq!(s.providers[0].name, "a");
        assert_eq!(s.providers[0].timeout, Duration::from_secs(5));
        assert_eq!(s.providers[1].timeout, Duration::from_secs(7));
        assert_eq!(s.providers[1].refresh_before, DEFAULT_REFRESH_BEFORE);
        assert_eq!(
            s.providers[0].access,
            Some(Access {
                uids: vec![1000],
                gids: vec![]
            })
        );
        assert!(s.providers[1].access.is_none());
        assert_eq!(s.providers[1].partner.kind(), "makeleaps");
        assert_eq!(
            s.providers[1].identity(),
            "makeleaps https://api.makeleaps.com/user/oauth2/token/ abc"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let p = problems(
            r#"
            [agent]
            colour = "blue"
            [defaults]
            timeout = "soon"
            [providers.x]
            kind = "autovit"
            client_id = "1"
            grant_type = "password"
            username = "u"
            client_auth = "header"
            [providers.Bad]
            kind = "nope"
            [providers.y]
            kind = "oauth2"
            token_url = "http://example.com/token"
            client_id = "c"
            grant_type = "client_credentials"
            extra = { a = 1 }
            "#,
        );
        let expect = [
            "agent.colour: unknown key",
            "defaults.timeout: expected a duration",
            "providers.x.client_secret: is required",
            "providers.x.password: is required",
            "providers.x.client_auth: expected \"basic\" or \"body\"",
            "providers.Bad: provider names are",
            "providers.Bad.kind: unknown kind",
            "providers.y.token_url: \"http://example.com/token\" would send credentials unencrypted",
            "providers.y.extra.a: expected a string",
        ];
        for e in expect {
            assert!(
                p.iter().any(|l| l.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn inline_secret_in_world_readable_config_is_refused() {
        let text = r#"
            [providers.m]
            kind = "makeleaps"
            client_id = "abc"
            client_secret = "hunter2"
        "#;
        let e = parse(text, "test", None, true, &no_env).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].path, "providers.m.client_secret");
        assert!(!e.to_string().contains("hunter2"));
    }

    #[test]
    fn store_key_from_any_secret_source_or_the_units_credential() {
        use crate::store::{Protection, StoreKey};
        let dir = std::env::temp_dir().join(format!("saa-cfg-{}", crate::rand::hex(8)));
        std::fs::create_dir_all(dir.join("creds")).unwrap();
        let hex = "abcd".repeat(16);
        let pair =
            |a: u8, b: u8| -> [u8; 32] { std::array::from_fn(|i| if i % 2 == 0 { a } else { b }) };
        std::fs::write(
            dir.join("key"),
            format!("{}\n", crate::base64::encode(&pair(7, 8))),
        )
        .unwrap();
        std::fs::write(dir.join("creds/store-key"), format!("{hex}\n")).unwrap();
        let creds = dir.join("creds").display().to_string();
        let with_creds = move |k: &str| match k {
            "KEY" => Some("abcd".repeat(16)),
            "BAD" => Some("hunter2hunter2".to_owned()),
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            _ => None,
        };
        let store =
            |text: &str, env: Env| parse(text, "t", Some(&dir), false, env).map(|s| s.agent.store);
        let sealed = |key: [u8; 32]| Protection {
            key: Some(StoreKey::from_bytes(key)),
            keep_refresh: true,
        };
        assert_eq!(store("", &no_env).unwrap(), Protection::default());
        assert_eq!(store("", &with_creds).unwrap(), sealed(pair(0xab, 0xcd)));
        let file = "[agent]\nstore_key = { file = \"key\" }\n";
        assert_eq!(store(file, &with_creds).unwrap(), sealed(pair(7, 8)));
        let env = "[agent]\nstore_key = { env = \"KEY\" }\npersist_refresh_tokens = false\n";
        assert_eq!(
            store(env, &no_env).unwrap_err().problems[0].path,
            "agent.store_key"
        );
        let mut no_refresh = sealed(pair(0xab, 0xcd));
        no_refresh.keep_refresh = false;
        assert_eq!(store(env, &with_creds).unwrap(), no_refresh);
        let asked = "[agent]\npersist_refresh_tokens = true\n";
        assert!(store(asked, &no_env).unwrap().keep_refresh);
        let bad = "[agent]\nstore_key = { env = \"BAD\" }\n";
        let e = store(bad, &with_creds).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].path, "agent.store_key");
        assert!(e.problems[0].message.contains("32 bytes"));
        assert!(!e.to_string().contains("hunter2"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secrets_from_file_env_and_credential() {
        let dir = std::env::temp_dir().join(format!("saa-cfg-{}", crate::rand::hex(8)));
        std::fs::create_dir_all(dir.join("creds")).unwrap();
        std::fs::write(dir.join("key"), "from-file\n\n").unwrap();
        std::fs::write(dir.join("creds/ml"), "from-cred\n").unwrap();
        let creds = dir.join("creds").display().to_string();
        let env = move |k: &str| match k {
            "PASS" => Some("from-env".to_owned()),
            "CREDENTIALS_DIRECTORY" => Some(creds.clone()),
            _ => None,
        };
        let text = r#"
            [providers.a]
            kind = "autoleap"
            partner_id = "P"
            auth_key = { file = "key" }
            [providers.c]
            kind = "carrental"
            url = "https://x/authtoken"
            username = "u"
            password = { env = "PASS" }
            [providers.m]
            kind = "makeleaps"
            client_id = "abc"
            client_secret = { credential = "ml" }
        "#;
        // World-readable is fine: no secret is inline.
        let s = parse(text, "test", Some(&dir), true, &env).unwrap();
        let secret = |i: usize| {
            s.providers[i].partner.provider().secrets()[0]
                .expose()
                .to_owned()
        };
        // One trailing newline trimmed, nothing else.
        assert_eq!(secret(0), "from-file\n");
        assert_eq!(secret(1), "from-env");
        assert_eq!(secret(2), "from-cred");
        let e = parse(
            "[providers.a]\nkind = \"autoleap\"\npartner_id = \"P\"\nauth_key = { file = \"missing\" }\n",
            "test",
            Some(&dir),
            false,
            &env,
        )
        .unwrap_err();
        assert!(e.problems[0].message.contains("not readable"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unknown_group_or_user_is_a_config_error() {
        let p = problems(
            r#"
            [agent]
            socket_group = "no-such-group-xq"
            [providers.m]
            kind = "makeleaps"
            client_id = "abc"
            client_secret = "s"
            allow_users = ["no-such-user-xq"]
            allow_groups = ["root"]
            "#,
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("agent.socket_group: no group"));
        assert!(p[1].starts_with("providers.m.allow_users[0]: no user"));
    }

    #[test]
    fn access_rule() {
        let a = Access {
            uids: vec![1000],
            gids: vec![50],
        };
        let peer = |uid, gid, groups: Vec<u32>| sys::Peer {
            pid: 1,
            uid,
            gid,
            groups,
        };
        assert!(a.allows(&peer(0, 0, vec![])));
        assert!(a.allows(&peer(1000, 1, vec![])));
        assert!(a.allows(&peer(7, 50, vec![])));
        assert!(a.allows(&peer(7, 7, vec![3, 50])));
        assert!(!a.allows(&peer(7, 7, vec![3])));
    }

    #[test]
    fn names_and_urls() {
        assert!(valid_name("pos_1-a"));
        assert!(!valid_name(""));
        assert!(!valid_name("A"));
        assert!(!valid_name(&"a".repeat(65)));
        assert!(check_url("https://x.example/v2/").is_ok());
        assert!(check_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_url("http://[::1]:8080/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://example.com/x").is_err());
        assert!(check_url("ftp://example.com/x").is_err());
        assert!(check_url("example.com").is_err());
    }
}
