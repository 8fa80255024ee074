//! `cargo xtask setup`: everything the project needs on a fresh Debian machine.
//! Idempotent: one line per step, and only what is missing is installed.

use std::{fs, os::unix::fs::symlink, path::Path, time::Instant};

use anyhow::{Context, Result, bail};

use crate::util::{cmd, output, run, secs, step, tools_dir};

/// Debian packages the tests, the demo and the benchmarks run.
const PACKAGES: &[&str] = &[
    "iproute2",
    "tcpdump",
    "ethtool",
    "iputils-ping",
    "dnsmasq-base",
    "iperf3",
    // udhcpc, the DHCP client of the test VMs.
    "busybox",
    // nsenter; essential on Debian, listed because the tests start agents with it.
    "util-linux",
    "netsniff-ng",
    "sockperf",
    "iptables",
    // The bench's legacy chain: the hybrid firewall's ipsets of remote groups.
    "ipset",
    "python3-scapy",
];

/// Debian packages of the VM layers (`cargo xtask test --vm`): QEMU, and what
/// builds the system guest's disk. The guest kernel and busybox are downloaded
/// as .debs and unpacked, not installed.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "mmdebstrap", "e2fsprogs"];

/// Debian packages of `cargo xtask fuzz inputs`: libfuzzer-sys compiles libFuzzer (C++).
const FUZZ_PACKAGES: &[&str] = &["g++"];

/// Components of the nightly toolchain: `-Z build-std` needs the sources, and
/// `lint` runs nightly fmt and clippy on the eBPF crate (a minimal profile lacks both).
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "rustfmt", "clippy"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz, for `cargo xtask fuzz inputs` (libFuzzer on the nightly toolchain).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Runs every step; `command` is the xtask command, for the hint when not root.
pub fn setup(command: &str) -> Result<()> {
    require_root(command)?;
    check_kernel()?;
    apt_packages()?;
    nightly()?;
    nightly_components()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn require_root(command: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "xtask must run as root (it installs packages, mounts bpffs and loads eBPF programs); \
             run: sudo -E cargo xtask {command}"
        );
    }
    step("root", "yes");
    Ok(())
}

fn check_kernel() -> Result<()> {
    if !Path::new("/sys/kernel/btf/vmlinux").exists() {
        bail!("the kernel has no BTF: /sys/kernel/btf/vmlinux is missing (needs CONFIG_DEBUG_INFO_BTF=y)");
    }
    let bpf_files = ["/proc/sys/net/core/bpf_jit_enable", "/proc/sys/kernel/unprivileged_bpf_disabled"];
    if !bpf_files.iter().any(|f| Path::new(f).exists()) {
        bail!(
            "the kernel has no BPF syscall: neither {} exists (needs CONFIG_BPF_SYSCALL=y)",
            bpf_files.join(" nor ")
        );
    }
    let release =
        fs::read_to_string("/proc/sys/kernel/osrelease").context("reading /proc/sys/kernel/osrelease")?;
    let release = release.trim();
    // 6.1 is the oldest kernel the suite runs on (its lts-kernel layer); 6.6 brings tcx.
    let version = kernel_version(release);
    if version < (6, 1) {
        bail!(
            "kernel {release} is too old: the datapath is tested on Linux 6.1 and newer \
             (docs/operations.md, \"Kernels\")"
        );
    }
    let hook = if version >= (6, 6) { "tcx" } else { "no tcx: netlink cls_bpf" };
    step("kernel (BTF, BPF syscall)", &format!("present ({release}, {hook})"));
    Ok(())
}

/// `(major, minor)` of a release string such as `6.18.44-foo`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse().unwrap_or(0));
    (nums.next().unwrap_or(0), nums.next().unwrap_or(0))
}

fn installed(pkg: &str) -> bool {
    output(&mut cmd("dpkg-query", ["-W", "-f=${Status}", pkg]))
        .is_ok_and(|s| s.contains("install ok installed"))
}

fn apt_packages() -> Result<()> {
    install_packages("apt packages", PACKAGES)
}

/// Installs QEMU for the VM test layers, if it is missing.
pub fn vm_packages() -> Result<()> {
    install_packages("apt packages (VM layers)", VM_PACKAGES)
}

/// What `cargo xtask fuzz inputs` needs: a C++ compiler for libFuzzer, and
/// cargo-fuzz in `.tools`. Returns cargo-fuzz's path.
pub fn fuzz_tools() -> Result<std::path::PathBuf> {
    install_packages("apt packages (fuzzing)", FUZZ_PACKAGES)?;
    let bin = tools_dir().join("bin/cargo-fuzz");
    if output(&mut cmd(&bin, ["--version"])).is_ok_and(|v| v.contains(CARGO_FUZZ_VERSION)) {
        step("cargo-fuzz", &format!("present ({})", bin.display()));
        return Ok(bin);
    }
    let start = Instant::now();
    step("cargo-fuzz", &format!("installing {CARGO_FUZZ_VERSION} (about 1 min)"));
    let mut install = cmd(
        "cargo",
        ["install", "cargo-fuzz", "--locked", "--force", "--version", CARGO_FUZZ_VERSION, "--root"],
    );
    install.arg(tools_dir());
    run(&mut install).context("installing cargo-fuzz")?;
    step("cargo-fuzz", &format!("installed in {} ({})", secs(start), bin.display()));
    Ok(bin)
}

