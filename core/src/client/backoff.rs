//! Reconnection delays: exponential with jitter, capped; by default without end, as
//! `socket.io-client`'s (an outage longer than a few attempts must not leave clients that
//! never come back by themselves).
//!
//! Jitter is what keeps a restart from becoming a reconnect storm: without it every client
//! dropped at the same instant comes back at the same instants. The draw comes from the
//! client's seeded generator, so a simulated storm repeats exactly. Settings that would
//! take the jitter or the growth away (a factor of 0, a randomization of 1 or more, an
//! initial delay of 0) are read as the nearest that keeps them.

use crate::ids::Rng;

/// The reconnection policy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Delay before the first attempt, in milliseconds.
    pub initial_ms: u64,
    /// Growth per attempt (read as at least 1).
    pub factor: u32,
    /// Ceiling, applied after jitter; a delay at the ceiling keeps its jitter below it.
    pub max_ms: u64,
    /// Jitter: the delay moves up or down by up to this fraction of itself (read as at
    /// most 0.99, so that no delay is zero).
    pub randomization: f64,
    /// Attempts before giving up; `u32::MAX` (the default) never gives up.
    pub max_attempts: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            factor: 2,
            max_ms: 5_000,
            randomization: 0.5,
            max_attempts: u32::MAX,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1-based), or `None` once attempts are used up.
    pub fn delay(&self, attempt: u32, rng: &mut Rng) -> Option<u64> {
        if attempt == 0 || attempt > self.max_attempts {
            return None;
        }
        let growth = u64::from(self.factor.max(1)).saturating_pow(attempt - 1);
        let base = self.initial_ms.max(1).saturating_mul(growth);
        let r = rng.unit();
        let randomization = if self.randomization.is_finite() {
            self.randomization.clamp(0.0, 0.99)
        } else {
            0.0
        };
        let deviation = (r * randomization * base as f64) as u64;
        // The low bit of the draw decides the direction, as socket.io-client does with its coin.
        let jittered = if (r * 10.0) as u64 % 2 == 0 {
            base.saturating_sub(deviation)
        } else {
            base.saturating_add(deviation)
        };
        let max = self.max_ms.max(1);
        if jittered < max {
            return Some(jittered);
        }
        // At the ceiling the jitter goes below it instead: capped alone, every client long
        // into an outage (attempt 5 on, at the defaults) would retry on the same beat, and
        // the first attempts after the server is back would come together.
        let under = (r * randomization * max as f64) as u64;
        Some(max.saturating_sub(under).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_gives_up() {
        let b = Backoff {
            max_attempts: 5,
            max_ms: 10_000,
            ..Backoff::default()
        };
        let mut rng = Rng::from_seed(3);
        for attempt in 1..=5 {
            let base = 1_000u64 << (attempt - 1);
            let d = b.delay(attempt, &mut rng).expect("within attempts");
            // At the ceiling, within half of it below.
            assert!(
                d >= (base / 2).min(5_000) && d <= (base * 3 / 2).min(10_000),
                "attempt {attempt}: {d}"
            );
        }
        assert_eq!(b.delay(6, &mut rng), None);
        assert_eq!(b.delay(0, &mut rng), None);
    }

    /// socket.io-client's schedule: ~0.5–1.5 s, 1–3 s, 2–5 s, then 2.5–5 s, and no end.
    #[test]
    fn by_default_it_follows_socket_io_client_and_never_gives_up() {
        let b = Backoff::default();
        let mut rng = Rng::from_seed(11);
        for attempt in [1u32, 2, 3, 4, 10, 1_000, u32::MAX] {
            let base = 1_000u64.saturating_mul(1 << (attempt - 1).min(40));
            let d = b.delay(attempt, &mut rng).expect("never gives up");
            assert!(
                d >= (base / 2).min(2_500) && d <= (base * 3 / 2).min(5_000),
                "attempt {attempt}: {d}"
            );
        }
    }

    /// Settings that would make every client retry at once, or at no interval, do not.
    #[test]
    fn odd_settings_keep_a_delay_and_its_jitter() {
        let b = Backoff {
            initial_ms: 0,
            factor: 0,
            max_ms: 0,
            randomization: f64::NAN,
            max_attempts: 10,
        };
        let mut rng = Rng::from_seed(5);
        for attempt in 1..=10 {
            assert!(b.delay(attempt, &mut rng).is_some_and(|d| d >= 1));
        }
        let b = Backoff {
            randomization: 7.0,
            ..Backoff::default()
        };
        let delays: std::collections::BTreeSet<u64> = (0..200)
            .map(|seed| b.delay(1, &mut Rng::from_seed(seed)).unwrap_or(0))
            .collect();
        assert!(delays.iter().all(|&d| d >= 10), "{delays:?}");
        assert!(delays.len() > 25);
    }

    #[test]
    fn delays_at_the_ceiling_keep_their_jitter() {
        let b = Backoff::default();
        for attempt in [5, 10, 1_000] {
            let delays: std::collections::BTreeSet<u64> = (0..50)
                .map(|seed| b.delay(attempt, &mut Rng::from_seed(seed)).unwrap_or(0))
                .collect();
            assert!(
                delays.iter().all(|d| (2_500..=5_000).contains(d)),
                "{delays:?}"
            );
            assert!(delays.len() > 25, "attempt {attempt}: {delays:?}");
        }
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
