//! From the bindings to one port's policy: the union of its groups' rules,
//! with remote groups and address groups turned into prefixes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use datapath_common::SG_PORT_TABLES;

use super::{PortPolicy, Rule};
use crate::bindings::{AddressGroup, Family, Port, Remote, SecurityGroup};

/// The addresses of every security group's member ports, on every host:
/// their fixed IPs and their allowed address pairs, as Neutron counts them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members(BTreeMap<String, BTreeSet<(IpAddr, u8)>>);

impl Members {
    /// Indexes `ports` by the groups they are in.
    pub fn index<'a>(ports: impl Iterator<Item = &'a Port>) -> Self {
        let mut m: BTreeMap<String, BTreeSet<(IpAddr, u8)>> = BTreeMap::new();
        for p in ports {
            let host_len = |ip: &IpAddr| if ip.is_ipv4() { 32 } else { 128 };
            let addrs: Vec<(IpAddr, u8)> = p
                .fixed_ips
                .iter()
                .map(|ip| (*ip, host_len(ip)))
                .chain(p.allowed_address_pairs.iter().map(|a| (a.ip, a.prefix_len)))
                .collect();
            for g in p.security_groups.iter().flatten() {
                m.entry(g.clone()).or_default().extend(addrs.iter().copied());
            }
        }
        Self(m)
    }

    /// Adds `other`'s members.
    pub fn extend(&mut self, other: &Members) {
        for (g, addrs) in &other.0 {
            self.0.entry(g.clone()).or_default().extend(addrs.iter().copied());
        }
    }

    /// Members given as group -> addresses (neutron's `sg_member_ips`).
    pub fn from_groups(groups: BTreeMap<String, BTreeSet<(IpAddr, u8)>>) -> Self {
        Self(groups)
    }

    fn of(&self, group: &str, family: Family) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        self.0.get(group).into_iter().flatten().filter(move |(ip, _)| Family::of(ip) == family).copied()
    }
}

/// The policy of `port`, or None when no security group applies to it
/// (port security off, or a network-owned port, which Neutron trusts, or a
/// port whose source says nothing about groups): the union of its groups'
/// rules. A group the port names that the bindings lack admits nothing,
/// like a group without rules: the port fails closed.
pub fn expand(
    port: &Port,
    groups: &BTreeMap<String, SecurityGroup>,
    address_groups: &BTreeMap<String, AddressGroup>,
    members: &Members,
) -> Option<PortPolicy> {
    if port.anti_spoof_exempt() {
        return None;
    }
    Some(expand_groups(port.security_groups.as_ref()?, groups, address_groups, members))
}

