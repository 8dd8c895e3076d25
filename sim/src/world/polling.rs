//! Honest devices on Engine.IO's long-polling transport, as `socket.io-client` starts out
//! (and stays, with `transports: ["polling"]`).
//!
//! The client state machine is the one WebSocket devices run; this adapter carries its
//! frames over HTTP instead, one request per link, as a browser's requests on fresh
//! connections: a handshake GET, then a GET the server holds until it has packets, another
//! as soon as that one is answered, and a POST of whatever the client has to send (one at
//! a time; what accumulates meanwhile goes in the next). A request that fails (reset,
//! closed unanswered, an error status) or an answer carrying the CLOSE packet closes the
//! transport for the client, as `socket.io-client`'s polling transport does, and the
//! client reconnects by its own rules. The server side is the engine's own polling code,
//! fed `Input::Http` and answered with `Transmit::HttpResponse`; a request given up
//! while the server holds it is `Input::HttpAborted`.
//!
//! The checkers that watch one connection's frames (what is written and read on it, the
//! heartbeat's cadence) read WebSockets only. Polling devices are held to everything else:
//! the dead-peer and handshake deadlines (each session watched as one, see
//! `poll_watch.rs`), delivery and acknowledgements, the server's presence announcements,
//! per-user rules and replacement, close reasons, liveness after healing and the baseline
//! after everyone leaves.

use bytes::Bytes;
use heartline_core::codec::engine::{decode_payload, encode_payload, Packet};
use heartline_core::codec::Frame;

use super::Sim;
use crate::net::{End, Seg};

/// Most packets one polling answer may carry, for decoding.
const MAX_PACKETS: usize = 10_000;

/// A polling device's transport: its session and the requests it has out.
#[derive(Debug, Default)]
pub struct Polling {
    /// The session, once the handshake's answer named it.
    sid: Option<String>,
    /// The server incarnation that answered the handshake.
    epoch: u32,
    /// The handshake GET, unanswered.
    handshake: Option<u64>,
    /// The receiving GET, unanswered.
    get: Option<u64>,
    /// The POST, unanswered.
    post: Option<u64>,
    /// Frames waiting for the next POST (or, while pausing, for the WebSocket).
    queue: Vec<Frame>,
    /// Takes the WebSocket the server offers, as `socket.io-client` does by default; kept
    /// across sessions.
    upgrades: bool,
    /// The WebSocket probing the session, before it takes over.
    probe: Option<u64>,
    /// The probe was answered: polling pauses (no new GET or POST) until no request is
    /// out, then the WebSocket takes over.
    pausing: bool,
    /// The WebSocket that took the session over.
    ws: Option<u64>,
    /// The most bytes a POST may carry, from the handshake (`maxPayload`).
    max_payload: usize,
    /// The session's name for `no-ping-pong-replacement`, which reads a connection's
    /// frames in order: its handshake's link, as the session outlives its requests.
    watch: Option<u64>,
    /// Requests of sessions it has left, whose answers it ignores: a browser does not
    /// abort them (`socket.io-client` sends the CLOSE packet and lets the held GET be
    /// answered), and gives them up only when it opens its next transport. Kept across
    /// sessions.
    detached: Vec<u64>,
}

/// Which part of the transport a link carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Handshake,
    Get,
    Post,
    Probe,
    WebSocket,
}

impl Polling {
    /// A transport that upgrades to a WebSocket when offered one, or not.
    pub fn new(upgrades: bool) -> Self {
        Polling {
            upgrades,
            max_payload: usize::MAX,
            ..Polling::default()
        }
    }

    fn role(&self, link: u64) -> Option<Role> {
        [
            (self.handshake, Role::Handshake),
            (self.get, Role::Get),
            (self.post, Role::Post),
            (self.probe, Role::Probe),
            (self.ws, Role::WebSocket),
        ]
        .into_iter()
        .find(|(id, _)| *id == Some(link))
        .map(|(_, role)| role)
    }

