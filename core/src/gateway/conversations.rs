//! Conversations: who may read and write them, who has joined them, and how far they go.
//!
//! Membership is the authority for join, history and send; it comes in as input (loaded at
//! start, replaced through the HTTP API), never from a client. A room is the set of sessions
//! that joined a conversation; members connected elsewhere get notifications instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::gateway::io::{ErrorCode, Member};
use crate::gateway::user_key::UserKey;
use crate::ids::SessionId;

/// A conversation's members: user keys, sorted and without repeats, in exactly the room
/// they need (a member list is only ever replaced whole, so it needs no tree).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members(Box<[UserKey]>);

impl Members {
    /// Whether `user` is a member.
    pub fn contains(&self, user: &UserKey) -> bool {
        self.0.binary_search(user).is_ok()
    }

    /// The members in key order.
    pub fn iter(&self) -> std::slice::Iter<'_, UserKey> {
        self.0.iter()
    }
}

impl FromIterator<UserKey> for Members {
    fn from_iter<I: IntoIterator<Item = UserKey>>(keys: I) -> Members {
        let mut keys: Vec<UserKey> = keys.into_iter().collect();
        keys.sort_unstable();
        keys.dedup();
        Members(keys.into_boxed_slice())
    }
}

impl<'a> IntoIterator for &'a Members {
    type Item = &'a UserKey;
    type IntoIter = std::slice::Iter<'a, UserKey>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// One conversation.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    /// Member user keys.
    pub members: Members,
    /// The last `seq` stored.
    pub last_seq: u64,
    /// Joined sessions, with their user keys.
    pub room: BTreeMap<SessionId, UserKey>,
}

/// Every conversation, and the reverse index from user to conversations.
///
/// Memberships live in memory for as long as the conversations do, so each text is kept
/// once: a conversation's id is shared between its entry and every member's index, and a
/// user's key between the index and every conversation that names the user (a membership
/// costs two set entries, not two copies of the texts).
#[derive(Clone, Debug, Default)]
pub struct Conversations {
    by_id: BTreeMap<Arc<str>, Conversation>,
    // Looked up, never iterated in an order that reaches outputs.
    by_user: HashMap<UserKey, BTreeSet<Arc<str>>>,
}

impl Conversations {
    /// Creates or replaces a conversation's members; returns sessions that were in its room
    /// and whose user is no longer a member (they have been removed from the room).
    pub fn put(&mut self, id: &str, members: &[Member], last_seq: u64) -> Vec<SessionId> {
        let id: Arc<str> = match self.by_id.get_key_value(id) {
            Some((known, _)) => Arc::clone(known),
            None => Arc::from(id),
        };
        // The users' keys as the index already holds them, before the old members leave it.
        let keys: Members = members
            .iter()
            .map(|m| {
                let key = m.key();
                match self.by_user.get_key_value(&key) {
                    Some((known, _)) => known.clone(),
                    None => key,
                }
            })
            .collect();
        let conv = self.by_id.entry(Arc::clone(&id)).or_default();
        for old in &conv.members {
            if let Some(set) = self.by_user.get_mut(old) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_user.remove(old);
                }
            }
        }
        conv.members = keys;
        conv.last_seq = conv.last_seq.max(last_seq);
        for key in &conv.members {
            self.by_user
                .entry(key.clone())
                .or_default()
                .insert(Arc::clone(&id));
        }
        let members = &conv.members;
        let evicted: Vec<SessionId> = conv
            .room
            .iter()
            .filter(|(_, user)| !members.contains(user))
            .map(|(s, _)| *s)
            .collect();
        for s in &evicted {
            conv.room.remove(s);
        }
        evicted
    }

    /// The conversation, if `user` may use it.
    pub fn access(&self, id: &str, user: &UserKey) -> Result<&Conversation, ErrorCode> {
        let conv = self.by_id.get(id).ok_or(ErrorCode::NotFound)?;
        if conv.members.contains(user) {
            Ok(conv)
        } else {
            Err(ErrorCode::Forbidden)
        }
    }

    /// The conversation, mutably.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut Conversation> {
        self.by_id.get_mut(id)
    }

    /// The conversation.
    pub fn get(&self, id: &str) -> Option<&Conversation> {
        self.by_id.get(id)
    }

    /// Users who share at least one conversation with `user` (not `user` itself). Costs
    /// the size of `user`'s conversations, not the number of users.
    pub fn partners(&self, user: &UserKey) -> BTreeSet<UserKey> {
        let mut out = BTreeSet::new();
        for id in self.by_user.get(user).into_iter().flatten() {
            if let Some(conv) = self.by_id.get(id) {
                out.extend(conv.members.iter().filter(|m| *m != user).cloned());
            }
        }
        out
    }

    /// Number of conversations.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            user_id: id.into(),
            user_type: "customer".into(),
        }
    }

    fn key(id: &str) -> UserKey {
        UserKey::new(id, "customer")
    }

    #[test]
    fn members_are_sorted_once_each_and_found() {
        let mut c = Conversations::default();
        c.put(
            "c1",
            &[member("u3"), member("u1"), member("u3"), member("u2")],
            0,
        );
        let conv = c.get("c1").expect("put");
        let ids: Vec<&str> = conv.members.iter().map(UserKey::user_id).collect();
        assert_eq!(ids, ["u1", "u2", "u3"]);
        assert!(conv.members.contains(&key("u2")));
        assert!(!conv.members.contains(&key("u4")));
        assert!(!conv.members.contains(&UserKey::new("u2", "agent")));
        assert_eq!(c.access("c1", &key("u4")).err(), Some(ErrorCode::Forbidden));
        assert_eq!(c.access("c9", &key("u1")).err(), Some(ErrorCode::NotFound));
    }

    #[test]
    fn a_user_named_by_many_conversations_is_one_copy() {
        let mut c = Conversations::default();
        c.put("c1", &[member("u1"), member("u2")], 0);
        c.put("c2", &[member("u2"), member("u3")], 0);
        // Replacing c1's list keeps u2 (still in c2's and c1's) as the one copy.
        c.put("c1", &[member("u2"), member("u4")], 0);
        let in_c1 = c.get("c1").and_then(|v| v.members.iter().next().cloned());
        let in_c2 = c.get("c2").and_then(|v| v.members.iter().next().cloned());
        let (Some(a), Some(b)) = (in_c1, in_c2) else {
            panic!("both conversations name u2");
        };
        assert_eq!(a.user_id(), "u2");
        assert!(a.same_copy(&b));
    }

    #[test]
    fn replaced_members_leave_the_index_and_the_room() {
        let mut c = Conversations::default();
        c.put("c1", &[member("u1"), member("u2")], 4);
        c.put("c2", &[member("u1"), member("u3")], 0);
        let conv = c.get_mut("c1").expect("put");
        conv.room.insert(SessionId(1), key("u1"));
        conv.room.insert(SessionId(2), key("u2"));
        let evicted = c.put("c1", &[member("u2")], 0);
        assert_eq!(evicted, [SessionId(1)]);
        assert_eq!(c.get("c1").map(|v| v.last_seq), Some(4));
        let partners: Vec<String> = c
            .partners(&key("u1"))
            .iter()
            .map(|k| k.to_string())
            .collect();
        assert_eq!(partners, ["u3:customer"]);
        assert!(c.partners(&key("u2")).is_empty());
        c.put("c2", &[], 0);
        assert!(c.partners(&key("u3")).is_empty());
        assert!(!c.by_user.contains_key(&key("u1")));
        assert_eq!(c.len(), 2);
    }
}
