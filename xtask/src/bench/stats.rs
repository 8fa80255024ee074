//! Pure helpers: medians, and reading what the tools and the kernel print
//! (sockperf, iperf3 -J, /proc/stat, a map's fdinfo).

use anyhow::{Context, Result, bail};

/// The median of `samples` (the mean of the middle two for an even count); None if empty.
pub fn median(samples: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 { v[mid] } else { (v[mid - 1] + v[mid]) / 2.0 })
}

/// p50 and p99 in microseconds from `sockperf ping-pong` output
/// (lines such as `sockperf: ---> percentile 99.000 =   93.238`).
pub fn sockperf_percentiles(out: &str) -> Result<(f64, f64)> {
    let find = |pct: &str| -> Result<f64> {
        out.lines()
            .find_map(|l| {
                let rest = l.split("---> percentile ").nth(1)?;
                let (p, value) = rest.split_once('=')?;
                (p.trim() == pct).then(|| value.trim().parse::<f64>().ok()).flatten()
            })
            .with_context(|| format!("sockperf printed no `percentile {pct}` line:\n{out}"))
    };
    Ok((find("50.000")?, find("99.000")?))
}

/// (bytes, bits per second) the receiver counted, from `iperf3 -c .. -J`.
pub fn iperf3_received(json: &str) -> Result<(u64, f64)> {
    let v: serde_json::Value = serde_json::from_str(json).context("iperf3 -J printed no JSON document")?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3 reported: {err}");
    }
    let sum = &v["end"]["sum_received"];
    let bytes = sum["bytes"].as_u64().context("iperf3 -J has no end.sum_received.bytes")?;
    let bps = sum["bits_per_second"].as_f64().context("iperf3 -J has no end.sum_received.bits_per_second")?;
    Ok((bytes, bps))
}

/// Busy and idle clock ticks of one CPU, from a `cpuN` line of /proc/stat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    pub busy: u64,
    pub idle: u64,
}

/// Per-CPU ticks from /proc/stat, indexed by CPU number. Steal is left out of
/// `busy`: it is time the hypervisor gave to someone else, not work done here.
pub fn proc_stat_cpus(text: &str) -> Result<Vec<CpuTicks>> {
    let mut cpus = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name.strip_prefix("cpu").filter(|n| !n.is_empty()) else { continue };
        let n: usize = n.parse().with_context(|| format!("/proc/stat: bad CPU name {name:?}"))?;
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        if v.len() < 8 {
            bail!("/proc/stat: short line {line:?}");
        }
        // user nice system idle iowait irq softirq steal ...
        let ticks = CpuTicks { busy: v[0] + v[1] + v[2] + v[5] + v[6], idle: v[3] + v[4] };
        if cpus.len() <= n {
            cpus.resize(n + 1, CpuTicks::default());
        }
        cpus[n] = ticks;
    }
    if cpus.is_empty() {
        bail!("/proc/stat has no cpuN lines");
    }
    Ok(cpus)
}

/// `(map_id, memlock bytes)` from a /proc/<pid>/fdinfo entry, if the fd is a BPF map.
pub fn fdinfo_map_memlock(text: &str) -> Option<(u32, u64)> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let id = field("map_id:")?.parse().ok()?;
    let memlock = field("memlock:")?.parse().ok()?;
    Some((id, memlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }

    #[test]
    fn reads_sockperf_percentiles() {
        let out = "sockperf: ---> <MAX> observation = 4072.639\n\
                   sockperf: ---> percentile 99.999 = 4072.639\n\
                   sockperf: ---> percentile 99.000 =   93.238\n\
                   sockperf: ---> percentile 50.000 =   73.479\n\
                   sockperf: ---> <MIN> observation =   42.973\n";
        assert_eq!(sockperf_percentiles(out).unwrap(), (73.479, 93.238));
        assert!(sockperf_percentiles("sockperf: Test ended\n").is_err());
    }

    #[test]
    fn reads_iperf3_json() {
        let j = r#"{"end": {"sum_received": {"bytes": 1000, "bits_per_second": 8000.5}}}"#;
        assert_eq!(iperf3_received(j).unwrap(), (1000, 8000.5));
        let e = iperf3_received(r#"{"error": "unable to connect to server"}"#).unwrap_err();
        assert!(e.to_string().contains("unable to connect"), "{e}");
    }

    #[test]
    fn reads_proc_stat() {
        let text = "cpu  10 0 10 100 0 0 0 0 0 0\n\
                    cpu0 1 2 3 40 5 6 7 8 0 0\n\
                    cpu1 10 0 0 50 0 0 5 0 0 0\n\
                    intr 1 2 3\n";
        let cpus = proc_stat_cpus(text).unwrap();
        assert_eq!(cpus, vec![CpuTicks { busy: 19, idle: 45 }, CpuTicks { busy: 15, idle: 50 }]);
    }

    #[test]
    fn reads_map_fdinfo() {
        let map = "pos:\t0\nflags:\t02000002\nmap_type:\t1\nmemlock:\t4198400\nmap_id:\t42\n";
        assert_eq!(fdinfo_map_memlock(map), Some((42, 4198400)));
        let prog = "pos:\t0\nprog_type:\t3\nmemlock:\t4096\nprog_id:\t7\n";
        assert_eq!(fdinfo_map_memlock(prog), None);
    }
}
