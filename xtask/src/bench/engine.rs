//! One benchmark run: build every topology, measure each scenario round by
//! round with the legacy chain and the datapath back to back (which goes first
//! alternates between rounds), then the control plane; reduce to medians.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use datapath_tests::TempDir;

use super::{
    control,
    floor::Floor,
    interrupt,
    legacy::Legacy,
    ours::Ours,
    plan::{Plan, Scenario},
    report::{self, Metric, Record},
    stats::median,
    traffic::{self, Flow, Sender},
    wiring,
    xdp::{self, Drops, Side, XdpPair},
};
use crate::util::{secs, step};

/// Connects outstanding in the capacity run of the connection rate: enough
/// that the sending CPU never waits for a handshake.
const CONNS_IN_FLIGHT: usize = 16;

/// Which path a sample was taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Path {
    Legacy,
    Datapath,
    /// The plain Linux bridge reference, measured (pps and TCP) only in the same-node scenario.
    PlainBridge,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Legacy => "legacy",
            Path::Datapath => "datapath",
            Path::PlainBridge => "plain-bridge",
        }
    }
}

/// The records, what the control plane's time went to, and the traffic that did not flow.
pub struct Outcome {
    pub records: Vec<Record>,
    pub profile: Vec<String>,
    /// Measurements where nothing reached the receiver; the run fails if any.
    pub no_traffic: Vec<String>,
}

