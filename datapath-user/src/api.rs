//! The control protocol, as types shared by the agent and the CLI: one JSON
//! request per line in, one JSON reply per line out. A reply's shape is its
//! documentation; `datapath <cmd> --json` prints the reply's result with the
//! protocol version beside it, so scripts can rely on both.
//!
//! ```text
//! {"cmd": "stats", "port": "tap02407769-97"}
//! {"version": 1, "ok": true, "result": {"ports": [...]}}
//! {"version": 1, "ok": false, "error": {"kind": "not_found", "message": "no port \"x\" on this node ..."}}
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Version of the request and reply shapes below; bumped when one changes incompatibly.
pub const API_VERSION: u32 = 1;

/// What a client can ask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Variants without fields are written with braces: only then does serde
    // refuse a field that does not belong to them (`{"cmd": "ports", "port": ...}`).
    /// Agent summary.
    Status {},
    /// Every port (and unbound tap, and uplink) with its state.
    Ports {},
    /// Networks with ports on this node.
    Networks {},
    /// Forwarding entries, of one network (id, name or local index) or all.
    Fdb {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        network: Option<String>,
    },
    /// Counters per port, of one port (device or port id) or all.
    Stats {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// Tracked connections, of one port (device or port id) or all, as `conntrack -L` lists them.
    Conntrack {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// Deletes tracked connections, of one port or all, as `conntrack -D` does.
    ConntrackFlush {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
    },
    /// Runs the real program on a frame (hex) against the live maps, changing nothing.
    /// On the VXLAN device, `vni` and `vtep` say where the frame came from.
    Trace {
        port: String,
        frame: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vni: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vtep: Option<String>,
        /// Trace the frame as delivered to the port (its egress program) instead of sent by it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        receive: bool,
    },
    /// The Prometheus metrics, as the metrics endpoint serves them.
    Metrics {},
    /// Streams drops (of one port, or one reason, or all) as they happen and,
    /// with `decisions`, every decision at the port. After the reply, the
    /// connection carries one `MonitorLine` per line until the client closes it.
    Monitor {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        decisions: bool,
    },
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request itself is wrong (not JSON, unknown command, missing field).
    BadRequest,
    /// It names a port or network this node does not have.
    NotFound,
    /// The agent could not answer (a map or program call failed).
    Failed,
    /// The agent has too many clients; try again.
    Busy,
}

/// A failed request: what kind of failure, and the message for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

/// One reply line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply<T> {
    /// `API_VERSION` of the agent that answered.
    pub version: u32,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl<T> Reply<T> {
    /// The reply carrying `outcome`.
    pub fn from_result(outcome: Result<T, ApiError>) -> Self {
        match outcome {
            Ok(result) => Self { version: API_VERSION, ok: true, result: Some(result), error: None },
            Err(error) => Self { version: API_VERSION, ok: false, result: None, error: Some(error) },
        }
    }
}

/// A successful answer, whatever the request was (the CLI reads the type it asked for).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Answer {
    Status(StatusReply),
    Ports(PortsReply),
    Networks(NetworksReply),
    Fdb(FdbReply),
    Stats(StatsReply),
    Trace(TraceReply),
    Conntrack(ConntrackReply),
    Flushed(FlushReply),
    Metrics(MetricsReply),
    Monitoring(MonitorStarted),
}

/// `monitor`: what the stream that follows carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorStarted {
    /// The port followed, or "" for every port.
    pub port: String,
    /// The drop reason followed, or "" for every reason.
    pub reason: String,
    /// Whether every decision at the port comes, not only the drops.
    pub decisions: bool,
    /// Bytes of each frame an event carries.
    pub snap: usize,
}

/// One line of a `monitor` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MonitorLine {
    /// A drop, or a decision at the followed port.
    Event(MonitorEventRow),
    /// Events the kernel did not send since the monitor started (over its
    /// per-CPU rate, or a full ring buffer), and those this client was too
    /// slow to take; sent at most once a second, when they grew.
    Suppressed { kernel: u64, client: u64 },
}

/// One event of `monitor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MonitorEventRow {
    /// Unix time in nanoseconds.
    pub time_ns: u64,
    pub device: String,
    /// Neutron port id ("" for an uplink or a device the agent does not know).
    pub port_id: String,
    /// Neutron network id ("" when none).
    pub network: String,
    /// The program: vm_port, vm_port_out, uplink_in or tunnel_in.
    pub program: String,
    /// `drop` or `forward`.
    pub verdict: String,
    /// The drop reason's label, when dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The action's label, when not dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// The frame's length.
    pub len: u32,
    /// Its first bytes, in hex.
    pub frame: String,
}

/// `metrics`: the OpenMetrics text that `metrics_address` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReply {
    pub text: String,
}

/// A result as `--json` prints it: the reply's result, with the protocol version.
#[derive(Debug, Serialize)]
pub struct Versioned<'a, T> {
    pub api_version: u32,
    #[serde(flatten)]
    pub result: &'a T,
}

