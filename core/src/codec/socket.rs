//! Socket.IO v5 packets, carried one per Engine.IO `message`, and binary-attachment
//! reassembly.
//!
//! Grammar of the text part (the Engine.IO `4` prefix removed):
//!
//! ```text
//! <type digit> [<attachment count> "-"] ["/" <namespace> ("," | end)] [<ack id digits>] [<JSON>]
//! ```
//!
//! The namespace is written only when it is not `/`, always followed by `,`; on input the
//! comma may be missing at the end of the text (`40/custom`), because real clients and the
//! official test suite send it that way. The ack id is the run of digits right after the
//! namespace; the JSON always starts with `[`, `{` or `"`, so the two cannot be confused.
//!
//! JSON goes through `serde_json::Value` with insertion order preserved and is written
//! compactly, so a decoded packet re-encodes byte for byte (peers and tests compare strings).
//!
//! Binary packets (`5` BINARY_EVENT, `6` BINARY_ACK) replace each binary value in the JSON by
//! `{"_placeholder":true,"num":i}` and send the buffers as the next N Engine.IO binary
//! messages. [`Packet`] keeps the placeholders in `data` and the buffers in `attachments`
//! rather than splicing them back, because `serde_json::Value` has no binary type and the
//! application layer forwards attachments without looking inside. [`Decoder`] does the
//! reassembly: it is the only stateful part of the codec, and it is bounded by
//! `max_attachments`.
//!
//! Decoding checks shape as the reference server does (it closes the connection on any
//! violation): CONNECT carries an object or nothing, DISCONNECT nothing, EVENT a non-empty
//! array whose first element is a non-reserved name (string) or a number, ACK an array,
//! CONNECT_ERROR an object or a string. It is a little stricter where nothing legitimate is
//! lost: ACK packets must carry an id, CONNECT / DISCONNECT / CONNECT_ERROR must not, a
//! binary packet's placeholders must refer to exactly attachments `0..N`, and a namespace may
//! not contain control characters (it is echoed back verbatim, e.g. in a CONNECT_ERROR, and
//! a `\x1e` would split a polling payload).

use std::fmt::Write as _;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::engine::Data;
use super::Frame;

/// The root namespace, omitted on the wire.
pub const ROOT_NAMESPACE: &str = "/";

/// Event names that user code may not emit and that are rejected when received.
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Socket.IO packet type, the first character of the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: join a namespace (client: optional auth object; server: `{"sid":..}`).
    Connect = 0,
    /// `1`: leave a namespace.
    Disconnect = 1,
    /// `2`: an event, `[name, ...args]`.
    Event = 2,
    /// `3`: the answer to an event that asked for one, `[...args]`.
    Ack = 3,
    /// `4`: the server refuses a CONNECT.
    ConnectError = 4,
    /// `5`: an event with binary attachments.
    BinaryEvent = 5,
    /// `6`: an ack with binary attachments.
    BinaryAck = 6,
}

impl PacketType {
    /// Every packet type, in wire order.
    pub const ALL: [PacketType; 7] = [
        PacketType::Connect,
        PacketType::Disconnect,
        PacketType::Event,
        PacketType::Ack,
        PacketType::ConnectError,
        PacketType::BinaryEvent,
        PacketType::BinaryAck,
    ];

    /// The type for a wire character, if it is one.
    pub fn from_char(c: char) -> Option<PacketType> {
        let digit = c.to_digit(10)?;
        PacketType::ALL.get(usize::try_from(digit).ok()?).copied()
    }

    /// The wire character for this type.
    pub fn as_char(self) -> char {
        match self {
            PacketType::Connect => '0',
            PacketType::Disconnect => '1',
            PacketType::Event => '2',
            PacketType::Ack => '3',
            PacketType::ConnectError => '4',
            PacketType::BinaryEvent => '5',
            PacketType::BinaryAck => '6',
        }
    }

    /// Whether packets of this type carry an attachment count and binary attachments.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }

    /// Whether packets of this type may (events) or must (acks) carry an ack id.
    pub fn takes_ack_id(self) -> bool {
        !matches!(
            self,
            PacketType::Connect | PacketType::Disconnect | PacketType::ConnectError
        )
    }
}

/// One Socket.IO v5 packet.
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    /// What the packet is.
    pub kind: PacketType,
    /// Namespace, starting with `/`; `"/"` when absent on the wire. Must not contain `,`.
    pub nsp: String,
    /// Ack id: on an EVENT, the sender wants an ACK with this id; on an ACK, the id answered.
    pub id: Option<u64>,
    /// The JSON payload. For binary packets the `{"_placeholder":true,"num":N}` objects are
    /// left in place; `attachments[N]` is the buffer they stand for.
    pub data: Option<Value>,
    /// Binary attachments in `num` order (empty for non-binary kinds).
    pub attachments: Vec<Bytes>,
}

