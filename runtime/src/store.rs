//! Heartline's embedded durable store: conversations, their members and their messages in
//! one SQLite file.
//!
//! Heartline acknowledges a send only after the message is durably stored, so the store is
//! where "acknowledged" becomes a promise. The database runs in WAL mode with
//! `synchronous = FULL`: every commit fsyncs the log before it returns, so a commit that
//! returned survives `kill -9` and an operating-system crash or power loss (on macOS
//! `fullfsync` asks the drive itself to flush as well). The runtime instead flushes the
//! log apart from the commits ([`Store::sync_log_apart`], [`LogSync`]): commits then only
//! write the log (`synchronous = NORMAL`, which in WAL mode still flushes everything
//! else: the log before a checkpoint copies from it, the database file after), and a
//! commit counts as durable once a flush of the log that began after it has returned.
//! That is the same promise, and it lets one commit's flush overlap the next commit and
//! the flushes of others.
//!
//! An fsync per message would cap throughput at the disk's flush rate, so appends come in
//! batches: [`Store::append_batch`] writes every request of a batch in one transaction and
//! one fsync (group commit), while still answering each request on its own. A request that
//! cannot be stored (unknown conversation, taken message id, out-of-range timestamp) fails
//! alone; only a failure of the transaction itself fails the whole batch, and then nothing
//! of it is stored.
//!
//! Two invariants of the contract live here because only the store can keep them across
//! restarts and crashes:
//! - `seq` starts at 1 in each conversation and has no gaps. It is computed inside the
//!   write transaction as the conversation's highest stored `seq` plus one, so a number is
//!   consumed only by a committed message, and a batch that fails leaves no hole.
//! - A send is idempotent per user and `tempId`: a request whose `(sender_id, sender_type,
//!   temp_id)` is already stored (earlier, or earlier in the same batch) returns the stored
//!   message as a duplicate and stores nothing. A unique index backs this up.
//!
//! The log is copied into the database file (checkpointed) by a [`Checkpointer`], a second
//! connection that the runtime drives from a thread of its own: SQLite's default is to
//! checkpoint inside whichever commit crosses 1,000 log pages, which stalled every send
//! waiting on that commit for milliseconds (the light-load tail latency, measured). The
//! checkpointer keeps the database file current, but SQLite starts the log over only when
//! a write transaction begins with every page of it copied, which a steady stream of
//! commits seldom leaves time for. So the log grows to [`WAL_AUTOCHECKPOINT_PAGES`], where
//! the writer checkpoints by itself (only the pages not yet copied: 145 in one trace at
//! 500 sends/s) and its next commit starts the log over; the same bound holds if no
//! checkpointer runs. That checkpoint copies the whole log, so it ends with an fsync of the
//! database file, which then carries every page the checkpointer copied since the last
//! complete checkpoint: 2–7 ms on the store thread, every ~5 s at 500 sends/s after a
//! saturation run (traced). SQLite's own hook for that checkpoint drops its result, so the
//! store installs one of its own (`checkpoint_at_bound`) that keeps an I/O error for
//! [`Store::take_checkpoint_failure`]: the runtime then stops the store, as it does when the
//! checkpointer's checkpoint fails, instead of committing on over pages that may never have
//! reached the disk.
//!
//! Membership checks are the caller's business; the store only keeps the member lists.
//! The API is synchronous because SQLite is: the runtime gives the store a thread of its
//! own. Nothing here panics on any input; every failure is a [`StoreError`].

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::c_int;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Statement, TransactionBehavior,
};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = 1;

/// Most messages one [`Store::messages`] call returns; larger limits are capped to this.
pub const MAX_PAGE: usize = 1000;

/// How long a write waits for another process (a backup, an operator's `sqlite3` shell)
/// that holds the database lock, unless changed with [`Store::set_busy_timeout`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

// The store speaks the core's types: a message, a request and an outcome are the same
// thing on both sides of the storage effect, so there is nothing to translate.
pub use heartline_core::gateway::{AppendOutcome, AppendRequest, Member, Message as StoredMessage};

/// A conversation and its members, in the order they were given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub members: Vec<Member>,
}

impl Conversation {
    /// Whether the user with this id and type is a member.
    pub fn has_member(&self, user_id: &str, user_type: &str) -> bool {
        self.members
            .iter()
            .any(|m| m.user_id == user_id && m.user_type == user_type)
    }
}

