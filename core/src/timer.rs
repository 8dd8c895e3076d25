//! Deadlines: a small table per owner, one ordered queue for all of them.
//!
//! Each owner (a session, a user, ...) keeps at most one deadline per kind of timer in a
//! [`TimerTable`]; every armed deadline also sits in one [`TimerQueue`], a `BTreeSet` ordered
//! by `(deadline, owner, kind)`. Arming, re-arming and stopping cost O(log n) and finding the
//! next deadline is O(log n) too, so 100,000 connections, each with a heartbeat deadline, never
//! cost a scan. The tuple order also fixes which of several timers due at the same instant
//! fires first, so runs repeat exactly.
//!
//! The driver keeps a single sleep: until [`TimerQueue::next`]. There are no timer effects for
//! it to track, cancel or see fire late.

use std::collections::BTreeSet;

use crate::time::Instant;

/// The deadlines one table can hold, indexed by a kind that converts to a slot.
pub trait TimerKind: Copy + Ord + std::fmt::Debug + 'static {
    /// Every kind, in slot order: `ALL[k.slot()] == k`.
    const ALL: &'static [Self];
    /// How many kinds there are.
    const COUNT: usize = Self::ALL.len();
    /// This kind's slot, `< COUNT`.
    fn slot(self) -> usize;
    /// The kind in `slot`, the inverse of [`TimerKind::slot`].
    fn from_slot(slot: usize) -> Option<Self> {
        Self::ALL.get(slot).copied()
    }
}

/// One deadline per timer kind, for one owner.
///
/// Every session, connection and user carries one, so a slot is a bare `u64` of
/// milliseconds with `u64::MAX` for "none", half the size of an `Option<Instant>`.
/// Deadlines are clamped below it (to over 500 million years after the epoch).
#[derive(Clone, Debug)]
pub struct TimerTable<K: TimerKind, const N: usize> {
    deadlines: [u64; N],
    _kind: std::marker::PhantomData<K>,
}

/// A table slot's value when its timer is not armed.
const UNARMED: u64 = u64::MAX;

/// The latest deadline a table can hold.
const LATEST: Instant = Instant::from_millis(UNARMED - 1);

impl<K: TimerKind, const N: usize> Default for TimerTable<K, N> {
    fn default() -> Self {
        TimerTable {
            deadlines: [UNARMED; N],
            _kind: std::marker::PhantomData,
        }
    }
}

impl<K: TimerKind, const N: usize> TimerTable<K, N> {
    /// The armed deadline of `kind`, if any.
    pub fn get(&self, kind: K) -> Option<Instant> {
        self.deadlines.get(kind.slot()).copied().and_then(armed)
    }

    /// Whether `kind` is armed.
    pub fn is_armed(&self, kind: K) -> bool {
        self.get(kind).is_some()
    }

    /// Whether no deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.deadlines.iter().all(|&d| d == UNARMED)
    }

    /// Every armed deadline, in slot order.
    pub fn armed(&self) -> impl Iterator<Item = Instant> + '_ {
        self.deadlines.iter().copied().filter_map(armed)
    }

    /// Empties slot `slot`; returns the deadline it held.
    fn take(&mut self, slot: usize) -> Option<Instant> {
        self.deadlines
            .get_mut(slot)
            .and_then(|d| armed(std::mem::replace(d, UNARMED)))
    }
}

/// A slot's deadline, if armed.
fn armed(ms: u64) -> Option<Instant> {
    (ms != UNARMED).then_some(Instant::from_millis(ms))
}

/// Every armed deadline of every owner, in firing order.
#[derive(Clone, Debug)]
pub struct TimerQueue<O: Copy + Ord, K: TimerKind> {
    queue: BTreeSet<(Instant, O, K)>,
}

impl<O: Copy + Ord, K: TimerKind> Default for TimerQueue<O, K> {
    fn default() -> Self {
        TimerQueue {
            queue: BTreeSet::new(),
        }
    }
}

impl<O: Copy + Ord + std::fmt::Debug, K: TimerKind> TimerQueue<O, K> {
    /// Arms (or re-arms) `owner`'s `kind` timer at `at`.
    ///
    /// A table's kinds may be a part of the queue's (`T` into `K`): owners of different
    /// sorts then keep tables of only the slots they use, in one queue.
    pub fn set<T: TimerKind + Into<K>, const N: usize>(
        &mut self,
        table: &mut TimerTable<T, N>,
        owner: O,
        kind: T,
        at: Instant,
    ) {
        let at = at.min(LATEST);
        let Some(slot) = table.deadlines.get_mut(kind.slot()) else {
            return;
        };
        if let Some(old) = armed(std::mem::replace(slot, at.as_millis())) {
            self.queue.remove(&(old, owner, kind.into()));
        }
        self.queue.insert((at, owner, kind.into()));
    }

