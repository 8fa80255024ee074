//! Security groups and address groups as the bindings carry them, in the
//! shapes `GET /v2.0/security-groups` and `GET /v2.0/address-groups` return,
//! validated rule by rule as neutron-server validates a new rule: a rule it
//! would reject is refused alone, with the reason, and its group keeps the rest.

use std::net::IpAddr;

use serde_json::Value;

use super::{Refusal, addr::parse_cidr};

/// Which traffic a rule admits: into the port or out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A rule's ethertype.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }
}

/// Who is on the other end of the traffic a rule admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// Anyone (no remote, or a /0).
    Any,
    /// An address prefix (host bits cleared).
    Prefix(IpAddr, u8),
    /// The addresses of every port in this security group, on any host.
    Group(String),
    /// The addresses of this address group.
    AddressGroup(String),
}

/// What a rule matches beyond protocol: a destination port range, or an ICMP type and code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ports {
    /// Any port, type or code.
    Any,
    /// Destination ports min..=max (tcp, udp, sctp, dccp, udplite).
    Range(u16, u16),
    /// ICMP or ICMPv6 type, and code if given.
    Icmp(u8, Option<u8>),
}

/// One accepted rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgRule {
    pub id: String,
    pub direction: Direction,
    pub family: Family,
    /// IP protocol number; None for any.
    pub protocol: Option<u8>,
    pub ports: Ports,
    pub remote: Remote,
}

/// One security group with its accepted rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub name: String,
    /// False: no connection tracking, both directions need rules.
    pub stateful: bool,
    pub rules: Vec<SgRule>,
}

/// One address group: the prefixes a rule's `remote_address_group_id` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressGroup {
    pub id: String,
    pub addresses: Vec<(IpAddr, u8)>,
}

/// IP protocol numbers, as the kernel side keys them.
pub use datapath_common::{
    IPPROTO_DCCP as PROTO_DCCP, IPPROTO_ICMP as PROTO_ICMP, IPPROTO_ICMPV6 as PROTO_ICMPV6,
    IPPROTO_SCTP as PROTO_SCTP, IPPROTO_TCP as PROTO_TCP, IPPROTO_UDP as PROTO_UDP,
    IPPROTO_UDPLITE as PROTO_UDPLITE, proto_has_ports as has_ports,
};

/// neutron-lib's IP_PROTOCOL_MAP, with "any" and the numbers that mean any (0, "ip").
fn protocol_number(name: &str) -> Option<Option<u8>> {
    let n = match name {
        "any" | "ip" | "hopopt" => return Some(None),
        "icmp" => 1,
        "igmp" => 2,
        "ipip" => 4,
        "tcp" => 6,
        "egp" => 8,
        "udp" => 17,
        "dccp" => 33,
        "ipv6-encap" => 41,
        "ipv6-route" => 43,
        "ipv6-frag" => 44,
        "rsvp" => 46,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "ipv6-icmp" | "icmpv6" => 58,
        "ipv6-nonxt" => 59,
        "ipv6-opts" => 60,
        "ospf" => 89,
        "vrrp" => 112,
        "pgm" => 113,
        "sctp" => 132,
        "udplite" => 136,
        _ => return None,
    };
    Some(Some(n))
}

/// The protocol of a rule: a name, a number (as a string or not), or null/"any".
fn rule_protocol(v: Option<&Value>, family: Family) -> Result<Option<u8>, String> {
    let proto = match v {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n <= 255 => Some(n as u8),
            _ => return Err(format!("protocol {n} is not a protocol number (0-255)")),
        },
        Some(Value::String(s)) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            match s.parse::<u8>() {
                Ok(n) => Some(n),
                Err(_) => return Err(format!("protocol {s:?} is not a protocol number (0-255)")),
            }
        }
        Some(Value::String(s)) => protocol_number(&s.to_ascii_lowercase())
            .ok_or_else(|| format!("protocol {s:?} is not a protocol"))?,
        Some(other) => return Err(format!("protocol is {other}, not a name or a number")),
    };
    Ok(match proto {
        // 0 means any in iptables, which the hybrid driver follows.
        Some(0) => None,
        // In an IPv6 rule, ICMP means ICMPv6.
        Some(PROTO_ICMP) if family == Family::V6 => Some(PROTO_ICMPV6),
        p => p,
    })
}

fn opt_port(obj: &serde_json::Map<String, Value>, key: &str) -> Result<Option<u64>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_u64().map(Some).ok_or_else(|| format!("{key} {n} is not a port number"))
        }
        Some(other) => Err(format!("{key} is {other}, not a number")),
    }
}

