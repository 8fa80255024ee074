//! Desired state: what the kernel maps must hold, derived as plain data from
//! the config, the bindings and the devices present in the agent's namespace.
//!
//! `derive` is pure and runs in passes, one file each: numbering (`alloc`,
//! kept by the agent across reconciliations and recovered from the kernel
//! maps after a restart), the networks with their tunnels (`networks`), the
//! ports (`ports`), and the addresses ports may send from and the ARP table
//! (`addresses`).

mod addresses;
mod alloc;
mod engine;
mod invariants;
mod networks;
mod ports;
mod qos;
mod security;

use std::collections::BTreeMap;

pub use addresses::link_local_of;
pub use alloc::{Allocations, WireId, wire_id_of};
pub use engine::{Change, Engine, Scope, moved_devices};
pub use invariants::check as check_invariants;
pub use security::SecurityLayer;

pub use crate::synced::MapState;
use crate::{
    bindings::{Bindings, Catalog},
    config::Config,
    netlink::Devices,
};

/// Where a port stands, for `datapath ports` and the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortState {
    /// Bound and its device present: programmed.
    Up,
    /// Bound, device present, but `admin_state_up` is false (port or network): frames dropped.
    AdminDown,
    /// Bound, but its device does not exist (yet).
    NoDevice,
    /// A tap device without a binding for this host: frames dropped.
    Unbound,
    /// Refused; the reason says why.
    Error(String),
}

/// The state of one port (or unbound tap, or uplink).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortReport {
    /// Neutron port id ("" for unbound taps and uplinks).
    pub id: String,
    pub device: String,
    pub ifindex: Option<u32>,
    /// Neutron network id ("" when none).
    pub network_id: String,
    pub net_index: Option<u32>,
    /// "vm", "network", "subport", "uplink" or "unbound".
    pub kind: &'static str,
    pub state: PortState,
    /// The port's place in a trunk, if it has one.
    pub trunk: Option<TrunkRole>,
    /// The QoS policy in force on the port (its own or its network's), if any.
    pub qos_policy: Option<String>,
}

/// A port's place in a trunk (Neutron's VLAN-aware VMs), for `datapath ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrunkRole {
    /// The trunk's parent port: its tap carries the subports' VLANs.
    Parent { trunk_id: String },
    /// A subport: what the VM tags `vid` on the parent's tap `parent` is its.
    Subport { trunk_id: String, parent: String, vid: u16 },
}

/// A network's place on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkReport {
    pub id: String,
    pub name: String,
    pub net_type: String,
    pub segmentation_id: Option<u32>,
    pub physical_network: Option<String>,
    pub net_index: Option<u32>,
    pub local_ports: usize,
    /// Empty when the network is programmed; otherwise why not.
    pub error: String,
}

/// Which program a device gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub device: String,
    /// On the device's TC ingress (what it sends).
    pub program: &'static str,
    /// On its TC egress (what it receives), if any.
    pub egress: Option<&'static str>,
    /// In its driver (XDP, before the TC ingress), if any: the uplinks' XDP stage.
    pub xdp: Option<&'static str>,
}

/// Everything derived in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Derived {
    pub state: MapState,
    pub ports: Vec<PortReport>,
    pub networks: Vec<NetworkReport>,
    /// ifindex -> the program to attach there.
    pub attach: BTreeMap<u32, Attachment>,
}

/// Whether a device name looks like a Neutron port device: `tap` + 8 hex + `-` + 2 hex.
pub fn is_port_device(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() == 14
        && name.starts_with("tap")
        && b[3..11].iter().all(u8::is_ascii_hexdigit)
        && b[11] == b'-'
        && b[12..14].iter().all(u8::is_ascii_hexdigit)
}

/// Derives the desired maps, the port/network reports and the attachments
/// from scratch: an `Engine`'s full update.
pub fn derive(cfg: &Config, bindings: &Bindings, devices: &Devices, alloc: &mut Allocations) -> Derived {
    let mut engine = Engine::new(std::mem::take(alloc));
    engine.update(cfg, &Catalog::split(bindings.clone()), devices, Scope::Full);
    let out = engine.derived(cfg);
    *alloc = engine.into_alloc();
    out
}

#[cfg(test)]
mod tests {
    use datapath_common::{
        ADDR_KEY_FIXED_BITS, FDB_F_LOCAL, FdbKey, NET_TYPE_VLAN, PORT_F_ADMIN_UP, PORT_F_ANTI_SPOOF,
        PORT_F_BOUND, PORT_KIND_NETWORK, PORT_KIND_UPLINK, PORT_KIND_VM, PortInfo, SEGMENT_UNTAGGED,
        SegmentKey, names,
    };

    use super::*;

    /// A node with one physical network, shared by the passes' tests.
    pub(super) const CONFIG: &str = r#"
host = "node0"
physical_interface_mappings = ["default:eth2"]
bindings = "/b.json"
pin_path = "/sys/fs/bpf/t"
"#;

