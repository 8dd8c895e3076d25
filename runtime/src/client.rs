//! A Socket.IO client in Rust, over tokio-tungstenite, speaking Engine.IO v4 / Socket.IO v5
//! with the core's own codecs: enough to drive end-to-end tests and a load generator.
//!
//! It opens a WebSocket-only session (`?EIO=4&transport=websocket`), connects one namespace
//! with an `auth` object, answers pings (switchable off, to play a dead peer), emits events
//! with or without acks, and hands every other event to the caller in order. It never
//! reconnects by itself: tests want to see each ending as it is.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use heartline_core::codec::engine::{Data, Packet as EnginePacket};
use heartline_core::codec::socket::{Decoder, Packet as SocketPacket, PacketType};
use heartline_core::codec::Frame;
use serde_json::{Map, Value};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The namespace, e.g. `/chat`.
    pub namespace: String,
    /// The CONNECT payload (socket.io-client's `auth` option), e.g. `{"token": ".."}`.
    pub auth: Option<Value>,
    /// Extra headers on the WebSocket handshake request (`Origin`, `Authorization`).
    pub headers: Vec<(String, String)>,
    /// Whether to answer Engine.IO pings; off plays a dead peer.
    pub answer_pings: bool,
    /// Bound on the whole connect, and the default wait of the helpers.
    pub timeout: Duration,
    /// Events, by name, handed over unparsed as [`ClientEvent::Raw`]: for a load generator
    /// that reads one or two fields of many events and should not spend its CPU building
    /// a `Value` for each. Events that ask for an ack are parsed as usual.
    pub raw_events: Vec<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            namespace: "/chat".into(),
            auth: None,
            headers: vec![],
            answer_pings: true,
            timeout: Duration::from_secs(5),
            raw_events: vec![],
        }
    }
}

impl ClientOptions {
    /// Options with `auth: {token}`.
    pub fn with_token(token: &str) -> Self {
        ClientOptions {
            auth: Some(serde_json::json!({ "token": token })),
            ..ClientOptions::default()
        }
    }
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// The server said something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Nothing came in time.
    #[error("timed out")]
    Timeout,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
    /// A header given in the options is invalid.
    #[error("invalid header {0}")]
    Header(String),
}

/// The end of a connect.
#[derive(Debug)]
pub enum Connect {
    /// Connected to the namespace.
    Connected(Client),
    /// CONNECT_ERROR with this payload (e.g. `{"message":"Authentication required"}`).
    Refused(Value),
    /// The server closed the connection during the handshake.
    Closed,
}

impl Connect {
    /// The client, or an error naming what happened instead.
    pub fn client(self) -> Result<Client, ClientError> {
        match self {
            Connect::Connected(c) => Ok(c),
            Connect::Refused(v) => Err(ClientError::Protocol(format!("connect refused: {v}"))),
            Connect::Closed => Err(ClientError::Closed),
        }
    }
}

/// Something the server sent or did.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// An EVENT on the namespace.
    Event {
        /// Its name.
        name: String,
        /// Its arguments.
        args: Vec<Value>,
    },
    /// An EVENT named in [`ClientOptions::raw_events`], unparsed: its data array as JSON
    /// text, name first (`["message:new",{...}]`).
    Raw {
        /// The JSON array.
        data: String,
    },
    /// A Socket.IO DISCONNECT of the namespace (`io server disconnect`).
    Disconnect,
    /// The WebSocket closed (with the close frame's code, if any).
    Closed {
        /// Close code.
        code: Option<u16>,
        /// Close reason.
        reason: String,
    },
}

/// Acks awaited, by id, and whether the reader has ended: once it has, nothing more will
/// be answered, and an ack asked for after that fails at once rather than at its timeout.
#[derive(Debug, Default)]
struct AckTable {
    waiting: HashMap<u64, oneshot::Sender<Vec<Value>>>,
    ended: bool,
}

type Acks = Arc<Mutex<AckTable>>;

fn lock_acks(acks: &Acks) -> std::sync::MutexGuard<'_, AckTable> {
    acks.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connected client. Dropping it drops the connection.
