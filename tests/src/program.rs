//! The program-test bench: the real programs, loaded with private maps,
//! seeded by the agent's own derive + sync from a bindings document, and run
//! on golden frames through `BPF_PROG_TEST_RUN` in a private namespace whose
//! veth devices stand in for taps and the uplink.

use anyhow::{Context, Result, bail};
use aya::maps::PerCpuValues;
use datapath_common::{ACTION_SLOTS, DROP_REASON_SLOTS, PortCounters, TRACE_MAGIC, TraceRecord};
use datapath_user::{
    bindings::Bindings,
    config::Config,
    desired::{self, Allocations, Derived},
    loader::Datapath,
    netlink::Devices,
    sync,
    synced::summed,
    testrun::{self, SkbRun},
};

use crate::{
    netns::{Netns, ThreadNetns},
    raw,
};

/// Derives the desired maps from `config` + `bindings` and syncs the kernel maps to them.
fn seed(dp: &mut Datapath, devices: &Devices, config: &str, bindings: &str) -> Result<Derived> {
    let cfg = Config::parse_str(config, "test config")?;
    let b = Bindings::parse_str(bindings, "test bindings")?;
    if !b.refused.is_empty() {
        bail!("test bindings refused entries: {:?}", b.refused);
    }
    let derived = desired::derive(&cfg, &b, devices, &mut Allocations::default());
    let diff = sync::diff(&derived.state, &sync::read_state(&dp.maps)?);
    let errors = sync::apply(&mut dp.maps, &diff);
    if !errors.is_empty() {
        bail!("seeding maps: {errors:?}");
    }
    Ok(derived)
}

/// What one run of a program did.
#[derive(Debug)]
pub struct Outcome {
    /// The verdict (TC: 2 = shot, 7 = redirect; XDP: 1 = drop, 2 = pass).
    pub retval: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// The decision record (traced runs only).
    pub trace: Option<TraceRecord>,
    /// Counter changes of the ingress port's slot during the run.
    pub drops: [u64; DROP_REASON_SLOTS],
    pub actions: [u64; ACTION_SLOTS],
}

/// A loaded datapath in a private namespace, seeded from bindings.
pub struct Bench {
    // Fields drop in order: leave the namespace first, delete it last.
    _enter: ThreadNetns,
    pub dp: Datapath,
    pub devices: Devices,
    pub derived: Derived,
    pub ns: Netns,
    /// The next run is a dry one (`run_dry`).
    dry: bool,
}

impl Bench {
    /// Creates `devices` (each a veth whose peer is `<name>p`, all up) in a new
    /// namespace, loads the programs, and seeds the maps from `config` + `bindings`.
    pub fn new(config: &str, bindings: &str, devices: &[&str]) -> Result<Self> {
        Self::with_taps(config, bindings, devices, &[])
    }

    /// Like `new`, with tap devices `taps` (tun, as a VM's) besides the veths `devices`.
    pub fn with_taps(config: &str, bindings: &str, devices: &[&str], taps: &[&str]) -> Result<Self> {
        let ns = Netns::new("prog")?;
        for tap in taps {
            ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"])?;
            ns.exec(&["ip", "link", "set", tap, "up"])?;
        }
        // No IPv6 autoconfiguration noise (MLD, RS) on the devices: the flood test counts frames.
        for key in ["all", "default"] {
            ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.{key}.disable_ipv6=1")])?;
        }
        for (i, dev) in devices.iter().enumerate() {
            let peer = format!("peer{i}");
            ns.exec(&["ip", "link", "add", dev, "type", "veth", "peer", "name", &peer])?;
            ns.exec(&["ip", "link", "set", dev, "up"])?;
            ns.exec(&["ip", "link", "set", &peer, "up"])?;
        }
        let enter = ThreadNetns::enter(&ns)?;
        let mut dp = Datapath::load_private()?;
        let devices = datapath_user::netlink::list_devices()?;
        let derived = seed(&mut dp, &devices, config, bindings)?;
        Ok(Self { _enter: enter, dp, devices, derived, ns, dry: false })
    }

    /// Re-seeds the maps from another bindings document, as an agent's
    /// reconcile would (learned MACs and counters stay).
    pub fn reseed(&mut self, config: &str, bindings: &str) -> Result<()> {
        self.derived = seed(&mut self.dp, &self.devices, config, bindings)?;
        Ok(())
    }

    /// The ifindex of a device of the bench.
    pub fn ifindex(&self, name: &str) -> u32 {
        *self.devices.get(name).unwrap_or_else(|| panic!("no device {name} in the bench"))
    }

