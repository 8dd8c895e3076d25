//! The core's client state machine (the reconnection logic the simulator drives) against
//! the real server over real sockets: through a server restart it comes back by itself,
//! catches up what it missed in order, and its unacknowledged sends are stored once.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use heartline_core::client::{Backoff, Client, ClientConfig, Output, Status};
use heartline_core::codec::Frame;
use heartline_core::gateway::auth::{issue, Claims};
use heartline_core::Instant;
use heartline_runtime::{Config, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

/// What the application saw.
#[derive(Default)]
struct Seen {
    statuses: Vec<Status>,
    messages: Vec<Value>,
    acked: Vec<String>,
}

/// The client, a WebSocket when it has one, and a clock: the driver a front end would be.
struct Driver {
    client: Client,
    addr: SocketAddr,
    started: std::time::Instant,
    ws: Option<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>>,
    seen: Seen,
}

impl Driver {
    fn new(addr: SocketAddr, user: &str, seed: u64) -> Driver {
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
        Driver {
            client: Client::new(config),
            addr,
            started: std::time::Instant::now(),
            ws: None,
            seen: Seen::default(),
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.started.elapsed().as_millis() as u64)
    }

    /// Acts on the client's outputs until there are none.
    async fn pump(&mut self) {
        while let Some(out) = self.client.poll_output() {
            let now = self.now();
            match out {
                Output::Open => {
                    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", self.addr);
                    match tokio_tungstenite::connect_async(url).await {
                        Ok((ws, _)) => {
                            self.ws = Some(ws);
                            self.client.handle_opened(now);
                        }
                        Err(_) => self.client.handle_closed(now),
                    }
                }
                Output::Send(Frame::Text(text)) => {
                    let text = String::from_utf8_lossy(&text).into_owned();
                    let sent = match self.ws.as_mut() {
                        Some(ws) => ws.send(WsMessage::text(text)).await.is_ok(),
                        None => false,
                    };
                    if !sent {
                        self.ws = None;
                        self.client.handle_closed(now);
                    }
                }
                Output::Send(Frame::Binary(_)) => {}
                Output::Close => {
                    if let Some(mut ws) = self.ws.take() {
                        let _ = ws.close(None).await;
                    }
                }
                Output::Status(s) => self.seen.statuses.push(s),
                Output::Message(m) => self.seen.messages.push(m),
                Output::Acked { temp_id, .. } => self.seen.acked.push(temp_id),
                Output::SendFailed { temp_id, code } => panic!("{temp_id} refused: {code}"),
                Output::Event(..) => {}
            }
        }
    }

    /// Drives the client until `done`; fails if that takes longer than `limit`.
    async fn run_until(&mut self, limit: Duration, done: impl Fn(&Driver) -> bool) {
        let reached = self.drive(limit, done).await;
        assert!(
            reached,
            "not done within {limit:?}: status {:?}, {} messages, {} acked",
            self.client.status(),
            self.seen.messages.len(),
            self.seen.acked.len()
        );
    }

    /// Drives the client (frames, closes, deadlines) until `done` (`true`) or `limit`
    /// passes (`false`).
    async fn drive(&mut self, limit: Duration, done: impl Fn(&Driver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            self.pump().await;
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            let wake = self.client.poll_timeout().map(|t| {
                let ms = t.ms_since(self.now());
                tokio::time::Instant::now() + Duration::from_millis(ms)
            });
            let wake = wake.unwrap_or(deadline).min(deadline);
            let frame = async {
                match self.ws.as_mut() {
                    Some(ws) => ws.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                got = frame => {
                    let now = self.now();
                    match got {
                        Some(Ok(WsMessage::Text(t))) => {
                            self.client.handle_frame(now, &Frame::text(t.to_string()));
                        }
                        Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => {
                            self.ws = None;
                            self.client.handle_closed(now);
                        }
                        Some(Ok(_)) => {}
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = self.now();
                    self.client.handle_timeout(now);
                }
            }
        }
    }
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
    let server: ServerHandle = heartline_runtime::start(config(dir.path(), "127.0.0.1:0"))
        .await
        .expect("server starts");
    let addr = server.local_addr();
    let members = json!({"members": [
        {"userId": "alice", "userType": "customer"},
        {"userId": "bob", "userType": "customer"},
    ]});
    let (status, body) = http(addr, "PUT", "/api/conversations/c1", &members.to_string()).await;
    assert_eq!(status, 200, "{body}");

    let mut alice = Driver::new(addr, "alice", 1);
    let mut bob = Driver::new(addr, "bob", 2);
    for d in [&mut alice, &mut bob] {
        let now = d.now();
        d.client.join(now, "c1");
        d.client.connect(now);
        d.run_until(Duration::from_secs(10), |d| {
            *d.client.status() == Status::Connected
                && d.client.joined().get("c1").is_some_and(Option::is_some)
        })
        .await;
    }
    let now = alice.now();
    alice.client.send_message(now, "c1", "before the restart");
    alice
        .run_until(Duration::from_secs(10), |d| d.seen.acked.len() == 1)
        .await;
    bob.run_until(Duration::from_secs(10), |d| d.seen.messages.len() == 1)
        .await;

    // The server goes away; alice queues two sends while it is gone.
    server.shutdown().await;
    for d in [&mut alice, &mut bob] {
        d.run_until(Duration::from_secs(10), |d| {
            matches!(d.client.status(), Status::Reconnecting { .. })
        })
        .await;
    }
    let now = alice.now();
    alice.client.send_message(now, "c1", "while it was down 1");
    alice.client.send_message(now, "c1", "while it was down 2");
    // A few failed attempts against the closed port before it is back.
    alice.drive(Duration::from_millis(300), |_| false).await;

    // Back on the same address and store: both clients return by themselves, alice's
    // sends are stored once each, and bob gets them in order after what he had.
    let server = heartline_runtime::start(config(dir.path(), &addr.to_string()))
        .await
        .expect("server restarts");
    alice
        .run_until(Duration::from_secs(20), |d| d.seen.acked.len() == 3)
        .await;
    bob.run_until(Duration::from_secs(20), |d| d.seen.messages.len() == 3)
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
    server.shutdown().await;
}
