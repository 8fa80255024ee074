//! The node every program test runs against: two VLAN networks and a flat one
//! on physical network "default" (uplink eth2), a DHCP port, an admin-down
//! port, a port without port security, and an unbound tap.

use datapath_tests::program::Bench;
use datapath_user::frames::neutron_mac;

pub const CONFIG: &str = r#"
host = "node0"
physical_interface_mappings = ["default:eth2", "lonely:eth9"]
bindings = "/unused/in/program/tests.json"
pin_path = "/sys/fs/bpf/unused"
"#;

pub const NET1: &str = "11111111-1111-4111-8111-111111111111";

pub const BINDINGS: &str = r#"{
 "networks": [
  {"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500},
  {"id": "22222222-2222-4222-8222-222222222222", "name": "net2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1001, "mtu": 1500},
  {"id": "33333333-3333-4333-8333-333333333333", "name": "flat", "provider:network_type": "flat", "provider:physical_network": "default", "mtu": 1500},
  {"id": "44444444-4444-4444-8444-444444444444", "name": "lonely", "provider:network_type": "flat", "provider:physical_network": "lonely", "mtu": 1500}
 ],
 "ports": [
  {"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.10.10.2"}, {"ip_address": "2001:db8::a"}], "device_owner": "compute:nova", "binding:host_id": "node0",
   "allowed_address_pairs": [{"ip_address": "10.10.10.100"}, {"ip_address": "10.10.10.200/32", "mac_address": "fa:16:3e:00:00:aa"}]},
  {"id": "b0000000-0b00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0b",
   "fixed_ips": [{"ip_address": "10.10.10.3"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "d0000000-0d00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0d",
   "fixed_ips": [{"ip_address": "10.10.10.10"}], "device_owner": "network:dhcp", "binding:host_id": "node0"},
  {"id": "e0000000-0e00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0e",
   "fixed_ips": [{"ip_address": "10.10.10.4"}], "device_owner": "compute:nova", "binding:host_id": "node0", "admin_state_up": false},
  {"id": "90000000-0900-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:09",
   "fixed_ips": [{"ip_address": "10.10.10.5"}], "device_owner": "compute:nova", "binding:host_id": "node0", "port_security_enabled": false},
  {"id": "c0000000-0c00-4000-8000-000000000001", "network_id": "22222222-2222-4222-8222-222222222222", "mac_address": "fa:16:3e:00:00:0c",
   "fixed_ips": [{"ip_address": "10.10.10.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "f0000000-0f00-4000-8000-000000000001", "network_id": "33333333-3333-4333-8333-333333333333", "mac_address": "fa:16:3e:00:00:0f",
   "fixed_ips": [{"ip_address": "192.168.0.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "b1000000-0b10-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:01:0b",
   "fixed_ips": [{"ip_address": "10.10.10.30"}], "device_owner": "compute:nova", "binding:host_id": "node1"},
  {"id": "1a000000-1a00-4000-8000-000000000001", "network_id": "44444444-4444-4444-8444-444444444444", "mac_address": "fa:16:3e:00:00:1a",
   "fixed_ips": [{"ip_address": "172.16.0.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"}
 ]
}"#;

/// Devices of the bench; "stray0" is a device the agent knows nothing about.
pub const DEVICES: &[&str] = &[
    "eth2",
    "tapa0000000-0a",
    "tapb0000000-0b",
    "tapd0000000-0d",
    "tape0000000-0e",
    "tap90000000-09",
    "tapc0000000-0c",
    "tapf0000000-0f",
    "tap11111111-11",
    "stray0",
    "tap1a000000-1a",
];

pub const A: &str = "tapa0000000-0a";
pub const B: &str = "tapb0000000-0b";
pub const D: &str = "tapd0000000-0d";
pub const P: &str = "tape0000000-0e";
pub const X: &str = "tap90000000-09";
pub const C: &str = "tapc0000000-0c";
pub const F: &str = "tapf0000000-0f";
pub const U: &str = "tap11111111-11";
pub const UPLINK: &str = "eth2";
/// The only port of a flat network whose interface (eth9) this node lacks.
pub const L: &str = "tap1a000000-1a";

pub const MAC_A: [u8; 6] = neutron_mac(0x0a);
pub const MAC_B: [u8; 6] = neutron_mac(0x0b);
pub const MAC_D: [u8; 6] = neutron_mac(0x0d);
pub const MAC_P: [u8; 6] = neutron_mac(0x0e);
pub const MAC_C: [u8; 6] = neutron_mac(0x0c);
pub const MAC_F: [u8; 6] = neutron_mac(0x0f);
pub const MAC_PAIR: [u8; 6] = neutron_mac(0xaa);
pub const MAC_L: [u8; 6] = neutron_mac(0x1a);
/// A MAC that lives behind the uplink.
pub const MAC_REMOTE: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x01, 0x0b];

/// An ICMP echo request from `src_mac`/`src` to `dst_mac`/`dst`.
pub fn icmp(src_mac: [u8; 6], dst_mac: [u8; 6], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    use datapath_user::frames::{eth, ipv4_icmp_echo};
    eth(dst_mac, src_mac, 0x0800, &ipv4_icmp_echo(src, dst))
}

pub fn bench() -> Bench {
    datapath_tests::require_root();
    Bench::new(CONFIG, BINDINGS, DEVICES).expect("building the program-test bench")
}
