//! Map sync: read what the kernel holds, diff it against the desired state
//! (a pure function), and apply the diff entry by entry.
//!
//! Order matters while traffic flows: additions go in dependency order
//! (networks before the ports that point at them), removals in reverse (ports
//! first), so a program never follows a reference to a missing entry.

use std::time::{Duration, Instant};

use anyhow::Result;
use aya::maps::{MapData, MapError, PerCpuArray, PerCpuValues};
use datapath_common::PortCounters;

pub use crate::synced::{Diff, MapDiff};
use crate::synced::{MapState, Maps, Synced};

/// What must change in the kernel to get from `current` to `desired`.
pub fn diff(desired: &MapState, current: &MapState) -> Diff {
    desired.diff(current)
}

/// What one `converge` did, and where its time went.
#[derive(Debug, Default)]
pub struct Converged {
    /// Entries written or deleted.
    pub changes: usize,
    /// Entries that failed, with the reason; the rest were applied.
    pub errors: Vec<String>,
    /// Time spent reading the maps (zero for an `apply_known`).
    pub read: Duration,
    pub diff: Duration,
    pub apply: Duration,
}

/// Brings the maps to `desired`, reading them first: a syscall per entry, kept
/// for start-up, the periodic resync that repairs changes made behind the
/// agent's back, and after a failed write. Between those, the engine's diff
/// goes straight to `apply_known`.
pub fn converge(maps: &mut Maps, desired: &MapState) -> Result<Converged> {
    let mut out = Converged::default();
    let t = Instant::now();
    let current = read_state(maps)?;
    out.read = t.elapsed();
    let t = Instant::now();
    let diff = diff(desired, &current);
    out.diff = t.elapsed();
    out.changes = diff.len();
    let t = Instant::now();
    if !diff.is_empty() {
        out.errors = apply(maps, &diff);
    }
    out.apply = t.elapsed();
    Ok(out)
}

/// Applies a diff already known to be what the kernel needs (an incremental
/// update against the state the kernel is known to hold).
pub fn apply_known(maps: &mut Maps, diff: &Diff) -> Converged {
    let t = Instant::now();
    let errors = if diff.is_empty() { Vec::new() } else { apply(maps, diff) };
    Converged { changes: diff.len(), errors, apply: t.elapsed(), ..Converged::default() }
}

/// Reads every agent-owned map.
pub fn read_state(maps: &Maps) -> Result<MapState> {
    maps.synced.read()
}

/// Applies `diff`, map by map in dependency order (deletions in reverse);
/// every failed entry is reported and the rest still applied. A stats slot
/// starts from zero whenever a port takes or leaves it, whatever a previous
/// owner left.
pub fn apply(maps: &mut Maps, diff: &Diff) -> Vec<String> {
    let mut errors = Vec::new();
    let mut note = |what: String, r: Result<(), MapError>| {
        if let Err(e) = r {
            errors.push(format!("{what}: {e}"));
        }
    };
    let fresh_slots: Vec<u32> = diff
        .ports
        .upserts
        .iter()
        .filter(|(ifindex, _)| maps.synced.ports.get(ifindex, 0).is_err())
        .map(|(_, p)| p.stats_slot)
        .collect();
    let freed_slots: Vec<u32> = diff
        .ports
        .deletes
        .iter()
        .filter_map(|k| maps.synced.ports.get(k, 0).ok().map(|p| p.stats_slot))
        .collect();
    let mut map_errors = Vec::new();
    for &which in Synced::ORDER {
        if which == Synced::ports {
            for &slot in &fresh_slots {
                note(format!("PORT_STATS[{slot}]"), zero_slot(&mut maps.port_stats, slot));
                note(format!("XDP_STATS[{slot}]"), zero_slot(&mut maps.xdp_stats, slot));
            }
        }
        maps.synced.add(which, diff, &mut map_errors);
    }
    for &which in Synced::ORDER.iter().rev() {
        maps.synced.delete(which, diff, &mut map_errors);
        if which == Synced::ports {
            for &slot in &freed_slots {
                note(format!("PORT_STATS[{slot}]"), zero_slot(&mut maps.port_stats, slot));
                note(format!("XDP_STATS[{slot}]"), zero_slot(&mut maps.xdp_stats, slot));
            }
        }
    }
    errors.extend(map_errors);
    errors
}

fn zero_slot(map: &mut PerCpuArray<MapData, PortCounters>, slot: u32) -> Result<(), MapError> {
    let cpus = aya::util::nr_cpus()
        .map_err(|(_, e)| MapError::SyscallError(aya::sys::SyscallError { call: "nr_cpus", io_error: e }))?;
    let zero = PerCpuValues::try_from(vec![bytemuck::Zeroable::zeroed(); cpus])?;
    let zero: PerCpuValues<PortCounters> = zero;
    map.set(slot, zero, 0)
}
