//! Protocol transcripts of the engine, as insta snapshots: time, direction, connection,
//! packet. `->` is what the network handed the engine, `<-` what the engine transmitted,
//! `==` what it told the application, `..` a deadline firing.

mod support;

use heartline_core::engine::{EngineConfig, Input, Method};
use heartline_core::{RequestId, TransportId};
use support::{config, q, App, Harness};

fn echo() -> Harness {
    Harness::new(config(), App::Echo)
}

/// Opens a polling session, connects `/chat` and fetches the CONNECT's answer, with
/// requests 1 to 3; returns the session's sid.
fn polling_connected(h: &mut Harness) -> String {
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Post, q("polling", Some(&sid)), "40/chat,");
    h.http(3, Method::Get, q("polling", Some(&sid)), "");
    sid
}

/// The application ends the one live session, as the gateway does on a replacement.
fn server_replaces(h: &mut Harness) {
    use heartline_core::engine::CloseReason;
    let session = h.engine.live_sessions(1)[0];
    h.engine
        .disconnect(h.now, session, CloseReason::Replaced)
        .expect("live");
    h.drain();
}

/// A polling session connected (requests 1 to 3), a GET held (4), and a WebSocket probe
/// (`ws10`) answered, which releases that GET; returns the sid.
fn probe_answered(h: &mut Harness) -> String {
    let sid = polling_connected(h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.ws_open(10, Some(&sid));
    h.ws_text(10, "2probe");
    sid
}

#[test]
fn websocket_handshake_with_namespace_connect() {
    let mut h = echo();
    h.ws_open(1, None);
    h.advance(5);
    h.ws_text(1, r#"40/chat,{"token":"abc"}"#);
    h.ws_text(1, r#"42/chat,7["message",1,"2",{"3":[true]}]"#);
    insta::assert_snapshot!(h.transcript());
    assert!(h.closes().is_empty());
}

#[test]
fn ping_pong_cycle() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    for _ in 0..2 {
        h.advance(25_000);
        h.advance(150);
        h.ws_text(1, "3");
    }
    h.advance(24_999);
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.ws_sent(1).iter().filter(|f| *f == "2").count(), 2);
    assert!(h.closes().is_empty());
}

#[test]
fn ping_timeout() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    h.advance(60_000);
    insta::assert_snapshot!(h.transcript());
    let closes = h.closes();
    assert_eq!(closes.len(), 1);
    assert_eq!(closes[0].2, "ping_timeout");
    // Closed exactly at ping_interval + ping_timeout after the last sign of life.
    assert_eq!(closes[0].0.as_millis(), 45_000);
}

#[test]
fn oversize_frame() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    h.ws_open(2, None);
    h.ws_text(2, "40/chat,");
    let big = format!(r#"42/chat,["message","{}"]"#, "x".repeat(1_000));
    h.ws_text(1, &big);
    h.ws_text(2, r#"42/chat,["message","still here"]"#);
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.closes().len(), 1, "only the offender is closed");
}

#[test]
fn malformed_packet() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    h.ws_text(1, "42/chat,{}");
    h.ws_open(2, None);
    h.ws_text(2, "4abc");
    h.ws_open(3, None);
    h.ws_text(3, "x");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.closes().len(), 3);
    assert!(h.closes().iter().all(|c| c.2 == "protocol_error"));
}

#[test]
fn polling_handshake_then_upgrade() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.ws_open(7, Some(&sid));
    h.ws_text(7, "2probe");
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    h.advance(49);
    assert_eq!(h.response(5), None, "held for a moment");
    h.advance(1);
    h.ws_text(7, "5");
    h.ws_text(7, r#"42/chat,["message","over websocket"]"#);
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(
        h.response(4),
        Some((200, "6".into())),
        "held GET released by the probe"
    );
    assert_eq!(
        h.response(5),
        Some((200, "6".into())),
        "GET during upgrade gets a noop after 50 ms"
    );
    assert_eq!(h.response(6).map(|r| r.0), Some(400), "polling is over");
    assert!(h.closes().is_empty());
}

