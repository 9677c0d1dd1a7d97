//! Callbacks against tf-keras 2.21 (`tests/data/callbacks/make.py`): EarlyStopping (with
//! restored best weights, min_delta + start_from_epoch, baseline) and ReduceLROnPlateau
//! (history with `lr`) on an LC1D model with explicit validation data, through the
//! library (`fit_compiled` on the reference and JIT engines) and through `lcjit fit`'s
//! flags (history JSON, saved weights). History within `1e-4·max(1, max|ref|)`, weights
//! within `1e-3`, and the same epochs run.

use lcjit::train::{
    fit_compiled, parse_training_config, Callback, EarlyStopping, EarlyStoppingConfig, FitOptions,
    History, Optimizer, ReduceLROnPlateau, ReduceLROnPlateauConfig,
};
use lcjit::{io, CompileOptions, Engine, Model};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/callbacks")
}

fn result(case: &str) -> Value {
    let text = std::fs::read_to_string(root().join(case).join("result.json")).expect("result");
    serde_json::from_str(&text).expect("json")
}

fn want_history(case: &str) -> History {
    let p = root().join(case).join("history.json");
    History::from_json(
        &std::fs::read_to_string(&p).expect("history"),
        "history.json",
    )
    .expect("parse")
}

/// The callback of a case, from its recorded arguments.
fn callback(case: &str) -> Box<dyn Callback> {
    let r = result(case);
    let a = &r["args"];
    let f = |k: &str| a.get(k).and_then(Value::as_f64);
    let n = |k: &str| a.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    let monitor = a["monitor"].as_str().expect("monitor").to_string();
    if r["callback"] == "EarlyStopping" {
        Box::new(EarlyStopping::new(EarlyStoppingConfig {
            monitor,
            patience: n("patience"),
            min_delta: f("min_delta").unwrap_or(0.0),
            baseline: f("baseline"),
            restore_best_weights: a["restore_best_weights"].as_bool().unwrap_or(false),
            start_from_epoch: n("start_from_epoch"),
            ..Default::default()
        }))
    } else {
        Box::new(
            ReduceLROnPlateau::new(ReduceLROnPlateauConfig {
                monitor,
                factor: f("factor").expect("factor"),
                patience: n("patience"),
                min_delta: f("min_delta").unwrap_or(1e-4),
                cooldown: n("cooldown"),
                min_lr: f("min_lr").unwrap_or(0.0),
                ..Default::default()
            })
            .expect("config"),
        )
    }
}

/// The `lcjit fit` flag of a case, from its recorded arguments.
fn flag(case: &str) -> (String, String) {
    let r = result(case);
    let args = r["args"].as_object().expect("args");
    let spec: Vec<String> = args
        .iter()
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    let name = if r["callback"] == "EarlyStopping" {
        "--early-stopping"
    } else {
        "--reduce-lr-on-plateau"
    };
    (name.to_string(), spec.join(","))
}

fn npy(name: &str) -> ndarray::ArrayD<f32> {
    io::read_npy(&root().join(name)).expect("npy")
}

fn compare_history(case: &str, got: &History, what: &str) {
    let want = want_history(case);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{case} {what}: keys"
    );
    for (k, w) in want.iter() {
        let g = got.get(k).expect("key");
        assert_eq!(
            g.len(),
            w.len(),
            "{case} {what}: epochs of {k}: {g:?} vs {w:?}"
        );
        let scale = w.iter().fold(1f64, |m, v| m.max(v.abs()));
        for (a, b) in g.iter().zip(w) {
            assert!(
                (a - b).abs() <= 1e-4 * scale,
                "{case} {what}: {k} {g:?} vs {w:?}"
            );
        }
    }
}

fn compare_weights(case: &str, got: &[(String, ndarray::ArrayD<f32>)], what: &str) {
    let want = io::read_npz(&root().join(case).join("after.npz")).expect("after");
    assert_eq!(got.len(), want.len(), "{case} {what}");
    for (k, w) in &want {
        let g = &got
            .iter()
            .find(|(n, _)| n == k)
            .unwrap_or_else(|| panic!("{k}"))
            .1;
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(w.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-3 * scale, "{case} {what}: {k} off by {err}");
    }
}

const CASES: [&str; 5] = [
    "early_stopping",
    "early_stopping_delta",
    "early_stopping_baseline",
    "reduce_lr_p0",
    "reduce_lr_p1",
];

