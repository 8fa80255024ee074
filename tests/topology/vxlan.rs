//! VXLAN tenant networks on three nodes: DHCP, ping and TCP through the
//! tunnels, VNI on the wire, no traffic to a node without ports of the
//! network, the ARP responder, isolation from a VLAN network, the MTU, and
//! interop with a plain Linux VXLAN endpoint that is not ours.

use std::time::Duration;

use datapath_common::{Action, DropReason};
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec, agents_json, network_json},
    netns::Netns,
    pinned::{ifindex_in, port_view},
};
use serde_json::json;

use crate::scenario::NET1;

const TUN: &str = "8c166940-9402-4aca-eaf3-a0753f07373f";
const VNI: u32 = 5000;

fn tun_port(id: &str, mac: &str, ip: &str, host: &str) -> PortSpec {
    PortSpec::vm(id, TUN, mac, ip, host)
}

#[test]
fn vxlan_network_across_three_nodes_with_l2pop_arp_responder_and_interop() {
    three_nodes("vxlan", None);
}

/// The same with the uplinks' XDP stage in the driver on every node: the
/// VLAN network's frames cross it, the tunnels' do not, and nothing changes.
#[test]
fn vxlan_network_across_three_nodes_with_the_xdp_stage_native() {
    three_nodes("vxlan-xdp", Some("native"));
}

