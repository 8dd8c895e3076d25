//! Only members of a conversation may join it, read it or send to it.
//!
//! Seen from outside the gateway: every `message:new` and `message:notification` the server
//! writes to a connection, and every message in a join's catch-up or a history page it
//! answers, is of a conversation its user is a member of at that moment; every append the server asks
//! of the store is from a member of its conversation at that moment; and a hostile user's
//! requests for a conversation it is not in (a join, a history read, sends) are never
//! answered `ok: true`. Who is a member comes from the workload's layout and the member
//! lists the operator has since written (as the store committed them), not from the
//! gateway, so a bug in the gateway's own membership or rooms cannot hide itself. The
//! checks are made when the server writes or asks, not when a frame arrives: a member
//! removed meanwhile may still receive what was written to it before. And every message
//! the store commits is from a member by the lists committed before it: a send the
//! gateway admitted just before it learned of a list that removed its sender is in the
//! store's queue behind that list, and must not be stored after it (the operator was told
//! the removal is done).

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::gateway::{Effect, Message};
use serde_json::Value;

use super::wire::chat_data;
use super::Finding;
use crate::workload::Layout;

/// The checker's name.
pub const NAME: &str = "members-only";

/// Membership by the layout, and what each connection received.
#[derive(Debug)]
pub struct MembersOnly {
    /// Conversation id to its members' user keys, now.
    members: BTreeMap<String, BTreeSet<String>>,
    /// The user key of each layout user, by index.
    keys: Vec<String>,
    /// Hostile connections asking for a conversation their user is not in, and the user.
    trespassing: BTreeMap<u64, String>,
}

impl MembersOnly {
    /// The membership of `layout`.
    pub fn new(layout: &Layout) -> Self {
        let keys: Vec<String> = layout.users.iter().map(|u| u.key()).collect();
        let members = layout
            .conversations
            .iter()
            .map(|(id, users)| {
                let set = users.iter().filter_map(|u| keys.get(*u).cloned()).collect();
                (id.clone(), set)
            })
            .collect();
        MembersOnly {
            members,
            keys,
            trespassing: BTreeMap::new(),
        }
    }

    fn is_member(&self, conversation: &str, user: &str) -> bool {
        self.members
            .get(conversation)
            .is_some_and(|m| m.contains(user))
    }

    /// The store committed a new member list for `conversation`: layout users `users`.
    pub fn set(&mut self, conversation: &str, users: &BTreeSet<usize>) {
        let keys = users
            .iter()
            .filter_map(|u| self.keys.get(*u).cloned())
            .collect();
        self.members.insert(conversation.to_owned(), keys);
    }

    /// The server wrote `text` to a connection of `user` (a user key): a `message:new` or
    /// `message:notification` in it, and every message a join's `missed` or a history
    /// page in an ack carries, must be of a conversation `user` is a member of now.
    pub fn sent(&self, user: &str, text: &str) -> Finding {
        let is_event = text.starts_with("42/chat,[\"message:new\"")
            || text.starts_with("42/chat,[\"message:notification\"");
        let is_ack = text.starts_with("43/chat,");
        if !is_event && !is_ack {
            return Ok(());
        }
        let Some((_, _, data)) = chat_data(text) else {
            return Err((
                NAME,
                format!("{user} was written a frame that does not parse"),
            ));
        };
        let conversations: Vec<&str> = if is_event {
            vec![data[1]["conversationId"].as_str().unwrap_or("")]
        } else {
            let reply = &data[0];
            if reply["ok"] != Value::Bool(true) {
                return Ok(());
            }
            ["missed", "messages"]
                .iter()
                .filter_map(|k| reply[*k].as_array())
                .flatten()
                .map(|m| m["conversationId"].as_str().unwrap_or(""))
                .collect()
        };
        match conversations.iter().find(|c| !self.is_member(c, user)) {
            None => Ok(()),
            Some(conv) => Err((
                NAME,
                format!("{user}, not a member of {conv:?}, was written {text}"),
            )),
        }
    }

    /// Hostile connection `link` of `user` asks only for conversations `user` is not in.
    pub fn trespasses(&mut self, link: u64, user: String) {
        self.trespassing.insert(link, user);
    }

