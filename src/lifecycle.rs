//! One provider's lifecycle as a pure state machine: what it holds, what it
//! is doing, and what each event makes it do. [`Lifecycle::on`] takes the
//! state, an [`Event`], the time ([`Now`]: wall clock and monotonic clock)
//! and one random draw, changes the state and returns [`Action`]s for the
//! executor ([`crate::scheduler`]) to carry out: start an attempt at the
//! partner, persist, wake waiting clients. No I/O, no clock, no randomness of
//! its own, so `tests/` can drive it through simulated weeks
//! (`lifecycle_sim`), and the executor stays thin.
//!
//! ```text
//!            Tick / REFRESH / INVALIDATE / LOGOUT (start)
//!   Idle ─────────────────────────────────────────────▶ InFlight
//!    ▲                                                     │ Finished
//!    │ Persisted (install; plan next;                      ▼
//!    │            wake clients)                        Persisting
//!    └─────────────────────────────────────────────────────┘
//! ```
//! Orthogonal to the activity is what the provider holds ([`Lifecycle::state`]
//! names it as STATUS does): `none`, `fresh`, `renewing`, `expired`,
//! `rejected`, `logged_out`. A token reaches clients only after the
//! `Persisted` event, so what was served is on disk.

use crate::providers::ErrorKind;
use crate::secret::Secret;
use crate::store::Health;
use crate::token::{self, Token};
use std::sync::Arc;
use std::time::Duration;

/// Milliseconds on the monotonic clock since the executor's origin.
pub type Mono = u64;

/// The time an event happens at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Unix seconds by the wall clock (what tokens are stamped with).
    pub wall: i64,
    /// The monotonic clock, for deadlines.
    pub mono: Mono,
}

fn ms(d: Duration) -> Mono {
    d.as_millis().min(u128::from(u64::MAX)) as Mono
}

/// The provider settings the lifecycle needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    pub refresh_before: Duration,
    pub max_backoff: Duration,
    /// After a forced renewal (REFRESH, INVALIDATE) succeeds, further ones
    /// within this long get its token without a partner request; zero: off.
    pub cooldown: Duration,
}

/// What an attempt does at the partner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Renew with the refresh token where there is one, else log in.
    /// `invalidate`: the POS saw the current token refused; `forced`: a
    /// client asked for it (REFRESH, INVALIDATE), not the schedule.
    Renew { invalidate: bool, forced: bool },
    /// Revoke where the kind can, and forget the tokens.
    Logout,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// A new token (its stamps in the wall clock's current terms).
    Token(Token),
    /// The logout is done: forgotten here, and revoked at the partner
    /// unless `unrevoked` says why not (shown as the last error).
    LoggedOut { unrevoked: Option<String> },
    /// The partner did not give a token. An answer lost on the way is a
    /// transient failure like any other network trouble.
    Failed {
        kind: ErrorKind,
        message: String,
        retry_after: Option<Duration>,
        /// The partner refused the refresh grant before this failure: the
        /// token kept is marked so (its refresh token dropped), and the
        /// next renewals log in directly, also after a restart.
        refresh_refused: bool,
    },
}

/// Something that happens to a provider.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The monotonic clock reached the planned attempt.
    Tick,
    /// A client asked for a renewal now; `admin`: an administrator (who may
    /// log a logged-out provider back in).
    Refresh { admin: bool },
    /// A client saw a token refused: `Some` names it (`INVALIDATE name
    /// token`); `None`, the client does not say which (the current one, or
    /// the one a forced renewal replaced moments ago).
    Invalidate(Option<Secret>),
    /// A client asked to log out.
    Logout,
    /// The attempt in flight ended.
    Finished(Outcome),
    /// What `Persist` asked for is on disk (or could not be written: the
    /// executor reports that on its own).
    Persisted,
    /// The wall clock jumped by this many seconds (monotonic time did not).
    ClockJump(i64),
    /// The wall clock is judged `behind` seconds behind real time: a token
    /// restored from the store is judged against that.
    ClockDistrusted { behind: i64 },
    /// The wall clock is trusted again; `restore_stamps`: the stored stamps
    /// mean what they say (the clock was set), else keep judging the
    /// restored token by the cautious reading.
    ClockTrusted { restore_stamps: bool },
    /// A reload changed the provider's timing settings (not its account).
    Retimed(Timing),
    /// The store opened late and holds this token for the provider.
    StoreLoaded(Token),
}

/// What the executor must do after an event, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start this attempt (one at a time: only from `Idle`).
    Start(Op),
    /// Write the record (this token, or none, and the health) and the token
    /// file; then send `Persisted`.
    Persist {
        token: Option<Token>,
        health: Health,
    },
    /// Write this record (and the token file) again, with no event after:
    /// a clock jump moved the stamps of what is on disk.
    Save {
        token: Option<Token>,
        health: Health,
    },
    /// Clients waiting for attempt number `ticket` get their answer then.
    Await(u64),
    /// Answer the client at once with the current token (no attempt).
    Current,
    /// Answer the client at once: the request is not served now.
    Refuse {
        message: String,
        retry_in: Option<u64>,
    },
    /// Wake clients waiting for an attempt, and tell systemd the new state.
    Wake,
}

#[derive(Debug, Clone, PartialEq)]
enum Activity {
    /// No attempt under way; the next is planned at `next` (none while
    /// logged out).
    Idle { next: Option<Mono> },
    /// An attempt talks to the partner. `logout_after`: a LOGOUT came
    /// meanwhile and gets an attempt of its own next.
    InFlight { op: Op, logout_after: bool },
    /// The attempt ended and what it leaves is being written to disk.
    Persisting(Box<Persisting>),
}

/// What an ended attempt leaves: `token` and `health` are written to disk,
/// then installed as they were written.
#[derive(Debug, Clone, PartialEq)]
struct Persisting {
    op: Op,
    outcome: Outcome,
    token: Option<Token>,
    health: Health,
    logout_after: bool,
}

