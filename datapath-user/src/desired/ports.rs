//! The devices the programs run on: uplinks and the tunnel device, the ports
//! bound to this host, and taps nobody bound here.

use datapath_common::{
    FDB_F_LOCAL, FdbEntry, FdbKey, MAX_FLOOD_PORTS, MAX_PORTS, MAX_SUBPORTS, PORT_F_ADMIN_UP,
    PORT_F_ANTI_SPOOF, PORT_F_BOUND, PORT_F_HOST_UNTAGGED, PORT_F_QOS, PORT_F_SECGROUPS, PORT_KIND_NETWORK,
    PORT_KIND_TUNNEL, PORT_KIND_UPLINK, PORT_KIND_VM, PortInfo, TrunkVid, names,
};

use super::{
    Allocations, Attachment, Derived, PortReport, PortState, TrunkRole, addresses::add_allowed,
    networks::Plans,
};
use crate::{
    bindings::{Port, QosPolicies, device_name},
    config::{Config, XdpChoice},
    netlink::Devices,
    tunnel::TUNNEL_DEVICE,
};

fn no_slot() -> PortState {
    PortState::Error(format!("no free stats slot (max {MAX_PORTS} ports)"))
}

/// A port entry of no network: uplinks, the tunnel device and unbound taps.
fn networkless(flags: u32, slot: u32, kind: u8) -> PortInfo {
    PortInfo { net_index: 0, flags, stats_slot: slot, kind, _pad: [0; 3] }
}

/// A device the programs run on that belongs to no network: an uplink or the tunnel device.
pub(super) struct Wire {
    pub device: String,
    kind: u8,
    program: &'static str,
    /// The XDP stage, on uplinks when the config wants it.
    xdp: Option<&'static str>,
    label: &'static str,
    /// `PORT_F_*` flags beyond bound and up.
    flags: u32,
}

/// Every mapped interface (an uplink), and the tunnel device, in config order.
pub(super) fn wire_devices(cfg: &Config) -> Vec<Wire> {
    let mut wires: Vec<Wire> = cfg
        .physical_interface_mappings
        .iter()
        .map(|m| Wire {
            device: m.interface.clone(),
            kind: PORT_KIND_UPLINK,
            program: names::PROG_UPLINK,
            xdp: (cfg.xdp != XdpChoice::Off).then_some(names::PROG_UPLINK_XDP),
            label: "uplink",
            flags: if cfg.untagged_to_host { PORT_F_HOST_UNTAGGED } else { 0 },
        })
        .collect();
    if cfg.tunnel_ip().is_some() {
        wires.push(Wire {
            device: TUNNEL_DEVICE.into(),
            kind: PORT_KIND_TUNNEL,
            program: names::PROG_TUNNEL,
            xdp: None,
            label: "tunnel",
            flags: 0,
        });
    }
    wires
}

/// One wire's entry and report.
pub(super) fn wire(out: &mut Derived, w: &Wire, devices: &Devices, alloc: &mut Allocations) {
    let mut report = PortReport {
        id: String::new(),
        device: w.device.clone(),
        ifindex: None,
        network_id: String::new(),
        net_index: None,
        kind: w.label,
        state: PortState::Up,
        trunk: None,
        qos_policy: None,
    };
    // A mapped interface that is missing (deleted, renamed, not yet created) is
    // listed, so that `datapath ports` shows why its networks do not reach the wire.
    let Some(&ifindex) = devices.get(&w.device) else {
        report.state = PortState::NoDevice;
        out.ports.push(report);
        return;
    };
    report.ifindex = Some(ifindex);
    match alloc.slot(ifindex) {
        Some(slot) => {
            out.state
                .ports
                .insert(ifindex, networkless(PORT_F_BOUND | PORT_F_ADMIN_UP | w.flags, slot, w.kind));
            out.attach.insert(
                ifindex,
                Attachment { device: w.device.clone(), program: w.program, egress: None, xdp: w.xdp },
            );
        }
        None => report.state = no_slot(),
    }
    out.ports.push(report);
}

