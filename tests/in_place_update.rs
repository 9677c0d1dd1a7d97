//! The optimizer update fused into the LC kernel-gradient kernel (`lower::in_place`):
//! `fit_compiled`, which updates an accepted LC kernel inside its backward kernel, ends
//! with the same bits — weights and losses — as the unfused path (`Trainer`:
//! `compute_gradients`, then the separate update program), for every rule that can run in
//! place, on the interpreter and on the JIT (1 and 2 threads, wide tier and f32x4), with
//! `same` padding, strides, channels_first and odd filter counts. Rules that need the whole
//! gradient first (norm clips, Nadam) and regularized kernels stay unfused.

use lcjit::graph::{Activation, Graph, Op, Regularizer};
use lcjit::train::{
    fit_compiled, Algorithm, FitOptions, Flavor, LearningRate, Loss, Optimizer, OptimizerConfig,
    Trainer,
};
use lcjit::{CompileOptions, CompiledModel, Engine, Model, WideTier};
use ndarray::{ArrayD, Axis};
use proptest::prelude::*;
use std::sync::Arc;

mod common;
use common::lc_spec::{graph, Spec};
use common::wide::wide_layer;

fn config(algorithm: Algorithm, flavor: Flavor) -> OptimizerConfig {
    OptimizerConfig {
        name: "test".into(),
        algorithm,
        learning_rate: LearningRate::Constant(0.01),
        flavor,
        clipnorm: None,
        clipvalue: None,
        global_clipnorm: None,
        weight_decay: None,
        decay: 0.0,
    }
}

/// Every rule that runs in place, with the flavours and options that change its element
/// program.
fn rules() -> Vec<OptimizerConfig> {
    use Algorithm::*;
    let adam = |amsgrad| Adam {
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-7,
        amsgrad,
    };
    let mut out = vec![
        config(adam(false), Flavor::TfKeras),
        config(adam(true), Flavor::Legacy),
        config(
            Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            Flavor::TfKeras,
        ),
        config(
            Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            Flavor::MultiBackend,
        ),
        config(
            RmsProp {
                rho: 0.9,
                momentum: 0.5,
                epsilon: 1e-7,
                centered: true,
            },
            Flavor::TfKeras,
        ),
        config(
            Adagrad {
                initial_accumulator_value: 0.1,
                epsilon: 1e-7,
            },
            Flavor::Legacy,
        ),
        config(
            Adadelta {
                rho: 0.95,
                epsilon: 1e-7,
            },
            Flavor::TfKeras,
        ),
        config(
            Adamax {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
            },
            Flavor::TfKeras,
        ),
        config(
            Ftrl {
                learning_rate_power: -0.5,
                initial_accumulator_value: 0.1,
                l1: 0.01,
                l2: 0.01,
                l2_shrinkage: 0.0,
                beta: 0.0,
            },
            Flavor::TfKeras,
        ),
    ];
    // AdamW's decoupled decay and a value clip enter the element program.
    let mut adamw = config(adam(false), Flavor::TfKeras);
    adamw.weight_decay = Some(0.004);
    adamw.clipvalue = Some(0.05);
    out.push(adamw);
    out
}

/// The LC layer of `sp`, flattened into a small Dense head (whose kernel is updated by
/// the separate update program in the same step).
fn model(sp: &Spec, seed: u64) -> Option<Arc<Model>> {
    let mut g: Graph = graph(sp)?;
    let lc = *g.outputs.first()?;
    let flat = g
        .add(
            "flat",
            Op::Flatten {
                data_format: lcjit::graph::DataFormat::ChannelsLast,
            },
            &[lc],
        )
        .ok()?;
    let dense = g
        .add(
            "head",
            Op::Dense(lcjit::graph::Dense {
                units: 3,
                activation: Activation::Linear,
                use_bias: true,
                kernel_initializer: common::uniform(-0.2, 0.2),
                bias_initializer: common::uniform(-0.2, 0.2),
                options: Default::default(),
            }),
            &[flat],
        )
        .ok()?;
    g.outputs = vec![dense];
    Some(Arc::new(Model::from_graph(g, seed).ok()?))
}

fn compile(engine: Engine, threads: usize, wide: WideTier, batch: usize) -> CompileOptions {
    CompileOptions {
        engine,
        threads,
        max_batch: batch,
        wide,
        ..Default::default()
    }
}

