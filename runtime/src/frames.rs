//! WebSocket frames (RFC 6455) for the server's side of a connection, with no buffer of
//! its own per socket while the connection is idle.
//!
//! tungstenite's stream keeps a read buffer and a write buffer for every socket for as long
//! as it lives. With tens of thousands of idle connections those two buffers (and the
//! wakers of its async adapter) were about a third of an idle connection's memory. Here a
//! socket is read into, and written from, buffers shared by all the connections a thread
//! serves (see `websocket.rs`); a [`Decoder`] keeps bytes of its own only while a frame is
//! incomplete, or while frames that arrived in one read wait their turn, and gives them
//! back as soon as none are left.
//!
//! Headers are parsed and written by tungstenite's [`FrameHeader`]. What this module adds
//! is the message layer over them that tungstenite's stream otherwise provides, for a
//! server with no extensions: client frames must be masked; reserved bits and opcodes are
//! refused; lengths must be written in their shortest form; control frames are final and
//! at most 125 bytes; fragments are joined into one message; text must be UTF-8; frames
//! and messages are bounded in size before their payload is buffered; close frames carry
//! a valid code.

use std::io::Cursor;

use bytes::Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::arriving::grown_capacity;

/// Longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// A held buffer larger than this (one a large frame arrived in) is not kept for the few
/// bytes of the next frames behind it: they move to a buffer of their own size.
const KEEP_HELD: usize = 32 * 1024;

/// Room beyond a large frame in progress for the bytes of one more read (the socket is
/// read 16 KiB at a time), so that its last read does not make its buffer grow.
const READ_SLACK: usize = 16 * 1024;

/// A message or control frame received from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A whole text message, valid UTF-8.
    Text(Bytes),
    /// A whole binary message.
    Binary(Bytes),
    /// A ping: the pong carries the same payload back.
    Ping(Bytes),
    /// The peer's close frame, with its code if it gave one.
    Close(Option<u16>),
}

/// Why what the peer sent was refused. Each has the close code that says so.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A frame, or a fragmented message so far, longer than allowed.
    #[error("message of {size} bytes, over the limit of {max}")]
    TooLarge {
        /// Bytes announced or assembled.
        size: u64,
        /// The limit.
        max: usize,
    },
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// A frame that breaks RFC 6455.
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
}

impl FrameError {
    /// The close code to answer with (1009, 1007, 1002).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::TooLarge { .. } => CloseCode::Size.into(),
            FrameError::InvalidUtf8 => CloseCode::Invalid.into(),
            FrameError::Protocol(_) => CloseCode::Protocol.into(),
        }
    }

    /// The close frame's reason text.
    pub fn close_reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "payload too large",
            FrameError::InvalidUtf8 => "invalid utf-8",
            FrameError::Protocol(_) => "protocol error",
        }
    }
}

/// The receiving side of one connection: no allocation while it holds nothing.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Received bytes not decoded yet.
    held: Option<Box<Held>>,
    /// A fragmented message being put together.
    assembling: Option<Box<Assembling>>,
}

#[derive(Debug)]
struct Held {
    bytes: Vec<u8>,
    /// Where the undecoded bytes start: frames are taken from the front one at a time, so
    /// the rest is moved down only when more bytes are added.
    start: usize,
    /// A frame boundary up to which [`Decoder::held_ahead`] found whole frames and no
    /// close: the next look resumes there, so looking ahead once per frame of a read full
    /// of small frames costs their number, not its square.
    scanned: usize,
}

#[derive(Debug)]
struct Assembling {
    text: bool,
    bytes: Vec<u8>,
    /// For text: how far `bytes` is known to be UTF-8 (a character may be cut at the end
    /// of a fragment), so bad bytes end the message when they arrive, not at its end.
    checked: usize,
}

impl Assembling {
    /// Checks the text added since the last check; a character cut at the end waits for
    /// the next fragment.
    fn check(&mut self) -> Result<(), FrameError> {
        if !self.text {
            return Ok(());
        }
        let rest = &self.bytes[self.checked..];
        match std::str::from_utf8(rest) {
            Ok(_) => self.checked = self.bytes.len(),
            Err(e) if e.error_len().is_none() => self.checked += e.valid_up_to(),
            Err(_) => return Err(FrameError::InvalidUtf8),
        }
        Ok(())
    }
}

/// One frame decoded from the front of some bytes.
struct Decoded {
    /// Bytes the frame took.
    len: usize,
    /// What it completed, if anything (a pong or a non-final fragment completes nothing).
    received: Option<Received>,
}

impl Decoder {
    /// A decoder that starts with bytes already read (after the upgrade request, in the
    /// same read).
    pub fn with_bytes(bytes: &[u8]) -> Decoder {
        let mut decoder = Decoder::default();
        decoder.hold(bytes);
        decoder
    }

    /// Whether bytes are held: an incomplete frame, or frames not decoded yet.
    pub fn holds_bytes(&self) -> bool {
        self.held.is_some()
    }

    /// Whether the frames held behind what was decoded so far include the peer's close
    /// (see [`scan_for_close`]); nothing held is [`Ahead::Boundary`].
    pub fn held_ahead(&mut self) -> Ahead {
        let Some(h) = self.held.as_mut() else {
            return Ahead::Boundary;
        };
        let from = h.scanned.max(h.start);
        let (ahead, walked) = scan(h.bytes.get(from..).unwrap_or_default());
        h.scanned = from + walked;
        ahead
    }

