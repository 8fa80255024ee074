//! `cargo xtask deb`: the Debian package of the agent, built with dpkg-deb
//! (every Debian system has it; no packaging crate needed for five files).
//!
//! The package holds the `datapath` binary, the systemd unit, a commented
//! config (a conffile: an upgrade keeps the operator's), and the docs. Its
//! maintainer scripts never stop the datapath: on upgrade the unit is
//! restarted, which swaps the agent while the programs keep forwarding, as
//! every agent restart does; on removal the agent stops and the datapath
//! stays until `datapath agent --cleanup`.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, ensure};

use crate::util::{cmd, root, run, step};

/// The package's name.
pub const PACKAGE: &str = "datapath";

/// The systemd unit the package installs (also shown in docs/operations.md).
pub const UNIT: &str = "\
[Unit]
Description=eBPF L2 datapath agent (Neutron)
Documentation=file:///usr/share/doc/datapath/operations.md
After=network-pre.target
Wants=network-pre.target
ConditionPathExists=/etc/datapath/agent.toml

[Service]
ExecStart=/usr/bin/datapath agent --config /etc/datapath/agent.toml
Restart=always
KillSignal=SIGTERM

[Install]
WantedBy=multi-user.target
";

/// The config the package installs: every option commented, with its default.
pub const CONFIG: &str = "\
# datapath agent config (docs: /usr/share/doc/datapath/config.md).
# The service starts once the required options are set:
#   systemctl enable --now datapath

# Required: the binding:host_id this agent serves.
# host = \"compute-1\"
# Required: the bpffs directory of the pinned maps and links.
# pin_path = \"/sys/fs/bpf/datapath\"
# The ports come from neutron-server over its agent RPC...
# transport_url = \"rabbit://neutron:secret@controller:5672/\"
# report_interval = 30
# ...or from a bindings file.
# bindings = \"/etc/datapath/bindings.json\"
# physical_network:interface, any number.
# physical_interface_mappings = [\"physnet1:eth1\"]
# local_ip = \"192.0.2.10\"
# tunnel_types = [\"vxlan\"]
# control_socket = \"/run/datapath/datapath.sock\"
# mac_age_seconds = 300
# tc_hook = \"auto\"
# xdp = \"auto\"
# untagged_to_host = false
# metrics_address = \"127.0.0.1:9110\"
# log_format = \"text\"
";

