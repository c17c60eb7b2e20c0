//! The command line: parsing arguments, running a command, and the sysexits
//! exit code it ends with. `--config` and `--socket` may stand before or
//! after the subcommand.

use crate::agent::{Agent, StartError};
use crate::client::{Client, ClientError};
use crate::config;
use crate::paths;
use crate::timefmt::{now_unix, parse_timestamp};
use serde_json::Value;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// sysexits(3) codes, as README ("Command line") lists them.
pub mod exit {
    pub const OK: i32 = 0;
    pub const USAGE: i32 = 64;
    pub const UNAVAILABLE: i32 = 69;
    pub const SOFTWARE: i32 = 70;
    pub const OSERR: i32 = 71;
    pub const CANTCREAT: i32 = 73;
    pub const TEMPFAIL: i32 = 75;
    pub const NOPERM: i32 = 77;
    pub const CONFIG: i32 = 78;
}

pub const USAGE: &str = "\
Usage: shop-auth-agent [--config PATH] [--socket PATH] COMMAND

Keeps partner API access tokens fresh and hands them to POS software
over a Unix socket.

Commands:
  run                  run the agent in the foreground (what systemd starts)
  dev                  run the agent on an embedded default with stand-in partners
  token NAME [--json]  print the current access token of provider NAME
  invalidate NAME [-] [--json]
                       the partner refused the token (401): print the next one;
                       with -, the refused token is read from stdin
  status [--json]      show every provider's state
  refresh NAME|--all   renew now
  logout NAME          revoke where the partner supports it, forget the tokens
  check-config         check the config and list every problem

Options:
  --config PATH   config file (default /etc/shop-auth-agent/config.toml,
                  or $SHOP_AUTH_AGENT_CONFIG)
  --socket PATH   agent socket for client commands (default: $SHOP_AUTH_AGENT_SOCKET,
                  then the config's [agent] socket, then /run/shop-auth-agent/agent.sock)
  -h, --help      this help
  -V, --version   the version

Exit codes: 0 ok, 64 usage, 69 agent unreachable, 75 no token now (try later),
77 permission denied or provider logged out, 78 configuration error or
credentials rejected by the partner.";

#[derive(Debug, Default, PartialEq, Eq)]
struct Args {
    config: Option<PathBuf>,
    socket: Option<PathBuf>,
    json: bool,
    all: bool,
    help: bool,
    version: bool,
    /// The command and its operands.
    words: Vec<String>,
}

/// Parses the arguments (after the program name). Paths may be any bytes;
/// the command and names must be UTF-8.
fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Args, String> {
    use lexopt::prelude::*;
    let mut out = Args::default();
    let mut parser = lexopt::Parser::from_args(args);
    let path = |v: Result<OsString, lexopt::Error>, name: &str| match v {
        Ok(v) if !v.is_empty() => Ok(PathBuf::from(v)),
        _ => Err(format!("{name} needs a path")),
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("config") => out.config = Some(path(parser.value(), "--config")?),
            Long("socket") => out.socket = Some(path(parser.value(), "--socket")?),
            Long("json") => out.json = true,
            Long("all") => out.all = true,
            Short('h') | Long("help") => out.help = true,
            Short('V') | Long("version") => out.version = true,
            Value(v) => out.words.push(
                v.into_string()
                    .map_err(|v| format!("not UTF-8: {}", v.to_string_lossy()))?,
            ),
            other => return Err(other.unexpected().to_string()),
        }
    }
    Ok(out)
}

/// Runs the command line (`args` without the program name); returns the
/// exit code.
pub fn main(program: &str, args: impl IntoIterator<Item = OsString>) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => return usage_error(&e),
    };
    if args.help {
        println!("{USAGE}");
        return exit::OK;
    }
    if args.version {
        println!("shop-auth-agent {}", env!("CARGO_PKG_VERSION"));
        return exit::OK;
    }
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    let command = words.first().copied().unwrap_or("");
    if args.json && !matches!(command, "token" | "invalidate" | "status" | "refresh") {
        return usage_error("--json goes with token, invalidate, status or refresh");
    }
    if args.all && command != "refresh" {
        return usage_error("--all goes with refresh");
    }
    match words.as_slice() {
        ["run"] => run(&args),
        ["dev"] => crate::dev::run(program),
        ["check-config"] => check_config(&args),
        ["token", name] => token(&args, name, &format!("TOKEN {name}")),
        ["invalidate", name] => token(&args, name, &format!("INVALIDATE {name}")),
        ["invalidate", name, "-"] => match refused_from_stdin() {
            Ok(refused) => token(&args, name, &format!("INVALIDATE {name} {refused}")),
            Err(message) => usage_error(&message),
        },
        ["invalidate", _, _] => usage_error(
            "invalidate takes the refused token on stdin, with -: \
             a token in the arguments is visible to every local user",
        ),
        ["status"] => status(&args),
        ["refresh"] if args.all => refresh_all(&args),
        ["refresh", name] if !args.all => refresh(&args, name),
        ["refresh", _] => usage_error("refresh takes a NAME or --all, not both"),
        ["refresh"] => usage_error("refresh needs a NAME or --all"),
        ["token" | "logout" | "invalidate"] => usage_error(&format!(
            "{command} needs a provider NAME (`shop-auth-agent status` lists them)"
        )),
        ["logout", name] => logout(&args, name),
        [] => usage_error("a command is needed"),
        [cmd, ..] => usage_error(&format!("unknown command or wrong arguments: {cmd}")),
    }
}