    /// Connection `link` is gone.
    pub fn closed(&mut self, link: u64) {
        self.trespassing.remove(&link);
    }

    /// A frame reached hostile connection `link` of `user`; if it trespasses, none of its
    /// requests may be granted.
    pub fn hostile_received(&self, link: u64, user: &str, text: &str) -> Finding {
        if !self.trespassing.contains_key(&link) {
            return Ok(());
        }
        if let Some((b'3', _, data)) = chat_data(text) {
            if data[0]["ok"] == Value::Bool(true) {
                return Err((
                    NAME,
                    format!("{user}, a member of nothing, had a request granted: {text}"),
                ));
            }
        }
        Ok(())
    }

    /// The store committed `message`: its sender must be a member of its conversation by
    /// the lists committed before it.
    pub fn stored(&self, message: &Message) -> Finding {
        let sender = format!("{}:{}", message.sender_id, message.sender_type);
        if self.is_member(&message.conversation_id, &sender) {
            return Ok(());
        }
        Err((
            NAME,
            format!(
                "stored {}#{} from {sender}, after the list that left it out",
                message.conversation_id, message.seq
            ),
        ))
    }

    /// The server asks the store for `effect`: an append's sender must be a member of its
    /// conversation now.
    pub fn asked(&self, effect: &Effect) -> Finding {
        let Effect::Append { request, .. } = effect else {
            return Ok(());
        };
        let sender = format!("{}:{}", request.sender_id, request.sender_type);
        if self.is_member(&request.conversation_id, &sender) {
            Ok(())
        } else {
            Err((
                NAME,
                format!(
                    "asked to store {:?} in {} from {sender}, not a member",
                    request.content, request.conversation_id
                ),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_for_a_conversation_of_others_is_a_violation() {
        let layout = Layout::new(10, 1);
        let mut check = MembersOnly::new(&layout);
        let to_g0 = r#"42/chat,["message:new",{"conversationId":"g0","seq":1}]"#;
        assert!(check.sent("u0:customer", to_g0).is_ok());
        assert!(
            check.sent("u7:customer", to_g0).is_err(),
            "u7 is in g1 and x0 only"
        );
        assert!(check.sent("h0:customer", to_g0).is_err());
        // The operator lets u0 out of g0 and u7 in.
        check.set("g0", &[1, 2, 3, 4, 7].into_iter().collect());
        assert!(check.sent("u0:customer", to_g0).is_err());
        assert!(check.sent("u7:customer", to_g0).is_ok());
        check.trespasses(1, "h0:customer".into());
        let refused = r#"43/chat,3[{"ok":false,"error":{"code":"forbidden"}}]"#;
        assert!(check.hostile_received(1, "h0:customer", refused).is_ok());
        let granted = r#"43/chat,3[{"ok":true}]"#;
        assert!(check.hostile_received(1, "h0:customer", granted).is_err());
        assert!(
            check.hostile_received(2, "h0:customer", granted).is_ok(),
            "not trespassing"
        );
        check.closed(1);
        assert!(check.hostile_received(1, "h0:customer", granted).is_ok());
    }

    #[test]
    fn notifications_catch_ups_and_history_pages_go_to_members_only() {
        let layout = Layout::new(10, 1);
        let mut check = MembersOnly::new(&layout);
        let note = r#"42/chat,["message:notification",{"conversationId":"g0","message":{}}]"#;
        let missed = r#"43/chat,1[{"ok":true,"conversationId":"g0","lastSeq":1,"missed":[{"conversationId":"g0","seq":1}]}]"#;
        let page = r#"43/chat,2[{"ok":true,"messages":[{"conversationId":"g0","seq":1}]}]"#;
        let empty = r#"43/chat,3[{"ok":true,"messages":[]}]"#;
        for frame in [note, missed, page] {
            assert!(check.sent("u0:customer", frame).is_ok(), "{frame}");
        }
        check.set("g0", &[1, 2, 3, 4].into_iter().collect());
        for frame in [note, missed, page] {
            assert!(check.sent("u0:customer", frame).is_err(), "{frame}");
        }
        assert!(check.sent("u0:customer", empty).is_ok(), "nothing in it");
    }
}
