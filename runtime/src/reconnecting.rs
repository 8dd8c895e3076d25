//! A Rust chat client that stays connected by itself: the core's client state machine
//! ([`heartline_core::client::Client`]) driven by one tokio task over real WebSockets and the
//! machine's clock.
//!
//! The reconnection rules (backoff with jitter, the connect timeout, the deadline on the
//! server's silence, rejoining with catch-up, resending unacknowledged messages under the
//! same `tempId`, staying away once replaced or sent away) are the core's, the same code
//! the simulator runs under network faults; this module only opens sockets, moves frames,
//! reads the clock and sleeps until the core's next deadline. [`crate::client`] is the
//! other Rust client: one connection, no reconnection, every frame visible, for tests and
//! the load generator.
//!
//! The generator behind jitter and `tempId`s is seeded from the system's entropy unless
//! the configuration names a seed: two clients with one seed would back off in step after
//! a server restart (the storm jitter exists to spread) and, for one user, send the same
//! `tempId`s, which the server would answer as duplicates.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use futures_util::{SinkExt, StreamExt};
pub use heartline_core::client::{Backoff, ClientConfig, Notice, SendError, Status};
use heartline_core::client::{Client, Output};
use heartline_core::codec::Frame;
use heartline_core::Instant;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type Opening = Pin<Box<dyn Future<Output = Result<Box<Ws>, tungstenite::Error>> + Send>>;
/// A send's answer: its `tempId`, or why it was not queued.
type Queued = Result<String, SendError>;

/// Why a client could not be started, or a command not taken.
#[derive(Debug, thiserror::Error)]
pub enum ReconnectingError {
    /// The server address is not `http://host:port[/path]` or `ws://host:port[/path]`.
    #[error("unsupported server address {0:?}: expected http://host:port or ws://host:port")]
    Address(String),
    /// No seed could be drawn from the system's entropy.
    #[error("no seed from the system's entropy: {0}")]
    Entropy(String),
    /// The client's task has ended (after [`Reconnecting::close`], or a panic in it).
    #[error("the client has stopped")]
    Stopped,
    /// A send was not queued ([`ClientConfig::max_outbox`]).
    #[error(transparent)]
    Send(#[from] SendError),
}

/// The client's state after its last step, for an application to read at any time.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// The status.
    pub status: Status,
    /// Joined conversations, with the last `seq` handed over (`None` until the first join
    /// answer).
    pub joined: BTreeMap<String, Option<u64>>,
    /// Sends not yet acknowledged.
    pub unacknowledged: usize,
}

enum Command {
    Join(String),
    Leave(String),
    Send {
        conversation_id: String,
        content: String,
        temp_id: oneshot::Sender<Queued>,
    },
    Emit(String, Value),
    SetToken(String),
    RefreshToken(String),
    Connect,
    Disconnect,
    Close,
}

/// A running client: commands go to its task, notices come back in order.
#[derive(Debug)]
pub struct Reconnecting {
    commands: mpsc::UnboundedSender<Command>,
    notices: mpsc::UnboundedReceiver<Notice>,
    state: watch::Receiver<Snapshot>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Join(_) => "Join",
            Command::Leave(_) => "Leave",
            Command::Send { .. } => "Send",
            Command::Emit(..) => "Emit",
            Command::SetToken(_) => "SetToken",
            Command::RefreshToken(_) => "RefreshToken",
            Command::Connect => "Connect",
            Command::Disconnect => "Disconnect",
            Command::Close => "Close",
        })
    }
}

/// A seed for [`ClientConfig::seed`] from the system's entropy.
pub fn entropy_seed() -> Result<u64, ReconnectingError> {
    getrandom::u64().map_err(|e| ReconnectingError::Entropy(e.to_string()))
}

/// The WebSocket URL of a server given as `http://host:port[/path]` or `ws://...`; the
/// Socket.IO path is `/socket.io/` unless one is given.
fn websocket_url(server: &str) -> Result<String, ReconnectingError> {
    let bad = || ReconnectingError::Address(server.to_owned());
    let rest = server
        .strip_prefix("http://")
        .or_else(|| server.strip_prefix("ws://"))
        .ok_or_else(bad)?;
    // A query, a fragment or credentials have no place in it: the client adds the query.
    if rest.contains(['?', '#', '@']) {
        return Err(bad());
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err(bad());
    }
    let path = match path.trim_end_matches('/') {
        "" => "/socket.io/".to_owned(),
        p => format!("{p}/"),
    };
    Ok(format!("ws://{authority}{path}?EIO=4&transport=websocket"))
}

