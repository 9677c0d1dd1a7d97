//! The memory budget: how many bytes lcjit may allocate for one model, and the checks
//! that hold every allocation to it *before* it is made.
//!
//! One number, [`crate::LoadOptions::memory_budget`] (`--memory-budget` on the command
//! line, `memory_budget=` in Python), bounds everything a file or a configuration can
//! make lcjit allocate:
//!
//! * **while a graph is built** ([`crate::graph::Graph::add`]): every per-sample tensor,
//!   every weight in canonical and in file layout, and all weights together;
//! * **before a program runs** ([`check_run`]): weights plus every layer's output at the
//!   batch actually used, and for training the gradients, the optimizer state and the
//!   activation gradients too;
//! * **while files are read** ([`crate::io`]): a file's size, every archive entry's
//!   declared uncompressed size and every HDF5 dataset's declared size, checked before
//!   a byte is read or inflated.
//!
//! The default ([`default_memory_budget`]) follows the machine: three quarters of the
//! memory the kernel reports available (`MemAvailable` in `/proc/meminfo`, further bounded
//! by a cgroup `memory.max`), at most half the process's address-space limit
//! (`RLIMIT_AS`, from `/proc/self/limits`: the other half is for code, stacks and the
//! runtime's own copies), and [`FALLBACK_BUDGET`] where none of these can be read.
//!
//! Invariant: every check uses the checked helpers of [`crate::size`]; a size that
//! overflows is reported as a refusal needing "more than 2^64 − 1 bytes", never wrapped.

use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::size;

/// The budget where the machine's memory cannot be read (not Linux, no `/proc`).
pub const FALLBACK_BUDGET: u64 = 4 << 30;
/// The smallest default: a machine reporting almost no free memory still loads the
/// small models of the examples.
const MIN_DEFAULT_BUDGET: u64 = 64 << 20;

/// The default memory budget of this process (see the module docs), computed once.
pub fn default_memory_budget() -> u64 {
    static BUDGET: OnceLock<u64> = OnceLock::new();
    *BUDGET.get_or_init(|| {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        let cgroup = cgroup_headroom();
        derive_budget(
            meminfo.as_deref().and_then(mem_available),
            cgroup,
            limits.as_deref().and_then(address_space_limit),
        )
    })
}

/// The default budget from what the machine reports (each `None` when unknown).
pub fn derive_budget(available: Option<u64>, cgroup: Option<u64>, as_limit: Option<u64>) -> u64 {
    let memory = match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    };
    let mut budget = memory.map_or(FALLBACK_BUDGET, |m| m / 4 * 3);
    if let Some(limit) = as_limit {
        budget = budget.min(limit / 2);
    }
    budget.max(MIN_DEFAULT_BUDGET)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
pub fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut words = line.split_whitespace().skip(1);
    let n: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => n.checked_mul(1024),
        None => Some(n),
        Some(_) => None,
    }
}

/// The soft "Max address space" limit of a `/proc/self/limits` text, in bytes
/// (`None` when unlimited or unreadable).
pub fn address_space_limit(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let soft = line
        .strip_prefix("Max address space")?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// Room left under the cgroup (v2) memory limit of this process, if it has one.
fn cgroup_headroom() -> Option<u64> {
    let max = std::fs::read_to_string("/sys/fs/cgroup/memory.max").ok()?;
    let max: u64 = max.trim().parse().ok()?;
    let current = std::fs::read_to_string("/sys/fs/cgroup/memory.current")
        .ok()
        .and_then(|c| c.trim().parse::<u64>().ok())
        .unwrap_or(0);
    Some(max.saturating_sub(current))
}

/// What a run of a graph at one batch size holds in memory, in bytes. Each tensor's
/// size is computed with the checked helpers (a tensor beyond 2^64 − 1 bytes counts as
/// [`OVERFLOW_BYTES`]); sums are `u128`, which no sum of fewer than 2^64 such sizes
/// can overflow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunMemory {
    /// All weights, canonical layout.
    pub weights: u128,
    /// Every layer's output at the batch (inputs included).
    pub activations: u128,
    /// Training only: weight gradients, optimizer state (up to three slots per weight,
    /// as AMSGrad keeps) and the activations' gradients.
    pub training: u128,
    /// The layer with the largest output and its bytes at the batch.
    pub largest: (String, u128),
}

impl RunMemory {
    /// The total.
    pub fn total(&self) -> u128 {
        self.weights + self.activations + self.training
    }
}

/// A tensor's bytes, [`OVERFLOW_BYTES`] when they do not fit 64 bits.
fn tensor_bytes(r: std::result::Result<u64, size::Overflow>) -> u128 {
    r.map_or(OVERFLOW_BYTES, u128::from)
}

/// The memory a run of `graph` at `batch` samples needs (see [`RunMemory`]).
pub fn run_memory(graph: &Graph, batch: usize, training: bool) -> RunMemory {
    let weights: u128 = graph
        .params
        .iter()
        .map(|p| tensor_bytes(size::f32_bytes(&p.shape)))
        .sum();
    let mut activations = 0u128;
    let mut largest = (String::new(), 0u128);
    for n in &graph.nodes {
        let b = tensor_bytes(size::batch_f32_bytes(batch, &n.shape));
        if b > largest.1 || largest.0.is_empty() {
            largest = (n.name.clone(), b);
        }
        activations += b;
    }
    // gradients (1) + optimizer slots (3) per weight; one gradient per activation.
    let training = if training {
        4 * weights + activations
    } else {
        0
    };
    RunMemory {
        weights,
        activations,
        training,
        largest,
    }
}

