//! Incremental derivation: the desired state kept in fragments, one per
//! network with ports on this node and one per device of no network (uplinks,
//! the tunnel device, unbound taps). A change re-derives the fragments it
//! touches with the same passes as a full derivation, and patches the union,
//! so one port's change costs that port's network, not the cloud.
//!
//! Networks that may contend for one segment (same type and segmentation id)
//! are always derived together, so that the first in the sources' order wins
//! exactly as in a full derivation. A full derivation is the same update with
//! every fragment touched; the agent runs one on every periodic resync, which
//! also bounds the life of any divergence.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use datapath_common::{NET_TYPE_FLAT, NET_TYPE_VLAN, NET_TYPE_VXLAN};

use super::{
    Allocations, Attachment, Derived, MapState, PortReport, is_port_device, networks, ports,
    security::SecurityLayer, wire_id_of,
};
use crate::{
    bindings::{Catalog, Network, NetworkType, QosPolicies},
    config::Config,
    netlink::Devices,
    synced::Diff,
};

/// What an update must look at.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everything: start-up and the periodic resync.
    Full,
    /// What the source and the link events say changed since the last update.
    Changed {
        /// Networks whose catalog entry changed, came or went.
        networks: &'a BTreeSet<String>,
        /// Devices that came, went or were renumbered (old and new names of a rename).
        devices: &'a BTreeSet<String>,
    },
}

/// What one update changed.
#[derive(Debug, Default)]
pub struct Change {
    /// What the kernel maps need, against the union before the update.
    pub diff: Diff,
    /// Devices whose report changed: the new report, or None when it went.
    pub reports: BTreeMap<String, Option<PortReport>>,
    /// Networks re-derived.
    pub networks: usize,
    /// Whether a device's program changed (the attacher has work).
    pub attach_changed: bool,
    /// Ports whose security-group policy changed or went: the connections
    /// their old policy admitted need a re-check.
    pub policy_changed: BTreeSet<u32>,
}

/// The desired state, kept up to date fragment by fragment.
#[derive(Debug)]
pub struct Engine {
    alloc: Allocations,
    /// Per network with ports bound here (programmed or refused).
    shards: BTreeMap<String, Derived>,
    /// Per device that belongs to no network.
    node: BTreeMap<String, Derived>,
    /// The union of every fragment.
    state: MapState,
    attach: BTreeMap<u32, Attachment>,
    /// The device of every port bound here -> its network.
    device_net: BTreeMap<String, String>,
    /// Subport id -> the subport's device name ("tap...-xx.101"), for subports numbered here.
    subport_devices: BTreeMap<u32, String>,
    /// (network type, segment) -> the shards that claim it.
    claims: BTreeMap<(u32, u32), BTreeSet<String>>,
    /// Each shard's claim and place in the source's order.
    shard_meta: BTreeMap<String, ((u32, u32), usize)>,
    /// The ports' security-group policies.
    security: SecurityLayer,
    /// The QoS policies the shards were derived with.
    qos: Arc<QosPolicies>,
}

/// The segment a network may contend for with others of this node.
fn claim_of(n: &Network) -> (u32, u32) {
    match n.network_type {
        NetworkType::Flat => (NET_TYPE_FLAT, 0),
        NetworkType::Vlan => (NET_TYPE_VLAN, n.segmentation_id.unwrap_or(0)),
        NetworkType::Vxlan => (NET_TYPE_VXLAN, n.segmentation_id.unwrap_or(0)),
    }
}

impl Engine {
    /// An engine that has derived nothing yet, numbering with `alloc`.
    pub fn new(alloc: Allocations) -> Self {
        Self::with_security(alloc, SecurityLayer::new(&MapState::default()))
    }

    /// An engine taking over from the kernel's `current` maps: their numbering,
    /// and rule-table ids above theirs.
    pub fn recover(current: &MapState) -> Self {
        Self::with_security(Allocations::recover(current), SecurityLayer::new(current))
    }