/// The mistake in one line, and where the usage is: the whole usage text
/// would bury the line that matters.
fn usage_error(message: &str) -> i32 {
    eprintln!("shop-auth-agent: {message}\n(`shop-auth-agent --help` shows the usage)");
    exit::USAGE
}

fn config_path(args: &Args) -> PathBuf {
    paths::config_path(args.config.clone(), &paths::process_env)
}

fn run(args: &Args) -> i32 {
    // Before the config, which resolves the secrets.
    if let Err(e) = crate::sys::harden_process() {
        log::error!("cannot make the process undumpable: {e}");
        return exit::OSERR;
    }
    let path = config_path(args);
    let settings = match config::load(&path, &paths::process_env) {
        Ok(s) => s,
        Err(e) => {
            log::error!("{e}");
            eprintln!("shop-auth-agent: {e}");
            return exit::CONFIG;
        }
    };
    let agent = match Agent::start(settings) {
        Ok(a) => a,
        Err(e) => {
            log::error!("cannot start: {e}");
            return match e {
                StartError::Config(_) => exit::CONFIG,
                StartError::Io(_) => exit::OSERR,
            };
        }
    };
    match agent.run_until_signal(|| config::load(&path, &paths::process_env)) {
        Ok(()) => exit::OK,
        Err(e) => {
            log::error!("{e}");
            exit::OSERR
        }
    }
}

fn check_config(args: &Args) -> i32 {
    let path = config_path(args);
    match config::load_for_check(&path, &paths::process_env) {
        Ok((s, notes)) => {
            let names: Vec<&str> = s.providers.iter().map(|p| p.name.as_str()).collect();
            println!(
                "{}: ok, {} provider{}{}{}",
                path.display(),
                names.len(),
                if names.len() == 1 { "" } else { "s" },
                if names.is_empty() { "" } else { ": " },
                names.join(", ")
            );
            for note in notes {
                println!("note: {note}");
            }
            for p in &s.providers {
                if let (Some(file), crate::tokenfile::Readers::Nobody) = (&p.file, p.file_readers) {
                    println!(
                        "note: providers.{}: the token file {} is readable by root and the agent only \
                         (its allow lists name no group; file_group can name one of them)",
                        p.name,
                        file.display()
                    );
                }
            }
            exit::OK
        }
        Err(e) => {
            eprintln!("{e}");
            exit::CONFIG
        }
    }
}

/// The socket a client command talks to: `--socket`, then
/// `$SHOP_AUTH_AGENT_SOCKET`, then the config's `[agent] socket` if the
/// config is readable, then the default.
fn socket_path(args: &Args) -> PathBuf {
    if let Some(s) = args
        .socket
        .clone()
        .or_else(|| paths::process_env(paths::SOCKET_ENV).map(PathBuf::from))
    {
        return s;
    }
    let from_config = std::fs::read_to_string(config_path(args))
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
        .and_then(|t| t.get("agent")?.get("socket")?.as_str().map(PathBuf::from));
    from_config.unwrap_or_else(|| PathBuf::from(paths::DEFAULT_SOCKET))
}

// Long enough for a REFRESH that renews and then logs in, each with a timeout.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

fn connect(args: &Args) -> Result<Client, i32> {
    Client::connect(&socket_path(args), CLIENT_TIMEOUT).map_err(client_failure)
}

fn client_failure(e: ClientError) -> i32 {
    eprintln!("shop-auth-agent: {e}");
    match e {
        ClientError::Unreachable(..) => exit::UNAVAILABLE,
        ClientError::PermissionDenied(_) => exit::NOPERM,
        ClientError::Io(_) => exit::UNAVAILABLE,
        ClientError::BadAnswer(_) => exit::SOFTWARE,
    }
}

