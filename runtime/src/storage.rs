//! The store's own threads: group commit, flushes of the log apart from the commits, FIFO
//! answers, and the mapping between the core's storage effects and [`crate::store`].
//!
//! SQLite is blocking, and an fsync can take milliseconds, so the store never runs on the
//! actor that drives the core: it gets a dedicated OS thread fed by a channel. Each time the
//! thread wakes it takes everything queued (up to [`MAX_BATCH`]) and works through it in
//! order, folding each run of consecutive appends into one [`Store::append_batch`]: one
//! transaction for the whole run, however many clients sent at once. Answers go back in
//! the order the operations were asked, because the core relies on it (a join's catch-up
//! read must see every append that was acknowledged before it). The one exception is a
//! tempId lookup ([`Job::Find`]): it does not end a run, but is answered after the run's
//! commit, so it sees every append before it (and those of its run after it), and a
//! stream of refused sends cannot split other users' group commits.
//!
//! A file-backed store's commits do not flush the log themselves: up to
//! [`LOG_SYNC_THREADS`] flush threads do, each starting a flush as soon as a commit has
//! none begun after it, and every answer waits (in order) until a flush that began after
//! what it saw has returned (see `Stage`). So a send that arrives while a flush runs is
//! committed at once and flushed by the next one, which overlaps the first, instead of
//! waiting for that flush and then for its own in turn. (Measured at 500 sends/s, 21
//! alternated pairs of 30 s runs against each commit flushing the log itself: ack p99
//! lower in 15, medians 3.84 against 4.46 ms on a fresh database and 4.40 against 4.84 ms
//! after a saturation run.) A failed flush fails every answer it held back and every
//! operation after it, until the store is opened again; so does a checkpoint that fails
//! with an I/O error (see [`StoreError::Checkpoint`]), the checkpointer's or the one the
//! writer runs inside a commit at the log's bound ([`Store::take_checkpoint_failure`]).
//!
//! A second thread checkpoints the database's log (see [`crate::store`] for why not inside
//! commits); it ends with the store thread. Its writes of the database file reach the
//! disk with that file's next fsync, which SQLite does only after a checkpoint that copied
//! the whole log (under steady traffic a commit usually overtakes the copy, and the pages
//! wait in the operating system's cache for a later complete one, often the writer's own at
//! the log's bound). Those writes slow the log's flushes they meet, on the same disk, so
//! checkpoints are spaced [`CHECKPOINT_EVERY`] apart; only when the log nears the size at
//! which the writer checkpoints by itself are they [`CHECKPOINT_EVERY_NEAR_BOUND`] apart,
//! so that the writer's checkpoint, which every send behind it waits for, finds little
//! left to copy. (Measured at 500 sends/s, five alternated 30 s runs each: a checkpoint
//! every 200 ms gave an ack p99 of 4.35–6.20 ms, every second 3.66–4.70 ms; every second
//! without the closer spacing, 2 of the 5 runs' p999 went from ~9 ms to 22 and 87 ms.
//! Flushing the database file after every checkpoint raised the share of log flushes over
//! 2 ms and the ack p99; repeating a checkpoint until no commit overtook it, so that the
//! log starts over every second, changed neither p99 nor p999 clearly: see
//! `tests/bench/FINDINGS.md`.)
//!
//! Conversation writes from the HTTP API pass through the same queue, and their
//! [`gateway::Input::ConversationPut`] travels back on the same channel as the append
//! results, so the core learns a conversation's `last_seq` in order with its messages.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use heartline_core::gateway::{self, OpId};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::RuntimeMetrics;
use crate::store::{self, Conversation, Store, StoreError, StoredMessage};

/// Most operations taken in one wake-up; bounds the latency of the first of them.
pub const MAX_BATCH: usize = 1024;

/// How often the log is checkpointed while it is well short of
/// [`store::WAL_AUTOCHECKPOINT_PAGES`].
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// How often the log is checkpointed once it holds [`CHECKPOINT_NEAR_BOUND_PAGES`] or more,
/// so that the writer's own checkpoint, when the log reaches
/// [`store::WAL_AUTOCHECKPOINT_PAGES`], has only this interval's pages to copy.
pub const CHECKPOINT_EVERY_NEAR_BOUND: Duration = Duration::from_millis(200);

/// Log pages from which checkpoints come [`CHECKPOINT_EVERY_NEAR_BOUND`] apart: the last
/// quarter of the log's bound (about 3 s of it at 500 sends/s).
pub const CHECKPOINT_NEAR_BOUND_PAGES: i64 =
    store::WAL_AUTOCHECKPOINT_PAGES - store::WAL_AUTOCHECKPOINT_PAGES / 4;

// The closer spacing is closer, and it starts before the bound.
const _: () = assert!(
    CHECKPOINT_EVERY_NEAR_BOUND.as_millis() < CHECKPOINT_EVERY.as_millis()
        && CHECKPOINT_NEAR_BOUND_PAGES < store::WAL_AUTOCHECKPOINT_PAGES
);

/// Reply to a conversation write: the conversation as stored, and its last `seq`.
pub type PutReply = oneshot::Sender<Result<(Conversation, u64), StoreError>>;

/// Reply to a message read from the HTTP API.
pub type MessagesReply = oneshot::Sender<Result<Vec<StoredMessage>, StoreError>>;

/// One operation for the store thread.
#[derive(Debug)]
pub enum Job {
    /// A core append; answered with `Input::Appended`.
    Append {
        /// The core's operation id.
        op: OpId,
        /// The message.
        request: gateway::AppendRequest,
        /// How many member-list writes of this process the core had been told of
        /// (`Input::ConversationPut` after a `Put`) when it asked: where a list was written
        /// since, the sender's membership is checked again at the commit
        /// ([`MemberWrites`]).
        members_seen: u64,
    },
    /// A core read; answered with `Input::Read`.
    Read {
        /// The core's operation id.
        op: OpId,
        /// What to read.
        request: gateway::ReadRequest,
    },
    /// A core lookup of a sender's tempId; answered with `Input::Found` once the appends
    /// queued around it are committed (it does not split their group commit).
    Find {
        /// The core's operation id.
        op: OpId,
        /// Who sent it.
        sender: gateway::Member,
        /// The sender's idempotency key.
        temp_id: String,
    },
    /// Create a conversation or replace its members (HTTP API); the core is told with
    /// `Input::ConversationPut`, then the caller is answered.
    Put {
        /// Conversation id.
        id: String,
        /// New members.
        members: Vec<store::Member>,
        /// The caller.
        reply: PutReply,
    },
    /// Read messages for the HTTP API.
    Messages {
        /// Conversation id.
        id: String,
        /// Only messages after this `seq`.
        after_seq: Option<u64>,
        /// At most this many.
        limit: usize,
        /// The caller.
        reply: MessagesReply,
    },
    /// Answered once everything queued before it has been done and answered.
    Flush {
        /// The caller.
        reply: oneshot::Sender<()>,
    },
    /// Finish everything queued before it, then stop the thread.
    Stop,
}

