//! Time as a value.
//!
//! The core never reads a clock: every entry point takes `now`, and every deadline the core
//! reports is an [`Instant`] the caller can sleep until. That is what makes a simulated run
//! repeat exactly and what lets the simulator jump from one deadline to the next.
//!
//! An [`Instant`] is a count of milliseconds since an epoch the driver chooses (the runtime
//! uses its start; the simulator uses zero). Every interval in Heartline's configuration is
//! in milliseconds, so finer resolution would buy nothing. Unlike `std::time::Instant` it can
//! be built from a number and prints the same way in every run, which transcripts need.

use std::fmt;

/// A monotonic point in time, in milliseconds since the driver's epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The driver's epoch.
    pub const ZERO: Instant = Instant(0);

    /// The instant `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// The instant `ms` milliseconds later, saturating rather than wrapping.
    #[must_use]
    pub const fn add_ms(self, ms: u64) -> Self {
        Instant(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`; zero if `earlier` is later.
    pub const fn ms_since(self, earlier: Instant) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for Instant {
    /// Seconds with millisecond precision, e.g. `25.000s`: readable in transcripts.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

/// Keeps the time an entry point sees from going backwards.
///
/// Drivers promise monotonic time, but a clamp is cheaper than a bug hunt: a late input is
/// treated as if it arrived at the latest time already seen.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Clock {
    latest: Instant,
}

impl Clock {
    /// Returns `now`, or the latest instant seen if `now` is earlier.
    pub(crate) fn observe(&mut self, now: Instant) -> Instant {
        if now > self.latest {
            self.latest = now;
        }
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        assert_eq!(
            Instant::from_millis(u64::MAX).add_ms(5),
            Instant::from_millis(u64::MAX)
        );
        assert_eq!(
            Instant::from_millis(3).ms_since(Instant::from_millis(10)),
            0
        );
        assert_eq!(
            Instant::from_millis(10).ms_since(Instant::from_millis(3)),
            7
        );
    }

    #[test]
    fn display_is_seconds_with_millis() {
        assert_eq!(Instant::from_millis(25_007).to_string(), "25.007s");
    }

    #[test]
    fn clock_never_goes_back() {
        let mut c = Clock::default();
        assert_eq!(
            c.observe(Instant::from_millis(10)),
            Instant::from_millis(10)
        );
        assert_eq!(c.observe(Instant::from_millis(4)), Instant::from_millis(10));
        assert_eq!(
            c.observe(Instant::from_millis(11)),
            Instant::from_millis(11)
        );
    }
}
