//! The differential run: N frames, each through the real program and the
//! model, the maps re-seeded from a new random bindings document every
//! `reseed_every` frames; disagreements and invariant violations are
//! collected as reproducible cases.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use datapath_user::bindings::Bindings;

use super::{
    bindings::{self, CONFIG},
    counters::Ledger,
    frames::{Case, Generator},
    invariants::{Invariants, Sent},
    kernel::{self, Answer, Shims, TC_ACT_REDIRECT, TC_ACT_SHOT},
    rng::Rng,
};
use crate::{
    model::{self, Ingress, Model, Tables, Verdict},
    program::Bench,
};

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub frames: u64,
    pub seed: u64,
    /// A new bindings document every this many frames.
    pub reseed_every: u64,
    /// Reports kept in full (the rest are only counted).
    pub max_reports: usize,
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Summary {
    pub frames: u64,
    /// Frames BPF_PROG_TEST_RUN refused before the program ran.
    pub refused: u64,
    /// The first few refused frames (hex), to show what the kernel refuses.
    pub refused_examples: Vec<String>,
    pub disagreements: u64,
    /// Documents whose counters moved otherwise than the model booked.
    pub counter_mismatches: u64,
    pub violations: u64,
    pub documents: u64,
    /// Disagreements, then invariant violations, in full (at most `max_reports` of each).
    pub reports: Vec<String>,
    pub violation_reports: Vec<String>,
    /// Disagreements by (kernel outcome, model outcome).
    pub mismatches: BTreeMap<(String, String), u64>,
    /// Frames per outcome (drop reason or action label).
    pub outcomes: BTreeMap<String, u64>,
    pub elapsed: Duration,
    /// Time spent in the kernel side (trace clear, test run, trace read).
    pub kernel_time: Duration,
}

impl Summary {
    pub fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A short account: counts, speed and the outcome spread.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} frames ({} refused by BPF_PROG_TEST_RUN), {} bindings documents, {:.1} s, {:.0} frames/s \
             ({:.0}% of the time in the kernel side): {} disagreements, {} counter mismatches, {} invariant violations\noutcomes:",
            self.frames,
            self.refused,
            self.documents,
            self.elapsed.as_secs_f64(),
            self.frames_per_second(),
            100.0 * self.kernel_time.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9),
            self.disagreements,
            self.counter_mismatches,
            self.violations
        );
        for (k, v) in &self.outcomes {
            let _ = write!(s, " {k}={v}");
        }
        for r in &self.refused_examples {
            let _ = write!(s, "\nrefused: {r}");
        }
        if !self.mismatches.is_empty() {
            s.push_str("\ndisagreements (kernel -> model):");
            for ((k, m), n) in &self.mismatches {
                let _ = write!(s, "\n  {n:>8}  {k} -> {m}");
            }
        }
        s
    }
}

/// One bindings document's worth of state on both sides.
struct World {
    doc: String,
    model: Model,
    tables: Tables,
    generator: Generator,
    invariants: Invariants,
    ledger: Ledger,
}

impl World {
    fn new(bench: &Bench, doc: String) -> Result<Self> {
        let b = Bindings::parse_str(&doc, "fuzz bindings")?;
        let model = Model::new(bench.derived.state.clone());
        Ok(World {
            ledger: Ledger::start(bench, &model)?,
            model,
            tables: Tables::default(),
            generator: Generator::new(&b),
            invariants: Invariants::new(&b, &bench.devices),
            doc,
        })
    }
}

/// Empties the tables the kernel writes (learned MACs, fragment verdicts),
/// as the model starts each document with empty ones.
fn forget(bench: &mut Bench) -> Result<()> {
    let maps = &mut bench.dp.maps;
    let keys: Vec<_> = maps.fdb_learned.keys().collect::<Result<_, _>>().context("listing FDB_LEARNED")?;
    for k in keys {
        maps.fdb_learned.remove(&k).context("emptying FDB_LEARNED")?;
    }
    let keys: Vec<_> =
        maps.frag_verdicts.keys().collect::<Result<_, _>>().context("listing FRAG_VERDICTS")?;
    for k in keys {
        maps.frag_verdicts.remove(&k).context("emptying FRAG_VERDICTS")?;
    }
    Ok(())
}

