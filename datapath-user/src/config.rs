//! Agent configuration: a TOML file whose option names follow Neutron's agents.
//!
//! ```toml
//! host = "node0"
//! physical_interface_mappings = ["default:eth2"]
//! bindings = "/etc/datapath/bindings.json"
//! pin_path = "/sys/fs/bpf/datapath/node0"
//! control_socket = "/run/datapath/datapath.sock"
//! mac_age_seconds = 300
//! local_ip = "192.0.2.10"
//! tunnel_types = ["vxlan"]
//! tc_hook = "auto"        # or "tcx", or "netlink"
//! xdp = "auto"            # or "native", or "off": the uplinks' XDP stage
//! untagged_to_host = false  # true: the uplinks' unclaimed untagged frames go to the host
//! metrics_address = "127.0.0.1:9110"   # Prometheus; off unless set
//! log_format = "text"     # or "json": one object per line
//! ```
//!
//! The ports come from exactly one source: the `bindings` file, or
//! neutron-server over its agent RPC when `transport_url` is set (with the
//! `[agent]` options of Neutron's L2 agents, e.g. `report_interval = 30`).

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Deserialize;

/// Where the control socket lives unless the config says otherwise.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/datapath/datapath.sock";

// OVS's default mac-aging-time, so learned entries behave as operators expect.
const DEFAULT_MAC_AGE_SECONDS: u64 = 300;
// A day: anything longer means stale entries effectively never leave.
const MAX_MAC_AGE_SECONDS: u64 = 86_400;

/// The agent's configuration, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The binding:host_id this agent serves.
    pub host: String,
    /// Which interface carries each physical network, in file order.
    pub physical_interface_mappings: Vec<PhysnetMapping>,
    /// Where the ports come from.
    pub source: Source,
    /// The bpffs directory for this agent's pins (always absolute).
    pub pin_path: PathBuf,
    /// The control socket path.
    pub control_socket: PathBuf,
    /// How long a learned MAC lives without traffic, in seconds (1..=86400).
    pub mac_age_seconds: u64,
    /// The local VTEP IPv4 address, if any.
    pub local_ip: Option<Ipv4Addr>,
    /// Enabled tunnel types (only "vxlan").
    pub tunnel_types: Vec<String>,
    /// How programs are hooked into TC ingress.
    pub tc_hook: TcHook,
    /// Where the uplinks' XDP stage runs.
    pub xdp: XdpChoice,
    /// Untagged frames no flat network claims go to the host stack (the
    /// node's address on the uplink), not dropped.
    pub untagged_to_host: bool,
    /// Where the Prometheus metrics are served (`/metrics`); None: not served.
    pub metrics_address: Option<SocketAddr>,
    /// How the agent writes its log lines.
    pub log_format: LogFormat,
}

/// The `log_format` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's lines: time, level, target, message.
    #[default]
    Text,
    /// One JSON object per line (`ts`, `level`, `target`, `msg`), for journald and log shippers.
    Json,
}

/// Where the agent learns its ports: a bindings file, or neutron-server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The bindings file (made relative to the config's directory by `load`).
    File(PathBuf),
    /// neutron-server over the agent RPC.
    Neutron(NeutronOptions),
}

/// The options of the Neutron source, named as Neutron's agents name them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeutronOptions {
    /// `rabbit://user:pass@host:port/vhost`, as in neutron.conf.
    pub transport_url: String,
    /// Seconds between state reports (`[agent] report_interval`).
    pub report_interval: u64,
}

impl NeutronOptions {
    /// The transport URL with its passwords masked, for logs and status.
    pub fn display_url(&self) -> String {
        redact(&self.transport_url, &self.transport_url)
    }
}

/// `text` with every password of `url` replaced by `***` (errors quote the URL and its parts).
fn redact(url: &str, text: &str) -> String {
    let netloc = url.split_once("://").map_or(url, |(_, r)| r);
    let netloc = netloc.split_once('/').map_or(netloc, |(n, _)| n);
    let mut out = text.to_string();
    for host in netloc.split(',') {
        if let Some((cred, _)) = host.rsplit_once('@')
            && let Some((_, password)) = cred.split_once(':')
            && !password.is_empty()
        {
            out = out.replace(password, "***");
        }
    }
    out
}

