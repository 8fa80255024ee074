//! Private pin directories on bpffs.

use std::{
    ffi::CString,
    fs::{File, OpenOptions},
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// Where bpffs lives.
pub const BPFFS: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC` from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// A fresh directory `/sys/fs/bpf/dpt-<pid>-<n>` (bpffs is mounted first if
/// needed), removed with every pin in it on drop.
///
/// It is in the test process's mount namespace: processes started with
/// `nsenter --net=` see it, but `ip netns exec` mounts a fresh /sys and does not.
#[derive(Debug)]
pub struct PinDir {
    path: PathBuf,
}

impl PinDir {
    /// Creates the directory.
    pub fn new() -> Result<Self> {
        ensure_bpffs()?;
        Ok(Self { path: crate::create_unique_dir(Path::new(BPFFS), "dpt")? })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // bpffs supports unlink and rmdir, so this drops every pin (and the
        // objects, once nothing else holds them).
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("warning: removing {}: {e}", self.path.display());
        }
    }
}

/// Whether `path` is on a bpf filesystem.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else { return false };
    // SAFETY: statfs into a zeroed struct we own, with a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Mounts bpffs on /sys/fs/bpf unless it is there already.
pub fn ensure_bpffs() -> Result<()> {
    let target = Path::new(BPFFS);
    if is_bpffs(target) {
        return Ok(());
    }
    // Two test binaries mounting at once would stack two bpffs instances and
    // hide one's pins from the other, so decide under a machine-wide lock
    // (flock also excludes the other threads of this process: each opens the file anew).
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("datapath-tests-bpffs.lock"))
        .context("opening the bpffs mount lock")?;
    let _locked = Flock::exclusive(&lock)?;
    if is_bpffs(target) {
        return Ok(());
    }
    std::fs::create_dir_all(target).with_context(|| format!("creating {BPFFS}"))?;
    // SAFETY: mount(2) with valid C strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("mounting bpffs on {BPFFS}"));
    }
    if !is_bpffs(target) {
        bail!("mounted bpffs on {BPFFS}, but it does not show up there");
    }
    Ok(())
}

/// Holds an exclusive flock(2) until dropped.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(file: &'a File) -> Result<Self> {
        // SAFETY: flock on a valid fd.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io::Error::last_os_error()).context("locking the bpffs mount lock");
        }
        Ok(Self(file))
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: flock on a valid fd.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    /// Creates a one-entry BPF array and pins it at `path` (raw bpf(2), to need no ELF).
    fn pin_array(path: &Path) -> OwnedFd {
        #[repr(C)]
        struct MapCreate {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
        }
        let attr = MapCreate {
            map_type: 2, /* BPF_MAP_TYPE_ARRAY */
            key_size: 4,
            value_size: 4,
            max_entries: 1,
        };
        // SAFETY: BPF_MAP_CREATE (0) with a valid attr prefix.
        let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, &attr, size_of::<MapCreate>() as u32) };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: the kernel just handed us this fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        #[repr(C)]
        struct ObjPin {
            pathname: u64,
            bpf_fd: u32,
            file_flags: u32,
        }
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let attr = ObjPin { pathname: c.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, file_flags: 0 };
        // SAFETY: BPF_OBJ_PIN (6) with a valid path and fd.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, &attr, size_of::<ObjPin>() as u32) };
        assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {}", path.display(), io::Error::last_os_error());
        fd
    }

    #[test]
    fn pin_dirs_are_unique_and_removed_with_their_pins() {
        crate::require_root();
        let a = PinDir::new().unwrap();
        let b = PinDir::new().unwrap();
        assert_ne!(a.path(), b.path());
        assert!(is_bpffs(a.path()));
        std::fs::create_dir(a.path().join("node0")).unwrap();
        let _map = pin_array(&a.path().join("node0/MAP"));
        assert!(a.path().join("node0/MAP").exists());
        let pa = a.path().to_path_buf();
        drop(a);
        assert!(!pa.exists());
        assert!(b.path().is_dir());
    }
}
