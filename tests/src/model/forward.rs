//! Bridging inside one network (architecture.md, "Forwarding rules",
//! "Flooding", "Tunnels"): a known local MAC goes to its port, a MAC behind
//! the wire goes there (frames from the wire never go back), the rest floods.

use datapath_common::{Action, DropReason, FDB_F_LOCAL, NET_TYPE_VLAN, NET_TYPE_VXLAN, NetInfo};

use super::{Decision, Run, Target, frame::Skb};

/// Where the frame entered the network on this node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum From {
    Port,
    Wire,
}

/// The wire target of `net` towards `vtep` (tunnels) or with the segment's tag (VLAN).
fn wire_target(net: &NetInfo, vtep: u32) -> Target {
    match net.net_type {
        NET_TYPE_VXLAN => Target { ifindex: net.uplink_ifindex, vlan: 0, vtep, vni: net.segmentation_id },
        NET_TYPE_VLAN => Target { ifindex: net.uplink_ifindex, vlan: net.segmentation_id, vtep: 0, vni: 0 },
        _ => Target::port(net.uplink_ifindex),
    }
}

/// A frame that is not a GSO super-frame must fit the network MTU to enter a tunnel.
fn fits_tunnel(skb: &Skb, net: &NetInfo) -> bool {
    skb.gso_size != 0 || skb.len() <= net.mtu as usize + 14
}

pub(super) fn forward(run: &mut Run, skb: &Skb, net: &NetInfo, from: From, dst: [u8; 6]) -> Decision {
    if dst[0] & 1 != 0 {
        return flood(run, skb, net, from);
    }
    if let Some(entry) = run.model.fdb(run.net_index, dst) {
        if entry.flags & FDB_F_LOCAL != 0 {
            if entry.ifindex == run.ingress.ifindex {
                return Err(DropReason::Hairpin);
            }
            return Ok((Action::ToLocalPort, vec![Target::port(entry.ifindex)]));
        }
        return to_wire(skb, net, from, entry.vtep_ipv4);
    }
    if let Some(&(_, vtep)) = run.tables.learned.get(&(run.net_index, dst)) {
        return to_wire(skb, net, from, vtep);
    }
    flood(run, skb, net, from)
}

fn to_wire(skb: &Skb, net: &NetInfo, from: From, vtep: u32) -> Decision {
    if from == From::Wire {
        return Err(DropReason::Hairpin);
    }
    if net.uplink_ifindex == 0 {
        return Err(DropReason::NoUplink);
    }
    if net.net_type == NET_TYPE_VXLAN {
        if vtep == 0 {
            return Err(DropReason::NoVtep);
        }
        if !fits_tunnel(skb, net) {
            return Err(DropReason::MtuExceeded);
        }
    }
    Ok((Action::ToUplink, vec![wire_target(net, vtep)]))
}

/// Every local port of the network but the ingress, plus, for frames from a
/// local port, the uplink or every VTEP that hosts a port of the network.
fn flood(run: &mut Run, skb: &Skb, net: &NetInfo, from: From) -> Decision {
    let mut targets: Vec<Target> = Vec::new();
    if let Some(set) = run.model.state.flood_sets.get(&run.net_index) {
        let members = &set.ifindex[..(set.count as usize).min(set.ifindex.len())];
        targets.extend(
            members.iter().filter(|&&i| i != 0 && i != run.ingress.ifindex).map(|&i| Target::port(i)),
        );
    }
    if from == From::Port && net.uplink_ifindex != 0 {
        if net.net_type != NET_TYPE_VXLAN {
            targets.push(wire_target(net, 0));
        } else if !fits_tunnel(skb, net) {
            // Local ports still get it; the tunnel cannot carry it.
            run.side_actions.push(Action::FloodTunnelMtu);
        } else if let Some(set) = run.model.state.flood_vteps.get(&run.net_index) {
            let vteps = &set.vtep_ipv4[..(set.count as usize).min(set.vtep_ipv4.len())];
            targets.extend(vteps.iter().filter(|&&v| v != 0).map(|&v| wire_target(net, v)));
        }
    }
    if targets.is_empty() {
        return Err(DropReason::FloodNoTarget);
    }
    Ok((Action::Flooded, targets))
}