    fn with_security(alloc: Allocations, security: SecurityLayer) -> Self {
        Self {
            alloc,
            shards: BTreeMap::new(),
            node: BTreeMap::new(),
            state: MapState::default(),
            attach: BTreeMap::new(),
            device_net: BTreeMap::new(),
            subport_devices: BTreeMap::new(),
            claims: BTreeMap::new(),
            shard_meta: BTreeMap::new(),
            security,
            qos: Arc::default(),
        }
    }

    /// The security-group layer (each port's policy).
    pub fn security(&self) -> &SecurityLayer {
        &self.security
    }

    /// The desired maps.
    pub fn state(&self) -> &MapState {
        &self.state
    }

    /// Which program goes on which device.
    pub fn attach(&self) -> &BTreeMap<u32, Attachment> {
        &self.attach
    }

    /// The numbering in use.
    pub fn alloc(&self) -> &Allocations {
        &self.alloc
    }

    /// Every port report, in no particular order.
    pub fn port_reports(&self) -> impl Iterator<Item = &PortReport> {
        self.node.values().chain(self.shards.values()).flat_map(|f| f.ports.iter())
    }

    /// Gives the numbering back.
    pub fn into_alloc(self) -> Allocations {
        self.alloc
    }

    /// Everything as one derivation, for reports: the wires, the bound ports
    /// network by network in the sources' order, then the unbound taps.
    pub fn derived(&self, cfg: &Config) -> Derived {
        let mut out =
            Derived { state: self.state.clone(), attach: self.attach.clone(), ..Derived::default() };
        let wires: Vec<String> = ports::wire_devices(cfg).into_iter().map(|w| w.device).collect();
        for w in &wires {
            if let Some(f) = self.node.get(w) {
                out.ports.extend(f.ports.iter().cloned());
            }
        }
        let mut order: Vec<(usize, &String)> =
            self.shards.keys().map(|id| (self.shard_meta.get(id).map_or(usize::MAX, |m| m.1), id)).collect();
        order.sort();
        for (_, id) in order {
            let f = &self.shards[id];
            out.ports.extend(f.ports.iter().cloned());
            out.networks.extend(f.networks.iter().cloned());
        }
        for (d, f) in &self.node {
            if !wires.contains(d) {
                out.ports.extend(f.ports.iter().cloned());
            }
        }
        out
    }

