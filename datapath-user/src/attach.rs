//! Attaches the programs to devices' TC ingress (and, on ports, TC egress)
//! so that they keep forwarding when the agent stops, and are adopted
//! (updated in place) when an agent starts again. Two hooks, chosen by
//! `features::probe` at start-up:
//!
//! - tcx (Linux 6.6+): a bpf_link per device and direction, pinned at
//!   `links/<device>` (ingress) and `links-egress/<device>`; an upgrade
//!   swaps the program with `bpf_link_update`.
//! - netlink cls_bpf (older kernels): a direct-action filter on the device's
//!   clsact qdisc at a fixed priority and handle; the program is pinned at
//!   `filters/<device>` (or `filters-egress/<device>`) to record that the
//!   filter is ours. An upgrade replaces the filter in place, which cls_bpf
//!   does atomically.
//!
//! The uplinks' XDP stage (`xdp` in the config) is a native-mode XDP
//! bpf_link per uplink, pinned at `links-xdp/<device>` and updated in place
//! the same way. While it runs, the uplink's rx VLAN offload is off (so that
//! tags stay in the frame); `xdp-rxvlan/<device>` records that the agent
//! turned it off, and removing the stage turns it back on.
//!
//! The bound ports that are tun devices (VM taps), which take frames an XDP
//! program redirects, go into `XDP_TAPS`, where the XDP stage's fast path
//! finds them; namespace ports (veth) do not: veth takes XDP frames only
//! when its peer runs NAPI, which is the guest side's business.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::MapError;
use aya::programs::{
    LinkOrder, ProgramError, SchedClassifier, TcAttachType, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    xdp::XdpLink,
};
use datapath_common::{UnderlayInfo, names};

use crate::{config::XdpChoice, desired::Attachment, ethtool, features::Hook, loader::Datapath};

/// Priority of our cls_bpf filter on kernels without tcx: first, before any other filter.
pub const NETLINK_PRIORITY: u16 = 1;
/// Handle of our cls_bpf filter ("da7a"), so that a restarted agent finds it again.
pub const NETLINK_HANDLE: TcHandle = TcHandle::new(0, 0xda7a);

/// Keeps the set of attached devices equal to the desired one.
pub struct Attacher {
    hook: Hook,
    xdp_choice: XdpChoice,
    /// The versioned pin directory; `None` when nothing is pinned (tests).
    pin_dir: Option<PathBuf>,
    /// Devices whose hook already runs this process's programs.
    current: BTreeMap<u32, Attachment>,
    /// Where the XDP stage runs, by uplink device.
    xdp: BTreeMap<String, XdpState>,
    /// Uplinks whose XDP stage failed to attach, and why.
    xdp_failed: BTreeMap<String, String>,
    /// The taps this process put into `XDP_TAPS`, by ifindex.
    taps: BTreeSet<u32>,
    /// This node's VTEP address (`local_ip`), when it has tunnels.
    local_ip: Option<Ipv4Addr>,
    /// The device that holds `local_ip`, where the underlay's XDP stage runs.
    underlay: Option<Underlay>,
}

/// The underlay device as the attacher last set it up.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Underlay {
    device: String,
    ifindex: u32,
    info: UnderlayInfo,
    /// It is an uplink, whose own stage checks the tunnel traffic: no stage of its own.
    uplink: bool,
}

/// Whether an uplink runs the XDP stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdpState {
    /// In the driver (native mode).
    Native,
    /// The TC stage alone, and why.
    TcOnly(String),
}

impl std::fmt::Display for XdpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XdpState::Native => write!(f, "native"),
            XdpState::TcOnly(why) => write!(f, "tc only ({why})"),
        }
    }
}

/// Pins of the uplinks' XDP links.
const XDP_LINKS: &str = "links-xdp";
/// Markers (empty directories) of the uplinks whose rx VLAN offload the agent turned off.
const XDP_RXVLAN: &str = "xdp-rxvlan";

/// Every directory of attachment pins (and markers) under a versioned pin
/// directory, which an upgrade across layouts moves into its own.
pub const ATTACHMENT_DIRS: [&str; 6] =
    ["links", "filters", "links-egress", "filters-egress", XDP_LINKS, XDP_RXVLAN];

/// The two TC directions a program may run in.
const DIRECTIONS: [TcAttachType; 2] = [TcAttachType::Ingress, TcAttachType::Egress];

