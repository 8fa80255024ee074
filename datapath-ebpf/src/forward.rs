//! Bridging inside one network: FDB lookup, delivery to a local port, to the
//! wire (the uplink, tagged with the segmentation id; or a tunnel, with the
//! remote VTEP and VNI as tunnel key), or flooding.
//!
//! Flooding clones with `bpf_clone_redirect` to every target but the last and
//! redirects the original to the last one, so a flood costs one copy per
//! extra target and never a drop of the original. Local ports come first:
//! the VLAN tag (or tunnel key) is only set once they have their copies.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use datapath_common::{
    Action, DropReason, FDB_F_LOCAL, FdbKey, LearnedEntry, MAX_FLOOD_PORTS, MAX_FLOOD_VTEPS, NET_TYPE_VLAN,
    NET_TYPE_VXLAN, NetInfo,
};

use crate::{
    maps::{FDB, FDB_LEARNED, FLOOD_SETS, FLOOD_VTEPS},
    parse::{ETH_LEN, is_multicast},
    skb, stats, trace,
    verdict::{Meta, Verdict},
};

/// Where the frame entered the network on this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// A VM or namespace port.
    Port,
    /// The wire: the uplink of a physical network, or a tunnel.
    Wire,
}

/// One destination and what the frame needs on its way there.
#[derive(Clone, Copy)]
struct Target {
    ifindex: u32,
    /// VLAN id to push (VLAN uplink); 0 for none.
    vlan: u32,
    /// Remote VTEP (tunnel); 0 for none.
    vtep: u32,
    vni: u32,
}

impl Target {
    const NONE: Target = Target { ifindex: 0, vlan: 0, vtep: 0, vni: 0 };

    const fn port(ifindex: u32) -> Self {
        Target { ifindex, vlan: 0, vtep: 0, vni: 0 }
    }

    /// The wire target of `net` towards `vtep` (ignored for VLAN/flat networks).
    fn wire(net: &NetInfo, vtep: u32) -> Self {
        if net.net_type == NET_TYPE_VXLAN {
            return Target { ifindex: net.uplink_ifindex, vlan: 0, vtep, vni: net.segmentation_id };
        }
        let vlan = if net.net_type == NET_TYPE_VLAN { net.segmentation_id } else { 0 };
        Target { ifindex: net.uplink_ifindex, vlan, vtep: 0, vni: 0 }
    }
}

