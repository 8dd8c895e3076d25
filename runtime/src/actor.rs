//! The actor that owns the core.
//!
//! One task holds the application ([`App`]: Heartline's [`Gateway`](heartline_core::gateway::Gateway),
//! or the protocol suites' echo server): every decision that spans connections
//! (replacement, presence, rate windows, rooms) lives there, and a single owner needs no
//! locks. It waits
//! on three things at once: inputs from connection tasks, results from the store thread,
//! and the core's next deadline. After each it drains the core's outputs: frames and closes
//! go to per-connection [`Outbox`]es, HTTP responses to the waiting polling handlers,
//! storage effects to the store thread, notices to the log. It never awaits a client or the
//! disk, so one slow peer cannot stall the others.
//!
//! Shutdown is driven from here too, because only the core knows its sessions: flush the
//! store and let the acks out, then close sessions in paced batches with
//! [`App::shutdown_some`], then wait (bounded) for the writers to finish.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use heartline_core::codec::Frame;
use heartline_core::engine::{self, CloseReason, ContentType, Transmit};
use heartline_core::gateway::{self, Effect, Notice, Output, UserKey};
use heartline_core::{RequestId, TransportId};
use tokio::sync::{mpsc, oneshot};

use crate::app::App;
use crate::clock::Clock;
use crate::log_pace::LogPace;
use crate::metrics::RuntimeMetrics;
use crate::outbox::{Outbox, Push};
use crate::storage::{Job, StoreQueue};

/// An HTTP response the core wrote for a polling request.
#[derive(Debug)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// Content type of `body`.
    pub content_type: ContentType,
    /// The body.
    pub body: Bytes,
}

/// A message to the actor.
#[derive(Debug)]
pub enum Msg {
    /// A WebSocket opened; its frames go to `outbox`.
    WsOpened {
        /// The input for the core (`engine::Input::WsOpened`).
        input: engine::Input,
        /// Its transport id.
        transport: TransportId,
        /// Its send queue.
        outbox: Arc<Outbox>,
        /// Told if the core closes the socket while taking it (refused at once).
        refused: Option<oneshot::Sender<()>>,
    },
    /// A polling request; `reply` gets the core's response.
    Http {
        /// The input for the core (`engine::Input::Http`).
        input: engine::Input,
        /// Its request id.
        request: RequestId,
        /// Where the response goes.
        reply: oneshot::Sender<HttpReply>,
    },
    /// Any other network input (frames, closes, aborted requests).
    Net(engine::Input),
    /// A message with a large body and its share of the inbox's bytes
    /// ([`crate::context::InboxBytes`]), given back once it is handled.
    Large {
        /// The message.
        msg: Box<Msg>,
        /// Its bytes of the inbox.
        bytes: tokio::sync::OwnedSemaphorePermit,
    },
    /// A WebSocket message with the peer's close already read ahead behind it: the core
    /// is told `engine::Input::WsClosing`, then given the frame (one message, so that a
    /// connection's task never holds the frame across a wait for room in the inbox).
    FrameBehindClose {
        /// The socket.
        transport: TransportId,
        /// The message.
        frame: Frame,
    },
    /// Render `/metrics`.
    Metrics(oneshot::Sender<String>),
    /// Whether the core holds a session with this `sid` (before a WebSocket upgrade
    /// naming it is answered, and before a polling POST's body is read).
    KnowsSid {
        /// The `sid` of the request.
        sid: Box<str>,
        /// The answer.
        reply: oneshot::Sender<bool>,
    },
    /// Drain: flush the store, close every session over `drain_ms`, then answer.
    Drain {
        /// How long to spread the closes over.
        drain_ms: u64,
        /// Answered when done.
        done: oneshot::Sender<()>,
    },
}

/// Shutdown progress.
#[derive(Debug)]
enum Drain {
    /// Waiting for the store to answer everything asked before the drain, so that their
    /// acks go out before the closes; at most until `wait_until` (half the drain, and at
    /// least [`DRAIN_STORE_WAIT`]), so that a stuck store (a database locked by another
    /// process) does not hold the closes.
    Flushing {
        flushed: oneshot::Receiver<()>,
        wait_until: tokio::time::Instant,
        deadline: tokio::time::Instant,
        done: oneshot::Sender<()>,
    },
    /// Closing sessions, a batch per tick ([`drain_batch`]); `owed_milli` is the fraction
    /// of a close carried from tick to tick, in thousandths.
    Closing {
        deadline: tokio::time::Instant,
        next_tick: tokio::time::Instant,
        owed_milli: u64,
        done: oneshot::Sender<()>,
    },
    /// Waiting for the store's last answers, the writers' last frames and polling clients'
    /// last GETs (looked at again at `next_check`, once the store has answered).
    Finishing {
        flushed: Option<oneshot::Receiver<()>>,
        until: tokio::time::Instant,
        next_check: tokio::time::Instant,
        done: oneshot::Sender<()>,
    },
}

