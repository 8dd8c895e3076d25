//! Heartline's chat gateway: the contract's rules on top of the Engine.IO / Socket.IO engine.
//!
//! Authentication, one live connection per user with replacement, presence with a grace
//! period, conversations and rooms, acknowledged and durable sends with idempotent retries,
//! the exact sliding-window rate limit, the per-connection event budget, the application
//! heartbeat and token expiry: all pure state transitions, driven the same way as the
//! engine (`handle_input(now, ..)`, `handle_timeout(now)`, drain `poll_output()`, sleep
//! until `poll_timeout()`).
//!
//! Cross-connection state (the user registry, presence, rate windows, conversations) is
//! held in plain structures behind narrow methods, and storage is an effect: a deployment
//! that shares them between nodes changes what stands behind those methods and effects,
//! not these transitions.
//!
//! # Rules
//!
//! - A refused connect creates no user state.
//! - A user has at most `per_user` live connections; a newer one displaces the oldest, which
//!   gets `connection:replaced` and a Socket.IO DISCONNECT (the client does not retry).
//!   Age is the Engine.IO session's, so a CONNECT delivered late on an older session is
//!   the one displaced. A displaced connection's late close only ever removes itself.
//! - `user:online` / `user:offline` go out only on real transitions, to users who share a
//!   conversation; offline only after `offline_grace_ms` with no connection.
//! - A send is acknowledged only after the store committed it; a retry with a used `tempId`
//!   returns the stored message with `duplicate: true`; at most `rate_messages` sends are
//!   accepted per user key in any window of `rate_window_ms`.

pub mod auth;
mod budget;
pub mod config;
pub mod conversations;
mod events;
pub mod io;
pub mod metrics;
mod payload;
pub mod rate;
mod recent;
mod state;
mod user_key;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{json, Value};

pub use config::{BudgetConfig, GatewayConfig};
pub use io::{
    AppendOutcome, AppendRequest, Effect, ErrorCode, Input, Member, Message, Notice, OpId, Output,
    ReadRequest, StoreFailure,
};
pub use state::{ConnTimer, GatewayTimer, Owner, Tally, UserTimer};
pub use user_key::{is_good_name, UserKey, MAX_NAME_BYTES};

use crate::codec::socket::{Packet as SioPacket, PacketType};
use crate::engine::{self, CloseReason, ConfigError, Engine, UsageError};
use crate::ids::{Rng, SessionId};
use crate::time::{Clock, Instant};
use crate::timer::TimerQueue;
use auth::{AuthError, Verifier};
use budget::{SpentBudgets, TokenBucket};
use conversations::Conversations;
use metrics::Metrics;
use recent::RecentSends;
use state::{Conn, ConnTimers, User, UserTimers};

/// The reason a connection is closed with when its token expired and no `auth:refresh`
/// came within `auth_grace_ms` (a Socket.IO DISCONNECT: the client stays away).
pub const TOKEN_EXPIRED: &str = "token expired";

/// A wall clock read this far or more from where the gateway's offset puts it is taken
/// as a step ([`Input::WallClock`]); less is the reading's own delay and the drift
/// between two clocks that NTP slews alike, and is ignored, so that wall-clock times do
/// not jitter.
pub const WALL_CLOCK_TOLERANCE_MS: u64 = 1_000;

/// The core's `Instant` at which the wall clock reads `wall_ms`, given the Unix time of
/// the core's zero (`GatewayConfig::wall_epoch_ms`); the zero for a time before it.
fn instant_of_wall(wall_epoch_ms: u64, wall_ms: u64) -> Instant {
    Instant::from_millis(wall_ms.saturating_sub(wall_epoch_ms))
}

/// A storage operation waiting for its result.
#[derive(Debug)]
enum Pending {
    Append {
        session: SessionId,
        conn: u32,
        user: UserKey,
        ack: Option<u64>,
        temp_id: Option<String>,
        numeric_temp_id: bool,
        admitted_at: Instant,
    },
    Join {
        session: SessionId,
        conn: u32,
        conversation_id: String,
        ack: Option<u64>,
        /// The connection left the conversation after asking to join it: the join is
        /// answered, but the room is not entered.
        left: bool,
    },
    History {
        session: SessionId,
        conn: u32,
        /// Read again for membership when the page comes: the user may have been removed
        /// from it meanwhile.
        conversation_id: String,
        ack: Option<u64>,
        /// Read forward from `afterSeq` (a cut page keeps its first messages), else back
        /// from the newest (it keeps its last).
        forward: bool,
    },
    /// A send refused (over the rate limit, or from a user no longer a member), unless it
    /// is a retry of a stored message.
    Retry {
        session: SessionId,
        conn: u32,
        user: UserKey,
        ack: Option<u64>,
        temp_id: String,
        numeric_temp_id: bool,
        /// The answer if the store has no such message.
        otherwise: Otherwise,
    },
}

