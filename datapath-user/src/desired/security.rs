//! The security-group share of the desired state: each local port's rule
//! tables, a table per group (`policy::table_slots`), expanded from the
//! group (`policy::expand_groups`) and compiled into the kernel's LPM tables
//! (`policy::compile`).
//!
//! Ports share the tables of their common groups, so a rule change rewrites
//! one group's table, not every port's whole policy. A table that changes
//! gets a new id, never a reused one: it is written whole before the ports'
//! `SG_PORTS` entries point at it, and the old one is deleted after (the
//! sync's map order), so a change has no moment in which a port runs half
//! of a group's old rules and half of its new ones.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use datapath_common::{
    IP_FAMILY_V4, IP_FAMILY_V6, PORT_F_SECGROUPS, PortInfo, SG_DIR_EGRESS, SG_DIR_INGRESS, SG_F_IPV6,
    SG_F_STATEFUL, SG_PORT_KEY_FIXED_BITS, SG_PORT_TABLES, SG_REMOTE_KEY_FIXED_BITS, SgPort, SgPortKey,
    SgRemoteKeyV4, SgRemoteKeyV6,
};

use super::MapState;
use crate::{
    bindings::{Catalog, Direction, Family, NetBindings, Port, Security},
    netlink::Devices,
    policy::{
        Members, Packet, PortPolicy, compile::compile, expand_groups, reference::first_admitting, stateful,
        table_slots,
    },
};

/// One rule table in the kernel: its id, how many port slots use it, its entries.
#[derive(Debug)]
struct Installed {
    id: u32,
    users: usize,
    entries: MapState,
}

/// What a port with security groups holds: a table per slot, and its `SG_F_*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortTables {
    /// Ports that share a group hold the same `Arc`, the one `tables` holds.
    pub tables: Vec<Arc<PortPolicy>>,
    pub flags: u32,
}

impl PortTables {
    /// Whether the port's connections are tracked.
    pub fn stateful(&self) -> bool {
        self.flags & SG_F_STATEFUL != 0
    }

    /// Whether any of the port's tables admits `pkt`.
    pub fn admits(&self, pkt: &Packet) -> bool {
        self.tables.iter().any(|t| first_admitting(t, pkt).is_some())
    }

    /// Unchanged: the same tables (by pointer: equal tables share one `Arc`) and flags.
    fn same(&self, other: &PortTables) -> bool {
        self.flags == other.flags
            && self.tables.len() == other.tables.len()
            && self.tables.iter().zip(&other.tables).all(|(a, b)| Arc::ptr_eq(a, b))
    }
}

/// The security-group layer, kept across updates.
#[derive(Debug, Default)]
pub struct SecurityLayer {
    /// Each network's member addresses by group, with the entry they came from.
    members: BTreeMap<String, (Arc<NetBindings>, Members)>,
    /// Every network's members together.
    all_members: Members,
    security: Arc<Security>,
    /// Ports with security groups, by ifindex.
    ports: BTreeMap<u32, PortTables>,
    /// Ports whose `PORTS` entry asks for security groups, kept from the
    /// engine's fragments so that an update costs its change.
    flagged: BTreeSet<u32>,
    tables: BTreeMap<Arc<PortPolicy>, Installed>,
    /// The next table id; ids are never reused while an agent runs, and
    /// start above the kernel's after a restart.
    next_id: u32,
}

/// What one update changed: entries that went and entries that came.
#[derive(Debug, Default)]
pub struct Delta {
    pub gone: MapState,
    pub came: MapState,
    /// Ports whose tables changed or went (their connections need a re-check).
    pub ports: BTreeSet<u32>,
}

impl SecurityLayer {
    /// A layer whose table ids start above every id in `current` (the kernel's maps).
    pub fn new(current: &MapState) -> Self {
        let used = current
            .sg_ports
            .values()
            .flat_map(|p| p.tables)
            .chain(current.sg_rule_ports.keys().map(|(_, k)| k.table))
            .chain(current.sg_remote_v4.keys().map(|(_, k)| k.table))
            .chain(current.sg_remote_v6.keys().map(|(_, k)| k.table))
            .max()
            .unwrap_or(0);
        Self { next_id: used.wrapping_add(1).max(1), ..Self::default() }
    }

