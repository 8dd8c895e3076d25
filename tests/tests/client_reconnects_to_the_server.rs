//! The runtime's reconnecting client (the core's client state machine, the reconnection
//! logic the simulator drives, over real sockets) against the real server: through a
//! server restart it comes back by itself, catches up what it missed in order, and its
//! unacknowledged sends are stored once; let out of a room and back in (its member list
//! replaced), it rejoins and catches up.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartline_core::gateway::auth::{issue, Claims};
use heartline_runtime::reconnecting::{
    Backoff, ClientConfig, Notice, Reconnecting, Snapshot, Status,
};
use heartline_runtime::{Config, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "cross-crate-secret";
const API_KEY: &str = "cross-crate-key";

fn config(dir: &std::path::Path, listen: &str) -> Config {
    let mut c = Config::default();
    c.server.listen = listen.into();
    c.store.path = dir.join("heartline.db").to_string_lossy().into_owned();
    c.auth.jwt_secret = SECRET.into();
    c.api.key = API_KEY.into();
    c.shutdown.drain_ms = 100;
    c
}

fn token(user: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 3600;
    let claims = Claims {
        sub: user.into(),
        user_type: "customer".into(),
        exp,
        role: None,
    };
    issue(SECRET.as_bytes(), &claims).expect("token")
}

/// One HTTP/1.1 request; returns the status and body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut raw = String::new();
    tcp.read_to_string(&mut raw).await.expect("read");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = raw.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}

/// The stored messages of a conversation, through the HTTP API.
async fn stored(addr: SocketAddr, conversation: &str) -> Vec<Value> {
    let path = format!("/api/conversations/{conversation}/messages?limit=1000");
    let (status, body) = http(addr, "GET", &path, "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["messages"].as_array().cloned().expect("messages")
}

/// Creates conversation `c1` or replaces its members (`customer` users), through the API.
async fn put_members(addr: SocketAddr, names: &[&str]) {
    let members: Vec<Value> = names
        .iter()
        .map(|n| json!({"userId": n, "userType": "customer"}))
        .collect();
    let body = json!({ "members": members }).to_string();
    let (status, body) = http(addr, "PUT", "/api/conversations/c1", &body).await;
    assert_eq!(status, 200, "{body}");
}

/// What the application saw.
#[derive(Default)]
struct Seen {
    statuses: Vec<Status>,
    messages: Vec<Value>,
    acked: Vec<String>,
}

/// The runtime's reconnecting client and what it has told the application.
struct App {
    client: Reconnecting,
    seen: Seen,
}

impl App {
    fn start(addr: SocketAddr, user: &str, seed: u64) -> App {
        let config = ClientConfig {
            token: token(user),
            backoff: Backoff {
                initial_ms: 100,
                max_ms: 500,
                max_attempts: 50,
                ..Backoff::default()
            },
            connect_timeout_ms: 2_000,
            seed,
            ..ClientConfig::default()
        };
        App {
            client: Reconnecting::start(&format!("http://{addr}"), config).expect("client starts"),
            seen: Seen::default(),
        }
    }

    /// A client of `user` that has connected and joined `c1`.
    async fn joined(addr: SocketAddr, user: &str, seed: u64) -> App {
        let mut app = App::start(addr, user, seed);
        app.client.join("c1").expect("join");
        app.state(Duration::from_secs(10), |s| {
            s.status == Status::Connected && s.joined.get("c1").is_some_and(Option::is_some)
        })
        .await;
        app
    }

    /// Sends `content` to `c1` and waits until the server has acknowledged it.
    async fn send_acked(&mut self, content: &str) {
        let acked = self.seen.acked.len() + 1;
        self.client
            .send_message("c1", content)
            .await
            .expect("queued");
        self.until(Duration::from_secs(10), |s| s.acked.len() == acked)
            .await;
    }

    /// Reads updates until `done`; fails if that takes longer than `limit`.
    async fn until(&mut self, limit: Duration, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&self.seen) {
            let update = tokio::time::timeout_at(deadline, self.client.next()).await;
            match update {
                Ok(Some(Notice::Status(s))) => self.seen.statuses.push(s),
                Ok(Some(Notice::Message(m))) => self.seen.messages.push(m),
                Ok(Some(Notice::Acked { temp_id, .. })) => self.seen.acked.push(temp_id),
                Ok(Some(Notice::SendFailed { temp_id, code })) => {
                    panic!("{temp_id} refused: {code}")
                }
                Ok(Some(Notice::Event(..) | Notice::Refreshed { .. })) => {}
                Ok(None) => panic!("the client stopped"),
                Err(_) => panic!(
                    "not done within {limit:?}: {:?}, {} messages, {} acked",
                    self.client.snapshot(),
                    self.seen.messages.len(),
                    self.seen.acked.len()
                ),
            }
        }
    }

    /// Waits until the client's state satisfies `done`.
    async fn state(&mut self, limit: Duration, done: impl FnMut(&Snapshot) -> bool) {
        tokio::time::timeout(limit, self.client.wait_for(done))
            .await
            .unwrap_or_else(|_| panic!("not within {limit:?}: {:?}", self.client.snapshot()))
            .expect("the client runs");
    }
}

