//! What goes into the engine and what comes out, as enums that read like a protocol trace.
//!
//! The driver turns each thing it observes (a WebSocket opened, a frame, an HTTP request,
//! a close) into an [`Input`], hands it over with the current time, then drains
//! [`Output`]s until there are none: bytes to transmit, HTTP responses to write, transports
//! to close, and [`Event`]s for the application on top. Every type here prints as one
//! transcript line.

use std::fmt;

use bytes::Bytes;
use serde_json::Value;

use crate::codec::socket::Packet as SioPacket;
use crate::codec::Frame;
use crate::engine::close::CloseReason;
use crate::ids::{RequestId, SessionId, TransportId};
use crate::time::Instant;

/// The HTTP method of a polling request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Receive (or the polling handshake when there is no `sid`).
    Get,
    /// Send.
    Post,
    /// Anything else; always refused.
    Other,
}

/// The Engine.IO query parameters of a request, as the driver read them from the URL.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// `EIO`, the protocol version; must be `"4"`.
    pub eio: Option<String>,
    /// `transport`: `polling` or `websocket`.
    pub transport: Option<String>,
    /// `sid`, present on every request of an established session.
    pub sid: Option<String>,
}

/// Facts about the handshake request that the application may need (authentication, logs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handshake {
    /// When the TCP connection that carried the handshake was accepted: the handshake
    /// timeout counts from here.
    pub accepted_at: Instant,
    /// The `Authorization` header of the handshake request, if any. (`Box<str>`, not
    /// `String`: every session keeps its handshake, and this keeps a session in a
    /// 160-byte block.)
    pub authorization: Option<Box<str>>,
    /// The peer's address, for logs and per-address limits.
    pub remote: Option<Box<str>>,
}

/// Something the driver observed.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A WebSocket on the Engine.IO path completed its opening handshake (the driver always
    /// answers 101; the engine closes sockets it does not want, which every client handles).
    WsOpened {
        /// The new socket.
        transport: TransportId,
        /// Its query string.
        query: Query,
        /// Its handshake request.
        handshake: Handshake,
    },
    /// A complete WebSocket message arrived.
    WsFrame {
        /// The socket.
        transport: TransportId,
        /// The message.
        frame: Frame,
    },
    /// The peer of a WebSocket has already closed it (its close frame or the end of the
    /// stream is in hand, read ahead), behind frames not handed over yet; they follow, then
    /// [`Input::WsClosed`]. A namespace CONNECT among them opens nothing: it was sent by a
    /// client that has since given the socket up (typically after its own connect timeout,
    /// both held up together by a stalled network), and as the newest connection of its
    /// user it would otherwise displace that user's live one for a session already over.
    /// Drivers that cannot read ahead never send it.
    WsClosing {
        /// The socket.
        transport: TransportId,
    },
    /// A WebSocket ended; `error` if it failed rather than closed.
    WsClosed {
        /// The socket.
        transport: TransportId,
        /// Whether it was a failure (reset, I/O error) rather than a close.
        error: bool,
    },
    /// The driver dropped a WebSocket for a reason of its own: the client did not read
    /// what was sent to it (`SlowConsumer`), or sent a message the WebSocket layer refused
    /// to buffer (`PayloadTooLarge`). The session ends with that reason.
    WsAborted {
        /// The socket.
        transport: TransportId,
        /// Why the driver dropped it.
        reason: CloseReason,
    },
    /// An HTTP request on the Engine.IO path that is not a WebSocket upgrade.
    Http {
        /// The request, answered by exactly one [`Transmit::HttpResponse`].
        request: RequestId,
        /// Its method.
        method: Method,
        /// Its query string.
        query: Query,
        /// Its body (POST), already bounded by the driver to `max_payload_bytes + 1`.
        body: Bytes,
        /// Its handshake facts.
        handshake: Handshake,
    },
    /// A polling POST arrived while the driver was still reading the body of an earlier
    /// POST of the same session (the engine sees a POST only once its body is in, so the
    /// driver is the one that can tell). Two writers mean the client lost track of the
    /// session, as two readers do: it ends, and this request is answered 400.
    HttpPostOverlap {
        /// The second POST, answered by exactly one [`Transmit::HttpResponse`].
        request: RequestId,
        /// Its query string.
        query: Query,
    },
    /// The client gave up on an HTTP request that had not been answered yet.
    HttpAborted {
        /// The request.
        request: RequestId,
    },
}

/// Content type of an HTTP response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// `text/plain; charset=UTF-8`: polling payloads and `ok`.
    Text,
    /// `application/json`: Engine.IO error bodies.
    Json,
}

/// Bytes or a close for the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send one WebSocket message.
    WsSend {
        /// The socket.
        transport: TransportId,
        /// The message; shared, not copied, when fanned out.
        frame: Frame,
    },
    /// Close a WebSocket after everything already sent on it.
    WsClose {
        /// The socket.
        transport: TransportId,
        /// Why; also gives the close code.
        reason: CloseReason,
    },
    /// Answer an HTTP request.
    HttpResponse {
        /// The request.
        request: RequestId,
        /// HTTP status.
        status: u16,
        /// Content type of `body`.
        content_type: ContentType,
        /// The body.
        body: Bytes,
    },
}

