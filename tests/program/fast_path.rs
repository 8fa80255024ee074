//! The XDP stage's fast path on golden frames: known unicast from the wire
//! for a local tap goes from the driver to the tap (`XDP_REDIRECT` through
//! `XDP_TAPS`), its VLAN tag removed, and is counted as delivered at the tap;
//! whatever the TC stage would do more than that (learn, flood, filter, go
//! to a veth) is passed to it unchanged.

use datapath_common::{Action, FdbKey, LearnedEntry, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

use crate::scenario::CONFIG;

const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const NET1: &str = "11111111-1111-4111-8111-111111111111";

const BINDINGS: &str = r#"{
 "networks": [
  {"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500},
  {"id": "33333333-3333-4333-8333-333333333333", "name": "flat", "provider:network_type": "flat", "provider:physical_network": "default", "mtu": 1500}
 ],
 "ports": [
  {"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.10.10.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "b0000000-0b00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0b",
   "fixed_ips": [{"ip_address": "10.10.10.3"}], "device_owner": "compute:nova", "binding:host_id": "node0", "security_groups": []},
  {"id": "c0000000-0c00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0c",
   "fixed_ips": [{"ip_address": "10.10.10.4"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "d0000000-0d00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0d",
   "fixed_ips": [{"ip_address": "10.10.10.5"}], "device_owner": "compute:nova", "binding:host_id": "node0", "admin_state_up": false},
  {"id": "f0000000-0f00-4000-8000-000000000001", "network_id": "33333333-3333-4333-8333-333333333333", "mac_address": "fa:16:3e:00:00:0f",
   "fixed_ips": [{"ip_address": "192.168.0.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"}
 ]
}"#;

/// A tap without security groups: the fast path's target.
const T: &str = "tapa0000000-0a";
/// A tap whose port has security groups (no rule: nothing may come in).
const S: &str = "tapb0000000-0b";
/// A namespace port (veth), which takes no XDP frames.
const V: &str = "tapc0000000-0c";
/// A tap whose port is administratively down.
const Q: &str = "tapd0000000-0d";
/// A tap on the flat network.
const F: &str = "tapf0000000-0f";
const UPLINK: &str = "eth2";

const MAC_T: [u8; 6] = neutron_mac(0x0a);
const MAC_S: [u8; 6] = neutron_mac(0x0b);
const MAC_V: [u8; 6] = neutron_mac(0x0c);
const MAC_Q: [u8; 6] = neutron_mac(0x0d);
const MAC_F: [u8; 6] = neutron_mac(0x0f);
/// Behind the uplink, learned there just now.
const REMOTE: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x01];
/// Behind the uplink, never seen.
const STRANGER: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x02];
/// Learned through the uplink 5 s ago: due for a refresh, which TC does.
const STALE: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x03];
/// Learned through another device.
const ELSEWHERE: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x04];

fn udp_to(src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    eth(dst, src, 0x0800, &ipv4_udp([10, 10, 10, 30], [10, 10, 10, 2], 4000, 9, &[0u8; 18]))
}

/// What the stage must do with a row's frame.
enum Expect {
    /// To this tap, as this frame.
    Redirect(&'static str, Vec<u8>),
    /// To the TC stage, unchanged.
    Pass,
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn redirect(what: &'static str, frame: Vec<u8>, tap: &'static str, out: Vec<u8>) -> Row {
    Row { what, frame, expect: Expect::Redirect(tap, out) }
}

fn pass(what: &'static str, frame: Vec<u8>) -> Row {
    Row { what, frame, expect: Expect::Pass }
}

/// The bench: five ports, the taps among them in `XDP_TAPS` as the agent
/// puts them, and the remote MACs learned (or not) as the rows need.
fn fast_bench() -> Bench {
    datapath_tests::require_root();
    let mut b = Bench::with_taps(CONFIG, BINDINGS, &[UPLINK, V], &[T, S, Q, F])
        .expect("building the fast-path bench");
    for tap in [T, S, Q, F] {
        b.allow_xdp_tap(tap).unwrap();
    }
    // The TC stage learns REMOTE on both networks, as its first frames do.
    let first =
        b.run(names::PROG_UPLINK, UPLINK, &tagged(&udp_to(REMOTE, MAC_T), 0x8100, 1000), false).unwrap();
    assert_eq!(first.actions[Action::Learned as usize], 1, "the TC stage learns REMOTE on net1");
    let first = b.run(names::PROG_UPLINK, UPLINK, &udp_to(REMOTE, MAC_F), false).unwrap();
    assert_eq!(first.actions[Action::Learned as usize], 1, "and on the flat network");
    let net1 = net_index(&b, NET1);
    let now = monotonic_ns();
    let uplink = b.ifindex(UPLINK);
    let other = b.ifindex(V);
    for (mac, ifindex, at) in [(STALE, uplink, now - 5_000_000_000), (ELSEWHERE, other, now)] {
        let key = FdbKey { net_index: net1, mac, _pad: [0; 2] };
        let entry = LearnedEntry { ifindex, vtep_ipv4: 0, last_seen_ns: at };
        b.dp.maps.fdb_learned.insert(key, entry, 0).unwrap();
    }
    b
}

fn net_index(b: &Bench, id: &str) -> u32 {
    b.derived.networks.iter().find(|n| n.id == id).and_then(|n| n.net_index).expect("network programmed")
}

/// `bpf_ktime_get_ns`'s clock.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn known_unicast_for_a_tap_goes_from_the_driver_to_the_tap_and_the_rest_to_tc() {
    let mut b = fast_bench();
    let to_t = udp_to(REMOTE, MAC_T);
    let to_f = udp_to(REMOTE, MAC_F);
    let rows = vec![
        redirect(
            "VLAN 1000 to tap T from a learned MAC: the tag goes",
            tagged(&to_t, 0x8100, 1000),
            T,
            to_t.clone(),
        ),
        redirect("the flat network to tap F: nothing to remove", to_f.clone(), F, to_f.clone()),
        redirect(
            "double tags: the outer one goes, the VM's own stays",
            tagged(&tagged(&to_t, 0x8100, 7), 0x8100, 1000),
            T,
            tagged(&to_t, 0x8100, 7),
        ),
        pass("from a MAC never seen: TC learns it", tagged(&udp_to(STRANGER, MAC_T), 0x8100, 1000)),
        pass("from a MAC learned 5 s ago: TC refreshes it", tagged(&udp_to(STALE, MAC_T), 0x8100, 1000)),
        pass(
            "from a MAC learned on another device: TC moves it",
            tagged(&udp_to(ELSEWHERE, MAC_T), 0x8100, 1000),
        ),
        pass(
            "to a port with security groups: its egress program filters",
            tagged(&udp_to(REMOTE, MAC_S), 0x8100, 1000),
        ),
        pass("to a namespace port (veth)", tagged(&udp_to(REMOTE, MAC_V), 0x8100, 1000)),
        pass("to an admin-down port", tagged(&udp_to(REMOTE, MAC_Q), 0x8100, 1000)),
        pass("to tap F's MAC on VLAN 1000, where F is not", tagged(&udp_to(REMOTE, MAC_F), 0x8100, 1000)),
        pass("to a MAC behind the wire", tagged(&udp_to(REMOTE, STRANGER), 0x8100, 1000)),
        pass("a broadcast", tagged(&udp_to(REMOTE, [0xff; 6]), 0x8100, 1000)),
    ];
    for r in rows {
        let delivered_before =
            |b: &Bench, tap| b.port_counters(tap).unwrap().actions[Action::Delivered as usize];
        let before: Vec<u64> = [T, F].iter().map(|t| delivered_before(&b, t)).collect();
        let o = b.run_xdp(names::PROG_UPLINK_XDP, UPLINK, &r.frame).unwrap();
        let after: Vec<u64> = [T, F].iter().map(|t| delivered_before(&b, t)).collect();
        assert_eq!(o.actions[Action::Received as usize], 1, "{}: counted as received", r.what);
        assert_eq!(o.drops.iter().sum::<u64>(), 0, "{}: no drop", r.what);
        match r.expect {
            Expect::Redirect(tap, out) => {
                assert_eq!(o.retval, XDP_REDIRECT, "{}: redirected", r.what);
                assert_eq!(o.frame, out, "{}: the frame the tap gets", r.what);
                assert_eq!(o.actions[Action::Redirected as usize], 1, "{}: counted as redirected", r.what);
                let i = if tap == T { 0 } else { 1 };
                assert_eq!(after[i] - before[i], 1, "{}: counted as delivered at {tap}", r.what);
                assert_eq!(after[1 - i], before[1 - i], "{}: and at no other tap", r.what);
            }
            Expect::Pass => {
                assert_eq!(o.retval, XDP_PASS, "{}: passed to TC", r.what);
                assert_eq!(o.frame, r.frame, "{}: unchanged", r.what);
                assert_eq!(o.actions[Action::Passed as usize], 1, "{}: counted as passed", r.what);
                assert_eq!(after, before, "{}: delivered nowhere yet", r.what);
            }
        }
    }
}

/// Taken out of `XDP_TAPS` (the agent does for what is no bound tap, or
/// with `xdp = "off"`), a tap gets its frames through TC again.
#[test]
fn a_tap_not_in_the_devmap_gets_its_frames_through_tc() {
    let mut b = fast_bench();
    let frame = tagged(&udp_to(REMOTE, MAC_T), 0x8100, 1000);
    assert_eq!(b.run_xdp(names::PROG_UPLINK_XDP, UPLINK, &frame).unwrap().retval, XDP_REDIRECT);
    let t = b.ifindex(T);
    b.dp.maps.xdp_taps.remove(t).unwrap();
    let o = b.run_xdp(names::PROG_UPLINK_XDP, UPLINK, &frame).unwrap();
    assert_eq!((o.retval, o.frame == frame), (XDP_PASS, true), "passed unchanged");
    assert_eq!(o.actions[Action::Passed as usize], 1);
}

/// `datapath trace --port eth2`: the record names the tap, and nothing is counted.
#[test]
fn a_traced_run_names_the_tap_and_counts_nothing() {
    let mut b = fast_bench();
    let to_t = udp_to(REMOTE, MAC_T);
    let delivered = b.port_counters(T).unwrap().actions[Action::Delivered as usize];
    let o = b.run_xdp_dry(names::PROG_UPLINK_XDP, UPLINK, &tagged(&to_t, 0x8100, 1000)).unwrap();
    assert_eq!(o.retval, XDP_REDIRECT);
    assert_eq!(o.frame, to_t, "the frame as the tap would get it");
    let rec = o.trace.expect("a trace record");
    assert_eq!(rec.action, Action::Redirected as u32);
    assert_eq!(b.targets(&o), vec![(T.to_string(), 0)], "to tap T, untagged");
    assert_eq!(o.actions.iter().sum::<u64>() + o.drops.iter().sum::<u64>(), 0, "no XDP counter moved");
    assert_eq!(b.port_counters(T).unwrap().actions[Action::Delivered as usize], delivered, "nor the tap's");
}
