//! The uplinks' XDP stage on a live node (veth's native XDP): floods of
//! frames this node must never accept die in the driver and the counters say
//! so; the rx VLAN offload goes off while the stage runs and comes back when
//! it goes (`xdp = "off"`, `--cleanup`); `xdp = "native"` refuses a driver
//! without native XDP, and `auto` falls back to the TC stage alone there;
//! `trace` runs both stages, dry; known unicast for a tap goes from the
//! driver to the tap (the fast path).

use std::time::Duration;

use datapath_tests::{
    cluster::{Cluster, PortSpec},
    link::TapFd,
    raw, wait_for,
};
use datapath_user::{bindings::parse_mac, frames::*};
use serde_json::Value;

use crate::scenario::*;

/// The uplink's counters, both stages: (XDP stage, TC stage).
fn uplink_stats(c: &Cluster) -> (Value, Value) {
    let s = c.cli_json("node0", &["stats", "--port", "eth2"]).unwrap();
    let p = s["ports"][0].clone();
    (p["xdp"].clone(), p)
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

#[test]
fn unknown_segments_and_local_sources_from_the_wire_die_in_the_driver() {
    let (c, a, b, _) = local_pair("xdp-drops", "xdp = \"native\"\n");
    let (x0, tc0) = uplink_stats(&c);
    let delivered = |c: &Cluster| {
        let s = c.cli_json("node0", &["stats", "--port", &b.device()]).unwrap();
        n(&s["ports"][0]["actions"]["delivered"])
    };
    let delivered0 = delivered(&c);
    let (mac_a, mac_b) = (parse_mac(&a.mac).unwrap(), parse_mac(&b.mac).unwrap());
    let ping = ipv4_icmp_echo([10, 10, 10, 99], [10, 10, 10, 12]);
    // A flood on a VLAN this node does not serve, and frames that claim vm-1's
    // MAC on its own VLAN: both from the wire (the switch port of node0).
    const FLOOD: usize = 3000;
    const SPOOFED: usize = 50;
    let flood: Vec<Vec<u8>> = (0..FLOOD)
        .map(|i| {
            tagged(&eth(mac_b, [0xfa, 0x16, 0x3e, 9, (i >> 8) as u8, i as u8], 0x0800, &ping), 0x8100, 3999)
        })
        .collect();
    let spoofed = vec![tagged(&eth(mac_b, mac_a, 0x0800, &ping), 0x8100, 1000); SPOOFED];
    raw::send_in(&c.phys, "up-node0", &flood).unwrap();
    raw::send_in(&c.phys, "up-node0", &spoofed).unwrap();

    let counted = || {
        let (x, _) = uplink_stats(&c);
        n(&x["drops"]["uplink_src_is_local"]) >= SPOOFED as u64
            && n(&x["drops"]["unknown_segment"]) >= n(&x0["drops"]["unknown_segment"]) + FLOOD as u64
    };
    wait_for("the XDP stage to count the flood and the spoofs", Duration::from_secs(10), counted);
    let (x1, tc1) = uplink_stats(&c);
    assert_eq!(n(&x1["drops"]["uplink_src_is_local"]), SPOOFED as u64, "{x1}");
    // The fabric's own untagged frames (IPv6 ND of the bridge) may add a few.
    let unknown = n(&x1["drops"]["unknown_segment"]) - n(&x0["drops"]["unknown_segment"]);
    assert!((FLOOD as u64..FLOOD as u64 + 20).contains(&unknown), "{unknown} unknown-segment drops: {x1}");
    // None of them reached the TC stage, nor vm-2.
    let tc_rx = n(&tc1["actions"]["rx"]) - n(&tc0["actions"]["rx"]);
    assert!(tc_rx < 20, "the TC stage saw {tc_rx} frames of the flood: {tc1}");
    assert_eq!(tc1["drops"]["uplink_src_is_local"], Value::Null, "{tc1}");
    let to_vm2 = delivered(&c) - delivered0;
    assert!(to_vm2 < 20, "vm-2 received {to_vm2} frames meanwhile: the flood is not among them");

    // The XDP stage's counters are in `stats`, which the test read. The VMs still talk.
    assert!(c.vms[0].ping(&b.ip, 2), "vm-1 still reaches vm-2");
}

#[test]
fn rx_vlan_offload_goes_off_with_the_stage_and_comes_back_when_it_goes() {
    let (mut c, _, _, _) = local_pair("xdp-rxvlan", "xdp = \"native\"\n");
    let offload = |c: &Cluster| {
        let k = c.node("node0").ns.exec(&["ethtool", "-k", "eth2"]).unwrap();
        k.lines().find(|l| l.starts_with("rx-vlan-offload:")).unwrap_or_default().to_string()
    };
    assert!(offload(&c).starts_with("rx-vlan-offload: off"), "{}", offload(&c));
    // The next agent with `xdp = "off"` removes the stage the last one left.
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    set_xdp(&c, "native", "off");
    c.start_agent("node0").unwrap();
    let gone =
        |c: &Cluster| !c.node("node0").ns.exec(&["ip", "link", "show", "eth2"]).unwrap().contains("prog/xdp");
    wait_for("xdp = off to remove the stage", Duration::from_secs(10), || gone(&c));
    assert!(offload(&c).starts_with("rx-vlan-offload: on"), "{}", offload(&c));
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    set_xdp(&c, "off", "native");
    c.start_agent("node0").unwrap();
    wait_for("xdp = native to bring it back", Duration::from_secs(10), || !gone(&c));
    assert!(offload(&c).starts_with("rx-vlan-offload: off"), "{}", offload(&c));
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    // Stopping leaves the datapath, XDP stage included, in place.
    let shown = c.node("node0").ns.exec(&["ip", "link", "show", "eth2"]).unwrap();
    assert!(shown.contains("prog/xdp"), "the XDP stage outlives the agent: {shown}");
    c.nodes[0].cleanup().unwrap();
    let shown = c.node("node0").ns.exec(&["ip", "link", "show", "eth2"]).unwrap();
    assert!(!shown.contains("prog/xdp"), "--cleanup removed the XDP stage: {shown}");
    assert!(offload(&c).starts_with("rx-vlan-offload: on"), "{}", offload(&c));
}

/// Changes node0's `xdp` from `from` to `to`.
fn set_xdp(c: &Cluster, from: &str, to: &str) {
    let path = &c.node("node0").config;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(&format!("xdp = \"{from}\"")), "{text}");
    std::fs::write(path, text.replace(&format!("xdp = \"{from}\""), &format!("xdp = \"{to}\""))).unwrap();
}

