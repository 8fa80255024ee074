//! The measurements on one flow between two VM namespaces, the same for
//! both paths: 64-byte UDP frames per second (counted at the receiver, sent by
//! the XDP live-frames generator and, as a cross-check, by trafgen), TCP
//! throughput (iperf3), round-trip latency (sockperf) and new TCP connections
//! per second (a connect loop of our own).
//!
//! The sender is pinned to one CPU and the receiving end to the other. A veth
//! hands a frame to its peer in the sender's own softirq, so the whole 64-byte
//! path (every hop, bridge, program and the sink) runs on the sender's CPU:
//! its busy time per received frame is what the path costs.

use std::{
    fs::File,
    io::ErrorKind,
    net::{SocketAddrV4, TcpListener, UdpSocket},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use datapath_tests::netns::{Netns, ThreadNetns};

use super::{connect, interrupt, plan::SINK_PORT, stats, xdpgen::XdpGen};

const IPERF_PORT: &str = "5201";
/// TCP port of the connection-rate server.
const CONN_PORT: u16 = 7000;
/// How long one connect may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(100);
const SOCKPERF_PORT: &str = "11111";
/// The sender runs before counting starts, so that queues and caches are warm.
const WARMUP: Duration = Duration::from_millis(500);

/// One end of a flow: a VM's namespace with its `eth0` address.
pub struct Endpoint<'a> {
    pub ns: &'a Netns,
    pub ip: &'a str,
    pub mac: &'a str,
}

/// Traffic from `src` to `dst`.
pub struct Flow<'a> {
    pub src: Endpoint<'a>,
    pub dst: Endpoint<'a>,
}

/// Which program sends the 64-byte frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// `xdpgen`: XDP live frames, tens of ns per frame (its XDP loop, about 250, where live frames are refused).
    Xdp,
    /// trafgen on AF_PACKET, about a microsecond per frame.
    Trafgen,
}

/// What the receiver counted in one 64-byte window.
#[derive(Debug, Clone, Copy)]
pub struct Pps {
    pub pps: f64,
    pub packets: u64,
    /// Busy ns of the sender's CPU per received frame (None when nothing arrived).
    pub cpu_ns_per_pkt: Option<f64>,
    /// How busy the other CPUs were meanwhile (0..1): the path should leave them idle,
    /// so more than a little means someone else is using the machine.
    pub others_busy: f64,
}

/// What the iperf3 receiver counted.
#[derive(Debug, Clone, Copy)]
pub struct Tcp {
    pub bytes: u64,
    pub gbps: f64,
}

/// What the connection loop counted.
#[derive(Debug, Clone, Copy)]
pub struct Conns {
    /// Connections completed (handshake done) within the window.
    pub done: u64,
    /// Connects that failed or timed out within the window.
    pub failed: u64,
    pub per_s: f64,
}

/// sockperf round-trip percentiles, in microseconds.
#[derive(Debug, Clone, Copy)]
pub struct Rtt {
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The CPUs of the sender and of the receiving application.
pub fn cpus() -> (usize, usize) {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0, if n > 1 { 1 } else { 0 })
}

/// Turns GRO on for `dev` in `ns`, the host end of a VM's veth: that gives the
/// veth NAPI, without which frames the XDP generator transmits from the VM end
/// are dropped. Every path gets it on every VM port, so it costs them alike.
pub fn napi_for_generator(ns: &Netns, dev: &str) -> Result<()> {
    ns.exec(&["ethtool", "-K", dev, "gro", "on"]).map(|_| ())
}

/// Fails with the Debian package to install when a tool is missing.
pub fn check_tools() -> Result<()> {
    for (tool, package) in [
        ("trafgen", "netsniff-ng"),
        ("sockperf", "sockperf"),
        ("iperf3", "iperf3"),
        ("iptables", "iptables"),
        ("ipset", "ipset"),
        ("taskset", "util-linux"),
        ("ethtool", "ethtool"),
        ("ss", "iproute2"),
    ] {
        let found = std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("`{tool}` is not installed (apt-get install {package}); `cargo xtask setup` installs it");
        }
    }
    Ok(())
}