// Neutron's [agent] report_interval default.
const DEFAULT_REPORT_INTERVAL: u64 = 30;

/// The `tc_hook` option: tcx links where the kernel has them (6.6+), else
/// netlink cls_bpf filters; or one of the two, forced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcHook {
    /// Probe the kernel: tcx if it has it, netlink otherwise.
    #[default]
    Auto,
    /// tcx links only; refuse to start on a kernel without them.
    Tcx,
    /// Netlink cls_bpf filters, even where tcx exists (e.g. beside tools that manage tc filters).
    Netlink,
}

/// The `xdp` option: the XDP stage on the physical uplinks, in the driver
/// (native mode) only; generic XDP is slower than the TC stage alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpChoice {
    /// Native XDP where the driver has it and it pays (not on veth: see
    /// docs/architecture.md), the TC stage alone elsewhere.
    #[default]
    Auto,
    /// Native XDP on every uplink; refuse to start where a driver lacks it.
    Native,
    /// The TC stage alone.
    Off,
}

/// One `physical_network:interface` entry of `physical_interface_mappings`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhysnetMapping {
    /// The Neutron physical network name (provider:physical_network).
    pub physical_network: String,
    /// The Linux interface that carries it.
    pub interface: String,
}

// The file as written; `Config::validate` turns it into a `Config`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    host: String,
    #[serde(default)]
    physical_interface_mappings: Vec<String>,
    bindings: Option<PathBuf>,
    transport_url: Option<String>,
    // Signed so that a negative value gets the range message, not a type error.
    report_interval: Option<i64>,
    pin_path: PathBuf,
    control_socket: Option<PathBuf>,
    // Signed so that a negative value gets the range message, not a type error.
    mac_age_seconds: Option<i64>,
    // A string so that a bad address gets our message naming the field.
    local_ip: Option<String>,
    #[serde(default)]
    tunnel_types: Vec<String>,
    tc_hook: Option<String>,
    xdp: Option<String>,
    #[serde(default)]
    untagged_to_host: bool,
    // A string so that a bad address gets our message naming the field.
    metrics_address: Option<String>,
    log_format: Option<String>,
}

