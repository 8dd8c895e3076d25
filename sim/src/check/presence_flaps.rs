//! Presence changes only on real transitions, and offline exactly at the end of the grace
//! period.
//!
//! From the server's presence notices (each one is what every partner of the user is told
//! as `user:online` / `user:offline`), against the connections seen in its `Connected` and
//! `Closed` notices: a user's announcements alternate, online then offline (a replacement
//! or a reconnect within the grace period announces nothing), and a user is announced
//! offline only with no live connection and none for `offline_grace_ms`, and by then: a
//! user announced online whose last connection ended is announced offline
//! `offline_grace_ms` later unless it connected again (the server's timer fires on time in
//! simulated time, so no slack is allowed). A crash forgets what the old process announced,
//! as the new one never knew it.

use std::collections::{BTreeMap, BTreeSet};

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
    /// Users announced online with no connection left: when they are due offline.
    due: BTreeMap<UserKey, Instant>,
    /// The same, by time.
    by_time: BTreeSet<(Instant, UserKey)>,
}

impl PresenceFlaps {
    /// Offline only after `grace_ms` without a connection.
    pub fn new(grace_ms: u64) -> Self {
        PresenceFlaps {
            grace_ms,
            ..PresenceFlaps::default()
        }
    }

    /// `user`'s connections changed at `now`; `live` are left.
    pub fn connections_changed(&mut self, now: Instant, user: &UserKey, live: usize) {
        self.not_due(user);
        if live == 0 && self.shown_online.contains(user) {
            let at = now.add_ms(self.grace_ms);
            self.due.insert(user.clone(), at);
            self.by_time.insert((at, user.clone()));
        }
    }

    fn not_due(&mut self, user: &UserKey) {
        if let Some(at) = self.due.remove(user) {
            self.by_time.remove(&(at, user.clone()));
        }
    }

    /// Checks that no user is overdue for its offline announcement at `now`.
    pub fn check(&mut self, now: Instant) -> Finding {
        let Some((at, user)) = self.by_time.first().cloned() else {
            return Ok(());
        };
        if now <= at {
            return Ok(());
        }
        self.not_due(&user);
        Err((
            NAME,
            format!(
                "{user} not announced offline by {now}: its last connection ended {} ms before it was due, at {at}",
                self.grace_ms
            ),
        ))
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
        self.not_due(user);
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
        self.due.clear();
        self.by_time.clear();
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

    #[test]
    fn an_offline_announcement_is_due_at_the_end_of_the_grace() {
        let user = UserKey::new("u1", "customer");
        let mut conns = PerUser::new(1);
        let mut check = PresenceFlaps::new(3_000);
        let t0 = Instant::from_millis(1_000);
        conns.connected(t0, &user, SessionId(1));
        check.connections_changed(t0, &user, 1);
        check.online(&user).expect("online");
        conns.closed(t0.add_ms(10), &user, SessionId(1));
        check.connections_changed(t0.add_ms(10), &user, 0);
        check
            .check(t0.add_ms(3_010))
            .expect("due now, not late yet");
        assert!(check.check(t0.add_ms(3_011)).is_err(), "late");
        // On time: nothing due after it.
        check.online(&user).ok();
        check.connections_changed(t0.add_ms(4_000), &user, 0);
        check
            .offline(t0.add_ms(7_000), &user, &conns)
            .expect("on time");
        check.check(t0.add_ms(60_000)).expect("nothing due");
        // A reconnect within the grace takes the due announcement back.
        check.online(&user).expect("online again");
        check.connections_changed(t0.add_ms(8_000), &user, 0);
        check.connections_changed(t0.add_ms(9_000), &user, 1);
        check.check(t0.add_ms(60_000)).expect("reconnected in time");
    }
}
