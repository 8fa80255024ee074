//! What the agent does when its surroundings misbehave: crowds of control
//! clients, clients that never speak, a bindings file that disappears,
//! becomes unreadable or turns into a directory. In every case the datapath
//! keeps forwarding with the last good state, and the agent says why.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use datapath_tests::{
    cluster::{Cluster, PortSpec},
    pinned::entry_counts,
    wait_for,
};
use serde_json::Value;

use crate::scenario::*;

/// Two VMs of net1 on one node, pinging each other through a running agent.
fn two_vms(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag, 1).unwrap();
    let (a, mut b) = (vm1(), vm2());
    b.host = "node0".into();
    c.write_bindings(&bindings(&[&a, &b])).unwrap();
    for p in [a, b] {
        let i = c.add_vm("node0", p).unwrap();
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    assert!(c.vms[0].ping_until(&c.vms[1].port.ip.clone(), Duration::from_secs(30)), "vm-1 reaches vm-2");
    c
}

/// File descriptors the agent holds.
fn agent_fds(c: &mut Cluster) -> usize {
    let pid = c.nodes[0].agent.as_mut().unwrap().pid();
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn status_ok(c: &Cluster) -> bool {
    c.cli_json("node0", &["status"]).is_ok()
}

#[test]
fn a_thousand_idle_clients_neither_kill_the_control_socket_nor_take_the_agents_fds() {
    let mut c = two_vms("idle");
    let sock = c.dir.join("node0.sock");
    let idle: Vec<UnixStream> = (0..1000).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    // More clients than the agent serves at once: the extra ones are told so and closed.
    let mut extra = UnixStream::connect(&sock).unwrap();
    extra.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut line = String::new();
    BufReader::new(&extra).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["error"]["kind"], "busy", "{line}");
    assert!(agent_fds(&mut c) < 200, "the agent holds {} fds with 1000 clients connected", agent_fds(&mut c));
    assert!(c.vms[0].reaches(&c.vms[1].port.ip), "forwarding goes on");
    // Clients that never send are closed after the idle timeout, and the socket serves again.
    wait_for("the control socket to serve again", Duration::from_secs(30), || status_ok(&c));
    assert!(c.nodes[0].agent.as_mut().unwrap().running(), "the agent survived");
    drop(idle);
    let _ = extra.write_all(b"{}\n");
}

#[test]
fn a_thousand_clients_at_once_each_get_an_answer_or_busy() {
    let mut c = two_vms("crowd");
    let sock = c.dir.join("node0.sock");
    let mut clients: Vec<UnixStream> = (0..1000).map(|_| UnixStream::connect(&sock).unwrap()).collect();
    for s in &mut clients {
        // A client the agent already closed (busy) cannot be written to; that is its answer.
        let _ = s.write_all(b"{\"cmd\":\"status\"}\n");
    }
    let (mut ok, mut busy) = (0, 0);
    for s in &clients {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("no reply ({e}): {line:?}"));
        match (v["ok"].as_bool(), v["error"]["kind"].as_str()) {
            (Some(true), _) => ok += 1,
            (_, Some("busy")) => busy += 1,
            other => panic!("unexpected reply {other:?}: {line}"),
        }
    }
    assert_eq!(ok + busy, 1000);
    assert!(ok >= 64, "the agent served as many as it may at once: {ok} ok, {busy} busy");
    drop(clients);
    assert!(c.nodes[0].agent.as_mut().unwrap().running(), "the agent survived");
    assert!(status_ok(&c), "and answers as before");
    assert!(c.vms[0].reaches(&c.vms[1].port.ip), "forwarding goes on");
}

