//! One WebSocket's I/O: a single task that turns received messages into core inputs and
//! drains the connection's [`Outbox`] onto the socket. It decides nothing.
//!
//! One task, not a reader and a writer: an idle connection is then one task, one socket
//! and one queue, which is most of what tens of thousands of idle connections cost. The
//! task polls both directions itself, so a peer that does not read (a full socket) never
//! stops its frames from being read, and the outbox's slow-consumer policy still applies.
//!
//! The socket is read into, and written from, buffers that belong to the thread, not to
//! the connection ([`frames`] decodes and encodes the frames): an idle connection holds
//! no buffer at all, where a WebSocket stream library keeps a read and a write buffer per
//! socket for its whole life. A connection holds bytes of its own only while a frame is
//! incomplete or several arrived in one read, and while the socket has not taken all that
//! was written to it.
//!
//! Frames up to `max_payload_bytes` plus a little slack reach the core, which closes an
//! oversize one with 1009 itself; a longer frame is refused here, from its header, before
//! its payload is read (memory stays bounded), and the connection is closed with the same
//! code. Other protocol errors close with 1002 (1007 for text that is not UTF-8). A frame
//! of 16 KiB or more reserves its bytes from the budget all connections share
//! ([`crate::arriving`]) before its payload is read, and gives them back once its message
//! is in the actor's inbox.
//!
//! The task outlives a close the core asked for by at most [`CLOSE_LINGER`], waiting for
//! the peer's close frame, so a dead peer's socket is dropped promptly.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use heartline_core::codec::Frame;
use heartline_core::engine::{self, CloseReason, Handshake, Query};
use heartline_core::TransportId;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::actor::Msg;
use crate::admission::Permit;
use crate::arriving::{OverBudget, Reservation};
use crate::conn::Watched;
use crate::context::{Admitted, Context, LARGE_MESSAGE};
use crate::frames::{self, Ahead, Decoder, FrameError, Received};
use crate::metrics::RuntimeMetrics;
use crate::outbox::{Next, Outbox, Phase};

/// Bytes past `max_payload_bytes` that a frame may have and still reach the core, so that
/// the core sees a slightly oversize frame and closes it with its own reason.
pub const FRAME_SLACK: usize = 1024;

/// How a Socket.IO namespace CONNECT starts (Engine.IO message `4`, Socket.IO CONNECT `0`).
const SOCKETIO_CONNECT: &[u8] = b"40";

/// How far past a namespace CONNECT the socket is looked at for the peer's close: a few
/// small frames (a PONG, say) and the close behind them.
const PEEK_BYTES: usize = 256;

/// How long the task waits for the peer's close frame after a close was asked for.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long the last frames and the close frame may take once reading has stopped.
pub const WRITER_GRACE: Duration = Duration::from_secs(1);

/// Most bytes one read takes from a socket, into the thread's read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Most frames written to the socket in one write.
const WRITE_BATCH: usize = 64;

/// A batch stops growing past this many bytes.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// The thread's write buffer is given back past this size (after a large frame).
const WRITE_BUFFER_KEEP: usize = 256 * 1024;

thread_local! {
    /// The buffers every connection served by this thread reads into and writes from.
    /// Each is borrowed only within one synchronous step of one connection.
    static BUFFERS: RefCell<Buffers> = RefCell::new(Buffers {
        read: vec![0; READ_CHUNK],
        write: Vec::new(),
    });
}

