//! `evaluate` against tf-keras 2.21: `model.evaluate(x, y, batch_size=B, return_dict=True)`
//! of the golden models in `tests/data/evaluate/` (made by `make.py` there), from the
//! library on every engine and from `lcjit evaluate --json`, within
//! `1e-4 · max(1, |ref|)`, with Keras's keys in Keras's order; and the rejection of bad
//! input (unknown metric, mismatched sample counts, missing loss, bad shapes).
//!
//! What the cases exercise: an LC1D regression with L2/L1 kernel and bias regularizers
//! (the weight penalty in every batch's loss) and every regression metric spelling; an
//! LC2D implementation-2 softmax classifier whose confident predictions make the loss from
//! logits differ from the clipped probabilities (12.94 against 7.74), so Keras's
//! `_get_logits` rule is checked; a sigmoid classifier with flat `(n,)` targets and five
//! AUC variants; sparse labels with top-k; activity regularizers on an inner and on the
//! output layer. Every sample count is not a multiple of the batch size.

use lcjit::train::config::parse_loss_value;
use lcjit::train::{
    evaluate, evaluate_batches, evaluate_compiled, parse_metrics, EvaluateOptions, Logs, Metric,
};
use lcjit::{io, CompileOptions, CompiledModel, Engine, Error, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const CASES: [&str; 5] = [
    "lc1d_regression",
    "lc2d_softmax",
    "binary_sigmoid",
    "sparse_softmax",
    "activity",
];

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/evaluate")
        .join(name)
}

/// Keras's logs of a case, in order, and its batch size.
fn expected(name: &str) -> (Vec<(String, f64)>, usize) {
    let text = std::fs::read_to_string(case_dir(name).join("expected.json")).expect("expected");
    let v: Value = serde_json::from_str(&text).expect("json");
    let b = v["batch_size"].as_u64().expect("batch_size") as usize;
    // serde_json's map sorts keys: take Keras's order from the text itself.
    let logs = v["logs"].as_object().expect("logs");
    let mut keys: Vec<(usize, String)> = logs
        .keys()
        .map(|k| {
            (
                text.find(&format!("\"{k}\":")).expect("key in text"),
                k.clone(),
            )
        })
        .collect();
    keys.sort();
    let ordered = keys
        .into_iter()
        .map(|(_, k)| {
            let x = logs[&k].as_f64().expect("number");
            (k, x)
        })
        .collect();
    (ordered, b)
}

fn check(case: &str, what: &str, got: &[(String, f64)], want: &[(String, f64)]) {
    let names = |l: &[(String, f64)]| l.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(got),
        names(want),
        "{case} {what}: keys or their order"
    );
    for ((n, g), (_, w)) in got.iter().zip(want) {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(
            err <= 1e-4,
            "{case} {what}: {n} = {g}, Keras {w} (scaled error {err:.2e})"
        );
    }
}

struct Case {
    model: Model,
    loss: lcjit::train::Loss,
    metrics: Vec<Metric>,
    x: ndarray::ArrayD<f32>,
    y: ndarray::ArrayD<f32>,
}

fn load(name: &str) -> Case {
    let d = case_dir(name);
    let model = Model::load(d.join("model.h5")).expect("model");
    let tc = model.training_config().expect("training_config").clone();
    Case {
        loss: parse_loss_value(&tc["loss"], name).expect("loss"),
        metrics: parse_metrics(&tc, name).expect("metrics"),
        model,
        x: io::read_npy(&d.join("x.npy")).expect("x"),
        y: io::read_npy(&d.join("y.npy")).expect("y"),
    }
}

#[test]
fn library_matches_keras_on_every_engine() {
    for case in CASES {
        let (want, b) = expected(case);
        let c = load(case);
        assert_ne!(
            c.x.shape()[0] % b,
            0,
            "{case}: the last batch must be partial"
        );
        for engine in [Engine::Reference, Engine::Jit, Engine::Interp] {
            let opts = EvaluateOptions {
                batch_size: b,
                engine,
                threads: 2,
            };
            let logs = evaluate(&c.model, &c.loss, &c.metrics, &c.x, &c.y, &opts).expect(case);
            check(case, engine.name(), &logs.0, &want);
        }
    }
}

