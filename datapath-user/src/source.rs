//! The binding sources: the bindings file, re-read when it changes, or
//! neutron-server (`neutron::l2agent`). A file that does not parse is reported
//! and the last good bindings stay in force.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::bindings::{Bindings, Catalog, Changed};
use crate::desired::PortReport;
use crate::netlink::Devices;
use crate::neutron::l2agent::NeutronSource;

/// The one active source of bindings.
pub enum Source {
    /// A bindings file.
    File(BindingSource),
    /// neutron-server over the agent RPC.
    Neutron(NeutronSource),
}

impl Source {
    /// Takes in what changed. Returns true when the good bindings changed.
    pub fn poll(&mut self) -> bool {
        match self {
            Source::File(f) => f.poll(),
            Source::Neutron(n) => n.poll(),
        }
    }

    /// Waits until the source has news (the file is polled instead).
    pub async fn changed(&mut self) {
        match self {
            Source::File(_) => std::future::pending().await,
            Source::Neutron(n) => n.changed().await,
        }
    }

    /// The bindings in force, by network, if any ever were.
    pub fn good(&self) -> Option<&Catalog> {
        match self {
            Source::File(f) => f.good(),
            Source::Neutron(n) => n.good(),
        }
    }

    /// The networks changed since the last call (and `all` for the first bindings).
    pub fn take_changed(&mut self) -> Changed {
        match self {
            Source::File(f) => std::mem::take(&mut f.changed),
            Source::Neutron(n) => n.take_changed(),
        }
    }

    /// Why the source is not in force or not healthy, if so.
    pub fn error(&self) -> Option<String> {
        match self {
            Source::File(f) => f.error().map(str::to_owned),
            Source::Neutron(n) => n.error(),
        }
    }

    /// `file` or `neutron`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::File(_) => "file",
            Source::Neutron(_) => "neutron",
        }
    }

    /// Where the bindings come from: the file's path, or the transport URL.
    pub fn location(&self) -> String {
        match self {
            Source::File(f) => f.path().display().to_string(),
            Source::Neutron(n) => n.url().to_string(),
        }
    }

    /// How the source is doing, in one line (the file has nothing to add to `error`).
    pub fn health(&self) -> Option<String> {
        match self {
            Source::File(_) => None,
            Source::Neutron(n) => Some(n.health().describe()),
        }
    }

    /// After a full reconciliation: the state of every port, for the Neutron source to report.
    pub fn observe<'a>(&mut self, ports: impl Iterator<Item = &'a PortReport>) {
        if let Source::Neutron(n) = self {
            n.observe(ports);
        }
    }

    /// After an incremental one: the ports whose state changed (None: gone).
    pub fn observe_changes(&mut self, changes: &BTreeMap<String, Option<PortReport>>) {
        if let Source::Neutron(n) = self {
            n.observe_changes(changes);
        }
    }

    /// Without bindings yet: the devices present, so that the Neutron source asks about their taps.
    pub fn observe_devices(&mut self, devices: &Devices) {
        if let Source::Neutron(n) = self {
            n.observe_devices(devices);
        }
    }
}

/// Identifies one version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    inode: u64,
    size: u64,
    mtime_ns: i128,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        inode: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
    })
}

/// The bindings file and the last version of it that parsed.
pub struct BindingSource {
    path: PathBuf,
    seen: Option<Stamp>,
    good: Option<Catalog>,
    changed: Changed,
    error: Option<String>,
}

impl BindingSource {
    /// A source for `path`; nothing is read until `poll`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None, good: None, changed: Changed::default(), error: None }
    }

    /// Re-reads the file if it changed. Returns true when the good bindings changed.
    pub fn poll(&mut self) -> bool {
        let now = stamp(&self.path);
        // After a failed read the file is read again on every poll: a fix that
        // keeps the stamp (chmod back, a directory replaced in place) still counts.
        if now.is_some() && now == self.seen && self.error.is_none() {
            return false;
        }
        self.seen = now;
        match Bindings::load(&self.path) {
            Ok(b) => {
                for r in &b.refused {
                    log::warn!("bindings {}: refused {}: {}", self.path.display(), r.what, r.reason);
                }
                self.error = None;
                let new = Catalog::split(b);
                match &self.good {
                    Some(old) => {
                        // One comparison, network by network; the refusals only show in status.
                        let networks = new.changed_since(old);
                        if networks.is_empty()
                            && new.refused == old.refused
                            && new.security == old.security
                            && new.qos == old.qos
                        {
                            return false;
                        }
                        self.changed.networks.extend(networks);
                    }
                    None => self.changed.all = true,
                }
                self.good = Some(new);
                true
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.error.as_deref() != Some(msg.as_str()) {
                    log::error!("{msg}; keeping the last good bindings");
                }
                self.error = Some(msg);
                false
            }
        }
    }

    /// The last bindings that parsed, by network, if any ever did.
    pub fn good(&self) -> Option<&Catalog> {
        self.good.as_ref()
    }

    /// Why the current file is not in force, if it is not.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("datapath-source-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_changed_qos_policy_alone_is_a_change() {
        let dir = scratch("qos");
        let path = dir.join("bindings.json");
        let doc = |kbps: u32| {
            format!(
                r#"{{"networks": [], "ports": [], "qos_policies": [{{"id": "q1", "rules":
                    [{{"type": "bandwidth_limit", "max_kbps": {kbps}, "direction": "egress"}}]}}]}}"#
            )
        };
        std::fs::write(&path, doc(100_000)).unwrap();
        let mut src = BindingSource::new(path.clone());
        assert!(src.poll());
        std::fs::write(&path, doc(50_000)).unwrap();
        assert!(src.poll(), "a policy's new rate is a change");
        assert_eq!(src.good().unwrap().qos["q1"].rules.len(), 1);
        std::fs::write(&path, doc(50_000) + " ").unwrap();
        assert!(!src.poll(), "the same policies are none");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let path = dir.join("bindings.json");
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: c is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut src = BindingSource::new(path.clone());
        assert!(!src.poll());
        let e = src.error().unwrap();
        assert!(e.contains("not a regular file") && e.contains("bindings.json"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_directory_in_place_of_the_file_is_an_error_until_the_file_is_back() {
        let dir = scratch("retry");
        let path = dir.join("bindings.json");
        std::fs::write(&path, r#"{"networks": [], "ports": []}"#).unwrap();
        let mut src = BindingSource::new(path.clone());
        assert!(src.poll());
        assert!(src.good().is_some() && src.error().is_none());
        std::fs::remove_file(&path).unwrap();
        std::fs::create_dir(&path).unwrap();
        src.poll();
        assert!(src.error().unwrap().contains("not a regular file"), "{:?}", src.error());
        assert!(src.good().is_some(), "the last good bindings stay");
        std::fs::remove_dir(&path).unwrap();
        std::fs::write(&path, r#"{"networks": [], "ports": []}"#).unwrap();
        src.poll();
        assert!(src.error().is_none(), "{:?}", src.error());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