/// The sending side of the store thread's queue.
#[derive(Debug, Clone)]
pub struct StoreQueue {
    tx: std_mpsc::Sender<Queued>,
}

/// A job and when it was queued, for `heartline_store_wait_seconds`.
#[derive(Debug)]
struct Queued {
    at: Instant,
    job: Job,
}

impl StoreQueue {
    /// A queue with no store behind it, for an application that stores nothing: every job
    /// is refused, and a waiting caller's reply channel closes at once.
    pub fn detached() -> Self {
        let (tx, _) = std_mpsc::channel();
        StoreQueue { tx }
    }

    /// A queue whose store takes every job and answers none (a store that hangs), and
    /// what keeps it taking them.
    #[cfg(test)]
    pub(crate) fn hung() -> (Self, Box<dyn std::any::Any + Send>) {
        let (tx, rx) = std_mpsc::channel::<Queued>();
        (StoreQueue { tx }, Box::new(rx))
    }

    /// Queues a job; `false` if the store thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.send_or_return(job).is_none()
    }

    /// Queues a job; hands it back if the store thread is gone.
    pub fn send_or_return(&self, job: Job) -> Option<Job> {
        self.tx
            .send(Queued {
                at: Instant::now(),
                job,
            })
            .err()
            .map(|e| e.0.job)
    }
}

/// Flushes of the log that may be in progress at once. A commit that arrives while one
/// flush runs starts its own at once instead of waiting for that one to end; the disk
/// overlaps them (measured here: four threads each committing and flushing, 1,500 flushes
/// a second at a median of 0.39 ms, against 0.52 ms for one thread at 354 a second).
pub const LOG_SYNC_THREADS: usize = 3;

/// Starts the store thread, and beside it the threads that flush its log and checkpoint
/// it. Core results are sent on `results`; the threads end when every [`StoreQueue`] is
/// dropped.
pub fn spawn(
    mut store: Store,
    results: mpsc::UnboundedSender<gateway::Input>,
    metrics: Arc<RuntimeMetrics>,
) -> std::io::Result<(StoreQueue, JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel();
    let log = match store.sync_log_apart() {
        Ok(log) => log,
        Err(e) => {
            tracing::warn!(error = %e, "each commit flushes the log itself");
            None
        }
    };
    let mut stage = Stage::new(results, metrics.clone(), log.is_some());
    // Without a log flushed apart there is no `forget_log`: that fallback is taken when
    // the log could not be opened beside SQLite (or SQLite would not leave its flushes to
    // us), and a handle to drop its cached pages would have to be opened the same way.
    if let Some(log) = &log {
        let own = log.reopen().map_err(std::io::Error::other)?;
        stage.forget_log = Some(Box::new(move || own.forget_cached()));
    }
    let stage = Arc::new(stage);
    let checkpoints = match store.checkpointer() {
        Ok(Some(cp)) => {
            let (stop, stopped) = std_mpsc::channel::<()>();
            let failing = stage.clone();
            let handle = std::thread::Builder::new()
                .name("heartline-checkpoint".into())
                .spawn(move || checkpoint_loop(|| cp.checkpoint(), &failing, &stopped))?;
            Some((stop, handle))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints by itself");
            None
        }
    };
    let mut flushers = Vec::new();
    if let Some(log) = log {
        // A descriptor per flush thread: see `LogSync::reopen`.
        let mut logs = Vec::with_capacity(LOG_SYNC_THREADS);
        for _ in 1..LOG_SYNC_THREADS {
            logs.push(log.reopen().map_err(std::io::Error::other)?);
        }
        logs.push(log);
        for (i, log) in logs.into_iter().enumerate() {
            let flusher = stage.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("heartline-flush-{i}"))
                .spawn(move || flusher.flush_loop(|| log.sync()));
            match spawned {
                Ok(handle) => flushers.push(handle),
                Err(e) => {
                    // Those already started end at once: nothing was committed.
                    stage.stop();
                    return Err(e);
                }
            }
        }
    }
    let writer = stage.clone();
    let spawned = std::thread::Builder::new()
        .name("heartline-store".into())
        .spawn(move || {
            // Declared before `ended`, so that an unwinding thread fails the stage first
            // and then closes the store as a failed one.
            let mut closing = Closing {
                store: Some(store),
                stage: &writer,
            };
            // Between the two: the flush and checkpoint threads are joined once the stage
            // has ended and before the store closes, however the thread ends.
            let threads = Joined {
                flushers,
                checkpoints,
            };
            // Should the thread unwind (nothing in it panics by design), what it held back
            // is failed rather than left waiting, and the flush threads still end.
            let ended = Ended(&writer);
            if let Some(store) = closing.store.as_mut() {
                run(store, rx, &writer, &metrics);
            }
            drop(ended);
            drop(threads);
            // Last: closing the store closes its lock's descriptor of the database file,
            // and with it every POSIX lock this process holds on that file, the
            // checkpointer's connection's included, which must have finished by then.
            drop(closing);
        });
    match spawned {
        Ok(handle) => Ok((StoreQueue { tx }, handle)),
        Err(e) => {
            stage.stop();
            Err(e)
        }
    }
}

