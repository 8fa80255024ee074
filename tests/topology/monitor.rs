//! `datapath monitor` on a running agent: spoofed frames found with their
//! reason in the JSON stream and in a pcapng file that tcpdump reads, every
//! decision of a port on request, and a drop storm that leaves the agent
//! answering while the kernel counts what it did not send.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use datapath_tests::{
    cluster::{Cluster, PortSpec, datapath_bin},
    raw,
};
use datapath_user::{bindings::parse_mac, frames::*};
use serde_json::Value;

use crate::scenario::*;

/// `datapath monitor ARGS --json` of `node`, running; its lines come on the receiver.
pub(crate) fn monitor(c: &Cluster, node: &str, args: &[&str]) -> (Child, mpsc::Receiver<Value>) {
    let mut child = Command::new(datapath_bin())
        .arg("monitor")
        .args(args)
        .args(["--json", "--config"])
        .arg(&c.node(node).config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting datapath monitor");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    (child, rx)
}

/// Waits until `node` has `n` monitor listeners.
pub(crate) fn listeners(c: &Cluster, node: &str, n: f64) -> bool {
    datapath_tests::wait_until(Duration::from_secs(10), || {
        c.metric(node, "datapath_monitor_listeners").ok().flatten() == Some(n)
    })
}

/// A frame from vm-1 whose source MAC is not its own.
fn spoofed(b: &PortSpec) -> Vec<u8> {
    eth(
        parse_mac(&b.mac).unwrap(),
        parse_mac("fa:16:3e:66:66:66").unwrap(),
        0x0800,
        &ipv4_udp([10, 10, 10, 2], [10, 10, 10, 12], 40000, 9, b"monitor"),
    )
}

fn events(rx: &mpsc::Receiver<Value>, n: usize, within: Duration) -> Vec<Value> {
    let end = Instant::now() + within;
    let mut out = Vec::new();
    while out.len() < n {
        let Some(left) = end.checked_duration_since(Instant::now()) else { break };
        match rx.recv_timeout(left) {
            Ok(v) if v["type"] == "event" => out.push(v),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    out
}

#[test]
fn monitor_streams_drops_with_their_reason_to_json_and_pcap_and_decisions_on_request() {
    let (c, a, b, ia) = local_pair("monitor", "");
    assert_eq!(c.metric("node0", "datapath_monitor_listeners").unwrap(), Some(0.0));
    let pcap = c.dir.join("drops.pcapng");
    let pcap_arg = pcap.to_str().unwrap().to_string();
    let (mut child, rx) = monitor(&c, "node0", &["--port", &a.device(), "--pcap", &pcap_arg, "--count", "5"]);
    assert!(listeners(&c, "node0", 1.0), "the monitor never registered");

    let frame = spoofed(&b);
    raw::send_in(&c.vms[ia].ns, "eth0", &vec![frame.clone(); 5]).unwrap();
    let got = events(&rx, 5, Duration::from_secs(10));
    assert_eq!(got.len(), 5, "{got:#?}");
    let head: String = frame[..32].iter().map(|x| format!("{x:02x}")).collect();
    for e in &got {
        assert_eq!(e["reason"], "src_mac_spoof", "{e}");
        assert_eq!(e["verdict"], "drop");
        assert_eq!(e["program"], "vm_port");
        assert_eq!(
            (e["device"].as_str(), e["port_id"].as_str()),
            (Some(a.device().as_str()), Some(a.id.as_str()))
        );
        assert_eq!(e["network"], NET1);
        assert_eq!(e["len"], frame.len());
        assert!(e["frame"].as_str().unwrap().starts_with(&head), "the frame's first bytes: {e}");
    }
    // --count 5: it exits by itself, and the pcapng file holds the five frames.
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert!(status.is_some_and(|s| s.success()), "monitor did not exit cleanly: {status:?}");
    let out = Command::new("tcpdump").args(["-nn", "-e", "-r"]).arg(&pcap).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "tcpdump: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines.iter().all(|l| l.contains("fa:16:3e:66:66:66 > fa:16:3e:0c:00:0c")), "{text}");
    // Wireshark's view of the comment: pcapng's opt_comment, with the reason.
    let raw_file = std::fs::read(&pcap).unwrap();
    let needle = b"drop src_mac_spoof at ";
    assert_eq!(raw_file.windows(needle.len()).filter(|w| w == needle).count(), 5);
    // The listener went: the programs report nothing any more.
    assert!(listeners(&c, "node0", 0.0), "the listener outlived its client");

    // Every decision of vm-1 on request: a ping to vm-2 is forwarded, and says so.
    let (mut child, rx) = monitor(&c, "node0", &["--port", &a.id, "--decisions"]);
    assert!(listeners(&c, "node0", 1.0));
    assert!(c.vms[ia].reaches(&b.ip));
    // Its echo requests out (vm_port), and the replies delivered to it (vm_port_out).
    let got = events(&rx, 4, Duration::from_secs(5));
    let seen =
        |program: &str, action: &str| got.iter().any(|e| e["program"] == program && e["action"] == action);
    assert!(seen("vm_port", "to_local_port") && seen("vm_port_out", "delivered"), "{got:#?}");
    assert!(got.iter().all(|e| e["verdict"] == "forward" && e["device"] == a.device().as_str()), "{got:#?}");
    // A second port's decisions cannot be followed at the same time.
    let (ok, _, err) =
        c.cli("node0", &["monitor", "--port", &b.device(), "--decisions", "--count", "1"]).unwrap();
    assert!(!ok && err.contains("one port at a time"), "{err}");
    // A reason that does not exist is refused, naming the known ones.
    let (ok, _, err) = c.cli("node0", &["monitor", "--reason", "nonsense"]).unwrap();
    assert!(!ok && err.contains("no drop reason \"nonsense\"") && err.contains("src_mac_spoof"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(listeners(&c, "node0", 0.0));
}

#[test]
fn a_drop_storm_is_rate_limited_in_the_kernel_and_the_agent_keeps_answering() {
    let (c, a, b, ia) = local_pair("monstorm", "");
    let (mut child, rx) = monitor(&c, "node0", &["--port", &a.device()]);
    assert!(listeners(&c, "node0", 1.0));
    // Spoofed frames from vm-1 as fast as trafgen sends them (both CPUs) for
    // 3 s: about 3 Mpps on the 6.18 host, far less in the emulated 6.1 guest.
    let bytes: Vec<String> = spoofed(&b).iter().map(|x| format!("0x{x:02x}")).collect();
    let cfg = c.dir.join("storm.cfg");
    std::fs::write(&cfg, format!("{{ {} }}\n", bytes.join(", "))).unwrap();
    let started = Instant::now();
    let mut storm = Storm(
        Command::new("ip")
            .args(["netns", "exec", c.vms[ia].ns.name(), "trafgen", "--dev", "eth0", "--conf"])
            .arg(&cfg)
            .args(["--num", "0", "--cpus", "2"])
            // trafgen writes its compiled config beside it: the test's directory, which
            // is writable where the rest of the tree is not (the 6.1 guest's).
            .current_dir(&c.dir)
            .env("TMPDIR", &c.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(c.dir.join("trafgen.log")).unwrap()))
            // Its own process group: trafgen forks a sender per CPU, and all of them stop.
            .process_group(0)
            .spawn()
            .unwrap(),
    );
    // While it runs, the agent answers.
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (ok, _, err) = c.cli("node0", &["status"]).unwrap();
    assert!(ok, "{err}");
    let answered_in = t.elapsed();
    let log = || std::fs::read_to_string(c.dir.join("trafgen.log")).unwrap_or_default();
    assert!(
        storm.0.try_wait().unwrap().is_none(),
        "the storm was over before the agent was asked: {}",
        log()
    );
    assert!(answered_in < Duration::from_secs(5), "status took {answered_in:?} during the storm");
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    drop(storm);
    let storm_secs = started.elapsed().as_secs_f64();
    let dropped =
        c.cli_json("node0", &["stats", "--port", &a.device()]).unwrap()["ports"][0]["drops"]["src_mac_spoof"]
            .as_u64()
            .unwrap();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let rate = f64::from(datapath_common::MONITOR_EVENTS_PER_SEC);
    assert!(
        dropped as f64 > 2.0 * storm_secs * cpus * rate,
        "not a storm: {dropped} frames in {storm_secs:.1} s"
    );
    eprintln!(
        "storm: {dropped} spoofed frames dropped in {storm_secs:.1} s ({:.0} pps)",
        dropped as f64 / storm_secs
    );

    // The stream: at most the kernel's rate, and a line that counts the rest.
    let mut got = 0u64;
    let mut suppressed = 0u64;
    let end = Instant::now() + Duration::from_secs(5);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(v) if v["type"] == "event" => got += 1,
            Ok(v) if v["type"] == "suppressed" => {
                suppressed = v["kernel"].as_u64().unwrap();
                if got > 0 && suppressed > 0 && rx.try_recv().is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let most = (storm_secs + 2.0) * cpus * rate;
    assert!(got > 0 && (got as f64) <= most, "{got} events for a {storm_secs:.1} s storm (at most {most})");
    assert!(suppressed > 0, "the kernel counted what it did not send");
    assert!(got + suppressed <= dropped, "{got} + {suppressed} > {dropped}");
    let exported = c.metric("node0", "datapath_monitor_suppressed_events_total").unwrap().unwrap();
    assert!(exported >= suppressed as f64, "{exported} < {suppressed}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// trafgen and the senders it forked, stopped when this goes (also on a panic).
struct Storm(Child);

impl Drop for Storm {
    fn drop(&mut self) {
        let group = -(self.0.id() as i32);
        // SAFETY: signalling the process group of our own child, not reaped yet.
        unsafe { libc::kill(group, libc::SIGINT) };
        if wait_exit(&mut self.0, Duration::from_secs(10)).is_none() {
            // SAFETY: as above; the forked senders may outlive their leader.
            unsafe { libc::kill(group, libc::SIGKILL) };
        }
    }
}

fn wait_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if let Some(s) = child.try_wait().ok()? {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
