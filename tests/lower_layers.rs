//! Differential tests of every lowered layer kind: small graphs with random weights, run
//! by the loop-IR interpreter (two threads) and by the reference path, for batch sizes 1,
//! 2 and 5, must agree to `1e-5 · max(1, max|ref|)`.

use lcjit::graph::{
    Activation, BatchNorm, Conv, DataFormat, Dense, Graph, Initializer, MergeKind, NodeId, Op,
    Padding, Pool, PoolKind, WeightOptions,
};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

const CL: DataFormat = DataFormat::ChannelsLast;
const CF: DataFormat = DataFormat::ChannelsFirst;

fn uniform(lo: f32, hi: f32) -> Initializer {
    Initializer::RandomUniform {
        minval: lo,
        maxval: hi,
    }
}

fn relu() -> Activation {
    Activation::Relu {
        alpha: 0.0,
        max_value: None,
        threshold: 0.0,
    }
}

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = lcjit::init::Rng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
    )
    .expect("shape")
}

/// Runs `g` through the interpreter and the reference path for batches 1, 2 and 5.
fn check(g: Graph, what: &str) {
    let model = Arc::new(Model::from_graph(g, 7).unwrap_or_else(|e| panic!("{what}: {e}")));
    for batch in [1usize, 2, 5] {
        let inputs: Vec<ArrayD<f32>> = model
            .graph()
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut s = vec![batch];
                s.extend_from_slice(&model.graph().nodes[n].shape);
                random(&s, 100 + i as u64 + 10 * batch as u64)
            })
            .collect();
        let want = model.predict_many(&inputs).expect("reference");
        for engine in [Engine::Interp, Engine::Jit] {
            let compiled = CompiledModel::new(
                model.clone(),
                CompileOptions {
                    engine,
                    threads: 2,
                    max_batch: batch,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{what} ({}): {e}", engine.name()));
            let got = compiled
                .predict_many(&inputs)
                .unwrap_or_else(|e| panic!("{what} (batch {batch}, {}): {e}", engine.name()));
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.shape(), w.shape(), "{what}");
                let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                let err = g
                    .iter()
                    .zip(w.iter())
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(
                    err <= 1e-5 * scale,
                    "{what} (batch {batch}, {}): max error {err} (scale {scale})",
                    engine.name()
                );
            }
        }
    }
}

/// A graph `input(shape) → op`, with the op as output.
fn one(shape: &[usize], op: Op) -> Graph {
    let mut g = Graph::new("t");
    let x = g.add_input("x", shape.to_vec()).expect("input");
    let y = g.add("y", op, &[x]).expect("layer");
    g.outputs.push(y);
    g
}

fn dense(units: usize, activation: Activation, use_bias: bool) -> Op {
    Op::Dense(Dense {
        units,
        activation,
        use_bias,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    })
}

#[test]
fn dense_tiles_units_and_rows() {
    for units in [1, 3, 4, 7, 8, 12, 16, 32, 40] {
        for shape in [vec![5], vec![3, 6], vec![2, 2, 4]] {
            for (act, bias) in [(Activation::Linear, true), (relu(), false)] {
                check(
                    one(&shape, dense(units, act.clone(), bias)),
                    &format!("dense units {units} on {shape:?}"),
                );
            }
        }
    }
    check(
        one(&[6], dense(8, Activation::Softmax { axis: -1 }, true)),
        "dense softmax",
    );
    check(
        one(&[3, 6], dense(5, Activation::LogSoftmax, true)),
        "dense log-softmax",
    );
}

#[allow(clippy::too_many_arguments)]
fn conv(
    rank: usize,
    filters: usize,
    k: usize,
    s: usize,
    d: usize,
    padding: Padding,
    df: DataFormat,
    groups: usize,
) -> Op {
    Op::Conv(Conv {
        rank,
        filters,
        kernel: vec![k; rank],
        strides: vec![s; rank],
        dilation: vec![d; rank],
        padding,
        data_format: df,
        groups,
        activation: Activation::Tanh,
        use_bias: true,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    })
}