/// What neutron-server's `_validate_port_range` accepts.
fn rule_ports(protocol: Option<u8>, min: Option<u64>, max: Option<u64>) -> Result<Ports, String> {
    if min.is_none() && max.is_none() {
        return Ok(Ports::Any);
    }
    let Some(p) = protocol else {
        return Err("a port range needs a protocol".into());
    };
    if has_ports(p) {
        return match (min, max) {
            (Some(0), _) | (_, Some(0)) => Err("port 0 is not a valid port".into()),
            (Some(lo), Some(hi)) if lo <= hi && hi <= 65535 => {
                // The whole range is stored as no range.
                Ok(if (lo, hi) == (1, 65535) { Ports::Any } else { Ports::Range(lo as u16, hi as u16) })
            }
            (Some(lo), Some(hi)) if hi <= 65535 => {
                Err(format!("port_range_min {lo} is above port_range_max {hi}"))
            }
            (Some(_), Some(hi)) => Err(format!("port_range_max {hi} is above 65535")),
            _ => Err("a port range needs both port_range_min and port_range_max".into()),
        };
    }
    if p == PROTO_ICMP || p == PROTO_ICMPV6 {
        for (v, what) in [(min, "type (port_range_min)"), (max, "code (port_range_max)")] {
            if v.is_some_and(|v| v > 255) {
                return Err(format!("ICMP {what} {} is over 255", v.unwrap_or_default()));
            }
        }
        return match (min, max) {
            (None, Some(_)) => Err("an ICMP code (port_range_max) needs a type (port_range_min)".into()),
            (Some(t), code) => Ok(Ports::Icmp(t as u8, code.map(|c| c as u8))),
            (None, None) => Ok(Ports::Any),
        };
    }
    Err(format!("protocol {p} has no ports; only tcp, udp, sctp, dccp and udplite rules take a port range"))
}

fn opt_str<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{key} is {other}, not a string")),
    }
}

/// One rule, as neutron-server would accept it when created.
pub fn parse_rule(v: &Value) -> Result<SgRule, String> {
    let obj = v.as_object().ok_or("the rule is not an object")?;
    let id = opt_str(obj, "id")?.unwrap_or_default().to_string();
    let direction = match opt_str(obj, "direction")? {
        Some("ingress") => Direction::Ingress,
        Some("egress") => Direction::Egress,
        other => return Err(format!("direction {other:?} is not \"ingress\" or \"egress\"")),
    };
    let family = match opt_str(obj, "ethertype")? {
        Some("IPv4") => Family::V4,
        Some("IPv6") => Family::V6,
        other => return Err(format!("ethertype {other:?} is not \"IPv4\" or \"IPv6\"")),
    };
    let protocol = rule_protocol(obj.get("protocol"), family)?;
    let ports = rule_ports(protocol, opt_port(obj, "port_range_min")?, opt_port(obj, "port_range_max")?)?;
    let prefix = opt_str(obj, "remote_ip_prefix")?;
    let group = opt_str(obj, "remote_group_id")?;
    let address_group = opt_str(obj, "remote_address_group_id")?;
    let remote = match (prefix, group, address_group) {
        (None, None, None) => Remote::Any,
        (Some(p), None, None) => {
            let (ip, len) = parse_cidr(p).map_err(|e| format!("remote_ip_prefix {p:?}: {e}"))?;
            if Family::of(&ip) != family {
                return Err(format!("remote_ip_prefix {p} does not match ethertype {family:?}"));
            }
            if len == 0 { Remote::Any } else { Remote::Prefix(ip, len) }
        }
        (None, Some(g), None) => Remote::Group(g.to_string()),
        (None, None, Some(a)) => Remote::AddressGroup(a.to_string()),
        _ => {
            return Err(
                "only one of remote_ip_prefix, remote_group_id and remote_address_group_id may be given"
                    .into(),
            );
        }
    };
    Ok(SgRule { id, direction, family, protocol, ports, remote })
}

