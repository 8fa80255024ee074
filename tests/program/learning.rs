//! Stateful program behaviour: MAC learning from the uplink, and real clones
//! on floods (untraced runs, whose copies really leave through the devices).

use datapath_common::{Action, DropReason, FdbKey, names};
use datapath_user::frames::*;

use crate::scenario::*;

#[test]
fn a_mac_learned_from_the_wire_is_sent_to_the_uplink_only() {
    let mut bench = bench();
    let remote = [0x02, 0, 0, 0, 0, 0x61];
    let a_ip = [10, 10, 10, 2];
    let from_remote = eth(BROADCAST, remote, 0x0806, &arp(1, remote, [10, 10, 10, 61], [0; 6], a_ip));

    // Before: unknown, so flooded.
    let to_remote = eth(remote, MAC_A, 0x0800, &ipv4_icmp_echo(a_ip, [10, 10, 10, 61]));
    let out = bench.run(names::PROG_VM_PORT, A, &to_remote, true).unwrap();
    assert_eq!(out.actions[Action::Flooded as usize], 1, "unknown MAC must flood");

    // The wire shows it behind the uplink in net1 (tag 1000).
    let out = bench.run(names::PROG_UPLINK, UPLINK, &tagged(&from_remote, 0x8100, 1000), true).unwrap();
    assert_eq!(out.actions[Action::Learned as usize], 1, "source MAC must be learned");
    let net1 = bench.derived.networks.iter().find(|n| n.id == NET1).unwrap().net_index.unwrap();
    let learned = bench.dp.maps.fdb_learned.get(&FdbKey { net_index: net1, mac: remote, _pad: [0; 2] }, 0);
    assert_eq!(learned.expect("FDB_LEARNED entry").ifindex, bench.ifindex(UPLINK));

    // After: straight to the uplink, tagged, nowhere else.
    let out = bench.run(names::PROG_VM_PORT, A, &to_remote, true).unwrap();
    assert_eq!(bench.targets(&out), vec![(UPLINK.to_string(), 1000)]);
    assert_eq!(out.actions[Action::ToUplink as usize], 1);

    // A frame from the wire to that MAC belongs to the other side.
    let back = tagged(&eth(remote, [0x02, 0, 0, 0, 0, 0x62], 0x0800, &[0x45; 20]), 0x8100, 1000);
    let out = bench.run(names::PROG_UPLINK, UPLINK, &back, true).unwrap();
    assert_eq!(out.drops[DropReason::Hairpin as usize], 1);

    // The same MAC in net2 is not known: learning is per network.
    let out = bench
        .run(
            names::PROG_VM_PORT,
            C,
            &eth(remote, MAC_C, 0x0800, &ipv4_icmp_echo(a_ip, [10, 10, 10, 61])),
            true,
        )
        .unwrap();
    assert_eq!(out.actions[Action::Flooded as usize], 1);
    assert_eq!(bench.targets(&out), vec![(UPLINK.to_string(), 1001)]);
}

/// rx_packets of a device of the bench's namespace.
fn rx_packets(bench: &datapath_tests::program::Bench, dev: &str) -> u64 {
    let out = bench.ns.exec(&["ip", "-j", "-s", "link", "show", "dev", dev]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["rx"]["packets"].as_u64().unwrap()
}

#[test]
fn an_untraced_flood_sends_one_real_copy_to_each_member_of_the_network() {
    let mut bench = bench();
    // Peers are named after the device's position in DEVICES.
    let peer = |dev: &str| format!("peer{}", DEVICES.iter().position(|d| *d == dev).unwrap());
    let watched = [X, B, D, C, F, P, A];
    let before: Vec<u64> = watched.iter().map(|d| rx_packets(&bench, &peer(d))).collect();

    let frame = arp_request(MAC_A, [10, 10, 10, 2], [10, 10, 10, 3]);
    let out = bench.run(names::PROG_VM_PORT, A, &frame, false).unwrap();
    assert_eq!(out.retval, 7, "flood must end in a redirect of the original (to the uplink)");
    assert_eq!(out.actions[Action::Flooded as usize], 1);
    assert_eq!(out.actions[Action::FloodCopies as usize], 3, "one copy each to X, B and D");
    assert_eq!(out.drops.iter().sum::<u64>(), 0);

    // Copies arrive asynchronously at the veth peers.
    let expect = [1u64, 1, 1, 0, 0, 0, 0];
    datapath_tests::wait_until(std::time::Duration::from_secs(2), || {
        watched.iter().zip(&before).zip(&expect).all(|((d, b), e)| rx_packets(&bench, &peer(d)) - b == *e)
    });
    for ((dev, b), e) in watched.iter().zip(&before).zip(&expect) {
        assert_eq!(rx_packets(&bench, &peer(dev)) - b, *e, "copies that reached {dev}'s peer");
    }
}
