//! Transcripts of the gateway's rules, as insta snapshots. `->` is an input (network or
//! store result), `<-` a transmit, `>>` a storage effect, `==` a notice.

mod gw;

use gw::{admin_token, config, token, Gw};
use heartline_core::engine::{Handshake, Input as Net, Method, Query};
use heartline_core::gateway::Input;
use heartline_core::gateway::UserKey;
use serde_json::{json, Value};

/// The `seq` of each message in a list of messages.
fn seqs(messages: &Value) -> Vec<Value> {
    messages
        .as_array()
        .expect("list")
        .iter()
        .map(|m| m["seq"].clone())
        .collect()
}

fn setup() -> Gw {
    let mut g = Gw::new(config());
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    g
}

#[test]
fn auth_refused_missing_bad_expired() {
    let mut g = setup();
    g.connect_with(1, None);
    g.connect_with(2, Some(json!({ "token": "not-a-jwt" })));
    let forged = heartline_core::gateway::auth::issue(
        b"wrong-secret",
        &heartline_core::gateway::auth::Claims {
            sub: "alice".into(),
            user_type: "customer".into(),
            exp: gw::EPOCH_MS / 1000 + 60,
            role: None,
        },
    )
    .expect("sign");
    g.connect_with(3, Some(json!({ "token": forged })));
    g.advance(2_000);
    let expired = token("alice", "customer", 1);
    g.connect_with(4, Some(json!({ "token": expired })));
    insta::assert_snapshot!(g.transcript());
    assert_eq!(
        g.view(1).connect_errors,
        vec![json!({"message":"Authentication required"})]
    );
    for ws in 2..=4 {
        assert_eq!(
            g.view(ws).connect_errors,
            vec![json!({"message":"Invalid authentication token"})]
        );
    }
    assert_eq!(
        g.gw.users_held(),
        0,
        "a refused connect creates no user state"
    );
    assert_eq!(g.gw.connection_count(), 0);
}

/// A client may try again after a refused CONNECT (with a fresh token, say), but one that
/// loops on refused CONNECTs is ended, as one looping on any packet that changes nothing.
#[test]
fn a_client_looping_on_refused_connects_is_ended() {
    use heartline_core::engine::MAX_IDLE_PACKETS;
    let mut g = setup();
    for ws in [1, 2] {
        g.connect_with(ws, Some(json!({ "token": "x" })));
        for _ in 1..MAX_IDLE_PACKETS {
            g.ws_text(ws, r#"40/chat,{"token":"x"}"#);
        }
        assert_eq!(
            g.view(ws).connect_errors.len(),
            usize::from(MAX_IDLE_PACKETS)
        );
        assert!(!g.view(ws).closed, "tolerated so far");
    }
    // A good token on the same session still connects.
    let good = token("alice", "customer", 60);
    g.ws_text(1, &format!(r#"40/chat,{{"token":"{good}"}}"#));
    assert_eq!(g.event_names(1), vec!["connection:success"]);
    // One more refusal is the end.
    g.ws_text(2, r#"40/chat,{"token":"x"}"#);
    assert!(g.view(2).closed);
    assert!(!g.view(1).closed);
    assert_eq!(g.gw.users_held(), 1, "alice only");
}

/// A token that is there but not a string is malformed, not missing (contract: "Bad
/// signature, malformed or expired" against "Missing token").
#[test]
fn a_token_that_is_not_a_string_is_refused_as_invalid() {
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": 123 })));
    g.connect_with(2, Some(json!({ "token": "" })));
    g.connect_with(3, Some(json!({ "token": null })));
    assert_eq!(
        g.view(1).connect_errors,
        vec![json!({"message":"Invalid authentication token"})]
    );
    for ws in 2..=3 {
        assert_eq!(
            g.view(ws).connect_errors,
            vec![json!({"message":"Authentication required"})]
        );
    }
    assert_eq!(g.gw.connection_count(), 0);
}

#[test]
fn replacement() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.connect(2, "alice", "customer");
    // The displaced connection's late close must not unregister its successor.
    g.peer_close(1);
    insta::assert_snapshot!(g.transcript());
    assert_eq!(
        g.event_names(1),
        vec!["connection:success", "connection:replaced"]
    );
    assert!(g.view(1).disconnected && g.view(1).closed);
    assert_eq!(
        g.gw.connections_of(&UserKey::new("alice", "customer"))
            .len(),
        1
    );
    assert!(g.gw.is_online(&UserKey::new("alice", "customer")));
}

/// A CONNECT that arrives with its socket's close behind it (a client that gave the
/// attempt up, held up with it by a stalled network) opens nothing, so it displaces nobody:
/// the user's live connection stays, and is not told `connection:replaced`.
#[test]
fn a_connect_behind_its_peers_close_displaces_nobody() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.open(2);
    g.peer_closing(2);
    let t = token("alice", "customer", 86_400);
    g.ws_text(2, &format!("40/chat,{}", json!({ "token": t })));
    g.peer_close(2);
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.event_names(1), vec!["connection:success"]);
    assert!(!g.view(1).disconnected);
    assert!(g.event_names(2).is_empty());
    let alice = UserKey::new("alice", "customer");
    assert_eq!(g.gw.connections_of(&alice).len(), 1);
    assert!(g.gw.is_online(&alice));
    // The same CONNECT without the close ahead of it does displace (the rule stands).
    g.open(3);
    g.ws_text(3, &format!("40/chat,{}", json!({ "token": t })));
    assert_eq!(
        g.event_names(1),
        vec!["connection:success", "connection:replaced"]
    );
}

/// A CONNECT that arrives on a session opened before the user's live one (an attempt its
/// client gave up on, delivered seconds late, while the same device has connected again)
/// is the older connection: it is displaced itself, and the live one is left alone.
#[test]
fn a_late_connect_on_an_older_session_displaces_only_itself() {
    let mut g = setup();
    let t = token("alice", "customer", 86_400);
    g.open(1);
    g.connect(2, "alice", "customer");
    g.ws_text(1, &format!("40/chat,{}", json!({ "token": t })));
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.event_names(2), vec!["connection:success"]);
    assert!(!g.view(2).disconnected);
    assert_eq!(
        g.event_names(1),
        vec!["connection:success", "connection:replaced"]
    );
    assert!(g.view(1).disconnected);
    let alice = UserKey::new("alice", "customer");
    assert_eq!(g.gw.connections_of(&alice).len(), 1);
    assert!(g.gw.is_online(&alice));
    // Its close afterwards changes nothing for the live one.
    g.peer_close(1);
    assert_eq!(g.gw.connections_of(&alice).len(), 1);
    assert!(!g.view(2).disconnected);
}

/// `a:b` of type `c` and `a` of type `b:c` print alike as user keys but are two users:
/// neither replaces the other, and a membership of one is not the other's.
#[test]
fn users_whose_keys_print_alike_stay_apart() {
    let mut g = Gw::new(config());
    g.conversation("c1", &[("a", "b:c")]);
    g.connect(1, "a", "b:c");
    g.connect(2, "a:b", "c");
    assert_eq!(g.event_names(1), vec!["connection:success"]);
    assert_eq!(g.event_names(2), vec!["connection:success"]);
    assert!(!g.view(1).disconnected && !g.view(2).disconnected);
    assert_eq!(g.gw.connections_of(&UserKey::new("a", "b:c")).len(), 1);
    assert_eq!(g.gw.connections_of(&UserKey::new("a:b", "c")).len(), 1);
    let joined = g.emit(1, "conversation:join", json!({"conversationId":"c1"}));
    assert_eq!(g.ack(1, joined).expect("answered")["ok"], json!(true));
    let refused = g.emit(2, "conversation:join", json!({"conversationId":"c1"}));
    let refused = g.ack(2, refused).expect("answered");
    assert_eq!(refused["ok"], json!(false));
    assert_eq!(refused["code"], json!("forbidden"));
    let send = g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"not mine","tempId":"t1"}),
    );
    assert_eq!(
        g.ack(2, send).expect("answered")["code"],
        json!("forbidden")
    );
    assert!(g.events_named(1, "message:new").is_empty());
}

