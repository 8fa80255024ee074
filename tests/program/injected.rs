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
