//! The port-egress family: frames the datapath (or the host) delivers to a
//! VM tap or namespace port, on the port's TC egress. Every frame a port
//! receives passes here, whatever sent it (a local port, the wire, a flood
//! copy), so this is where the port's ingress security-group rules apply.

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use datapath_common::{Action, DropReason, PORT_F_SECGROUPS, SG_DIR_INGRESS};

use crate::{
    maps::PORTS,
    parse::{ETH_LEN, Eth, Pkt},
    secgroup::{self, At},
    skb,
    verdict::{Meta, Verdict},
};

const PASS: Verdict = Verdict { action: Action::Delivered, ret: TC_ACT_OK };

#[inline(always)]
pub fn try_vm_port_out(ctx: &TcContext, meta: &mut Meta) -> Result<Verdict, DropReason> {
    let ifindex = skb::ifindex(ctx);
    // SAFETY: NO_PREALLOC hash: the value is RCU-protected; copied out at once.
    let port = *unsafe { PORTS.get(ifindex) }.ok_or(DropReason::PortUnknown)?;
    meta.slot = port.stats_slot;
    meta.net_index = port.net_index;
    if port.flags & PORT_F_SECGROUPS == 0 {
        return Ok(PASS);
    }
    // An offloaded tag never comes from the datapath, which delivers
    // untagged frames; the filter looks at IP only, so a tagged frame is not IP.
    if skb::hw_vlan(ctx).is_some() {
        return Ok(PASS);
    }
    let eth = Eth::parse(&Pkt::linear(ctx))?;
    let mut at = At::new(ifindex, SG_DIR_INGRESS, meta);
    secgroup::check(ctx, eth.ethertype, ETH_LEN, &mut at)?;
    Ok(PASS)
}
