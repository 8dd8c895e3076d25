//! No two devices replace each other more than once.
//!
//! A device told `connection:replaced` must stay away; if it comes back it displaces the
//! device that displaced it, which then comes back too, forever. Watched from both ends:
//! a device that received `connection:replaced` and later completes a connect is the
//! first half of that loop.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::SessionId;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "no-ping-pong-replacement";

/// See the module docs.
#[derive(Debug, Default)]
pub struct PingPong {
    told: BTreeSet<usize>,
    devices: BTreeMap<SessionId, usize>,
    /// Replacements between two different devices, by (displaced, newer) device.
    pub pairs: BTreeMap<(usize, usize), u64>,
    /// Replacements seen.
    pub replacements: u64,
}

impl PingPong {
    /// A device's client received `connection:replaced`.
    pub fn told(&mut self, device: usize) {
        self.told.insert(device);
    }

    /// A connection authenticated, from an honest device or not.
    pub fn connected(&mut self, session: SessionId, device: Option<usize>) -> Finding {
        let Some(device) = device else {
            return Ok(());
        };
        self.devices.insert(session, device);
        if self.told.contains(&device) {
            return Err((
                NAME,
                format!("c{device} came back after connection:replaced"),
            ));
        }
        Ok(())
    }

    /// A session ended.
    pub fn closed(&mut self, session: SessionId) {
        self.devices.remove(&session);
    }

    /// The server restarted; session numbers start again.
    pub fn crash(&mut self) {
        self.devices.clear();
    }

    /// Session `new` displaced session `old` of the same user.
    pub fn replaced(&mut self, old: SessionId, new: SessionId) -> Finding {
        self.replacements += 1;
        let (old, new) = (
            self.devices.get(&old).copied(),
            self.devices.get(&new).copied(),
        );
        let (Some(old), Some(new)) = (old, new) else {
            return Ok(());
        };
        if old == new {
            return Ok(());
        }
        // Counted for the report only: a device whose notice died with its link comes back
        // honestly, so the count alone proves nothing; `connected` judges the device.
        *self.pairs.entry((old, new)).or_default() += 1;
        Ok(())
    }
}
