//! Frames that `BPF_PROG_TEST_RUN` refuses to build (truncated IP headers)
//! still reach TC from a real device. They are sent here through the veth
//! peer of a port with the program really attached, and must be dropped as
//! malformed, fail-closed.

use datapath_common::{Action, DropReason, names};
use datapath_user::frames::*;

use crate::scenario::*;

#[test]
fn truncated_headers_from_a_real_device_are_dropped_as_malformed() {
    let mut bench = bench();
    bench.attach(names::PROG_VM_PORT, A).unwrap();
    let peer_of_a = format!("peer{}", DEVICES.iter().position(|d| *d == A).unwrap());
    let frames = [
        // An IPv4 header cut after 6 bytes.
        eth(MAC_B, MAC_A, 0x0800, &[0x45, 0, 0, 40, 0, 0]),
        // IHL says 60 bytes of header, UDP, but only 20 are there.
        eth(MAC_B, MAC_A, 0x0800, &{
            let mut h = ipv4([10, 10, 10, 2], [10, 10, 10, 3], 17, &[]);
            h[0] = 0x4f;
            h
        }),
        // An IPv6 header cut after 10 bytes.
        eth(MAC_B, MAC_A, 0x86dd, &[0x60, 0, 0, 0, 0, 8, 17, 64, 0xfe, 0x80]),
    ];
    let before = bench.port_counters(A).unwrap();
    for f in &frames {
        bench.inject(&peer_of_a, f).unwrap();
    }
    let counted = datapath_tests::wait_until(std::time::Duration::from_secs(2), || {
        let now = bench.port_counters(A).unwrap();
        now.drops[DropReason::Malformed as usize] - before.drops[DropReason::Malformed as usize] == 3
    });
    let after = bench.port_counters(A).unwrap();
    assert!(counted, "malformed drops: {}", after.drops[DropReason::Malformed as usize]);
    assert_eq!(after.actions[Action::Received as usize] - before.actions[Action::Received as usize], 3);
    let forwarded: u64 = [Action::ToLocalPort, Action::ToUplink, Action::Flooded]
        .iter()
        .map(|a| after.actions[*a as usize] - before.actions[*a as usize])
        .sum();
    assert_eq!(forwarded, 0, "a malformed frame was forwarded");
}

/// The kernel moves 802.1ad tags out of the frame like 802.1Q ones before TC
/// runs, so these frames reach the programs with an offloaded tag whose TPID
/// only `skb->vlan_proto` tells.
#[test]
fn offloaded_802_1ad_tags_select_no_network_and_are_refused_from_vms() {
    let mut bench = bench();
    bench.attach(names::PROG_UPLINK, UPLINK).unwrap();
    bench.attach(names::PROG_VM_PORT, A).unwrap();
    let peer = |dev: &str| format!("peer{}", DEVICES.iter().position(|d| *d == dev).unwrap());
    let bcast = arp_request([0x02, 0, 0, 0, 0, 0x61], [10, 10, 10, 61], [10, 10, 10, 2]);
    let counts = |dev: &str| bench.port_counters(dev).unwrap();
    let rx_of_b = || -> u64 {
        let path = format!("/sys/class/net/{}/statistics/rx_packets", peer(B));
        bench.ns.exec(&["cat", &path]).unwrap().trim().parse().unwrap()
    };
    let (uplink0, a0, b0) = (counts(UPLINK), counts(A), rx_of_b());

    // From the wire: an S-tag with net1's VID is not net1, a C-tag with it is.
    bench.inject(&peer(UPLINK), &tagged(&bcast, 0x88a8, 1000)).unwrap();
    bench.inject(&peer(UPLINK), &tagged(&bcast, 0x8100, 1000)).unwrap();
    // From a VM: an 802.1ad priority tag is still a tag.
    bench
        .inject(&peer(A), &tagged(&arp_request(MAC_A, [10, 10, 10, 2], [10, 10, 10, 3]), 0x88a8, 0))
        .unwrap();

    let done = datapath_tests::wait_until(std::time::Duration::from_secs(2), || {
        counts(UPLINK).actions[Action::Received as usize] - uplink0.actions[Action::Received as usize] == 2
            && counts(A).actions[Action::Received as usize] - a0.actions[Action::Received as usize] == 1
    });
    assert!(done, "the programs did not see the three frames");
    let (uplink1, a1) = (counts(UPLINK).since(&uplink0), counts(A).since(&a0));
    assert_eq!(uplink1.drops[DropReason::UnknownSegment as usize], 1, "the S-tagged frame: {uplink1:?}");
    assert_eq!(uplink1.actions[Action::Flooded as usize], 1, "the C-tagged frame floods net1");
    assert_eq!(a1.drops[DropReason::VmTagged as usize], 1, "the VM's 802.1ad priority tag: {a1:?}");
    // B's VM end got the C-tagged broadcast, untagged, and nothing else.
    assert!(datapath_tests::wait_until(std::time::Duration::from_secs(2), || rx_of_b() > b0));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(rx_of_b() - b0, 1, "B's VM received the S-tagged frame too, or nothing");
}
