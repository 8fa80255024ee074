//! The uplink family: frames from the physical network. The VLAN tag (or its
//! absence, for flat networks) selects the network; the source MAC is learned;
//! the tag is removed and the frame bridged to the local ports only. With
//! `untagged_to_host`, untagged frames no flat network claims go on to the
//! host stack (the node's own address on the uplink).

use aya_ebpf::bindings::TC_ACT_OK;
use aya_ebpf::programs::TcContext;
use datapath_common::{Action, DropReason, PORT_F_HOST_UNTAGGED, SEGMENT_UNTAGGED, SegmentKey};

use crate::{
    forward::{self, From},
    maps::{NET_BY_SEGMENT, NETWORKS, PORTS},
    parse::{ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, Eth, Pkt, is_multicast, is_zero},
    skb,
    verdict::{Meta, Verdict},
};

#[inline(always)]
pub fn try_uplink(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;

    let pkt = Pkt::linear(ctx);
    let eth = Eth::parse(&pkt)?;
    // Only an 802.1Q tag selects a network, offloaded or in the frame. An
    // 802.1ad S-tag is not a Neutron segment, whatever its VID.
    let (segment, tagged) = match skb::hw_vlan(ctx) {
        Some((ETH_P_8021Q, vid)) => (vid as u32, true),
        Some(_) => return Err(DropReason::UnknownSegment),
        None if eth.ethertype == ETH_P_8021Q => ((pkt.be16_at(ETH_LEN)? & 0x0fff) as u32, true),
        None if eth.ethertype == ETH_P_8021AD => return Err(DropReason::UnknownSegment),
        None => (SEGMENT_UNTAGGED, false),
    };
    let seg_key = SegmentKey { ifindex, segment };
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let Some(&net_index) = (unsafe { NET_BY_SEGMENT.get(seg_key) }) else {
        // The node's own address on the uplink: the host stack takes what no flat network claims.
        if !tagged && port.flags & PORT_F_HOST_UNTAGGED != 0 {
            return Ok(Verdict { action: Action::Passed, ret: TC_ACT_OK });
        }
        return Err(DropReason::UnknownSegment);
    };
    meta.net_index = net_index;
    // SAFETY: as above.
    let net = *unsafe { NETWORKS.get(net_index) }.ok_or(DropReason::NoNetwork)?;

    if is_multicast(&eth.src) || is_zero(&eth.src) {
        return Err(DropReason::SrcMacInvalid);
    }
    forward::learn(meta, ifindex, 0, &eth.src)?;
    if tagged {
        skb::vlan_pop(ctx)?;
    }
    forward::forward(ctx, meta, &net, ifindex, From::Wire, &eth.dst)
}