    /// Disarms `owner`'s `kind` timer; a no-op if it was not armed.
    pub fn stop<T: TimerKind + Into<K>, const N: usize>(
        &mut self,
        table: &mut TimerTable<T, N>,
        owner: O,
        kind: T,
    ) {
        if let Some(old) = table.take(kind.slot()) {
            self.queue.remove(&(old, owner, kind.into()));
        }
    }

    /// Disarms every timer of `owner`; called when the owner goes away.
    pub fn stop_all<T: TimerKind + Into<K>, const N: usize>(
        &mut self,
        table: &mut TimerTable<T, N>,
        owner: O,
    ) {
        for slot in 0..N {
            if let (Some(old), Some(kind)) = (table.take(slot), T::from_slot(slot)) {
                self.queue.remove(&(old, owner, kind.into()));
            }
        }
    }

    /// The earliest armed deadline, with its owner and kind.
    pub fn next(&self) -> Option<(Instant, O, K)> {
        self.queue.first().copied()
    }

    /// Removes and returns the earliest timer due at or before `now`. The caller must clear
    /// the matching table slot with [`TimerQueue::fired`].
    pub fn pop_due(&mut self, now: Instant) -> Option<(Instant, O, K)> {
        match self.queue.first() {
            Some(&(at, _, _)) if at <= now => self.queue.pop_first(),
            _ => None,
        }
    }

    /// Clears the table slot of a timer returned by [`TimerQueue::pop_due`].
    pub fn fired<T: TimerKind, const N: usize>(table: &mut TimerTable<T, N>, kind: T) {
        table.take(kind.slot());
    }

    /// How many deadlines are armed in all.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// Asserts that `K::ALL` lists every kind in slot order and that slots convert both ways.
#[cfg(test)]
pub(crate) fn assert_slots_in_order<K: TimerKind>() {
    assert_eq!(K::COUNT, K::ALL.len());
    for (slot, kind) in K::ALL.iter().enumerate() {
        assert_eq!(kind.slot(), slot, "{kind:?}");
        assert_eq!(K::from_slot(slot), Some(*kind));
    }
    assert_eq!(K::from_slot(K::COUNT), None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    enum T {
        A,
        B,
    }

    impl TimerKind for T {
        const ALL: &'static [Self] = &[T::A, T::B];
        fn slot(self) -> usize {
            self as usize
        }
    }

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn rearm_replaces_and_fires_in_order() {
        let mut q: TimerQueue<u32, T> = TimerQueue::default();
        let mut t1 = TimerTable::<T, 2>::default();
        let mut t2 = TimerTable::<T, 2>::default();
        q.set(&mut t1, 1, T::A, at(50));
        q.set(&mut t2, 2, T::A, at(20));
        q.set(&mut t1, 1, T::B, at(20));
        q.set(&mut t1, 1, T::A, at(10)); // re-arm earlier
        assert_eq!(q.len(), 3);
        assert_eq!(q.next(), Some((at(10), 1, T::A)));
        assert_eq!(q.pop_due(at(5)), None);
        let mut fired = vec![];
        while let Some((when, owner, kind)) = q.pop_due(at(20)) {
            let table = if owner == 1 { &mut t1 } else { &mut t2 };
            TimerQueue::<u32, T>::fired(table, kind);
            fired.push((when.as_millis(), owner, kind));
        }
        // Same instant: owner order, then kind order.
        assert_eq!(fired, vec![(10, 1, T::A), (20, 1, T::B), (20, 2, T::A)]);
        assert!(q.is_empty());
        assert!(!t1.is_armed(T::A) && !t1.is_armed(T::B) && !t2.is_armed(T::A));
    }

    #[test]
    fn stop_and_stop_all_remove_queue_entries() {
        let mut q: TimerQueue<u32, T> = TimerQueue::default();
        let mut t = TimerTable::<T, 2>::default();
        q.set(&mut t, 7, T::A, at(1));
        q.set(&mut t, 7, T::B, at(2));
        q.stop(&mut t, 7, T::A);
        assert_eq!(q.next(), Some((at(2), 7, T::B)));
        q.stop(&mut t, 7, T::A); // no-op
        q.stop_all(&mut t, 7);
        assert!(q.is_empty());
        assert_eq!(t.armed().count(), 0);
    }

    #[test]
    fn the_last_instant_is_still_a_deadline() {
        let mut q: TimerQueue<u32, T> = TimerQueue::default();
        let mut t = TimerTable::<T, 2>::default();
        let never = Instant::from_millis(u64::MAX);
        q.set(&mut t, 1, T::A, never);
        assert!(t.is_armed(T::A));
        assert_eq!(t.get(T::A), Some(LATEST));
        assert_eq!(q.next(), Some((LATEST, 1, T::A)));
        // Re-armed and stopped like any other: no entry is left behind.
        q.set(&mut t, 1, T::A, never);
        assert_eq!(q.len(), 1);
        q.stop(&mut t, 1, T::A);
        assert!(q.is_empty() && !t.is_armed(T::A));
    }

    #[test]
    fn a_table_slot_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<TimerTable<T, 2>>(), 16);
    }
}
