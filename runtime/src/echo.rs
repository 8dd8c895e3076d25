//! The echo server the official Engine.IO v4 and Socket.IO v5 protocol suites expect, built
//! on the core's engine alone and served by the runtime's own plumbing.
//!
//! Why it exists: the suites are the protocol's reference tests, and they test a server
//! with handlers of their own (echo everything), not a chat gateway. Running them against
//! this application exercises exactly the code the gateway stands on: the engine's
//! transports, upgrade, heartbeat and Socket.IO layer in the core, and the runtime's HTTP,
//! WebSocket, outbox and admission code. Nothing here is chat.
//!
//! Two modes:
//!
//! - [`EchoMode::EngineIo`]: a plain Engine.IO server (Socket.IO layer off) on
//!   `/engine.io/` that sends every message back as it came, text as text and binary as
//!   binary.
//! - [`EchoMode::SocketIo`]: Socket.IO on `/socket.io/` with namespaces `/` and `/custom`.
//!   On every namespace connect it emits `auth` with the handshake's auth object (`{}` when
//!   none); on `/`, `message` is emitted back as `message-back` with the same arguments and
//!   `message-with-ack` is acknowledged with them, attachments included.

use std::collections::VecDeque;
use std::sync::Arc;

use heartline_core::codec::socket::{Packet, PacketType};
use heartline_core::engine::{self, Engine, EngineConfig, UsageError};
use heartline_core::gateway::{Input, Output};
use heartline_core::{Instant, Seed, SessionId};
use serde_json::{Map, Value};
use tokio::sync::mpsc;

use crate::app::App;
use crate::clock::Clock;
use crate::config::Config;
use crate::error::ServerError;
use crate::metrics::{self, RuntimeMetrics};
use crate::server::{self, Launch, ServerHandle};
use crate::settings;
use crate::storage::StoreQueue;

/// Which server the suites get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    /// Plain Engine.IO on `/engine.io/`.
    EngineIo,
    /// Socket.IO on `/socket.io/`, namespaces `/` and `/custom`.
    SocketIo,
}

impl EchoMode {
    /// The Engine.IO path this mode serves.
    pub fn path(self) -> &'static str {
        match self {
            EchoMode::EngineIo => "/engine.io/",
            EchoMode::SocketIo => "/socket.io/",
        }
    }
}

/// The namespaces of the Socket.IO mode.
pub const NAMESPACES: [&str; 2] = ["/", "/custom"];

/// The settings the suites were written against: pings every 300 ms answered within
/// 200 ms, a 1 MB payload limit, a 1 s connect timeout, any origin, a free `listen`.
pub fn suite_config(listen: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = listen.to_owned();
    c.server.cors_origins = vec!["*".to_owned()];
    c.server.handshake_timeout_ms = 1000;
    c.engine.ping_interval_ms = 300;
    c.engine.ping_timeout_ms = 200;
    c.engine.max_payload_bytes = 1_000_000;
    c.shutdown.drain_ms = 200;
    c
}

/// The engine's settings for `mode` under `config`.
pub fn engine_config(config: &Config, mode: EchoMode, seed: Seed) -> EngineConfig {
    EngineConfig {
        namespaces: NAMESPACES.iter().map(|n| (*n).to_owned()).collect(),
        socketio: mode == EchoMode::SocketIo,
        ..settings::engine_config(config, seed)
    }
}

/// Starts the echo server: binds `server.listen` and serves `mode` through the same
/// plumbing as the gateway (no store is opened).
pub async fn start(config: Config, mode: EchoMode) -> Result<ServerHandle, ServerError> {
    config.validate()?;
    config.log_warnings();
    let addr = config.listen_addr()?;
    let seed = settings::random_seed().map_err(|e| ServerError::System(e.to_string()))?;
    let app = EchoApp::new(engine_config(&config, mode, seed))?;
    let (listener, local_addr) = server::bind(addr).await?;
    // No store: the results channel's sender is dropped at once, so the actor never hears
    // from it.
    let (_, results) = mpsc::unbounded_channel();
    tracing::info!(addr = %local_addr, path = mode.path(), ?mode, "heartline-echo listening");
    Ok(server::launch(Launch {
        config,
        engine_path: mode.path().to_owned(),
        clock: Clock::start(),
        app,
        listener,
        local_addr,
        store: StoreQueue::detached(),
        store_thread: None,
        results,
        metrics: Arc::new(RuntimeMetrics::default()),
    }))
}

/// The echo application: the engine plus the suites' handlers.
#[derive(Debug)]
pub struct EchoApp {
    engine: Engine,
    out: VecDeque<Output>,
}

impl EchoApp {
    /// An echo server around a fresh engine.
    pub fn new(config: EngineConfig) -> Result<Self, engine::ConfigError> {
        Ok(EchoApp {
            engine: Engine::new(config)?,
            out: VecDeque::new(),
        })
    }