#[test]
fn presence_with_grace() {
    let mut g = setup();
    g.connect(1, "bob", "agent");
    g.connect(2, "alice", "customer");
    // Alice drops and comes back within the grace: bob sees no flap.
    g.peer_close(2);
    g.advance(2_000);
    g.connect(3, "alice", "customer");
    // Alice leaves for good: offline only once the grace has passed.
    g.peer_close(3);
    g.advance(2_999);
    let before = g.events_named(1, "user:offline").len();
    g.advance(1);
    insta::assert_snapshot!(g.transcript());
    assert_eq!(before, 0);
    assert_eq!(
        g.events_named(1, "user:online"),
        vec![json!({"userId":"alice","userType":"customer"})]
    );
    assert_eq!(
        g.events_named(1, "user:offline"),
        vec![json!({"userId":"alice","userType":"customer"})]
    );
}

#[test]
fn send_ack_fan_out() {
    let mut g = setup();
    g.auto_store = false;
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    g.emit(1, "conversation:join", json!({"conversationId":"c1"}));
    let send = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"hello bob","tempId":"t1"}),
    );
    assert!(g.ack(1, send).is_none(), "no ack before the store commits");
    g.complete_one();
    insta::assert_snapshot!(g.transcript());
    let ack = g.ack(1, send).expect("acked after commit");
    assert_eq!(ack["ok"], json!(true));
    assert_eq!(ack["message"]["seq"], json!(1));
    assert_eq!(ack["duplicate"], json!(false));
    assert_eq!(g.events_named(1, "message:new").len(), 1);
    assert_eq!(g.events_named(1, "message:sent").len(), 1);
    // Bob has not joined the room: a notification instead.
    assert_eq!(g.events_named(2, "message:notification").len(), 1);
    assert!(g.events_named(2, "message:new").is_empty());
}

#[test]
fn store_failure_is_internal_and_not_fanned_out() {
    let mut g = setup();
    g.auto_store = false;
    g.connect(1, "alice", "customer");
    g.emit(1, "conversation:join", json!({"conversationId":"c1"}));
    let send = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"x"}),
    );
    g.fail_one();
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.ack(1, send).expect("answered")["code"], json!("internal"));
    assert!(g.events_named(1, "message:new").is_empty());
    assert_eq!(g.gw.rate_limit_entries(), 0, "a failed send is not counted");
}

#[test]
fn duplicate_retry() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    let first = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"hi","tempId":"t-1"}),
    );
    // The client lost the ack, reconnected, and retries with the same tempId.
    g.peer_close(1);
    g.connect(2, "alice", "customer");
    let retry = g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"hi","tempId":"t-1"}),
    );
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.ack(1, first).expect("acked")["duplicate"], json!(false));
    let again = g.ack(2, retry).expect("acked");
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(again["message"]["seq"], json!(1));
    assert_eq!(g.store.messages["c1"].len(), 1, "stored once");
}

#[test]
fn a_temp_id_is_the_users_across_conversations() {
    let mut g = setup();
    g.conversation("c2", &[("alice", "customer"), ("bob", "agent")]);
    g.connect(1, "alice", "customer");
    let first = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"to c1","tempId":"t-1"}),
    );
    assert_eq!(g.ack(1, first).expect("acked")["duplicate"], json!(false));
    let send_c2 = json!({"conversationId":"c2","content":"to c2","tempId":"t-1"});
    // Answered from the user's recent sends...
    let again = g.emit(1, "message:send", send_c2.clone());
    // ... and, once the user is forgotten (gone past the presence grace and the rate
    // window), from the store.
    g.peer_close(1);
    g.advance(20_000);
    assert_eq!(g.gw.users_held(), 0, "alice forgotten");
    g.connect(2, "alice", "customer");
    let later = g.emit(2, "message:send", send_c2);
    for (ws, ack) in [(1, again), (2, later)] {
        let a = g.ack(ws, ack).expect("acked");
        assert_eq!(a["duplicate"], json!(true), "{a}");
        assert_eq!(a["message"]["conversationId"], json!("c1"), "{a}");
        assert_eq!(a["message"]["content"], json!("to c1"), "{a}");
    }
    assert_eq!(g.store.messages["c1"].len(), 1);
    assert!(!g.store.messages.contains_key("c2"), "nothing stored in c2");
}

#[test]
fn a_send_stored_after_its_sender_left_is_counted_accepted() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.auto_store = false;
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"hi","tempId":"t-1"}),
    );
    g.peer_close(1);
    g.complete_one();
    assert_eq!(g.store.messages["c1"].len(), 1, "stored");
    let m = g.gw.metrics();
    assert_eq!((m.accepted, m.duplicates), (1, 0));
}

#[test]
fn a_numeric_temp_id_is_an_id_too() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    let tid = 1_767_225_600_123u64;
    let send = json!({"conversationId":"c1","content":"hi","tempId":tid});
    let first = g.emit(1, "message:send", send.clone());
    let retry = g.emit(1, "message:send", send);
    let a = g.ack(1, first).expect("acked");
    assert_eq!(a["ok"], json!(true), "{a}");
    // Kept as text; echoed as the client sent it, the way it matches its pending sends.
    assert_eq!(a["message"]["tempId"], json!(tid.to_string()));
    let sent = g.events_named(1, "message:sent");
    assert_eq!(
        (&sent[0]["tempId"], &sent[1]["tempId"]),
        (&json!(tid), &json!(tid))
    );
    assert_eq!(g.ack(1, retry).expect("acked")["duplicate"], json!(true));
    // By value, as a JavaScript server reads numbers: the same id written `….0` is the
    // same id, and so are 0 and -0; a fraction keeps its digits.
    let as_float = json!({"conversationId":"c1","content":"hi","tempId":tid as f64});
    let again = g.emit(1, "message:send", as_float);
    assert_eq!(g.ack(1, again).expect("acked")["duplicate"], json!(true));
    let zero = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"0","tempId":0}),
    );
    let minus_zero = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"0","tempId":-0.0}),
    );
    let half = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"h","tempId":7.5}),
    );
    assert_eq!(
        g.ack(1, zero).expect("acked")["message"]["tempId"],
        json!("0")
    );
    assert_eq!(
        g.ack(1, minus_zero).expect("acked")["duplicate"],
        json!(true)
    );
    assert_eq!(
        g.ack(1, half).expect("acked")["message"]["tempId"],
        json!("7.5")
    );
    assert_eq!(g.store.messages["c1"].len(), 3, "three ids, three messages");
    // A refusal echoes it as sent too.
    let refused = g.emit(
        1,
        "message:send",
        json!({"conversationId":"nope","content":"hi","tempId":7}),
    );
    assert_eq!(g.ack(1, refused).expect("acked")["ok"], json!(false));
    assert_eq!(g.events_named(1, "message:error")[0]["tempId"], json!(7));
    assert_eq!(g.store.messages["c1"].len(), 3, "nothing more stored");
    // Other JSON values are still refused.
    let bad = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"hi","tempId":{"id":1}}),
    );
    assert_eq!(
        g.ack(1, bad).expect("acked")["code"],
        json!("invalid_payload")
    );
}