/// Reads `security_groups`; refused entries and rules go to `refused`.
pub fn read_security_groups(entries: &[Value], refused: &mut Vec<Refusal>) -> Vec<SecurityGroup> {
    let mut out: Vec<SecurityGroup> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let Some(obj) = entry.as_object() else {
            refused.push(Refusal { what: format!("security_groups[{i}]"), reason: "not an object".into() });
            continue;
        };
        let id = match opt_str(obj, "id") {
            Ok(Some(id)) if !id.is_empty() => id.to_string(),
            _ => {
                refused.push(Refusal { what: format!("security_groups[{i}]"), reason: "no id".into() });
                continue;
            }
        };
        let what = format!("security group {id}");
        if out.iter().any(|g| g.id == id) {
            refused.push(Refusal { what, reason: "duplicate id".into() });
            continue;
        }
        let stateful = match obj.get("stateful") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                refused.push(Refusal { what, reason: format!("stateful is {other}, not true or false") });
                continue;
            }
        };
        let name = opt_str(obj, "name").ok().flatten().unwrap_or_default().to_string();
        let mut rules = Vec::new();
        let list = match obj.get("security_group_rules") {
            None | Some(Value::Null) => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(other) => {
                refused
                    .push(Refusal { what, reason: format!("security_group_rules is {other}, not an array") });
                continue;
            }
        };
        for (j, r) in list.iter().enumerate() {
            match parse_rule(r) {
                Ok(rule) => rules.push(rule),
                Err(reason) => {
                    let rid = r.get("id").and_then(Value::as_str).map(str::to_string);
                    let what = match rid {
                        Some(rid) => format!("security group rule {rid} (group {id})"),
                        None => format!("security group {id} rules[{j}]"),
                    };
                    refused.push(Refusal { what, reason });
                }
            }
        }
        out.push(SecurityGroup { id, name, stateful, rules });
    }
    out
}

