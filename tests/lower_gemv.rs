//! The one-row (batch 1) Dense schedule: blocked matrix-vector product with a fixed block
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
    for (n_in, units) in [(256, 4), (1000, 37), (1000, 40), (4099, 3), (300, 1)] {
        for act in acts.clone() {
            let m = model(n_in, units, act.clone());
            let mut rng = lcjit::init::Rng::new(n_in as u64);
            let x = ArrayD::from_shape_vec(
                IxDyn(&[1, n_in]),
                (0..n_in).map(|_| rng.uniform() as f32 - 0.5).collect(),
            )
            .expect("x");
            let want = m.predict(&x).expect("reference");
            let run = |engine, threads| {
                CompiledModel::new(
                    m.clone(),
                    CompileOptions {
                        engine,
                        threads,
                        max_batch: 1,
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
