//! The system guest's disk: a clean Debian 12 (bookworm) as mmdebstrap
//! installs it from the archive (minbase, plus systemd as init, udev, and
//! the tools the package test drives traffic with), in an ext4 image that
//! QEMU opens copy-on-write (`snapshot=on`), so every boot starts from the
//! same clean system. Built once; later runs reuse it.

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, Result, ensure};

use crate::util::{cmd, run, secs, step};

/// Debian's release, as the guest's `/etc/debian_version` begins.
const SUITE: &str = "bookworm";
/// What a minimal server has beyond minbase: systemd as PID 1 and udev (the
/// package's unit and `systemctl` need them), iproute2 and ping (the test's
/// namespaces and traffic).
const INCLUDE: &[&str] = &["systemd-sysv", "udev", "iproute2", "iputils-ping"];
/// The image's size; ext4 keeps it sparse on the host (~250 MB in use).
const IMAGE_BYTES: u64 = 1 << 30;

/// Builds (or reuses) the system image; returns its path.
pub fn image() -> Result<PathBuf> {
    let dir = super::vm_dir();
    // The name carries the package list, so that a changed list builds a new image.
    let image = dir.join(format!("{SUITE}-{}.ext4", INCLUDE.join("+")));
    if image.exists() {
        step("system guest", &format!("present ({})", image.display()));
        return Ok(image);
    }
    let start = Instant::now();
    step("system guest", &format!("installing Debian {SUITE} with mmdebstrap (about 20 s)"));
    let tree = dir.join(format!("{SUITE}-root"));
    let partial = image.with_extension("ext4.partial");
    let _ = fs::remove_dir_all(&tree);
    let _ = fs::remove_file(&partial);
    let mut strap = cmd("mmdebstrap", ["--quiet", "--variant=minbase"]);
    strap.arg(format!("--include={}", INCLUDE.join(",")));
    // mmdebstrap copies the host's name; the guest gets its own.
    strap.arg("--customize-hook=echo dpguest > \"$1/etc/hostname\"");
    strap.arg(SUITE).arg(&tree).arg("http://deb.debian.org/debian");
    run(&mut strap).context("installing Debian into a directory with mmdebstrap")?;
    let file = fs::File::create(&partial).with_context(|| format!("creating {}", partial.display()))?;
    file.set_len(IMAGE_BYTES).with_context(|| format!("sizing {}", partial.display()))?;
    drop(file);
    let mut mkfs = cmd("mke2fs", ["-q", "-F", "-t", "ext4", "-L", "dproot", "-d"]);
    mkfs.arg(&tree).arg(&partial);
    run(&mut mkfs).context("building the ext4 image from the installed tree")?;
    fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    fs::rename(&partial, &image).with_context(|| format!("renaming to {}", image.display()))?;
    ensure!(image.exists(), "no image at {}", image.display());
    step("system guest", &format!("built in {} ({})", secs(start), image.display()));
    Ok(image)
}