type Samples = BTreeMap<(Scenario, Path, &'static str), Vec<f64>>;
/// The XDP clusters' samples, by (metric, `xdp` of node1).
type XdpSamples = BTreeMap<(&'static str, String), Vec<f64>>;

/// Samples key of the datapath's TCP without groups, taken next to the 100-rule pair's.
const TCP_NO_SG: &str = "tcp_gbps_without_groups";
/// Samples key of the datapath's round trip without groups, taken next to the 100-rule pair's.
const RTT_NO_SG: &str = "rtt_p50_us_without_groups";
/// Samples key of the datapath's connection rate without groups, taken next to the 100-rule pair's.
const CONNS_NO_SG: &str = "new_tcp_conns_per_s_parallel_without_groups";
/// Samples key (under the 100-rule pair) of the connection rate over the veth pair floor.
const CONNS_FLOOR: &str = "new_tcp_conns_per_s_parallel_veth_floor";
/// Pairs of datapath TCP runs with and without groups, per round.
const TCP_SG_PAIRS: usize = 3;
/// The same-node pps of the datapath while node0's metrics are scraped every second.
const PPS_SCRAPED: &str = "pps_64b_scraped";
/// The same-node pps of the datapath while a `datapath monitor` follows every drop.
const PPS_MONITORED: &str = "pps_64b_monitored";
/// How often the scraper asks: Prometheus's most eager setting in practice.
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// Runs `plan`.
pub fn bench(plan: &Plan) -> Result<Outcome> {
    traffic::check_tools()?;
    if std::env::var_os("BENCH_ONLY_XDP").is_some() {
        return bench_xdp(plan);
    }
    if std::env::var_os("BENCH_ONLY_SG").is_some() {
        return bench_sg(plan);
    }
    let scratch = TempDir::new("bench")?;

    let start = Instant::now();
    step("bench: legacy chain", "building (tap, qbr + iptables, qvb/qvo, br-int, br-eth/br-tun)");
    let legacy = Legacy::build(scratch.path()).context("building the legacy chain")?;
    step("bench: legacy chain", &format!("up in {}", secs(start)));
    let start = Instant::now();
    step("bench: datapath cluster", "building (2 nodes, 2 agents)");
    let ours = Ours::new().context("building the datapath cluster")?;
    step("bench: datapath cluster", &format!("up in {}", secs(start)));
    let start = Instant::now();
    step("bench: XDP stage", "building (2 clusters of 2 nodes: node1 with xdp native, and off)");
    let xdp = XdpPair::build().context("building the XDP stage's clusters")?;
    step("bench: XDP stage", &format!("up in {}", secs(start)));
    let floor = Floor::veth_pair().context("building the veth pair floor")?;
    floor.flow().prepare("veth pair")?;
    let bridge = Floor::linux_bridge().context("building the plain Linux bridge reference")?;
    bridge.flow().prepare("plain Linux bridge")?;
    for sc in Scenario::ALL.into_iter().chain(Scenario::SG) {
        legacy.flow(sc).prepare(&format!("legacy {}", sc.name()))?;
        ours.flow(sc).prepare(&format!("datapath {}", sc.name()))?;
    }
    ours.flow(Scenario::SameNodeQos).prepare("datapath, policed pair")?;
    let flow = |p: Path, sc: Scenario| -> Flow<'_> {
        match p {
            Path::Legacy => legacy.flow(sc),
            Path::Datapath => ours.flow(sc),
            Path::PlainBridge => bridge.flow(),
        }
    };

    let mut samples = Samples::new();
    let mut floor_ns = Vec::new();
    let mut floor_pps = Vec::new();
    let mut floor_rtt = Vec::new();
    let mut no_traffic = Vec::new();
    let mut xdp_samples = XdpSamples::new();
    for round in 0..plan.rounds {
        interrupt::check()?;
        let label = format!("bench: round {}/{}", round + 1, plan.rounds);
        let f = floor.flow().pps(plan.pps_window, scratch.path(), "floor", Sender::Xdp)?;
        let r = floor.flow().rtt(plan.rtt_secs, true).context("RTT, veth pair floor")?;
        step(
            &label,
            &format!(
                "veth pair floor: {:.0} pps, RTT (polling) p50 {:.1} us, p99 {:.1} us",
                f.pps, r.p50_us, r.p99_us
            ),
        );
        floor_pps.push(f.pps);
        floor_rtt.push((r.p50_us, r.p99_us));
        let floor_cpu = f.cpu_ns_per_pkt;
        floor_ns.extend(floor_cpu);
        let order = order(round);
        for sc in Scenario::ALL {
            let flow = |p: Path| flow(p, sc);
            // The plain bridge runs right after the datapath, so that the two meet the
            // machine in the same state (issue 3: the datapath is no slower than it).
            let mut with_bridge = order.to_vec();
            if sc == Scenario::SameNodeVlan {
                let at = with_bridge.iter().position(|p| *p == Path::Datapath).map_or(0, |i| i + 1);
                with_bridge.insert(at, Path::PlainBridge);
            }
            for &p in &with_bridge {
                let tag = format!("{}-{}", sc.name(), p.name());
                let s = flow(p).pps(plan.pps_window, scratch.path(), &tag, Sender::Xdp)?;
                keep_pps(&mut samples, &mut no_traffic, (&label, &tag), (sc, p), &s, floor_cpu);
            }
            if sc == Scenario::SameNodeVlan {
                // The same run with the metrics scraped every second (issue 15: reading
                // the counters must not slow the datapath).
                let tag = format!("{}-datapath-scraped", sc.name());
                let (s, scrapes) = scraped(&ours, || {
                    flow(Path::Datapath).pps(plan.pps_window, scratch.path(), &tag, Sender::Xdp)
                })?;
                step(&label, &format!("{tag}: {:.0} pps with {scrapes} scrapes", s.pps));
                if scrapes == 0 {
                    no_traffic.push(format!("{tag}: no scrape of the metrics completed"));
                }
                samples.entry((sc, Path::Datapath, PPS_SCRAPED)).or_default().push(s.pps);
                // And with a monitor listening (issue 15: the monitor costs nothing when
                // nobody listens; listening for drops, the forwarded frames pay a check).
                let tag = format!("{}-datapath-monitored", sc.name());
                let s = monitored(&ours, || {
                    flow(Path::Datapath).pps(plan.pps_window, scratch.path(), &tag, Sender::Xdp)
                })?;
                step(&label, &format!("{tag}: {:.0} pps with a monitor of every drop", s.pps));
                samples.entry((sc, Path::Datapath, PPS_MONITORED)).or_default().push(s.pps);
                // And through a pair whose ports are policed and marked (issue 17:
                // what a policed port costs next to one without a policy).
                let q = Scenario::SameNodeQos;
                let tag = format!("{}-datapath", q.name());
                let s = ours.flow(q).pps(plan.pps_window, scratch.path(), &tag, Sender::Xdp)?;
                keep_pps(&mut samples, &mut no_traffic, (&label, &tag), (q, Path::Datapath), &s, floor_cpu);
            }
            // The cross-check: the same frames from trafgen, whose own cost per frame
            // (about a microsecond) shows how a slow sender squeezes the ratio.
            for p in order {
                let tag = format!("{}-{}", sc.name(), p.name());
                let s = flow(p).pps(plan.pps_window, scratch.path(), &tag, Sender::Trafgen)?;
                step(&label, &format!("{tag}: {:.0} pps from trafgen", s.pps));
                if s.packets == 0 {
                    no_traffic.push(format!("{tag}: no 64-byte frame from trafgen reached the receiver"));
                }
                push(&mut samples, sc, p, report::PPS_TRAFGEN, Some(s.pps));
            }
            for &p in &with_bridge {
                let tag = format!("{}-{}", sc.name(), p.name());
                let t = flow(p).tcp(plan.tcp_secs).with_context(|| format!("TCP, {tag}"))?;
                step(&label, &format!("{tag}: TCP {:.2} Gbit/s ({} bytes)", t.gbps, t.bytes));
                if t.bytes == 0 {
                    no_traffic.push(format!("{tag}: iperf3's receiver got no TCP bytes"));
                }
                push(&mut samples, sc, p, report::TCP, Some(t.gbps));
                if sc == Scenario::SameNodeVlan && p == Path::Datapath {
                    let q = Scenario::SameNodeQos;
                    let tag = format!("{}-datapath", q.name());
                    let t = ours.flow(q).tcp(plan.tcp_secs).with_context(|| format!("TCP, {tag}"))?;
                    step(&label, &format!("{tag}: TCP {:.2} Gbit/s ({} bytes)", t.gbps, t.bytes));
                    if t.bytes == 0 {
                        no_traffic.push(format!("{tag}: iperf3's receiver got no TCP bytes"));
                    }
                    push(&mut samples, q, p, report::TCP, Some(t.gbps));
                }
            }
            for (polling, p50, p99, kind) in [
                (true, report::RTT_P50, report::RTT_P99, "polling"),
                (false, report::RTT_BLOCKING_P50, report::RTT_BLOCKING_P99, "blocking"),
            ] {
                for p in order {
                    let tag = format!("{}-{}", sc.name(), p.name());
                    let r = flow(p).rtt(plan.rtt_secs, polling).with_context(|| format!("RTT, {tag}"))?;
                    step(
                        &label,
                        &format!("{tag}: RTT ({kind}) p50 {:.1} us, p99 {:.1} us", r.p50_us, r.p99_us),
                    );
                    push(&mut samples, sc, p, p50, Some(r.p50_us));
                    push(&mut samples, sc, p, p99, Some(r.p99_us));
                }
            }
        }
        let sinks = (&mut samples, &mut no_traffic);
        measure_sg(plan, &label, &flow, round, scratch.path(), (&floor.flow(), floor_cpu), sinks)?;
        measure_xdp(plan, &label, &xdp, round, &mut xdp_samples, &mut no_traffic)?;
    }
    // The traffic topologies go before the control plane loads its own datapath.
    drop((floor, bridge, ours, legacy, xdp));

    let start = Instant::now();
    step("bench: control plane", "10,000 ports on 4,000 networks into private maps");
    let cp = control::measure(scratch.path(), plan.changes).context("measuring the control plane")?;
    step("bench: control plane", &format!("done in {}", secs(start)));

    let start = Instant::now();
    step(
        "bench: wiring",
        &format!("{} taps one by one, bindings file then neutron-server", plan.wiring_ports),
    );
    let wiring = wiring::measure(plan.wiring_ports).context("measuring tap-to-ready times")?;
    step("bench: wiring", &format!("done in {}", secs(start)));

    let mut records = Vec::new();
    for sc in Scenario::ALL {
        for m in [
            report::PPS,
            report::PPS_TRAFGEN,
            report::TCP,
            report::RTT_P50,
            report::RTT_P99,
            report::RTT_BLOCKING_P50,
            report::RTT_BLOCKING_P99,
            report::CPU_NS,
            report::PATH_NS,
        ] {
            let med = |p: Path| samples.get(&(sc, p, m.name)).and_then(|v| median(v));
            records.push(Record {
                scenario: sc.name().into(),
                metric: m,
                datapath: med(Path::Datapath),
                legacy: med(Path::Legacy),
            });
        }
    }
    records.extend(sg_records(&samples));
    let dp = |sc: Scenario, key: &str| samples.get(&(sc, Path::Datapath, key)).and_then(|v| median(v));
    records.push(Record {
        scenario: report::SCRAPED_VS_NOT.into(),
        metric: report::PPS,
        datapath: dp(Scenario::SameNodeVlan, PPS_SCRAPED),
        legacy: dp(Scenario::SameNodeVlan, report::PPS.name),
    });
    for m in [report::PPS, report::TCP] {
        records.push(Record {
            scenario: report::POLICED_VS_NOT.into(),
            metric: m,
            datapath: dp(Scenario::SameNodeQos, m.name),
            legacy: dp(Scenario::SameNodeVlan, m.name),
        });
    }
    records.push(Record {
        scenario: report::MONITORED_VS_NOT.into(),
        metric: report::PPS,
        datapath: dp(Scenario::SameNodeVlan, PPS_MONITORED),
        legacy: dp(Scenario::SameNodeVlan, report::PPS.name),
    });
    // Issue 3's bar: the datapath VM to VM on one node against a plain Linux bridge.
    for m in [report::PPS, report::TCP, report::PATH_NS] {
        let med = |p: Path| samples.get(&(Scenario::SameNodeVlan, p, m.name)).and_then(|v| median(v));
        records.push(Record {
            scenario: report::VS_PLAIN_BRIDGE.into(),
            metric: m,
            datapath: med(Path::Datapath),
            legacy: med(Path::PlainBridge),
        });
    }
    // The XDP stage against the TC stage alone.
    records.extend(xdp_records(&xdp_samples));
    let control = |metric: Metric, v: f64| Record {
        scenario: "control-plane".into(),
        metric,
        datapath: Some(v),
        legacy: None,
    };
    records.push(control(report::PROGRAM_10K, cp.program_10k_s));
    records.push(control(report::CHANGE, cp.change_ms));
    records.push(control(report::CHANGE_1K, cp.change_1k_ms));
    records.push(control(report::CHANGE_NEUTRON, cp.change_neutron_ms));
    records.push(control(report::CHANGE_NEUTRON_1K, cp.change_neutron_1k_ms));
    records.push(control(report::MAP_MEMORY, cp.map_memory_mb));
    records.push(control(report::SG_RULE_CHANGE, cp.sg_rule_change_ms));
    records.push(control(report::SG_RULE_CHANGE_NEUTRON, cp.sg_rule_change_neutron_ms));
    records.push(control(report::SG_MAP_MEMORY, cp.sg_map_memory_mb));
    let wired = |metric: Metric, samples: &[f64], q: f64| Record {
        scenario: "wiring".into(),
        metric,
        datapath: wiring::quantile(samples, q),
        legacy: None,
    };
    records.push(wired(report::TAP_TO_ACTIVE_P50, &wiring.neutron_ms, 0.5));
    records.push(wired(report::TAP_TO_ACTIVE_P99, &wiring.neutron_ms, 0.99));
    records.push(wired(report::TAP_TO_UP_P50, &wiring.file_ms, 0.5));
    records.push(wired(report::TAP_TO_UP_P99, &wiring.file_ms, 0.99));
    let p50: Vec<f64> = floor_rtt.iter().map(|r| r.0).collect();
    let p99: Vec<f64> = floor_rtt.iter().map(|r| r.1).collect();
    let mut profile = vec![format!(
        "veth pair floor (generator + one hop + sink): {:.0} pps, {}; RTT (polling) p50 {:.1} us, p99 {:.1} us",
        median(&floor_pps).unwrap_or(0.0),
        ns(median(&floor_ns)),
        median(&p50).unwrap_or(0.0),
        median(&p99).unwrap_or(0.0),
    )];
    profile.extend(cp.profile);
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    profile.push(format!(
        "wiring, {} taps one by one: to ACTIVE in neutron p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; to up with the file p50 {:.0} ms, p99 {:.0} ms",
        wiring.ports,
        wiring::quantile(&wiring.neutron_ms, 0.5).unwrap_or(0.0),
        wiring::quantile(&wiring.neutron_ms, 0.99).unwrap_or(0.0),
        max(&wiring.neutron_ms),
        wiring::quantile(&wiring.file_ms, 0.5).unwrap_or(0.0),
        wiring::quantile(&wiring.file_ms, 0.99).unwrap_or(0.0),
    ));
    Ok(Outcome { records, profile, no_traffic })
}

/// Logs one 64-byte window of `sc` on `p` and keeps its figures; `floor_cpu`
/// is the veth pair's cost per frame, which the path's own cost leaves out.
/// `run`'s result while a thread scrapes node0's metrics every `SCRAPE_EVERY`, and the scrapes made.
fn scraped<T>(ours: &Ours, run: impl FnOnce() -> Result<T>) -> Result<(T, usize)> {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let scraper = scope.spawn(|| -> Result<usize> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                ours.scrape()?;
                n += 1;
                std::thread::sleep(SCRAPE_EVERY.saturating_sub(t.elapsed()));
            }
            Ok(n)
        });
        let out = run();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = scraper.join().map_err(|_| anyhow::anyhow!("the scraper panicked"))??;
        Ok((out?, n))
    })
}