/// Delivers a frame of network `meta.net_index` to `dst`.
#[inline(always)]
pub fn forward(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    ingress: u32,
    from: From,
    dst: &[u8; 6],
) -> Result<Verdict, DropReason> {
    if is_multicast(dst) {
        return flood(ctx, meta, net, ingress, from);
    }
    let key = FdbKey { net_index: meta.net_index, mac: *dst, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(entry) = unsafe { FDB.get(key) } {
        if entry.flags & FDB_F_LOCAL != 0 {
            if entry.ifindex == ingress {
                return Err(DropReason::Hairpin);
            }
            return send(ctx, meta, Target::port(entry.ifindex), Action::ToLocalPort);
        }
        return to_wire(ctx, meta, net, from, entry.vtep_ipv4);
    }
    // SAFETY: read-only use of an LRU value; a concurrent update only refreshes it.
    if let Some(seen) = unsafe { FDB_LEARNED.get(key) } {
        return to_wire(ctx, meta, net, from, seen.vtep_ipv4);
    }
    flood(ctx, meta, net, ingress, from)
}

/// Learns (or refreshes) `src` as living behind `ifindex` (and `vtep` for tunnels).
/// A local port's MAC is never learned from the wire: such a frame is a spoof or a loop.
#[inline(always)]
pub fn learn(meta: &Meta, ifindex: u32, vtep_ipv4: u32, src: &[u8; 6]) -> Result<(), DropReason> {
    /// A learned entry is rewritten at most this often per MAC, to keep writes off the fast path.
    const LEARN_REFRESH_NS: u64 = 1_000_000_000;
    let key = FdbKey { net_index: meta.net_index, mac: *src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(entry) = unsafe { FDB.get(key) } {
        if entry.flags & FDB_F_LOCAL != 0 {
            return Err(DropReason::UplinkSrcIsLocal);
        }
        // Statically known remote MACs (l2population) need no learning.
        return Ok(());
    }
    if meta.dry_run {
        return Ok(());
    }
    // SAFETY: reading the time has no preconditions.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    // SAFETY: LRU value read; a racing writer only refreshes the same entry.
    if let Some(seen) = unsafe { FDB_LEARNED.get(key) }
        && seen.ifindex == ifindex
        && seen.vtep_ipv4 == vtep_ipv4
        && now.wrapping_sub(seen.last_seen_ns) < LEARN_REFRESH_NS
    {
        return Ok(());
    }
    let entry = LearnedEntry { ifindex, vtep_ipv4, last_seen_ns: now };
    // A full LRU evicts the oldest entry; an insert error leaves the MAC unknown (flooded).
    if FDB_LEARNED.insert(key, entry, 0).is_ok() {
        stats::count_action(meta.slot, Action::Learned, 1);
    }
    Ok(())
}

/// A destination on the wire: only frames from local ports go there.
#[inline(always)]
fn to_wire(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    from: From,
    vtep: u32,
) -> Result<Verdict, DropReason> {
    if from == From::Wire {
        return Err(DropReason::Hairpin);
    }
    if net.uplink_ifindex == 0 {
        return Err(DropReason::RedirectFailed);
    }
    if net.net_type == NET_TYPE_VXLAN {
        if vtep == 0 {
            return Err(DropReason::TunnelOpFailed);
        }
        check_tunnel_mtu(ctx, net)?;
    }
    send(ctx, meta, Target::wire(net, vtep), Action::ToUplink)
}

/// Frames larger than the network MTU cannot be encapsulated into the
/// underlay; GSO super-frames are cut to the sender's MSS, which the MTU bounds.
#[inline(always)]
fn check_tunnel_mtu(ctx: &TcContext, net: &NetInfo) -> Result<(), DropReason> {
    if skb::gso_size(ctx) == 0 && ctx.len() > net.mtu + ETH_LEN as u32 {
        return Err(DropReason::MtuExceeded);
    }
    Ok(())
}

/// What a frame needs before it leaves towards `t`: a tunnel key, a VLAN tag.
/// May move packet data.
#[inline(always)]
fn prepare(ctx: &TcContext, t: &Target) -> Result<(), DropReason> {
    if t.vtep != 0 {
        skb::set_tunnel(ctx, t.vtep, t.vni)?;
    }
    if t.vlan != 0 {
        skb::vlan_push(ctx, t.vlan)?;
    }
    Ok(())
}

/// Sends the frame itself to `t`.
#[inline(always)]
fn send(ctx: &TcContext, meta: &Meta, t: Target, action: Action) -> Result<Verdict, DropReason> {
    if meta.trace {
        trace::target(t.ifindex, t.vlan, t.vtep, t.vni);
    }
    prepare(ctx, &t)?;
    Ok(Verdict { action, ret: skb::redirect(t.ifindex)? })
}

/// One extra copy of a flooded frame. A failed copy is counted, the flood goes on.
#[inline(always)]
fn copy(ctx: &TcContext, meta: &Meta, t: &Target) {
    if meta.trace {
        trace::target(t.ifindex, t.vlan, t.vtep, t.vni);
        return;
    }
    if prepare(ctx, t).is_err() || ctx.clone_redirect(t.ifindex, 0).is_err() {
        stats::count_drop(meta.slot, DropReason::RedirectFailed);
    }
}

/// Broadcast, multicast and unknown unicast: every local port of the network
/// but the ingress, plus (for frames from local ports) the uplink, or every
/// remote VTEP that hosts a port of the network (head-end replication).
#[inline(always)]
fn flood(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    ingress: u32,
    from: From,
) -> Result<Verdict, DropReason> {
    let mut pending = Target::NONE;
    let mut copies = 0u64;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    if let Some(set) = unsafe { FLOOD_SETS.get(meta.net_index) } {
        let count = set.count as usize;
        for i in 0..MAX_FLOOD_PORTS {
            if i >= count {
                break;
            }
            let target = set.ifindex[i];
            if target == 0 || target == ingress {
                continue;
            }
            if pending.ifindex != 0 {
                copy(ctx, meta, &pending);
                copies += 1;
            }
            pending = Target::port(target);
        }
    }
    if from == From::Port && net.uplink_ifindex != 0 {
        if net.net_type != NET_TYPE_VXLAN {
            if pending.ifindex != 0 {
                copy(ctx, meta, &pending);
                copies += 1;
            }
            pending = Target::wire(net, 0);
        } else if check_tunnel_mtu(ctx, net).is_err() {
            // Local ports still get it; the tunnel cannot carry it.
            if !meta.dry_run {
                stats::count_drop(meta.slot, DropReason::MtuExceeded);
            }
        // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
        } else if let Some(vteps) = unsafe { FLOOD_VTEPS.get(meta.net_index) } {
            let count = vteps.count as usize;
            for i in 0..MAX_FLOOD_VTEPS {
                if i >= count {
                    break;
                }
                let vtep = vteps.vtep_ipv4[i];
                if vtep == 0 {
                    continue;
                }
                if pending.ifindex != 0 {
                    copy(ctx, meta, &pending);
                    copies += 1;
                }
                pending = Target::wire(net, vtep);
            }
        }
    }
    if pending.ifindex == 0 {
        return Err(DropReason::FloodNoTarget);
    }
    send(ctx, meta, pending, Action::Flooded)?;
    if !meta.dry_run {
        stats::count_action(meta.slot, Action::FloodCopies, copies);
    }
    Ok(Verdict { action: Action::Flooded, ret: TC_ACT_REDIRECT })
}
