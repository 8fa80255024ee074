//! The binding source: the bindings file, re-read when it changes. A file that
//! does not parse is reported and the last good bindings stay in force.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use crate::bindings::Bindings;

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
    good: Option<Bindings>,
    error: Option<String>,
}

impl BindingSource {
    /// A source for `path`; nothing is read until `poll`.
    pub fn new(path: PathBuf) -> Self {
        Self { path, seen: None, good: None, error: None }
    }

    /// Re-reads the file if it changed. Returns true when the good bindings changed.
    pub fn poll(&mut self) -> bool {
        let now = stamp(&self.path);
        if now.is_some() && now == self.seen {
            return false;
        }
        self.seen = now;
        match Bindings::load(&self.path) {
            Ok(b) => {
                for r in &b.refused {
                    log::warn!("bindings {}: refused {}: {}", self.path.display(), r.what, r.reason);
                }
                self.error = None;
                let changed = self.good.as_ref() != Some(&b);
                self.good = Some(b);
                changed
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

    /// The last bindings that parsed, if any ever did.
    pub fn good(&self) -> Option<&Bindings> {
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
