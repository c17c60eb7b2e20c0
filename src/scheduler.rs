//! The refresh scheduler: the executor of every provider's
//! [`Lifecycle`](crate::lifecycle). It owns the table of providers and is
//! the only writer of tokens. One named thread, `refresh`, sleeps on a
//! condition variable until the earliest planned attempt; each attempt runs
//! on its own short-lived thread so that a slow partner delays nobody else.
//! What a provider does and when is decided by the lifecycle's transition
//! function; this module feeds it events (timers, client requests, attempt
//! results, clock jumps, reloads) and carries out its actions: start an
//! attempt, persist, wake waiting clients, tell systemd.
//!
//! The socket server reads through [`Scheduler`]'s methods; REFRESH,
//! INVALIDATE and LOGOUT are events whose clients then wait for the attempt
//! that serves them, so concurrent requests for one provider share one
//! attempt.

use crate::clock::{self, Watch};

use crate::config::{Access, ProviderSettings, RefreshMode, Settings};
use crate::http::Http;
use crate::lifecycle::{self, Action, Event, Lifecycle, Now, Op, Outcome, Timing};
use crate::protocol::{self, ProviderStatus};
use crate::providers::{self, ErrorKind, Grant, Provider, ProviderError};
use crate::store::{Health, Record, Store};
use crate::timefmt::{now_unix, now_unix_ms};
use crate::token::{self, Token};
use crate::{metrics, notify, rand, tokenfile};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// How long TOKEN waits for a first login in flight (docs/protocol.md: at most 3 s).
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
    /// The origin of the lifecycles' monotonic milliseconds.
    origin: Instant,
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
    /// Who may LOGOUT and log a provider back in: root and `admin_groups`.
    admins: Access,
    /// Connections one uid may hold open (`max_connections_per_uid`).
    max_connections_per_uid: usize,
    next_generation: u64,
    clock: ClockState,
    /// Records the lifecycles asked to write again (after a clock jump),
    /// for the refresh thread: (provider, token, health).
    saves: Vec<(String, Option<Token>, Health)>,
    /// Attempt outcomes for the metrics file.
    attempts: metrics::Attempts,
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

/// One provider: its settings, how to reach it, and its lifecycle.
struct Slot {
    settings: Arc<ProviderSettings>,
    provider: Arc<dyn Provider>,
    http: Arc<Http>,
    /// Changes when the slot is rebuilt by a reload; a worker's result for
    /// an older generation is not installed.
    generation: u64,
    life: Lifecycle,
}

/// Why a provider's token cannot be handed out. `state` is the provider's
/// (as STATUS names it), so a client can tell "try later" (`none`,
/// `renewing`, `expired`) from "needs a person" (`rejected`, `logged_out`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    UnknownProvider,
    /// No valid token now; `retry_in` seconds when known.
    NoToken {
        retry_in: Option<u64>,
        state: &'static str,
    },
    /// A renewal the client asked for failed, or was not made.
    RefreshFailed {
        message: String,
        retry_in: Option<u64>,
        state: &'static str,
    },
}

