//! The networks with ports on this node: their node-local index and wire
//! identity, their segment on the uplink, their flood list, and for tunnel
//! networks the remote VTEPs and MACs (l2population) and the ARP table.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use datapath_common::{
    FDB_F_REMOTE, FdbEntry, FdbKey, FloodSet, MAX_FLOOD_PORTS, MAX_FLOOD_VTEPS, MAX_NETWORKS, NET_TYPE_FLAT,
    NET_TYPE_VLAN, NET_TYPE_VXLAN, NetInfo, SEGMENT_UNTAGGED, SegmentKey, TunnelPeerKey, VtepSet,
};

use super::{
    Allocations, Derived, MapState, NetworkReport,
    addresses::add_arp,
    alloc::{WireId, wire_id_of},
};
use crate::{
    bindings::{Bindings, Network, NetworkType, Port},
    config::Config,
    netlink::Devices,
    tunnel::TUNNEL_DEVICE,
};

/// A network with ports on this node, as the passes fill it.
pub(super) struct NetPlan<'a> {
    pub net: &'a Network,
    pub index: u32,
    pub info: NetInfo,
    /// Admin-up local ports: the flood list.
    pub members: Vec<u32>,
    /// Every local port with a device.
    pub local_ports: usize,
}

/// The networks of this node's ports: planned, or refused with a reason.
#[derive(Default)]
pub(super) struct Plans<'a> {
    pub planned: BTreeMap<&'a str, NetPlan<'a>>,
    pub refused: BTreeMap<&'a str, String>,
    /// Ids of the networks of this node's ports, planned or not.
    pub used: BTreeSet<&'a str>,
}

/// Gives every network with a port here a node-local index, as the OVS agent
/// gives a local VLAN only to networks with ports on the node.
pub(super) fn plan<'a>(
    cfg: &Config,
    bindings: &'a Bindings,
    local: &[&'a Port],
    devices: &Devices,
    alloc: &mut Allocations,
) -> Plans<'a> {
    let mut plans = Plans { used: local.iter().map(|p| p.network_id.as_str()).collect(), ..Plans::default() };
    let mut taken: BTreeMap<(String, u32), &str> = BTreeMap::new();
    // The node-local index is keyed by the wire identity. Two physical
    // networks whose interfaces this node lacks both have uplink 0, so the
    // same VLAN (or flat) on both would share one index, and their ports
    // one network: the second is refused until its interface exists.
    let mut by_wire: BTreeMap<WireId, &str> = BTreeMap::new();
    for net in bindings.networks.iter().filter(|n| plans.used.contains(n.id.as_str())) {
        let planned = plan_network(cfg, net, devices, &mut taken, alloc).and_then(|(index, info)| {
            match by_wire.get(&wire_id_of(&info)) {
                Some(other) => Err(format!(
                    "network {other} has the same segment on a physical network whose interface is missing \
                     here too; the two would share one local network, so this one waits for its interface"
                )),
                None => Ok((index, info)),
            }
        });
        match planned {
            Ok((index, info)) => {
                by_wire.insert(wire_id_of(&info), &net.id);
                plans
                    .planned
                    .insert(&net.id, NetPlan { net, index, info, members: Vec::new(), local_ports: 0 });
            }
            Err(e) => {
                plans.refused.insert(&net.id, e);
            }
        }
    }
    plans
}

