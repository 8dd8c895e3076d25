//! Every connected link gets the application `heartbeat` every `heartbeat.interval_ms`,
//! carrying the server's clock.
//!
//! Watched from the server's end of the wire: a link is connected from the server's
//! `connection:success` on it until a namespace DISCONNECT crosses it or it closes; its
//! next `heartbeat` is due one interval after that frame or after the heartbeat before,
//! and comes neither later nor sooner; its `timestamp` is the server's wall clock in
//! milliseconds when it is sent.

use std::collections::BTreeMap;

use heartline_core::Instant;

use super::deadlines::Deadlines;
use super::wire::{chat_data, is_chat_disconnect};
use super::Finding;

/// The checker's name.
pub const NAME: &str = "heartbeat-cadence";

/// See the module docs.
#[derive(Debug, Default)]
pub struct Heartbeat {
    interval_ms: u64,
    wall_epoch_ms: u64,
    /// Connected links: when their last heartbeat (or connect) was sent.
    last: BTreeMap<u64, Instant>,
    due: Deadlines,
    /// Heartbeats seen.
    pub sent: u64,
    wrong: Option<String>,
}

impl Heartbeat {
    /// `interval_ms`: `heartbeat.interval_ms`; `wall_epoch_ms`: the wall clock at the
    /// simulation's zero.
    pub fn new(interval_ms: u64, wall_epoch_ms: u64) -> Self {
        Heartbeat {
            interval_ms,
            wall_epoch_ms,
            ..Heartbeat::default()
        }
    }

    /// The server's wall clock was stepped: it now reads `wall_epoch_ms` at the simulated
    /// clock's zero.
    pub fn stepped(&mut self, wall_epoch_ms: u64) {
        self.wall_epoch_ms = wall_epoch_ms;
    }

    fn expect_next(&mut self, now: Instant, link: u64) {
        self.last.insert(link, now);
        self.due.set(link, now.add_ms(self.interval_ms));
    }

    /// The server sent `text` on `link` at `now`.
    pub fn sent(&mut self, now: Instant, link: u64, text: &str) {
        if text.starts_with("42/chat,[\"connection:success\"") {
            self.expect_next(now, link);
        } else if is_chat_disconnect(text) {
            self.gone(link);
        } else if text.starts_with("42/chat,[\"heartbeat\",") {
            self.sent += 1;
            let stamp = chat_data(text).and_then(|(_, _, v)| v[1]["timestamp"].as_u64());
            let wall = self.wall_epoch_ms + now.as_millis();
            let problem = match self.last.get(&link) {
                None => Some("on a link with no namespace connected".to_owned()),
                Some(last) if now.ms_since(*last) < self.interval_ms => Some(format!(
                    "{}ms after the one before (interval {}ms)",
                    now.ms_since(*last),
                    self.interval_ms
                )),
                Some(_) if stamp != Some(wall) => {
                    Some(format!("stamped {stamp:?}, the server's clock is {wall}"))
                }
                Some(_) => None,
            };
            if let Some(problem) = problem {
                self.wrong
                    .get_or_insert_with(|| format!("ws{link}: a heartbeat at {now} {problem}"));
            }
            self.expect_next(now, link);
        }
    }

    /// The server received `text` on `link`.
    pub fn received(&mut self, link: u64, text: &str) {
        if is_chat_disconnect(text) {
            self.gone(link);
        }
    }

    /// `link` closed, or left the namespace.
    pub fn gone(&mut self, link: u64) {
        self.last.remove(&link);
        self.due.remove(link);
    }

    /// The server died: its links are gone with it.
    pub fn forget_all(&mut self) {
        self.last.clear();
        self.due.clear();
    }

    /// Checks what was sent and the earliest heartbeat due against `now`.
    pub fn check(&mut self, now: Instant) -> Finding {
        if let Some(what) = self.wrong.take() {
            return Err((NAME, what));
        }
        match self.due.overdue(now) {
            Some((due, link)) => {
                self.gone(link);
                Err((
                    NAME,
                    format!("ws{link}: no heartbeat by {now}; one was due at {due}"),
                ))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    fn beat(wall: u64) -> String {
        format!(r#"42/chat,["heartbeat",{{"timestamp":{wall}}}]"#)
    }

    #[test]
    fn heartbeats_come_each_interval_with_the_servers_clock() {
        let success = r#"42/chat,["connection:success",{"userId":"u"}]"#;
        let mut h = Heartbeat::new(100, 1_000);
        h.sent(at(0), 1, success);
        h.sent(at(100), 1, &beat(1_100));
        assert!(h.check(at(200)).is_ok());
        assert!(h.check(at(201)).is_err(), "the second one is late");

        let mut h = Heartbeat::new(100, 1_000);
        h.sent(at(0), 1, success);
        h.sent(at(99), 1, &beat(1_099));
        assert!(h.check(at(99)).is_err(), "too soon");

        let mut h = Heartbeat::new(100, 1_000);
        h.sent(at(0), 1, success);
        h.sent(at(100), 1, &beat(7));
        assert!(h.check(at(100)).is_err(), "not the server's clock");

        let mut h = Heartbeat::new(100, 1_000);
        h.sent(at(0), 1, success);
        h.sent(at(0), 2, success);
        h.received(1, "41/chat,");
        h.sent(at(50), 2, "41/chat,");
        assert!(h.check(at(500)).is_ok(), "left the namespace, nothing due");
        h.sent(at(500), 2, &beat(1_500));
        assert!(
            h.check(at(500)).is_err(),
            "a heartbeat with no namespace connected"
        );
    }
}