/// A token answer: the token and its state (`fresh` or `renewing`).
pub type Served = (Arc<Token>, &'static str);

/// An attempt to carry out, on its own thread.
struct Job {
    name: String,
    generation: u64,
    settings: Arc<ProviderSettings>,
    provider: Arc<dyn Provider>,
    http: Arc<Http>,
    /// The token to renew or revoke (as persisted).
    token: Option<Token>,
    op: Op,
    /// `ClockState::shifted` when the job started, and the wall clock then
    /// (read together, so a token is stamped in the terms of that shift).
    clock_shifted: i64,
    started: i64,
}

fn admins(settings: &Settings) -> Access {
    Access {
        uids: Vec::new(),
        gids: settings.agent.admin_gids.clone(),
    }
}

/// The shared HTTP client for a provider's timeout and CA (a bad CA file is
/// the one way this fails).
fn http_for(p: &ProviderSettings) -> Result<Arc<Http>, String> {
    Http::shared(p.timeout, p.ca_pem.as_deref(), &p.proxy)
        .map_err(|e| format!("providers.{}.ca_file: {e}", p.name))
}

fn timing(p: &ProviderSettings) -> Timing {
    Timing {
        refresh_before: p.refresh_before,
        max_backoff: p.max_backoff,
        cooldown: p.refresh_cooldown,
    }
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
        let origin = Instant::now();
        let now = Now {
            wall: now_unix(),
            mono: 0,
        };
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
        let untrusted = clock::behind_at_boot(now.wall, newest_stored).map(|behind| {
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
            admins: admins(settings),
            max_connections_per_uid: settings.agent.max_connections_per_uid,
            next_generation: 1,
            clock: ClockState {
                watch: Watch::new(now_unix_ms(), origin),
                shifted: 0,
                untrusted,
            },
            saves: Vec::new(),
            attempts: metrics::Attempts::default(),
        };
        for p in &settings.providers {
            let (token, health) = match stored.remove(&p.name) {
                Some(record) if record.identity == p.identity() => {
                    (record.token.filter(|_| p.persist), record.health)
                }
                Some(_) => {
                    log::info!(
                        "{}: the stored token belongs to another account; not using it",
                        p.name
                    );
                    (None, Health::default())
                }
                None => (None, Health::default()),
            };
            let life = Lifecycle::new(
                timing(p),
                token,
                health,
                untrusted.map(|u| u.behind),
                now,
                rand::unit(),
            );
            if let Some((t, _)) = life.serve(now.wall) {
                log::info!(
                    "{}: restored a token valid for {}s",
                    p.name,
                    t.expires_in(now.wall)
                );
            }
            let slot = table.new_slot(p, life)?;
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
            origin,
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

    fn now(&self) -> Now {
        Now {
            wall: now_unix(),
            mono: self.origin.elapsed().as_millis() as u64,
        }
    }

    /// The instant of a monotonic time of the lifecycles.
    fn instant(&self, mono: lifecycle::Mono) -> Instant {
        self.origin + Duration::from_millis(mono)
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

    /// Feeds `event` to the named provider's lifecycle and carries out what
    /// it asks, but for `Await`, `Current`, `Refuse` and `Persist`, which go
    /// back to the caller; a `Save` is queued in `table.saves` (written by
    /// the refresh thread, or by the caller at once). Called with the table
    /// locked.
    fn apply(self: &Arc<Self>, table: &mut Table, name: &str, event: Event) -> Vec<Action> {
        // A jump not yet noticed would otherwise be counted twice by an
        // attempt started here: in its stamps and in the shift it is given.
        let now = self.observe_clock(table);
        self.apply_at(table, name, event, now)
    }

    /// [`Self::apply`] at `now`, read when the clock was last observed
    /// (under the same lock): no jump can come between the two.
    fn apply_at(
        self: &Arc<Self>,
        table: &mut Table,
        name: &str,
        event: Event,
        now: Now,
    ) -> Vec<Action> {
        let clock_shifted = table.clock.shifted;
        if let Event::Finished(outcome) = &event {
            table.attempts.count(name, outcome);
        }
        let Some(slot) = table.slots.get_mut(name) else {
            return vec![];
        };
        let actions = slot.life.on(event, now, rand::unit());
        let mut back = Vec::new();
        let mut wake = false;
        let mut saves = Vec::new();
        for action in actions {
            match action {
                Action::Start(op) => self.start(slot, name, op, (clock_shifted, now.wall)),
                Action::Wake => wake = true,
                Action::Save { token, health } => saves.push((name.to_owned(), token, health)),
                other => back.push(other),
            }
        }
        table.saves.extend(saves);
        // Waiting clients, and the refresh thread (a new plan or attempt).
        self.cv.notify_all();
        if wake {
            notify::status(&table.summary(now.wall));
        }
        back
    }

    /// Starts an attempt on its own thread.
    fn start(self: &Arc<Self>, slot: &Slot, name: &str, op: Op, clock: (i64, i64)) {
        let (clock_shifted, started) = clock;
        let job = Job {
            name: name.to_owned(),
            generation: slot.generation,
            settings: Arc::clone(&slot.settings),
            provider: Arc::clone(&slot.provider),
            http: Arc::clone(&slot.http),
            token: slot.life.persisted_token().cloned(),
            op,
            clock_shifted,
            started,
        };
        let me = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name(format!("refresh:{name}"))
            .stack_size(256 * 1024)
            .spawn(move || me.attempt(job));
        if let Err(e) = spawned {
            // The job is lost with its thread; the slot stays in flight.
            // Without threads the agent cannot work.
            log::error!("cannot start a refresh thread: {e}");
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
            self.observe_clock(&mut table);
            if !table.saves.is_empty() {
                let saves = std::mem::take(&mut table.saves);
                drop(table);
                self.save(saves);
                table = self.lock();
                continue;
            }
            let now = self.now();
            let due: Vec<String> = table
                .slots
                .iter()
                .filter(|(_, s)| s.life.next_attempt().is_some_and(|t| t <= now.mono))
                .map(|(name, _)| name.clone())
                .collect();
            for name in &due {
                self.apply(&mut table, name, Event::Tick);
            }
            let earliest = table
                .slots
                .values()
                .filter_map(|s| s.life.next_attempt())
                .min();
            table = match earliest {
                Some(t) => {
                    let wait = self.instant(t).saturating_duration_since(Instant::now());
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
    fn attempt(self: Arc<Self>, job: Job) {
        let name = job.name.as_str();
        let now = job.started;
        // The partner's times (Date header, JWT iat) and when they came:
        // compared with our clock only when the outcome is installed, in
        // the clock's terms then (a clock set while the partner answered
        // must not make it look skewed by the size of the jump).
        let mut partner_time = None;
        let mut outcome = match job.op {
            Op::Logout => Outcome::LoggedOut {
                unrevoked: revoke(name, &job, now).err(),
            },
            Op::Renew { .. } => {
                let old_refresh = job.token.as_ref().and_then(|t| t.refresh.clone());
                let refused_before = job.token.as_ref().is_some_and(|t| t.refresh_refused);
                let renew_with = old_refresh
                    .as_ref()
                    .filter(|_| job.settings.refresh == RefreshMode::Auto && !refused_before);
                let (obtained, refused_now) = obtain(name, &job, renew_with);
                match obtained {
                    Ok((grant, how)) => {
                        let iat = crate::jwt::claims(grant.access.expose()).and_then(|c| c.iat);
                        partner_time = Some((grant.server_date, iat, Instant::now()));
                        let (mut t, source) =
                            Token::from_grant(grant, now, job.settings.token_lifetime);
                        if t.refresh.is_none() && how == "renewed" {
                            // RFC 6749 §6: no new refresh token means the old one stays valid.
                            t.refresh = old_refresh;
                        }
                        if refused_before || refused_now {
                            // Remembered with the token (so across restarts):
                            // the next renewals log in at once.
                            t = lifecycle::without_refresh_grant(&t);
                        } else if job.settings.refresh == RefreshMode::Never {
                            t.refresh = None;
                        }
                        log::info!(
                            "{name}: {how}; token valid for {}s (lifetime from {})",
                            t.lifetime(),
                            source.as_str()
                        );
                        Outcome::Token(t)
                    }
                    Err(e) => Outcome::Failed {
                        kind: e.kind,
                        message: e.message,
                        retry_after: e.retry_after,
                        refresh_refused: refused_now,
                    },
                }
            }
        };
        let persisted = {
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
            let persist = {
                let mut table = self.lock();
                // A clock jump while the partner answered: stamp the token
                // in the clock's new terms (one observation for both).
                let now = self.observe_clock(&mut table);
                let jumped = table.clock.shifted - job.clock_shifted;
                if let Outcome::Token(t) = &mut outcome {
                    if jumped != 0 {
                        *t = lifecycle::shifted(t, jumped);
                    }
                }
                let current = table
                    .slots
                    .get(name)
                    .is_some_and(|s| s.generation == job.generation);
                if !current {
                    return;
                }
                self.apply_at(&mut table, name, Event::Finished(outcome), now)
            };
            let Some(Action::Persist { token, health }) = persist.into_iter().next() else {
                return;
            };
            if let (Some(message), true) = (&health.last_error, health.failures > 0) {
                log::warn!(
                    "{name}: {} failed (attempt {}): {message}",
                    if job.token.is_some() {
                        "renewal"
                    } else {
                        "login"
                    },
                    health.failures
                );
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
            true
        };
        if persisted {
            let mut table = self.lock();
            // One observation for the event and the partner's time.
            let now = self.observe_clock(&mut table);
            if table
                .slots
                .get(name)
                .is_some_and(|s| s.generation == job.generation)
            {
                self.apply_at(&mut table, name, Event::Persisted, now);
            }
            if let Some((date, iat, answered)) = partner_time {
                let then = now.wall - answered.elapsed().as_secs() as i64;
                table.learn_skew(name, clock::partner_skew(then, date, iat));
            }
        }
    }

    /// Writes records the lifecycles asked for outside an attempt (after a
    /// clock jump), and the token files with them.
    fn save(&self, saves: Vec<(String, Option<Token>, Health)>) {
        let _writing = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        for (name, token, health) in saves {
            let Some(settings) = self
                .lock()
                .slots
                .get(&name)
                .map(|s| Arc::clone(&s.settings))
            else {
                continue;
            };
            if let Some(store) = &self.store {
                let record = record(&settings, token.as_ref(), &health);
                self.note_store_result(store.save(&name, &record));
            }
            self.write_token_file(&settings, token.as_ref());
        }
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
                let at = token::refresh_at(t, settings.refresh_before, 0.0);
                let state = lifecycle::fresh_or_renewing(at, now);
                let mut line = protocol::token(name, t, state, now);
                line.push('\n');
                tokenfile::write(path, line.as_bytes(), settings.file_readers)
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
            .filter(|s| s.settings.file.is_some() && !s.life.busy())
            .map(|s| (Arc::clone(&s.settings), s.life.persisted_token().cloned()))
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
                let life = &slot.life;
                let record = record(&slot.settings, life.persisted_token(), life.health());
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
        let now = self.now();
        let mut table = self.lock();
        for (name, r) in all {
            let Some(slot) = table.slots.get_mut(&name) else {
                continue;
            };
            if !slot.settings.persist || r.identity != slot.settings.identity() {
                continue;
            }
            let Some(t) = r.token else { continue };
            let had = slot.life.token().is_some();
            slot.life.on(Event::StoreLoaded(t), now, rand::unit());
            if let (false, Some(t)) = (had, slot.life.token()) {
                log::info!(
                    "{name}: restored a token valid for {}s (the store opened late)",
                    t.expires_in(now.wall)
                );
            }
        }
        drop(table);
        self.cv.notify_all();
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
        self.observe_clock(&mut table);
        loop {
            let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
            let now = self.now();
            if let Some((t, state)) = slot.life.serve(now.wall) {
                return Ok((Arc::clone(t), state));
            }
            let clock = Instant::now();
            let until = deadline.saturating_duration_since(self.origin).as_millis() as u64;
            if !slot.life.coming_before(until) || clock >= deadline {
                return Err(TokenError::NoToken {
                    retry_in: slot.life.retry_in(now),
                    state: slot.life.state(now.wall),
                });
            }
            table = self
                .cv
                .wait_timeout(table, deadline - clock)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// REFRESH or INVALIDATE (`event`): renew now and answer with the
    /// outcome, or with the current token when the lifecycle says no
    /// renewal is needed. Joins an attempt already in flight.
    pub fn renew(self: &Arc<Self>, name: &str, event: Event) -> Result<Served, TokenError> {
        let mut table = self.lock();
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        let deadline = Instant::now() + slot.settings.timeout * 2 + Duration::from_secs(5);
        let ticket = match self.apply(&mut table, name, event).into_iter().next() {
            Some(Action::Await(ticket)) => Some(ticket),
            Some(Action::Current) => None,
            Some(Action::Refuse { message, retry_in }) => {
                let state = table.state_of(name, self.now());
                // A refused token dropped without an attempt is forgotten on
                // disk before the client hears back.
                let saves = std::mem::take(&mut table.saves);
                drop(table);
                if !saves.is_empty() {
                    self.save(saves);
                }
                return Err(TokenError::RefreshFailed {
                    message,
                    retry_in,
                    state,
                });
            }
            _ => return Err(TokenError::UnknownProvider),
        };
        let table = match ticket {
            Some(ticket) => self.wait_for(table, name, ticket, deadline)?,
            None => table,
        };
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        let now = self.now();
        let state = slot.life.state(now.wall);
        let served = || {
            slot.life
                .serve(now.wall)
                .map(|(t, state)| (Arc::clone(t), state))
                .ok_or(TokenError::NoToken {
                    retry_in: slot.life.retry_in(now),
                    state,
                })
        };
        let Some(ticket) = ticket else {
            return served();
        };
        match slot.life.outcome_of(ticket) {
            Some(Ok(())) => served(),
            Some(Err((message, retry_in))) => Err(TokenError::RefreshFailed {
                message,
                retry_in,
                state,
            }),
            None => Err(TokenError::RefreshFailed {
                message: "the renewal is taking longer than expected; it goes on".into(),
                retry_in: slot.life.retry_in(now),
                state,
            }),
        }
    }

    /// Whether `peer` may LOGOUT and log providers back in: root and
    /// members of `[agent] admin_groups`.
    pub fn is_admin(&self, peer: Option<&crate::sys::Peer>) -> bool {
        peer.is_some_and(|p| self.lock().admins.allows(p))
    }

    /// Connections one uid may hold open.
    pub fn max_connections_per_uid(&self) -> usize {
        self.lock().max_connections_per_uid
    }

    /// LOGOUT: revoke where the kind can, forget the tokens, stay logged out
    /// until REFRESH.
    pub fn logout(self: &Arc<Self>, name: &str) -> Result<(), TokenError> {
        let mut table = self.lock();
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        let deadline = Instant::now() + slot.settings.timeout + Duration::from_secs(5);
        let Some(Action::Await(ticket)) = self
            .apply(&mut table, name, Event::Logout)
            .into_iter()
            .next()
        else {
            return Err(TokenError::UnknownProvider);
        };
        let table = self.wait_for(table, name, ticket, deadline)?;
        let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
        if slot.life.outcome_of(ticket).is_some() {
            Ok(())
        } else {
            Err(TokenError::RefreshFailed {
                message: "the logout is taking longer than expected; it goes on".into(),
                retry_in: None,
                state: slot.life.state(self.now().wall),
            })
        }
    }

    /// Waits until attempt `ticket` of the provider has finished, the
    /// deadline passed or the agent stops.
    fn wait_for<'a>(
        &'a self,
        mut table: MutexGuard<'a, Table>,
        name: &str,
        ticket: u64,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, Table>, TokenError> {
        loop {
            let slot = table.slots.get(name).ok_or(TokenError::UnknownProvider)?;
            let now = Instant::now();
            if slot.life.outcome_of(ticket).is_some() || now >= deadline || table.shutdown {
                return Ok(table);
            }
            table = self
                .cv
                .wait_timeout(table, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// STATUS: every provider, no token values; a provider's `last_error`
    /// only to callers allowed to use it (partner error text can say more
    /// than a POS user of another provider should see).
    pub fn status(&self, peer: Option<&crate::sys::Peer>) -> String {
        let mut table = self.lock();
        self.observe_clock(&mut table);
        let now = self.now();
        let providers: Vec<ProviderStatus> = table
            .slots
            .iter()
            .map(|(name, slot)| {
                let mut status = slot.status(name, now);
                let allowed = match &slot.settings.access {
                    None => true,
                    Some(access) => peer.is_some_and(|p| access.allows(p)),
                };
                if !allowed {
                    status.last_error = None;
                }
                status
            })
            .collect();
        protocol::status(
            &providers,
            table.config_error.as_deref(),
            table.store_error.as_deref(),
            table.clock_note().as_deref(),
        )
    }

    /// For the metrics thread: what the metrics file shows, once it
    /// differs from `last` or at `due`, whichever comes first (a change
    /// wakes this through the condition variable every change notifies);
    /// `None` once the agent stops.
    pub fn metrics(
        &self,
        last: Option<&metrics::Snapshot>,
        due: Instant,
    ) -> Option<metrics::Snapshot> {
        let mut table = self.lock();
        loop {
            if table.shutdown {
                return None;
            }
            self.observe_clock(&mut table);
            let now = self.now();
            let snapshot = metrics::Snapshot {
                providers: table
                    .slots
                    .iter()
                    .map(|(name, slot)| {
                        let status = slot.status(name, now);
                        metrics::ProviderMetrics {
                            name: status.provider,
                            state: status.state,
                            expires_at: status.expires_at,
                            last_success: status.last_refresh,
                            attempts: table.attempts.of(name),
                        }
                    })
                    .collect(),
                clock_trusted: table.clock.untrusted.is_none(),
                store_writable: self.store.is_some() && table.store_error.is_none(),
            };
            let clock = Instant::now();
            if last != Some(&snapshot) || clock >= due {
                return Some(snapshot);
            }
            table = self
                .cv
                .wait_timeout(table, due - clock)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The line for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let mut table = self.lock();
        let now = self.observe_clock(&mut table);
        table.summary(now.wall)
    }

    /// Applies a reloaded config, all or nothing: unchanged providers keep
    /// their tokens, changed ones start over, removed ones are dropped (with
    /// their stored record and token file). Everything that can fail is
    /// done before the table changes. Returns a line saying what changed.
    pub fn reload(&self, settings: &Settings) -> Result<String, String> {
        let mut table = self.lock();
        let now = self.now();
        let behind = table.clock.untrusted.map(|u| u.behind);
        let mut fresh: BTreeMap<String, Slot> = BTreeMap::new();
        // (name, settings, http) of kept providers whose settings changed.
        let mut retimed = Vec::new();
        let (mut added, mut changed, mut kept) = (Vec::new(), Vec::new(), Vec::new());
        for p in &settings.providers {
            match table.slots.get(&p.name) {
                Some(old) if old.settings.partner == p.partner => {
                    if *old.settings != *p {
                        retimed.push((p.name.clone(), Arc::new(p.clone()), http_for(p)?));
                    }
                    kept.push(p.name.clone());
                }
                old => {
                    // A new provider, or a changed account: a fresh start
                    // that still answers the clients waiting on the old one.
                    let life = Lifecycle::new(
                        timing(p),
                        None,
                        Health::default(),
                        behind,
                        now,
                        rand::unit(),
                    );
                    let life = match old {
                        Some(old) => {
                            changed.push(p.name.clone());
                            life.continuing(&old.life)
                        }
                        None => {
                            added.push(p.name.clone());
                            life
                        }
                    };
                    fresh.insert(p.name.clone(), table.new_slot(p, life)?);
                }
            }
        }
        // Nothing failed: change the table.
        for name in &kept {
            let slot = table.slots.remove(name).expect("kept");
            fresh.insert(name.clone(), slot);
        }
        for (name, settings, http) in retimed {
            let slot = fresh.get_mut(&name).expect("kept");
            let t = timing(&settings);
            slot.settings = settings;
            slot.http = http;
            slot.life.on(Event::Retimed(t), now, rand::unit());
        }
        let removed: Vec<Slot> = std::mem::take(&mut table.slots).into_values().collect();
        let removed_names: Vec<String> = removed.iter().map(|s| s.settings.name.clone()).collect();
        table.slots = fresh;
        table.admins = admins(settings);
        table.max_connections_per_uid = settings.agent.max_connections_per_uid;
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

    /// Notices a wall-clock jump (see [`Table::observe_clock`]); the
    /// refresh thread writes the records it moved. Returns the time it
    /// judged by: one reading of both clocks.
    fn observe_clock(&self, table: &mut Table) -> Now {
        let (wall_ms, mono) = (now_unix_ms(), Instant::now());
        let now = Now {
            wall: wall_ms.div_euclid(1000),
            mono: mono.saturating_duration_since(self.origin).as_millis() as u64,
        };
        table.observe_clock(wall_ms, mono, now);
        if !table.saves.is_empty() {
            self.cv.notify_all();
        }
        now
    }
}

/// Revokes the job's tokens at the partner, where the kind can. An expired
/// access token cannot authorise the call: it is renewed first with the
/// refresh token (no login: that would make new tokens to revoke); with
/// neither there is nothing to revoke. The error says why the partner may
/// still hold a live token; the agent forgets its tokens either way.
fn revoke(name: &str, job: &Job, now: i64) -> Result<(), String> {
    let Some(held) = job.token.as_ref().filter(|_| job.provider.revokes()) else {
        log::info!("{name}: logged out");
        return Ok(());
    };
    let renewed;
    let (access, refresh) = if held.is_valid(now) {
        (&held.access, held.refresh.as_ref())
    } else {
        let Some(old_refresh) = &held.refresh else {
            log::info!("{name}: logged out (the access token had expired; nothing to revoke)");
            return Ok(());
        };
        match job
            .provider
            .renew(&job.http, old_refresh)
            .map(|r| r.and_then(providers::checked))
        {
            Some(Ok(grant)) => {
                renewed = grant;
                (
                    &renewed.access,
                    renewed.refresh.as_ref().or(Some(old_refresh)),
                )
            }
            Some(Err(e)) => {
                let why = format!(
                    "logout: renewing the expired access token to revoke it failed ({e}); \
                     the refresh token may stay live at the partner"
                );
                log::warn!("{name}: {why}; forgetting the tokens anyway");
                return Err(why);
            }
            None => {
                log::info!("{name}: logged out (the access token had expired)");
                return Ok(());
            }
        }
    };
    match job.provider.logout(&job.http, access, refresh) {
        Ok(()) => {
            log::info!("{name}: logged out and revoked at the partner");
            Ok(())
        }
        Err(e) => {
            let why = format!(
                "logout: revocation at the partner failed ({e}); its tokens may stay live there"
            );
            log::warn!("{name}: {why}; forgetting the tokens anyway");
            Err(why)
        }
    }
}

/// A renewal with `refresh` when given, else (or when the partner refuses
/// it) a login. A transient failure of the renewal is returned as is: a
/// login would meet the same network. The second value says the partner
/// refused the refresh grant itself, whatever the login then did: from
/// then on the account logs in directly.
fn obtain(
    name: &str,
    job: &Job,
    refresh: Option<&crate::secret::Secret>,
) -> (Result<(Grant, &'static str), ProviderError>, bool) {
    let mut grant_refused = false;
    if let Some(refresh) = refresh {
        match job
            .provider
            .renew(&job.http, refresh)
            .map(|r| r.and_then(providers::checked))
        {
            None => {}
            Some(Ok(grant)) => return (Ok((grant, "renewed")), false),
            Some(Err(e)) if e.kind == ErrorKind::Transient => return (Err(e), false),
            Some(Err(e)) if e.grant_refused => {
                log::warn!(
                    "{name}: the partner refuses the refresh grant ({e}); \
                     renewals log in directly from now on"
                );
                grant_refused = true;
            }
            Some(Err(e)) => log::info!("{name}: renewal refused ({e}); logging in again"),
        }
    }
    let login = job
        .provider
        .login(&job.http)
        .and_then(providers::checked)
        .map(|g| (g, "logged in"));
    (login, grant_refused)
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

impl Table {
    /// Notices a wall-clock jump and shifts every token's stamps by it, so
    /// that what is served and shown agrees with the clock again. Renewal
    /// deadlines run on the monotonic clock and are not touched: a jump
    /// causes neither a refresh storm nor a token served past its expiry.
    fn observe_clock(&mut self, wall_ms: i64, mono: Instant, now: Now) {
        let Some(jump) = self.clock.watch.check(wall_ms, mono) else {
            return;
        };
        self.clock.shifted += jump;
        log::warn!("clock: the wall clock jumped {jump:+}s; token times shifted to match");
        self.tell_all(Event::ClockJump(jump), now);
        if let Some(u) = self.clock.untrusted {
            let behind = u.behind - jump;
            if behind <= clock::SKEW_TOLERANCE
                && (u.lower_bound || behind >= -clock::SKEW_TOLERANCE)
            {
                // Set right (NTP): the stored stamps mean what they say.
                self.trust(true, "the wall clock was set", now);
            } else {
                self.distrust(Untrusted { behind, ..u }, now);
            }
        }
    }

    /// A clock event for every lifecycle; the records they ask to write
    /// again are queued for the refresh thread.
    fn tell_all(&mut self, event: Event, now: Now) {
        for (name, slot) in self.slots.iter_mut() {
            for action in slot.life.on(event.clone(), now, 0.0) {
                if let Action::Save { token, health } = action {
                    self.saves.push((name.clone(), token, health));
                }
            }
        }
    }

    /// What a partner's clock says about ours (after an answer from `name`).
    fn learn_skew(&mut self, name: &str, skew: Option<i64>) {
        let now = Now {
            wall: now_unix(),
            mono: 0, // not read by the clock's events
        };
        match skew {
            Some(0) if self.clock.untrusted.is_some() => {
                // Ours agrees with the partner: the stored times came from a
                // clock that was ahead; keep judging the stored tokens by
                // them (the cautious reading).
                self.trust(false, &format!("it agrees with {name}'s"), now);
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
                self.distrust(
                    Untrusted {
                        behind: skew,
                        lower_bound: false,
                    },
                    now,
                );
            }
        }
    }

    fn distrust(&mut self, u: Untrusted, now: Now) {
        self.clock.untrusted = Some(u);
        self.tell_all(Event::ClockDistrusted { behind: u.behind }, now);
    }

    fn trust(&mut self, restore_stamps: bool, why: &str, now: Now) {
        log::info!("clock: trusted again ({why})");
        self.clock.untrusted = None;
        self.tell_all(Event::ClockTrusted { restore_stamps }, now);
    }

    /// The provider's state as STATUS names it (`none` when unknown).
    fn state_of(&self, name: &str, now: Now) -> &'static str {
        self.slots
            .get(name)
            .map_or("none", |s| s.life.state(now.wall))
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

    /// A slot for `p` around `life`: everything that can fail (the CA file)
    /// happens here, before any table changes.
    fn new_slot(&mut self, p: &ProviderSettings, life: Lifecycle) -> Result<Slot, String> {
        let http = http_for(p)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        Ok(Slot {
            provider: p.partner.provider().clone(),
            settings: Arc::new(p.clone()),
            http,
            generation,
            life,
        })
    }

    fn summary(&self, now: i64) -> String {
        let total = self.slots.len();
        let valid = self
            .slots
            .values()
            .filter(|s| s.life.token().is_some_and(|t| t.is_valid(now)))
            .count();
        let mut line = format!("{valid}/{total} providers have a valid token");
        if let Some((name, slot)) = self
            .slots
            .iter()
            .find(|(_, s)| s.life.health().last_error.is_some())
        {
            line.push_str(&format!(
                "; {name}: {}",
                slot.life.health().last_error.as_deref().unwrap_or("")
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
    fn status(&self, name: &str, now: Now) -> ProviderStatus {
        let life = &self.life;
        let health = life.health();
        let next_attempt = if health.logged_out {
            None
        } else if life.busy() {
            Some(now.wall)
        } else {
            life.next_attempt()
                .map(|t| now.wall + (t.saturating_sub(now.mono)).div_ceil(1000) as i64)
        };
        ProviderStatus {
            provider: name.to_owned(),
            kind: self.settings.partner.kind(),
            state: life.state(now.wall),
            expires_at: life.token().map(|t| t.expires_at),
            last_refresh: health.last_refresh,
            last_error: health.last_error.clone(),
            failures: health.failures,
            next_attempt,
        }
    }
}
