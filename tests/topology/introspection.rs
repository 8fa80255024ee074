//! The operator's commands against a running agent: status, ports, networks,
//! fdb, stats and trace, as tables and as JSON, and bad requests.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    time::Duration,
};

use datapath_tests::cluster::{Cluster, PortSpec};
use serde_json::Value;

use crate::scenario::*;

fn datapath(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    c.cli("node0", args).unwrap()
}

fn json(c: &Cluster, args: &[&str]) -> Value {
    c.cli_json("node0", args).unwrap()
}

#[test]
fn status_ports_networks_fdb_stats_and_trace_describe_the_live_datapath() {
    let mut c = Cluster::new("cli", 2).unwrap();
    let a = vm1();
    let b = vm2();
    let local_b = PortSpec::vm(
        "0b0b0b0b-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:0b:00:07",
        "10.10.10.7",
        "node0",
    );
    c.write_bindings(&bindings(&[&a, &b, &local_b])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node1", b.clone()).unwrap();
    let il = c.add_vm("node0", local_b.clone()).unwrap();
    for i in [ia, ib, il] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[ia].ping_until(&b.ip, Duration::from_secs(10)));
    assert!(c.vms[ia].reaches(&local_b.ip));

    let status = json(&c, &["status"]);
    assert_eq!(status["api_version"], 1, "--json output says its version: {status}");
    assert_eq!(status["host"], "node0");
    // The hook this kernel gets: tcx from 6.6 on, cls_bpf filters before (the lts-kernel layer).
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(status["kernel"], release.trim(), "{status}");
    let mut v = release.split(|c: char| !c.is_ascii_digit()).map(|n| n.parse::<u32>().unwrap_or(0));
    let want = if (v.next().unwrap(), v.next().unwrap()) >= (6, 6) { "tcx links" } else { "cls_bpf filters" };
    assert!(status["tc_hook"].as_str().unwrap_or_default().starts_with(want), "{status}");
    assert_eq!(status["ports"]["up"], 3, "two VMs and the uplink: {status}");

    let ports = json(&c, &["ports"]);
    let pa = ports["ports"].as_array().unwrap().iter().find(|p| p["port_id"] == a.id.as_str()).unwrap();
    assert_eq!(pa["device"], a.device().as_str());
    assert_eq!(pa["state"], "up");
    assert_eq!(pa["kind"], "vm");

    let nets = json(&c, &["networks"]);
    let n1 = &nets["networks"][0];
    assert_eq!(
        (n1["id"].as_str(), n1["segmentation_id"].as_u64(), n1["local_ports"].as_u64()),
        (Some(NET1), Some(1000), Some(2))
    );

    // vm-2 lives on node1: node0 learned its MAC from the wire.
    let fdb = json(&c, &["fdb", "--network", "net1"]);
    let entries = fdb["entries"].as_array().unwrap();
    let find =
        |mac: &str| entries.iter().find(|e| e["mac"] == mac).unwrap_or_else(|| panic!("{mac} not in {fdb}"));
    assert_eq!(find(&a.mac)["type"], "local");
    assert_eq!(find(&a.mac)["device"], a.device().as_str());
    assert_eq!(find(&b.mac)["type"], "learned");
    assert_eq!(find(&b.mac)["device"], "eth2");

    let stats = json(&c, &["stats", "--port", &a.device()]);
    let sa = &stats["ports"][0];
    assert!(sa["actions"]["rx"].as_u64().unwrap() >= 3);
    assert!(sa["actions"]["to_uplink"].as_u64().unwrap() >= 1, "pings to vm-2 went to the uplink: {sa}");
    assert!(sa["actions"]["to_local_port"].as_u64().unwrap() >= 1, "pings to the local VM: {sa}");

    // Trace: an ARP request from vm-1 floods to the local VM and the uplink (tag 1000)...
    let spec = format!("arp who-has 10.10.10.99 from {} {}", a.mac, a.ip);
    let t = json(&c, &["trace", "--port", &a.device(), "--frame", &spec]);
    assert_eq!(t["verdict"], "forward");
    assert_eq!(t["action"], "flooded");
    let mut targets: Vec<(String, u64)> = t["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["device"].as_str().unwrap().to_string(), x["vlan"].as_u64().unwrap()))
        .collect();
    targets.sort();
    assert_eq!(targets, vec![("eth2".to_string(), 1000), (local_b.device(), 0)]);
    // ...a forged one is dropped, and the trace itself counts nothing.
    let before = json(&c, &["stats", "--port", &a.id])["ports"][0]["dropped"].as_u64().unwrap();
    let forged = format!("arp who-has 10.10.10.99 from {} 10.10.10.66", a.mac);
    let t = json(&c, &["trace", "--port", &a.id, "--frame", &forged]);
    assert_eq!((t["verdict"].as_str(), t["reason"].as_str()), (Some("drop"), Some("arp_spoof")));
    let after = json(&c, &["stats", "--port", &a.id])["ports"][0]["dropped"].as_u64().unwrap();
    assert_eq!(before, after, "a trace must not count");
    // ...and a frame from the wire with tag 1000 reaches vm-1 untagged.
    let wire = format!("vlan 1000 icmp from {} {} to {} {}", b.mac, b.ip, a.mac, a.ip);
    let t = json(&c, &["trace", "--port", "eth2", "--frame", &wire]);
    assert_eq!(t["program"], "uplink_in");
    assert_eq!(t["targets"][0]["device"], a.device().as_str());
    assert_eq!(t["frame_out"].as_str().unwrap().len(), (14 + 20 + 8 + 21) * 2, "tag removed");

    // Tables for people.
    let (ok, table, _) = datapath(&c, &["ports"]);
    assert!(ok && table.starts_with("DEVICE") && table.contains(&a.device()), "{table}");
    let (ok, table, _) = datapath(&c, &["stats"]);
    assert!(ok && table.contains("TO_UPLINK"), "{table}");
    let (ok, text, _) = datapath(&c, &["trace", "--port", &a.device(), "--frame", &forged]);
    assert!(ok && text.contains("drop: arp_spoof"), "{text}");

    // Bad CLI input: a clear message, non-zero exit.
    let (ok, _, err) = datapath(&c, &["trace", "--port", "tap-nonexistent", "--frame", &spec]);
    assert!(!ok && err.contains("no port \"tap-nonexistent\""), "{err}");
    let (ok, _, err) = datapath(&c, &["trace", "--port", &a.device(), "--frame", "arp who-has x"]);
    assert!(!ok && err.contains("frame spec"), "{err}");
    let (ok, _, err) = datapath(&c, &["fdb", "--network", "nope"]);
    assert!(!ok && err.contains("no network \"nope\""), "{err}");

    // Bad socket input: an error reply, and the agent keeps serving.
    let sock = c.dir.join("node0.sock");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    for bad in ["garbage\n", "{\"cmd\":\"reboot\"}\n", "{\"cmd\":\"trace\",\"port\":\"x\"}\n"] {
        s.write_all(bad.as_bytes()).unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!((&v["ok"], &v["version"]), (&Value::Bool(false), &Value::from(1)), "{bad} -> {line}");
        assert_eq!(v["error"]["kind"], "bad_request", "{line}");
        assert!(v["error"]["message"].as_str().unwrap().starts_with("bad request"), "{line}");
    }
    // A well-formed request about something this node does not have says so by kind.
    s.write_all(b"{\"cmd\":\"stats\",\"port\":\"tap-nonexistent\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["error"]["kind"], "not_found", "{line}");
    s.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("\"ok\":true"), "{line}");
    assert!(c.nodes[0].agent.as_mut().unwrap().running(), "the agent survived bad requests");
    assert!(c.vms[ia].reaches(&b.ip));
}
