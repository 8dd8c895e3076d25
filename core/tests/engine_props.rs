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
