//! Aging of the MACs the kernel learned from uplinks: entries unseen for
//! `mac_age_seconds`, or of networks that no longer exist here, are removed.

use std::{collections::BTreeSet, time::Duration};

use anyhow::Result;

use crate::loader::Maps;

/// CLOCK_MONOTONIC in ns, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Removes stale learned entries; returns how many went.
pub fn age(maps: &mut Maps, max_age: Duration, live_nets: &BTreeSet<u32>) -> Result<usize> {
    let now = monotonic_ns();
    let max = max_age.as_nanos() as u64;
    let stale: Vec<_> = maps
        .fdb_learned
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| !live_nets.contains(&k.net_index) || now.saturating_sub(v.last_seen_ns) > max)
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        // Already gone (LRU eviction, a racing sweep) is fine.
        let _ = maps.fdb_learned.remove(k);
    }
    Ok(stale.len())
}