    /// The links it holds: requests out, the probe, the WebSocket.
    pub fn links(&self) -> Vec<u64> {
        [self.handshake, self.get, self.post, self.probe, self.ws]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The WebSocket that took the session over.
    pub fn websocket(&self) -> Option<u64> {
        self.ws
    }

    /// The receiving GET, the request the server holds.
    pub fn get(&self) -> Option<u64> {
        self.get
    }

    /// Requests of sessions it has left, still unanswered.
    pub fn detached(&self) -> &[u64] {
        &self.detached
    }

    /// The session and the incarnation it belongs to.
    pub fn session(&self) -> Option<(&str, u32)> {
        self.sid.as_deref().map(|sid| (sid, self.epoch))
    }
}

impl Sim {
    /// Device `i`'s polling transport, if it is a polling device.
    fn polling_of(&self, i: usize) -> Option<&Polling> {
        self.clients.get(i).and_then(|s| s.polling.as_deref())
    }

    fn polling_mut(&mut self, i: usize) -> Option<&mut Polling> {
        self.clients
            .get_mut(i)
            .and_then(|s| s.polling.as_deref_mut())
    }

    /// Client `i` sends one polling request of its session on a link of its own.
    fn polling_request(&mut self, i: usize, post: bool, body: String) -> u64 {
        let sid = self.polling_of(i).and_then(|p| p.sid.clone());
        self.polling_request_for(i, sid, post, body)
    }

    /// Client `i` sends one polling request for session `sid` (none: a handshake).
    fn polling_request_for(
        &mut self,
        i: usize,
        sid: Option<String>,
        post: bool,
        body: String,
    ) -> u64 {
        let what = match (post, &sid) {
            (true, _) => format!("POST {}", crate::trace::short(&body, 60)),
            (false, Some(_)) => "GET".to_owned(),
            (false, None) => "GET (handshake)".to_owned(),
        };
        let now = self.now;
        let id = self.http_request(End::Client(i), now, sid, post, body);
        self.counters.polling_requests += 1;
        tr!(self, "client", ("c{i} http{id} {what}"));
        id
    }

    /// Opens a link from `end` at `at` (or now, if that has passed) that carries one
    /// polling request, as a browser's request on a fresh connection; its id.
    pub(super) fn http_request(
        &mut self,
        end: End,
        at: heartline_core::Instant,
        sid: Option<String>,
        post: bool,
        body: String,
    ) -> u64 {
        let now = self.now;
        let id = self
            .net
            .open(at.max(now), end, &mut self.rng, &mut self.agenda);
        if let Some(link) = self.net.link_mut(id) {
            link.http = true;
        }
        let seg = Seg::Request {
            post,
            sid,
            body: Bytes::from(body),
        };
        self.net
            .send(now, id, true, seg, &mut self.rng, &mut self.agenda);
        id
    }

    /// Client `i` opens its transport: a handshake GET. Requests of the sessions it left
    /// that are still unanswered are given up now.
    pub(super) fn polling_open(&mut self, i: usize) {
        self.polling_abandon(i, false);
        let stale = self
            .clients
            .get_mut(i)
            .and_then(|s| s.polling.as_mut())
            .map(|p| std::mem::take(&mut p.detached))
            .unwrap_or_default();
        for id in stale {
            self.client_closes(id);
        }
        let id = self.polling_request(i, false, String::new());
        if let Some(p) = self.polling_mut(i) {
            p.handshake = Some(id);
        }
    }

    /// Client `i` sends a frame: in the next POST, at once if none is out.
    pub(super) fn polling_send(&mut self, i: usize, frame: Frame) {
        let Some(p) = self.polling_mut(i) else {
            return;
        };
        if p.sid.is_none() {
            return; // no transport: lost, as on a closed socket
        }
        if let Some(ws) = p.ws {
            let now = self.now;
            let seg = Seg::Frame(frame);
            self.net
                .send(now, ws, true, seg, &mut self.rng, &mut self.agenda);
            return;
        }
        p.queue.push(frame);
        self.polling_flush(i);
    }

