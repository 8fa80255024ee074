//! The 64-byte frame generator for kernels that refuse live-frames test runs
//! to this process (`EPERM`: a container without CAP_SYS_RESOURCE): a few
//! frames circle forever between the two ends of a veth pair, in XDP, and
//! every lap sends `CLONES` copies of the frame out of the device under test.
//!
//! The pair's `a` end returns every frame (`XDP_TX`); its `b` end redirects
//! each one through a devmap with `BPF_F_BROADCAST` to `CLONES` slots that
//! name the device and one last slot that names `b` itself. The kernel gives
//! each slot but the last a copy (a page of its own, so a receiver that edits
//! the frame in place edits its copy only) and the last the frame itself,
//! which goes round again. No skb, no syscall per frame: about 250 ns of CPU
//! per frame on this machine, against a microsecond for trafgen, and four
//! times what live frames cost (no page allocation there).
//!
//! It paces itself: all of it runs in NAPI on one CPU (the one whose thread
//! put the first frame in), polled in turn with the NAPI instances of the
//! path under test, once each per round of the softirq, and one lap offers
//! `POPULATION * CLONES` frames. A path whose frames cross the CPU's backlog
//! several times (every veth hop of the legacy chain) gets 64 frames of
//! backlog work a round, so a lap must offer far fewer than that: with 32 a
//! lap, the legacy chain's backlog overflowed and it forwarded a tenth of
//! what it does with trafgen.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use datapath_user::testrun::{BPF_PROG_TYPE_XDP, Insn, load_raw};

/// Copies of the frame per lap.
const CLONES: u32 = 8;
/// Frames circling: one, so that a lap offers `CLONES` frames.
const POPULATION: usize = 1;
/// How long the lap may make no progress before the frame is sent in again.
const STALL: Duration = Duration::from_millis(100);
/// How many times it may be sent in again before the generator counts as dead.
const RESTARTS: u32 = 3;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
/// `BPF_XDP` in `enum bpf_attach_type`.
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_BROADCAST: i32 = 1 << 3;
/// `BPF_FUNC_redirect_map`.
const REDIRECT_MAP: i32 = 51;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// The `BPF_MAP_CREATE` member of `union bpf_attr`, up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The `BPF_MAP_*_ELEM` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct MapElem {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The `BPF_LINK_CREATE` member of `union bpf_attr`, up to `flags`.
#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2) with `attr`, one member of `union bpf_attr`.
pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is a zero-initialised, correctly laid out bpf_attr member whose
    // pointers refer to buffers that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as libc::c_uint) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just handed us this fd, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// The pair's names: unique in this process, so that two generators never meet.
fn names() -> (String, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (format!("xgl{n}a"), format!("xgl{n}b"))
}

/// `name`'s ifindex in this thread's namespace.
pub fn ifindex(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)?;
    // SAFETY: c is NUL-terminated.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("no device {name} here"));
    }
    Ok(i)
}

/// Runs `ip args` in this thread's network namespace (a child inherits it).
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().with_context(|| format!("running ip {args:?}"))?;
    if !out.status.success() {
        bail!("`ip {}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A devmap of `CLONES` slots naming `target` and a last one naming `home`.
fn devmap(target: u32, home: u32) -> Result<OwnedFd> {
    let mut attr = MapCreate {
        map_type: BPF_MAP_TYPE_DEVMAP,
        key_size: 4,
        value_size: 4,
        max_entries: CLONES + 1,
        ..Default::default()
    };
    let map = owned(bpf(BPF_MAP_CREATE, &mut attr).context("creating the generator's devmap")?);
    for slot in 0..=CLONES {
        let dev = if slot < CLONES { target } else { home };
        let mut attr = MapElem {
            map_fd: map.as_raw_fd() as u32,
            key: &slot as *const u32 as u64,
            value: &dev as *const u32 as u64,
            ..Default::default()
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).with_context(|| format!("devmap slot {slot} = ifindex {dev}"))?;
    }
    Ok(map)
}

/// `return bpf_redirect_map(map, 0, BPF_F_BROADCAST)`.
fn load_broadcast(map: &OwnedFd) -> Result<OwnedFd> {
    let insns: [Insn; 6] = [
        (0x18, 1 | (BPF_PSEUDO_MAP_FD << 4), 0, map.as_raw_fd()), // r1 = map (ld_imm64)
        (0, 0, 0, 0),
        (0xb7, 2, 0, 0),               // r2 = 0
        (0xb7, 3, 0, BPF_F_BROADCAST), // r3 = BPF_F_BROADCAST
        (0x85, 0, 0, REDIRECT_MAP),    // call bpf_redirect_map
        (0x95, 0, 0, 0),               // exit
    ];
    load_raw(BPF_PROG_TYPE_XDP, &insns, "bench_bcast").context("loading the broadcasting generator program")
}

/// `XDP_TX`, as an XDP verdict.
pub const XDP_TX: i32 = 3;
const XDP_DROP: i32 = 1;

/// Loads `return verdict` as an XDP program named `name`.
pub fn load_verdict(verdict: i32, name: &str) -> Result<OwnedFd> {
    let insns: [Insn; 2] = [(0xb7, 0, 0, verdict), (0x95, 0, 0, 0)]; // mov64 r0, verdict; exit
    load_raw(BPF_PROG_TYPE_XDP, &insns, name).with_context(|| format!("loading {name} (return {verdict})"))
}

/// Drops every frame `name` (an ifindex in this thread's namespace) receives,
/// in its driver: the floor that the stages' costs are measured from. The
/// program stays attached while the returned link is open.
pub fn drop_all(ifindex: u32, name: &str) -> Result<OwnedFd> {
    attach(&load_verdict(XDP_DROP, "bench_drop")?, ifindex, name)
}

/// Attaches `prog` to `ifindex` in native mode; the link detaches when dropped.
fn attach(prog: &OwnedFd, ifindex: u32, name: &str) -> Result<OwnedFd> {
    let mut attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type: BPF_XDP,
        flags: XDP_FLAGS_DRV_MODE,
    };
    Ok(owned(bpf(BPF_LINK_CREATE, &mut attr).with_context(|| format!("attaching native XDP to {name}"))?))
}

/// Sends `frame` `n` times out of `ifindex` through a packet socket.
fn inject(ifindex: u32, frame: &[u8], n: usize) -> Result<()> {
    // SAFETY: plain socket(2); the fd is owned right after.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("opening a packet socket");
    }
    let sock = owned(fd as i64);
    // SAFETY: a zeroed sockaddr_ll is valid; the fields set are plain integers.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex as i32;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&frame[..6]);
    for _ in 0..n {
        // SAFETY: frame and `to` outlive the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error()).context("sending the generator's first frames");
        }
    }
    Ok(())
}

