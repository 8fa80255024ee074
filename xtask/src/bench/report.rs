//! The results: one record per (scenario, metric) with the datapath/legacy
//! ratio, the goals of issue 6, the terminal table and `results.json`.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

/// Which direction of a metric is the good one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// A measured quantity: its name in results.json, its unit and its good direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub better: Better,
}

/// 64-byte UDP frames per second counted at the receiver, sent by the XDP live-frames generator.
pub const PPS: Metric = Metric { name: "pps_64b", unit: "pps", better: Better::Higher };
/// The same frames sent by trafgen (AF_PACKET), whose own cost squeezes the ratio.
pub const PPS_TRAFGEN: Metric = Metric { name: "pps_64b_trafgen", unit: "pps", better: Better::Higher };
/// iperf3 TCP throughput, as the receiver counted it.
pub const TCP: Metric = Metric { name: "tcp_gbps", unit: "Gbit/s", better: Better::Higher };
/// sockperf ping-pong round trip with both ends polling (the path's own latency), median.
pub const RTT_P50: Metric = Metric { name: "rtt_p50_us", unit: "us", better: Better::Lower };
/// The same, 99th percentile.
pub const RTT_P99: Metric = Metric { name: "rtt_p99_us", unit: "us", better: Better::Lower };
/// sockperf ping-pong round trip with blocking sockets (a wake-up per message), median.
pub const RTT_BLOCKING_P50: Metric =
    Metric { name: "rtt_blocking_p50_us", unit: "us", better: Better::Lower };
/// The same, 99th percentile.
pub const RTT_BLOCKING_P99: Metric =
    Metric { name: "rtt_blocking_p99_us", unit: "us", better: Better::Lower };
/// New TCP connections completed per second (connect, then RST), one at a time:
/// the handshake's round trip.
pub const CONNS: Metric = Metric { name: "new_tcp_conns_per_s", unit: "conn/s", better: Better::Higher };
/// The same with `CONNS_IN_FLIGHT` connects outstanding: what the node sustains.
pub const CONNS_PARALLEL: Metric =
    Metric { name: "new_tcp_conns_per_s_parallel", unit: "conn/s", better: Better::Higher };
/// Busy time of the CPU that carries the whole 64-byte path, per received frame.
pub const CPU_NS: Metric = Metric { name: "cpu_ns_per_pkt", unit: "ns", better: Better::Lower };
/// `cpu_ns_per_pkt` minus that of a bare veth pair: what the path itself costs.
pub const PATH_NS: Metric = Metric { name: "path_ns_per_pkt", unit: "ns", better: Better::Lower };
/// Reconcile of 10,000 ports on 4,000 networks from the bindings file into empty maps.
pub const PROGRAM_10K: Metric = Metric { name: "program_10k_ports_s", unit: "s", better: Better::Lower };
/// Reconcile of one port added or removed in the bindings file with 10,000 present.
pub const CHANGE: Metric = Metric { name: "one_port_change_ms", unit: "ms", better: Better::Lower };
/// The same with 1,000 ports present, to show how the change cost grows with the total.
pub const CHANGE_1K: Metric = Metric { name: "one_port_change_at_1k_ms", unit: "ms", better: Better::Lower };
/// Reconcile of one port's tap and details arriving from neutron (or going) with 10,000 present.
pub const CHANGE_NEUTRON: Metric =
    Metric { name: "one_port_change_neutron_ms", unit: "ms", better: Better::Lower };
/// The same with 1,000 ports present: the goal is no more than with 10,000.
pub const CHANGE_NEUTRON_1K: Metric =
    Metric { name: "one_port_change_neutron_at_1k_ms", unit: "ms", better: Better::Lower };
/// Kernel memory of every map of the datapath holding the 10,000 ports.
pub const MAP_MEMORY: Metric = Metric { name: "map_memory_mb", unit: "MB", better: Better::Lower };
/// A rule added to (or removed from) the group every port is in, 10,000 ports present,
/// from the bindings file: until the kernel's maps hold the new policy.
pub const SG_RULE_CHANGE: Metric = Metric { name: "sg_rule_change_ms", unit: "ms", better: Better::Lower };
/// The same from neutron: the notification, the answer of security_group_info_for_devices
/// taken in, the policies re-derived and written.
pub const SG_RULE_CHANGE_NEUTRON: Metric =
    Metric { name: "sg_rule_change_neutron_ms", unit: "ms", better: Better::Lower };