const POSTINST: &str = "\
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    # An upgrade swaps the running agent; the programs keep forwarding meanwhile.
    if [ \"$1\" = configure ] && [ -n \"$2\" ]; then
        systemctl try-restart datapath.service >/dev/null || true
    fi
fi
";

const PRERM: &str = "\
#!/bin/sh
set -e
# Only on removal: an upgrade keeps the agent running until postinst restarts it.
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop datapath.service >/dev/null || true
fi
";

const POSTRM: &str = "\
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
";

/// Builds the package from the release binary `bin`; returns its path under target/deb/.
pub fn build(bin: &Path) -> Result<PathBuf> {
    package(bin, &version()?, &root().join("target/deb"))
}

/// The two packages of the VM layer's upgrade test, under target/deb/test/:
/// this build's, and the next map layout's test build (`next_bin`) one
/// version later, so that dpkg upgrades from the first to the second.
pub fn upgrade_pair(bin: &Path, next_bin: &Path) -> Result<(PathBuf, PathBuf)> {
    let dir = root().join("target/deb/test");
    let v = version()?;
    Ok((package(bin, &v, &dir)?, package(next_bin, &format!("{v}+abinext"), &dir)?))
}

/// Builds the package of `bin` at `version` into `dir`; returns its path.
fn package(bin: &Path, version: &str, dir: &Path) -> Result<PathBuf> {
    step("deb", &format!("{PACKAGE} {version}"));
    let stage = dir.join("stage");
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let put = |path: &str, bytes: &[u8], mode: u32| -> Result<()> {
        let p = stage.join(path);
        fs::create_dir_all(p.parent().expect("a file in a directory"))?;
        fs::write(&p, bytes).with_context(|| format!("writing {}", p.display()))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    put("usr/bin/datapath", &fs::read(bin).with_context(|| format!("reading {}", bin.display()))?, 0o755)?;
    put("lib/systemd/system/datapath.service", UNIT.as_bytes(), 0o644)?;
    put("etc/datapath/agent.toml", CONFIG.as_bytes(), 0o644)?;
    put("usr/share/doc/datapath/README.md", &fs::read(root().join("README.md"))?, 0o644)?;
    for entry in fs::read_dir(root().join("docs")).context("reading docs/")? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "md") {
            let name = path.file_name().expect("a file").to_string_lossy().into_owned();
            put(&format!("usr/share/doc/datapath/{name}"), &fs::read(&path)?, 0o644)?;
        }
    }
    let control = format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: amd64\n\
         Maintainer: datapath developers <datapath@localhost>\n\
         Section: net\n\
         Priority: optional\n\
         Depends: libc6 (>= 2.36), libgcc-s1\n\
         Description: eBPF/XDP datapath for OpenStack Neutron\n \
         Replaces the Open vSwitch hybrid L2 datapath of Neutron's OVS agent on\n \
         compute and network nodes: TC programs on the taps and the physical NICs,\n \
         kernel maps filled from Neutron's port bindings.\n"
    );
    put("DEBIAN/control", control.as_bytes(), 0o644)?;
    put("DEBIAN/conffiles", b"/etc/datapath/agent.toml\n", 0o644)?;
    put("DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put("DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put("DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let out = dir.join(format!("{PACKAGE}_{version}_amd64.deb"));
    let mut c = cmd("dpkg-deb", ["--build", "--root-owner-group"]);
    c.arg(&stage).arg(&out);
    run(&mut c).context("building the package with dpkg-deb")?;
    verify(&out)?;
    step("deb", &format!("built {}", out.display()));
    Ok(out)
}

/// The package's version: the workspace's, then the commit count and hash,
/// so that every later commit's package is an upgrade of an earlier one's.
fn version() -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let out = cmd("git", args).current_dir(root()).output().context("running git")?;
        ensure!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let count = git(&["rev-list", "--count", "HEAD"])?;
    let hash = git(&["rev-parse", "--short=10", "HEAD"])?;
    Ok(format!("{}+{count}.g{hash}", env!("CARGO_PKG_VERSION")))
}

/// Checks the built package as dpkg reads it: its fields and its files.
fn verify(deb: &Path) -> Result<()> {
    let field = |name: &str| -> Result<String> {
        let out = cmd("dpkg-deb", ["--field"]).arg(deb).arg(name).output()?;
        ensure!(out.status.success(), "dpkg-deb --field {name}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    ensure!(field("Package")? == PACKAGE, "the package's name");
    let out = cmd("dpkg-deb", ["--contents"]).arg(deb).output()?;
    let listing = String::from_utf8_lossy(&out.stdout);
    for file in [
        "./usr/bin/datapath",
        "./lib/systemd/system/datapath.service",
        "./etc/datapath/agent.toml",
        "./usr/share/doc/datapath/operations.md",
    ] {
        ensure!(listing.lines().any(|l| l.ends_with(file)), "{} lacks {file}:\n{listing}", deb.display());
    }
    ensure!(
        listing.lines().any(|l| l.starts_with("-rwxr-xr-x root/root") && l.ends_with("./usr/bin/datapath")),
        "the binary is not root's and executable:\n{listing}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config the package ships is the agent's syntax with every option
    /// commented: uncommenting them (the bindings file, not the bus) gives a
    /// config that the agent loads.
    #[test]
    fn the_shipped_config_loads_once_its_options_are_uncommented() {
        let uncommented: String = CONFIG
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains(" = "))
            .filter(|l| !l.starts_with("transport_url") && !l.starts_with("report_interval"))
            .map(|l| format!("{l}\n"))
            .collect();
        let cfg = datapath_user::config::Config::parse_str(&uncommented, "the package's agent.toml")
            .unwrap_or_else(|e| panic!("{e:#}\n{uncommented}"));
        assert_eq!(cfg.host, "compute-1");
    }

    #[test]
    fn the_unit_runs_the_installed_binary_with_the_installed_config() {
        assert!(UNIT.contains("ExecStart=/usr/bin/datapath agent --config /etc/datapath/agent.toml"));
        assert!(!UNIT.contains("--cleanup"), "stopping the service must leave the datapath forwarding");
    }
}
