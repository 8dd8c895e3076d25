//! The per-connection budget for events other than accepted sends.
//!
//! Sends have their own exact limit per user. Everything else a client can emit (`ping`,
//! `metrics:request`, joins, refused sends, unknown events, garbage) is cheap for the client
//! and costs the server a little each; a token bucket bounds that cost per connection
//! without a timer: it refills from the time elapsed, a pure function of `now`. A refused
//! send is charged a fraction of an event: refusing is the cheapest thing the server does,
//! and an honest client in a retry loop should be told "rate_limited", not cut off.

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

    /// Spends `cost` thousandths of a token; `false` (and nothing spent) when fewer are left.
    pub(crate) fn spend_milli(&mut self, config: BudgetConfig, now: Instant, cost: u32) -> bool {
        let elapsed = now.ms_since(self.updated);
        self.updated = self.updated.max(now);
        let cap = u64::from(config.burst) * 1000;
        self.milli_tokens = self
            .milli_tokens
            .saturating_add(elapsed.saturating_mul(u64::from(config.per_second)))
            .min(cap);
        let cost = u64::from(cost);
        if self.milli_tokens >= cost {
            self.milli_tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl TokenBucket {
        fn spend(&mut self, config: BudgetConfig, now: Instant) -> bool {
            self.spend_milli(config, now, 1000)
        }
    }

    #[test]
    fn burst_then_refill() {
        let cfg = BudgetConfig {
            burst: 3,
            per_second: 2,
            refused_send_milli: 100,
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

    #[test]
    fn a_cheaper_charge_spends_a_fraction() {
        let cfg = BudgetConfig {
            burst: 1,
            per_second: 1,
            refused_send_milli: 250,
        };
        let t0 = Instant::from_millis(0);
        let mut b = TokenBucket::new(cfg, t0);
        assert!((0..4).all(|_| b.spend_milli(cfg, t0, 250)));
        assert!(!b.spend_milli(cfg, t0, 250));
        // A quarter of a token refills in 250 ms; a whole event needs all of it.
        assert!(!b.spend(cfg, t0.add_ms(250)));
        assert!(b.spend_milli(cfg, t0.add_ms(250), 250));
    }
}