/// Where an agent pins the attachments of `hook` in direction `ty`.
fn hook_dir(pin_dir: &Path, hook: Hook, ty: TcAttachType) -> PathBuf {
    pin_dir.join(match (hook, ty) {
        (Hook::Tcx, TcAttachType::Egress) => "links-egress",
        (Hook::Tcx, _) => "links",
        (Hook::Netlink, TcAttachType::Egress) => "filters-egress",
        (Hook::Netlink, _) => "filters",
    })
}

/// The program `att` wants in direction `ty`.
fn program_for(att: &Attachment, ty: TcAttachType) -> Option<&'static str> {
    match ty {
        TcAttachType::Egress => att.egress,
        _ => Some(att.program),
    }
}

impl Attacher {
    /// An attacher using `hook` (and `xdp` on uplinks), pinning under `pin_dir` when given.
    pub fn new(hook: Hook, xdp: XdpChoice, pin_dir: Option<&Path>) -> Result<Self> {
        let mut dirs: Vec<PathBuf> =
            DIRECTIONS.iter().filter_map(|&ty| pin_dir.map(|d| hook_dir(d, hook, ty))).collect();
        dirs.extend(pin_dir.iter().flat_map(|d| [d.join(XDP_LINKS), d.join(XDP_RXVLAN)]));
        for dir in dirs {
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self {
            hook,
            xdp_choice: xdp,
            pin_dir: pin_dir.map(Path::to_path_buf),
            current: BTreeMap::new(),
            xdp: BTreeMap::new(),
            xdp_failed: BTreeMap::new(),
            taps: BTreeSet::new(),
            local_ip: None,
            underlay: None,
        })
    }

    /// Checks this node's tunnel traffic in the driver of the device that
    /// holds `local_ip` (the underlay's XDP stage), where `xdp` allows.
    pub fn with_underlay(mut self, local_ip: Option<Ipv4Addr>) -> Self {
        self.local_ip = local_ip;
        self
    }

    /// The underlay device and where its XDP stage runs, when the node has tunnels.
    pub fn underlay(&self) -> Option<(&str, Option<&XdpState>)> {
        self.underlay.as_ref().map(|u| (u.device.as_str(), self.xdp.get(&u.device)))
    }

    /// Where the XDP stage runs, by uplink (and underlay) device.
    pub fn xdp_states(&self) -> &BTreeMap<String, XdpState> {
        &self.xdp
    }

    /// The uplinks whose XDP stage the last attempt failed to attach, and why.
    pub fn xdp_failures(&self) -> &BTreeMap<String, String> {
        &self.xdp_failed
    }

