//! Hostile actors on long-polling: the same attacks as over a WebSocket (floods, garbage,
//! oversize payloads, bad tokens, trespassing, silence, churn, leaving the namespace to
//! stay), their CONNECT POSTed alone and the rest of their frames as one payload once a
//! GET has been answered, and sometimes two GETs held at once, which the engine refuses
//! by ending the session.
//!
//! Each attacking session is named by its handshake's link, as honest polling sessions
//! are (`poll_watch.rs`), and the checkers that read what a hostile connection is told
//! (`bad-token-refused`, `members-only`) read every packet its GETs' answers carry under
//! that name. A session ends for the actor with a CLOSE in an answer, an answer other
//! than 200, a request that fails, or after [`MAX_GETS`] answers; then, or when its
//! actor closes it, it POSTs its CLOSE if it has a session to close.

use heartline_core::codec::engine::{decode_payload, encode_payload, Packet};
use heartline_core::codec::Frame;

use super::Sim;
use crate::net::{End, Seg};

/// Most GET answers one hostile session reads before it stops asking.
const MAX_GETS: u32 = 12;

/// Most packets one answer may carry, for decoding.
const MAX_PACKETS: usize = 10_000;

/// One hostile polling session.
#[derive(Debug)]
pub struct RawPoll {
    actor: usize,
    /// Its session, once the handshake's answer named it.
    sid: Option<String>,
    /// What it POSTs once it has a session.
    frames: Vec<Frame>,
    /// Holds two GETs at once after its POST.
    overlap: bool,
    /// GET answers read.
    gets: u32,
}

impl Sim {
    /// Actor `actor` starts a hostile session on polling at `at`, which will POST
    /// `frames`; returns its name (its handshake's link).
    pub(super) fn raw_poll_open(
        &mut self,
        actor: usize,
        at: heartline_core::Instant,
        frames: Vec<Frame>,
    ) -> u64 {
        let overlap = self.hostile_rng.below(4) == 0;
        let id = self.http_request(End::Raw(actor), at, None, false, String::new());
        self.raw_polls.insert(
            id,
            RawPoll {
                actor,
                sid: None,
                frames,
                overlap,
                gets: 0,
            },
        );
        self.raw_poll_links.insert(id, id);
        id
    }

    /// A request of session `name` goes out (its answer read as the session's).
    fn raw_poll_send(&mut self, name: u64, post: bool, body: String) {
        let Some(p) = self.raw_polls.get(&name) else {
            return;
        };
        let (actor, sid) = (p.actor, p.sid.clone());
        let now = self.now;
        let id = self.http_request(End::Raw(actor), now, sid, post, body);
        self.raw_poll_links.insert(id, name);
    }

    /// Whether link `id` carries a request of a hostile polling session.
    pub(super) fn is_raw_poll(&self, id: u64) -> bool {
        self.raw_poll_links.contains_key(&id)
    }

    /// A hostile session's request link `id` receives `seg`.
    pub(super) fn raw_poll_receives(&mut self, id: u64, seg: Seg) {
        let Some(&name) = self.raw_poll_links.get(&id) else {
            return;
        };
        match seg {
            Seg::Response { status, body } => {
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
                self.raw_poll_links.remove(&id);
                let text = String::from_utf8_lossy(&body).into_owned();
                tr!(
                    self,
                    "net",
                    (
                        "http{id} -> hostile {status} {}",
                        crate::trace::short(&text, 60)
                    )
                );
                self.raw_poll_answered(name, id, status, &text);
            }
            Seg::Fin { .. } => {
                if let Some(link) = self.net.link_mut(id) {
                    link.client_open = false;
                }
                if self.raw_poll_links.remove(&id).is_some() {
                    self.raw_poll_end(name, false);
                }
            }
            Seg::Open | Seg::Frame(_) | Seg::Request { .. } => {}
        }
    }

    fn raw_poll_answered(&mut self, name: u64, id: u64, status: u16, text: &str) {
        let Some(p) = self.raw_polls.get(&name) else {
            return;
        };
        let actor = p.actor;
        if status != 200 {
            return self.raw_poll_end(name, false);
        }
        // A POST's `ok`: nothing to read.
        if text == "ok" {
            return;
        }
        let Ok(packets) = decode_payload(text, MAX_PACKETS) else {
            return self.raw_poll_end(name, false);
        };
        let user = self.raws.get(actor).map(|u| u.key()).unwrap_or_default();
        let mut closed = false;
        for packet in &packets {
            match packet {
                Packet::Open(open) if name == id => {
                    // Its CONNECT alone first: packets behind a CONNECT in one payload
                    // reach a namespace not connected yet, which ends the session (as
                    // the reference server does), before any of them could be refused
                    // on its own merits.
                    let first = self.raw_polls.get_mut(&name).and_then(|p| {
                        p.sid = Some(open.sid.clone());
                        (!p.frames.is_empty()).then(|| p.frames.remove(0))
                    });
                    let overlap = self.raw_polls.get(&name).is_some_and(|p| p.overlap);
                    if let Some(first) = first {
                        self.raw_poll_send(name, true, encode_payload(&[first]));
                    }
                    self.raw_poll_send(name, false, String::new());
                    if overlap {
                        self.raw_poll_send(name, false, String::new());
                    }
                    return;
                }
                Packet::Close => closed = true,
                Packet::Ping(p) if p.is_empty() => {
                    // It answers PINGs, so only the server's other rules end it.
                    self.raw_poll_send(name, true, "3".to_owned());
                }
                other => {
                    if let Frame::Text(t) = other.to_frame() {
                        let t = String::from_utf8_lossy(&t).into_owned();
                        let finding = self.members.hostile_received(name, &user, &t);
                        self.found(finding);
                        let finding = self.bad_token.received(name, &t);
                        self.found(finding);
                    }
                }
            }
        }
        if closed {
            return self.raw_poll_end(name, true);
        }
        let Some(p) = self.raw_polls.get_mut(&name) else {
            return;
        };
        p.gets += 1;
        if p.gets >= MAX_GETS || self.phase != super::Phase::Safety {
            return self.raw_poll_end(name, false);
        }
        // The rest of its script once its CONNECT has been answered (or not).
        let rest = std::mem::take(&mut p.frames);
        if !rest.is_empty() {
            self.raw_poll_send(name, true, encode_payload(&rest));
        }
        self.raw_poll_send(name, false, String::new());
    }

    /// Session `name` ends for its actor (`told`: by the server's CLOSE, after which
    /// there is nothing to say); otherwise it POSTs its CLOSE, if it has a session.
    pub(super) fn raw_poll_end(&mut self, name: u64, told: bool) {
        let Some(p) = self.raw_polls.get(&name) else {
            return;
        };
        let has_session = p.sid.is_some();
        self.members.closed(name);
        self.bad_token.closed(name);
        if !told && has_session {
            self.raw_poll_send(name, true, "1".to_owned());
        }
        // Done: answers still to come are read as no session's, and its script goes.
        self.raw_polls.remove(&name);
    }

    /// As the run leaves: every hostile polling session still going is closed.
    pub(super) fn close_raw_polls(&mut self) {
        let names: Vec<u64> = self.raw_polls.keys().copied().collect();
        for name in names {
            self.raw_poll_end(name, false);
        }
    }
}
