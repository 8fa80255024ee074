//! Two VLAN networks reusing the same addresses, and a flat network, on the
//! same physical network: each reaches only itself, with its own tag.

use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec},
};

use crate::scenario::*;

#[test]
fn vlan_networks_reusing_addresses_stay_isolated_and_flat_is_untagged() {
    let mut c = Cluster::new("iso", 2).unwrap();
    let a1 = vm1();
    let b1 = vm2();
    let a2 = PortSpec::vm(
        "a2a2a2a2-0000-4000-8000-000000000001",
        NET2,
        "fa:16:3e:02:00:02",
        "10.10.10.2",
        "node0",
    );
    let b2 = PortSpec::vm(
        "b2b2b2b2-0000-4000-8000-000000000001",
        NET2,
        "fa:16:3e:02:00:03",
        "10.10.10.3",
        "node1",
    );
    let f1 = PortSpec::vm(
        "f1f1f1f1-0000-4000-8000-000000000001",
        FLAT,
        "fa:16:3e:0f:00:02",
        "192.168.50.2",
        "node0",
    );
    let f2 = PortSpec::vm(
        "f2f2f2f2-0000-4000-8000-000000000001",
        FLAT,
        "fa:16:3e:0f:00:03",
        "192.168.50.3",
        "node1",
    );
    c.write_bindings(&bindings(&[&a1, &b1, &a2, &b2, &f1, &f2])).unwrap();
    let mut vm = std::collections::BTreeMap::new();
    for (node, p) in
        [("node0", &a1), ("node1", &b1), ("node0", &a2), ("node1", &b2), ("node0", &f1), ("node1", &f2)]
    {
        let i = c.add_vm(node, p.clone()).unwrap();
        c.vms[i].set_static_ip().unwrap();
        vm.insert(p.mac.clone(), i);
    }
    let v = |p: &PortSpec| vm[&p.mac];
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();

    assert!(c.vms[v(&a1)].ping_until(&b1.ip, std::time::Duration::from_secs(10)), "net1 works");
    assert!(c.vms[v(&a2)].reaches(&b2.ip), "net2, same addresses, works");
    assert!(c.vms[v(&f1)].reaches(&f2.ip), "the flat network works");

    // net1's broadcasts and unicast must not reach net2's VMs, on either node.
    let wire = Capture::start(&c.phys, "up-node1", "").unwrap();
    let in_b1 = Capture::start(&c.vms[v(&b1)].ns, "eth0", "").unwrap();
    let in_a2 = Capture::start(&c.vms[v(&a2)].ns, "eth0", "").unwrap();
    let in_b2 = Capture::start(&c.vms[v(&b2)].ns, "eth0", "").unwrap();
    // An address nobody has: ARP broadcasts flood net1.
    assert!(!c.vms[v(&a1)].ping("10.10.10.77", 2));
    assert!(c.vms[v(&a1)].reaches(&b1.ip));
    assert!(c.vms[v(&f1)].reaches(&f2.ip));
    let b1_lines = in_b1.stop().unwrap();
    assert!(
        b1_lines.iter().any(|l| l.contains("who-has 10.10.10.77")),
        "control: net1 flood reaches b1: {b1_lines:#?}"
    );
    for (name, cap) in [("a2", in_a2), ("b2", in_b2)] {
        let lines = cap.stop().unwrap();
        let leaked: Vec<_> =
            lines.iter().filter(|l| l.contains(&a1.mac) || l.contains("10.10.10.77")).collect();
        assert!(leaked.is_empty(), "net1 traffic reached {name} on net2: {leaked:#?}");
    }
    let lines = wire.stop().unwrap();
    for l in lines.iter().filter(|l| l.contains(&a1.mac)) {
        assert!(l.contains("vlan 1000,"), "net1 frame without tag 1000: {l}");
    }
    let flat: Vec<_> = lines.iter().filter(|l| l.contains(&f1.mac)).collect();
    assert!(!flat.is_empty(), "flat traffic crossed the wire: {lines:#?}");
    for l in flat {
        assert!(!l.contains("802.1Q") && !l.contains("vlan "), "flat frame carries a tag: {l}");
    }
}
