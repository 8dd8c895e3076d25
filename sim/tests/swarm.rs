//! A swarm of 200 seeds, each with its own fault mix and knobs, must hold every invariant.

use heartline_sim::{Options, Sim};

#[test]
fn swarm_of_200_seeds_holds_every_invariant() {
    let mut failing = vec![];
    for seed in 0..200u64 {
        let opts = Options::swarm(1_000 + seed, 8, 40_000);
        let report = Sim::new(opts, None, None).expect("valid options").run();
        if let Some(v) = &report.violation {
            failing.push(format!("seed {}: {v}\n{}", 1_000 + seed, report.knobs));
        }
    }
    assert!(failing.is_empty(), "{}", failing.join("\n"));
}

/// Seeds of the `heartline-sim swarm` defaults (12 clients, 120 s) that once failed, kept
/// with the knobs they were found with. Later changes to the workload, the client and the
/// hostile scripts change their traces, so they no longer replay the very interleaving
/// that failed; the rules they found are pinned by tests of their own (the late CONNECT:
/// `a_late_connect_on_an_older_session_displaces_only_itself` in
/// `core/tests/gateway_transcripts.rs`; the drain bound: the liveness phase's own
/// computation). What they were:
/// - 1410: two connect attempts given up by their clients (connect timeout while a clog
///   held them) arrived, CONNECT and close together, after both devices had reconnected;
///   the first displaced a live device, which then stayed away for good.
/// - 1699: the drain bound after healing assumed a rate-limit slot is taken again the
///   moment it frees; with 150 + 100 ms latency each retry comes a round trip later.
/// - 1259 (40 clients, 200 s): a connect attempt its device gave up on reached the server
///   4 s late, after the device had connected again, and displaced that newer connection;
///   the device, told `connection:replaced`, stayed away, and its user had no connection.
#[test]
fn seeds_that_once_failed_hold() {
    for (seed, clients, duration_ms) in [
        (1410, 12, 120_000),
        (1699, 12, 120_000),
        (1259, 40, 200_000),
    ] {
        let mut opts = Options::swarm(seed, clients, duration_ms);
        // As they were found: before tokens expired in the simulated world, and before the
        // store could die.
        opts.expiring_pct = 0;
        opts.faults.remove(&heartline_sim::FaultKind::StoreDies);
        let report = Sim::new(opts, None, None).expect("valid options").run();
        assert!(
            report.violation.is_none(),
            "seed {seed}: {:?}\n{}",
            report.violation,
            report.knobs
        );
    }
}
