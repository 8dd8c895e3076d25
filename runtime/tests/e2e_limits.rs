//! End to end over loopback: the limits that protect the server — heartbeat timeout,
//! oversize frames, the handshake deadline (slowloris), max_connections and the socket
//! bound, the per-IP rate,
//! Origin, and slow consumers.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use heartline_runtime::client::{self, ClientEvent, ClientOptions, Connect};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Reads until EOF or error; `true` if that happened within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(within, read_all).await.is_ok()
}

#[tokio::test]
async fn a_dead_peer_is_closed_by_the_ping_timeout_and_a_live_one_is_not() {
    // A second each: long enough that the live client, on the test's own runtime beside
    // the server, never misses its deadline on a busy machine.
    let mut server = TestServer::start(|c| {
        c.engine.ping_interval_ms = 1_000;
        c.engine.ping_timeout_ms = 1_000;
    })
    .await;
    let mut alive = server.connect("bob", "agent").await;
    let mut dead = server.connect("alice", "customer").await;
    dead.set_answer_pings(false);
    let events = dead
        .wait_closed(Duration::from_secs(15))
        .await
        .expect("closed");
    // ping_interval + ping_timeout = 2 s; that bound itself is checked on virtual time
    // by the simulator's dead-peer checker, not on this machine's clock.
    assert!(matches!(events.last(), Some(ClientEvent::Closed { .. })));
    // The live one is untouched, past another whole ping round.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    alive.emit("ping", json!({})).expect("emit");
    alive.wait_event("pong").await.expect("still alive");
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_closes_total{reason=\"ping_timeout\"}"),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn oversize_frame_closes_only_that_connection() {
    let mut server = TestServer::start(|c| c.engine.max_payload_bytes = 2000).await;
    let mut other = server.connect("bob", "agent").await;
    for size in [2500usize, 50_000] {
        let mut big = server.connect("alice", "customer").await;
        let text = format!("42/chat,[\"ping\",\"{}\"]", "x".repeat(size));
        big.send_raw(Message::Text(text.into())).expect("send");
        let events = big.wait_closed(WAIT).await.expect("closed");
        match events.last() {
            Some(ClientEvent::Closed { code, .. }) => {
                assert_eq!(*code, Some(1009), "size {size}: {events:?}")
            }
            other => panic!("expected a close, got {other:?}"),
        }
    }
    other.emit("ping", json!({})).expect("emit");
    other
        .wait_event("pong")
        .await
        .expect("other connection unaffected");
    // Both oversize sessions ended as such, whether the core or the WebSocket layer saw
    // the message first.
    let counted = closes_reach(&server, "payload_too_large", 2.0).await;
    assert!(counted, "{}", server.metrics().await);
    server.stop().await;
}

#[tokio::test]
async fn slowloris_and_idle_connections_close_at_the_handshake_timeout() {
    let mut server = TestServer::start(|c| c.server.handshake_timeout_ms = 300).await;
    // Before the connects: the deadline counts from their accept, never earlier.
    let started = tokio::time::Instant::now();
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    assert!(
        closed_within(&mut partial, Duration::from_secs(3)).await,
        "partial request closed"
    );
    assert!(
        closed_within(&mut idle, Duration::from_secs(3)).await,
        "idle connection closed"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the deadline"
    );

    // A kept-alive connection that idles after a complete request is closed too, but that
    // is routine: it is not counted as refused.
    let mut kept = TcpStream::connect(server.addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    assert!(
        closed_within(&mut kept, Duration::from_secs(3)).await,
        "kept-alive idle connection closed"
    );

    // A WebSocket that never connects a namespace is closed by the core.
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("ws");
    let open = ws.next().await.expect("open").expect("frame");
    assert!(open.to_text().expect("text").starts_with("0{"));
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(Ok(m)) = ws.next().await {
            if m.is_close() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "websocket without namespace closed");
    let m = server.metrics().await;
    assert_eq!(
        refused_total(&m, "http_timeout"),
        Some(2.0),
        "the partial request and the connection that never sent one"
    );
    assert_eq!(
        metric(&m, "heartline_closes_total{reason=\"handshake_timeout\"}"),
        Some(1.0)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_server_full_of_clients_still_serves_them_and_its_health_probe() {
    let mut server = TestServer::start(|c| c.server.max_connections = 2).await;
    let addr = server.addr;
    let alice = server.connect("alice", "customer").await;
    let path = "/socket.io/?EIO=4&transport=polling";
    let (status, _, body) = http(addr, "GET", path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value =
        serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    // Two clients: a third is refused, as an Engine.IO error.
    let (status, _, body) = http(addr, "GET", path, &[], "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, r#"{"code":4,"message":"Too many sessions"}"#);
    // A WebSocket one is refused the same way, before the upgrade: upgraded and closed at
    // once, socket.io-client would wait out its connect timeout before trying again.
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503);
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert_eq!(body, r#"{"code":4,"message":"Too many sessions"}"#);
        }
        other => panic!("{other:?}"),
    }
    // The clients in are served, the polling one on connections of its own (its held
    // GET on one, each POST on another), and so is the health probe.
    let session = format!("{path}&sid={sid}");
    let held = {
        let session = session.clone();
        tokio::spawn(async move { http(addr, "GET", &session, &[], "").await })
    };
    let waiting = eventually(WAIT, || async move {
        let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
        metric(&m, "heartline_http_requests_waiting") == Some(1.0)
    })
    .await;
    assert!(waiting, "the GET is held");
    for _ in 0..3 {
        let (status, _, body) = http(addr, "POST", &session, &[], "3").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
    }
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    // Healthy, but not ready: it is not accepting new connections.
    let (status, _, body) = http(addr, "GET", "/readyz", &[], "").await;
    assert_eq!((status, body.as_str()), (503, "full"));
    let m = server.metrics().await;
    assert_eq!(metric(&m, "heartline_websockets"), Some(1.0), "{m}");
    assert_eq!(refused_total(&m, "max_sessions"), Some(2.0));
    assert_eq!(refused_total(&m, "max_sockets"), Some(0.0));
    held.abort();
    // A client gone, there is room again: ready.
    drop(alice);
    let ready = eventually(WAIT, || async move {
        http(addr, "GET", "/readyz", &[], "").await.0 == 200
    })
    .await;
    assert!(ready, "ready once a client has left");
    server.stop().await;
}

/// `heartline_admission_refused_total` for `reason` in the scrape `m`.
fn refused_total(m: &str, reason: &str) -> Option<f64> {
    metric(
        m,
        &format!("heartline_admission_refused_total{{reason=\"{reason}\"}}"),
    )
}

/// Opens `n` connections to `addr` that send nothing.
async fn idle_connections(addr: std::net::SocketAddr, n: u64) -> Vec<TcpStream> {
    let mut idle = Vec::new();
    for i in 0..n {
        idle.push(
            TcpStream::connect(addr)
                .await
                .unwrap_or_else(|e| panic!("{i}: {e}")),
        );
    }
    idle
}

/// Whether the server has not closed `stream` (nothing to read, no EOF) in a short wait.
async fn still_open(stream: &mut TcpStream) -> bool {
    !closed_within(stream, Duration::from_millis(200)).await
}

/// The socket bound of a server of `max_connections` clients in this process.
fn bound_of(max_connections: u64) -> u64 {
    heartline_runtime::admission::socket_bound(
        max_connections,
        heartline_runtime::admission::open_file_limit(),
    )
}

#[tokio::test]
async fn at_the_socket_bound_a_newcomer_takes_the_oldest_never_served_connection() {
    let mut server = TestServer::start(|c| c.server.max_connections = 1).await;
    let addr = server.addr;
    let bound = bound_of(1);
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_tcp_connections_max"),
        Some(bound as f64)
    );
    // Connections that send nothing (yet) fill the bound; the health probe still gets in,
    // in the place of the oldest of them, however young.
    let mut idle = idle_connections(addr, bound).await;
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200, "served in the oldest quiet connection's place");
    assert!(
        closed_within(&mut idle[0], WAIT).await,
        "the oldest quiet connection is closed"
    );
    assert!(still_open(&mut idle[1]).await, "the next one is not");
    let last = idle.len() - 1;
    assert!(still_open(&mut idle[last]).await, "nor the newest");
    // Full again: the next newcomer takes the next oldest's socket.
    idle.push(TcpStream::connect(addr).await.expect("connect"));
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut idle[1], WAIT).await,
        "then the next oldest"
    );
    drop(idle);
    let m = server.metrics().await;
    assert_eq!(refused_total(&m, "quiet_at_bound"), Some(2.0), "{m}");
    assert_eq!(refused_total(&m, "max_sockets"), Some(0.0), "{m}");
    server.stop().await;
}

