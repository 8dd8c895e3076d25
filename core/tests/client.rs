//! The client state machine driven by hand, frame by frame, where the simulator does not
//! go: the application closing and reopening a client, connecting during a backoff, and
//! rejoin bursts (the joins kept in flight, the server turning them away).

use heartline_core::client::{
    Client, ClientConfig, Notice, Output, SendError, Status, MAX_JOINS_IN_FLIGHT,
};
use heartline_core::codec::Frame;
use heartline_core::Instant;
use serde_json::{json, Value};

struct Driven {
    client: Client,
    now: Instant,
    out: Vec<Output>,
}

impl Driven {
    fn new() -> Self {
        Driven {
            client: Client::new(ClientConfig::default()),
            now: Instant::from_millis(1_000),
            out: vec![],
        }
    }

    fn take(&mut self) -> Vec<Output> {
        while let Some(o) = self.client.poll_output() {
            self.out.push(o);
        }
        std::mem::take(&mut self.out)
    }

    fn frame(&mut self, text: &str) {
        self.client
            .handle_frame(self.now, &Frame::text(text.to_owned()));
    }

    /// The server's open packet and namespace CONNECT: the client is connected.
    fn server_accepts(&mut self) {
        self.frame(r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
        self.frame(r#"40/chat,{"sid":"x"}"#);
        assert_eq!(self.client.status(), &Status::Connected);
    }

    fn ack(&mut self, id: u64, reply: Value) {
        self.frame(&format!("43/chat,{id}{}", json!([reply])));
    }

    fn advance_to(&mut self, ms: u64) {
        self.now = Instant::from_millis(ms);
        self.client.handle_timeout(self.now);
    }

    /// A client that joined `c0`..`c{n-1}` and then connected; and those conversations.
    fn connected_in(n: usize) -> (Self, Vec<String>) {
        let mut d = Driven::new();
        let convs: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
        for c in &convs {
            d.client.join(d.now, c);
        }
        d.client.connect(d.now);
        d.server_accepts();
        (d, convs)
    }

    /// The connection is lost; the client reconnects when its backoff is due, once.
    fn reconnect(&mut self) {
        self.client.handle_closed(self.now);
        let due = self
            .client
            .poll_timeout()
            .expect("a reconnection is scheduled");
        self.advance_to(due.as_millis());
        assert_eq!(opens(&self.take()), 1);
        self.server_accepts();
    }

    /// Answers a join as served, with nothing missed.
    fn serve_join(&mut self, id: u64, conv: &str) {
        self.ack(
            id,
            json!({"ok": true, "conversationId": conv, "lastSeq": 0, "missed": []}),
        );
    }

    /// Serves `in_flight` and every join sent after them, last first; the conversations
    /// served, in that order.
    fn serve_every_join(&mut self, mut in_flight: Vec<(u64, String)>) -> Vec<String> {
        let mut served = vec![];
        while let Some((id, conv)) = in_flight.pop() {
            self.serve_join(id, &conv);
            served.push(conv);
            in_flight.extend(joins_sent(&self.take()));
        }
        served
    }
}

/// The `(ack id, event, payload)` of each Socket.IO event sent.
fn sent_events(outputs: &[Output]) -> Vec<(Option<u64>, String, Value)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(f) => f.as_text().and_then(|t| t.strip_prefix("42/chat,")),
            _ => None,
        })
        .map(|rest| {
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            let id = rest[..digits].parse().ok();
            let v: Value = serde_json::from_str(&rest[digits..]).expect("event JSON");
            (id, v[0].as_str().unwrap_or("").to_owned(), v[1].clone())
        })
        .collect()
}

/// The tempIds acknowledged among `outputs`, in order.
fn acked(outputs: Vec<Output>) -> Vec<String> {
    outputs
        .into_iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::Acked { temp_id, .. }) => Some(temp_id),
            _ => None,
        })
        .collect()
}

fn opens(outputs: &[Output]) -> usize {
    outputs.iter().filter(|o| matches!(o, Output::Open)).count()
}

#[test]
fn a_send_from_before_a_disconnect_is_sent_again_and_acks_do_not_cross() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.server_accepts();
    let a = d.client.send_message(d.now, "c1", "first").expect("room");
    let first = sent_events(&d.take());
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, Some(0));
    // The application closes the client and opens it again before A was acknowledged.
    d.client.disconnect(d.now);
    d.client.connect(d.now);
    d.server_accepts();
    let b = d.client.send_message(d.now, "c1", "second").expect("room");
    let again = sent_events(&d.take());
    let temp_ids: Vec<(Option<u64>, &str)> = again
        .iter()
        .map(|(id, _, p)| (*id, p["tempId"].as_str().unwrap_or("")))
        .collect();
    // A goes again on the new connection, then B, with ids of the new connection.
    assert_eq!(temp_ids, [(Some(0), a.as_str()), (Some(1), b.as_str())]);
    d.ack(
        1,
        json!({"ok": true, "message": {"tempId": b}, "duplicate": false}),
    );
    let acked = acked(d.take());
    assert_eq!(acked, [b]);
    assert_eq!(d.client.outbox_len(), 1, "A still waits for its own ack");
}