/// Kernel memory of every map with 10,000 ports of 10 rules each and 100,000 tracked connections.
pub const SG_MAP_MEMORY: Metric = Metric { name: "sg_map_memory_mb", unit: "MB", better: Better::Lower };

/// Neutron source: from a tap appearing to its port ACTIVE in neutron (what Nova waits for), median.
pub const TAP_TO_ACTIVE_P50: Metric =
    Metric { name: "tap_to_active_p50_ms", unit: "ms", better: Better::Lower };
/// The same, 99th percentile.
pub const TAP_TO_ACTIVE_P99: Metric =
    Metric { name: "tap_to_active_p99_ms", unit: "ms", better: Better::Lower };
/// Bindings file: from a tap appearing to `datapath ports` saying up, median.
pub const TAP_TO_UP_P50: Metric = Metric { name: "tap_to_up_file_p50_ms", unit: "ms", better: Better::Lower };
/// The same, 99th percentile.
pub const TAP_TO_UP_P99: Metric = Metric { name: "tap_to_up_file_p99_ms", unit: "ms", better: Better::Lower };

/// The scenario whose "legacy" column is a plain Linux bridge between two VMs on
/// one node, not the hybrid chain: the datapath must not be slower than that either.
pub const VS_PLAIN_BRIDGE: &str = "same-node-vs-plain-bridge";

/// The datapath's same-node pps with its metrics scraped every second (`datapath`), against none (`legacy` column).
pub const SCRAPED_VS_NOT: &str = "datapath-scraped-vs-not";
/// The datapath's same-node pps with a monitor of every drop listening (`datapath`), against none (`legacy` column).
pub const MONITORED_VS_NOT: &str = "datapath-monitored-vs-not";
/// The datapath through a policed and marked pair (`datapath`, limits that never bind)
/// against the same path without a QoS policy (`legacy` column): what policing costs.
pub const POLICED_VS_NOT: &str = "datapath-policed-vs-not";
/// The datapath with 1,000 rules per port (`datapath`) against itself with 10 (`legacy` column).
pub const SG_1000_VS_10: &str = "datapath-sg1000-vs-sg10";
/// The datapath with security groups (`datapath`) against the same path without (`legacy` column).
pub const SG_VS_NO_SG: &str = "datapath-sg100-vs-no-sg";
/// Two namespaces on one veth pair, no path between them (`datapath` column),
/// against legacy through the 100-rule pair: the ratio no path can beat.
pub const FLOOR_VS_LEGACY_SG: &str = "veth-floor-vs-legacy-sg100";

/// The uplinks' XDP stage (`datapath` column) against the TC stage alone (`legacy` column).
pub const XDP_VS_TC: &str = "xdp-vs-tc";
/// Frames of a VLAN no node serves, flooded into an uplink, dropped per second.
pub const FLOOD_DROPS: Metric = Metric { name: "flood_drops_per_s", unit: "pps", better: Better::Higher };
/// VXLAN frames from a host that is no tunnel peer, flooded into the underlay, dropped per second.
pub const FOREIGN_VTEP_DROPS: Metric =
    Metric { name: "foreign_vtep_drops_per_s", unit: "pps", better: Better::Higher };
/// What the uplink's stage alone drops of that flood per second of one CPU:
/// 1 s over its own cost per frame (the flood's CPU time per frame less that
/// of a veth whose driver drops every frame at once, `XDP_DROP`).
pub const FLOOD_STAGE: Metric =
    Metric { name: "flood_stage_drops_per_cpu_s", unit: "pps", better: Better::Higher };
/// The same for the foreign VTEP's flood, at the underlay's stage.
pub const FOREIGN_VTEP_STAGE: Metric =
    Metric { name: "foreign_vtep_stage_drops_per_cpu_s", unit: "pps", better: Better::Higher };
/// 64-byte frames per second from the wire that the datapath delivered to a VM's tap.
pub const TAP_PPS: Metric = Metric { name: "pps_64b_to_tap", unit: "pps", better: Better::Higher };
/// What the tap's reader (the VM's side) got of those.
pub const TAP_READ: Metric = Metric { name: "pps_64b_tap_read", unit: "pps", better: Better::Higher };

/// One figure: the datapath's and the legacy chain's (None where it makes no sense).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub scenario: String,
    pub metric: Metric,
    pub datapath: Option<f64>,
    pub legacy: Option<f64>,
}

impl Record {
    /// datapath / legacy, as results.json defines it.
    pub fn ratio(&self) -> Option<f64> {
        match (self.datapath, self.legacy) {
            (Some(d), Some(l)) if l > 0.0 => Some(d / l),
            _ => None,
        }
    }