    /// Attaches what `desired` names and detaches what it no longer names.
    /// With `verify`, every attachment is checked (netlink: re-asserted) even
    /// if this process made it, to repair changes made behind its back.
    /// Returns one message per device that failed; the others are done.
    pub fn reconcile(
        &mut self,
        dp: &mut Datapath,
        desired: &BTreeMap<u32, Attachment>,
        verify: bool,
    ) -> Vec<String> {
        let mut errors = Vec::new();
        let mut touched = false;
        for (ifindex, att) in desired {
            if self.current.get(ifindex) == Some(att) && self.still_attached(att, verify) {
                continue;
            }
            touched = true;
            let mut ok = true;
            // The driver's stage first: once the TC stage runs, nothing that
            // stage drops reaches it.
            match att.xdp {
                Some(program) => {
                    if let Err(e) = self.stage(dp, program, &att.device) {
                        errors.push(format!("attaching {program} to {} (XDP): {e:#}", att.device));
                        ok = false;
                    }
                }
                // Also a stage an earlier agent left (`xdp` turned off since): its pins say so.
                None => {
                    self.xdp.remove(&att.device);
                    if let Some(pin_dir) = &self.pin_dir
                        && let Err(e) = detach_xdp(pin_dir, &att.device)
                    {
                        errors.push(format!("removing the XDP stage of {}: {e:#}", att.device));
                    }
                }
            }
            for ty in DIRECTIONS {
                let Some(program) = program_for(att, ty) else { continue };
                if let Err(e) = self.attach(dp, program, &att.device, ty) {
                    errors.push(format!("attaching {program} to {} ({ty:?}): {e:#}", att.device));
                    ok = false;
                }
            }
            if let Err(e) = self.set_tap(dp, *ifindex, att) {
                errors.push(format!("{}: {e:#}", att.device));
                ok = false;
            }
            if ok {
                let had_egress = self.current.get(ifindex).is_some_and(|a| a.egress.is_some());
                self.current.insert(*ifindex, att.clone());
                if had_egress
                    && att.egress.is_none()
                    && let Some(pin_dir) = &self.pin_dir
                    && let Err(e) = detach_one(pin_dir, self.hook, TcAttachType::Egress, &att.device)
                {
                    errors.push(format!("detaching the egress program of {}: {e:#}", att.device));
                }
            }
        }
        let before = self.current.len();
        let wanted: BTreeSet<&str> = desired.values().map(|a| a.device.as_str()).collect();
        self.current.retain(|_, a| wanted.contains(a.device.as_str()));
        let gone: Vec<u32> = self.taps.iter().filter(|i| !desired.contains_key(i)).copied().collect();
        for ifindex in gone {
            match untap(dp, ifindex) {
                Ok(()) => _ = self.taps.remove(&ifindex),
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        if verify && let Err(e) = self.prune_taps(dp) {
            errors.push(format!("{e:#}"));
        }
        let underlay = self.underlay.as_ref().map(|u| u.device.clone());
        self.xdp.retain(|d, _| wanted.contains(d.as_str()) || Some(d) == underlay.as_ref());
        self.xdp_failed.retain(|d, _| wanted.contains(d.as_str()) || Some(d) == underlay.as_ref());
        // Finding the underlay lists every device's addresses: only when a
        // device came or went, and on verify (which also sees an address move).
        let moved = if !(touched || verify || self.current.len() != before) {
            false
        } else {
            match self.reconcile_underlay(dp, desired) {
                Ok(moved) => moved,
                Err(e) => {
                    errors.push(format!("the underlay's XDP stage: {e:#}"));
                    false
                }
            }
        };
        let Some(pin_dir) = &self.pin_dir else { return errors };
        // The pin directories are listed when a device left, and on verify for what others left.
        if self.current.len() == before && !verify && !moved {
            return errors;
        }
        let egress: BTreeSet<&str> =
            desired.values().filter(|a| a.egress.is_some()).map(|a| a.device.as_str()).collect();
        for (ty, keep) in [(TcAttachType::Ingress, &wanted), (TcAttachType::Egress, &egress)] {
            if let Err(e) = detach_pinned(pin_dir, self.hook, ty, keep) {
                errors.push(format!("removing stale attachments: {e:#}"));
            }
        }
        let xdp: BTreeSet<&str> =
            self.xdp.iter().filter(|(_, s)| **s == XdpState::Native).map(|(d, _)| d.as_str()).collect();
        if let Err(e) = detach_xdp_except(pin_dir, &xdp) {
            errors.push(format!("removing stale XDP stages: {e:#}"));
        }
        // The hook changed (tc_hook, or a kernel upgrade): ours are in place now,
        // so the other hook's attachments can go.
        let other = match self.hook {
            Hook::Tcx => Hook::Netlink,
            Hook::Netlink => Hook::Tcx,
        };
        for ty in DIRECTIONS {
            if let Err(e) = detach_pinned(pin_dir, other, ty, &BTreeSet::new()) {
                errors.push(format!("removing attachments of the previous hook: {e:#}"));
            }
        }
        errors
    }

    /// Whether an attachment this process made is still in place. Between
    /// verifies it is trusted: a device that goes away leaves `desired`, and
    /// one created again gets a new ifindex (the kernel hands them out
    /// cyclically), so it is attached as new. On verify, tcx is queried (a
    /// syscall per device) and netlink filters, which aya cannot list, count
    /// as gone and are re-asserted, which replaces them atomically.
    fn still_attached(&self, att: &Attachment, verify: bool) -> bool {
        match self.hook {
            // Asking costs a syscall per device: only the periodic verify does.
            Hook::Tcx => {
                !verify
                    || DIRECTIONS.iter().all(|ty| match program_for(att, *ty) {
                        Some(p) => is_attached_tcx(&att.device, *ty, p).unwrap_or(false),
                        None => true,
                    })
            }
            Hook::Netlink => !verify,
        }
    }

    fn attach(
        &mut self,
        dp: &mut Datapath,
        program: &'static str,
        device: &str,
        ty: TcAttachType,
    ) -> Result<()> {
        let prog = dp.program(program)?;
        let at = At { program, device, ty };
        match self.hook {
            Hook::Tcx => self.attach_tcx(prog, &at),
            Hook::Netlink => self.attach_netlink(prog, &at),
        }
    }

    fn attach_tcx(&self, prog: &mut SchedClassifier, att: &At) -> Result<()> {
        let Some(dir) = self.pin_dir.as_ref().map(|d| hook_dir(d, self.hook, att.ty)) else {
            prog.attach_with_options(att.device, att.ty, tcx_append())
                .with_context(|| format!("tcx attach on {}", att.device))?;
            return Ok(());
        };
        let pin = dir.join(att.device);
        if pin.exists() {
            if is_attached_tcx(att.device, att.ty, att.program)? {
                // Our link is still there (agent restart or upgrade): swap in this
                // build's program atomically, without a moment of detachment.
                let old =
                    PinnedLink::from_pin(&pin).with_context(|| format!("opening pin {}", pin.display()))?;
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .context("pinned link is not a tcx link")?;
                let id = prog.attach_to_link(link).context("updating the link's program")?;
                // The pin keeps the link; dropping our handle only closes the fd.
                drop(prog.take_link(id)?);
                log::info!(
                    "{}: adopted the pinned link, now running this build's {}",
                    att.device,
                    att.program
                );
                return Ok(());
            }
            // The device was re-created: its old link died with it.
            log::info!("{}: pinned link is defunct, attaching anew", att.device);
            fs::remove_file(&pin).with_context(|| format!("removing defunct pin {}", pin.display()))?;
        }
        let id = prog
            .attach_with_options(att.device, att.ty, tcx_append())
            .with_context(|| format!("tcx attach on {}", att.device))?;
        let link: FdLink = prog.take_link(id)?.try_into().context("tcx link is not an fd link")?;
        link.pin(&pin).with_context(|| format!("pinning link at {}", pin.display()))?;
        Ok(())
    }

    fn attach_netlink(&self, prog: &mut SchedClassifier, att: &At) -> Result<()> {
        // EEXIST: the qdisc is there already (ours from before, or the operator's).
        if let Err(e) = tc::qdisc_add_clsact(att.device)
            && netlink_errno(&e) != Some(libc::EEXIST)
        {
            return Err(e)
                .with_context(|| format!("adding the clsact qdisc to {} (needs sch_ingress)", att.device));
        }
        // Replace first: atomic when our filter is there (restart, upgrade), and
        // ENOENT when it is not, which is when we create it.
        let existing =
            SchedClassifierLink::attached(att.device, att.ty, NETLINK_PRIORITY, NETLINK_HANDLE, None)
                .with_context(|| format!("looking up device {}", att.device))?;
        let id = match prog.attach_to_link(existing) {
            Ok(id) => {
                log::debug!("{}: cls_bpf filter now runs this build's {}", att.device, att.program);
                id
            }
            Err(ProgramError::TcError(e)) if netlink_errno(&e) == Some(libc::ENOENT) => prog
                .attach_with_options(
                    att.device,
                    att.ty,
                    TcAttachOptions::Netlink(NlOptions {
                        priority: NETLINK_PRIORITY,
                        handle: NETLINK_HANDLE,
                        ..Default::default()
                    }),
                )
                .with_context(|| format!("cls_bpf attach on {} (needs cls_bpf)", att.device))?,
            Err(e) => {
                return Err(e).with_context(|| format!("replacing the cls_bpf filter on {}", att.device));
            }
        };
        // Dropping the link would detach the filter; the filter must outlive us.
        std::mem::forget(prog.take_link(id)?);
        if let Some(dir) = self.pin_dir.as_ref().map(|d| hook_dir(d, self.hook, att.ty)) {
            let pin = dir.join(att.device);
            let _ = fs::remove_file(&pin);
            prog.pin(&pin).with_context(|| format!("pinning the program at {}", pin.display()))?;
        }
        Ok(())
    }
}

impl Attacher {
    /// Finds the device that holds `local_ip`, runs the underlay's stage
    /// there (unless it is an uplink, whose stage checks tunnel traffic
    /// itself) and tells the stage in `XDP_UNDERLAY`; removes what an earlier
    /// underlay had. Returns whether the underlay moved.
    fn reconcile_underlay(&mut self, dp: &mut Datapath, desired: &BTreeMap<u32, Attachment>) -> Result<bool> {
        let tunnel = desired.iter().find(|(_, a)| a.program == names::PROG_TUNNEL).map(|(i, _)| *i);
        let want = match (self.local_ip, tunnel) {
            (Some(ip), Some(tunnel_ifindex)) if self.xdp_choice != XdpChoice::Off => {
                crate::netlink::device_with_ipv4(ip)?.map(|(device, ifindex)| Underlay {
                    uplink: desired.get(&ifindex).is_some_and(|a| a.xdp.is_some()),
                    device,
                    ifindex,
                    info: UnderlayInfo { tunnel_ifindex, local_ipv4: u32::from(ip) },
                })
            }
            _ => None,
        };
        if want == self.underlay && want.as_ref().is_none_or(|u| u.uplink || self.xdp.contains_key(&u.device))
        {
            return Ok(false);
        }
        if let Some(old) = self.underlay.take() {
            match dp.maps.xdp_underlay.remove(&old.ifindex) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("removing the old underlay from XDP_UNDERLAY"),
            }
            if !old.uplink && want.as_ref().is_none_or(|u| u.device != old.device) {
                self.xdp.remove(&old.device);
                self.xdp_failed.remove(&old.device);
                if let Some(pin_dir) = &self.pin_dir {
                    detach_xdp(pin_dir, &old.device)?;
                }
            }
        }
        let Some(u) = want else { return Ok(true) };
        if !u.uplink
            && let Err(e) = self.stage(dp, names::PROG_UNDERLAY_XDP, &u.device)
        {
            self.underlay = Some(u);
            return Err(e);
        }
        dp.maps.xdp_underlay.insert(u.ifindex, u.info, 0).context("writing XDP_UNDERLAY")?;
        self.underlay = Some(u);
        Ok(true)
    }

    /// Runs the XDP stage `program` on `device` (`attach_xdp`) and records where it runs, or why not.
    fn stage(&mut self, dp: &mut Datapath, program: &'static str, device: &str) -> Result<()> {
        match self.attach_xdp(dp, program, device) {
            Ok(state) => {
                if self.xdp.get(device) != Some(&state) {
                    log::info!("{device}: XDP stage ({program}) {state}");
                }
                self.xdp.insert(device.to_string(), state);
                self.xdp_failed.remove(device);
                Ok(())
            }
            Err(e) => {
                self.xdp_failed.insert(device.to_string(), format!("{e:#}"));
                Err(e)
            }
        }
    }

    /// Puts the device of `att` into `XDP_TAPS` when the fast path may use
    /// it (a bound port, a tun, `xdp` not off), and takes it out otherwise.
    fn set_tap(&mut self, dp: &mut Datapath, ifindex: u32, att: &Attachment) -> Result<()> {
        let want = self.xdp_choice != XdpChoice::Off
            && att.egress.is_some()
            && ethtool::driver(&att.device).is_ok_and(|d| d == "tun");
        if want {
            dp.maps
                .xdp_taps
                .insert(ifindex, ifindex, None, 0)
                .with_context(|| format!("adding ifindex {ifindex} to {}", names::XDP_TAPS))?;
            self.taps.insert(ifindex);
        } else if self.taps.remove(&ifindex) || self.xdp_choice == XdpChoice::Off {
            untap(dp, ifindex)?;
        }
        Ok(())
    }

    /// Removes from `XDP_TAPS` what an earlier agent left there and this one did not put.
    fn prune_taps(&self, dp: &mut Datapath) -> Result<()> {
        let keys: Vec<u32> = dp.maps.xdp_taps.keys().collect::<Result<_, _>>().context("listing XDP_TAPS")?;
        for key in keys.into_iter().filter(|k| !self.taps.contains(k)) {
            untap(dp, key)?;
        }
        Ok(())
    }

    /// Runs the XDP stage `program` on uplink `device` where the config
    /// wants it and the driver has it: the state it ends in, or (with
    /// `xdp = "native"`) why it cannot.
    fn attach_xdp(&self, dp: &mut Datapath, program: &'static str, device: &str) -> Result<XdpState> {
        if self.xdp_choice == XdpChoice::Auto
            && let Some(why) = auto_skips(device)
        {
            if let Some(pin_dir) = &self.pin_dir {
                detach_xdp(pin_dir, device)?;
            }
            return Ok(XdpState::TcOnly(why));
        }
        match self.try_attach_xdp(dp, program, device) {
            Ok(()) => Ok(XdpState::Native),
            Err(e) if self.xdp_choice == XdpChoice::Auto => {
                if let Some(pin_dir) = &self.pin_dir {
                    detach_xdp(pin_dir, device)?;
                }
                Ok(XdpState::TcOnly(format!("{e:#}")))
            }
            Err(e) => Err(e.context(format!("xdp = \"native\", but {device} cannot run it"))),
        }
    }

    fn try_attach_xdp(&self, dp: &mut Datapath, program: &'static str, device: &str) -> Result<()> {
        if ethtool::rx_vlan_offload(device)? {
            ethtool::set_rx_vlan_offload(device, false)?;
            if let Some(pin_dir) = &self.pin_dir {
                let mark = pin_dir.join(XDP_RXVLAN).join(device);
                fs::create_dir_all(&mark).with_context(|| format!("creating {}", mark.display()))?;
            }
            log::info!("{device}: rx VLAN offload off while the XDP stage runs (on again when it goes)");
        }
        let prog = dp.xdp_program(program)?;
        let Some(pin_dir) = &self.pin_dir else {
            prog.attach(device, XdpMode::Driver).with_context(|| format!("native XDP attach on {device}"))?;
            return Ok(());
        };
        let pin = pin_dir.join(XDP_LINKS).join(device);
        if pin.exists() {
            let old = PinnedLink::from_pin(&pin).with_context(|| format!("opening pin {}", pin.display()))?;
            let link = XdpLink::try_from(FdLink::from(old)).context("pinned link is not an XDP link")?;
            match prog.attach_to_link(link) {
                Ok(id) => {
                    // The pin keeps the link; dropping our handle only closes the fd.
                    drop(prog.take_link(id)?);
                    log::info!("{device}: adopted the pinned XDP link, now running this build's {program}");
                    return Ok(());
                }
                // The device was re-created: its old link died with it.
                Err(e) => {
                    log::info!("{device}: pinned XDP link is defunct ({e}), attaching anew");
                    fs::remove_file(&pin)
                        .with_context(|| format!("removing defunct pin {}", pin.display()))?;
                }
            }
        }
        let id =
            prog.attach(device, XdpMode::Driver).with_context(|| format!("native XDP attach on {device}"))?;
        let link: FdLink = prog
            .take_link(id)?
            .try_into()
            .context("the kernel attached XDP through netlink, not a bpf_link (Linux 5.9+ is needed)")?;
        link.pin(&pin).with_context(|| format!("pinning the XDP link at {}", pin.display()))?;
        Ok(())
    }
}

/// Takes `ifindex` out of `XDP_TAPS`. Not found is fine: a deleted device
/// leaves the map with it (the kernel's notifier).
fn untap(dp: &mut Datapath, ifindex: u32) -> Result<()> {
    match dp.maps.xdp_taps.remove(ifindex) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing ifindex {ifindex} from {}", names::XDP_TAPS)),
    }
}

