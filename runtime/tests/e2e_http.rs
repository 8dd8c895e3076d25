//! End to end over loopback: health, readiness during a drain, metrics, the conversations
//! API, and Engine.IO long-polling through the real HTTP stack.

mod support;

use std::time::Duration;

use heartline_runtime::client::ClientEvent;
use serde_json::{json, Value};
use support::*;

#[tokio::test]
async fn health_readiness_and_metrics() {
    let mut server = TestServer::start(|_| {}).await;
    let (status, _, body) = http(server.addr, "GET", "/healthz", &[], "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, _) = http(server.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(status, 200);
    let _alice = server.connect("alice", "customer").await;
    let (status, head, body) = http(server.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    assert!(head
        .to_ascii_lowercase()
        .contains("content-type: text/plain"));
    for name in [
        "heartline_connections 1",
        "heartline_users_online 1",
        "heartline_replacements_total 0",
        "heartline_rate_limit_entries 0",
        "heartline_outbound_queue_bytes",
        "heartline_heartbeat_latency_seconds_bucket{le=\"+Inf\"}",
        "heartline_tcp_connections",
        "heartline_store_waiting_seconds 0\n",
        "heartline_store_stalled 0\n",
        "# TYPE heartline_closes_total counter",
    ] {
        assert!(body.contains(name), "{name} missing from:\n{body}");
    }
    let (status, _, _) = http(server.addr, "GET", "/nope", &[], "").await;
    assert_eq!(status, 404);
    // Probes that use HEAD get the status without a body; other methods are told which.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, head, body) = http(server.addr, "HEAD", path, &[], "").await;
        assert_eq!((status, body.as_str()), (200, ""), "HEAD {path}: {head}");
        let (status, head, _) = http(server.addr, "POST", path, &[], "x").await;
        assert_eq!(status, 405, "POST {path}");
        assert!(
            head.to_ascii_lowercase().contains("allow: get, head"),
            "{head}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn readyz_turns_503_while_draining_and_clients_are_closed_without_disconnect() {
    let mut server = TestServer::start(|c| c.shutdown.drain_ms = 1500).await;
    let addr = server.addr;
    let mut clients = vec![];
    for i in 0..6 {
        clients.push(server.connect(&format!("u{i}"), "customer").await);
    }
    let handle = server.handle.take().expect("handle");
    let signalled = tokio::time::Instant::now();
    let shutdown = tokio::spawn(handle.shutdown());
    let draining = eventually(WAIT, || async move {
        http(addr, "GET", "/readyz", &[], "").await.0 == 503
    })
    .await;
    assert!(draining, "readyz is 503 while draining");
    // New sessions are refused while existing requests are still answered.
    let (status, _, _) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 503);
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    // Every client is closed with a transport close, never a Socket.IO DISCONNECT, so a
    // socket.io-client would reconnect by itself.
    for c in &mut clients {
        let events = c.wait_closed(Duration::from_secs(5)).await.expect("closed");
        assert!(!events.contains(&ClientEvent::Disconnect), "{events:?}");
        match events.last() {
            Some(ClientEvent::Closed { code, .. }) => assert_eq!(*code, Some(1001)),
            other => panic!("{other:?}"),
        }
    }
    // Six clients are spread over the 1.5 s drain, not closed one a 100 ms batch at its
    // start (done by 0.6 s). A lower bound only: a slow machine closes them later.
    let all_closed = signalled.elapsed();
    assert!(
        all_closed >= Duration::from_millis(1000),
        "all six closed {all_closed:?} after the signal"
    );
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown bounded")
        .expect("shutdown task");
}

/// A polling client between two GETs when the drain closes its session still gets the
/// CLOSE from its next GET: the drain waits for it (within its grace) rather than
/// shutting the port on a client that was told nothing.
#[tokio::test]
async fn a_polling_client_between_two_gets_is_told_of_the_drain() {
    let mut server = TestServer::start(|c| c.shutdown.drain_ms = 300).await;
    let addr = server.addr;
    let sid = polling_handshake(addr).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect = format!(
        "40/chat,{}",
        json!({"token": token("alice", "customer", 3600)})
    );
    let (status, _, _) = http(addr, "POST", &path, &[], &connect).await;
    assert_eq!(status, 200);
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("connection:success"), "{body}");
    // No GET is held when the drain closes the session.
    let handle = server.handle.take().expect("handle");
    let shutdown = tokio::spawn(handle.shutdown());
    let closed = eventually(WAIT, || async move {
        let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
        metric(&m, "heartline_connections") == Some(0.0)
    })
    .await;
    assert!(closed, "the drain closed the session");
    assert!(
        !shutdown.is_finished(),
        "stopped before the client was told"
    );
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!((status, body.as_str()), (200, "1"), "the CLOSE");
    tokio::time::timeout(Duration::from_secs(10), shutdown)
        .await
        .expect("shutdown bounded")
        .expect("shutdown task");
}

/// A PUT declaring a body over 1 MiB is answered 413 at once, not read until the request
/// deadline (which would answer 408 after `handshake_timeout_ms`).
#[tokio::test]
async fn api_refuses_a_declared_oversize_body_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(|_| {}).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let head = format!(
        "PUT /api/conversations/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 5000000000\r\n\r\n{{"
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut answer))
        .await
        .expect("answered at once, not at the request deadline")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    server.stop().await;
}

