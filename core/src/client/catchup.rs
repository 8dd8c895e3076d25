//! Handing chat messages to the application once, in `seq` order, without gaps.
//!
//! Messages reach a client three ways: live (`message:new`), in a join's `missed` list,
//! and in `message:history` pages. The server caps `missed`, a live message can overtake
//! the catch-up of a rejoin, and a connection can die halfway through either. So the
//! client never jumps over a `seq` it has not delivered: a message beyond the next one is
//! held, and the gap is fetched with `message:history` from the last delivered `seq`.
//! Only a first join, which has no history to recover, starts at the server's `lastSeq`.

use std::collections::BTreeMap;

use serde_json::Value;

/// Most messages one history page asks for.
pub(crate) const PAGE: u64 = 100;

/// Delivery positions of the joined conversations.
#[derive(Debug, Default)]
pub(crate) struct CatchUp {
    /// Joined conversations and the last `seq` delivered (`None` before the first join).
    pub(crate) joined: BTreeMap<String, Option<u64>>,
    /// Messages that arrived ahead of a gap, per conversation.
    held: BTreeMap<String, BTreeMap<u64, Value>>,
    /// The `seq` a conversation is known to have reached on the server.
    target: BTreeMap<String, u64>,
    /// Conversations the server refused to let this client join (no longer a member), and
    /// the last `seq` delivered of each: a later join resumes from there, so a user let
    /// back in misses nothing that was sent meanwhile.
    parked: BTreeMap<String, u64>,
}

fn key(message: &Value) -> Option<(&str, u64)> {
    Some((
        message.get("conversationId")?.as_str()?,
        message.get("seq")?.as_u64()?,
    ))
}

impl CatchUp {
    /// Takes one message; pushes what can be delivered now onto `out`, in order.
    pub(crate) fn take(&mut self, message: &Value, out: &mut Vec<Value>) {
        let Some((conv, seq)) = key(message) else {
            return;
        };
        if let Some(parked) = self.parked.get_mut(conv) {
            // Left (or refused) with a position kept: a message still on its way from the
            // room is handed over only if it is the next one, and moves the position, so
            // that joining again does not hand it over a second time. Any other is either
            // handed over already or comes with that join's catch-up.
            if parked.checked_add(1) == Some(seq) {
                *parked = seq;
                out.push(message.clone());
            }
            return;
        }
        let Some(last) = self.joined.get_mut(conv) else {
            // Not a joined conversation: nothing to order it against.
            out.push(message.clone());
            return;
        };
        let Some(l) = *last else {
            *last = Some(seq);
            out.push(message.clone());
            return;
        };
        if seq <= l {
            return; // delivered already
        }
        if seq > l + 1 {
            self.held
                .entry(conv.to_owned())
                .or_default()
                .insert(seq, message.clone());
            let t = self.target.entry(conv.to_owned()).or_default();
            *t = (*t).max(seq);
            return;
        }
        *last = Some(seq);
        out.push(message.clone());
        let conv = conv.to_owned();
        self.release(&conv, out);
    }

    /// Delivers held messages that have become next in line.
    fn release(&mut self, conv: &str, out: &mut Vec<Value>) {
        let Some(Some(mut last)) = self.joined.get(conv).copied() else {
            return;
        };
        if let Some(held) = self.held.get_mut(conv) {
            // A seq of u64::MAX (from a server gone wrong) has no successor.
            while let Some(m) = last.checked_add(1).and_then(|next| held.remove(&next)) {
                last += 1;
                out.push(m);
            }
            held.retain(|s, _| *s > last);
            if held.is_empty() {
                self.held.remove(conv);
            }
        }
        if let Some(slot) = self.joined.get_mut(conv) {
            *slot = Some(last);
        }
        if self.target.get(conv).is_some_and(|t| *t <= last) {
            self.target.remove(conv);
        }
    }

    /// A join was acknowledged with `missed` and the server's `lastSeq`.
    pub(crate) fn joined(
        &mut self,
        conv: &str,
        missed: &[Value],
        last_seq: Option<u64>,
        out: &mut Vec<Value>,
    ) {
        let Some(position) = self.joined.get(conv).copied() else {
            return;
        };
        if position.is_none() {
            // A first join starts from now: there is no history to recover.
            if let Some(slot) = self.joined.get_mut(conv) {
                *slot = last_seq.or(Some(0));
            }
            return self.release(conv, out);
        }
        for m in missed {
            self.take(m, out);
        }
        if let Some(target) = last_seq {
            let t = self.target.entry(conv.to_owned()).or_default();
            *t = (*t).max(target);
        }
        self.release(conv, out);
    }

