//! The uplinks' XDP stage: what the driver hands over, before any skb
//! exists. It drops what this node must never accept (frames of a segment
//! it does not serve, frames that claim a local port's MAC or an invalid
//! source, malformed frames) and passes everything else to the TC stage
//! (`uplink_in`) unchanged, which bridges it as before, or hands the node's
//! own untagged traffic to the host (`untagged_to_host`).
//!
//! The agent turns the uplink's rx VLAN offload off while this stage runs,
//! so the tag is in the frame: an untagged frame here is untagged on the wire.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    programs::XdpContext,
};
use datapath_common::{
    Action, DropReason, FDB_F_LOCAL, FdbKey, PORT_F_HOST_UNTAGGED, SEGMENT_UNTAGGED, SegmentKey,
    TRACE_DRY_RUN, TRACE_MAGIC,
};

use crate::{
    maps::{FDB, NET_BY_SEGMENT, PORTS},
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
    if let Some(entry) = unsafe { FDB.get(key) }
        && entry.flags & FDB_F_LOCAL != 0
    {
        return Err(DropReason::UplinkSrcIsLocal);
    }
    Ok(Action::Passed)
}

/// The XDP stage's one exit: counts the outcome under the uplink's slot in
/// `XDP_STATS` (or, traced, records it instead) and returns the XDP verdict.
#[inline(always)]
pub fn finish(meta: &XdpMeta, res: Result<Action, DropReason>) -> u32 {
    let (action, reason, verdict) = match res {
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
    verdict
}
