//! Engine.IO v4 packets: the transport layer under Socket.IO.
//!
//! A text packet is one type digit followed by an optional UTF-8 payload (`4hello`, `2`,
//! `3probe`). A binary packet is always a `message`: over WebSocket it is a binary frame
//! holding the raw bytes with no type prefix; over HTTP long-polling, where the body is text,
//! it is `b` followed by standard padded base64. A polling body holds several packets joined
//! by the record separator `\x1e`, with no length prefixes.
//!
//! Why [`Packet::from_text`] also accepts the `b` form: the reference parser decodes a
//! `b`-prefixed string the same way on every transport, so refusing it on WebSocket would
//! only make Heartline stricter than the clients it has to interoperate with. Base64 padding
//! is optional on input for the same reason; output is always padded.
//!
//! Why `close`, `upgrade` and `noop` with trailing bytes are refused rather than ignored:
//! no conforming peer sends them, and a codec whose decode accepts exactly what its encode
//! produces is one the state machine can reason about.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Frame;

/// Separates packets in a polling payload.
pub const SEPARATOR: char = '\x1e';

/// Standard alphabet, padding optional: what the reference clients produce, and a little more.
const BASE64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The payload of an Engine.IO `message` packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A text message (for Socket.IO, one encoded Socket.IO packet).
    Text(String),
    /// A binary message (for Socket.IO, one attachment of a binary packet).
    Binary(Bytes),
}

/// The contents of the `open` packet that starts every session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Session id, repeated by the client on every later polling request.
    pub sid: String,
    /// Transports the client may upgrade to: `["websocket"]` on polling, `[]` on WebSocket.
    pub upgrades: Vec<String>,
    /// Time between the server's pings.
    pub ping_interval_ms: u64,
    /// Time the server waits for a pong after each ping.
    pub ping_timeout_ms: u64,
    /// Largest body the client should POST in one polling request.
    pub max_payload: u64,
}

/// One Engine.IO v4 packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake, server to client.
    Open(Handshake),
    /// `1`: close the session (meaningful on polling only).
    Close,
    /// `2`: heartbeat from the server; `2probe` from the client during an upgrade.
    Ping(String),
    /// `3`: heartbeat answer from the client; `3probe` from the server during an upgrade.
    Pong(String),
    /// `4`: application data.
    Message(Data),
    /// `5`: the client switches the session to the probed WebSocket.
    Upgrade,
    /// `6`: releases a pending polling GET with nothing to say.
    Noop,
}

/// Why a frame, packet or polling payload could not be decoded.
///
/// Any of these from a peer is a protocol violation ("parse error"); the session ends.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum DecodeError {
    /// The packet has no type character at all.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type (`0`-`6`, or `b` for base64 binary).
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A text frame whose bytes are not UTF-8.
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
    /// A `b` packet whose payload is not standard base64.
    #[error("binary packet is not valid base64")]
    InvalidBase64,
    /// An `open` packet whose JSON is missing, malformed or of the wrong shape.
    #[error("invalid open packet: {0}")]
    InvalidOpen(String),
    /// A polling payload with more packets than the caller allows.
    #[error("polling payload holds more than {max} packets")]
    TooManyPackets {
        /// The limit that was exceeded.
        max: usize,
    },
}

/// The `open` JSON as written: field order here is wire order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct OpenOut<'a> {
    sid: &'a str,
    upgrades: &'a [String],
    ping_interval: u64,
    ping_timeout: u64,
    max_payload: u64,
}

/// The `open` JSON as read. Unknown keys are ignored so a newer server's extras don't break us.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OpenIn {
    sid: String,
    upgrades: Vec<String>,
    ping_interval: u64,
    ping_timeout: u64,
    max_payload: u64,
}

impl Packet {
    /// The type character that starts this packet's text form.
    pub fn type_char(&self) -> char {
        match self {
            Packet::Open(_) => '0',
            Packet::Close => '1',
            Packet::Ping(_) => '2',
            Packet::Pong(_) => '3',
            Packet::Message(Data::Text(_)) => '4',
            Packet::Message(Data::Binary(_)) => 'b',
            Packet::Upgrade => '5',
            Packet::Noop => '6',
        }
    }

    /// Encodes for the WebSocket transport: text packets as a Text frame
    /// `<digit><payload>`, `Message(Binary)` as a raw Binary frame (no prefix).
    ///
    /// The same frames feed [`encode_payload`] for polling.
    pub fn to_frame(&self) -> Frame {
        let text = match self {
            Packet::Message(Data::Binary(bytes)) => return Frame::Binary(bytes.clone()),
            Packet::Open(handshake) => encode_open(handshake),
            Packet::Close => "1".to_owned(),
            Packet::Ping(payload) => prefixed('2', payload),
            Packet::Pong(payload) => prefixed('3', payload),
            Packet::Message(Data::Text(payload)) => prefixed('4', payload),
            Packet::Upgrade => "5".to_owned(),
            Packet::Noop => "6".to_owned(),
        };
        Frame::text(text)
    }

