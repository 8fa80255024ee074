//! Typed calls of an L2 agent to neutron-server (ML2's RpcCallbacks and the state report).

use super::envelope::excerpt;
use super::rpc::Rpc;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Topic of ML2's device and security-group calls.
pub const PLUGIN_TOPIC: &str = "q-plugin";
/// Topic of state reports.
pub const REPORTS_TOPIC: &str = "q-reports-plugin";
/// The agent type our mechanism driver looks for.
pub const AGENT_TYPE: &str = "eBPF datapath agent";
/// oslo's default call timeout.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Neutron's agent waits less for a state report than for other calls.
pub const REPORT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the agent tells neutron in `report_state`; l2pop and the mechanism driver read `configurations`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentState {
    /// The agent's host (binding:host_id of its ports).
    pub host: String,
    /// The agent's binary name.
    pub binary: String,
    /// Physical network -> interface.
    pub interface_mappings: BTreeMap<String, String>,
    /// Local VTEP address, if tunnels are used.
    pub tunneling_ip: Option<IpAddr>,
    /// Tunnel types, e.g. `["vxlan"]`.
    pub tunnel_types: Vec<String>,
    /// Number of devices the agent handles.
    pub devices: usize,
    /// Id of this agent run; neutron uses it to tell restarts apart.
    pub uuid: String,
}

impl AgentState {
    /// The `report_state` arguments, in the nested shape neutron expects.
    pub fn args(&self, start_flag: bool, now: SystemTime) -> Value {
        let mut state = json!({
            "binary": self.binary, "host": self.host, "topic": "N/A", "agent_type": AGENT_TYPE,
            "uuid": self.uuid,
            "configurations": {
                "interface_mappings": self.interface_mappings,
                "tunneling_ip": self.tunneling_ip.map(|ip| ip.to_string()),
                "tunnel_types": self.tunnel_types,
                "l2_population": true,
                "devices": self.devices,
            },
        });
        if start_flag {
            state["start_flag"] = json!(true);
        }
        json!({"agent_state": {"agent_state": state}, "time": iso_time(now)})
    }
}

/// `time` as Python's `datetime.isoformat()` of UTC now, which is what neutron's agents send.
fn iso_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((d.as_secs() / 86_400) as i64, d.as_secs() % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        d.subsec_micros()
    )
}

/// A fixed IP of a port.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FixedIp {
    /// Subnet id.
    pub subnet_id: String,
    /// The address.
    pub ip_address: String,
}

/// An allowed address pair; `ip_address` may be a CIDR.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AllowedAddressPair {
    /// Address or CIDR.
    pub ip_address: String,
    /// MAC, the port's own when absent.
    pub mac_address: Option<String>,
}

/// One entry of `get_devices_details_list_and_failed_devices` for a port neutron knows.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DeviceDetails {
    /// The device name as we sent it.
    pub device: String,
    /// Network id.
    pub network_id: String,
    /// Full port id.
    pub port_id: String,
    /// Port MAC.
    pub mac_address: String,
    /// Port admin state.
    pub admin_state_up: bool,
    /// Segment type: flat, vlan, vxlan, ...
    pub network_type: String,
    /// VLAN id or VNI.
    pub segmentation_id: Option<u32>,
    /// Physical network of flat/vlan segments.
    pub physical_network: Option<String>,
    /// Network MTU.
    pub mtu: Option<u32>,
    /// Fixed IPs.
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    /// Device owner, e.g. `compute:nova`.
    #[serde(default)]
    pub device_owner: String,
    /// Allowed address pairs.
    #[serde(default)]
    pub allowed_address_pairs: Vec<AllowedAddressPair>,
    /// Whether port security applies.
    #[serde(default)]
    pub port_security_enabled: Option<bool>,
    /// QoS policy of the port.
    #[serde(default)]
    pub qos_policy_id: Option<String>,
    /// QoS policy of the network.
    #[serde(default)]
    pub qos_network_policy_id: Option<String>,
}

/// The answer to a details request: usable details, devices refused with why, and devices neutron failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Details {
    /// Details we can program.
    pub devices: Vec<DeviceDetails>,
    /// Device -> why its details were unusable (unknown to neutron, missing fields, ...).
    pub refused: Vec<(String, String)>,
    /// Devices neutron itself reported as failed.
    pub failed_devices: Vec<String>,
}