/// A client sends `5` only once its polling has paused, so a GET the engine holds when `5`
/// arrives was sent after it (on another connection, handled first): it is refused like
/// any GET after the upgrade. Data queued while a GET is held during the upgrade still goes
/// out at once.
#[test]
fn a_get_handled_just_before_the_upgrade_completes_is_refused() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.ws_open(7, Some(&sid));
    h.ws_text(7, "2probe");
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.http(
        5,
        Method::Post,
        q("polling", Some(&sid)),
        r#"42/chat,["message","echoed"]"#,
    );
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    h.advance(10);
    h.ws_text(7, "5");
    h.ws_text(7, r#"42/chat,["message","over websocket"]"#);
    insta::assert_snapshot!(h.transcript());
    let echoed = h.response(4).expect("answered with the echo");
    assert_eq!(echoed.0, 200);
    assert!(echoed.1.contains("message-back"), "{echoed:?}");
    assert_eq!(
        h.response(6).map(|r| r.0),
        Some(400),
        "held when 5 arrived: refused"
    );
    assert!(h.closes().is_empty());
    assert!(
        h.ws_sent(7).iter().any(|f| f.contains("message-back")),
        "{:?}",
        h.ws_sent(7)
    );
}

/// Packets that change nothing are tolerated, a hundred between two PINGs; a client that
/// loops on them is ended, whichever of them it sends.
#[test]
fn a_client_looping_on_packets_that_do_nothing_is_ended() {
    use heartline_core::engine::MAX_IDLE_PACKETS;
    for (ws, stray) in [(1, "6"), (2, "3"), (3, "41/nowhere,"), (4, "40/nowhere,")] {
        let mut h = echo();
        h.ws_open(ws, None);
        h.ws_text(ws, "40/chat,");
        for _ in 0..MAX_IDLE_PACKETS {
            h.ws_text(ws, stray);
        }
        assert!(h.closes().is_empty(), "{stray}: tolerated");
        // A PING starts the count again.
        h.advance(25_000);
        assert_eq!(h.ws_sent(ws).last().map(String::as_str), Some("2"));
        h.ws_text(ws, "3");
        for _ in 0..MAX_IDLE_PACKETS {
            h.ws_text(ws, stray);
        }
        assert!(h.closes().is_empty(), "{stray}: tolerated after a PING");
        h.ws_text(ws, stray);
        let closes = h.closes();
        assert_eq!(closes.len(), 1, "{stray}");
        assert_eq!(closes[0].2, "protocol_error", "{stray}");
    }
}

/// Packets the reference server tolerates from a client: an upgrade finished with a
/// payload (`52`, as the BestHTTP client sends it), and later NOOP and UPGRADE packets on
/// the open session, which change nothing.
#[test]
fn upgrade_with_a_payload_and_stray_client_packets_are_tolerated() {
    let mut h = echo();
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Post, q("polling", Some(&sid)), "40/chat,");
    h.ws_open(7, Some(&sid));
    h.ws_text(7, "2probe");
    h.ws_text(7, "52");
    for stray in ["6", "6x", "5"] {
        h.ws_text(7, stray);
    }
    h.ws_text(7, r#"42/chat,["message","still here"]"#);
    insta::assert_snapshot!(h.transcript());
    assert!(h.closes().is_empty(), "{:?}", h.closes());
    assert!(h.ws_sent(7).iter().any(|f| f.contains("still here")));
}

#[test]
fn upgrade_that_times_out() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.ws_open(7, Some(&sid));
    h.ws_text(7, "2probe");
    h.advance(10_000);
    h.http(
        4,
        Method::Post,
        q("polling", Some(&sid)),
        r#"42/chat,["message","still polling"]"#,
    );
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert!(h.ws_closed_by_server(7));
    assert!(
        h.closes().is_empty(),
        "the session survives a failed upgrade"
    );
    assert!(h.response(5).is_some_and(|r| r.1.contains("still polling")));
}

#[test]
fn handshake_timeout_without_namespace() {
    let mut h = echo();
    h.ws_open(1, None);
    h.advance(10_000);
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.closes()[0].2, "handshake_timeout");
    assert_eq!(h.closes()[0].0.as_millis(), 10_000);
}

