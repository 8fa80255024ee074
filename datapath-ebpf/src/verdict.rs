//! The one exit of every program: count the outcome, record it when traced,
//! return the TC verdict.

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use datapath_common::{Action, DropReason};

use crate::{monitor, stats, trace};

/// What a program learned about the frame on its way to a verdict.
pub struct Meta {
    /// Stats slot of the ingress port (0: unknown port).
    pub slot: u32,
    /// Network the frame was classified into (0: not yet).
    pub net_index: u32,
    /// Record the decision in `TRACE` and send no copies.
    pub trace: bool,
    /// Change no live state: no counters, no learning (a dry-run trace).
    pub dry_run: bool,
    /// A port's egress (what it receives): `rx` counts what a port sends, so
    /// only the outcome is counted.
    pub egress: bool,
}

impl Meta {
    /// The state of a fresh run of a program on `ctx`.
    #[inline(always)]
    pub fn new(ctx: &aya_ebpf::programs::TcContext) -> Self {
        let trace = trace::requested(ctx);
        Self { slot: 0, net_index: 0, trace, dry_run: trace && trace::dry_run(ctx), egress: false }
    }
}

/// A frame that was not dropped: what happened to it and the TC return code.
pub struct Verdict {
    pub action: Action,
    pub ret: i32,
}

/// Counts the outcome under the ingress port, reports it to a monitor that
/// wants it, and returns the TC verdict. `program`: the `MONITOR_PROGRAMS` index.
#[inline(always)]
pub fn finish(ctx: &TcContext, meta: &Meta, program: u32, res: Result<Verdict, DropReason>) -> i32 {
    if !meta.dry_run && !meta.egress {
        stats::count_action(meta.slot, Action::Received, 1);
    }
    match res {
        Ok(v) => {
            if !meta.dry_run {
                stats::count_action(meta.slot, v.action, 1);
                monitor::observe(ctx, meta.slot, meta.net_index, program, (0, v.action as u32));
            }
            if meta.trace {
                trace::verdict(v.action as u32, 0, meta.net_index);
            }
            v.ret
        }
        Err(reason) => {
            if !meta.dry_run {
                stats::count_drop(meta.slot, reason);
                monitor::observe(ctx, meta.slot, meta.net_index, program, (reason as u32, 0));
            }
            if meta.trace {
                trace::verdict(0, reason as u32, meta.net_index);
            }
            TC_ACT_SHOT
        }
    }
}
