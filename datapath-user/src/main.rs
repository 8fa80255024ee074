//! `datapath`: the agent, and the operator's commands that talk to it.

use std::{io::Write, path::PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use datapath_user::{
    agent,
    api::{API_VERSION, MetricsReply, Request, Versioned},
    cli,
    config::{Config, DEFAULT_CONTROL_SOCKET, LogFormat},
    control,
};
use serde::{Serialize, de::DeserializeOwned};

/// eBPF L2 datapath for OpenStack Neutron nodes (replaces the OVS hybrid chain).
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// How a command finds the running agent.
#[derive(Args)]
struct Target {
    // Global: `conntrack flush --json` takes them after its subcommand too.
    /// The agent's config (its `control_socket` is used).
    #[arg(long, global = true, conflicts_with = "socket")]
    config: Option<PathBuf>,
    /// The control socket itself.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the raw JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            return Ok(Config::load(c)?.control_socket);
        }
        Ok(PathBuf::from(DEFAULT_CONTROL_SOCKET))
    }
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
    /// The agent's summary: bindings in force, port states, errors.
    Status(Target),
    /// Every port, unbound tap and uplink, with its state.
    Ports(Target),
    /// The networks with ports on this node, with their local index.
    Networks(Target),
    /// Forwarding entries: local ports and MACs learned from the wire.
    Fdb {
        #[command(flatten)]
        target: Target,
        /// Only this network (id, name or local index).
        #[arg(long)]
        network: Option<String>,
    },
    /// Per-port counters, per action and per drop reason.
    Stats {
        #[command(flatten)]
        target: Target,
        /// Only this port (device name or port id).
        #[arg(long)]
        port: Option<String>,
    },
    /// Tracked connections of the security groups, like `conntrack -L`; `flush` deletes them, like `conntrack -D`.
    Conntrack {
        #[command(flatten)]
        target: Target,
        /// Only this port (device name or port id).
        #[arg(long)]
        port: Option<String>,
        #[command(subcommand)]
        action: Option<ConntrackAction>,
    },
    /// The Prometheus metrics, as the metrics endpoint serves them (OpenMetrics text).
    Metrics(Target),
    /// Live drops (and, with --decisions, every decision at a port) as they happen.
    Monitor {
        #[command(flatten)]
        target: Target,
        /// Only this port (device name or port id).
        #[arg(long)]
        port: Option<String>,
        /// Only drops for this reason (a label of `datapath stats`, e.g. src_mac_spoof).
        #[arg(long)]
        reason: Option<String>,
        /// Every decision at --port, not only its drops.
        #[arg(long, requires = "port")]
        decisions: bool,
        /// Also write the frames to this pcapng file (the reason in each packet's comment).
        #[arg(long)]
        pcap: Option<PathBuf>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Run the real program on a frame against the live maps and show the decision.
    Trace {
        #[command(flatten)]
        target: Target,
        /// The port the frame enters on (device name or port id).
        #[arg(long)]
        port: String,
        /// Hex bytes, a pcap file, or a spec like 'arp who-has 10.10.10.3 from fa:16:3e:00:00:01 10.10.10.2'.
        #[arg(long)]
        frame: String,
        /// On the VXLAN device: the VNI the frame arrived with.
        #[arg(long, requires = "vtep")]
        vni: Option<u32>,
        /// Trace the frame as delivered to the port (its ingress security groups) instead of sent by it.
        #[arg(long)]
        receive: bool,
        /// On the VXLAN device: the remote VTEP it came from.
        #[arg(long, requires = "vni")]
        vtep: Option<String>,
    },
}

/// Sends `request`, then prints its reply of type `T`: as a table, or with `--json` as JSON.
/// What `conntrack` can do besides listing.
#[derive(Subcommand)]
enum ConntrackAction {
    /// Delete the tracked connections (of one port, or all): their next packets are judged anew.
    Flush {
        /// Only this port (device name or port id).
        #[arg(long)]
        port: Option<String>,
    },
}

fn ask<T: DeserializeOwned + Serialize>(target: &Target, request: Request, human: fn(&T)) -> Result<()> {
    let result: T = control::query(&target.socket()?, &request)?;
    if target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&Versioned { api_version: API_VERSION, result: &result })?
        );
    } else {
        human(&result);
    }
    Ok(())
}

/// The log: env_logger's lines, or one JSON object per line (`log_format = "json"`).
fn init_logging(format: LogFormat) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let line = serde_json::json!({
                "ts": buf.timestamp_micros().to_string(),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    b.init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // The agent logs as its config says; a config that does not load is reported in text.
    let agent_cfg = match &cli.command {
        Command::Agent { config, .. } => Some(Config::load(config)),
        _ => None,
    };
    let format = match &agent_cfg {
        Some(Ok(cfg)) => cfg.log_format,
        _ => LogFormat::Text,
    };
    init_logging(format);
    match cli.command {
        Command::Agent { config: _, cleanup } => {
            let cfg = agent_cfg.expect("loaded above")?;
            if cleanup {
                return agent::cleanup(&cfg);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            rt.block_on(async { agent::Agent::start(cfg)?.run().await })
        }
        Command::Status(t) => ask(&t, Request::Status {}, cli::print_status),
        Command::Ports(t) => ask(&t, Request::Ports {}, cli::print_ports),
        Command::Networks(t) => ask(&t, Request::Networks {}, cli::print_networks),
        Command::Fdb { target, network } => ask(&target, Request::Fdb { network }, cli::print_fdb),
        Command::Stats { target, port } => ask(&target, Request::Stats { port }, cli::print_stats),
        Command::Metrics(t) => ask(&t, Request::Metrics {}, |m: &MetricsReply| print!("{}", m.text)),
        Command::Monitor { target, port, reason, decisions, pcap, count } => {
            let request = Request::Monitor { port, reason, decisions };
            cli::monitor(&target.socket()?, &request, target.json, pcap.as_deref(), count)
        }
        Command::Conntrack { target, port, action: None } => {
            ask(&target, Request::Conntrack { port }, cli::print_conntrack)
        }
        Command::Conntrack { target, port, action: Some(ConntrackAction::Flush { port: flush_port }) } => {
            ask(&target, Request::ConntrackFlush { port: flush_port.or(port) }, cli::print_flushed)
        }
        Command::Trace { target, port, frame, vni, vtep, receive } => {
            let bytes = cli::frame_arg(&frame)?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            ask(&target, Request::Trace { port, frame: hex, vni, vtep, receive }, cli::print_trace)
        }
    }
}