/// `run`'s result while a `datapath monitor` of every drop listens on node0.
fn monitored<T>(ours: &Ours, run: impl FnOnce() -> Result<T>) -> Result<T> {
    let mut child = ours.monitor()?;
    let listening = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        ours.metric("datapath_monitor_listeners").ok().flatten() == Some(1.0)
    });
    let out = if listening { run() } else { Err(anyhow::anyhow!("the monitor never registered on node0")) };
    let _ = child.kill();
    let _ = child.wait();
    out
}

fn keep_pps(
    samples: &mut Samples,
    no_traffic: &mut Vec<String>,
    (label, tag): (&str, &str),
    (sc, p): (Scenario, Path),
    s: &traffic::Pps,
    floor_cpu: Option<f64>,
) {
    step(
        label,
        &format!(
            "{tag}: {:.0} pps, {} (other CPUs {:.0}% busy)",
            s.pps,
            ns(s.cpu_ns_per_pkt),
            s.others_busy * 100.0
        ),
    );
    if s.packets == 0 {
        // With security groups, nothing arriving means the groups dropped the flow.
        no_traffic.push(format!("{tag}: no 64-byte frame reached the receiver"));
    }
    push(samples, sc, p, report::PPS, Some(s.pps));
    push(samples, sc, p, report::CPU_NS, s.cpu_ns_per_pkt);
    let path_ns = s.cpu_ns_per_pkt.zip(floor_cpu).map(|(c, f)| c - f);
    push(samples, sc, p, report::PATH_NS, path_ns);
}

