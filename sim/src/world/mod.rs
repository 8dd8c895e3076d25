//! The simulated world and its step loop.
//!
//! [`Sim`] owns the virtual clock, the one seeded generator, the agenda, the gateway, the
//! store, the network, the clients and the checkers. A step takes the earliest of: the
//! gateway's deadline, the store's next completion, the agenda's first entry (network
//! deliveries, client deadlines, workload actions, faults), in that order on a tie, then
//! drains and routes every output it caused and runs the continuous checkers.
//!
//! A run has three phases, after TigerBeetle's VOPR: safety (workload and faults), liveness
//! (every fault healed, no new traffic; must converge within a bound), leave (everyone
//! disconnects; the server must return to its baseline). Every loop is bounded by
//! simulated time and by a step budget.

/// Writes one trace line: `tr!(self, "component", "format", args..)`.
macro_rules! tr {
    ($sim:ident, $component:expr, ($($arg:tt)*)) => {
        $sim.trace.line($sim.now, $component, format_args!($($arg)*))
    };
}

mod clients;
mod faults;
mod hostile_polling;
mod poll_watch;
mod polling;
mod server;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use heartline_core::client::{Backoff, Client, ClientConfig, Status};
use heartline_core::engine::EngineConfig;
use heartline_core::gateway::{Gateway, GatewayConfig};
use heartline_core::{Instant, Rng, Seed};

use crate::agenda::{Agenda, Ev};
use crate::check::bad_token::BadToken;
use crate::check::blame::Blame;
use crate::check::connection_success::ConnectionSuccess;
use crate::check::dead_peer::DeadPeer;
use crate::check::delivery::Delivery;
use crate::check::handshake::Handshake;
use crate::check::heartbeat::Heartbeat;
use crate::check::members::MembersOnly;
use crate::check::message_frames::MessageFrames;
use crate::check::per_user::PerUser;
use crate::check::ping_pong::PingPong;
use crate::check::presence_flaps::PresenceFlaps;
use crate::check::presence_frames::PresenceFrames;
use crate::check::rate_window::RateWindow;
use crate::check::reconnect::Reconnect;
use crate::check::send_queue::SendQueueCheck;
use crate::check::token_expiry::TokenExpiry;
use crate::check::{baseline, liveness, presence, Finding, Violation};
use crate::net::Net;
use crate::options::{FaultKind, Options};
use crate::report::Report;
use crate::schedule::{self, FaultEvent};
use crate::store::Store;
use crate::trace::Trace;
use crate::workload::{token_until, Layout, User, EPOCH_MS, MAX_PAYLOAD_BYTES, SECRET};
use hostile_polling::RawPoll;
use poll_watch::PollWatch;
use polling::Polling;

/// Most steps a run may take, whatever its length.
const STEP_BUDGET: u64 = 200_000_000;

/// The phase of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Workload and faults.
    Safety,
    /// Faults healed, no new traffic: converge.
    Liveness,
    /// Everyone leaves.
    Leave,
    /// Finished.
    Done,
}

impl Phase {
    fn name(self) -> &'static str {
        match self {
            Phase::Safety => "safety",
            Phase::Liveness => "liveness",
            Phase::Leave => "leave",
            Phase::Done => "done",
        }
    }
}

/// An honest device.
#[derive(Debug)]
pub struct Slot {
    /// The client state machine.
    pub client: Client,
    /// Its user (index into the layout).
    pub user: usize,
    /// Its current link.
    pub link: Option<u64>,
    /// Never sends.
    pub idle: bool,
    /// The deadline armed on the agenda.
    pub armed: Option<Instant>,
    /// Times it reached Connected.
    pub connects: u64,
    /// Messages its application sent.
    pub sent: u64,
    /// Its current token's `exp`, Unix seconds.
    pub exp_s: u64,
    /// Its tokens expire during the run.
    pub expiring: bool,
    /// Told `auth:expired` since it last connected.
    pub told_expired: bool,
    /// On long-polling rather than a WebSocket: its transport (see `polling.rs`).
    pub polling: Option<Box<Polling>>,
    /// Frozen until then ([`Fault::Freeze`]): it does nothing, and what its application
    /// would do meanwhile waits until it wakes.
    pub frozen_until: Option<Instant>,
    /// What its application put off while it was frozen, in order.
    pub put_off: Vec<Ev>,
}

