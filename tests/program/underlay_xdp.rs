//! The underlay's XDP stage on golden frames: VXLAN for this node's
//! `local_ip` with a VNI it does not serve, or from no tunnel peer of the
//! VNI's network, dies in the driver under its reason, counted under the
//! VXLAN device; tunnel traffic from a peer passes; the host's own traffic
//! (anything that is not VXLAN for `local_ip`) passes uncounted, however cut.
//! And an uplink that holds `local_ip` itself (`untagged_to_host`) checks
//! the same in its own stage.

use std::net::Ipv4Addr;

use datapath_common::{Action, DropReason, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

use crate::tunnel::CONFIG;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

/// One VXLAN network (VNI 5000) with ports here and on node1; node2 hosts none of it.
const BINDINGS: &str = r#"{
 "networks": [{"id": "tun", "provider:network_type": "vxlan", "provider:segmentation_id": 5000, "mtu": 1450}],
 "ports": [
  {"id": "a0000000-0a00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0a", "fixed_ips": [{"ip_address": "10.20.0.2"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
  {"id": "c0000000-0c00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0c", "fixed_ips": [{"ip_address": "10.20.0.4"}], "binding:host_id": "node1"}
 ],
 "agents": [
  {"host": "node0", "configurations": {"tunneling_ip": "192.0.2.10"}},
  {"host": "node1", "configurations": {"tunneling_ip": "192.0.2.11"}},
  {"host": "node2", "configurations": {"tunneling_ip": "192.0.2.12"}}
 ]
}"#;

const A: &str = "tapa0000000-0a";
const VX: &str = "vxlan-dp";
/// The device that holds local_ip.
const UNDERLAY: &str = "eth1";
const LOCAL: [u8; 4] = [192, 0, 2, 10];
const NODE1: [u8; 4] = [192, 0, 2, 11];
const NODE2: [u8; 4] = [192, 0, 2, 12];
const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

/// VXLAN from `src` to `dst` with `vni`, carrying a ping from port c to port a.
fn tunnel(src: [u8; 4], dst: [u8; 4], vni: u32) -> Vec<u8> {
    let inner =
        eth(neutron_mac(0x0a), neutron_mac(0x0c), 0x0800, &ipv4_icmp_echo([10, 20, 0, 4], [10, 20, 0, 2]));
    eth(OUR_MAC, ROUTER_MAC, 0x0800, &ipv4_udp(src, dst, 49152, 4789, &vxlan(vni, &inner)))
}

/// What the stage must do with a row's frame.
enum Expect {
    /// Passed, counted as tunnel traffic.
    Tunnel,
    /// Passed, not counted: the host's own.
    Host,
    Drop(DropReason),
}

struct Row {
    what: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn row(what: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row { what, frame, expect }
}

/// Runs every row through `prog` on `ingress`, with the counters of `counted_at`.
fn check(b: &mut Bench, prog: &str, ingress: &str, counted_at: &str, rows: Vec<Row>) {
    for r in rows {
        let o = b.run_xdp_counted_at(prog, ingress, counted_at, &r.frame).unwrap();
        assert_eq!(o.frame, r.frame, "{}: the stage changes no frame", r.what);
        let (retval, rx, passed, drop) = match r.expect {
            Expect::Tunnel => (XDP_PASS, 1, 1, None),
            Expect::Host => (XDP_PASS, 0, 0, None),
            Expect::Drop(reason) => (XDP_DROP, 1, 0, Some(reason)),
        };
        assert_eq!(o.retval, retval, "{}: verdict", r.what);
        assert_eq!(o.actions[Action::Received as usize], rx, "{}: rx counted", r.what);
        assert_eq!(o.actions[Action::Passed as usize], passed, "{}: passed counted", r.what);
        match drop {
            Some(reason) => {
                assert_eq!(o.drops[reason as usize], 1, "{}: counted as {}", r.what, reason.label());
                assert_eq!(o.drops.iter().sum::<u64>(), 1, "{}: one drop, one reason", r.what);
            }
            None => assert_eq!(o.drops.iter().sum::<u64>(), 0, "{}: no drop", r.what),
        }
    }
}

/// The rows both stages agree on.
fn rows() -> Vec<Row> {
    let good = tunnel(NODE1, LOCAL, 5000);
    let ip_end = 14 + 20;
    let mut fragment = good.clone();
    fragment[14 + 6] = 0x20; // more fragments: the stack reassembles, tunnel_in checks
    let mut no_vni_flag = good.clone();
    no_vni_flag[ip_end + 8] = 0;
    let mut options = good[..14].to_vec();
    let ip = &good[14..];
    // The same datagram with 4 bytes of IPv4 options (IHL 6): the VNI is found behind them.
    options.push(0x46);
    options.extend_from_slice(&ip[1..20]);
    options.extend_from_slice(&[1, 1, 1, 0]);
    options.extend_from_slice(&ip[20..]);
    vec![
        row("VXLAN from node1, a peer of VNI 5000", good.clone(), Expect::Tunnel),
        row("the same behind IPv4 options", options, Expect::Tunnel),
        row(
            "VNI 5001, which no network here has",
            tunnel(NODE1, LOCAL, 5001),
            Expect::Drop(DropReason::UnknownSegment),
        ),
        row(
            "VNI 5000 from node2, which hosts no port of it",
            tunnel(NODE2, LOCAL, 5000),
            Expect::Drop(DropReason::ForeignVtep),
        ),
        row(
            "VNI 5000 from a host in no agent list",
            tunnel([198, 51, 100, 7], LOCAL, 5000),
            Expect::Drop(DropReason::ForeignVtep),
        ),
        row("a VXLAN header without the VNI flag", no_vni_flag, Expect::Drop(DropReason::Malformed)),
        row(
            "cut inside the VXLAN header",
            good[..ip_end + 8 + 6].to_vec(),
            Expect::Drop(DropReason::Malformed),
        ),
        row(
            "cut inside the inner Ethernet header",
            good[..ip_end + 8 + 8 + 10].to_vec(),
            Expect::Drop(DropReason::Malformed),
        ),
        row("VXLAN to another address (routed through)", tunnel(NODE1, [192, 0, 2, 99], 5001), Expect::Host),
        row("a first fragment of VXLAN: the stack's to reassemble", fragment, Expect::Host),
        row(
            "UDP to another port",
            eth(OUR_MAC, ROUTER_MAC, 0x0800, &ipv4_udp(NODE2, LOCAL, 49152, 53, b"dns")),
            Expect::Host,
        ),
        row(
            "ICMP to the node",
            eth(OUR_MAC, ROUTER_MAC, 0x0800, &ipv4_icmp_echo(NODE2, LOCAL)),
            Expect::Host,
        ),
        row("ARP for the node", arp_request(ROUTER_MAC, NODE2, LOCAL), Expect::Host),
        row("cut inside the IPv4 header", good[..14 + 12].to_vec(), Expect::Host),
        row("cut before the UDP ports", good[..ip_end + 2].to_vec(), Expect::Host),
        row("an Ethernet header alone", good[..14].to_vec(), Expect::Host),
    ]
}

#[test]
fn the_underlay_stage_drops_tunnel_traffic_of_no_served_vni_or_peer_and_passes_the_rest() {
    datapath_tests::require_root();
    let mut b = Bench::new(CONFIG, BINDINGS, &[A, VX, UNDERLAY]).expect("building the underlay bench");
    b.set_underlay(UNDERLAY, VX, Ipv4Addr::from(LOCAL)).unwrap();
    check(&mut b, names::PROG_UNDERLAY_XDP, UNDERLAY, VX, rows());

    // A device not in XDP_UNDERLAY: nothing checked, nothing counted.
    let o = b.run_xdp_counted_at(names::PROG_UNDERLAY_XDP, A, VX, &tunnel(NODE2, LOCAL, 5001)).unwrap();
    assert_eq!((o.retval, o.actions.iter().sum::<u64>()), (XDP_PASS, 0));
}

/// VXLAN on a VLAN uplink whose untagged traffic is the host's, and which holds `local_ip`.
const HOST_UPLINK: &str = "physical_interface_mappings = [\"default:eth2\"]\nuntagged_to_host = true\n";

#[test]
fn an_uplink_that_holds_local_ip_checks_the_tunnel_traffic_in_its_own_stage() {
    datapath_tests::require_root();
    let mut b = Bench::new(&format!("{CONFIG}{HOST_UPLINK}"), BINDINGS, &[A, VX, "eth2"])
        .expect("building the host-uplink bench");
    b.set_underlay("eth2", VX, Ipv4Addr::from(LOCAL)).unwrap();
    // Counted as the uplink's stage: every frame is its rx; tunnel traffic
    // and the host's alike pass as `passed`.
    for r in rows() {
        let o = b.run_xdp(names::PROG_UPLINK_XDP, "eth2", &r.frame).unwrap();
        let want = match r.expect {
            Expect::Drop(reason) => (XDP_DROP, Some(reason)),
            Expect::Tunnel | Expect::Host => (XDP_PASS, None),
        };
        let dropped = DropReason::ALL.iter().copied().find(|x| o.drops[*x as usize] == 1);
        assert_eq!((o.retval, dropped), want, "{}", r.what);
        assert_eq!(o.actions[Action::Received as usize], 1, "{}: the uplink's rx", r.what);
    }
}
