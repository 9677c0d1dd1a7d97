//! Benchmarks: flop counts, the machine's roofline measured with Cranelift-generated probe
//! kernels, and timing of a model on every engine (`lcjit bench`).
//!
//! The roofline is what *this backend* can reach on this machine: a streaming kernel that
//! reads a buffer much larger than the caches with f32x4 loads (read bandwidth), and a
//! kernel of 12 independent f32x4 FMA chains per thread (FMA rate). Both are written in
//! the loop IR and compiled like any model, so they share the model's code generator; on a
//! CPU with a wide tier, a third probe measures its microkernels' FMA rate
//! (`bench/wide_probe.rs`).

mod json;
mod report;
mod wide_probe;

pub use report::BenchReport;
pub use wide_probe::WideRate;

use crate::backend::{self, Backend, BufArg, CodegenOptions};
use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, BinOp, BufRole, Buffer, Expr, KernelBuilder, LoopKind,
    Module, Stmt,
};
use std::time::Instant;

/// Floating-point operations (multiply and add counted separately) of one forward pass.
/// Only the layers whose cost is a dot product are counted (LC, Dense, Conv); clipped
/// `same` taps are counted as if present, as tf-keras's implementation-1 math does them.
pub fn forward_flops(graph: &Graph, batch: usize) -> u64 {
    let mut total = 0u64;
    for n in &graph.nodes {
        let per_sample: u64 = match &n.op {
            Op::LocallyConnected(_) | Op::Dense(_) | Op::Conv(_) => n
                .params
                .iter()
                .filter(|&&p| graph.params[p].name == "kernel")
                .map(|&p| {
                    let k = &graph.params[p];
                    match &n.op {
                        // Each kernel element is used once per sample.
                        Op::LocallyConnected(_) => k.len() as u64,
                        // Once per sample and leading position.
                        Op::Dense(d) => {
                            let rows: usize = n.shape.iter().product::<usize>() / d.units;
                            (k.len() * rows) as u64
                        }
                        // Once per output position.
                        Op::Conv(c) => {
                            let positions: usize = n.shape.iter().product::<usize>() / c.filters;
                            (k.len() * positions) as u64
                        }
                        _ => 0,
                    }
                })
                .sum::<u64>(),
            _ => 0,
        };
        total += 2 * per_sample * batch as u64;
    }
    total
}

/// Bytes of all weights as stored with LC and Dense kernels in `dtype` (16-bit ones
/// take 2 bytes, see [`crate::lower::weights`]).
pub fn stored_weight_bytes(graph: &Graph, dtype: crate::loop_ir::Dtype) -> u64 {
    let narrowed = match dtype {
        crate::loop_ir::Dtype::F32 => 0,
        _ => crate::lower::weights::narrowed_bytes(graph),
    };
    // Each narrowed weight saves 2 of its 4 bytes.
    let saved = u64::try_from(narrowed).unwrap_or(u64::MAX);
    weight_bytes(graph).saturating_sub(saved)
}

/// Bytes a forward pass at `batch` must move at least, as issue 12 states its traffic
/// bound for memory-bound models: the weights as stored, the model inputs read once,
/// and every other node's output written once and read once (4 bytes per element).
/// Layers the lowering fuses or skips (an output that is its input's view) would move
/// less, so the bound is generous to lcjit only where nothing is fused.
pub fn traffic_bytes(graph: &Graph, batch: usize, dtype: crate::loop_ir::Dtype) -> u64 {
    let elems =
        |id: usize| 4 * batch as u64 * graph.nodes[id].shape.iter().product::<usize>() as u64;
    let inputs: u64 = graph.inputs.iter().map(|&id| elems(id)).sum();
    let outputs: u64 = (0..graph.nodes.len())
        .filter(|id| !graph.inputs.contains(id))
        .map(|id| 2 * elems(id))
        .sum();
    stored_weight_bytes(graph, dtype) + inputs + outputs
}

/// Bytes of all weights in f32 (canonical layout).
pub fn weight_bytes(graph: &Graph) -> u64 {
    graph.params.iter().map(|p| 4 * p.len() as u64).sum()
}