impl Config {
    /// Reads and validates the config at `path`; a relative `bindings` is taken from the file's directory.
    pub fn load(path: &Path) -> Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
        let mut cfg = Config::parse_str(&text, &path.display().to_string())?;
        // Relative to the config file rather than the working directory, so the
        // agent behaves the same whatever directory it was started from.
        if let Source::File(bindings) = &mut cfg.source
            && bindings.is_relative()
        {
            let dir = path.parent().unwrap_or(Path::new(""));
            *bindings = dir.join(&*bindings);
        }
        Ok(cfg)
    }

    /// Parses and validates config text; `origin` names its source in errors.
    pub fn parse_str(text: &str, origin: &str) -> Result<Config> {
        // toml's Display carries the line, column and an excerpt of the offending spot.
        let raw: RawConfig = toml::from_str(text).map_err(|e| anyhow!("config {origin}: {e}"))?;
        // Flattened so that a plain `{}` shows where and what, not just the outer context.
        Config::validate(raw).map_err(|e| anyhow!("config {origin}: {e:#}"))
    }

    /// This node's VTEP address, when tunnels are configured.
    pub fn tunnel_ip(&self) -> Option<Ipv4Addr> {
        self.local_ip.filter(|_| self.tunnel_types.iter().any(|t| t == "vxlan"))
    }

    /// The interface mapped to `physnet`, if any.
    pub fn interface_for(&self, physnet: &str) -> Option<&str> {
        self.physical_interface_mappings
            .iter()
            .find(|m| m.physical_network == physnet)
            .map(|m| m.interface.as_str())
    }

    fn validate(raw: RawConfig) -> Result<Config> {
        ensure!(
            !raw.host.trim().is_empty(),
            "host is empty; it must be the binding:host_id this agent serves"
        );
        // binding:host_id is compared exactly, so stray spaces would match no port.
        ensure!(raw.host.trim() == raw.host, "host {:?} has leading or trailing whitespace", raw.host);

        let physical_interface_mappings = parse_mappings(&raw.physical_interface_mappings)?;

        let source = match (raw.bindings, raw.transport_url) {
            (Some(_), Some(_)) => {
                bail!("both bindings and transport_url are set; the ports come from one source: remove one")
            }
            (None, None) => bail!(
                "no port source: set bindings (a bindings file) or transport_url (neutron-server's message bus)"
            ),
            (Some(b), None) => {
                ensure!(
                    !b.as_os_str().is_empty(),
                    "bindings is empty; it must be the path of the binding source"
                );
                ensure!(
                    raw.report_interval.is_none(),
                    "report_interval is set but the source is a bindings file; it applies to transport_url only"
                );
                Source::File(b)
            }
            (None, Some(url)) => {
                crate::neutron::transport::TransportUrl::parse(&url)
                    .map_err(|e| anyhow!("{}", redact(&url, &format!("{e:#}"))))?;
                let report_interval = match raw.report_interval {
                    None => DEFAULT_REPORT_INTERVAL,
                    Some(s) => u64::try_from(s)
                        .ok()
                        .filter(|s| (1..=3600).contains(s))
                        .ok_or_else(|| anyhow!("report_interval = {s} is outside 1..=3600"))?,
                };
                Source::Neutron(NeutronOptions { transport_url: url, report_interval })
            }
        };
        // Pins outlive the agent and are found again by path, so it must not depend on the cwd.
        ensure!(
            raw.pin_path.is_absolute(),
            "pin_path {:?} is not absolute; it must be a bpffs directory such as /sys/fs/bpf/datapath/<host>",
            raw.pin_path
        );
        let control_socket = raw.control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
        ensure!(
            !control_socket.as_os_str().is_empty(),
            "control_socket is empty; omit it for {DEFAULT_CONTROL_SOCKET}"
        );

        let mac_age_seconds = match raw.mac_age_seconds {
            None => DEFAULT_MAC_AGE_SECONDS,
            Some(s) => u64::try_from(s)
                .ok()
                .filter(|s| (1..=MAX_MAC_AGE_SECONDS).contains(s))
                .ok_or_else(|| anyhow!("mac_age_seconds = {s} is outside 1..={MAX_MAC_AGE_SECONDS}"))?,
        };

        let local_ip = match &raw.local_ip {
            None => None,
            Some(s) => {
                Some(s.parse::<Ipv4Addr>().map_err(|_| anyhow!("local_ip = {s:?} is not an IPv4 address"))?)
            }
        };

        for (i, t) in raw.tunnel_types.iter().enumerate() {
            ensure!(t == "vxlan", "tunnel_types[{i}] = {t:?} is not supported; only \"vxlan\" is");
        }
        ensure!(
            raw.tunnel_types.is_empty() || local_ip.is_some(),
            "tunnel_types is set but local_ip is missing; tunnels need the local VTEP address"
        );

        let tc_hook = match raw.tc_hook.as_deref() {
            None | Some("auto") => TcHook::Auto,
            Some("tcx") => TcHook::Tcx,
            Some("netlink") => TcHook::Netlink,
            Some(other) => bail!("tc_hook = {other:?} is not one of \"auto\", \"tcx\", \"netlink\""),
        };

        let xdp = match raw.xdp.as_deref() {
            None | Some("auto") => XdpChoice::Auto,
            Some("native") => XdpChoice::Native,
            Some("off") => XdpChoice::Off,
            Some(other) => bail!("xdp = {other:?} is not one of \"auto\", \"native\", \"off\""),
        };

        let metrics_address = match &raw.metrics_address {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|_| {
                anyhow!("metrics_address = {s:?} is not an address and port, such as \"127.0.0.1:9110\" or \"[::]:9110\"")
            })?),
        };

        let log_format = match raw.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => bail!("log_format = {other:?} is not one of \"text\", \"json\""),
        };

        Ok(Config {
            host: raw.host,
            physical_interface_mappings,
            source,
            pin_path: raw.pin_path,
            control_socket,
            mac_age_seconds,
            local_ip,
            tunnel_types: raw.tunnel_types,
            tc_hook,
            xdp,
            untagged_to_host: raw.untagged_to_host,
            metrics_address,
            log_format,
        })
    }
}

