//! One traced run of a real program: the verdict, the recorded targets and
//! the frame it left, in the model's terms.

use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::{Context, Result};
use aya::maps::PerCpuValues;
use datapath_common::{Action, DropReason, TRACE_DRY_RUN, TRACE_MAGIC, TraceRecord};
use datapath_user::testrun::{self, SkbRun};

use super::shim::Shim;
use crate::{
    model::{HwTag, Target},
    program::Bench,
};

/// The shims, one per program that may need one.
pub struct Shims {
    pub tunnel: Shim,
    pub vm_port_vlan: Shim,
    pub uplink_vlan: Shim,
}

impl Shims {
    /// Loads the shims in front of the bench's programs.
    pub fn new(bench: &mut Bench) -> Result<Self> {
        use datapath_common::names::{PROG_TUNNEL, PROG_UPLINK, PROG_VM_PORT};
        Ok(Shims {
            tunnel: Shim::tunnel(bench.dp.program_fd(PROG_TUNNEL)?).context("loading the tunnel-key shim")?,
            vm_port_vlan: Shim::vlan(bench.dp.program_fd(PROG_VM_PORT)?).context("loading the VLAN shim")?,
            uplink_vlan: Shim::vlan(bench.dp.program_fd(PROG_UPLINK)?).context("loading the VLAN shim")?,
        })
    }
}

/// TC_ACT_SHOT.
pub const TC_ACT_SHOT: u32 = 2;
/// TC_ACT_REDIRECT.
pub const TC_ACT_REDIRECT: u32 = 7;

/// What the kernel did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub retval: u32,
    /// The drop reason's label ("" when not dropped).
    pub reason: String,
    pub action: Option<Action>,
    pub targets: Vec<Target>,
    pub frame: Vec<u8>,
    pub net_index: u32,
}

/// The counter name of drop reason index `i`, also for reasons this build does not know.
pub fn reason_label(i: u32) -> String {
    DropReason::from_index(i).map(|r| r.label().to_string()).unwrap_or_else(|| format!("reason #{i}"))
}

/// How a frame runs.
#[derive(Debug, Clone, Copy)]
pub struct Run<'a> {
    pub prog: &'a str,
    pub ifindex: u32,
    pub frame: &'a [u8],
    /// Non-zero: a GSO super-frame of this segment size.
    pub gso_size: u32,
    /// A dry run (`datapath trace` against a live agent): no counters, no learning, no fragment verdicts.
    pub dry: bool,
    /// (VNI, remote VTEP) of a decapsulated frame: run through a shim, which sets it.
    pub tunnel: Option<(u32, u32)>,
    /// An offloaded VLAN tag: run through a shim, which pushes it (vm_port and uplink_in).
    pub hw: Option<HwTag>,
}

/// Runs a program once, traced. `Ok(None)`: BPF_PROG_TEST_RUN refused the
/// frame (the program never ran).
pub fn run(bench: &mut Bench, shims: &Shims, r: Run) -> Result<Option<Answer>> {
    let Run { prog, ifindex, frame, gso_size, dry, tunnel, hw } = r;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
    let zero = PerCpuValues::try_from(vec![bytemuck::Zeroable::zeroed(); cpus])?;
    bench.dp.maps.trace.set(0, zero, 0).context("clearing TRACE")?;
    let (a, b) = match (tunnel, hw) {
        (Some(key), _) => key,
        (None, Some(tag)) => ((tag.proto as u32) << 16 | tag.tci as u32, 0),
        (None, None) => (0, 0),
    };
    let cb = [TRACE_MAGIC[0], TRACE_MAGIC[1], if dry { TRACE_DRY_RUN } else { 0 }, a, b];
    let out = {
        let fd: BorrowedFd = match (tunnel, hw) {
            (Some(_), _) => shims.tunnel.fd(),
            (None, Some(_)) if prog == datapath_common::names::PROG_UPLINK => shims.uplink_vlan.fd(),
            (None, Some(_)) => shims.vm_port_vlan.fd(),
            (None, None) => bench.dp.program_fd(prog)?,
        };
        let raw = fd.as_raw_fd();
        match testrun::run_skb_gso(fd, &SkbRun { frame, ifindex, cb, mark: 0 }, gso_size) {
            Ok(out) => out,
            // The kernel's own checks of the input (e.g. an IPv4 ethertype with
            // less than an IP header) refuse the run before the program starts.
            Err(e) if format!("{e:#}").contains("EINVAL") => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("test run of {prog} (fd {raw})")),
        }
    };
    let per_cpu = bench.dp.maps.trace.get(&0, 0).context("reading TRACE")?;
    let rec: TraceRecord = per_cpu
        .iter()
        .find(|r| r.valid == 1)
        .copied()
        .with_context(|| format!("{prog} returned {} and recorded no decision", out.retval))?;
    let n = (rec.target_count as usize).min(rec.targets.len());
    let mut targets: Vec<Target> = rec.targets[..n]
        .iter()
        .map(|t| Target { ifindex: t.ifindex, vlan: t.vlan, vtep: t.vtep_ipv4, vni: t.vni })
        .collect();
    targets.sort();
    Ok(Some(Answer {
        retval: out.retval,
        reason: if rec.reason == 0 { String::new() } else { reason_label(rec.reason) },
        action: if rec.reason == 0 { Action::from_index(rec.action) } else { None },
        targets,
        frame: out.frame,
        net_index: rec.net_index,
    }))
}
