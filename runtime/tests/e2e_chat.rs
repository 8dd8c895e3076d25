//! End to end over loopback: the contract's connect, auth, chat, replacement, presence and
//! rate-limit rules against the real server type.

mod support;

use std::time::Duration;

use heartline_runtime::client::{ClientEvent, ClientOptions, Connect};
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn connect_gets_connection_success() {
    let mut server = TestServer::start(|_| {}).await;
    let opts = ClientOptions::with_token(&token("alice", "customer", 3600));
    let mut c = try_connect(server.addr, opts)
        .await
        .client()
        .expect("connected");
    let ok = c.wait_event("connection:success").await.expect("event");
    assert_eq!(ok["userId"], "alice");
    assert_eq!(ok["userType"], "customer");
    assert_eq!(ok["socketId"], c.socket_id());
    let server_time = ok["serverTime"].as_u64().expect("serverTime");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    assert!(now.abs_diff(server_time) < 60_000, "{server_time} vs {now}");
    // The client's ping event is answered with pong.
    c.emit("ping", json!({})).expect("emit");
    let pong = c.wait_event("pong").await.expect("pong");
    assert!(pong["timestamp"].is_u64());
    server.stop().await;
}

#[tokio::test]
async fn auth_refusals_are_connect_errors_with_the_contract_messages() {
    let mut server = TestServer::start(|_| {}).await;
    let refused = |c: Connect| match c {
        Connect::Refused(v) => v,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let missing = refused(try_connect(server.addr, ClientOptions::default()).await);
    assert_eq!(missing, json!({"message": "Authentication required"}));

    let forged = token_with("another-secret", "alice", "customer", 3600);
    let bad = refused(try_connect(server.addr, ClientOptions::with_token(&forged)).await);
    assert_eq!(bad, json!({"message": "Invalid authentication token"}));

    let garbage = refused(try_connect(server.addr, ClientOptions::with_token("not.a.jwt")).await);
    assert_eq!(garbage, json!({"message": "Invalid authentication token"}));

    let expired = token("alice", "customer", -60);
    let old = refused(try_connect(server.addr, ClientOptions::with_token(&expired)).await);
    assert_eq!(old, json!({"message": "Invalid authentication token"}));

    // The bearer header of the handshake request is accepted too.
    let header = format!("Bearer {}", token("alice", "customer", 3600));
    let opts = ClientOptions {
        headers: vec![("Authorization".into(), header)],
        ..ClientOptions::default()
    };
    let mut c = try_connect(server.addr, opts)
        .await
        .client()
        .expect("connected");
    c.wait_event("connection:success").await.expect("success");

    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_connects_refused_total{reason=\"missing\"}"),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "heartline_connects_refused_total{reason=\"invalid\"}"),
        Some(3.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn join_send_ack_fan_out_and_notification() {
    let mut server = TestServer::start(|_| {}).await;
    server
        .conversation("c1", &["alice:customer", "bob:agent", "carol:agent"])
        .await;
    let mut bob = server.connect("bob", "agent").await;
    let mut carol = server.connect("carol", "agent").await;
    let mut alice = server.connect("alice", "customer").await;
    // Bob shares a conversation with Alice: he sees her come online.
    // Carol came online first, then Alice.
    let first = bob.wait_event("user:online").await.expect("online");
    assert_eq!(first, json!({"userId": "carol", "userType": "agent"}));
    let online = bob.wait_event("user:online").await.expect("online");
    assert_eq!(online, json!({"userId": "alice", "userType": "customer"}));

    for c in [&mut alice, &mut bob] {
        let ack = c
            .emit_ack("conversation:join", json!({"conversationId": "c1"}))
            .await
            .expect("join ack");
        assert_eq!(ack["ok"], true, "{ack}");
        assert_eq!(ack["lastSeq"], 0);
        assert_eq!(ack["missed"], json!([]));
    }
    let ack = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "hello", "tempId": "t1"}),
        )
        .await
        .expect("send ack");
    assert_eq!(ack["ok"], true, "{ack}");
    assert_eq!(ack["duplicate"], false);
    let m = &ack["message"];
    assert_eq!(m["seq"], 1);
    assert_eq!(m["content"], "hello");
    assert_eq!(m["senderId"], "alice");
    assert_eq!(m["senderType"], "customer");
    assert_eq!(m["tempId"], "t1");
    assert_eq!(m["conversationId"], "c1");
    assert!(m["id"].is_string(), "{m}");
    // Milliseconds since the epoch, from this machine's clock (a minute either way: the
    // point is the unit, not the time).
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let created = m["createdAt"].as_u64().expect("createdAt is an integer");
    assert!(
        created.abs_diff(now_ms) < 60_000,
        "createdAt {created}, now {now_ms} ms"
    );

    let new_a = alice.wait_event("message:new").await.expect("alice new");
    assert_eq!(&new_a, m);
    let sent = alice.wait_event("message:sent").await.expect("sent");
    assert_eq!(sent["tempId"], "t1");
    assert_eq!(&sent["message"], m);
    let new_b = bob.wait_event("message:new").await.expect("bob new");
    assert_eq!(&new_b, m);
    let note = carol
        .wait_event("message:notification")
        .await
        .expect("note");
    assert_eq!(note["conversationId"], "c1");
    assert_eq!(&note["message"], m);

    // Not a member: forbidden; unknown conversation: not_found (or forbidden).
    let mut dave = server.connect("dave", "customer").await;
    let ack = dave
        .emit_ack("conversation:join", json!({"conversationId": "c1"}))
        .await
        .expect("ack");
    assert_eq!(ack["ok"], false);
    assert_eq!(ack["code"], "forbidden");
    let ack = dave
        .emit_ack(
            "message:send",
            json!({"conversationId": "nope", "content": "x"}),
        )
        .await
        .expect("ack");
    assert_eq!(ack["ok"], false);
    assert!(
        ack["code"] == "not_found" || ack["code"] == "forbidden",
        "{ack}"
    );

    // History and catch-up after a reconnect.
    let hist = bob
        .emit_ack("message:history", json!({"conversationId": "c1"}))
        .await
        .expect("history");
    assert_eq!(hist["messages"].as_array().map(Vec::len), Some(1), "{hist}");
    drop(carol);
    let mut carol = server.connect("carol", "agent").await;
    let ack = carol
        .emit_ack(
            "conversation:join",
            json!({"conversationId": "c1", "afterSeq": 0}),
        )
        .await
        .expect("join");
    assert_eq!(ack["lastSeq"], 1);
    assert_eq!(ack["missed"].as_array().map(Vec::len), Some(1), "{ack}");
    assert_eq!(ack["missed"][0]["content"], "hello");
    server.stop().await;
}