/// One provider's state.
#[derive(Debug, Clone, PartialEq)]
pub struct Lifecycle {
    /// The token as served, its stamps in the wall clock's current terms
    /// (shared: TOKEN hands it out without copying).
    token: Option<Arc<Token>>,
    /// While the wall clock is not trusted: the stored token as stored;
    /// `token` holds it judged against the earliest real time can be.
    restored: Option<Arc<Token>>,
    health: Health,
    /// Wall-clock second at which the current token is due for renewal.
    refresh_at: Option<i64>,
    activity: Activity,
    /// A client saw the current token refused: it is not served again.
    refused: bool,
    /// While a failed attempt's backoff (or `Retry-After`) runs: no
    /// attempt, forced or not, before this. Kept through LOGOUT.
    backoff_until: Option<Mono>,
    /// When the last forced renewal succeeded (its token is current): the
    /// cooldown runs from here.
    forced_ok_at: Option<Mono>,
    /// Attempts started and finished (clients wait for a number).
    started: u64,
    finished: u64,
    /// The last finished attempt: `Err((message, retry_in))` when it failed.
    last_outcome: Option<Result<(), (String, Option<u64>)>>,
    timing: Timing,
}

/// A token answer's state: `fresh` before the renewal time, `renewing` after.
pub fn fresh_or_renewing(refresh_at: i64, now: i64) -> &'static str {
    if now < refresh_at {
        "fresh"
    } else {
        "renewing"
    }
}

/// `t` with the partner's refusal of the refresh grant remembered: its
/// refresh token, which nothing can use, dropped.
pub fn without_refresh_grant(t: &Token) -> Token {
    Token {
        refresh: None,
        refresh_refused: true,
        ..t.clone()
    }
}

/// The token with its wall-clock stamps moved by `by` seconds.
pub fn shifted(t: &Token, by: i64) -> Token {
    Token {
        obtained_at: t.obtained_at.saturating_add(by),
        expires_at: t.expires_at.saturating_add(by),
        ..t.clone()
    }
}

impl Lifecycle {
    /// A provider at start (or changed by a reload): `stored` is what the
    /// store holds for it (same account; `None` when nothing usable), and
    /// `behind` is set while the wall clock is not trusted. Plans the first
    /// attempt: renewal on schedule with a valid token, else a login within
    /// [`token::FIRST_LOGIN_WINDOW`] (at `draw` of it).
    pub fn new(
        timing: Timing,
        stored: Option<Token>,
        health: Health,
        behind: Option<i64>,
        now: Now,
        draw: f64,
    ) -> Lifecycle {
        let mut l = Lifecycle {
            token: None,
            restored: None,
            health,
            refresh_at: None,
            activity: Activity::Idle { next: None },
            refused: false,
            backoff_until: None,
            forced_ok_at: None,
            started: 0,
            finished: 0,
            last_outcome: None,
            timing,
        };
        if let Some(t) = stored {
            match behind {
                Some(b) => {
                    l.token = Some(Arc::new(shifted(&t, -b.max(0))));
                    l.restored = Some(Arc::new(t));
                }
                None => l.token = Some(Arc::new(t)),
            }
        }
        l.plan_initial(now, draw);
        l
    }

    /// Takes over the attempt counters of the lifecycle it replaces, so
    /// clients waiting on the old one are answered by the new one's attempt.
    pub fn continuing(mut self, old: &Lifecycle) -> Lifecycle {
        self.started = old.started;
        self.finished = old.finished;
        self
    }

    fn plan_initial(&mut self, now: Now, draw: f64) {
        if self.health.logged_out {
            self.activity = Activity::Idle { next: None };
            return;
        }
        let valid = self.token.clone().filter(|t| t.is_valid(now.wall));
        match valid {
            // With the clock untrusted, renew as soon as a partner answers.
            Some(t) if self.restored.is_none() => self.plan_renewal(&t, now, draw),
            _ => self.plan_in(token::first_login_delay(draw), now),
        }
    }

    fn plan_renewal(&mut self, t: &Token, now: Now, draw: f64) {
        let at = token::refresh_at(t, self.timing.refresh_before, draw);
        self.refresh_at = Some(at);
        let delay = if at > now.wall {
            Duration::from_secs((at - now.wall) as u64)
        } else {
            Duration::from_secs_f64(draw.clamp(0.0, 1.0))
        };
        self.plan_in(delay, now);
    }

    fn plan_in(&mut self, delay: Duration, now: Now) {
        self.activity = Activity::Idle {
            next: Some(now.mono.saturating_add(ms(delay))),
        };
    }

    /// INVALIDATE, before its refused token is dropped (see `on`).
    fn on_invalidate(&mut self, seen: Option<Secret>, now: Now) -> Vec<Action> {
        let cooldown = self.in_cooldown(now);
        let current = self.serve(now.wall).map(|(t, _)| t.access.clone());
        let seen_current = match (&seen, &current) {
            (Some(s), Some(c)) => s.expose() == c.expose(),
            (Some(_), None) => false,
            // Without a token named: the current one, unless a
            // forced renewal just replaced it (then the client saw
            // the one before).
            (None, _) => !cooldown,
        };
        if !seen_current && current.is_some() {
            // A newer token than the one refused: hand it out.
            return vec![Action::Current];
        }
        if seen_current {
            // Never served again.
            self.refused = true;
        }
        if self.busy() {
            return vec![Action::Await(self.started)];
        }
        if self.health.logged_out {
            // Only REFRESH (or a reload that changes the provider)
            // logs a logged-out provider back in.
            return vec![Action::Refuse {
                message: "logged out; an administrator's REFRESH logs it back in".into(),
                retry_in: None,
            }];
        }
        if seen_current && cooldown {
            // The partner refuses the token a forced renewal gave
            // moments ago: renewing again at once would loop.
            let until = self.forced_ok_at.unwrap_or(now.mono) + ms(self.timing.cooldown);
            // Not before the cooldown ends, nor before a backoff
            // already planned (rejected credentials wait longer).
            let next = self.backoff_until.map_or(until, |b| b.max(until));
            self.activity = Activity::Idle { next: Some(next) };
            // Nor at a REFRESH: INVALIDATE, REFRESH, INVALIDATE, …
            // would still be a loop at the partner.
            self.backoff_until = Some(next);
            return vec![Action::Refuse {
                message: format!(
                    "the partner refused the token of a renewal {}s ago; not renewing \
                         again within refresh_cooldown",
                    now.mono
                        .saturating_sub(self.forced_ok_at.unwrap_or(now.mono))
                        / 1000
                ),
                retry_in: self.retry_in(now),
            }];
        }
        self.forced(seen_current, now)
    }

    /// Whether a forced renewal succeeded within the cooldown and its
    /// token is still served.
    fn in_cooldown(&self, now: Now) -> bool {
        let cooldown = ms(self.timing.cooldown);
        cooldown > 0
            && self
                .forced_ok_at
                .is_some_and(|t| now.mono < t.saturating_add(cooldown))
            && self.serve(now.wall).is_some()
    }

