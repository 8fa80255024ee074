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
};

use crate::{
    maps::{FDB, NET_BY_SEGMENT, PORTS},
    parse::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, Eth, Pkt, is_multicast, is_zero},
    stats,
};

/// The 802.1Q tag: TCI and the inner ethertype.
const VLAN_TAG_LEN: usize = 4;

/// Checks a frame from the wire; `Ok` passes it to the TC stage. `slot` gets
/// the uplink's stats slot once known.
#[inline(always)]
pub fn try_uplink_xdp(ctx: &XdpContext, slot: &mut u32) -> Result<Action, DropReason> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    *slot = port.stats_slot;

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
/// `XDP_STATS` and returns the XDP verdict.
#[inline(always)]
pub fn finish(slot: u32, res: Result<Action, DropReason>) -> u32 {
    stats::count_xdp_action(slot, Action::Received);
    match res {
        Ok(action) => {
            stats::count_xdp_action(slot, action);
            XDP_PASS
        }
        Err(reason) => {
            stats::count_xdp_drop(slot, reason);
            XDP_DROP
        }
    }
}
