//! The model against the documented rules, without a kernel: a node with
//! one VLAN network (tag 100 on eth2), a VM port with port security, a
//! router port, derived by the agent's own `desired::derive`.

use datapath_common::{Action, DropReason};
use datapath_user::{
    bindings::Bindings,
    config::Config,
    desired::{self, Allocations},
    frames::*,
    netlink::Devices,
};

use super::*;

const DOC: &str = r#"{
 "networks": [{"id": "n1", "provider:network_type": "vlan", "provider:physical_network": "physnet1", "provider:segmentation_id": 100}],
 "ports": [
  {"id": "a0000000-0a00", "network_id": "n1", "mac_address": "fa:16:3e:00:00:0a", "fixed_ips": [{"ip_address": "10.0.0.2"}, {"ip_address": "2001:db8::a"}], "binding:host_id": "node0", "device_owner": "compute:nova"},
  {"id": "b0000000-0b00", "network_id": "n1", "mac_address": "fa:16:3e:00:00:0b", "fixed_ips": [{"ip_address": "10.0.0.1"}, {"ip_address": "2001:db8::1"}], "binding:host_id": "node0", "device_owner": "network:router_interface"}
 ]}"#;

const ETH2: u32 = 2;
const A: u32 = 10;
const R: u32 = 11;
const MAC_A: Mac = neutron_mac(0x0a);
const MAC_R: Mac = neutron_mac(0x0b);

fn model() -> Model {
    let devices: Devices = [("eth2", ETH2), ("tapa0000000-0a", A), ("tapb0000000-0b", R)]
        .into_iter()
        .map(|(n, i)| (n.into(), i))
        .collect();
    let cfg = Config::parse_str(crate::fuzz::bindings::CONFIG, "test").unwrap();
    let b = Bindings::parse_str(DOC, "test").unwrap();
    Model::new(desired::derive(&cfg, &b, &devices, &mut Allocations::default()).state)
}

fn vm(ifindex: u32) -> Ingress {
    Ingress { prog: Prog::VmPort, ifindex, hw: None, gso_size: 0, tunnel: None, dry_run: false }
}

fn run(m: &Model, t: &mut Tables, ingress: Ingress, frame: &[u8]) -> Verdict {
    decide(m, t, ingress, frame).verdict
}

fn dropped(r: DropReason) -> Verdict {
    Verdict::Drop(r)
}

fn action(v: &Verdict) -> Option<(Action, Vec<Target>)> {
    match v {
        Verdict::Send { action, targets, .. } => Some((*action, targets.clone())),
        Verdict::Drop(_) => None,
    }
}

#[test]
fn router_advertisements_only_from_ports_without_port_security() {
    let (m, mut t) = (model(), Tables::default());
    let ra = |mac| {
        let (src, dst) = (link_local(mac), v6("ff02::1"));
        eth(
            [0x33, 0x33, 0, 0, 0, 1],
            mac,
            0x86dd,
            &ipv6(src, dst, 58, &icmpv6(src, dst, 134, 0, &ra_body(mac))),
        )
    };
    assert_eq!(run(&m, &mut t, vm(A), &ra(MAC_A)), dropped(DropReason::RaFromVm));
    let uplink = Target { ifindex: ETH2, vlan: 100, vtep: 0, vni: 0 };
    assert_eq!(
        action(&run(&m, &mut t, vm(R), &ra(MAC_R))),
        Some((Action::Flooded, vec![uplink, Target::port(A)]))
    );
    // Behind a chain of extension headers, from a forged source: the source check comes first.
    let hidden =
        ipv6_ext(v6("2001:db8::99"), v6("ff02::1"), &[Ext::HopByHop, Ext::DestOpts], 58, &[134, 0, 0, 0]);
    assert_eq!(
        run(&m, &mut t, vm(A), &eth(BROADCAST, MAC_A, 0x86dd, &hidden)),
        dropped(DropReason::Ipv6SrcSpoof)
    );
}

#[test]
fn later_fragments_get_their_first_fragments_verdict() {
    let (m, mut t) = (model(), Tables::default());
    let frame = |p: &[u8]| eth(BROADCAST, MAC_A, 0x0800, p);
    let offer = udp4_segment(67, 68, &[0; 32]);
    let (first, later) = ipv4_fragments([10, 0, 0, 2], [10, 0, 0, 9], 7, 17, &offer, 16);
    assert_eq!(run(&m, &mut t, vm(A), &frame(&later)), dropped(DropReason::FragUnknown));
    assert_eq!(run(&m, &mut t, vm(A), &frame(&first)), dropped(DropReason::DhcpServerFromVm));
    assert_eq!(run(&m, &mut t, vm(A), &frame(&later)), dropped(DropReason::DhcpServerFromVm));
    let benign = udp4_segment(5000, 5001, &[0; 32]);
    let (first, later) = ipv4_fragments([10, 0, 0, 2], [10, 0, 0, 9], 8, 17, &benign, 16);
    assert!(action(&run(&m, &mut t, vm(A), &frame(&first))).is_some());
    assert!(action(&run(&m, &mut t, vm(A), &frame(&later))).is_some());
    // The source check still applies to every later fragment.
    let (_, forged) = ipv4_fragments([10, 0, 0, 3], [10, 0, 0, 9], 8, 17, &benign, 16);
    assert_eq!(run(&m, &mut t, vm(A), &frame(&forged)), dropped(DropReason::Ipv4SrcSpoof));
}

