//! `datapath`: the agent and the operator's commands.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use datapath_user::{agent, config::Config};

/// eBPF L2 datapath for OpenStack Neutron nodes (replaces the OVS hybrid chain).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent for one node (or remove its datapath with --cleanup).
    Agent {
        /// Agent config (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Remove every program, link, map and pin this agent created, then exit.
        #[arg(long)]
        cleanup: bool,
    },
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent { config, cleanup } => {
            let cfg = Config::load(&config)?;
            if cleanup {
                return agent::cleanup(&cfg);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async { agent::Agent::start(cfg)?.run().await })
        }
    }
}
