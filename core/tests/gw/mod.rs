//! A driver for the gateway in tests: virtual time, scripted WebSocket clients, an
//! in-memory store whose effects complete when the test says so (or fail), and a
//! transcript of everything that crossed the gateway's boundary.
#![allow(dead_code)]

use std::collections::BTreeMap;

use bytes::Bytes;
use heartline_core::codec::engine::Packet as EioPacket;
use heartline_core::codec::socket::{Decoder, Packet as SioPacket};
use heartline_core::codec::{engine::Data, Frame};
use heartline_core::engine::{self, EngineConfig, Handshake, Query, Transmit};
use heartline_core::gateway::auth::{issue, Claims};
use heartline_core::gateway::{
    AppendOutcome, Effect, Gateway, GatewayConfig, Input, Member, Message, OpId, Output,
    StoreFailure,
};
use heartline_core::{Instant, TransportId};
use serde_json::{json, Value};

pub const SECRET: &[u8] = b"gateway-test-secret";
/// Unix time at the harness's `Instant::ZERO`: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

pub fn config() -> GatewayConfig {
    GatewayConfig {
        engine: EngineConfig {
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            seed: heartline_core::Seed::from(7),
            ..EngineConfig::default()
        },
        heartbeat_interval_ms: 30_000,
        offline_grace_ms: 3_000,
        rate_messages: 3,
        rate_window_ms: 10_000,
        jwt_secret: SECRET.to_vec(),
        auth_grace_ms: 5_000,
        wall_epoch_ms: EPOCH_MS,
        ..GatewayConfig::default()
    }
}

/// A token for `user:kind` valid until `exp_s` seconds after the harness epoch.
pub fn token(user: &str, kind: &str, exp_after_s: u64) -> String {
    issue(
        SECRET,
        &Claims {
            sub: user.into(),
            user_type: kind.into(),
            exp: EPOCH_MS / 1000 + exp_after_s,
            role: None,
        },
    )
    .expect("sign")
}

pub fn admin_token(user: &str) -> String {
    issue(
        SECRET,
        &Claims {
            sub: user.into(),
            user_type: "agent".into(),
            exp: EPOCH_MS / 1000 + 86_400,
            role: Some("admin".into()),
        },
    )
    .expect("sign")
}

/// An in-memory store with the contract's semantics: gapless seq, idempotent tempIds.
#[derive(Default)]
pub struct MemStore {
    pub messages: BTreeMap<String, Vec<Message>>,
    pub by_temp: BTreeMap<(String, String, String), Message>,
}

impl MemStore {
    pub fn apply(&mut self, effect: &Effect) -> Input {
        match effect {
            Effect::Append { op, request } => {
                if let Some(t) = &request.temp_id {
                    let key = (
                        request.sender_id.clone(),
                        request.sender_type.clone(),
                        t.clone(),
                    );
                    if let Some(m) = self.by_temp.get(&key) {
                        return Input::Appended {
                            op: *op,
                            result: Ok(AppendOutcome::Duplicate(m.clone())),
                        };
                    }
                }
                let list = self
                    .messages
                    .entry(request.conversation_id.clone())
                    .or_default();
                let m = Message {
                    id: request.id.clone(),
                    conversation_id: request.conversation_id.clone(),
                    seq: list.len() as u64 + 1,
                    sender_id: request.sender_id.clone(),
                    sender_type: request.sender_type.clone(),
                    content: request.content.clone(),
                    temp_id: request.temp_id.clone(),
                    created_at_ms: request.created_at_ms,
                };
                list.push(m.clone());
                if let Some(t) = &request.temp_id {
                    self.by_temp.insert(
                        (
                            request.sender_id.clone(),
                            request.sender_type.clone(),
                            t.clone(),
                        ),
                        m.clone(),
                    );
                }
                Input::Appended {
                    op: *op,
                    result: Ok(AppendOutcome::Stored(m)),
                }
            }
            Effect::Read { op, request } => {
                let all = self
                    .messages
                    .get(&request.conversation_id)
                    .cloned()
                    .unwrap_or_default();
                let mut sel: Vec<Message> = all
                    .into_iter()
                    .filter(|m| request.after_seq.is_none_or(|a| m.seq > a))
                    .filter(|m| request.before_seq.is_none_or(|b| m.seq < b))
                    .collect();
                if request.after_seq.is_none() {
                    let skip = sel.len().saturating_sub(request.limit);
                    sel.drain(..skip);
                } else {
                    sel.truncate(request.limit);
                }
                Input::Read {
                    op: *op,
                    result: Ok(sel),
                }
            }
            Effect::FindSent {
                op,
                sender,
                temp_id,
            } => Input::Found {
                op: *op,
                result: Ok(self
                    .by_temp
                    .get(&(
                        sender.user_id.clone(),
                        sender.user_type.clone(),
                        temp_id.clone(),
                    ))
                    .cloned()),
            },
        }
    }
}

