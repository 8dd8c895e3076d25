//! The per-connection budget for events other than accepted sends.
//!
//! Sends have their own exact limit per user. Everything else a client can emit (`ping`,
//! `metrics:request`, joins, history reads, refused sends, unknown events, garbage) is cheap
//! for the client and costs the server a little each; a budget bounds that cost per
//! connection without a timer: it refills from the time elapsed, a pure function of `now`.
//!
//! The budget has two balances, both `burst` events deep and refilled at `per_second`:
//! - the **serving** balance pays a whole event for each event served;
//! - the **refusal** balance pays a fraction of an event for each refusal: a send over the
//!   rate limit (or answered as a retry), and an event that came when the serving balance
//!   was empty, answered `rate_limited` with `retryAfterMs` instead of being served.
//!
//! An honest burst is therefore slowed, not cut off: a client rejoining its hundred
//! conversations after a reconnect has the first `burst` joins served and is told when to
//! send the others. Refusing is the cheapest thing the server does, so it has a balance of
//! its own; only a client that keeps sending when even that is spent (thousands of events
//! at once, hundreds a second) is a flood, and is disconnected.

//!
//! A connection's budget outlives it: a user's next connection starts from what the last
//! one left (refilled for the time between), not full. Otherwise a client could spend the
//! budget, leave the namespace and connect again (two packets of a few bytes), and have
//! it whole each time; or do the same with a new session that replaces the old one. What
//! ended connections left is kept only until it would be full again ([`SpentBudgets`]).

use std::collections::{BTreeSet, HashMap};

use crate::gateway::config::BudgetConfig;
use crate::gateway::user_key::UserKey;
use crate::time::Instant;

/// What a connection's event costs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Charge {
    /// Paid from the serving balance: serve it.
    Served,
    /// The serving balance is empty; a refusal was paid instead. Another event will be
    /// served in `retry_after_ms`.
    Refused { retry_after_ms: u64 },
    /// Both balances are empty: the connection is flooding.
    Exhausted,
}

/// Both balances in thousandths of an event, so refill needs no floats; 32 bits each keep
/// a connection's state small (a balance deeper than `u32::MAX` thousandths is cut to it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TokenBucket {
    serving: u32,
    refusals: u32,
    updated: Instant,
}

/// One event, in thousandths.
const EVENT: u64 = 1000;

impl TokenBucket {
    /// Both balances full.
    pub(crate) fn new(config: BudgetConfig, now: Instant) -> Self {
        let cap = depth(config);
        TokenBucket {
            serving: cap,
            refusals: cap,
            updated: now,
        }
    }

    /// An event to serve: a whole event from the serving balance, or else a refusal.
    pub(crate) fn serve(&mut self, config: BudgetConfig, now: Instant) -> Charge {
        self.refill(config, now);
        if u64::from(self.serving) >= EVENT {
            self.serving -= EVENT as u32;
            return Charge::Served;
        }
        if !self.refuse_refilled(config) {
            return Charge::Exhausted;
        }
        let missing = EVENT - u64::from(self.serving);
        let per_ms = u64::from(config.per_second).max(1);
        Charge::Refused {
            retry_after_ms: missing.div_ceil(per_ms).max(1),
        }
    }

    /// A refusal the gateway made on other grounds (the rate limit): paid from the refusal
    /// balance; `false` when that is empty.
    pub(crate) fn refuse(&mut self, config: BudgetConfig, now: Instant) -> bool {
        self.refill(config, now);
        self.refuse_refilled(config)
    }

    fn refuse_refilled(&mut self, config: BudgetConfig) -> bool {
        let cost = u64::from(config.refusal_milli).min(EVENT);
        if u64::from(self.refusals) >= cost {
            self.refusals -= cost as u32;
            true
        } else {
            false
        }
    }

    /// This budget or `other`, whichever holds less in each balance: what a connection
    /// starts from when it takes over from another of its user.
    pub(crate) fn poorer(
        mut self,
        mut other: TokenBucket,
        config: BudgetConfig,
        now: Instant,
    ) -> Self {
        self.refill(config, now);
        other.refill(config, now);
        TokenBucket {
            serving: self.serving.min(other.serving),
            refusals: self.refusals.min(other.refusals),
            updated: self.updated.max(other.updated),
        }
    }