/// Programs every planned network (its entry, segment, flood list, and
/// l2population for tunnels) and reports every network of this node's ports.
pub(super) fn program(out: &mut Derived, cfg: &Config, bindings: &Bindings, plans: &mut Plans) {
    // Only nodes with a tunnel network here pay for the cloud-wide index.
    let tunnels =
        plans.planned.values().any(|p| p.info.net_type == NET_TYPE_VXLAN).then(|| Tunnels::index(bindings));
    for net in bindings.networks.iter().filter(|n| plans.used.contains(n.id.as_str())) {
        let mut report = NetworkReport {
            id: net.id.clone(),
            name: net.name.clone(),
            net_type: format!("{:?}", net.network_type).to_lowercase(),
            segmentation_id: net.segmentation_id,
            physical_network: net.physical_network.clone(),
            net_index: None,
            local_ports: 0,
            error: String::new(),
        };
        if let Some(plan) = plans.planned.get_mut(net.id.as_str()) {
            report.net_index = Some(plan.index);
            report.local_ports = plan.local_ports;
            out.state.networks.insert(plan.index, plan.info);
            if plan.info.uplink_ifindex != 0 {
                let key =
                    SegmentKey { ifindex: plan.info.uplink_ifindex, segment: plan.info.segmentation_id };
                out.state.segments.insert(key, plan.index);
            }
            if plan.info.net_type == NET_TYPE_VXLAN
                && let Some(t) = &tunnels
            {
                let ports = t.ports_by_net.get(net.id.as_str()).map(Vec::as_slice).unwrap_or_default();
                add_arp(&mut out.state, plan.index, ports.iter().copied());
                if let Some(warning) = add_tunnel_network(&mut out.state, cfg, t, net, plan) {
                    report.error = warning;
                }
            }
            add_flood_set(&mut out.state, plan);
        } else if let Some(e) = plans.refused.get(net.id.as_str()) {
            report.error = e.clone();
        }
        out.networks.push(report);
    }
}

fn add_flood_set(state: &mut MapState, plan: &mut NetPlan) {
    if plan.members.is_empty() {
        return;
    }
    plan.members.sort_unstable();
    let mut set = FloodSet { count: plan.members.len() as u32, ifindex: [0; MAX_FLOOD_PORTS] };
    set.ifindex[..plan.members.len()].copy_from_slice(&plan.members);
    state.flood_sets.insert(plan.index, set);
}

fn plan_network<'a>(
    cfg: &Config,
    net: &'a Network,
    devices: &Devices,
    taken: &mut BTreeMap<(String, u32), &'a str>,
    alloc: &mut Allocations,
) -> Result<(u32, NetInfo), String> {
    let (net_type, segment) = match net.network_type {
        NetworkType::Flat => (NET_TYPE_FLAT, SEGMENT_UNTAGGED),
        NetworkType::Vlan => (NET_TYPE_VLAN, net.segmentation_id.unwrap_or(0)),
        NetworkType::Vxlan => (NET_TYPE_VXLAN, net.segmentation_id.unwrap_or(0)),
    };
    let (wire, iface) = if net_type == NET_TYPE_VXLAN {
        if cfg.tunnel_ip().is_none() {
            return Err(
                "vxlan networks need local_ip and tunnel_types = [\"vxlan\"] in the agent config".into()
            );
        }
        ("vxlan".to_string(), TUNNEL_DEVICE)
    } else {
        let physnet = net.physical_network.as_deref().unwrap_or_default();
        let iface = cfg.interface_for(physnet).ok_or_else(|| {
            format!("physical network {physnet:?} is not in physical_interface_mappings of this host")
        })?;
        (physnet.to_string(), iface)
    };
    if let Some(other) = taken.insert((wire.clone(), segment), &net.id) {
        taken.insert((wire.clone(), segment), other);
        return Err(match net_type {
            NET_TYPE_FLAT => format!("physical network {wire:?} already carries flat network {other}"),
            NET_TYPE_VXLAN => format!("VNI {segment} already belongs to network {other}"),
            _ => format!("VLAN {segment} on physical network {wire:?} already belongs to network {other}"),
        });
    }
    let uplink_ifindex = devices.get(iface).copied().unwrap_or(0);
    // The `abi-next` test build's NetInfo has a field more, which the update fills.
    #[allow(clippy::needless_update)]
    let info = NetInfo {
        uplink_ifindex,
        segmentation_id: segment,
        net_type,
        mtu: net.mtu,
        ..bytemuck::Zeroable::zeroed()
    };
    let index = alloc
        .net_index(wire_id_of(&info))
        .ok_or_else(|| format!("no free network index (max {})", MAX_NETWORKS - 1))?;
    Ok((index, info))
}

/// The bindings indexed for l2population, built once per derivation so that
/// each tunnel network costs its own ports, not the whole cloud's.
struct Tunnels<'a> {
    ports_by_net: BTreeMap<&'a str, Vec<&'a Port>>,
    /// The first agent entry of each host wins, as a lookup in file order would.
    vtep_by_host: BTreeMap<&'a str, Ipv4Addr>,
}

