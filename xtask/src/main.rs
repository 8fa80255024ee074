//! `cargo xtask`: set up the machine, build, test, lint and run the datapath.

mod build;
mod lint;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Project tasks. Every command but `setup` runs `setup` first.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the project needs (apt packages, rust-src, bpf-linker, bpffs); idempotent.
    Setup,
    /// Build the eBPF object and target/release/datapath.
    Build,
    /// Run the test layers (all by default) with one summary.
    Test {
        /// Only these layers.
        #[arg(long, value_enum)]
        layer: Vec<test::Layer>,
        /// Passed to every `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// fmt and clippy (user crates, then the eBPF crate).
    Lint,
    /// Build, then run `datapath ARGS`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("[xtask] error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    setup::setup()?;
    match cli.command {
        Command::Setup => {}
        Command::Build => build::all()?,
        Command::Test { layer, args } => test::test(&layer, &args)?,
        Command::Lint => lint::lint()?,
        Command::Run { args } => {
            build::all()?;
            let status = util::status(
                util::cmd(util::root().join("target/release/datapath").to_str().unwrap_or("datapath"), &args)
                    .current_dir(std::env::current_dir()?),
            )?;
            return Ok(ExitCode::from(status.code().unwrap_or(1) as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}