    /// Decodes one WebSocket frame (a binary frame is always `Message(Binary)`).
    pub fn from_frame(frame: &Frame) -> Result<Packet, DecodeError> {
        match frame {
            Frame::Binary(bytes) => Ok(Packet::Message(Data::Binary(bytes.clone()))),
            Frame::Text(bytes) => {
                let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)?;
                Packet::from_text(text)
            }
        }
    }

    /// Decodes one text packet: a type digit and its payload, or `b` and base64.
    ///
    /// `close`, `upgrade` and `noop` carry nothing, but a payload after them is ignored,
    /// not refused, as the reference parser does: some clients send one (the BestHTTP
    /// client finishes its upgrade with `52`).
    pub fn from_text(s: &str) -> Result<Packet, DecodeError> {
        let mut chars = s.chars();
        let kind = chars.next().ok_or(DecodeError::Empty)?;
        // `as_str` after one `next` starts on a char boundary, whatever the first char was.
        let rest = chars.as_str();
        match kind {
            '0' => decode_open(rest).map(Packet::Open),
            '1' => Ok(Packet::Close),
            '2' => Ok(Packet::Ping(rest.to_owned())),
            '3' => Ok(Packet::Pong(rest.to_owned())),
            '4' => Ok(Packet::Message(Data::Text(rest.to_owned()))),
            '5' => Ok(Packet::Upgrade),
            '6' => Ok(Packet::Noop),
            'b' => BASE64_LENIENT
                .decode(rest)
                .map(|bytes| Packet::Message(Data::Binary(Bytes::from(bytes))))
                .map_err(|_| DecodeError::InvalidBase64),
            other => Err(DecodeError::UnknownType(other)),
        }
    }
}

fn prefixed(kind: char, payload: &str) -> String {
    let mut out = String::with_capacity(1 + payload.len());
    out.push(kind);
    out.push_str(payload);
    out
}

fn encode_open(handshake: &Handshake) -> String {
    let wire = OpenOut {
        sid: &handshake.sid,
        upgrades: &handshake.upgrades,
        ping_interval: handshake.ping_interval_ms,
        ping_timeout: handshake.ping_timeout_ms,
        max_payload: handshake.max_payload,
    };
    let mut out = String::from("0");
    // Serializing strings and integers cannot fail; the fallback keeps encode infallible.
    match serde_json::to_string(&wire) {
        Ok(json) => out.push_str(&json),
        Err(_) => out.push_str("{}"),
    }
    out
}

fn decode_open(json: &str) -> Result<Handshake, DecodeError> {
    let wire: OpenIn =
        serde_json::from_str(json).map_err(|e| DecodeError::InvalidOpen(e.to_string()))?;
    Ok(Handshake {
        sid: wire.sid,
        upgrades: wire.upgrades,
        ping_interval_ms: wire.ping_interval,
        ping_timeout_ms: wire.ping_timeout,
        max_payload: wire.max_payload,
    })
}

/// Builds a polling response body: frames joined by `\x1e`, each binary frame written as `b`
/// followed by standard padded base64.
///
/// Takes already-encoded frames so that a packet encoded once (for a broadcast, say) is
/// reused as is. Returns a `String` because the polling body is text
/// (`text/plain; charset=UTF-8`); `Bytes::from(String)` hands it to an HTTP stack without a
/// copy. A text frame that is not UTF-8 (only possible if built by hand, bypassing
/// [`Frame::text`]) is written lossily rather than corrupting the body.
///
/// A text packet whose payload itself contains `\x1e` cannot be carried by polling: the
/// receiver will split it. That is a limit of the protocol, not of this function.
pub fn encode_payload(frames: &[Frame]) -> String {
    let capacity: usize = frames
        .iter()
        .map(|frame| match frame {
            Frame::Text(b) => b.len() + 1,
            Frame::Binary(b) => base64::encoded_len(b.len(), true).unwrap_or(0) + 2,
        })
        .sum();
    let mut out = String::with_capacity(capacity);
    for (i, frame) in frames.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        match frame {
            Frame::Text(b) => out.push_str(&String::from_utf8_lossy(b)),
            Frame::Binary(b) => {
                out.push('b');
                STANDARD.encode_string(b, &mut out);
            }
        }
    }
    out
}

