//! The refresh scheduler: owns every provider's runtime state (its token,
//! health and next deadline) and is the only writer of tokens. One named
//! thread, `refresh`, sleeps on a condition variable until the earliest
//! deadline or until a client asks for something; each attempt then runs on
//! its own short-lived thread so that a slow partner delays nobody else.
//!
//! The socket server reads through [`Scheduler`]'s methods; REFRESH,
//! INVALIDATE and LOGOUT only raise flags and wait for the attempt that
//! serves them, so concurrent requests for one provider share one attempt.

use crate::clock::{self, Watch};
use crate::config::{ProviderSettings, Settings};
use crate::http::Http;
use crate::protocol::{self, ProviderStatus};
use crate::providers::{self, ErrorKind, Grant, Provider, ProviderError};
use crate::store::{Health, Record, Store};
use crate::timefmt::{now_unix, now_unix_ms};
use crate::token::{self, Token};
use crate::{notify, rand, tokenfile};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long TOKEN waits for a first login in flight (PRODUCT.md: at most 3 s).
pub const TOKEN_WAIT: Duration = Duration::from_secs(3);

/// The shared state and the handle the server and the agent use.
pub struct Scheduler {
    table: Mutex<Table>,
    cv: Condvar,
    store: Option<Store>,
    /// Held while a worker writes the store or a token file, and by shutdown
    /// so that the process never exits in the middle of a write.
    writes: Mutex<()>,
    /// True while the `refresh` thread runs (the watchdog checks it).
    running: AtomicBool,
    /// The store could not be read at start: its tokens are taken in when
    /// it first can be, before anything is written over them.
    unloaded: AtomicBool,
}

/// Clears `running` when the refresh thread ends, by return or by panic.
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

struct Table {
    slots: BTreeMap<String, Slot>,
    shutdown: bool,
    config_error: Option<String>,
    store_error: Option<String>,
    /// The underlying error of `store_error`, for logging it once.
    store_cause: Option<String>,
    socket_group: Option<u32>,
    next_generation: u64,
    clock: ClockState,
}

/// The wall clock as the scheduler sees it (see [`crate::clock`]).
struct ClockState {
    watch: Watch,
    /// The sum of the jumps seen. A worker started before a jump shifts
    /// its token by the difference.
    shifted: i64,
    /// Set while the wall clock is not trusted.
    untrusted: Option<Untrusted>,
}

#[derive(Debug, Clone, Copy)]
struct Untrusted {
    /// Seconds the wall clock is behind real time (negative: ahead).
    behind: i64,
    /// Known only as "at least" (from the store), not measured (a partner).
    lower_bound: bool,
}

struct Slot {
    settings: Arc<ProviderSettings>,
    provider: Arc<dyn Provider>,
    http: Arc<Http>,
    /// Changes when the slot is rebuilt by a reload; a worker's result for
    /// an older generation is not installed.
    generation: u64,
    token: Option<Arc<Token>>,
    /// While the clock is untrusted: the stored token as stored; `token`
    /// then holds it judged against the earliest the real time can be.
    restored: Option<Arc<Token>>,
    health: Health,
    /// Wall-clock second at which the current token is due for renewal.
    refresh_at: Option<i64>,
    next_attempt: Option<Instant>,
    in_flight: bool,
    started: u64,
    finished: u64,
    force: bool,
    invalidate: bool,
    /// INVALIDATE was asked: the current token is not served again.
    refused: bool,
    logout: bool,
    /// The outcome of the last finished attempt: `Err((message, retry_in))`.
    last_outcome: Option<Result<(), (String, Option<u64>)>>,
}

/// Why a provider's token cannot be handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    UnknownProvider,
    /// No valid token now; `retry_in` seconds when known.
    NoToken {
        retry_in: Option<u64>,
    },
    /// A renewal the client asked for failed.
    RefreshFailed {
        message: String,
        retry_in: Option<u64>,
    },
}