impl Reconnecting {
    /// Starts a client of `server` (`http://host:port`, or with the server's Socket.IO path:
    /// `http://host:port/socket.io`) and connects it. A `config.seed` of 0 (the default) is
    /// replaced by one from the system's entropy; any other is used as given (a test that
    /// wants the same jitter and `tempId`s every run).
    pub fn start(server: &str, mut config: ClientConfig) -> Result<Self, ReconnectingError> {
        let url = websocket_url(server)?;
        if config.seed == 0 {
            config.seed = entropy_seed()?;
        }
        let (commands, rx) = mpsc::unbounded_channel();
        let (tx, notices) = mpsc::unbounded_channel();
        // A send the server does not take within a connect's time ends the connection, as
        // silence would: the task must not sit in one write past the core's deadlines.
        let send_timeout = std::time::Duration::from_millis(config.connect_timeout_ms.max(1));
        let client = Client::new(config);
        let (publish, state) = watch::channel(snapshot(&client));
        let driver = Driver {
            client,
            url,
            started: tokio::time::Instant::now(),
            replies: Vec::new(),
            ws: None,
            opening: None,
            notices: tx,
            publish,
            send_timeout,
        };
        let task = tokio::spawn(driver.run(rx));
        Ok(Reconnecting {
            commands,
            notices,
            state,
            task,
        })
    }

    fn command(&self, c: Command) -> Result<(), ReconnectingError> {
        self.commands
            .send(c)
            .map_err(|_| ReconnectingError::Stopped)
    }

    /// Joins a conversation, and joins it again with catch-up after every reconnect.
    pub fn join(&self, conversation_id: &str) -> Result<(), ReconnectingError> {
        self.command(Command::Join(conversation_id.to_owned()))
    }

    /// Leaves a conversation: no longer rejoined, its position kept for a later
    /// [`Reconnecting::join`] (see [`heartline_core::client::Client::leave`]).
    pub fn leave(&self, conversation_id: &str) -> Result<(), ReconnectingError> {
        self.command(Command::Leave(conversation_id.to_owned()))
    }

    /// Queues a message; it is sent when connected and resent under the same `tempId` until
    /// it is acknowledged ([`Notice::Acked`]) or refused for good ([`Notice::SendFailed`]).
    /// Returns the `tempId`, or [`ReconnectingError::Send`] with the outbox full (nothing
    /// queued).
    pub async fn send_message(
        &self,
        conversation_id: &str,
        content: &str,
    ) -> Result<String, ReconnectingError> {
        let (temp_id, rx) = oneshot::channel();
        self.command(Command::Send {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            temp_id,
        })?;
        Ok(rx.await.map_err(|_| ReconnectingError::Stopped)??)
    }

    /// Emits any event while connected (not queued while disconnected, no ack).
    pub fn emit(&self, event: &str, payload: Value) -> Result<(), ReconnectingError> {
        self.command(Command::Emit(event.to_owned(), payload))
    }

    /// The token for the next connect only (see [`Reconnecting::refresh_token`] to keep the
    /// current connection as well).
    pub fn set_token(&self, token: &str) -> Result<(), ReconnectingError> {
        self.command(Command::SetToken(token.to_owned()))
    }

    /// A fresh token: presented at every later connect and, while connected, sent at once
    /// as `auth:refresh` (the answer comes as [`Notice::Refreshed`]). The application's
    /// answer to `auth:expired`, or its way to stay ahead of it.
    pub fn refresh_token(&self, token: &str) -> Result<(), ReconnectingError> {
        self.command(Command::RefreshToken(token.to_owned()))
    }

    /// Connects again after [`Reconnecting::disconnect`], or after the client gave up.
    pub fn connect(&self) -> Result<(), ReconnectingError> {
        self.command(Command::Connect)
    }

    /// Disconnects and stays disconnected until [`Reconnecting::connect`].
    pub fn disconnect(&self) -> Result<(), ReconnectingError> {
        self.command(Command::Disconnect)
    }

    /// The next notice; `None` once the client has stopped and every notice was read.
    ///
    /// Notices wait in an unbounded queue until read, as they carry the messages, which
    /// must not be dropped: an application reads them all, even when it follows the
    /// connection through [`Reconnecting::snapshot`] or [`Reconnecting::wait_for`] alone.
    pub async fn next(&mut self) -> Option<Notice> {
        self.notices.recv().await
    }

