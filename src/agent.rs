//! The daemon put together: store → scheduler → socket server, then the
//! main thread waits for signals (SIGHUP reloads, SIGTERM/SIGINT stop) and
//! tells systemd what happens.

use crate::config::{ConfigError, Settings};
use crate::scheduler::Scheduler;
use crate::server::{self, Server};
use crate::store::Store;
use crate::{metrics, notify};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Why the agent could not start (the config was already checked).
#[derive(Debug)]
pub enum StartError {
    /// The socket could not be bound, or a thread not started.
    Io(String),
    /// A setting could not be put into effect (e.g. a CA file).
    Config(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Io(m) | StartError::Config(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartError {}

/// A running agent.
pub struct Agent {
    scheduler: Arc<Scheduler>,
    server: Server,
    settings: Settings,
    signals: Signals,
}

impl Agent {
    /// Opens the store, restores tokens, binds the socket and starts the
    /// threads. Returns once the socket is bound: ready to serve.
    pub fn start(settings: Settings) -> Result<Agent, StartError> {
        // Before the socket exists, so that a SIGTERM sent as soon as it
        // appears is handled, not fatal.
        let signals = Signals::new([SIGHUP, SIGINT, SIGTERM])
            .map_err(|e| StartError::Io(format!("installing signal handlers: {e}")))?;
        // Bound first: a second agent on the same socket must stop here,
        // before it touches the first one's store. Connections wait in the
        // backlog until the server thread accepts them.
        let listener = server::bind(&settings.agent).map_err(|e| {
            StartError::Io(format!("binding {}: {e}", settings.agent.socket.display()))
        })?;
        let protection = &settings.agent.store;
        let (store, store_error) = match Store::open(&settings.agent.state_dir, protection) {
            Ok(s) => (s, None),
            Err(e) => {
                log::error!(
                    "store: {e}; running with tokens in memory only, trying again at each change"
                );
                (
                    Store::unopened(&settings.agent.state_dir, protection),
                    Some(e),
                )
            }
        };
        let scheduler = Scheduler::new(&settings, Some(store)).map_err(StartError::Config)?;
        if let Some(e) = store_error {
            // STATUS shows it until a write works; no secret in it.
            scheduler.set_store_error(e);
        }
        scheduler
            .spawn()
            .map_err(|e| StartError::Io(format!("starting the refresh thread: {e}")))?;
        if let Some(path) = &settings.agent.metrics_file {
            metrics::spawn(Arc::clone(&scheduler), path.clone())
                .map_err(|e| StartError::Io(format!("starting the metrics thread: {e}")))?;
        }
        let server = Server::start(listener, &settings.agent.socket, Arc::clone(&scheduler))
            .map_err(|e| StartError::Io(format!("starting the socket thread: {e}")))?;
        log::info!(
            "listening on {} with {} provider{}",
            settings.agent.socket.display(),
            settings.providers.len(),
            if settings.providers.len() == 1 {
                ""
            } else {
                "s"
            }
        );
        Ok(Agent {
            scheduler,
            server,
            settings,
            signals,
        })
    }

    pub fn scheduler(&self) -> &Arc<Scheduler> {
        &self.scheduler
    }

    /// Applies a new config; a refused one leaves the old in force.
    pub fn reload(&mut self, new: Result<Settings, ConfigError>) {
        let new = match new {
            Ok(s) => s,
            Err(e) => {
                log::error!("reload refused, the old config stays in force: {e}");
                self.scheduler.set_config_error(Some(e.to_string()));
                return;
            }
        };
        if new.agent.socket != self.settings.agent.socket
            || new.agent.state_dir != self.settings.agent.state_dir
            || new.agent.store != self.settings.agent.store
            || new.agent.metrics_file != self.settings.agent.metrics_file
        {
            log::warn!(
                "reload: socket, state_dir, store_key, persist_refresh_tokens and metrics_file \
                 changes take effect at the next start"
            );
        }
        match self.scheduler.reload(&new) {
            Ok(what) => {
                log::info!("reloaded: {what}");
                self.settings = new;
            }
            Err(e) => {
                log::error!("reload refused, the old config stays in force: {e}");
                self.scheduler.set_config_error(Some(e));
            }
        }
    }

    /// Stops accepting, lets a write in progress finish, flushes the store
    /// and removes the socket.
    pub fn stop(self) {
        notify::stopping();
        self.server.stop();
        self.scheduler.shutdown();
        log::info!("stopped");
    }

    /// Pings systemd's watchdog every `period` while the agent is healthy:
    /// the refresh thread runs and the socket answers a PING through the
    /// whole server path. When it is not, systemd's WatchdogSec= restarts us.
    fn start_watchdog(&self, period: Duration) -> Result<(), StartError> {
        let scheduler = Arc::clone(&self.scheduler);
        let socket = self.settings.agent.socket.clone();
        let mut failing = false;
        thread::Builder::new()
            .name("watchdog".into())
            .stack_size(128 * 1024)
            .spawn(move || loop {
                thread::sleep(period);
                let healthy = scheduler.is_healthy() && socket_answers(&socket);
                if healthy {
                    notify::send("WATCHDOG=1");
                } else if !failing {
                    log::error!("watchdog: the agent is not healthy; not telling systemd it is");
                }
                failing = !healthy;
            })
            .map(|_| ())
            .map_err(|e| StartError::Io(format!("starting the watchdog thread: {e}")))
    }

    /// Serves until SIGTERM or SIGINT; on SIGHUP calls `reload_config` and
    /// applies its result.
    pub fn run_until_signal(
        mut self,
        mut reload_config: impl FnMut() -> Result<Settings, ConfigError>,
    ) -> Result<(), StartError> {
        notify::ready(&self.scheduler.summary());
        if let Some(interval) = notify::watchdog_interval() {
            self.start_watchdog(interval / 2)?;
        }
        while let Some(signal) = self.signals.forever().next() {
            match signal {
                SIGHUP => {
                    log::info!("SIGHUP: reloading the config");
                    notify::reloading();
                    self.reload(reload_config());
                    notify::ready(&self.scheduler.summary());
                }
                _ => {
                    let name = if signal == SIGINT {
                        "SIGINT"
                    } else {
                        "SIGTERM"
                    };
                    log::info!("{name}: stopping");
                    break;
                }
            }
        }
        self.stop();
        Ok(())
    }
}

/// Whether the agent's own socket answers a PING within a few seconds. A
/// "too many connections" answer counts too: the server is alive.
fn socket_answers(path: &Path) -> bool {
    let attempt = || -> std::io::Result<bool> {
        let mut s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"PING\n")?;
        let mut line = String::new();
        BufReader::new(s).take(4096).read_line(&mut line)?;
        Ok(line.starts_with('{'))
    };
    attempt().unwrap_or(false)
}

use std::io::Read;
