//! The Neutron layer's test dependencies: RabbitMQ and MariaDB from apt, and a venv
//! under target/ with neutron pinned and our ML2 mechanism driver installed.
//! Idempotent: a stamp file in the venv records what was installed.

use std::{fs, path::PathBuf, time::Instant};

use anyhow::{Context, Result};

use crate::{
    setup,
    util::{cmd, root, run, secs, step},
};

/// Debian packages of the Neutron layer: the message bus, the database, and venv
/// support for the system Python (neutron 29 needs Python >= 3.11, Debian 12 has 3.11).
const PACKAGES: &[&str] = &["rabbitmq-server", "mariadb-server", "python3-venv"];

/// The Python packages, pinned: neutron itself, the MySQL driver its database URL
/// names, the WSGI server for its API (neutron 29 has no API server of its own), and
/// `wheel`, which the venv's setuptools (66, from Debian's ensurepip) needs to build
/// the driver without build isolation.
const PINS: &[&str] = &["neutron==29.0.0", "PyMySQL==1.2.4", "gunicorn==27.0.1", "wheel==0.48.0"];

/// The venv the Neutron tests run neutron-server from (tests/src/neutron.rs finds it here).
pub fn venv_dir() -> PathBuf {
    root().join("target/neutron/venv")
}

/// The driver package, installed editable so that its code changes need no reinstall.
fn driver_dir() -> PathBuf {
    root().join("neutron-driver")
}

/// Installs what is missing: the apt packages, then the venv; returns the venv.
pub fn setup() -> Result<PathBuf> {
    setup::install_packages("apt packages (Neutron layer)", PACKAGES)?;
    venv()?;
    Ok(venv_dir())
}

/// What the stamp must say for the venv to be current: the pins and the driver's
/// metadata (its entry points are only read at install time).
fn wanted_stamp() -> Result<String> {
    let pyproject = driver_dir().join("pyproject.toml");
    let meta = fs::read_to_string(&pyproject).with_context(|| format!("reading {}", pyproject.display()))?;
    Ok(format!("{}\n{meta}", PINS.join(" ")))
}

fn venv() -> Result<()> {
    let venv = venv_dir();
    let stamp = venv.join("datapath-stamp");
    let wanted = wanted_stamp()?;
    let what = "neutron venv";
    if fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        step(what, &format!("present ({}, {})", PINS[0], venv.display()));
        return Ok(());
    }
    let start = Instant::now();
    // A venv without a matching stamp is half-built or from other pins: start over
    // rather than upgrade in place, so that what runs is exactly what the pins say.
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing the stale venv {}", venv.display()))?;
    }
    step(what, &format!("creating {} with {} (about a minute)", venv.display(), PINS.join(" ")));
    // The system Python, not whatever `python3` is first on PATH: python3-venv is for it.
    run(cmd("/usr/bin/python3", ["-m", "venv"]).arg(&venv))
        .with_context(|| format!("creating the venv {}", venv.display()))?;
    let pip = venv.join("bin/pip");
    run(cmd(&pip, ["install", "-q", "--disable-pip-version-check"]).args(PINS))
        .with_context(|| format!("installing {} into {}", PINS.join(" "), venv.display()))?;
    // No build isolation: the venv's own setuptools builds the driver, with no download.
    run(cmd(&pip, ["install", "-q", "--disable-pip-version-check", "--no-build-isolation", "-e"])
        .arg(driver_dir()))
    .with_context(|| format!("installing the mechanism driver {} into the venv", driver_dir().display()))?;
    fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    step(what, &format!("installed in {}", secs(start)));
    Ok(())
}