/// Installs the `packages` that are missing, in one apt run; `what` names them in the progress line.
pub fn install_packages(what: &str, packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        step(what, "present");
        return Ok(());
    }
    let start = Instant::now();
    step(what, &format!("installing {}", missing.join(" ")));
    let by_hand = format!(
        "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    run(cmd("apt-get", ["update", "-qq"]).env("DEBIAN_FRONTEND", "noninteractive"))
        .with_context(|| format!("could not install {}; to do it by hand: {by_hand}", missing.join(" ")))?;
    let mut install = cmd("apt-get", ["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut install)
        .with_context(|| format!("could not install {}; to do it by hand: {by_hand}", missing.join(" ")))?;
    step(what, &format!("installed in {}", secs(start)));
    Ok(())
}

fn nightly() -> Result<()> {
    let list = output(&mut cmd("rustup", ["toolchain", "list"]))
        .context("rustup is needed to manage the nightly toolchain (https://rustup.rs)")?;
    // `+nightly` means the undated channel: `nightly-<host>`, not `nightly-2026-05-19-<host>`.
    let present = list.lines().filter_map(|l| l.split_whitespace().next()).any(|t| {
        t.strip_prefix("nightly-").is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
    });
    if present {
        step("rust nightly toolchain", "present");
        return Ok(());
    }
    let start = Instant::now();
    step("rust nightly toolchain", "installing (the eBPF crate needs -Z build-std)");
    run(&mut cmd("rustup", ["toolchain", "install", "nightly", "--profile", "minimal"]))
        .context("installing the nightly toolchain")?;
    step("rust nightly toolchain", &format!("installed in {}", secs(start)));
    Ok(())
}

fn nightly_components() -> Result<()> {
    let list = output(&mut cmd("rustup", ["component", "list", "--toolchain", "nightly", "--installed"]))?;
    // Installed components are listed as `rustfmt-x86_64-unknown-linux-gnu`, or bare for `rust-src`.
    let has = |c: &str| list.lines().any(|l| l.trim() == c || l.trim().starts_with(&format!("{c}-")));
    let missing: Vec<&str> = NIGHTLY_COMPONENTS.iter().copied().filter(|c| !has(c)).collect();
    let what = format!("nightly {}", NIGHTLY_COMPONENTS.join(", "));
    if missing.is_empty() {
        step(&what, "present");
        return Ok(());
    }
    let start = Instant::now();
    step(&what, &format!("adding {}", missing.join(" ")));
    let mut add = cmd("rustup", ["component", "add", "--toolchain", "nightly"]);
    add.args(&missing);
    run(&mut add).context("adding nightly components")?;
    step(&what, &format!("added in {}", secs(start)));
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let bin = tools_dir().join("bin/bpf-linker");
    // Running it also proves that its rpath links to the nightly's libLLVM still resolve.
    if output(&mut cmd(&bin, ["--version"])).is_ok_and(|v| v.contains(BPF_LINKER_VERSION)) {
        step("bpf-linker", &format!("present ({})", bin.display()));
        return Ok(());
    }
    let start = Instant::now();
    // The system LLVM is too old for bpf-linker, and it must in any case match the LLVM
    // the nightly rustc emits bitcode for: link it against the nightly's own libLLVM.
    let sysroot = output(&mut cmd("rustc", ["+nightly", "--print", "sysroot"]))?;
    let nightly_lib = Path::new(sysroot.trim()).join("lib");
    let soname = fs::read_dir(&nightly_lib)
        .with_context(|| format!("listing {}", nightly_lib.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("the nightly toolchain has no libLLVM.so.* in {}", nightly_lib.display()))?;
    let version = output(&mut cmd("rustc", ["+nightly", "-vV"]))?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.trim().split('.').next())
        .context("`rustc +nightly -vV` shows no `LLVM version:` line")?;
    let prefix = tools_dir().join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    // bpf-linker's build script wants `libLLVM.so`; its binary loads the soname through an rpath.
    for link in [lib.join("libLLVM.so"), lib.join(&soname)] {
        let _ = fs::remove_file(&link);
        symlink(nightly_lib.join(&soname), &link)
            .with_context(|| format!("creating the link {}", link.display()))?;
    }
    step(
        "bpf-linker",
        &format!("building {BPF_LINKER_VERSION} against the nightly's LLVM {llvm_major} (about 1 min)"),
    );
    let feature = format!("llvm-{llvm_major}");
    let mut install = cmd(
        "cargo",
        [
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--no-default-features",
            "--features",
            &feature,
            // A binary whose libLLVM is gone is "installed" as far as cargo knows.
            "--force",
            "--root",
        ],
    );
    install.arg(tools_dir()).env("LLVM_PREFIX", &prefix);
    run(&mut install).context("building bpf-linker")?;
    output(&mut cmd(&bin, ["--version"])).context("the freshly built bpf-linker does not run")?;
    step("bpf-linker", &format!("built in {} ({})", secs(start), bin.display()));
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    let mounted = mounts.lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
    });
    if mounted {
        step("bpffs at /sys/fs/bpf", "present");
        return Ok(());
    }
    step("bpffs at /sys/fs/bpf", "mounting");
    run(&mut cmd("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"])).context("mounting bpffs at /sys/fs/bpf")
}

#[cfg(test)]
mod tests {
    use super::kernel_version;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), (6, 18));
        assert_eq!(kernel_version("6.6.0"), (6, 6));
        assert_eq!(kernel_version("5.15.0-91-generic"), (5, 15));
        assert!(kernel_version("6.1.0-18-amd64") < (6, 6));
        assert_eq!(kernel_version("garbage"), (0, 0));
    }
}
