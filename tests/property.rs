//! Property tests over random layer stacks: the JIT agrees with the loop-IR interpreter
//! (bitwise when the host has FMA, and across thread counts) and the interpreter agrees with the naive reference path on random locally connected stacks
//! (shapes, strides, dilation, padding, data formats, activations, batch sizes); and the
//! compiled gradients (interpreter and JIT) of such stacks with a Dense head agree with the
//! reference backward pass, bitwise across JIT thread counts.

use lcjit::graph::{
    Activation, DataFormat, Graph, Initializer, LocallyConnected, Op, Padding, WeightOptions,
};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct LayerSpec {
    filters: usize,
    kernel: Vec<usize>,
    strides: Vec<usize>,
    dilation: Vec<usize>,
    same: bool,
    act: usize,
    bias: bool,
}

const ACTS: [Activation; 8] = [
    Activation::Linear,
    Activation::Relu {
        alpha: 0.0,
        max_value: None,
        threshold: 0.0,
    },
    Activation::Tanh,
    Activation::Sigmoid,
    Activation::Elu { alpha: 1.0 },
    Activation::LeakyRelu { alpha: 0.1 },
    Activation::Softplus,
    Activation::Gelu { approximate: false },
];

fn layer_spec(rank: usize) -> impl Strategy<Value = LayerSpec> {
    (
        1usize..9,
        prop::collection::vec(1usize..4, rank),
        prop::collection::vec(1usize..3, rank),
        prop::collection::vec(1usize..3, rank),
        any::<bool>(),
        0usize..ACTS.len(),
        any::<bool>(),
    )
        .prop_map(
            |(filters, kernel, strides, dilation, same, act, bias)| LayerSpec {
                filters,
                kernel,
                strides,
                dilation,
                same,
                act,
                bias,
            },
        )
}

fn stack() -> impl Strategy<Value = (usize, bool, Vec<usize>, usize, usize, Vec<LayerSpec>)> {
    (1usize..3, any::<bool>()).prop_flat_map(|(rank, cl)| {
        (
            Just(rank),
            Just(cl),
            prop::collection::vec(5usize..11, rank),
            1usize..5,
            1usize..5,
            prop::collection::vec(layer_spec(rank), 1..3),
        )
    })
}

/// Builds the stack, skipping layers whose output would be empty.
fn build(
    rank: usize,
    cl: bool,
    spatial: &[usize],
    c: usize,
    layers: &[LayerSpec],
) -> Option<Graph> {
    let df = if cl {
        DataFormat::ChannelsLast
    } else {
        DataFormat::ChannelsFirst
    };
    let mut g = Graph::new("prop");
    let mut shape = spatial.to_vec();
    if cl {
        shape.push(c);
    } else {
        shape.insert(0, c);
    }
    let mut id = g.add_input("x", shape).ok()?;
    let mut added = 0;
    for (i, l) in layers.iter().enumerate() {
        let op = Op::LocallyConnected(LocallyConnected {
            rank,
            filters: l.filters,
            kernel: l.kernel.clone(),
            strides: l.strides.clone(),
            dilation: l.dilation.clone(),
            padding: if l.same {
                Padding::Same
            } else {
                Padding::Valid
            },
            data_format: df,
            activation: ACTS[l.act].clone(),
            use_bias: l.bias,
            implementation: if l.same { 2 } else { 1 },
            kernel_initializer: Initializer::RandomUniform {
                minval: -0.5,
                maxval: 0.5,
            },
            bias_initializer: Initializer::RandomUniform {
                minval: -0.5,
                maxval: 0.5,
            },
            options: WeightOptions::default(),
        });
        if let Ok(next) = g.add(&format!("lc{i}"), op, &[id]) {
            id = next;
            added += 1;
        }
    }
    g.outputs = vec![id];
    (added > 0).then_some(g)
}

fn input(model: &Model, batch: usize, seed: u64) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let mut rng = lcjit::init::Rng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(&shape),
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
    )
    .expect("shape")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn interpreter_agrees_with_reference((rank, cl, spatial, c, batch, layers) in stack(), seed in 0u64..1000) {
        let Some(g) = build(rank, cl, &spatial, c, &layers) else { return Ok(()); };
        let model = Arc::new(Model::from_graph(g, seed).expect("model"));
        let x = input(&model, batch, seed);
        let want = model.predict(&x).expect("reference");
        let interp = CompiledModel::new(model.clone(), CompileOptions { engine: Engine::Interp, threads: 1, max_batch: batch, ..Default::default() })
            .expect("compile interp");
        let y_interp = interp.predict(&x).expect("interp");
        prop_assert_eq!(y_interp.shape(), want.shape());
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = y_interp.iter().zip(want.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        prop_assert!(err <= 1e-5 * scale, "interp vs reference: max error {} (scale {})", err, scale);
        // The JIT computes the interpreter's operations in the same order; with FMA on the
        // host they agree bit for bit, for every thread count.
        let mut first: Option<Vec<u32>> = None;
        for threads in [1, 2, 3] {
            let jit = CompiledModel::new(model.clone(), CompileOptions { engine: Engine::Jit, threads, max_batch: batch, ..Default::default() })
                .expect("compile jit");
            let y = jit.predict(&x).expect("jit");
            let err = y.iter().zip(y_interp.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            prop_assert!(err <= 1e-6 * scale, "jit vs interp: max error {}", err);
            if lcjit::backend::host_has_fma() {
                prop_assert!(y.iter().zip(y_interp.iter()).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())));
            }
            let bits: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
            match &first {
                None => first = Some(bits),
                Some(f) => prop_assert!(*f == bits, "results differ between thread counts"),
            }
        }
    }
}

