//! Every knob of a run, and the swarm: knobs derived from the seed.
//!
//! Swarm testing (as in TigerBeetle's VOPR) does not run every seed with every fault at a
//! fixed rate: each seed draws its own mix (some seeds have no crashes but many partitions,
//! some slow stores and tight rate limits), because a fault that is always present tends
//! to mask the interleavings another fault would have found.

use std::collections::BTreeSet;
use std::fmt;

use heartline_core::client::ClientConfig;
use heartline_core::gateway::GatewayConfig;
use heartline_core::Rng;

/// A kind of fault the simulator can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A client's network is cut silently (no FIN), then heals.
    Partition,
    /// One side of a connection vanishes without a close.
    HalfOpen,
    /// A connection is reset; both sides see it close.
    Reset,
    /// A client stops reading; the server's frames pile up.
    StopRead,
    /// Latency jumps for a while.
    Spike,
    /// A client's path stalls briefly, then delivers everything at once.
    Clog,
    /// Several clients clog one after another and unclog in random order.
    Swizzle,
    /// The server process dies and restarts with empty memory.
    Crash,
    /// The store fails writes and reads for a while.
    StoreFail,
    /// The store is slow for a while (still in order).
    SlowStore,
    /// Every client's connection is reset at once: a reconnect storm.
    Storm,
    /// Hostile clients: floods, garbage, oversize frames, bad tokens, connection churn.
    Hostile,
    /// The store dies under operations in flight (some kept, all answered as failures)
    /// until the server is restarted.
    StoreDies,
    /// The operator replaces a conversation's member list over the API: users are let out
    /// of it (and of its room) while connected, joined and sending, and let back in.
    Members,
    /// The server machine's wall clock is stepped (NTP correcting it, a VM resumed): token
    /// expiry, heartbeat stamps and the rate window restored at a restart must follow it.
    ClockStep,
    /// A device freezes (a laptop put to sleep, a phone's browser frozen in the
    /// background): its connections go silent without a close and it does nothing at all,
    /// so only the server's heartbeat can find it gone, until it wakes and its late
    /// deadlines fire.
    Freeze,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Partition,
        FaultKind::HalfOpen,
        FaultKind::Reset,
        FaultKind::StopRead,
        FaultKind::Spike,
        FaultKind::Clog,
        FaultKind::Swizzle,
        FaultKind::Crash,
        FaultKind::StoreFail,
        FaultKind::SlowStore,
        FaultKind::Storm,
        FaultKind::Hostile,
        FaultKind::StoreDies,
        FaultKind::Members,
        FaultKind::ClockStep,
        FaultKind::Freeze,
    ];

    /// The kinds a swarm seed draws first, in this order; kinds added after them are drawn
    /// after every other knob, so that each seed keeps the knobs and faults it had.
    const SWARM_FIRST: usize = 12;
    /// The kinds drawn after the token knobs, up to the next mark.
    const SWARM_SECOND: usize = 13;
    /// The kinds drawn after the transports; the kinds from here on are drawn last of all.
    const SWARM_THIRD: usize = 15;

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::HalfOpen => "halfopen",
            FaultKind::Reset => "reset",
            FaultKind::StopRead => "stopread",
            FaultKind::Spike => "spike",
            FaultKind::Clog => "clog",
            FaultKind::Swizzle => "swizzle",
            FaultKind::Crash => "crash",
            FaultKind::StoreFail => "storefail",
            FaultKind::SlowStore => "slowstore",
            FaultKind::Storm => "storm",
            FaultKind::Hostile => "hostile",
            FaultKind::StoreDies => "storedies",
            FaultKind::Members => "members",
            FaultKind::ClockStep => "clockstep",
            FaultKind::Freeze => "freeze",
        }
    }

    /// Parses `all`, `none`, or a comma-separated list of names.
    pub fn parse_list(list: &str) -> Result<BTreeSet<FaultKind>, String> {
        match list.trim() {
            "all" => return Ok(FaultKind::ALL.into_iter().collect()),
            "none" | "" => return Ok(BTreeSet::new()),
            _ => {}
        }
        let mut set = BTreeSet::new();
        for name in list.split(',').map(str::trim) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                    format!(
                        "unknown fault {name:?}; known: all, none, {}",
                        known.join(", ")
                    )
                })?;
            set.insert(kind);
        }
        Ok(set)
    }
}

/// A hook that edits a configuration before the run (tests use it to switch on the core's
/// deliberate bugs).
pub type GatewayHook = fn(&mut GatewayConfig);
/// A hook that edits every client's configuration.
pub type ClientHook = fn(&mut ClientConfig);