/// How a send looked up in the store ([`Pending::Retry`]) is refused if it is not a retry.
#[derive(Clone, Debug)]
enum Otherwise {
    /// Over the rate limit: the refusal's `retryAfterMs` when it was asked, and when that
    /// was.
    RateLimited {
        retry_after_ms: u64,
        asked_at: Instant,
    },
    /// Its user is not a member of the conversation (any more): a retry only of a message
    /// stored in that conversation.
    Forbidden { conversation: String },
}

/// The chat gateway. See the module docs.
#[derive(Debug)]
pub struct Gateway {
    config: GatewayConfig,
    engine: Engine,
    verifier: Verifier,
    clock: Clock,
    rng: Rng,
    started: Instant,
    // Values boxed: B-tree nodes are about half full when keys only grow, and a node holds
    // eleven entries, so inline values would leave much of each node unused.
    conns: BTreeMap<SessionId, Box<Conn>>,
    users: BTreeMap<UserKey, Box<User>>,
    // Timer owner number to user key, for the users with a deadline armed (most users, idle
    // and online, have none, and pay nothing here); looked up, never iterated.
    timed_users: HashMap<u64, UserKey>,
    next_uid: u64,
    /// The number of the next connection (see `Conn::no`).
    next_conn: u32,
    conversations: Conversations,
    pending: BTreeMap<OpId, Pending>,
    /// The joins in `pending` (waiting for their catch-up read), by session: a leave marks
    /// its session's own, without a walk over every connection's pending requests.
    joins_reading: BTreeSet<(SessionId, OpId)>,
    next_op: u64,
    timers: TimerQueue<Owner, GatewayTimer>,
    /// What ended connections left of their event budgets, for their users' next ones.
    spent: SpentBudgets,
    metrics: Metrics,
    tally: Tally,
    out: VecDeque<Output>,
}

impl Gateway {
    /// A gateway with no connections and no conversations; feed those with
    /// [`Input::ConversationPut`].
    pub fn new(config: GatewayConfig, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut engine_config = config.engine.clone();
        engine_config.namespaces = vec![config.namespace.clone()];
        let engine = Engine::new(engine_config)?;
        #[allow(unused_mut)]
        let mut verifier = Verifier::new(&config.jwt_secret);
        // MUTATION (test-only): any HMAC algorithm taken.
        #[cfg(feature = "mutations")]
        if config.engine.mutations.any_hmac_accepted {
            verifier.mutate_any_hmac();
        }
        Ok(Gateway {
            verifier,
            // A stream apart from the engine's, so message ids do not shift session ids.
            rng: Rng::seeded(config.engine.seed.salted(0x6761_7465_7761_7921)),
            config,
            engine,
            clock: Clock::default(),
            started: now,
            conns: BTreeMap::new(),
            spent: SpentBudgets::default(),
            users: BTreeMap::new(),
            timed_users: HashMap::new(),
            next_uid: 1,
            next_conn: 0,
            conversations: Conversations::default(),
            pending: BTreeMap::new(),
            joins_reading: BTreeSet::new(),
            next_op: 1,
            timers: TimerQueue::default(),
            metrics: Metrics::default(),
            tally: Tally::default(),
            out: VecDeque::new(),
        })
    }

    // ---- getters -------------------------------------------------------------------------

    /// The settings.
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The engine underneath, for its getters.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The counters.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Authenticated connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Users others see as online.
    pub fn users_online(&self) -> usize {
        self.tally.online
    }

    /// Users with at least one connection.
    pub fn users_connected(&self) -> usize {
        self.tally.connected
    }

    /// The three user counts, counted by walking every user: what [`Gateway::tally`]
    /// must always equal. For tests.
    pub fn recount(&self) -> Tally {
        let count = |f: &dyn Fn(&User) -> bool| self.users.values().filter(|u| f(u)).count();
        Tally {
            online: count(&|u| u.online),
            connected: count(&|u| !u.conns.is_empty()),
            windows: count(&|u| !u.window.is_empty()),
        }
    }

    /// The user counts, as kept.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// User keys held in memory for any reason.
    pub fn users_held(&self) -> usize {
        self.users.len()
    }

    /// User keys with sends in their rate window.
    pub fn rate_limit_entries(&self) -> usize {
        self.tally.windows
    }

    /// Storage operations in flight.
    pub fn pending_ops(&self) -> usize {
        self.pending.len()
    }

