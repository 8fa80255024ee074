//! Port events in bursts: 200 ports whose devices appear at once, then
//! disappear at once, then lose their bindings. The agent follows, and a
//! removed port leaves no trace in any map.

use std::time::Duration;

use datapath_tests::{
    cluster::{Cluster, PortSpec},
    pinned::entry_counts,
    wait_for,
};
use serde_json::json;

const PORTS: usize = 200;
const NETWORKS: usize = 4;

#[test]
fn a_burst_of_200_ports_comes_and_goes_without_leaving_a_trace() {
    let mut c = Cluster::new("burst", 1).unwrap();
    let net_ids: Vec<String> =
        (0..NETWORKS).map(|n| format!("{n:08x}-aaaa-4aaa-8aaa-aaaaaaaaaaaa")).collect();
    let ports: Vec<PortSpec> = (0..PORTS)
        .map(|i| {
            PortSpec::vm(
                &format!("{i:08x}-bbbb-4bbb-8bbb-bbbbbbbbbbbb"),
                &net_ids[i % NETWORKS],
                &format!("fa:16:3e:00:{:02x}:{:02x}", i / 256, i % 256),
                &format!("10.{}.{}.{}", i % NETWORKS, i / 250, i % 250 + 2),
                "node0",
            )
        })
        .collect();
    let networks: Vec<_> = net_ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            datapath_tests::cluster::network_json(id, &format!("net{n}"), "vlan", Some(2000 + n as u32))
        })
        .collect();
    c.write_bindings(
        &json!({"networks": networks, "ports": ports.iter().map(|p| p.to_json()).collect::<Vec<_>>()}),
    )
    .unwrap();
    c.start_agent("node0").unwrap();
    let pin = c.pins.path().join("node0");
    wait_for("the agent's first sync", Duration::from_secs(10), || entry_counts(&pin).is_ok());

    // All devices at once, as when 200 VMs boot together.
    let batch: String = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!(
                "link add {} type veth peer name vm{i}\nlink set {} up\nlink set vm{i} up\n",
                p.device(),
                p.device()
            )
        })
        .collect();
    let file = c.dir.join("burst-add.batch");
    std::fs::write(&file, batch).unwrap();
    c.node("node0").ns.exec(&["ip", "-batch", file.to_str().unwrap()]).unwrap();
    wait_for("200 ports programmed", Duration::from_secs(30), || {
        entry_counts(&pin).is_ok_and(|n| n["PORTS"] == PORTS + 1 && n["FDB"] == PORTS)
    });
    let n = entry_counts(&pin).unwrap();
    assert_eq!(n["NETWORKS"], NETWORKS);
    assert_eq!(n["NET_BY_SEGMENT"], NETWORKS);
    assert_eq!(n["FLOOD_SETS"], NETWORKS);
    assert_eq!(n["ALLOWED_MACS"], PORTS);
    assert_eq!(n["ALLOWED_V4"], PORTS);
    assert_eq!(n["ALLOWED_V6"], PORTS, "one link-local per port");

    // All devices gone at once (VMs deleted): every per-port entry goes.
    let batch: String = ports.iter().map(|p| format!("link del {}\n", p.device())).collect();
    std::fs::write(&file, batch).unwrap();
    c.node("node0").ns.exec(&["ip", "-batch", file.to_str().unwrap()]).unwrap();
    wait_for("200 ports removed", Duration::from_secs(30), || {
        entry_counts(&pin).is_ok_and(|n| n["PORTS"] == 1)
    });
    let n = entry_counts(&pin).unwrap();
    for map in ["FDB", "FLOOD_SETS", "ALLOWED_MACS", "ALLOWED_V4", "ALLOWED_V6"] {
        assert_eq!(n[map], 0, "{map} still holds entries of deleted devices: {n:?}");
    }

    // Bindings gone too: the networks leave the node.
    c.write_bindings(&json!({"networks": [], "ports": []})).unwrap();
    wait_for("networks removed", Duration::from_secs(10), || {
        entry_counts(&pin).is_ok_and(|n| n["NETWORKS"] == 0)
    });
    let n = entry_counts(&pin).unwrap();
    assert_eq!((n["NET_BY_SEGMENT"], n["PORTS"]), (0, 1), "only the uplink is left: {n:?}");
}