#[test]
fn a_session_that_leaves_its_namespace_has_the_handshake_timeout_again() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    h.advance(1_000);
    h.ws_text(1, "41/chat,");
    // Its pings still answered, it would otherwise be held for good.
    h.advance(9_999);
    h.ws_text(1, "3");
    assert!(h.closes().is_empty());
    h.advance(1);
    assert_eq!(h.closes()[0].2, "handshake_timeout");
    assert_eq!(h.closes()[0].0.as_millis(), 11_000);

    // Connecting again in time keeps it.
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40/chat,");
    h.ws_text(1, "41/chat,");
    h.advance(5_000);
    h.ws_text(1, "40/chat,");
    h.advance(20_000);
    h.ws_text(1, "3");
    h.advance(20_000);
    assert!(h.closes().is_empty(), "{:?}", h.closes());
}

#[test]
fn handshakes_past_max_sessions_are_refused_until_one_ends() {
    let mut h = Harness::new(
        EngineConfig {
            max_sessions: 2,
            ..config()
        },
        App::Echo,
    );
    h.http(1, Method::Get, q("polling", None), "");
    h.ws_open(1, None);
    // Full: a polling handshake gets 503, a WebSocket one is closed (1013).
    h.http(2, Method::Get, q("polling", None), "");
    h.ws_open(2, None);
    assert_eq!(h.response(1).map(|r| r.0), Some(200));
    assert_eq!(
        h.response(2),
        Some((503, r#"{"code":4,"message":"Too many sessions"}"#.into()))
    );
    assert!(h.ws_closed_by_server(2));
    assert!(!h.ws_closed_by_server(1));
    assert_eq!(h.engine.sessions_refused(), 2);
    assert_eq!(h.engine.session_count(), 2);
    // The sessions already open carry on; once one ends, a handshake gets in again.
    h.ws_text(1, "40/chat,");
    h.ws_closed(1);
    h.http(3, Method::Get, q("polling", None), "");
    assert_eq!(h.response(3).map(|r| r.0), Some(200));
    assert_eq!(h.engine.sessions_refused(), 2);
    insta::assert_snapshot!(h.transcript());
}

#[test]
fn unknown_namespace_and_client_disconnect() {
    let mut h = echo();
    h.ws_open(1, None);
    h.ws_text(1, "40");
    h.ws_text(1, "40/random");
    h.ws_text(1, "40/chat");
    h.ws_text(1, "41/chat,");
    h.ws_text(1, r#"42/chat,["message","after leaving"]"#);
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.closes()[0].2, "protocol_error");
}

#[test]
fn polling_errors_and_client_close() {
    let mut h = echo();
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Post, q("polling", None), "");
    h.http(3, Method::Get, q("polling", Some("nope")), "");
    let mut bad = q("polling", None);
    bad.eio = Some("3".into());
    h.http(4, Method::Get, bad, "");
    h.http(5, Method::Get, q("carrier-pigeon", None), "");
    h.http(
        6,
        Method::Post,
        q("polling", Some(&sid)),
        &"4".repeat(1_001),
    );
    h.http(7, Method::Get, q("polling", Some(&sid)), "");
    h.http(8, Method::Post, q("polling", Some(&sid)), "1");
    h.http(9, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(6).map(|r| r.0), Some(413));
    assert_eq!(h.response(7), Some((200, "6".into())));
    assert_eq!(h.response(9).map(|r| r.0), Some(400));
}

/// A held GET its client gives up ends the session as a transport error, as the
/// reference server counts a poll closed prematurely; a CLOSE packet is a client close.
#[test]
fn an_abandoned_poll_is_a_transport_error_and_a_close_packet_a_client_close() {
    let mut h = echo();
    polling_connected(&mut h);
    let sid = h.last_sid();
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.input(Input::HttpAborted {
        request: RequestId(4),
    });
    h.http(5, Method::Get, q("polling", None), "");
    let other = h.last_sid();
    h.http(6, Method::Post, q("polling", Some(&other)), "1");
    let reasons: Vec<&str> = h.closes().into_iter().map(|(_, _, r)| r).collect();
    assert_eq!(reasons, ["transport_error", "client_close"]);
}

/// A POST is handled packet by packet, as a WebSocket's frames are: the packets before a
/// bad one take effect, then the POST is answered 400 and the session ends; a held GET is
/// released with the session's end.
#[test]
fn polling_post_with_a_bad_packet_delivers_the_ones_before_it() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.http(
        5,
        Method::Post,
        q("polling", Some(&sid)),
        "42/chat,[\"message\",\"kept\"]\u{1e}9\u{1e}42/chat,[\"message\",\"never\"]",
    );
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    let t = h.transcript();
    assert!(
        t.contains(r#"== s1 packet "42/chat,[\"message\",\"kept\"]""#),
        "the packet before the bad one is handled: {t}"
    );
    assert_eq!(
        t.matches("== s1 packet").count(),
        1,
        "nothing after the bad one is handled: {t}"
    );
    assert_eq!(h.response(5).map(|r| r.0), Some(400));
    assert_eq!(h.response(6).map(|r| r.0), Some(400), "the session is over");
    assert_eq!(h.engine.sessions_held(), 0);
}

/// A session the server ended keeps its last packets for the client's next GET. A POST
/// that crosses them (the client answering the event it just received, say) is taken and
/// dropped, as the reference server does: a 400 would make the client report a transport
/// error and reconnect, where the DISCONNECT waiting for it tells it to stay away.
#[test]
fn a_post_to_a_session_the_server_ended_is_taken_and_dropped() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    server_replaces(&mut h);
    h.http(
        5,
        Method::Post,
        q("polling", Some(&sid)),
        "42/chat,[\"message\",\"too late\"]",
    );
    // Its CLOSE not yet fetched: owed to the client.
    assert_eq!(h.engine.sessions_owing(), 1);
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(4), Some((200, "41/chat,".into())));
    assert_eq!(h.response(5), Some((200, "ok".into())));
    assert!(!h.transcript().contains("== s1 packet"), "not handed over");
    assert_eq!(h.response(6), Some((200, "1".into())));
    assert_eq!(h.engine.sessions_held(), 0);
    // Past that, the session is unknown.
    h.http(7, Method::Post, q("polling", Some(&sid)), "3");
    assert_eq!(h.response(7).map(|r| r.0), Some(400));
}