    /// The state after the client's last step.
    pub fn snapshot(&self) -> Snapshot {
        self.state.borrow().clone()
    }

    /// Waits until the state satisfies `done`; [`ReconnectingError::Stopped`] if the client
    /// stops first.
    pub async fn wait_for(
        &mut self,
        done: impl FnMut(&Snapshot) -> bool,
    ) -> Result<Snapshot, ReconnectingError> {
        match self.state.wait_for(done).await {
            Ok(s) => Ok(s.clone()),
            Err(_) => Err(ReconnectingError::Stopped),
        }
    }

    /// Disconnects, closes the WebSocket and ends the client's task.
    pub async fn close(self) {
        let _ = self.command(Command::Close);
        let _ = self.task.await;
    }
}

fn snapshot(client: &Client) -> Snapshot {
    Snapshot {
        status: client.status().clone(),
        joined: client.joined().clone(),
        unacknowledged: client.outbox_len(),
    }
}

/// The task's side: the core's client, the socket, the clock.
struct Driver {
    client: Client,
    url: String,
    /// Its clock's zero; tokio's clock, so that paused time in an application's tests
    /// moves the core's deadlines as it moves the sleeps.
    started: tokio::time::Instant,
    /// `tempId`s to hand back once the state that counts their sends is published.
    replies: Vec<(oneshot::Sender<Queued>, Queued)>,
    ws: Option<Box<Ws>>,
    /// A WebSocket being opened, at the core's request.
    opening: Option<Opening>,
    notices: mpsc::UnboundedSender<Notice>,
    publish: watch::Sender<Snapshot>,
    /// The longest one frame's write may take.
    send_timeout: std::time::Duration,
}

/// What woke the task.
enum Woke {
    Command(Option<Command>),
    Opened(Result<Box<Ws>, tungstenite::Error>),
    Frame(Option<Result<Message, tungstenite::Error>>),
    Deadline,
}