fn push(samples: &mut Samples, sc: Scenario, p: Path, m: Metric, v: Option<f64>) {
    if let Some(v) = v {
        samples.entry((sc, p, m.name)).or_default().push(v);
    }
}

fn ns(v: Option<f64>) -> String {
    v.map_or("CPU cost not measured".into(), |v| format!("{v:.0} ns/frame of CPU"))
}

/// The security-group scenarios alone (`BENCH_ONLY_SG=1`, for work on the
/// groups' path: both topologies and the floor, no XDP stage, no control plane).
fn bench_sg(plan: &Plan) -> Result<Outcome> {
    let scratch = TempDir::new("bench")?;
    let legacy = Legacy::build(scratch.path()).context("building the legacy chain")?;
    let ours = Ours::new().context("building the datapath cluster")?;
    let floor = Floor::veth_pair().context("building the veth pair floor")?;
    floor.flow().prepare("veth pair")?;
    for sc in Scenario::SG.into_iter().chain([Scenario::SameNodeVlan]) {
        legacy.flow(sc).prepare(&format!("legacy {}", sc.name()))?;
        ours.flow(sc).prepare(&format!("datapath {}", sc.name()))?;
    }
    let flow = |p: Path, sc: Scenario| -> Flow<'_> {
        match p {
            Path::Legacy => legacy.flow(sc),
            Path::Datapath => ours.flow(sc),
            Path::PlainBridge => {
                unreachable!("the security-group rounds measure legacy and the datapath only")
            }
        }
    };
    let (mut samples, mut no_traffic) = (Samples::new(), Vec::new());
    for round in 0..plan.rounds {
        interrupt::check()?;
        let label = format!("bench: round {}/{}", round + 1, plan.rounds);
        let f = floor.flow().pps(plan.pps_window, scratch.path(), "floor", Sender::Xdp)?;
        let sinks = (&mut samples, &mut no_traffic);
        measure_sg(plan, &label, &flow, round, scratch.path(), (&floor.flow(), f.cpu_ns_per_pkt), sinks)?;
    }
    Ok(Outcome { records: sg_records(&samples), profile: Vec::new(), no_traffic })
}