#[derive(Debug)]
pub struct Client {
    out: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    /// Events passed over by [`Client::wait_event`], still to be seen by [`Client::next`].
    backlog: VecDeque<ClientEvent>,
    acks: Acks,
    next_ack: u64,
    namespace: String,
    socket_id: String,
    sid: String,
    answer_pings: Arc<AtomicBool>,
    timeout: Duration,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn to_message(frame: Frame) -> Message {
    match frame {
        Frame::Text(b) => {
            Message::Text(Utf8Bytes::try_from(b).unwrap_or_else(|_| Utf8Bytes::from_static("")))
        }
        Frame::Binary(b) => Message::Binary(b),
    }
}

fn socket_frame(packet: &SocketPacket) -> Message {
    to_message(EnginePacket::Message(Data::Text(packet.encode_text())).to_frame())
}

async fn next_engine_packet(
    stream: &mut SplitStream<Ws>,
) -> Result<Option<EnginePacket>, ClientError> {
    loop {
        match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Ok(Message::Text(t))) => {
                return EnginePacket::from_text(t.as_str())
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(e.to_string()))
            }
            Some(Ok(Message::Binary(b))) => {
                return Ok(Some(EnginePacket::Message(Data::Binary(b))))
            }
            Some(Ok(_)) => continue,
            Some(Err(tungstenite::Error::ConnectionClosed)) => return Ok(None),
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Connects a WebSocket-only session to `addr` and one namespace.
pub async fn connect(addr: SocketAddr, options: ClientOptions) -> Result<Connect, ClientError> {
    let timeout = options.timeout;
    tokio::time::timeout(timeout, connect_inner(addr, options))
        .await
        .map_err(|_| ClientError::Timeout)?
}

/// Like [`connect`], over a TCP connection the caller opened (e.g. from a chosen source
/// address, to go past the ephemeral ports of one address pair), with small WebSocket
/// buffers: for load generators holding many idle connections.
pub async fn connect_over(
    stream: TcpStream,
    addr: SocketAddr,
    options: ClientOptions,
) -> Result<Connect, ClientError> {
    let timeout = options.timeout;
    let config = WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .read_buffer_size(4096)
        .write_buffer_size(0);
    tokio::time::timeout(
        timeout,
        connect_inner_with(addr, options, Some((stream, config))),
    )
    .await
    .map_err(|_| ClientError::Timeout)?
}

async fn connect_inner(addr: SocketAddr, options: ClientOptions) -> Result<Connect, ClientError> {
    connect_inner_with(addr, options, None).await
}

async fn connect_inner_with(
    addr: SocketAddr,
    options: ClientOptions,
    over: Option<(TcpStream, WebSocketConfig)>,
) -> Result<Connect, ClientError> {
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket");
    let mut request = url.into_client_request()?;
    for (k, v) in &options.headers {
        let name =
            HeaderName::from_bytes(k.as_bytes()).map_err(|_| ClientError::Header(k.clone()))?;
        let value = HeaderValue::from_str(v).map_err(|_| ClientError::Header(k.clone()))?;
        request.headers_mut().insert(name, value);
    }
    let ws = match over {
        Some((stream, config)) => {
            let _ = stream.set_nodelay(true);
            tokio_tungstenite::client_async_with_config(
                request,
                MaybeTlsStream::Plain(stream),
                Some(config),
            )
            .await?
            .0
        }
        None => {
            let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
            tokio_tungstenite::connect_async_with_config(request, Some(config), true)
                .await?
                .0
        }
    };
    let (mut sink, mut stream) = ws.split();
    let sid = match next_engine_packet(&mut stream).await? {
        Some(EnginePacket::Open(h)) => h.sid,
        Some(other) => {
            return Err(ClientError::Protocol(format!(
                "expected open, got {other:?}"
            )))
        }
        None => return Ok(Connect::Closed),
    };
    let auth = match options.auth.clone() {
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            let mut m = Map::new();
            m.insert("value".into(), other);
            Some(m)
        }
        None => None,
    };
    sink.send(socket_frame(&SocketPacket::connect(
        options.namespace.clone(),
        auth,
    )))
    .await?;
    let mut early = vec![];
    let socket_id = loop {
        match next_engine_packet(&mut stream).await? {
            None => return Ok(Connect::Closed),
            Some(EnginePacket::Ping(p)) => {
                if options.answer_pings {
                    sink.send(to_message(EnginePacket::Pong(p).to_frame()))
                        .await?;
                }
            }
            Some(EnginePacket::Message(Data::Text(text))) => {
                let packet = SocketPacket::decode(&text)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                match packet.kind {
                    PacketType::Connect if packet.nsp == options.namespace => {
                        let id = packet
                            .data
                            .as_ref()
                            .and_then(|d| d.get("sid"))
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        break id;
                    }
                    PacketType::ConnectError => {
                        return Ok(Connect::Refused(packet.data.unwrap_or(Value::Null)));
                    }
                    _ => early.push(packet),
                }
            }
            // The server's Engine.IO CLOSE: the handshake is over, as when the socket ends.
            Some(EnginePacket::Close) => return Ok(Connect::Closed),
            Some(_) => {}
        }
    };
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel();
    let acks: Acks = Arc::new(Mutex::new(AckTable::default()));
    let answer_pings = Arc::new(AtomicBool::new(options.answer_pings));
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            if sink.send(m).await.is_err() {
                break;
            }
        }
    });
    let reader = {
        let out = out_tx.clone();
        let acks = acks.clone();
        let answer = answer_pings.clone();
        let nsp = options.namespace.clone();
        let raw = RawEvents::new(&nsp, &options.raw_events);
        tokio::spawn(async move {
            for p in early {
                deliver(p, &nsp, &ev_tx, &acks);
            }
            read_loop(stream, nsp, raw, out, ev_tx, acks.clone(), answer).await;
            // Nothing more will be answered: fail the waiting acks, and later ones, at once.
            let mut table = lock_acks(&acks);
            table.ended = true;
            table.waiting.clear();
        })
    };
    Ok(Connect::Connected(Client {
        out: out_tx,
        events: ev_rx,
        backlog: VecDeque::new(),
        acks,
        next_ack: 0,
        namespace: options.namespace,
        socket_id,
        sid,
        answer_pings,
        timeout: options.timeout,
        tasks: vec![writer, reader],
    }))
}