impl Driver {
    fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let now = self.now();
        self.client.connect(now);
        loop {
            self.pump().await;
            let wake = self.client.poll_timeout().map(|t| {
                let ms = t.ms_since(self.now());
                tokio::time::Instant::now() + std::time::Duration::from_millis(ms)
            });
            let woke = {
                let opening = async {
                    match self.opening.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                };
                let frame = async {
                    match self.ws.as_mut() {
                        Some(ws) => ws.next().await,
                        None => std::future::pending().await,
                    }
                };
                let deadline = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    c = commands.recv() => Woke::Command(c),
                    o = opening => Woke::Opened(o),
                    f = frame => Woke::Frame(f),
                    () = deadline => Woke::Deadline,
                }
            };
            let now = self.now();
            match woke {
                // Every handle dropped: nobody is left to read what comes.
                Woke::Command(None) | Woke::Command(Some(Command::Close)) => {
                    self.client.disconnect(now);
                    self.pump().await;
                    break;
                }
                Woke::Command(Some(c)) => self.command(now, c),
                Woke::Opened(result) => {
                    self.opening = None;
                    match result {
                        Ok(ws) => {
                            self.ws = Some(ws);
                            self.client.handle_opened(now);
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "could not open a WebSocket");
                            self.client.handle_closed(now);
                        }
                    }
                }
                Woke::Frame(Some(Ok(Message::Text(t)))) => {
                    self.client.handle_frame(now, &Frame::Text(t.into()));
                }
                Woke::Frame(Some(Ok(Message::Binary(b)))) => {
                    self.client.handle_frame(now, &Frame::Binary(b));
                }
                Woke::Frame(Some(Ok(Message::Close(_))) | Some(Err(_)) | None) => {
                    self.ws = None;
                    self.client.handle_closed(now);
                }
                Woke::Frame(Some(Ok(_))) => {}
                Woke::Deadline => self.client.handle_timeout(now),
            }
        }
    }

    fn command(&mut self, now: Instant, c: Command) {
        match c {
            Command::Join(id) => self.client.join(now, &id),
            Command::Leave(id) => self.client.leave(now, &id),
            Command::Send {
                conversation_id,
                content,
                temp_id,
            } => {
                let id = self.client.send_message(now, &conversation_id, &content);
                self.replies.push((temp_id, id));
            }
            Command::Emit(event, payload) => self.client.emit(now, &event, payload),
            Command::SetToken(token) => self.client.set_token(token),
            Command::RefreshToken(token) => self.client.refresh_token(now, token),
            Command::Connect => self.client.connect(now),
            Command::Disconnect => self.client.disconnect(now),
            Command::Close => {}
        }
    }

    /// Carries out the core's outputs until there are none, then publishes the state.
    async fn pump(&mut self) {
        while let Some(out) = self.client.poll_output() {
            match out {
                Output::Open => {
                    self.ws = None;
                    let url = self.url.clone();
                    self.opening = Some(Box::pin(async move {
                        tokio_tungstenite::connect_async(url)
                            .await
                            .map(|(ws, _)| Box::new(ws))
                    }));
                }
                Output::Send(frame) => {
                    let message = match frame {
                        Frame::Text(t) => Message::text(String::from_utf8_lossy(&t).into_owned()),
                        Frame::Binary(b) => Message::binary(b),
                    };
                    let sent = match self.ws.as_mut() {
                        Some(ws) => {
                            let write = tokio::time::timeout(self.send_timeout, ws.send(message));
                            matches!(write.await, Ok(Ok(())))
                        }
                        None => false,
                    };
                    if !sent && self.ws.take().is_some() {
                        let now = self.now();
                        self.client.handle_closed(now);
                    }
                }
                Output::Close => {
                    self.opening = None;
                    if let Some(mut ws) = self.ws.take() {
                        // A close is a write like any other: a server that stopped reading
                        // must not hold the task in it.
                        let _ = tokio::time::timeout(self.send_timeout, ws.close(None)).await;
                    }
                }
                Output::Notice(notice) => {
                    // The application may have stopped reading; the client goes on.
                    let _ = self.notices.send(notice);
                }
            }
        }
        let now = snapshot(&self.client);
        self.publish.send_if_modified(|s| {
            let changed = *s != now;
            *s = now;
            changed
        });
        for (reply, temp_id) in self.replies.drain(..) {
            let _ = reply.send(temp_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_become_websocket_urls() {
        let ok = |s: &str| websocket_url(s).expect(s);
        assert_eq!(
            ok("http://127.0.0.1:3000"),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ok("ws://chat.example.com:80/"),
            "ws://chat.example.com:80/socket.io/?EIO=4&transport=websocket"
        );
        assert_eq!(
            ok("http://[::1]:3000/rt/socket.io"),
            "ws://[::1]:3000/rt/socket.io/?EIO=4&transport=websocket"
        );
        for bad in [
            "https://x:1",
            "127.0.0.1:3000",
            "http://",
            "http://x:1/p?q=1",
            "http://x:1?q=1",
            "ws://x:1#f",
            "http://user@x:1",
        ] {
            assert!(
                matches!(websocket_url(bad), Err(ReconnectingError::Address(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_client_with_no_server_keeps_trying_and_stops_when_closed() {
        // A port nothing listens on (bound, then released).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let config = ClientConfig {
            backoff: Backoff {
                initial_ms: 10,
                max_ms: 20,
                max_attempts: 1_000,
                ..Default::default()
            },
            ..ClientConfig::default()
        };
        let mut c = Reconnecting::start(&format!("http://{addr}"), config).expect("start");
        let s = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            c.wait_for(|s| matches!(s.status, Status::Reconnecting { attempt } if attempt >= 3)),
        )
        .await
        .expect("in time")
        .expect("running");
        assert!(matches!(s.status, Status::Reconnecting { .. }));
        let temp = c.send_message("c1", "queued").await.expect("queued");
        assert!(temp.starts_with("t1-"), "{temp}");
        assert_eq!(c.snapshot().unacknowledged, 1);
        // A second client on the default seed draws its own: its tempIds and jitter differ.
        let other =
            Reconnecting::start(&format!("http://{addr}"), ClientConfig::default()).expect("start");
        let other_temp = other.send_message("c1", "queued").await.expect("queued");
        assert_ne!(temp, other_temp, "the same seed");
        // A named seed is kept: the same tempIds every run. (Against a server that never
        // answers the WebSocket handshake, so that no failed attempt has drawn a jitter
        // from the same generator first.)
        let seeded = |seed| ClientConfig {
            seed,
            ..ClientConfig::default()
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a silent server");
        let silent = format!("http://{}", listener.local_addr().expect("its address"));
        let a = Reconnecting::start(&silent, seeded(7)).expect("start");
        let b = Reconnecting::start(&silent, seeded(7)).expect("start");
        assert_eq!(
            a.send_message("c", "x").await.expect("a"),
            b.send_message("c", "x").await.expect("b")
        );
        for client in [c, other, a, b] {
            client.close().await;
        }
    }
}