/// A session the server ends after answering an upgrade probe: the client may already
/// have paused polling for the probe, so its last packets go out there when its `5`
/// comes (and the socket is closed then), as the reference server does; else the client
/// would see only the socket close, and come back.
#[test]
fn a_session_ended_while_its_upgrade_finishes_says_its_last_on_the_new_socket() {
    let mut h = echo();
    let sid = probe_answered(&mut h);
    assert_eq!(h.response(4), Some((200, "6".into())));
    server_replaces(&mut h);
    assert!(
        !h.ws_closed_by_server(10),
        "the probe is kept for the client's 5"
    );
    h.advance(40);
    h.ws_text(10, "5");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.ws_sent(10), ["3probe", "41/chat,"]);
    assert!(h.ws_closed_by_server(10));
    assert_eq!(h.engine.sessions_held(), 0);
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(5).map(|r| r.0), Some(400));

    // A client that never sends its 5: the probe is closed when the session is let go.
    let mut h = echo();
    probe_answered(&mut h);
    server_replaces(&mut h);
    h.advance(config().ping_timeout_ms);
    assert!(h.ws_closed_by_server(10));
    assert_eq!(h.engine.sessions_held(), 0);
}

#[test]
fn client_close_posted_before_its_get_arrives() {
    // The client's GET and its CLOSE POST travel on separate connections; the POST may
    // arrive first. The GET still gets the NOOP a held one would have had, then the
    // session is gone.
    let mut h = echo();
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Post, q("polling", Some(&sid)), "1");
    // Held for that GET, but owing its client nothing: a shutdown need not wait for it.
    assert_eq!(
        (h.engine.sessions_held(), h.engine.sessions_owing()),
        (1, 0)
    );
    h.http(3, Method::Get, q("polling", Some(&sid)), "");
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    h.http(5, Method::Get, q("polling", None), "");
    let other = h.last_sid();
    h.http(6, Method::Post, q("polling", Some(&other)), "1");
    h.advance(20_000);
    h.http(7, Method::Get, q("polling", Some(&other)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(2), Some((200, "ok".into())));
    assert_eq!(h.response(3), Some((200, "6".into())));
    assert_eq!(h.response(4).map(|r| r.0), Some(400));
    assert_eq!(
        h.response(7).map(|r| r.0),
        Some(400),
        "a GET that never comes is not waited for past ping_timeout"
    );
    assert_eq!(h.engine.sessions_held(), 0);
}