#[test]
fn a_retry_is_a_duplicate_even_when_the_window_is_full() {
    // Three sends per window; only the last tempId is remembered in memory, so older
    // retries are asked of the store.
    let mut cfg = config();
    cfg.temp_ids_remembered = 1;
    let mut g = Gw::new(cfg);
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    g.connect(1, "alice", "customer");
    let send = |g: &mut Gw, t: &str| {
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":"hi","tempId":t}),
        )
    };
    send(&mut g, "t1");
    send(&mut g, "t2");
    // The third is still being stored when its retry arrives, with the window full.
    g.auto_store = false;
    send(&mut g, "t3");
    let early_retry = send(&mut g, "t3");
    g.complete_one();
    g.complete_one();
    g.auto_store = true;
    // An old retry, and a new send: the window is full for both.
    let old_retry = send(&mut g, "t1");
    let new = send(&mut g, "t4");
    insta::assert_snapshot!(g.transcript());
    let a = g.ack(1, early_retry).expect("answered");
    assert_eq!(
        (&a["duplicate"], &a["message"]["seq"]),
        (&json!(true), &json!(3)),
        "{a}"
    );
    let a = g.ack(1, old_retry).expect("answered");
    assert_eq!(
        (&a["duplicate"], &a["message"]["seq"]),
        (&json!(true), &json!(1)),
        "{a}"
    );
    let a = g.ack(1, new).expect("answered");
    assert_eq!(a["code"], json!("rate_limited"), "{a}");
    assert!(a["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0), "{a}");
    assert_eq!(g.store.messages["c1"].len(), 3, "nothing stored twice");
    assert_eq!(g.events_named(1, "message:error").len(), 1);
    assert_eq!(g.gw.rate_limit_entries(), 1);
}

#[test]
fn lookups_for_refused_sends_are_bounded_and_charged() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    for i in 0..3 {
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":"hi","tempId":format!("t{i}")}),
        );
    }
    // Window full, store slow: a few lookups wait, the rest are refused without one.
    g.auto_store = false;
    let ids: Vec<u64> = (0..20)
        .map(|i| {
            g.emit(
                1,
                "message:send",
                json!({"conversationId":"c1","content":"hi","tempId":format!("n{i}")}),
            )
        })
        .collect();
    let lookups = g
        .effects
        .iter()
        .filter(|e| matches!(e, heartline_core::gateway::Effect::FindSent { .. }))
        .count();
    // In flight per user: appends (none now) and lookups, at most the limit (3) + 8.
    assert_eq!(lookups, 3 + 8);
    let refused_at_once = ids.iter().filter(|id| g.ack(1, **id).is_some()).count();
    assert_eq!(refused_at_once, 20 - lookups);
    g.auto_store = true;
    while !g.effects.is_empty() {
        g.complete_one();
    }
    assert!(ids
        .iter()
        .all(|id| g.ack(1, *id).expect("answered")["code"] == json!("rate_limited")));
    // Sends refused for being invalid are events served: a whole event each, 60 at once;
    // past that they are refused as over the budget, and once the refusals are spent as
    // well (1,200 at a twentieth each) the connection is cut off.
    let mut g = setup();
    g.connect(1, "bob", "agent");
    let invalid = |g: &mut Gw| g.emit(1, "message:send", json!({"conversationId":"c1"}));
    let ids: Vec<u64> = (0..61).map(|_| invalid(&mut g)).collect();
    assert!(ids[..60]
        .iter()
        .all(|id| g.ack(1, *id).expect("answered")["code"] == json!("invalid_payload")));
    let over = g.ack(1, ids[60]).expect("answered");
    assert_eq!(over["code"], json!("rate_limited"), "{over}");
    assert_eq!(
        over["retryAfterMs"],
        json!(50),
        "one event a twentieth of a second"
    );
    assert_eq!(g.events_named(1, "message:error").len(), 61);
    for _ in 0..1_199 {
        invalid(&mut g);
    }
    assert!(!g.view(1).disconnected, "every refusal answered");
    invalid(&mut g);
    assert!(g.view(1).disconnected, "a flood");
    assert_eq!(g.gw.metrics().floods, 1);
}

/// Store lookups asked for `message:send` so far.
fn lookups(g: &Gw) -> usize {
    g.outputs
        .iter()
        .filter(|(_, o)| {
            matches!(
                o,
                heartline_core::gateway::Output::Effect(
                    heartline_core::gateway::Effect::FindSent { .. }
                )
            )
        })
        .count()
}

#[test]
fn a_user_in_no_conversation_cannot_keep_the_store_busy_with_lookups() {
    // Each send with a tempId to a conversation its user is not in might be the retry of
    // one stored while the user was a member, which only the store can tell. Each such
    // question is an event served: the budget's burst of 60, then 20 a second; the rest
    // are refused at once, as any event over the budget is.
    let mut g = setup();
    g.connect(1, "mallory", "customer");
    let send = |g: &mut Gw, i: u32| {
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":"hi","tempId":format!("m{i}")}),
        )
    };
    let ids: Vec<u64> = (0..100).map(|i| send(&mut g, i)).collect();
    assert_eq!(lookups(&g), 60);
    for id in &ids[..60] {
        let a = g.ack(1, *id).expect("answered");
        assert_eq!(a["code"], json!("forbidden"), "{a}");
    }
    for id in &ids[60..] {
        let a = g.ack(1, *id).expect("answered");
        assert_eq!(a["code"], json!("rate_limited"), "{a}");
        assert_eq!(a["retryAfterMs"], json!(50), "{a}");
    }
    g.advance(1_000);
    let later: Vec<u64> = (100..130).map(|i| send(&mut g, i)).collect();
    assert_eq!(lookups(&g), 80, "20 more a second later");
    let forbidden = later
        .iter()
        .filter(|id| g.ack(1, **id).expect("answered")["code"] == json!("forbidden"))
        .count();
    assert_eq!(forbidden, 20);
    assert!(!g.view(1).disconnected, "every refusal answered");
    assert!(g.store.messages.get("c1").is_none_or(Vec::is_empty));
}

#[test]
fn a_send_the_store_finds_from_a_non_member_is_forbidden_and_gives_its_slot_back() {
    // The store commits a member list before the gateway hears of it, so a send admitted
    // in between can reach the store after the list that removed its sender: the store
    // answers that it did not store it, and the sender is told `forbidden`.
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.auto_store = false;
    let first = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"late","tempId":"t1"}),
    );
    let Some(heartline_core::gateway::Effect::Append { op, .. }) = g.effects.pop() else {
        panic!("an append asked");
    };
    g.input(Input::Appended {
        op,
        result: Ok(heartline_core::gateway::AppendOutcome::NotMember),
    });
    let a = g.ack(1, first).expect("answered");
    assert_eq!(a["code"], json!("forbidden"), "{a}");
    let errors = g.events_named(1, "message:error");
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["tempId"], json!("t1"));
    assert_eq!(g.gw.metrics().send_refused.get("forbidden"), Some(&1));
    assert!(
        g.events_named(1, "message:new").is_empty(),
        "nothing fanned out"
    );
    // Its place in the rate window was given back: the limit (3) is still whole.
    g.auto_store = true;
    for i in 0..3 {
        let id = g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":"hi","tempId":format!("n{i}")}),
        );
        assert_eq!(g.ack(1, id).expect("answered")["ok"], json!(true));
    }
}

#[test]
fn a_message_stored_while_a_join_reads_its_catch_up_comes_once_in_missed() {
    // bob asks to join c1 just after alice's send: his read is behind her append in the
    // store's queue, so her message is in his `missed`; he is not yet in the room when it
    // is stored, and a notification besides would show it to him twice.
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.emit(1, "conversation:join", json!({"conversationId":"c1"}));
    g.connect(2, "bob", "agent");
    g.auto_store = false;
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"hello","tempId":"t1"}),
    );
    let join = g.emit(
        2,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":0}),
    );
    g.complete_one();
    g.complete_one();
    assert!(g.events_named(2, "message:notification").is_empty());
    assert!(g.events_named(2, "message:new").is_empty());
    let a = g.ack(2, join).expect("answered");
    assert_eq!(seqs(&a["missed"]), vec![json!(1)], "{a}");
    // Not joining any more, and out of the room: a notification it is.
    g.auto_store = true;
    g.emit(2, "conversation:leave", json!({"conversationId":"c1"}));
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"again"}),
    );
    assert_eq!(g.events_named(2, "message:notification").len(), 1);
}

