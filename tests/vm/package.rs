//! The Debian package on a clean Debian 12 system with systemd: `dpkg -i`,
//! the operator's config and bindings, `systemctl enable --now`, and
//! `datapath status`; then `dpkg -i` of the next build (the next map layout)
//! while one VM pings the other every 10 ms. The package's postinst restarts
//! the service, the new agent takes the datapath over, and no ping is lost.
//! The guest's own script (tests/guest/package-check) takes the steps and
//! prints what it saw; this test judges it.

use std::{fs, path::Path, time::Duration};

use datapath_tests::{
    TempDir,
    cluster::{PHYSNET, PortSpec, network_json},
    guest::{Guest, artifact},
    netns::Netns,
};
use serde_json::{Value, json};

const NET: &str = "7a1f0c3e-5b2d-4e8f-9a6b-3c4d5e6f7a8b";
/// The guest's name: its binding:host_id.
const HOST: &str = "dpguest";
/// How long vm-a pings: the upgrade (dpkg, restart, the new agent's load on
/// an emulated CPU) must end inside it, which the script checks.
const PING_SECONDS: u32 = 60;
/// Under TCG on two shared cores: boot, two installs, and the ping stream.
const STEP: Duration = Duration::from_secs(240);

/// The JSON of the `n`th (from 0) `DP-<prefix> ` line on the console so far.
fn json_at(g: &Guest, prefix: &str, n: usize) -> Value {
    let want = format!("DP-{prefix} ");
    let console = g.console();
    let line = console
        .lines()
        .filter_map(|l| l.trim().strip_prefix(&want))
        .nth(n)
        .unwrap_or_else(|| panic!("no DP-{prefix} line number {n}:\n{console}"));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("DP-{prefix} carries no JSON ({e}): {line}"))
}

#[test]
fn the_package_installs_starts_and_upgrades_under_traffic_without_loss() {
    let share = TempDir::new("pkg-share").unwrap();
    let put = |name: &str, bytes: &[u8]| fs::write(share.path().join(name), bytes).unwrap();
    let (deb, deb_next) = (artifact("DATAPATH_DEB").unwrap(), artifact("DATAPATH_DEB_NEXT").unwrap());
    for (from, to) in [(&deb, "datapath.deb"), (&deb_next, "datapath-next.deb")] {
        fs::copy(from, share.path().join(to)).unwrap();
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/package-check");
    fs::copy(&script, share.path().join("package-check")).unwrap();

    let a = PortSpec::vm("5a5a5a5a-1111-4111-8111-111111111111", NET, "fa:16:3e:5a:00:02", "10.30.0.2", HOST);
    let b = PortSpec::vm("6b6b6b6b-1111-4111-8111-111111111111", NET, "fa:16:3e:6b:00:03", "10.30.0.3", HOST);
    let bindings = json!({
        "networks": [network_json(NET, "net1", "vlan", Some(1100))],
        "ports": [a.to_json(), b.to_json()],
    });
    put("bindings.json", serde_json::to_string_pretty(&bindings).unwrap().as_bytes());
    // What an operator writes: the package's defaults for the pins and the control socket.
    let config = format!(
        "host = \"{HOST}\"\n\
         pin_path = \"/sys/fs/bpf/datapath\"\n\
         bindings = \"/etc/datapath/bindings.json\"\n\
         physical_interface_mappings = [\"{PHYSNET}:uplink0\"]\n"
    );
    put("agent.toml", config.as_bytes());
    let (v_ours, v_next) = (datapath_common::ABI_VERSION, datapath_common::ABI_VERSION + 1);
    put(
        "scenario",
        format!(
            "HOST={HOST}\nUPLINK=uplink0\nTAP_A={}\nMAC_A={}\nIP_A={}\nTAP_B={}\nMAC_B={}\nIP_B={}\n\
             PING_SECONDS={PING_SECONDS}\nNEXT_ABI={v_next}\n",
            a.device(),
            a.mac,
            a.ip,
            b.device(),
            b.mac,
            b.ip
        )
        .as_bytes(),
    );

    let ns = Netns::new("pkg").unwrap();
    let mut g = Guest::boot_system(&ns, "package", share.path(), "package-check").unwrap();
    let system = g.wait_for("SYSTEM", STEP).unwrap();
    assert!(system.starts_with("DP-SYSTEM debian 12.") && system.ends_with("pid1 systemd"), "{system}");

    let version = |v: &Path| {
        let name = v.file_name().unwrap().to_string_lossy().into_owned();
        name.strip_prefix("datapath_").and_then(|n| n.strip_suffix("_amd64.deb")).unwrap().to_string()
    };
    assert_eq!(g.wait_for("INSTALLED", STEP).unwrap(), format!("DP-INSTALLED {}", version(&deb)));
    assert_eq!(g.wait_for("ACTIVE", STEP).unwrap(), "DP-ACTIVE active enabled enabled");
    g.wait_for("STATUS", STEP).unwrap();
    let before = json_at(&g, "STATUS", 0);
    assert_eq!(before["host"], HOST, "{before}");
    assert_eq!(before["abi_version"], v_ours, "{before}");
    assert_eq!(before["ports"]["up"], 3, "both VMs' ports and the uplink wired: {before}");
    assert_eq!(before["bindings_error"], Value::Null, "{before}");

    assert_eq!(g.wait_for("UPGRADED", STEP).unwrap(), format!("DP-UPGRADED {}", version(&deb_next)));
    // The second STATUS line, the upgraded agent's, comes right before PIDS.
    let pids = g.wait_for("PIDS", STEP).unwrap();
    let after = json_at(&g, "STATUS", 1);
    assert_eq!(after["abi_version"], v_next, "the new build runs its own layout: {after}");
    assert_eq!(after["ports"]["up"], 3, "{after}");
    let pids: Vec<&str> = pids.split_whitespace().skip(1).collect();
    assert!(
        pids.len() == 2 && pids[0] != pids[1] && pids[1] != "0",
        "postinst restarted the service: {pids:?}"
    );
    assert_eq!(g.wait_for("RUNS", STEP).unwrap(), "DP-RUNS 2", "one start per package");

    let ping = g.wait_for("PING", Duration::from_secs(PING_SECONDS as u64) + STEP).unwrap();
    let nums: Vec<u64> = ping.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    assert!(nums.len() >= 2 && nums[0] > 1000, "the stream ran through the upgrade: {ping}");
    assert_eq!(nums[0], nums[1], "packets lost across the package upgrade: {ping}");
    assert_eq!(g.wait_for("CONFIG", STEP).unwrap(), "DP-CONFIG kept", "dpkg kept the operator's config");

    g.wait_for("STATS", STEP).unwrap();
    let stats = json_at(&g, "STATS", 0);
    let port = &stats["ports"][0];
    // Counters start anew with a new layout's maps: these are the new build's.
    assert!(port["actions"]["rx"].as_u64().unwrap() > 0, "the pings crossed the new build's program: {port}");
    assert_eq!(port["dropped"], 0, "{port}");
    g.wait_for("DONE", STEP).unwrap();
}
