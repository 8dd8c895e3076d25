//! The Engine.IO v4 / Socket.IO v5 server as a pure state machine.
//!
//! [`Engine`] owns every session: their transports (WebSocket, HTTP long-polling, the
//! upgrade from one to the other), their heartbeats and deadlines, and the Socket.IO
//! namespaces on them. It knows nothing of users, rooms or messages: the application above
//! (Heartline's gateway, or the protocol suites' echo server) answers namespace connects
//! and sends packets through the commands below. That split is what lets the same engine
//! serve both, and what lets the simulator drive the exact code the server runs.
//!
//! # The loop
//!
//! Methods fall into four kinds, after quinn-proto:
//!
//! - getters (`&self`): [`Engine::session_count`], [`Engine::sid`], ...
//! - inputs: [`Engine::handle_input`] for what the network did, [`Engine::handle_timeout`]
//!   when the deadline from [`Engine::poll_timeout`] has come;
//! - commands from the application: [`Engine::accept_connect`], [`Engine::refuse_connect`],
//!   [`Engine::send`], [`Engine::disconnect`], [`Engine::close`];
//! - [`Engine::poll_output`], drained after every input or command until it returns `None`.
//!
//! After draining, the driver sleeps until [`Engine::poll_timeout`] (or the next input) and
//! calls [`Engine::handle_timeout`]. Time is always passed in; it never goes backwards (a late
//! `now` is treated as the latest one seen).
//!
//! # Rules
//!
//! - The server PINGs `ping_interval_ms` after the session opened and after each PONG; a PING
//!   unanswered for `ping_timeout_ms` closes the session. Other traffic is not liveness. A
//!   silent peer is therefore closed by `last_pong + ping_interval + ping_timeout`.
//! - A session with no connected namespace `handshake_timeout_ms` after its TCP accept is
//!   closed.
//! - A message over `max_payload_bytes` closes that WebSocket session, or gets HTTP 413 on
//!   polling; nothing else is affected.
//! - Peer misbehaviour never returns an error: the session ends with a [`CloseReason`] and an
//!   [`Event::Closed`]. Errors ([`UsageError`]) mean the driver or the application misused
//!   the engine.

mod close;
mod config;
mod io;
mod polling;
pub mod send_queue;
mod session;
mod websocket;

use std::collections::{BTreeMap, HashMap, VecDeque};

use bytes::Bytes;
use serde_json::Value;

pub use close::{CloseReason, UsageError};
#[cfg(feature = "mutations")]
pub use config::Mutations;
pub use config::{ConfigError, EngineConfig, Transports};
pub use io::{ContentType, Event, Handshake, Input, Method, Output, Query, Transmit};
pub use send_queue::SendQueue;
pub use session::Timer;

use crate::codec::engine::{Data, Handshake as OpenPacket, Packet as EioPacket};
use crate::codec::socket::{Decoder, Packet as SioPacket, PacketType};
use crate::codec::Frame;
use crate::ids::{Id20, RequestId, Rng, SessionId, TransportId};
use crate::time::{Clock, Instant};
use crate::timer::TimerQueue;
use session::{Ending, Namespace, Namespaces, Session, Transport};

/// Packets that change nothing (a NOOP, a PONG to no PING, a DISCONNECT from a namespace
/// not connected, a CONNECT to one that does not exist or that was refused) a session may
/// send between two PINGs; one more ends it as a protocol error. An honest client sends a
/// few at most.
pub const MAX_IDLE_PACKETS: u16 = 100;

