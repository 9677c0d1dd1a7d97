//! `fit` on the compiled engines (JIT, interpreter) trains exactly as the reference
//! trainer: same loss history and final weights to `1e-5 · max(1, max|ref|)`, on a small
//! classifier (softmax + categorical cross-entropy, so the step runs on logits) with a
//! partial last batch, and on a regression model with a merge.

mod common;

use common::{random, relu, uniform};
use lcjit::graph::{Activation, BatchNorm, DataFormat, Dense, Graph, MergeKind, Op, WeightOptions};
use lcjit::train::{fit_compiled, parse_loss_arg, parse_optimizer_arg, FitOptions, Optimizer};
use lcjit::{CompileOptions, Engine, Model};
use ndarray::ArrayD;

fn dense(units: usize, activation: Activation) -> Op {
    Op::Dense(Dense {
        units,
        activation,
        use_bias: true,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.1, 0.1),
        options: WeightOptions::default(),
    })
}

const ADAM: &str = r#"{"class_name":"Adam","config":{"learning_rate":0.01}}"#;
/// The bias of a layer feeding BatchNorm has a gradient that is zero up to rounding
/// (the normalization removes the mean); Adam scales such noise up to full steps, so
/// BatchNorm models are compared under SGD with momentum.
const SGD: &str = r#"{"class_name":"SGD","config":{"learning_rate":0.05,"momentum":0.9}}"#;

fn train(
    g: &Graph,
    engine: Engine,
    optimizer: &str,
    loss: &str,
    ys: &ArrayD<f32>,
) -> (Vec<f64>, Vec<ArrayD<f32>>) {
    let mut m = Model::from_graph(g.clone(), 3).expect("model");
    let xs = random(&[10, 6], 5);
    let mut opt = Optimizer::new(parse_optimizer_arg(optimizer).expect("optimizer"));
    let opts = FitOptions {
        epochs: 3,
        batch_size: 4,
        shuffle: None,
        validation_split: 0.2,
        metrics: Vec::new(),
        verbose: false,
        progress: None,
        seed: 0,
        update: None,
        stop_on_non_finite: false,
        resume: Default::default(),
    };
    let compile = CompileOptions {
        engine,
        threads: 2,
        max_batch: 4,
        ..Default::default()
    };
    let loss = parse_loss_arg(loss).expect("loss");
    let h = fit_compiled(
        &mut m,
        &mut opt,
        &loss,
        &xs,
        ys,
        None,
        &opts,
        &compile,
        &mut [],
    )
    .unwrap_or_else(|e| panic!("{}: {e}", engine.name()));
    let mut losses = h.loss().to_vec();
    losses.extend(h.get("val_loss").expect("val_loss"));
    (losses, m.params().to_vec())
}

fn compare(g: &Graph, optimizer: &str, loss: &str, ys: &ArrayD<f32>, what: &str) {
    let (want_h, want_p) = train(g, Engine::Reference, optimizer, loss, ys);
    for engine in [Engine::Jit, Engine::Interp] {
        let (h, p) = train(g, engine, optimizer, loss, ys);
        assert_eq!(h.len(), want_h.len());
        for (a, b) in h.iter().zip(&want_h) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{what} ({}): loss {a} vs {b}",
                engine.name()
            );
        }
        for (a, b) in p.iter().zip(&want_p) {
            let s = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let e = a
                .iter()
                .zip(b.iter())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                e <= 1e-5 * s,
                "{what} ({}): weights differ by {e}",
                engine.name()
            );
        }
    }
}

#[test]
fn compiled_fit_matches_the_reference_trainer() {
    let mut g = Graph::new("clf");
    let x = g.add_input("x", vec![6]).expect("x");
    let h = g.add("h", dense(8, relu()), &[x]).expect("h");
    let y = g
        .add("y", dense(3, Activation::Softmax { axis: -1 }), &[h])
        .expect("y");
    g.outputs.push(y);
    let labels: Vec<f32> = (0..10)
        .flat_map(|i| (0..3).map(move |c| if i % 3 == c { 1.0 } else { 0.0 }))
        .collect();
    let ys = ArrayD::from_shape_vec(ndarray::IxDyn(&[10, 3]), labels).expect("ys");
    compare(
        &g,
        ADAM,
        "categorical_crossentropy",
        &ys,
        "softmax classifier",
    );

    let mut g = Graph::new("reg");
    let x = g.add_input("x", vec![6]).expect("x");
    let a = g.add("a", dense(4, Activation::Tanh), &[x]).expect("a");
    let b = g.add("b", dense(4, Activation::Sigmoid), &[x]).expect("b");
    let m = g
        .add("m", Op::Merge(MergeKind::Multiply), &[a, b])
        .expect("m");
    let y = g.add("y", dense(2, Activation::Linear), &[m]).expect("y");
    g.outputs.push(y);
    compare(&g, ADAM, "mse", &random(&[10, 2], 9), "merge regression");
}

