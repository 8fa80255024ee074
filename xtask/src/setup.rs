//! `cargo xtask setup`: everything the project needs on a fresh Debian
//! machine, idempotent, one line per step, skipping what is present.

use std::{fs, path::Path};

use anyhow::{Context, Result, bail};

use crate::util::{cmd, output, run, step, tools_dir};

/// Debian packages the tests, the demo and the benchmark use.
const PACKAGES: &[&str] = &[
    "iproute2",
    "tcpdump",
    "ethtool",
    "iputils-ping",
    "dnsmasq-base",
    "iperf3",
    "busybox",
    "netsniff-ng",
    "sockperf",
    "iptables",
    "util-linux",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Runs every step.
pub fn setup() -> Result<()> {
    require_root()?;
    check_kernel()?;
    apt_packages()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "xtask must run as root (it installs packages, mounts bpffs and loads eBPF programs); \
             run: sudo -E cargo xtask <command>"
        );
    }
    step("root", "yes");
    Ok(())
}

fn check_kernel() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("the kernel has no BTF (/sys/kernel/btf/vmlinux missing): it needs CONFIG_DEBUG_INFO_BTF");
    }
    if !Path::new("/proc/sys/kernel/unprivileged_bpf_disabled").exists() {
        bail!(
            "the kernel has no BPF syscall (/proc/sys/kernel/unprivileged_bpf_disabled missing): CONFIG_BPF_SYSCALL"
        );
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").context("reading the kernel release")?;
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit()).filter_map(|p| p.parse::<u32>().ok());
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (6, 6) {
        bail!(
            "kernel {} is too old: the datapath attaches with tcx links, which need Linux 6.6+",
            release.trim()
        );
    }
    step("kernel (BTF, BPF, tcx)", &format!("ok ({})", release.trim()));
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(&mut cmd("dpkg-query", ["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step("apt packages", "present");
        return Ok(());
    }
    step("apt packages", &format!("installing {}", missing.join(" ")));
    let fix = format!("apt-get update && apt-get install -y {}", missing.join(" "));
    run(cmd("apt-get", ["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("apt-get update failed; to install by hand: {fix}"))?;
    let mut install = cmd("apt-get", ["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install).with_context(|| format!("installing packages failed; to install by hand: {fix}"))?;
    Ok(())
}

fn nightly() -> Result<()> {
    let list =
        output(&mut cmd("rustup", ["toolchain", "list"])).context("rustup is needed (https://rustup.rs)")?;
    if list.lines().any(|l| l.starts_with("nightly")) {
        step("rust nightly toolchain", "present");
        return Ok(());
    }
    step("rust nightly toolchain", "installing");
    run(&mut cmd("rustup", ["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("installing the nightly toolchain (the eBPF crate needs -Z build-std)")
}

fn rust_src() -> Result<()> {
    let comps = output(&mut cmd("rustup", ["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src (nightly)", "present");
        return Ok(());
    }
    step("rust-src (nightly)", "installing");
    run(&mut cmd("rustup", ["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("adding rust-src to nightly: rustup component add rust-src --toolchain nightly")
}

fn bpf_linker() -> Result<()> {
    let bin = tools_dir().join("bin/bpf-linker");
    if output(&mut cmd(bin.to_str().context("tools path")?, ["--version"]))
        .is_ok_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        step("bpf-linker", &format!("present ({})", bin.display()));
        return Ok(());
    }
    // bpf-linker must link against the LLVM the nightly rustc emits bitcode for;
    // the system LLVM is too old, and the nightly ships its own libLLVM.
    let sysroot = output(&mut cmd("rustc", ["+nightly", "--print", "sysroot"]))?.trim().to_string();
    let libdir = Path::new(&sysroot).join("lib");
    let soname = fs::read_dir(&libdir)
        .with_context(|| format!("listing {}", libdir.display()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    let version = output(&mut cmd("rustc", ["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV shows no LLVM version")?
        .to_string();
    let prefix = tools_dir().join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(libdir.join(&soname), &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    step("bpf-linker", &format!("building {BPF_LINKER_VERSION} against nightly LLVM {llvm_major} (~1 min)"));
    let feature = format!("llvm-{llvm_major}");
    run(cmd(
        "cargo",
        [
            "+nightly",
            "install",
            "bpf-linker",
            "--locked",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &feature,
            "--root",
            tools_dir().to_str().context("tools path")?,
        ],
    )
    .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker (see the recipe in docs/testing.md)")
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 2 && f[1] == "/sys/fs/bpf" && f[2] == "bpf"
    }) {
        step("bpffs at /sys/fs/bpf", "mounted");
        return Ok(());
    }
    step("bpffs at /sys/fs/bpf", "mounting");
    run(&mut cmd("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"])).context("mounting bpffs at /sys/fs/bpf")
}
