//! The agent's side of `datapath monitor`: who listens, what the programs
//! must report (`MONITOR`), and the events from the ring buffer, decoded and
//! sent to each listener that wants them.
//!
//! With no listener `MONITOR` is all zero and the programs send nothing.
//! Every listener gets the drops it asked for (a port, a reason); one at a
//! time may follow every decision at one port.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use datapath_common::{
    Action, DropReason, MONITOR_F_DECISIONS, MONITOR_F_DROPS, MONITOR_SNAP, MonitorConfig, MonitorEvent,
    names,
};
use tokio::{io::unix::AsyncFd, sync::mpsc};

use crate::{
    api::{MonitorEventRow, MonitorLine},
    synced::Maps,
};

/// One listener: what it follows, and where its lines go.
#[derive(Debug)]
pub struct Listener {
    /// The port (its device's ifindex, or a subport's id), or None for every port.
    pub ifindex: Option<u32>,
    /// The device whose decisions the programs report for it: the port's
    /// own, or a subport's parent tap (events are then told apart by port).
    pub device: Option<u32>,
    /// The drop reason's label, or None for every reason.
    pub reason: Option<String>,
    /// Every decision at `ifindex`, not only the drops.
    pub decisions: bool,
    pub lines: mpsc::Sender<String>,
    /// Lines dropped because the client was slow.
    lagged: u64,
    /// The kernel's suppressed count when the listener came, and the last one it was told.
    kernel_base: u64,
    told: (u64, u64),
}

/// Where an event happened, as the agent knows it.
#[derive(Debug, Clone, Default)]
pub struct Place {
    pub device: String,
    pub port_id: String,
    pub network: String,
}

/// The listeners and the ring buffer.
pub struct Monitor {
    listeners: Vec<Listener>,
    ring: Option<AsyncFd<RingBuf<MapData>>>,
    /// Unix time minus the monotonic clock, in ns: the events carry the latter.
    epoch_offset_ns: i128,
    last_tick: Instant,
}

impl Monitor {
    /// Reads events from `ring` (None: this datapath has no ring buffer to read).
    pub fn new(ring: Option<RingBuf<MapData>>) -> Result<Self> {
        let ring = ring
            // SAFETY: the ring buffer owns its fd, and the AsyncFd owns the ring
            // buffer: the fd stays open for as long as it is registered.
            .map(|r| unsafe { AsyncFd::register(r) }.map_err(|e| e.into_parts().1))
            .transpose()
            .context("watching the MONITOR_EVENTS ring buffer")?;
        Ok(Self {
            listeners: Vec::new(),
            ring,
            epoch_offset_ns: epoch_offset_ns(),
            last_tick: Instant::now(),
        })
    }

    /// Whether anyone listens.
    pub fn active(&self) -> bool {
        !self.listeners.is_empty()
    }

    /// How many listen.
    pub fn listeners(&self) -> usize {
        self.listeners.len()
    }

    /// Adds a listener, unless it asks for the decisions of a port while
    /// another listener follows another port's: the programs follow one.
    pub fn add(&mut self, maps: &mut Maps, listener: Listener) -> Result<(), String> {
        if listener.decisions
            && let Some(other) = self.listeners.iter().find(|l| l.decisions && l.device != listener.device)
        {
            return Err(format!(
                "another monitor follows every decision of ifindex {}; one port at a time can be followed",
                other.ifindex.unwrap_or(0)
            ));
        }
        self.listeners.push(listener);
        self.configure(maps).map_err(|e| format!("{e:#}"))
    }

    /// A listener for port `ifindex` on `device` (see [`Listener`]) and
    /// `reason`, sending to `lines`, counting suppression from `kernel_now`.
    pub fn listener(
        (ifindex, device): (Option<u32>, Option<u32>),
        reason: Option<String>,
        decisions: bool,
        lines: mpsc::Sender<String>,
        kernel_now: u64,
    ) -> Listener {
        Listener {
            ifindex,
            device,
            reason,
            decisions,
            lines,
            lagged: 0,
            kernel_base: kernel_now,
            told: (0, 0),
        }
    }

