//! The store's own thread: group commit, FIFO answers, and the mapping between the core's
//! storage effects and [`crate::store`].
//!
//! SQLite is blocking, and an fsync can take milliseconds, so the store never runs on the
//! actor that drives the core: it gets a dedicated OS thread fed by a channel. Each time the
//! thread wakes it takes everything queued (up to [`MAX_BATCH`]) and works through it in
//! order, folding each run of consecutive appends into one [`Store::append_batch`]: one
//! transaction and one fsync for the whole run, however many clients sent at once. Answers
//! go back in the order the operations were asked, because the core relies on it (a
//! join's catch-up read must see every append that was acknowledged before it). The one
//! exception is a tempId lookup ([`Job::Find`]): it does not end a run, but is answered
//! after the run's commit, so it sees every append before it (and those of its run after
//! it), and a stream of refused sends cannot split other users' group commits.
//!
//! A second thread checkpoints the database's log (see [`crate::store`] for why not inside
//! commits); it ends with the store thread. Every checkpoint ends with an fsync of the
//! database file, and a commit whose own fsync meets one waits longer, so checkpoints are
//! spaced [`CHECKPOINT_EVERY`] apart; only when the log nears the size at which the writer
//! checkpoints by itself are they [`CHECKPOINT_EVERY_NEAR_BOUND`] apart, so that the
//! writer's checkpoint, which every send behind it waits for, finds little left to copy.
//! (Measured at 500 sends/s, five alternated 30 s runs each: a checkpoint every 200 ms
//! gave an ack p99 of 4.35–6.20 ms, every second 3.66–4.70 ms; every second without the
//! closer spacing, 2 of the 5 runs' p999 went from ~9 ms to 22 and 87 ms.)
//!
//! Conversation writes from the HTTP API pass through the same queue, and their
//! [`gateway::Input::ConversationPut`] travels back on the same channel as the append
//! results, so the core learns a conversation's `last_seq` in order with its messages.

use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
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

    /// Queues a job; `false` if the store thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.tx
            .send(Queued {
                at: Instant::now(),
                job,
            })
            .is_ok()
    }
}

/// Starts the store thread. Core results are sent on `results`; the thread ends when every
/// [`StoreQueue`] is dropped.
pub fn spawn(
    store: Store,
    results: mpsc::UnboundedSender<gateway::Input>,
    metrics: Arc<RuntimeMetrics>,
) -> std::io::Result<(StoreQueue, JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel();
    let checkpoints = match store.checkpointer() {
        Ok(Some(cp)) => {
            let (stop, stopped) = std_mpsc::channel::<()>();
            let handle = std::thread::Builder::new()
                .name("heartline-checkpoint".into())
                .spawn(move || checkpoint_loop(&cp, &stopped))?;
            Some((stop, handle))
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints by itself");
            None
        }
    };
    let handle = std::thread::Builder::new()
        .name("heartline-store".into())
        .spawn(move || {
            run(store, rx, results, metrics);
            if let Some((stop, handle)) = checkpoints {
                drop(stop);
                let _ = handle.join();
            }
        })?;
    Ok((StoreQueue { tx }, handle))
}

