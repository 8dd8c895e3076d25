//! What clients ask of the gateway on the application namespace, and the answers to the
//! storage effects those requests caused.
//!
//! Every request is validated before it touches anything: a malformed payload is answered
//! with `invalid_payload` and changes no state. Sends are charged to the user's exact rate
//! window; everything else (and every refused send) to the connection's event budget: an
//! event over it is answered `rate_limited` instead of served, and a connection that
//! spends even its refusals is ended as a flood.

use serde_json::{json, Value};

use crate::codec::socket::{Packet as SioPacket, PacketType};
use crate::engine::CloseReason;
use crate::gateway::budget::Charge;
use crate::gateway::io::{
    AppendOutcome, AppendRequest, Effect, ErrorCode, Message, Notice, OpId, Output, ReadRequest,
    StoreFailure,
};
use crate::gateway::payload::MessageJson;
use crate::gateway::state::{ConnTimer, Owner, Tally};
use crate::gateway::{Gateway, Member, Otherwise, Pending, UserKey};
use crate::ids::SessionId;
use crate::time::Instant;

/// A refusal: the code and a human-readable message.
struct Refusal {
    code: ErrorCode,
    error: String,
    retry_after_ms: Option<u64>,
}

impl Refusal {
    fn new(code: ErrorCode, error: &str) -> Self {
        Refusal {
            code,
            error: error.to_owned(),
            retry_after_ms: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({ "ok": false, "error": self.error, "code": self.code.as_str() });
        if let Some(ms) = self.retry_after_ms {
            v["retryAfterMs"] = json!(ms);
        }
        v
    }
}

fn refusal_for(code: ErrorCode) -> Refusal {
    let msg = match code {
        ErrorCode::NotFound => "Conversation not found",
        ErrorCode::Forbidden => "Not a member of this conversation",
        ErrorCode::InvalidPayload => "Invalid payload",
        ErrorCode::TooLarge => "Message too large",
        ErrorCode::RateLimited => "Rate limit exceeded",
        ErrorCode::Internal => "Internal error",
    };
    Refusal::new(code, msg)
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The payload's `conversationId`: a string, and not empty (which names no conversation
/// and is a malformed payload, whichever event carries it).
fn conversation_id(v: &Value) -> Option<&str> {
    str_field(v, "conversationId").filter(|s| !s.is_empty())
}

/// An optional non-negative integer field: `Ok(None)` when absent or null, `Err` when
/// present with another type.
fn opt_u64(v: &Value, key: &str) -> Result<Option<u64>, ()> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(Some).ok_or(()),
    }
}

/// To whom a send is answered: the sender's session, the ack id it asked with (if any), its
/// user, and its `tempId` as it sent it (echoed in `message:sent`).
struct SendReply<'a> {
    session: SessionId,
    ack: Option<u64>,
    user: &'a UserKey,
    echo: &'a Value,
}

impl<'a> SendReply<'a> {
    fn new(session: SessionId, ack: Option<u64>, user: &'a UserKey, echo: &'a Value) -> Self {
        SendReply {
            session,
            ack,
            user,
            echo,
        }
    }
}

/// A parsed `message:send`.
struct Send {
    conversation_id: String,
    content: String,
    temp_id: Option<String>,
    /// The client sent `tempId` as a number: it is echoed as one.
    numeric_temp_id: bool,
}