#[test]
fn rate_limit_hit_and_recovery() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    for i in 0..3 {
        g.advance(1_000);
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":format!("m{i}")}),
        );
    }
    let refused = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"too many"}),
    );
    // A reconnect does not reset the window.
    g.peer_close(1);
    g.connect(2, "alice", "customer");
    let still = g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"still too many"}),
    );
    // Sends at 1s, 2s, 3s: the first leaves the window at 11s, not a moment before.
    g.advance(7_999);
    let early = g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"early"}),
    );
    g.advance(1);
    let ok = g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"back"}),
    );
    insta::assert_snapshot!(g.transcript());
    let r = g.ack(1, refused).expect("answered");
    assert_eq!(r["code"], json!("rate_limited"));
    assert_eq!(r["retryAfterMs"], json!(8_000));
    assert_eq!(
        g.ack(2, still).expect("answered")["code"],
        json!("rate_limited")
    );
    assert_eq!(g.ack(2, early).expect("answered")["retryAfterMs"], json!(1));
    assert_eq!(g.ack(2, ok).expect("answered")["ok"], json!(true));
}

#[test]
fn a_client_sending_into_a_full_window_is_answered_not_cut_off() {
    // Default event budget; the window holds 3 sends per 10 s.
    let mut g = setup();
    g.connect(1, "alice", "customer");
    let send = |g: &mut Gw, i: usize| {
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":format!("m{i}"),"tempId":format!("t{i}")}),
        )
    };
    // A thousand back to back, then 300 a second for three seconds (a retry loop).
    let mut ids: Vec<u64> = (0..1_000).map(|i| send(&mut g, i)).collect();
    for s in 0..3 {
        for k in 0..300 {
            g.advance(3);
            ids.push(send(&mut g, 1_000 + s * 300 + k));
        }
        g.advance(100);
    }
    assert!(!g.view(1).disconnected, "still connected");
    let answers: Vec<&Value> = ids
        .iter()
        .map(|id| g.ack(1, *id).expect("answered"))
        .collect();
    let accepted = answers.iter().filter(|a| a["ok"] == json!(true)).count();
    assert_eq!(accepted, 3);
    assert!(answers
        .iter()
        .filter(|a| a["ok"] != json!(true))
        .all(|a| a["code"] == json!("rate_limited") && a["retryAfterMs"].is_u64()));
    assert_eq!(g.events_named(1, "message:error").len(), ids.len() - 3);
    // A flood is still a flood: thousands at once end the connection.
    for i in 0..3_000 {
        if g.view(1).disconnected {
            break;
        }
        send(&mut g, 10_000 + i);
    }
    assert!(g.view(1).disconnected && g.view(1).closed);
    assert_eq!(g.gw.metrics().floods, 1);
}

#[test]
fn a_reply_of_messages_holds_at_most_what_the_send_queue_does() {
    let mut cfg = config();
    cfg.rate_messages = 100;
    // A 16,000-byte queue: replies of at most an eighth of it, 2,000 bytes of messages,
    // so that the four a client may have under way fit in it together.
    cfg.engine.max_buffered_bytes = 16_000;
    let mut g = Gw::new(cfg);
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    g.connect(1, "alice", "customer");
    for i in 1..=10 {
        let content = format!("{i:03}{}", "x".repeat(400));
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":content}),
        );
    }
    g.connect(2, "bob", "agent");
    let join = g.emit(
        2,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":0}),
    );
    let back = g.emit(2, "message:history", json!({"conversationId":"c1"}));
    let forward = g.emit(
        2,
        "message:history",
        json!({"conversationId":"c1","afterSeq":4}),
    );
    let bytes = |v: &Value| serde_json::to_string(v).expect("json").len();
    // A join keeps the first messages and says how far the conversation goes.
    let j = g.ack(2, join).expect("answered");
    // Each message is about 650 bytes as JSON: three fit.
    assert_eq!(
        seqs(&j["missed"]),
        (1..=3).map(|s| json!(s)).collect::<Vec<_>>()
    );
    assert_eq!(j["lastSeq"], json!(10));
    assert!(bytes(&j["missed"]) <= 2_000, "{}", bytes(&j["missed"]));
    // Read back from the newest, a page keeps the last; read forward, the first.
    let b = g.ack(2, back).expect("answered");
    assert_eq!(
        seqs(&b["messages"]),
        (8..=10).map(|s| json!(s)).collect::<Vec<_>>()
    );
    let f = g.ack(2, forward).expect("answered");
    assert_eq!(
        seqs(&f["messages"]),
        (5..=7).map(|s| json!(s)).collect::<Vec<_>>()
    );
    // A limit of 0 asks for nothing: refused, not answered with one message.
    let zero = g.emit(
        2,
        "message:history",
        json!({"conversationId":"c1","limit":0}),
    );
    assert_eq!(
        g.ack(2, zero).expect("answered")["code"],
        json!("invalid_payload")
    );
    // However small the budget, a reply holds at least one message.
    let mut cfg = config();
    cfg.engine.max_buffered_bytes = 10;
    let mut g = Gw::new(cfg);
    g.conversation("c1", &[("alice", "customer")]);
    g.connect(1, "alice", "customer");
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"only"}),
    );
    let h = g.emit(1, "message:history", json!({"conversationId":"c1"}));
    assert_eq!(
        seqs(&g.ack(1, h).expect("answered")["messages"]),
        vec![json!(1)]
    );
}

#[test]
fn join_with_catch_up() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    g.emit(2, "conversation:join", json!({"conversationId":"c1"}));
    for i in 1..=3 {
        g.emit(
            1,
            "message:send",
            json!({"conversationId":"c1","content":format!("m{i}")}),
        );
    }
    // Bob saw up to seq 1, dropped, and comes back asking for what he missed.
    g.peer_close(2);
    g.connect(3, "bob", "agent");
    let join = g.emit(
        3,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":1}),
    );
    let hist = g.emit(
        3,
        "message:history",
        json!({"conversationId":"c1","beforeSeq":3,"limit":1}),
    );
    // No cursor: the latest page, as a chat opens.
    let latest = g.emit(
        3,
        "message:history",
        json!({"conversationId":"c1","limit":2}),
    );
    let denied = g.emit(1, "conversation:join", json!({"conversationId":"nope"}));
    insta::assert_snapshot!(g.transcript());
    let a = g.ack(3, join).expect("answered");
    assert_eq!(a["lastSeq"], json!(3));
    assert_eq!(seqs(&a["missed"]), vec![json!(2), json!(3)]);
    let h = g.ack(3, hist).expect("answered");
    assert_eq!(h["messages"][0]["seq"], json!(2));
    let l = g.ack(3, latest).expect("answered");
    assert_eq!(seqs(&l["messages"]), vec![json!(2), json!(3)]);
    assert_eq!(
        g.ack(1, denied).expect("answered")["code"],
        json!("not_found")
    );
}

#[test]
fn a_leave_while_the_join_reads_its_catch_up_wins() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    g.auto_store = false;
    // Join with a catch-up (a read), then leave before the read is done.
    let join = g.emit(
        2,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":0}),
    );
    let leave = g.emit(2, "conversation:leave", json!({"conversationId":"c1"}));
    assert_eq!(g.ack(2, leave).expect("answered")["ok"], json!(true));
    g.complete_one();
    assert_eq!(g.ack(2, join).expect("answered")["ok"], json!(true));
    // Bob left last: a new message reaches him as a notification, not in the room.
    g.auto_store = true;
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"after the leave"}),
    );
    assert!(g.events_named(2, "message:new").is_empty());
    assert_eq!(g.events_named(2, "message:notification").len(), 1);
    // A join asked after the leave enters the room as usual.
    g.auto_store = false;
    g.emit(
        2,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":1}),
    );
    g.complete_one();
    g.auto_store = true;
    g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"after the second join"}),
    );
    assert_eq!(g.events_named(2, "message:new").len(), 1);
}

