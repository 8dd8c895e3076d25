//! One Engine.IO session and the Socket.IO namespaces on it: plain data, no behaviour.
//!
//! A session outlives any one transport: it starts on polling or on a WebSocket, may move
//! from polling to a WebSocket once (the upgrade), and, when the server closes a polling
//! session with something still to say, lingers until the client fetches it.

use crate::codec::socket::Decoder;
use crate::engine::close::CloseReason;
use crate::engine::io::Handshake;
use crate::engine::send_queue::SendQueue;
use crate::ids::{Id20, RequestId, TransportId};
use crate::time::Instant;
use crate::timer::{TimerKind, TimerTable};

/// The deadlines a session can have. The declaration order is the firing order for
/// deadlines of one session that fall due at the same instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// No namespace connected yet: close at `accepted_at + handshake_timeout_ms`.
    Handshake,
    /// Send the next PING.
    PingSend,
    /// A PING is outstanding: close if no PONG comes by then.
    PongDeadline,
    /// A probe WebSocket must finish the upgrade by then.
    Upgrade,
    /// A closed polling session waits this long for the client to fetch its last packets.
    Linger,
}

impl TimerKind for Timer {
    const ALL: &'static [Self] = &[
        Timer::Handshake,
        Timer::PingSend,
        Timer::PongDeadline,
        Timer::Upgrade,
        Timer::Linger,
    ];
    fn slot(self) -> usize {
        self as usize
    }
}

/// The timers of one session.
pub(crate) type Timers = TimerTable<Timer, { Timer::COUNT }>;

/// Where a session's packets go.
#[derive(Debug)]
pub(crate) enum Transport {
    /// Straight onto a WebSocket, one packet per message.
    WebSocket(TransportId),
    /// Into a queue that the client's next GET drains. Boxed: most sessions are on a
    /// WebSocket, and an inline queue would make every session 40 bytes larger.
    Polling(Box<Polling>),
}

/// The polling side of a session.
#[derive(Debug, Default)]
pub(crate) struct Polling {
    /// The GET being held open until there is something to send.
    pub(crate) pending_get: Option<RequestId>,
    /// Encoded packets waiting for a GET, bounded by the slow-consumer rule.
    pub(crate) queue: SendQueue,
    /// A WebSocket probing to take the session over (only a polling session is upgraded).
    pub(crate) upgrade: Option<Upgrade>,
}

/// A WebSocket trying to take over a polling session.
#[derive(Debug)]
pub(crate) struct Upgrade {
    /// The probe socket.
    pub(crate) ws: TransportId,
    /// Whether `2probe` was answered; only then may `5` complete the upgrade.
    pub(crate) probed: bool,
    /// When the upgrade times out.
    pub(crate) deadline: Instant,
    /// A GET that came after the probe was answered is held until then (see
    /// [`UPGRADE_GET_HOLD_MS`](super::polling::UPGRADE_GET_HOLD_MS)); the session's
    /// [`Timer::Upgrade`] fires at the earlier of this and `deadline`.
    pub(crate) get_hold: Option<Instant>,
    /// The session ended (why) after the probe was answered: the client may already
    /// have paused polling for this socket, so what the session still had to say goes
    /// out on it when its `5` comes, and the socket is closed then (or when the session
    /// is let go).
    pub(crate) closing: Option<CloseReason>,
}

impl Upgrade {
    /// When [`Timer::Upgrade`] should fire next.
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.get_hold {
            Some(hold) if hold < self.deadline => hold,
            _ => self.deadline,
        }
    }
}

/// A Socket.IO namespace on the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Namespace {
    /// CONNECT received; the application has not answered yet.
    Pending,
    /// Connected, with the socket id the client sees as `socket.id`.
    Connected(Id20),
}

/// A session's namespaces, ordered by name.
///
/// A sorted vector, not a `BTreeMap`: a session has one or two namespaces, and a B-tree
/// allocates a whole eleven-entry node (over 600 bytes) for the first, on every session.
#[derive(Debug, Default)]
pub(crate) struct Namespaces(Vec<(String, Namespace)>);