impl Gateway {
    pub(super) fn on_packet(&mut self, now: Instant, session: SessionId, packet: SioPacket) {
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        if conn.flooded {
            // The rest of a polling POST that an earlier packet of it made a flood: the
            // engine hands over a POST's packets before the session's end. (Packets before
            // the client's own CLOSE, or a bad packet, in the same POST are served.)
            return;
        }
        if !matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent) {
            // Acks from the client: the gateway never asks for any, so each is dropped,
            // paid for like any event that cannot be answered.
            self.charge(now, session, None);
            return;
        }
        let name = packet.event_name().unwrap_or("").to_owned();
        let arg = packet.args().first().cloned().unwrap_or(Value::Null);
        let ack = packet.id;
        if name == "message:send" {
            self.active(now, session);
            return self.on_send(now, session, ack, &arg);
        }
        // Leaving a conversation the connection is in only lightens the server's load (no
        // more fan-out to it), and a leave turned away over the budget would keep the
        // connection in the room, its client taking itself out. So such a leave is free:
        // each was paid for by its join. So is a leave of one whose join is still reading
        // its catch-up, which would otherwise enter the room once read. A leave of
        // anything else is charged.
        let leaves_a_room = name == "conversation:leave"
            && conversation_id(&arg).is_some_and(|id| {
                self.conns
                    .get(&session)
                    .is_some_and(|c| c.joined.contains(id))
                    || self.joining(session, id)
            });
        if name == "auth:refresh" {
            // A refresh turned away over the budget would have the connection closed at
            // the end of its grace, a valid newer token in its client's hands. So it is
            // paid for as any event, but served even when that payment was a refusal (a
            // token is at most 8 KiB to check); a stream of them still ends the
            // connection as a flood.
            if !self.charge_served_anyway(now, session) {
                return;
            }
        } else if !leaves_a_room && !self.charge(now, session, ack) {
            return;
        }
        if matches!(
            name.as_str(),
            "conversation:join" | "conversation:leave" | "message:history"
        ) {
            self.active(now, session);
        }
        match name.as_str() {
            "conversation:join" => self.on_join(now, session, ack, &arg),
            "conversation:leave" => self.on_leave(now, session, ack, &arg),
            "message:history" => self.on_history(now, session, ack, &arg),
            "heartbeat:response" => {
                if let Some(ts) = arg.get("timestamp").and_then(Value::as_u64) {
                    let wall = self.wall_ms(now);
                    // Only a timestamp the server could have sent counts.
                    if ts <= wall
                        && wall - ts <= self.config.heartbeat_interval_ms.saturating_mul(4)
                    {
                        self.metrics.heartbeat_latency.observe(wall - ts);
                    }
                }
            }
            "ping" => {
                let ts = self.wall_ms(now);
                self.emit(now, session, "pong", json!({ "timestamp": ts }));
            }
            "metrics:request" if self.conns.get(&session).is_some_and(|c| c.admin) => {
                let payload = json!({
                    "connectedUsers": self.users_connected(),
                    "heartbeats": self.conns.len(),
                    "rateLimitEntries": self.rate_limit_entries(),
                    "uptime": now.ms_since(self.started) as f64 / 1000.0,
                });
                self.emit(now, session, "metrics:response", payload);
            }
            "auth:refresh" => self.on_refresh(now, session, ack, &arg),
            _ => {}
        }
    }

    /// The connection's user did something: the idle deadline moves. Only what a person
    /// at the front end does counts (a send, whatever its answer, a join or leave, a
    /// history read); what a client does by itself on an open page (answering heartbeats,
    /// `ping`, `auth:refresh`) or a join, leave or read refused over budget would keep a
    /// forgotten tab connected for ever.
    fn active(&mut self, now: Instant, session: SessionId) {
        if self.config.idle_timeout_ms == 0 {
            return;
        }
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        let at = now.add_ms(self.config.idle_timeout_ms);
        self.timers
            .set(&mut conn.timers, Owner::Conn(session), ConnTimer::Idle, at);
    }

    /// Charges an event to the connection's budget: `true` to serve it. Over budget it is
    /// refused instead (`rate_limited` with `retryAfterMs`, if it asked for an ack); with
    /// the refusals spent too, the connection is ended as a flood.
    fn charge(&mut self, now: Instant, session: SessionId, ack: Option<u64>) -> bool {
        let budget = self.config.event_budget;
        let Some(conn) = self.conns.get_mut(&session) else {
            return false;
        };
        match conn.budget.serve(budget, now) {
            Charge::Served => true,
            Charge::Refused { retry_after_ms } => {
                self.metrics.events_refused += 1;
                let mut refusal = refusal_for(ErrorCode::RateLimited);
                refusal.retry_after_ms = Some(retry_after_ms);
                self.ack(now, session, ack, refusal.to_json());
                false
            }
            Charge::Exhausted => {
                self.flood(now, session);
                false
            }
        }
    }

    /// Charges an event that is served even over the budget: from the serving balance, or
    /// else as a refusal; `false` (the connection ended as a flood) with both spent.
    fn charge_served_anyway(&mut self, now: Instant, session: SessionId) -> bool {
        let budget = self.config.event_budget;
        let Some(conn) = self.conns.get_mut(&session) else {
            return false;
        };
        match conn.budget.serve(budget, now) {
            Charge::Served | Charge::Refused { .. } => true,
            Charge::Exhausted => {
                self.flood(now, session);
                false
            }
        }
    }

    /// Charges a refusal made on other grounds (a send over the rate limit, or answered as
    /// a retry, which is as cheap to repeat): from the refusal balance; with that spent,
    /// the connection is ended as a flood.
    fn charge_refusal(&mut self, now: Instant, session: SessionId) {
        let budget = self.config.event_budget;
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        if !conn.budget.refuse(budget, now) {
            self.flood(now, session);
        }
    }

    /// Ends a connection that spent its whole budget.
    fn flood(&mut self, now: Instant, session: SessionId) {
        if let Some(conn) = self.conns.get_mut(&session) {
            conn.flooded = true;
        }
        self.metrics.floods += 1;
        let _ = self.engine.disconnect(
            now,
            session,
            CloseReason::ServerDisconnect("event flood".into()),
        );
    }

    // ---- conversations -------------------------------------------------------------------

    fn on_join(&mut self, now: Instant, session: SessionId, ack: Option<u64>, arg: &Value) {
        let (Some(id), Ok(after_seq)) = (conversation_id(arg), opt_u64(arg, "afterSeq")) else {
            return self.refuse(now, session, ack, ErrorCode::InvalidPayload);
        };
        let id = id.to_owned();
        if !self.may_use(now, session, ack, &id) {
            return;
        }
        match after_seq {
            None => self.complete_join(now, session, &id, ack, vec![], true),
            Some(after) => {
                // The room is joined when the read completes: the store answers in order,
                // so every message is then either in `missed` or fanned out live, once.
                let Some(conn) = self.conns.get(&session).map(|c| c.no) else {
                    return;
                };
                let op = self.next_op();
                self.joins_reading.insert((session, op));
                self.pending.insert(
                    op,
                    Pending::Join {
                        session,
                        conn,
                        conversation_id: id.clone(),
                        ack,
                        left: false,
                    },
                );
                let limit = self.config.missed_limit;
                self.out.push_back(Output::Effect(Effect::Read {
                    op,
                    request: ReadRequest {
                        conversation_id: id,
                        after_seq: Some(after),
                        before_seq: None,
                        limit,
                        max_content_bytes: self.reply_budget(),
                    },
                }));
            }
        }
    }

    /// Bytes of messages a reply may carry: a share of the connection's send queue (see
    /// [`REPLY_SHARE`]).
    fn reply_budget(&self) -> usize {
        let queue = usize::try_from(self.config.engine.max_buffered_bytes).unwrap_or(usize::MAX);
        queue / REPLY_SHARE
    }

    /// Answers a request with the refusal for `code` (when the client asked for an ack).
    fn refuse(&mut self, now: Instant, session: SessionId, ack: Option<u64>, code: ErrorCode) {
        self.ack(now, session, ack, refusal_for(code).to_json());
    }

    /// Whether the connection's user may use the conversation; if not, the refusal
    /// (`not_found` or `forbidden`) is the answer to its request.
    fn may_use(&mut self, now: Instant, session: SessionId, ack: Option<u64>, id: &str) -> bool {
        let Some(user) = self.conns.get(&session).map(|c| c.user.clone()) else {
            return false;
        };
        match self.conversations.access(id, &user) {
            Ok(_) => true,
            // MUTATION (test-only): membership is not checked, only that it exists.
            #[cfg(feature = "mutations")]
            Err(ErrorCode::Forbidden) if self.config.engine.mutations.any_user_may_read => true,
            Err(code) => {
                self.refuse(now, session, ack, code);
                false
            }
        }
    }

    /// Whether `user` is (still) a member of conversation `id`, when a read for it
    /// comes back.
    fn still_member(&self, id: &str, user: &UserKey) -> bool {
        // MUTATION (test-only): membership is not checked, only that it exists.
        #[cfg(feature = "mutations")]
        if self.config.engine.mutations.any_user_may_read {
            return self.conversations.get(id).is_some();
        }
        self.conversations
            .get(id)
            .is_some_and(|conv| conv.members.contains(user))
    }

    /// Answers a join; `enter`: the connection enters the room (not when it left the
    /// conversation while its catch-up was being read, as the later request wins).
    fn complete_join(
        &mut self,
        now: Instant,
        session: SessionId,
        id: &str,
        ack: Option<u64>,
        missed: Vec<Message>,
        enter: bool,
    ) {
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        let user = conn.user.clone();
        if !self.still_member(id, &user) {
            // Removed from the conversation while the read was under way.
            return self.refuse(now, session, ack, ErrorCode::Forbidden);
        }
        let (Some(conn), Some(conv)) =
            (self.conns.get_mut(&session), self.conversations.get_mut(id))
        else {
            return;
        };
        if enter {
            conv.room.insert(session, user);
            conn.joined.insert(id.to_owned());
        }
        let last_seq = missed.last().map_or(0, |m| m.seq).max(conv.last_seq);
        let missed = self.within_reply_budget(&missed, true);
        // MUTATION (test-only): the catch-up is left out of the answer.
        #[cfg(feature = "mutations")]
        let missed = if self.config.engine.mutations.join_misses_nothing {
            vec![]
        } else {
            missed
        };
        self.ack(
            now,
            session,
            ack,
            json!({ "ok": true, "conversationId": id, "lastSeq": last_seq, "missed": missed }),
        );
    }

    /// The messages of a reply as JSON, as many as an eighth of the connection's send
    /// queue holds (`server.max_outbound_bytes`, see [`REPLY_SHARE`]), and always at least
    /// one: read forward, the first of them, else the last. A reply larger than the queue
    /// would close a client that reads as fast as it can whenever anything else was queued
    /// before it (a catch-up of a thousand long messages is megabytes); what is cut is read
    /// on from where the reply ends, as a join's reader does when the last missed message
    /// is before `lastSeq`. Replies that fit are never cut, so front ends that do not read
    /// on see no change but where the reply could not have been delivered at all.
    fn within_reply_budget(&self, messages: &[Message], forward: bool) -> Vec<Value> {
        let budget = self.reply_budget();
        let mut used = 0usize;
        let mut kept = Vec::with_capacity(messages.len());
        let mut take = |m: &Message| {
            let json = m.to_json();
            // The encoded length and its separating comma.
            let len = serde_json::to_string(&json).map_or(0, |t| t.len()) + 1;
            if !kept.is_empty() && used.saturating_add(len) > budget {
                return false;
            }
            used = used.saturating_add(len);
            kept.push(json);
            true
        };
        if forward {
            for m in messages {
                if !take(m) {
                    break;
                }
            }
        } else {
            for m in messages.iter().rev() {
                if !take(m) {
                    break;
                }
            }
            kept.reverse();
        }
        kept
    }

    fn on_leave(&mut self, now: Instant, session: SessionId, ack: Option<u64>, arg: &Value) {
        let Some(id) = conversation_id(arg) else {
            return self.refuse(now, session, ack, ErrorCode::InvalidPayload);
        };
        if let Some(conn) = self.conns.get_mut(&session) {
            conn.joined.remove(id);
        }
        if let Some(conv) = self.conversations.get_mut(id) {
            conv.room.remove(&session);
        }
        // A join of this conversation still reading its catch-up is answered when the read
        // is done, but must not put the connection back in the room it has since left.
        let reading = self
            .joins_reading
            .range((session, OpId(0))..=(session, OpId(u64::MAX)));
        for (_, op) in reading {
            if let Some(Pending::Join {
                conversation_id,
                left,
                ..
            }) = self.pending.get_mut(op)
            {
                if conversation_id == id {
                    *left = true;
                }
            }
        }
        self.ack(now, session, ack, json!({ "ok": true }));
    }

    fn on_history(&mut self, now: Instant, session: SessionId, ack: Option<u64>, arg: &Value) {
        let parsed = (
            conversation_id(arg),
            opt_u64(arg, "beforeSeq"),
            opt_u64(arg, "afterSeq"),
            opt_u64(arg, "limit"),
        );
        let (Some(id), Ok(before_seq), Ok(after_seq), Ok(limit)) = parsed else {
            return self.refuse(now, session, ack, ErrorCode::InvalidPayload);
        };
        // A page of nothing is a caller's mistake, not a request for one message.
        if limit == Some(0) {
            return self.refuse(now, session, ack, ErrorCode::InvalidPayload);
        }
        let id = id.to_owned();
        if !self.may_use(now, session, ack, &id) {
            return;
        }
        let max = self.config.history_limit_max;
        let limit = limit.map_or(max, |l| usize::try_from(l).unwrap_or(max).min(max));
        let Some(conn) = self.conn_no(session) else {
            return;
        };
        let op = self.next_op();
        let forward = after_seq.is_some();
        self.pending.insert(
            op,
            Pending::History {
                session,
                conn,
                conversation_id: id.clone(),
                ack,
                forward,
            },
        );
        self.out.push_back(Output::Effect(Effect::Read {
            op,
            request: ReadRequest {
                conversation_id: id,
                after_seq,
                before_seq,
                limit,
                max_content_bytes: self.reply_budget(),
            },
        }));
    }

    pub(super) fn on_read(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<Vec<Message>, StoreFailure>,
    ) {
        let Some(pending) = self.pending.remove(&op) else {
            return;
        };
        if let Pending::Join { session, .. } = &pending {
            self.joins_reading.remove(&(*session, op));
        }
        match (pending, result) {
            // Answers for a connection that has since ended go nowhere, also when its
            // session has connected the namespace again.
            (Pending::Join { session, conn, .. } | Pending::History { session, conn, .. }, _)
                if !self.asked_by(session, conn) => {}
            (
                Pending::Join {
                    session,
                    conversation_id,
                    ack,
                    left,
                    ..
                },
                Ok(missed),
            ) => self.complete_join(now, session, &conversation_id, ack, missed, !left),
            (
                Pending::History {
                    session,
                    conversation_id,
                    ack,
                    forward,
                    ..
                },
                Ok(messages),
            ) => {
                let member = self
                    .conns
                    .get(&session)
                    .is_some_and(|c| self.still_member(&conversation_id, &c.user));
                if !member {
                    // Removed from the conversation while the page was being read.
                    return self.refuse(now, session, ack, ErrorCode::Forbidden);
                }
                let messages = self.within_reply_budget(&messages, forward);
                self.ack(
                    now,
                    session,
                    ack,
                    json!({ "ok": true, "messages": messages }),
                );
            }
            (
                Pending::Join { session, ack, .. } | Pending::History { session, ack, .. },
                Err(_),
            ) => {
                self.refuse(now, session, ack, ErrorCode::Internal);
            }
            (Pending::Append { .. } | Pending::Retry { .. }, _) => {}
        }
    }

    // ---- sends ---------------------------------------------------------------------------

    fn parse_send(&self, arg: &Value) -> Result<Send, Refusal> {
        let invalid = || refusal_for(ErrorCode::InvalidPayload);
        let conversation_id = conversation_id(arg).ok_or_else(invalid)?;
        let content = str_field(arg, "content").ok_or_else(invalid)?;
        if content.trim().is_empty() {
            return Err(Refusal::new(ErrorCode::InvalidPayload, "Content is empty"));
        }
        if content.chars().count() > self.config.max_content_chars {
            return Err(refusal_for(ErrorCode::TooLarge));
        }
        let temp_id = match arg.get("tempId") {
            None | Some(Value::Null) => None,
            Some(v) => match temp_id_text(v) {
                Some(t) if !t.is_empty() && t.len() <= self.config.max_temp_id_bytes => Some(t),
                _ => return Err(Refusal::new(ErrorCode::InvalidPayload, "Invalid tempId")),
            },
        };
        Ok(Send {
            conversation_id: conversation_id.to_owned(),
            content: content.to_owned(),
            temp_id,
            numeric_temp_id: arg.get("tempId").is_some_and(Value::is_number),
        })
    }

    fn on_send(&mut self, now: Instant, session: SessionId, ack: Option<u64>, arg: &Value) {
        // Echoed in `message:error` as the client sent it (if it is an id at all).
        let temp_id = arg
            .get("tempId")
            .filter(|v| v.is_string() || v.is_number())
            .cloned()
            .unwrap_or(Value::Null);
        let Some(user_key) = self.conns.get(&session).map(|c| c.user.clone()) else {
            return;
        };
        match self.admit_send(now, session, ack, &user_key, arg) {
            // A lookup was paid for as an event served when it was asked.
            Ok(Admitted::ToStore | Admitted::Lookup | Admitted::Flooded) => {}
            // A retry answered from memory: cheap for the client to repeat, and for the
            // server to answer, so it spends what a refusal does.
            Ok(Admitted::Duplicate) => self.charge_refusal(now, session),
            // A lookup over the event budget: refused (the refusal paid for already).
            Ok(Admitted::OverBudget { retry_after_ms }) => {
                self.metrics.events_refused += 1;
                let mut over = refusal_for(ErrorCode::RateLimited);
                over.retry_after_ms = Some(retry_after_ms);
                self.refuse_send(now, session, ack, user_key, temp_id, &over);
            }
            Err(refusal) if refusal.code == ErrorCode::RateLimited => {
                self.refuse_send(now, session, ack, user_key, temp_id, &refusal);
                self.charge_refusal(now, session);
            }
            // Any other refusal (invalid, forbidden, not found) is an event served; over
            // the budget the send is refused for that instead, as any other event is.
            Err(refusal) => {
                let budget = self.config.event_budget;
                let Some(conn) = self.conns.get_mut(&session) else {
                    return;
                };
                match conn.budget.serve(budget, now) {
                    Charge::Served => {
                        self.refuse_send(now, session, ack, user_key, temp_id, &refusal);
                    }
                    Charge::Refused { retry_after_ms } => {
                        self.metrics.events_refused += 1;
                        let mut over = refusal_for(ErrorCode::RateLimited);
                        over.retry_after_ms = Some(retry_after_ms);
                        self.refuse_send(now, session, ack, user_key, temp_id, &over);
                    }
                    Charge::Exhausted => self.flood(now, session),
                }
            }
        }
    }

    /// A send its user may not make (`code`): refused, unless it is a retry of a message
    /// stored while the user was a member. Removed from a conversation with a send under
    /// way, a client that never got its ack sends it again: told `forbidden`, it would
    /// report a failure for a message everyone else sees. So a retry is answered as the
    /// duplicate it is, from memory or from the store (within the same bound on lookups as
    /// sends over the rate limit), whatever has changed since.
    fn refuse_unless_stored(
        &mut self,
        now: Instant,
        session: SessionId,
        ack: Option<u64>,
        user_key: &UserKey,
        send: Send,
        code: ErrorCode,
    ) -> Result<Admitted, Refusal> {
        let refusal = refusal_for(code);
        let Some(temp_id) = send.temp_id.filter(|_| code == ErrorCode::Forbidden) else {
            return Err(refusal);
        };
        let Some(conn) = self.conn_no(session) else {
            return Err(refusal);
        };
        let limit = self.config.rate_messages;
        let Some(user) = self.users.get_mut(user_key) else {
            return Err(refusal);
        };
        let here = |m: &Message| m.conversation_id == send.conversation_id;
        if let Some(stored) = user.recent.find(&temp_id).filter(|m| here(m)) {
            let stored = stored.clone();
            let echo = temp_id_echo(Some(&temp_id), send.numeric_temp_id);
            let to = SendReply::new(session, ack, user_key, &echo);
            self.answer_duplicate(now, &to, &stored);
            return Ok(Admitted::Duplicate);
        }
        if user.in_flight as usize >= limit.saturating_add(MAX_LOOKUPS) {
            // Too many lookups under way to ask now: a final `forbidden` could be wrong
            // (the message may be stored), so the client is told to come back.
            let mut busy = refusal_for(ErrorCode::RateLimited);
            busy.retry_after_ms = Some(LOOKUP_RETRY_MS);
            return Err(busy);
        }
        if let Some(answered) = self.charge_lookup(now, session, 0) {
            return Ok(answered);
        }
        let asked = (session, conn, ack);
        let otherwise = Otherwise::Forbidden {
            conversation: send.conversation_id,
        };
        self.ask_if_stored(asked, user_key, temp_id, send.numeric_temp_id, otherwise);
        Ok(Admitted::Lookup)
    }

    /// Charges a store lookup (is this send a retry of one stored?) to the connection as a
    /// whole event served: `None` to ask. Answering from the store is not the refusal it
    /// replaces, which costs a twentieth of an event: a store query, on the one thread
    /// every user's appends go through. Charged at a refusal's price, one connection
    /// sending tempIds it may not use could ask 400 a second, and a few hundred such
    /// connections would slow every other user's sends. Over the budget the send is
    /// refused `rate_limited`, told to wait at least `wait_ms`; with the refusals spent
    /// too, the connection is ended as a flood.
    fn charge_lookup(
        &mut self,
        now: Instant,
        session: SessionId,
        wait_ms: u64,
    ) -> Option<Admitted> {
        let budget = self.config.event_budget;
        let conn = self.conns.get_mut(&session)?;
        match conn.budget.serve(budget, now) {
            Charge::Served => None,
            Charge::Refused { retry_after_ms } => Some(Admitted::OverBudget {
                retry_after_ms: retry_after_ms.max(wait_ms),
            }),
            Charge::Exhausted => {
                self.flood(now, session);
                Some(Admitted::Flooded)
            }
        }
    }

    /// Asks the store whether `temp_id` of `user_key` was stored already: answered in
    /// [`Gateway::on_found`], as a duplicate if it was, else as `otherwise` says. Counted
    /// in flight, so the user's state stays until the answer.
    fn ask_if_stored(
        &mut self,
        (session, conn, ack): (SessionId, u32, Option<u64>),
        user_key: &UserKey,
        temp_id: String,
        numeric_temp_id: bool,
        otherwise: Otherwise,
    ) {
        if let Some(user) = self.users.get_mut(user_key) {
            user.in_flight = user.in_flight.saturating_add(1);
        }
        let op = self.next_op();
        self.pending.insert(
            op,
            Pending::Retry {
                session,
                conn,
                user: user_key.clone(),
                ack,
                temp_id: temp_id.clone(),
                numeric_temp_id,
                otherwise,
            },
        );
        self.out.push_back(Output::Effect(Effect::FindSent {
            op,
            sender: Member::new(user_key.user_id(), user_key.user_type()),
            temp_id,
        }));
    }

    /// Answers a refused send: the ack, `message:error`, the counters.
    fn refuse_send(
        &mut self,
        now: Instant,
        session: SessionId,
        ack: Option<u64>,
        user: UserKey,
        temp_id: Value,
        refusal: &Refusal,
    ) {
        *self
            .metrics
            .send_refused
            .entry(refusal.code.as_str())
            .or_default() += 1;
        self.notice(Notice::SendRefused {
            user,
            code: refusal.code,
        });
        self.ack(now, session, ack, refusal.to_json());
        let mut err = json!({
            "error": refusal.error,
            "code": refusal.code.as_str(),
            "tempId": temp_id,
        });
        if let Some(ms) = refusal.retry_after_ms {
            err["retryAfterMs"] = json!(ms);
        }
        self.emit(now, session, "message:error", err);
    }

    /// The answer to a send refused (over the rate limit, or not a member), asked of the
    /// store in case it was a retry: the stored message as a duplicate, or the refusal
    /// after all.
    pub(super) fn on_found(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<Option<Message>, StoreFailure>,
    ) {
        let Some(Pending::Retry {
            session,
            conn,
            user,
            ack,
            temp_id,
            numeric_temp_id,
            otherwise,
        }) = self.pending.remove(&op)
        else {
            return;
        };
        let echo = temp_id_echo(Some(&temp_id), numeric_temp_id);
        let remember = self.config.temp_ids_remembered;
        if let Some(u) = self.users.get_mut(&user) {
            u.in_flight = u.in_flight.saturating_sub(1);
            if let Ok(Some(message)) = &result {
                u.recent.remember(message.clone(), remember);
            }
        }
        let live = self.asked_by(session, conn);
        match result {
            // Under that tempId, a message of another conversation: to one it is not a
            // member of, the user is refused.
            Ok(Some(message))
                if matches!(&otherwise, Otherwise::Forbidden { conversation }
                    if *conversation != message.conversation_id) =>
            {
                if live {
                    let refusal = refusal_for(ErrorCode::Forbidden);
                    self.refuse_send(now, session, ack, user.clone(), echo, &refusal);
                }
            }
            Ok(Some(message)) => {
                if live {
                    let to = SendReply::new(session, ack, &user, &echo);
                    self.answer_duplicate(now, &to, &message);
                }
            }
            // Not a retry (or the store could not tell): the refusal it was looked up for
            // stands (over the rate limit, or not a member).
            Ok(None) | Err(_) if live => {
                let refusal = match otherwise {
                    Otherwise::RateLimited {
                        retry_after_ms,
                        asked_at,
                    } => {
                        let mut refusal = refusal_for(ErrorCode::RateLimited);
                        let waited = now.ms_since(asked_at);
                        refusal.retry_after_ms = Some(retry_after_ms.saturating_sub(waited).max(1));
                        refusal
                    }
                    // Not a retry: not a member. If the store could not tell, neither can
                    // the gateway, and the client tries again.
                    Otherwise::Forbidden { .. } if result.is_ok() => {
                        refusal_for(ErrorCode::Forbidden)
                    }
                    Otherwise::Forbidden { .. } => refusal_for(ErrorCode::Internal),
                };
                self.refuse_send(now, session, ack, user.clone(), echo, &refusal);
            }
            Ok(None) | Err(_) => {}
        }
        self.reclaim_user(&user);
    }

    /// Validates, deduplicates and rate-limits a send; on success asks the store for it.
    fn admit_send(
        &mut self,
        now: Instant,
        session: SessionId,
        ack: Option<u64>,
        user_key: &UserKey,
        arg: &Value,
    ) -> Result<Admitted, Refusal> {
        let send = self.parse_send(arg)?;
        if let Err(code) = self.conversations.access(&send.conversation_id, user_key) {
            return self.refuse_unless_stored(now, session, ack, user_key, send, code);
        }
        let conn = self
            .conn_no(session)
            .ok_or_else(|| refusal_for(ErrorCode::Internal))?;
        let window_ms = self.config.rate_window_ms;
        let limit = self.config.rate_messages;
        let Some(user) = self.users.get_mut(user_key) else {
            return Err(refusal_for(ErrorCode::Internal));
        };
        if let Some(t) = &send.temp_id {
            if let Some(stored) = user.recent.find(t) {
                // A retry of a send already acknowledged: answer it again, store nothing.
                let stored = stored.clone();
                let echo = temp_id_echo(Some(t), send.numeric_temp_id);
                let to = SendReply::new(session, ack, user_key, &echo);
                self.answer_duplicate(now, &to, &stored);
                return Ok(Admitted::Duplicate);
            }
        }
        let had = !user.window.is_empty();
        #[cfg(not(feature = "mutations"))]
        let admitted = user.window.try_admit(now, limit, window_ms);
        // MUTATION (test-only): a fixed-window limiter.
        #[cfg(feature = "mutations")]
        let admitted = if self.config.engine.mutations.fixed_window_limiter {
            user.window.try_admit_fixed(now, limit, window_ms)
        } else {
            user.window.try_admit(now, limit, window_ms)
        };
        Tally::moved(&mut self.tally.windows, had, !user.window.is_empty());
        if let Err(wait) = admitted {
            // Appends in flight are within the window, so at most `limit` of them; past
            // that, lookups: a few at a time per user, the rest refused at once.
            let lookups_full = user.in_flight as usize >= limit.saturating_add(MAX_LOOKUPS);
            let temp_id = send.temp_id.filter(|_| !lookups_full);
            let Some(temp_id) = temp_id else {
                let mut r = refusal_for(ErrorCode::RateLimited);
                r.retry_after_ms = Some(wait);
                return Err(r);
            };
            // Perhaps a retry of a send older than the ones remembered, or still being
            // stored: a retry is answered as a duplicate, never refused. The store knows.
            if let Some(answered) = self.charge_lookup(now, session, wait) {
                return Ok(answered);
            }
            let otherwise = Otherwise::RateLimited {
                retry_after_ms: wait,
                asked_at: now,
            };
            let asked = (session, conn, ack);
            self.ask_if_stored(asked, user_key, temp_id, send.numeric_temp_id, otherwise);
            return Ok(Admitted::Lookup);
        }
        user.in_flight = user.in_flight.saturating_add(1);
        super::arm_rate_expiry(
            &mut self.timers,
            &mut self.timed_users,
            user,
            user_key,
            window_ms,
        );
        let (sender_id, sender_type) = (
            user_key.user_id().to_owned(),
            user_key.user_type().to_owned(),
        );
        let op = self.next_op();
        self.pending.insert(
            op,
            Pending::Append {
                session,
                conn,
                user: user_key.clone(),
                ack,
                temp_id: send.temp_id.clone(),
                numeric_temp_id: send.numeric_temp_id,
                admitted_at: now,
            },
        );
        let created_at_ms = self.wall_ms(now);
        let request = AppendRequest {
            id: self.rng.time_ordered_id(created_at_ms),
            conversation_id: send.conversation_id,
            sender_id,
            sender_type,
            content: send.content,
            temp_id: send.temp_id,
            created_at_ms,
        };
        // MUTATION (test-only): acknowledge before the store has committed.
        #[cfg(feature = "mutations")]
        if self.config.engine.mutations.ack_before_persist {
            let seq = self
                .conversations
                .get(&request.conversation_id)
                .map_or(1, |c| c.last_seq + 1);
            let guess = Message {
                id: request.id.clone(),
                conversation_id: request.conversation_id.clone(),
                seq,
                sender_id: request.sender_id.clone(),
                sender_type: request.sender_type.clone(),
                content: request.content.clone(),
                temp_id: request.temp_id.clone(),
                created_at_ms: request.created_at_ms,
            };
            let echo = temp_id_echo(guess.temp_id.as_deref(), send.numeric_temp_id);
            let to = SendReply::new(session, ack, user_key, &echo);
            self.answer_send(now, &to, &guess, &MessageJson::new(&guess), false);
        }
        self.out
            .push_back(Output::Effect(Effect::Append { op, request }));
        Ok(Admitted::ToStore)
    }

    /// Acknowledges a send to its sender: the ack (if asked for) and `message:sent`, whose
    /// `tempId` is the request's as the client sent it. `m` is the message's JSON (a
    /// stored message's is written once for its sender and its fan-out).
    fn answer_send(
        &mut self,
        now: Instant,
        to: &SendReply<'_>,
        message: &Message,
        m: &MessageJson,
        duplicate: bool,
    ) {
        self.metrics.accepted += 1;
        if duplicate {
            self.metrics.duplicates += 1;
        }
        self.ack_json(now, to.session, to.ack, &m.send_ack(duplicate));
        self.emit_json(now, to.session, &m.sent_event(to.echo));
        self.notice(Notice::Accepted {
            user: to.user.clone(),
            conversation_id: message.conversation_id.clone(),
            seq: message.seq,
            duplicate,
        });
    }

    /// [`Self::answer_send`] for a send answered as a duplicate of a stored message.
    fn answer_duplicate(&mut self, now: Instant, to: &SendReply<'_>, message: &Message) {
        let m = MessageJson::new(message);
        self.answer_send(now, to, message, &m, true);
    }

    pub(super) fn on_appended(
        &mut self,
        now: Instant,
        op: OpId,
        result: Result<AppendOutcome, StoreFailure>,
    ) {
        let Some(Pending::Append {
            session,
            conn,
            user,
            ack,
            temp_id,
            numeric_temp_id,
            admitted_at,
        }) = self.pending.remove(&op)
        else {
            return;
        };
        let echo = temp_id_echo(temp_id.as_deref(), numeric_temp_id);
        let live = self.asked_by(session, conn);
        // MUTATION (test-only): the sender was answered before the store committed.
        #[cfg(feature = "mutations")]
        let live = live && !self.config.engine.mutations.ack_before_persist;
        let stored = matches!(result, Ok(AppendOutcome::Stored(_)));
        let answered = match result {
            Ok(AppendOutcome::Stored(message)) => {
                if let Some(conv) = self.conversations.get_mut(&message.conversation_id) {
                    conv.last_seq = conv.last_seq.max(message.seq);
                }
                let m = MessageJson::new(&message);
                if live {
                    let to = SendReply::new(session, ack, &user, &echo);
                    self.answer_send(now, &to, &message, &m, false);
                } else {
                    // Stored all the same: counted, though its sender has gone unanswered.
                    self.metrics.accepted += 1;
                    self.notice(Notice::Accepted {
                        user: user.clone(),
                        conversation_id: message.conversation_id.clone(),
                        seq: message.seq,
                        duplicate: false,
                    });
                }
                self.fan_out(now, &message, &m, session);
                Some(message)
            }
            Ok(AppendOutcome::Duplicate(message)) => {
                if live {
                    let to = SendReply::new(session, ack, &user, &echo);
                    self.answer_duplicate(now, &to, &message);
                }
                Some(message)
            }
            Ok(AppendOutcome::NotMember) | Err(_) => {
                let code = if matches!(result, Ok(AppendOutcome::NotMember)) {
                    ErrorCode::Forbidden
                } else {
                    ErrorCode::Internal
                };
                *self.metrics.send_refused.entry(code.as_str()).or_default() += 1;
                self.notice(Notice::SendRefused {
                    user: user.clone(),
                    code,
                });
                if live {
                    let r = refusal_for(code);
                    self.ack(now, session, ack, r.to_json());
                    self.emit(
                        now,
                        session,
                        "message:error",
                        json!({ "error": r.error, "code": r.code.as_str(), "tempId": echo }),
                    );
                    // MUTATION (test-only): a store failure also drops the sender's
                    // connection (its client comes back and sends again).
                    #[cfg(feature = "mutations")]
                    if self.config.engine.mutations.store_failure_closes
                        && code == ErrorCode::Internal
                    {
                        let reason = CloseReason::ServerClose("store failure".into());
                        let _ = self.engine.close(now, session, reason);
                    }
                }
                None
            }
        };
        let remember = self.config.temp_ids_remembered;
        let window_ms = self.config.rate_window_ms;
        if let Some(u) = self.users.get_mut(&user) {
            u.in_flight = u.in_flight.saturating_sub(1);
            if let Some(message) = answered {
                // The store answers by the request's tempId, so `message` carries it.
                u.recent.remember(message, remember);
            }
            if !stored {
                // Not a new accepted send: its place in the window is given back.
                let had = !u.window.is_empty();
                u.window.refund(admitted_at, window_ms);
                Tally::moved(&mut self.tally.windows, had, !u.window.is_empty());
            }
        }
        self.reclaim_user(&user);
    }

    /// `message:new` to the room, `message:notification` to members connected elsewhere.
    /// Each is encoded once, from the message's JSON `m`, and its bytes shared by every
    /// recipient.
    #[cfg_attr(not(feature = "mutations"), allow(unused_variables))]
    fn fan_out(&mut self, now: Instant, message: &Message, m: &MessageJson, sender: SessionId) {
        let Some(conv) = self.conversations.get(&message.conversation_id) else {
            return;
        };
        #[allow(unused_mut)]
        let mut room: Vec<SessionId> = conv.room.keys().copied().collect();
        // MUTATION (test-only): the sender's own connection is left out.
        #[cfg(feature = "mutations")]
        if self.config.engine.mutations.fan_out_skips_sender {
            room.retain(|s| *s != sender);
        }
        // Members connected elsewhere are told, but not a connection still reading its join
        // of this conversation: its read is behind this append in the store's queue (one
        // ahead of it would have put the connection in the room already), so `missed`
        // brings it the message, and a notification too would show it twice.
        let mut elsewhere = vec![];
        for member in &conv.members {
            if let Some(u) = self.users.get(member) {
                elsewhere.extend(u.conns.iter().filter(|s| {
                    !conv.room.contains_key(s) && !self.joining(**s, &message.conversation_id)
                }));
            }
        }
        let nsp = &self.config.namespace;
        let new = [SioPacket::text_frame(
            PacketType::Event,
            nsp,
            None,
            &m.new_event(),
        )];
        for s in &room {
            let _ = self.engine.send(now, *s, &new);
        }
        if !elsewhere.is_empty() {
            let data = m.notification_event(&message.conversation_id);
            let note = [SioPacket::text_frame(PacketType::Event, nsp, None, &data)];
            for s in &elsewhere {
                let _ = self.engine.send(now, *s, &note);
            }
        }
        self.metrics.deliveries += (room.len() + elsewhere.len()) as u64;
    }

    /// Whether `session` has a join of `conversation_id` reading its catch-up (and not
    /// left since).
    fn joining(&self, session: SessionId, conversation_id: &str) -> bool {
        self.joins_reading
            .range((session, OpId(0))..=(session, OpId(u64::MAX)))
            .any(|(_, op)| {
                matches!(
                    self.pending.get(op),
                    Some(Pending::Join { conversation_id: c, left: false, .. }) if c == conversation_id
                )
            })
    }

    // ---- token refresh -------------------------------------------------------------------

    fn on_refresh(&mut self, now: Instant, session: SessionId, ack: Option<u64>, arg: &Value) {
        let Some(token) = str_field(arg, "token") else {
            return self.ack(
                now,
                session,
                ack,
                json!({ "ok": false, "error": "Invalid payload" }),
            );
        };
        let verdict = self.verifier.verify(token, self.wall_ms(now));
        let Some(conn) = self.conns.get_mut(&session) else {
            return;
        };
        let answer = match verdict {
            Err(e) => Err(e.to_string()),
            // MUTATION (test-only): a token of any user is taken.
            Ok(v) if v.claims.user_key() != conn.user && !refresh_any_user(&self.config) => {
                Err("Token is for another user".into())
            }
            Ok(v) if v.exp_ms <= conn.exp_ms => Err("Token does not extend the current one".into()),
            Ok(v) => {
                conn.exp_ms = v.exp_ms;
                // The connection now holds this token: its role too, granted or withdrawn.
                conn.admin = v.claims.is_admin();
                let owner = Owner::Conn(session);
                // MUTATION (test-only): the grace's close stays armed.
                #[cfg(feature = "mutations")]
                let keep = self.config.engine.mutations.refresh_keeps_grace;
                #[cfg(not(feature = "mutations"))]
                let keep = false;
                if !keep {
                    self.timers
                        .stop(&mut conn.timers, owner, ConnTimer::AuthGrace);
                }
                let at = super::instant_of_wall(self.config.wall_epoch_ms, conn.exp_ms);
                self.timers
                    .set(&mut conn.timers, owner, ConnTimer::AuthExpiry, at);
                Ok(())
            }
        };
        let reply = match answer {
            Ok(()) => json!({ "ok": true }),
            Err(error) => json!({ "ok": false, "error": error }),
        };
        self.ack(now, session, ack, reply);
    }
}

