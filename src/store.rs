//! The sled store under the state directory: per provider, the token and its
//! health survive restarts. One key per provider (`provider/<name>`) holds a
//! JSON record, so a token and its health change together in one write; each
//! write is flushed before the caller goes on (and so before a new token is
//! served). Secrets from the config are never stored.

use crate::token::Token;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

const SCHEMA_KEY: &[u8] = b"schema_version";
const SCHEMA_VERSION: &[u8] = b"1";
const PREFIX: &str = "provider/";

/// How a provider has been doing, as shown by STATUS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Unix seconds of the last successful login or renewal.
    pub last_refresh: Option<i64>,
    /// Classified message of the last failure, cleared by a success.
    pub last_error: Option<String>,
    /// "transient", "rejected" or "bad_response".
    pub last_error_kind: Option<String>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Set by LOGOUT, cleared by REFRESH.
    pub logged_out: bool,
}

/// What is kept for one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// `ProviderSettings::identity()` when the token was obtained: a token is
    /// not reused for another account after the config changed.
    pub identity: String,
    pub token: Option<Token>,
    pub health: Health,
}

/// A store failure, with what was being done.
#[derive(Debug)]
pub struct StoreError {
    pub context: String,
    pub source: sled::Error,
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// Whether the database itself looks damaged (worth moving aside), as
    /// opposed to locked by another process, unreadable for permissions,
    /// or written by a newer agent — which a fresh database would not fix
    /// or would wrongly discard.
    pub fn is_damage(&self) -> bool {
        match &self.source {
            sled::Error::Corruption { .. } | sled::Error::ReportableBug(_) => true,
            sled::Error::Unsupported(what) => what != SCHEMA_ERROR,
            sled::Error::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

const SCHEMA_ERROR: &str = "schema version";

pub struct Store {
    /// `None` after a write failed and reopening has not worked yet.
    db: std::sync::Mutex<Option<sled::Db>>,
    path: PathBuf,
    /// A write failed: sled 0.34 keeps failing every later write of that
    /// database (its first I/O error sticks) even once the disk has room or
    /// is writable again, so the next write reopens it first.
    failed: std::sync::atomic::AtomicBool,
}

/// How long a reopen waits for sled to release the old database's file
/// lock (it does so when its last internal reference goes, which its
/// background threads may hold a moment longer).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

impl Store {
    /// Opens (or creates) the database in `<state_dir>/db`. The state
    /// directory is created 0700 when missing.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        let db = open_checked(state_dir)?;
        Ok(Store {
            db: std::sync::Mutex::new(Some(db)),
            path: state_dir.join("db"),
            failed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// A store that could not be opened (a read-only or full disk, say):
    /// every use tries to open it again, so that tokens reach the disk
    /// once it works. Until then each use fails with the reason.
    pub fn unopened(state_dir: &Path) -> Store {
        Store {
            db: std::sync::Mutex::new(None),
            path: state_dir.join("db"),
            failed: std::sync::atomic::AtomicBool::new(true),
        }
    }
}

/// Creates the state directory when missing, opens the database in it and
/// checks (or writes) its schema version.
fn open_checked(state_dir: &Path) -> Result<sled::Db, StoreError> {
    let path = state_dir.join("db");
    let err = |context: String| move |source| StoreError { context, source };
    if !state_dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .map_err(|e| StoreError {
                context: format!("creating {}", state_dir.display()),
                source: sled::Error::Io(e),
            })?;
    }
    let db = open_db(&path)?;
    match db
        .get(SCHEMA_KEY)
        .map_err(err("reading schema version".into()))?
    {
        None => {
            db.insert(SCHEMA_KEY, SCHEMA_VERSION)
                .map_err(err("writing schema version".into()))?;
            db.flush()
                .map_err(err(format!("flushing {}", path.display())))?;
        }
        Some(v) if v.as_ref() == SCHEMA_VERSION => {}
        Some(v) => {
            return Err(StoreError {
                context: format!(
                    "{} has schema version {:?}, this agent knows {:?}",
                    path.display(),
                    String::from_utf8_lossy(&v),
                    String::from_utf8_lossy(SCHEMA_VERSION)
                ),
                source: sled::Error::Unsupported(SCHEMA_ERROR.into()),
            })
        }
    }
    Ok(db)
}

impl Store {
    /// Runs `f` on the database, reopening it first when an earlier write
    /// failed; a failure of `f` marks it for reopening.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering;
        let mut slot = self.db.lock().unwrap_or_else(|p| p.into_inner());
        if self.failed.load(Ordering::SeqCst) {
            // Drop the stuck database before opening the files again.
            drop(slot.take());
            let start = std::time::Instant::now();
            let state_dir = self.path.parent().unwrap_or(Path::new("."));
            *slot = Some(loop {
                match open_checked(state_dir) {
                    Ok(db) => break db,
                    Err(e)
                        if e.source.to_string().contains("acquire lock")
                            && start.elapsed() < REOPEN_WAIT =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    Err(e) => return Err(e),
                }
            });
            self.failed.store(false, Ordering::SeqCst);
        }
        let db = slot.as_ref().expect("reopened above");
        let result = f(db);
        if result.is_err() {
            self.failed.store(true, Ordering::SeqCst);
        }
        result
    }

    /// Opens the store; if it cannot be opened, moves the broken database
    /// aside and starts a fresh one. `Err` only when even that fails.
    pub fn open_or_recover(state_dir: &Path) -> Result<Store, StoreError> {
        match Store::open(state_dir) {
            Ok(s) => Ok(s),
            Err(e) if e.is_damage() => {
                let db = state_dir.join("db");
                if !db.exists() {
                    return Err(e);
                }
                let aside = state_dir.join(format!("db.broken-{}", crate::timefmt::now_unix()));
                log::error!(
                    "store: {e}; moving it to {} and starting a fresh one",
                    aside.display()
                );
                std::fs::rename(&db, &aside).map_err(|io| StoreError {
                    context: format!("moving {} aside", db.display()),
                    source: sled::Error::Io(io),
                })?;
                Store::open(state_dir)
            }
            Err(e) => Err(e),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every stored record. Unreadable records are skipped with a warning
    /// (they will be overwritten by the next success).
    pub fn load_all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let mut out = Vec::new();
        let items: Vec<_> = self.with_db(|db| Ok(db.scan_prefix(PREFIX).collect()))?;
        for item in items {
            let (k, v) = item.map_err(|source| StoreError {
                context: "reading records".into(),
                source,
            })?;
            let name = String::from_utf8_lossy(&k[PREFIX.len()..]).into_owned();
            match serde_json::from_slice::<Record>(&v) {
                Ok(r) => out.push((name, r)),
                Err(e) => log::warn!("{name}: stored record unreadable ({e}), ignoring it"),
            }
        }
        Ok(out)
    }

    /// Writes one provider's record and flushes it to disk.
    pub fn save(&self, name: &str, record: &Record) -> Result<(), StoreError> {
        let value = serde_json::to_vec(record).expect("a record always serialises");
        self.with_db(|db| {
            db.insert(key(name), value).map_err(|source| StoreError {
                context: format!("writing {name}"),
                source,
            })?;
            self.flush_db(db)
        })
    }

    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.with_db(|db| {
            db.remove(key(name)).map_err(|source| StoreError {
                context: format!("removing {name}"),
                source,
            })?;
            self.flush_db(db)
        })
    }

    pub fn flush(&self) -> Result<(), StoreError> {
        self.with_db(|db| self.flush_db(db))
    }

    fn flush_db(&self, db: &sled::Db) -> Result<(), StoreError> {
        db.flush().map(|_| ()).map_err(|source| StoreError {
            context: format!("flushing {}", self.path.display()),
            source,
        })
    }
}

fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    sled::Config::new()
        .path(path)
        // Tokens are few and small; keep the page cache and segments small.
        .cache_capacity(256 * 1024)
        .segment_size(segment_size(path))
        // We flush after every change ourselves; no background flusher.
        .flush_every_ms(None)
        .open()
        .map_err(|source| StoreError {
            context: format!("opening {}", path.display()),
            source,
        })
}

/// The segment size of a database created now. Measured (BENCHMARKS.md):
/// 10,000 refreshes leave ~330 KiB on disk with 64 KiB segments against
/// 2.5 MiB with sled's 512 KiB; smaller segments save a little more space but
/// not writes, and lower sled's limit for a page kept inline in the log
/// (a quarter segment) below what a few large JWTs with refresh tokens need.
const NEW_SEGMENT_SIZE: usize = 64 * 1024;

/// The segment size to open the database at `path` with. sled refuses a
/// database created with another segment size (`Unsupported`, which
/// [`StoreError::is_damage`] would treat as damage and move aside), so an
/// existing database keeps the one recorded in its `conf` file
/// (`segment_size: N` lines, then a CRC).
fn segment_size(path: &Path) -> usize {
    std::fs::read(path.join("conf"))
        .ok()
        .and_then(|bytes| {
            String::from_utf8_lossy(&bytes)
                .lines()
                .find_map(|l| l.strip_prefix("segment_size: "))
                .and_then(|v| v.trim().parse::<usize>().ok())
        })
        // What sled itself accepts; anything else is for sled to report.
        .filter(|s| s.is_power_of_two() && (256..=1 << 24).contains(s))
        .unwrap_or(NEW_SEGMENT_SIZE)
}

fn key(name: &str) -> Vec<u8> {
    format!("{PREFIX}{name}").into_bytes()
}

use std::os::unix::fs::DirBuilderExt;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("saa-store-{}", crate::rand::hex(12)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Opens a store just closed in this process. sled releases its file
    /// lock only when the last reference to the database goes, and some
    /// are dropped later by its background threads and epoch-based
    /// reclamation: retry while the lock is still held.
    fn reopen(dir: &Path) -> Store {
        let start = std::time::Instant::now();
        loop {
            match Store::open(dir) {
                Err(e)
                    if e.to_string().contains("could not acquire lock")
                        && start.elapsed() < std::time::Duration::from_secs(10) =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    fn record() -> Record {
        Record {
            identity: "makeleaps https://x abc".into(),
            token: Some(Token {
                access: Secret::new("tok"),
                refresh: Some(Secret::new("ref")),
                token_type: "Bearer".into(),
                scope: Some("read".into()),
                obtained_at: 10,
                expires_at: 20,
            }),
            health: Health {
                last_refresh: Some(10),
                failures: 0,
                ..Health::default()
            },
        }
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempdir();
        {
            let s = Store::open(&dir).unwrap();
            s.save("a", &record()).unwrap();
            s.save("b", &Record::default()).unwrap();
            s.remove("b").unwrap();
        }
        let s = reopen(&dir);
        let all = s.load_all().unwrap();
        assert_eq!(all, vec![("a".to_owned(), record())]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_unopened_store_opens_at_first_use() {
        let dir = tempdir();
        let blocker = dir.join("blocker");
        std::fs::write(&blocker, b"a file where the state dir should be").unwrap();
        let s = Store::unopened(&blocker);
        assert!(s.save("a", &record()).is_err());
        // The obstacle goes: the next use opens the database and writes.
        std::fs::remove_file(&blocker).unwrap();
        s.save("a", &record()).unwrap();
        assert_eq!(s.load_all().unwrap(), vec![("a".to_owned(), record())]);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keeps_the_segment_size_a_database_was_created_with() {
        let dir = tempdir();
        {
            // As an older agent might have: sled's default 512 KiB segments.
            let db = sled::Config::new().path(dir.join("db")).open().unwrap();
            db.insert(SCHEMA_KEY, SCHEMA_VERSION).unwrap();
            db.flush().unwrap();
        }
        assert_eq!(segment_size(&dir.join("db")), 512 * 1024);
        let s = reopen(&dir);
        s.save("a", &record()).unwrap();
        drop(s);
        assert_eq!(reopen(&dir).load_all().unwrap().len(), 1);
        assert_eq!(segment_size(&dir.join("fresh")), NEW_SEGMENT_SIZE);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn creates_state_dir_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir().join("state");
        Store::open(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_broken_database_is_moved_aside() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        // Garbage where sled expects its config file.
        std::fs::write(dir.join("db/conf"), b"\xff\xfe not a sled config").unwrap();
        std::fs::write(dir.join("db/db"), b"garbage").unwrap();
        let s = Store::open_or_recover(&dir).unwrap();
        s.save("a", &record()).unwrap();
        let moved = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("db.broken-")
            })
            .count();
        assert_eq!(moved, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
