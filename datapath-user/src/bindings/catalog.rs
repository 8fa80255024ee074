//! The bindings split by network: what the incremental derivation reads.
//!
//! Each network's entry holds the network, every port on it (all hosts, for
//! l2population), and the agents of the hosts those ports are on. A source
//! that changes one port replaces one entry (`CatalogDelta`) and says which
//! networks changed (`Changed`), so the consumer's work does not grow with
//! the cloud's size.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use super::{AddressGroup, Bindings, Network, QosPolicy, Refusal, SecurityGroup};

/// The QoS policies by id: global, not per network.
pub type QosPolicies = BTreeMap<String, QosPolicy>;

/// The security groups and address groups, by id: global, not per network.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Security {
    pub groups: BTreeMap<String, SecurityGroup>,
    pub address_groups: BTreeMap<String, AddressGroup>,
    /// The groups' member addresses as the source gave them (neutron's
    /// `sg_member_ips`: members on every host, which its bindings do not
    /// list); None: taken from the bindings' ports.
    pub members: Option<crate::policy::Members>,
}

/// One network's share of the bindings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NetBindings {
    /// Where the network stands among all networks: the bindings file's order
    /// (a conflict between two networks goes to the first). 0 when the source
    /// has no order; the network id breaks ties.
    pub position: usize,
    /// The network (exactly one), its ports of every host, and the agents of their hosts.
    pub bindings: Bindings,
}

impl NetBindings {
    /// The network itself.
    pub fn network(&self) -> Option<&Network> {
        self.bindings.networks.first()
    }

    /// Whether a port of the network is bound to `host`.
    pub fn has_port_on(&self, host: &str) -> bool {
        self.bindings.ports.iter().any(|p| p.host == host)
    }
}

/// Every network's bindings by network id, and the entries refused.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Catalog {
    pub networks: BTreeMap<String, Arc<NetBindings>>,
    /// Security groups and address groups (replaced whole when they change).
    pub security: Arc<Security>,
    /// QoS policies (replaced whole when they change).
    pub qos: Arc<QosPolicies>,
    /// Entries refused by the source, for the logs and `datapath status`.
    pub refused: Vec<Refusal>,
}

/// What changed in a catalog: networks' new entries (None: gone), and every refusal now.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CatalogDelta {
    pub networks: Vec<(String, Option<Arc<NetBindings>>)>,
    /// The new security groups and address groups; None: unchanged.
    pub security: Option<Arc<Security>>,
    /// The new QoS policies; None: unchanged.
    pub qos: Option<Arc<QosPolicies>>,
    pub refused: Vec<Refusal>,
}

/// Which networks changed since a consumer last looked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Changed {
    /// Everything may have changed (the first catalog).
    pub all: bool,
    pub networks: BTreeSet<String>,
}