/// A bridge stands for a NIC whose driver has no native XDP.
fn no_native_xdp(tag: &str, xdp: &str) -> Cluster {
    let c = Cluster::new(tag, 1).unwrap();
    let ns = &c.node("node0").ns;
    ns.exec(&["ip", "link", "add", "br-up", "type", "bridge"]).unwrap();
    ns.exec(&["ip", "link", "set", "br-up", "up"]).unwrap();
    let config = std::fs::read_to_string(&c.node("node0").config).unwrap();
    std::fs::write(&c.node("node0").config, config.replace(":eth2\"", ":br-up\"")).unwrap();
    c.config_line("node0", &format!("xdp = \"{xdp}\"")).unwrap();
    c.write_bindings(&bindings(&[&vm1()])).unwrap();
    c
}

#[test]
fn native_refuses_a_driver_without_native_xdp_and_auto_falls_back() {
    let mut c = no_native_xdp("xdp-native", "native");
    c.start_agent("node0").unwrap();
    let agent = c.nodes[0].agent.as_mut().unwrap();
    wait_for("the agent to refuse to start", Duration::from_secs(10), || !agent.running());
    let log = agent.log_text();
    assert!(
        log.contains("xdp = \"native\": br-up cannot run the XDP stage in its driver"),
        "the refusal names the device: {log}"
    );

    let mut c = no_native_xdp("xdp-auto", "auto");
    c.start_agent("node0").unwrap();
    wait_for("the agent to answer", Duration::from_secs(10), || c.cli_json("node0", &["status"]).is_ok());
    let status = c.cli_json("node0", &["status"]).unwrap();
    let state = status["xdp"]["br-up"].as_str().unwrap_or_default();
    assert!(state.starts_with("tc only (native XDP attach on br-up"), "{status}");
    assert_eq!(status["errors"].as_array().map_or(0, Vec::len), 0, "auto is no error: {status}");
}