/// The bindings file goes away in four ways; each time the last good
/// bindings stay in force, `status` says why, and a good file is taken again.
#[test]
fn a_missing_unreadable_or_directory_bindings_file_keeps_the_last_good_state() {
    let mut c = two_vms("bindings");
    let path = c.bindings.clone();
    let good = std::fs::read_to_string(&path).unwrap();
    type Break = fn(&Path);
    let breaks: [(&str, Break, &str); 4] = [
        ("deleted", |p| std::fs::remove_file(p).unwrap(), "No such file"),
        // The agent runs as root, which reads past any mode bits: "unreadable"
        // is a file that cannot be read as a document, bytes that are not UTF-8.
        ("unreadable", |p| std::fs::write(p, [0xff, 0xfe, 0x00, 0x80]).unwrap(), "UTF-8"),
        (
            "a directory",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "not a regular file",
        ),
        // Opening a FIFO for reading blocks until a writer comes: the agent must not.
        (
            "a FIFO",
            |p| {
                std::fs::remove_file(p).unwrap();
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: c is a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
            },
            "not a regular file",
        ),
    ];
    for (what, break_it, says) in breaks {
        break_it(&path);
        wait_for(&format!("status to report the bindings file {what}"), Duration::from_secs(10), || {
            let st = c.cli_json("node0", &["status"]).unwrap();
            st["bindings_error"].as_str().is_some_and(|e| e.contains(says))
        });
        assert!(c.vms[0].reaches(&c.vms[1].port.ip), "forwarding goes on with the bindings file {what}");
        let ports = c.cli_json("node0", &["ports"]).unwrap();
        let up = ports["ports"].as_array().unwrap().iter().filter(|p| p["state"] == "up").count();
        assert_eq!(up, 3, "the two VMs and the uplink stay up with the bindings file {what}: {ports}");
        // Repair.
        if path.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            let _ = std::fs::remove_file(&path);
        }
        c.write_bindings_text(&good).unwrap();
        wait_for(&format!("the agent to take the repaired file ({what})"), Duration::from_secs(10), || {
            c.cli_json("node0", &["status"]).unwrap()["bindings_error"].is_null()
        });
    }
    assert!(c.nodes[0].agent.as_mut().unwrap().running());
}