    /// The tables of the port with `ifindex`, if it has security groups.
    pub fn port(&self, ifindex: u32) -> Option<&PortTables> {
        self.ports.get(&ifindex)
    }

    /// The Neutron id of rule `rule` of the table with id `id`, while that table is in force.
    pub fn rule_id(&self, id: u32, rule: u32) -> Option<&str> {
        let (table, _) = self.tables.iter().find(|(_, i)| i.id == id)?;
        table.rules.get(rule as usize).map(|r| r.id.as_str())
    }

    /// Brings the layer to `catalog`: the ports of `host` whose `PORTS`
    /// entry asks for security groups (`gone` and `came` are the `PORTS`
    /// entries this update removes and writes); `device_net` gives each
    /// local device's network. A node without such ports pays nothing more.
    pub fn update(
        &mut self,
        host: &str,
        catalog: &Catalog,
        (devices, subports): (&Devices, &BTreeMap<u32, String>),
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
        let mut names: BTreeMap<u32, &String> =
            devices.iter().filter(|(_, i)| flagged.contains(i)).map(|(n, i)| (*i, n)).collect();
        names.extend(subports.iter().filter(|(i, _)| flagged.contains(i)).map(|(i, n)| (*i, n)));
        self.refresh_members(catalog);
        self.security = catalog.security.clone();
        let mut wanted: BTreeMap<u32, PortTables> = BTreeMap::new();
        // Each network's local ports by device, indexed once per update: a
        // search per port would cost 10,000 ports 50 million comparisons.
        let mut by_device: HashMap<&str, HashMap<String, &Port>> = HashMap::new();
        // A table follows from its groups alone: each group (or tail of
        // groups) is expanded once per update, and its ports share the
        // installed table's `Arc`.
        let mut expanded: HashMap<&[String], Arc<PortPolicy>> = HashMap::new();
        for (ifindex, name) in names {
            let Some((net_id, net)) = device_net.get(name).and_then(|id| catalog.networks.get_key_value(id))
            else {
                continue;
            };
            let ports = by_device.entry(net_id.as_str()).or_insert_with(|| {
                let mut m = HashMap::new();
                // Two ports whose ids share the device name's prefix: the first wins, as it always did.
                for p in net.bindings.ports.iter().filter(|p| p.host == host) {
                    m.entry(p.device_name()).or_insert(p);
                }
                m
            });
            let Some(p) = ports.get(name.as_str()) else { continue };
            if p.anti_spoof_exempt() {
                continue;
            }
            let Some(groups) = p.security_groups.as_deref() else { continue };
            let sec = &self.security;
            let tables = table_slots(groups)
                .into_iter()
                .map(|slot| {
                    expanded
                        .entry(slot)
                        .or_insert_with(|| {
                            let t = expand_groups(slot, &sec.groups, &sec.address_groups, &self.all_members);
                            match self.tables.get_key_value(&t) {
                                Some((installed, _)) => installed.clone(),
                                None => Arc::new(t),
                            }
                        })
                        .clone()
                })
                .collect();
            let mut flags = 0;
            if stateful(groups, &sec.groups) {
                flags |= SG_F_STATEFUL;
            }
            if p.fixed_ips.iter().any(IpAddr::is_ipv6) {
                flags |= SG_F_IPV6;
            }
            wanted.insert(ifindex, PortTables { tables, flags });
        }
        let mut d = Delta::default();
        let old = std::mem::take(&mut self.ports);
        // The ports that come (or change) take their tables first, so that a
        // table that ports keep using never drops to no users on the way.
        for (ifindex, want) in &wanted {
            if old.get(ifindex).is_some_and(|w| w.same(want)) {
                continue;
            }
            d.ports.insert(*ifindex);
            for table in &want.tables {
                let next = &mut self.next_id;
                let inst = self.tables.entry(table.clone()).or_insert_with(|| {
                    let id = *next;
                    *next = next.wrapping_add(1).max(1);
                    Installed { id, users: 0, entries: entries(id, table) }
                });
                if inst.users == 0 {
                    d.came.merge(&inst.entries);
                }
                inst.users += 1;
            }
            d.came.sg_ports.insert(*ifindex, self.sg_port(want));
        }
        for (ifindex, was) in &old {
            if wanted.get(ifindex).is_some_and(|w| w.same(was)) {
                continue;
            }
            d.ports.insert(*ifindex);
            d.gone.sg_ports.insert(*ifindex, self.sg_port(was));
            for table in &was.tables {
                let inst = self.tables.get_mut(table).expect("a port's table is installed");
                inst.users -= 1;
                if inst.users == 0 {
                    let inst = self.tables.remove(table).expect("present");
                    d.gone.merge(&inst.entries);
                }
            }
        }
        self.ports = wanted;
        d
    }

