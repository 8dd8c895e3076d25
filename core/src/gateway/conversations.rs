//! Conversations: who may read and write them, who has joined them, and how far they go.
//!
//! Membership is the authority for join, history and send; it comes in as input (loaded at
//! start, replaced through the HTTP API), never from a client. A room is the set of sessions
//! that joined a conversation; members connected elsewhere get notifications instead.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::gateway::io::{ErrorCode, Member};
use crate::gateway::user_key::UserKey;
use crate::ids::SessionId;

/// One conversation.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    /// Member user keys.
    pub members: BTreeSet<UserKey>,
    /// The last `seq` stored.
    pub last_seq: u64,
    /// Joined sessions, with their user keys.
    pub room: BTreeMap<SessionId, UserKey>,
}

/// Every conversation, and the reverse index from user to conversations.
#[derive(Clone, Debug, Default)]
pub struct Conversations {
    by_id: BTreeMap<String, Conversation>,
    // Looked up, never iterated in an order that reaches outputs.
    by_user: HashMap<UserKey, BTreeSet<String>>,
}

impl Conversations {
    /// Creates or replaces a conversation's members; returns sessions that were in its room
    /// and whose user is no longer a member (they have been removed from the room).
    pub fn put(&mut self, id: &str, members: &[Member], last_seq: u64) -> Vec<SessionId> {
        let conv = self.by_id.entry(id.to_owned()).or_default();
        for old in &conv.members {
            if let Some(set) = self.by_user.get_mut(old) {
                set.remove(id);
                if set.is_empty() {
                    self.by_user.remove(old);
                }
            }
        }
        conv.members = members.iter().map(Member::key).collect();
        conv.last_seq = conv.last_seq.max(last_seq);
        for key in &conv.members {
            self.by_user
                .entry(key.clone())
                .or_default()
                .insert(id.to_owned());
        }
        let members = &conv.members;
        let evicted: Vec<SessionId> = conv
            .room
            .iter()
            .filter(|(_, user)| !members.contains(*user))
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