/// Median of `reps` timings of `f`, in milliseconds, after one warm-up call.
pub fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// What the probes measured.
#[derive(Clone, Copy, Debug)]
pub struct Roofline {
    /// Read bandwidth of f32x4 loads in GB/s (10^9 bytes per second).
    pub read_gbps: f64,
    /// f32x4 FMA rate in GFLOP/s (an FMA counts 2 flops per lane).
    pub fma_gflops: f64,
    /// The FMA rate and read bandwidth of the widest tier's microkernels, when the CPU
    /// has one.
    pub wide: Option<WideRate>,
}

impl Roofline {
    /// The fastest read bandwidth measured (GB/s): the wide tier's streaming tile where
    /// it beats f32x4 loads. Time to stream bytes is measured against this.
    pub fn stream_gbps(&self) -> f64 {
        self.wide
            .map_or(self.read_gbps, |w| w.read_gbps.max(self.read_gbps))
    }
}

/// Chunks the probes split their work into (more than any thread count used here).
const CHUNKS: usize = 64;

fn stream_probe(len: usize) -> Module {
    let chunk = len / CHUNKS;
    let mut kb = KernelBuilder::new("probe.stream");
    let (t, i, u, v, u2, v2, u3, v3) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("u"),
        kb.var("v"),
        kb.var("u2"),
        kb.var("v2"),
        kb.var("u3"),
        kb.var("v3"),
    );
    let acc = kb.local("acc", 16);
    let at = |u, v| Affine::var(u).scale(4).plus_term(v, 1);
    let body = vec![
        for_(
            u2,
            4,
            LoopKind::Unroll(4),
            vec![for_(
                v2,
                4,
                LoopKind::Vector(4),
                vec![Stmt::SetLocal {
                    local: acc,
                    index: at(u2, v2),
                    value: Expr::Const(0.0),
                }],
            )],
        ),
        for_(
            i,
            (chunk / 16) as u64,
            LoopKind::Serial,
            vec![for_(
                u,
                4,
                LoopKind::Unroll(4),
                vec![for_(
                    v,
                    4,
                    LoopKind::Vector(4),
                    vec![Stmt::SetLocal {
                        local: acc,
                        index: at(u, v),
                        value: crate::loop_ir::bin(
                            BinOp::Add,
                            load_local(acc, at(u, v)),
                            load(
                                0,
                                Affine::var(t)
                                    .scale(chunk as i64)
                                    .plus_term(i, 16)
                                    .plus_term(u, 4)
                                    .plus_term(v, 1),
                            ),
                        ),
                    }],
                )],
            )],
        ),
        for_(
            u3,
            4,
            LoopKind::Unroll(4),
            vec![for_(
                v3,
                4,
                LoopKind::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: Affine::var(t).scale(16).plus_term(u3, 4).plus_term(v3, 1),
                    value: load_local(acc, at(u3, v3)),
                }],
            )],
        ),
    ];
    probe_module(
        len,
        CHUNKS * 16,
        kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)]),
    )
}

/// A probe module: one input buffer, one output buffer, one kernel.
fn probe_module(input_len: usize, output_len: usize, kernel: crate::loop_ir::Kernel) -> Module {
    Module {
        name: "probe".into(),
        buffers: vec![
            Buffer {
                name: "x".into(),
                len: input_len,
                role: BufRole::Input(0),
                dtype: crate::loop_ir::Dtype::F32,
            },
            Buffer {
                name: "y".into(),
                len: output_len,
                role: BufRole::Output(0),
                dtype: crate::loop_ir::Dtype::F32,
            },
        ],
        kernels: vec![kernel],
    }
}

