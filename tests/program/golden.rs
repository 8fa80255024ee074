//! The golden-frame table: one row per behaviour, each run traced (so floods
//! record their destinations instead of sending copies).

use datapath_common::{Action, DropReason, names};
use datapath_user::frames::*;

use crate::scenario::*;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

enum Expect {
    /// Dropped, counted under this reason.
    Drop(DropReason),
    /// Sent: counted under `action`, to exactly these (device, VLAN pushed) targets,
    /// leaving `frame` (None: the input, unchanged).
    Send { action: Action, targets: &'static [(&'static str, u32)], frame: Option<Vec<u8>> },
}

struct Row {
    what: &'static str,
    prog: &'static str,
    ingress: &'static str,
    frame: Vec<u8>,
    expect: Expect,
}

fn vm(what: &'static str, ingress: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row { what, prog: names::PROG_VM_PORT, ingress, frame, expect }
}

fn wire(what: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row { what, prog: names::PROG_UPLINK, ingress: UPLINK, frame, expect }
}

fn send(action: Action, targets: &'static [(&'static str, u32)]) -> Expect {
    Expect::Send { action, targets, frame: None }
}

const NET1_FLOOD_FROM_A: &[(&str, u32)] = &[(UPLINK, 1000), (X, 0), (B, 0), (D, 0)];

/// The all-nodes multicast group and its MAC.
const ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// A router advertisement from `mac`'s link-local address to all nodes, behind `exts`.
fn ra(mac: Mac, exts: &[Ext]) -> Vec<u8> {
    let (src, dst) = (link_local(mac), v6("ff02::1"));
    eth(ALL_NODES_MAC, mac, 0x86dd, &ipv6_ext(src, dst, exts, 58, &icmpv6(src, dst, 134, 0, &ra_body(mac))))
}

/// A neighbour advertisement from port A for `target`, behind `exts`.
fn na_from_a(exts: &[Ext], target: [u8; 16]) -> Vec<u8> {
    let (src, dst) = (link_local(MAC_A), v6("ff02::1"));
    let body = icmpv6(src, dst, 136, 0, &na_body(target, MAC_A));
    eth(ALL_NODES_MAC, MAC_A, 0x86dd, &ipv6_ext(src, dst, exts, 58, &body))
}

/// A DHCPv6 reply (server port 547 to client port 546) from port A to port B, behind `exts`.
fn dhcpv6_reply_from_a(exts: &[Ext]) -> Vec<u8> {
    let (src, dst) = (link_local(MAC_A), link_local(MAC_B));
    eth(MAC_B, MAC_A, 0x86dd, &ipv6_ext(src, dst, exts, 17, &udp6(src, dst, 547, 546, &[7, 0, 0, 1])))
}

