//! Pacing of the log lines that clients can cause.
//!
//! A refused connect, a replacement and an abnormal close are logged at `info`, one line
//! each: what an operator wants to see on an ordinary day. But a client looping on a bad
//! token, or a network outage that ends fifty thousand connections by ping timeout, would
//! turn that into a flood of lines that fills a disk and buries everything else. So each
//! kind of line is logged at most [`LINES_PER_SECOND`] times in any second of the server's
//! clock; the rest are counted, and the count is logged with the next line of that kind
//! let through (or, with none coming, stays untold: the metrics count every one).

/// Lines of one kind logged in one second at most.
pub const LINES_PER_SECOND: u32 = 20;

/// The pace of one kind of line.
#[derive(Debug)]
pub struct Paced {
    /// Lines logged in one second at most.
    per_second: u32,
    /// The second (core milliseconds / 1000) the count is for.
    second: u64,
    /// Lines logged in that second.
    logged: u32,
    /// Lines not logged since the last one that was.
    skipped: u64,
}

impl Default for Paced {
    fn default() -> Self {
        Paced::per_second(LINES_PER_SECOND)
    }
}

impl Paced {
    /// At most `n` lines a second.
    pub fn per_second(n: u32) -> Self {
        Paced {
            per_second: n,
            second: 0,
            logged: 0,
            skipped: 0,
        }
    }

    /// Whether a line may be logged at `now_ms`; if so, with how many were skipped since
    /// the last one logged (to be said in it).
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        let second = now_ms / 1000;
        if second != self.second {
            self.second = second;
            self.logged = 0;
        }
        if self.logged >= self.per_second {
            self.skipped += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.skipped))
    }
}

/// The kinds of line paced.
#[derive(Debug, Default)]
pub struct LogPace {
    /// `connect refused`.
    pub refused: Paced,
    /// `connection replaced`.
    pub replaced: Paced,
    /// `closed` for an abnormal reason.
    pub closed: Paced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_twenty_a_second_and_the_skipped_are_told_with_the_next() {
        let mut p = Paced::default();
        let logged = (0..100).filter(|i| p.admit(5_000 + i).is_some()).count();
        assert_eq!(logged, LINES_PER_SECOND as usize);
        // The next second: the first line carries the 80 skipped, the next none.
        assert_eq!(p.admit(6_000), Some(80));
        assert_eq!(p.admit(6_001), Some(0));
        // A quiet spell and back: nothing skipped meanwhile.
        assert_eq!(p.admit(60_000), Some(0));
        // One a second.
        let mut one = Paced::per_second(1);
        assert_eq!(one.admit(1_000), Some(0));
        assert_eq!(one.admit(1_500), None);
        assert_eq!(one.admit(2_000), Some(1));
    }
}
