//! Test harness of the datapath: guards for network namespaces, links, taps,
//! packet captures and bpffs pin directories, plus the program-test bench and
//! the topology cluster built on them.
//!
//! Every guard removes what it created when dropped, on success, failure and
//! panic alike. Names embed the process id and a per-process counter, so
//! tests running in parallel threads, and test binaries running at the same
//! time, never clash.

pub mod bpffs;
pub mod capture;
pub mod cluster;
pub mod fuzz;
pub mod guest;
pub mod link;
pub mod model;
pub mod netns;
pub mod neutron;
pub mod pinned;
pub mod program;
pub mod raw;

use std::{
    io,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

/// Panics with a clear message unless the process runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "this test needs root (namespaces, links, bpffs and BPF programs need \
             CAP_SYS_ADMIN/CAP_NET_ADMIN/CAP_BPF): run the tests as root"
        );
    }
}

/// How many times longer than on the host a wait for something that must
/// happen may take here: `DATAPATH_TEST_PATIENCE` (1 to 10; 1 when unset).
/// The lts-kernel layer sets it in its emulated guest, where everything
/// (program loads above all) runs several times slower. Speed is never
/// what these waits test; windows in which something must not happen are
/// not stretched by it.
pub fn patience() -> u32 {
    static PATIENCE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PATIENCE.get_or_init(|| {
        std::env::var("DATAPATH_TEST_PATIENCE").ok().and_then(|v| v.parse().ok()).unwrap_or(1).clamp(1, 10)
    })
}

/// Polls `cond` every 20 ms until it holds or `timeout` (times `patience()`)
/// passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout * patience();
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `cond` until it holds; panics naming `what` if `timeout` passes
/// first. For positive waits whose failure is the test's failure.
pub fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(wait_until(timeout, cond), "timed out after {:?} waiting for {what}", timeout * patience());
}

/// A number unique within this process; combined with the pid it makes names
/// unique across every test thread and every concurrently running test binary.
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Creates `<base>/<prefix>-<pid>-<n>` with the first free `n`.
pub(crate) fn create_unique_dir(base: &Path, prefix: &str) -> Result<PathBuf> {
    loop {
        let path = base.join(format!("{prefix}-{}-{}", std::process::id(), next_id()));
        // create_dir (not _all) fails on a leftover of an earlier process
        // that had our pid, and then we just take the next number.
        match std::fs::create_dir(&path) {
            Ok(()) => return Ok(path),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
}

/// A fresh directory `/tmp/dpt-<tag>-<pid>-<n>`, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates the directory.
    pub fn new(tag: &str) -> Result<Self> {
        Ok(Self { path: create_unique_dir(&std::env::temp_dir(), &format!("dpt-{tag}"))? })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_reports_success_and_timeout() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(1), || {
            n += 1;
            n == 3
        }));
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(60), || false));
        assert!(start.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn temp_dirs_are_unique_and_removed() {
        let a = TempDir::new("t").unwrap();
        let b = TempDir::new("t").unwrap();
        assert_ne!(a.path(), b.path());
        std::fs::write(a.path().join("f"), b"x").unwrap();
        let pa = a.path().to_path_buf();
        drop(a);
        assert!(!pa.exists());
        assert!(b.path().is_dir());
    }
}
