//! VM ports on a VXLAN network: l2population unicast straight to one VTEP,
//! head-end replication of floods, the ARP responder, and the tunnel MTU.

use std::net::Ipv4Addr;

use datapath_common::{Action, DropReason, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

/// A node with tunnels (VTEP 192.0.2.10) and no uplink.
pub const CONFIG: &str = r#"
host = "node0"
bindings = "/unused.json"
pin_path = "/sys/fs/bpf/unused"
local_ip = "192.0.2.10"
tunnel_types = ["vxlan"]
"#;

const BINDINGS: &str = r#"{
 "networks": [{"id": "tun", "provider:network_type": "vxlan", "provider:segmentation_id": 5000, "mtu": 1450}],
 "ports": [
  {"id": "a0000000-0a00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0a", "fixed_ips": [{"ip_address": "10.20.0.2"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
  {"id": "b0000000-0b00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0b", "fixed_ips": [{"ip_address": "10.20.0.3"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
  {"id": "c0000000-0c00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0c", "fixed_ips": [{"ip_address": "10.20.0.4"}], "binding:host_id": "node1"},
  {"id": "e0000000-0e00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0e", "fixed_ips": [{"ip_address": "10.20.0.5"}], "binding:host_id": "node2"},
  {"id": "f0000000-0f00", "network_id": "tun", "mac_address": "fa:16:3e:00:00:0f", "fixed_ips": [{"ip_address": "10.20.0.6"}], "binding:host_id": "node1"}
 ],
 "agents": [
  {"host": "node0", "configurations": {"tunneling_ip": "192.0.2.10"}},
  {"host": "node1", "configurations": {"tunneling_ip": "192.0.2.11"}},
  {"host": "node2", "configurations": {"tunneling_ip": "192.0.2.12"}}
 ]
}"#;

const A: &str = "tapa0000000-0a";
const B: &str = "tapb0000000-0b";
const VX: &str = "vxlan-dp";
const NODE1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NODE2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn bench() -> Bench {
    datapath_tests::require_root();
    Bench::new(CONFIG, BINDINGS, &[A, B, VX]).expect("building the tunnel bench")
}

#[test]
fn vxlan_unicast_flood_arp_responder_and_mtu() {
    let mut bench = bench();
    let (a, c) = (neutron_mac(0x0a), neutron_mac(0x0c));
    let (a_ip, c_ip) = ([10, 20, 0, 2], [10, 20, 0, 4]);

    // l2population: a MAC bound to node1 goes to node1's VTEP only, with the VNI.
    let to_c = eth(c, a, 0x0800, &ipv4_icmp_echo(a_ip, c_ip));
    let out = bench.run(names::PROG_VM_PORT, A, &to_c, true).unwrap();
    assert_eq!(out.retval, 7);
    assert_eq!(out.actions[Action::ToUplink as usize], 1);
    assert_eq!(bench.tunnel_targets(&out), vec![(VX.into(), 0, NODE1, 5000)]);

    // Unknown unicast and broadcast: local ports, then every VTEP with ports of the network, once each.
    let unknown = eth(neutron_mac(0x77), a, 0x0800, &ipv4_icmp_echo(a_ip, [10, 20, 0, 77]));
    let out = bench.run(names::PROG_VM_PORT, A, &unknown, true).unwrap();
    assert_eq!(out.actions[Action::Flooded as usize], 1);
    assert_eq!(
        bench.tunnel_targets(&out),
        vec![
            (B.into(), 0, Ipv4Addr::UNSPECIFIED, 0),
            (VX.into(), 0, NODE1, 5000),
            (VX.into(), 0, NODE2, 5000)
        ]
    );

    // The ARP responder: a request for a known port's IP comes back as a reply, nothing floods.
    let out = bench.run(names::PROG_VM_PORT, A, &arp_request(a, a_ip, c_ip), true).unwrap();
    assert_eq!(out.actions[Action::ArpReplied as usize], 1, "answered locally");
    assert_eq!(
        bench.tunnel_targets(&out),
        vec![(A.into(), 0, Ipv4Addr::UNSPECIFIED, 0)],
        "back to the asker only"
    );
    assert_eq!(
        out.frame,
        eth(a, c, 0x0806, &arp(2, c, c_ip, a, a_ip)),
        "a well-formed ARP reply from c's MAC"
    );
    // A request for an address nobody has is flooded as usual.
    let out = bench.run(names::PROG_VM_PORT, A, &arp_request(a, a_ip, [10, 20, 0, 99]), true).unwrap();
    assert_eq!(out.actions[Action::Flooded as usize], 1);

    // The tunnel MTU (1450): a 1500-byte IP packet cannot be encapsulated.
    let big = eth(c, a, 0x0800, &ipv4_udp(a_ip, c_ip, 5000, 5001, &[0u8; 1472]));
    let out = bench.run(names::PROG_VM_PORT, A, &big, true).unwrap();
    assert_eq!(out.drops[DropReason::MtuExceeded as usize], 1);
    assert_eq!(out.retval, 2);
    // Flooded, it still reaches the local port; only the tunnel copies are refused.
    let big_bcast = eth(BROADCAST, a, 0x0800, &ipv4_udp(a_ip, [10, 20, 0, 255], 5000, 5001, &[0u8; 1472]));
    let out = bench.run(names::PROG_VM_PORT, A, &big_bcast, true).unwrap();
    assert_eq!(bench.tunnel_targets(&out), vec![(B.into(), 0, Ipv4Addr::UNSPECIFIED, 0)]);
    assert_eq!(out.actions[Action::FloodTunnelMtu as usize], 1, "counted, and not as a drop of the frame");
    assert_eq!(out.drops.iter().sum::<u64>(), 0);
    // A frame that fits passes.
    let fits = eth(c, a, 0x0800, &ipv4_udp(a_ip, c_ip, 5000, 5001, &[0u8; 1422]));
    let out = bench.run(names::PROG_VM_PORT, A, &fits, true).unwrap();
    assert_eq!(out.actions[Action::ToUplink as usize], 1);
}

/// `tunnel_in` on frames the VXLAN device decapsulated, with the VNI and the
/// remote VTEP injected through the program's trace hook.
#[test]
fn tunnel_in_delivers_learns_and_refuses_by_vni_and_source() {
    let mut bench = bench();
    let (a, b) = (neutron_mac(0x0a), neutron_mac(0x0b));
    let stranger = [0x02, 0, 0, 0, 0, 0x77];
    let from_stranger = eth(a, stranger, 0x0800, &ipv4_icmp_echo([10, 20, 0, 77], [10, 20, 0, 2]));

    // A known VNI to a local MAC: delivered to that port only, never back into a tunnel.
    let out = bench.run_tunnel(VX, &from_stranger, 5000, NODE1).unwrap();
    assert_eq!((out.retval, out.actions[Action::ToLocalPort as usize]), (7, 1));
    assert_eq!(bench.tunnel_targets(&out), vec![(A.into(), 0, Ipv4Addr::UNSPECIFIED, 0)]);
    assert_eq!(out.frame, from_stranger, "the inner frame is delivered as it came");
    // ...and its source is learned behind the VTEP it came from.
    assert_eq!(out.actions[Action::Learned as usize], 1);
    let to_stranger = eth(stranger, a, 0x0800, &ipv4_icmp_echo([10, 20, 0, 2], [10, 20, 0, 77]));
    let back = bench.run(names::PROG_VM_PORT, A, &to_stranger, true).unwrap();
    assert_eq!(bench.tunnel_targets(&back), vec![(VX.into(), 0, NODE1, 5000)], "the reply goes to that VTEP");

    // A broadcast from a tunnel reaches the local ports, no VTEP.
    let bcast = arp_request(stranger, [10, 20, 0, 77], [10, 20, 0, 3]);
    let out = bench.run_tunnel(VX, &bcast, 5000, NODE2).unwrap();
    assert_eq!(out.actions[Action::Flooded as usize], 1);
    assert_eq!(
        bench.tunnel_targets(&out),
        vec![(A.into(), 0, Ipv4Addr::UNSPECIFIED, 0), (B.into(), 0, Ipv4Addr::UNSPECIFIED, 0)]
    );

    // A VNI this node does not serve, a source claiming a local port's MAC,
    // and a frame with no tunnel metadata at all are dropped, each for its reason.
    let out = bench.run_tunnel(VX, &from_stranger, 5001, NODE1).unwrap();
    assert_eq!((out.retval, out.drops[DropReason::UnknownSegment as usize]), (2, 1));
    let spoof = eth(a, b, 0x0800, &ipv4_icmp_echo([10, 20, 0, 3], [10, 20, 0, 2]));
    let out = bench.run_tunnel(VX, &spoof, 5000, NODE1).unwrap();
    assert_eq!((out.retval, out.drops[DropReason::UplinkSrcIsLocal as usize]), (2, 1));
    let out = bench.run(names::PROG_TUNNEL, VX, &from_stranger, true).unwrap();
    assert_eq!((out.retval, out.drops[DropReason::TunnelOpFailed as usize]), (2, 1));

    // Only the network's tunnel peers are heard: a VTEP in no agent's
    // configuration, and this node's own address, are foreign to it.
    for vtep in [Ipv4Addr::new(192, 0, 2, 99), Ipv4Addr::new(192, 0, 2, 10)] {
        let out = bench.run_tunnel(VX, &from_stranger, 5000, vtep).unwrap();
        assert_eq!((out.retval, out.drops[DropReason::ForeignVtep as usize]), (2, 1), "from {vtep}");
        assert_eq!(out.actions[Action::Learned as usize], 0, "nothing learned from {vtep}");
    }
}

/// A peer of the network is one that hosts a port of it: node2 leaves the
/// network when its only port goes, and is no peer of it any more.
#[test]
fn a_vtep_whose_ports_left_the_network_is_no_peer_of_it() {
    let mut bench = bench();
    let frame =
        eth(neutron_mac(0x0a), neutron_mac(0x77), 0x0800, &ipv4_icmp_echo([10, 20, 0, 77], [10, 20, 0, 2]));
    let out = bench.run_tunnel(VX, &frame, 5000, NODE2).unwrap();
    assert_eq!(out.actions[Action::ToLocalPort as usize], 1, "node2 hosts port e0000000: a peer");
    let without_e: String =
        BINDINGS.lines().filter(|l| !l.contains("e0000000-0e00")).collect::<Vec<_>>().join("\n");
    bench.reseed(CONFIG, &without_e).unwrap();
    let out = bench.run_tunnel(VX, &frame, 5000, NODE2).unwrap();
    assert_eq!((out.retval, out.drops[DropReason::ForeignVtep as usize]), (2, 1));
    let out = bench.run_tunnel(VX, &frame, 5000, NODE1).unwrap();
    assert_eq!(out.actions[Action::ToLocalPort as usize], 1, "node1 still is");
}