#[test]
fn compiled_models_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<CompiledModel>();
    check::<lcjit::backend::CompiledModule>();
}

/// One compiled model called from several threads at once gives every caller the same
/// bits as a lone call.
#[test]
fn compiled_model_serves_concurrent_callers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras-golden/model_mini_deepface/model.h5");
    let model = Arc::new(Model::load(path).expect("model"));
    let x = input(&model, 3, 11);
    let jit = Arc::new(
        CompiledModel::new(
            model,
            CompileOptions {
                engine: Engine::Jit,
                threads: 2,
                max_batch: 3,
                ..Default::default()
            },
        )
        .expect("compile"),
    );
    let alone = jit.predict(&x).expect("predict");
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (jit, x) = (jit.clone(), x.clone());
                s.spawn(move || {
                    (0..5)
                        .map(|_| jit.predict(&x).expect("predict"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for h in handles {
            for y in h.join().expect("thread") {
                assert!(y
                    .iter()
                    .zip(alone.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()));
            }
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    /// Gradients of `sum(y · dy)` on random LC stacks followed by Flatten and a Dense
    /// head: interpreter and JIT agree with the reference backward pass, and the JIT is
    /// bitwise identical across thread counts.
    #[test]
    fn compiled_gradients_agree_with_reference((rank, cl, spatial, c, batch, layers) in stack(), seed in 0u64..1000, units in 1usize..6) {
        let Some(mut g) = build(rank, cl, &spatial, c, &layers) else { return Ok(()); };
        let last = g.outputs[0];
        let df = if cl { DataFormat::ChannelsLast } else { DataFormat::ChannelsFirst };
        let flat = g.add("flat", Op::Flatten { data_format: df }, &[last]).expect("flatten");
        let head = g.add("head", Op::Dense(lcjit::graph::Dense {
            units,
            activation: ACTS[seed as usize % ACTS.len()].clone(),
            use_bias: seed % 2 == 0,
            kernel_initializer: Initializer::RandomUniform { minval: -0.5, maxval: 0.5 },
            bias_initializer: Initializer::RandomUniform { minval: -0.5, maxval: 0.5 },
            options: WeightOptions::default(),
        }), &[flat]).expect("dense");
        g.outputs = vec![head];
        let model = Arc::new(Model::from_graph(g, seed).expect("model"));
        let x = input(&model, batch, seed);
        let mut dys = vec![batch];
        dys.extend_from_slice(&model.graph().nodes[head].shape);
        let dy = {
            let mut rng = lcjit::init::Rng::new(seed + 1);
            let n: usize = dys.iter().product();
            ArrayD::from_shape_vec(IxDyn(&dys), (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect()).expect("dy")
        };
        let inputs = std::slice::from_ref(&x);
        let (want_dx, want_dp) = lcjit::reference::backward::gradients(model.graph(), model.params(), inputs, &dy).expect("reference");
        let want: Vec<&ArrayD<f32>> = want_dx.iter().chain(&want_dp).collect();
        let mut first: Option<Vec<u32>> = None;
        for (engine, threads) in [(Engine::Interp, 1), (Engine::Jit, 1), (Engine::Jit, 2), (Engine::Jit, 3)] {
            let cm = CompiledModel::new(model.clone(), CompileOptions { engine, threads, max_batch: batch, ..Default::default() }).expect("compile");
            let (dx, dp) = cm.gradients(inputs, &dy).expect("gradients");
            for (k, (got, w)) in dx.iter().chain(&dp).zip(&want).enumerate() {
                prop_assert_eq!(got.shape(), w.shape());
                let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = got.iter().zip(w.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                prop_assert!(err <= 1e-4 * scale, "{} gradient {}: error {} (scale {})", engine.name(), k, err, scale);
            }
            if engine == Engine::Jit {
                let bits: Vec<u32> = dx.iter().chain(&dp).flat_map(|a| a.iter().map(|v| v.to_bits())).collect();
                match &first {
                    None => first = Some(bits),
                    Some(f) => prop_assert!(*f == bits, "gradients differ between thread counts"),
                }
            }
        }
    }
}
