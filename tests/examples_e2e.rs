//! The client examples in `examples/clients/` (shell, Python, Node.js, Java,
//! Go, C#), each run by its own runtime against the real agent with the
//! stand-in partners and a loopback HTTP "API" made here. The API answers
//! 401 to the first token it sees and 200 to any other the stand-in issued,
//! so every example must go TOKEN → 401 → INVALIDATE → new TOKEN → 200.
//! Between that 401 and the INVALIDATE the agent is restarted: the
//! connection an example kept open is closed by the agent's side just as
//! the 60-s idle close does, so an example that does not reopen it fails
//! (the 60 s themselves are not waited for).
//!
//! An example whose runtime is not installed is skipped with the reason,
//! unless `SHOP_AUTH_AGENT_REQUIRE_EXAMPLES` is set (CI installs them all).

use crate::util::*;
use standins::{Kind, Standin};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PROVIDER: &str = "invoices";
const BODY: &str = "hello from the test API";
/// Room for a cold compile (javac in memory, go build) on a busy machine.
const EXAMPLE_DEADLINE: Duration = Duration::from_secs(180);

fn clients() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/clients")
}

/// The first of `programs` that is not on `$PATH`.
fn missing(programs: &[&str]) -> Option<String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    programs
        .iter()
        .find(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .map(|p| p.to_string())
}

/// Skips with the reason, unless `SHOP_AUTH_AGENT_REQUIRE_EXAMPLES` is set.
fn skip_or_fail(why: &str) {
    assert!(
        std::env::var_os("SHOP_AUTH_AGENT_REQUIRE_EXAMPLES").is_none(),
        "{why} (and SHOP_AUTH_AGENT_REQUIRE_EXAMPLES is set)"
    );
    println!("SKIP {why}");
}

/// What the test API saw: each request's token and the status it answered.
#[derive(Default)]
struct ApiLog(Mutex<Vec<(String, u16)>>);

/// One HTTP/1.1 request: answers 400 without `Authorization: Bearer …`, 401
/// to the first token seen (after `on_first` has run), 200 to another token
/// the stand-in issued, 403 to anything else; then closes.
fn serve(mut conn: TcpStream, partners: &Standin, log: &ApiLog, on_first: &dyn Fn()) {
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let token = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.trim().strip_prefix("Bearer "))
        .map(str::to_owned);
    let status = match token {
        None => 400,
        Some(ref t) => {
            let first = {
                let seen = log.0.lock().unwrap();
                seen.first().map(|(f, _)| f.clone())
            };
            if first.is_none() {
                on_first();
            }
            if first.is_none() || first.as_ref() == Some(t) {
                401
            } else if partners.issued().contains(t) {
                200
            } else {
                403
            }
        }
    };
    log.0
        .lock()
        .unwrap()
        .push((token.unwrap_or_default(), status));
    let body = if status == 200 { BODY } else { "no" };
    let _ = write!(
        conn,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // Close only after the client has: closing with its bytes unread
    // could reset the connection before it reads the answer.
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.read_to_end(&mut Vec::new());
}

