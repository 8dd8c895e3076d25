//! The server as a library: [`start`] binds, loads and spawns everything, and returns a
//! [`ServerHandle`] to find its address and shut it down. The binary and the end-to-end
//! tests start exactly the same server.
//!
//! Tasks: the accept loop (admission, then one task per TCP connection), the actor that
//! owns the core, and the store thread. Shutdown ([`ServerHandle::shutdown`]): readiness
//! turns 503 and new Engine.IO sessions are refused (the port stays open so probes and
//! existing sessions' requests are answered), the actor flushes the store and closes
//! sessions in paced batches over `shutdown.drain_ms`, then the listener and the store
//! thread stop. Every wait is bounded.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use heartline_core::gateway::{self, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::actor::{Actor, Msg};
use crate::admission::{self, ConnectionCap};
use crate::app::App;
use crate::clock::Clock;
use crate::config::Config;
use crate::conn;
use crate::context::Context;
use crate::error::ServerError;
use crate::http::raw_refusal;
use crate::metrics::RuntimeMetrics;
use crate::settings;
use crate::storage::{self, Job, StoreQueue};
use crate::store::{Store, StoreError, StoreLock};

/// Where the gateway serves Engine.IO.
pub const ENGINE_PATH: &str = "/socket.io/";

/// Capacity of the actor's inbox; connection readers wait when it is full.
pub const ACTOR_INBOX: usize = 8192;

/// Time allowed beyond `shutdown.drain_ms` before shutdown stops waiting.
pub const SHUTDOWN_SLACK: Duration = Duration::from_secs(5);

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    ctx: Arc<Context>,
    stop_accept: watch::Sender<bool>,
    accept_task: JoinHandle<()>,
    actor_task: JoinHandle<()>,
    store_thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a server: opens the store, loads the conversations into a fresh core, binds
/// `server.listen` (port 0 picks a free one) and starts serving.
///
/// An empty `auth.jwt_secret` is replaced with a random one (no token can then be made
/// outside; the binary's dev mode sets one it prints tokens for).
pub async fn start(config: Config) -> Result<ServerHandle, ServerError> {
    start_with(config, None).await
}

/// Work on the store done at start, once it is open and locked and before its
/// conversations are loaded: the binary's dev mode puts its conversation this way, so
/// that a start which cannot have its port writes nothing.
pub type StoreSetup = Box<dyn FnOnce(&mut Store) -> Result<(), StoreError> + Send>;

/// [`start`], running `setup` on the store before it is loaded (see [`StoreSetup`]).
pub async fn start_with(
    mut config: Config,
    setup: Option<StoreSetup>,
) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    config.log_warnings();
    let addr = config.listen_addr()?;
    if config.auth.jwt_secret.is_empty() {
        config.auth.jwt_secret =
            settings::random_hex(32).map_err(|e| ServerError::System(e.to_string()))?;
    }
    // The port first: a start that cannot have it (a second copy, a mistaken `--listen`)
    // fails before the store is created, locked or migrated. Connections that come while
    // the store opens wait in the listener's backlog.
    let (listener, local_addr) = bind(addr).await?;
    let path = PathBuf::from(&config.store.path);
    // Sends from the last rate window before this start, so a restart is no way around
    // the limit.
    let window_ms = config.rate_limit.window_ms;
    let since_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        .saturating_sub(window_ms);
    let (store, conversations, recent) = {
        let open_path = path.clone();
        tokio::task::spawn_blocking(move || {
            // First the lock: a second server on this database stops here, before it has
            // written anything.
            let lock = StoreLock::acquire(&open_path)?;
            let mut store = Store::open(&open_path)?;
            store.keep_lock(lock);
            if let Some(setup) = setup {
                setup(&mut store)?;
            }
            let conversations = store.conversations()?;
            let recent = store.recent_sends(since_ms)?;
            Ok((store, conversations, recent))
        })
        .await
        .map_err(|e| ServerError::System(e.to_string()))?
        .map_err(|source| ServerError::Store {
            path: path.clone(),
            source,
        })?
    };
    let clock = Clock::start();
    let seed = settings::random_seed().map_err(|e| ServerError::System(e.to_string()))?;
    let gw_config = settings::gateway_config(&config, clock.wall_epoch_ms(), seed);
    let mut gateway = Gateway::new(gw_config, clock.now())?;
    let loaded = conversations.len();
    for (conv, last_seq) in conversations {
        let input = gateway::Input::ConversationPut {
            id: conv.id,
            members: conv.members,
            last_seq,
        };
        if let Err(e) = gateway.handle_input(clock.now(), input) {
            tracing::warn!(error = %e, "conversation not loaded");
        }
    }
    for (sender, created_at_ms) in recent {
        let input = gateway::Input::SendsRestored {
            sender,
            created_at_ms,
        };
        if let Err(e) = gateway.handle_input(clock.now(), input) {
            tracing::warn!(error = %e, "recent sends not restored");
        }
    }
    while gateway.poll_output().is_some() {}

    let metrics = Arc::new(RuntimeMetrics::default());
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let (queue, store_thread) = storage::spawn(store, results_tx, metrics.clone())
        .map_err(|e| ServerError::System(e.to_string()))?;
    tracing::info!(
        addr = %local_addr,
        store = %path.display(),
        conversations = loaded,
        namespace = %config.server.namespace,
        "heartline listening"
    );
    Ok(launch(Launch {
        config,
        engine_path: ENGINE_PATH.to_owned(),
        clock,
        app: gateway,
        listener,
        local_addr,
        store: queue,
        store_thread: Some(store_thread),
        results: results_rx,
        metrics,
    }))
}

