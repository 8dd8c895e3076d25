//! The engine's settings: the Engine.IO and Socket.IO knobs of Heartline's configuration.

use thiserror::Error;

use crate::ids::Seed;

/// Which Engine.IO transports a server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transports {
    /// Direct WebSocket sessions and upgrades from polling.
    pub websocket: bool,
    /// HTTP long-polling sessions.
    pub polling: bool,
}

/// Settings of the Engine.IO / Socket.IO layers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineConfig {
    /// The server sends a PING this long after the session opened or the last PONG.
    pub ping_interval_ms: u64,
    /// A PING not answered within this long closes the session (`ping timeout`).
    pub ping_timeout_ms: u64,
    /// A probe WebSocket that has not completed the upgrade within this long is closed;
    /// the session carries on polling.
    pub upgrade_timeout_ms: u64,
    /// From TCP accept to a connected namespace; a session that gets no further is closed.
    pub handshake_timeout_ms: u64,
    /// Largest message accepted: a WebSocket frame or a polling POST body, in bytes.
    pub max_payload_bytes: u64,
    /// Bytes a polling session may hold for a client that does not come to fetch them: a
    /// packet is queued while it holds less (a high-water mark), and one that meets the
    /// queue at or past it closes the session as a slow consumer.
    pub max_buffered_bytes: u64,
    /// Sessions held at once. A handshake past it is refused: a polling one with HTTP 503,
    /// a WebSocket one closed with 1013 (try again later). One kept-alive HTTP connection
    /// can open any number of polling sessions, so a cap on TCP connections alone does not
    /// bound the sessions, nor the memory they hold.
    pub max_sessions: u64,
    /// Transports offered.
    pub transports: Transports,
    /// Namespaces clients may connect; any other gets CONNECT_ERROR "Invalid namespace".
    pub namespaces: Vec<String>,
    /// Most binary attachments one Socket.IO packet may announce. Together they may hold at
    /// most `max_payload_bytes`, so that a packet waiting for its last attachment holds no
    /// more than one message would.
    pub max_attachments: usize,
    /// Seed of the generator behind session and socket ids: a [`Seed::Key`] from the
    /// operating system on a server, a number in a simulation.
    pub seed: Seed,
    /// Run the Socket.IO layer on top of Engine.IO (namespaces, packets, the handshake
    /// deadline). Off, the engine hands raw Engine.IO messages to the application as
    /// [`crate::engine::Event::Message`]: a plain Engine.IO server.
    pub socketio: bool,
    /// Test-only: deliberate bugs for the simulator's mutation tests. All off by default.
    #[cfg(feature = "mutations")]
    pub mutations: Mutations,
}

