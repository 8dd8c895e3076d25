//! What every connection task shares: the configuration, the Engine.IO path, the clock,
//! the way to the actor and the store, the runtime's counters, and the id counters.
//!
//! Transport and request ids are allocated here, by the runtime, because it sees a socket
//! or a request before the core does; they are never reused, so a late message about a
//! finished one can only ever be ignored, never misrouted.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use heartline_core::engine;
use heartline_core::{RequestId, TransportId};
use tokio::sync::{mpsc, Semaphore};

use crate::actor::Msg;
use crate::admission::{IpRate, QuietConnections};
use crate::arriving::ArrivingBytes;
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

/// Messages from this many bytes on take their size from [`InboxBytes`]; smaller ones
/// (chat events, most of all) are bounded by the inbox's count alone: 8,192 of them hold
/// 128 MiB at most.
pub const LARGE_MESSAGE: usize = 16 * 1024;

/// Bytes that large messages (frames and polling bodies of [`LARGE_MESSAGE`] or more) may
/// hold in the actor's inbox at once, beyond which readers wait.
///
/// The inbox is bounded by its count ([`crate::server::ACTOR_INBOX`]), and one connection
/// can fill it: a client sending frames of `max_payload_bytes` (1 MB) faster than the core
/// parses them would have had 8 GB waiting. With this, a large message waits in its
/// connection's task, which reads nothing more meanwhile, until the core has taken
/// enough of those before it.
#[derive(Debug)]
pub struct InboxBytes {
    free: Arc<Semaphore>,
    total: u32,
}

/// A message on its way into the inbox (see [`InboxBytes::admit`]).
pub enum Admitted {
    /// Ready to go: small, or with its bytes.
    Now(Msg),
    /// Waiting for its bytes.
    Waiting(Pin<Box<dyn Future<Output = Msg> + Send>>),
}

impl InboxBytes {
    /// At least 64 MiB, and room for two of the largest messages the configuration allows
    /// (a frame or body of `max_payload_bytes` and a little framing), so that one such
    /// message never waits for itself.
    pub fn new(max_payload_bytes: u64) -> Self {
        let two = max_payload_bytes.saturating_add(4096).saturating_mul(2);
        // Within what a semaphore counts on this target (2^29 - 1 on 32 bits).
        let most = u64::try_from(Semaphore::MAX_PERMITS).unwrap_or(u64::MAX);
        let total = u32::try_from(two.max(64 << 20).min(most)).unwrap_or(u32::MAX);
        InboxBytes {
            free: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Bytes large messages hold in the inbox now.
    pub fn held(&self) -> u64 {
        u64::from(self.total).saturating_sub(self.free.available_permits() as u64)
    }

    /// `msg`, with its bytes taken if it is large: at once if they are free, else the
    /// wait for them.
    pub fn admit(&self, msg: Msg) -> Admitted {
        let size = body_size(&msg);
        if size < LARGE_MESSAGE {
            return Admitted::Now(msg);
        }
        let n = u32::try_from(size).unwrap_or(u32::MAX).min(self.total);
        match self.free.clone().try_acquire_many_owned(n) {
            Ok(bytes) => Admitted::Now(Msg::Large {
                msg: Box::new(msg),
                bytes,
            }),
            Err(_) => {
                let free = self.free.clone();
                Admitted::Waiting(Box::pin(async move {
                    match free.acquire_many_owned(n).await {
                        Ok(bytes) => Msg::Large {
                            msg: Box::new(msg),
                            bytes,
                        },
                        // Never closed; were it, the message goes uncounted.
                        Err(_) => msg,
                    }
                }))
            }
        }
    }

    /// [`InboxBytes::admit`], waiting for the bytes if need be.
    pub async fn admitted(&self, msg: Msg) -> Msg {
        match self.admit(msg) {
            Admitted::Now(msg) => msg,
            Admitted::Waiting(wait) => wait.await,
        }
    }
}

/// The bytes of a frame or request body a message carries.
fn body_size(msg: &Msg) -> usize {
    match msg {
        Msg::Net(engine::Input::WsFrame { frame, .. }) | Msg::FrameBehindClose { frame, .. } => {
            frame.len()
        }
        Msg::Http {
            input: engine::Input::Http { body, .. },
            ..
        } => body.len(),
        _ => 0,
    }
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
    /// The bytes of large messages the inbox may hold.
    pub inbox_bytes: InboxBytes,
    /// The bytes of large messages still arriving, all connections together.
    pub arriving: ArrivingBytes,
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
            inbox_bytes: InboxBytes::new(config.engine.max_payload_bytes),
            arriving: ArrivingBytes::new(config.engine.max_payload_bytes, metrics.clone())
                .with_grace(
                    config
                        .server
                        .arriving_grace_ms
                        .map_or(crate::arriving::GRACE, std::time::Duration::from_millis),
                ),
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

    /// Whether the store has kept a storage operation waiting for over
    /// [`STORE_STALL`](crate::metrics::STORE_STALL)
    /// without answering any: a flush or a write that does not return (a disk gone, a
    /// hung network mount) stops every send without failing anything, and the health
    /// checks must say so. A store that answers, however far behind, is not stalled.
    pub fn store_stalled(&self) -> bool {
        let since = self.metrics.store_waiting_since_ms.load(Ordering::Relaxed);
        crate::metrics::store_stalled(since, self.clock.now().as_millis())
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use heartline_core::codec::Frame;

    fn frame(len: usize) -> Msg {
        Msg::Net(engine::Input::WsFrame {
            transport: TransportId(1),
            frame: Frame::Binary(Bytes::from(vec![0u8; len])),
        })
    }

    /// Large messages go in while their bytes are free and wait for the bytes of those
    /// before them otherwise; small ones are never held.
    #[tokio::test]
    async fn large_messages_wait_for_the_bytes_of_those_before_them() {
        let inbox = InboxBytes::new(1_000_000);
        assert_eq!(inbox.held(), 0);
        let small = inbox.admit(frame(LARGE_MESSAGE - 1));
        assert!(
            matches!(small, Admitted::Now(Msg::Net(_))),
            "small: as it is"
        );
        let first = match inbox.admit(frame(40 << 20)) {
            Admitted::Now(msg @ Msg::Large { .. }) => msg,
            _ => panic!("the first large one goes at once, counted"),
        };
        assert_eq!(inbox.held(), 40 << 20);
        let Admitted::Waiting(second) = inbox.admit(frame(40 << 20)) else {
            panic!("the second waits");
        };
        let second = tokio::spawn(second);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!second.is_finished(), "still waiting");
        // Handled by the actor: its bytes come back, and the second goes.
        drop(first);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), second)
            .await
            .expect("goes once the first is handled")
            .expect("task");
        assert!(matches!(second, Msg::Large { .. }));
        assert_eq!(inbox.held(), 40 << 20);
        drop(second);
        assert_eq!(inbox.held(), 0);
    }

    /// However large the configured payload, one message of it never waits for itself.
    #[test]
    fn the_largest_message_allowed_fits_twice() {
        for max in [1_000_000, 100 << 20, crate::config::MAX_PAYLOAD_LIMIT] {
            let inbox = InboxBytes::new(max);
            let n = usize::try_from(max).expect("fits") + 1024;
            let one = inbox.admit(frame(n));
            let two = inbox.admit(frame(n));
            assert!(matches!(one, Admitted::Now(_)) && matches!(two, Admitted::Now(_)));
        }
    }
}