    /// When both balances will be full again if nothing is charged; `None` if they are
    /// full at `now`.
    fn full_at(&self, config: BudgetConfig, now: Instant) -> Option<Instant> {
        let missing = depth(config).saturating_sub(self.serving.min(self.refusals));
        if missing == 0 {
            return None;
        }
        let per_ms = u64::from(config.per_second).max(1);
        let at = self.updated.add_ms(u64::from(missing).div_ceil(per_ms));
        (at > now).then_some(at)
    }

    /// Adds what the time since the last charge earned: `per_second` thousandths a
    /// millisecond to each balance, up to its depth.
    fn refill(&mut self, config: BudgetConfig, now: Instant) {
        let earned = now
            .ms_since(self.updated)
            .saturating_mul(u64::from(config.per_second));
        self.updated = self.updated.max(now);
        let cap = u64::from(depth(config));
        let add = |balance: u32| u64::from(balance).saturating_add(earned).min(cap) as u32;
        self.serving = add(self.serving);
        self.refusals = add(self.refusals);
    }
}

/// What connections that ended left of their budgets, by user, until each would be full
/// again: a user's next connection takes it up (see the module docs). Entries go when they
/// are taken or, past their time, at the next one kept, so that there are never more than
/// the connections ended in the time a budget takes to refill (3 s at the defaults).
#[derive(Debug, Default)]
pub(crate) struct SpentBudgets {
    by_user: HashMap<UserKey, (TokenBucket, Instant)>,
    by_time: BTreeSet<(Instant, UserKey)>,
}

impl SpentBudgets {
    /// Keeps what a connection of `user` left, or, if another of its connections left
    /// some already, the poorer of the two.
    pub(crate) fn keep(
        &mut self,
        user: &UserKey,
        left: TokenBucket,
        config: BudgetConfig,
        now: Instant,
    ) {
        self.forget_full(now);
        let left = match self.take(user) {
            Some(earlier) => earlier.poorer(left, config, now),
            None => left,
        };
        if let Some(at) = left.full_at(config, now) {
            self.by_time.insert((at, user.clone()));
            self.by_user.insert(user.clone(), (left, at));
        }
    }

    /// What the last connection of `user` left, if it is not full again yet: the budget
    /// its next connection starts from.
    pub(crate) fn take(&mut self, user: &UserKey) -> Option<TokenBucket> {
        let (left, at) = self.by_user.remove(user)?;
        self.by_time.remove(&(at, user.clone()));
        Some(left)
    }

    /// Budgets kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_user.len()
    }

    fn forget_full(&mut self, now: Instant) {
        while let Some((at, user)) = self.by_time.first().cloned() {
            if at > now {
                break;
            }
            self.by_time.pop_first();
            self.by_user.remove(&user);
        }
    }
}