/// Every knob of one run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The seed: the whole run follows from it and the knobs below.
    pub seed: u64,
    /// Honest clients (devices).
    pub clients: usize,
    /// Devices per user (1..=3): several devices of one user replace each other.
    pub devices_per_user: usize,
    /// Percent of honest clients that connect and join but never send.
    pub idle_pct: u64,
    /// Hostile actors (used when `Hostile` is among the faults).
    pub hostile: usize,
    /// Length of the safety phase, simulated milliseconds.
    pub duration_ms: u64,
    /// Faults that may be injected.
    pub faults: BTreeSet<FaultKind>,
    /// Mean gap between injected faults.
    pub fault_gap_ms: u64,
    /// One-way network latency, and the jitter added to it.
    pub latency_ms: u64,
    /// Jitter on top of `latency_ms`.
    pub jitter_ms: u64,
    /// Mean gap between an honest client's sends.
    pub send_gap_ms: u64,
    /// Percent of sends that are bursts of more messages than the rate limit allows.
    pub burst_pct: u64,
    /// Engine.IO `ping_interval_ms`.
    pub ping_interval_ms: u64,
    /// Engine.IO `ping_timeout_ms`.
    pub ping_timeout_ms: u64,
    /// `connections.per_user`.
    pub per_user: usize,
    /// `rate_limit.messages`.
    pub rate_messages: usize,
    /// `rate_limit.window_ms`.
    pub rate_window_ms: u64,
    /// Most messages a join's catch-up returns.
    pub missed_limit: usize,
    /// Client reconnection attempts before giving up.
    pub max_attempts: u32,
    /// Client connect timeout.
    pub connect_timeout_ms: u64,
    /// Store latency per operation.
    pub store_latency_ms: u64,
    /// Percent of honest clients whose tokens expire during the run: their applications
    /// refresh them after `auth:expired` (some too late, some not at all) and log in again
    /// once sent away.
    pub expiring_pct: u64,
    /// `auth.grace_ms`: time to refresh after `auth:expired`.
    pub auth_grace_ms: u64,
    /// `heartbeat.interval_ms`.
    pub heartbeat_ms: u64,
    /// `server.max_outbound_bytes`: each connection's send queue at the server.
    pub outbound_bytes: u64,
    /// Bytes a connection holds written and not yet read by its client (the sockets'
    /// buffers), before the server's frames wait in its send queue.
    pub socket_buffer: u64,
    /// Bound on the liveness phase: everything must converge within this long after healing.
    pub convergence_ms: u64,
    /// Lines of trace kept for a failure report.
    pub trace_tail: usize,
    /// Percent of honest devices on long-polling rather than a WebSocket.
    pub polling_pct: u64,
    /// Percent of those that take the WebSocket the server offers (`socket.io-client`'s
    /// default); the others stay on polling.
    pub upgrade_pct: u64,
    /// Percent of hostile attacks made on long-polling, in runs with devices on it
    /// (`polling_pct` above 0).
    pub hostile_polling_pct: u64,
    /// Edits the gateway configuration (tests).
    pub gateway_hook: Option<GatewayHook>,
    /// Edits client configurations (tests).
    pub client_hook: Option<ClientHook>,
}

impl Options {
    /// Sensible defaults for a quick run with every fault on.
    pub fn new(seed: u64) -> Self {
        Options {
            seed,
            clients: 12,
            devices_per_user: 2,
            idle_pct: 20,
            hostile: 2,
            duration_ms: 120_000,
            faults: FaultKind::ALL.into_iter().collect(),
            fault_gap_ms: 6_000,
            latency_ms: 20,
            jitter_ms: 30,
            send_gap_ms: 4_000,
            burst_pct: 10,
            ping_interval_ms: 10_000,
            ping_timeout_ms: 5_000,
            per_user: 1,
            rate_messages: 5,
            rate_window_ms: 10_000,
            missed_limit: 1_000,
            max_attempts: 8,
            connect_timeout_ms: 10_000,
            store_latency_ms: 3,
            expiring_pct: 25,
            auth_grace_ms: 10_000,
            heartbeat_ms: 15_000,
            outbound_bytes: 1_048_576,
            socket_buffer: 65_536,
            convergence_ms: 120_000,
            trace_tail: 40,
            polling_pct: 0,
            upgrade_pct: 50,
            hostile_polling_pct: 50,
            gateway_hook: None,
            client_hook: None,
        }
    }

