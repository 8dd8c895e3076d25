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

/// The accepted sends of one user key within the last window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SlidingWindow {
    accepted: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Forgets sends that no window ending after `now` can contain.
    pub fn prune(&mut self, now: Instant, window_ms: u64) {
        while let Some(&t) = self.accepted.front() {
            if t.add_ms(window_ms) <= now {
                self.accepted.pop_front();
            } else {
                break;
            }
        }
    }

    /// Admits a send at `now` if the window ending at `now` holds fewer than `limit`
    /// sends; otherwise returns how long until one falls out of it.
    pub fn try_admit(&mut self, now: Instant, limit: usize, window_ms: u64) -> Result<(), u64> {
        self.prune(now, window_ms);
        if self.accepted.len() < limit {
            self.accepted.push_back(now);
            return Ok(());
        }
        let oldest = self.accepted.front().copied().unwrap_or(now);
        Err(oldest.add_ms(window_ms).ms_since(now).max(1))
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
        self.accepted.retain(|&t| t >= start);
        if self.accepted.len() < limit {
            self.accepted.push_back(now);
            return Ok(());
        }
        Err(start.add_ms(window_ms).ms_since(now).max(1))
    }

    /// Takes back one admission made at `at` (its send was not accepted after all).
    pub fn refund(&mut self, at: Instant) {
        if let Some(pos) = self.accepted.iter().rposition(|&t| t == at) {
            self.accepted.remove(pos);
        }
    }

    /// Whether no send is remembered.
    pub fn is_empty(&self) -> bool {
        self.accepted.is_empty()
    }

    /// When the newest remembered send leaves the window, if any.
    pub fn expires_at(&self, window_ms: u64) -> Option<Instant> {
        self.accepted.back().map(|t| t.add_ms(window_ms))
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
        w.refund(at(5));
        assert!(w.try_admit(at(6), 1, 100).is_ok());
        assert_eq!(w.expires_at(100), Some(at(106)));
        w.prune(at(106), 100);
        assert!(w.is_empty());
    }
}
