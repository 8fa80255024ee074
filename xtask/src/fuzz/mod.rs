//! `cargo xtask fuzz`: the kernel programs against their reference model
//! (`frames`), and the agent's input parsers under libFuzzer (`inputs`).

mod frames;
mod inputs;

use anyhow::Result;
use clap::Subcommand;

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
    /// The agent's inputs (bindings and derivation, config, control requests,
    /// trace frame specs) under libFuzzer, each target for a time budget.
    Inputs {
        /// Seconds per target.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only this target (bindings_derive, config, control_request, trace_frame_spec).
        #[arg(long)]
        target: Option<String>,
    },
}

/// Runs `what`.
pub fn fuzz(what: Fuzz) -> Result<()> {
    match what {
        Fuzz::Frames { frames, seed } => frames::run(frames, seed),
        Fuzz::Inputs { seconds, target } => inputs::run(seconds, target.as_deref()),
    }
}
