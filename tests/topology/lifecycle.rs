//! The agent's life: ports that come and go in either order, a bindings file
//! that breaks, the agent stopping (SIGTERM, SIGKILL) while traffic keeps
//! flowing, and `--cleanup` removing everything.

use std::time::Duration;

use datapath_common::{DropReason, PORT_F_BOUND};
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec},
    pinned::{ifindex_in, port_view},
    wait_for,
};

use crate::scenario::*;

const SETTLE: Duration = Duration::from_secs(10);

/// What the kernel counted as `port_unbound` on `port`'s tap.
fn unbound_drops(c: &Cluster, port: &PortSpec) -> u64 {
    let ifindex = ifindex_in(&c.node("node0").ns, &port.device()).unwrap();
    port_view(&c.pins.path().join("node0"), ifindex).map(|v| v.drops(DropReason::PortUnbound)).unwrap_or(0)
}

#[test]
fn agent_follows_port_events_survives_stops_and_cleans_up() {
    let mut c = Cluster::new("life", 1).unwrap();
    let a = vm1();
    let mut b = vm2();
    b.host = "node0".into();
    let late_binding = PortSpec::vm(
        "c3c3c3c3-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:c3:00:05",
        "10.10.10.5",
        "node0",
    );
    let late_device = PortSpec::vm(
        "c4c4c4c4-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:c4:00:06",
        "10.10.10.6",
        "node0",
    );
    c.write_bindings(&bindings(&[&a, &b, &late_device])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node0", b.clone()).unwrap();
    let ic = c.add_vm("node0", late_binding.clone()).unwrap();
    for i in [ia, ib, ic] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, SETTLE), "a reaches b");
    let pin = c.pins.path().join("node0");
    let before = unbound_drops(&c, &late_binding);
    assert!(!c.vms[ic].ping(&b.ip, 1), "a device without a binding is not connected yet");
    assert!(unbound_drops(&c, &late_binding) > before, "and its frames are counted as port_unbound");

    // Device first, binding later.
    c.write_bindings(&bindings(&[&a, &b, &late_device, &late_binding])).unwrap();
    assert!(c.vms[ic].ping_until(&b.ip, SETTLE), "device first, then binding");

    // Binding first (late_device has been bound all along), device later.
    let id = c.add_vm("node0", late_device.clone()).unwrap();
    c.vms[id].set_static_ip().unwrap();
    assert!(c.vms[id].ping_until(&a.ip, SETTLE), "binding first, then device");

    // Bad entries are refused one by one, with a reason; everything else stays up.
    let mut doc = bindings(&[&a, &b, &late_device, &late_binding]);
    let nets = doc["networks"].as_array_mut().unwrap();
    nets.push(serde_json::json!({"id": "bad-vlan", "provider:network_type": "vlan",
        "provider:physical_network": "default", "provider:segmentation_id": 5000}));
    nets.push(serde_json::json!({"id": "bad-physnet", "provider:network_type": "vlan",
        "provider:physical_network": "nowhere", "provider:segmentation_id": 7}));
    let ports = doc["ports"].as_array_mut().unwrap();
    let mut dup = PortSpec::vm("dddd0000-0000-4000-8000-000000000001", NET1, &a.mac, "10.10.10.8", "node0");
    ports.push(dup.to_json());
    dup = PortSpec::vm(
        "eeee0000-0000-4000-8000-000000000001",
        "bad-physnet",
        "fa:16:3e:ee:00:08",
        "10.1.1.8",
        "node0",
    );
    ports.push(dup.to_json());
    c.write_bindings(&doc).unwrap();
    wait_for("the agent to refuse the two bad ports", SETTLE, || {
        c.cli_json("node0", &["status"]).unwrap()["refused"].as_array().is_some_and(|r| r.len() >= 2)
    });
    let status = c.cli_json("node0", &["status"]).unwrap();
    let refused = status["refused"].to_string();
    assert!(refused.contains("bad-vlan") && refused.contains("5000"), "VLAN out of range refused: {refused}");
    assert!(refused.contains("dddd0000") && refused.contains(&a.mac), "duplicate MAC refused: {refused}");
    let nets = c.cli_json("node0", &["networks"]).unwrap().to_string();
    assert!(
        nets.contains("nowhere") && nets.contains("not in physical_interface_mappings"),
        "unmapped physnet: {nets}"
    );
    assert!(c.vms[ia].reaches(&b.ip), "the good ports stay up");
    assert!(c.vms[ic].reaches(&a.ip));

    // A bindings file that does not parse keeps the last good state.
    c.write_bindings_text("{\"networks\": [ this is not json").unwrap();
    wait_for("the agent to report the broken bindings file", SETTLE, || {
        c.cli_json("node0", &["status"]).unwrap()["bindings_error"].is_string()
    });
    assert!(c.vms[ia].reaches(&b.ip), "traffic survives a broken bindings file");
    let log = c.node("node0").agent.as_ref().unwrap().log_text();
    assert!(log.contains("bindings.json") && log.contains("line 1"), "error names the file and line: {log}");

    // Unbinding a port removes it from the datapath.
    c.write_bindings(&bindings(&[&a, &b, &late_device])).unwrap();
    let ifc = ifindex_in(&c.node("node0").ns, &late_binding.device()).unwrap();
    wait_for("the unbound port to lose its binding in the kernel", SETTLE, || {
        port_view(&pin, ifc).is_ok_and(|v| v.info.flags & PORT_F_BOUND == 0)
    });
    let before = unbound_drops(&c, &late_binding);
    assert!(!c.vms[ic].ping(&b.ip, 1), "an unbound port is cut off");
    assert!(unbound_drops(&c, &late_binding) > before, "its frames are counted as port_unbound");

    // SIGTERM, as systemctl stop/restart sends: forwarding goes on.
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    assert!(c.vms[ia].reaches(&b.ip), "forwarding continues with the agent stopped");
    c.start_agent("node0").unwrap();
    assert!(c.vms[ia].reaches(&b.ip), "and after it starts again");
    assert!(c.vms[id].reaches(&a.ip));

    // SIGKILL: same.
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
    assert!(c.vms[ia].reaches(&b.ip), "forwarding continues after SIGKILL");

    // --cleanup removes programs, links, maps and pins.
    c.nodes[0].cleanup().unwrap();
    assert!(!pin.exists(), "pins left behind at {}", pin.display());
    let at_b = Capture::start(&c.vms[ib].ns, "eth0", "icmp").unwrap();
    assert!(!c.vms[ia].ping(&b.ip, 1), "after cleanup the taps are no longer bridged");
    let reached = at_b.stop().unwrap();
    assert!(reached.is_empty(), "nothing of a's ping reaches b without the datapath: {reached:#?}");
}
