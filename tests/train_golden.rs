//! Golden training cases (tf-keras `fit(xs, ys, batch_size=4, epochs=2, shuffle=False)`
//! from `compiled.h5`): the reference-path trainer reproduces Keras's loss history and
//! final weights within `1e-3 · max(1, max|ref|)`. Models the trainer does not support yet
//! (training-mode BatchNormalization, Dropout with rate > 0) must be refused with a clear
//! error, and are listed.

use lcjit::train::{fit_model, parse_training_config, FitOptions, Optimizer};
use lcjit::{io, Model};
use std::path::Path;

fn rel(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.max(1.0)
}

#[test]
fn golden_training_cases_match_keras() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("compiled.h5").exists())
        .collect();
    cases.sort();
    let (mut passed, mut refused, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for case in &cases {
        let name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let mut model = Model::load(case.join("compiled.h5")).expect("compiled.h5");
        let Some(tc) = model.training_config().cloned() else {
            failures.push(format!("{name}: no training_config"));
            continue;
        };
        let setup = parse_training_config(&tc, &name).expect("training_config");
        let xs = io::read_npy(&case.join("xs.npy")).expect("xs");
        let ys = io::read_npy(&case.join("ys.npy")).expect("ys");
        let opts = FitOptions {
            epochs: 2,
            batch_size: 4,
            shuffle: None,
            validation_split: 0.0,
            metrics: Vec::new(),
            verbose: false,
        };
        let mut opt = Optimizer::new(setup.optimizer.clone());
        let history = match fit_model(&mut model, &mut opt, &setup.loss, &xs, &ys, &opts) {
            Ok(h) => h,
            Err(lcjit::Error::Usage { detail }) if detail.contains("not supported yet") => {
                refused.push(format!("{name}: {detail}"));
                continue;
            }
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let want_h = io::read_npy(&case.join("history.npy")).expect("history");
        let scale = want_h.iter().fold(1f64, |m, &v| m.max((v as f64).abs()));
        let mut bad = Vec::new();
        for (i, (&w, g)) in want_h.iter().zip(&history.loss).enumerate() {
            if rel(*g, w as f64, scale) > 1e-3 {
                bad.push(format!("loss[{i}] {g} vs {w}"));
            }
        }
        // Compare in canonical layout: implementation-2 kernels carry masked entries that
        // Keras stores (random, never updated) and lcjit does not have.
        let after = io::read_weights_npz(&case.join("after.npz")).expect("after.npz");
        let mut expected = model.clone();
        expected
            .set_keras_weights(&after, "after.npz")
            .expect("after.npz fits the model");
        for (pid, (g, w)) in model.params().iter().zip(expected.params()).enumerate() {
            let s = w.iter().fold(1f32, |m, v| m.max(v.abs()));
            let e = g
                .iter()
                .zip(w.iter())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            if e > 1e-3 * s {
                let spec = &model.graph().params[pid];
                let layer = &model.graph().nodes[spec.node].name;
                bad.push(format!("{layer}/{} differs by {e:.2e}", spec.name));
            }
        }
        if bad.is_empty() {
            passed.push(name);
        } else {
            failures.push(format!("{name}: {}", bad.join("; ")));
        }
    }
    eprintln!("trained like Keras: {}", passed.join(", "));
    eprintln!("refused (not supported yet):\n  {}", refused.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(passed.len() + refused.len() == cases.len() && !passed.is_empty());
}

/// The same through the command line: `lcjit fit compiled.h5 --x xs.npy --y ys.npy
/// --epochs 2 --batch-size 4 --no-shuffle`, with the history and the weights written to
/// files and read back.
#[test]
fn golden_training_through_lcjit_fit() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let tmp = std::env::temp_dir().join(format!("lcjit-fit-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut checked = 0;
    let mut failures = Vec::new();
    for name in [
        "case_0000",
        "case_0015",
        "case_0105",
        "model_mini_deepface",
        "model_gpnet_like",
    ] {
        let case = root.join(name);
        let (h, w) = (
            tmp.join(format!("{name}-h.npy")),
            tmp.join(format!("{name}-w.npz")),
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lcjit"))
            .arg("fit")
            .arg(case.join("compiled.h5"))
            .arg("--x")
            .arg(case.join("xs.npy"))
            .arg("--y")
            .arg(case.join("ys.npy"))
            .args([
                "--epochs",
                "2",
                "--batch-size",
                "4",
                "--no-shuffle",
                "--quiet",
            ])
            .arg("--history")
            .arg(&h)
            .arg("--save-weights")
            .arg(&w)
            .output()
            .expect("spawn lcjit");
        if !out.status.success() {
            failures.push(format!("{name}: {}", String::from_utf8_lossy(&out.stderr)));
            continue;
        }
        let got = io::read_npy(&h).expect("history");
        let want = io::read_npy(&case.join("history.npy")).expect("history.npy");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        if got.len() != want.len()
            || got
                .iter()
                .zip(want.iter())
                .any(|(a, b)| (a - b).abs() > 1e-3 * scale)
        {
            failures.push(format!("{name}: history {got:?} vs {want:?}"));
        }
        let mut ours = Model::load(case.join("compiled.h5")).expect("model");
        ours.load_weights(&w).expect("our weights");
        let mut keras = ours.clone();
        keras
            .load_weights(case.join("after.npz"))
            .expect("after.npz");
        for (a, b) in ours.params().iter().zip(keras.params()) {
            let s = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            if a.iter()
                .zip(b.iter())
                .any(|(x, y)| (x - y).abs() > 1e-3 * s)
            {
                failures.push(format!("{name}: weights differ from after.npz"));
                break;
            }
        }
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, 5);
}
