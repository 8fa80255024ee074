//! What an L2 agent consumes from neutron-server: the topics, and the typed notifications on them.

use super::envelope::{decode_request, excerpt};
use super::rpc::{Incoming, Subscription};
use anyhow::{Context, Result};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The versioned topic on which neutron-server pushes address groups.
pub const ADDRESS_GROUP_TOPIC: &str = "neutron-vo-AddressGroup-1.2";

/// Fanout topics an L2 agent consumes (neutron_lib.agent.topics: `q-agent-notifier-<resource>-<event>`).
pub const FANOUT_TOPICS: [&str; 7] = [
    "q-agent-notifier-port-update",
    "q-agent-notifier-port-delete",
    "q-agent-notifier-network-update",
    "q-agent-notifier-network-delete",
    "q-agent-notifier-security_group-update",
    "q-agent-notifier-l2population-update",
    // Address groups change by OVO push only (neutron's `ovo_rpc`), never
    // by a security-group notification; 1.2 is neutron 29's AddressGroup.
    ADDRESS_GROUP_TOPIC,
];

/// The subscriptions of the agent on `host`: every fanout topic, and l2pop's host-directed topic.
pub fn subscriptions(host: &str) -> Vec<Subscription> {
    let mut subs: Vec<_> =
        FANOUT_TOPICS.iter().map(|t| Subscription::Fanout { topic: (*t).to_string() }).collect();
    subs.push(Subscription::Topic { routing_key: format!("q-agent-notifier-l2population-update.{host}") });
    subs
}

/// One (MAC, IP) of an l2pop port list; `00:00:00:00:00:00`/`0.0.0.0` marks the VTEP for flooding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "(String, String)")]
pub struct FdbPort {
    /// MAC address as neutron sends it.
    pub mac: String,
    /// IP address as neutron sends it.
    pub ip: String,
}

impl From<(String, String)> for FdbPort {
    fn from((mac, ip): (String, String)) -> Self {
        Self { mac, ip }
    }
}

impl FdbPort {
    /// Whether this is the flooding entry (BUM traffic goes to this VTEP).
    pub fn is_flooding(&self) -> bool {
        self.mac == "00:00:00:00:00:00" && self.ip == "0.0.0.0"
    }
}

/// l2pop entries of one network.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NetworkFdb {
    /// Segmentation id (VNI or VLAN id).
    pub segment_id: Option<u32>,
    /// Network type, e.g. `vxlan`.
    pub network_type: String,
    /// Ports behind each VTEP.
    #[serde(default)]
    pub ports: BTreeMap<IpAddr, Vec<FdbPort>>,
}

/// Before and after of a port's addresses behind one VTEP (`update_fdb_entries`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FdbChange {
    /// Entries to remove.
    #[serde(default)]
    pub before: Vec<FdbPort>,
    /// Entries to add.
    #[serde(default)]
    pub after: Vec<FdbPort>,
}

/// A notification from neutron-server, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Notification {
    /// A port changed; `port` is the full port dict.
    PortUpdate {
        /// The port's id.
        port_id: String,
        /// The port dict (binding:*, security_groups, allowed_address_pairs, ...).
        port: Value,
    },
    /// A port was deleted.
    PortDelete {
        /// The port's id.
        port_id: String,
    },
    /// A network changed.
    NetworkUpdate {
        /// The network's id.
        network_id: String,
        /// The network dict.
        network: Value,
    },
    /// A network was deleted.
    NetworkDelete {
        /// The network's id.
        network_id: String,
    },
    /// Rules of these security groups changed.
    SecurityGroupRuleUpdated {
        /// Security group ids.
        security_groups: Vec<String>,
    },
    /// Members of these security groups changed.
    SecurityGroupMemberUpdated {
        /// Security group ids.
        security_groups: Vec<String>,
    },
    /// Provider rules changed (e.g. DHCP); `None` means all devices.
    SecurityGroupProviderUpdated {
        /// Devices to refresh, when neutron names them.
        devices_to_update: Option<Vec<String>>,
    },
    /// An OVO push of the resources of a `neutron-vo-*` topic (address
    /// groups: the only one subscribed), created, updated or deleted.
    ResourcesPushed {
        /// `created`, `updated` or `deleted`.
        event_type: String,
    },
    /// l2pop: new FDB entries, by network id.
    AddFdbEntries(BTreeMap<String, NetworkFdb>),
    /// l2pop: FDB entries gone, by network id.
    RemoveFdbEntries(BTreeMap<String, NetworkFdb>),
    /// l2pop: a port's IPs changed: network id -> VTEP -> before/after.
    UpdateFdbEntries(BTreeMap<String, BTreeMap<IpAddr, FdbChange>>),
    /// A method this agent does not handle; logged and ignored.
    Unknown {
        /// The method name.
        method: String,
    },
}