/// Which path goes first in round `round`: it alternates, so that a drift in
/// the machine's state hits both alike.
fn order(round: usize) -> [Path; 2] {
    if round.is_multiple_of(2) { [Path::Legacy, Path::Datapath] } else { [Path::Datapath, Path::Legacy] }
}

/// Round `round` of the security-group scenarios, in the round's `order`:
/// each group's 64-byte rate and connection rates on both paths, then the
/// connection rate, TCP and the round trip through the 100-rule pair, and on
/// the datapath the same without groups; and the connection rate over the
/// `floor` (whose 64-byte CPU cost is `floor_cpu`).
fn measure_sg<'a>(
    plan: &Plan,
    label: &str,
    flow: &dyn Fn(Path, Scenario) -> Flow<'a>,
    round: usize,
    scratch: &std::path::Path,
    (floor, floor_cpu): (&Flow<'_>, Option<f64>),
    (samples, no_traffic): (&mut Samples, &mut Vec<String>),
) -> Result<()> {
    let order = order(round);
    // Every connection leaves entries behind (for 10 s after its RST, on both
    // paths); reversing the groups' order every other round keeps that from
    // reading as a cost of the rule count.
    let mut groups = Scenario::SG;
    if round % 2 == 1 {
        groups.reverse();
    }
    for sc in groups {
        for p in order {
            let tag = format!("{}-{}", sc.name(), p.name());
            let f = flow(p, sc);
            f.answer_udp().with_context(|| format!("answering the UDP flow, {tag}"))?;
            let s = f.pps(plan.pps_window, scratch, &tag, Sender::Xdp)?;
            keep_pps(samples, no_traffic, (label, &tag), (sc, p), &s, floor_cpu);
        }
        for (in_flight, metric) in [(1, report::CONNS), (CONNS_IN_FLIGHT, report::CONNS_PARALLEL)] {
            for p in order {
                let tag = format!("{}-{}", sc.name(), p.name());
                let per_s = connections(plan, &flow(p, sc), in_flight, (label, &tag), no_traffic)?;
                push(samples, sc, p, metric, Some(per_s));
            }
        }
    }
    // TCP through the 100-rule pair on both paths; on the datapath, also the
    // same path without groups, in runs that alternate with it (with, without,
    // without, with, ...): a single pair of runs drifts with the machine by as
    // much as the groups cost.
    let sg = Scenario::SameNodeSg100;
    for p in order {
        for (sc, key) in sg_pair_runs(p, round, TCP_SG_PAIRS, report::TCP.name, TCP_NO_SG) {
            let tag = format!("{}-{}", sc.name(), p.name());
            let t = flow(p, sc).tcp(plan.tcp_secs).with_context(|| format!("TCP, {tag}"))?;
            step(label, &format!("{tag}: TCP {:.2} Gbit/s ({} bytes)", t.gbps, t.bytes));
            if t.bytes == 0 {
                no_traffic.push(format!("{tag}: iperf3's receiver got no TCP bytes"));
            }
            samples.entry((sg, p, key)).or_default().push(t.gbps);
        }
    }
    // What the groups cost the connection rate, measured the same way; and the
    // rate over the veth pair floor, where the end hosts' TCP is all there is.
    let per_s = connections(plan, floor, CONNS_IN_FLIGHT, (label, "veth pair floor"), no_traffic)?;
    samples.entry((sg, Path::Datapath, CONNS_FLOOR)).or_default().push(per_s);
    for p in order {
        for (sc, key) in sg_pair_runs(p, round, 1, report::CONNS_PARALLEL.name, CONNS_NO_SG) {
            let tag = format!("{}-{}", sc.name(), p.name());
            let per_s = connections(plan, &flow(p, sc), CONNS_IN_FLIGHT, (label, &tag), no_traffic)?;
            samples.entry((sg, p, key)).or_default().push(per_s);
        }
    }
    // What the groups add to a packet's round trip (both ends polling), measured the same way.
    for p in order {
        for (sc, key) in sg_pair_runs(p, round, 1, report::RTT_P50.name, RTT_NO_SG) {
            let tag = format!("{}-{}", sc.name(), p.name());
            let r = flow(p, sc).rtt(plan.rtt_secs, true).with_context(|| format!("RTT, {tag}"))?;
            step(label, &format!("{tag}: RTT (polling) p50 {:.1} us, p99 {:.1} us", r.p50_us, r.p99_us));
            samples.entry((sg, p, key)).or_default().push(r.p50_us);
        }
    }
    Ok(())
}

