//! Thin wrappers over the skb helpers and context fields the programs use.
//! Each one that may move packet data says so: callers re-derive `Pkt` after it.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, bpf_tunnel_key},
    helpers::generated::{
        bpf_redirect, bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key, bpf_skb_vlan_pop, bpf_skb_vlan_push,
    },
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

/// The offloaded (out-of-band) VLAN tag, if the skb carries one: (TPID, VID).
/// The kernel moves 802.1Q and 802.1ad tags alike out of the frame before TC
/// runs, so the TPID must be read here, not from the frame.
#[inline(always)]
pub fn hw_vlan(ctx: &TcContext) -> Option<(u16, u16)> {
    // SAFETY: reading fields of the context the kernel handed us.
    unsafe {
        let skb = &*ctx.skb.skb;
        if skb.vlan_present != 0 {
            Some((u16::from_be(skb.vlan_proto as u16), (skb.vlan_tci & 0x0fff) as u16))
        } else {
            None
        }
    }
}

/// GSO segment size, 0 for a frame that is not a GSO super-frame.
#[inline(always)]
pub fn gso_size(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).gso_size }
}

/// Segments of a GSO super-frame, 0 for a frame that is not one.
#[inline(always)]
pub fn gso_segs(ctx: &TcContext) -> u32 {
    // SAFETY: reading a field of the context the kernel handed us.
    unsafe { (*ctx.skb.skb).gso_segs }
}

/// Tunnel TTL of encapsulated frames.
const TUNNEL_TTL: u8 = 64;

/// Sets the tunnel key the collect-metadata VXLAN device encapsulates with.
#[inline(always)]
pub fn set_tunnel(ctx: &TcContext, vtep_ipv4: u32, vni: u32) -> Result<(), DropReason> {
    // SAFETY: bpf_tunnel_key is plain data; zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.__bindgen_anon_1.remote_ipv4 = vtep_ipv4;
    key.tunnel_ttl = TUNNEL_TTL;
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: helper call on our own context with a key of the size passed.
    if unsafe { bpf_skb_set_tunnel_key(ctx.skb.skb, &mut key, size, 0) } != 0 {
        return Err(DropReason::TunnelOpFailed);
    }
    Ok(())
}

/// The (VNI, remote VTEP) a decapsulated frame arrived with.
#[inline(always)]
pub fn tunnel(ctx: &TcContext) -> Result<(u32, u32), DropReason> {
    // SAFETY: bpf_tunnel_key is plain data; zero is a valid value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    let size = core::mem::size_of::<bpf_tunnel_key>() as u32;
    // SAFETY: helper call on our own context with a key of the size passed.
    if unsafe { bpf_skb_get_tunnel_key(ctx.skb.skb, &mut key, size, 0) } != 0 {
        return Err(DropReason::TunnelOpFailed);
    }
    // SAFETY: an IPv4 key (no BPF_F_TUNINFO_IPV6) fills remote_ipv4.
    Ok((key.tunnel_id, unsafe { key.__bindgen_anon_1.remote_ipv4 }))
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
