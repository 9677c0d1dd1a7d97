//! Compiled gradients (JIT and interpreter) of convolutions, pooling, global pooling and
//! batch normalization against the reference backward pass (see `common`): every padding,
//! strides, dilation, groups, both data formats, with and without bias; max-pooling ties
//! (the gradient goes to the first maximum of each window, as in TensorFlow); batch
//! normalization with and without `center`/`scale` on every axis.

mod common;

use common::{check_gradients, one, relu, uniform};
use lcjit::graph::{
    Activation, BatchNorm, Conv, DataFormat, Dense, Graph, Initializer, Op, Padding, Pool,
    PoolKind, WeightOptions,
};

const CL: DataFormat = DataFormat::ChannelsLast;
const CF: DataFormat = DataFormat::ChannelsFirst;

/// A convolution with the same kernel size, stride and dilation on every axis.
#[allow(clippy::too_many_arguments)]
fn conv(
    rank: usize,
    filters: usize,
    (k, s, d): (usize, usize, usize),
    padding: Padding,
    df: DataFormat,
    groups: usize,
    activation: Activation,
    use_bias: bool,
) -> Conv {
    Conv {
        rank,
        filters,
        kernel: vec![k; rank],
        strides: vec![s; rank],
        dilation: vec![d; rank],
        padding,
        data_format: df,
        groups,
        activation,
        use_bias,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    }
}

fn pool(kind: PoolKind, k: &[usize], s: &[usize], padding: Padding, df: DataFormat) -> Op {
    Op::Pool(Pool {
        kind,
        rank: k.len(),
        pool: k.to_vec(),
        strides: s.to_vec(),
        padding,
        data_format: df,
    })
}

/// Per-sample shape: `n` on each of `rank` spatial axes and `c` channels.
fn spatial(rank: usize, n: usize, c: usize, df: DataFormat) -> Vec<usize> {
    let mut s = vec![n; rank];
    match df {
        DataFormat::ChannelsLast => s.push(c),
        DataFormat::ChannelsFirst => s.insert(0, c),
    }
    s
}

/// `input(shape) → ops[0] → ops[1] → …`, the last op as output.
fn chain(shape: &[usize], ops: Vec<Op>) -> Graph {
    let mut g = Graph::new("t");
    let mut x = g.add_input("x", shape.to_vec()).expect("input");
    for (i, op) in ops.into_iter().enumerate() {
        x = g.add(&format!("l{i}"), op, &[x]).expect("layer");
    }
    g.outputs.push(x);
    g
}

#[test]
fn conv_gradients() {
    // (filters, groups, channels): vector and scalar filter tiles (Fg = 4, 16 / 2, 5) and
    // channel tiles (Cg = 4, 8 / 1, 2, 3).
    let fgc = [
        (4, 1, 3),
        (8, 2, 8),
        (6, 3, 3),
        (16, 1, 4),
        (5, 1, 8),
        (8, 4, 8),
    ];
    let ksd = [(3, 1, 1), (2, 2, 1), (3, 1, 2), (3, 2, 1)];
    let mut case = 0;
    for rank in [1, 2] {
        for df in [CL, CF] {
            for padding in [Padding::Valid, Padding::Same, Padding::Causal] {
                if padding == Padding::Causal && rank == 2 {
                    continue;
                }
                for geo in ksd {
                    for (filters, groups, c) in fgc {
                        case += 1;
                        let (act, bias) = match case % 3 {
                            0 => (Activation::Linear, true),
                            1 => (Activation::Tanh, false),
                            _ => (relu(), true),
                        };
                        let cv = conv(rank, filters, geo, padding, df, groups, act, bias);
                        let n = if rank == 1 { 7 } else { 6 };
                        check_gradients(
                            one(&spatial(rank, n, c, df), Op::Conv(cv)),
                            &format!(
                                "conv{rank}d {df:?} {padding:?} k/s/d {geo:?} f{filters} g{groups} c{c}"
                            ),
                            &[1, 3],
                        );
                    }
                }
            }
        }
    }
    // Non-square kernel, unequal strides, and a softmax activation (split from the layer).
    for df in [CL, CF] {
        let mut cv = conv(2, 8, (3, 1, 1), Padding::Same, df, 1, relu(), true);
        cv.kernel = vec![3, 2];
        cv.strides = vec![2, 1];
        check_gradients(
            one(&spatial(2, 5, 4, df), Op::Conv(cv)),
            &format!("conv2d {df:?} kernel 3×2 strides 2×1"),
            &[1, 3],
        );
    }
    let mut cv = conv(
        1,
        4,
        (3, 1, 1),
        Padding::Same,
        CL,
        1,
        Activation::Linear,
        false,
    );
    cv.activation = Activation::Softmax { axis: -1 };
    check_gradients(one(&[6, 2], Op::Conv(cv)), "conv softmax", &[1, 3]);
}