impl Namespaces {
    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name))
    }

    /// The namespace called `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&Namespace> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    /// The namespace called `name`, to change.
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Namespace> {
        self.find(name).ok().map(|i| &mut self.0[i].1)
    }

    /// Sets the namespace called `name`.
    pub(crate) fn insert(&mut self, name: String, ns: Namespace) {
        match self.find(&name) {
            Ok(i) => self.0[i].1 = ns,
            Err(i) => {
                // Exact: one or two namespaces, never worth a doubling.
                self.0.reserve_exact(1);
                self.0.insert(i, (name, ns));
            }
        }
    }

    /// Forgets the namespace called `name`.
    pub(crate) fn remove(&mut self, name: &str) {
        if let Ok(i) = self.find(name) {
            self.0.remove(i);
        }
    }

    /// Every namespace, by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &Namespace)> {
        self.0.iter().map(|(n, ns)| (n, ns))
    }

    /// Every namespace's state, by name.
    pub(crate) fn values(&self) -> impl Iterator<Item = &Namespace> {
        self.0.iter().map(|(_, ns)| ns)
    }
}

/// One session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Its public id.
    pub(crate) sid: Id20,
    /// Where its packets go.
    pub(crate) transport: Transport,
    /// Its deadlines.
    pub(crate) timers: Timers,
    /// Reassembles Socket.IO packets with binary attachments.
    pub(crate) decoder: Decoder,
    /// Namespaces asked for or connected, by name.
    pub(crate) namespaces: Namespaces,
    /// The handshake request's facts.
    pub(crate) handshake: Handshake,
    /// Whether the session has ended; it only lingers to hand over its last packets.
    pub(crate) closed: bool,
    /// Whether the client's close is already in hand behind packets still to be handled
    /// ([`Input::WsClosing`](crate::engine::Input::WsClosing), or a CLOSE later in the same
    /// polling POST): a namespace CONNECT opens nothing.
    pub(crate) peer_leaving: bool,
    /// Packets from the client since the last PING that changed nothing (a NOOP, a PONG
    /// to no PING, a DISCONNECT from a namespace not connected, a CONNECT to one that does
    /// not exist or that was refused): bounded by [`crate::engine::MAX_IDLE_PACKETS`].
    pub(crate) idle_packets: u16,
}

impl Session {
    /// Whether nothing waits for a polling client's GET (always, on a WebSocket).
    pub(crate) fn queue_is_empty(&self) -> bool {
        match &self.transport {
            Transport::Polling(p) => p.queue.is_empty(),
            Transport::WebSocket(_) => true,
        }
    }

    /// The upgrade under way, if any.
    pub(crate) fn upgrade(&self) -> Option<&Upgrade> {
        match &self.transport {
            Transport::Polling(p) => p.upgrade.as_ref(),
            Transport::WebSocket(_) => None,
        }
    }

    /// The upgrade under way, if any, to update.
    pub(crate) fn upgrade_mut(&mut self) -> Option<&mut Upgrade> {
        match &mut self.transport {
            Transport::Polling(p) => p.upgrade.as_mut(),
            Transport::WebSocket(_) => None,
        }
    }

    /// Ends the upgrade under way, if any, and returns it.
    pub(crate) fn take_upgrade(&mut self) -> Option<Upgrade> {
        match &mut self.transport {
            Transport::Polling(p) => p.upgrade.take(),
            Transport::WebSocket(_) => None,
        }
    }

    /// Starts an upgrade; `false` (and nothing changes) unless the session is polling.
    pub(crate) fn start_upgrade(&mut self, up: Upgrade) -> bool {
        match &mut self.transport {
            Transport::Polling(p) => {
                p.upgrade = Some(up);
                true
            }
            Transport::WebSocket(_) => false,
        }
    }

    /// Whether any namespace is connected.
    pub(crate) fn has_connected_namespace(&self) -> bool {
        self.namespaces
            .values()
            .any(|n| matches!(n, Namespace::Connected(_)))
    }
}

/// How to end a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The peer is gone or broke the rules: stop at once.
    Abort,
    /// Let the client receive what was sent before the close (the Socket.IO DISCONNECT of a
    /// replacement, say) and a CLOSE packet.
    Flush,
    /// The client sent CLOSE over polling while no GET was held. Its GET may still be on
    /// the way: a POST and a GET travel on separate connections and can arrive in either
    /// order. That GET gets the NOOP a held one would have had, not an error.
    Release,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every session is boxed, and the allocator serves a box from the next size class up
    /// (..., 128, 160, 192, 224, 256, 320, ...): at 264 bytes each session took 320, at
    /// 176 it took 192.
    #[test]
    fn a_session_fits_a_160_byte_block() {
        assert!(std::mem::size_of::<Session>() <= 160);
    }

    #[test]
    fn timer_kinds_list_their_slots_in_order() {
        crate::timer::assert_slots_in_order::<Timer>();
    }
}
