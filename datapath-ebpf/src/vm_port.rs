//! The VM-port family: frames sent by a VM tap or a namespace port.
//! Port state and anti-spoofing first, then bridging within the port's network.
//! Everything malformed fails closed.

use aya_ebpf::programs::TcContext;
use datapath_common::{
    Action, DropReason, NET_TYPE_VXLAN, PORT_F_ADMIN_UP, PORT_F_ANTI_SPOOF, PORT_F_BOUND, PORT_F_QOS,
    PORT_F_SECGROUPS, PortInfo, QOS_DIR_EGRESS, QOS_F_DSCP, SG_DIR_EGRESS, TrunkVid,
};

use crate::{
    antispoof, arp,
    forward::{self, From},
    maps::{NETWORKS, PORTS, TRUNK_VIDS},
    parse::{
        self, ETH_LEN, ETH_P_8021AD, ETH_P_8021Q, ETH_P_ARP, Eth, Pkt, is_l2_control, is_multicast, is_zero,
    },
    qos, secgroup, skb, stats,
    verdict::{Meta, Verdict},
};

#[inline(always)]
pub fn try_vm_port(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let mut ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let mut port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;
    if port.flags & PORT_F_BOUND == 0 {
        return Err(DropReason::PortUnbound);
    }
    // A VM owns no VLANs but its trunk's: a frame tagged with one of its
    // subports' VLAN ids is that subport's, from here on as if it came from a
    // port of its own, whatever the parent's state (as in the OVS agent, an
    // admin-down parent stops its own traffic only).
    // The tag is read once; a frame it cannot read is judged after the port's state.
    let tag = outer_tag(ctx);
    let sub = match tag {
        Ok(Some((ETH_P_8021Q, vid))) if vid != 0 => subport_of(ifindex, vid),
        _ => None,
    };
    if let Some(id) = sub {
        ifindex = id;
        // SAFETY: as above.
        port = *unsafe { PORTS.get(id) }.ok_or(DropReason::PortUnknown)?;
        meta.slot = port.stats_slot;
    }
    check_state(&port)?;
    meta.net_index = port.net_index;

    // Otherwise only an 802.1Q priority tag (VID 0) is accepted. Either is
    // stripped; popping a tag moves the next one (if any) into the skb's
    // offloaded tag, so the checks after the pop catch double tags.
    if let Some((tpid, vid)) = tag? {
        if tpid != ETH_P_8021Q || (vid != 0 && sub.is_none()) {
            return Err(DropReason::VmTagged);
        }
        skb::vlan_pop(ctx)?;
    }
    let pkt = Pkt::linear(ctx);
    let eth = Eth::parse(&pkt)?;
    if skb::hw_vlan(ctx).is_some() || eth.ethertype == ETH_P_8021Q || eth.ethertype == ETH_P_8021AD {
        return Err(DropReason::VmTagged);
    }
    if is_multicast(&eth.src) || is_zero(&eth.src) {
        return Err(DropReason::SrcMacInvalid);
    }
    if is_l2_control(&eth.dst) {
        return Err(DropReason::L2Control);
    }
    // Every IP header a port sends is checked against the frame, with or
    // without port security, as br_netfilter does in the hybrid chain.
    if port.flags & PORT_F_ANTI_SPOOF != 0 {
        let from = antispoof::From { ifindex, kind: port.kind, dry_run: meta.dry_run };
        antispoof::check(ctx, &pkt, &eth, ETH_LEN, &from)?;
    } else {
        parse::check_ip(ctx, &pkt, eth.ethertype, ETH_LEN)?;
    }
    if port.flags & PORT_F_SECGROUPS != 0 {
        let mut at = secgroup::At::new(ifindex, SG_DIR_EGRESS, meta);
        secgroup::check(ctx, eth.ethertype, ETH_LEN, &mut at)?;
    }
    // What the groups admitted counts against the port's limits (as the
    // hybrid chain's OVS policing came after iptables), then gets its mark.
    if port.flags & PORT_F_QOS != 0
        && let Some(q) = qos::of(ifindex)
    {
        qos::police(ctx, ifindex, q, QOS_DIR_EGRESS, meta.dry_run)?;
        if q.flags & QOS_F_DSCP != 0 && qos::mark(ctx, eth.ethertype, ETH_LEN, q.dscp)? && !meta.dry_run {
            stats::count_action(meta.slot, Action::DscpMarked, 1);
        }
    }
    bridge(ctx, meta, port.net_index, ifindex, &eth)
}

/// A port's frames pass only when it is bound here and up.
#[inline(always)]
fn check_state(port: &PortInfo) -> Result<(), DropReason> {
    if port.flags & PORT_F_BOUND == 0 {
        return Err(DropReason::PortUnbound);
    }
    if port.flags & PORT_F_ADMIN_UP == 0 {
        return Err(DropReason::PortAdminDown);
    }
    Ok(())
}

/// The subport of VLAN id `vid` on trunk parent `parent`, if any.
#[inline(always)]
fn subport_of(parent: u32, vid: u16) -> Option<u32> {
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    unsafe { TRUNK_VIDS.get(TrunkVid { parent_ifindex: parent, vid: vid as u32 }) }.copied()
}

/// The frame's outer tag, offloaded or in the frame: (TPID, VID).
#[inline(always)]
fn outer_tag(ctx: &TcContext) -> Result<Option<(u16, u16)>, DropReason> {
    if let Some(tag) = skb::hw_vlan(ctx) {
        return Ok(Some(tag));
    }
    let pkt = Pkt::linear(ctx);
    let eth = Eth::parse(&pkt)?;
    match eth.ethertype {
        ETH_P_8021Q => Ok(Some((ETH_P_8021Q, pkt.be16_at(ETH_LEN)? & 0x0fff))),
        // Refused whatever it holds, so its VID is not read.
        ETH_P_8021AD => Ok(Some((ETH_P_8021AD, 0))),
        _ => Ok(None),
    }
}

/// Delivers a frame the port may send: the ARP responder of tunnel
/// networks, else bridging. A subprogram of its own, so that the flood's
/// `bpf_loop` callbacks and the anti-spoofing checks never stack their
/// frames on each other's (Linux 6.1 caps a call chain at 512 bytes).
#[inline(never)]
fn bridge(
    ctx: &TcContext,
    meta: &Meta,
    net_index: u32,
    ifindex: u32,
    eth: &Eth,
) -> Result<Verdict, DropReason> {
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let net = *unsafe { NETWORKS.get(net_index) }.ok_or(DropReason::NoNetwork)?;
    if net.net_type == NET_TYPE_VXLAN
        && eth.ethertype == ETH_P_ARP
        && let Some(v) = arp::respond(ctx, meta, ifindex, &Pkt::new(ctx), eth)?
    {
        return Ok(v);
    }
    forward::forward(ctx, meta, &net, ifindex, From::Port, &eth.dst)
}