/// Refuses a run of `graph` at `batch` samples (training or not) whose memory exceeds
/// the graph's budget, before anything of the run is allocated. The error names the
/// layer with the largest output, the batch, and the needed and allowed bytes.
pub fn check_run(graph: &Graph, batch: usize, training: bool) -> Result<()> {
    check_memory(graph, batch, training, run_memory(graph, batch, training))
}

/// [`check_run`] for an inference run that also holds `copies` bytes of weight copies
/// (the 16-bit weights of `CompileOptions::weights_dtype`, or the rounded f32 weights
/// the reference engine computes with under it).
pub fn check_run_with_copies(graph: &Graph, batch: usize, copies: u128) -> Result<()> {
    let mut mem = run_memory(graph, batch, false);
    mem.weights += copies;
    check_memory(graph, batch, false, mem)
}

/// [`check_run`] for training that also keeps one copy of the weights (the epoch-start
/// weights `fit` restores when an update overflows; see
/// `FitOptions::stop_on_non_finite`).
pub fn check_fit(graph: &Graph, batch: usize, keep_finite: bool) -> Result<()> {
    let mut mem = run_memory(graph, batch, true);
    if keep_finite {
        mem.training += mem.weights;
    }
    check_memory(graph, batch, true, mem)
}

fn check_memory(graph: &Graph, batch: usize, training: bool, mem: RunMemory) -> Result<()> {
    let budget = graph.memory_budget;
    let refuse = |what: String, bytes: u128| Error::Budget {
        source_name: String::new(),
        layer: mem.largest.0.clone(),
        what,
        bytes,
        budget,
    };
    if mem.largest.1 > u128::from(budget) {
        return Err(refuse(
            format!("its output at batch size {batch}"),
            mem.largest.1,
        ));
    }
    let total = mem.total();
    if total > u128::from(budget) {
        let (kind, training_part) = if training {
            (
                "training",
                format!(", gradients and optimizer state {}", mem.training),
            )
        } else {
            ("running", String::new())
        };
        return Err(refuse(
            format!(
                "{kind} the model at batch size {batch} (weights {}, layer outputs {}{training_part}; \
                 this layer's output is the largest)",
                mem.weights, mem.activations
            ),
            total,
        ));
    }
    Ok(())
}

/// The `bytes` of a refusal whose size overflowed 64 bits (printed as "more than …").
pub const OVERFLOW_BYTES: u128 = u64::MAX as u128 + 1;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Activation, Dense, Initializer, Op, WeightOptions};

    #[test]
    fn the_default_follows_the_machine() {
        let meminfo = "MemTotal: 24000000 kB\nMemAvailable:   8000000 kB\n";
        assert_eq!(mem_available(meminfo), Some(8_000_000 * 1024));
        let limits = "Limit Soft Limit Hard Limit Units\n\
                      Max address space         2147483648           unlimited            bytes\n";
        assert_eq!(address_space_limit(limits), Some(2 << 30));
        let unlimited =
            "Max address space         unlimited            unlimited            bytes\n";
        assert_eq!(address_space_limit(unlimited), None);
        assert_eq!(derive_budget(Some(8 << 30), None, None), 6 << 30);
        assert_eq!(derive_budget(Some(8 << 30), Some(4 << 30), None), 3 << 30);
        assert_eq!(derive_budget(Some(8 << 30), None, Some(2 << 30)), 1 << 30);
        assert_eq!(derive_budget(None, None, None), FALLBACK_BUDGET);
        assert_eq!(derive_budget(Some(1 << 20), None, None), MIN_DEFAULT_BUDGET);
        assert!(default_memory_budget() >= MIN_DEFAULT_BUDGET);
    }

    fn dense_graph(budget: u64) -> Graph {
        let mut g = Graph::with_budget("m", budget);
        let x = g.add_input("x", vec![1000]).expect("input");
        let op = Op::Dense(Dense {
            units: 1000,
            use_bias: true,
            activation: Activation::Linear,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        });
        g.add("d", op, &[x]).expect("dense");
        g
    }

    #[test]
    fn the_batch_counts() {
        // 4 MB of weights, 8 kB of outputs per sample.
        let g = dense_graph(64 << 20);
        check_run(&g, 1000, false).expect("8 MB of outputs fit");
        let e = check_run(&g, 100_000, false).expect_err("800 MB do not");
        let text = e.to_string();
        assert!(matches!(e, Error::Budget { .. }), "{text}");
        assert!(
            text.contains("batch size 100000") && text.contains("67108864"),
            "{text}"
        );
        // Training needs the optimizer state too.
        let small = dense_graph(12 << 20);
        check_run(&small, 1, false).expect("inference fits");
        check_run(&small, 1, true).expect_err("training does not");
    }

    #[test]
    fn an_overflowing_batch_is_a_refusal_not_a_wrap() {
        let g = dense_graph(1 << 30);
        for batch in [1usize << 62, usize::MAX] {
            let e = check_run(&g, batch, false).expect_err("overflow");
            assert!(matches!(e, Error::Budget { bytes, .. } if bytes == OVERFLOW_BYTES));
            assert!(e.to_string().contains("more than"), "{e}");
        }
    }
}
