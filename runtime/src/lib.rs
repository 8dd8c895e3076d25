//! Heartline's production runtime: real sockets, a real clock and an embedded store around
//! the sans-IO core.
//!
//! The core decides the protocol, session and chat rules; this crate does what needs an
//! operating system, and decides only what is about the machine: which connections to
//! accept ([`admission`]), WebSocket framing limits ([`frames`]) and how much a connection
//! may have queued for sending ([`outbox`]). Its shape:
//!
//! - [`server`]: [`server::start`] binds one port for HTTP and WebSocket and returns a
//!   handle; the binary and the end-to-end tests start the very same server.
//! - [`actor`]: the one task that owns the application ([`app::App`]: the core's
//!   `Gateway`, or the protocol suites' [`echo`] server), feeding it inputs and the store's
//!   results and carrying out its outputs.
//! - [`conn`], [`routes`], [`engineio`], [`websocket`], [`api`]: per-connection I/O tasks
//!   that decide nothing; [`frames`]: the WebSocket frames they read and write.
//! - [`storage`]: the store's own thread, with group commit, in front of [`store`].
//! - [`outbox`]: per-connection send queues bounded in bytes (the slow-consumer policy).
//! - [`admission`]: the bound on sockets and the per-IP rate of new clients.
//! - [`client`]: a Rust Socket.IO client over tokio-tungstenite, for tests and load;
//!   [`reconnecting`]: the client for applications, the core's reconnection logic driven
//!   over real sockets.

pub mod actor;
pub mod admission;
pub mod api;
pub mod app;
pub mod arriving;
pub mod client;
pub mod clock;
pub mod config;
pub mod conn;
pub mod context;
pub mod dev;
pub mod echo;
pub mod engineio;
pub mod error;
pub mod frames;
pub mod http;
pub mod log_pace;
pub mod metrics;
pub mod outbox;
pub mod query;
pub mod reconnecting;
pub mod routes;
pub mod server;
pub mod settings;
pub mod storage;
pub mod store;
pub mod websocket;

pub use config::Config;
pub use error::ServerError;
pub use server::{start, ServerHandle};