    /// The device name of an ifindex (for readable assertions).
    pub fn name_of(&self, ifindex: u32) -> String {
        self.devices
            .iter()
            .find(|(_, i)| **i == ifindex)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("ifindex {ifindex}"))
    }

    fn slot(&self, ifindex: u32) -> u32 {
        self.derived.state.ports.get(&ifindex).map(|p| p.stats_slot).unwrap_or(0)
    }

    /// The counters of stats slot `slot`, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<PortCounters> {
        summed(&self.dp.maps.port_stats, slot).context("reading PORT_STATS")
    }

    /// Runs program `prog` on `frame` as if it arrived on device `ingress`.
    /// A traced run records its decision and sends no copies.
    pub fn run(&mut self, prog: &str, ingress: &str, frame: &[u8], traced: bool) -> Result<Outcome> {
        self.run_with(prog, ingress, frame, traced, None)
    }

    /// Runs `prog` as `datapath trace` does: traced, and changing nothing (no
    /// counter, no learning, no copy, no monitor event).
    pub fn run_dry(&mut self, prog: &str, ingress: &str, frame: &[u8]) -> Result<Outcome> {
        self.dry = true;
        let out = self.run_with(prog, ingress, frame, true, None);
        self.dry = false;
        out
    }

    /// Runs `tunnel_in` (traced) on `frame` as if the VXLAN device `ingress`
    /// had decapsulated it from `vtep` with `vni`, through the program's trace
    /// hook (`BPF_PROG_TEST_RUN` cannot attach tunnel metadata).
    pub fn run_tunnel(
        &mut self,
        ingress: &str,
        frame: &[u8],
        vni: u32,
        vtep: std::net::Ipv4Addr,
    ) -> Result<Outcome> {
        self.run_with(datapath_common::names::PROG_TUNNEL, ingress, frame, true, Some((vni, u32::from(vtep))))
    }

    fn run_with(
        &mut self,
        prog: &str,
        ingress: &str,
        frame: &[u8],
        traced: bool,
        tunnel: Option<(u32, u32)>,
    ) -> Result<Outcome> {
        let ifindex = self.ifindex(ingress);
        let slot = self.slot(ifindex);
        let before = self.counters(slot)?;
        self.clear_trace()?;
        let mut cb = [0u32; 5];
        if traced {
            cb[0] = TRACE_MAGIC[0];
            cb[1] = TRACE_MAGIC[1];
        }
        if self.dry {
            cb[2] = datapath_common::TRACE_DRY_RUN;
        }
        if let Some((vni, vtep)) = tunnel {
            cb[3] = vni;
            cb[4] = vtep;
        }
        let out = {
            let prog = self.dp.program(prog)?;
            testrun::run_prog(prog, &SkbRun { frame, ifindex, cb, mark: 0 })?
        };
        let trace = if traced {
            let per_cpu = self.dp.maps.trace.get(&0, 0).context("reading TRACE")?;
            per_cpu.iter().find(|r| r.valid == 1).copied()
        } else {
            None
        };
        let after = self.counters(slot)?;
        let moved = after.since(&before);
        Ok(Outcome {
            retval: out.retval,
            frame: out.frame,
            trace,
            drops: moved.drops,
            actions: moved.actions,
        })
    }

    /// Runs the XDP program `prog` on `frame` as if it arrived on device
    /// `ingress`. The counters are the XDP stage's (`XDP_STATS`).
    pub fn run_xdp(&mut self, prog: &str, ingress: &str, frame: &[u8]) -> Result<Outcome> {
        self.run_xdp_counted_at(prog, ingress, ingress, frame)
    }

    /// `run_xdp`, with the counters of the port on `counted_at` (the
    /// underlay's stage counts under the VXLAN device).
    pub fn run_xdp_counted_at(
        &mut self,
        prog: &str,
        ingress: &str,
        counted_at: &str,
        frame: &[u8],
    ) -> Result<Outcome> {
        let ifindex = self.ifindex(ingress);
        let slot = self.slot(self.ifindex(counted_at));
        let before = self.xdp_counters(slot)?;
        let out = testrun::run_xdp(self.dp.xdp_program(prog)?, frame, ifindex, &[])?;
        let moved = self.xdp_counters(slot)?.since(&before);
        Ok(Outcome {
            retval: out.retval,
            frame: out.frame,
            trace: None,
            drops: moved.drops,
            actions: moved.actions,
        })
    }

    /// Runs the XDP program `prog` as `datapath trace` does: traced and dry
    /// (the trace request rides in the frame's metadata).
    pub fn run_xdp_dry(&mut self, prog: &str, ingress: &str, frame: &[u8]) -> Result<Outcome> {
        use datapath_common::TRACE_DRY_RUN;
        let ifindex = self.ifindex(ingress);
        let slot = self.slot(ifindex);
        let before = self.xdp_counters(slot)?;
        self.clear_trace()?;
        let meta: Vec<u8> =
            [TRACE_MAGIC[0], TRACE_MAGIC[1], TRACE_DRY_RUN].iter().flat_map(|w| w.to_ne_bytes()).collect();
        let out = testrun::run_xdp(self.dp.xdp_program(prog)?, frame, ifindex, &meta)?;
        let per_cpu = self.dp.maps.trace.get(&0, 0).context("reading TRACE")?;
        let moved = self.xdp_counters(slot)?.since(&before);
        Ok(Outcome {
            retval: out.retval,
            frame: out.frame,
            trace: per_cpu.iter().find(|r| r.valid == 1).copied(),
            drops: moved.drops,
            actions: moved.actions,
        })
    }

    fn clear_trace(&mut self) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zero = PerCpuValues::try_from(vec![bytemuck::Zeroable::zeroed(); cpus])?;
        self.dp.maps.trace.set(0, zero, 0).context("clearing TRACE")
    }

    /// Puts `dev` into `XDP_TAPS`, as the agent's attacher does for the bound taps.
    pub fn allow_xdp_tap(&mut self, dev: &str) -> Result<()> {
        let ifindex = self.ifindex(dev);
        self.dp
            .maps
            .xdp_taps
            .insert(ifindex, ifindex, None, 0)
            .with_context(|| format!("adding {dev} to XDP_TAPS"))
    }

    /// Tells the underlay's XDP stage that `dev` holds `local_ip`, for the
    /// tunnel device `tunnel`, as the agent's attacher does.
    pub fn set_underlay(&mut self, dev: &str, tunnel: &str, local_ip: std::net::Ipv4Addr) -> Result<()> {
        let info = datapath_common::UnderlayInfo {
            tunnel_ifindex: self.ifindex(tunnel),
            local_ipv4: u32::from(local_ip),
        };
        let ifindex = self.ifindex(dev);
        self.dp.maps.xdp_underlay.insert(ifindex, info, 0).context("writing XDP_UNDERLAY")
    }

    /// The XDP stage's counters of stats slot `slot`, summed over CPUs.
    pub fn xdp_counters(&self, slot: u32) -> Result<PortCounters> {
        summed(&self.dp.maps.xdp_stats, slot).context("reading XDP_STATS")
    }

    /// Attaches `prog` for real to the ingress of `dev` (the link lives as long as the bench).
    pub fn attach(&mut self, prog: &str, dev: &str) -> Result<()> {
        let p = self.dp.program(prog)?;
        // Kernels without tcx attach through a cls_bpf filter, which needs the clsact
        // qdisc; where tcx exists the qdisc is unused, and EEXIST means it is there.
        let _ = aya::programs::tc::qdisc_add_clsact(dev);
        p.attach(dev, aya::programs::TcAttachType::Ingress)
            .with_context(|| format!("attaching {prog} to {dev}"))?;
        Ok(())
    }

    /// Sends `frame` out of `dev` with an AF_PACKET socket, as a VM or a wire would.
    pub fn inject(&self, dev: &str, frame: &[u8]) -> Result<()> {
        raw::send(dev, frame)
    }

    /// Counters of the port on `dev`, summed over CPUs.
    pub fn port_counters(&self, dev: &str) -> Result<PortCounters> {
        self.counters(self.slot(self.ifindex(dev)))
    }

    /// Targets of a traced outcome as (device, VLAN, VTEP, VNI), sorted.
    pub fn tunnel_targets(&self, o: &Outcome) -> Vec<(String, u32, std::net::Ipv4Addr, u32)> {
        let Some(t) = &o.trace else { return Vec::new() };
        let mut v: Vec<_> = t.targets[..t.target_count as usize]
            .iter()
            .map(|x| (self.name_of(x.ifindex), x.vlan, std::net::Ipv4Addr::from(x.vtep_ipv4), x.vni))
            .collect();
        v.sort();
        v
    }

    /// Targets of a traced outcome as (device name, vlan), sorted.
    pub fn targets(&self, o: &Outcome) -> Vec<(String, u32)> {
        let Some(t) = &o.trace else { return Vec::new() };
        let mut v: Vec<(String, u32)> =
            t.targets[..t.target_count as usize].iter().map(|x| (self.name_of(x.ifindex), x.vlan)).collect();
        v.sort();
        v
    }
}