/// A CONNECT with the client's close already in hand behind it opens nothing: on a
/// WebSocket the driver says so (`WsClosing`), over polling the CLOSE is in the same POST.
#[test]
fn connect_with_its_close_behind_opens_nothing() {
    let mut h = echo();
    h.ws_open(1, None);
    h.input(Input::WsClosing {
        transport: TransportId(1),
    });
    h.ws_text(1, "40/chat,");
    h.ws_closed(1);
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Post, q("polling", Some(&sid)), "40/chat,\u{1e}1");
    // Without the close behind it, the same CONNECT connects (the control).
    h.ws_open(2, None);
    h.ws_text(2, "40/chat,");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(
        h.ws_sent(1).len(),
        1,
        "only the open packet: {:?}",
        h.ws_sent(1)
    );
    assert_eq!(h.response(2), Some((200, "ok".into())));
    assert!(h
        .ws_sent(2)
        .iter()
        .any(|f| f.starts_with("40/chat,{\"sid\"")));
    let connects = h.transcript().matches("connect /chat").count();
    assert_eq!(connects, 1, "only the control connects");
}

#[test]
fn overlapping_polling_get_ends_the_session() {
    let mut h = echo();
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Get, q("polling", Some(&sid)), "");
    h.http(3, Method::Get, q("polling", Some(&sid)), "");
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(2), Some((200, "1".into())));
    assert_eq!(h.response(3).map(|r| r.0), Some(400));
    assert_eq!(h.response(4).map(|r| r.0), Some(400));
}

#[test]
fn a_post_overlapping_another_ends_the_session() {
    let mut h = echo();
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(2, Method::Get, q("polling", Some(&sid)), "");
    // The driver was still reading the first POST's body when the second came.
    h.input(Input::HttpPostOverlap {
        request: RequestId(3),
        query: q("polling", Some(&sid)),
    });
    // The first POST, read in full afterwards, finds the session gone.
    h.http(4, Method::Post, q("polling", Some(&sid)), "40/chat,");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(2), Some((200, "1".into())));
    assert_eq!(h.response(3).map(|r| r.0), Some(400));
    assert_eq!(h.response(4).map(|r| r.0), Some(400));
    assert_eq!(h.engine.sessions_held(), 0);
}

#[test]
fn a_post_overlapping_another_on_an_ended_session_is_taken_and_dropped() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    server_replaces(&mut h);
    // The session has ended, its DISCONNECT waiting for the next GET: a 400 here would
    // send the client reconnecting, where the DISCONNECT says to stay away.
    h.input(Input::HttpPostOverlap {
        request: RequestId(4),
        query: q("polling", Some(&sid)),
    });
    assert_eq!(h.response(4), Some((200, "ok".into())));
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(5), Some((200, "41/chat,".into())));
    // An overlap that names the wrong transport is refused as a POST would be.
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.input(Input::HttpPostOverlap {
        request: RequestId(4),
        query: q("websocket", Some(&sid)),
    });
    assert_eq!(h.response(4).map(|r| r.0), Some(400));
    assert_eq!(h.engine.sessions_held(), 1, "the session goes on");
}

