//! What every connection task shares: the configuration, the Engine.IO path, the clock,
//! the way to the actor and the store, the runtime's counters, and the id counters.
//!
//! Transport and request ids are allocated here, by the runtime, because it sees a socket
//! or a request before the core does; they are never reused, so a late message about a
//! finished one can only ever be ignored, never misrouted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use heartline_core::{RequestId, TransportId};
use tokio::sync::mpsc;

use crate::actor::Msg;
use crate::admission::{IpRate, QuietConnections};
use crate::clock::Clock;
use crate::config::{origin_without_slash, Config};
use crate::metrics::RuntimeMetrics;
use crate::storage::StoreQueue;

/// How long a kept-alive connection must have been quiet before a newcomer may take its
/// socket ([`QuietConnections`]): a second, or half the handshake timeout if that is
/// shorter (but never under 100 ms), so that a client whose next request is on its way is
/// rarely the one closed.
fn min_quiet_ms(handshake_timeout_ms: u64) -> u64 {
    (handshake_timeout_ms / 2).clamp(100, 1000)
}

/// Shared by all tasks of one server.
#[derive(Debug)]
pub struct Context {
    /// The configuration the server runs with.
    pub config: Config,
    /// Where Engine.IO is served, with its trailing slash (`/socket.io/` for the gateway,
    /// `/engine.io/` for a plain Engine.IO server).
    pub engine_path: String,
    /// The clock the core runs on.
    pub clock: Clock,
    /// The actor's inbox.
    pub actor: mpsc::Sender<Msg>,
    /// The store thread's queue (HTTP API).
    pub store: StoreQueue,
    /// The runtime's counters.
    pub metrics: Arc<RuntimeMetrics>,
    /// Set once shutdown began.
    pub draining: Arc<AtomicBool>,
    /// `server.connect_rate_per_ip`: asked by a connection's first request and by each
    /// further handshake (see [`crate::engineio::pays_ip_rate`]).
    pub ip_rate: IpRate,
    /// Connections with no request being served, the oldest of which gives its socket up
    /// to a newcomer when the sockets run out.
    pub quiet: Arc<QuietConnections>,
    /// Polling sessions (their sids) with a POST whose body is being read: a second POST
    /// meanwhile is an overlap ([`heartline_core::engine::Input::HttpPostOverlap`]).
    posts_reading: Mutex<HashSet<Box<str>>>,
    next_transport: AtomicU64,
    next_request: AtomicU64,
}

impl Context {
    /// A context for a server about to start.
    pub fn new(
        config: Config,
        engine_path: String,
        clock: Clock,
        actor: mpsc::Sender<Msg>,
        store: StoreQueue,
        metrics: Arc<RuntimeMetrics>,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Context {
            ip_rate: IpRate::new(config.server.connect_rate_per_ip),
            quiet: QuietConnections::new(min_quiet_ms(config.server.handshake_timeout_ms)),
            config,
            engine_path,
            clock,
            actor,
            store,
            metrics,
            draining,
            posts_reading: Mutex::new(HashSet::new()),
            next_transport: AtomicU64::new(1),
            next_request: AtomicU64::new(1),
        }
    }

    /// Marks a POST of session `sid` as being read; `None` if another one is, an
    /// overlap. The mark goes when the returned guard drops.
    pub fn begin_post(self: &Arc<Self>, sid: &str) -> Option<PostReading> {
        let mut reading = self.posts_reading.lock().unwrap_or_else(|e| e.into_inner());
        if !reading.insert(sid.into()) {
            return None;
        }
        RuntimeMetrics::inc(&self.metrics.posts_reading);
        Some(PostReading {
            ctx: self.clone(),
            sid: sid.into(),
        })
    }

    /// A fresh WebSocket id.
    pub fn transport_id(&self) -> TransportId {
        TransportId(self.next_transport.fetch_add(1, Ordering::Relaxed))
    }

    /// A fresh polling request id.
    pub fn request_id(&self) -> RequestId {
        RequestId(self.next_request.fetch_add(1, Ordering::Relaxed))
    }

    /// When a request that began at `began` (the TCP accept, or the end of the request
    /// before it on a kept-alive connection) must have arrived whole:
    /// `server.handshake_timeout_ms` later. The contract counts a partial request's time
    /// from the TCP accept, not from when its headers were read.
    pub fn request_deadline(&self, began: heartline_core::Instant) -> tokio::time::Instant {
        self.clock
            .deadline(began.add_ms(self.config.server.handshake_timeout_ms))
    }

    /// Whether the store's log could not be flushed (see [`crate::storage`]): nothing is
    /// stored until the server is restarted.
    pub fn store_failed(&self) -> bool {
        self.metrics.store_failed.load(Ordering::Relaxed) != 0
    }

    /// Whether the server held `server.max_connections` sessions when the actor last
    /// looked: not ready (`/readyz`), and a WebSocket handshake is refused before its
    /// upgrade, as a polling one
    /// is by the engine, since an upgraded one closed at once (1013, no open packet) leaves
    /// `socket.io-client` waiting out its connect timeout (20 s) before it tries again. A
    /// handshake this lets through while the count is stale is still refused by the
    /// engine, after the upgrade.
    pub fn sessions_full(&self) -> bool {
        self.metrics.sessions.load(Ordering::Relaxed) >= self.config.server.max_connections
    }

    /// Whether the core's actor ended outside a shutdown ([`RuntimeMetrics::core_stopped`]).
    pub fn core_stopped(&self) -> bool {
        self.metrics.core_stopped.load(Ordering::Relaxed) != 0
    }

    /// Whether shutdown began.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a request path is the Engine.IO endpoint (with or without its trailing
    /// slash).
    pub fn is_engine_path(&self, path: &str) -> bool {
        path == self.engine_path || Some(path) == self.engine_path.strip_suffix('/')
    }

    /// Whether a browser page from `origin` may open a session (`server.cors_origins`).
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.config
            .server
            .cors_origins
            .iter()
            .any(|o| o == "*" || origin_without_slash(o).eq_ignore_ascii_case(origin))
    }
}

/// A POST being read, from its headers until its packets are handed to the actor
/// ([`Context::begin_post`]).
#[derive(Debug)]
pub struct PostReading {
    ctx: Arc<Context>,
    sid: Box<str>,
}

impl Drop for PostReading {
    fn drop(&mut self) {
        let mut reading = self
            .ctx
            .posts_reading
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        reading.remove(&self.sid);
        RuntimeMetrics::sub(&self.ctx.metrics.posts_reading, 1);
    }
}
