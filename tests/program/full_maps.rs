//! Full maps. A full static FDB refuses the entries that do not fit, each
//! reported, and applies the rest; the entries already there keep
//! forwarding. A full learned table (an LRU) evicts and goes on learning.

use datapath_common::{
    Action, FDB_F_REMOTE, FdbEntry, FdbKey, LearnedEntry, MAX_FDB, MAX_FDB_LEARNED, names,
};
use datapath_user::{frames::*, sync};

use crate::scenario::*;

fn filler(i: u32, net_index: u32) -> FdbKey {
    let b = i.to_be_bytes();
    FdbKey { net_index, mac: [0x02, 0xee, b[0], b[1], b[2], b[3]], _pad: [0; 2] }
}

#[test]
fn a_full_fdb_refuses_what_does_not_fit_and_keeps_forwarding() {
    let mut bench = bench();
    let a_ip = [10, 10, 10, 2];
    let to_b = eth(MAC_B, MAC_A, 0x0800, &ipv4_icmp_echo(a_ip, [10, 10, 10, 3]));
    // Fill the FDB to its capacity with entries of a network nobody uses.
    let have = bench.dp.maps.synced.fdb.keys().count() as u32;
    let entry = FdbEntry { ifindex: bench.ifindex(UPLINK), flags: FDB_F_REMOTE, vtep_ipv4: 0 };
    for i in 0..MAX_FDB - have {
        bench.dp.maps.synced.fdb.insert(filler(i, 4000), entry, 0).unwrap();
    }
    assert_eq!(bench.dp.maps.synced.fdb.keys().count() as u32, MAX_FDB);

    // A desired state with two more entries: both are refused by name, the rest applied.
    let mut desired = bench.derived.state.clone();
    for i in 0..MAX_FDB - have {
        desired.fdb.insert(filler(i, 4000), entry);
    }
    let (extra1, extra2) = (filler(900_001, 1), filler(900_002, 1));
    desired.fdb.insert(extra1, entry);
    desired.fdb.insert(extra2, entry);
    let current = sync::read_state(&bench.dp.maps).unwrap();
    let errors = sync::apply(&mut bench.dp.maps, &sync::diff(&desired, &current));
    assert_eq!(errors.len(), 2, "one error per entry that did not fit: {errors:?}");
    assert!(errors.iter().all(|e| e.starts_with("FDB[")), "each names the map and the key: {errors:?}");

    // What was there forwards as before.
    let out = bench.run(names::PROG_VM_PORT, A, &to_b, true).unwrap();
    assert_eq!((out.retval, out.actions[Action::ToLocalPort as usize]), (7, 1));
    assert_eq!(bench.targets(&out), vec![(B.to_string(), 0)]);
}

#[test]
fn a_full_learned_table_evicts_and_goes_on_learning() {
    let mut bench = bench();
    let net1 = bench.derived.state.ports[&bench.ifindex(A)].net_index;
    let seen = LearnedEntry { ifindex: bench.ifindex(UPLINK), vtep_ipv4: 0, last_seen_ns: 1 };
    for i in 0..MAX_FDB_LEARNED {
        bench.dp.maps.fdb_learned.insert(filler(i, net1), seen, 0).unwrap();
    }
    // A new MAC from the wire is learned all the same, an old one making room.
    let newcomer = [0x02, 0x77, 0, 0, 0, 1];
    let from_wire = tagged(&arp_request(newcomer, [10, 10, 10, 77], [10, 10, 10, 2]), 0x8100, 1000);
    let out = bench.run(names::PROG_UPLINK, UPLINK, &from_wire, false).unwrap();
    assert_eq!(out.actions[Action::Learned as usize], 1, "learned into a full table");
    let key = FdbKey { net_index: net1, mac: newcomer, _pad: [0; 2] };
    assert!(bench.dp.maps.fdb_learned.get(&key, 0).is_ok(), "the newcomer is in the table");
    assert!(bench.dp.maps.fdb_learned.keys().count() as u32 <= MAX_FDB_LEARNED);
    // And a frame to it from a VM goes to the uplink, tagged, not flooded.
    let to_newcomer = eth(newcomer, MAC_A, 0x0800, &ipv4_icmp_echo([10, 10, 10, 2], [10, 10, 10, 77]));
    let out = bench.run(names::PROG_VM_PORT, A, &to_newcomer, true).unwrap();
    assert_eq!(bench.targets(&out), vec![(UPLINK.to_string(), 1000)]);
}