    /// The next message from the bytes held, if they contain one.
    pub fn next_held(&mut self, max: usize) -> Result<Option<Received>, FrameError> {
        let Some(held) = self.held.as_mut() else {
            return Ok(None);
        };
        let (used, received) =
            decode_until_received(&mut self.assembling, &mut held.bytes[held.start..], max)?;
        held.start += used;
        if held.start == held.bytes.len() {
            self.held = None;
        } else if used > 0 && held.bytes.capacity() > KEEP_HELD {
            held.bytes = held.bytes[held.start..].to_vec();
            held.scanned = held.scanned.saturating_sub(held.start);
            held.start = 0;
        }
        Ok(received)
    }

    /// The next message from `input`, bytes just read (into a buffer the caller reuses),
    /// after those held. What `input` has beyond that message is kept for
    /// [`Decoder::next_held`].
    pub fn next_from(
        &mut self,
        input: &mut [u8],
        max: usize,
    ) -> Result<Option<Received>, FrameError> {
        if self.held.is_some() {
            self.hold(input);
            return self.next_held(max);
        }
        let (used, received) = decode_until_received(&mut self.assembling, input, max)?;
        self.hold(&input[used..]);
        Ok(received)
    }

    /// Bytes of the message in progress received so far: the fragments put together and
    /// what is held of the frame after them (its header included). Control frames, taken
    /// out as they are decoded, do not count.
    pub fn received(&self) -> usize {
        let assembled = self.assembling.as_ref().map_or(0, |a| a.bytes.len());
        let held = self
            .held
            .as_ref()
            .map_or(0, |h| h.bytes.len().saturating_sub(h.start));
        assembled.saturating_add(held)
    }

    /// Bytes this connection holds once the frame it is in the middle of is whole: that
    /// frame, and the message so far if the frame continues a fragmented one (its buffer
    /// as grown to take the frame). With no frame begun, the message so far. Meant for
    /// when [`Decoder::next_held`] found no whole frame, so that what is held is at most
    /// the start of one; its length, already checked against `max` there, is bounded by
    /// it here too.
    pub fn arriving(&self, max: usize) -> usize {
        let assembled = self
            .assembling
            .as_ref()
            .map(|a| (a.bytes.len(), a.bytes.capacity()));
        let so_far = assembled.map_or(0, |(_, cap)| cap);
        let Some(held) = self.held.as_ref() else {
            return so_far;
        };
        let rest = held.bytes.get(held.start..).unwrap_or_default();
        let Some((header, frame, payload)) = frame_at(rest, max) else {
            return rest.len().saturating_add(so_far);
        };
        let so_far = match (header.opcode, assembled) {
            // A control frame (at most 131 bytes) between fragments asks for nothing.
            (OpCode::Control(_), _) => return so_far,
            (OpCode::Data(Data::Continue), Some((len, cap))) => {
                continued_capacity(len, cap, payload, header.is_final, max)
            }
            _ => so_far,
        };
        frame.max(rest.len()).saturating_add(so_far)
    }

    /// Makes room for the whole of the frame in progress at once, and for one read beyond
    /// it, so that a large frame arrives into one buffer of its size rather than one that
    /// doubles as it fills (taking up to twice what [`Decoder::arriving`] counts). Its
    /// length is bounded by `max` as there.
    pub fn make_room(&mut self, max: usize) {
        let Some(held) = self.held.as_mut() else {
            return;
        };
        let rest = held.bytes.get(held.start..).unwrap_or_default();
        let Some((_, frame, _)) = frame_at(rest, max) else {
            return;
        };
        if frame <= rest.len() || held.bytes.capacity() - held.start >= frame {
            return;
        }
        held.bytes.drain(..held.start);
        held.scanned = held.scanned.saturating_sub(held.start);
        held.start = 0;
        // With room for one more read: the frame's last bytes may come with the first of
        // the next one.
        held.bytes
            .reserve_exact(frame - held.bytes.len() + READ_SLACK);
    }

    /// Keeps `bytes` after those already held.
    fn hold(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.held.as_mut() {
            Some(held) => {
                held.bytes.drain(..held.start);
                held.scanned = held.scanned.saturating_sub(held.start);
                held.start = 0;
                held.bytes.extend_from_slice(bytes);
            }
            None => {
                self.held = Some(Box::new(Held {
                    bytes: bytes.to_vec(),
                    start: 0,
                    scanned: 0,
                }))
            }
        }
    }
}

/// The capacity a fragmented message's buffer grows to when a continuation of `add`
/// bytes joins it: by [`grown_capacity`]'s doubling, or for the last fragment to exactly
/// the message's size.
fn continued_capacity(len: usize, cap: usize, add: usize, last: bool, max: usize) -> usize {
    if last {
        cap.max(len.saturating_add(add))
    } else {
        grown_capacity(len, cap, add, max)
    }
}

