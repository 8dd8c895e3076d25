//! The fault schedule: which faults strike when.
//!
//! A schedule is plain data, generated from the seed for ordinary runs, or handed in by a
//! property test, which can then shrink a failing schedule to the few faults that matter.
//! Client numbers are taken modulo the number of clients when the fault strikes, so any
//! schedule fits any run.

use std::fmt;

use heartline_core::Rng;

use crate::options::{FaultKind, Options};

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The client's network is cut for `ms`; nothing is lost, nothing gets through.
    Partition {
        /// The client.
        client: usize,
        /// How long.
        ms: u64,
    },
    /// The client's connection goes dead without a close. With `client_notified` the
    /// client's side sees an error at once while the server sees nothing; otherwise neither
    /// side is told and only heartbeats find out.
    HalfOpen {
        /// The client.
        client: usize,
        /// Whether the client's side notices.
        client_notified: bool,
    },
    /// The client's connection is reset; both sides see it.
    Reset {
        /// The client.
        client: usize,
    },
    /// The client stops reading for `ms`.
    StopRead {
        /// The client.
        client: usize,
        /// How long.
        ms: u64,
    },
    /// Every new segment takes `extra_ms` longer, for `ms`.
    Spike {
        /// Extra latency.
        extra_ms: u64,
        /// How long.
        ms: u64,
    },
    /// The client's path stalls for `ms`.
    Clog {
        /// The client.
        client: usize,
        /// How long.
        ms: u64,
    },
    /// The clients clog one after another, `gap_ms` apart, each for `ms` give or take, and
    /// unclog in an order drawn at random.
    Swizzle {
        /// The clients.
        clients: Vec<usize>,
        /// Gap between clogs.
        gap_ms: u64,
        /// Typical clog length.
        ms: u64,
    },
    /// The server crashes and restarts after `down_ms`. A `silent` crash (the machine) sends
    /// nothing to clients; otherwise (the process) their connections are reset.
    Crash {
        /// Downtime.
        down_ms: u64,
        /// Whether clients are left to find out by themselves.
        silent: bool,
    },
    /// Store operations fail with probability `pct`% for `ms`.
    StoreFail {
        /// Failure probability, percent.
        pct: u64,
        /// How long.
        ms: u64,
    },
    /// Store operations take `extra_ms` longer for `ms` (still completing in order).
    SlowStore {
        /// Extra latency.
        extra_ms: u64,
        /// How long.
        ms: u64,
    },
    /// The store dies (its log cannot be flushed): every operation fails; of the appends in
    /// flight, a prefix is kept, each with `kept_pct`% chance, though answered as failures.
    /// A supervisor restarts the server `restart_ms` later, which comes back after
    /// `down_ms` with the store opened again.
    StoreDies {
        /// Chance that each append in flight is kept, percent.
        kept_pct: u64,
        /// Time until the server is restarted.
        restart_ms: u64,
        /// Downtime of that restart.
        down_ms: u64,
    },
    /// Every client connection is reset at once.
    Storm,
    /// The server machine's wall clock jumps by `step_ms` (forward if positive), as when
    /// NTP steps a clock that was off or a suspended VM resumes; its monotonic clock does
    /// not. Nothing else on the machine changes.
    ClockStep {
        /// The jump, milliseconds.
        step_ms: i64,
    },
    /// The device freezes for `ms`: its connections go silent without a close (what was
    /// in flight on them is lost) and it does nothing until it wakes, when its deadlines
    /// fire late and it finds its connections dead as its client does.
    Freeze {
        /// The device.
        client: usize,
        /// How long.
        ms: u64,
    },
    /// The operator replaces a conversation's member list: of its members by the
    /// workload's layout, those whose bit is set in `keep` (the `i`-th member, bit `i`).
    Members {
        /// The conversation (an index, taken modulo the number of conversations).
        conversation: usize,
        /// Which of its members stay.
        keep: u64,
    },
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::HalfOpen { .. } => FaultKind::HalfOpen,
            Fault::Reset { .. } => FaultKind::Reset,
            Fault::StopRead { .. } => FaultKind::StopRead,
            Fault::Spike { .. } => FaultKind::Spike,
            Fault::Clog { .. } => FaultKind::Clog,
            Fault::Swizzle { .. } => FaultKind::Swizzle,
            Fault::Crash { .. } => FaultKind::Crash,
            Fault::StoreFail { .. } => FaultKind::StoreFail,
            Fault::SlowStore { .. } => FaultKind::SlowStore,
            Fault::StoreDies { .. } => FaultKind::StoreDies,
            Fault::Storm => FaultKind::Storm,
            Fault::Members { .. } => FaultKind::Members,
            Fault::ClockStep { .. } => FaultKind::ClockStep,
            Fault::Freeze { .. } => FaultKind::Freeze,
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Partition { client, ms } => write!(f, "partition c{client} for {ms}ms"),
            Fault::HalfOpen {
                client,
                client_notified,
            } => write!(
                f,
                "half-open c{client} ({} side vanishes)",
                if *client_notified { "server" } else { "client" }
            ),
            Fault::Reset { client } => write!(f, "reset c{client}"),
            Fault::StopRead { client, ms } => write!(f, "c{client} stops reading for {ms}ms"),
            Fault::Spike { extra_ms, ms } => write!(f, "latency +{extra_ms}ms for {ms}ms"),
            Fault::Clog { client, ms } => write!(f, "clog c{client} for {ms}ms"),
            Fault::Swizzle {
                clients,
                gap_ms,
                ms,
            } => write!(f, "swizzle-clog {clients:?} gap {gap_ms}ms for ~{ms}ms"),
            Fault::Crash { down_ms, silent } => write!(
                f,
                "server crash ({}), down {down_ms}ms",
                if *silent { "machine" } else { "process" }
            ),
            Fault::StoreFail { pct, ms } => write!(f, "store fails {pct}% for {ms}ms"),
            Fault::SlowStore { extra_ms, ms } => write!(f, "store +{extra_ms}ms for {ms}ms"),
            Fault::StoreDies {
                kept_pct,
                restart_ms,
                down_ms,
            } => write!(
                f,
                "store dies ({kept_pct}% of appends in flight kept), \
                 restarted after {restart_ms}ms, down {down_ms}ms"
            ),
            Fault::Storm => write!(f, "reconnect storm: every connection reset"),
            Fault::ClockStep { step_ms } => write!(f, "server wall clock steps {step_ms:+}ms"),
            Fault::Freeze { client, ms } => write!(f, "c{client} freezes for {ms}ms"),
            Fault::Members { conversation, keep } => write!(
                f,
                "operator replaces the members of conversation #{conversation} (keeps {keep:#b})"
            ),
        }
    }
}

