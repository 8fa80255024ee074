//! Random but valid bindings documents for one node ("node0"): networks of
//! the three types on two physical networks and VXLAN, ports on this node
//! (on a fixed pool of tap devices) and on two others, fixed IPs, allowed
//! address pairs, port security on and off, admin-down ports and networks,
//! `network:*` owners.

use serde_json::{Value, json};

use super::rng::Rng;

/// The agent config every fuzzed node runs with.
pub const CONFIG: &str = r#"
host = "node0"
physical_interface_mappings = ["physnet1:eth2", "physnet2:eth3", "physnet3:eth9"]
bindings = "/unused/in/fuzz.json"
pin_path = "/sys/fs/bpf/unused"
local_ip = "192.0.2.10"
tunnel_types = ["vxlan"]
"#;

/// Uplinks of the node, by physical network.
pub const UPLINKS: [(&str, &str); 2] = [("physnet1", "eth2"), ("physnet2", "eth3")];
/// Physical networks whose networks are not carried here: mapped to an
/// interface that does not exist (no uplink: no wire target), and not mapped
/// at all (the network is refused on this node, its ports are not programmed).
const NO_UPLINK: [&str; 2] = ["physnet3", "physnet9"];
/// The collect-metadata VXLAN device.
pub const VXLAN_DEV: &str = "vxlan-dp";
/// A device the agent knows nothing about.
pub const STRAY: &str = "stray0";
/// Tap devices in the pool; each document binds some of them.
pub const TAP_SLOTS: usize = 12;
/// (host, VTEP) of every node.
pub const AGENTS: [(&str, [u8; 4]); 3] =
    [("node0", [192, 0, 2, 10]), ("node1", [192, 0, 2, 11]), ("node2", [192, 0, 2, 12])];

/// The tap device of pool slot `i`, named as Nova names taps.
pub fn tap_name(i: usize) -> String {
    format!("tapd00000{i:02x}-{i:02x}")
}

/// Every device of the bench.
pub fn devices() -> Vec<String> {
    let mut d: Vec<String> = UPLINKS.iter().map(|(_, dev)| dev.to_string()).collect();
    d.push(VXLAN_DEV.into());
    d.push(STRAY.into());
    d.extend((0..TAP_SLOTS).map(tap_name));
    d
}

/// The network address of a document's network `n`: 10.n.0.0/16 and 2001:db8:n::/64.
fn v4_in(n: usize, host: u16) -> [u8; 4] {
    [10, n as u8, (host >> 8) as u8, host as u8]
}

fn v6_in(n: usize, host: u16) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    a[5] = n as u8;
    a[14..].copy_from_slice(&host.to_be_bytes());
    a
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn v4_text(a: [u8; 4]) -> String {
    std::net::Ipv4Addr::from(a).to_string()
}

fn v6_text(a: [u8; 16]) -> String {
    std::net::Ipv6Addr::from(a).to_string()
}

/// A fresh unicast MAC in Neutron's OUI, never used before in this document.
fn fresh_mac(rng: &mut Rng, used: &mut Vec<[u8; 6]>) -> [u8; 6] {
    loop {
        let m = [0xfa, 0x16, 0x3e, rng.byte(), rng.byte(), rng.byte()];
        if !used.contains(&m) {
            used.push(m);
            return m;
        }
    }
}

