//! The durable store, in memory, with faults.
//!
//! It has the contract's semantics (gapless `seq` per conversation, idempotent appends on
//! the sender's `tempId`) and answers strictly in the order it was asked, as the gateway
//! requires. Faults: an operation can fail (it then has no effect) and can be slow (it
//! still completes in order). An operation commits when it completes; a crash of the server
//! loses every operation not completed yet and keeps everything committed.
//!
//! The store can also die ([`Store::die_at_next_append`]), as the server's does when its log cannot be
//! flushed: every operation fails from then on, until the server is restarted. The appends
//! that were in flight when it died had been committed but not flushed, so each of them may
//! or may not be on disk: a prefix of them, drawn at random, is kept (a torn log is read
//! back up to its first bad frame), and every one of them is answered as a failure all the
//! same. Those are the sends whose senders are told `internal` for a message that is
//! stored: their retries, with the same `tempId`, must find it and store nothing new.
//!
//! Member lists are written through the same queue, as the HTTP API's are in the runtime,
//! so the gateway learns a list with the `last_seq` of its conversation in order with
//! the appends; a restarted server reads them back. An append whose sender a list
//! committed before it left out is not stored ([`AppendOutcome::NotMember`]).

use std::collections::{BTreeMap, VecDeque};

use heartline_core::gateway::{AppendOutcome, Effect, Input, Member, Message, StoreFailure};
use heartline_core::{Instant, Rng};

/// What the checkers learn from a completed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// A new message was stored.
    Stored(Message),
    /// Nothing new was stored.
    Nothing,
    /// A conversation's member list was replaced.
    Members {
        /// The conversation.
        id: String,
        /// Its members now.
        members: Vec<Member>,
    },
}

/// An operation in the store's queue.
#[derive(Clone, Debug)]
enum Op {
    /// One the gateway asked for.
    Gateway(Effect),
    /// A conversation's member list replaced (the HTTP API).
    Put {
        /// The conversation.
        id: String,
        /// Its members.
        members: Vec<Member>,
    },
}

/// The simulated store.
#[derive(Debug, Default)]
pub struct Store {
    messages: BTreeMap<String, Vec<Message>>,
    /// (sender id, sender type, tempId) to (conversation, seq).
    by_temp: BTreeMap<(String, String, String), (String, u64)>,
    /// Member lists written through [`Store::put`].
    members: BTreeMap<String, Vec<Member>>,
    queue: VecDeque<(Instant, Op)>,
    last_at: Instant,
    /// Base latency per operation.
    pub latency_ms: u64,
    /// Failure probability, percent.
    pub fail_pct: u64,
    /// Extra latency while slow.
    pub extra_ms: u64,
    /// Operations that failed by injection.
    pub failures: u64,
    /// Operations lost in a crash.
    pub lost: u64,
    /// Appends kept although they were answered as failures (the store died under them).
    pub kept_unanswered: u64,
    /// Dead ([`Store::die`]) until the server restarts.
    dead: bool,
    /// Operations in flight when the store died, not completed yet.
    doomed: usize,
    /// Percent chance that each append in flight at death is kept, while all before it were.
    kept_pct: u64,
    /// Whether every append in flight at death so far was kept.
    keeping: bool,
    /// A death to come at the next append: kept percent, and what to pass on.
    dying: Option<(u64, (u64, u64))>,
    /// A death that happened, not yet taken.
    died: Option<(u64, u64)>,
}

impl Store {
    /// An empty store.
    pub fn new(latency_ms: u64) -> Self {
        Store {
            latency_ms,
            ..Store::default()
        }
    }

    /// Queues an operation; it completes after the ones before it.
    pub fn submit(&mut self, now: Instant, effect: Effect, rng: &mut Rng) {
        self.enqueue(now, Op::Gateway(effect), rng);
    }

    /// Queues the replacement of a conversation's member list.
    pub fn put(&mut self, now: Instant, id: String, members: Vec<Member>, rng: &mut Rng) {
        self.enqueue(now, Op::Put { id, members }, rng);
    }

