//! A driver for the engine in tests: virtual time, scripted client input, and a readable
//! transcript of everything that crossed the engine's boundary.
#![allow(dead_code)]

use bytes::Bytes;
use heartline_core::codec::Frame;
use heartline_core::engine::{
    Engine, EngineConfig, Event, Handshake, Input, Method, Output, Query, Transmit,
};
use heartline_core::{Instant, RequestId, SessionId, TransportId};
use serde_json::json;

/// Test settings: the contract's shape with round numbers.
pub fn config() -> EngineConfig {
    EngineConfig {
        ping_interval_ms: 25_000,
        ping_timeout_ms: 20_000,
        upgrade_timeout_ms: 10_000,
        handshake_timeout_ms: 10_000,
        max_payload_bytes: 1_000,
        seed: heartline_core::Seed::from(42),
        ..EngineConfig::default()
    }
}

/// How the scripted application answers namespace connects.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum App {
    /// Leaves connects pending.
    Silent,
    /// Accepts every connect; echoes `message` events as `message-back`.
    Echo,
    /// Plain Engine.IO: echoes every message as it came.
    RawEcho,
}

pub struct Harness {
    pub engine: Engine,
    pub now: Instant,
    pub app: App,
    pub lines: Vec<String>,
    pub outputs: Vec<(Instant, Output)>,
}

pub fn q(transport: &str, sid: Option<&str>) -> Query {
    Query {
        eio: Some("4".into()),
        transport: Some(transport.into()),
        sid: sid.map(str::to_owned),
    }
}

impl Harness {
    pub fn new(config: EngineConfig, app: App) -> Self {
        Harness {
            engine: Engine::new(config).expect("valid config"),
            now: Instant::ZERO,
            app,
            lines: vec![],
            outputs: vec![],
        }
    }

    pub fn handshake(&self) -> Handshake {
        Handshake {
            accepted_at: self.now,
            authorization: None,
            remote: None,
        }
    }

    /// Feeds one input, logs it, then drains.
    pub fn input(&mut self, input: Input) {
        self.lines
            .push(format!("{:>8} -> {input}", self.now.to_string()));
        self.engine
            .handle_input(self.now, input)
            .expect("driver used the engine correctly");
        self.drain();
    }

    pub fn ws_open(&mut self, ws: u64, sid: Option<&str>) {
        let hs = self.handshake();
        self.input(Input::WsOpened {
            transport: TransportId(ws),
            query: q("websocket", sid),
            handshake: hs,
        });
    }

    pub fn ws_text(&mut self, ws: u64, text: &str) {
        self.input(Input::WsFrame {
            transport: TransportId(ws),
            frame: Frame::Text(Bytes::copy_from_slice(text.as_bytes())),
        });
    }

    pub fn ws_binary(&mut self, ws: u64, bytes: &[u8]) {
        self.input(Input::WsFrame {
            transport: TransportId(ws),
            frame: Frame::Binary(Bytes::copy_from_slice(bytes)),
        });
    }

    pub fn ws_closed(&mut self, ws: u64) {
        self.input(Input::WsClosed {
            transport: TransportId(ws),
            error: false,
        });
    }

    pub fn http(&mut self, req: u64, method: Method, query: Query, body: &str) {
        let hs = self.handshake();
        self.input(Input::Http {
            request: RequestId(req),
            method,
            query,
            body: Bytes::copy_from_slice(body.as_bytes()),
            handshake: hs,
        });
    }