/// Why a store operation failed.
///
/// It is `Clone` because one failed transaction is reported to every request of its batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No conversation with this id exists.
    #[error("unknown conversation {0:?}")]
    UnknownConversation(String),
    /// Another stored message already has this message id.
    #[error("message id {0:?} is already taken")]
    DuplicateMessageId(String),
    /// A number that the database cannot hold (SQLite integers are signed 64-bit).
    #[error("{field} out of range: {value}")]
    OutOfRange { field: &'static str, value: u64 },
    /// The database was written by a newer Heartline.
    #[error("database schema version {found} is newer than the supported version {supported}")]
    SchemaTooNew { found: i64, supported: i64 },
    /// The file is not a Heartline database, or its data breaks the store's invariants.
    #[error("database is corrupt or not a Heartline database: {0}")]
    Corrupt(String),
    /// The log could not be flushed to disk after a commit (see [`LogSync`]): what was
    /// committed since the last flush may not survive a crash, so nothing of it is
    /// acknowledged and the store takes no further operations until it is opened again.
    #[error("flushing the database log failed: {0}")]
    LogSync(Arc<std::io::Error>),
    /// Copying the log into the database file failed with an I/O error, a failed write or
    /// flush of the database file. Linux may drop the pages of a failed write and report the
    /// failure only once, so a later checkpoint could succeed over pages that never reached
    /// the disk and let the log be started over, losing acknowledged messages: the store takes
    /// no further operations, and the log (which still holds every page) is copied again
    /// when the store is opened again.
    #[error("copying the log into the database file failed: {0}")]
    Checkpoint(#[source] Arc<rusqlite::Error>),
    /// SQLite itself failed (I/O error, disk full, lock held elsewhere, ...).
    #[error("database error: {0}")]
    Sqlite(#[source] Arc<rusqlite::Error>),
    /// Another process (or another store of this one) holds the database: two servers on one
    /// store would hand out the same `seq` and miss each other's member changes.
    #[error("{0} is in use by another Heartline (its lock file is held)")]
    InUse(String),
    /// The lock file beside the database could not be opened or locked.
    #[error("lock file {0}: {1}")]
    LockFile(String, #[source] Arc<std::io::Error>),
    /// The thread that owned the store ended unexpectedly.
    #[error("the store thread stopped unexpectedly")]
    Stopped,
    /// A file of the database could not be opened for writing (a read-only file or file
    /// system, a directory where the file should be).
    #[error("cannot open {0} for writing: {1}")]
    NotWritable(String, #[source] Arc<std::io::Error>),
    /// The path names no file: SQLite's in-memory database, which keeps nothing.
    #[error("{0:?} is an in-memory database, which keeps nothing: the store needs a file")]
    InMemory(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(Arc::new(e))
    }
}

/// SQLite's page cache, KiB: about four times its default (2,000 KiB), and no larger,
/// because of what a commit costs with a large cache.
///
/// When an insert splits an index page in the middle of the tree (tempIds are random, so
/// every few dozen sends do), SQLite renumbers the new pages into ascending order by
/// moving one of them through the lock-byte page's number (1 GiB / page size + 1: 262,145).
/// The cache's highest key then stays there, and the commit's truncation of the cache to
/// the database's size walks the cache's whole hash table: a pointer chase over every
/// cached page. With 64 MiB (16,384 pages) that walk ran in about one commit of six and
/// was 15 % of the server's CPU samples at 500 sends/s; 13–14 % of commits took over 1 ms,
/// with the sends queued behind them waiting. With 8 MiB the walk is an eighth as long,
/// 7 % of commits take over 1 ms, and pages not in the log are read through the memory
/// map anyway (the file's first [`MMAP_BYTES`]).
const CACHE_KIB: i64 = 8 * 1024;

/// Bytes of the database file SQLite may read through a memory map.
const MMAP_BYTES: i64 = 1 << 30;

/// Log pages past which the writer checkpoints by itself: under a steady load, this is what
/// lets the log start over (see the module docs).
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

thread_local! {
    /// The I/O error of the last checkpoint [`checkpoint_at_bound`] ran on this thread and
    /// no one has taken yet ([`Store::take_checkpoint_failure`]). Per thread because the
    /// hook is a plain function and runs inside the commit, on the committing thread: the
    /// store's own.
    static BOUND_CHECKPOINT_FAILURE: RefCell<Option<StoreError>> = const { RefCell::new(None) };
    /// Checkpoints [`checkpoint_at_bound`] ran on this thread (for tests).
    #[cfg(test)]
    static BOUND_CHECKPOINTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The writer's log hook, called by SQLite after every commit with the log's size in
/// pages: at [`WAL_AUTOCHECKPOINT_PAGES`] or more it checkpoints, as SQLite's default hook
/// does, but keeps the result. A lock (the checkpointer is mid-copy) is no failure, and the
/// next commit tries again; an I/O error ([`checkpoint_error`]) is kept for the store's
/// owner. Always answers OK: the commit itself has happened, and an error here would
/// report it as failed.
fn checkpoint_at_bound(wal: &rusqlite::hooks::Wal, pages: c_int) -> rusqlite::Result<()> {
    if i64::from(pages) < WAL_AUTOCHECKPOINT_PAGES {
        return Ok(());
    }
    #[cfg(test)]
    BOUND_CHECKPOINTS.with(|n| n.set(n.get() + 1));
    let result = wal.checkpoint_v2(rusqlite::hooks::CheckpointMode::PASSIVE);
    keep_bound_checkpoint_result(result.map(|_| ()));
    Ok(())
}

/// Keeps `result`'s error if it is one that may have lost a write (the first such error
/// stays until it is taken).
fn keep_bound_checkpoint_result(result: rusqlite::Result<()>) {
    if let Err(e @ StoreError::Checkpoint(_)) = result.map_err(checkpoint_error) {
        BOUND_CHECKPOINT_FAILURE.with(|f| {
            f.borrow_mut().get_or_insert(e);
        });
    }
}

/// A second connection to a file-backed store's database that only checkpoints: it copies
/// committed log pages into the database file without waiting for, or blocking, the writer.
#[derive(Debug)]
pub struct Checkpointer {
    conn: Connection,
}

impl Checkpointer {
    /// One passive checkpoint; returns the pages in the log and the pages now copied. An
    /// I/O error is [`StoreError::Checkpoint`]; anything else (a lock, a full disk before
    /// anything was written) leaves the log as it was, and the next checkpoint tries again.
    pub fn checkpoint(&self) -> Result<(i64, i64), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get(1)?, row.get(2)?))
            })
            .map_err(checkpoint_error)
    }
}

/// A checkpoint's failure: an I/O error that may have left pages written but not on disk
/// (a failed write, flush or truncation of a file, or one SQLite does not name) is
/// [`StoreError::Checkpoint`]; anything else (a lock, the shared-memory index, memory, a
/// read) wrote nothing that could be lost, and is retried.
pub fn checkpoint_error(e: rusqlite::Error) -> StoreError {
    use rusqlite::ffi;
    let lost_write = e.sqlite_error().is_some_and(|f| {
        [
            ffi::SQLITE_IOERR,
            ffi::SQLITE_IOERR_WRITE,
            ffi::SQLITE_IOERR_FSYNC,
            ffi::SQLITE_IOERR_DIR_FSYNC,
            ffi::SQLITE_IOERR_TRUNCATE,
        ]
        .contains(&f.extended_code)
    });
    if lost_write {
        StoreError::Checkpoint(Arc::new(e))
    } else {
        StoreError::from(e)
    }
}

/// Flushes a store's log to disk for commits made after [`Store::sync_log_apart`]. Flushes
/// may overlap, each from a thread with a handle of its own ([`LogSync::reopen`]).
///
/// It holds its own descriptor of the log file. SQLite deletes the log only when the last
/// connection to the database closes (the store's own stays open), but should the file at
/// the log's path ever be another one, a flush of the old one would promise what it does
/// not keep: so every flush first checks that the path still names the file it flushes.
#[derive(Debug)]
pub struct LogSync {
    file: std::fs::File,
    path: std::path::PathBuf,
    identity: (u64, u64),
}

