//! What a run reports: counters, the worst dead-peer detection, each checker's result,
//! the trace hash, and on failure the seed, the step and the trace tail.

use std::fmt;

use crate::check::{Violation, NAMES};

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The knobs, one line.
    pub knobs: String,
    /// The seed.
    pub seed: u64,
    /// Steps taken.
    pub events: u64,
    /// Faults injected.
    pub faults: u64,
    /// Hostile attacks made.
    pub attacks: u64,
    /// Of these, attacks made on long-polling.
    pub attacks_polling: u64,
    /// Messages the honest applications sent.
    pub sent: u64,
    /// Acks clients received.
    pub acked: u64,
    /// Messages handed to applications.
    pub delivered: u64,
    /// Messages in the store.
    pub stored: u64,
    /// Reconnections that succeeded.
    pub reconnects: u64,
    /// Replacements of a connection by a newer one of the same user.
    pub replacements: u64,
    /// Ping-timeout closes.
    pub dead_peers: u64,
    /// Longest time from a peer's last sign of life to its close, in ms.
    pub dead_peer_worst_ms: u64,
    /// Store operations failed by injection.
    pub store_failures: u64,
    /// Appends kept by a store that died, though answered as failures.
    pub kept_unanswered: u64,
    /// Links the server closed with no namespace connected on them (never connected,
    /// or left by their clients).
    pub unconnected_closed: u64,
    /// Connected links whose clients disconnected the namespace and stayed.
    pub namespace_left: u64,
    /// `connection:success` frames and heartbeats checked on the wire.
    pub checked: (u64, u64),
    /// Steps of the server's wall clock.
    pub clock_steps: u64,
    /// Devices frozen.
    pub freezes: u64,
    /// Polling requests sent by honest devices, the times their polling transport closed
    /// under them (a request failed, or the server's CLOSE), and sessions moved onto a
    /// WebSocket.
    pub polling: (u64, u64, u64),
    /// `auth:expired` frames sent, refreshes accepted, connections closed for their token.
    pub token_expiry: (u64, u64, u64),
    /// Droppable frames the server's send queues shed, those of them seen missing on
    /// honest links that went on, and connections dropped as slow consumers.
    pub slow_consumers: (u64, u64, u64),
    /// Simulated time at the end.
    pub sim_ms: u64,
    /// Hash of the trace.
    pub trace_hash: u64,
    /// Lines of trace.
    pub trace_lines: u64,
    /// The first broken invariant.
    pub violation: Option<Violation>,
    /// The phase the run reached: safety, liveness, leave, done.
    pub phase: &'static str,
    /// The last lines of trace.
    pub trace_tail: String,
    /// The command that repeats this run.
    pub rerun: String,
}

impl Report {
    /// Whether every invariant held.
    pub fn ok(&self) -> bool {
        self.violation.is_none()
    }

    /// One line per checker: ok, VIOLATED, or not reached (the run stopped before its phase).
    pub fn checker_lines(&self) -> Vec<String> {
        NAMES
            .iter()
            .map(|name| {
                let verdict = match &self.violation {
                    Some(v) if v.checker == *name => "VIOLATED",
                    Some(_) if self.phase != "done" && late(name) => "not reached",
                    _ => "ok",
                };
                format!("  {name:<40} {verdict}")
            })
            .collect()
    }
}

/// Checkers that only run at the end of a run.
fn late(name: &str) -> bool {
    matches!(
        name,
        crate::check::presence::NAME | crate::check::baseline::NAME | crate::check::liveness::NAME
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "knobs: {}", self.knobs)?;
        writeln!(
            f,
            "events {} | simulated {}.{:03}s | faults {} | attacks {} ({} on polling)",
            self.events,
            self.sim_ms / 1000,
            self.sim_ms % 1000,
            self.faults,
            self.attacks,
            self.attacks_polling
        )?;
        writeln!(
            f,
            "messages: sent {} acked {} stored {} delivered {} | reconnects {} | replacements {}",
            self.sent, self.acked, self.stored, self.delivered, self.reconnects, self.replacements
        )?;
        writeln!(
            f,
            "dead peers closed {} | worst detection {}ms | devices frozen {} | store failures {} \
             (kept though failed {}) | closed unconnected {} (namespace left {})",
            self.dead_peers,
            self.dead_peer_worst_ms,
            self.freezes,
            self.store_failures,
            self.kept_unanswered,
            self.unconnected_closed,
            self.namespace_left
        )?;
        let (told, refreshed, closed) = self.token_expiry;
        writeln!(
            f,
            "tokens: auth:expired sent {told} | refreshed {refreshed} | closed for expiry {closed} \
             | wall clock steps {}",
            self.clock_steps
        )?;
        let (requests, closed, upgraded) = self.polling;
        writeln!(
            f,
            "polling: requests {requests} | transports closed under their clients {closed} \
             | upgraded to WebSocket {upgraded}"
        )?;
        let (shed, missed, dropped) = self.slow_consumers;
        writeln!(
            f,
            "slow consumers: frames shed {shed} (seen missing on links that went on {missed}) \
             | connections dropped {dropped}"
        )?;
        writeln!(f, "invariants:")?;
        for line in self.checker_lines() {
            writeln!(f, "{line}")?;
        }
        writeln!(
            f,
            "trace: {} lines, hash {:016x}",
            self.trace_lines, self.trace_hash
        )?;
        if let Some(v) = &self.violation {
            writeln!(f, "VIOLATION {v}")?;
            writeln!(f, "reproduce with seed={}: {}", self.seed, self.rerun)?;
            writeln!(f, "trace tail:\n{}", self.trace_tail)?;
        }
        Ok(())
    }
}
