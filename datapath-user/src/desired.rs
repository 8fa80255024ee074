//! Desired state: what the kernel maps must hold, derived as plain data from
//! the config, the bindings and the devices present in the agent's namespace.
//!
//! `derive` is pure; node-local numbering (network indices, stats slots) lives
//! in `Allocations`, which the agent keeps across reconciliations and recovers
//! from the kernel maps after a restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use datapath_common::{
    ADDR_KEY_FIXED_BITS, AddrKeyV4, AddrKeyV6, ArpEntry, ArpKey, FDB_F_LOCAL, FDB_F_REMOTE, FdbEntry, FdbKey,
    FloodSet, MAX_FLOOD_PORTS, MAX_FLOOD_VTEPS, MAX_NETWORKS, MAX_PORTS, MacKey, NET_TYPE_FLAT,
    NET_TYPE_VLAN, NET_TYPE_VXLAN, NetInfo, PORT_F_ADMIN_UP, PORT_F_ANTI_SPOOF, PORT_F_BOUND,
    PORT_KIND_NETWORK, PORT_KIND_TUNNEL, PORT_KIND_UPLINK, PORT_KIND_VM, PortInfo, SEGMENT_UNTAGGED,
    SegmentKey, VtepSet, names,
};

use crate::{
    bindings::{Bindings, Network, NetworkType, Port},
    config::Config,
    netlink::Devices,
    tunnel::TUNNEL_DEVICE,
};

pub use crate::synced::MapState;

/// What identifies a network on the wire of this node; stable across restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct WireId {
    pub net_type: u32,
    pub segmentation_id: u32,
    pub uplink_ifindex: u32,
}

/// Node-local numbering: network indices (the "local VLAN") and stats slots.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocations {
    net_index: BTreeMap<WireId, u32>,
    slots: BTreeMap<u32, u32>,
    free_nets: Pool,
    free_slots: Pool,
}

impl Default for Allocations {
    fn default() -> Self {
        Self {
            net_index: BTreeMap::new(),
            slots: BTreeMap::new(),
            // Index 0 means "no network"; slot 0 counts frames on devices the agent does not know.
            free_nets: Pool::new(1..MAX_NETWORKS),
            free_slots: Pool::new(1..MAX_PORTS),
        }
    }
}

/// The free numbers of a range; the lowest is handed out first, so numbering
/// stays dense and a freed number is the next one reused.
#[derive(Debug, Clone, PartialEq)]
struct Pool(BTreeSet<u32>);

impl Pool {
    fn new(range: std::ops::Range<u32>) -> Self {
        Self(range.collect())
    }

    fn take(&mut self) -> Option<u32> {
        self.0.pop_first()
    }

    /// Returns `keep`; a number that is not kept goes back to the pool.
    fn keep_or_free(&mut self, keep: bool, n: u32) -> bool {
        if !keep {
            self.0.insert(n);
        }
        keep
    }
}

impl Allocations {
    /// Recovers the numbering a previous agent left in the kernel maps.
    pub fn recover(current: &MapState) -> Self {
        let mut a = Self::default();
        for (idx, n) in &current.networks {
            a.net_index.insert(wire_id_of(n), *idx);
            a.free_nets.0.remove(idx);
        }
        for (ifindex, p) in &current.ports {
            a.slots.insert(*ifindex, p.stats_slot);
            a.free_slots.0.remove(&p.stats_slot);
        }
        a
    }

    fn net_index(&mut self, id: WireId) -> Option<u32> {
        if let Some(idx) = self.net_index.get(&id) {
            return Some(*idx);
        }
        let idx = self.free_nets.take()?;
        self.net_index.insert(id, idx);
        Some(idx)
    }

    fn slot(&mut self, ifindex: u32) -> Option<u32> {
        if let Some(slot) = self.slots.get(&ifindex) {
            return Some(*slot);
        }
        let slot = self.free_slots.take()?;
        self.slots.insert(ifindex, slot);
        Some(slot)
    }

    /// Forgets numbers no longer in use, so they can be reused.
    fn retain(&mut self, nets: &BTreeSet<WireId>, ports: &BTreeSet<u32>) {
        let free = &mut self.free_nets;
        self.net_index.retain(|id, idx| free.keep_or_free(nets.contains(id), *idx));
        let free = &mut self.free_slots;
        self.slots.retain(|ifindex, slot| free.keep_or_free(ports.contains(ifindex), *slot));
    }

