//! The security-group share of the desired state: each local port's policy,
//! expanded from its groups (`policy::expand`) and compiled into the
//! kernel's LPM tables (`policy::compile`).
//!
//! Ports with the same policy share one copy of the tables. A policy that
//! changes gets a new id, never a reused one: its tables are written whole
//! before the port's `SG_PORTS` entry points at them, and the old ones are
//! deleted after (the sync's map order), so a change has no moment in which
//! a port runs half of each policy.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use datapath_common::{
    IP_FAMILY_V4, IP_FAMILY_V6, PORT_F_SECGROUPS, PortInfo, SG_DIR_EGRESS, SG_DIR_INGRESS, SG_F_IPV6,
    SG_F_STATEFUL, SG_PORT_KEY_FIXED_BITS, SG_REMOTE_KEY_FIXED_BITS, SgPort, SgPortKey, SgRemoteKeyV4,
    SgRemoteKeyV6,
};

use super::MapState;
use crate::{
    bindings::{Catalog, Direction, Family, NetBindings, Port, Security, device_name},
    netlink::Devices,
    policy::{Members, PortPolicy, compile::compile, expand},
};

/// One policy in the kernel: its id, how many ports use it, its entries.
#[derive(Debug)]
struct Installed {
    id: u32,
    users: usize,
    entries: MapState,
}

/// The security-group layer, kept across updates.
#[derive(Debug, Default)]
pub struct SecurityLayer {
    /// Each network's member addresses by group, with the entry they came from.
    members: BTreeMap<String, (Arc<NetBindings>, Members)>,
    /// Every network's members together.
    all_members: Members,
    security: Arc<Security>,
    /// Ports with a policy: ifindex -> (the policy, its flags). Ports with
    /// equal policies share one `Arc`, the one `policies` holds.
    ports: BTreeMap<u32, (Arc<PortPolicy>, u32)>,
    /// Ports whose `PORTS` entry asks for security groups, kept from the
    /// engine's fragments so that an update costs its change.
    flagged: BTreeSet<u32>,
    policies: BTreeMap<Arc<PortPolicy>, Installed>,
    /// The next policy id; ids are never reused while an agent runs, and
    /// start above the kernel's after a restart.
    next_id: u32,
}

/// What one update changed: entries that went and entries that came.
#[derive(Debug, Default)]
pub struct Delta {
    pub gone: MapState,
    pub came: MapState,
    /// Ports whose policy changed or went (their connections need a re-check).
    pub ports: BTreeSet<u32>,
}

impl SecurityLayer {
    /// A layer whose policy ids start above every id in `current` (the kernel's maps).
    pub fn new(current: &MapState) -> Self {
        let used = current
            .sg_ports
            .values()
            .map(|p| p.policy)
            .chain(current.sg_rule_ports.keys().map(|(_, k)| k.policy))
            .chain(current.sg_remote_v4.keys().map(|(_, k)| k.policy))
            .chain(current.sg_remote_v6.keys().map(|(_, k)| k.policy))
            .max()
            .unwrap_or(0);
        Self { next_id: used.wrapping_add(1).max(1), ..Self::default() }
    }

    /// The policy of the port with `ifindex`, if it has one.
    pub fn policy(&self, ifindex: u32) -> Option<&PortPolicy> {
        self.ports.get(&ifindex).map(|(p, _)| &**p)
    }

    /// The Neutron id of rule `rule` of the policy with id `id`, while that policy is in force.
    pub fn rule_id(&self, id: u32, rule: u32) -> Option<&str> {
        let (policy, _) = self.policies.iter().find(|(_, i)| i.id == id)?;
        policy.rules.get(rule as usize).map(|r| r.id.as_str())
    }

