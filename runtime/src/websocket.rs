//! One WebSocket's I/O: a single task that turns received messages into core inputs and
//! drains the connection's [`Outbox`] onto the socket. It decides nothing.
//!
//! One task, not a reader and a writer: an idle connection is then one task, one socket
//! and one queue, which is most of what tens of thousands of idle connections cost. The
//! task polls both directions itself, so a peer that does not read (a full socket) never
//! stops its frames from being read, and the outbox's slow-consumer policy still applies.
//!
//! Frames up to `max_payload_bytes` plus a little slack reach the core, which closes an
//! oversize one with 1009 itself; beyond the slack tungstenite stops reading the frame
//! (memory stays bounded) and the connection is closed with the same code here.
//!
//! The task outlives a close the core asked for by at most [`CLOSE_LINGER`], waiting for
//! the peer's close frame, so a dead peer's socket is dropped promptly.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, Stream};
use heartline_core::codec::Frame;
use heartline_core::engine::{self, CloseReason, Handshake, Query};
use heartline_core::TransportId;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::actor::Msg;
use crate::admission::Permit;
use crate::context::Context;
use crate::metrics::RuntimeMetrics;
use crate::outbox::{Next, Outbox, Phase};

/// Bytes past `max_payload_bytes` that tungstenite still reads, so that the core sees a
/// slightly oversize frame and closes it with its own reason.
pub const FRAME_SLACK: usize = 1024;

/// How long the task waits for the peer's close frame after a close was asked for.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long the last frames and the close frame may take once reading has stopped.
const WRITER_GRACE: Duration = Duration::from_secs(1);

/// Read buffer of each WebSocket, bytes: what one read takes from the socket at most.
/// Chat frames are a few hundred bytes, so this holds one or two; a larger frame still gets
/// room for its whole length once its header is read. tungstenite's default (128 KiB) was
/// most of an idle connection's memory, 4 KiB still a third of it, 1 KiB a fifth.
///
/// The buffer keeps its size only while no received frame still points into it (see
/// [`Connection::poll_recv`]): below 1 KiB, `bytes` gives a buffer that was shared at the
/// time it needed room a new one of just the bytes asked for, and reads would shrink to a
/// frame header at a time.
const READ_BUFFER: usize = 512;

/// Most frames handed to the socket before one flush.
const WRITE_BATCH: usize = 64;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// A WebSocket upgrade that was answered with 101; hyper has yet to hand over the socket.
pub struct Upgrade {
    /// Resolves to the socket once the 101 is written.
    pub on_upgrade: OnUpgrade,
    /// The runtime's shared context.
    pub ctx: Arc<Context>,
    /// The handshake request's query.
    pub query: Query,
    /// The handshake request's facts.
    pub handshake: Handshake,
    /// The connection's admission slot, held until the socket is gone.
    pub permit: Arc<Permit>,
}

/// Takes over an upgraded connection: waits for the socket, tells the actor, then serves
/// it on a task of its own.
///
/// Two tasks in turn, not one: a task's future keeps room for everything its setup held
/// (the query, the handshake, the upgrade) for as long as it runs, and an idle connection
/// runs for hours. This task ends as soon as the connection's own task is spawned.
pub async fn accept(up: Upgrade) {
    let Upgrade {
        on_upgrade,
        ctx,
        query,
        handshake,
        permit,
    } = up;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    let max = usize::try_from(ctx.config.engine.max_payload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAME_SLACK);
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(max))
        .max_frame_size(Some(max));
    let ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let limit = usize::try_from(ctx.config.server.max_outbound_bytes).unwrap_or(usize::MAX);
    let outbox = Arc::new(Outbox::new(limit, ctx.metrics.clone()));
    let transport = ctx.transport_id();
    let opened = Msg::WsOpened {
        input: engine::Input::WsOpened {
            transport,
            query,
            handshake,
        },
        transport,
        outbox: outbox.clone(),
    };
    if ctx.actor.send(opened).await.is_err() {
        return;
    }
    ctx.metrics.ws_open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(serve(Connection {
        ws,
        outbox,
        transport,
        ctx,
        permit,
        sending: Sending::default(),
        linger: None,
    }));
}

/// An open WebSocket and what its task needs.
struct Connection {
    ws: Ws,
    outbox: Arc<Outbox>,
    transport: TransportId,
    ctx: Arc<Context>,
    permit: Arc<Permit>,
    sending: Sending,
    /// Started once the core asked for a close: how long to wait for the peer's close.
    linger: Option<Pin<Box<Sleep>>>,
}