/// The counters of a run.
#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    faults: u64,
    attacks: u64,
    /// Of these, on long-polling.
    attacks_polling: u64,
    sent: u64,
    /// Droppable frames the servers' send queues shed.
    shed: u64,
    /// Steps of the server's wall clock.
    clock_steps: u64,
    /// Devices frozen.
    freezes: u64,
    /// Polling requests sent.
    polling_requests: u64,
    /// Polling transports that closed under their clients.
    polling_failures: u64,
    /// Polling sessions moved onto a WebSocket.
    polling_upgrades: u64,
}

/// The whole simulated deployment. See the module docs.
pub struct Sim {
    opts: Options,
    rng: Rng,
    now: Instant,
    step: u64,
    phase: Phase,
    agenda: Agenda,
    gw: Option<Gateway>,
    gw_config: GatewayConfig,
    /// Polling handshakes given up while closing: each is told CLOSE once its answer
    /// names the session (see `polling.rs`).
    closing_handshakes: BTreeSet<u64>,
    /// The polling sessions the server has open, by `sid`, for the dead-peer checker
    /// (see `server.rs`).
    polled: BTreeMap<String, PollWatch>,
    /// Hostile sessions on polling, by name (their handshake's link).
    raw_polls: BTreeMap<u64, RawPoll>,
    /// The request links of hostile polling sessions: each one's session.
    raw_poll_links: BTreeMap<u64, u64>,
    /// Hostile WebSocket links that answer PINGs.
    pongers: BTreeSet<u64>,
    /// Whether each attack goes over polling (drawn apart, so that the other draws stay
    /// what they were).
    hostile_rng: Rng,
    /// The server machine's wall clock less the true time (`EPOCH_MS` plus the simulated
    /// clock), milliseconds: moved by clock steps.
    wall_offset_ms: i64,
    epoch: u32,
    crash_silent: bool,
    store: Store,
    net: Net,
    layout: Layout,
    /// Each conversation's members as the store last committed them (layout users).
    members_now: BTreeMap<String, BTreeSet<usize>>,
    /// Conversations whose member lists the operator has written.
    members_touched: BTreeSet<String>,
    clients: Vec<Slot>,
    raws: Vec<User>,
    schedule: Vec<FaultEvent>,
    faults_until: BTreeMap<&'static str, Instant>,
    dead_peer: DeadPeer,
    per_user: PerUser,
    ping_pong: PingPong,
    rate: RateWindow,
    delivery: Delivery,
    members: MembersOnly,
    bad_token: BadToken,
    blame: Blame,
    presence_flaps: PresenceFlaps,
    presence_frames: PresenceFrames,
    message_frames: MessageFrames,
    send_queue: SendQueueCheck,
    reconnect: Reconnect,
    token_expiry: TokenExpiry,
    token_rng: Rng,
    handshake: Handshake,
    heartbeat: Heartbeat,
    connection_success: ConnectionSuccess,
    violation: Option<Violation>,
    counters: Counters,
    trace: Trace,
}

impl std::fmt::Debug for Sim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.opts.seed)
            .field("now", &self.now)
            .field("step", &self.step)
            .finish()
    }
}

/// Lifetime of a token that does not expire during a run, seconds.
pub(super) const LONG_TOKEN_S: u64 = 86_400 * 30;

/// A token for `user` that runs out at `exp_s` (Unix seconds), noted for the checker; and
/// that `exp`.
pub(super) fn sign(user: &User, exp_s: u64, checker: &mut TokenExpiry) -> (String, u64) {
    let signed = token_until(user, exp_s, SECRET);
    checker.minted(&signed, exp_s);
    (signed, exp_s)
}

