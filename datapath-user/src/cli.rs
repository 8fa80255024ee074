//! The operator's commands: ask the running agent over its control socket and
//! print a table (or the JSON with `--json`). Also turns `trace --frame`
//! arguments (hex, a pcap file, or a short spec) into frame bytes.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, bail};
use datapath_common::Action;

use crate::{
    api::{
        ConntrackReply, FdbReply, FlushReply, MonitorLine, MonitorStarted, NetworksReply, PortRow,
        PortsReply, Request, StatsReply, StatusReply, TraceReply,
    },
    bindings::parse_mac,
    control, frames,
    introspect::parse_hex,
    pcap::EventFile,
};

/// `datapath monitor`: streams `request`'s events from the agent at
/// `socket`, one line each (JSON with `json`), into `pcap` too, until the
/// agent goes or `count` events came.
pub fn monitor(
    socket: &Path,
    request: &Request,
    json: bool,
    pcap: Option<&Path>,
    count: Option<u64>,
) -> Result<()> {
    let (started, lines): (MonitorStarted, _) = control::stream(socket, request)?;
    let mut file = pcap.map(|p| EventFile::create(p, started.snap)).transpose()?;
    if !json {
        let port = if started.port.is_empty() { "every port" } else { &started.port };
        let reason = if started.reason.is_empty() { "every reason" } else { &started.reason };
        let what = if started.decisions { "every decision" } else { "drops" };
        eprintln!("monitoring {what} of {port} ({reason}); Ctrl-C stops");
    }
    let mut seen = 0;
    for line in lines {
        let line = line?;
        if json {
            println!("{}", serde_json::to_string(&line)?);
        } else {
            match &line {
                MonitorLine::Event(e) => {
                    let what = e.reason.as_deref().map_or_else(
                        || format!("forward {}", e.action.as_deref().unwrap_or("?")),
                        |r| format!("drop {r}"),
                    );
                    let secs = e.time_ns / 1_000_000_000;
                    let micros = (e.time_ns % 1_000_000_000) / 1000;
                    println!(
                        "{secs}.{micros:06} {} {} {what} len {} port {} net {} {}",
                        e.device, e.program, e.len, e.port_id, e.network, e.frame
                    );
                }
                MonitorLine::Suppressed { kernel, client } => {
                    println!("suppressed: {kernel} by the kernel's rate limit, {client} for a slow reader")
                }
            }
        }
        if let (MonitorLine::Event(e), Some(f)) = (&line, &mut file) {
            f.write(e)?;
            f.flush()?;
        }
        if matches!(line, MonitorLine::Event(_)) {
            seen += 1;
            if count.is_some_and(|n| seen >= n) {
                break;
            }
        }
    }
    Ok(())
}

/// Prints `rows` under `headers`, columns padded to their widest cell.
pub fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A cell for an optional value: `-` when absent or empty.
fn cell<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).filter(|s| !s.is_empty()).unwrap_or_else(|| "-".into())
}

/// `status` as lines of `key value`.
pub fn print_status(v: &StatusReply) {
    let lines = [
        ("host", v.host.clone()),
        ("pin_path", v.pin_path.clone()),
        ("abi_version", v.abi_version.to_string()),
        ("kernel", v.kernel.clone()),
        ("tc_hook", v.tc_hook.clone()),
        (
            "xdp",
            if v.xdp.is_empty() {
                "-".into()
            } else {
                v.xdp.iter().map(|(d, s)| format!("{d} {s}")).collect::<Vec<_>>().join(", ")
            },
        ),
        ("source", v.source.clone()),
        ("bindings", v.bindings.clone()),
        ("bindings_error", cell(v.bindings_error.as_deref())),
        ("source_health", cell(v.source_health.as_deref())),
        ("syncs", v.syncs.to_string()),
        ("networks", v.networks.to_string()),
    ];
    for (key, value) in lines {
        println!("{key:<15} {value}");
    }
    let ports: Vec<String> = v.ports.iter().map(|(state, n)| format!("{state}={n}")).collect();
    println!("{:<15} {}", "ports", ports.join(" "));
    for e in &v.errors {
        println!("error           {e}");
    }
    for r in &v.refused {
        println!("refused         {}: {}", r.what, r.reason);
    }
}

