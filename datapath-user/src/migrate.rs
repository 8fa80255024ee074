//! Upgrades and downgrades across map layouts, without a lost frame.
//!
//! Pins live under `pin_path/v<ABI_VERSION>`. An agent that finds another
//! version's directory there (the previous build's, or a newer one's after a
//! downgrade) does not adopt its maps, whose layout it may not know:
//!
//! 1. it builds its own maps, under its own version, from the desired state;
//! 2. it carries over what cannot be derived: the MACs learned from the wire
//!    (`learned_of`, `restore_learned`), keyed by the network's identity on
//!    the wire, which every layout keeps at the head of `NetInfo`; and the
//!    tracked connections (`connections_of`, `restore_connections`), keyed
//!    by ifindex, which a new agent does not change;
//! 3. it moves the other version's link and filter pins into its own
//!    directory (`adopt_attachments`), so that its attacher swaps each
//!    device's program atomically, as on any restart;
//! 4. once every device runs its programs, it removes the other version's
//!    pins (`remove`); the old maps go with the last program that held them.
//!
//! Until a device is swapped it runs the old programs on the old maps, which
//! still hold the state they had: each set is consistent on its own.

use std::{
    collections::BTreeMap,
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData};
use datapath_common::{ABI_VERSION, CT_TABLE_UNKNOWN, CtEntry, CtKey, FdbKey, LearnedEntry, names};

use crate::{
    conntrack,
    desired::{MapState, WireId},
    synced::Maps,
};

