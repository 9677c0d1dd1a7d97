//! Extreme but valid graphs compile and run in time linear in their size, without deep
//! recursion: wide merges (Add of 20,000 inputs, Concatenate of 100,000), the gradient of
//! a 3000-way Multiply, a 20,000-layer chain, a pooling window of 2^31 taps, and the
//! Orthogonal initializer on a weight too large to orthogonalize quickly.
//!
//! Each case runs on every engine against the reference (or a closed form) and under a
//! time limit far above its linear cost and far below what the quadratic (or deeper)
//! behaviour it guards against would take; test threads have the default 2 MiB stack, so
//! a recursion as deep as the graph would overflow it.

use lcjit::graph::{
    Activation, DataFormat, Dense, Graph, Initializer, MergeKind, Op, Padding, Pool, PoolKind,
    WeightOptions,
};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn arr(shape: &[usize], f: impl Fn(usize) -> f32) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).expect("shape")
}

fn compiled(model: &Arc<Model>, engine: Engine, batch: usize) -> CompiledModel {
    CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine,
            threads: 2,
            max_batch: batch,
            ..Default::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", engine.name()))
}

/// Predicts on every engine within `limit`, returning each engine's outputs.
fn predict_all(model: &Arc<Model>, inputs: &[ArrayD<f32>], limit: Duration) -> Vec<ArrayD<f32>> {
    let batch = inputs[0].shape()[0];
    [Engine::Reference, Engine::Interp, Engine::Jit]
        .into_iter()
        .map(|engine| {
            let t = Instant::now();
            let out = compiled(model, engine, batch)
                .predict_many(inputs)
                .unwrap_or_else(|e| panic!("{}: {e}", engine.name()));
            let took = t.elapsed();
            assert!(
                took < limit,
                "{}: {took:?} (limit {limit:?})",
                engine.name()
            );
            out.into_iter().next().expect("one output")
        })
        .collect()
}

fn assert_close(got: &ArrayD<f32>, want: &ArrayD<f32>, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        assert!(
            (a - b).abs() <= 1e-4 * b.abs().max(1.0),
            "{what} [{i}]: {a} vs {b}"
        );
    }
}

#[test]
fn add_of_20000_inputs_sums_left_to_right_on_every_engine() {
    let n = 20_000;
    let mut g = Graph::new("wide_add");
    let x = g.add_input("x", vec![8]).expect("input");
    let y = g
        .add("sum", Op::Merge(MergeKind::Add), &vec![x; n])
        .expect("add");
    g.outputs.push(y);
    let model = Arc::new(Model::from_graph(g, 0).expect("model"));
    let xs = arr(&[2, 8], |i| (i % 5) as f32 - 2.0);
    let outs = predict_all(&model, std::slice::from_ref(&xs), Duration::from_secs(60));
    // Small integers: every partial sum is exact, so the fold is n·x bit for bit.
    let want = xs.mapv(|v| v * n as f32);
    for (k, o) in outs.iter().enumerate() {
        assert_eq!(o, &want, "engine {k}");
    }
}

#[test]
fn concatenate_of_100000_inputs_compiles_in_seconds() {
    let n = 100_000;
    let mut g = Graph::new("wide_concat");
    let x = g.add_input("x", vec![1]).expect("input");
    let y = g
        .add("cat", Op::Concatenate { axis: 0 }, &vec![x; n])
        .expect("concatenate");
    g.outputs.push(y);
    let model = Arc::new(Model::from_graph(g, 0).expect("model"));
    let xs = arr(&[2, 1], |i| i as f32 + 1.0);
    let outs = predict_all(&model, std::slice::from_ref(&xs), Duration::from_secs(60));
    for o in &outs {
        assert_eq!(o.shape(), &[2, n]);
        assert!(o.iter().take(n).all(|&v| v == 1.0));
        assert!(o.iter().skip(n).all(|&v| v == 2.0));
    }
}

