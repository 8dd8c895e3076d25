//! The per-connection budget for events other than accepted sends.
//!
//! Sends have their own exact limit per user. Everything else a client can emit (`ping`,
//! `metrics:request`, joins, refused sends, unknown events, garbage) is cheap for the client
//! and costs the server a little each; a token bucket bounds that cost per connection
//! without a timer: it refills from the time elapsed, a pure function of `now`.

use crate::gateway::config::BudgetConfig;
use crate::time::Instant;

/// A token bucket, in thousandths of a token so refill needs no floats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    milli_tokens: u64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(config: BudgetConfig, now: Instant) -> Self {
        TokenBucket {
            milli_tokens: u64::from(config.burst) * 1000,
            updated: now,
        }
    }

    /// Spends one token; `false` when the bucket is empty.
    pub(crate) fn spend(&mut self, config: BudgetConfig, now: Instant) -> bool {
        let elapsed = now.ms_since(self.updated);
        self.updated = self.updated.max(now);
        let cap = u64::from(config.burst) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(config.per_second)))
            .min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let cfg = BudgetConfig {
            burst: 3,
            per_second: 2,
        };
        let t0 = Instant::from_millis(1_000);
        let mut b = TokenBucket::new(cfg, t0);
        assert!(b.spend(cfg, t0) && b.spend(cfg, t0) && b.spend(cfg, t0));
        assert!(!b.spend(cfg, t0));
        assert!(!b.spend(cfg, t0.add_ms(499)));
        assert!(b.spend(cfg, t0.add_ms(500)));
        // Refill never exceeds the burst.
        let later = t0.add_ms(60_000);
        assert!((0..3).all(|_| b.spend(cfg, later)));
        assert!(!b.spend(cfg, later));
    }
}
