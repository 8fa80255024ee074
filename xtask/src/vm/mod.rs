//! The test guests, built from Debian packages only: bookworm's kernel
//! (`linux-image-amd64`, 6.1 LTS) unpacked with `dpkg -x`, and one initramfs
//! holding busybox-static, the modules the guests load, and the init script
//! `tests/guest/init`. Everything lives under `target/vm/` and is built once
//! per kernel package; later runs reuse it.
//!
//! The same kernel and initramfs serve both kinds of guest (see the init
//! script): a VM whose virtio NIC sits on a Nova-named tap, and the test suite
//! itself run on this older kernel over the host's root filesystem (9p).

mod cpio;
pub mod system;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, Result, bail, ensure};

use crate::util::{cmd, output, root, run, secs, step};

/// The meta-package that names bookworm's current 6.1 kernel.
const KERNEL_META: &str = "linux-image-amd64";
/// Modules the init script loads (with their dependencies), by name.
const MODULES: &[&str] = &[
    // the guest's NIC, and the 9p transport to the host's root
    "virtio_pci",
    "virtio_net",
    "9pnet_virtio",
    "9p",
    // the system guest's root: a virtio disk with ext4 (which asks the crypto API for crc32c)
    "virtio_blk",
    "crc32c_generic",
    "ext4",
    // what the test suite builds its topologies from, and the tc fallback of kernels without tcx
    "veth",
    "tun",
    "bridge",
    "vxlan",
    "macvlan",
    "sch_ingress",
    "cls_bpf",
    // the trunk guest's VLAN subinterfaces (eth0.101); the host has no 8021q
    "8021q",
];

/// A built guest: the kernel image and the initramfs.
#[derive(Debug, Clone)]
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The kernel's release (`uname -r` in the guest).
    pub release: String,
}

/// `target/vm`.
fn vm_dir() -> PathBuf {
    root().join("target/vm")
}

/// Builds (or reuses) the guest kernel and initramfs.
pub fn guest() -> Result<Guest> {
    let package = kernel_package()?;
    let release = package.strip_prefix("linux-image-").unwrap_or(&package).to_string();
    let dir = vm_dir();
    let tree = dir.join(&package);
    let kernel = tree.join(format!("boot/vmlinuz-{release}"));
    let modules = tree.join(format!("lib/modules/{release}"));
    let busybox = dir.join("busybox/bin/busybox");
    ensure_busybox(&busybox)?;
    if !kernel.exists() || !modules.join("modules.dep").exists() {
        let start = Instant::now();
        step("guest kernel", &format!("unpacking {package} (apt-get download, dpkg -x)"));
        let deb = download(&package)?;
        unpack(&deb, &tree)?;
        ensure!(kernel.exists(), "{} has no {}", deb.display(), kernel.display());
        // The package ships no modules.dep (dpkg's postinst makes it); busybox's depmod can.
        run(cmd(&busybox, ["depmod", "-b"]).arg(&tree).arg(&release))
            .context("generating modules.dep for the guest kernel")?;
        step("guest kernel", &format!("ready in {} ({})", secs(start), kernel.display()));
    } else {
        step("guest kernel", &format!("present ({release})"));
    }
    // Rebuilt every time (milliseconds), so that it always has this tree's init and modules.
    let initrd = dir.join(format!("initrd-{release}.cpio"));
    let image = initramfs(&busybox, &modules, &root().join("tests/guest/init"))?;
    fs::write(&initrd, &image).with_context(|| format!("writing {}", initrd.display()))?;
    step("guest initramfs", &format!("{} KiB ({})", image.len() / 1024, initrd.display()));
    Ok(Guest { kernel, initrd, release })
}

/// Guest memory for the suite: the topology tests run many namespaces, agents and dnsmasqs.
const SUITE_MEMORY: &str = "4096";
/// The suite takes ~100 s under TCG on 2 cores; a guest still running after
/// this is stuck (a hung test, a wedged kernel) and is killed.
const SUITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20 * 60);