/// `status`: the agent's summary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReply {
    pub host: String,
    pub pin_path: String,
    pub abi_version: u32,
    pub kernel: String,
    /// How programs are hooked (tcx, or netlink cls_bpf filters, and why).
    pub tc_hook: String,
    /// Where the uplinks' XDP stage runs, by device (`native`, or `tc only (why)`);
    /// empty with `xdp = "off"`.
    #[serde(default)]
    pub xdp: BTreeMap<String, String>,
    /// The binding source: `file` or `neutron`.
    pub source: String,
    /// Where the bindings come from: the file's path, or the transport URL (passwords masked).
    pub bindings: String,
    /// Why the source is not in force or not healthy, if so.
    pub bindings_error: Option<String>,
    /// The Neutron source's link, reports and devices, in one line.
    pub source_health: Option<String>,
    /// Reconciliations since start.
    pub syncs: u64,
    /// Ports by state name (`up`, `admin_down`, `no_device`, `unbound`, `error`).
    pub ports: BTreeMap<String, usize>,
    /// Networks with ports on this node.
    pub networks: usize,
    /// Map entries or attachments that failed in the last reconciliation.
    pub errors: Vec<String>,
    /// Binding entries refused, with why.
    pub refused: Vec<Refused>,
}

/// A refused binding entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub what: String,
    pub reason: String,
}

/// `ports`: every port, unbound tap and uplink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortsReply {
    pub ports: Vec<PortRow>,
}

/// One port's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortRow {
    pub device: String,
    /// Neutron port id ("" for unbound taps and uplinks).
    pub port_id: String,
    /// `vm`, `network`, `subport`, `uplink`, `tunnel` or `unbound`.
    pub kind: String,
    /// The device's ifindex; a subport's id (at least `SUBPORT_ID_BASE`, no device's).
    pub ifindex: Option<u32>,
    /// Neutron network id ("" when none).
    pub network: String,
    pub local_index: Option<u32>,
    /// `up`, `admin_down`, `no_device`, `unbound` or `error`.
    pub state: String,
    /// Why, for `error`.
    pub detail: String,
    /// The trunk the port is the parent or a subport of (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk_id: Option<String>,
    /// A subport's parent port's device: the tap that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// A subport's VLAN id on that tap (the VM's tag, never on the wire).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vid: Option<u16>,
    /// The QoS policy in force on the port (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qos_policy_id: Option<String>,
}

/// `networks`: the networks with ports on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworksReply {
    pub networks: Vec<NetworkRow>,
}

/// One network's place on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkRow {
    pub id: String,
    pub name: String,
    /// `flat`, `vlan` or `vxlan`.
    #[serde(rename = "type")]
    pub net_type: String,
    pub segmentation_id: Option<u32>,
    pub physical_network: Option<String>,
    pub local_index: Option<u32>,
    pub local_ports: usize,
    /// Empty when programmed; otherwise why not.
    pub error: String,
}

/// `fdb`: forwarding entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdbReply {
    pub entries: Vec<FdbRow>,
}

/// One forwarding entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FdbRow {
    pub network: String,
    pub local_index: u32,
    pub mac: String,
    /// The port (or uplink, or tunnel device) the MAC lives behind.
    pub device: String,
    /// `local`, `remote` (from the bindings) or `learned`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Seconds since a learned MAC was last seen.
    pub age_s: Option<u64>,
}

/// `conntrack`: tracked connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConntrackReply {
    pub connections: Vec<ConnRow>,
}

/// One tracked connection, as one port sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnRow {
    /// The port's device.
    pub port: String,
    /// `tcp`, `udp`, `icmp`, `ipv6-icmp`, ... or the protocol number.
    pub protocol: String,
    /// The port's end: address and port (ICMP echo: the identifier).
    pub local: String,
    pub remote: String,
    /// Who opened it: `ingress` (the other end) or `egress` (the port).
    pub direction: String,
    /// `new` (no reply yet), `established`, `closing` (a FIN) or `reset`.
    pub state: String,
    /// The Neutron rule that admitted it (`fixed allowance` for DHCP and NDP),
    /// or `-` when its policy has changed since.
    pub rule: String,
    pub age_s: u64,
    /// Seconds until it expires without packets.
    pub expires_s: u64,
}

/// `conntrack flush`: how many connections went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlushReply {
    pub flushed: usize,
}

/// `stats`: counters per port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    pub ports: Vec<PortStats>,
}

/// One port's counters, summed over CPUs; labels are `Action::label` and `DropReason::label`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PortStats {
    pub device: String,
    pub port_id: String,
    pub kind: String,
    pub ifindex: u32,
    /// The port's counter slot in `PORT_STATS`.
    pub slot: u32,
    /// Every action counter.
    pub actions: BTreeMap<String, u64>,
    /// The drop counters that are not zero.
    pub drops: BTreeMap<String, u64>,
    /// Frames dropped, all reasons.
    pub dropped: u64,
    /// The counters of the port's XDP stage (uplinks where it runs or ran).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<StageStats>,
}