#[tokio::test]
async fn kept_alive_connections_give_way_only_after_never_served_ones() {
    let mut server = TestServer::start(|c| c.server.max_connections = 1).await;
    let addr = server.addr;
    // The oldest connection is kept alive after a request; then never-served ones fill
    // the bound.
    let mut kept = TcpStream::connect(addr).await.expect("connect");
    let (status, _) = keep_alive_get(&mut kept, "/healthz").await;
    assert_eq!(status, 200);
    let mut fresh = idle_connections(addr, bound_of(1) - 1).await;
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    assert!(
        closed_within(&mut fresh[0], WAIT).await,
        "a never-served one goes first"
    );
    assert!(still_open(&mut kept).await, "the kept-alive one stays");
    let (status, _) = keep_alive_get(&mut kept, "/healthz").await;
    assert_eq!(status, 200, "and is still served");
    drop(fresh);
    server.stop().await;
}

#[tokio::test]
async fn a_flood_at_the_socket_bound_takes_no_websocket_and_no_held_poll() {
    let mut server = TestServer::start(|c| c.server.max_connections = 2).await;
    let addr = server.addr;
    let mut alice = server.connect("alice", "customer").await;
    let path = "/socket.io/?EIO=4&transport=polling";
    let (status, _, body) = http(addr, "GET", path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value =
        serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    let session = format!("{path}&sid={sid}");
    let mut held = TcpStream::connect(addr).await.expect("connect");
    let get = format!("GET {session} HTTP/1.1\r\nHost: x\r\n\r\n");
    held.write_all(get.as_bytes()).await.expect("write");
    let waiting = eventually(WAIT, || async move {
        let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
        metric(&m, "heartline_http_requests_waiting") == Some(1.0)
    })
    .await;
    assert!(waiting, "the GET is held");
    // Held for longer than a kept-alive connection must be quiet to be taken.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The bound filled with idle connections, then as many newcomers again, each taking
    // a socket.
    let bound = bound_of(2);
    let open_now = 2;
    let mut idle = idle_connections(addr, bound - open_now).await;
    for _ in 0..bound {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
    assert_eq!(status, 200);
    // The WebSocket and the held GET are still there and served.
    alice.emit("ping", json!({})).expect("emit");
    alice.wait_event("pong").await.expect("alice still served");
    assert!(still_open(&mut held).await, "the held GET is not cut");
    drop(idle);
    let (status, _, body) = http(addr, "POST", &session, &[], "1").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "ok"),
        "the polling session lives"
    );
    let mut answer = [0u8; 64];
    let n = tokio::time::timeout(WAIT, held.read(&mut answer))
        .await
        .expect("the held GET is answered")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..n])
    );
    let m = server.metrics().await;
    assert!(
        refused_total(&m, "quiet_at_bound") >= Some(bound as f64),
        "{m}"
    );
    server.stop().await;
}

