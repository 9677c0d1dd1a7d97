//! Autotuning ([`CompileOptions::autotune`](super::CompileOptions::autotune)): for each
//! locally connected layer whose forward pass has more than one schedule family that
//! can run it ([`crate::lower::schedule::lc::plan`]), compile the layer alone under
//! each family, time them on this machine with the model's thread count, and keep the
//! fastest, so that the heuristics of `schedule/lc.rs` (measured on other CPUs and
//! shapes) can be overruled where this machine disagrees. Choices are cached by layer
//! key, CPU and thread count in a file ([`crate::io::tune_cache`]), so a model compiled
//! again skips the timing.
//!
//! Invariants: tuning changes which schedule runs, never what is computed (every family
//! sums each output's taps in the same order, so a tuned program's outputs are bitwise
//! the untuned one's); the timing stops at the budget (a layer it does not reach keeps
//! its default, and nothing is cached for it); the default is kept unless another family
//! is at least [`MIN_GAIN`] faster, so noise does not flip choices.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{execute, fresh_buffers, Bind, Engine};
use crate::backend::{self, Backend, CodegenOptions};
use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};
use crate::io::tune_cache::{TuneCache, TuneEntry};
use crate::loop_ir::micro::Tier;
use crate::loop_ir::Dtype;
use crate::lower::schedule::lc::{layer_key, ForwardPlan, Plans};
use crate::lower::{lower_forward_for, Target};

/// Fewest timed rounds (one call of every family each) a choice rests on.
const MIN_ROUNDS: usize = 3;
/// Most timed rounds per layer.
const MAX_ROUNDS: usize = 15;
/// Fraction by which another family must beat the default (best of its rounds) to be
/// chosen. Repeated runs of one program on this shared 2-core VM differ by a few per
/// cent at best (more under load); a smaller margin would choose by noise.
pub const MIN_GAIN: f64 = 0.05;

/// How to autotune (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Autotune {
    /// Time budget for timing one model at one batch size, compilation of the
    /// candidates included (cached layers cost nothing).
    pub budget: Duration,
    /// The cache file (`None`: choices last only as long as the compiled model).
    pub cache: Option<PathBuf>,
}

impl Default for Autotune {
    fn default() -> Self {
        Autotune {
            budget: Duration::from_secs(3),
            cache: default_cache_path(),
        }
    }
}

/// The cache file used unless one is given: `$LCJIT_TUNE_CACHE` (empty: none), else
/// `$XDG_CACHE_HOME/lcjit/tune.json`, else `$HOME/.cache/lcjit/tune.json`.
pub fn default_cache_path() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(p) = std::env::var_os("LCJIT_TUNE_CACHE") {
        return (!p.is_empty()).then(|| PathBuf::from(p));
    }
    var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("lcjit").join("tune.json"))
}

/// How a layer's family was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decided {
    /// Timed in this process.
    Measured,
    /// Read from the cache file.
    Cached,
    /// The budget ran out before it was timed: the default family.
    OutOfBudget,
}

/// The tuning of one layer key.
#[derive(Clone, Debug)]
pub struct Trial {
    /// The layers with this key.
    pub layers: Vec<String>,
    /// The key ([`layer_key`]).
    pub key: String,
    /// The candidate families, default first, with their schedule text.
    pub candidates: Vec<(ForwardPlan, String)>,
    /// Best time per call of each candidate in ms (`None`: not timed).
    pub ms: Vec<Option<f64>>,
    /// The family used.
    pub chosen: ForwardPlan,
    /// How it was decided.
    pub decided: Decided,
}

/// The result of tuning a model at one batch size.
#[derive(Clone, Debug, Default)]
pub struct Tuning {
    /// The families the lowering follows.
    pub plans: Arc<Plans>,
    /// One entry per layer key with a choice.
    pub trials: Vec<Trial>,
    /// Time spent tuning (timing, compiling candidates, the cache file), ms.
    pub ms: f64,
}

/// What the host is, for the cache: the CPU's model name (Linux), the architecture and
/// the SIMD tier the schedules use.
pub fn cpu_identity(tier: Option<Tier>) -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{model} ({}, {})",
        std::env::consts::ARCH,
        tier.map_or("f32x4", |t| t.name())
    )
}

