//! The Unix socket server: binds the socket (removing a stale one, applying
//! mode and group), accepts on a thread named `socket`, and answers each
//! connection on its own thread, up to a cap. Reads are capped at one
//! request line (1024 bytes); idle connections close after 60 s.

use crate::config::AgentSettings;
use crate::protocol::{self, ErrorCode, Request, MAX_LINE};
use crate::scheduler::{Scheduler, TokenError, TOKEN_WAIT};
use crate::sys::{self, Peer};
use crate::timefmt::now_unix;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Connections served at once; more are answered `internal` and closed.
pub const MAX_CONNECTIONS: usize = 256;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the agent's socket. A stale socket file is removed; a socket that
/// still answers means another agent runs there, and is an error.
pub fn bind(agent: &AgentSettings) -> io::Result<UnixListener> {
    let path = &agent.socket;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new().recursive(true).create(dir)?;
        }
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("another agent is listening on {}", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(agent.socket_mode))?;
    if let Some(gid) = agent.socket_group {
        crate::sys::set_group(path, gid)?;
    }
    Ok(listener)
}

/// The running server; [`Server::stop`] stops accepting and removes the socket.
pub struct Server {
    path: PathBuf,
    stopping: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(
        listener: UnixListener,
        path: &Path,
        scheduler: Arc<Scheduler>,
    ) -> io::Result<Server> {
        let stopping = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&stopping);
        let thread = thread::Builder::new()
            .name("socket".into())
            .stack_size(256 * 1024)
            .spawn(move || accept_loop(listener, scheduler, stop))?;
        Ok(Server {
            path: path.to_owned(),
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept() with a connection of our own.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                log::warn!("removing {}: {e}", self.path.display());
            }
        }
    }
}

fn accept_loop(listener: UnixListener, scheduler: Arc<Scheduler>, stopping: Arc<AtomicBool>) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut full_logged = false;
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("socket: accept failed: {e}");
                // E.g. out of file descriptors: don't spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if open.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            if !full_logged {
                log::warn!("socket: {MAX_CONNECTIONS} connections open; refusing new ones");
                full_logged = true;
            }
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let line = protocol::error(ErrorCode::Internal, "too many connections", Some(1));
            let _ = stream.write_all(format!("{line}\n").as_bytes());
            continue;
        }
        full_logged = false;
        open.fetch_add(1, Ordering::SeqCst);
        let (sched, count) = (Arc::clone(&scheduler), Arc::clone(&open));
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                serve(stream, &sched);
                count.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst);
            log::warn!("socket: cannot start a connection thread: {e}");
        }
    }
}

/// Answers one connection's requests until it closes, idles or misbehaves.
fn serve(mut stream: UnixStream, scheduler: &Scheduler) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    let peer = sys::peer(&stream).ok();
    let mut buf = [0u8; MAX_LINE];
    let mut len = 0;
    loop {
        if let Some(pos) = buf[..len].iter().position(|&b| b == b'\n') {
            let mut answer = respond(&buf[..pos], peer.as_ref(), scheduler);
            answer.push('\n');
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
            buf.copy_within(pos + 1..len, 0);
            len -= pos + 1;
            continue;
        }
        if len == buf.len() {
            let line = protocol::error(
                ErrorCode::BadRequest,
                "request line longer than 1024 bytes; closing",
                None,
            );
            let _ = stream.write_all(format!("{line}\n").as_bytes());
            return;
        }
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
    }
}

/// The answer line (without newline) to one request line.
pub fn respond(line: &[u8], peer: Option<&Peer>, scheduler: &Scheduler) -> String {
    let request = match protocol::parse(line) {
        Ok(r) => r,
        Err(message) => return protocol::error(ErrorCode::BadRequest, &message, None),
    };
    if let Some(name) = request.provider() {
        match scheduler.access(name) {
            None => return unknown(name),
            Some(Some(access)) if !peer.is_some_and(|p| access.allows(p)) => {
                return protocol::error(
                    ErrorCode::Forbidden,
                    &format!("not allowed to use provider {name}"),
                    None,
                )
            }
            Some(_) => {}
        }
    }
    match request {
        Request::Ping => protocol::ping(),
        Request::Status => scheduler.status(),
        Request::Token(name) => token_answer(&name, scheduler.token(&name, TOKEN_WAIT)),
        Request::Refresh(name) => token_answer(&name, scheduler.renew(&name, false)),
        Request::Invalidate(name) => token_answer(&name, scheduler.renew(&name, true)),
        Request::Logout(name) => match scheduler.logout(&name) {
            Ok(()) => protocol::logged_out(&name),
            Err(e) => token_error(&name, e),
        },
    }
}

fn unknown(name: &str) -> String {
    protocol::error(
        ErrorCode::UnknownProvider,
        &format!("no provider named {name}"),
        None,
    )
}

fn token_answer(name: &str, result: Result<crate::scheduler::Served, TokenError>) -> String {
    match result {
        Ok((token, state)) => protocol::token(name, &token, state, now_unix()),
        Err(e) => token_error(name, e),
    }
}

fn token_error(name: &str, e: TokenError) -> String {
    match e {
        TokenError::UnknownProvider => unknown(name),
        TokenError::NoToken { retry_in } => protocol::error(
            ErrorCode::NoToken,
            &format!("no valid token for {name} now"),
            retry_in,
        ),
        TokenError::RefreshFailed { message, retry_in } => {
            protocol::error(ErrorCode::RefreshFailed, &message, retry_in)
        }
    }
}