/// The counters of one stage of a port (the XDP stage of an uplink).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageStats {
    /// Every action counter.
    pub actions: BTreeMap<String, u64>,
    /// The drop counters that are not zero.
    pub drops: BTreeMap<String, u64>,
    /// Frames dropped, all reasons.
    pub dropped: u64,
}

/// `trace`: what the program decided for a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceReply {
    pub port: String,
    /// The program that decided; on an uplink with the XDP stage,
    /// `uplink_xdp` (it dropped the frame) or `uplink_xdp -> uplink_in`.
    pub program: String,
    /// `forward` or `drop`.
    pub verdict: String,
    /// The drop reason's label, when dropped.
    pub reason: Option<String>,
    /// The action's label, when forwarded.
    pub action: Option<String>,
    pub network: String,
    pub local_index: u32,
    pub targets: Vec<TraceTarget>,
    /// The deciding program's return code (TC; or XDP when `uplink_xdp` dropped it).
    pub tc_verdict: u32,
    /// The frame as the program left it, hex.
    pub frame_out: String,
    /// How the port's security groups judged it (None: the port is not filtered,
    /// or the frame is not IP): the Neutron rule, a tracked connection, a fixed
    /// allowance, or that no rule admits it.
    #[serde(default)]
    pub security_group: Option<String>,
}

/// One destination of a traced frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceTarget {
    pub device: String,
    pub ifindex: u32,
    /// VLAN pushed towards it; 0 for none.
    pub vlan: u32,
    /// Remote VTEP of a tunnel target.
    pub vtep: Option<String>,
    pub vni: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_in_their_wire_form() {
        for (r, wire) in [
            (Request::Ports {}, r#"{"cmd":"ports"}"#),
            (Request::Fdb { network: None }, r#"{"cmd":"fdb"}"#),
            (Request::Stats { port: Some("tap1".into()) }, r#"{"cmd":"stats","port":"tap1"}"#),
            (Request::Conntrack { port: None }, r#"{"cmd":"conntrack"}"#),
            (
                Request::ConntrackFlush { port: Some("tap1".into()) },
                r#"{"cmd":"conntrack_flush","port":"tap1"}"#,
            ),
            (
                Request::Trace {
                    port: "p".into(),
                    frame: "ff".into(),
                    vni: None,
                    vtep: None,
                    receive: false,
                },
                r#"{"cmd":"trace","port":"p","frame":"ff"}"#,
            ),
        ] {
            assert_eq!(serde_json::to_string(&r).unwrap(), wire);
            assert_eq!(serde_json::from_str::<Request>(wire).unwrap(), r);
        }
    }

    #[test]
    fn replies_carry_the_version_and_either_a_result_or_an_error() {
        let ok = Reply::from_result(Ok(PortsReply { ports: vec![] }));
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"version":1,"ok":true,"result":{"ports":[]}}"#);
        let err: Reply<PortsReply> = Reply::from_result(Err(ApiError::new(ErrorKind::NotFound, "no port x")));
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(text, r#"{"version":1,"ok":false,"error":{"kind":"not_found","message":"no port x"}}"#);
        assert_eq!(serde_json::from_str::<Reply<PortsReply>>(&text).unwrap(), err);
    }

    /// The trunk fields came after version 1's rows: a row without them reads
    /// and writes as before, and a subport's carry its trunk, parent and VLAN id.
    #[test]
    fn port_rows_name_their_trunk_only_when_they_have_one() {
        let v1 = serde_json::json!({"device": "tapa0000000-0a", "port_id": "a0000000-0a", "kind": "vm",
            "ifindex": 7, "network": "n1", "local_index": 1, "state": "up", "detail": ""});
        let row: PortRow = serde_json::from_value(v1.clone()).unwrap();
        assert_eq!((&row.trunk_id, &row.parent, row.vid, &row.qos_policy_id), (&None, &None, None, &None));
        assert_eq!(serde_json::to_value(&row).unwrap(), v1, "no trunk and no policy: none of their fields");
        let sub = PortRow {
            device: "tapa0000000-0a.101".into(),
            kind: "subport".into(),
            ifindex: Some(0x8000_0001),
            trunk_id: Some("t1".into()),
            parent: Some("tapa0000000-0a".into()),
            vid: Some(101),
            qos_policy_id: Some("q1".into()),
            ..row
        };
        let v = serde_json::to_value(&sub).unwrap();
        assert_eq!(
            (&v["trunk_id"], &v["parent"], &v["vid"], &v["qos_policy_id"]),
            (&"t1".into(), &"tapa0000000-0a".into(), &101.into(), &"q1".into())
        );
        assert_eq!(serde_json::from_value::<PortRow>(v).unwrap(), sub);
    }

    #[test]
    fn json_output_puts_the_version_beside_the_result() {
        let r = FdbReply { entries: vec![] };
        let v = serde_json::to_value(Versioned { api_version: API_VERSION, result: &r }).unwrap();
        assert_eq!(v, serde_json::json!({"api_version": 1, "entries": []}));
    }
}