#[test]
fn library_matches_tf_keras() {
    let (xs, ys, vx, vy) = (npy("xs.npy"), npy("ys.npy"), npy("vx.npy"), npy("vy.npy"));
    for case in CASES {
        let r = result(case);
        for engine in [Engine::Reference, Engine::Jit] {
            let mut m =
                Model::load(root().join(r["model"].as_str().expect("model"))).expect("load");
            let setup = parse_training_config(m.training_config().expect("tc"), case).expect("tc");
            let mut opt = Optimizer::new(setup.optimizer.clone());
            let opts = FitOptions {
                epochs: r["epochs"].as_u64().expect("epochs") as usize,
                batch_size: 8,
                metrics: setup.metrics.clone(),
                ..Default::default()
            };
            let compile = CompileOptions {
                engine,
                threads: 1,
                max_batch: 8,
                ..Default::default()
            };
            let mut cb = callback(case);
            let h = fit_compiled(
                &mut m,
                &mut opt,
                &setup.loss,
                &xs,
                &ys,
                Some((&vx, &vy)),
                &opts,
                &compile,
                &mut [cb.as_mut()],
            )
            .expect("fit");
            compare_history(case, &h, engine.name());
            let stops = r.get("stopped_epoch").and_then(Value::as_u64).unwrap_or(0) > 0;
            assert_eq!(h.stopped.is_some(), stops, "{case}: {:?}", h.stopped);
            let kw = m.keras_weights().expect("weights");
            let flat: Vec<(String, ndarray::ArrayD<f32>)> = kw
                .layers
                .into_iter()
                .flat_map(|l| {
                    let layer = l.layer;
                    l.weights
                        .into_iter()
                        .map(move |(w, a)| (format!("{layer}/{w}"), a))
                })
                .collect();
            compare_weights(case, &flat, engine.name());
        }
    }
}

#[test]
fn command_line_matches_tf_keras() {
    let dir = std::env::temp_dir().join(format!("lcjit-callbacks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    for case in CASES {
        let r = result(case);
        let (name, spec) = flag(case);
        let hist = dir.join(format!("{case}.json"));
        let weights = dir.join(format!("{case}.npz"));
        let plot = dir.join(format!("{case}.svg"));
        let d = root();
        let out = Command::new(env!("CARGO_BIN_EXE_lcjit"))
            .arg("fit")
            .arg(d.join(r["model"].as_str().expect("model")))
            .args(["--x".as_ref(), d.join("xs.npy").as_os_str()])
            .args(["--y".as_ref(), d.join("ys.npy").as_os_str()])
            .args(["--validation-x".as_ref(), d.join("vx.npy").as_os_str()])
            .args(["--validation-y".as_ref(), d.join("vy.npy").as_os_str()])
            .args([
                "--epochs",
                &r["epochs"].to_string(),
                "--batch-size",
                "8",
                "--no-shuffle",
            ])
            .args(["--metrics", "mae", &name, &spec])
            .args(["--history".as_ref(), hist.as_os_str()])
            .args(["--save-weights".as_ref(), weights.as_os_str()])
            .args(["--plot".as_ref(), plot.as_os_str()])
            .arg("--quiet")
            .output()
            .expect("run lcjit");
        assert!(
            out.status.success(),
            "{case}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = std::fs::read_to_string(&hist).expect("history");
        compare_history(
            case,
            &History::from_json(&text, "h.json").expect("json"),
            "cli",
        );
        compare_weights(case, &io::read_npz(&weights).expect("weights"), "cli");
        assert!(std::fs::read_to_string(&plot)
            .expect("svg")
            .contains("val_loss"));
    }
}

/// Bad callback flags: exit 2 and one `error:` line naming the flag and key; a monitor
/// that is never logged is only a warning naming the keys that exist.
#[test]
fn command_line_errors_and_warnings() {
    let d = root();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_lcjit"))
            .arg("fit")
            .arg(d.join("compiled.h5"))
            .args(["--x".as_ref(), d.join("xs.npy").as_os_str()])
            .args(["--y".as_ref(), d.join("ys.npy").as_os_str()])
            .args(["--epochs", "2", "--quiet"])
            .args(extra)
            .output()
            .expect("run lcjit")
    };
    for (extra, needle) in [
        (
            &["--early-stopping", "patience=1,foo=2"][..],
            "unknown key 'foo'",
        ),
        (&["--early-stopping", "patience=x"][..], "patience='x'"),
        (&["--reduce-lr-on-plateau", "factor=2"][..], "factor"),
        (&["--checkpoint", "w.{epoch}.bin"][..], "checkpoint"),
        (&["--metrics", "mae,nope"][..], "unknown metric 'nope'"),
    ] {
        let out = run(extra);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{err}"
        );
    }
    let out = run(&["--early-stopping", "monitor=val_loss"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:") && err.contains("`val_loss`") && err.contains("loss,mae"),
        "{err}"
    );
}