impl Flow<'_> {
    /// Installs the receiver's drop rule and makes sure the path works: ARP is
    /// resolved and every bridge (or the datapath) has learned both MACs.
    pub fn prepare(&self, what: &str) -> Result<()> {
        let sink = SINK_PORT.to_string();
        let rule = ["PREROUTING", "-p", "udp", "--dport", &sink, "-j", "DROP"];
        let check: Vec<&str> = ["iptables", "-t", "raw", "-C"].into_iter().chain(rule).collect();
        if !self.dst.ns.exec_output(&check)?.status.success() {
            // Dropped in the raw table, before conntrack and routing, so that the
            // sink costs little and the same on both paths.
            let add: Vec<&str> = ["iptables", "-t", "raw", "-A"].into_iter().chain(rule).collect();
            self.dst.ns.exec(&add)?;
        }
        // One answered ping has taught every bridge (or the datapath) both MACs.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            interrupt::check()?;
            let out = self.src.ns.exec_output(&["ping", "-c", "1", "-W", "1", self.dst.ip])?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what}: {} gets no ping answer from {} within 10 s:\n{}",
                    self.src.ip,
                    self.dst.ip,
                    String::from_utf8_lossy(&out.stdout)
                );
            }
        }
    }

    /// 64-byte frames from `sender` for `window` (after a warm-up), counted at the receiver's eth0.
    pub fn pps(&self, window: Duration, scratch: &Path, tag: &str, sender: Sender) -> Result<Pps> {
        let (sender_cpu, _) = cpus();
        let mut generator = match sender {
            Sender::Xdp => {
                Running::Xdp(XdpGen::start(self.src.ns.path(), "eth0", self.frame()?, sender_cpu)?)
            }
            Sender::Trafgen => Running::Trafgen(Generator::start(
                self.src.ns,
                sender_cpu,
                &self.trafgen_conf(scratch, tag)?,
            )?),
        };
        interrupt::sleep(WARMUP)?;
        generator.check_running()?;
        let (rx0, cpu0, t0) = (self.rx_packets()?, cpu_ticks()?, Instant::now());
        interrupt::sleep(window)?;
        let (rx1, cpu1, t1) = (self.rx_packets()?, cpu_ticks()?, Instant::now());
        // A sender that died early would make a low count look like a slow path.
        generator.check_running()?;
        drop(generator);
        let packets = rx1.saturating_sub(rx0);
        let delta = |cpu: usize| {
            let (a, b) =
                (cpu0.get(cpu).copied().unwrap_or_default(), cpu1.get(cpu).copied().unwrap_or_default());
            (b.busy.saturating_sub(a.busy), b.idle.saturating_sub(a.idle))
        };
        let (busy, _) = delta(sender_cpu);
        let (mut others_busy, mut others_all) = (0, 0);
        for cpu in (0..cpu1.len()).filter(|&c| c != sender_cpu) {
            let (b, i) = delta(cpu);
            others_busy += b;
            others_all += b + i;
        }
        let ns_per_tick = 1e9 / clock_ticks_per_second();
        Ok(Pps {
            pps: packets as f64 / (t1 - t0).as_secs_f64(),
            packets,
            cpu_ns_per_pkt: (packets > 0).then(|| busy as f64 * ns_per_tick / packets as f64),
            others_busy: if others_all > 0 { others_busy as f64 / others_all as f64 } else { 0.0 },
        })
    }

    /// The 60-byte frame (64 on a wire with the FCS): Ethernet, IPv4, UDP to the
    /// sink port, 18 bytes of zeros.
    fn frame(&self) -> Result<Vec<u8>> {
        use datapath_user::{bindings::parse_mac, frames};
        let ip = |s: &str| -> Result<[u8; 4]> {
            Ok(s.parse::<std::net::Ipv4Addr>().with_context(|| format!("IPv4 address {s:?}"))?.octets())
        };
        let udp = frames::ipv4_udp(ip(self.src.ip)?, ip(self.dst.ip)?, SINK_PORT, SINK_PORT, &[0; 18]);
        Ok(frames::eth(parse_mac(self.dst.mac)?, parse_mac(self.src.mac)?, 0x0800, &udp))
    }

    /// The same frame as a trafgen config, written under `scratch`; returns (config, log).
    fn trafgen_conf(&self, scratch: &Path, tag: &str) -> Result<(PathBuf, PathBuf)> {
        let config = format!(
            "{{ eth(da={dst_mac}, sa={src_mac}), ipv4(sa={src_ip}, da={dst_ip}, ttl=64), \
             udp(sp={SINK_PORT}, dp={SINK_PORT}), fill(0x00, 18) }}\n",
            dst_mac = self.dst.mac,
            src_mac = self.src.mac,
            src_ip = self.src.ip,
            dst_ip = self.dst.ip,
        );
        let conf = scratch.join(format!("{tag}.trafgen"));
        std::fs::write(&conf, config).with_context(|| format!("writing {}", conf.display()))?;
        Ok((conf, scratch.join(format!("{tag}.log"))))
    }

    /// iperf3 TCP for `secs` seconds, client and server pinned to different CPUs.
    pub fn tcp(&self, secs: u32) -> Result<Tcp> {
        let (sender_cpu, receiver_cpu) = cpus();
        let (sc, rc) = (sender_cpu.to_string(), receiver_cpu.to_string());
        let _server = self.dst.ns.spawn(&["taskset", "-c", &rc, "iperf3", "-s", "-1", "-p", IPERF_PORT])?;
        self.wait_listening("-Hltn", IPERF_PORT)?;
        let secs = secs.to_string();
        let args = ["taskset", "-c", &sc, "iperf3", "-c", self.dst.ip, "-p", IPERF_PORT, "-t", &secs, "-J"];
        // iperf3 exits non-zero on failure but still prints its JSON with an "error" member.
        let out = self.src.ns.exec_output(&args)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (bytes, bps) = stats::iperf3_received(&text)
            .with_context(|| format!("`iperf3 -c {} -t {secs} -J` in {}", self.dst.ip, self.src.ns.name()))?;
        Ok(Tcp { bytes, gbps: bps / 1e9 })
    }

    /// sockperf UDP ping-pong with 64-byte messages for `secs` seconds (round trips, not halves).
    ///
    /// With `polling`, both ends spin on non-blocking sockets, so the round trip is the
    /// path's own time; without, each message also wakes a sleeping process, which on
    /// this machine adds tens of microseconds to both paths alike.
    pub fn rtt(&self, secs: u32, polling: bool) -> Result<Rtt> {
        let (sender_cpu, receiver_cpu) = cpus();
        let (sc, rc) = (sender_cpu.to_string(), receiver_cpu.to_string());
        let mode: &[&str] = if polling { &["--nonblocked"] } else { &[] };
        let server = ["sockperf", "server", "-i", self.dst.ip, "-p", SOCKPERF_PORT];
        let _server = self.dst.ns.spawn(&[&["taskset", "-c", &rc][..], &server, mode].concat())?;
        self.wait_listening("-Hlun", SOCKPERF_PORT)?;
        let secs = secs.to_string();
        let client =
            ["sockperf", "ping-pong", "-i", self.dst.ip, "-p", SOCKPERF_PORT, "-m", "64", "-t", &secs];
        let args = [&["taskset", "-c", &sc][..], &client, &["--full-rtt"], mode].concat();
        let out = self.src.ns.exec(&args)?;
        let (p50_us, p99_us) = stats::sockperf_percentiles(&out).with_context(|| {
            format!("`sockperf ping-pong -i {} -t {secs}` in {}", self.dst.ip, self.src.ns.name())
        })?;
        Ok(Rtt { p50_us, p99_us })
    }

    /// Makes the 64-byte frames' flow an answered one on stateful paths: one
    /// datagram of the flow, then one back. Linux conntrack calls a UDP flow
    /// ESTABLISHED only once it has seen a reply; the datapath's entry opens on
    /// the first admitted packet either way.
    pub fn answer_udp(&self) -> Result<()> {
        let send = |from: &Endpoint, to: &Endpoint| -> Result<UdpSocket> {
            let _in = ThreadNetns::enter(from.ns)?;
            let sock = UdpSocket::bind((from.ip, SINK_PORT))
                .with_context(|| format!("binding {}:{SINK_PORT} in {}", from.ip, from.ns.name()))?;
            sock.send_to(&[0; 18], (to.ip, SINK_PORT)).with_context(|| format!("sending to {}", to.ip))?;
            Ok(sock)
        };
        let _src = send(&self.src, &self.dst)?;
        // Let the first datagram open its entries before the answer comes.
        std::thread::sleep(Duration::from_millis(20));
        let _dst = send(&self.dst, &self.src)?;
        std::thread::sleep(Duration::from_millis(20));
        Ok(())
    }

    /// New TCP connections per second from src to dst over `window` (after a
    /// warm-up), with `in_flight` connects outstanding (`connect`): a client
    /// thread in src's namespace connects and closes with a RST, a server
    /// thread in dst's accepts and closes. Each connection opens a tracked
    /// entry at both ends of a stateful path, and its SYN meets the receiver's
    /// rules.
    pub fn connections(&self, window: Duration, in_flight: usize) -> Result<Conns> {
        let (sender_cpu, receiver_cpu) = cpus();
        let addr: SocketAddrV4 = format!("{}:{CONN_PORT}", self.dst.ip).parse()?;
        let listener = {
            let _in = ThreadNetns::enter(self.dst.ns)?;
            TcpListener::bind(addr)
                .with_context(|| format!("listening on {addr} in {}", self.dst.ns.name()))?
        };
        // A full accept queue drops SYNs, which the client would retry only after
        // a second: a deep queue, and a server that sleeps only while none waits.
        // SAFETY: listen(2) on our listening socket; a second call only resizes its queue.
        if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
            return Err(std::io::Error::last_os_error()).context("deepening the accept queue");
        }
        listener.set_nonblocking(true)?;
        let stop = AtomicBool::new(false);
        let dst_ip = self.dst.ip;
        std::thread::scope(|s| -> Result<Conns> {
            let server = s.spawn(|| -> Result<()> {
                pin_thread(receiver_cpu)?;
                // The server polls: it never sleeps, so no connection pays for
                // waking it. That wake-up is an inter-processor interrupt sent
                // from the CPU that carries the handshake, and in this VM an
                // IPI exits to the hypervisor: it cost 6 us a connection, as
                // much as the datapath's whole path, on both paths alike.
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
                        Err(e) => return Err(e).context("accepting"),
                    }
                }
                Ok(())
            });
            let client = s.spawn(|| -> Result<Conns> {
                let _in = ThreadNetns::enter(self.src.ns)?;
                pin_thread(sender_cpu)?;
                let start = Instant::now();
                let (from, until) = (start + WARMUP, start + WARMUP + window);
                let c = connect::run(addr, in_flight, CONNECT_TIMEOUT, from, until)?;
                Ok(Conns { done: c.done, failed: c.failed, per_s: c.done as f64 / window.as_secs_f64() })
            });
            let counted = client.join().map_err(|_| anyhow::anyhow!("the connecting thread panicked"));
            stop.store(true, Ordering::Relaxed);
            server.join().map_err(|_| anyhow::anyhow!("the accepting thread panicked"))??;
            counted?.with_context(|| format!("connecting to {dst_ip}:{CONN_PORT}"))
        })
    }

    fn rx_packets(&self) -> Result<u64> {
        let out = self.dst.ns.exec(&["cat", "/sys/class/net/eth0/statistics/rx_packets"])?;
        out.trim().parse().with_context(|| format!("rx_packets of eth0 in {}: {out:?}", self.dst.ns.name()))
    }

    /// Waits until the receiver has a socket listening on `port` (`ss` flags select TCP or UDP).
    fn wait_listening(&self, flags: &str, port: &str) -> Result<()> {
        let filter = format!("sport = :{port}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            interrupt::check()?;
            if !self.dst.ns.exec(&["ss", flags, &filter])?.trim().is_empty() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("nothing listens on port {port} in {} after 5 s", self.dst.ns.name())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("pinning a thread");
        }
    }
    Ok(())
}

