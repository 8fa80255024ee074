//! The scenarios of neutron-tempest-plugin's `test_security_groups.py` and
//! neutron's functional `test_firewall.py` that `secgroups.rs` does not run,
//! on live traffic between VM namespaces on two nodes: a protocol given by
//! number with a port range, a remote prefix and its negative, a remote
//! address group with a port range, related ICMP on the wire, a DHCP server
//! on a VM, overlapping rules of two groups and a group removed from (and
//! given back to) an active VM, no firewall blink while rules change, and a
//! stateless group (any TCP state, fragments) switched to stateful and back.

use std::{
    net::{SocketAddr, UdpSocket},
    time::Duration,
};

use datapath_common::DropReason;
use datapath_tests::{
    cluster::{Cluster, PortSpec},
    netns::{Netns, ThreadNetns},
    pinned::{ifindex_in, port_view},
    wait_for,
};
use datapath_user::frames;
use serde_json::{Value, json};

use crate::{
    scenario::*,
    secgroups::{Conn, connect_in, with_groups},
};

fn udp_in(ns: &Netns, addr: &str) -> UdpSocket {
    let _in = ThreadNetns::enter(ns).unwrap();
    let s = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("binding udp {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Whether a datagram of `size` bytes from `from` (bound in `from_ns`) to
/// `to` arrives whole at `listener`.
fn udp_arrives(from_ns: &Netns, from: &str, to: &str, listener: &UdpSocket, size: usize) -> bool {
    let sender = udp_in(from_ns, from);
    let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    sender.send_to(&msg, to.parse::<SocketAddr>().unwrap()).unwrap();
    let mut buf = vec![0u8; size + 16];
    matches!(listener.recv_from(&mut buf), Ok((n, _)) if buf[..n] == msg[..])
}

/// The groups: `stateful` is the "nostate" group's flag (it starts stateless),
/// `extra` adds an unrelated rule to "svc" (a rule change for the blink check).
fn groups(stateful: bool, extra: bool) -> Value {
    let mut svc = vec![
        json!({"id": "svc-egress", "direction": "egress", "ethertype": "IPv4"}),
        json!({"id": "udp-by-number", "direction": "ingress", "ethertype": "IPv4", "protocol": "17",
               "port_range_min": 7000, "port_range_max": 7001}),
        json!({"id": "ssh-from-c1", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
               "port_range_min": 2222, "port_range_max": 2222, "remote_ip_prefix": "10.10.10.3/32"}),
        json!({"id": "from-ag", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
               "port_range_min": 3333, "port_range_max": 3334, "remote_address_group_id": "ag"}),
    ];
    if extra {
        svc.push(json!({"id": "svc-extra", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
                        "port_range_min": 4444, "port_range_max": 4444}));
    }
    json!([
        {"id": "client", "security_group_rules": [
            {"id": "client-egress", "direction": "egress", "ethertype": "IPv4"}]},
        {"id": "web-a", "security_group_rules": [
            {"id": "web-a-80", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 80, "port_range_max": 80},
            {"id": "web-a-icmp", "direction": "ingress", "ethertype": "IPv4", "protocol": "icmp"}]},
        {"id": "web-b", "security_group_rules": [
            {"id": "web-b-80", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 80, "port_range_max": 80}]},
        {"id": "svc", "security_group_rules": svc},
        {"id": "nostate", "stateful": stateful, "security_group_rules": [
            {"id": "ns-tcp-in", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp",
             "port_range_min": 9001, "port_range_max": 9001},
            {"id": "ns-udp-in", "direction": "ingress", "ethertype": "IPv4", "protocol": "udp",
             "port_range_min": 9002, "port_range_max": 9002},
            {"id": "ns-tcp-out", "direction": "egress", "ethertype": "IPv4", "protocol": "tcp"}]}
    ])
}

#[test]
fn tempest_scenarios_ranges_remotes_related_icmp_overlaps_no_blink_and_stateless() {
    let mut c = Cluster::new("sgs", 2).unwrap();
    // s: the server (node0); c1 (node1) and c2 (node0): clients in "client";
    // t: a port in the stateless group (node1).
    let s = vm1();
    let c1 = vm2();
    let c2 = PortSpec::vm(
        "0c0c0c0c-0000-4000-8000-000000000002",
        NET1,
        "fa:16:3e:0c:00:02",
        "10.10.10.9",
        "node0",
    );
    let t = PortSpec::vm(
        "0d0d0d0d-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0d:00:01",
        "10.10.10.8",
        "node1",
    );
    let doc = |s_groups: &[&str], stateful: bool, extra: bool| {
        json!({"networks": networks(), "ports": [
            with_groups(&s, s_groups), with_groups(&c1, &["client"]), with_groups(&c2, &["client"]),
            with_groups(&t, &["nostate"])],
            "security_groups": groups(stateful, extra),
            "address_groups": [{"id": "ag", "addresses": ["10.10.10.9/32"]}]})
    };
    let all = ["web-a", "web-b", "svc"];
    c.write_bindings(&doc(&all, false, false)).unwrap();
    let is = c.add_vm("node0", s.clone()).unwrap();
    let i1 = c.add_vm("node1", c1.clone()).unwrap();
    let i2 = c.add_vm("node0", c2.clone()).unwrap();
    let it = c.add_vm("node1", t.clone()).unwrap();
    for i in [is, i1, i2, it] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[i1].reaches(&s.ip), "c1 reaches s (web-a admits ICMP)");

    let pin0 = c.pins.path().join("node0");
    let node0 = &c.node("node0").ns;
    let drops =
        |reason: DropReason| port_view(&pin0, ifindex_in(node0, &s.device()).unwrap()).unwrap().drops(reason);
    let (ns_s, ns_1, ns_2, ns_t) = (&c.vms[is].ns, &c.vms[i1].ns, &c.vms[i2].ns, &c.vms[it].ns);

    // A protocol by number (17) with a port range: its edges pass, the next port does not.
    let at = |port: u16| format!("{}:{port}", s.ip);
    let l7000 = udp_in(ns_s, &at(7000));
    let l7001 = udp_in(ns_s, &at(7001));
    let l7002 = udp_in(ns_s, &at(7002));
    assert!(udp_arrives(ns_1, "0.0.0.0:0", &at(7000), &l7000, 64), "udp 7000 (protocol 17, range 7000-7001)");
    assert!(udp_arrives(ns_1, "0.0.0.0:0", &at(7001), &l7001, 64), "udp 7001, the range's top");
    let before = drops(DropReason::SgIngressDenied);
    assert!(!udp_arrives(ns_1, "0.0.0.0:0", &at(7002), &l7002, 64), "udp 7002 is beyond the range");
    assert!(drops(DropReason::SgIngressDenied) > before, "and is counted at s");
    drop(l7001);

    // A remote prefix and its negative: 2222 from c1's /32 only.
    let ok = Conn::open(ns_s, ns_1, &at(2222));
    drop(ok);
    assert!(connect_in(ns_2, &at(2222)).is_err(), "c2 is outside 10.10.10.3/32: refused");

    // A remote address group with a port range: 3334 from the group's c2 only.
    let ok = Conn::open(ns_s, ns_2, &at(3334));
    drop(ok);
    assert!(connect_in(ns_1, &at(3334)).is_err(), "c1 is in no address of ag: refused");

    // Related ICMP on the wire: nothing listens on 7001 any more, s answers
    // port unreachable, and c1, which admits no ingress at all, gets the
    // error because it relates to the datagram c1 sent.
    let probe = udp_in(ns_1, "0.0.0.0:0");
    probe.connect(at(7001)).unwrap();
    let refused = wait_for_refusal(&probe);
    assert!(refused, "c1's connected UDP socket sees the port unreachable from s");

    // A DHCP server on a VM is forbidden, whatever its egress rules.
    let l68 = udp_in(ns_1, "0.0.0.0:68");
    let before = drops(DropReason::DhcpServerFromVm);
    assert!(
        !udp_arrives(ns_s, "0.0.0.0:67", &format!("{}:68", c1.ip), &l68, 300),
        "s's DHCP offer is dropped"
    );
    assert!(drops(DropReason::DhcpServerFromVm) > before, "counted as dhcp_server_from_vm at s");

    // Overlapping rules: web-a and web-b both admit 80. Without web-a the
    // connection carries on; without web-b as well it is cut; with both
    // back, the same session carries data again.
    let mut web = Conn::open(ns_s, ns_1, &at(80));
    assert!(web.carries(b"one", Duration::from_secs(5)), "80 carries data");
    c.write_bindings(&doc(&["web-b", "svc"], false, false)).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(web.carries(b"two", Duration::from_secs(5)), "web-b still admits 80: the connection stays");
    c.write_bindings(&doc(&["svc"], false, false)).unwrap();
    wait_for("the connection on 80 to be cut", Duration::from_secs(10), || {
        !web.carries(b"x", Duration::from_millis(700))
    });
    c.write_bindings(&doc(&all, false, false)).unwrap();
    assert!(web.carries(b"three", Duration::from_secs(20)), "the session on 80 is back with its groups");

    // No firewall blink: 60 pings at 50 ms while rules of s change four times; not one is lost.
    let pinger = &c.vms[i1];
    let pings = std::thread::scope(|scope| {
        let run = scope.spawn(|| pinger.exec(&["ping", "-c", "60", "-i", "0.05", "-W", "2", &s.ip]));
        for extra in [true, false, true, false] {
            std::thread::sleep(Duration::from_millis(600));
            c.write_bindings(&doc(&all, false, extra)).unwrap();
        }
        run.join().unwrap()
    });
    let out = pings.unwrap_or_else(|e| panic!("pings were lost while rules changed: {e:#}"));
    assert!(out.contains(" 0% packet loss"), "{out}");

    // Stateless: a SYN-ACK to t's 9001 that no connection asked for is
    // admitted by the rule (stateful, it would be invalid), and a UDP
    // datagram in fragments arrives whole.
    let trace_synack = |c: &Cluster| {
        let ip = |s: &str| s.parse::<std::net::Ipv4Addr>().unwrap().octets();
        let mac = |s: &str| datapath_user::bindings::parse_mac(s).unwrap();
        let seg = frames::ipv4_tcp(ip(&c1.ip), ip(&t.ip), 41000, 9001, frames::TCP_SYN | frames::TCP_ACK);
        let f: String =
            frames::eth(mac(&t.mac), mac(&c1.mac), 0x0800, &seg).iter().map(|b| format!("{b:02x}")).collect();
        c.cli_json("node1", &["trace", "--port", &t.device(), "--receive", "--frame", &f]).unwrap()
    };
    let v = trace_synack(&c);
    assert_eq!(v["security_group"].as_str(), Some("admitted by rule ns-tcp-in"), "{v:#}");
    let l9002 = udp_in(ns_t, &format!("{}:9002", t.ip));
    assert!(
        udp_arrives(ns_1, "0.0.0.0:0", &format!("{}:9002", t.ip), &l9002, 4000),
        "a 4000-byte datagram (three fragments) reaches the stateless port"
    );

    // Switching the group: an established connection carries on through
    // stateless -> stateful -> stateless, and the stray SYN-ACK is invalid
    // while the group is stateful.
    let mut kept = Conn::open(ns_t, ns_1, &format!("{}:9001", t.ip));
    assert!(kept.carries(b"stateless", Duration::from_secs(5)), "9001 carries data, stateless");
    c.write_bindings(&doc(&all, true, false)).unwrap();
    wait_for("the stray SYN-ACK to be invalid at t", Duration::from_secs(10), || {
        trace_synack(&c)["reason"] == "ct_invalid"
    });
    assert!(
        kept.carries(b"stateful", Duration::from_secs(5)),
        "9001 carries data once the group is stateful"
    );
    c.write_bindings(&doc(&all, false, false)).unwrap();
    wait_for("the stray SYN-ACK to be admitted again", Duration::from_secs(10), || {
        trace_synack(&c)["reason"].is_null()
    });
    assert!(kept.carries(b"stateless again", Duration::from_secs(5)), "9001 carries data, stateless again");
}

/// Sends datagrams on `probe` until a receive fails with "connection
/// refused" (the ICMP port unreachable came back), for up to 5 s.
fn wait_for_refusal(probe: &UdpSocket) -> bool {
    probe.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let refused =
        |r: std::io::Result<usize>| r.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused);
    for _ in 0..10 {
        // A send may itself report the error of an earlier datagram.
        if refused(probe.send(b"anyone?")) {
            return true;
        }
        let mut buf = [0u8; 16];
        if refused(probe.recv(&mut buf)) {
            return true;
        }
    }
    false
}
