//! The agenda: everything scheduled for a later instant, in a fixed order.
//!
//! Entries are keyed by `(instant, sequence number)`, so two things due at the same
//! millisecond always happen in the order they were scheduled. A `BTreeMap` rather than a
//! hash-based structure keeps that order independent of anything but the run itself.

use std::collections::BTreeMap;

use heartline_core::Instant;

use crate::schedule::Fault;

/// A scheduled happening.
#[derive(Clone, Debug, PartialEq)]
pub enum Ev {
    /// Deliver the front segment of one direction of a link.
    Deliver {
        /// The link.
        link: u64,
        /// Towards the server (else towards the client).
        to_server: bool,
    },
    /// A client's own deadline.
    ClientTimer {
        /// The client.
        client: usize,
    },
    /// An honest client starts: joins its conversations and connects.
    Start {
        /// The client.
        client: usize,
    },
    /// An honest client's application sends chat traffic.
    Send {
        /// The client.
        client: usize,
    },
    /// An honest client's application answers `auth:expired` with a fresh token.
    Refresh {
        /// The client.
        client: usize,
    },
    /// An honest client's application, sent away for an expired token, logs in again.
    Relogin {
        /// The client.
        client: usize,
    },
    /// A hostile actor attacks.
    Attack {
        /// The actor.
        actor: usize,
    },
    /// A hostile connection closes itself.
    RawClose {
        /// The link.
        link: u64,
    },
    /// Inject a fault.
    Fault(Fault),
    /// A client's partition, clog or stopped reader may have ended.
    Unblock {
        /// The client.
        client: usize,
    },
    /// A clog of a swizzle starts.
    ClogStart {
        /// The client.
        client: usize,
        /// Until when.
        until: Instant,
    },
    /// The crashed server comes back.
    Restart,
    /// A frozen device wakes, if it is still frozen until then (it may have woken at
    /// healing and frozen again since).
    Thaw {
        /// The device.
        client: usize,
        /// The end of the freeze this wakes it from.
        until: Instant,
    },
    /// A supervisor restarts a server whose store died, if it still runs with it dead.
    SupervisorRestart {
        /// Downtime.
        down_ms: u64,
    },
    /// Store and latency faults may have ended.
    FaultsExpire,
}

/// Scheduled happenings in `(instant, sequence)` order.
#[derive(Debug, Default)]
pub struct Agenda {
    entries: BTreeMap<(Instant, u64), Ev>,
    next_seq: u64,
}

impl Agenda {
    /// Schedules `ev` at `at`.
    pub fn push(&mut self, at: Instant, ev: Ev) {
        self.entries.insert((at, self.next_seq), ev);
        self.next_seq += 1;
    }

    /// The earliest instant anything is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.entries.keys().next().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest entry.
    pub fn pop(&mut self) -> Option<(Instant, Ev)> {
        self.entries.pop_first().map(|((at, _), ev)| (at, ev))
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