fn cpu_ticks() -> Result<Vec<stats::CpuTicks>> {
    stats::proc_stat_cpus(&std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?)
}

/// Busy nanoseconds of every CPU together since boot (at the clock tick's resolution).
pub fn busy_ns() -> Result<f64> {
    let busy: u64 = cpu_ticks()?.iter().map(|c| c.busy).sum();
    Ok(busy as f64 * 1e9 / clock_ticks_per_second())
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// A generator that is sending.
enum Running {
    Xdp(XdpGen),
    Trafgen(Generator),
}

impl Running {
    /// Fails with the generator's own words if it has stopped.
    fn check_running(&mut self) -> Result<()> {
        match self {
            Running::Xdp(g) if !g.running() => {
                g.finish()?;
                bail!("the XDP generator stopped while it should be sending")
            }
            Running::Xdp(_) => Ok(()),
            Running::Trafgen(g) => g.check_running(),
        }
    }
}

/// trafgen in its own process group, killed as a group when dropped: it forks
/// its sender, and killing only the parent would leave the sender running.
struct Generator {
    child: Child,
    log: PathBuf,
    command: String,
}

impl Generator {
    fn start(ns: &Netns, cpu: usize, (conf, log): &(PathBuf, PathBuf)) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns.name(), "taskset", "-c", &cpu.to_string(), "trafgen", "--dev", "eth0"])
            .arg("--conf")
            .arg(conf)
            // One sender; leave the system's socket memory limits and IRQ affinities alone.
            .args(["--cpus", "1", "--no-sock-mem", "--notouch-irq", "--no-cpu-stats"])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0);
        let command = format!("{cmd:?}").replace('"', "");
        let child = cmd.spawn().with_context(|| format!("starting `{command}`"))?;
        Ok(Self { child, log: log.to_path_buf(), command })
    }

    fn check_running(&mut self) -> Result<()> {
        if let Some(status) =
            self.child.try_wait().with_context(|| format!("waiting for `{}`", self.command))?
        {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            bail!("`{}` stopped while it should be sending ({status}):\n{}", self.command, log.trim_end());
        }
        Ok(())
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        let group = self.child.id() as i32;
        // SAFETY: signalling the process group we created; its leader is our unreaped child,
        // so the group id cannot have been reused.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.child.wait();
        // The forked sender is not our child; wait until it is gone too, so that the next
        // measurement does not share the CPU with it.
        // SAFETY: signal 0 only checks whether the group still has members.
        datapath_tests::wait_until(Duration::from_secs(2), || unsafe { libc::kill(-group, 0) } != 0);
    }
}
