//! Differential fuzzing: seeded random bindings and frames through the real
//! programs and the reference model; zero disagreements and zero invariant
//! violations. `DP_FUZZ_FRAMES` (default 1,000,000) and `DP_FUZZ_SEED`
//! (default: from the clock, printed) choose the run; `cargo xtask fuzz
//! frames --frames N --seed S` sets them.

use datapath_tests::fuzz::runner::{self, Options};

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn kernel_programs_agree_with_the_model() {
    datapath_tests::require_root();
    let frames = env_u64("DP_FUZZ_FRAMES").unwrap_or(1_000_000);
    let seed = env_u64("DP_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    // Printed first, so that a run that dies is still reproducible.
    println!("differential fuzz: seed {seed}, {frames} frames (DP_FUZZ_SEED={seed} DP_FUZZ_FRAMES={frames})");
    let sum = runner::run(Options { frames, seed, reseed_every: 5000, max_reports: 10 })
        .unwrap_or_else(|e| panic!("fuzz bench failed (seed {seed}): {e:#}"));
    println!("{}", sum.describe());
    for r in sum.reports.iter().chain(&sum.violation_reports) {
        println!("\n{r}");
    }
    assert!(
        sum.disagreements == 0 && sum.counter_mismatches == 0 && sum.violations == 0,
        "seed {seed}: {} disagreements, {} documents with counter mismatches and {} invariant violations \
         in {} frames (cases printed above)",
        sum.disagreements,
        sum.counter_mismatches,
        sum.violations,
        sum.frames
    );
    assert!(
        sum.frames > frames / 2,
        "only {} of {frames} frames ran: the generator makes frames the kernel refuses",
        sum.frames
    );
}
