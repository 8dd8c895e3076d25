//! A silent peer is closed within `ping_interval + ping_timeout` of its last sign of life.
//!
//! The server PINGs `ping_interval` after the open or the last PONG, and gives up
//! `ping_timeout` later. Watched from the wire: a link's last sign of life is its open or
//! the last PONG that answered an outstanding PING, both as the server received them; the
//! server's close of the link must come by that plus the bound ([`Deadlines`]); and a PONG
//! or a close that itself comes past the deadline is a violation as it arrives, before it
//! would clear the watch, as the step that brings it may be the first one past the
//! deadline.
//!
//! The other way round, no live peer is closed as dead: a close for a ping timeout must
//! come with a PING outstanding, unanswered at the server, sent at least `ping_timeout`
//! before (the server's own close reason is not taken on trust).
//!
//! A long-polling session is watched as one, whichever requests carry it (and the
//! WebSocket it may move to): its open is the handshake's answer, its PINGs are those its
//! answers carry and its PONGs those its POSTs do. A PING the server queued for a client
//! that never came to fetch it is on no wire, so its ping-timeout close is held to the
//! schedule instead: not before `ping_interval + ping_timeout` after its last sign of
//! life, when the server's own PING would be due and then overdue. Its close is the
//! server letting the session go, seen from the server's side, as a client that has
//! vanished is never told.

use std::collections::BTreeMap;

use heartline_core::Instant;

use super::deadlines::Deadlines;
use super::{watched_name as name, Finding};

/// The checker's name.
pub const NAME: &str = "dead-peer-closed";

#[derive(Clone, Copy, Debug)]
struct Watch {
    last_life: Instant,
    /// When the PING awaiting its PONG was sent.
    ping_outstanding: Option<Instant>,
    /// A long-polling session, named by its handshake's link.
    polling: bool,
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct DeadPeer {
    bound_ms: u64,
    ping_timeout_ms: u64,
    links: BTreeMap<u64, Watch>,
    deadlines: Deadlines,
    /// Longest time from last sign of life to a ping-timeout close.
    pub worst_ms: u64,
    /// Ping-timeout closes seen.
    pub detected: u64,
    /// A sign of life or a close that came after its link's deadline, as first seen.
    late: Option<String>,
}

impl DeadPeer {
    /// The server's ping interval and timeout.
    pub fn new(ping_interval_ms: u64, ping_timeout_ms: u64) -> Self {
        DeadPeer {
            bound_ms: ping_interval_ms + ping_timeout_ms,
            ping_timeout_ms,
            ..DeadPeer::default()
        }
    }

    fn set(&mut self, link: u64, w: Watch) {
        self.links.insert(link, w);
        self.deadlines.set(link, w.last_life.add_ms(self.bound_ms));
    }

    /// The server accepted a link.
    pub fn opened(&mut self, now: Instant, link: u64) {
        self.set(
            link,
            Watch {
                last_life: now,
                ping_outstanding: None,
                polling: false,
            },
        );
    }

    /// The server answered a polling handshake on `link`: the session it opened is
    /// watched under that name.
    pub fn opened_polling(&mut self, now: Instant, link: u64) {
        self.set(
            link,
            Watch {
                last_life: now,
                ping_outstanding: None,
                polling: true,
            },
        );
    }

    /// The server sent a PING.
    pub fn ping(&mut self, now: Instant, link: u64) {
        if let Some(w) = self.links.get_mut(&link) {
            w.ping_outstanding.get_or_insert(now);
        }
    }

    /// Notes a link still open past its deadline, seen as `what` arrives at `now`.
    fn past_deadline(&mut self, now: Instant, link: u64, w: Watch, what: &str) {
        let deadline = w.last_life.add_ms(self.bound_ms);
        if deadline < now && self.late.is_none() {
            self.late = Some(format!(
                "{} silent since {} still open at {now}, when {what} came (bound {}ms)",
                name(link, w.polling),
                w.last_life,
                self.bound_ms
            ));
        }
    }

    /// The server received a PONG.
    pub fn pong(&mut self, now: Instant, link: u64) {
        if let Some(w) = self.links.get(&link).copied() {
            self.past_deadline(now, link, w, "a PONG");
            if w.ping_outstanding.is_some() {
                self.set(
                    link,
                    Watch {
                        last_life: now,
                        ping_outstanding: None,
                        ..w
                    },
                );
            }
        }
    }