/// Checkpoints until `stopped`'s sender is dropped, at the interval [`checkpoint_interval`]
/// picks from the log's size.
fn checkpoint_loop(cp: &store::Checkpointer, stopped: &std_mpsc::Receiver<()>) {
    let mut wait = CHECKPOINT_EVERY;
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
        wait = match cp.checkpoint() {
            Ok((log_pages, _copied)) => checkpoint_interval(log_pages),
            Err(e) => {
                tracing::warn!(error = %e, "checkpoint failed");
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

fn run(
    mut store: Store,
    rx: std_mpsc::Receiver<Queued>,
    results: mpsc::UnboundedSender<gateway::Input>,
    metrics: Arc<RuntimeMetrics>,
) {
    let mut jobs: Vec<Queued> = Vec::with_capacity(MAX_BATCH);
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
            match job {
                // Asked after the stop: dropped, its caller sees the store gone.
                _ if stop => {}
                Job::Append { op, request } => {
                    appends.ops.push(op);
                    appends.queued.push(at);
                    appends.requests.push(request);
                }
                Job::Find {
                    op,
                    sender,
                    temp_id,
                } => appends.finds.push((op, at, sender, temp_id)),
                Job::Stop => {
                    commit(&mut store, &mut appends, &results, &metrics);
                    stop = true;
                }
                other => {
                    commit(&mut store, &mut appends, &results, &metrics);
                    if !matches!(other, Job::Flush { .. }) {
                        metrics.store_wait.observe(at.elapsed());
                    }
                    serve(&mut store, other, &results, &metrics);
                }
            }
        }
        commit(&mut store, &mut appends, &results, &metrics);
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
    finds: Vec<(OpId, Instant, gateway::Member, String)>,
}

/// Appends a run of requests in one transaction and answers each, then answers the
/// lookups asked among them (which so see every append asked before them).
fn commit(
    store: &mut Store,
    appends: &mut Appends,
    results: &mpsc::UnboundedSender<gateway::Input>,
    metrics: &RuntimeMetrics,
) {
    commit_appends(store, appends, results, metrics);
    for (op, at, sender, temp_id) in appends.finds.drain(..) {
        metrics.store_wait.observe(at.elapsed());
        let result = store
            .find_by_temp_id(&sender.user_id, &sender.user_type, &temp_id)
            .map_err(|e| failure(metrics, op, "tempId lookup", &e));
        let _ = results.send(gateway::Input::Found { op, result });
    }
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
    results: &mpsc::UnboundedSender<gateway::Input>,
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
    let outcomes = store.append_batch(&appends.requests);
    metrics.store_commit.observe(started.elapsed());
    appends.requests.clear();
    RuntimeMetrics::inc(&metrics.store_batches);
    metrics.store_appends.fetch_add(
        outcomes.iter().filter(|o| o.is_ok()).count() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    for (op, outcome) in appends.ops.drain(..).zip(outcomes) {
        let result = outcome.map_err(|e| failure(metrics, op, "append", &e));
        let _ = results.send(gateway::Input::Appended { op, result });
    }
}

fn serve(
    store: &mut Store,
    job: Job,
    results: &mpsc::UnboundedSender<gateway::Input>,
    metrics: &RuntimeMetrics,
) {
    match job {
        // Handled by the run loop itself.
        Job::Append { .. } | Job::Find { .. } => {}
        Job::Read { op, request } => {
            let result = store
                .messages(
                    &request.conversation_id,
                    request.after_seq,
                    request.before_seq,
                    request.limit,
                )
                .map_err(|e| failure(metrics, op, "read", &e));
            let _ = results.send(gateway::Input::Read { op, result });
        }
        Job::Put { id, members, reply } => {
            let result = store.put_conversation(&id, &members).and_then(|conv| {
                let last_seq = store.last_seq(&id)?.unwrap_or(0);
                Ok((conv, last_seq))
            });
            match &result {
                Ok((conv, last_seq)) => {
                    let _ = results.send(gateway::Input::ConversationPut {
                        id: conv.id.clone(),
                        members: conv.members.clone(),
                        last_seq: *last_seq,
                    });
                }
                Err(e) => {
                    RuntimeMetrics::inc(&metrics.store_failures);
                    tracing::warn!(conversation = %id, error = %e, "conversation write failed");
                }
            }
            let _ = reply.send(result);
        }
        Job::Messages {
            id,
            after_seq,
            limit,
            reply,
        } => {
            // The API reads forward: no afterSeq is from the first message.
            let _ = reply.send(store.messages(&id, Some(after_seq.unwrap_or(0)), None, limit));
        }
        Job::Flush { reply } => {
            let _ = reply.send(());
        }
        Job::Stop => {}
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
}
