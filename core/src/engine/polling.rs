//! HTTP long-polling: the handshake GET, the held GET that carries server packets, the POST
//! that carries client packets, and the error answers Engine.IO clients expect.
//!
//! At most one GET is held per session. A second concurrent GET, or a held GET the client
//! aborts, ends the session: both mean the client lost track of it, and answering them
//! apart would let packets go to a reader that is no longer there. So does a second POST
//! while the first is still being read (the driver tells, [`crate::engine::Input::HttpPostOverlap`]):
//! their packets would otherwise be taken in the order their bodies ended, not the order
//! the client sent them.

use bytes::Bytes;

use crate::codec::engine::{decode_payload_iter, encode_payload, Packet as EioPacket};
use crate::engine::close::{CloseReason, UsageError};
use crate::engine::io::{ContentType, Handshake, Method, Query, Transmit};
use crate::engine::session::{Ending, Transport};
use crate::engine::{Engine, Timer};
use crate::ids::{Id20, RequestId, SessionId};
use crate::time::Instant;

/// Whether a POST came while another of its session was still being read
/// ([`crate::engine::Input::HttpPostOverlap`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Overlap {
    No,
    Yes,
}

/// Engine.IO's HTTP error codes, with the messages clients show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HttpError {
    TransportUnknown,
    SessionIdUnknown,
    BadHandshakeMethod,
    BadRequest,
    UnsupportedProtocolVersion,
    TooManySessions,
}