/// New TCP connections a second over `flow` with `in_flight` connects
/// outstanding, logged under `tag`; a run where none completed is noted in `no_traffic`.
fn connections(
    plan: &Plan,
    flow: &Flow<'_>,
    in_flight: usize,
    (label, tag): (&str, &str),
    no_traffic: &mut Vec<String>,
) -> Result<f64> {
    let c = flow.connections(plan.pps_window, in_flight).with_context(|| format!("connections, {tag}"))?;
    step(
        label,
        &format!("{tag}: {:.0} new TCP connections/s, {in_flight} in flight ({} failed)", c.per_s, c.failed),
    );
    if c.done == 0 {
        no_traffic.push(format!("{tag}: no TCP connection completed"));
    }
    Ok(c.per_s)
}

/// The runs of one measurement through the 100-rule pair on path `p`, with
/// their samples keys: legacy's alone (`with_key`); on the datapath `pairs`
/// pairs of it and the same path without groups (`without_key`), each pair
/// in the other order than the last, the first pair's order alternating by
/// round (with, without, without, with, ...).
fn sg_pair_runs(
    p: Path,
    round: usize,
    pairs: usize,
    with_key: &'static str,
    without_key: &'static str,
) -> Vec<(Scenario, &'static str)> {
    let with = (Scenario::SameNodeSg100, with_key);
    if p != Path::Datapath {
        return vec![with];
    }
    let without = (Scenario::SameNodeVlan, without_key);
    (0..pairs)
        .flat_map(|i| if (round + i).is_multiple_of(2) { [with, without] } else { [without, with] })
        .collect()
}