/// Runs the test `binaries` (with `env`, and `extra` as their arguments) one after
/// the other inside a QEMU VM on the guest kernel, over the host's root file
/// system, passing every console line to `on_line`. Returns the exit code the
/// guest reported: 0 if every binary passed.
pub fn run_suite(
    guest: &Guest,
    binaries: &[PathBuf],
    env: &[(&str, &Path)],
    extra: &[String],
    mut on_line: impl FnMut(&str),
) -> Result<i32> {
    let script = vm_dir().join("suite.sh");
    fs::write(&script, suite_script(binaries, env, extra))
        .with_context(|| format!("writing {}", script.display()))?;
    let append = format!(
        "console=ttyS0 quiet panic=-1 dp.mode=suite dp.script={} dp.root={}",
        script.display(),
        root().display()
    );
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
    let mut qemu = cmd(
        "qemu-system-x86_64",
        [
            "-accel",
            "tcg,thread=multi",
            "-smp",
            &cpus,
            "-m",
            SUITE_MEMORY,
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-kernel",
        ],
    );
    qemu.arg(&guest.kernel).arg("-initrd").arg(&guest.initrd).args(["-append", &append]);
    // The host's root, read-only; the guest mounts tmpfs where the tests write.
    qemu.args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]);
    qemu.stdin(Stdio::null()).stdout(Stdio::piped());
    let what = crate::util::describe(&qemu);
    let mut child = qemu.spawn().with_context(|| format!("starting `{what}`"))?;
    let pid = child.id() as i32;
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let timed_out = done_rx.recv_timeout(SUITE_TIMEOUT).is_err();
        if timed_out {
            // SAFETY: signalling our own child, which is not reaped before this thread is joined.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        timed_out
    });
    let (mut code, mut failed) = (None, None);
    let mut console = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not lines of UTF-8: a kernel message may carry anything.
        match console.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                failed = Some(format!("reading the console of `{what}`: {e}"));
                break;
            }
        }
        let text = String::from_utf8_lossy(&buf);
        // The serial console ends lines with CRLF.
        let line = text.trim_end_matches(['\r', '\n']);
        if let Some(rc) = line.strip_prefix("DP-EXIT ") {
            code = rc.trim().parse().ok();
        }
        if let Some(why) = line.strip_prefix("DP-FAIL ") {
            // The init powers the guest off after saying so; read on until it has.
            failed = Some(format!("the guest could not run the suite: {why}"));
        }
        on_line(line);
    }
    let _ = done_tx.send(());
    let timed_out = watchdog.join().unwrap_or(false);
    let status = child.wait().with_context(|| format!("waiting for `{what}`"))?;
    if timed_out {
        bail!("the guest was still running after {} min and was killed", SUITE_TIMEOUT.as_secs() / 60);
    }
    if let Some(why) = failed {
        bail!("{why}");
    }
    code.with_context(|| format!("the guest ended ({status}) without reporting the suite's result"))
}

/// The guest's stage 2, run by the host's /bin/sh on the guest kernel: the mounts
/// the tests need, then each binary in turn, then the verdict and a power-off.
fn suite_script(binaries: &[PathBuf], env: &[(&str, &Path)], extra: &[String]) -> String {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut s = String::from(
        "#!/bin/sh\n\
         # Written by `cargo xtask test --vm` (xtask/src/vm): stage 2 of the lts-kernel guest.\n\
         export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root\n\
         mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev\n\
         mount -t bpf bpf /sys/fs/bpf\n\
         mkdir -p /dev/pts /dev/shm && mount -t devpts devpts /dev/pts && mount -t tmpfs shm /dev/shm\n\
         ip link set lo up\n\
         echo \"DP-KERNEL $(uname -r)\"\n\
         rc=0\n",
    );
    for (k, v) in env {
        s += &format!("export {k}={}\n", quote(&v.to_string_lossy()));
    }
    // cargo runs test binaries in their package's directory.
    s += &format!("cd {}\n", quote(&root().join("tests").to_string_lossy()));
    // The serial console is a tty, so libtest would colour its result lines,
    // which the summary could then not read.
    let args: Vec<String> =
        std::iter::once("--color=never").chain(extra.iter().map(String::as_str)).map(quote).collect();
    for b in binaries {
        let b = quote(&b.to_string_lossy());
        s += &format!("echo \"     Running {b}\"\n{b} {} || rc=1\n", args.join(" "));
    }
    s += "echo \"DP-EXIT $rc\"\nsync\n";
    // The host's poweroff needs systemd; busybox's (on the host's disk, under target/vm) does not.
    s += &format!("exec {} poweroff -f\n", quote(&vm_dir().join("busybox/bin/busybox").to_string_lossy()));
    s
}

