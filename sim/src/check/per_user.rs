//! At most `per_user` live connections per user key, and a connection displaced only
//! from a user over that limit, oldest first, for the newest.
//!
//! Counted twice, neither from the gateway's user index, so a bug in that index cannot
//! hide itself: from the server's notices (a connection is live from `Connected` to
//! `Closed`), and from the wire (a link is live from the server's `connection:success` on
//! it, for the user that frame names, until a namespace DISCONNECT crosses it either way
//! or it closes), so that a displaced connection the server forgot but left connected
//! shows too. Checked at the end of each step: a newer connection is announced just
//! before the one it displaces is closed, within the same input.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::gateway::UserKey;
use heartline_core::{Instant, SessionId};

use super::wire::{chat_data, is_chat_disconnect};
use super::Finding;

/// The checker's name.
pub const NAME: &str = "per-user-limit";

/// See the module docs.
#[derive(Debug, Default)]
pub struct PerUser {
    limit: usize,
    live: BTreeMap<UserKey, BTreeSet<SessionId>>,
    /// By the wire: user (`"id:type"`) to its live links, and each live link's user.
    wire: BTreeMap<String, BTreeSet<u64>>,
    wire_user: BTreeMap<u64, String>,
    wire_touched: BTreeSet<String>,
    last_change: BTreeMap<UserKey, Instant>,
    touched: BTreeSet<UserKey>,
    /// Connections a `Replaced` notice displaced, until their close.
    displaced: BTreeSet<SessionId>,
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
        self.displaced.remove(&session);
        if let Some(set) = self.live.get_mut(user) {
            set.remove(&session);
            if set.is_empty() {
                self.live.remove(user);
            }
        }
        self.last_change.insert(user.clone(), now);
    }

    /// The server displaced `old` for `new`: only a user over its limit is displaced
    /// from, the oldest of its connections (by session, the order they opened in) goes
    /// first, and the one named as its successor is the newest.
    pub fn replaced(&mut self, user: &UserKey, old: SessionId, new: SessionId) -> Finding {
        let live: Vec<SessionId> = self
            .live
            .get(user)
            .into_iter()
            .flatten()
            .filter(|s| !self.displaced.contains(s))
            .copied()
            .collect();
        self.displaced.insert(old);
        if live.len() <= self.limit {
            return Err((
                NAME,
                format!(
                    "{user}: {old} displaced with {} live connections, limit {}",
                    live.len(),
                    self.limit
                ),
            ));
        }
        if live.first() != Some(&old) {
            return Err((
                NAME,
                format!(
                    "{user}: {old} displaced before the older {:?}",
                    live.first()
                ),
            ));
        }
        if live.last() != Some(&new) {
            return Err((
                NAME,
                format!(
                    "{user}: {old} displaced for {new}, not the newest {:?}",
                    live.last()
                ),
            ));
        }
        Ok(())
    }

    /// The server died with every connection.
    pub fn crash(&mut self, now: Instant) {
        let users: Vec<UserKey> = self.live.keys().cloned().collect();
        for u in users {
            self.last_change.insert(u, now);
        }
        self.live.clear();
        self.displaced.clear();
        self.touched.clear();
        self.wire.clear();
        self.wire_user.clear();
        self.wire_touched.clear();
    }

    /// The server sent `text` on `link`.
    pub fn server_sent(&mut self, link: u64, text: &str) {
        if text.starts_with("42/chat,[\"connection:success\"") {
            let Some((_, _, data)) = chat_data(text) else {
                return;
            };
            let user = format!(
                "{}:{}",
                data[1]["userId"].as_str().unwrap_or(""),
                data[1]["userType"].as_str().unwrap_or("")
            );
            self.wire.entry(user.clone()).or_default().insert(link);
            self.wire_user.insert(link, user.clone());
            self.wire_touched.insert(user);
        } else if is_chat_disconnect(text) {
            self.link_gone(link);
        }
    }

    /// The server received `text` on `link`.
    pub fn server_received(&mut self, link: u64, text: &str) {
        if is_chat_disconnect(text) {
            self.link_gone(link);
        }
    }

    /// `link` closed, at either end as the server sees it.
    pub fn link_gone(&mut self, link: u64) {
        if let Some(user) = self.wire_user.remove(&link) {
            if let Some(set) = self.wire.get_mut(&user) {
                set.remove(&link);
                if set.is_empty() {
                    self.wire.remove(&user);
                }
            }
        }
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
        for user in std::mem::take(&mut self.wire_touched) {
            let links = self.wire.get(&user);
            if links.map_or(0, BTreeSet::len) > self.limit {
                let links: Vec<String> = links
                    .into_iter()
                    .flatten()
                    .map(|l| format!("ws{l}"))
                    .collect();
                return Err((
                    NAME,
                    format!(
                        "{user} has {} connected links [{}], limit {}",
                        links.len(),
                        links.join(", "),
                        self.limit
                    ),
                ));
            }
        }
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
