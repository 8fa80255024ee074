//! A trunk port with a real guest: a QEMU VM (Debian's kernel, with 8021q)
//! whose tap is a trunk's parent on node0 has VLAN subinterfaces, as a
//! VLAN-aware VM has. Untagged on eth0 it leases its address on the
//! parent's network (VLAN 1000) and pings a VM there; through eth0.101 it
//! leases its subport's address on a VLAN network (1001) and pings a VM
//! there; through eth0.102, with a MAC of its own and MTU 1450, it pings a
//! VM on a VXLAN network. All three peers are on node1, so every exchange
//! crosses the wire or the tunnel with the network's own segment; each also
//! goes at the full MTU of its interface, 4 bytes of tag included on the tap.
//!
//! Then the guest pings its VLAN subport's peer without pause while the
//! test adds a third subport (a flat network, VLAN 103), uses it both ways,
//! removes it, and does that again: not one of those pings may be lost.
//! The guest's console says what it saw (`tests/guest/init`, `dp.mode=trunk`);
//! node0's `datapath stats` says that each subport's traffic was counted
//! under the subport and that nothing the guest sent was dropped; captures
//! say that the wire and the tunnel carried each network's own segment and
//! never one of the guest's VLAN ids.
//!
//! node0's uplink runs the XDP stage in its driver (`xdp = "native"`): what
//! comes from the wire for the parent may take the fast path into the tap,
//! what comes for a subport goes on to the TC stage, which tags it.

use std::time::Duration;

use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec, agents_json, network_json},
    guest::Guest,
    wait_for,
};
use serde_json::{Value, json};

const NET1: &str = "5f833617-6179-4797-b7c0-7d420d84040c";
const NET2: &str = "6a2d7c1e-3b4f-4c5d-9e6f-7a8b9c0d1e2f";
const TUN: &str = "8c166940-9402-4aca-eaf3-a0753f07373f";
const FLAT: &str = "9d3e8f2a-4c5b-4d6e-8f7a-0b1c2d3e4f5a";
const TRUNK: &str = "7e57a0a0-0000-4000-8000-0000000c0c0c";
/// TCG boots in seconds, but the machine has two shared cores.
const STEP: Duration = Duration::from_secs(180);
/// The guest's MAC: the parent's, and (as Neutron advises) its VLAN subports'.
const GUEST_MAC: &str = "fa:16:3e:c0:00:02";

fn port(id: &str, net: &str, mac: &str, ip: &str, host: &str) -> PortSpec {
    PortSpec::vm(id, net, mac, ip, host)
}

fn subport(id: &str, net: &str, mac: &str, ip: &str) -> PortSpec {
    let mut p = port(id, net, mac, ip, "node0");
    p.owner = "trunk:subport".into();
    p
}

fn dhcp_port(id: &str, net: &str, mac: &str, ip: &str) -> PortSpec {
    let mut p = port(id, net, mac, ip, "node1");
    p.owner = "network:dhcp".into();
    p
}

/// The guest's interface for a subport (or the parent, VLAN id 0), as
/// `dp.if=` and `dp.late=` give it: VID,ADDR,PEER,MTU,MAC.
fn iface(vid: u16, addr: &str, peer: &PortSpec, mtu: u32, mac: &str) -> String {
    format!("{vid},{addr},{},{mtu},{mac}", peer.ip)
}

/// node0's `datapath stats` row of `device` (a tap, or a subport's `tap….VID`).
fn stats(c: &Cluster, device: &str) -> Value {
    c.cli_json("node0", &["stats", "--port", device]).unwrap()["ports"][0].clone()
}

fn count(s: &Value, kind: &str, label: &str) -> u64 {
    s[kind][label].as_u64().unwrap_or(0)
}

/// node0's `datapath ports` row of `device`, if it lists one.
fn port_row(c: &Cluster, device: &str) -> Option<Value> {
    let ports = c.cli_json("node0", &["ports"]).ok()?;
    ports["ports"].as_array()?.iter().find(|r| r["device"] == device).cloned()
}

fn is_up(c: &Cluster, device: &str) -> bool {
    port_row(c, device).is_some_and(|r| r["state"] == "up")
}

/// Connects to `ip`:`port` from `from` and closes at once: the guest's
/// listener takes that as its cue. Retried: the first SYN may still wait
/// for ARP, or for the listener to be back.
fn knock(from: &datapath_tests::cluster::Vm, ip: &str, port: u16) {
    let script = format!("exec 3<>/dev/tcp/{ip}/{port}");
    let knocked = datapath_tests::wait_until(Duration::from_secs(30), || {
        from.exec(&["timeout", "5", "bash", "-c", &script]).is_ok()
    });
    assert!(knocked, "{ip}:{port} took no connection from {} in 30 s", from.port.ip);
}

