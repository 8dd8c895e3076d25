//! A user's recently accepted messages, by `tempId`, to answer retries at once.
//!
//! Every send with a `tempId` looks here first, and every accepted one is added, so a
//! lookup must not cost a string comparison per remembered message: each entry has a
//! 64-bit fingerprint of its `tempId` (FNV-1a, the same on every run and every node),
//! kept apart from the messages so that a lookup scans one small contiguous array, and
//! only a matching fingerprint leads to comparing the strings. Most users never send, and
//! every idle connection's user carries this: it costs one pointer until the first send.

use std::collections::VecDeque;

use crate::gateway::io::Message;

/// The last accepted messages that carried a `tempId`, oldest first.
#[derive(Debug, Default)]
pub(crate) struct RecentSends {
    entries: Option<Box<Entries>>,
}

#[derive(Debug, Default)]
struct Entries {
    /// Fingerprints of the messages' tempIds, index for index with `messages`.
    keys: VecDeque<u64>,
    messages: VecDeque<Message>,
}

fn fingerprint(temp_id: &str) -> u64 {
    temp_id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl RecentSends {
    /// The remembered message sent with `temp_id`, if any.
    pub(crate) fn find(&self, temp_id: &str) -> Option<&Message> {
        let key = fingerprint(temp_id);
        let e = self.entries.as_deref()?;
        e.keys
            .iter()
            .zip(&e.messages)
            .find(|(k, m)| **k == key && m.temp_id.as_deref() == Some(temp_id))
            .map(|(_, m)| m)
    }

    /// Remembers `message` under its `tempId` (nothing without one, nothing if that
    /// `tempId` is remembered already), keeping at most `cap` messages.
    pub(crate) fn remember(&mut self, message: Message, cap: usize) {
        let Some(temp_id) = message.temp_id.as_deref() else {
            return;
        };
        if self.find(temp_id).is_some() {
            return;
        }
        let key = fingerprint(temp_id);
        let e = self.entries.get_or_insert_with(Box::default);
        e.keys.push_back(key);
        e.messages.push_back(message);
        while e.messages.len() > cap {
            e.keys.pop_front();
            e.messages.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, temp_id: Option<&str>) -> Message {
        Message {
            id: format!("m{seq}"),
            conversation_id: "c".into(),
            seq,
            sender_id: "u".into(),
            sender_type: "t".into(),
            content: "x".into(),
            temp_id: temp_id.map(str::to_owned),
            created_at_ms: 0,
        }
    }

    #[test]
    fn finds_by_temp_id_and_forgets_the_oldest() {
        let mut r = RecentSends::default();
        r.remember(msg(1, Some("a")), 2);
        r.remember(msg(2, None), 2);
        r.remember(msg(3, Some("b")), 2);
        r.remember(msg(4, Some("a")), 2); // already remembered: kept as first stored
        assert_eq!(r.find("a").map(|m| m.seq), Some(1));
        assert_eq!(r.find("b").map(|m| m.seq), Some(3));
        r.remember(msg(5, Some("c")), 2);
        assert_eq!(r.find("a"), None);
        assert_eq!(r.find("b").map(|m| m.seq), Some(3));
        assert_eq!(r.find("c").map(|m| m.seq), Some(5));
        assert_eq!(r.find(""), None);
    }

    #[test]
    fn equal_fingerprints_still_compare_the_strings() {
        let mut r = RecentSends::default();
        r.remember(msg(1, Some("a")), 4);
        // Plant an entry whose fingerprint collides with "z" but whose tempId differs.
        let e = r.entries.get_or_insert_with(Box::default);
        e.keys.push_back(fingerprint("z"));
        e.messages.push_back(msg(2, Some("y")));
        assert_eq!(r.find("z"), None);
        assert_eq!(r.find("y"), None); // its fingerprint is not that of "y"
        assert_eq!(r.find("a").map(|m| m.seq), Some(1));
    }
}
