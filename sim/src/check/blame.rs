//! An honest client is never closed for input it did not send.
//!
//! Honest devices send only well-formed, small frames, paced as the contract asks: at most
//! a few sends and joins under way, and a refused one tried again only after
//! `retryAfterMs`. So a server that ends an honest device's session as a protocol error,
//! an oversize payload or an event flood has either blamed it for another connection's
//! input (hostile actors send exactly those) or misread valid input; and a client that
//! earns such a close is not pacing itself. Either way the contract's "invalid input
//! never closes other users' connections" is broken, or the shipped client would be cut
//! off by its own server.

use std::collections::BTreeMap;

use heartline_core::engine::CloseReason;
use heartline_core::SessionId;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "honest-never-blamed";

/// Whether `reason` blames the client's own input.
fn blames_input(reason: &CloseReason) -> bool {
    match reason {
        CloseReason::PayloadTooLarge | CloseReason::ProtocolError(_) => true,
        CloseReason::ServerDisconnect(why) => why == "event flood",
        _ => false,
    }
}

/// The honest device behind each session the server connected.
#[derive(Debug, Default)]
pub struct Blame {
    devices: BTreeMap<SessionId, usize>,
}

impl Blame {
    /// The server connected `session`, of honest device `device` if any.
    pub fn connected(&mut self, session: SessionId, device: Option<usize>) {
        if let Some(d) = device {
            self.devices.insert(session, d);
        }
    }

    /// The server crashed: its sessions are gone without a close, and their ids may be
    /// allocated again.
    pub fn crash(&mut self) {
        self.devices.clear();
    }

    /// The server ended `session` (`device`: the honest device its handshake names, if
    /// the server still knows it) for `reason`.
    pub fn closed(
        &mut self,
        session: SessionId,
        device: Option<usize>,
        reason: &CloseReason,
    ) -> Finding {
        let device = self.devices.remove(&session).or(device);
        match device {
            Some(d) if blames_input(reason) => Err((
                NAME,
                format!("honest device c{d} ({session}) closed for \"{reason}\""),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_faults_of_an_honest_device_are_violations() {
        let mut check = Blame::default();
        let (a, b, h) = (SessionId(1), SessionId(2), SessionId(3));
        check.connected(a, Some(0));
        check.connected(b, Some(1));
        check.connected(h, None);
        assert!(check.closed(a, None, &CloseReason::PingTimeout).is_ok());
        let flood = CloseReason::ServerDisconnect("event flood".into());
        assert!(check.closed(b, None, &flood).is_err());
        assert!(check.closed(h, None, &flood).is_ok(), "a hostile actor's");
        let proto = CloseReason::ProtocolError("bad packet".into());
        assert!(
            check.closed(SessionId(4), Some(2), &proto).is_err(),
            "closed before its connect: known by its handshake"
        );
    }
}
