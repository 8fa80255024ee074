//! Ports and networks of the seed walkthrough, renamed for tests.

use datapath_tests::cluster::{PortSpec, network_json};
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