/// The Engine.IO / Socket.IO server state machine. See the module docs for the loop.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    clock: Clock,
    rng: Rng,
    next_session: u64,
    // Boxed: a B-tree node holds eleven entries and is about half full when keys only
    // grow, so inline sessions would leave most of each node's memory unused.
    sessions: BTreeMap<SessionId, Box<Session>>,
    /// Sessions in `sessions` not yet closed, kept as they open and close so that
    /// [`Engine::session_count`] (asked by every `/metrics` request) is not a walk over
    /// every session on the thread that serves them all.
    live_count: usize,
    // Lookup-only indexes; never iterated, so their order cannot leak into outputs.
    by_sid: HashMap<Id20, SessionId>,
    by_transport: HashMap<TransportId, SessionId>,
    by_request: HashMap<RequestId, SessionId>,
    timers: TimerQueue<SessionId, Timer>,
    out: VecDeque<Output>,
    /// Handshakes refused because `max_sessions` were held.
    refused_sessions: u64,
    /// Droppable frames shed from polling buffers that were full.
    shed: u64,
    /// Polling sessions ended because their buffer overflowed (`SlowConsumer`).
    polling_overflows: u64,
}

impl Engine {
    /// An engine with no sessions.
    pub fn new(config: EngineConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        // MUTATION (test-only): the send queues of this thread shed anything when full.
        #[cfg(feature = "mutations")]
        send_queue::mutate_sheds_anything(config.mutations.queue_sheds_anything);
        Ok(Engine {
            rng: Rng::seeded(config.seed),
            config,
            clock: Clock::default(),
            next_session: 1,
            sessions: BTreeMap::new(),
            live_count: 0,
            by_sid: HashMap::new(),
            by_transport: HashMap::new(),
            by_request: HashMap::new(),
            timers: TimerQueue::default(),
            out: VecDeque::new(),
            refused_sessions: 0,
            shed: 0,
            polling_overflows: 0,
        })
    }

    // ---- getters -------------------------------------------------------------------------

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Live sessions (lingering closed ones excluded).
    pub fn session_count(&self) -> usize {
        self.live_count
    }

    /// Live sessions, counted by walking every session: what [`Engine::session_count`]
    /// must always equal. For tests.
    pub fn recount_live(&self) -> usize {
        self.sessions.values().filter(|s| !s.closed).count()
    }