/// `ports` as a table.
pub fn print_ports(v: &PortsReply) {
    let rows: Vec<Vec<String>> = v
        .ports
        .iter()
        .map(|p| {
            vec![
                p.device.clone(),
                cell(Some(&p.port_id)),
                p.kind.clone(),
                cell(p.ifindex),
                cell(Some(&p.network)),
                cell(p.local_index),
                p.state.clone(),
                trunk_cell(p),
                cell(p.qos_policy_id.as_ref()),
                cell(Some(&p.detail)),
            ]
        })
        .collect();
    print_table(
        &["DEVICE", "PORT", "KIND", "IFINDEX", "NETWORK", "LOCAL", "STATE", "TRUNK", "QOS", "DETAIL"],
        &rows,
    );
}

/// A port's place in a trunk, in words: `parent of T`, `T vlan V on TAP`, or `-`.
fn trunk_cell(p: &PortRow) -> String {
    match (&p.trunk_id, &p.parent, p.vid) {
        (Some(t), Some(parent), Some(vid)) => format!("{t} vlan {vid} on {parent}"),
        (Some(t), _, _) => format!("parent of {t}"),
        _ => "-".into(),
    }
}

/// `networks` as a table.
pub fn print_networks(v: &NetworksReply) {
    let rows: Vec<Vec<String>> = v
        .networks
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                cell(Some(&n.name)),
                n.net_type.clone(),
                cell(n.segmentation_id),
                cell(n.physical_network.as_deref()),
                cell(n.local_index),
                n.local_ports.to_string(),
                cell(Some(&n.error)),
            ]
        })
        .collect();
    print_table(&["NETWORK", "NAME", "TYPE", "SEGMENT", "PHYSNET", "LOCAL", "PORTS", "ERROR"], &rows);
}

/// `conntrack` as a table.
pub fn print_conntrack(v: &ConntrackReply) {
    let rows: Vec<Vec<String>> = v
        .connections
        .iter()
        .map(|c| {
            vec![
                c.port.clone(),
                c.protocol.clone(),
                c.local.clone(),
                c.remote.clone(),
                c.direction.clone(),
                c.state.clone(),
                c.rule.clone(),
                c.age_s.to_string(),
                c.expires_s.to_string(),
            ]
        })
        .collect();
    print_table(&["PORT", "PROTO", "LOCAL", "REMOTE", "OPENED", "STATE", "RULE", "AGE", "EXPIRES"], &rows);
}

/// `conntrack flush`: how many went.
pub fn print_flushed(v: &FlushReply) {
    println!("{} connections deleted", v.flushed);
}

/// `fdb` as a table.
pub fn print_fdb(v: &FdbReply) {
    let rows: Vec<Vec<String>> = v
        .entries
        .iter()
        .map(|e| {
            vec![
                e.local_index.to_string(),
                e.mac.clone(),
                e.kind.clone(),
                e.device.clone(),
                cell(e.age_s),
                cell(Some(&e.network)),
            ]
        })
        .collect();
    print_table(&["LOCAL", "MAC", "TYPE", "PORT", "AGE", "NETWORK"], &rows);
}