    /// Knobs drawn from the seed (swarm testing); `clients` and `duration_ms` are caps.
    pub fn swarm(seed: u64, clients: usize, duration_ms: u64) -> Self {
        let mut rng = Rng::from_seed(seed ^ 0x5357_4152_4d00_0000);
        let mut o = Options::new(seed);
        let pick = |rng: &mut Rng, xs: &[u64]| xs[rng.below(xs.len() as u64) as usize];
        o.clients = 2 + rng.below(clients.saturating_sub(1).max(1) as u64) as usize;
        o.devices_per_user = 1 + rng.below(3) as usize;
        o.idle_pct = pick(&mut rng, &[0, 20, 50]);
        o.hostile = rng.below(3) as usize;
        o.duration_ms = duration_ms / 2 + rng.below(duration_ms / 2 + 1);
        // Each fault kind is present with probability 1/2; at least one.
        o.faults = FaultKind::ALL[..FaultKind::SWARM_FIRST]
            .iter()
            .copied()
            .filter(|_| rng.below(2) == 0)
            .collect();
        if o.faults.is_empty() {
            o.faults
                .insert(FaultKind::ALL[rng.below(FaultKind::SWARM_FIRST as u64) as usize]);
        }
        o.fault_gap_ms = pick(&mut rng, &[2_000, 5_000, 15_000]);
        o.latency_ms = pick(&mut rng, &[1, 20, 150]);
        o.jitter_ms = pick(&mut rng, &[0, 10, 100]);
        o.send_gap_ms = pick(&mut rng, &[500, 3_000, 10_000]);
        o.burst_pct = pick(&mut rng, &[0, 10, 40]);
        o.ping_interval_ms = pick(&mut rng, &[3_000, 10_000, 25_000]);
        o.ping_timeout_ms = pick(&mut rng, &[2_000, 5_000, 20_000]);
        o.per_user = 1 + rng.below(2) as usize;
        o.rate_messages = pick(&mut rng, &[2, 5, 10]) as usize;
        o.rate_window_ms = pick(&mut rng, &[2_000, 10_000]);
        o.missed_limit = pick(&mut rng, &[3, 1_000]) as usize;
        o.max_attempts = pick(&mut rng, &[3, 8, 30]) as u32;
        o.connect_timeout_ms = pick(&mut rng, &[2_000, 10_000]);
        o.store_latency_ms = pick(&mut rng, &[1, 5, 50]);
        // Drawn last, so the knobs above stay what they were for every seed.
        o.expiring_pct = pick(&mut rng, &[0, 25, 100]);
        o.auth_grace_ms = pick(&mut rng, &[2_000, 10_000, 30_000]);
        for kind in &FaultKind::ALL[FaultKind::SWARM_FIRST..FaultKind::SWARM_SECOND] {
            if rng.below(2) == 0 {
                o.faults.insert(*kind);
            }
        }
        // Small queues and buffers in some seeds, so that clients that stop reading (or
        // paths that stall) meet the slow-consumer rule: shedding, then the drop. The
        // small buffer still lets a path carry 32 KB/s beyond 1 KiB at its latency, and the
        // small queues hold replies of 2 to 4 messages (an eighth of the limit): with less,
        // a client that reads would be too slow for the traffic, or for catching up with
        // it, which would be the configuration's doing, not the server's.
        o.outbound_bytes = pick(&mut rng, &[1_048_576, 8_192, 4_096]);
        let small = 1_024 + 32 * (o.latency_ms + o.jitter_ms);
        o.socket_buffer = pick(&mut rng, &[65_536, small]);
        // Frequent heartbeats give a full queue droppable frames to shed.
        o.heartbeat_ms = pick(&mut rng, &[15_000, 1_000]);
        for kind in &FaultKind::ALL[FaultKind::SWARM_SECOND..FaultKind::SWARM_THIRD] {
            if rng.below(2) == 0 {
                o.faults.insert(*kind);
            }
        }
        // Half the seeds keep every device on WebSocket, as they were before polling.
        o.polling_pct = pick(&mut rng, &[0, 0, 30, 100]);
        for kind in &FaultKind::ALL[FaultKind::SWARM_THIRD..] {
            if rng.below(2) == 0 {
                o.faults.insert(*kind);
            }
        }
        o
    }

    /// The knobs, on one line, for logs and failure reports.
    pub fn knobs(&self) -> String {
        let faults: Vec<&str> = self.faults.iter().map(|k| k.name()).collect();
        format!(
            "seed={} clients={} devices_per_user={} idle_pct={} hostile={} duration_ms={} \
             faults={} fault_gap_ms={} latency_ms={}+{} send_gap_ms={} burst_pct={} \
             ping={}+{} per_user={} rate={}/{}ms missed_limit={} max_attempts={} \
             connect_timeout_ms={} store_latency_ms={} expiring_pct={} auth_grace_ms={} \
             heartbeat_ms={} outbound_bytes={} socket_buffer={} polling_pct={} upgrade_pct={}",
            self.seed,
            self.clients,
            self.devices_per_user,
            self.idle_pct,
            self.hostile,
            self.duration_ms,
            if faults.is_empty() {
                "none".to_owned()
            } else {
                faults.join(",")
            },
            self.fault_gap_ms,
            self.latency_ms,
            self.jitter_ms,
            self.send_gap_ms,
            self.burst_pct,
            self.ping_interval_ms,
            self.ping_timeout_ms,
            self.per_user,
            self.rate_messages,
            self.rate_window_ms,
            self.missed_limit,
            self.max_attempts,
            self.connect_timeout_ms,
            self.store_latency_ms,
            self.expiring_pct,
            self.auth_grace_ms,
            self.heartbeat_ms,
            self.outbound_bytes,
            self.socket_buffer,
            self.polling_pct,
            self.upgrade_pct,
        )
    }

    /// Whether a fault kind may be injected.
    pub fn has(&self, kind: FaultKind) -> bool {
        self.faults.contains(&kind)
    }
}

impl fmt::Display for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.knobs())
    }
}