    /// Brings the desired state to `catalog` and `devices`: everything, or
    /// only the fragments of what `scope` names as changed.
    pub fn update(&mut self, cfg: &Config, catalog: &Catalog, devices: &Devices, scope: Scope) -> Change {
        let full = matches!(scope, Scope::Full);
        let no_devices = BTreeSet::new();
        let (mut nets, moved): (BTreeSet<String>, &BTreeSet<String>) = match scope {
            Scope::Full => {
                let here = catalog.networks.iter().filter(|(_, n)| n.has_port_on(&cfg.host));
                (here.map(|(id, _)| id.clone()).chain(self.shards.keys().cloned()).collect(), &no_devices)
            }
            Scope::Changed { networks, devices } => {
                let relevant = networks.iter().filter(|id| {
                    self.shards.contains_key(*id)
                        || catalog.networks.get(*id).is_some_and(|n| n.has_port_on(&cfg.host))
                });
                (relevant.cloned().collect(), devices)
            }
        };
        nets.extend(moved.iter().filter_map(|d| self.device_net.get(d)).cloned());
        // A trunk's subports live on its parent's tap ("tap...-xx.101"): they follow it.
        for d in moved {
            let subports = self.device_net.range(format!("{d}.")..format!("{d}/"));
            nets.extend(subports.map(|(_, net)| net.clone()));
        }
        let wires = ports::wire_devices(cfg);
        if wires.iter().any(|w| moved.contains(&w.device)) {
            // An uplink or the tunnel device came, went or was renumbered: every
            // network's entry names it (rare enough not to track which).
            nets.extend(self.shards.keys().cloned());
        }
        if !Arc::ptr_eq(&self.qos, &catalog.qos) {
            // A policy changed (rare): every port of this node may use it.
            if *self.qos != *catalog.qos {
                nets.extend(self.shards.keys().cloned());
            }
            self.qos = catalog.qos.clone();
        }
        self.add_contenders(catalog, &mut nets);

        let sub = catalog.subset(&nets);
        let local: Vec<_> = sub.ports_on_host(&cfg.host).collect();
        let mut out = Derived::default();
        let mut plans = networks::plan(cfg, &sub, &local, devices, &mut self.alloc);
        ports::bound(&mut out, &local, &mut plans, devices, &mut self.alloc, &catalog.qos);
        networks::program(&mut out, cfg, &sub, &mut plans);
        let mut fresh = split(out);

        let mut gone = Derived::default();
        let mut came = Derived::default();
        // Devices whose node fragment may change: the moved ones, and those of every port re-derived.
        let mut node_devices = moved.clone();
        for id in &nets {
            if let Some(old) = self.shards.remove(id) {
                for p in &old.ports {
                    if let Some(i) = p.ifindex.filter(|_| p.kind == "subport") {
                        self.subport_devices.remove(&i);
                    }
                    self.device_net.remove(&p.device);
                    node_devices.insert(p.device.clone());
                }
                if let Some((claim, _)) = self.shard_meta.remove(id) {
                    remove_claim(&mut self.claims, claim, id);
                }
                merge(&mut gone, &old);
            }
            if let Some(new) = fresh.remove(id) {
                for p in &new.ports {
                    if let Some(i) = p.ifindex.filter(|_| p.kind == "subport") {
                        self.subport_devices.insert(i, p.device.clone());
                    }
                    self.device_net.insert(p.device.clone(), id.clone());
                    node_devices.insert(p.device.clone());
                }
                if let Some(entry) = catalog.networks.get(id)
                    && let Some(net) = entry.network()
                {
                    self.claims.entry(claim_of(net)).or_default().insert(id.clone());
                    self.shard_meta.insert(id.clone(), (claim_of(net), entry.position));
                }
                merge(&mut came, &new);
                self.shards.insert(id.clone(), new);
            }
        }
        node_devices.extend(wires.iter().map(|w| w.device.clone()));
        if full {
            node_devices.extend(devices.keys().cloned());
            node_devices.extend(self.node.keys().cloned());
        }
        for d in &node_devices {
            if let Some(old) = self.node.remove(d) {
                merge(&mut gone, &old);
            }
            let mut f = Derived::default();
            if let Some(w) = wires.iter().find(|w| &w.device == d) {
                ports::wire(&mut f, w, devices, &mut self.alloc);
            } else if let Some(&ifindex) = devices.get(d)
                && is_port_device(d)
                && !self.device_net.contains_key(d)
            {
                ports::unbound(&mut f, d, ifindex, &mut self.alloc);
            } else {
                continue;
            }
            merge(&mut came, &f);
            self.node.insert(d.clone(), f);
        }

        // The ports' policies follow the ports: those whose entry after this
        // update asks for security groups.
        let ports = (&gone.state.ports, &came.state.ports);
        let sg = self.security.update(
            &cfg.host,
            catalog,
            (devices, &self.subport_devices),
            ports,
            &self.device_net,
        );
        gone.state.merge(&sg.gone);
        came.state.merge(&sg.came);

        let diff = self.state.patch(&gone.state, &came.state);
        let attach_changed = gone.attach.len() != came.attach.len()
            || gone.attach.iter().any(|(k, v)| came.attach.get(k) != Some(v));
        for ifindex in gone.attach.keys() {
            self.attach.remove(ifindex);
        }
        self.attach.extend(came.attach.iter().map(|(k, v)| (*k, v.clone())));
        if full {
            let live_nets = self.state.networks.values().map(wire_id_of).collect();
            let live_ports = self.state.ports.keys().copied().collect();
            self.alloc.retain(&live_nets, &live_ports);
        } else {
            self.release(&gone.state);
        }
        self.alloc.update_flooding(members(&gone.state), members(&came.state));
        Change {
            diff,
            reports: changed_reports(&gone, &came),
            networks: nets.len(),
            attach_changed,
            policy_changed: sg.ports,
        }
    }

