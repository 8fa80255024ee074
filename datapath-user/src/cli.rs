//! The operator's commands: ask the running agent over its control socket and
//! print a table (or the JSON with `--json`). Also turns `trace --frame`
//! arguments (hex, a pcap file, or a short spec) into frame bytes.

use std::{net::Ipv4Addr, path::Path};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{bindings::parse_mac, frames, introspect::parse_hex};

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

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Prints a command's result as a human-readable table.
pub fn print_human(command: &str, v: &Value) {
    match command {
        "status" => {
            for key in [
                "host",
                "pin_path",
                "abi_version",
                "kernel",
                "tc_hook",
                "bindings",
                "bindings_error",
                "syncs",
                "networks",
            ] {
                println!("{key:<15} {}", s(&v[key]));
            }
            println!("{:<15} {}", "ports", v["ports"]);
            for e in v["errors"].as_array().into_iter().flatten() {
                println!("error           {}", s(e));
            }
            for r in v["refused"].as_array().into_iter().flatten() {
                println!("refused         {}: {}", s(&r["what"]), s(&r["reason"]));
            }
        }
        "ports" => {
            let rows: Vec<Vec<String>> = v["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| {
                    ["device", "port_id", "kind", "ifindex", "network", "local_index", "state", "detail"]
                        .iter()
                        .map(|k| s(&p[*k]))
                        .collect()
                })
                .collect();
            print_table(&["DEVICE", "PORT", "KIND", "IFINDEX", "NETWORK", "LOCAL", "STATE", "DETAIL"], &rows);
        }
        "networks" => {
            let rows: Vec<Vec<String>> = v["networks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    [
                        "id",
                        "name",
                        "type",
                        "segmentation_id",
                        "physical_network",
                        "local_index",
                        "local_ports",
                        "error",
                    ]
                    .iter()
                    .map(|k| s(&n[*k]))
                    .collect()
                })
                .collect();
            print_table(&["NETWORK", "NAME", "TYPE", "SEGMENT", "PHYSNET", "LOCAL", "PORTS", "ERROR"], &rows);
        }
        "fdb" => {
            let rows: Vec<Vec<String>> = v["entries"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    ["local_index", "mac", "type", "device", "age_s", "network"]
                        .iter()
                        .map(|k| s(&e[*k]))
                        .collect()
                })
                .collect();
            print_table(&["LOCAL", "MAC", "TYPE", "PORT", "AGE", "NETWORK"], &rows);
        }
        "stats" => {
            let mut rows = Vec::new();
            for p in v["ports"].as_array().into_iter().flatten() {
                let actions = &p["actions"];
                let drops: Vec<String> =
                    p["drops"].as_object().into_iter().flatten().map(|(k, n)| format!("{k}={n}")).collect();
                rows.push(vec![
                    s(&p["device"]),
                    s(&p["kind"]),
                    s(&actions["rx"]),
                    s(&actions["to_local_port"]),
                    s(&actions["to_uplink"]),
                    s(&actions["flooded"]),
                    s(&actions["learned"]),
                    s(&p["dropped"]),
                    if drops.is_empty() { "-".into() } else { drops.join(" ") },
                ]);
            }
            print_table(
                &[
                    "PORT",
                    "KIND",
                    "RX",
                    "TO_LOCAL",
                    "TO_UPLINK",
                    "FLOODED",
                    "LEARNED",
                    "DROPPED",
                    "DROPS BY REASON",
                ],
                &rows,
            );
        }
        "trace" => {
            println!("port      {} ({})", s(&v["port"]), s(&v["program"]));
            println!("network   {} (local index {})", s(&v["network"]), s(&v["local_index"]));
            match v["verdict"].as_str() {
                Some("drop") => println!("verdict   drop: {}", s(&v["reason"])),
                _ => println!("verdict   {}", s(&v["action"])),
            }
            for t in v["targets"].as_array().into_iter().flatten() {
                let vlan = t["vlan"].as_u64().unwrap_or(0);
                let tag = match (t["vtep"].as_str(), vlan) {
                    (Some(vtep), _) => format!("vxlan vni {} to {vtep}", s(&t["vni"])),
                    (None, 0) => String::from("untagged"),
                    (None, vlan) => format!("vlan {vlan}"),
                };
                println!("  -> {} ({tag})", s(&t["device"]));
            }
            println!("frame out {}", s(&v["frame_out"]));
        }
        _ => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
    }
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
    let words: Vec<&str> = arg.split_whitespace().collect();
    let is_spec = words.first().is_some_and(|w| ["arp", "icmp", "dhcp", "vlan"].contains(w));
    if is_spec {
        frame_spec(&words)
    } else {
        parse_hex(arg).context("--frame is neither a file, a spec, nor hex")
    }
}

fn ip(word: &str) -> Result<[u8; 4]> {
    word.parse::<Ipv4Addr>().map(|a| a.octets()).with_context(|| format!("{word:?} is not an IPv4 address"))
}

fn frame_spec(words: &[&str]) -> Result<Vec<u8>> {
    let usage = "frame spec: [vlan ID] arp who-has IP from MAC IP | icmp from MAC IP to MAC IP | dhcp discover from MAC";
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
        assert!(frame_arg("vlan 5000 arp").unwrap_err().to_string().contains("VLAN"));
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