/// Closes the store once nothing else uses it. After a failed flush or checkpoint the
/// log is left for the next open to copy again ([`Store::keep_log_on_close`]): the close's
/// own checkpoint would otherwise copy it and delete it, and its flush of the database file
/// could succeed over a write-back that failed.
fn close(store: Store, stage: &Stage) {
    if let Some(failure) = stage.failed() {
        if let Err(e) = store.keep_log_on_close() {
            tracing::error!(error = %e, after = %failure, "cannot keep the log on close");
        }
    }
    drop(store);
}

/// The store thread's helpers, joined when this is dropped: the flush threads (which end
/// once the stage stops) and the checkpoint thread (told to stop by its channel's end).
struct Joined {
    flushers: Vec<std::thread::JoinHandle<()>>,
    checkpoints: Option<(std_mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Drop for Joined {
    fn drop(&mut self) {
        for handle in self.flushers.drain(..) {
            let _ = handle.join();
        }
        if let Some((stop, handle)) = self.checkpoints.take() {
            drop(stop);
            let _ = handle.join();
        }
    }
}

/// The store, closed with [`close`] when this is dropped: at the end of the store thread,
/// or as it unwinds.
struct Closing<'a> {
    store: Option<Store>,
    stage: &'a Stage,
}

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            close(store, self.stage);
        }
    }
}

/// Ends the stage when the store thread ends, however it ends: an unwinding thread fails
/// every answer held back (and everything after), so that no caller waits forever.
struct Ended<'a>(&'a Stage);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.fail(StoreError::Stopped);
        }
        self.0.stop();
    }
}

/// Checkpoints (with `checkpoint`, [`store::Checkpointer::checkpoint`] but in tests) until
/// `stopped`'s sender is dropped, at the interval [`checkpoint_interval`] picks from the
/// log's size. A checkpoint that failed with an I/O error ([`StoreError::Checkpoint`]) fails
/// the stage, as a failed flush of the log does, and ends the checkpoints: a later one could
/// succeed over pages that were never written and let the log, which still holds them, be
/// started over. Any other failure is retried at the next interval.
fn checkpoint_loop(
    checkpoint: impl Fn() -> Result<(i64, i64), StoreError>,
    stage: &Stage,
    stopped: &std_mpsc::Receiver<()>,
) {
    let mut wait = CHECKPOINT_EVERY;
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        if stage.failed().is_some() {
            break;
        }
        wait = match checkpoint() {
            Ok((log_pages, _copied)) => checkpoint_interval(log_pages),
            Err(e @ StoreError::Checkpoint(_)) => {
                stage.fail(e);
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed; trying again");
                CHECKPOINT_EVERY
            }
        };
    }
}

/// The wait before the next checkpoint, given the pages in the log after the last one.
pub fn checkpoint_interval(log_pages: i64) -> Duration {
    if log_pages >= CHECKPOINT_NEAR_BOUND_PAGES {
        CHECKPOINT_EVERY_NEAR_BOUND
    } else {
        CHECKPOINT_EVERY
    }
}

fn run(store: &mut Store, rx: std_mpsc::Receiver<Queued>, stage: &Stage, metrics: &RuntimeMetrics) {
    let mut jobs: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
    let mut writes = MemberWrites::default();
    while let Ok(first) = rx.recv() {
        jobs.push(first);
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut appends = Appends::default();
        let mut stop = false;
        for Queued { at, job } in jobs.drain(..) {
            if let Some(e) = stage.failed() {
                // The log could not be flushed: nothing more is stored or read.
                refuse_appends(&mut appends, stage, &e, metrics);
                stop |= matches!(job, Job::Stop);
                if let Some(answer) = Answer::refusal(job, &e, metrics) {
                    stage.answer(answer);
                }
                continue;
            }
            match job {
                // Asked after the stop: dropped, its caller sees the store gone.
                _ if stop => {}
                Job::Append {
                    op,
                    request,
                    members_seen,
                } => {
                    appends.ops.push(op);
                    appends.queued.push(at);
                    appends.check.push(writes.since(&request, members_seen));
                    appends.requests.push(request);
                }
                Job::Find {
                    op,
                    sender,
                    temp_id,
                } => appends.finds.push((op, at, sender, temp_id)),
                Job::Stop => {
                    commit(store, &mut appends, stage, metrics);
                    stop = true;
                }
                other => {
                    commit(store, &mut appends, stage, metrics);
                    if !matches!(other, Job::Flush { .. }) {
                        metrics.store_wait.observe(at.elapsed());
                    }
                    serve(store, other, &mut writes, stage, metrics);
                }
            }
        }
        writes.forget_seen();
        match stage.failed() {
            None => commit(store, &mut appends, stage, metrics),
            Some(e) => refuse_appends(&mut appends, stage, &e, metrics),
        }
        if stop {
            break;
        }
    }
    tracing::debug!("store thread stopped");
}

/// A run of consecutive appends: the core's operation ids, when each was queued and, in
/// the same order, the requests (kept apart so the batch is handed to the store without
/// copying it); and the tempId lookups asked among them, answered after the commit.
#[derive(Debug, Default)]
struct Appends {
    ops: Vec<OpId>,
    queued: Vec<Instant>,
    requests: Vec<store::AppendRequest>,
    /// Per request, whether its sender's membership is checked at the commit.
    check: Vec<bool>,
    finds: Vec<(OpId, Instant, gateway::Member, String)>,
}

/// The member lists this process has written, so that an append is checked against its
/// conversation's list only where the core may not have known it ([`AppendOutcome::NotMember`]).
///
/// The core admits a send by the lists it has been told of, and it is told of a list only
/// once its commit is flushed ([`Answer::Put`]), so a send admitted in between would
/// otherwise be stored after the list that removed its sender. Every written list is
/// numbered; an append carries how many of them the core had been told of when it asked
/// (`members_seen`, stamped by the actor in the order it feeds the core); a list written
/// with a higher number is news to it, and only then does the commit look the sender up
/// (one probe of the members' unique index). Appends arrive with `members_seen` never
/// decreasing, so a list numbered at or below the highest seen is news to no later
/// append and is forgotten.
///
/// [`AppendOutcome::NotMember`]: gateway::AppendOutcome::NotMember
#[derive(Debug, Default)]
struct MemberWrites {
    /// Lists written so far in this process.
    written: u64,
    /// Per conversation, the number of its latest list, while some append may not know it.
    latest: std::collections::HashMap<String, u64>,
    /// The highest `members_seen` of an append so far.
    seen: u64,
}