/// Why a Socket.IO packet could not be decoded or reassembled.
///
/// Any of these from a peer is a protocol violation ("parse error"); the reference server
/// closes the whole Engine.IO connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message is empty.
    #[error("empty packet")]
    Empty,
    /// The first character is not a packet type digit `0`-`6`.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// A binary packet without a well-formed `<digits>-` attachment count.
    #[error("malformed attachment count")]
    InvalidAttachmentCount,
    /// A binary packet announcing more attachments than allowed.
    #[error("{count} attachments announced, at most {max} allowed")]
    TooManyAttachments {
        /// Attachments the packet announced.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A binary packet's attachments together larger than allowed.
    #[error("attachments of {bytes} bytes, at most {max} allowed in one packet")]
    AttachmentsTooLarge {
        /// Bytes received for the packet when it went over.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A namespace containing a control character.
    #[error("invalid namespace")]
    InvalidNamespace,
    /// An ack id too large for `u64`.
    #[error("invalid ack id")]
    InvalidAckId,
    /// An ack id on a packet type that cannot be acknowledged.
    #[error("{0:?} packet cannot carry an ack id")]
    UnexpectedAckId(PacketType),
    /// Something other than an ack id or a JSON payload after the namespace.
    #[error("unexpected character {0:?} where an ack id or payload was expected")]
    UnexpectedChar(char),
    /// The payload is not valid JSON (or nests too deeply).
    #[error("invalid JSON payload: {0}")]
    InvalidJson(String),
    /// The payload is JSON of the wrong shape for the packet type.
    #[error("invalid {kind:?} payload: {reason}")]
    InvalidPayload {
        /// The packet type.
        kind: PacketType,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A placeholder whose `num` is not an integer below the attachment count.
    #[error("placeholder refers to a missing attachment")]
    InvalidPlaceholder,
    /// Attachments that no placeholder refers to.
    #[error("{announced} attachments announced but placeholders refer to {referenced}")]
    AttachmentMismatch {
        /// The count in the header.
        announced: u64,
        /// Distinct attachments referenced by placeholders.
        referenced: u64,
    },
    /// A binary message with no binary packet waiting for it.
    #[error("binary message without a pending binary packet")]
    UnexpectedBinary,
    /// A text message while a binary packet still waits for attachments.
    #[error("text message while {missing} attachments are still expected")]
    UnexpectedText {
        /// Attachments still missing from the pending packet.
        missing: usize,
    },
}

impl Packet {
    fn new(kind: PacketType, nsp: impl Into<String>, id: Option<u64>, data: Option<Value>) -> Self {
        Packet {
            kind,
            nsp: nsp.into(),
            id,
            data,
            attachments: Vec::new(),
        }
    }

    /// A CONNECT request, as a client sends it: `auth` is the optional handshake object.
    pub fn connect(nsp: impl Into<String>, auth: Option<Map<String, Value>>) -> Self {
        Packet::new(PacketType::Connect, nsp, None, auth.map(Value::Object))
    }

    /// The server's CONNECT reply accepting a namespace: `{"sid":sid}`.
    pub fn connect_ok(nsp: impl Into<String>, sid: &str) -> Self {
        let mut body = Map::new();
        body.insert("sid".to_owned(), Value::String(sid.to_owned()));
        Packet::new(PacketType::Connect, nsp, None, Some(Value::Object(body)))
    }

    /// The server's CONNECT_ERROR refusing a namespace: `{"message":message}`.
    pub fn connect_error(nsp: impl Into<String>, message: &str) -> Self {
        let mut body = Map::new();
        body.insert("message".to_owned(), Value::String(message.to_owned()));
        Packet::new(
            PacketType::ConnectError,
            nsp,
            None,
            Some(Value::Object(body)),
        )
    }

    /// A DISCONNECT for a namespace.
    pub fn disconnect(nsp: impl Into<String>) -> Self {
        Packet::new(PacketType::Disconnect, nsp, None, None)
    }

    /// An EVENT; `data` is the whole array `[name, ...args]`.
    pub fn event(nsp: impl Into<String>, id: Option<u64>, data: Value) -> Self {
        Packet::new(PacketType::Event, nsp, id, Some(data))
    }

    /// An ACK answering `id`; `data` is the array of ack arguments.
    pub fn ack(nsp: impl Into<String>, id: u64, data: Value) -> Self {
        Packet::new(PacketType::Ack, nsp, Some(id), Some(data))
    }

    /// A BINARY_EVENT: `data` holds one placeholder per attachment.
    pub fn binary_event(
        nsp: impl Into<String>,
        id: Option<u64>,
        data: Value,
        attachments: Vec<Bytes>,
    ) -> Self {
        Packet {
            attachments,
            ..Packet::new(PacketType::BinaryEvent, nsp, id, Some(data))
        }
    }

    /// A BINARY_ACK answering `id`: `data` holds one placeholder per attachment.
    pub fn binary_ack(
        nsp: impl Into<String>,
        id: u64,
        data: Value,
        attachments: Vec<Bytes>,
    ) -> Self {
        Packet {
            attachments,
            ..Packet::new(PacketType::BinaryAck, nsp, Some(id), Some(data))
        }
    }

    /// The placeholder object standing for attachment `num`.
    pub fn placeholder(num: u64) -> Value {
        let mut body = Map::new();
        body.insert("_placeholder".to_owned(), Value::Bool(true));
        body.insert("num".to_owned(), Value::from(num));
        Value::Object(body)
    }

    /// The event name of an EVENT / BINARY_EVENT, when it is a string (the protocol also
    /// allows a number, for which this returns `None`).
    pub fn event_name(&self) -> Option<&str> {
        match self.kind {
            PacketType::Event | PacketType::BinaryEvent => self.array()?.first()?.as_str(),
            _ => None,
        }
    }

    /// The arguments of an event (after the name) or of an ack; empty for other kinds.
    pub fn args(&self) -> &[Value] {
        let Some(items) = self.array() else {
            return &[];
        };
        match self.kind {
            PacketType::Event | PacketType::BinaryEvent => items.get(1..).unwrap_or(&[]),
            PacketType::Ack | PacketType::BinaryAck => items,
            _ => &[],
        }
    }

    /// The arguments, as [`args`](Packet::args) gives them, taken out of the packet
    /// without copying them.
    pub fn into_args(self) -> Vec<Value> {
        let skip = match self.kind {
            PacketType::Event | PacketType::BinaryEvent => 1,
            PacketType::Ack | PacketType::BinaryAck => 0,
            _ => return Vec::new(),
        };
        match self.data {
            Some(Value::Array(mut items)) if items.len() >= skip => {
                items.drain(..skip);
                items
            }
            _ => Vec::new(),
        }
    }

    fn array(&self) -> Option<&Vec<Value>> {
        self.data.as_ref()?.as_array()
    }

    /// How many attachments this packet's placeholders refer to: 0 for non-binary kinds,
    /// otherwise one more than the highest `num` (for a decoded packet, the header's count).
    ///
    /// Walks `data`, so it costs time proportional to the payload.
    pub fn attachments_expected(&self) -> usize {
        if !self.kind.is_binary() {
            return 0;
        }
        let mut expected = 0usize;
        if let Some(data) = &self.data {
            walk_placeholders(data, |num| {
                if let Some(num) = num {
                    let next = usize::try_from(num).unwrap_or(usize::MAX).saturating_add(1);
                    expected = expected.max(next);
                }
                Ok(())
            })
            .ok();
        }
        expected
    }

    /// Encodes to the Engine.IO message frames that carry it: first a Text frame
    /// `4<socket.io packet>` (the Engine.IO message prefix included, so the frames can go
    /// straight to a WebSocket or a polling queue), then one Binary frame per attachment.
    ///
    /// Binary kinds get `<n>-` after the type digit, with `n = attachments.len()`; other
    /// kinds ignore `attachments`. Namespace `/` is omitted; others are written `/nsp,`.
    pub fn encode(&self) -> Vec<Frame> {
        debug_assert!(
            self.kind.is_binary() || self.attachments.is_empty(),
            "attachments on a non-binary packet are not sent"
        );
        let mut text = String::from("4");
        self.write_text(&mut text);
        let mut frames = Vec::with_capacity(1 + self.attachments.len());
        frames.push(Frame::text(text));
        if self.kind.is_binary() {
            frames.extend(self.attachments.iter().cloned().map(Frame::Binary));
        }
        frames
    }

    /// The Socket.IO text of this packet, without the Engine.IO `4` prefix or attachments.
    pub fn encode_text(&self) -> String {
        let mut text = String::new();
        self.write_text(&mut text);
        text
    }

    /// The Engine.IO text frame of a non-binary packet whose data is JSON text already:
    /// what [`encode`](Packet::encode) gives for the same packet, without building a
    /// [`Value`]. For payloads written once and sent to many connections.
    ///
    /// `data` must be one JSON array (the caller writes it; nothing here parses it).
    pub fn text_frame(kind: PacketType, nsp: &str, id: Option<u64>, data: &str) -> Frame {
        debug_assert!(!kind.is_binary(), "binary packets need attachments");
        let mut text = String::with_capacity(8 + nsp.len() + data.len());
        text.push('4');
        write_header(&mut text, kind, 0, nsp, id);
        text.push_str(data);
        Frame::text(text)
    }

    fn write_text(&self, out: &mut String) {
        write_header(out, self.kind, self.attachments.len(), &self.nsp, self.id);
        if let Some(data) = &self.data {
            // Displaying a Value cannot fail: map keys are strings and numbers are finite
            // by construction.
            let _ = write!(out, "{data}");
        }
    }

    /// Decodes the text of an Engine.IO message (WITHOUT the `4` prefix).
    ///
    /// For binary kinds the returned packet has `attachments` empty and
    /// [`attachments_expected`](Packet::attachments_expected) equal to the announced count;
    /// feed the text and the following binary messages to a [`Decoder`] to get them filled.
    pub fn decode(text: &str) -> Result<Packet, DecodeError> {
        decode_counted(text).map(|(packet, _)| packet)
    }
}

/// Everything before a packet's data: type, attachment count (binary kinds), namespace
/// (omitted for `/`), ack id.
fn write_header(
    out: &mut String,
    kind: PacketType,
    attachments: usize,
    nsp: &str,
    id: Option<u64>,
) {
    debug_assert!(
        nsp.is_empty() || (nsp.starts_with('/') && !nsp.contains(',')),
        "namespace {nsp:?} cannot be encoded"
    );
    // Writing to a String cannot fail, so the fmt::Results below are always Ok.
    out.push(kind.as_char());
    if kind.is_binary() {
        let _ = write!(out, "{attachments}-");
    }
    if !nsp.is_empty() && nsp != ROOT_NAMESPACE {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        let _ = write!(out, "{id}");
    }
}

/// Decodes a packet and returns the attachment count from its header (0 for non-binary).
fn decode_counted(text: &str) -> Result<(Packet, usize), DecodeError> {
    let bytes = text.as_bytes();
    let first = text.chars().next().ok_or(DecodeError::Empty)?;
    let kind = PacketType::from_char(first).ok_or(DecodeError::UnknownType(first))?;
    // Every position below advances over ASCII bytes only, so it always lands on a char
    // boundary; `get` keeps slicing panic-free regardless.
    let mut pos = 1;

    let mut announced = 0u64;
    if kind.is_binary() {
        let digits = digit_run(bytes, pos);
        if digits == 0 || bytes.get(pos + digits) != Some(&b'-') {
            return Err(DecodeError::InvalidAttachmentCount);
        }
        announced = parse_u64(bytes, pos, digits).ok_or(DecodeError::InvalidAttachmentCount)?;
        pos += digits + 1;
    }

    let mut nsp = ROOT_NAMESPACE;
    if bytes.get(pos) == Some(&b'/') {
        let end = bytes
            .get(pos..)
            .and_then(|tail| tail.iter().position(|&b| b == b','))
            .map_or(bytes.len(), |offset| pos + offset);
        nsp = text.get(pos..end).ok_or(DecodeError::InvalidNamespace)?;
        if nsp.chars().any(char::is_control) {
            return Err(DecodeError::InvalidNamespace);
        }
        pos = (end + 1).min(bytes.len());
    }

    let digits = digit_run(bytes, pos);
    let id = if digits > 0 {
        Some(parse_u64(bytes, pos, digits).ok_or(DecodeError::InvalidAckId)?)
    } else {
        None
    };
    pos += digits;

    let rest = text.get(pos..).unwrap_or("");
    let data = match rest.chars().next() {
        None => None,
        Some('[' | '{' | '"') => Some(
            super::json::parse_lenient(rest)
                .map_err(|e| DecodeError::InvalidJson(e.to_string()))?,
        ),
        Some(other) => return Err(DecodeError::UnexpectedChar(other)),
    };

    // An ACK without an id answers nothing the receiver asked; it is decoded, as the
    // reference parser decodes it, and the receiver ignores it rather than treat the whole
    // connection as broken.
    if !kind.takes_ack_id() && id.is_some() {
        return Err(DecodeError::UnexpectedAckId(kind));
    }
    check_shape(kind, data.as_ref())?;
    let count = match (&data, kind.is_binary()) {
        (Some(data), true) => check_placeholders(data, announced)?,
        _ => 0,
    };

    let packet = Packet::new(kind, nsp, id, data);
    Ok((packet, count))
}

/// Whether a frame is traffic a full send queue may shed: a Socket.IO EVENT (no ack id)
/// named `heartbeat`, `user:online` or `user:offline`, which carries no state a client
/// cannot live without (the next heartbeat comes; a shed presence event leaves that
/// client's view of the user stale until the user's next transition). One rule for the
/// WebSocket send queue (the runtime's) and the polling buffer (the engine's).
pub fn is_droppable(frame: &super::Frame) -> bool {
    let Some(text) = frame.as_text() else {
        return false;
    };
    let Some(rest) = text.strip_prefix("42") else {
        return false;
    };
    let rest = if rest.starts_with('/') {
        match rest.split_once(',') {
            Some((_, after)) => after,
            None => return false,
        }
    } else {
        rest
    };
    ["[\"heartbeat\"", "[\"user:online\"", "[\"user:offline\""]
        .iter()
        .any(|p| rest.starts_with(p))
}

/// Length of the run of ASCII digits starting at `pos`.
fn digit_run(bytes: &[u8], pos: usize) -> usize {
    bytes.get(pos..).map_or(0, |tail| {
        tail.iter().take_while(|b| b.is_ascii_digit()).count()
    })
}

/// Parses `len` ASCII digits at `pos`; `None` on overflow or on a non-digit.
fn parse_u64(bytes: &[u8], pos: usize, len: usize) -> Option<u64> {
    bytes
        .get(pos..pos.checked_add(len)?)?
        .iter()
        .try_fold(0u64, |acc, &b| {
            let digit = char::from(b).to_digit(10)?;
            acc.checked_mul(10)?.checked_add(u64::from(digit))
        })
}

fn check_shape(kind: PacketType, data: Option<&Value>) -> Result<(), DecodeError> {
    let invalid = |reason| Err(DecodeError::InvalidPayload { kind, reason });
    match kind {
        PacketType::Connect => match data {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => invalid("must be an object"),
        },
        PacketType::Disconnect => match data {
            None => Ok(()),
            Some(_) => invalid("takes no payload"),
        },
        PacketType::Event | PacketType::BinaryEvent => match data {
            Some(Value::Array(items)) => match items.first() {
                Some(Value::Number(_)) => Ok(()),
                Some(Value::String(name)) if RESERVED_EVENTS.contains(&name.as_str()) => {
                    invalid("reserved event name")
                }
                Some(Value::String(_)) => Ok(()),
                None => invalid("must not be empty"),
                Some(_) => invalid("event name must be a string or a number"),
            },
            _ => invalid("must be an array"),
        },
        PacketType::Ack | PacketType::BinaryAck => match data {
            Some(Value::Array(_)) => Ok(()),
            _ => invalid("must be an array"),
        },
        PacketType::ConnectError => match data {
            Some(Value::Object(_) | Value::String(_)) => Ok(()),
            _ => invalid("must be an object or a string"),
        },
    }
}

/// Checks that the placeholders refer to exactly the attachments `0..announced` (each at
/// least once) and returns that count.
///
/// Requiring every attachment to be referenced also bounds the count by the payload size:
/// a header cannot announce a million attachments without a million placeholders.
fn check_placeholders(data: &Value, announced: u64) -> Result<usize, DecodeError> {
    let mut nums = Vec::new();
    walk_placeholders(data, |num| match num {
        Some(num) if num < announced => {
            nums.push(num);
            Ok(())
        }
        _ => Err(DecodeError::InvalidPlaceholder),
    })?;
    nums.sort_unstable();
    nums.dedup();
    let referenced = u64::try_from(nums.len()).unwrap_or(u64::MAX);
    if referenced != announced {
        return Err(DecodeError::AttachmentMismatch {
            announced,
            referenced,
        });
    }
    Ok(nums.len())
}

/// Visits every placeholder in `data` depth-first, passing its `num` (`None` if it is not a
/// non-negative integer). An object is a placeholder when its `_placeholder` key is `true`,
/// as in the reference parser; its other contents are not searched.
///
/// Iterative, so hostile nesting costs heap proportional to the input, never stack.
fn walk_placeholders(
    data: &Value,
    mut visit: impl FnMut(Option<u64>) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    let mut stack = vec![data];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Object(map) => {
                if map.get("_placeholder") == Some(&Value::Bool(true)) {
                    visit(map.get("num").and_then(Value::as_u64))?;
                } else {
                    stack.extend(map.values().rev());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Reassembles binary packets: feed it each Engine.IO `message` of a connection, in order.
///
/// Holds at most one packet, waiting for at most `max_attachments` buffers of at most
/// `max_attachment_bytes` together: a peer that announces attachments and never sends the
/// last one holds no more than that for as long as it stays connected. After any error the
/// pending packet is dropped; the connection is expected to close anyway.
#[derive(Debug, Clone)]
pub struct Decoder {
    // `u32`s: every session has a decoder, and two of them fit where one `usize` did.
    max_attachments: u32,
    max_attachment_bytes: u32,
    // Boxed: every session has a decoder and almost none is ever waiting for attachments.
    pending: Option<Box<Pending>>,
}

#[derive(Debug, Clone)]
struct Pending {
    packet: Packet,
    expected: usize,
    bytes: usize,
}

impl Decoder {
    /// A decoder that refuses binary packets with more than `max_attachments` attachments
    /// (limits past `u32::MAX` are `u32::MAX`); their bytes are not bounded unless
    /// [`Decoder::with_max_attachment_bytes`] says so.
    pub fn new(max_attachments: usize) -> Self {
        Decoder {
            max_attachments: u32::try_from(max_attachments).unwrap_or(u32::MAX),
            max_attachment_bytes: u32::MAX,
            pending: None,
        }
    }

    /// The same decoder, refusing a packet whose attachments together exceed `max` bytes
    /// ([`DecodeError::AttachmentsTooLarge`]; limits past `u32::MAX` are `u32::MAX`).
    pub fn with_max_attachment_bytes(mut self, max: u64) -> Self {
        self.max_attachment_bytes = u32::try_from(max).unwrap_or(u32::MAX);
        self
    }

    /// Whether a binary packet is waiting for attachments.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Attachments the pending packet still needs (0 when none is pending).
    pub fn missing(&self) -> usize {
        self.pending
            .as_ref()
            .map_or(0, |p| p.expected.saturating_sub(p.packet.attachments.len()))
    }

    /// Drops any pending packet.
    pub fn reset(&mut self) {
        self.pending = None;
    }

    /// Text: decodes a packet; if it expects attachments, holds it and returns `Ok(None)`.
    /// Binary: attaches to the pending packet (error [`DecodeError::UnexpectedBinary`] if
    /// none); returns `Ok(Some(packet))` when complete. A text message while attachments
    /// are pending is an error ([`DecodeError::UnexpectedText`]).
    pub fn feed(&mut self, data: Data) -> Result<Option<Packet>, DecodeError> {
        match data {
            Data::Text(text) => {
                if self.pending.is_some() {
                    let missing = self.missing();
                    self.pending = None;
                    return Err(DecodeError::UnexpectedText { missing });
                }
                let (packet, expected) = decode_counted(&text)?;
                if expected == 0 {
                    return Ok(Some(packet));
                }
                let max = self.max_attachments as usize;
                if expected > max {
                    return Err(DecodeError::TooManyAttachments {
                        count: expected,
                        max,
                    });
                }
                self.pending = Some(Box::new(Pending {
                    packet,
                    expected,
                    bytes: 0,
                }));
                Ok(None)
            }
            Data::Binary(bytes) => {
                let mut pending = self.pending.take().ok_or(DecodeError::UnexpectedBinary)?;
                pending.bytes = pending.bytes.saturating_add(bytes.len());
                let max = self.max_attachment_bytes as usize;
                if pending.bytes > max {
                    return Err(DecodeError::AttachmentsTooLarge {
                        bytes: pending.bytes,
                        max,
                    });
                }
                pending.packet.attachments.push(bytes);
                if pending.packet.attachments.len() >= pending.expected {
                    Ok(Some(pending.packet))
                } else {
                    self.pending = Some(pending);
                    Ok(None)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Decodes `wire`, checks that it re-encodes byte for byte (with as many stand-in
    /// attachments as it announces), and returns the decoded packet.
    fn roundtrip_text(wire: &str) -> Packet {
        let packet = Packet::decode(wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
        let filled = Packet {
            attachments: vec![Bytes::new(); packet.attachments_expected()],
            ..packet.clone()
        };
        assert_eq!(filled.encode_text(), wire, "re-encoding {wire}");
        packet
    }

    fn ph(num: u64) -> Value {
        Packet::placeholder(num)
    }

    #[test]
    fn into_args_equals_args() {
        for wire in [
            r#"2["ev",1,{"a":2}]"#,
            r#"2["ev"]"#,
            r#"31[{"ok":true},2]"#,
            "3/x,4[]",
            r#"0{"token":"t"}"#,
            "1",
        ] {
            let p = Packet::decode(wire).unwrap_or_else(|e| panic!("{wire}: {e}"));
            assert_eq!(p.args().to_vec(), p.clone().into_args(), "{wire}");
        }
    }

    #[test]
    fn text_frame_matches_encode() {
        let cases = [
            (
                PacketType::Event,
                "/",
                None,
                json!(["message:new", {"a": "\"q\"\n"}]),
            ),
            (PacketType::Event, "", Some(7), json!(["x"])),
            (PacketType::Ack, "/", Some(12), json!([{"ok": true}])),
            (PacketType::Ack, "/admin", Some(0), json!([null, 1.5])),
            (PacketType::Event, "/chat", None, json!(["é", "\u{1F600}"])),
        ];
        for (kind, nsp, id, data) in cases {
            let packet = Packet {
                kind,
                nsp: nsp.to_owned(),
                id,
                data: Some(data.clone()),
                attachments: vec![],
            };
            let frame = Packet::text_frame(kind, nsp, id, &data.to_string());
            assert_eq!(vec![frame], packet.encode(), "{packet:?}");
        }
    }

    #[test]
    fn connect_forms() {
        let p = roundtrip_text("0");
        assert_eq!(p, Packet::connect("/", None));
        let p = roundtrip_text(r#"0{"token":"123"}"#);
        assert_eq!(p.data, Some(json!({"token": "123"})));
        let p = roundtrip_text("0/admin,");
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.data),
            (PacketType::Connect, "/admin", None)
        );
        let p = roundtrip_text(r#"0/admin,{"sid":"oSO0"}"#);
        assert_eq!(p, Packet::connect_ok("/admin", "oSO0"));
        // No trailing comma, as the test suite sends it.
        let p = Packet::decode("0/custom").expect("test input is valid");
        assert_eq!(p, Packet::connect("/custom", None));
        assert_eq!(p.encode_text(), "0/custom,");
    }

    #[test]
    fn connect_reply_encodes_with_engine_prefix() {
        let frames = Packet::connect_ok("/", "abc").encode();
        assert_eq!(frames, vec![Frame::text(r#"40{"sid":"abc"}"#)]);
        let frames = Packet::connect_ok("/custom", "abc").encode();
        assert_eq!(frames, vec![Frame::text(r#"40/custom,{"sid":"abc"}"#)]);
    }

    #[test]
    fn connect_error_forms() {
        let p = Packet::connect_error("/random", "Invalid namespace");
        assert_eq!(
            p.encode(),
            vec![Frame::text(r#"44/random,{"message":"Invalid namespace"}"#)]
        );
        assert_eq!(
            roundtrip_text(r#"4/random,{"message":"Invalid namespace"}"#),
            p
        );
        roundtrip_text(r#"4{"message":"Not authorized","data":{"code":7}}"#);
        roundtrip_text(r#"4"Not authorized""#);
        assert!(matches!(
            Packet::decode("4"),
            Err(DecodeError::InvalidPayload {
                kind: PacketType::ConnectError,
                ..
            })
        ));
        assert!(matches!(
            Packet::decode("4[1]"),
            Err(DecodeError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn disconnect_forms() {
        assert_eq!(roundtrip_text("1"), Packet::disconnect("/"));
        assert_eq!(roundtrip_text("1/admin,"), Packet::disconnect("/admin"));
        assert_eq!(
            Packet::decode("1/custom"),
            Ok(Packet::disconnect("/custom"))
        );
        assert!(matches!(
            Packet::decode("1{}"),
            Err(DecodeError::InvalidPayload {
                kind: PacketType::Disconnect,
                ..
            })
        ));
    }

    #[test]
    fn event_forms() {
        let p = roundtrip_text(r#"2["foo"]"#);
        assert_eq!(p.event_name(), Some("foo"));
        assert!(p.args().is_empty());
        let p = roundtrip_text(r#"2/admin,["bar"]"#);
        assert_eq!((p.nsp.as_str(), p.event_name()), ("/admin", Some("bar")));
        let p = roundtrip_text(r#"212["foo"]"#);
        assert_eq!(p.id, Some(12));
        let p = roundtrip_text(r#"20["foo"]"#);
        assert_eq!(p.id, Some(0));
        let p = roundtrip_text(r#"2/admin,7["x",1]"#);
        assert_eq!((p.id, p.args()), (Some(7), &[json!(1)][..]));
        let p = roundtrip_text(r#"2[42,"numeric name"]"#);
        assert_eq!(p.event_name(), None);
    }

    #[test]
    fn plain_event_reencodes_byte_identical() {
        let wire = r#"42["message-back",1,"2",{"3":[true]}]"#;
        let p = Packet::decode(&wire[1..]).expect("test input is valid");
        assert_eq!(p.encode(), vec![Frame::text(wire)]);
        assert_eq!(p.event_name(), Some("message-back"));
        assert_eq!(p.args(), &[json!(1), json!("2"), json!({"3": [true]})][..]);
        // Key order is preserved, not sorted.
        roundtrip_text(r#"2["m",{"z":1,"a":{"y":2,"b":3}}]"#);
    }

    #[test]
    fn event_helper_encodes() {
        let p = Packet::event("/chat", Some(3), json!(["message", {"text": "hi"}]));
        assert_eq!(
            p.encode(),
            vec![Frame::text(r#"42/chat,3["message",{"text":"hi"}]"#)]
        );
    }

    #[test]
    fn ack_forms() {
        let p = roundtrip_text(r#"3456[1,"2",{"3":[false]}]"#);
        assert_eq!(p, Packet::ack("/", 456, json!([1, "2", {"3": [false]}])));
        assert_eq!(
            p.encode(),
            vec![Frame::text(r#"43456[1,"2",{"3":[false]}]"#)]
        );
        assert_eq!(p.args().len(), 3);
        roundtrip_text(r#"3/admin,13["bar"]"#);
        roundtrip_text("30[]");
        let p = Packet::decode("3[]").expect("an ACK without an id decodes");
        assert_eq!((p.kind, p.id), (PacketType::Ack, None));
        assert!(matches!(
            Packet::decode("31{}"),
            Err(DecodeError::InvalidPayload {
                kind: PacketType::Ack,
                ..
            })
        ));
    }

    #[test]
    fn binary_event_with_two_attachments() {
        let wire = r#"52-["message",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#;
        let p = roundtrip_text(wire);
        assert_eq!(p.kind, PacketType::BinaryEvent);
        assert!(p.attachments.is_empty());
        assert_eq!(p.attachments_expected(), 2);

        let mut decoder = Decoder::new(10);
        assert_eq!(decoder.feed(Data::Text(wire.to_owned())), Ok(None));
        assert!(decoder.is_pending());
        assert_eq!(decoder.missing(), 2);
        assert_eq!(
            decoder.feed(Data::Binary(Bytes::from_static(&[1, 2, 3]))),
            Ok(None)
        );
        let done = decoder
            .feed(Data::Binary(Bytes::from_static(&[4, 5, 6])))
            .expect("test input is valid")
            .expect("test input is valid");
        assert!(!decoder.is_pending());
        assert_eq!(
            done.attachments,
            vec![
                Bytes::from_static(&[1, 2, 3]),
                Bytes::from_static(&[4, 5, 6])
            ]
        );

        let echo = Packet::binary_event(
            "/",
            None,
            json!(["message-back", ph(0), ph(1)]),
            done.attachments.clone(),
        );
        assert_eq!(
            echo.encode(),
            vec![
                Frame::text(
                    r#"452-["message-back",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
                ),
                Frame::Binary(Bytes::from_static(&[1, 2, 3])),
                Frame::Binary(Bytes::from_static(&[4, 5, 6])),
            ]
        );
    }

    #[test]
    fn binary_ack_with_id() {
        let p = roundtrip_text(r#"61-15["bar",{"_placeholder":true,"num":0}]"#);
        assert_eq!((p.kind, p.id), (PacketType::BinaryAck, Some(15)));
        let p = roundtrip_text(
            r#"52-789["message-with-ack",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#,
        );
        assert_eq!(p.id, Some(789));
        let reply = Packet::binary_ack(
            "/",
            789,
            json!([ph(0), ph(1)]),
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        );
        let frames = reply.encode();
        assert_eq!(
            frames[0],
            Frame::text(r#"462-789[{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#)
        );
        assert_eq!(frames.len(), 3);
    }

    #[test]
    fn binary_with_zero_attachments_completes_at_once() {
        let p = roundtrip_text(r#"50-["plain"]"#);
        assert_eq!(p.attachments_expected(), 0);
        let mut decoder = Decoder::new(10);
        assert_eq!(
            decoder.feed(Data::Text(r#"50-["plain"]"#.to_owned())),
            Ok(Some(p))
        );
    }

    #[test]
    fn nested_placeholders_in_any_order() {
        let wire =
            r#"52-["e",{"a":[{"_placeholder":true,"num":1}]},{"_placeholder":true,"num":0}]"#;
        let p = roundtrip_text(wire);
        assert_eq!(p.attachments_expected(), 2);
        // The same attachment referenced twice is allowed.
        let p = roundtrip_text(
            r#"51-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]"#,
        );
        assert_eq!(p.attachments_expected(), 1);
    }

    #[test]
    fn placeholders_must_match_count() {
        assert_eq!(
            Packet::decode(r#"51-["e",{"_placeholder":true,"num":1}]"#),
            Err(DecodeError::InvalidPlaceholder)
        );
        assert_eq!(
            Packet::decode(r#"51-["e",{"_placeholder":true,"num":-1}]"#),
            Err(DecodeError::InvalidPlaceholder)
        );
        assert_eq!(
            Packet::decode(r#"51-["e",{"_placeholder":true}]"#),
            Err(DecodeError::InvalidPlaceholder)
        );
        assert_eq!(
            Packet::decode(r#"52-["e",{"_placeholder":true,"num":0}]"#),
            Err(DecodeError::AttachmentMismatch {
                announced: 2,
                referenced: 1
            })
        );
        assert_eq!(
            Packet::decode(r#"518446744073709551615-["e"]"#),
            Err(DecodeError::AttachmentMismatch {
                announced: u64::MAX,
                referenced: 0
            })
        );
        // Not a placeholder unless `_placeholder` is exactly true; left as data.
        roundtrip_text(r#"50-["e",{"_placeholder":false,"num":9}]"#);
        // Placeholders in non-binary packets are plain data.
        let p = roundtrip_text(r#"2["e",{"_placeholder":true,"num":3}]"#);
        assert_eq!(p.attachments_expected(), 0);
    }

    #[test]
    fn attachment_count_syntax() {
        for bad in [r#"5["e"]"#, r#"5-["e"]"#, r#"51["e"]"#, "5", "5x-[]"] {
            assert_eq!(
                Packet::decode(bad),
                Err(DecodeError::InvalidAttachmentCount),
                "{bad}"
            );
        }
        assert_eq!(
            Packet::decode(r#"599999999999999999999-["e"]"#),
            Err(DecodeError::InvalidAttachmentCount)
        );
    }

    #[test]
    fn decoder_limits_attachments() {
        let mut decoder = Decoder::new(1);
        assert_eq!(
            decoder.feed(Data::Text(
                r#"52-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]"#
                    .to_owned()
            )),
            Err(DecodeError::TooManyAttachments { count: 2, max: 1 })
        );
        assert!(!decoder.is_pending());
    }

    #[test]
    fn decoder_limits_the_bytes_a_pending_packet_holds() {
        let mut decoder = Decoder::new(3).with_max_attachment_bytes(10);
        let announce = || {
            Data::Text(
                r#"53-["e",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1},{"_placeholder":true,"num":2}]"#
                    .to_owned(),
            )
        };
        assert_eq!(decoder.feed(announce()), Ok(None));
        assert_eq!(
            decoder.feed(Data::Binary(Bytes::from(vec![1u8; 6]))),
            Ok(None)
        );
        assert_eq!(
            decoder.feed(Data::Binary(Bytes::from(vec![2u8; 5]))),
            Err(DecodeError::AttachmentsTooLarge { bytes: 11, max: 10 })
        );
        assert!(!decoder.is_pending(), "the packet is dropped");
        // At the limit exactly, the packet is whole.
        assert_eq!(decoder.feed(announce()), Ok(None));
        for n in [4usize, 4] {
            assert_eq!(
                decoder.feed(Data::Binary(Bytes::from(vec![3u8; n]))),
                Ok(None)
            );
        }
        let whole = decoder.feed(Data::Binary(Bytes::from(vec![3u8; 2])));
        let packet = whole.expect("whole").expect("complete");
        assert_eq!(packet.attachments.len(), 3);
        assert!(!decoder.is_pending());
    }

    #[test]
    fn decoder_sequencing_errors() {
        let mut decoder = Decoder::new(10);
        assert_eq!(
            decoder.feed(Data::Binary(Bytes::from_static(b"x"))),
            Err(DecodeError::UnexpectedBinary)
        );
        let header = r#"51-["e",{"_placeholder":true,"num":0}]"#.to_owned();
        assert_eq!(decoder.feed(Data::Text(header.clone())), Ok(None));
        assert_eq!(
            decoder.feed(Data::Text(r#"2["e"]"#.to_owned())),
            Err(DecodeError::UnexpectedText { missing: 1 })
        );
        assert!(!decoder.is_pending());
        assert_eq!(decoder.feed(Data::Text(header)), Ok(None));
        decoder.reset();
        assert_eq!(decoder.missing(), 0);
        let plain = decoder
            .feed(Data::Text(r#"2["e"]"#.to_owned()))
            .expect("test input is valid");
        assert_eq!(plain.map(|p| p.kind), Some(PacketType::Event));
    }

    #[test]
    fn unknown_types() {
        assert_eq!(Packet::decode(""), Err(DecodeError::Empty));
        assert_eq!(Packet::decode("abc"), Err(DecodeError::UnknownType('a')));
        assert_eq!(Packet::decode("7"), Err(DecodeError::UnknownType('7')));
        assert_eq!(Packet::decode("٣[]"), Err(DecodeError::UnknownType('٣')));
    }

    #[test]
    fn invalid_payload_shapes() {
        for bad in [
            "2{}",
            "2[]",
            "2",
            "2[true]",
            r#"2["connect"]"#,
            r#"2["disconnecting",1]"#,
            r#"2/chat"#,
            "0[]",
            r#"0"x""#,
        ] {
            assert!(
                matches!(Packet::decode(bad), Err(DecodeError::InvalidPayload { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn garbage_after_header() {
        assert_eq!(
            Packet::decode(r#"2abc["message-with-ack",1]"#),
            Err(DecodeError::UnexpectedChar('a'))
        );
        assert_eq!(
            Packet::decode(r#"2/chat,1é"#),
            Err(DecodeError::UnexpectedChar('é'))
        );
        assert!(matches!(
            Packet::decode(r#"2["a"]x"#),
            Err(DecodeError::InvalidJson(_))
        ));
        assert!(matches!(
            Packet::decode(r#"2["a""#),
            Err(DecodeError::InvalidJson(_))
        ));
    }

    #[test]
    fn a_lone_surrogate_from_javascript_is_read_not_refused() {
        // What `JSON.stringify` writes for an emoji cut in half.
        let packet =
            Packet::decode(r#"2/chat,7["message:send",{"content":"hi \ud83d"}]"#).expect("decodes");
        assert_eq!(packet.id, Some(7));
        assert_eq!(
            packet.args().first().and_then(|a| a["content"].as_str()),
            Some("hi \u{fffd}")
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("2[\"e\",{}]", "[".repeat(100_000));
        assert!(matches!(
            Packet::decode(&deep),
            Err(DecodeError::InvalidJson(_))
        ));
        let deep = format!("50-[\"e\",{}{}]", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            Packet::decode(&deep).map(|p| p.attachments_expected()),
            Ok(0)
        );
    }

    #[test]
    fn ack_ids() {
        assert_eq!(
            Packet::decode(r#"218446744073709551615["e"]"#).map(|p| p.id),
            Ok(Some(u64::MAX))
        );
        assert_eq!(
            Packet::decode(r#"218446744073709551616["e"]"#),
            Err(DecodeError::InvalidAckId)
        );
        assert_eq!(
            Packet::decode("05{}"),
            Err(DecodeError::UnexpectedAckId(PacketType::Connect))
        );
        assert_eq!(
            Packet::decode("1/a,5"),
            Err(DecodeError::UnexpectedAckId(PacketType::Disconnect))
        );
    }

    #[test]
    fn namespaces() {
        assert_eq!(
            Packet::decode("2/,[\"e\"]").map(|p| p.nsp),
            Ok("/".to_owned())
        );
        assert_eq!(
            Packet::decode("0/ünï,").map(|p| p.nsp),
            Ok("/ünï".to_owned())
        );
        assert_eq!(
            Packet::decode("0/a\u{1e}b,"),
            Err(DecodeError::InvalidNamespace)
        );
        // Without a comma the namespace runs to the end, swallowing what follows.
        assert!(matches!(
            Packet::decode(r#"2/chat["e"]"#),
            Err(DecodeError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn packet_type_digits() {
        for (i, kind) in PacketType::ALL.iter().enumerate() {
            assert_eq!(*kind as usize, i);
            assert_eq!(PacketType::from_char(kind.as_char()), Some(*kind));
        }
        assert_eq!(PacketType::from_char('7'), None);
        assert_eq!(PacketType::from_char('x'), None);
    }
}