#[tokio::test]
async fn api_requires_the_key_and_validates_bodies() {
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let body = json!({"members": [{"userId": "u1", "userType": "customer"}]}).to_string();
    let (status, _, _) = http(addr, "PUT", "/api/conversations/c1", &[], &body).await;
    assert_eq!(status, 401);
    let (status, _, _) = http(
        addr,
        "PUT",
        "/api/conversations/c1",
        &[("Authorization", "Bearer wrong")],
        &body,
    )
    .await;
    assert_eq!(status, 401);
    let auth = format!("Bearer {API_KEY}");
    for bad in [
        "not json",
        "{}",
        "{\"members\": [{\"userId\": \"u1\"}]}",
        "{\"members\": \"u1\"}",
        // A struct as an array of its fields, which serde alone would take.
        "{\"members\": [[\"u1\", \"customer\"]]}",
        "[[{\"userId\": \"u1\", \"userType\": \"customer\"}]]",
        "{\"members\": [{\"userId\": \"\", \"userType\": \"x\"}]}",
        "{\"members\": [{\"userId\": \"u1\", \"userType\": \"\"}]}",
        "{\"members\": [{\"userId\": \"u1\\n\", \"userType\": \"customer\"}]}",
        "{\"members\": [{\"userId\": \"u1\", \"userType\": \"a\\u0000b\"}]}",
        // A key given twice: which list, which id, is not the server's to guess.
        "{\"members\": [{\"userId\": \"a\", \"userType\": \"t\"}], \"members\": [{\"userId\": \"b\", \"userType\": \"t\"}]}",
        "{\"members\": [{\"userId\": \"a\", \"userId\": \"b\", \"userType\": \"t\"}]}",
    ] {
        let (status, _, resp) = http(
            addr,
            "PUT",
            "/api/conversations/c1",
            &[("Authorization", &auth)],
            bad,
        )
        .await;
        assert_eq!(status, 400, "{bad}: {resp}");
    }
    // A user id as long as a conversation id may be is taken; one byte more is not.
    for (len, want) in [(256, 200), (257, 400)] {
        let body = json!({"members": [{"userId": "u".repeat(len), "userType": "customer"}]});
        let (status, _, resp) = http(
            addr,
            "PUT",
            "/api/conversations/c1",
            &[("Authorization", &auth)],
            &body.to_string(),
        )
        .await;
        assert_eq!(status, want, "{len}: {resp}");
    }
    // Fields Heartline does not keep are ignored, not refused.
    let extra = json!({
        "name": "Support",
        "members": [{"userId": "u9", "userType": "agent", "role": "owner"}]
    })
    .to_string();
    let (status, _, resp) = http(
        addr,
        "PUT",
        "/api/conversations/c9",
        &[("Authorization", &auth)],
        &extra,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        serde_json::from_str::<Value>(&resp).expect("json")["members"],
        json!([{"userId": "u9", "userType": "agent"}])
    );
    let (status, _, resp) = http(
        addr,
        "PUT",
        "/api/conversations/c1",
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(v["id"], "c1");
    assert_eq!(
        v["members"],
        json!([{"userId": "u1", "userType": "customer"}])
    );

    // Messages sent over Socket.IO are readable through the API.
    let mut u1 = server.connect("u1", "customer").await;
    for i in 0..3 {
        let ack = u1
            .emit_ack(
                "message:send",
                json!({"conversationId": "c1", "content": format!("m{i}")}),
            )
            .await
            .expect("ack");
        assert_eq!(ack["ok"], true);
    }
    let (status, _, resp) = http(
        addr,
        "GET",
        "/api/conversations/c1/messages?afterSeq=1&limit=1",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    let ms = v["messages"].as_array().expect("messages");
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0]["seq"], 2);
    assert_eq!(ms[0]["content"], "m1");
    // Without afterSeq the API reads from the first message.
    let (status, _, resp) = http(
        addr,
        "GET",
        "/api/conversations/c1/messages?limit=2",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let v: Value = serde_json::from_str(&resp).expect("json");
    assert_eq!(v["messages"][0]["seq"], 1, "{resp}");
    assert_eq!(v["messages"][1]["seq"], 2, "{resp}");
    let (status, _, _) = http(
        addr,
        "GET",
        "/api/conversations/c1/messages?afterSeq=x",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = http(
        addr,
        "GET",
        "/api/conversations/missing/messages",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 404);
    let (status, _, _) = http(addr, "GET", "/api/conversations/c1/messages", &[], "").await;
    assert_eq!(status, 401);
    // HEAD as GET, without the body.
    let (status, _, body) = http(
        addr,
        "HEAD",
        "/api/conversations/c1/messages",
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!((status, body.as_str()), (200, ""));
    // A route asked with a method it does not take names the one it does.
    for (method, path, allow) in [
        ("POST", "/api/conversations/c1/messages", "allow: get, head"),
        ("DELETE", "/api/conversations/c1", "allow: put"),
    ] {
        let (status, head, _) = http(addr, method, path, &[("Authorization", &auth)], "").await;
        assert_eq!(status, 405, "{method} {path}");
        assert!(head.to_ascii_lowercase().contains(allow), "{head}");
    }

    // Replacing the members takes effect at once: u1 may no longer send.
    let others = json!({"members": [{"userId": "u2", "userType": "agent"}]}).to_string();
    let (status, _, resp) = http(
        addr,
        "PUT",
        "/api/conversations/c1",
        &[("Authorization", &auth)],
        &others,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&resp).expect("json")["lastSeq"],
        3
    );
    let ack = u1
        .emit_ack(
            "message:send",
            json!({"conversationId": "c1", "content": "late"}),
        )
        .await
        .expect("ack");
    assert_eq!(ack["code"], "forbidden", "{ack}");
    server.stop().await;
}

#[tokio::test]
async fn an_api_body_that_never_arrives_is_refused_in_time() {
    let mut server = TestServer::start(|c| c.server.handshake_timeout_ms = 300).await;
    let head = format!(
        "PUT /api/conversations/c1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Length: 100\r\n\r\n{{\"members\""
    );
    let (status, _, body) = raw_http(server.addr, head.as_bytes()).await;
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("handshake_timeout_ms"), "{body}");
    server.stop().await;
}

#[tokio::test]
async fn a_conversation_id_in_the_path_is_read_as_a_path_not_as_a_form() {
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    // `+` is itself in a path; `%2B` is the same character.
    let (status, body) = put_conversation(addr, "c++", &["u1:customer"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["id"],
        "c++"
    );
    let mut alice = server.connect("u1", "customer").await;
    let ack = alice
        .emit_ack("conversation:join", json!({"conversationId": "c++"}))
        .await
        .expect("ack");
    assert_eq!(ack["ok"], true, "{ack}");
    assert!(stored(addr, "c%2B%2B").await.is_empty());
    // Escapes that are not UTF-8 name no conversation: they would all read as U+FFFD.
    for bad in ["%ff", "%fe", "c%C3", "100%", "%zz"] {
        let (status, body) = put_conversation(addr, bad, &["u2:customer"]).await;
        assert_eq!(status, 400, "{bad}: {body}");
        let auth = format!("Bearer {API_KEY}");
        let path = format!("/api/conversations/{bad}/messages");
        let (status, _, body) = http(addr, "GET", &path, &[("Authorization", &auth)], "").await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    server.stop().await;
}

/// Opens a connection (and, with `first`, has that request answered on it first), waits
/// `before_headers`, sends `head` and then one byte of body every 100 ms; returns the
/// status the server answered and when, counted from the connect (or from the first
/// request's answer).
/// The body length the dribbled requests announce.
const DRIBBLED_BODY: usize = 1_000;

async fn dribble(
    addr: std::net::SocketAddr,
    first: Option<&str>,
    before_headers: Duration,
    head: &str,
    body_done_at: Duration,
) -> (u16, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut started = tokio::time::Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    if let Some(first) = first {
        s.write_all(first.as_bytes()).await.expect("first request");
        let mut got = Vec::new();
        let mut chunk = [0u8; 1024];
        while !got.ends_with(b"ok") {
            let n = s.read(&mut chunk).await.expect("first answer");
            assert!(n > 0, "closed after the first request");
            got.extend_from_slice(&chunk[..n]);
        }
        started = tokio::time::Instant::now();
    }
    tokio::time::sleep(before_headers).await;
    s.write_all(head.as_bytes()).await.expect("head");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let mut body_left = DRIBBLED_BODY;
    for _ in 0..100 {
        tokio::select! {
            read = s.read(&mut chunk) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            },
            _ = tokio::time::sleep(Duration::from_millis(100)), if body_left > 0 => {
                // A byte at a time, then the rest at once: from then on the request is
                // complete, and only a deadline that had already passed answers 408.
                let n = if started.elapsed() >= body_done_at { body_left } else { 1 };
                if s.write_all(&b"x".repeat(n)).await.is_err() {
                    break;
                }
                body_left -= n;
            }
        }
    }
    (parse_response(&buf).0, started.elapsed())
}

#[tokio::test]
async fn a_partial_request_runs_out_of_time_counted_from_the_tcp_accept() {
    // The headers come 1.8 s after the connect, then the body a byte at a time, and the
    // rest of it at once 3 s after the connect: the request is cut at 2 s from the accept
    // (408), not 2 s after its headers, by when it would be complete (and refused for
    // its body of x's, not for time). The answer tells the deadlines apart; no duration
    // is asserted.
    let mut server = TestServer::start(|c| c.server.handshake_timeout_ms = 2_000).await;
    let api = format!(
        "PUT /api/conversations/c1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Length: {DRIBBLED_BODY}\r\n\r\n"
    );
    // A session of its own for each POST: two at once on one session would end it.
    let post = |sid: String| {
        format!(
            "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
             Content-Type: text/plain\r\nContent-Length: {DRIBBLED_BODY}\r\n\r\n"
        )
    };
    let healthz = Some("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let ms = Duration::from_millis;
    let mut runs = Vec::new();
    for what in ["api", "polling post"] {
        // On a kept-alive connection, a later request's time counts from its own first
        // bytes, not from the end of the one before it: a browser that sends a POST over
        // a connection quiet for most of the timeout has the whole of it for the body.
        for (first, on, wait, done, cut) in [
            (None, "a new connection", ms(1_800), ms(3_000), true),
            (healthz, "a kept-alive one", ms(1_800), ms(3_000), false),
            (healthz, "a kept-alive one", ms(1_800), ms(4_500), true),
        ] {
            let head = match what {
                "api" => api.clone(),
                _ => post(polling_handshake(server.addr).await),
            };
            let addr = server.addr;
            runs.push(tokio::spawn(async move {
                let (status, after) = dribble(addr, first, wait, &head, done).await;
                (what, on, cut, status, after)
            }));
        }
    }
    for run in runs {
        let (what, on, cut, status, after) = run.await.expect("run");
        let how = format!("{what} on {on} (cut: {cut}), answered {status} after {after:?}");
        assert_eq!(status == 408, cut, "{how}");
        assert!(
            status >= 400,
            "a body of x's is refused all the same: {how}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_store_that_cannot_flush_its_log_is_neither_healthy_nor_ready() {
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    put_conversation(addr, "c1", &["u1:customer"]).await;
    let mut u1 = server.connect("u1", "customer").await;
    let send = json!({"conversationId": "c1", "content": "kept"});
    let ack = u1.emit_ack("message:send", send).await.expect("ack");
    assert_eq!(ack["ok"], true, "{ack}");
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http(addr, "GET", path, &[], "").await.0, 200, "{path}");
    }
    // The log is gone from under the store: the next flush fails, and with it the store.
    std::fs::remove_file(server.dir.path().join("heartline.db-wal")).expect("remove the log");
    let send = json!({"conversationId": "c1", "content": "lost"});
    let ack = u1.emit_ack("message:send", send).await.expect("ack");
    assert_eq!(ack["code"], "internal", "{ack}");
    for path in ["/healthz", "/readyz"] {
        let (status, _, body) = http(addr, "GET", path, &[], "").await;
        assert_eq!((status, body.as_str()), (503, "store failed"), "{path}");
    }
    assert_eq!(
        metric(&server.metrics().await, "heartline_store_failed"),
        Some(1.0)
    );
    // Not ready means not taking new clients either; the connected one stays.
    let (status, _, _) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 503);
    let ping = u1.emit_ack("message:history", json!({"conversationId": "c1"}));
    assert_eq!(ping.await.expect("ack")["code"], "internal");
    // The API says the same as /healthz: unavailable, not an internal error, and no more.
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"members": [{"userId": "u1", "userType": "customer"}]}).to_string();
    for (method, path, body) in [
        ("GET", "/api/conversations/c1/messages", ""),
        ("PUT", "/api/conversations/c2", body.as_str()),
    ] {
        let (status, _, answer) = http(
            addr,
            method,
            path,
            &[("Authorization", auth.as_str())],
            body,
        )
        .await;
        assert_eq!(status, 503, "{method} {path}: {answer}");
        assert!(!answer.contains("flush"), "{method} {path}: {answer}");
    }
    server.stop().await;
}

