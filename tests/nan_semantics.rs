//! NaN and ±∞ through every activation, pooling and merge, on every engine, against
//! Keras.
//!
//! `tests/data/nan/keras_special.json` holds tf-keras outputs on inputs made of NaN, ±∞,
//! ±0 and a few finite values (written by `make_golden.py` next to it, TensorFlow's Eigen
//! kernels). Each case becomes a one-layer graph run by the reference path, the loop-IR
//! interpreter and the JIT, at a vector-friendly and a scalar length where it matters.
//! Every engine must give NaN exactly where Keras does, the same infinities, and finite
//! values within `1e-4 · max(1, |keras|)` (the golden tolerance); the JIT and the
//! interpreter must agree bit for bit (NaN payloads and the sign of zero aside, which the
//! loop IR leaves unspecified against Keras but fixes across engines).

use lcjit::graph::{Activation, DataFormat, Graph, MergeKind, Op, Padding, Pool, PoolKind};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use serde_json::Value;
use std::sync::Arc;

fn num(v: &Value) -> f32 {
    match v {
        Value::String(s) if s == "nan" => f32::NAN,
        Value::String(s) if s == "inf" => f32::INFINITY,
        Value::String(s) if s == "-inf" => f32::NEG_INFINITY,
        other => other.as_f64().expect("number") as f32,
    }
}