    /// Sessions held in memory, lingering ones included.
    pub fn sessions_held(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions held that a client has still to hear from: live ones, and closed ones
    /// keeping their last packets and CLOSE for the client's next GET. Not those its
    /// client ended with its own CLOSE, which keep only a NOOP for a GET that may be on
    /// its way and tell nothing. What a server shutting down waits for.
    pub fn sessions_owing(&self) -> usize {
        let released = |s: &Session| {
            s.closed
                && matches!(&s.transport, Transport::Polling(p)
                    if p.queue.len() == 1 && p.queue.last() == Some(&EioPacket::Noop.to_frame()))
        };
        self.sessions.values().filter(|s| !released(s)).count()
    }

    /// Handshakes refused so far because `max_sessions` sessions were held.
    pub fn sessions_refused(&self) -> u64 {
        self.refused_sessions
    }

    /// Droppable frames shed so far from polling buffers that were full.
    pub fn frames_shed(&self) -> u64 {
        self.shed
    }

    /// Polling sessions ended so far because their buffer was still full after shedding
    /// (a WebSocket's send queue is the driver's, which counts its own).
    pub fn polling_overflows(&self) -> u64 {
        self.polling_overflows
    }

    /// Armed deadlines, all sessions together.
    pub fn timers_armed(&self) -> usize {
        self.timers.len()
    }

    /// The public id of a live session.
    pub fn sid(&self, session: SessionId) -> Option<&str> {
        self.live(session).map(|s| s.sid.as_str())
    }

    /// Whether `sid` names a session the engine holds, live or lingering for its client's
    /// last fetch: what a driver asks before it answers a WebSocket upgrade naming a
    /// `sid` with 101, so that a made-up or expired one gets the 400 a polling request
    /// naming it gets.
    pub fn knows_sid(&self, sid: &str) -> bool {
        self.session_by_sid(sid).is_some()
    }

    /// The live session `sid` names, if any (not one lingering for its client's last
    /// fetch).
    pub fn live_session(&self, sid: &str) -> Option<SessionId> {
        self.session_by_sid(sid)
            .filter(|id| self.live(*id).is_some())
    }

    /// The handshake facts of a live session.
    pub fn handshake(&self, session: SessionId) -> Option<&Handshake> {
        self.live(session).map(|s| &s.handshake)
    }

    /// The socket id of a connected namespace.
    pub fn socket_id(&self, session: SessionId, nsp: &str) -> Option<&str> {
        match self.live(session)?.namespaces.get(nsp)? {
            Namespace::Connected(id) => Some(id.as_str()),
            Namespace::Pending => None,
        }
    }

    /// Whether a live session is on a WebSocket.
    pub fn is_websocket(&self, session: SessionId) -> Option<bool> {
        self.live(session)
            .map(|s| matches!(s.transport, Transport::WebSocket(_)))
    }

    /// A deadline of a session, for tests and diagnostics.
    pub fn deadline(&self, session: SessionId, timer: Timer) -> Option<Instant> {
        self.sessions.get(&session)?.timers.get(timer)
    }

    /// Up to `max` live sessions, oldest first.
    pub fn live_sessions(&self, max: usize) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| !s.closed)
            .map(|(id, _)| *id)
            .take(max)
            .collect()
    }

    fn live(&self, session: SessionId) -> Option<&Session> {
        self.sessions
            .get(&session)
            .map(|s| &**s)
            .filter(|s| !s.closed)
    }

    // ---- outputs -------------------------------------------------------------------------

    /// The next thing for the driver to do, in order. Drain until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline; call [`Engine::handle_timeout`] then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next().map(|(at, _, _)| at)
    }

    /// Which session and timer [`Engine::poll_timeout`] is for.
    pub fn timeout_reason(&self) -> Option<(SessionId, Timer)> {
        self.timers.next().map(|(_, s, t)| (s, t))
    }

    fn transmit(&mut self, t: Transmit) {
        self.out.push_back(Output::Transmit(t));
    }

    fn event(&mut self, e: Event) {
        self.out.push_back(Output::Event(e));
    }

    // ---- inputs --------------------------------------------------------------------------

    /// Feeds what the network did.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError> {
        let now = self.clock.observe(now);
        match input {
            Input::WsOpened {
                transport,
                query,
                handshake,
            } => self.on_ws_opened(now, transport, query, handshake),
            Input::WsFrame { transport, frame } => {
                self.on_ws_frame(now, transport, frame);
                Ok(())
            }
            Input::WsClosing { transport } => {
                self.on_ws_closing(transport);
                Ok(())
            }
            Input::WsClosed { transport, error } => {
                let reason = if error {
                    CloseReason::TransportError
                } else {
                    CloseReason::TransportClose
                };
                self.on_ws_closed(transport, reason);
                Ok(())
            }
            Input::WsAborted { transport, reason } => {
                self.on_ws_closed(transport, reason);
                Ok(())
            }
            Input::Http {
                request,
                method,
                query,
                body,
                handshake,
            } => self.on_http(now, request, method, query, body, handshake),
            Input::HttpPostOverlap { request, query } => self.on_post_overlap(now, request, &query),
            Input::HttpAborted { request } => {
                self.on_http_aborted(now, request);
                Ok(())
            }
        }
    }

    /// Fires every deadline due at `now`, in deadline order.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.handle_due(now, now);
    }

    /// Fires, in deadline order, the deadlines due at `until` (at most `now`), each acting
    /// at `now`: a driver that interleaves these deadlines with others of its own (the
    /// gateway's) fires each set up to the other's next, and what they arm counts from
    /// `now` even when it woke late.
    pub fn handle_due(&mut self, now: Instant, until: Instant) {
        let now = self.clock.observe(now);
        let until = until.min(now);
        while let Some((_, id, timer)) = self.timers.pop_due(until) {
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            TimerQueue::<SessionId, Timer>::fired(&mut s.timers, timer);
            match timer {
                Timer::Handshake => {
                    // MUTATION (test-only): a session that never connects stays.
                    #[cfg(feature = "mutations")]
                    if self.config.mutations.no_handshake_timeout {
                        continue;
                    }
                    if !s.has_connected_namespace() {
                        self.end(now, id, CloseReason::HandshakeTimeout, Ending::Abort);
                    }
                }
                Timer::PingSend => {
                    self.push(now, id, &[Frame::Text(Bytes::from_static(b"2"))]);
                    // The push may have ended the session (a polling buffer full of what
                    // cannot be shed): no PONG is awaited then.
                    if let Some(s) = self.sessions.get_mut(&id).filter(|s| !s.closed) {
                        s.idle_packets = 0;
                        let at = now.add_ms(self.config.ping_timeout_ms);
                        self.timers.set(&mut s.timers, id, Timer::PongDeadline, at);
                    }
                }
                Timer::PongDeadline => {
                    // MUTATION (test-only): an unanswered PING is forgiven.
                    #[cfg(feature = "mutations")]
                    if self.config.mutations.no_ping_timeout {
                        continue;
                    }
                    self.end(now, id, CloseReason::PingTimeout, Ending::Abort)
                }
                Timer::Upgrade => self.on_upgrade_timer(now, id),
                Timer::Linger => self.remove(id),
            }
        }
    }

    // ---- commands ------------------------------------------------------------------------

    /// Accepts a pending namespace connect: replies CONNECT with a fresh socket id, which it
    /// returns. The handshake deadline no longer applies.
    pub fn accept_connect(
        &mut self,
        now: Instant,
        session: SessionId,
        nsp: &str,
    ) -> Result<String, UsageError> {
        let socket_id = self.rng.id20();
        let s = self
            .sessions
            .get_mut(&session)
            .map(|s| &mut **s)
            .filter(|s| !s.closed)
            .ok_or(UsageError::UnknownSession(session))?;
        match s.namespaces.get_mut(nsp) {
            Some(ns @ Namespace::Pending) => *ns = Namespace::Connected(socket_id),
            _ => return Err(UsageError::NamespaceState(session, nsp.to_owned())),
        }
        self.timers.stop(&mut s.timers, session, Timer::Handshake);
        let mut data = serde_json::Map::new();
        data.insert("sid".into(), Value::String(socket_id.to_string()));
        let reply = SioPacket {
            kind: PacketType::Connect,
            nsp: nsp.to_owned(),
            id: None,
            data: Some(Value::Object(data)),
            attachments: vec![],
        };
        self.push_sio(now, session, &reply);
        Ok(socket_id.to_string())
    }

    /// Refuses a pending namespace connect with CONNECT_ERROR carrying `data` (for example
    /// `{"message":"Authentication required"}`). The client does not retry it.
    pub fn refuse_connect(
        &mut self,
        now: Instant,
        session: SessionId,
        nsp: &str,
        data: Value,
    ) -> Result<(), UsageError> {
        let s = self.live_mut(session)?;
        match s.namespaces.get(nsp) {
            Some(Namespace::Pending) => {
                s.namespaces.remove(nsp);
            }
            _ => return Err(UsageError::NamespaceState(session, nsp.to_owned())),
        }
        let reply = SioPacket {
            kind: PacketType::ConnectError,
            nsp: nsp.to_owned(),
            id: None,
            data: Some(data),
            attachments: vec![],
        };
        self.push_sio(now, session, &reply);
        // A refused CONNECT leaves the session as it was, and the client may try again (a
        // fresh token, say): counted as a packet that changed nothing, so that a client
        // looping on refused CONNECTs (a token check and a refusal each) is ended.
        self.idle_packet(now, session);
        Ok(())
    }

    /// Sends already-encoded Engine.IO frames (a Socket.IO packet and its attachments, as
    /// [`SioPacket::encode`] makes them). Encode once, send to many: frames share their bytes.
    pub fn send(
        &mut self,
        now: Instant,
        session: SessionId,
        frames: &[Frame],
    ) -> Result<(), UsageError> {
        let now = self.clock.observe(now);
        self.live_mut(session)?;
        self.push(now, session, frames);
        Ok(())
    }

    /// Sends one raw Engine.IO message (for a plain Engine.IO application).
    pub fn send_message(
        &mut self,
        now: Instant,
        session: SessionId,
        data: Data,
    ) -> Result<(), UsageError> {
        self.send(now, session, &[EioPacket::Message(data).to_frame()])
    }

    /// Encodes and sends one Socket.IO packet.
    pub fn send_packet(
        &mut self,
        now: Instant,
        session: SessionId,
        packet: &SioPacket,
    ) -> Result<(), UsageError> {
        self.send(now, session, &packet.encode())
    }

    /// Ends the session the way that tells `socket.io-client` to stay away: a Socket.IO
    /// DISCONNECT on every connected namespace, then the transport closes once the client
    /// has had them (reason `io server disconnect` on the client; it does not reconnect).
    pub fn disconnect(
        &mut self,
        now: Instant,
        session: SessionId,
        reason: CloseReason,
    ) -> Result<(), UsageError> {
        let s = self.live_mut(session)?;
        let connected: Vec<String> = s
            .namespaces
            .iter()
            .filter(|(_, n)| matches!(n, Namespace::Connected(_)))
            .map(|(name, _)| name.clone())
            .collect();
        for nsp in connected {
            let packet = SioPacket {
                kind: PacketType::Disconnect,
                nsp,
                id: None,
                data: None,
                attachments: vec![],
            };
            self.push_sio(now, session, &packet);
        }
        self.end(now, session, reason, Ending::Flush);
        Ok(())
    }

    /// Ends the session the way that tells `socket.io-client` to come back: the transport
    /// closes with no Socket.IO DISCONNECT (client reason `transport close`).
    pub fn close(
        &mut self,
        now: Instant,
        session: SessionId,
        reason: CloseReason,
    ) -> Result<(), UsageError> {
        self.live_mut(session)?;
        self.end(now, session, reason, Ending::Flush);
        Ok(())
    }

    // ---- internals -----------------------------------------------------------------------

    fn live_mut(&mut self, session: SessionId) -> Result<&mut Session, UsageError> {
        self.sessions
            .get_mut(&session)
            .map(|s| &mut **s)
            .filter(|s| !s.closed)
            .ok_or(UsageError::UnknownSession(session))
    }

    /// Whether a new session fits under `max_sessions`; counts the refusal if not.
    fn admit_session(&mut self) -> bool {
        // Lingering closed sessions count: the cap bounds memory, and they hold it too.
        let fits = (self.sessions.len() as u64) < self.config.max_sessions;
        if !fits {
            self.refused_sessions += 1;
        }
        fits
    }

    /// Creates a session on `transport`, arms its deadlines and returns its id.
    fn open(&mut self, now: Instant, transport: Transport, handshake: Handshake) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let sid = loop {
            let candidate = self.rng.id20();
            if !self.by_sid.contains_key(&candidate) {
                break candidate;
            }
        };
        let websocket = matches!(transport, Transport::WebSocket(_));
        let handshake_deadline = handshake
            .accepted_at
            .add_ms(self.config.handshake_timeout_ms);
        let mut s = Session {
            sid,
            transport,
            timers: Default::default(),
            decoder: Decoder::new(self.config.max_attachments)
                .with_max_attachment_bytes(self.config.max_payload_bytes),
            namespaces: Namespaces::default(),
            handshake,
            closed: false,
            peer_leaving: false,
            idle_packets: 0,
        };
        if self.config.socketio {
            self.timers
                .set(&mut s.timers, id, Timer::Handshake, handshake_deadline);
        }
        self.timers.set(
            &mut s.timers,
            id,
            Timer::PingSend,
            now.add_ms(self.config.ping_interval_ms),
        );
        if let Transport::WebSocket(ws) = s.transport {
            self.by_transport.insert(ws, id);
        }
        self.by_sid.insert(sid, id);
        self.sessions.insert(id, Box::new(s));
        self.live_count += 1;
        self.event(Event::Opened {
            session: id,
            sid: sid.to_string(),
            websocket,
        });
        id
    }

    /// The open packet for a new session.
    fn open_packet(&self, sid: Id20, websocket: bool) -> Frame {
        let upgrades = if !websocket && self.config.transports.websocket {
            vec!["websocket".to_owned()]
        } else {
            vec![]
        };
        EioPacket::Open(OpenPacket {
            sid: sid.to_string(),
            upgrades,
            ping_interval_ms: self.config.ping_interval_ms,
            ping_timeout_ms: self.config.ping_timeout_ms,
            max_payload: self.config.max_payload_bytes,
        })
        .to_frame()
    }

    /// Queues frames on a session's transport (live or lingering).
    fn push(&mut self, now: Instant, id: SessionId, frames: &[Frame]) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match &mut s.transport {
            Transport::WebSocket(ws) => {
                let ws = *ws;
                for frame in frames {
                    self.out.push_back(Output::Transmit(Transmit::WsSend {
                        transport: ws,
                        frame: frame.clone(),
                    }));
                }
            }
            Transport::Polling(p) => {
                // The slow-consumer rule ([`SendQueue`]), as over a WebSocket: its client
                // does not fetch. An ended session's last packets bypass it.
                let mut overflow = false;
                for frame in frames {
                    if s.closed {
                        p.queue.push_last(frame.clone());
                        continue;
                    }
                    let pushed = p.queue.push(frame.clone(), self.config.max_buffered_bytes);
                    self.shed += u64::from(pushed.shed);
                    if pushed.push == send_queue::Push::Overflow {
                        overflow = true;
                        break;
                    }
                }
                if overflow {
                    self.polling_overflows += 1;
                    self.end(now, id, CloseReason::SlowConsumer, Ending::Abort);
                    return;
                }
                self.flush_poll(id);
            }
        }
    }

    fn push_sio(&mut self, now: Instant, id: SessionId, packet: &SioPacket) {
        self.push(now, id, &packet.encode());
    }

    /// Handles one Engine.IO packet from the client, whichever transport carried it.
    fn on_engine_packet(&mut self, now: Instant, id: SessionId, packet: EioPacket) {
        match packet {
            EioPacket::Pong(_) => {
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                // Only a PONG to an outstanding PING counts; a stray one changes nothing.
                if !s.timers.is_armed(Timer::PongDeadline) {
                    return self.idle_packet(now, id);
                }
                // MUTATION (test-only): the answered PING's deadline stays armed.
                #[cfg(feature = "mutations")]
                let keep = self.config.mutations.pong_leaves_deadline_armed;
                #[cfg(not(feature = "mutations"))]
                let keep = false;
                if !keep {
                    self.timers.stop(&mut s.timers, id, Timer::PongDeadline);
                }
                let at = now.add_ms(self.config.ping_interval_ms);
                self.timers.set(&mut s.timers, id, Timer::PingSend, at);
            }
            EioPacket::Message(data) if self.config.socketio => self.on_message(now, id, data),
            EioPacket::Message(data) => self.event(Event::Message { session: id, data }),
            EioPacket::Close => self.end(now, id, CloseReason::ClientClose, Ending::Abort),
            EioPacket::Ping(_) => self.protocol_error(now, id, "ping from client"),
            // Meaningless from a client once the session is open (an upgrade is finished
            // on its probe socket, before this), and harmless: ignored, as the reference
            // server does, rather than ending the session of a client that sends one.
            EioPacket::Open(_) | EioPacket::Upgrade | EioPacket::Noop => self.idle_packet(now, id),
        }
    }

    /// Counts a packet that changed nothing: each costs the server a little (reading it,
    /// and for a CONNECT to a namespace that does not exist, an answer), and reaches no
    /// application budget, so past [`MAX_IDLE_PACKETS`] since the last PING the session
    /// ends as a protocol error. Clients send a few at most (a stray NOOP or UPGRADE, a
    /// PONG that crossed the ping timeout); a client looping on them takes the core's time
    /// from every other connection.
    fn idle_packet(&mut self, now: Instant, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        s.idle_packets = s.idle_packets.saturating_add(1);
        if s.idle_packets > MAX_IDLE_PACKETS {
            self.protocol_error(now, id, "too many packets that do nothing");
        }
    }

    fn protocol_error(&mut self, now: Instant, id: SessionId, what: &str) {
        self.end(
            now,
            id,
            CloseReason::ProtocolError(what.to_owned()),
            Ending::Abort,
        );
    }

    /// Handles an Engine.IO message: the Socket.IO layer.
    fn on_message(&mut self, now: Instant, id: SessionId, data: Data) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let packet = match s.decoder.feed(data) {
            Ok(Some(p)) => p,
            Ok(None) => return,
            Err(e) => return self.protocol_error(now, id, &e.to_string()),
        };
        // Whether the namespace is connected (a copy: the socket id is inline and small).
        let state = s.namespaces.get(&packet.nsp).cloned();
        match (packet.kind, state) {
            // Sent by a client that has since given this socket up: nobody is left to
            // answer, and a session opened now would be over as soon as it began.
            (PacketType::Connect, None) if s.peer_leaving => {}
            (PacketType::Connect, None) => {
                if self.config.namespaces.contains(&packet.nsp) {
                    s.namespaces.insert(packet.nsp.clone(), Namespace::Pending);
                    self.event(Event::Connect {
                        session: id,
                        nsp: packet.nsp,
                        auth: packet.data,
                    });
                } else {
                    self.idle_packet(now, id);
                    if self.sessions.get(&id).is_none_or(|s| s.closed) {
                        return;
                    }
                    let mut data = serde_json::Map::new();
                    data.insert("message".into(), Value::String("Invalid namespace".into()));
                    let reply = SioPacket {
                        kind: PacketType::ConnectError,
                        nsp: packet.nsp,
                        id: None,
                        data: Some(Value::Object(data)),
                        attachments: vec![],
                    };
                    self.push_sio(now, id, &reply);
                }
            }
            (PacketType::Disconnect, Some(Namespace::Connected(_))) => {
                s.namespaces.remove(&packet.nsp);
                // MUTATION (test-only): the session left with no namespace is kept.
                #[cfg(feature = "mutations")]
                let rearm = !self.config.mutations.handshake_not_rearmed;
                #[cfg(not(feature = "mutations"))]
                let rearm = true;
                if rearm && !s.has_connected_namespace() {
                    // A session left with no namespace is bounded as one that never
                    // connected one: it connects again or is closed, not kept for pings.
                    let at = now.add_ms(self.config.handshake_timeout_ms);
                    self.timers.set(&mut s.timers, id, Timer::Handshake, at);
                }
                self.event(Event::Disconnected {
                    session: id,
                    nsp: packet.nsp,
                });
            }
            // A DISCONNECT while the CONNECT is still being decided is ignored, as in the
            // reference server, whose socket does not exist yet. Removing the pending state
            // here let the answer to this CONNECT settle a later one: a connect, a
            // disconnect and a connect again in one POST was authenticated with the first
            // CONNECT's token; now the second CONNECT meets the pending first, a CONNECT
            // twice, and ends the session. A client that has left closes its transport.
            (PacketType::Disconnect, Some(Namespace::Pending) | None) => self.idle_packet(now, id),
            (
                PacketType::Event
                | PacketType::BinaryEvent
                | PacketType::Ack
                | PacketType::BinaryAck,
                Some(Namespace::Connected(_)),
            ) => self.event(Event::Packet {
                session: id,
                packet,
            }),
            (PacketType::Connect, Some(_)) => {
                self.protocol_error(now, id, "namespace connected twice")
            }
            (PacketType::ConnectError, _) => {
                self.protocol_error(now, id, "CONNECT_ERROR from client")
            }
            (_, _) => self.protocol_error(now, id, "packet for a namespace not connected"),
        }
    }

    /// Ends a session. `Abort` drops everything at once; `Flush` lets the client have what
    /// was already sent, followed by an Engine.IO CLOSE on polling.
    fn end(&mut self, now: Instant, id: SessionId, reason: CloseReason, how: Ending) {
        if !self.mark_closed(id, &reason, how == Ending::Flush) {
            return;
        }
        // A polling client broken off for what it sent (a POST answered 200 whose Socket.IO
        // packets broke the rules), or for not fetching, may still come with a GET: it gets
        // the CLOSE (its queue dropped) rather than an unknown sid, as from the reference
        // server, until the linger runs out. A peer that is gone (no PONG, its request
        // aborted) or leaving is not waited for, nor one whose POST was answered 400.
        let told = matches!(
            reason,
            CloseReason::ProtocolError(_) | CloseReason::SlowConsumer
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        match &mut s.transport {
            Transport::WebSocket(ws) => {
                let ws = *ws;
                self.transmit(Transmit::WsClose {
                    transport: ws,
                    reason,
                });
                self.remove(id);
            }
            Transport::Polling(p) => {
                if how != Ending::Flush {
                    p.queue.clear();
                }
                let last = if how == Ending::Release {
                    EioPacket::Noop.to_frame()
                } else {
                    EioPacket::Close.to_frame()
                };
                p.queue.push_last(last);
                if p.pending_get.is_some() || how == Ending::Abort {
                    self.flush_poll(id);
                }
                let Some(s) = self.sessions.get_mut(&id) else {
                    return;
                };
                if (how == Ending::Abort && !told) || s.queue_is_empty() {
                    self.remove(id);
                } else {
                    // Until the client's next GET takes what is left (at least the CLOSE).
                    let at = now.add_ms(self.config.ping_timeout_ms);
                    self.timers.set(&mut s.timers, id, Timer::Linger, at);
                }
            }
        }
    }

    /// Records that a live session has ended: its deadlines stop, a probe WebSocket is
    /// closed, and the application hears [`Event::Closed`] once. Returns `false` if the
    /// session was unknown or had already ended.
    ///
    /// `flush`: the session's last packets are to reach the client. Then a probe already
    /// answered is kept: the client may have paused polling for it, and would never read
    /// them there; they go out on the probe when its `5` comes (see `complete_upgrade`),
    /// or the probe is closed when the session is let go.
    pub(crate) fn mark_closed(&mut self, id: SessionId, reason: &CloseReason, flush: bool) -> bool {
        let Some(s) = self.sessions.get_mut(&id) else {
            return false;
        };
        if s.closed {
            return false;
        }
        s.closed = true;
        self.live_count = self.live_count.saturating_sub(1);
        self.timers.stop_all(&mut s.timers, id);
        let keep = |up: &session::Upgrade| flush && up.probed;
        if let Some(up) = s.upgrade_mut().filter(|up| keep(up)) {
            up.closing = Some(reason.clone());
        } else if let Some(up) = s.take_upgrade() {
            self.by_transport.remove(&up.ws);
            self.transmit(Transmit::WsClose {
                transport: up.ws,
                reason: reason.clone(),
            });
        }
        self.event(Event::Closed {
            session: id,
            reason: reason.clone(),
        });
        true
    }

    /// Forgets a session entirely.
    fn remove(&mut self, id: SessionId) {
        let Some(mut s) = self.sessions.remove(&id) else {
            return;
        };
        if !s.closed {
            self.live_count = self.live_count.saturating_sub(1);
        }
        self.timers.stop_all(&mut s.timers, id);
        self.by_sid.remove(&s.sid);
        match &mut s.transport {
            Transport::WebSocket(ws) => {
                self.by_transport.remove(ws);
            }
            Transport::Polling(p) => {
                if let Some(get) = p.pending_get {
                    self.by_request.remove(&get);
                }
                if let Some(up) = p.upgrade.take() {
                    self.by_transport.remove(&up.ws);
                    // A probe kept for a session that ended (see `mark_closed`).
                    self.transmit(Transmit::WsClose {
                        transport: up.ws,
                        reason: up.closing.unwrap_or(CloseReason::TransportClose),
                    });
                }
            }
        }
    }
}
