//! After the faults heal, every client reconnects, drains its outbox and catches up,
//! within a bound: those with attempts left by themselves, those that had used them up
//! (`Failed`) once their application asks again, as a front end's "retry" does. So a
//! server that turns every client away after a fault is a violation, not a run in which
//! nobody is left to check.
//!
//! [`pending`] names the first thing still stuck (TigerBeetle's `pending()`): the run
//! converges when it returns `None`, and a run that does not converge in time fails with
//! that reason.

use heartline_core::client::{Client, Status};

use super::delivery::Delivery;
use crate::store::Store;

/// The checker's name.
pub const NAME: &str = "liveness-after-heal";

/// Whether a client is expected to be connected once the run has converged: it was not
/// displaced by another device of its user. An honest client the server sent away
/// (`Disconnected`) is expected too: nothing in the workload deserves that; and so is one
/// that used up its attempts while the faults lasted, as it is asked to connect again
/// when they heal.
pub fn expected(status: &Status) -> bool {
    !matches!(status, Status::Replaced | Status::Idle)
}

/// Whether the application still uses its client: not once the client gave up
/// (`Failed`, until the application asks it to connect again) or was displaced.
pub fn in_use(status: &Status) -> bool {
    expected(status) && !matches!(status, Status::Failed { .. })
}

/// The first thing not yet converged, readable; `None` once everything has. `clients`:
/// each client with its user, the conversations its application joined (from the
/// workload, not from the client, so that a join the server wrongly refused, which the
/// client then forgets, still counts), and whether its connection is open at the server's
/// end in the running process: a client may take itself for connected over a link to a
/// crashed process, or one the server dropped silently, until its ping deadline tells it
/// otherwise, and only then is it back. Each user must end with a device connected: a
/// device displaced by another is not expected back, but a server that displaced every
/// device of a user (both told `connection:replaced`, say) has left that user with none.
pub fn pending<'a>(
    clients: impl Iterator<Item = (usize, usize, &'a Client, Vec<&'a str>, bool)>,
    delivery: &Delivery,
    store: &Store,
    server_up: bool,
) -> Option<String> {
    if !server_up {
        return Some("server down".into());
    }
    // Per user: whether any device is connected, and one of its devices.
    let mut users: std::collections::BTreeMap<usize, (bool, usize)> = Default::default();
    for (i, user, c, convs, held) in clients {
        let connected = *c.status() == Status::Connected && held;
        let seen = users.entry(user).or_insert((false, i));
        seen.0 |= connected;
        if !expected(c.status()) {
            continue;
        }
        if *c.status() != Status::Connected {
            return Some(format!("c{i} {:?}, outbox {}", c.status(), c.outbox_len()));
        }
        if !connected {
            return Some(format!(
                "c{i} connected over a link the server does not hold"
            ));
        }
        if c.outbox_len() > 0 {
            return Some(format!("c{i} outbox {} not acknowledged", c.outbox_len()));
        }
        for conv in convs {
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
    if let Some((user, (_, device))) = users.iter().find(|(_, (connected, _))| !connected) {
        return Some(format!(
            "user {user} has no device connected (c{device} among them)"
        ));
    }
    if store.in_flight() > 0 {
        return Some(format!(
            "store has {} operations in flight",
            store.in_flight()
        ));
    }
    None
}