/// Reads `address_groups`; a group with a bad address is refused whole (a
/// partial group would admit less, or more if used in a negation-free way by
/// nobody; neutron rejects the whole update too).
pub fn read_address_groups(entries: &[Value], refused: &mut Vec<Refusal>) -> Vec<AddressGroup> {
    let mut out: Vec<AddressGroup> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let id = entry.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
        let what = if id.is_empty() { format!("address_groups[{i}]") } else { format!("address group {id}") };
        let parsed = (|| {
            if id.is_empty() {
                return Err("no id".to_string());
            }
            if out.iter().any(|g| g.id == id) {
                return Err("duplicate id".to_string());
            }
            let list = match entry.get("addresses") {
                None | Some(Value::Null) => &[][..],
                Some(Value::Array(a)) => a.as_slice(),
                Some(other) => return Err(format!("addresses is {other}, not an array")),
            };
            let mut addresses = Vec::new();
            for a in list {
                let s = a.as_str().ok_or_else(|| format!("address {a} is not a string"))?;
                addresses.push(parse_cidr(s).map_err(|e| format!("address {s:?}: {e}"))?);
            }
            Ok(AddressGroup { id: id.clone(), addresses })
        })();
        match parsed {
            Ok(g) => out.push(g),
            Err(reason) => refused.push(Refusal { what, reason }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(extra: Value) -> Result<SgRule, String> {
        let mut r = json!({"id": "r1", "direction": "ingress", "ethertype": "IPv4"});
        r.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        parse_rule(&r)
    }

    #[test]
    fn protocols_by_name_number_and_any() {
        let p = |v: Value| rule(json!({"protocol": v})).map(|r| r.protocol);
        assert_eq!(p(json!("tcp")), Ok(Some(6)));
        assert_eq!(p(json!("TCP")), Ok(Some(6)));
        assert_eq!(p(json!("6")), Ok(Some(6)));
        assert_eq!(p(json!(132)), Ok(Some(132)));
        assert_eq!(p(json!("vrrp")), Ok(Some(112)));
        for any in [json!(null), json!("any"), json!("0"), json!(0), json!("ip")] {
            assert_eq!(p(any.clone()), Ok(None), "{any}");
        }
        assert!(p(json!("256")).unwrap_err().contains("0-255"));
        assert!(p(json!("bogus")).unwrap_err().contains("not a protocol"));
        assert!(p(json!(-1)).is_err());
        let v6 = |v: Value| rule(json!({"ethertype": "IPv6", "protocol": v})).map(|r| r.protocol);
        assert_eq!(v6(json!("icmp")), Ok(Some(58)), "ICMP in an IPv6 rule is ICMPv6");
        assert_eq!(v6(json!("1")), Ok(Some(58)));
        assert_eq!(v6(json!("icmpv6")), Ok(Some(58)));
    }

    #[test]
    fn port_ranges_as_neutron_validates_them() {
        let ports = |proto: &str, min: Value, max: Value| {
            rule(json!({"protocol": proto, "port_range_min": min, "port_range_max": max})).map(|r| r.ports)
        };
        assert_eq!(ports("tcp", json!(22), json!(22)), Ok(Ports::Range(22, 22)));
        assert_eq!(ports("udp", json!(1), json!(65535)), Ok(Ports::Any), "the whole range is no range");
        assert_eq!(ports("sctp", json!(1), json!(1)), Ok(Ports::Range(1, 1)));
        assert_eq!(ports("dccp", json!(65535), json!(65535)), Ok(Ports::Range(65535, 65535)));
        assert!(ports("tcp", json!(0), json!(10)).unwrap_err().contains("port 0"));
        assert!(ports("tcp", json!(10), json!(9)).unwrap_err().contains("above"));
        assert!(ports("tcp", json!(10), json!(null)).unwrap_err().contains("both"));
        assert!(ports("tcp", json!(1), json!(65536)).unwrap_err().contains("65535"));
        assert!(ports("gre", json!(1), json!(2)).unwrap_err().contains("no ports"));
        assert!(
            rule(json!({"port_range_min": 22, "port_range_max": 22}))
                .unwrap_err()
                .contains("needs a protocol")
        );
        assert_eq!(ports("icmp", json!(8), json!(0)), Ok(Ports::Icmp(8, Some(0))));
        assert_eq!(ports("icmp", json!(8), json!(null)), Ok(Ports::Icmp(8, None)));
        assert_eq!(ports("icmp", json!(0), json!(0)), Ok(Ports::Icmp(0, Some(0))), "echo reply is type 0");
        assert!(ports("icmp", json!(null), json!(0)).unwrap_err().contains("needs a type"));
        assert!(ports("icmp", json!(256), json!(null)).unwrap_err().contains("over 255"));
    }

    #[test]
    fn remotes_are_exclusive_and_match_the_ethertype() {
        let remote = |extra: Value| rule(extra).map(|r| r.remote);
        assert_eq!(remote(json!({})), Ok(Remote::Any));
        assert_eq!(remote(json!({"remote_ip_prefix": "0.0.0.0/0"})), Ok(Remote::Any));
        assert_eq!(
            remote(json!({"remote_ip_prefix": "10.1.2.3/24"})),
            Ok(Remote::Prefix("10.1.2.0".parse().unwrap(), 24)),
            "host bits are cleared"
        );
        assert!(remote(json!({"remote_ip_prefix": "2001:db8::/32"})).unwrap_err().contains("ethertype"));
        assert_eq!(remote(json!({"remote_group_id": "g"})), Ok(Remote::Group("g".into())));
        assert_eq!(remote(json!({"remote_address_group_id": "a"})), Ok(Remote::AddressGroup("a".into())));
        assert!(
            remote(json!({"remote_group_id": "g", "remote_ip_prefix": "10.0.0.0/8"}))
                .unwrap_err()
                .contains("only one")
        );
        assert!(rule(json!({"direction": "in"})).unwrap_err().contains("direction"));
        assert!(rule(json!({"ethertype": "ipv4"})).unwrap_err().contains("ethertype"));
    }

    #[test]
    fn a_bad_rule_is_refused_alone_and_its_group_keeps_the_rest() {
        let mut refused = Vec::new();
        let groups = read_security_groups(
            &[
                json!({"id": "sg1", "stateful": false, "security_group_rules": [
                    {"id": "ok", "direction": "egress", "ethertype": "IPv4"},
                    {"id": "bad", "direction": "ingress", "ethertype": "IPv4", "protocol": "tcp", "port_range_min": 9, "port_range_max": 1}]}),
                json!({"id": "sg1"}),
                json!({"name": "no id"}),
                json!({"id": "sg2", "stateful": "yes"}),
            ],
            &mut refused,
        );
        assert_eq!(groups.len(), 1);
        assert!(!groups[0].stateful);
        assert_eq!(groups[0].rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["ok"]);
        let what: Vec<&str> = refused.iter().map(|r| r.what.as_str()).collect();
        assert_eq!(
            what,
            [
                "security group rule bad (group sg1)",
                "security group sg1",
                "security_groups[2]",
                "security group sg2"
            ]
        );
        let mut refused = Vec::new();
        let ags = read_address_groups(
            &[
                json!({"id": "a1", "addresses": ["10.0.0.0/8", "2001:db8::1"]}),
                json!({"id": "a2", "addresses": ["x"]}),
            ],
            &mut refused,
        );
        assert_eq!(ags.len(), 1);
        assert_eq!(ags[0].addresses.len(), 2);
        assert_eq!(refused[0].what, "address group a2");
    }
}
