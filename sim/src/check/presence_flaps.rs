//! Presence changes only on real transitions, and offline only after the grace period.
//!
//! From the server's presence notices (each one is what every partner of the user is told
//! as `user:online` / `user:offline`), against the connections seen in its `Connected` and
//! `Closed` notices: a user's announcements alternate, online then offline (a replacement
//! or a reconnect within the grace period announces nothing), and a user is announced
//! offline only with no live connection and none for `offline_grace_ms`. A crash forgets
//! what the old process announced, as the new one never knew it.

use std::collections::BTreeSet;

use heartline_core::gateway::UserKey;
use heartline_core::Instant;

use super::per_user::PerUser;
use super::Finding;

/// The checker's name.
pub const NAME: &str = "presence-transitions-only";

/// The users this server process has announced online.
#[derive(Debug, Default)]
pub struct PresenceFlaps {
    grace_ms: u64,
    shown_online: BTreeSet<UserKey>,
}

impl PresenceFlaps {
    /// Offline only after `grace_ms` without a connection.
    pub fn new(grace_ms: u64) -> Self {
        PresenceFlaps {
            grace_ms,
            shown_online: BTreeSet::new(),
        }
    }

    /// The server announced `user` online.
    pub fn online(&mut self, user: &UserKey) -> Finding {
        if self.shown_online.insert(user.clone()) {
            Ok(())
        } else {
            Err((NAME, format!("{user} announced online twice")))
        }
    }

    /// The server announced `user` offline at `now`; `conns` are the connections seen.
    pub fn offline(&mut self, now: Instant, user: &UserKey, conns: &PerUser) -> Finding {
        if !self.shown_online.remove(user) {
            return Err((NAME, format!("{user} announced offline while not online")));
        }
        let live = conns.live(user);
        if live > 0 {
            return Err((
                NAME,
                format!("{user} announced offline with {live} live connection(s)"),
            ));
        }
        let since = conns
            .last_change(user)
            .map_or(u64::MAX, |t| now.ms_since(t));
        if since < self.grace_ms {
            return Err((
                NAME,
                format!(
                    "{user} announced offline {since} ms after its last connection ended (grace {} ms)",
                    self.grace_ms
                ),
            ));
        }
        Ok(())
    }

    /// The server process died.
    pub fn crash(&mut self) {
        self.shown_online.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use heartline_core::SessionId;

    #[test]
    fn flaps_and_early_offlines_are_violations() {
        let user = UserKey::new("u1", "customer");
        let mut conns = PerUser::new(1);
        let mut check = PresenceFlaps::new(3_000);
        let t0 = Instant::from_millis(1_000);
        conns.connected(t0, &user, SessionId(1));
        assert!(check.online(&user).is_ok());
        assert!(check.online(&user).is_err(), "a flap");
        let mut check = PresenceFlaps::new(3_000);
        assert!(check.online(&user).is_ok());
        assert!(check.offline(t0, &user, &conns).is_err(), "still connected");
        assert!(check.online(&user).is_ok());
        conns.closed(t0.add_ms(10), &user, SessionId(1));
        assert!(
            check.offline(t0.add_ms(2_000), &user, &conns).is_err(),
            "within the grace"
        );
        assert!(check.online(&user).is_ok());
        assert!(check.offline(t0.add_ms(3_010), &user, &conns).is_ok());
        assert!(
            check.offline(t0.add_ms(9_000), &user, &conns).is_err(),
            "not online"
        );
    }
}
