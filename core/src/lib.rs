//! Heartline's sans-IO core.
//!
//! Every protocol, session and chat rule Heartline keeps is decided here, as pure state
//! transitions: the Engine.IO v4 / Socket.IO v5 codecs ([`codec`]), sessions, their
//! transports, heartbeats and timeouts ([`engine`]), authentication, replacement,
//! presence, rate limits and conversations ([`gateway`]), and the client's reconnection
//! and catch-up ([`client`]). What needs the operating system stays with the driver: which
//! TCP connections to accept, WebSocket framing limits, and how much a connection may have
//! queued for sending. There is no clock, no socket, no thread and no global random
//! generator in this crate. Time is a value passed in, randomness comes from a generator
//! seeded by configuration, and I/O is something the core asks its driver to do. The same
//! inputs give the same outputs, always: that is what lets the simulator prove the rules
//! under network faults, and the production runtime run the very same code.
//!
//! The driver's loop, for every state machine here:
//!
//! 1. hand over what happened: `handle_input(now, input)` (the client takes its inputs as
//!    `handle_opened`, `handle_frame`, `handle_closed` and commands), or
//!    `handle_timeout(now)` once the deadline from `poll_timeout()` has come;
//! 2. drain `poll_output()` until it returns `None`, doing what each output says;
//! 3. wait for the next input or for `poll_timeout()`, whichever comes first.

#![warn(missing_docs, unreachable_pub)]

pub mod client;
pub mod codec;
pub mod engine;
pub mod gateway;
pub mod ids;
pub mod time;
pub mod timer;

pub use ids::{Id20, RequestId, Rng, Seed, SessionId, TransportId};
pub use time::Instant;