#[derive(Deserialize)]
struct Push {
    event_type: String,
}
#[derive(Deserialize)]
struct PortId {
    port_id: String,
}
#[derive(Deserialize)]
struct NetworkId {
    network_id: String,
}
#[derive(Deserialize)]
struct SecurityGroups {
    security_groups: Vec<String>,
}
#[derive(Deserialize)]
struct Provider {
    #[serde(default)]
    devices_to_update: Option<Vec<String>>,
}
#[derive(Deserialize)]
struct Fdb<T> {
    fdb_entries: T,
}
#[derive(Deserialize)]
struct ChgIp {
    chg_ip: BTreeMap<String, BTreeMap<IpAddr, FdbChange>>,
}

fn args<T: DeserializeOwned>(method: &str, v: &Value) -> Result<T> {
    T::deserialize(v).with_context(|| format!("arguments of {method}: {}", excerpt(&v.to_string())))
}

fn id_of(method: &str, v: &Value, key: &str) -> Result<(String, Value)> {
    let obj = v.get(key).with_context(|| format!("{method} has no {key}: {}", excerpt(&v.to_string())))?;
    let id = obj
        .get("id")
        .and_then(Value::as_str)
        .with_context(|| format!("{method}: {key} has no string id: {}", excerpt(&obj.to_string())))?;
    Ok((id.to_string(), obj.clone()))
}

/// Decodes a message from a subscription; the error says where it came from and what it was.
pub fn decode(m: &Incoming) -> Result<Notification> {
    decode_body(&m.body)
        .with_context(|| format!("message on exchange {:?} key {:?}", m.exchange, m.routing_key))
}