/// The header of the frame at the front of `bytes`, if all of it is there, with the
/// frame's whole length and its payload's, the payload taken as at most `max`.
fn frame_at(bytes: &[u8], max: usize) -> Option<(FrameHeader, usize, usize)> {
    let mut cursor = Cursor::new(bytes);
    let (header, length) = FrameHeader::parse(&mut cursor).ok().flatten()?;
    let payload = usize::try_from(length).unwrap_or(usize::MAX).min(max);
    // The header is at most 14 bytes.
    let frame = (cursor.position() as usize).saturating_add(payload);
    Some((header, frame, payload))
}

/// What a look ahead at received bytes that start on a frame boundary found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ahead {
    /// A close frame's header, behind whole frames or none.
    Close,
    /// Whole frames and no close: the bytes end where the next frame would start.
    Boundary,
    /// No close in the whole frames, then part of a frame (or a header this decoder would
    /// refuse anyway).
    Partial,
}

/// Walks the frame headers in `bytes` (which start on a frame boundary), skipping their
/// payloads, until a close frame's header, the end, or a frame not all there: whether the
/// peer's close is already in hand behind what was decoded.
pub fn scan_for_close(bytes: &[u8]) -> Ahead {
    scan(bytes).0
}

/// [`scan_for_close`], and how far it walked: to the close frame's header, to the frame
/// not all there, or to the end (always a frame boundary).
fn scan(bytes: &[u8]) -> (Ahead, usize) {
    let mut at = 0usize;
    while let Some(rest) = bytes.get(at..).filter(|rest| !rest.is_empty()) {
        if rest
            .first()
            .is_some_and(|first| OpCode::from(first & 0x0F) == OpCode::Control(Control::Close))
        {
            return (Ahead::Close, at);
        }
        let mut cursor = Cursor::new(rest);
        let Ok(Some((_, length))) = FrameHeader::parse(&mut cursor) else {
            return (Ahead::Partial, at);
        };
        let frame_len = usize::try_from(length)
            .ok()
            .and_then(|n| n.checked_add(cursor.position() as usize));
        match frame_len {
            Some(n) if n <= rest.len() => at += n,
            _ => return (Ahead::Partial, at),
        }
    }
    (Ahead::Boundary, at)
}

/// Decodes frames from the front of `bytes` until one completes something to act on (a
/// message, a ping, a close). Returns the bytes those frames took and what was completed,
/// if anything (`None`: the rest is an incomplete frame, or nothing).
fn decode_until_received(
    assembling: &mut Option<Box<Assembling>>,
    bytes: &mut [u8],
    max: usize,
) -> Result<(usize, Option<Received>), FrameError> {
    let mut used = 0;
    while let Some(frame) = decode(assembling, &mut bytes[used..], max)? {
        used += frame.len;
        if frame.received.is_some() {
            return Ok((used, frame.received));
        }
    }
    Ok((used, None))
}

/// Whether `length`, written in `extended` bytes after the 7-bit field (0, 2 or 8), could
/// not have been written in fewer.
fn length_is_minimal(extended: usize, length: u64) -> bool {
    match extended {
        2 => length >= 126,
        8 => length > u64::from(u16::MAX),
        _ => true,
    }
}

/// Decodes the frame at the front of `input`, unmasking its payload in place. `None` while
/// the frame is incomplete.
fn decode(
    assembling: &mut Option<Box<Assembling>>,
    input: &mut [u8],
    max: usize,
) -> Result<Option<Decoded>, FrameError> {
    let mut cursor = Cursor::new(&*input);
    let (header, length) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        Err(_) => return Err(FrameError::Protocol("reserved opcode")),
    };
    // At most 14 bytes, so it fits any usize.
    let header_len = cursor.position() as usize;
    if header.rsv1 || header.rsv2 || header.rsv3 {
        return Err(FrameError::Protocol("reserved bits set"));
    }
    let Some(mask) = header.mask else {
        return Err(FrameError::Protocol("unmasked frame from a client"));
    };
    let control = matches!(header.opcode, OpCode::Control(_));
    if control && (length > MAX_CONTROL_PAYLOAD || !header.is_final) {
        return Err(FrameError::Protocol(
            "control frame fragmented or over 125 bytes",
        ));
    }
    // RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.
    if length > i64::MAX as u64 {
        return Err(FrameError::Protocol("64-bit length with its top bit set"));
    }
    // RFC 6455 5.2: the minimal number of bytes MUST be used to encode the length. The
    // header is 2 bytes, then 0, 2 or 8 of extended length, then the 4-byte mask.
    if !length_is_minimal(header_len.saturating_sub(6), length) {
        return Err(FrameError::Protocol("length not in its shortest form"));
    }
    let too_large = || FrameError::TooLarge { size: length, max };
    let payload_len = usize::try_from(length).map_err(|_| too_large())?;
    if payload_len > max {
        return Err(too_large());
    }
    // A continuation that would take its message past the limit, refused from its
    // header too.
    if header.opcode == OpCode::Data(Data::Continue) {
        if let Some(so_far) = assembling.as_ref() {
            let size = so_far.bytes.len().saturating_add(payload_len);
            if size > max {
                return Err(FrameError::TooLarge {
                    size: size as u64,
                    max,
                });
            }
        }
    }
    let len = header_len + payload_len;
    if input.len() < len {
        return Ok(None);
    }
    let payload = &mut input[header_len..len];
    unmask(payload, mask);
    let payload = &*payload;
    let received = match header.opcode {
        OpCode::Control(Control::Ping) => Some(Received::Ping(Bytes::copy_from_slice(payload))),
        OpCode::Control(Control::Pong) => None,
        OpCode::Control(Control::Close) => Some(Received::Close(close_code(payload)?)),
        OpCode::Data(Data::Text | Data::Binary) => {
            if assembling.is_some() {
                return Err(FrameError::Protocol(
                    "new message before the last one ended",
                ));
            }
            let text = header.opcode == OpCode::Data(Data::Text);
            if header.is_final {
                Some(message(text, Bytes::copy_from_slice(payload), 0)?)
            } else {
                let mut first = Box::new(Assembling {
                    text,
                    bytes: payload.to_vec(),
                    checked: 0,
                });
                first.check()?;
                *assembling = Some(first);
                None
            }
        }
        OpCode::Data(Data::Continue) => {
            let Some(message_so_far) = assembling.as_mut() else {
                return Err(FrameError::Protocol("continuation without a message"));
            };
            // Within `max`, checked from the header above; grown by the rule the
            // arriving budget counts by ([`continued_capacity`]).
            let bytes = &mut message_so_far.bytes;
            let (len, add) = (bytes.len(), payload.len());
            let cap = continued_capacity(len, bytes.capacity(), add, header.is_final, max);
            bytes.reserve_exact(cap - bytes.len());
            bytes.extend_from_slice(payload);
            if header.is_final {
                // Handed on as `Bytes`, which keeps the whole allocation.
                bytes.shrink_to_fit();
            }
            if !header.is_final {
                message_so_far.check()?;
            }
            match assembling.take() {
                Some(whole) if header.is_final => {
                    Some(message(whole.text, whole.bytes.into(), whole.checked)?)
                }
                unfinished => {
                    *assembling = unfinished;
                    None
                }
            }
        }
        // FrameHeader::parse refuses reserved opcodes.
        OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
            return Err(FrameError::Protocol("reserved opcode"))
        }
    };
    Ok(Some(Decoded { len, received }))
}

