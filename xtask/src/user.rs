//! The user-side workspace: cargo with the eBPF object to embed, and the `datapath` binary.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result};

use crate::util::{cmd, root, run, secs, step};

/// `cargo ARGS` at the workspace root, with `DATAPATH_EBPF_OBJ` so that
/// datapath-user's build script embeds `obj` (an empty placeholder otherwise).
pub fn cargo<S: AsRef<std::ffi::OsStr>>(obj: &Path, args: impl IntoIterator<Item = S>) -> Command {
    let mut c = cmd("cargo", args);
    c.current_dir(root()).env("DATAPATH_EBPF_OBJ", obj);
    c
}

/// Builds the `datapath` binary embedding `obj` and returns its path.
pub fn build(obj: &Path, release: bool) -> Result<PathBuf> {
    let start = Instant::now();
    let profile = if release { "release" } else { "debug" };
    step("datapath binary", &format!("building ({profile})"));
    let mut args = vec!["build", "-p", "datapath-user"];
    if release {
        args.push("--release");
    }
    run(&mut cargo(obj, args)).context("building the datapath binary")?;
    let bin = root().join("target").join(profile).join("datapath");
    step("datapath binary", &format!("built in {} ({})", secs(start), bin.display()));
    Ok(bin)
}