fn batch_norm(axis: usize, center: bool, scale: bool) -> Op {
    Op::BatchNorm(BatchNorm {
        axis,
        epsilon: 1e-3,
        momentum: 0.9,
        center,
        scale,
        initializers: [
            uniform(0.5, 1.5),
            uniform(-0.5, 0.5),
            uniform(-0.5, 0.5),
            uniform(0.5, 1.5),
        ],
        options: WeightOptions::default(),
    })
}

/// Training mode on the compiled engines: BatchNorm with batch statistics (non-fused
/// rank 2/3 and the fused rank-4 rule) and moving-average updates, Dropout and
/// SpatialDropout masks from the same seeded generator as the reference trainer.
#[test]
fn compiled_fit_trains_batch_norm_and_dropout_like_the_reference() {
    for (center, scale) in [(true, true), (false, true), (true, false)] {
        let mut g = Graph::new("bn");
        let x = g.add_input("x", vec![6]).expect("x");
        let h = g.add("h", dense(8, Activation::Linear), &[x]).expect("h");
        let b = g.add("bn", batch_norm(0, center, scale), &[h]).expect("bn");
        let d = g
            .add(
                "drop",
                Op::Dropout {
                    rate: 0.3,
                    spatial: None,
                    data_format: DataFormat::ChannelsLast,
                },
                &[b],
            )
            .expect("dropout");
        let y = g.add("y", dense(2, Activation::Tanh), &[d]).expect("y");
        g.outputs.push(y);
        compare(&g, SGD, "mse", &random(&[10, 2], 9), "dense-bn-dropout");
    }
    // Rank-4 input (fused rule), BatchNorm on the channel axis of both formats.
    for axis in [0, 2] {
        let mut g = Graph::new("bn4");
        let x = g.add_input("x", vec![6]).expect("x");
        let h = g.add("h", dense(12, Activation::Tanh), &[x]).expect("h");
        let r = g
            .add(
                "r",
                Op::Reshape {
                    target: vec![2, 3, 2],
                },
                &[h],
            )
            .expect("reshape");
        let b = g.add("bn", batch_norm(axis, true, true), &[r]).expect("bn");
        let f = g
            .add(
                "f",
                Op::Flatten {
                    data_format: DataFormat::ChannelsLast,
                },
                &[b],
            )
            .expect("flatten");
        let y = g.add("y", dense(2, Activation::Linear), &[f]).expect("y");
        g.outputs.push(y);
        compare(
            &g,
            SGD,
            "mse",
            &random(&[10, 2], 9),
            &format!("rank-4 bn axis {axis}"),
        );
    }
}

/// Batch metrics are reported on every engine (from the activated output when the step
/// runs on logits) and agree across engines.
#[test]
fn compiled_fit_reports_metrics() {
    use lcjit::train::Metric;
    let mut g = Graph::new("clf");
    let x = g.add_input("x", vec![6]).expect("x");
    let y = g
        .add("y", dense(3, Activation::Softmax { axis: -1 }), &[x])
        .expect("y");
    g.outputs.push(y);
    let labels: Vec<f32> = (0..10)
        .flat_map(|i| (0..3).map(move |c| if i % 3 == c { 1.0 } else { 0.0 }))
        .collect();
    let ys = ArrayD::from_shape_vec(ndarray::IxDyn(&[10, 3]), labels).expect("ys");
    let xs = random(&[10, 6], 5);
    let mut histories = Vec::new();
    for engine in [Engine::Reference, Engine::Jit, Engine::Interp] {
        let mut m = Model::from_graph(g.clone(), 3).expect("model");
        let mut opt = Optimizer::new(parse_optimizer_arg(ADAM).expect("optimizer"));
        let opts = FitOptions {
            epochs: 2,
            batch_size: 4,
            metrics: ["accuracy", "mae"]
                .iter()
                .map(|n| Metric::parse_arg(n).expect("metric"))
                .collect(),
            ..FitOptions::default()
        };
        let compile = CompileOptions {
            engine,
            threads: 2,
            max_batch: 4,
            ..Default::default()
        };
        let loss = parse_loss_arg("categorical_crossentropy").expect("loss");
        let h = fit_compiled(
            &mut m,
            &mut opt,
            &loss,
            &xs,
            &ys,
            None,
            &opts,
            &compile,
            &mut [],
        )
        .expect("fit");
        let metrics: Vec<(String, Vec<f64>)> = h
            .iter()
            .filter(|(k, _)| *k != "loss")
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        assert_eq!(
            metrics.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
            ["accuracy", "mae"]
        );
        for (name, values) in &metrics {
            assert_eq!(values.len(), 2, "{name}");
            assert!(
                values
                    .iter()
                    .all(|v| v.is_finite() && (0.0..=1.0).contains(v)),
                "{} {name}: {values:?}",
                engine.name()
            );
        }
        histories.push(metrics);
    }
    for h in &histories[1..] {
        for ((_, a), (_, b)) in h.iter().zip(&histories[0]) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-5, "metrics differ: {a:?} vs {b:?}");
            }
        }
    }
}