#[test]
fn answers_go_to_the_connection_that_asked_not_a_later_one_on_its_session() {
    let mut g = setup();
    g.connect(2, "bob", "agent");
    g.emit(2, "conversation:join", json!({"conversationId":"c1"}));
    g.connect(1, "alice", "customer");
    g.auto_store = false;
    let send = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"asked by alice","tempId":"a1"}),
    );
    let history = g.emit(1, "message:history", json!({"conversationId":"c1"}));
    // Alice leaves the namespace and the same Engine.IO session connects it again (with
    // any token: here hers again) before the store has answered her.
    g.ws_text(1, "41/chat,");
    let again = json!({ "token": gw::token("alice", "customer", 86_400) });
    g.ws_text(1, &format!("40/chat,{again}"));
    g.complete_one();
    g.complete_one();
    // Stored and delivered, but the answers do not reach the later connection.
    assert_eq!(g.store.messages.get("c1").map(Vec::len), Some(1));
    assert_eq!(g.events_named(2, "message:new").len(), 1);
    assert!(g.ack(1, send).is_none());
    assert!(g.ack(1, history).is_none());
    assert!(g.events_named(1, "message:sent").is_empty());
    // The later connection's own requests are answered as usual.
    g.auto_store = true;
    let own = g.emit(1, "message:history", json!({"conversationId":"c1"}));
    assert_eq!(g.ack(1, own).expect("answered")["ok"], json!(true));
}

/// A join still reading its catch-up when its connection left the namespace is that
/// connection's: the session's next connection, which never joined, is notified of new
/// messages (before, the old join kept it out of the notifications, and its leave free).
#[test]
fn a_join_reading_for_an_ended_connection_does_not_hide_notifications_from_the_next() {
    let mut g = setup();
    g.connect(2, "bob", "agent");
    g.connect(1, "alice", "customer");
    g.auto_store = false;
    g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"queued first"}),
    );
    let join = g.emit(
        1,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":0}),
    );
    g.ws_text(1, "41/chat,");
    let again = json!({ "token": gw::token("alice", "customer", 86_400) });
    g.ws_text(1, &format!("40/chat,{again}"));
    g.complete_one();
    g.complete_one();
    assert!(
        g.ack(1, join).is_none(),
        "answered to the connection that asked"
    );
    assert!(g.events_named(1, "message:new").is_empty());
    assert_eq!(g.events_named(1, "message:notification").len(), 1);
}

#[test]
fn token_expiry_with_and_without_refresh() {
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": token("alice", "customer", 10) })));
    g.connect_with(2, Some(json!({ "token": token("bob", "agent", 10) })));
    g.advance(10_000);
    let wrong_user = g.emit(
        1,
        "auth:refresh",
        json!({"token": token("bob", "agent", 3_600)}),
    );
    let refreshed = g.emit(
        1,
        "auth:refresh",
        json!({"token": token("alice", "customer", 3_600)}),
    );
    g.advance(5_000);
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.ack(1, wrong_user).expect("answered")["ok"], json!(false));
    assert_eq!(g.ack(1, refreshed).expect("answered")["ok"], json!(true));
    assert_eq!(g.events_named(1, "auth:expired").len(), 1);
    assert_eq!(g.events_named(2, "auth:expired").len(), 1);
    assert!(!g.view(1).closed, "refreshed in time");
    assert!(
        g.view(2).disconnected && g.view(2).closed,
        "not refreshed: disconnected"
    );
}

#[test]
fn wall_clock_times_follow_a_clock_that_stepped() {
    // alice's and bob's tokens both run out 60 s after the epoch. 10 s in, the machine's
    // clock is found 2 minutes ahead of where the gateway had it (set at last by NTP,
    // say): alice's token has run out by the clock, and expires at the next deadline.
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": token("alice", "customer", 60) })));
    g.advance(10_000);
    let wall = g.gw.wall_ms(g.now);
    assert_eq!(wall, gw::EPOCH_MS + 10_000);
    // Half a second off is the reading's own delay, not a step: nothing moves.
    g.input(Input::WallClock {
        wall_ms: wall + 500,
    });
    assert_eq!(g.gw.wall_ms(g.now), wall);
    assert_eq!(g.gw.metrics().wall_clock_steps, 0);
    g.input(Input::WallClock {
        wall_ms: wall + 120_000,
    });
    assert_eq!(g.gw.wall_ms(g.now), wall + 120_000);
    assert_eq!(g.gw.metrics().wall_clock_steps, 1);
    g.advance(1);
    assert_eq!(
        g.events_named(1, "auth:expired").len(),
        1,
        "expired by the clock"
    );
    // A connection made now is told the stepped time.
    g.connect_with(2, Some(json!({ "token": token("bob", "agent", 3_600) })));
    let success = g.events_named(2, "connection:success");
    assert_eq!(success[0]["serverTime"], json!(wall + 120_001));
    // The clock steps back 3 minutes: carol's token, 5 minutes from the epoch by the
    // clock, ran out 170 s of monotonic time later by the clock as it was, and now does
    // 350 s later.
    g.connect_with(3, Some(json!({ "token": token("carol", "customer", 300) })));
    g.input(Input::WallClock {
        wall_ms: wall + 120_001 - 180_000,
    });
    g.advance(170_000);
    assert!(
        g.events_named(3, "auth:expired").is_empty(),
        "not yet by the clock"
    );
    g.advance(179_998);
    assert!(
        g.events_named(3, "auth:expired").is_empty(),
        "not yet by the clock"
    );
    g.advance(2);
    assert_eq!(g.events_named(3, "auth:expired").len(), 1);
}

#[test]
fn a_token_expired_by_a_wall_clock_step_still_gets_its_grace() {
    // alice's token runs out 60 s after the epoch; 10 s in, the clock is found 10 minutes
    // ahead. Her expiry is now in the past: she is told at once, and the grace (5 s) runs
    // from then, not from where the step put her `exp`.
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": token("alice", "customer", 60) })));
    g.advance(10_000);
    let wall = g.gw.wall_ms(g.now);
    g.input(Input::WallClock {
        wall_ms: wall + 600_000,
    });
    g.advance(1);
    assert_eq!(g.events_named(1, "auth:expired").len(), 1);
    assert!(!g.view(1).closed, "the grace runs from auth:expired");
    g.advance(4_998);
    assert!(!g.view(1).closed, "still within the grace");
    let refreshed = g.emit(
        1,
        "auth:refresh",
        json!({"token": token("alice", "customer", 3_600)}),
    );
    assert_eq!(g.ack(1, refreshed).expect("answered")["ok"], json!(true));
    g.advance(60_000);
    assert!(!g.view(1).closed, "refreshed within the grace");
}

#[test]
fn deadlines_handled_late_act_as_of_when_they_are_handled() {
    // The driver wakes 60 s late (pings every 25 s with 20 s to answer, heartbeats every
    // 30 s): what fell due fires once, now. The PING sent now has its whole 20 s to be
    // answered, and one heartbeat goes, not one for each interval missed.
    let mut g = setup();
    g.connect_with(
        1,
        Some(json!({ "token": token("alice", "customer", 3_600) })),
    );
    g.wake_late(60_000);
    assert!(
        !g.view(1).closed,
        "not closed for a PING it never had time to answer"
    );
    assert_eq!(g.events_named(1, "heartbeat").len(), 1);
    g.advance(60_000);
    assert!(!g.view(1).closed, "its PONGs answered, it stays");
    assert_eq!(g.events_named(1, "heartbeat").len(), 3);
}

