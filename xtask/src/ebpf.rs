//! The eBPF object. The eBPF crate sits outside the user workspace and is built
//! with nightly (`-Z build-std=core` for bpfel-unknown-none), so that feature
//! unification with the user side can never pull `std` into it.

use std::{path::PathBuf, process::Command, time::Instant};

use anyhow::{Context, Result};

use crate::util::{cmd, path_with_tools, root, run, secs, step};

const TARGET: &str = "bpfel-unknown-none";

fn target_dir() -> PathBuf {
    root().join("target/ebpf")
}

/// Where `build` leaves the object that `DATAPATH_EBPF_OBJ` points the user side at.
pub fn object() -> PathBuf {
    target_dir().join(TARGET).join("release/datapath")
}

/// `cargo +nightly <subcommand>` on the eBPF crate for the BPF target, release profile.
pub fn cargo(subcommand: &str) -> Command {
    cargo_in(subcommand, &target_dir())
}

/// Like `cargo`, with its own target directory.
fn cargo_in(subcommand: &str, dir: &std::path::Path) -> Command {
    let mut c = cmd(
        "cargo",
        ["+nightly", subcommand, "--release", "--target", TARGET, "-Z", "build-std=core", "--target-dir"],
    );
    c.arg(dir)
        .current_dir(root().join("datapath-ebpf"))
        .env("PATH", path_with_tools())
        // Host-oriented flags from the caller's environment must not reach the BPF build.
        // --btf: bpf-linker turns the debug info into BTF and BTF.ext; the kernel needs
        // their func_info to verify the bpf_loop callbacks (and names maps and types).
        // --disable-expand-memcpy-in-order: with it on (bpf-linker's default), LLVM
        // expands no memset at all, and every zeroed key or struct became a call to a
        // byte-at-a-time loop (64 iterations for a flow, on every packet the
        // security groups see); off, memsets and memcpys are plain stores.
        .env("RUSTFLAGS", "-C link-arg=--btf -C link-arg=--disable-expand-memcpy-in-order")
        .env_remove("CARGO_BUILD_TARGET");
    c
}

/// Builds the object of the `abi-next` test build (another map layout
/// version) into a target directory of its own, and returns its path.
pub fn build_abi_next() -> Result<PathBuf> {
    let start = Instant::now();
    step("eBPF object (abi-next)", "building the upgrade tests' other layout version");
    let dir = root().join("target/ebpf-abi-next");
    let mut c = cargo_in("build", &dir);
    c.args(["--features", "abi-next"]);
    run(&mut c).context("building the abi-next eBPF object")?;
    let obj = dir.join(TARGET).join("release/datapath");
    step("eBPF object (abi-next)", &format!("built in {} ({})", secs(start), obj.display()));
    Ok(obj)
}

/// Builds the object and returns its path.
pub fn build() -> Result<PathBuf> {
    let start = Instant::now();
    step("eBPF object", "building (cargo +nightly, bpfel-unknown-none)");
    run(&mut cargo("build")).context("building the eBPF object")?;
    let obj = object();
    let size = std::fs::metadata(&obj)
        .with_context(|| format!("the eBPF build succeeded but left no object at {}", obj.display()))?
        .len();
    step("eBPF object", &format!("{size} bytes in {} ({})", secs(start), obj.display()));
    Ok(obj)
}
