//! Attacks a VM (or the wire) can try, on the real datapath: router
//! advertisements, IPv6 rules hidden behind extension headers and fragments,
//! and 802.1ad S-tags from the wire. None of them may reach another VM or
//! the wire, each is counted under its reason, and legitimate frames of the
//! same shapes still pass.

use std::time::Duration;

use datapath_common::DropReason;
use datapath_tests::{
    capture::Capture,
    cluster::{Cluster, PortSpec},
    pinned::{ifindex_in, port_view},
    raw,
};
use datapath_user::{bindings::parse_mac, frames::*};

use crate::scenario::*;

/// A third VM of net1, on node0 beside vm-1.
fn vm3() -> PortSpec {
    PortSpec::vm("0b0b0b0b-0b0b-4b0b-8b0b-0b0b0b0b0b0b", NET1, "fa:16:3e:0b:0b:0b", "10.10.10.4", "node0")
}

/// Lines of a capture whose Ethernet source is `mac`.
fn from(lines: &[String], mac: &str) -> Vec<String> {
    lines.iter().filter(|l| l.contains(&format!("{mac} >"))).cloned().collect()
}

#[test]
fn forged_router_advertisements_and_hidden_ipv6_rules_never_leave_the_port() {
    let mut c = Cluster::new("hard6", 2).unwrap();
    let (a, b, far) = (vm1(), vm3(), vm2());
    c.write_bindings(&bindings(&[&a, &b, &far])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    let ib = c.add_vm("node0", b.clone()).unwrap();
    let ic = c.add_vm("node1", far.clone()).unwrap();
    for i in [ia, ib, ic] {
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[ia].reaches(&far.ip), "control: vm-1 reaches vm-2 across the wire");
    assert!(c.vms[ia].reaches(&b.ip), "control: vm-1 reaches vm-3 on its node");
    // From here on, only the frames below leave vm-1: no stack chatter of its own.
    c.vms[ia].exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]).unwrap();
    c.vms[ia].exec(&["ip", "link", "set", "eth0", "arp", "off"]).unwrap();

    let (mac_a, mac_b) = (parse_mac(&a.mac).unwrap(), parse_mac(&b.mac).unwrap());
    let (ll_a, ll_b, all_nodes) = (link_local(mac_a), link_local(mac_b), v6("ff02::1"));
    let mc: Mac = [0x33, 0x33, 0, 0, 0, 1];
    let ra = |dst_mac: Mac, dst: [u8; 16], exts: &[Ext]| {
        let msg = icmpv6(ll_a, dst, 134, 0, &ra_body(mac_a));
        eth(dst_mac, mac_a, 0x86dd, &ipv6_ext(ll_a, dst, exts, 58, &msg))
    };
    let na = |target: [u8; 16]| {
        let msg = icmpv6(ll_a, all_nodes, 136, 0, &na_body(target, mac_a));
        eth(mc, mac_a, 0x86dd, &ipv6_ext(ll_a, all_nodes, &[Ext::HopByHop], 58, &msg))
    };
    let dhcpv6_reply = udp6(ll_a, ll_b, 547, 546, &[7, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let (dhcpv6_first, dhcpv6_later) = ipv6_fragments(ll_a, ll_b, 0xd6, 17, &dhcpv6_reply, 8);
    let ra_msg = icmpv6(ll_a, all_nodes, 134, 0, &ra_body(mac_a));
    let (ra_first, ra_later) = ipv6_fragments(ll_a, all_nodes, 0x86, 58, &ra_msg, 8);
    let attacks = vec![
        ra(mc, all_nodes, &[]),
        ra(mac_b, ll_b, &[]),
        ra(mc, all_nodes, &[Ext::HopByHop]),
        ra(mc, all_nodes, &[Ext::DestOpts, Ext::Routing]),
        eth(mc, mac_a, 0x86dd, &ra_first),
        eth(mc, mac_a, 0x86dd, &ra_later),
        na(ll_b),
        eth(mac_b, mac_a, 0x86dd, &ipv6_ext(ll_a, ll_b, &[Ext::DestOpts], 17, &dhcpv6_reply)),
        eth(mac_b, mac_a, 0x86dd, &dhcpv6_first),
        eth(mac_b, mac_a, 0x86dd, &dhcpv6_later),
    ];
    // The same shapes, legitimate: an advertisement of vm-1's own address
    // behind hop-by-hop, and a fragmented UDP datagram to vm-3.
    let udp = udp4_segment(40000, 53, &[0, 67, 0, 68, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]);
    let (udp_first, udp_later) = ipv4_fragments([10, 10, 10, 2], [10, 10, 10, 4], 0x4242, 17, &udp, 8);
    let controls =
        vec![na(ll_a), eth(mac_b, mac_a, 0x0800, &udp_first), eth(mac_b, mac_a, 0x0800, &udp_later)];

    let pin = c.pins.path().join("node0");
    let a_if = ifindex_in(&c.node("node0").ns, &a.device()).unwrap();
    let before = port_view(&pin, a_if).unwrap();
    let at_b = Capture::start(&c.vms[ib].ns, "eth0", "").unwrap();
    let at_far = Capture::start(&c.vms[ic].ns, "eth0", "").unwrap();
    let on_wire = Capture::start(&c.phys, "up-node0", "").unwrap();
    raw::send_in(&c.vms[ia].ns, "eth0", &attacks).unwrap();
    raw::send_in(&c.vms[ia].ns, "eth0", &controls).unwrap();

    let moved = |reason: DropReason| port_view(&pin, a_if).unwrap().drops(reason) - before.drops(reason);
    let counted = datapath_tests::wait_until(Duration::from_secs(5), || {
        moved(DropReason::RaFromVm) == 6
            && moved(DropReason::NdSpoof) == 1
            && moved(DropReason::DhcpServerFromVm) == 3
    });
    let (b_lines, far_lines, wire_lines) =
        (at_b.stop().unwrap(), at_far.stop().unwrap(), on_wire.stop().unwrap());
    assert!(
        counted,
        "drops of vm-1: ra_from_vm {} (want 6), nd_spoof {} (want 1), dhcp_server_from_vm {} (want 3)",
        moved(DropReason::RaFromVm),
        moved(DropReason::NdSpoof),
        moved(DropReason::DhcpServerFromVm)
    );
    // What arrived from vm-1 is exactly the legitimate frames.
    let (b_got, far_got, wire_got) =
        (from(&b_lines, &a.mac), from(&far_lines, &a.mac), from(&wire_lines, &a.mac));
    assert_eq!(b_got.len(), 3, "vm-3 should get the NA and both UDP fragments, no more: {b_got:#?}");
    assert_eq!(far_got.len(), 1, "vm-2 should get the NA only: {far_got:#?}");
    assert_eq!(wire_got.len(), 1, "the wire should carry the NA only: {wire_got:#?}");
    for line in b_got.iter().chain(&far_got).chain(&wire_got) {
        assert!(!line.contains("router advertisement"), "an RA leaked: {line}");
    }
}

#[test]
fn an_802_1ad_s_tag_from_the_wire_reaches_no_network() {
    let mut c = Cluster::new("hardqinq", 1).unwrap();
    let a = vm1();
    c.write_bindings(&bindings(&[&a])).unwrap();
    let ia = c.add_vm("node0", a.clone()).unwrap();
    c.vms[ia].set_static_ip().unwrap();
    c.start_agent("node0").unwrap();
    // The control frame is flooded to vm-1 only once its port is wired: the
    // agent answers after its first reconcile, which wires the uplink and vm-1.
    c.wait_agent("node0", Duration::from_secs(60)).unwrap();
    let pin = c.pins.path().join("node0");
    let uplink = ifindex_in(&c.node("node0").ns, "eth2").unwrap();
    assert!(port_view(&pin, uplink).is_ok(), "the agent programmed the uplink");
    let before = port_view(&pin, uplink).unwrap();

    let at_a = Capture::start(&c.vms[ia].ns, "eth0", "").unwrap();
    let (s_tagged_src, c_tagged_src) = ([2, 0, 0, 0, 0x88, 0xa8], [2, 0, 0, 0, 0x81, 0]);
    let frames = vec![
        tagged(&arp_request(s_tagged_src, [10, 10, 10, 88], [10, 10, 10, 2]), 0x88a8, 1000),
        tagged(&arp_request(c_tagged_src, [10, 10, 10, 81], [10, 10, 10, 2]), 0x8100, 1000),
    ];
    raw::send_in(&c.phys, "up-node0", &frames).unwrap();
    let counted = datapath_tests::wait_until(Duration::from_secs(5), || {
        port_view(&pin, uplink).unwrap().drops(DropReason::UnknownSegment)
            > before.drops(DropReason::UnknownSegment)
    });
    let lines = at_a.stop().unwrap();
    assert!(counted, "unknown_segment did not count the S-tagged frame on the uplink");
    assert_eq!(from(&lines, "02:00:00:00:81:00").len(), 1, "the C-tagged control reaches vm-1: {lines:#?}");
    assert!(from(&lines, "02:00:00:00:88:a8").is_empty(), "the S-tagged frame reached vm-1: {lines:#?}");
}