    fn bindings(extra_ports: &str) -> Bindings {
        let text = format!(
            r#"{{"networks": [
  {{"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000}},
  {{"id": "n2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1001}},
  {{"id": "n3", "provider:network_type": "vlan", "provider:physical_network": "other", "provider:segmentation_id": 7}},
  {{"id": "n4", "provider:network_type": "flat", "provider:physical_network": "default"}}],
 "ports": [
  {{"id": "aaaaaaaa-0001", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{{"ip_address": "10.0.0.1"}}], "binding:host_id": "node0", "device_owner": "compute:nova"}},
  {{"id": "bbbbbbbb-0002", "network_id": "n1", "mac_address": "fa:16:3e:00:00:02", "binding:host_id": "node1"}},
  {{"id": "cccccccc-0003", "network_id": "n3", "mac_address": "fa:16:3e:00:00:03", "binding:host_id": "node0"}},
  {{"id": "dddddddd-0004", "network_id": "n1", "mac_address": "fa:16:3e:00:00:04", "binding:host_id": "node0", "device_owner": "network:dhcp"}}
  {extra_ports}]}}"#
        );
        Bindings::parse_str(&text, "test").unwrap()
    }

    fn devices(names: &[(&str, u32)]) -> Devices {
        names.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    }

    fn derive_default(b: &Bindings, d: &Devices) -> Derived {
        derive(&Config::parse_str(CONFIG, "test").unwrap(), b, d, &mut Allocations::default())
    }

    #[test]
    fn bound_port_with_device_gets_port_fdb_flood_and_allowed_entries() {
        let d = devices(&[("eth2", 2), ("tapaaaaaaaa-00", 10), ("tapdddddddd-00", 11)]);
        let out = derive_default(&bindings(""), &d);
        let net = out.networks.iter().find(|n| n.id == "n1").unwrap().net_index.unwrap();
        let info = out.state.networks[&net];
        assert_eq!((info.net_type, info.segmentation_id, info.uplink_ifindex), (NET_TYPE_VLAN, 1000, 2));
        assert_eq!(out.state.segments[&SegmentKey { ifindex: 2, segment: 1000 }], net);
        let vm = out.state.ports[&10];
        assert_eq!(vm.flags, PORT_F_BOUND | PORT_F_ADMIN_UP | PORT_F_ANTI_SPOOF);
        assert_eq!(vm.kind, PORT_KIND_VM);
        let dhcp = out.state.ports[&11];
        assert_eq!(
            dhcp.flags,
            PORT_F_BOUND | PORT_F_ADMIN_UP,
            "network:* owners are exempt from anti-spoofing"
        );
        assert_eq!(dhcp.kind, PORT_KIND_NETWORK);
        assert_eq!(out.state.ports[&2].kind, PORT_KIND_UPLINK);
        let fdb = out.state.fdb[&FdbKey { net_index: net, mac: [0xfa, 0x16, 0x3e, 0, 0, 1], _pad: [0; 2] }];
        assert_eq!((fdb.ifindex, fdb.flags), (10, FDB_F_LOCAL));
        let flood = out.state.flood_sets[&net];
        assert_eq!(&flood.ifindex[..flood.count as usize], &[10, 11]);
        // The port MAC, its fixed IP, and its link-local; nothing for the exempt DHCP port.
        assert_eq!(out.state.allowed_macs.len(), 1);
        assert_eq!(out.state.allowed_v4.len(), 1);
        let (plen, key) = out.state.allowed_v4.keys().next().unwrap();
        assert_eq!((*plen, key.ifindex, key.addr), (ADDR_KEY_FIXED_BITS + 32, 10, [10, 0, 0, 1]));
        assert_eq!(
            out.state.allowed_v6.keys().next().unwrap().1.addr,
            link_local_of(&[0xfa, 0x16, 0x3e, 0, 0, 1])
        );
        assert_eq!(out.attach[&10].program, names::PROG_VM_PORT);
        assert_eq!(out.attach[&2].program, names::PROG_UPLINK);
    }

    #[test]
    fn uplinks_and_only_uplinks_get_the_xdp_stage_unless_it_is_off() {
        let d = devices(&[("eth2", 2), ("tapaaaaaaaa-00", 10)]);
        let out = derive_default(&bindings(""), &d);
        assert_eq!(out.attach[&2].xdp, Some(names::PROG_UPLINK_XDP), "xdp = \"auto\" by default");
        assert_eq!(out.attach[&10].xdp, None, "VM taps stay on TC");
        let off = Config::parse_str(&format!("{CONFIG}xdp = \"off\"\n"), "test").unwrap();
        let out = derive(&off, &bindings(""), &d, &mut Allocations::default());
        assert_eq!(out.attach[&2].xdp, None);
    }

    #[test]
    fn ports_of_other_hosts_are_ignored_and_unmapped_physnets_refused() {
        let d = devices(&[("eth2", 2), ("tapbbbbbbbb-00", 12), ("tapcccccccc-00", 13)]);
        let out = derive_default(&bindings(""), &d);
        let c = out.ports.iter().find(|p| p.id == "cccccccc-0003").unwrap();
        assert!(matches!(&c.state, PortState::Error(e) if e.contains("\"other\"")), "{:?}", c.state);
        // bbbbbbbb is node1's: its tap here is just an unbound tap.
        let b = out.ports.iter().find(|p| p.device == "tapbbbbbbbb-00").unwrap();
        assert_eq!(b.state, PortState::Unbound);
        assert_eq!(out.state.ports[&12].flags, 0);
        assert!(!out.state.ports.contains_key(&13), "a refused port is not programmed");
    }