#[test]
fn connecting_during_a_backoff_opens_one_transport() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.server_accepts();
    d.client.handle_closed(d.now);
    assert!(matches!(d.client.status(), Status::Reconnecting { .. }));
    let due = d
        .client
        .poll_timeout()
        .expect("a reconnection is scheduled");
    d.take();
    d.client.connect(d.now);
    assert_eq!(opens(&d.take()), 1);
    d.server_accepts();
    d.advance_to(due.as_millis() + 1);
    assert_eq!(
        opens(&d.take()),
        0,
        "the old backoff does not open a second transport"
    );
}

#[test]
fn joins_turned_away_by_the_budget_come_back_one_refill_apart() {
    let (mut d, convs) = Driven::connected_in(5);
    let joins = sent_events(&d.take());
    let refused = json!({"ok": false, "error": "Rate limit exceeded", "code": "rate_limited", "retryAfterMs": 50});
    assert_eq!(joins.len(), MAX_JOINS_IN_FLIGHT);
    for (id, _, _) in &joins {
        d.ack(id.expect("join asks for an ack"), refused.clone());
    }
    // A join turned away keeps its place while it waits: the fifth does not go into a
    // budget that is spent.
    assert!(sent_events(&d.take()).is_empty());
    // One every 50 ms, not four at once every 50 ms; the fifth once one is served.
    let start = d.now.as_millis();
    let mut resent = vec![];
    for step in 1..=6 {
        d.advance_to(start + step * 50);
        for (id, event, payload) in sent_events(&d.take()) {
            assert_eq!(event, "conversation:join");
            let conv = payload["conversationId"].as_str().unwrap_or("").to_owned();
            d.serve_join(id.expect("join asks for an ack"), &conv);
            resent.push((step, conv));
        }
    }
    let steps: Vec<u64> = resent.iter().map(|(s, _)| *s).collect();
    assert_eq!(steps, [1, 2, 2, 3, 4]);
    let mut names: Vec<String> = resent.into_iter().map(|(_, c)| c).collect();
    names.sort();
    assert_eq!(names, convs);
}

/// Ack ids of the joins in `outputs`, with their conversations.
fn joins_sent(outputs: &[Output]) -> Vec<(u64, String)> {
    sent_events(outputs)
        .into_iter()
        .filter(|(_, event, _)| event == "conversation:join")
        .map(|(id, _, p)| {
            let conv = p["conversationId"].as_str().unwrap_or("").to_owned();
            (id.expect("join asks for an ack"), conv)
        })
        .collect()
}

#[test]
fn a_rejoin_burst_keeps_four_joins_in_flight_and_asks_for_each_once() {
    let (mut d, convs) = Driven::connected_in(10);
    let mut in_flight = joins_sent(&d.take());
    assert_eq!(in_flight.len(), MAX_JOINS_IN_FLIGHT);
    // Asking again for a conversation already asked for (in flight or waiting) sends nothing.
    d.client.join(d.now, "c0");
    d.client.join(d.now, "c9");
    assert!(joins_sent(&d.take()).is_empty());
    // Answered two at a time: each answer lets one waiting join go, never more than four.
    let mut asked: Vec<String> = in_flight.iter().map(|(_, c)| c.clone()).collect();
    while !in_flight.is_empty() {
        for (id, conv) in in_flight
            .drain(..2.min(in_flight.len()))
            .collect::<Vec<_>>()
        {
            d.serve_join(id, &conv);
        }
        let next = joins_sent(&d.take());
        asked.extend(next.iter().map(|(_, c)| c.clone()));
        in_flight.extend(next);
        assert!(in_flight.len() <= MAX_JOINS_IN_FLIGHT, "{in_flight:?}");
    }
    assert_eq!(asked, convs, "each conversation asked for once, in order");
}

#[test]
fn joins_waiting_on_a_lost_connection_are_asked_for_once_on_the_next() {
    let (mut d, convs) = Driven::connected_in(7);
    let first = joins_sent(&d.take());
    assert_eq!(first.len(), MAX_JOINS_IN_FLIGHT);
    // Lost with three joins still waiting; their answers can no longer come.
    d.reconnect();
    let in_flight = joins_sent(&d.take());
    assert_eq!(in_flight.len(), MAX_JOINS_IN_FLIGHT);
    let mut asked = d.serve_every_join(in_flight);
    asked.sort();
    assert_eq!(asked, convs);
}

