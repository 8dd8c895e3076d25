//! Counters the gateway keeps and the runtime exports (Prometheus text at `/metrics`).
//!
//! They live in the core so that the simulator sees exactly what production reports.
//! Maps are `BTreeMap` so exports list labels in a stable order.

use std::collections::BTreeMap;

use super::io::ErrorCode;
use crate::engine::CloseReason;

/// Upper bounds, in milliseconds, of the heartbeat latency buckets.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 10_000];

/// A cumulative histogram over [`LATENCY_BUCKETS_MS`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Histogram {
    /// Observations at or under each bound (not cumulative; the exporter sums).
    pub buckets: [u64; LATENCY_BUCKETS_MS.len()],
    /// Observations over the last bound.
    pub overflow: u64,
    /// Sum of all observations.
    pub sum_ms: u64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, ms: u64) {
        match LATENCY_BUCKETS_MS.iter().position(|&b| ms <= b) {
            Some(i) => self.buckets[i] += 1,
            None => self.overflow += 1,
        }
        self.sum_ms = self.sum_ms.saturating_add(ms);
        self.count += 1;
    }
}

/// Everything the gateway counts. The counts by reason or code hold every reason and
/// code from the start, at 0, so that each series exists before its first event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metrics {
    /// Connections whose namespace connect succeeded, ever.
    pub connects: u64,
    /// Connects refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Connections displaced by a newer one of the same user.
    pub replacements: u64,
    /// Sessions ended, by reason label.
    pub closes: BTreeMap<&'static str, u64>,
    /// Sends acknowledged (duplicates included), and sends stored after their sender had
    /// gone: new messages stored are this less `duplicates`.
    pub accepted: u64,
    /// Sends acknowledged as duplicates of an earlier one.
    pub duplicates: u64,
    /// Sends refused, by error code.
    pub send_refused: BTreeMap<&'static str, u64>,
    /// `message:new` and `message:notification` deliveries queued.
    pub deliveries: u64,
    /// Events refused (`rate_limited`) for coming over the connection's event budget.
    pub events_refused: u64,
    /// Connections ended for exhausting their event budget.
    pub floods: u64,
    /// Times the wall clock was found to have stepped ([`crate::gateway::Input::WallClock`]).
    pub wall_clock_steps: u64,
    /// Round trip of the application heartbeat.
    pub heartbeat_latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let zeros = |labels: &[&'static str]| labels.iter().map(|l| (*l, 0)).collect();
        let codes: Vec<&'static str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        Metrics {
            connects: 0,
            refused: zeros(&REFUSALS),
            replacements: 0,
            closes: zeros(&CloseReason::LABELS),
            accepted: 0,
            duplicates: 0,
            send_refused: zeros(&codes),
            deliveries: 0,
            events_refused: 0,
            floods: 0,
            wall_clock_steps: 0,
            heartbeat_latency: Histogram::default(),
        }
    }
}

/// The labels of refused connects: no token, and a token refused.
pub const REFUSALS: [&str; 2] = ["missing", "invalid"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::auth::AuthError;

    #[test]
    fn every_reason_and_code_is_counted_from_zero() {
        let reasons = [
            CloseReason::ClientClose,
            CloseReason::TransportClose,
            CloseReason::TransportError,
            CloseReason::PingTimeout,
            CloseReason::HandshakeTimeout,
            CloseReason::PayloadTooLarge,
            CloseReason::ProtocolError(String::new()),
            CloseReason::SlowConsumer,
            CloseReason::Replaced,
            CloseReason::ServerShutdown,
            CloseReason::TooManySessions,
            CloseReason::ServerDisconnect(String::new()),
            CloseReason::ServerClose(String::new()),
        ];
        // No wildcard: a reason added to the enum stops this from compiling until it is
        // in the list above (and so checked against `LABELS`).
        for r in &reasons {
            match r {
                CloseReason::ClientClose
                | CloseReason::TransportClose
                | CloseReason::TransportError
                | CloseReason::PingTimeout
                | CloseReason::HandshakeTimeout
                | CloseReason::PayloadTooLarge
                | CloseReason::ProtocolError(_)
                | CloseReason::SlowConsumer
                | CloseReason::Replaced
                | CloseReason::ServerShutdown
                | CloseReason::TooManySessions
                | CloseReason::ServerDisconnect(_)
                | CloseReason::ServerClose(_) => {}
            }
        }
        let m = Metrics::default();
        assert_eq!(m.closes.len(), reasons.len(), "one label each, none twice");
        for r in &reasons {
            assert_eq!(m.closes.get(r.label()), Some(&0), "{r}");
        }
        let codes = [
            ErrorCode::RateLimited,
            ErrorCode::InvalidPayload,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::TooLarge,
            ErrorCode::Internal,
        ];
        for c in codes {
            match c {
                ErrorCode::RateLimited
                | ErrorCode::InvalidPayload
                | ErrorCode::Forbidden
                | ErrorCode::NotFound
                | ErrorCode::TooLarge
                | ErrorCode::Internal => {}
            }
            assert!(ErrorCode::ALL.contains(&c), "{c:?}");
            assert_eq!(m.send_refused.get(c.as_str()), Some(&0));
        }
        assert_eq!(m.send_refused.len(), codes.len());
        for auth in [AuthError::Missing, AuthError::Invalid] {
            let label = match auth {
                AuthError::Missing => REFUSALS[0],
                AuthError::Invalid => REFUSALS[1],
            };
            assert_eq!(m.refused.get(label), Some(&0));
        }
    }
}
