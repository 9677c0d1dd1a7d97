//! Schedules chosen for large layers: the one-row (batch 1) Dense schedule: blocked matrix-vector product with a fixed block
//! partition, against the reference path and, bitwise, against the interpreter, for unit
//! counts with and without a multiple-of-4 part and inputs that do not split evenly.

use lcjit::graph::{Activation, Dense, Graph, Initializer, Op, WeightOptions};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

fn model(n_in: usize, units: usize, activation: Activation) -> Arc<Model> {
    let mut g = Graph::new("gemv");
    let x = g.add_input("x", vec![n_in]).expect("input");
    let d = g
        .add(
            "dense",
            Op::Dense(Dense {
                units,
                activation,
                use_bias: true,
                kernel_initializer: Initializer::RandomUniform {
                    minval: -0.1,
                    maxval: 0.1,
                },
                bias_initializer: Initializer::RandomUniform {
                    minval: -0.1,
                    maxval: 0.1,
                },
                options: WeightOptions::default(),
            }),
            &[x],
        )
        .expect("dense");
    g.outputs = vec![d];
    Arc::new(Model::from_graph(g, 3).expect("model"))
}

#[test]
fn blocked_matrix_vector_product_matches() {
    let acts = [
        Activation::Linear,
        Activation::Relu {
            alpha: 0.0,
            max_value: None,
            threshold: 0.0,
        },
        Activation::Softmax { axis: -1 },
    ];
    // (inputs, units, batch): one row (partial sums in registers up to 16 units: a
    // vector of 4, 3 and 2 unrolled with a short last block, 1), and several rows with a
    // ≥ 1 MiB kernel whose unit count is not a multiple of 4 (partial sums in memory).
    for (n_in, units, batch) in [
        (256, 4, 1),
        (5003, 2, 1),
        (4096, 16, 1),
        (1000, 37, 1),
        (1000, 40, 1),
        (4099, 3, 1),
        (300, 1, 1),
        (8195, 37, 3),
        (8192, 33, 5),
    ] {
        for act in acts.clone() {
            let m = model(n_in, units, act.clone());
            let mut rng = lcjit::init::Rng::new(n_in as u64);
            let x = ArrayD::from_shape_vec(
                IxDyn(&[batch, n_in]),
                (0..batch * n_in)
                    .map(|_| rng.uniform() as f32 - 0.5)
                    .collect(),
            )
            .expect("x");
            let want = m.predict(&x).expect("reference");
            let run = |engine, threads| {
                CompiledModel::new(
                    m.clone(),
                    CompileOptions {
                        engine,
                        threads,
                        max_batch: batch,
                        ..Default::default()
                    },
                )
                .expect("compile")
                .predict(&x)
                .expect("predict")
            };
            let interp = run(Engine::Interp, 1);
            let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
            let err = interp
                .iter()
                .zip(want.iter())
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(err <= 1e-5 * scale, "{n_in}x{units} {act:?}: {err}");
            for threads in [1, 2, 3] {
                let jit = run(Engine::Jit, threads);
                if lcjit::backend::host_has_fma() {
                    assert!(
                        jit.iter()
                            .zip(interp.iter())
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{n_in}x{units} {act:?}: jit differs from interp with {threads} threads"
                    );
                } else {
                    let e = jit
                        .iter()
                        .zip(interp.iter())
                        .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
                    assert!(e <= 1e-6 * scale);
                }
            }
        }
    }
}

/// The channel-blocked LC schedule (weights per position ≥ 1 MiB and several filter
/// tiles): same results as the interpreter (bitwise with FMA) and the reference path, for
/// `same` and `valid` padding and batch sizes below and above the 4-row tile.
#[test]
fn channel_blocked_lc_matches() {
    use lcjit::graph::{DataFormat, LocallyConnected, Padding};
    for (padding, batch) in [(Padding::Same, 1), (Padding::Valid, 1), (Padding::Same, 5)] {
        let mut g = Graph::new("blocked");
        let x = g.add_input("x", vec![4, 4, 128]).expect("input");
        let lc = g
            .add(
                "lc",
                Op::LocallyConnected(LocallyConnected {
                    rank: 2,
                    filters: 256,
                    kernel: vec![3, 3],
                    strides: vec![1, 1],
                    dilation: vec![1, 1],
                    padding,
                    data_format: DataFormat::ChannelsLast,
                    activation: Activation::LeakyRelu { alpha: 0.1 },
                    use_bias: true,
                    implementation: 3,
                    kernel_initializer: Initializer::RandomUniform {
                        minval: -0.05,
                        maxval: 0.05,
                    },
                    bias_initializer: Initializer::RandomUniform {
                        minval: -0.1,
                        maxval: 0.1,
                    },
                    options: WeightOptions::default(),
                }),
                &[x],
            )
            .expect("lc");
        g.outputs = vec![lc];
        let m = Arc::new(Model::from_graph(g, 5).expect("model"));
        let lowered = lcjit::lower::lower_forward(m.graph(), batch).expect("lower");
        let text = lcjit::loop_ir::print::module_text(&lowered.module);
        // With `valid` padding the contiguous tap×channel merge is chosen instead.
        assert_eq!(
            text.contains("cb0"),
            padding == Padding::Same,
            "unexpected schedule:\n{text}"
        );
        let mut rng = lcjit::init::Rng::new(9);
        let n = batch * 4 * 4 * 128;
        let xin = ArrayD::from_shape_vec(
            IxDyn(&[batch, 4, 4, 128]),
            (0..n).map(|_| rng.uniform() as f32 - 0.5).collect(),
        )
        .expect("x");
        let want = m.predict(&xin).expect("reference");
        let run = |engine| {
            CompiledModel::new(
                m.clone(),
                CompileOptions {
                    engine,
                    threads: 2,
                    max_batch: batch,
                    ..Default::default()
                },
            )
            .expect("compile")
            .predict(&xin)
            .expect("predict")
        };
        let interp = run(Engine::Interp);
        let scale = want.iter().fold(1f32, |a, v| a.max(v.abs()));
        let err = interp
            .iter()
            .zip(want.iter())
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
        assert!(err <= 1e-5 * scale, "{padding:?} batch {batch}: {err}");
        let jit = run(Engine::Jit);
        let e = jit
            .iter()
            .zip(interp.iter())
            .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
        assert!(
            e <= 1e-6 * scale,
            "{padding:?} batch {batch}: jit vs interp {e}"
        );
        if lcjit::backend::host_has_fma() {
            assert!(jit
                .iter()
                .zip(interp.iter())
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
