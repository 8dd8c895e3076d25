//! At most `per_user` live connections per user key.
//!
//! Counted from the server's notices (a connection is live from `Connected` to `Closed`),
//! not from the gateway's user index, so a bug in that index cannot hide itself. Checked at
//! the end of each step: a newer connection is announced just before the one it displaces
//! is closed, within the same input.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::gateway::UserKey;
use heartline_core::{Instant, SessionId};

use super::Finding;

/// The checker's name.
pub const NAME: &str = "per-user-limit";

/// See the module docs.
#[derive(Debug, Default)]
pub struct PerUser {
    limit: usize,
    live: BTreeMap<UserKey, BTreeSet<SessionId>>,
    last_change: BTreeMap<UserKey, Instant>,
    touched: BTreeSet<UserKey>,
}

impl PerUser {
    /// The limit to check.
    pub fn new(limit: usize) -> Self {
        PerUser {
            limit,
            ..PerUser::default()
        }
    }

    /// A connection authenticated.
    pub fn connected(&mut self, now: Instant, user: &UserKey, session: SessionId) {
        self.live.entry(user.clone()).or_default().insert(session);
        self.last_change.insert(user.clone(), now);
        self.touched.insert(user.clone());
    }

    /// A connection ended.
    pub fn closed(&mut self, now: Instant, user: &UserKey, session: SessionId) {
        if let Some(set) = self.live.get_mut(user) {
            set.remove(&session);
            if set.is_empty() {
                self.live.remove(user);
            }
        }
        self.last_change.insert(user.clone(), now);
    }

    /// The server died with every connection.
    pub fn crash(&mut self, now: Instant) {
        let users: Vec<UserKey> = self.live.keys().cloned().collect();
        for u in users {
            self.last_change.insert(u, now);
        }
        self.live.clear();
        self.touched.clear();
    }

    /// Live connections of a user.
    pub fn live(&self, user: &UserKey) -> usize {
        self.live.get(user).map_or(0, BTreeSet::len)
    }

    /// Users with a live connection.
    pub fn users(&self) -> impl Iterator<Item = &UserKey> {
        self.live.keys()
    }

    /// When a user's connections last changed.
    pub fn last_change(&self, user: &UserKey) -> Option<Instant> {
        self.last_change.get(user).copied()
    }

    /// Every user ever seen.
    pub fn known(&self) -> impl Iterator<Item = &UserKey> {
        self.last_change.keys()
    }

    /// Checks the users touched since the last check.
    pub fn check(&mut self) -> Finding {
        for user in std::mem::take(&mut self.touched) {
            let n = self.live(&user);
            if n > self.limit {
                let sessions: Vec<String> = self
                    .live
                    .get(&user)
                    .map(|s| s.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                return Err((
                    NAME,
                    format!(
                        "{user} has {n} live connections [{}], limit {}",
                        sessions.join(", "),
                        self.limit
                    ),
                ));
            }
        }
        Ok(())
    }
}
