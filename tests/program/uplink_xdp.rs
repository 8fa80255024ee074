//! The uplinks' XDP stage on golden frames: what it drops (each under its
//! reason, in `XDP_STATS`) and what it passes to the TC stage, unchanged.

use datapath_common::{Action, DropReason, names};
use datapath_tests::program::Bench;
use datapath_user::frames::*;

use crate::scenario::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

struct Row {
    what: &'static str,
    ingress: &'static str,
    frame: Vec<u8>,
    /// None: passed to the TC stage.
    drop: Option<DropReason>,
}

fn pass(what: &'static str, frame: Vec<u8>) -> Row {
    Row { what, ingress: UPLINK, frame, drop: None }
}

fn drop(what: &'static str, frame: Vec<u8>, reason: DropReason) -> Row {
    Row { what, ingress: UPLINK, frame, drop: Some(reason) }
}

/// Runs every row and checks the verdict, the frame (never changed) and the counters.
fn check(b: &mut Bench, rows: Vec<Row>) {
    for r in rows {
        let o = b.run_xdp(names::PROG_UPLINK_XDP, r.ingress, &r.frame).unwrap();
        assert_eq!(o.frame, r.frame, "{}: the XDP stage changes no frame", r.what);
        assert_eq!(o.actions[Action::Received as usize], 1, "{}: counted as received", r.what);
        match r.drop {
            None => {
                assert_eq!(o.retval, XDP_PASS, "{}: passed", r.what);
                assert_eq!(o.actions[Action::Passed as usize], 1, "{}: counted as passed", r.what);
                assert_eq!(o.drops.iter().sum::<u64>(), 0, "{}: no drop counted", r.what);
            }
            Some(reason) => {
                assert_eq!(o.retval, XDP_DROP, "{}: dropped", r.what);
                assert_eq!(o.drops[reason as usize], 1, "{}: counted as {}", r.what, reason.label());
                assert_eq!(o.drops.iter().sum::<u64>(), 1, "{}: one drop, one reason", r.what);
                assert_eq!(o.actions[Action::Passed as usize], 0, "{}: not passed", r.what);
            }
        }
    }
}

#[test]
fn the_xdp_stage_drops_what_the_node_must_not_accept_and_passes_the_rest() {
    let mut b = bench();
    let ip = [10, 10, 10, 2];
    let remote_ip = [10, 10, 10, 30];
    let to_a = icmp(MAC_REMOTE, MAC_A, remote_ip, ip);
    let rows = vec![
        pass("a frame of VLAN 1000 (net1) for a local port", tagged(&to_a, 0x8100, 1000)),
        pass("a frame of VLAN 1001 (net2)", tagged(&to_a, 0x8100, 1001)),
        pass("an untagged frame: the flat network", to_a.clone()),
        pass("a broadcast of VLAN 1000", tagged(&arp_request(MAC_REMOTE, remote_ip, ip), 0x8100, 1000)),
        pass(
            "double tags: the outer one (1000) selects the network, the inner one is the VM's business",
            tagged(&tagged(&to_a, 0x8100, 7), 0x8100, 1000),
        ),
        drop("VLAN 1234, which no network here has", tagged(&to_a, 0x8100, 1234), DropReason::UnknownSegment),
        drop(
            "double tags whose outer VLAN is unknown",
            tagged(&tagged(&to_a, 0x8100, 1000), 0x8100, 1234),
            DropReason::UnknownSegment,
        ),
        drop(
            "an 802.1ad S-tag, even with a known VID",
            tagged(&to_a, 0x88a8, 1000),
            DropReason::UnknownSegment,
        ),
        drop(
            "an S-tag over a known C-tag",
            tagged(&tagged(&to_a, 0x8100, 1000), 0x88a8, 1000),
            DropReason::UnknownSegment,
        ),
        drop(
            "a frame from the wire with local port A's MAC as its source",
            tagged(&icmp(MAC_A, MAC_B, ip, [10, 10, 10, 3]), 0x8100, 1000),
            DropReason::UplinkSrcIsLocal,
        ),
        drop(
            "a multicast source MAC",
            tagged(&icmp([0x01, 0, 0x5e, 0, 0, 1], MAC_A, remote_ip, ip), 0x8100, 1000),
            DropReason::SrcMacInvalid,
        ),
        drop(
            "an all-zero source MAC",
            tagged(&icmp([0; 6], MAC_A, remote_ip, ip), 0x8100, 1000),
            DropReason::SrcMacInvalid,
        ),
        // Truncated at each header boundary (BPF_PROG_TEST_RUN takes no frame under 14 bytes).
        drop(
            "a bare 802.1Q ethertype, no tag",
            tagged(&to_a, 0x8100, 1000)[..14].to_vec(),
            DropReason::Malformed,
        ),
        drop(
            "a tag without its inner ethertype",
            tagged(&to_a, 0x8100, 1000)[..16].to_vec(),
            DropReason::Malformed,
        ),
        pass("a whole tag and nothing behind it", tagged(&to_a, 0x8100, 1000)[..18].to_vec()),
        pass("an Ethernet header and nothing behind it (flat)", to_a[..14].to_vec()),
        Row {
            what: "a device the agent does not know",
            ingress: "stray0",
            frame: tagged(&to_a, 0x8100, 1000),
            drop: Some(DropReason::PortUnknown),
        },
    ];
    check(&mut b, rows);
}