/// What one scripted client has received, decoded.
#[derive(Default, Clone, Debug)]
pub struct ClientView {
    /// Socket.IO events received: (name, payload).
    pub events: Vec<(String, Value)>,
    /// Acks received: (id, payload).
    pub acks: Vec<(u64, Value)>,
    /// CONNECT_ERROR payloads.
    pub connect_errors: Vec<Value>,
    /// Whether a Socket.IO DISCONNECT arrived.
    pub disconnected: bool,
    /// Whether the server closed the socket.
    pub closed: bool,
}

pub struct Gw {
    pub gw: Gateway,
    pub now: Instant,
    pub lines: Vec<String>,
    pub outputs: Vec<(Instant, Output)>,
    pub store: MemStore,
    /// Effects not completed yet, in order.
    pub effects: Vec<Effect>,
    /// Complete every store effect as soon as it is asked for.
    pub auto_store: bool,
    pub views: BTreeMap<u64, ClientView>,
    decoders: BTreeMap<u64, Decoder>,
    next_ack: u64,
    /// Clients answer engine PINGs (a live client); off to simulate a silent peer.
    pub auto_pong: bool,
    pongs_due: Vec<u64>,
    /// The next append completed automatically fails instead.
    pub fail_next_append: bool,
}

impl Gw {
    pub fn new(config: GatewayConfig) -> Self {
        Gw {
            gw: Gateway::new(config, Instant::ZERO).expect("valid config"),
            now: Instant::ZERO,
            lines: vec![],
            outputs: vec![],
            store: MemStore::default(),
            effects: vec![],
            auto_store: true,
            views: BTreeMap::new(),
            decoders: BTreeMap::new(),
            next_ack: 1,
            auto_pong: true,
            pongs_due: vec![],
            fail_next_append: false,
        }
    }

    pub fn log(&mut self, line: String) {
        self.lines
            .push(format!("{:>8} {line}", self.now.to_string()));
    }

    pub fn input(&mut self, input: Input) {
        self.log(format!("-> {input}"));
        self.gw
            .handle_input(self.now, input)
            .expect("driver used the gateway correctly");
        self.drain();
    }

    pub fn conversation(&mut self, id: &str, members: &[(&str, &str)]) {
        let last_seq = self.store.messages.get(id).map_or(0, |l| l.len() as u64);
        self.input(Input::ConversationPut {
            id: id.into(),
            members: members
                .iter()
                .map(|(u, t)| Member {
                    user_id: (*u).into(),
                    user_type: (*t).into(),
                })
                .collect(),
            last_seq,
        });
    }

    fn net(&mut self, i: engine::Input) {
        self.input(Input::Network(i));
    }

    pub fn ws_text(&mut self, ws: u64, text: &str) {
        self.net(engine::Input::WsFrame {
            transport: TransportId(ws),
            frame: Frame::Text(Bytes::copy_from_slice(text.as_bytes())),
        });
    }

    /// Opens a WebSocket and connects `/chat` with `auth` as the CONNECT payload.
    pub fn connect_with(&mut self, ws: u64, auth: Option<Value>) {
        self.open(ws);
        match auth {
            Some(a) => self.ws_text(ws, &format!("40/chat,{a}")),
            None => self.ws_text(ws, "40/chat,"),
        }
    }

    /// Opens a WebSocket (the Engine.IO handshake only).
    pub fn open(&mut self, ws: u64) {
        self.views.insert(ws, ClientView::default());
        self.decoders.insert(ws, Decoder::new(10));
        self.net(engine::Input::WsOpened {
            transport: TransportId(ws),
            query: Query {
                eio: Some("4".into()),
                transport: Some("websocket".into()),
                sid: None,
            },
            handshake: Handshake {
                accepted_at: self.now,
                authorization: None,
                remote: None,
            },
        });
    }

    pub fn connect(&mut self, ws: u64, user: &str, kind: &str) {
        let t = token(user, kind, 86_400);
        self.connect_with(ws, Some(json!({ "token": t })));
    }

    /// Emits an event with an ack request; returns the ack id.
    pub fn emit(&mut self, ws: u64, event: &str, payload: Value) -> u64 {
        let id = self.next_ack;
        self.next_ack += 1;
        let text = format!("42/chat,{id}{}", json!([event, payload]));
        self.ws_text(ws, &text);
        id
    }

    /// Emits an event without an ack.
    pub fn emit_noack(&mut self, ws: u64, event: &str, payload: Value) {
        let text = format!("42/chat,{}", json!([event, payload]));
        self.ws_text(ws, &text);
    }

    /// The driver read the peer's close ahead of frames still to be handed over.
    pub fn peer_closing(&mut self, ws: u64) {
        self.net(engine::Input::WsClosing {
            transport: TransportId(ws),
        });
    }

    pub fn peer_close(&mut self, ws: u64) {
        self.net(engine::Input::WsClosed {
            transport: TransportId(ws),
            error: false,
        });
    }

