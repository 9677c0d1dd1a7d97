//! Compiled models: a [`Model`] prepared for one engine, thread count and maximum batch.
//!
//! Programs are specialised to their batch size; a [`CompiledModel`] lowers (and for the
//! JIT, compiles) once per batch size it sees, caches the result, and splits batches
//! larger than `max_batch` into chunks whose outputs are written straight into the
//! result (no per-chunk copies to concatenate). It is `Send + Sync`: the cache is behind
//! a mutex and every call gets its own activation buffers, so many threads may predict
//! at once. Inner-layer outputs and streaming prediction over any number of samples with
//! an explicit batch size live in [`predict`]; gradient programs (forward and backward
//! phases, inference or training mode) are cached and run the same way ([`grad`]).
//!
//! Invariant: a cached program is never evicted, so its id (`Prepared::id`) names it
//! for the buffer pool for the model's whole life.

use crate::backend::{self, Backend, BufArg, CodegenOptions, Program};
use crate::error::{Error, Result};
use crate::loop_ir::{BufRole, Dtype, Module};
use crate::lower::{lower_forward_for, Lowered};
use crate::model::Model;
use ndarray::{ArrayD, IxDyn};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

mod cache;
pub mod grad;
mod options;
pub mod predict;
pub mod step;
pub mod tune;

use cache::{CacheKey, Programs};

pub use options::WideTier;

pub use predict::{Collector, OutputBatch};

/// Which program of a model a cache entry holds: the whole model (`None`) or the model
/// cut at these nodes (see [`crate::graph::cut`]).
type ProgramKey = Option<Vec<crate::graph::NodeId>>;

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// The naive per-layer reference path (the oracle).
    Reference,
    /// The loop-IR interpreter (checked, no unsafe).
    Interp,
    /// Native code compiled by Cranelift from the loop IR.
    Jit,
}

impl Engine {
    /// Parses `jit` / `interp` / `reference`.
    pub fn parse(s: &str) -> Result<Engine> {
        match s {
            "reference" => Ok(Engine::Reference),
            "interp" => Ok(Engine::Interp),
            "jit" => Ok(Engine::Jit),
            other => Err(Error::Usage {
                detail: format!("unknown engine '{other}' (expected jit, interp or reference)"),
            }),
        }
    }

    /// The loop-IR executor of this engine: `None` for the reference engine, which runs
    /// the graph layer by layer instead of a loop-IR program. The one place an engine is
    /// mapped to an executor (see [`crate::backend`]).
    pub fn backend(self) -> Option<Backend> {
        match self {
            Engine::Reference => None,
            Engine::Interp => Some(Backend::Interp),
            Engine::Jit => Some(Backend::Jit),
        }
    }

    /// Whether this is the reference engine (no loop-IR program runs).
    pub fn is_reference(self) -> bool {
        self.backend().is_none()
    }

    /// A loop-IR program of this engine: prepared for its executor (the reference
    /// engine's programs are only inspected, so they get the interpreter).
    pub fn prepare(self, module: &Module) -> Result<Program> {
        let b = self.backend().unwrap_or(Backend::Interp);
        backend::prepare(b, module, &CodegenOptions::default())
    }

    /// One line of help per engine, for the command line.
    pub fn help(self) -> &'static str {
        match self.backend() {
            None => "the naive per-layer reference path (the oracle)",
            Some(Backend::Jit) => "Cranelift-compiled native code",
            Some(Backend::Interp) => "the loop-IR interpreter",
            // No engine maps to the ahead-of-time test executor.
            Some(Backend::Aot) => "ahead-of-time object code (tests and tools only)",
        }
    }

    /// The engine's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Engine::Reference => "reference",
            Engine::Interp => "interp",
            Engine::Jit => "jit",
        }
    }
}

