//! `cargo xtask demo`: builds, then runs the demo binary of the test harness
//! (tests/src/bin/demo.rs), which builds the seed scenario in namespaces.

use anyhow::{Context, Result};

use crate::{ebpf, user, util::run};

/// Runs the demo; `pause` keeps the cluster up until Enter; `neutron` tells the
/// story through a real neutron-server.
pub fn demo(pause: bool, neutron: bool) -> Result<()> {
    let obj = ebpf::build()?;
    let bin = user::build(&obj, true)?;
    let venv = if neutron { Some(crate::neutron::setup()?) } else { None };
    let mut args = vec!["run", "--quiet", "--release", "-p", "datapath-tests", "--bin", "demo", "--"];
    if pause {
        args.push("--pause");
    }
    if neutron {
        args.push("--neutron");
    }
    let mut cargo = user::cargo(&obj, args);
    cargo.env("DATAPATH_BIN", bin);
    if let Some(venv) = venv {
        cargo.env("DATAPATH_NEUTRON_VENV", venv);
    }
    run(&mut cargo).context("the demo failed")
}