/// A server on the store in `dir`, `c1` with alice and bob in it, and a client of each
/// that has joined it.
async fn alice_and_bob_in_c1(dir: &std::path::Path) -> (ServerHandle, SocketAddr, App, App) {
    let server: ServerHandle = heartline_runtime::start(config(dir, "127.0.0.1:0"))
        .await
        .expect("server starts");
    let addr = server.local_addr();
    put_members(addr, &["alice", "bob"]).await;
    let alice = App::joined(addr, "alice", 1).await;
    let bob = App::joined(addr, "bob", 2).await;
    (server, addr, alice, bob)
}

fn contents(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_restart_the_client_comes_back_catches_up_and_stores_each_send_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr, mut alice, mut bob) = alice_and_bob_in_c1(dir.path()).await;
    alice.send_acked("before the restart").await;
    bob.until(Duration::from_secs(10), |s| s.messages.len() == 1)
        .await;

    // The server goes away; alice queues two sends while it is gone.
    server.shutdown().await;
    for a in [&mut alice, &mut bob] {
        a.state(Duration::from_secs(10), |s| {
            matches!(s.status, Status::Reconnecting { .. })
        })
        .await;
    }
    for content in ["while it was down 1", "while it was down 2"] {
        alice
            .client
            .send_message("c1", content)
            .await
            .expect("queued");
    }
    // A few failed attempts against the closed port before it is back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(alice.client.snapshot().unacknowledged, 2);

    // Back on the same address and store: both clients return by themselves, alice's
    // sends are stored once each, and bob gets them in order after what he had.
    let server = heartline_runtime::start(config(dir.path(), &addr.to_string()))
        .await
        .expect("server restarts");
    alice
        .until(Duration::from_secs(20), |s| s.acked.len() == 3)
        .await;
    bob.until(Duration::from_secs(20), |s| s.messages.len() == 3)
        .await;
    assert_eq!(
        contents(&bob.seen.messages),
        [
            "before the restart",
            "while it was down 1",
            "while it was down 2"
        ]
    );
    let seqs: Vec<u64> = bob
        .seen
        .messages
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [1, 2, 3]);
    let kept = stored(addr, "c1").await;
    assert_eq!(
        contents(&kept),
        contents(&bob.seen.messages),
        "each stored once"
    );
    assert!(bob
        .seen
        .statuses
        .iter()
        .any(|s| matches!(s, Status::Reconnecting { .. })));
    alice.client.close().await;
    bob.client.close().await;
    server.shutdown().await;
}

/// The member list replaced without bob while he is joined (the server lets his
/// connection out of the room without a word), then with him again: the next message
/// reaches him as a `message:notification`, which tells his client it is out of the room,
/// and it rejoins and hands over everything in order, what was sent while he was out too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_let_out_of_a_room_and_back_in_catches_up_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (server, addr, mut alice, mut bob) = alice_and_bob_in_c1(dir.path()).await;
    alice.send_acked("one").await;
    bob.until(Duration::from_secs(10), |s| s.messages.len() == 1)
        .await;

    put_members(addr, &["alice"]).await;
    alice.send_acked("two, bob out").await;
    put_members(addr, &["alice", "bob"]).await;
    alice.send_acked("three, bob back").await;

    bob.until(Duration::from_secs(10), |s| s.messages.len() == 3)
        .await;
    assert_eq!(
        contents(&bob.seen.messages),
        ["one", "two, bob out", "three, bob back"]
    );
    // Back in the room, the next one reaches him too.
    alice
        .client
        .send_message("c1", "four")
        .await
        .expect("queued");
    bob.until(Duration::from_secs(10), |s| s.messages.len() == 4)
        .await;
    assert_eq!(bob.seen.messages[3]["content"], "four");
    alice.client.close().await;
    bob.client.close().await;
    server.shutdown().await;
}