    /// Moves time forward to `self.now + ms`, firing each deadline at its own instant, as a
    /// driver that sleeps until `poll_timeout` does.
    pub fn advance(&mut self, ms: u64) {
        let target = self.now.add_ms(ms);
        while let Some(at) = self.engine.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            if let Some((s, t)) = self.engine.timeout_reason() {
                self.lines
                    .push(format!("{:>8} .. timer {s} {t:?}", self.now.to_string()));
            }
            self.engine.handle_timeout(self.now);
            self.drain();
        }
        self.now = target;
    }

    /// Takes the engine's outputs in order; the app reacts to each event as it is taken,
    /// and what it causes is queued behind the outputs already waiting (a loop, not a
    /// recursion: a POST of thousands of packets is thousands of events).
    pub fn drain(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            self.lines
                .push(format!("{:>8} {out}", self.now.to_string()));
            self.outputs.push((self.now, out.clone()));
            if let Output::Event(e) = out {
                self.react(e);
            }
        }
    }

    fn react(&mut self, e: Event) {
        if self.app == App::RawEcho {
            if let Event::Message { session, data } = e {
                self.engine
                    .send_message(self.now, session, data)
                    .expect("live session");
            }
            return;
        }
        if self.app != App::Echo {
            return;
        }
        match e {
            Event::Connect { session, nsp, .. } => {
                let answered = self.engine.accept_connect(self.now, session, &nsp);
                still_live(answered, "pending connect");
            }
            Event::Packet { session, packet }
                if packet.data.as_ref().and_then(|d| d.get(0)) == Some(&json!("message")) =>
            {
                let mut back = packet.clone();
                if let Some(serde_json::Value::Array(items)) = back.data.as_mut() {
                    items[0] = json!("message-back");
                }
                let answered = self.engine.send_packet(self.now, session, &back);
                still_live(answered, "live session");
            }
            _ => {}
        }
    }

    /// The transcript so far, one line per step.
    pub fn transcript(&self) -> String {
        self.lines.join("\n")
    }

    /// The sid of the most recently opened session.
    pub fn last_sid(&self) -> String {
        self.outputs
            .iter()
            .rev()
            .find_map(|(_, o)| match o {
                Output::Event(Event::Opened { sid, .. }) => Some(sid.clone()),
                _ => None,
            })
            .expect("a session opened")
    }

    /// The session closed events so far, as (time, session, reason label).
    pub fn closes(&self) -> Vec<(Instant, SessionId, &'static str)> {
        self.outputs
            .iter()
            .filter_map(|(t, o)| match o {
                Output::Event(Event::Closed { session, reason }) => {
                    Some((*t, *session, reason.label()))
                }
                _ => None,
            })
            .collect()
    }

    /// Everything transmitted on one WebSocket, as text.
    pub fn ws_sent(&self, ws: u64) -> Vec<String> {
        self.outputs
            .iter()
            .filter_map(|(_, o)| match o {
                Output::Transmit(Transmit::WsSend { transport, frame })
                    if *transport == TransportId(ws) =>
                {
                    Some(match frame {
                        Frame::Text(b) => String::from_utf8_lossy(b).into_owned(),
                        Frame::Binary(b) => format!("<{} bytes>", b.len()),
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// The response to one HTTP request, as (status, body).
    pub fn response(&self, req: u64) -> Option<(u16, String)> {
        self.outputs.iter().find_map(|(_, o)| match o {
            Output::Transmit(Transmit::HttpResponse {
                request,
                status,
                body,
                ..
            }) if *request == RequestId(req) => {
                Some((*status, String::from_utf8_lossy(body).into_owned()))
            }
            _ => None,
        })
    }

    pub fn ws_closed_by_server(&self, ws: u64) -> bool {
        self.outputs.iter().any(|(_, o)| {
            matches!(o, Output::Transmit(Transmit::WsClose { transport, .. }) if *transport == TransportId(ws))
        })
    }
}

/// An echo answer must reach its session, unless the session ended in the same step as the
/// event it answers (a POST whose later packet ends it): a real application meets that too.
fn still_live<T: std::fmt::Debug>(
    answered: Result<T, heartline_core::engine::UsageError>,
    what: &str,
) {
    match answered {
        Ok(_) | Err(heartline_core::engine::UsageError::UnknownSession(_)) => {}
        Err(e) => panic!("{what}: {e:?}"),
    }
}