/// Runs the example that `command` makes (given a temp dir for build
/// output; `Err` with the reason to skip) as `PROVIDER URL` against a fresh
/// agent, and checks that it went TOKEN → 401 → INVALIDATE → new TOKEN → 200
/// across a restart of the agent.
fn run_example(
    lang: &str,
    needs: &[&str],
    command: impl FnOnce(&TempDir) -> Result<Command, String>,
) {
    if emulated() {
        // The runtimes are the build machine's; the native run covers them.
        println!("SKIP example {lang}: the agent runs under emulation");
        return;
    }
    if let Some(program) = missing(needs) {
        skip_or_fail(&format!("example {lang}: `{program}` is not installed"));
        return;
    }
    let dir = TempDir::new(&format!("example-{lang}"));
    let mut cmd = match command(&dir) {
        Ok(cmd) => cmd,
        Err(why) => return skip_or_fail(&format!("example {lang}: {why}")),
    };
    let partners = standin();
    let section = partners
        .providers_toml()
        .split("\n\n")
        .find(|s| s.starts_with("[providers.makeleaps]"))
        .expect("a makeleaps section")
        .replace("[providers.makeleaps]", &format!("[providers.{PROVIDER}]"));
    write_config(&dir, &config_text(&dir, "", &section));
    let agent = Mutex::new(Agent::start(&dir));
    let first = agent.lock().unwrap().wait_token(PROVIDER)["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let socket = agent.lock().unwrap().socket.clone();
    let restart = || {
        let mut a = agent.lock().unwrap();
        a.signal(libc::SIGTERM);
        assert!(a.wait_exit().success());
        *a = Agent::start(&dir);
    };

    let log = ApiLog::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/partner/", listener.local_addr().unwrap());
    let stop = AtomicBool::new(false);
    let (out, err) = (dir.join("example.out"), dir.join("example.err"));
    let started = Instant::now();
    let status = std::thread::scope(|s| {
        s.spawn(|| {
            for conn in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let conn = conn.unwrap();
                s.spawn(|| serve(conn, &partners, &log, &restart));
            }
        });
        let mut child = cmd
            .args([PROVIDER, &url])
            .env("SHOP_AUTH_AGENT_SOCKET", &socket)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting the {lang} example: {e}"));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > EXAMPLE_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(listener.local_addr().unwrap());
        status
    });
    let elapsed = started.elapsed();
    let (out, err) = (
        std::fs::read_to_string(out).unwrap(),
        std::fs::read_to_string(err).unwrap(),
    );
    let status = status.unwrap_or_else(|| panic!("the {lang} example hung; stderr:\n{err}"));
    assert!(
        status.success(),
        "the {lang} example: {status}; stderr:\n{err}"
    );
    assert_eq!(
        out.trim(),
        BODY,
        "the {lang} example printed the API's answer"
    );

    let log = log.0.into_inner().unwrap();
    let statuses: Vec<u16> = log.iter().map(|(_, s)| *s).collect();
    assert_eq!(statuses, [401, 200], "the {lang} example's API calls");
    assert_eq!(log[0].0, first, "the first call used the token served");
    let second = &log[1].0;
    assert_ne!(second, &first);
    // One login at the start, one after the INVALIDATE (sent to the
    // restarted agent, so on a connection opened after the restart).
    assert_eq!(partners.count(Kind::MakeLeaps), 2, "partner requests");
    assert_eq!(partners.issued().last(), Some(second));
    let now = agent.lock().unwrap().ask(&format!("TOKEN {PROVIDER}"));
    assert_eq!(
        now["access_token"],
        second.as_str(),
        "the agent serves the new token"
    );
    for t in [&first, second] {
        assert!(
            !out.contains(t.as_str()) && !err.contains(t.as_str()),
            "a token printed"
        );
    }
    println!("example {lang}: ok in {:.1}s", elapsed.as_secs_f64());
}

#[test]
fn example_shell() {
    run_example("shell", &["sh", "curl"], |_| {
        let mut c = Command::new("sh");
        c.arg(clients().join("client.sh"));
        // The agent's own CLI, as `shop-auth-agent` on PATH.
        let bin_dir = Path::new(BIN).parent().unwrap();
        let path = std::env::var_os("PATH").unwrap_or_default();
        let path = std::env::join_paths(
            std::iter::once(bin_dir.to_owned()).chain(std::env::split_paths(&path)),
        )
        .unwrap();
        c.env("PATH", path);
        Ok(c)
    });
}

#[test]
fn example_python() {
    run_example("python", &["python3"], |_| {
        let mut c = Command::new("python3");
        c.arg(clients().join("client.py"));
        Ok(c)
    });
}

#[test]
fn example_node() {
    run_example("node", &["node"], |_| {
        let mut c = Command::new("node");
        c.arg(clients().join("client.js"));
        Ok(c)
    });
}

#[test]
fn example_java() {
    // javac: a JDK, whose compiler `java` uses to run a source file as is.
    run_example("java", &["java", "javac"], |_| {
        let mut c = Command::new("java");
        c.arg(clients().join("Client.java"));
        Ok(c)
    });
}

#[test]
fn example_go() {
    run_example("go", &["go"], |dir| {
        let mut c = Command::new("go");
        c.arg("run")
            .arg(clients().join("client.go"))
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"));
        Ok(c)
    });
}

/// C# on Mono (Debian's `mono-mcs`): Debian 12 has no .NET SDK.
#[test]
fn example_csharp() {
    run_example("csharp", &["mcs", "mono"], |dir| {
        let mono_lib = Path::new("/usr/lib/mono/4.5");
        if !mono_lib.join("System.Net.Http.dll").exists() {
            return Err(format!("no System.Net.Http.dll in {}", mono_lib.display()));
        }
        let exe = dir.join("Client.exe");
        let out = Command::new("mcs")
            .args(["-nologo", "-warnaserror+", "-r:System.Net.Http"])
            .arg(format!("-out:{}", exe.display()))
            .arg(clients().join("Client.cs"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mcs Client.cs: {}{}",
            stdout(&out),
            stderr(&out)
        );
        let mut c = Command::new("mono");
        c.arg(exe);
        Ok(c)
    });
}
