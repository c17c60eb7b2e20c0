//! The Unix socket server: binds the socket (removing a stale one, applying
//! mode and group), accepts on a thread named `socket`, and answers each
//! connection on its own thread, up to a cap (at the cap, the connection
//! idle longest is closed for the new one). Reads are capped at one request
//! line (1024 bytes); idle connections close after 60 s, and a client that
//! does not read its answers after 10 s.

use crate::config::AgentSettings;
use crate::lifecycle::Event;
use crate::protocol::{self, ErrorCode, Request, TokenAnswers, MAX_INVALIDATE_LINE, MAX_LINE};
use crate::scheduler::{Scheduler, Served, TokenError, TOKEN_WAIT};
use crate::secret::Secret;
use crate::sys::{self, Peer};
use crate::timefmt::now_unix;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Connections served at once. A new one beyond it closes the connection
/// that has waited longest for a request; when all are busy it is answered
/// `internal` and closed.
pub const MAX_CONNECTIONS: usize = 256;
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not read its answers loses its connection after a
/// write has blocked this long (its slot is freed for others).
const WRITE_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of answers a connection may have unread (see `serve`).
const SEND_BUFFER: usize = 8 * 1024;

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
    /// Device and inode of the socket file we bound, so that stopping never
    /// removes a socket that has since been replaced by someone else's.
    file_id: Option<(u64, u64)>,
    stopping: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// How long [`Server::stop`] waits for the accept thread to notice.
const STOP_WAIT: Duration = Duration::from_secs(2);

fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
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
            file_id: file_id(path),
            stopping,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept() with a connection of our own. It reaches
        // us only while our socket file is still in place: if it was removed
        // (or replaced), the accept thread sleeps on and is left behind
        // rather than joined, so that stopping never hangs.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let deadline = Instant::now() + STOP_WAIT;
            while !t.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                log::warn!(
                    "socket: {} was removed or replaced; stopping without waiting for \
                     the accept thread",
                    self.path.display()
                );
            }
        }
        if self.file_id.is_some() && file_id(&self.path) == self.file_id {
            if let Err(e) = std::fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    log::warn!("removing {}: {e}", self.path.display());
                }
            }
        }
    }
}

/// At most one log line per this period for a problem that repeats with
/// every connection (cap reached, accept failing).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Lets a repeating warning through at most once per [`LOG_EVERY`],
/// counting the ones held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    held_back: u64,
}

impl Throttle {
    /// `Some(n)` when a line should be logged now, `n` being how many were
    /// held back since the last one.
    fn check(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(t) if now.saturating_duration_since(t) < LOG_EVERY => {
                self.held_back += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held_back))
            }
        }
    }
}

fn held_back(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" ({n} more since the last such line)")
    }
}

/// The open connections. At the cap, the one that has waited longest for
/// its next request is closed to make room: idle clients (or ones that
/// trickle a byte now and then) cannot lock the others out. Each uid may
/// hold at most `max_connections_per_uid`; beyond that, and at the overall
/// cap, the room comes from the uid holding the most, so that one POS user
/// cannot lock out another.
#[derive(Default)]
struct Conns {
    next_id: u64,
    /// Every connection whose thread still runs (closed ones until their
    /// thread notices): its length is the count checked against the cap.
    list: Vec<Conn>,
}

struct Conn {
    id: u64,
    /// The client's uid (`None` when the kernel could not say).
    uid: Option<u32>,
    /// A handle to shut the connection down with.
    stream: UnixStream,
    waiting: Arc<AtomicU64>,
}

impl Conns {
    /// Open connections of `uid` (closed ones whose thread has not ended
    /// yet are not counted).
    fn count(&self, uid: Option<u32>) -> usize {
        self.list
            .iter()
            .filter(|c| c.uid == uid && !c.closed())
            .count()
    }

