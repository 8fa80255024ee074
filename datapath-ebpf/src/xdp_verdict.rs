//! The XDP stages' state and their one exit (the uplinks' `uplink_xdp`,
//! the underlay's `underlay_xdp`): count the outcome in `XDP_STATS`, record
//! it when traced, report it to the monitor, return the XDP verdict.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    programs::XdpContext,
};
use datapath_common::{Action, DropReason, TRACE_DRY_RUN, TRACE_MAGIC};

use crate::{monitor, stats, trace};

/// What the stage learned about a frame on its way to a verdict.
#[derive(Default)]
pub struct XdpMeta {
    /// Stats slot the run counts under (0: unknown device).
    pub slot: u32,
    /// Network the frame was classified into (0: none).
    pub net_index: u32,
    /// `datapath trace` runs this: record the verdict, count nothing.
    pub traced: bool,
    /// Stats slot of the tap the fast path sent the frame to.
    pub tap_slot: u32,
}

impl XdpMeta {
    /// The state of a fresh run on `ctx`.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self { traced: traced(ctx), ..Self::default() }
    }
}

/// Whether `datapath trace` runs the stage: `TRACE_MAGIC` and `TRACE_DRY_RUN`
/// in the frame's metadata, which `BPF_PROG_TEST_RUN` can set and a driver
/// never does (no other program runs before a stage on its device).
#[inline(always)]
fn traced(ctx: &XdpContext) -> bool {
    let (meta, data) = (ctx.metadata(), ctx.data());
    if meta + 12 > data {
        return false;
    }
    // SAFETY: the 12 bytes lie between data_meta and data, checked above.
    let words = unsafe { core::ptr::read_unaligned(meta as *const [u32; 3]) };
    words[0] == TRACE_MAGIC[0] && words[1] == TRACE_MAGIC[1] && words[2] == TRACE_DRY_RUN
}

/// The XDP stages' one exit: counts the outcome under `meta.slot` in
/// `XDP_STATS` (or, traced, records it instead), reports it to a monitor that
/// wants it, and returns the XDP verdict. `program`: the `MONITOR_PROGRAMS` index.
#[inline(always)]
pub fn finish(ctx: &XdpContext, meta: &XdpMeta, program: u32, res: Result<Action, DropReason>) -> u32 {
    let (action, reason, verdict) = match res {
        Ok(Action::Redirected) => (Action::Redirected as u32, 0, XDP_REDIRECT),
        Ok(action) => (action as u32, 0, XDP_PASS),
        Err(reason) => (0, reason as u32, XDP_DROP),
    };
    if meta.traced {
        trace::verdict(action, reason, meta.net_index);
        return verdict;
    }
    stats::count_xdp_action(meta.slot, Action::Received);
    match res {
        Ok(action) => stats::count_xdp_action(meta.slot, action),
        Err(reason) => stats::count_xdp_drop(meta.slot, reason),
    }
    monitor::observe_xdp(ctx, meta.slot, meta.net_index, program, (reason, action));
    // What the tap's egress program would have counted, had the frame passed there.
    if verdict == XDP_REDIRECT {
        stats::count_action(meta.tap_slot, Action::Delivered, 1);
    }
    verdict
}
