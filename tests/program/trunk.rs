//! Trunk ports on golden frames: on the parent's tap, untagged frames are
//! the parent's, frames tagged with a subport's VLAN id are the subport's
//! (tag removed, its own anti-spoofing, counted under it), any other tag is
//! dropped; towards the VM, a subport's frames get its VLAN id. On the wire
//! the subport's network uses its own segment, never the VM's VLAN id.

use datapath_common::{Action, DropReason, PortCounters, TrunkVid, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

use crate::scenario::CONFIG;

const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const BINDINGS: &str = r#"{
 "networks": [
  {"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500},
  {"id": "22222222-2222-4222-8222-222222222222", "name": "net2", "provider:network_type": "vlan", "provider:physical_network": "default", "provider:segmentation_id": 1001, "mtu": 1500},
  {"id": "33333333-3333-4333-8333-333333333333", "name": "flat", "provider:network_type": "flat", "provider:physical_network": "default", "mtu": 1500}
 ],
 "ports": [
  {"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.10.10.2"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "b0000000-0b00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111", "mac_address": "fa:16:3e:00:00:0b",
   "fixed_ips": [{"ip_address": "10.10.10.3"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "51000000-5100-4000-8000-000000000001", "network_id": "22222222-2222-4222-8222-222222222222", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "10.20.0.2"}], "device_owner": "trunk:subport", "binding:host_id": "node0"},
  {"id": "c0000000-0c00-4000-8000-000000000001", "network_id": "22222222-2222-4222-8222-222222222222", "mac_address": "fa:16:3e:00:00:0c",
   "fixed_ips": [{"ip_address": "10.20.0.3"}], "device_owner": "compute:nova", "binding:host_id": "node0"},
  {"id": "52000000-5200-4000-8000-000000000001", "network_id": "33333333-3333-4333-8333-333333333333", "mac_address": "fa:16:3e:00:00:0a",
   "fixed_ips": [{"ip_address": "192.168.0.2"}], "device_owner": "trunk:subport", "binding:host_id": "node0"}
 ],
 "trunks": [{"id": "77777777-7777-4777-8777-777777777777", "port_id": "a0000000-0a00-4000-8000-000000000001",
   "sub_ports": [
    {"port_id": "51000000-5100-4000-8000-000000000001", "segmentation_type": "vlan", "segmentation_id": 101},
    {"port_id": "52000000-5200-4000-8000-000000000001", "segmentation_type": "vlan", "segmentation_id": 102}]}]
}"#;

/// The trunk's parent: the VM's tap.
const P: &str = "tapa0000000-0a";
/// Another VM on the parent's network.
const B: &str = "tapb0000000-0b";
/// Another VM on subport 101's network.
const C: &str = "tapc0000000-0c";
const UPLINK: &str = "eth2";

const MAC_P: [u8; 6] = neutron_mac(0x0a);
const MAC_B: [u8; 6] = neutron_mac(0x0b);
const MAC_C: [u8; 6] = neutron_mac(0x0c);
const REMOTE: [u8; 6] = [0xfa, 0x16, 0x3e, 0x00, 0x02, 0x01];

fn udp(src: [u8; 6], dst: [u8; 6], sip: [u8; 4], dip: [u8; 4]) -> Vec<u8> {
    eth(dst, src, 0x0800, &ipv4_udp(sip, dip, 4000, 9, &[0u8; 18]))
}

fn trunk_bench() -> Bench {
    datapath_tests::require_root();
    Bench::new(CONFIG, BINDINGS, &[UPLINK, P, B, C]).expect("building the trunk bench")
}

/// Where a subport's frames are counted: its own stats slot.
fn subport_counters(b: &Bench, vid: u32) -> PortCounters {
    let id = b.derived.state.trunk_vids[&TrunkVid { parent_ifindex: b.ifindex(P), vid }];
    b.counters(b.derived.state.ports[&id].stats_slot).unwrap()
}

enum Expect {
    Drop(DropReason),
    Send(Action, &'static [(&'static str, u32)]),
}