#[tokio::test]
async fn api_is_disabled_without_a_key() {
    let mut server = TestServer::start(|c| c.api.key = String::new()).await;
    let (status, _, _) = http(
        server.addr,
        "PUT",
        "/api/conversations/c1",
        &[("Authorization", "Bearer ")],
        "{\"members\":[]}",
    )
    .await;
    assert_eq!(status, 404);
    server.stop().await;
}

#[tokio::test]
async fn long_polling_session_connects_and_receives() {
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let (status, head, body) =
        http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(head.to_ascii_lowercase().contains("text/plain"));
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open")).expect("json");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    assert_eq!(open["upgrades"], json!(["websocket"]));
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect = format!(
        "40/chat,{}",
        json!({"token": token("alice", "customer", 3600)})
    );
    let (status, _, body) = http(addr, "POST", &path, &[], &connect).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(body.starts_with("40/chat,{\"sid\":"), "{body}");
    assert!(body.contains("connection:success"), "{body}");
    // Oversize POST: 413.
    let big = format!("4{}", "x".repeat(1_000_001));
    let (status, _, _) = http(addr, "POST", &path, &[], &big).await;
    assert_eq!(status, 413);
    server.stop().await;
}

/// A client still sending a body the server has refused (a polling POST over
/// `max_payload_bytes`, answered 413 once the limit is passed) reads the answer and can go
/// on sending until it is done: the server reads and drops the rest before it closes,
/// instead of closing with bytes unread, which resets the connection under the client.
#[tokio::test]
async fn a_client_still_sending_a_refused_body_reads_the_answer_not_a_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(|_| {}).await;
    let sid = polling_handshake(server.addr).await;
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 3000000\r\n\r\n4"
    );
    tcp.write_all(head.as_bytes())
        .await
        .expect("write the head");
    // Past the limit by 100 KB: the server answers once it has read 1,000,001 bytes.
    let first = vec![b'x'; 1_100_000];
    tcp.write_all(&first).await.expect("write past the limit");
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while response_len(&answer).is_none_or(|len| answer.len() < len) {
            let n = tcp.read(&mut buf).await.expect("read the answer");
            assert!(n > 0, "closed before the whole answer");
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("answered");
    let (status, _, body) = parse_response(&answer);
    assert_eq!(status, 413, "{body}");
    // The client, not done with its body, sends more after the answer, in pieces: none of
    // it may meet a reset.
    let piece = vec![b'x'; 64 << 10];
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        tcp.write_all(&piece)
            .await
            .unwrap_or_else(|e| panic!("piece {i} after the answer: {e}"));
    }
    tcp.shutdown().await.expect("shut down the writing side");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut rest))
        .await
        .expect("the server closes once the client is done");
    assert!(end.is_ok(), "a clean end, not a reset: {end:?}");
    assert!(rest.is_empty(), "nothing after the answer");
    let metrics = server.metrics().await;
    assert_eq!(metric(&metrics, "heartline_tcp_lingered_total"), Some(1.0));
    // Its client closes the session, which then owes it nothing: the drain does not wait.
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, _, _) = http(server.addr, "POST", &path, &[], "1").await;
    assert_eq!(status, 200);
    server.stop().await;
}