/// Why `xdp = "auto"` leaves `device` on the TC stage alone, if it does.
fn auto_skips(device: &str) -> Option<String> {
    match ethtool::driver(device) {
        // docs/architecture.md, "The XDP stage".
        Ok(d) if d == "veth" => Some("veth: xdp = \"native\" forces it".into()),
        Ok(_) => None,
        Err(e) => Some(format!("{e:#}")),
    }
}

/// Removes the XDP stage of `device`, and turns its rx VLAN offload back on
/// if the agent turned it off.
fn detach_xdp(pin_dir: &Path, device: &str) -> Result<()> {
    let pin = pin_dir.join(XDP_LINKS).join(device);
    if pin.exists() {
        unpin_link(&pin)?;
    }
    let mark = pin_dir.join(XDP_RXVLAN).join(device);
    if mark.exists() {
        if device_exists(device) {
            ethtool::set_rx_vlan_offload(device, true)?;
            log::info!("{device}: rx VLAN offload on again");
        }
        fs::remove_dir(&mark).with_context(|| format!("removing {}", mark.display()))?;
    }
    Ok(())
}

/// Removes the XDP stage of every device pinned under `pin_dir` but those in `keep`.
fn detach_xdp_except(pin_dir: &Path, keep: &BTreeSet<&str>) -> Result<()> {
    let mut devices = BTreeSet::new();
    for dir in [XDP_LINKS, XDP_RXVLAN] {
        match fs::read_dir(pin_dir.join(dir)) {
            Ok(entries) => {
                for e in entries {
                    devices.insert(e?.file_name().to_string_lossy().into_owned());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("listing {}", pin_dir.join(dir).display())),
        }
    }
    for d in devices.iter().filter(|d| !keep.contains(d.as_str())) {
        detach_xdp(pin_dir, d)?;
    }
    Ok(())
}

/// One program on one device in one direction.
struct At<'a> {
    program: &'static str,
    device: &'a str,
    ty: TcAttachType,
}