/// Two VMs of net1 on two nodes, so that their traffic crosses node0's uplink.
/// (The first ping waits up to 30 s: two agents start at once, which takes a
/// while in the 6.1 guest under TCG.)
fn across_the_wire(tag: &str) -> Cluster {
    let mut c = Cluster::new(tag, 2).unwrap();
    let (a, b) = (vm1(), vm2());
    c.write_bindings(&bindings(&[&a, &b])).unwrap();
    for (node, p) in [("node0", a), ("node1", b)] {
        let i = c.add_vm(node, p).unwrap();
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    c.start_agent("node1").unwrap();
    assert!(c.vms[0].ping_until(&c.vms[1].port.ip.clone(), Duration::from_secs(30)), "vm-1 reaches vm-2");
    c
}

/// The uplink goes down and up, then is deleted and created again: the
/// agent follows the new device, and traffic across the wire comes back.
/// A renamed uplink is no longer the mapped interface (the mapping is by
/// name, as OVS's bridge ports are): cross-node traffic stops, local
/// traffic goes on, and the name coming back restores it.
#[test]
fn the_uplink_going_down_away_and_renamed_is_followed() {
    let mut c = across_the_wire("uplink");
    let node0 = c.node("node0").ns.name().to_string();
    let ip_b = c.vms[1].port.ip.clone();
    let ns = |args: &[&str]| {
        let out =
            std::process::Command::new("ip").args(["netns", "exec", &node0]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    ns(&["ip", "link", "set", "eth2", "down"]);
    assert!(!c.vms[0].ping(&ip_b, 1), "nothing crosses a down uplink");
    ns(&["ip", "link", "set", "eth2", "up"]);
    assert!(c.vms[0].reaches(&ip_b), "traffic comes back with the uplink");

    // Deleted and created again (a new ifindex), plugged into the same wire.
    ns(&["ip", "link", "del", "eth2"]);
    assert!(!c.vms[0].ping(&ip_b, 1), "nothing crosses a missing uplink");
    ns(&["ip", "link", "add", "eth2", "type", "veth", "peer", "name", "up-node0", "netns", c.phys.name()]);
    ns(&["ip", "link", "set", "eth2", "up"]);
    c.phys.exec(&["ip", "link", "set", "up-node0", "master", "br0", "up"]).unwrap();
    assert!(c.vms[0].reaches(&ip_b), "the agent attached to the new uplink");
    let ports = c.cli_json("node0", &["ports"]).unwrap();
    let uplink = ports["ports"].as_array().unwrap().iter().find(|p| p["device"] == "eth2").cloned();
    assert!(uplink.is_some_and(|p| p["state"] == "up"), "{ports}");

    // Renamed: no longer the uplink.
    ns(&["ip", "link", "set", "eth2", "down"]);
    ns(&["ip", "link", "set", "eth2", "name", "eth2old"]);
    ns(&["ip", "link", "set", "eth2old", "up"]);
    wait_for("the agent to list the uplink without a device", Duration::from_secs(10), || {
        let nets = c.cli_json("node0", &["ports"]).unwrap();
        nets["ports"].as_array().unwrap().iter().any(|p| p["device"] == "eth2" && p["state"] == "no_device")
    });
    assert!(!c.vms[0].ping(&ip_b, 1), "a renamed uplink carries no network");
    ns(&["ip", "link", "set", "eth2old", "down"]);
    ns(&["ip", "link", "set", "eth2old", "name", "eth2"]);
    ns(&["ip", "link", "set", "eth2", "up"]);
    assert!(c.vms[0].reaches(&ip_b), "the name back, the uplink back");
    assert!(c.nodes[0].agent.as_mut().unwrap().running());
}

/// SIGKILL at random points while a burst of ports is being programmed,
/// then a new agent: the maps converge to exactly what the bindings imply,
/// and the untouched ports never lose a packet.
#[test]
fn an_agent_killed_in_the_middle_of_reconciles_converges_without_leftovers() {
    let mut c = across_the_wire("kill");
    let pin = c.pins.path().join("node0");
    let (a, b) = (vm1(), vm2());
    let extra: Vec<PortSpec> = (0..60)
        .map(|i| {
            PortSpec::vm(
                &format!("{i:08x}-cccc-4ccc-8ccc-cccccccccccc"),
                NET2,
                &format!("fa:16:3e:cc:00:{i:02x}"),
                &format!("10.30.0.{}", i + 2),
                "node0",
            )
        })
        .collect();
    let batch: String = extra
        .iter()
        .map(|p| format!("link add {} type veth peer name x{}\n", p.device(), &p.id[..8]))
        .collect();
    let file = c.dir.join("kill.batch");
    std::fs::write(&file, batch).unwrap();
    c.node("node0").ns.exec(&["ip", "-batch", file.to_str().unwrap()]).unwrap();
    let all: Vec<&PortSpec> = [&a, &b].into_iter().chain(&extra).collect();
    let ip_b = b.ip.clone();

    let mut ping = c.vms[0].ns.spawn(&["ping", "-i", "0.01", "-w", "12", "-W", "1", &ip_b]).unwrap();
    wait_for("the ping stream to flow", Duration::from_secs(5), || ping.output().contains("bytes from"));
    for (round, delay_ms) in [3u64, 17, 41, 80, 150].into_iter().enumerate() {
        // Every other round adds the burst, the others take it away again.
        let ports: Vec<&PortSpec> = if round % 2 == 0 { all.clone() } else { vec![&a, &b] };
        c.write_bindings(&bindings(&ports)).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
        c.start_agent("node0").unwrap();
    }
    // The last round left the burst bound: the maps must hold exactly that
    // (vm-2 is node1's: no entry here for it on a VLAN network).
    let want = 1 + extra.len();
    let converged = datapath_tests::wait_until(Duration::from_secs(20), || {
        entry_counts(&pin).is_ok_and(|n| n["FDB"] == want && n["PORTS"] == want + 1)
    });
    assert!(converged, "the maps did not converge to {want} ports: {:?}", entry_counts(&pin));
    let n = entry_counts(&pin).unwrap();
    assert_eq!((n["ALLOWED_MACS"], n["FLOOD_SETS"], n["NETWORKS"]), (want, 2, 2), "no leftovers: {n:?}");
    let status = ping.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(status.is_some(), "ping did not finish");
    let out = ping.output();
    let summary = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        summary.contains(" 0% packet loss"),
        "the untouched ports lost packets across the kills: {summary}"
    );
}

/// A pin under `pin_path` removed while the agent runs: forwarding goes on
/// (the programs hold the map), and a restarted agent builds the map anew
/// from the bindings, before its programs swap in: no packet is lost.
#[test]
fn a_removed_pin_is_rebuilt_by_the_next_agent_without_loss() {
    let mut c = across_the_wire("pin");
    let pin = c.pins.path().join("node0");
    let maps = datapath_user::loader::versioned_pin_dir(&pin).join("maps");
    let before = entry_counts(&pin).unwrap();
    let ip_b = c.vms[1].port.ip.clone();
    let mut ping = c.vms[0].ns.spawn(&["ping", "-i", "0.01", "-w", "6", "-W", "1", &ip_b]).unwrap();
    wait_for("the ping stream to flow", Duration::from_secs(5), || ping.output().contains("bytes from"));
    for name in [datapath_common::names::FDB, datapath_common::names::NETWORKS] {
        std::fs::remove_file(maps.join(name)).unwrap();
    }
    std::thread::sleep(Duration::from_secs(1));
    c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
    c.start_agent("node0").unwrap();
    wait_for("the maps to be whole again", Duration::from_secs(10), || {
        entry_counts(&pin).is_ok_and(|n| n == before)
    });
    let status = ping.wait_timeout(Duration::from_secs(15)).unwrap();
    assert!(status.is_some(), "ping did not finish");
    let out = ping.output();
    let summary = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{out}"));
    assert!(summary.contains(" 0% packet loss"), "packets lost around the removed pins: {summary}");
}

/// A tap deleted while broadcasts flood its network: the flood goes on to
/// the other ports, frame after frame, and the agent forgets the port.
#[test]
fn a_tap_deleted_in_the_middle_of_a_flood_costs_the_others_nothing() {
    let mut c = Cluster::new("flood", 1).unwrap();
    let (a, mut b) = (vm1(), vm2());
    b.host = "node0".into();
    let gone = PortSpec::vm(
        "9a9a9a9a-0000-4000-8000-000000000001",
        NET1,
        "fa:16:3e:9a:00:09",
        "10.10.10.9",
        "node0",
    );
    c.write_bindings(&bindings(&[&a, &b, &gone])).unwrap();
    for p in [&a, &b, &gone] {
        let i = c.add_vm("node0", p.clone()).unwrap();
        c.vms[i].set_static_ip().unwrap();
    }
    c.start_agent("node0").unwrap();
    assert!(c.vms[0].ping_until(&b.ip, Duration::from_secs(10)));
    let at_b =
        datapath_tests::capture::Capture::start(&c.vms[1].ns, "eth0", "icmp[icmptype] == icmp-echo").unwrap();
    let sent = 300;
    let mut flood =
        c.vms[0].ns.spawn(&["ping", "-b", "-c", &sent.to_string(), "-i", "0.01", "10.10.10.255"]).unwrap();
    // A third of the way through the 3 s of broadcasts (ping prints nothing per broadcast).
    std::thread::sleep(Duration::from_secs(1));
    c.node("node0").ns.exec(&["ip", "link", "del", &gone.device()]).unwrap();
    assert!(flood.wait_timeout(Duration::from_secs(20)).unwrap().is_some(), "the flood did not finish");
    let got = at_b.stop().unwrap().iter().filter(|l| l.contains("ICMP echo request")).count();
    assert_eq!(got, sent, "vm-2 missed broadcasts while vm-9's tap went away");
    wait_for("the agent to forget the deleted tap", Duration::from_secs(10), || {
        let ports = c.cli_json("node0", &["ports"]).unwrap();
        ports["ports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["device"] == gone.device().as_str() && p["state"] == "no_device")
    });
    assert!(c.nodes[0].agent.as_mut().unwrap().running());
}

/// An upgrade across map layouts killed at random points (SIGKILL a few
/// milliseconds to a second after the new agent starts), then started
/// again: the upgrade completes, the old layout's pins go, and the ping
/// across the wire loses nothing.
#[test]
fn an_upgrade_killed_midway_completes_when_started_again() {
    let mut c = across_the_wire("killupg");
    let pins = c.pins.path().join("node0");
    let version = |n: u32| pins.join(format!("v{n}"));
    let (ours, next) = (datapath_common::ABI_VERSION, datapath_common::ABI_VERSION + 1);
    let (bin_ours, bin_next) =
        (datapath_tests::cluster::datapath_bin(), datapath_tests::cluster::datapath_bin_abi_next());
    let ip_b = c.vms[1].port.ip.clone();
    let mut ping = c.vms[0].ns.spawn(&["ping", "-i", "0.01", "-w", "16", "-W", "1", &ip_b]).unwrap();
    wait_for("the ping stream to flow", Duration::from_secs(5), || ping.output().contains("bytes from"));
    for (bin, delay_ms, to) in [(&bin_next, 5, next), (&bin_next, 60, next), (&bin_ours, 250, ours)] {
        c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGTERM).unwrap();
        c.start_agent_with("node0", bin).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        c.nodes[0].agent.as_mut().unwrap().stop(libc::SIGKILL).unwrap();
        c.start_agent_with("node0", bin).unwrap();
        let other = if to == ours { next } else { ours };
        wait_for(&format!("the move to v{to} to complete"), Duration::from_secs(15), || {
            version(to).exists() && !version(other).exists()
        });
    }
    let status = ping.wait_timeout(Duration::from_secs(25)).unwrap();
    assert!(status.is_some(), "ping did not finish");
    let out = ping.output();
    let summary = out.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{out}"));
    assert!(summary.contains(" 0% packet loss"), "packets lost across killed upgrades: {summary}");
}