    /// Makes room for a connection from `uid`: when that uid is at its own
    /// cap, by closing one of its connections; when everything is at the
    /// overall cap, one of the uid holding the most. The one closed has
    /// waited longest for a request; failing that (all busy), any of that
    /// uid's: a client that does not read its answers holds a busy one.
    /// `Ok(Some(why))` when one was closed, `Err` when none could be.
    fn make_room(&mut self, uid: Option<u32>, per_uid: usize) -> Result<Option<&'static str>, ()> {
        let from = if self.count(uid) >= per_uid {
            uid
        } else if self.list.iter().filter(|c| !c.closed()).count() >= MAX_CONNECTIONS {
            let mut holders: Vec<Option<u32>> = self.list.iter().map(|c| c.uid).collect();
            holders.sort();
            holders.dedup();
            let top = holders.into_iter().max_by_key(|u| self.count(*u));
            match top {
                Some(top) => top,
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        let theirs = || self.list.iter().filter(|c| c.uid == from && !c.closed());
        let victim = theirs()
            .filter(|c| c.waiting.load(Ordering::SeqCst) != BUSY)
            .min_by_key(|c| c.waiting.load(Ordering::SeqCst))
            .or_else(|| theirs().next());
        match victim {
            Some(c) => {
                // Its thread's read (or blocked write) fails; the thread ends.
                let _ = c.stream.shutdown(std::net::Shutdown::Both);
                c.waiting.store(CLOSED, Ordering::SeqCst);
                Ok(Some(if from == uid {
                    "one user's connections reached max_connections_per_uid"
                } else {
                    "all connections are in use"
                }))
            }
            None => Err(()),
        }
    }
}

impl Conn {
    fn closed(&self) -> bool {
        self.waiting.load(Ordering::SeqCst) == CLOSED
    }
}

/// `Conn::waiting` once the server has shut the connection down.
const CLOSED: u64 = u64::MAX;

/// `Conn::waiting` while a request is being answered.
const BUSY: u64 = 0;

/// What a connection's thread updates: since when (ms after the server's
/// start, plus one) it has waited for bytes, or [`BUSY`].
struct Waiting {
    epoch: Instant,
    waiting: Arc<AtomicU64>,
}

impl Waiting {
    fn now(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64 + 1;
        self.set(ms);
    }

    fn busy(&self) {
        self.set(BUSY);
    }

    /// Sets the state unless the server closed the connection.
    fn set(&self, to: u64) {
        let _ = self
            .waiting
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |w| {
                (w != CLOSED).then_some(to)
            });
    }
}

/// Keeps a connection in [`Conns`] until dropped, also when its thread
/// panics.
struct Open {
    conns: Arc<Mutex<Conns>>,
    id: u64,
}

impl Drop for Open {
    fn drop(&mut self) {
        lock(&self.conns).list.retain(|c| c.id != self.id);
    }
}