#[tokio::test]
async fn raw_events_arrive_unparsed_and_others_parsed() {
    let mut server = TestServer::start(|_| {}).await;
    server.conversation("c1", &["alice:customer"]).await;
    let opts = ClientOptions {
        raw_events: vec!["message:new".into()],
        ..ClientOptions::with_token(&token("alice", "customer", 3600))
    };
    let mut alice = try_connect(server.addr, opts)
        .await
        .client()
        .expect("connected");
    alice
        .wait_event("connection:success")
        .await
        .expect("success");
    let join = alice
        .emit_ack("conversation:join", json!({"conversationId": "c1"}))
        .await
        .expect("join");
    assert_eq!(join["ok"], true, "{join}");
    let ack = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "a \"quoted\" é", "tempId": "r1"}),
        )
        .await
        .expect("send ack");
    assert_eq!(ack["ok"], true, "{ack}");
    // message:new comes as its text, the rest (message:sent) parsed as usual.
    let (mut raw, mut sent) = (None, None);
    while raw.is_none() || sent.is_none() {
        match alice.next(Duration::from_secs(5)).await.expect("event") {
            ClientEvent::Raw { data } => raw = Some(data),
            ClientEvent::Event { name, args } if name == "message:sent" => sent = Some(args),
            ClientEvent::Event { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    let raw = raw.expect("raw");
    assert!(raw.starts_with(r#"["message:new",{"#), "{raw}");
    let parsed: Value = serde_json::from_str(&raw).expect("JSON");
    assert_eq!(parsed, json!(["message:new", ack["message"]]));
    assert_eq!(sent.expect("sent")[0]["message"], ack["message"]);
    server.stop().await;
}

#[tokio::test]
async fn duplicate_temp_id_returns_the_stored_message() {
    let mut server = TestServer::start(|_| {}).await;
    server.conversation("c1", &["alice:customer"]).await;
    let mut alice = server.connect("alice", "customer").await;
    let send = json!({"conversationId": "c1", "content": "once", "tempId": "dup-1"});
    let first = alice
        .emit_ack("message:send", send.clone())
        .await
        .expect("ack");
    assert_eq!(first["duplicate"], false);
    // Retried on a new connection, as a client does after a lost ack.
    drop(alice);
    let mut alice = server.connect("alice", "customer").await;
    let second = alice.emit_ack("message:send", send).await.expect("ack");
    assert_eq!(second["ok"], true);
    assert_eq!(second["duplicate"], true);
    assert_eq!(second["message"], first["message"]);
    assert_eq!(stored(server.addr, "c1").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_retry_before_the_ack_with_the_window_full_is_a_duplicate() {
    let mut server = TestServer::start(|c| {
        c.rate_limit.messages = 1;
        c.rate_limit.window_ms = 60_000;
    })
    .await;
    server.conversation("c1", &["alice:customer"]).await;
    let mut alice = server.connect("alice", "customer").await;
    let send = json!({"conversationId": "c1", "content": "once", "tempId": "early-1"});
    // The retry leaves before the first ack arrives: the window is full by then, and the
    // first is not stored yet; the store answers it after committing the first.
    let first = alice
        .emit_with_ack("message:send", send.clone())
        .expect("send");
    let retry = alice.emit_with_ack("message:send", send).expect("send");
    let wait = |rx: tokio::sync::oneshot::Receiver<Vec<Value>>| async move {
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .expect("answered in time")
            .expect("answered")
    };
    let first: Vec<Value> = wait(first).await;
    let retry: Vec<Value> = wait(retry).await;
    assert_eq!(first[0]["duplicate"], false, "{first:?}");
    assert_eq!(retry[0]["duplicate"], true, "{retry:?}");
    assert_eq!(retry[0]["message"], first[0]["message"]);
    let other = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "new", "tempId": "early-2"}),
        )
        .await
        .expect("ack");
    assert_eq!(other["code"], "rate_limited", "{other}");
    assert_eq!(stored(server.addr, "c1").await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn replacement_tells_the_old_connection_then_disconnects_it() {
    let mut server = TestServer::start(|_| {}).await;
    let mut old = server.connect("alice", "customer").await;
    let mut new = server.connect("alice", "customer").await;
    let replaced = old
        .wait_event("connection:replaced")
        .await
        .expect("replaced");
    assert!(replaced["message"].is_string());
    let rest = old.wait_closed(WAIT).await.expect("old closes");
    assert!(
        rest.contains(&ClientEvent::Disconnect),
        "a Socket.IO DISCONNECT before the close: {rest:?}"
    );
    // The new one works.
    new.emit("ping", json!({})).expect("emit");
    new.wait_event("pong").await.expect("pong");
    let m = server.metrics().await;
    assert_eq!(metric(&m, "heartline_replacements_total"), Some(1.0));
    assert_eq!(metric(&m, "heartline_connections"), Some(1.0));
    server.stop().await;
}

#[tokio::test]
async fn presence_goes_offline_only_after_the_grace() {
    // A grace long enough that a reconnect on a loaded machine fits in it.
    let mut server = TestServer::start(|c| c.presence.offline_grace_ms = 1_500).await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    let mut bob = server.connect("bob", "agent").await;
    let alice = server.connect("alice", "customer").await;
    bob.wait_event("user:online").await.expect("online");
    // A quick reconnect does not flap.
    drop(alice);
    let alice = server.connect("alice", "customer").await;
    let quiet = bob.next(Duration::from_millis(2_000)).await;
    assert!(
        !matches!(&quiet, Ok(ClientEvent::Event { name, .. }) if name.starts_with("user:")),
        "{quiet:?}"
    );
    drop(alice);
    let off = bob.wait_event("user:offline").await.expect("offline");
    assert_eq!(off, json!({"userId": "alice", "userType": "customer"}));
    server.stop().await;
}

#[tokio::test]
async fn rate_limit_holds_across_reconnects_and_a_restart() {
    let mut server = TestServer::start(|c| {
        c.rate_limit.messages = 3;
        c.rate_limit.window_ms = 60_000;
    })
    .await;
    server.conversation("c1", &["alice:customer"]).await;
    let mut alice = server.connect("alice", "customer").await;
    for i in 0..3 {
        let ack = alice
            .emit_ack(
                "message:send",
                json!({"conversationId": "c1", "content": format!("m{i}")}),
            )
            .await
            .expect("ack");
        assert_eq!(ack["ok"], true, "{ack}");
    }
    let refused = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "m3"}),
        )
        .await
        .expect("ack");
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["code"], "rate_limited");
    assert!(
        refused["retryAfterMs"].as_u64().is_some_and(|ms| ms > 0),
        "{refused}"
    );
    let err = alice
        .wait_event("message:error")
        .await
        .expect("error event");
    assert_eq!(err["code"], "rate_limited");

    drop(alice);
    let mut alice = server.connect("alice", "customer").await;
    let again = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "m4"}),
        )
        .await
        .expect("ack");
    assert_eq!(again["code"], "rate_limited", "{again}");
    let m = server.metrics().await;
    assert_eq!(
        metric(
            &m,
            "heartline_messages_refused_total{code=\"rate_limited\"}"
        ),
        Some(2.0)
    );
    assert_eq!(stored(server.addr, "c1").await.len(), 3);
    server.stop().await;

    // Nor across a restart: the new process reads the window's sends from the store.
    let path = server.dir.path().join("heartline.db");
    let path = path.to_string_lossy().into_owned();
    let mut restarted = TestServer::start(move |c| {
        c.store.path = path;
        c.rate_limit.messages = 3;
        c.rate_limit.window_ms = 60_000;
    })
    .await;
    let mut alice = restarted.connect("alice", "customer").await;
    let after = alice
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "m5"}),
        )
        .await
        .expect("ack");
    assert_eq!(after["code"], "rate_limited", "{after}");
    assert!(
        after["retryAfterMs"]
            .as_u64()
            .is_some_and(|ms| ms > 0 && ms <= 60_000),
        "{after}"
    );
    assert_eq!(stored(restarted.addr, "c1").await.len(), 3);
    restarted.stop().await;
}

