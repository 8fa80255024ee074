//! The seed walkthrough on two nodes: DHCP from a qdhcp namespace, pings
//! within and across nodes, only tag 1000 on the wire, and TCP across nodes.

use std::time::Duration;

use datapath_tests::{capture::Capture, cluster::Cluster};

use crate::scenario::*;

fn mac(s: &str) -> [u8; 6] {
    datapath_user::bindings::parse_mac(s).unwrap()
}

/// Frames of `macs` seen on the wire, and whether each carried exactly `vlan {tag}`.
fn wire_frames_of<'a>(lines: &'a [String], macs: &[&str]) -> Vec<&'a String> {
    lines.iter().filter(|l| macs.iter().any(|m| l.contains(m))).collect()
}

#[test]
fn seed_vlan_network_dhcp_ping_tags_and_tcp_across_two_nodes() {
    let c = seed("seed", None);
    // xdp = "auto" leaves veth uplinks on the TC stage alone, and says so.
    let status = c.cli_json("node0", &["status"]).unwrap();
    let eth2 = status["xdp"]["eth2"].as_str().unwrap_or_default();
    assert!(eth2.starts_with("tc only (veth"), "{status}");
}

/// The seed with the XDP stage in the uplinks' driver (veth's native XDP):
/// the same traffic, every frame from the wire through both stages.
#[test]
fn seed_scenario_with_the_xdp_stage_native_on_the_uplinks() {
    let c = seed("seed-xdp", Some("native"));
    for node in ["node0", "node1"] {
        let status = c.cli_json(node, &["status"]).unwrap();
        assert_eq!(status["xdp"]["eth2"], "native", "{node}: {status}");
        let shown = c.node(node).ns.exec(&["ip", "link", "show", "eth2"]).unwrap();
        assert!(shown.contains("xdp"), "{node}: a native XDP program on eth2: {shown}");
        let stats = c.cli_json(node, &["stats", "--port", "eth2"]).unwrap();
        let x = &stats["ports"][0]["xdp"];
        let (rx, passed) = (x["actions"]["rx"].as_u64().unwrap(), x["actions"]["passed"].as_u64().unwrap());
        assert!(rx > 100, "{node}: the TCP stream crossed the XDP stage: {x}");
        // The fabric's own frames (IPv6 ND and MLD of the bridge's ports) are
        // untagged, and no flat network is mapped: those go, in the driver.
        let dropped = x["dropped"].as_u64().unwrap();
        assert_eq!(x["drops"].as_object().unwrap().len(), dropped.min(1) as usize, "{node}: {x}");
        assert_eq!(x["drops"]["unknown_segment"].as_u64().unwrap_or(0), dropped, "{node}: {x}");
        assert_eq!(passed + dropped, rx, "{node}: the rest went on to the TC stage: {x}");
        let tc = &stats["ports"][0];
        assert_eq!(tc["drops"]["unknown_segment"], serde_json::Value::Null, "{node}: none left for TC: {tc}");
    }
}

/// The seed scenario on two nodes, with `xdp` in both agents' configs if given.
fn seed(tag: &str, xdp: Option<&str>) -> Cluster {
    let mut c = Cluster::new(tag, 2).unwrap();
    if let Some(x) = xdp {
        for n in ["node0", "node1"] {
            c.config_line(n, &format!("xdp = \"{x}\"")).unwrap();
        }
    }
    let (p1, p2, d) = (vm1(), vm2(), dhcp1());
    c.write_bindings(&bindings(&[&p1, &p2, &d])).unwrap();
    c.add_dhcp("node0", d.clone(), &[(&p1.mac, &p1.ip), (&p2.mac, &p2.ip)], None).unwrap();
    let a = c.add_vm("node0", p1.clone()).unwrap();
    let b = c.add_vm("node1", p2.clone()).unwrap();
    let wire = Capture::start(&c.phys, "up-node0", "").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    // DHCP gives up after 8 s: on the slow 6.1 guest the agents may not have attached by then.
    for n in ["node0", "node1"] {
        c.wait_agent(n, Duration::from_secs(60)).unwrap();
    }

    let script = c.udhcpc_script().unwrap();
    assert_eq!(c.vms[a].dhcp(&script).unwrap(), p1.ip, "vm-1 (node0) leases its fixed IP");
    assert_eq!(c.vms[b].dhcp(&script).unwrap(), p2.ip, "vm-2 (node1) leases its fixed IP across the wire");

    assert!(c.vms[a].reaches(&p2.ip), "vm-1 -> vm-2 across nodes");
    assert!(c.vms[b].reaches(&p1.ip), "vm-2 -> vm-1 across nodes");
    assert!(c.vms[a].reaches(&d.ip), "vm-1 -> DHCP port on the same node");
    assert!(c.vms[b].reaches(&d.ip), "vm-2 -> DHCP port across nodes");

    // IPv6 neighbour discovery across nodes: link-local addresses (EUI-64 of the MAC).
    let ll_b =
        format!("{}%eth0", std::net::Ipv6Addr::from(datapath_user::desired::link_local_of(&mac(&p2.mac))));
    assert!(c.vms[a].reaches(&ll_b), "vm-1 -> vm-2 over IPv6 link-local ({ll_b})");

    let lines = wire.stop().unwrap();
    let ours = wire_frames_of(&lines, &[&p1.mac, &p2.mac, &d.mac]);
    assert!(ours.iter().any(|l| l.contains("BOOTP/DHCP")), "DHCP crossed the wire: {lines:#?}");
    assert!(ours.iter().any(|l| l.contains("ICMP echo request")), "pings crossed the wire: {lines:#?}");
    assert!(ours.iter().any(|l| l.contains("neighbor solicitation")), "ND crossed the wire: {lines:#?}");
    for l in &ours {
        assert!(l.contains("vlan 1000,"), "frame on the wire without tag 1000: {l}");
        assert_eq!(l.matches("vlan ").count(), 1, "frame with more than one tag: {l}");
    }

    // TCP across nodes, with the VMs' default offloads (checksum-partial, GSO).
    let (bytes, bps) = c.vms[a].tcp_to(&c.vms[b], 3).unwrap();
    println!("iperf3 TCP vm-1 (node0) -> vm-2 (node1): {:.2} Gbit/s, {bytes} bytes", bps / 1e9);
    assert!(bytes > 10_000_000, "TCP moved only {bytes} bytes in 3 s");
    c
}
