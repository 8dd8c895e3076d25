//! The runtime's clock: turns the machine's monotonic time into the core's [`Instant`]s and
//! back into deadlines tokio can sleep until.
//!
//! The core reads no clock; it is handed milliseconds since an epoch its driver picks. The
//! runtime picks the moment it started, and tells the core the Unix time of that moment
//! (`GatewayConfig::wall_epoch_ms`) so it can state wall-clock times such as `serverTime`
//! and judge token expiry. Monotonic time keeps deadlines right when the wall clock jumps;
//! the actor reads the wall clock again every [`WALL_CLOCK_EVERY`] and hands it to the core
//! (`gateway::Input::WallClock`), so that wall-clock times follow a clock that stepped
//! (one NTP set some minutes after a boot, or a paused virtual machine's) instead of
//! keeping the error for the life of the process.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartline_core::Instant;

/// How often the actor reads the wall clock for the core.
pub const WALL_CLOCK_EVERY: Duration = Duration::from_secs(5);

/// Unix time now, in milliseconds (0 for a clock set before 1970).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Maps between tokio's monotonic time and the core's millisecond [`Instant`]s.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: tokio::time::Instant,
    wall_epoch_ms: u64,
}

impl Clock {
    /// A clock whose epoch is now.
    pub fn start() -> Self {
        let wall_epoch_ms = unix_ms();
        Clock {
            start: tokio::time::Instant::now(),
            wall_epoch_ms,
        }
    }

    /// The core's time now.
    pub fn now(&self) -> Instant {
        self.at(tokio::time::Instant::now())
    }

    /// The core's time at a tokio instant (the epoch for instants before it).
    pub fn at(&self, t: tokio::time::Instant) -> Instant {
        let ms = t.saturating_duration_since(self.start).as_millis();
        Instant::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The tokio instant of a core deadline; far in the future if it cannot be represented.
    pub fn deadline(&self, at: Instant) -> tokio::time::Instant {
        let far = Duration::from_secs(86_400 * 365);
        self.start
            .checked_add(Duration::from_millis(at.as_millis()))
            .unwrap_or_else(|| tokio::time::Instant::now() + far)
    }

    /// Unix time in milliseconds at the epoch.
    pub fn wall_epoch_ms(&self) -> u64 {
        self.wall_epoch_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trips_deadlines() {
        let clock = Clock::start();
        let at = Instant::from_millis(1_500);
        let t = clock.deadline(at);
        assert_eq!(clock.at(t), at);
        assert!(clock.wall_epoch_ms() > 1_600_000_000_000);
    }
}
