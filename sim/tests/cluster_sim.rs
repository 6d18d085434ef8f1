//! The cluster simulator's own tests: a seed is reproducible, and the auditor
//! catches a deliberately broken build.

use tally_sim::cluster::plan::Fault;
use tally_sim::cluster::plan::FaultKind;
use tally_sim::cluster::plan::Plan;
use tally_sim::cluster::run_seed;
use tally_sim::cluster::Options;
use tally_sim::cluster::Variant;

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let options = Options {
        nodes: Some(3),
        ..Options::default()
    };
    let first = run_seed(11, &options);
    let again = run_seed(11, &options);
    let other = run_seed(12, &options);
    assert!(first.ok, "seed 11 failed: {:#?}", first.failures);
    assert_eq!(
        first.trace_hash, again.trace_hash,
        "seed 11 is not reproducible"
    );
    assert_eq!(first.acknowledged_transfers, again.acknowledged_transfers);
    assert!(
        first.acknowledged_transfers > 0,
        "the workload acknowledged nothing"
    );
    assert_ne!(first.trace_hash, other.trace_hash);
}

/// A disk whose fsync lies loses acknowledged transfers when its node
/// crashes; the auditor must say so.
#[test]
fn the_auditor_catches_a_journal_that_does_not_fsync() {
    let options = Options {
        nodes: Some(1),
        variant: Variant::NoFsync,
    };
    let seed = (0..1_000)
        .find(|seed| {
            let plan = Plan::from_seed(*seed, Some(1));
            let crashes = plan
                .schedule
                .iter()
                .any(|(_, fault)| matches!(fault, Fault::Crash { .. }));
            crashes && !plan.has(FaultKind::TornWrite)
        })
        .expect("some seed crashes a node");
    let report = run_seed(seed, &options);
    assert!(
        !report.ok,
        "seed {seed}: a journal without fsync went unnoticed"
    );
    assert!(
        report
            .failures
            .iter()
            .any(|failure| failure.contains("missing") || failure.contains("could not restart")),
        "seed {seed}: caught, but not as lost data: {:#?}",
        report.failures
    );
    // The same seed on the real build is clean: it is the bug that was caught.
    let correct = run_seed(
        seed,
        &Options {
            nodes: Some(1),
            variant: Variant::Correct,
        },
    );
    assert!(
        correct.ok,
        "seed {seed} fails on the correct build too: {:#?}",
        correct.failures
    );
}