/// Opens a connection whose request is being served until the request deadline: a PUT
/// whose body never comes.
async fn busy_connection(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "PUT /api/conversations/c1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("write");
    stream
}

#[tokio::test]
async fn with_only_busy_and_kept_alive_connections_at_the_bound() {
    // Kept-alive connections can be taken once quiet for a second (at most half of the
    // handshake timeout); the busy ones' requests run to 4 s after their accept.
    let min_quiet = Duration::from_secs(1);
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| {
            c.server.max_connections = 1;
            c.server.handshake_timeout_ms = 4000;
        })
        .await;
        let addr = server.addr;
        let started = std::time::Instant::now();
        let mut kept = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            let (status, _) = keep_alive_get(&mut stream, "/healthz").await;
            assert_eq!(status, 200);
            kept.push(stream);
        }
        let mut busy = Vec::new();
        for _ in 0..bound_of(1) - 2 {
            busy.push(busy_connection(addr).await);
        }
        // Nothing can be taken yet: the newcomer is refused.
        let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
        if started.elapsed() + Duration::from_millis(200) >= min_quiet {
            assert!(
                attempt < RATE_ATTEMPTS,
                "filling the bound took a second each time"
            );
            eprintln!("filling the bound took {:?}: again", started.elapsed());
            drop((kept, busy));
            server.stop().await;
            continue;
        }
        assert_eq!(status, 503, "nothing quiet long enough to take: refused");
        // A second on, the kept-alive connection quiet longest gives way.
        tokio::time::sleep_until((started + min_quiet + Duration::from_millis(100)).into()).await;
        let (status, _, _) = http(addr, "GET", "/healthz", &[], "").await;
        assert_eq!(status, 200, "served in the kept-alive connection's place");
        assert!(
            closed_within(&mut kept[0], WAIT).await,
            "the first kept-alive one is closed"
        );
        assert!(
            still_open(&mut busy[0]).await,
            "a request being served is never cut"
        );
        // At the bound, a kept-alive connection is closed after its response, rather
        // than kept.
        let _refill = TcpStream::connect(addr).await.expect("connect");
        let (status, _) = keep_alive_get(&mut kept[1], "/healthz").await;
        assert_eq!(status, 200);
        assert!(
            closed_within(&mut kept[1], WAIT).await,
            "given back after its response"
        );
        drop(busy);
        let m = server.metrics().await;
        assert!(refused_total(&m, "max_sockets") >= Some(1.0), "{m}");
        assert_eq!(
            metric(&m, "heartline_tcp_refusing").map(|n| n <= 1.0),
            Some(true),
            "{m}"
        );
        server.stop().await;
        return;
    }
}