    /// Writes what the listeners want into `MONITOR`: zero when nobody listens.
    fn configure(&self, maps: &mut Maps) -> Result<()> {
        let mut cfg = MonitorConfig { flags: 0, ifindex: 0 };
        if !self.listeners.is_empty() {
            cfg.flags |= MONITOR_F_DROPS;
        }
        if let Some(l) = self.listeners.iter().find(|l| l.decisions) {
            cfg.flags |= MONITOR_F_DECISIONS;
            cfg.ifindex = l.device.unwrap_or(0);
        }
        maps.monitor.set(0, cfg, 0).context("writing MONITOR")
    }

    /// Waits until the ring buffer has events (forever without one, or without listeners).
    pub async fn readable(&self) {
        match (&self.ring, self.active()) {
            (Some(ring), true) => {
                if let Ok(mut guard) = ring.readable().await {
                    // Events are drained by `drain`; the next wait starts afresh.
                    guard.clear_ready();
                }
            }
            _ => std::future::pending().await,
        }
    }

    /// Takes every waiting event and sends it to the listeners that want it;
    /// `locate` says whose it is: the port (the device, or a subport on it:
    /// the event's counter slot tells) and where that is.
    pub fn drain(&mut self, locate: impl Fn(&MonitorEvent) -> (u32, Place)) {
        let Some(ring) = &mut self.ring else { return };
        let ring = ring.get_mut();
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            // Read unaligned: whatever the ring's alignment, a bad record must not panic the agent.
            if item.len() >= size_of::<MonitorEvent>() {
                events.push(bytemuck::pod_read_unaligned::<MonitorEvent>(&item[..size_of::<MonitorEvent>()]));
            }
        }
        for ev in events {
            let (port, place) = locate(&ev);
            let row = row(&ev, &place, self.epoch_offset_ns);
            let Ok(text) = serde_json::to_string(&MonitorLine::Event(row.clone())) else { continue };
            for l in &mut self.listeners {
                if wants(l, port, &ev, &row) && l.lines.try_send(text.clone()).is_err() {
                    l.lagged += 1;
                }
            }
        }
    }

    /// Once a second: drops the listeners that went, and tells the others what
    /// was suppressed since they came (`kernel_now`: the kernel's total).
    pub fn tick(&mut self, maps: &mut Maps, kernel_now: u64) -> Result<()> {
        if self.last_tick.elapsed().as_millis() < 1000 {
            return Ok(());
        }
        self.last_tick = Instant::now();
        let before = self.listeners.len();
        self.listeners.retain(|l| !l.lines.is_closed());
        for l in &mut self.listeners {
            let now = (kernel_now.saturating_sub(l.kernel_base), l.lagged);
            if now != l.told {
                let line = MonitorLine::Suppressed { kernel: now.0, client: now.1 };
                if let Ok(text) = serde_json::to_string(&line)
                    && l.lines.try_send(text).is_ok()
                {
                    l.told = now;
                }
            }
        }
        if self.listeners.len() != before {
            self.configure(maps)?;
        }
        Ok(())
    }
}

/// The kernel's suppressed events, summed over CPUs.
pub fn suppressed(maps: &Maps) -> Result<u64> {
    let per_cpu = maps.monitor_rate.get(&0, 0).context("reading MONITOR_RATE")?;
    Ok(per_cpu.iter().map(|r| r.suppressed).sum())
}

/// Whether `l` wants event `ev` of port `port`.
fn wants(l: &Listener, port: u32, ev: &MonitorEvent, row: &MonitorEventRow) -> bool {
    if l.ifindex.is_some_and(|i| i != port) {
        return false;
    }
    if ev.reason == 0 {
        // A decision: for the listener that follows this port's decisions.
        return l.decisions;
    }
    l.reason.as_deref().is_none_or(|r| row.reason.as_deref() == Some(r))
}

