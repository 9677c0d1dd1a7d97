//! tf-keras loads what lcjit saves: every golden model (every Keras 1 case converted from
//! `keras1.json`, and every training case after `fit` on the JIT) saved as `.h5` and `.keras` is loaded by `tf_keras.models.load_model`
//! and must predict what lcjit predicts (`max|a − b| ≤ 1e-4 · max(1, max|ours|)`).
//!
//! Needs a Python with tf_keras: `LCJIT_PYTHON` (default `python3`). When `import tf_keras`
//! fails the test prints why and returns; that is its only skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use lcjit::{io, Model};
use ndarray::ArrayD;

fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("golden data directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("model.h5").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 40, "expected the golden cases");
    dirs
}

/// Loads every `model` of the manifest in tf-keras, predicts on its `x` and writes `y`;
/// a failure is written as `<y>.err` with the exception, so one case never hides another.
const SCRIPT: &str = r#"
import json, os, sys, traceback
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
import tf_keras
for job in json.load(open(sys.argv[1])):
    try:
        m = tf_keras.models.load_model(job["model"], compile=False)
        x = np.load(job["x"])
        y = m.predict(x, verbose=0)
        np.save(job["y"], np.asarray(y, dtype=np.float32))
    except Exception:
        with open(job["y"] + ".err", "w") as f:
            f.write(traceback.format_exc())
"#;

fn python() -> String {
    std::env::var("LCJIT_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn tf_keras_available(py: &str) -> bool {
    Command::new(py)
        .args(["-c", "import tf_keras"])
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `max|a − b| / max(1, max|a|)`, or infinity when the shapes differ.
fn rel_err(ours: &ArrayD<f32>, theirs: &ArrayD<f32>) -> f64 {
    if ours.shape() != theirs.shape() {
        return f64::INFINITY;
    }
    let scale = ours.iter().fold(1.0f64, |m, &v| m.max(f64::from(v).abs()));
    let diff = ours.iter().zip(theirs).fold(0.0f64, |m, (&a, &b)| {
        m.max((f64::from(a) - f64::from(b)).abs())
    });
    if diff.is_nan() {
        f64::INFINITY
    } else {
        diff / scale
    }
}

/// The case's `compiled.h5` after `fit` on the JIT (two epochs of batch 4, as Keras).
fn trained(dir: &Path) -> Model {
    use lcjit::train::{fit_compiled, parse_training_config, FitOptions, Optimizer};
    let mut m = Model::load(dir.join("compiled.h5")).expect("compiled.h5");
    let tc = m.training_config().cloned().expect("training_config");
    let setup = parse_training_config(&tc, "compiled.h5").expect("training config");
    let xs = io::read_npy(&dir.join("xs.npy")).expect("xs");
    let ys = io::read_npy(&dir.join("ys.npy")).expect("ys");
    let opts = FitOptions {
        epochs: 2,
        batch_size: 4,
        ..FitOptions::default()
    };
    let compile = lcjit::CompileOptions {
        engine: lcjit::Engine::Jit,
        threads: 2,
        max_batch: 4,
        ..Default::default()
    };
    let mut opt = Optimizer::new(setup.optimizer);
    fit_compiled(
        &mut m,
        &mut opt,
        &setup.loss,
        &xs,
        &ys,
        None,
        &opts,
        &compile,
        &mut [],
    )
    .expect("fit");
    m
}

#[test]
fn tf_keras_loads_saved_models_and_agrees() {
    let py = python();
    if !tf_keras_available(&py) {
        println!("skipped: tf_keras not importable with {py}");
        return;
    }
    let tmp = std::env::temp_dir().join(format!("lcjit-save-tfk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).expect("temp dir");

    // (label, saved file, x, our prediction)
    let mut cases: Vec<(String, PathBuf, PathBuf, ArrayD<f32>)> = Vec::new();
    for dir in golden_dirs() {
        let case = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let x_path = dir.join("x.npy");
        let x = io::read_npy(&x_path).expect("x.npy");
        let mut models = vec![(
            case.clone(),
            Model::load(dir.join("model.h5")).expect("load model.h5"),
        )];
        if dir.join("keras1.json").is_file() {
            let mut m = Model::load(dir.join("keras1.json")).expect("load keras1.json");
            m.load_weights(dir.join("weights.npz")).expect("weights");
            models.push((format!("{case}-keras1"), m));
        }
        if dir.join("compiled.h5").is_file() {
            models.push((format!("{case}-trained"), trained(&dir)));
        }
        for (label, model) in models {
            let y = model.predict(&x).expect("predict");
            for ext in ["h5", "keras"] {
                let out = tmp.join(format!("{label}.{ext}"));
                model.save(&out).expect("save");
                cases.push((format!("{label}.{ext}"), out, x_path.clone(), y.clone()));
            }
        }
    }
    let jobs: Vec<serde_json::Value> = cases
        .iter()
        .map(|(label, model, x, _)| {
            serde_json::json!({
                "model": model,
                "x": x,
                "y": tmp.join(format!("{label}.y.npy")),
            })
        })
        .collect();
    let manifest = tmp.join("jobs.json");
    std::fs::write(&manifest, serde_json::Value::Array(jobs).to_string()).expect("manifest");
    let script = tmp.join("predict.py");
    std::fs::write(&script, SCRIPT).expect("script");
    let out = Command::new(&py)
        .arg(&script)
        .arg(&manifest)
        .env("TF_CPP_MIN_LOG_LEVEL", "3")
        .env("CUDA_VISIBLE_DEVICES", "")
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{py} {} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );

    let mut failures = Vec::new();
    for (label, _, _, ours) in &cases {
        let y_path = tmp.join(format!("{label}.y.npy"));
        let err_path = tmp.join(format!("{label}.y.npy.err"));
        if let Ok(tb) = std::fs::read_to_string(&err_path) {
            let last = tb.lines().last().unwrap_or("").to_string();
            println!("{label}: tf-keras failed: {last}");
            failures.push(format!("{label}: {last}"));
            continue;
        }
        let theirs = io::read_npy(&y_path).expect("tf-keras output");
        let e = rel_err(ours, &theirs);
        println!("{label}: tf-keras agrees to {e:.2e}");
        if e > 1e-4 {
            failures.push(format!("{label}: relative difference {e:.3e}"));
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(
        failures.is_empty(),
        "{} of {} saved files failed in tf-keras:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