    /// Brings the layer to `catalog`: the ports of `host` whose `PORTS`
    /// entry asks for security groups (`gone` and `came` are the `PORTS`
    /// entries this update removes and writes); `device_net` gives each
    /// local device's network. A node without such ports pays nothing more.
    pub fn update(
        &mut self,
        host: &str,
        catalog: &Catalog,
        devices: &Devices,
        (gone, came): (&BTreeMap<u32, PortInfo>, &BTreeMap<u32, PortInfo>),
        device_net: &BTreeMap<String, String>,
    ) -> Delta {
        for ifindex in gone.keys() {
            self.flagged.remove(ifindex);
        }
        self.flagged.extend(came.iter().filter(|(_, i)| i.flags & PORT_F_SECGROUPS != 0).map(|(k, _)| *k));
        if self.flagged.is_empty() && self.ports.is_empty() {
            return Delta::default();
        }
        let flagged = &self.flagged;
        let names: BTreeMap<u32, &String> =
            devices.iter().filter(|(_, i)| flagged.contains(i)).map(|(n, i)| (*i, n)).collect();
        self.refresh_members(catalog);
        self.security = catalog.security.clone();
        let mut wanted: BTreeMap<u32, (Arc<PortPolicy>, u32)> = BTreeMap::new();
        // Each network's local ports by device, indexed once per update: a
        // search per port would cost 10,000 ports 50 million comparisons.
        let mut by_device: HashMap<&str, HashMap<String, &Port>> = HashMap::new();
        // A port's policy follows from its groups alone: ports with the same
        // groups are expanded once, and share the installed policy's `Arc`.
        let mut expanded: HashMap<&[String], Option<Arc<PortPolicy>>> = HashMap::new();
        for (ifindex, name) in names {
            let Some((net_id, net)) = device_net.get(name).and_then(|id| catalog.networks.get_key_value(id))
            else {
                continue;
            };
            let ports = by_device.entry(net_id.as_str()).or_insert_with(|| {
                let mut m = HashMap::new();
                // Two ports whose ids share the device name's prefix: the first wins, as it always did.
                for p in net.bindings.ports.iter().filter(|p| p.host == host) {
                    m.entry(device_name(&p.id)).or_insert(p);
                }
                m
            });
            let Some(p) = ports.get(name.as_str()) else { continue };
            if p.anti_spoof_exempt() {
                continue;
            }
            let Some(groups) = p.security_groups.as_deref() else { continue };
            let policy = expanded.entry(groups).or_insert_with(|| {
                let sec = &self.security;
                let policy = expand(p, &sec.groups, &sec.address_groups, &self.all_members)?;
                Some(match self.policies.get_key_value(&policy) {
                    Some((installed, _)) => installed.clone(),
                    None => Arc::new(policy),
                })
            });
            let Some(policy) = policy.clone() else { continue };
            let mut flags = 0;
            if policy.stateful {
                flags |= SG_F_STATEFUL;
            }
            if p.fixed_ips.iter().any(IpAddr::is_ipv6) {
                flags |= SG_F_IPV6;
            }
            wanted.insert(ifindex, (policy, flags));
        }
        let mut d = Delta::default();
        let old = std::mem::take(&mut self.ports);
        // Unchanged ports hold the same `Arc`: the comparisons are pointer ones.
        for (ifindex, (policy, flags)) in &old {
            if wanted.get(ifindex).is_some_and(|(p, f)| p == policy && f == flags) {
                continue;
            }
            d.ports.insert(*ifindex);
            let id = self.policies[policy].id;
            d.gone.sg_ports.insert(*ifindex, SgPort { policy: id, flags: *flags });
            let inst = self.policies.get_mut(policy).expect("a port's policy is installed");
            inst.users -= 1;
            if inst.users == 0 {
                let inst = self.policies.remove(policy).expect("present");
                d.gone.merge(&inst.entries);
            }
        }
        for (ifindex, (policy, flags)) in &wanted {
            if old.get(ifindex).is_some_and(|(p, f)| p == policy && f == flags) {
                continue;
            }
            d.ports.insert(*ifindex);
            let next = &mut self.next_id;
            let inst = self.policies.entry(policy.clone()).or_insert_with(|| {
                let id = *next;
                *next = next.wrapping_add(1).max(1);
                let entries = entries(id, policy);
                Installed { id, users: 0, entries }
            });
            if inst.users == 0 {
                d.came.merge(&inst.entries);
            }
            inst.users += 1;
            d.came.sg_ports.insert(*ifindex, SgPort { policy: inst.id, flags: *flags });
        }
        self.ports = wanted;
        d
    }