    fn polling_flush(&mut self, i: usize) {
        let Some(p) = self.polling_mut(i) else {
            return;
        };
        if p.post.is_some() || p.queue.is_empty() || p.sid.is_none() || p.ws.is_some() {
            return;
        }
        if p.pausing {
            // No new request while pausing: the queue goes over the WebSocket.
            return self.polling_try_upgrade(i);
        }
        // As many frames as fit the server's `maxPayload` (at least one), as
        // `socket.io-client` splits what it has to send.
        let mut size = 0usize;
        let take = p
            .queue
            .iter()
            .take_while(|f| {
                size = size.saturating_add(f.len() + 1);
                size <= p.max_payload
            })
            .count()
            .max(1);
        let frames: Vec<Frame> = p.queue.drain(..take).collect();
        let body = encode_payload(&frames);
        let id = self.polling_request(i, true, body);
        if let Some(p) = self.polling_mut(i) {
            p.post = Some(id);
        }
    }

    fn polling_get(&mut self, i: usize) {
        let id = self.polling_request(i, false, String::new());
        if let Some(p) = self.polling_mut(i) {
            p.get = Some(id);
        }
    }

    /// Client `i` closes its transport, as `socket.io-client` does.
    pub(super) fn polling_close(&mut self, i: usize) {
        self.polling_abandon(i, true);
    }

    /// Client `i` leaves its session: its probe and WebSocket close; its polling requests
    /// out are left to be answered, unread (see [`Polling::detached`]); with `say_close`
    /// and a session on polling, the CLOSE packet goes in a POST of its own, whether or
    /// not another is out (as `socket.io-client` writes it), or, with the handshake still
    /// out, once that is answered.
    fn polling_abandon(&mut self, i: usize, say_close: bool) {
        let Some(p) = self.polling_mut(i) else {
            return;
        };
        let sockets: Vec<u64> = [p.probe, p.ws].into_iter().flatten().collect();
        let requests: Vec<u64> = [p.handshake, p.get, p.post].into_iter().flatten().collect();
        let on_polling = p.ws.is_none();
        let sid = p.sid.clone();
        let watch = p.watch;
        let handshake = p.handshake;
        let mut detached = std::mem::take(&mut p.detached);
        detached.extend(&requests);
        *p = Polling::new(p.upgrades);
        p.detached = detached;
        if say_close && on_polling && sid.is_none() {
            if let Some(h) = handshake {
                self.closing_handshakes.insert(h);
            }
        }
        for id in sockets {
            self.client_closes(id);
        }
        if let Some(w) = watch {
            self.ping_pong.link_dropped(w);
        }
        if say_close && on_polling && sid.is_some() {
            let id = self.polling_request_for(i, sid, true, "1".to_owned());
            if let Some(p) = self.polling_mut(i) {
                p.detached.push(id);
            }
        }
    }

    /// Client `i` probes a WebSocket for the session the handshake opened.
    fn polling_probe(&mut self, i: usize, sid: String) {
        let now = self.now;
        let id = self
            .net
            .open(now, End::Client(i), &mut self.rng, &mut self.agenda);
        if let Some(link) = self.net.link_mut(id) {
            link.upgrade_sid = Some(sid);
        }
        tr!(self, "client", ("c{i} probes ws{id}"));
        if let Some(p) = self.polling_mut(i) {
            p.probe = Some(id);
        }
    }

    /// Once polling has paused (no request out), the probe takes over: `5` on it, then
    /// what was waiting to be sent.
    fn polling_try_upgrade(&mut self, i: usize) {
        let Some(p) = self.polling_mut(i) else {
            return;
        };
        if !p.pausing || p.get.is_some() || p.post.is_some() {
            return;
        }
        let Some(ws) = p.probe.take() else { return };
        p.pausing = false;
        p.ws = Some(ws);
        let mut frames = vec![Frame::text("5")];
        frames.append(&mut p.queue);
        self.counters.polling_upgrades += 1;
        tr!(self, "client", ("c{i} upgraded to ws{ws}"));
        let now = self.now;
        for frame in frames {
            let seg = Seg::Frame(frame);
            self.net
                .send(now, ws, true, seg, &mut self.rng, &mut self.agenda);
        }
    }