/// `--engine jit|interp|reference` on the command line.
impl clap::ValueEnum for Engine {
    fn value_variants<'a>() -> &'a [Self] {
        &[Engine::Reference, Engine::Jit, Engine::Interp]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}

/// How to compile a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Engine.
    pub engine: Engine,
    /// Worker threads (≥ 1).
    pub threads: usize,
    /// Largest batch run in one go; larger batches are split.
    pub max_batch: usize,
    /// How the kernels of locally connected and Dense layers are stored for inference:
    /// f32 (the default), or bfloat16 / half precision, widened in registers, so that
    /// batch-1 inference streams half the bytes (see [`crate::lower::weights`]). The
    /// model computed is the float32 model with those weights rounded to nearest even, on
    /// every engine; gradients and training refuse a 16-bit option.
    pub weights_dtype: Dtype,
    /// Which SIMD tier past f32x4 the schedules of the forward and gradient programs may
    /// use for compute-bound register tiles (see [`crate::loop_ir::micro`]): the best the
    /// CPU has by default. Every choice computes the same bits.
    pub wide: WideTier,
    /// Time the candidate schedules of each LC layer's forward pass on this machine and
    /// keep the fastest (see [`tune`]); `None` (the default): the built-in choices.
    /// Every choice computes the same bits. JIT only (other engines ignore it).
    pub autotune: Option<tune::Autotune>,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            engine: Engine::Jit,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_batch: 32,
            weights_dtype: Dtype::F32,
            wide: WideTier::Auto,
            autotune: None,
        }
    }
}

/// A program for one batch size: the loop IR and its executor.
pub struct Prepared {
    /// The lowered program.
    pub lowered: Lowered,
    /// The prepared module (see [`crate::backend::Program`]).
    pub program: Program,
    /// Lowering plus code generation time in milliseconds.
    pub compile_ms: f64,
    /// Its key in the program cache (which also keys its pooled buffers).
    key: CacheKey,
}

/// A model prepared for one engine.
pub struct CompiledModel {
    model: Arc<Model>,
    opts: CompileOptions,
    /// Forward and gradient programs, and the buffers of finished runs, reused so that
    /// steady-state calls allocate nothing but their outputs (see [`cache`]).
    programs: Programs,
    /// Graphs cut at inner layers, by their output nodes (see [`predict`]).
    cuts: Mutex<HashMap<Vec<crate::graph::NodeId>, Arc<crate::graph::cut::Cut>>>,
    /// With 16-bit weights on a loop-IR engine: the model's 16-bit parameters in that
    /// dtype, by parameter (`None` for f32 ones), converted once.
    narrowed: Vec<Option<Vec<u16>>>,
    /// With 16-bit weights on the reference engine: the model's parameters with the
    /// 16-bit ones rounded (what the loop-IR engines compute with).
    rounded: Option<Vec<ArrayD<f32>>>,
    /// With autotuning: the tuning of the model's graph, per batch size.
    tunings: Mutex<HashMap<usize, Arc<tune::Tuning>>>,
}

impl CompiledModel {
    /// Prepares `model`; lowering happens here for `max_batch` so that errors (a layer the
    /// engine cannot run) surface at once.
    pub fn new(model: Arc<Model>, opts: CompileOptions) -> Result<CompiledModel> {
        if opts.threads == 0 || opts.max_batch == 0 {
            return Err(Error::Usage {
                detail: "threads and max_batch must be at least 1".into(),
            });
        }
        // Every layer's output at the compiled batch, before lowering sizes a buffer,
        // and the weight copies a 16-bit option holds.
        let dtype = opts.weights_dtype;
        let graph = model.graph();
        let copies = match (dtype, opts.engine.is_reference()) {
            (Dtype::F32, _) => 0,
            (_, false) => crate::lower::weights::narrowed_bytes(graph),
            (_, true) => 2 * crate::lower::weights::narrowed_bytes(graph),
        };
        crate::budget::check_run_with_copies(graph, opts.max_batch, copies)?;
        let stored =
            |p: usize| dtype != Dtype::F32 && crate::lower::weights::stored_16bit(graph, p);
        let narrowed = if opts.engine.is_reference() {
            Vec::new()
        } else {
            (0..model.params().len())
                .map(|p| {
                    stored(p).then(|| {
                        crate::lower::weights::narrow(model.params()[p].iter().copied(), dtype)
                    })
                })
                .collect()
        };
        let rounded = (opts.engine.is_reference() && dtype != Dtype::F32)
            .then(|| crate::lower::weights::rounded_params(graph, model.params(), dtype));
        let cm = CompiledModel {
            model,
            opts,
            programs: Programs::default(),
            cuts: Mutex::new(HashMap::new()),
            narrowed,
            rounded,
            tunings: Mutex::new(HashMap::new()),
        };
        if !cm.opts.engine.is_reference() {
            cm.prepared(cm.opts.max_batch)?;
        }
        Ok(cm)
    }

