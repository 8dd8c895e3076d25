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
//! dead-peer, handshake and heartbeat deadlines) read WebSockets only. Polling devices are
//! held to everything else: delivery and acknowledgements, the server's presence
//! announcements, per-user rules and replacement, close reasons, liveness after healing
//! and the baseline after everyone leaves.

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
    /// Frames waiting for the next POST.
    queue: Vec<Frame>,
}

/// Which request of the transport a link carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Handshake,
    Get,
    Post,
}

impl Polling {
    fn role(&self, link: u64) -> Option<Role> {
        if self.handshake == Some(link) {
            Some(Role::Handshake)
        } else if self.get == Some(link) {
            Some(Role::Get)
        } else if self.post == Some(link) {
            Some(Role::Post)
        } else {
            None
        }
    }

    /// The links of the requests it has out.
    pub fn links(&self) -> Vec<u64> {
        [self.handshake, self.get, self.post]
            .into_iter()
            .flatten()
            .collect()
    }

    /// The receiving GET, the request the server holds.
    pub fn get(&self) -> Option<u64> {
        self.get
    }

    /// The session and the incarnation it belongs to.
    pub fn session(&self) -> Option<(&str, u32)> {
        self.sid.as_deref().map(|sid| (sid, self.epoch))
    }
}

impl Sim {
    /// Client `i` sends one polling request on a link of its own.
    fn polling_request(&mut self, i: usize, post: bool, body: String) -> u64 {
        let now = self.now;
        let sid = self
            .clients
            .get(i)
            .and_then(|s| s.polling.as_ref())
            .and_then(|p| p.sid.clone());
        let id = self
            .net
            .open(now, End::Client(i), &mut self.rng, &mut self.agenda);
        if let Some(link) = self.net.link_mut(id) {
            link.http = true;
        }
        let what = match (post, &sid) {
            (true, _) => format!("POST {}", crate::trace::short(&body, 60)),
            (false, Some(_)) => "GET".to_owned(),
            (false, None) => "GET (handshake)".to_owned(),
        };
        self.counters.polling_requests += 1;
        tr!(self, "client", ("c{i} http{id} {what}"));
        let seg = Seg::Request {
            post,
            sid,
            body: Bytes::from(body),
        };
        self.net
            .send(now, id, true, seg, &mut self.rng, &mut self.agenda);
        id
    }

    /// Client `i` opens its transport: a handshake GET. Whatever it had out goes.
    pub(super) fn polling_open(&mut self, i: usize) {
        self.polling_abandon(i);
        let id = self.polling_request(i, false, String::new());
        if let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) {
            p.handshake = Some(id);
        }
    }

    /// Client `i` sends a frame: in the next POST, at once if none is out.
    pub(super) fn polling_send(&mut self, i: usize, frame: Frame) {
        let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) else {
            return;
        };
        if p.sid.is_none() {
            return; // no transport: lost, as on a closed socket
        }
        p.queue.push(frame);
        self.polling_flush(i);
    }

    fn polling_flush(&mut self, i: usize) {
        let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) else {
            return;
        };
        if p.post.is_some() || p.queue.is_empty() || p.sid.is_none() {
            return;
        }
        let body = encode_payload(&std::mem::take(&mut p.queue));
        let id = self.polling_request(i, true, body);
        if let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) {
            p.post = Some(id);
        }
    }

    fn polling_get(&mut self, i: usize) {
        let id = self.polling_request(i, false, String::new());
        if let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) {
            p.get = Some(id);
        }
    }

    /// Client `i` closes its transport: the CLOSE packet in a POST of its own, whose
    /// answer nobody waits for, as `socket.io-client` does, and its requests given up.
    pub(super) fn polling_close(&mut self, i: usize) {
        let open = self
            .clients
            .get(i)
            .and_then(|s| s.polling.as_ref())
            .is_some_and(|p| p.sid.is_some() && p.post.is_none());
        if open {
            self.polling_request(i, true, "1".to_owned());
        }
        self.polling_abandon(i);
    }

    /// Client `i` gives up every request it has out and forgets its session.
    fn polling_abandon(&mut self, i: usize) {
        let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) else {
            return;
        };
        let links = p.links();
        **p = Polling::default();
        for id in links {
            self.client_closes(id);
        }
    }

    /// The transport failed for client `i`: its requests go and the client is told.
    pub(super) fn polling_fail(&mut self, i: usize, why: &str) {
        self.counters.polling_failures += 1;
        tr!(self, "client", ("c{i} polling transport closed: {why}"));
        self.polling_abandon(i);
        let now = self.now;
        if let Some(slot) = self.clients.get_mut(i) {
            slot.client.handle_closed(now);
        }
    }

    /// Client `i` receives `seg` on link `id`, one of its polling requests' (or one it
    /// already gave up, whose answer it ignores).
    pub(super) fn polling_receives(&mut self, i: usize, id: u64, seg: Seg) {
        let role = self
            .clients
            .get(i)
            .and_then(|s| s.polling.as_ref())
            .and_then(|p| p.role(id));
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
                let Some(role) = role else { return };
                if let Some(p) = self.clients.get_mut(i).and_then(|s| s.polling.as_mut()) {
                    match role {
                        Role::Handshake => p.handshake = None,
                        Role::Get => p.get = None,
                        Role::Post => p.post = None,
                    }
                }
                if status != 200 {
                    return self.polling_fail(i, &format!("{role:?} answered {status}"));
                }
                match role {
                    Role::Post => self.polling_flush(i),
                    Role::Handshake | Role::Get => self.polling_answered(i, id, role, &text),
                }
            }
            Seg::Fin { error } => {
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
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
            if let Some(slot) = self.clients.get_mut(i) {
                if let Some(p) = slot.polling.as_mut() {
                    p.sid = Some(handshake.sid.clone());
                    p.epoch = epoch;
                }
                slot.client.handle_opened(now);
            }
        }
        for packet in packets {
            if packet == Packet::Close {
                return self.polling_fail(i, "CLOSE received");
            }
            let Some(slot) = self.clients.get_mut(i) else {
                return;
            };
            slot.client.handle_frame(now, &packet.to_frame());
            // The client may have closed or reopened its transport on that frame.
            if slot.polling.as_ref().is_none_or(|p| p.sid.is_none()) {
                return;
            }
        }
        self.polling_get(i);
    }
}
