//! A connection with no namespace connected `handshake_timeout_ms` after the server
//! accepted it is closed by then: a client that opens sockets and never says who it is
//! (or is refused and stays) cannot hold them, whether or not it answers PINGs. The same
//! holds from the moment a connected client disconnects its namespace and keeps the
//! connection: it connects again in that time or is closed, not kept for its PINGs.
//!
//! Watched from the server's end of the wire: a link is accepted when the server takes its
//! open, and connected when the server answers a namespace CONNECT with its `sid`; until
//! then the server's close of it must come by the deadline ([`Deadlines`]); a close that
//! itself comes late is a violation as it is seen. A connected link whose client's
//! DISCONNECT of the namespace the server reads is watched again, from that read.
//!
//! A long-polling session is watched as one (see `world/poll_watch.rs`): accepted when the
//! server answers its handshake, connected when the server says so (a CONNECT's answer
//! waits in the session's buffer for the client's next GET, which a frozen client never
//! sends), closed when the engine lets it go.

use std::collections::BTreeSet;

use heartline_core::Instant;

use super::deadlines::Deadlines;
use super::wire::is_chat_disconnect;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "handshake-deadline";

/// See the module docs.
#[derive(Debug, Default)]
pub struct Handshake {
    timeout_ms: u64,
    /// Links accepted and not yet connected: their deadlines.
    waiting: Deadlines,
    /// Links with the namespace connected.
    connected: BTreeSet<u64>,
    /// Links closed with no namespace connected, by the deadline.
    pub closed_unconnected: u64,
    /// Times a connected link's client disconnected its namespace and stayed.
    pub left: u64,
    late: Option<String>,
    /// The watched names that are polling sessions, for what a finding says.
    polling: BTreeSet<u64>,
}

impl Handshake {
    fn name(&self, link: u64) -> String {
        super::watched_name(link, self.polling.contains(&link))
    }
}

impl Handshake {
    /// `timeout_ms`: the engine's `handshake_timeout_ms`.
    pub fn new(timeout_ms: u64) -> Self {
        Handshake {
            timeout_ms,
            ..Handshake::default()
        }
    }

    /// The server accepted `link` at `now`.
    pub fn accepted(&mut self, now: Instant, link: u64) {
        self.waiting.set(link, now.add_ms(self.timeout_ms));
    }

    /// The server answered a polling handshake on `link` at `now`: the session is
    /// watched under that name.
    pub fn accepted_polling(&mut self, now: Instant, link: u64) {
        self.polling.insert(link);
        self.accepted(now, link);
    }

    /// The server connected a namespace on `link` (a polling session's name).
    pub fn connected(&mut self, link: u64) {
        self.waiting.remove(link);
        self.connected.insert(link);
    }

    /// The server sent a text frame on `link`: a namespace CONNECT's answer with a `sid`
    /// ends the watch.
    pub fn sent(&mut self, link: u64, text: &str) {
        if text.starts_with("40/") && text.contains("\"sid\"") {
            self.connected(link);
        }
    }

    /// The server read `text` from the client of `link` at `now`: a DISCONNECT of the
    /// connected namespace starts the deadline again.
    pub fn received(&mut self, now: Instant, link: u64, text: &str) {
        if is_chat_disconnect(text) && self.connected.remove(&link) {
            self.left += 1;
            self.waiting.set(link, now.add_ms(self.timeout_ms));
        }
    }

    /// The server's side of `link` is gone at `now`.
    pub fn closed(&mut self, now: Instant, link: u64) {
        let name = self.name(link);
        self.polling.remove(&link);
        self.connected.remove(&link);
        let Some(deadline) = self.waiting.remove(link) else {
            return;
        };
        self.closed_unconnected += 1;
        if now > deadline && self.late.is_none() {
            self.late = Some(format!(
                "{name} closed at {now} with no namespace connected, past its deadline \
                 {deadline}"
            ));
        }
    }

    /// The server died: its links are gone with it.
    pub fn forget_all(&mut self) {
        self.waiting.clear();
        self.polling.clear();
        self.connected.clear();
    }

    /// Checks the earliest deadline against `now`.
    pub fn check(&mut self, now: Instant) -> Finding {
        if let Some(what) = self.late.take() {
            return Err((NAME, what));
        }
        match self.waiting.overdue(now) {
            Some((deadline, link)) => {
                self.waiting.remove(link);
                Err((
                    NAME,
                    format!(
                        "{} still open at {now} with no namespace connected, past its \
                         deadline {deadline} ({}ms after it was accepted or its client \
                         left the namespace)",
                        self.name(link),
                        self.timeout_ms
                    ),
                ))
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn a_connected_link_is_not_watched_and_an_unconnected_one_must_close_in_time() {
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        h.accepted(at(0), 2);
        h.sent(1, r#"40/chat,{"sid":"x"}"#);
        // A refused connect connects nothing.
        h.sent(2, r#"44/chat,{"message":"Invalid authentication token"}"#);
        assert_eq!(h.check(at(1_000)), Ok(()));
        h.closed(at(1_000), 2);
        assert_eq!(h.check(at(5_000)), Ok(()));
        assert_eq!(h.closed_unconnected, 1);
    }

    #[test]
    fn a_client_that_leaves_its_namespace_and_stays_is_watched_again() {
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        h.sent(1, r#"40/chat,{"sid":"x"}"#);
        h.received(at(500), 1, "41/chat,");
        assert_eq!(h.left, 1);
        assert_eq!(h.check(at(1_500)), Ok(()));
        assert!(h.check(at(1_501)).is_err());

        // Connecting again in time ends the watch; a DISCONNECT read while not connected
        // (the CONNECT still being decided) starts nothing.
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        h.received(at(10), 1, "41/chat,");
        h.sent(1, r#"40/chat,{"sid":"x"}"#);
        h.received(at(500), 1, "41/chat,");
        h.sent(1, r#"40/chat,{"sid":"y"}"#);
        assert_eq!(h.check(at(9_000)), Ok(()));
        assert_eq!(h.left, 1);

        // Closed in time after leaving: no finding, counted as closed unconnected.
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 2);
        h.connected(2);
        h.received(at(100), 2, "41/chat,");
        h.closed(at(1_100), 2);
        assert_eq!(h.check(at(9_000)), Ok(()));
        assert_eq!(h.closed_unconnected, 1);
    }

    #[test]
    fn open_past_the_deadline_or_closed_late_is_a_violation() {
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        assert!(h.check(at(1_001)).is_err());
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        h.closed(at(1_001), 1);
        assert!(h.check(at(1_001)).is_err());
        let mut h = Handshake::new(1_000);
        h.accepted(at(0), 1);
        h.forget_all();
        assert_eq!(h.check(at(9_000)), Ok(()));
    }
}