fn lock(conns: &Mutex<Conns>) -> std::sync::MutexGuard<'_, Conns> {
    conns.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept_loop(listener: UnixListener, scheduler: Arc<Scheduler>, stopping: Arc<AtomicBool>) {
    let conns = Arc::new(Mutex::new(Conns::default()));
    // Waits are in milliseconds since the server started.
    let epoch = Instant::now();
    let (mut full_log, mut accept_log) = (Throttle::default(), Throttle::default());
    for conn in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match conn {
            Ok(s) => s,
            Err(e) => {
                if let Some(n) = accept_log.check(Instant::now()) {
                    log::warn!("socket: accept failed: {e}{}", held_back(n));
                }
                // E.g. out of file descriptors: don't spin.
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let uid = sys::peer(&stream).ok().map(|p| p.uid);
        let per_uid = scheduler.max_connections_per_uid();
        let room = lock(&conns).make_room(uid, per_uid);
        match room {
            Ok(None) => {}
            Ok(Some(why)) => {
                if let Some(n) = full_log.check(Instant::now()) {
                    log::warn!(
                        "socket: {why}; closing the connection of the user holding the most \
                         that waited longest{}",
                        held_back(n)
                    );
                }
            }
            Err(()) => {
                if let Some(n) = full_log.check(Instant::now()) {
                    log::warn!(
                        "socket: connection caps reached ({MAX_CONNECTIONS} in all, \
                         {per_uid} per user) and none could be closed; refusing new ones{}",
                        held_back(n)
                    );
                }
                let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
                let line = protocol::error(ErrorCode::Internal, "too many connections", Some(1));
                let _ = stream.write_all(format!("{line}\n").as_bytes());
                continue;
            }
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let waiting = Arc::new(AtomicU64::new(BUSY));
        let id = {
            let mut c = lock(&conns);
            let id = c.next_id;
            c.next_id += 1;
            c.list.push(Conn {
                id,
                uid,
                stream: handle,
                waiting: Arc::clone(&waiting),
            });
            id
        };
        let guard = Open {
            conns: Arc::clone(&conns),
            id,
        };
        let sched = Arc::clone(&scheduler);
        let waiting = Waiting { epoch, waiting };
        let spawned = thread::Builder::new()
            .name("conn".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let _open = guard;
                serve(stream, &sched, &waiting);
            });
        if let Err(e) = spawned {
            // The closure, and with it `guard`, was dropped: out of the list.
            if let Some(n) = accept_log.check(Instant::now()) {
                log::warn!(
                    "socket: cannot start a connection thread: {e}{}",
                    held_back(n)
                );
            }
        }
    }
}

/// Answers one connection's requests until it closes, idles or misbehaves.
/// A client that stops reading its answers is dropped after WRITE_TIMEOUT.
fn serve(mut stream: UnixStream, scheduler: &Arc<Scheduler>, waiting: &Waiting) {
    if stream.set_read_timeout(Some(IDLE_TIMEOUT)).is_err()
        || stream.set_write_timeout(Some(WRITE_TIMEOUT)).is_err()
    {
        return;
    }
    // A client that pipelines requests without reading the answers gets
    // only this much answered ahead (a few dozen answers), not the
    // default ~200 KiB: the CPU a non-reader can make the agent spend is
    // small, and it blocks (then is dropped) soon.
    let _ = sys::set_send_buffer(&stream, SEND_BUFFER);
    let peer = sys::peer(&stream).ok();
    // One request line's worth; grown to MAX_INVALIDATE_LINE only for an
    // INVALIDATE that names a long token (most connections never touch
    // more than 1 KiB of it, and idle threads' stacks stay small).
    let mut buf = vec![0u8; MAX_LINE];
    let mut len = 0;
    // Reused for every answer, so that after the first one a TOKEN answer
    // allocates nothing and its token is not serialised again.
    let mut out = Vec::with_capacity(512);
    let mut answers = TokenAnswers::default();
    loop {
        let limit = protocol::line_limit(&buf[..len]);
        if let Some(pos) = buf[..len].iter().position(|&b| b == b'\n') {
            if pos + 1 > limit {
                break;
            }
            waiting.busy();
            out.clear();
            respond_into(
                &buf[..pos],
                peer.as_ref(),
                scheduler,
                &mut answers,
                &mut out,
            );
            out.push(b'\n');
            // No lock is held while writing: respond_into has returned.
            if stream.write_all(&out).is_err() {
                return;
            }
            buf.copy_within(pos + 1..len, 0);
            len -= pos + 1;
            continue;
        }
        if len >= limit {
            break;
        }
        if len == buf.len() {
            buf.resize(limit.min(MAX_INVALIDATE_LINE), 0);
        }
        waiting.now();
        let end = limit.min(buf.len());
        match stream.read(&mut buf[len..end]) {
            Ok(0) => return,
            Ok(n) => len += n,
            // With a read timeout set, a stop and continue of the process
            // (SIGSTOP, a debugger, strace attaching) fails the read with
            // EINTR: the client is still there.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    // Past the limit without a newline: a bad request, and the end.
    let line = protocol::error(
        ErrorCode::BadRequest,
        "request line longer than 1024 bytes; closing",
        None,
    );
    let _ = stream.write_all(format!("{line}\n").as_bytes());
}

/// The answer line (without newline) to one request line.
pub fn respond(line: &[u8], peer: Option<&Peer>, scheduler: &Arc<Scheduler>) -> String {
    let mut out = Vec::new();
    respond_into(
        line,
        peer,
        scheduler,
        &mut TokenAnswers::default(),
        &mut out,
    );
    String::from_utf8(out).expect("answers are UTF-8")
}

/// Appends the answer (without newline) to one request line to `out`.
/// TOKEN, REFRESH and INVALIDATE answers go through `answers`, which keeps
/// the serialised token between requests of one connection.
fn respond_into(
    line: &[u8],
    peer: Option<&Peer>,
    scheduler: &Arc<Scheduler>,
    answers: &mut TokenAnswers,
    out: &mut Vec<u8>,
) {
    let request = match protocol::parse(line) {
        Ok(r) => r,
        Err(message) => {
            return out.extend_from_slice(
                protocol::error(ErrorCode::BadRequest, &message, None).as_bytes(),
            )
        }
    };
    if let Some(name) = request.provider() {
        match scheduler.allows(name, peer) {
            None => return out.extend_from_slice(unknown(name).as_bytes()),
            Some(false) => {
                let line = protocol::error(
                    ErrorCode::Forbidden,
                    &format!("not allowed to use provider {name}"),
                    None,
                );
                return out.extend_from_slice(line.as_bytes());
            }
            Some(true) => {}
        }
    }
    let mut token_answer = |name: &str, result: Result<Served, TokenError>| match result {
        Ok((token, state)) => answers.write(out, name, &token, state, now_unix()),
        Err(e) => out.extend_from_slice(token_error(name, e).as_bytes()),
    };
    match request {
        Request::Token(name) => token_answer(name, scheduler.token(name, TOKEN_WAIT)),
        Request::Refresh(name) => {
            let admin = scheduler.is_admin(peer);
            token_answer(name, scheduler.renew(name, Event::Refresh { admin }))
        }
        Request::Invalidate(name, seen) => {
            let seen = seen.map(Secret::new);
            token_answer(name, scheduler.renew(name, Event::Invalidate(seen)))
        }
        Request::Ping => out.extend_from_slice(protocol::ping().as_bytes()),
        Request::Status => out.extend_from_slice(scheduler.status(peer).as_bytes()),
        Request::Logout(name) if !scheduler.is_admin(peer) => {
            let line = protocol::error(
                ErrorCode::Forbidden,
                &format!("LOGOUT {name} is for root and members of [agent] admin_groups"),
                None,
            );
            out.extend_from_slice(line.as_bytes());
        }
        Request::Logout(name) => {
            let line = match scheduler.logout(name) {
                Ok(()) => protocol::logged_out(name),
                Err(e) => token_error(name, e),
            };
            out.extend_from_slice(line.as_bytes());
        }
    }
}

fn unknown(name: &str) -> String {
    protocol::error(
        ErrorCode::UnknownProvider,
        &format!("no provider named {name}"),
        None,
    )
}

fn token_error(name: &str, e: TokenError) -> String {
    match e {
        TokenError::UnknownProvider => unknown(name),
        TokenError::NoToken { retry_in, state } => protocol::provider_error(
            ErrorCode::NoToken,
            &match state {
                "rejected" => format!(
                    "no valid token for {name}: the partner rejects the configured credentials"
                ),
                "logged_out" => format!(
                    "no valid token for {name}: logged out; an administrator's REFRESH logs it back in"
                ),
                _ => format!("no valid token for {name} now"),
            },
            retry_in,
            Some(state),
        ),
        TokenError::RefreshFailed {
            message,
            retry_in,
            state,
        } => protocol::provider_error(ErrorCode::RefreshFailed, &message, retry_in, Some(state)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_neither_hangs_nor_removes_a_replaced_socket() {
        let dir = std::env::temp_dir().join(format!("saa-server-{}", crate::rand::hex(12)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("agent.sock");
        let text = format!(
            "[agent]\nsocket = {:?}\nstate_dir = {:?}\n",
            path.display().to_string(),
            dir.join("state").display().to_string()
        );
        let no_env = |_: &str| None;
        let settings = crate::config::parse(&text, "test", None, false, &no_env).unwrap();
        let scheduler = Scheduler::new(&settings, None).unwrap();
        let server = Server::start(bind(&settings.agent).unwrap(), &path, scheduler).unwrap();
        // Our socket file is removed and another program binds the path:
        // the wake-up connection can no longer reach our accept().
        std::fs::remove_file(&path).unwrap();
        let other = UnixListener::bind(&path).unwrap();
        let start = Instant::now();
        server.stop();
        assert!(start.elapsed() < STOP_WAIT + Duration::from_secs(5));
        assert!(path.exists(), "removed the other program's socket");
        drop(other);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_repeating_warning_is_logged_once_a_minute_with_a_count() {
        let mut t = Throttle::default();
        let start = Instant::now();
        assert_eq!(t.check(start), Some(0));
        for s in 1..60 {
            assert_eq!(t.check(start + Duration::from_secs(s)), None);
        }
        assert_eq!(t.check(start + Duration::from_secs(60)), Some(59));
        assert_eq!(t.check(start + Duration::from_secs(61)), None);
        assert_eq!(t.check(start + Duration::from_secs(200)), Some(1));
    }
}