/// The answer to `update_device_list`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
pub struct DeviceListResult {
    /// Devices set up.
    #[serde(default)]
    pub devices_up: Vec<String>,
    /// Devices that failed to go up.
    #[serde(default)]
    pub failed_devices_up: Vec<String>,
    /// Devices set down.
    #[serde(default)]
    pub devices_down: Vec<Value>,
    /// Devices that failed to go down.
    #[serde(default)]
    pub failed_devices_down: Vec<String>,
}

/// The port id prefix neutron matches for a tap: `get_devices_details_list_and_failed_devices`
/// does not strip `tap` itself (neutron 29), unlike the other device calls.
pub fn port_prefix(device: &str) -> &str {
    device.strip_prefix("tap").unwrap_or(device)
}

/// Parses a details answer; one bad entry is refused alone.
pub fn parse_details(v: &Value) -> Result<Details> {
    let devices = v
        .get("devices")
        .and_then(Value::as_array)
        .with_context(|| format!("details answer has no devices list: {}", excerpt(&v.to_string())))?;
    let mut out = Details::default();
    for d in devices {
        let name = d.get("device").and_then(Value::as_str).unwrap_or("?").to_string();
        // Neutron answers an unknown port with just {"device": name}.
        if d.get("port_id").is_none() {
            out.refused.push((name, "neutron does not know this port".into()));
            continue;
        }
        match DeviceDetails::deserialize(d) {
            Ok(dd) => out.devices.push(dd),
            Err(e) => out.refused.push((name, format!("{e}: {}", excerpt(&d.to_string())))),
        }
    }
    if let Some(f) = v.get("failed_devices") {
        out.failed_devices = Vec::<String>::deserialize(f)
            .with_context(|| format!("failed_devices is not a list of names: {}", excerpt(&f.to_string())))?;
    }
    Ok(out)
}

/// ML2's agent-facing API, for one agent.
#[derive(Clone)]
pub struct Plugin {
    rpc: Rpc,
    host: String,
    agent_id: String,
}

impl Plugin {
    /// Wraps an RPC client for the agent on `host`.
    pub fn new(rpc: Rpc, host: &str) -> Self {
        Self { rpc, host: host.to_string(), agent_id: format!("ebpfdp-{host}") }
    }

    /// A state report, as a call (as the OVS agent makes it): neutron answers
    /// `"new"`, `"alive"` or `"revived"`. `start_flag` marks the first of a run.
    pub async fn report_state(&self, state: &AgentState, start_flag: bool) -> Result<String> {
        let r = self
            .rpc
            .call(
                REPORTS_TOPIC,
                "report_state",
                state.args(start_flag, SystemTime::now()),
                "1.4",
                REPORT_TIMEOUT,
            )
            .await?;
        match r {
            Value::String(s) => Ok(s),
            other => bail!("report_state answered {}, expected a string", excerpt(&other.to_string())),
        }
    }

    /// Details of `devices` (tap names); see [`port_prefix`] for the names sent.
    pub async fn devices_details(&self, devices: &[String]) -> Result<Details> {
        let ids: Vec<&str> = devices.iter().map(|d| port_prefix(d)).collect();
        let args = json!({"devices": ids, "agent_id": self.agent_id, "host": self.host});
        let r = self
            .rpc
            .call(PLUGIN_TOPIC, "get_devices_details_list_and_failed_devices", args, "1.5", CALL_TIMEOUT)
            .await?;
        parse_details(&r)
    }

    /// Tells neutron which devices are up (the port goes ACTIVE) and down. With
    /// `refresh_tunnels`, l2population sends this host the full FDB of the
    /// networks of the ports set up (what the OVS agent asks after a restart).
    pub async fn update_device_list(
        &self,
        up: &[String],
        down: &[String],
        refresh_tunnels: bool,
    ) -> Result<DeviceListResult> {
        let args = json!({"devices_up": up, "devices_down": down, "agent_id": self.agent_id, "host": self.host,
                          "refresh_tunnels": refresh_tunnels});
        // 1.9 added refresh_tunnels (neutron/agent/rpc.py, PluginApi.update_device_list).
        let r = self.rpc.call(PLUGIN_TOPIC, "update_device_list", args, "1.9", CALL_TIMEOUT).await?;
        DeviceListResult::deserialize(&r)
            .with_context(|| format!("update_device_list answered {}", excerpt(&r.to_string())))
    }

