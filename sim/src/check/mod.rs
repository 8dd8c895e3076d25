//! Invariant checkers, one module each, fed as the run goes.
//!
//! Each checker sees only what an outside observer could: frames on the wire, the server's
//! notices and effects, the store's contents, what each client hands its application. None
//! trusts the gateway's own bookkeeping for the property it checks, so a bug in that
//! bookkeeping cannot hide itself.

pub mod bad_token;
pub mod baseline;
pub mod blame;
pub mod connection_success;
pub mod dead_peer;
pub mod deadlines;
pub mod delivery;
pub mod handshake;
pub mod heartbeat;
pub mod liveness;
pub mod members;
pub mod message_frames;
pub mod per_user;
pub mod ping_pong;
pub mod presence;
pub mod presence_flaps;
pub mod presence_frames;
pub mod rate_window;
pub mod reconnect;
pub mod send_queue;
pub mod token_expiry;
pub mod wire;

use std::fmt;

use heartline_core::Instant;

/// A broken invariant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The checker's name.
    pub checker: &'static str,
    /// When it was found.
    pub at: Instant,
    /// The step it was found at.
    pub step: u64,
    /// What was wrong.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}] at {} (step {}): {}",
            self.checker, self.at, self.step, self.detail
        )
    }
}

/// Every checker's name, in report order.
pub const NAMES: [&str; 20] = [
    dead_peer::NAME,
    handshake::NAME,
    connection_success::NAME,
    heartbeat::NAME,
    per_user::NAME,
    ping_pong::NAME,
    rate_window::NAME,
    delivery::NAME,
    message_frames::NAME,
    send_queue::NAME,
    members::NAME,
    bad_token::NAME,
    token_expiry::NAME,
    reconnect::NAME,
    blame::NAME,
    presence_flaps::NAME,
    presence_frames::NAME,
    presence::NAME,
    baseline::NAME,
    liveness::NAME,
];

/// A finding before it gets its time and step.
pub type Finding = Result<(), (&'static str, String)>;

/// How a finding names a watched connection: a WebSocket by its link, a long-polling
/// session (watched as one, see `world/poll_watch.rs`) by its handshake's link.
pub fn watched_name(link: u64, polling: bool) -> String {
    if polling {
        format!("the polling session of http{link}")
    } else {
        format!("ws{link}")
    }
}