#[test]
fn trace_on_an_uplink_runs_the_xdp_stage_then_the_tc_stage_and_counts_nothing() {
    let (c, a, b, _) = local_pair("xdp-trace", "xdp = \"native\"\n");
    let (x0, tc0) = uplink_stats(&c);
    let stranger = "fa:16:3e:99:00:01";
    let trace = |spec: &str| c.cli_json("node0", &["trace", "--port", "eth2", "--frame", spec]).unwrap();

    let t = trace(&format!("vlan 3999 icmp from {stranger} 10.10.10.99 to {} {}", b.mac, b.ip));
    assert_eq!(t["program"], "uplink_xdp", "{t}");
    assert_eq!((t["verdict"].as_str(), t["reason"].as_str()), (Some("drop"), Some("unknown_segment")), "{t}");
    let t = trace(&format!("vlan 1000 icmp from {} {} to {} {}", a.mac, a.ip, b.mac, b.ip));
    assert_eq!(
        (t["program"].as_str(), t["reason"].as_str()),
        (Some("uplink_xdp"), Some("uplink_src_is_local")),
        "{t}"
    );

    let t = trace(&format!("vlan 1000 icmp from {stranger} 10.10.10.99 to {} {}", b.mac, b.ip));
    assert_eq!(t["program"], "uplink_xdp -> uplink_in", "both stages: {t}");
    assert_eq!(
        (t["verdict"].as_str(), t["action"].as_str()),
        (Some("forward"), Some("to_local_port")),
        "{t}"
    );
    assert_eq!(t["targets"][0]["device"], b.device().as_str(), "{t}");

    // A trace is dry: neither stage counted anything, nor learned the stranger.
    let (x1, tc1) = uplink_stats(&c);
    assert_eq!(n(&x1["actions"]["rx"]), n(&x0["actions"]["rx"]) + fabric_noise(&x0, &x1), "{x0} {x1}");
    assert_eq!(x1["drops"]["uplink_src_is_local"], Value::Null, "{x1}");
    assert_eq!(tc1["actions"]["to_local_port"], tc0["actions"]["to_local_port"], "{tc1}");
    assert_eq!(c.learned_on("node0", stranger), None);
}

/// Frames the fabric itself sent meanwhile (IPv6 ND and MLD of the bridge,
/// untagged): the XDP stage's unknown-segment drops between two readings.
fn fabric_noise(before: &Value, after: &Value) -> u64 {
    n(&after["drops"]["unknown_segment"]) - n(&before["drops"]["unknown_segment"])
}