    /// Re-reads the member addresses of the networks whose entry changed,
    /// or takes the source's own list.
    fn refresh_members(&mut self, catalog: &Catalog) {
        if let Some(given) = &catalog.security.members {
            if self.all_members != *given {
                self.all_members = given.clone();
            }
            self.members.clear();
            return;
        }
        let mut changed = false;
        self.members.retain(|id, _| {
            let keep = catalog.networks.contains_key(id);
            changed |= !keep;
            keep
        });
        for (id, net) in &catalog.networks {
            if self.members.get(id).is_some_and(|(n, _)| Arc::ptr_eq(n, net)) {
                continue;
            }
            let m = Members::index(net.bindings.ports.iter());
            if self.members.get(id).is_some_and(|(_, old)| *old == m) {
                self.members.insert(id.clone(), (net.clone(), m));
                continue;
            }
            self.members.insert(id.clone(), (net.clone(), m));
            changed = true;
        }
        if changed {
            let mut all = Members::default();
            for (_, m) in self.members.values() {
                all.extend(m);
            }
            self.all_members = all;
        }
    }
}

/// The kernel entries of `policy` under `id`.
fn entries(id: u32, policy: &PortPolicy) -> MapState {
    let c = compile(policy);
    let mut s = MapState::default();
    for ((direction, family, protocol), table) in &c.ports {
        for ((value, len), class) in table {
            let key = SgPortKey {
                policy: id,
                direction: match direction {
                    Direction::Ingress => SG_DIR_INGRESS,
                    Direction::Egress => SG_DIR_EGRESS,
                },
                family: match family {
                    Family::V4 => IP_FAMILY_V4,
                    Family::V6 => IP_FAMILY_V6,
                },
                protocol: protocol.unwrap_or(0),
                any_protocol: u8::from(protocol.is_none()),
                port: value.to_be_bytes(),
                _pad: [0; 2],
            };
            s.sg_rule_ports.insert((SG_PORT_KEY_FIXED_BITS + u32::from(*len), key), *class);
        }
    }
    for (class, remotes) in &c.remotes {
        for ((ip, len), rule) in remotes {
            let plen = SG_REMOTE_KEY_FIXED_BITS + u32::from(*len);
            match ip {
                IpAddr::V4(a) => {
                    let key = SgRemoteKeyV4 { policy: id, class: *class, addr: a.octets() };
                    s.sg_remote_v4.insert((plen, key), *rule);
                }
                IpAddr::V6(a) => {
                    let key = SgRemoteKeyV6 { policy: id, class: *class, addr: a.octets() };
                    s.sg_remote_v6.insert((plen, key), *rule);
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use datapath_common::{PORT_F_SECGROUPS, SG_F_STATEFUL};

    use super::*;
    use crate::{
        bindings::Bindings,
        config::Config,
        desired::{Engine, Scope},
    };

    const CONFIG: &str = r#"
host = "node0"
physical_interface_mappings = ["default:eth2"]
bindings = "/b.json"
pin_path = "/sys/fs/bpf/t"
"#;

    /// Ports a, b (node0) and r (node1); `a_groups`/`b_groups` as JSON (or
    /// absent), and group "g" with `rules`.
    fn catalog(a_groups: &str, b_groups: &str, rules: &str) -> Catalog {
        let text = format!(
            r#"{{"networks": [{{"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 10}}],
 "ports": [
  {{"id": "aaaaaaaa-0001", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{{"ip_address": "10.0.0.1"}}], "binding:host_id": "node0" {a_groups}}},
  {{"id": "bbbbbbbb-0002", "network_id": "n1", "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [{{"ip_address": "10.0.0.2"}}, {{"ip_address": "2001:db8::2"}}], "binding:host_id": "node0" {b_groups}}},
  {{"id": "cccccccc-0003", "network_id": "n1", "mac_address": "fa:16:3e:00:00:03", "fixed_ips": [{{"ip_address": "10.0.0.3"}}], "binding:host_id": "node1", "security_groups": ["g"]}}],
 "security_groups": [{{"id": "g", "security_group_rules": [{rules}]}}]}}"#
        );
        let b = Bindings::parse_str(&text, "test").unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        Catalog::split(b)
    }

    const FROM_MEMBERS: &str =
        r#"{"id": "m", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "g"}"#;
    const SSH: &str = r#"{"id": "ssh", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22}"#;

    fn devices() -> Devices {
        [("eth2", 2), ("tapaaaaaaaa-00", 10), ("tapbbbbbbbb-00", 11)].map(|(n, i)| (n.to_string(), i)).into()
    }

    fn update(e: &mut Engine, c: &Catalog) -> crate::desired::Change {
        e.update(&Config::parse_str(CONFIG, "test").unwrap(), c, &devices(), Scope::Full)
    }

    #[test]
    fn ports_with_groups_get_a_policy_and_equal_policies_share_their_tables() {
        let mut e = Engine::new(Default::default());
        let groups = r#", "security_groups": ["g"]"#;
        let change = update(&mut e, &catalog(groups, groups, FROM_MEMBERS));
        let s = e.state();
        assert!(s.ports[&10].flags & PORT_F_SECGROUPS != 0);
        let (a, b) = (s.sg_ports[&10], s.sg_ports[&11]);
        assert_eq!(a.policy, b.policy, "the same groups: one policy");
        assert_eq!(a.flags, SG_F_STATEFUL);
        assert_eq!(b.flags, SG_F_STATEFUL | SG_F_IPV6, "b has an IPv6 address");
        // The members' addresses (a, b and c on node1), one class.
        let remotes: Vec<[u8; 4]> = s.sg_remote_v4.keys().map(|(_, k)| k.addr).collect();
        assert_eq!(remotes, [[10, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]]);
        assert_eq!(change.policy_changed, [10, 11].into());
    }

    #[test]
    fn a_changed_policy_gets_a_new_id_and_the_old_tables_go_once_unused() {
        let mut e = Engine::new(Default::default());
        let groups = r#", "security_groups": ["g"]"#;
        update(&mut e, &catalog(groups, groups, FROM_MEMBERS));
        let old = e.state().sg_ports[&10].policy;
        let change = update(&mut e, &catalog(groups, groups, &format!("{FROM_MEMBERS}, {SSH}")));
        let new = e.state().sg_ports[&10].policy;
        assert_ne!(old, new, "a policy is never rewritten in place");
        let d = &change.diff;
        assert!(d.sg_rule_ports.upserts.iter().all(|(k, _)| k.1.policy == new));
        assert!(
            !d.sg_rule_ports.deletes.is_empty() && d.sg_rule_ports.deletes.iter().all(|k| k.1.policy == old)
        );
        assert!(
            e.state().sg_rule_ports.keys().all(|k| k.1.policy == new),
            "nothing of the old policy is left"
        );
        assert_eq!(d.sg_ports.upserts.len(), 2, "both ports switch");
        // Back to the first rules: yet another id, not the old one.
        update(&mut e, &catalog(groups, groups, FROM_MEMBERS));
        assert!(e.state().sg_ports[&10].policy > new);
    }

    #[test]
    fn no_groups_key_means_unfiltered_and_an_empty_list_denies_all() {
        let mut e = Engine::new(Default::default());
        update(&mut e, &catalog("", r#", "security_groups": []"#, FROM_MEMBERS));
        let s = e.state();
        assert_eq!(s.ports[&10].flags & PORT_F_SECGROUPS, 0, "no key: not filtered");
        assert!(!s.sg_ports.contains_key(&10));
        assert!(s.ports[&11].flags & PORT_F_SECGROUPS != 0);
        let policy = s.sg_ports[&11].policy;
        assert!(
            !s.sg_rule_ports.keys().any(|k| k.1.policy == policy),
            "an empty list has no rule: the port gets the fixed allowances only"
        );
    }

    #[test]
    fn a_restarted_layer_numbers_above_the_kernels_policies() {
        let mut kernel = MapState::default();
        kernel.sg_ports.insert(10, SgPort { policy: 41, flags: 0 });
        let layer = SecurityLayer::new(&kernel);
        assert_eq!(layer.next_id, 42);
        assert_eq!(SecurityLayer::new(&MapState::default()).next_id, 1, "0 means a fixed allowance");
    }
}
