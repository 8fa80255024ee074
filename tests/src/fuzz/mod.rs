//! Differential fuzzing of the kernel programs against the reference model
//! (`crate::model`): seeded random bindings and structure-aware frames, each
//! frame run through the real program (`BPF_PROG_TEST_RUN`, traced) and the
//! model; any difference, and any broken invariant, is reported as a
//! reproducible case.

pub mod bindings;
pub mod counters;
pub mod frames;
pub mod invariants;
pub mod kernel;
pub mod rng;
pub mod runner;
pub mod shim;
