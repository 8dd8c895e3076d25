//! What the server sends of each message, frame by frame, on each honest connection.
//!
//! [`super::delivery`] judges what a client hands its application, after the client's
//! catch-up has dropped repeats and filled gaps from history, as the project's own client
//! does. A front end on `socket.io-client` does none of that, so this checker reads the
//! frames themselves, keeping its own view of each connection's rooms from the requests the
//! client sent and the acks that answered them:
//!
//! - after a `conversation:join` is answered `ok: true` with `lastSeq` L, that connection's
//!   `message:new` frames for the conversation run L+1, L+2, ... with no gap, repeat or
//!   swap, until a `conversation:leave` is answered; a second join's `lastSeq` is the last
//!   one the connection was sent (everything before it reached it live);
//! - a join's `missed` list runs `seq` by `seq` from its `afterSeq` and ends at or before
//!   `lastSeq`, and is not empty when `afterSeq` is short of `lastSeq`;
//! - a send's tempId is acknowledged `duplicate: false` once at most, and an ok ack of a
//!   send is followed on its link, as the next frame written, by its `message:sent`;
//! - `message:new` reaches only connections that joined the conversation, and
//!   `message:notification` only connected ones that did not;
//! - every message in a frame, live or missed, is the stored one, field for field, and
//!   the one a `message:send` ack or a `message:sent` names carries the send's `tempId`;
//!   a refused send names one of the contract's error codes;
//! - once the run has healed and gone quiet, every live connection was sent the last
//!   message of each conversation it joined.
//!
//! A join is in the room from the moment it is answered (the server enters the room and
//! queues the answer in the same step, and a connection's frames keep their order), and out
//! of it from the moment a leave is answered; so the rules above hold exactly, with no
//! allowance for frames in flight. A join whose catch-up was still being read when a leave
//! of the same conversation was answered is answered without entering the room (the later
//! request wins), and is taken so. `message:sent` goes to the connection that sent.
//!
//! A member list replaced without a connection's user lets the connection out of the room
//! at once and without a word ([`MessageFrames::evicted`]); what the server wrote to it
//! before is still on its way. Every message stored by then, up to the conversation's
//! last `seq` S, had been written to each connection in the room, so such a connection
//! leaves the room, by the wire, when its `message:new` frames reach S (at once if they
//! had), and a join the server answered before the eviction enters the room only up to S
//! as well.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::wire::chat_data;
use super::Finding;
use crate::store::Store;

/// The checker's name.
pub const NAME: &str = "message-frames";

/// A request awaiting its ack.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    Join {
        conversation: String,
        after_seq: Option<u64>,
        /// Not if a leave of the conversation was answered while it was under way.
        enters: bool,
        /// Answered by the server (the answer on its way).
        answered: bool,
        /// Let out of the room after its answer, once the room's frames reach this `seq`.
        evicted_at: Option<u64>,
    },
    Leave {
        conversation: String,
    },
    Send {
        temp_id: Option<String>,
    },
}

/// The contract's error codes for a refused send.
const SEND_ERRORS: [&str; 6] = [
    "rate_limited",
    "invalid_payload",
    "forbidden",
    "not_found",
    "too_large",
    "internal",
];

/// Each honest connection's rooms, by the wire.
#[derive(Debug, Default)]
pub struct MessageFrames {
    /// (link, ack id) to the request it will answer.
    asked: BTreeMap<(u64, u64), Request>,
    /// (link, conversation) joined, to the last `seq` sent on it.
    joined: BTreeMap<(u64, String), u64>,
    /// (link, conversation) let out of the room by the server, to the `seq` at which the
    /// frames written before that end.
    leaving: BTreeMap<(u64, String), u64>,
    /// (link, tempId) of every send made on a link.
    sends: BTreeSet<(u64, String)>,
    /// Links whose last frame written was an ok ack of a send: its `message:sent` is due
    /// next, with this tempId.
    owed_sent: BTreeMap<u64, String>,
    /// (sender, tempId) acknowledged as stored by that send (`duplicate: false`): at most
    /// once each, however many times the client sent it (a tempId is its user's).
    fresh: BTreeSet<(String, String)>,
    /// `message:new` frames checked.
    pub frames: u64,
}

