//! The seed scenario with real guests: on a VLAN network and on a VXLAN
//! network, one guest on node0 and one on node1, each with its virtio NIC on
//! a tap named as Nova names it. Every guest leases its address from dnsmasq
//! (and the VXLAN guests their 1450 MTU), pings its peer across nodes and the
//! DHCP port, and the pair moves 4 MiB over TCP. The guests' consoles say so.
//! node1's uplink runs the XDP stage in its driver (`xdp = "native"`), so
//! what its VLAN guest receives from the wire takes the fast path, straight
//! from the driver to the tap; node0's takes the TC stage.

use std::time::Duration;

use datapath_tests::{
    cluster::{Cluster, PortSpec, agents_json, network_json},
    guest::Guest,
};
use serde_json::{Value, json};

const VLAN_NET: &str = "5f833617-6179-4797-b7c0-7d420d84040c";
const VXLAN_NET: &str = "8c166940-9402-4aca-eaf3-a0753f07373f";
const TCP_BYTES: &str = "4194304";
/// TCG boots in seconds, but four guests share two CPUs.
const STEP: Duration = Duration::from_secs(180);

fn port(id: &str, net: &str, mac: &str, ip: &str, host: &str) -> PortSpec {
    PortSpec::vm(id, net, mac, ip, host)
}

fn dhcp_port(id: &str, net: &str, mac: &str, ip: &str) -> PortSpec {
    let mut p = port(id, net, mac, ip, "node0");
    p.owner = "network:dhcp".into();
    p
}

/// A guest booted for `p` on its host, talking to `peer` and the DHCP port `dhcp`.
fn boot(c: &Cluster, p: &PortSpec, peer: &PortSpec, dhcp: &PortSpec, tcp: &str) -> Guest {
    let args = format!("dp.mode=guest dp.peer={} dp.dhcp={} dp.tcp={tcp}", peer.ip, dhcp.ip);
    Guest::boot(&c.node(&p.host).ns, &p.ip, &p.device(), &p.mac, &args).unwrap()
}