struct Row {
    what: &'static str,
    prog: &'static str,
    ingress: &'static str,
    frame: Vec<u8>,
    expect: Expect,
    /// The subport (VLAN id) the run is counted under; 0: the ingress device.
    counted_at: u32,
}

fn row(what: &'static str, prog: &'static str, ingress: &'static str, frame: Vec<u8>, expect: Expect) -> Row {
    Row { what, prog, ingress, frame, expect, counted_at: 0 }
}

fn from_vm(what: &'static str, frame: Vec<u8>, expect: Expect, counted_at: u32) -> Row {
    Row { what, prog: names::PROG_VM_PORT, ingress: P, frame, expect, counted_at }
}

#[test]
fn golden_trunk_frames() {
    let mut b = trunk_bench();
    let to_c = udp(MAC_P, MAC_C, [10, 20, 0, 2], [10, 20, 0, 3]);
    let to_b = udp(MAC_P, MAC_B, [10, 10, 10, 2], [10, 10, 10, 3]);
    let sub101_arp = arp_request(MAC_P, [10, 20, 0, 2], [10, 20, 0, 3]);
    let rows = vec![
        from_vm(
            "untagged: the parent's network",
            to_b.clone(),
            Expect::Send(Action::ToLocalPort, &[(B, 0)]),
            0,
        ),
        from_vm(
            "priority-tagged: still the parent's",
            tagged(&to_b, 0x8100, 0),
            Expect::Send(Action::ToLocalPort, &[(B, 0)]),
            0,
        ),
        from_vm(
            "VLAN 101: subport 101's network, untagged to C",
            tagged(&to_c, 0x8100, 101),
            Expect::Send(Action::ToLocalPort, &[(C, 0)]),
            101,
        ),
        from_vm(
            "VLAN 101 broadcast: C and the wire with net2's segment, not the VM's VLAN id",
            tagged(&sub101_arp, 0x8100, 101),
            Expect::Send(Action::Flooded, &[(C, 0), (UPLINK, 1001)]),
            101,
        ),
        from_vm(
            "VLAN 102 unknown unicast: the flat network's wire, untagged",
            tagged(&udp(MAC_P, REMOTE, [192, 168, 0, 2], [192, 168, 0, 9]), 0x8100, 102),
            Expect::Send(Action::Flooded, &[(UPLINK, 0)]),
            102,
        ),
        from_vm(
            "VLAN 101 with the parent's IP: subport 101 has its own addresses",
            tagged(&udp(MAC_P, MAC_C, [10, 10, 10, 2], [10, 20, 0, 3]), 0x8100, 101),
            Expect::Drop(DropReason::Ipv4SrcSpoof),
            101,
        ),
        from_vm(
            "VLAN 101 from another MAC: subport 101's anti-spoofing",
            tagged(&udp(REMOTE, MAC_C, [10, 20, 0, 2], [10, 20, 0, 3]), 0x8100, 101),
            Expect::Drop(DropReason::SrcMacSpoof),
            101,
        ),
        from_vm(
            "VLAN 103: no subport of the trunk",
            tagged(&to_c, 0x8100, 103),
            Expect::Drop(DropReason::VmTagged),
            0,
        ),
        from_vm(
            "VLAN 101 around another tag",
            tagged(&tagged(&to_c, 0x8100, 5), 0x8100, 101),
            Expect::Drop(DropReason::VmTagged),
            101,
        ),
        from_vm("an 802.1ad tag of 101", tagged(&to_c, 0x88a8, 101), Expect::Drop(DropReason::VmTagged), 0),
        row(
            "C to the VM on net2: the parent's tap, tagged 101",
            names::PROG_VM_PORT,
            C,
            udp(MAC_C, MAC_P, [10, 20, 0, 3], [10, 20, 0, 2]),
            Expect::Send(Action::ToLocalPort, &[(P, 101)]),
        ),
        row(
            "C's broadcast: the VM under 101 and the wire under 1001",
            names::PROG_VM_PORT,
            C,
            arp_request(MAC_C, [10, 20, 0, 3], [10, 20, 0, 2]),
            Expect::Send(Action::Flooded, &[(P, 101), (UPLINK, 1001)]),
        ),
        row(
            "B's broadcast on net1: the VM untagged",
            names::PROG_VM_PORT,
            B,
            arp_request(MAC_B, [10, 10, 10, 3], [10, 10, 10, 2]),
            Expect::Send(Action::Flooded, &[(P, 0), (UPLINK, 1000)]),
        ),
        row(
            "the wire's VLAN 1001 to the VM: tagged 101 instead",
            names::PROG_UPLINK,
            UPLINK,
            tagged(&udp(REMOTE, MAC_P, [10, 20, 0, 9], [10, 20, 0, 2]), 0x8100, 1001),
            Expect::Send(Action::ToLocalPort, &[(P, 101)]),
        ),
        row(
            "the flat network's broadcast: the VM under 102",
            names::PROG_UPLINK,
            UPLINK,
            arp_request(REMOTE, [192, 168, 0, 9], [192, 168, 0, 2]),
            Expect::Send(Action::Flooded, &[(P, 102)]),
        ),
    ];
    let mut failures = Vec::new();
    for r in rows {
        let before =
            (b.port_counters(r.ingress).unwrap(), subport_counters(&b, 101), subport_counters(&b, 102));
        let o = b.run(r.prog, r.ingress, &r.frame, true).unwrap();
        let after =
            (b.port_counters(r.ingress).unwrap(), subport_counters(&b, 101), subport_counters(&b, 102));
        let moved = |x: &PortCounters, y: &PortCounters| x.since(y);
        let (counted, others) = match r.counted_at {
            0 => (moved(&after.0, &before.0), [moved(&after.1, &before.1), moved(&after.2, &before.2)]),
            101 => (moved(&after.1, &before.1), [moved(&after.0, &before.0), moved(&after.2, &before.2)]),
            _ => (moved(&after.2, &before.2), [moved(&after.0, &before.0), moved(&after.1, &before.1)]),
        };
        let mut check = |ok: bool, what: String| {
            if !ok {
                failures.push(format!("{}: {what}", r.what));
            }
        };
        check(
            counted.actions[Action::Received as usize] == 1,
            format!("rx not counted where expected: {counted:?}"),
        );
        check(
            others.iter().all(|o| o.actions.iter().chain(&o.drops).all(|v| *v == 0)),
            "counted elsewhere too".into(),
        );
        match r.expect {
            Expect::Drop(reason) => {
                check(o.retval == TC_ACT_SHOT, format!("verdict {} is no drop", o.retval));
                check(counted.drops[reason as usize] == 1, format!("not counted as {}", reason.label()));
            }
            Expect::Send(action, targets) => {
                check(o.retval == TC_ACT_REDIRECT, format!("verdict {} is no redirect", o.retval));
                check(counted.actions[action as usize] == 1, format!("not counted as {}", action.label()));
                let mut want: Vec<(String, u32)> = targets.iter().map(|(d, v)| (d.to_string(), *v)).collect();
                want.sort();
                let got = b.targets(&o);
                check(got == want, format!("targets {got:?}, want {want:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} trunk rows failed:\n  {}", failures.len(), failures.join("\n  "));
}

/// An untraced flood really sends: a copy to the subport (tagged, on the
/// parent's tap) and the frame itself to the wire; the copy's tag comes off
/// again, so the wire gets net2's segment alone.
#[test]
fn a_flood_copy_to_a_subport_leaves_the_frame_untagged_for_the_next_target() {
    let mut b = trunk_bench();
    let frame = arp_request(MAC_C, [10, 20, 0, 3], [10, 20, 0, 2]);
    let o = b.run(names::PROG_VM_PORT, C, &frame, false).unwrap();
    assert_eq!(o.retval, TC_ACT_REDIRECT);
    assert_eq!(o.actions[Action::Flooded as usize], 1);
    assert_eq!(o.actions[Action::FloodCopies as usize], 1, "one copy, to the subport");
    assert_eq!(o.actions[Action::FloodCopyFailed as usize], 0);
    // The frame itself leaves for the wire as it came: the VLAN of the wire is pushed offloaded,
    // and no VM tag is left in it.
    assert_eq!(o.frame, frame, "the subport's tag did not stay on the frame");
}

/// A subport removed while the trunk works: its VLAN id is no longer the
/// VM's to use, and nothing is delivered to it; the other subport goes on.
#[test]
fn a_removed_subport_takes_its_vlan_id_with_it() {
    let mut b = trunk_bench();
    let to_c = tagged(&udp(MAC_P, MAC_C, [10, 20, 0, 2], [10, 20, 0, 3]), 0x8100, 101);
    assert_eq!(b.run(names::PROG_VM_PORT, P, &to_c, true).unwrap().retval, TC_ACT_REDIRECT);
    let without: serde_json::Value = {
        let mut v: serde_json::Value = serde_json::from_str(BINDINGS).unwrap();
        v["trunks"][0]["sub_ports"].as_array_mut().unwrap().remove(0);
        v
    };
    b.reseed(CONFIG, &without.to_string()).unwrap();
    let o = b.run(names::PROG_VM_PORT, P, &to_c, true).unwrap();
    assert_eq!(o.retval, TC_ACT_SHOT);
    assert_eq!(o.drops[DropReason::VmTagged as usize], 1, "VLAN 101 is no subport any more");
    let to_vm = udp(MAC_C, MAC_P, [10, 20, 0, 3], [10, 20, 0, 2]);
    let o = b.run(names::PROG_VM_PORT, C, &to_vm, true).unwrap();
    assert_eq!(b.targets(&o), vec![(UPLINK.to_string(), 1001)], "the VM's MAC on net2 is unknown now");
    let flat = tagged(&udp(MAC_P, REMOTE, [192, 168, 0, 2], [192, 168, 0, 9]), 0x8100, 102);
    let o = b.run(names::PROG_VM_PORT, P, &flat, true).unwrap();
    assert_eq!(b.targets(&o), vec![(UPLINK.to_string(), 0)], "subport 102 still works");
}

/// An admin-down parent stops its own traffic, not its subports': as in the
/// OVS agent, where each subport has a patch port of its own.
#[test]
fn an_admin_down_parent_stops_its_own_traffic_only() {
    let mut b = trunk_bench();
    let mut v: serde_json::Value = serde_json::from_str(BINDINGS).unwrap();
    v["ports"][0]["admin_state_up"] = serde_json::json!(false);
    b.reseed(CONFIG, &v.to_string()).unwrap();
    let to_b = udp(MAC_P, MAC_B, [10, 10, 10, 2], [10, 10, 10, 3]);
    let o = b.run(names::PROG_VM_PORT, P, &to_b, true).unwrap();
    assert_eq!(
        (o.retval, o.drops[DropReason::PortAdminDown as usize]),
        (TC_ACT_SHOT, 1),
        "untagged: the parent's"
    );
    let to_c = tagged(&udp(MAC_P, MAC_C, [10, 20, 0, 2], [10, 20, 0, 3]), 0x8100, 101);
    let o = b.run(names::PROG_VM_PORT, P, &to_c, true).unwrap();
    assert_eq!(b.targets(&o), vec![(C.to_string(), 0)], "VLAN 101: the subport's, which is up");
    let o = b.run(names::PROG_VM_PORT, P, &tagged(&to_b, 0x8100, 103), true).unwrap();
    assert_eq!(o.retval, TC_ACT_SHOT, "a tag of no subport is still refused");
    // Towards the VM: the subport still gets its frames; the parent is no destination.
    let to_vm = udp(MAC_C, MAC_P, [10, 20, 0, 3], [10, 20, 0, 2]);
    let o = b.run(names::PROG_VM_PORT, C, &to_vm, true).unwrap();
    assert_eq!(b.targets(&o), vec![(P.to_string(), 101)]);
    let from_b = udp(MAC_B, MAC_P, [10, 10, 10, 3], [10, 10, 10, 2]);
    let o = b.run(names::PROG_VM_PORT, B, &from_b, true).unwrap();
    assert_eq!(b.targets(&o), vec![(UPLINK.to_string(), 1000)], "unknown on net1: only the wire");
}