/// A fault and when it strikes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultEvent {
    /// Milliseconds after the start of the run.
    pub at_ms: u64,
    /// The fault.
    pub fault: Fault,
}

/// Draws one fault of `kind`.
pub fn draw(kind: FaultKind, rng: &mut Rng, clients: usize) -> Fault {
    let clients = clients.max(1) as u64;
    let client = rng.below(clients) as usize;
    match kind {
        FaultKind::Partition => Fault::Partition {
            client,
            ms: 1_000 + rng.below(60_000),
        },
        FaultKind::HalfOpen => Fault::HalfOpen {
            client,
            client_notified: rng.below(2) == 0,
        },
        FaultKind::Reset => Fault::Reset { client },
        FaultKind::StopRead => Fault::StopRead {
            client,
            ms: 1_000 + rng.below(40_000),
        },
        FaultKind::Spike => Fault::Spike {
            extra_ms: 200 + rng.below(5_000),
            ms: 1_000 + rng.below(20_000),
        },
        FaultKind::Clog => Fault::Clog {
            client,
            ms: 100 + rng.below(5_000),
        },
        FaultKind::Swizzle => {
            let n = 2 + rng.below(clients.min(6)) as usize;
            Fault::Swizzle {
                clients: (0..n).map(|_| rng.below(clients) as usize).collect(),
                gap_ms: 50 + rng.below(1_000),
                ms: 500 + rng.below(8_000),
            }
        }
        FaultKind::Crash => Fault::Crash {
            down_ms: 100 + rng.below(15_000),
            silent: rng.below(2) == 0,
        },
        FaultKind::StoreFail => Fault::StoreFail {
            pct: 10 + rng.below(91),
            ms: 500 + rng.below(10_000),
        },
        FaultKind::SlowStore => Fault::SlowStore {
            extra_ms: 50 + rng.below(3_000),
            ms: 1_000 + rng.below(15_000),
        },
        FaultKind::StoreDies => Fault::StoreDies {
            kept_pct: rng.below(101),
            restart_ms: 100 + rng.below(10_000),
            down_ms: 100 + rng.below(5_000),
        },
        FaultKind::Members => Fault::Members {
            conversation: rng.below(1 << 16) as usize,
            // Half the time the whole list again, letting everyone back in.
            keep: if rng.below(2) == 0 {
                u64::MAX
            } else {
                rng.below(1 << 5)
            },
        },
        // At least two seconds, so that the server takes it for a step, not for the
        // delay of its own reading; at most a quarter of an hour either way.
        FaultKind::ClockStep => {
            let ms = 2_000 + rng.below(15 * 60_000 - 2_000) as i64;
            Fault::ClockStep {
                step_ms: if rng.below(2) == 0 { ms } else { -ms },
            }
        }
        // From a moment to well past the longest heartbeat bound (25 s + 20 s).
        FaultKind::Freeze => Fault::Freeze {
            client,
            ms: 1_000 + rng.below(90_000),
        },
        FaultKind::Storm | FaultKind::Hostile => Fault::Storm,
    }
}

/// The schedule for a run: faults of the enabled kinds at random gaps over the safety phase.
pub fn generate(opts: &Options) -> Vec<FaultEvent> {
    let mut rng = Rng::from_seed(opts.seed ^ 0x4641_554c_5453_0000);
    let kinds: Vec<FaultKind> = opts
        .faults
        .iter()
        .copied()
        .filter(|k| *k != FaultKind::Hostile)
        .collect();
    let mut out = vec![];
    if kinds.is_empty() {
        return out;
    }
    let mut at = 0u64;
    // Bounded: at least one millisecond of progress per fault.
    loop {
        at += 1 + rng.below(2 * opts.fault_gap_ms.max(1));
        if at >= opts.duration_ms {
            return out;
        }
        let kind = kinds[rng.below(kinds.len() as u64) as usize];
        out.push(FaultEvent {
            at_ms: at,
            fault: draw(kind, &mut rng, opts.clients),
        });
    }
}