/// Serves an open WebSocket until it ends.
///
/// An idle connection's task is mostly this future, so it is kept small on purpose:
/// - not an `async fn`: its argument would be stored twice (once as the argument, once
///   moved into the body); an `async move` block keeps the one copy it captured;
/// - across each wait it holds only the connection and one small thing (a pointer to
///   the connection, a boxed wait or the boxed end timer): every local kept over a wait is
///   part of the task for as long as the connection lives;
/// - no nested `async fn` for the loop, which would hold a pointer to the connection
///   beside it.
///
/// tokio adds 104 bytes of its own to a task and rounds it up to a multiple of 128, so this
/// future must stay within 408 bytes for the task to fit in 512 (it is 400: the connection,
/// 376, and a 16-byte wait at most; `cargo +nightly rustc -p heartline-runtime --release --
/// -Zprint-type-sizes` shows it). The next size, 640, is served from 768-byte blocks: at
/// 520 bytes (the layout before) an idle connection cost ~540 bytes more (3 alternated
/// runs of 10,000 each).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve(mut c: Connection) -> impl Future<Output = ()> + Send {
    async move {
        let ending = loop {
            // The step is taken apart in the statement that awaits it, so that neither it
            // nor the message made of it is stored across the wait below.
            let frame = match poll_fn(|cx| c.poll_step(cx)).await {
                Step::Frame(frame) => frame,
                Step::End(ending) => break ending,
            };
            let msg = Msg::Net(engine::Input::WsFrame {
                transport: c.transport,
                frame,
            });
            // The wait is taken out in a statement of its own, so that the result it came
            // in is not stored beside it.
            let wait = match hand_over(&c.ctx, msg) {
                Ok(true) => continue,
                Ok(false) => break Ending::Failed,
                Err(wait) => wait,
            };
            if !wait.await {
                break Ending::Failed;
            }
        };
        // Awaited either way (a one-byte box when no wait is needed, once per connection),
        // for the same reason as above.
        let wait = match hand_over(&c.ctx, Msg::Net(ending.input(c.transport))) {
            Ok(_) => Box::pin(std::future::ready(true)) as Waiting<'_>,
            Err(wait) => wait,
        };
        wait.await;
        // Whatever is still queued, then a close frame (the one asked for, or a normal one).
        c.outbox.close(CloseCode::Normal.into(), "");
        // Boxed, in a statement of its own: the timer is only needed at the end, so idle
        // connections do not carry it.
        let finishing = Box::pin(tokio::time::timeout(
            WRITER_GRACE,
            poll_fn(|cx| c.poll_finish(cx)),
        ));
        let _ = finishing.await;
        RuntimeMetrics::dec(&c.ctx.metrics.ws_open);
        drop(c.permit);
    }
}

/// A wait for room in the actor's inbox.
type Waiting<'a> = Pin<Box<dyn Future<Output = bool> + Send + 'a>>;

/// Hands `msg` to the actor. `Ok(delivered)` when that needed no wait (`false`: the actor
/// is gone); otherwise the wait, boxed, so that a connection's task does not carry a send
/// future (and a message) inline for the rare moments the inbox is full.
fn hand_over(ctx: &Context, msg: Msg) -> Result<bool, Waiting<'_>> {
    match ctx.actor.try_send(msg) {
        Ok(()) => Ok(true),
        Err(TrySendError::Closed(_)) => Ok(false),
        Err(TrySendError::Full(msg)) => {
            Err(Box::pin(async move { ctx.actor.send(msg).await.is_ok() }))
        }
    }
}

/// How a socket's reading ended.
enum Ending {
    /// Closed (by the peer, or after the server's close).
    Closed,
    /// Failed: reset, I/O error, or the server dropped it.
    Failed,
    /// Dropped by this runtime for a reason the core should know.
    Dropped(CloseReason),
}

impl Ending {
    /// What the core is told.
    fn input(self, transport: TransportId) -> engine::Input {
        match self {
            Ending::Closed => engine::Input::WsClosed {
                transport,
                error: false,
            },
            Ending::Failed => engine::Input::WsClosed {
                transport,
                error: true,
            },
            Ending::Dropped(reason) => engine::Input::WsAborted { transport, reason },
        }
    }
}

/// What one turn of the connection produced.
enum Step {
    /// A message for the core.
    Frame(Frame),
    /// Reading is over.
    End(Ending),
}

/// The sending direction's progress.
#[derive(Default)]
struct Sending {
    /// Frames handed to the socket since the last completed flush.
    unflushed: bool,
    /// The close frame was handed to the socket: nothing follows it.
    close_sent: bool,
    /// Sending is over: the close frame is flushed, or the socket refused a write.
    done: bool,
}

