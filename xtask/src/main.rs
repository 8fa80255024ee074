//! `cargo xtask`: set up the machine, then build, test, lint or run the datapath.

mod bench;
mod deb;
mod demo;
mod ebpf;
mod fuzz;
mod lint;
mod neutron;
mod setup;
mod test;
mod user;
mod util;
mod vm;

use std::{os::unix::process::CommandExt, process::ExitCode};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Project tasks. Every command but `setup` runs `setup` first.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the project needs (apt packages, nightly, rust-src, bpf-linker, bpffs, the
    /// Neutron layer's RabbitMQ, MariaDB and neutron venv); idempotent.
    Setup,
    /// Build the eBPF object, then target/release/datapath with it embedded.
    Build {
        /// Build the user side in the debug profile (target/debug/datapath).
        #[arg(long)]
        debug_user: bool,
    },
    /// Run the test layers (all by default, in order) and print one summary.
    Test {
        /// Run only this layer; repeat for several.
        #[arg(long = "layer", value_name = "LAYER", value_enum)]
        layers: Vec<test::Layer>,
        /// Add the VM layers: real guests on taps, and the suite on Debian's 6.1 kernel.
        #[arg(long)]
        vm: bool,
        /// Passed to every `cargo test`, e.g. a test-name filter or `--nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// fmt and clippy for the user workspace and for the eBPF crate.
    Lint,
    /// Fuzzing: `frames` runs generated frames through the programs and their reference model;
    /// `inputs` runs the agent's parsers under libFuzzer.
    Fuzz {
        #[command(subcommand)]
        what: fuzz::Fuzz,
    },
    /// Churn for a while: ports bound and unbound, devices created and deleted, agents
    /// restarted and killed, with steady traffic that must lose nothing (the soak layer, longer).
    Soak {
        /// How long to churn.
        #[arg(long, default_value_t = 60.0)]
        minutes: f64,
        /// Bound ports per node.
        #[arg(long, default_value_t = 1000)]
        ports: usize,
        /// Seed of the churn (default: from the clock; printed either way).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The seed scenario live: two nodes, DHCP, ping, tags on the wire, the agent's view.
    Demo {
        /// Keep the cluster up until Enter is pressed.
        #[arg(long)]
        pause: bool,
        /// Through a real neutron-server: ports bound by the ML2 driver, agents on the agent RPC.
        #[arg(long)]
        neutron: bool,
    },
    /// Benchmark the datapath against a legacy-like hybrid chain; results in target/bench/.
    Bench {
        /// One short round (CI smoke test): asserts only that traffic flowed on both paths.
        #[arg(long)]
        quick: bool,
    },
    /// Build the Debian package (target/deb/datapath_<version>_amd64.deb).
    Deb,
    /// Build, then run target/release/datapath with ARGS.
    Run {
        /// Arguments for `datapath`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

impl Command {
    fn name(&self) -> &'static str {
        match self {
            Command::Setup => "setup",
            Command::Build { .. } => "build",
            Command::Test { .. } => "test",
            Command::Lint => "lint",
            Command::Fuzz { .. } => "fuzz",
            Command::Soak { .. } => "soak",
            Command::Demo { .. } => "demo",
            Command::Bench { .. } => "bench",
            Command::Run { .. } => "run",
            Command::Deb => "deb",
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(code) => code,
        Err(e) => {
            util::report(&e);
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    // A newcomer types only the README's commands, so every command prepares the machine.
    setup::setup(command.name())?;
    match command {
        // Only the explicit command installs the Neutron layer's 400 MB; other commands
        // leave it to `test`, when that layer runs.
        Command::Setup => drop(neutron::setup()?),
        Command::Build { debug_user } => drop(user::build(&ebpf::build()?, !debug_user)?),
        Command::Test { layers, vm, args } => {
            if !test::test(&layers, vm, &args)? {
                // The summary has said what failed, and its totals line must stay the last one.
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Lint => lint::lint()?,
        Command::Fuzz { what } => fuzz::fuzz(what)?,
        Command::Soak { minutes, ports, seed } => {
            let mut vars =
                vec![("DP_SOAK_MINUTES", minutes.to_string()), ("DP_SOAK_PORTS", ports.to_string())];
            vars.extend(seed.map(|s| ("DP_SOAK_SEED", s.to_string())));
            for (k, v) in vars {
                // SAFETY: no other thread runs yet; the soak test reads these.
                unsafe { std::env::set_var(k, v) };
            }
            if !test::test(&[test::Layer::Soak], false, &[])? {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Demo { pause, neutron } => demo::demo(pause, neutron)?,
        Command::Deb => drop(deb::build(&user::build(&ebpf::build()?, true)?)?),
        Command::Bench { quick } => {
            let obj = ebpf::build()?;
            bench::run(&obj, &user::build(&obj, true)?, quick)?;
        }
        Command::Run { args } => {
            let bin = user::build(&ebpf::build()?, true)?;
            // exec rather than spawn: the datapath gets our pid, signals (Ctrl-C reaches
            // the agent directly) and its exit code goes back through cargo unchanged.
            let mut datapath = util::cmd(&bin, &args);
            let err = datapath.exec();
            return Err(err).with_context(|| format!("could not start `{}`", util::describe(&datapath)));
        }
    }
    Ok(ExitCode::SUCCESS)
}