fn gateway_config(opts: &Options) -> GatewayConfig {
    let mut c = GatewayConfig {
        engine: EngineConfig {
            ping_interval_ms: opts.ping_interval_ms,
            ping_timeout_ms: opts.ping_timeout_ms,
            handshake_timeout_ms: 10_000,
            max_payload_bytes: MAX_PAYLOAD_BYTES,
            max_buffered_bytes: opts.outbound_bytes,
            seed: Seed::from(opts.seed),
            ..EngineConfig::default()
        },
        heartbeat_interval_ms: opts.heartbeat_ms,
        per_user: opts.per_user,
        offline_grace_ms: 3_000,
        rate_messages: opts.rate_messages,
        rate_window_ms: opts.rate_window_ms,
        jwt_secret: SECRET.to_vec(),
        wall_epoch_ms: EPOCH_MS,
        missed_limit: opts.missed_limit,
        auth_grace_ms: opts.auth_grace_ms,
        ..GatewayConfig::default()
    };
    if let Some(hook) = opts.gateway_hook {
        hook(&mut c);
    }
    c
}

impl Sim {
    /// A world for `opts`, with the fault schedule drawn from the seed unless one is given,
    /// writing its whole trace to `sink` if any.
    pub fn new(
        opts: Options,
        schedule: Option<Vec<FaultEvent>>,
        sink: Option<Box<dyn Write>>,
    ) -> Result<Sim, String> {
        let gw_config = gateway_config(&opts);
        gw_config.validate().map_err(|e| e.to_string())?;
        let layout = Layout::new(opts.clients, opts.devices_per_user);
        let mut rng = Rng::from_seed(opts.seed);
        let schedule = schedule.unwrap_or_else(|| schedule::generate(&opts));
        let mut token_expiry = TokenExpiry::new(gw_config.auth_grace_ms, EPOCH_MS);
        // Tokens draw from a stream of their own, so that a run with no expiring devices
        // takes every other draw as it did before tokens expired (seeds keep their runs).
        let mut token_rng = Rng::from_seed(opts.seed ^ 0x544f_4b45_4e53_0000);
        // And the transport of each device from one more, for the same reason.
        let mut transport_rng = Rng::from_seed(opts.seed ^ 0x504f_4c4c_494e_4700);
        let clients = (0..opts.clients)
            .map(|i| {
                let user = layout.user_of[i];
                // An expiring device's first token runs out during the safety phase.
                let expiring = token_rng.below(100) < opts.expiring_pct;
                let valid_s = if expiring {
                    5 + token_rng.below(opts.duration_ms / 1000 + 1)
                } else {
                    LONG_TOKEN_S
                };
                let exp_s = EPOCH_MS / 1000 + valid_s;
                let (first, exp_s) = sign(&layout.users[user], exp_s, &mut token_expiry);
                let mut config = ClientConfig {
                    token: first,
                    backoff: Backoff {
                        max_attempts: opts.max_attempts,
                        ..Backoff::default()
                    },
                    connect_timeout_ms: opts.connect_timeout_ms,
                    seed: opts.seed.wrapping_mul(1_000_003).wrapping_add(i as u64),
                    ..ClientConfig::default()
                };
                if let Some(hook) = opts.client_hook {
                    hook(&mut config);
                }
                Slot {
                    client: Client::new(config),
                    user,
                    link: None,
                    idle: rng.below(100) < opts.idle_pct,
                    armed: None,
                    connects: 0,
                    sent: 0,
                    exp_s,
                    expiring,
                    told_expired: false,
                    // Some of the polling devices take the WebSocket the server
                    // offers, as `socket.io-client` does by default; the others stay.
                    polling: (transport_rng.below(100) < opts.polling_pct).then(|| {
                        Box::new(Polling::new(transport_rng.below(100) < opts.upgrade_pct))
                    }),
                    frozen_until: None,
                    put_off: Vec::new(),
                }
            })
            .collect();
        let raws = if opts.has(FaultKind::Hostile) {
            (0..opts.hostile)
                .map(|j| User {
                    id: format!("h{j}"),
                    kind: "customer".into(),
                })
                .collect()
        } else {
            vec![]
        };
        Ok(Sim {
            dead_peer: DeadPeer::new(opts.ping_interval_ms, opts.ping_timeout_ms),
            per_user: PerUser::new(opts.per_user),
            ping_pong: PingPong::default(),
            rate: RateWindow::new(opts.rate_messages, opts.rate_window_ms),
            delivery: Delivery::default(),
            members: MembersOnly::new(&layout),
            bad_token: BadToken::default(),
            blame: Blame::default(),
            presence_flaps: PresenceFlaps::new(gw_config.offline_grace_ms),
            presence_frames: PresenceFrames::new(&layout),
            message_frames: MessageFrames::default(),
            send_queue: SendQueueCheck::default(),
            reconnect: Reconnect::new(Backoff {
                max_attempts: opts.max_attempts,
                ..Backoff::default()
            }),
            token_expiry,
            token_rng,
            handshake: Handshake::new(gw_config.engine.handshake_timeout_ms),
            heartbeat: Heartbeat::new(gw_config.heartbeat_interval_ms, gw_config.wall_epoch_ms),
            connection_success: ConnectionSuccess::new(gw_config.wall_epoch_ms),
            store: Store::new(opts.store_latency_ms),
            net: Net::new(opts.latency_ms, opts.jitter_ms, opts.socket_buffer),
            trace: Trace::new(opts.trace_tail, sink),
            rng,
            now: Instant::ZERO,
            step: 0,
            phase: Phase::Safety,
            agenda: Agenda::default(),
            gw: None,
            gw_config,
            closing_handshakes: BTreeSet::new(),
            pongers: BTreeSet::new(),
            polled: BTreeMap::new(),
            raw_polls: BTreeMap::new(),
            raw_poll_links: BTreeMap::new(),
            hostile_rng: Rng::from_seed(opts.seed ^ 0x484f_5354_504f_4c4c),
            wall_offset_ms: 0,
            epoch: 0,
            crash_silent: false,
            members_now: layout
                .conversations
                .iter()
                .map(|(id, users)| (id.clone(), users.iter().copied().collect()))
                .collect(),
            members_touched: BTreeSet::new(),
            layout,
            clients,
            raws,
            schedule,
            faults_until: BTreeMap::new(),
            violation: None,
            counters: Counters::default(),
            opts,
        })
    }