#[test]
fn server_disconnect_over_polling_lingers_until_fetched() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    server_replaces(&mut h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    // The DISCONNECT travels without the CLOSE: socket.io-client handles a payload's
    // CLOSE before its packets, and would report `transport close` and come back.
    assert_eq!(h.response(4), Some((200, "41/chat,".into())));
    assert_eq!(h.engine.sessions_held(), 1, "lingers for its CLOSE");
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    insta::assert_snapshot!(h.transcript());
    assert_eq!(h.response(5), Some((200, "1".into())));
    assert_eq!(h.response(6).map(|r| r.0), Some(400));
    assert_eq!(h.engine.sessions_held(), 0);
}

#[test]
fn a_disconnect_with_a_get_held_answers_it_and_lingers_for_the_close() {
    let mut h = echo();
    let sid = polling_connected(&mut h);
    h.http(4, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(4), None, "held");
    server_replaces(&mut h);
    assert_eq!(h.response(4), Some((200, "41/chat,".into())));
    // The client, told to stay away, posts its own CLOSE and polls no more: the session
    // is let go at the linger's end.
    h.http(5, Method::Post, q("polling", Some(&sid)), "1");
    assert_eq!(h.response(5), Some((200, "ok".into())));
    assert_eq!(h.engine.sessions_held(), 1);
    h.advance(config().ping_timeout_ms);
    assert_eq!(h.engine.sessions_held(), 0);
}

#[test]
fn a_post_of_thousands_of_packets_within_max_payload_is_handled_whole() {
    let mut cfg = config();
    cfg.max_payload_bytes = 1_000_000;
    let mut h = Harness::new(cfg, App::Echo);
    let sid = polling_connected(&mut h);
    let body = vec!["42/chat,[\"message\",1]"; 5_000].join("\u{1e}");
    assert!(body.len() < 1_000_000);
    h.http(4, Method::Post, q("polling", Some(&sid)), &body);
    assert_eq!(h.response(4).map(|r| r.0), Some(200));
    assert_eq!(h.transcript().matches("== s1 packet").count(), 5_000);
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(5).map(|r| r.0), Some(200), "the session goes on");
    assert_eq!(h.engine.sessions_held(), 1);
}

#[test]
fn one_reply_larger_than_the_polling_buffer_is_taken_into_an_empty_queue() {
    let mut cfg = config();
    cfg.max_buffered_bytes = 100;
    let mut h = Harness::new(cfg, App::Echo);
    let sid = polling_connected(&mut h);
    let big = format!("42/chat,[\"message\",\"{}\"]", "x".repeat(300));
    h.http(4, Method::Post, q("polling", Some(&sid)), &big);
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    let (status, body) = h.response(5).expect("answered");
    assert_eq!(status, 200);
    assert!(body.contains("message-back"), "{body}");
    assert_eq!(h.engine.sessions_held(), 1, "not a slow consumer");
    assert_eq!(h.engine.polling_overflows(), 0);
    // Behind a reply not yet fetched, the bound holds.
    h.http(
        6,
        Method::Post,
        q("polling", Some(&sid)),
        &format!("{big}\u{1e}{big}"),
    );
    assert_eq!(h.engine.session_count(), 0, "two unfetched replies are");
    assert_eq!(
        h.engine.polling_overflows(),
        1,
        "counted as a slow consumer"
    );
    // Its client's next GET gets the CLOSE, its replies dropped, and the session is gone.
    h.http(7, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(7), Some((200, "1".to_owned())));
    assert_eq!(h.engine.sessions_held(), 0);
}

/// A POST whose packets decode as Engine.IO but break Socket.IO (an attachment with no
/// binary event before it) is answered 200 and ends the session; the client's next GET
/// gets the CLOSE, as from the reference server, not an unknown sid; the one after, 400.
#[test]
fn a_session_broken_off_for_its_post_gives_its_next_get_the_close() {
    let mut h = Harness::new(config(), App::Echo);
    let sid = polling_connected(&mut h);
    h.http(4, Method::Post, q("polling", Some(&sid)), "bAQIDBA==");
    assert_eq!(h.response(4).map(|r| r.0), Some(200));
    assert_eq!(h.engine.session_count(), 0, "the session ended");
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(5), Some((200, "1".to_owned())));
    h.http(6, Method::Get, q("polling", Some(&sid)), "");
    assert_eq!(h.response(6).map(|r| r.0), Some(400));
    assert_eq!(h.engine.sessions_held(), 0);
}