    #[test]
    fn missing_device_is_reported_and_programs_nothing() {
        let out = derive_default(&bindings(""), &devices(&[("eth2", 2)]));
        let a = out.ports.iter().find(|p| p.id == "aaaaaaaa-0001").unwrap();
        assert_eq!(a.state, PortState::NoDevice);
        assert!(out.state.fdb.is_empty());
        assert_eq!(out.state.ports.len(), 1, "only the uplink");
    }

    #[test]
    fn admin_down_port_is_programmed_but_not_a_destination() {
        let extra = r#",{"id": "eeeeeeee-0005", "network_id": "n1", "mac_address": "fa:16:3e:00:00:05", "binding:host_id": "node0", "admin_state_up": false}"#;
        let d = devices(&[("eth2", 2), ("tapeeeeeeee-00", 14)]);
        let out = derive_default(&bindings(extra), &d);
        assert_eq!(out.state.ports[&14].flags & PORT_F_ADMIN_UP, 0);
        assert!(out.state.fdb.is_empty());
        assert!(out.state.flood_sets.is_empty());
        assert_eq!(out.ports.iter().find(|p| p.ifindex == Some(14)).unwrap().state, PortState::AdminDown);
    }

    #[test]
    fn conflicting_vlan_on_one_physnet_refuses_the_second_network() {
        let mut b = bindings(
            r#",{"id": "ffffffff-0006", "network_id": "n2", "mac_address": "fa:16:3e:00:00:06", "binding:host_id": "node0"}"#,
        );
        b.networks[1].segmentation_id = Some(1000);
        let d = devices(&[("eth2", 2), ("tapaaaaaaaa-00", 10), ("tapffffffff-00", 15)]);
        let out = derive_default(&b, &d);
        let n2 = out.networks.iter().find(|n| n.id == "n2").unwrap();
        assert!(n2.error.contains("VLAN 1000"), "{}", n2.error);
        assert!(out.state.ports.contains_key(&10), "the first network's port stays up");
        assert!(!out.state.ports.contains_key(&15));
    }

    #[test]
    fn numbering_is_stable_and_recovered_from_kernel_state() {
        let d = devices(&[("eth2", 2), ("tapaaaaaaaa-00", 10)]);
        let cfg = Config::parse_str(CONFIG, "test").unwrap();
        let b = bindings("");
        let mut alloc = Allocations::default();
        let first = derive(&cfg, &b, &d, &mut alloc);
        let again = derive(&cfg, &b, &d, &mut alloc);
        assert_eq!(first, again);
        let mut recovered = Allocations::recover(&first.state);
        assert_eq!(derive(&cfg, &b, &d, &mut recovered).state, first.state);
    }

    #[test]
    fn freed_numbers_are_reused_lowest_first_and_recovered_ones_are_not_handed_out() {
        let mut a = Allocations::default();
        assert_eq!((a.slot(10), a.slot(11), a.slot(12)), (Some(1), Some(2), Some(3)));
        a.retain(&std::collections::BTreeSet::new(), &[10, 12].into());
        assert_eq!(a.slot(13), Some(2), "the freed slot comes back first");
        assert_eq!(a.slot(14), Some(4));
        let mut state = MapState::default();
        let info = |slot| PortInfo { stats_slot: slot, ..bytemuck::Zeroable::zeroed() };
        state.ports.insert(20, info(1));
        state.ports.insert(21, info(3));
        let mut r = Allocations::recover(&state);
        assert_eq!((r.slot(20), r.slot(22), r.slot(23)), (Some(1), Some(2), Some(4)));
    }

    #[test]
    fn flat_network_uses_the_untagged_segment() {
        let extra = r#",{"id": "99999999-0007", "network_id": "n4", "mac_address": "fa:16:3e:00:00:07", "binding:host_id": "node0"}"#;
        let d = devices(&[("eth2", 2), ("tap99999999-00", 16)]);
        let out = derive_default(&bindings(extra), &d);
        let idx = out.state.ports[&16].net_index;
        assert_eq!(out.state.segments[&SegmentKey { ifindex: 2, segment: SEGMENT_UNTAGGED }], idx);
        assert_eq!(out.state.networks[&idx].segmentation_id, 0);
    }

    #[test]
    fn derived_states_keep_their_invariants() {
        let d =
            devices(&[("eth2", 2), ("tapaaaaaaaa-00", 10), ("tapdddddddd-00", 11), ("tapbbbbbbbb-00", 12)]);
        assert_eq!(check_invariants(&derive_default(&bindings(""), &d)), Ok(()));
    }

    #[test]
    fn port_device_names_follow_nova() {
        assert!(is_port_device("tap02407769-97"));
        assert!(!is_port_device("tap02407769_97"));
        assert!(!is_port_device("eth2"));
        assert!(!is_port_device("tapxyz"));
    }
}
