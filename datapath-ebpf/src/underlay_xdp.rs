//! The underlay's XDP stage: on the device that holds `local_ip`, VXLAN for
//! this node is checked before the stack decapsulates it. A VNI this node
//! does not serve (`unknown_segment`) and a sender that is no tunnel peer of
//! the VNI's network (`foreign_vtep`) are dropped in the driver, as
//! `tunnel_in` drops them after decapsulation; a VXLAN header cut short is
//! `malformed`. Everything else passes: the tunnel traffic to the kernel's
//! VXLAN device and `tunnel_in`, and the host's own traffic untouched.
//!
//! The stage counts tunnel traffic only (UDP to `local_ip`, port 4789),
//! under the VXLAN device's stats slot in `XDP_STATS`: it is that device's
//! stage, running where its frames arrive. The host's other traffic passes
//! uncounted. It fails open: this device carries the host's own traffic,
//! which is none of the datapath's business.

use aya_ebpf::programs::XdpContext;
use datapath_common::{Action, DropReason, IPPROTO_UDP, SegmentKey, TunnelPeerKey, UnderlayInfo, VXLAN_PORT};

use crate::{
    maps::{NET_BY_SEGMENT, PORTS, TUNNEL_PEERS, XDP_UNDERLAY},
    parse::{ETH_LEN, ETH_P_IPV4, Eth, Pkt},
    xdp_verdict::XdpMeta,
};

/// IPv4 header without options; UDP header; VXLAN header.
const IPV4_MIN: usize = 20;
const UDP_LEN: usize = 8;
const VXLAN_LEN: usize = 8;
/// The VXLAN header's "I" flag: the VNI is valid.
const VXLAN_F_VNI: u8 = 0x08;

/// What the stage made of a frame.
pub enum Seen {
    /// Not tunnel traffic for this node: the host's business, not counted.
    Host,
    /// Tunnel traffic that may go on to the VXLAN device.
    Tunnel,
}

/// Checks a frame from the underlay; `Err` drops it.
#[inline(always)]
pub fn try_underlay_xdp(ctx: &XdpContext, meta: &mut XdpMeta) -> Result<Seen, DropReason> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let Some(info) = (unsafe { XDP_UNDERLAY.get(ifindex) }).copied() else {
        return Ok(Seen::Host);
    };
    let pkt = Pkt::xdp(ctx);
    let Ok(eth) = Eth::parse(&pkt) else { return Ok(Seen::Host) };
    if eth.ethertype != ETH_P_IPV4 {
        return Ok(Seen::Host);
    }
    check_tunnel(&pkt, ETH_LEN, &info, meta)
}

/// Checks the IPv4 packet at `l3` of `pkt`: VXLAN to `info.local_ipv4`
/// must carry a VNI this node serves, from a tunnel peer of its network.
/// Sets `meta.slot` (the VXLAN device's) and `meta.net_index` for tunnel traffic.
#[inline(always)]
pub fn check_tunnel(
    pkt: &Pkt,
    l3: usize,
    info: &UnderlayInfo,
    meta: &mut XdpMeta,
) -> Result<Seen, DropReason> {
    let Ok(ver_ihl) = pkt.u8_at(l3) else { return Ok(Seen::Host) };
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < IPV4_MIN {
        return Ok(Seen::Host);
    }
    let Ok(dst) = pkt.bytes_at::<4>(l3 + 16) else { return Ok(Seen::Host) };
    let Ok(proto) = pkt.u8_at(l3 + 9) else { return Ok(Seen::Host) };
    let Ok(frag) = pkt.be16_at(l3 + 6) else { return Ok(Seen::Host) };
    // A fragment is the stack's to reassemble; `tunnel_in` checks what comes of it.
    if u32::from_be_bytes(dst) != info.local_ipv4 || proto != IPPROTO_UDP || frag & 0x3fff != 0 {
        return Ok(Seen::Host);
    }
    // The options' length comes from the frame: bound it for the verifier.
    let l4 = l3 + (ihl & 0x3c);
    let Ok(dport) = pkt.be16_at(l4 + 2) else { return Ok(Seen::Host) };
    if dport != VXLAN_PORT {
        return Ok(Seen::Host);
    }
    // From here on it is this node's tunnel traffic, counted as the VXLAN device's.
    // SAFETY: as above.
    meta.slot = unsafe { PORTS.get(info.tunnel_ifindex) }.map_or(0, |p| p.stats_slot);
    let src: [u8; 4] = pkt.bytes_at(l3 + 12)?;
    let vxlan = l4 + UDP_LEN;
    let flags = pkt.u8_at(vxlan)?;
    let vni: [u8; 4] = pkt.bytes_at(vxlan + 4)?;
    // The inner Ethernet header must be there too, as the VXLAN device needs it.
    pkt.bytes_at::<ETH_LEN>(vxlan + VXLAN_LEN)?;
    if flags & VXLAN_F_VNI == 0 {
        return Err(DropReason::Malformed);
    }
    let vni = u32::from_be_bytes([0, vni[0], vni[1], vni[2]]);
    let key = SegmentKey { ifindex: info.tunnel_ifindex, segment: vni };
    // SAFETY: as above.
    let net_index = *unsafe { NET_BY_SEGMENT.get(key) }.ok_or(DropReason::UnknownSegment)?;
    meta.net_index = net_index;
    let peer = TunnelPeerKey { net_index, vtep_ipv4: u32::from_be_bytes(src) };
    // SAFETY: as above; only the presence is read.
    if unsafe { TUNNEL_PEERS.get(peer) }.is_none() {
        return Err(DropReason::ForeignVtep);
    }
    Ok(Seen::Tunnel)
}

/// The action a pass counts as: tunnel traffic passes on, the host's is not counted.
#[inline(always)]
pub fn counted(seen: Result<Seen, DropReason>) -> Option<Result<Action, DropReason>> {
    match seen {
        Ok(Seen::Host) => None,
        Ok(Seen::Tunnel) => Some(Ok(Action::Passed)),
        Err(reason) => Some(Err(reason)),
    }
}