/// How many fresh servers a rate scenario is tried on before the machine is called too slow.
const RATE_ATTEMPTS: usize = 4;

/// Whether the part of a rate scenario that counts on no token coming back ran inside
/// `refill` (one token's refill at the configured rate) from `started`, taken before its
/// first request. A run the machine stalled through for longer proves nothing either way
/// (a refused request may have been refilled in between) and is run again on a fresh
/// server; a run inside it is judged.
fn inside_one_refill(started: std::time::Instant, refill: Duration, attempt: usize) -> bool {
    let took = started.elapsed();
    // The server's clock counts whole milliseconds: keep clear of the edge.
    if took + Duration::from_millis(2) < refill {
        return true;
    }
    assert!(
        attempt < RATE_ATTEMPTS,
        "{RATE_ATTEMPTS} runs each took {took:?} or more, past one refill ({refill:?})"
    );
    eprintln!("run {attempt} took {took:?}, past one refill ({refill:?}): again");
    false
}

#[tokio::test]
async fn connect_rate_per_ip_refuses_bursts_of_new_clients() {
    let path = "/socket.io/?EIO=4&transport=polling";
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| c.server.connect_rate_per_ip = 2).await;
        let started = std::time::Instant::now();
        let mut statuses = vec![];
        for _ in 0..4 {
            let (status, _, _) = http(server.addr, "GET", path, &[], "").await;
            statuses.push(status);
        }
        // Any other new connection is a new client to the rate, whatever it asks first...
        let (page, _, _) = http(server.addr, "GET", "/", &[], "").await;
        // ...but probes and scrapes are the operator's, never refused for it.
        let mut probes = vec![];
        for path in ["/healthz", "/readyz", "/metrics"] {
            probes.push(http(server.addr, "GET", path, &[], "").await.0);
        }
        if !inside_one_refill(started, Duration::from_millis(500), attempt) {
            server.stop().await;
            continue;
        }
        assert_eq!(statuses, [200, 200, 429, 429]);
        assert_eq!(page, 429);
        assert_eq!(probes, [200, 200, 200]);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let (status, _, _) = http(server.addr, "GET", path, &[], "").await;
        assert_eq!(status, 200, "tokens refill");
        server.stop().await;
        return;
    }
}

/// Sends a GET on a kept-alive connection and reads its response: status and body.
async fn keep_alive_get(stream: &mut TcpStream, path: &str) -> (u16, String) {
    keep_alive_request(stream, "GET", path, "").await
}