/// Data for `model`: `n` samples and regression targets.
fn data(model: &Model, n: usize, seed: u64) -> (ArrayD<f32>, ArrayD<f32>) {
    let g = model.graph();
    let mut xs = vec![n];
    xs.extend_from_slice(&g.nodes[g.inputs[0]].shape);
    let mut ys = vec![n];
    ys.extend_from_slice(&g.nodes[g.outputs[0]].shape);
    (common::random(&xs, seed), common::random(&ys, seed + 1))
}

/// Trains a copy of `model` with `fit_compiled` and with the unfused `Trainer` loop over
/// the same batches; returns both weight lists, both epoch losses, and whether the fit
/// updated the LC kernel in place.
#[allow(clippy::type_complexity)]
fn both(
    model: &Arc<Model>,
    cfg: &OptimizerConfig,
    copts: &CompileOptions,
    n: usize,
    seed: u64,
) -> (
    (Vec<ArrayD<f32>>, Vec<f64>),
    (Vec<ArrayD<f32>>, Vec<f64>),
    bool,
) {
    let (xs, ys) = data(model, n, seed);
    let (epochs, batch) = (2, copts.max_batch);
    let loss = Loss::MeanSquaredError;
    let mut fitted = (**model).clone();
    let mut opt = Optimizer::new(cfg.clone());
    let opts = FitOptions {
        epochs,
        batch_size: batch,
        shuffle: None,
        seed,
        verbose: false,
        ..FitOptions::default()
    };
    let h = fit_compiled(
        &mut fitted,
        &mut opt,
        &loss,
        &xs,
        &ys,
        None,
        &opts,
        copts,
        &mut [],
    )
    .expect("fit");
    let mut t =
        Trainer::new(model, Optimizer::new(cfg.clone()), &loss, copts, seed).expect("trainer");
    let mut params = t.extended().params(model).expect("params");
    let mut losses = Vec::new();
    for _ in 0..epochs {
        let (mut sum, mut count) = (0.0, 0.0);
        for start in (0..n).step_by(batch) {
            let idx: Vec<usize> = (start..(start + batch).min(n)).collect();
            let xb = xs.select(Axis(0), &idx);
            let yb = ys.select(Axis(0), &idx);
            let (l, grads) = t.compute_gradients(&params, &xb, &yb).expect("grads");
            t.apply_gradients(&mut params, &grads).expect("apply");
            sum += l * idx.len() as f64;
            count += idx.len() as f64;
        }
        losses.push(sum / count);
    }
    let mut hand = (**model).clone();
    t.extended().store(&mut hand, params).expect("store");
    let updated = in_place_kernels(model, cfg, copts, batch);
    (
        (fitted.params().to_vec(), h.loss().to_vec()),
        (hand.params().to_vec(), losses),
        updated,
    )
}

/// Whether the training step at `batch` updates the LC kernel (parameter 0) in place.
fn in_place_kernels(
    model: &Arc<Model>,
    cfg: &OptimizerConfig,
    c: &CompileOptions,
    batch: usize,
) -> bool {
    if c.engine.is_reference() {
        return false;
    }
    let accepts = model.graph().params.iter().map(|p| p.trainable).collect();
    let Some(rule) = Optimizer::new(cfg.clone()).in_place_rule(accepts) else {
        return false;
    };
    let compiled = CompiledModel::new(model.clone(), c.clone()).expect("compile");
    compiled.updated_in_place(batch, &rule).expect("program")[0]
}

