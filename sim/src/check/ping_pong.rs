//! No two devices replace each other more than once.
//!
//! A device told `connection:replaced` must stay away; if it comes back it displaces the
//! device that displaced it, which then comes back too, forever. Watched from both ends:
//! a device that received `connection:replaced` and later completes a connect is the
//! first half of that loop. And what keeps `socket.io-client` away is the Socket.IO
//! DISCONNECT (reason `io server disconnect`), not the event: a link told it was replaced
//! that the server then closes in order without a DISCONNECT would bring such a client
//! back (reason `transport close`), even though the project's own client stays away.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::SessionId;

use super::wire::is_chat_disconnect;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "no-ping-pong-replacement";

/// See the module docs.
#[derive(Debug, Default)]
pub struct PingPong {
    told: BTreeSet<usize>,
    /// Links told `connection:replaced`, and whether a DISCONNECT followed on each.
    replaced_links: BTreeMap<u64, bool>,
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

    /// A frame from the server reached an honest client's `link`.
    pub fn link_frame(&mut self, link: u64, text: &str) {
        if text.starts_with("42/chat,[\"connection:replaced\"") {
            self.replaced_links.insert(link, false);
        } else if is_chat_disconnect(text) {
            if let Some(disconnected) = self.replaced_links.get_mut(&link) {
                *disconnected = true;
            }
        }
    }

    /// The server's close of an honest client's `link` arrived (`error`: a reset).
    pub fn link_closed(&mut self, link: u64, error: bool) -> Finding {
        match self.replaced_links.remove(&link) {
            Some(false) if !error => Err((
                NAME,
                format!(
                    "ws{link} was told connection:replaced and closed without a Socket.IO \
                     DISCONNECT: socket.io-client would reconnect"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The client gave `link` up itself.
    pub fn link_dropped(&mut self, link: u64) {
        self.replaced_links.remove(&link);
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