/// The VLAN-only node: its uplink carries no flat network.
const VLAN_ONLY: &str = r#"
host = "node0"
physical_interface_mappings = ["default:eth2"]
bindings = "/unused/in/program/tests.json"
pin_path = "/sys/fs/bpf/unused"
"#;

#[test]
fn without_a_flat_network_untagged_frames_are_dropped_in_the_driver() {
    let mut b = vlan_only(VLAN_ONLY);
    let to_a = icmp(MAC_REMOTE, MAC_A, [10, 10, 10, 30], [10, 10, 10, 2]);
    check(
        &mut b,
        vec![
            drop(
                "an untagged frame where no flat network is mapped",
                to_a.clone(),
                DropReason::UnknownSegment,
            ),
            pass("the same frame on VLAN 1000", tagged(&to_a, 0x8100, 1000)),
        ],
    );
    let tc = b.run(names::PROG_UPLINK, UPLINK, &to_a, false).unwrap();
    assert_eq!((tc.retval, tc.drops[DropReason::UnknownSegment as usize]), (2, 1), "and at the TC stage");
}

/// `untagged_to_host`: the node's own address lives on the uplink, so both
/// stages hand the untagged frames no flat network claims to the host.
#[test]
fn with_untagged_to_host_both_stages_hand_unclaimed_untagged_frames_to_the_host() {
    let mut b = vlan_only(&format!("{VLAN_ONLY}untagged_to_host = true\n"));
    let to_host = icmp(MAC_REMOTE, [0x02, 0, 0, 0, 0, 1], [192, 0, 2, 11], [192, 0, 2, 10]);
    check(
        &mut b,
        vec![
            pass("an untagged frame for the host", to_host.clone()),
            drop(
                "a tagged frame of an unknown VLAN still",
                tagged(&to_host, 0x8100, 1234),
                DropReason::UnknownSegment,
            ),
        ],
    );
    let tc = b.run(names::PROG_UPLINK, UPLINK, &to_host, false).unwrap();
    const TC_ACT_OK: u32 = 0;
    assert_eq!(tc.retval, TC_ACT_OK, "the TC stage lets the host have it");
    assert_eq!(tc.frame, to_host, "unchanged");
    assert_eq!(tc.actions[Action::Passed as usize], 1);
    assert_eq!(tc.drops.iter().sum::<u64>(), 0);
}

/// A bench whose node has only VLAN networks on eth2, with `config`.
fn vlan_only(config: &str) -> Bench {
    datapath_tests::require_root();
    let bindings = r#"{
 "networks": [{"id": "11111111-1111-4111-8111-111111111111", "name": "net1", "provider:network_type": "vlan",
               "provider:physical_network": "default", "provider:segmentation_id": 1000, "mtu": 1500}],
 "ports": [{"id": "a0000000-0a00-4000-8000-000000000001", "network_id": "11111111-1111-4111-8111-111111111111",
            "mac_address": "fa:16:3e:00:00:0a", "fixed_ips": [{"ip_address": "10.10.10.2"}],
            "device_owner": "compute:nova", "binding:host_id": "node0"}]
}"#;
    Bench::new(config, bindings, &["eth2", A]).unwrap()
}