/// 12 independent f32x4 FMA chains per chunk, `iters` times.
fn fma_probe(iters: u64) -> Module {
    let mut kb = KernelBuilder::new("probe.fma");
    let (t, i, u, v, u2, v2, u3, v3) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("u"),
        kb.var("v"),
        kb.var("u2"),
        kb.var("v2"),
        kb.var("u3"),
        kb.var("v3"),
    );
    let acc = kb.local("acc", 48);
    let at = |u, v| Affine::var(u).scale(4).plus_term(v, 1);
    let body = vec![
        for_(
            u2,
            12,
            LoopKind::Unroll(12),
            vec![for_(
                v2,
                4,
                LoopKind::Vector(4),
                vec![Stmt::SetLocal {
                    local: acc,
                    index: at(u2, v2),
                    value: Expr::Const(1.0),
                }],
            )],
        ),
        for_(
            i,
            iters,
            LoopKind::Serial,
            vec![for_(
                u,
                12,
                LoopKind::Unroll(12),
                vec![for_(
                    v,
                    4,
                    LoopKind::Vector(4),
                    vec![Stmt::SetLocal {
                        local: acc,
                        index: at(u, v),
                        value: fma(
                            load_local(acc, at(u, v)),
                            load(0, Affine::constant(0)),
                            load(0, Affine::constant(1)),
                        ),
                    }],
                )],
            )],
        ),
        for_(
            u3,
            12,
            LoopKind::Unroll(12),
            vec![for_(
                v3,
                4,
                LoopKind::Vector(4),
                vec![Stmt::Store {
                    buf: 1,
                    index: Affine::var(t).scale(48).plus_term(u3, 4).plus_term(v3, 1),
                    value: load_local(acc, at(u3, v3)),
                }],
            )],
        ),
    ];
    probe_module(
        2,
        CHUNKS * 48,
        kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)]),
    )
}

/// Measures read bandwidth (over a 512 MiB buffer), the f32x4 FMA rate and the wide
/// tier's FMA rate with `threads` threads.
pub fn roofline(threads: usize) -> Result<Roofline> {
    let opts = CodegenOptions::default();
    let len = 128 << 20; // 512 MiB of f32, far beyond any cache
    let stream = backend::prepare(Backend::Jit, &stream_probe(len), &opts)?;
    let mut x = vec![1.0f32; len];
    let mut y = vec![0.0f32; CHUNKS * 16];
    let ms = median_ms(5, || {
        stream.run(&mut [BufArg::Write(&mut x), BufArg::Write(&mut y)], threads)
    })?;
    let read_gbps = (4 * len) as f64 / (ms * 1e-3) / 1e9;
    let wide = wide_probe::wide_rate(threads, &mut x)?;
    drop(x);
    let iters = 200_000u64;
    let fmas = backend::prepare(Backend::Jit, &fma_probe(iters), &opts)?;
    let mut c = vec![0.999_999f32, 1e-7];
    let mut y = vec![0.0f32; CHUNKS * 48];
    let ms = median_ms(5, || {
        fmas.run(&mut [BufArg::Write(&mut c), BufArg::Write(&mut y)], threads)
    })?;
    let flops = CHUNKS as f64 * iters as f64 * 48.0 * 2.0;
    Ok(Roofline {
        read_gbps,
        fma_gflops: flops / (ms * 1e-3) / 1e9,
        wide,
    })
}

/// Median of timed calls of `f` in ms: one warm-up, then at least 3 calls and until
/// about half a second has passed (at most 1000 calls). Sub-millisecond calls get many
/// samples: with at most 50, a batch-1 median of a small model came from a 25 ms window,
/// and one slow spell of a shared host moved it by 2× (lc1d_f2 at one thread: 0.43–0.83
/// ms in consecutive runs, against 0.40 ms in `examples/perf_lc_grad`).
pub fn adaptive_median_ms(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::new();
    let start = Instant::now();
    while t.len() < 3 || (start.elapsed().as_secs_f64() < 0.5 && t.len() < 1000) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// What [`bench_model`] measures.
#[derive(Clone, Debug)]
pub struct BenchRun<'a> {
    /// Batch size.
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// Engines to time, in order.
    pub engines: &'a [crate::Engine],
    /// Also run the roofline probe.
    pub probe: bool,
    /// Also time a training step.
    pub train: bool,
    /// How LC and Dense kernels are stored for the forward pass
    /// ([`crate::CompileOptions::weights_dtype`]); training steps always use f32.
    pub weights_dtype: crate::loop_ir::Dtype,
    /// The wide tier of the compiled engines ([`crate::CompileOptions::wide`]).
    pub wide: crate::WideTier,
    /// Time the training step with the whole optimizer update as its own program after
    /// the gradient program, instead of updating LC kernels in their backward kernels
    /// as `fit` does (see [`crate::lower::in_place`]): the comparison of the two.
    pub separate_update: bool,
    /// Autotune the JIT's forward schedules first ([`crate::CompileOptions::autotune`]);
    /// the report lists every layer's candidates and times.
    pub autotune: Option<crate::runtime::tune::Autotune>,
}