/// The ports bound to this host: their entry, FDB entry, flood membership
/// and allowed addresses.
pub(super) fn bound(
    out: &mut Derived,
    local: &[&Port],
    plans: &mut Plans,
    devices: &Devices,
    alloc: &mut Allocations,
    qos: &QosPolicies,
) {
    // Ports already flooding go first (stable otherwise): when a network is
    // full, a port new to it is the one refused, never one that works.
    let mut order: Vec<(usize, &Port)> = local.iter().copied().enumerate().collect();
    order.sort_by_key(|(_, p)| !known_ifindex(p, devices, alloc).is_some_and(|i| alloc.was_flooding(i)));
    // One report per port; put back in the bindings' order afterwards, so that
    // the reports do not depend on what was flooding before.
    let first_report = out.ports.len();
    let positions: Vec<usize> = order.iter().map(|(i, _)| *i).collect();
    for (_, port) in order {
        let device = port.device_name();
        // A subport's device is its parent's tap; its id is numbered here.
        let parent = port.subport.as_ref().map(|s| (devices.get(&device_name(&s.parent_id)).copied(), s.vid));
        let mut ifindex = match parent {
            Some((parent, vid)) => parent.and_then(|p| alloc.subport_of(p, vid as u32)),
            None => devices.get(&device).copied(),
        };
        let mut report = PortReport {
            id: port.id.clone(),
            device: device.clone(),
            ifindex,
            network_id: port.network_id.clone(),
            net_index: None,
            kind: if port.subport.is_some() {
                "subport"
            } else if port.is_network_owned() {
                "network"
            } else {
                "vm"
            },
            state: PortState::Up,
            trunk: trunk_role(port),
            qos_policy: None,
        };
        let Some(plan) = plans.planned.get_mut(port.network_id.as_str()) else {
            let why = plans
                .refused
                .get(port.network_id.as_str())
                .cloned()
                .unwrap_or_else(|| format!("network {} is not in the bindings", port.network_id));
            report.state = PortState::Error(format!("network refused: {why}"));
            out.ports.push(report);
            continue;
        };
        report.net_index = Some(plan.index);
        // Reported even when it enforces nothing (minimums are Nova's): the operator sees which one applies.
        report.qos_policy =
            super::qos::policy_of(port, plan.net).filter(|q| qos.contains_key(*q)).map(String::from);
        if let Some((Some(parent), vid)) = parent {
            ifindex = alloc.subport_id(parent, vid as u32);
            if ifindex.is_none() {
                report.state = PortState::Error(format!("no free subport id (max {MAX_SUBPORTS} subports)"));
                out.ports.push(report);
                continue;
            }
            report.ifindex = ifindex;
        }
        let Some(ifindex) = ifindex else {
            report.state = PortState::NoDevice;
            out.ports.push(report);
            continue;
        };
        let admin_up = port.admin_state_up && plan.net.admin_state_up;
        if admin_up && plan.members.len() >= MAX_FLOOD_PORTS {
            report.state =
                PortState::Error(format!("network has more than {MAX_FLOOD_PORTS} local ports on this node"));
            out.ports.push(report);
            continue;
        }
        let Some(slot) = alloc.slot(ifindex) else {
            report.state = no_slot();
            out.ports.push(report);
            continue;
        };
        let anti_spoof = !port.anti_spoof_exempt();
        let mut flags = PORT_F_BOUND;
        if admin_up {
            flags |= PORT_F_ADMIN_UP;
        }
        if anti_spoof {
            flags |= PORT_F_ANTI_SPOOF;
            if port.security_groups.is_some() {
                flags |= PORT_F_SECGROUPS;
            }
        }
        if let Some(q) = super::qos::entry(port, plan.net, qos) {
            flags |= PORT_F_QOS;
            out.state.qos_ports.insert(ifindex, q);
        }
        let kind = if port.is_network_owned() { PORT_KIND_NETWORK } else { PORT_KIND_VM };
        out.state
            .ports
            .insert(ifindex, PortInfo { net_index: plan.index, flags, stats_slot: slot, kind, _pad: [0; 3] });
        match parent {
            // The parent's tap carries it: its programs are the parent's.
            Some((Some(parent), vid)) => {
                let tv = TrunkVid { parent_ifindex: parent, vid: vid as u32 };
                out.state.subports.insert(ifindex, tv);
                out.state.trunk_vids.insert(tv, ifindex);
            }
            _ => {
                out.attach.insert(
                    ifindex,
                    Attachment {
                        device: device.clone(),
                        program: names::PROG_VM_PORT,
                        egress: Some(names::PROG_VM_PORT_OUT),
                        xdp: None,
                    },
                );
            }
        }
        plan.local_ports += 1;
        if admin_up {
            plan.members.push(ifindex);
            out.state.fdb.insert(
                FdbKey { net_index: plan.index, mac: port.mac, _pad: [0; 2] },
                FdbEntry { ifindex, flags: FDB_F_LOCAL, vtep_ipv4: 0 },
            );
        } else {
            report.state = PortState::AdminDown;
        }
        if anti_spoof {
            add_allowed(&mut out.state, ifindex, port);
        }
        out.ports.push(report);
    }
    let mut reports: Vec<(usize, PortReport)> =
        positions.into_iter().zip(out.ports.drain(first_report..)).collect();
    reports.sort_by_key(|(i, _)| *i);
    out.ports.extend(reports.into_iter().map(|(_, r)| r));
}

