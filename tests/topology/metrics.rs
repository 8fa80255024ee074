//! The Prometheus endpoint of a running agent: exact counters for frames the
//! test sent, the node's series, and a port's series gone with the port;
//! and its log as JSON lines.

use std::{collections::BTreeMap, time::Duration};

use datapath_tests::{
    cluster::{Cluster, PortSpec},
    netns::http_get,
    raw,
};
use datapath_user::{bindings::parse_mac, frames::*};

use crate::scenario::*;

const METRICS: &str = "127.0.0.1:9110";

/// Every sample of the exposition: `name{labels}` -> value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The scrape of node0's endpoint, parsed.
fn scrape(c: &Cluster) -> BTreeMap<String, f64> {
    let (status, body) = http_get(&c.node("node0").ns, METRICS, "/metrics").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.ends_with("# EOF\n"), "an OpenMetrics exposition ends with # EOF: {body}");
    samples(&body)
}

fn port_labels(p: &PortSpec) -> String {
    format!("port_id=\"{}\",device=\"{}\",network=\"{}\"", p.id, p.device(), p.network_id)
}

#[test]
fn the_metrics_endpoint_counts_what_was_sent_and_forgets_a_port_that_went_and_the_log_is_json() {
    let config = format!("metrics_address = \"{METRICS}\"\nlog_format = \"json\"");
    let (c, a, b, ia) = local_pair("metrics", &config);

    let (a_labels, b_labels) = (port_labels(&a), port_labels(&b));
    let spoof_series = format!("datapath_port_dropped_frames_total{{{a_labels},reason=\"src_mac_spoof\"}}");
    let rx_series = format!("datapath_port_frames_total{{{a_labels},action=\"rx\"}}");
    let before = scrape(&c);
    assert!(before.contains_key(&rx_series), "{before:#?}");
    assert!(!before.contains_key(&spoof_series), "no spoofing yet, so no series: {before:#?}");

    // 25 frames from vm-1 with a source MAC that is not its own.
    let forged = parse_mac("fa:16:3e:66:66:66").unwrap();
    let frame = eth(
        parse_mac(&b.mac).unwrap(),
        forged,
        0x0800,
        &ipv4_udp([10, 10, 10, 2], [10, 10, 10, 12], 40000, 9, b"metrics"),
    );
    raw::send_in(&c.vms[ia].ns, "eth0", &vec![frame; 25]).unwrap();
    let mut after = BTreeMap::new();
    let counted = datapath_tests::wait_until(Duration::from_secs(5), || {
        after = scrape(&c);
        after.get(&spoof_series) == Some(&25.0)
    });
    assert!(counted, "the 25 spoofed frames: {:?}", after.get(&spoof_series));
    let rx = |m: &BTreeMap<String, f64>| m.get(&rx_series).copied().unwrap_or(0.0);
    assert!(rx(&after) - rx(&before) >= 25.0, "rx counts them too: {} then {}", rx(&before), rx(&after));
    assert_eq!(after["datapath_dropped_frames_total{reason=\"src_mac_spoof\"}"], 25.0, "the node's total");
    assert_eq!(after["datapath_dropped_frames_total{reason=\"arp_spoof\"}"], 0.0, "every reason, zeros too");

    // The node's series.
    assert!(after["datapath_reconciles_total"] >= 1.0);
    assert!(after["datapath_reconcile_duration_seconds_count"] >= 1.0);
    assert_eq!(after["datapath_bindings_ok"], 1.0);
    assert!(after["datapath_bindings_last_good_load_timestamp_seconds"] > 1.7e9);
    // vm-1, vm-2 and the uplink.
    assert_eq!(after["datapath_map_entries{map=\"PORTS\"}"], 3.0, "{after:#?}");
    assert_eq!(after["datapath_map_capacity{map=\"PORTS\"}"], 4096.0);
    assert_eq!(after["datapath_map_capacity{map=\"CONNTRACK\"}"], 262_144.0);
    let build = after.keys().find(|k| k.starts_with("datapath_build{")).expect("the build series");
    assert!(build.contains("source=\"file\"") && build.contains("hook=\""), "{build}");

    // Other paths and methods are refused.
    let (status, _) = http_get(&c.node("node0").ns, METRICS, "/").unwrap();
    assert_eq!(status, 404);

    // vm-2's port goes: its series go with it, vm-1's stay.
    assert!(after.keys().any(|k| k.contains(&b_labels)));
    c.write_bindings(&bindings(&[&a])).unwrap();
    let gone = datapath_tests::wait_until(Duration::from_secs(10), || {
        let m = scrape(&c);
        !m.keys().any(|k| k.contains(&b_labels)) && m.contains_key(&rx_series)
    });
    assert!(gone, "vm-2's series outlived its port: {:#?}", scrape(&c));

    // The log: one JSON object a line, the port events among them.
    let log = c.node("node0").agent.as_ref().unwrap().log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}")))
        .collect();
    for l in &lines {
        assert!(l["ts"].is_string() && l["level"].is_string() && l["msg"].is_string(), "{l}");
    }
    let said = |text: &str| lines.iter().any(|l| l["msg"].as_str().is_some_and(|m| m.contains(text)));
    assert!(said(&format!("port {} {} (vm): Up", b.device(), b.id)), "{log}");
    // Out of the bindings, its tap stays: an unbound tap, which drops what it sends.
    assert!(said(&format!("port {}  (unbound): Unbound", b.device())), "{log}");

    // The CLI prints the same exposition.
    let (ok, text, err) = c.cli("node0", &["metrics"]).unwrap();
    assert!(ok, "{err}");
    assert!(samples(&text).contains_key(&spoof_series), "{text}");
}