/// Sends a request on a kept-alive connection and reads its response: status and body.
async fn keep_alive_request(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(len) = response_len(&buf).filter(|len| buf.len() >= *len) {
            let (status, _, body) = parse_response(&buf[..len]);
            return (status, body);
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn sessions_on_kept_alive_connections_are_capped_by_max_connections() {
    // No per-IP rate (the default): only the cap stands between one connection and any
    // number of polling sessions.
    let mut server = TestServer::start(|c| c.server.max_connections = 3).await;
    let mut stream = TcpStream::connect(server.addr).await.expect("connect");
    let path = "/socket.io/?EIO=4&transport=polling";
    let mut sids = vec![];
    for _ in 0..3 {
        let (status, body) = keep_alive_get(&mut stream, path).await;
        assert_eq!(status, 200, "{body}");
        let open: serde_json::Value =
            serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
        sids.push(open["sid"].as_str().expect("sid").to_owned());
    }
    let (status, body) = keep_alive_get(&mut stream, path).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body, r#"{"code":4,"message":"Too many sessions"}"#);
    // The sessions already open are untouched: the first still takes packets (a stray
    // PONG, which changes nothing).
    let first = format!("{path}&sid={}", sids[0]);
    let (status, body) = keep_alive_request(&mut stream, "POST", &first, "3").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let m = server.metrics().await;
    assert_eq!(refused_total(&m, "max_sessions"), Some(1.0), "{m}");
    // A client that closes its session frees the slot for the next handshake, once it has
    // fetched the session's last packet (a closed session lingers for that, and holds its
    // slot meanwhile, at most ping_timeout_ms).
    let second = format!("{path}&sid={}", sids[1]);
    let (status, body) = keep_alive_request(&mut stream, "POST", &second, "1").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, body) = keep_alive_get(&mut stream, path).await;
    assert_eq!(status, 503, "still lingering: {body}");
    let (status, body) = keep_alive_get(&mut stream, &second).await;
    assert_eq!((status, body.as_str()), (200, "6"));
    let (status, body) = keep_alive_get(&mut stream, path).await;
    assert_eq!(status, 200, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn the_per_ip_rate_counts_new_clients_not_their_connections() {
    let path = "/socket.io/?EIO=4&transport=polling";
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| c.server.connect_rate_per_ip = 2).await;
        let started = std::time::Instant::now();
        // Two sessions on one kept-alive connection take the two tokens (the connection's
        // first request pays for it, the second handshake for itself); a third is refused,
        // as an Engine.IO error, on that connection and on a new one alike.
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let first = keep_alive_get(&mut stream, path).await;
        let second = keep_alive_get(&mut stream, path).await;
        let third = keep_alive_get(&mut stream, path).await;
        let (elsewhere, _, _) = http(server.addr, "GET", path, &[], "").await;
        if !inside_one_refill(started, Duration::from_millis(500), attempt) {
            server.stop().await;
            continue;
        }
        let (status, body) = first;
        assert_eq!(status, 200, "{body}");
        let open: serde_json::Value =
            serde_json::from_str(body.trim_start_matches('0')).expect("open packet");
        let sid = open["sid"].as_str().expect("sid").to_owned();
        assert_eq!(second.0, 200, "{}", second.1);
        assert_eq!(third.0, 429, "{}", third.1);
        assert!(third.1.contains("\"code\":4"), "{}", third.1);
        assert_eq!(elsewhere, 429);
        // An admitted session's own requests on new connections (POSTs, the held GET, the
        // upgrade) are not new clients, however many connections they take; nor is a
        // request that opens no session on a connection already paid for. These pass
        // whenever they come, so they need no refill's bound. (A stray PONG: the one
        // client packet with no effect on a fresh session.)
        for _ in 0..3 {
            let (status, _, body) =
                http(server.addr, "POST", &format!("{path}&sid={sid}"), &[], "3").await;
            assert_eq!((status, body.as_str()), (200, "ok"));
        }
        let (status, body) = keep_alive_get(&mut stream, "/healthz").await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        // Tokens refill; the scrape (a new connection) takes one, and the kept-alive
        // connection may open a session with the other.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let m = server.metrics().await;
        assert_eq!(metric(&m, "heartline_engine_sessions"), Some(2.0), "{m}");
        assert_eq!(refused_total(&m, "rate_per_ip"), Some(2.0), "{m}");
        let (status, body) = keep_alive_get(&mut stream, path).await;
        assert_eq!(status, 200, "{body}");
        server.stop().await;
        return;
    }
}

#[tokio::test]
async fn unpaid_first_requests_keep_no_connection_and_a_made_up_sid_pays() {
    let path = "/socket.io/?EIO=4&transport=polling";
    let mut rest = [0u8; 64];
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| c.server.connect_rate_per_ip = 1).await;
        let started = std::time::Instant::now();
        // A first request naming a sid passes the rate on credit (a session's extra
        // connections are not new clients); the core does not know this one, so the
        // address pays for it, and the connection is closed rather than kept alive for free.
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let (status, body) =
            keep_alive_get(&mut stream, &format!("{path}&sid=AAAAAAAAAAAAAAAAAAAA")).await;
        let (next, _, next_body) = http(server.addr, "GET", path, &[], "").await;
        if !inside_one_refill(started, Duration::from_millis(1000), attempt) {
            server.stop().await;
            continue;
        }
        assert_eq!(status, 400, "{body}");
        assert_eq!(
            next, 429,
            "the address's one token went to the made-up sid: {next_body}"
        );
        let n = tokio::time::timeout(WAIT, stream.read(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection is closed after the answer");
        // Nor does a first request that pays nothing by its kind (a preflight) keep its
        // connection: what follows comes on a new one, which pays if it opens a session.
        let mut stream = TcpStream::connect(server.addr).await.expect("connect");
        let (status, _) = keep_alive_request(&mut stream, "OPTIONS", path, "").await;
        assert_eq!(status, 204);
        let n = tokio::time::timeout(WAIT, stream.read(&mut rest))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(
            n, 0,
            "the preflight's connection is closed after the answer"
        );
        server.stop().await;
        return;
    }
}

/// The operator's API calls with the key are not clients: however many come from one
/// address, they take none of its tokens, and its clients still get in; a call without a
/// valid key pays as any new connection does.
#[tokio::test]
async fn api_calls_with_the_key_take_no_token_of_the_per_ip_rate() {
    let auth = format!("Bearer {API_KEY}");
    let body = json!({"members": [{"userId": "u1", "userType": "customer"}]}).to_string();
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| c.server.connect_rate_per_ip = 1).await;
        let started = std::time::Instant::now();
        let mut puts = Vec::new();
        for i in 0..3 {
            let path = format!("/api/conversations/c{i}");
            let (status, _, _) = http(
                server.addr,
                "PUT",
                &path,
                &[("Authorization", &auth)],
                &body,
            )
            .await;
            puts.push(status);
        }
        let (client, _, client_body) = http(
            server.addr,
            "GET",
            "/socket.io/?EIO=4&transport=polling",
            &[],
            "",
        )
        .await;
        let (wrong, _, _) = http(
            server.addr,
            "PUT",
            "/api/conversations/c9",
            &[("Authorization", "Bearer not-the-key")],
            &body,
        )
        .await;
        if !inside_one_refill(started, Duration::from_millis(1000), attempt) {
            server.stop().await;
            continue;
        }
        assert_eq!(
            puts,
            [200, 200, 200],
            "the operator's calls are not refused"
        );
        assert_eq!(
            client, 200,
            "the address's token is still there: {client_body}"
        );
        assert_eq!(wrong, 429, "a call without the key pays, and none was left");
        server.stop().await;
        return;
    }
}

