//! Attaches the programs to devices with tcx links, pinned so that they keep
//! forwarding when the agent stops, and adopted (updated in place) when an
//! agent starts again.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, TcAttachOptions},
};

use crate::{desired::Attachment, loader::Datapath};

/// Keeps the set of attached devices equal to the desired one.
pub struct Attacher {
    /// `<pin dir>/links`, one pin per device; `None` when nothing is pinned (tests).
    links_dir: Option<PathBuf>,
    /// Devices whose link already runs this process's programs.
    current: BTreeMap<u32, Attachment>,
}

/// The pinned links of an agent: their directory.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

impl Attacher {
    /// An attacher pinning its links under `pin_dir/links` when given.
    pub fn new(pin_dir: Option<&Path>) -> Result<Self> {
        let links_dir = pin_dir.map(links_dir);
        if let Some(dir) = &links_dir {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        Ok(Self { links_dir, current: BTreeMap::new() })
    }

    /// Attaches what `desired` names and detaches what it no longer names.
    /// Returns one message per device that failed; the others are done.
    pub fn reconcile(&mut self, dp: &mut Datapath, desired: &BTreeMap<u32, Attachment>) -> Vec<String> {
        let mut errors = Vec::new();
        for (ifindex, att) in desired {
            if self.current.get(ifindex) == Some(att) && is_attached(att).unwrap_or(false) {
                continue;
            }
            match self.attach(dp, att) {
                Ok(()) => {
                    self.current.insert(*ifindex, att.clone());
                }
                Err(e) => errors.push(format!("attaching {} to {}: {e:#}", att.program, att.device)),
            }
        }
        let wanted: BTreeSet<&str> = desired.values().map(|a| a.device.as_str()).collect();
        self.current.retain(|_, a| wanted.contains(a.device.as_str()));
        if let Err(e) = self.remove_stale_pins(&wanted) {
            errors.push(format!("removing stale links: {e:#}"));
        }
        errors
    }

    fn attach(&mut self, dp: &mut Datapath, att: &Attachment) -> Result<()> {
        let prog = dp.program(att.program)?;
        let Some(dir) = &self.links_dir else {
            prog.attach_with_options(&att.device, TcAttachType::Ingress, tcx_append())
                .with_context(|| format!("tcx attach on {}", att.device))?;
            return Ok(());
        };
        let pin = dir.join(&att.device);
        if pin.exists() {
            if is_attached(att)? {
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
            .attach_with_options(&att.device, TcAttachType::Ingress, tcx_append())
            .with_context(|| format!("tcx attach on {}", att.device))?;
        let link: FdLink = prog.take_link(id)?.try_into().context("tcx link is not an fd link")?;
        link.pin(&pin).with_context(|| format!("pinning link at {}", pin.display()))?;
        Ok(())
    }

    fn remove_stale_pins(&self, wanted: &BTreeSet<&str>) -> Result<()> {
        let Some(dir) = &self.links_dir else { return Ok(()) };
        for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !wanted.contains(name.as_str()) {
                unpin(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn tcx_append() -> TcAttachOptions {
    TcAttachOptions::TcxOrder(LinkOrder::default())
}

/// Whether `att.program` is attached on `att.device`'s tcx ingress.
fn is_attached(att: &Attachment) -> Result<bool> {
    let (_, progs) = match SchedClassifier::query_tcx(&att.device, TcAttachType::Ingress) {
        Ok(r) => r,
        // The device is gone: nothing is attached.
        Err(_) if !device_exists(&att.device) => return Ok(false),
        Err(e) => return Err(e).with_context(|| format!("querying tcx on {}", att.device)),
    };
    Ok(progs.iter().any(|p| p.name_as_str() == Some(att.program)))
}

fn device_exists(name: &str) -> bool {
    std::ffi::CString::new(name).is_ok_and(|c| {
        // SAFETY: c is a valid NUL-terminated string.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    })
}

/// Removes a link pin, which detaches the link if nothing else holds it.
pub fn unpin(path: &Path) -> Result<()> {
    match PinnedLink::from_pin(path) {
        Ok(link) => {
            link.unpin().with_context(|| format!("unpinning {}", path.display()))?;
        }
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => {}
        Err(_) => fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?,
    }
    Ok(())
}