    /// The program for `batch` rows (lowered and compiled once, then cached).
    pub fn prepared(&self, batch: usize) -> Result<Arc<Prepared>> {
        self.prepared_for(&None, self.model.graph(), batch)
    }

    /// The program of `graph` (the model's, or the model cut at the nodes of `key`) for
    /// `batch` rows, cached under `key`.
    fn prepared_for(
        &self,
        key: &ProgramKey,
        graph: &crate::graph::Graph,
        batch: usize,
    ) -> Result<Arc<Prepared>> {
        let engine = self.opts.engine;
        let key = CacheKey::Forward(key.clone(), batch);
        self.programs.forward(key.clone(), || {
            let tier = self.opts.wide.resolve()?;
            let plans = self.tuning(batch)?.map(|t| t.plans.clone());
            let t = std::time::Instant::now();
            let target = crate::lower::Target {
                tier,
                weights: self.opts.weights_dtype,
                plans,
                unfused: false,
            };
            let mut lowered = lower_forward_for(graph, batch, target)?;
            crate::lower::weights::store_weights(&mut lowered, graph, self.opts.weights_dtype);
            let program = engine.prepare(&lowered.module)?;
            Ok(Prepared {
                lowered,
                program,
                compile_ms: t.elapsed().as_secs_f64() * 1e3,
                key,
            })
        })
    }

    /// The lowered program for `batch` rows (cached).
    pub fn lowered(&self, batch: usize) -> Result<Lowered> {
        Ok(self.prepared(batch)?.lowered.clone())
    }

    /// Changes the worker threads of later runs. Compiled programs do not depend on the
    /// thread count (a parallel loop is split into chunks when it runs, see
    /// `backend::cranelift::runtime`), so nothing is recompiled and the outputs stay
    /// bitwise identical to those of any other count.
    pub fn set_threads(&mut self, threads: usize) -> Result<()> {
        if threads == 0 {
            return Err(Error::Usage {
                detail: "threads must be at least 1".into(),
            });
        }
        self.opts.threads = threads;
        Ok(())
    }