fn parse_mappings(entries: &[String]) -> Result<Vec<PhysnetMapping>> {
    let mut out: Vec<PhysnetMapping> = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let m =
            parse_mapping(entry).with_context(|| format!("physical_interface_mappings[{i}] = {entry:?}"))?;
        // The lists are a handful of entries long, so a linear scan is plenty.
        if let Some(j) = out.iter().position(|o| o.physical_network == m.physical_network) {
            bail!(
                "physical_interface_mappings[{i}] = {entry:?}: physical_network {:?} is already mapped by physical_interface_mappings[{j}]",
                m.physical_network
            );
        }
        // One NIC can't carry two physical networks: their VLAN ids would collide on the wire.
        if let Some(j) = out.iter().position(|o| o.interface == m.interface) {
            bail!(
                "physical_interface_mappings[{i}] = {entry:?}: interface {:?} is already mapped by physical_interface_mappings[{j}]",
                m.interface
            );
        }
        out.push(m);
    }
    Ok(out)
}

fn parse_mapping(entry: &str) -> Result<PhysnetMapping> {
    ensure!(entry.matches(':').count() == 1, "expected \"physical_network:interface\" with exactly one ':'");
    let (physnet, iface) = entry.split_once(':').unwrap_or_default();
    // Surrounding spaces are trimmed, as Neutron's parse_mappings does.
    let (physnet, iface) = (physnet.trim(), iface.trim());
    ensure!(!physnet.is_empty(), "the physical_network part is empty");
    ensure!(!iface.is_empty(), "the interface part is empty");
    check_ifname(iface).map_err(anyhow::Error::msg)?;
    Ok(PhysnetMapping { physical_network: physnet.to_string(), interface: iface.to_string() })
}

