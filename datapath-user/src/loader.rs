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
    maps::{MapData, RingBuf},
    programs::{Program, ProgramError, SchedClassifier, Xdp},
};
use datapath_common::{ABI_VERSION, names};

/// The eBPF object built by `cargo xtask build`, embedded so the binary is self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/datapath.bpf.o"));

pub use crate::synced::Maps;

/// The loaded object: maps taken out as typed handles, programs loaded and ready to attach.
pub struct Datapath {
    ebpf: Ebpf,
    pub maps: Maps,
    /// The monitor's ring buffer, until the agent takes it to read events.
    pub events: Option<RingBuf<MapData>>,
    pin_dir: Option<PathBuf>,
}

/// Tries at loading a program. The verifier gives up with EAGAIN when a
/// signal is pending for the loading thread (a child's SIGCHLD to a process
/// that handles it, as tokio's runtime does), and the longer a program takes
/// to verify, the likelier that is; libbpf retries the same way.
const LOAD_ATTEMPTS: usize = 5;

/// Runs `load` until it succeeds, fails for another reason than an
/// interrupted verification, or has been tried `LOAD_ATTEMPTS` times.
fn load_retrying(mut load: impl FnMut() -> Result<(), ProgramError>) -> Result<(), ProgramError> {
    for _ in 1..LOAD_ATTEMPTS {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.kind() == std::io::ErrorKind::WouldBlock =>
            {
                log::debug!("a signal interrupted the verifier; loading again");
            }
            done => return done,
        }
    }
    load()
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
        let started = std::time::Instant::now();
        for name in names::ALL_PROGRAMS {
            let prog = ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing from the eBPF object"))?;
            let loaded = match prog {
                Program::SchedClassifier(p) => load_retrying(|| p.load()),
                Program::Xdp(p) => load_retrying(|| p.load()),
                _ => bail!("program {name} is neither a TC classifier nor an XDP program"),
            };
            loaded.with_context(|| format!("loading program {name} (verifier)"))?;
        }
        // The verifier's time is most of a start-up: worth a line in the log.
        log::info!("programs verified and loaded in {} ms", started.elapsed().as_millis());
        let maps = Maps::take(&mut ebpf)?;
        let events = ebpf
            .take_map(names::MONITOR_EVENTS)
            .context("map MONITOR_EVENTS missing from the eBPF object")?
            .try_into()
            .context("map MONITOR_EVENTS is not a ring buffer")?;
        Ok(Self { ebpf, maps, events: Some(events), pin_dir })
    }

    /// The loaded TC program `name` (one of `names::ALL_PROGRAMS`).
    pub fn program(&mut self, name: &str) -> Result<&mut SchedClassifier> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not a TC classifier"))
    }

    /// The loaded XDP program `name` (`names::PROG_UPLINK_XDP`, `names::PROG_UNDERLAY_XDP`).
    pub fn xdp_program(&mut self, name: &str) -> Result<&mut Xdp> {
        self.ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the eBPF object"))?
            .try_into()
            .with_context(|| format!("program {name} is not an XDP program"))
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn load_error(errno: i32) -> ProgramError {
        ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(String::new()),
        }
    }

    /// An interrupted verification is tried again; any other failure is not.
    #[test]
    fn a_load_interrupted_by_a_signal_is_tried_again_and_other_failures_are_not() {
        let mut calls = 0;
        let ok = load_retrying(|| {
            calls += 1;
            if calls < 3 { Err(load_error(libc::EAGAIN)) } else { Ok(()) }
        });
        assert!(ok.is_ok(), "the third try succeeds: {ok:?}");
        assert_eq!(calls, 3);

        let mut calls = 0;
        let err = load_retrying(|| {
            calls += 1;
            Err(load_error(libc::EAGAIN))
        });
        assert!(matches!(err, Err(ProgramError::LoadError { .. })), "{err:?}");
        assert_eq!(calls, LOAD_ATTEMPTS, "gives up after LOAD_ATTEMPTS tries");

        let mut calls = 0;
        let err = load_retrying(|| {
            calls += 1;
            Err(load_error(libc::EACCES))
        });
        assert!(err.is_err());
        assert_eq!(calls, 1, "a verifier's refusal is final");
    }

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