fn tensor(v: &Value) -> (Vec<usize>, Vec<f32>) {
    let shape = v["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(num)
        .collect();
    (shape, data)
}

fn activation(name: &str) -> Activation {
    let relu = |alpha, max_value, threshold| Activation::Relu {
        alpha,
        max_value,
        threshold,
    };
    match name {
        "linear" => Activation::Linear,
        "relu" => relu(0.0, None, 0.0),
        "relu6" => Activation::Relu6,
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "elu" => Activation::Elu { alpha: 1.0 },
        "selu" => Activation::Selu,
        "softplus" => Activation::Softplus,
        "softsign" => Activation::Softsign,
        "hard_sigmoid" => Activation::HardSigmoid,
        "exponential" => Activation::Exponential,
        "swish" => Activation::Swish,
        "gelu" => Activation::Gelu { approximate: false },
        "gelu_approximate" => Activation::Gelu { approximate: true },
        "mish" => Activation::Mish,
        "softmax" => Activation::Softmax { axis: -1 },
        "log_softmax" => Activation::LogSoftmax,
        other => panic!("unknown activation {other}"),
    }
}

/// The lcjit layer of a case's `op` description.
fn op_of(desc: &Value) -> Op {
    let f = |k: &str| desc[k].as_f64().map(|v| v as f32);
    if let Some(a) = desc["activation"].as_str() {
        return Op::Activation(activation(a));
    }
    if desc.get("relu").is_some() {
        let r = &desc["relu"];
        let g = |k: &str| r[k].as_f64().map(|v| v as f32);
        return Op::Activation(Activation::Relu {
            alpha: g("negative_slope").unwrap_or(0.0),
            max_value: g("max_value"),
            threshold: g("threshold").unwrap_or(0.0),
        });
    }
    if let Some(alpha) = f("leaky_relu") {
        return Op::Activation(Activation::LeakyRelu { alpha });
    }
    if let Some(alpha) = f("elu") {
        return Op::Activation(Activation::Elu { alpha });
    }
    let kind = |s: &str| match s {
        "max" => PoolKind::Max,
        "average" => PoolKind::Average,
        other => panic!("unknown pooling {other}"),
    };
    if let Some(k) = desc["pool"].as_str() {
        let rank = desc["rank"].as_u64().unwrap_or(1) as usize;
        let size = desc["size"].as_u64().expect("size") as usize;
        return Op::Pool(Pool {
            kind: kind(k),
            rank,
            pool: vec![size; rank],
            strides: vec![size; rank],
            padding: match desc["padding"].as_str() {
                Some("same") => Padding::Same,
                _ => Padding::Valid,
            },
            data_format: DataFormat::ChannelsLast,
        });
    }
    if let Some(k) = desc["global_pool"].as_str() {
        return Op::GlobalPool {
            kind: kind(k),
            rank: 1,
            data_format: DataFormat::ChannelsLast,
            keepdims: false,
        };
    }
    match desc["merge"].as_str() {
        Some("Maximum") => Op::Merge(MergeKind::Maximum),
        Some("Minimum") => Op::Merge(MergeKind::Minimum),
        Some("Add") => Op::Merge(MergeKind::Add),
        Some("Subtract") => Op::Merge(MergeKind::Subtract),
        Some("Multiply") => Op::Merge(MergeKind::Multiply),
        Some("Average") => Op::Merge(MergeKind::Average),
        _ => panic!("unknown case {desc}"),
    }
}

/// Whether `got` is Keras's `want`: NaN where it is NaN, the same infinities, finite
/// values within the golden tolerance (the sign of zero is not compared).
fn matches_keras(got: f32, want: f32) -> bool {
    if want.is_nan() || got.is_nan() {
        return want.is_nan() && got.is_nan();
    }
    if want.is_infinite() || got.is_infinite() {
        return got == want;
    }
    (got - want).abs() <= 1e-4 * want.abs().max(1.0)
}

fn same_bits(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a == b
}

#[test]
fn special_values_match_keras_on_every_engine() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/nan/keras_special.json"
    ))
    .expect("golden file");
    let golden: Value = serde_json::from_str(&text).expect("golden json");
    let cases = golden["cases"].as_array().expect("cases");
    assert!(cases.len() >= 80, "only {} cases", cases.len());
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let mut g = Graph::new("t");
        let mut ids = Vec::new();
        let mut inputs = Vec::new();
        for (i, t) in case["inputs"]
            .as_array()
            .expect("inputs")
            .iter()
            .enumerate()
        {
            let (shape, data) = tensor(t);
            ids.push(g.add_input(&format!("x{i}"), shape.clone()).expect("input"));
            let mut batched = vec![1];
            batched.extend(shape);
            inputs.push(ArrayD::from_shape_vec(IxDyn(&batched), data).expect("shape"));
        }
        let y = g.add("y", op_of(&case["op"]), &ids).expect("layer");
        g.outputs.push(y);
        let (want_shape, want) = tensor(&case["output"]);
        let model = Arc::new(Model::from_graph(g, 1).expect("model"));
        let mut by_engine: Vec<(Engine, Vec<f32>)> = Vec::new();
        for engine in [Engine::Reference, Engine::Interp, Engine::Jit] {
            let compiled = CompiledModel::new(
                model.clone(),
                CompileOptions {
                    engine,
                    threads: 1,
                    max_batch: 1,
                    ..Default::default()
                },
            )
            .expect("compile");
            let out = compiled.predict_many(&inputs).expect("predict");
            assert_eq!(&out[0].shape()[1..], want_shape.as_slice(), "{name}");
            let got: Vec<f32> = out[0].iter().copied().collect();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                if !matches_keras(g, w) {
                    failures.push(format!(
                        "{name} [{i}] on {}: {g:e}, Keras {w:e}",
                        engine.name()
                    ));
                }
            }
            by_engine.push((engine, got));
        }
        let (interp, jit) = (&by_engine[1].1, &by_engine[2].1);
        for (i, (a, b)) in interp.iter().zip(jit).enumerate() {
            if !same_bits(*a, *b) {
                failures.push(format!("{name} [{i}]: interp {a:e} vs jit {b:e}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The exponential itself at the ends of the f32 range, on the interpreter's definition
/// (the JIT's is checked bit for bit above).
#[test]
fn exp_is_exact_at_the_ends() {
    use lcjit::loop_ir::math::exp;
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp(89.0), f32::INFINITY);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(-110.0), 0.0);
    assert!(exp(f32::NAN).is_nan());
    // Gradual underflow: e^-100 ≈ 3.72e-44 is a subnormal, one subnormal step (1.4e-45)
    // from the exact value at most.
    let e = exp(-100.0);
    assert!(
        e > 0.0 && (f64::from(e) - (-100f64).exp()).abs() <= 1.5e-45,
        "{e:e}"
    );
    // The largest finite results stay finite.
    assert!(exp(88.72).is_finite() && exp(88.72) > 3.3e38);
}