/// Removes the attachment of `hook` in direction `ty` pinned for `device`, if any.
fn detach_one(pin_dir: &Path, hook: Hook, ty: TcAttachType, device: &str) -> Result<()> {
    let path = hook_dir(pin_dir, hook, ty).join(device);
    if !path.exists() {
        return Ok(());
    }
    match hook {
        Hook::Tcx => unpin_link(&path),
        Hook::Netlink => remove_filter(&path, device, ty),
    }
}

/// Removes every attachment of `hook` in direction `ty` pinned under
/// `pin_dir` whose device is not in `keep`.
fn detach_pinned(pin_dir: &Path, hook: Hook, ty: TcAttachType, keep: &BTreeSet<&str>) -> Result<()> {
    let dir = hook_dir(pin_dir, hook, ty);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if keep.contains(name.as_str()) {
            continue;
        }
        match hook {
            Hook::Tcx => unpin_link(&entry.path())?,
            Hook::Netlink => remove_filter(&entry.path(), &name, ty)?,
        }
    }
    Ok(())
}

/// Removes everything an agent attached under `pin_dir`, with either hook.
pub fn detach_all(pin_dir: &Path) -> Result<()> {
    for hook in [Hook::Tcx, Hook::Netlink] {
        for ty in DIRECTIONS {
            detach_pinned(pin_dir, hook, ty, &BTreeSet::new())?;
        }
    }
    detach_xdp_except(pin_dir, &BTreeSet::new())
}

