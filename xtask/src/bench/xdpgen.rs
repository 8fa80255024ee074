//! A 64-byte frame generator that costs almost nothing per frame: a two-
//! instruction XDP program (`return XDP_TX`) run by `BPF_PROG_TEST_RUN` in
//! live-frames mode (`BPF_F_TEST_XDP_LIVE_FRAMES`, Linux 5.18+, what
//! xdp-trafficgen uses) on the sender VM's eth0. Each run turns one frame into
//! `repeat` real frames transmitted out of eth0, in batches of 64, into the
//! peer's XDP ring (which needs NAPI there: GRO on).
//!
//! One run lasts until the thread is signalled: each run sets up and tears down
//! a page pool, which sleeps for about 20 ms, so short runs would leave the
//! sender's CPU idle part of the time and cap the rate for the wrong reason.
//!
//! Why not only trafgen: AF_PACKET costs about a microsecond per frame on this
//! machine, as much as the whole datapath path, and it runs on the same CPU as
//! the path; a generator that expensive squeezes every ratio towards 1.
//!
//! Where the kernel refuses live frames to this process (`EPERM`), the thread
//! runs the loop generator of `xdploop` instead: dearer per frame than live
//! frames, much cheaper than trafgen, and it needs no capability beyond XDP.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, OwnedFd},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

use anyhow::{Context, Result, bail};
use datapath_user::testrun::{BPF_PROG_TEST_RUN, BPF_PROG_TYPE_XDP, Insn, load_raw, uapi::TestAttr};

use super::xdploop::{self, bpf};

const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// Frames per test run: as many as the kernel takes; `finish` interrupts the run.
const REPEAT: u32 = u32::MAX;
/// Interrupts a run (the test-run loop stops with EINTR on a pending signal).
const WAKEUP: libc::c_int = libc::SIGUSR1;

/// `struct xdp_md`: the live-frames run needs `data_end` = the frame's length.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Loads a program that writes `head` over the frame's first 16 bytes, then
/// `XDP_TX`. Live-frames mode recycles each page without copying the frame
/// in again, so a receiver that edits the frame in place (an XDP stage that
/// removes the VLAN tag moves the MACs over it) would otherwise edit every
/// later frame from that page.
fn load_xdp_tx_restoring(head: [u8; 16]) -> Result<OwnedFd> {
    let word = |i: usize| i32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let insns: [Insn; 11] = [
        (0x61, 0x12, 0, 0),  // r2 = ctx->data
        (0x61, 0x13, 4, 0),  // r3 = ctx->data_end
        (0xbf, 0x24, 0, 0),  // r4 = r2
        (0x07, 0x04, 0, 16), // r4 += 16
        (0x2d, 0x34, 4, 0),  // if r4 > r3 goto tx
        (0x62, 0x02, 0, word(0)),
        (0x62, 0x02, 4, word(4)),
        (0x62, 0x02, 8, word(8)),
        (0x62, 0x02, 12, word(12)),
        (0xb7, 0, 0, 3), // tx: r0 = XDP_TX
        (0x95, 0, 0, 0), // exit
    ];
    load_raw(BPF_PROG_TYPE_XDP, &insns, "bench_xmit_rst")
        .context("loading the restoring XDP_TX generator program")
}

extern "C" fn on_wakeup(_: libc::c_int) {}

/// How the thread sends.
enum Sending {
    /// Live-frames test runs of this program, out of this ifindex.
    Live(OwnedFd, u32),
    /// Frames circling in XDP (the kernel refused live frames).
    Loop(xdploop::Loop),
}

/// Installs a no-op handler for `WAKEUP`, so the signal interrupts a run instead of killing us.
fn install_wakeup() -> Result<()> {
    // SAFETY: a zeroed sigaction with a handler that does nothing (async-signal-safe).
    let rc = unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_wakeup as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigaction(WAKEUP, &sa, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("installing the generator's SIGUSR1 handler");
    }
    Ok(())
}

/// Runs `frame` through the program in live mode, `repeat` times, out of `ifindex`
/// (the receiver counts what arrived; the sender's count is never used).
fn send(prog: &OwnedFd, frame: &[u8], ifindex: u32, repeat: u32) -> io::Result<()> {
    let md = XdpMd { data_end: frame.len() as u32, ingress_ifindex: ifindex, ..Default::default() };
    let mut attr = TestAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: size_of::<XdpMd>() as u32,
        ctx_in: &md as *const XdpMd as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        ..Default::default()
    };
    bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
}

/// Set once the kernel refused live frames to this process (EPERM: a
/// container without CAP_SYS_RESOURCE, say): the loop generator
/// (`xdploop`) sends from then on.
static REFUSED: AtomicBool = AtomicBool::new(false);