/// The least time a drain waits for the store's pending answers before it closes
/// sessions, however short `shutdown.drain_ms` (a healthy store answers in milliseconds);
/// well within the shutdown's slack beyond the drain.
const DRAIN_STORE_WAIT: Duration = Duration::from_secs(1);

/// Time between two batches of closes while draining.
const DRAIN_TICK: Duration = Duration::from_millis(100);

/// How many sessions a drain tick closes, and the fraction of a close carried to the next
/// tick (thousandths): the `remaining` sessions are spread evenly over the `ticks_left`
/// ticks before the deadline, the last tick (none left) closing all that remain. So a few
/// clients are closed across the whole drain, not one a tick at its start, which would end
/// the drain, and `/readyz`'s 503, within a fraction of `shutdown.drain_ms`, and send
/// them back to a restarted server together.
fn drain_batch(remaining: usize, ticks_left: u128, owed_milli: u64) -> (usize, u64) {
    if ticks_left == 0 {
        return (remaining, 0);
    }
    let per_tick = (remaining as u128 * 1000 / (ticks_left + 1)) as u64;
    let owed = owed_milli.saturating_add(per_tick);
    let batch = usize::try_from(owed / 1000).unwrap_or(usize::MAX);
    (batch.min(remaining), owed % 1000)
}

/// Longest wait for writers to deliver their last frames after the last close: as long
/// as a WebSocket task may take over its close (waiting for the peer's close frame, then
/// writing what is left), and a little more, so that a peer slow to answer the close still
/// gets its last acks. Within the drain's slack ([`crate::server::SHUTDOWN_SLACK`]); it
/// ends as soon as every WebSocket is closed and every closed polling session has handed
/// its CLOSE to its client's GET.
const WRITER_GRACE: Duration = Duration::from_millis(
    crate::websocket::CLOSE_LINGER.as_millis() as u64
        + crate::websocket::WRITER_GRACE.as_millis() as u64
        + 500,
);

/// The actor's state. See the module docs.
pub struct Actor<A> {
    app: A,
    clock: Clock,
    outboxes: HashMap<TransportId, Arc<Outbox>>,
    http: HashMap<RequestId, oneshot::Sender<HttpReply>>,
    store: StoreQueue,
    metrics: Arc<RuntimeMetrics>,
    draining: Arc<AtomicBool>,
    drain: Option<Drain>,
    /// Inputs produced while draining outputs (a slow consumer's failure, a storage
    /// effect refused because the store thread is gone).
    deferred: Vec<gateway::Input>,
    /// Most bytes a connection's send queue holds (`server.max_outbound_bytes`).
    outbound_limit: usize,
    /// Member lists written by the store that the core has been told of
    /// (`Input::ConversationPut` from the store's results): stamped on every append, so the
    /// store knows which lists the core admitted it by (`storage::Job::Append`).
    members_seen: u64,
    /// When the wall clock is next read for the core ([`crate::clock::WALL_CLOCK_EVERY`]).
    wall_clock_at: tokio::time::Instant,
    /// Storage operations the core asked for and has not been answered, with when each
    /// was asked (core milliseconds), and when the store last answered one: together,
    /// since when the store has kept an operation waiting without answering anything,
    /// published for the health checks ([`RuntimeMetrics::store_waiting_since_ms`]). A
    /// store that answers, however far behind, is not stalled.
    store_asked: BTreeMap<gateway::OpId, u64>,
    store_answered_ms: u64,
    /// The pace of the log lines clients can cause.
    log_pace: LogPace,
}

impl<A: App> Actor<A> {
    /// An actor around an application (a gateway already loaded with its conversations).
    pub fn new(
        app: A,
        clock: Clock,
        store: StoreQueue,
        metrics: Arc<RuntimeMetrics>,
        draining: Arc<AtomicBool>,
        outbound_limit: usize,
    ) -> Self {
        Actor {
            app,
            clock,
            outboxes: HashMap::new(),
            http: HashMap::new(),
            store,
            metrics,
            draining,
            drain: None,
            deferred: vec![],
            outbound_limit,
            members_seen: 0,
            wall_clock_at: tokio::time::Instant::now() + crate::clock::WALL_CLOCK_EVERY,
            store_asked: BTreeMap::new(),
            store_answered_ms: 0,
            log_pace: LogPace::default(),
        }
    }