    /// The trace hash so far.
    pub fn trace_hash(&self) -> u64 {
        self.trace.hash()
    }

    /// Records a checker's finding; the first violation stops the run.
    fn found(&mut self, finding: Finding) {
        if let Err((checker, detail)) = finding {
            if self.violation.is_none() {
                let v = Violation {
                    checker,
                    at: self.now,
                    step: self.step,
                    detail,
                };
                tr!(self, "CHECK", ("VIOLATION {v}"));
                self.violation = Some(v);
            }
        }
    }

    /// Runs all three phases and reports.
    /// What the server machine's wall clock read at the simulated clock's zero, as it now
    /// runs (Unix milliseconds).
    fn wall_epoch_ms(&self) -> u64 {
        EPOCH_MS.saturating_add_signed(self.wall_offset_ms)
    }

    /// The server machine's wall clock now, Unix milliseconds (the token issuer's too).
    fn wall_ms(&self) -> u64 {
        self.wall_epoch_ms().saturating_add(self.now.as_millis())
    }

    pub fn run(mut self) -> Report {
        self.setup();
        let end = Instant::from_millis(self.opts.duration_ms);
        self.run_until(end);
        if self.violation.is_none() {
            self.liveness_phase();
        }
        if self.violation.is_none() {
            self.leave_phase();
        }
        self.report()
    }