fn spatial(rank: usize, n: usize, c: usize, df: DataFormat) -> Vec<usize> {
    let mut s = vec![n; rank];
    match df {
        DataFormat::ChannelsLast => s.push(c),
        DataFormat::ChannelsFirst => s.insert(0, c),
    }
    s
}

#[test]
fn conv_paddings_strides_dilation_groups_formats() {
    for rank in [1, 2] {
        for df in [CL, CF] {
            for padding in [Padding::Valid, Padding::Same, Padding::Causal] {
                if padding == Padding::Causal && rank == 2 {
                    continue;
                }
                for (k, s, d) in [(3, 1, 1), (2, 2, 1), (3, 1, 2), (3, 2, 1)] {
                    if s > 1 && d > 1 {
                        continue;
                    }
                    for (filters, groups, c) in [(4, 1, 3), (8, 2, 4), (6, 3, 3), (16, 1, 2)] {
                        let op = conv(rank, filters, k, s, d, padding, df, groups);
                        check(
                            one(&spatial(rank, 7, c, df), op),
                            &format!(
                                "conv{rank}d {df:?} {padding:?} k{k} s{s} d{d} f{filters} g{groups}"
                            ),
                        );
                    }
                }
            }
        }
    }
    let mut op = conv(1, 4, 3, 1, 1, Padding::Same, CL, 1);
    if let Op::Conv(c) = &mut op {
        c.activation = Activation::Softmax { axis: -1 };
        c.use_bias = false;
    }
    check(one(&[6, 2], op), "conv softmax");
}