async fn polling_handshake(addr: std::net::SocketAddr) -> String {
    let (status, _, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open")).expect("json");
    open["sid"].as_str().expect("sid").to_owned()
}

#[tokio::test]
async fn a_held_poll_abandoned_by_the_client_ends_the_session() {
    use tokio::io::AsyncWriteExt;
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let sid = polling_handshake(addr).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut held = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
    held.write_all(req.as_bytes()).await.expect("write");
    // Dropped once the server holds it, not after a guess at how long that takes.
    let holding = eventually(WAIT, || {
        let server = &server;
        async move {
            let m = server.metrics().await;
            metric(&m, "heartline_http_requests_waiting") == Some(1.0)
        }
    })
    .await;
    assert!(holding, "the poll is held");
    drop(held);
    let gone = eventually(WAIT, || {
        let path = path.clone();
        async move { http(addr, "GET", &path, &[], "").await.0 == 400 }
    })
    .await;
    assert!(gone, "the session ended with the abandoned poll");
    // And the server let go of the abandoned request, counting the end as the reference
    // server counts a poll closed prematurely.
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_http_requests_waiting"),
        Some(0.0),
        "{m}"
    );
    assert!(
        m.contains("heartline_closes_total{reason=\"transport_error\"} 1\n"),
        "{m}"
    );
    server.stop().await;
}