impl LogSync {
    /// Flushes the log: every commit that returned before this call began is durable once
    /// it returns `Ok`.
    pub fn sync(&self) -> Result<(), StoreError> {
        let at_path = std::fs::metadata(&self.path).map_err(log_sync_error)?;
        if file_identity(&at_path) != self.identity {
            return Err(StoreError::LogSync(Arc::new(std::io::Error::other(
                format!(
                    "{} is no longer the log this store writes",
                    self.path.display()
                ),
            ))));
        }
        self.file.sync_data().map_err(|e| {
            forget_cached_pages(&self.file);
            log_sync_error(e)
        })
    }

    /// Drops the operating system's cached pages of the log (see `forget_cached_pages`):
    /// for a store that failed by any road, also one on which no flush of the log itself
    /// returned the error (a checkpoint's flush of the log may be the first to meet it).
    pub fn forget_cached(&self) {
        forget_cached_pages(&self.file);
    }

    /// Another handle on the same log, with a descriptor of its own, for another thread.
    ///
    /// Flushes that overlap must not share a descriptor: Linux reports a failed write-back
    /// once per open file, so of two flushes of one descriptor under way when a page of
    /// the log fails to be written, one may return the error and the other `Ok` for that
    /// same page (and vouch for the commit it was waiting on). Each descriptor is told of
    /// every failure after it was opened.
    pub fn reopen(&self) -> Result<LogSync, StoreError> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .map_err(log_sync_error)?;
        let identity = file_identity(&file.metadata().map_err(log_sync_error)?);
        if identity != self.identity {
            return Err(StoreError::LogSync(Arc::new(std::io::Error::other(
                format!(
                    "{} is no longer the log this store writes",
                    self.path.display()
                ),
            ))));
        }
        Ok(LogSync {
            file,
            path: self.path.clone(),
            identity,
        })
    }
}

/// A lock on a database that one holder at a time can have: taken before the database is
/// opened, held for as long as the server runs (the store keeps it, [`Store::keep_lock`]),
/// and let go by the operating system however the process ends, `kill -9` included.
///
/// It is an advisory lock on a file beside the database, `<path>-lock` (SQLite's own locks
/// cannot say "one server": the checkpointer and readers are other connections, and a
/// second server would look like one more of them), and the same on the database file
/// itself, so that a second name of the file (a hard link, which has a lock file and a
/// log of its own) is refused too. The lock file stays after the server stops; it holds
/// nothing. The database's descriptor is kept open until the store has closed its
/// connections: closing one would drop SQLite's own record locks on the file, which are
/// of another kind (`fcntl`) than these (`flock`) and are not touched by them.
#[derive(Debug)]
pub struct StoreLock {
    _file: std::fs::File,
    _database: Option<std::fs::File>,
}

impl StoreLock {
    /// Takes the lock of the database at `path`, or [`StoreError::InUse`] if another holder
    /// has it (without waiting).
    pub fn acquire(path: &Path) -> Result<StoreLock, StoreError> {
        // The database's real name (its directory's, if the file is not there yet), so that
        // two names of one file (a symbolic link) share one lock.
        let real = std::fs::canonicalize(path)
            .ok()
            .or_else(|| {
                Some(
                    std::fs::canonicalize(directory_of(path))
                        .ok()?
                        .join(path.file_name()?),
                )
            })
            .unwrap_or_else(|| path.to_path_buf());
        let lock_path = beside(&real, "-lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| StoreError::LockFile(lock_path.display().to_string(), Arc::new(e)))?;
        match try_lock(&file) {
            Ok(true) => {}
            Ok(false) => return Err(StoreError::InUse(path.display().to_string())),
            Err(e) => {
                return Err(StoreError::LockFile(
                    lock_path.display().to_string(),
                    Arc::new(e),
                ))
            }
        }
        // The database file itself, created empty if it is not there yet (SQLite takes an
        // empty file for a new database), so that a name given to it later is refused too.
        // A path that cannot be opened so is left to SQLite to report.
        let database = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&real)
        {
            Ok(db) if db.metadata().is_ok_and(|m| m.is_file()) => db,
            _ => {
                return Ok(StoreLock {
                    _file: file,
                    _database: None,
                })
            }
        };
        match try_lock(&database) {
            Ok(true) => Ok(StoreLock {
                _file: file,
                _database: Some(database),
            }),
            Ok(false) => Err(StoreError::InUse(path.display().to_string())),
            Err(e) => Err(StoreError::LockFile(
                real.display().to_string(),
                Arc::new(e),
            )),
        }
    }
}

/// An exclusive advisory lock on `file` without waiting: `Ok(false)` if another open file
/// holds it. (`flock`, which goes with the open file and ends when it is closed.)
#[cfg(unix)]
fn try_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this handle owns; it reads no memory.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Elsewhere no lock is taken: two servers on one store are the operator's to avoid.
#[cfg(not(unix))]
fn try_lock(_: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

/// `path` as SQLite must be given it to read it as a file name: one that starts with
/// `file:` (which the bundled SQLite takes for a URI whatever the open flags) behind `./`.
fn as_file_name(path: &Path) -> std::borrow::Cow<'_, Path> {
    if path.as_os_str().as_encoded_bytes().starts_with(b"file:") {
        std::borrow::Cow::Owned(Path::new(".").join(path))
    } else {
        std::borrow::Cow::Borrowed(path)
    }
}

/// Flushes the database file and its log as a process before this one may have left them.
///
/// A process killed between a commit and its flush leaves that commit's log pages in the
/// operating system's cache, not yet on disk, and SQLite reads them back as committed when
/// the database is opened again. Until something flushes them, what this process would
/// serve from them (a catch-up read, a retry answered as a duplicate, the HTTP API) could
/// still be lost to a power failure, and its `seq` handed out again: so they are flushed
/// before the store is used.
///
/// Before SQLite opens the database, never after: SQLite's locks on the database file are
/// POSIX record locks, which belong to the process and all go when any descriptor of that
/// file the process holds is closed. A descriptor opened here and closed after the store's
/// connection was open dropped the shared lock that tells other processes the database is
/// in use; the next `sqlite3` run by an operator then took its exclusive lock on closing,
/// checkpointed and deleted the log under the running server, whose next flush failed and
/// stopped the store. [`Store::open`] then flushes the directory, since opening may just
/// have created the database file or its log (SQLite deletes the log when the last
/// connection closes, so every start after a clean stop creates it again), and a file's
/// flush does not make its name durable. SQLite would flush the directory at the log's
/// first flush, but the runtime flushes the log itself ([`LogSync`]), so it is done there,
/// once, before anything is acknowledged.
fn flush_leftovers(path: &Path) -> Result<(), StoreError> {
    for file in [path.to_path_buf(), beside(path, "-wal")] {
        match std::fs::OpenOptions::new().write(true).open(&file) {
            Ok(f) => f.sync_data().map_err(log_sync_error)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::NotWritable(
                    file.display().to_string(),
                    Arc::new(e),
                ))
            }
        }
    }
    Ok(())
}