    /// The options this model was compiled with.
    pub fn options(&self) -> &CompileOptions {
        &self.opts
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs the model on a batch and returns its first output.
    pub fn predict(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut outs = self.predict_many(std::slice::from_ref(x))?;
        if outs.is_empty() {
            return Err(Error::internal("model produced no output"));
        }
        Ok(outs.swap_remove(0))
    }

    /// Runs the model on one batch per input and returns every output.
    pub fn predict_many(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.predict_with(self.model.params(), inputs)
    }

    /// [`CompiledModel::predict_many`] with other values of the model's parameters
    /// (canonical layout, one array per graph parameter), e.g. during training.
    pub fn predict_with(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
    ) -> Result<Vec<ArrayD<f32>>> {
        self.model.check_inputs(inputs)?;
        self.check_params(params)?;
        if self.opts.engine.is_reference() {
            let params = self.reference_params(params);
            return crate::reference::forward(self.model.graph(), &params, inputs);
        }
        let batch = inputs.first().map(|x| x.shape()[0]).unwrap_or(0);
        if batch <= self.opts.max_batch {
            // One chunk: run on the caller's arrays without slicing copies.
            return self.run_chunk(params, inputs, batch);
        }
        let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
        let mut outs = predict::Collector::default();
        self.stream(params, &views, &[], self.opts.max_batch, &mut |b| {
            outs.add(b)
        })?;
        Ok(outs.into_arrays()?.into_iter().map(|(_, a)| a).collect())
    }

    /// Errors unless `params` has the shapes of the graph's parameters.
    fn check_params(&self, params: &[ArrayD<f32>]) -> Result<()> {
        let specs = &self.model.graph().params;
        if params.len() != specs.len()
            || params
                .iter()
                .zip(specs)
                .any(|(p, s)| p.shape() != s.shape.as_slice())
        {
            return Err(Error::internal("parameters do not match the graph"));
        }
        Ok(())
    }

    fn run_chunk(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        batch: usize,
    ) -> Result<Vec<ArrayD<f32>>> {
        let prepared = self.prepared(batch)?;
        let inputs: Vec<Cow<[f32]>> = inputs.iter().map(flat).collect();
        let graph = self.model.graph();
        let all: Vec<usize> = (0..params.len()).collect();
        let bound = self.bind_params(params, &all);
        self.run_prepared(&prepared, &bound, &inputs, |outs| {
            outs.iter()
                .zip(&graph.outputs)
                .map(|(data, &node)| {
                    let mut shape = vec![batch];
                    shape.extend_from_slice(&graph.nodes[node].shape);
                    ArrayD::from_shape_vec(IxDyn(&shape), data.to_vec())
                        .map_err(|e| Error::internal(e.to_string()))
                })
                .collect()
        })
    }

    /// Runs `prepared` on one batch (inputs and parameters bound in the program's
    /// order) and hands `f` its output buffers, in the program's output order; the
    /// activation buffers go back to the pool afterwards.
    fn run_prepared<R>(
        &self,
        prepared: &Prepared,
        params: &BoundParams,
        inputs: &[Cow<[f32]>],
        f: impl FnOnce(&[&[f32]]) -> Result<R>,
    ) -> Result<R> {
        let m = &prepared.lowered.module;
        // Writable buffers (outputs and slots), reused across calls.
        let mut owned = self.take_buffers(&prepared.key, m);
        let read = Bind {
            inputs,
            params: &params.f32s,
            half: &params.halves,
            cotangents: &[],
            aux: &[],
            hyper: &[],
        };
        execute(&prepared.program, &read, &mut owned, self.opts.threads)?;
        let result = prepared
            .lowered
            .output_bufs
            .iter()
            .map(|&b| {
                let len = m.buffers.get(b as usize).map_or(0, |buf| buf.len);
                owned
                    .get(writable_index(m, b))
                    .and_then(|v| v.get(..len))
                    .ok_or_else(|| Error::internal("output buffer missing"))
            })
            .collect::<Result<Vec<&[f32]>>>()
            .and_then(|outs| f(&outs));
        self.programs.give_back(prepared.key.clone(), owned);
        result
    }

    /// The data of a program's parameters, `map[i]` being the model parameter of program
    /// parameter `i` (the identity, or a cut's `param_map`): every one as f32, and the
    /// 16-bit ones of a 16-bit option also narrowed (converted once for the model's own
    /// parameters, per call for others, e.g. during training).
    fn bind_params<'a>(&'a self, params: &'a [ArrayD<f32>], map: &[usize]) -> BoundParams<'a> {
        let f32s = map.iter().map(|&p| flat(&params[p])).collect();
        let dtype = self.opts.weights_dtype;
        let own = std::ptr::eq(params.as_ptr(), self.model.params().as_ptr());
        let halves = map
            .iter()
            .map(|&p| {
                if dtype == Dtype::F32
                    || !crate::lower::weights::stored_16bit(self.model.graph(), p)
                {
                    return None;
                }
                match self.narrowed.get(p) {
                    Some(Some(h)) if own => Some(Cow::Borrowed(h.as_slice())),
                    _ => Some(Cow::Owned(crate::lower::weights::narrow(
                        params[p].iter().copied(),
                        dtype,
                    ))),
                }
            })
            .collect();
        BoundParams { f32s, halves }
    }

    /// The parameters the reference engine computes with: `params`, with the 16-bit ones
    /// rounded under a 16-bit option (what the loop-IR engines widen from memory).
    fn reference_params<'a>(&'a self, params: &'a [ArrayD<f32>]) -> Cow<'a, [ArrayD<f32>]> {
        let dtype = self.opts.weights_dtype;
        if dtype == Dtype::F32 {
            return Cow::Borrowed(params);
        }
        if let Some(r) = &self.rounded {
            if std::ptr::eq(params.as_ptr(), self.model.params().as_ptr()) {
                return Cow::Borrowed(r.as_slice());
            }
        }
        Cow::Owned(crate::lower::weights::rounded_params(
            self.model.graph(),
            params,
            dtype,
        ))
    }

    fn take_buffers(&self, key: &CacheKey, m: &Module) -> Vec<Vec<f32>> {
        if let Some(mut pool) = self.programs.pool() {
            if let Some(i) = pool.iter().position(|(k, _)| k == key) {
                return pool.swap_remove(i).1;
            }
        }
        fresh_buffers(m)
    }
}

/// Zeroed storage for every writable buffer of `m`, in buffer order (empty for those the
/// caller binds, [`BufRole::is_bound`]).
fn fresh_buffers(m: &Module) -> Vec<Vec<f32>> {
    m.buffers
        .iter()
        .filter(|b| !b.role.is_read_only())
        .map(|b| {
            if b.role.is_bound() {
                Vec::new()
            } else {
                vec![0.0; b.len]
            }
        })
        .collect()
}

/// Position of writable buffer `buf` among the writable buffers of `m`.
fn writable_index(m: &Module, buf: u32) -> usize {
    m.buffers[..buf as usize]
        .iter()
        .filter(|b| !b.role.is_read_only())
        .count()
}

/// A program's parameter data (see [`CompiledModel::bind_params`]).
struct BoundParams<'a> {
    /// Every parameter as f32.
    f32s: Vec<Cow<'a, [f32]>>,
    /// The 16-bit data of parameters stored so (`None` for the others).
    halves: Vec<Option<Cow<'a, [u16]>>>,
}

