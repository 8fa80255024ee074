//! Parsing of Neutron's `transport_url` option, as oslo.messaging's rabbit driver reads it.

use anyhow::{Context, Result, bail};

/// Port oslo.messaging uses when the URL names none.
pub const DEFAULT_PORT: u16 = 5672;

/// One broker of a `transport_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// User name, percent-decoded; oslo defaults it to `guest`.
    pub username: String,
    /// Password, percent-decoded; oslo defaults it to `guest`.
    pub password: String,
    /// Host name or address (brackets of an IPv6 literal removed).
    pub hostname: String,
    /// TCP port.
    pub port: u16,
}

/// A parsed `rabbit://user:pass@host:port[,user:pass@host:port...]/vhost` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportUrl {
    /// Brokers, in the order given; the client tries them in turn.
    pub hosts: Vec<Host>,
    /// Virtual host, percent-decoded; `/` when the URL has none.
    pub vhost: String,
}

impl TransportUrl {
    /// Parses a `transport_url`, naming the part that is wrong on error.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("rabbit://")
            .with_context(|| format!("transport_url {url:?}: scheme must be rabbit://"))?;
        // oslo ignores the query string (driver options); we have none to honour.
        let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
        let (netloc, path) = rest.split_once('/').unwrap_or((rest, ""));
        // oslo.messaging: an empty path means the default vhost "/".
        let vhost = if path.is_empty() {
            "/".to_string()
        } else {
            percent_decode(path).with_context(|| format!("transport_url {url:?}: vhost {path:?}"))?
        };
        if netloc.is_empty() {
            bail!("transport_url {url:?}: no host");
        }
        let hosts = netloc
            .split(',')
            .map(|h| parse_host(h).with_context(|| format!("transport_url {url:?}: host {h:?}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { hosts, vhost })
    }

    /// The AMQP URI lapin takes for host `i`, with the vhost encoded.
    pub fn amqp_uri(&self, i: usize) -> String {
        let h = &self.hosts[i % self.hosts.len()];
        let host = if h.hostname.contains(':') { format!("[{}]", h.hostname) } else { h.hostname.clone() };
        format!(
            "amqp://{}:{}@{}:{}/{}",
            percent_encode(&h.username),
            percent_encode(&h.password),
            host,
            h.port,
            percent_encode(&self.vhost)
        )
    }
}

fn parse_host(s: &str) -> Result<Host> {
    // Credentials end at the last '@': a password may contain a raw '@'.
    let (creds, hostport) = match s.rsplit_once('@') {
        Some((c, h)) => (Some(c), h),
        None => (None, s),
    };
    let (username, password) = match creds {
        Some(c) => {
            let (u, p) = c.split_once(':').unwrap_or((c, ""));
            (percent_decode(u).context("user name")?, percent_decode(p).context("password")?)
        }
        None => ("guest".to_string(), "guest".to_string()),
    };
    let (hostname, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').context("IPv6 address without closing ']'")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').context("garbage after ']'")?),
        };
        (addr.to_string(), port)
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if hostname.is_empty() {
        bail!("empty host name");
    }
    let port = match port {
        None | Some("") => DEFAULT_PORT,
        Some(p) => p.parse().with_context(|| format!("port {p:?} is not a number 0-65535"))?,
    };
    Ok(Host { username, password, hostname, port })
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).filter(|h| h.len() == 2);
            let v = hex
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .with_context(|| format!("bad percent escape at byte {i} of {s:?}"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("{s:?} does not decode to UTF-8"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_url() {
        let t = TransportUrl::parse("rabbit://neutron:s3cret@10.0.0.5:5673/openstack").unwrap();
        assert_eq!(
            t.hosts,
            vec![Host {
                username: "neutron".into(),
                password: "s3cret".into(),
                hostname: "10.0.0.5".into(),
                port: 5673
            }]
        );
        assert_eq!(t.vhost, "openstack");
    }

    #[test]
    fn defaults_port_and_vhost() {
        let t = TransportUrl::parse("rabbit://guest:guest@127.0.0.1").unwrap();
        assert_eq!(t.hosts[0].port, 5672);
        assert_eq!(t.vhost, "/");
        let t = TransportUrl::parse("rabbit://guest:guest@127.0.0.1:/").unwrap();
        assert_eq!(t.hosts[0].port, 5672);
        assert_eq!(t.vhost, "/");
    }

    #[test]
    fn several_hosts_and_encoding() {
        let t = TransportUrl::parse("rabbit://a:p%40ss@h1:1,b:x@[::1]:2/%2Fvh").unwrap();
        assert_eq!(t.hosts.len(), 2);
        assert_eq!(t.hosts[0].password, "p@ss");
        assert_eq!(t.hosts[1].hostname, "::1");
        assert_eq!(t.hosts[1].port, 2);
        assert_eq!(t.vhost, "/vh");
        assert_eq!(t.amqp_uri(0), "amqp://a:p%40ss@h1:1/%2Fvh");
        assert_eq!(t.amqp_uri(1), "amqp://b:x@[::1]:2/%2Fvh");
    }

    #[test]
    fn errors_name_the_part() {
        let e = format!("{:#}", TransportUrl::parse("amqp://x@y/").unwrap_err());
        assert!(e.contains("rabbit://"), "{e}");
        let e = format!("{:#}", TransportUrl::parse("rabbit://u:p@h:notaport/").unwrap_err());
        assert!(e.contains("\"notaport\""), "{e}");
        let e = format!("{:#}", TransportUrl::parse("rabbit://u:p@h/%zz").unwrap_err());
        assert!(e.contains("vhost") && e.contains("percent"), "{e}");
        let e = format!("{:#}", TransportUrl::parse("rabbit:///v").unwrap_err());
        assert!(e.contains("no host"), "{e}");
        let e = format!("{:#}", TransportUrl::parse("rabbit://u:p@,h/").unwrap_err());
        assert!(e.contains("empty host"), "{e}");
        let e = format!("{:#}", TransportUrl::parse("rabbit://u:p@h:99999/").unwrap_err());
        assert!(e.contains("99999"), "{e}");
    }
}
