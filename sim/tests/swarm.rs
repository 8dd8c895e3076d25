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