    /// Runs until every sender of `inbox` is gone or a drain has finished.
    pub async fn run(
        mut self,
        mut inbox: mpsc::Receiver<Msg>,
        mut results: mpsc::UnboundedReceiver<gateway::Input>,
    ) {
        loop {
            let deadline = self.app.poll_timeout().map(|t| self.clock.deadline(t));
            let drain_at = self.drain_wakeup();
            // What is due goes first. The select below takes store answers and inputs
            // before deadlines, and under steady load an input is always waiting: its
            // timer branch alone would never be reached, and with it no PING, heartbeat,
            // ping timeout or shutdown tick would ever come.
            let now = tokio::time::Instant::now();
            if deadline.is_some_and(|d| d <= now) {
                self.app.handle_timeout(self.clock.now());
                self.dispatch();
                continue;
            }
            if drain_at.is_some_and(|d| d <= now) {
                if self.drain_tick() {
                    break;
                }
                continue;
            }
            if self.wall_clock_at <= now {
                self.wall_clock_at = now + crate::clock::WALL_CLOCK_EVERY;
                let wall_ms = crate::clock::unix_ms();
                self.feed(gateway::Input::WallClock { wall_ms });
                continue;
            }
            if self.flush_answered() {
                while let Ok(input) = results.try_recv() {
                    self.feed(input);
                }
                self.after_flush();
                continue;
            }
            tokio::select! {
                biased;
                Some(input) = results.recv() => {
                    self.feed(input);
                }
                msg = inbox.recv() => match msg {
                    Some(msg) => self.on_msg(msg),
                    None => break,
                },
                _ = sleep_until_opt(deadline) => {
                    self.app.handle_timeout(self.clock.now());
                    self.dispatch();
                }
                _ = flush_wait(&mut self.drain) => {
                    // The store answered everything asked before the flush; take those
                    // answers in before moving on.
                    while let Ok(input) = results.try_recv() {
                        self.feed(input);
                    }
                    self.after_flush();
                }
                _ = sleep_until_opt(drain_at) => {
                    if self.drain_tick() {
                        break;
                    }
                }
                // Read at the top of the loop.
                _ = tokio::time::sleep_until(self.wall_clock_at) => {}
            }
        }
    }

    fn feed(&mut self, input: gateway::Input) {
        if matches!(input, gateway::Input::ConversationPut { .. }) {
            self.members_seen += 1;
        }
        self.answered(&input);
        if let Err(e) = self.app.handle_input(self.clock.now(), input) {
            tracing::debug!(error = %e, "input for a gone session or request");
        }
        self.dispatch();
    }

    fn on_msg(&mut self, msg: Msg) {
        match msg {
            Msg::Large { msg, bytes } => {
                self.on_msg(*msg);
                drop(bytes);
            }
            Msg::WsOpened {
                input,
                transport,
                outbox,
                refused,
            } => {
                self.outboxes.insert(transport, outbox);
                let result = self
                    .app
                    .handle_input(self.clock.now(), gateway::Input::Network(input));
                if let Err(e) = result {
                    tracing::warn!(%transport, error = %e, "websocket refused by the core");
                    if let Some(outbox) = self.outboxes.remove(&transport) {
                        outbox.kill();
                    }
                }
                self.dispatch();
                if !self.outboxes.contains_key(&transport) {
                    if let Some(refused) = refused {
                        let _ = refused.send(());
                    }
                }
            }
            Msg::Http {
                input,
                request,
                reply,
            } => {
                self.http.insert(request, reply);
                let result = self
                    .app
                    .handle_input(self.clock.now(), gateway::Input::Network(input));
                if let Err(e) = result {
                    // The core did not take the request, so it will never answer it.
                    tracing::warn!(%request, error = %e, "request refused by the core");
                    if let Some(reply) = self.http.remove(&request) {
                        let _ = reply.send(HttpReply {
                            status: 500,
                            content_type: ContentType::Text,
                            body: Bytes::new(),
                        });
                    }
                }
                self.dispatch();
            }
            Msg::Net(input) => {
                match &input {
                    engine::Input::WsClosed { transport, .. }
                    | engine::Input::WsAborted { transport, .. } => {
                        self.outboxes.remove(transport);
                    }
                    // Nobody is left to answer: the reply goes, whatever the core does.
                    engine::Input::HttpAborted { request } => {
                        self.http.remove(request);
                    }
                    _ => {}
                }
                self.feed(gateway::Input::Network(input));
            }
            Msg::FrameBehindClose { transport, frame } => {
                self.feed(gateway::Input::Network(engine::Input::WsClosing {
                    transport,
                }));
                self.feed(gateway::Input::Network(engine::Input::WsFrame {
                    transport,
                    frame,
                }));
            }
            Msg::KnowsSid { sid, reply } => {
                let _ = reply.send(self.app.knows_sid(&sid));
            }
            Msg::Metrics(reply) => {
                self.metrics
                    .http_waiting
                    .store(self.http.len() as u64, Ordering::Relaxed);
                let draining = self.draining.load(Ordering::Relaxed);
                let text = self
                    .app
                    .render_metrics(&self.metrics, draining, self.clock.now());
                let _ = reply.send(text);
            }
            Msg::Drain { drain_ms, done } => self.start_drain(drain_ms, done),
        }
    }

