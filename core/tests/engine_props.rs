//! Properties of the connection lifecycle under random interleavings of client frames,
//! closes and clock advances, with fewer session slots than clients.

mod support;

use std::collections::BTreeMap;

use heartline_core::codec::Frame;
use heartline_core::engine::{EngineConfig, Output, Transmit};
use heartline_core::{Instant, TransportId};
use proptest::prelude::*;
use support::{config, App, Harness};

#[derive(Clone, Debug)]
enum Op {
    Open(u8),
    Connect(u8),
    Pong(u8),
    Message(u8),
    Garbage(u8, Vec<u8>),
    PeerClose(u8),
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0u8..4;
    prop_oneof![
        2 => c.clone().prop_map(Op::Open),
        2 => c.clone().prop_map(Op::Connect),
        4 => c.clone().prop_map(Op::Pong),
        2 => c.clone().prop_map(Op::Message),
        1 => (c.clone(), proptest::collection::vec(any::<u8>(), 0..12)).prop_map(|(c, b)| Op::Garbage(c, b)),
        1 => c.prop_map(Op::PeerClose),
        5 => (0u64..40_000).prop_map(Op::Advance),
    ]
}

/// What the test knows of one client's WebSocket.
#[derive(Default)]
struct Client {
    /// The current socket and when it opened, if one is open from the client's side.
    ws: Option<u64>,
    /// Last sign of life that counts: open, or a PONG answering an outstanding PING.
    alive_at: Instant,
    /// A PING was received and not answered yet.
    ping_outstanding: bool,
}

