//! The node's own address on the mapped uplink, as small clouds lay it out
//! (OVS puts it on br-ethX's internal port): with `untagged_to_host`, the
//! untagged frames no flat network claims reach the host stack, so VXLAN runs
//! over the same NIC as the VLAN networks. Without it they are dropped.

use std::time::Duration;

use datapath_tests::cluster::{Cluster, PortSpec, agents_json, network_json, vtep_ip};
use serde_json::json;

use crate::scenario::{NET1, vm1, vm2};

const TUN: &str = "9d277051-a513-4bdb-fbf4-b1864e08484a";

/// Two nodes whose VTEP address is on eth2, the uplink of the VLAN networks;
/// node0 runs the XDP stage, node1 the TC stage alone. `extra` goes into both configs.
fn cluster(tag: &str, extra: &str) -> (Cluster, [usize; 4], [PortSpec; 4]) {
    let mut c = Cluster::new(tag, 2).unwrap();
    for i in 0..2 {
        let node = format!("node{i}");
        let ip = vtep_ip(i);
        c.node(&node).ns.exec(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth2"]).unwrap();
        let xdp = if i == 0 { "native" } else { "off" };
        c.append_config(
            &node,
            &format!("local_ip = \"{ip}\"\ntunnel_types = [\"vxlan\"]\nxdp = \"{xdp}\"\n{extra}"),
        )
        .unwrap();
    }
    let mut tun = network_json(TUN, "tun1", "vxlan", Some(6000));
    tun["mtu"] = json!(1450);
    tun["provider:physical_network"] = serde_json::Value::Null;
    let x0 =
        PortSpec::vm("a9a9a9a9-1111-4111-8111-111111111111", TUN, "fa:16:3e:a9:00:02", "10.30.0.2", "node0");
    let x1 =
        PortSpec::vm("b9b9b9b9-1111-4111-8111-111111111111", TUN, "fa:16:3e:b9:00:03", "10.30.0.3", "node1");
    let (v0, v1) = (vm1(), vm2());
    let ports = [x0, x1, v0, v1];
    c.write_bindings(&json!({
        "networks": [tun, network_json(NET1, "net1", "vlan", Some(1000))],
        "ports": ports.iter().map(PortSpec::to_json).collect::<Vec<_>>(),
        "agents": agents_json(2),
    }))
    .unwrap();
    let mut vms = [0; 4];
    for (i, p) in ports.iter().enumerate() {
        vms[i] = c.add_vm(&p.host, p.clone()).unwrap();
        c.vms[vms[i]].set_static_ip().unwrap();
        if p.network_id == TUN {
            c.vms[vms[i]].exec(&["ip", "link", "set", "eth0", "mtu", "1450"]).unwrap();
        }
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    (c, vms, ports)
}

#[test]
fn vxlan_over_the_vlan_uplink_with_the_nodes_address_on_it() {
    let (c, vms, ports) = cluster("host-uplink", "untagged_to_host = true\n");
    assert!(
        c.vms[vms[0]].ping_until(&ports[1].ip, Duration::from_secs(10)),
        "VXLAN over eth2, node0 -> node1"
    );
    assert!(c.vms[vms[1]].reaches(&ports[0].ip), "and back");
    assert!(c.vms[vms[2]].reaches(&ports[3].ip), "the VLAN network on the same uplink");
    // The underlay crossed both stages of node0's uplink on its way to the host.
    let s = c.cli_json("node0", &["stats", "--port", "eth2"]).unwrap();
    let (x, tc) = (&s["ports"][0]["xdp"], &s["ports"][0]);
    assert!(x["actions"]["passed"].as_u64().unwrap() > 0, "{x}");
    assert!(tc["actions"]["passed"].as_u64().unwrap() > 0, "the TC stage handed the VXLAN to the host: {tc}");
    assert_eq!(x["drops"]["unknown_segment"], serde_json::Value::Null, "nothing untagged dropped: {x}");
    let s = c.cli_json("node1", &["stats", "--port", "eth2"]).unwrap();
    let tc = &s["ports"][0];
    assert!(tc["actions"]["passed"].as_u64().unwrap() > 0, "node1 (TC alone) too: {tc}");
}

#[test]
fn without_untagged_to_host_the_uplink_keeps_the_host_off_the_wire() {
    let (c, vms, ports) = cluster("host-uplink-off", "");
    assert!(c.vms[vms[2]].ping_until(&ports[3].ip, Duration::from_secs(10)), "VLAN works");
    // Each node's host asks for the other's VTEP address, untagged: dropped on arrival.
    assert!(!c.vms[vms[0]].ping(&ports[1].ip, 3), "no VXLAN node0 -> node1");
    assert!(!c.vms[vms[1]].ping(&ports[0].ip, 3), "nor node1 -> node0");
    let unknown = |node: &str, stage: Option<&str>| {
        let s = c.cli_json(node, &["stats", "--port", "eth2"]).unwrap();
        let p = &s["ports"][0];
        let p = stage.map_or(p, |k| &p[k]);
        p["drops"]["unknown_segment"].as_u64().unwrap_or(0)
    };
    assert!(unknown("node0", Some("xdp")) > 0, "node0 drops node1's in its driver");
    assert!(unknown("node1", None) > 0, "node1 (TC alone) drops node0's");
}