fn tcx_append() -> TcAttachOptions {
    TcAttachOptions::TcxOrder(LinkOrder::default())
}

fn netlink_errno(e: &tc::TcError) -> Option<i32> {
    match e {
        tc::TcError::NetlinkError(n) => n.raw_os_error(),
        _ => None,
    }
}

/// Whether `program` is attached on `device`'s tcx hook in direction `ty`.
fn is_attached_tcx(device: &str, ty: TcAttachType, program: &str) -> Result<bool> {
    let (_, progs) = match SchedClassifier::query_tcx(device, ty) {
        Ok(r) => r,
        // The device is gone: nothing is attached.
        Err(_) if !device_exists(device) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("querying tcx on {device}")),
    };
    Ok(progs.iter().any(|p| p.name_as_str() == Some(program)))
}

fn device_exists(name: &str) -> bool {
    std::ffi::CString::new(name).is_ok_and(|c| {
        // SAFETY: c is a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    })
}

/// Removes a link pin, which detaches the link if nothing else holds it.
fn unpin_link(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?,
    }
    Ok(())
}

/// Removes our cls_bpf filters in direction `ty` from `device` (if it still
/// exists) and the pin at `path` that recorded them.
fn remove_filter(path: &Path, device: &str, ty: TcAttachType) -> Result<()> {
    if device_exists(device) {
        for name in names::ALL_PROGRAMS {
            match tc::qdisc_detach_program(device, ty, name) {
                Ok(()) => {}
                Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
                // No clsact qdisc (removed by hand): no filter of ours either.
                Err(e) if matches!(netlink_errno(&e), Some(libc::EINVAL | libc::ENOENT)) => {}
                Err(e) => return Err(e).with_context(|| format!("detaching {name} from {device}")),
            }
        }
    }
    fs::remove_file(path).with_context(|| format!("removing {}", path.display()))
}