    /// Stats slot of a device, if it has one.
    pub fn slot_of(&self, ifindex: u32) -> Option<u32> {
        self.slots.get(&ifindex).copied()
    }
}

fn wire_id_of(n: &NetInfo) -> WireId {
    WireId { net_type: n.net_type, segmentation_id: n.segmentation_id, uplink_ifindex: n.uplink_ifindex }
}

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
    /// "vm", "network", "uplink" or "unbound".
    pub kind: &'static str,
    pub state: PortState,
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
    pub program: &'static str,
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

/// The IPv6 link-local address (EUI-64) of a MAC, which Neutron always allows.
pub fn link_local_of(mac: &[u8; 6]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    a
}

fn mask<const N: usize>(mut addr: [u8; N], prefix: u8) -> [u8; N] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = (prefix as usize).saturating_sub(i * 8).min(8);
        *byte &= (0xffu16 << (8 - bits)) as u8;
    }
    addr
}

struct NetPlan<'a> {
    net: &'a Network,
    index: u32,
    info: NetInfo,
    members: Vec<u32>,
    local_ports: usize,
}

/// Derives the desired maps, the port/network reports and the attachments.
pub fn derive(cfg: &Config, bindings: &Bindings, devices: &Devices, alloc: &mut Allocations) -> Derived {
    let mut out = Derived::default();
    let local: Vec<&Port> = bindings.ports_on_host(&cfg.host).collect();

    // Networks with at least one port here get a node-local index, as the OVS agent
    // gives a local VLAN only to networks with ports on the node.
    let used: BTreeSet<&str> = local.iter().map(|p| p.network_id.as_str()).collect();
    let mut plans: BTreeMap<&str, NetPlan> = BTreeMap::new();
    let mut net_errors: BTreeMap<&str, String> = BTreeMap::new();
    let mut taken: BTreeMap<(String, u32), &str> = BTreeMap::new();
    for net in bindings.networks.iter().filter(|n| used.contains(n.id.as_str())) {
        match plan_network(cfg, net, devices, &mut taken, alloc) {
            Ok((index, info)) => {
                plans.insert(&net.id, NetPlan { net, index, info, members: Vec::new(), local_ports: 0 });
            }
            Err(e) => {
                net_errors.insert(&net.id, e);
            }
        }
    }

    // Uplinks (every mapped interface that exists) and the tunnel device.
    let mut wires: Vec<(&str, u8, &'static str, &'static str)> = cfg
        .physical_interface_mappings
        .iter()
        .map(|m| (m.interface.as_str(), PORT_KIND_UPLINK, names::PROG_UPLINK, "uplink"))
        .collect();
    if cfg.tunnel_ip().is_some() {
        wires.push((TUNNEL_DEVICE, PORT_KIND_TUNNEL, names::PROG_TUNNEL, "tunnel"));
    }
    for (device, kind, program, label) in wires {
        let Some(&ifindex) = devices.get(device) else { continue };
        let mut report = PortReport {
            id: String::new(),
            device: device.to_string(),
            ifindex: Some(ifindex),
            network_id: String::new(),
            net_index: None,
            kind: label,
            state: PortState::Up,
        };
        match alloc.slot(ifindex) {
            Some(slot) => {
                let info = PortInfo {
                    net_index: 0,
                    flags: PORT_F_BOUND | PORT_F_ADMIN_UP,
                    stats_slot: slot,
                    generation: 0,
                    mac: [0; 6],
                    kind,
                    _pad: 0,
                };
                out.state.ports.insert(ifindex, info);
                out.attach.insert(ifindex, Attachment { device: device.to_string(), program });
            }
            None => report.state = PortState::Error(format!("no free stats slot (max {MAX_PORTS} ports)")),
        }
        out.ports.push(report);
    }

    let mut bound_devices = BTreeSet::new();
    for port in &local {
        let device = port.device_name();
        bound_devices.insert(device.clone());
        let ifindex = devices.get(&device).copied();
        let mut report = PortReport {
            id: port.id.clone(),
            device: device.clone(),
            ifindex,
            network_id: port.network_id.clone(),
            net_index: None,
            kind: if port.is_network_owned() { "network" } else { "vm" },
            state: PortState::Up,
        };
        let plan = match plans.get_mut(port.network_id.as_str()) {
            Some(plan) => plan,
            None => {
                let why = net_errors
                    .get(port.network_id.as_str())
                    .cloned()
                    .unwrap_or_else(|| format!("network {} is not in the bindings", port.network_id));
                report.state = PortState::Error(format!("network refused: {why}"));
                out.ports.push(report);
                continue;
            }
        };
        report.net_index = Some(plan.index);
        let Some(ifindex) = ifindex else {
            report.state = PortState::NoDevice;
            out.ports.push(report);
            continue;
        };
        let admin_up = port.admin_state_up && plan.net.admin_state_up;
        if admin_up && plan.members.len() >= MAX_FLOOD_PORTS {
            report.state =
                PortState::Error(format!("network has more than {MAX_FLOOD_PORTS} local ports on this node"));
            out.ports.push(report);
            continue;
        }
        let Some(slot) = alloc.slot(ifindex) else {
            report.state = PortState::Error(format!("no free stats slot (max {MAX_PORTS} ports)"));
            out.ports.push(report);
            continue;
        };
        let anti_spoof = !port.anti_spoof_exempt();
        let mut flags = PORT_F_BOUND;
        if admin_up {
            flags |= PORT_F_ADMIN_UP;
        }
        if anti_spoof {
            flags |= PORT_F_ANTI_SPOOF;
        }
        out.state.ports.insert(
            ifindex,
            PortInfo {
                net_index: plan.index,
                flags,
                stats_slot: slot,
                generation: 0,
                mac: port.mac,
                kind: if port.is_network_owned() { PORT_KIND_NETWORK } else { PORT_KIND_VM },
                _pad: 0,
            },
        );
        out.attach.insert(ifindex, Attachment { device: device.clone(), program: names::PROG_VM_PORT });
        plan.local_ports += 1;
        if admin_up {
            plan.members.push(ifindex);
            out.state.fdb.insert(
                FdbKey { net_index: plan.index, mac: port.mac, _pad: [0; 2] },
                FdbEntry { ifindex, flags: FDB_F_LOCAL, vtep_ipv4: 0, generation: 0 },
            );
        } else {
            report.state = PortState::AdminDown;
        }
        if anti_spoof {
            add_allowed(&mut out.state, ifindex, port);
        }
        out.ports.push(report);
    }

    // Taps nobody bound to this host: attached so that their frames are dropped and counted.
    for (name, &ifindex) in devices {
        if !is_port_device(name) || bound_devices.contains(name) {
            continue;
        }
        let mut report = PortReport {
            id: String::new(),
            device: name.clone(),
            ifindex: Some(ifindex),
            network_id: String::new(),
            net_index: None,
            kind: "unbound",
            state: PortState::Unbound,
        };
        match alloc.slot(ifindex) {
            Some(slot) => {
                out.state.ports.insert(
                    ifindex,
                    PortInfo {
                        net_index: 0,
                        flags: 0,
                        stats_slot: slot,
                        generation: 0,
                        mac: [0; 6],
                        kind: PORT_KIND_VM,
                        _pad: 0,
                    },
                );
                out.attach.insert(ifindex, Attachment { device: name.clone(), program: names::PROG_VM_PORT });
            }
            None => report.state = PortState::Error(format!("no free stats slot (max {MAX_PORTS} ports)")),
        }
        out.ports.push(report);
    }

    // Only nodes with a tunnel network here pay for the cloud-wide index.
    let tunnels = plans.values().any(|p| p.info.net_type == NET_TYPE_VXLAN).then(|| Tunnels::index(bindings));
    let mut live_nets = BTreeSet::new();
    for net in bindings.networks.iter().filter(|n| used.contains(n.id.as_str())) {
        let mut report = NetworkReport {
            id: net.id.clone(),
            name: net.name.clone(),
            net_type: format!("{:?}", net.network_type).to_lowercase(),
            segmentation_id: net.segmentation_id,
            physical_network: net.physical_network.clone(),
            net_index: None,
            local_ports: 0,
            error: String::new(),
        };
        if let Some(plan) = plans.get_mut(net.id.as_str()) {
            live_nets.insert(wire_id_of(&plan.info));
            report.net_index = Some(plan.index);
            report.local_ports = plan.local_ports;
            out.state.networks.insert(plan.index, plan.info);
            if plan.info.uplink_ifindex != 0 {
                let key =
                    SegmentKey { ifindex: plan.info.uplink_ifindex, segment: plan.info.segmentation_id };
                out.state.segments.insert(key, plan.index);
            }
            if plan.info.net_type == NET_TYPE_VXLAN
                && let Some(t) = &tunnels
                && let Some(warning) = add_tunnel_network(&mut out.state, cfg, t, net, plan)
            {
                report.error = warning;
            }
            if !plan.members.is_empty() {
                plan.members.sort_unstable();
                let mut set = FloodSet {
                    count: plan.members.len() as u32,
                    generation: 0,
                    ifindex: [0; MAX_FLOOD_PORTS],
                };
                set.ifindex[..plan.members.len()].copy_from_slice(&plan.members);
                out.state.flood_sets.insert(plan.index, set);
            }
        } else if let Some(e) = net_errors.get(net.id.as_str()) {
            report.error = e.clone();
        }
        out.networks.push(report);
    }
    let live_ports: BTreeSet<u32> = out.state.ports.keys().copied().collect();
    alloc.retain(&live_nets, &live_ports);
    out
}