/// A POST naming a session the server does not hold is answered "Session ID unknown" from
/// its head, before its body: a made-up sid does not get the server to read (and hold) up
/// to `max_payload_bytes`, nor to keep a reading mark for it.
#[tokio::test]
async fn a_post_with_a_made_up_sid_is_refused_before_its_body_is_read() {
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let (status, answer) = answer_to_a_head_alone(
        addr,
        "/socket.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("Session ID unknown"), "{answer}");
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_polling_posts_reading"),
        Some(0.0),
        "{m}"
    );
    // A session's own POST is still read and handed to the core.
    let sid = polling_handshake(addr).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, _, body) = http(addr, "POST", &path, &[], "40/chat,").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("44/chat,"),
        "the CONNECT reached the core: {body}"
    );
    server.stop().await;
}

/// Sends the head of a POST to `target` announcing a 900,000-byte body, and none of the
/// body; the answer, which must come without it: its status and body.
async fn answer_to_a_head_alone(addr: std::net::SocketAddr, target: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut post = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let head = format!("POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 900000\r\n\r\n");
    post.write_all(head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, post.read(&mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let (status, _, body) = parse_response(&answer[..n]);
    (status, body)
}

/// A POST that names no session (or another transport or protocol version) is refused
/// whatever its body holds: it is answered without its body being read, so that anyone
/// cannot have the server take up to `max_payload_bytes` of the shared budgets.
#[tokio::test]
async fn a_post_for_no_session_is_refused_before_its_body_is_read() {
    let mut server = TestServer::start(|_| {}).await;
    for (query, code) in [
        ("EIO=4&transport=polling", 2),
        ("EIO=3&transport=polling", 5),
        ("EIO=4&transport=websocket", 3),
    ] {
        let (status, body) =
            answer_to_a_head_alone(server.addr, &format!("/socket.io/?{query}")).await;
        assert_eq!(status, 400, "{query}: {body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["code"], code, "{query}: {body}");
    }
    server.stop().await;
}

/// Two writers on one session, as two readers are, mean the client lost track of it: a
/// POST that comes while an earlier one's body is still arriving ends the session, where
/// taking both would hand the core their packets in the order their bodies ended.
#[tokio::test]
async fn a_post_overlapping_another_ends_the_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let sid = polling_handshake(addr).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let mut first = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\n\r\n40/c");
    first.write_all(head.as_bytes()).await.expect("write");
    // The server has read the first POST's head and waits for its body.
    let reading = eventually(WAIT, || async move {
        let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
        metric(&m, "heartline_polling_posts_reading") == Some(1.0)
    })
    .await;
    assert!(reading, "the first POST is being read");
    let (status, _, body) = http(addr, "POST", &path, &[], "40/chat,").await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":3,"message":"Bad request"}"#)
    );
    first.write_all(b"hat,").await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, first.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("Session ID unknown"), "{answer}");
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 400, "the session is gone: {body}");
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_polling_posts_reading"),
        Some(0.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn only_the_configured_transports_are_offered() {
    // Polling only: no upgrade offered, a WebSocket refused.
    let mut server = TestServer::start(|c| c.engine.transports = vec!["polling".to_owned()]).await;
    let addr = server.addr;
    let (status, _, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: Value = serde_json::from_str(body.strip_prefix('0').expect("open")).expect("json");
    assert_eq!(open["upgrades"], json!([]), "{open}");
    // Refused before the upgrade, with the reference server's answer.
    let refused = |query: &str| {
        let url = format!("ws://{addr}/socket.io/?{query}");
        async move {
            match tokio_tungstenite::connect_async(url).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                    let body = resp.body().clone().unwrap_or_default();
                    (
                        resp.status().as_u16(),
                        String::from_utf8_lossy(&body).into_owned(),
                    )
                }
                other => panic!("not refused over HTTP: {:?}", other.map(|_| ())),
            }
        }
    };
    let (status, body) = refused("EIO=4&transport=websocket").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["code"],
        0
    );
    server.stop().await;

    // WebSocket only: a polling handshake is an unknown transport; clients connect.
    let mut server =
        TestServer::start(|c| c.engine.transports = vec!["websocket".to_owned()]).await;
    let (status, _, body) = http(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(error["code"], 0, "{body}");
    let mut alice = server.connect("alice", "customer").await;
    alice.emit("ping", json!({})).expect("emit");
    alice.wait_event("pong").await.expect("served");
    // A POST naming a live WebSocket session's sid is refused before its body is read:
    // with polling not offered, nothing could take it.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let open = match futures_util::StreamExt::next(&mut ws).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => t.to_string(),
        other => panic!("no open packet: {other:?}"),
    };
    let open: Value = serde_json::from_str(&open[1..]).expect("open json");
    let sid = open["sid"].as_str().expect("sid");
    let (status, body) = answer_to_a_head_alone(
        server.addr,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["code"],
        0,
        "{body}"
    );
    drop(ws);
    // Another protocol version is refused before the upgrade too.
    let url = format!("ws://{}/socket.io/?EIO=3&transport=websocket", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 400);
            let body = resp.body().clone().unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(body["code"], 5, "{body}");
        }
        other => panic!("not refused over HTTP: {:?}", other.map(|_| ())),
    }
    server.stop().await;
}