    /// Adds every shard that may contend for a segment with one of `nets`, until none is left out.
    fn add_contenders(&self, catalog: &Catalog, nets: &mut BTreeSet<String>) {
        let mut frontier: Vec<String> = nets.iter().cloned().collect();
        while let Some(id) = frontier.pop() {
            let now = catalog.networks.get(&id).and_then(|n| n.network()).map(claim_of);
            let before = self.shard_meta.get(&id).map(|m| m.0);
            for key in [now, before].into_iter().flatten().collect::<BTreeSet<_>>() {
                for other in self.claims.get(&key).into_iter().flatten() {
                    if nets.insert(other.clone()) {
                        frontier.push(other.clone());
                    }
                }
            }
        }
    }

    /// Frees the numbers of what left the union.
    fn release(&mut self, gone: &MapState) {
        for (id, sub) in &gone.subports {
            if !self.state.subports.contains_key(id) {
                self.alloc.release_subport(sub);
            }
        }
        for ifindex in gone.ports.keys() {
            if !self.state.ports.contains_key(ifindex) {
                self.alloc.release_slot(*ifindex);
            }
        }
        for (idx, info) in &gone.networks {
            if self.state.networks.get(idx).map(wire_id_of) != Some(wire_id_of(info)) {
                self.alloc.release_net(wire_id_of(info));
            }
        }
    }
}

fn remove_claim(claims: &mut BTreeMap<(u32, u32), BTreeSet<String>>, key: (u32, u32), id: &str) {
    if let Some(set) = claims.get_mut(&key) {
        set.remove(id);
        if set.is_empty() {
            claims.remove(&key);
        }
    }
}

/// Devices added, removed or renumbered between two lists.
pub fn moved_devices(old: &Devices, new: &Devices) -> BTreeSet<String> {
    let mut out: BTreeSet<String> =
        new.iter().filter(|(d, i)| old.get(*d) != Some(*i)).map(|(d, _)| d.clone()).collect();
    out.extend(old.keys().filter(|d| !new.contains_key(*d)).cloned());
    out
}

fn members(state: &MapState) -> impl Iterator<Item = u32> + '_ {
    state
        .flood_sets
        .values()
        .flat_map(|s| s.ifindex[..(s.count as usize).min(s.ifindex.len())].iter().copied())
}

fn merge(into: &mut Derived, f: &Derived) {
    into.state.merge(&f.state);
    into.ports.extend(f.ports.iter().cloned());
    into.networks.extend(f.networks.iter().cloned());
    into.attach.extend(f.attach.iter().map(|(k, v)| (*k, v.clone())));
}

fn changed_reports(gone: &Derived, came: &Derived) -> BTreeMap<String, Option<PortReport>> {
    let before: BTreeMap<&str, &PortReport> = gone.ports.iter().map(|p| (p.device.as_str(), p)).collect();
    let after: BTreeMap<&str, &PortReport> = came.ports.iter().map(|p| (p.device.as_str(), p)).collect();
    let mut out = BTreeMap::new();
    for (d, p) in &after {
        if before.get(d) != Some(p) {
            out.insert(d.to_string(), Some((*p).clone()));
        }
    }
    for d in before.keys().filter(|d| !after.contains_key(*d)) {
        out.insert(d.to_string(), None);
    }
    out
}