#[test]
fn packets_of_one_post_may_cross_the_polling_buffer_together() {
    let mut cfg = config();
    cfg.max_buffered_bytes = 100;
    let mut h = Harness::new(cfg, App::Echo);
    let sid = polling_connected(&mut h);
    let small = format!("42/chat,[\"message\",\"{}\"]", "x".repeat(15));
    // Three replies of about 45 bytes each, queued one after another while the queue was
    // under 100 bytes: together over it, and still not a client that does not fetch.
    h.http(
        4,
        Method::Post,
        q("polling", Some(&sid)),
        &[small.as_str(); 3].join("\u{1e}"),
    );
    assert_eq!(h.engine.sessions_held(), 1, "not a slow consumer");
    h.http(5, Method::Get, q("polling", Some(&sid)), "");
    let (status, body) = h.response(5).expect("answered");
    assert_eq!(status, 200);
    assert_eq!(body.matches("message-back").count(), 3, "{body}");
    // A fourth, behind three not fetched, meets the full queue.
    h.http(
        6,
        Method::Post,
        q("polling", Some(&sid)),
        &[small.as_str(); 4].join("\u{1e}"),
    );
    assert_eq!(h.engine.session_count(), 0, "four unfetched replies are");
    assert_eq!(
        h.engine.sessions_held(),
        1,
        "its CLOSE waits for the next GET"
    );
}

#[test]
fn plain_engine_io_echo_without_socketio() {
    let mut cfg = config();
    cfg.socketio = false;
    let mut h = Harness::new(cfg, App::RawEcho);
    h.ws_open(1, None);
    h.ws_text(1, "4hello");
    h.ws_binary(1, &[1, 2, 3, 4]);
    h.http(1, Method::Get, q("polling", None), "");
    let sid = h.last_sid();
    h.http(
        2,
        Method::Post,
        q("polling", Some(&sid)),
        "4test1\u{1e}4test2\u{1e}bAQIDBA==",
    );
    h.http(3, Method::Get, q("polling", Some(&sid)), "");
    h.advance(10_000);
    insta::assert_snapshot!(h.transcript());
    assert_eq!(
        h.ws_sent(1)[1..],
        ["4hello".to_owned(), "<4 bytes>".to_owned()]
    );
    assert_eq!(
        h.response(3),
        Some((200, "4test1\u{1e}4test2\u{1e}bAQIDBA==".into()))
    );
    assert!(
        h.closes().is_empty(),
        "no namespace deadline without Socket.IO"
    );
}

/// A PING that meets a polling buffer full of what cannot be shed ends the session as a
/// slow consumer, and no PONG is then awaited: the ended session keeps its linger
/// deadline only.
#[test]
fn a_ping_that_ends_a_polling_session_arms_no_pong_deadline() {
    use heartline_core::engine::Timer;
    let mut cfg = config();
    cfg.max_buffered_bytes = 100;
    let ping_interval = cfg.ping_interval_ms;
    let mut h = Harness::new(cfg, App::Echo);
    let sid = polling_connected(&mut h);
    let session = h.engine.live_sessions(1)[0];
    // Three replies queued together, over the bound and still not a slow consumer.
    let small = format!("42/chat,[\"message\",\"{}\"]", "x".repeat(15));
    h.http(
        4,
        Method::Post,
        q("polling", Some(&sid)),
        &[small.as_str(); 3].join("\u{1e}"),
    );
    assert_eq!(h.engine.sessions_held(), 1, "not a slow consumer yet");
    // The PING behind them meets the full queue.
    h.advance(ping_interval);
    assert_eq!(h.engine.session_count(), 0, "ended as a slow consumer");
    assert_eq!(h.engine.polling_overflows(), 1);
    assert_eq!(h.engine.deadline(session, Timer::PongDeadline), None);
    assert!(h.engine.deadline(session, Timer::Linger).is_some());
}