#[test]
fn a_vlan_aware_guest_reaches_the_parent_and_subport_networks_and_a_subport_comes_and_goes_under_traffic() {
    let mut c = Cluster::with_tunnels("trunk-guest", 2).unwrap();
    // The trunk VM on node0: the parent and its subports.
    let p = port("c0c0c0c0-1111-4111-8111-111111111111", NET1, GUEST_MAC, "10.10.10.2", "node0");
    let s1 = subport("c1c1c1c1-1111-4111-8111-111111111111", NET2, GUEST_MAC, "10.30.0.2");
    let s2 = subport("c2c2c2c2-1111-4111-8111-111111111111", TUN, "fa:16:3e:c2:01:02", "10.40.0.2");
    let s3 = subport("c3c3c3c3-1111-4111-8111-111111111111", FLAT, GUEST_MAC, "10.50.0.2");
    // Their peers on node1, one per network, and DHCP on the two VLAN networks.
    let v1 = port("d0d0d0d0-1111-4111-8111-111111111111", NET1, "fa:16:3e:d0:00:03", "10.10.10.3", "node1");
    let v2 = port("d1d1d1d1-1111-4111-8111-111111111111", NET2, "fa:16:3e:d1:00:03", "10.30.0.3", "node1");
    let v3 = port("d2d2d2d2-1111-4111-8111-111111111111", TUN, "fa:16:3e:d2:00:03", "10.40.0.3", "node1");
    let v4 = port("d3d3d3d3-1111-4111-8111-111111111111", FLAT, "fa:16:3e:d3:00:03", "10.50.0.3", "node1");
    let d1 = dhcp_port("e0e0e0e0-1111-4111-8111-111111111111", NET1, "fa:16:3e:e0:00:0a", "10.10.10.10");
    let d2 = dhcp_port("e1e1e1e1-1111-4111-8111-111111111111", NET2, "fa:16:3e:e1:00:0a", "10.30.0.10");
    let mut tun = network_json(TUN, "tun1", "vxlan", Some(5000));
    tun["mtu"] = json!(1450);
    tun["provider:physical_network"] = Value::Null;
    let networks = vec![
        network_json(NET1, "net1", "vlan", Some(1000)),
        network_json(NET2, "net2", "vlan", Some(1001)),
        tun,
        network_json(FLAT, "flat1", "flat", None),
    ];
    // The bindings with the trunk's subports `subs` (port, VLAN id).
    let bindings = |subs: &[(&PortSpec, u16)]| {
        let mut ports: Vec<Value> = [&p, &v1, &v2, &v3, &v4, &d1, &d2].iter().map(|p| p.to_json()).collect();
        ports.extend(subs.iter().map(|(s, _)| s.to_json()));
        let sub_ports: Vec<Value> = subs
            .iter()
            .map(|(s, vid)| json!({"port_id": s.id, "segmentation_type": "vlan", "segmentation_id": vid}))
            .collect();
        json!({
            "networks": networks,
            "ports": ports,
            "trunks": [{"id": TRUNK, "name": "trunk-guest", "port_id": p.id, "sub_ports": sub_ports,
                        "admin_state_up": true}],
            "agents": agents_json(2),
        })
    };
    let two = bindings(&[(&s1, 101), (&s2, 102)]);
    let three = bindings(&[(&s1, 101), (&s2, 102), (&s3, 103)]);
    c.write_bindings(&two).unwrap();
    let vm = |c: &mut Cluster, spec: &PortSpec, mtu: &str| {
        let i = c.add_vm("node1", spec.clone()).unwrap();
        c.vms[i].exec(&["ip", "link", "set", "eth0", "mtu", mtu]).unwrap();
        c.vms[i].set_static_ip().unwrap();
        i
    };
    let (i1, _, _, i4) =
        (vm(&mut c, &v1, "1500"), vm(&mut c, &v2, "1500"), vm(&mut c, &v3, "1450"), vm(&mut c, &v4, "1500"));
    c.add_dhcp("node1", d1.clone(), &[(&p.mac, &p.ip)], None).unwrap();
    c.add_dhcp("node1", d2.clone(), &[(&s1.mac, &s1.ip)], None).unwrap();
    c.append_config("node0", "xdp = \"native\"\n").unwrap();
    let wire = Capture::start(&c.phys, "up-node0", "").unwrap();
    let underlay = Capture::start(&c.phys, "ul-node0", "udp port 4789").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    for n in ["node0", "node1"] {
        c.wait_agent(n, Duration::from_secs(60)).unwrap();
    }

    let args = [
        "dp.mode=trunk".to_string(),
        format!("dp.if={}", iface(0, "dhcp", &v1, 1500, "-")),
        format!("dp.if={}", iface(101, "dhcp", &v2, 1500, "-")),
        format!("dp.if={}", iface(102, &format!("{}/24", s2.ip), &v3, 1450, &s2.mac)),
        format!("dp.late={}", iface(103, &format!("{}/24", s3.ip), &v4, 1500, "-")),
        format!("dp.steady={}", v2.ip),
    ]
    .join(" ");
    let mut g = Guest::boot(&c.node("node0").ns, "trunk", &p.device(), &p.mac, &args).unwrap();
    let (dev1, dev2, dev3) =
        (format!("{}.101", p.device()), format!("{}.102", p.device()), format!("{}.103", p.device()));
    let booted = g.wait_for("BOOTED", STEP).unwrap();
    assert!(booted.contains("6.1."), "a Debian 6.1 guest kernel: {booted}");
    // The subports live on the parent's tap: up once QEMU made it and the agent took it.
    wait_for("node0 to program the parent and its subports", STEP, || {
        [&p.device(), &dev1, &dev2].iter().all(|d| is_up(&c, d))
    });
    for (dev, port, net) in [(&dev1, &s1, NET2), (&dev2, &s2, TUN)] {
        let row = port_row(&c, dev).unwrap();
        assert_eq!(
            (row["kind"].as_str(), row["port_id"].as_str(), row["network"].as_str()),
            (Some("subport"), Some(port.id.as_str()), Some(net)),
            "{row}"
        );
    }
    assert!(port_row(&c, &dev3).is_none(), "no subport 103 yet");

    // The interfaces: DHCP on the parent (untagged) and on VLAN 101, static on 102 and 103.
    for (ip, why) in
        [(&p.ip, "the parent's address, untagged"), (&s1.ip, "subport 101's address, through VLAN 101")]
    {
        let lease = g.wait_for(&format!("LEASE {ip} "), STEP).unwrap();
        assert_eq!(lease, format!("DP-LEASE {ip} mtu none"), "{why}: {}", g.console());
    }
    for (dev, vid, mtu, ip) in [
        ("eth0", 0, 1500, &p.ip),
        ("eth0.101", 101, 1500, &s1.ip),
        ("eth0.102", 102, 1450, &s2.ip),
        ("eth0.103", 103, 1500, &s3.ip),
    ] {
        let line = g.wait_for(&format!("IF {dev} "), STEP).unwrap();
        assert_eq!(line, format!("DP-IF {dev} vlan {vid} mtu {mtu} {ip}/24"), "{}", g.console());
    }
    // Each peer answers, also at the interface's full MTU.
    for (peer, mtu) in [(&v1, 1500), (&v2, 1500), (&v3, 1450)] {
        let ping = g.wait_for(&format!("PING {} ", peer.ip), STEP).unwrap();
        assert_eq!(ping, format!("DP-PING {} ok", peer.ip));
        let big = g.wait_for(&format!("MTU {} ", peer.ip), STEP).unwrap();
        assert_eq!(big, format!("DP-MTU {} {mtu} ok", peer.ip));
    }
    g.wait_for("STEADY ready", STEP).unwrap();

    // Counted where they belong: each subport's frames under it, not the parent.
    let parent0 = stats(&c, &p.device());
    assert_eq!(parent0["dropped"], 0, "nothing the guest sent on its parent was dropped: {parent0}");
    assert!(count(&parent0, "actions", "rx") > 0 && count(&parent0, "actions", "delivered") > 0, "{parent0}");
    let mut before = Vec::new();
    for dev in [&dev1, &dev2] {
        let s = stats(&c, dev);
        assert_eq!((s["kind"].as_str(), s["device"].as_str()), (Some("subport"), Some(dev.as_str())), "{s}");
        assert!(count(&s, "actions", "rx") >= 5, "{dev} counted what the guest sent through it: {s}");
        assert!(count(&s, "actions", "delivered") >= 5, "{dev} counted what it delivered: {s}");
        assert_eq!(s["dropped"], 0, "{dev}: nothing the guest sent was dropped: {s}");
        before.push(s);
    }
    // A knock on the parent's address starts the guest's steady pings through VLAN 101.
    knock(&c.vms[i1], &p.ip, 5002);
    g.wait_for("STEADY start", STEP).unwrap();

    // While the guest pings v2 through VLAN 101: subport 103 comes, works both
    // ways (v4 reaches the guest, then the guest v4), and goes; twice.
    for round in 1..=2 {
        c.write_bindings(&three).unwrap();
        wait_for("subport 103 to come", Duration::from_secs(30), || is_up(&c, &dev3));
        assert!(c.vms[i4].reaches(&s3.ip), "round {round}: v4 reaches the guest through the new subport");
        knock(&c.vms[i4], &s3.ip, 5003);
        let late = g.wait_for(&format!("LATE {round} "), STEP).unwrap();
        assert_eq!(
            late,
            format!("DP-LATE {round} {} ok", v4.ip),
            "round {round}: the guest reaches v4 through VLAN 103"
        );
        let s = stats(&c, &dev3);
        assert_eq!(s["kind"], "subport", "{s}");
        assert!(count(&s, "actions", "rx") >= 3 && count(&s, "actions", "delivered") >= 3, "{s}");
        assert_eq!(s["dropped"], 0, "{s}");
        c.write_bindings(&two).unwrap();
        wait_for("subport 103 to go", Duration::from_secs(30), || port_row(&c, &dev3).is_none());
        assert!(!c.vms[i4].ping(&s3.ip, 3), "round {round}: the removed subport still carries v4's pings");
    }
    assert!(!g.console().contains("DP-STEADY sent"), "the steady pings ended before the subport churn did");
    // The next knock ends them.
    knock(&c.vms[i1], &p.ip, 5002);
    let steady = g.wait_for("STEADY sent", STEP).unwrap();
    let nums: Vec<u64> = steady.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    let [sent, received] = nums[..] else { panic!("{steady}") };
    assert!(sent >= 20, "the steady pings ran through the churn: {steady}");
    assert_eq!(received, sent, "pings through VLAN 101 lost while subport 103 came and went: {steady}");
    g.wait_for("DONE", STEP).unwrap();

    // The steady pings were subport 101's, counted there: every request it sent, every reply it got.
    let after = stats(&c, &dev1);
    let grew = |label: &str| count(&after, "actions", label) - count(&before[0], "actions", label);
    assert!(grew("rx") >= sent && grew("delivered") >= received, "{dev1}: {after} (before: {})", before[0]);
    assert_eq!(after["dropped"], 0, "{after}");
    let parent = stats(&c, &p.device());
    let parent_grew = |label: &str| count(&parent, "actions", label) - count(&parent0, "actions", label);
    let (rx, delivered) = (parent_grew("rx"), parent_grew("delivered"));
    assert!(
        rx < sent && delivered < received,
        "the parent counted {rx} frames in and {delivered} out during {sent} pings of its subport: {parent}"
    );
    // Not even the removed subport's tag: the guest sent through it only while it was there.
    assert_eq!(parent["dropped"], 0, "nothing the guest sent on its parent was dropped: {parent}");
    assert_eq!(stats(&c, &dev2)["dropped"], 0);

    // node0's XDP stage sent the parent's unicast from the wire straight to the
    // tap, and left the subports' to the TC stage, which tags it.
    let xdp = c.cli_json("node0", &["stats", "--port", "eth2"]).unwrap()["ports"][0]["xdp"].clone();
    assert!(count(&xdp, "actions", "xdp_redirected") > 0, "the fast path took the parent's frames: {xdp}");

    // On the wire each network has its own segment, one tag deep, and the
    // guest's VLAN ids never show: net1 under 1000, net2 under 1001, the
    // flat network untagged; the VXLAN subport's frames only in VNI 5000.
    let lines = wire.stop().unwrap();
    let guests: Vec<&String> = lines.iter().filter(|l| l.contains(GUEST_MAC)).collect();
    for (src, segment) in [(&p.ip, Some(1000)), (&s1.ip, Some(1001)), (&s3.ip, None)] {
        let ping = format!("{src} > ");
        let pings: Vec<_> =
            guests.iter().filter(|l| l.contains(&ping) && l.contains("ICMP echo request")).collect();
        assert!(!pings.is_empty(), "no ping from {src} on the wire: {guests:#?}");
        for l in pings {
            let tags = l.matches("vlan ").count();
            match segment {
                Some(vid) => {
                    assert!(l.contains(&format!("vlan {vid}, ")) && tags == 1, "{src}: not VLAN {vid}: {l}")
                }
                None => assert_eq!(tags, 0, "{src}: the flat network's frame tagged: {l}"),
            }
        }
    }
    for l in &lines {
        for vid in [101, 102, 103] {
            assert!(!l.contains(&format!("vlan {vid}, ")), "the guest's VLAN id {vid} on the wire: {l}");
        }
        assert!(!l.contains(&s2.mac) && !l.contains(&v3.mac), "the VXLAN network on the VLAN wire: {l}");
    }
    // tcpdump prints the encapsulated frame on the line after its VXLAN header.
    let tunnel = underlay.stop().unwrap();
    let ours: Vec<(&String, &String)> =
        tunnel.windows(2).map(|w| (&w[0], &w[1])).filter(|(_, inner)| inner.contains(&s2.mac)).collect();
    assert!(ours.iter().any(|(_, inner)| inner.contains("ICMP echo request")), "{tunnel:#?}");
    for (outer, inner) in ours {
        assert!(
            outer.contains("vni 5000") && !inner.contains("vlan "),
            "subport 102 in the tunnel: {outer}\n{inner}"
        );
    }
}