/// A `tempId` as Heartline keeps it: a string as it is, a number (`Date.now()` is a common
/// choice) as its decimal text, so that a retry with the same number is a duplicate (and
/// `123` and `"123"` are one id). Other JSON values are not ids. The stored message carries
/// the text; `message:sent` and `message:error` echo the id as the client sent it
/// ([`temp_id_echo`]), since that is what a client matches its pending sends by.
fn temp_id_text(v: &Value) -> Option<String> {
    match v {
        Value::String(t) => Some(t.clone()),
        Value::Number(n) => Some(number_text(n)),
        _ => None,
    }
}

/// A number's text by its value, as JavaScript's `String(n)` writes it: a JavaScript
/// server reads every JSON number as a double, so `7`, `7.0`, `7e0` and `70e-1` are one
/// number to it (and one id here), `-0` is `0`, and integers past 2^53 are the double
/// nearest them. ECMAScript's Number::toString: the shortest digits that read back as the
/// same double, written plainly from 1e-7 up to 1e21 and with an exponent outside that.
fn number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) => js_number_text(f),
        None => n.to_string(),
    }
}

fn js_number_text(f: f64) -> String {
    if f == 0.0 {
        return "0".to_owned();
    }
    if !f.is_finite() {
        return if f.is_nan() {
            "NaN".to_owned()
        } else if f > 0.0 {
            "Infinity".to_owned()
        } else {
            "-Infinity".to_owned()
        };
    }
    let sign = if f < 0.0 { "-" } else { "" };
    // Rust writes the shortest round-trip digits too: `d.ddde±x`.
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i64 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // The value is 0.digits × 10^n.
    let n = exp + 1;
    let zeros = |count: i64| "0".repeat(usize::try_from(count).unwrap_or(0));
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", zeros(n - k))
    } else if 0 < n && n <= 21 {
        let (int, frac) = digits.split_at(usize::try_from(n).unwrap_or(0));
        format!("{int}.{frac}")
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", zeros(-n))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        match digits.split_at(1) {
            (first, "") => format!("{first}e{e}"),
            (first, rest) => format!("{first}.{rest}e{e}"),
        }
    };
    format!("{sign}{body}")
}