/// Frozen layers (Keras `trainable: false`): their weights do not move, a frozen
/// BatchNorm runs in inference mode (its moving statistics stay), on every engine; the
/// flag survives a `.json` round trip.
#[test]
fn frozen_layers_stay_frozen() {
    let mut g = Graph::new("frozen");
    let x = g.add_input("x", vec![6]).expect("x");
    let h = g.add("h", dense(8, Activation::Tanh), &[x]).expect("h");
    let b = g.add("bn", batch_norm(0, true, true), &[h]).expect("bn");
    let y = g.add("y", dense(2, Activation::Linear), &[b]).expect("y");
    g.outputs.push(y);
    for &p in &g.nodes[h].params.clone() {
        g.params[p].trainable = false;
    }
    for &p in &g.nodes[b].params.clone() {
        g.params[p].trainable = false;
    }
    assert!(g.is_frozen(h) && g.is_frozen(b) && !g.is_frozen(y));
    let before = Model::from_graph(g.clone(), 3).expect("model");
    let ys = random(&[10, 2], 9);
    for engine in [Engine::Reference, Engine::Jit, Engine::Interp] {
        let (_, p) = train(&g, engine, SGD, "mse", &ys);
        for (k, spec) in g.params.iter().enumerate() {
            let same = p[k] == before.params()[k];
            let node = &g.nodes[spec.node].name;
            assert_eq!(
                same,
                node != "y",
                "{} {node}/{}: frozen weights must stay, others move",
                engine.name(),
                spec.name
            );
        }
    }
    compare(&g, SGD, "mse", &ys, "frozen layers");
    // The flag in a configuration, and back out.
    let json = lcjit::frontend::serialize::to_keras_json(before.graph()).to_string();
    let back = Model::from_json_str(&json, "frozen.json", &Default::default()).expect("load");
    let gb = back.graph();
    for (id, n) in gb.nodes.iter().enumerate() {
        assert_eq!(
            gb.is_frozen(id),
            n.name == "h" || n.name == "bn",
            "{}",
            n.name
        );
    }
}

/// Training-mode BatchNorm on every schedule of `lower::norm_train` (channels last with
/// `C` a multiple of 4: channel lanes; channels first with `inner` a multiple of 4; odd
/// sizes: scalar), NaN-free inputs: the JIT equals the interpreter bit for bit, on 1 and
/// 2 threads, in the outputs, the input and parameter gradients and the moving
/// statistics, and both are within 1e-5 of the reference.
#[test]
fn training_batch_norm_schedules_are_bitwise_equal_across_engines_and_threads() {
    use lcjit::init::Rng;
    use lcjit::CompiledModel;
    use std::sync::Arc;
    // (per-sample shape, BatchNorm axis): channels last C = 8 and C = 4 over 5
    // positions, channels first C = 3 with 8 positions, odd channels last C = 3.
    for (shape, axis) in [
        (vec![8], 0),
        (vec![5, 4], 1),
        (vec![3, 8], 0),
        (vec![6, 3], 1),
    ] {
        let mut g = Graph::new("bn");
        let x = g.add_input("x", shape.clone()).expect("x");
        let b = g.add("bn", batch_norm(axis, true, true), &[x]).expect("bn");
        let f = g
            .add(
                "f",
                Op::Flatten {
                    data_format: DataFormat::ChannelsLast,
                },
                &[b],
            )
            .expect("flatten");
        let y = g.add("y", dense(3, Activation::Tanh), &[f]).expect("y");
        g.outputs.push(y);
        let model = Arc::new(Model::from_graph(g, 5).expect("model"));
        let mut xshape = vec![7];
        xshape.extend(&shape);
        let xs = random(&xshape, 3);
        let run = |engine: Engine, threads: usize| {
            let cm = CompiledModel::new(
                model.clone(),
                CompileOptions {
                    engine,
                    threads,
                    max_batch: 7,
                    ..Default::default()
                },
            )
            .expect("compile");
            let r = cm
                .run_gradients_in(
                    model.params(),
                    std::slice::from_ref(&xs),
                    Some(&mut Rng::new(1)),
                    &mut |outs| Ok(outs[0].mapv(|v| v * 0.5 - 0.25)),
                )
                .expect("gradients");
            let mut all: Vec<ArrayD<f32>> = r.outputs;
            all.extend(r.dinputs);
            all.extend(r.dparams);
            all.extend(r.updates.into_iter().map(|(_, a)| a));
            all
        };
        let bits = |v: &[ArrayD<f32>]| -> Vec<Vec<u32>> {
            v.iter()
                .map(|a| a.iter().map(|x| x.to_bits()).collect())
                .collect()
        };
        let interp = run(Engine::Interp, 1);
        for threads in [1, 2] {
            let jit = run(Engine::Jit, threads);
            assert_eq!(
                bits(&jit),
                bits(&interp),
                "{shape:?} axis {axis}, {threads} threads"
            );
        }
        let want = run(Engine::Reference, 1);
        assert_eq!(want.len(), interp.len());
        for (a, b) in interp.iter().zip(&want) {
            let s = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            let e = (a - b).iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(
                e <= 1e-5 * s,
                "{shape:?} axis {axis}: {e} from the reference"
            );
        }
    }
}
