//! Micro-benchmarks of Heartline's core: the codecs on a chat message, the timer queue at
//! 100,000 owners, and the whole engine holding many open WebSocket sessions.
//!
//! Run with `cargo bench -p heartline-core --bench core`.

use std::hint::black_box;
use std::time::{Duration, Instant as WallClock};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use heartline_core::codec::engine::Packet as EioPacket;
use heartline_core::codec::socket::{Decoder, Packet as SioPacket, PacketType};
use heartline_core::codec::Frame;
use heartline_core::engine::{
    Engine, EngineConfig, Event, Handshake, Input, Output, Query, Transmit,
};
use heartline_core::timer::{TimerKind, TimerQueue, TimerTable};
use heartline_core::{Instant, SessionId, TransportId};
use serde_json::json;

/// A chat send as it arrives on a WebSocket: Engine.IO message, Socket.IO EVENT on `/chat`
/// with ack id 17.
const MESSAGE_SEND: &str = r#"42/chat,17["message:send",{"conversationId":"c-42","content":"hello there, how are you doing today?","tempId":"t-3f9a2c"}]"#;

/// Members of a typical small conversation.
const FAN_OUT: usize = 10;

/// Owners in the timer queue benchmarks.
const TIMER_OWNERS: u64 = 100_000;

/// Sessions held by the engine benchmarks.
const SESSIONS: u64 = 100_000;

/// Ping interval of the engine benchmarks. Sessions open 1 ms apart, and all of them must
/// open within one interval so that no heartbeat falls due while the engine is being filled.
const ENGINE_PING_INTERVAL_MS: u64 = 2 * SESSIONS + 25_000;

// ---- codecs -----------------------------------------------------------------------------

/// The `message:new` EVENT the room receives for the message above.
fn message_new() -> SioPacket {
    SioPacket::event(
        "/chat",
        None,
        json!([
            "message:new",
            {
                "id": "m-01J9ZK7Q4W8E3R5T6Y7U8I9O0P",
                "conversationId": "c-42",
                "seq": 1042,
                "senderId": "u-7d1e5b",
                "senderType": "user",
                "content": "hello there, how are you doing today?",
                "tempId": "t-3f9a2c",
                "createdAt": 1_767_225_600_000u64,
            }
        ]),
    )
}

fn decode_send(decoder: &mut Decoder, frame: &Frame) -> SioPacket {
    let Ok(EioPacket::Message(data)) = EioPacket::from_frame(frame) else {
        panic!("not an Engine.IO message");
    };
    match decoder.feed(data) {
        Ok(Some(packet)) => packet,
        other => panic!("not a complete Socket.IO packet: {other:?}"),
    }
}

fn codecs(c: &mut Criterion) {
    let frame = Frame::Text(Bytes::from_static(MESSAGE_SEND.as_bytes()));
    let mut decoder = Decoder::new(10);
    let decoded = decode_send(&mut decoder, &frame);
    assert_eq!(decoded.kind, PacketType::Event);
    assert_eq!(decoded.nsp, "/chat");
    assert_eq!(decoded.id, Some(17));
    assert_eq!(decoded.event_name(), Some("message:send"));
    assert_eq!(
        SioPacket::decode(&MESSAGE_SEND[1..]).expect("decodes"),
        decoded
    );

    let mut g = c.benchmark_group("decode_message_send");
    g.throughput(Throughput::Elements(1));
    g.bench_function("from_frame+feed", |b| {
        b.iter(|| decode_send(&mut decoder, black_box(&frame)))
    });
    g.bench_function("socket_decode_only", |b| {
        b.iter(|| SioPacket::decode(black_box(&MESSAGE_SEND[1..])))
    });
    g.throughput(Throughput::Bytes(frame.len() as u64));
    g.bench_function("from_frame+feed/bytes", |b| {
        b.iter(|| decode_send(&mut decoder, black_box(&frame)))
    });
    g.finish();

    let packet = message_new();
    let frames = packet.encode();
    assert_eq!(frames.len(), 1);
    let encoded_len = frames[0].len() as u64;
    let text = frames[0].as_text().expect("text frame");
    assert!(
        text.starts_with(r#"42/chat,["message:new",{"id":"#),
        "{text}"
    );

    let mut g = c.benchmark_group("encode_message_new");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| b.iter(|| black_box(&packet).encode()));
    g.throughput(Throughput::Bytes(encoded_len));
    g.bench_function("encode/bytes", |b| b.iter(|| black_box(&packet).encode()));
    g.finish();

    let mut g = c.benchmark_group("fan_out_10");
    g.throughput(Throughput::Elements(FAN_OUT as u64));
    g.bench_function("encode_once_clone_10", |b| {
        b.iter(|| {
            let frames = black_box(&packet).encode();
            let copies: Vec<Vec<Frame>> = (0..FAN_OUT).map(|_| frames.clone()).collect();
            copies
        })
    });
    g.bench_function("encode_10_times", |b| {
        b.iter(|| {
            let copies: Vec<Vec<Frame>> =
                (0..FAN_OUT).map(|_| black_box(&packet).encode()).collect();
            copies
        })
    });
    g.finish();
}

