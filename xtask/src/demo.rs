//! `cargo xtask demo`: builds, then runs the demo binary of the test harness
//! (tests/src/bin/demo.rs), which builds the seed scenario in namespaces.

use anyhow::{Context, Result};

use crate::{ebpf, user, util::run};

/// Runs the demo; `pause` keeps the cluster up until Enter.
pub fn demo(pause: bool) -> Result<()> {
    let obj = ebpf::build()?;
    let bin = user::build(&obj, true)?;
    let mut args = vec!["run", "--quiet", "--release", "-p", "datapath-tests", "--bin", "demo"];
    if pause {
        args.extend(["--", "--pause"]);
    }
    run(user::cargo(&obj, args).env("DATAPATH_BIN", bin)).context("the demo failed")
}