#[tokio::test]
async fn a_websocket_offering_subprotocols_gets_the_first_chosen() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut server = TestServer::start(|_| {}).await;
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let mut offer = url.clone().into_client_request().expect("request");
    offer.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "chat.v2, chat.v1".parse().expect("header"),
    );
    // tungstenite, as browsers and Node's `ws` do, fails a handshake that offered
    // subprotocols and got none chosen.
    let (_ws, resp) = tokio_tungstenite::connect_async(offer)
        .await
        .expect("the handshake completes");
    assert_eq!(
        resp.headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok()),
        Some("chat.v2")
    );
    let mut bad = url.into_client_request().expect("request");
    bad.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "chat v2, ".parse().expect("header"),
    );
    match tokio_tungstenite::connect_async(bad).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 400)
        }
        other => panic!("a list that is not of tokens is refused: {other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn polling_session_upgrades_to_websocket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let sid = polling_handshake(addr).await;
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    ws.send(Message::Text("2probe".into()))
        .await
        .expect("probe");
    let reply = tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time");
    assert_eq!(
        reply
            .expect("frame")
            .expect("ok")
            .into_text()
            .expect("text")
            .as_str(),
        "3probe"
    );
    ws.send(Message::Text("5".into())).await.expect("upgrade");
    let connect = format!(
        "40/chat,{}",
        json!({"token": token("alice", "customer", 3600)})
    );
    ws.send(Message::Text(connect.into()))
        .await
        .expect("connect");
    let mut seen = vec![];
    let connected = tokio::time::timeout(WAIT, async {
        while let Some(Ok(m)) = ws.next().await {
            let text = m.into_text().expect("text").to_string();
            seen.push(text.clone());
            if text.contains("connection:success") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(connected, Ok(true), "{seen:?}");
    // The polling transport is gone.
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, _, _) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 400);
    server.stop().await;
}

#[tokio::test]
async fn a_long_response_to_a_slow_reader_is_not_cut_by_the_idle_deadline() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // About 20 MB of messages (10,000 two-byte characters each): far more than loopback's
    // socket buffers hold (some 4 MB here), so most of the response is still being
    // written long after its handler returned.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.db");
    seed_store(&path, &["big"], "a:customer", 1_000, &"é".repeat(10_000));
    let db = path.to_string_lossy().into_owned();
    let mut server = TestServer::start(move |c| {
        c.server.handshake_timeout_ms = 2_000;
        c.store.path = db;
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let get = format!(
        "GET /api/conversations/big/messages?limit=1000 HTTP/1.1\r\nHost: x\r\n\
         Authorization: Bearer {API_KEY}\r\n\r\n"
    );
    s.write_all(get.as_bytes()).await.expect("request");
    // 64 KiB at a time, 10 ms apart, some 4-6 MB/s: the whole response takes several
    // times the deadline, while its bytes keep leaving the server (a write every few
    // hundred milliseconds, as the buffers drain).
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let mut expected = None;
    for _ in 0..3_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("the server keeps writing")
            .expect("read");
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if expected.is_none() {
            expected = response_len(&buf);
        }
        if expected.is_some_and(|e| buf.len() >= e) {
            break;
        }
    }
    let expected = expected.expect("a response head");
    assert!(expected > 19_000_000, "a body of {expected} bytes");
    assert_eq!(buf.len(), expected, "the whole response arrived");
    server.stop().await;
}

/// A server whose address is taken fails to start before it creates, locks or migrates
/// its store.
#[tokio::test]
async fn a_start_on_an_address_in_use_leaves_the_store_untouched() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(dir.path());
    c.server.listen = taken.local_addr().expect("addr").to_string();
    let err = heartline_runtime::start(c)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(err.is_some(), "the address is taken");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "{err:?}; files made: {left:?}");
}