struct Buffers {
    read: Vec<u8>,
    write: Vec<u8>,
}

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
    /// The peer's address when this upgrade passed the per-IP rate on credit (the
    /// connection's first request, naming a session): if the core turns it away, the
    /// address pays, as a polling request with a sid turned away does.
    pub credit: Option<std::net::IpAddr>,
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
        credit,
    } = up;
    let upgraded = match on_upgrade.await {
        Ok(upgraded) => upgraded,
        Err(e) => {
            tracing::debug!(error = %e, "websocket upgrade failed");
            return;
        }
    };
    // The server hands hyper TCP streams in a watch of their own (see `conn`), so this is
    // one; holding the stream itself (not hyper's boxed wrapper around it) is what lets
    // reads share a buffer.
    let (tcp, read_before) = match upgraded.downcast::<TokioIo<Watched>>() {
        Ok(parts) => match parts.io.into_inner().into_inner() {
            Some(tcp) => (tcp, parts.read_buf),
            None => return,
        },
        Err(_) => {
            tracing::warn!("websocket upgrade over a stream that is not TCP; dropped");
            return;
        }
    };
    let outbox = Arc::new(Outbox::new(ctx.metrics.clone()));
    let transport = ctx.transport_id();
    let (refused, told) = match credit {
        Some(ip) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some((ip, rx)))
        }
        None => (None, None),
    };
    let opened = Msg::WsOpened {
        input: engine::Input::WsOpened {
            transport,
            query,
            handshake,
        },
        transport,
        outbox: outbox.clone(),
        refused,
    };
    if ctx.actor.send(opened).await.is_err() {
        return;
    }
    // The actor answers only a socket it closed at once (a made-up or ended sid); one it
    // took drops the sender.
    if let Some((ip, rx)) = told {
        if rx.await.is_ok() {
            let _ = ctx.ip_rate.allow(ip, ctx.clock.now());
        }
    }
    ctx.metrics.ws_open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(serve(Connection {
        tcp,
        decoder: Decoder::with_bytes(&read_before),
        unsent: None,
        outbox,
        transport,
        ctx,
        permit,
        sending: Sending::default(),
        linger: None,
        arriving: None,
    }));
}

/// An open WebSocket and what its task needs.
struct Connection {
    tcp: TcpStream,
    /// Received bytes not yet made into messages (none while idle).
    decoder: Decoder,
    /// Bytes written that the socket has not taken yet, and a pong to send (none while
    /// idle).
    unsent: Option<Box<Unsent>>,
    outbox: Arc<Outbox>,
    transport: TransportId,
    ctx: Arc<Context>,
    permit: Arc<Permit>,
    sending: Sending,
    /// Started once the core asked for a close: how long to wait for the peer's close.
    linger: Option<Pin<Box<Sleep>>>,
    /// The bytes of the arriving budget held for a large message being read, and the wait
    /// for them (none while idle).
    arriving: Option<Box<Reservation>>,
}

/// What the sending direction holds between writes.
#[derive(Default)]
struct Unsent {
    bytes: Vec<u8>,
    /// How many of `bytes` the socket took already.
    start: usize,
    /// The payload of the last ping received, for the pong that answers it (RFC 6455
    /// §5.5.3: only the most recent needs an answer).
    pong: Option<bytes::Bytes>,
}

