//! The uplinks' XDP stage: what the driver hands over, before any skb
//! exists. It drops what this node must never accept (frames of a segment
//! it does not serve, frames that claim a local port's MAC or an invalid
//! source, malformed frames); it sends known unicast for a local tap that
//! needs nothing else straight to the tap (the fast path); and it passes
//! everything else to the TC stage (`uplink_in`) unchanged, which bridges it
//! as before, or hands the node's own untagged traffic to the host
//! (`untagged_to_host`).
//!
//! The fast path takes a frame only when the TC stage would do nothing but
//! remove the tag and redirect it to the tap, and the tap's egress program
//! nothing but count it: the destination is a local port of the frame's
//! network, up, without security groups (whose ingress rules run on the
//! tap's egress, which an XDP redirect bypasses), on a device in `XDP_TAPS`
//! (a tun, which takes XDP frames); and the source needs no learning (known,
//! or learned through this uplink recently enough that TC would not refresh it). A frame
//! that misses any of these goes to TC, which learns, floods, filters.
//!
//! The agent turns the uplink's rx VLAN offload off while this stage runs,
//! so the tag is in the frame: an untagged frame here is untagged on the wire.

use aya_ebpf::{
    bindings::xdp_action::{XDP_PASS, XDP_REDIRECT},
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use datapath_common::{
    Action, DropReason, FDB_F_LOCAL, FdbKey, PORT_F_ADMIN_UP, PORT_F_HOST_UNTAGGED, PORT_F_QOS,
    PORT_F_SECGROUPS, SEGMENT_UNTAGGED, SegmentKey,
};

use crate::{
    forward::learned_fresh,
    maps::{FDB, FDB_LEARNED, NET_BY_SEGMENT, PORTS, XDP_TAPS, XDP_UNDERLAY},
    parse::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_IPV4, Eth, Pkt, is_multicast, is_zero},
    trace, underlay_xdp,
    xdp_verdict::XdpMeta,
};

/// The 802.1Q tag: TCI and the inner ethertype.
const VLAN_TAG_LEN: usize = 4;

/// Checks a frame from the wire; `Ok` passes it to the TC stage.
#[inline(always)]
pub fn try_uplink_xdp(ctx: &XdpContext, meta: &mut XdpMeta) -> Result<Action, DropReason> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;

    let pkt = Pkt::xdp(ctx);
    let eth = Eth::parse(&pkt)?;
    let segment = match eth.ethertype {
        ETH_P_8021Q => {
            // The whole tag must be there: the TCI and the inner ethertype.
            pkt.be16_at(ETH_LEN + VLAN_TAG_LEN - 2)?;
            (pkt.be16_at(ETH_LEN)? & 0x0fff) as u32
        }
        // An 802.1ad S-tag is not a Neutron segment, whatever its VID.
        ETH_P_8021AD => return Err(DropReason::UnknownSegment),
        _ => SEGMENT_UNTAGGED,
    };
    // SAFETY: as above.
    let Some(&net_index) = (unsafe { NET_BY_SEGMENT.get(SegmentKey { ifindex, segment }) }) else {
        // The node's own address on the uplink: the host stack takes what no flat network claims.
        if segment == SEGMENT_UNTAGGED && port.flags & PORT_F_HOST_UNTAGGED != 0 {
            // And maybe its VTEP: tunnel traffic is checked here as on an underlay of its own.
            // SAFETY: as above.
            if eth.ethertype == ETH_P_IPV4
                && let Some(info) = unsafe { XDP_UNDERLAY.get(ifindex) }.copied()
            {
                let uplink_slot = meta.slot;
                let seen = underlay_xdp::check_tunnel(&pkt, ETH_LEN, &info, meta);
                // Counted as the uplink's, whose stage this is.
                meta.slot = uplink_slot;
                seen?;
            }
            return Ok(Action::Passed);
        }
        return Err(DropReason::UnknownSegment);
    };
    meta.net_index = net_index;
    if is_multicast(&eth.src) || is_zero(&eth.src) {
        return Err(DropReason::SrcMacInvalid);
    }
    let key = FdbKey { net_index, mac: eth.src, _pad: [0; 2] };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected for this run.
    let src_static = match unsafe { FDB.get(key) } {
        Some(entry) if entry.flags & FDB_F_LOCAL != 0 => return Err(DropReason::UplinkSrcIsLocal),
        Some(_) => true,
        None => false,
    };
    let Some(tap) = fast_path_target(meta, &eth, ifindex, src_static) else {
        return Ok(Action::Passed);
    };
    if meta.traced {
        // A dry run redirects nothing: it asks the map what a redirect would find.
        if XDP_TAPS.get_ifindex(tap).is_none() {
            return Ok(Action::Passed);
        }
        trace::target(tap, 0, 0, 0);
    } else if XDP_TAPS.redirect(tap, XDP_PASS as u64) != Ok(XDP_REDIRECT) {
        // Not a tun (or gone since): the TC stage delivers it.
        return Ok(Action::Passed);
    }
    // The redirect is only recorded so far: the frame leaves when the program returns.
    if segment != SEGMENT_UNTAGGED {
        pop_tag(ctx)?;
    }
    Ok(Action::Redirected)
}

/// The tap that known unicast `eth` of `meta.net_index` goes to, when the
/// fast path may take it (see the module's doc); `src_static`: the source
/// is a remote MAC the agent programmed.
#[inline(always)]
fn fast_path_target(meta: &mut XdpMeta, eth: &Eth, ingress: u32, src_static: bool) -> Option<u32> {
    if is_multicast(&eth.dst) {
        return None;
    }
    let net_index = meta.net_index;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let dst = *unsafe { FDB.get(FdbKey { net_index, mac: eth.dst, _pad: [0; 2] }) }?;
    if dst.flags & FDB_F_LOCAL == 0 || dst.ifindex == ingress {
        return None;
    }
    // SAFETY: as above.
    let port = *unsafe { PORTS.get(dst.ifindex) }?;
    // Its security groups and QoS limits run in TC, on the tap's egress.
    if port.net_index != net_index
        || port.flags & (PORT_F_ADMIN_UP | PORT_F_SECGROUPS | PORT_F_QOS) != PORT_F_ADMIN_UP
    {
        return None;
    }
    if !src_static {
        // SAFETY: LRU value read; a racing writer only refreshes the same entry.
        let seen = *unsafe { FDB_LEARNED.get(FdbKey { net_index, mac: eth.src, _pad: [0; 2] }) }?;
        // SAFETY: reading the time has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // What TC would refresh goes there, so that learning stays in one place.
        if !learned_fresh(&seen, ingress, 0, now) {
            return None;
        }
    }
    meta.tap_slot = port.stats_slot;
    Some(dst.ifindex)
}

/// Removes the 802.1Q tag: the MACs move 4 bytes up, over it, and the frame
/// starts 4 bytes later.
#[inline(always)]
fn pop_tag(ctx: &XdpContext) -> Result<(), DropReason> {
    let pkt = Pkt::xdp(ctx);
    let macs: [u8; 12] = pkt.bytes_at(0)?;
    // The tag was read before; checked again, for these pointers.
    let at = pkt.ptr::<[u8; 12]>(VLAN_TAG_LEN)? as *mut [u8; 12];
    // SAFETY: bounds checked by `ptr`: the 12 bytes after the tag's start lie in the frame.
    unsafe { core::ptr::write_unaligned(at, macs) };
    // SAFETY: the helper checks the new head against the frame and its headroom.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, VLAN_TAG_LEN as i32) } != 0 {
        return Err(DropReason::VlanOpFailed);
    }
    Ok(())
}
