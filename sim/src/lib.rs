//! Heartline's deterministic simulator.
//!
//! One process, one thread, one seeded generator, one virtual clock: a whole Heartline
//! deployment (the gateway, a durable store, a network of ordered connections, honest and
//! hostile clients) runs as plain function calls on the sans-IO core, so every run repeats
//! exactly from its seed. That is what turns a rare interleaving of a partition, a crash
//! and a reconnect into a bug report with a one-line reproduction.
//!
//! The shape follows the deterministic-simulation tradition (TigerBeetle's VOPR, turmoil,
//! madsim, FoundationDB's swizzle-clogging):
//!
//! - [`options::Options`] holds every knob; [`options::Options::swarm`] derives them from
//!   the seed, so a range of seeds explores a range of fault mixes.
//! - [`schedule`] is the list of faults to inject, generated from the seed or handed in by
//!   a property test that shrinks it.
//! - [`world::Sim`] owns the clock, the agenda and every component, and steps to the
//!   earliest thing due (server deadline, store completion, network delivery, client
//!   deadline, workload action, fault) with fixed tie-breaks; every loop is bounded.
//! - [`check`] holds one module per invariant (and two shared helpers), run continuously;
//!   the run has a safety phase (faults on), a liveness phase (everything healed, must
//!   converge within a bound) and a leave phase (everyone goes, server state must return
//!   to its baseline).
//! - [`trace::Trace`] writes one line per step and hashes them: same seed, same hash.

pub mod agenda;
pub mod check;
pub mod net;
pub mod options;
pub mod report;
pub mod schedule;
pub mod store;
pub mod trace;
pub mod workload;
pub mod world;

pub use options::{FaultKind, Options};
pub use report::Report;
pub use schedule::{Fault, FaultEvent};
pub use world::Sim;
