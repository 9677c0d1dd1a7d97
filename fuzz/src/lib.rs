//! The fuzz harness of lcjit: one function per fuzz target, each taking the fuzzer's
//! bytes and driving them through the public entry points a user reaches.
//!
//! This file is shared, unchanged, by the `cargo fuzz` targets (`fuzz/fuzz_targets/`) and
//! by the regression replay `tests/fuzz_regressions.rs` (which includes it with
//! `#[path]`), so a committed finding is replayed through exactly the code that found it,
//! on every `cargo test`, without cargo fuzz.
//!
//! Contract of every target function: `Ok(())` when lcjit behaved — it accepted the input
//! or refused it with a user error (exit 2 in the CLI). `Err(text)` is a finding: an
//! internal error ([`Error::is_internal`], exit 3) on user input, or engines that disagree.
//! Panics, aborts, hangs and out-of-memory are findings too; libFuzzer catches those (its
//! `-rss_limit_mb`/`-timeout`), the replay test catches panics.
//!
//! Every load runs under [`MEMORY_BUDGET`] (through [`LoadOptions::memory_budget`],
//! [`Graph::with_budget`] or the `io` readers' `*_within` forms) so a hostile size is
//! refused instead of exhausting the machine; libFuzzer's RSS limit turns an allocation
//! that escapes the budget into a finding.

use lcjit::graph::{
    Activation, BatchNorm, Conv, DataFormat, Dense, Graph, Initializer, LocallyConnected,
    MergeKind, NodeId, Op, Padding, PoolKind, WeightOptions,
};
use lcjit::io::npy::stream::NpyInput;
use lcjit::{CompileOptions, CompiledModel, Engine, Error, LoadOptions, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Memory budget of every load and graph in the harness: large enough for every golden
/// seed, small enough that a fuzzer process stays far below libFuzzer's RSS limit.
pub const MEMORY_BUDGET: u64 = 64 << 20;

/// One target's entry point: `Ok` when lcjit behaved, `Err(finding)` otherwise.
pub type Target = fn(&[u8]) -> Result<(), String>;

/// The targets, by name: the names of the `cargo fuzz` binaries and of the directories
/// under `tests/fuzz_regressions/`.
pub const TARGETS: [(&str, Target); 6] = [
    ("keras_json", keras_json),
    ("h5", h5),
    ("keras_archive", keras_archive),
    ("npz", npz),
    ("npy", npy),
    ("structural", structural),
];

fn opts() -> LoadOptions {
    LoadOptions {
        memory_budget: MEMORY_BUDGET,
        seed: 0,
    }
}

/// A user error is lcjit working as intended; an internal error on user input is a bug.
fn judge<T>(what: &str, r: Result<T, Error>) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_internal() => Err(format!("{what}: internal error on user input: {e}")),
        Err(_) => Ok(None),
    }
}

/// A file holding the fuzzer's bytes, removed on drop. The readers take paths, and a
/// real file is what a user hands them; names are unique per process and call, so the
/// replay test's threads do not collide.
struct TempInput(PathBuf);

impl TempInput {
    fn new(data: &[u8], ext: &str) -> Result<TempInput, String> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("lcjit-fuzz-{}-{n}.{ext}", std::process::id()));
        // Not a finding: the harness's own file system failed.
        std::fs::write(&path, data).map_err(|e| format!("harness: writing {path:?}: {e}"))?;
        Ok(TempInput(path))
    }
}

