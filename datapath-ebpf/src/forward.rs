//! Bridging inside one network: FDB lookup, delivery to a local port, to the
//! uplink (tagged with the segmentation id), or flooding.
//!
//! Flooding clones with `bpf_clone_redirect` to every local member but the
//! ingress and redirects the original to the last target, so a flood costs one
//! copy per extra target and never a drop of the original.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use datapath_common::{Action, DropReason, FDB_F_LOCAL, FdbKey, MAX_FLOOD_PORTS, NET_TYPE_VLAN, NetInfo};

use crate::{
    maps::{FDB, FDB_LEARNED, FLOOD_SETS},
    parse::is_multicast,
    skb, stats, trace,
    verdict::{Meta, Verdict},
};

/// Where the frame entered the network on this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum From {
    /// A VM or namespace port.
    Port,
    /// The uplink of the network's physical network.
    Uplink,
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
            return send(meta, entry.ifindex, 0, Action::ToLocalPort);
        }
        return to_uplink(ctx, meta, net, from);
    }
    // SAFETY: read-only use of an LRU value; a concurrent update only refreshes it.
    if unsafe { FDB_LEARNED.get(key) }.is_some() {
        return to_uplink(ctx, meta, net, from);
    }
    flood(ctx, meta, net, ingress, from)
}

/// A destination behind the uplink: only frames from local ports go there.
#[inline(always)]
fn to_uplink(ctx: &TcContext, meta: &Meta, net: &NetInfo, from: From) -> Result<Verdict, DropReason> {
    if from == From::Uplink {
        return Err(DropReason::Hairpin);
    }
    if net.uplink_ifindex == 0 {
        return Err(DropReason::RedirectFailed);
    }
    let vlan = tag_for_uplink(ctx, net)?;
    send(meta, net.uplink_ifindex, vlan, Action::ToUplink)
}

/// Tags a frame leaving on the uplink of a VLAN network; returns the VLAN id (0: untagged).
#[inline(always)]
fn tag_for_uplink(ctx: &TcContext, net: &NetInfo) -> Result<u32, DropReason> {
    if net.net_type == NET_TYPE_VLAN {
        skb::vlan_push(ctx, net.segmentation_id)?;
        return Ok(net.segmentation_id);
    }
    Ok(0)
}

#[inline(always)]
fn send(meta: &Meta, ifindex: u32, vlan: u32, action: Action) -> Result<Verdict, DropReason> {
    if meta.trace {
        trace::target(ifindex, vlan);
    }
    Ok(Verdict { action, ret: skb::redirect(ifindex)? })
}

/// One extra copy of a flooded frame. A failed copy is counted, the flood goes on.
#[inline(always)]
fn copy(ctx: &TcContext, meta: &Meta, ifindex: u32) {
    if meta.trace {
        trace::target(ifindex, 0);
        return;
    }
    if ctx.clone_redirect(ifindex, 0).is_err() {
        stats::count_drop(meta.slot, DropReason::RedirectFailed);
    }
}

/// Broadcast, multicast and unknown unicast: every local port of the network
/// but the ingress, plus the uplink when the frame came from a local port.
#[inline(always)]
fn flood(
    ctx: &TcContext,
    meta: &Meta,
    net: &NetInfo,
    ingress: u32,
    from: From,
) -> Result<Verdict, DropReason> {
    let mut last = 0u32;
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
            if last != 0 {
                copy(ctx, meta, last);
                copies += 1;
            }
            last = target;
        }
    }
    let uplink = if from == From::Port { net.uplink_ifindex } else { 0 };
    if uplink != 0 {
        if last != 0 {
            copy(ctx, meta, last);
            copies += 1;
        }
        let vlan = tag_for_uplink(ctx, net)?;
        send(meta, uplink, vlan, Action::Flooded)?;
    } else if last != 0 {
        send(meta, last, 0, Action::Flooded)?;
    } else {
        return Err(DropReason::FloodNoTarget);
    }
    if !meta.dry_run {
        stats::count_action(meta.slot, Action::FloodCopies, copies);
    }
    Ok(Verdict { action: Action::Flooded, ret: TC_ACT_REDIRECT })
}