    /// Does what the core asked, until it asks nothing more.
    fn dispatch(&mut self) {
        loop {
            while let Some(out) = self.app.poll_output() {
                match out {
                    Output::Transmit(t) => self.transmit(t),
                    Output::Effect(e) => self.effect(e),
                    Output::Notice(n) => log_notice(&n, &mut self.log_pace, &self.clock),
                }
            }
            if self.deferred.is_empty() {
                let sessions = self.app.sessions_held() as u64;
                self.metrics.sessions.store(sessions, Ordering::Relaxed);
                // The first is the oldest: operations are numbered as they are asked. Plus
                // one, so that 0 says none.
                let since = self
                    .store_asked
                    .first_key_value()
                    .map_or(0, |(_, ms)| (*ms).max(self.store_answered_ms) + 1);
                self.metrics
                    .store_waiting_since_ms
                    .store(since, Ordering::Relaxed);
                return;
            }
            let now = self.clock.now();
            for input in std::mem::take(&mut self.deferred) {
                self.answered(&input);
                if let Err(e) = self.app.handle_input(now, input) {
                    tracing::debug!(error = %e, "deferred input for a gone session");
                }
            }
        }
    }

    fn transmit(&mut self, t: Transmit) {
        match t {
            Transmit::WsSend { transport, frame } => {
                let Some(outbox) = self.outboxes.get(&transport) else {
                    return;
                };
                if outbox.push(frame, self.outbound_limit) == Push::Overflow {
                    // At debug: the core's close notice says it at info, paced (`log_pace`).
                    tracing::debug!(%transport, "slow consumer: send queue full, connection closed");
                    self.outboxes.remove(&transport);
                    self.deferred
                        .push(gateway::Input::Network(engine::Input::WsAborted {
                            transport,
                            reason: CloseReason::SlowConsumer,
                        }));
                }
            }
            Transmit::WsClose { transport, reason } => {
                if let Some(outbox) = self.outboxes.remove(&transport) {
                    outbox.close(reason.ws_code(), reason.ws_reason());
                }
            }
            Transmit::HttpResponse {
                request,
                status,
                content_type,
                body,
            } => {
                if let Some(reply) = self.http.remove(&request) {
                    let _ = reply.send(HttpReply {
                        status,
                        content_type,
                        body,
                    });
                }
            }
        }
    }

    /// Forgets the storage operation `input` answers.
    fn answered(&mut self, input: &gateway::Input) {
        match input {
            gateway::Input::Appended { op, .. }
            | gateway::Input::Read { op, .. }
            | gateway::Input::Found { op, .. } => {
                self.store_asked.remove(op);
                self.store_answered_ms = self.clock.now().as_millis();
            }
            _ => {}
        }
    }

    fn effect(&mut self, e: Effect) {
        let op = match &e {
            Effect::Append { op, .. } | Effect::Read { op, .. } | Effect::FindSent { op, .. } => {
                *op
            }
        };
        self.store_asked.insert(op, self.clock.now().as_millis());
        let job = match e {
            Effect::Append { op, request } => Job::Append {
                op,
                request,
                members_seen: self.members_seen,
            },
            Effect::Read { op, request } => Job::Read { op, request },
            Effect::FindSent {
                op,
                sender,
                temp_id,
            } => Job::Find {
                op,
                sender,
                temp_id,
            },
        };
        if let Some(job) = self.store.send_or_return(job) {
            // The store thread ended (it never should while the actor runs): the operation
            // is answered as failed, so that its sender gets an error instead of waiting
            // for an answer that will never come.
            RuntimeMetrics::inc(&self.metrics.store_failures);
            self.metrics.store_failed.store(1, Ordering::Relaxed);
            tracing::error!("store thread is gone; storage effect refused");
            let gone = || gateway::StoreFailure("the store is not running".into());
            self.deferred.push(match job {
                Job::Append { op, .. } => gateway::Input::Appended {
                    op,
                    result: Err(gone()),
                },
                Job::Read { op, .. } => gateway::Input::Read {
                    op,
                    result: Err(gone()),
                },
                Job::Find { op, .. } => gateway::Input::Found {
                    op,
                    result: Err(gone()),
                },
                // Only the three above come from effects.
                _ => return,
            });
        }
    }

    // ---- shutdown ------------------------------------------------------------------------

    fn start_drain(&mut self, drain_ms: u64, done: oneshot::Sender<()>) {
        if self.drain.is_some() {
            return;
        }
        tracing::info!(sessions = self.app.session_count(), drain_ms, "draining");
        let (tx, rx) = oneshot::channel();
        self.store.send(Job::Flush { reply: tx });
        let now = tokio::time::Instant::now();
        let deadline = now + Duration::from_millis(drain_ms);
        self.drain = Some(Drain::Flushing {
            flushed: rx,
            wait_until: now + Duration::from_millis(drain_ms / 2).max(DRAIN_STORE_WAIT),
            deadline,
            done,
        });
    }