/// Messages from `rows` until the next would take their content past `max_bytes` (the
/// first is always taken); the rows after it are never read.
fn within_bytes(
    rows: impl Iterator<Item = Result<StoredMessage, StoreError>>,
    max_bytes: usize,
) -> Result<Vec<StoredMessage>, StoreError> {
    let mut page = vec![];
    let mut bytes = 0usize;
    for row in rows {
        let m = row?;
        bytes = bytes.saturating_add(m.content.len());
        if !page.is_empty() && bytes > max_bytes {
            break;
        }
        page.push(m);
    }
    Ok(page)
}

/// The file named `path` followed by `suffix`, as SQLite names the files beside a database
/// (`-wal`), and as the store names its lock (`-lock`).
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

/// The directory `path` is in (`.` for a bare file name).
fn directory_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Flushes a directory's entries (the names of the files in it).
#[cfg(unix)]
fn sync_directory(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(log_sync_error)
}

/// Elsewhere a directory cannot be opened as a file; its entries go with the file system's
/// own flushes.
#[cfg(not(unix))]
fn sync_directory(_: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Asks the operating system to drop its cached pages of `file`, after a flush of it failed.
///
/// Linux keeps the pages of a failed write in its cache, marked clean, and reports the
/// failure once per open file: the next process to open the log would read those pages
/// back as written and its own flush (see `flush_leftovers`) would succeed, so it would
/// take commits that are not on disk for committed (and hand out their `seq` again after
/// a power loss). Dropped, they are read from the disk instead, where SQLite's checksums
/// end the log before them. Best effort: the kernel may keep a page it cannot drop.
#[cfg(target_os = "linux")]
fn forget_cached_pages(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain system call on a descriptor this handle owns; it reads no memory.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::warn!(errno = rc, "could not drop the log's cached pages");
    }
}

/// Elsewhere there is no such request.
#[cfg(not(target_os = "linux"))]
fn forget_cached_pages(_: &std::fs::File) {}

/// A failure to open, inspect or flush the log.
fn log_sync_error(e: std::io::Error) -> StoreError {
    StoreError::LogSync(Arc::new(e))
}

/// Device and inode of a file, to tell whether a path still names it.
#[cfg(unix)]
fn file_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

/// Elsewhere there is no cheap identity: the check is skipped.
#[cfg(not(unix))]
fn file_identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

/// The durable store; one SQLite connection, used from one thread at a time.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    /// The lock that makes this the database's only server, if one was handed over.
    lock: Option<StoreLock>,
}

const SCHEMA_V1: &str = "
CREATE TABLE conversations (
    id TEXT PRIMARY KEY NOT NULL
) STRICT;

CREATE TABLE members (
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    user_type TEXT NOT NULL,
    PRIMARY KEY (conversation_id, position),
    UNIQUE (conversation_id, user_id, user_type)
) STRICT;

CREATE TABLE messages (
    conversation_id TEXT NOT NULL REFERENCES conversations (id),
    seq INTEGER NOT NULL CHECK (seq >= 1),
    id TEXT NOT NULL UNIQUE,
    sender_id TEXT NOT NULL,
    sender_type TEXT NOT NULL,
    content TEXT NOT NULL,
    temp_id TEXT,
    created_at_ms INTEGER NOT NULL CHECK (created_at_ms >= 0),
    UNIQUE (conversation_id, seq)
) STRICT;

CREATE UNIQUE INDEX messages_by_temp_id
    ON messages (sender_id, sender_type, temp_id) WHERE temp_id IS NOT NULL;
";

/// Indexes added to schema 1 without changing its tables; created on every open.
const INDEXES_V1: &str = "
CREATE INDEX IF NOT EXISTS messages_by_created_at ON messages (created_at_ms);
";

/// Whether the database is empty (`true`) or holds this schema's current version
/// (`false`); anything else is refused: tables of another application, a newer version, an
/// odd `schema_version`. Only reads, so that it can be asked before anything is changed.
fn is_empty_or_ours(conn: &Connection) -> Result<bool, StoreError> {
    let has_version_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_schema \
         WHERE type = 'table' AND name = 'schema_version')",
        [],
        |row| row.get(0),
    )?;
    if !has_version_table {
        let other_tables: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |row| row.get(0),
        )?;
        if other_tables > 0 {
            return Err(StoreError::Corrupt(
                "the database has tables but no Heartline schema version".to_owned(),
            ));
        }
        return Ok(true);
    }
    let versions = {
        let mut stmt = conn.prepare("SELECT version FROM schema_version")?;
        let rows = stmt.query_map([], |row| row.get::<_, i64>(0))?;
        rows.collect::<Result<Vec<i64>, _>>()?
    };
    match versions.as_slice() {
        [v] if *v == SCHEMA_VERSION => Ok(false),
        [v] if *v > SCHEMA_VERSION => Err(StoreError::SchemaTooNew {
            found: *v,
            supported: SCHEMA_VERSION,
        }),
        other => Err(StoreError::Corrupt(format!(
            "unexpected schema_version rows {other:?}"
        ))),
    }
}

