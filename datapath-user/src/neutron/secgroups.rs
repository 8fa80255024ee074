//! neutron's `security_group_info_for_devices` answer (version 1.3) in the
//! bindings' model: which groups each port is in, the groups' rules, and the
//! member addresses that remote-group rules name. Rules come without ids, so
//! each is named after its group and position, for `datapath trace`.
//! Neutron puts the addresses of the address groups that rules name
//! (`remote_address_group_id`) in `sg_member_ips` too, under the address
//! group's id: those become the address groups.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use anyhow::{Result, bail};
use serde_json::Value;

use crate::{
    bindings::{AddressGroup, Refusal, Remote, SecurityGroup, parse_cidr, parse_rule},
    policy::Members,
};

/// The security groups of some ports, as neutron answered.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SgInfo {
    /// Port id -> the ids of its groups.
    pub ports: BTreeMap<String, Vec<String>>,
    /// The groups with their accepted rules.
    pub groups: Vec<SecurityGroup>,
    /// Group -> the addresses of its members, on every host.
    pub members: Members,
    /// The address groups that rules name, with their addresses.
    pub address_groups: Vec<AddressGroup>,
    /// Rules and addresses that were refused, with why.
    pub refused: Vec<Refusal>,
}

fn object<'a>(v: &'a Value, what: &str) -> Result<&'a serde_json::Map<String, Value>> {
    match v {
        Value::Object(o) => Ok(o),
        other => bail!("security_group_info_for_devices: {what} is {other}, not an object"),
    }
}

