//! Loads the embedded eBPF object: creates (or adopts pinned) maps and loads
//! the programs into the kernel. Attaching is `attach`'s job.

use std::{
    fs,
    os::fd::{AsFd, BorrowedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, LpmTrie, Map, MapData, PerCpuArray},
    programs::SchedClassifier,
};
use datapath_common::{
    ABI_VERSION, AddrKeyV4, AddrKeyV6, ArpEntry, ArpKey, FdbEntry, FdbKey, FloodSet, FragKey, FragVerdict,
    LearnedEntry, MacKey, NetInfo, PortCounters, PortInfo, SegmentKey, TraceRecord, VtepSet, names,
};

/// The eBPF object built by `cargo xtask build`, embedded so the binary is self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

/// Typed handles on every map of the datapath.
pub struct Maps {
    pub ports: HashMap<MapData, u32, PortInfo>,
    pub networks: HashMap<MapData, u32, NetInfo>,
    pub net_by_segment: HashMap<MapData, SegmentKey, u32>,
    pub fdb: HashMap<MapData, FdbKey, FdbEntry>,
    pub fdb_learned: HashMap<MapData, FdbKey, LearnedEntry>,
    pub flood_sets: HashMap<MapData, u32, FloodSet>,
    pub allowed_macs: HashMap<MapData, MacKey, u32>,
    pub allowed_v4: LpmTrie<MapData, AddrKeyV4, u32>,
    pub allowed_v6: LpmTrie<MapData, AddrKeyV6, u32>,
    pub flood_vteps: HashMap<MapData, u32, VtepSet>,
    pub arp_table: HashMap<MapData, ArpKey, ArpEntry>,
    pub frag_verdicts: HashMap<MapData, FragKey, FragVerdict>,
    pub port_stats: PerCpuArray<MapData, PortCounters>,
    pub trace: PerCpuArray<MapData, TraceRecord>,
}

/// The loaded object: maps taken out as typed handles, programs loaded and ready to attach.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    pin_dir: Option<PathBuf>,
}

/// Where the maps of an agent with `pin_path` live: versioned, so that an agent
/// never adopts maps whose layout it does not know.
pub fn versioned_pin_dir(pin_path: &Path) -> PathBuf {
    pin_path.join(format!("v{ABI_VERSION}"))
}

impl Datapath {
    /// Loads with private maps (tests, `trace` against a copy).
    pub fn load_private() -> Result<Self> {
        Self::load_inner(None)
    }

    /// Loads with maps pinned under `pin_path/v<ABI>/maps`, adopting the ones already there.
    pub fn load_pinned(pin_path: &Path) -> Result<Self> {
        Self::load_inner(Some(versioned_pin_dir(pin_path)))
    }

    fn load_inner(pin_dir: Option<PathBuf>) -> Result<Self> {
        if OBJECT.is_empty() {
            bail!(
                "this `datapath` binary was built without its eBPF object; build it with `cargo xtask build`"
            );
        }
        let mut loader = EbpfLoader::new();
        let map_dir = pin_dir.as_ref().map(|d| d.join("maps"));
        if let Some(dir) = &map_dir {
            fs::create_dir_all(dir)
                .with_context(|| format!("creating pin directory {} (is it on a bpffs?)", dir.display()))?;
            for name in names::ALL_MAPS {
                loader.map_pin_path(name, dir.join(name));
            }
        }
        let mut ebpf = loader.load(OBJECT).context("loading the eBPF object (maps and programs)")?;
        for name in names::ALL_PROGRAMS {
            let prog: &mut SchedClassifier = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?
                .try_into()
                .with_context(|| format!("program {name} is not a TC classifier"))?;
            prog.load().with_context(|| format!("loading program {name} (verifier)"))?;
        }
        let maps = Maps {
            ports: take(&mut ebpf, names::PORTS)?,
            networks: take(&mut ebpf, names::NETWORKS)?,
            net_by_segment: take(&mut ebpf, names::NET_BY_SEGMENT)?,
            fdb: take(&mut ebpf, names::FDB)?,
            fdb_learned: take(&mut ebpf, names::FDB_LEARNED)?,
            flood_sets: take(&mut ebpf, names::FLOOD_SETS)?,
            allowed_macs: take(&mut ebpf, names::ALLOWED_MACS)?,
            allowed_v4: take(&mut ebpf, names::ALLOWED_V4)?,
            allowed_v6: take(&mut ebpf, names::ALLOWED_V6)?,
            flood_vteps: take(&mut ebpf, names::FLOOD_VTEPS)?,
            arp_table: take(&mut ebpf, names::ARP_TABLE)?,
            frag_verdicts: take(&mut ebpf, names::FRAG_VERDICTS)?,
            port_stats: take(&mut ebpf, names::PORT_STATS)?,
            trace: take(&mut ebpf, names::TRACE)?,
        };
        Ok(Self { ebpf, maps, pin_dir })
    }

    /// The loaded TC program `name` (one of `names::ALL_PROGRAMS`).
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a TC classifier"))
    }

    /// The fd of program `name`, for `BPF_PROG_TEST_RUN`.
    pub fn program_fd(&mut self, name: &str) -> Result<BorrowedFd<'_>> {
        let prog = self.program(name)?;
        let fd = prog.fd().with_context(|| format!("program {name} is not loaded"))?;
        Ok(fd.as_fd())
    }

    /// The versioned pin directory, when the maps are pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }
}

fn take<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type or layout"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names in `datapath_common::names` are the object's names, both ways.
    #[test]
    fn embedded_object_has_exactly_the_shared_map_and_program_names() {
        assert!(!OBJECT.is_empty(), "built without DATAPATH_EBPF_OBJ: run through `cargo xtask test`");
        let obj = aya_obj::Object::parse(OBJECT).expect("parsing the embedded eBPF object");
        let maps: BTreeSet<&str> =
            obj.maps.keys().map(String::as_str).filter(|m| !m.starts_with('.')).collect();
        assert_eq!(maps, names::ALL_MAPS.into_iter().collect());
        let progs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        assert_eq!(progs, names::ALL_PROGRAMS.into_iter().collect());
    }
}