    /// Security groups of ports (by port id), kept as JSON until the security-group work types it.
    pub async fn security_group_info_for_devices(&self, port_ids: &[String]) -> Result<Value> {
        let args = json!({"devices": port_ids, "call_version": "1.3"});
        self.rpc.call(PLUGIN_TOPIC, "security_group_info_for_devices", args, "1.3", CALL_TIMEOUT).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPTURED: &str = r#"{"device":"da64417a-c3","network_id":"2d47","port_id":"da64417a-c3f0","mac_address":"fa:16:3e:10:d1:75",
 "admin_state_up":true,"network_type":"vlan","segmentation_id":1000,"physical_network":"default","mtu":1500,
 "fixed_ips":[{"subnet_id":"cab8","ip_address":"10.10.10.155"}],"device_owner":"compute:nova",
 "allowed_address_pairs":[],"port_security_enabled":true,"qos_policy_id":null,"qos_network_policy_id":null,
 "profile":{},"propagate_uplink_status":false}"#;

    #[test]
    fn details_keep_good_entries_and_refuse_bad_ones_alone() {
        let good: Value = serde_json::from_str(CAPTURED).unwrap();
        let v = json!({"devices": [good, {"device": "beef"}, {"device": "cafe", "port_id": "p", "mtu": "x"}],
                       "failed_devices": ["dead"]});
        let d = parse_details(&v).unwrap();
        assert_eq!(d.devices.len(), 1);
        let dd = &d.devices[0];
        assert_eq!((dd.network_type.as_str(), dd.segmentation_id, dd.mtu), ("vlan", Some(1000), Some(1500)));
        assert_eq!(dd.fixed_ips[0].ip_address, "10.10.10.155");
        assert_eq!(d.refused[0], ("beef".to_string(), "neutron does not know this port".to_string()));
        assert_eq!(d.refused[1].0, "cafe");
        assert!(
            d.refused[1].1.contains("network_id") || d.refused[1].1.contains("mtu"),
            "{:?}",
            d.refused[1]
        );
        assert_eq!(d.failed_devices, vec!["dead"]);
        let e = format!("{:#}", parse_details(&json!({"x": 1})).unwrap_err());
        assert!(e.contains("no devices list"), "{e}");
    }

    #[test]
    fn details_are_asked_by_port_id_prefix() {
        assert_eq!(port_prefix("tapda64417a-c3"), "da64417a-c3");
        assert_eq!(port_prefix("da64417a-c3"), "da64417a-c3");
    }

    #[test]
    fn report_state_shape() {
        let s = AgentState {
            host: "node0".into(),
            binary: "neutron-ebpfdp-agent".into(),
            interface_mappings: BTreeMap::from([("default".into(), "eth1".into())]),
            tunneling_ip: Some("192.0.2.10".parse().unwrap()),
            tunnel_types: vec!["vxlan".into()],
            devices: 3,
            uuid: "u1".into(),
        };
        let t = UNIX_EPOCH + Duration::from_micros(1_796_161_777_046_826);
        let a = s.args(true, t);
        assert_eq!(a["time"], "2026-12-01T21:49:37.046826");
        let st = &a["agent_state"]["agent_state"];
        assert_eq!(st["agent_type"], "eBPF datapath agent");
        assert_eq!(st["topic"], "N/A");
        assert_eq!(st["start_flag"], true);
        let c = &st["configurations"];
        assert_eq!(c["interface_mappings"]["default"], "eth1");
        assert_eq!(
            (c["tunneling_ip"].as_str(), c["l2_population"].as_bool(), c["devices"].as_u64()),
            (Some("192.0.2.10"), Some(true), Some(3))
        );
        assert!(s.args(false, t)["agent_state"]["agent_state"].get("start_flag").is_none());
        assert_eq!(iso_time(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29T00:00:00.000000");
    }
}