impl Drop for TempInput {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The model the weights and input targets load into: golden case 0000 (two LC2D layers),
/// whose `weights.npz`, `model.h5` and `x.npy` are among the seeds, so mutated seeds
/// reach the name and shape matching of `set_keras_weights` and a real `predict`.
fn fixed_model() -> Result<&'static Model, String> {
    static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let text = include_str!("../../tests/data/keras-golden/case_0000/model.json");
            Model::from_json_str(text, "fixed-model.json", &opts())
                .map_err(|e| format!("harness: the fixed model does not load: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Keras JSON of every dialect (tf-keras 2 functional and sequential, multi-backend
/// Keras 2, Keras 1: the dialect is detected from the text, and the seeds hold each):
/// `Model::from_json_str`, then `summary` of an accepted model.
pub fn keras_json(data: &[u8]) -> Result<(), String> {
    // The CLI refuses non-UTF-8 before parsing (`read_text`); mirror it.
    let Ok(text) = std::str::from_utf8(data) else {
        return Ok(());
    };
    if let Some(model) = judge(
        "from_json_str",
        Model::from_json_str(text, "fuzz.json", &opts()),
    )? {
        let _ = model.summary();
    }
    Ok(())
}

/// `.h5` files: as a full model (`Model::load_with`) and as weights for the fixed model
/// (`Model::load_weights`).
pub fn h5(data: &[u8]) -> Result<(), String> {
    let file = TempInput::new(data, "h5")?;
    if let Some(model) = judge("load .h5 model", Model::load_with(&file.0, &opts()))? {
        let _ = model.summary();
    }
    let mut model = fixed_model()?.clone();
    judge("load_weights .h5", model.load_weights(&file.0))?;
    Ok(())
}

/// `.keras` archives (zip of `config.json` and `model.weights.h5`): `Model::load_with`.
pub fn keras_archive(data: &[u8]) -> Result<(), String> {
    let file = TempInput::new(data, "keras")?;
    if let Some(model) = judge("load .keras", Model::load_with(&file.0, &opts()))? {
        let _ = model.summary();
    }
    Ok(())
}

/// `.npz` files: as weights of the fixed model (`Model::load_weights`) and as an input
/// or target archive (`io::read_npz`, what `fit`/`evaluate` read).
pub fn npz(data: &[u8]) -> Result<(), String> {
    let file = TempInput::new(data, "npz")?;
    let mut model = fixed_model()?.clone();
    judge("load_weights .npz", model.load_weights(&file.0))?;
    judge(
        "read_npz",
        lcjit::io::read_npz_within(&file.0, MEMORY_BUDGET),
    )?;
    Ok(())
}

/// `.npy` inputs: `io::read_npy`, and the memory-mapped reader of `lcjit run`
/// (`NpyInput::open` and `view`); an array shaped like the fixed model's input goes
/// through `check_inputs` and `predict`.
pub fn npy(data: &[u8]) -> Result<(), String> {
    let file = TempInput::new(data, "npy")?;
    let x = judge(
        "read_npy",
        lcjit::io::read_npy_within(&file.0, MEMORY_BUDGET),
    )?;
    if let Some(input) = judge("NpyInput::open", NpyInput::open(&file.0))? {
        let view = judge("NpyInput::view", input.view())?;
        if let (Some(x), Some(view)) = (&x, view) {
            // Both readers must agree on what the file holds.
            if x.shape() != view.shape() {
                return Err(format!(
                    "read_npy shape {:?} but NpyInput shape {:?}",
                    x.shape(),
                    view.shape()
                ));
            }
        }
    }
    if let Some(x) = x {
        let model = fixed_model()?;
        if judge("check_inputs", model.check_inputs(std::slice::from_ref(&x)))?.is_some() {
            judge("predict", model.predict(&x))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Structural fuzzer.

type U<'a> = arbitrary::Unstructured<'a>;

/// Picks one of `items` (the first when the bytes are exhausted).
fn pick<T: Clone>(u: &mut U, items: &[T]) -> T {
    let i = u.choose_index(items.len()).unwrap_or(0);
    items[i].clone()
}

fn bool_(u: &mut U) -> bool {
    u.arbitrary().unwrap_or(false)
}

/// Sizes at the edges: 0 and 1, small, and large-but-bounded (the budget or the shape
/// inference must refuse what does not fit; nothing may panic or allocate first).
const SIZES: [usize; 9] = [0, 1, 1, 2, 3, 4, 7, 64, 1 << 30];

fn activation(u: &mut U) -> Activation {
    let alpha = pick(u, &[0.0f32, 0.1, 1.0, -0.5]);
    match u.choose_index(17).unwrap_or(0) {
        0 => Activation::Linear,
        1 => Activation::Relu {
            alpha: 0.0,
            max_value: None,
            threshold: 0.0,
        },
        2 => Activation::Relu {
            alpha,
            max_value: pick(u, &[None, Some(6.0f32), Some(0.0)]),
            threshold: pick(u, &[0.0f32, 0.5, -1.0]),
        },
        3 => Activation::Sigmoid,
        4 => Activation::Tanh,
        5 => Activation::Softmax {
            axis: pick(u, &[-1i64, 1, 2, -2]),
        },
        6 => Activation::LogSoftmax,
        7 => Activation::Elu { alpha },
        8 => Activation::Selu,
        9 => Activation::Softplus,
        10 => Activation::Softsign,
        11 => Activation::HardSigmoid,
        12 => Activation::Exponential,
        13 => Activation::Swish,
        14 => Activation::Gelu {
            approximate: bool_(u),
        },
        15 => Activation::Relu6,
        _ => match bool_(u) {
            true => Activation::Mish,
            false => Activation::LeakyRelu { alpha },
        },
    }
}

fn uniform() -> Initializer {
    Initializer::RandomUniform {
        minval: -0.5,
        maxval: 0.5,
    }
}

fn vec_of(u: &mut U, rank: usize, from: &[usize]) -> Vec<usize> {
    (0..rank).map(|_| pick(u, from)).collect()
}

/// One random layer over `graph`'s existing nodes; `None` when the bytes ran out.
fn layer(u: &mut U, g: &Graph, df: DataFormat) -> Option<(Op, Vec<NodeId>)> {
    if u.is_empty() {
        return None;
    }
    let n = g.nodes.len();
    // Mostly the newest node, so stacks get deep; sometimes an older one, so branches and
    // merges of different paths appear.
    let src = if bool_(u) {
        n - 1
    } else {
        u.choose_index(n).unwrap_or(n - 1)
    };
    let shape = &g.nodes[src].shape;
    let srank = shape.len().saturating_sub(1).clamp(1, 3);
    let padding = pick(u, &[Padding::Valid, Padding::Same, Padding::Causal]);
    let op = match u.choose_index(15).unwrap_or(0) {
        0 | 1 => Op::LocallyConnected(LocallyConnected {
            rank: srank,
            filters: pick(u, &SIZES),
            kernel: vec_of(u, srank, &[1, 1, 2, 3, 1 << 29]),
            strides: vec_of(u, srank, &[1, 1, 2, 3, 0]),
            dilation: vec_of(u, srank, &[1, 1, 2]),
            padding,
            data_format: df,
            activation: activation(u),
            use_bias: bool_(u),
            implementation: pick(u, &[1u8, 2, 3]),
            kernel_initializer: uniform(),
            bias_initializer: uniform(),
            options: WeightOptions::default(),
        }),
        2 => Op::Dense(Dense {
            units: pick(u, &SIZES),
            activation: activation(u),
            use_bias: bool_(u),
            kernel_initializer: uniform(),
            bias_initializer: uniform(),
            options: WeightOptions::default(),
        }),
        3 => Op::Conv(Conv {
            rank: srank,
            filters: pick(u, &SIZES),
            kernel: vec_of(u, srank, &[1, 2, 3]),
            strides: vec_of(u, srank, &[1, 2]),
            dilation: vec_of(u, srank, &[1, 2]),
            padding,
            data_format: df,
            groups: 1,
            activation: activation(u),
            use_bias: bool_(u),
            kernel_initializer: uniform(),
            bias_initializer: uniform(),
            options: WeightOptions::default(),
        }),
        4 => Op::Pool(lcjit::graph::Pool {
            kind: pick(u, &[PoolKind::Max, PoolKind::Average]),
            rank: srank,
            pool: vec_of(u, srank, &[1, 2, 3, 1 << 31]),
            strides: vec_of(u, srank, &[1, 2, 3]),
            padding,
            data_format: df,
        }),
        5 => Op::GlobalPool {
            kind: pick(u, &[PoolKind::Max, PoolKind::Average]),
            rank: srank,
            data_format: df,
            keepdims: bool_(u),
        },
        6 => Op::ZeroPadding {
            rank: srank,
            pads: (0..srank)
                .map(|_| (pick(u, &[0, 1, 2]), pick(u, &[0, 1, 3])))
                .collect(),
            data_format: df,
        },
        7 => Op::Cropping {
            rank: srank,
            crops: (0..srank)
                .map(|_| (pick(u, &[0, 1]), pick(u, &[0, 1, 2])))
                .collect(),
            data_format: df,
        },
        8 => Op::Flatten { data_format: df },
        9 => Op::Activation(activation(u)),
        10 | 11 => {
            // A merge of nodes of the same shape (the same node twice when there is no
            // other), or a concatenation along a random axis.
            let same: Vec<NodeId> = (0..n).filter(|&i| g.nodes[i].shape == *shape).collect();
            let other = pick(u, &same);
            let mut inputs = vec![src, other];
            if bool_(u) {
                inputs.push(pick(u, &same));
            }
            let op = if bool_(u) {
                Op::Merge(pick(
                    u,
                    &[
                        MergeKind::Add,
                        MergeKind::Subtract,
                        MergeKind::Multiply,
                        MergeKind::Average,
                        MergeKind::Maximum,
                        MergeKind::Minimum,
                    ],
                ))
            } else {
                Op::Concatenate {
                    axis: u.choose_index(shape.len()).unwrap_or(0),
                }
            };
            return Some((op, inputs));
        }
        12 => Op::BatchNorm(BatchNorm {
            axis: shape.len().saturating_sub(1),
            epsilon: 1e-3,
            momentum: 0.99,
            center: bool_(u),
            scale: bool_(u),
            initializers: [
                uniform(),
                uniform(),
                uniform(),
                Initializer::Constant(pick(u, &[1.0f32, 0.5, 0.0])),
            ],
            options: WeightOptions::default(),
        }),
        13 => Op::Dropout {
            rate: 0.5,
            spatial: None,
            data_format: df,
        },
        _ => match bool_(u) {
            true => Op::Reshape { target: vec![-1] },
            false => Op::Permute {
                dims: (1..=shape.len()).rev().collect(),
            },
        },
    };
    Some((op, vec![src]))
}

/// An input value: mostly in [-2, 2], with the special values every engine must handle
/// (the NaN and ±inf ones are compared only as described in [`compare`]).
fn value(u: &mut U) -> f32 {
    let b: u8 = u.arbitrary().unwrap_or(0);
    match b {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        3 => -0.0,
        4 => 1e30,
        5 => -1e30,
        6 => 1e-40,
        _ => (b as f32 - 131.0) / 64.0,
    }
}

/// A random valid layer graph from the fuzzer's bytes, compiled and run on every engine.
///
/// What is compared, and why:
/// * **JIT vs interpreter, always, NaN included**: the JIT executes the interpreter's loop
///   IR in the same order, so NaN-ness must match at every position and other values
///   must match bit for bit when the host has FMA (within 1e-5 of the output's scale
///   otherwise); the same compiled JIT program run on 2 threads must match its 1-thread
///   run bit for bit.
/// * **Interpreter vs reference, NaN and ±inf included** (every engine follows Keras's
///   NaN semantics): NaN exactly where the reference has NaN; an infinity where the
///   reference has one, or a finite value of the same sign beyond 1e30 (an overflow
///   boundary the transcendental approximations may place a few ulps apart); finite
///   values within 1e-4 of the output's scale.
/// * **Shapes**: all three engines give the same output shape.
pub fn structural(data: &[u8]) -> Result<(), String> {
    let mut u = U::new(data);
    let df = if u.ratio(1u8, 4).unwrap_or(false) {
        DataFormat::ChannelsFirst
    } else {
        DataFormat::ChannelsLast
    };
    let srank = pick(&mut u, &[1usize, 1, 2, 2, 3]);
    let mut input_shape = vec_of(&mut u, srank, &[1, 1, 2, 3, 5, 8, 0]);
    let channels = pick(&mut u, &[1usize, 2, 3, 4]);
    match df {
        DataFormat::ChannelsLast => input_shape.push(channels),
        DataFormat::ChannelsFirst => input_shape.insert(0, channels),
    }
    let mut g = Graph::with_budget("fuzz", MEMORY_BUDGET);
    let Some(input) = judge("add_input", g.add_input("x", input_shape))? else {
        return Ok(());
    };
    let mut last = input;
    let depth = pick(&mut u, &[1usize, 2, 3, 4, 6]);
    for i in 0..depth {
        let Some((op, inputs)) = layer(&mut u, &g, df) else {
            break;
        };
        if let Some(id) = judge("Graph::add", g.add(&format!("l{i}"), op, &inputs))? {
            last = id;
        }
    }
    if last == input {
        return Ok(());
    }
    g.outputs = vec![last];
    // Elements per sample and weights are bounded by the budget; keep the run cheap as
    // well (a 3-D LC layer of 64 filters, 3×3×3 taps over 5×5×5×64 has 14 M weights, and
    // initialising and interpreting them in this instrumented build took 11 s; cases of
    // a few hundred thousand weights set the fuzzer's pace at about 100 a second).
    let per_sample: usize = g.nodes[input].shape.iter().product();
    let weights: usize = g.params.iter().map(|p| p.len()).sum();
    if weights > 1 << 18
        || g.nodes
            .iter()
            .any(|n| n.shape.iter().product::<usize>() > 1 << 14)
    {
        return Ok(());
    }
    // Batches of 4 and 9 give wide register tiles (the wide tier's microkernels, with a
    // remainder tile at 9) to LC and Dense layers whose filters fill wide registers;
    // batches of 4, 8 and 16 give the LC input gradient its lanes over batch rows (8:
    // AVX2 microkernels and 8-row f32x4 edge tiles, 16: AVX-512 microkernels).
    let batch = pick(&mut u, &[0usize, 1, 1, 2, 3, 4, 8, 9, 16]);
    let finite_only = u.ratio(3u8, 4).unwrap_or(true);
    let seed: u64 = u.arbitrary().unwrap_or(0);
    let mut vals = Vec::with_capacity(batch * per_sample);
    for _ in 0..batch * per_sample {
        let v = value(&mut u);
        vals.push(if finite_only && !v.is_finite() {
            0.5
        } else {
            v
        });
    }
    let mut shape = vec![batch];
    shape.extend_from_slice(&g.nodes[input].shape);
    let x = ArrayD::from_shape_vec(IxDyn(&shape), vals)
        .map_err(|e| format!("harness: input shape: {e}"))?;
    let Some(model) = judge("Model::from_graph", Model::from_graph(g, seed))? else {
        return Ok(());
    };
    if std::env::var_os("LCJIT_FUZZ_DEBUG").is_some() {
        // Diagnosing a finding: the graph and input it decoded to.
        eprintln!("{:#?}\ninput {x:?}", model.graph().nodes);
    }
    let model = Arc::new(model);
    if std::env::var_os("LCJIT_FUZZ_DEBUG").is_some() {
        debug_layers(&model, &x);
    }
    let Some(want) = judge("reference predict", model.predict(&x))? else {
        return Ok(());
    };
    // Compiles `engine` once and runs it on each of `threads` (a program does not depend
    // on the thread count, so one compilation serves every count: the costly part of a
    // case is Cranelift, and the 2-thread run checks the run-time split of the same code).
    let run = |engine, threads: &[usize]| -> Result<Vec<Option<ArrayD<f32>>>, String> {
        let opts = CompileOptions {
            engine,
            threads: threads[0],
            max_batch: batch.max(1),
            ..Default::default()
        };
        let Some(mut c) = judge(
            &format!("compile {engine:?}"),
            CompiledModel::new(model.clone(), opts),
        )?
        else {
            return Ok(vec![None; threads.len()]);
        };
        let mut outs = Vec::with_capacity(threads.len());
        for &t in threads {
            c.set_threads(t)
                .map_err(|e| format!("harness: set_threads({t}): {e}"))?;
            outs.push(judge(
                &format!("predict {engine:?} ({t} threads)"),
                c.predict(&x),
            )?);
        }
        Ok(outs)
    };
    let interp = run(Engine::Interp, &[1])?.swap_remove(0);
    let mut jit = run(Engine::Jit, &[1, 2])?;
    let jit2 = jit.pop().flatten();
    let jit1 = jit.pop().flatten();
    // Asked only when an interpreter value and the reference's differ: whether the
    // reference is no oracle for this run (see `compare`).
    let no_oracle =
        |scale: f32| runs_near_range_limit(&model, &x) || ill_conditioned(&model, &x, &want, scale);
    compare(
        &want,
        interp.as_ref(),
        jit1.as_ref(),
        jit2.as_ref(),
        &no_oracle,
    )
}

/// Every layer's output (the input node excluded: the harness's graphs have one input,
/// node 0) on `engine`, one thread.
fn layer_outputs(
    model: &Arc<Model>,
    x: &ArrayD<f32>,
    engine: Engine,
) -> Result<Vec<(String, ArrayD<f32>)>, Error> {
    let names: Vec<&str> = model.graph().nodes[1..]
        .iter()
        .map(|n| n.name.as_str())
        .collect();
    let rows = x.shape()[0].max(1);
    let opts = CompileOptions {
        engine,
        threads: 1,
        max_batch: rows,
        ..Default::default()
    };
    CompiledModel::new(model.clone(), opts)?.predict_outputs(&[x.view()], &names, rows)
}

/// Diagnosing a finding: every layer's output on the reference and the interpreter.
fn debug_layers(model: &Arc<Model>, x: &ArrayD<f32>) {
    for engine in [Engine::Reference, Engine::Interp] {
        match layer_outputs(model, x, engine) {
            Ok(outs) => {
                for (name, y) in outs {
                    eprintln!("{engine:?} {name}: {y:?}");
                }
            }
            Err(e) => eprintln!("{engine:?}: {e}"),
        }
    }
}

/// The comparisons documented on [`structural`]. A compiled engine that refused the model
/// with a user error (`None`) is not compared, but the reference accepted it, so that
/// refusal is itself reported unless every compiled engine refused alike.
fn compare(
    want: &ArrayD<f32>,
    interp: Option<&ArrayD<f32>>,
    jit1: Option<&ArrayD<f32>>,
    jit2: Option<&ArrayD<f32>>,
    no_oracle: &dyn Fn(f32) -> bool,
) -> Result<(), String> {
    let (Some(interp), Some(jit1), Some(jit2)) = (interp, jit1, jit2) else {
        if interp.is_some() || jit1.is_some() || jit2.is_some() {
            return Err("one compiled engine refused a model another accepted".into());
        }
        return Ok(());
    };
    for (name, y) in [
        ("interpreter", interp),
        ("JIT", jit1),
        ("JIT (2 threads)", jit2),
    ] {
        if y.shape() != want.shape() {
            return Err(format!(
                "{name} shape {:?} but reference {:?}",
                y.shape(),
                want.shape()
            ));
        }
    }
    let scale = want
        .iter()
        .chain(interp.iter())
        .filter(|v| v.is_finite())
        .fold(1f32, |m, v| m.max(v.abs()));
    let fma = lcjit::backend::host_has_fma();
    for (i, (a, b)) in jit1.iter().zip(interp.iter()).enumerate() {
        let same = if a.is_nan() || b.is_nan() {
            a.is_nan() && b.is_nan()
        } else if fma {
            a.to_bits() == b.to_bits() || (*a == 0.0 && *b == 0.0)
        } else {
            a == b || (a - b).abs() <= 1e-5 * scale
        };
        if !same {
            return Err(format!("element {i}: JIT {a} but interpreter {b}"));
        }
    }
    let bits = |y: &ArrayD<f32>| y.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    if bits(jit1) != bits(jit2) {
        return Err("JIT results differ between 1 and 2 threads".into());
    }
    for (i, (a, w)) in interp.iter().zip(want.iter()).enumerate() {
        // The reference is no oracle where the order of a sum decides the result beyond
        // the tolerance: a run whose layers reach the edge of f32's range overflows in
        // some sums in an order-dependent way (see `runs_near_range_limit`), and every
        // later layer carries that on (a softmax turns +inf against −inf into NaN against
        // 0); an ill-conditioned run amplifies rounding past it (see `ill_conditioned`).
        // There only the JIT-vs-interpreter bits above are checked.
        if !agrees(*a, *w, scale) {
            if no_oracle(scale) {
                return Ok(());
            }
            return Err(format!("element {i}: interpreter {a} but reference {w}"));
        }
    }
    Ok(())
}

/// Magnitude from which a finite value counts as at the edge of f32's range.
const HUGE: f32 = 1e30;

/// Magnitude from which a finite layer output makes a run's sums overflow depending on
/// their order: f32::MAX / 34, so that a sum of a few dozen such terms may or may not
/// overflow.
const NEAR_MAX: f32 = 1e37;

/// Whether some layer of the reference run outputs a finite value of magnitude at least
/// [`NEAR_MAX`]. Asked only when the interpreter and the reference disagree. Found by
/// fuzzing: a max pool over a window of NaN gives `f32::MIN`, as TensorFlow's does, and a
/// LocallyConnected layer summing a dozen taps of it overflowed to +inf in the
/// interpreter's order and to −inf in the reference's (`maxpool_nan_inf_sign`), or to NaN
/// (+inf − inf) that a softmax then kept as NaN where the reference's gave 0
/// (`maxpool_nan_overflow_softmax`). The inputs (|x| ≤ 1e30) do not count.
fn runs_near_range_limit(model: &Arc<Model>, x: &ArrayD<f32>) -> bool {
    layer_outputs(model, x, Engine::Reference).is_ok_and(|outs| {
        outs.iter()
            .any(|(_, y)| y.iter().any(|v| v.is_finite() && v.abs() >= NEAR_MAX))
    })
}

/// Relative change of every input in [`ill_conditioned`]'s probe: about 8 ulps.
const PROBE: f32 = 1e-6;

/// Whether the reference's output moves beyond the comparison's tolerance when every
/// finite input moves by [`PROBE`] (relative, at least `PROBE` absolute): the function is
/// then so ill-conditioned here (an amplification of 100 or more) that summing in
/// another order, a few ulps per layer, can move it as far, and two correct engines
/// disagree. Asked only when the interpreter and the reference disagree. Found by
/// fuzzing (`lc_exp_exp_ill_conditioned`): four LC layers ending in log-softmax,
/// exponential and exponential again computed e^58 ≈ 2.2e25 with 3.9e-4 between the
/// engines, where a probe of 1e-6 moves the output by more than 1e-3.
fn ill_conditioned(model: &Arc<Model>, x: &ArrayD<f32>, want: &ArrayD<f32>, scale: f32) -> bool {
    let probe = x.mapv(|v| {
        if v.is_finite() {
            v + PROBE * v.abs().max(1.0)
        } else {
            v
        }
    });
    model.predict(&probe).is_ok_and(|y| {
        y.shape() == want.shape()
            && y.iter()
                .zip(want.iter())
                .any(|(a, w)| !agrees(*a, *w, scale))
    })
}

/// The interpreter's value `a` against the reference's `w` (see [`structural`]).
fn agrees(a: f32, w: f32, scale: f32) -> bool {
    if a.is_nan() || w.is_nan() {
        return a.is_nan() && w.is_nan();
    }
    if a.is_infinite() || w.is_infinite() {
        return a == w || (a.signum() == w.signum() && a.abs() >= HUGE && w.abs() >= HUGE);
    }
    (a - w).abs() <= 1e-4 * scale
}
