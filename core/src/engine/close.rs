//! Why a session ended, and what the caller did wrong.
//!
//! Peer misbehaviour and network failure are never errors returned to the caller: they end
//! the session and surface as [`crate::engine::Event::Closed`] with a [`CloseReason`], the
//! way a real peer would observe them. [`UsageError`] is reserved for the driver's own
//! mistakes, such as naming a session that does not exist.

use thiserror::Error;

use crate::ids::{RequestId, SessionId, TransportId};

/// Every way a session can end.
#[derive(Clone, Debug, Error, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client closed the session (Engine.IO CLOSE packet).
    #[error("client close")]
    ClientClose,
    /// The transport under the session closed (the peer went away).
    #[error("transport close")]
    TransportClose,
    /// The transport under the session failed (reset, aborted request, I/O error).
    #[error("transport error")]
    TransportError,
    /// A PING went unanswered for `ping_timeout_ms`.
    #[error("ping timeout")]
    PingTimeout,
    /// No namespace was connected within `handshake_timeout_ms` of TCP accept.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// A message larger than `max_payload_bytes`.
    #[error("payload too large")]
    PayloadTooLarge,
    /// The client broke the protocol.
    #[error("protocol error: {0}")]
    ProtocolError(String),
    /// The client does not fetch what is sent to it fast enough.
    #[error("slow consumer")]
    SlowConsumer,
    /// A newer connection of the same user displaced this one.
    #[error("replaced")]
    Replaced,
    /// The server is shutting down.
    #[error("server shutdown")]
    ServerShutdown,
    /// The server holds `max_sessions` already; the handshake was refused.
    #[error("too many sessions")]
    TooManySessions,
    /// The application disconnected the client (Socket.IO DISCONNECT sent).
    #[error("server disconnect: {0}")]
    ServerDisconnect(String),
    /// The application closed the transport without a DISCONNECT, so the client comes back.
    #[error("server close: {0}")]
    ServerClose(String),
}

impl CloseReason {
    /// Every [`CloseReason::label`], so that a metric by reason can show each at 0 before
    /// its first close (a series that appears at 1 hides that first step from `rate()`).
    pub const LABELS: [&'static str; 13] = [
        "client_close",
        "transport_close",
        "transport_error",
        "ping_timeout",
        "handshake_timeout",
        "payload_too_large",
        "protocol_error",
        "slow_consumer",
        "replaced",
        "server_shutdown",
        "too_many_sessions",
        "server_disconnect",
        "server_close",
    ];

    /// A short stable label, for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client_close",
            CloseReason::TransportClose => "transport_close",
            CloseReason::TransportError => "transport_error",
            CloseReason::PingTimeout => "ping_timeout",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::PayloadTooLarge => "payload_too_large",
            CloseReason::ProtocolError(_) => "protocol_error",
            CloseReason::SlowConsumer => "slow_consumer",
            CloseReason::Replaced => "replaced",
            CloseReason::ServerShutdown => "server_shutdown",
            CloseReason::TooManySessions => "too_many_sessions",
            CloseReason::ServerDisconnect(_) => "server_disconnect",
            CloseReason::ServerClose(_) => "server_close",
        }
    }

    /// The reason text of the WebSocket close frame: the label in words, as Engine.IO
    /// names its reasons (`ping timeout`, `transport close`). `socket.io-client` reads
    /// none of it; a raw client or a proxy's log may.
    pub fn ws_reason(&self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client close",
            CloseReason::TransportClose => "transport close",
            CloseReason::TransportError => "transport error",
            CloseReason::PingTimeout => "ping timeout",
            CloseReason::HandshakeTimeout => "handshake timeout",
            CloseReason::PayloadTooLarge => "payload too large",
            CloseReason::ProtocolError(_) => "protocol error",
            CloseReason::SlowConsumer => "slow consumer",
            CloseReason::Replaced => "replaced",
            CloseReason::ServerShutdown => "server shutting down",
            CloseReason::TooManySessions => "too many sessions",
            CloseReason::ServerDisconnect(_) => "server disconnect",
            CloseReason::ServerClose(_) => "server close",
        }
    }

    /// The WebSocket close code that goes with the reason.
    pub fn ws_code(&self) -> u16 {
        match self {
            CloseReason::PayloadTooLarge => 1009,
            CloseReason::ProtocolError(_) => 1002,
            CloseReason::ServerShutdown => 1001,
            CloseReason::TooManySessions => 1013,
            CloseReason::SlowConsumer | CloseReason::HandshakeTimeout => 1008,
            _ => 1000,
        }
    }
}

/// The driver misused the engine. Nothing was changed.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsageError {
    /// The session does not exist (never did, or has closed).
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The namespace is not in the state the call needs.
    #[error("session {0}: namespace {1} is not awaiting that call")]
    NamespaceState(SessionId, String),
    /// A transport id that is already live was announced again.
    #[error("transport {0} is already open")]
    DuplicateTransport(TransportId),
    /// A transport id the engine does not know.
    #[error("unknown transport {0}")]
    UnknownTransport(TransportId),
    /// A request id that is already in flight was announced again.
    #[error("request {0} is already in flight")]
    DuplicateRequest(RequestId),
}
