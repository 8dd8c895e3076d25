//! Accepted sends per user key stay within the sliding window.
//!
//! An accepted send is one the store committed as new; its instant is when the gateway
//! admitted it (asked the store). In any window of `window_ms`, a user key has at most
//! `limit` of them, across server restarts too: a restarted gateway gets the last window's
//! sends back from the store.
//!
//! The store stamps a send with the server's wall clock, and a restarted gateway ages the
//! sends it gets back by that clock: a send stamped before the clock was stepped forward
//! looks that much older to it, and may leave its window sooner. No server can tell such a
//! send from an older one, so at a restart each send counts here from when the new
//! process takes it to have been made (earlier by the forward steps since it was stamped);
//! a step back only makes the server stricter than this check.

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
    /// The server's wall clock less the true time, milliseconds.
    offset_ms: i64,
    /// Sends asked of the store: their user, when, and the clock's offset then.
    admitted: BTreeMap<OpId, (String, Instant, i64)>,
    /// Committed sends per user, in the order they were admitted.
    accepted: BTreeMap<String, VecDeque<Accepted>>,
}

/// One committed send.
#[derive(Clone, Copy, Debug)]
struct Accepted {
    /// When the gateway admitted it, simulated milliseconds.
    at_ms: i64,
    /// The clock's offset when it was stamped.
    stamped: i64,
    /// When the server process running now takes it to have been made: `at_ms`, or
    /// earlier by the forward steps between its stamp and that process's start (below
    /// zero for one aged past the run's start).
    counts_from: i64,
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
            self.admitted.insert(*op, (user, now, self.offset_ms));
        }
    }

    /// The store finished an operation; `stored` if it committed a new message.
    pub fn completed(&mut self, op: OpId, stored: bool) -> Finding {
        let Some((user, at, offset)) = self.admitted.remove(&op) else {
            return Ok(());
        };
        if !stored {
            return Ok(());
        }
        let log = self.accepted.entry(user.clone()).or_default();
        let at_ms = ms(at);
        let window_ms = i64::try_from(self.window_ms).unwrap_or(i64::MAX);
        // Gone for good once a window past when it was made: a later process may take it
        // for older (a step forward), never for younger than that.
        while log
            .front()
            .is_some_and(|a| a.at_ms.saturating_add(window_ms) <= at_ms)
        {
            log.pop_front();
        }
        log.push_back(Accepted {
            at_ms,
            stamped: offset,
            counts_from: at_ms,
        });
        let counted: Vec<i64> = log
            .iter()
            .map(|a| a.counts_from)
            .filter(|t| t.saturating_add(window_ms) > at_ms)
            .collect();
        if counted.len() > self.limit {
            let first = counted.iter().copied().min().unwrap_or(at_ms);
            return Err((
                NAME,
                format!(
                    "{user}: {} sends accepted between {first}ms and {at}, limit {} per {}ms",
                    counted.len(),
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

    /// The server machine's wall clock now reads `offset_ms` from the true time.
    pub fn stepped(&mut self, offset_ms: i64) {
        self.offset_ms = offset_ms;
    }

    /// A new server process starts, reading the clock as it now is: each committed send
    /// counts from when that clock says it was made (see the module docs).
    pub fn restarted(&mut self) {
        let offset_ms = self.offset_ms;
        for a in self.accepted.values_mut().flat_map(|log| log.iter_mut()) {
            a.counts_from = a.at_ms - offset_ms.saturating_sub(a.stamped).max(0);
        }
    }
}

/// Simulated milliseconds as a signed count.
fn ms(at: Instant) -> i64 {
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use heartline_core::gateway::AppendRequest;

    use super::*;

    fn send(w: &mut RateWindow, op: u64, at_ms: u64) -> Finding {
        let request = AppendRequest {
            id: format!("m{op}"),
            conversation_id: "c".into(),
            sender_id: "u".into(),
            sender_type: "customer".into(),
            content: String::new(),
            temp_id: None,
            created_at_ms: 0,
        };
        let effect = Effect::Append {
            op: OpId(op),
            request,
        };
        w.effect(Instant::from_millis(at_ms), &effect);
        w.completed(OpId(op), true)
    }

    /// Two sends at 5 s and 6 s, limit 2 per 10 s. After a restart on a clock stepped 5 s
    /// forward they count from 0 s and 1 s, so a third at 10.5 s is within the limit as
    /// the new process sees it; without the step (or with one back) it is not.
    #[test]
    fn a_restart_on_a_clock_stepped_forward_ages_the_sends_before_it() {
        for (step_ms, over) in [(5_000, false), (0, true), (-5_000, true)] {
            let mut w = RateWindow::new(2, 10_000);
            assert!(send(&mut w, 1, 5_000).is_ok());
            assert!(send(&mut w, 2, 6_000).is_ok());
            w.stepped(step_ms);
            w.crash();
            w.restarted();
            assert_eq!(send(&mut w, 3, 10_500).is_err(), over, "step {step_ms}");
        }
    }

    /// Aging is reckoned from each send's own stamp at every restart: stepped forward,
    /// restarted, stepped back and restarted again, the sends count from when they were
    /// made again, as the second process takes them.
    #[test]
    fn a_second_restart_ages_from_the_stamp_not_from_the_first_restart() {
        let mut w = RateWindow::new(2, 10_000);
        assert!(send(&mut w, 1, 5_000).is_ok());
        assert!(send(&mut w, 2, 6_000).is_ok());
        w.stepped(5_000);
        w.crash();
        w.restarted();
        w.stepped(0);
        w.crash();
        w.restarted();
        assert!(send(&mut w, 3, 10_500).is_err(), "both count again");
    }

    /// A step larger than the run so far takes sends to before its start: they are out
    /// of every window, not held at the start.
    #[test]
    fn a_send_aged_past_the_start_of_the_run_is_out_of_the_window() {
        let mut w = RateWindow::new(2, 10_000);
        assert!(send(&mut w, 1, 1_000).is_ok());
        assert!(send(&mut w, 2, 2_000).is_ok());
        w.stepped(30_000);
        w.crash();
        w.restarted();
        assert!(send(&mut w, 3, 3_000).is_ok());
        assert!(send(&mut w, 4, 3_500).is_ok());
        assert!(send(&mut w, 5, 4_000).is_err(), "the limit still holds");
    }
}