/// Whether `e` is the kernel refusing live frames; remembers it if so.
fn refused_by(e: &anyhow::Error) -> bool {
    let eperm = e
        .chain()
        .any(|c| c.downcast_ref::<io::Error>().is_some_and(|io| io.raw_os_error() == Some(libc::EPERM)));
    if eperm && !REFUSED.swap(true, Ordering::Relaxed) {
        crate::util::step(
            "bench: XDP sender",
            &format!("live frames refused by the kernel ({e:#}): the XDP loop generator sends instead"),
        );
    }
    eperm
}

/// Whether the kernel has refused live frames to this process.
fn refused() -> bool {
    REFUSED.load(Ordering::Relaxed)
}

/// A sending thread; it stops when dropped or `finish`ed.
pub struct XdpGen {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<()>>>,
    /// The thread, for pthread_kill.
    pthread: libc::pthread_t,
    /// The loop generator's off switch, when it is the one sending.
    breaker: Option<xdploop::Breaker>,
}

impl XdpGen {
    /// Starts sending `frame` out of `dev` in the namespace at `netns`, from a
    /// thread pinned to `cpu`. Fails here (not later) if the first run fails.
    pub fn start(netns: &Path, dev: &str, frame: Vec<u8>, cpu: usize) -> Result<Self> {
        Self::spawn(netns, dev, frame, cpu, false)
    }

    /// Like `start`, writing the frame's first 16 bytes again before each
    /// transmission, for receivers that edit them in place (a tag removed).
    pub fn start_restoring(netns: &Path, dev: &str, frame: Vec<u8>, cpu: usize) -> Result<Self> {
        if frame.len() < 16 {
            bail!("a restored frame needs 16 bytes at least, not {}", frame.len());
        }
        Self::spawn(netns, dev, frame, cpu, true)
    }

    fn spawn(netns: &Path, dev: &str, frame: Vec<u8>, cpu: usize, restoring: bool) -> Result<Self> {
        install_wakeup()?;
        let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
        let dev = dev.to_string();
        let stop = Arc::new(AtomicBool::new(false));
        type Ready = (libc::pthread_t, Option<xdploop::Breaker>);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<Ready>>();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            // The loop generator's breaker goes back with the thread, to stop it from outside.
            let setup = || -> Result<(Sending, Option<xdploop::Breaker>)> {
                // SAFETY: setns on this thread only, with a namespace fd we hold open.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error()).context("setns into the sender's namespace");
                }
                super::traffic::pin_thread(cpu).context("pinning the generator thread")?;
                let ifindex = xdploop::ifindex(&dev).context("in the sender's namespace")?;
                if !refused() {
                    let prog = if restoring {
                        let mut head = [0u8; 16];
                        head.copy_from_slice(&frame[..16]);
                        load_xdp_tx_restoring(head)?
                    } else {
                        xdploop::load_verdict(xdploop::XDP_TX, "bench_xmit")?
                    };
                    match send(&prog, &frame, ifindex, 1).context(
                        "BPF_PROG_TEST_RUN in live-frames mode (needs Linux 5.18+ and an XDP-capable device)",
                    ) {
                        Ok(()) => return Ok((Sending::Live(prog, ifindex), None)),
                        Err(e) if refused_by(&e) => {}
                        Err(e) => return Err(e),
                    }
                }
                // Each receiver gets a copy of its own, so restoring is not needed.
                let lap = xdploop::Loop::start(ifindex, &frame).context("starting the loop generator")?;
                let breaker = lap.breaker()?;
                Ok((Sending::Loop(lap), Some(breaker)))
            };
            let sending = match setup() {
                Ok((v, breaker)) => {
                    // SAFETY: pthread_self has no preconditions.
                    let _ = ready_tx.send(Ok((unsafe { libc::pthread_self() }, breaker)));
                    v
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    let _ = ready_tx.send(Err(e));
                    bail!("{msg}");
                }
            };
            match sending {
                Sending::Live(prog, ifindex) => {
                    while !flag.load(Ordering::SeqCst) {
                        match send(&prog, &frame, ifindex, REPEAT) {
                            Ok(()) => {}
                            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                            Err(e) => return Err(e).context("XDP live-frames run"),
                        }
                    }
                }
                Sending::Loop(mut lap) => {
                    while !flag.load(Ordering::SeqCst) {
                        lap.check()?;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                }
            }
            Ok(())
        });
        match ready_rx.recv() {
            Ok(Ok((pthread, breaker))) => Ok(Self { stop, thread: Some(thread), pthread, breaker }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => bail!("the generator thread ended before it started"),
        }
    }

    /// Stops the thread; says why it failed, if it did.
    pub fn finish(&mut self) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        let Some(t) = self.thread.take() else { return Ok(()) };
        // The loop first: its softirq work can keep its own thread off the CPU.
        let broken = self.breaker.take().map(|b| b.stop());
        // A signal that lands just before the thread enters a run is lost; repeat it
        // until the thread is out.
        while !t.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe { libc::pthread_kill(self.pthread, WAKEUP) };
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        t.join().map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
        broken.transpose().map(|_| ())
    }

    /// Whether the thread is still sending (false: it failed; `finish` says why).
    pub fn running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for XdpGen {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}