    /// How many times better than legacy: the ratio, inverted where lower is better.
    pub fn gain(&self) -> Option<f64> {
        let r = self.ratio()?;
        match self.metric.better {
            Better::Higher => Some(r),
            Better::Lower if r > 0.0 => Some(1.0 / r),
            Better::Lower => None,
        }
    }

    /// The minimum gain issue 6 (and issue 14, for security groups) asks for, if it sets one for this figure.
    pub fn goal(&self) -> Option<f64> {
        match (self.scenario.as_str(), self.metric.name) {
            ("same-node-vlan", "pps_64b") => Some(3.0),
            ("same-node-sg100", "pps_64b") => Some(3.0),
            // "new TCP connections per second": what a node sustains, so the run
            // that keeps the CPU busy; the one-at-a-time run is the handshake's RTT.
            ("same-node-sg100", "new_tcp_conns_per_s_parallel") => Some(2.0),
            // "1,000 rules per port cost no more than 10 % over 10"
            (SG_1000_VS_10, "pps_64b" | "new_tcp_conns_per_s" | "new_tcp_conns_per_s_parallel") => Some(0.9),
            // "TCP throughput with security groups not lower than without by more than 5 %"
            (SG_VS_NO_SG, "tcp_gbps") => Some(0.95),
            // "at most half its p99 latency"
            ("same-node-vlan", "rtt_p99_us") => Some(2.0),
            ("cross-node-vlan", "pps_64b") => Some(2.0),
            // Issue 16: drops in the driver at 4x the TC stage's rate, the fast
            // path at 1.5x TC's into a tap, and no latency lost.
            // "dropped at the uplink at 4x the rate that the TC stage drops": the
            // stages' own rates; the floods' rates include their generator's cost.
            (XDP_VS_TC, "flood_stage_drops_per_cpu_s" | "foreign_vtep_stage_drops_per_cpu_s") => Some(4.0),
            (XDP_VS_TC, "pps_64b_to_tap") => Some(1.5),
            (XDP_VS_TC, "rtt_p99_us") => Some(1.0),
            // Reported, not bounded: the cost of a policed port next to an unpoliced one.
            (POLICED_VS_NOT, _) => None,
            // "no lower than the legacy chain's"
            (_, "tcp_gbps") => Some(1.0),
            _ => None,
        }
    }

    /// The most the figure may be, where an issue sets an absolute bound (not a gain).
    pub fn limit(&self) -> Option<f64> {
        match self.metric.name {
            // "a rule change reaches the kernel within 100 ms with 10,000 ports
            // present": rule changes come from neutron-server. From the file,
            // re-reading the whole 10,000-port document alone costs about as
            // much (`one_port_change_ms`), so that figure is reported, not bound.
            "sg_rule_change_neutron_ms" => Some(100.0),
            _ => None,
        }
    }

    /// The record as results.json holds it: one line, keys in the documented order.
    pub fn to_json(&self) -> String {
        let num = |x: Option<f64>| Value::from(x.map(round)).to_string();
        format!(
            "{{\"scenario\": {}, \"metric\": {}, \"unit\": {}, \"datapath\": {}, \"legacy\": {}, \"ratio\": {}}}",
            Value::from(self.scenario.as_str()),
            Value::from(self.metric.name),
            Value::from(self.metric.unit),
            num(self.datapath),
            num(self.legacy),
            num(self.ratio()),
        )
    }
}

/// Keeps four significant digits: more is noise on this machine.
fn round(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let scale = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

fn value(x: Option<f64>) -> String {
    match x {
        None => "-".into(),
        Some(x) if x.abs() >= 1000.0 => format!("{x:.0}"),
        Some(x) if x.abs() >= 10.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
    }
}

/// The terminal table: every figure, the ratio, the gain and the goal.
pub fn table(records: &[Record]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<26} {:<24} {:<7} {:>11} {:>11} {:>7} {:>7}  goal",
        "scenario", "metric", "unit", "datapath", "legacy", "ratio", "gain"
    );
    for r in records {
        let goal = match (r.goal(), r.gain(), r.limit(), r.datapath) {
            (Some(g), Some(have), ..) if have >= g => format!(">= {g}x: met"),
            (Some(g), Some(_), ..) => format!(">= {g}x: MISSED"),
            (Some(g), None, ..) => format!(">= {g}x: not measured"),
            (None, _, Some(l), Some(v)) if v <= l => format!("<= {l} {}: met", r.metric.unit),
            (None, _, Some(l), Some(_)) => format!("<= {l} {}: MISSED", r.metric.unit),
            _ => String::new(),
        };
        let _ = writeln!(
            s,
            "{:<26} {:<24} {:<7} {:>11} {:>11} {:>7} {:>7}  {goal}",
            r.scenario,
            r.metric.name,
            r.metric.unit,
            value(r.datapath),
            value(r.legacy),
            r.ratio().map_or("-".into(), |x| format!("{x:.2}")),
            r.gain().map_or("-".into(), |x| format!("{x:.2}x")),
        );
    }
    s
}