fn deliver(
    packet: SocketPacket,
    nsp: &str,
    events: &mpsc::UnboundedSender<ClientEvent>,
    acks: &Acks,
) {
    if packet.nsp != nsp {
        return;
    }
    match packet.kind {
        PacketType::Event | PacketType::BinaryEvent => {
            let name = match packet.event_name() {
                Some(n) => n.to_owned(),
                None => return,
            };
            let args = packet.into_args();
            let _ = events.send(ClientEvent::Event { name, args });
        }
        PacketType::Ack | PacketType::BinaryAck => {
            let Some(id) = packet.id else {
                return;
            };
            let waiter = lock_acks(acks).waiting.remove(&id);
            if let Some(w) = waiter {
                let _ = w.send(packet.into_args());
            }
        }
        PacketType::Disconnect => {
            let _ = events.send(ClientEvent::Disconnect);
        }
        PacketType::Connect | PacketType::ConnectError => {}
    }
}

/// Recognises the events to hand over unparsed by the start of their packet text: an
/// EVENT's header as the codec writes it (type, then the namespace unless `/`), then
/// `["name",`. An ack id would come between the two, so an event that asks for an ack
/// never matches.
#[derive(Debug)]
struct RawEvents {
    /// Each prefix, and where its data array starts (the header's length).
    prefixes: Vec<(String, usize)>,
}

impl RawEvents {
    fn new(nsp: &str, names: &[String]) -> RawEvents {
        let header = SocketPacket {
            kind: PacketType::Event,
            nsp: nsp.to_owned(),
            id: None,
            data: None,
            attachments: vec![],
        }
        .encode_text();
        let prefixes = names
            .iter()
            .map(|n| {
                (
                    format!("{header}[{},", Value::from(n.as_str())),
                    header.len(),
                )
            })
            .collect();
        RawEvents { prefixes }
    }

    /// The data array of `text` (a Socket.IO packet) if it is one of the raw events.
    fn data<'t>(&self, text: &'t str) -> Option<&'t str> {
        let (_, start) = self
            .prefixes
            .iter()
            .find(|(p, _)| text.starts_with(p.as_str()))?;
        text.get(*start..)
    }
}

async fn read_loop(
    mut stream: SplitStream<Ws>,
    nsp: String,
    raw: RawEvents,
    out: mpsc::UnboundedSender<Message>,
    events: mpsc::UnboundedSender<ClientEvent>,
    acks: Acks,
    answer_pings: Arc<AtomicBool>,
) {
    let mut decoder = Decoder::new(16);
    loop {
        let msg = match stream.next().await {
            None => {
                let _ = events.send(ClientEvent::Closed {
                    code: None,
                    reason: String::new(),
                });
                return;
            }
            Some(Err(e)) => {
                let _ = events.send(ClientEvent::Closed {
                    code: None,
                    reason: e.to_string(),
                });
                return;
            }
            Some(Ok(m)) => m,
        };
        let packet = match msg {
            Message::Text(t) => match EnginePacket::from_text(t.as_str()) {
                Ok(p) => p,
                Err(_) => continue,
            },
            Message::Binary(b) => EnginePacket::Message(Data::Binary(b)),
            Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                };
                let _ = events.send(ClientEvent::Closed { code, reason });
                // Keep polling so that tungstenite sends its close reply, then stop.
                let drain = async { while stream.next().await.is_some() {} };
                let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
                return;
            }
            _ => continue,
        };
        match packet {
            EnginePacket::Ping(p) if answer_pings.load(Ordering::Relaxed) => {
                let _ = out.send(to_message(EnginePacket::Pong(p).to_frame()));
            }
            EnginePacket::Message(data) => {
                let unparsed = match &data {
                    Data::Text(text) if !decoder.is_pending() => raw.data(text).map(str::to_owned),
                    _ => None,
                };
                if let Some(data) = unparsed {
                    let _ = events.send(ClientEvent::Raw { data });
                } else if let Ok(Some(p)) = decoder.feed(data) {
                    deliver(p, &nsp, &events, &acks);
                }
            }
            _ => {}
        }
    }
}