/// The security-group records: each group's figures on both paths, and the
/// datapath against itself (1,000 rules against 10, groups against none).
fn sg_records(samples: &Samples) -> Vec<Record> {
    let mut records = Vec::new();
    for sc in Scenario::SG {
        for m in [
            report::PPS,
            report::CONNS,
            report::CONNS_PARALLEL,
            report::TCP,
            report::RTT_P50,
            report::CPU_NS,
            report::PATH_NS,
        ] {
            let med = |p: Path| samples.get(&(sc, p, m.name)).and_then(|v| median(v));
            if med(Path::Datapath).is_some() || med(Path::Legacy).is_some() {
                records.push(Record {
                    scenario: sc.name().into(),
                    metric: m,
                    datapath: med(Path::Datapath),
                    legacy: med(Path::Legacy),
                });
            }
        }
    }
    let dp = |sc: Scenario, key: &str| samples.get(&(sc, Path::Datapath, key)).and_then(|v| median(v));
    for m in [report::PPS, report::CONNS, report::CONNS_PARALLEL] {
        records.push(Record {
            scenario: report::SG_1000_VS_10.into(),
            metric: m,
            datapath: dp(Scenario::SameNodeSg1000, m.name),
            legacy: dp(Scenario::SameNodeSg10, m.name),
        });
    }
    records.push(Record {
        scenario: report::SG_VS_NO_SG.into(),
        metric: report::TCP,
        datapath: dp(Scenario::SameNodeSg100, report::TCP.name),
        legacy: dp(Scenario::SameNodeSg100, TCP_NO_SG),
    });
    records.push(Record {
        scenario: report::SG_VS_NO_SG.into(),
        metric: report::RTT_P50,
        datapath: dp(Scenario::SameNodeSg100, report::RTT_P50.name),
        legacy: dp(Scenario::SameNodeSg100, RTT_NO_SG),
    });
    records.push(Record {
        scenario: report::SG_VS_NO_SG.into(),
        metric: report::CONNS_PARALLEL,
        datapath: dp(Scenario::SameNodeSg100, report::CONNS_PARALLEL.name),
        legacy: dp(Scenario::SameNodeSg100, CONNS_NO_SG),
    });
    records.push(Record {
        scenario: report::FLOOR_VS_LEGACY_SG.into(),
        metric: report::CONNS_PARALLEL,
        datapath: dp(Scenario::SameNodeSg100, CONNS_FLOOR),
        legacy: samples
            .get(&(Scenario::SameNodeSg100, Path::Legacy, report::CONNS_PARALLEL.name))
            .and_then(|v| median(v)),
    });
    records
}

/// The XDP stage's scenarios alone (`BENCH_ONLY_XDP=1`, for work on the stage
/// or the generator: a few minutes instead of half an hour).
fn bench_xdp(plan: &Plan) -> Result<Outcome> {
    let xdp = XdpPair::build().context("building the XDP stage's clusters")?;
    let (mut samples, mut no_traffic) = (XdpSamples::new(), Vec::new());
    for round in 0..plan.rounds {
        let label = format!("bench: round {}/{}", round + 1, plan.rounds);
        measure_xdp(plan, &label, &xdp, round, &mut samples, &mut no_traffic)?;
    }
    Ok(Outcome { records: xdp_records(&samples), profile: Vec::new(), no_traffic })
}

