//! Every acknowledged message is stored exactly once and reaches each joined member in
//! order, without gaps, after catch-up.
//!
//! - An ack must find its message in the store already, with the same conversation and
//!   `seq` (acknowledged only after the commit).
//! - Every workload message has unique content, so content stored twice is a duplicate.
//! - Per client and conversation, messages handed to the application run `seq` by `seq`
//!   from the point of the first join; a skipped or repeated `seq` is a violation at once.
//! - At convergence each connected client has everything the store has.
//! - A send refused for good was not stored: a client told so of a message others see
//!   would show its user a failure that did not happen (a retry of a stored message is
//!   answered as a duplicate, whatever has changed since).

use std::collections::{BTreeMap, BTreeSet};

use heartline_core::gateway::Message;
use serde_json::Value;

use super::Finding;
use crate::store::Store;

/// The checker's name.
pub const NAME: &str = "acked-stored-once-delivered-in-order";

/// See the module docs.
#[derive(Debug, Default)]
pub struct Delivery {
    contents: BTreeSet<String>,
    last: BTreeMap<(usize, String), u64>,
    /// Acks seen by clients.
    pub acked: u64,
    /// Messages handed to applications.
    pub delivered: u64,
}

fn key_of(v: &Value) -> Option<(String, u64)> {
    Some((
        v.get("conversationId")?.as_str()?.to_owned(),
        v.get("seq")?.as_u64()?,
    ))
}

impl Delivery {
    /// The store committed a new message.
    pub fn stored(&mut self, m: &Message) -> Finding {
        if !self.contents.insert(m.content.clone()) {
            return Err((
                NAME,
                format!(
                    "{:?} stored twice (again as {}#{})",
                    m.content, m.conversation_id, m.seq
                ),
            ));
        }
        Ok(())
    }

    /// A client got an ack for `temp_id`, sent as user `sender` (`id`, `type`).
    pub fn acked(
        &mut self,
        client: usize,
        sender: (&str, &str),
        temp_id: &str,
        message: &Value,
        store: &Store,
    ) -> Finding {
        self.acked += 1;
        let key = (sender.0.to_owned(), sender.1.to_owned(), temp_id.to_owned());
        let Some(stored) = store.lookup(&key) else {
            return Err((
                NAME,
                format!("c{client}: {temp_id} acknowledged but not in the store"),
            ));
        };
        match key_of(message) {
            Some((conv, seq)) if conv == stored.conversation_id && seq == stored.seq => Ok(()),
            other => Err((
                NAME,
                format!(
                    "c{client}: {temp_id} acknowledged as {other:?}, stored as {}#{}",
                    stored.conversation_id, stored.seq
                ),
            )),
        }
    }

    /// A client was told its send `temp_id` (as user `sender`) was refused for good.
    pub fn refused(
        &self,
        client: usize,
        sender: (&str, &str),
        temp_id: &str,
        code: &str,
        store: &Store,
    ) -> Finding {
        let key = (sender.0.to_owned(), sender.1.to_owned(), temp_id.to_owned());
        match store.lookup(&key) {
            Some(m) => Err((
                NAME,
                format!(
                    "c{client}: {temp_id} refused for good ({code}), but stored as {}#{}",
                    m.conversation_id, m.seq
                ),
            )),
            None => Ok(()),
        }
    }

    /// A client handed a message to its application.
    pub fn delivered(&mut self, client: usize, message: &Value, store: &Store) -> Finding {
        self.delivered += 1;
        let Some((conv, seq)) = key_of(message) else {
            return Err((NAME, format!("c{client}: message without conversation/seq")));
        };
        if seq > store.last_seq(&conv) {
            return Err((
                NAME,
                format!("c{client}: got {conv}#{seq} before the store had it"),
            ));
        }
        let Some(before) = seq.checked_sub(1) else {
            return Err((NAME, format!("c{client}: got {conv}#0 (seq starts at 1)")));
        };
        let slot = self.last.entry((client, conv.clone())).or_insert(before);
        if seq != *slot + 1 {
            let was = *slot;
            return Err((
                NAME,
                format!("c{client}: got {conv}#{seq} after #{was} (gap or repeat)"),
            ));
        }
        *slot = seq;
        Ok(())
    }

    /// A client's first join of a conversation fixed where its history starts: at most
    /// what the store has (a `lastSeq` beyond it would have the client drop the messages
    /// that come next as already seen, and the checks above take it as the start).
    pub fn baseline(&mut self, client: usize, conv: &str, last: u64, store: &Store) -> Finding {
        if last > store.last_seq(conv) {
            return Err((
                NAME,
                format!(
                    "c{client}: {conv} starts at #{last}, the store has #{}",
                    store.last_seq(conv)
                ),
            ));
        }
        self.last.entry((client, conv.to_owned())).or_insert(last);
        Ok(())
    }

    /// The last `seq` a client has of a conversation, if it ever joined it.
    pub fn last(&self, client: usize, conv: &str) -> Option<u64> {
        self.last.get(&(client, conv.to_owned())).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_start_beyond_the_store_and_a_seq_of_zero_are_violations() {
        let store = Store::default();
        let mut d = Delivery::default();
        // Nothing stored in c1: a join that says it is at #3 is wrong.
        assert!(d.baseline(0, "c1", 3, &store).is_err());
        assert!(d.baseline(0, "c1", 0, &store).is_ok());
        let zero = json!({"conversationId": "c1", "seq": 0});
        assert!(d.delivered(0, &zero, &store).is_err());
    }
}