/// Binds the listening socket.
pub(crate) async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServerError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    Ok((listener, local_addr))
}

/// What [`launch`] puts together: an application and the runtime around it.
pub(crate) struct Launch<A> {
    pub config: Config,
    pub engine_path: String,
    pub clock: Clock,
    pub app: A,
    pub listener: TcpListener,
    pub local_addr: SocketAddr,
    pub store: StoreQueue,
    pub store_thread: Option<std::thread::JoinHandle<()>>,
    pub results: mpsc::UnboundedReceiver<gateway::Input>,
    pub metrics: Arc<RuntimeMetrics>,
}

/// Runs the core's actor, and notes in `metrics.core_stopped` if it ends (returns, or
/// unwinds from a panic) while the server is not shutting down: the process would go on
/// accepting connections it can serve none of, and only its health probes can tell a
/// supervisor to restart it.
async fn watched(
    actor: impl std::future::Future<Output = ()>,
    metrics: Arc<RuntimeMetrics>,
    draining: Arc<AtomicBool>,
) {
    struct Watch(Arc<RuntimeMetrics>, Arc<AtomicBool>);
    impl Drop for Watch {
        fn drop(&mut self) {
            if !self.1.load(Ordering::Relaxed) {
                self.0.core_stopped.store(1, Ordering::Relaxed);
                tracing::error!("the core's actor stopped; /healthz now answers 503");
            }
        }
    }
    let _watch = Watch(metrics, draining);
    actor.await;
}

/// Spawns the actor around `app` and the accept loop; the same plumbing for every
/// application.
pub(crate) fn launch<A: App>(l: Launch<A>) -> ServerHandle {
    let (actor_tx, actor_rx) = mpsc::channel(ACTOR_INBOX);
    let draining = Arc::new(AtomicBool::new(false));
    let actor = Actor::new(
        l.app,
        l.clock,
        l.store.clone(),
        l.metrics.clone(),
        draining.clone(),
        usize::try_from(l.config.server.max_outbound_bytes).unwrap_or(usize::MAX),
    );
    let actor_task = tokio::spawn(watched(
        actor.run(actor_rx, l.results),
        l.metrics.clone(),
        draining.clone(),
    ));
    let ctx = Arc::new(Context::new(
        l.config,
        l.engine_path,
        l.clock,
        actor_tx,
        l.store,
        l.metrics,
        draining,
    ));
    let (stop_accept, stop_rx) = watch::channel(false);
    let accept_task = tokio::spawn(accept_loop(l.listener, ctx.clone(), stop_rx));
    ServerHandle {
        local_addr: l.local_addr,
        ctx,
        stop_accept,
        accept_task,
        actor_task,
        store_thread: l.store_thread,
    }
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration it runs with (its secret included, for tests that sign tokens).
    pub fn config(&self) -> &Config {
        &self.ctx.config
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.ctx.is_draining()
    }

    /// Drains and stops (see the module docs). Every wait is bounded whatever the clients
    /// do: the drain by `shutdown.drain_ms` plus [`SHUTDOWN_SLACK`], then 1 s for the
    /// listener and [`SHUTDOWN_SLACK`] for the store thread.
    pub async fn shutdown(mut self) {
        let drain_ms = self.ctx.config.shutdown.drain_ms;
        self.ctx.draining.store(true, Ordering::SeqCst);
        let (done_tx, done_rx) = oneshot::channel();
        let bound = Duration::from_millis(drain_ms) + SHUTDOWN_SLACK;
        let started = tokio::time::Instant::now();
        // Asking waits for room in the actor's inbox: within the same bound, so that a
        // wedged actor with a full inbox does not hold the shutdown for ever.
        let ask = self.ctx.actor.send(Msg::Drain {
            drain_ms,
            done: done_tx,
        });
        match tokio::time::timeout(bound, ask).await {
            Ok(Ok(())) => {
                if tokio::time::timeout_at(started + bound, done_rx)
                    .await
                    .is_err()
                {
                    tracing::warn!("drain did not finish in time; stopping anyway");
                }
            }
            // The actor is gone (it stopped: `/healthz` said so): nothing to drain.
            Ok(Err(_)) => {}
            Err(_) => tracing::warn!("the core did not take the drain in time; stopping anyway"),
        }
        self.stop_accept.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut self.accept_task).await;
        self.accept_task.abort();
        self.actor_task.abort();
        self.ctx.store.send(Job::Stop);
        if let Some(thread) = self.store_thread.take() {
            let joined = tokio::task::spawn_blocking(move || thread.join());
            if tokio::time::timeout(SHUTDOWN_SLACK, joined).await.is_err() {
                tracing::warn!("store thread did not stop in time");
            }
        }
        tracing::info!("heartline stopped");
    }
}