    /// Moves time forward, firing each deadline at its own instant.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now.add_ms(ms);
        while let Some(at) = self.gw.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.gw.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    /// The driver wakes `ms` late: one `handle_timeout` at `now + ms`, whatever fell due
    /// meanwhile (a stalled process, say), where [`Gw::advance`] wakes at each deadline.
    pub fn wake_late(&mut self, ms: u64) {
        self.now = self.now.add_ms(ms);
        self.gw.handle_timeout(self.now);
        self.drain();
    }

    /// Completes the oldest store effect, successfully.
    pub fn complete_one(&mut self) {
        if self.effects.is_empty() {
            return;
        }
        let e = self.effects.remove(0);
        let input = self.store.apply(&e);
        self.input(input);
    }

    /// Fails the oldest store effect.
    pub fn fail_one(&mut self) {
        if self.effects.is_empty() {
            return;
        }
        let e = self.effects.remove(0);
        let op: OpId = match &e {
            Effect::Append { op, .. } | Effect::Read { op, .. } | Effect::FindSent { op, .. } => {
                *op
            }
        };
        let failure = StoreFailure("disk full".into());
        let input = match e {
            Effect::Append { .. } => Input::Appended {
                op,
                result: Err(failure),
            },
            Effect::Read { .. } => Input::Read {
                op,
                result: Err(failure),
            },
            Effect::FindSent { .. } => Input::Found {
                op,
                result: Err(failure),
            },
        };
        self.input(input);
    }

    pub fn drain(&mut self) {
        let mut completed = vec![];
        while let Some(out) = self.gw.poll_output() {
            self.log(format!("{out}"));
            self.outputs.push((self.now, out.clone()));
            match out {
                Output::Transmit(t) => self.observe(t),
                Output::Effect(e) => {
                    if let (true, true, Effect::Append { op, .. }) =
                        (self.auto_store, self.fail_next_append, &e)
                    {
                        self.fail_next_append = false;
                        completed.push(Input::Appended {
                            op: *op,
                            result: Err(StoreFailure("disk full".into())),
                        });
                    } else if self.auto_store {
                        completed.push(self.store.apply(&e));
                    } else {
                        self.effects.push(e);
                    }
                }
                Output::Notice(_) => {}
            }
        }
        for input in completed {
            self.input(input);
        }
        for ws in std::mem::take(&mut self.pongs_due) {
            self.ws_text(ws, "3");
        }
    }

    /// Decodes what a client receives, and answers engine PINGs like a live client.
    fn observe(&mut self, t: Transmit) {
        match t {
            Transmit::WsSend { transport, frame } => {
                let ws = transport.0;
                let Ok(packet) = EioPacket::from_frame(&frame) else {
                    return;
                };
                let data = match packet {
                    EioPacket::Message(d) => d,
                    EioPacket::Ping(_) if self.auto_pong => {
                        self.pongs_due.push(ws);
                        return;
                    }
                    _ => return,
                };
                let Some(dec) = self.decoders.get_mut(&ws) else {
                    return;
                };
                let Ok(Some(p)) = dec.feed(data) else {
                    return;
                };
                let view = self.views.entry(ws).or_default();
                record(view, &p);
            }
            Transmit::WsClose { transport, .. } => {
                self.views.entry(transport.0).or_default().closed = true;
            }
            Transmit::HttpResponse { .. } => {}
        }
    }

    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }

    pub fn view(&self, ws: u64) -> &ClientView {
        self.views.get(&ws).expect("known client")
    }

    /// Names of events received by a client, in order.
    pub fn event_names(&self, ws: u64) -> Vec<String> {
        self.view(ws)
            .events
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn ack(&self, ws: u64, id: u64) -> Option<&Value> {
        self.view(ws)
            .acks
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| v)
    }

    /// Payloads of one event received by a client.
    pub fn events_named(&self, ws: u64, name: &str) -> Vec<Value> {
        self.view(ws)
            .events
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn record(view: &mut ClientView, p: &SioPacket) {
    use heartline_core::codec::socket::PacketType as T;
    match p.kind {
        T::Event | T::BinaryEvent => {
            let name = p.event_name().unwrap_or("").to_owned();
            let payload = p.args().first().cloned().unwrap_or(Value::Null);
            view.events.push((name, payload));
        }
        T::Ack | T::BinaryAck => {
            let payload = p
                .data
                .as_ref()
                .and_then(|d| d.get(0))
                .cloned()
                .unwrap_or(Value::Null);
            view.acks.push((p.id.unwrap_or(0), payload));
        }
        T::ConnectError => view
            .connect_errors
            .push(p.data.clone().unwrap_or(Value::Null)),
        T::Disconnect => view.disconnected = true,
        T::Connect => {}
    }
}

/// Unused import guard for `Data`.
pub fn _data(_: Data) {}