#[test]
fn a_join_keeps_its_place_until_its_catch_up_through_history_is_done() {
    let (mut d, convs) = Driven::connected_in(8);
    // Joined once (each at seq 0), then the connection is lost.
    let first = joins_sent(&d.take());
    let mut served = d.serve_every_join(first);
    served.sort();
    assert_eq!(served, convs);
    d.reconnect();
    let first = joins_sent(&d.take());
    let names: Vec<&str> = first.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(names, ["c0", "c1", "c2", "c3"]);
    // c0 missed more than its reply holds: it reads the rest through history.
    let missed: Vec<Value> = (1..=1000)
        .map(|seq| json!({"conversationId": "c0", "seq": seq}))
        .collect();
    d.ack(
        first[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 1100, "missed": missed}),
    );
    let out = d.take();
    assert!(joins_sent(&out).is_empty(), "c0 is still catching up");
    let read = sent_events(&out)
        .into_iter()
        .find(|(_, event, _)| event == "message:history")
        .expect("the rest is read");
    // The other three are served: three more go, c0 still holds its place.
    for (id, conv) in &first[1..] {
        d.serve_join(*id, conv);
    }
    let more = joins_sent(&d.take());
    let names: Vec<&str> = more.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(names, ["c4", "c5", "c6"]);
    // The read completes the catch-up: c7 goes.
    let page: Vec<Value> = (1001..=1100)
        .map(|seq| json!({"conversationId": "c0", "seq": seq}))
        .collect();
    d.ack(
        read.0.expect("a read asks for an ack"),
        json!({"ok": true, "messages": page}),
    );
    let last = joins_sent(&d.take());
    let names: Vec<&str> = last.iter().map(|(_, c)| c.as_str()).collect();
    assert_eq!(names, ["c7"]);
}

#[test]
fn a_server_announcing_absurd_ping_times_is_taken_without_overflow() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    let huge = u64::MAX;
    d.frame(&format!(
        r#"0{{"sid":"s","upgrades":[],"pingInterval":{huge},"pingTimeout":{huge},"maxPayload":1000000}}"#
    ));
    d.frame(r#"40/chat,{"sid":"x"}"#);
    assert_eq!(d.client.status(), &Status::Connected);
    // The silence deadline is as far as time goes: an hour of quiet does not end it.
    d.advance_to(3_600_000);
    assert_eq!(d.client.status(), &Status::Connected);
}

#[test]
fn a_token_set_while_connected_is_the_one_the_next_attempt_presents() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.take();
    d.server_accepts();
    d.client.set_token("fresh");
    d.client.handle_closed(d.now);
    d.take();
    // The reconnection attempt: its CONNECT carries the new token.
    d.advance_to(60_000);
    d.client.handle_opened(d.now);
    d.frame(r#"0{"sid":"t","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
    let sent: Vec<String> = d
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Send(Frame::Text(b)) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        })
        .collect();
    assert!(
        sent.iter().any(|f| f == r#"40/chat,{"token":"fresh"}"#),
        "{sent:?}"
    );
}