/// results.json: a list of {"scenario","metric","unit","datapath","legacy","ratio"}, one per line.
pub fn json(records: &[Record]) -> String {
    let lines: Vec<String> = records.iter().map(Record::to_json).collect();
    format!("[\n  {}\n]\n", lines.join(",\n  "))
}

/// Writes `json(records)` to `path`.
pub fn write_json(records: &[Record], path: &Path) -> Result<()> {
    std::fs::write(path, json(records)).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(scenario: &str, metric: Metric, d: Option<f64>, l: Option<f64>) -> Record {
        Record { scenario: scenario.into(), metric, datapath: d, legacy: l }
    }

    #[test]
    fn ratio_and_gain_follow_the_good_direction() {
        let pps = rec("same-node-vlan", PPS, Some(300.0), Some(100.0));
        assert_eq!(pps.ratio(), Some(3.0));
        assert_eq!(pps.gain(), Some(3.0));
        let rtt = rec("same-node-vlan", RTT_P99, Some(25.0), Some(100.0));
        assert_eq!(rtt.ratio(), Some(0.25));
        assert_eq!(rtt.gain(), Some(4.0));
        assert_eq!(rec("control-plane", CHANGE, Some(1.0), None).ratio(), None);
        assert_eq!(rec("x", PPS, Some(1.0), Some(0.0)).ratio(), None);
    }

    #[test]
    fn goals_of_issue_6() {
        assert_eq!(rec("same-node-vlan", PPS, None, None).goal(), Some(3.0));
        assert_eq!(rec("cross-node-vlan", PPS, None, None).goal(), Some(2.0));
        assert_eq!(rec("cross-node-vxlan", TCP, None, None).goal(), Some(1.0));
        assert_eq!(rec("cross-node-vxlan", PPS, None, None).goal(), None);
        let t = table(&[rec("same-node-vlan", PPS, Some(200.0), Some(100.0))]);
        assert!(t.contains(">= 3x: MISSED"), "{t}");
        assert_eq!(rec(SG_1000_VS_10, PPS, None, None).goal(), Some(0.9));
        assert_eq!(rec(SG_VS_NO_SG, TCP, None, None).goal(), Some(0.95));
        let t = table(&[rec("control-plane", SG_RULE_CHANGE_NEUTRON, Some(40.0), None)]);
        assert!(t.contains("<= 100 ms: met"), "{t}");
        let t = table(&[rec("control-plane", SG_RULE_CHANGE_NEUTRON, Some(140.0), None)]);
        assert!(t.contains("<= 100 ms: MISSED"), "{t}");
        assert_eq!(rec("control-plane", SG_RULE_CHANGE, None, None).limit(), None);
    }

    #[test]
    fn json_has_exactly_the_six_fields_in_order_and_nulls() {
        let records = [
            rec("control-plane", MAP_MEMORY, Some(12.345678), None),
            rec("same-node-vlan", PPS, Some(2.0), Some(1.0)),
        ];
        let text = json(&records);
        let v: Value = serde_json::from_str(&text).unwrap();
        let first = v[0].as_object().unwrap();
        assert_eq!(first.len(), 6, "{text}");
        assert_eq!(v[0]["metric"], "map_memory_mb");
        assert_eq!(v[0]["datapath"], 12.35);
        assert!(v[0]["legacy"].is_null() && v[0]["ratio"].is_null());
        assert_eq!(v[1]["ratio"], 2.0);
        let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        let keys = ["scenario", "metric", "unit", "datapath", "legacy", "ratio"];
        assert!(keys.windows(2).all(|w| at(w[0]) < at(w[1])), "{text}");
    }

    #[test]
    fn rounds_to_four_digits() {
        assert_eq!(round(123456.7), 123500.0);
        assert_eq!(round(0.0012345), 0.001235);
        assert_eq!(round(0.0), 0.0);
    }
}
