//! Property tests of the lowering: random stacks mixing locally connected, convolution,
//! pooling, batch normalization, Flatten and Dense layers (both data formats, every
//! padding, strides, dilation, groups), run by the loop-IR interpreter, agree with the
//! reference path to `1e-5 · max(1, max|ref|)`.

use lcjit::graph::{
    Activation, BatchNorm, Conv, DataFormat, Dense, Graph, Initializer, LocallyConnected, Op,
    Padding, Pool, PoolKind, WeightOptions,
};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::sync::Arc;

/// One randomly drawn layer: `(kind, filters, kernel, stride, dilation, padding, flag)`.
type LayerSpec = (usize, usize, usize, usize, usize, usize, bool);

fn uniform(lo: f32, hi: f32) -> Initializer {
    Initializer::RandomUniform {
        minval: lo,
        maxval: hi,
    }
}

const ACTS: [Activation; 4] = [
    Activation::Linear,
    Activation::Relu {
        alpha: 0.0,
        max_value: None,
        threshold: 0.0,
    },
    Activation::Tanh,
    Activation::Sigmoid,
];

/// The op of a drawn layer for an input of per-sample shape `shape`.
fn op(rank: usize, df: DataFormat, shape: &[usize], l: &LayerSpec) -> Op {
    let &(kind, filters, k, s, d, pad, flag) = l;
    let c = match df {
        DataFormat::ChannelsLast => shape[rank],
        DataFormat::ChannelsFirst => shape[0],
    };
    match kind {
        0 => Op::LocallyConnected(LocallyConnected {
            rank,
            filters,
            kernel: vec![k; rank],
            strides: vec![s; rank],
            dilation: vec![d; rank],
            padding: if pad == 1 {
                Padding::Same
            } else {
                Padding::Valid
            },
            data_format: df,
            activation: ACTS[filters % ACTS.len()].clone(),
            use_bias: flag,
            implementation: if pad == 1 { 2 } else { 1 },
            kernel_initializer: uniform(-0.5, 0.5),
            bias_initializer: uniform(-0.5, 0.5),
            options: WeightOptions::default(),
        }),
        1 => {
            // Groups: 2 when both channel counts allow it and the flag asks for it.
            let groups = if flag && c % 2 == 0 && filters % 2 == 0 {
                2
            } else {
                1
            };
            Op::Conv(Conv {
                rank,
                filters: filters * 2,
                kernel: vec![k; rank],
                strides: vec![s; rank],
                dilation: vec![if s > 1 { 1 } else { d }; rank],
                padding: match pad {
                    0 => Padding::Valid,
                    2 if rank == 1 => Padding::Causal,
                    _ => Padding::Same,
                },
                data_format: df,
                groups,
                activation: ACTS[filters % ACTS.len()].clone(),
                use_bias: true,
                kernel_initializer: uniform(-0.5, 0.5),
                bias_initializer: uniform(-0.5, 0.5),
                options: WeightOptions::default(),
            })
        }
        2 => Op::Pool(Pool {
            kind: if flag {
                PoolKind::Max
            } else {
                PoolKind::Average
            },
            rank,
            pool: vec![k.max(2); rank],
            strides: vec![s; rank],
            padding: if pad == 0 {
                Padding::Valid
            } else {
                Padding::Same
            },
            data_format: df,
        }),
        _ => Op::BatchNorm(BatchNorm {
            axis: match df {
                DataFormat::ChannelsLast => rank,
                DataFormat::ChannelsFirst => 0,
            },
            epsilon: 1e-3,
            momentum: 0.99,
            center: flag,
            scale: pad != 0,
            initializers: [
                uniform(0.5, 1.5),
                uniform(-0.5, 0.5),
                uniform(-0.5, 0.5),
                uniform(0.5, 1.5),
            ],
            options: WeightOptions::default(),
        }),
    }
}

/// Builds the stack (skipping layers whose output would be empty), then Flatten and
/// Dense when `units > 0`.
fn build(
    rank: usize,
    cl: bool,
    spatial: &[usize],
    c: usize,
    layers: &[LayerSpec],
    units: usize,
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
    for (i, l) in layers.iter().enumerate() {
        let o = op(rank, df, &g.nodes[id].shape, l);
        if let Ok(next) = g.add(&format!("l{i}"), o, &[id]) {
            id = next;
        }
    }
    if units > 0 {
        id = g
            .add("flatten", Op::Flatten { data_format: df }, &[id])
            .ok()?;
        let dense = Op::Dense(Dense {
            units,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: uniform(-0.5, 0.5),
            bias_initializer: uniform(-0.5, 0.5),
            options: WeightOptions::default(),
        });
        id = g.add("dense", dense, &[id]).ok()?;
    }
    g.outputs = vec![id];
    (g.nodes.len() > 1).then_some(g)
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

fn layer() -> impl Strategy<Value = LayerSpec> {
    (
        0usize..4,
        1usize..9,
        1usize..4,
        1usize..3,
        1usize..3,
        0usize..3,
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

    #[test]
    fn lowered_stacks_agree_with_reference(
        rank in 1usize..3,
        cl in any::<bool>(),
        spatial in prop::collection::vec(5usize..10, 2),
        c in 1usize..6,
        batch in 1usize..6,
        layers in prop::collection::vec(layer(), 1..5),
        units in prop_oneof![Just(0usize), 1usize..20],
        seed in 0u64..1000,
    ) {
        let Some(g) = build(rank, cl, &spatial[..rank], c, &layers, units) else { return Ok(()); };
        let model = Arc::new(Model::from_graph(g, seed).expect("model"));
        let x = input(&model, batch, seed);
        let want = model.predict(&x).expect("reference");
        let compiled = CompiledModel::new(
            model.clone(),
            CompileOptions { engine: Engine::Interp, threads: 2, max_batch: batch, ..Default::default() },
        )
        .expect("compile");
        let got = compiled.predict(&x).expect("interp");
        prop_assert_eq!(got.shape(), want.shape());
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        prop_assert!(err <= 1e-5 * scale, "max error {} (scale {})", err, scale);
        // The JIT against the interpreter: bitwise on FMA hosts, any thread count.
        for threads in [1, 2] {
            let jit = CompiledModel::new(
                model.clone(),
                CompileOptions { engine: Engine::Jit, threads, max_batch: batch, ..Default::default() },
            )
            .expect("compile jit");
            let y = jit.predict(&x).expect("jit");
            let err = y.iter().zip(got.iter()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            prop_assert!(err <= 1e-6 * scale, "jit vs interp: {}", err);
            if lcjit::backend::host_has_fma() {
                prop_assert!(y.iter().zip(got.iter()).all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())), "jit differs from interp");
            }
        }
    }
}
