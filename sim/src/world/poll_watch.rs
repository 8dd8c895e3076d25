//! The server's polling sessions, watched for the dead-peer and handshake checkers.
//!
//! A WebSocket is one link from open to close; a polling session is carried by many
//! requests, and may move to a WebSocket. So it is watched under one name (its
//! handshake's link) from the server's side: opened by the handshake's answer, PINGed
//! by the answers (or WebSocket frames) that carry a PING, answered by the POSTs (or
//! frames) that carry a PONG. Its end is the server letting it go, read from the engine
//! after every step, since a session the server gives up on while no GET is held shows
//! nothing on the wire, and a client that vanished would never ask.

use heartline_core::codec::engine::{decode_payload, Packet};
use heartline_core::codec::Frame;
use heartline_core::engine::CloseReason;
use heartline_core::SessionId;

use super::Sim;

/// Most packets one polling body may carry, for decoding.
const MAX_PACKETS: usize = 10_000;

/// One polling session the server has open.
#[derive(Debug, Clone, Copy)]
pub struct PollWatch {
    /// The dead-peer checker's name for it: its handshake's link.
    watch: u64,
    /// The engine's id, once seen live.
    session: Option<SessionId>,
    /// The server closed it for a ping timeout.
    timed_out: bool,
}

impl Sim {
    /// The server answers polling request `id` with `body` (status 200): a handshake's
    /// answer opens a watch, a PING in a GET's answer is sent.
    pub(super) fn watch_polling_answer(&mut self, id: u64, body: &[u8]) {
        let text = String::from_utf8_lossy(body);
        let Ok(packets) = decode_payload(&text, MAX_PACKETS) else {
            return;
        };
        let now = self.now;
        if let Some(Packet::Open(open)) = packets.first() {
            self.polled.insert(
                open.sid.clone(),
                PollWatch {
                    watch: id,
                    session: None,
                    timed_out: false,
                },
            );
            self.dead_peer.opened_polling(now, id);
            self.handshake.accepted_polling(now, id);
            return;
        }
        let Some(watch) =
            self.polled_watch(self.net.link(id).and_then(|l| l.request_sid.as_deref()))
        else {
            return;
        };
        if packets
            .iter()
            .any(|p| matches!(p, Packet::Ping(x) if x.is_empty()))
        {
            self.dead_peer.ping(now, watch);
        }
    }

    /// The server reads a POST of session `sid`: a PONG in it answers the PING, a
    /// DISCONNECT of the namespace leaves the session unconnected. Not a body the engine
    /// refuses unread: one over the payload limit, or one for a session already moved
    /// onto a WebSocket.
    pub(super) fn watch_polling_post(&mut self, sid: Option<&str>, body: &[u8]) {
        let Some(w) = sid.and_then(|sid| self.polled.get(sid)) else {
            return;
        };
        let watch = w.watch;
        let upgraded = w.session.is_some_and(|session| {
            self.gw
                .as_ref()
                .and_then(|gw| gw.engine().is_websocket(session))
                .unwrap_or(false)
        });
        if upgraded || body.len() as u64 > self.gw_config.engine.max_payload_bytes {
            return;
        }
        let text = String::from_utf8_lossy(body);
        let Ok(packets) = decode_payload(&text, MAX_PACKETS) else {
            return;
        };
        let now = self.now;
        for packet in &packets {
            match packet {
                Packet::Pong(x) if x.is_empty() => self.dead_peer.pong(now, watch),
                Packet::Message(_) => {
                    if let Frame::Text(t) = packet.to_frame() {
                        self.handshake
                            .received(now, watch, &String::from_utf8_lossy(&t));
                    }
                }
                _ => {}
            }
        }
    }

    /// A frame on the WebSocket that upgrades session `sid` (`to_server`: read by the
    /// server, else written by it): `2` is a PING sent, `3` a PONG received, a DISCONNECT
    /// of the namespace leaves the session unconnected.
    pub(super) fn watch_upgraded_frame(&mut self, sid: Option<&str>, to_server: bool, text: &str) {
        let Some(watch) = self.polled_watch(sid) else {
            return;
        };
        let now = self.now;
        match (to_server, text) {
            (true, "3") => self.dead_peer.pong(now, watch),
            (false, "2") => self.dead_peer.ping(now, watch),
            (true, text) => self.handshake.received(now, watch, text),
            _ => {}
        }
    }

    /// The server connected a namespace on `session`.
    pub(super) fn watch_polling_connected(&mut self, session: SessionId) {
        if let Some(w) = self.polled.values().find(|w| w.session == Some(session)) {
            let watch = w.watch;
            self.handshake.connected(watch);
        }
    }

    /// The server closed `session` for `reason`.
    pub(super) fn watch_polling_closed(&mut self, session: SessionId, reason: &CloseReason) {
        if *reason != CloseReason::PingTimeout {
            return;
        }
        if let Some(w) = self
            .polled
            .values_mut()
            .find(|w| w.session == Some(session))
        {
            w.timed_out = true;
        }
    }

    /// After a server step: the sessions the engine no longer holds live have ended.
    pub(super) fn sweep_polled(&mut self) {
        if self.polled.is_empty() {
            return;
        }
        let Some(gw) = self.gw.as_ref() else {
            return;
        };
        let mut ended = Vec::new();
        for (sid, w) in &mut self.polled {
            match gw.engine().live_session(sid) {
                Some(session) => w.session = Some(session),
                None => ended.push(sid.clone()),
            }
        }
        let now = self.now;
        for sid in ended {
            if let Some(w) = self.polled.remove(&sid) {
                let finding = self.dead_peer.closed(now, w.watch, w.timed_out);
                self.found(finding);
                self.handshake.closed(now, w.watch);
            }
        }
    }

    /// The server died: its sessions with it.
    pub(super) fn forget_polled(&mut self) {
        self.polled.clear();
    }

    fn polled_watch(&self, sid: Option<&str>) -> Option<u64> {
        self.polled.get(sid?).map(|w| w.watch)
    }
}