const SELECT_MESSAGE: &str = "SELECT id, conversation_id, seq, sender_id, sender_type, content, \
     temp_id, created_at_ms FROM messages";

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up.
    /// `path` is a file name, never a URI (`file:...` names a file of that name), and
    /// ":memory:" is refused: it would keep nothing, and every acknowledged send would be
    /// lost at the next restart.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if path.as_os_str() == ":memory:" {
            return Err(StoreError::InMemory(":memory:".into()));
        }
        // The bundled SQLite is built to read any name that starts with `file:` as a URI,
        // whatever the open flags say, and `file::memory:` or `file:x?mode=memory` would
        // then be a database that keeps nothing. As `./file:...` it is a file name.
        let path = as_file_name(path);
        let path = path.as_ref();
        // Before SQLite opens the files: see `flush_leftovers` for why not after.
        if let Ok(real) = std::fs::canonicalize(path) {
            flush_leftovers(&real)?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let store = Store::init(Connection::open_with_flags(path, flags)?)?;
        if store.conn.path().is_none_or(str::is_empty) {
            // Nothing names a file (a form of in-memory or temporary database this check did
            // not foresee): refused, as `:memory:` is.
            return Err(StoreError::InMemory(path.display().to_string()));
        }
        // The file SQLite opened, symbolic links resolved: opening may have created it
        // and its log, and their names are made durable here.
        let opened = store
            .conn
            .path()
            .map_or_else(|| path.to_path_buf(), Into::into);
        sync_directory(directory_of(&opened))?;
        Ok(store)
    }

    /// A connection that checkpoints this store's log; `None` for an in-memory store.
    pub fn checkpointer(&self) -> Result<Option<Checkpointer>, StoreError> {
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let conn = Connection::open(path)?;
        // The checkpoint's own fsyncs of the database file, before the log may be reused.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "checkpoint_fullfsync", true)?;
        Ok(Some(Checkpointer { conn }))
    }

    /// Keeps `lock` for as long as this store lives (on the store thread, until it stops).
    pub fn keep_lock(&mut self, lock: StoreLock) {
        self.lock = Some(lock);
    }

    /// Leaves the log as it is when this store closes: no checkpoint on close, so the log
    /// is not copied into the database file and deleted. For a store whose log flush or
    /// checkpoint failed: Linux reports a failed write-back once per descriptor, so the
    /// close's own checkpoint, flushing through a descriptor that has already seen the
    /// error, could succeed over pages that never reached the disk and delete the log that
    /// still holds them. The next open copies the log again (see `flush_leftovers`).
    pub fn keep_log_on_close(&self) -> Result<(), StoreError> {
        self.conn
            .set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map(|_| ())
            .map_err(|e| StoreError::Sqlite(Arc::new(e)))
    }

    /// The I/O error of a checkpoint the writer ran by itself at the log's bound, if one
    /// failed since the last call (see `checkpoint_at_bound`): [`StoreError::Checkpoint`],
    /// after which the store must not be written to until it is opened again. Call it on
    /// the thread that commits, after each commit.
    pub fn take_checkpoint_failure(&self) -> Option<StoreError> {
        BOUND_CHECKPOINT_FAILURE.with(|f| f.borrow_mut().take())
    }

    /// A store that lives in memory only; for tests and tools.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
        conn.busy_timeout(DEFAULT_BUSY_TIMEOUT)?;
        // Refused before anything below writes to it: switching to WAL is recorded in the
        // file itself, and another application's database must be left as it was found.
        // (Asked again inside the migration's transaction.)
        is_empty_or_ours(&conn)?;
        // WAL: readers never block the writer and a commit is one sequential log append.
        // An in-memory database answers "memory", which is fine.
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "fullfsync", true)?;
        conn.pragma_update(None, "checkpoint_fullfsync", true)?;
        conn.pragma_update(None, "foreign_keys", true)?;
        // Pages are read through a memory map and kept in a larger cache than the 2 MiB
        // default: tempIds are random, so every insert touches a random page of their
        // index, and once the indexes outgrew the cache each such page was read back with
        // a system call (a third of the store thread's time, profiled when message ids
        // were random too). Not much larger: see `CACHE_KIB`. The price of the map: a disk
        // that fails a read under it ends the process (SIGBUS, as a failed page-in of the
        // binary would) instead of failing that read; the next start reads what the disk
        // still holds, and nothing acknowledged depends on a read.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
        // In place of SQLite's default hook (a checkpoint past 1,000 pages, its result
        // dropped): the same at WAL_AUTOCHECKPOINT_PAGES, its I/O errors kept.
        conn.wal_hook(Some(checkpoint_at_bound));
        let mut store = Store { conn, lock: None };
        store.migrate()?;
        Ok(store)
    }

    /// Creates the schema in an empty database, accepts the current version, and refuses
    /// anything else rather than writing into a database it does not understand.
    fn migrate(&mut self) -> Result<(), StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        if is_empty_or_ours(&tx)? {
            tx.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL) STRICT;")?;
            tx.execute_batch(SCHEMA_V1)?;
            tx.execute_batch(INDEXES_V1)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                [SCHEMA_VERSION],
            )?;
        } else {
            tx.execute_batch(INDEXES_V1)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Commits stop flushing the log themselves; the returned [`LogSync`] flushes it, from
    /// any thread, so that the flush of one commit can overlap the next commit and the
    /// flushes of others. `None` for an in-memory store (nothing to flush). A commit is
    /// durable once a [`LogSync::sync`] that began after it returned has returned `Ok`.
    ///
    /// On error the store is left as it was: committing flushes the log itself.
    pub fn sync_log_apart(&mut self) -> Result<Option<LogSync>, StoreError> {
        let Some(path) = self.conn.path().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        // SQLite names the log after the database file, and creates it when the connection
        // first reads in WAL mode (opening the store did).
        let wal = beside(Path::new(path), "-wal");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&wal)
            .map_err(log_sync_error)?;
        let identity = file_identity(&file.metadata().map_err(log_sync_error)?);
        // In WAL mode NORMAL writes commits without flushing them and flushes everything
        // else as FULL does: the log before a checkpoint copies from it, the database
        // file after. The flush after each commit is the caller's, through `LogSync`.
        self.conn.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(Some(LogSync {
            file,
            path: wal,
            identity,
        }))
    }

    /// How long a write waits for a lock held by another process before failing.
    pub fn set_busy_timeout(&mut self, timeout: Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(timeout)?;
        Ok(())
    }

    /// Creates the conversation, or replaces the member list of an existing one; its
    /// messages are kept. A member listed twice is kept once, at its first position.
    pub fn put_conversation(
        &mut self,
        id: &str,
        members: &[Member],
    ) -> Result<Conversation, StoreError> {
        self.put_conversation_with_last_seq(id, members)
            .map(|(conversation, _)| conversation)
    }

    /// [`Store::put_conversation`], and the conversation's last `seq` (0 if it has no
    /// messages), read inside the same transaction: once the write is committed nothing
    /// more can fail, so a caller told of a failure knows nothing was written.
    pub fn put_conversation_with_last_seq(
        &mut self,
        id: &str,
        members: &[Member],
    ) -> Result<(Conversation, u64), StoreError> {
        // A set of those seen: a 1 MiB API body lists ~30,000 members, and comparing each
        // with every one kept before would hold the store thread for a second.
        let mut seen = std::collections::HashSet::with_capacity(members.len());
        let unique: Vec<Member> = members
            .iter()
            .filter(|m| seen.insert(*m))
            .cloned()
            .collect();
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO conversations (id) VALUES (?1) ON CONFLICT (id) DO NOTHING",
            [id],
        )?;
        tx.execute("DELETE FROM members WHERE conversation_id = ?1", [id])?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO members (conversation_id, position, user_id, user_type) \
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (position, member) in unique.iter().enumerate() {
                let position = i64::try_from(position).unwrap_or(i64::MAX);
                insert.execute(params![id, position, member.user_id, member.user_type])?;
            }
        }
        let last_seq = last_seq_of(&tx, id)?.unwrap_or(0);
        tx.commit()?;
        Ok((
            Conversation {
                id: id.to_owned(),
                members: unique,
            },
            last_seq,
        ))
    }

    /// Every conversation with its members and last `seq` (0 if it has no messages),
    /// ordered by id (byte order); for loading the server's state at start-up.
    pub fn conversations(&self) -> Result<Vec<(Conversation, u64)>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let mut members: HashMap<String, Vec<Member>> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT conversation_id, user_id, user_type FROM members \
                 ORDER BY conversation_id, position",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                members.entry(row.get(0)?).or_default().push(Member {
                    user_id: row.get(1)?,
                    user_type: row.get(2)?,
                });
            }
        }
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT c.id, (SELECT MAX(m.seq) FROM messages m WHERE m.conversation_id = c.id) \
                 FROM conversations c ORDER BY c.id",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let last_seq = seq_from_db(row.get::<_, Option<i64>>(1)?.unwrap_or(0))?;
                let members = members.remove(&id).unwrap_or_default();
                out.push((Conversation { id, members }, last_seq));
            }
        }
        tx.commit()?;
        Ok(out)
    }

    /// One conversation with its members, if it exists.
    pub fn conversation(&self, id: &str) -> Result<Option<Conversation>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
            .query_row([id], |row| row.get(0))?;
        if !exists {
            return Ok(None);
        }
        let members = {
            let mut stmt = tx.prepare_cached(
                "SELECT user_id, user_type FROM members WHERE conversation_id = ?1 \
                 ORDER BY position",
            )?;
            let rows = stmt.query_map([id], |row| {
                Ok(Member {
                    user_id: row.get(0)?,
                    user_type: row.get(1)?,
                })
            })?;
            rows.collect::<Result<Vec<Member>, _>>()?
        };
        tx.commit()?;
        Ok(Some(Conversation {
            id: id.to_owned(),
            members,
        }))
    }

    /// Appends a batch of messages in one transaction (one fsync) and answers each request
    /// in order.
    ///
    /// Per request: a `temp_id` this sender already used (before, or earlier in this batch)
    /// yields [`AppendOutcome::Duplicate`] with the stored message; an unknown conversation
    /// yields [`StoreError::UnknownConversation`], a taken message id
    /// [`StoreError::DuplicateMessageId`], a `created_at_ms` beyond `i64::MAX`
    /// [`StoreError::OutOfRange`], each for that request only; everything else is stored
    /// with the next `seq` of its conversation. If the transaction fails, every request
    /// gets that error and nothing is stored. Results are durable once this returns.
    pub fn append_batch(
        &mut self,
        reqs: &[AppendRequest],
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        self.append_batch_checking(reqs, &[])
    }

    /// [`Store::append_batch`], and each request `i` with `check[i]` is stored only if its
    /// sender is a member of its conversation in the same transaction: otherwise it yields
    /// [`AppendOutcome::NotMember`] (or its duplicate, if it is a retry of a message
    /// stored before). Requests past the end of `check` are not checked.
    pub fn append_batch_checking(
        &mut self,
        reqs: &[AppendRequest],
        check: &[bool],
    ) -> Vec<Result<AppendOutcome, StoreError>> {
        if reqs.is_empty() {
            return Vec::new();
        }
        match self.try_append_batch(reqs, check) {
            Ok(results) => results,
            Err(e) => reqs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// The outer error fails the whole batch (and rolls it back); inner errors belong to
    /// single requests.
    fn try_append_batch(
        &mut self,
        reqs: &[AppendRequest],
        check: &[bool],
    ) -> Result<Vec<Result<AppendOutcome, StoreError>>, StoreError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Last seq per conversation seen in this batch; `None` means unknown conversation.
        let mut last_seqs: HashMap<&str, Option<u64>> = HashMap::new();
        let mut results = Vec::with_capacity(reqs.len());
        {
            // Looked up in the statement cache once per batch, not once per message.
            let mut insert = tx.prepare_cached(INSERT_MESSAGE)?;
            for (i, req) in reqs.iter().enumerate() {
                let checked = check.get(i).copied().unwrap_or(false);
                results.push(append_one(&tx, &mut insert, req, checked, &mut last_seqs)?);
            }
        }
        tx.commit()?;
        Ok(results)
    }

    /// Messages of a conversation, ascending by `seq`, at most `limit` (capped at
    /// [`MAX_PAGE`]). Both bounds are exclusive.
    ///
    /// With `after_seq` (alone or with `before_seq`) the page is the first messages after
    /// it, for reading forward; without it the page is the last messages (before
    /// `before_seq` if given): where a chat opens, and how it scrolls back.
    pub fn messages(
        &self,
        conversation_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        self.messages_within(conversation_id, after_seq, before_seq, limit, usize::MAX)
    }

    /// [`Store::messages`], stopping once the page holds `max_content_bytes` of content:
    /// a message that would take it past that ends the page, unless it is the first.
    /// Counted in the order the page is read: from its start reading forward, from its
    /// end otherwise.
    pub fn messages_within(
        &self,
        conversation_id: &str,
        after_seq: Option<u64>,
        before_seq: Option<u64>,
        limit: usize,
        max_content_bytes: usize,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        let tx = self.conn.unchecked_transaction()?;
        let exists: bool = tx
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM conversations WHERE id = ?1)")?
            .query_row([conversation_id], |row| row.get(0))?;
        if !exists {
            return Err(StoreError::UnknownConversation(conversation_id.to_owned()));
        }
        let limit = i64::try_from(limit.min(MAX_PAGE)).unwrap_or(0);
        // Stored seqs lie in 1..=i64::MAX: an `after` beyond that matches nothing, and a
        // `before` beyond it excludes nothing. `seq < before` is written `seq <= before - 1`
        // so that "no upper bound" is the plain value i64::MAX.
        let after = match after_seq.map(i64::try_from) {
            None => 0,
            Some(Ok(after)) => after,
            Some(Err(_)) => return Ok(Vec::new()),
        };
        let up_to = match before_seq.map(i64::try_from) {
            Some(Ok(before)) => before - 1,
            Some(Err(_)) | None => i64::MAX,
        };
        let messages = if after_seq.is_none() {
            let mut stmt = tx.prepare_cached(&format!(
                "{SELECT_MESSAGE} WHERE conversation_id = ?1 AND seq <= ?2 \
                 ORDER BY seq DESC LIMIT ?3"
            ))?;
            let rows =
                stmt.query_and_then(params![conversation_id, up_to, limit], message_from_row)?;
            let mut page = within_bytes(rows, max_content_bytes)?;
            page.reverse();
            page
        } else {
            let mut stmt = tx.prepare_cached(&format!(
                "{SELECT_MESSAGE} WHERE conversation_id = ?1 AND seq > ?2 AND seq <= ?3 \
                 ORDER BY seq ASC LIMIT ?4"
            ))?;
            let rows = stmt.query_and_then(
                params![conversation_id, after, up_to, limit],
                message_from_row,
            )?;
            within_bytes(rows, max_content_bytes)?
        };
        tx.commit()?;
        Ok(messages)
    }

    /// The highest stored `seq` of a conversation (0 without messages), or `None` if the
    /// conversation does not exist.
    pub fn last_seq(&self, conversation_id: &str) -> Result<Option<u64>, StoreError> {
        last_seq_of(&self.conn, conversation_id)
    }

    /// The creation times of messages stored after `since_ms`, grouped by sender in
    /// (user id, user type) order: what a restarted server needs to restore rate windows.
    pub fn recent_sends(&self, since_ms: u64) -> Result<Vec<(Member, Vec<u64>)>, StoreError> {
        let since = i64::try_from(since_ms).unwrap_or(i64::MAX);
        let mut stmt = self.conn.prepare_cached(
            "SELECT sender_id, sender_type, created_at_ms FROM messages \
             WHERE created_at_ms > ?1 ORDER BY sender_id, sender_type, created_at_ms",
        )?;
        let rows = stmt.query_map([since], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
            ))
        })?;
        let mut out: Vec<(Member, Vec<u64>)> = vec![];
        for row in rows {
            let (user_id, user_type, at) = row?;
            let at = u64::try_from(at).unwrap_or(0);
            match out.last_mut() {
                Some((m, times)) if m.user_id == user_id && m.user_type == user_type => {
                    times.push(at)
                }
                _ => out.push((Member { user_id, user_type }, vec![at])),
            }
        }
        Ok(out)
    }

    /// The message this sender stored with this `temp_id`, if any.
    pub fn find_by_temp_id(
        &self,
        sender_id: &str,
        sender_type: &str,
        temp_id: &str,
    ) -> Result<Option<StoredMessage>, StoreError> {
        find_by_temp_id(&self.conn, sender_id, sender_type, temp_id)
    }
}