fn plan_network<'a>(
    cfg: &Config,
    net: &'a Network,
    devices: &Devices,
    taken: &mut BTreeMap<(String, u32), &'a str>,
    alloc: &mut Allocations,
) -> Result<(u32, NetInfo), String> {
    let (net_type, segment) = match net.network_type {
        NetworkType::Flat => (NET_TYPE_FLAT, SEGMENT_UNTAGGED),
        NetworkType::Vlan => (NET_TYPE_VLAN, net.segmentation_id.unwrap_or(0)),
        NetworkType::Vxlan => (NET_TYPE_VXLAN, net.segmentation_id.unwrap_or(0)),
    };
    let (wire, iface) = if net_type == NET_TYPE_VXLAN {
        if cfg.tunnel_ip().is_none() {
            return Err(
                "vxlan networks need local_ip and tunnel_types = [\"vxlan\"] in the agent config".into()
            );
        }
        ("vxlan".to_string(), TUNNEL_DEVICE)
    } else {
        let physnet = net.physical_network.as_deref().unwrap_or_default();
        let iface = cfg.interface_for(physnet).ok_or_else(|| {
            format!("physical network {physnet:?} is not in physical_interface_mappings of this host")
        })?;
        (physnet.to_string(), iface)
    };
    if let Some(other) = taken.insert((wire.clone(), segment), &net.id) {
        taken.insert((wire.clone(), segment), other);
        return Err(match net_type {
            NET_TYPE_FLAT => format!("physical network {wire:?} already carries flat network {other}"),
            NET_TYPE_VXLAN => format!("VNI {segment} already belongs to network {other}"),
            _ => format!("VLAN {segment} on physical network {wire:?} already belongs to network {other}"),
        });
    }
    let uplink_ifindex = devices.get(iface).copied().unwrap_or(0);
    let info =
        NetInfo { uplink_ifindex, segmentation_id: segment, net_type, mtu: net.mtu, generation: 0, _pad: 0 };
    let index = alloc
        .net_index(wire_id_of(&info))
        .ok_or_else(|| format!("no free network index (max {})", MAX_NETWORKS - 1))?;
    Ok((index, info))
}