/// Accepts connections until told to stop, admitting each under the connection cap (the
/// per-IP rate is asked per Engine.IO handshake, in [`crate::engineio`]).
async fn accept_loop(listener: TcpListener, ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let limit = admission::open_file_limit();
    let bound = admission::socket_bound(ctx.config.server.max_connections, limit);
    if bound < ctx.config.server.max_connections {
        tracing::warn!(
            max_connections = ctx.config.server.max_connections,
            open_file_limit = limit,
            sockets = bound,
            "the open-file limit holds fewer sockets than server.max_connections clients"
        );
    }
    ctx.metrics.tcp_bound.store(bound, Ordering::Release);
    let cap = ConnectionCap::new(bound, ctx.metrics.clone());
    let mut at_bound = AtBound::default();
    let refusals = Refusals {
        budget: admission::refusal_budget(bound, limit),
        metrics: ctx.metrics.clone(),
    };
    let mut accept_failures = crate::log_pace::Paced::per_second(1);
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                // One connection's own failure (reset or unreachable before it was
                // taken): the next is taken at once.
                Err(e) if connection_failed(&e) => {
                    tracing::debug!(error = %e, "a connection failed before accept");
                    continue;
                }
                Err(e) => {
                    // Out of descriptors or memory: wait a little rather than spin, and say
                    // so once a second at most.
                    if let Some(skipped) = accept_failures.admit(ctx.clock.now().as_millis()) {
                        tracing::warn!(error = %e, skipped, "accept failed; accepting again in 50 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
            // Counts not told yet, once due: the end of an episode is told too.
            _ = sleep_until_due(at_bound.due()), if at_bound.pending() => {
                at_bound.report(&ctx, std::time::Instant::now());
                continue;
            }
        };
        // At the bound, the longest-quiet connection (no request being served) gives its
        // socket up to the newcomer; if none can, the newcomer is refused.
        let (permit, taken) = match cap.try_acquire() {
            Some(permit) => (Some(permit), false),
            None => {
                let permit = cap
                    .try_acquire_beyond()
                    .filter(|_| ctx.quiet.evict_oldest(ctx.clock.now().as_millis()));
                let taken = permit.is_some();
                (permit, taken)
            }
        };
        let Some(permit) = permit else {
            RuntimeMetrics::inc(&ctx.metrics.refused_sockets);
            tracing::debug!(%remote, "connection refused: too many sockets");
            refusals.refuse(stream, 503, "Service Unavailable");
            at_bound.note(&ctx, true);
            continue;
        };
        if taken {
            at_bound.note(&ctx, false);
        }
        tokio::spawn(conn::serve(stream, remote, ctx.clone(), permit));
    }
}

/// Tells the log that the socket bound was reached, at once and then at most every
/// [`AT_BOUND_WARN_EVERY`] while newcomers keep meeting it, with how many were refused and
/// how many quiet connections were told to give way since the last such line (each
/// refusal itself is logged at debug level only, as a flood would drown the log).
#[derive(Debug, Default)]
struct AtBound {
    last: Option<std::time::Instant>,
    refused: u64,
    taken: u64,
}

/// Sleeps until `due`, or forever if there is none.
async fn sleep_until_due(due: Option<std::time::Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// How often at most [`AtBound`] warns.
const AT_BOUND_WARN_EVERY: Duration = Duration::from_secs(10);

impl AtBound {
    /// Counts a newcomer refused (`refused`) or admitted in a quiet connection's place.
    fn note(&mut self, ctx: &Context, refused: bool) {
        if refused {
            self.refused += 1;
        } else {
            self.taken += 1;
        }
        let now = std::time::Instant::now();
        if self.due().is_none_or(|due| now >= due) {
            self.report(ctx, now);
        }
    }

    /// When counts not yet told are due to be told, if there are any.
    fn due(&self) -> Option<std::time::Instant> {
        self.last.map(|last| last + AT_BOUND_WARN_EVERY)
    }

    /// Whether counts are waiting to be told.
    fn pending(&self) -> bool {
        self.refused + self.taken > 0
    }

    fn report(&mut self, ctx: &Context, now: std::time::Instant) {
        tracing::warn!(
            open = ctx.metrics.tcp_open.load(Ordering::Relaxed),
            bound = ctx.metrics.tcp_bound.load(Ordering::Relaxed),
            refused = self.refused,
            quiet_taken = self.taken,
            "socket bound reached: newcomers take the sockets of quiet connections, or are refused with 503 (counts since the last such line)"
        );
        self.last = Some(now);
        self.refused = 0;
        self.taken = 0;
    }
}

/// Connections past the socket bound being answered, within a budget of descriptors
/// ([`admission::refusal_budget`]); counted in `heartline_tcp_refusing`.
struct Refusals {
    budget: u64,
    metrics: Arc<RuntimeMetrics>,
}

impl Refusals {
    /// Answers a refused connection with a short HTTP error and closes it; past the
    /// budget, just closes it.
    fn refuse(&self, stream: TcpStream, status: u16, reason: &'static str) {
        let refusing = &self.metrics.tcp_refusing;
        let budget = self.budget;
        if refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < budget).then_some(n + 1)
            })
            .is_err()
        {
            return;
        }
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                stream.write_all(&raw_refusal(status, reason)).await?;
                stream.shutdown().await?;
                // Read what the client sent so that closing does not turn into a reset
                // that could destroy the response before the client reads it.
                let mut sink = [0u8; 4096];
                while stream.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
            metrics.tcp_refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

/// Whether an accept error is the failure of one connection, not of the listener: Linux
/// hands an error already pending on the new connection to `accept` (accept(2): to be
/// treated like EAGAIN, retried), and a connection can be reset before it is taken.
fn connection_failed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable
            | ErrorKind::NetworkDown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connections_failure_is_told_from_the_listeners() {
        use std::io::{Error, ErrorKind};
        for kind in [ErrorKind::ConnectionAborted, ErrorKind::ConnectionReset] {
            assert!(connection_failed(&Error::from(kind)), "{kind:?}");
        }
        // EMFILE, ENFILE: the process or the machine is out of descriptors.
        for errno in [24, 23] {
            assert!(!connection_failed(&Error::from_raw_os_error(errno)));
        }
        assert!(!connection_failed(&Error::from(ErrorKind::OutOfMemory)));
    }

    #[tokio::test]
    async fn a_core_that_stops_outside_a_shutdown_is_noted() {
        let metrics = Arc::new(RuntimeMetrics::default());
        let draining = Arc::new(AtomicBool::new(false));
        let panicked = tokio::spawn(watched(
            async { panic!("a bug in the core") },
            metrics.clone(),
            draining.clone(),
        ))
        .await;
        assert!(panicked.is_err());
        assert_eq!(metrics.core_stopped.load(Ordering::Relaxed), 1);
        // Ended by a shutdown, it is not.
        let metrics = Arc::new(RuntimeMetrics::default());
        draining.store(true, Ordering::Relaxed);
        tokio::spawn(watched(async {}, metrics.clone(), draining))
            .await
            .expect("ended");
        assert_eq!(metrics.core_stopped.load(Ordering::Relaxed), 0);
    }
}
