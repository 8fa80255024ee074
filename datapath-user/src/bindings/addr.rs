//! Addresses as Neutron writes them: MACs, CIDRs, and the tap device name of a port id.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Result, anyhow};

// Nova and Neutron name a port's tap device "tap" + this many characters of its id.
pub(super) const DEVICE_ID_CHARS: usize = 11;

/// Parses a MAC written as six colon-separated hex pairs (either case), as Neutron writes them.
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || {
        anyhow!(
            "{s:?} is not a MAC address (expected six colon-separated hex pairs such as fa:16:3e:00:00:01)"
        )
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // from_str_radix alone would take "+f" or a single digit.
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(mac)
}

/// Formats a MAC as Neutron does: lowercase, colon-separated.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

/// The device name Nova and Neutron give a port: "tap" + the first 11 characters of its id.
pub fn device_name(id: &str) -> String {
    let head: String = id.chars().take(DEVICE_ID_CHARS).collect();
    format!("tap{head}")
}

/// Parses "addr" or "addr/len" into the network address (host bits cleared) and prefix length.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = addr.parse().map_err(|_| format!("{addr:?} is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => {
            // u8's parser would also take "+24".
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("prefix length {len:?} is not a number"));
            }
            match len.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(format!("prefix length {len} is over {max}")),
            }
        }
    };
    // Host bits are cleared so that equal networks compare and key equal.
    Ok((masked(ip, len), len))
}

/// `ip` with the bits beyond `len` cleared: the network of `ip/len`.
pub fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        assert_eq!(parse_mac("fa:16:3e:ad:66:9e").unwrap(), [0xfa, 0x16, 0x3e, 0xad, 0x66, 0x9e]);
        assert_eq!(parse_mac("FA:16:3E:AD:66:9E").unwrap(), [0xfa, 0x16, 0x3e, 0xad, 0x66, 0x9e]);
        assert_eq!(format_mac(&[0xfa, 0x16, 0x3e, 0x0a, 0, 1]), "fa:16:3e:0a:00:01");
        for bad in [
            "",
            "fa:16:3e:ad:66",
            "fa:16:3e:ad:66:9e:00",
            "fa:16:3e:ad:66:9",
            "fa:16:3e:ad:66:+9",
            "fa16.3ead.669e",
        ] {
            let e = parse_mac(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?} is not a MAC address")), "{e}");
        }
    }

    #[test]
    fn cidr() {
        assert_eq!(parse_cidr("10.1.2.3").unwrap(), ("10.1.2.3".parse().unwrap(), 32));
        assert_eq!(parse_cidr("10.1.2.3/32").unwrap(), ("10.1.2.3".parse().unwrap(), 32));
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap(), ("10.0.0.0".parse().unwrap(), 8));
        assert_eq!(parse_cidr("10.1.2.3/0").unwrap(), ("0.0.0.0".parse().unwrap(), 0));
        assert_eq!(parse_cidr("2001:db8::1/64").unwrap(), ("2001:db8::".parse().unwrap(), 64));
        assert_eq!(parse_cidr("::/0").unwrap(), ("::".parse().unwrap(), 0));
        assert_eq!(parse_cidr("2001:db8::1/128").unwrap(), ("2001:db8::1".parse().unwrap(), 128));
        for bad in
            ["10.0.0.1/33", "::/129", "10.0.0.1/300", "10.0.0.1/a", "10.0.0.1/1/2", "/8", "10.0.0.1 /8"]
        {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }
}
