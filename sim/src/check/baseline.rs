//! Once everyone has left, the server's state is back at its baseline.
//!
//! No connections, no sessions (lingering ones included), no users, no rate-limit entries,
//! no armed deadlines, no storage operations in flight. Anything left is a leak that a
//! long-running server would accumulate. And the user counts the gateway keeps for its
//! metrics agree with a count of its users.

use heartline_core::gateway::Gateway;

use super::Finding;

/// The checker's name.
pub const NAME: &str = "baseline-after-leave";

/// Compares the gateway's counters with an empty server's.
pub fn check(gw: &Gateway) -> Finding {
    let counters = [
        ("connections", gw.connection_count()),
        ("users held", gw.users_held()),
        ("rate-limit entries", gw.rate_limit_entries()),
        ("gateway timers", gw.timers_armed()),
        ("storage ops", gw.pending_ops()),
        ("engine sessions", gw.engine().sessions_held()),
        ("engine timers", gw.engine().timers_armed()),
    ];
    let left: Vec<String> = counters
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(name, n)| format!("{name}={n}"))
        .collect();
    counts(gw)?;
    if left.is_empty() {
        Ok(())
    } else {
        Err((NAME, format!("after everyone left: {}", left.join(" "))))
    }
}

/// The user counts the gateway keeps for its metrics agree with a count of its users, and
/// the engine's count of live sessions with a count of its sessions (checked at quiescence
/// as well as after the leave).
pub fn counts(gw: &Gateway) -> Finding {
    let (kept, counted) = (gw.tally(), gw.recount());
    let (live, walked) = (gw.engine().session_count(), gw.engine().recount_live());
    if kept != counted {
        Err((
            NAME,
            format!("user counts kept {kept:?}, counted {counted:?}"),
        ))
    } else if live != walked {
        Err((NAME, format!("live sessions kept {live}, counted {walked}")))
    } else {
        Ok(())
    }
}
