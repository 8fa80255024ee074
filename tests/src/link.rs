//! Network devices for tests: veth pairs, Linux bridges, persistent taps and
//! taps whose fd the test holds, plus the usual `ip link`/`ip addr` chores.
//!
//! Every function takes the namespace as `Option<&Netns>`; `None` is the
//! namespace of the test process (normally the host's).

use std::{
    fs::File,
    io,
    ops::Deref,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::{Netns, describe_failure};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// A short unique interface name: up to 6 chars of `prefix`, the pid (5 base-36
/// digits) and a counter, at most 15 chars in all.
///
/// Needed for names in a shared namespace (the host's); names inside a test's
/// own namespace cannot clash anyway.
pub fn unique_name(prefix: &str) -> String {
    let prefix: String = prefix.chars().filter(|c| c.is_ascii_alphanumeric()).take(6).collect();
    // Fixed-width pid so that pid and counter digits cannot run into each other.
    let pid = base36(std::process::id() as u64, 5);
    let n = base36(crate::next_id() % 36u64.pow(4), 1);
    format!("{prefix}{pid}{n}")
}

fn base36(mut v: u64, min_width: usize) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while v > 0 || out.len() < min_width {
        out.push(DIGITS[(v % 36) as usize]);
        v /= 36;
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// Runs `ip [-n NS] args...` and returns its stdout; errors carry the command and stderr.
pub fn ip(ns: Option<&Netns>, args: &[&str]) -> Result<String> {
    ip_in(ns.map(Netns::name), args)
}

fn ip_in(ns: Option<&str>, args: &[&str]) -> Result<String> {
    let mut cmd: Vec<&str> = vec!["ip"];
    if let Some(ns) = ns {
        cmd.extend(["-n", ns]);
    }
    cmd.extend_from_slice(args);
    let out = Command::new("ip")
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("starting `{}`", cmd.join(" ")))?;
    if !out.status.success() {
        bail!("{}", describe_failure(&cmd, &out));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The ifindex of `dev` in `ns`.
pub fn ifindex(ns: Option<&Netns>, dev: &str) -> Result<u32> {
    LinkRef::new(ns, dev).ifindex()
}

/// Interface counters, from `ip -s -j link show`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

/// A device by name and namespace; does not own it (see the guards for that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRef {
    name: String,
    ns: Option<String>,
}

impl LinkRef {
    /// Refers to `name` in `ns`.
    pub fn new(ns: Option<&Netns>, name: &str) -> Self {
        Self { name: name.into(), ns: ns.map(|n| n.name().to_string()) }
    }

    /// The device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace name, `None` for the test process's namespace.
    pub fn ns_name(&self) -> Option<&str> {
        self.ns.as_deref()
    }

    /// Runs `ip [-n NS] args...`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip_in(self.ns.as_deref(), args)
    }

    /// `ip -j link show dev NAME`, parsed.
    pub fn show(&self) -> Result<Value> {
        let out = self.ip(&["-j", "link", "show", "dev", &self.name])?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("parsing `ip -j link show` output {out:?}"))?;
        Ok(v[0].clone())
    }

    /// Whether the device exists (in its namespace).
    pub fn exists(&self) -> bool {
        self.show().is_ok()
    }

    /// The ifindex, as seen inside its namespace.
    pub fn ifindex(&self) -> Result<u32> {
        let v = self.show()?;
        v["ifindex"]
            .as_u64()
            .map(|i| i as u32)
            .with_context(|| format!("no ifindex for {} in {v}", self.name))
    }

    /// The MAC address, `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self) -> Result<String> {
        let v = self.show()?;
        v["address"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no address for {} in {v}", self.name))
    }

    /// `ip link set NAME up`.
    pub fn up(&self) -> Result<()> {
        self.ip(&["link", "set", "dev", &self.name, "up"]).map(drop)
    }

    /// `ip link set NAME down`.
    pub fn down(&self) -> Result<()> {
        self.ip(&["link", "set", "dev", &self.name, "down"]).map(drop)
    }

    /// `ip link set NAME address MAC`.
    pub fn set_mac(&self, mac: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", &self.name, "address", mac]).map(drop)
    }

    /// `ip link set NAME mtu MTU`.
    pub fn set_mtu(&self, mtu: u32) -> Result<()> {
        self.ip(&["link", "set", "dev", &self.name, "mtu", &mtu.to_string()]).map(drop)
    }

    /// `ip link set NAME master BRIDGE` (same namespace).
    pub fn set_master(&self, bridge: &str) -> Result<()> {
        self.ip(&["link", "set", "dev", &self.name, "master", bridge]).map(drop)
    }

    /// `ip addr add CIDR dev NAME`, e.g. `10.0.0.1/24`; IPv6 addresses skip DAD so they work at once.
    pub fn add_addr(&self, cidr: &str) -> Result<()> {
        let mut args = vec!["addr", "add", cidr, "dev", &self.name];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(&args).map(drop)
    }

    /// Counters from `ip -s -j link show`.
    pub fn stats(&self) -> Result<LinkStats> {
        let out = self.ip(&["-s", "-j", "link", "show", "dev", &self.name])?;
        let v: Value =
            serde_json::from_str(&out).with_context(|| format!("parsing `ip -s -j link show` {out:?}"))?;
        let s = &v[0]["stats64"];
        let n = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            rx_bytes: n("rx", "bytes"),
            rx_dropped: n("rx", "dropped"),
            tx_packets: n("tx", "packets"),
            tx_bytes: n("tx", "bytes"),
            tx_dropped: n("tx", "dropped"),
        })
    }

    /// Deletes the device; a device that is already gone (or whose namespace is) is not an error.
    pub fn delete(&self) -> Result<()> {
        match self.ip(&["link", "del", "dev", &self.name]) {
            Ok(_) => Ok(()),
            Err(_) if !self.exists() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn delete_quietly(link: &LinkRef) {
    if let Err(e) = link.delete() {
        eprintln!("warning: {e:#}");
    }
}

/// A veth pair; deleting it on drop removes both ends.
#[derive(Debug)]
pub struct Veth {
    a: LinkRef,
    b: LinkRef,
}

impl Veth {
    /// Creates veth `a_name` in `a_ns` with its peer `b_name` in `b_ns`, both down.
    pub fn new(a_name: &str, a_ns: Option<&Netns>, b_name: &str, b_ns: Option<&Netns>) -> Result<Self> {
        let mut args = vec!["link", "add", a_name];
        if let Some(ns) = a_ns {
            args.extend(["netns", ns.name()]);
        }
        args.extend(["type", "veth", "peer", "name", b_name]);
        if let Some(ns) = b_ns {
            args.extend(["netns", ns.name()]);
        }
        // Created from the test's namespace: `netns` puts each end where it belongs.
        ip(None, &args)?;
        Ok(Self { a: LinkRef::new(a_ns, a_name), b: LinkRef::new(b_ns, b_name) })
    }

    /// The first end.
    pub fn a(&self) -> &LinkRef {
        &self.a
    }

    /// The peer.
    pub fn b(&self) -> &LinkRef {
        &self.b
    }

    /// Brings both ends up.
    pub fn up(&self) -> Result<()> {
        self.a.up()?;
        self.b.up()
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Either end takes its peer along; try b as well in case a was moved away.
        if self.a.exists() {
            delete_quietly(&self.a);
        } else if self.b.exists() {
            delete_quietly(&self.b);
        }
    }
}

/// A Linux bridge (`ip link add NAME type bridge`), down; deleted on drop.
#[derive(Debug)]
pub struct Bridge {
    link: LinkRef,
}

impl Bridge {
    /// Creates bridge `name` in `ns`.
    pub fn new(ns: Option<&Netns>, name: &str) -> Result<Self> {
        ip(ns, &["link", "add", name, "type", "bridge"])?;
        Ok(Self { link: LinkRef::new(ns, name) })
    }

    /// The bridge as a plain device reference.
    pub fn link(&self) -> &LinkRef {
        &self.link
    }
}

impl Deref for Bridge {
    type Target = LinkRef;
    fn deref(&self) -> &LinkRef {
        &self.link
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        delete_quietly(&self.link);
    }
}

/// A persistent tap (`ip tuntap add dev NAME mode tap`) with no reader, so its
/// carrier stays down (use [`TapFd`] for a tap that passes traffic); deleted on drop.
#[derive(Debug)]
pub struct Tap {
    link: LinkRef,
}

impl Tap {
    /// Creates tap `name` in `ns`.
    pub fn new(ns: Option<&Netns>, name: &str) -> Result<Self> {
        ip(ns, &["tuntap", "add", "dev", name, "mode", "tap"])?;
        Ok(Self { link: LinkRef::new(ns, name) })
    }

    /// The tap as a plain device reference.
    pub fn link(&self) -> &LinkRef {
        &self.link
    }
}

impl Deref for Tap {
    type Target = LinkRef;
    fn deref(&self) -> &LinkRef {
        &self.link
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        if self.link.exists()
            && let Err(e) = self.link.ip(&["tuntap", "del", "dev", &self.link.name, "mode", "tap"])
        {
            eprintln!("warning: {e:#}");
        }
    }
}

/// A tap device owned by an fd of the test process (IFF_TAP | IFF_NO_PI): what
/// the test writes arrives on the device, what the device sends the test can
/// read. Created down with carrier on; the device is gone when this drops.
#[derive(Debug)]
pub struct TapFd {
    /// Always Some until drop, which closes it before waiting for the device to go.
    fd: Option<OwnedFd>,
    link: LinkRef,
}

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags in the union.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(size_of::<IfReq>() == 40);

impl TapFd {
    /// Creates tap `name` in `ns` (`None`: the caller's namespace) and keeps its fd.
    pub fn open(ns: Option<&Netns>, name: &str) -> Result<Self> {
        if name.is_empty() || name.len() > MAX_IFNAME {
            bail!("tap name {name:?} must have 1..={MAX_IFNAME} bytes");
        }
        let fd = match ns {
            None => create_tap(name)?,
            Some(ns) => {
                // tun binds a device to the netns of whoever opens /dev/net/tun,
                // so open it from a throwaway thread that moved into the namespace
                // (setns affects only the calling thread).
                let target =
                    File::open(ns.path()).with_context(|| format!("opening {}", ns.path().display()))?;
                let name = name.to_string();
                std::thread::spawn(move || -> Result<OwnedFd> {
                    // SAFETY: setns with a valid namespace fd, on this thread only.
                    if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                        return Err(io::Error::last_os_error()).context("setns into the tap's namespace");
                    }
                    create_tap(&name)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("tap creation thread panicked"))??
            }
        };
        Ok(Self { fd: Some(fd), link: LinkRef::new(ns, name) })
    }

    /// The tap as a plain device reference.
    pub fn link(&self) -> &LinkRef {
        &self.link
    }

    fn raw_fd(&self) -> i32 {
        self.fd.as_ref().expect("open until drop").as_raw_fd()
    }

    /// Injects one frame (starting with the Ethernet header) as if received on the tap.
    pub fn write_frame(&self, frame: &[u8]) -> Result<()> {
        // SAFETY: writing from a valid buffer of frame.len() bytes to our fd.
        let n = unsafe { libc::write(self.raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("writing a frame to tap {}", self.link.name));
        }
        if n as usize != frame.len() {
            bail!("tap {} took {n} of {} bytes", self.link.name, frame.len());
        }
        Ok(())
    }

    /// The next frame the device transmitted, or `None` if none came within `timeout`.
    pub fn read_frame(&self, timeout: Duration) -> Result<Option<Vec<u8>>> {
        let mut pfd = libc::pollfd { fd: self.raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("polling tap {}", self.link.name));
        }
        if r == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: reading into a valid buffer of buf.len() bytes.
        let n = unsafe { libc::read(self.raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e).with_context(|| format!("reading tap {}", self.link.name));
        }
        buf.truncate(n as usize);
        Ok(Some(buf))
    }

    /// The first transmitted frame for which `want` holds, skipping others (the
    /// kernel's own IPv6 router solicitations, MLD reports, ...), within `timeout`.
    pub fn read_frame_where(
        &self,
        timeout: Duration,
        mut want: impl FnMut(&[u8]) -> bool,
    ) -> Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left)? {
                Some(f) if want(&f) => return Ok(Some(f)),
                Some(_) if !left.is_zero() => continue,
                _ => return Ok(None),
            }
        }
    }
}

