//! Reconnection delays: exponential with jitter, capped, with a bounded number of attempts.
//!
//! Jitter is what keeps a restart from becoming a reconnect storm: without it every client
//! dropped at the same instant comes back at the same instants. The draw comes from the
//! client's seeded generator, so a simulated storm repeats exactly.

use crate::ids::Rng;

/// The reconnection policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt, in milliseconds.
    pub initial_ms: u64,
    /// Growth per attempt.
    pub factor: u32,
    /// Ceiling, applied after jitter.
    pub max_ms: u64,
    /// Jitter: the delay moves up or down by up to this fraction of itself.
    pub randomization: f64,
    /// Attempts before giving up.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            factor: 2,
            max_ms: 10_000,
            randomization: 0.5,
            max_attempts: 5,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), or `None` once attempts are used up.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Option<u64> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        let growth = u64::from(self.factor).saturating_pow(attempt - 1);
        let base = self.initial_ms.saturating_mul(growth);
        let r = rng.unit();
        let deviation = (r * self.randomization * base as f64) as u64;
        // The low bit of the draw decides the direction, as socket.io-client does with its coin.
        let jittered = if (r * 10.0) as u64 % 2 == 0 {
            base.saturating_sub(deviation)
        } else {
            base.saturating_add(deviation)
        };
        Some(jittered.min(self.max_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_gives_up() {
        let b = Backoff::default();
        let mut rng = Rng::from_seed(3);
        for attempt in 1..=5 {
            let base = 1_000u64 << (attempt - 1);
            let d = b.delay(attempt, &mut rng).expect("within attempts");
            assert!(
                d >= base / 2 && d <= (base * 3 / 2).min(10_000),
                "attempt {attempt}: {d}"
            );
        }
        assert_eq!(b.delay(6, &mut rng), None);
        assert_eq!(b.delay(0, &mut rng), None);
    }

    #[test]
    fn jitter_spreads_clients() {
        let b = Backoff::default();
        let delays: std::collections::BTreeSet<u64> = (0..50)
            .map(|seed| b.delay(1, &mut Rng::from_seed(seed)).unwrap_or(0))
            .collect();
        assert!(
            delays.len() > 25,
            "50 clients should not come back together"
        );
    }
}