/// Where `port` stands in a trunk: its parent, one of its subports, or neither.
fn trunk_role(port: &Port) -> Option<TrunkRole> {
    match (&port.subport, &port.trunk) {
        (Some(s), _) => Some(TrunkRole::Subport {
            trunk_id: s.trunk_id.clone(),
            parent: device_name(&s.parent_id),
            vid: s.vid,
        }),
        (None, Some(id)) => Some(TrunkRole::Parent { trunk_id: id.clone() }),
        (None, None) => None,
    }
}

/// The ifindex (or subport id) `port` already has, numbering nothing.
fn known_ifindex(port: &Port, devices: &Devices, alloc: &Allocations) -> Option<u32> {
    match &port.subport {
        Some(s) => devices.get(&device_name(&s.parent_id)).and_then(|p| alloc.subport_of(*p, s.vid as u32)),
        None => devices.get(&port.device_name()).copied(),
    }
}

/// A tap nobody bound to this host: attached so that its frames are dropped and counted.
pub(super) fn unbound(out: &mut Derived, name: &str, ifindex: u32, alloc: &mut Allocations) {
    let mut report = PortReport {
        id: String::new(),
        device: name.to_string(),
        ifindex: Some(ifindex),
        network_id: String::new(),
        net_index: None,
        kind: "unbound",
        state: PortState::Unbound,
        trunk: None,
        qos_policy: None,
    };
    match alloc.slot(ifindex) {
        Some(slot) => {
            out.state.ports.insert(ifindex, networkless(0, slot, PORT_KIND_VM));
            // Nothing is delivered to a tap of no network: no egress program.
            out.attach.insert(
                ifindex,
                Attachment {
                    device: name.to_string(),
                    program: names::PROG_VM_PORT,
                    egress: None,
                    xdp: None,
                },
            );
        }
        None => report.state = no_slot(),
    }
    out.ports.push(report);
}

#[cfg(test)]
mod tests {
    use datapath_common::{MAX_FLOOD_PORTS, PORT_F_ADMIN_UP};
    use serde_json::json;

    use crate::{
        bindings::Bindings,
        config::Config,
        desired::{Allocations, PortState, derive, tests::CONFIG},
        netlink::Devices,
    };

    #[test]
    fn the_flood_list_caps_admin_up_ports_of_a_network_at_64() {
        let n = MAX_FLOOD_PORTS + 2;
        let mut ports: Vec<_> = (0..n)
            .map(|i| {
                json!({"id": format!("{i:08x}-0000-4000-8000-000000000000"), "network_id": "n",
                       "mac_address": format!("fa:16:3e:00:01:{i:02x}"), "binding:host_id": "node0"})
            })
            .collect();
        // An admin-down port takes no place in the flood list, so it is never refused for it.
        ports[n - 1]["admin_state_up"] = json!(false);
        let doc = json!({"networks": [{"id": "n", "provider:network_type": "vlan",
            "provider:physical_network": "default", "provider:segmentation_id": 10}], "ports": ports});
        let b = Bindings::parse_str(&doc.to_string(), "test").unwrap();
        let mut devices: Devices = [("eth2".to_string(), 2)].into();
        for i in 0..n {
            devices.insert(format!("tap{i:08x}-00"), 100 + i as u32);
        }
        let out =
            derive(&Config::parse_str(CONFIG, "test").unwrap(), &b, &devices, &mut Allocations::default());
        let state_of =
            |i: usize| &out.ports.iter().find(|p| p.ifindex == Some(100 + i as u32)).unwrap().state;
        for i in 0..MAX_FLOOD_PORTS {
            assert_eq!(state_of(i), &PortState::Up, "port {i}");
        }
        let refused = state_of(MAX_FLOOD_PORTS);
        assert!(
            matches!(refused, PortState::Error(e) if e.contains("more than 64 local ports")),
            "{refused:?}"
        );
        assert!(!out.state.ports.contains_key(&(100 + MAX_FLOOD_PORTS as u32)), "the 65th is not programmed");
        assert_eq!(state_of(n - 1), &PortState::AdminDown);
        assert_eq!(out.state.ports[&(100 + n as u32 - 1)].flags & PORT_F_ADMIN_UP, 0);
        let set = out.state.flood_sets.values().next().unwrap();
        assert_eq!(set.count as usize, MAX_FLOOD_PORTS);
    }

