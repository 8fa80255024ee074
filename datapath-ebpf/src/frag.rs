//! Fragments: only the first fragment of a datagram carries the upper-layer
//! header, so the upper-layer checks run on it, and its verdict is remembered
//! for the later fragments of the same datagram from the same port.

use aya_ebpf::maps::LruHashMap;
use datapath_common::{DropReason, FRAG_FAMILY_V4, FRAG_FAMILY_V6, FragKey, FragVerdict};

use crate::parse::FragId;

/// A map of first-fragment verdicts: `FRAG_VERDICTS` (anti-spoofing) or `SG_FRAGS` (security groups).
pub type Verdicts = LruHashMap<FragKey, FragVerdict>;

/// The key of an IPv4 datagram sent by `ifindex`.
#[inline(always)]
pub fn key_v4(ifindex: u32, src: [u8; 4], dst: [u8; 4], fid: FragId) -> FragKey {
    let mut key = key(ifindex, fid, FRAG_FAMILY_V4);
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&dst);
    key
}

/// The key of an IPv6 datagram sent by `ifindex`.
#[inline(always)]
pub fn key_v6(ifindex: u32, src: [u8; 16], dst: [u8; 16], fid: FragId) -> FragKey {
    let mut key = key(ifindex, fid, FRAG_FAMILY_V6);
    key.src = src;
    key.dst = dst;
    key
}

#[inline(always)]
fn key(ifindex: u32, fid: FragId, family: u8) -> FragKey {
    FragKey { ifindex, id: fid.id, src: [0; 16], dst: [0; 16], proto: fid.proto, family, _pad: [0; 2] }
}

/// Remembers what the first fragment's upper-layer checks decided. A dry run
/// (a trace against live maps) leaves no trace.
#[inline(always)]
pub fn remember(map: &Verdicts, key: &FragKey, verdict: &Result<(), DropReason>, dry_run: bool) {
    if dry_run {
        return;
    }
    let reason = match verdict {
        Ok(()) => 0,
        Err(r) => *r as u32,
    };
    // A full LRU evicts the oldest datagram; a failed insert leaves this one
    // unknown, so its later fragments are dropped: closed, not open.
    let _ = map.insert(key, FragVerdict { reason, _pad: 0 }, 0);
}

/// The verdict of a later fragment: its first fragment's. A datagram whose
/// first fragment this port did not send (or that was evicted) is dropped.
#[inline(always)]
pub fn verdict_of(map: &Verdicts, key: &FragKey) -> Result<(), DropReason> {
    // SAFETY: LRU value read and copied at once; a racing update replaces it whole.
    match unsafe { map.get(key) }.map(|v| v.reason) {
        None => Err(DropReason::FragUnknown),
        Some(0) => Ok(()),
        Some(r) => Err(DropReason::from_index(r).unwrap_or(DropReason::FragUnknown)),
    }
}