/// A token answer: the token and its state (`fresh` or `renewing`).
pub type Served = (Arc<Token>, &'static str);

enum Op {
    Renew { invalidate: bool },
    Logout,
}

struct Job {
    name: String,
    generation: u64,
    settings: Arc<ProviderSettings>,
    provider: Arc<dyn Provider>,
    http: Arc<Http>,
    token: Option<Arc<Token>>,
    health: Health,
    op: Op,
    /// `ClockState::shifted` when the job started.
    clock_shifted: i64,
}

impl Scheduler {
    /// Builds the state for `settings`, restoring stored tokens. Does not
    /// start any thread; see [`Scheduler::spawn`].
    pub fn new(settings: &Settings, store: Option<Store>) -> Result<Arc<Scheduler>, String> {
        let mut stored: BTreeMap<String, Record> = BTreeMap::new();
        let mut unloaded = false;
        if let Some(store) = &store {
            match store.load_all() {
                Ok(all) => stored.extend(all),
                Err(e) => {
                    log::error!("store: {e}; starting without stored tokens");
                    unloaded = true;
                }
            }
        }
        let now = now_unix();
        // The newest time the store knows of: real time has passed it.
        let newest_stored = stored
            .values()
            .flat_map(|r| {
                [
                    r.token.as_ref().map(|t| t.obtained_at),
                    r.health.last_refresh,
                ]
            })
            .flatten()
            .max();
        let untrusted = clock::behind_at_boot(now, newest_stored).map(|behind| {
            log::warn!(
                "clock: the wall clock is {behind}s behind the newest stored time (not yet synchronised?); \
                 stored tokens are judged against that time and renewed at once"
            );
            Untrusted {
                behind,
                lower_bound: true,
            }
        });
        let mut table = Table {
            slots: BTreeMap::new(),
            shutdown: false,
            config_error: None,
            store_error: None,
            store_cause: None,
            socket_group: settings.agent.socket_group,
            next_generation: 1,
            clock: ClockState {
                watch: Watch::new(now_unix_ms(), Instant::now()),
                shifted: 0,
                untrusted,
            },
        };
        for p in &settings.providers {
            let mut slot = table.new_slot(p)?;
            match stored.remove(&p.name) {
                Some(record) if record.identity == p.identity() => {
                    slot.health = record.health;
                    if let Some(t) = record.token.filter(|_| p.persist) {
                        let t = Arc::new(t);
                        match untrusted {
                            Some(u) => {
                                slot.token = Some(Arc::new(shifted(&t, -u.behind.max(0))));
                                slot.restored = Some(t);
                            }
                            None => slot.token = Some(t),
                        }
                        if let Some(t) = slot.token.as_ref().filter(|t| t.is_valid(now)) {
                            log::info!(
                                "{}: restored a token valid for {}s",
                                p.name,
                                t.expires_in(now)
                            );
                        }
                    }
                }
                Some(_) => log::info!(
                    "{}: the stored token belongs to another account; not using it",
                    p.name
                ),
                None => {}
            }
            slot.plan_initial(now);
            table.slots.insert(p.name.clone(), slot);
        }
        // Records of providers no longer configured are dropped.
        if let Some(store) = &store {
            for name in stored.keys() {
                if let Err(e) = store.remove(name) {
                    log::warn!("store: {e}");
                }
            }
        }
        Ok(Arc::new(Scheduler {
            table: Mutex::new(table),
            cv: Condvar::new(),
            store,
            writes: Mutex::new(()),
            running: AtomicBool::new(false),
            unloaded: AtomicBool::new(unloaded),
        }))
    }

    /// Starts the `refresh` thread.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        self.running.store(true, Ordering::SeqCst);
        thread::Builder::new()
            .name("refresh".into())
            .stack_size(256 * 1024)
            .spawn(move || me.run())
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A thread that panicked while holding the lock leaves it poisoned:
        // carry on with the data as it is (no update leaves it half-done)
        // rather than panic every thread after it.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the refresh thread is alive and the state lock can be taken
    /// (not held forever by a stuck thread).
    pub fn is_healthy(&self) -> bool {
        self.running.load(Ordering::SeqCst) && {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match self.table.try_lock() {
                    Ok(_) | Err(std::sync::TryLockError::Poisoned(_)) => break true,
                    Err(std::sync::TryLockError::WouldBlock) if Instant::now() < deadline => {
                        thread::sleep(Duration::from_millis(10))
                    }
                    Err(std::sync::TryLockError::WouldBlock) => break false,
                }
            }
        }
    }

    fn run(self: Arc<Self>) {
        let _running = Running(&self.running);
        self.write_token_files();
        let mut table = self.lock();
        loop {
            if table.shutdown {
                return;
            }
            table.observe_clock();
            let now = Instant::now();
            let mut jobs = Vec::new();
            let mut earliest: Option<Instant> = None;
            let clock_shifted = table.clock.shifted;
            for (name, slot) in table.slots.iter_mut() {
                if slot.in_flight {
                    continue;
                }
                let due_by_time =
                    !slot.health.logged_out && slot.next_attempt.is_some_and(|t| t <= now);
                if slot.logout || slot.force || due_by_time {
                    jobs.push(slot.start(name, clock_shifted));
                } else if let Some(t) = slot.next_attempt.filter(|_| !slot.health.logged_out) {
                    earliest = Some(earliest.map_or(t, |e: Instant| e.min(t)));
                }
            }
            if !jobs.is_empty() {
                drop(table);
                for job in jobs {
                    let me = Arc::clone(&self);
                    let spawned = thread::Builder::new()
                        .name(format!("refresh:{}", job.name))
                        .stack_size(256 * 1024)
                        .spawn(move || me.attempt(job));
                    if let Err(e) = spawned {
                        // The job is lost with its thread; the slot stays
                        // in flight. Without threads the agent cannot work.
                        log::error!("cannot start a refresh thread: {e}");
                    }
                }
                table = self.lock();
                continue;
            }
            table = match earliest {
                Some(t) => {
                    let wait = t.saturating_duration_since(now);
                    self.cv
                        .wait_timeout(table, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.cv.wait(table).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }

    /// One attempt, on its own thread: talk to the partner without any lock,
    /// persist the outcome, then install it.
    fn attempt(&self, job: Job) {
        let name = job.name.as_str();
        let now = now_unix();
        let mut health = job.health.clone();
        let mut token: Option<Token> = job.token.as_deref().cloned();
        let mut skew = None;
        // A failed renewal changes no token (but for INVALIDATE's).
        let mut keeps_token = false;
        let outcome: Result<(), ProviderError> = match job.op {
            Op::Logout => {
                if let Some(t) = &token {
                    match job
                        .provider
                        .logout(&job.http, &t.access, t.refresh.as_ref())
                    {
                        Ok(()) => log::info!("{name}: logged out"),
                        Err(e) => log::warn!(
                            "{name}: logout at the partner failed ({e}); forgetting the tokens anyway"
                        ),
                    }
                } else {
                    log::info!("{name}: logged out (no token was held)");
                }
                token = None;
                health = Health {
                    logged_out: true,
                    last_refresh: health.last_refresh,
                    ..Health::default()
                };
                Ok(())
            }
            Op::Renew { invalidate } => {
                let old_refresh = token.as_ref().and_then(|t| t.refresh.clone());
                match obtain(name, &job, old_refresh.as_ref()) {
                    Ok((grant, how)) => {
                        let iat = crate::jwt::claims(grant.access.expose()).and_then(|c| c.iat);
                        skew = clock::partner_skew(now, grant.server_date, iat);
                        let (mut t, source) =
                            Token::from_grant(grant, now, job.settings.token_lifetime);
                        // A clock jump while the partner answered: stamp
                        // the token in the clock's new terms.
                        let jumped = self.lock().clock.shifted - job.clock_shifted;
                        if jumped != 0 {
                            t = shifted(&t, jumped);
                        }
                        if t.refresh.is_none() && how == "renewed" {
                            // RFC 6749 §6: no new refresh token means the old one stays valid.
                            t.refresh = old_refresh;
                        }
                        log::info!(
                            "{name}: {how}; token valid for {}s (lifetime from {})",
                            t.lifetime(),
                            source.as_str()
                        );
                        token = Some(t);
                        health = Health {
                            last_refresh: Some(now),
                            ..Health::default()
                        };
                        Ok(())
                    }
                    Err(e) => {
                        health.failures = health.failures.saturating_add(1);
                        health.last_error = Some(e.to_string());
                        health.last_error_kind = Some(e.kind.as_str().to_owned());
                        log::warn!(
                            "{name}: {} failed (attempt {}): {e}",
                            if token.is_some() { "renewal" } else { "login" },
                            health.failures
                        );
                        if invalidate {
                            // The POS saw this token refused; never serve it again.
                            token = None;
                        } else {
                            keeps_token = true;
                        }
                        Err(e)
                    }
                }
            }
        };
        {
            let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
            if self.lock().shutdown && self.store.is_some() {
                // Shutting down: the store is being closed; the next start
                // renews from what was last persisted.
                return;
            }
            if let Some(store) = &self.store {
                if self.unloaded.load(Ordering::SeqCst) {
                    self.adopt_stored(store);
                }
            }
            if keeps_token {
                // What the slot holds now: the token may have been shifted
                // by a clock jump or taken in from a late store meanwhile.
                if let Some(slot) = self
                    .lock()
                    .slots
                    .get(name)
                    .filter(|s| s.generation == job.generation)
                {
                    token = slot.persisted_token().cloned();
                }
            }
            if let Some(store) = &self.store {
                let record = record(&job.settings, token.as_ref(), &health);
                if self.note_store_result(store.save(name, &record)) {
                    // Writes failed for a while: bring every other record
                    // on disk up to date too.
                    self.save_all_but(store, name);
                }
            }
            self.write_token_file(&job.settings, token.as_ref());
        }
        let token = token.map(Arc::new);
        let mut table = self.lock();
        if let Some(slot) = table
            .slots
            .get_mut(name)
            .filter(|s| s.generation == job.generation)
        {
            slot.finish(token, health, outcome, now);
        }
        table.learn_skew(name, skew);
        let summary = table.summary(now_unix());
        drop(table);
        self.cv.notify_all();
        notify::status(&summary);
    }

    /// Writes (or removes, without a valid token) the provider's token file,
    /// if it has one. Called with `writes` held.
    fn write_token_file(&self, settings: &ProviderSettings, token: Option<&Token>) {
        let Some(path) = &settings.file else {
            return;
        };
        let name = &settings.name;
        let now = now_unix();
        let written = match token.filter(|t| t.is_valid(now)) {
            Some(t) => {
                let state = state_of(token::refresh_at(t, settings.refresh_before, 0.0), now);
                let mut line = protocol::token(name, t, state, now);
                line.push('\n');
                let gid = self.lock().socket_group;
                tokenfile::write(path, line.as_bytes(), gid)
            }
            None => tokenfile::remove(path),
        };
        if let Err(e) = written {
            log::error!("{name}: token file {}: {e}", path.display());
        }
    }

    /// At start, token files are brought up to the tokens restored from the
    /// store: a file written before a crash or power cut may hold an older
    /// token than the store (the store is written first).
    fn write_token_files(&self) {
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let files: Vec<(Arc<ProviderSettings>, Option<Token>)> = self
            .lock()
            .slots
            .values()
            .filter(|s| s.settings.file.is_some() && !s.in_flight)
            .map(|s| (Arc::clone(&s.settings), s.persisted_token().cloned()))
            .collect();
        for (settings, token) in files {
            self.write_token_file(&settings, token.as_ref());
        }
    }

    /// Notes the outcome of a store write; true when writing works again
    /// after failing.
    fn note_store_result(&self, result: Result<(), crate::store::StoreError>) -> bool {
        let mut table = self.lock();
        match result {
            Ok(()) => {
                if table.store_error.take().is_some() {
                    table.store_cause = None;
                    log::info!("store: writing works again");
                    return true;
                }
                false
            }
            Err(e) => {
                // Logged once per cause (a full disk, a read-only one), not
                // on every write nor again for each provider it hits.
                let cause = store_cause(&e);
                if table.store_cause.as_deref() != Some(cause.as_str()) {
                    log::error!("store: {e}; tokens are kept in memory only");
                }
                table.store_cause = Some(cause);
                table.store_error = Some(e.to_string());
                false
            }
        }
    }

    /// Writes the current record of every provider but `done`. Called with
    /// `writes` held.
    fn save_all_but(&self, store: &Store, done: &str) {
        let records: Vec<(String, Record)> = self
            .lock()
            .slots
            .iter()
            .filter(|(name, _)| name.as_str() != done)
            .map(|(name, slot)| {
                let record = record(&slot.settings, slot.persisted_token(), &slot.health);
                (name.clone(), record)
            })
            .collect();
        for (name, record) in records {
            self.note_store_result(store.save(&name, &record));
        }
    }

    /// The store could not be read at start but can now: each provider
    /// holding no token takes in its stored one (same account, still
    /// valid) before anything is written over it. Called with `writes` held.
    fn adopt_stored(&self, store: &Store) {
        let Ok(all) = store.load_all() else {
            return;
        };
        self.unloaded.store(false, Ordering::SeqCst);
        let now = now_unix();
        let mut table = self.lock();
        for (name, r) in all {
            let Some(slot) = table.slots.get_mut(&name) else {
                continue;
            };
            if slot.token.is_some()
                || slot.health.logged_out
                || !slot.settings.persist
                || r.identity != slot.settings.identity()
            {
                continue;
            }
            if let Some(t) = r.token.filter(|t| t.is_valid(now)) {
                log::info!(
                    "{name}: restored a token valid for {}s (the store opened late)",
                    t.expires_in(now)
                );
                if !slot.in_flight {
                    slot.plan_renewal(&t, now);
                }
                slot.token = Some(Arc::new(t));
            }
        }
    }

    /// Whether `peer` may use the provider: `None` for an unknown provider.
    /// A provider without `allow_*` is open to anyone who can reach the
    /// socket. Allocates nothing (TOKEN's hot path).
    pub fn allows(&self, name: &str, peer: Option<&crate::sys::Peer>) -> Option<bool> {
        self.lock()
            .slots
            .get(name)
            .map(|s| match &s.settings.access {
                None => true,
                Some(access) => peer.is_some_and(|p| access.allows(p)),
            })
    }

    /// TOKEN: the current token if it is valid; while a first login is in
    /// flight (or due within `wait`) waits for it up to `wait`.
    pub fn token(&self, name: &str, wait: Duration) -> Result<Served, TokenError> {
        let deadline = Instant::now() + wait;
        let mut table = self.lock();
        table.observe_clock();
        loop {
            let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
            let now = now_unix();
            if let Some(served) = slot.serve(now) {
                return Ok(served);
            }
            let clock = Instant::now();
            let coming = !slot.health.logged_out
                && (slot.in_flight
                    || slot.force
                    || slot.next_attempt.is_some_and(|t| t <= deadline));
            if !coming || clock >= deadline {
                return Err(TokenError::NoToken {
                    retry_in: slot.retry_in(clock),
                });
            }
            table = self
                .cv
                .wait_timeout(table, deadline - clock)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// REFRESH (`invalidate` false) or INVALIDATE (true): renew now and
    /// answer with the outcome. Joins an attempt already in flight.
    pub fn renew(&self, name: &str, invalidate: bool) -> Result<Served, TokenError> {
        let mut table = self.lock();
        let slot = table
            .slots
            .get_mut(name)
            .ok_or(TokenError::UnknownProvider)?;
        // The POS saw this token refused: stop serving it at once.
        slot.refused |= invalidate;
        // Rejected credentials are retried on their slow schedule only: a
        // POS asking again and again must not turn into a login loop at the
        // partner (a credential fixed in the config is tried at the reload).
        let clock = Instant::now();
        if !slot.in_flight
            && slot.health.last_error_kind.as_deref() == Some(ErrorKind::Rejected.as_str())
            && slot.next_attempt.is_some_and(|t| t > clock)
        {
            return Err(TokenError::RefreshFailed {
                message: format!(
                    "{} (not retried before the next scheduled attempt; fix the credentials and reload)",
                    slot.health
                        .last_error
                        .as_deref()
                        .unwrap_or("credentials rejected")
                ),
                retry_in: slot.retry_in(clock),
            });
        }
        let target = if slot.in_flight {
            slot.started
        } else {
            slot.force = true;
            slot.invalidate |= invalidate;
            slot.started + 1
        };
        let deadline = Instant::now() + slot.settings.timeout * 2 + Duration::from_secs(5);
        self.cv.notify_all();
        let table = self.wait_for(table, name, target, deadline)?;
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        let now = now_unix();
        match &slot.last_outcome {
            Some(Ok(())) if slot.finished >= target => slot
                .serve(now)
                .ok_or(TokenError::NoToken { retry_in: None }),
            Some(Err((message, retry_in))) if slot.finished >= target => {
                Err(TokenError::RefreshFailed {
                    message: message.clone(),
                    retry_in: *retry_in,
                })
            }
            _ => Err(TokenError::RefreshFailed {
                message: "the renewal is taking longer than expected; it goes on".into(),
                retry_in: slot.retry_in(Instant::now()),
            }),
        }
    }

    /// LOGOUT: revoke where the kind can, forget the tokens, stay logged out
    /// until REFRESH.
    pub fn logout(&self, name: &str) -> Result<(), TokenError> {
        let mut table = self.lock();
        let slot = table
            .slots
            .get_mut(name)
            .ok_or(TokenError::UnknownProvider)?;
        slot.logout = true;
        let target = slot.started + 1;
        let deadline = Instant::now() + slot.settings.timeout + Duration::from_secs(5);
        self.cv.notify_all();
        let table = self.wait_for(table, name, target, deadline)?;
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        if slot.finished >= target {
            Ok(())
        } else {
            Err(TokenError::RefreshFailed {
                message: "the logout is taking longer than expected; it goes on".into(),
                retry_in: None,
            })
        }
    }

    fn wait_for<'a>(
        &'a self,
        mut table: MutexGuard<'a, Table>,
        name: &str,
        target: u64,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, Table>, TokenError> {
        loop {
            let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
            let now = Instant::now();
            if slot.finished >= target || now >= deadline || table.shutdown {
                return Ok(table);
            }
            table = self
                .cv
                .wait_timeout(table, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// STATUS: every provider, no token values.
    pub fn status(&self) -> String {
        let mut table = self.lock();
        table.observe_clock();
        let now = now_unix();
        let clock = Instant::now();
        let providers: Vec<ProviderStatus> = table
            .slots
            .iter()
            .map(|(name, slot)| slot.status(name, now, clock))
            .collect();
        protocol::status(
            &providers,
            table.config_error.as_deref(),
            table.store_error.as_deref(),
            table.clock_note().as_deref(),
        )
    }

    /// Why the wall clock is not trusted, when it is not (STATUS shows it).
    pub fn clock_note(&self) -> Option<String> {
        self.lock().clock_note()
    }

    /// The line for systemd's STATUS=.
    pub fn summary(&self) -> String {
        self.lock().summary(now_unix())
    }

    /// Applies a reloaded config: unchanged providers keep their tokens,
    /// changed ones start over, removed ones are dropped (with their stored
    /// record and token file). Returns a line saying what changed.
    pub fn reload(&self, settings: &Settings) -> Result<String, String> {
        let mut table = self.lock();
        let now = now_unix();
        let mut fresh: BTreeMap<String, Slot> = BTreeMap::new();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for p in &settings.providers {
            match table.slots.remove(&p.name) {
                Some(mut old) if old.settings.kind == p.kind => {
                    if *old.settings != *p {
                        old.http = Http::shared(p.timeout, p.ca_pem.as_deref())?;
                        old.settings = Arc::new(p.clone());
                        // Timing settings may have changed: replan the renewal.
                        if let Some(t) = old.token.clone() {
                            old.plan_renewal(&t, now);
                        }
                    }
                    kept.push(p.name.clone());
                    fresh.insert(p.name.clone(), old);
                }
                Some(old) => {
                    let mut slot = table.new_slot(p)?;
                    slot.started = old.started;
                    slot.finished = old.finished;
                    slot.plan_initial(now);
                    changed.push(p.name.clone());
                    fresh.insert(p.name.clone(), slot);
                }
                None => {
                    let mut slot = table.new_slot(p)?;
                    slot.plan_initial(now);
                    added.push(p.name.clone());
                    fresh.insert(p.name.clone(), slot);
                }
            }
        }
        let removed: Vec<Slot> = std::mem::take(&mut table.slots).into_values().collect();
        let removed_names: Vec<String> = removed.iter().map(|s| s.settings.name.clone()).collect();
        table.slots = fresh;
        table.socket_group = settings.agent.socket_group;
        table.config_error = None;
        drop(table);
        self.cv.notify_all();
        for slot in &removed {
            if let Some(store) = &self.store {
                if let Err(e) = store.remove(&slot.settings.name) {
                    log::warn!("store: {e}");
                }
            }
            if let Some(path) = &slot.settings.file {
                let _ = tokenfile::remove(path);
            }
        }
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        Ok(format!(
            "added {}; removed {}; changed {}; kept {}",
            list(&added),
            list(&removed_names),
            list(&changed),
            list(&kept)
        ))
    }

    /// Records that the store could not be opened (shown by STATUS until a
    /// write works; a failure of the same cause is not logged again).
    pub fn set_store_error(&self, error: crate::store::StoreError) {
        let mut table = self.lock();
        table.store_cause = Some(store_cause(&error));
        table.store_error = Some(error.to_string());
    }

    /// Records that a reloaded config was refused (shown by STATUS).
    pub fn set_config_error(&self, error: Option<String>) {
        self.lock().config_error = error;
    }

    /// Stops the refresh thread and waits for any write in progress; the
    /// store is flushed. Attempts still talking to a partner are abandoned.
    pub fn shutdown(&self) {
        self.lock().shutdown = true;
        self.cv.notify_all();
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = &self.store {
            if let Err(e) = store.flush() {
                log::error!("store: {e}");
            }
        }
    }
}

/// Renew with the refresh token where the kind can; on a refusal fall back
/// to a full login. A transient failure of the renewal is returned as is: a
/// login would meet the same network.
fn obtain(
    name: &str,
    job: &Job,
    refresh: Option<&crate::secret::Secret>,
) -> Result<(Grant, &'static str), ProviderError> {
    if let Some(refresh) = refresh {
        match job.provider.renew(&job.http, refresh) {
            None => {}
            Some(Ok(grant)) => return Ok((grant, "renewed")),
            Some(Err(e)) if e.kind == ErrorKind::Transient => return Err(e),
            Some(Err(e)) => log::info!("{name}: renewal refused ({e}); logging in again"),
        }
    }
    job.provider.login(&job.http).map(|g| (g, "logged in"))
}

/// What a store error is about, for logging each cause once: an I/O error
/// by its kind, since sled words the same full disk differently when
/// writing and when reopening.
fn store_cause(e: &crate::store::StoreError) -> String {
    match &e.source {
        sled::Error::Io(io) => format!("{:?}", io.kind()),
        other => other.to_string(),
    }
}

/// A provider's record for the store (never a config secret).
fn record(settings: &ProviderSettings, token: Option<&Token>, health: &Health) -> Record {
    Record {
        identity: settings.identity(),
        token: token.filter(|_| settings.persist).cloned(),
        health: health.clone(),
    }
}

/// The token with its wall-clock stamps moved by `by` seconds.
fn shifted(t: &Token, by: i64) -> Token {
    Token {
        obtained_at: t.obtained_at.saturating_add(by),
        expires_at: t.expires_at.saturating_add(by),
        ..t.clone()
    }
}

/// `fresh` before the renewal time, `renewing` from then until expiry.
fn state_of(refresh_at: i64, now: i64) -> &'static str {
    if now < refresh_at {
        "fresh"
    } else {
        "renewing"
    }
}

impl Table {
    /// Notices a wall-clock jump and shifts every token's stamps by it, so
    /// that what is served and shown agrees with the clock again. Renewal
    /// deadlines run on the monotonic clock and are not touched: a jump
    /// causes neither a refresh storm nor a token served past its expiry.
    fn observe_clock(&mut self) {
        let Some(jump) = self.clock.watch.check(now_unix_ms(), Instant::now()) else {
            return;
        };
        self.clock.shifted += jump;
        log::warn!("clock: the wall clock jumped {jump:+}s; token times shifted to match");
        for slot in self.slots.values_mut() {
            if slot.restored.is_none() {
                if let Some(t) = &slot.token {
                    slot.token = Some(Arc::new(shifted(t, jump)));
                }
                slot.refresh_at = slot.refresh_at.map(|r| r + jump);
            }
        }
        if let Some(u) = self.clock.untrusted {
            let behind = u.behind - jump;
            if behind <= clock::SKEW_TOLERANCE
                && (u.lower_bound || behind >= -clock::SKEW_TOLERANCE)
            {
                // Set right (NTP): the stored stamps mean what they say.
                self.trust(true, "the wall clock was set");
            } else {
                self.distrust(Untrusted { behind, ..u });
            }
        }
    }

    /// What a partner's clock says about ours (after an answer from `name`).
    fn learn_skew(&mut self, name: &str, skew: Option<i64>) {
        match skew {
            Some(0) if self.clock.untrusted.is_some() => {
                // Ours agrees with the partner: the stored times came from a
                // clock that was ahead; keep judging the stored tokens by
                // them (the cautious reading).
                self.trust(false, &format!("it agrees with {name}'s"));
            }
            None | Some(0) => {}
            Some(skew) => {
                let known = self.clock.untrusted.map(|u| u.behind);
                if known.is_none_or(|b| (b - skew).abs() > clock::SKEW_TOLERANCE) {
                    log::warn!(
                        "clock: {name}'s clock is {}s {} ours; ours is not trusted",
                        skew.abs(),
                        if skew > 0 { "ahead of" } else { "behind" }
                    );
                }
                self.distrust(Untrusted {
                    behind: skew,
                    lower_bound: false,
                });
            }
        }
    }

    fn distrust(&mut self, u: Untrusted) {
        self.clock.untrusted = Some(u);
        for slot in self.slots.values_mut() {
            if let Some(original) = &slot.restored {
                slot.token = Some(Arc::new(shifted(original, -u.behind.max(0))));
            }
        }
    }

    fn trust(&mut self, restore_stamps: bool, why: &str) {
        log::info!("clock: trusted again ({why})");
        self.clock.untrusted = None;
        for slot in self.slots.values_mut() {
            if let Some(original) = slot.restored.take() {
                if restore_stamps {
                    slot.token = Some(original);
                }
            }
        }
    }

    /// A line for STATUS and systemd when the clock is not trusted.
    fn clock_note(&self) -> Option<String> {
        self.clock
            .untrusted
            .map(|u| match (u.behind > 0, u.lower_bound) {
                (true, true) => format!(
                    "untrusted: at least {}s behind the newest stored time",
                    u.behind
                ),
                (true, false) => format!("untrusted: {}s behind the partners' clocks", u.behind),
                (false, _) => format!("untrusted: {}s ahead of the partners' clocks", -u.behind),
            })
    }

    fn new_slot(&mut self, p: &ProviderSettings) -> Result<Slot, String> {
        let http = Http::shared(p.timeout, p.ca_pem.as_deref())
            .map_err(|e| format!("providers.{}.ca_file: {e}", p.name))?;
        let generation = self.next_generation;
        self.next_generation += 1;
        Ok(Slot {
            provider: Arc::from(providers::build(&p.kind)),
            settings: Arc::new(p.clone()),
            http,
            generation,
            token: None,
            restored: None,
            health: Health::default(),
            refresh_at: None,
            next_attempt: None,
            in_flight: false,
            started: 0,
            finished: 0,
            force: false,
            invalidate: false,
            refused: false,
            logout: false,
            last_outcome: None,
        })
    }

    fn summary(&self, now: i64) -> String {
        let total = self.slots.len();
        let valid = self
            .slots
            .values()
            .filter(|s| s.token.as_ref().is_some_and(|t| t.is_valid(now)))
            .count();
        let mut line = format!("{valid}/{total} providers have a valid token");
        if let Some((name, slot)) = self
            .slots
            .iter()
            .find(|(_, s)| s.health.last_error.is_some())
        {
            line.push_str(&format!(
                "; {name}: {}",
                slot.health.last_error.as_deref().unwrap_or("")
            ));
        }
        if let Some(e) = &self.config_error {
            line.push_str(&format!(
                "; config reload refused: {}",
                e.lines().next().unwrap_or("")
            ));
        }
        if let Some(note) = self.clock_note() {
            line.push_str(&format!("; clock {note}"));
        }
        line
    }
}

impl Slot {
    /// Plans the first attempt after start or reload: renew on schedule if a
    /// valid token is held, else log in within a second (jittered, so a
    /// fleet of terminals powered on together spreads its logins).
    fn plan_initial(&mut self, now: i64) {
        if self.health.logged_out {
            self.next_attempt = None;
            return;
        }
        if self.restored.is_some() {
            // The clock is not trusted: renew as soon as a partner answers.
            self.plan_in(token::first_login_delay(rand::unit()));
            return;
        }
        match self.token.clone().filter(|t| t.is_valid(now)) {
            Some(t) => self.plan_renewal(&t, now),
            None => self.plan_in(token::first_login_delay(rand::unit())),
        }
    }

    fn plan_renewal(&mut self, t: &Token, now: i64) {
        let at = token::refresh_at(t, self.settings.refresh_before, rand::unit());
        self.refresh_at = Some(at);
        let delay = if at > now {
            Duration::from_secs((at - now) as u64)
        } else {
            Duration::from_secs_f64(rand::unit())
        };
        self.plan_in(delay);
    }

    fn plan_in(&mut self, delay: Duration) {
        self.next_attempt = Some(Instant::now() + delay);
    }

    fn start(&mut self, name: &str, clock_shifted: i64) -> Job {
        let op = if self.logout {
            Op::Logout
        } else {
            Op::Renew {
                invalidate: self.invalidate,
            }
        };
        self.in_flight = true;
        self.started += 1;
        self.force = false;
        self.invalidate = false;
        self.logout = false;
        Job {
            name: name.to_owned(),
            generation: self.generation,
            settings: Arc::clone(&self.settings),
            provider: Arc::clone(&self.provider),
            http: Arc::clone(&self.http),
            // A restored token goes back to the store as it was stored.
            token: self.restored.clone().or_else(|| self.token.clone()),
            health: self.health.clone(),
            op,
            clock_shifted,
        }
    }

    fn finish(
        &mut self,
        token: Option<Arc<Token>>,
        health: Health,
        outcome: Result<(), ProviderError>,
        now: i64,
    ) {
        self.in_flight = false;
        self.finished = self.started;
        if self.refused && outcome.is_err() {
            // A refused token is never served again, even if its renewal failed.
            self.token = None;
            self.restored = None;
        } else if outcome.is_ok() {
            self.token = token;
            self.restored = None;
        } // else: a failed renewal changes no token; the slot keeps what it
          // holds now (shifted by a clock jump, restored, or taken in late).
        self.refused = false;
        self.health = health;
        match outcome {
            Ok(()) if self.health.logged_out => {
                self.refresh_at = None;
                self.next_attempt = None;
                self.last_outcome = Some(Ok(()));
            }
            Ok(()) => {
                if let Some(t) = self.token.clone() {
                    self.plan_renewal(&t, now);
                }
                self.last_outcome = Some(Ok(()));
            }
            Err(e) => {
                let delay = match e.kind {
                    ErrorKind::Rejected => {
                        token::rejected_backoff(self.health.failures, rand::unit())
                    }
                    ErrorKind::Transient | ErrorKind::BadResponse => token::transient_backoff(
                        self.health.failures,
                        self.settings.max_backoff,
                        e.retry_after,
                        rand::unit(),
                    ),
                };
                self.plan_in(delay);
                self.last_outcome = Some(Err((e.to_string(), Some(delay.as_secs().max(1)))));
            }
        }
    }

    /// The token as the store should keep it: a restored one as it was
    /// stored, not as judged against an untrusted clock.
    fn persisted_token(&self) -> Option<&Token> {
        self.restored.as_deref().or(self.token.as_deref())
    }

    /// The token to hand out now, if any.
    fn serve(&self, now: i64) -> Option<Served> {
        if self.refused {
            return None;
        }
        let t = self.token.as_ref().filter(|t| t.is_valid(now))?;
        // A failed renewal puts the token in the window at once: the POS
        // should know that the next one may not come in time.
        let state = if self.health.failures > 0 || self.restored.is_some() {
            "renewing"
        } else {
            state_of(self.refresh_at.unwrap_or(t.expires_at), now)
        };
        Some((Arc::clone(t), state))
    }

    fn retry_in(&self, clock: Instant) -> Option<u64> {
        if self.health.logged_out {
            return None;
        }
        if self.in_flight || self.force {
            return Some(1);
        }
        self.next_attempt.map(|t| {
            t.saturating_duration_since(clock)
                .as_secs_f64()
                .ceil()
                .max(1.0) as u64
        })
    }

    fn status(&self, name: &str, now: i64, clock: Instant) -> ProviderStatus {
        let state = if self.health.logged_out {
            "logged_out"
        } else if let Some((_, state)) = self.serve(now) {
            state
        } else if self.health.last_error_kind.as_deref() == Some("rejected") {
            "rejected"
        } else if self.token.is_some() {
            "expired"
        } else {
            "none"
        };
        let next_attempt = if self.in_flight {
            Some(now)
        } else {
            self.next_attempt
                .map(|t| now + t.saturating_duration_since(clock).as_secs_f64().ceil() as i64)
        };
        ProviderStatus {
            provider: name.to_owned(),
            kind: self.settings.kind.kind(),
            state,
            expires_at: self.token.as_ref().map(|t| t.expires_at),
            last_refresh: self.health.last_refresh,
            last_error: self.health.last_error.clone(),
            failures: self.health.failures,
            next_attempt: if self.health.logged_out {
                None
            } else {
                next_attempt
            },
        }
    }
}