// ---- timers -----------------------------------------------------------------------------

/// The heartbeat deadlines of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Beat {
    Handshake,
    PingSend,
    PongDeadline,
}

impl TimerKind for Beat {
    const ALL: &'static [Self] = &[Beat::Handshake, Beat::PingSend, Beat::PongDeadline];
    fn slot(self) -> usize {
        self as usize
    }
}

const BEATS: usize = Beat::COUNT;
const PING_INTERVAL_MS: u64 = 25_000;

struct Timers {
    queue: TimerQueue<u64, Beat>,
    tables: Vec<TimerTable<Beat, BEATS>>,
    /// Latest instant handed out; every re-arm goes after it, as `now + interval` does.
    clock: u64,
    /// Next owner to touch.
    cursor: u64,
    /// xorshift state, for visiting owners in no particular order.
    rng: u64,
}

impl Timers {
    /// `owners` owners, each with a PingSend deadline, spread evenly over one ping interval.
    fn new(owners: u64) -> Self {
        let mut queue = TimerQueue::default();
        let mut tables = vec![TimerTable::default(); owners as usize];
        for (owner, table) in (0..owners).zip(tables.iter_mut()) {
            let at = Instant::from_millis(owner * PING_INTERVAL_MS / owners);
            queue.set(table, owner, Beat::PingSend, at);
        }
        assert_eq!(queue.len() as u64, owners);
        Timers {
            queue,
            tables,
            clock: PING_INTERVAL_MS,
            cursor: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }

    fn owners(&self) -> u64 {
        self.tables.len() as u64
    }

    fn next_owner(&mut self) -> u64 {
        let owner = self.cursor;
        self.cursor = (self.cursor + 1) % self.owners();
        owner
    }

    fn random_owner(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % self.owners()
    }

    fn later(&mut self) -> Instant {
        self.clock += 1;
        Instant::from_millis(self.clock)
    }

    /// Re-arms the owner's armed PingSend deadline at a later instant.
    fn rearm(&mut self, owner: u64) {
        let at = self.later();
        let table = &mut self.tables[owner as usize];
        self.queue.set(table, owner, Beat::PingSend, at);
    }

    /// Stops whichever of PingSend / PongDeadline is armed and arms the other, as a PING
    /// sent and a PONG received do.
    fn stop_set(&mut self, owner: u64) {
        let at = self.later();
        let table = &mut self.tables[owner as usize];
        let (armed, next) = if table.is_armed(Beat::PongDeadline) {
            (Beat::PongDeadline, Beat::PingSend)
        } else {
            (Beat::PingSend, Beat::PongDeadline)
        };
        self.queue.stop(table, owner, armed);
        self.queue.set(table, owner, next, at);
    }

    /// Fires the earliest deadline and re-arms it one interval later.
    fn fire_earliest(&mut self) {
        let (at, _, _) = self.queue.next().expect("armed");
        let (at, owner, kind) = self.queue.pop_due(at).expect("due");
        let table = &mut self.tables[owner as usize];
        TimerQueue::<u64, Beat>::fired(table, kind);
        self.queue
            .set(table, owner, kind, at.add_ms(PING_INTERVAL_MS));
    }
}

fn timers(c: &mut Criterion) {
    let mut g = c.benchmark_group("timers_100k");
    g.throughput(Throughput::Elements(1));
    let mut t = None;
    macro_rules! timers {
        () => {
            t.get_or_insert_with(|| Timers::new(TIMER_OWNERS))
        };
    }
    g.bench_function("rearm_set/rotating_owner", |b| {
        let t = timers!();
        b.iter(|| {
            let owner = t.next_owner();
            t.rearm(black_box(owner));
        })
    });
    g.bench_function("rearm_set/random_owner", |b| {
        let t = timers!();
        b.iter(|| {
            let owner = t.random_owner();
            t.rearm(black_box(owner));
        })
    });
    g.bench_function("stop+set/rotating_owner", |b| {
        let t = timers!();
        b.iter(|| {
            let owner = t.next_owner();
            t.stop_set(black_box(owner));
        })
    });
    g.bench_function("next", |b| {
        let t = timers!();
        b.iter(|| black_box(&t.queue).next())
    });
    g.bench_function("pop_due+rearm", |b| {
        let t = timers!();
        b.iter(|| t.fire_earliest())
    });
    g.finish();
    if let Some(t) = &t {
        assert_eq!(t.queue.len() as u64, TIMER_OWNERS);
    }
}

// ---- engine -----------------------------------------------------------------------------

/// An engine holding many WebSocket sessions, each connected to `/chat`.
struct Gateway {
    engine: Engine,
    now: Instant,
    /// Each socket with its session, in the order they opened.
    sockets: Vec<(TransportId, SessionId)>,
    cursor: usize,
}

impl Gateway {
    /// Opens `sessions` WebSocket sessions, `spacing_ms` apart, and connects each to `/chat`.
    fn new(sessions: u64, spacing_ms: u64) -> Self {
        let started = WallClock::now();
        let config = EngineConfig {
            ping_interval_ms: ENGINE_PING_INTERVAL_MS,
            ping_timeout_ms: 20_000,
            seed: heartline_core::Seed::from(42),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(config).expect("valid config");
        let mut now = Instant::from_millis(1_000);
        let mut sockets = Vec::with_capacity(sessions as usize);
        let connect = Frame::text("40/chat,");
        for i in 0..sessions {
            if i > 0 {
                now = now.add_ms(spacing_ms);
            }
            let ws = TransportId(i + 1);
            engine
                .handle_input(
                    now,
                    Input::WsOpened {
                        transport: ws,
                        query: Query {
                            eio: Some("4".into()),
                            transport: Some("websocket".into()),
                            sid: None,
                        },
                        handshake: Handshake {
                            accepted_at: now,
                            authorization: None,
                            remote: None,
                        },
                    },
                )
                .expect("websocket opens");
            let mut opened = None;
            while let Some(out) = engine.poll_output() {
                if let Output::Event(Event::Opened { session, .. }) = out {
                    opened = Some(session);
                }
            }
            let session = opened.expect("a session opened");
            engine
                .handle_input(
                    now,
                    Input::WsFrame {
                        transport: ws,
                        frame: connect.clone(),
                    },
                )
                .expect("frame accepted");
            let mut pending: Vec<(SessionId, String)> = vec![];
            while let Some(out) = engine.poll_output() {
                if let Output::Event(Event::Connect { session, nsp, .. }) = out {
                    pending.push((session, nsp));
                }
            }
            assert_eq!(pending.len(), 1, "one /chat connect per session");
            for (s, nsp) in pending {
                assert_eq!(s, session);
                engine
                    .accept_connect(now, s, &nsp)
                    .expect("pending connect");
            }
            drain(&mut engine);
            sockets.push((ws, session));
        }
        assert_eq!(engine.session_count() as u64, sessions);
        assert_eq!(engine.timers_armed() as u64, sessions, "one PingSend each");
        eprintln!(
            "engine: {sessions} sessions open and connected in {:.2?}",
            started.elapsed()
        );
        Gateway {
            engine,
            now,
            sockets,
            cursor: 0,
        }
    }

    /// Fires every heartbeat due next, answers each PING with a PONG on its socket, and
    /// returns how many sessions took part.
    fn pong_round(&mut self, pongs: &mut Vec<TransportId>) -> usize {
        let at = self.engine.poll_timeout().expect("a heartbeat is armed");
        self.now = at;
        self.engine.handle_timeout(at);
        pongs.clear();
        while let Some(out) = self.engine.poll_output() {
            match out {
                Output::Transmit(Transmit::WsSend { transport, frame }) => {
                    debug_assert_eq!(frame.as_text(), Some("2"));
                    pongs.push(transport);
                }
                other => panic!("unexpected output on a heartbeat: {other}"),
            }
        }
        for &transport in pongs.iter() {
            self.engine
                .handle_input(
                    at,
                    Input::WsFrame {
                        transport,
                        frame: Frame::Text(Bytes::from_static(b"3")),
                    },
                )
                .expect("frame accepted");
        }
        debug_assert!(self.engine.poll_output().is_none());
        pongs.len()
    }

    /// The next socket and its session, visiting every session in turn.
    fn next_socket(&mut self) -> (TransportId, SessionId) {
        let socket = self.sockets[self.cursor];
        self.cursor = (self.cursor + 1) % self.sockets.len();
        socket
    }

    /// One `message:send` frame on the next session's socket; returns the decoded event.
    fn message_send(&mut self, frame: &Frame) -> Option<Output> {
        let (transport, _) = self.next_socket();
        self.engine
            .handle_input(
                self.now,
                Input::WsFrame {
                    transport,
                    frame: frame.clone(),
                },
            )
            .expect("frame accepted");
        let event = self.engine.poll_output();
        debug_assert!(matches!(event, Some(Output::Event(Event::Packet { .. }))));
        debug_assert!(self.engine.poll_output().is_none());
        event
    }
}

fn drain(engine: &mut Engine) {
    while let Some(out) = engine.poll_output() {
        if let Output::Transmit(Transmit::WsClose { transport, reason }) = out {
            panic!("{transport} closed: {reason:?}");
        }
    }
}

fn engine(c: &mut Criterion) {
    let mut pongs = Vec::with_capacity(SESSIONS as usize);

    // All sessions opened at the same instant: every heartbeat falls due together.
    let mut g = c.benchmark_group(format!("engine_{SESSIONS}_sessions"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(SESSIONS));
    let mut together = None;
    g.bench_function("pong_round/all_due_at_once", |b| {
        let gw = together.get_or_insert_with(|| Gateway::new(SESSIONS, 0));
        b.iter(|| {
            let n = gw.pong_round(&mut pongs);
            assert_eq!(n as u64, SESSIONS);
        })
    });
    drop(together);
    g.finish();

    // Sessions opened 1 ms apart: each heartbeat falls due alone.
    let mut g = c.benchmark_group(format!("engine_{SESSIONS}_sessions"));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    let mut spread = None;
    macro_rules! spread {
        () => {
            spread.get_or_insert_with(|| Gateway::new(SESSIONS, 1))
        };
    }
    g.bench_function("pong_round/one_due", |b| {
        let gw = spread!();
        b.iter(|| {
            let n = gw.pong_round(&mut pongs);
            assert_eq!(n, 1);
        })
    });

    let send = Frame::Text(Bytes::from_static(MESSAGE_SEND.as_bytes()));
    g.bench_function("ws_frame_message_send", |b| {
        let gw = spread!();
        b.iter(|| gw.message_send(black_box(&send)))
    });

    let packet = message_new();
    g.throughput(Throughput::Elements(FAN_OUT as u64));
    g.bench_function("send_message_new_to_10/encode_once", |b| {
        let gw = spread!();
        b.iter(|| {
            let members: [SessionId; FAN_OUT] = std::array::from_fn(|_| gw.next_socket().1);
            let frames = packet.encode();
            for session in members {
                gw.engine
                    .send(gw.now, session, &frames)
                    .expect("live session");
            }
            let mut sent = 0;
            while let Some(out) = gw.engine.poll_output() {
                sent += usize::from(matches!(out, Output::Transmit(Transmit::WsSend { .. })));
            }
            assert_eq!(sent, FAN_OUT);
        })
    });
    g.bench_function("send_message_new_to_10/encode_each", |b| {
        let gw = spread!();
        b.iter(|| {
            let members: [SessionId; FAN_OUT] = std::array::from_fn(|_| gw.next_socket().1);
            for session in members {
                gw.engine
                    .send_packet(gw.now, session, &packet)
                    .expect("live session");
            }
            let mut sent = 0;
            while let Some(out) = gw.engine.poll_output() {
                sent += usize::from(matches!(out, Output::Transmit(Transmit::WsSend { .. })));
            }
            assert_eq!(sent, FAN_OUT);
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = codecs, timers, engine
}
criterion_main!(benches);