/// The bindings indexed for l2population, built once per derivation so that
/// each tunnel network costs its own ports, not the whole cloud's.
struct Tunnels<'a> {
    ports_by_net: BTreeMap<&'a str, Vec<&'a Port>>,
    /// The first agent entry of each host wins, as a lookup in file order would.
    vtep_by_host: BTreeMap<&'a str, Ipv4Addr>,
}

impl<'a> Tunnels<'a> {
    fn index(b: &'a Bindings) -> Self {
        let mut ports_by_net: BTreeMap<&str, Vec<&Port>> = BTreeMap::new();
        for port in &b.ports {
            ports_by_net.entry(port.network_id.as_str()).or_default().push(port);
        }
        let mut vtep_by_host = BTreeMap::new();
        for agent in &b.agents {
            if let Some(ip) = agent.tunneling_ip {
                vtep_by_host.entry(agent.host.as_str()).or_insert(ip);
            }
        }
        Self { ports_by_net, vtep_by_host }
    }
}

/// l2population for a tunnel network: every port the bindings place on another
/// host becomes a static FDB entry behind that host's VTEP, each such VTEP a
/// flood target, and every port's IPv4 address an ARP responder entry.
fn add_tunnel_network(
    state: &mut MapState,
    cfg: &Config,
    t: &Tunnels,
    net: &Network,
    plan: &NetPlan,
) -> Option<String> {
    let own = cfg.tunnel_ip();
    let mut vteps = BTreeSet::new();
    for port in t.ports_by_net.get(net.id.as_str()).into_iter().flatten() {
        for ip in &port.fixed_ips {
            if let IpAddr::V4(v4) = ip {
                let key = ArpKey { net_index: plan.index, ipv4: v4.octets() };
                state.arp.entry(key).or_insert(ArpEntry { mac: port.mac, _pad: [0; 2] });
            }
        }
        if port.host == cfg.host || port.host.is_empty() {
            continue;
        }
        let Some(&vtep) = t.vtep_by_host.get(port.host.as_str()).filter(|v| Some(**v) != own) else {
            continue;
        };
        vteps.insert(u32::from(vtep));
        if plan.info.uplink_ifindex != 0 {
            state.fdb.insert(
                FdbKey { net_index: plan.index, mac: port.mac, _pad: [0; 2] },
                FdbEntry {
                    ifindex: plan.info.uplink_ifindex,
                    flags: FDB_F_REMOTE,
                    vtep_ipv4: u32::from(vtep),
                    generation: 0,
                },
            );
        }
    }
    if vteps.is_empty() {
        return None;
    }
    let mut set = VtepSet { count: 0, _pad: 0, vtep_ipv4: [0; MAX_FLOOD_VTEPS] };
    for (slot, v) in set.vtep_ipv4.iter_mut().zip(&vteps) {
        *slot = *v;
        set.count += 1;
    }
    state.flood_vteps.insert(plan.index, set);
    (vteps.len() > MAX_FLOOD_VTEPS)
        .then(|| format!("{} remote VTEPs; floods reach only the first {MAX_FLOOD_VTEPS}", vteps.len()))
}

