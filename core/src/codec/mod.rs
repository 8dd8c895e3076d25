//! Wire codecs: Engine.IO v4 packets ([`engine`]) and the Socket.IO v5 packets they carry
//! ([`socket`]).
//!
//! The codecs are pure functions from bytes to values and back. They hold no buffers, read no
//! clock and know nothing about sessions, so they can be fuzzed on their own and the
//! connection state machine can treat "the peer sent something unparseable" as one more input
//! (a typed [`engine::DecodeError`] or [`socket::DecodeError`], which it turns into a
//! "parse error" close). The one piece of state is [`socket::Decoder`], because a Socket.IO
//! binary packet spans several Engine.IO messages and somebody has to hold the header until
//! its attachments arrive; that state is bounded and explicit.
//!
//! Encoding yields [`Frame`]s rather than strings. A frame is exactly what a WebSocket sends,
//! and a polling response is just frames joined by [`engine::encode_payload`], so a packet is
//! encoded once whatever the transport. Frames wrap refcounted [`Bytes`], so a broadcast to
//! ten thousand connections shares one encoded buffer instead of ten thousand copies.
//!
//! Decoding treats every input as hostile: it never panics (slicing is done on ASCII
//! positions or through checked accessors), never sizes an allocation from a number read off
//! the wire, and caps every count it reads (packets per polling payload, attachments per
//! binary packet, ack ids that overflow `u64`).

use bytes::Bytes;

pub mod engine;
pub mod json;
pub mod socket;

pub use engine::{
    decode_payload, encode_payload, Data, DecodeError as EngineDecodeError, Handshake,
    Packet as EnginePacket,
};
pub use socket::{
    DecodeError as SocketDecodeError, Decoder as SocketDecoder, Packet as SocketPacket,
    PacketType as SocketPacketType,
};

/// One WebSocket-level frame / one Engine.IO packet as it travels.
///
/// Cheap to clone (`Bytes` is refcounted), so one encoded packet is shared by every
/// connection it is fanned out to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A text frame. The bytes are valid UTF-8 when built by this crate; [`Frame::text`]
    /// is the constructor that guarantees it.
    Text(Bytes),
    /// A binary frame: always an Engine.IO `message` with raw bytes.
    Binary(Bytes),
}

impl Frame {
    /// Builds a text frame from a string without copying it.
    pub fn text(s: impl Into<String>) -> Frame {
        Frame::Text(Bytes::from(s.into()))
    }

    /// Size of the frame's payload in bytes.
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the frame carries no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }

    /// The raw payload, whatever the frame kind.
    pub fn as_bytes(&self) -> &Bytes {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b,
        }
    }

    /// Whether this is a text frame.
    pub fn is_text(&self) -> bool {
        matches!(self, Frame::Text(_))
    }

    /// The text of a text frame; `None` for a binary frame or a text frame that is not UTF-8.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Frame::Text(b) => std::str::from_utf8(b).ok(),
            Frame::Binary(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_accessors() {
        let t = Frame::text("4hello");
        assert_eq!(t.len(), 6);
        assert!(!t.is_empty());
        assert!(t.is_text());
        assert_eq!(t.as_text(), Some("4hello"));

        let b = Frame::Binary(Bytes::from_static(&[1, 2, 3]));
        assert_eq!(b.len(), 3);
        assert!(!b.is_text());
        assert_eq!(b.as_text(), None);
        assert!(Frame::Binary(Bytes::new()).is_empty());

        let bad = Frame::Text(Bytes::from_static(&[0xff, 0xfe]));
        assert_eq!(bad.as_text(), None);
    }
}
