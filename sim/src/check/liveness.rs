//! After the faults heal, every client with attempts left reconnects, drains its outbox
//! and catches up, within a bound.
//!
//! [`pending`] names the first thing still stuck (TigerBeetle's `pending()`): the run
//! converges when it returns `None`, and a run that does not converge in time fails with
//! that reason.

use heartline_core::client::{Client, Status};

use super::delivery::Delivery;
use crate::store::Store;

/// The checker's name.
pub const NAME: &str = "liveness-after-heal";

/// Whether a client is still expected to come back: it has attempts left and was not
/// displaced by another device of its user. An honest client the server sent away
/// (`Disconnected`) is expected too: nothing in the workload deserves that.
pub fn expected(status: &Status) -> bool {
    !matches!(
        status,
        Status::Failed { .. } | Status::Replaced | Status::Idle
    )
}

/// The first thing not yet converged, readable; `None` once everything has.
pub fn pending<'a>(
    clients: impl Iterator<Item = (usize, &'a Client)>,
    delivery: &Delivery,
    store: &Store,
    server_up: bool,
) -> Option<String> {
    if !server_up {
        return Some("server down".into());
    }
    for (i, c) in clients {
        if !expected(c.status()) {
            continue;
        }
        if *c.status() != Status::Connected {
            return Some(format!("c{i} {:?}, outbox {}", c.status(), c.outbox_len()));
        }
        if c.outbox_len() > 0 {
            return Some(format!("c{i} outbox {} not acknowledged", c.outbox_len()));
        }
        for conv in c.joined().keys() {
            let last = store.last_seq(conv);
            match delivery.last(i, conv) {
                None => return Some(format!("c{i} never joined {conv}")),
                Some(got) if got < last => {
                    return Some(format!("c{i} has {conv} up to #{got} of #{last}"))
                }
                _ => {}
            }
        }
    }
    if store.in_flight() > 0 {
        return Some(format!(
            "store has {} operations in flight",
            store.in_flight()
        ));
    }
    None
}