fn add_allowed(state: &mut MapState, ifindex: u32, port: &Port) {
    let mut macs = vec![port.mac];
    let mut pairs: Vec<([u8; 6], IpAddr, u8)> = Vec::new();
    for ip in &port.fixed_ips {
        pairs.push((port.mac, *ip, if ip.is_ipv4() { 32 } else { 128 }));
    }
    for pair in &port.allowed_address_pairs {
        if !macs.contains(&pair.mac) {
            macs.push(pair.mac);
        }
        pairs.push((pair.mac, pair.ip, pair.prefix_len));
    }
    for mac in &macs {
        state.allowed_macs.insert(MacKey { ifindex, mac: *mac, _pad: [0; 2] }, 1);
        pairs.push((*mac, IpAddr::from(link_local_of(mac)), 128));
    }
    for (mac, ip, prefix) in pairs {
        match ip {
            IpAddr::V4(v4) => {
                let data = AddrKeyV4 { ifindex, mac, _pad: [0; 2], addr: mask(v4.octets(), prefix) };
                state.allowed_v4.insert((ADDR_KEY_FIXED_BITS + prefix as u32, data), 1);
            }
            IpAddr::V6(v6) => {
                let data = AddrKeyV6 { ifindex, mac, _pad: [0; 2], addr: mask(v6.octets(), prefix) };
                state.allowed_v6.insert((ADDR_KEY_FIXED_BITS + prefix as u32, data), 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use datapath_common::{FDB_F_LOCAL, NET_TYPE_VLAN, names};

    use super::*;

    const CONFIG: &str = r#"
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
        a.retain(&BTreeSet::new(), &[10, 12].into());
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
    fn port_device_names_follow_nova() {
        assert!(is_port_device("tap02407769-97"));
        assert!(!is_port_device("tap02407769_97"));
        assert!(!is_port_device("eth2"));
        assert!(!is_port_device("tapxyz"));
    }

    #[test]
    fn masks_clear_host_bits() {
        assert_eq!(mask([10, 1, 2, 3], 16), [10, 1, 0, 0]);
        assert_eq!(mask([10, 1, 2, 255], 25), [10, 1, 2, 128]);
        assert_eq!(mask([1, 2, 3, 4], 32), [1, 2, 3, 4]);
        assert_eq!(mask([1, 2, 3, 4], 0), [0, 0, 0, 0]);
    }
}