#[test]
fn pooling_gradients() {
    for rank in [1, 2] {
        for df in [CL, CF] {
            for kind in [PoolKind::Max, PoolKind::Average] {
                for padding in [Padding::Valid, Padding::Same] {
                    for (k, s) in [(2, 2), (3, 1), (3, 2), (2, 1)] {
                        for c in [3, 4, 8] {
                            let op = pool(kind, &vec![k; rank], &vec![s; rank], padding, df);
                            check_gradients(
                                one(&spatial(rank, 5, c, df), op),
                                &format!("pool{rank}d {kind:?} {df:?} {padding:?} k{k} s{s} c{c}"),
                                &[1, 3],
                            );
                        }
                    }
                }
            }
        }
    }
    // Non-square windows with unequal strides (clipped `same` windows of several sizes).
    for kind in [PoolKind::Max, PoolKind::Average] {
        for df in [CL, CF] {
            let op = pool(kind, &[3, 2], &[2, 3], Padding::Same, df);
            check_gradients(
                one(&spatial(2, 7, 4, df), op),
                &format!("pool2d {kind:?} {df:?} 3×2 strides 2×3"),
                &[1, 3],
            );
        }
    }
}

#[test]
fn global_pooling_gradients() {
    for rank in [1, 2, 3] {
        for df in [CL, CF] {
            for kind in [PoolKind::Max, PoolKind::Average] {
                for (keepdims, c) in [(false, 3), (true, 8)] {
                    let op = Op::GlobalPool {
                        kind,
                        rank,
                        data_format: df,
                        keepdims,
                    };
                    check_gradients(
                        one(&spatial(rank, 3, c, df), op),
                        &format!("global{rank}d {kind:?} {df:?} keepdims {keepdims} c{c}"),
                        &[1, 3],
                    );
                }
            }
        }
    }
}

/// A convolution whose output is its bias at every position: kernel zero, bias `b`.
fn flat_conv(rank: usize, filters: usize, df: DataFormat, activation: Activation) -> Op {
    let mut cv = conv(
        rank,
        filters,
        (2, 1, 1),
        Padding::Same,
        df,
        1,
        activation,
        true,
    );
    cv.kernel_initializer = Initializer::Zeros;
    cv.bias_initializer = uniform(-0.5, 0.5);
    Op::Conv(cv)
}