/// Tunes the LC layers of `graph` at `batch` rows for `target` (its tier and weight
/// storage) with `threads` threads (see the module docs); `memory_budget` bounds the
/// cache file read.
pub fn tune_forward(
    graph: &Graph,
    batch: usize,
    target: &Target,
    threads: usize,
    opts: &Autotune,
    memory_budget: u64,
) -> Result<Tuning> {
    let start = Instant::now();
    let cpu = cpu_identity(target.tier);
    let mut cache = match &opts.cache {
        Some(p) => Some(TuneCache::load(p, memory_budget)?),
        None => None,
    };
    let mut plans = Plans::default();
    let mut trials: Vec<Trial> = Vec::new();
    let mut pending = Vec::new();
    for (id, n) in graph.nodes.iter().enumerate() {
        let Op::LocallyConnected(l) = &n.op else {
            continue;
        };
        let key = layer_key(graph, id, l, batch, target.tier, target.weights);
        if let Some(t) = trials.iter_mut().find(|t| t.key == key) {
            t.layers.push(n.name.clone());
            continue;
        }
        let candidates = crate::lower::lc::forward_candidates(graph, id, l, batch, target)?;
        if candidates.len() < 2 {
            continue;
        }
        let cached = cache
            .as_ref()
            .and_then(|c| c.lookup(&cpu, threads, &key))
            .and_then(|e| ForwardPlan::parse(&e.plan))
            .filter(|p| candidates.iter().any(|(c, _)| c == p));
        let ms = vec![None; candidates.len()];
        let chosen = cached.unwrap_or(candidates[0].0);
        if cached.is_some() {
            plans.insert(key.clone(), chosen);
        } else {
            pending.push((trials.len(), id));
        }
        trials.push(Trial {
            layers: vec![n.name.clone()],
            key,
            candidates,
            ms,
            chosen,
            decided: if cached.is_some() {
                Decided::Cached
            } else {
                Decided::OutOfBudget
            },
        });
    }
    let count = pending.len();
    for (i, (t, node)) in pending.into_iter().enumerate() {
        // Each layer left gets an equal share of what remains.
        let left = opts.budget.saturating_sub(start.elapsed());
        let share = left / (count - i) as u32;
        let trial = &mut trials[t];
        let Some(ms) = time_layer(graph, node, batch, target, threads, trial, share)? else {
            continue;
        };
        let best = (0..ms.len())
            .min_by(|&a, &b| ms[a].total_cmp(&ms[b]))
            .unwrap_or(0);
        let pick = if ms[best] < ms[0] * (1.0 - MIN_GAIN) {
            best
        } else {
            0
        };
        trial.chosen = trial.candidates[pick].0;
        trial.ms = ms.iter().map(|&m| Some(m)).collect();
        trial.decided = Decided::Measured;
        plans.insert(trial.key.clone(), trial.chosen);
        if let Some(c) = cache.as_mut() {
            c.record(TuneEntry {
                cpu: cpu.clone(),
                threads,
                layer: trial.key.clone(),
                plan: trial.chosen.name().into(),
                ms: trial
                    .candidates
                    .iter()
                    .zip(&ms)
                    .map(|((p, _), m)| (p.name().to_string(), *m))
                    .collect(),
            });
        }
    }
    if let Some(c) = cache.as_mut() {
        c.save(memory_budget)?;
    }
    Ok(Tuning {
        plans: Arc::new(plans),
        trials,
        ms: start.elapsed().as_secs_f64() * 1e3,
    })
}