#[test]
fn guests_on_taps_lease_ping_and_move_tcp_on_vlan_and_vxlan_networks() {
    let mut c = Cluster::with_tunnels("guests", 2).unwrap();
    let a =
        port("a7a7a7a7-1111-4111-8111-111111111111", VLAN_NET, "fa:16:3e:a7:00:02", "10.10.10.2", "node0");
    let b =
        port("b7b7b7b7-1111-4111-8111-111111111111", VLAN_NET, "fa:16:3e:b7:00:03", "10.10.10.3", "node1");
    let d = dhcp_port("d7d7d7d7-1111-4111-8111-111111111111", VLAN_NET, "fa:16:3e:d7:00:0a", "10.10.10.10");
    let x =
        port("a8a8a8a8-1111-4111-8111-111111111111", VXLAN_NET, "fa:16:3e:a8:00:02", "10.20.0.2", "node0");
    let y =
        port("b8b8b8b8-1111-4111-8111-111111111111", VXLAN_NET, "fa:16:3e:b8:00:03", "10.20.0.3", "node1");
    let e = dhcp_port("d8d8d8d8-1111-4111-8111-111111111111", VXLAN_NET, "fa:16:3e:d8:00:0a", "10.20.0.10");
    let mut vxlan = network_json(VXLAN_NET, "tun1", "vxlan", Some(5000));
    vxlan["mtu"] = json!(1450);
    vxlan["provider:physical_network"] = Value::Null;
    let ports = [&a, &b, &d, &x, &y, &e];
    c.write_bindings(&json!({
        "networks": [network_json(VLAN_NET, "net1", "vlan", Some(1000)), vxlan],
        "ports": ports.iter().map(|p| p.to_json()).collect::<Vec<_>>(),
        "agents": agents_json(2),
    }))
    .unwrap();
    c.add_dhcp("node0", d.clone(), &[(&a.mac, &a.ip), (&b.mac, &b.ip)], None).unwrap();
    c.add_dhcp("node0", e.clone(), &[(&x.mac, &x.ip), (&y.mac, &y.ip)], Some(1450)).unwrap();
    c.append_config("node1", "xdp = \"native\"\n").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();

    // All four boot at once; the agents attach to each tap as QEMU creates it.
    let mut guests = [
        (boot(&c, &a, &b, &d, "listen"), &a, &b, &d, 1500),
        (boot(&c, &b, &a, &d, &a.ip), &b, &a, &d, 1500),
        (boot(&c, &x, &y, &e, "listen"), &x, &y, &e, 1450),
        (boot(&c, &y, &x, &e, &x.ip), &y, &x, &e, 1450),
    ];
    for (g, _, _, _, _) in &mut guests {
        let booted = g.wait_for("BOOTED", STEP).unwrap();
        assert!(booted.contains("6.1."), "a Debian 6.1 guest kernel: {booted}");
    }
    for (g, me, peer, dhcp, mtu) in &mut guests {
        let lease = g.wait_for("LEASE", STEP).unwrap();
        let want_mtu = if *mtu == 1500 { "none".to_string() } else { mtu.to_string() };
        assert_eq!(lease, format!("DP-LEASE {} mtu {want_mtu}", me.ip), "{}: {}", g.name, g.console());
        let ping = g.wait_for(&format!("PING {}", peer.ip), STEP).unwrap();
        assert!(ping.ends_with("ok"), "{ping}");
        let ping = g.wait_for(&format!("PING {}", dhcp.ip), STEP).unwrap();
        assert!(ping.ends_with("ok"), "{ping}");
    }
    for (g, ..) in &mut guests {
        let tcp = g.wait_for("TCP", STEP).unwrap();
        assert!(tcp == "DP-TCP sent" || tcp == format!("DP-TCP received {TCP_BYTES}"), "{}: {tcp}", g.name);
    }
    for ((g, ..), listens) in guests.iter_mut().zip([true, false, true, false]) {
        if listens {
            assert_eq!(
                g.wait_for("TCP", STEP).unwrap(),
                format!("DP-TCP received {TCP_BYTES}"),
                "{}",
                g.name
            );
        }
        g.wait_for("DONE", STEP).unwrap();
    }

    // It all went through the datapath's program on the real taps, across the
    // nodes, and nothing a guest sent was dropped.
    for (p, node) in [(&a, "node0"), (&b, "node1"), (&x, "node0"), (&y, "node1")] {
        let stats = c.cli_json(node, &["stats", "--port", &p.device()]).unwrap();
        let s = &stats["ports"][0];
        // Pings, DHCP and ARP are about 20 frames; 4 MiB of TCP (or its ACKs) add at
        // least 64 more, however much the guest's TSO and GRO merge.
        assert!(s["actions"]["rx"].as_u64().unwrap() > 80, "{}: the TCP crossed it: {s}", p.device());
        assert!(
            s["actions"]["to_uplink"].as_u64().unwrap() > 0,
            "{}: frames left for the other node: {s}",
            p.device()
        );
        assert_eq!(s["dropped"], 0, "{}: a guest's own traffic is never dropped: {s}", p.device());
    }

    // What node1's VLAN guest received from the wire (ping replies, TCP
    // ACKs, DHCP answers) went from the driver to its tap, and its tap counts
    // it as delivered; node0 has no XDP stage (veth: `auto` leaves it to TC).
    let xdp = |node: &str| c.cli_json(node, &["stats", "--port", "eth2"]).unwrap()["ports"][0]["xdp"].clone();
    let fast = xdp("node1")["actions"]["xdp_redirected"].as_u64().unwrap_or(0);
    assert!(fast > 30, "node1's XDP stage sent the guest its frames: {}", xdp("node1"));
    let b_tap = c.cli_json("node1", &["stats", "--port", &b.device()]).unwrap();
    let delivered = b_tap["ports"][0]["actions"]["delivered"].as_u64().unwrap_or(0);
    assert!(delivered >= fast, "{} counts what the fast path delivered ({fast}): {b_tap}", b.device());
    assert_eq!(xdp("node0"), Value::Null, "node0 runs the TC stage alone");
}
