//! The durable store, in memory, with faults.
//!
//! It has the contract's semantics (gapless `seq` per conversation, idempotent appends on
//! the sender's `tempId`) and answers strictly in the order it was asked, as the gateway
//! requires. Faults: an operation can fail (it then has no effect) and can be slow (it
//! still completes in order). An operation commits when it completes; a crash of the server
//! loses every operation not completed yet and keeps everything committed.

use std::collections::{BTreeMap, VecDeque};

use heartline_core::gateway::{AppendOutcome, Effect, Input, Message, StoreFailure};
use heartline_core::{Instant, Rng};

/// What the checkers learn from a completed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Committed {
    /// A new message was stored.
    Stored(Message),
    /// Nothing new was stored.
    Nothing,
}

/// The simulated store.
#[derive(Debug, Default)]
pub struct Store {
    messages: BTreeMap<String, Vec<Message>>,
    /// (sender id, sender type, tempId) to (conversation, seq).
    by_temp: BTreeMap<(String, String, String), (String, u64)>,
    queue: VecDeque<(Instant, Effect)>,
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
        let delay = self.latency_ms + rng.below(self.latency_ms + 1) + self.extra_ms;
        let at = now.add_ms(delay).max(self.last_at);
        self.last_at = at;
        self.queue.push_back((at, effect));
    }

    /// When the next operation completes.
    pub fn next_at(&self) -> Option<Instant> {
        self.queue.front().map(|(at, _)| *at)
    }

    /// Operations in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Completes the next operation: its result for the gateway, and what it committed.
    pub fn complete(&mut self, rng: &mut Rng) -> Option<(Input, Committed)> {
        let (_, effect) = self.queue.pop_front()?;
        let fail = self.fail_pct > 0 && rng.below(100) < self.fail_pct;
        if fail {
            self.failures += 1;
            let failure = StoreFailure("injected failure".into());
            let input = match effect {
                Effect::Append { op, .. } => Input::Appended {
                    op,
                    result: Err(failure),
                },
                Effect::Read { op, .. } => Input::Read {
                    op,
                    result: Err(failure),
                },
                Effect::FindSent { op, .. } => Input::Found {
                    op,
                    result: Err(failure),
                },
            };
            return Some((input, Committed::Nothing));
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
                if request.after_seq.is_none() {
                    let skip = sel.len().saturating_sub(request.limit);
                    sel.drain(..skip);
                } else {
                    sel.truncate(request.limit);
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

    /// The server crashed: operations not completed are lost.
    pub fn crash(&mut self) {
        self.lost += self.queue.len() as u64;
        self.queue.clear();
    }
}