impl Client {
    /// The Socket.IO socket id (`socket.id`).
    pub fn socket_id(&self) -> &str {
        &self.socket_id
    }

    /// The Engine.IO session id.
    pub fn sid(&self) -> &str {
        &self.sid
    }

    /// Turns answering pings on or off (off plays a dead peer).
    pub fn set_answer_pings(&self, on: bool) {
        self.answer_pings.store(on, Ordering::Relaxed);
    }

    /// Emits an event without asking for an ack.
    pub fn emit(&self, event: &str, payload: Value) -> Result<(), ClientError> {
        let packet = SocketPacket::event(
            self.namespace.clone(),
            None,
            Value::Array(vec![event.into(), payload]),
        );
        self.out
            .send(socket_frame(&packet))
            .map_err(|_| ClientError::Closed)
    }

    /// Emits an event asking for an ack, without waiting: the receiver gets the ack's
    /// arguments, or is dropped when the connection ends first. Lets a load generator
    /// keep many sends in flight. Fails with [`ClientError::Closed`] once the connection's
    /// reader has ended.
    pub fn emit_with_ack(
        &mut self,
        event: &str,
        payload: Value,
    ) -> Result<oneshot::Receiver<Vec<Value>>, ClientError> {
        let id = self.next_ack;
        self.next_ack += 1;
        let (tx, rx) = oneshot::channel();
        {
            let mut table = lock_acks(&self.acks);
            if table.ended {
                return Err(ClientError::Closed);
            }
            table.waiting.insert(id, tx);
        }
        let packet = SocketPacket::event(
            self.namespace.clone(),
            Some(id),
            Value::Array(vec![event.into(), payload]),
        );
        self.out
            .send(socket_frame(&packet))
            .map_err(|_| ClientError::Closed)?;
        Ok(rx)
    }

    /// Emits an event and waits for its ack; returns the first ack argument.
    pub async fn emit_ack(&mut self, event: &str, payload: Value) -> Result<Value, ClientError> {
        let rx = self.emit_with_ack(event, payload)?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(mut args)) => Ok(if args.is_empty() {
                Value::Null
            } else {
                args.remove(0)
            }),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Sends a raw WebSocket message (for malformed or oversize input).
    pub fn send_raw(&self, message: Message) -> Result<(), ClientError> {
        self.out.send(message).map_err(|_| ClientError::Closed)
    }

    /// The next thing the server sent or did, within `within`.
    pub async fn next(&mut self, within: Duration) -> Result<ClientEvent, ClientError> {
        if let Some(e) = self.backlog.pop_front() {
            return Ok(e);
        }
        self.recv(within).await
    }

