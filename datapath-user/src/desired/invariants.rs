//! What every derived state must satisfy, whatever the bindings, the config
//! and the devices: the input fuzzer checks them after every derivation.

use std::collections::{BTreeMap, BTreeSet};

use datapath_common::{
    FDB_F_LOCAL, MAX_FLOOD_PORTS, MAX_FLOOD_VTEPS, NET_TYPE_VXLAN, PORT_F_ADMIN_UP, PORT_F_ANTI_SPOOF,
    PORT_F_QOS, is_subport,
};

use super::{Derived, wire_id_of};

/// The first invariant `d` breaks, described; `Ok` when it keeps them all.
pub fn check(d: &Derived) -> Result<(), String> {
    let s = &d.state;
    let mut wires = BTreeMap::new();
    for (index, net) in &s.networks {
        if *index == 0 {
            return Err("network index 0 is taken; 0 means \"no network\"".into());
        }
        if let Some(other) = wires.insert(wire_id_of(net), index) {
            return Err(format!(
                "networks {other} and {index} share the wire identity {:?}",
                wire_id_of(net)
            ));
        }
    }
    let mut slots = BTreeSet::new();
    for (ifindex, p) in &s.ports {
        if p.stats_slot == 0 || !slots.insert(p.stats_slot) {
            return Err(format!("port {ifindex} has stats slot {}, taken or reserved", p.stats_slot));
        }
        if p.net_index != 0 && !s.networks.contains_key(&p.net_index) {
            return Err(format!("port {ifindex} points at network {}, which does not exist", p.net_index));
        }
        if is_subport(*ifindex) {
            // A subport's programs are its parent's.
            let Some(sub) = s.subports.get(ifindex) else {
                return Err(format!("subport {ifindex} is programmed without its parent and VLAN id"));
            };
            if s.trunk_vids.get(sub) != Some(ifindex) || !d.attach.contains_key(&sub.parent_ifindex) {
                return Err(format!(
                    "subport {ifindex} ({sub:?}) is not its trunk's VLAN, or its parent has no program"
                ));
            }
        } else if !d.attach.contains_key(ifindex) {
            return Err(format!("port {ifindex} is programmed but no program attaches to it"));
        }
    }
    for id in s.qos_ports.keys() {
        if s.ports.get(id).is_none_or(|p| p.flags & PORT_F_QOS == 0) {
            return Err(format!("QoS limits for {id}, which is no port with a QoS policy"));
        }
    }
    for (sub, id) in &s.trunk_vids {
        if s.subports.get(id) != Some(sub) || !s.ports.contains_key(id) {
            return Err(format!("trunk VLAN {sub:?} names subport {id}, which is not that subport"));
        }
    }
    if s.subports.len() != s.trunk_vids.len() {
        return Err(format!("{} subports but {} trunk VLANs", s.subports.len(), s.trunk_vids.len()));
    }
    if let Some(ifindex) = d.attach.keys().find(|i| !s.ports.contains_key(i)) {
        return Err(format!("a program attaches to {ifindex}, which has no port entry"));
    }
    let port_of = |ifindex: u32, net_index: u32| {
        s.ports.get(&ifindex).filter(|p| p.net_index == net_index && p.flags & PORT_F_ADMIN_UP != 0)
    };
    for (k, e) in &s.fdb {
        let Some(net) = s.networks.get(&k.net_index) else {
            return Err(format!("FDB entry {k:?} is in network {}, which does not exist", k.net_index));
        };
        let ok = if e.flags & FDB_F_LOCAL != 0 {
            port_of(e.ifindex, k.net_index).is_some()
        } else {
            e.ifindex == net.uplink_ifindex && e.ifindex != 0
        };
        if !ok {
            return Err(format!(
                "FDB entry {k:?} -> {e:?} points at no admin-up port or uplink of its network"
            ));
        }
    }
    for (index, set) in &s.flood_sets {
        let count = set.count as usize;
        if !s.networks.contains_key(index) || count == 0 || count > MAX_FLOOD_PORTS {
            return Err(format!("flood set of network {index} holds {count} ports, or its network is gone"));
        }
        let members = &set.ifindex[..count];
        if members.iter().collect::<BTreeSet<_>>().len() != count {
            return Err(format!("flood set of network {index} names a port twice: {members:?}"));
        }
        if let Some(m) = members.iter().find(|m| port_of(**m, *index).is_none()) {
            return Err(format!("flood set of network {index} names {m}, no admin-up port of that network"));
        }
    }
    for (k, index) in &s.segments {
        let net = s.networks.get(index);
        if net.is_none_or(|n| n.uplink_ifindex != k.ifindex || n.segmentation_id != k.segment) {
            return Err(format!("segment {k:?} points at network {index}, which is not on that segment"));
        }
    }
    for (index, set) in &s.flood_vteps {
        let vxlan = s.networks.get(index).is_some_and(|n| n.net_type == NET_TYPE_VXLAN);
        let count = set.count as usize;
        if !vxlan || count == 0 || count > MAX_FLOOD_VTEPS || set.vtep_ipv4[..count].contains(&0) {
            return Err(format!("VTEP set of network {index} is not a tunnel network's, or holds {count}"));
        }
    }
    if let Some(k) =
        s.arp.keys().find(|k| s.networks.get(&k.net_index).is_none_or(|n| n.net_type != NET_TYPE_VXLAN))
    {
        return Err(format!("ARP entry {k:?} is not in a tunnel network"));
    }
    let guarded = |ifindex: u32| s.ports.get(&ifindex).is_some_and(|p| p.flags & PORT_F_ANTI_SPOOF != 0);
    let allowed = s
        .allowed_macs
        .keys()
        .map(|k| k.ifindex)
        .chain(s.allowed_v4.keys().map(|(_, k)| k.ifindex))
        .chain(s.allowed_v6.keys().map(|(_, k)| k.ifindex));
    for ifindex in allowed {
        if !guarded(ifindex) {
            return Err(format!("allowed addresses for {ifindex}, which is no port with anti-spoofing"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use datapath_common::{FdbEntry, FdbKey, FloodSet, NET_TYPE_VLAN, NetInfo, PortInfo, SegmentKey};

    use super::*;
    use crate::desired::Attachment;

    /// A good state: network 1 (VLAN 10 on uplink 2), port 5 in it, admin up.
    fn good() -> Derived {
        let mut d = Derived::default();
        let net = NetInfo {
            uplink_ifindex: 2,
            segmentation_id: 10,
            net_type: NET_TYPE_VLAN,
            mtu: 1500,
            ..bytemuck::Zeroable::zeroed()
        };
        d.state.networks.insert(1, net);
        d.state.segments.insert(SegmentKey { ifindex: 2, segment: 10 }, 1);
        let port = |net_index, slot| PortInfo {
            net_index,
            flags: PORT_F_ADMIN_UP,
            stats_slot: slot,
            kind: 1,
            _pad: [0; 3],
        };
        d.state.ports.insert(5, port(1, 1));
        d.state.ports.insert(2, port(0, 2));
        for i in [2, 5] {
            d.attach
                .insert(i, Attachment { device: format!("dev{i}"), program: "p", egress: None, xdp: None });
        }
        d.state.fdb.insert(
            FdbKey { net_index: 1, mac: [2, 0, 0, 0, 0, 5], _pad: [0; 2] },
            FdbEntry { ifindex: 5, flags: FDB_F_LOCAL, vtep_ipv4: 0 },
        );
        let mut set = FloodSet { count: 1, ifindex: [0; MAX_FLOOD_PORTS] };
        set.ifindex[0] = 5;
        d.state.flood_sets.insert(1, set);
        d
    }

    /// What a test does to a good state, and the words the error must say.
    type Break = (&'static str, fn(&mut Derived));

    #[test]
    fn a_good_state_passes_and_each_broken_invariant_is_named() {
        assert_eq!(check(&good()), Ok(()));
        let breaks: Vec<Break> = vec![
            ("share the wire identity", |d| {
                let n = d.state.networks[&1];
                d.state.networks.insert(2, n);
            }),
            ("does not exist", |d| d.state.ports.get_mut(&5).unwrap().net_index = 9),
            ("stats slot", |d| d.state.ports.get_mut(&5).unwrap().stats_slot = 2),
            ("no program attaches", |d| drop(d.attach.remove(&5))),
            ("no admin-up port", |d| d.state.ports.get_mut(&5).unwrap().flags = 0),
            ("names a port twice", |d| {
                let set = d.state.flood_sets.get_mut(&1).unwrap();
                set.count = 2;
                set.ifindex[1] = 5;
            }),
            ("not on that segment", |d| {
                d.state.segments.insert(SegmentKey { ifindex: 2, segment: 11 }, 1);
            }),
            ("no port with anti-spoofing", |d| {
                d.state
                    .allowed_macs
                    .insert(datapath_common::MacKey { ifindex: 5, mac: [2; 6], _pad: [0; 2] }, 1);
            }),
        ];
        for (says, break_it) in breaks {
            let mut d = good();
            break_it(&mut d);
            let e = check(&d).expect_err(says);
            assert!(e.contains(says), "want {says:?} in {e:?}");
        }
    }
}
