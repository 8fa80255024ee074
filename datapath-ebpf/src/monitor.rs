//! Live events for `datapath monitor`: the drops, and on request every
//! decision at one device, with the first bytes of the frame, through a ring
//! buffer to the agent.
//!
//! Nobody listening costs one array load per frame: `MONITOR` is all zero
//! then. A listener's events are rate-limited per CPU (`MONITOR_EVENTS_PER_SEC`
//! in one-second windows), so that a drop storm costs the CPU a counter
//! increment per frame, not a ring buffer record; what is not sent is
//! counted in `MonitorRate::suppressed`, as are records the full ring refused.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    cty::c_void,
    helpers::generated::{bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use datapath_common::{
    MONITOR_EVENTS_PER_SEC, MONITOR_F_DECISIONS, MONITOR_F_DROPS, MONITOR_SNAP, MonitorEvent,
};

use crate::{
    maps::{MONITOR, MONITOR_EVENTS, MONITOR_RATE},
    skb,
};

const WINDOW_NS: u64 = 1_000_000_000;

/// Reports the outcome of a run (`reason`: the drop reason or 0; `action`
/// when not dropped) of program `program` (`MONITOR_PROGRAMS` index) if a
/// listener wants it.
#[inline(always)]
pub fn observe(ctx: &TcContext, slot: u32, net_index: u32, program: u32, (reason, action): (u32, u32)) {
    if wanted(reason, || skb::ifindex(ctx)) {
        dp_monitor_report(
            ctx.skb.skb,
            slot,
            net_index << 8 | program,
            u64::from(reason) << 32 | u64::from(action),
        );
    }
}

/// Whether a listener wants the outcome (`reason`: the drop reason or 0) of
/// a run at the device `ifindex()` names, which is read only when someone listens.
#[inline(always)]
fn wanted(reason: u32, ifindex: impl FnOnce() -> u32) -> bool {
    let Some(cfg) = MONITOR.get(0) else { return false };
    let flags = cfg.flags;
    if flags == 0 {
        return false;
    }
    (reason != 0 && flags & MONITOR_F_DROPS != 0)
        || (flags & MONITOR_F_DECISIONS != 0 && cfg.ifindex == ifindex())
}

/// `observe` for the XDP stages (programs `PROG_INDEX_UPLINK_XDP`, `PROG_INDEX_UNDERLAY_XDP`).
#[inline(always)]
pub fn observe_xdp(ctx: &XdpContext, slot: u32, net_index: u32, program: u32, (reason, action): (u32, u32)) {
    if wanted(reason, || ctx.ingress_ifindex() as u32) {
        dp_monitor_report_xdp(
            ctx.ctx,
            slot,
            net_index << 8 | program,
            u64::from(reason) << 32 | u64::from(action),
        );
    }
}

/// `dp_monitor_report` for an XDP frame; returns 0. Global for the same reason.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dp_monitor_report_xdp(md: *mut xdp_md, slot: u32, net_program: u32, outcome: u64) -> u32 {
    if md.is_null() {
        return 0;
    }
    let ctx = XdpContext::new(md);
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: the helper reads the length of the frame this program runs on.
    let len = unsafe { bpf_xdp_get_buff_len(md) } as u32;
    emit(ifindex, slot, net_program, outcome, len, |snap, n| {
        // SAFETY: `snap` has MONITOR_SNAP bytes and `n` is at most that; the helper bounds-checks the frame.
        unsafe { bpf_xdp_load_bytes(md, 0, snap, n) == 0 }
    });
    0
}

/// Sends one event, within this CPU's rate; returns 0. A global function: the verifier
/// checks it once, not once per state that reaches a program's exit (which
/// multiplied the uplink program's verification by ten on 6.1). Its
/// arguments are packed, as a BPF call takes five: `net_program` is
/// net_index << 8 | program, `outcome` reason << 32 | action.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dp_monitor_report(skb: *mut __sk_buff, slot: u32, net_program: u32, outcome: u64) -> u32 {
    if skb.is_null() {
        return 0;
    }
    report(skb, slot, net_program, outcome);
    0
}

/// `dp_monitor_report`'s work; global functions must return a scalar.
#[inline(always)]
fn report(skb: *mut __sk_buff, slot: u32, net_program: u32, outcome: u64) {
    let ctx = TcContext::new(skb);
    let ifindex = skb::ifindex(&ctx);
    let len = ctx.len();
    let skb = ctx.skb.skb as *const c_void;
    emit(ifindex, slot, net_program, outcome, len, |snap, n| {
        // SAFETY: `snap` has MONITOR_SNAP bytes and `n` is at most that; the helper bounds-checks the skb.
        unsafe { bpf_skb_load_bytes(skb, 0, snap, n) == 0 }
    });
}

/// Writes one event (its first bytes through `load(snap, n)`) to the ring,
/// within this CPU's rate.
#[inline(always)]
fn emit(
    ifindex: u32,
    slot: u32,
    net_program: u32,
    outcome: u64,
    len: u32,
    load: impl FnOnce(*mut c_void, u32) -> bool,
) {
    let (reason, action) = ((outcome >> 32) as u32, outcome as u32);
    let Some(rate) = MONITOR_RATE.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU value, only this CPU writes it while this program runs.
    let rate = unsafe { &mut *rate };
    // SAFETY: a helper without arguments.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    if now.wrapping_sub(rate.window_ns) >= WINDOW_NS {
        rate.window_ns = now;
        rate.sent = 0;
    }
    if rate.sent >= MONITOR_EVENTS_PER_SEC {
        rate.suppressed += 1;
        return;
    }
    let Some(mut entry) = MONITOR_EVENTS.reserve::<MonitorEvent>(0) else {
        rate.suppressed += 1;
        return;
    };
    rate.sent += 1;
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, MonitorEvent-sized; every field is written before submit.
    unsafe {
        (*ev).ts_ns = now;
        (*ev).ifindex = ifindex;
        (*ev).slot = slot;
        (*ev).reason = reason;
        (*ev).action = action;
        (*ev).len = len;
        (*ev).program = net_program & 0xff;
        (*ev).net_index = net_program >> 8;
        (*ev).snap = [0; MONITOR_SNAP];
        let snap = (*ev).snap.as_mut_ptr() as *mut c_void;
        // The size in a form that the 6.1 verifier bounds to 1..=MONITOR_SNAP
        // (the helpers refuse 0): a test against 0 alone does not raise its
        // lower bound there, an addition of 1 does.
        let copied = if len as usize >= MONITOR_SNAP {
            load(snap, MONITOR_SNAP as u32)
        } else if len > 0 {
            load(snap, ((len - 1) & (MONITOR_SNAP as u32 - 1)) + 1)
        } else {
            false
        };
        (*ev).snap_len = if !copied { 0 } else { len.min(MONITOR_SNAP as u32) };
    }
    entry.submit(0);
}