/// `stats` as a table: the main actions as columns, then every drop reason that counted.
pub fn print_stats(v: &StatsReply) {
    let columns = [Action::Received, Action::ToLocalPort, Action::ToUplink, Action::Flooded, Action::Learned];
    let mut rows = Vec::new();
    let row = |device: &str,
               kind: &str,
               actions: &BTreeMap<String, u64>,
               dropped: u64,
               drops: &BTreeMap<String, u64>| {
        let mut row = vec![device.to_string(), kind.to_string()];
        row.extend(columns.iter().map(|a| cell(actions.get(a.label()))));
        row.push(dropped.to_string());
        let drops: Vec<String> = drops.iter().map(|(k, n)| format!("{k}={n}")).collect();
        row.push(if drops.is_empty() { "-".into() } else { drops.join(" ") });
        row
    };
    for p in &v.ports {
        // The XDP stage first: it sees the frames before the TC stage does.
        if let Some(x) = &p.xdp {
            rows.push(row(&p.device, "xdp stage", &x.actions, x.dropped, &x.drops));
        }
        rows.push(row(&p.device, &p.kind, &p.actions, p.dropped, &p.drops));
    }
    let mut headers = vec!["PORT".to_string(), "KIND".to_string()];
    headers.extend(columns.iter().map(|a| a.label().to_uppercase()));
    headers.extend(["DROPPED".to_string(), "DROPS BY REASON".to_string()]);
    print_table(&headers.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
}

/// `trace` as the decision, one destination per line.
pub fn print_trace(v: &TraceReply) {
    println!("port      {} ({})", v.port, v.program);
    println!("network   {} (local index {})", cell(Some(&v.network)), v.local_index);
    match (&v.reason, &v.action) {
        (Some(reason), _) => println!("verdict   drop: {reason}"),
        (None, action) => println!("verdict   {}", cell(action.as_deref())),
    }
    if let Some(sg) = &v.security_group {
        println!("security  {sg}");
    }
    for t in &v.targets {
        let tag = match (&t.vtep, t.vlan) {
            (Some(vtep), _) => format!("vxlan vni {} to {vtep}", t.vni),
            (None, 0) => String::from("untagged"),
            (None, vlan) => format!("vlan {vlan}"),
        };
        println!("  -> {} ({tag})", t.device);
    }
    println!("frame out {}", v.frame_out);
}

/// Frame bytes from a `trace --frame` argument: hex, a pcap file (first
/// packet), or a spec such as `arp who-has 10.0.0.3 from fa:16:3e:00:00:01 10.0.0.2`,
/// `icmp from MAC IP to MAC IP`, `dhcp discover from MAC`, each optionally
/// prefixed by `vlan ID` (a frame as the wire would carry it).
pub fn frame_arg(arg: &str) -> Result<Vec<u8>> {
    let path = Path::new(arg);
    if path.is_file() {
        return first_pcap_packet(path);
    }
    parse_frame_text(arg)
}

/// Frame bytes from a spec or hex (what `frame_arg` takes, files aside).
pub fn parse_frame_text(arg: &str) -> Result<Vec<u8>> {
    let words: Vec<&str> = arg.split_whitespace().collect();
    let is_spec = words.first().is_some_and(|w| ["arp", "icmp", "tcp", "udp", "dhcp", "vlan"].contains(w));
    if is_spec {
        frame_spec(&words)
    } else {
        parse_hex(arg).context("--frame is neither a file, a spec, nor hex")
    }
}

fn ip(word: &str) -> Result<[u8; 4]> {
    word.parse::<Ipv4Addr>().map(|a| a.octets()).with_context(|| format!("{word:?} is not an IPv4 address"))
}

/// `IP:PORT`.
fn endpoint(word: &str) -> Result<([u8; 4], u16)> {
    let (addr, port) = word.rsplit_once(':').with_context(|| format!("{word:?} is not IP:PORT"))?;
    let port = port.parse().with_context(|| format!("bad port in {word:?}"))?;
    Ok((ip(addr)?, port))
}

fn frame_spec(words: &[&str]) -> Result<Vec<u8>> {
    let usage = "frame spec: [vlan ID] arp who-has IP from MAC IP | icmp from MAC IP to MAC IP \
                 | tcp from MAC IP:PORT to MAC IP:PORT (a SYN) | udp from MAC IP:PORT to MAC IP:PORT \
                 | dhcp discover from MAC";
    match words {
        ["vlan", id, rest @ ..] => {
            let vid: u16 =
                id.parse().ok().filter(|v| *v < 4095).with_context(|| format!("bad VLAN id {id:?}"))?;
            Ok(frames::tagged(&frame_spec(rest)?, 0x8100, vid))
        }
        ["arp", "who-has", target, "from", mac, sender] => {
            Ok(frames::arp_request(parse_mac(mac)?, ip(sender)?, ip(target)?))
        }
        ["icmp", "from", smac, sip, "to", dmac, dip] => Ok(frames::eth(
            parse_mac(dmac)?,
            parse_mac(smac)?,
            0x0800,
            &frames::ipv4_icmp_echo(ip(sip)?, ip(dip)?),
        )),
        [proto @ ("tcp" | "udp"), "from", smac, src, "to", dmac, dst] => {
            let ((sip, sport), (dip, dport)) = (endpoint(src)?, endpoint(dst)?);
            let packet = if *proto == "tcp" {
                frames::ipv4_tcp(sip, dip, sport, dport, frames::TCP_SYN)
            } else {
                frames::ipv4_udp(sip, dip, sport, dport, b"trace")
            };
            Ok(frames::eth(parse_mac(dmac)?, parse_mac(smac)?, 0x0800, &packet))
        }
        ["dhcp", "discover", "from", mac] => {
            let mac = parse_mac(mac)?;
            Ok(frames::eth(
                frames::BROADCAST,
                mac,
                0x0800,
                &frames::ipv4_udp([0; 4], [255; 4], 68, 67, &frames::dhcp_body(1, mac)),
            ))
        }
        _ => bail!("{usage}"),
    }
}

/// The first packet of a pcap file (classic format, either byte order).
fn first_pcap_packet(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if data.len() < 24 + 16 {
        bail!("{} is too short for a pcap file with a packet", path.display());
    }
    let magic = u32::from_le_bytes(data[0..4].try_into()?);
    let le = match magic {
        0xa1b2c3d4 | 0xa1b23c4d => true,
        0xd4c3b2a1 | 0x4d3cb2a1 => false,
        _ => bail!("{} is not a pcap file (magic {magic:#x}; pcapng is not supported)", path.display()),
    };
    let caplen_bytes: [u8; 4] = data[24 + 8..24 + 12].try_into()?;
    let caplen =
        if le { u32::from_le_bytes(caplen_bytes) } else { u32::from_be_bytes(caplen_bytes) } as usize;
    let start = 24 + 16;
    data.get(start..start + caplen)
        .map(<[u8]>::to_vec)
        .with_context(|| format!("{}: first packet truncated ({caplen} bytes claimed)", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_build_the_frames_they_name() {
        let f = frame_arg("arp who-has 10.0.0.3 from fa:16:3e:00:00:01 10.0.0.2").unwrap();
        assert_eq!(f, frames::arp_request([0xfa, 0x16, 0x3e, 0, 0, 1], [10, 0, 0, 2], [10, 0, 0, 3]));
        let t = frame_arg("vlan 1000 arp who-has 10.0.0.3 from fa:16:3e:00:00:01 10.0.0.2").unwrap();
        assert_eq!(&t[12..16], &[0x81, 0x00, 0x03, 0xe8]);
        assert_eq!(frame_arg("ff ff ff ff ff ff").unwrap(), vec![0xff; 6]);
        assert!(
            frame_arg("arp who-has nonsense from fa:16:3e:00:00:01 10.0.0.2")
                .unwrap_err()
                .to_string()
                .contains("IPv4")
        );
        assert!(frame_arg("icmp from").unwrap_err().to_string().contains("frame spec"));
        let (a, b) = ("fa:16:3e:00:00:01", "fa:16:3e:00:00:02");
        let syn = frame_arg(&format!("tcp from {a} 10.0.0.2:40000 to {b} 10.0.0.3:22")).unwrap();
        let mac = |m| parse_mac(m).unwrap();
        assert_eq!(
            syn,
            frames::eth(
                mac(b),
                mac(a),
                0x0800,
                &frames::ipv4_tcp([10, 0, 0, 2], [10, 0, 0, 3], 40000, 22, frames::TCP_SYN)
            )
        );
        let udp = frame_arg(&format!("udp from {a} 10.0.0.2:5353 to {b} 10.0.0.3:53")).unwrap();
        assert_eq!((udp[23], &udp[34..38]), (17, &[0x14, 0xe9, 0, 53][..]), "protocol 17, ports 5353 -> 53");
        let bad = frame_arg(&format!("tcp from {a} 10.0.0.2 to {b} 10.0.0.3:22")).unwrap_err();
        assert!(bad.to_string().contains("IP:PORT"), "{bad}");
        assert!(frame_arg("vlan 5000 arp").unwrap_err().to_string().contains("VLAN"));
    }

    #[test]
    fn the_trunk_column_says_parent_or_subport() {
        let row = |trunk_id: Option<&str>, parent: Option<&str>, vid| PortRow {
            device: "tapa0000000-0a".into(),
            port_id: String::new(),
            kind: "vm".into(),
            ifindex: None,
            network: String::new(),
            local_index: None,
            state: "up".into(),
            detail: String::new(),
            trunk_id: trunk_id.map(Into::into),
            parent: parent.map(Into::into),
            vid,
            qos_policy_id: None,
        };
        assert_eq!(trunk_cell(&row(None, None, None)), "-");
        assert_eq!(trunk_cell(&row(Some("t1"), None, None)), "parent of t1");
        assert_eq!(
            trunk_cell(&row(Some("t1"), Some("tapa0000000-0a"), Some(101))),
            "t1 vlan 101 on tapa0000000-0a"
        );
    }

    #[test]
    fn pcap_first_packet_is_read() {
        let mut pcap = vec![0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0];
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&65535u32.to_le_bytes());
        pcap.extend_from_slice(&1u32.to_le_bytes());
        pcap.extend_from_slice(&[0; 8]);
        pcap.extend_from_slice(&3u32.to_le_bytes());
        pcap.extend_from_slice(&3u32.to_le_bytes());
        pcap.extend_from_slice(&[1, 2, 3]);
        let path = std::env::temp_dir().join(format!("dp-pcap-test-{}", std::process::id()));
        std::fs::write(&path, &pcap).unwrap();
        let got = first_pcap_packet(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(got.unwrap(), vec![1, 2, 3]);
    }
}