impl Connection {
    /// One turn: sends what is queued, then reads until a message for the core, the end
    /// of reading, or nothing more to do now.
    fn poll_step(&mut self, cx: &mut TaskContext<'_>) -> Poll<Step> {
        let phase = self.outbox.watch(cx.waker());
        if phase == Phase::Killed {
            return Poll::Ready(Step::End(Ending::Failed));
        }
        // Ready means sending is over; reading goes on until the peer's close.
        let _ = self.poll_send(cx);
        if self.linger.is_none() && phase == Phase::Closing {
            self.linger = Some(Box::pin(tokio::time::sleep(CLOSE_LINGER)));
        }
        if let Some(sleep) = self.linger.as_mut() {
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::End(Ending::Closed));
            }
        }
        self.poll_recv(cx)
    }

    /// After reading ended: sends what is still queued and the close frame. Ready once
    /// sending is over or the connection was killed.
    fn poll_finish(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.outbox.watch(cx.waker()) == Phase::Killed {
            return Poll::Ready(());
        }
        self.poll_send(cx)
    }

    /// Reads the next message for the core, skipping control frames.
    ///
    /// A message's bytes are copied out of tungstenite's read buffer rather than shared
    /// with it: the core may hold a message after the next read, and a shared buffer would
    /// be replaced by a smaller one on that read (see [`READ_BUFFER`]).
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Step> {
        let transport = self.transport;
        loop {
            let step = match Pin::new(&mut self.ws).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => Step::End(Ending::Closed),
                Poll::Ready(Some(Ok(Message::Text(text)))) => {
                    Step::Frame(Frame::Text(Bytes::copy_from_slice(text.as_bytes())))
                }
                Poll::Ready(Some(Ok(Message::Binary(bytes)))) => {
                    Step::Frame(Frame::Binary(Bytes::copy_from_slice(&bytes)))
                }
                Poll::Ready(Some(Ok(Message::Close(_)))) => Step::End(Ending::Closed),
                Poll::Ready(Some(Ok(_))) => continue,
                Poll::Ready(Some(Err(WsError::Capacity(CapacityError::MessageTooLong {
                    size,
                    max_size,
                })))) => {
                    tracing::info!(%transport, size, max_size, "websocket message too large");
                    self.outbox
                        .close(CloseCode::Size.into(), "payload too large");
                    Step::End(Ending::Dropped(CloseReason::PayloadTooLarge))
                }
                Poll::Ready(Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed))) => {
                    Step::End(Ending::Closed)
                }
                Poll::Ready(Some(Err(e))) => {
                    tracing::debug!(%transport, error = %e, "websocket read failed");
                    Step::End(Ending::Failed)
                }
            };
            return Poll::Ready(step);
        }
    }

    /// Hands queued frames to the socket (at most [`WRITE_BATCH`] per flush) and flushes
    /// them. Ready once sending is over; Pending while waiting for frames or for the socket.
    fn poll_send(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.sending.done {
            return Poll::Ready(());
        }
        match self.fill_and_flush(cx) {
            Ok(more) => {
                let st = &mut self.sending;
                if st.close_sent && !st.unflushed {
                    st.done = true;
                    return Poll::Ready(());
                }
                if more {
                    // A full batch went out and more may be queued: come back after the
                    // other direction had its turn.
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
            Err(e) => {
                tracing::debug!(transport = %self.transport, error = %e, "websocket write failed");
                self.sending.done = true;
                Poll::Ready(())
            }
        }
    }

    /// One batch: feeds frames while the socket takes them, then flushes. Returns whether
    /// the batch was full (more may be waiting).
    fn fill_and_flush(&mut self, cx: &mut TaskContext<'_>) -> Result<bool, WsError> {
        let Connection {
            ws,
            outbox,
            sending: st,
            ..
        } = self;
        let mut fed = 0;
        while !st.close_sent && fed < WRITE_BATCH {
            match Pin::new(&mut *ws).poll_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => break,
            }
            let Some(next) = outbox.try_next() else {
                break;
            };
            let msg = match next {
                Next::Frame(frame) => to_message(frame),
                Next::Close(code, reason) => {
                    st.close_sent = true;
                    Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: Utf8Bytes::from(reason),
                    }))
                }
            };
            Pin::new(&mut *ws).start_send(msg)?;
            st.unflushed = true;
            fed += 1;
        }
        if st.unflushed {
            if let Poll::Ready(r) = Pin::new(&mut *ws).poll_flush(cx) {
                r?;
                st.unflushed = false;
            }
        }
        Ok(fed == WRITE_BATCH && !st.unflushed)
    }
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(bytes) => match Utf8Bytes::try_from(bytes) {
            Ok(text) => Message::Text(text),
            // The core only builds UTF-8 text; never send a text frame that is not.
            Err(_) => Message::Text(Utf8Bytes::from_static("")),
        },
        Frame::Binary(bytes) => Message::Binary(bytes),
    }
}