/// Round `round` of the XDP stage against the TC stage alone (which side goes
/// first alternates): the floods' drop rates, the 64-byte rate into a tap,
/// TCP and RTT between the namespace VMs.
fn measure_xdp(
    plan: &Plan,
    label: &str,
    pair: &XdpPair,
    round: usize,
    samples: &mut XdpSamples,
    no_traffic: &mut Vec<String>,
) -> Result<()> {
    let sides = if round.is_multiple_of(2) { [&pair.off, &pair.native] } else { [&pair.native, &pair.off] };
    let mut keep =
        |m: &'static str, side: &Side, v: f64| samples.entry((m, side.xdp.to_string())).or_default().push(v);
    type Flood = fn(&Side, Duration) -> Result<Drops>;
    let floods: [(Metric, Metric, &str, Flood, Vec<u8>); 2] = [
        (
            report::FLOOD_DROPS,
            report::FLOOD_STAGE,
            "frames of an unknown VLAN",
            Side::flood_drops,
            xdp::flood_frame(),
        ),
        (
            report::FOREIGN_VTEP_DROPS,
            report::FOREIGN_VTEP_STAGE,
            "VXLAN frames from a foreign VTEP",
            Side::foreign_vtep_drops,
            pair.native.foreign_vtep_frame()?,
        ),
    ];
    for (metric, stage, what, flood, frame) in floods {
        let floor = pair.floor_drops(frame, plan.pps_window).with_context(|| format!("{what}, floor"))?;
        step(label, &format!("floor: {:.0} {what} dropped per second, {}", floor.per_s, ns(floor.busy_ns)));
        for side in sides {
            let tag = format!("xdp-{}", side.xdp);
            let d = flood(side, plan.pps_window).with_context(|| format!("{what}, {tag}"))?;
            // The stage's own cost: what the flood cost per frame beyond the floor's.
            let own = d.busy_ns.zip(floor.busy_ns).map(|(d, f)| d - f);
            step(
                label,
                &format!(
                    "{tag}: {:.0} {what} dropped per second, {}, the stage's own {}",
                    d.per_s,
                    ns(d.busy_ns),
                    own.map_or("not measured".into(), |n| format!("{n:.0} ns")),
                ),
            );
            if d.per_s == 0.0 {
                no_traffic.push(format!("{tag}: none of the {what} was dropped (counted)"));
            }
            keep(metric.name, side, d.per_s);
            // A stage that costs less than the noise of the floor has no rate to report.
            if let Some(own) = own.filter(|n| *n > 1.0) {
                keep(stage.name, side, 1e9 / own);
            }
        }
    }
    for side in sides {
        let tag = format!("xdp-{}", side.xdp);
        let before = side.redirected()?;
        let p = side.tap_pps(plan.pps_window).with_context(|| format!("into a tap, {tag}"))?;
        let fast = side.redirected()? - before;
        step(
            label,
            &format!(
                "{tag}: {:.0} pps delivered to a tap, {:.0} read ({fast} frames took the fast path)",
                p.delivered, p.read
            ),
        );
        if p.read == 0.0 {
            no_traffic.push(format!("{tag}: no 64-byte frame reached the tap's reader"));
        }
        keep(report::TAP_PPS.name, side, p.delivered);
        keep(report::TAP_READ.name, side, p.read);
    }
    for side in sides {
        let tag = format!("xdp-{}", side.xdp);
        let t = side.flow().tcp(plan.tcp_secs).with_context(|| format!("TCP, {tag}"))?;
        step(label, &format!("{tag}: TCP {:.2} Gbit/s ({} bytes)", t.gbps, t.bytes));
        if t.bytes == 0 {
            no_traffic.push(format!("{tag}: iperf3's receiver got no TCP bytes"));
        }
        keep(report::TCP.name, side, t.gbps);
    }
    for side in sides {
        let tag = format!("xdp-{}", side.xdp);
        let r = side.flow().rtt(plan.rtt_secs, true).with_context(|| format!("RTT, {tag}"))?;
        step(label, &format!("{tag}: RTT (polling) p50 {:.1} us, p99 {:.1} us", r.p50_us, r.p99_us));
        keep(report::RTT_P50.name, side, r.p50_us);
        keep(report::RTT_P99.name, side, r.p99_us);
    }
    Ok(())
}

/// The XDP stage's records: the `native` side against the `off` side.
fn xdp_records(xdp_samples: &XdpSamples) -> Vec<Record> {
    let mut records = Vec::new();
    for m in [
        report::FLOOD_DROPS,
        report::FLOOD_STAGE,
        report::FOREIGN_VTEP_DROPS,
        report::FOREIGN_VTEP_STAGE,
        report::TAP_PPS,
        report::TAP_READ,
        report::TCP,
        report::RTT_P50,
        report::RTT_P99,
    ] {
        let med = |side: &str| xdp_samples.get(&(m.name, side.to_string())).and_then(|v| median(v));
        records.push(Record {
            scenario: report::XDP_VS_TC.into(),
            metric: m,
            datapath: med("native"),
            legacy: med("off"),
        });
    }
    records
}