/// A balance's depth in thousandths: `burst` events, at most `u32::MAX`.
fn depth(config: BudgetConfig) -> u32 {
    u32::try_from(u64::from(config.burst).saturating_mul(EVENT)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(burst: u32, per_second: u32, refusal_milli: u32) -> BudgetConfig {
        BudgetConfig {
            burst,
            per_second,
            refusal_milli,
        }
    }

    #[test]
    fn a_burst_is_served_then_refused_with_the_time_to_wait() {
        // 2 events a second: one every 500 ms.
        let c = cfg(3, 2, 250);
        let t0 = Instant::from_millis(1_000);
        let mut b = TokenBucket::new(c, t0);
        assert!((0..3).all(|_| b.serve(c, t0) == Charge::Served));
        assert_eq!(
            b.serve(c, t0),
            Charge::Refused {
                retry_after_ms: 500
            }
        );
        // 200 ms earned 400 thousandths: 300 ms to go.
        assert_eq!(
            b.serve(c, t0.add_ms(200)),
            Charge::Refused {
                retry_after_ms: 300
            }
        );
        assert_eq!(b.serve(c, t0.add_ms(500)), Charge::Served);
        // Refill never exceeds the burst.
        let later = t0.add_ms(60_000);
        assert!((0..3).all(|_| b.serve(c, later) == Charge::Served));
        assert!(matches!(b.serve(c, later), Charge::Refused { .. }));
    }

    #[test]
    fn refusals_have_a_balance_of_their_own_and_then_it_is_a_flood() {
        let c = cfg(1, 1, 250);
        let t0 = Instant::from_millis(0);
        let mut b = TokenBucket::new(c, t0);
        // Four refusals of a quarter event each, whatever the serving balance holds.
        assert!((0..4).all(|_| b.refuse(c, t0)));
        assert!(!b.refuse(c, t0));
        assert_eq!(b.serve(c, t0), Charge::Served);
        assert_eq!(b.serve(c, t0), Charge::Exhausted);
        // A quarter of an event refills in 250 ms: one more refusal, no event yet.
        assert_eq!(
            b.serve(c, t0.add_ms(250)),
            Charge::Refused {
                retry_after_ms: 750
            }
        );
        assert_eq!(b.serve(c, t0.add_ms(250)), Charge::Exhausted);
    }

    #[test]
    fn what_an_ended_connection_left_is_kept_until_it_would_be_full() {
        let c = cfg(4, 2, 500);
        let t0 = Instant::from_millis(10_000);
        let alice = UserKey::new("alice", "customer");
        let bob = UserKey::new("bob", "customer");
        let mut spent = SpentBudgets::default();
        // A full budget is not kept.
        spent.keep(&bob, TokenBucket::new(c, t0), c, t0);
        assert_eq!(spent.len(), 0);
        // Alice spent three of her four events: 1.5 s to be full again.
        let mut b = TokenBucket::new(c, t0);
        assert!((0..3).all(|_| b.serve(c, t0) == Charge::Served));
        spent.keep(&alice, b, c, t0);
        assert_eq!(spent.len(), 1);
        let mut again = spent.take(&alice).expect("kept");
        assert_eq!(spent.len(), 0);
        assert_eq!(again.serve(c, t0), Charge::Served);
        assert!(matches!(again.serve(c, t0), Charge::Refused { .. }));
        // Kept again, then forgotten once it would be full (at the next keep).
        spent.keep(&alice, again, c, t0);
        let full = t0.add_ms(2_000);
        spent.keep(&bob, TokenBucket::new(c, full), c, full);
        assert!(spent.take(&alice).is_none());
        assert_eq!(spent.len(), 0);
    }

    #[test]
    fn the_poorer_budget_holds_the_lesser_balances() {
        let c = cfg(4, 1, 1000);
        let t0 = Instant::from_millis(0);
        let mut served = TokenBucket::new(c, t0);
        assert!((0..4).all(|_| served.serve(c, t0) == Charge::Served));
        let mut refused = TokenBucket::new(c, t0);
        assert!((0..4).all(|_| refused.refuse(c, t0)));
        let mut both = served.clone().poorer(refused.clone(), c, t0);
        assert!(!both.refuse(c, t0), "no refusal left");
        assert_eq!(both.serve(c, t0), Charge::Exhausted);
        // The later of the two refills from the later time.
        let later = t0.add_ms(1_000);
        let mut one = served.poorer(TokenBucket::new(c, later), c, later);
        assert_eq!(one.serve(c, later), Charge::Served);
        assert!(matches!(one.serve(c, later), Charge::Refused { .. }));
    }

    #[test]
    fn a_deep_budget_is_cut_to_what_32_bits_hold() {
        let c = cfg(u32::MAX, u32::MAX, 1000);
        let t0 = Instant::from_millis(0);
        let mut b = TokenBucket::new(c, t0);
        assert_eq!(b.serving, u32::MAX);
        assert!((0..1000).all(|_| b.serve(c, t0) == Charge::Served));
        assert_eq!(b.serve(c, t0.add_ms(u64::MAX / 2)), Charge::Served);
    }
}
