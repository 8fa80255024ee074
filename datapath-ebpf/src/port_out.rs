//! The port-egress family: frames the datapath (or the host) delivers to a
//! VM tap or namespace port, on the port's TC egress. Every frame a port
//! receives passes here, whatever sent it (a local port, the wire, a flood
//! copy), so this is where the port's ingress security-group rules apply.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use datapath_common::{
    Action, DropReason, PORT_F_QOS, PORT_F_SECGROUPS, QOS_DIR_INGRESS, SG_DIR_INGRESS, TrunkVid,
};

use crate::{
    maps::{PORTS, TRUNK_VIDS},
    parse::{ETH_LEN, ETH_P_8021Q, Eth, Pkt},
    qos,
    secgroup::{self, At},
    skb,
    verdict::{Meta, Verdict},
};

const PASS: Verdict = Verdict { action: Action::Delivered, ret: TC_ACT_OK };

#[inline(always)]
pub fn try_vm_port_out(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let mut ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let mut port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    // The datapath delivers untagged frames, but a subport's get its VLAN id
    // (offloaded): it is the subport's delivery, to count and filter as its own.
    let tag = skb::hw_vlan(ctx);
    if let Some((ETH_P_8021Q, vid)) = tag
        && vid != 0
        // SAFETY: as above.
        && let Some(&sub) = unsafe { TRUNK_VIDS.get(TrunkVid { parent_ifindex: ifindex, vid: vid as u32 }) }
    {
        ifindex = sub;
        // SAFETY: as above.
        port = *unsafe { PORTS.get(sub) }.ok_or(DropReason::PortUnknown)?;
    } else if tag.is_some() {
        // Not from the datapath (nor a subport's); the filter looks at IP
        // only, and a tagged frame is not IP to it.
        meta.slot = port.stats_slot;
        meta.net_index = port.net_index;
        return Ok(PASS);
    }
    meta.slot = port.stats_slot;
    meta.net_index = port.net_index;
    if port.flags & PORT_F_SECGROUPS != 0 {
        let eth = Eth::parse(&Pkt::linear(ctx))?;
        let mut at = At::new(ifindex, SG_DIR_INGRESS, meta);
        secgroup::check(ctx, eth.ethertype, ETH_LEN, &mut at)?;
    }
    if port.flags & PORT_F_QOS != 0
        && let Some(q) = qos::of(ifindex)
    {
        qos::police(ctx, ifindex, q, QOS_DIR_INGRESS, meta.dry_run)?;
    }
    Ok(PASS)
}