    /// The store answered a flush: move the drain on.
    fn after_flush(&mut self) {
        match self.drain.take() {
            Some(Drain::Flushing { deadline, done, .. }) => {
                self.drain = Some(Drain::Closing {
                    deadline,
                    next_tick: tokio::time::Instant::now(),
                    owed_milli: 0,
                    done,
                });
            }
            Some(Drain::Finishing { until, done, .. }) => {
                self.drain = Some(Drain::Finishing {
                    flushed: None,
                    until,
                    next_check: tokio::time::Instant::now(),
                    done,
                });
            }
            other => self.drain = other,
        }
    }

    fn drain_wakeup(&self) -> Option<tokio::time::Instant> {
        match &self.drain {
            Some(Drain::Flushing { wait_until, .. }) => Some(*wait_until),
            Some(Drain::Closing { next_tick, .. }) => Some(*next_tick),
            Some(Drain::Finishing {
                flushed: None,
                next_check,
                ..
            }) => Some(*next_check),
            Some(Drain::Finishing {
                flushed: Some(_),
                until,
                ..
            }) => Some(*until),
            None => None,
        }
    }

    /// One drain step; `true` when the drain is complete.
    fn drain_tick(&mut self) -> bool {
        let now = tokio::time::Instant::now();
        match self.drain.take() {
            Some(Drain::Flushing {
                wait_until,
                deadline,
                done,
                flushed,
            }) => {
                if now >= wait_until {
                    // Acks still wait for the store; their senders will send again.
                    tracing::warn!("the store did not answer in half the drain; closing anyway");
                    self.drain = Some(Drain::Closing {
                        deadline,
                        next_tick: now,
                        owed_milli: 0,
                        done,
                    });
                } else {
                    self.drain = Some(Drain::Flushing {
                        flushed,
                        wait_until,
                        deadline,
                        done,
                    });
                }
                false
            }
            Some(Drain::Finishing {
                flushed: Some(_),
                until,
                done,
                ..
            }) if now >= until => {
                tracing::warn!("the store did not answer before the end of the drain");
                let _ = done.send(());
                true
            }
            Some(Drain::Closing {
                deadline,
                owed_milli,
                done,
                ..
            }) => {
                let remaining = self.app.session_count();
                let ticks_left =
                    deadline.saturating_duration_since(now).as_millis() / DRAIN_TICK.as_millis();
                let (batch, owed_milli) = drain_batch(remaining, ticks_left, owed_milli);
                let left = if batch > 0 {
                    let left = self.app.shutdown_some(self.clock.now(), batch);
                    self.dispatch();
                    tracing::debug!(
                        closed = remaining - left.min(remaining),
                        left,
                        "drain batch"
                    );
                    left
                } else {
                    remaining
                };
                if left == 0 {
                    let (tx, rx) = oneshot::channel();
                    self.store.send(Job::Flush { reply: tx });
                    self.drain = Some(Drain::Finishing {
                        flushed: Some(rx),
                        until: now + WRITER_GRACE,
                        next_check: now,
                        done,
                    });
                } else {
                    self.drain = Some(Drain::Closing {
                        deadline,
                        next_tick: now + DRAIN_TICK,
                        owed_milli,
                        done,
                    });
                }
                false
            }
            Some(Drain::Finishing {
                flushed: None,
                until,
                done,
                ..
            }) => {
                let writers = self.metrics.ws_open.load(Ordering::Relaxed);
                // Closed polling sessions linger until their client's next GET takes the
                // CLOSE: a client between two GETs when its session closed is told too,
                // rather than finding the port shut. One its client closed itself owes
                // it nothing and is not waited for.
                let lingering = self.app.sessions_owing();
                if (writers == 0 && lingering == 0) || now >= until {
                    tracing::info!(
                        websockets_left = writers,
                        polling_left = lingering,
                        "drained"
                    );
                    let _ = done.send(());
                    return true;
                }
                self.drain = Some(Drain::Finishing {
                    flushed: None,
                    until,
                    next_check: now + Duration::from_millis(20),
                    done,
                });
                false
            }
            other => {
                self.drain = other;
                false
            }
        }
    }
}

/// Waits for the store's flush answer of the current drain phase, if any.
impl<A: App> Actor<A> {
    /// Whether the store has answered the drain's flush (or can no longer), without
    /// waiting: under load the select below would take inputs before that answer.
    fn flush_answered(&mut self) -> bool {
        let rx = match &mut self.drain {
            Some(Drain::Flushing { flushed, .. })
            | Some(Drain::Finishing {
                flushed: Some(flushed),
                ..
            }) => flushed,
            _ => return false,
        };
        !matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))
    }
}