/// `connections.idle_timeout_ms`: a connection with no application event for that long is
/// sent a Socket.IO DISCONNECT (so `socket.io-client` stays away); one that keeps using
/// the chat is kept well past it, though heartbeats alone would not keep it.
#[tokio::test]
async fn an_idle_connection_is_disconnected_and_a_busy_one_kept() {
    let mut server = TestServer::start(|c| {
        c.connections.idle_timeout_ms = 1_000;
        c.heartbeat.interval_ms = 100;
    })
    .await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    // Before Alice connects: her timer cannot have started sooner.
    let begun = std::time::Instant::now();
    let mut alice = server.connect("alice", "customer").await;
    let mut bob = server.connect("bob", "agent").await;
    // Bob reads the history every 150 ms (answering heartbeats too); Alice only answers
    // heartbeats.
    let mut alice_ended = None;
    let looping = std::time::Instant::now();
    while looping.elapsed() < Duration::from_millis(2_600) {
        let ok = bob
            .emit_ack("message:history", json!({"conversationId": "c1"}))
            .await
            .expect("bob is still served");
        assert_eq!(ok["ok"], true, "{ok}");
        for (who, c) in [("alice", &mut alice), ("bob", &mut bob)] {
            while let Ok(e) = c.next(Duration::from_millis(1)).await {
                match e {
                    ClientEvent::Event { name, args } if name == "heartbeat" => {
                        let _ = c.emit("heartbeat:response", args[0].clone());
                    }
                    ClientEvent::Disconnect => {
                        assert_eq!(who, "alice", "bob was busy");
                        alice_ended.get_or_insert(begun.elapsed());
                    }
                    _ => {}
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let ended = alice_ended.expect("alice was disconnected");
    assert!(
        ended >= Duration::from_millis(1_000),
        "not before the timeout: {ended:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn heartbeat_event_is_sent_and_answered() {
    let mut server = TestServer::start(|c| c.heartbeat.interval_ms = 100).await;
    let mut alice = server.connect("alice", "customer").await;
    let hb = alice.wait_event("heartbeat").await.expect("heartbeat");
    assert!(hb["timestamp"].is_u64());
    alice.emit("heartbeat:response", hb.clone()).expect("emit");
    let server_ref = &server;
    let seen = eventually(WAIT, || async move {
        let m = server_ref.metrics().await;
        metric(&m, "heartline_heartbeat_latency_seconds_count").unwrap_or(0.0) >= 1.0
    })
    .await;
    assert!(seen, "heartbeat latency observed");
    let _: Value = hb;
    server.stop().await;
}

#[tokio::test]
async fn leave_history_and_admin_metrics() {
    use heartline_core::gateway::auth::{issue, Claims};
    let mut server = TestServer::start(|_| {}).await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    let mut alice = server.connect("alice", "customer").await;
    let mut bob = server.connect("bob", "agent").await;
    let ack = alice
        .emit_ack("conversation:join", json!({"conversationId": "c1"}))
        .await
        .expect("join");
    assert_eq!(ack["ok"], true);
    let ack = alice
        .emit_ack("conversation:leave", json!({"conversationId": "c1"}))
        .await
        .expect("leave");
    assert_eq!(ack, json!({"ok": true}));
    // After leaving, Alice gets a notification rather than message:new.
    bob.emit_ack(
        "message:send",
        json!({"conversationId": "c1", "content": "hi"}),
    )
    .await
    .expect("send");
    let note = alice
        .wait_event("message:notification")
        .await
        .expect("note");
    assert_eq!(note["message"]["content"], "hi");
    // The send's group commit was timed.
    let m = server.metrics().await;
    let commits = metric(&m, "heartline_store_commit_seconds_count").unwrap_or(0.0);
    assert!(commits >= 1.0, "{m}");
    assert_eq!(
        metric(&m, "heartline_store_commit_seconds_bucket{le=\"+Inf\"}"),
        Some(commits)
    );
    assert!(metric(&m, "heartline_store_commit_seconds_sum").is_some_and(|s| s > 0.0));
    // A file-backed store flushes its log apart from the commits: at least one flush,
    // timed, before the send was acknowledged.
    let flushes = metric(&m, "heartline_store_sync_seconds_count").unwrap_or(0.0);
    assert!(flushes >= 1.0, "{m}");
    assert_eq!(
        metric(&m, "heartline_store_sync_seconds_bucket{le=\"+Inf\"}"),
        Some(flushes)
    );
    // Each append waited in the store's queue before its commit: at least as many waits
    // as appends were timed.
    let waits = metric(&m, "heartline_store_wait_seconds_count").unwrap_or(0.0);
    let appends = metric(&m, "heartline_store_appends_total").unwrap_or(0.0);
    assert!(appends >= 1.0 && waits >= appends, "{m}");

    // metrics:request is answered for admin tokens only. The server answers a
    // connection's events in order, so a `pong` to a `ping` sent after the request fences
    // it: a metrics:response would have come first.
    alice.emit("metrics:request", Value::Null).expect("emit");
    alice.emit("ping", json!({})).expect("emit");
    loop {
        let e = alice.next(WAIT).await.expect("the pong comes");
        assert!(
            !matches!(&e, ClientEvent::Event { name, .. } if name == "metrics:response"),
            "metrics for a non-admin: {e:?}"
        );
        if matches!(&e, ClientEvent::Event { name, .. } if name == "pong") {
            break;
        }
    }
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    let admin = issue(
        SECRET.as_bytes(),
        &Claims {
            sub: "ops".into(),
            user_type: "agent".into(),
            exp,
            role: Some("admin".into()),
        },
    )
    .expect("sign");
    let mut ops = try_connect(server.addr, ClientOptions::with_token(&admin))
        .await
        .client()
        .expect("admin");
    ops.emit("metrics:request", Value::Null).expect("emit");
    let m = ops.wait_event("metrics:response").await.expect("metrics");
    assert_eq!(m["connectedUsers"], 3);
    assert!(m["uptime"].is_number() && m["heartbeats"].is_number());
    assert!(m["rateLimitEntries"].is_number());
    server.stop().await;
}

#[tokio::test]
async fn expiring_token_gets_auth_expired_then_refresh_or_disconnect() {
    // A grace long enough for two refresh round trips on a loaded machine.
    let mut server = TestServer::start(|c| c.auth.grace_ms = 1_500).await;
    let opts = |user: &str| ClientOptions::with_token(&token(user, "customer", 2));
    let mut keeps = try_connect(server.addr, opts("keeps"))
        .await
        .client()
        .expect("c");
    let mut lapses = try_connect(server.addr, opts("lapses"))
        .await
        .client()
        .expect("c");
    keeps.wait_event("auth:expired").await.expect("expired");
    // A token for another user is refused; a newer one for the same user is taken.
    let other = keeps
        .emit_ack(
            "auth:refresh",
            json!({"token": token("someone", "customer", 3600)}),
        )
        .await
        .expect("ack");
    assert_eq!(other["ok"], false, "{other}");
    let ok = keeps
        .emit_ack(
            "auth:refresh",
            json!({"token": token("keeps", "customer", 3600)}),
        )
        .await
        .expect("ack");
    assert_eq!(ok, json!({"ok": true}));
    lapses.wait_event("auth:expired").await.expect("expired");
    let end = lapses.wait_closed(WAIT).await.expect("closed");
    assert!(end.contains(&ClientEvent::Disconnect), "{end:?}");
    // The refreshed one is still served after the grace.
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    keeps.emit("ping", json!({})).expect("emit");
    keeps.wait_event("pong").await.expect("still connected");
    server.stop().await;
}

/// A send stored while its user was a member, retried after the user was removed (its
/// ack lost, say), is answered as the duplicate it is: from memory, and from the store
/// after a restart. Told `forbidden`, the client would report a failure for a message
/// everyone else sees. A new send of the removed user is still refused.
#[tokio::test]
async fn a_retry_from_a_user_removed_meanwhile_is_answered_as_stored() {
    let mut server = TestServer::start(|_| {}).await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    let mut alice = server.connect("alice", "customer").await;
    let send = |temp: &str| json!({"conversationId": "c1", "content": "hello", "tempId": temp});
    let first = alice
        .emit_ack("message:send", send("keep-1"))
        .await
        .expect("ack");
    assert_eq!(
        (first["ok"].clone(), first["duplicate"].clone()),
        (json!(true), json!(false)),
        "{first}"
    );
    server.conversation("c2", &["alice:customer"]).await;
    let elsewhere = json!({"conversationId": "c2", "content": "hi", "tempId": "other-1"});
    let ack = alice
        .emit_ack("message:send", elsewhere)
        .await
        .expect("ack");
    assert_eq!(ack["ok"], true, "{ack}");
    let (status, body) = put_conversation(server.addr, "c1", &["bob:agent"]).await;
    assert_eq!(status, 200, "{body}");
    retry_is_stored_new_is_forbidden(&mut alice, &first, "new-1").await;
    // A tempId used in another conversation is no retry of a message in this one.
    let ack = alice
        .emit_ack("message:send", send("other-1"))
        .await
        .expect("ack");
    assert_eq!(ack["code"], "forbidden", "{ack}");

    // After a restart nothing is remembered: the store answers.
    server.stop().await;
    let path = server
        .dir
        .path()
        .join("heartline.db")
        .to_string_lossy()
        .into_owned();
    let mut restarted = TestServer::start(move |c| c.store.path = path).await;
    let mut alice = restarted.connect("alice", "customer").await;
    retry_is_stored_new_is_forbidden(&mut alice, &first, "new-2").await;
    assert_eq!(stored(restarted.addr, "c1").await.len(), 1, "stored once");
    restarted.stop().await;
}

/// `alice`, no longer a member of `c1`: her retry of `first` (tempId `keep-1`) is answered
/// as that stored message, and a send under the new tempId `new` is refused `forbidden`.
async fn retry_is_stored_new_is_forbidden(
    alice: &mut heartline_runtime::client::Client,
    first: &Value,
    new: &str,
) {
    let send = |temp: &str| json!({"conversationId": "c1", "content": "hello", "tempId": temp});
    let again = alice
        .emit_ack("message:send", send("keep-1"))
        .await
        .expect("ack");
    assert_eq!(again["ok"], true, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["message"], first["message"]);
    let refused = alice
        .emit_ack("message:send", send(new))
        .await
        .expect("ack");
    assert_eq!(
        (refused["ok"].clone(), refused["code"].clone()),
        (json!(false), json!("forbidden")),
        "{refused}"
    );
}
