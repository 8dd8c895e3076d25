//! Per-connection and per-user state, and the gateway's timers.

use std::collections::BTreeSet;

use crate::gateway::budget::TokenBucket;
use crate::gateway::rate::SlidingWindow;
use crate::gateway::recent::RecentSends;
use crate::gateway::user_key::UserKey;
use crate::ids::SessionId;
use crate::timer::{TimerKind, TimerTable};

/// Owner of a gateway deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Owner {
    /// A connection.
    Conn(SessionId),
    /// A user, by its internal number.
    User(u64),
}

/// A connection's deadlines. Declaration order is firing order at equal instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ConnTimer {
    /// Send the next `heartbeat` event.
    Heartbeat,
    /// The connection's token expires: send `auth:expired`.
    AuthExpiry,
    /// The refresh window after `auth:expired` is over.
    AuthGrace,
    /// No application event for `idle_timeout_ms`.
    Idle,
}

/// A user's deadlines. Declaration order is firing order at equal instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UserTimer {
    /// The user has had no connection for `offline_grace_ms`.
    OfflineGrace,
    /// The user's rate window has emptied.
    RateExpiry,
}

/// Any gateway deadline, as the one queue holds it. Connections and users each keep a
/// table of only their own kinds (4 and 2 slots), so neither carries the other's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GatewayTimer {
    /// A connection's.
    Conn(ConnTimer),
    /// A user's.
    User(UserTimer),
}

impl From<ConnTimer> for GatewayTimer {
    fn from(t: ConnTimer) -> Self {
        GatewayTimer::Conn(t)
    }
}

impl From<UserTimer> for GatewayTimer {
    fn from(t: UserTimer) -> Self {
        GatewayTimer::User(t)
    }
}

impl TimerKind for ConnTimer {
    const ALL: &'static [Self] = &[
        ConnTimer::Heartbeat,
        ConnTimer::AuthExpiry,
        ConnTimer::AuthGrace,
        ConnTimer::Idle,
    ];
    fn slot(self) -> usize {
        self as usize
    }
}

impl TimerKind for UserTimer {
    const ALL: &'static [Self] = &[UserTimer::OfflineGrace, UserTimer::RateExpiry];
    fn slot(self) -> usize {
        self as usize
    }
}

impl TimerKind for GatewayTimer {
    /// A connection's kinds, then a user's.
    const ALL: &'static [Self] = &[
        GatewayTimer::Conn(ConnTimer::Heartbeat),
        GatewayTimer::Conn(ConnTimer::AuthExpiry),
        GatewayTimer::Conn(ConnTimer::AuthGrace),
        GatewayTimer::Conn(ConnTimer::Idle),
        GatewayTimer::User(UserTimer::OfflineGrace),
        GatewayTimer::User(UserTimer::RateExpiry),
    ];
    fn slot(self) -> usize {
        match self {
            GatewayTimer::Conn(t) => t.slot(),
            GatewayTimer::User(t) => ConnTimer::COUNT + t.slot(),
        }
    }
}

/// A connection's deadlines.
pub(crate) type ConnTimers = TimerTable<ConnTimer, { ConnTimer::COUNT }>;

/// A user's deadlines.
pub(crate) type UserTimers = TimerTable<UserTimer, { UserTimer::COUNT }>;

/// An authenticated connection on the application namespace.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Its user key.
    pub(crate) user: UserKey,
    /// Whether its token carries `role: admin`.
    pub(crate) admin: bool,
    /// Which connection of its session this is: a session may connect the namespace
    /// again after a DISCONNECT, and answers to requests of the earlier connection (still
    /// with the store) must not reach the later one, perhaps another user's.
    pub(crate) no: u32,
    /// Ended by the gateway for flooding: what is left of its polling POST is dropped.
    pub(crate) flooded: bool,
    /// Token expiry, Unix milliseconds.
    pub(crate) exp_ms: u64,
    /// Conversations joined.
    pub(crate) joined: BTreeSet<String>,
    /// Budget for events other than accepted sends.
    pub(crate) budget: TokenBucket,
    /// Deadlines.
    pub(crate) timers: ConnTimers,
}

/// A user key with connections, presence, or a rate window to remember.
#[derive(Debug)]
pub(crate) struct User {
    /// Internal number, for timers.
    pub(crate) uid: u64,
    /// Live connections, oldest session first (see `on_connect`). A vector of exact size: a user has `per_user`
    /// connections at most, and most have one.
    pub(crate) conns: Vec<SessionId>,
    /// Whether others see this user as online (true through the offline grace).
    pub(crate) online: bool,
    /// Accepted sends within the last window.
    pub(crate) window: SlidingWindow,
    /// Recently accepted messages by `tempId`, newest last, to answer retries at once.
    pub(crate) recent: RecentSends,
    /// Appends and tempId lookups in flight (a `u32` beside `online`: with a `usize` the
    /// user's box moves up to the next allocation size).
    pub(crate) in_flight: u32,
    /// Deadlines.
    pub(crate) timers: UserTimers,
}

impl User {
    /// Whether nothing about this user needs remembering.
    pub(crate) fn is_idle(&self) -> bool {
        self.conns.is_empty() && !self.online && self.window.is_empty() && self.in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Connections and users are boxed, and the allocator serves a box from the next size
    /// class up (..., 80, 96, 112, 128, 160, ...): a user at 144 bytes took 160.
    #[test]
    fn a_connection_fits_112_and_a_user_96_byte_blocks() {
        assert!(std::mem::size_of::<Conn>() <= 112);
        assert!(std::mem::size_of::<User>() <= 96);
    }

    /// Each kind's list is in slot order, and slots convert both ways; the gateway's
    /// kinds are the connection's, then the user's, so the queue never mixes them up.
    #[test]
    fn timer_kinds_list_their_slots_in_order() {
        use crate::timer::assert_slots_in_order as check;
        check::<ConnTimer>();
        check::<UserTimer>();
        check::<GatewayTimer>();
        assert_eq!(GatewayTimer::COUNT, ConnTimer::COUNT + UserTimer::COUNT);
    }
}

/// How many users are in each state the metrics report, kept as the states change: a
/// `/metrics` scrape or a `metrics:request` then costs nothing per user, where counting
/// would walk every user held (a hundred thousand, on the actor every connection waits
/// for) each time anyone asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Users others see as online.
    pub online: usize,
    /// Users with at least one connection.
    pub connected: usize,
    /// Users with sends in their rate window.
    pub windows: usize,
}

impl Tally {
    /// Moves `count` by a state that was `before` and is `after`.
    pub(crate) fn moved(count: &mut usize, before: bool, after: bool) {
        match (before, after) {
            (false, true) => *count += 1,
            (true, false) => *count = count.saturating_sub(1),
            _ => {}
        }
    }
}