impl MemberWrites {
    /// A conversation's member list was written (committed).
    fn written(&mut self, id: &str) {
        self.written += 1;
        self.latest.insert(id.to_owned(), self.written);
    }

    /// Whether `request`'s conversation has had a list written that the core had not been
    /// told of when it asked, with `members_seen` lists known.
    fn since(&mut self, request: &store::AppendRequest, members_seen: u64) -> bool {
        self.seen = self.seen.max(members_seen);
        self.latest
            .get(&request.conversation_id)
            .is_some_and(|n| *n > members_seen)
    }

    /// Forgets the lists every append from now on knows of.
    fn forget_seen(&mut self) {
        if !self.latest.is_empty() {
            let seen = self.seen;
            self.latest.retain(|_, n| *n > seen);
        }
    }
}

/// Appends a run of requests in one transaction and answers each, then answers the
/// lookups asked among them (which so see every append asked before them).
fn commit(store: &mut Store, appends: &mut Appends, stage: &Stage, metrics: &RuntimeMetrics) {
    commit_appends(store, appends, stage, metrics);
    for (op, at, sender, temp_id) in appends.finds.drain(..) {
        metrics.store_wait.observe(at.elapsed());
        let result = store
            .find_by_temp_id(&sender.user_id, &sender.user_type, &temp_id)
            .map_err(|e| failure(metrics, op, "tempId lookup", &e));
        stage.answer(Answer::Core(gateway::Input::Found { op, result }));
    }
}

/// Answers a run of appends (and the lookups among them) that will not be committed,
/// because the stage failed with `e` while they were being gathered.
fn refuse_appends(appends: &mut Appends, stage: &Stage, e: &StoreError, metrics: &RuntimeMetrics) {
    appends.queued.clear();
    appends.check.clear();
    let appended = appends
        .ops
        .drain(..)
        .zip(appends.requests.drain(..))
        .map(|(op, request)| Job::Append {
            op,
            request,
            // Refused whatever it was: nothing is checked.
            members_seen: 0,
        });
    let found = appends
        .finds
        .drain(..)
        .map(|(op, _, sender, temp_id)| Job::Find {
            op,
            sender,
            temp_id,
        });
    for job in appended.chain(found) {
        if let Some(answer) = Answer::refusal(job, e, metrics) {
            stage.answer(answer);
        }
    }
}

/// The core's view of a store that failed with `e`, counted.
fn store_failure(e: &StoreError, metrics: &RuntimeMetrics) -> gateway::StoreFailure {
    RuntimeMetrics::inc(&metrics.store_failures);
    gateway::StoreFailure(e.to_string())
}

/// A core operation the store could not do: counted, logged, and told to the core.
fn failure(
    metrics: &RuntimeMetrics,
    op: OpId,
    what: &str,
    e: &StoreError,
) -> gateway::StoreFailure {
    RuntimeMetrics::inc(&metrics.store_failures);
    tracing::warn!(%op, error = %e, "{what} failed");
    gateway::StoreFailure(e.to_string())
}