    fn enqueue(&mut self, now: Instant, op: Op, rng: &mut Rng) {
        let delay = self.latency_ms + rng.below(self.latency_ms + 1) + self.extra_ms;
        let at = now.add_ms(delay).max(self.last_at);
        self.last_at = at;
        self.queue.push_back((at, op));
    }

    /// The member list last written for a conversation, if any was.
    pub fn members_of(&self, id: &str) -> Option<&[Member]> {
        self.members.get(id).map(Vec::as_slice)
    }

    /// When the next operation completes.
    pub fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// The store will die at its next append: that append and every operation queued
    /// behind it are in flight, and each of those appends is kept with `kept_pct`% chance
    /// while every one before it was kept; every operation fails from then until
    /// [`Store::crash`] (the server's restart). [`Store::take_died`] hands back `restart`
    /// when it has died.
    pub fn die_at_next_append(&mut self, kept_pct: u64, restart: (u64, u64)) {
        if !self.dead {
            self.dying = Some((kept_pct, restart));
        }
    }

    /// If the store has just died, what [`Store::die_at_next_append`] was given to pass on.
    pub fn take_died(&mut self) -> Option<(u64, u64)> {
        self.died.take()
    }

    /// A pending death is called off (the faults heal).
    pub fn spare(&mut self) {
        self.dying = None;
    }

