//! The binding model: networks, ports and agents as the agent uses them,
//! validated.

use std::net::{IpAddr, Ipv4Addr};

use super::{
    QosPolicy,
    addr::device_name,
    secgroups::{AddressGroup, SecurityGroup},
};

/// A Neutron provider network type this datapath handles.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetworkType {
    /// Untagged on the physical network.
    Flat,
    /// 802.1Q-tagged on the physical network.
    Vlan,
    /// VXLAN-encapsulated between VTEPs.
    Vxlan,
}

/// A Neutron network, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// The network's UUID.
    pub id: String,
    /// The human-readable name ("" when unset).
    pub name: String,
    /// provider:network_type.
    pub network_type: NetworkType,
    /// provider:physical_network (always set for flat and vlan).
    pub physical_network: Option<String>,
    /// provider:segmentation_id: the VLAN id or VNI (always set for vlan and vxlan, never for flat).
    pub segmentation_id: Option<u32>,
    /// The network's MTU.
    pub mtu: u32,
    /// Whether the network is administratively up.
    pub admin_state_up: bool,
    /// The network's QoS policy: it applies to its ports that have none of
    /// their own (but not to `network:*` owners, as in Neutron).
    pub qos_policy_id: Option<String>,
}

/// A Neutron port, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Port {
    /// The port's UUID.
    pub id: String,
    /// The network the port is on (always one of the accepted networks).
    pub network_id: String,
    /// The port's MAC (unicast, non-zero).
    pub mac: [u8; 6],
    /// The addresses of fixed_ips, in order.
    pub fixed_ips: Vec<IpAddr>,
    /// device_owner, e.g. "compute:nova" or "network:dhcp" ("" when unset).
    pub device_owner: String,
    /// binding:host_id ("" when unbound).
    pub host: String,
    /// Whether the port is administratively up.
    pub admin_state_up: bool,
    /// Whether anti-spoofing applies (Neutron's port_security_enabled).
    pub port_security_enabled: bool,
    /// Extra (address, MAC) pairs the port may send from.
    pub allowed_address_pairs: Vec<AddressPair>,
    /// The ids of the security groups the port is in; None when the source
    /// says nothing about groups (no `security_groups` key): the port is not
    /// filtered. Neutron always sends the key, an empty list denies all.
    pub security_groups: Option<Vec<String>>,
    /// Set when the port is a subport of a trunk: it has no device of its
    /// own and lives on its parent's tap, under a VLAN id.
    pub subport: Option<SubportOf>,
    /// Set when the port is a trunk's parent: the trunk's id.
    pub trunk: Option<String>,
    /// The port's own QoS policy (it wins over its network's).
    pub qos_policy_id: Option<String>,
}

/// Where a subport lives: on its parent's tap, under the VM's VLAN id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubportOf {
    /// The trunk's id.
    pub trunk_id: String,
    /// The parent port's id (its tap is the subport's device).
    pub parent_id: String,
    /// The VLAN id the VM tags the subport's frames with (1..=4094); never on the wire.
    pub vid: u16,
}

/// A trunk (Neutron's `GET /v2.0/trunks`), validated: its parent and subports are accepted ports.
#[derive(Debug, Clone, PartialEq)]
pub struct Trunk {
    /// The trunk's UUID.
    pub id: String,
    /// The parent port's id.
    pub port_id: String,
    /// The accepted subports: (port id, VLAN id), in document order.
    pub sub_ports: Vec<(String, u16)>,
    /// Neutron locks a trunk that is down against changes; traffic is not affected.
    pub admin_state_up: bool,
}

/// One allowed address pair of a port.
#[derive(Debug, Clone, PartialEq)]
pub struct AddressPair {
    /// The address or network, with the bits beyond `prefix_len` cleared.
    pub ip: IpAddr,
    /// The prefix length (32 or 128 for a single address).
    pub prefix_len: u8,
    /// The MAC allowed with it (the port's own when the pair gives none).
    pub mac: [u8; 6],
}

/// A Neutron agent, as other hosts are known by (for tunnel endpoints later).
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    /// The host the agent runs on.
    pub host: String,
    /// agent_type, e.g. "Open vSwitch agent" ("" when unset).
    pub agent_type: String,
    /// configurations.tunneling_ip, if any.
    pub tunneling_ip: Option<Ipv4Addr>,
}

/// An entry that was refused, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Which entry: "network <id>", "port <id>", "agent <host>", or "networks[3]" when it has no id.
    pub what: String,
    /// Why it was refused, naming the field and the bad value.
    pub reason: String,
}

/// The accepted entries of a binding source, in file order, and the refused ones.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bindings {
    /// Accepted networks.
    pub networks: Vec<Network>,
    /// Accepted ports (each on an accepted network).
    pub ports: Vec<Port>,
    /// Accepted agents.
    pub agents: Vec<Agent>,
    /// Security groups with their accepted rules.
    pub security_groups: Vec<SecurityGroup>,
    /// Address groups.
    pub address_groups: Vec<AddressGroup>,
    /// Accepted trunks (their ports carry `trunk` and `subport`).
    pub trunks: Vec<Trunk>,
    /// QoS policies with their accepted rules.
    pub qos_policies: Vec<QosPolicy>,
    /// Entries that were refused.
    pub refused: Vec<Refusal>,
}

impl Bindings {
    /// The accepted network with this id.
    pub fn network(&self, id: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.id == id)
    }

    /// The accepted ports bound to `host` (binding:host_id), in file order.
    pub fn ports_on_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Port> + 'a {
        self.ports.iter().filter(move |p| p.host == host)
    }
}

impl Port {
    /// The device name Nova/Neutron give the port: "tap" + the first 11
    /// characters of the id. A subport has no device: its name is the
    /// parent's tap and the VLAN id, as a VLAN subinterface's would be
    /// ("tap0123abcd-ef.101"), which no real device name matches.
    pub fn device_name(&self) -> String {
        match &self.subport {
            Some(s) => subport_device_name(&s.parent_id, s.vid),
            None => device_name(&self.id),
        }
    }

    /// Whether Neutron exempts the port from anti-spoofing: port_security_enabled false, or a "network:*" owner.
    pub fn anti_spoof_exempt(&self) -> bool {
        // Neutron's firewall drivers treat network-owned ports (DHCP, routers) as trusted.
        !self.port_security_enabled || self.is_network_owned()
    }

    /// Whether the owner is a network service ("network:*", e.g. network:dhcp).
    pub fn is_network_owned(&self) -> bool {
        self.device_owner.starts_with("network:")
    }
}

/// The name of a subport's (virtual) device: its parent's tap, a dot and the VLAN id.
pub fn subport_device_name(parent_id: &str, vid: u16) -> String {
    format!("{}.{vid}", device_name(parent_id))
}