    /// A renewal a client asked for: started now, unless a failure's backoff
    /// (or Retry-After, or the slow retry of rejected credentials) still
    /// runs — a client asking again and again must not turn into a request
    /// loop at the partner (a credential fixed in the config is tried at
    /// the reload).
    fn forced(&mut self, invalidate: bool, now: Now) -> Vec<Action> {
        if self.backoff_until.is_some_and(|t| t > now.mono) {
            let message = format!(
                "{} (not retried before the next scheduled attempt{})",
                self.health
                    .last_error
                    .as_deref()
                    .unwrap_or("the last attempt failed"),
                if self.health.rejected() {
                    "; fix the credentials and reload"
                } else {
                    ""
                }
            );
            let retry_in = self
                .backoff_until
                .map(|t| t.saturating_sub(now.mono).div_ceil(1000).max(1));
            return vec![Action::Refuse { message, retry_in }];
        }
        // No token to answer with (none, refused, or after LOGOUT), but a
        // forced renewal succeeded within the cooldown: still one forced
        // request per cooldown, whatever clients send.
        let cooldown_end = self
            .forced_ok_at
            .map(|t| t.saturating_add(ms(self.timing.cooldown)));
        if let Some(end) = cooldown_end.filter(|&end| end > now.mono) {
            return vec![Action::Refuse {
                message: "a renewal a client forced succeeded moments ago; not again within \
                          refresh_cooldown"
                    .into(),
                retry_in: Some(end.saturating_sub(now.mono).div_ceil(1000).max(1)),
            }];
        }
        let start = self.start(Op::Renew {
            invalidate,
            forced: true,
        });
        vec![start, Action::Await(self.started)]
    }

    fn start(&mut self, op: Op) -> Action {
        self.started += 1;
        self.activity = Activity::InFlight {
            op,
            logout_after: false,
        };
        Action::Start(op)
    }

    /// The transition function.
    pub fn on(&mut self, event: Event, now: Now, draw: f64) -> Vec<Action> {
        match event {
            Event::Tick => match self.activity {
                Activity::Idle { next: Some(at) } if at <= now.mono => {
                    vec![self.start(Op::Renew {
                        invalidate: false,
                        forced: false,
                    })]
                }
                _ => vec![],
            },
            Event::Refresh { admin } => {
                if self.busy() {
                    // Join the attempt under way.
                    return vec![Action::Await(self.started)];
                }
                if self.health.logged_out && !admin {
                    return vec![Action::Refuse {
                        message: "logged out; an administrator's REFRESH logs it back in".into(),
                        retry_in: None,
                    }];
                }
                if self.in_cooldown(now) {
                    return vec![Action::Current];
                }
                self.forced(false, now)
            }
            Event::Invalidate(seen) => {
                let mut actions = self.on_invalidate(seen, now);
                let attempt = actions
                    .iter()
                    .any(|a| matches!(a, Action::Start(_) | Action::Await(_)));
                if self.refused && !attempt && self.token.is_some() {
                    // Refused, and no attempt under way to replace it (a
                    // backoff runs, or the cooldown): forget it now, on disk
                    // too, or a restart would serve it again.
                    self.token = None;
                    self.restored = None;
                    self.refused = false;
                    actions.insert(
                        0,
                        Action::Save {
                            token: None,
                            health: self.health.clone(),
                        },
                    );
                }
                actions
            }
            Event::Logout => match &mut self.activity {
                Activity::InFlight { logout_after, .. } => {
                    *logout_after = true;
                    vec![Action::Await(self.started + 1)]
                }
                Activity::Persisting(p) => {
                    p.logout_after = true;
                    vec![Action::Await(self.started + 1)]
                }
                Activity::Idle { .. } => {
                    let start = self.start(Op::Logout);
                    vec![start, Action::Await(self.started)]
                }
            },
            Event::Finished(outcome) => {
                let Activity::InFlight { op, logout_after } = self.activity.clone() else {
                    // Not ours (the executor checks generations); ignore.
                    return vec![];
                };
                let (token, health) = self.result_of(op, &outcome, now);
                self.activity = Activity::Persisting(Box::new(Persisting {
                    op,
                    outcome,
                    token: token.clone(),
                    health: health.clone(),
                    logout_after,
                }));
                vec![Action::Persist { token, health }]
            }
            Event::Persisted => {
                let Activity::Persisting(p) = &self.activity else {
                    return vec![];
                };
                let p = (**p).clone();
                self.install(p.op, p.outcome, p.token, p.health, now, draw);
                let mut actions = vec![Action::Wake];
                if p.logout_after {
                    actions.push(self.start(Op::Logout));
                }
                actions
            }
            Event::ClockJump(by) => {
                let mut moved = false;
                let shift = |at: &mut Option<i64>| *at = at.map(|t| t.saturating_add(by));
                if self.restored.is_none() {
                    if let Some(t) = &self.token {
                        self.token = Some(Arc::new(shifted(t, by)));
                        moved = true;
                    }
                    shift(&mut self.refresh_at);
                    // Also a wall-clock stamp: left as it was, it would tell
                    // the next start that the clock went back.
                    shift(&mut self.health.last_refresh);
                }
                // What is on disk is stamped in the clock's old terms: after
                // a restart it would look expired (a jump forward) or live
                // past its expiry (back). Write it again, shifted. An
                // attempt in flight persists shifted stamps by itself.
                match &mut self.activity {
                    Activity::Persisting(p) => {
                        if let Outcome::Token(t) = &mut p.outcome {
                            *t = shifted(t, by);
                        }
                        if let Some(t) = &mut p.token {
                            *t = shifted(t, by);
                        }
                        shift(&mut p.health.last_refresh);
                        vec![Action::Save {
                            token: p.token.clone(),
                            health: p.health.clone(),
                        }]
                    }
                    Activity::Idle { .. } if moved => vec![Action::Save {
                        token: self.persisted_token().cloned(),
                        health: self.health.clone(),
                    }],
                    _ => vec![],
                }
            }
            Event::ClockDistrusted { behind } => {
                if let Some(original) = &self.restored {
                    self.token = Some(Arc::new(shifted(original, -behind.max(0))));
                }
                vec![]
            }
            Event::ClockTrusted { restore_stamps } => {
                if let Some(original) = self.restored.take() {
                    if restore_stamps {
                        self.token = Some(original);
                    }
                }
                vec![]
            }
            Event::Retimed(timing) => {
                self.timing = timing;
                // Replan a renewal; a retry after a failure keeps its backoff
                // (rejected credentials are not hurried by a reload).
                if let (Some(t), Activity::Idle { next: Some(_) }, 0) =
                    (self.token.clone(), &self.activity, self.health.failures)
                {
                    self.plan_renewal(&t, now, draw);
                }
                vec![]
            }
            Event::StoreLoaded(t) => {
                if self.token.is_some() || self.health.logged_out || !t.is_valid(now.wall) {
                    return vec![];
                }
                if matches!(self.activity, Activity::Idle { .. }) {
                    self.plan_renewal(&t, now, draw);
                }
                self.token = Some(Arc::new(t));
                vec![]
            }
        }
    }

