//! Keras golden cases (produced by tf-keras 2.21, in `tests/data/keras-golden` and, built as
//! tf-keras's own unit tests build these layers, `tests/data/keras-grid`): every
//! case passes through every route it offers — `model.h5`, `model.json` + `weights.npz`,
//! `keras1.json` + `weights.npz` — with `max|y − ref| ≤ 1e-4 · max(1, max|ref|)`, on
//! every engine (JIT, loop interpreter, reference), through the library API and through
//! `lcjit run`.
//!
//! `LCJIT_GOLDEN_DIR` points the tests at another directory of cases of the same kind.

mod common;
use common::rel_err;
use lcjit::{io, CompileOptions, CompiledModel, Engine, Model};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const ENGINES: [Engine; 3] = [Engine::Jit, Engine::Interp, Engine::Reference];

/// The bundled sets, or `LCJIT_GOLDEN_DIR` (another set of the same kind).
fn golden_dirs() -> Vec<PathBuf> {
    match std::env::var_os("LCJIT_GOLDEN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => ["keras-golden", "keras-grid"]
            .iter()
            .map(|d| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/data")
                    .join(d)
            })
            .collect(),
    }
}

fn cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = golden_dirs()
        .iter()
        .flat_map(|d| std::fs::read_dir(d).expect("golden directory"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("x.npy").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases found");
    v
}

/// The routes a case offers: (label, model file, optional weights file).
fn routes(case: &Path) -> Vec<(String, PathBuf, Option<PathBuf>)> {
    let mut r = Vec::new();
    if case.join("model.h5").exists() {
        r.push(("model.h5".to_string(), case.join("model.h5"), None));
    }
    for cfg in ["model.json", "keras1.json"] {
        if case.join(cfg).exists() && case.join("weights.npz").exists() {
            r.push((
                format!("{cfg} + weights.npz"),
                case.join(cfg),
                Some(case.join("weights.npz")),
            ));
        }
    }
    r
}

#[test]
fn every_golden_case_matches_keras_through_the_api() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let want = io::read_npy(&case.join("y.npy")).expect("y.npy");
        let routes = routes(&case);
        assert!(!routes.is_empty(), "{}: no route", case.display());
        for ((label, model, weights), engine) in routes
            .into_iter()
            .flat_map(|r| ENGINES.map(|e| (r.clone(), e)))
        {
            let label = format!("{label}, {}", engine.name());
            let result = (|| {
                let mut m = Model::load(&model)?;
                if let Some(w) = &weights {
                    m.load_weights(w)?;
                }
                let opts = CompileOptions {
                    engine,
                    threads: 2,
                    max_batch: x.shape()[0],
                    ..Default::default()
                };
                CompiledModel::new(Arc::new(m), opts)?.predict(&x)
            })();
            match result {
                Ok(y) if y.shape() == want.shape() && rel_err(&y, &want) <= 1e-4 => checked += 1,
                Ok(y) if y.shape() != want.shape() => failures.push(format!(
                    "{} [{label}]: shape {:?} vs {:?}",
                    case.display(),
                    y.shape(),
                    want.shape()
                )),
                Ok(y) => failures.push(format!(
                    "{} [{label}]: rel err {:.3e}",
                    case.display(),
                    rel_err(&y, &want)
                )),
                Err(e) => failures.push(format!("{} [{label}]: {e}", case.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} routes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 3 * 48, "only {checked} routes checked");
}

#[test]
fn every_golden_case_matches_keras_through_lcjit_run() {
    let out_dir = std::env::temp_dir().join(format!("lcjit-golden-run-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("temp dir");
    let mut failures = Vec::new();
    for case in cases() {
        let want = io::read_npy(&case.join("y.npy")).expect("y.npy");
        let runs = routes(&case)
            .into_iter()
            .flat_map(|r| ENGINES.map(|e| (r.clone(), e)));
        for (i, ((label, model, weights), engine)) in runs.enumerate() {
            let name = case.file_name().and_then(|s| s.to_str()).unwrap_or("case");
            let out = out_dir.join(format!("{name}-{i}.npy"));
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_lcjit"));
            cmd.arg("run")
                .arg(&model)
                .arg("--input")
                .arg(case.join("x.npy"));
            cmd.arg("--output")
                .arg(&out)
                .args(["--engine", engine.name()]);
            if let Some(w) = &weights {
                cmd.arg("--weights").arg(w);
            }
            let res = cmd.output().expect("spawn lcjit");
            if !res.status.success() {
                failures.push(format!(
                    "{name} [{label}, {}]: exit {:?}: {}",
                    engine.name(),
                    res.status.code(),
                    String::from_utf8_lossy(&res.stderr).trim()
                ));
                continue;
            }
            let y = io::read_npy(&out).expect("output npy");
            if y.shape() != want.shape() || rel_err(&y, &want) > 1e-4 {
                failures.push(format!(
                    "{name} [{label}, {}]: output differs from Keras",
                    engine.name()
                ));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `lcjit grad` on every case with every engine: reference, JIT (two threads) and
/// interpreter, the compiled ones running the lowered gradient programs.
#[test]
fn every_golden_gradient_matches_keras_through_lcjit_grad() {
    let out_dir = std::env::temp_dir().join(format!("lcjit-golden-grad-{}", std::process::id()));
    std::fs::create_dir_all(&out_dir).expect("temp dir");
    let mut failures = Vec::new();
    let mut keys = [0usize; 3];
    for case in cases() {
        let name = case.file_name().and_then(|s| s.to_str()).unwrap_or("case");
        let engines = ["reference", "jit", "interp"];
        let want = io::read_npz(&case.join("grads.npz")).expect("grads.npz");
        for (e, &engine) in engines.iter().enumerate() {
            let out = out_dir.join(format!("{name}-{engine}.npz"));
            let res = Command::new(env!("CARGO_BIN_EXE_lcjit"))
                .arg("grad")
                .arg(case.join("model.h5"))
                .arg("--input")
                .arg(case.join("x.npy"))
                .arg("--cotangent")
                .arg(case.join("dy.npy"))
                .arg("--output")
                .arg(&out)
                .args(["--engine", engine, "--threads", "2"])
                .output()
                .expect("spawn lcjit");
            if !res.status.success() {
                failures.push(format!(
                    "{name} [{engine}]: {}",
                    String::from_utf8_lossy(&res.stderr).trim()
                ));
                continue;
            }
            let got = io::read_npz(&out).expect("our grads");
            if got.len() != want.len() {
                failures.push(format!(
                    "{name} [{engine}]: {} keys, Keras has {}",
                    got.len(),
                    want.len()
                ));
            }
            for (k, w) in &want {
                match got.iter().find(|(g, _)| g == k) {
                    Some((_, g)) if g.shape() == w.shape() && rel_err(g, w) <= 1e-4 => keys[e] += 1,
                    Some((_, g)) if g.shape() == w.shape() => failures.push(format!(
                        "{name} [{engine}]: {k} differs (rel err {:.3e})",
                        rel_err(g, w)
                    )),
                    Some(_) => failures.push(format!("{name} [{engine}]: {k} has another shape")),
                    None => failures.push(format!("{name} [{engine}]: {k} missing")),
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(
        keys.iter().all(|&k| k >= 280),
        "gradient keys matched per engine (reference, jit, interp): {keys:?}"
    );
}
