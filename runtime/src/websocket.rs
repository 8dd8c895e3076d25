//! One WebSocket's I/O: a reader that turns messages into core inputs and a writer that
//! drains the connection's [`Outbox`] onto the socket. Neither decides anything.
//!
//! Frames up to `max_payload_bytes` plus a little slack reach the core, which closes an
//! oversize one with 1009 itself; beyond the slack tungstenite stops reading the frame
//! (memory stays bounded) and the connection is closed with the same code here.
//!
//! The reader outlives a close the core asked for by at most [`CLOSE_LINGER`], waiting for
//! the peer's close frame, so a dead peer's socket is dropped promptly.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use heartline_core::codec::Frame;
use heartline_core::engine::{self, CloseReason, Handshake, Query};
use heartline_core::TransportId;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::actor::Msg;
use crate::admission::Permit;
use crate::context::Context;
use crate::metrics::RuntimeMetrics;
use crate::outbox::{Next, Outbox};

/// Bytes past `max_payload_bytes` that tungstenite still reads, so that the core sees a
/// slightly oversize frame and closes it with its own reason.
pub const FRAME_SLACK: usize = 1024;

/// How long the reader waits for the peer's close frame after a close was asked for.
pub const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// How long the writer may take to deliver its last frames once the reader has stopped.
const WRITER_GRACE: Duration = Duration::from_secs(1);

/// Initial read buffer of each WebSocket, bytes.
const READ_BUFFER: usize = 4096;

/// Most frames written before one flush.
const WRITE_BATCH: usize = 64;

type Ws = WebSocketStream<TokioIo<Upgraded>>;

/// Serves an upgraded connection as an Engine.IO WebSocket until it ends.
pub async fn serve(
    upgraded: Upgraded,
    ctx: Arc<Context>,
    query: Query,
    handshake: Handshake,
    permit: Arc<Permit>,
) {
    let max = usize::try_from(ctx.config.engine.max_payload_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(FRAME_SLACK);
    // tungstenite allocates its read buffer up front (128 KiB by default): with many idle
    // connections that buffer was most of the memory per connection. A frame larger than
    // this still gets room for its whole length when its header is read.
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
    let (sink, stream) = ws.split();
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone()));
    let input = match read_loop(stream, transport, &outbox, &ctx).await {
        Ending::Closed => engine::Input::WsClosed {
            transport,
            error: false,
        },
        Ending::Failed => engine::Input::WsClosed {
            transport,
            error: true,
        },
        Ending::Dropped(reason) => engine::Input::WsAborted { transport, reason },
    };
    let _ = ctx.actor.send(Msg::Net(input)).await;
    outbox.close(CloseCode::Normal.into(), "");
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        outbox.kill();
        writer.abort();
    }
    RuntimeMetrics::dec(&ctx.metrics.ws_open);
    drop(permit);
}

/// Reads until the peer closes, fails, or lingers too long after our close; returns
/// whether the connection failed rather than closed.
/// How a socket's reading ended.
enum Ending {
    /// Closed (by the peer, or after the server's close).
    Closed,
    /// Failed: reset, I/O error, or the server dropped it.
    Failed,
    /// Dropped by this runtime for a reason the core should know.
    Dropped(CloseReason),
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    transport: TransportId,
    outbox: &Outbox,
    ctx: &Context,
) -> Ending {
    let mut linger: Option<tokio::time::Instant> = None;
    loop {
        let frame = tokio::select! {
            msg = stream.next() => match msg {
                None => return Ending::Closed,
                Some(Ok(Message::Text(text))) => Frame::Text(Bytes::from(text)),
                Some(Ok(Message::Binary(bytes))) => Frame::Binary(bytes),
                Some(Ok(Message::Close(_))) => return Ending::Closed,
                Some(Ok(_)) => continue,
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    tracing::info!(%transport, size, max_size, "websocket message too large");
                    outbox.close(CloseCode::Size.into(), "payload too large");
                    return Ending::Dropped(CloseReason::PayloadTooLarge);
                }
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => return Ending::Closed,
                Some(Err(e)) => {
                    tracing::debug!(%transport, error = %e, "websocket read failed");
                    return Ending::Failed;
                }
            },
            _ = outbox.closing(), if linger.is_none() => {
                linger = Some(tokio::time::Instant::now() + CLOSE_LINGER);
                continue;
            }
            _ = sleep_until_opt(linger) => return Ending::Closed,
            _ = outbox.killed() => return Ending::Failed,
        };
        let input = engine::Input::WsFrame { transport, frame };
        if ctx.actor.send(Msg::Net(input)).await.is_err() {
            return Ending::Failed;
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Drains the outbox onto the socket until the close is sent or the connection killed.
async fn write_loop(mut sink: SplitSink<Ws, Message>, outbox: Arc<Outbox>) {
    loop {
        let first = tokio::select! {
            n = outbox.next() => n,
            _ = outbox.killed() => None,
        };
        let Some(first) = first else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < WRITE_BATCH && !matches!(batch.last(), Some(Next::Close(..))) {
            match outbox.try_next() {
                Some(n) => batch.push(n),
                None => break,
            }
        }
        let result = tokio::select! {
            r = send_batch(&mut sink, batch) => r,
            _ = outbox.killed() => return,
        };
        match result {
            Ok(false) => {}
            Ok(true) | Err(_) => return,
        }
    }
}

/// Writes and flushes frames; `Ok(true)` if the batch ended with the close frame.
async fn send_batch(sink: &mut SplitSink<Ws, Message>, batch: Vec<Next>) -> Result<bool, WsError> {
    let mut closed = false;
    for next in batch {
        match next {
            Next::Frame(frame) => sink.feed(to_message(frame)).await?,
            Next::Close(code, reason) => {
                let close = CloseFrame {
                    code: CloseCode::from(code),
                    reason: Utf8Bytes::from(reason),
                };
                sink.feed(Message::Close(Some(close))).await?;
                closed = true;
            }
        }
    }
    sink.flush().await?;
    Ok(closed)
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
