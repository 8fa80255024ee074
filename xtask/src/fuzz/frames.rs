//! `cargo xtask fuzz frames`: the kernel programs against their reference
//! model (tests/fuzz), for as many frames as asked and with a chosen seed;
//! the CI run of the same test (the `fuzz` test layer) uses 10^6 frames.

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::{
    ebpf, user,
    util::{describe, run, step},
};

/// What to fuzz.
#[derive(Subcommand)]
pub enum Fuzz {
    /// Generated frames through the real programs (BPF_PROG_TEST_RUN) and the reference model;
    /// fails on any disagreement or broken invariant, printing reproducible cases.
    Frames {
        /// Frames to run (the CI layer runs 1,000,000; nights 10,000,000 or more).
        #[arg(long, default_value_t = 1_000_000)]
        frames: u64,
        /// Seed of the generator (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
}

/// Runs `what`.
pub fn fuzz(what: Fuzz) -> Result<()> {
    let Fuzz::Frames { frames, seed } = what;
    let obj = ebpf::build()?;
    let mut cargo =
        user::cargo(&obj, ["test", "-p", "datapath-tests", "--test", "fuzz", "--", "--nocapture"]);
    cargo.env("DP_FUZZ_FRAMES", frames.to_string());
    if let Some(seed) = seed {
        cargo.env("DP_FUZZ_SEED", seed.to_string());
    }
    step("fuzz frames", &describe(&cargo));
    run(&mut cargo).context("the differential fuzz found disagreements or violations (cases printed above)")
}