/// Reads the answer; a malformed shape is an error, a bad rule or address is refused alone.
pub fn parse(reply: &Value) -> Result<SgInfo> {
    let top = object(reply, "the answer")?;
    let empty = Value::Object(Default::default());
    let mut refused = Vec::new();
    let mut ports = BTreeMap::new();
    for (id, port) in object(top.get("devices").unwrap_or(&empty), "devices")? {
        let groups = match port.get("security_groups") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
            _ => Vec::new(),
        };
        ports.insert(id.clone(), groups);
    }
    let mut groups = Vec::new();
    for (id, rules) in object(top.get("security_groups").unwrap_or(&empty), "security_groups")? {
        let Value::Array(rules) = rules else {
            bail!("security_group_info_for_devices: the rules of group {id} are not a list");
        };
        // The group's flag comes with each rule; a group without rules is tracked.
        let stateful = rules.iter().all(|r| r.get("stateful").and_then(Value::as_bool).unwrap_or(true));
        let mut accepted = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let name = format!("{id}#{i}");
            match parse_rule(r) {
                Ok(mut rule) => {
                    rule.id = name;
                    accepted.push(rule);
                }
                Err(reason) => refused.push(Refusal { what: format!("security group rule {name}"), reason }),
            }
        }
        groups.push(SecurityGroup { id: id.clone(), name: String::new(), stateful, rules: accepted });
    }
    let mut members: BTreeMap<String, BTreeSet<(IpAddr, u8)>> = BTreeMap::new();
    for (id, families) in object(top.get("sg_member_ips").unwrap_or(&empty), "sg_member_ips")? {
        let set = members.entry(id.clone()).or_default();
        for list in object(families, "a group's member addresses")?.values() {
            for entry in list.as_array().into_iter().flatten() {
                // [address, MAC or null]; an allowed address pair may be a prefix.
                let Some(addr) = entry.get(0).and_then(Value::as_str) else { continue };
                match parse_cidr(addr) {
                    Ok(p) => {
                        set.insert(p);
                    }
                    Err(e) => refused.push(Refusal {
                        what: format!("member address of security group {id}"),
                        reason: format!("{addr:?}: {e}"),
                    }),
                }
            }
        }
    }
    let named: BTreeSet<&str> = groups
        .iter()
        .flat_map(|g| &g.rules)
        .filter_map(|r| match &r.remote {
            Remote::AddressGroup(id) => Some(id.as_str()),
            _ => None,
        })
        .collect();
    // An address group neutron sent no addresses of is empty: its rules admit nobody.
    let address_groups = named
        .iter()
        .map(|id| AddressGroup {
            id: id.to_string(),
            addresses: members.get(*id).into_iter().flatten().copied().collect(),
        })
        .collect();
    Ok(SgInfo { ports, groups, members: Members::from_groups(members), address_groups, refused })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bindings::{Direction, Family, Ports, Remote};

    /// Trimmed from the answer of a real neutron 29 (tests/neutron/binding.rs asks it too).
    fn captured() -> Value {
        json!({
            "devices": {"7364fb7c-b51d": {"id": "7364fb7c-b51d", "fixed_ips": ["10.9.0.117"],
                "security_groups": ["sg-d"], "security_group_rules": []}},
            "security_groups": {"sg-d": [
                {"direction": "egress", "ethertype": "IPv6", "stateful": true},
                {"direction": "ingress", "ethertype": "IPv4", "remote_group_id": "sg-d", "stateful": true},
                {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 22,
                 "port_range_max": 22, "remote_ip_prefix": "192.0.2.0/24", "stateful": true},
                {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 9,
                 "port_range_max": 1, "stateful": true}]},
            "sg_member_ips": {"sg-d": {"IPv4": [["10.9.0.117", null], ["10.8.0.0/16", "fa:16:3e:00:00:01"]], "IPv6": []}}
        })
    }

    #[test]
    fn the_answer_becomes_groups_rules_and_members() {
        let info = parse(&captured()).unwrap();
        assert_eq!(info.ports["7364fb7c-b51d"], ["sg-d"]);
        let g = &info.groups[0];
        assert!(g.stateful);
        assert_eq!(g.rules.len(), 3, "the inverted range is refused alone");
        assert_eq!(info.refused[0].what, "security group rule sg-d#3");
        assert_eq!((g.rules[1].direction, g.rules[1].family), (Direction::Ingress, Family::V4));
        assert_eq!(g.rules[1].remote, Remote::Group("sg-d".into()));
        assert_eq!(g.rules[2].ports, Ports::Range(22, 22));
        assert_eq!(g.rules[2].id, "sg-d#2");
        let m = info.members;
        assert_eq!(
            m,
            Members::from_groups(BTreeMap::from([(
                "sg-d".to_string(),
                BTreeSet::from([("10.9.0.117".parse().unwrap(), 32), ("10.8.0.0".parse().unwrap(), 16)])
            )]))
        );
    }

    /// Shaped as neutron 29's `_get_address_group_ips` fills it.
    #[test]
    fn address_groups_come_from_the_member_addresses_under_their_id() {
        let reply = json!({
            "devices": {"p1": {"security_groups": ["sg-a"]}},
            "security_groups": {"sg-a": [
                {"direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 80,
                 "port_range_max": 80, "remote_address_group_id": "ag-1", "stateful": true},
                {"direction": "ingress", "ethertype": "IPv6", "remote_address_group_id": "ag-2", "stateful": true}]},
            "sg_member_ips": {"ag-1": {"IPv4": [["192.0.2.0/25", null], ["198.51.100.7/32", null]]}}
        });
        let info = parse(&reply).unwrap();
        let ag = |id: &str| info.address_groups.iter().find(|a| a.id == id).map(|a| a.addresses.clone());
        assert_eq!(
            ag("ag-1"),
            Some(vec![("192.0.2.0".parse().unwrap(), 25), ("198.51.100.7".parse().unwrap(), 32)])
        );
        assert_eq!(ag("ag-2"), Some(vec![]), "named but sent without addresses: empty, it admits nobody");
        assert_eq!(info.address_groups.len(), 2);
    }

    #[test]
    fn a_malformed_answer_is_an_error_that_says_where() {
        let e = parse(&json!({"security_groups": {"sg": "x"}})).unwrap_err();
        assert!(format!("{e:#}").contains("group sg"), "{e:#}");
        assert!(parse(&json!([])).is_err());
        assert_eq!(parse(&json!({})).unwrap().groups, vec![]);
    }
}