/// A whole message: text must be UTF-8 (known to be up to `checked`, a character boundary).
fn message(text: bool, bytes: Bytes, checked: usize) -> Result<Received, FrameError> {
    if !text {
        return Ok(Received::Binary(bytes));
    }
    let rest_is_utf8 = bytes
        .get(checked..)
        .is_some_and(|rest| std::str::from_utf8(rest).is_ok());
    if rest_is_utf8 {
        Ok(Received::Text(bytes))
    } else {
        Err(FrameError::InvalidUtf8)
    }
}

/// Whether a peer may send `code` in a close frame: the codes RFC 6455 defines for the
/// wire and those registered since (1012 service restart, 1013 try again later, 1014 bad
/// gateway), and the codes for libraries and applications (3000–4999); not 1004 (reserved),
/// 1005, 1006 and 1015 (never sent), nor unassigned ones. As Node's `ws` decides.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// A close frame's code: none, or two bytes of an allowed code and a UTF-8 reason.
fn close_code(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !close_code_allowed(code) {
                return Err(FrameError::Protocol("close code not allowed"));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::InvalidUtf8);
            }
            Ok(Some(code))
        }
    }
}

/// Unmasks (or masks: the same XOR) a payload with its key.
fn unmask(payload: &mut [u8], key: [u8; 4]) {
    let word = u32::from_ne_bytes(key);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let masked = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&masked.to_ne_bytes());
    }
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