impl Deref for TapFd {
    type Target = LinkRef;
    fn deref(&self) -> &LinkRef {
        &self.link
    }
}

impl AsFd for TapFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_ref().expect("open until drop").as_fd()
    }
}

impl Drop for TapFd {
    fn drop(&mut self) {
        drop(self.fd.take());
        // A fork in another test thread can hold a copy of the fd until its
        // exec (CLOEXEC), delaying the device's removal a little: wait for it,
        // so that the device is really gone when the guard is.
        if !crate::wait_until(Duration::from_secs(5), || !self.link.exists()) {
            eprintln!("warning: tap {} still exists after its fd was closed", self.link.name);
        }
    }
}

/// Opens /dev/net/tun and attaches it to a new tap `name` in the calling thread's netns.
fn create_tap(name: &str) -> Result<OwnedFd> {
    // SAFETY: plain open(2) of a constant path.
    let raw =
        unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error()).context("opening /dev/net/tun");
    }
    // SAFETY: we own the fd open(2) just returned.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req =
        IfReq { name: [0; 16], flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which IfReq mirrors.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("TUNSETIFF for tap {name}"));
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::capture::Capture;

    #[test]
    fn unique_names_fit_and_differ() {
        let names: Vec<String> = (0..2000).map(|_| unique_name("veth-long-prefix")).collect();
        assert!(names.iter().all(|n| n.len() <= MAX_IFNAME && n.starts_with("vethlo")), "{:?}", &names[..3]);
        assert_eq!(names.iter().collect::<HashSet<_>>().len(), names.len());
        assert_eq!(base36(0, 5), "00000");
        assert_eq!(base36(36 * 36, 1), "100");
    }

    #[test]
    fn veth_between_namespaces_pings_and_is_removed() {
        crate::require_root();
        let left = Netns::new("left").unwrap();
        let right = Netns::new("right").unwrap();
        let veth = Veth::new("l0", Some(&left), "r0", Some(&right)).unwrap();
        veth.a().add_addr("10.99.0.1/24").unwrap();
        veth.b().add_addr("10.99.0.2/24").unwrap();
        veth.b().set_mac("02:00:00:00:00:02").unwrap();
        veth.up().unwrap();
        assert_eq!(veth.b().mac().unwrap(), "02:00:00:00:00:02");
        // Each namespace has lo (ifindex 1) and its end.
        assert!(veth.a().ifindex().unwrap() > 1);
        assert_eq!(ifindex(Some(&right), "lo").unwrap(), 1);

        let cap = Capture::start(&right, "r0", "icmp").unwrap();
        left.exec(&["ping", "-c1", "-W1", "10.99.0.2"]).unwrap();
        let lines = cap.stop().unwrap();
        assert!(lines.iter().any(|l| l.contains("10.99.0.1 > 10.99.0.2: ICMP echo request")), "{lines:#?}");
        assert!(lines.iter().any(|l| l.contains("02:00:00:00:00:02 >")), "{lines:#?}");
        assert!(veth.a().stats().unwrap().tx_packets >= 1);

        let (a, b) = (veth.a().clone(), veth.b().clone());
        drop(veth);
        assert!(!a.exists() && !b.exists());
        let names = [left.name().to_string(), right.name().to_string()];
        drop(left);
        drop(right);
        let listed = crate::netns::list_names().unwrap();
        assert!(names.iter().all(|n| !listed.contains(n)), "{listed:?}");
    }

    #[test]
    fn veth_with_host_end_is_removed_with_its_namespace() {
        crate::require_root();
        let host_end = unique_name("dpth");
        let ns = Netns::new("hostend").unwrap();
        let veth = Veth::new(&host_end, None, "eth0", Some(&ns)).unwrap();
        assert!(LinkRef::new(None, &host_end).exists());
        drop(ns);
        // The namespace took its end, and the peer with it (asynchronously).
        assert!(crate::wait_until(Duration::from_secs(5), || !LinkRef::new(None, &host_end).exists()));
        drop(veth); // nothing left to delete: must not complain or fail
    }

    #[test]
    fn bridge_and_persistent_tap() {
        crate::require_root();
        let ns = Netns::new("br").unwrap();
        let br = Bridge::new(Some(&ns), "br0").unwrap();
        let tap = Tap::new(Some(&ns), "tap0").unwrap();
        tap.set_master(br.name()).unwrap();
        br.up().unwrap();
        tap.up().unwrap();
        let shown = tap.show().unwrap();
        assert_eq!(shown["master"], "br0", "{shown}");
        // No reader: no carrier.
        assert!(shown["flags"].as_array().unwrap().iter().any(|f| f == "NO-CARRIER"), "{shown}");
        let (b, t) = (br.link().clone(), tap.link().clone());
        drop(tap);
        drop(br);
        assert!(!b.exists() && !t.exists());
    }

    fn arp_request(src: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&spa);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&tpa);
        f
    }

    #[test]
    fn tap_fd_writes_and_reads_frames() {
        crate::require_root();
        let ns = Netns::new("tapfd").unwrap();
        let tap = TapFd::open(Some(&ns), "tapx").unwrap();
        assert_eq!(tap.ns_name(), Some(ns.name()));
        tap.add_addr("10.98.0.1/24").unwrap();
        tap.up().unwrap();
        let before = tap.stats().unwrap();

        // In: an ARP request for the tap's address arrives on the device...
        let cap = Capture::start(&ns, "tapx", "arp").unwrap();
        let src = [0x02, 0, 0, 0, 0, 0x42];
        tap.write_frame(&arp_request(src, [10, 98, 0, 2], [10, 98, 0, 1])).unwrap();
        // ...and out: the kernel answers it through the tap, to us.
        let is_reply_to_us =
            |f: &[u8]| f.len() >= 22 && f[..6] == src && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2];
        let reply = tap.read_frame_where(Duration::from_secs(5), is_reply_to_us).unwrap();
        assert!(reply.is_some(), "no ARP reply came out of the tap");
        assert!(tap.stats().unwrap().rx_packets > before.rx_packets);
        let lines = cap.stop().unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("02:00:00:00:00:42 > ff:ff:ff:ff:ff:ff")
                    && l.contains("who-has 10.98.0.1")),
            "{lines:#?}"
        );
        assert!(lines.iter().any(|l| l.contains("is-at")), "{lines:#?}");

        let link = tap.link().clone();
        drop(tap);
        assert!(!link.exists(), "a non-persistent tap goes with its fd");
    }

    #[test]
    fn tap_fd_read_times_out_quietly() {
        crate::require_root();
        let ns = Netns::new("tapto").unwrap();
        let tap = TapFd::open(Some(&ns), "tapy").unwrap();
        // Down: nothing is sent through it.
        let start = Instant::now();
        assert!(tap.read_frame(Duration::from_millis(100)).unwrap().is_none());
        assert!(start.elapsed() >= Duration::from_millis(90));
        assert!(TapFd::open(Some(&ns), "a-name-that-is-too-long").is_err());
    }
}
