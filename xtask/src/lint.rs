//! `cargo xtask lint`: formatting and clippy, in two passes (user crates, then
//! the eBPF crate with nightly) so that feature unification cannot mix them.

use anyhow::{Context, Result};

use crate::{
    build,
    util::{cmd, path_with_tools, root, run, step},
};

/// Runs every check; stops at the first that fails.
pub fn lint() -> Result<()> {
    run(&mut build::cargo(&["fmt", "--all", "--check"])).context("cargo fmt --check (user crates)")?;
    step("fmt (user crates)", "ok");
    run(cmd("cargo", ["+nightly", "fmt", "--check"]).current_dir(root().join("datapath-ebpf")))
        .context("cargo fmt --check (eBPF crate)")?;
    step("fmt (eBPF crate)", "ok");
    build::ebpf()?;
    run(&mut build::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"]))
        .context("clippy, pass 1 (user crates)")?;
    step("clippy pass 1 (user crates)", "ok");
    let target_dir = root().join("target/ebpf");
    run(cmd(
        "cargo",
        [
            "+nightly",
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            target_dir.to_str().context("target path")?,
            "--",
            "-D",
            "warnings",
        ],
    )
    .current_dir(root().join("datapath-ebpf"))
    .env("PATH", path_with_tools()))
    .context("clippy, pass 2 (eBPF crate)")?;
    step("clippy pass 2 (eBPF crate)", "ok");
    Ok(())
}
