//! Decision records for `datapath trace` and the program tests.
//!
//! A run is traced when the caller of `BPF_PROG_TEST_RUN` puts `TRACE_MAGIC`
//! in `cb[0..2]`. A traced run records every destination and the verdict in
//! the per-CPU `TRACE` map, and never clones a frame out of the test run.

use aya_ebpf::programs::TcContext;
use datapath_common::{MAX_TRACE_TARGETS, TRACE_DRY_RUN, TRACE_MAGIC};

use crate::maps::TRACE;

/// Whether the caller asked for a decision record.
#[inline(always)]
pub fn requested(ctx: &TcContext) -> bool {
    let cb = ctx.cb();
    cb.len() >= 2 && cb[0] == TRACE_MAGIC[0] && cb[1] == TRACE_MAGIC[1]
}

/// Whether a traced run must not touch counters or learned MACs.
#[inline(always)]
pub fn dry_run(ctx: &TcContext) -> bool {
    let cb = ctx.cb();
    cb.len() >= 3 && cb[2] == TRACE_DRY_RUN
}

/// The (VNI, remote VTEP) a traced run of `tunnel_in` asks for in `cb[3]`
/// and `cb[4]`: `BPF_PROG_TEST_RUN` cannot attach tunnel metadata to a frame,
/// so `datapath trace` and the program tests inject it this way. Only a
/// traced run (`TRACE_MAGIC`) may, and only with a VNI.
#[inline(always)]
pub fn injected_tunnel(ctx: &TcContext) -> Option<(u32, u32)> {
    let cb = ctx.cb();
    (requested(ctx) && cb.len() >= 5 && cb[3] != 0).then(|| (cb[3], cb[4]))
}

/// Records one destination of the frame, with the VLAN pushed or the tunnel key set for it.
#[inline(always)]
pub fn target(ifindex: u32, vlan: u32, vtep_ipv4: u32, vni: u32) {
    if let Some(rec) = TRACE.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this run.
        let rec = unsafe { &mut *rec };
        let n = rec.target_count as usize;
        if n < MAX_TRACE_TARGETS {
            rec.targets[n].ifindex = ifindex;
            rec.targets[n].vlan = vlan;
            rec.targets[n].vtep_ipv4 = vtep_ipv4;
            rec.targets[n].vni = vni;
            rec.target_count = n as u32 + 1;
        }
    }
}

/// Records what admitted the frame past the port's security groups (`SG_JUDGED_*` or rule + 1).
#[inline(always)]
pub fn judged(sg_judged: u32) {
    if let Some(rec) = TRACE.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this run.
        unsafe { (*rec).sg_judged = sg_judged };
    }
}

/// Records the verdict: an action, or a drop reason.
#[inline(always)]
pub fn verdict(action: u32, reason: u32, net_index: u32) {
    if let Some(rec) = TRACE.get_ptr_mut(0) {
        // SAFETY: per-CPU value of this run.
        let rec = unsafe { &mut *rec };
        rec.valid = 1;
        rec.action = action;
        rec.reason = reason;
        rec.net_index = net_index;
    }
}
