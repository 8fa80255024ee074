//! The counters check: over one bindings document, every port's counters
//! must have moved exactly as the model's verdicts say (one `rx` per frame,
//! then one action or one drop reason, plus the drops counted on the side).
//! Traced runs send no flood copies and learning refreshes depend on time,
//! so `flood_copies` and `learned` are left out.

use std::collections::BTreeMap;

use anyhow::Result;
use datapath_common::{Action, DropReason, PortCounters};

use crate::{
    model::{Model, Outcome, Verdict},
    program::Bench,
};

/// Counters per stats slot: where a document started, and what the model expects on top.
#[derive(Default)]
pub struct Ledger {
    start: BTreeMap<u32, PortCounters>,
    expected: BTreeMap<u32, PortCounters>,
}

fn zero() -> PortCounters {
    bytemuck::Zeroable::zeroed()
}

/// The slots of the ports `model` knows, and slot 0 (unknown devices).
fn slots(model: &Model) -> Vec<u32> {
    let mut s: Vec<u32> = model.state.ports.values().map(|p| p.stats_slot).collect();
    s.push(0);
    s.sort_unstable();
    s.dedup();
    s
}

impl Ledger {
    /// Snapshots the counters of every slot `model` uses.
    pub fn start(bench: &Bench, model: &Model) -> Result<Self> {
        let mut start = BTreeMap::new();
        for slot in slots(model) {
            start.insert(slot, bench.counters(slot)?);
        }
        Ok(Self { start, expected: BTreeMap::new() })
    }

    /// Books what the model says one frame on `ifindex` counts.
    pub fn book(&mut self, model: &Model, ifindex: u32, o: &Outcome) {
        let slot = model.port(ifindex).map_or(0, |p| p.stats_slot);
        let c = self.expected.entry(slot).or_insert_with(zero);
        c.actions[Action::Received as usize] += 1;
        match &o.verdict {
            Verdict::Drop(r) => c.drops[*r as usize] += 1,
            Verdict::Send { action, .. } => c.actions[*action as usize] += 1,
        }
        for a in &o.side_actions {
            c.actions[*a as usize] += 1;
        }
    }

    /// The slots whose counters moved otherwise than booked, described.
    pub fn differences(&self, bench: &Bench) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for (slot, start) in &self.start {
            let mut moved = bench.counters(*slot)?.since(start);
            moved.actions[Action::FloodCopies as usize] = 0;
            moved.actions[Action::Learned as usize] = 0;
            let want = self.expected.get(slot).copied().unwrap_or_else(zero);
            if moved != want {
                out.push(format!(
                    "slot {slot}: counters moved {}, the model booked {}",
                    show(&moved),
                    show(&want)
                ));
            }
        }
        Ok(out)
    }
}

/// The non-zero counters, by name.
fn show(c: &PortCounters) -> String {
    let drops = DropReason::ALL
        .iter()
        .filter(|r| c.drops[**r as usize] != 0)
        .map(|r| (r.label(), c.drops[*r as usize]));
    let actions = Action::ALL
        .iter()
        .filter(|a| c.actions[**a as usize] != 0)
        .map(|a| (a.label(), c.actions[*a as usize]));
    let parts: Vec<String> = actions.chain(drops).map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", parts.join(" "))
}