/// Best ms per call of each candidate of `trial` for LC node `node` run alone, or
/// `None` when compiling, a first call of each and [`MIN_ROUNDS`] rounds (at the first
/// calls' cost) do not fit in `share`; later rounds run while another fits.
#[allow(clippy::too_many_arguments)]
fn time_layer(
    graph: &Graph,
    node: NodeId,
    batch: usize,
    target: &Target,
    threads: usize,
    trial: &Trial,
    share: Duration,
) -> Result<Option<Vec<f64>>> {
    if share.is_zero() {
        return Ok(None);
    }
    let start = Instant::now();
    let one = single_layer(graph, node)?;
    let mut runs = Vec::new();
    for (plan, _) in &trial.candidates {
        let mut plans = Plans::default();
        plans.insert(trial.key.clone(), *plan);
        let t = Target {
            plans: Some(Arc::new(plans)),
            ..target.clone()
        };
        let mut lowered = lower_forward_for(&one, batch, t)?;
        crate::lower::weights::store_weights(&mut lowered, &one, target.weights);
        let program = backend::prepare(Backend::Jit, &lowered.module, &CodegenOptions::default())?;
        let owned = fresh_buffers(&lowered.module);
        runs.push((program, owned));
        if start.elapsed() > share {
            return Ok(None);
        }
    }
    let in_len = batch * one.nodes[one.inputs[0]].shape.iter().product::<usize>();
    let inputs = [Cow::Owned(filled(in_len, 1))];
    let params: Vec<Cow<[f32]>> = one
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| Cow::Owned(filled(p.shape.iter().product(), 2 + i)))
        .collect();
    let half: Vec<Option<Cow<[u16]>>> = (0..one.params.len())
        .map(|p| {
            (target.weights != Dtype::F32 && crate::lower::weights::stored_16bit(&one, p)).then(
                || {
                    Cow::Owned(crate::lower::weights::narrow(
                        params[p].iter().copied(),
                        target.weights,
                    ))
                },
            )
        })
        .collect();
    let bind = Bind {
        inputs: &inputs,
        params: &params,
        half: &half,
        cotangents: &[],
        aux: &[],
        hyper: &[],
    };
    // A first call of each warms caches and pages in the weights, and says what a
    // round costs.
    let warm = Instant::now();
    for (program, owned) in runs.iter_mut() {
        execute(program, &bind, owned, threads)?;
    }
    let round_cost = warm.elapsed();
    if start.elapsed() + round_cost * MIN_ROUNDS as u32 > share {
        return Ok(None);
    }
    // Rounds alternate the candidates, so a change in the machine's load falls on all
    // of them; the best of each candidate's calls is its time (load only adds).
    let mut best = vec![f64::INFINITY; runs.len()];
    for round in 0..MAX_ROUNDS {
        if round >= MIN_ROUNDS && start.elapsed() + round_cost > share {
            break;
        }
        for ((program, owned), b) in runs.iter_mut().zip(best.iter_mut()) {
            let t = Instant::now();
            execute(program, &bind, owned, threads)?;
            *b = b.min(t.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(Some(best))
}

/// A graph of LC node `node` of `graph` alone, fed by an input of its input's shape.
fn single_layer(graph: &Graph, node: NodeId) -> Result<Graph> {
    let n = &graph.nodes[node];
    let src = *n
        .inputs
        .first()
        .ok_or_else(|| Error::internal(format!("layer '{}' has no input", n.name)))?;
    let mut one = Graph::with_budget(format!("{}.tune", n.name), graph.memory_budget);
    let x = one.add_input(
        &format!("{}.tune_input", n.name),
        graph.nodes[src].shape.clone(),
    )?;
    let id = one.add(&n.name, n.op.clone(), &[x])?;
    one.nodes[id].policy = n.policy;
    one.outputs.push(id);
    Ok(one)
}

/// Deterministic values in [-0.5, 0.5) (no denormals, no zeros to skip).
fn filled(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| {
            let h = (i.wrapping_add(seed << 20)).wrapping_mul(2_654_435_761) % 1021;
            h as f32 / 1021.0 - 0.5 + 1.0 / 2048.0
        })
        .collect()
}

impl super::CompiledModel {
    /// With [`super::CompileOptions::autotune`] on the JIT: the tuning of the model at `batch`
    /// rows, done once (the first time a program for that batch is compiled) and kept;
    /// programs of cut graphs use the whole model's, since their layers' keys are the
    /// same. `None` without autotuning.
    pub fn tuning(&self, batch: usize) -> Result<Option<Arc<Tuning>>> {
        let Some(opts) = self.opts.autotune.as_ref() else {
            return Ok(None);
        };
        if self.opts.engine != Engine::Jit {
            return Ok(None);
        }
        let mut tunings = self
            .tunings
            .lock()
            .map_err(|_| Error::internal("tuning cache poisoned"))?;
        if let Some(t) = tunings.get(&batch) {
            return Ok(Some(t.clone()));
        }
        let graph = self.model.graph();
        let target = crate::lower::Target {
            tier: self.opts.wide.resolve()?,
            weights: self.opts.weights_dtype,
            plans: None,
            unfused: false,
        };
        let t = Arc::new(tune_forward(
            graph,
            batch,
            &target,
            self.opts.threads,
            opts,
            graph.memory_budget,
        )?);
        tunings.insert(batch, t.clone());
        Ok(Some(t))
    }
}
