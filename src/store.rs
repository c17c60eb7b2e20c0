//! The store under the state directory: per provider, the token and its
//! health survive restarts and power cuts. One sled key per provider
//! (`provider/<name>`) holds a JSON record, so a token and its health change
//! together in one write; each write is flushed and fsynced before the caller
//! goes on (and so before a new token is served), and then copied whole into
//! the [`mirror`], which restores what a torn sled write lost. Secrets from
//! the config are never stored.
//!
//! With `[agent] store_key` every record is [`seal`]ed (sled and the mirror
//! hold the same sealed bytes); without one, records are plain JSON and
//! hold no refresh token unless `persist_refresh_tokens = true`. A
//! database that may hold more in plain text than the current settings
//! allow (written by an older agent, or before the key was set) is
//! rewritten at open into a fresh one, and the old one deleted: sled keeps
//! superseded values in its log until it reuses the segment.

mod mirror;
mod seal;

use crate::token::Token;
use mirror::{Mirror, Raw};
use seal::Sealer;
pub use seal::StoreKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const SCHEMA_KEY: &[u8] = b"schema_version";
/// The number of the last write (u64 big-endian), written with each record.
const SEQ_KEY: &[u8] = b"seq";
const SCHEMA_VERSION: &[u8] = b"1";
/// What every record of the database has been written as since it was
/// created: one [`Level`] byte. Absent in an older agent's database.
const WRITTEN_KEY: &[u8] = b"written";
const PREFIX: &str = "provider/";

/// What may reach the store in plain text, from most to least: ordered, so
/// that a database written at a lower level than the settings ask for is
/// rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    /// Plain records with refresh tokens (and an older agent's database).
    Plain = 0,
    /// Plain records without refresh tokens.
    NoRefresh = 1,
    /// Sealed records only.
    Sealed = 2,
}

impl Level {
    fn from_byte(b: Option<&[u8]>) -> Level {
        match b {
            Some([2]) => Level::Sealed,
            Some([1]) => Level::NoRefresh,
            _ => Level::Plain,
        }
    }
}

/// How records are written: from `[agent] store_key` and
/// `persist_refresh_tokens`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protection {
    /// Seal every record with this key.
    pub key: Option<StoreKey>,
    /// Keep refresh tokens in stored records.
    pub keep_refresh: bool,
}

/// [`Protection`] ready for use.
struct Codec {
    sealer: Option<Sealer>,
    keep_refresh: bool,
}

/// Records as read from the files.
struct Decoded {
    records: BTreeMap<String, Record>,
    /// Sealed records that do not open (another key, or no key): kept as
    /// they are until a write for their provider replaces them.
    unopened: Raw,
    /// Something is in plain text that the settings do not allow.
    exposed: bool,
}

impl Codec {
    fn new(p: &Protection) -> Codec {
        Codec {
            sealer: p.key.as_ref().map(Sealer::new),
            keep_refresh: p.keep_refresh,
        }
    }

    fn level(&self) -> Level {
        match (&self.sealer, self.keep_refresh) {
            (Some(_), _) => Level::Sealed,
            (None, false) => Level::NoRefresh,
            (None, true) => Level::Plain,
        }
    }

    /// The bytes stored for `name`'s record.
    fn encode(&self, name: &str, record: &Record) -> Result<Vec<u8>, StoreError> {
        let json = if self.keep_refresh {
            serde_json::to_vec(record)
        } else {
            let mut r = record.clone();
            if let Some(t) = r.token.as_mut() {
                t.refresh = None;
            }
            serde_json::to_vec(&r)
        }
        .expect("a record always serialises");
        match &self.sealer {
            None => Ok(json),
            Some(s) => s.seal(key(name).as_slice(), &json).map_err(|_| StoreError {
                context: "sealing a record".into(),
                source: sled::Error::Io(std::io::Error::other("no random bytes for a nonce")),
            }),
        }
    }

    fn encode_all(&self, d: &Decoded) -> Result<Raw, StoreError> {
        let mut raw = d.unopened.clone();
        for (n, r) in &d.records {
            raw.insert(n.clone(), self.encode(n, r)?);
        }
        Ok(raw)
    }

    /// Opens and parses every record. A plain record that does not parse is
    /// skipped with a warning (the next success overwrites it).
    fn decode_all(&self, raw: &Raw) -> Decoded {
        let mut d = Decoded {
            records: BTreeMap::new(),
            unopened: Raw::new(),
            exposed: false,
        };
        for (name, bytes) in raw {
            let json = if seal::is_sealed(bytes) {
                match self.sealer.as_ref().and_then(|s| s.open(&key(name), bytes)) {
                    Some(json) => json,
                    None => {
                        d.unopened.insert(name.clone(), bytes.clone());
                        continue;
                    }
                }
            } else {
                d.exposed |= self.sealer.is_some();
                bytes.clone()
            };
            match serde_json::from_slice::<Record>(&json) {
                Ok(r) => {
                    let refresh = r.token.as_ref().is_some_and(|t| t.refresh.is_some());
                    d.exposed |= !seal::is_sealed(bytes) && refresh && !self.keep_refresh;
                    d.records.insert(name.clone(), r);
                }
                Err(e) => log::warn!("{name}: stored record unreadable ({e}), ignoring it"),
            }
        }
        d
    }
}