    /// A history page arrived.
    pub(crate) fn page(&mut self, conv: &str, messages: &[Value], out: &mut Vec<Value>) {
        for m in messages {
            self.take(m, out);
        }
        if messages.is_empty() {
            // The server has nothing more: whatever we expected is not there to fetch.
            self.target.remove(conv);
        }
        self.release(conv, out);
    }

    /// Where to fetch history from, if the conversation is behind.
    pub(crate) fn behind(&self, conv: &str) -> Option<u64> {
        let last = (*self.joined.get(conv)?)?;
        self.target
            .get(conv)
            .is_some_and(|t| *t > last)
            .then_some(last)
    }

    /// Starts or resumes a conversation: from where it was parked, if it was.
    pub(crate) fn start(&mut self, conv: &str) {
        let resume = self.parked.remove(conv);
        self.joined.entry(conv.to_owned()).or_insert(resume);
    }

    /// The server refused `conv` for good: it is no longer joined, and its position is
    /// kept for a later [`CatchUp::start`].
    pub(crate) fn park(&mut self, conv: &str) {
        if let Some(Some(last)) = self.joined.remove(conv) {
            self.parked.insert(conv.to_owned(), last);
        }
        self.held.remove(conv);
        self.target.remove(conv);
    }

    /// The connection is gone: held messages will come again with the rejoin.
    pub(crate) fn reset(&mut self) {
        self.held.clear();
        self.target.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(seq: u64) -> Value {
        json!({ "conversationId": "c", "seq": seq })
    }

    fn seqs(v: &[Value]) -> Vec<u64> {
        v.iter().filter_map(|m| m["seq"].as_u64()).collect()
    }

    #[test]
    fn capped_catch_up_is_completed_from_history_without_a_gap() {
        let mut c = CatchUp::default();
        c.joined.insert("c".into(), Some(1));
        let mut out = vec![];
        // Rejoin: the server returns only 2..=4 of 2..=8, and a live 9 overtakes.
        c.joined("c", &[m(2), m(3), m(4)], Some(8), &mut out);
        c.take(&m(9), &mut out);
        assert_eq!(seqs(&out), vec![2, 3, 4]);
        assert_eq!(c.behind("c"), Some(4));
        c.page("c", &[m(5), m(6), m(7), m(8)], &mut out);
        assert_eq!(seqs(&out), vec![2, 3, 4, 5, 6, 7, 8, 9]);
        assert_eq!(c.behind("c"), None);
    }

    #[test]
    fn a_parked_conversation_resumes_where_it_stopped() {
        let mut c = CatchUp::default();
        c.start("c");
        let mut out = vec![];
        c.joined("c", &[], Some(2), &mut out);
        c.take(&m(3), &mut out);
        c.take(&m(5), &mut out); // held behind a gap
        c.park("c");
        assert!(!c.joined.contains_key("c"));
        assert_eq!(c.behind("c"), None);
        c.start("c");
        assert_eq!(c.joined.get("c"), Some(&Some(3)), "resumes after #3");
        // The rejoin's catch-up brings 4.. again; nothing held from before is released.
        c.joined("c", &[m(4), m(5), m(6)], Some(6), &mut out);
        assert_eq!(seqs(&out), vec![3, 4, 5, 6]);
        // Never delivered anything: starts afresh.
        c.start("d");
        c.park("d");
        c.start("d");
        assert_eq!(c.joined.get("d"), Some(&None));
    }

    /// A message still on its way from the room after a leave: the next one is handed
    /// over and moves the kept position, so joining again does not repeat it; others are
    /// not (handed over already, or to come with that join's catch-up).
    #[test]
    fn a_message_after_a_leave_is_not_handed_over_twice() {
        let mut c = CatchUp::default();
        c.start("c");
        let mut out = vec![];
        c.joined("c", &[], Some(10), &mut out);
        c.park("c");
        c.take(&m(10), &mut out);
        c.take(&m(11), &mut out);
        c.take(&m(13), &mut out);
        assert_eq!(seqs(&out), vec![11]);
        c.start("c");
        assert_eq!(c.joined.get("c"), Some(&Some(11)), "resumes after #11");
        c.joined("c", &[m(12), m(13)], Some(13), &mut out);
        assert_eq!(seqs(&out), vec![11, 12, 13], "each once, in order");
    }

    #[test]
    fn first_join_starts_at_last_seq() {
        let mut c = CatchUp::default();
        c.joined.insert("c".into(), None);
        let mut out = vec![];
        c.joined("c", &[], Some(5), &mut out);
        c.take(&m(6), &mut out);
        c.take(&m(6), &mut out);
        assert_eq!(seqs(&out), vec![6]);
    }
}
