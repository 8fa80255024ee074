//! Ports and networks of the seed walkthrough, renamed for tests.

use std::time::Duration;

use datapath_tests::cluster::{Cluster, PortSpec, network_json};
use serde_json::{Value, json};

pub const NET1: &str = "5f833617-6179-4797-b7c0-7d420d84040c";
pub const NET2: &str = "6a944728-7280-48a8-c8d1-8e531e95151d";
pub const FLAT: &str = "7b055839-8391-49b9-d9e2-9f642f06262e";

/// vm-1 on node0 (the seed's 02407769-97 port).
pub fn vm1() -> PortSpec {
    PortSpec::vm("02407769-97c6-45ae-8fba-ea464020951c", NET1, "fa:16:3e:ad:66:9e", "10.10.10.2", "node0")
}

/// vm-2 on node1 (the seed's f4c391da-22 port).
pub fn vm2() -> PortSpec {
    PortSpec::vm("f4c391da-2295-479a-95c5-c7759132f2ea", NET1, "fa:16:3e:f5:ca:f5", "10.10.10.3", "node1")
}

/// The DHCP port of net1 on node0 (the seed's 26c9b807-7c port).
pub fn dhcp1() -> PortSpec {
    let mut p = PortSpec::vm(
        "26c9b807-7c3d-4d5e-8f60-7a8b9c0d1e2f",
        NET1,
        "fa:16:3e:1d:5c:81",
        "10.10.10.10",
        "node0",
    );
    p.owner = "network:dhcp".into();
    p
}

/// The three networks: net1 (VLAN 1000), net2 (VLAN 1001), flat.
pub fn networks() -> Vec<Value> {
    vec![
        network_json(NET1, "net1", "vlan", Some(1000)),
        network_json(NET2, "net2", "vlan", Some(1001)),
        network_json(FLAT, "flat", "flat", None),
    ]
}

/// A bindings document with `ports`.
pub fn bindings(ports: &[&PortSpec]) -> Value {
    json!({"networks": networks(), "ports": ports.iter().map(|p| p.to_json()).collect::<Vec<_>>()})
}

/// vm-1 and a second VM of net1 (10.10.10.12) on node0 of a one-node
/// cluster, with `config` added to the agent's config: the agent running and
/// vm-1 reaching the other. Returns the cluster, both ports, vm-1's index.
pub fn local_pair(tag: &str, config: &str) -> (Cluster, PortSpec, PortSpec, usize) {
    let mut c = Cluster::new(tag, 1).unwrap();
    let a = vm1();
    let b = PortSpec::vm(
        "0c0c0c0c-0000-4000-8000-00000000000c",
        NET1,
        "fa:16:3e:0c:00:0c",
        "10.10.10.12",
        "node0",
    );
    c.write_bindings(&bindings(&[&a, &b])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node0", b.clone()).unwrap();
    c.vms[ia].set_static_ip().unwrap();
    c.vms[ib].set_static_ip().unwrap();
    if !config.is_empty() {
        c.append_config("node0", config).unwrap();
    }
    c.start_agent("node0").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, Duration::from_secs(10)));
    (c, a, b, ia)
}