/// A WebSocket upgrade naming a sid the core does not hold is answered 400 code 1
/// ("Session ID unknown", as a polling request naming it is), not 101 and a close; it
/// passed the rate on credit, and turned away, its address pays as a polling request's
/// does, so made-up sids cannot open sockets past the rate.
#[tokio::test]
async fn a_websocket_upgrade_with_a_made_up_sid_is_refused_and_pays_the_per_ip_rate() {
    let path = "/socket.io/?EIO=4&transport=polling";
    for attempt in 1..=RATE_ATTEMPTS {
        let mut server = TestServer::start(|c| c.server.connect_rate_per_ip = 1).await;
        let started = std::time::Instant::now();
        let url = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket&sid=AAAAAAAAAAAAAAAAAAAA",
            server.addr
        );
        match tokio_tungstenite::connect_async(url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 400);
                let body = resp.body().as_deref().unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(body).expect("json body");
                assert_eq!(body, json!({"code": 1, "message": "Session ID unknown"}));
            }
            other => panic!("the upgrade is refused before the 101: {other:?}"),
        }
        let (next, _, next_body) = http(server.addr, "GET", path, &[], "").await;
        if !inside_one_refill(started, Duration::from_millis(1000), attempt) {
            server.stop().await;
            continue;
        }
        assert_eq!(
            next, 429,
            "the address's one token went to the made-up sid: {next_body}"
        );
        server.stop().await;
        return;
    }
}