/// Splits a polling POST body and decodes each packet; `b`-prefixed base64 records become
/// `Message(Binary)`.
///
/// Stops at the first undecodable packet with an error, and fails with
/// [`DecodeError::TooManyPackets`] on the packet after `max_packets`, so the work done is
/// bounded by both the body size and the caller's limit. Use [`decode_payload_iter`] to act
/// on the packets that precede a bad one (the reference server delivers them before closing).
pub fn decode_payload(body: &str, max_packets: usize) -> Result<Vec<Packet>, DecodeError> {
    decode_payload_iter(body, max_packets).collect()
}

/// Decodes a polling body lazily: yields each packet in order, then at most one error, then
/// nothing.
pub fn decode_payload_iter(body: &str, max_packets: usize) -> PayloadIter<'_> {
    PayloadIter {
        records: body.split(SEPARATOR),
        decoded: 0,
        max_packets,
        failed: false,
    }
}

/// Iterator returned by [`decode_payload_iter`].
#[derive(Debug, Clone)]
pub struct PayloadIter<'a> {
    records: std::str::Split<'a, char>,
    decoded: usize,
    max_packets: usize,
    failed: bool,
}

impl Iterator for PayloadIter<'_> {
    type Item = Result<Packet, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let record = self.records.next()?;
        let result = if self.decoded >= self.max_packets {
            Err(DecodeError::TooManyPackets {
                max: self.max_packets,
            })
        } else {
            Packet::from_text(record)
        };
        match &result {
            Ok(_) => self.decoded += 1,
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(upgrades: &[&str]) -> Handshake {
        Handshake {
            sid: "lv_VI97HAXpY6yYWAAAC".to_owned(),
            upgrades: upgrades.iter().map(|s| (*s).to_owned()).collect(),
            ping_interval_ms: 25000,
            ping_timeout_ms: 20000,
            max_payload: 1_000_000,
        }
    }

    fn text(frame: &Frame) -> &str {
        frame.as_text().expect("text frame")
    }

    #[test]
    fn open_json_is_compact_and_ordered() {
        let frame = Packet::Open(handshake(&["websocket"])).to_frame();
        assert_eq!(
            text(&frame),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
        let ws = Packet::Open(Handshake {
            sid: "abc".to_owned(),
            ..handshake(&[])
        })
        .to_frame();
        assert_eq!(
            text(&ws),
            r#"0{"sid":"abc","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#
        );
    }

    #[test]
    fn open_decodes_and_escapes() {
        let packet = Packet::Open(Handshake {
            sid: "a\"b\\c\u{1e}".to_owned(),
            ..handshake(&["websocket"])
        });
        let frame = packet.to_frame();
        assert!(!text(&frame).contains(SEPARATOR));
        assert_eq!(Packet::from_frame(&frame), Ok(packet));
    }

    #[test]
    fn open_rejects_bad_json() {
        for bad in [
            "0",
            "0{}",
            "0[]",
            r#"0{"sid":1,"upgrades":[],"pingInterval":1,"pingTimeout":1,"maxPayload":1}"#,
            r#"0{"sid":"a","upgrades":[],"pingInterval":-1,"pingTimeout":1,"maxPayload":1}"#,
            r#"0{"sid":"a","upgrades":[],"pingInterval":1,"pingTimeout":1,"maxPayload":1}x"#,
        ] {
            assert!(
                matches!(Packet::from_text(bad), Err(DecodeError::InvalidOpen(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn open_ignores_unknown_keys_but_not_deep_nesting() {
        let extra = r#"0{"sid":"a","upgrades":[],"pingInterval":1,"pingTimeout":2,"maxPayload":3,"x":[{}]}"#;
        assert_eq!(Packet::from_text(extra).map(|p| p.type_char()), Ok('0'));
        let deep = format!(r#"0{{"x":{}"#, "[".repeat(100_000));
        assert!(matches!(
            Packet::from_text(&deep),
            Err(DecodeError::InvalidOpen(_))
        ));
    }

    #[test]
    fn every_text_type_encodes() {
        let cases = [
            (Packet::Close, "1"),
            (Packet::Ping(String::new()), "2"),
            (Packet::Ping("probe".to_owned()), "2probe"),
            (Packet::Pong(String::new()), "3"),
            (Packet::Pong("probe".to_owned()), "3probe"),
            (Packet::Message(Data::Text("hello".to_owned())), "4hello"),
            (Packet::Message(Data::Text(String::new())), "4"),
            (Packet::Upgrade, "5"),
            (Packet::Noop, "6"),
        ];
        for (packet, wire) in cases {
            let frame = packet.to_frame();
            assert_eq!(text(&frame), wire);
            assert_eq!(Packet::from_text(wire), Ok(packet.clone()));
            assert_eq!(Packet::from_frame(&frame), Ok(packet.clone()));
            assert_eq!(
                packet.type_char(),
                wire.chars().next().expect("test input is valid")
            );
        }
    }

    #[test]
    fn binary_message_is_a_raw_binary_frame() {
        let packet = Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        let frame = packet.to_frame();
        assert_eq!(frame, Frame::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(Packet::from_frame(&frame), Ok(packet));
        let empty = Frame::Binary(Bytes::new());
        assert_eq!(
            Packet::from_frame(&empty),
            Ok(Packet::Message(Data::Binary(Bytes::new())))
        );
    }

    #[test]
    fn base64_text_form() {
        let expected = Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(Packet::from_text("bAQIDBA=="), Ok(expected.clone()));
        assert_eq!(Packet::from_text("bAQIDBA"), Ok(expected));
        assert_eq!(
            Packet::from_text("b"),
            Ok(Packet::Message(Data::Binary(Bytes::new())))
        );
        assert_eq!(Packet::from_text("b!!"), Err(DecodeError::InvalidBase64));
        assert_eq!(
            Packet::from_text("bAQIDBA==="),
            Err(DecodeError::InvalidBase64)
        );
    }

    #[test]
    fn decode_errors() {
        assert_eq!(Packet::from_text(""), Err(DecodeError::Empty));
        assert_eq!(Packet::from_text("abc"), Err(DecodeError::UnknownType('a')));
        assert_eq!(Packet::from_text("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(Packet::from_text("é4"), Err(DecodeError::UnknownType('é')));
        let bad = Frame::Text(Bytes::from_static(&[b'4', 0xff]));
        assert_eq!(Packet::from_frame(&bad), Err(DecodeError::InvalidUtf8));
    }

    #[test]
    fn payloads_on_packets_that_carry_none_are_ignored() {
        assert_eq!(Packet::from_text("1x"), Ok(Packet::Close));
        assert_eq!(Packet::from_text("52"), Ok(Packet::Upgrade));
        assert_eq!(Packet::from_text("6é"), Ok(Packet::Noop));
    }

    #[test]
    fn message_payload_keeps_multibyte_text() {
        assert_eq!(
            Packet::from_text("4héllo ☃"),
            Ok(Packet::Message(Data::Text("héllo ☃".to_owned())))
        );
    }

    #[test]
    fn payload_joins_text_and_base64() {
        let frames = [
            Packet::Message(Data::Text("hello".to_owned())).to_frame(),
            Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4]))).to_frame(),
            Packet::Ping(String::new()).to_frame(),
        ];
        let body = encode_payload(&frames);
        assert_eq!(body, "4hello\x1ebAQIDBA==\x1e2");
        let packets = decode_payload(&body, 16).expect("test input is valid");
        let again: Vec<Frame> = packets.iter().map(Packet::to_frame).collect();
        assert_eq!(again, frames);
        assert_eq!(encode_payload(&[]), "");
    }

    #[test]
    fn payload_examples_from_the_test_suite() {
        assert_eq!(
            decode_payload("4test1\x1e4test2\x1e4test3", 16).expect("test input is valid"),
            vec![
                Packet::Message(Data::Text("test1".to_owned())),
                Packet::Message(Data::Text("test2".to_owned())),
                Packet::Message(Data::Text("test3".to_owned())),
            ]
        );
        assert_eq!(
            decode_payload("abc", 16),
            Err(DecodeError::UnknownType('a'))
        );
        assert_eq!(decode_payload("", 16), Err(DecodeError::Empty));
        assert_eq!(decode_payload("4a\x1e\x1e4b", 16), Err(DecodeError::Empty));
    }

    #[test]
    fn payload_is_bounded() {
        assert_eq!(decode_payload("2\x1e2\x1e2", 3).map(|v| v.len()), Ok(3));
        assert_eq!(
            decode_payload("2\x1e2\x1e2\x1e2", 3),
            Err(DecodeError::TooManyPackets { max: 3 })
        );
        assert_eq!(
            decode_payload("2", 0),
            Err(DecodeError::TooManyPackets { max: 0 })
        );
    }

    #[test]
    fn payload_iter_yields_good_packets_then_one_error() {
        let items: Vec<_> = decode_payload_iter("4a\x1exx\x1e4b", 16).collect();
        assert_eq!(
            items,
            vec![
                Ok(Packet::Message(Data::Text("a".to_owned()))),
                Err(DecodeError::UnknownType('x')),
            ]
        );
    }
}