/// The event as the stream shows it.
pub fn row(ev: &MonitorEvent, place: &Place, epoch_offset_ns: i128) -> MonitorEventRow {
    let snap = &ev.snap[..(ev.snap_len as usize).min(MONITOR_SNAP)];
    let dropped = ev.reason != 0;
    MonitorEventRow {
        time_ns: u64::try_from(i128::from(ev.ts_ns) + epoch_offset_ns).unwrap_or(0),
        device: place.device.clone(),
        port_id: place.port_id.clone(),
        network: place.network.clone(),
        program: names::ALL_PROGRAMS.get(ev.program as usize).copied().unwrap_or("?").to_string(),
        verdict: if dropped { "drop" } else { "forward" }.into(),
        reason: dropped.then(|| DropReason::from_index(ev.reason).map_or("?", |r| r.label()).to_string()),
        action: (!dropped).then(|| Action::from_index(ev.action).map_or("?", |a| a.label()).to_string()),
        len: ev.len,
        frame: snap.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` reads), in ns.
fn epoch_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills the timespec it is given.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

/// The labels a `--reason` filter may name.
pub fn reason_labels() -> BTreeMap<&'static str, DropReason> {
    DropReason::ALL.iter().map(|r| (r.label(), *r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(reason: u32, action: u32, ifindex: u32) -> MonitorEvent {
        let mut snap = [0u8; MONITOR_SNAP];
        snap[..4].copy_from_slice(&[0xfa, 0x16, 0x3e, 0x01]);
        MonitorEvent {
            ts_ns: 5_000_000_000,
            ifindex,
            slot: 3,
            reason,
            action,
            len: 60,
            snap_len: 4,
            program: names::PROG_INDEX_VM_PORT,
            net_index: 1,
            snap,
        }
    }

    fn listener(ifindex: Option<u32>, reason: Option<&str>, decisions: bool) -> Listener {
        let (tx, _rx) = mpsc::channel(1);
        Monitor::listener((ifindex, ifindex), reason.map(str::to_owned), decisions, tx, 0)
    }

    #[test]
    fn an_event_row_names_the_program_reason_and_frame() {
        let place = Place { device: "tapa".into(), port_id: "a0".into(), network: "n1".into() };
        let r = row(&event(DropReason::SrcMacSpoof as u32, 0, 7), &place, 1_000);
        assert_eq!(r.time_ns, 5_000_001_000);
        assert_eq!((r.program.as_str(), r.verdict.as_str()), ("vm_port", "drop"));
        assert_eq!(r.reason.as_deref(), Some("src_mac_spoof"));
        assert_eq!(r.action, None);
        assert_eq!((r.len, r.frame.as_str()), (60, "fa163e01"));
        let f = row(&event(0, Action::ToUplink as u32, 7), &place, 0);
        assert_eq!((f.verdict.as_str(), f.action.as_deref()), ("forward", Some("to_uplink")));
    }

    #[test]
    fn listeners_get_the_drops_of_their_port_and_reason_and_decisions_on_request() {
        let place = Place::default();
        let drop7 = event(DropReason::SrcMacSpoof as u32, 0, 7);
        let fwd7 = event(0, Action::ToUplink as u32, 7);
        let drop8 = event(DropReason::ArpSpoof as u32, 0, 8);
        let r = |e: &MonitorEvent| row(e, &place, 0);
        let wants = |l: &Listener, e: &MonitorEvent| wants(l, e.ifindex, e, &r(e));
        let all = listener(None, None, false);
        assert!(wants(&all, &drop7) && wants(&all, &drop8));
        assert!(!wants(&all, &fwd7), "decisions only on request");
        let port7 = listener(Some(7), None, true);
        assert!(wants(&port7, &drop7) && wants(&port7, &fwd7));
        assert!(!wants(&port7, &drop8));
        let arp = listener(None, Some("arp_spoof"), false);
        assert!(!wants(&arp, &drop7) && wants(&arp, &drop8));
    }

    /// A subport's events happen on its parent's tap: they are its by port
    /// (the agent tells them apart by counter slot), not by device.
    #[test]
    fn a_subports_listener_follows_its_parents_tap_and_gets_the_subports_events_only() {
        const SUB: u32 = datapath_common::SUBPORT_ID_BASE + 1;
        let place = Place::default();
        let (tx, _rx) = mpsc::channel(1);
        let sub = Monitor::listener((Some(SUB), Some(7)), None, true, tx, 0);
        let parent = listener(Some(7), None, true);
        let fwd = event(0, Action::ToUplink as u32, 7);
        let r = row(&fwd, &place, 0);
        assert!(wants(&sub, SUB, &fwd, &r) && !wants(&sub, 7, &fwd, &r));
        assert!(wants(&parent, 7, &fwd, &r) && !wants(&parent, SUB, &fwd, &r));
        // Both follow one device's decisions: the programs can report them together.
        assert_eq!(sub.device, parent.device);
    }
}