#[test]
fn compiled_model_path_matches_keras() {
    for case in CASES {
        let (want, b) = expected(case);
        let c = load(case);
        // A CompiledModel for another batch size: evaluate batches by `b` all the same.
        let compiled = CompiledModel::new(
            Arc::new(c.model.clone()),
            CompileOptions {
                engine: Engine::Jit,
                threads: 1,
                max_batch: 3,
                ..Default::default()
            },
        )
        .expect("compile");
        let logs = evaluate_compiled(&compiled, &c.loss, &c.metrics, &c.x, &c.y, b).expect(case);
        check(case, "compiled", &logs.0, &want);
    }
}

/// The generic core with a plain predict function: the regression case has no logits and
/// no activity regularizer, so predictions plus the weight penalty give Keras's figures.
#[test]
fn generic_core_with_a_predict_closure() {
    let (want, b) = expected("lc1d_regression");
    let c = load("lc1d_regression");
    let params = c.model.params();
    let reg = lcjit::train::ParamTable::from_graph(c.model.graph())
        .regularize(params, None)
        .expect("regularize");
    assert!(reg > 0.01, "the case has a weight penalty ({reg})");
    let mut calls = Vec::new();
    let mut predict = |x: &ndarray::ArrayD<f32>| {
        calls.push(x.shape()[0]);
        c.model.predict(x)
    };
    let logs =
        evaluate_batches(&mut predict, &c.loss, &c.metrics, &c.x, &c.y, b, reg).expect("evaluate");
    check("lc1d_regression", "core", &logs.0, &want);
    assert_eq!(calls, vec![8, 8, 8, 8, 5], "batches of 8 then the rest");
}

fn lcjit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
}

fn path(p: PathBuf) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs `lcjit evaluate … --json` and returns the logs in printed order.
fn cli_json(args: &[String]) -> Vec<(String, f64)> {
    let out = lcjit().args(args).output().expect("spawn lcjit");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON: {stdout}");
    let v: Value = serde_json::from_str(lines[0]).expect("valid JSON");
    let obj = v.as_object().expect("an object");
    let mut keys: Vec<(usize, &String)> = obj
        .keys()
        .map(|k| (lines[0].find(&format!("\"{k}\":")).expect("key"), k))
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|(_, k)| (k.clone(), obj[k].as_f64().expect("number")))
        .collect()
}

fn base_args(case: &str, b: usize) -> Vec<String> {
    let d = case_dir(case);
    vec![
        "evaluate".into(),
        path(d.join("model.h5")),
        "--x".into(),
        path(d.join("x.npy")),
        "--y".into(),
        path(d.join("y.npy")),
        "--batch-size".into(),
        b.to_string(),
    ]
}

#[test]
fn cli_json_matches_keras() {
    for case in CASES {
        let (want, b) = expected(case);
        let mut args = base_args(case, b);
        args.push("--json".into());
        check(case, "cli", &cli_json(&args), &want);
        args.extend(["--engine".into(), "interp".into()]);
        check(case, "cli interp", &cli_json(&args), &want);
    }
}

/// `--loss` and `--metrics` override the file; a model file without training_config
/// (architecture JSON plus the .h5 weights) works with `--loss`.
#[test]
fn cli_loss_and_metrics_options() {
    let (want, b) = expected("lc1d_regression");
    let d = case_dir("lc1d_regression");
    let args: Vec<String> = vec![
        "evaluate".into(),
        path(d.join("model.json")),
        "--weights".into(),
        path(d.join("model.h5")),
        "--x".into(),
        path(d.join("x.npy")),
        "--y".into(),
        path(d.join("y.npy")),
        "--batch-size".into(),
        b.to_string(),
        "--loss".into(),
        "mse".into(),
        "--metrics".into(),
        "mae,mse,logcosh".into(),
        "--json".into(),
    ];
    let pick = |names: &[&str]| {
        names
            .iter()
            .map(|n| want.iter().find(|(k, _)| k == n).expect("key").clone())
            .collect::<Vec<_>>()
    };
    check(
        "lc1d_regression",
        "--metrics",
        &cli_json(&args),
        &pick(&["loss", "mae", "mse", "logcosh"]),
    );
    // Without --json: Keras's progress-bar form, 4 decimals.
    let plain: Vec<String> = args[..args.len() - 1].to_vec();
    let out = lcjit().args(&plain).output().expect("spawn");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let expect = Logs(pick(&["loss", "mae", "mse", "logcosh"])).keras_line();
    assert_eq!(text, expect);
    assert!(
        text.starts_with("loss: 1.5699 - mae: 1.0082 - mse: 1.4642 - logcosh: 0.5274"),
        "{text}"
    );
}

