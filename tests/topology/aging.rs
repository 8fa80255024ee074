//! Learned MACs age out: a MAC learned from the wire is forgotten after
//! `mac_age_seconds` without frames, and comes back with the next frame.

use std::time::Duration;

use datapath_tests::cluster::Cluster;

use crate::scenario::*;

#[test]
fn learned_macs_age_out_and_come_back() {
    let mut c = Cluster::new("aging", 2).unwrap();
    let (a, b) = (vm1(), vm2());
    c.write_bindings(&bindings(&[&a, &b])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    for i in [ia, ib] {
        // No IPv6 chatter (MLD, RS) to refresh the entry behind our back.
        c.vms[i].exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
        c.vms[i].set_static_ip().unwrap();
    }
    c.append_config("node0", "mac_age_seconds = 2").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[ia].reaches(&b.ip));
    assert!(c.learned_on("node0", &b.mac).is_some(), "vm-2's MAC is learned from the uplink");
    assert!(
        datapath_tests::wait_until(Duration::from_secs(8), || c.learned_on("node0", &b.mac).is_none()),
        "vm-2's MAC did not age out after 2 s of silence"
    );
    assert!(c.vms[ia].reaches(&b.ip), "an aged-out MAC is flooded again, then relearned");
    assert!(c.learned_on("node0", &b.mac).is_some());
}