    /// Armed gateway deadlines (the engine's not included).
    pub fn timers_armed(&self) -> usize {
        self.timers.len()
    }

    /// Live connections of a user key, oldest first.
    pub fn connections_of(&self, user: &UserKey) -> Vec<SessionId> {
        self.users
            .get(user)
            .map(|u| u.conns.to_vec())
            .unwrap_or_default()
    }

    /// Whether others see `user` as online.
    pub fn is_online(&self, user: &UserKey) -> bool {
        self.users.get(user).is_some_and(|u| u.online)
    }

    /// The user key of a connection.
    pub fn user_of(&self, session: SessionId) -> Option<&UserKey> {
        self.conns.get(&session).map(|c| &c.user)
    }

    /// Sessions that joined a conversation.
    pub fn room(&self, conversation_id: &str) -> Vec<SessionId> {
        self.conversations
            .get(conversation_id)
            .map(|c| c.room.keys().copied().collect())
            .unwrap_or_default()
    }

    /// The last stored `seq` of a conversation.
    pub fn last_seq(&self, conversation_id: &str) -> Option<u64> {
        self.conversations.get(conversation_id).map(|c| c.last_seq)
    }

    /// Wall-clock milliseconds at `now`.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.config.wall_epoch_ms.saturating_add(now.as_millis())
    }

    // ---- loop ----------------------------------------------------------------------------

    /// The next thing to do. Drain until `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest deadline, the engine's included.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mine = self.timers.next().map(|(at, _, _)| at);
        match (mine, self.engine.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Feeds an input.
    pub fn handle_input(&mut self, now: Instant, input: Input) -> Result<(), UsageError> {
        let now = self.clock.observe(now);
        match input {
            Input::Network(i) => {
                let result = self.engine.handle_input(now, i);
                self.pump(now);
                result
            }
            Input::Appended { op, result } => {
                self.on_appended(now, op, result);
                self.pump(now);
                Ok(())
            }
            Input::Read { op, result } => {
                self.on_read(now, op, result);
                self.pump(now);
                Ok(())
            }
            Input::Found { op, result } => {
                self.on_found(now, op, result);
                self.pump(now);
                Ok(())
            }
            Input::SendsRestored {
                sender,
                created_at_ms,
            } => {
                self.restore_sends(now, &sender, &created_at_ms);
                Ok(())
            }
            Input::WallClock { wall_ms } => {
                self.wall_clock(now, wall_ms);
                Ok(())
            }
            Input::ConversationPut {
                id,
                members,
                last_seq,
            } => {
                #[cfg_attr(not(feature = "mutations"), allow(unused_mut))]
                let mut evicted = self.conversations.put(&id, &members, last_seq);
                // MUTATION (test-only): removed members stay in the room.
                #[cfg(feature = "mutations")]
                if self.config.engine.mutations.removed_members_stay_in_room {
                    if let Some(conv) = self.conversations.get_mut(&id) {
                        for s in evicted.drain(..) {
                            if let Some(c) = self.conns.get(&s) {
                                conv.room.insert(s, c.user.clone());
                            }
                        }
                    }
                }
                for s in evicted {
                    if let Some(c) = self.conns.get_mut(&s) {
                        c.joined.remove(&id);
                    }
                }
                Ok(())
            }
        }
    }

    /// Fires every deadline due at `now`, the engine's and the gateway's, in time order.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.clock.observe(now);
        loop {
            let engine_next = self.engine.poll_timeout().filter(|&t| t <= now);
            let mine_next = self.timers.next().filter(|&(t, _, _)| t <= now);
            // Due deadlines fire in their order (the engine's up to the next of the
            // gateway's), each acting at `now`: one handled late (a stalled driver, or a
            // token's expiry moved into the past by a wall-clock step) must not act as if
            // it had been on time, or what it arms from then (the grace after
            // `auth:expired`, a PING's deadline, the next heartbeat) would be due at once
            // too, and the client would get no time to answer.
            match (engine_next, mine_next) {
                (None, None) => break,
                (Some(e), Some((g, _, _))) if e <= g => self.engine.handle_due(now, e),
                (Some(e), None) => self.engine.handle_due(now, e),
                (_, Some(_)) => self.fire_one(now),
            }
            self.pump(now);
        }
    }

    /// Closes up to `max` live sessions so that their clients reconnect (to this server
    /// once it is back, or another); returns how many remain. Paced by the driver so a
    /// shutdown does not send every client back at the same instant.
    pub fn shutdown_some(&mut self, now: Instant, max: usize) -> usize {
        let now = self.clock.observe(now);
        let ids = self.engine.live_sessions(max);
        for id in ids {
            let _ = self.engine.close(now, id, CloseReason::ServerShutdown);
        }
        self.pump(now);
        self.engine.session_count()
    }

    /// Moves engine outputs into ours, acting on the engine's events as they come.
    fn pump(&mut self, now: Instant) {
        while let Some(out) = self.engine.poll_output() {
            match out {
                engine::Output::Transmit(t) => self.out.push_back(Output::Transmit(t)),
                engine::Output::Event(e) => self.on_engine_event(now, e),
            }
        }
    }

    fn notice(&mut self, n: Notice) {
        self.out.push_back(Output::Notice(n));
    }

    fn on_engine_event(&mut self, now: Instant, event: engine::Event) {
        match event {
            engine::Event::Connect { session, nsp, auth } => {
                self.on_connect(now, session, &nsp, auth)
            }
            engine::Event::Packet { session, packet } => self.on_packet(now, session, packet),
            engine::Event::Disconnected { session, .. } => {
                self.drop_conn(now, session, CloseReason::ClientClose);
                // The engine session stays open without a namespace, for as long as the
                // handshake rule allows one that never connected (the engine re-arms it).
            }
            engine::Event::Closed { session, reason } => {
                *self.metrics.closes.entry(reason.label()).or_default() += 1;
                self.drop_conn(now, session, reason);
            }
            engine::Event::Opened { .. }
            | engine::Event::Upgraded { .. }
            | engine::Event::Message { .. } => {}
        }
    }

    // ---- connect, replace, leave ---------------------------------------------------------

    fn on_connect(&mut self, now: Instant, session: SessionId, nsp: &str, auth: Option<Value>) {
        let header = self
            .engine
            .handshake(session)
            .and_then(|h| h.authorization.clone());
        let claims = match auth::token_of(auth.as_ref(), header.as_deref()) {
            None => Err(auth::no_token(auth.as_ref())),
            #[cfg(not(feature = "mutations"))]
            Some(token) => self.verifier.verify(&token, self.wall_ms(now)),
            // MUTATION (test-only): tokens are checked as if at the epoch, expired or not.
            #[cfg(feature = "mutations")]
            Some(token) => {
                let at = if self.config.engine.mutations.expired_tokens_accepted {
                    0
                } else {
                    self.wall_ms(now)
                };
                self.verifier.verify(&token, at)
            }
        };
        let (claims, exp_ms) = match claims {
            Ok(v) => (v.claims, v.exp_ms),
            Err(error) => {
                let _ = self.engine.refuse_connect(
                    now,
                    session,
                    nsp,
                    json!({ "message": error.to_string() }),
                );
                *self
                    .metrics
                    .refused
                    .entry(match error {
                        AuthError::Missing => metrics::REFUSALS[0],
                        AuthError::Invalid => metrics::REFUSALS[1],
                    })
                    .or_default() += 1;
                self.notice(Notice::Refused { session, error });
                return;
            }
        };
        let Ok(socket_id) = self.engine.accept_connect(now, session, nsp) else {
            return;
        };
        self.metrics.connects += 1;
        let user_key = self.ensure_user(claims.user_key());
        let no = self.next_conn;
        self.next_conn = no.wrapping_add(1);
        let mut conn = Conn {
            user: user_key.clone(),
            admin: claims.is_admin(),
            no,
            flooded: false,
            exp_ms,
            joined: Default::default(),
            // Where the user's last connection stopped, if that is not full again.
            budget: self
                .spent
                .take(&user_key)
                .unwrap_or_else(|| TokenBucket::new(self.config.event_budget, now)),
            timers: ConnTimers::default(),
        };
        let owner = Owner::Conn(session);
        self.timers.set(
            &mut conn.timers,
            owner,
            ConnTimer::Heartbeat,
            now.add_ms(self.config.heartbeat_interval_ms),
        );
        let expiry = instant_of_wall(self.config.wall_epoch_ms, conn.exp_ms);
        self.timers
            .set(&mut conn.timers, owner, ConnTimer::AuthExpiry, expiry);
        if self.config.idle_timeout_ms > 0 {
            self.timers.set(
                &mut conn.timers,
                owner,
                ConnTimer::Idle,
                now.add_ms(self.config.idle_timeout_ms),
            );
        }
        self.conns.insert(session, Box::new(conn));
        // MUTATION (test-only): no welcome.
        #[cfg(feature = "mutations")]
        let welcome = !self.config.engine.mutations.success_not_sent;
        #[cfg(not(feature = "mutations"))]
        let welcome = true;
        if welcome {
            self.emit(
                now,
                session,
                "connection:success",
                json!({
                    "userId": claims.sub,
                    "userType": claims.user_type,
                    "socketId": socket_id,
                    "serverTime": self.wall_ms(now),
                }),
            );
        }
        self.notice(Notice::Connected {
            session,
            user: user_key.clone(),
        });

        // Register, displacing the oldest connections beyond the limit. Oldest by when
        // their Engine.IO session opened (session ids are allocated in that order), not by
        // when their CONNECT arrived: a connect attempt its client gave up on (a connect
        // timeout while the network held it) can still reach the server, seconds late,
        // after the same device has connected again; it must not displace that newer
        // connection, which would be told `connection:replaced` and stay away for good,
        // leaving the user with no connection at all. Such a late CONNECT is displaced
        // itself, at once. (Sessions of one process only: a shared registry across nodes
        // would order by the sessions' opening time.)
        let (displaced, newest): (Vec<SessionId>, SessionId) = match self.users.get_mut(&user_key) {
            Some(user) => {
                Tally::moved(&mut self.tally.connected, !user.conns.is_empty(), true);
                user.conns.reserve_exact(1);
                let at = user.conns.partition_point(|s| *s < session);
                user.conns.insert(at, session);
                let excess = user.conns.len().saturating_sub(self.config.per_user);
                let from = 0;
                // MUTATION (test-only): those just before the newest are displaced.
                #[cfg(feature = "mutations")]
                let from = if self.config.engine.mutations.displaces_the_previous {
                    user.conns.len().saturating_sub(excess + 1)
                } else {
                    from
                };
                let displaced = user.conns.drain(from..from + excess).collect();
                (displaced, user.conns.last().copied().unwrap_or(session))
            }
            None => (vec![], session),
        };
        for old in displaced {
            self.metrics.replacements += 1;
            // The newer connection takes over the budget of the one it displaces.
            if let Some(left) = self.conns.get(&old).map(|c| c.budget.clone()) {
                if let Some(conn) = self.conns.get_mut(&newest) {
                    let budget = self.config.event_budget;
                    conn.budget = conn.budget.clone().poorer(left, budget, now);
                }
            }
            self.notice(Notice::Replaced {
                user: user_key.clone(),
                old,
                new: newest,
            });
            self.emit(
                now,
                old,
                "connection:replaced",
                json!({ "message": "Connection replaced by a newer connection of the same user" }),
            );
            // MUTATION (test-only): forgotten by the gateway, left connected on the wire.
            #[cfg(feature = "mutations")]
            if self.config.engine.mutations.replaced_left_connected {
                self.drop_conn(now, old, CloseReason::Replaced);
                continue;
            }
            // MUTATION (test-only): the transport closed with no Socket.IO DISCONNECT.
            #[cfg(feature = "mutations")]
            if self
                .config
                .engine
                .mutations
                .replaced_closed_not_disconnected
            {
                let _ = self.engine.close(now, old, CloseReason::Replaced);
                continue;
            }
            let _ = self.engine.disconnect(now, old, CloseReason::Replaced);
        }

        // Presence: a real transition only.
        let Some(user) = self.users.get_mut(&user_key) else {
            return;
        };
        disarm_user_timer(
            &mut self.timers,
            &mut self.timed_users,
            user,
            UserTimer::OfflineGrace,
        );
        if !user.online {
            user.online = true;
            self.tally.online += 1;
            self.announce_presence(now, &user_key, true);
        }
    }

    /// Forgets a connection (closed, displaced, or left the namespace). Only ever removes
    /// `session` itself from its user.
    fn drop_conn(&mut self, now: Instant, session: SessionId, reason: CloseReason) {
        let Some(mut conn) = self.conns.remove(&session) else {
            self.notice(Notice::Closed {
                session,
                user: None,
                reason,
            });
            return;
        };
        self.timers.stop_all(&mut conn.timers, Owner::Conn(session));
        // Its joins still reading are answered to no one (see `on_read`), and must not
        // count as the session's: a later connection on it has joined nothing.
        let reading: Vec<(SessionId, OpId)> = self
            .joins_reading
            .range((session, OpId(0))..=(session, OpId(u64::MAX)))
            .copied()
            .collect();
        for key in reading {
            self.joins_reading.remove(&key);
        }
        self.spent.keep(
            &conn.user,
            conn.budget.clone(),
            self.config.event_budget,
            now,
        );
        for id in &conn.joined {
            if let Some(c) = self.conversations.get_mut(id) {
                c.room.remove(&session);
            }
        }
        if let Some(user) = self.users.get_mut(&conn.user) {
            let had = !user.conns.is_empty();
            // MUTATION (test-only): a displaced connection's close unregisters its successor.
            #[cfg(feature = "mutations")]
            if self.config.engine.mutations.close_unregisters_successor
                && !user.conns.contains(&session)
            {
                user.conns.clear();
            }
            user.conns.retain(|s| *s != session);
            Tally::moved(&mut self.tally.connected, had, !user.conns.is_empty());
            if user.conns.is_empty() && user.online {
                let at = now.add_ms(self.config.offline_grace_ms);
                // MUTATION (test-only): no grace before the offline announcement.
                #[cfg(feature = "mutations")]
                let at = if self.config.engine.mutations.no_offline_grace {
                    now
                } else if self.config.engine.mutations.offline_grace_in_seconds {
                    now.add_ms(self.config.offline_grace_ms.saturating_mul(1000))
                } else {
                    at
                };
                arm_user_timer(
                    &mut self.timers,
                    &mut self.timed_users,
                    user,
                    &conn.user,
                    UserTimer::OfflineGrace,
                    at,
                );
            }
        }
        self.notice(Notice::Closed {
            session,
            user: Some(conn.user.clone()),
            reason,
        });
        self.reclaim_user(&conn.user);
    }

    /// The user's key, the user registered if it was not. The key returned is the
    /// registry's own, so that whoever keeps it shares its text.
    fn ensure_user(&mut self, key: UserKey) -> UserKey {
        if let Some((k, _)) = self.users.get_key_value(&key) {
            return k.clone();
        }
        let uid = self.next_uid;
        self.next_uid += 1;
        self.users.insert(
            key.clone(),
            Box::new(User {
                uid,
                conns: Vec::new(),
                online: false,
                window: Default::default(),
                recent: RecentSends::default(),
                in_flight: 0,
                timers: UserTimers::default(),
            }),
        );
        key
    }

    /// Seeds a user's rate window with sends made before this process started.
    fn restore_sends(&mut self, now: Instant, sender: &Member, created_at_ms: &[u64]) {
        let window = self.config.rate_window_ms;
        let wall = self.wall_ms(now);
        let remaining: Vec<u64> = created_at_ms
            .iter()
            .map(|&t| t.saturating_add(window).saturating_sub(wall))
            .filter(|&r| r > 0)
            .collect();
        if remaining.is_empty() {
            return;
        }
        let key = self.ensure_user(sender.key());
        let Some(user) = self.users.get_mut(&key) else {
            return;
        };
        let had = !user.window.is_empty();
        for r in remaining {
            user.window.restore(now, r, window);
        }
        Tally::moved(&mut self.tally.windows, had, !user.window.is_empty());
        arm_rate_expiry(&mut self.timers, &mut self.timed_users, user, &key, window);
    }

    /// Whether `session` still has the connection numbered `no`: the one that asked.
    fn asked_by(&self, session: SessionId, no: u32) -> bool {
        self.conns.get(&session).is_some_and(|c| c.no == no)
    }

    /// The number of the connection `session` has now, if any.
    fn conn_no(&self, session: SessionId) -> Option<u32> {
        self.conns.get(&session).map(|c| c.no)
    }

    /// Drops a user's state once nothing about it needs remembering.
    fn reclaim_user(&mut self, key: &UserKey) {
        if let Some(user) = self.users.get_mut(key) {
            if user.is_idle() {
                self.timers
                    .stop_all(&mut user.timers, Owner::User(user.uid));
                self.timed_users.remove(&user.uid);
                self.users.remove(key);
            }
        }
    }

    /// Tells users who share a conversation with `user` that it came online or went offline.
    fn announce_presence(&mut self, now: Instant, user: &UserKey, online: bool) {
        if !self.users.contains_key(user) {
            return;
        }
        // MUTATION (test-only): presence is kept, never told.
        #[cfg(feature = "mutations")]
        if self.config.engine.mutations.presence_never_announced {
            return;
        }
        let payload = json!({ "userId": user.user_id(), "userType": user.user_type() });
        let event = if online {
            "user:online"
        } else {
            "user:offline"
        };
        let frames = self.event_packet(event, payload).encode();
        let mut targets = vec![];
        for partner in self.conversations.partners(user) {
            if let Some(p) = self.users.get(&partner) {
                // MUTATION (test-only): only the partner's newest connection is told.
                #[cfg(feature = "mutations")]
                if self.config.engine.mutations.presence_to_one_device {
                    targets.extend(p.conns.iter().max().copied());
                    continue;
                }
                targets.extend(p.conns.iter().copied());
            }
        }
        // MUTATION (test-only): everyone is told, or nobody of an offline.
        #[cfg(feature = "mutations")]
        {
            let m = self.config.engine.mutations;
            if m.presence_to_everyone {
                targets = self.conns.keys().copied().collect();
            }
            if m.offline_frames_lost && !online {
                targets.clear();
            }
        }
        for s in targets {
            let _ = self.engine.send(now, s, &frames);
        }
        self.notice(if online {
            Notice::Online { user: user.clone() }
        } else {
            Notice::Offline { user: user.clone() }
        });
    }

    // ---- timers --------------------------------------------------------------------------

    /// The wall clock read `wall_ms` at `now`: if it has moved from where the gateway's
    /// offset puts it by [`WALL_CLOCK_TOLERANCE_MS`] or more, the offset follows it, and
    /// every connection's token expiry, a deadline worked out from the wall clock, is
    /// armed again from its `exp`: a token that ran out while the clock was behind expires
    /// now, one the clock had run ahead of no longer expires early.
    fn wall_clock(&mut self, now: Instant, wall_ms: u64) {
        let epoch = wall_ms.saturating_sub(now.as_millis());
        if epoch.abs_diff(self.config.wall_epoch_ms) < WALL_CLOCK_TOLERANCE_MS {
            return;
        }
        self.config.wall_epoch_ms = epoch;
        self.metrics.wall_clock_steps += 1;
        for (session, conn) in self.conns.iter_mut() {
            if !conn.timers.is_armed(ConnTimer::AuthExpiry) {
                continue;
            }
            let at = instant_of_wall(epoch, conn.exp_ms);
            self.timers.set(
                &mut conn.timers,
                Owner::Conn(*session),
                ConnTimer::AuthExpiry,
                at,
            );
        }
    }

    fn fire_one(&mut self, now: Instant) {
        let Some((_, owner, timer)) = self.timers.pop_due(now) else {
            return;
        };
        match (owner, timer) {
            (Owner::Conn(session), GatewayTimer::Conn(timer)) => {
                let Some(conn) = self.conns.get_mut(&session) else {
                    return;
                };
                TimerQueue::<Owner, GatewayTimer>::fired(&mut conn.timers, timer);
                match timer {
                    ConnTimer::Heartbeat => {
                        let at = now.add_ms(self.config.heartbeat_interval_ms);
                        // MUTATION (test-only): one heartbeat, then none.
                        #[cfg(feature = "mutations")]
                        let rearm = !self.config.engine.mutations.heartbeat_not_rearmed;
                        #[cfg(not(feature = "mutations"))]
                        let rearm = true;
                        if rearm {
                            self.timers
                                .set(&mut conn.timers, owner, ConnTimer::Heartbeat, at);
                        }
                        let ts = self.wall_ms(now);
                        self.emit(now, session, "heartbeat", json!({ "timestamp": ts }));
                    }
                    ConnTimer::AuthExpiry => {
                        let at = now.add_ms(self.config.auth_grace_ms);
                        self.timers
                            .set(&mut conn.timers, owner, ConnTimer::AuthGrace, at);
                        self.emit(now, session, "auth:expired", json!({}));
                    }
                    ConnTimer::AuthGrace => {
                        // MUTATION (test-only): the expired connection stays.
                        #[cfg(feature = "mutations")]
                        if self.config.engine.mutations.expired_connections_kept {
                            return;
                        }
                        let reason = CloseReason::ServerDisconnect(TOKEN_EXPIRED.into());
                        let _ = self.engine.disconnect(now, session, reason);
                    }
                    ConnTimer::Idle => {
                        let reason = CloseReason::ServerDisconnect("idle timeout".into());
                        let _ = self.engine.disconnect(now, session, reason);
                    }
                }
            }
            (Owner::User(uid), GatewayTimer::User(timer)) => {
                let Some(key) = self.timed_users.get(&uid).cloned() else {
                    return;
                };
                let Some(user) = self.users.get_mut(&key) else {
                    return;
                };
                TimerQueue::<Owner, GatewayTimer>::fired(&mut user.timers, timer);
                // Indexed again below if the rate window is re-armed.
                forget_if_unarmed(&mut self.timed_users, user);
                match timer {
                    UserTimer::OfflineGrace => {
                        if user.conns.is_empty() && user.online {
                            user.online = false;
                            self.tally.online = self.tally.online.saturating_sub(1);
                            self.announce_presence(now, &key, false);
                        }
                    }
                    UserTimer::RateExpiry => {
                        let window = self.config.rate_window_ms;
                        let had = !user.window.is_empty();
                        user.window.prune(now, window);
                        Tally::moved(&mut self.tally.windows, had, !user.window.is_empty());
                        arm_rate_expiry(
                            &mut self.timers,
                            &mut self.timed_users,
                            user,
                            &key,
                            window,
                        );
                    }
                }
                self.reclaim_user(&key);
            }
            // Each table arms only its own kinds.
            (Owner::Conn(_), GatewayTimer::User(_)) | (Owner::User(_), GatewayTimer::Conn(_)) => {}
        }
    }

    // ---- sending to clients --------------------------------------------------------------

    fn event_packet(&self, event: &str, payload: Value) -> SioPacket {
        SioPacket {
            kind: PacketType::Event,
            nsp: self.config.namespace.clone(),
            id: None,
            data: Some(json!([event, payload])),
            attachments: vec![],
        }
    }

    /// Emits one event to one session.
    fn emit(&mut self, now: Instant, session: SessionId, event: &str, payload: Value) {
        let packet = self.event_packet(event, payload);
        let _ = self.engine.send_packet(now, session, &packet);
    }

    /// Answers a client's ack request, if it made one.
    fn ack(&mut self, now: Instant, session: SessionId, id: Option<u64>, payload: Value) {
        let Some(id) = id else {
            return;
        };
        let packet = SioPacket {
            kind: PacketType::Ack,
            nsp: self.config.namespace.clone(),
            id: Some(id),
            data: Some(json!([payload])),
            attachments: vec![],
        };
        let _ = self.engine.send_packet(now, session, &packet);
    }

    /// Emits an event whose data array (`["name", ...]`) is JSON text already.
    fn emit_json(&mut self, now: Instant, session: SessionId, data: &str) {
        let frame = SioPacket::text_frame(PacketType::Event, &self.config.namespace, None, data);
        let _ = self.engine.send(now, session, &[frame]);
    }

    /// Answers a client's ack request, if it made one, with data that is JSON text already.
    fn ack_json(&mut self, now: Instant, session: SessionId, id: Option<u64>, data: &str) {
        let Some(id) = id else {
            return;
        };
        let frame = SioPacket::text_frame(PacketType::Ack, &self.config.namespace, Some(id), data);
        let _ = self.engine.send(now, session, &[frame]);
    }

    fn next_op(&mut self) -> OpId {
        let op = OpId(self.next_op);
        self.next_op += 1;
        op
    }
}