    /// The record an attempt's outcome leaves on disk.
    fn result_of(&self, op: Op, outcome: &Outcome, now: Now) -> (Option<Token>, Health) {
        match outcome {
            // The failures stay: a logout does not lift the backoff of
            // rejected credentials.
            Outcome::LoggedOut { unrevoked } => (
                None,
                Health {
                    logged_out: true,
                    last_error: unrevoked.clone().or_else(|| self.health.last_error.clone()),
                    ..self.health.clone()
                },
            ),
            Outcome::Token(t) => (
                Some(t.clone()),
                Health {
                    last_refresh: Some(now.wall),
                    ..Health::default()
                },
            ),
            Outcome::Failed {
                kind,
                message,
                refresh_refused,
                ..
            } => {
                let health = Health {
                    failures: self.health.failures.saturating_add(1),
                    last_error: Some(format!("{}: {message}", kind.as_str())),
                    last_error_kind: Some(*kind),
                    // A failed REFRESH after LOGOUT leaves the provider
                    // logged in and retrying, never stuck with no attempt.
                    logged_out: false,
                    last_refresh: self.health.last_refresh,
                };
                let refused = self.refused
                    || matches!(
                        op,
                        Op::Renew {
                            invalidate: true,
                            ..
                        }
                    );
                // A failed renewal changes no token, but a refused one is
                // never kept.
                let token = if refused {
                    None
                } else if *refresh_refused {
                    self.persisted_token().map(without_refresh_grant)
                } else {
                    self.persisted_token().cloned()
                };
                (token, health)
            }
        }
    }

    /// Installs what an attempt left (as persisted) and plans the next.
    fn install(
        &mut self,
        op: Op,
        outcome: Outcome,
        token: Option<Token>,
        health: Health,
        now: Now,
        draw: f64,
    ) {
        self.finished = self.started;
        self.refused = false;
        self.health = health;
        // The cooldown belongs to the token a forced renewal gave.
        self.forced_ok_at = match (&outcome, op) {
            (Outcome::Token(_), Op::Renew { forced: true, .. }) => Some(now.mono),
            (Outcome::Token(_), _) => None,
            // Kept through LOGOUT: LOGOUT, REFRESH, LOGOUT, … is no way
            // around it.
            _ => self.forced_ok_at,
        };
        match outcome {
            Outcome::LoggedOut { .. } => {
                self.token = None;
                self.restored = None;
                self.refresh_at = None;
                self.activity = Activity::Idle { next: None };
                self.last_outcome = Some(Ok(()));
            }
            Outcome::Token(_) => {
                let t = token.expect("a new token is persisted");
                self.backoff_until = None;
                self.plan_renewal(&t, now, draw);
                self.token = Some(Arc::new(t));
                self.restored = None;
                self.last_outcome = Some(Ok(()));
            }
            Outcome::Failed {
                kind,
                message,
                retry_after,
                refresh_refused,
            } => {
                if token.is_none() {
                    // A refused token is never served again, even if its
                    // renewal failed.
                    self.token = None;
                    self.restored = None;
                } else if refresh_refused {
                    let mark = |t: &mut Option<Arc<Token>>| {
                        *t = t.take().map(|t| Arc::new(without_refresh_grant(&t)));
                    };
                    mark(&mut self.token);
                    mark(&mut self.restored);
                } // else: the slot keeps what it holds now (shifted by a
                  // clock jump, restored, or taken in late).
                let delay = match kind {
                    ErrorKind::Rejected => token::rejected_backoff(self.health.failures, draw),
                    ErrorKind::Transient | ErrorKind::BadResponse => token::transient_backoff(
                        self.health.failures,
                        self.timing.max_backoff,
                        retry_after,
                        draw,
                    ),
                };
                self.plan_in(delay, now);
                self.backoff_until = self.next_attempt();
                self.last_outcome = Some(Err((
                    format!("{}: {message}", kind.as_str()),
                    Some(delay.as_secs().max(1)),
                )));
            }
        }
    }

    // ---- queries ------------------------------------------------------

    /// The token as the store should keep it: a restored one as it was
    /// stored, not as judged against an untrusted clock.
    pub fn persisted_token(&self) -> Option<&Token> {
        self.restored.as_deref().or(self.token.as_deref())
    }

    /// The token to hand out now, if any, and its state.
    pub fn serve(&self, now: i64) -> Option<(&Arc<Token>, &'static str)> {
        if self.refused {
            return None;
        }
        let t = self.token.as_ref().filter(|t| t.is_valid(now))?;
        // A failed renewal puts the token in the window at once: the POS
        // should know that the next one may not come in time.
        let state = if self.health.failures > 0 || self.restored.is_some() {
            "renewing"
        } else {
            fresh_or_renewing(self.refresh_at.unwrap_or(t.expires_at), now)
        };
        Some((t, state))
    }