/// Benchmarks `model` as `run` says.
pub fn bench_model(
    name: &str,
    model: std::sync::Arc<crate::Model>,
    run: &BenchRun,
) -> Result<BenchReport> {
    let BenchRun {
        batch,
        threads,
        engines,
        probe,
        train,
        weights_dtype,
        wide,
        separate_update,
        ref autotune,
    } = *run;
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let mut rng = crate::init::Rng::new(7);
    let n: usize = shape.iter().product();
    let x = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&shape),
        (0..n).map(|_| rng.uniform() as f32).collect(),
    )
    .map_err(|e| crate::Error::internal(e.to_string()))?;
    let mut forward_ms = Vec::new();
    let mut compile_ms_forward = None;
    let mut train_ms = Vec::new();
    let mut compile_ms_backward = None;
    let mut tuning = None;
    for &engine in engines {
        let opts = crate::CompileOptions {
            engine,
            threads,
            max_batch: batch,
            weights_dtype,
            wide,
            autotune: autotune.clone(),
        };
        let compiled = crate::CompiledModel::new(model.clone(), opts.clone())?;
        if engine.backend() == Some(Backend::Jit) {
            compile_ms_forward = Some(compiled.prepared(batch)?.compile_ms);
            tuning = compiled.tuning(batch)?;
        }
        let ms = adaptive_median_ms(|| compiled.predict(&x).map(|_| ()))?;
        forward_ms.push((engine, ms));
        if train {
            // Training is f32 (16-bit weights are an inference option).
            let compiled = if weights_dtype == crate::loop_ir::Dtype::F32 {
                compiled
            } else {
                crate::CompiledModel::new(
                    model.clone(),
                    crate::CompileOptions {
                        weights_dtype: crate::loop_ir::Dtype::F32,
                        ..opts
                    },
                )?
            };
            let (ms, compile) = train_step_ms(&compiled, &x, separate_update)?;
            train_ms.push((engine, ms));
            if engine.backend() == Some(Backend::Jit) {
                compile_ms_backward = compile;
            }
        }
    }
    Ok(BenchReport {
        model: name.to_string(),
        batch,
        threads,
        params: model.graph().keras_param_count(),
        weight_bytes: weight_bytes(model.graph()),
        weights_dtype,
        stored_weight_bytes: stored_weight_bytes(model.graph(), weights_dtype),
        traffic_bytes: traffic_bytes(model.graph(), batch, weights_dtype),
        forward_flops: forward_flops(model.graph(), batch),
        compile_ms_forward,
        tuning,
        forward_ms,
        train_flops: train.then(|| 3 * forward_flops(model.graph(), batch)),
        compile_ms_backward,
        train_ms,
        roofline: if probe {
            Some(roofline(threads)?)
        } else {
            None
        },
    })
}

/// The optimizer of the benchmarked training step: tf-keras Adam at a learning rate of
/// 1e-6 (small, so repeated steps keep the weights near their trained values).
pub fn train_step_optimizer() -> crate::train::Optimizer {
    use crate::train::{Algorithm, Flavor, LearningRate, Optimizer, OptimizerConfig};
    Optimizer::new(OptimizerConfig {
        name: "Adam".into(),
        algorithm: Algorithm::Adam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            amsgrad: false,
        },
        learning_rate: LearningRate::Constant(1e-6),
        flavor: Flavor::TfKeras,
        clipnorm: None,
        clipvalue: None,
        global_clipnorm: None,
        weight_decay: None,
        decay: 0.0,
    })
}