/// Arms a user's deadline and indexes its timer number, so that the deadline, when it
/// fires, finds the user. Every user deadline is armed here.
fn arm_user_timer(
    timers: &mut TimerQueue<Owner, GatewayTimer>,
    timed_users: &mut HashMap<u64, UserKey>,
    user: &mut User,
    key: &UserKey,
    kind: UserTimer,
    at: Instant,
) {
    timers.set(&mut user.timers, Owner::User(user.uid), kind, at);
    timed_users.insert(user.uid, key.clone());
}

/// Arms a user's rate-window deadline for when the last send its window remembers leaves
/// it (if it remembers any).
fn arm_rate_expiry(
    timers: &mut TimerQueue<Owner, GatewayTimer>,
    timed_users: &mut HashMap<u64, UserKey>,
    user: &mut User,
    key: &UserKey,
    window_ms: u64,
) {
    if let Some(at) = user.window.expires_at(window_ms) {
        arm_user_timer(timers, timed_users, user, key, UserTimer::RateExpiry, at);
    }
}

/// Disarms a user's deadline; with none left, its timer number is forgotten.
fn disarm_user_timer(
    timers: &mut TimerQueue<Owner, GatewayTimer>,
    timed_users: &mut HashMap<u64, UserKey>,
    user: &mut User,
    kind: UserTimer,
) {
    timers.stop(&mut user.timers, Owner::User(user.uid), kind);
    forget_if_unarmed(timed_users, user);
}

/// Forgets a user's timer number once it has no deadline armed.
fn forget_if_unarmed(timed_users: &mut HashMap<u64, UserKey>, user: &User) {
    if user.timers.is_empty() {
        timed_users.remove(&user.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection of a user already registered keeps the registry's copy of the key, so
    /// that every holder (user, connections, notices) shares one text, not one per
    /// connection; and only a user with a deadline armed has a timer number indexed.
    #[test]
    fn a_registered_users_key_is_shared_and_idle_users_are_not_indexed() {
        let mut g = Gateway::new(GatewayConfig::default(), Instant::ZERO).expect("config");
        let first = g.ensure_user(UserKey::new("alice", "customer"));
        let second = g.ensure_user(UserKey::new("alice", "customer"));
        assert_eq!(first.as_str().as_ptr(), second.as_str().as_ptr());
        let bob = g.ensure_user(UserKey::new("bob", "customer"));
        let uid = |key: &UserKey| g.users.get(key).map(|u| u.uid);
        assert_eq!(g.users.len(), 2);
        assert_ne!(uid(&first), uid(&bob));
        assert!(g.timed_users.is_empty());
    }
}