impl HttpError {
    fn body(self) -> Bytes {
        let (code, message) = match self {
            HttpError::TransportUnknown => (0, "Transport unknown"),
            HttpError::SessionIdUnknown => (1, "Session ID unknown"),
            HttpError::BadHandshakeMethod => (2, "Bad handshake method"),
            HttpError::BadRequest => (3, "Bad request"),
            HttpError::UnsupportedProtocolVersion => (5, "Unsupported protocol version"),
            // Engine.IO's "forbidden" code, which servers also give when a request is refused.
            HttpError::TooManySessions => (4, "Too many sessions"),
        };
        Bytes::from(format!(r#"{{"code":{code},"message":"{message}"}}"#))
    }
}

/// How long a GET that comes while a WebSocket takes over (after the probe was answered) is
/// held before it gets a NOOP. A client sends `5` only once its polling has paused, so the
/// GET is released for it to pause; held briefly, a GET sent after `5` but handled before it
/// (they travel on different connections) is still refused as one after the upgrade. The
/// reference server releases such a GET within 100 ms.
pub(crate) const UPGRADE_GET_HOLD_MS: u64 = 50;

impl Engine {
    /// Checks `EIO` and `transport` against what this server speaks.
    pub(crate) fn check_query(&self, query: &Query) -> Result<bool, HttpError> {
        let websocket = match query.transport.as_deref() {
            Some("websocket") if self.config.transports.websocket => true,
            Some("polling") if self.config.transports.polling => false,
            _ => return Err(HttpError::TransportUnknown),
        };
        if query.eio.as_deref() != Some("4") {
            return Err(HttpError::UnsupportedProtocolVersion);
        }
        Ok(websocket)
    }

    fn respond(&mut self, request: RequestId, status: u16, content_type: ContentType, body: Bytes) {
        self.transmit(Transmit::HttpResponse {
            request,
            status,
            content_type,
            body,
        });
    }

    fn respond_error(&mut self, request: RequestId, err: HttpError) {
        self.respond(request, 400, ContentType::Json, err.body());
    }

    pub(crate) fn on_http(
        &mut self,
        now: Instant,
        request: RequestId,
        method: Method,
        query: Query,
        body: Bytes,
        handshake: Handshake,
    ) -> Result<(), UsageError> {
        if self.by_request.contains_key(&request) {
            return Err(UsageError::DuplicateRequest(request));
        }
        match self.check_query(&query) {
            // A plain HTTP request that names the websocket transport is not an upgrade.
            Ok(true) => self.respond_error(request, HttpError::BadRequest),
            Err(e) => self.respond_error(request, e),
            Ok(false) => match &query.sid {
                None if method == Method::Get => self.polling_handshake(now, request, handshake),
                None => self.respond_error(request, HttpError::BadHandshakeMethod),
                Some(sid) => match self.session_by_sid(sid) {
                    None => self.respond_error(request, HttpError::SessionIdUnknown),
                    Some(id) => match method {
                        Method::Get => self.poll_get(now, id, request),
                        Method::Post => self.poll_post(now, id, request, body, Overlap::No),
                        Method::Other => self.respond(
                            request,
                            400,
                            ContentType::Json,
                            HttpError::BadRequest.body(),
                        ),
                    },
                },
            },
        }
        Ok(())
    }

    /// A second POST while the first was still being read (see
    /// [`crate::engine::Input::HttpPostOverlap`]): the session ends, as with two GETs.
    pub(crate) fn on_post_overlap(
        &mut self,
        now: Instant,
        request: RequestId,
        query: &Query,
    ) -> Result<(), UsageError> {
        if self.by_request.contains_key(&request) {
            return Err(UsageError::DuplicateRequest(request));
        }
        // Answered as a POST would be up to the session itself.
        match self.check_query(query) {
            Ok(false) => {}
            Ok(true) => {
                self.respond_error(request, HttpError::BadRequest);
                return Ok(());
            }
            Err(e) => {
                self.respond_error(request, e);
                return Ok(());
            }
        }
        match query
            .sid
            .as_deref()
            .and_then(|sid| self.session_by_sid(sid))
        {
            None => self.respond_error(request, HttpError::SessionIdUnknown),
            Some(id) => self.poll_post(now, id, request, Bytes::new(), Overlap::Yes),
        }
        Ok(())
    }

    /// The session a `sid` names, if it is one the engine holds.
    pub(crate) fn session_by_sid(&self, sid: &str) -> Option<SessionId> {
        Id20::parse(sid).and_then(|k| self.by_sid.get(&k)).copied()
    }

    fn polling_handshake(&mut self, now: Instant, request: RequestId, handshake: Handshake) {
        if !self.admit_session() {
            // Not a protocol error, so not 400: the client may try again later.
            return self.respond(
                request,
                503,
                ContentType::Json,
                HttpError::TooManySessions.body(),
            );
        }
        let id = self.open(now, Transport::Polling(Box::default()), handshake);
        let Some(sid) = self.sessions.get(&id).map(|s| s.sid) else {
            return;
        };
        let open = self.open_packet(sid, false);
        // The open packet travels alone in the handshake response.
        self.respond(
            request,
            200,
            ContentType::Text,
            encode_payload(std::slice::from_ref(&open)).into(),
        );
    }

    fn poll_get(&mut self, now: Instant, id: SessionId, request: RequestId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return self.respond_error(request, HttpError::SessionIdUnknown);
        };
        let upgrading = s.upgrade().is_some_and(|u| u.probed);
        let closed = s.closed;
        let Transport::Polling(p) = &mut s.transport else {
            return self.respond_error(request, HttpError::BadRequest);
        };
        if p.pending_get.is_some() {
            // Two readers: the client lost track of the session. End it; the held GET
            // gets the CLOSE, this one an error.
            self.respond_error(request, HttpError::BadRequest);
            self.end(
                now,
                id,
                CloseReason::ProtocolError("overlapping polling GET".into()),
                Ending::Abort,
            );
            return;
        }
        p.pending_get = Some(request);
        self.by_request.insert(request, id);
        if upgrading && p.queue.is_empty() && !closed {
            // While a WebSocket takes over, a reader gets a NOOP soon, so that the client can
            // pause polling and send the upgrade (see UPGRADE_GET_HOLD_MS).
            if let Some(up) = s.upgrade_mut() {
                up.get_hold = Some(now.add_ms(UPGRADE_GET_HOLD_MS));
                let at = up.next_deadline();
                self.timers.set(&mut s.timers, id, Timer::Upgrade, at);
            }
            return;
        }
        self.flush_poll(id);
        if closed
            && self
                .sessions
                .get(&id)
                .is_some_and(|s| s.closed && s.queue_is_empty())
        {
            // A lingering session has handed over its last packets.
            self.remove(id);
        }
    }

    fn poll_post(
        &mut self,
        now: Instant,
        id: SessionId,
        request: RequestId,
        body: Bytes,
        overlap: Overlap,
    ) {
        let Some(s) = self.sessions.get(&id) else {
            return self.respond_error(request, HttpError::SessionIdUnknown);
        };
        if s.closed {
            // Ended, its last packets waiting for the client's next GET. A POST that
            // crossed them (the client answering what it just received) is taken and
            // dropped, as the reference server does while a socket closes: a 400 would make
            // the client report a transport error and reconnect, where the DISCONNECT
            // waiting for it says to stay away.
            return self.respond(request, 200, ContentType::Text, Bytes::from_static(b"ok"));
        }
        if !matches!(s.transport, Transport::Polling(_)) {
            return self.respond_error(request, HttpError::BadRequest);
        }
        if overlap == Overlap::Yes {
            self.respond_error(request, HttpError::BadRequest);
            let reason = CloseReason::ProtocolError("overlapping polling POST".into());
            self.end(now, id, reason, Ending::Abort);
            // Told by the 400: nothing lingers (see `poll_post`'s refused packets).
            return self.remove(id);
        }
        if body.len() as u64 > self.config.max_payload_bytes {
            // Refused, and nothing else changes: the session goes on.
            return self.respond(request, 413, ContentType::Text, Bytes::new());
        }
        // Packets are handled up to the first that does not decode, as over a WebSocket,
        // where the frames before a bad one have been handled by the time it arrives; then
        // the POST is answered 400 and the session ends. No count of its own: the body's
        // size (at most `max_payload_bytes`) bounds the packets, as in the reference
        // server, whose client flushes its whole buffer (all that was emitted while
        // offline) in one POST. They are decoded twice rather than collected: a first pass
        // finds the answer and whether the client closes, then each is handled as it is
        // decoded. What they become for the gateway (a Socket.IO event each, its JSON
        // parsed) waits in the event queue until the gateway takes it after this request:
        // a body of the smallest events, `42[0]` over and over, is ~166,000 of them per
        // megabyte, by estimate some tens of megabytes for that moment, once per POST
        // handled. The gateway's event budget then ends a session that sends that many.
        let text = std::str::from_utf8(&body);
        let packets = || {
            text.ok()
                .map(|t| decode_payload_iter(t, usize::MAX))
                .into_iter()
                .flatten()
        };
        let mut error = text
            .is_err()
            .then(|| "polling body is not UTF-8".to_owned());
        let mut closing = false;
        for packet in packets() {
            match packet {
                Ok(EioPacket::Close) => closing = true,
                Ok(_) => {}
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
        if error.is_none() {
            self.respond(request, 200, ContentType::Text, Bytes::from_static(b"ok"));
        }
        // The client's close in the same body, behind a CONNECT: as on a WebSocket
        // (`Input::WsClosing`), that CONNECT opens nothing.
        if closing {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.peer_leaving = true;
            }
        }
        for packet in packets() {
            let Ok(packet) = packet else {
                break;
            };
            if self.live(id).is_none() {
                break;
            }
            if packet == EioPacket::Close {
                // The client is leaving: release its held GET with a NOOP, not a CLOSE; with
                // none held, the GET it may still have on the way gets that NOOP instead.
                let how = if self.release_get(id) {
                    Ending::Abort
                } else {
                    Ending::Release
                };
                self.end(now, id, CloseReason::ClientClose, how);
                break;
            }
            self.on_engine_packet(now, id, packet);
        }
        if let Some(e) = error {
            self.respond_error(request, HttpError::BadRequest);
            if self.live(id).is_some() {
                self.end(now, id, CloseReason::ProtocolError(e), Ending::Abort);
                // Told by the 400 itself: nothing lingers for a next GET, which gets an
                // unknown sid (as the Engine.IO suite expects).
                self.remove(id);
            }
        }
    }

    pub(crate) fn on_http_aborted(&mut self, now: Instant, request: RequestId) {
        let Some(id) = self.by_request.remove(&request) else {
            return;
        };
        if let Some(Transport::Polling(p)) = self.sessions.get_mut(&id).map(|s| &mut s.transport) {
            if p.pending_get == Some(request) {
                p.pending_get = None;
            }
        }
        // Given up without a word (a CLOSE packet is how a client leaves): counted as the
        // reference server counts a poll closed prematurely, a transport error.
        self.end(now, id, CloseReason::TransportError, Ending::Abort);
    }

    /// Answers the held GET with everything queued, if there is a held GET and a queue.
    pub(crate) fn flush_poll(&mut self, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Transport::Polling(p) = &mut s.transport else {
            return;
        };
        if p.queue.is_empty() {
            return;
        }
        let Some(request) = p.pending_get.take() else {
            return;
        };
        // An ended session's CLOSE goes out alone, in the response after the packets
        // queued before it. socket.io-client handles the packets of a payload on the next
        // tick but a CLOSE at once, so a DISCONNECT in the CLOSE's payload would reach it
        // second, after a `transport close` it reconnects from; alone, the DISCONNECT is
        // handled before the client's next GET can bring the CLOSE back.
        #[allow(unused_mut)] // mutated below in test builds only
        let mut close_apart =
            s.closed && p.queue.len() > 1 && p.queue.last() == Some(&EioPacket::Close.to_frame());
        // MUTATION (test-only): the CLOSE goes with the packets before it.
        #[cfg(feature = "mutations")]
        if self.config.mutations.close_with_last_packets {
            close_apart = false;
        }
        let take = p.queue.len() - usize::from(close_apart);
        #[allow(unused_mut)] // mutated below in test builds only
        let mut frames: Vec<_> = std::iter::from_fn(|| p.queue.pop()).take(take).collect();
        // MUTATION (test-only): one packet answered, the others lost.
        #[cfg(feature = "mutations")]
        if self.config.mutations.poll_answers_first_only {
            frames.truncate(1);
        }
        p.queue.release_if_empty();
        self.by_request.remove(&request);
        let body = encode_payload(&frames);
        self.respond(request, 200, ContentType::Text, body.into());
    }

    /// The session's upgrade timer: a GET held during the upgrade is released with a NOOP,
    /// or the upgrade has run out of time.
    pub(crate) fn on_upgrade_timer(&mut self, now: Instant, id: SessionId) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let Some(up) = s.upgrade_mut() else {
            return;
        };
        match up.get_hold {
            Some(hold) if hold <= now && now < up.deadline => {
                up.get_hold = None;
                let at = up.deadline;
                self.timers.set(&mut s.timers, id, Timer::Upgrade, at);
                self.release_get(id);
            }
            _ => self.cancel_upgrade(id, CloseReason::TransportClose),
        }
    }

    /// Answers the held GET, if any, with a 400 (a GET after the upgrade).
    pub(crate) fn refuse_get(&mut self, id: SessionId) {
        if let Some(request) = self.take_held_get(id) {
            self.respond_error(request, HttpError::BadRequest);
        }
    }

    /// Answers the held GET, if any, with a NOOP; whether there was one.
    pub(crate) fn release_get(&mut self, id: SessionId) -> bool {
        let Some(request) = self.take_held_get(id) else {
            return false;
        };
        self.respond(request, 200, ContentType::Text, noop());
        true
    }

    /// The session's held GET, no longer held, for the caller to answer.
    fn take_held_get(&mut self, id: SessionId) -> Option<RequestId> {
        let Transport::Polling(p) = &mut self.sessions.get_mut(&id)?.transport else {
            return None;
        };
        let request = p.pending_get.take()?;
        self.by_request.remove(&request);
        Some(request)
    }
}

fn noop() -> Bytes {
    Bytes::from_static(b"6")
}