#[test]
fn max_pooling_ties_go_to_the_first_maximum() {
    // Every window of the pool is a tie (a constant feature map per channel); where the
    // gradient lands is visible in the convolution's kernel gradient (Σ x · dz).
    for rank in [1, 2] {
        for df in [CL, CF] {
            for c in [4, 3] {
                for padding in [Padding::Valid, Padding::Same] {
                    let ops = vec![
                        flat_conv(rank, c, df, Activation::Linear),
                        pool(PoolKind::Max, &vec![3; rank], &vec![2; rank], padding, df),
                    ];
                    check_gradients(
                        chain(&spatial(rank, 6, 2, df), ops),
                        &format!("tied max pool{rank}d {df:?} c{c} {padding:?}"),
                        &[1, 3],
                    );
                }
                let ops = vec![
                    flat_conv(rank, c, df, Activation::Linear),
                    Op::GlobalPool {
                        kind: PoolKind::Max,
                        rank,
                        data_format: df,
                        keepdims: false,
                    },
                ];
                check_gradients(
                    chain(&spatial(rank, 5, 2, df), ops),
                    &format!("tied global max pool{rank}d {df:?} c{c}"),
                    &[1, 3],
                );
            }
        }
    }
    // ReLU zeros: ties at 0 in windows where every pre-activation is negative.
    for df in [CL, CF] {
        let mut cv = conv(2, 4, (3, 1, 1), Padding::Same, df, 1, relu(), true);
        cv.bias_initializer = Initializer::Constant(-0.3);
        let ops = vec![
            Op::Conv(cv),
            pool(PoolKind::Max, &[2, 2], &[2, 2], Padding::Valid, df),
        ];
        check_gradients(
            chain(&spatial(2, 6, 3, df), ops),
            &format!("relu zeros into max pool {df:?}"),
            &[1, 3],
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
fn batch_norm_gradients() {
    for shape in [
        vec![8],
        vec![3],
        vec![3, 4],
        vec![4, 3],
        vec![2, 3, 5],
        vec![3, 2, 8],
    ] {
        for axis in 0..shape.len() {
            for (center, scale) in [(true, true), (false, true), (true, false), (false, false)] {
                check_gradients(
                    one(&shape, bn(axis, center, scale)),
                    &format!("bn {shape:?} axis {axis} center {center} scale {scale}"),
                    &[1, 3],
                );
            }
        }
    }
}

#[test]
fn small_convnet_gradients() {
    // Conv → BatchNorm → MaxPool → Conv → AveragePool → GlobalAverage → Dense, per format.
    for df in [CL, CF] {
        let ch_axis = if df == CL { 2 } else { 0 };
        let ops = vec![
            Op::Conv(conv(2, 8, (3, 1, 1), Padding::Same, df, 1, relu(), true)),
            bn(ch_axis, true, true),
            pool(PoolKind::Max, &[2, 2], &[2, 2], Padding::Valid, df),
            Op::Conv(conv(
                2,
                4,
                (2, 1, 1),
                Padding::Valid,
                df,
                2,
                Activation::Tanh,
                true,
            )),
            pool(PoolKind::Average, &[2, 2], &[1, 1], Padding::Same, df),
            Op::GlobalPool {
                kind: PoolKind::Average,
                rank: 2,
                data_format: df,
                keepdims: false,
            },
            Op::Dense(Dense {
                units: 3,
                activation: Activation::Linear,
                use_bias: true,
                kernel_initializer: uniform(-0.5, 0.5),
                bias_initializer: uniform(-0.5, 0.5),
                options: WeightOptions::default(),
            }),
        ];
        check_gradients(
            chain(&spatial(2, 8, 2, df), ops),
            &format!("convnet {df:?}"),
            &[1, 3],
        );
    }
}

/// One number of `tests/data/nan/keras_pool_grad.json` ("nan", "inf", "-inf" or a number).
fn special(v: &serde_json::Value) -> f32 {
    match v.as_str() {
        Some("nan") => f32::NAN,
        Some("inf") => f32::INFINITY,
        Some("-inf") => f32::NEG_INFINITY,
        _ => v.as_f64().expect("number") as f32,
    }
}

/// The pooling layer of one case of `keras_pool_grad.json`.
fn keras_pool(desc: &serde_json::Value, rank: usize) -> Op {
    let df = match desc["data_format"].as_str() {
        Some("channels_first") => CF,
        _ => CL,
    };
    let dims = |k: &str| -> Vec<usize> {
        desc[k]
            .as_array()
            .expect("dims")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect()
    };
    match desc["kind"].as_str().expect("kind") {
        "global_max" => Op::GlobalPool {
            kind: PoolKind::Max,
            rank,
            data_format: df,
            keepdims: false,
        },
        _ => {
            let padding = match desc["padding"].as_str() {
                Some("same") => Padding::Same,
                _ => Padding::Valid,
            };
            pool(PoolKind::Max, &dims("pool"), &dims("strides"), padding, df)
        }
    }
}

/// Max pooling (`MaxPoolGrad`) and global max pooling (`tf.reduce_max`'s gradient) on
/// NaN, ±∞ and ties, against TensorFlow's figures (`tests/data/nan/make_pool_grad.py`):
/// every engine gives Keras's output and input gradient bit for bit (NaN where Keras has
/// NaN), on 1 and 2 threads.
#[test]
fn max_pooling_nan_infinite_and_tied_windows_match_keras() {
    use lcjit::{CompileOptions, CompiledModel, Engine, Model};
    use ndarray::{ArrayD, IxDyn};
    use std::sync::Arc;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nan/keras_pool_grad.json"
    ))
    .expect("golden file");
    let golden: serde_json::Value = serde_json::from_str(&text).expect("json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 10, "golden file has {} cases", cases.len());
    let nums = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array().expect("data").iter().map(special).collect()
    };
    let same = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let ok = (g.is_nan() && w.is_nan()) || g == w;
            assert!(ok, "{what}: element {i}: got {g}, Keras {w}");
        }
    };
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let shape: Vec<usize> = case["input"]["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|d| d.as_u64().expect("dim") as usize)
            .collect();
        let op = keras_pool(&case["layer"], shape.len() - 1);
        let model = Arc::new(Model::from_graph(one(&shape, op), 7).expect("model"));
        let mut xs = vec![1];
        xs.extend_from_slice(&shape);
        let x = ArrayD::from_shape_vec(IxDyn(&xs), nums(&case["input"]["data"])).expect("x");
        let out = &model.graph().nodes[model.graph().outputs[0]].shape;
        let mut ys = vec![1];
        ys.extend_from_slice(out);
        let n: usize = ys.iter().product();
        let dy =
            ArrayD::from_shape_vec(IxDyn(&ys), (1..=n).map(|v| v as f32).collect()).expect("dy");
        let (want_y, want_dx) = (nums(&case["output"]["data"]), nums(&case["dx"]));
        let inputs = [x];
        let y = model.predict(&inputs[0]).expect("reference predict");
        same(
            &y.iter().copied().collect::<Vec<_>>(),
            &want_y,
            &format!("{name}: reference output"),
        );
        let (dx, _) =
            lcjit::reference::backward::gradients(model.graph(), model.params(), &inputs, &dy)
                .expect("reference");
        same(
            &dx[0].iter().copied().collect::<Vec<_>>(),
            &want_dx,
            &format!("{name}: reference dx"),
        );
        for (engine, threads) in [(Engine::Interp, 1), (Engine::Jit, 1), (Engine::Jit, 2)] {
            let what = format!("{name} ({}, {threads} threads)", engine.name());
            let opts = CompileOptions {
                engine,
                threads,
                max_batch: 1,
                ..Default::default()
            };
            let compiled = CompiledModel::new(model.clone(), opts).expect("compile");
            let y = compiled.predict(&inputs[0]).expect("predict");
            same(
                &y.iter().copied().collect::<Vec<_>>(),
                &want_y,
                &format!("{what}: output"),
            );
            let (dx, _) = compiled.gradients(&inputs, &dy).expect("gradients");
            same(
                &dx[0].iter().copied().collect::<Vec<_>>(),
                &want_dx,
                &format!("{what}: dx"),
            );
        }
    }
}
