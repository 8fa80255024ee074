//! The tunnel family: frames the collect-metadata VXLAN device decapsulated.
//! The VNI selects the network, only its tunnel peers are heard, the inner
//! source MAC is learned behind the remote VTEP, and the frame is bridged to the local ports only.

use aya_ebpf::programs::TcContext;
use datapath_common::{DropReason, SegmentKey, TunnelPeerKey};

use crate::{
    forward::{self, From},
    maps::{NET_BY_SEGMENT, NETWORKS, PORTS, TUNNEL_PEERS},
    parse::{Eth, Pkt, is_multicast, is_zero},
    skb, trace,
    verdict::{Meta, Verdict},
};

#[inline(always)]
pub fn try_tunnel(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;
    let (vni, remote) = match trace::injected_tunnel(ctx) {
        Some(key) => key,
        None => skb::tunnel(ctx)?,
    };
    let seg_key = SegmentKey { ifindex, segment: vni };
    // SAFETY: as above.
    let net_index = *unsafe { NET_BY_SEGMENT.get(seg_key) }.ok_or(DropReason::UnknownSegment)?;
    meta.net_index = net_index;
    // Only the network's tunnel peers, as the OVS agent has tunnel ports to its peers only.
    let peer = TunnelPeerKey { net_index, vtep_ipv4: remote };
    // SAFETY: as above; only the presence is read.
    if unsafe { TUNNEL_PEERS.get(peer) }.is_none() {
        return Err(DropReason::ForeignVtep);
    }
    // SAFETY: as above.
    let net = *unsafe { NETWORKS.get(net_index) }.ok_or(DropReason::NoNetwork)?;

    let pkt = Pkt::linear(ctx);
    let eth = Eth::parse(&pkt)?;
    if is_multicast(&eth.src) || is_zero(&eth.src) {
        return Err(DropReason::SrcMacInvalid);
    }
    forward::learn(meta, ifindex, remote, &eth.src)?;
    forward::forward(ctx, meta, &net, ifindex, From::Wire, &eth.dst)
}