/// Inserts one message; a used tempId or id makes it do nothing (see [`append_one`]).
const INSERT_MESSAGE: &str = "INSERT INTO messages (conversation_id, seq, id, sender_id, \
     sender_type, content, temp_id, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (sender_id, sender_type, temp_id) WHERE temp_id IS NOT NULL DO NOTHING \
     ON CONFLICT (id) DO NOTHING";

fn append_one<'r>(
    conn: &Connection,
    insert: &mut Statement<'_>,
    req: &'r AppendRequest,
    check_member: bool,
    last_seqs: &mut HashMap<&'r str, Option<u64>>,
) -> Result<Result<AppendOutcome, StoreError>, StoreError> {
    let Ok(created_at) = i64::try_from(req.created_at_ms) else {
        return refuse(
            conn,
            req,
            StoreError::OutOfRange {
                field: "created_at_ms",
                value: req.created_at_ms,
            },
        );
    };
    let last_seq = match last_seqs.get(req.conversation_id.as_str()) {
        Some(known) => *known,
        None => {
            let found = last_seq_of(conn, &req.conversation_id)?;
            last_seqs.insert(&req.conversation_id, found);
            found
        }
    };
    let Some(last_seq) = last_seq else {
        let unknown = StoreError::UnknownConversation(req.conversation_id.clone());
        return refuse(conn, req, unknown);
    };
    if check_member && !is_member(conn, req)? {
        // A retry of a message stored while the sender was a member is its duplicate,
        // as anywhere else; anything else is refused.
        return Ok(Ok(match stored_before(conn, req)? {
            Some(existing) => AppendOutcome::Duplicate(existing),
            None => AppendOutcome::NotMember,
        }));
    }
    let seq = last_seq.saturating_add(1);
    let Ok(seq_db) = i64::try_from(seq) else {
        let err = StoreError::OutOfRange {
            field: "seq",
            value: seq,
        };
        return refuse(conn, req, err);
    };
    // A used tempId or id makes the insert do nothing; only then is it looked up which
    // one it was, so the common case costs one statement and no index probe of its own.
    let inserted = insert.execute(params![
        req.conversation_id,
        seq_db,
        req.id,
        req.sender_id,
        req.sender_type,
        req.content,
        req.temp_id,
        created_at,
    ])?;
    if inserted == 0 {
        return refuse(conn, req, StoreError::DuplicateMessageId(req.id.clone()));
    }
    last_seqs.insert(&req.conversation_id, Some(seq));
    Ok(Ok(AppendOutcome::Stored(StoredMessage {
        id: req.id.clone(),
        conversation_id: req.conversation_id.clone(),
        seq,
        sender_id: req.sender_id.clone(),
        sender_type: req.sender_type.clone(),
        content: req.content.clone(),
        temp_id: req.temp_id.clone(),
        created_at_ms: req.created_at_ms,
    })))
}