fn decode_body(body: &[u8]) -> Result<Notification> {
    let req = decode_request(body)?;
    let (method, a) = (req.method.as_str(), &req.args);
    Ok(match method {
        "port_update" => {
            let (port_id, port) = id_of(method, a, "port")?;
            Notification::PortUpdate { port_id, port }
        }
        "port_delete" => Notification::PortDelete { port_id: args::<PortId>(method, a)?.port_id },
        "network_update" => {
            let (network_id, network) = id_of(method, a, "network")?;
            Notification::NetworkUpdate { network_id, network }
        }
        "network_delete" => {
            Notification::NetworkDelete { network_id: args::<NetworkId>(method, a)?.network_id }
        }
        "security_groups_rule_updated" => Notification::SecurityGroupRuleUpdated {
            security_groups: args::<SecurityGroups>(method, a)?.security_groups,
        },
        "security_groups_member_updated" => Notification::SecurityGroupMemberUpdated {
            security_groups: args::<SecurityGroups>(method, a)?.security_groups,
        },
        "security_groups_provider_updated" => Notification::SecurityGroupProviderUpdated {
            devices_to_update: args::<Provider>(method, a)?.devices_to_update,
        },
        "push" => Notification::ResourcesPushed { event_type: args::<Push>(method, a)?.event_type },
        "add_fdb_entries" => Notification::AddFdbEntries(args::<Fdb<_>>(method, a)?.fdb_entries),
        "remove_fdb_entries" => Notification::RemoveFdbEntries(args::<Fdb<_>>(method, a)?.fdb_entries),
        "update_fdb_entries" => {
            Notification::UpdateFdbEntries(args::<Fdb<ChgIp>>(method, a)?.fdb_entries.chg_ip)
        }
        other => Notification::Unknown { method: other.to_string() },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(inner: Value) -> Incoming {
        let body = json!({"oslo.version": "2.0", "oslo.message": inner.to_string()});
        Incoming {
            exchange: "x_fanout".into(),
            routing_key: String::new(),
            body: body.to_string().into_bytes(),
        }
    }

    #[test]
    fn captured_messages() {
        let d = |v| decode(&msg(v)).unwrap();
        assert_eq!(
            d(json!({"method":"port_delete","args":{"port_id":"6009"},"version":"1.0","_unique_id":"u"})),
            Notification::PortDelete { port_id: "6009".into() }
        );
        assert_eq!(
            d(
                json!({"method":"security_groups_rule_updated","args":{"security_groups":["3f1a"]},"version":"1.1"})
            ),
            Notification::SecurityGroupRuleUpdated { security_groups: vec!["3f1a".into()] }
        );
        // resources_rpc 1.1: the list goes with it; only the event is read.
        assert_eq!(
            d(json!({"method":"push","args":{"resource_list":[{"versioned_object.name":"AddressGroup",
                "versioned_object.data":{"id":"ag1","addresses":["10.0.0.0/24"]}}],"event_type":"updated"},
                "version":"1.1"})),
            Notification::ResourcesPushed { event_type: "updated".into() }
        );
        assert_eq!(
            d(json!({"method":"network_delete","args":{"network_id":"n1"}})),
            Notification::NetworkDelete { network_id: "n1".into() }
        );
        let fdb = d(
            json!({"method":"add_fdb_entries","args":{"fdb_entries":{"net1":{"segment_id":458,"network_type":"vxlan",
            "ports":{"192.0.2.10":[["00:00:00:00:00:00","0.0.0.0"],["fa:16:3e:6d:0c:bd","10.20.0.91"]]}}}},"version":"1.0"}),
        );
        let Notification::AddFdbEntries(nets) = fdb else { panic!("{fdb:?}") };
        let net = &nets["net1"];
        assert_eq!((net.segment_id, net.network_type.as_str()), (Some(458), "vxlan"));
        let ports = &net.ports[&"192.0.2.10".parse::<IpAddr>().unwrap()];
        assert!(ports[0].is_flooding() && !ports[1].is_flooding());
        assert_eq!(ports[1], FdbPort { mac: "fa:16:3e:6d:0c:bd".into(), ip: "10.20.0.91".into() });
        let port = json!({"id": "p1", "security_groups": [], "binding:host_id": "node0"});
        assert_eq!(
            d(json!({"method":"port_update","args":{"port": port.clone()}})),
            Notification::PortUpdate { port_id: "p1".into(), port }
        );
        let chg =
            d(json!({"method":"update_fdb_entries","args":{"fdb_entries":{"chg_ip":{"net1":{"192.0.2.11":
            {"before":[["fa:16:3e:00:00:01","10.0.0.1"]],"after":[["fa:16:3e:00:00:01","10.0.0.2"]]}}}}}}));
        let Notification::UpdateFdbEntries(c) = chg else { panic!("{chg:?}") };
        assert_eq!(c["net1"][&"192.0.2.11".parse::<IpAddr>().unwrap()].after[0].ip, "10.0.0.2");
        assert_eq!(
            d(json!({"method":"security_groups_provider_updated","args":{}})),
            Notification::SecurityGroupProviderUpdated { devices_to_update: None }
        );
        assert_eq!(
            d(json!({"method":"qos_policy_update","args":{}})),
            Notification::Unknown { method: "qos_policy_update".into() }
        );
    }

    #[test]
    fn malformed_messages_say_what_and_where() {
        let cases = [
            (json!({"method":"port_delete","args":{}}), "port_id"),
            (json!({"method":"port_update","args":{"port":{"name":"x"}}}), "no string id"),
            (
                json!({"method":"add_fdb_entries","args":{"fdb_entries":{"n":{"network_type":"vxlan","ports":{"not-an-ip":[]}}}}}),
                "not-an-ip",
            ),
            (
                json!({"method":"add_fdb_entries","args":{"fdb_entries":{"n":{"network_type":"vxlan","ports":{"192.0.2.1":[["only-mac"]]}}}}}),
                "only-mac",
            ),
            (
                json!({"method":"security_groups_member_updated","args":{"security_groups":"sg"}}),
                "security_groups_member_updated",
            ),
        ];
        for (inner, want) in cases {
            let e = format!("{:#}", decode(&msg(inner)).unwrap_err());
            assert!(e.contains(want) && e.contains("x_fanout"), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn subscribes_to_every_agent_topic_and_its_host() {
        let subs = subscriptions("node0");
        assert_eq!(subs.len(), 8);
        assert!(subs.contains(&Subscription::Topic {
            routing_key: "q-agent-notifier-l2population-update.node0".into()
        }));
        assert!(
            subs.contains(&Subscription::Fanout { topic: "q-agent-notifier-security_group-update".into() })
        );
        assert!(subs.contains(&Subscription::Fanout { topic: ADDRESS_GROUP_TOPIC.into() }));
    }
}