    fn setup(&mut self) {
        tr!(self, "sim", ("knobs {}", self.opts.knobs()));
        self.start_server();
        for i in 0..self.clients.len() {
            let at = Instant::from_millis(self.rng.below(3_000));
            self.agenda.push(at, Ev::Start { client: i });
        }
        for a in 0..self.raws.len() {
            let at = Instant::from_millis(1_000 + self.rng.below(10_000));
            self.agenda.push(at, Ev::Attack { actor: a });
        }
        for f in std::mem::take(&mut self.schedule) {
            self.agenda
                .push(Instant::from_millis(f.at_ms), Ev::Fault(f.fault));
        }
    }

    fn liveness_phase(&mut self) {
        self.phase = Phase::Liveness;
        tr!(self, "sim", ("liveness: heal everything, stop traffic"));
        self.heal();
        self.restore_members();
        self.refresh_all();
        self.retry_failed();
        // The rate limit paces the largest outbox: allow for it on top of the bound.
        // (per user: the window is the user's, shared by its devices). A slot of the
        // window is taken again one round trip after it frees at best: the refusal that
        // names the moment travels to the client, its retry back to the server.
        let mut per_user: BTreeMap<usize, u64> = BTreeMap::new();
        for s in &self.clients {
            *per_user.entry(s.user).or_default() += s.client.outbox_len() as u64;
        }
        let backlog = per_user.values().copied().max().unwrap_or(0);
        let round_trip_ms = 2 * (self.opts.latency_ms + self.opts.jitter_ms) + 1;
        let drain_ms = backlog * (self.opts.rate_window_ms + round_trip_ms)
            / self.opts.rate_messages.max(1) as u64;
        // A device kept away for a while (let out of a conversation, or cut off by a long
        // partition) comes back far behind, and catches up through replies the server
        // keeps to an eighth of the send queue's limit (and a history page to 100
        // messages): with the smallest queues, one message per reply, a read from the
        // store and a round trip each. Allow for the farthest behind (the conversations
        // one at a time), taking this workload's messages as under 1 KiB each in JSON. A
        // device on polling sends one POST at a time, so each request may first wait for
        // the answer to the POST before it (a heartbeat's response, say): two round trips
        // a reply. And its buffer at the server has no socket buffers in front of it: with
        // the smallest queues the fan-out of what its partners' outboxes still hold drops
        // it as a slow consumer, and it then has those messages to catch up with too.
        let reply_ms = round_trip_ms + 2 * self.opts.store_latency_ms + 1;
        let per_reply = (self.opts.outbound_bytes / 8 / 1024).clamp(1, 100);

        let catch_up_ms = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let behind = self.layout.convs_of[s.user]
                    .iter()
                    .map(|c| &self.layout.conversations[*c].0)
                    .map(|id| {
                        let last = self.store.last_seq(id);
                        last - self.delivery.last(i, id).unwrap_or(last).min(last)
                    })
                    .sum::<u64>();
                let (behind, reply_ms) = match &s.polling {
                    Some(_) => (behind + self.queued_for(s.user), reply_ms + round_trip_ms),
                    None => (behind, reply_ms),
                };
                behind.div_ceil(per_reply) * reply_ms
            })
            .max()
            .unwrap_or(0);
        let bound_ms = self.opts.convergence_ms + drain_ms + catch_up_ms;
        let deadline = self.now.add_ms(bound_ms);
        // What the network held when it healed (a close queued behind a partition, say)
        // arrives before anything is judged converged.
        self.run_until(self.now.add_ms(round_trip_ms));
        if self.violation.is_some() {
            return;
        }
        loop {
            let pending = self.pending();
            let Some(reason) = pending else { break };
            if self.now >= deadline {
                let finding = Err((
                    liveness::NAME,
                    format!("not converged {bound_ms}ms after healing: {reason}"),
                ));
                return self.found(finding);
            }
            let next = self.now.add_ms(250).min(deadline);
            self.run_until(next);
            if self.violation.is_some() {
                return;
            }
            self.retry_failed();
        }
        tr!(self, "sim", ("converged"));
        // Quiet for longer than the offline grace, then presence must match connections.
        let quiet = self.now.add_ms(self.gw_config.offline_grace_ms + 1_000);
        self.run_until(quiet);
        if self.violation.is_some() {
            return;
        }
        if let Some(gw) = &self.gw {
            let finding = baseline::counts(gw);
            self.found(finding);
        }
        if let Some(gw) = &self.gw {
            let finding = presence::check(
                self.now,
                gw,
                &self.per_user,
                &self.presence_frames,
                self.gw_config.offline_grace_ms,
            );
            self.found(finding);
        }
        // Connections open at both ends, to this server process (liveness waited for
        // them: a client on a link to a crashed process was told things the running one
        // never announced).
        let live: Vec<(u64, usize)> = self
            .clients
            .iter()
            .filter(|s| *s.client.status() == Status::Connected && self.held(s.link))
            .filter_map(|s| Some((s.link?, s.user)))
            .collect();
        // What is still unread now was shed: nothing is in flight once the run is quiet.
        for (link, user) in &live {
            let in_flight = self.net.in_flight(*link);
            match self.send_queue.settled(*link, &in_flight) {
                Ok(shed) => {
                    for frame in shed {
                        if let Some(text) = frame.as_text() {
                            let finding = self.presence_frames.shed(*link, *user, text);
                            self.found(finding);
                        }
                    }
                }
                Err(v) => self.found(Err(v)),
            }
        }
        let finding = self.presence_frames.settled(&live);
        self.found(finding);
        let links: Vec<u64> = live.iter().map(|(link, _)| *link).collect();
        let finding = self.message_frames.settled(&links, &self.store);
        self.found(finding);
    }

    /// Asks every client that used up its attempts to connect again, as a user presses
    /// "retry": once the faults have healed it must come back like the others (its last
    /// attempt may have been under way when they healed).
    fn retry_failed(&mut self) {
        let now = self.now;
        for i in 0..self.clients.len() {
            let Some(slot) = self.clients.get_mut(i) else {
                continue;
            };
            if matches!(slot.client.status(), Status::Failed { .. }) {
                slot.client.connect(now);
                self.reconnect.asked(i);
                tr!(self, "client", ("c{i} asked to connect again"));
                self.drain_client(i);
            } else if slot.told_expired && *slot.client.status() == Status::Disconnected {
                self.log_in_again(i);
            }
        }
    }

    fn leave_phase(&mut self) {
        self.phase = Phase::Leave;
        tr!(self, "sim", ("leave: every client disconnects"));
        for i in 0..self.clients.len() {
            let now = self.now;
            self.clients[i].client.disconnect(now);
            self.drain_client(i);
        }
        // Hostile polling sessions first, with their CLOSE: the requests they have out
        // are left to be answered, not given up.
        self.close_raw_polls();
        self.close_raws();
        let c = &self.gw_config;
        let wait = c.engine.ping_interval_ms
            + c.engine.ping_timeout_ms
            + c.engine.handshake_timeout_ms
            + c.rate_window_ms
            + c.offline_grace_ms
            + 10_000;
        let end = self.now.add_ms(wait);
        self.run_until(end);
        if self.violation.is_some() {
            return;
        }
        if let Some(gw) = &self.gw {
            let finding = baseline::check(gw);
            self.found(finding);
        }
        if self.violation.is_none() {
            self.phase = Phase::Done;
        }
    }

    /// What has not converged yet.
    pub fn pending(&self) -> Option<String> {
        let layout = &self.layout;
        for (id, users) in &layout.conversations {
            let now = self.members_now.get(id);
            let layout_users: BTreeSet<usize> = users.iter().copied().collect();
            if now != Some(&layout_users) {
                return Some(format!("the members of {id} not restored yet: {now:?}"));
            }
        }
        liveness::pending(
            self.clients.iter().enumerate().map(|(i, s)| {
                let convs = layout.convs_of[s.user]
                    .iter()
                    .map(|c| layout.conversations[*c].0.as_str())
                    .collect();
                (i, s.user, &s.client, convs, self.device_held(s))
            }),
            &self.delivery,
            &self.store,
            self.gw.is_some(),
        )
    }

    /// Whether `link` is open at both ends, to the running server process, and carries
    /// what is sent on it (a black-holed link looks open to both ends until their ping
    /// deadlines).
    fn held(&self, link: Option<u64>) -> bool {
        link.and_then(|id| self.net.link(id)).is_some_and(|l| {
            l.client_open && l.server_open && !l.black_hole && l.epoch == Some(self.epoch)
        })
    }

    /// Messages the outboxes hold of the devices whose users share a conversation with
    /// `user` (its own devices included).
    fn queued_for(&self, user: usize) -> u64 {
        let convs = &self.layout.convs_of[user];
        self.clients
            .iter()
            .filter(|o| {
                self.layout.convs_of[o.user]
                    .iter()
                    .any(|c| convs.contains(c))
            })
            .map(|o| o.client.outbox_len() as u64)
            .sum()
    }

    /// Whether a device's transport is held by the running server process: its link (see
    /// [`Sim::held`]), or on polling its session, with its receiving GET (if one is out),
    /// or the WebSocket that took the session over, not lost.
    fn device_held(&self, s: &Slot) -> bool {
        let Some(p) = &s.polling else {
            return self.held(s.link);
        };
        let known = p.session().is_some_and(|(sid, epoch)| {
            epoch == self.epoch
                && self
                    .gw
                    .as_ref()
                    .is_some_and(|gw| gw.engine().live_session(sid).is_some())
        });
        let get_lost = p
            .websocket()
            .or(p.get())
            .and_then(|id| self.net.link(id))
            .is_some_and(|l| l.black_hole);
        known && !get_lost
    }

    /// The links a device holds: its WebSocket's, or its polling requests'.
    fn device_links(&self, c: usize) -> Vec<u64> {
        match self.clients.get(c) {
            Some(Slot {
                polling: Some(p), ..
            }) => p.links(),
            Some(s) => s.link.into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// Steps until nothing is due before `end`, a violation, or the step budget.
    fn run_until(&mut self, end: Instant) {
        while self.violation.is_none() && self.step < STEP_BUDGET {
            let Some((at, source)) = self.next_due() else {
                break;
            };
            if at > end {
                break;
            }
            self.now = self.now.max(at);
            self.step += 1;
            match source {
                Source::Server => self.server_timeout(),
                Source::Store => self.store_completes(),
                Source::Agenda => {
                    if let Some((_, ev)) = self.agenda.pop() {
                        self.handle(ev);
                    }
                }
            }
            self.check_deadlines();
        }
        if self.step >= STEP_BUDGET {
            let finding = Err(("step-budget", format!("{STEP_BUDGET} steps used")));
            self.found(finding);
        }
        // Nothing was due before `end`, but a deadline may still have passed by then.
        if self.now < end {
            self.now = end;
            self.check_deadlines();
        }
    }

    /// The checkers that judge what should have happened by now.
    fn check_deadlines(&mut self) {
        let finding = self.per_user.check();
        self.found(finding);
        let finding = self.dead_peer.check(self.now);
        self.found(finding);
        let finding = self.token_expiry.check(self.now);
        self.found(finding);
        let finding = self.handshake.check(self.now);
        self.found(finding);
        let finding = self.heartbeat.check(self.now);
        self.found(finding);
        let finding = self.presence_flaps.check(self.now);
        self.found(finding);
    }

    /// The earliest thing due; ties go to the server, then the store, then the agenda.
    fn next_due(&self) -> Option<(Instant, Source)> {
        let candidates = [
            (
                self.gw.as_ref().and_then(Gateway::poll_timeout),
                Source::Server,
            ),
            (self.store.next_at(), Source::Store),
            (self.agenda.next_at(), Source::Agenda),
        ];
        let mut best: Option<(Instant, Source)> = None;
        for (at, source) in candidates {
            if let Some(at) = at {
                if best.is_none_or(|(b, _)| at < b) {
                    best = Some((at, source));
                }
            }
        }
        best
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { link, to_server } => {
                let now = self.now;
                if let Some(seg) = self.net.take(now, link, to_server, &mut self.agenda) {
                    if to_server {
                        self.server_receives(link, seg);
                    } else {
                        self.client_receives(link, seg);
                        // The client read: room in the window for the server's queue.
                        self.net.pump(now, link, &mut self.rng, &mut self.agenda);
                    }
                }
                self.net.collect(link);
            }
            Ev::ClientTimer { client } => self.client_timer(client),
            Ev::Start { client } => self.start_client(client),
            Ev::Send { client } => self.app_sends(client),
            Ev::Refresh { client } => self.app_refreshes(client),
            Ev::Relogin { client } => self.log_in_again(client),
            Ev::Attack { actor } => self.attack(actor),
            Ev::RawClose { link } => self.raw_close(link),
            Ev::Fault(f) => self.inject(f),
            Ev::Unblock { client } => {
                let now = self.now;
                self.net.unblock(now, client, &mut self.agenda);
            }
            Ev::ClogStart { client, until } => {
                if self.phase == Phase::Safety {
                    tr!(self, "fault", ("clog c{client} until {until}"));
                    self.net.block(client, until, &mut self.agenda);
                }
            }
            Ev::Thaw { client, until } => {
                if self.clients.get(client).and_then(|s| s.frozen_until) == Some(until) {
                    self.thaw(client);
                }
            }
            Ev::Restart => {
                if self.gw.is_none() {
                    self.start_server();
                }
            }
            Ev::SupervisorRestart { down_ms } => {
                if self.store.is_dead() && self.gw.is_some() {
                    tr!(
                        self,
                        "fault",
                        ("supervisor restarts the server, down {down_ms}ms")
                    );
                    self.crash(false);
                    let at = self.now.add_ms(down_ms);
                    self.agenda.push(at, Ev::Restart);
                }
            }
            Ev::FaultsExpire => self.expire_faults(),
        }
    }

    fn report(mut self) -> Report {
        let reconnects = self
            .clients
            .iter()
            .map(|s| s.connects.saturating_sub(1))
            .sum();
        self.trace.finish();
        Report {
            knobs: self.opts.knobs(),
            seed: self.opts.seed,
            events: self.step,
            faults: self.counters.faults,
            attacks: self.counters.attacks,
            attacks_polling: self.counters.attacks_polling,
            sent: self.counters.sent,
            acked: self.delivery.acked,
            delivered: self.delivery.delivered,
            stored: self.store.stored(),
            reconnects,
            replacements: self.ping_pong.replacements,
            dead_peers: self.dead_peer.detected,
            dead_peer_worst_ms: self.dead_peer.worst_ms,
            unconnected_closed: self.handshake.closed_unconnected,
            namespace_left: self.handshake.left,
            checked: (self.connection_success.seen, self.heartbeat.sent),
            clock_steps: self.counters.clock_steps,
            freezes: self.counters.freezes,
            polling: (
                self.counters.polling_requests,
                self.counters.polling_failures,
                self.counters.polling_upgrades,
            ),
            token_expiry: (
                self.token_expiry.told,
                self.token_expiry.refreshed,
                self.token_expiry.closed,
            ),
            slow_consumers: (
                self.counters.shed,
                self.send_queue.shed,
                self.send_queue.dropped,
            ),
            store_failures: self.store.failures,
            kept_unanswered: self.store.kept_unanswered,
            sim_ms: self.now.as_millis(),
            trace_hash: self.trace.hash(),
            trace_lines: self.trace.lines(),
            violation: self.violation.clone(),
            phase: self.phase.name(),
            trace_tail: self.trace.tail(),
            rerun: String::new(),
        }
    }
}

/// Where the next step comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Server,
    Store,
    Agenda,
}