/// What a server writes: a whole unmasked frame.
fn encode(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader {
        is_final: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode,
        mask: None,
    };
    // Formatting into a Vec cannot fail.
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// Appends a text frame.
pub fn encode_text(out: &mut Vec<u8>, text: &[u8]) {
    encode(out, OpCode::Data(Data::Text), text);
}

/// Appends a binary frame.
pub fn encode_binary(out: &mut Vec<u8>, bytes: &[u8]) {
    encode(out, OpCode::Data(Data::Binary), bytes);
}

/// Appends a pong answering a ping with this payload.
pub fn encode_pong(out: &mut Vec<u8>, payload: &[u8]) {
    encode(out, OpCode::Control(Control::Pong), payload);
}

/// Appends a close frame. The reason is cut at a character boundary to fit the 125 bytes
/// of a control frame.
pub fn encode_close(out: &mut Vec<u8>, code: u16, reason: &str) {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD as usize - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD as usize];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    encode(out, OpCode::Control(Control::Close), &payload[..2 + end]);
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1000;
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    /// A client frame: masked, with the given first byte (FIN, RSV, opcode).
    fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let extended = match payload.len() {
            n if n < 126 => 0,
            n if n <= 0xffff => 2,
            _ => 8,
        };
        frame_with_length_in(first, extended, payload)
    }

    /// A masked client frame whose length is written in `extended` bytes (0, 2 or 8),
    /// whether or not that is the shortest form.
    fn frame_with_length_in(first: u8, extended: usize, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut out = vec![first];
        match extended {
            0 => out.push(0x80 | n as u8),
            2 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            _ => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&KEY);
        let mut masked = payload.to_vec();
        unmask(&mut masked, KEY);
        out.extend_from_slice(&masked);
        out
    }

    fn text(s: &str) -> Vec<u8> {
        client_frame(0x81, s.as_bytes())
    }

    #[test]
    fn the_close_is_found_behind_whole_frames_only() {
        let close = client_frame(0x88, &1000u16.to_be_bytes());
        let pong = client_frame(0x8A, b"");
        let ping = client_frame(0x89, b"p");
        let long = client_frame(0x81, &[b'x'; 300]);
        let cat = |parts: &[&[u8]]| parts.concat();
        assert_eq!(scan_for_close(&[]), Ahead::Boundary);
        assert_eq!(scan_for_close(&close), Ahead::Close);
        assert_eq!(scan_for_close(&close[..1]), Ahead::Close);
        assert_eq!(
            scan_for_close(&cat(&[&text("3"), &pong, &close])),
            Ahead::Close
        );
        // A fragmented text with a ping inside it, then the close.
        let first = client_frame(0x01, b"4");
        let last = client_frame(0x80, b"0");
        assert_eq!(
            scan_for_close(&cat(&[&first, &ping, &last, &close])),
            Ahead::Close
        );
        assert_eq!(scan_for_close(&cat(&[&text("3"), &pong])), Ahead::Boundary);
        // A frame not all there hides whatever follows it; its payload is never read as a
        // header, even when it holds a close frame's bytes.
        assert_eq!(scan_for_close(&long[..200]), Ahead::Partial);
        assert_eq!(scan_for_close(&long[..1]), Ahead::Partial);
        let looks_like_close = client_frame(0x82, &close);
        assert_eq!(scan_for_close(&looks_like_close), Ahead::Boundary);
        assert_eq!(
            scan_for_close(&cat(&[&looks_like_close, &close])),
            Ahead::Close
        );
        // What the decoder holds after handing over a message.
        let mut decoder = Decoder::default();
        let mut bytes = cat(&[&text("40/chat,"), &pong, &close]);
        assert_eq!(
            decoder.next_from(&mut bytes, MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"40/chat,"))))
        );
        assert_eq!(decoder.held_ahead(), Ahead::Close);
        let mut alone = text("40/chat,");
        let mut decoder = Decoder::default();
        assert!(decoder.next_from(&mut alone, MAX).is_ok());
        assert_eq!(decoder.held_ahead(), Ahead::Boundary);
    }

    #[test]
    fn looking_ahead_again_resumes_where_the_last_look_ended() {
        let close = client_frame(0x88, &1000u16.to_be_bytes());
        let connect = text("40/chat,");
        let long = client_frame(0x81, &[b'x'; 300]);
        let cat = |parts: &[&[u8]]| parts.concat();
        // A read of many CONNECTs: after each, the look ahead sees whole frames and no close
        // up to the end, and the next look starts from there.
        let mut bytes = cat(&[&connect, &connect, &connect, &connect]);
        let mut decoder = Decoder::default();
        let mut taken = 0;
        assert!(decoder
            .next_from(&mut bytes, MAX)
            .is_ok_and(|r| r.is_some()));
        loop {
            taken += 1;
            assert_eq!(decoder.held_ahead(), Ahead::Boundary);
            let walked = decoder.held.as_ref().map(|h| (h.scanned, h.bytes.len()));
            assert!(walked.is_none_or(|(scanned, len)| scanned == len));
            if decoder.next_held(MAX).ok().flatten().is_none() {
                break;
            }
        }
        assert_eq!(taken, 4);
        // More bytes behind what was looked at: half a frame, then the rest of it and a
        // close. The frames already walked are not walked again, and nothing is missed.
        let mut bytes = cat(&[&connect, &connect, &long[..100]]);
        let mut decoder = Decoder::default();
        assert!(decoder
            .next_from(&mut bytes, MAX)
            .is_ok_and(|r| r.is_some()));
        assert_eq!(decoder.held_ahead(), Ahead::Partial);
        let mut rest = cat(&[&long[100..], &connect, &close]);
        assert_eq!(
            decoder.next_from(&mut rest, MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"40/chat,"))))
        );
        assert_eq!(decoder.held_ahead(), Ahead::Close);
        assert_eq!(decoder.held_ahead(), Ahead::Close);
    }

    /// Everything `bytes` decodes to, fed `chunk` bytes at a time.
    fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Received>, FrameError> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut scratch = piece.to_vec();
            if let Some(r) = decoder.next_from(&mut scratch, MAX)? {
                out.push(r);
            }
            while let Some(r) = decoder.next_held(MAX)? {
                out.push(r);
            }
        }
        assert!(!decoder.holds_bytes(), "bytes left over");
        Ok(out)
    }

    #[test]
    fn frames_decode_alike_whatever_the_reads_that_bring_them() {
        let mut bytes = text("40/chat,{\"token\":\"t\"}");
        bytes.extend(client_frame(0x82, &[1, 2, 3, 4, 5]));
        bytes.extend(client_frame(0x89, b"hi"));
        bytes.extend(client_frame(0x8a, b"ignored pong"));
        bytes.extend(text(&"x".repeat(300)));
        bytes.extend(text(""));
        let expected = vec![
            Received::Text(Bytes::from_static(b"40/chat,{\"token\":\"t\"}")),
            Received::Binary(Bytes::from_static(&[1, 2, 3, 4, 5])),
            Received::Ping(Bytes::from_static(b"hi")),
            Received::Text(Bytes::from("x".repeat(300))),
            Received::Text(Bytes::new()),
        ];
        for chunk in [1, 2, 3, 7, 64, bytes.len()] {
            assert_eq!(decode_all(&bytes, chunk), Ok(expected.clone()), "{chunk}");
        }
    }

    #[test]
    fn an_idle_decoder_holds_nothing() {
        let mut decoder = Decoder::default();
        let mut bytes = text("2");
        assert_eq!(
            decoder.next_from(&mut bytes, MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"2"))))
        );
        assert!(!decoder.holds_bytes());
        assert!(decoder.assembling.is_none());
        let mut half = text("3");
        let (a, b) = half.split_at_mut(3);
        assert_eq!(decoder.next_from(a, MAX), Ok(None));
        assert!(decoder.holds_bytes());
        assert_eq!(
            decoder.next_from(b, MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"3"))))
        );
        assert!(!decoder.holds_bytes());
    }

    #[test]
    fn fragments_are_joined_and_control_frames_may_come_between() {
        let mut bytes = client_frame(0x01, b"42/chat,");
        bytes.extend(client_frame(0x89, b"p"));
        bytes.extend(client_frame(0x00, b"[\"ping\""));
        bytes.extend(client_frame(0x80, b",{}]"));
        for chunk in [1, 5, bytes.len()] {
            assert_eq!(
                decode_all(&bytes, chunk),
                Ok(vec![
                    Received::Ping(Bytes::from_static(b"p")),
                    Received::Text(Bytes::from_static(b"42/chat,[\"ping\",{}]")),
                ])
            );
        }
    }

    /// What the message in progress has received counts its fragments and what is held
    /// of the next frame, header included, but not the control frames between them.
    #[test]
    fn received_counts_the_message_in_progress_not_control_frames() {
        let first = client_frame(0x01, b"42/chat,");
        let ping = client_frame(0x89, b"p");
        let next = client_frame(0x80, b"[\"ping\",{}]");
        let mut decoder = Decoder::default();
        assert_eq!(decoder.received(), 0);
        let mut bytes = first.clone();
        bytes.extend(&ping);
        assert_eq!(
            decoder.next_from(&mut bytes, MAX),
            Ok(Some(Received::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(decoder.next_held(MAX), Ok(None));
        assert_eq!(
            decoder.received(),
            b"42/chat,".len(),
            "the fragment's payload"
        );
        let mut part = next[..5].to_vec();
        assert_eq!(decoder.next_from(&mut part, MAX), Ok(None));
        assert_eq!(
            decoder.received(),
            b"42/chat,".len() + 5,
            "and the next frame's start"
        );
    }

    #[test]
    fn close_frames_give_their_code() {
        let mut with_code = vec![0x03, 0xe8];
        with_code.extend_from_slice(b"bye");
        assert_eq!(
            decode_all(&client_frame(0x88, &with_code), 100),
            Ok(vec![Received::Close(Some(1000))])
        );
        assert_eq!(
            decode_all(&client_frame(0x88, &[]), 100),
            Ok(vec![Received::Close(None)])
        );
        // Codes an endpoint may send (RFC 6455 7.4, and 1012-1014 registered since), and
        // codes it may not: below 1000, reserved (1004), meant for reporting only (1005,
        // 1006, 1015), unassigned in the protocol's range (1016-2999), and past 4999.
        let closing = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            Decoder::default().next_from(&mut client_frame(0x88, &payload), MAX)
        };
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            assert_eq!(
                closing(code, b""),
                Ok(Some(Received::Close(Some(code)))),
                "{code}"
            );
        }
        for code in [
            0,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            1100,
            2000,
            2999,
            5000,
            u16::MAX,
        ] {
            assert!(
                matches!(closing(code, b""), Err(FrameError::Protocol(_))),
                "{code} accepted"
            );
        }
        // An allowed code with a reason that is not UTF-8.
        assert_eq!(
            closing(1000, &[0xce, 0xba, 0xff]),
            Err(FrameError::InvalidUtf8)
        );
    }

    #[test]
    fn what_breaks_the_protocol_is_refused_with_its_close_code() {
        let mut unmasked = vec![0x81, 0x01, b'x'];
        let mut ping_too_long = client_frame(0x89, &[0; 126]);
        let mut fragmented_ping = client_frame(0x09, b"p");
        let mut reserved_bit = client_frame(0xc1, b"x");
        let mut reserved_opcode = client_frame(0x83, b"x");
        let mut lone_continuation = client_frame(0x80, b"x");
        let mut interleaved = client_frame(0x01, b"a");
        interleaved.extend(text("b"));
        let mut bad_close_code = client_frame(0x88, &1005u16.to_be_bytes());
        let mut one_byte_close = client_frame(0x88, &[3]);
        for (name, bytes) in [
            ("unmasked", &mut unmasked),
            ("ping over 125", &mut ping_too_long),
            ("fragmented ping", &mut fragmented_ping),
            ("reserved bit", &mut reserved_bit),
            ("reserved opcode", &mut reserved_opcode),
            ("lone continuation", &mut lone_continuation),
            ("interleaved", &mut interleaved),
            ("close code 1005", &mut bad_close_code),
            ("one-byte close", &mut one_byte_close),
        ] {
            let got = Decoder::default().next_from(bytes, MAX);
            match got {
                Err(e) => assert_eq!(e.close_code(), 1002, "{name}: {e}"),
                Ok(r) => panic!("{name}: accepted as {r:?}"),
            }
        }
        let mut not_utf8 = client_frame(0x81, &[0xff, 0xfe]);
        assert_eq!(
            Decoder::default().next_from(&mut not_utf8, MAX),
            Err(FrameError::InvalidUtf8)
        );
        // Split across fragments, a character is checked once whole.
        let mut split_char = client_frame(0x01, &"é".as_bytes()[..1]);
        split_char.extend(client_frame(0x80, &"é".as_bytes()[1..]));
        assert_eq!(
            decode_all(&split_char, 1),
            Ok(vec![Received::Text(Bytes::from("é"))])
        );
        // Bad bytes in a first fragment end the message at once, before the rest is held.
        let mut bad_start = client_frame(0x01, &[b'a', 0xff]);
        assert_eq!(
            Decoder::default().next_from(&mut bad_start, MAX),
            Err(FrameError::InvalidUtf8)
        );
        // And in a middle fragment, after a character completed across the boundary.
        let mut bad_middle = client_frame(0x01, &"aé".as_bytes()[..2]);
        bad_middle.extend(client_frame(0x00, &[0xa9, b'b', 0xc0]));
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.next_from(&mut bad_middle, MAX),
            Err(FrameError::InvalidUtf8)
        );
        // A character cut at the end of the last fragment is not a character.
        let mut cut_at_end = client_frame(0x01, b"a");
        cut_at_end.extend(client_frame(0x80, &"é".as_bytes()[..1]));
        assert_eq!(decode_all(&cut_at_end, 1), Err(FrameError::InvalidUtf8));
    }

    #[test]
    fn a_length_must_be_written_in_its_shortest_form() {
        let max = 70_000;
        let refused = [
            (2, 0),
            (2, 5),
            (2, 125),
            (8, 5),
            (8, 125),
            (8, 126),
            (8, 65_535),
        ];
        for (extended, n) in refused {
            let mut frame = frame_with_length_in(0x81, extended, &vec![b'x'; n]);
            match Decoder::default().next_from(&mut frame, max) {
                Err(e) => assert_eq!(e.close_code(), 1002, "{n} in {extended} bytes: {e}"),
                Ok(r) => panic!("{n} in {extended} bytes: accepted as {r:?}"),
            }
        }
        let accepted = [(0, 0), (0, 125), (2, 126), (2, 65_535), (8, 65_536)];
        for (extended, n) in accepted {
            let payload = vec![b'x'; n];
            let mut frame = frame_with_length_in(0x81, extended, &payload);
            assert_eq!(
                Decoder::default().next_from(&mut frame, max),
                Ok(Some(Received::Text(Bytes::from(payload)))),
                "{n} in {extended} bytes"
            );
        }
    }

    #[test]
    fn size_is_bounded_before_the_payload_is_held() {
        // Only the header of a huge frame has arrived: refused at once, nothing held.
        let big = client_frame(0x81, &vec![b'x'; MAX + 1]);
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.next_from(&mut big[..14].to_vec(), MAX),
            Err(FrameError::TooLarge {
                size: MAX as u64 + 1,
                max: MAX
            })
        );
        // A frame announcing 2^63 - 1 bytes: too large. One announcing 2^63 breaks the
        // rule that a 64-bit length's top bit is 0: a protocol error.
        let announcing = |length: u64| {
            let mut frame = vec![0x81, 0x80 | 127];
            frame.extend_from_slice(&length.to_be_bytes());
            frame.extend_from_slice(&KEY);
            Decoder::default().next_from(&mut frame, MAX)
        };
        assert_eq!(
            announcing(i64::MAX as u64),
            Err(FrameError::TooLarge {
                size: i64::MAX as u64,
                max: MAX
            })
        );
        assert!(matches!(announcing(1 << 63), Err(FrameError::Protocol(_))));
        // Fragments that add up to more than the limit.
        let mut parts = client_frame(0x01, &vec![b'x'; 600]);
        parts.extend(client_frame(0x80, &vec![b'x'; 600]));
        assert_eq!(
            decode_all(&parts, 10),
            Err(FrameError::TooLarge {
                size: 1200,
                max: MAX
            })
        );
        // Exactly the limit is fine.
        let exact = client_frame(0x82, &vec![7; MAX]);
        assert_eq!(
            decode_all(&exact, 100),
            Ok(vec![Received::Binary(Bytes::from(vec![7; MAX]))])
        );
    }

    /// What a frame in progress will hold is known from its header, before its payload
    /// arrives: the frame, and with a continuation the message's buffer as it will grow.
    /// Room for the frame is made once, and a large frame's buffer is not kept behind it.
    #[test]
    fn what_a_frame_in_progress_will_hold_is_known_from_its_header() {
        let max = 100_000;
        let mut decoder = Decoder::default();
        assert_eq!(decoder.arriving(max), 0);
        // 50,000 bytes: a header of 2 + 2 + 4 bytes.
        let frame = client_frame(0x82, &vec![3; 50_000]);
        assert_eq!(decoder.next_from(&mut frame[..100].to_vec(), max), Ok(None));
        assert_eq!(decoder.arriving(max), 50_008);
        decoder.make_room(max);
        let capacity = |d: &Decoder| d.held.as_ref().map_or(0, |h| h.bytes.capacity());
        assert_eq!(capacity(&decoder), 50_008 + READ_SLACK);
        // The rest arrives, with the start of the next frame behind it.
        let mut rest = frame[100..50_000].to_vec();
        assert_eq!(decoder.next_from(&mut rest, max), Ok(None));
        assert_eq!(
            capacity(&decoder),
            50_008 + READ_SLACK,
            "filled without growing"
        );
        let mut last = frame[50_000..].to_vec();
        last.extend_from_slice(&text("2")[..3]);
        assert_eq!(
            decoder.next_from(&mut last, max),
            Ok(Some(Received::Binary(Bytes::from(vec![3; 50_000]))))
        );
        assert!(capacity(&decoder) <= KEEP_HELD, "{}", capacity(&decoder));
        assert_eq!(
            decoder.arriving(max),
            3,
            "a header not yet whole: what is held"
        );
        assert_eq!(
            decoder.next_from(&mut text("2")[3..].to_vec(), max),
            Ok(Some(Received::Text(Bytes::from_static(b"2"))))
        );
        assert_eq!(decoder.arriving(max), 0);

        // A fragmented message: its first 30,000 bytes, then a continuation's header.
        let mut first = client_frame(0x02, &vec![1; 30_000]);
        assert_eq!(decoder.next_from(&mut first, max), Ok(None));
        assert_eq!(decoder.arriving(max), 30_000, "the message so far");
        let next = client_frame(0x00, &vec![2; 40_000]);
        assert_eq!(decoder.next_from(&mut next[..8].to_vec(), max), Ok(None));
        // The last fragment: the buffer grows to just the message, beside the frame.
        assert_eq!(decoder.arriving(max), 70_000 + 40_008);
        // A ping between fragments asks for nothing more than the message so far.
        let mut ping = client_frame(0x89, b"p");
        let mut between = Decoder::default();
        assert_eq!(
            between.next_from(&mut client_frame(0x02, &vec![1; 30_000]), max),
            Ok(None)
        );
        assert_eq!(between.next_from(&mut ping[..6].to_vec(), max), Ok(None));
        assert_eq!(between.arriving(max), 30_000);
        assert_eq!(
            between.next_from(&mut ping[6..], max),
            Ok(Some(Received::Ping(Bytes::from_static(b"p"))))
        );
        // A fragment that is not the last grows the buffer by doubling (30,000 to 60,000).
        let middle = client_frame(0x00, &vec![2; 20_000]);
        assert_eq!(between.next_from(&mut middle[..8].to_vec(), max), Ok(None));
        assert_eq!(between.arriving(max), 60_000 + 20_008);
        // One that would take the message past the limit is refused from its header.
        let mut decoder = Decoder::default();
        assert_eq!(
            decoder.next_from(&mut client_frame(0x02, &vec![1; 30_000]), max),
            Ok(None)
        );
        let over = client_frame(0x80, &vec![2; 80_000]);
        assert_eq!(
            decoder.next_from(&mut over[..14].to_vec(), max),
            Err(FrameError::TooLarge { size: 110_000, max })
        );
    }

    #[test]
    fn bytes_read_with_the_upgrade_request_come_first() {
        let mut first = text("40");
        first.extend(&text("41")[..2]);
        let mut decoder = Decoder::with_bytes(&first);
        assert_eq!(
            decoder.next_held(MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"40"))))
        );
        assert_eq!(decoder.next_held(MAX), Ok(None));
        let mut rest = text("41")[2..].to_vec();
        assert_eq!(
            decoder.next_from(&mut rest, MAX),
            Ok(Some(Received::Text(Bytes::from_static(b"41"))))
        );
        assert!(!decoder.holds_bytes());
    }

    #[test]
    fn server_frames_are_unmasked_and_close_reasons_fit_a_control_frame() {
        let mut out = Vec::new();
        encode_text(&mut out, b"3");
        assert_eq!(out, [0x81, 0x01, b'3']);
        out.clear();
        encode_binary(&mut out, &[0; 200]);
        assert_eq!(out[..4], [0x82, 126, 0, 200]);
        assert_eq!(out.len(), 204);
        out.clear();
        encode_pong(&mut out, b"hi");
        assert_eq!(out, [0x8a, 0x02, b'h', b'i']);
        out.clear();
        encode_close(&mut out, 1009, "payload too large");
        assert_eq!(out[..4], [0x88, 19, 0x03, 0xf1]);
        assert_eq!(&out[4..], b"payload too large");
        out.clear();
        encode_close(&mut out, 1000, &"é".repeat(100));
        assert_eq!(out[1] as usize, out.len() - 2);
        assert!(out.len() - 2 <= 125);
        assert!(std::str::from_utf8(&out[4..]).is_ok());
    }
}