fn ask(client: &mut Client, request: &str) -> Result<Value, i32> {
    client.ask(request).map_err(client_failure)
}

/// The exit code for an `ok:false` answer, after printing its message.
fn answer_failure(answer: &Value) -> i32 {
    let code = answer["error"].as_str().unwrap_or("internal");
    let message = answer["message"].as_str().unwrap_or("");
    match answer["retry_in"].as_u64() {
        Some(n) => eprintln!("shop-auth-agent: {code}: {message} (retry in {n}s)"),
        None => eprintln!("shop-auth-agent: {code}: {message}"),
    }
    match (code, answer["state"].as_str()) {
        ("unknown_provider" | "bad_request", _) => exit::USAGE,
        ("forbidden", _) => exit::NOPERM,
        // A person must act: fix the credentials in the config, or log the
        // provider back in. Retrying later would not help.
        ("no_token" | "refresh_failed", Some("rejected")) => exit::CONFIG,
        ("no_token" | "refresh_failed", Some("logged_out")) => exit::NOPERM,
        ("no_token" | "refresh_failed", _) => exit::TEMPFAIL,
        _ => exit::SOFTWARE,
    }
}

fn one_request(args: &Args, request: &str) -> Result<Value, i32> {
    let mut client = connect(args)?;
    let answer = ask(&mut client, request)?;
    if answer["ok"] == Value::Bool(true) {
        Ok(answer)
    } else {
        Err(answer_failure(&answer))
    }
}

/// The refused token, one line on stdin.
fn refused_from_stdin() -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    std::io::stdin()
        .take(crate::protocol::line_limit(b"INVALIDATE ") as u64)
        .read_to_string(&mut text)
        .map_err(|e| format!("reading the token from stdin: {e}"))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        return Err("stdin holds no token (one line expected)".to_owned());
    }
    Ok(token.to_owned())
}

/// `token`, and `invalidate` (whose answer is the same: the token to use).
fn token(args: &Args, name: &str, request: &str) -> i32 {
    // With --json a script reads stdout only: a failure to reach the agent
    // is a JSON error there too (the message is on stderr as ever).
    let failed = |code: i32| {
        if args.json {
            let error = match code {
                exit::UNAVAILABLE => "unreachable",
                exit::NOPERM => "permission_denied",
                _ => "bad_answer",
            };
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": error, "provider": name})
            );
        }
        code
    };
    let mut client = match connect(args) {
        Ok(c) => c,
        Err(code) => return failed(code),
    };
    let answer = match ask(&mut client, request) {
        Ok(a) => a,
        Err(code) => return failed(code),
    };
    if args.json {
        // The whole answer, failures too: a script reads the error there.
        println!("{answer}");
    }
    if answer["ok"] != Value::Bool(true) {
        return answer_failure(&answer);
    }
    if !args.json {
        println!("{}", answer["access_token"].as_str().unwrap_or(""));
    }
    exit::OK
}

fn refresh(args: &Args, name: &str) -> i32 {
    match one_request(args, &format!("REFRESH {name}")) {
        Ok(answer) => {
            if args.json {
                println!("{answer}");
            } else {
                println!(
                    "{name}: renewed, expires in {}",
                    human(answer["expires_in"].as_i64().unwrap_or(0))
                );
            }
            exit::OK
        }
        Err(code) => code,
    }
}