/// Exit 2 and exactly one `error:` line containing every needle.
fn rejects(args: &[String], needles: &[&str]) {
    let out = lcjit().args(args).output().expect("spawn lcjit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(
            lines[0].contains(n),
            "'{}' does not mention '{n}'",
            lines[0]
        );
    }
}

#[test]
fn cli_rejects_bad_input() {
    let mut unknown = base_args("activity", 5);
    unknown.extend(["--metrics".into(), "mae,f1_scorez".into()]);
    rejects(
        &unknown,
        &[
            "unknown metric 'f1_scorez'",
            "known:",
            "sparse_top_k_categorical_accuracy",
            "AUC",
        ],
    );
    let mut twice = base_args("activity", 5);
    twice.extend(["--metrics".into(), "mae,mae".into()]);
    rejects(&twice, &["'mae' is given twice"]);
    let mut counts = base_args("activity", 5);
    counts[5] = path(case_dir("lc1d_regression").join("y.npy"));
    rejects(&counts, &["19 samples", "37"]);
    let d = case_dir("lc1d_regression");
    let no_loss: Vec<String> = vec![
        "evaluate".into(),
        path(d.join("model.json")),
        "--weights".into(),
        path(d.join("model.h5")),
        "--x".into(),
        path(d.join("x.npy")),
        "--y".into(),
        path(d.join("y.npy")),
    ];
    rejects(&no_loss, &["model.json", "--loss"]);
    let mut bad_loss = base_args("activity", 5);
    bad_loss.extend(["--loss".into(), "mean_cubed_error".into()]);
    rejects(&bad_loss, &["unknown loss 'mean_cubed_error'"]);
    let mut zero = base_args("activity", 0);
    zero.push("--json".into());
    rejects(&zero, &["--batch-size"]);
    // Targets that fit neither the output nor its rows.
    let mut shapes = base_args("activity", 5);
    shapes[5] = path(case_dir("lc2d_softmax").join("y.npy"));
    shapes[3] = path(case_dir("lc2d_softmax").join("x.npy"));
    shapes[1] = path(case_dir("binary_sigmoid").join("model.h5"));
    rejects(&shapes, &["input"]);
}

#[test]
fn library_rejects_bad_input() {
    let c = load("activity");
    let opts = EvaluateOptions {
        batch_size: 5,
        engine: Engine::Reference,
        threads: 1,
    };
    let short = c.y.slice_axis(ndarray::Axis(0), (0..10).into()).to_owned();
    let e = evaluate(&c.model, &c.loss, &c.metrics, &c.x, &short, &opts).expect_err("counts");
    assert!(matches!(e, Error::Usage { .. }), "{e}");
    assert!(e.to_string().contains("19 samples and y has 10"), "{e}");
    let zero = EvaluateOptions {
        batch_size: 0,
        ..opts.clone()
    };
    assert!(evaluate(&c.model, &c.loss, &c.metrics, &c.x, &c.y, &zero).is_err());
    let dup = vec![
        Metric::parse_arg("mae").expect("mae"),
        Metric::parse_arg("mae").expect("mae"),
    ];
    let e = evaluate(&c.model, &c.loss, &dup, &c.x, &c.y, &opts).expect_err("duplicate");
    assert!(
        e.to_string().contains("two metrics with the name 'mae'"),
        "{e}"
    );
    // (19, 3) output against (19, 2) targets: an input error naming the metric.
    let wrong = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[19, 2]));
    let e = evaluate(
        &c.model,
        &lcjit::train::Loss::MeanSquaredError,
        &[],
        &c.x,
        &wrong,
        &opts,
    )
    .expect_err("shapes");
    assert!(matches!(e, Error::Input { .. }), "{e}");
    let e = Metric::parse_arg("precision_at_7").expect_err("unknown");
    assert!(e.to_string().contains("known: accuracy, acc"), "{e}");
}
