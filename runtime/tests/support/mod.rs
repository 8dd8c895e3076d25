//! Helpers shared by the end-to-end tests: a server on a loopback port with a throwaway
//! store, tokens, a tiny HTTP/1.1 client, and bounded waits.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartline_core::gateway::auth::{issue, Claims};
use heartline_runtime::client::{self, Client, ClientOptions, Connect};
use heartline_runtime::{Config, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &str = "e2e-secret";
pub const API_KEY: &str = "e2e-api-key";
pub const WAIT: Duration = Duration::from_secs(5);

/// A configuration for tests: loopback port 0, a store in `dir`, known secrets, a short
/// drain.
pub fn config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.store.path = dir.join("heartline.db").to_string_lossy().into_owned();
    c.auth.jwt_secret = SECRET.into();
    c.api.key = API_KEY.into();
    c.shutdown.drain_ms = 200;
    c.presence.offline_grace_ms = 200;
    c
}

/// A running in-process server and its store directory.
pub struct TestServer {
    pub handle: Option<ServerHandle>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path());
        tweak(&mut c);
        let handle = heartline_runtime::start(c).await.expect("server starts");
        TestServer {
            addr: handle.local_addr(),
            handle: Some(handle),
            dir,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }

    /// Creates a conversation through the API; members as `user:type`.
    pub async fn conversation(&self, id: &str, members: &[&str]) {
        let (status, body) = put_conversation(self.addr, id, members).await;
        assert_eq!(status, 200, "PUT conversation {id}: {body}");
    }

    pub async fn connect(&self, user: &str, user_type: &str) -> Client {
        connect_as(self.addr, user, user_type).await
    }

    pub async fn metrics(&self) -> String {
        let (status, _, body) = http(self.addr, "GET", "/metrics", &[], "").await;
        assert_eq!(status, 200);
        body
    }
}

/// A token for `user:type` expiring `exp_in_secs` from now (negative: already expired).
pub fn token(user: &str, user_type: &str, exp_in_secs: i64) -> String {
    token_with(SECRET, user, user_type, exp_in_secs)
}

pub fn token_with(secret: &str, user: &str, user_type: &str, exp_in_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = Claims {
        sub: user.into(),
        user_type: user_type.into(),
        exp: (now + exp_in_secs).max(1) as u64,
        role: None,
    };
    issue(secret.as_bytes(), &claims).expect("sign")
}

/// Connects `user:type` and waits for `connection:success`.
pub async fn connect_as(addr: SocketAddr, user: &str, user_type: &str) -> Client {
    let opts = ClientOptions::with_token(&token(user, user_type, 3600));
    let mut c = client::connect(addr, opts)
        .await
        .expect("connect")
        .client()
        .expect("connected");
    let ok = c.wait_event("connection:success").await.expect("success");
    assert_eq!(ok["userId"], user);
    c
}

/// The outcome of a connect with these options.
pub async fn try_connect(addr: SocketAddr, opts: ClientOptions) -> Connect {
    client::connect(addr, opts).await.expect("connect")
}

pub async fn put_conversation(addr: SocketAddr, id: &str, members: &[&str]) -> (u16, String) {
    let members: Vec<Value> = members
        .iter()
        .map(|m| {
            let (u, t) = m.split_once(':').expect("user:type");
            json!({"userId": u, "userType": t})
        })
        .collect();
    let body = json!({ "members": members }).to_string();
    let auth = format!("Bearer {API_KEY}");
    let (status, _, body) = http(
        addr,
        "PUT",
        &format!("/api/conversations/{id}"),
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        &body,
    )
    .await;
    (status, body)
}

/// Stored messages of a conversation through the API.
pub async fn stored(addr: SocketAddr, id: &str) -> Vec<Value> {
    let auth = format!("Bearer {API_KEY}");
    let (status, _, body) = http(
        addr,
        "GET",
        &format!("/api/conversations/{id}/messages?afterSeq=0&limit=1000"),
        &[("Authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["messages"].as_array().cloned().expect("a messages array")
}

/// One HTTP/1.1 request with `Connection: close`; returns status, raw head and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    raw_http(addr, req.as_bytes()).await
}

/// Writes `request` as it is (malformed on purpose, or cut short) and reads until the
/// server closes; returns status, raw head and body.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("tcp connect");
        s.write_all(request).await.expect("write");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        parse_response(&buf)
    };
    tokio::time::timeout(WAIT, fut).await.expect("http in time")
}

pub fn parse_response(buf: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8_lossy(buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// The value of a metric line `name` (labels included in `name`), if present.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l[name.len()..].trim().parse().ok())
}

/// Polls `check` every 20 ms until it holds or `within` passes.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes a store at `path` before any server opens it: each of `conversations` with the
/// one member `user` (`id:type`), who has sent `per_conversation` messages of `content`.
#[allow(dead_code)]
pub fn seed_store(
    path: &Path,
    conversations: &[&str],
    user: &str,
    per_conversation: usize,
    content: &str,
) {
    use heartline_runtime::store::{AppendRequest, Member, Store};
    let (id, kind) = user.split_once(':').expect("id:type");
    let mut store = Store::open(path).expect("store");
    for conv in conversations {
        store
            .put_conversation(conv, &[Member::new(id, kind)])
            .expect("conversation");
        let reqs: Vec<AppendRequest> = (0..per_conversation)
            .map(|i| AppendRequest {
                id: format!("{conv}-{i}"),
                conversation_id: (*conv).to_owned(),
                sender_id: id.to_owned(),
                sender_type: kind.to_owned(),
                content: content.to_owned(),
                temp_id: None,
                created_at_ms: 1_700_000_000_000,
            })
            .collect();
        assert!(store.append_batch(&reqs).iter().all(Result::is_ok));
    }
}

/// The length of the whole HTTP response at the start of `buf` (head, blank line and a
/// `Content-Length` body, none for a 204), once its head has arrived; `None` before that.
#[allow(dead_code)]
pub fn response_len(buf: &[u8]) -> Option<usize> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let no_body = head
        .lines()
        .next()
        .is_some_and(|status| status.split(' ').nth(1) == Some("204"));
    let length: usize = if no_body {
        0
    } else {
        head.lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("a content length")
    };
    Some(end + 4 + length)
}