    /// Found by the chaos work: a 65th port listed before the others took a
    /// place in the full flood list, and a working port was refused instead.
    #[test]
    fn a_port_new_to_a_full_network_never_pushes_out_a_working_one() {
        let port = |i: usize| {
            json!({"id": format!("{i:08x}-0000-4000-8000-000000000000"), "network_id": "n",
                   "mac_address": format!("fa:16:3e:00:03:{i:02x}"), "binding:host_id": "node0"})
        };
        let net = json!({"id": "n", "provider:network_type": "vlan",
            "provider:physical_network": "default", "provider:segmentation_id": 10});
        let mut devices: Devices = [("eth2".to_string(), 2)].into();
        for i in 0..=MAX_FLOOD_PORTS {
            devices.insert(format!("tap{i:08x}-00"), 100 + i as u32);
        }
        let cfg = Config::parse_str(CONFIG, "test").unwrap();
        let mut alloc = Allocations::default();
        // 64 ports working; then the 65th appears first in the document.
        let first: Vec<_> = (0..MAX_FLOOD_PORTS).map(port).collect();
        let b = Bindings::parse_str(&json!({"networks": [net.clone()], "ports": first}).to_string(), "t")
            .unwrap();
        derive(&cfg, &b, &devices, &mut alloc);
        let mut all = vec![port(MAX_FLOOD_PORTS)];
        all.extend((0..MAX_FLOOD_PORTS).map(port));
        let b = Bindings::parse_str(&json!({"networks": [net], "ports": all}).to_string(), "t").unwrap();
        let out = derive(&cfg, &b, &devices, &mut alloc);
        let state_of =
            |i: usize| &out.ports.iter().find(|p| p.ifindex == Some(100 + i as u32)).unwrap().state;
        for i in 0..MAX_FLOOD_PORTS {
            assert_eq!(state_of(i), &PortState::Up, "working port {i}");
        }
        assert!(matches!(state_of(MAX_FLOOD_PORTS), PortState::Error(_)), "{:?}", state_of(MAX_FLOOD_PORTS));
        // Deriving again changes nothing, reports included (they keep the bindings' order).
        assert_eq!(derive(&cfg, &b, &devices, &mut alloc), out);
        // After a restart, the numbering recovered from the maps keeps the same choice.
        let mut recovered = Allocations::recover(&out.state);
        let again = derive(&cfg, &b, &devices, &mut recovered);
        assert_eq!(again.state, out.state);
    }

    /// Two physical networks whose interfaces are missing here must not
    /// merge: the same VLAN on both would otherwise get one local index.
    #[test]
    fn networks_without_their_interface_never_share_a_local_network() {
        let cfg = "host = \"node0\"\nphysical_interface_mappings = [\"a:eth5\", \"b:eth6\"]\nbindings = \"/b\"\npin_path = \"/sys/fs/bpf/t\"\n";
        let net = |id: &str, physnet: &str| json!({"id": id, "provider:network_type": "vlan", "provider:physical_network": physnet, "provider:segmentation_id": 10});
        let port = |i: u8, net: &str| {
            json!({"id": format!("{i:08x}-0000-4000-8000-000000000000"), "network_id": net,
                   "mac_address": format!("fa:16:3e:00:02:{i:02x}"), "binding:host_id": "node0"})
        };
        let doc =
            json!({"networks": [net("na", "a"), net("nb", "b")], "ports": [port(1, "na"), port(2, "nb")]});
        let b = Bindings::parse_str(&doc.to_string(), "test").unwrap();
        let devices: Devices =
            [("tap00000001-00".to_string(), 11), ("tap00000002-00".to_string(), 12)].into();
        let out = derive(&Config::parse_str(cfg, "test").unwrap(), &b, &devices, &mut Allocations::default());
        let (p1, p2) = (out.state.ports.get(&11), out.state.ports.get(&12));
        assert!(p1.is_some(), "the first network's port is programmed");
        assert!(
            p2.is_none_or(|p| Some(p.net_index) != p1.map(|p| p.net_index)),
            "the two ports share a network"
        );
        let nb = out.networks.iter().find(|n| n.id == "nb").unwrap();
        assert!(nb.error.contains("interface is missing"), "{}", nb.error);
        // Both uplinks are listed, without a device, so that `datapath ports` says why.
        for dev in ["eth5", "eth6"] {
            let r = out.ports.iter().find(|p| p.device == dev).unwrap_or_else(|| panic!("{dev} not listed"));
            assert_eq!((r.kind, &r.state, r.ifindex), ("uplink", &PortState::NoDevice, None), "{dev}");
        }
    }
}