#[tokio::test]
async fn origin_is_checked_and_cors_answered() {
    let mut server = TestServer::start(|c| {
        c.server.cors_origins = vec!["https://chat.example.com".into()];
    })
    .await;
    let path = "/socket.io/?EIO=4&transport=polling";
    let (status, _, body) = http(
        server.addr,
        "GET",
        path,
        &[("Origin", "https://evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, head, body) = http(
        server.addr,
        "GET",
        path,
        &[("Origin", "https://chat.example.com")],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.starts_with("0{\"sid\":"), "{body}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: https://chat.example.com"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    // Without an Origin (a non-browser client) the handshake is allowed; both path forms.
    let (status, _, body) = http(
        server.addr,
        "GET",
        "/socket.io?EIO=4&transport=polling",
        &[],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, head, _) = http(
        server.addr,
        "OPTIONS",
        path,
        &[
            ("Origin", "https://chat.example.com"),
            ("Access-Control-Request-Method", "POST"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 204);
    assert!(head
        .to_ascii_lowercase()
        .contains("access-control-allow-methods"));
    // A WebSocket from a disallowed origin gets no session.
    let opts = ClientOptions {
        headers: vec![("Origin".into(), "https://evil.example".into())],
        ..ClientOptions::with_token(&token("alice", "customer", 3600))
    };
    assert!(client::connect(server.addr, opts).await.is_err());
    // An Origin that is not text matches no allowed origin.
    let mut req =
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: https://")
            .into_bytes();
    req.extend_from_slice(b"chat\xff.example.com\r\n\r\n");
    let (status, _, body) = raw_http(server.addr, &req).await;
    assert_eq!(status, 403, "{body}");
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_engine_sessions"),
        Some(2.0),
        "only the two allowed polling handshakes opened sessions"
    );
    server.stop().await;
}

#[tokio::test]
async fn empty_origin_list_refuses_browsers_only_and_trailing_slash_is_ignored() {
    let path = "/socket.io/?EIO=4&transport=polling";
    let browser = [("Origin", "https://chat.example.com")];
    // No origin listed: every browser is refused, non-browser clients are not.
    let mut server = TestServer::start(|c| c.server.cors_origins = vec![]).await;
    let (status, _, body) = http(server.addr, "GET", path, &browser, "").await;
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = http(server.addr, "GET", path, &[], "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{\"sid\":"), "{body}");
    server.stop().await;
    // An entry copied with its trailing slash matches the header, which never has one.
    let mut server = TestServer::start(|c| {
        c.server.cors_origins = vec!["https://chat.example.com/".into()];
    })
    .await;
    let (status, head, body) = http(server.addr, "GET", path, &browser, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://chat.example.com\r\n"),
        "{head}"
    );
    let (status, _, body) = http(
        server.addr,
        "GET",
        path,
        &[("Origin", "https://chat.example.com.evil.example")],
        "",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    server.stop().await;
}

#[tokio::test]
async fn slow_consumer_is_closed_without_unbounded_memory() {
    let limit = 64 * 1024;
    let mut server = TestServer::start(|c| {
        c.server.max_outbound_bytes = limit;
        c.rate_limit.messages = 100_000;
        c.rate_limit.window_ms = 1000;
    })
    .await;
    server
        .conversation("c1", &["alice:customer", "slow:agent"])
        .await;

    // The slow consumer: a small receive buffer, joined to the room, then never reads.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket.connect(server.addr).await.expect("connect");
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let (mut ws, _) = tokio_tungstenite::client_async(url, tcp).await.expect("ws");
    ws.next().await.expect("open").expect("frame");
    let connect = format!("40/chat,{}", json!({"token": token("slow", "agent", 3600)}));
    ws.send(Message::Text(connect.into()))
        .await
        .expect("connect");
    let join = "42/chat,0[\"conversation:join\",{\"conversationId\":\"c1\"}]";
    ws.send(Message::Text(join.into())).await.expect("join");
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time");
        let text = m.expect("open").expect("frame").into_text().expect("text");
        if text.starts_with("43/chat,0") {
            break;
        }
    }

    let mut alice = server.connect("alice", "customer").await;
    // Alice gets an ack, message:sent and a notification per send: keep her bursts well
    // under the limit so that only the consumer that does not read is closed.
    let content = "y".repeat(4000);
    let mut closed = false;
    for round in 0..400 {
        let mut acks = vec![];
        for i in 0..4 {
            let payload = json!({"conversationId": "c1", "content": content, "tempId": format!("{round}-{i}")});
            acks.push(alice.emit_with_ack("message:send", payload).expect("emit"));
        }
        for a in acks {
            let ack = tokio::time::timeout(WAIT, a)
                .await
                .expect("ack in time")
                .expect("ack");
            assert_eq!(ack[0]["ok"], true, "{ack:?}");
        }
        let m = server.metrics().await;
        let queued = metric(&m, "heartline_outbound_queue_bytes").expect("outbound queue metric");
        assert!(
            queued <= (limit + 64 * 1024) as f64,
            "queue bounded: {queued}"
        );
        if metric(&m, "heartline_slow_consumer_closes_total") >= Some(1.0) {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was closed");
    // The core knows why the session ended.
    let counted = closes_reach(&server, "slow_consumer", 1.0).await;
    assert!(counted, "{}", server.metrics().await);
    // The fast sender is unaffected.
    alice.emit("ping", json!({})).expect("emit");
    alice.wait_event("pong").await.expect("alice still served");
    drop(ws);
    server.stop().await;
}

/// One send hands its sender three frames at once (the ack, `message:sent`, and
/// `message:notification` as it has not joined): with 9,000 characters each against a
/// 20,000-byte queue they cross the limit together, before the writer takes the first.
/// A sender that reads as fast as it can is not a slow consumer for that.
#[tokio::test]
async fn one_sends_frames_crossing_the_queue_limit_together_do_not_close_the_sender() {
    let mut server = TestServer::start(|c| {
        c.server.max_outbound_bytes = 20_000;
        c.rate_limit.messages = 100_000;
        c.rate_limit.window_ms = 1000;
    })
    .await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    let mut alice = server.connect("alice", "customer").await;
    let content = "x".repeat(9_000);
    for i in 0..20 {
        let payload =
            json!({"conversationId": "c1", "content": content, "tempId": format!("t{i}")});
        let ack = tokio::time::timeout(
            WAIT,
            alice.emit_with_ack("message:send", payload).expect("emit"),
        )
        .await
        .expect("ack in time")
        .expect("acked, not closed");
        assert_eq!(ack[0]["ok"], true, "send {i}: {ack:?}");
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_slow_consumer_closes_total"),
        Some(0.0),
        "{m}"
    );
    server.stop().await;
}

#[tokio::test]
async fn refused_connect_creates_no_user_state() {
    let mut server = TestServer::start(|_| {}).await;
    match client::connect(server.addr, ClientOptions::default())
        .await
        .expect("connect")
    {
        Connect::Refused(_) => {}
        other => panic!("{other:?}"),
    }
    let m = server.metrics().await;
    assert_eq!(metric(&m, "heartline_connections"), Some(0.0));
    assert_eq!(metric(&m, "heartline_users_connected"), Some(0.0));
    server.stop().await;
}

/// Whether `heartline_closes_total{reason}` reaches `n` within a few seconds (the close is
/// reported by the connection's task, a moment after the client saw it).
async fn closes_reach(server: &TestServer, reason: &str, n: f64) -> bool {
    let name = format!("heartline_closes_total{{reason=\"{reason}\"}}");
    for _ in 0..100 {
        if metric(&server.metrics().await, &name) == Some(n) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn catch_ups_arriving_together_do_not_make_a_reader_a_slow_consumer() {
    // Four conversations with 200 KB each to catch up, against a 64 KiB send queue: each
    // join's reply is cut, and the four replies may come out of one batch of the store's
    // and go into the queue back to back.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("catchup.db");
    let convs = ["k0", "k1", "k2", "k3"];
    seed_store(&path, &convs, "r:customer", 100, &"z".repeat(2_000));
    let db = path.to_string_lossy().into_owned();
    let mut server = TestServer::start(move |c| {
        c.server.max_outbound_bytes = 64 * 1024;
        c.store.path = db;
    })
    .await;
    for round in 0..5 {
        let mut reader = server.connect("r", "customer").await;
        let joins: Vec<_> = (0..4)
            .map(|k| {
                let payload = json!({"conversationId": format!("k{k}"), "afterSeq": 0});
                reader
                    .emit_with_ack("conversation:join", payload)
                    .expect("emit")
            })
            .collect();
        for join in joins {
            let reply = tokio::time::timeout(Duration::from_secs(10), join)
                .await
                .expect("answered in time")
                .expect("answered, not closed");
            let missed = reply[0]["missed"].as_array().cloned().unwrap_or_default();
            assert_eq!(reply[0]["ok"], true, "round {round}: {reply:?}");
            assert!(
                !missed.is_empty() && missed.len() < 100,
                "round {round}: cut, {} missed",
                missed.len()
            );
        }
        drop(reader);
    }
    let m = server.metrics().await;
    assert_eq!(
        metric(&m, "heartline_slow_consumer_closes_total"),
        Some(0.0)
    );
    server.stop().await;
}