/// Both fragments of a UDP datagram from port A to port B over IPv4 (`v4`) or IPv6.
/// The later fragment's first bytes look like a DHCP server's ports (67 -> 68):
/// read as a header, they would be mistaken for one.
fn udp_fragments_a_to_b(v4: bool, src4: [u8; 4], id: u32, sport: u16) -> (Vec<u8>, Vec<u8>) {
    let payload = [0, 67, 0, 68, 0, 16, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let (first, later) = if v4 {
        let udp = udp4_segment(sport, 53, &payload);
        ipv4_fragments(src4, [10, 10, 10, 3], id as u16, 17, &udp, 8)
    } else {
        let (src, dst) = (v6("2001:db8::a"), link_local(MAC_B));
        ipv6_fragments(src, dst, id, 17, &udp6(src, dst, sport, 53, &payload), 8)
    };
    let ethertype = if v4 { 0x0800 } else { 0x86dd };
    (eth(MAC_B, MAC_A, ethertype, &first), eth(MAC_B, MAC_A, ethertype, &later))
}

/// `frame` (Ethernet + IPv4) with its IPv4 total length changed by `delta`.
fn ipv4_total_len_plus(mut frame: Vec<u8>, delta: i32) -> Vec<u8> {
    let len = u16::from_be_bytes([frame[16], frame[17]]) as i32 + delta;
    frame[16..18].copy_from_slice(&(len as u16).to_be_bytes());
    frame
}

fn rows() -> Vec<Row> {
    let a_ip = [10, 10, 10, 2];
    let b_ip = [10, 10, 10, 3];
    let dhcp_discover =
        eth(BROADCAST, MAC_A, 0x0800, &ipv4_udp([0; 4], [255; 4], 68, 67, &dhcp_body(1, MAC_A)));
    let dhcp_offer_from =
        |mac: Mac, ip: [u8; 4]| eth(MAC_B, mac, 0x0800, &ipv4_udp(ip, b_ip, 67, 68, &dhcp_body(2, MAC_B)));
    let untagged_from_wire = icmp(MAC_REMOTE, MAC_A, [10, 10, 10, 30], a_ip);
    let wire_bcast = arp_request([0x02, 0, 0, 0, 0, 0x51], [10, 10, 10, 51], a_ip);

    vec![
        // Local switching and flooding.
        vm(
            "unicast to a port of the same network goes to that port only",
            A,
            icmp(MAC_A, MAC_B, a_ip, b_ip),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "broadcast ARP floods to the network's other up ports and the uplink tagged 1000",
            A,
            arp_request(MAC_A, a_ip, b_ip),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "unknown unicast floods like broadcast",
            A,
            icmp(MAC_A, neutron_mac(0x77), a_ip, [10, 10, 10, 77]),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "a broadcast on net2 stays in net2: only the uplink, tagged 1001",
            C,
            arp_request(MAC_C, a_ip, b_ip),
            send(Action::Flooded, &[(UPLINK, 1001)]),
        ),
        vm(
            "the flat network leaves the uplink untagged",
            F,
            arp_request(MAC_F, [192, 168, 0, 2], [192, 168, 0, 3]),
            send(Action::Flooded, &[(UPLINK, 0)]),
        ),
        vm(
            "a frame to the port's own MAC is a hairpin",
            A,
            icmp(MAC_A, MAC_A, a_ip, a_ip),
            Expect::Drop(DropReason::Hairpin),
        ),
        vm(
            "an admin-down port is not a destination: its MAC is unknown and flooded",
            A,
            icmp(MAC_A, MAC_P, a_ip, [10, 10, 10, 4]),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        // Port state.
        vm(
            "an admin-down port's frames are dropped",
            P,
            arp_request(MAC_P, [10, 10, 10, 4], a_ip),
            Expect::Drop(DropReason::PortAdminDown),
        ),
        vm(
            "an unbound tap's frames are dropped",
            U,
            arp_request(neutron_mac(0x11), [10, 10, 10, 11], a_ip),
            Expect::Drop(DropReason::PortUnbound),
        ),
        vm(
            "a device the agent does not know is dropped",
            "stray0",
            arp_request(neutron_mac(0x12), [10, 10, 10, 12], a_ip),
            Expect::Drop(DropReason::PortUnknown),
        ),
        // Anti-spoofing.
        vm(
            "a forged source MAC is dropped",
            A,
            icmp(neutron_mac(0x66), MAC_B, a_ip, b_ip),
            Expect::Drop(DropReason::SrcMacSpoof),
        ),
        vm(
            "a forged IPv4 source is dropped",
            A,
            icmp(MAC_A, MAC_B, [10, 10, 10, 99], b_ip),
            Expect::Drop(DropReason::Ipv4SrcSpoof),
        ),
        vm(
            "another port's IPv4 address is a forged source too",
            A,
            icmp(MAC_A, MAC_B, b_ip, b_ip),
            Expect::Drop(DropReason::Ipv4SrcSpoof),
        ),
        vm(
            "an allowed-address-pair IP passes",
            A,
            icmp(MAC_A, MAC_B, [10, 10, 10, 100], b_ip),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "an allowed pair with its own MAC passes with that MAC",
            A,
            icmp(MAC_PAIR, MAC_B, [10, 10, 10, 200], b_ip),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "the pair's IP with the port's own MAC is not the pair",
            A,
            icmp(MAC_A, MAC_B, [10, 10, 10, 200], b_ip),
            Expect::Drop(DropReason::Ipv4SrcSpoof),
        ),
        vm(
            "DHCPDISCOVER from 0.0.0.0 is allowed",
            A,
            dhcp_discover,
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "a DHCP server reply from a VM is dropped",
            A,
            dhcp_offer_from(MAC_A, a_ip),
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "the DHCP port may send DHCP replies",
            D,
            dhcp_offer_from(MAC_D, [10, 10, 10, 10]),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "ARP with a forged sender IP is dropped",
            A,
            arp_request(MAC_A, b_ip, [10, 10, 10, 1]),
            Expect::Drop(DropReason::ArpSpoof),
        ),
        vm(
            "ARP whose sender MAC differs from the frame's is dropped",
            A,
            eth(BROADCAST, MAC_A, 0x0806, &arp(1, MAC_B, a_ip, [0; 6], b_ip)),
            Expect::Drop(DropReason::ArpSpoof),
        ),
        vm(
            "an ARP probe (sender 0.0.0.0) is allowed",
            A,
            arp_request(MAC_A, [0; 4], a_ip),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "a neighbour advertisement for another's address is dropped",
            A,
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                MAC_A,
                0x86dd,
                &ipv6_na(link_local(MAC_A), v6("ff02::1"), v6("2001:db8::b"), MAC_A),
            ),
            Expect::Drop(DropReason::NdSpoof),
        ),
        vm(
            "a neighbour advertisement for the port's own address floods",
            A,
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                MAC_A,
                0x86dd,
                &ipv6_na(link_local(MAC_A), v6("ff02::1"), v6("2001:db8::a"), MAC_A),
            ),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "a forged IPv6 source is dropped",
            A,
            eth(
                [0x33, 0x33, 0, 0, 0, 1],
                MAC_A,
                0x86dd,
                &ipv6_na(v6("2001:db8::bad"), v6("ff02::1"), v6("2001:db8::a"), MAC_A),
            ),
            Expect::Drop(DropReason::Ipv6SrcSpoof),
        ),
        vm(
            "port security off: a forged source passes",
            X,
            icmp(neutron_mac(0x66), MAC_B, [10, 10, 10, 99], b_ip),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        // Router advertisements: only network:* ports (routers) and ports
        // without port security may send them.
        vm(
            "a router advertisement from a VM is dropped",
            A,
            ra(MAC_A, &[]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a unicast router advertisement to another VM is dropped",
            A,
            {
                let (src, dst) = (link_local(MAC_A), link_local(MAC_B));
                eth(MAC_B, MAC_A, 0x86dd, &ipv6(src, dst, 58, &icmpv6(src, dst, 134, 0, &ra_body(MAC_A))))
            },
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a network:* port (a router) may send router advertisements",
            D,
            ra(MAC_D, &[]),
            send(Action::Flooded, &[(UPLINK, 1000), (X, 0), (A, 0), (B, 0)]),
        ),
        vm(
            "port security off: a router advertisement passes",
            X,
            ra(neutron_mac(0x09), &[]),
            send(Action::Flooded, &[(UPLINK, 1000), (A, 0), (B, 0), (D, 0)]),
        ),
        // IPv6 extension headers hide nothing: the rules apply to the upper layer.
        vm(
            "a router advertisement behind hop-by-hop options is dropped",
            A,
            ra(MAC_A, &[Ext::HopByHop]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a router advertisement behind destination options and a routing header is dropped",
            A,
            ra(MAC_A, &[Ext::DestOpts, Ext::Routing]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a router advertisement behind AH is dropped",
            A,
            ra(MAC_A, &[Ext::Ah]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a router advertisement in an atomic fragment is dropped",
            A,
            ra(MAC_A, &[Ext::Fragment { offset: 0, more: false, id: 1 }]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "six extension headers are walked to the router advertisement behind them",
            A,
            ra(MAC_A, &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Ah, Ext::DestOpts, Ext::DestOpts]),
            Expect::Drop(DropReason::RaFromVm),
        ),
        vm(
            "a chain of seven extension headers is malformed (fails closed)",
            A,
            ra(
                MAC_A,
                &[
                    Ext::HopByHop,
                    Ext::DestOpts,
                    Ext::Routing,
                    Ext::Ah,
                    Ext::DestOpts,
                    Ext::Routing,
                    Ext::DestOpts,
                ],
            ),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "an extension header longer than the packet is malformed",
            A,
            eth(
                ALL_NODES_MAC,
                MAC_A,
                0x86dd,
                &ipv6(link_local(MAC_A), v6("ff02::1"), 0, &[58, 5, 1, 4, 0, 0, 0, 0]),
            ),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "a neighbour advertisement for another's address behind hop-by-hop is dropped",
            A,
            na_from_a(&[Ext::HopByHop], link_local(MAC_B)),
            Expect::Drop(DropReason::NdSpoof),
        ),
        vm(
            "a neighbour advertisement for the port's own address behind hop-by-hop floods",
            A,
            na_from_a(&[Ext::HopByHop], v6("2001:db8::a")),
            send(Action::Flooded, NET1_FLOOD_FROM_A),
        ),
        vm(
            "a DHCPv6 server reply behind destination options is dropped",
            A,
            dhcpv6_reply_from_a(&[Ext::DestOpts]),
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "a DHCPv6 server reply in an atomic fragment is dropped",
            A,
            dhcpv6_reply_from_a(&[Ext::Fragment { offset: 0, more: false, id: 2 }]),
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        // Fragments. These rows run in order: a later fragment gets the
        // verdict its first fragment got (remembered in FRAG_VERDICTS).
        vm(
            "an IPv4 first fragment of an allowed UDP datagram passes",
            A,
            udp_fragments_a_to_b(true, a_ip, 0x101, 40000).0,
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "its later fragment passes on that verdict, though its payload looks like DHCP server ports",
            A,
            udp_fragments_a_to_b(true, a_ip, 0x101, 40000).1,
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "an IPv4 first fragment of a DHCP server reply is dropped",
            A,
            udp_fragments_a_to_b(true, a_ip, 0x102, 67).0,
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "its later fragment is dropped for the same reason",
            A,
            udp_fragments_a_to_b(true, a_ip, 0x102, 67).1,
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "a later IPv4 fragment still has its source checked",
            A,
            udp_fragments_a_to_b(true, [10, 10, 10, 99], 0x101, 40000).1,
            Expect::Drop(DropReason::Ipv4SrcSpoof),
        ),
        vm(
            "a later IPv4 fragment whose first fragment was never sent is dropped",
            A,
            udp_fragments_a_to_b(true, a_ip, 0x103, 40000).1,
            Expect::Drop(DropReason::FragUnknown),
        ),
        vm(
            "an IPv6 first fragment of a DHCPv6 server reply is dropped",
            A,
            udp_fragments_a_to_b(false, a_ip, 0x201, 547).0,
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "its later fragment is dropped for the same reason",
            A,
            udp_fragments_a_to_b(false, a_ip, 0x201, 547).1,
            Expect::Drop(DropReason::DhcpServerFromVm),
        ),
        vm(
            "an IPv6 first fragment of an allowed UDP datagram passes",
            A,
            udp_fragments_a_to_b(false, a_ip, 0x202, 40000).0,
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "its later fragment passes on that verdict",
            A,
            udp_fragments_a_to_b(false, a_ip, 0x202, 40000).1,
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "a later IPv6 fragment whose first fragment was never sent is dropped",
            A,
            udp_fragments_a_to_b(false, a_ip, 0x203, 40000).1,
            Expect::Drop(DropReason::FragUnknown),
        ),
        // IP lengths against the frame, on every VM port.
        vm(
            "an IPv4 total length beyond the frame is malformed",
            A,
            ipv4_total_len_plus(icmp(MAC_A, MAC_B, a_ip, b_ip), 10),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "port security off: an IPv4 total length beyond the frame is still malformed",
            X,
            ipv4_total_len_plus(icmp(neutron_mac(0x09), MAC_B, [10, 10, 10, 5], b_ip), 10),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "an IPv4 total length shorter than the header is malformed",
            A,
            {
                let f = icmp(MAC_A, MAC_B, a_ip, b_ip);
                let len = u16::from_be_bytes([f[16], f[17]]) as i32;
                ipv4_total_len_plus(f, 16 - len)
            },
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "Ethernet padding after the IPv4 datagram is fine",
            A,
            {
                let mut f = icmp(MAC_A, MAC_B, a_ip, b_ip);
                f.extend_from_slice(&[0; 10]);
                f
            },
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        vm(
            "an IPv6 payload length beyond the frame is malformed",
            A,
            {
                let mut f = na_from_a(&[], v6("2001:db8::a"));
                let len = u16::from_be_bytes([f[18], f[19]]) + 8;
                f[18..20].copy_from_slice(&len.to_be_bytes());
                f
            },
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "the only port of a network without uplink here has nobody to flood to",
            L,
            arp_request(MAC_L, [172, 16, 0, 2], [172, 16, 0, 3]),
            Expect::Drop(DropReason::FloodNoTarget),
        ),
        vm(
            "a priority tag with no ethertype behind it cannot be popped",
            A,
            tagged(&MAC_B.iter().chain(&MAC_A).copied().collect::<Vec<u8>>(), 0x8100, 0)[..16].to_vec(),
            Expect::Drop(DropReason::VlanOpFailed),
        ),
        // Odd frames from VMs.
        vm(
            "a frame the VM tags itself is dropped",
            A,
            tagged(&icmp(MAC_A, MAC_B, a_ip, b_ip), 0x8100, 5),
            Expect::Drop(DropReason::VmTagged),
        ),
        vm(
            "a QinQ frame from a VM is dropped",
            A,
            tagged(&icmp(MAC_A, MAC_B, a_ip, b_ip), 0x88a8, 5),
            Expect::Drop(DropReason::VmTagged),
        ),
        vm(
            "a priority tag over a real tag is dropped",
            A,
            tagged(&tagged(&icmp(MAC_A, MAC_B, a_ip, b_ip), 0x8100, 7), 0x8100, 0),
            Expect::Drop(DropReason::VmTagged),
        ),
        vm(
            "a priority tag (VID 0) is stripped and the frame delivered",
            A,
            tagged(&icmp(MAC_A, MAC_B, a_ip, b_ip), 0x8100, 0),
            Expect::Send {
                action: Action::ToLocalPort,
                targets: &[(B, 0)],
                frame: Some(icmp(MAC_A, MAC_B, a_ip, b_ip)),
            },
        ),
        vm(
            "STP BPDUs are dropped",
            A,
            eth([0x01, 0x80, 0xc2, 0, 0, 0], MAC_A, 0x0026, &[0x42, 0x42, 0x03, 0, 0, 0, 0]),
            Expect::Drop(DropReason::L2Control),
        ),
        vm(
            "LLDP is dropped",
            A,
            eth([0x01, 0x80, 0xc2, 0, 0, 0x0e], MAC_A, 0x88cc, &[0; 32]),
            Expect::Drop(DropReason::L2Control),
        ),
        vm(
            "a multicast source MAC is invalid",
            A,
            icmp([0x01, 0, 0x5e, 0, 0, 1], MAC_B, a_ip, b_ip),
            Expect::Drop(DropReason::SrcMacInvalid),
        ),
        // BPF_PROG_TEST_RUN refuses frames with a truncated IPv4 header; those are
        // sent through a real device in `injected.rs`.
        vm(
            "an IPv4 header with IHL < 5 is malformed",
            A,
            eth(MAC_B, MAC_A, 0x0800, &[0x43; 20]),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "a truncated ARP body is malformed",
            A,
            eth(BROADCAST, MAC_A, 0x0806, &[0, 1, 8, 0, 6, 4, 0, 1, 0xfa]),
            Expect::Drop(DropReason::Malformed),
        ),
        vm(
            "a 16-byte runt with an unknown ethertype passes, as in the legacy path",
            A,
            eth(MAC_B, MAC_A, 0x0000, &[0, 0]),
            send(Action::ToLocalPort, &[(B, 0)]),
        ),
        // From the wire.
        wire(
            "tag 1000 to a local MAC: tag removed, delivered to that port only",
            tagged(&untagged_from_wire, 0x8100, 1000),
            Expect::Send {
                action: Action::ToLocalPort,
                targets: &[(A, 0)],
                frame: Some(untagged_from_wire.clone()),
            },
        ),
        wire(
            "a broadcast with tag 1000 reaches net1's local ports, never the uplink back",
            tagged(&wire_bcast, 0x8100, 1000),
            Expect::Send {
                action: Action::Flooded,
                targets: &[(X, 0), (A, 0), (B, 0), (D, 0)],
                frame: Some(wire_bcast.clone()),
            },
        ),
        wire(
            "a broadcast with tag 1001 reaches net2 only",
            tagged(&wire_bcast, 0x8100, 1001),
            Expect::Send { action: Action::Flooded, targets: &[(C, 0)], frame: Some(wire_bcast.clone()) },
        ),
        wire(
            "an untagged frame belongs to the flat network",
            arp_request([0x02, 0, 0, 0, 0, 0x52], [192, 168, 0, 9], [192, 168, 0, 2]),
            send(Action::Flooded, &[(F, 0)]),
        ),
        wire(
            "a priority-tagged frame belongs to the flat network, tag removed",
            tagged(&arp_request([0x02, 0, 0, 0, 0, 0x53], [192, 168, 0, 9], [192, 168, 0, 2]), 0x8100, 0),
            Expect::Send {
                action: Action::Flooded,
                targets: &[(F, 0)],
                frame: Some(arp_request([0x02, 0, 0, 0, 0, 0x53], [192, 168, 0, 9], [192, 168, 0, 2])),
            },
        ),
        wire(
            "an unknown segmentation id is dropped",
            tagged(&wire_bcast, 0x8100, 1234),
            Expect::Drop(DropReason::UnknownSegment),
        ),
        wire(
            "QinQ from the wire is an unknown segment",
            tagged(&wire_bcast, 0x88a8, 1000),
            Expect::Drop(DropReason::UnknownSegment),
        ),
        wire(
            "a frame from the wire claiming a local port's MAC is dropped",
            tagged(&icmp(MAC_A, MAC_B, a_ip, b_ip), 0x8100, 1000),
            Expect::Drop(DropReason::UplinkSrcIsLocal),
        ),
        wire(
            "a truncated tag from the wire is malformed",
            {
                let mut f = tagged(&wire_bcast, 0x8100, 1000);
                f.truncate(15);
                f
            },
            Expect::Drop(DropReason::Malformed),
        ),
    ]
}

/// Drop reasons no row of this table produces, and where each is tested instead.
const TESTED_ELSEWHERE: &[(DropReason, &str)] = &[
    // bpf_redirect only refuses bad flags; a target that vanished shows after the program returned.
    (DropReason::RedirectFailed, "no frame can make the helper fail"),
    (DropReason::MtuExceeded, "tunnel.rs: the tunnel MTU"),
    (DropReason::TunnelOpFailed, "tunnel.rs: a frame on the VXLAN device without tunnel metadata"),
    (DropReason::ForeignVtep, "tunnel.rs: only a network's tunnel peers are heard"),
    (DropReason::QosPoliced, "qos.rs: a policer needs a run of frames, not one"),
    // A MAC learned (or known) with no uplink or VTEP behind it needs a learned table that
    // the bindings cannot make; the differential fuzzer seeds and checks both.
    (DropReason::NoUplink, "the differential fuzzer (fuzz layer)"),
    (DropReason::NoVtep, "the differential fuzzer (fuzz layer)"),
    // A port whose network entry is missing exists only for the instant of an
    // update; derive never leaves one (checked by the desired-state invariants).
    (DropReason::NoNetwork, "transient; the differential fuzzer's model covers the rule"),
    // The connection table carries state from frame to frame: those tables run in order.
    (DropReason::SgIngressDenied, "secgroups.rs: rules, allowances, fragments"),
    (DropReason::SgEgressDenied, "secgroups.rs: allowances and stateless ports"),
    (DropReason::CtInvalid, "secgroups.rs: connection tracking"),
    (DropReason::CtFull, "secgroups.rs: a full connection table"),
];

/// Every drop reason is a row of the table, or says where else it is tested.
#[test]
fn every_drop_reason_has_a_golden_row_or_says_where_it_is_tested() {
    let in_rows: Vec<DropReason> = rows()
        .iter()
        .filter_map(|r| match r.expect {
            Expect::Drop(reason) => Some(reason),
            Expect::Send { .. } => None,
        })
        .collect();
    let missing: Vec<&str> = DropReason::ALL
        .iter()
        .filter(|r| !in_rows.contains(r) && !TESTED_ELSEWHERE.iter().any(|(e, _)| e == *r))
        .map(|r| r.label())
        .collect();
    assert!(missing.is_empty(), "drop reasons with no golden row and no exemption: {missing:?}");
    let needless: Vec<&str> =
        TESTED_ELSEWHERE.iter().filter(|(r, _)| in_rows.contains(r)).map(|(r, _)| r.label()).collect();
    assert!(needless.is_empty(), "exempted but covered by a row: {needless:?}");
}

#[test]
fn golden_frames() {
    let mut bench = bench();
    let mut failures = Vec::new();
    for row in rows() {
        let out = match bench.run(row.prog, row.ingress, &row.frame, true) {
            Ok(out) => out,
            Err(e) => {
                failures.push(format!("{}: {e:#}", row.what));
                continue;
            }
        };
        let got_targets = bench.targets(&out);
        let trace = out.trace.expect("traced run wrote no record");
        let mut problems = Vec::new();
        match &row.expect {
            Expect::Drop(reason) => {
                if out.retval != TC_ACT_SHOT {
                    problems.push(format!("verdict {} (want shot)", out.retval));
                }
                if trace.reason != *reason as u32 {
                    problems.push(format!(
                        "trace reason {:?} (want {reason:?})",
                        DropReason::from_index(trace.reason)
                    ));
                }
                if out.drops[*reason as usize] != 1 || out.drops.iter().sum::<u64>() != 1 {
                    problems
                        .push(format!("drop counters moved {:?} (want one {reason:?})", nonzero(&out.drops)));
                }
            }
            Expect::Send { action, targets, frame } => {
                if out.retval != TC_ACT_REDIRECT {
                    problems.push(format!(
                        "verdict {} (want redirect), reason {:?}",
                        out.retval,
                        DropReason::from_index(trace.reason)
                    ));
                }
                let mut want: Vec<(String, u32)> = targets.iter().map(|(d, v)| (d.to_string(), *v)).collect();
                want.sort();
                if got_targets != want {
                    problems.push(format!("targets {got_targets:?} (want {want:?})"));
                }
                if trace.action != *action as u32 || out.actions[*action as usize] != 1 {
                    problems.push(format!("action {:?} (want {action:?})", Action::from_index(trace.action)));
                }
                if out.drops.iter().sum::<u64>() != 0 {
                    problems.push(format!("drop counters moved {:?}", nonzero(&out.drops)));
                }
                let want_frame = frame.as_ref().unwrap_or(&row.frame);
                if &out.frame != want_frame {
                    problems.push(format!("frame {:02x?}\n   want {:02x?}", out.frame, want_frame));
                }
            }
        }
        if out.actions[Action::Received as usize] != 1 {
            problems.push("rx counter did not move by one".into());
        }
        if !problems.is_empty() {
            failures.push(format!("{} ({} on {}): {}", row.what, row.prog, row.ingress, problems.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{} golden rows failed:\n  {}", failures.len(), failures.join("\n  "));
}

fn nonzero(counters: &[u64]) -> Vec<(Option<DropReason>, u64)> {
    counters
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != 0)
        .map(|(i, c)| (DropReason::from_index(i as u32), *c))
        .collect()
}