impl<'a> Tunnels<'a> {
    fn index(b: &'a Bindings) -> Self {
        let mut ports_by_net: BTreeMap<&str, Vec<&Port>> = BTreeMap::new();
        for port in &b.ports {
            ports_by_net.entry(port.network_id.as_str()).or_default().push(port);
        }
        let mut vtep_by_host = BTreeMap::new();
        for agent in &b.agents {
            if let Some(ip) = agent.tunneling_ip {
                vtep_by_host.entry(agent.host.as_str()).or_insert(ip);
            }
        }
        Self { ports_by_net, vtep_by_host }
    }
}

/// l2population for a tunnel network: every port the bindings place on another
/// host becomes a static FDB entry behind that host's VTEP, and each such
/// VTEP a flood target. Returns a warning when the VTEPs exceed the flood list.
fn add_tunnel_network(
    state: &mut MapState,
    cfg: &Config,
    t: &Tunnels,
    net: &Network,
    plan: &NetPlan,
) -> Option<String> {
    let own = cfg.tunnel_ip();
    let mut vteps = BTreeSet::new();
    for port in t.ports_by_net.get(net.id.as_str()).into_iter().flatten() {
        if port.host == cfg.host || port.host.is_empty() {
            continue;
        }
        let Some(&vtep) = t.vtep_by_host.get(port.host.as_str()).filter(|v| Some(**v) != own) else {
            continue;
        };
        vteps.insert(u32::from(vtep));
        state.tunnel_peers.insert(TunnelPeerKey { net_index: plan.index, vtep_ipv4: u32::from(vtep) }, 1);
        if plan.info.uplink_ifindex != 0 {
            state.fdb.insert(
                FdbKey { net_index: plan.index, mac: port.mac, _pad: [0; 2] },
                FdbEntry {
                    ifindex: plan.info.uplink_ifindex,
                    flags: FDB_F_REMOTE,
                    vtep_ipv4: u32::from(vtep),
                },
            );
        }
    }
    if vteps.is_empty() {
        return None;
    }
    let mut set = VtepSet { count: 0, _pad: 0, vtep_ipv4: [0; MAX_FLOOD_VTEPS] };
    for (slot, v) in set.vtep_ipv4.iter_mut().zip(&vteps) {
        *slot = *v;
        set.count += 1;
    }
    state.flood_vteps.insert(plan.index, set);
    (vteps.len() > MAX_FLOOD_VTEPS)
        .then(|| format!("{} remote VTEPs; floods reach only the first {MAX_FLOOD_VTEPS}", vteps.len()))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use datapath_common::{ArpKey, FDB_F_LOCAL, FdbKey, MAX_FLOOD_VTEPS, NET_TYPE_VXLAN};
    use serde_json::json;

    use crate::{
        bindings::Bindings,
        config::Config,
        desired::{Allocations, Derived, derive},
        netlink::Devices,
        tunnel::TUNNEL_DEVICE,
    };

    const CONFIG: &str = r#"
host = "node0"
bindings = "/b.json"
pin_path = "/sys/fs/bpf/t"
local_ip = "192.0.2.10"
tunnel_types = ["vxlan"]
"#;

    fn mac(host: u8, n: u8) -> String {
        format!("fa:16:3e:00:{host:02x}:{n:02x}")
    }

    /// A VXLAN network (VNI 5000) with `per_host` ports on each of `hosts`, and the agents of `agents`.
    fn derive_tunnel(hosts: &[&str], per_host: u8, agents: serde_json::Value) -> (Derived, u32) {
        let mut ports = Vec::new();
        for (h, host) in hosts.iter().enumerate() {
            for n in 0..per_host {
                ports.push(json!({
                    "id": format!("{h:04x}{n:04x}-0000-4000-8000-000000000000"), "network_id": "t",
                    "mac_address": mac(h as u8, n), "binding:host_id": host,
                    "fixed_ips": [{"ip_address": format!("10.20.{h}.{n}")}, {"ip_address": format!("2001:db8::{h}:{n}")}],
                }));
            }
        }
        let doc = json!({
            "networks": [{"id": "t", "provider:network_type": "vxlan", "provider:segmentation_id": 5000, "mtu": 1450}],
            "ports": ports, "agents": agents,
        });
        let b = Bindings::parse_str(&doc.to_string(), "test").unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        let mut devices: Devices = [(TUNNEL_DEVICE.to_string(), 3)].into();
        devices.insert("tap00000000-00".into(), 10);
        let out =
            derive(&Config::parse_str(CONFIG, "test").unwrap(), &b, &devices, &mut Allocations::default());
        let idx = out.networks[0].net_index.expect("the network is programmed");
        (out, idx)
    }

    fn agent(host: &str, ip: &str) -> serde_json::Value {
        json!({"host": host, "configurations": {"tunneling_ip": ip}})
    }

    #[test]
    fn remote_ports_are_fdb_entries_behind_their_vtep_and_each_vtep_floods_once() {
        let agents = json!([
            agent("node0", "192.0.2.10"),
            agent("node1", "192.0.2.11"),
            agent("node2", "192.0.2.12"),
            agent("node2", "192.0.2.99"),
            agent("node4", "192.0.2.10"),
        ]);
        let (out, idx) = derive_tunnel(&["node0", "node1", "node2", "node3", "node4"], 2, agents);
        assert_eq!(out.state.networks[&idx].net_type, NET_TYPE_VXLAN);
        let fdb = |host: u8, n: u8| {
            let m = crate::bindings::parse_mac(&mac(host, n)).unwrap();
            out.state.fdb.get(&FdbKey { net_index: idx, mac: m, _pad: [0; 2] }).copied()
        };
        assert_eq!(fdb(0, 0).unwrap().flags, FDB_F_LOCAL, "the local port with a device");
        assert!(fdb(0, 1).is_none(), "a local port without a device is nowhere");
        for n in 0..2 {
            assert_eq!(fdb(1, n).unwrap().vtep_ipv4, u32::from(Ipv4Addr::new(192, 0, 2, 11)));
            assert_eq!(fdb(1, n).unwrap().ifindex, 3, "behind the tunnel device");
            // The first agent entry of a host wins.
            assert_eq!(fdb(2, n).unwrap().vtep_ipv4, u32::from(Ipv4Addr::new(192, 0, 2, 12)));
            assert!(fdb(3, n).is_none(), "a host with no agent has no VTEP");
            assert!(fdb(4, n).is_none(), "a host claiming this node's own VTEP is not a remote VTEP");
        }
        let set = out.state.flood_vteps[&idx];
        let vteps: Vec<Ipv4Addr> =
            set.vtep_ipv4[..set.count as usize].iter().map(|v| Ipv4Addr::from(*v)).collect();
        assert_eq!(vteps, [Ipv4Addr::new(192, 0, 2, 11), Ipv4Addr::new(192, 0, 2, 12)]);
        assert!(out.networks[0].error.is_empty());
    }

    #[test]
    fn the_arp_table_holds_every_ipv4_address_of_the_network_on_any_host() {
        let (out, idx) =
            derive_tunnel(&["node0", "node1", "node3"], 2, json!([agent("node1", "192.0.2.11")]));
        let arp: Vec<([u8; 4], [u8; 6])> = out.state.arp.iter().map(|(k, v)| (k.ipv4, v.mac)).collect();
        assert_eq!(arp.len(), 6, "two ports on each of three hosts, IPv6 addresses left out: {arp:?}");
        let key = ArpKey { net_index: idx, ipv4: [10, 20, 2, 1] };
        assert_eq!(out.state.arp[&key].mac, crate::bindings::parse_mac(&mac(2, 1)).unwrap());
    }

    #[test]
    fn more_remote_vteps_than_the_flood_list_holds_are_reported() {
        let hosts: Vec<String> = (0..=MAX_FLOOD_VTEPS + 1).map(|h| format!("node{h}")).collect();
        let agents: Vec<_> =
            (1..=MAX_FLOOD_VTEPS + 1).map(|h| agent(&hosts[h], &format!("192.0.3.{h}"))).collect();
        let host_refs: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let (out, idx) = derive_tunnel(&host_refs, 1, json!(agents));
        assert_eq!(out.state.flood_vteps[&idx].count as usize, MAX_FLOOD_VTEPS);
        let error = &out.networks[0].error;
        assert!(error.contains(&format!("{} remote VTEPs", MAX_FLOOD_VTEPS + 1)), "{error}");
    }
}
