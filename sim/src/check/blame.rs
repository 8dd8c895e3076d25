//! An honest client is never closed for input it did not send, nor for no cause at all.
//!
//! Honest devices send only well-formed, small frames, paced as the contract asks: at most
//! a few sends and joins under way, and a refused one tried again only after
//! `retryAfterMs`. So a server that ends an honest device's session as a protocol error,
//! an oversize payload or an event flood has either blamed it for another connection's
//! input (hostile actors send exactly those) or misread valid input; and a client that
//! earns such a close is not pacing itself. Either way the contract's "invalid input
//! never closes other users' connections" is broken, or the shipped client would be cut
//! off by its own server.

//!
//! Nor is a connected honest session closed by the server for any cause outside the
//! contract's ("closed-for-cause"): a close the client recovers from by itself (it
//! reconnects and catches up) would pass every checker that judges only what the client
//! ends up with. The causes are the client's own close or its transport's end (network
//! faults), a ping timeout ([`super::dead_peer`] judges it), a displacement the server
//! announced (a `Replaced` notice first; [`super::per_user`] judges whom), its token's
//! expiry ([`super::token_expiry`] judges when), and a send queue it let overflow (the
//! simulator's own queue decides that). With `idle_timeout_ms` 0, as the simulator runs
//! it, there is no other.

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::engine::CloseReason;
use heartline_core::gateway::TOKEN_EXPIRED;
use heartline_core::SessionId;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "honest-never-blamed";

/// The name of its second rule.
pub const CAUSE: &str = "closed-for-cause";

/// Whether the server may end a connected honest session for `reason` (`replaced`: a
/// `Replaced` notice named it).
fn has_cause(reason: &CloseReason, replaced: bool) -> bool {
    match reason {
        CloseReason::ClientClose
        | CloseReason::TransportClose
        | CloseReason::TransportError
        | CloseReason::PingTimeout
        | CloseReason::SlowConsumer => true,
        CloseReason::Replaced => replaced,
        CloseReason::ServerDisconnect(why) => why == TOKEN_EXPIRED,
        _ => false,
    }
}

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
    /// Sessions a `Replaced` notice named, until they close.
    replaced: BTreeSet<SessionId>,
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
        self.replaced.clear();
    }

    /// The server announced that it displaces `session`.
    pub fn replaced(&mut self, session: SessionId) {
        self.replaced.insert(session);
    }

    /// The server ended `session` (`device`: the honest device its handshake names, if
    /// the server still knows it) for `reason`.
    pub fn closed(
        &mut self,
        session: SessionId,
        device: Option<usize>,
        reason: &CloseReason,
    ) -> Finding {
        let connected = self.devices.remove(&session);
        let replaced = self.replaced.remove(&session);
        match connected.or(device) {
            Some(d) if blames_input(reason) => Err((
                NAME,
                format!("honest device c{d} ({session}) closed for \"{reason}\""),
            )),
            _ => match connected {
                Some(d) if !has_cause(reason, replaced) => Err((
                    CAUSE,
                    format!("honest device c{d} ({session}) closed for \"{reason}\""),
                )),
                _ => Ok(()),
            },
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

    #[test]
    fn a_connected_honest_session_is_closed_only_for_a_cause() {
        let mut check = Blame::default();
        let ok = [
            CloseReason::ClientClose,
            CloseReason::TransportError,
            CloseReason::PingTimeout,
            CloseReason::SlowConsumer,
            CloseReason::ServerDisconnect(TOKEN_EXPIRED.into()),
        ];
        for (i, reason) in ok.iter().enumerate() {
            let s = SessionId(i as u64);
            check.connected(s, Some(0));
            assert!(check.closed(s, None, reason).is_ok(), "{reason}");
        }
        let no_cause = [
            CloseReason::Replaced,
            CloseReason::HandshakeTimeout,
            CloseReason::ServerClose("store".into()),
            CloseReason::ServerDisconnect("idle timeout".into()),
            CloseReason::ServerShutdown,
        ];
        for (i, reason) in no_cause.iter().enumerate() {
            let s = SessionId(100 + i as u64);
            check.connected(s, Some(0));
            let e = check.closed(s, None, reason).expect_err("no cause");
            assert_eq!(e.0, CAUSE, "{reason}");
        }
        // Displaced, as announced.
        check.connected(SessionId(200), Some(1));
        check.replaced(SessionId(200));
        assert!(check
            .closed(SessionId(200), None, &CloseReason::Replaced)
            .is_ok());
        // Not connected (a handshake that timed out, a hostile actor): not judged here.
        assert!(check
            .closed(SessionId(300), Some(1), &CloseReason::HandshakeTimeout)
            .is_ok());
    }
}