/// The concrete kernel package `linux-image-amd64` depends on, e.g. `linux-image-6.1.0-57-amd64`.
fn kernel_package() -> Result<String> {
    let depends = || output(&mut cmd("apt-cache", ["depends", KERNEL_META]));
    let text = match depends() {
        Ok(t) if t.contains("Depends:") => t,
        // A machine whose package lists were never fetched knows no kernel packages yet.
        _ => {
            run(cmd("apt-get", ["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
            depends()?
        }
    };
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.contains('<'))
        .map(str::to_owned)
        .with_context(|| format!("`apt-cache depends {KERNEL_META}` names no linux-image package:\n{text}"))
}

/// `apt-get download PACKAGE` into target/vm/debs; returns the .deb.
fn download(package: &str) -> Result<PathBuf> {
    let debs = vm_dir().join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    let find = || -> Option<PathBuf> {
        fs::read_dir(&debs).ok()?.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    // As root apt would hand the download to the _apt user, who cannot write here.
    let mut get = cmd("apt-get", ["download", "-q", "-o", "APT::Sandbox::User=root", package]);
    get.current_dir(&debs);
    run(&mut get).with_context(|| format!("downloading {package} from the Debian archive"))?;
    find().with_context(|| format!("apt-get download {package} left no .deb in {}", debs.display()))
}

fn unpack(deb: &Path, into: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(into);
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    run(cmd("dpkg", ["-x"]).arg(deb).arg(into))
        .with_context(|| format!("unpacking {} into {}", deb.display(), into.display()))
}

/// busybox-static, unpacked (not installed: the host keeps its own busybox).
fn ensure_busybox(bin: &Path) -> Result<()> {
    if bin.exists() {
        return Ok(());
    }
    let deb = download("busybox-static")?;
    let dir = bin.parent().and_then(Path::parent).context("busybox path")?;
    unpack(&deb, dir)?;
    ensure!(bin.exists(), "{} has no bin/busybox", deb.display());
    Ok(())
}

/// The initramfs: busybox at /bin/busybox, `init`, and the modules at
/// /modules/NN-name.ko with /modules/order listing them in load order.
fn initramfs(busybox: &Path, modules: &Path, init: &Path) -> Result<Vec<u8>> {
    let mut a = cpio::Archive::default();
    for d in ["bin", "dev", "proc", "sys", "tmp", "run", "host", "modules"] {
        a.dir(d);
    }
    let bb = fs::read(busybox).with_context(|| format!("reading {}", busybox.display()))?;
    a.file("bin/busybox", 0o755, &bb);
    let script = fs::read(init).with_context(|| format!("reading {}", init.display()))?;
    a.file("init", 0o755, &script);
    let dep_path = modules.join("modules.dep");
    let dep = fs::read_to_string(&dep_path).with_context(|| format!("reading {}", dep_path.display()))?;
    let mut order = String::new();
    for (i, rel) in load_order(&parse_modules_dep(&dep), MODULES)?.iter().enumerate() {
        let src = modules.join(rel);
        let data = fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
        let name = format!("{i:02}-{}", rel.rsplit('/').next().unwrap_or(rel));
        a.file(&format!("modules/{name}"), 0o644, &data);
        order.push_str(&name);
        order.push('\n');
    }
    a.file("modules/order", 0o644, order.as_bytes());
    Ok(a.finish())
}

/// modules.dep: module path -> the paths it depends on.
fn parse_modules_dep(text: &str) -> BTreeMap<String, Vec<String>> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(m, deps)| (m.trim().to_string(), deps.split_whitespace().map(str::to_owned).collect()))
        .collect()
}

/// The paths to load for `wanted` (module names), every dependency before its users.
fn load_order(dep: &BTreeMap<String, Vec<String>>, wanted: &[&str]) -> Result<Vec<String>> {
    let by_name: BTreeMap<String, &String> = dep
        .keys()
        .map(|p| {
            let file = p.rsplit('/').next().unwrap_or(p);
            let name = file.split(".ko").next().unwrap_or(file).replace('-', "_");
            (name, p)
        })
        .collect();
    fn visit(
        p: &str,
        dep: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        if !seen.insert(p.to_string()) {
            return Ok(());
        }
        for d in dep.get(p).with_context(|| format!("modules.dep has no entry for {p}"))? {
            visit(d, dep, seen, out)?;
        }
        out.push(p.to_string());
        Ok(())
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for name in wanted {
        let Some(p) = by_name.get(&name.replace('-', "_")) else {
            bail!("the guest kernel has no module {name} (is it built in? then drop it from MODULES)");
        };
        visit(p, dep, &mut seen, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dependencies_load_first_and_once() {
        let dep = parse_modules_dep(
            "kernel/a/vxlan.ko: kernel/b/udp_tunnel.ko kernel/c/ip6_udp_tunnel.ko\n\
             kernel/b/udp_tunnel.ko:\n\
             kernel/c/ip6_udp_tunnel.ko: kernel/b/udp_tunnel.ko\n\
             kernel/d/veth.ko:\n",
        );
        let order = load_order(&dep, &["vxlan", "veth", "udp_tunnel"]).unwrap();
        assert_eq!(
            order,
            ["kernel/b/udp_tunnel.ko", "kernel/c/ip6_udp_tunnel.ko", "kernel/a/vxlan.ko", "kernel/d/veth.ko"]
        );
        assert!(load_order(&dep, &["nope"]).unwrap_err().to_string().contains("no module nope"));
    }
}
