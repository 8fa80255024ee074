//! The monitor's events, golden-frame style: `MONITOR` as seeded, a frame
//! through the real program, and the record that the ring buffer holds (or
//! that it holds none).

use datapath_common::{
    Action, DropReason, MONITOR_F_DECISIONS, MONITOR_F_DROPS, MONITOR_SNAP, MonitorConfig, MonitorEvent,
    names,
};
use datapath_user::frames::*;

use crate::scenario::*;

/// What the ring buffer must hold after the run.
enum Want {
    Nothing,
    /// A drop at the device, for the reason.
    Drop(&'static str, DropReason),
    /// A forwarded frame at the device, with the action.
    Forward(&'static str, Action),
}

struct Row {
    what: &'static str,
    /// `MONITOR`: flags, and the device whose decisions are followed.
    flags: u32,
    follow: Option<&'static str>,
    /// Run as `datapath trace` does.
    dry: bool,
    /// Through the uplink's XDP stage (else through A's `vm_port`).
    xdp: bool,
    frame: Vec<u8>,
    want: Want,
}

/// A frame from A with a source MAC that is not A's, carrying `payload` bytes of UDP.
fn spoofed(payload: usize) -> Vec<u8> {
    eth(
        MAC_B,
        [0xfa, 0x16, 0x3e, 0x66, 0x66, 0x66],
        0x0800,
        &ipv4_udp([10, 10, 10, 2], [10, 10, 10, 3], 40000, 9, &vec![7; payload]),
    )
}

/// A frame from A to B that A may send.
fn clean() -> Vec<u8> {
    eth(MAC_B, MAC_A, 0x0800, &ipv4_udp([10, 10, 10, 2], [10, 10, 10, 3], 40000, 9, b"hello"))
}

/// A frame of VLAN 1000 from the wire, from `src` to A.
fn from_wire(src: [u8; 6]) -> Vec<u8> {
    tagged(
        &eth(MAC_A, src, 0x0800, &ipv4_udp([10, 10, 10, 30], [10, 10, 10, 2], 40000, 9, b"hi")),
        0x8100,
        1000,
    )
}

#[test]
fn monitor_events_are_sent_when_asked_for_and_never_otherwise() {
    let mut b = bench();
    let rows = vec![
        Row {
            what: "nobody listens: a drop sends nothing",
            flags: 0,
            follow: None,
            dry: false,
            xdp: false,
            frame: spoofed(20),
            want: Want::Nothing,
        },
        Row {
            what: "drops wanted: the drop, with its reason and first bytes",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: false,
            xdp: false,
            frame: spoofed(20),
            want: Want::Drop(A, DropReason::SrcMacSpoof),
        },
        Row {
            what: "drops wanted: a frame longer than the snap is cut at 128 bytes",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: false,
            xdp: false,
            frame: spoofed(400),
            want: Want::Drop(A, DropReason::SrcMacSpoof),
        },
        Row {
            what: "drops wanted: a forwarded frame sends nothing",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: false,
            xdp: false,
            frame: clean(),
            want: Want::Nothing,
        },
        Row {
            what: "A's decisions followed: its forwarded frame, with the action",
            flags: MONITOR_F_DROPS | MONITOR_F_DECISIONS,
            follow: Some(A),
            dry: false,
            xdp: false,
            frame: clean(),
            want: Want::Forward(A, Action::ToLocalPort),
        },
        Row {
            what: "B's decisions followed: A's forwarded frame is not",
            flags: MONITOR_F_DROPS | MONITOR_F_DECISIONS,
            follow: Some(B),
            dry: false,
            xdp: false,
            frame: clean(),
            want: Want::Nothing,
        },
        Row {
            what: "a dry run (datapath trace) is never reported",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: true,
            xdp: false,
            frame: spoofed(20),
            want: Want::Nothing,
        },
        Row {
            what: "the XDP stage's drop, with its reason",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: false,
            xdp: true,
            frame: from_wire(MAC_A),
            want: Want::Drop(UPLINK, DropReason::UplinkSrcIsLocal),
        },
        Row {
            what: "drops wanted: what the XDP stage passes sends nothing",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: false,
            xdp: true,
            frame: from_wire(MAC_REMOTE),
            want: Want::Nothing,
        },
        Row {
            what: "the uplink's decisions followed: the XDP stage's pass",
            flags: MONITOR_F_DROPS | MONITOR_F_DECISIONS,
            follow: Some(UPLINK),
            dry: false,
            xdp: true,
            frame: from_wire(MAC_REMOTE),
            want: Want::Forward(UPLINK, Action::Passed),
        },
        Row {
            what: "a dry run of the XDP stage is never reported",
            flags: MONITOR_F_DROPS,
            follow: None,
            dry: true,
            xdp: true,
            frame: from_wire(MAC_A),
            want: Want::Nothing,
        },
    ];
    let mut failures = Vec::new();
    for row in rows {
        let follow = row.follow.map_or(0, |d| b.ifindex(d));
        b.dp.maps.monitor.set(0, MonitorConfig { flags: row.flags, ifindex: follow }, 0).unwrap();
        let out = match (row.xdp, row.dry) {
            (false, true) => b.run_dry(names::PROG_VM_PORT, A, &row.frame).unwrap(),
            (false, false) => b.run(names::PROG_VM_PORT, A, &row.frame, false).unwrap(),
            (true, true) => b.run_xdp_dry(names::PROG_UPLINK_XDP, UPLINK, &row.frame).unwrap(),
            (true, false) => b.run_xdp(names::PROG_UPLINK_XDP, UPLINK, &row.frame).unwrap(),
        };
        let mut got = Vec::new();
        let ring = b.dp.events.as_mut().expect("the ring buffer");
        while let Some(item) = ring.next() {
            got.push(bytemuck::pod_read_unaligned::<MonitorEvent>(&item[..size_of::<MonitorEvent>()]));
        }
        let check = || -> Result<(), String> {
            let (dev, reason, action) = match row.want {
                Want::Nothing if got.is_empty() => return Ok(()),
                Want::Nothing => return Err(format!("{} events, none wanted", got.len())),
                Want::Drop(d, r) => (d, r as u32, 0),
                Want::Forward(d, a) => (d, 0, a as u32),
            };
            let [e] = got.as_slice() else { return Err(format!("{} events, one wanted", got.len())) };
            let snap = row.frame.len().min(MONITOR_SNAP);
            let want = (
                b.ifindex(dev),
                reason,
                action,
                row.frame.len() as u32,
                snap as u32,
                if row.xdp { names::PROG_INDEX_UPLINK_XDP } else { names::PROG_INDEX_VM_PORT },
            );
            let have = (e.ifindex, e.reason, e.action, e.len, e.snap_len, e.program);
            if have != want {
                return Err(format!(
                    "(ifindex, reason, action, len, snap_len, program) {have:?}, wanted {want:?}"
                ));
            }
            if e.snap[..snap] != row.frame[..snap] || e.net_index == 0 || e.ts_ns == 0 {
                return Err(format!("snap, net index or time wrong: {e:?}"));
            }
            Ok(())
        };
        if let Err(e) = check() {
            failures.push(format!("{}: {e} (verdict {})", row.what, out.retval));
        }
    }
    b.dp.maps.monitor.set(0, MonitorConfig { flags: 0, ifindex: 0 }, 0).unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