/// How a provider has been doing, as shown by STATUS.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// Unix seconds of the last successful login or renewal.
    pub last_refresh: Option<i64>,
    /// Classified message of the last failure, cleared by a success.
    pub last_error: Option<String>,
    /// Stored as "transient", "rejected" or "bad_response".
    pub last_error_kind: Option<crate::providers::ErrorKind>,
    /// Consecutive failed attempts.
    pub failures: u32,
    /// Set by LOGOUT, cleared by REFRESH.
    pub logged_out: bool,
}

impl Health {
    /// Whether the partner refused the credentials at the last attempt.
    pub fn rejected(&self) -> bool {
        self.last_error_kind == Some(crate::providers::ErrorKind::Rejected)
    }
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
    /// Whether another open database holds the files: another agent, or
    /// this one's database of a failed write that sled has not let go of
    /// yet (see [`open_checked`]).
    pub fn is_locked(&self) -> bool {
        matches!(&self.source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }

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
    state_dir: PathBuf,
    codec: Codec,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` before the first open worked, and after a write failed:
    /// sled 0.34 keeps failing every later write of a database once one
    /// failed (its first I/O error sticks) even when the disk has room or
    /// is writable again, so the next use opens the files afresh.
    open: Option<Open>,
    /// Every provider's record as last written (or attempted): the truth
    /// while the agent runs. `None` until the disk could be read once.
    records: Option<BTreeMap<String, Record>>,
    /// What is (or is to be) on disk for each record of `records`, and for
    /// the sealed records that did not open: the bytes sled and the mirror
    /// both hold.
    raw: Raw,
    /// Numbers every write of the whole state; of two copies, the one with
    /// the higher number is the newer.
    seq: u64,
    /// A write failed since the last whole write: the next one writes
    /// every record, in sled and in the mirror.
    behind: bool,
}

struct Open {
    db: sled::Db,
    /// sled's data file, for the fsync sled leaves out (it only calls
    /// `sync_file_range`). fsync flushes the inode whichever descriptor
    /// wrote to it.
    data: File,
    mirror: Mirror,
}

/// What opening the files found.
struct Found {
    open: Open,
    seq: u64,
    records: BTreeMap<String, Record>,
    raw: Raw,
    /// How many sealed records did not open.
    unopened: usize,
}

/// How long a reopen waits for sled to release the old database's file
/// lock (it does so when its last internal reference goes, which its
/// background threads may hold a moment longer).
const REOPEN_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn io_error(context: String) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError {
        context,
        source: sled::Error::Io(e),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl Store {
    /// Opens (or creates) the store in `state_dir` (created 0700 when
    /// missing): sled's database in `db/` and its mirror beside it. A
    /// damaged database is moved aside (replacing one moved aside before)
    /// and its records are restored from the mirror; so are those of a
    /// database that opens with older records than the mirror (a power cut
    /// tore its last write). `Err` when the files cannot be opened at all
    /// (a read-only or full disk, a lock held by another agent, a newer
    /// schema).
    ///
    /// Records are written as `protection` says; stored records that do not
    /// open with its key are treated as absent (one warning).
    pub fn open(state_dir: &Path, protection: &Protection) -> Result<Store, StoreError> {
        let codec = Codec::new(protection);
        let found = open_files(state_dir, &codec)?;
        warn_unopened(&codec, found.unopened);
        Ok(Store {
            state_dir: state_dir.to_owned(),
            codec,
            inner: Mutex::new(Inner {
                open: Some(found.open),
                records: Some(found.records),
                raw: found.raw,
                seq: found.seq,
                behind: false,
            }),
        })
    }

    /// A store that could not be opened (a read-only or full disk, say):
    /// every use tries to open it again, so that tokens reach the disk
    /// once it works. Until then each use fails with the reason.
    pub fn unopened(state_dir: &Path, protection: &Protection) -> Store {
        Store {
            state_dir: state_dir.to_owned(),
            codec: Codec::new(protection),
            inner: Mutex::new(Inner {
                open: None,
                records: None,
                raw: Raw::new(),
                seq: 0,
                behind: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens the files when they are not open. The first time, the records
    /// found there become the store's; later (after a failed write) the
    /// records in memory are newer and are all written at the next write.
    fn ensure_open(&self, inner: &mut Inner) -> Result<(), StoreError> {
        if inner.open.is_some() {
            return Ok(());
        }
        let start = std::time::Instant::now();
        let found = loop {
            match open_files(&self.state_dir, &self.codec) {
                Ok(found) => break found,
                // The database of the failed write is still being let go.
                Err(e)
                    if inner.records.is_some()
                        && e.is_locked()
                        && start.elapsed() < REOPEN_WAIT =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        if inner.records.is_none() {
            warn_unopened(&self.codec, found.unopened);
            inner.records = Some(found.records);
            inner.raw = found.raw;
            inner.seq = found.seq;
        } else {
            inner.seq = inner.seq.max(found.seq);
            inner.behind = true;
        }
        inner.open = Some(found.open);
        Ok(())
    }

    /// sled's database directory.
    pub fn path(&self) -> PathBuf {
        self.state_dir.join("db")
    }

    /// Every stored record.
    pub fn load_all(&self) -> Result<Vec<(String, Record)>, StoreError> {
        let mut inner = self.lock();
        self.ensure_open(&mut inner)?;
        let records = inner.records.as_ref().expect("read when opened");
        Ok(records
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    /// Writes one provider's record; once this returns `Ok` it is durable.
    pub fn save(&self, name: &str, record: &Record) -> Result<(), StoreError> {
        self.change(name, Some(record))
    }

    /// Forgets a provider's record; durable once this returns `Ok`.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        self.change(name, None)
    }

    fn change(&self, name: &str, record: Option<&Record>) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let opened = self.ensure_open(&mut inner);
        let had_raw = inner.raw.contains_key(name);
        // Never read: there is nothing in memory to change yet.
        let Some(records) = inner.records.as_mut() else {
            return opened;
        };
        let changed = match record {
            Some(r) => records.insert(name.to_owned(), r.clone()).as_ref() != Some(r),
            None => records.remove(name).is_some() | had_raw,
        };
        if changed {
            match record {
                Some(r) => match self.codec.encode(name, r) {
                    Ok(bytes) => {
                        inner.raw.insert(name.to_owned(), bytes);
                    }
                    Err(e) => {
                        inner.behind = true;
                        return Err(e);
                    }
                },
                None => {
                    inner.raw.remove(name);
                }
            }
        }
        if let Err(e) = opened {
            inner.behind = true;
            return Err(e);
        }
        if !changed && !inner.behind {
            return Ok(());
        }
        self.write(&mut inner, name)
    }

    /// Writes the state in memory: `name`'s record (every record when
    /// behind) and the sequence number into sled in one batch, flushed and
    /// fsynced; then the whole state into the mirror, fsynced. Two fsyncs.
    fn write(&self, inner: &mut Inner, name: &str) -> Result<(), StoreError> {
        inner.seq += 1;
        let seq = inner.seq;
        let behind = inner.behind;
        let db_path = self.path();
        let records = &inner.raw;
        let open = inner.open.as_mut().expect("written only when open");
        let result = (|| {
            let mut batch = sled::Batch::default();
            if behind {
                for k in open.db.scan_prefix(PREFIX).keys() {
                    batch.remove(k.map_err(|source| StoreError {
                        context: format!("reading {}", db_path.display()),
                        source,
                    })?);
                }
                for (n, r) in records {
                    batch.insert(key(n), r.as_slice());
                }
            } else {
                match records.get(name) {
                    Some(r) => batch.insert(key(name), r.as_slice()),
                    None => batch.remove(key(name)),
                }
            }
            batch.insert(SEQ_KEY, &seq.to_be_bytes()[..]);
            open.db.apply_batch(batch).map_err(|source| StoreError {
                context: format!("writing to {}", db_path.display()),
                source,
            })?;
            sync(&open.db, &open.data, &db_path)?;
            open.mirror
                .write(seq, records)
                .map_err(io_error("writing the store's mirror".into()))
        })();
        match result {
            Ok(()) => inner.behind = false,
            Err(_) => {
                inner.behind = true;
                inner.open = None;
            }
        }
        result
    }

    /// Makes sure everything is on disk (at shutdown); writes the whole
    /// state again if a write failed meanwhile.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.records.is_none() {
            return Ok(());
        }
        if inner.behind || inner.open.is_none() {
            self.ensure_open(&mut inner)?;
            inner.behind = true;
            return self.write(&mut inner, "");
        }
        let open = inner.open.as_ref().expect("checked above");
        sync(&open.db, &open.data, &self.path())
    }
}

/// sled's flush, then the fsync it leaves out.
fn sync(db: &sled::Db, data: &File, db_path: &Path) -> Result<(), StoreError> {
    db.flush().map_err(|source| StoreError {
        context: format!("flushing {}", db_path.display()),
        source,
    })?;
    data.sync_all().map_err(io_error(format!(
        "syncing {}",
        db_path.join("db").display()
    )))
}

/// The one line a start logs about stored records that did not open.
fn warn_unopened(codec: &Codec, n: usize) {
    if n == 0 {
        return;
    }
    let why = match codec.sealer {
        Some(_) => "do not open with agent.store_key (sealed with another key?)",
        None => "are sealed, and agent.store_key is not set",
    };
    log::warn!(
        "store: {n} stored record{} {why}; treating their tokens as absent, so those providers \
         log in afresh and their new tokens replace the records",
        plural(n)
    );
}

/// Opens the mirror and sled's database in `state_dir`, recovering as
/// [`Store::open`] describes, and makes durable whatever opening created
/// or renamed. A database that may hold in plain text more than `codec`
/// allows is rewritten (see [`rewrite`]).
///
/// Whatever existed before (a state dir made by hand as 0755 under umask
/// 022, files of an older version), the state dir and every folder in it
/// end 0700 and every file 0600, before anything is read.
fn make_private(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(dir)?;
    let want = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        // A link is not followed; sled makes none.
        return Ok(());
    };
    if meta.permissions().mode() & 0o7777 != want {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(want))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            make_private(&entry?.path())?;
        }
    }
    Ok(())
}

fn open_files(state_dir: &Path, codec: &Codec) -> Result<Found, StoreError> {
    let db_path = state_dir.join("db");
    crate::durable::create_dir_all(state_dir, 0o700)
        .map_err(io_error(format!("creating {}", state_dir.display())))?;
    // The state dir itself may be a link (moved to another partition):
    // followed for it, never for what is inside.
    let real = state_dir
        .canonicalize()
        .map_err(io_error(format!("securing {}", state_dir.display())))?;
    make_private(&real).map_err(io_error(format!("securing {}", state_dir.display())))?;
    let (mirror, copy) =
        Mirror::open(state_dir).map_err(io_error("opening the store's mirror".into()))?;
    let mut damage: Option<(StoreError, PathBuf)> = None;
    let (db, sled_seq, sled_records, written) = loop {
        let attempt = open_checked(&db_path, codec.level()).and_then(|db| {
            let (seq, records, written) = read_sled(&db)?;
            Ok((db, seq, records, written))
        });
        match attempt {
            Ok(found) => break found,
            Err(e) if e.is_damage() && damage.is_none() && db_path.exists() => {
                let aside = move_aside(state_dir, &db_path)?;
                damage = Some((e, aside));
            }
            Err(e) => return Err(e),
        }
    };
    let data = sync_created(&db, &db_path)?;
    let mut open = Open { db, data, mirror };
    let (seq, raw) = match copy.filter(|c| damage.is_some() || c.seq > sled_seq) {
        Some(c) => {
            let n = c.records.len();
            match &damage {
                Some((e, aside)) => log::warn!(
                    "store: {e}; moved it to {} and restored {n} provider record{} from {}",
                    aside.display(),
                    plural(n),
                    c.path.display()
                ),
                None => log::warn!(
                    "store: {} opened with older records than {} (a power cut tore its last \
                     write); restored {n} provider record{} from the latter",
                    db_path.display(),
                    c.path.display(),
                    plural(n),
                ),
            }
            // Bring sled up to the mirror's state, in one batch.
            let mut batch = sled::Batch::default();
            for k in sled_records.keys().filter(|k| !c.records.contains_key(*k)) {
                batch.remove(key(k));
            }
            for (n, r) in &c.records {
                batch.insert(key(n), r.as_slice());
            }
            batch.insert(SEQ_KEY, &c.seq.to_be_bytes()[..]);
            open.db.apply_batch(batch).map_err(|source| StoreError {
                context: format!("restoring records into {}", db_path.display()),
                source,
            })?;
            sync(&open.db, &open.data, &db_path)?;
            (c.seq, c.records)
        }
        None => {
            if let Some((e, aside)) = &damage {
                log::error!(
                    "store: {e}; moved it to {} and started a fresh one (no readable mirror to \
                     restore from)",
                    aside.display()
                );
            }
            (sled_seq, sled_records)
        }
    };
    let decoded = codec.decode_all(&raw);
    let unopened = decoded.unopened.len();
    if written < codec.level() || decoded.exposed {
        let (open, seq, raw) = rewrite(state_dir, open, seq, codec, &decoded)?;
        return Ok(Found {
            open,
            seq,
            records: decoded.records,
            raw,
            unopened,
        });
    }
    if written > codec.level() {
        // Records are written with less protection from now on.
        open.db
            .insert(WRITTEN_KEY, &[codec.level() as u8][..])
            .map_err(|source| StoreError {
                context: format!("writing to {}", db_path.display()),
                source,
            })?;
        sync(&open.db, &open.data, &db_path)?;
    }
    // The mirror holds this state too: it lags one write behind after a cut
    // between the two, is unreadable after a cut during its own write, and
    // is missing in a store written by an older agent.
    open.mirror
        .write(seq, &raw)
        .map_err(io_error("writing the store's mirror".into()))?;
    Ok(Found {
        open,
        seq,
        records: decoded.records,
        raw,
        unopened,
    })
}

/// Makes durable what opening sled created without syncing (its config
/// file, its folders) and returns its data file, for the fsync sled leaves
/// out.
fn sync_created(db: &sled::Db, db_path: &Path) -> Result<File, StoreError> {
    let data_path = db_path.join("db");
    let data =
        File::open(&data_path).map_err(io_error(format!("opening {}", data_path.display())))?;
    // sled writes its config and snapshot files and creates its folders
    // without syncing them or the directories that hold them.
    let conf = db_path.join("conf");
    File::open(&conf)
        .and_then(|f| f.sync_all())
        .map_err(io_error(format!("syncing {}", conf.display())))?;
    for dir in [db_path.join("blobs"), db_path.to_owned()] {
        crate::durable::sync_dir(&dir).map_err(io_error(format!("syncing {}", dir.display())))?;
    }
    sync(db, &data, db_path)?;
    Ok(data)
}

/// Rewrites the store as `codec` writes it, when the files may hold in
/// plain text what it does not allow (an older agent's database, one
/// written before `store_key` was set, a refresh token written before
/// `persist_refresh_tokens` was turned off): both mirror files first (so
/// that a power cut from here on restores from them), then sled's directory
/// is deleted, with any database moved aside before, and a fresh one
/// written. sled's log keeps superseded values until it reuses a segment,
/// so rewriting the records in place would not do. Deleting a file does
/// not erase the flash cells that held it; README, "Security", says so.
fn rewrite(
    state_dir: &Path,
    open: Open,
    seq: u64,
    codec: &Codec,
    decoded: &Decoded,
) -> Result<(Open, u64, Raw), StoreError> {
    let db_path = state_dir.join("db");
    let raw = codec.encode_all(decoded)?;
    let Open {
        db,
        data,
        mut mirror,
    } = open;
    let seq = mirror
        .write_both(seq + 1, &raw)
        .map_err(io_error("writing the store's mirror".into()))?;
    // sled writes through its open file handles from here on (never by
    // path): the deleted files take its last flush.
    drop(db);
    drop(data);
    std::fs::remove_dir_all(&db_path)
        .map_err(io_error(format!("removing {}", db_path.display())))?;
    remove_moved_aside(state_dir)?;
    crate::durable::sync_dir(state_dir)
        .map_err(io_error(format!("syncing {}", state_dir.display())))?;
    let db = open_checked(&db_path, codec.level())?;
    let data = sync_created(&db, &db_path)?;
    let mut batch = sled::Batch::default();
    for (n, r) in &raw {
        batch.insert(key(n), r.as_slice());
    }
    batch.insert(SEQ_KEY, &seq.to_be_bytes()[..]);
    db.apply_batch(batch).map_err(|source| StoreError {
        context: format!("writing to {}", db_path.display()),
        source,
    })?;
    sync(&db, &data, &db_path)?;
    log::info!(
        "store: rewrote {} record{} {} into a fresh database and deleted the old one",
        raw.len(),
        plural(raw.len()),
        match codec.level() {
            Level::Sealed => "sealed with agent.store_key",
            _ => "without refresh tokens",
        }
    );
    Ok((Open { db, data, mirror }, seq, raw))
}

/// Moves a damaged database aside as `db.broken-<unix time>`, deleting one
/// moved aside before: one is enough to diagnose, and the card is small.
fn move_aside(state_dir: &Path, db_path: &Path) -> Result<PathBuf, StoreError> {
    remove_moved_aside(state_dir)?;
    let aside = state_dir.join(format!("db.broken-{}", crate::timefmt::now_unix()));
    crate::durable::rename(db_path, &aside)
        .map_err(io_error(format!("moving {} aside", db_path.display())))?;
    Ok(aside)
}

fn remove_moved_aside(state_dir: &Path) -> Result<(), StoreError> {
    if let Ok(entries) = std::fs::read_dir(state_dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("db.broken-") {
                let p = e.path();
                std::fs::remove_dir_all(&p)
                    .or_else(|_| std::fs::remove_file(&p))
                    .map_err(io_error(format!("removing {}", p.display())))?;
            }
        }
    }
    Ok(())
}

/// The sequence number, the records as stored and what the database has
/// been written as.
fn read_sled(db: &sled::Db) -> Result<(u64, Raw, Level), StoreError> {
    let err = |source| StoreError {
        context: "reading records".into(),
        source,
    };
    let seq = match db.get(SEQ_KEY).map_err(err)? {
        Some(v) => v
            .as_ref()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or_default(),
        // Written by an agent from before the mirror.
        None => 0,
    };
    let written = Level::from_byte(db.get(WRITTEN_KEY).map_err(err)?.as_deref());
    let mut out = Raw::new();
    for item in db.scan_prefix(PREFIX) {
        let (k, v) = item.map_err(err)?;
        let name = String::from_utf8_lossy(&k[PREFIX.len()..]).into_owned();
        out.insert(name, v.to_vec());
    }
    Ok((seq, out, written))
}

/// Opens the database at `path` and checks (or writes) its schema version;
/// a new database is marked as written at `level`.
fn open_checked(path: &Path, level: Level) -> Result<sled::Db, StoreError> {
    let err = |context: String| move |source| StoreError { context, source };
    let db = open_db(path)?;
    match db
        .get(SCHEMA_KEY)
        .map_err(err("reading schema version".into()))?
    {
        None => {
            let mut batch = sled::Batch::default();
            batch.insert(SCHEMA_KEY, SCHEMA_VERSION);
            batch.insert(WRITTEN_KEY, &[level as u8][..]);
            db.apply_batch(batch)
                .map_err(err("writing schema version".into()))?;
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

/// sled reports a held lock only as text in an `Other` I/O error: the lock
/// is probed before opening, and again after a failure (it may have been
/// taken in between), so that callers can tell "in use" (`is_locked`) from
/// other failures.
fn open_db(path: &Path) -> Result<sled::Db, StoreError> {
    probe_lock(path)?;
    sled::Config::new()
        .path(path)
        // Tokens are few and small; keep the page cache and segments small.
        .cache_capacity(256 * 1024)
        .segment_size(segment_size(path))
        // We flush after every change ourselves; no background flusher.
        .flush_every_ms(None)
        .open()
        .map_err(|source| {
            if matches!(&source, sled::Error::Io(e) if e.kind() == std::io::ErrorKind::Other) {
                // Only a held lock stands in for sled's error: a failing
                // probe must not hide it.
                match probe_lock(path) {
                    Err(in_use) if in_use.is_locked() => return in_use,
                    _ => {}
                }
            }
            StoreError {
                context: format!("opening {}", path.display()),
                source,
            }
        })
}

/// An error saying so when another holder has the database's lock.
fn probe_lock(path: &Path) -> Result<(), StoreError> {
    let data = path.join("db");
    let Ok(f) = File::open(&data) else {
        return Ok(());
    };
    let held =
        crate::sys::flock_held(&f).map_err(io_error(format!("locking {}", data.display())))?;
    if held {
        return Err(StoreError {
            context: format!("{} is in use by another process", path.display()),
            source: sled::Error::Io(std::io::Error::from(std::io::ErrorKind::WouldBlock)),
        });
    }
    Ok(())
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
        reopen_with(dir, &plain())
    }

    fn reopen_with(dir: &Path, protection: &Protection) -> Store {
        while_locked(|| Store::open(dir, protection))
    }

    /// `open` again and again while sled's lock of a store just dropped is
    /// still held (up to 10 s).
    fn while_locked<T>(open: impl Fn() -> Result<T, StoreError>) -> T {
        let start = std::time::Instant::now();
        loop {
            match open() {
                Err(e) if e.is_locked() && start.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other.unwrap(),
            }
        }
    }

    /// Plain records with refresh tokens: what the older tests were written for.
    fn plain() -> Protection {
        Protection {
            key: None,
            keep_refresh: true,
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
                refresh_refused: false,
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
            let s = Store::open(&dir, &plain()).unwrap();
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
        let s = Store::unopened(&blocker, &plain());
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
        Store::open(&dir, &plain()).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    #[test]
    fn a_state_dir_made_open_beforehand_is_made_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempdir().join("state");
        let store = Store::open(&dir, &plain()).unwrap();
        store.save("a", &record()).unwrap();
        drop(store);
        // As a manual install under umask 022 leaves it.
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let mut all = vec![dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if all[i].is_dir() {
                let more: Vec<PathBuf> = std::fs::read_dir(&all[i])
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect();
                all.extend(more);
            }
            i += 1;
        }
        assert!(all.len() > 3, "{all:?}");
        for p in &all {
            chmod(p, if p.is_dir() { 0o755 } else { 0o644 });
        }
        let store = Store::open(&dir, &plain()).unwrap();
        assert!(store.load_all().unwrap().iter().any(|(n, _)| n == "a"));
        for p in &all {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            let want = if p.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(mode, want, "{}", p.display());
        }
        std::fs::remove_dir_all(dir.parent().unwrap()).unwrap();
    }

    fn record_with(token: &str) -> Record {
        let mut r = record();
        r.token.as_mut().unwrap().access = Secret::new(token);
        r
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    fn broken_count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with("db.broken-")
            })
            .count()
    }

    #[test]
    fn a_database_that_lost_its_last_write_is_restored_from_the_mirror() {
        let dir = tempdir();
        let old = dir.join("old-db");
        {
            let s = Store::open(&dir, &plain()).unwrap();
            s.save("a", &record_with("one")).unwrap();
            s.save("b", &record_with("b")).unwrap();
        }
        // sled as a torn write could leave it: before the last two writes.
        copy_dir(&reopen(&dir).path(), &old);
        {
            let s = reopen(&dir);
            s.save("a", &record_with("two")).unwrap();
            s.remove("b").unwrap();
        }
        std::fs::remove_dir_all(dir.join("db")).unwrap();
        std::fs::rename(&old, dir.join("db")).unwrap();
        let s = reopen(&dir);
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), record_with("two"))]
        );
        drop(s);
        // sled itself was brought up to date: the mirror is not needed now.
        for name in mirror::NAMES {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        let s = reopen(&dir);
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), record_with("two"))]
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_database_is_restored_from_the_mirror_and_one_kept_aside() {
        let dir = tempdir();
        {
            let s = Store::open(&dir, &plain()).unwrap();
            s.save("a", &record_with("one")).unwrap();
        }
        for round in 0..2 {
            std::fs::write(dir.join("db/conf"), b"\xff\xfe not a sled config").unwrap();
            let s = reopen(&dir);
            assert_eq!(
                s.load_all().unwrap(),
                vec![("a".to_owned(), record_with("one"))],
                "round {round}"
            );
            drop(s);
            assert_eq!(broken_count(&dir), 1);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_mirror_is_rewritten_from_the_database() {
        let dir = tempdir();
        {
            let s = Store::open(&dir, &plain()).unwrap();
            s.save("a", &record_with("one")).unwrap();
        }
        for name in mirror::NAMES {
            std::fs::write(dir.join(name), b"SAAMIRR1 torn").unwrap();
        }
        let s = reopen(&dir);
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), record_with("one"))]
        );
        drop(s);
        // Now sled goes; the rewritten mirror holds the record.
        std::fs::write(dir.join("db/conf"), b"garbage").unwrap();
        let s = reopen(&dir);
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), record_with("one"))]
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_broken_database_is_moved_aside() {
        let dir = tempdir();
        std::fs::create_dir_all(dir.join("db")).unwrap();
        // Garbage where sled expects its config file.
        std::fs::write(dir.join("db/conf"), b"\xff\xfe not a sled config").unwrap();
        std::fs::write(dir.join("db/db"), b"garbage").unwrap();
        let s = Store::open(&dir, &plain()).unwrap();
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

    fn sealed(k: u8) -> Protection {
        Protection {
            key: Some(StoreKey::from_bytes([k; 32])),
            keep_refresh: true,
        }
    }

    fn with_tokens(access: &str, refresh: &str) -> Record {
        let mut r = record();
        let t = r.token.as_mut().unwrap();
        t.access = Secret::new(access);
        t.refresh = Some(Secret::new(refresh));
        r
    }

    /// Every byte of every file under `dir`.
    fn all_bytes(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                out.extend(all_bytes(&e.path()));
            } else {
                out.extend(std::fs::read(e.path()).unwrap());
            }
        }
        out
    }

    fn holds(dir: &Path, needle: &str) -> bool {
        all_bytes(dir)
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[test]
    fn sealed_records_survive_reopen_and_no_token_reaches_a_file() {
        let dir = tempdir();
        let mut written = Vec::new();
        {
            let s = Store::open(&dir, &sealed(1)).unwrap();
            for i in 0..50 {
                let r = with_tokens(&format!("ACCESS{i:04}xx"), &format!("REFRESH{i:04}x"));
                s.save("a", &r).unwrap();
                s.save("b", &with_tokens("ACCESSbbbbbb", "REFRESHbbbbb"))
                    .unwrap();
                written.push(r);
            }
        }
        let s = reopen_with(&dir, &sealed(1));
        let all = s.load_all().unwrap();
        assert_eq!(all[0], ("a".to_owned(), written.last().unwrap().clone()));
        assert_eq!(
            all[1].1.token.as_ref().unwrap().access.expose(),
            "ACCESSbbbbbb"
        );
        drop(s);
        for needle in ["ACCESS", "REFRESH", "makeleaps https"] {
            assert!(!holds(&dir, needle), "{needle} in plain text");
        }
        // The mirror holds the same sealed bytes: it alone restores them.
        std::fs::remove_dir_all(dir.join("db")).unwrap();
        assert_eq!(reopen_with(&dir, &sealed(1)).load_all().unwrap(), all);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn records_sealed_with_another_key_or_none_are_absent_until_replaced() {
        let dir = tempdir();
        Store::open(&dir, &sealed(1))
            .unwrap()
            .save("a", &with_tokens("ACCESS1", "REFRESH1"))
            .unwrap();
        for other in [sealed(2), Protection::default(), plain()] {
            let start = std::time::Instant::now();
            let found = loop {
                match open_files(&dir, &Codec::new(&other)) {
                    Err(e) if e.is_locked() && start.elapsed().as_secs() < 10 => {
                        std::thread::sleep(std::time::Duration::from_millis(10))
                    }
                    other => break other.unwrap(),
                }
            };
            assert!(found.records.is_empty());
            assert_eq!(found.unopened, 1);
            drop(found);
            assert!(reopen_with(&dir, &other).load_all().unwrap().is_empty());
        }
        // Still there for the right key: nothing overwrote it.
        assert_eq!(
            reopen_with(&dir, &sealed(1)).load_all().unwrap(),
            vec![("a".to_owned(), with_tokens("ACCESS1", "REFRESH1"))]
        );
        // A write under the new key replaces it (a fresh login's token).
        reopen_with(&dir, &sealed(2))
            .save("a", &with_tokens("ACCESS2", "REFRESH2"))
            .unwrap();
        assert!(reopen_with(&dir, &sealed(1)).load_all().unwrap().is_empty());
        assert_eq!(
            reopen_with(&dir, &sealed(2)).load_all().unwrap(),
            vec![("a".to_owned(), with_tokens("ACCESS2", "REFRESH2"))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_record_opens_only_under_its_own_provider_name() {
        let codec = Codec::new(&sealed(1));
        let a = codec.encode("a", &with_tokens("A", "RA")).unwrap();
        let b = codec.encode("b", &with_tokens("B", "RB")).unwrap();
        let swapped: Raw = [("a".to_owned(), b.clone()), ("b".to_owned(), a.clone())].into();
        let d = codec.decode_all(&swapped);
        assert!(d.records.is_empty());
        assert_eq!(d.unopened, swapped);
        let right: Raw = [("a".to_owned(), a), ("b".to_owned(), b)].into();
        assert_eq!(codec.decode_all(&right).records.len(), 2);
        // The same swap on disk: neither opens.
        let dir = tempdir();
        {
            let s = Store::open(&dir, &sealed(1)).unwrap();
            s.save("a", &with_tokens("A", "RA")).unwrap();
            s.save("b", &with_tokens("B", "RB")).unwrap();
        }
        {
            let db = while_locked(|| open_db(&dir.join("db")));
            let (va, vb) = (db.get(key("a")).unwrap(), db.get(key("b")).unwrap());
            db.insert(key("a"), vb.unwrap()).unwrap();
            db.insert(key("b"), va.unwrap()).unwrap();
            db.flush().unwrap();
        }
        for name in mirror::NAMES {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
        assert!(reopen_with(&dir, &sealed(1)).load_all().unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_and_sealed_records_are_told_apart() {
        let codec = Codec::new(&sealed(1));
        let plain_bytes = Codec::new(&plain())
            .encode("a", &with_tokens("A", "RA"))
            .unwrap();
        assert_eq!(plain_bytes[0], b'{');
        let sealed_bytes = codec.encode("a", &with_tokens("A", "RA")).unwrap();
        assert!(seal::is_sealed(&sealed_bytes) && !seal::is_sealed(&plain_bytes));
        // A plain record still reads with a key (an upgrade), flagged.
        let d = codec.decode_all(&[("a".to_owned(), plain_bytes)].into());
        assert_eq!(d.records["a"], with_tokens("A", "RA"));
        assert!(d.exposed);
        let d = codec.decode_all(&[("a".to_owned(), sealed_bytes)].into());
        assert!(!d.exposed && d.records.len() == 1);
    }

    #[test]
    fn a_plain_store_is_rewritten_sealed_when_a_key_is_set() {
        let dir = tempdir();
        {
            let s = Store::open(&dir, &plain()).unwrap();
            for i in 0..20 {
                s.save(
                    "a",
                    &with_tokens(&format!("ACCESS{i:03}"), &format!("REFRESH{i:03}")),
                )
                .unwrap();
            }
        }
        // An older agent's mirror format too, and a database kept aside.
        std::fs::create_dir_all(dir.join("db.broken-1")).unwrap();
        std::fs::write(dir.join("db.broken-1/db"), b"ACCESS000 REFRESH000").unwrap();
        assert!(holds(&dir, "ACCESS019") && holds(&dir, "REFRESH000"));
        let s = reopen_with(&dir, &sealed(1));
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), with_tokens("ACCESS019", "REFRESH019"))]
        );
        assert!(!holds(&dir, "ACCESS") && !holds(&dir, "REFRESH"));
        s.save("a", &with_tokens("ACCESSnew", "REFRESHnew"))
            .unwrap();
        drop(s);
        assert!(!holds(&dir, "ACCESS") && !holds(&dir, "REFRESH"));
        assert_eq!(broken_count(&dir), 0);
        assert_eq!(
            reopen_with(&dir, &sealed(1)).load_all().unwrap(),
            vec![("a".to_owned(), with_tokens("ACCESSnew", "REFRESHnew"))]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn without_a_key_refresh_tokens_stay_off_the_disk_unless_asked() {
        let dir = tempdir();
        let no_refresh = Protection::default();
        {
            // Written with refresh tokens (an older agent, or asked for).
            let s = Store::open(&dir, &plain()).unwrap();
            s.save("a", &with_tokens("ACCESS1", "REFRESH1")).unwrap();
        }
        let s = reopen_with(&dir, &no_refresh);
        // This run keeps the refresh token in memory; the disk has none.
        assert_eq!(
            s.load_all().unwrap(),
            vec![("a".to_owned(), with_tokens("ACCESS1", "REFRESH1"))]
        );
        assert!(!holds(&dir, "REFRESH"));
        s.save("a", &with_tokens("ACCESS2", "REFRESH2")).unwrap();
        drop(s);
        assert!(!holds(&dir, "REFRESH") && holds(&dir, "ACCESS2"));
        let all = reopen_with(&dir, &no_refresh).load_all().unwrap();
        let t = all[0].1.token.as_ref().unwrap();
        assert_eq!((t.access.expose(), t.refresh.as_ref()), ("ACCESS2", None));
        // Asked for: kept.
        let s = reopen_with(&dir, &plain());
        s.save("a", &with_tokens("ACCESS3", "REFRESH3")).unwrap();
        drop(s);
        assert!(holds(&dir, "REFRESH3"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
