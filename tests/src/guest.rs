//! Real guests: QEMU (TCG; no KVM is needed) booting the Debian kernel and
//! initramfs that `cargo xtask test --vm` builds, with a virtio NIC on a tap
//! that QEMU creates in a node's namespace under the name Nova would give it.
//! The guest's init (`tests/guest/init`) reports each step on the serial
//! console as a `DP-` line; the guard kills QEMU (and so removes the tap).

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    TempDir,
    netns::{Netns, NsChild},
};

/// Where `cargo xtask test --vm` put the guest kernel and initramfs.
pub fn images() -> Result<(PathBuf, PathBuf)> {
    Ok((artifact("DATAPATH_GUEST_KERNEL")?, artifact("DATAPATH_GUEST_INITRD")?))
}

/// A path `cargo xtask test --vm` passes in `var` (the system disk, the packages).
pub fn artifact(var: &str) -> Result<PathBuf> {
    std::env::var_os(var).map(PathBuf::from).with_context(|| {
        format!("{var} is not set: the guest tests run through `cargo xtask test --vm`, which builds it")
    })
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
        // vhost needs KVM's ioeventfds; script=no: the agent, not qemu-ifup, handles the tap.
        let netdev = format!("tap,id=n0,ifname={tap},script=no,downscript=no,vhost=off");
        let device = format!("virtio-net-pci,netdev=n0,mac={mac},romfile=");
        let qemu = ["-accel", "tcg", "-m", "256", "-netdev", &netdev, "-device", &device];
        let guest = Self::start(ns, name, args, &qemu)?;
        // QEMU creates the tap but, without an ifup script, leaves it down;
        // libvirt (for Nova) brings it up, and so does this.
        let exists = || ns.exec(&["ip", "link", "show", tap]).is_ok();
        if !crate::wait_until(Duration::from_secs(20), exists) {
            bail!("guest {name}: qemu did not create tap {tap} in 20 s: {}", guest.qemu.output());
        }
        ns.exec(&["ip", "link", "set", tap, "up"])?;
        Ok(guest)
    }

    /// Boots the system guest in `ns`: Debian 12 from the disk image
    /// (DATAPATH_GUEST_DISK, opened copy-on-write, so it starts clean every
    /// time) with systemd as init, `share` at /mnt/dp, and a unit that runs
    /// /mnt/dp/`script` once the system is up. It has no NIC: what it tests
    /// stays inside it.
    pub fn boot_system(ns: &Netns, name: &str, share: &Path, script: &str) -> Result<Self> {
        let disk = artifact("DATAPATH_GUEST_DISK")?;
        // systemd.firstboot=off: the image has no machine id, and nobody answers prompts.
        // No getty on the console: its hangup of the tty would cut the script's output.
        let args = format!(
            "dp.mode=system dp.script={script} systemd.firstboot=off systemd.mask=serial-getty@ttyS0.service"
        );
        let drive = format!("file={},format=raw,if=virtio,snapshot=on", disk.display());
        let virtfs =
            format!("local,path={},mount_tag=dpshare,security_model=none,readonly=on", share.display());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        let qemu =
            ["-accel", "tcg,thread=multi", "-smp", &cpus, "-m", "1024", "-drive", &drive, "-virtfs", &virtfs];
        Self::start(ns, name, &args, &qemu)
    }

    /// Starts QEMU in `ns` on the guest kernel and initramfs, `args` on the
    /// kernel command line, `qemu` added to its own arguments, the serial
    /// console into a file.
    fn start(ns: &Netns, name: &str, args: &str, qemu: &[&str]) -> Result<Self> {
        let (kernel, initrd) = images()?;
        let dir = TempDir::new(&format!("guest-{name}"))?;
        let console = dir.path().join("console.log");
        let append = format!("console=ttyS0 quiet panic=-1 {args}");
        let serial = format!("file:{}", console.display());
        let (kernel, initrd) = (kernel.to_string_lossy(), initrd.to_string_lossy());
        let mut all = vec!["qemu-system-x86_64", "-nodefaults", "-display", "none", "-no-reboot"];
        all.extend(["-serial", &serial, "-kernel", &kernel, "-initrd", &initrd, "-append", &append]);
        all.extend_from_slice(qemu);
        let qemu = ns.spawn(&all)?;
        Ok(Self { name: name.into(), qemu, console, _dir: dir })
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