    /// Whether the store has died and the server has not restarted since.
    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Completes the next operation: its result for the gateway (none for a member list
    /// that was not written: the API's caller is told, the gateway is not), and what it
    /// committed.
    pub fn complete(&mut self, rng: &mut Rng) -> Option<(Option<Input>, Committed)> {
        let (_, op) = self.queue.pop_front()?;
        let effect = match op {
            Op::Gateway(effect) => effect,
            Op::Put { id, members } => {
                let fail = self.dead || (self.fail_pct > 0 && rng.below(100) < self.fail_pct);
                if self.dead {
                    self.doomed = self.doomed.saturating_sub(1);
                }
                if fail {
                    self.failures += 1;
                    return Some((None, Committed::Nothing));
                }
                self.members.insert(id.clone(), members.clone());
                let input = Input::ConversationPut {
                    id: id.clone(),
                    members: members.clone(),
                    last_seq: self.last_seq(&id),
                };
                return Some((Some(input), Committed::Members { id, members }));
            }
        };
        self.complete_effect(effect, rng)
            .map(|(input, committed)| (Some(input), committed))
    }

    fn complete_effect(&mut self, effect: Effect, rng: &mut Rng) -> Option<(Input, Committed)> {
        if let (Some((kept_pct, restart)), Effect::Append { .. }) = (self.dying, &effect) {
            self.dying = None;
            self.dead = true;
            self.doomed = self.queue.len() + 1;
            self.kept_pct = kept_pct;
            self.keeping = true;
            self.died = Some(restart);
        }
        if self.dead {
            self.failures += 1;
            let in_flight = self.doomed > 0;
            self.doomed = self.doomed.saturating_sub(1);
            if in_flight && matches!(effect, Effect::Append { .. }) {
                self.keeping = self.keeping && rng.below(100) < self.kept_pct;
                if self.keeping {
                    let failed = failed(&effect, "flush failed after commit");
                    let (_, committed) = self.apply(effect);
                    if matches!(committed, Committed::Stored(_)) {
                        self.kept_unanswered += 1;
                    }
                    return Some((failed, committed));
                }
            }
            return Some((failed(&effect, "store failed"), Committed::Nothing));
        }
        let fail = self.fail_pct > 0 && rng.below(100) < self.fail_pct;
        if fail {
            self.failures += 1;
            return Some((failed(&effect, "injected failure"), Committed::Nothing));
        }
        Some(self.apply(effect))
    }

    fn apply(&mut self, effect: Effect) -> (Input, Committed) {
        match effect {
            Effect::Append { op, request } => {
                let key = request.temp_id.as_ref().map(|t| {
                    (
                        request.sender_id.clone(),
                        request.sender_type.clone(),
                        t.clone(),
                    )
                });
                if let Some(existing) = key.as_ref().and_then(|k| self.lookup(k)) {
                    let result = Ok(AppendOutcome::Duplicate(existing));
                    return (Input::Appended { op, result }, Committed::Nothing);
                }
                // Where the operator has written a list, the sender must be on it when the
                // append commits, as the runtime's store checks (there only where a list
                // was written since the gateway asked; before any, the gateway's lists
                // are the layout's, which it checked itself).
                let left_out = self
                    .members
                    .get(&request.conversation_id)
                    .is_some_and(|list| {
                        !list.iter().any(|m| {
                            m.user_id == request.sender_id && m.user_type == request.sender_type
                        })
                    });
                if left_out {
                    let result = Ok(AppendOutcome::NotMember);
                    return (Input::Appended { op, result }, Committed::Nothing);
                }
                let list = self
                    .messages
                    .entry(request.conversation_id.clone())
                    .or_default();
                let m = Message {
                    id: request.id,
                    conversation_id: request.conversation_id,
                    seq: list.len() as u64 + 1,
                    sender_id: request.sender_id,
                    sender_type: request.sender_type,
                    content: request.content,
                    temp_id: request.temp_id,
                    created_at_ms: request.created_at_ms,
                };
                list.push(m.clone());
                if let Some(k) = key {
                    self.by_temp.insert(k, (m.conversation_id.clone(), m.seq));
                }
                let result = Ok(AppendOutcome::Stored(m.clone()));
                (Input::Appended { op, result }, Committed::Stored(m))
            }
            Effect::Read { op, request } => {
                let all = self
                    .messages
                    .get(&request.conversation_id)
                    .map(Vec::as_slice)
                    .unwrap_or(&[]);
                let mut sel: Vec<Message> = all
                    .iter()
                    .filter(|m| request.after_seq.is_none_or(|a| m.seq > a))
                    .filter(|m| request.before_seq.is_none_or(|b| m.seq < b))
                    .cloned()
                    .collect();
                // As the real store reads it: the page's end first without `after_seq`, its
                // start first with it; then cut at `max_content_bytes` in that order.
                let forward = request.after_seq.is_some();
                if !forward {
                    sel.reverse();
                }
                sel.truncate(request.limit);
                let mut bytes = 0usize;
                let within = sel
                    .iter()
                    .take_while(|m| {
                        bytes = bytes.saturating_add(m.content.len());
                        bytes <= request.max_content_bytes
                    })
                    .count()
                    .max(1);
                sel.truncate(within);
                if !forward {
                    sel.reverse();
                }
                (
                    Input::Read {
                        op,
                        result: Ok(sel),
                    },
                    Committed::Nothing,
                )
            }
            Effect::FindSent {
                op,
                sender,
                temp_id,
            } => {
                let found = self.lookup(&(sender.user_id, sender.user_type, temp_id));
                (
                    Input::Found {
                        op,
                        result: Ok(found),
                    },
                    Committed::Nothing,
                )
            }
        }
    }

    /// The message a sender stored under a `tempId`.
    pub fn lookup(&self, key: &(String, String, String)) -> Option<Message> {
        let (conv, seq) = self.by_temp.get(key)?;
        let idx = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.messages.get(conv)?.get(idx).cloned()
    }

    /// The message stored at `seq` in a conversation.
    pub fn get(&self, conversation_id: &str, seq: u64) -> Option<&Message> {
        let idx = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.messages.get(conversation_id)?.get(idx)
    }

    /// The last `seq` of a conversation (0 if empty).
    pub fn last_seq(&self, conversation_id: &str) -> u64 {
        self.messages
            .get(conversation_id)
            .map_or(0, |l| l.len() as u64)
    }

    /// Messages stored, all conversations.
    pub fn stored(&self) -> u64 {
        self.messages.values().map(|l| l.len() as u64).sum()
    }

    /// Every stored message, by conversation then seq.
    pub fn all(&self) -> impl Iterator<Item = &Message> {
        self.messages.values().flatten()
    }

    /// The server crashed: operations not completed are lost. The restarted server opens
    /// the store again, from what it holds.
    pub fn crash(&mut self) {
        self.lost += self.queue.len() as u64;
        self.queue.clear();
        self.dead = false;
        self.doomed = 0;
        self.dying = None;
    }
}

/// The failed answer to `effect`.
fn failed(effect: &Effect, why: &str) -> Input {
    let failure = StoreFailure(why.into());
    match effect {
        Effect::Append { op, .. } => Input::Appended {
            op: *op,
            result: Err(failure),
        },
        Effect::Read { op, .. } => Input::Read {
            op: *op,
            result: Err(failure),
        },
        Effect::FindSent { op, .. } => Input::Found {
            op: *op,
            result: Err(failure),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartline_core::gateway::{AppendRequest, OpId};

    fn append(op: u64) -> Effect {
        Effect::Append {
            op: OpId(op),
            request: AppendRequest {
                id: format!("m{op}"),
                conversation_id: "c".into(),
                sender_id: "u".into(),
                sender_type: "customer".into(),
                content: format!("text {op}"),
                temp_id: Some(format!("t{op}")),
                created_at_ms: op,
            },
        }
    }

    fn failed_append(input: &Input) -> bool {
        matches!(input, Input::Appended { result: Err(_), .. })
    }

    #[test]
    fn a_dying_store_keeps_a_prefix_of_what_was_in_flight_and_answers_all_as_failed() {
        let mut rng = Rng::from_seed(1);
        let mut store = Store::new(1);
        store.submit(Instant::ZERO, append(1), &mut rng);
        assert!(matches!(
            store.complete(&mut rng),
            Some((_, Committed::Stored(_)))
        ));
        store.die_at_next_append(100, (5, 7));
        assert_eq!(store.take_died(), None, "not before an append completes");
        for op in 2..=4 {
            store.submit(Instant::ZERO, append(op), &mut rng);
        }
        // Every append in flight is kept (100%) and every one is answered as failed.
        for _ in 2..=4 {
            let (input, committed) = store.complete(&mut rng).expect("queued");
            let input = input.expect("an answer");
            assert!(failed_append(&input), "{input:?}");
            assert!(matches!(committed, Committed::Stored(_)));
        }
        assert_eq!(store.take_died(), Some((5, 7)));
        assert_eq!(store.take_died(), None);
        assert_eq!((store.stored(), store.kept_unanswered), (4, 3));
        // Later operations fail and keep nothing, until the restart.
        store.submit(Instant::ZERO, append(5), &mut rng);
        let (input, committed) = store.complete(&mut rng).expect("queued");
        assert!(failed_append(&input.expect("an answer")));
        assert_eq!(committed, Committed::Nothing);
        assert!(store.is_dead());
        store.crash();
        assert!(!store.is_dead());
        // The retry of a kept send finds it; a new send is stored after it.
        store.submit(Instant::ZERO, append(3), &mut rng);
        store.submit(Instant::ZERO, append(5), &mut rng);
        let (input, _) = store.complete(&mut rng).expect("queued");
        assert!(
            matches!(
                &input,
                Some(Input::Appended { result: Ok(AppendOutcome::Duplicate(m)), .. }) if m.seq == 3
            ),
            "{input:?}"
        );
        assert!(matches!(
            store.complete(&mut rng),
            Some((_, Committed::Stored(m))) if m.seq == 5
        ));
    }

    #[test]
    fn what_a_dying_store_keeps_has_no_holes() {
        for seed in 0..50 {
            let mut rng = Rng::from_seed(seed);
            let mut store = Store::new(1);
            store.die_at_next_append(50, (1, 1));
            for op in 1..=8 {
                store.submit(Instant::ZERO, append(op), &mut rng);
            }
            let kept: Vec<bool> = (1..=8)
                .map(|_| {
                    let (_, committed) = store.complete(&mut rng).expect("queued");
                    matches!(committed, Committed::Stored(_))
                })
                .collect();
            // A torn log is read back up to its first bad frame: kept ones come first.
            let n = kept.iter().take_while(|k| **k).count();
            assert!(kept[n..].iter().all(|k| !k), "seed {seed}: {kept:?}");
            assert_eq!(store.stored(), n as u64);
        }
    }
}