/// Whether BPF_PROG_TEST_RUN refuses `frame` before running the program: it
/// reads the IPv4 or IPv6 header the outer ethertype announces, and refuses
/// a frame too short to hold it (such frames are sent through a real device
/// in tests/program/injected.rs instead).
fn test_run_refuses(frame: &[u8]) -> bool {
    match u16::from_be_bytes([frame[12], frame[13]]) {
        0x0800 => frame.len() < 14 + 20,
        0x86dd => frame.len() < 14 + 40,
        _ => false,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn describe_kernel(a: &Answer) -> String {
    match a.action {
        Some(action) if a.retval == TC_ACT_REDIRECT => format!(
            "send {} to {:?} (net {}), frame {}",
            action.label(),
            a.targets,
            a.net_index,
            hex(&a.frame)
        ),
        _ => format!("verdict {} reason {:?} (net {})", a.retval, a.reason, a.net_index),
    }
}

fn describe_model(o: &model::Outcome) -> String {
    match &o.verdict {
        Verdict::Drop(r) => format!("drop reason {:?} (net {})", r.label(), o.net_index),
        Verdict::Send { action, targets, frame } => format!(
            "send {} to {targets:?} (net {}), frame {}{}",
            action.label(),
            o.net_index,
            hex(&frame.bytes),
            frame.hw.map(|h| format!(" + offloaded tag {h:?}")).unwrap_or_default()
        ),
    }
}

/// The differences between the kernel's answer and the model's.
fn differences(k: &Answer, m: &model::Outcome) -> Vec<&'static str> {
    let mut d = Vec::new();
    if k.net_index != m.net_index {
        d.push("network");
    }
    match &m.verdict {
        Verdict::Drop(r) => {
            if k.retval != TC_ACT_SHOT {
                d.push("verdict");
            }
            if k.reason != r.label() {
                d.push("drop reason");
            }
        }
        Verdict::Send { action, targets, frame } => {
            if k.retval != TC_ACT_REDIRECT || !k.reason.is_empty() {
                d.push("verdict");
            }
            if k.action != Some(*action) {
                d.push("action");
            }
            if &k.targets != targets {
                d.push("targets");
            }
            if k.frame != frame.bytes {
                d.push("output frame");
            }
        }
    }
    d
}

/// The golden-frame row (tests/program/golden.rs) the kernel should satisfy,
/// per the model; its devices are the fuzz bench's, so a row goes into the
/// golden table once its document is reduced to the golden scenario's.
fn golden_row(bench: &Bench, seed: u64, i: u64, case: &Case, m: &model::Outcome) -> String {
    let expect = match &m.verdict {
        Verdict::Drop(r) => format!("Expect::Drop(DropReason::{r:?})"),
        Verdict::Send { action, targets, .. } => {
            let t: Vec<String> =
                targets.iter().map(|t| format!("({:?}, {})", bench.name_of(t.ifindex), t.vlan)).collect();
            format!("send(Action::{action:?}, &[{}])", t.join(", "))
        }
    };
    let (row, dev) = match case.prog {
        model::Prog::Uplink => ("wire(", String::new()),
        _ => ("vm(", format!("{:?}, ", case.device)),
    };
    format!(
        "{row}\"fuzz seed {seed} frame {i}\", {dev}parse_hex(\"{}\").unwrap(), {expect}),",
        hex(&case.frame)
    )
}

/// Closes a document's books: its counters must have moved as the model booked.
fn settle(bench: &Bench, world: &World, opts: &Options, sum: &mut Summary) -> Result<()> {
    let diffs = world.ledger.differences(bench)?;
    if !diffs.is_empty() {
        sum.counter_mismatches += 1;
        if sum.reports.len() < opts.max_reports {
            sum.reports.push(format!(
                "document {} of seed {}: counters differ:\n  {}\n  bindings:  {}",
                sum.documents,
                opts.seed,
                diffs.join("\n  "),
                world.doc
            ));
        }
    }
    Ok(())
}

/// Runs `opts.frames` frames; errors only when the bench itself fails.
pub fn run(opts: Options) -> Result<Summary> {
    let started = Instant::now();
    let mut rng = Rng::new(opts.seed);
    let devices = bindings::devices();
    let names: Vec<&str> = devices.iter().map(String::as_str).collect();
    let doc = bindings::generate(&mut rng);
    let mut bench = Bench::new(CONFIG, &doc, &names).context("building the fuzz bench")?;
    let mut world = World::new(&bench, doc)?;
    let shims = Shims::new(&mut bench)?;
    let mut sum = Summary { documents: 1, ..Default::default() };
    for i in 0..opts.frames {
        if i > 0 && i % opts.reseed_every == 0 {
            settle(&bench, &world, &opts, &mut sum)?;
            let doc = bindings::generate(&mut rng);
            bench.reseed(CONFIG, &doc).with_context(|| format!("re-seeding with {doc}"))?;
            forget(&mut bench)?;
            world = World::new(&bench, doc)?;
            sum.documents += 1;
        }
        let case = world.generator.case(&mut rng);
        let ifindex = bench.ifindex(&case.device);
        let ingress = Ingress {
            prog: case.prog,
            ifindex,
            hw: case.hw,
            gso_size: case.gso_size,
            tunnel: case.tunnel,
            dry_run: false,
        };
        let run = kernel::Run {
            prog: case.prog.name(),
            ifindex,
            frame: &case.frame,
            gso_size: case.gso_size,
            dry: false,
            tunnel: case.tunnel,
            hw: case.hw,
        };
        let t = Instant::now();
        // Now and then a dry run first: the decision without learning or
        // remembering fragments, and no trace of it in the tables (the next
        // frames would disagree) or the counters (the ledger).
        let dry = if rng.chance(10) {
            kernel::run(&mut bench, &shims, kernel::Run { dry: true, ..run })?
        } else {
            None
        };
        let answer = kernel::run(&mut bench, &shims, run)?;
        sum.kernel_time += t.elapsed();
        if let Some(dry) = dry {
            let dry_ingress = Ingress { dry_run: true, ..ingress };
            let outcome = model::decide(&world.model, &mut world.tables, dry_ingress, &case.frame);
            let diffs = differences(&dry, &outcome);
            if !diffs.is_empty() {
                sum.disagreements += 1;
                if sum.reports.len() < opts.max_reports {
                    sum.reports.push(format!(
                        "frame {i} of seed {}, dry run: differ in {}\n  ingress:   {} on {}\n  frame:     {}\n  \
                         kernel:    {}\n  model:     {}",
                        opts.seed,
                        diffs.join(", "),
                        run.prog,
                        case.device,
                        hex(&case.frame),
                        describe_kernel(&dry),
                        describe_model(&outcome)
                    ));
                }
            }
        }
        let Some(answer) = answer else {
            // Only a frame too short for the IP header its ethertype announces may be
            // refused; anything else refused would hide frames from the comparison.
            if !test_run_refuses(&case.frame) {
                anyhow::bail!(
                    "BPF_PROG_TEST_RUN refused frame {i} of seed {}, which it should run: {} on {}: {}",
                    opts.seed,
                    case.prog.name(),
                    case.device,
                    hex(&case.frame)
                );
            }
            sum.refused += 1;
            if sum.refused_examples.len() < 5 {
                sum.refused_examples.push(format!(
                    "{} on {}: {}",
                    case.prog.name(),
                    case.device,
                    hex(&case.frame)
                ));
            }
            continue;
        };
        sum.frames += 1;
        let outcome = model::decide(&world.model, &mut world.tables, ingress, &case.frame);
        world.ledger.book(&world.model, ifindex, &outcome);
        let label = match answer.action {
            Some(a) if answer.reason.is_empty() => a.label().to_string(),
            _ => answer.reason.clone(),
        };
        *sum.outcomes.entry(label.clone()).or_default() += 1;

        let diffs = differences(&answer, &outcome);
        let mut violations = Vec::new();
        if let (Some(action), TC_ACT_REDIRECT) = (answer.action, answer.retval) {
            violations = world.invariants.check(&Sent {
                prog: case.prog,
                ingress: &case.device,
                input: &case.frame,
                hw: case.hw,
                tunnel: case.tunnel,
                action,
                targets: &answer.targets,
                output: &answer.frame,
            });
        }
        if let Verdict::Send { action, targets, frame } = &outcome.verdict {
            violations.extend(
                world
                    .invariants
                    .check(&Sent {
                        prog: case.prog,
                        ingress: &case.device,
                        input: &case.frame,
                        hw: case.hw,
                        tunnel: case.tunnel,
                        action: *action,
                        targets,
                        output: &frame.bytes,
                    })
                    .into_iter()
                    .map(|v| format!("(model) {v}")),
            );
        }
        if !diffs.is_empty() {
            sum.disagreements += 1;
            let model_label = match &outcome.verdict {
                Verdict::Drop(r) => r.label().to_string(),
                Verdict::Send { action, .. } => action.label().to_string(),
            };
            *sum.mismatches.entry((label, model_label)).or_default() += 1;
        }
        if !violations.is_empty() {
            sum.violations += 1;
        }
        let list = if diffs.is_empty() { &mut sum.violation_reports } else { &mut sum.reports };
        if (!diffs.is_empty() || !violations.is_empty()) && list.len() < opts.max_reports {
            list.push(format!(
                "frame {i} of seed {seed}: {what}\n  reproduce: cargo xtask fuzz frames --seed {seed} --frames {n}\n  \
                 ingress:   {prog} on {dev} (ifindex {ifindex}), gso_size {gso}, tunnel key {key:?}, offloaded tag {hw:?}\n  frame:     {frame}\n  kernel:    {k}\n  \
                 model:     {m}\n  golden:    {row}\n  bindings:  {doc}",
                seed = opts.seed,
                what = if diffs.is_empty() { violations.join("; ") } else { format!("differ in {}", diffs.join(", ")) },
                n = i + 1,
                prog = case.prog.name(),
                dev = case.device,
                gso = case.gso_size,
                key = case.tunnel,
                hw = case.hw,
                frame = hex(&case.frame),
                k = describe_kernel(&answer),
                m = describe_model(&outcome),
                row = golden_row(&bench, opts.seed, i, &case, &outcome),
                doc = world.doc,
            ));
        }
    }
    settle(&bench, &world, &opts, &mut sum)?;
    sum.elapsed = started.elapsed();
    Ok(sum)
}