/// The tempIds of the `message:send`s in `outputs`, in order.
fn sends(outputs: &[Output]) -> Vec<String> {
    sent_events(outputs)
        .into_iter()
        .filter(|(_, event, _)| event == "message:send")
        .map(|(_, _, p)| p["tempId"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn a_message_sent_while_an_earlier_one_waits_to_be_retried_goes_after_it() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.server_accepts();
    let a = d.client.send_message(d.now, "c1", "first").expect("room");
    assert_eq!(sends(&d.take()), std::slice::from_ref(&a));
    // A store hiccup: A waits a second before it is tried again.
    d.ack(0, json!({"ok": false, "code": "internal"}));
    d.now = Instant::from_millis(1_100);
    let b = d.client.send_message(d.now, "c1", "second").expect("room");
    assert_eq!(sends(&d.take()), Vec::<String>::new(), "B waits behind A");
    let due = d.client.poll_timeout().expect("the retry is scheduled");
    assert_eq!(due.as_millis(), 2_000, "the deadline is A's, not B's");
    d.advance_to(due.as_millis());
    assert_eq!(sends(&d.take()), [a, b], "in the order they were written");
}

/// A send larger than the server's `maxPayload` would have the connection closed, and go
/// again after every reconnect: it is failed `too_large` at once, never sent, and the
/// sends behind it go.
#[test]
fn a_send_larger_than_the_servers_max_payload_fails_at_once_and_the_rest_go() {
    let mut d = Driven::new();
    let big = d
        .client
        .send_message(d.now, "c1", &"x".repeat(1_000_001))
        .expect("room");
    let small = d.client.send_message(d.now, "c1", "fits").expect("room");
    d.client.connect(d.now);
    d.server_accepts();
    let out = d.take();
    assert_eq!(
        sends(&out),
        std::slice::from_ref(&small),
        "only the one that fits"
    );
    let failed: Vec<(String, String)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::SendFailed { temp_id, code }) => {
                Some((temp_id.clone(), code.clone()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(failed, [(big, "too_large".to_owned())]);
    assert!(
        out.iter().all(|o| !matches!(o, Output::Close)),
        "the connection goes on"
    );
    // Nothing of it is left to send after a reconnect.
    d.reconnect();
    assert_eq!(
        sends(&d.take()),
        [small],
        "only the unacknowledged one again"
    );
}

/// A join larger than the server's `maxPayload` (a conversation id of a megabyte) would
/// have the connection closed, and the rejoin after every reconnect close it again: it
/// fails `too_large` at once, is not rejoined, and the other joins go.
#[test]
fn a_join_larger_than_the_servers_max_payload_fails_at_once_and_is_not_rejoined() {
    let mut d = Driven::new();
    let big = "c".repeat(1_000_001);
    d.client.join(d.now, &big);
    d.client.join(d.now, "small");
    d.client.connect(d.now);
    d.server_accepts();
    let out = d.take();
    let joins: Vec<String> = sent_events(&out)
        .into_iter()
        .filter(|(_, event, _)| event == "conversation:join")
        .map(|(_, _, p)| p["conversationId"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(joins, ["small"], "only the one that fits");
    let failed: Vec<&Value> = out
        .iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::Event(name, p)) if name == "conversation:join_failed" => Some(p),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["code"], "too_large");
    assert_eq!(failed[0]["conversationId"].as_str(), Some(big.as_str()));
    assert!(!out.iter().any(|o| matches!(o, Output::Close)));
    assert!(!d.client.joined().contains_key(&big));
    // Not asked for again after a reconnect.
    d.reconnect();
    let again: Vec<String> = sent_events(&d.take())
        .into_iter()
        .filter(|(_, event, _)| event == "conversation:join")
        .map(|(_, _, p)| p["conversationId"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(again, ["small"]);
}

/// A refreshed token larger than the server's `maxPayload` is refused by the client
/// itself, not sent (the server would close the connection on it); and a connect that
/// would carry it fails as a refused connect does, rather than closing at every attempt.
#[test]
fn a_token_larger_than_the_servers_max_payload_is_refused_not_sent() {
    let (mut d, _) = Driven::connected_in(0);
    d.take();
    let big = "t".repeat(1_000_001);
    d.client.refresh_token(d.now, big.clone());
    let out = d.take();
    assert!(sent_events(&out).is_empty(), "nothing sent");
    assert!(
        out.contains(&Output::Notice(Notice::Refreshed {
            error: Some("too_large".into())
        })),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Close)));
    assert_eq!(d.client.status(), &Status::Connected);

    // The link drops; the next connect would present it: failed, not tried again.
    d.client.handle_closed(d.now);
    let due = d
        .client
        .poll_timeout()
        .expect("a reconnection is scheduled");
    d.advance_to(due.as_millis());
    d.take();
    d.frame(r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
    let out = d.take();
    assert!(
        !out.iter().any(
            |o| matches!(o, Output::Send(f) if f.as_text().is_some_and(|t| t.starts_with("40")))
        ),
        "no CONNECT sent"
    );
    assert!(matches!(d.client.status(), Status::Failed { .. }));
    assert_eq!(d.client.poll_timeout(), None, "no attempt scheduled");
    // A fresh token that fits connects again.
    d.client.refresh_token(d.now, "fresh");
    assert_eq!(opens(&d.take()), 1);
}

#[test]
fn a_reply_that_is_not_the_contracts_is_tried_again_not_given_up() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.server_accepts();
    let a = d.client.send_message(d.now, "c1", "first").expect("room");
    assert_eq!(sends(&d.take()), std::slice::from_ref(&a));
    d.frame("43/chat,0[]");
    let out = d.take();
    assert!(
        !out.iter()
            .any(|o| matches!(o, Output::Notice(Notice::SendFailed { .. }))),
        "{out:?}"
    );
    assert_eq!(d.client.outbox_len(), 1);
    let due = d.client.poll_timeout().expect("tried again later");
    d.advance_to(due.as_millis());
    assert_eq!(sends(&d.take()), [a]);
}

#[test]
fn a_seq_at_the_end_of_the_range_is_taken_without_overflow() {
    let (mut d, _) = Driven::connected_in(1);
    let near = u64::MAX - 2;
    d.ack(
        0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": near, "missed": []}),
    );
    d.take();
    let new =
        |seq: u64| format!(r#"42/chat,["message:new",{{"conversationId":"c0","seq":{seq}}}]"#);
    d.frame(&new(u64::MAX));
    d.frame(&new(u64::MAX - 1));
    let delivered: Vec<u64> = d
        .take()
        .into_iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::Message(m)) => m["seq"].as_u64(),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, [u64::MAX - 1, u64::MAX]);
}

#[test]
fn a_refreshed_token_is_sent_while_connected_and_presented_at_the_next_connect() {
    let (mut d, _) = Driven::connected_in(0);
    d.take();
    d.frame(r#"42/chat,["auth:expired",{}]"#);
    assert!(d.take().contains(&Output::Notice(Notice::Event(
        "auth:expired".into(),
        json!({})
    ))));
    d.client.refresh_token(d.now, "fresh");
    let sent = sent_events(&d.take());
    let [(Some(id), event, payload)] = sent.as_slice() else {
        panic!("one auth:refresh with an ack id: {sent:?}");
    };
    assert_eq!(
        (event.as_str(), payload),
        ("auth:refresh", &json!({"token": "fresh"}))
    );
    d.ack(*id, json!({"ok": true}));
    assert_eq!(
        d.take(),
        vec![Output::Notice(Notice::Refreshed { error: None })]
    );
    // A refused one says why; a later reconnect presents the newest token either way.
    d.client.refresh_token(d.now, "newer");
    let id = sent_events(&d.take())[0].0.expect("ack id");
    d.ack(
        id,
        json!({"ok": false, "error": "Token does not extend the current one"}),
    );
    assert_eq!(
        d.take(),
        vec![Output::Notice(Notice::Refreshed {
            error: Some("Token does not extend the current one".into())
        })]
    );
    d.reconnect();
    let connect: Vec<String> = d
        .take()
        .iter()
        .filter_map(|o| match o {
            Output::Send(f) => f
                .as_text()
                .filter(|t| t.starts_with("40/"))
                .map(str::to_owned),
            _ => None,
        })
        .collect();
    assert_eq!(connect, [r#"40/chat,{"token":"newer"}"#]);
    // While disconnected nothing is sent: the token waits for the connect.
    d.client.handle_closed(d.now);
    d.take();
    d.client.refresh_token(d.now, "offline");
    assert!(sent_events(&d.take()).is_empty());
}

#[test]
fn a_token_refreshed_while_the_connect_is_on_its_way_follows_it() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.take();
    d.frame(r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
    d.take(); // the CONNECT, with the token of the configuration
    d.client.refresh_token(d.now, "fresh");
    assert!(sent_events(&d.take()).is_empty(), "not connected yet");
    d.frame(r#"40/chat,{"sid":"x"}"#);
    let sent = sent_events(&d.take());
    assert!(
        sent.iter().any(|(id, e, p)| id.is_some()
            && e == "auth:refresh"
            && p == &json!({"token": "fresh"})),
        "{sent:?}"
    );
    // Connected with the token it presents: nothing more to send.
    d.reconnect();
    assert!(!sent_events(&d.take())
        .iter()
        .any(|(_, e, _)| e == "auth:refresh"));
}

#[test]
fn a_second_connect_on_a_live_connection_does_not_restart_the_ack_ids() {
    let (mut d, _) = Driven::connected_in(0);
    let a = d.client.send_message(d.now, "c1", "first").expect("room");
    assert_eq!(sent_events(&d.take())[0].0, Some(0));
    // A broken server repeats the namespace CONNECT: nothing is asked again, and the next
    // send takes the next ack id, not 0 again.
    d.frame(r#"40/chat,{"sid":"y"}"#);
    assert!(sent_events(&d.take()).is_empty());
    let b = d.client.send_message(d.now, "c1", "second").expect("room");
    let sent = sent_events(&d.take());
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0, Some(1));
    assert_eq!(sent[0].2["tempId"], b.as_str());
    // The first ack still finds the first send.
    d.ack(
        0,
        json!({"ok": true, "message": {"tempId": a}, "duplicate": false}),
    );
    let acked = acked(d.take());
    assert_eq!(acked, [a]);
}

#[test]
fn temp_ids_carry_128_random_bits_so_two_starts_of_a_client_do_not_repeat_them() {
    let temp_id = |seed| {
        let mut c = Client::new(ClientConfig {
            seed,
            ..ClientConfig::default()
        });
        c.send_message(Instant::from_millis(0), "c1", "x")
            .expect("room")
    };
    let (x, y) = (temp_id(1), temp_id(2));
    for t in [&x, &y] {
        let (counter, random) = t.split_once('-').expect("t<n>-<hex>");
        assert_eq!(counter, "t1");
        assert_eq!(random.len(), 32, "{t}");
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{t}");
    }
    assert_ne!(x, y);
    assert!(x.len() <= 128, "within the contract's tempId bound");
}

/// Messages handed to the application, as `conversation#seq`.
fn delivered(outputs: &[Output]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Notice(Notice::Message(m)) => Some(format!(
                "{}#{}",
                m["conversationId"].as_str().unwrap_or(""),
                m["seq"]
            )),
            _ => None,
        })
        .collect()
}

fn message_frame(event: &str, seq: u64) -> String {
    let m = json!({"conversationId": "c0", "seq": seq, "content": format!("m{seq}")});
    let payload = if event == "message:new" {
        m
    } else {
        json!({"conversationId": "c0", "message": m})
    };
    format!("42/chat,{}", json!([event, payload]))
}

/// A client in `c0` whose first join was answered at `last_seq`, with the live message
/// after it delivered.
fn joined_at(last_seq: u64) -> Driven {
    let (mut d, _) = Driven::connected_in(1);
    let joins = joins_sent(&d.take());
    d.ack(
        joins[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": last_seq, "missed": []}),
    );
    d.frame(&message_frame("message:new", last_seq + 1));
    assert_eq!(delivered(&d.take()), [format!("c0#{}", last_seq + 1)]);
    d
}

#[test]
fn a_notification_for_a_joined_conversation_rejoins_it_from_the_last_message() {
    let (mut d, _) = Driven::connected_in(1);
    let joins = joins_sent(&d.take());
    // Notified while its join is under way: written before the answer, nothing to do.
    d.frame(&message_frame("message:notification", 1));
    assert!(joins_sent(&d.take()).is_empty());
    d.ack(
        joins[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 1, "missed": []}),
    );
    d.frame(&message_frame("message:new", 2));
    assert_eq!(delivered(&d.take()), ["c0#2"]);
    // Let out of the room (its user removed, then added back): #3 comes as a notification.
    d.frame(&message_frame("message:notification", 3));
    let out = d.take();
    assert!(
        delivered(&out).is_empty(),
        "a notification is not a delivery"
    );
    let rejoin = joins_sent(&out);
    let events = sent_events(&out);
    assert_eq!(rejoin.len(), 1, "one rejoin: {events:?}");
    assert_eq!(events[0].2["afterSeq"], json!(2), "from the last delivered");
    // A second notification while that rejoin is under way asks for nothing more.
    d.frame(&message_frame("message:notification", 4));
    assert!(joins_sent(&d.take()).is_empty());
    let missed: Vec<Value> = (3..=4)
        .map(|s| json!({"conversationId": "c0", "seq": s, "content": format!("m{s}")}))
        .collect();
    d.ack(
        rejoin[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 4, "missed": missed}),
    );
    assert_eq!(delivered(&d.take()), ["c0#3", "c0#4"]);
}

#[test]
fn a_notification_after_a_joins_answer_rejoins_once_its_catch_up_is_read() {
    let mut d = joined_at(2);
    d.reconnect();
    // The rejoin's answer is cut short: the rest is read page by page.
    let rejoin = joins_sent(&d.take());
    let m4 = json!({"conversationId": "c0", "seq": 4, "content": "m4"});
    d.ack(
        rejoin[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 6, "missed": [m4]}),
    );
    let out = d.take();
    assert_eq!(delivered(&out), ["c0#4"]);
    let page = sent_events(&out)
        .into_iter()
        .find(|(_, event, _)| event == "message:history")
        .expect("the rest asked for");
    // Meanwhile the server lets the connection out of the room (its user removed and
    // added back): #7 comes as a notification, written after the join's answer.
    d.frame(&message_frame("message:notification", 7));
    assert!(
        joins_sent(&d.take()).is_empty(),
        "the catch-up carries on first"
    );
    let rest: Vec<Value> = (5..=6)
        .map(|s| json!({"conversationId": "c0", "seq": s, "content": format!("m{s}")}))
        .collect();
    d.ack(
        page.0.expect("ack id"),
        json!({"ok": true, "messages": rest}),
    );
    let out = d.take();
    assert_eq!(delivered(&out), ["c0#5", "c0#6"]);
    // Then it joins again from there, back into the room, #7 in its `missed`.
    let again = sent_events(&out)
        .into_iter()
        .filter(|(_, event, _)| event == "conversation:join")
        .collect::<Vec<_>>();
    assert_eq!(again.len(), 1, "{out:?}");
    assert_eq!(again[0].2["afterSeq"], json!(6));
}

#[test]
fn a_conversation_left_stays_left_and_resumes_where_it_stopped_when_joined_again() {
    let mut d = joined_at(2);
    d.client.leave(d.now, "c0");
    let out = d.take();
    let events = sent_events(&out);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "conversation:leave");
    assert_eq!(events[0].2["conversationId"], json!("c0"));
    assert!(d.client.joined().is_empty());
    // Out of the room, the server notifies: a left conversation is not joined again.
    d.frame(&message_frame("message:notification", 4));
    assert!(joins_sent(&d.take()).is_empty());
    // Nor after a reconnect.
    d.reconnect();
    assert!(joins_sent(&d.take()).is_empty());
    // Joined again, it resumes from #3.
    d.client.join(d.now, "c0");
    let events = sent_events(&d.take());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["afterSeq"], json!(3));
}

#[test]
fn leaving_during_a_join_drops_its_answer_and_a_later_join_is_its_own() {
    let (mut d, _) = Driven::connected_in(1);
    let first = joins_sent(&d.take());
    d.client.leave(d.now, "c0");
    d.client.join(d.now, "c0");
    let out = d.take();
    let events = sent_events(&out);
    assert_eq!(
        events.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(),
        ["conversation:leave", "conversation:join"],
        "the join after the leave is sent, not folded into the one on the wire"
    );
    let second = joins_sent(&out);
    // The first join's answer (served before the leave came) is not taken as this one's.
    let m = |s: u64| json!({"conversationId": "c0", "seq": s, "content": format!("m{s}")});
    d.ack(
        first[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 1, "missed": [m(1)]}),
    );
    assert!(delivered(&d.take()).is_empty());
    d.ack(
        second[0].0,
        json!({"ok": true, "conversationId": "c0", "lastSeq": 2, "missed": []}),
    );
    d.frame(&message_frame("message:new", 3));
    assert_eq!(delivered(&d.take()), ["c0#3"]);
}

