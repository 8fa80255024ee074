//! The wire families (architecture.md, "Uplink ingress", "Tunnels", "Tunnel
//! peers"): the tag or the VNI selects the network, a tunnel frame must come
//! from a peer of it, the source MAC is learned behind the wire (never a
//! local port's), the tag is removed, and the frame bridged to the local
//! ports only. (`untagged_to_host` is not modelled: the fuzzer's configs
//! never set it; the program and topology tests cover it.)

use datapath_common::{DropReason, FDB_F_LOCAL, SEGMENT_UNTAGGED};

use super::{
    Decision, Run,
    forward::{self, From},
    frame::{ETH_LEN, Skb, TPID_8021AD, TPID_8021Q},
};

pub(super) fn uplink(run: &mut Run, skb: &mut Skb) -> Decision {
    let ifindex = run.ingress.ifindex;
    run.model.port(ifindex).ok_or(DropReason::PortUnknown)?;
    let ethertype = skb.ethertype()?;
    // An 802.1ad S-tag, offloaded or in-band, selects no network.
    let (segment, tagged) = match skb.hw {
        Some(hw) if hw.proto == TPID_8021AD => return Err(DropReason::UnknownSegment),
        Some(hw) => (hw.vid() as u32, true),
        None if ethertype == TPID_8021Q => ((skb.be16(ETH_LEN)? & 0x0fff) as u32, true),
        None if ethertype == TPID_8021AD => return Err(DropReason::UnknownSegment),
        None => (SEGMENT_UNTAGGED, false),
    };
    deliver(run, skb, segment, 0, tagged)
}

pub(super) fn tunnel(run: &mut Run, skb: &mut Skb) -> Decision {
    run.model.port(run.ingress.ifindex).ok_or(DropReason::PortUnknown)?;
    let (vni, remote) = run.ingress.tunnel.ok_or(DropReason::TunnelOpFailed)?;
    run.net_index = run.model.segment(run.ingress.ifindex, vni).ok_or(DropReason::UnknownSegment)?;
    if !run.model.tunnel_peer(run.net_index, remote) {
        return Err(DropReason::ForeignVtep);
    }
    deliver(run, skb, vni, remote, false)
}

/// From the segment on: classify, learn, untag, bridge.
fn deliver(run: &mut Run, skb: &mut Skb, segment: u32, vtep: u32, tagged: bool) -> Decision {
    let ifindex = run.ingress.ifindex;
    run.net_index = run.model.segment(ifindex, segment).ok_or(DropReason::UnknownSegment)?;
    let net = run.model.network(run.net_index).ok_or(DropReason::NoNetwork)?;
    let src: [u8; 6] = skb.take(6)?;
    let dst: [u8; 6] = skb.take(0)?;
    if src[0] & 1 != 0 || src == [0; 6] {
        return Err(DropReason::SrcMacInvalid);
    }
    match run.model.fdb(run.net_index, src) {
        Some(e) if e.flags & FDB_F_LOCAL != 0 => return Err(DropReason::UplinkSrcIsLocal),
        Some(_) => {}
        None if run.ingress.dry_run => {}
        None => {
            run.tables.learned.insert((run.net_index, src), (ifindex, vtep));
        }
    }
    if tagged {
        skb.vlan_pop()?;
    }
    forward::forward(run, skb, &net, From::Wire, dst)
}