/// Whether two entries are alike: by pointer first, so an unchanged entry costs no comparison.
fn same(a: &Arc<NetBindings>, b: &Arc<NetBindings>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

impl Catalog {
    /// Applies `d`; returns the networks it changed.
    pub fn apply(&mut self, d: CatalogDelta) -> BTreeSet<String> {
        let mut changed = BTreeSet::new();
        for (id, entry) in d.networks {
            let same = match (&entry, self.networks.get(&id)) {
                (Some(e), Some(o)) => same(o, e),
                (None, None) => true,
                _ => false,
            };
            if !same {
                changed.insert(id.clone());
            }
            match entry {
                Some(e) => self.networks.insert(id, e),
                None => self.networks.remove(&id),
            };
        }
        if let Some(s) = d.security {
            self.security = s;
        }
        if let Some(q) = d.qos {
            self.qos = q;
        }
        self.refused = d.refused;
        changed
    }

    /// Splits whole bindings (a file) by network, in O(entries).
    pub fn split(mut b: Bindings) -> Self {
        let security = Arc::new(Security {
            groups: std::mem::take(&mut b.security_groups).into_iter().map(|g| (g.id.clone(), g)).collect(),
            address_groups: std::mem::take(&mut b.address_groups)
                .into_iter()
                .map(|g| (g.id.clone(), g))
                .collect(),
            members: None,
        });
        let qos =
            Arc::new(std::mem::take(&mut b.qos_policies).into_iter().map(|p| (p.id.clone(), p)).collect());
        let mut nets: BTreeMap<String, NetBindings> = b
            .networks
            .into_iter()
            .enumerate()
            .map(|(position, n)| {
                let bindings = Bindings { networks: vec![n], ..Bindings::default() };
                (bindings.networks[0].id.clone(), NetBindings { position, bindings })
            })
            .collect();
        let mut hosts: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for p in b.ports {
            // Every accepted port is on an accepted network (the parser refuses orphans).
            if let Some(n) = nets.get_mut(&p.network_id) {
                hosts.entry(p.network_id.clone()).or_default().insert(p.host.clone());
                n.bindings.ports.push(p);
            }
        }
        for (id, n) in &mut nets {
            let Some(on) = hosts.get(id) else { continue };
            n.bindings.agents = b.agents.iter().filter(|a| on.contains(&a.host)).cloned().collect();
        }
        Self {
            networks: nets.into_iter().map(|(id, n)| (id, Arc::new(n))).collect(),
            security,
            qos,
            refused: b.refused,
        }
    }

    /// The bindings of the networks in `ids` (those the catalog has), in the sources' order.
    pub fn subset(&self, ids: &BTreeSet<String>) -> Bindings {
        let mut picked: Vec<&NetBindings> =
            ids.iter().filter_map(|id| self.networks.get(id)).map(|n| &**n).collect();
        picked.sort_by_key(|n| (n.position, n.network().map_or("", |net| net.id.as_str())));
        let mut out = Bindings::default();
        let mut agents = BTreeSet::new();
        for n in picked {
            out.networks.extend(n.bindings.networks.iter().cloned());
            out.ports.extend(n.bindings.ports.iter().cloned());
            for a in &n.bindings.agents {
                // The same host's agent comes with every network it has ports on.
                if agents.insert((a.host.clone(), a.agent_type.clone(), a.tunneling_ip)) {
                    out.agents.push(a.clone());
                }
            }
        }
        out
    }

    /// The ids of the networks whose entry differs between `old` and `self`.
    pub fn changed_since(&self, old: &Catalog) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (id, n) in &self.networks {
            match old.networks.get(id) {
                Some(o) if same(o, n) => {}
                _ => {
                    out.insert(id.clone());
                }
            }
        }
        out.extend(old.networks.keys().filter(|id| !self.networks.contains_key(*id)).cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"networks": [
        {"id": "n2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 10},
        {"id": "n1", "provider:network_type": "vxlan", "provider:segmentation_id": 20}],
      "ports": [
        {"id": "aaaaaaaa-0001", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01", "binding:host_id": "node0"},
        {"id": "bbbbbbbb-0002", "network_id": "n1", "mac_address": "fa:16:3e:00:00:02", "binding:host_id": "node1"},
        {"id": "cccccccc-0003", "network_id": "n2", "mac_address": "fa:16:3e:00:00:03", "binding:host_id": "node0"}],
      "agents": [
        {"host": "node1", "configurations": {"tunneling_ip": "192.0.2.11"}},
        {"host": "node9", "configurations": {"tunneling_ip": "192.0.2.19"}}]}"#;

    #[test]
    fn split_then_subset_of_everything_gives_the_bindings_back_without_unused_agents() {
        let b = Bindings::parse_str(DOC, "test").unwrap();
        let c = Catalog::split(b.clone());
        assert_eq!(c.networks["n1"].bindings.agents.len(), 1, "node1 only: node9 has no port on n1");
        assert!(c.networks["n2"].bindings.agents.is_empty());
        let all: BTreeSet<String> = c.networks.keys().cloned().collect();
        let back = c.subset(&all);
        assert_eq!(back.networks, b.networks, "file order, not id order");
        let ids = |b: &Bindings| b.ports.iter().map(|p| p.id.clone()).collect::<BTreeSet<_>>();
        assert_eq!(ids(&back), ids(&b));
        assert_eq!(back.agents, b.agents[..1]);
    }

    #[test]
    fn changed_since_names_changed_added_and_removed_networks() {
        let c = Catalog::split(Bindings::parse_str(DOC, "test").unwrap());
        assert!(c.changed_since(&c.clone()).is_empty());
        let mut d = c.clone();
        Arc::make_mut(d.networks.get_mut("n1").unwrap()).bindings.ports.pop();
        d.networks.remove("n2");
        d.networks.insert("n3".into(), Arc::new(NetBindings { position: 5, ..NetBindings::default() }));
        assert_eq!(d.changed_since(&c), ["n1", "n2", "n3"].map(String::from).into());
        // An equal entry under a new Arc (a re-read file) is not a change.
        let again = Catalog::split(Bindings::parse_str(DOC, "test").unwrap());
        assert!(again.changed_since(&c).is_empty());
    }
}