/// A second server on a store another one serves is refused at start, before it writes
/// anything; once the first has stopped, the store is free again.
#[tokio::test]
async fn a_second_server_on_the_same_store_is_refused_until_the_first_stops() {
    let mut first = TestServer::start(|_| {}).await;
    let (status, body) = put_conversation(first.addr, "c1", &["u1:customer"]).await;
    assert_eq!(status, 200, "{body}");
    let second = heartline_runtime::start(config(first.dir.path())).await;
    let err = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("in use by another Heartline"), "{err}");
    first.stop().await;
    let again = heartline_runtime::start(config(first.dir.path()))
        .await
        .expect("free once the first stopped");
    let addr = again.local_addr();
    assert_eq!(stored(addr, "c1").await, Vec::<Value>::new());
    again.shutdown().await;
}

/// A large polling body reserves its announced length from the arriving budget (shared
/// with WebSocket frames) before it is read, and gives it back once the core has it.
#[tokio::test]
async fn a_large_polling_body_reserves_its_length_until_it_is_handed_over() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut server = TestServer::start(|_| {}).await;
    let addr = server.addr;
    let held_reaches = |n: usize| {
        eventually(WAIT, move || async move {
            let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
            metric(&m, "heartline_arriving_bytes") == Some(n as f64)
        })
    };
    let sid = polling_handshake(addr).await;
    let path = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let connect = format!(
        "40/chat,{}",
        json!({ "token": token("pat", "customer", 3600) })
    );
    let (status, _, _) = http(addr, "POST", &path, &[], &connect).await;
    assert_eq!(status, 200);
    let (_, _, body) = http(addr, "GET", &path, &[], "").await;
    assert!(body.starts_with("40/chat,"), "{body}");

    let event = format!("42/chat,[\"ping\",\"{}\"]", "y".repeat(900_000));
    let mut post = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        event.len()
    );
    post.write_all(head.as_bytes()).await.expect("write");
    post.write_all(&event.as_bytes()[..1000])
        .await
        .expect("write");
    assert!(held_reaches(event.len()).await, "reserved from the head");
    post.write_all(&event.as_bytes()[1000..])
        .await
        .expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, post.read(&mut answer))
        .await
        .expect("answered")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(held_reaches(0).await, "given back once handed over");
    let (_, _, body) = http(addr, "GET", &path, &[], "").await;
    assert!(body.contains("\"pong\""), "the body was read whole: {body}");
    server.stop().await;
}