#[test]
fn s_tags_select_nothing_and_vms_send_none() {
    let (m, mut t) = (model(), Tables::default());
    let inner = ipv4_icmp_echo([10, 0, 0, 9], [10, 0, 0, 2]);
    let from_wire = eth(MAC_A, neutron_mac(0x77), 0x0800, &inner);
    let wire =
        |hw| Ingress { prog: Prog::Uplink, ifindex: ETH2, hw, gso_size: 0, tunnel: None, dry_run: false };
    let s_tag = Some(HwTag { proto: frame::TPID_8021AD, tci: 100 });
    assert_eq!(run(&m, &mut t, wire(s_tag), &from_wire), dropped(DropReason::UnknownSegment));
    assert_eq!(
        run(&m, &mut t, wire(None), &tagged(&from_wire, 0x88a8, 100)),
        dropped(DropReason::UnknownSegment)
    );
    // The same VLAN as a C-tag reaches the port untagged, and teaches the sender's MAC.
    let c_tag = Some(HwTag { proto: frame::TPID_8021Q, tci: 100 });
    match run(&m, &mut t, wire(c_tag), &from_wire) {
        Verdict::Send { action, targets, frame } => {
            assert_eq!(
                (action, targets, frame.hw, frame.bytes),
                (Action::ToLocalPort, vec![Target::port(A)], None, from_wire)
            );
        }
        v => panic!("{v:?}"),
    }
    assert_eq!(t.learned.len(), 1);
    let vm_s_tag = Ingress { hw: Some(HwTag { proto: frame::TPID_8021AD, tci: 0 }), ..vm(A) };
    let from_a = eth(MAC_R, MAC_A, 0x0800, &ipv4_icmp_echo([10, 0, 0, 2], [10, 0, 0, 1]));
    assert_eq!(run(&m, &mut t, vm_s_tag, &from_a), dropped(DropReason::VmTagged));
    // A priority C-tag is stripped.
    let prio = Ingress { hw: Some(HwTag { proto: frame::TPID_8021Q, tci: 0x2000 }), ..vm(A) };
    assert_eq!(action(&run(&m, &mut t, prio, &from_a)), Some((Action::ToLocalPort, vec![Target::port(R)])));
}

#[test]
fn ip_lengths_must_fit_the_frame_but_zero_is_fine_on_gso() {
    let (m, mut t) = (model(), Tables::default());
    let mut p = ipv4_icmp_echo([10, 0, 0, 2], [10, 0, 0, 1]);
    p[2..4].copy_from_slice(&0u16.to_be_bytes());
    let f = eth(MAC_R, MAC_A, 0x0800, &p);
    assert_eq!(run(&m, &mut t, vm(A), &f), dropped(DropReason::Malformed));
    assert!(action(&run(&m, &mut t, Ingress { gso_size: 1448, ..vm(A) }, &f)).is_some());
    let mut long = eth(MAC_R, MAC_A, 0x0800, &ipv4_icmp_echo([10, 0, 0, 2], [10, 0, 0, 1]));
    long.truncate(long.len() - 1);
    assert_eq!(run(&m, &mut t, vm(A), &long), dropped(DropReason::Malformed));
}

#[test]
fn a_dry_run_learns_nothing_even_for_its_own_lookup() {
    let (m, mut t) = (model(), Tables::default());
    // From the wire, to its own source: the real run learns it first, so the
    // destination lives behind the wire (hairpin); a dry run does not learn.
    let mac = neutron_mac(0x77);
    let f = tagged(&eth(mac, mac, 0x0800, &ipv4_icmp_echo([10, 0, 0, 9], [10, 0, 0, 2])), 0x8100, 100);
    let wire =
        Ingress { prog: Prog::Uplink, ifindex: ETH2, hw: None, gso_size: 0, tunnel: None, dry_run: true };
    assert_eq!(action(&run(&m, &mut t, wire, &f)).map(|a| a.0), Some(Action::Flooded));
    assert!(t.learned.is_empty());
    assert_eq!(run(&m, &mut t, Ingress { dry_run: false, ..wire }, &f), dropped(DropReason::Hairpin));
}
