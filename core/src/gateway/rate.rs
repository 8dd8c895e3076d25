//! The exact sliding-window rate limit: at most `limit` accepted sends in ANY window of
//! `window_ms`, not in fixed buckets.
//!
//! A fixed-window counter lets `2 * limit` through around a bucket edge; a token bucket
//! allows more than `limit` over a window once it has refilled mid-window. The contract asks
//! for the exact rule, so each user key keeps the times of its accepted sends from the last
//! window: at most `limit` instants, so memory per user is bounded, and the log empties (and
//! is reclaimed) once a window passes without sends.

use std::collections::VecDeque;

use crate::time::Instant;

/// The accepted sends of one user key within the last window, kept as the instants at which
/// each leaves the window (admission + window). Keeping expiries rather than admissions lets
/// a window be restored after a restart: a send made before the driver's epoch still has an
/// expiry the core can represent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    expiries: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Forgets sends that no window ending after `now` can contain.
    pub fn prune(&mut self, now: Instant, _window_ms: u64) {
        while let Some(&t) = self.expiries.front() {
            if t <= now {
                self.expiries.pop_front();
            } else {
                break;
            }
        }
    }

    /// Admits a send at `now` if the window ending at `now` holds fewer than `limit`
    /// sends; otherwise returns how long until one falls out of it.
    pub fn try_admit(&mut self, now: Instant, limit: usize, window_ms: u64) -> Result<(), u64> {
        self.prune(now, window_ms);
        if self.expiries.len() < limit {
            self.insert(now.add_ms(window_ms));
            return Ok(());
        }
        let first_out = self.expiries.front().copied().unwrap_or(now);
        Err(first_out.ms_since(now).max(1))
    }

    /// Remembers a send accepted before this process started, still in the window for
    /// `remaining_ms` more. Keeps the log in expiry order.
    ///
    /// No send leaves the window later than one admitted now: a send stamped after this
    /// process's clock (the wall clock stepped back across a restart) counts as made now,
    /// rather than holding a place in the window for as long as the clock was off.
    pub fn restore(&mut self, now: Instant, remaining_ms: u64, window_ms: u64) {
        self.insert(now.add_ms(remaining_ms.min(window_ms)));
    }

    /// Adds an expiry in order, so that [`SlidingWindow::prune`] and
    /// [`SlidingWindow::expires_at`] hold whatever the times given (at most `limit` entries:
    /// a binary search).
    fn insert(&mut self, expiry: Instant) {
        let pos = self.expiries.partition_point(|&t| t <= expiry);
        self.expiries.insert(pos, expiry);
    }

    /// MUTATION (test-only): the fixed-window counter the sliding window exists to avoid.
    #[cfg(feature = "mutations")]
    pub fn try_admit_fixed(
        &mut self,
        now: Instant,
        limit: usize,
        window_ms: u64,
    ) -> Result<(), u64> {
        let start = Instant::from_millis(now.as_millis() - now.as_millis() % window_ms);
        self.expiries.retain(|&t| t >= start.add_ms(window_ms));
        if self.expiries.len() < limit {
            self.expiries.push_back(now.add_ms(window_ms));
            return Ok(());
        }
        Err(start.add_ms(window_ms).ms_since(now).max(1))
    }

    /// Takes back one admission made at `at` (its send was not accepted after all).
    pub fn refund(&mut self, at: Instant, window_ms: u64) {
        let expiry = at.add_ms(window_ms);
        if let Some(pos) = self.expiries.iter().rposition(|&t| t == expiry) {
            self.expiries.remove(pos);
        }
    }

    /// Whether no send is remembered.
    pub fn is_empty(&self) -> bool {
        self.expiries.is_empty()
    }

    /// When the last remembered send leaves the window, if any.
    pub fn expires_at(&self, _window_ms: u64) -> Option<Instant> {
        self.expiries.back().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn no_double_burst_across_a_window_edge() {
        let mut w = SlidingWindow::default();
        for t in 0..3 {
            assert!(w.try_admit(at(9_990 + t), 3, 10_000).is_ok());
        }
        // A fixed window would reset at 10_000 and admit three more here.
        assert_eq!(w.try_admit(at(10_001), 3, 10_000), Err(9_989));
        assert_eq!(w.try_admit(at(19_989), 3, 10_000), Err(1));
        assert!(w.try_admit(at(19_990), 3, 10_000).is_ok());
    }

    #[test]
    fn refund_and_reclaim() {
        let mut w = SlidingWindow::default();
        assert!(w.try_admit(at(5), 1, 100).is_ok());
        assert!(w.try_admit(at(6), 1, 100).is_err());
        w.refund(at(5), 100);
        assert!(w.try_admit(at(6), 1, 100).is_ok());
        assert_eq!(w.expires_at(100), Some(at(106)));
        w.prune(at(106), 100);
        assert!(w.is_empty());
    }

    #[test]
    fn restored_sends_count_until_they_leave_the_window() {
        let mut w = SlidingWindow::default();
        // Two sends from before a restart leave the window 300 ms and 100 ms from now.
        w.restore(at(0), 300, 1_000);
        w.restore(at(0), 100, 1_000);
        assert!(w.try_admit(at(0), 3, 1_000).is_ok());
        assert_eq!(w.try_admit(at(50), 3, 1_000), Err(50));
        assert!(w.try_admit(at(100), 3, 1_000).is_ok());
        assert_eq!(w.try_admit(at(100), 3, 1_000), Err(200));
    }

    #[test]
    fn a_send_from_the_future_counts_as_made_now() {
        // Stamped 5 s past this process's clock with a 1 s window: the clock went back.
        let mut w = SlidingWindow::default();
        w.restore(at(0), 6_000, 1_000);
        assert!(w.try_admit(at(500), 3, 1_000).is_ok());
        // Both leave the window in order, the restored one first.
        assert_eq!(w.expires_at(1_000), Some(at(1_500)));
        w.prune(at(1_000), 1_000);
        assert_eq!(w.expiries.len(), 1);
        w.prune(at(1_500), 1_000);
        assert!(w.is_empty());
    }
}