/// A request that cannot be stored as new: if its sender already used its `tempId`, that
/// is the answer (a retry is a duplicate, whatever else is wrong with it); otherwise `err`.
fn refuse(
    conn: &Connection,
    req: &AppendRequest,
    err: StoreError,
) -> Result<Result<AppendOutcome, StoreError>, StoreError> {
    Ok(match stored_before(conn, req)? {
        Some(existing) => Ok(AppendOutcome::Duplicate(existing)),
        None => Err(err),
    })
}

/// The message `req`'s sender already stored under its `tempId`, if any.
fn stored_before(
    conn: &Connection,
    req: &AppendRequest,
) -> Result<Option<StoredMessage>, StoreError> {
    match &req.temp_id {
        Some(temp_id) => find_by_temp_id(conn, &req.sender_id, &req.sender_type, temp_id),
        None => Ok(None),
    }
}

/// Whether the sender of `req` is a member of its conversation now.
fn is_member(conn: &Connection, req: &AppendRequest) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM members \
             WHERE conversation_id = ?1 AND user_id = ?2 AND user_type = ?3)",
        )?
        .query_row(
            params![req.conversation_id, req.sender_id, req.sender_type],
            |row| row.get(0),
        )?)
}

/// The highest stored seq of a conversation (0 without messages), or `None` if the
/// conversation does not exist.
fn last_seq_of(conn: &Connection, conversation_id: &str) -> Result<Option<u64>, StoreError> {
    let last: Option<Option<i64>> = conn
        .prepare_cached(
            "SELECT (SELECT MAX(m.seq) FROM messages m WHERE m.conversation_id = c.id) \
             FROM conversations c WHERE c.id = ?1",
        )?
        .query_row([conversation_id], |row| row.get(0))
        .optional()?;
    match last {
        None => Ok(None),
        Some(last) => Ok(Some(seq_from_db(last.unwrap_or(0))?)),
    }
}

