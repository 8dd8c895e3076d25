//! The WebSocket transport: sessions that start on a WebSocket, and the probe WebSocket
//! that takes a polling session over (the upgrade).
//!
//! The driver completes every WebSocket opening handshake on the Engine.IO path and lets
//! the engine decide; a socket the engine does not want is closed right after it opened.
//! Clients handle that in every case, whereas an HTTP error on the upgrade request makes
//! some of them throw.

use crate::codec::engine::Packet as EioPacket;
use crate::codec::Frame;
use crate::engine::close::{CloseReason, UsageError};
use crate::engine::io::{Handshake, Query, Transmit};
use crate::engine::session::{Ending, Transport, Upgrade};
use crate::engine::{Engine, Event, Timer};
use crate::ids::{Id20, SessionId, TransportId};
use crate::time::Instant;

impl Engine {
    pub(crate) fn on_ws_opened(
        &mut self,
        now: Instant,
        ws: TransportId,
        query: Query,
        handshake: Handshake,
    ) -> Result<(), UsageError> {
        if self.by_transport.contains_key(&ws) {
            return Err(UsageError::DuplicateTransport(ws));
        }
        let refuse = |engine: &mut Engine, why: &str| {
            engine.transmit(Transmit::WsClose {
                transport: ws,
                reason: CloseReason::ProtocolError(why.to_owned()),
            });
        };
        match self.check_query(&query) {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                refuse(self, "bad websocket query");
                return Ok(());
            }
        }
        let Some(sid) = query.sid else {
            if !self.admit_session() {
                self.transmit(Transmit::WsClose {
                    transport: ws,
                    reason: CloseReason::TooManySessions,
                });
                return Ok(());
            }
            let id = self.open(now, Transport::WebSocket(ws), handshake);
            if let Some(sid) = self.sessions.get(&id).map(|s| s.sid) {
                let open = self.open_packet(sid, true);
                self.transmit(Transmit::WsSend {
                    transport: ws,
                    frame: open,
                });
            }
            return Ok(());
        };
        // An upgrade: only a live polling session with no upgrade under way may be taken over.
        let Some(id) = Id20::parse(&sid).and_then(|k| self.by_sid.get(&k)).copied() else {
            refuse(self, "unknown sid");
            return Ok(());
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            refuse(self, "unknown sid");
            return Ok(());
        };
        let deadline = now.add_ms(self.config.upgrade_timeout_ms);
        let up = Upgrade {
            ws,
            probed: false,
            deadline,
            get_hold: None,
            closing: None,
        };
        if s.closed || s.upgrade().is_some() || !s.start_upgrade(up) {
            refuse(self, "session cannot be upgraded");
            return Ok(());
        }
        self.timers.set(&mut s.timers, id, Timer::Upgrade, deadline);
        self.by_transport.insert(ws, id);
        Ok(())
    }

    pub(crate) fn on_ws_frame(&mut self, now: Instant, ws: TransportId, frame: Frame) {
        // Frames can still arrive for a socket the engine has just closed: ignore them.
        let Some(id) = self.by_transport.get(&ws).copied() else {
            return;
        };
        let Some(s) = self.sessions.get(&id) else {
            return;
        };
        let is_probe = s.upgrade().is_some_and(|u| u.ws == ws);
        if frame.len() as u64 > self.config.max_payload_bytes {
            if is_probe {
                return self.cancel_upgrade(id, CloseReason::PayloadTooLarge);
            }
            return self.end(now, id, CloseReason::PayloadTooLarge, Ending::Abort);
        }
        let packet = match EioPacket::from_frame(&frame) {
            Ok(p) => p,
            Err(e) => {
                if is_probe {
                    return self.cancel_upgrade(id, CloseReason::ProtocolError(e.to_string()));
                }
                return self.end(
                    now,
                    id,
                    CloseReason::ProtocolError(e.to_string()),
                    Ending::Abort,
                );
            }
        };
        if is_probe {
            self.on_probe_packet(id, ws, packet);
        } else {
            self.on_engine_packet(now, id, packet);
        }
    }

    /// The peer closed behind frames still to come (see
    /// [`crate::engine::Input::WsClosing`]); only the session's own socket counts, not an
    /// upgrade probe.
    pub(crate) fn on_ws_closing(&mut self, ws: TransportId) {
        let Some(id) = self.by_transport.get(&ws).copied() else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&id) {
            if matches!(s.transport, Transport::WebSocket(t) if t == ws) {
                s.peer_leaving = true;
            }
        }
    }

    pub(crate) fn on_ws_closed(&mut self, ws: TransportId, reason: CloseReason) {
        let Some(id) = self.by_transport.get(&ws).copied() else {
            return;
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.upgrade().is_some_and(|u| u.ws == ws) {
            // The probe went away; the session carries on polling.
            s.take_upgrade();
            self.timers.stop(&mut s.timers, id, Timer::Upgrade);
            self.by_transport.remove(&ws);
            return;
        }
        // The socket is already gone, so there is nothing to flush and no close to send.
        self.mark_closed(id, &reason, false);
        self.remove(id);
    }

    fn on_probe_packet(&mut self, id: SessionId, ws: TransportId, packet: EioPacket) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(up) = s.upgrade_mut() else {
            return;
        };
        match packet {
            EioPacket::Ping(ref p) if p == "probe" && !up.probed => {
                up.probed = true;
                self.transmit(Transmit::WsSend {
                    transport: ws,
                    frame: EioPacket::Pong("probe".into()).to_frame(),
                });
                // Release the held GET so the client can pause polling and finish.
                self.release_get(id);
            }
            EioPacket::Upgrade if up.probed => self.complete_upgrade(id, ws),
            // The session has ended and waits only for this `5` to say its last.
            _ if up.closing.is_some() => {}
            _ => self.cancel_upgrade(
                id,
                CloseReason::ProtocolError("unexpected packet during upgrade".into()),
            ),
        }
    }

    /// Moves the session onto the probe socket and sends it what polling had queued.
    ///
    /// A GET still held here came after the probe was answered (the one held before was
    /// released then), and a client sends `5` only once its polling has paused: so that GET
    /// was sent after the upgrade and reached the engine first. It is refused like any GET
    /// after the upgrade.
    ///
    /// If the session ended after the probe was answered, what it still had to say goes
    /// out on the socket (not polling's CLOSE: the socket's own close says that), the
    /// socket is closed and the session let go, as the reference server does.
    fn complete_upgrade(&mut self, id: SessionId, ws: TransportId) {
        self.refuse_get(id);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let closing = s.take_upgrade().and_then(|up| up.closing);
        self.timers.stop(&mut s.timers, id, Timer::Upgrade);
        let old = std::mem::replace(&mut s.transport, Transport::WebSocket(ws));
        if let Transport::Polling(p) = old {
            let close = EioPacket::Close.to_frame();
            for frame in p.queue.into_frames() {
                if closing.is_some() && frame == close {
                    continue;
                }
                self.transmit(Transmit::WsSend {
                    transport: ws,
                    frame,
                });
            }
        }
        match closing {
            None => self.event(Event::Upgraded { session: id }),
            Some(reason) => {
                self.transmit(Transmit::WsClose {
                    transport: ws,
                    reason,
                });
                self.remove(id);
            }
        }
    }

    /// Closes the probe socket; the session stays on polling.
    pub(crate) fn cancel_upgrade(&mut self, id: SessionId, reason: CloseReason) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(up) = s.take_upgrade() else {
            return;
        };
        self.timers.stop(&mut s.timers, id, Timer::Upgrade);
        self.by_transport.remove(&up.ws);
        self.transmit(Transmit::WsClose {
            transport: up.ws,
            reason,
        });
    }
}
