//! Building: the eBPF object with nightly, then the user side with it embedded.

use std::time::Instant;

use anyhow::{Context, Result};

use crate::util::{cmd, ebpf_object, path_with_tools, root, run, step};

/// Builds the eBPF object (nightly, bpfel-unknown-none, build-std=core).
pub fn ebpf() -> Result<()> {
    let start = Instant::now();
    let target_dir = root().join("target/ebpf");
    run(cmd(
        "cargo",
        [
            "+nightly",
            "build",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            target_dir.to_str().context("target path")?,
        ],
    )
    .current_dir(root().join("datapath-ebpf"))
    .env("PATH", path_with_tools())
    // A rustflags/target set for the host must not leak into the BPF build.
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_BUILD_TARGET"))
    .context("building the eBPF object")?;
    let size = std::fs::metadata(ebpf_object()).map(|m| m.len()).unwrap_or(0);
    step("eBPF object", &format!("{} bytes in {:.1}s", size, start.elapsed().as_secs_f64()));
    Ok(())
}

/// A cargo command on the user-side workspace with the eBPF object to embed.
pub fn cargo(args: &[&str]) -> std::process::Command {
    let mut c = cmd("cargo", args);
    c.current_dir(root()).env("DATAPATH_EBPF_OBJ", ebpf_object());
    c
}

/// eBPF object, then `target/release/datapath`.
pub fn all() -> Result<()> {
    ebpf()?;
    let start = Instant::now();
    run(&mut cargo(&["build", "--release", "-p", "datapath-user"]))
        .context("building the datapath binary")?;
    step("target/release/datapath", &format!("built in {:.1}s", start.elapsed().as_secs_f64()));
    Ok(())
}