/// The pin directories of other layout versions under `pin_path`, oldest first.
pub fn foreign_versions(pin_path: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let entries = match fs::read_dir(pin_path) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", pin_path.display())),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", pin_path.display()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(v) = name.strip_prefix('v').and_then(|n| n.parse::<u32>().ok())
            && v != ABI_VERSION
            && entry.path().is_dir()
        {
            found.push((v, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Moves the link (tcx, XDP) and filter (netlink) pins of another version's
/// directory `from` into ours, `to`. Returns how many moved.
pub fn adopt_attachments(from: &Path, to: &Path) -> Result<usize> {
    let mut moved = 0;
    for kind in crate::attach::ATTACHMENT_DIRS {
        let src = from.join(kind);
        let entries = match fs::read_dir(&src) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", src.display())),
        };
        let dst = to.join(kind);
        fs::create_dir_all(&dst).with_context(|| format!("creating {}", dst.display()))?;
        for entry in entries {
            let entry = entry?;
            let target = dst.join(entry.file_name());
            // Ours wins: a pin of this version for the device is the newer record.
            if target.exists() {
                continue;
            }
            fs::rename(entry.path(), &target)
                .with_context(|| format!("moving {} to {}", entry.path().display(), target.display()))?;
            moved += 1;
        }
    }
    Ok(moved)
}

/// A MAC another version learned from the wire, with the identity of its network.
#[derive(Debug, Clone, PartialEq)]
pub struct Learned {
    pub wire: WireId,
    pub mac: [u8; 6],
    pub entry: LearnedEntry,
}

/// The MACs the version pinned at `dir` learned. Empty when its learned
/// table has another layout than ours: those MACs are then learned again,
/// and flooded meanwhile, so nothing is lost.
pub fn learned_of(dir: &Path) -> Result<Vec<Learned>> {
    let maps = dir.join("maps");
    let nets = wire_ids(&maps.join(names::NETWORKS))?;
    let path = maps.join(names::FDB_LEARNED);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let learned: HashMap<MapData, FdbKey, LearnedEntry> = match HashMap::try_from(Map::HashMap(data)) {
        Ok(m) => m,
        Err(e) => {
            log::info!("{}: another layout ({e}); its MACs will be learned again", path.display());
            return Ok(Vec::new());
        }
    };
    let mut out = Vec::new();
    for item in learned.iter() {
        let (k, v) = item.with_context(|| format!("reading {}", path.display()))?;
        if let Some(wire) = nets.get(&k.net_index) {
            out.push(Learned { wire: *wire, mac: k.mac, entry: v });
        }
    }
    Ok(out)
}

/// Network index -> wire identity, from a `NETWORKS` map of any layout: the
/// identity is the first three `u32`s of every `NetInfo` version.
fn wire_ids(path: &Path) -> Result<BTreeMap<u32, WireId>> {
    fn read<const N: usize>(data: MapData) -> Result<BTreeMap<u32, WireId>> {
        let map: HashMap<MapData, u32, [u8; N]> = HashMap::try_from(Map::HashMap(data))?;
        let mut out = BTreeMap::new();
        for item in map.iter() {
            let (index, v) = item?;
            let word = |i: usize| u32::from_ne_bytes([v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]]);
            out.insert(
                index,
                WireId { uplink_ifindex: word(0), segmentation_id: word(1), net_type: word(2) },
            );
        }
        Ok(out)
    }
    let data = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let size = data.info().context("reading the map's info")?.value_size();
    let ids = match size {
        16 => read::<16>(data),
        20 => read::<20>(data),
        24 => read::<24>(data),
        28 => read::<28>(data),
        32 => read::<32>(data),
        other => anyhow::bail!("{}: values of {other} bytes are no NetInfo this agent knows", path.display()),
    };
    ids.with_context(|| format!("reading {}", path.display()))
}

/// Writes `learned` into our `FDB_LEARNED`, under this agent's index of each
/// network (`state` is what the agent just programmed). Returns how many.
pub fn restore_learned(maps: &mut Maps, state: &MapState, learned: &[Learned]) -> usize {
    let index: BTreeMap<WireId, u32> =
        state.networks.iter().map(|(i, n)| (crate::desired::wire_id_of(n), *i)).collect();
    let mut restored = 0;
    for l in learned {
        let Some(&net_index) = index.get(&l.wire) else { continue };
        let key = FdbKey { net_index, mac: l.mac, _pad: [0; 2] };
        // An entry our programs learned meanwhile is newer.
        if maps.fdb_learned.get(&key, 0).is_ok() {
            continue;
        }
        if maps.fdb_learned.insert(key, l.entry, 0).is_ok() {
            restored += 1;
        }
    }
    restored
}

/// The connections the version pinned at `dir` tracks, open and closing
/// (a version before `CT_CLOSING` has only `CONNTRACK`). Empty when it has no
/// connection table, or one of another layout: those connections are then
/// judged anew (TCP is picked up mid-stream where the rules admit it).
pub fn connections_of(dir: &Path) -> Result<Vec<(CtKey, CtEntry)>> {
    let mut all = table_of(dir, names::CONNTRACK)?;
    all.extend(table_of(dir, names::CT_CLOSING)?);
    Ok(all)
}

/// The entries of connection table `name` pinned at `dir`, as `connections_of` reads them.
fn table_of(dir: &Path, name: &str) -> Result<Vec<(CtKey, CtEntry)>> {
    let path = dir.join("maps").join(name);
    let data = match MapData::from_pin(&path) {
        Ok(d) => d,
        Err(_) if !path.exists() => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    // Map::HashMap for the LRU too: the handle reads either kind of hash alike.
    let table: HashMap<MapData, CtKey, CtEntry> = match HashMap::try_from(Map::HashMap(data)) {
        Ok(m) => m,
        Err(e) => {
            log::info!("{}: another layout ({e}); its connections will be judged anew", path.display());
            return Ok(Vec::new());
        }
    };
    table.iter().map(|r| r.with_context(|| format!("reading {}", path.display()))).collect()
}

/// Writes `connections` into our tables (a closing one into `CT_CLOSING`),
/// but for those our programs already track. Returns how many.
pub fn restore_connections(maps: &mut Maps, connections: &[(CtKey, CtEntry)]) -> usize {
    let mut restored = 0;
    for (k, e) in connections {
        if conntrack::tracked(maps, k) {
            continue;
        }
        if conntrack::insert(maps, k, &carried(e)).is_ok() {
            restored += 1;
        }
    }
    restored
}

/// A connection of another layout as ours holds it: its rule table's id is
/// the other agent's, so it becomes `CT_TABLE_UNKNOWN` (a fixed allowance stays 0).
fn carried(e: &CtEntry) -> CtEntry {
    let mut e = *e;
    if e.table != 0 {
        e.table = CT_TABLE_UNKNOWN;
    }
    e
}

/// Removes another version's pins. Its maps are freed once no program holds them.
pub fn remove(dir: &Path) -> Result<()> {
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_connections_name_no_table_but_keep_their_fixed_allowance() {
        let e = CtEntry { created_ns: 1, last_seen_ns: 2, flags: 3, table: 7, rule: 4, lifetime_s: 5 };
        assert_eq!(carried(&e), CtEntry { table: CT_TABLE_UNKNOWN, ..e });
        let allowance = CtEntry { table: 0, rule: 0, ..e };
        assert_eq!(carried(&allowance), allowance);
    }

    #[test]
    fn other_versions_are_found_and_ours_is_not() {
        let dir = std::env::temp_dir().join(format!("dp-migrate-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for v in [format!("v{}", ABI_VERSION), format!("v{}", ABI_VERSION + 7), "v1".into(), "vx".into()] {
            fs::create_dir_all(dir.join(v)).unwrap();
        }
        fs::write(dir.join(format!("v{}", ABI_VERSION + 90)), b"a file, not a version").unwrap();
        let found: Vec<u32> = foreign_versions(&dir).unwrap().into_iter().map(|(v, _)| v).collect();
        fs::remove_dir_all(&dir).unwrap();
        let mut want = vec![1, ABI_VERSION + 7];
        want.retain(|v| *v != ABI_VERSION);
        assert_eq!(found, want);
    }

    #[test]
    fn attachments_move_and_ours_win() {
        let dir = std::env::temp_dir().join(format!("dp-adopt-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (old, new) = (dir.join("v1"), dir.join("v2"));
        fs::create_dir_all(old.join("links")).unwrap();
        fs::create_dir_all(old.join("filters")).unwrap();
        fs::create_dir_all(new.join("links")).unwrap();
        fs::write(old.join("links/eth2"), b"old").unwrap();
        fs::write(old.join("links/tap1"), b"old").unwrap();
        fs::write(old.join("filters/tap2"), b"old").unwrap();
        fs::write(new.join("links/tap1"), b"new").unwrap();
        let moved = adopt_attachments(&old, &new).unwrap();
        let read = |p: &str| fs::read_to_string(new.join(p)).unwrap();
        let (eth2, tap1, tap2) = (read("links/eth2"), read("links/tap1"), read("filters/tap2"));
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(moved, 2);
        assert_eq!((eth2.as_str(), tap1.as_str(), tap2.as_str()), ("old", "new", "old"));
    }
}
