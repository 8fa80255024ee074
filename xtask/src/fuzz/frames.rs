//! `cargo xtask fuzz frames`: the kernel programs against their reference
//! model (tests/fuzz), for as many frames as asked and with a chosen seed;
//! the CI run of the same test (the `fuzz` test layer) uses 10^6 frames.

use anyhow::{Context, Result};

use crate::{
    ebpf, user,
    util::{self, describe, step},
};

/// Runs `frames` generated frames from `seed` (or a clock seed).
pub fn run(frames: u64, seed: Option<u64>) -> Result<()> {
    let obj = ebpf::build()?;
    let mut cargo =
        user::cargo(&obj, ["test", "-p", "datapath-tests", "--test", "fuzz", "--", "--nocapture"]);
    cargo.env("DP_FUZZ_FRAMES", frames.to_string());
    if let Some(seed) = seed {
        cargo.env("DP_FUZZ_SEED", seed.to_string());
    }
    step("fuzz frames", &describe(&cargo));
    util::run(&mut cargo)
        .context("the differential fuzz found disagreements or violations (cases printed above)")
}