/// Something the application on top of the engine must know or decide.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A new Engine.IO session opened.
    Opened {
        /// The session.
        session: SessionId,
        /// Its public id.
        sid: String,
        /// `true` for WebSocket, `false` for polling.
        websocket: bool,
    },
    /// The client asks to connect `nsp`; answer with `accept_connect` or `refuse_connect`.
    Connect {
        /// The session.
        session: SessionId,
        /// The namespace.
        nsp: String,
        /// The CONNECT payload (the client's `auth` option), if any.
        auth: Option<Value>,
    },
    /// An EVENT or ACK (binary ones with their attachments) on a connected namespace.
    Packet {
        /// The session.
        session: SessionId,
        /// The packet.
        packet: SioPacket,
    },
    /// A raw Engine.IO message, when the Socket.IO layer is off.
    Message {
        /// The session.
        session: SessionId,
        /// The message.
        data: crate::codec::engine::Data,
    },
    /// The client left a namespace (Socket.IO DISCONNECT); the session stays open.
    Disconnected {
        /// The session.
        session: SessionId,
        /// The namespace.
        nsp: String,
    },
    /// The session moved from polling to WebSocket.
    Upgraded {
        /// The session.
        session: SessionId,
    },
    /// The session ended. Nothing more will be said about it.
    Closed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: CloseReason,
    },
}

/// One thing the driver must act on, in the order produced.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// For the network.
    Transmit(Transmit),
    /// For the application.
    Event(Event),
}

/// Longest text a transcript line shows of one frame or body.
const SHOWN_BYTES: usize = 120;

fn shown(bytes: &[u8]) -> String {
    if bytes.len() <= SHOWN_BYTES {
        return format!("{:?}", String::from_utf8_lossy(bytes));
    }
    let head = String::from_utf8_lossy(&bytes[..SHOWN_BYTES]);
    format!("{head:?}... ({} bytes)", bytes.len())
}

fn frame_text(frame: &Frame) -> String {
    match frame {
        Frame::Text(b) => shown(b),
        Frame::Binary(b) => format!("<binary {} bytes>", b.len()),
    }
}

fn body_text(body: &Bytes) -> String {
    shown(body)
}

fn query_text(q: &Query) -> String {
    let mut parts = vec![];
    if let Some(v) = &q.eio {
        parts.push(format!("EIO={v}"));
    }
    if let Some(v) = &q.transport {
        parts.push(format!("transport={v}"));
    }
    if let Some(v) = &q.sid {
        parts.push(format!("sid={v}"));
    }
    format!("?{}", parts.join("&"))
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Input::WsOpened {
                transport, query, ..
            } => write!(f, "{transport} ws open {}", query_text(query)),
            Input::WsFrame { transport, frame } => {
                write!(f, "{transport} ws recv {}", frame_text(frame))
            }
            Input::WsClosing { transport } => {
                write!(
                    f,
                    "{transport} ws closed by peer behind frames still to come"
                )
            }
            Input::WsClosed { transport, error } => {
                write!(
                    f,
                    "{transport} ws closed by peer{}",
                    if *error { " (error)" } else { "" }
                )
            }
            Input::WsAborted { transport, reason } => {
                write!(f, "{transport} ws dropped by the driver ({reason})")
            }
            Input::Http {
                request,
                method,
                query,
                body,
                ..
            } => {
                write!(f, "{request} http {method:?} {}", query_text(query))?;
                if !body.is_empty() {
                    write!(f, " {}", body_text(body))?;
                }
                Ok(())
            }
            Input::HttpPostOverlap { request, query } => write!(
                f,
                "{request} http Post {} while an earlier POST is still being read",
                query_text(query)
            ),
            Input::HttpAborted { request } => write!(f, "{request} http aborted by client"),
        }
    }
}

impl fmt::Display for Transmit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transmit::WsSend { transport, frame } => {
                write!(f, "{transport} ws send {}", frame_text(frame))
            }
            Transmit::WsClose { transport, reason } => {
                write!(f, "{transport} ws close {} ({reason})", reason.ws_code())
            }
            Transmit::HttpResponse {
                request,
                status,
                body,
                ..
            } => write!(f, "{request} http {status} {}", body_text(body)),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Opened {
                session,
                sid,
                websocket,
            } => write!(
                f,
                "{session} opened sid={sid} over {}",
                if *websocket { "websocket" } else { "polling" }
            ),
            Event::Connect { session, nsp, auth } => match auth {
                Some(a) => write!(f, "{session} connect {nsp} auth={a}"),
                None => write!(f, "{session} connect {nsp}"),
            },
            Event::Packet { session, packet } => {
                let mut text = String::new();
                for frame in packet.encode() {
                    if !text.is_empty() {
                        text.push_str(" + ");
                    }
                    text.push_str(&frame_text(&frame));
                }
                write!(f, "{session} packet {text}")
            }
            Event::Message { session, data } => match data {
                crate::codec::engine::Data::Text(t) => {
                    write!(f, "{session} message {}", shown(t.as_bytes()))
                }
                crate::codec::engine::Data::Binary(b) => {
                    write!(f, "{session} message <binary {} bytes>", b.len())
                }
            },
            Event::Disconnected { session, nsp } => write!(f, "{session} left {nsp}"),
            Event::Upgraded { session } => write!(f, "{session} upgraded to websocket"),
            Event::Closed { session, reason } => write!(f, "{session} closed ({reason})"),
        }
    }
}

impl fmt::Display for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Output::Transmit(t) => write!(f, "<- {t}"),
            Output::Event(e) => write!(f, "== {e}"),
        }
    }
}