/// Checks `name` against the kernel's rules for interface names (dev_valid_name).
pub(crate) fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    // IFNAMSIZ is 16 including the terminating NUL.
    if name.len() > 15 {
        return Err(format!("interface name {name:?} is {} bytes long; Linux allows at most 15", name.len()));
    }
    if name == "." || name == ".." {
        return Err(format!("interface name {name:?} is not allowed by Linux"));
    }
    if let Some(c) = name.chars().find(|&c| c == '/' || c == ':' || c == '\0' || c.is_whitespace()) {
        return Err(format!("interface name {name:?} contains {c:?}, which Linux does not allow"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
host = "node0"
bindings = "/etc/datapath/bindings.json"
pin_path = "/sys/fs/bpf/datapath/node0"
"#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse_str(text, "test.toml")
    }

    // The error text as an operator sees it, whichever way it gets printed.
    fn err(text: &str) -> String {
        let e = parse(text).expect_err("config should have been rejected");
        let plain = e.to_string();
        assert_eq!(plain, format!("{e:#}"), "the message should be flat");
        assert!(plain.starts_with("config test.toml: "), "no origin in: {plain}");
        plain
    }

    fn with(extra: &str) -> String {
        format!("{MINIMAL}{extra}\n")
    }

    // A scratch directory unique to this test process and test name.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("datapath-config-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn full_example_parses() {
        let cfg = parse(
            r#"
host = "node0"
physical_interface_mappings = ["default:eth2", "ext:eth3"]
bindings = "/path/to/bindings.json"
pin_path = "/sys/fs/bpf/datapath/node0"
control_socket = "/run/datapath/other.sock"
mac_age_seconds = 60
local_ip = "192.0.2.10"
tunnel_types = ["vxlan"]
tc_hook = "netlink"
metrics_address = "[::1]:9110"
log_format = "json"
"#,
        )
        .unwrap();
        assert_eq!(
            cfg,
            Config {
                host: "node0".into(),
                physical_interface_mappings: vec![
                    PhysnetMapping { physical_network: "default".into(), interface: "eth2".into() },
                    PhysnetMapping { physical_network: "ext".into(), interface: "eth3".into() },
                ],
                source: Source::File("/path/to/bindings.json".into()),
                pin_path: "/sys/fs/bpf/datapath/node0".into(),
                control_socket: "/run/datapath/other.sock".into(),
                mac_age_seconds: 60,
                local_ip: Some(Ipv4Addr::new(192, 0, 2, 10)),
                tunnel_types: vec!["vxlan".into()],
                tc_hook: TcHook::Netlink,
                xdp: XdpChoice::Auto,
                untagged_to_host: false,
                metrics_address: Some("[::1]:9110".parse().unwrap()),
                log_format: LogFormat::Json,
            }
        );
        assert_eq!(cfg.interface_for("default"), Some("eth2"));
        assert_eq!(cfg.interface_for("ext"), Some("eth3"));
        assert_eq!(cfg.interface_for("missing"), None);
    }

    #[test]
    fn defaults() {
        let cfg = parse(MINIMAL).unwrap();
        assert_eq!(cfg.host, "node0");
        assert!(cfg.physical_interface_mappings.is_empty());
        assert_eq!(cfg.control_socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert_eq!(cfg.mac_age_seconds, 300);
        assert_eq!(cfg.local_ip, None);
        assert!(cfg.tunnel_types.is_empty());
        // parse_str has no directory to resolve against, so the path stays as written.
        let cfg = parse(&MINIMAL.replace("/etc/datapath/bindings.json", "b.json")).unwrap();
        assert_eq!(cfg.source, Source::File("b.json".into()));
    }

    #[test]
    fn mappings_trim_spaces_like_neutron() {
        let cfg = parse(&with(r#"physical_interface_mappings = [" default : eth2 "]"#)).unwrap();
        assert_eq!(cfg.interface_for("default"), Some("eth2"));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = err(&with("mac_aging = 10"));
        assert!(e.contains("unknown field `mac_aging`"), "{e}");
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let e = err(&with("local_ip = 192.0.2.10"));
        assert!(e.contains("line 5, column"), "{e}");
    }

    #[test]
    fn wrong_type_is_rejected() {
        let e = err(&with("mac_age_seconds = \"300\""));
        assert!(e.contains("line 5, column 19"), "{e}");
        assert!(e.contains("invalid type: string \"300\""), "{e}");
    }

    #[test]
    fn required_keys() {
        for key in ["host", "pin_path"] {
            let text: String =
                MINIMAL.lines().filter(|l| !l.starts_with(key)).map(|l| format!("{l}\n")).collect();
            let e = err(&text);
            assert!(e.contains(&format!("missing field `{key}`")), "{e}");
        }
        let e = err(&MINIMAL.replace("bindings = \"/etc/datapath/bindings.json\"", ""));
        assert!(e.contains("no port source: set bindings"), "{e}");
    }

    #[test]
    fn neutron_source() {
        let text = MINIMAL.replace(
            "bindings = \"/etc/datapath/bindings.json\"",
            "transport_url = \"rabbit://neutron:s3cret@10.0.0.1:5672,neutron:s3cret@10.0.0.2/\"",
        );
        let cfg = parse(&text).unwrap();
        let Source::Neutron(n) = &cfg.source else { panic!("{:?}", cfg.source) };
        assert_eq!(n.report_interval, 30);
        assert_eq!(n.display_url(), "rabbit://neutron:***@10.0.0.1:5672,neutron:***@10.0.0.2/");
        let cfg = parse(&format!("{text}report_interval = 5\n")).unwrap();
        assert!(matches!(cfg.source, Source::Neutron(NeutronOptions { report_interval: 5, .. })));
        let e = err(&format!("{text}report_interval = 0\n"));
        assert!(e.contains("report_interval = 0 is outside"), "{e}");
        let e = err(&with("transport_url = \"rabbit://h/\""));
        assert!(e.contains("both bindings and transport_url"), "{e}");
        let e = err(&with("report_interval = 10"));
        assert!(e.contains("applies to transport_url only"), "{e}");
        let e = err(&text.replace("rabbit://neutron:s3cret@", "amqp://neutron:s3cret@"));
        assert!(
            e.contains("rabbit://") && !e.contains("s3cret"),
            "the error names the scheme, not the password: {e}"
        );
    }

    #[test]
    fn host_must_be_non_empty() {
        let e = err(&MINIMAL.replace("\"node0\"", "\"\""));
        assert!(e.contains("host is empty"), "{e}");
        let e = err(&MINIMAL.replace("\"node0\"", "\" node0\""));
        assert!(e.contains("host \" node0\" has leading or trailing whitespace"), "{e}");
    }

    #[test]
    fn bad_mapping_entries() {
        let cases = [
            ("eth2", "exactly one ':'"),
            ("a:b:c", "exactly one ':'"),
            (":eth2", "physical_network part is empty"),
            ("default:", "interface part is empty"),
            ("default: ", "interface part is empty"),
            ("default:eth0123456789abc", "is 16 bytes long; Linux allows at most 15"),
            ("default:eth/2", "contains '/'"),
            ("default:eth 2", "contains ' '"),
            ("default:.", "not allowed"),
            ("default:..", "not allowed"),
        ];
        for (entry, want) in cases {
            let e = err(&with(&format!("physical_interface_mappings = [\"ok:eth9\", {entry:?}]")));
            assert!(e.contains(&format!("physical_interface_mappings[1] = {entry:?}: ")), "{entry}: {e}");
            assert!(e.contains(want), "{entry}: {e}");
        }
        // 15 bytes is the longest name Linux takes.
        parse(&with(r#"physical_interface_mappings = ["default:eth0123456789ab"]"#)).unwrap();
    }

    #[test]
    fn duplicate_physnet() {
        let e = err(&with(r#"physical_interface_mappings = ["default:eth2", "default:eth3"]"#));
        assert!(
            e.contains(
                "physical_interface_mappings[1] = \"default:eth3\": physical_network \"default\" is already mapped by physical_interface_mappings[0]"
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicate_interface() {
        let e = err(&with(r#"physical_interface_mappings = ["a:eth2", "b:eth3", "c:eth2"]"#));
        assert!(
            e.contains(
                "physical_interface_mappings[2] = \"c:eth2\": interface \"eth2\" is already mapped by physical_interface_mappings[0]"
            ),
            "{e}"
        );
    }

    #[test]
    fn pin_path_must_be_absolute() {
        let e = err(&MINIMAL.replace("/sys/fs/bpf/datapath/node0", "bpf/node0"));
        assert!(e.contains("pin_path \"bpf/node0\" is not absolute"), "{e}");
    }

    #[test]
    fn empty_paths() {
        let e = err(&MINIMAL.replace("/etc/datapath/bindings.json", ""));
        assert!(e.contains("bindings is empty"), "{e}");
        let e = err(&with("control_socket = \"\""));
        assert!(e.contains("control_socket is empty"), "{e}");
    }

    #[test]
    fn mac_age_range() {
        for bad in ["0", "-1", "86401"] {
            let e = err(&with(&format!("mac_age_seconds = {bad}")));
            assert!(e.contains(&format!("mac_age_seconds = {bad} is outside 1..=86400")), "{e}");
        }
        for good in [1, 86400] {
            let cfg = parse(&with(&format!("mac_age_seconds = {good}"))).unwrap();
            assert_eq!(cfg.mac_age_seconds, good);
        }
    }

    #[test]
    fn local_ip_must_be_ipv4() {
        for bad in ["192.0.2", "2001:db8::1", "node0"] {
            let e = err(&with(&format!("local_ip = {bad:?}")));
            assert!(e.contains(&format!("local_ip = {bad:?} is not an IPv4 address")), "{e}");
        }
    }

    #[test]
    fn xdp_is_auto_unless_named() {
        assert_eq!(parse(MINIMAL).unwrap().xdp, XdpChoice::Auto);
        assert_eq!(parse(&with("xdp = \"native\"")).unwrap().xdp, XdpChoice::Native);
        assert_eq!(parse(&with("xdp = \"off\"")).unwrap().xdp, XdpChoice::Off);
        let e = err(&with("xdp = \"generic\""));
        assert!(e.contains("xdp = \"generic\" is not one of \"auto\", \"native\", \"off\""), "{e}");
    }

    #[test]
    fn untagged_frames_go_to_the_host_only_when_asked() {
        assert!(!parse(MINIMAL).unwrap().untagged_to_host);
        assert!(parse(&with("untagged_to_host = true")).unwrap().untagged_to_host);
        let e = err(&with("untagged_to_host = \"yes\""));
        assert!(e.contains("untagged_to_host"), "{e}");
    }

    #[test]
    fn tc_hook_is_auto_unless_named() {
        assert_eq!(parse(MINIMAL).unwrap().tc_hook, TcHook::Auto);
        assert_eq!(parse(&with("tc_hook = \"tcx\"")).unwrap().tc_hook, TcHook::Tcx);
        let e = err(&with("tc_hook = \"xdp\""));
        assert!(e.contains("tc_hook = \"xdp\" is not one of"), "{e}");
    }

    #[test]
    fn log_format_is_text_unless_json_is_asked_for() {
        assert_eq!(parse(MINIMAL).unwrap().log_format, LogFormat::Text);
        assert_eq!(parse(&with("log_format = \"json\"")).unwrap().log_format, LogFormat::Json);
        let e = err(&with("log_format = \"xml\""));
        assert!(e.contains("log_format = \"xml\" is not one of"), "{e}");
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        assert_eq!(parse(MINIMAL).unwrap().metrics_address, None);
        let cfg = parse(&with("metrics_address = \"127.0.0.1:9110\"")).unwrap();
        assert_eq!(cfg.metrics_address, Some("127.0.0.1:9110".parse().unwrap()));
        let e = err(&with("metrics_address = \"localhost\""));
        assert!(e.contains("metrics_address = \"localhost\" is not an address and port"), "{e}");
    }

    #[test]
    fn tunnel_types() {
        let e = err(&with("local_ip = \"192.0.2.10\"\ntunnel_types = [\"vxlan\", \"gre\"]"));
        assert!(e.contains("tunnel_types[1] = \"gre\" is not supported; only \"vxlan\" is"), "{e}");
        let e = err(&with("tunnel_types = [\"vxlan\"]"));
        assert!(e.contains("local_ip is missing"), "{e}");
        // local_ip alone is fine: it is only needed once tunnels are on.
        let cfg = parse(&with("local_ip = \"192.0.2.10\"")).unwrap();
        assert!(cfg.tunnel_types.is_empty());
    }

    #[test]
    fn check_ifname_rules() {
        assert!(check_ifname("eth0").is_ok());
        assert!(check_ifname("tap02407769-97").is_ok());
        for bad in ["", ".", "..", "a/b", "a:b", "a\tb", "a\0b", "0123456789abcdef"] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn load_resolves_relative_bindings() {
        let dir = scratch("relative");
        let path = dir.join("agent.toml");
        std::fs::write(&path, MINIMAL.replace("/etc/datapath/bindings.json", "state/bindings.json")).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.source, Source::File(dir.join("state/bindings.json")));

        std::fs::write(&path, MINIMAL).unwrap();
        let cfg = Config::load(&path).unwrap();
        assert_eq!(cfg.source, Source::File("/etc/datapath/bindings.json".into()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_errors_name_the_path() {
        let dir = scratch("errors");
        let path = dir.join("agent.toml");
        let e = Config::load(&path).unwrap_err();
        assert!(format!("{e:#}").contains(&format!("reading config {}", path.display())), "{e:#}");

        std::fs::write(&path, with("bogus = 1")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("config {}: ", path.display())), "{e}");
        assert!(e.contains("unknown field `bogus`"), "{e}");

        std::fs::write(&path, with("mac_age_seconds = 0")).unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        assert!(e.starts_with(&format!("config {}: ", path.display())), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