/// Median time of one training step of `compiled` on `x` (forward, backward of a mean
/// squared error against zeros, and an Adam update of every trainable weight, compiled on
/// the same engine: inside the LC kernel-gradient kernels as `fit` runs it, or all of it
/// as its own program with `separate`), and the compile time of the gradient and update
/// programs for the JIT.
fn train_step_ms(
    compiled: &crate::CompiledModel,
    x: &ndarray::ArrayD<f32>,
    separate: bool,
) -> Result<(f64, Option<f64>)> {
    use crate::train::Loss;
    let graph = compiled.model().graph();
    let trainable: Vec<bool> = graph.params.iter().map(|p| p.trainable).collect();
    let mut params = compiled.model().params().to_vec();
    let mut opt = train_step_optimizer();
    let loss = Loss::MeanSquaredError;
    let inputs = std::slice::from_ref(x);
    let batch = x.shape()[0];
    let (engine, threads) = (compiled.options().engine, compiled.options().threads);
    let rule = match separate || engine.is_reference() {
        true => None,
        false => opt.in_place_rule(trainable.clone()),
    };
    // Training mode, as fit runs it (Dropout masks, batch statistics, no input gradient).
    let mut rng = crate::init::Rng::new(0);
    // The targets (zeros) are made once, as a training loop's data is there before it.
    let mut target: Option<ndarray::ArrayD<f32>> = None;
    let mut cotangent = |outs: &[ndarray::ArrayD<f32>]| -> Result<ndarray::ArrayD<f32>> {
        let y = outs
            .first()
            .ok_or_else(|| crate::Error::internal("model produced no output"))?;
        let t = match target.take() {
            Some(t) if t.shape() == y.shape() => t,
            _ => ndarray::ArrayD::zeros(y.raw_dim()),
        };
        let grad = loss.value_and_grad(&t, y)?.1;
        target = Some(t);
        Ok(grad)
    };
    let ms = adaptive_median_ms(|| {
        let Some(rule) = &rule else {
            let run = compiled.run_gradients_in(&params, inputs, Some(&mut rng), &mut cotangent)?;
            opt.step_compiled(&mut params, &run.dparams, &trainable, engine, threads)?;
            compiled.recycle_gradients(batch, run.dparams);
            return Ok(());
        };
        let updated = compiled.updated_in_place(batch, rule)?;
        let (hyper, pending) = opt.begin_in_place(&params, &trainable, updated, rule)?;
        let in_place = crate::runtime::step::InPlace {
            rule,
            hyper: &hyper,
            slots: opt.slot_refs(),
        };
        let run = compiled
            .run_training_step(&mut params, inputs, &mut rng, in_place, &mut |o| {
                cotangent(o).map(Some)
            })?
            .ok_or_else(|| crate::Error::internal("training step stopped"))?;
        opt.finish_in_place(
            &mut params,
            &run.dparams,
            &trainable,
            pending,
            engine,
            threads,
        )?;
        compiled.recycle_gradients(batch, run.dparams);
        Ok(())
    })?;
    let compile = match compiled.options().engine.backend() {
        Some(Backend::Jit) => {
            // The programs the step ran: the gradient program (with its in-place updates)
            // and the update of the other trainable parameters.
            let (grad, updated) = match &rule {
                Some(rule) => {
                    let p = compiled.prepared_step(batch, rule)?;
                    let updated = p.lowered.updated.clone();
                    (p, updated)
                }
                None => (
                    compiled.prepared_grad_in(batch, crate::lower::grad::Mode::Training)?,
                    vec![false; graph.params.len()],
                ),
            };
            let lens: Vec<Option<usize>> = graph
                .params
                .iter()
                .zip(&updated)
                .map(|(p, &u)| (p.trainable && !u).then_some(p.len()))
                .collect();
            let t = Instant::now();
            crate::train::update::CompiledUpdate::build(&opt.config, &lens, crate::Engine::Jit)?;
            let update_ms = t.elapsed().as_secs_f64() * 1e3;
            Some(grad.compile_ms + update_ms)
        }
        _ => None,
    };
    Ok((ms, compile))
}