/// The fast path on a live pair of nodes: vm-1 on node0 sends UDP across the
/// wire to a tap on node1, whose uplink runs the XDP stage in its driver. The
/// first frame goes through the TC stage, which learns vm-1's MAC; from then
/// on the frames go from the driver to the tap. The tap's reader (the VM)
/// gets every frame, untagged and as sent, and the counters say which way
/// they went.
#[test]
fn known_unicast_from_the_wire_goes_from_the_driver_to_a_tap() {
    let mut c = Cluster::new("xdp-fast", 2).unwrap();
    let a = vm1();
    let t = PortSpec::vm(
        "0d0d0d0d-0000-4000-8000-00000000000d",
        NET1,
        "fa:16:3e:0d:00:0d",
        "10.10.10.13",
        "node1",
    );
    c.write_bindings(&bindings(&[&a, &t])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    c.vms[ia].set_static_ip().unwrap();
    let tap = TapFd::open(Some(&c.node("node1").ns), &t.device()).unwrap();
    tap.up().unwrap();
    c.append_config("node1", "xdp = \"native\"\n").unwrap();
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    let stats = |dev: &str| c.cli_json("node1", &["stats", "--port", dev]).unwrap()["ports"][0].clone();
    // Both ends: a frame vm-1 sends before node0 has programmed its tap goes nowhere.
    wait_for(
        "node1 to run the XDP stage and both nodes to program their taps",
        Duration::from_secs(10),
        || {
            c.cli_json("node1", &["status"]).is_ok_and(|s| s["xdp"]["eth2"] == "native")
                && c.port_is_up("node1", &t.device())
                && c.port_is_up("node0", &a.device())
        },
    );

    let (mac_a, mac_t) = (parse_mac(&a.mac).unwrap(), parse_mac(&t.mac).unwrap());
    let frame = |seq: u16| {
        let udp = ipv4_udp([10, 10, 10, 2], [10, 10, 10, 13], 4000 + seq, 9, &seq.to_be_bytes().repeat(16));
        eth(mac_t, mac_a, 0x0800, &udp)
    };
    let ours = |f: &[u8]| f.len() > 36 && f[12..14] == [0x08, 0x00] && f[0..6] == mac_t && f[6..12] == mac_a;
    // The first frame: node0 floods it (vm-1 does not know where t is), node1's TC stage learns vm-1.
    raw::send_in(&c.vms[ia].ns, "eth0", &[frame(0)]).unwrap();
    let got = tap.read_frame_where(Duration::from_secs(5) * datapath_tests::patience(), ours).unwrap();
    assert_eq!(got, Some(frame(0)), "the first frame reaches the tap, untagged");
    let (up0, t0) = (stats("eth2"), stats(&t.device()));
    let x0 = up0["xdp"].clone();

    const N: u16 = 300;
    let burst: Vec<Vec<u8>> = (1..=N).map(frame).collect();
    raw::send_in(&c.vms[ia].ns, "eth0", &burst).unwrap();
    for want in &burst {
        let got = tap.read_frame_where(Duration::from_secs(5), ours).unwrap();
        assert_eq!(got.as_ref(), Some(want), "every frame reaches the tap in order, untagged and as sent");
    }
    let redirected = |x: &Value| n(&x["actions"]["xdp_redirected"]);
    wait_for("the counters to show the burst", Duration::from_secs(5), || {
        redirected(&stats("eth2")["xdp"]) >= redirected(&x0) + u64::from(N)
    });
    let (x1, t1) = (stats("eth2")["xdp"].clone(), stats(&t.device()));
    // The fabric's own frames (untagged IPv6 noise) are dropped there, never redirected.
    assert_eq!(redirected(&x1) - redirected(&x0), u64::from(N), "all the burst took the fast path: {x1}");
    let delivered = n(&t1["actions"]["delivered"]) - n(&t0["actions"]["delivered"]);
    // vm-1's own IPv6 noise (router solicitations, MLD) is flooded to the tap through TC meanwhile.
    let noise = delivered.checked_sub(u64::from(N));
    assert!(noise.is_some_and(|x| x < 20), "the burst is counted as delivered at the tap: {delivered}, {t1}");
    let up1 = stats("eth2");
    // The fabric's and vm-1's multicast noise passes to TC meanwhile; none of the burst does.
    assert_eq!(
        n(&up1["actions"]["to_local_port"]),
        n(&up0["actions"]["to_local_port"]),
        "the TC stage delivered none of the burst: {up1}"
    );
    assert_eq!(n(&up1["dropped"]), 0, "nor dropped anything: {up1}");

    // `trace` shows the same way, and stops at the XDP stage. The fast path
    // takes a learned source only while its entry is fresh (refreshed within
    // a second, else TC refreshes it): a frame from vm-a refreshes it first,
    // again if the machine (the 6.1 guest under TCG) took longer than that.
    let spec = format!("vlan 1000 udp from {} {}:4000 to {} {}:9", a.mac, a.ip, t.mac, t.ip);
    let mut tr = Value::Null;
    for seq in 0..5 {
        raw::send_in(&c.vms[ia].ns, "eth0", &[frame(1000 + seq)]).unwrap();
        tr = c.cli_json("node1", &["trace", "--port", "eth2", "--frame", &spec]).unwrap();
        if tr["action"] == "xdp_redirected" {
            break;
        }
    }
    assert_eq!(
        (tr["program"].as_str(), tr["action"].as_str()),
        (Some("uplink_xdp"), Some("xdp_redirected")),
        "{tr}"
    );
    assert_eq!(tr["targets"][0]["device"], t.device().as_str(), "{tr}");
}
