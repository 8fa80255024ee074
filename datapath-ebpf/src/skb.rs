//! Thin wrappers over the skb helpers and context fields the programs use.
//! Each one that may move packet data says so: callers re-derive `Pkt` after it.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::generated::{bpf_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push},
    programs::TcContext,
};
use datapath_common::DropReason;

use crate::parse::ETH_P_8021Q;

/// The device the program runs on.
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The offloaded (out-of-band) VLAN tag, if the skb carries one.
#[inline(always)]
pub fn hw_vlan(ctx: &TcContext) -> Option<u16> {
    // SAFETY: reading fields of the context the kernel handed us.
    unsafe {
        if (*ctx.skb.skb).vlan_present != 0 { Some(((*ctx.skb.skb).vlan_tci & 0x0fff) as u16) } else { None }
    }
}

/// Pushes an 802.1Q tag. Moves packet data (or the offloaded tag).
#[inline(always)]
pub fn vlan_push(ctx: &TcContext, vid: u32) -> Result<(), DropReason> {
    // SAFETY: helper call on our own context.
    let r = unsafe { bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), vid as u16) };
    if r != 0 {
        return Err(DropReason::VlanOpFailed);
    }
    Ok(())
}

/// Pops the outer tag, offloaded or in-band. Moves packet data.
#[inline(always)]
pub fn vlan_pop(ctx: &TcContext) -> Result<(), DropReason> {
    // SAFETY: helper call on our own context.
    let r = unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
    if r != 0 {
        return Err(DropReason::VlanOpFailed);
    }
    Ok(())
}

/// Redirects the frame to the egress of `ifindex`; returns the TC verdict to use.
#[inline(always)]
pub fn redirect(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: helper call; it only records the target for after the program returns.
    let r = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if r != TC_ACT_REDIRECT {
        return Err(DropReason::RedirectFailed);
    }
    Ok(r)
}
