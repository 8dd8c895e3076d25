//! Protocol transcripts captured from real sockets, as insta snapshots.
//!
//! The core's transcripts (`core/tests/snapshots/`) show what the state machines decide;
//! these show what actually crossed a loopback socket once the runtime had carried it out:
//! the real server (`heartline_runtime::start`), raw WebSocket frames from
//! tokio-tungstenite, nothing in between. Each line is `<connection> <direction> <frame>`:
//! `->` the client sent it, `<-` the client received it, `==` something the test did.
//! Values that change from run to run (session and socket ids, tokens, message ids,
//! timestamps) are replaced by regex before snapshotting, so a diff means the protocol
//! changed.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use regex::Regex;
use support::{token, TestServer, WAIT};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One raw WebSocket connection and its label in the transcript.
struct Wire {
    label: &'static str,
    ws: Ws,
}

/// What a read ended on.
#[derive(Debug, PartialEq)]
enum Ended {
    /// A frame matching the predicate.
    Matched(String),
    /// The server's close frame, with its code.
    Closed(u16),
}

#[derive(Default)]
struct Transcript {
    lines: Vec<String>,
}

impl Transcript {
    fn note(&mut self, label: &str, what: &str) {
        self.lines.push(format!("{label:<2} == {what}"));
    }

    async fn open(&mut self, server: &TestServer, label: &'static str) -> Wire {
        let path = "/socket.io/?EIO=4&transport=websocket";
        let url = format!("ws://{}{path}", server.addr);
        let (ws, resp) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("websocket opens");
        self.note(label, &format!("GET {path} -> {}", resp.status().as_u16()));
        Wire { label, ws }
    }

    async fn send(&mut self, wire: &mut Wire, text: &str) {
        self.lines.push(format!("{:<2} -> {text}", wire.label));
        wire.ws
            .send(Message::text(text.to_owned()))
            .await
            .expect("send");
    }

    /// Reads frames, logging each, until one satisfies `done` or the server closes.
    async fn recv_until(&mut self, wire: &mut Wire, done: impl Fn(&str) -> bool) -> Ended {
        loop {
            let msg = tokio::time::timeout(WAIT, wire.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: nothing within {WAIT:?}", wire.label));
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let text = t.as_str().to_owned();
                    self.lines.push(format!("{:<2} <- {text}", wire.label));
                    if done(&text) {
                        return Ended::Matched(text);
                    }
                }
                Some(Ok(Message::Binary(b))) => {
                    self.lines
                        .push(format!("{:<2} <- <binary {} bytes>", wire.label, b.len()));
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    self.lines
                        .push(format!("{:<2} <- close {code} {reason:?}", wire.label));
                    return Ended::Closed(code);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{}: read failed: {e}", wire.label),
                None => panic!("{}: stream ended without a close frame", wire.label),
            }
        }
    }

    /// Opens a connection and connects `/chat` as `user:type`, up to `connection:success`.
    async fn connect(
        &mut self,
        server: &TestServer,
        label: &'static str,
        user: &str,
        user_type: &str,
    ) -> Wire {
        let mut wire = self.open(server, label).await;
        self.recv_until(&mut wire, |t| t.starts_with('0')).await;
        let auth = serde_json::json!({ "token": token(user, user_type, 3600) });
        self.send(&mut wire, &format!("40/chat,{auth}")).await;
        let ended = self
            .recv_until(&mut wire, |t| t.contains("\"connection:success\""))
            .await;
        assert!(matches!(ended, Ended::Matched(_)), "{label} connected");
        wire
    }

    /// The transcript with run-dependent values replaced.
    fn redacted(&self) -> String {
        let rules = [
            // JWTs (three base64url parts).
            (
                r"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*",
                "<token>",
            ),
            // Engine.IO session ids and Socket.IO socket ids.
            (r#""(sid|socketId)":"[^"]*""#, r#""$1":"<$1>""#),
            // Message ids.
            (r#""(id|messageId)":"[^"]*""#, r#""$1":"<$1>""#),
            // Wall-clock times.
            (
                r#""(serverTime|createdAt|timestamp|expiresAt)":\d+"#,
                r#""$1":"<ms>""#,
            ),
        ];
        let mut text = self.lines.join("\n");
        for (pattern, with) in rules {
            let re = Regex::new(pattern).expect("valid regex");
            text = re.replace_all(&text, with).into_owned();
        }
        text
    }
}

fn is_ack(id: u64) -> impl Fn(&str) -> bool {
    let prefix = format!("43/chat,{id}[");
    move |t: &str| t.starts_with(&prefix)
}

#[tokio::test]
async fn handshake_join_send_ack_replacement_and_shutdown() {
    let mut server = TestServer::start(|_| {}).await;
    server
        .conversation("c1", &["alice:customer", "bob:agent"])
        .await;
    let mut t = Transcript::default();

    // (a) Handshake, namespace connect, join, send, ack, fan-out.
    let mut bob = t.connect(&server, "B", "bob", "agent").await;
    let mut alice = t.connect(&server, "A", "alice", "customer").await;
    t.recv_until(&mut bob, |f| f.contains("\"user:online\""))
        .await;
    t.send(
        &mut bob,
        r#"42/chat,1["conversation:join",{"conversationId":"c1"}]"#,
    )
    .await;
    t.recv_until(&mut bob, is_ack(1)).await;
    t.send(
        &mut alice,
        r#"42/chat,1["conversation:join",{"conversationId":"c1"}]"#,
    )
    .await;
    t.recv_until(&mut alice, is_ack(1)).await;
    t.send(
        &mut alice,
        r#"42/chat,2["message:send",{"conversationId":"c1","content":"hello","tempId":"t1"}]"#,
    )
    .await;
    t.recv_until(&mut alice, is_ack(2)).await;
    t.recv_until(&mut bob, |f| f.contains("\"message:new\""))
        .await;
    // A retry with the same tempId is answered from the store, not stored twice.
    t.send(
        &mut alice,
        r#"42/chat,3["message:send",{"conversationId":"c1","content":"hello","tempId":"t1"}]"#,
    )
    .await;
    let dup = t.recv_until(&mut alice, is_ack(3)).await;
    assert!(matches!(&dup, Ended::Matched(f) if f.contains("\"duplicate\":true")));

    // (b) Alice connects from a second device: the first is told and disconnected.
    let mut alice2 = t.connect(&server, "A2", "alice", "customer").await;
    let ended = t.recv_until(&mut alice, |_| false).await;
    assert!(matches!(ended, Ended::Closed(_)));

    // (c) Shutdown: the remaining clients see the transport close, no DISCONNECT, so
    // socket.io-client would reconnect.
    t.note("", "server shutdown");
    let handle = server.handle.take().expect("running");
    let stopping = tokio::spawn(handle.shutdown());
    let before = t.lines.len();
    for wire in [&mut bob, &mut alice2] {
        let ended = t.recv_until(wire, |_| false).await;
        assert_eq!(ended, Ended::Closed(1001), "{}", wire.label);
    }
    assert!(
        t.lines[before..]
            .iter()
            .all(|l| !l.contains("<- 41") && !l.contains("connection:replaced")),
        "no Socket.IO DISCONNECT on shutdown"
    );
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown in time")
        .expect("shutdown task");

    insta::assert_snapshot!(t.redacted());
}