    /// The server's side of a link is gone; `ping_timeout` if that was the reason.
    pub fn closed(&mut self, now: Instant, link: u64, ping_timeout: bool) -> Finding {
        let mut finding = Ok(());
        if let Some(w) = self.links.remove(&link) {
            self.past_deadline(now, link, w, "its close");
            self.deadlines.remove(link);
            if ping_timeout {
                let due = if w.polling {
                    Some(w.last_life.add_ms(self.bound_ms))
                } else {
                    w.ping_outstanding.map(|at| at.add_ms(self.ping_timeout_ms))
                };
                if due.is_none_or(|due| now < due) {
                    let ping = match (w.polling, w.ping_outstanding) {
                        (true, _) => format!(
                            "its last sign of life at {} (bound {}ms)",
                            w.last_life, self.bound_ms
                        ),
                        (false, None) => "its PING answered".to_owned(),
                        (false, Some(at)) => {
                            format!("its PING sent at {at} (timeout {}ms)", self.ping_timeout_ms)
                        }
                    };
                    finding = Err((
                        NAME,
                        format!(
                            "{} closed at {now} for a ping timeout, {ping}",
                            name(link, w.polling)
                        ),
                    ));
                }
                self.detected += 1;
                self.worst_ms = self.worst_ms.max(now.ms_since(w.last_life));
            }
        }
        finding
    }

    /// The server died: its links are gone with it.
    pub fn forget_all(&mut self) {
        self.links.clear();
        self.deadlines.clear();
    }

    /// Links the server still holds.
    pub fn watched(&self) -> usize {
        self.links.len()
    }

    /// Fails if a link outlived its deadline.
    pub fn check(&self, now: Instant) -> Finding {
        if let Some(late) = &self.late {
            return Err((NAME, late.clone()));
        }
        match self.deadlines.overdue(now) {
            Some((deadline, link)) => Err((
                NAME,
                format!(
                    "{} silent since {} still open at {} (bound {}ms)",
                    name(link, self.links.get(&link).is_some_and(|w| w.polling)),
                    Instant::from_millis(deadline.as_millis() - self.bound_ms),
                    now,
                    self.bound_ms
                ),
            )),
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

    #[test]
    fn a_pong_or_close_that_comes_late_is_caught_as_it_arrives() {
        // Interval 10, timeout 20: within the bound, a PONG answers the PING, a
        // ping-timeout close ends the link.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        d.ping(at(10), 1);
        d.pong(at(30), 1);
        d.ping(at(40), 1);
        assert!(d.closed(at(60), 1, true).is_ok());
        assert!(d.check(at(60)).is_ok());
        // A PONG past the deadline, in the first step past it, would clear the watch.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        d.ping(at(10), 1);
        d.pong(at(31), 1);
        assert!(d.check(at(31)).is_err());
        // So would a close past the deadline.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        assert!(d.closed(at(31), 1, false).is_ok());
        assert!(d.check(at(31)).is_err());
    }

    #[test]
    fn a_ping_timeout_close_of_a_live_peer_is_caught() {
        // Its PING answered.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        d.ping(at(10), 1);
        d.pong(at(12), 1);
        assert!(d.closed(at(30), 1, true).is_err());
        // Its PING not yet due.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        d.ping(at(10), 1);
        assert!(d.closed(at(29), 1, true).is_err());
        // No PING at all.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        assert!(d.closed(at(5), 1, true).is_err());
        // Due: a close for another reason is not judged here.
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        d.ping(at(10), 1);
        assert!(d.closed(at(30), 1, true).is_ok());
        let mut d = DeadPeer::new(10, 20);
        d.opened(at(0), 1);
        assert!(d.closed(at(5), 1, false).is_ok());
    }

    #[test]
    fn a_polling_session_is_held_to_the_schedule_of_its_pings() {
        // Interval 10, timeout 20. Its PING queued at 10 was never fetched: no PING on the
        // wire, yet the close at 30 is the schedule's.
        let mut d = DeadPeer::new(10, 20);
        d.opened_polling(at(0), 1);
        assert!(d.check(at(30)).is_ok());
        assert!(d.closed(at(30), 1, true).is_ok());
        // Answered at 12 (its PING fetched at 10): alive until 42.
        let mut d = DeadPeer::new(10, 20);
        d.opened_polling(at(0), 1);
        d.ping(at(10), 1);
        d.pong(at(12), 1);
        assert!(d.check(at(42)).is_ok());
        assert!(d.closed(at(41), 1, true).is_err());
        // Never closed: overdue after 42.
        let mut d = DeadPeer::new(10, 20);
        d.opened_polling(at(0), 1);
        d.ping(at(10), 1);
        d.pong(at(12), 1);
        let late = d.check(at(43)).expect_err("overdue");
        assert!(late.1.contains("polling session of http1"), "{late:?}");
    }
}
