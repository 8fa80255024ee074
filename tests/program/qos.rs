//! QoS on golden frames: a port's bandwidth and packet-rate limits police
//! what it sends (`vm_port`) and receives (`vm_port_out`), each frame over a
//! limit dropped and counted `qos_policed`; its DSCP mark is written into
//! what it sends, the IPv4 checksum kept right and the ECN bits kept; a port
//! without a policy is not touched.

use datapath_common::{Action, DropReason, QOS_DIR_INGRESS, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

use crate::scenario::CONFIG;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_OK: u32 = 0;

const BINDINGS: &str = r#"{
 "networks": [
  {"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500},
  {"id": "22222222-2222-4222-8222-222222222222", "name": "net2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1001, "mtu": 1500, "qos_policy_id": "slow-in"}
 ],
 "ports": [
  {"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.10.10.2"}, {"ip_address": "2001:db8::a"}], "device_owner": "compute:nova", "binding:host_id": "node0", "qos_policy_id": "slow-out"},
  {"id": "b0000000-0b00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0b",
   "fixed_ips": [{"ip_address": "10.10.10.3"}, {"ip_address": "2001:db8::b"}], "device_owner": "compute:nova", "binding:host_id": "node0", "qos_policy_id": "mark"},
  {"id": "c0000000-0c00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0c",
   "fixed_ips": [{"ip_address": "10.10.10.4"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "d0000000-0d00-4000-8000-000000000001", "network_id": "22222222-2222-4222-8222-222222222222", "mac_address": "fa:16:3e:00:00:0d",
   "fixed_ips": [{"ip_address": "10.20.0.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "e0000000-0e00-4000-8000-000000000001", "network_id": "22222222-2222-4222-8222-222222222222", "mac_address": "fa:16:3e:00:00:0e",
   "fixed_ips": [{"ip_address": "10.20.0.3"}], "device_owner": "network:dhcp", "binding:host_id": "node0"}
 ],
 "qos_policies": [
  {"id": "slow-out", "rules": [{"type": "bandwidth_limit", "max_kbps": 8, "max_burst_kbps": 8, "direction": "egress"}]},
  {"id": "slow-in", "rules": [{"type": "packet_rate_limit", "max_kpps": 1, "max_burst_kpps": 1, "direction": "ingress"}]},
  {"id": "mark", "rules": [{"type": "dscp_marking", "dscp_mark": 46}, {"type": "minimum_bandwidth", "min_kbps": 1000}]}
 ]
}"#;

/// 8 kbit/s (1000 bytes/s) with a burst of 8 kbit (one second of it) for what it sends.
const A: &str = "tapa0000000-0a";
/// Marks what it sends with DSCP 46 (EF).
const B: &str = "tapb0000000-0b";
/// No policy.
const C: &str = "tapc0000000-0c";
/// No policy of its own: its network's, 1 kpps (a burst of 1000 packets) for what it receives.
const D: &str = "tapd0000000-0d";
/// A DHCP port of that network: network policies skip `network:*` owners.
const E: &str = "tape0000000-0e";

const MAC_A: [u8; 6] = neutron_mac(0x0a);
const MAC_B: [u8; 6] = neutron_mac(0x0b);
const MAC_C: [u8; 6] = neutron_mac(0x0c);
const MAC_D: [u8; 6] = neutron_mac(0x0d);

fn bench() -> Bench {
    datapath_tests::require_root();
    Bench::new(CONFIG, BINDINGS, &["eth2", A, B, C, D, E]).expect("building the QoS bench")
}

/// 100 bytes of UDP from A to C.
fn a_to_c() -> Vec<u8> {
    eth(MAC_C, MAC_A, 0x0800, &ipv4_udp([10, 10, 10, 2], [10, 10, 10, 4], 4000, 9, &[0u8; 58]))
}

/// Runs `n` frames; returns how many passed and how many were counted `qos_policed`.
fn burst(b: &mut Bench, prog: &str, dev: &str, frame: &[u8], n: usize) -> (usize, u64) {
    let (passed, policed, _) = timed_burst(b, prog, dev, frame, n);
    (passed, policed)
}

/// `burst`, and how long the runs took: a limit refills while they run (a
/// slow machine, such as the 6.1 guest under TCG, takes a millisecond a run).
fn timed_burst(b: &mut Bench, prog: &str, dev: &str, frame: &[u8], n: usize) -> (usize, u64, f64) {
    let before = b.port_counters(dev).unwrap();
    let start = std::time::Instant::now();
    let passed = (0..n).filter(|_| b.run(prog, dev, frame, false).unwrap().retval != TC_ACT_SHOT).count();
    let secs = start.elapsed().as_secs_f64();
    let moved = b.port_counters(dev).unwrap().since(&before);
    (passed, moved.drops[DropReason::QosPoliced as usize], secs)
}

/// Whether `passed` frames is what a limit of `burst` frames that refills
/// `per_s` frames a second lets through in `secs`: the burst (and the
/// frame that meets an empty bucket), plus what refilled meanwhile.
fn within(passed: usize, burst: usize, per_s: f64, secs: f64) -> bool {
    passed >= burst && passed <= burst + 1 + (per_s * secs).ceil() as usize
}

#[test]
fn a_bandwidth_limit_passes_its_burst_then_polices_what_the_port_sends() {
    let mut b = bench();
    assert_eq!(a_to_c().len(), 100);
    // 100-byte frames cost 100 ms each at 1000 bytes/s; the burst is a second of them:
    // eleven fit (the first at an empty bucket, ten more within the second), the rest are over.
    let (passed, policed, secs) = timed_burst(&mut b, names::PROG_VM_PORT, A, &a_to_c(), 30);
    assert!(within(passed, 11, 10.0, secs), "{passed} of 30 passed in {secs:.3} s");
    assert_eq!(policed as usize, 30 - passed, "every frame over the limit is counted");
    // The policy polices A alone: C sends at full speed, and nothing A receives is limited.
    let c = eth(MAC_A, MAC_C, 0x0800, &ipv4_udp([10, 10, 10, 4], [10, 10, 10, 2], 9, 4000, &[0u8; 58]));
    assert_eq!(burst(&mut b, names::PROG_VM_PORT, C, &c, 30), (30, 0));
    assert_eq!(burst(&mut b, names::PROG_VM_PORT_OUT, A, &c, 30), (30, 0));
}

#[test]
fn a_traced_run_judges_without_charging() {
    let mut b = bench();
    for _ in 0..50 {
        let o = b.run_dry(names::PROG_VM_PORT, A, &a_to_c()).unwrap();
        assert_eq!(o.retval, TC_ACT_REDIRECT, "a dry run never uses the burst up");
    }
    let (passed, _, secs) = timed_burst(&mut b, names::PROG_VM_PORT, A, &a_to_c(), 30);
    assert!(within(passed, 11, 10.0, secs), "the whole burst is still there: {passed} in {secs:.3} s");
    // Now over the limit, a trace says so (and still charges nothing).
    let o = b.run_dry(names::PROG_VM_PORT, A, &a_to_c()).unwrap();
    assert_eq!(o.trace.unwrap().reason, DropReason::QosPoliced as u32);
}

#[test]
fn a_network_packet_rate_limit_polices_what_its_ports_receive() {
    let mut b = bench();
    let to_d = eth(MAC_D, MAC_C, 0x0800, &ipv4_udp([10, 20, 0, 9], [10, 20, 0, 2], 9, 4000, &[0u8; 18]));
    // The network's policy made D's entry (1 kpps, the agent's finest). Finer here, so that the
    // limit holds whatever a run costs: 10 packets/s and a burst of 100 (10 s of them).
    let d = b.ifindex(D);
    let mut q = b.derived.state.qos_ports[&d];
    assert_eq!(
        q.ps_per_packet[QOS_DIR_INGRESS], 1_000_000_000,
        "1 kpps (1 ms a packet) from the network's policy"
    );
    q.ps_per_packet[QOS_DIR_INGRESS] = 100_000_000_000;
    q.packet_burst_ns[QOS_DIR_INGRESS] = 10_000_000_000;
    b.dp.maps.synced.qos_ports.insert(d, q, 0).unwrap();
    let (passed, policed, secs) = timed_burst(&mut b, names::PROG_VM_PORT_OUT, D, &to_d, 300);
    assert!(within(passed, 101, 10.0, secs), "{passed} of 300 delivered in {secs:.3} s");
    assert_eq!(policed as usize, 300 - passed);
    // What D sends is not limited, and the DHCP port of the network skips the network's policy.
    let from_d = eth(MAC_C, MAC_D, 0x0800, &ipv4_udp([10, 20, 0, 2], [10, 20, 0, 9], 4000, 9, &[0u8; 18]));
    assert_eq!(burst(&mut b, names::PROG_VM_PORT, D, &from_d, 300).1, 0);
    assert_eq!(burst(&mut b, names::PROG_VM_PORT_OUT, E, &to_d, 300), (300, 0));
}

/// The IPv4 header checksum over `header` (its checksum field included): 0 when right.
fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn the_dscp_mark_is_written_with_the_ecn_bits_and_a_right_checksum() {
    let mut b = bench();
    for ecn in [0u8, 1, 3] {
        let mut frame =
            eth(MAC_C, MAC_B, 0x0800, &ipv4_udp([10, 10, 10, 3], [10, 10, 10, 4], 4000, 9, &[7u8; 30]));
        // Sent with class AF11 and the ECN bits, its checksum right.
        frame[15] = (10 << 2) | ecn;
        frame[24..26].copy_from_slice(&[0, 0]);
        let sum = checksum(&frame[14..34]);
        frame[24..26].copy_from_slice(&sum.to_be_bytes());
        let o = b.run(names::PROG_VM_PORT, B, &frame, false).unwrap();
        assert_eq!(o.retval, TC_ACT_REDIRECT);
        assert_eq!(o.frame[15], (46 << 2) | ecn, "DSCP 46, ECN {ecn} kept");
        assert_eq!(checksum(&o.frame[14..34]), 0, "the header checksum is right");
        assert_eq!(
            (&o.frame[..15], &o.frame[16..24], &o.frame[26..]),
            (&frame[..15], &frame[16..24], &frame[26..])
        );
        assert_eq!(o.actions[Action::DscpMarked as usize], 1);
    }
    // IPv6: the traffic class straddles the first two bytes; the flow label stays.
    let (src, dst) = (v6("2001:db8::b"), v6("2001:db8::c"));
    let mut frame = eth(MAC_C, MAC_B, 0x86dd, &ipv6(src, dst, 17, &udp6(src, dst, 4000, 9, &[1, 2, 3])));
    // Class 0x02 (ECN 2, DSCP 0): its high nibble in the first byte, its low one in the second.
    frame[14] = 0x60;
    frame[15] = 0x2a;
    let o = b.run(names::PROG_VM_PORT, B, &frame, false).unwrap();
    assert_eq!(o.retval, TC_ACT_REDIRECT);
    let class = (o.frame[14] << 4) | (o.frame[15] >> 4);
    assert_eq!((o.frame[14] >> 4, class, o.frame[15] & 0x0f), (6, (46 << 2) | 2, 0x0a));
    assert_eq!(o.frame[16..], frame[16..]);
    // Not IP: left alone, and not counted as marked; already marked: no rewrite.
    let arp = arp_request(MAC_B, [10, 10, 10, 3], [10, 10, 10, 4]);
    let o = b.run(names::PROG_VM_PORT, B, &arp, false).unwrap();
    assert_eq!((o.frame == arp, o.actions[Action::DscpMarked as usize]), (true, 0));
    // A port without the policy sends its class as it is.
    let mut frame =
        eth(MAC_B, MAC_C, 0x0800, &ipv4_udp([10, 10, 10, 4], [10, 10, 10, 3], 4000, 9, &[7u8; 30]));
    frame[15] = 10 << 2;
    let o = b.run(names::PROG_VM_PORT, C, &frame, false).unwrap();
    assert_eq!(o.frame[15], 10 << 2);
}

/// A changed policy applies at once: the bucket charged at the old cost starts afresh.
#[test]
fn a_changed_policy_starts_with_a_full_burst_and_a_removed_one_polices_nothing() {
    let mut b = bench();
    let (passed, _) = burst(&mut b, names::PROG_VM_PORT, A, &a_to_c(), 30);
    assert!(passed <= 12);
    let doubled =
        BINDINGS.replace(r#""max_kbps": 8, "max_burst_kbps": 8"#, r#""max_kbps": 16, "max_burst_kbps": 16"#);
    b.reseed(CONFIG, &doubled).unwrap();
    let (passed, _, secs) = timed_burst(&mut b, names::PROG_VM_PORT, A, &a_to_c(), 40);
    // 2000 bytes/s, a second of burst: 21 frames of 50 ms.
    assert!(within(passed, 21, 20.0, secs), "{passed} of 40 after the change, in {secs:.3} s");
    let removed = BINDINGS.replace(r#", "qos_policy_id": "slow-out""#, "");
    b.reseed(CONFIG, &removed).unwrap();
    assert_eq!(burst(&mut b, names::PROG_VM_PORT, A, &a_to_c(), 40), (40, 0), "no policy, no limit");
    let _ = TC_ACT_OK;
}