/// Cuts one derivation of several networks into a fragment per network.
fn split(out: Derived) -> BTreeMap<String, Derived> {
    let by_index: BTreeMap<u32, String> =
        out.networks.iter().filter_map(|n| Some((n.net_index?, n.id.clone()))).collect();
    let port_net: BTreeMap<u32, String> = out
        .state
        .ports
        .iter()
        .filter_map(|(ifindex, p)| Some((*ifindex, by_index.get(&p.net_index)?.clone())))
        .collect();
    let mut shards: BTreeMap<String, Derived> = BTreeMap::new();
    // Every entry a derivation of networks makes belongs to one of them; "" would be a bug,
    // and the invariants check of the union would name it.
    let net = |idx: &u32| by_index.get(idx).cloned().unwrap_or_default();
    let port = |ifindex: &u32| port_net.get(ifindex).cloned().unwrap_or_default();
    let s = out.state;
    macro_rules! place {
        ($field:ident, |$k:ident, $v:ident| $owner:expr) => {
            for ($k, $v) in s.$field {
                let owner = $owner;
                shards.entry(owner).or_default().state.$field.insert($k, $v);
            }
        };
    }
    place!(networks, |k, _v| net(&k));
    place!(segments, |_k, v| net(&v));
    place!(fdb, |k, _v| net(&k.net_index));
    place!(flood_sets, |k, _v| net(&k));
    place!(flood_vteps, |k, _v| net(&k));
    place!(tunnel_peers, |k, _v| net(&k.net_index));
    place!(arp, |k, _v| net(&k.net_index));
    place!(allowed_macs, |k, _v| port(&k.ifindex));
    place!(allowed_v4, |k, _v| port(&k.1.ifindex));
    place!(allowed_v6, |k, _v| port(&k.1.ifindex));
    place!(ports, |_k, v| net(&v.net_index));
    place!(subports, |k, _v| port(&k));
    place!(qos_ports, |k, _v| port(&k));
    place!(trunk_vids, |_k, v| port(&v));
    for (ifindex, a) in out.attach {
        shards.entry(port(&ifindex)).or_default().attach.insert(ifindex, a);
    }
    for p in out.ports {
        shards.entry(p.network_id.clone()).or_default().ports.push(p);
    }
    for n in out.networks {
        shards.entry(n.id.clone()).or_default().networks.push(n);
    }
    shards
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::test_rng::Rng;
    use crate::{
        bindings::{Agent, Bindings, Port},
        desired::{check_invariants, derive, tests::CONFIG},
    };

    const TUNNEL_CONFIG: &str = "local_ip = \"192.0.2.10\"\ntunnel_types = [\"vxlan\"]\n";

    fn network(rng: &mut Rng, i: u64) -> Network {
        // Few segments, so that networks collide and contend.
        let (network_type, physical_network, segmentation_id) = match rng.below(4) {
            0 => (NetworkType::Flat, Some(["default", "other"][rng.below(2) as usize].into()), None),
            1 | 2 => (NetworkType::Vlan, Some("default".into()), Some(100 + rng.below(4) as u32)),
            _ => (NetworkType::Vxlan, None, Some(5000 + rng.below(3) as u32)),
        };
        Network {
            id: format!("net{i}"),
            name: String::new(),
            network_type,
            physical_network,
            segmentation_id,
            mtu: 1500,
            admin_state_up: rng.below(8) != 0,
            qos_policy_id: [None, None, Some("limit".into())][rng.below(3) as usize].clone(),
        }
    }

    fn port(rng: &mut Rng, i: u64, nets: &[Network]) -> Port {
        let net = &nets[rng.below(nets.len() as u64) as usize];
        Port {
            id: format!("{:08x}-{i:04}", 0xa000_0000u64 + i),
            network_id: net.id.clone(),
            mac: [0xfa, 0x16, 0x3e, 0, (i >> 8) as u8, i as u8],
            fixed_ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, (i >> 8) as u8, i as u8))],
            device_owner: if rng.below(6) == 0 { "network:dhcp".into() } else { "compute:nova".into() },
            host: ["node0", "node0", "node1", "node2", ""][rng.below(5) as usize].into(),
            admin_state_up: rng.below(6) != 0,
            port_security_enabled: rng.below(5) != 0,
            allowed_address_pairs: Vec::new(),
            security_groups: None,
            subport: None,
            trunk: None,
            qos_policy_id: [None, None, Some("mark".into())][rng.below(3) as usize].clone(),
        }
    }

    /// A policy limiting to `kbps` and one marking: what random ports and networks name.
    fn qos_policies(kbps: u64) -> Vec<crate::bindings::QosPolicy> {
        use crate::bindings::{QosDirection, QosPolicy, QosRule};
        let limit =
            QosRule::BandwidthLimit { direction: QosDirection::Egress, max_kbps: kbps, max_burst_kbps: 0 };
        vec![
            QosPolicy { id: "limit".into(), name: String::new(), rules: vec![limit] },
            QosPolicy {
                id: "mark".into(),
                name: String::new(),
                rules: vec![QosRule::DscpMarking { dscp_mark: 10 }],
            },
        ]
    }

    /// One random change to the cloud or the node's devices.
    fn mutate(rng: &mut Rng, b: &mut Bindings, devices: &mut Devices, next: &mut u64) {
        *next += 1;
        match rng.below(10) {
            0 | 1 => {
                let p = port(rng, *next, &b.networks);
                if rng.below(2) == 0 {
                    devices.insert(p.device_name(), 100 + *next as u32);
                }
                b.ports.push(p);
            }
            2 if !b.ports.is_empty() => {
                b.ports.remove(rng.below(b.ports.len() as u64) as usize);
            }
            3 if !b.ports.is_empty() => {
                let i = rng.below(b.ports.len() as u64) as usize;
                b.ports[i].admin_state_up ^= true;
            }
            4 if !b.ports.is_empty() => {
                // A tap comes or goes, possibly with a new ifindex.
                let d = b.ports[rng.below(b.ports.len() as u64) as usize].device_name();
                if devices.remove(&d).is_none() {
                    devices.insert(d, 100 + *next as u32);
                }
            }
            5 => {
                let i = rng.below(b.networks.len() as u64) as usize;
                let id = b.networks[i].id.clone();
                b.networks[i] = Network { id, ..network(rng, *next) };
            }
            6 => {
                // A tap nobody bound.
                devices.insert(format!("tap{:08x}-ff", *next), 100 + *next as u32);
            }
            7 => {
                let host = ["node1", "node2"][rng.below(2) as usize].to_string();
                b.agents.retain(|a| a.host != host);
                b.agents.push(Agent {
                    host,
                    agent_type: String::new(),
                    tunneling_ip: Some(Ipv4Addr::new(192, 0, 2, 11 + rng.below(3) as u8)),
                });
            }
            8 => {
                // A QoS policy changes: its ports' limits with it.
                let rate = 1000 * (1 + rng.below(4));
                b.qos_policies = qos_policies(rate);
            }
            _ => {
                // The uplink goes or comes back.
                if devices.remove("eth2").is_none() {
                    devices.insert("eth2".into(), 2);
                }
            }
        }
    }

    fn sorted_reports(d: &Derived) -> (Vec<PortReport>, Vec<super::super::NetworkReport>) {
        let mut p = d.ports.clone();
        p.sort_by(|a, b| a.device.cmp(&b.device));
        let mut n = d.networks.clone();
        n.sort_by(|a, b| a.id.cmp(&b.id));
        (p, n)
    }

    /// After every random change, the incremental result equals a full derivation
    /// with the same numbering, and both number alike (nothing leaks, nothing is freed early).
    #[test]
    fn incremental_updates_equal_a_full_derivation() {
        let cfg = Config::parse_str(&format!("{CONFIG}{TUNNEL_CONFIG}"), "test").unwrap();
        for seed in 1..=16u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let mut b = Bindings {
                networks: (0..6).map(|i| network(&mut rng, i)).collect(),
                qos_policies: qos_policies(1000),
                ..Bindings::default()
            };
            let mut next = 100;
            let mut devices: Devices = [("eth2".to_string(), 2)].into();
            let mut engine = Engine::new(Allocations::default());
            let mut catalog = Catalog::split(b.clone());
            engine.update(&cfg, &catalog, &devices, Scope::Full);
            for step in 0..60 {
                let before = devices.clone();
                mutate(&mut rng, &mut b, &mut devices, &mut next);
                // What the sources and the link events would say changed.
                let next_catalog = Catalog::split(b.clone());
                let networks = next_catalog.changed_since(&catalog);
                let moved = moved_devices(&before, &devices);
                catalog = next_catalog;
                engine.update(
                    &cfg,
                    &catalog,
                    &devices,
                    Scope::Changed { networks: &networks, devices: &moved },
                );
                if step % 7 == 0 {
                    // Told again that nothing changed, nothing does.
                    let none = BTreeSet::new();
                    let again = engine.update(
                        &cfg,
                        &catalog,
                        &devices,
                        Scope::Changed { networks: &none, devices: &none },
                    );
                    assert!(again.diff.is_empty() && again.reports.is_empty());
                }
                let mut alloc = engine.alloc().clone();
                let full = derive(&cfg, &b, &devices, &mut alloc);
                let got = engine.derived(&cfg);
                let at = format!("seed {seed} step {step}");
                assert_eq!(got.state, full.state, "{at}: maps");
                assert_eq!(got.attach, full.attach, "{at}: attachments");
                assert_eq!(sorted_reports(&got), sorted_reports(&full), "{at}: reports");
                assert_eq!(engine.alloc(), &alloc, "{at}: numbering");
                assert_eq!(check_invariants(&got), Ok(()), "{at}");
            }
        }
    }

    #[test]
    fn a_port_change_re_derives_its_network_only_and_diffs_against_the_union() {
        let cfg = Config::parse_str(CONFIG, "test").unwrap();
        let mut rng = Rng(7);
        let networks = (0..50)
            .map(|i| Network {
                segmentation_id: Some(100 + i as u32),
                network_type: NetworkType::Vlan,
                physical_network: Some("default".into()),
                admin_state_up: true,
                ..network(&mut rng, i)
            })
            .collect();
        let mut b = Bindings { networks, ..Bindings::default() };
        let mut devices: Devices = [("eth2".to_string(), 2)].into();
        for i in 0..200u64 {
            let mut p = port(&mut rng, i, &b.networks);
            (p.host, p.admin_state_up, p.device_owner) = ("node0".into(), true, "compute:nova".into());
            devices.insert(p.device_name(), 1000 + i as u32);
            b.ports.push(p);
        }
        let mut engine = Engine::new(Allocations::default());
        let before = Catalog::split(b.clone());
        engine.update(&cfg, &before, &devices, Scope::Full);
        let mut p = port(&mut rng, 999, &b.networks);
        (p.host, p.admin_state_up, p.port_security_enabled) = ("node0".into(), true, false);
        devices.insert(p.device_name(), 5000);
        b.ports.push(p.clone());
        let after = Catalog::split(b);
        let networks = after.changed_since(&before);
        let moved = [p.device_name()].into();
        let change =
            engine.update(&cfg, &after, &devices, Scope::Changed { networks: &networks, devices: &moved });
        assert_eq!(change.networks, 1);
        assert_eq!(change.diff.ports.upserts.len(), 1);
        assert_eq!(change.diff.fdb.upserts.len(), 1);
        assert_eq!(change.diff.flood_sets.upserts.len(), 1, "the network's flood list grows");
        assert!(change.diff.networks.is_empty() && change.diff.segments.is_empty());
        assert_eq!(change.diff.len(), 3);
        assert_eq!(change.reports.keys().collect::<Vec<_>>(), [&p.device_name()]);
    }
}