#[test]
fn pooling_same_and_valid() {
    for rank in [1, 2] {
        for df in [CL, CF] {
            for kind in [PoolKind::Max, PoolKind::Average] {
                for padding in [Padding::Valid, Padding::Same] {
                    for (k, s) in [(2, 2), (3, 1), (3, 2), (2, 1)] {
                        for c in [3, 4, 8] {
                            let op = Op::Pool(Pool {
                                kind,
                                rank,
                                pool: vec![k; rank],
                                strides: vec![s; rank],
                                padding,
                                data_format: df,
                            });
                            check(
                                one(&spatial(rank, 5, c, df), op),
                                &format!("pool{rank}d {kind:?} {df:?} {padding:?} k{k} s{s} c{c}"),
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn global_pooling() {
    for rank in [1, 2] {
        for df in [CL, CF] {
            for kind in [PoolKind::Max, PoolKind::Average] {
                for keepdims in [false, true] {
                    for c in [3, 8] {
                        let op = Op::GlobalPool {
                            kind,
                            rank,
                            data_format: df,
                            keepdims,
                        };
                        check(
                            one(&spatial(rank, 3, c, df), op),
                            &format!("global{rank}d {kind:?} {df:?} keepdims {keepdims} c{c}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn padding_cropping_flatten_reshape_permute() {
    for rank in [1, 2] {
        for df in [CL, CF] {
            let pads: Vec<(usize, usize)> = [(1, 2), (0, 1)][..rank].to_vec();
            let op = Op::ZeroPadding {
                rank,
                pads: pads.clone(),
                data_format: df,
            };
            check(
                one(&spatial(rank, 4, 3, df), op),
                &format!("zeropad{rank}d {df:?}"),
            );
            let op = Op::Cropping {
                rank,
                crops: pads,
                data_format: df,
            };
            check(
                one(&spatial(rank, 5, 4, df), op),
                &format!("crop{rank}d {df:?}"),
            );
            for c in [1, 3] {
                let op = Op::Flatten { data_format: df };
                check(
                    one(&spatial(rank, 3, c, df), op),
                    &format!("flatten{rank}d {df:?} c{c}"),
                );
            }
        }
    }
    check(one(&[5], Op::Flatten { data_format: CF }), "flatten rank 1");
    // Reshape and Flatten in the middle of a graph are views.
    let mut g = Graph::new("t");
    let x = g.add_input("x", vec![2, 3, 4]).expect("input");
    let r = g
        .add(
            "r",
            Op::Reshape {
                target: vec![4, -1],
            },
            &[x],
        )
        .expect("reshape");
    let f = g
        .add("f", Op::Flatten { data_format: CF }, &[r])
        .expect("flatten");
    let d = g
        .add("d", dense(4, Activation::Linear, true), &[f])
        .expect("dense");
    g.outputs.push(d);
    check(g, "reshape/flatten views");
    check(
        one(
            &[2, 3, 4],
            Op::Reshape {
                target: vec![-1, 2],
            },
        ),
        "reshape as output",
    );
    for dims in [vec![2, 1], vec![1, 2]] {
        check(
            one(&[3, 4], Op::Permute { dims: dims.clone() }),
            &format!("permute {dims:?}"),
        );
    }
    for dims in [vec![3, 1, 2], vec![2, 3, 1], vec![1, 3, 2], vec![2, 1, 3]] {
        check(
            one(&[2, 3, 4], Op::Permute { dims: dims.clone() }),
            &format!("permute {dims:?}"),
        );
    }
}

fn bn(axis: usize, center: bool, scale: bool) -> Op {
    Op::BatchNorm(BatchNorm {
        axis,
        epsilon: 1e-3,
        momentum: 0.99,
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

#[test]
fn batch_norm_axes_center_scale() {
    for shape in [vec![8], vec![3], vec![3, 4], vec![4, 3], vec![2, 3, 5]] {
        for axis in 0..shape.len() {
            for (center, scale) in [(true, true), (false, true), (true, false), (false, false)] {
                check(
                    one(&shape, bn(axis, center, scale)),
                    &format!("bn {shape:?} axis {axis} center {center} scale {scale}"),
                );
            }
        }
    }
}

fn multi(shapes: &[Vec<usize>], op: Op) -> Graph {
    let mut g = Graph::new("t");
    let ins: Vec<NodeId> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| g.add_input(&format!("x{i}"), s.clone()).expect("input"))
        .collect();
    let y = g.add("y", op, &ins).expect("layer");
    g.outputs.push(y);
    g
}

#[test]
fn merges_and_concatenate() {
    let kinds = [
        MergeKind::Add,
        MergeKind::Subtract,
        MergeKind::Multiply,
        MergeKind::Average,
        MergeKind::Maximum,
        MergeKind::Minimum,
    ];
    for kind in kinds {
        for shape in [vec![3], vec![2, 4], vec![3, 5]] {
            for n in [2, 3] {
                if kind == MergeKind::Subtract && n != 2 {
                    continue;
                }
                check(
                    multi(&vec![shape.clone(); n], Op::Merge(kind)),
                    &format!("{kind:?} x{n} {shape:?}"),
                );
            }
        }
    }
    for axis in 0..3 {
        let mut a = vec![2, 3, 4];
        let mut b = vec![2, 3, 4];
        a[axis] = 1;
        b[axis] = 2;
        check(
            multi(&[a, b, vec![2, 3, 4]], Op::Concatenate { axis }),
            &format!("concatenate axis {axis}"),
        );
    }
    // The same tensor twice.
    let mut g = Graph::new("t");
    let x = g.add_input("x", vec![4]).expect("input");
    let y = g
        .add("y", Op::Concatenate { axis: 0 }, &[x, x])
        .expect("concat");
    let z = g
        .add("z", Op::Merge(MergeKind::Multiply), &[y, y])
        .expect("mul");
    g.outputs.push(z);
    check(g, "repeated inputs");
}

#[test]
fn views_as_graph_outputs_are_copied() {
    // Dropout straight from the input as the only output.
    let op = Op::Dropout {
        rate: 0.5,
        spatial: None,
        data_format: CL,
    };
    check(one(&[6], op.clone()), "dropout of the input as output");
    // Two outputs: a Dense and views of it (Reshape, Dropout, Flatten).
    let mut g = Graph::new("t");
    let x = g.add_input("x", vec![3, 4]).expect("input");
    let d = g.add("d", dense(8, relu(), true), &[x]).expect("dense");
    let r = g
        .add("r", Op::Reshape { target: vec![-1] }, &[d])
        .expect("reshape");
    let p = g.add("p", op, &[d]).expect("dropout");
    let f = g
        .add("f", Op::Flatten { data_format: CL }, &[p])
        .expect("flatten");
    g.outputs = vec![d, r, p, f];
    check(g, "views of an output as outputs");
}
