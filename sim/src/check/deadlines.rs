//! Per-link deadlines, earliest first: the shape every "closed by then" checker shares
//! (`dead-peer-closed`, `handshake-deadline`, `token-expiry`). Each step asks only for the
//! earliest, so a run with thousands of links checks one deadline per step.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::Instant;

/// See the module docs.
#[derive(Debug, Default)]
pub struct Deadlines {
    by_link: BTreeMap<u64, Instant>,
    order: BTreeSet<(Instant, u64)>,
}

impl Deadlines {
    /// Sets `link`'s deadline, replacing any it had.
    pub fn set(&mut self, link: u64, at: Instant) {
        self.remove(link);
        self.by_link.insert(link, at);
        self.order.insert((at, link));
    }

    /// Ends `link`'s watch; its deadline, if it had one.
    pub fn remove(&mut self, link: u64) -> Option<Instant> {
        let at = self.by_link.remove(&link)?;
        self.order.remove(&(at, link));
        Some(at)
    }

    /// Forgets every link (the server died with them).
    pub fn clear(&mut self) {
        self.by_link.clear();
        self.order.clear();
    }

    /// The earliest deadline that `now` is past, with its link.
    pub fn overdue(&self, now: Instant) -> Option<(Instant, u64)> {
        self.order.first().copied().filter(|&(at, _)| at < now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earliest_deadline_is_overdue_once_passed_and_a_reset_one_moves() {
        let at = Instant::from_millis;
        let mut d = Deadlines::default();
        d.set(1, at(100));
        d.set(2, at(50));
        assert_eq!(d.overdue(at(50)), None);
        assert_eq!(d.overdue(at(51)), Some((at(50), 2)));
        d.set(2, at(200));
        assert_eq!(d.overdue(at(150)), Some((at(100), 1)));
        assert_eq!(d.remove(1), Some(at(100)));
        assert_eq!(d.overdue(at(150)), None);
        d.clear();
        assert_eq!(d.overdue(at(1_000)), None);
    }
}