/// The rules of the groups `ids`, in their order, as one policy: a port's
/// whole policy, or one of its tables (`table_slots`).
pub fn expand_groups(
    ids: &[String],
    groups: &BTreeMap<String, SecurityGroup>,
    address_groups: &BTreeMap<String, AddressGroup>,
    members: &Members,
) -> PortPolicy {
    let own: Vec<&SecurityGroup> = ids.iter().filter_map(|id| groups.get(id)).collect();
    let mut policy = PortPolicy { stateful: stateful(ids, groups), rules: Vec::new() };
    for g in own {
        for r in &g.rules {
            let any = match r.family {
                Family::V4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                Family::V6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            let remotes = match &r.remote {
                Remote::Any => vec![(any, 0)],
                Remote::Prefix(ip, len) => vec![(*ip, *len)],
                Remote::Group(id) => members.of(id, r.family).collect(),
                Remote::AddressGroup(id) => address_groups
                    .get(id)
                    .into_iter()
                    .flat_map(|a| a.addresses.iter().copied())
                    .filter(|(ip, _)| Family::of(ip) == r.family)
                    .collect(),
            };
            policy.rules.push(Rule {
                id: r.id.clone(),
                direction: r.direction,
                family: r.family,
                protocol: r.protocol,
                ports: r.ports,
                remotes,
            });
        }
    }
    policy
}

/// Whether a port in the groups `ids` has its connections tracked.
/// Neutron refuses to mix stateful and stateless groups on one port; should
/// a hand-written file do it, the port is tracked unless every group it
/// it knows is stateless (and it knows one at least).
pub fn stateful(ids: &[String], groups: &BTreeMap<String, SecurityGroup>) -> bool {
    let mut known = ids.iter().filter_map(|id| groups.get(id)).peekable();
    known.peek().is_none() || known.any(|g| g.stateful)
}

/// How a port's groups fill its `SG_PORT_TABLES` tables in the kernel: a
/// table per group, and the groups beyond the last slot together in the
/// last table. An empty list has no table (only the fixed allowances pass).
pub fn table_slots(ids: &[String]) -> Vec<&[String]> {
    if ids.len() <= SG_PORT_TABLES {
        return ids.chunks(1).collect();
    }
    let (single, rest) = ids.split_at(SG_PORT_TABLES - 1);
    single.chunks(1).chain([rest]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::Bindings;

    #[test]
    fn remote_groups_take_every_members_addresses_and_pairs_by_family() {
        let b = Bindings::parse_str(
            r#"{"networks": [{"id": "n", "provider:network_type": "vlan", "provider:physical_network": "p", "provider:segmentation_id": 5}],
             "ports": [
              {"id": "aaaaaaaa-0001", "network_id": "n", "mac_address": "fa:16:3e:00:00:01", "binding:host_id": "node0",
               "fixed_ips": [{"ip_address": "10.0.0.1"}], "security_groups": ["web"]},
              {"id": "bbbbbbbb-0002", "network_id": "n", "mac_address": "fa:16:3e:00:00:02", "binding:host_id": "node1",
               "fixed_ips": [{"ip_address": "10.0.0.2"}, {"ip_address": "2001:db8::2"}],
               "allowed_address_pairs": [{"ip_address": "10.9.0.0/16"}], "security_groups": ["web", "db"]},
              {"id": "cccccccc-0003", "network_id": "n", "mac_address": "fa:16:3e:00:00:03", "binding:host_id": "node0",
               "port_security_enabled": false, "security_groups": []},
              {"id": "dddddddd-0004", "network_id": "n", "mac_address": "fa:16:3e:00:00:04", "binding:host_id": "node0",
               "security_groups": ["missing"]}],
             "security_groups": [
              {"id": "web", "stateful": true, "security_group_rules": [
                {"id": "from-web", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "web"},
                {"id": "from-db6", "direction": "ingress", "ethertype": "IPv6", "remote_group_id": "db"},
                {"id": "from-ag", "direction": "ingress", "ethertype": "IPv4", "remote_address_group_id": "ag"},
                {"id": "out", "direction": "egress", "ethertype": "IPv4"}]}],
             "address_groups": [{"id": "ag", "addresses": ["192.0.2.0/24", "2001:db8::/64"]}]}"#,
            "test",
        )
        .unwrap();
        assert_eq!(b.refused, vec![]);
        let groups = b.security_groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
        let ags = b.address_groups.iter().map(|g| (g.id.clone(), g.clone())).collect();
        let members = Members::index(b.ports.iter());
        let p = expand(&b.ports[0], &groups, &ags, &members).unwrap();
        let remotes = |id: &str| {
            let r = p.rules.iter().find(|r| r.id == id).unwrap();
            r.remotes.iter().map(|(ip, l)| format!("{ip}/{l}")).collect::<Vec<_>>()
        };
        assert_eq!(remotes("from-web"), ["10.0.0.1/32", "10.0.0.2/32", "10.9.0.0/16"]);
        assert_eq!(remotes("from-db6"), ["2001:db8::2/128"]);
        assert_eq!(remotes("from-ag"), ["192.0.2.0/24"]);
        assert_eq!(remotes("out"), ["0.0.0.0/0"]);
        assert!(p.stateful);
        assert_eq!(expand(&b.ports[2], &groups, &ags, &members), None, "port security off: no policy");
        let unknown = expand(&b.ports[3], &groups, &ags, &members).unwrap();
        assert!(unknown.rules.is_empty(), "an unknown group admits nothing");
    }
}