fn same_bits(a: &[ArrayD<f32>], b: &[ArrayD<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.shape() == y.shape() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

/// Every in-place rule on the 32-filter layer of the wide tests, on every engine: the
/// fused fit equals the unfused loop bit for bit, and the kernel really is updated in
/// place.
#[test]
fn every_rule_in_place_equals_the_separate_update() {
    let model = model(&wide_layer(), 3).expect("model");
    let engines = [
        (Engine::Interp, 1, WideTier::Off),
        (Engine::Jit, 1, WideTier::Off),
        (Engine::Jit, 2, WideTier::Auto),
    ];
    for cfg in rules() {
        for &(engine, threads, wide) in &engines {
            for batch in [4, 5] {
                let c = compile(engine, threads, wide, batch);
                let (fused, plain, updated) = both(&model, &cfg, &c, 11, 7);
                let what = format!(
                    "{:?} on {engine:?}/{threads}/{wide:?}, batch {batch}",
                    cfg.algorithm
                );
                assert!(updated, "{what}: the kernel was not updated in place");
                assert!(same_bits(&fused.0, &plain.0), "{what}: weights differ");
                assert_eq!(fused.1, plain.1, "{what}: losses differ");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Random LC layers (1-D and 2-D, either data format, strides, dilation, `same`,
    /// filters 1–9 and multiples of 8: the kernels the register-tile schedule serves are
    /// updated in place, the others are not) under Adam and SGD with momentum.
    #[test]
    fn random_layers_in_place_equal_the_separate_update(
        parts in (
            1usize..3,
            any::<bool>(),
            (6usize..30, 4usize..9),
            1usize..4,
            prop::sample::select(vec![1usize, 3, 4, 6, 8, 16]),
            1usize..4,
            1usize..3,
            1usize..3,
            any::<bool>(),
            any::<bool>(),
        ),
        which in 0usize..2,
        batch in prop::sample::select(vec![1usize, 3, 4, 8]),
        threads in 1usize..3,
        seed in 0u64..1000,
    ) {
        let sp = Spec::from_parts(parts);
        let Some(model) = model(&sp, seed) else {
            return Ok(());
        };
        let cfg = rules()[[0, 3][which]].clone();
        for (engine, wide) in [(Engine::Interp, WideTier::Off), (Engine::Jit, WideTier::Auto)] {
            let c = compile(engine, threads, wide, batch);
            let (fused, plain, _) = both(&model, &cfg, &c, 2 * batch + 1, seed);
            prop_assert!(same_bits(&fused.0, &plain.0), "weights differ: {:?} {:?}", sp, engine);
            prop_assert_eq!(&fused.1, &plain.1);
        }
    }
}

/// Rules that need the whole gradient before any element, and regularized kernels, are
/// not updated in place.
#[test]
fn norm_clips_nadam_and_regularized_kernels_stay_separate() {
    let base = rules()[0].clone();
    let all = vec![true, true, true, true];
    let mut clip = base.clone();
    clip.clipnorm = Some(1.0);
    assert!(Optimizer::new(clip).in_place_rule(all.clone()).is_none());
    let mut global = base.clone();
    global.global_clipnorm = Some(1.0);
    assert!(Optimizer::new(global).in_place_rule(all.clone()).is_none());
    let nadam = config(
        Algorithm::Nadam {
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-7,
            schedule_decay: 0.004,
        },
        Flavor::TfKeras,
    );
    assert!(Optimizer::new(nadam).in_place_rule(all).is_none());
    // A regularized kernel: `fit_compiled` does not offer it, and training still equals
    // the unfused loop.
    let mut g = graph(&wide_layer()).expect("graph");
    let lc = g.outputs[0];
    let reg = Some(Regularizer { l1: 0.0, l2: 0.01 });
    if let Op::LocallyConnected(l) = &mut g.nodes[lc].op {
        l.options.kernel_regularizer = reg;
    }
    for p in g
        .params
        .iter_mut()
        .filter(|p| p.node == lc && p.name == "kernel")
    {
        p.regularizer = reg;
    }
    let model = Arc::new(Model::from_graph(g, 5).expect("model"));
    let c = compile(Engine::Jit, 2, WideTier::Auto, 4);
    let (fused, plain, _) = both(&model, &base, &c, 9, 2);
    assert!(same_bits(&fused.0, &plain.0), "regularized kernel");
}

/// A divergent run under `stop_on_non_finite`: a non-finite loss stops before the
/// backward pass, so the in-place update never writes non-finite weights.
#[test]
fn non_finite_loss_stops_before_the_in_place_update() {
    let model = model(&wide_layer(), 1).expect("model");
    let (xs, ys) = data(&model, 8, 4);
    let mut cfg = rules()[2].clone();
    cfg.learning_rate = LearningRate::Constant(1e30);
    let mut fitted = (*model).clone();
    let opts = FitOptions {
        epochs: 3,
        batch_size: 4,
        shuffle: None,
        verbose: false,
        stop_on_non_finite: true,
        ..FitOptions::default()
    };
    let h = fit_compiled(
        &mut fitted,
        &mut Optimizer::new(cfg),
        &Loss::MeanSquaredError,
        &xs,
        &ys,
        None,
        &opts,
        &compile(Engine::Jit, 2, WideTier::Auto, 4),
        &mut [],
    )
    .expect("fit");
    assert!(h.stopped.is_some(), "the run did not stop");
    for p in fitted.params() {
        assert!(p.iter().all(|v| v.is_finite()), "non-finite weights kept");
    }
}
