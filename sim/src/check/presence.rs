//! At quiescence, the users the server shows as online are exactly the connected ones,
//! and so are the users it last announced online: a transition the gateway made without
//! announcing it (its flag flipped, no `user:online` / `user:offline` to anyone) shows
//! here, where the frame checkers, which compare frames with announcements, cannot see it.
//!
//! Checked only for users whose connections have not changed for longer than the offline
//! grace period (within it, a user with no connection is still rightly shown online).

use heartline_core::gateway::Gateway;
use heartline_core::Instant;

use super::per_user::PerUser;
use super::presence_frames::PresenceFrames;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "presence-at-quiescence";

/// Compares the gateway's presence with the connections seen on the wire.
pub fn check(
    now: Instant,
    gw: &Gateway,
    conns: &PerUser,
    announced: &PresenceFrames,
    grace_ms: u64,
) -> Finding {
    for user in conns.known() {
        let settled = conns
            .last_change(user)
            .is_none_or(|t| now.ms_since(t) > grace_ms);
        if !settled {
            continue;
        }
        let connected = conns.live(user) > 0;
        let online = gw.is_online(user);
        if connected != online {
            return Err((
                NAME,
                format!(
                    "{user}: {} live connection(s) but shown {}",
                    conns.live(user),
                    if online { "online" } else { "offline" }
                ),
            ));
        }
        // Never announced is offline (every user starts so, and so does a server that
        // restarted).
        let said = announced.last_announced(&user.to_string()).unwrap_or(false);
        if connected != said {
            return Err((
                NAME,
                format!(
                    "{user}: {} live connection(s) but last announced {}",
                    conns.live(user),
                    if said { "online" } else { "offline" }
                ),
            ));
        }
    }
    Ok(())
}