    /// Moves the engine's outputs into ours, answering its events as they come.
    fn pump(&mut self, now: Instant) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                engine::Output::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                engine::Output::Event(e) => {
                    if let Err(err) = self.on_event(now, e) {
                        // Only a session that ended in between; nothing to answer.
                        tracing::debug!(error = %err, "echo to a gone session");
                    }
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, event: engine::Event) -> Result<(), UsageError> {
        match event {
            engine::Event::Message { session, data } => {
                self.engine.send_message(now, session, data)
            }
            engine::Event::Connect { session, nsp, auth } => {
                self.engine.accept_connect(now, session, &nsp)?;
                let auth = auth.unwrap_or_else(|| Value::Object(Map::new()));
                let event = Packet::event(nsp, None, Value::Array(vec!["auth".into(), auth]));
                self.engine.send_packet(now, session, &event)
            }
            engine::Event::Packet { session, packet } => self.on_packet(now, session, packet),
            engine::Event::Opened { .. }
            | engine::Event::Disconnected { .. }
            | engine::Event::Upgraded { .. }
            | engine::Event::Closed { .. } => Ok(()),
        }
    }

    fn on_packet(
        &mut self,
        now: Instant,
        session: SessionId,
        packet: Packet,
    ) -> Result<(), UsageError> {
        if packet.nsp != "/" {
            return Ok(());
        }
        match packet.event_name() {
            Some("message") => {
                let reply = echo_back(&packet);
                self.engine.send_packet(now, session, &reply)
            }
            Some("message-with-ack") => match ack_with_args(&packet) {
                Some(reply) => self.engine.send_packet(now, session, &reply),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}

/// `message` → `message-back` with the same arguments and attachments.
fn echo_back(packet: &Packet) -> Packet {
    let mut data = vec![Value::from("message-back")];
    data.extend(packet.args().iter().cloned());
    Packet {
        kind: packet.kind,
        nsp: packet.nsp.clone(),
        id: None,
        data: Some(Value::Array(data)),
        attachments: packet.attachments.clone(),
    }
}

/// The ACK of an event, with the event's arguments and attachments; `None` when the event
/// asked for no ack.
fn ack_with_args(packet: &Packet) -> Option<Packet> {
    let id = packet.id?;
    let data = Value::Array(packet.args().to_vec());
    Some(if packet.kind == PacketType::BinaryEvent {
        Packet::binary_ack(packet.nsp.clone(), id, data, packet.attachments.clone())
    } else {
        Packet::ack(packet.nsp.clone(), id, data)
    })
}

impl App for EchoApp {
    fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError> {
        let result = match input {
            Input::Network(i) => self.engine.handle_input(now, i),
            // Storage answers, conversations and wall-clock times are the gateway's; the
            // echo has none.
            Input::Appended { .. }
            | Input::Read { .. }
            | Input::Found { .. }
            | Input::ConversationPut { .. }
            | Input::SendsRestored { .. }
            | Input::WallClock { .. } => Ok(()),
        };
        self.pump(now);
        result
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.engine.handle_timeout(now);
        self.pump(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.engine.poll_timeout()
    }

    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn shutdown_some(&mut self, now: Instant, max: usize) -> usize {
        for id in self.engine.live_sessions(max) {
            let _ = self
                .engine
                .close(now, id, engine::CloseReason::ServerShutdown);
        }
        self.pump(now);
        self.engine.session_count()
    }

    fn knows_sid(&self, sid: &str) -> bool {
        self.engine.knows_sid(sid)
    }

    fn session_count(&self) -> usize {
        self.engine.session_count()
    }

    fn sessions_held(&self) -> usize {
        self.engine.sessions_held()
    }

    fn sessions_owing(&self) -> usize {
        self.engine.sessions_owing()
    }

    fn render_metrics(&self, rt: &RuntimeMetrics, draining: bool, _now: Instant) -> String {
        metrics::render_engine(&self.engine, rt, draining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;

    #[test]
    fn message_comes_back_renamed_with_its_attachments() {
        let p = Packet::binary_event(
            "/",
            Some(7),
            json!(["message", Packet::placeholder(0), 1]),
            vec![Bytes::from_static(&[1, 2, 3])],
        );
        let back = echo_back(&p);
        assert_eq!(back.kind, PacketType::BinaryEvent);
        assert_eq!(back.id, None);
        assert_eq!(
            back.data,
            Some(json!(["message-back", Packet::placeholder(0), 1]))
        );
        assert_eq!(back.attachments, p.attachments);
    }

    #[test]
    fn ack_carries_the_arguments_and_keeps_binary() {
        let text = Packet::event("/", Some(456), json!(["message-with-ack", 1, "2"]));
        let ack = ack_with_args(&text).expect("ack");
        assert_eq!(ack.encode_text(), r#"3456[1,"2"]"#);
        let bin = Packet::binary_event(
            "/",
            Some(789),
            json!(["message-with-ack", Packet::placeholder(0)]),
            vec![Bytes::from_static(&[4, 5, 6])],
        );
        let ack = ack_with_args(&bin).expect("ack");
        assert_eq!(ack.kind, PacketType::BinaryAck);
        assert_eq!(
            ack.encode_text(),
            r#"61-789[{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(ack.attachments, bin.attachments);
        assert!(ack_with_args(&Packet::event("/", None, json!(["message-with-ack"]))).is_none());
    }
}