/// Serves an open WebSocket until it ends.
///
/// An idle connection's task is mostly this future, so it is kept small on purpose:
/// - not an `async fn`: its argument would be stored twice (once as the argument, once
///   moved into the body); an `async move` block keeps the one copy it captured;
/// - across each wait it holds only the connection and a small thing or two (a pointer to
///   the connection, and a boxed wait; or the boxed end timer): every local kept over a
///   wait is part of the task for as long as the connection lives;
/// - no nested `async fn` for the loop, which would hold a pointer to the connection
///   beside it.
///
/// tokio adds 104 bytes of its own to a task and rounds it up to a multiple of 128, so this
/// future must stay within 152 bytes for the task to fit in 256 (a test holds it to that;
/// in a release build it is 144: the connection, 112, and what one wait holds; `cargo +nightly rustc -p heartline-runtime --release --
/// -Zprint-type-sizes` shows it). Each step up costs every idle connection 128 bytes or
/// more: at 520 bytes (an earlier layout, a 640-byte task served from 768-byte blocks) an
/// idle connection cost ~540 bytes more than at 400 (3 alternated runs of 10,000 each).
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn serve(mut c: Connection) -> impl Future<Output = ()> + Send {
    async move {
        let ending = loop {
            // The step is taken apart in the statement that awaits it, so that neither it
            // nor the message made of it is stored across the wait below; the transport is
            // read from the connection there too, not kept in a local across the wait.
            let msg = match poll_fn(|cx| c.poll_step(cx)).await {
                Step::Frame(frame) => Msg::Net(engine::Input::WsFrame {
                    transport: c.transport,
                    frame,
                }),
                Step::Closing(frame) => Msg::FrameBehindClose {
                    transport: c.transport,
                    frame,
                },
                Step::End(ending) => break ending,
            };
            // The wait is taken out in a statement of its own, so that the result it came
            // in is not stored beside it.
            // A large message's bytes stay reserved until it is in the inbox, where the
            // inbox's budget counts them.
            let wait = match hand_over(&c.ctx, msg) {
                Ok(true) => {
                    c.arriving = None;
                    continue;
                }
                Ok(false) => break Ending::Failed,
                Err(wait) => wait,
            };
            // Both moved into the closure, so that a pointer to the connection and one to
            // the wait (boxed once more to be a thin one) are all this await holds.
            let (conn, mut wait) = (&mut c, Box::new(wait));
            if !poll_fn(move |cx| conn.poll_waiting(cx, wait.as_mut().as_mut())).await {
                break Ending::Failed;
            }
            c.arriving = None;
        };
        // Reading is over: what it held goes now, not after the close below.
        c.decoder = Decoder::default();
        c.arriving = None;
        // Awaited either way (a one-byte box when no wait is needed, once per connection),
        // for the same reason as above.
        let wait = match hand_over(&c.ctx, Msg::Net(ending.input(c.transport))) {
            Ok(_) => Box::pin(std::future::ready(true)) as Waiting,
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
        let Connection {
            tcp,
            permit,
            ctx,
            sending,
            ..
        } = c;
        // Closed on what its peer was still sending: the socket reads and drops the rest
        // before it closes, so that the peer reads the close frame rather than a reset.
        if sending.refused {
            crate::conn::linger_closed(tcp, permit, &ctx.metrics);
        }
    }
}

/// A wait for room in the actor's inbox.
type Waiting = Pin<Box<dyn Future<Output = bool> + Send>>;

/// Hands `msg` to the actor. `Ok(delivered)` when that needed no wait (`false`: the actor
/// is gone); otherwise the wait, boxed, so that a connection's task does not carry a send
/// future (and a message) inline for the rare moments the inbox is full. The wait holds a
/// context of its own, so that the connection stays free to write meanwhile.
fn hand_over(ctx: &Arc<Context>, msg: Msg) -> Result<bool, Waiting> {
    let msg = match ctx.inbox_bytes.admit(msg) {
        Admitted::Now(msg) => msg,
        Admitted::Waiting(bytes) => {
            let ctx = ctx.clone();
            return Err(Box::pin(async move {
                let msg = bytes.await;
                ctx.actor.send(msg).await.is_ok()
            }));
        }
    };
    match ctx.actor.try_send(msg) {
        Ok(()) => Ok(true),
        Err(TrySendError::Closed(_)) => Ok(false),
        Err(TrySendError::Full(msg)) => {
            let ctx = ctx.clone();
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
    /// A namespace CONNECT with the peer's close already read or in the socket behind it
    /// (see [`engine::Input::WsClosing`]).
    Closing(Frame),
    /// Reading is over.
    End(Ending),
}

/// Writes as much of `bytes` as the socket takes now; returns how much that was. When it
/// is not all, the task is woken once the socket has room.
fn poll_write_some(
    tcp: &mut TcpStream,
    cx: &mut TaskContext<'_>,
    bytes: &[u8],
) -> io::Result<usize> {
    let mut written = 0;
    while written < bytes.len() {
        match Pin::new(&mut *tcp).poll_write(cx, &bytes[written..]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(written)
}

/// What one read decoded: a message or control frame, nothing whole yet, or an error.
type Decoded = Result<Option<Received>, FrameError>;

/// The sending direction's progress.
#[derive(Default)]
struct Sending {
    /// The close frame was written (the socket may not have taken all of it yet): nothing
    /// follows it.
    close_sent: bool,
    /// Sending is over: the socket took the close frame, or refused a write.
    done: bool,
    /// The server refused what the peer was sending (a frame too large or malformed, a
    /// large message over the budget or too slow) and closed, its peer perhaps still
    /// sending: the socket lingers after the close frame ([`crate::conn::linger_closed`]).
    refused: bool,
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

    /// While a message waits for room in the actor's inbox (full, or its large messages'
    /// bytes all taken): nothing more is read, as that is the wait's point, but what the
    /// core queued still goes out, so that a peer that reads is never taken for a slow
    /// consumer because the server was busy. Ready with whether the message went in
    /// (`false`: the actor is gone, or the connection was killed meanwhile).
    fn poll_waiting(
        &mut self,
        cx: &mut TaskContext<'_>,
        wait: Pin<&mut (dyn Future<Output = bool> + Send)>,
    ) -> Poll<bool> {
        if self.outbox.watch(cx.waker()) == Phase::Killed {
            return Poll::Ready(false);
        }
        let _ = self.poll_send(cx);
        wait.poll(cx)
    }

    /// After reading ended: sends what is still queued and the close frame. Ready once
    /// sending is over or the connection was killed.
    fn poll_finish(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.outbox.watch(cx.waker()) == Phase::Killed {
            return Poll::Ready(());
        }
        self.poll_send(cx)
    }

    /// Reads the next message for the core, answering pings on the way: one pong for the
    /// latest of the pings read together (RFC 6455 5.5.3 allows it), so a burst of pings
    /// costs one write, not one each.
    fn poll_recv(&mut self, cx: &mut TaskContext<'_>) -> Poll<Step> {
        let max = usize::try_from(self.ctx.config.engine.max_payload_bytes)
            .unwrap_or(usize::MAX)
            .saturating_add(FRAME_SLACK);
        let mut pong_due = false;
        loop {
            // Frames that came with an earlier read first.
            let decoded = match self.decoder.next_held(max) {
                Ok(None) => {
                    if std::mem::take(&mut pong_due) {
                        let _ = self.poll_send(cx);
                    }
                    match self.poll_reserve(cx, max) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Err(OverBudget)) => {
                            return Poll::Ready(Step::End(self.refuse_over_budget()))
                        }
                        Poll::Ready(Ok(())) => {}
                    }
                    // Asked before each read while bytes are held, which also has the task
                    // woken when the budget tells it.
                    if self.arriving.as_ref().is_some_and(|r| r.poll_evicted(cx)) {
                        return Poll::Ready(Step::End(self.refuse_too_slow()));
                    }
                    match self.poll_read(cx, max) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(decoded)) => decoded,
                        Poll::Ready(Err(ending)) => return Poll::Ready(Step::End(ending)),
                    }
                }
                decoded => decoded,
            };
            let step = match decoded {
                Ok(Some(Received::Text(text))) if text.starts_with(SOCKETIO_CONNECT) => {
                    if self.peer_closed_ahead(cx) {
                        Step::Closing(Frame::Text(text))
                    } else {
                        Step::Frame(Frame::Text(text))
                    }
                }
                Ok(Some(Received::Text(text))) => Step::Frame(Frame::Text(text)),
                Ok(Some(Received::Binary(bytes))) => Step::Frame(Frame::Binary(bytes)),
                Ok(Some(Received::Ping(payload))) => {
                    if !self.sending.close_sent {
                        self.unsent.get_or_insert_with(Box::default).pong = Some(payload);
                        pong_due = true;
                    }
                    continue;
                }
                Ok(Some(Received::Close(code))) => {
                    // Answered at once, ahead of anything still queued, with the peer's
                    // own code as RFC 6455 5.5.1 suggests (a close frame without a code
                    // gets 1000); a close of ours already on its way stays as it is.
                    self.outbox
                        .answer_close(code.unwrap_or(CloseCode::Normal.into()));
                    Step::End(Ending::Closed)
                }
                Ok(None) => continue,
                Err(e) => Step::End(self.refuse(&e)),
            };
            if pong_due {
                let _ = self.poll_send(cx);
            }
            if matches!(step, Step::Frame(_) | Step::Closing(_)) {
                // Whole: its bytes wait for the inbox now, not for the peer.
                if let Some(r) = &self.arriving {
                    r.arrived();
                }
            }
            return Poll::Ready(step);
        }
    }

    /// Whether the peer's close is already here behind what was decoded: a close frame
    /// among the whole frames held, or, when those end on a frame boundary, the end of the
    /// stream, a failed socket, or a close frame among the whole frames of the next
    /// [`PEEK_BYTES`] waiting in the socket (looked at, not read). Only asked for a
    /// namespace CONNECT, once or so per connection.
    fn peer_closed_ahead(&mut self, cx: &mut TaskContext<'_>) -> bool {
        match self.decoder.held_ahead() {
            Ahead::Close => return true,
            Ahead::Partial => return false,
            Ahead::Boundary => {}
        }
        let mut waiting = [0u8; PEEK_BYTES];
        let mut buf = ReadBuf::new(&mut waiting);
        match self.tcp.poll_peek(cx, &mut buf) {
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => true,
            Poll::Ready(Ok(n)) => frames::scan_for_close(&waiting[..n]) == Ahead::Close,
            Poll::Pending => false,
        }
    }

    /// One read from the socket into the thread's buffer, decoded up to the first message
    /// (`Ok(Ok(None))`: no whole message yet). `Err`: reading is over.
    fn poll_read(&mut self, cx: &mut TaskContext<'_>, max: usize) -> Poll<Result<Decoded, Ending>> {
        let Connection {
            tcp,
            decoder,
            sending,
            transport,
            arriving,
            ..
        } = self;
        BUFFERS.with(|buffers| {
            let mut buffers = buffers.borrow_mut();
            let mut buf = ReadBuf::new(&mut buffers.read);
            match Pin::new(tcp).poll_read(cx, &mut buf) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(%transport, error = %e, "websocket read failed");
                    Poll::Ready(Err(Ending::Failed))
                }
                // The peer closed its side: after our close frame that ends the exchange;
                // before it, without a close frame of its own, the connection was lost.
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    Poll::Ready(Err(if sending.close_sent {
                        Ending::Closed
                    } else {
                        Ending::Failed
                    }))
                }
                Poll::Ready(Ok(())) => {
                    let n = buf.filled().len();
                    let decoded = decoder.next_from(&mut buffers.read[..n], max);
                    if let Some(r) = arriving {
                        r.note_received(decoder.received());
                    }
                    Poll::Ready(Ok(decoded))
                }
            }
        })
    }

    /// Before reading more of a large message: its bytes reserved from the arriving
    /// budget, all of the frame in progress at once (see [`crate::arriving`]), and room
    /// made for them. Pending while waiting for them (nothing more is read meanwhile).
    fn poll_reserve(
        &mut self,
        cx: &mut TaskContext<'_>,
        max: usize,
    ) -> Poll<Result<(), OverBudget>> {
        let want = self.decoder.arriving(max);
        if want < LARGE_MESSAGE && self.arriving.is_none() {
            return Poll::Ready(Ok(()));
        }
        let reservation = self.arriving.get_or_insert_with(Box::default);
        match reservation.poll_cover(cx, &self.ctx.arriving, want) {
            Poll::Ready(Ok(())) => {
                // What came with the frame's header counts from the start.
                reservation.note_received(self.decoder.received());
                self.decoder.make_room(max);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }

    /// Closes on what the peer is still sending: the close frame goes ahead of what is
    /// queued, and the socket lingers once it is written.
    fn close_refusing(&mut self, code: u16, reason: &str) {
        self.sending.refused = true;
        self.outbox.refuse(code, reason);
    }

    /// A large message needed more of the arriving budget than was free while this
    /// connection held some: it ends with 1013 (try again later), and its client comes
    /// back.
    fn refuse_over_budget(&mut self) -> Ending {
        let transport = self.transport;
        self.close_refusing(1013, "try again later");
        tracing::debug!(%transport, "large message over the arriving budget");
        Ending::Dropped(CloseReason::ServerClose(OverBudget.to_string()))
    }

    /// Its large message arrived too slowly while another waited for the arriving budget:
    /// it ends with 1013 (try again later), giving its bytes back, and its client comes
    /// back.
    fn refuse_too_slow(&mut self) -> Ending {
        let transport = self.transport;
        self.close_refusing(1013, "message arriving too slowly");
        tracing::debug!(%transport, "large message arriving too slowly, ended to make room");
        Ending::Dropped(CloseReason::ServerClose(
            "a large message arrived too slowly while others waited".to_owned(),
        ))
    }

    /// Answers a protocol error with its close code; the connection ends.
    fn refuse(&mut self, e: &FrameError) -> Ending {
        let transport = self.transport;
        self.close_refusing(e.close_code(), e.close_reason());
        match e {
            FrameError::TooLarge { size, max } => {
                // At debug: the core's close notice says it at info, paced (`log_pace`).
                tracing::debug!(%transport, size, max, "websocket message too large");
                Ending::Dropped(CloseReason::PayloadTooLarge)
            }
            _ => {
                tracing::debug!(%transport, error = %e, "websocket frame refused");
                // The peer broke the protocol, as a packet the core refuses does: counted
                // as that, not as a transport failure.
                Ending::Dropped(CloseReason::ProtocolError(e.to_string()))
            }
        }
    }

    /// Writes queued frames to the socket (at most [`WRITE_BATCH`] per turn). Ready once
    /// sending is over; Pending while waiting for frames or for the socket.
    fn poll_send(&mut self, cx: &mut TaskContext<'_>) -> Poll<()> {
        if self.sending.done {
            return Poll::Ready(());
        }
        match self.write_batch(cx) {
            Ok(more) => {
                if self.sending.close_sent && self.unsent.is_none() {
                    self.sending.done = true;
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
                self.unsent = None;
                Poll::Ready(())
            }
        }
    }

    /// Finishes what the socket has not taken yet, then writes one batch: a pong if one is
    /// due, then queued frames, encoded into the thread's write buffer and written at once.
    /// Returns whether the batch was full and all of it went out (more may be waiting).
    fn write_batch(&mut self, cx: &mut TaskContext<'_>) -> io::Result<bool> {
        if !self.poll_write_unsent(cx)? {
            return Ok(false);
        }
        let Connection {
            tcp,
            outbox,
            unsent,
            sending,
            ..
        } = self;
        BUFFERS.with(|buffers| {
            let mut buffers = buffers.borrow_mut();
            let out = &mut buffers.write;
            out.clear();
            if let Some(pong) = unsent.take().and_then(|u| u.pong) {
                frames::encode_pong(out, &pong);
            }
            let mut fed = 0;
            while !sending.close_sent && fed < WRITE_BATCH && out.len() < WRITE_BATCH_BYTES {
                let Some(next) = outbox.try_next() else {
                    break;
                };
                match next {
                    Next::Frame(Frame::Text(text)) => frames::encode_text(out, &text),
                    Next::Frame(Frame::Binary(bytes)) => frames::encode_binary(out, &bytes),
                    Next::Close(code, reason) => {
                        frames::encode_close(out, code, &reason);
                        sending.close_sent = true;
                    }
                }
                fed += 1;
            }
            let full = fed == WRITE_BATCH || out.len() >= WRITE_BATCH_BYTES;
            let written = poll_write_some(tcp, cx, out)?;
            let all_written = written == out.len();
            if !all_written {
                *unsent = Some(Box::new(Unsent {
                    bytes: out[written..].to_vec(),
                    start: 0,
                    pong: None,
                }));
            }
            if out.capacity() > WRITE_BUFFER_KEEP {
                *out = Vec::new();
            }
            Ok(full && all_written)
        })
    }

    /// Writes what the socket did not take before. `Ok(true)` once nothing is left (a pong
    /// still due stays for the next batch).
    fn poll_write_unsent(&mut self, cx: &mut TaskContext<'_>) -> io::Result<bool> {
        let Some(unsent) = self.unsent.as_mut() else {
            return Ok(true);
        };
        unsent.start += poll_write_some(&mut self.tcp, cx, &unsent.bytes[unsent.start..])?;
        if unsent.start < unsent.bytes.len() {
            return Ok(false);
        }
        if unsent.pong.is_none() {
            self.unsent = None;
        } else {
            unsent.bytes = Vec::new();
            unsent.start = 0;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle connection is mostly its task: the future that serves it must stay within
    /// the 152 bytes that let tokio's task fit a 256-byte block (see [`serve`]).
    #[test]
    fn an_idle_connections_future_fits_its_block() {
        fn returned<R>(_: fn(Connection) -> R) -> usize {
            std::mem::size_of::<R>()
        }
        let future = returned(serve);
        assert!(future <= 152, "{future} bytes");
    }

    /// A masked client text frame (mask key zero, which leaves the payload as it is).
    fn client_text(payload: &[u8]) -> Vec<u8> {
        let len = u8::try_from(payload.len()).expect("a short frame");
        assert!(len < 126);
        let mut frame = vec![0x81, 0x80 | len, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        frame
    }

    /// While a received message waits for room in a full inbox, frames the core queued
    /// still go out (before, the task sat in the wait and wrote nothing: a client reading
    /// normally could pile up past `max_outbound_bytes` and be closed as a slow consumer).
    /// The message goes in once there is room.
    #[tokio::test]
    async fn queued_frames_go_out_while_a_message_waits_for_the_inbox() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let metrics = Arc::new(RuntimeMetrics::default());
        let (actor, mut inbox) = tokio::sync::mpsc::channel(1);
        let ctx = Arc::new(Context::new(
            crate::config::Config::default(),
            "/socket.io/".into(),
            crate::clock::Clock::start(),
            actor,
            crate::storage::StoreQueue::detached(),
            metrics.clone(),
            Arc::default(),
        ));
        // The inbox is full before the client sends anything.
        let filler = ctx.transport_id();
        ctx.actor
            .try_send(Msg::Net(engine::Input::WsClosed {
                transport: filler,
                error: false,
            }))
            .expect("an empty inbox");

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&tcp);
        // Bytes the server's end has not read yet (the task owns the socket; the test only
        // asks the kernel about it while the task lives).
        let unread = move || {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes one int through the pointer; the descriptor is the
            // accepted socket, open for as long as the task below runs.
            let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
            assert_eq!(rc, 0, "FIONREAD");
            n
        };
        let permit = crate::admission::ConnectionCap::new(1, metrics.clone())
            .try_acquire()
            .unwrap();
        let outbox = Arc::new(Outbox::new(metrics.clone()));
        let transport = ctx.transport_id();
        let task = tokio::spawn(serve(Connection {
            tcp,
            decoder: Decoder::default(),
            unsent: None,
            outbox: outbox.clone(),
            transport,
            ctx: ctx.clone(),
            permit: Arc::new(permit),
            sending: Sending::default(),
            linger: None,
            arriving: None,
        }));

        client.write_all(&client_text(b"42[\"hi\"]")).await.unwrap();
        // Until the task has read it: in the same turn it found the inbox full and began
        // to wait (this runtime runs one task at a time), so what is queued next can only
        // go out if the wait writes it.
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if unread() == 0 {
                break;
            }
        }
        assert_eq!(unread(), 0, "the frame was read");
        for i in 0..3 {
            outbox.push(Frame::text(format!("42[\"n\",{i}]")), 1 << 20);
        }
        let frame_len = 2 + "42[\"n\",0]".len();
        let mut got = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(2), async {
            let mut buf = [0u8; 256];
            while got.len() < 3 * frame_len {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "the socket closed");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        assert!(read.is_ok(), "queued frames not written: {got:?}");
        assert_eq!(&got[..frame_len], b"\x81\x0942[\"n\",0]");

        // Room in the inbox: the waiting message goes in, after the filler.
        assert!(matches!(
            inbox.recv().await,
            Some(Msg::Net(engine::Input::WsClosed { transport, .. })) if transport == filler
        ));
        let next = tokio::time::timeout(Duration::from_secs(2), inbox.recv())
            .await
            .expect("the waiting message");
        match next {
            Some(Msg::Net(engine::Input::WsFrame {
                transport: t,
                frame: Frame::Text(text),
            })) => {
                assert_eq!(t, transport);
                assert_eq!(&text[..], b"42[\"hi\"]");
            }
            _ => panic!("not the client's frame"),
        }
        task.abort();
    }
}