#[test]
fn a_conversation_refused_for_good_resumes_where_it_stopped_when_joined_again() {
    let mut d = joined_at(5);
    // Removed from the conversation: the rejoin after a reconnect is refused for good.
    d.reconnect();
    let joins = joins_sent(&d.take());
    d.ack(
        joins[0].0,
        json!({"ok": false, "error": "Not a member", "code": "forbidden"}),
    );
    let out = d.take();
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Notice(Notice::Event(name, _)) if name == "conversation:join_failed"
    )));
    assert!(d.client.joined().is_empty());
    // Not joined: a notification is the application's to act on.
    d.frame(&message_frame("message:notification", 7));
    assert!(joins_sent(&d.take()).is_empty());
    // The application joins again (its user let back in): from #6, not from now.
    d.client.join(d.now, "c0");
    let out = d.take();
    let events = sent_events(&out);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].2["afterSeq"], json!(6));
}

#[test]
fn a_join_asked_for_again_while_one_is_on_the_wire_outlives_its_refusal() {
    let (mut d, _) = Driven::connected_in(1);
    let first = joins_sent(&d.take());
    // The application asks again (its user let back in) before the answer comes.
    d.client.join(d.now, "c0");
    assert!(
        joins_sent(&d.take()).is_empty(),
        "one join on the wire at a time"
    );
    // That answer was for the moment it was served: refused, it is asked for again.
    d.ack(
        first[0].0,
        json!({"ok": false, "error": "Not a member", "code": "forbidden"}),
    );
    let out = d.take();
    assert!(!out.iter().any(|o| matches!(
        o,
        Output::Notice(Notice::Event(name, _)) if name == "conversation:join_failed"
    )));
    let again = joins_sent(&out);
    assert_eq!(again.len(), 1);
    d.serve_join(again[0].0, "c0");
    assert!(d.client.joined().contains_key("c0"));
    // Refused again with nothing asked since, it ends as any refusal does.
    d.reconnect();
    let third = joins_sent(&d.take());
    d.ack(
        third[0].0,
        json!({"ok": false, "error": "Not a member", "code": "forbidden"}),
    );
    assert!(joins_sent(&d.take()).is_empty());
    assert!(d.client.joined().is_empty());
}