#[test]
fn deadlines_handled_late_still_fire_in_their_order() {
    // alice's token runs out at 60 s (grace 5 s, so her close for it is due at 65 s) and
    // her PING of 50 s goes unanswered (its deadline at 70 s); bob's next PING is due at
    // 62 s. The driver wakes at 80 s: bob's PING, then alice's close for her token, a
    // Socket.IO DISCONNECT, and only then her PING's deadline, by which she is gone.
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": token("alice", "customer", 60) })));
    g.advance(37_000);
    g.connect(2, "bob", "agent");
    g.advance(12_000);
    g.auto_pong = false;
    g.advance(11_000);
    assert_eq!(g.events_named(1, "auth:expired").len(), 1);
    assert!(!g.view(1).closed);
    g.wake_late(20_000);
    assert!(
        g.view(1).disconnected,
        "closed for its token (a DISCONNECT), not for the later PING deadline"
    );
}

/// A token for `user:kind` whose `exp` is `exp_after_s` seconds after the harness epoch,
/// fraction included (a JWT's NumericDate may have one).
fn token_expiring_at(user: &str, kind: &str, exp_after_s: f64) -> String {
    let exp = (gw::EPOCH_MS / 1000) as f64 + exp_after_s;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "userType": kind, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(gw::SECRET),
    )
    .expect("sign")
}

#[test]
fn an_expiry_counts_to_the_millisecond_and_a_refresh_later_in_the_same_second_extends_it() {
    let mut g = setup();
    let first = token_expiring_at("alice", "customer", 10.25);
    g.connect_with(1, Some(json!({ "token": first })));
    g.advance(10_000);
    assert!(
        g.events_named(1, "auth:expired").is_empty(),
        "10.000 s: the token runs to 10.250 s"
    );
    let later = token_expiring_at("alice", "customer", 10.75);
    let refreshed = g.emit(1, "auth:refresh", json!({ "token": later }));
    assert_eq!(
        g.ack(1, refreshed).expect("answered")["ok"],
        json!(true),
        "an exp 0.5 s later, in the same second, is later"
    );
    let same = token_expiring_at("alice", "customer", 10.75);
    let again = g.emit(1, "auth:refresh", json!({ "token": same }));
    assert_eq!(g.ack(1, again).expect("answered")["ok"], json!(false));
    g.advance(749);
    assert!(g.events_named(1, "auth:expired").is_empty(), "10.749 s");
    g.advance(1);
    assert_eq!(g.events_named(1, "auth:expired").len(), 1, "10.750 s");
}

#[test]
fn a_refreshed_token_brings_its_role() {
    let mut g = setup();
    g.connect_with(1, Some(json!({ "token": admin_token("ops") })));
    g.emit_noack(1, "metrics:request", json!(null));
    assert_eq!(g.events_named(1, "metrics:response").len(), 1);
    // The same user, a later expiry, no admin role: the connection is no longer admin.
    let r = g.emit(
        1,
        "auth:refresh",
        json!({"token": token("ops", "agent", 200_000)}),
    );
    assert_eq!(g.ack(1, r).expect("answered")["ok"], json!(true));
    g.emit_noack(1, "metrics:request", json!(null));
    assert_eq!(g.events_named(1, "metrics:response").len(), 1);
}

/// A polling request `request` (a handshake without `sid`).
fn polling(g: &mut Gw, request: u64, method: Method, sid: Option<&str>, body: String) {
    let handshake = Handshake {
        accepted_at: g.now,
        authorization: None,
        remote: None,
    };
    g.input(Input::Network(Net::Http {
        request: heartline_core::RequestId(request),
        method,
        query: Query {
            eio: Some("4".into()),
            transport: Some("polling".into()),
            sid: sid.map(str::to_owned),
        },
        body: body.into(),
        handshake,
    }));
}

/// A polling session (requests `first` and `first + 1`) with `/chat` connected as alice;
/// returns its sid.
fn polling_alice(g: &mut Gw, first: u64) -> String {
    polling(g, first, Method::Get, None, String::new());
    let open = http_body(g, first).expect("handshake answered");
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let connect = format!(
        "40/chat,{}",
        json!({"token": token("alice", "customer", 86_400)})
    );
    polling(g, first + 1, Method::Post, Some(&sid), connect);
    assert_eq!(http_body(g, first + 1).as_deref(), Some("ok"));
    sid
}

/// A gateway whose connections may have two events at once, then two refusals: the
/// fifth event of a burst is a flood.
fn tight_budget() -> Gw {
    let mut cfg = config();
    cfg.event_budget = heartline_core::gateway::BudgetConfig {
        burst: 2,
        per_second: 1,
        refusal_milli: 1000,
    };
    Gw::new(cfg)
}

/// A leave of a conversation the connection is in goes through with the budget spent
/// (refused, the connection would stay in the room its client took itself out of); a
/// leave of anything else is charged like any event.
#[test]
fn leaving_a_joined_conversation_is_never_refused_over_the_budget() {
    let mut g = tight_budget();
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    let join = g.emit(1, "conversation:join", json!({"conversationId": "c1"}));
    assert_eq!(g.ack(1, join).expect("answered")["ok"], json!(true));
    g.emit(1, "ping", json!({}));
    let over = g.emit(1, "conversation:leave", json!({"conversationId": "c2"}));
    assert_eq!(
        g.ack(1, over).expect("answered")["code"],
        json!("rate_limited"),
        "a leave of a conversation it is not in is charged"
    );
    let leave = g.emit(1, "conversation:leave", json!({"conversationId": "c1"}));
    assert_eq!(g.ack(1, leave).expect("answered"), &json!({"ok": true}));
    g.emit(
        2,
        "message:send",
        json!({"conversationId": "c1", "content": "after the leave"}),
    );
    assert!(
        g.events_named(1, "message:new").is_empty(),
        "out of the room"
    );
}

/// An empty `conversationId` names no conversation: a malformed payload, whichever event
/// carries it.
#[test]
fn an_empty_conversation_id_is_an_invalid_payload_for_every_event() {
    let mut g = Gw::new(config());
    g.connect(1, "alice", "customer");
    for event in [
        "conversation:join",
        "conversation:leave",
        "message:history",
        "message:send",
    ] {
        let ack = g.emit(
            1,
            event,
            json!({"conversationId": "", "content": "hi", "tempId": "t1"}),
        );
        assert_eq!(
            g.ack(1, ack).expect("answered")["code"],
            json!("invalid_payload"),
            "{event}"
        );
    }
}

/// A leave of a conversation whose join is still reading its catch-up goes through with
/// the budget spent too: refused, the join would put the connection in the room once read,
/// its client having left it.
#[test]
fn leaving_a_conversation_still_being_joined_is_never_refused_over_the_budget() {
    let mut g = tight_budget();
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    g.auto_store = false;
    let join = g.emit(
        1,
        "conversation:join",
        json!({"conversationId": "c1", "afterSeq": 0}),
    );
    g.emit(1, "ping", json!({}));
    let leave = g.emit(1, "conversation:leave", json!({"conversationId": "c1"}));
    assert_eq!(g.ack(1, leave).expect("answered"), &json!({"ok": true}));
    g.complete_one();
    g.auto_store = true;
    assert!(g.ack(1, join).is_some(), "the join is answered");
    g.emit(
        2,
        "message:send",
        json!({"conversationId": "c1", "content": "after the leave"}),
    );
    assert!(
        g.events_named(1, "message:new").is_empty(),
        "never in the room: {:?}",
        g.event_names(1)
    );
}