/// `b`'s received frames, from this thread's namespace (sysfs would show the mounter's).
fn laps(b: &str) -> Result<u64> {
    let dev =
        std::fs::read_to_string("/proc/thread-self/net/dev").context("reading /proc/thread-self/net/dev")?;
    dev.lines()
        .find_map(|l| {
            let (name, rest) = l.split_once(':')?;
            (name.trim() == b).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
        })
        .with_context(|| format!("{b} is not in /proc/thread-self/net/dev"))
}

/// Ends a loop from another thread. The loop's softirq work can starve the
/// CPU that its own thread is pinned to (seen with the legacy chain's
/// frames, whose every veth hop lands on the same CPU's backlog): that
/// thread may not run again until the frame stops circling.
pub struct Breaker(OwnedFd);

impl Breaker {
    /// Empties the devmap's slot that sends the frame round again: the
    /// frame leaves with its last copies, and the loop is over.
    pub fn stop(&self) -> Result<()> {
        let home = CLONES;
        let mut attr = MapElem {
            map_fd: self.0.as_raw_fd() as u32,
            key: &home as *const u32 as u64,
            ..Default::default()
        };
        match bpf(BPF_MAP_DELETE_ELEM, &mut attr) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => {
                Err(e).context("emptying the generator's return slot")
            }
            _ => Ok(()),
        }
    }
}

/// The veth pair, deleted when dropped (with the frames in flight).
struct Pair {
    a: String,
    b: String,
}

impl Pair {
    fn add() -> Result<Self> {
        let (a, b) = names();
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let pair = Self { a, b };
        for dev in [&pair.a, &pair.b] {
            // Anything the stack sent from the pair would join the loop and be
            // copied to the device under test with the frame: IPv6's MLD
            // reports and router solicitations, on a link's way up, were.
            let sysctl = format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6");
            std::fs::write(&sysctl, "1").with_context(|| format!("writing {sysctl}"))?;
            ip(&["link", "set", dev, "arp", "off", "multicast", "off", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // Deleting one end removes both.
        let _ = ip(&["link", "del", &self.a]);
    }
}

/// A running loop; it stops when dropped.
pub struct Loop {
    _links: [OwnedFd; 2],
    map: OwnedFd,
    pair: Pair,
    /// `a`'s ifindex and the frame, to send it in again.
    entry: (u32, Vec<u8>),
    seen: (u64, Instant),
    restarts: u32,
}

impl Loop {
    /// Starts sending `frame` out of `target` (an ifindex in this thread's
    /// namespace), from this thread's CPU: call it from the pinned thread.
    pub fn start(target: u32, frame: &[u8]) -> Result<Self> {
        if frame.len() < 14 {
            bail!("a generated frame needs an Ethernet header, not {} bytes", frame.len());
        }
        let pair = Pair::add()?;
        let (ia, ib) = (ifindex(&pair.a)?, ifindex(&pair.b)?);
        let map = devmap(target, ib)?;
        let tx = attach(&load_verdict(XDP_TX, "bench_bounce")?, ia, &pair.a)?;
        let bcast = attach(&load_broadcast(&map)?, ib, &pair.b)?;
        inject(ia, frame, POPULATION)?;
        let seen = (laps(&pair.b)?, Instant::now());
        Ok(Self { _links: [tx, bcast], map, pair, entry: (ia, frame.to_vec()), seen, restarts: 0 })
    }

    /// What ends the loop from any thread.
    pub fn breaker(&self) -> Result<Breaker> {
        Ok(Breaker(self.map.try_clone().context("duplicating the generator's devmap fd")?))
    }

    /// Sends the frame in again if none has gone round for `STALL` (a frame
    /// lost to memory pressure ends the loop); fails past `RESTARTS`.
    pub fn check(&mut self) -> Result<()> {
        let now = laps(&self.pair.b)?;
        if now != self.seen.0 {
            self.seen = (now, Instant::now());
        } else if self.seen.1.elapsed() > STALL {
            if self.restarts == RESTARTS {
                bail!("the generator's frames stopped circling between {} and {}", self.pair.a, self.pair.b);
            }
            self.restarts += 1;
            inject(self.entry.0, &self.entry.1, POPULATION)?;
            self.seen = (now, Instant::now());
        }
        Ok(())
    }
}