/// Scans outputs produced since `from` and updates the clients; returns sockets the server
/// closed and checks that nothing is sent on a socket after its close.
fn observe(h: &Harness, from: usize, closed: &mut BTreeMap<u64, Instant>, clients: &mut [Client]) {
    for (at, out) in &h.outputs[from..] {
        match out {
            Output::Transmit(Transmit::WsSend { transport, frame }) => {
                assert!(
                    !closed.contains_key(&transport.0),
                    "sent {frame:?} on {transport} after it closed\n{}",
                    h.transcript()
                );
                if *frame == Frame::Text(bytes::Bytes::from_static(b"2")) {
                    for c in clients.iter_mut() {
                        if c.ws == Some(transport.0) {
                            c.ping_outstanding = true;
                        }
                    }
                }
            }
            Output::Transmit(Transmit::WsClose { transport, .. }) => {
                closed.insert(transport.0, *at);
                for c in clients.iter_mut() {
                    if c.ws == Some(transport.0) {
                        c.ws = None;
                    }
                }
            }
            _ => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn heartbeat_rules_hold(ops in proptest::collection::vec(op(), 1..60)) {
        // Four clients, room for three: opens past the cap are refused along the way.
        let cfg = EngineConfig { max_sessions: 3, ..config() };
        let limit = cfg.ping_interval_ms + cfg.ping_timeout_ms;
        let mut h = Harness::new(cfg, App::Echo);
        let mut clients: Vec<Client> = (0..4).map(|_| Client::default()).collect();
        let mut closed: BTreeMap<u64, Instant> = BTreeMap::new();
        let mut next_ws = 1u64;
        for op in ops {
            let mark = h.outputs.len();
            match op {
                Op::Open(c) => {
                    let cl = &mut clients[c as usize];
                    if cl.ws.is_none() {
                        cl.ws = Some(next_ws);
                        cl.alive_at = h.now;
                        cl.ping_outstanding = false;
                        next_ws += 1;
                        let ws = cl.ws.unwrap_or_default();
                        h.ws_open(ws, None);
                    }
                }
                Op::Connect(c) => {
                    if let Some(ws) = clients[c as usize].ws { h.ws_text(ws, "40/chat,"); }
                }
                Op::Pong(c) => {
                    let now = h.now;
                    let cl = &mut clients[c as usize];
                    if let Some(ws) = cl.ws {
                        if cl.ping_outstanding {
                            cl.ping_outstanding = false;
                            cl.alive_at = now;
                        }
                        h.ws_text(ws, "3");
                    }
                }
                Op::Message(c) => {
                    if let Some(ws) = clients[c as usize].ws {
                        h.ws_text(ws, r#"42/chat,["message","hi"]"#);
                    }
                }
                Op::Garbage(c, bytes) => {
                    if let Some(ws) = clients[c as usize].ws { h.ws_binary(ws, &bytes); }
                }
                Op::PeerClose(c) => {
                    let now = h.now;
                    let cl = &mut clients[c as usize];
                    if let Some(ws) = cl.ws.take() {
                        closed.insert(ws, now);
                        h.ws_closed(ws);
                    }
                }
                Op::Advance(ms) => h.advance(ms),
            }
            observe(&h, mark, &mut closed, &mut clients);
            prop_assert!(h.engine.sessions_held() <= 3, "{}", h.transcript());
            prop_assert_eq!(h.engine.session_count(), h.engine.recount_live(), "{}", h.transcript());
            // A silent peer is closed by its last sign of life + interval + timeout.
            for cl in &clients {
                if cl.ws.is_some() {
                    prop_assert!(
                        h.now.as_millis() < cl.alive_at.as_millis() + limit,
                        "socket {:?} still open at {} (alive at {})\n{}",
                        cl.ws, h.now, cl.alive_at, h.transcript()
                    );
                }
            }
        }
        // Once everyone is gone and deadlines have passed, nothing is held.
        for c in &mut clients {
            if let Some(ws) = c.ws.take() { h.ws_closed(ws); }
        }
        h.advance(limit + 1);
        prop_assert_eq!(h.engine.sessions_held(), 0);
        prop_assert_eq!(h.engine.timers_armed(), 0);
        let _ = TransportId(0);
    }
}

/// One step of a polling client that may try to upgrade, in any order, including orders a
/// well-behaved client never produces.
#[derive(Clone, Debug)]
enum PollOp {
    /// A new session (a GET without sid).
    Handshake,
    /// A GET on the current session.
    Get,
    /// A POST on the current session, with one of a few bodies.
    Post(u8),
    /// The client gives up one of its outstanding requests.
    Abort(u8),
    /// A probe WebSocket for the current session.
    ProbeOpen,
    /// A text frame on the probe: `2probe`, `5`, a message or a PONG.
    Probe(u8),
    /// The probe socket closes.
    ProbeClose,
    Advance(u64),
}

const POST_BODIES: &[&str] = &[
    "40/chat,",
    r#"42/chat,["message","hi"]"#,
    "3",
    "1",
    "9x",
    "40/chat,\u{1e}42/chat,[\"message\",\"both\"]",
    "42/chat,[\"message\",\"a\"]\u{1e}9\u{1e}42/chat,[\"message\",\"b\"]",
];

const PROBE_FRAMES: &[&str] = &["2probe", "5", r#"42/chat,["message","ws"]"#, "3"];

fn poll_op() -> impl Strategy<Value = PollOp> {
    prop_oneof![
        1 => Just(PollOp::Handshake),
        4 => Just(PollOp::Get),
        3 => (0..POST_BODIES.len() as u8).prop_map(PollOp::Post),
        1 => any::<u8>().prop_map(PollOp::Abort),
        2 => Just(PollOp::ProbeOpen),
        // Mostly the upgrade's own steps, `2probe` and `5`, so that upgrades complete.
        5 => prop_oneof![3 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)]
            .prop_map(PollOp::Probe),
        1 => Just(PollOp::ProbeClose),
        3 => (0u64..120).prop_map(PollOp::Advance),
        1 => (0u64..40_000).prop_map(PollOp::Advance),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Every request is answered at most once, and, unless the client gave it up, exactly
    /// once in the end; no GET is answered 200 once its session has moved to the WebSocket;
    /// and when everything is over, nothing is held.
    #[test]
    fn polling_and_upgrade_rules_hold(ops in proptest::collection::vec(poll_op(), 1..80)) {
        use heartline_core::engine::{Event, Input, Method};
        use heartline_core::RequestId;
        use std::collections::BTreeSet;

        let mut h = Harness::new(config(), App::Echo);
        let mut sid: Option<String> = None;
        let mut next_req = 1u64;
        let mut next_ws = 1u64;
        // The probe socket and the sid it was opened for.
        let mut probe: Option<(u64, String)> = None;
        let mut outstanding: Vec<u64> = Vec::new();
        let mut aborted: BTreeSet<u64> = BTreeSet::new();
        // Each GET on a session, with the session's sid.
        let mut gets: BTreeMap<u64, String> = BTreeMap::new();
        for op in std::iter::once(PollOp::Handshake).chain(ops) {
            match op {
                PollOp::Handshake => {
                    h.http(next_req, Method::Get, support::q("polling", None), "");
                    if let Some((200, _)) = h.response(next_req) {
                        sid = Some(h.last_sid());
                    }
                    next_req += 1;
                }
                PollOp::Get => {
                    if let Some(sid) = sid.as_deref() {
                        gets.insert(next_req, sid.to_owned());
                        outstanding.push(next_req);
                        h.http(next_req, Method::Get, support::q("polling", Some(sid)), "");
                        next_req += 1;
                    }
                }
                PollOp::Post(b) => {
                    if let Some(sid) = sid.as_deref() {
                        outstanding.push(next_req);
                        let body = POST_BODIES[b as usize];
                        h.http(next_req, Method::Post, support::q("polling", Some(sid)), body);
                        next_req += 1;
                    }
                }
                PollOp::Abort(i) => {
                    outstanding.retain(|r| h.response(*r).is_none());
                    if !outstanding.is_empty() {
                        let r = outstanding.remove(i as usize % outstanding.len());
                        aborted.insert(r);
                        h.input(Input::HttpAborted { request: RequestId(r) });
                    }
                }
                PollOp::ProbeOpen => {
                    if let (Some(sid), None) = (sid.as_deref(), &probe) {
                        h.ws_open(next_ws, Some(sid));
                        probe = Some((next_ws, sid.to_owned()));
                        next_ws += 1;
                    }
                }
                PollOp::Probe(f) => {
                    if let Some((ws, probe_sid)) = probe.as_ref().map(|(ws, s)| (*ws, s.clone())) {
                        // GETs of the probed session still held when `5` arrives.
                        let held: Vec<u64> = gets
                            .iter()
                            .filter(|(r, s)| **s == probe_sid && h.response(**r).is_none() && !aborted.contains(*r))
                            .map(|(r, _)| *r)
                            .collect();
                        let mark = h.outputs.len();
                        h.ws_text(ws, PROBE_FRAMES[f as usize]);
                        let upgraded = h.outputs[mark..]
                            .iter()
                            .any(|(_, o)| matches!(o, Output::Event(Event::Upgraded { .. })));
                        if upgraded {
                            for r in held {
                                prop_assert_eq!(
                                    h.response(r).map(|a| a.0), Some(400),
                                    "GET {} held when 5 arrived\n{}", r, h.transcript()
                                );
                            }
                        }
                    }
                }
                PollOp::ProbeClose => {
                    if let Some((ws, _)) = probe.take() {
                        h.ws_closed(ws);
                    }
                }
                PollOp::Advance(ms) => h.advance(ms),
            }
            // A WebSocket the engine closed is gone for the client too.
            if let Some(ws) = probe.as_ref().map(|(ws, _)| *ws) {
                let closed = h.outputs.iter().any(|(_, o)| matches!(o,
                    Output::Transmit(Transmit::WsClose { transport, .. }) if transport.0 == ws));
                if closed {
                    probe = None;
                }
            }
            prop_assert_eq!(h.engine.session_count(), h.engine.recount_live(), "{}", h.transcript());
        }
        // The client leaves: its socket closes, time passes beyond every deadline.
        if let Some((ws, _)) = probe.take() {
            h.ws_closed(ws);
        }
        let cfg = config();
        h.advance(cfg.ping_interval_ms + cfg.ping_timeout_ms + cfg.upgrade_timeout_ms + 1);

        let mut answers: BTreeMap<u64, usize> = BTreeMap::new();
        let mut sid_of = BTreeMap::new();
        let mut upgraded = BTreeSet::new();
        for (_, out) in &h.outputs {
            match out {
                Output::Event(Event::Opened { session, sid, .. }) => {
                    sid_of.insert(*session, sid.to_string());
                }
                Output::Event(Event::Upgraded { session }) => {
                    if let Some(sid) = sid_of.get(session) {
                        upgraded.insert(sid.clone());
                    }
                }
                Output::Transmit(Transmit::HttpResponse { request, status, .. }) => {
                    *answers.entry(request.0).or_default() += 1;
                    let after_upgrade = gets.get(&request.0).is_some_and(|sid| upgraded.contains(sid));
                    prop_assert!(
                        !(after_upgrade && *status == 200),
                        "GET {} answered 200 after its session's upgrade\n{}", request.0, h.transcript()
                    );
                }
                _ => {}
            }
        }
        for r in 1..next_req {
            let n = answers.get(&r).copied().unwrap_or(0);
            prop_assert!(n <= 1, "request {} answered {} times\n{}", r, n, h.transcript());
            if !aborted.contains(&r) {
                prop_assert_eq!(n, 1, "request {} never answered\n{}", r, h.transcript());
            }
        }
        prop_assert_eq!(h.engine.sessions_held(), 0, "{}", h.transcript());
        prop_assert_eq!(h.engine.timers_armed(), 0, "{}", h.transcript());
    }
}