#[test]
fn gradient_of_a_3000_way_multiply_is_linear() {
    let n = 3000;
    let mut g = Graph::new("wide_mul");
    let ids: Vec<_> = (0..n)
        .map(|i| g.add_input(&format!("x{i}"), vec![4]).expect("input"))
        .collect();
    let y = g
        .add("prod", Op::Merge(MergeKind::Multiply), &ids)
        .expect("multiply");
    g.outputs.push(y);
    let model = Arc::new(Model::from_graph(g, 0).expect("model"));
    // Factors around 1 keep the product of 3000 of them finite.
    let inputs: Vec<ArrayD<f32>> = (0..n)
        .map(|i| arr(&[1, 4], |j| 1.0 + ((i * 7 + j * 3) % 11) as f32 * 1e-4))
        .collect();
    let dy = arr(&[1, 4], |j| 1.0 + j as f32);
    let mut grads = Vec::new();
    for engine in [Engine::Reference, Engine::Interp, Engine::Jit] {
        let t = Instant::now();
        let (dx, _) = compiled(&model, engine, 1)
            .gradients(&inputs, &dy)
            .unwrap_or_else(|e| panic!("{}: {e}", engine.name()));
        let took = t.elapsed();
        assert!(
            took < Duration::from_secs(60),
            "{}: {took:?}",
            engine.name()
        );
        assert_eq!(dx.len(), n);
        grads.push(dx);
    }
    // d(Π x)/dx_i = dy · Π_{j≠i} x_j: checked on a few inputs in f64.
    for i in [0, 1, n / 2, n - 1] {
        for j in 0..4 {
            let others: f64 = (0..n)
                .filter(|&k| k != i)
                .map(|k| f64::from(inputs[k][[0, j]]))
                .product();
            let want = f64::from(dy[[0, j]]) * others;
            for (e, dx) in grads.iter().enumerate() {
                let got = f64::from(dx[i][[0, j]]);
                assert!(
                    (got - want).abs() <= 1e-3 * want.abs(),
                    "engine {e} dx{i}[{j}]: {got} vs {want}"
                );
            }
        }
    }
    assert_eq!(grads[1], grads[2], "interp and JIT gradients differ");
}

#[test]
fn a_20000_layer_chain_compiles_in_seconds() {
    let n = 20_000;
    let mut g = Graph::new("deep");
    let mut prev = g.add_input("x", vec![4]).expect("input");
    for i in 0..n {
        let op = if i % 2 == 0 {
            Op::Dense(Dense {
                units: 4,
                activation: Activation::Linear,
                use_bias: true,
                kernel_initializer: Initializer::Identity { gain: 1.0 },
                bias_initializer: Initializer::Zeros,
                options: WeightOptions::default(),
            })
        } else {
            Op::Activation(Activation::Relu {
                alpha: 0.0,
                max_value: None,
                threshold: 0.0,
            })
        };
        prev = g.add(&format!("l{i}"), op, &[prev]).expect("layer");
    }
    g.outputs.push(prev);
    let model = Arc::new(Model::from_graph(g, 0).expect("model"));
    let xs = arr(&[2, 4], |i| i as f32 - 3.0);
    let outs = predict_all(&model, std::slice::from_ref(&xs), Duration::from_secs(60));
    let want = xs.mapv(|v| v.max(0.0));
    for o in &outs {
        assert_close(o, &want, "deep chain");
    }
}

#[test]
fn a_max_pool_window_of_2_pow_31_costs_the_input_not_the_window() {
    let k = 1usize << 31;
    for kind in [PoolKind::Max, PoolKind::Average] {
        let mut g = Graph::new("huge_pool");
        let x = g.add_input("x", vec![4, 2]).expect("input");
        let pool = Op::Pool(Pool {
            kind,
            rank: 1,
            pool: vec![k],
            strides: vec![k],
            padding: Padding::Same,
            data_format: DataFormat::ChannelsLast,
        });
        let y = g.add("pool", pool, &[x]).expect("pool");
        g.outputs.push(y);
        let model = Arc::new(Model::from_graph(g, 0).expect("model"));
        let xs = arr(&[1, 4, 2], |i| {
            [3.0, -1.0, 7.0, 2.0, -4.0, 5.0, 1.0, 0.5][i]
        });
        let outs = predict_all(&model, std::slice::from_ref(&xs), Duration::from_secs(10));
        let want = match kind {
            PoolKind::Max => vec![7.0, 5.0],
            PoolKind::Average => vec![7.0 / 4.0, 6.5 / 4.0],
        };
        for o in &outs {
            assert_eq!(o.shape(), &[1, 1, 2]);
            assert_close(o, &arr(&[1, 1, 2], |i| want[i]), "huge pool");
        }
    }
}

#[test]
fn orthogonal_on_8000_square_is_refused_at_once() {
    let mut g = Graph::new("ortho");
    let x = g.add_input("x", vec![8000]).expect("input");
    let y = g
        .add(
            "d",
            Op::Dense(Dense {
                units: 8000,
                activation: Activation::Linear,
                use_bias: false,
                kernel_initializer: Initializer::Orthogonal { gain: 1.0 },
                bias_initializer: Initializer::Zeros,
                options: WeightOptions::default(),
            }),
            &[x],
        )
        .expect("dense");
    g.outputs.push(y);
    let t = Instant::now();
    let e = Model::from_graph(g, 0).expect_err("must be refused");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(!e.is_internal(), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("Orthogonal") && text.contains("'d'"),
        "{text}"
    );
}