/// The three-node VXLAN scenario, with `xdp` in every agent's config if given.
fn three_nodes(tag: &str, xdp: Option<&str>) {
    let mut c = Cluster::with_tunnels(tag, 3).unwrap();
    let a = tun_port("a1a1a1a1-1111-4111-8111-111111111111", "fa:16:3e:a1:00:02", "10.20.0.2", "node0");
    let b = tun_port("b1b1b1b1-1111-4111-8111-111111111111", "fa:16:3e:b1:00:03", "10.20.0.3", "node1");
    let mut d = tun_port("d1d1d1d1-1111-4111-8111-111111111111", "fa:16:3e:d1:00:0a", "10.20.0.10", "node0");
    d.owner = "network:dhcp".into();
    // A VLAN network on node0 and node2 reusing the addresses.
    let v0 =
        PortSpec::vm("c0c0c0c0-1111-4111-8111-111111111111", NET1, "fa:16:3e:c0:00:02", "10.20.0.2", "node0");
    let v2 =
        PortSpec::vm("c2c2c2c2-1111-4111-8111-111111111111", NET1, "fa:16:3e:c2:00:03", "10.20.0.3", "node2");
    // An endpoint that is not ours: a plain Linux VXLAN device at 192.0.2.99.
    let foreign =
        tun_port("f0f0f0f0-1111-4111-8111-111111111111", "fa:16:3e:f0:00:32", "10.20.0.50", "foreign");
    let mut agents = agents_json(3);
    agents.push(json!({"host": "foreign", "agent_type": "Linux bridge agent", "configurations": {"tunneling_ip": "192.0.2.99"}}));
    let mut tun = network_json(TUN, "tun1", "vxlan", Some(VNI));
    tun["mtu"] = json!(1450);
    tun["provider:physical_network"] = serde_json::Value::Null;
    c.write_bindings(&json!({
        "networks": [tun, network_json(NET1, "net1", "vlan", Some(1000))],
        "ports": [a.to_json(), b.to_json(), d.to_json(), v0.to_json(), v2.to_json(), foreign.to_json()],
        "agents": agents,
    }))
    .unwrap();
    c.add_dhcp("node0", d.clone(), &[(&a.mac, &a.ip), (&b.mac, &b.ip)], Some(1450)).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    let iv0 = c.add_vm("node0", v0.clone()).unwrap();
    let iv2 = c.add_vm("node2", v2.clone()).unwrap();
    for i in [ia, ib] {
        // What DHCP option 26 tells a guest on a 1450 network.
        c.vms[i].exec(&["ip", "link", "set", "eth0", "mtu", "1450"]).unwrap();
    }
    c.vms[iv0].set_static_ip().unwrap();
    c.vms[iv2].set_static_ip().unwrap();

    let fns = Netns::new("foreign").unwrap();
    c.underlay_port(&fns, "foreign", "192.0.2.99").unwrap();
    let vx = [
        "ip",
        "link",
        "add",
        "vx0",
        "type",
        "vxlan",
        "id",
        "5000",
        "dstport",
        "4789",
        "local",
        "192.0.2.99",
        "nolearning",
    ];
    fns.exec(&vx).unwrap();
    fns.exec(&["ip", "link", "set", "vx0", "address", &foreign.mac, "mtu", "1450", "up"]).unwrap();
    fns.exec(&["ip", "addr", "add", "10.20.0.50/24", "dev", "vx0"]).unwrap();
    for dst in ["192.0.2.10", "192.0.2.11"] {
        fns.exec(&["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", dst]).unwrap();
    }

    // A second endpoint behind the foreign VTEP that the bindings do not name:
    // our nodes can only learn it from the tunnel.
    let unnamed_mac = "fa:16:3e:f0:00:99";
    let fns2 = Netns::new("foreign2").unwrap();
    fns.exec(&["ip", "link", "add", "mv0", "link", "vx0", "type", "macvlan", "mode", "bridge"]).unwrap();
    fns.exec(&["ip", "link", "set", "mv0", "netns", fns2.name()]).unwrap();
    fns2.exec(&["ip", "link", "set", "mv0", "address", unnamed_mac, "mtu", "1450", "up"]).unwrap();
    fns2.exec(&["ip", "addr", "add", "10.20.0.51/24", "dev", "mv0"]).unwrap();

    let ul1 = Capture::start(&c.phys, "ul-node1", "udp port 4789").unwrap();
    let in_vlan_vm = Capture::start(&c.vms[iv0].ns, "eth0", "").unwrap();
    let ul2 = Capture::start(&c.phys, "ul-node2", "udp port 4789").unwrap();
    for n in ["node0", "node1", "node2"] {
        if let Some(x) = xdp {
            c.config_line(n, &format!("xdp = \"{x}\"")).unwrap();
        }
        c.start_agent(n).unwrap();
    }
    // DHCP gives up after 8 s: on the slow 6.1 guest the agents may not have attached by then.
    for n in ["node0", "node1", "node2"] {
        c.wait_agent(n, Duration::from_secs(60)).unwrap();
        if let Some(x) = xdp {
            let status = c.cli_json(n, &["status"]).unwrap();
            assert_eq!(status["xdp"]["eth1"], x, "{n}: the underlay's stage runs on eth1: {status}");
        }
    }

    let script = c.udhcpc_script().unwrap();
    assert_eq!(c.vms[ia].dhcp(&script).unwrap(), a.ip, "vm on node0 leases over the local port");
    assert_eq!(c.vms[ib].dhcp(&script).unwrap(), b.ip, "vm on node1 leases through the tunnel");
    assert!(c.vms[ia].reaches(&b.ip), "node0 -> node1 through VXLAN");
    assert!(c.vms[ib].reaches(&d.ip), "node1 -> DHCP port on node0");
    assert!(
        c.vms[iv0].ping_until(&v2.ip, Duration::from_secs(10)),
        "the VLAN network, same addresses, works"
    );

    // The ARP responder: vm-a asks for vm-b's address; node0 answers itself.
    c.vms[ia].exec(&["ip", "neigh", "flush", "dev", "eth0"]).unwrap();
    let before = arp_replied(&c, &a);
    assert!(c.vms[ia].reaches(&b.ip));
    assert!(arp_replied(&c, &a) > before, "node0 answered the ARP request itself");

    // trace shows the tunnel a frame would take.
    let spec = format!("icmp from {} {} to {} {}", a.mac, a.ip, b.mac, b.ip);
    let t = c.cli_json("node0", &["trace", "--port", &a.device(), "--frame", &spec]).unwrap();
    assert_eq!(t["targets"][0]["vtep"], "192.0.2.11", "{t}");
    assert_eq!(t["targets"][0]["vni"], VNI, "{t}");
    // ...and, on the VXLAN device, what tunnel_in does with a frame from a VTEP.
    let back = format!("icmp from {} {} to {} {}", b.mac, b.ip, a.mac, a.ip);
    let vni = VNI.to_string();
    let t = c
        .cli_json(
            "node0",
            &["trace", "--port", "vxlan-dp", "--vni", &vni, "--vtep", "192.0.2.11", "--frame", &back],
        )
        .unwrap();
    assert_eq!(
        (t["program"].as_str(), t["action"].as_str()),
        (Some("tunnel_in"), Some("to_local_port")),
        "{t}"
    );
    assert_eq!(t["targets"][0]["device"], a.device().as_str(), "{t}");
    let (ok, _, err) = c.cli("node0", &["trace", "--port", "vxlan-dp", "--frame", &back]).unwrap();
    assert!(!ok && err.contains("--vni"), "the VXLAN device needs to know where the frame came from: {err}");

    // Interop with the plain Linux VXLAN endpoint, both ways.
    assert!(c.vms[ia].reaches(&foreign.ip), "ours -> plain Linux vxlan");
    assert!(fns.exec(&["ping", "-c", "2", "-W", "1", &b.ip]).is_ok(), "plain Linux vxlan -> ours (node1)");
    assert!(c.vms[ia].reaches("10.20.0.51"), "ours -> an endpoint the bindings do not name");
    assert_eq!(c.learned_on("node0", unnamed_mac).as_deref(), Some("vxlan-dp"), "learned from the tunnel");

    // A VTEP in no agent's configuration hosts no port of the network: node0
    // hears nothing from it, as the OVS agent has no tunnel port towards it.
    let rogue_mac = "fa:16:3e:0b:ad:01";
    let rns = Netns::new("rogue").unwrap();
    c.underlay_port(&rns, "rogue", "192.0.2.98").unwrap();
    let mut rvx = vx;
    rvx[11] = "192.0.2.98";
    rns.exec(&rvx).unwrap();
    rns.exec(&["ip", "link", "set", "vx0", "address", rogue_mac, "mtu", "1450", "up"]).unwrap();
    rns.exec(&["ip", "addr", "add", "10.20.0.98/24", "dev", "vx0"]).unwrap();
    rns.exec(&["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", "192.0.2.10"]).unwrap();
    let heard = Capture::start(&c.vms[ia].ns, "eth0", &format!("ether src {rogue_mac}")).unwrap();
    // (TC stage, the underlay's XDP stage): both count under the VXLAN device.
    let foreign_drops = |c: &Cluster| {
        let s = c.cli_json("node0", &["stats", "--port", "vxlan-dp"]).unwrap();
        let n = |v: &serde_json::Value| v["drops"]["foreign_vtep"].as_u64().unwrap_or(0);
        (n(&s["ports"][0]), n(&s["ports"][0]["xdp"]))
    };
    let (tc0, xdp0) = foreign_drops(&c);
    assert!(rns.exec(&["ping", "-c", "2", "-W", "1", &a.ip]).is_err(), "the rogue VTEP reached vm-a");
    let (tc1, xdp1) = foreign_drops(&c);
    if xdp.is_some() {
        assert!(xdp1 >= xdp0 + 2, "its ARP requests died in the underlay's driver as foreign_vtep");
        assert_eq!(tc1, tc0, "and never reached the VXLAN device");
    } else {
        assert!(tc1 >= tc0 + 2, "its ARP requests counted as foreign_vtep");
    }
    let heard = heard.stop().unwrap();
    assert!(heard.is_empty(), "vm-a heard the rogue VTEP: {heard:#?}");
    assert_eq!(c.learned_on("node0", rogue_mac), None, "nothing learned from it");

    // The tunnel MTU: a 1500-byte frame cannot enter a 1450 network's tunnel.
    c.vms[ia].exec(&["ip", "link", "set", "eth0", "mtu", "1500"]).unwrap();
    let before = drops(&c, &a, DropReason::MtuExceeded);
    assert!(c.vms[ia].exec(&["ping", "-c", "1", "-W", "1", "-s", "1472", "-M", "do", &b.ip]).is_err());
    assert!(drops(&c, &a, DropReason::MtuExceeded) > before, "oversize frame counted as mtu_exceeded");
    c.vms[ia].exec(&["ip", "link", "set", "eth0", "mtu", "1450"]).unwrap();

    // TCP through the tunnel.
    let (bytes, bps) = c.vms[ia].tcp_to(&c.vms[ib], 3).unwrap();
    println!("iperf3 TCP over VXLAN node0 -> node1: {:.2} Gbit/s", bps / 1e9);
    assert!(bytes > 10_000_000, "TCP moved only {bytes} bytes");

    let vlan_side = in_vlan_vm.stop().unwrap();
    let leaked: Vec<_> = vlan_side.iter().filter(|l| l.contains(&a.mac) || l.contains(&b.mac)).collect();
    assert!(
        leaked.is_empty(),
        "VXLAN traffic reached the VLAN network's VM with the same address: {leaked:#?}"
    );
    let on1 = ul1.stop().unwrap();
    for l in on1.iter().take(6) {
        println!("node1 underlay: {l}");
    }
    let on2 = ul2.stop().unwrap();
    assert!(
        on1.iter().any(|l| l.contains(&format!("vni {VNI}"))),
        "VXLAN with VNI {VNI} reached node1: {on1:#?}"
    );
    assert!(on1.iter().all(|l| !l.contains("vni ") || l.contains(&format!("vni {VNI}"))), "only VNI {VNI}");
    assert!(
        !on1.iter().any(|l| l.contains("who-has 10.20.0.3") && l.contains(&a.mac)),
        "vm-a's ARP request for vm-b was flooded into the tunnel: {on1:#?}"
    );
    assert!(
        on2.iter().all(|l| !l.contains(&format!("vni {VNI}"))),
        "node2 has no port of tun1 and got its traffic: {on2:#?}"
    );

    // --cleanup removes the VXLAN device the agent created (through rtnetlink).
    let node2 = &c.node("node2").ns;
    assert!(node2.exec(&["ip", "link", "show", "vxlan-dp"]).is_ok(), "the agent created vxlan-dp");
    c.nodes[2].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    c.nodes[2].cleanup().unwrap();
    assert!(
        c.node("node2").ns.exec(&["ip", "link", "show", "vxlan-dp"]).is_err(),
        "--cleanup removed vxlan-dp"
    );
}

fn view(c: &Cluster, p: &PortSpec) -> datapath_tests::pinned::PortView {
    let ifindex = ifindex_in(&c.node(&p.host).ns, &p.device()).unwrap();
    port_view(&c.pins.path().join(&p.host), ifindex).unwrap()
}

fn arp_replied(c: &Cluster, p: &PortSpec) -> u64 {
    view(c, p).actions(Action::ArpReplied)
}

fn drops(c: &Cluster, p: &PortSpec, r: DropReason) -> u64 {
    view(c, p).drops(r)
}