/// Test-only (feature `mutations`): deliberate bugs, each switched on at run time, so the
/// simulator's tests can prove that its invariant checkers notice them. Never enabled in a
/// build that serves traffic.
#[cfg(feature = "mutations")]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mutations {
    /// The gateway acknowledges a send before the store has committed it.
    pub ack_before_persist: bool,
    /// The gateway's rate limit counts sends in fixed buckets instead of a sliding window.
    pub fixed_window_limiter: bool,
    /// A displaced connection's close unregisters the connection that replaced it.
    pub close_unregisters_successor: bool,
    /// The client reconnects after `connection:replaced`.
    pub reconnect_after_replaced: bool,
    /// The client never gives up on a server that has gone silent (no PING deadline).
    pub client_trusts_silence: bool,
    /// The client sends a refused (`rate_limited`) send again at once, not after
    /// `retryAfterMs`.
    pub retry_refused_at_once: bool,
    /// The client reconnects a millisecond after losing its connection, with no backoff.
    pub reconnect_at_once: bool,
    /// The engine never closes a session whose PING went unanswered.
    pub no_ping_timeout: bool,
    /// The gateway lets any user join and read any conversation (sends still checked).
    pub any_user_may_read: bool,
    /// The gateway takes a token whose `exp` has passed.
    pub expired_tokens_accepted: bool,
    /// The gateway announces a user offline as soon as its last connection ends.
    pub no_offline_grace: bool,
    /// The gateway arms the offline timer at 1,000 times `offline_grace_ms` (the grace,
    /// already in milliseconds, taken for seconds).
    pub offline_grace_in_seconds: bool,
    /// The gateway tells every connected user of a presence change, not only its partners.
    pub presence_to_everyone: bool,
    /// The gateway records a user's going offline but sends no `user:offline` frame.
    pub offline_frames_lost: bool,
    /// The gateway sends `auth:expired` but never closes the connection after the grace.
    pub expired_connections_kept: bool,
    /// An accepted `auth:refresh` moves the expiry but leaves the grace's close armed.
    pub refresh_keeps_grace: bool,
    /// The engine never closes a session that connected no namespace in time.
    pub no_handshake_timeout: bool,
    /// The engine arms no handshake deadline when a session's last namespace disconnects:
    /// a client that leaves and keeps answering PINGs holds its session for good.
    pub handshake_not_rearmed: bool,
    /// The gateway takes an `auth:refresh` token of any user, not only the connection's.
    pub refresh_any_user: bool,
    /// The gateway sends a connection one `heartbeat` and never re-arms its timer.
    pub heartbeat_not_rearmed: bool,
    /// The gateway sends no `connection:success` (the welcome lost in a rewrite of the
    /// connect handler); the client counts itself connected on the CONNECT answer alone.
    pub success_not_sent: bool,
    /// The gateway takes HS384 and HS512 tokens signed with its secret, not HS256 only.
    pub any_hmac_accepted: bool,
    /// The gateway forgets a displaced connection without disconnecting it (a map of
    /// one socket per user overwritten, the old socket left open).
    pub replaced_left_connected: bool,
    /// The gateway closes a displaced connection's transport without a Socket.IO
    /// DISCONNECT (`socket.conn.close()` where `socket.disconnect(true)` was meant).
    pub replaced_closed_not_disconnected: bool,
    /// The engine leaves a PING's deadline armed when its PONG comes (a forgotten
    /// `clearTimeout`), so answered connections are closed as dead.
    pub pong_leaves_deadline_armed: bool,
    /// The gateway tells each partner's newest connection of a presence change, not all
    /// of them (one socket remembered per user, a common hand-rolled design).
    pub presence_to_one_device: bool,
    /// The gateway sends `message:new` to the room except the sender's own connection
    /// (Socket.IO's `socket.to(room)` where `io.to(room)` was meant).
    pub fan_out_skips_sender: bool,
    /// A full send queue makes room by shedding whatever it holds (messages and acks
    /// too), not only droppable frames. Set for the thread that creates the engine
    /// ([`super::send_queue::mutate_sheds_anything`]), where its queues are pushed to.
    pub queue_sheds_anything: bool,
    /// A member list replaced over the API leaves the removed users' connections in the
    /// conversation's room (the member table updated, no `socket.leave`).
    pub removed_members_stay_in_room: bool,
    /// Over `per_user`, the gateway displaces the connection before the newest, not the
    /// oldest (the "previous socket" a hand-rolled registry remembers).
    pub displaces_the_previous: bool,
    /// The gateway answers a join with `lastSeq` and no `missed` messages (the client is
    /// left to read the history itself).
    pub join_misses_nothing: bool,
    /// The gateway closes the sender's transport when the store fails its send (an
    /// error handler that drops the socket).
    pub store_failure_closes: bool,
    /// The gateway keeps presence (online flags, grace timers) and never announces it
    /// (the broadcast forgotten).
    pub presence_never_announced: bool,
    /// The engine answers a held polling GET with the first packet queued and drops the
    /// rest with it (a buffer cleared after one packet was written).
    pub poll_answers_first_only: bool,
    /// The engine answers a polling GET with a closed session's last packets and its CLOSE
    /// together (the client closes the transport on the CLOSE before it reads the rest).
    pub close_with_last_packets: bool,
}

impl Default for EngineConfig {
    /// Heartline's defaults (see the configuration reference in the README).
    fn default() -> Self {
        EngineConfig {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 60_000,
            upgrade_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            max_payload_bytes: 1_000_000,
            max_buffered_bytes: 1_048_576,
            max_sessions: 100_000,
            transports: Transports {
                websocket: true,
                polling: true,
            },
            namespaces: vec!["/chat".to_owned()],
            max_attachments: 10,
            seed: Seed::default(),
            socketio: true,
            #[cfg(feature = "mutations")]
            mutations: Mutations::default(),
        }
    }
}

/// A setting the engine cannot run with.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration or size that must be positive is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// No transport is enabled.
    #[error("at least one transport must be enabled")]
    NoTransport,
    /// A namespace does not start with '/'.
    #[error("namespace {0:?} must start with '/'")]
    BadNamespace(String),
}

impl EngineConfig {
    /// Checks the settings; the engine refuses to start with any of these wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, value) in [
            ("ping_interval_ms", self.ping_interval_ms),
            ("ping_timeout_ms", self.ping_timeout_ms),
            ("upgrade_timeout_ms", self.upgrade_timeout_ms),
            ("handshake_timeout_ms", self.handshake_timeout_ms),
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_buffered_bytes", self.max_buffered_bytes),
            ("max_sessions", self.max_sessions),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if !self.transports.websocket && !self.transports.polling {
            return Err(ConfigError::NoTransport);
        }
        if let Some(bad) = self.namespaces.iter().find(|n| !n.starts_with('/')) {
            return Err(ConfigError::BadNamespace(bad.clone()));
        }
        Ok(())
    }
}