/// An `auth:refresh` is served with the budget spent: refused, the connection would be
/// closed at the end of its grace with a valid newer token in its client's hands. A
/// stream of them is still a flood.
#[test]
fn a_refresh_is_served_over_the_budget_and_a_stream_of_them_is_a_flood() {
    let mut g = tight_budget();
    g.connect(1, "alice", "customer");
    g.emit(1, "ping", json!({}));
    g.emit(1, "ping", json!({}));
    let over = g.emit(1, "ping", json!({}));
    assert_eq!(
        g.ack(1, over).expect("answered")["code"],
        json!("rate_limited"),
        "the budget is spent"
    );
    let later = token("alice", "customer", 172_800);
    let refreshed = g.emit(1, "auth:refresh", json!({ "token": later }));
    assert_eq!(
        g.ack(1, refreshed).expect("answered")["ok"],
        json!(true),
        "served with the budget spent"
    );
    // Two refusals deep, one spent on the ping: the refreshes that follow at once spend
    // the other, then flood.
    for _ in 0..3 {
        g.emit_noack(1, "auth:refresh", json!({ "token": later }));
    }
    assert!(g.transcript().contains("event flood"), "{}", g.transcript());
}

/// The body of the polling response to `request`, if there was one.
fn http_body(g: &Gw, request: u64) -> Option<String> {
    g.outputs.iter().find_map(|(_, out)| match out {
        heartline_core::gateway::Output::Transmit(
            heartline_core::engine::Transmit::HttpResponse {
                request: r, body, ..
            },
        ) if r.0 == request => Some(String::from_utf8_lossy(body).into_owned()),
        _ => None,
    })
}

#[test]
fn a_polling_client_that_does_not_fetch_has_droppable_traffic_shed_first() {
    let mut cfg = config();
    cfg.heartbeat_interval_ms = 100;
    cfg.engine.max_buffered_bytes = 400;
    let mut g = Gw::new(cfg);
    g.conversation("c1", &[("alice", "customer"), ("bob", "agent")]);
    let sid = polling_alice(&mut g, 1);
    // Three seconds of heartbeats, about 50 bytes each, no GET: far past 400 bytes, shed
    // once the buffer is full, and the session goes on.
    g.advance(3_000);
    assert_eq!(
        g.gw.engine().sessions_held(),
        1,
        "not closed for heartbeats"
    );
    assert!(
        g.gw.engine().frames_shed() >= 20,
        "{}",
        g.gw.engine().frames_shed()
    );
    // A message meeting the full buffer sheds the heartbeats queued and is kept.
    g.connect(2, "bob", "agent");
    g.emit(
        2,
        "message:send",
        json!({"conversationId":"c1","content":"kept"}),
    );
    assert_eq!(g.gw.engine().sessions_held(), 2);
    polling(&mut g, 3, Method::Get, Some(&sid), String::new());
    let body = http_body(&g, 3).expect("answered");
    assert!(body.contains("message:notification"), "{body}");
    assert!(body.contains("kept"), "{body}");
}

#[test]
fn a_flood_inside_one_polling_post_ends_the_session_there() {
    let mut g = tight_budget();
    let sid = polling_alice(&mut g, 1);
    // One POST: six events, the fifth a flood, then a send the session no longer makes.
    let mut packets = vec![r#"42/chat,["ping",{}]"#.to_owned(); 6];
    packets.push(
        r#"42/chat,["message:send",{"conversationId":"c1","content":"x","tempId":"t"}]"#.into(),
    );
    polling(&mut g, 3, Method::Post, Some(&sid), packets.join("\u{1e}"));
    assert_eq!(g.gw.metrics().floods, 1);
    assert!(
        g.store.messages.is_empty(),
        "nothing after the flood is served"
    );
    assert_eq!(g.gw.rate_limit_entries(), 0);
}

#[test]
fn a_connect_left_and_made_again_in_one_post_connects_nobody() {
    let mut g = setup();
    polling(&mut g, 1, Method::Get, None, String::new());
    let open = http_body(&g, 1).expect("handshake answered");
    let open: Value = serde_json::from_str(open.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    // Both CONNECTs are decided after the whole body is read: the first one's answer must
    // not settle the second, whose token is another user's.
    let alice = json!({"token": token("alice", "customer", 86_400)});
    let bob = json!({"token": token("bob", "agent", 86_400)});
    let body = format!("40/chat,{alice}\u{1e}41/chat,\u{1e}40/chat,{bob}");
    polling(&mut g, 2, Method::Post, Some(&sid), body);
    let connected = g.outputs.iter().any(|(_, out)| {
        matches!(
            out,
            heartline_core::gateway::Output::Notice(
                heartline_core::gateway::Notice::Connected { .. }
            )
        )
    });
    assert!(!connected, "no connection from a CONNECT made twice");
    assert_eq!(g.gw.engine().session_count(), 0, "the session ended");
}

#[test]
fn sends_before_the_clients_close_in_one_polling_post_are_stored() {
    let mut g = setup();
    // A client that sends, leaves the namespace and closes, all in one POST (as
    // socket.io-client's emit then disconnect may go out together); and another whose POST
    // ends in a packet that does not decode.
    for (n, tail) in [(0u64, "41/chat,\u{1e}1"), (1, "9")] {
        let base = 10 * n;
        let sid = polling_alice(&mut g, base + 1);
        let send = format!(
            r#"42/chat,["message:send",{{"conversationId":"c1","content":"sent before the end {n}","tempId":"t{n}"}}]"#
        );
        polling(
            &mut g,
            base + 3,
            Method::Post,
            Some(&sid),
            format!("{send}\u{1e}{tail}"),
        );
    }
    let stored: Vec<&str> = g
        .store
        .messages
        .get("c1")
        .map(|l| l.iter().map(|m| m.content.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(stored, ["sent before the end 0", "sent before the end 1"]);
    assert_eq!(g.gw.metrics().floods, 0);
}

#[test]
fn acks_a_client_sends_unasked_are_paid_for_like_other_events() {
    let mut g = tight_budget();
    g.connect(1, "alice", "customer");
    g.connect(2, "bob", "agent");
    // The gateway asks no client for acks: each is dropped, and a stream of them is a
    // flood like any other. An ack without an id (the reference server ignores it too)
    // is one of them, not a broken connection.
    for id in 0..3 {
        g.ws_text(1, &format!("43/chat,{id}[]"));
    }
    g.ws_text(1, "43/chat,[]");
    assert!(!g.view(1).disconnected);
    g.ws_text(1, "43/chat,4[]");
    assert!(g.view(1).disconnected);
    assert_eq!(g.gw.metrics().floods, 1);
    assert!(!g.view(2).disconnected, "others unaffected");
}

/// Five events at once, one a second; ten refusals at half an event each.
fn small_budget() -> heartline_core::gateway::GatewayConfig {
    let mut cfg = config();
    cfg.event_budget = heartline_core::gateway::BudgetConfig {
        burst: 5,
        per_second: 1,
        refusal_milli: 500,
    };
    cfg
}

#[test]
fn events_over_budget_are_refused_and_a_flood_is_disconnected() {
    let mut g = Gw::new(small_budget());
    g.connect(1, "alice", "customer");
    g.connect_with(2, Some(json!({ "token": admin_token("ops") })));
    for _ in 0..5 {
        g.emit_noack(1, "ping", json!({}));
    }
    // Over the budget: an event that asked for an ack is told when to come back, one that
    // did not is dropped; neither ends the connection.
    let join = g.emit(1, "conversation:join", json!({"conversationId": "c1"}));
    g.emit_noack(1, "ping", json!({}));
    assert_eq!(
        g.ack(1, join).expect("answered"),
        &json!({"ok": false, "error": "Rate limit exceeded", "code": "rate_limited", "retryAfterMs": 1000})
    );
    assert_eq!(g.events_named(1, "pong").len(), 5);
    // A second later one more event is served, and the refusals are whole again.
    g.advance(1_000);
    g.emit_noack(1, "ping", json!({}));
    assert_eq!(g.events_named(1, "pong").len(), 6);
    for _ in 0..10 {
        g.emit_noack(1, "ping", json!({}));
    }
    assert!(!g.view(1).disconnected);
    g.emit_noack(1, "ping", json!({}));
    g.emit_noack(2, "metrics:request", json!(null));
    insta::assert_snapshot!(g.transcript());
    assert_eq!(g.events_named(1, "pong").len(), 6);
    assert!(g.view(1).disconnected && g.view(1).closed);
    assert_eq!(g.gw.metrics().events_refused, 12);
    assert_eq!(g.gw.metrics().floods, 1);
    assert_eq!(
        g.events_named(2, "metrics:response").len(),
        1,
        "others unaffected"
    );
}

/// A connection's budget is not made whole by connecting again: leaving the namespace and
/// connecting it again on the same session, or replacing the connection with a new
/// session, starts from what was left; a budget left long enough is whole again.
#[test]
fn connecting_again_does_not_refill_the_event_budget() {
    let mut g = Gw::new(small_budget());
    let alice = token("alice", "customer", 600);
    g.connect_with(1, Some(json!({ "token": alice })));
    for _ in 0..5 {
        g.emit_noack(1, "ping", json!({}));
    }
    assert_eq!(g.events_named(1, "pong").len(), 5, "the burst is served");
    let refused = json!({"ok": false, "error": "Rate limit exceeded", "code": "rate_limited", "retryAfterMs": 1000});
    // The namespace left and connected again on the same session.
    g.ws_text(1, "41/chat,");
    g.ws_text(1, &format!(r#"40/chat,{{"token":"{alice}"}}"#));
    assert_eq!(g.events_named(1, "connection:success").len(), 2);
    let join = g.emit(1, "conversation:join", json!({"conversationId": "c1"}));
    assert_eq!(g.ack(1, join), Some(&refused), "still spent");
    // A new session that replaces it.
    g.connect_with(2, Some(json!({ "token": alice })));
    assert!(g.view(1).disconnected, "replaced");
    let join = g.emit(2, "conversation:join", json!({"conversationId": "c1"}));
    assert_eq!(g.ack(2, join), Some(&refused), "still spent");
    // Left for longer than it takes to refill: whole again.
    g.peer_close(2);
    g.advance(5_000);
    g.connect_with(3, Some(json!({ "token": alice })));
    for _ in 0..5 {
        g.emit_noack(3, "ping", json!({}));
    }
    assert_eq!(g.events_named(3, "pong").len(), 5);
    // Another user's budget was never touched.
    g.connect(4, "bob", "agent");
    for _ in 0..5 {
        g.emit_noack(4, "ping", json!({}));
    }
    assert_eq!(g.events_named(4, "pong").len(), 5);
}

#[test]
fn invalid_payloads_change_nothing() {
    let mut g = setup();
    g.connect(1, "alice", "customer");
    let a = g.emit(1, "message:send", json!("just a string"));
    let b = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":""}),
    );
    let c = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"x".repeat(10_001)}),
    );
    let d = g.emit(1, "conversation:join", json!({"conversationId": 5}));
    let e = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"x","tempId":[7]}),
    );
    assert_eq!(
        g.ack(1, a).expect("answered")["code"],
        json!("invalid_payload")
    );
    assert_eq!(
        g.ack(1, b).expect("answered")["code"],
        json!("invalid_payload")
    );
    assert_eq!(g.ack(1, c).expect("answered")["code"], json!("too_large"));
    assert_eq!(
        g.ack(1, d).expect("answered")["code"],
        json!("invalid_payload")
    );
    assert_eq!(
        g.ack(1, e).expect("answered")["code"],
        json!("invalid_payload")
    );
    assert!(g.store.messages.is_empty());
    assert_eq!(g.gw.rate_limit_entries(), 0);
    assert!(!g.view(1).closed);
}