fn commit_appends(
    store: &mut Store,
    appends: &mut Appends,
    stage: &Stage,
    metrics: &RuntimeMetrics,
) {
    if appends.ops.is_empty() {
        return;
    }
    let started = Instant::now();
    for at in appends.queued.drain(..) {
        metrics
            .store_wait
            .observe(started.saturating_duration_since(at));
    }
    let outcomes = store.append_batch_checking(&appends.requests, &appends.check);
    metrics.store_commit.observe(started.elapsed());
    appends.requests.clear();
    appends.check.clear();
    RuntimeMetrics::inc(&metrics.store_batches);
    metrics.store_appends.fetch_add(
        outcomes
            .iter()
            .filter(|o| o.as_ref().is_ok_and(|o| o.message().is_some()))
            .count() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    let answers = appends.ops.drain(..).zip(outcomes).map(|(op, outcome)| {
        let result = outcome.map_err(|e| failure(metrics, op, "append", &e));
        Answer::Core(gateway::Input::Appended { op, result })
    });
    stage.committed(answers);
    check_own_checkpoint(store, stage);
}

/// Fails the stage if the commit just made ran a checkpoint of the writer's own (at the
/// log's bound) that failed with an I/O error: as with the checkpointer's, a later one
/// could succeed over pages that never reached the disk.
fn check_own_checkpoint(store: &Store, stage: &Stage) {
    if let Some(e) = store.take_checkpoint_failure() {
        stage.fail(e);
    }
}

fn serve(
    store: &mut Store,
    job: Job,
    writes: &mut MemberWrites,
    stage: &Stage,
    metrics: &RuntimeMetrics,
) {
    match job {
        // Handled by the run loop itself.
        Job::Append { .. } | Job::Find { .. } | Job::Stop => {}
        Job::Read { op, request } => {
            let result = store
                .messages_within(
                    &request.conversation_id,
                    request.after_seq,
                    request.before_seq,
                    request.limit,
                    request.max_content_bytes,
                )
                .map_err(|e| failure(metrics, op, "read", &e));
            stage.answer(Answer::Core(gateway::Input::Read { op, result }));
        }
        Job::Put { id, members, reply } => {
            let result = store.put_conversation_with_last_seq(&id, &members);
            match &result {
                Ok(_) => writes.written(&id),
                Err(e) => {
                    RuntimeMetrics::inc(&metrics.store_failures);
                    tracing::warn!(conversation = %id, error = %e, "conversation write failed");
                }
            }
            // A failed put wrote nothing (its transaction, the last-seq read included, rolled
            // back); either way its answer waits for the flush of what is committed so far.
            stage.committed([Answer::Put { reply, result }]);
            check_own_checkpoint(store, stage);
        }
        Job::Messages {
            id,
            after_seq,
            limit,
            reply,
        } => {
            // The API reads forward: no afterSeq is from the first message.
            let result = store.messages(&id, Some(after_seq.unwrap_or(0)), None, limit);
            stage.answer(Answer::Messages { reply, result });
        }
        Job::Flush { reply } => stage.answer(Answer::Flush(reply)),
    }
}

/// What the store thread worked out for one operation, held back until everything it may
/// have seen is durable, then delivered.
#[derive(Debug)]
enum Answer {
    /// A result for the core.
    Core(gateway::Input),
    /// A conversation write for the HTTP API (and, if it succeeded, for the core).
    Put {
        reply: PutReply,
        result: Result<(Conversation, u64), StoreError>,
    },
    /// A message read for the HTTP API.
    Messages {
        reply: MessagesReply,
        result: Result<Vec<StoredMessage>, StoreError>,
    },
    /// A flush of the queue itself.
    Flush(oneshot::Sender<()>),
}

impl Answer {
    /// The answer to a job the store will not do because the stage failed with `e`.
    fn refusal(job: Job, e: &StoreError, metrics: &RuntimeMetrics) -> Option<Answer> {
        let failure = || store_failure(e, metrics);
        Some(match job {
            Job::Append { op, .. } => Answer::Core(gateway::Input::Appended {
                op,
                result: Err(failure()),
            }),
            Job::Read { op, .. } => Answer::Core(gateway::Input::Read {
                op,
                result: Err(failure()),
            }),
            Job::Find { op, .. } => Answer::Core(gateway::Input::Found {
                op,
                result: Err(failure()),
            }),
            Job::Put { reply, .. } => Answer::Put {
                reply,
                result: Err(e.clone()),
            },
            Job::Messages { reply, .. } => Answer::Messages {
                reply,
                result: Err(e.clone()),
            },
            Job::Flush { reply } => Answer::Flush(reply),
            Job::Stop => return None,
        })
    }

    /// This answer with a success replaced by `e`: what it saw may not survive a crash.
    /// A failure stays as it is.
    fn failed(self, e: &StoreError, metrics: &RuntimeMetrics) -> Answer {
        let failure = || store_failure(e, metrics);
        match self {
            Answer::Core(gateway::Input::Appended { op, result: Ok(_) }) => {
                Answer::Core(gateway::Input::Appended {
                    op,
                    result: Err(failure()),
                })
            }
            Answer::Core(gateway::Input::Read { op, result: Ok(_) }) => {
                Answer::Core(gateway::Input::Read {
                    op,
                    result: Err(failure()),
                })
            }
            Answer::Core(gateway::Input::Found { op, result: Ok(_) }) => {
                Answer::Core(gateway::Input::Found {
                    op,
                    result: Err(failure()),
                })
            }
            Answer::Put {
                reply,
                result: Ok(_),
            } => Answer::Put {
                reply,
                result: Err(e.clone()),
            },
            Answer::Messages {
                reply,
                result: Ok(_),
            } => Answer::Messages {
                reply,
                result: Err(e.clone()),
            },
            other => other,
        }
    }

    fn deliver(self, results: &mpsc::UnboundedSender<gateway::Input>) {
        match self {
            Answer::Core(input) => {
                let _ = results.send(input);
            }
            Answer::Put { reply, result } => {
                if let Ok((conv, last_seq)) = &result {
                    let _ = results.send(gateway::Input::ConversationPut {
                        id: conv.id.clone(),
                        members: conv.members.clone(),
                        last_seq: *last_seq,
                    });
                }
                let _ = reply.send(result);
            }
            Answer::Messages { reply, result } => {
                let _ = reply.send(result);
            }
            Answer::Flush(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// Where answers wait for durability, in the order they were worked out.
///
/// Commits are counted. An answer is tagged with the count when it was worked out: a
/// commit's own answers with that commit, a read with the last commit before it (it may
/// have seen that commit's rows). A flush that began when the count was `n` makes every
/// commit up to `n` durable; answers go out in order while their tag is durable. So no
/// one learns of a message (an ack, a fan-out, a catch-up read, the HTTP API) before it
/// would survive a crash, and answers still reach the core in the order asked. Without a
/// [`store::LogSync`] (an in-memory store, or one whose commits flush themselves) every
/// commit is durable when it returns.
///
/// If a flush fails, what was committed since the last good one may be lost in a crash,
/// and a later flush cannot be trusted to have written it (Linux may drop the pages of a
/// failed write): every held answer and every later operation fails, until the store is
/// opened again (from what the disk really holds). A checkpoint that fails with an I/O
/// error fails the stage the same way (see `checkpoint_loop`).
struct Stage {
    state: Mutex<StageState>,
    more: Condvar,
    results: mpsc::UnboundedSender<gateway::Input>,
    metrics: Arc<RuntimeMetrics>,
    flushed_apart: bool,
    /// Drops the operating system's cached pages of the log, once the stage fails: the
    /// pages of a failed write stay cached and marked clean, and whichever flush met the
    /// error (a flush thread's, or a checkpoint's of the log) a later process would read
    /// them back as written (see [`store::LogSync::forget_cached`]).
    forget_log: Option<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct StageState {
    /// Commits done.
    committed: u64,
    /// The highest commit a flush has begun for.
    claimed: u64,
    /// The highest commit known durable.
    durable: u64,
    /// Answers not yet delivered, with the commit each waits for.
    held: VecDeque<(u64, Answer)>,
    /// Why the log could not be flushed.
    failed: Option<StoreError>,
    /// The store thread has ended.
    stopping: bool,
}

impl Stage {
    fn new(
        results: mpsc::UnboundedSender<gateway::Input>,
        metrics: Arc<RuntimeMetrics>,
        flushed_apart: bool,
    ) -> Self {
        Stage {
            state: Mutex::new(StageState::default()),
            more: Condvar::new(),
            results,
            metrics,
            flushed_apart,
            forget_log: None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, StageState> {
        // Nothing panics while holding it; if something did, the state is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn failed(&self) -> Option<StoreError> {
        self.lock().failed.clone()
    }

    /// A commit is done; `answers` are its own.
    fn committed(&self, answers: impl IntoIterator<Item = Answer>) {
        let mut st = self.lock();
        st.committed += 1;
        let tag = st.committed;
        st.held.extend(answers.into_iter().map(|a| (tag, a)));
        if !self.flushed_apart {
            st.durable = tag;
        }
        self.settle(&mut st);
        if self.flushed_apart {
            self.more.notify_one();
        }
    }

    /// An answer that changed nothing but may have seen every commit so far.
    fn answer(&self, answer: Answer) {
        let mut st = self.lock();
        let tag = st.committed;
        st.held.push_back((tag, answer));
        self.settle(&mut st);
    }

    /// Delivers what is durable, in order; after a failure, fails everything held.
    fn settle(&self, st: &mut StageState) {
        while let Some((tag, _)) = st.held.front() {
            if st.failed.is_none() && *tag > st.durable {
                break;
            }
            let Some((_, answer)) = st.held.pop_front() else {
                break;
            };
            match &st.failed {
                Some(e) => answer.failed(e, &self.metrics).deliver(&self.results),
                None => answer.deliver(&self.results),
            }
        }
    }

    /// A flush thread: flushes (with `flush`, [`store::LogSync::sync`] but in tests) whenever a
    /// commit has no flush begun after it.
    fn flush_loop(&self, flush: impl Fn() -> Result<(), StoreError>) {
        let mut st = self.lock();
        loop {
            if st.failed.is_some() {
                break;
            }
            if st.committed > st.claimed {
                let target = st.committed;
                st.claimed = target;
                drop(st);
                let started = Instant::now();
                let flushed = flush();
                self.metrics.store_sync.observe(started.elapsed());
                st = self.lock();
                match flushed {
                    Ok(()) => st.durable = st.durable.max(target),
                    Err(e) => self.fail_locked(&mut st, e),
                }
                self.settle(&mut st);
                continue;
            }
            if st.stopping {
                break;
            }
            st = self.more.wait(st).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// The store can no longer promise that what it commits is on disk (`e` says why):
    /// every held answer and every later operation fails, until the store is opened again.
    fn fail(&self, e: StoreError) {
        let mut st = self.lock();
        self.fail_locked(&mut st, e);
        self.settle(&mut st);
    }

    fn fail_locked(&self, st: &mut StageState, e: StoreError) {
        if st.failed.is_some() {
            return;
        }
        tracing::error!(error = %e, "refusing every store operation until restarted");
        st.failed = Some(e);
        self.metrics.store_failed.store(1, Ordering::Relaxed);
        if let Some(forget) = &self.forget_log {
            forget();
        }
        self.more.notify_all();
    }

    /// The store thread has ended: the flush threads finish what is committed and stop.
    fn stop(&self) {
        self.lock().stopping = true;
        self.more.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(op: u64, temp: &str) -> Job {
        Job::Append {
            op: OpId(op),
            request: gateway::AppendRequest {
                id: format!("m{op}"),
                conversation_id: "c".into(),
                sender_id: "u".into(),
                sender_type: "customer".into(),
                content: "hi".into(),
                temp_id: Some(temp.into()),
                created_at_ms: 1,
            },
            members_seen: 0,
        }
    }

    #[test]
    fn checkpoints_come_closer_as_the_log_nears_its_bound() {
        assert_eq!(checkpoint_interval(0), CHECKPOINT_EVERY);
        assert_eq!(
            checkpoint_interval(CHECKPOINT_NEAR_BOUND_PAGES - 1),
            CHECKPOINT_EVERY
        );
        assert_eq!(
            checkpoint_interval(CHECKPOINT_NEAR_BOUND_PAGES),
            CHECKPOINT_EVERY_NEAR_BOUND
        );
        // Past the bound (the writer has not yet started the log over) as well.
        assert_eq!(
            checkpoint_interval(store::WAL_AUTOCHECKPOINT_PAGES + 10),
            CHECKPOINT_EVERY_NEAR_BOUND
        );
    }

    #[tokio::test]
    async fn answers_in_order_and_batches() {
        let mut store = Store::open_in_memory().expect("store");
        store
            .put_conversation("c", &[store::Member::new("u", "customer")])
            .expect("put");
        let metrics = Arc::new(RuntimeMetrics::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (queue, handle) = spawn(store, tx, metrics.clone()).expect("spawn");
        queue.send(append(1, "a"));
        queue.send(append(2, "b"));
        queue.send(Job::Read {
            op: OpId(3),
            request: gateway::ReadRequest {
                conversation_id: "c".into(),
                after_seq: Some(0),
                before_seq: None,
                limit: 10,
                max_content_bytes: usize::MAX,
            },
        });
        queue.send(append(4, "a"));
        let (ftx, frx) = oneshot::channel();
        queue.send(Job::Flush { reply: ftx });
        frx.await.expect("flush");
        let mut seen = vec![];
        while let Ok(input) = rx.try_recv() {
            seen.push(input.to_string());
        }
        assert_eq!(
            seen,
            vec![
                "op1 stored c#1",
                "op2 stored c#2",
                "op3 read 2 messages [1, 2]",
                "op4 duplicate of c#1",
            ]
        );
        // Three appends and a read waited in the queue; the flush is not an operation.
        assert_eq!(metrics.store_wait.count(), 4);
        assert!(metrics.store_commit.count() >= 1);
        drop(queue);
        handle.join().expect("join");
    }

    #[tokio::test]
    async fn a_send_asked_before_the_core_knew_a_member_list_is_held_to_it() {
        let mut store = Store::open_in_memory().expect("store");
        let (u, v) = (
            store::Member::new("u", "customer"),
            store::Member::new("v", "agent"),
        );
        store
            .put_conversation("c", &[u.clone(), v.clone()])
            .expect("put");
        store
            .put_conversation("d", std::slice::from_ref(&u))
            .expect("put");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (queue, handle) = spawn(store, tx, Arc::default()).expect("spawn");
        let send = |op: u64, conv: &str, from: &store::Member, temp: &str| Job::Append {
            op: OpId(op),
            request: gateway::AppendRequest {
                id: format!("m{op}"),
                conversation_id: conv.into(),
                sender_id: from.user_id.clone(),
                sender_type: from.user_type.clone(),
                content: "hi".into(),
                temp_id: Some(temp.into()),
                created_at_ms: 1,
            },
            // The core has been told of no list written by this store thread.
            members_seen: 0,
        };
        queue.send(send(1, "c", &u, "a"));
        // The operator lets u out of c; the core learns it only once this is flushed.
        let (reply, put) = oneshot::channel();
        queue.send(Job::Put {
            id: "c".into(),
            members: vec![v.clone()],
            reply,
        });
        // Sends the core admitted before it learned: u's new one is refused, its retry
        // of #1 is that message, v's is stored, and u's in d (no list written) too.
        queue.send(send(2, "c", &u, "b"));
        queue.send(send(3, "c", &u, "a"));
        queue.send(send(4, "c", &v, "c"));
        queue.send(send(5, "d", &u, "d"));
        flush(&queue).await;
        assert!(put.await.expect("answered").is_ok());
        assert_eq!(
            drain(&mut rx),
            vec![
                "op1 stored c#1",
                "conversation c members [v:agent] lastSeq=1",
                "op2 not stored: the sender is no longer a member",
                "op3 duplicate of c#1",
                "op4 stored c#2",
                "op5 stored d#1",
            ]
        );
        drop(queue);
        handle.join().expect("join");
    }

    fn read(op: u64) -> Job {
        Job::Read {
            op: OpId(op),
            request: gateway::ReadRequest {
                conversation_id: "c".into(),
                after_seq: Some(0),
                before_seq: None,
                limit: 10,
                max_content_bytes: usize::MAX,
            },
        }
    }

    async fn flush(queue: &StoreQueue) {
        let (ftx, frx) = oneshot::channel();
        queue.send(Job::Flush { reply: ftx });
        frx.await.expect("flush answered");
    }

    fn drain(rx: &mut mpsc::UnboundedReceiver<gateway::Input>) -> Vec<String> {
        let mut seen = vec![];
        while let Ok(input) = rx.try_recv() {
            seen.push(input.to_string());
        }
        seen
    }

    fn file_store(dir: &std::path::Path) -> Store {
        let mut store = Store::open(&dir.join("t.db")).expect("store");
        store
            .put_conversation("c", &[store::Member::new("u", "customer")])
            .expect("put");
        store
    }

    /// An answer for the core; its kind does not matter to the stage.
    fn answer_for(op: u64) -> Answer {
        Answer::Core(gateway::Input::Read {
            op: OpId(op),
            result: Ok(vec![]),
        })
    }

    #[test]
    fn nothing_is_answered_before_a_flush_that_began_after_what_it_saw() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stage = Arc::new(Stage::new(tx, Arc::new(RuntimeMetrics::default()), true));
        stage.committed([answer_for(1)]);
        // A read after that commit may have seen it: it waits too, behind it.
        stage.answer(answer_for(2));
        assert!(drain(&mut rx).is_empty());
        let (gate, gated) = std_mpsc::channel::<()>();
        let (began, begun) = std_mpsc::channel::<()>();
        let flusher = {
            let stage = stage.clone();
            std::thread::spawn(move || {
                stage.flush_loop(|| {
                    let _ = began.send(());
                    let _ = gated.recv();
                    Ok(())
                })
            })
        };
        // The first flush is under way; a commit made now is not covered by it.
        begun.recv().expect("flush began");
        stage.committed([answer_for(3)]);
        assert!(drain(&mut rx).is_empty());
        gate.send(()).expect("gate");
        // The first flush delivers 1 and 2; a second one is needed for 3.
        begun.recv().expect("second flush began");
        let mut seen = drain(&mut rx);
        while seen.len() < 2 {
            std::thread::yield_now();
            seen.extend(drain(&mut rx));
        }
        assert_eq!(
            seen,
            vec!["op1 read 0 messages []", "op2 read 0 messages []"]
        );
        gate.send(()).expect("gate");
        stage.stop();
        flusher.join().expect("join");
        assert_eq!(drain(&mut rx), vec!["op3 read 0 messages []"]);
    }

    /// However the stage fails (here a checkpoint's I/O error, met before any flush of the
    /// log returned one), the log's cached pages are dropped, once.
    #[test]
    fn a_failing_stage_drops_the_logs_cached_pages_once() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let mut stage = Stage::new(tx, Arc::new(RuntimeMetrics::default()), true);
        let forgotten = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let count = forgotten.clone();
        stage.forget_log = Some(Box::new(move || {
            count.fetch_add(1, Ordering::Relaxed);
        }));
        stage.committed([]);
        let io = || {
            StoreError::Checkpoint(Arc::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
                None,
            )))
        };
        stage.fail(io());
        assert_eq!(forgotten.load(Ordering::Relaxed), 1);
        stage.fail(io());
        assert_eq!(forgotten.load(Ordering::Relaxed), 1, "once");
    }

    #[tokio::test]
    async fn once_a_flush_failed_every_operation_is_refused_in_order() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(RuntimeMetrics::default());
        let stage = Stage::new(tx, metrics.clone(), true);
        stage.lock().failed = Some(StoreError::LogSync(Arc::new(std::io::Error::other(
            "disk gone",
        ))));
        let mut store = Store::open_in_memory().expect("store");
        store
            .put_conversation("c", &[store::Member::new("u", "customer")])
            .expect("put");
        let (queue, jobs) = {
            let (tx, rx) = std_mpsc::channel();
            (StoreQueue { tx }, rx)
        };
        queue.send(append(1, "a"));
        queue.send(Job::Find {
            op: OpId(2),
            sender: gateway::Member::new("u", "customer"),
            temp_id: "a".into(),
        });
        queue.send(read(3));
        let (ptx, prx) = oneshot::channel();
        queue.send(Job::Put {
            id: "d".into(),
            members: vec![],
            reply: ptx,
        });
        let (mtx, mrx) = oneshot::channel();
        queue.send(Job::Messages {
            id: "c".into(),
            after_seq: None,
            limit: 10,
            reply: mtx,
        });
        let (ftx, frx) = oneshot::channel();
        queue.send(Job::Flush { reply: ftx });
        queue.send(Job::Stop);
        run(&mut store, jobs, &stage, &metrics);
        let failed = "failed: store failure: flushing the database log failed: disk gone";
        assert_eq!(
            drain(&mut rx),
            vec![
                format!("op1 append {failed}"),
                format!("op2 find {failed}"),
                format!("op3 read {failed}"),
            ]
        );
        assert!(matches!(prx.await, Ok(Err(StoreError::LogSync(_)))));
        assert!(matches!(mrx.await, Ok(Err(StoreError::LogSync(_)))));
        frx.await.expect("the flush is still answered");
        assert_eq!(metrics.store_failures.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_checkpoint_failing_with_an_io_error_fails_the_stage_and_ends_the_checkpoints() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let metrics = Arc::new(RuntimeMetrics::default());
        let stage = Stage::new(tx, metrics.clone(), true);
        stage.committed([answer_for(1)]);
        let (stop, stopped) = std_mpsc::channel::<()>();
        let stop = std::cell::RefCell::new(Some(stop));
        let calls = std::cell::Cell::new(0);
        // A lock held elsewhere and a shared-memory failure are retried; a failed flush of
        // the database file is the end.
        checkpoint_loop(
            || {
                calls.set(calls.get() + 1);
                if calls.get() > 3 {
                    // Not stopped when it should have been: end the loop all the same.
                    stop.borrow_mut().take();
                }
                let code = match calls.get() {
                    1 => rusqlite::ffi::SQLITE_BUSY,
                    2 => rusqlite::ffi::SQLITE_IOERR_SHMMAP,
                    _ => rusqlite::ffi::SQLITE_IOERR_FSYNC,
                };
                let e = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
                Err(store::checkpoint_error(e))
            },
            &stage,
            &stopped,
        );
        assert_eq!(calls.get(), 3, "retried twice, then stopped");
        assert_eq!(metrics.store_failed.load(Ordering::Relaxed), 1);
        let seen = drain(&mut rx);
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert!(
            seen[0].starts_with(
                "op1 read failed: store failure: copying the log into the database file failed"
            ),
            "the commit held for its flush is refused: {seen:?}"
        );
        stage.answer(answer_for(2));
        assert!(drain(&mut rx)[0].starts_with("op2 read failed"));
    }

    #[tokio::test]
    async fn with_the_log_flushed_apart_answers_keep_their_order_and_outlive_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(RuntimeMetrics::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (queue, handle) = spawn(file_store(dir.path()), tx, metrics.clone()).expect("spawn");
        // Each read ends a run of appends: several commits, whose flushes may overlap the
        // next commit and one another.
        for op in 1..=40 {
            queue.send(append(op, &format!("t{op}")));
            if op % 10 == 0 {
                queue.send(read(100 + op));
            }
        }
        let (ptx, prx) = oneshot::channel();
        queue.send(Job::Put {
            id: "d".into(),
            members: vec![store::Member::new("u", "customer")],
            reply: ptx,
        });
        queue.send(append(41, "t1"));
        flush(&queue).await;
        let (conv, last_seq) = prx.await.expect("put answered").expect("put");
        assert_eq!((conv.id.as_str(), last_seq), ("d", 0));
        let mut want: Vec<String> = vec![];
        for op in 1..=40 {
            want.push(format!("op{op} stored c#{op}"));
            if op % 10 == 0 {
                let seqs: Vec<String> = (1..=op.min(10)).map(|s| s.to_string()).collect();
                want.push(format!(
                    "op{} read {} messages [{}]",
                    100 + op,
                    op.min(10),
                    seqs.join(", ")
                ));
            }
        }
        want.push("conversation d members [u:customer] lastSeq=0".into());
        want.push("op41 duplicate of c#1".into());
        assert_eq!(drain(&mut rx), want);
        assert!(metrics.store_sync.count() >= 1);
        assert_eq!(metrics.store_failures.load(Ordering::Relaxed), 0);
        drop(queue);
        handle.join().expect("join");
        let store = Store::open(&dir.path().join("t.db")).expect("reopen");
        assert_eq!(store.last_seq("c").expect("last seq"), Some(40));
    }

    /// A store closed after its stage failed leaves its log for the next open (which
    /// copies it again); one closed after a clean run copies it and deletes it, as SQLite
    /// does. Either way what was committed is there when the store is opened again.
    #[test]
    fn a_store_whose_stage_failed_closes_without_copying_and_deleting_its_log() {
        for failed in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = file_store(dir.path());
            let (tx, _rx) = mpsc::unbounded_channel();
            let stage = Stage::new(tx, Arc::new(RuntimeMetrics::default()), true);
            if failed {
                stage.lock().failed = Some(StoreError::LogSync(Arc::new(std::io::Error::other(
                    "write-back failed",
                ))));
            }
            close(store, &stage);
            let log = std::fs::metadata(dir.path().join("t.db-wal")).map(|m| m.len());
            if failed {
                assert!(log.as_ref().is_ok_and(|len| *len > 0), "kept: {log:?}");
            } else {
                assert!(log.is_err(), "copied and deleted: {log:?}");
            }
            let store = Store::open(&dir.path().join("t.db")).expect("reopen");
            assert!(
                store.conversation("c").expect("read").is_some(),
                "failed={failed}"
            );
        }
    }

    #[tokio::test]
    async fn a_failed_flush_fails_what_it_held_and_everything_after() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = Arc::new(RuntimeMetrics::default());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (queue, handle) = spawn(file_store(dir.path()), tx, metrics.clone()).expect("spawn");
        queue.send(append(1, "a"));
        flush(&queue).await;
        assert_eq!(drain(&mut rx), vec!["op1 stored c#1"]);
        assert_eq!(metrics.store_failed.load(Ordering::Relaxed), 0);
        // The log's path no longer names the file the flushes would flush.
        std::fs::remove_file(dir.path().join("t.db-wal")).expect("remove the log");
        queue.send(append(2, "b"));
        flush(&queue).await;
        queue.send(read(3));
        queue.send(append(4, "d"));
        let (ptx, prx) = oneshot::channel();
        queue.send(Job::Put {
            id: "e".into(),
            members: vec![],
            reply: ptx,
        });
        flush(&queue).await;
        let seen = drain(&mut rx);
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen[0]
            .starts_with("op2 append failed: store failure: flushing the database log failed"));
        assert!(
            seen[1].starts_with("op3 read failed: store failure: flushing the database log failed")
        );
        assert!(seen[2]
            .starts_with("op4 append failed: store failure: flushing the database log failed"));
        assert!(matches!(prx.await, Ok(Err(StoreError::LogSync(_)))));
        assert_eq!(metrics.store_failures.load(Ordering::Relaxed), 3);
        assert_eq!(metrics.store_failed.load(Ordering::Relaxed), 1);
        drop(queue);
        handle.join().expect("join");
    }
}