/// A random valid bindings document (JSON text).
pub fn generate(rng: &mut Rng) -> String {
    let mut networks = Vec::new();
    let mut ports = Vec::new();
    let mut used_macs = Vec::new();
    let mut slots: Vec<usize> = (0..TAP_SLOTS).collect();
    let mut taken_segments: Vec<(String, u32)> = Vec::new();
    let n_nets = rng.range(1, 4) as usize;
    for n in 1..=n_nets {
        let id = format!("{n:08x}-0000-4000-8000-{:012x}", rng.next_u64() & 0xffff_ffff_ffff);
        let physnet = if rng.chance(10) { *rng.pick(&NO_UPLINK) } else { rng.pick(&UPLINKS).0 };
        let (kind, physnet, seg) = match rng.below(3) {
            0 => ("flat", Some(physnet), 0),
            1 => ("vlan", Some(physnet), rng.range(1, 4094)),
            _ => ("vxlan", None, rng.range(1, 1 << 24)),
        };
        let wire = physnet.unwrap_or("vxlan").to_string();
        if taken_segments.contains(&(wire.clone(), seg)) {
            continue;
        }
        taken_segments.push((wire, seg));
        let mtu = if kind == "vxlan" { 1450 } else { *rng.pick(&[1500, 9000, 1400]) };
        let mut net = json!({"id": id, "name": format!("net{n}"), "provider:network_type": kind, "mtu": mtu,
            "admin_state_up": !rng.chance(5)});
        if let Some(p) = physnet {
            net["provider:physical_network"] = json!(p);
        }
        if kind != "flat" {
            net["provider:segmentation_id"] = json!(seg);
        }
        networks.push(net);
        // The first network always has a port here, so that most documents program something.
        let local = if n == 1 { 1 + rng.below(4) } else { rng.below(5) }.min(slots.len());
        let remote = rng.below(4);
        for k in 0..local + remote {
            let prefix = if k < local {
                let slot = slots.swap_remove(rng.below(slots.len()));
                format!("d00000{slot:02x}-{slot:02x}")
            } else {
                format!("e{:07x}-{:02x}", rng.next_u64() & 0xfff_ffff, rng.byte())
            };
            let host = if k < local { "node0" } else { rng.pick(&AGENTS[1..]).0 };
            ports.push(port(rng, &mut used_macs, &prefix, &id, n, host));
        }
    }
    let agents: Vec<Value> = AGENTS
        .iter()
        .map(|(h, ip)| json!({"host": h, "agent_type": "Open vSwitch agent", "configurations": {"tunneling_ip": v4_text(*ip)}}))
        .collect();
    json!({"networks": networks, "ports": ports, "agents": agents}).to_string()
}

fn port(rng: &mut Rng, used: &mut Vec<[u8; 6]>, prefix: &str, net_id: &str, n: usize, host: &str) -> Value {
    let id = format!("{prefix}00-4000-8000-{:012x}", rng.next_u64() & 0xffff_ffff_ffff);
    let mac = fresh_mac(rng, used);
    let mut fixed = vec![json!({"ip_address": v4_text(v4_in(n, rng.range(2, 4000) as u16))})];
    if rng.chance(60) {
        fixed.push(json!({"ip_address": v6_text(v6_in(n, rng.range(2, 4000) as u16))}));
    }
    if rng.chance(10) {
        fixed.clear();
    }
    let mut pairs = Vec::new();
    for _ in 0..rng.below(3) {
        let ip = match rng.below(4) {
            0 => format!("{}/32", v4_text(v4_in(n, rng.range(2, 4000) as u16))),
            1 => format!("{}/{}", v4_text(v4_in(n, rng.range(2, 4000) as u16)), rng.pick(&[24, 28, 16])),
            2 => format!("{}/128", v6_text(v6_in(n, rng.range(2, 4000) as u16))),
            _ => format!("{}/{}", v6_text(v6_in(n, rng.range(2, 4000) as u16)), rng.pick(&[64, 120])),
        };
        let mut pair = json!({"ip_address": ip});
        if rng.chance(40) {
            pair["mac_address"] = json!(mac_text(fresh_mac(rng, used)));
        }
        pairs.push(pair);
    }
    let owner = *rng.pick(&[
        "compute:nova",
        "compute:nova",
        "compute:nova",
        "network:dhcp",
        "network:router_interface",
    ]);
    json!({"id": id, "network_id": net_id, "mac_address": mac_text(mac), "fixed_ips": fixed,
        "device_owner": owner, "binding:host_id": host, "admin_state_up": !rng.chance(8),
        "port_security_enabled": !rng.chance(15), "allowed_address_pairs": pairs})
}