async fn flush_wait(drain: &mut Option<Drain>) {
    let rx = match drain {
        Some(Drain::Flushing { flushed, .. }) => flushed,
        Some(Drain::Finishing {
            flushed: Some(flushed),
            ..
        }) => flushed,
        _ => return std::future::pending().await,
    };
    let _ = rx.await;
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Logs a core notice: refusals, replacements and abnormal closes at `info`, paced
/// ([`crate::log_pace`]), the routine rest at `debug`.
fn log_notice(n: &Notice, pace: &mut LogPace, clock: &Clock) {
    // The clock is read only for the paced lines, not for every accepted send.
    let now_ms = || clock.now().as_millis();
    match n {
        Notice::Connected { session, user } => {
            tracing::debug!(%session, %user, "connected");
        }
        Notice::Refused { session, error } => {
            if let Some(skipped) = pace.refused.admit(now_ms()) {
                skipped_lines(skipped, "connect refused");
                tracing::info!(%session, %error, "connect refused");
            }
        }
        Notice::Replaced { user, old, new } => {
            if let Some(skipped) = pace.replaced.admit(now_ms()) {
                skipped_lines(skipped, "connection replaced");
                tracing::info!(%user, %old, %new, "connection replaced");
            }
        }
        Notice::Online { user } => tracing::debug!(%user, "online"),
        Notice::Offline { user } => tracing::debug!(%user, "offline"),
        Notice::Closed {
            session,
            user,
            reason,
        } => {
            let user = user.as_ref().map_or("-", UserKey::as_str);
            if abnormal(reason) {
                if let Some(skipped) = pace.closed.admit(now_ms()) {
                    skipped_lines(skipped, "closed");
                    tracing::info!(%session, %user, reason = reason.label(), detail = %reason, "closed");
                }
            } else {
                tracing::debug!(%session, %user, reason = reason.label(), "closed");
            }
        }
        Notice::Accepted {
            user,
            conversation_id,
            seq,
            duplicate,
        } => {
            tracing::trace!(%user, conversation = %conversation_id, seq, duplicate, "send accepted");
        }
        Notice::SendRefused { user, code } => {
            tracing::debug!(%user, code = code.as_str(), "send refused");
        }
    }
}

/// Says how many lines of a kind were not logged since the last one that was.
fn skipped_lines(skipped: u64, what: &str) {
    if skipped > 0 {
        tracing::info!(
            skipped,
            "{what}: {skipped} lines not logged (over {} a second)",
            crate::log_pace::LINES_PER_SECOND
        );
    }
}

fn abnormal(reason: &CloseReason) -> bool {
    matches!(
        reason,
        CloseReason::PingTimeout
            | CloseReason::HandshakeTimeout
            | CloseReason::PayloadTooLarge
            | CloseReason::ProtocolError(_)
            | CloseReason::SlowConsumer
            | CloseReason::TransportError
    )
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;
    use std::sync::Mutex;

    use heartline_core::engine::UsageError;
    use heartline_core::gateway::{Input, Output};
    use heartline_core::{Instant, TransportId};

    use super::*;

    /// Runs [`drain_batch`] over a drain of `ticks` ticks (the deadline after the last)
    /// with `n` sessions; the tick at which each close happens.
    fn drain_schedule(n: usize, ticks: u128) -> Vec<u128> {
        let (mut remaining, mut owed, mut at) = (n, 0, vec![]);
        for tick in 0..=ticks {
            let (batch, carried) = drain_batch(remaining, ticks - tick, owed);
            owed = carried;
            at.extend(std::iter::repeat_n(tick, batch));
            remaining -= batch;
        }
        assert_eq!(remaining, 0, "every session closed by the deadline");
        at
    }

    #[test]
    fn a_drain_spreads_few_sessions_over_all_of_it() {
        // Three sessions over 50 ticks: about a third of the drain apart, not three ticks
        // in a row at its start.
        let at = drain_schedule(3, 50);
        assert_eq!(at.len(), 3);
        let gaps = [at[0], at[1] - at[0], at[2] - at[1]];
        assert!(gaps.iter().all(|g| (13..=17).contains(g)), "{at:?}");
        assert!(at[2] >= 40, "the last close late in the drain: {at:?}");
        let one = drain_schedule(1, 50);
        assert!(one.len() == 1 && (20..=50).contains(&one[0]), "{one:?}");
        assert_eq!(drain_schedule(0, 50), Vec::<u128>::new());
        // Past the deadline, everything left goes at once.
        assert_eq!(drain_batch(7, 0, 999), (7, 0));
    }

    #[test]
    fn a_drain_spreads_many_sessions_evenly() {
        let at = drain_schedule(10_000, 50);
        assert_eq!(at.len(), 10_000);
        let mut per_tick = vec![0usize; 51];
        for t in at {
            per_tick[t as usize] += 1;
        }
        // 10,000 over 51 ticks: 196 a tick, give or take one.
        assert!(
            per_tick.iter().all(|n| (195..=197).contains(n)),
            "{per_tick:?}"
        );
    }

    /// Inputs the test feeds, one after another.
    const INPUTS: u64 = 1_000_000;

    /// An application whose only deadline is already due, and each of whose inputs puts
    /// another into the actor's inbox (up to [`INPUTS`]): the inbox is never empty until
    /// then. `fired` records how many inputs had been taken when the deadline fired.
    struct Busy {
        inbox: mpsc::Sender<Msg>,
        inputs: u64,
        fired: Arc<AtomicU64>,
        /// Inputs taken so far, for the test to read.
        taken: Arc<AtomicU64>,
    }

    fn input(n: u64) -> Msg {
        Msg::Net(engine::Input::WsClosed {
            transport: TransportId(n),
            error: false,
        })
    }

    impl App for Busy {
        fn handle_input(&mut self, _: Instant, _: Input) -> Result<(), UsageError> {
            self.inputs += 1;
            self.taken.store(self.inputs, Ordering::Relaxed);
            if self.inputs < INPUTS {
                let _ = self.inbox.try_send(input(self.inputs));
            }
            Ok(())
        }
        fn handle_timeout(&mut self, _: Instant) {
            self.fired.store(self.inputs + 1, Ordering::Relaxed);
        }
        fn poll_timeout(&self) -> Option<Instant> {
            (self.fired.load(Ordering::Relaxed) == 0).then_some(Instant::ZERO)
        }
        fn poll_output(&mut self) -> Option<Output> {
            None
        }
        fn shutdown_some(&mut self, _: Instant, _: usize) -> usize {
            0
        }
        fn session_count(&self) -> usize {
            0
        }
        fn render_metrics(&self, _: &RuntimeMetrics, _: bool, _: Instant) -> String {
            String::new()
        }
    }

    /// Runs an actor around `app` with no store behind it (every job refused at once).
    fn run_detached(app: Busy, inbox: mpsc::Receiver<Msg>) -> tokio::task::JoinHandle<()> {
        let actor = Actor::new(
            app,
            Clock::start(),
            StoreQueue::detached(),
            Arc::new(RuntimeMetrics::default()),
            Arc::new(AtomicBool::new(false)),
            1 << 20,
        );
        // No store answers ever come: the sender may go at once.
        let (_, results) = mpsc::unbounded_channel();
        tokio::spawn(actor.run(inbox, results))
    }

    /// With an input always waiting, a drain still sees the store's answer to its flush
    /// at once (a detached store answers at once), rather than after waiting half of
    /// `drain_ms` for an answer it was given.
    #[tokio::test]
    async fn a_drain_takes_the_store_answer_while_inputs_keep_coming() {
        // Fired already: no deadline of its own.
        let fired = Arc::new(AtomicU64::new(1));
        let (tx, rx) = mpsc::channel(64);
        let (done_tx, done_rx) = oneshot::channel();
        tx.try_send(Msg::Drain {
            drain_ms: 10_000,
            done: done_tx,
        })
        .expect("room");
        tx.try_send(input(0)).expect("room");
        let taken = Arc::new(AtomicU64::new(0));
        let app = Busy {
            inbox: tx.clone(),
            inputs: 0,
            fired,
            taken: taken.clone(),
        };
        let actor = run_detached(app, rx);
        // Half the drain would be 5 s, and the inputs run out after a second or two: the
        // drain must end while they still come, whatever the machine's speed.
        let drained = tokio::time::timeout(Duration::from_secs(30), done_rx).await;
        let taken_then = taken.load(Ordering::Relaxed);
        actor.abort();
        assert!(drained.is_ok(), "drained");
        assert!(
            taken_then < INPUTS,
            "drained while inputs kept coming, not after all {taken_then} were taken"
        );
    }

    /// With an input always waiting, a due deadline still fires, and at once.
    #[tokio::test]
    async fn deadlines_fire_while_inputs_keep_coming() {
        let fired = Arc::new(AtomicU64::new(0));
        let (tx, rx) = mpsc::channel(64);
        tx.try_send(input(0)).expect("room");
        let app = Busy {
            inbox: tx.clone(),
            inputs: 0,
            fired: fired.clone(),
            taken: Arc::new(AtomicU64::new(0)),
        };
        let actor = run_detached(app, rx);
        for _ in 0..200 {
            if fired.load(Ordering::Relaxed) > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        actor.abort();
        let fired = fired.load(Ordering::Relaxed);
        assert!(
            (1..INPUTS).contains(&fired),
            "the due deadline fired while inputs kept coming (fired after {} inputs)",
            fired.saturating_sub(1)
        );
    }

    /// Asks the store for one read on its first input, and keeps the store's answers.
    struct AsksStore {
        asked: bool,
        out: Option<Output>,
        answers: Arc<Mutex<Vec<Input>>>,
    }

    impl App for AsksStore {
        fn handle_input(&mut self, _: Instant, input: Input) -> Result<(), UsageError> {
            match input {
                Input::Network(_) if !self.asked => {
                    self.asked = true;
                    self.out = Some(Output::Effect(gateway::Effect::Read {
                        op: gateway::OpId(7),
                        request: gateway::ReadRequest {
                            conversation_id: "c".into(),
                            after_seq: None,
                            before_seq: None,
                            limit: 10,
                            max_content_bytes: usize::MAX,
                        },
                    }));
                }
                Input::Network(_) => {}
                other => self.answers.lock().expect("answers").push(other),
            }
            Ok(())
        }
        fn handle_timeout(&mut self, _: Instant) {}
        fn poll_timeout(&self) -> Option<Instant> {
            None
        }
        fn poll_output(&mut self) -> Option<Output> {
            self.out.take()
        }
        fn shutdown_some(&mut self, _: Instant, _: usize) -> usize {
            0
        }
        fn session_count(&self) -> usize {
            0
        }
        fn render_metrics(&self, _: &RuntimeMetrics, _: bool, _: Instant) -> String {
            String::new()
        }
    }

    /// An actor around [`AsksStore`] with `store`, the answers it will keep, and its
    /// counters.
    #[allow(clippy::type_complexity)]
    fn asking_store(
        store: StoreQueue,
    ) -> (
        Actor<AsksStore>,
        Arc<Mutex<Vec<Input>>>,
        Arc<RuntimeMetrics>,
    ) {
        let answers = Arc::new(Mutex::new(vec![]));
        let metrics = Arc::new(RuntimeMetrics::default());
        let actor = Actor::new(
            AsksStore {
                asked: false,
                out: None,
                answers: answers.clone(),
            },
            Clock::start(),
            store,
            metrics.clone(),
            Arc::new(AtomicBool::new(false)),
            1 << 20,
        );
        (actor, answers, metrics)
    }

    /// A storage operation the store does not answer is published as waiting since it
    /// was asked (what `/healthz` calls stalled after 30 s), and no longer once answered;
    /// one behind others the store is answering waits since the last answer.
    #[tokio::test(start_paused = true)]
    async fn an_operation_the_store_does_not_answer_is_seen_waiting() {
        let (store, _keep) = StoreQueue::hung();
        let clock = Clock::start();
        let (actor, answers, metrics) = asking_store(store);
        let (tx, rx) = mpsc::channel(4);
        let (results_tx, results) = mpsc::unbounded_channel();
        let task = tokio::spawn(actor.run(rx, results));
        let waiting = || metrics.store_waiting_since_ms.load(Ordering::Relaxed);
        assert_eq!(waiting(), 0);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let asked_at = clock.now().as_millis();
        tx.send(input(1)).await.expect("actor runs");
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(waiting(), asked_at + 1, "waiting since it was asked");
        let now = clock.now().as_millis();
        assert!(crate::metrics::store_stalled(waiting(), now), "stalled");
        let read = |answers: &Arc<Mutex<Vec<Input>>>| {
            answers
                .lock()
                .expect("answers")
                .iter()
                .any(|a| matches!(a, Input::Read { .. }))
        };
        assert!(!read(&answers), "not answered");
        results_tx
            .send(Input::Read {
                op: gateway::OpId(7),
                result: Ok(vec![]),
            })
            .expect("actor runs");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(read(&answers));
        assert_eq!(waiting(), 0, "answered");
        task.abort();
    }

    /// With the store thread gone, a storage effect is answered as failed at once (its
    /// sender gets an error, not silence), and the store counts as failed.
    #[tokio::test]
    async fn an_effect_the_store_thread_cannot_take_is_answered_as_failed() {
        let (actor, answers, metrics) = asking_store(StoreQueue::detached());
        let (tx, rx) = mpsc::channel(4);
        let (_keep, results) = mpsc::unbounded_channel();
        let task = tokio::spawn(actor.run(rx, results));
        tx.send(input(1)).await.expect("actor runs");
        for _ in 0..500 {
            if !answers.lock().expect("answers").is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        task.abort();
        let answers = answers.lock().expect("answers").clone();
        assert!(
            matches!(
                answers.as_slice(),
                [Input::Read {
                    op: gateway::OpId(7),
                    result: Err(_)
                }]
            ),
            "{answers:?}"
        );
        assert_eq!(metrics.store_failed.load(Ordering::Relaxed), 1);
    }
}