fn conversation_of(v: &Value) -> Option<String> {
    Some(v.get("conversationId")?.as_str()?.to_owned())
}

impl MessageFrames {
    /// An honest client sent `text` on `link`.
    pub fn sent(&mut self, link: u64, text: &str) {
        let Some((b'2', Some(id), data)) = chat_data(text) else {
            return;
        };
        let request = match (data.get(0).and_then(Value::as_str), data.get(1)) {
            (Some("conversation:join"), Some(arg)) => {
                conversation_of(arg).map(|conversation| Request::Join {
                    conversation,
                    after_seq: arg.get("afterSeq").and_then(Value::as_u64),
                    enters: true,
                    answered: false,
                    evicted_at: None,
                })
            }
            (Some("conversation:leave"), Some(arg)) => {
                conversation_of(arg).map(|conversation| Request::Leave { conversation })
            }
            (Some("message:send"), Some(arg)) => {
                let temp_id = arg.get("tempId").and_then(Value::as_str).map(str::to_owned);
                if let Some(t) = &temp_id {
                    self.sends.insert((link, t.clone()));
                }
                Some(Request::Send { temp_id })
            }
            _ => None,
        };
        if let Some(request) = request {
            self.asked.insert((link, id), request);
        }
    }

    /// The server wrote `text` to honest connection `link`, `store` holding what is
    /// committed at that moment.
    pub fn server_sent(&mut self, link: u64, text: &str, store: &Store) -> Finding {
        // A message is told of (acknowledged, echoed, fanned out, notified) only once it is
        // stored: judged when the frame is written, not when it arrives, by which time the
        // store may have caught up with a server that answered early.
        for message in told_of(text) {
            stored_as_sent(link, Some(&message), store)?;
        }
        // A send acknowledged as stored is followed, on its link and at once, by its
        // `message:sent` (the contract's two ways of learning it).
        if let Some(temp_id) = self.owed_sent.remove(&link) {
            let named = chat_data(text).and_then(|(kind, _, data)| {
                (kind == b'2' && data.get(0).and_then(Value::as_str) == Some("message:sent"))
                    .then(|| data[1]["tempId"].as_str().map(str::to_owned))
            });
            if named != Some(Some(temp_id.clone())) {
                return Err((
                    NAME,
                    format!("ws{link}: a send of tempId {temp_id} acknowledged, then {text}"),
                ));
            }
        }
        if let Some((b'3', Some(id), data)) = chat_data(text) {
            match self.asked.get_mut(&(link, id)) {
                Some(Request::Join { answered, .. }) => *answered = true,
                Some(Request::Send {
                    temp_id: Some(temp_id),
                }) if data[0]["ok"] == Value::Bool(true) => {
                    self.owed_sent.insert(link, temp_id.clone());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The server let `links` out of `conversation`'s room (their user's membership
    /// ended), when the conversation's last stored `seq` was `last`.
    pub fn evicted(&mut self, links: &[u64], conversation: &str, last: u64) {
        for link in links {
            let key = (*link, conversation.to_owned());
            match self.joined.get(&key) {
                Some(sent) if *sent >= last => {
                    self.joined.remove(&key);
                    self.leaving.remove(&key);
                }
                // Let out before and not back in since (a join answered would have said
                // so): the server has written it nothing of the conversation since, and
                // the frames that end its stay are those of that first time.
                Some(_) => {
                    self.leaving.entry(key).or_insert(last);
                }
                None => {}
            }
            for request in self.asked.range_mut((*link, 0)..=(*link, u64::MAX)) {
                if let (
                    _,
                    Request::Join {
                        conversation: c,
                        answered: true,
                        evicted_at,
                        ..
                    },
                ) = request
                {
                    if c == conversation && evicted_at.is_none() {
                        *evicted_at = Some(last);
                    }
                }
            }
        }
    }

    /// The frames written to `link` before it was let out of `conversation`'s room have
    /// all arrived (its last `seq` sent is `sent`): it is out of the room.
    fn leave_if_done(&mut self, link: u64, conversation: &str, sent: u64) {
        let key = (link, conversation.to_owned());
        if self.leaving.get(&key).is_some_and(|at| sent >= *at) {
            self.leaving.remove(&key);
            self.joined.remove(&key);
        }
    }

    /// A frame from the server reached an honest client on `link`.
    pub fn received(&mut self, link: u64, text: &str, store: &Store) -> Finding {
        if let Some((b'3', Some(id), data)) = chat_data(text) {
            return match self.asked.remove(&(link, id)) {
                Some(request) => self.answered(link, request, data.get(0), store),
                None => Ok(()),
            };
        }
        let Some((b'2', _, data)) = chat_data(text) else {
            return Ok(());
        };
        match data.get(0).and_then(Value::as_str) {
            Some("message:new") => self.message_new(link, data.get(1), store),
            Some("message:sent") => {
                let arg = data.get(1).unwrap_or(&Value::Null);
                let message = arg.get("message");
                stored_as_sent(link, message, store)?;
                let named = arg.get("tempId");
                let ours = named
                    .and_then(Value::as_str)
                    .is_some_and(|t| self.sends.contains(&(link, t.to_owned())));
                if !ours || named.is_none_or(|t| Some(t) != message.and_then(|m| m.get("tempId"))) {
                    return Err((
                        NAME,
                        format!("ws{link}: message:sent names tempId {named:?} for {arg}"),
                    ));
                }
                Ok(())
            }
            Some("message:error") => send_refusal(link, data.get(1).unwrap_or(&Value::Null)),
            Some("message:notification") => {
                let arg = data.get(1);
                let Some(conv) = arg.and_then(conversation_of) else {
                    return Err((
                        NAME,
                        format!("ws{link}: a notification without a conversation"),
                    ));
                };
                if self.joined.contains_key(&(link, conv.clone())) {
                    return Err((
                        NAME,
                        format!("ws{link}: message:notification for {conv}, which it joined"),
                    ));
                }
                stored_as_sent(link, arg.and_then(|a| a.get("message")), store).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn answered(
        &mut self,
        link: u64,
        request: Request,
        reply: Option<&Value>,
        store: &Store,
    ) -> Finding {
        let ok = reply.and_then(|r| r.get("ok")).and_then(Value::as_bool) == Some(true);
        match request {
            Request::Send { temp_id } => {
                let reply = reply.unwrap_or(&Value::Null);
                if !ok {
                    return send_refusal(link, reply);
                }
                let message = reply.get("message");
                stored_as_sent(link, message, store)?;
                let stored = message
                    .and_then(|m| m.get("tempId"))
                    .and_then(Value::as_str);
                if temp_id.is_some() && stored != temp_id.as_deref() {
                    return Err((
                        NAME,
                        format!("ws{link}: a send of tempId {temp_id:?} acknowledged as {reply}"),
                    ));
                }
                let sender = message.map_or(String::new(), |m| {
                    format!(
                        "{}:{}",
                        m["senderId"].as_str().unwrap_or(""),
                        m["senderType"].as_str().unwrap_or("")
                    )
                });
                match (reply.get("duplicate").and_then(Value::as_bool), temp_id) {
                    (None, _) => Err((
                        NAME,
                        format!("ws{link}: a send acknowledged without `duplicate`: {reply}"),
                    )),
                    (Some(false), Some(t)) if !self.fresh.insert((sender, t.clone())) => Err((
                        NAME,
                        format!("ws{link}: tempId {t} acknowledged as newly stored twice"),
                    )),
                    _ => Ok(()),
                }
            }
            Request::Leave { conversation } => {
                if ok {
                    // A join of it still being read is answered later, out of the room.
                    for request in self.asked.range_mut((link, 0)..=(link, u64::MAX)) {
                        if let (
                            _,
                            Request::Join {
                                conversation: c,
                                enters,
                                ..
                            },
                        ) = request
                        {
                            if *c == conversation {
                                *enters = false;
                            }
                        }
                    }
                    self.leaving.remove(&(link, conversation.clone()));
                    self.joined.remove(&(link, conversation));
                }
                Ok(())
            }
            Request::Join { .. } if !ok => Ok(()),
            Request::Join {
                conversation,
                after_seq,
                enters,
                evicted_at,
                ..
            } => {
                let reply = reply.unwrap_or(&Value::Null);
                let Some(last) = reply.get("lastSeq").and_then(Value::as_u64) else {
                    return Err((
                        NAME,
                        format!("ws{link}: join of {conversation} without lastSeq"),
                    ));
                };
                if last > store.last_seq(&conversation) {
                    return Err((
                        NAME,
                        format!(
                            "ws{link}: {conversation} joined at #{last}, the store has #{}",
                            store.last_seq(&conversation)
                        ),
                    ));
                }
                let mut at = after_seq;
                let missed = reply.get("missed").and_then(Value::as_array);
                // Cut to what the reply can carry, but never to nothing: the first missed
                // message is always there.
                if after_seq.is_some_and(|a| a < last) && missed.is_none_or(Vec::is_empty) {
                    return Err((
                        NAME,
                        format!(
                            "ws{link}: {conversation} joined after {after_seq:?} at #{last} \
                             with nothing missed"
                        ),
                    ));
                }
                for m in missed.into_iter().flatten() {
                    let seq = stored_as_sent(link, Some(m), store)?;
                    let expected = at.map(|a| a + 1);
                    if expected.is_some_and(|e| e != seq) || seq > last {
                        return Err((
                            NAME,
                            format!(
                                "ws{link}: {conversation} missed #{seq} after {at:?}, lastSeq {last}"
                            ),
                        ));
                    }
                    at = Some(seq);
                }
                if !enters {
                    return Ok(());
                }
                if let Some(sent) = self.joined.insert((link, conversation.clone()), last) {
                    if sent != last {
                        return Err((
                            NAME,
                            format!(
                                "ws{link}: {conversation} joined again at #{last}, \
                                 but #{sent} was the last sent to it"
                            ),
                        ));
                    }
                }
                if let Some(at) = evicted_at {
                    self.leaving.insert((link, conversation.clone()), at);
                    self.leave_if_done(link, &conversation, last);
                }
                Ok(())
            }
        }
    }

    fn message_new(&mut self, link: u64, message: Option<&Value>, store: &Store) -> Finding {
        self.frames += 1;
        let Some(conv) = message.and_then(conversation_of) else {
            return Err((
                NAME,
                format!("ws{link}: message:new without a conversation"),
            ));
        };
        let seq = stored_as_sent(link, message, store)?;
        let Some(sent) = self.joined.get_mut(&(link, conv.clone())) else {
            return Err((
                NAME,
                format!("ws{link}: message:new {conv}#{seq}, a conversation it has not joined"),
            ));
        };
        if seq != *sent + 1 {
            let was = *sent;
            return Err((
                NAME,
                format!("ws{link}: message:new {conv}#{seq} after #{was} (gap, repeat or swap)"),
            ));
        }
        *sent = seq;
        self.leave_if_done(link, &conv, seq);
        Ok(())
    }

    /// Connection `link` is gone.
    pub fn closed(&mut self, link: u64) {
        self.asked.retain(|(l, _), _| *l != link);
        self.joined.retain(|(l, _), _| *l != link);
        self.leaving.retain(|(l, _), _| *l != link);
        self.sends.retain(|(l, _)| *l != link);
    }

    /// After the run healed and went quiet: every one of the `live` connections was sent
    /// the last stored message of each conversation it joined.
    pub fn settled(&self, live: &[u64], store: &Store) -> Finding {
        for link in live {
            let joined = self.joined.range((*link, String::new())..);
            for ((_, conv), sent) in joined.take_while(|((l, _), _)| l == link) {
                if *sent < store.last_seq(conv) {
                    return Err((
                        NAME,
                        format!(
                            "ws{link}: {conv} sent up to #{sent}, the store has #{}",
                            store.last_seq(conv)
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The messages a frame tells of: an ok ack's, and those of `message:sent`,
/// `message:new` and `message:notification` (a join's catch-up and history replies only
/// read what is stored). Other frames are not parsed.
fn told_of(text: &str) -> Vec<Value> {
    const TELLING: [&str; 4] = [
        "43/chat,",
        "42/chat,[\"message:new\"",
        "42/chat,[\"message:sent\"",
        "42/chat,[\"message:notification\"",
    ];
    if !TELLING.iter().any(|p| text.starts_with(p)) {
        return vec![];
    }
    let message = match chat_data(text) {
        Some((b'3', Some(_), mut data)) => {
            let reply = data.get_mut(0).map(Value::take).unwrap_or_default();
            if reply.get("ok") != Some(&Value::Bool(true)) {
                return vec![];
            }
            reply.get("message").cloned()
        }
        Some((b'2', _, mut data)) => match data.get(0).and_then(Value::as_str) {
            Some("message:new") => data.get_mut(1).map(Value::take),
            Some("message:sent" | "message:notification") => {
                data.get(1).and_then(|a| a.get("message")).cloned()
            }
            _ => None,
        },
        _ => None,
    };
    message.into_iter().collect()
}

/// A send's refusal (its ack, or its `message:error`) names one of the contract's codes,
/// and one of `rate_limited` says when to try again, as the contract asks: a
/// `retryAfterMs` of at least 1 ms (a client told 0, or nothing, would retry at once).
fn send_refusal(link: u64, refusal: &Value) -> Finding {
    let waits = refusal
        .get("retryAfterMs")
        .and_then(Value::as_u64)
        .is_some_and(|ms| ms >= 1);
    match refusal.get("code").and_then(Value::as_str) {
        Some("rate_limited") if !waits => Err((
            NAME,
            format!("ws{link}: a send refused rate_limited without retryAfterMs: {refusal}"),
        )),
        Some(code) if SEND_ERRORS.contains(&code) => Ok(()),
        _ => Err((NAME, format!("ws{link}: a send refused as {refusal}"))),
    }
}

/// The message in a frame must be the stored one, field for field; its `seq`.
fn stored_as_sent(
    link: u64,
    message: Option<&Value>,
    store: &Store,
) -> Result<u64, (&'static str, String)> {
    let message = message.unwrap_or(&Value::Null);
    let key = conversation_of(message).zip(message.get("seq").and_then(Value::as_u64));
    let Some((conv, seq)) = key else {
        return Err((
            NAME,
            format!("ws{link}: a message without conversation/seq: {message}"),
        ));
    };
    match store.get(&conv, seq) {
        Some(stored) if stored.to_json() == *message => Ok(seq),
        Some(stored) => Err((
            NAME,
            format!(
                "ws{link}: {conv}#{seq} sent as {message}, stored as {}",
                stored.to_json()
            ),
        )),
        None => Err((
            NAME,
            format!("ws{link}: {conv}#{seq} sent, not in the store"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartline_core::gateway::{AppendRequest, Effect, OpId};
    use heartline_core::{Instant, Rng};

    /// A store holding `n` messages of conversation `c`.
    fn store_with(n: u64) -> Store {
        let mut store = Store::new(0);
        let mut rng = Rng::from_seed(1);
        for i in 0..n {
            let request = AppendRequest {
                id: format!("id{i}"),
                conversation_id: "c".into(),
                sender_id: "u".into(),
                sender_type: "t".into(),
                content: format!("m{i}"),
                temp_id: Some(format!("t{i}")),
                created_at_ms: 0,
            };
            let effect = Effect::Append {
                op: OpId(i),
                request,
            };
            store.submit(Instant::ZERO, effect, &mut rng);
            assert!(store.complete(&mut rng).is_some());
        }
        store
    }

    fn new_frame(store: &Store, seq: u64) -> String {
        let m = store.get("c", seq).expect("stored").to_json();
        format!("42/chat,[\"message:new\",{m}]")
    }

    #[test]
    fn a_send_refused_rate_limited_says_when_to_try_again() {
        let store = store_with(1);
        let mut f = MessageFrames::default();
        let send = |id: u64| {
            format!(
                r#"42/chat,{id}["message:send",{{"conversationId":"c","content":"x","tempId":"r{id}"}}]"#
            )
        };
        let refused = |id: u64, extra: &str| {
            format!(
                r#"43/chat,{id}[{{"ok":false,"error":"slow down","code":"rate_limited"{extra}}}]"#
            )
        };
        f.sent(1, &send(1));
        f.received(1, &refused(1, r#","retryAfterMs":250"#), &store)
            .expect("with when");
        f.sent(1, &send(2));
        assert!(f.received(1, &refused(2, ""), &store).is_err(), "without");
        f.sent(1, &send(3));
        assert!(f
            .received(1, &refused(3, r#","retryAfterMs":0"#), &store)
            .is_err());
        let error = |extra: &str| {
            format!(
                r#"42/chat,["message:error",{{"error":"slow down","code":"rate_limited","tempId":"r1"{extra}}}]"#
            )
        };
        f.received(1, &error(r#","retryAfterMs":9"#), &store)
            .expect("with when");
        assert!(f.received(1, &error(""), &store).is_err());
        let forbidden =
            r#"42/chat,["message:error",{"error":"no","code":"forbidden","tempId":"r1"}]"#;
        f.received(1, forbidden, &store)
            .expect("no wait for other codes");
    }

    #[test]
    fn acks_and_message_sent_carry_the_stored_message_with_the_sends_temp_id() {
        let store = store_with(2);
        let m1 = store.get("c", 1).expect("stored").to_json();
        let mut f = MessageFrames::default();
        let send = |id: u64, temp: &str| {
            format!(
                r#"42/chat,{id}["message:send",{{"conversationId":"c","content":"x","tempId":"{temp}"}}]"#
            )
        };
        f.sent(1, &send(3, "t0"));
        let ack = format!(r#"43/chat,3[{{"ok":true,"message":{m1},"duplicate":false}}]"#);
        f.received(1, &ack, &store).expect("its own message");
        f.sent(1, &send(4, "t1"));
        let ack = format!(r#"43/chat,4[{{"ok":true,"message":{m1},"duplicate":true}}]"#);
        assert!(
            f.received(1, &ack, &store).is_err(),
            "another send's message"
        );
        f.sent(1, &send(5, "t1"));
        let refused =
            r#"43/chat,5[{"ok":false,"error":"x","code":"rate_limited","retryAfterMs":5}]"#;
        f.received(1, refused, &store).expect("a contract code");
        f.sent(1, &send(6, "t1"));
        let odd = r#"43/chat,6[{"ok":false,"error":"x","code":"busy"}]"#;
        assert!(f.received(1, odd, &store).is_err(), "not a contract code");
        let sent = format!(r#"42/chat,["message:sent",{{"tempId":"t0","message":{m1}}}]"#);
        f.received(1, &sent, &store).expect("as stored");
        assert!(
            f.received(2, &sent, &store).is_err(),
            "to a connection that did not send it"
        );
        let wrong = format!(r#"42/chat,["message:sent",{{"tempId":"t9","message":{m1}}}]"#);
        assert!(f.received(1, &wrong, &store).is_err());
    }

    #[test]
    fn a_connection_let_out_of_the_room_takes_what_was_written_before_and_nothing_after() {
        let store = store_with(5);
        let join = |f: &mut MessageFrames, link: u64, id: u64| {
            f.sent(
                link,
                &format!(r#"42/chat,{id}["conversation:join",{{"conversationId":"c"}}]"#),
            );
        };
        let ok = |id: u64, last: u64| {
            format!(r#"43/chat,{id}[{{"ok":true,"lastSeq":{last},"missed":[]}}]"#)
        };
        let mut f = MessageFrames::default();
        // Link 1 in the room at #1; #2 and #3 written to it, then it is let out at #3.
        join(&mut f, 1, 0);
        f.received(1, &ok(0, 1), &store).expect("joined");
        // Link 2's join answered by the server before the eviction, at #2, arriving after.
        join(&mut f, 2, 0);
        f.server_sent(2, &ok(0, 2), &store)
            .expect("a join answered");
        // Link 3's join answered after it: refused, or (let back in) entered anew.
        join(&mut f, 3, 0);
        f.evicted(&[1, 2, 3], "c", 3);
        f.received(1, &new_frame(&store, 2), &store)
            .expect("written before");
        f.received(1, &new_frame(&store, 3), &store)
            .expect("written before");
        assert!(
            f.received(1, &new_frame(&store, 4), &store).is_err(),
            "written after it was let out"
        );
        f.received(2, &ok(0, 2), &store).expect("answered before");
        f.received(2, &new_frame(&store, 3), &store)
            .expect("written before");
        assert!(f.received(2, &new_frame(&store, 4), &store).is_err());
        f.received(3, &ok(0, 3), &store).expect("let back in");
        f.received(3, &new_frame(&store, 4), &store)
            .expect("in the room again");
        // A link that had everything up to #4 is out at once.
        f.evicted(&[3], "c", 4);
        assert!(f.received(3, &new_frame(&store, 5), &store).is_err());
        // Out of the room, a notification is what it may get.
        let m5 = store.get("c", 5).expect("stored").to_json();
        let note =
            format!(r#"42/chat,["message:notification",{{"conversationId":"c","message":{m5}}}]"#);
        f.received(3, &note, &store).expect("not in the room");
    }

    #[test]
    fn a_join_answered_after_a_leave_of_the_same_conversation_does_not_enter() {
        let store = store_with(3);
        let mut f = MessageFrames::default();
        f.sent(
            1,
            r#"42/chat,1["conversation:join",{"conversationId":"c","afterSeq":3}]"#,
        );
        f.sent(
            1,
            r#"42/chat,2["conversation:leave",{"conversationId":"c"}]"#,
        );
        f.received(1, r#"43/chat,2[{"ok":true}]"#, &store)
            .expect("left");
        let joined = r#"43/chat,1[{"ok":true,"conversationId":"c","lastSeq":3,"missed":[]}]"#;
        f.received(1, joined, &store).expect("answered");
        let note = format!(
            "42/chat,[\"message:notification\",{{\"conversationId\":\"c\",\"message\":{}}}]",
            store.get("c", 3).expect("stored").to_json()
        );
        f.received(1, &note, &store).expect("not in the room");
        assert!(f.settled(&[1], &store).is_ok());
    }

    #[test]
    fn a_catch_up_short_of_last_seq_is_not_empty_and_a_tempid_is_fresh_once() {
        let store = store_with(3);
        let mut f = MessageFrames::default();
        f.sent(
            1,
            r#"42/chat,1["conversation:join",{"conversationId":"c","afterSeq":1}]"#,
        );
        let empty = r#"43/chat,1[{"ok":true,"conversationId":"c","lastSeq":3,"missed":[]}]"#;
        assert!(f.received(1, empty, &store).is_err(), "#2 and #3 missed");
        let m = store.get("c", 1).expect("stored").to_json();
        let temp_id = m["tempId"].as_str().unwrap_or("");
        // A send of the stored message's tempId, asking for ack `id`.
        let send = |id: u64| {
            format!(
                r#"42/chat,{id}["message:send",{{"conversationId":"c","content":"x","tempId":"{temp_id}"}}]"#
            )
        };
        for (link, id) in [(1, 2), (2, 3)] {
            f.sent(link, &send(id));
        }
        let ack = |id: u64, dup: bool| {
            format!(r#"43/chat,{id}[{{"ok":true,"message":{m},"duplicate":{dup}}}]"#)
        };
        f.received(1, &ack(2, false), &store).expect("stored");
        assert!(
            f.received(2, &ack(3, false), &store).is_err(),
            "a retry is a duplicate"
        );
        // Written, an ok ack of a send owes its message:sent as the next frame on the link.
        let sent = format!(r#"42/chat,["message:sent",{{"tempId":"{temp_id}","message":{m}}}]"#);
        f.sent(3, &send(4));
        f.server_sent(3, &ack(4, true), &store).expect("the ack");
        f.server_sent(3, &sent, &store)
            .expect("then its message:sent");
        f.sent(3, &send(5));
        f.server_sent(3, &ack(5, true), &store).expect("the ack");
        assert!(f
            .server_sent(3, r#"42/chat,["heartbeat",{}]"#, &store)
            .is_err());
        // A message the store does not hold yet is told of by no frame, whenever the
        // store catches up: an ack, a message:sent, a message:new, a notification.
        let mut early = m.clone();
        early["seq"] = Value::from(m["seq"].as_u64().unwrap_or(0) + 1);
        f.sent(4, &send(6));
        for frame in [
            format!(r#"43/chat,6[{{"ok":true,"message":{early},"duplicate":false}}]"#),
            format!(r#"42/chat,["message:sent",{{"tempId":"{temp_id}","message":{early}}}]"#),
            format!(r#"42/chat,["message:new",{early}]"#),
            format!(
                r#"42/chat,["message:notification",{{"conversationId":"c","message":{early}}}]"#
            ),
        ] {
            assert!(f.server_sent(4, &frame, &store).is_err(), "{frame}");
        }
    }

    #[test]
    fn frames_run_seq_by_seq_from_the_join_and_match_the_store() {
        let store = store_with(4);
        let mut f = MessageFrames::default();
        // Before any join, a message:new is a frame to a connection not in the room.
        assert!(f.received(1, &new_frame(&store, 1), &store).is_err());

        let mut f = MessageFrames::default();
        f.sent(
            1,
            r#"42/chat,7["conversation:join",{"conversationId":"c","afterSeq":0}]"#,
        );
        let missed = store.get("c", 1).expect("stored").to_json();
        let ack = format!(
            r#"43/chat,7[{{"ok":true,"conversationId":"c","lastSeq":2,"missed":[{missed}]}}]"#
        );
        f.received(1, &ack, &store)
            .expect("a missed list cut after #1 is allowed");
        f.received(1, &new_frame(&store, 3), &store)
            .expect("#3 follows lastSeq 2");
        assert!(
            f.received(1, &new_frame(&store, 3), &store).is_err(),
            "a repeat"
        );

        let mut f = MessageFrames::default();
        f.sent(
            1,
            r#"42/chat,7["conversation:join",{"conversationId":"c"}]"#,
        );
        f.received(
            1,
            r#"43/chat,7[{"ok":true,"conversationId":"c","lastSeq":1,"missed":[]}]"#,
            &store,
        )
        .expect("joined");
        assert!(
            f.received(1, &new_frame(&store, 3), &store).is_err(),
            "a gap"
        );

        // A notification to a joined connection, a message not as stored.
        let note = format!(
            "42/chat,[\"message:notification\",{{\"conversationId\":\"c\",\"message\":{}}}]",
            store.get("c", 2).expect("stored").to_json()
        );
        assert!(f.received(1, &note, &store).is_err());
        assert!(f.received(2, &note, &store).is_ok(), "not joined there");
        let forged = new_frame(&store, 2).replace("m1", "forged");
        assert!(f.received(1, &forged, &store).is_err());

        // Left: no more message:new; a live connection short of the store is reported.
        f.sent(
            1,
            r#"42/chat,8["conversation:leave",{"conversationId":"c"}]"#,
        );
        assert!(f.settled(&[1], &store).is_err(), "sent up to #1 of #4");
        f.received(1, r#"43/chat,8[{"ok":true}]"#, &store)
            .expect("left");
        assert!(f.received(1, &new_frame(&store, 2), &store).is_err());
        f.sent(
            2,
            r#"42/chat,1["conversation:join",{"conversationId":"c"}]"#,
        );
        let joined = r#"43/chat,1[{"ok":true,"conversationId":"c","lastSeq":3,"missed":[]}]"#;
        f.received(2, joined, &store).expect("joined");
        assert!(
            f.settled(&[1], &store).is_ok(),
            "only the live links are judged"
        );
        assert!(f.settled(&[1, 2], &store).is_err());
    }
}
