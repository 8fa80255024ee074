//! Per-port, per-CPU counters: one per drop reason and one per action. The
//! TC programs count into `PORT_STATS`, the uplinks' XDP stage into
//! `XDP_STATS`, both by the port's stats slot.

use aya_ebpf::maps::PerCpuArray;
use datapath_common::{ACTION_SLOTS, Action, DROP_REASON_SLOTS, DropReason, PortCounters};

use crate::maps::{PORT_STATS, XDP_STATS};

/// A TC program's drop.
#[inline(always)]
pub fn count_drop(slot: u32, reason: DropReason) {
    drop_in(&PORT_STATS, slot, reason);
}

/// A TC program's action.
#[inline(always)]
pub fn count_action(slot: u32, action: Action, n: u64) {
    action_in(&PORT_STATS, slot, action, n);
}

/// The XDP stage's drop.
#[inline(always)]
pub fn count_xdp_drop(slot: u32, reason: DropReason) {
    drop_in(&XDP_STATS, slot, reason);
}

/// The XDP stage's action.
#[inline(always)]
pub fn count_xdp_action(slot: u32, action: Action) {
    action_in(&XDP_STATS, slot, action, 1);
}

#[inline(always)]
fn drop_in(map: &PerCpuArray<PortCounters>, slot: u32, reason: DropReason) {
    let idx = reason as usize;
    if let Some(c) = map.get_ptr_mut(slot)
        && idx < DROP_REASON_SLOTS
    {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).drops[idx] += 1 };
    }
}

#[inline(always)]
fn action_in(map: &PerCpuArray<PortCounters>, slot: u32, action: Action, n: u64) {
    let idx = action as usize;
    if let Some(c) = map.get_ptr_mut(slot)
        && idx < ACTION_SLOTS
    {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).actions[idx] += n };
    }
}