fn find_by_temp_id(
    conn: &Connection,
    sender_id: &str,
    sender_type: &str,
    temp_id: &str,
) -> Result<Option<StoredMessage>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "{SELECT_MESSAGE} WHERE sender_id = ?1 AND sender_type = ?2 AND temp_id = ?3"
    ))?;
    let mut rows =
        stmt.query_and_then(params![sender_id, sender_type, temp_id], message_from_row)?;
    rows.next().transpose()
}

fn message_from_row(row: &Row<'_>) -> Result<StoredMessage, StoreError> {
    let created_at: i64 = row.get(7)?;
    Ok(StoredMessage {
        id: row.get(0)?,
        conversation_id: row.get(1)?,
        seq: seq_from_db(row.get(2)?)?,
        sender_id: row.get(3)?,
        sender_type: row.get(4)?,
        content: row.get(5)?,
        temp_id: row.get(6)?,
        created_at_ms: u64::try_from(created_at)
            .map_err(|_| StoreError::Corrupt(format!("negative created_at_ms {created_at}")))?,
    })
}

fn seq_from_db(seq: i64) -> Result<u64, StoreError> {
    u64::try_from(seq).map_err(|_| StoreError::Corrupt(format!("negative seq {seq}")))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use rusqlite::ffi;

    fn sqlite_error(code: c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(code), None)
    }

    #[test]
    fn a_name_that_reads_as_a_uri_is_opened_as_a_file_of_that_name() {
        for uri in ["file::memory:", "file:hl.db?mode=memory", "file:hl.db"] {
            assert_eq!(as_file_name(Path::new(uri)), Path::new(".").join(uri));
        }
        for name in ["heartline.db", "/var/lib/file:x.db", "data/file:x.db"] {
            assert_eq!(as_file_name(Path::new(name)), Path::new(name));
        }
        // What names no file after all (here SQLite's private temporary database) is
        // refused, as `:memory:` is.
        assert!(matches!(
            Store::open(Path::new("")),
            Err(StoreError::InMemory(_))
        ));
        assert!(matches!(
            Store::open(Path::new(":memory:")),
            Err(StoreError::InMemory(_))
        ));
    }

    /// A database file that cannot be opened for writing is reported as that, naming it
    /// (it was reported as a failed flush of the log).
    #[test]
    fn a_database_that_cannot_be_written_is_reported_as_such() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Store::open(dir.path()).err().map(|e| e.to_string());
        let e = e.unwrap_or_default();
        assert!(
            e.starts_with(&format!(
                "cannot open {} for writing: ",
                dir.path().display()
            )),
            "{e}"
        );
    }

    #[test]
    fn the_writers_own_checkpoint_keeps_an_io_error_for_the_stores_owner() {
        let store = Store::open_in_memory().expect("store");
        // A lock is no failure: the next commit checkpoints again.
        keep_bound_checkpoint_result(Err(sqlite_error(ffi::SQLITE_BUSY)));
        assert!(store.take_checkpoint_failure().is_none());
        keep_bound_checkpoint_result(Err(sqlite_error(ffi::SQLITE_IOERR_FSYNC)));
        keep_bound_checkpoint_result(Err(sqlite_error(ffi::SQLITE_IOERR_WRITE)));
        let kept = store.take_checkpoint_failure();
        let code = match &kept {
            Some(StoreError::Checkpoint(e)) => e.sqlite_error().map(|f| f.extended_code),
            other => panic!("not a checkpoint failure: {other:?}"),
        };
        assert_eq!(
            code,
            Some(ffi::SQLITE_IOERR_FSYNC),
            "the first error is kept"
        );
        assert!(store.take_checkpoint_failure().is_none(), "taken once");
    }

    #[test]
    fn the_writer_checkpoints_the_whole_log_at_its_bound_through_the_stores_hook() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&dir.path().join("t.db")).expect("store");
        let before = BOUND_CHECKPOINTS.with(Cell::get);
        // One commit that takes the log past its bound (4 KiB pages).
        let bytes = (WAL_AUTOCHECKPOINT_PAGES + 64) * 4096;
        store
            .conn
            .execute_batch(&format!(
                "CREATE TABLE scratch (b BLOB); INSERT INTO scratch VALUES (zeroblob({bytes}));"
            ))
            .expect("big commit");
        assert_eq!(BOUND_CHECKPOINTS.with(Cell::get), before + 1);
        assert!(store.take_checkpoint_failure().is_none());
        // Every page was copied, so the next write starts the log over.
        store
            .conn
            .execute("DELETE FROM scratch", [])
            .expect("small commit");
        let (log, copied): (i64, i64) = store
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert!(
            log < 1_000,
            "log started over: {log} pages ({copied} copied)"
        );
    }
}
