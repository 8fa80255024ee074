//! A port's QoS entry: the policy that applies to it (its own, else its
//! network's unless it is a `network:*` owner, as in Neutron) turned into
//! the costs the kernel's policers charge.

use datapath_common::{QOS_DIR_EGRESS, QOS_DIR_INGRESS, QOS_F_DSCP, QosPort};

use crate::bindings::{Network, Port, QosDirection, QosPolicies, QosRule};

/// Neutron's burst when a rule gives none: 80 % of a second at the rate
/// (the OVS agent's `ingress_policing_burst`).
const DEFAULT_BURST_PERCENT: u64 = 80;

/// The id of the policy that applies to `port` of `net`, if any.
pub fn policy_of<'a>(port: &'a Port, net: &'a Network) -> Option<&'a str> {
    port.qos_policy_id
        .as_deref()
        .or_else(|| if port.is_network_owned() { None } else { net.qos_policy_id.as_deref() })
}

/// The kernel entry of `port`'s policy, or None when it enforces nothing
/// (no policy, or only placement hints).
pub fn entry(port: &Port, net: &Network, policies: &QosPolicies) -> Option<QosPort> {
    let policy = policies.get(policy_of(port, net)?)?;
    let mut e = QosPort {
        ps_per_byte: [0; 2],
        byte_burst_ns: [0; 2],
        ps_per_packet: [0; 2],
        packet_burst_ns: [0; 2],
        flags: 0,
        dscp: 0,
        _pad: [0; 3],
    };
    let dir = |d: &QosDirection| if *d == QosDirection::Ingress { QOS_DIR_INGRESS } else { QOS_DIR_EGRESS };
    for rule in &policy.rules {
        match rule {
            QosRule::BandwidthLimit { direction, max_kbps, max_burst_kbps } if *max_kbps > 0 => {
                let d = dir(direction);
                // A byte is 8 bits; a kbit/s is 1000 bit/s: 8e9 ps per byte at 1 kbit/s.
                e.ps_per_byte[d] = 8_000_000_000 / max_kbps;
                e.byte_burst_ns[d] = burst_ns(*max_burst_kbps, *max_kbps);
            }
            QosRule::PacketRateLimit { direction, max_kpps, max_burst_kpps } if *max_kpps > 0 => {
                let d = dir(direction);
                e.ps_per_packet[d] = 1_000_000_000 / max_kpps;
                e.packet_burst_ns[d] = burst_ns(*max_burst_kpps, *max_kpps);
            }
            QosRule::DscpMarking { dscp_mark } => {
                e.flags |= QOS_F_DSCP;
                e.dscp = *dscp_mark;
            }
            // A limit of 0 limits nothing (as in the OVS agent); minimums are Nova's.
            _ => {}
        }
    }
    let enforced = e.flags != 0 || e.ps_per_byte.iter().chain(&e.ps_per_packet).any(|c| *c != 0);
    enforced.then_some(e)
}

/// A burst of `burst` units (kbit, kilo-packets) at `rate` units per second, in ns.
fn burst_ns(burst: u64, rate: u64) -> u64 {
    let burst = if burst == 0 { rate * DEFAULT_BURST_PERCENT / 100 } else { burst };
    burst * 1_000_000_000 / rate
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::bindings::{Bindings, Catalog};

    fn setup(port_policy: Option<&str>, net_policy: Option<&str>, owner: &str) -> (Bindings, QosPolicies) {
        let doc = json!({
            "networks": [{"id": "n", "provider:network_type": "vxlan", "provider:segmentation_id": 5, "qos_policy_id": net_policy}],
            "ports": [{"id": "aaaaaaaa-0001", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                       "binding:host_id": "node0", "device_owner": owner, "qos_policy_id": port_policy}],
            "qos_policies": [
                {"id": "limits", "rules": [
                    {"type": "bandwidth_limit", "max_kbps": 100000, "max_burst_kbps": 10000},
                    {"type": "bandwidth_limit", "max_kbps": 1000000, "direction": "ingress"},
                    {"type": "packet_rate_limit", "max_kpps": 20, "max_burst_kpps": 2, "direction": "ingress"}]},
                {"id": "mark", "rules": [{"type": "dscp_marking", "dscp_mark": 26}]},
                {"id": "hints", "rules": [{"type": "minimum_bandwidth", "min_kbps": 1000},
                                          {"type": "bandwidth_limit", "max_kbps": 0}]}]
        });
        let b = Bindings::parse_str(&doc.to_string(), "t").unwrap();
        assert!(b.refused.is_empty(), "{:?}", b.refused);
        let policies = (*Catalog::split(b.clone()).qos).clone();
        (b, policies)
    }

    fn entry_of(port_policy: Option<&str>, net_policy: Option<&str>, owner: &str) -> Option<QosPort> {
        let (b, policies) = setup(port_policy, net_policy, owner);
        entry(&b.ports[0], &b.networks[0], &policies)
    }

    #[test]
    fn limits_become_costs_per_direction() {
        let e = entry_of(Some("limits"), None, "compute:nova").unwrap();
        // 100 Mbit/s egress: 80 ps per byte; its 10 Mbit burst is 100 ms of it.
        assert_eq!((e.ps_per_byte[QOS_DIR_EGRESS], e.byte_burst_ns[QOS_DIR_EGRESS]), (80_000, 100_000_000));
        // 1 Gbit/s ingress with Neutron's default burst: 80 % of a second.
        assert_eq!((e.ps_per_byte[QOS_DIR_INGRESS], e.byte_burst_ns[QOS_DIR_INGRESS]), (8_000, 800_000_000));
        // 20 kpps: 50 us per packet, a burst of 2000 packets is 100 ms.
        assert_eq!(
            (e.ps_per_packet[QOS_DIR_INGRESS], e.packet_burst_ns[QOS_DIR_INGRESS]),
            (50_000_000, 100_000_000)
        );
        assert_eq!((e.ps_per_packet[QOS_DIR_EGRESS], e.flags), (0, 0));
    }

    #[test]
    fn the_ports_policy_wins_and_network_owners_skip_the_networks() {
        let e = entry_of(Some("mark"), Some("limits"), "compute:nova").unwrap();
        assert_eq!((e.flags, e.dscp, e.ps_per_byte), (QOS_F_DSCP, 26, [0, 0]), "the port's own policy");
        assert!(entry_of(None, Some("limits"), "compute:nova").is_some(), "the network's policy");
        assert!(entry_of(None, Some("limits"), "network:dhcp").is_none(), "not for network:* owners");
        assert!(entry_of(Some("limits"), None, "network:router_interface").is_some(), "unless their own");
        assert!(
            entry_of(Some("hints"), None, "compute:nova").is_none(),
            "minimums and zero limits enforce nothing"
        );
    }
}
