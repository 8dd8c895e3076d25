//! Accepted sends per user key stay within the sliding window.
//!
//! An accepted send is one the store committed as new; its instant is when the gateway
//! admitted it (asked the store). In any window of `window_ms`, a user key has at most
//! `limit` of them, across server restarts too: a restarted gateway gets the last window's
//! sends back from the store.

use std::collections::{BTreeMap, VecDeque};

use heartline_core::gateway::{Effect, OpId};
use heartline_core::Instant;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "rate-window";

/// See the module docs.
#[derive(Debug, Default)]
pub struct RateWindow {
    limit: usize,
    window_ms: u64,
    admitted: BTreeMap<OpId, (String, Instant)>,
    accepted: BTreeMap<String, VecDeque<Instant>>,
}

impl RateWindow {
    /// The limit to check.
    pub fn new(limit: usize, window_ms: u64) -> Self {
        RateWindow {
            limit,
            window_ms,
            ..RateWindow::default()
        }
    }

    /// The gateway asked the store for something.
    pub fn effect(&mut self, now: Instant, effect: &Effect) {
        if let Effect::Append { op, request } = effect {
            let user = format!("{}:{}", request.sender_id, request.sender_type);
            self.admitted.insert(*op, (user, now));
        }
    }

    /// The store finished an operation; `stored` if it committed a new message.
    pub fn completed(&mut self, op: OpId, stored: bool) -> Finding {
        let Some((user, at)) = self.admitted.remove(&op) else {
            return Ok(());
        };
        if !stored {
            return Ok(());
        }
        let log = self.accepted.entry(user.clone()).or_default();
        while log.front().is_some_and(|t| t.add_ms(self.window_ms) <= at) {
            log.pop_front();
        }
        log.push_back(at);
        if log.len() > self.limit {
            let first = log.front().copied().unwrap_or(at);
            return Err((
                NAME,
                format!(
                    "{user}: {} sends accepted between {first} and {at}, limit {} per {}ms",
                    log.len(),
                    self.limit,
                    self.window_ms
                ),
            ));
        }
        Ok(())
    }

    /// The server restarted: operations in flight are gone; committed sends still count.
    pub fn crash(&mut self) {
        self.admitted.clear();
    }
}
