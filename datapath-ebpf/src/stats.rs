//! Per-port, per-CPU counters: one per drop reason and one per action.

use datapath_common::{ACTION_SLOTS, Action, DROP_REASON_SLOTS, DropReason};

use crate::maps::PORT_STATS;

#[inline(always)]
pub fn count_drop(slot: u32, reason: DropReason) {
    let idx = reason as usize;
    if let Some(c) = PORT_STATS.get_ptr_mut(slot)
        && idx < DROP_REASON_SLOTS
    {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).drops[idx] += 1 };
    }
}

#[inline(always)]
pub fn count_action(slot: u32, action: Action, n: u64) {
    let idx = action as usize;
    if let Some(c) = PORT_STATS.get_ptr_mut(slot)
        && idx < ACTION_SLOTS
    {
        // SAFETY: per-CPU value, only this CPU writes it while this program runs.
        unsafe { (*c).actions[idx] += n };
    }
}