    /// The `SG_PORTS` value of a port whose tables are installed.
    fn sg_port(&self, port: &PortTables) -> SgPort {
        let mut v =
            SgPort { tables: [0; SG_PORT_TABLES], count: port.tables.len() as u32, flags: port.flags };
        for (slot, table) in v.tables.iter_mut().zip(&port.tables) {
            *slot = self.tables[table].id;
        }
        v
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

/// The kernel entries of the rule table `table` under `id`.
fn entries(id: u32, table: &PortPolicy) -> MapState {
    let c = compile(table);
    let mut s = MapState::default();
    for ((direction, family, protocol), table) in &c.ports {
        for ((value, len), class) in table {
            let key = SgPortKey {
                table: id,
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
                    let key = SgRemoteKeyV4 { table: id, class: *class, addr: a.octets() };
                    s.sg_remote_v4.insert((plen, key), *rule);
                }
                IpAddr::V6(a) => {
                    let key = SgRemoteKeyV6 { table: id, class: *class, addr: a.octets() };
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

    /// Ports a, b (node0) and r (node1, in "g"); `a_groups`/`b_groups` as
    /// JSON (or absent); `groups`: the security groups, as JSON objects.
    fn catalog_with(a_groups: &str, b_groups: &str, groups: &str) -> Catalog {
        let text = format!(
            r#"{{"networks": [{{"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 10}}],
 "ports": [
  {{"id": "aaaaaaaa-0001", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "fixed_ips": [{{"ip_address": "10.0.0.1"}}], "binding:host_id": "node0" {a_groups}}},
  {{"id": "bbbbbbbb-0002", "network_id": "n1", "mac_address": "fa:16:3e:00:00:02", "fixed_ips": [{{"ip_address": "10.0.0.2"}}, {{"ip_address": "2001:db8::2"}}], "binding:host_id": "node0" {b_groups}}},
  {{"id": "cccccccc-0003", "network_id": "n1", "mac_address": "fa:16:3e:00:00:03", "fixed_ips": [{{"ip_address": "10.0.0.3"}}], "binding:host_id": "node1", "security_groups": ["g"]}}],
 "security_groups": [{groups}]}}"#
        );
        let b = Bindings::parse_str(&text, "test").unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        Catalog::split(b)
    }

    /// As `catalog_with`, with the one group "g" and its `rules`.
    fn catalog(a_groups: &str, b_groups: &str, rules: &str) -> Catalog {
        catalog_with(a_groups, b_groups, &group("g", rules))
    }

    fn group(id: &str, rules: &str) -> String {
        format!(r#"{{"id": "{id}", "security_group_rules": [{rules}]}}"#)
    }

    const FROM_MEMBERS: &str =
        r#"{"id": "m", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "g"}"#;
    const SSH: &str = r#"{"id": "ssh", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22, "port_range_max": 22}"#;
    const WEB: &str = r#"{"id": "web", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 80, "port_range_max": 80}"#;

    fn devices() -> Devices {
        [("eth2", 2), ("tapaaaaaaaa-00", 10), ("tapbbbbbbbb-00", 11)].map(|(n, i)| (n.to_string(), i)).into()
    }

    fn update(e: &mut Engine, c: &Catalog) -> crate::desired::Change {
        e.update(&Config::parse_str(CONFIG, "test").unwrap(), c, &devices(), Scope::Full)
    }

    /// The tables in use of a port's `SG_PORTS` entry.
    fn tables(p: &SgPort) -> &[u32] {
        &p.tables[..p.count as usize]
    }

    #[test]
    fn ports_with_groups_get_a_table_per_group_and_share_the_tables_of_common_groups() {
        let mut e = Engine::new(Default::default());
        let groups = format!("{}, {}", group("g", FROM_MEMBERS), group("h", SSH));
        let change = update(
            &mut e,
            &catalog_with(r#", "security_groups": ["g", "h"]"#, r#", "security_groups": ["g"]"#, &groups),
        );
        let s = e.state();
        assert!(s.ports[&10].flags & PORT_F_SECGROUPS != 0);
        let (a, b) = (s.sg_ports[&10], s.sg_ports[&11]);
        assert_eq!(a.count, 2, "a: a table for g, one for h");
        assert_eq!(tables(&b), &a.tables[..1], "b shares g's table");
        assert_ne!(a.tables[1], a.tables[0]);
        assert_eq!(a.tables[2..], [0; SG_PORT_TABLES - 2], "unused slots stay 0");
        assert_eq!(a.flags, SG_F_STATEFUL);
        assert_eq!(b.flags, SG_F_STATEFUL | SG_F_IPV6, "b has an IPv6 address");
        // g's members' addresses (a, b and c on node1), one class, in g's table only.
        let remotes: BTreeSet<(u32, [u8; 4])> =
            s.sg_remote_v4.keys().map(|(_, k)| (k.table, k.addr)).collect();
        let (g, h) = (a.tables[0], a.tables[1]);
        assert_eq!(
            remotes,
            [(g, [10, 0, 0, 1]), (g, [10, 0, 0, 2]), (g, [10, 0, 0, 3]), (h, [0, 0, 0, 0])].into()
        );
        assert_eq!(change.policy_changed, [10, 11].into());
        // The rule ids trace and conntrack name, by table.
        let sec = e.security();
        assert_eq!((sec.rule_id(g, 0), sec.rule_id(h, 0), sec.rule_id(h, 1)), (Some("m"), Some("ssh"), None));
    }

    #[test]
    fn a_changed_group_gets_a_new_table_and_the_other_groups_tables_stay() {
        let mut e = Engine::new(Default::default());
        let (a_groups, b_groups) = (r#", "security_groups": ["g", "h"]"#, r#", "security_groups": ["g"]"#);
        let first = format!("{}, {}", group("g", FROM_MEMBERS), group("h", SSH));
        update(&mut e, &catalog_with(a_groups, b_groups, &first));
        let (a, b) = (e.state().sg_ports[&10], e.state().sg_ports[&11]);
        let (g, old_h) = (a.tables[0], a.tables[1]);
        let second = format!("{}, {}", group("g", FROM_MEMBERS), group("h", &format!("{SSH}, {WEB}")));
        let change = update(&mut e, &catalog_with(a_groups, b_groups, &second));
        let new_a = e.state().sg_ports[&10];
        let new_h = new_a.tables[1];
        assert_eq!(new_a.tables[0], g, "g did not change: its table stays");
        assert!(new_h > old_h, "a table is never rewritten in place, nor an id reused");
        assert_eq!(e.state().sg_ports[&11], b, "b is not in h: untouched");
        let d = &change.diff;
        assert!(
            d.sg_rule_ports.upserts.iter().all(|(k, _)| k.1.table == new_h),
            "only h's new table is written"
        );
        assert!(
            !d.sg_rule_ports.deletes.is_empty() && d.sg_rule_ports.deletes.iter().all(|k| k.1.table == old_h)
        );
        assert!(d.sg_remote_v4.upserts.iter().all(|(k, _)| k.1.table == new_h));
        assert_eq!(d.sg_ports.upserts.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [10], "only a switches");
        assert_eq!(change.policy_changed, [10].into());
        assert!(
            e.state().sg_rule_ports.keys().all(|k| k.1.table == g || k.1.table == new_h),
            "nothing of the old table is left"
        );
        // Back to the first rules: yet another id, not the old one.
        update(&mut e, &catalog_with(a_groups, b_groups, &first));
        assert!(e.state().sg_ports[&10].tables[1] > new_h);
    }

    #[test]
    fn a_group_all_its_ports_keep_keeps_its_table_when_their_other_group_changes() {
        let mut e = Engine::new(Default::default());
        let both = r#", "security_groups": ["g", "h"]"#;
        let first = format!("{}, {}", group("g", FROM_MEMBERS), group("h", SSH));
        update(&mut e, &catalog_with(both, both, &first));
        let h = e.state().sg_ports[&10].tables[1];
        let second = format!("{}, {}", group("g", &format!("{FROM_MEMBERS}, {WEB}")), group("h", SSH));
        let change = update(&mut e, &catalog_with(both, both, &second));
        assert_eq!(e.state().sg_ports[&10].tables[1], h, "h's table stays while every port of h changes");
        assert_eq!(e.state().sg_ports[&11].tables[1], h);
        let d = &change.diff;
        assert!(!d.sg_rule_ports.deletes.iter().any(|k| k.1.table == h), "nothing of h's table goes");
        assert!(!d.sg_rule_ports.upserts.iter().any(|(k, _)| k.1.table == h), "nor is written again");
        assert_eq!(d.sg_ports.upserts.len(), 2);
    }

    #[test]
    fn groups_beyond_the_last_slot_share_the_last_table() {
        let mut e = Engine::new(Default::default());
        let ids: Vec<String> = (0..SG_PORT_TABLES + 2).map(|i| format!("x{i}")).collect();
        let groups: Vec<String> = ids
            .iter()
            .map(|id| {
                let rule = format!(r#"{{"id": "r-{id}", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 1, "port_range_max": 1}}"#);
                group(id, &rule)
            })
            .chain([group("g", "")])
            .collect();
        let list = format!(r#", "security_groups": {}"#, serde_json::to_string(&ids).unwrap());
        update(&mut e, &catalog_with(&list, "", &groups.join(", ")));
        let a = e.state().sg_ports[&10];
        assert_eq!(a.count as usize, SG_PORT_TABLES);
        let sec = e.security();
        let last = a.tables[SG_PORT_TABLES - 1];
        let tail: Vec<Option<&str>> = (0..4).map(|r| sec.rule_id(last, r)).collect();
        assert_eq!(
            tail,
            [Some("r-x7"), Some("r-x8"), Some("r-x9"), None],
            "the last table holds the last three groups"
        );
        assert_eq!(sec.rule_id(a.tables[0], 0), Some("r-x0"));
    }

    #[test]
    fn no_groups_key_means_unfiltered_and_an_empty_list_denies_all() {
        let mut e = Engine::new(Default::default());
        update(&mut e, &catalog("", r#", "security_groups": []"#, FROM_MEMBERS));
        let s = e.state();
        assert_eq!(s.ports[&10].flags & PORT_F_SECGROUPS, 0, "no key: not filtered");
        assert!(!s.sg_ports.contains_key(&10));
        assert!(s.ports[&11].flags & PORT_F_SECGROUPS != 0);
        assert_eq!(
            s.sg_ports[&11].count, 0,
            "an empty list has no table: the port gets the fixed allowances only"
        );
        assert!(s.sg_rule_ports.is_empty());
    }

    #[test]
    fn a_restarted_layer_numbers_above_the_kernels_tables() {
        let mut kernel = MapState::default();
        let mut tables = [0; SG_PORT_TABLES];
        tables[..2].copy_from_slice(&[7, 41]);
        kernel.sg_ports.insert(10, SgPort { tables, count: 2, flags: 0 });
        let layer = SecurityLayer::new(&kernel);
        assert_eq!(layer.next_id, 42);
        assert_eq!(SecurityLayer::new(&MapState::default()).next_id, 1, "0 means a fixed allowance");
    }
}