    /// What STATUS calls the provider's state.
    pub fn state(&self, now: i64) -> &'static str {
        if self.health.logged_out {
            "logged_out"
        } else if let Some((_, state)) = self.serve(now) {
            state
        } else if self.health.rejected() {
            "rejected"
        } else if self.token.is_some() && !self.refused {
            "expired"
        } else {
            // Never had one, or a client saw it refused.
            "none"
        }
    }

    /// Seconds until the next attempt, when one is planned.
    pub fn retry_in(&self, now: Now) -> Option<u64> {
        if self.health.logged_out {
            return None;
        }
        match self.activity {
            Activity::InFlight { .. } | Activity::Persisting(_) => Some(1),
            Activity::Idle { next } => {
                next.map(|t| (t.saturating_sub(now.mono)).div_ceil(1000).max(1))
            }
        }
    }

    /// When the next attempt is planned (monotonic), if idle.
    pub fn next_attempt(&self) -> Option<Mono> {
        match self.activity {
            Activity::Idle { next } => next,
            _ => None,
        }
    }

    /// Whether an attempt is under way (talking to the partner or being
    /// persisted).
    pub fn busy(&self) -> bool {
        !matches!(self.activity, Activity::Idle { .. })
    }

    /// Whether a first login may still come before `deadline` (TOKEN waits
    /// for it).
    pub fn coming_before(&self, deadline: Mono) -> bool {
        !self.health.logged_out
            && (self.busy() || self.next_attempt().is_some_and(|t| t <= deadline))
    }

    /// The outcome for clients waiting on attempt `ticket`: `None` while it
    /// has not finished.
    pub fn outcome_of(&self, ticket: u64) -> Option<Result<(), (String, Option<u64>)>> {
        (self.finished >= ticket)
            .then(|| self.last_outcome.clone())
            .flatten()
    }

    pub fn health(&self) -> &Health {
        &self.health
    }

    pub fn token(&self) -> Option<&Token> {
        self.token.as_deref()
    }

    pub fn restored(&self) -> bool {
        self.restored.is_some()
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    const TIMING: Timing = Timing {
        refresh_before: Duration::from_secs(300),
        max_backoff: Duration::from_secs(300),
        cooldown: Duration::from_secs(10),
    };
    const SCHEDULED: Op = Op::Renew {
        invalidate: false,
        forced: false,
    };
    const FORCED: Op = Op::Renew {
        invalidate: false,
        forced: true,
    };
    const REFRESH: Event = Event::Refresh { admin: false };

    fn invalidate(token: &str) -> Event {
        Event::Invalidate(Some(Secret::new(token)))
    }

    fn at(wall: i64, mono_s: u64) -> Now {
        Now {
            wall,
            mono: mono_s * 1000,
        }
    }

    fn tok(name: &str, obtained: i64, lifetime: i64) -> Token {
        Token {
            access: Secret::new(name),
            refresh: None,
            token_type: "Bearer".into(),
            scope: None,
            obtained_at: obtained,
            expires_at: obtained + lifetime,
            refresh_refused: false,
        }
    }

    fn failed(kind: ErrorKind) -> Outcome {
        Outcome::Failed {
            kind,
            message: "no".into(),
            retry_after: None,
            refresh_refused: false,
        }
    }

    /// Runs an attempt to its end: Finished, then Persisted.
    fn finish(l: &mut Lifecycle, outcome: Outcome, now: Now) -> Vec<Action> {
        let persist = l.on(Event::Finished(outcome), now, 0.0);
        assert!(matches!(persist.as_slice(), [Action::Persist { .. }]));
        l.on(Event::Persisted, now, 0.0)
    }

    #[test]
    fn first_login_within_the_window_then_renewal_before_expiry() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(1000, 0), 0.5);
        assert_eq!(l.state(1000), "none");
        assert_eq!(l.next_attempt(), Some(1000));
        assert_eq!(l.on(Event::Tick, at(1000, 0), 0.0), vec![]);
        assert_eq!(
            l.on(Event::Tick, at(1001, 1), 0.0),
            vec![Action::Start(SCHEDULED)]
        );
        // Not served before it is persisted.
        let persist = l.on(
            Event::Finished(Outcome::Token(tok("a", 1001, 3600))),
            at(1001, 1),
            0.0,
        );
        assert_eq!(l.serve(1001), None);
        assert!(matches!(
            &persist[..],
            [Action::Persist { token: Some(_), .. }]
        ));
        assert_eq!(l.on(Event::Persisted, at(1001, 1), 0.0), vec![Action::Wake]);
        assert_eq!(
            l.serve(1001).map(|(t, s)| (t.access.expose(), s)),
            Some(("a", "fresh"))
        );
        // min(3600 - 300, 80 % of 3600) = 2880 s after obtaining (jitter draw 0).
        assert_eq!(l.next_attempt(), Some(1000 + 2880 * 1000));
        assert_eq!(l.state(1001 + 2879), "fresh");
        assert_eq!(l.state(1001 + 2880), "renewing");
        assert_eq!(l.state(1001 + 3600), "expired");
    }

    #[test]
    fn clients_join_the_attempt_under_way() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        assert_eq!(
            l.on(REFRESH, at(0, 0), 0.0),
            vec![Action::Start(FORCED), Action::Await(1)]
        );
        assert_eq!(l.on(REFRESH, at(0, 0), 0.0), vec![Action::Await(1)]);
        assert_eq!(
            l.on(Event::Invalidate(None), at(0, 0), 0.0),
            vec![Action::Await(1)]
        );
        assert_eq!(l.on(Event::Tick, at(9, 9), 0.0), vec![]);
        assert_eq!(l.outcome_of(1), None);
        finish(&mut l, Outcome::Token(tok("a", 0, 100)), at(0, 0));
        assert_eq!(l.outcome_of(1), Some(Ok(())));
        assert!(
            l.serve(0).is_some(),
            "a new token is served despite the INVALIDATE"
        );
    }

    #[test]
    fn an_invalidated_token_is_never_served_again() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("old", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        assert!(l.serve(0).is_some());
        assert_eq!(
            l.on(Event::Invalidate(None), at(0, 0), 0.0),
            vec![
                Action::Start(Op::Renew {
                    invalidate: true,
                    forced: true
                }),
                Action::Await(1)
            ]
        );
        assert_eq!(l.serve(0), None);
        let persisted = l.on(Event::Finished(failed(ErrorKind::Transient)), at(0, 0), 0.0);
        assert!(matches!(
            &persisted[..],
            [Action::Persist { token: None, .. }]
        ));
        l.on(Event::Persisted, at(0, 0), 0.0);
        assert_eq!(l.serve(0), None);
        assert_eq!(l.state(0), "none");
    }

    #[test]
    fn a_failed_renewal_keeps_the_token_and_backs_off() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        l.on(REFRESH, at(10, 10), 0.0);
        finish(&mut l, failed(ErrorKind::Transient), at(10, 10));
        assert_eq!(
            l.serve(10).map(|(t, s)| (t.access.expose(), s)),
            Some(("t", "renewing"))
        );
        assert_eq!(
            l.next_attempt(),
            Some(11_000),
            "1 s after the first failure (draw 0)"
        );
        assert_eq!(
            l.outcome_of(1),
            Some(Err(("transient: no".into(), Some(1))))
        );
    }

    #[test]
    fn a_token_refused_while_a_scheduled_renewal_runs_is_dropped_when_it_fails() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        let due = l.next_attempt().expect("a renewal is planned");
        let now = Now {
            wall: (due / 1000) as i64,
            mono: due,
        };
        assert!(l.serve(now.wall).is_some());
        assert_eq!(l.on(Event::Tick, now, 0.0), vec![Action::Start(SCHEDULED)]);
        // A client reports the token refused while the renewal is out.
        assert!(matches!(
            l.on(invalidate("t"), now, 0.0).as_slice(),
            [Action::Await(_)]
        ));
        let persist = l.on(Event::Finished(failed(ErrorKind::Transient)), now, 0.0);
        assert!(
            matches!(persist.as_slice(), [Action::Persist { token: None, .. }]),
            "{persist:?}"
        );
        l.on(Event::Persisted, now, 0.0);
        assert!(l.serve(now.wall).is_none(), "never served again");
    }

    #[test]
    fn a_refused_refresh_grant_is_remembered_when_the_login_after_it_fails() {
        let held = Token {
            refresh: Some(Secret::new("rt")),
            ..tok("t", 0, 1000)
        };
        let mut l = Lifecycle::new(TIMING, Some(held), Health::default(), None, at(0, 0), 0.0);
        l.on(REFRESH, at(10, 10), 0.0);
        let outcome = Outcome::Failed {
            kind: ErrorKind::Transient,
            message: "503".into(),
            retry_after: None,
            refresh_refused: true,
        };
        let persist = l.on(Event::Finished(outcome), at(10, 10), 0.0);
        let [Action::Persist {
            token: Some(stored),
            ..
        }] = persist.as_slice()
        else {
            panic!("{persist:?}");
        };
        assert!(stored.refresh_refused && stored.refresh.is_none());
        assert_eq!(stored.access.expose(), "t");
        l.on(Event::Persisted, at(10, 10), 0.0);
        let held = l.persisted_token().unwrap();
        assert!(held.refresh_refused && held.refresh.is_none());
        assert_eq!(
            l.serve(10).map(|(t, s)| (t.access.expose(), s)),
            Some(("t", "renewing"))
        );
    }

    #[test]
    fn rejected_credentials_refuse_forced_renewals_until_the_slow_retry() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Tick, at(0, 0), 0.0);
        finish(&mut l, failed(ErrorKind::Rejected), at(0, 0));
        assert_eq!(l.state(0), "rejected");
        assert_eq!(l.next_attempt(), Some(60_000));
        for verb in [REFRESH, Event::Invalidate(None)] {
            let a = l.on(verb, at(30, 30), 0.0);
            assert!(
                matches!(
                    &a[..],
                    [Action::Refuse {
                        retry_in: Some(30),
                        ..
                    }]
                ),
                "{a:?}"
            );
        }
        assert_eq!(
            l.on(Event::Tick, at(60, 60), 0.0),
            vec![Action::Start(SCHEDULED)]
        );
        finish(&mut l, failed(ErrorKind::Rejected), at(60, 60));
        assert_eq!(l.next_attempt(), Some(180_000), "then 120 s");
    }

    #[test]
    fn logout_waits_for_the_attempt_under_way_and_stays_logged_out() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(REFRESH, at(0, 0), 0.0);
        assert_eq!(l.on(Event::Logout, at(0, 0), 0.0), vec![Action::Await(2)]);
        let after = finish(&mut l, Outcome::Token(tok("a", 0, 100)), at(0, 0));
        assert_eq!(after, vec![Action::Wake, Action::Start(Op::Logout)]);
        let persist = l.on(
            Event::Finished(Outcome::LoggedOut { unrevoked: None }),
            at(1, 1),
            0.0,
        );
        assert!(
            matches!(&persist[..], [Action::Persist { token: None, health }] if health.logged_out)
        );
        l.on(Event::Persisted, at(1, 1), 0.0);
        assert_eq!(l.outcome_of(2), Some(Ok(())));
        assert_eq!(l.state(1), "logged_out");
        assert_eq!(l.next_attempt(), None);
        assert_eq!(l.on(Event::Tick, at(99_999, 99_999), 0.0), vec![]);
        // INVALIDATE is not a way back, nor anyone's REFRESH; an
        // administrator's is.
        for verb in [Event::Invalidate(None), REFRESH] {
            assert!(matches!(
                &l.on(verb, at(2, 2), 0.0)[..],
                [Action::Refuse { retry_in: None, .. }]
            ));
        }
        // (After the cooldown of the forced renewal before the LOGOUT.)
        assert_eq!(
            l.on(Event::Refresh { admin: true }, at(10, 10), 0.0),
            vec![Action::Start(FORCED), Action::Await(3)]
        );
    }

    #[test]
    fn forced_renewals_within_the_cooldown_get_the_fresh_token() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("a", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        assert_eq!(
            l.on(REFRESH, at(1, 1), 0.0),
            vec![Action::Start(FORCED), Action::Await(1)]
        );
        finish(&mut l, Outcome::Token(tok("b", 1, 1000)), at(1, 1));
        // A storm of REFRESH and token-less INVALIDATE: no attempt.
        for verb in [REFRESH, Event::Invalidate(None), REFRESH] {
            assert_eq!(l.on(verb, at(5, 5), 0.0), vec![Action::Current]);
        }
        assert!(
            l.serve(5).is_some(),
            "a token-less INVALIDATE in the cooldown refuses nothing"
        );
        // INVALIDATE of an older token: the current one, no attempt.
        assert_eq!(l.on(invalidate("a"), at(6, 6), 0.0), vec![Action::Current]);
        // The fresh token itself refused within the cooldown: not served,
        // and no renewal before the cooldown ends, whoever asks.
        let a = l.on(invalidate("b"), at(7, 7), 0.0);
        assert!(
            matches!(
                &a[..],
                [
                    ..,
                    Action::Refuse {
                        retry_in: Some(4),
                        ..
                    }
                ]
            ),
            "{a:?}"
        );
        assert_eq!(l.serve(7), None);
        assert!(matches!(
            &l.on(REFRESH, at(8, 8), 0.0)[..],
            [Action::Refuse { .. }]
        ));
        assert_eq!(l.next_attempt(), Some(11_000));
        // After the cooldown the schedule renews.
        assert_eq!(
            l.on(Event::Tick, at(11, 11), 0.0),
            vec![Action::Start(SCHEDULED)]
        );
    }

    #[test]
    fn a_token_refused_during_a_backoff_is_forgotten_on_disk_too() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("a", 0, 10_000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        l.on(REFRESH, at(1, 1), 0.0);
        finish(&mut l, failed(ErrorKind::Transient), at(1, 1));
        let a = l.on(invalidate("a"), at(1, 1), 0.0);
        assert!(
            matches!(
                &a[..],
                [Action::Save { token: None, .. }, Action::Refuse { .. }]
            ),
            "{a:?}"
        );
        assert_eq!(l.serve(1), None);
        assert_eq!(
            l.persisted_token(),
            None,
            "a later write must not bring it back"
        );
        // Asked again: nothing left to forget, no write.
        let a = l.on(Event::Invalidate(None), at(1, 1), 0.0);
        assert!(matches!(&a[..], [Action::Refuse { .. }]), "{a:?}");
    }

    #[test]
    fn a_logout_whose_revocation_failed_says_so() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Refresh { admin: true }, at(0, 0), 0.0);
        finish(&mut l, Outcome::Token(tok("a", 0, 1000)), at(0, 0));
        l.on(Event::Logout, at(1, 1), 0.0);
        let said = "logout: revocation at the partner failed (rejected: HTTP 401)";
        finish(
            &mut l,
            Outcome::LoggedOut {
                unrevoked: Some(said.into()),
            },
            at(1, 1),
        );
        assert!(l.health().logged_out);
        assert_eq!(l.health().last_error.as_deref(), Some(said));
        assert!(l.token().is_none());
        // A clean logout leaves the last error as it was.
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Refresh { admin: true }, at(0, 0), 0.0);
        finish(&mut l, Outcome::Token(tok("a", 0, 1000)), at(0, 0));
        l.on(Event::Logout, at(1, 1), 0.0);
        finish(&mut l, Outcome::LoggedOut { unrevoked: None }, at(1, 1));
        assert!(l.health().logged_out && l.health().last_error.is_none());
    }

    #[test]
    fn logout_does_not_end_the_cooldown() {
        let admin = Event::Refresh { admin: true };
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        assert_eq!(l.on(admin.clone(), at(0, 0), 0.0)[0], Action::Start(FORCED));
        finish(&mut l, Outcome::Token(tok("a", 0, 1000)), at(0, 0));
        l.on(Event::Logout, at(1, 1), 0.0);
        finish(&mut l, Outcome::LoggedOut { unrevoked: None }, at(1, 1));
        // LOGOUT, REFRESH, LOGOUT, …: one login per cooldown.
        let a = l.on(admin.clone(), at(2, 2), 0.0);
        assert!(
            matches!(
                &a[..],
                [Action::Refuse {
                    retry_in: Some(8),
                    ..
                }]
            ),
            "{a:?}"
        );
        assert_eq!(l.on(admin, at(10, 10), 0.0)[0], Action::Start(FORCED));
    }

    #[test]
    fn scheduled_renewals_start_no_cooldown() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Tick, at(0, 0), 0.0);
        finish(&mut l, Outcome::Token(tok("a", 0, 1000)), at(0, 0));
        // The first INVALIDATE after a login is honoured.
        assert_eq!(
            l.on(invalidate("a"), at(1, 1), 0.0),
            vec![
                Action::Start(Op::Renew {
                    invalidate: true,
                    forced: true
                }),
                Action::Await(2)
            ]
        );
    }

    #[test]
    fn forced_renewals_wait_for_a_backoff_and_retry_after() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("a", 0, 10_000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        l.on(REFRESH, at(1, 1), 0.0);
        let busy = Outcome::Failed {
            kind: ErrorKind::Transient,
            message: "429".into(),
            retry_after: Some(Duration::from_secs(3600)),
            refresh_refused: false,
        };
        finish(&mut l, busy, at(1, 1));
        for verb in [REFRESH, invalidate("a"), Event::Invalidate(None)] {
            let a = l.on(verb, at(100, 100), 0.0);
            assert!(
                matches!(
                    &a[..],
                    [
                        ..,
                        Action::Refuse {
                            retry_in: Some(3501),
                            ..
                        }
                    ]
                ),
                "{a:?}"
            );
        }
        assert_eq!(
            l.on(Event::Tick, at(3601, 3601), 0.0),
            vec![Action::Start(SCHEDULED)]
        );
    }

    #[test]
    fn logout_keeps_the_slow_retry_of_rejected_credentials() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Tick, at(0, 0), 0.0);
        finish(&mut l, failed(ErrorKind::Rejected), at(0, 0));
        l.on(Event::Logout, at(1, 1), 0.0);
        finish(&mut l, Outcome::LoggedOut { unrevoked: None }, at(1, 1));
        assert_eq!(l.state(1), "logged_out");
        assert!(l.health().rejected());
        let a = l.on(Event::Refresh { admin: true }, at(2, 2), 0.0);
        assert!(
            matches!(
                &a[..],
                [Action::Refuse {
                    retry_in: Some(58),
                    ..
                }]
            ),
            "{a:?}"
        );
        assert_eq!(
            l.on(Event::Refresh { admin: true }, at(60, 60), 0.0),
            vec![Action::Start(FORCED), Action::Await(3)]
        );
    }

    #[test]
    fn clock_jumps_shift_the_token_and_an_untrusted_clock_judges_restored_ones() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 1000, 600)),
            Health::default(),
            None,
            at(1000, 0),
            0.0,
        );
        l.on(Event::ClockJump(-500), at(500, 1), 0.0);
        assert_eq!(l.token().map(|t| t.expires_at), Some(1100));
        // A stored token while the clock is 300 s behind the store.
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 1000, 600)),
            Health::default(),
            Some(300),
            at(700, 0),
            0.5,
        );
        assert_eq!(l.token().map(|t| t.expires_at), Some(1300));
        assert_eq!(l.serve(700).map(|(_, s)| s), Some("renewing"));
        assert_eq!(l.persisted_token().map(|t| t.expires_at), Some(1600));
        assert_eq!(
            l.next_attempt(),
            Some(1000),
            "renewed as soon as a partner answers"
        );
        l.on(Event::ClockJump(300), at(1000, 1), 0.0);
        assert_eq!(
            l.token().map(|t| t.expires_at),
            Some(1300),
            "a restored token is not shifted"
        );
        l.on(
            Event::ClockTrusted {
                restore_stamps: true,
            },
            at(1000, 1),
            0.0,
        );
        assert_eq!(l.token().map(|t| t.expires_at), Some(1600));
        assert!(!l.restored());
    }

    #[test]
    fn a_clock_jump_moves_every_stamp_and_asks_for_a_save() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 1000, 600)),
            Health::default(),
            None,
            at(1000, 0),
            0.0,
        );
        // Idle with a token: the stamps move and the record is written again.
        let a = l.on(Event::ClockJump(100), at(1100, 1), 0.0);
        let t = l.token().unwrap();
        assert_eq!((t.obtained_at, t.expires_at), (1100, 1700));
        assert!(matches!(&a[..], [Action::Save { token: Some(t), .. }] if t.obtained_at == 1100));
        // Nothing held: nothing to write.
        let mut empty = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        assert_eq!(empty.on(Event::ClockJump(100), at(100, 1), 0.0), vec![]);
        // A jump while an outcome is being persisted: it is installed
        // shifted, and written again shifted.
        let mut p = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        p.on(Event::Tick, at(0, 0), 0.0);
        p.on(
            Event::Finished(Outcome::Token(tok("n", 0, 600))),
            at(0, 0),
            0.0,
        );
        let a = p.on(Event::ClockJump(50), at(50, 1), 0.0);
        assert!(
            matches!(&a[..], [Action::Save { token: Some(t), health }]
                if t.obtained_at == 50 && health.last_refresh == Some(50)),
            "{a:?}"
        );
        p.on(Event::Persisted, at(50, 1), 0.0);
        assert_eq!(p.token().map(|t| t.expires_at), Some(650));
        assert_eq!(p.health().last_refresh, Some(50));
    }

    #[test]
    fn a_distrusted_clock_judges_a_restored_token_by_the_cautious_time() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 1000, 600)),
            Health::default(),
            Some(0),
            at(1000, 0),
            0.0,
        );
        assert!(l.restored());
        l.on(Event::ClockDistrusted { behind: 200 }, at(1000, 0), 0.0);
        assert_eq!(l.token().map(|t| t.expires_at), Some(1400));
        assert_eq!(l.persisted_token().map(|t| t.expires_at), Some(1600));
    }

    #[test]
    fn a_late_store_gives_nothing_expired_nor_to_a_logged_out_provider() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::StoreLoaded(tok("old", 0, 10)), at(20, 20), 0.0);
        assert_eq!(l.token(), None);
        let out = Health {
            logged_out: true,
            ..Health::default()
        };
        let mut l = Lifecycle::new(TIMING, None, out, None, at(0, 0), 0.0);
        l.on(Event::StoreLoaded(tok("s", 0, 1000)), at(5, 5), 0.0);
        assert_eq!(l.token(), None);
    }

    #[test]
    fn a_failure_keeps_the_time_of_the_last_success() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::Tick, at(0, 0), 0.0);
        finish(&mut l, Outcome::Token(tok("a", 0, 1000)), at(0, 0));
        l.on(REFRESH, at(30, 30), 0.0);
        let persist = l.on(
            Event::Finished(failed(ErrorKind::Transient)),
            at(30, 30),
            0.0,
        );
        assert!(
            matches!(&persist[..], [Action::Persist { health, .. }] if health.last_refresh == Some(0))
        );
        l.on(Event::Persisted, at(30, 30), 0.0);
        assert_eq!(l.health().last_refresh, Some(0));
        assert_eq!(l.health().failures, 1);
    }

    #[test]
    fn the_cooldown_ends_on_time_and_with_a_scheduled_renewal() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("a", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        l.on(REFRESH, at(1, 1), 0.0);
        finish(&mut l, Outcome::Token(tok("b", 1, 1000)), at(1, 1));
        assert_eq!(l.on(REFRESH, at(10, 10), 0.0)[0], Action::Current);
        // Exactly 10 s after: over.
        assert_eq!(l.on(REFRESH, at(11, 11), 0.0)[0], Action::Start(FORCED));
        finish(&mut l, Outcome::Token(tok("c", 11, 1000)), at(11, 11));
        // A scheduled renewal within the cooldown ends it: its token was
        // not forced.
        l.on(Event::Tick, at(12, 12), 0.0);
        let mut scheduled = l.clone();
        scheduled.activity = Activity::Idle { next: Some(12_000) };
        assert_eq!(
            scheduled.on(Event::Tick, at(12, 12), 0.0),
            vec![Action::Start(SCHEDULED)]
        );
        finish(
            &mut scheduled,
            Outcome::Token(tok("d", 12, 1000)),
            at(12, 12),
        );
        assert_eq!(
            scheduled.on(REFRESH, at(13, 13), 0.0)[0],
            Action::Start(FORCED)
        );
    }

    #[test]
    fn token_waits_only_for_an_attempt_that_can_come() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.5);
        // First login planned at 1 s.
        assert!(l.coming_before(1000));
        assert!(!l.coming_before(999));
        l.on(Event::Tick, at(1, 1), 0.0);
        assert!(l.busy() && l.coming_before(0), "in flight");
        finish(&mut l, Outcome::LoggedOut { unrevoked: None }, at(1, 1));
        assert!(!l.busy());
        assert!(!l.coming_before(u64::MAX), "logged out: nothing comes");
    }

    #[test]
    fn a_late_store_gives_a_token_to_a_provider_without_one() {
        let mut l = Lifecycle::new(TIMING, None, Health::default(), None, at(0, 0), 0.0);
        l.on(Event::StoreLoaded(tok("s", 0, 1000)), at(5, 5), 0.0);
        assert_eq!(l.serve(5).map(|(t, _)| t.access.expose()), Some("s"));
        assert_eq!(l.next_attempt(), Some(700_000));
        // Not over a token it has.
        l.on(Event::StoreLoaded(tok("other", 0, 2000)), at(5, 5), 0.0);
        assert_eq!(l.serve(5).map(|(t, _)| t.access.expose()), Some("s"));
    }

    #[test]
    fn retiming_replans_the_renewal() {
        let mut l = Lifecycle::new(
            TIMING,
            Some(tok("t", 0, 1000)),
            Health::default(),
            None,
            at(0, 0),
            0.0,
        );
        assert_eq!(l.next_attempt(), Some(700_000));
        let t = Timing {
            refresh_before: Duration::from_secs(500),
            ..TIMING
        };
        l.on(Event::Retimed(t), at(0, 0), 0.0);
        assert_eq!(l.next_attempt(), Some(500_000));
    }
}
