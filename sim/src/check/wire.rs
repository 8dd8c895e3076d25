//! The `/chat` namespace's Socket.IO packets, read out of Engine.IO text frames: what every
//! checker that watches the wire reads.

use serde_json::Value;

/// A Socket.IO packet on `/chat` in an Engine.IO message: its type digit (`b'2'` an event,
/// `b'3'` an ack, ...), its ack id, and its JSON payload as sent. `None` for anything else
/// (Engine.IO control packets, other namespaces).
pub fn chat_packet(text: &str) -> Option<(u8, Option<u64>, &str)> {
    let rest = text.strip_prefix('4')?;
    let kind = *rest.as_bytes().first()?;
    let rest = rest.get(1..)?.strip_prefix("/chat,")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest.get(..digits).and_then(|d| d.parse().ok());
    Some((kind, id, rest.get(digits..)?))
}

/// [`chat_packet`] with its payload parsed; `None` also when the payload is not JSON.
pub fn chat_data(text: &str) -> Option<(u8, Option<u64>, Value)> {
    let (kind, id, payload) = chat_packet(text)?;
    Some((kind, id, serde_json::from_str(payload).ok()?))
}

/// Whether `text` is a namespace DISCONNECT of `/chat` (with or without its comma).
pub fn is_chat_disconnect(text: &str) -> bool {
    text == "41/chat" || text.starts_with("41/chat,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_events_and_acks_of_the_chat_namespace() {
        let (kind, id, data) = chat_data(r#"42/chat,["message:new",{"seq":1}]"#).expect("event");
        assert_eq!(
            (kind, id, data[0].as_str()),
            (b'2', None, Some("message:new"))
        );
        let (kind, id, data) = chat_data(r#"43/chat,12[{"ok":false}]"#).expect("ack");
        assert_eq!(
            (kind, id, data[0]["ok"].as_bool()),
            (b'3', Some(12), Some(false))
        );
        assert_eq!(chat_packet("40/chat,"), Some((b'0', None, "")));
        assert!(chat_data("40/chat,").is_none(), "no JSON");
        assert!(chat_packet("3").is_none());
        assert!(chat_packet(r#"42["message:new",{}]"#).is_none());
        assert!(is_chat_disconnect("41/chat,") && is_chat_disconnect("41/chat"));
        assert!(!is_chat_disconnect("41/chatroom,"));
    }
}