#[test]
fn a_client_the_server_refused_connects_again_with_a_fresh_token() {
    let mut d = Driven::new();
    d.client.connect(d.now);
    d.frame(r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#);
    d.frame(r#"44/chat,{"message":"Invalid authentication token"}"#);
    assert!(matches!(d.client.status(), Status::Failed { .. }));
    d.take();
    // Refused: no reconnection of its own.
    d.advance_to(600_000);
    assert_eq!(opens(&d.take()), 0);
    // The application's fresh token is its answer to the refusal: it connects with it.
    d.client.refresh_token(d.now, "fresh");
    assert_eq!(opens(&d.take()), 1);
    assert_eq!(d.client.status(), &Status::Connecting);
    d.server_accepts();
    // Once connected, a fresh token is an auth:refresh, not a new connection.
    d.take();
    d.client.refresh_token(d.now, "fresher");
    let out = d.take();
    assert_eq!(opens(&out), 0);
    assert_eq!(sent_events(&out)[0].1, "auth:refresh");
}

/// The outbox is bounded by count and by bytes: past either, a send is refused at once
/// with nothing queued, and room comes back as sends are acknowledged or refused for good.
#[test]
fn a_full_outbox_refuses_a_send_until_the_server_acknowledges_one() {
    let mut d = Driven::new();
    d.client = Client::new(ClientConfig {
        max_outbox: 3,
        max_outbox_bytes: 20,
        ..ClientConfig::default()
    });
    // Offline: everything waits in the outbox.
    let mut ids = vec![];
    for content in ["a", "b", "c"] {
        ids.push(d.client.send_message(d.now, "c1", content).expect("room"));
    }
    assert_eq!(
        d.client.send_message(d.now, "c1", "d"),
        Err(SendError::OutboxFull {
            messages: 3,
            bytes: 9
        })
    );
    assert_eq!(d.client.outbox_len(), 3, "nothing queued");
    d.client.connect(d.now);
    d.server_accepts();
    assert_eq!(sends(&d.take()), ids, "the refused send never goes");
    // One acknowledged, one refused for good: room for two again, but not for a send
    // whose bytes would pass the bound (3 left of 20 bytes in use by one send).
    d.ack(
        0,
        json!({"ok": true, "message": {"tempId": ids[0]}, "duplicate": false}),
    );
    d.ack(1, json!({"ok": false, "code": "not_a_member"}));
    assert_eq!(d.client.outbox_len(), 1);
    assert!(matches!(
        d.client.send_message(d.now, "c1", &"x".repeat(16)),
        Err(SendError::OutboxFull { messages: 1, .. })
    ));
    let e = d.client.send_message(d.now, "c1", &"x".repeat(15));
    assert!(e.is_ok(), "exactly to the bound: {e:?}");
    assert_eq!(d.client.outbox_len(), 2);
}

/// The CONNECTs a client sent: their payloads.
fn connects(outputs: &[Output]) -> Vec<Value> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send(Frame::Text(t)) => std::str::from_utf8(t)
                .ok()?
                .strip_prefix("40/chat,")
                .and_then(|p| serde_json::from_str(p).ok()),
            _ => None,
        })
        .collect()
}