#[cfg(test)]
mod trunk_tests {
    use std::collections::BTreeSet;

    use datapath_common::{
        FDB_F_LOCAL, FdbKey, PORT_F_SECGROUPS, PORT_KIND_VM, SUBPORT_ID_BASE, TrunkVid, is_subport,
    };
    use serde_json::{Value, json};

    use crate::{
        bindings::{Bindings, Catalog},
        config::Config,
        desired::{
            Allocations, Engine, PortState, Scope, TrunkRole, check_invariants, derive, tests::CONFIG,
        },
        netlink::Devices,
    };

    const PARENT: &str = "aaaaaaaa-0001-4000-8000-000000000000";
    const SUB_A: &str = "bbbbbbbb-0002-4000-8000-000000000000";
    const SUB_B: &str = "cccccccc-0003-4000-8000-000000000000";
    const MAC: &str = "fa:16:3e:00:00:01";

    fn doc(subports: &[(&str, u16)]) -> Value {
        let port = |id: &str, net: &str| {
            json!({"id": id, "network_id": net, "mac_address": MAC, "binding:host_id": "node0",
                   "device_owner": "compute:nova", "fixed_ips": [{"ip_address": "10.9.0.5"}]})
        };
        json!({
            "networks": [
                {"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 100},
                {"id": "n2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 200},
                {"id": "n3", "provider:network_type": "flat", "provider:physical_network": "default"}],
            "ports": [port(PARENT, "n1"), port(SUB_A, "n2"), port(SUB_B, "n3")],
            "trunks": [{"id": "t1", "port_id": PARENT, "sub_ports": subports.iter().map(|(p, vid)|
                json!({"port_id": p, "segmentation_type": "vlan", "segmentation_id": vid})).collect::<Vec<_>>()}]
        })
    }

    fn parse(v: &Value) -> Bindings {
        let b = Bindings::parse_str(&v.to_string(), "test").unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        b
    }

    fn devices(parent: u32) -> Devices {
        [("eth2".to_string(), 2), ("tapaaaaaaaa-00".to_string(), parent)].into()
    }

    fn cfg() -> Config {
        Config::parse_str(CONFIG, "test").unwrap()
    }

    #[test]
    fn subports_are_ports_of_their_networks_on_the_parents_tap() {
        let out = derive(
            &cfg(),
            &parse(&doc(&[(SUB_A, 101), (SUB_B, 102)])),
            &devices(10),
            &mut Allocations::default(),
        );
        check_invariants(&out).unwrap();
        let subs: Vec<_> = out.ports.iter().filter(|p| p.kind == "subport").collect();
        assert_eq!(subs.len(), 2);
        for (r, vid, net) in [(subs[0], 101, "n2"), (subs[1], 102, "n3")] {
            assert_eq!(r.device, format!("tapaaaaaaaa-00.{vid}"));
            assert_eq!((r.state.clone(), r.network_id.as_str()), (PortState::Up, net));
            let id = r.ifindex.unwrap();
            assert!(is_subport(id) && id > SUBPORT_ID_BASE, "{id:#x}");
            let info = out.state.ports[&id];
            assert_eq!((info.net_index, info.kind), (r.net_index.unwrap(), PORT_KIND_VM));
            let tv = TrunkVid { parent_ifindex: 10, vid };
            assert_eq!((out.state.subports[&id], out.state.trunk_vids[&tv]), (tv, id));
            assert!(!out.attach.contains_key(&id), "a subport has no device to attach to");
            // Its MAC (the parent's) is a local destination of its own network, and it floods there.
            let fdb = out.state.fdb
                [&FdbKey { net_index: info.net_index, mac: [0xfa, 0x16, 0x3e, 0, 0, 1], _pad: [0; 2] }];
            assert_eq!((fdb.ifindex, fdb.flags), (id, FDB_F_LOCAL));
            let set = out.state.flood_sets[&info.net_index];
            assert_eq!(&set.ifindex[..set.count as usize], &[id]);
            // Anti-spoofing applies to the subport under its own id.
            assert!(out.state.allowed_macs.keys().any(|k| k.ifindex == id));
        }
        assert_eq!(out.attach[&10].device, "tapaaaaaaaa-00", "the parent keeps its programs");
    }

    #[test]
    fn reports_name_the_trunk_of_its_parent_and_subports() {
        let out = derive(&cfg(), &parse(&doc(&[(SUB_A, 101)])), &devices(10), &mut Allocations::default());
        let role = |id: &str| out.ports.iter().find(|p| p.id == id).unwrap().trunk.clone();
        assert_eq!(role(PARENT), Some(TrunkRole::Parent { trunk_id: "t1".into() }));
        assert_eq!(
            role(SUB_A),
            Some(TrunkRole::Subport { trunk_id: "t1".into(), parent: "tapaaaaaaaa-00".into(), vid: 101 })
        );
        assert_eq!(role(SUB_B), None, "a port of no trunk");
    }

    #[test]
    fn subports_wait_for_their_parents_tap() {
        let b = parse(&doc(&[(SUB_A, 101)]));
        let out = derive(&cfg(), &b, &[("eth2".to_string(), 2)].into(), &mut Allocations::default());
        let sub = out.ports.iter().find(|p| p.kind == "subport").unwrap();
        assert_eq!((&sub.state, sub.ifindex), (&PortState::NoDevice, None));
        assert!(out.state.subports.is_empty() && out.state.trunk_vids.is_empty());
        assert!(out.state.ports.keys().all(|i| !is_subport(*i)));
    }

    /// Adding a subport re-derives its network only, keeps the other
    /// subport's id and entries, and removing it frees its id.
    #[test]
    fn subports_come_and_go_without_touching_the_others() {
        let cfg = cfg();
        let devices = devices(10);
        let mut e = Engine::new(Allocations::default());
        let one = Catalog::split(parse(&doc(&[(SUB_A, 101)])));
        e.update(&cfg, &one, &devices, Scope::Full);
        let before = e.state().clone();
        let two = Catalog::split(parse(&doc(&[(SUB_A, 101), (SUB_B, 102)])));
        let changed = two.changed_since(&one);
        assert_eq!(changed, BTreeSet::from(["n3".to_string()]), "only the new subport's network changed");
        let none = BTreeSet::new();
        let c = e.update(&cfg, &two, &devices, Scope::Changed { networks: &changed, devices: &none });
        assert!(c.diff.ports.deletes.is_empty() && c.diff.subports.deletes.is_empty());
        assert_eq!(c.diff.subports.upserts.len(), 1);
        let new_id = c.diff.subports.upserts[0].0;
        for (id, sub) in &before.subports {
            assert_eq!(e.state().subports.get(id), Some(sub), "the first subport keeps its id");
        }
        let full =
            derive(&cfg, &parse(&doc(&[(SUB_A, 101), (SUB_B, 102)])), &devices, &mut e.alloc().clone());
        assert_eq!(&full.state, e.state(), "the incremental update matches a full derivation");
        // Removed again: its entries go, and its id is free for the next one.
        let c = e.update(&cfg, &one, &devices, Scope::Changed { networks: &changed, devices: &none });
        assert!(c.diff.subports.deletes.contains(&new_id) && c.diff.trunk_vids.deletes.len() == 1);
        assert_eq!(e.state(), &before);
        check_invariants(&e.derived(&cfg)).unwrap();
    }

    #[test]
    fn subport_ids_survive_a_restart_and_follow_a_recreated_parent() {
        let cfg = cfg();
        let b = parse(&doc(&[(SUB_A, 101), (SUB_B, 102)]));
        let mut alloc = Allocations::default();
        // A subport numbered earlier keeps its id even when it is listed second now.
        let first = derive(&cfg, &parse(&doc(&[(SUB_B, 102)])), &devices(10), &mut alloc);
        let out = derive(&cfg, &b, &devices(10), &mut alloc);
        let id_b =
            |d: &crate::desired::Derived| d.state.trunk_vids[&TrunkVid { parent_ifindex: 10, vid: 102 }];
        assert_eq!(id_b(&out), id_b(&first));
        let again = derive(&cfg, &b, &devices(10), &mut Allocations::recover(&out.state));
        assert_eq!(again.state, out.state, "the numbering is recovered from the maps");
        // The VM rebooted: its tap came back under another ifindex, and the subports follow it.
        let mut e = Engine::recover(&out.state);
        let cat = Catalog::split(b);
        e.update(&cfg, &cat, &devices(10), Scope::Full);
        let moved = BTreeSet::from(["tapaaaaaaaa-00".to_string()]);
        let none = BTreeSet::new();
        e.update(&cfg, &cat, &devices(11), Scope::Changed { networks: &none, devices: &moved });
        let parents: BTreeSet<u32> = e.state().subports.values().map(|s| s.parent_ifindex).collect();
        assert_eq!(parents, BTreeSet::from([11]));
        assert_eq!(e.state().trunk_vids.len(), 2);
        check_invariants(&e.derived(&cfg)).unwrap();
    }

    #[test]
    fn a_subports_security_groups_are_its_own() {
        let mut v = doc(&[(SUB_A, 101)]);
        v["ports"][1]["security_groups"] = json!(["sg1"]);
        v["security_groups"] = json!([{"id": "sg1", "security_group_rules": [
            {"id": "r1", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 22, "port_range_max": 22}]}]);
        let mut e = Engine::new(Allocations::default());
        e.update(&cfg(), &Catalog::split(parse(&v)), &devices(10), Scope::Full);
        let id = e.state().trunk_vids[&TrunkVid { parent_ifindex: 10, vid: 101 }];
        assert_ne!(e.state().ports[&id].flags & PORT_F_SECGROUPS, 0);
        assert_eq!(e.state().ports[&10].flags & PORT_F_SECGROUPS, 0, "the parent has no groups");
        assert_eq!(e.state().sg_ports.keys().copied().collect::<Vec<_>>(), vec![id]);
    }
}

#[cfg(test)]
mod qos_tests {
    use datapath_common::PORT_F_QOS;
    use serde_json::json;

    use crate::{
        bindings::Bindings,
        config::Config,
        desired::{Allocations, check_invariants, derive, tests::CONFIG},
        netlink::Devices,
    };

    /// A port reports the policy in force, also one that only holds
    /// placement hints (enforcing nothing, so no entry and no flag).
    #[test]
    fn ports_report_their_policy_and_only_enforcing_ones_get_an_entry() {
        let port = |i: u8, policy: Option<&str>| {
            json!({"id": format!("{i:08x}-0000-4000-8000-000000000000"), "network_id": "n",
                   "mac_address": format!("fa:16:3e:00:04:{i:02x}"), "binding:host_id": "node0",
                   "qos_policy_id": policy})
        };
        let doc = json!({
            "networks": [{"id": "n", "provider:network_type": "vlan", "provider:physical_network": "default",
                          "provider:segmentation_id": 10, "qos_policy_id": "limit"}],
            "ports": [port(1, None), port(2, Some("hints"))],
            "qos_policies": [
                {"id": "limit", "rules": [{"type": "bandwidth_limit", "max_kbps": 1000}]},
                {"id": "hints", "rules": [{"type": "minimum_bandwidth", "min_kbps": 1000}]}]
        });
        let b = Bindings::parse_str(&doc.to_string(), "t").unwrap();
        let devices: Devices =
            [("eth2".to_string(), 2), ("tap00000001-00".into(), 11), ("tap00000002-00".into(), 12)].into();
        let out = derive(&Config::parse_str(CONFIG, "t").unwrap(), &b, &devices, &mut Allocations::default());
        check_invariants(&out).unwrap();
        let policy = |i: u32| out.ports.iter().find(|p| p.ifindex == Some(i)).unwrap().qos_policy.clone();
        assert_eq!((policy(11), policy(12)), (Some("limit".into()), Some("hints".into())));
        assert_ne!(out.state.ports[&11].flags & PORT_F_QOS, 0);
        assert_eq!(out.state.ports[&12].flags & PORT_F_QOS, 0, "hints enforce nothing");
        assert_eq!(out.state.qos_ports.keys().copied().collect::<Vec<_>>(), vec![11]);
    }
}