#[test]
fn a_restored_send_from_the_future_counts_as_made_now() {
    // The wall clock went back 5 s across the restart: a stored send is stamped after now.
    let mut g = setup();
    g.input(heartline_core::gateway::Input::SendsRestored {
        sender: heartline_core::gateway::Member {
            user_id: "alice".into(),
            user_type: "customer".into(),
        },
        created_at_ms: vec![gw::EPOCH_MS + 5_000],
    });
    g.connect(1, "alice", "customer");
    g.advance(1_000);
    let first = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"after the clock went back"}),
    );
    assert_eq!(g.ack(1, first).expect("answered")["ok"], json!(true));
    // The restored send leaves the window 10 s after the start, this one 1 s later; each
    // deadline forgets what it is for, and the user's window then empties.
    g.advance(9_500);
    assert_eq!(g.gw.rate_limit_entries(), 1);
    g.advance(1_000);
    assert_eq!(g.gw.rate_limit_entries(), 0);
    let again = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"the window is open again"}),
    );
    assert_eq!(g.ack(1, again).expect("answered")["ok"], json!(true));
}

#[test]
fn rate_window_survives_a_restart() {
    // A fresh gateway after a crash: the store hands back the sends of the last window.
    let mut g = setup();
    g.input(heartline_core::gateway::Input::SendsRestored {
        sender: heartline_core::gateway::Member {
            user_id: "alice".into(),
            user_type: "customer".into(),
        },
        // 9 s, 6 s and 1 s before this start (window 10 s): all still in the window.
        created_at_ms: vec![
            gw::EPOCH_MS - 9_000,
            gw::EPOCH_MS - 6_000,
            gw::EPOCH_MS - 1_000,
        ],
    });
    g.connect(1, "alice", "customer");
    let refused = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"right after the restart"}),
    );
    g.advance(1_000);
    let ok = g.emit(
        1,
        "message:send",
        json!({"conversationId":"c1","content":"once the oldest left"}),
    );
    insta::assert_snapshot!(g.transcript());
    let r = g.ack(1, refused).expect("answered");
    assert_eq!(r["code"], json!("rate_limited"));
    assert_eq!(r["retryAfterMs"], json!(1_000));
    assert_eq!(g.ack(1, ok).expect("answered")["ok"], json!(true));
}

#[test]
fn a_history_page_read_for_a_member_removed_meanwhile_is_refused() {
    let mut g = setup();
    g.connect(2, "bob", "agent");
    g.auto_store = false;
    let page = g.emit(2, "message:history", json!({"conversationId":"c1"}));
    let join = g.emit(
        2,
        "conversation:join",
        json!({"conversationId":"c1","afterSeq":0}),
    );
    // Bob is taken out of c1 while both reads are with the store.
    g.conversation("c1", &[("alice", "customer")]);
    g.complete_one();
    g.complete_one();
    for (what, id) in [("history", page), ("join", join)] {
        let reply = g.ack(2, id).expect("answered");
        assert_eq!(reply["ok"], json!(false), "{what}: {reply}");
        assert_eq!(reply["code"], json!("forbidden"), "{what}: {reply}");
    }
}

#[test]
fn the_idle_timeout_counts_what_a_person_does_not_what_the_client_does_by_itself() {
    let mut cfg = config();
    cfg.idle_timeout_ms = 10_000;
    cfg.heartbeat_interval_ms = 3_000;
    let mut g = Gw::new(cfg);
    g.conversation("c1", &[("alice", "customer")]);
    g.connect(1, "alice", "customer");
    // A page left open: its client answers every heartbeat, pings and refreshes nothing
    // else. At 6 s its user opens the conversation.
    for step in 1..=5u64 {
        g.advance(3_000);
        g.emit_noack(1, "heartbeat:response", json!({ "timestamp": 0 }));
        g.emit_noack(1, "ping", json!({}));
        if step == 2 {
            g.emit(1, "conversation:join", json!({"conversationId":"c1"}));
        }
        assert!(!g.view(1).disconnected, "connected at {} s", step * 3);
    }
    // 15 s: still within 10 s of the join; by 16 s it is not.
    g.advance(1_500);
    assert!(g.view(1).disconnected, "idle since the join at 6 s");
}
