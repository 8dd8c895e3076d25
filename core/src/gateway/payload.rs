//! The JSON of an accepted message's events, written once per message.
//!
//! A stored message goes out in up to four payloads: the sender's ack, `message:sent`,
//! `message:new` to the room and `message:notification` to members connected elsewhere.
//! Building a `serde_json::Value` for each (an ordered map per object, a `String` per key,
//! then displaying it) took about a quarter of the server's CPU at saturation. Here the
//! message object is serialized once, straight from borrowed fields, and each payload is
//! that text between constant JSON fragments. The bytes are the same as the `Value` forms
//! give (same keys, same order, same escaping); the tests below hold them to that.

use serde::Serialize;

use crate::gateway::io::Message;

/// The contract's message object, borrowed: field order is wire order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageView<'a> {
    id: &'a str,
    conversation_id: &'a str,
    seq: u64,
    sender_id: &'a str,
    sender_type: &'a str,
    content: &'a str,
    temp_id: Option<&'a str>,
    #[serde(rename = "createdAt")]
    created_at_ms: u64,
}

/// JSON text of `value`. Serializing borrowed strings, integers and options into memory
/// cannot fail; `null` stands in should that ever change.
fn json<T: Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| String::from("null"))
}

/// One message's JSON object, and the Socket.IO data arrays that carry it.
#[derive(Debug)]
pub(crate) struct MessageJson {
    object: String,
}

impl MessageJson {
    pub(crate) fn new(message: &Message) -> MessageJson {
        MessageJson {
            object: json(&MessageView {
                id: &message.id,
                conversation_id: &message.conversation_id,
                seq: message.seq,
                sender_id: &message.sender_id,
                sender_type: &message.sender_type,
                content: &message.content,
                temp_id: message.temp_id.as_deref(),
                created_at_ms: message.created_at_ms,
            }),
        }
    }

    /// `before`, the message object, `after`: the shape of every payload below.
    fn around(&self, before: &str, after: &str) -> String {
        let mut out = String::with_capacity(before.len() + self.object.len() + after.len());
        out.push_str(before);
        out.push_str(&self.object);
        out.push_str(after);
        out
    }

    /// Ack data for `message:send`: `[{"ok":true,"message":…,"duplicate":…}]`.
    pub(crate) fn send_ack(&self, duplicate: bool) -> String {
        let after = if duplicate {
            r#","duplicate":true}]"#
        } else {
            r#","duplicate":false}]"#
        };
        self.around(r#"[{"ok":true,"message":"#, after)
    }

    /// Event data `["message:sent",{"tempId":…,"message":…}]`.
    pub(crate) fn sent_event(&self, temp_id: &serde_json::Value) -> String {
        let before = format!(r#"["message:sent",{{"tempId":{},"message":"#, json(temp_id));
        self.around(&before, "}]")
    }

    /// Event data `["message:new",…]`.
    pub(crate) fn new_event(&self) -> String {
        self.around(r#"["message:new","#, "]")
    }

    /// Event data `["message:notification",{"conversationId":…,"message":…}]`.
    pub(crate) fn notification_event(&self, conversation_id: &str) -> String {
        let before = format!(
            r#"["message:notification",{{"conversationId":{},"message":"#,
            json(conversation_id)
        );
        self.around(&before, "}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn message(content: &str, temp_id: Option<&str>, conversation_id: &str) -> Message {
        Message {
            id: "0196f3a1b2c-AbCdEfGhIjKl".into(),
            conversation_id: conversation_id.into(),
            seq: u64::MAX,
            sender_id: "u\"1".into(),
            sender_type: "customer".into(),
            content: content.into(),
            temp_id: temp_id.map(str::to_owned),
            created_at_ms: 1_764_000_000_000,
        }
    }

    /// Each payload against the `Value` it replaces, compared as text (so key order and
    /// escaping count).
    fn check(m: &Message) {
        let j = MessageJson::new(m);
        let v = m.to_json();
        for duplicate in [false, true] {
            let want = json!([{ "ok": true, "message": v, "duplicate": duplicate }]);
            assert_eq!(j.send_ack(duplicate), want.to_string());
        }
        let want = json!(["message:sent", { "tempId": m.temp_id, "message": v }]);
        assert_eq!(j.sent_event(&json!(m.temp_id)), want.to_string());
        let want = json!(["message:sent", { "tempId": 17, "message": v }]);
        assert_eq!(j.sent_event(&json!(17)), want.to_string());
        assert_eq!(j.new_event(), json!(["message:new", v]).to_string());
        let want = json!([
            "message:notification",
            { "conversationId": m.conversation_id, "message": v }
        ]);
        assert_eq!(j.notification_event(&m.conversation_id), want.to_string());
        // And each is one JSON array.
        for text in [j.send_ack(false), j.new_event(), j.sent_event(&Value::Null)] {
            let parsed: Value = serde_json::from_str(&text).expect("valid JSON");
            assert!(parsed.is_array());
        }
    }

    #[test]
    fn payloads_match_the_value_forms() {
        check(&message("hello", Some("t-1"), "c1"));
        check(&message("", None, ""));
        check(&message(
            "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f} é \u{1F600} </script>",
            Some("\u{2028}"),
            "conv \"x\"",
        ));
    }

    proptest! {
        #[test]
        fn payloads_match_for_any_text(
            content in any::<String>(),
            temp_id in proptest::option::of(any::<String>()),
            conversation_id in any::<String>(),
        ) {
            check(&message(&content, temp_id.as_deref(), &conversation_id));
        }
    }
}
