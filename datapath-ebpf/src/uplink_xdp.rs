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
//! or learned through this uplink less than `LEARN_REFRESH_NS` ago). A frame
//! that misses any of these goes to TC, which learns, floods, filters.
//!
//! The agent turns the uplink's rx VLAN offload off while this stage runs,
//! so the tag is in the frame: an untagged frame here is untagged on the wire.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_REDIRECT},
    helpers::generated::{bpf_ktime_get_ns, bpf_xdp_adjust_head},
    programs::XdpContext,
};
use datapath_common::{
    Action, DropReason, FDB_F_LOCAL, FdbKey, PORT_F_ADMIN_UP, PORT_F_HOST_UNTAGGED, PORT_F_SECGROUPS,
    SEGMENT_UNTAGGED, SegmentKey, TRACE_DRY_RUN, TRACE_MAGIC, names::PROG_INDEX_UPLINK_XDP,
};

use crate::{
    forward::LEARN_REFRESH_NS,
    maps::{FDB, FDB_LEARNED, NET_BY_SEGMENT, PORTS, XDP_TAPS},
    monitor,
    parse::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, Eth, Pkt, is_multicast, is_zero},
    stats, trace,
};

/// The 802.1Q tag: TCI and the inner ethertype.
const VLAN_TAG_LEN: usize = 4;

/// What the stage learned about a frame on its way to a verdict.
#[derive(Default)]
pub struct XdpMeta {
    /// Stats slot of the uplink (0: unknown device).
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
/// never does (no other program runs before this one on the uplink).
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
    if port.net_index != net_index || port.flags & (PORT_F_ADMIN_UP | PORT_F_SECGROUPS) != PORT_F_ADMIN_UP {
        return None;
    }
    if !src_static {
        // SAFETY: LRU value read; a racing writer only refreshes the same entry.
        let seen = *unsafe { FDB_LEARNED.get(FdbKey { net_index, mac: eth.src, _pad: [0; 2] }) }?;
        // SAFETY: reading the time has no preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        if seen.ifindex != ingress
            || seen.vtep_ipv4 != 0
            || now.wrapping_sub(seen.last_seen_ns) >= LEARN_REFRESH_NS
        {
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

/// The XDP stage's one exit: counts the outcome under the uplink's slot in
/// `XDP_STATS` (or, traced, records it instead), reports it to a monitor that
/// wants it, and returns the XDP verdict.
#[inline(always)]
pub fn finish(ctx: &XdpContext, meta: &XdpMeta, res: Result<Action, DropReason>) -> u32 {
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
    monitor::observe_xdp(ctx, meta.slot, meta.net_index, PROG_INDEX_UPLINK_XDP, (reason, action));
    // What the tap's egress program would have counted, had the frame passed there.
    if verdict == XDP_REDIRECT {
        stats::count_action(meta.tap_slot, Action::Delivered, 1);
    }
    verdict
}
