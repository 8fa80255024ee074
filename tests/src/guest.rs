//! Real guests: QEMU (TCG; no KVM is needed) booting the Debian kernel and
//! initramfs that `cargo xtask test --vm` builds, with a virtio NIC on a tap
//! that QEMU creates in a node's namespace under the name Nova would give it.
//! The guest's init (`tests/guest/init`) reports each step on the serial
//! console as a `DP-` line; the guard kills QEMU (and so removes the tap).

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    TempDir,
    netns::{Netns, NsChild},
};

/// Where `cargo xtask test --vm` put the guest kernel and initramfs.
pub fn images() -> Result<(PathBuf, PathBuf)> {
    let var = |k: &str| {
        std::env::var_os(k).map(PathBuf::from).with_context(|| {
            format!(
                "{k} is not set: the guest tests run through `cargo xtask test --vm`, which builds the guest"
            )
        })
    };
    Ok((var("DATAPATH_GUEST_KERNEL")?, var("DATAPATH_GUEST_INITRD")?))
}

/// A running guest; QEMU is killed when it drops.
pub struct Guest {
    pub name: String,
    qemu: NsChild,
    console: PathBuf,
    _dir: TempDir,
}

impl Guest {
    /// Boots a guest in `ns` whose NIC (MAC `mac`) is the tap `tap`; `args` go on
    /// the kernel command line (`dp.mode=guest dp.peer=...`).
    pub fn boot(ns: &Netns, name: &str, tap: &str, mac: &str, args: &str) -> Result<Self> {
        let (kernel, initrd) = images()?;
        let dir = TempDir::new(&format!("guest-{name}"))?;
        let console = dir.path().join("console.log");
        let append = format!("console=ttyS0 quiet panic=-1 {args}");
        let serial = format!("file:{}", console.display());
        // vhost needs KVM's ioeventfds; script=no: the agent, not qemu-ifup, handles the tap.
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off");
        let device = format!("virtio-net-pci,netdev=n0,mac={mac},romfile=");
        let (kernel, initrd) = (kernel.to_string_lossy(), initrd.to_string_lossy());
        let qemu = ns.spawn(&[
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            &serial,
            "-kernel",
            &kernel,
            "-initrd",
            &initrd,
            "-append",
            &append,
            "-netdev",
            &netdev,
            "-device",
            &device,
        ])?;
        let guest = Self { name: name.into(), qemu, console, _dir: dir };
        // QEMU creates the tap but, without an ifup script, leaves it down;
        // libvirt (for Nova) brings it up, and so does this.
        let exists = || ns.exec(&["ip", "link", "show", tap]).is_ok();
        if !crate::wait_until(Duration::from_secs(20), exists) {
            bail!("guest {name}: qemu did not create tap {tap} in 20 s: {}", guest.qemu.output());
        }
        ns.exec(&["ip", "link", "set", tap, "up"])?;
        Ok(guest)
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits up to `timeout` for a console line starting with `DP-<prefix>` and
    /// returns it. Fails at once on a `DP-FAIL` line or when QEMU exits.
    pub fn wait_for(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let want = format!("DP-{prefix}");
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if let Some(line) = text.lines().map(str::trim).find(|l| l.starts_with(&want)) {
                return Ok(line.to_string());
            }
            if let Some(fail) = text.lines().find(|l| l.trim().starts_with("DP-FAIL")) {
                bail!("guest {}: {}\n--- console:\n{}", self.name, fail.trim(), tail(&text));
            }
            if !self.qemu.running() {
                bail!(
                    "guest {}: qemu exited before {want}\n--- qemu: {}\n--- console:\n{}",
                    self.name,
                    self.qemu.output().trim(),
                    tail(&text)
                );
            }
            if Instant::now() >= deadline {
                bail!("guest {}: no {want} within {timeout:?}\n--- console:\n{}", self.name, tail(&text));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The last lines of a console, for failure messages.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