    async fn recv(&mut self, within: Duration) -> Result<ClientEvent, ClientError> {
        match tokio::time::timeout(within, self.events.recv()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout),
        }
    }

    /// Waits for the event `name` within the client's timeout and returns its first
    /// argument. Other events are kept, in order, for [`Client::next`].
    pub async fn wait_event(&mut self, name: &str) -> Result<Value, ClientError> {
        let first = |args: &mut Vec<Value>| {
            if args.is_empty() {
                Value::Null
            } else {
                args.remove(0)
            }
        };
        if let Some(i) = self
            .backlog
            .iter()
            .position(|e| matches!(e, ClientEvent::Event { name: n, .. } if n == name))
        {
            if let Some(ClientEvent::Event { mut args, .. }) = self.backlog.remove(i) {
                return Ok(first(&mut args));
            }
        }
        if self
            .backlog
            .iter()
            .any(|e| matches!(e, ClientEvent::Closed { .. }))
        {
            return Err(ClientError::Closed);
        }
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                ClientEvent::Event { name: n, mut args } if n == name => {
                    return Ok(first(&mut args));
                }
                e @ ClientEvent::Closed { .. } => {
                    self.backlog.push_back(e);
                    return Err(ClientError::Closed);
                }
                other => self.backlog.push_back(other),
            }
        }
    }

    /// Waits, within `within`, until the connection ends; returns every event seen
    /// before, the ending last.
    pub async fn wait_closed(&mut self, within: Duration) -> Result<Vec<ClientEvent>, ClientError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut seen = vec![];
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let e = self.next(left).await?;
            let done = matches!(e, ClientEvent::Closed { .. });
            seen.push(e);
            if done {
                return Ok(seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_events_give_the_data_array_of_named_events_only() {
        let names = ["message:new".to_owned(), "a[b\"c".to_owned()];
        let chat = RawEvents::new("/chat", &names);
        let new = r#"2/chat,["message:new",{"seq":1}]"#;
        assert_eq!(chat.data(new), Some(r#"["message:new",{"seq":1}]"#));
        // A name with a bracket and a quote in it: the data still starts at the array.
        let odd = r#"2/chat,["a[b\"c",1]"#;
        assert_eq!(chat.data(odd), Some(r#"["a[b\"c",1]"#));
        // Not raw: another event, another namespace, an event asking for an ack.
        assert_eq!(chat.data(r#"2/chat,["message:sent",{}]"#), None);
        assert_eq!(chat.data(r#"2["message:new",{}]"#), None);
        assert_eq!(chat.data(r#"2/chat,7["message:new",{}]"#), None);
        let root = RawEvents::new("/", &names);
        assert_eq!(
            root.data(r#"2["message:new",{}]"#),
            Some(r#"["message:new",{}]"#)
        );
        assert_eq!(RawEvents::new("/chat", &[]).data(new), None);
    }

    type ServerSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

    /// A scripted server on loopback: `script` gets the first WebSocket accepted, after the
    /// Engine.IO open packet went out and the client's namespace CONNECT came in.
    async fn scripted_server<F, Fut>(script: F) -> (SocketAddr, JoinHandle<()>)
    where
        F: FnOnce(ServerSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("upgrade");
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
            ws.send(Message::text(open)).await.expect("open");
            let connect = ws.next().await.expect("a frame").expect("read");
            assert!(connect.to_text().is_ok_and(|t| t.starts_with("40")));
            script(ws).await;
        });
        (addr, server)
    }

    /// A server that opens a session, takes the CONNECT and answers with an Engine.IO
    /// CLOSE: the connect ends then, rather than waiting out its timeout.
    #[tokio::test]
    async fn an_engine_close_during_the_handshake_ends_the_connect() {
        let (addr, server) = scripted_server(|mut ws| async move {
            ws.send(Message::text("1")).await.expect("close packet");
            // Held open: only the CLOSE packet may end the client's connect.
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let options = ClientOptions {
            timeout: Duration::from_secs(20),
            ..ClientOptions::default()
        };
        let outcome = connect(addr, options).await.expect("no error");
        assert!(matches!(outcome, Connect::Closed), "{outcome:?}");
        server.abort();
    }

    /// Once the server has closed the connection, an ack asked for fails at once as
    /// `Closed`, not after the client's timeout as if the server were only slow.
    #[tokio::test]
    async fn an_ack_asked_for_after_the_close_fails_as_closed() {
        let (addr, server) = scripted_server(|mut ws| async move {
            ws.send(Message::text(r#"40/chat,{"sid":"x"}"#))
                .await
                .expect("connect reply");
            ws.close(None).await.expect("close");
            // Read the client's answer to the close; the TCP connection stays open.
            while let Some(Ok(_)) = ws.next().await {}
            tokio::time::sleep(Duration::from_secs(30)).await;
        })
        .await;
        let options = ClientOptions {
            timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        };
        let mut client = connect(addr, options)
            .await
            .expect("no error")
            .client()
            .expect("connected");
        let events = client
            .wait_closed(Duration::from_secs(10))
            .await
            .expect("the close arrives");
        assert!(matches!(events.last(), Some(ClientEvent::Closed { .. })));
        // The reader ends within a second of the close (it reads on for the close reply);
        // the writer is still waiting for something to write.
        let reader = &client.tasks[1];
        for _ in 0..500 {
            if reader.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(reader.is_finished(), "the reader ended");
        let asked = tokio::time::timeout(
            Duration::from_secs(10),
            client.emit_ack("message:history", serde_json::json!({})),
        )
        .await
        .expect("answered well before the client's 30 s timeout");
        assert!(matches!(asked, Err(ClientError::Closed)), "{asked:?}");
        server.abort();
    }
}