/// A fresh token handed over while the CONNECT with the old one is on its way: refused
/// for the old one, the client presents the new one at once instead of failing for good
/// (the application already answered the refusal). Refused again, it fails.
#[test]
fn a_token_refreshed_while_a_connect_is_on_its_way_is_presented_when_that_one_is_refused() {
    const OPEN: &str = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
    let mut d = Driven::new();
    d.client.set_token("old");
    d.client.connect(d.now);
    d.frame(OPEN);
    assert_eq!(connects(&d.take()), [json!({"token": "old"})]);
    d.client.refresh_token(d.now, "fresh");
    assert!(d.take().is_empty(), "nothing to send it on yet");
    d.frame(r#"44/chat,{"message":"Invalid authentication token"}"#);
    let out = d.take();
    assert!(
        out.contains(&Output::Close) && out.contains(&Output::Open),
        "{out:?}"
    );
    assert!(!matches!(d.client.status(), Status::Failed { .. }));
    d.frame(OPEN);
    assert_eq!(connects(&d.take()), [json!({"token": "fresh"})]);
    d.frame(r#"44/chat,{"message":"Invalid authentication token"}"#);
    assert!(matches!(d.client.status(), Status::Failed { .. }));
    assert!(!d.take().contains(&Output::Open), "refused for good");
}

/// A CONNECT_ERROR before any CONNECT went out (a server gone wrong, ahead of its open
/// packet) is not a refusal of an older token: no reopen at once, whatever the token.
#[test]
fn a_connect_error_before_the_open_packet_is_no_reason_to_reopen() {
    let mut d = Driven::new();
    d.client.set_token("t");
    d.client.connect(d.now);
    d.take();
    d.frame(r#"44/chat,{"message":"nope"}"#);
    assert!(matches!(d.client.status(), Status::Failed { .. }));
    assert!(!d.take().contains(&Output::Open));
}