/// The data bound to a module's read-only buffers, by role.
struct Bind<'a> {
    inputs: &'a [std::borrow::Cow<'a, [f32]>],
    params: &'a [std::borrow::Cow<'a, [f32]>],
    /// Per parameter, its 16-bit data when the module stores it in 16 bits (may be empty
    /// when none does).
    half: &'a [Option<Cow<'a, [u16]>>],
    cotangents: &'a [&'a [f32]],
    aux: &'a [&'a [f32]],
    /// The hyper buffer of a training step's in-place updates (empty without).
    hyper: &'a [f32],
}

impl<'a> Bind<'a> {
    fn get(&self, role: &'a BufRole) -> Option<&'a [f32]> {
        match role {
            BufRole::Input(i) => self.inputs.get(*i).map(|x| &**x),
            BufRole::Param(i) => self.params.get(*i).map(|x| &**x),
            BufRole::Cotangent(i) => self.cotangents.get(*i).copied(),
            BufRole::Aux(i) => self.aux.get(*i).copied(),
            BufRole::Hyper => Some(self.hyper),
            BufRole::Const(v) => Some(v),
            _ => None,
        }
    }
}

/// Runs `program` over its buffer table: read-only buffers from `read` (by role, shared,
/// never copied), writable ones from `owned`, in buffer order (see [`fresh_buffers`]),
/// which keep their contents for the caller.
fn execute(
    program: &Program,
    read: &Bind<'_>,
    owned: &mut [Vec<f32>],
    threads: usize,
) -> Result<()> {
    let m = program.module();
    let missing = |b: &crate::loop_ir::Buffer| {
        Error::internal(format!("no data bound to read-only buffer {}", b.name))
    };
    let mut args = Vec::with_capacity(m.buffers.len());
    let mut writable = owned.iter_mut();
    for b in &m.buffers {
        args.push(if b.dtype != Dtype::F32 {
            let BufRole::Param(i) = b.role else {
                return Err(missing(b));
            };
            let data = read.half.get(i).and_then(Option::as_deref);
            BufArg::ReadHalf(data.ok_or_else(|| missing(b))?, b.dtype)
        } else if b.role.is_read_only() {
            BufArg::Read(read.get(&b.role).ok_or_else(|| missing(b))?)
        } else {
            BufArg::Write(
                writable
                    .next()
                    .ok_or_else(|| Error::internal("buffer pool mismatch"))?,
            )
        });
    }
    program.run(&mut args, threads)
}

/// A contiguous row-major view of an array, copied only if it is not standard layout.
fn flat<'a, S: ndarray::Data<Elem = f32>>(a: &'a ndarray::ArrayBase<S, IxDyn>) -> Cow<'a, [f32]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}