    /// The probe failed before it took over: polling goes on.
    fn polling_probe_failed(&mut self, i: usize, why: &str) {
        let Some(p) = self.polling_mut(i) else {
            return;
        };
        let Some(id) = p.probe.take() else { return };
        let resume = std::mem::take(&mut p.pausing) && p.get.is_none() && p.sid.is_some();
        tr!(self, "client", ("c{i} probe ws{id} failed: {why}"));
        self.client_closes(id);
        if resume {
            self.polling_get(i);
        }
        self.polling_flush(i);
    }

    /// Client `i` receives `seg` on its probe or the WebSocket that took over.
    fn polling_ws_receives(&mut self, i: usize, id: u64, role: Option<Role>, seg: Seg) {
        let now = self.now;
        match (role, seg) {
            (Some(Role::Probe), Seg::Open) => {
                tr!(self, "net", ("ws{id} -> c{i} accepted; 2probe"));
                let seg = Seg::Frame(Frame::text("2probe"));
                self.net
                    .send(now, id, true, seg, &mut self.rng, &mut self.agenda);
            }
            (Some(Role::Probe), Seg::Frame(frame)) => {
                if frame.as_text() == Some("3probe") {
                    tr!(self, "net", ("ws{id} -> c{i} 3probe; polling pauses"));
                    if let Some(p) = self.polling_mut(i) {
                        p.pausing = true;
                    }
                    self.polling_try_upgrade(i);
                } else {
                    self.polling_probe_failed(i, "unexpected frame");
                }
            }
            (Some(Role::WebSocket), Seg::Frame(frame)) => {
                let watch = self.polling_of(i).and_then(|p| p.watch);
                if let (Some(w), Some(text)) = (watch, frame.as_text()) {
                    self.ping_pong.link_frame(w, text);
                }
                if let Some(slot) = self.clients.get_mut(i) {
                    slot.client.handle_frame(now, &frame);
                }
                let text = match frame.as_text() {
                    Some(t) => crate::trace::short(t, 72),
                    None => format!("<{}B>", frame.len()),
                };
                tr!(self, "net", ("ws{id} -> c{i} {text}"));
            }
            (role, Seg::Fin { error }) => {
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
                match role {
                    Some(Role::Probe) => {
                        self.polling_probe_failed(i, &format!("closed (error={error})"))
                    }
                    Some(_) => {
                        let watch = self.polling_of(i).and_then(|p| p.watch);
                        if let Some(w) = watch {
                            let finding = self.ping_pong.link_closed(w, error);
                            self.found(finding);
                        }
                        self.polling_fail(i, &format!("ws{id} closed (error={error})"))
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// The transport failed for client `i` (`by_server`: the server's CLOSE packet, after
    /// which there is nothing to tell it): the client is told.
    pub(super) fn polling_fail(&mut self, i: usize, why: &str) {
        self.polling_closed(i, why, false);
    }

    fn polling_closed(&mut self, i: usize, why: &str, by_server: bool) {
        self.counters.polling_failures += 1;
        tr!(self, "client", ("c{i} polling transport closed: {why}"));
        self.polling_abandon(i, !by_server);
        let now = self.now;
        if let Some(slot) = self.clients.get_mut(i) {
            slot.client.handle_closed(now);
        }
    }

    /// Client `i` receives `seg` on link `id`, one of its polling requests' (or one it
    /// already gave up, whose answer it ignores).
    pub(super) fn polling_receives(&mut self, i: usize, id: u64, seg: Seg) {
        let role = self.polling_of(i).and_then(|p| p.role(id));
        if self.net.link(id).is_some_and(|l| !l.http) {
            return self.polling_ws_receives(i, id, role, seg);
        }
        match seg {
            Seg::Response { status, body } => {
                // Answered: the client is done with the link; the server closes it.
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
                let text = String::from_utf8_lossy(&body).into_owned();
                tr!(
                    self,
                    "net",
                    (
                        "http{id} -> c{i} {status} {}",
                        crate::trace::short(&text, 72)
                    )
                );
                let Some(role) = role else {
                    // A request of a session it left: unread, but a handshake it gave up
                    // while closing is told CLOSE once it names its session.
                    if self.closing_handshakes.remove(&id) {
                        if let Ok(packets) = decode_payload(&text, MAX_PACKETS) {
                            if let Some(Packet::Open(h)) = packets.first() {
                                let id = self.polling_request_for(
                                    i,
                                    Some(h.sid.clone()),
                                    true,
                                    "1".to_owned(),
                                );
                                if let Some(p) = self.polling_mut(i) {
                                    p.detached.push(id);
                                }
                            }
                        }
                    }
                    return;
                };
                if let Some(p) = self.polling_mut(i) {
                    match role {
                        Role::Handshake => p.handshake = None,
                        Role::Get => p.get = None,
                        Role::Post => p.post = None,
                        Role::Probe | Role::WebSocket => {}
                    }
                }
                if status != 200 {
                    return self.polling_fail(i, &format!("{role:?} answered {status}"));
                }
                match role {
                    Role::Post => {
                        self.polling_flush(i);
                        self.polling_try_upgrade(i);
                    }
                    Role::Handshake | Role::Get => self.polling_answered(i, id, role, &text),
                    Role::Probe | Role::WebSocket => {}
                }
            }
            Seg::Fin { error } => {
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
                self.closing_handshakes.remove(&id);
                if let Some(role) = role {
                    self.polling_fail(i, &format!("{role:?} closed unanswered (error={error})"));
                }
            }
            Seg::Open | Seg::Frame(_) | Seg::Request { .. } => {}
        }
    }

    /// A GET's answer (the handshake's, or a receiving one's): its packets go to the
    /// client in order; then the next GET, unless the session ended.
    fn polling_answered(&mut self, i: usize, id: u64, role: Role, body: &str) {
        let packets = match decode_payload(body, MAX_PACKETS) {
            Ok(packets) => packets,
            Err(e) => {
                let finding = Err(("wire", format!("c{i} http{id}: undecodable answer: {e}")));
                self.found(finding);
                return self.polling_fail(i, "undecodable answer");
            }
        };
        // The CLOSE acts at once: `socket.io-client` closes the transport as it reads it,
        // and hands the Socket.IO packets before it to the application only on the next
        // tick, when the socket is already closed. (So the server sends a session's last
        // packets apart from its CLOSE.)
        let watch = self.polling_of(i).and_then(|p| p.watch);
        if packets.contains(&Packet::Close) {
            // So a session told `connection:replaced` whose DISCONNECT comes in the same
            // answer as its CLOSE brings such a client back, as its close without one does.
            if let Some(w) = watch {
                let finding = self.ping_pong.link_closed(w, false);
                self.found(finding);
            }
            return self.polling_closed(i, "CLOSE received", true);
        }
        if let Some(w) = watch {
            for packet in &packets {
                if let Frame::Text(text) = packet.to_frame() {
                    self.ping_pong
                        .link_frame(w, &String::from_utf8_lossy(&text));
                }
            }
        }
        let now = self.now;
        if role == Role::Handshake {
            let Some(Packet::Open(handshake)) = packets.first() else {
                let finding = Err((
                    "wire",
                    format!("c{i} http{id}: a handshake answered without OPEN"),
                ));
                self.found(finding);
                return self.polling_fail(i, "no OPEN");
            };
            let epoch = self.net.link(id).and_then(|l| l.epoch).unwrap_or(0);
            let mut probe = false;
            if let Some(slot) = self.clients.get_mut(i) {
                if let Some(p) = slot.polling.as_mut() {
                    p.sid = Some(handshake.sid.clone());
                    p.epoch = epoch;
                    p.watch = Some(id);
                    p.max_payload = usize::try_from(handshake.max_payload).unwrap_or(usize::MAX);
                    probe = p.upgrades && handshake.upgrades.iter().any(|u| u == "websocket");
                }
                slot.client.handle_opened(now);
            }
            if probe {
                self.polling_probe(i, handshake.sid.clone());
            }
        }
        // The client's outputs (a close among them) are routed once this returns.
        if let Some(slot) = self.clients.get_mut(i) {
            for packet in packets {
                slot.client.handle_frame(now, &packet.to_frame());
            }
        }
        let pausing = self.polling_of(i).is_some_and(|p| p.pausing);
        if pausing {
            self.polling_try_upgrade(i);
        } else {
            self.polling_get(i);
        }
    }
}
