//! Anti-spoofing and port state on the real datapath: forged MAC, forged IP,
//! forged ARP, an unbound tap and an admin-down port are dropped, each under
//! its own counter, and nothing forged reaches the other VM.

use std::time::Duration;

use datapath_common::DropReason;
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec},
    pinned::{ifindex_in, port_view},
};

use crate::scenario::*;

#[test]
fn spoofing_unbound_taps_and_admin_down_ports_are_dropped_and_counted() {
    let mut c = Cluster::new("sec", 1).unwrap();
    let a = vm1();
    let mut b = vm2();
    b.host = "node0".into();
    let mut p = PortSpec::vm(
        "0dd0dd0d-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0d:00:04",
        "10.10.10.4",
        "node0",
    );
    p.admin_up = false;
    let unbound = PortSpec::vm(
        "99999999-9999-4999-8999-999999999999",
        NET1,
        "fa:16:3e:99:99:99",
        "10.10.10.9",
        "node0",
    );
    c.write_bindings(&bindings(&[&a, &b, &p])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node0", b.clone()).unwrap();
    let ip = c.add_vm("node0", p.clone()).unwrap();
    let iu = c.add_vm("node0", unbound.clone()).unwrap();
    for i in [ia, ib, ip, iu] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, Duration::from_secs(10)), "control: a reaches b");

    let pin = c.pins.path().join("node0");
    let node = &c.node("node0").ns;
    let counter = |port: &PortSpec, reason: DropReason| {
        let ifindex = ifindex_in(node, &port.device()).unwrap();
        port_view(&pin, ifindex).unwrap().drops(reason)
    };
    let in_b = Capture::start(&c.vms[ib].ns, "eth0", "").unwrap();

    // Forged IPv4 source (with a static neighbour, so no ARP is needed).
    let va = &c.vms[ia];
    va.exec(&["ip", "addr", "add", "10.10.10.99/32", "dev", "eth0"]).unwrap();
    va.exec(&["ip", "neigh", "replace", &b.ip, "lladdr", &b.mac, "dev", "eth0", "nud", "permanent"]).unwrap();
    assert!(
        va.exec(&["ping", "-c", "2", "-W", "1", "-I", "10.10.10.99", &b.ip]).is_err(),
        "forged IP got through"
    );
    assert!(counter(&a, DropReason::Ipv4SrcSpoof) >= 2, "ipv4_src_spoof counted");

    // Forged ARP sender IP: ARP for a new neighbour from the forged address.
    assert!(va.exec(&["ping", "-c", "1", "-W", "1", "-I", "10.10.10.99", "10.10.10.50"]).is_err());
    assert!(counter(&a, DropReason::ArpSpoof) >= 1, "arp_spoof counted");

    // Forged MAC.
    va.exec(&["ip", "neigh", "flush", "dev", "eth0"]).unwrap();
    va.exec(&["ip", "link", "set", "eth0", "address", "fa:16:3e:66:66:66"]).unwrap();
    assert!(!va.ping(&b.ip, 2), "forged MAC got through");
    assert!(counter(&a, DropReason::SrcMacSpoof) >= 1, "src_mac_spoof counted");

    // Unbound tap and admin-down port.
    assert!(!c.vms[iu].ping(&b.ip, 2), "unbound tap got through");
    assert!(counter(&unbound, DropReason::PortUnbound) >= 1, "port_unbound counted");
    assert!(!c.vms[ip].ping(&b.ip, 2), "admin-down port got through");
    assert!(counter(&p, DropReason::PortAdminDown) >= 1, "port_admin_down counted");
    assert!(!c.vms[ib].ping(&p.ip, 1), "b reached the admin-down port");

    let lines = in_b.stop().unwrap();
    let forged: Vec<_> = lines
        .iter()
        .filter(|l| {
            l.contains("10.10.10.99")
                || l.contains("fa:16:3e:66:66:66")
                || l.contains(&unbound.mac)
                || l.contains(&p.mac)
        })
        .collect();
    assert!(forged.is_empty(), "forged or blocked traffic reached b: {forged:#?}");
}
