//! End to end over loopback, at the level of WebSocket frames (RFC 6455): what a client may
//! send besides one whole masked text frame at a time — pings, fragments, frames in the
//! same packet as the upgrade request — and what breaks the protocol, which closes that
//! connection alone with its code.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
use tokio_tungstenite::tungstenite::Message;

const PATH: &str = "/socket.io/?EIO=4&transport=websocket";

/// A client frame, masked, with the given first byte (FIN, RSV bits, opcode).
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&key);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// The next message from a tokio-tungstenite client, within [`WAIT`].
async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, ws.next())
        .await
        .expect("in time")
        .expect("frame")
        .expect("ok")
}

fn connect_packet(user: &str) -> String {
    format!(
        "40/chat,{}",
        json!({ "token": token(user, "customer", 3600) })
    )
}

/// A WebSocket opened by hand over TCP, reading the server's frames itself.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// Sends the upgrade request with `after` in the same write, and reads the 101.
    async fn open(server: &TestServer, after: &[u8]) -> Raw {
        let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
        let mut request = format!(
            "GET {PATH} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            server.addr
        )
        .into_bytes();
        request.extend_from_slice(after);
        tcp.write_all(&request).await.expect("write");
        let mut raw = Raw {
            tcp,
            buf: Vec::new(),
        };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk))
            .await
            .expect("read in time")
            .expect("read");
        assert!(n > 0, "connection ended; held {:?}", self.buf);
        self.buf.extend_from_slice(&chunk[..n]);
    }

    /// The next frame from the server: its opcode byte and payload. Server frames are
    /// never masked.
    async fn frame(&mut self) -> (OpCode, Vec<u8>) {
        loop {
            let mut cursor = std::io::Cursor::new(&self.buf[..]);
            if let Ok(Some((header, len))) = FrameHeader::parse(&mut cursor) {
                assert!(header.mask.is_none(), "server frames are not masked");
                let start = cursor.position() as usize;
                let end = start + len as usize;
                if self.buf.len() >= end {
                    let payload = self.buf[start..end].to_vec();
                    self.buf.drain(..end);
                    return (header.opcode, payload);
                }
            }
            self.fill().await;
        }
    }

    /// Text frames until one contains `needle`.
    async fn text_containing(&mut self, needle: &str) -> String {
        loop {
            let (opcode, payload) = self.frame().await;
            assert_eq!(opcode, OpCode::Data(Data::Text), "{payload:?}");
            let text = String::from_utf8(payload).expect("utf-8");
            if text.contains(needle) {
                return text;
            }
        }
    }

    /// Frames until a close frame; its code.
    async fn close_code(&mut self) -> u16 {
        loop {
            let (opcode, payload) = self.frame().await;
            if opcode == OpCode::Control(Control::Close) {
                assert!(payload.len() >= 2, "close frame with a code");
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.expect("write");
    }
}

#[tokio::test]
async fn frames_in_the_upgrade_requests_packet_are_read() {
    let mut server = TestServer::start(|_| {}).await;
    // A ping and the namespace connect, written with the request itself.
    let mut after = masked(0x89, b"early");
    after.extend(masked(0x81, connect_packet("alice").as_bytes()));
    let mut raw = Raw::open(&server, &after).await;
    let mut pong = None;
    let mut texts = Vec::new();
    while !texts
        .iter()
        .any(|t: &String| t.contains("connection:success"))
    {
        let (opcode, payload) = raw.frame().await;
        match opcode {
            OpCode::Control(Control::Pong) => pong = Some(payload),
            OpCode::Data(Data::Text) => texts.push(String::from_utf8(payload).expect("utf-8")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"early"[..]));
    assert!(
        texts[0].starts_with("0{"),
        "the open packet first: {texts:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_burst_of_pings_is_answered_once_for_the_latest() {
    let mut server = TestServer::start(|_| {}).await;
    let mut raw = Raw::open(&server, &[]).await;
    raw.text_containing("\"sid\"").await;
    // 200 pings in one write, then the namespace connect.
    let mut burst: Vec<u8> = (0..200)
        .flat_map(|i| masked(0x89, format!("p{i:03}").as_bytes()))
        .collect();
    burst.extend(masked(0x81, connect_packet("carol").as_bytes()));
    raw.send(&burst).await;
    let mut pongs = Vec::new();
    loop {
        let (opcode, payload) = raw.frame().await;
        match opcode {
            OpCode::Control(Control::Pong) => pongs.push(payload),
            OpCode::Data(Data::Text) if payload.windows(18).any(|w| w == b"connection:success") => {
                break
            }
            OpCode::Data(Data::Text) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // The latest ping is answered; the ones read with it are not, each, answered again.
    assert_eq!(pongs.last().map(Vec::as_slice), Some(&b"p199"[..]));
    assert!(pongs.len() < 20, "{} pongs for 200 pings", pongs.len());
    server.stop().await;
}

#[tokio::test]
async fn pings_are_answered_and_fragments_joined_between_them() {
    let mut server = TestServer::start(|_| {}).await;
    let url = format!("ws://{}{PATH}", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.expect("open");
    let open = next_message(&mut ws).await;
    assert!(open.to_text().expect("text").starts_with('0'));
    // The namespace connect in three fragments, a ping between the first two.
    let packet = connect_packet("bob");
    let (a, rest) = packet.split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    let text = OpCode::Data(Data::Text);
    let cont = OpCode::Data(Data::Continue);
    let fragment = |part: &str, opcode, last| {
        Message::Frame(Frame::message(
            Bytes::copy_from_slice(part.as_bytes()),
            opcode,
            last,
        ))
    };
    for msg in [
        fragment(a, text, false),
        Message::Ping(Bytes::from_static(b"between")),
        fragment(b, cont, false),
        fragment(c, cont, true),
    ] {
        ws.send(msg).await.expect("send");
    }
    let mut pong = None;
    let mut success = false;
    while !success {
        match next_message(&mut ws).await {
            Message::Pong(payload) => pong = Some(payload),
            Message::Text(t) => success = t.as_str().contains("connection:success"),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pong.as_deref(), Some(&b"between"[..]));
    // And a whole message after that still works.
    ws.send(Message::text("42/chat,[\"ping\",{}]"))
        .await
        .expect("send");
    while !next_message(&mut ws)
        .await
        .to_text()
        .is_ok_and(|t| t.contains("\"pong\""))
    {}
    server.stop().await;
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_and_the_socket_closed() {
    let mut server = TestServer::start(|_| {}).await;
    let mut raw = Raw::open(&server, &[]).await;
    raw.text_containing("\"sid\"").await;
    raw.send(&masked(0x81, connect_packet("erin").as_bytes()))
        .await;
    raw.text_containing("connection:success").await;
    let mut close = 1001u16.to_be_bytes().to_vec();
    close.extend_from_slice(b"going away");
    raw.send(&masked(0x88, &close)).await;
    // One close frame back, echoing the code, and nothing after it but the end of the
    // socket.
    assert_eq!(raw.close_code().await, 1001);
    let mut rest = [0u8; 64];
    let after = tokio::time::timeout(WAIT, raw.tcp.read(&mut rest))
        .await
        .expect("the server ends the socket");
    assert!(
        matches!(after, Ok(0) | Err(_)),
        "bytes after the close: {after:?}"
    );
    assert!(raw.buf.is_empty(), "bytes after the close: {:?}", raw.buf);
    server.stop().await;
}

/// A client that gave a connect attempt up (its own timeout, while a stalled network held
/// the CONNECT) sends its close right behind the CONNECT, and both arrive together. That
/// CONNECT opens nothing: as the newest connection of its user it would displace the live
/// one, which socket.io-client then never reconnects, for a session already over. The
/// close is found in the bytes read with the CONNECT, behind a PONG, or (the CONNECT
/// filling the whole read) still waiting in the socket.
#[tokio::test]
async fn a_connect_arriving_with_its_sockets_close_displaces_nobody() {
    let close = masked(0x88, &1000u16.to_be_bytes());
    let small = masked(0x81, connect_packet("erin").as_bytes());
    // One frame of exactly one read (16 KiB), so the close stays in the socket.
    let filling = {
        let token = token("erin", "customer", 3600);
        let bare = format!("40/chat,{{\"token\":\"{token}\",\"pad\":\"\"}}");
        let pad = 16 * 1024 - 8 - bare.len();
        let packet = format!(
            "40/chat,{{\"token\":\"{token}\",\"pad\":\"{}\"}}",
            "x".repeat(pad)
        );
        let frame = masked(0x81, packet.as_bytes());
        assert_eq!(frame.len(), 16 * 1024);
        frame
    };
    let cases: [(&str, Vec<u8>); 3] = [
        (
            "close read with it",
            [small.clone(), close.clone()].concat(),
        ),
        (
            "close behind a pong",
            [small.clone(), masked(0x8A, b""), close.clone()].concat(),
        ),
        ("close still in the socket", [filling, close].concat()),
    ];
    for (case, late) in cases {
        let mut server = TestServer::start(|_| {}).await;
        let mut live = Raw::open(&server, &[]).await;
        live.text_containing("\"sid\"").await;
        live.send(&small).await;
        live.text_containing("connection:success").await;

        let mut ghost = Raw::open(&server, &[]).await;
        ghost.text_containing("\"sid\"").await;
        ghost.send(&late).await;
        // Its close is answered and the socket ends; the session is gone.
        assert_eq!(ghost.close_code().await, 1000, "{case}");
        let gone = eventually(WAIT, || async {
            metric(&server.metrics().await, "heartline_engine_sessions") == Some(1.0)
        })
        .await;
        assert!(gone, "{case}: {}", server.metrics().await);
        let m = server.metrics().await;
        assert_eq!(
            metric(&m, "heartline_replacements_total"),
            Some(0.0),
            "{case}: {m}"
        );
        assert_eq!(
            metric(&m, "heartline_connections"),
            Some(1.0),
            "{case}: {m}"
        );

        // The live connection was told nothing and still works.
        live.send(&masked(0x81, br#"42/chat,["ping",{}]"#)).await;
        loop {
            let (opcode, payload) = live.frame().await;
            assert_eq!(opcode, OpCode::Data(Data::Text), "{case}: {payload:?}");
            let text = String::from_utf8(payload).expect("utf-8");
            assert!(!text.contains("connection:replaced"), "{case}: {text}");
            if text.contains("\"pong\"") {
                break;
            }
        }

        // The same CONNECT without the close behind it does displace (the rule stands).
        let mut newer = Raw::open(&server, &[]).await;
        newer.text_containing("\"sid\"").await;
        newer.send(&small).await;
        newer.text_containing("connection:success").await;
        live.text_containing("connection:replaced").await;
        server.stop().await;
    }
}

#[tokio::test]
async fn protocol_errors_close_that_connection_alone_with_their_code() {
    let mut server = TestServer::start(|_| {}).await;
    let mut other = server.connect("carol", "agent").await;
    let unmasked = {
        let packet = connect_packet("dave");
        let mut f = vec![0x81, 126];
        f.extend_from_slice(&(packet.len() as u16).to_be_bytes());
        f.extend_from_slice(packet.as_bytes());
        f
    };
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked frame", unmasked, 1002),
        ("reserved bit", masked(0xc1, b"2"), 1002),
        ("continuation without a message", masked(0x80, b"2"), 1002),
        ("ping over 125 bytes", masked(0x89, &[b'p'; 126]), 1002),
        (
            "text that is not UTF-8",
            masked(0x81, &[b'4', 0xff, 0xfe]),
            1007,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut raw = Raw::open(&server, &[]).await;
        raw.text_containing("\"sid\"").await;
        raw.send(&bytes).await;
        assert_eq!(raw.close_code().await, code, "{name}");
        // The server then closes the socket.
        let mut rest = [0u8; 64];
        let ended = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match raw.tcp.read(&mut rest).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{name}: socket closed");
    }
    let m = server.metrics().await;
    assert!(
        m.contains("heartline_closes_total{reason=\"protocol_error\"} 5\n"),
        "counted as protocol errors: {m}"
    );
    other.emit("ping", json!({})).expect("emit");
    other
        .wait_event("pong")
        .await
        .expect("the other connection is untouched");
    server.stop().await;
}

/// A client still sending a frame the server refused from its header (over
/// `max_payload_bytes`) reads the close frame with its code and can go on sending until it
/// is done: the server reads and drops the rest before it closes the socket, rather than
/// closing with bytes unread, which resets the connection under the client.
#[tokio::test]
async fn a_client_still_sending_a_refused_frame_reads_the_close_not_a_reset() {
    let mut server = TestServer::start(|_| {}).await;
    let mut raw = Raw::open(&server, b"").await;
    raw.text_containing("\"sid\"").await;
    raw.send(&header_announcing(0x81, 5_000_000)).await;
    raw.send(&[b'x'; 64 << 10]).await;
    assert_eq!(raw.close_code().await, 1009, "message too big");
    // The client, not done with its frame, sends more after the close, in pieces.
    let piece = vec![b'x'; 64 << 10];
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        raw.tcp
            .write_all(&piece)
            .await
            .unwrap_or_else(|e| panic!("piece {i} after the close: {e}"));
    }
    raw.tcp
        .shutdown()
        .await
        .expect("shut down the writing side");
    let mut rest = Vec::new();
    let end = tokio::time::timeout(WAIT, raw.tcp.read_to_end(&mut rest))
        .await
        .expect("the server closes once the client is done");
    assert!(end.is_ok(), "a clean end, not a reset: {end:?}");
    let lingered = server.metrics().await;
    assert_eq!(metric(&lingered, "heartline_tcp_lingered_total"), Some(1.0));
    server.stop().await;
}

/// A masked client frame's header announcing `len` bytes of payload, the length in its
/// shortest form, with the key [`masked_long`] masks with.
fn header_announcing(first: u8, len: usize) -> Vec<u8> {
    let mut out = vec![first];
    match len {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    out
}

/// A masked client frame of any length.
fn masked_long(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x12, 0x34, 0x56, 0x78];
    let mut out = header_announcing(first, payload.len());
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    out
}

/// Large messages still arriving share one budget across connections, reserved from each
/// frame's header before its payload is read: a frame asking for more than is free waits,
/// its connection reading nothing more, until bytes come back; a connection that holds
/// some (the first half of a fragmented message) and asks for more is closed with 1013
/// rather than wait; and what a connection held comes back when it goes.
#[tokio::test]
async fn large_messages_arriving_share_one_budget() {
    // Long enough that the connections holding frames are not closed meanwhile for never
    // connecting a namespace, nor ended for arriving too slowly (the next test's rule).
    let mut server = TestServer::start(|c| {
        c.server.handshake_timeout_ms = 60_000;
        c.server.arriving_grace_ms = Some(3_600_000);
    })
    .await;
    let scrape = |name: &'static str| {
        let server = &server;
        async move { metric(&server.metrics().await, name).expect("metric") as u64 }
    };
    let held_reaches = |n: u64| {
        let server = &server;
        eventually(WAIT, move || async move {
            metric(&server.metrics().await, "heartline_arriving_bytes") == Some(n as f64)
        })
    };
    let max = scrape("heartline_arriving_bytes_max").await;
    assert!(max >= 256 << 20, "{max}");

    // Fran: a namespace, then the first half of a fragmented message, whole. Her
    // reservation covers that frame (payload and 14 bytes of header) until her message is
    // whole and handed over.
    let mut fran = Raw::open(&server, &masked(0x81, connect_packet("fran").as_bytes())).await;
    fran.text_containing("connection:success").await;
    fran.send(&masked_long(0x01, &vec![b'x'; 500_000])).await;
    let fran_holds = 500_014;
    assert!(
        held_reaches(fran_holds).await,
        "the first fragment reserved"
    );

    // Hogs: each the header of a 1,000,000-byte frame, its payload never sent.
    let frame = 1_000_014;
    let hogs_n = (max - fran_holds) / frame;
    let mut hogs = Vec::new();
    for _ in 0..hogs_n {
        hogs.push(Raw::open(&server, &header_announcing(0x81, 1_000_000)).await);
    }
    let mut full = fran_holds + hogs_n * frame;
    assert!(held_reaches(full).await, "each header reserved its frame");
    // And one that takes what is left, when that is more than the smallest large frame.
    let left = max - full;
    let filler = if left > 0xffff + 14 {
        let raw = Raw::open(&server, &header_announcing(0x82, left as usize - 14)).await;
        full = max;
        assert!(held_reaches(full).await, "the rest reserved");
        Some(raw)
    } else {
        None
    };

    // Walt, connected, sends a large frame's header: nothing is free, so he waits.
    let mut walt = Raw::open(&server, &masked(0x81, connect_packet("walt").as_bytes())).await;
    walt.text_containing("connection:success").await;
    let event = format!("42/chat,[\"ping\",\"{}\"]", "y".repeat(900_000));
    let walt_frame = masked_long(0x81, event.as_bytes());
    walt.send(&walt_frame[..14]).await;
    let waits = eventually(WAIT, || async {
        scrape("heartline_arriving_waits_total").await == 1
    })
    .await;
    assert!(waits, "a frame asking for more than is free waits");

    // Fran asks for more (the final half) while holding some: refused at once.
    fran.send(&header_announcing(0x80, 500_000)).await;
    assert_eq!(fran.close_code().await, 1013);
    assert_eq!(scrape("heartline_arriving_refused_total").await, 1);
    // Her bytes come back, which is not enough for Walt's frame.
    assert!(
        held_reaches(full - fran_holds).await,
        "a refusal gives its bytes back"
    );

    // A hog goes: Walt has his bytes, and his message is read and answered.
    drop(hogs.pop());
    walt.send(&walt_frame[14..]).await;
    walt.text_containing("\"pong\"").await;
    // Handed over, his bytes come back too.
    assert!(held_reaches(full - fran_holds - frame).await);

    // Every connection that goes gives back what it held.
    drop(hogs);
    drop(filler);
    assert!(held_reaches(0).await, "nothing held once they are gone");
    server.stop().await;
}

/// One hog's frame: a 1,000,000-byte payload behind its 14-byte header.
const HOG_FRAME: u64 = 1_000_014;

/// Connections that send the header of a 1,000,000-byte frame and nothing more, as many as
/// fit in the arriving budget of `max` bytes beside the `held` already reserved (oldest
/// first), and one that takes what is left when that is more than the smallest large
/// frame; returned with what the budget then holds, once it does.
async fn fill_budget(server: &TestServer, max: u64, held: u64) -> (Vec<Raw>, Option<Raw>, u64) {
    let mut hogs = Vec::new();
    for _ in 0..(max - held) / HOG_FRAME {
        hogs.push(Raw::open(server, &header_announcing(0x81, 1_000_000)).await);
    }
    let mut full = held + hogs.len() as u64 * HOG_FRAME;
    let left = max - full;
    let filler = if left > 0xffff + 14 {
        full = max;
        Some(Raw::open(server, &header_announcing(0x82, left as usize - 14)).await)
    } else {
        None
    };
    let filled = eventually(WAIT, || async {
        metric(&server.metrics().await, "heartline_arriving_bytes") == Some(full as f64)
    })
    .await;
    assert!(filled, "the headers reserved their frames");
    (hogs, filler, full)
}

/// A polling POST sent in chunks announces no length, so its bytes are reserved as they
/// come and never waited for (the chunks in hand are bytes the budget does not count):
/// with the budget full it is refused 503 at once, touching nothing of its session, and
/// the same POST goes through once a large frame elsewhere gives its bytes back.
#[tokio::test]
async fn a_chunked_polling_body_over_a_full_budget_is_refused_and_its_session_goes_on() {
    let mut server = TestServer::start(|c| c.server.handshake_timeout_ms = 60_000).await;
    let addr = server.addr;
    let held = |server: &TestServer| {
        let addr = server.addr;
        async move {
            let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
            metric(&m, "heartline_arriving_bytes").expect("metric") as u64
        }
    };
    let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
    let max = metric(&m, "heartline_arriving_bytes_max").expect("metric") as u64;

    // A polling session, connected.
    let (status, _, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value =
        serde_json::from_str(body.strip_prefix('0').expect("open")).expect("json");
    let path = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().expect("sid")
    );
    let (status, _, _) = http(addr, "POST", &path, &[], &connect_packet("cora")).await;
    assert_eq!(status, 200);
    let (_, _, body) = http(addr, "GET", &path, &[], "").await;
    assert!(body.contains("connection:success"), "{body}");

    // The budget filled by headers of large frames whose payloads never come.
    let (mut hogs, _filler, full) = fill_budget(&server, max, 0).await;
    let frame = HOG_FRAME;

    // An event of 40,000 bytes, sent in two chunks with no length announced.
    let packet = format!("42/chat,[\"ping\",\"{}\"]", "z".repeat(40_000));
    let (a, b) = packet.as_bytes().split_at(20_000);
    let mut chunked = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for part in [a, b] {
        chunked.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let (status, _, body) = raw_http(addr, &chunked).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many large messages arriving"), "{body}");
    let (_, _, m) = http(addr, "GET", "/metrics", &[], "").await;
    assert_eq!(metric(&m, "heartline_arriving_refused_total"), Some(1.0));
    assert_eq!(held(&server).await, full, "the refusal kept nothing");

    // A hog goes; the same POST is taken, and the event answered on the session.
    drop(hogs.pop());
    let room = eventually(WAIT, || async { held(&server).await == full - frame }).await;
    assert!(room, "the hog's bytes came back");
    let (status, _, body) = raw_http(addr, &chunked).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _, body) = http(addr, "GET", &path, &[], "").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"pong\""), "{body}");
    server.stop().await;
}

/// Connections that send the header of a large frame and nothing more do not keep the
/// arriving budget from a client whose large message waits: past the grace (1 s here,
/// 10 s by default), the slowest of them, oldest first, are closed 1013 until the bytes
/// they give back cover the wait, and no more; the waiting message is then read and
/// answered.
#[tokio::test]
async fn messages_arriving_too_slowly_make_room_for_one_waiting() {
    let mut server = TestServer::start(|c| {
        c.server.handshake_timeout_ms = 60_000;
        c.server.arriving_grace_ms = Some(1_000);
    })
    .await;
    let scrape = |name: &'static str| {
        let server = &server;
        async move { metric(&server.metrics().await, name).expect("metric") as u64 }
    };
    let max = scrape("heartline_arriving_bytes_max").await;
    let (mut hogs, _filler, full) = fill_budget(&server, max, 0).await;
    // Nothing waits: however slow, nobody is ended.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(scrape("heartline_arriving_evicted_total").await, 0);

    let mut walt = Raw::open(&server, &masked(0x81, connect_packet("walt").as_bytes())).await;
    walt.text_containing("connection:success").await;
    let event = format!("42/chat,[\"ping\",\"{}\"]", "y".repeat(900_000));
    let walt_frame = masked_long(0x81, event.as_bytes());
    walt.send(&walt_frame[..14]).await;
    // The oldest hog makes room; one is enough.
    assert_eq!(hogs[0].close_code().await, 1013);
    assert_eq!(scrape("heartline_arriving_evicted_total").await, 1);
    walt.send(&walt_frame[14..]).await;
    walt.text_containing("\"pong\"").await;
    // Handed over, Walt's bytes come back; the other hogs still hold theirs.
    let rest = eventually(WAIT, || async {
        scrape("heartline_arriving_bytes").await == full - HOG_FRAME
    })
    .await;
    assert!(rest, "only the one hog was ended");
    assert_eq!(scrape("heartline_arriving_evicted_total").await, 1);
    server.stop().await;
}

/// The same rule for a polling POST whose body arrives too slowly: it is answered 408,
/// giving back the bytes its `Content-Length` reserved, and the waiting message goes.
#[tokio::test]
async fn a_polling_body_arriving_too_slowly_makes_room_for_one_waiting() {
    let mut server = TestServer::start(|c| {
        c.server.handshake_timeout_ms = 60_000;
        c.server.arriving_grace_ms = Some(1_000);
    })
    .await;
    let addr = server.addr;
    let scrape = |name: &'static str| {
        let server = &server;
        async move { metric(&server.metrics().await, name).expect("metric") as u64 }
    };
    let max = scrape("heartline_arriving_bytes_max").await;
    let (status, _, body) = http(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], "").await;
    assert_eq!(status, 200, "{body}");
    let open: serde_json::Value =
        serde_json::from_str(body.strip_prefix('0').expect("open")).expect("json");
    let sid = open["sid"].as_str().expect("sid").to_owned();
    // The oldest holder: a POST announcing 1,000,000 bytes, none of which come. (The
    // slowest go first: were ten to come, a frame header with no payload would go before
    // it.)
    let mut poster = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: text/plain;charset=UTF-8\r\nContent-Length: 1000000\r\n\r\n"
    );
    poster.write_all(head.as_bytes()).await.expect("write");
    let posted = eventually(WAIT, || async {
        scrape("heartline_arriving_bytes").await == 1_000_000
    })
    .await;
    assert!(posted, "the POST reserved its length");
    let (_hogs, _filler, _) = fill_budget(&server, max, 1_000_000).await;

    let mut walt = Raw::open(&server, &masked(0x81, connect_packet("walt").as_bytes())).await;
    walt.text_containing("connection:success").await;
    let event = format!("42/chat,[\"ping\",\"{}\"]", "y".repeat(900_000));
    let walt_frame = masked_long(0x81, event.as_bytes());
    walt.send(&walt_frame[..14]).await;
    // Read until the answer's body is in (the connection may stay open behind it).
    let mut answer = Vec::new();
    while !String::from_utf8_lossy(&answer).contains("too slowly") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, poster.read(&mut chunk))
            .await
            .expect("answered in time")
            .expect("read");
        assert!(n > 0, "closed before its answer: {answer:?}");
        answer.extend_from_slice(&chunk[..n]);
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("arrived too slowly"), "{answer}");
    assert_eq!(scrape("heartline_arriving_evicted_total").await, 1);
    walt.send(&walt_frame[14..]).await;
    walt.text_containing("\"pong\"").await;
    server.stop().await;
}
