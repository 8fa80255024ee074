//! From neutron's device details and l2pop FDB entries to the agent's bindings model.

use super::notify::NetworkFdb;
use super::plugin::DeviceDetails;
use crate::bindings::Bindings;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The host name given to the ports behind a remote VTEP: l2pop names VTEPs, not hosts.
pub fn vtep_host(ip: &IpAddr) -> String {
    format!("vtep-{ip}")
}

/// Builds the bindings of `host` from device details and the l2pop FDB.
///
/// The result goes through the same validation as a bindings file (`Bindings::parse_str`), so a
/// detail with an unknown network type, a missing segmentation id or a bad MAC is refused on its
/// own, with the reason, in `refused`.
///
/// `groups` gives each local port's security groups (neutron's
/// `security_group_info_for_devices`); None until they are known, and then
/// the ports carry no `security_groups` key. A port the answer left out is
/// in no group: it gets the fixed allowances only (fail closed).
pub fn bindings(
    host: &str,
    details: &[DeviceDetails],
    fdb: &BTreeMap<String, NetworkFdb>,
    groups: Option<&BTreeMap<String, Vec<String>>>,
) -> Result<Bindings> {
    let mut networks: BTreeMap<&str, Value> = BTreeMap::new();
    let mut ports = Vec::new();
    for d in details {
        networks.entry(&d.network_id).or_insert_with(|| {
            json!({
                "id": d.network_id, "provider:network_type": d.network_type,
                "provider:physical_network": d.physical_network, "provider:segmentation_id": d.segmentation_id,
                "mtu": d.mtu, "admin_state_up": true,
            })
        });
        let mut port = json!({
            "id": d.port_id, "network_id": d.network_id, "mac_address": d.mac_address,
            "fixed_ips": d.fixed_ips, "device_owner": d.device_owner, "binding:host_id": host,
            "admin_state_up": d.admin_state_up, "port_security_enabled": d.port_security_enabled.unwrap_or(true),
            "allowed_address_pairs": d.allowed_address_pairs,
        });
        if let Some(g) = groups {
            port["security_groups"] = json!(g.get(&d.port_id).cloned().unwrap_or_default());
        }
        ports.push(port);
    }
    let mut agents = Vec::new();
    for (net_id, net) in fdb {
        // Remote ports of a network without local ports would only be refused as orphans.
        if !networks.contains_key(net_id.as_str()) {
            continue;
        }
        for (vtep, entries) in &net.ports {
            agents.push(json!({"host": vtep_host(vtep), "agent_type": "l2population",
                               "configurations": {"tunneling_ip": vtep.to_string()}}));
            // l2pop lists a port once per IP; the model wants one port with all its IPs.
            let mut by_mac: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
            for e in entries.iter().filter(|e| !e.is_flooding()) {
                by_mac.entry(&e.mac).or_default().push(json!({"subnet_id": "", "ip_address": e.ip}));
            }
            for (mac, ips) in by_mac {
                // l2pop carries no port id; this one is stable per MAC and never names a local tap.
                let id = format!("fdb-{}", mac.replace(':', ""));
                ports.push(json!({"id": id, "network_id": net_id, "mac_address": mac, "fixed_ips": ips,
                                  "binding:host_id": vtep_host(vtep), "device_owner": "remote"}));
            }
        }
    }
    let doc =
        json!({"networks": networks.into_values().collect::<Vec<_>>(), "ports": ports, "agents": agents});
    Bindings::parse_str(&doc.to_string(), "neutron RPC").context("converting neutron details to bindings")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::NetworkType;
    use crate::neutron::notify::FdbPort;

    fn detail(port: &str, net: &str, ty: &str, seg: Option<u32>, mac: &str) -> DeviceDetails {
        serde_json::from_value(json!({
            "device": &port[..11], "network_id": net, "port_id": port, "mac_address": mac, "admin_state_up": true,
            "network_type": ty, "segmentation_id": seg, "physical_network": if ty == "vxlan" { None } else { Some("default") },
            "mtu": 1450, "fixed_ips": [{"subnet_id": "s", "ip_address": "10.20.0.5"}], "device_owner": "compute:nova",
            "allowed_address_pairs": [], "port_security_enabled": true
        }))
        .unwrap()
    }

    /// Found by the bench: every remote port is "fdb-fa163e..", so the second
    /// VTEP's ports of a network were refused as sharing a tap name.
    #[test]
    fn ports_behind_two_vteps_are_all_kept() {
        let d = [detail("aaaaaaaa-1111-2222", "n1", "vxlan", Some(458), "fa:16:3e:00:00:01")];
        let port = |mac: &str, ip: &str| vec![FdbPort { mac: mac.into(), ip: ip.into() }];
        let ports = BTreeMap::from([
            ("192.0.2.15".parse::<IpAddr>().unwrap(), port("fa:16:3e:00:00:04", "10.64.0.3")),
            ("192.0.2.19".parse::<IpAddr>().unwrap(), port("fa:16:3e:00:00:08", "10.64.0.4")),
        ]);
        let fdb = BTreeMap::from([(
            "n1".to_string(),
            NetworkFdb { segment_id: Some(458), network_type: "vxlan".into(), ports },
        )]);
        let b = bindings("node0", &d, &fdb, None).unwrap();
        assert_eq!(b.refused, vec![]);
        let ids: Vec<&str> = b.ports.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["aaaaaaaa-1111-2222", "fdb-fa163e000004", "fdb-fa163e000008"]);
    }

    #[test]
    fn details_and_fdb_become_bindings() {
        let d = [detail("aaaaaaaa-1111-2222", "n1", "vxlan", Some(458), "fa:16:3e:00:00:01")];
        let vtep: IpAddr = "192.0.2.11".parse().unwrap();
        let fdb = BTreeMap::from([
            (
                "n1".to_string(),
                NetworkFdb {
                    segment_id: Some(458),
                    network_type: "vxlan".into(),
                    ports: BTreeMap::from([(
                        vtep,
                        vec![
                            FdbPort { mac: "00:00:00:00:00:00".into(), ip: "0.0.0.0".into() },
                            FdbPort { mac: "fa:16:3e:6d:0c:bd".into(), ip: "10.20.0.91".into() },
                            FdbPort { mac: "fa:16:3e:6d:0c:bd".into(), ip: "10.20.0.92".into() },
                        ],
                    )]),
                },
            ),
            (
                "other".to_string(),
                NetworkFdb { segment_id: Some(9), network_type: "vxlan".into(), ports: BTreeMap::new() },
            ),
        ]);
        let b = bindings("node0", &d, &fdb, None).unwrap();
        assert_eq!(b.refused, vec![]);
        assert_eq!(b.networks.len(), 1);
        assert_eq!(
            (&b.networks[0].network_type, b.networks[0].segmentation_id, b.networks[0].mtu),
            (&NetworkType::Vxlan, Some(458), 1450)
        );
        assert_eq!(b.ports_on_host("node0").count(), 1);
        let remote: Vec<_> = b.ports_on_host("vtep-192.0.2.11").collect();
        assert_eq!(remote.len(), 1, "the flooding entry is no port");
        assert_eq!(remote[0].mac, [0xfa, 0x16, 0x3e, 0x6d, 0x0c, 0xbd]);
        assert_eq!(remote[0].fixed_ips.len(), 2);
        assert_eq!(b.agents[0].tunneling_ip, Some("192.0.2.11".parse().unwrap()));
    }

    #[test]
    fn a_bad_detail_is_refused_alone() {
        let d = [
            detail("aaaaaaaa-1111-2222", "n1", "vlan", Some(100), "fa:16:3e:00:00:01"),
            detail("bbbbbbbb-1111-2222", "n2", "geneve", Some(5), "fa:16:3e:00:00:02"),
            detail("cccccccc-1111-2222", "n3", "vlan", None, "fa:16:3e:00:00:03"),
            detail("dddddddd-1111-2222", "n1", "vlan", Some(100), "01:00:5e:00:00:01"),
        ];
        let b = bindings("node0", &d, &BTreeMap::new(), None).unwrap();
        assert_eq!(b.ports.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["aaaaaaaa-1111-2222"]);
        let reasons = format!("{:?}", b.refused);
        for want in ["geneve", "n3", "segmentation_id", "dddddddd", "01:00:5e:00:00:01"] {
            assert!(reasons.contains(want), "{want} not in {reasons}");
        }
    }
}