/// A kept `tempId` as the client sent it: back to a number if it came as one.
fn temp_id_echo(temp_id: Option<&str>, numeric: bool) -> Value {
    match temp_id {
        None => Value::Null,
        Some(t) if numeric => t
            .parse::<serde_json::Number>()
            .map_or_else(|_| Value::String(t.to_owned()), Value::Number),
        Some(t) => Value::String(t.to_owned()),
    }
}

/// The share of a connection's send queue one reply of messages may fill: the answers
/// to every join and read a client has under way can arrive together, in one batch of
/// the store's, and go into its queue back to back. The shipped clients keep at most
/// four under way; four replies of an eighth leave half the queue for live traffic, so
/// a client that reads as fast as it can is never taken for a slow consumer.
const REPLY_SHARE: usize = 8;

/// Store operations one user may have in flight beyond `rate_limit.messages` (its appends
/// stay within that): room for tempId lookups of sends over the limit or from a removed
/// user (see [`Effect::FindSent`]). Past it, such sends are refused `rate_limited`
/// without asking.
const MAX_LOOKUPS: usize = 8;

/// `retryAfterMs` for a removed user's send that may be a retry, when its lookups are all
/// under way ([`MAX_LOOKUPS`]).
const LOOKUP_RETRY_MS: u64 = 1_000;

