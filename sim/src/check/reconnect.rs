//! A client that lost its connection comes back no sooner than its backoff allows.
//!
//! This is what keeps a server restart from turning into a reconnect storm: every client
//! dropped at one instant must spread its attempts out, further apart the longer the
//! outage. Counted by the checker itself, not taken from the client's attempt number: the
//! reconnections since the client was last connected; before the n-th, the client waits at
//! least `min(initial × factor^(n−1), max_ms) × (1 − randomization)` (a delay at the
//! ceiling keeps its jitter below it) from the
//! moment it noticed the loss. A connect the application asks for (at start, after being
//! sent away, or "retry" after the attempts ran out) is not a reconnection, and the count
//! starts over from it.

use std::collections::BTreeMap;

use heartline_core::client::{Backoff, Status};
use heartline_core::Instant;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "reconnect-paced";

#[derive(Clone, Copy, Debug, Default)]
struct Device {
    /// Reconnections since the device was last connected.
    attempts: u32,
    /// The reconnection being waited for: when the loss was noticed.
    waiting_since: Option<Instant>,
}

/// See the module docs.
#[derive(Debug)]
pub struct Reconnect {
    backoff: Backoff,
    devices: BTreeMap<usize, Device>,
    /// Reconnections checked.
    pub checked: u64,
}

impl Reconnect {
    /// The policy every client runs with.
    pub fn new(backoff: Backoff) -> Self {
        Reconnect {
            backoff,
            devices: BTreeMap::new(),
            checked: 0,
        }
    }

    /// The shortest wait before reconnection `n` (1-based) the policy allows.
    fn least_ms(&self, n: u32) -> u64 {
        let b = &self.backoff;
        let growth = u64::from(b.factor.max(1)).saturating_pow(n.saturating_sub(1));
        let base = b
            .initial_ms
            .max(1)
            .saturating_mul(growth)
            .min(b.max_ms.max(1));
        let least = (base as f64 * (1.0 - b.randomization.clamp(0.0, 0.99))) as u64;
        // The draw's rounding may take the last millisecond.
        least.saturating_sub(1)
    }

    /// Client `device`'s status changed at `now`.
    pub fn status(&mut self, now: Instant, device: usize, status: &Status) {
        let d = self.devices.entry(device).or_default();
        match status {
            Status::Connected => *d = Device::default(),
            Status::Reconnecting { .. } => {
                d.attempts = d.attempts.saturating_add(1);
                d.waiting_since = Some(now);
            }
            Status::Connecting => {}
            Status::Idle | Status::Disconnected | Status::Replaced | Status::Failed { .. } => {
                d.waiting_since = None;
            }
        }
    }

    /// The application asked client `device` to connect.
    pub fn asked(&mut self, device: usize) {
        // The client's backoff starts over, as socket.io-client's does.
        self.devices.insert(device, Device::default());
    }

    /// Client `device` opened a connection at `now`.
    pub fn opened(&mut self, now: Instant, device: usize) -> Finding {
        let Some(d) = self.devices.get_mut(&device) else {
            return Ok(());
        };
        let Some(since) = d.waiting_since.take() else {
            return Ok(());
        };
        let n = d.attempts;
        self.checked += 1;
        let least = self.least_ms(n);
        let waited = now.ms_since(since);
        if waited < least {
            return Err((
                NAME,
                format!("c{device}: reconnection {n} after {waited}ms, the backoff allows {least}ms at least"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn reconnections_wait_longer_each_time_until_connected() {
        // 1 s, doubling, to 5 s, ±50 %: at least 0.5, 1, 2, 4, then 5 s.
        let mut r = Reconnect::new(Backoff::default());
        r.status(at(0), 0, &Status::Connecting);
        assert!(r.opened(at(0), 0).is_ok(), "the first connect");
        r.status(at(10), 0, &Status::Connected);
        r.status(at(1_000), 0, &Status::Reconnecting { attempt: 1 });
        assert!(
            r.opened(at(1_499), 0).is_ok(),
            "0.5 s less a millisecond of rounding"
        );
        r.status(at(2_000), 0, &Status::Reconnecting { attempt: 2 });
        assert!(
            r.opened(at(2_900), 0).is_err(),
            "the second waits 1 s at least"
        );
        r.status(at(3_000), 0, &Status::Reconnecting { attempt: 3 });
        assert!(r.opened(at(5_000), 0).is_ok());
        r.status(at(6_000), 0, &Status::Connected);
        r.status(at(7_000), 0, &Status::Reconnecting { attempt: 1 });
        assert!(
            r.opened(at(7_600), 0).is_ok(),
            "connected in between: counted afresh"
        );
        r.status(at(8_000), 0, &Status::Failed { reason: "x".into() });
        r.asked(0);
        assert!(r.opened(at(8_000), 0).is_ok(), "the application's retry");
        r.status(at(9_000), 0, &Status::Reconnecting { attempt: 1 });
        assert!(r.opened(at(9_600), 0).is_ok(), "its backoff started over");
        for n in 1..=10 {
            r.status(at(10_000), 1, &Status::Reconnecting { attempt: n });
        }
        assert!(
            r.opened(at(12_400), 1).is_err(),
            "capped at 5 s, with its jitter below: 2.5 s at least"
        );
        assert_eq!(r.checked, 6);
    }
}
