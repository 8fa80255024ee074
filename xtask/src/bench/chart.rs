//! `ratios.svg`: one horizontal bar per figure that has a ratio, on a log
//! scale centred on 1 (parity with legacy). Bars show the gain, so longer to
//! the right is always better whichever way the metric itself goes; goals are
//! ticks. Hand-written SVG, so no plotting crate is needed.

use std::fmt::Write as _;

use super::report::{Better, Record};

const LABEL_W: f64 = 400.0;
const PLOT_W: f64 = 520.0;
const ROW_H: f64 = 26.0;
const TOP: f64 = 58.0;
/// The axis spans gains from MIN_GAIN to MAX_GAIN (more room on the better side);
/// bars beyond are clipped and say so.
const MIN_GAIN: f64 = 0.25;
const MAX_GAIN: f64 = 16.0;

fn x_of(gain: f64) -> f64 {
    let (lo, hi) = (MIN_GAIN.log2(), MAX_GAIN.log2());
    LABEL_W + PLOT_W * (gain.clamp(MIN_GAIN, MAX_GAIN).log2() - lo) / (hi - lo)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart of every record's gain over legacy; `title` goes on top.
pub fn svg(records: &[Record], title: &str) -> String {
    let rows: Vec<&Record> = records.iter().filter(|r| r.gain().is_some()).collect();
    let width = LABEL_W + PLOT_W + 110.0;
    let height = TOP + ROW_H * rows.len() as f64 + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);
    let _ =
        writeln!(s, r##"<text x="10" y="20" font-size="15" font-weight="bold">{}</text>"##, escape(title));
    let _ = writeln!(
        s,
        r##"<text x="10" y="38" fill="#555">Gain over the legacy chain (same-node-vs-plain-bridge: over a plain Linux bridge; datapath-*-vs-*: the datapath over itself); inverted for latency and cost; log scale. Ticks: goals.</text>"##
    );
    // Grid lines at powers of two, with 1x (parity) drawn darker.
    let bottom = TOP + ROW_H * rows.len() as f64;
    let mut g = MIN_GAIN;
    while g <= MAX_GAIN * 1.001 {
        let x = x_of(g);
        let (stroke, w) = if (g - 1.0).abs() < 1e-9 { ("#333", 1.5) } else { ("#ddd", 1.0) };
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{bottom}" stroke="{stroke}" stroke-width="{w}"/>"##
        );
        let label = if g >= 1.0 { format!("{g}x") } else { format!("1/{}x", 1.0 / g) };
        let _ = writeln!(
            s,
            r##"<text x="{x:.1}" y="{:.1}" text-anchor="middle" fill="#555">{label}</text>"##,
            bottom + 16.0
        );
        g *= 2.0;
    }
    for (i, r) in rows.iter().enumerate() {
        let gain = r.gain().unwrap_or(1.0);
        let y = TOP + ROW_H * i as f64;
        let (x0, x1) = (x_of(1.0), x_of(gain));
        let (left, w) = if x1 >= x0 { (x0, x1 - x0) } else { (x1, x0 - x1) };
        let colour = if gain >= 1.0 { "#2e8b57" } else { "#c0392b" };
        let direction = match r.metric.better {
            Better::Higher => "higher is better",
            Better::Lower => "lower is better",
        };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{} {} <tspan fill="#888">({direction})</tspan></text>"##,
            LABEL_W - 8.0,
            y + ROW_H * 0.62,
            escape(&r.scenario),
            escape(r.metric.name)
        );
        let _ = writeln!(
            s,
            r##"<rect x="{left:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{colour}"><title>ratio {:.3}</title></rect>"##,
            y + 5.0,
            w.max(1.0),
            ROW_H - 10.0,
            r.ratio().unwrap_or(f64::NAN)
        );
        if let Some(goal) = r.goal() {
            let gx = x_of(goal);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{:.1}" x2="{gx:.1}" y2="{:.1}" stroke="black" stroke-width="2"/>"##,
                y + 2.0,
                y + ROW_H - 2.0
            );
        }
        let clipped = if !(MIN_GAIN..=MAX_GAIN).contains(&gain) { " (off scale)" } else { "" };
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}">{gain:.2}x{clipped}</text>"##,
            LABEL_W + PLOT_W + 8.0,
            y + ROW_H * 0.62
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{PPS, RTT_P99};

    #[test]
    fn bars_for_records_with_a_ratio_only() {
        let records = vec![
            Record { scenario: "same-node-vlan".into(), metric: PPS, datapath: Some(2.0), legacy: Some(1.0) },
            Record {
                scenario: "same-node-vlan".into(),
                metric: RTT_P99,
                datapath: Some(4.0),
                legacy: Some(1.0),
            },
            Record { scenario: "control-plane".into(), metric: PPS, datapath: Some(1.0), legacy: None },
        ];
        let s = svg(&records, "t <1>");
        assert!(s.starts_with("<svg") && s.ends_with("</svg>\n"));
        assert_eq!(s.matches("<rect x=").count(), 2, "{s}");
        assert!(s.contains("2.00x") && s.contains("0.25x"), "{s}");
        assert!(!s.contains("off scale"), "{s}");
        assert!(s.contains("t &lt;1&gt;"));
        // Gain 2 is right of parity, gain 1/4 left of it.
        assert!(x_of(2.0) > x_of(1.0) && x_of(0.25) < x_of(1.0));
        assert_eq!(x_of(1000.0), x_of(MAX_GAIN));
    }
}