/// What [`Gateway::admit_send`] did with a send it did not refuse.
enum Admitted {
    /// Asked the store to append it.
    ToStore,
    /// Answered it as a retry of a message remembered in memory.
    Duplicate,
    /// It would be refused (rate limit, membership); asked the store whether it is a retry.
    Lookup,
    /// It would have been asked of the store, but the connection's event budget is spent
    /// for now: to be refused `rate_limited`.
    OverBudget {
        /// When to try again.
        retry_after_ms: u64,
    },
    /// Asking the store would have been past every balance of the budget: the connection
    /// is being ended as a flood.
    Flooded,
}

/// Whether the test-only mutation that takes any user's token in `auth:refresh` is on.
fn refresh_any_user(config: &crate::gateway::GatewayConfig) -> bool {
    #[cfg(feature = "mutations")]
    return config.engine.mutations.refresh_any_user;
    #[cfg(not(feature = "mutations"))]
    {
        let _ = config;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::js_number_text;

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (f, js) in [
            (7.0, "7"),
            (70e-1, "7"),
            (-0.0, "0"),
            (0.1, "0.1"),
            (-123.456, "-123.456"),
            (1.5e-7, "1.5e-7"),
            (1e-6, "0.000001"),
            (1.23e-18, "1.23e-18"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1e200, "1e+200"),
            (1_767_225_600_123.0, "1767225600123"),
            // 2^60 and 2^53 + 1 as a JavaScript double holds them.
            (1_152_921_504_606_846_976.0, "1152921504606847000"),
            (9_007_199_254_740_993u64 as f64, "9007199254740992"),
        ] {
            assert_eq!(js_number_text(f), js, "{f:e}");
        }
    }
}