fn refresh_all(args: &Args) -> i32 {
    let mut client = match connect(args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let status = match ask(&mut client, "STATUS") {
        Ok(s) => s,
        Err(code) => return code,
    };
    let names: Vec<String> = status["providers"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .filter_map(|p| p["provider"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let mut failed = false;
    for name in names {
        match ask(&mut client, &format!("REFRESH {name}")) {
            Ok(a) if a["ok"] == Value::Bool(true) => println!(
                "{name}: renewed, expires in {}",
                human(a["expires_in"].as_i64().unwrap_or(0))
            ),
            Ok(a) => {
                failed = true;
                println!(
                    "{name}: failed: {}",
                    a["message"].as_str().unwrap_or("unknown error")
                );
            }
            Err(code) => return code,
        }
    }
    if failed {
        exit::TEMPFAIL
    } else {
        exit::OK
    }
}

fn logout(args: &Args, name: &str) -> i32 {
    match one_request(args, &format!("LOGOUT {name}")) {
        Ok(_) => {
            println!("{name}: logged out; `refresh {name}` logs in again");
            exit::OK
        }
        Err(code) => code,
    }
}

fn status(args: &Args) -> i32 {
    let answer = match one_request(args, "STATUS") {
        Ok(a) => a,
        Err(code) => return code,
    };
    if args.json {
        println!("{answer}");
    } else {
        print!("{}", status_table(&answer, now_unix()));
    }
    exit::OK
}

/// STATUS as a table for people.
pub fn status_table(answer: &Value, now: i64) -> String {
    let mut rows = vec![[
        "PROVIDER".to_owned(),
        "KIND".to_owned(),
        "STATE".to_owned(),
        "EXPIRES IN".to_owned(),
        "LAST REFRESH".to_owned(),
        "LAST ERROR".to_owned(),
    ]];
    let text = |v: &Value| v.as_str().unwrap_or("-").to_owned();
    for p in answer["providers"].as_array().into_iter().flatten() {
        let expires_in = p["expires_at"]
            .as_str()
            .and_then(parse_timestamp)
            .map(|t| {
                if t > now {
                    human(t - now)
                } else {
                    "expired".to_owned()
                }
            })
            .unwrap_or_else(|| "-".to_owned());
        let mut error = text(&p["last_error"]);
        if let Some(n) = p["failures"].as_u64().filter(|&n| n > 0) {
            error = format!("{error} ({n} failure{})", if n == 1 { "" } else { "s" });
        }
        rows.push([
            text(&p["provider"]),
            text(&p["kind"]),
            text(&p["state"]),
            expires_in,
            text(&p["last_refresh"]),
            error,
        ]);
    }
    let mut widths = [0usize; 6];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    if rows.len() == 1 {
        out.push_str("(no providers configured)\n");
    }
    for (key, what) in [
        ("config_error", "config reload refused"),
        ("store_error", "store"),
        ("clock", "clock"),
    ] {
        if let Some(e) = answer[key].as_str() {
            out.push_str(&format!("{what}: {e}\n"));
        }
    }
    out
}

/// "1h 02m", "4m 05s", "12s".
fn human(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {:02}s", s / 60, s % 60),
        _ => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Where a client looks for the agent; exposed for `dev` and tests.
pub fn default_socket_for(config: Option<&Path>) -> PathBuf {
    socket_path(&Args {
        config: config.map(Path::to_path_buf),
        ..Args::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn global_options_before_or_after_the_command() {
        let a = parse_args(words("--config /c.toml token x --socket=/s.sock --json")).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/c.toml")));
        assert_eq!(a.socket, Some(PathBuf::from("/s.sock")));
        assert!(a.json);
        assert_eq!(a.words, vec!["token", "x"]);
        assert!(parse_args(words("status --bogus")).is_err());
        assert!(parse_args(words("status --config")).is_err());
        assert!(parse_args(words("status --config=")).is_err());
    }

    #[test]
    fn non_utf8_paths_are_fine_and_other_non_utf8_is_a_usage_error() {
        use std::os::unix::ffi::OsStringExt;
        let odd = OsString::from_vec(b"/tmp/\xff.toml".to_vec());
        let a = parse_args([OsString::from("--config"), odd.clone(), "status".into()]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from(odd.clone())));
        assert!(parse_args([OsString::from("token"), odd]).is_err());
    }

    #[test]
    fn usage_errors_exit_64() {
        assert_eq!(main("x", words("frobnicate")), exit::USAGE);
        assert_eq!(main("x", words("token")), exit::USAGE);
        assert_eq!(main("x", words("refresh a --all")), exit::USAGE);
        assert_eq!(main("x", words("token a --all")), exit::USAGE);
        assert_eq!(main("x", words("logout a --json")), exit::USAGE);
        assert_eq!(main("x", words("status extra")), exit::USAGE);
        assert_eq!(main("x", words("")), exit::USAGE);
        assert_eq!(main("x", words("--help")), exit::OK);
        assert_eq!(main("x", words("status -V")), exit::OK);
    }

    #[test]
    fn status_table_lists_providers_without_tokens() {
        let answer = serde_json::json!({"ok": true, "providers": [
            {"provider": "invoices", "kind": "makeleaps", "state": "fresh",
             "expires_at": "1970-01-01T01:00:00Z", "last_refresh": "1970-01-01T00:00:00Z",
             "last_error": null, "failures": 0, "next_attempt": null},
            {"provider": "cars", "kind": "carrental", "state": "rejected",
             "expires_at": null, "last_refresh": null,
             "last_error": "rejected: HTTP 401", "failures": 3, "next_attempt": null}
        ]});
        let t = status_table(&answer, 0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("PROVIDER"));
        assert!(lines[1].contains("invoices") && lines[1].contains("1h 00m"));
        assert!(lines[2].contains("rejected: HTTP 401 (3 failures)"));
        assert_eq!(human(65), "1m 05s");
    }
}
