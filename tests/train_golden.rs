//! Golden training cases (tf-keras `fit(xs, ys, batch_size=4, epochs=2, shuffle=False)`
//! from `compiled.h5`): the trainer, on the reference path and on the compiled engines
//! (JIT and interpreter gradient programs with the compiled optimizer update), reproduces Keras's loss history and
//! final weights within `1e-3 · max(1, max|ref|)`, BatchNormalization in training mode
//! included (batch statistics, moving-average updates).
//!
//! Dropout with a rate above 0 is the one thing that cannot match exactly: Keras draws its
//! masks from TF's Philox streams, seeded from the global seed (`case_0108` was generated
//! after `tf_keras.utils.set_random_seed(108)`, which makes Keras itself reproducible) and
//! per-op seeds inside the traced train function; lcjit draws from its own seeded
//! generator. Those cases ([`DROPOUT_CASES`], and no others: a model with Dropout outside
//! that list fails the test) are checked against a loose band instead: Keras run with
//! other seeds (1–8) gives histories within 0.19 of `history.npy` and weights within 0.17
//! of `after.npz`, so lcjit must stay within [`DROPOUT_BAND`] (scaled like the tolerance)
//! and be deterministic for a fixed seed.
//!
//! `LCJIT_GOLDEN_DIR` points the main test at another directory of training cases (any
//! case with Dropout is then held to the band).

use lcjit::graph::Op;
use lcjit::model::canonical_weight_name;
use lcjit::train::{fit_compiled, parse_training_config, FitOptions, History, Optimizer};
use lcjit::{io, CompileOptions, Engine, Model};
use std::path::{Path, PathBuf};

/// Golden training cases with Dropout rate > 0, whose Keras masks cannot be reproduced.
const DROPOUT_CASES: [&str; 1] = ["case_0108"];

/// Largest scaled difference allowed for [`DROPOUT_CASES`] (history and weights).
const DROPOUT_BAND: f64 = 0.3;

/// Every golden case is trained on every engine.
const ENGINES: [Engine; 3] = [Engine::Reference, Engine::Jit, Engine::Interp];

/// Tolerance of the BatchNorm moving statistics. Which batch variance enters the moving
/// variance (biased on the non-fused path, Bessel-corrected `n/(n−1)` on the fused one)
/// moves it by only ~7e-6 in these cases (`n` is 256 for `model_mini_jet`), well inside
/// the general 1e-3; lcjit's are within 6e-8 of Keras's, so a tighter bound tells the two
/// rules apart.
const MOVING_TOL: f64 = 1e-6;

fn rel(a: f64, b: f64, scale: f64) -> f64 {
    (a - b).abs() / scale.max(1.0)
}

fn bundled_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden")
}

/// Whether `LCJIT_GOLDEN_DIR` replaces the bundled sets.
fn overridden() -> bool {
    std::env::var_os("LCJIT_GOLDEN_DIR").is_some()
}

/// The bundled sets (`keras-golden`, and `keras-grid`: models built as tf-keras's own
/// unit tests build these layers), or `LCJIT_GOLDEN_DIR` (another set of the same kind).
fn golden_roots() -> Vec<PathBuf> {
    match std::env::var_os("LCJIT_GOLDEN_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => vec![bundled_root(), grid_root()],
    }
}

fn grid_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-grid")
}

fn opts(seed: u64) -> FitOptions {
    FitOptions {
        epochs: 2,
        batch_size: 4,
        shuffle: None,
        validation_split: 0.0,
        metrics: Vec::new(),
        verbose: false,
        progress: None,
        seed,
        update: None,
        stop_on_non_finite: false,
        resume: Default::default(),
    }
}

/// Trains the case's `compiled.h5` as Keras did, on `engine` (two threads); returns the
/// trained model and history.
fn train(case: &Path, seed: u64, engine: Engine) -> Result<(Model, History), String> {
    let name = case.display().to_string();
    let mut model = Model::load(case.join("compiled.h5")).map_err(|e| e.to_string())?;
    let tc = model
        .training_config()
        .cloned()
        .ok_or("no training_config")?;
    let setup = parse_training_config(&tc, &name).map_err(|e| e.to_string())?;
    let xs = io::read_npy(&case.join("xs.npy")).map_err(|e| e.to_string())?;
    let ys = io::read_npy(&case.join("ys.npy")).map_err(|e| e.to_string())?;
    let mut opt = Optimizer::new(setup.optimizer.clone());
    let compile = CompileOptions {
        engine,
        threads: 2,
        max_batch: 4,
        ..Default::default()
    };
    let history = fit_compiled(
        &mut model,
        &mut opt,
        &setup.loss,
        &xs,
        &ys,
        None,
        &opts(seed),
        &compile,
        &mut [],
    )
    .map_err(|e| e.to_string())?;
    Ok((model, history))
}

/// Worst scaled errors of a trained case against `history.npy` and `after.npz`.
#[derive(Default)]
struct Errors {
    /// Loss history.
    history: f64,
    /// Any weight.
    weights: f64,
    /// The weight with the largest error.
    worst: String,
    /// BatchNorm moving statistics.
    moving: f64,
}

/// The errors of a trained case; weights are compared in the Keras layout of the file
/// (implementation-2 kernels with their masked entries, which Keras's regularizers and
/// constraints change and lcjit keeps beside the canonical kernel).
fn errors(case: &Path, model: &Model, history: &History) -> Errors {
    let want_h = io::read_npy(&case.join("history.npy")).expect("history");
    let scale = want_h.iter().fold(1f64, |m, &v| m.max((v as f64).abs()));
    let h_err = if want_h.len() != history.loss().len() {
        f64::INFINITY // stopped early
    } else {
        want_h
            .iter()
            .zip(history.loss())
            .map(|(&w, &g)| {
                if g.is_finite() {
                    rel(g, w as f64, scale)
                } else {
                    f64::INFINITY
                }
            })
            .fold(0f64, f64::max)
    };
    let after = io::read_weights_npz(&case.join("after.npz")).expect("after.npz");
    let ours = model.keras_weights().expect("keras weights");
    let mut err = Errors {
        history: h_err,
        ..Errors::default()
    };
    for layer in &ours.layers {
        for (wname, g) in &layer.weights {
            let want = after
                .layers
                .iter()
                .find(|l| l.layer == layer.layer)
                .and_then(|l| {
                    l.weights
                        .iter()
                        .find(|(n, _)| canonical_weight_name(n, &l.layer) == *wname)
                });
            let key = format!("{}/{wname}", layer.layer);
            let e = match want {
                Some((_, w)) if w.shape() == g.shape() => {
                    let s = w.iter().fold(1f32, |m, v| m.max(v.abs()));
                    let e = g
                        .iter()
                        .zip(w.iter())
                        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                    f64::from(e / s)
                }
                _ => f64::INFINITY, // missing from after.npz or another shape
            };
            if wname.starts_with("moving_") {
                err.moving = err.moving.max(e);
            }
            if e > err.weights || e.is_nan() {
                (err.weights, err.worst) = (e, key);
            }
        }
    }
    err
}

fn has_dropout(model: &Model) -> bool {
    model
        .graph()
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Dropout { rate, .. } if rate > 0.0))
}

#[test]
fn golden_training_cases_match_keras() {
    let mut cases: Vec<_> = golden_roots()
        .iter()
        .flat_map(|r| std::fs::read_dir(r).expect("golden dir"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("compiled.h5").exists())
        .collect();
    cases.sort();
    let (mut passed, mut banded, mut failures) = (Vec::new(), Vec::new(), Vec::new());
    for (case, engine) in cases
        .iter()
        .flat_map(|c| ENGINES.iter().map(move |&e| (c, e)))
    {
        let case_name = case
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let name = format!("{case_name} ({})", engine.name());
        let (model, history) = match train(case, 0, engine) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        let e = errors(case, &model, &history);
        let line = format!(
            "{name}: history {:.2e}, weights {:.2e} ({}), moving statistics {:.2e}",
            e.history, e.weights, e.worst, e.moving
        );
        let dropout = has_dropout(&model);
        if !overridden() && dropout != DROPOUT_CASES.contains(&case_name.as_str()) {
            failures.push(format!(
                "{name}: Dropout in the model and DROPOUT_CASES disagree"
            ));
        } else if dropout {
            // Keras's masks cannot be reproduced: a loose band only (see the module docs).
            let finite = history.loss().iter().all(|l| l.is_finite()) && history.stopped.is_none();
            if finite && e.history <= DROPOUT_BAND && e.weights <= DROPOUT_BAND {
                banded.push(line);
            } else {
                failures.push(format!("{line}: outside the Dropout band {DROPOUT_BAND}"));
            }
        } else if e.history <= 1e-3 && e.weights <= 1e-3 && e.moving <= MOVING_TOL {
            passed.push(line);
        } else {
            failures.push(line);
        }
    }
    eprintln!(
        "trained like Keras (scaled errors):\n  {}",
        passed.join("\n  ")
    );
    eprintln!("Dropout cases within the band:\n  {}", banded.join("\n  "));
    assert!(
        failures.is_empty(),
        "{} cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed.len() + banded.len(), cases.len() * ENGINES.len());
    if !overridden() {
        assert_eq!(banded.len(), DROPOUT_CASES.len() * ENGINES.len());
        for bn in ["model_mini_genomics", "model_mini_jet"] {
            let n = passed.iter().filter(|l| l.starts_with(bn)).count();
            assert_eq!(n, ENGINES.len(), "{bn} not trained on every engine");
        }
    }
}

/// Training with Dropout is reproducible: the same seed gives the same history and
/// weights, another seed other masks (so another history).
#[test]
fn dropout_training_is_deterministic_per_seed() {
    let case = bundled_root().join(DROPOUT_CASES[0]);
    let (m1, h1) = train(&case, 5, Engine::Reference).expect("train");
    let (m2, h2) = train(&case, 5, Engine::Reference).expect("train");
    assert_eq!(h1, h2);
    assert_eq!(m1.params(), m2.params());
    let (m3, h3) = train(&case, 6, Engine::Reference).expect("train");
    assert_ne!(h1.loss(), h3.loss());
    assert_ne!(m1.params(), m3.params());
    // The compiled engines draw the same masks from the same seed.
    for engine in [Engine::Jit, Engine::Interp] {
        let (m, h) = train(&case, 5, engine).expect("train");
        for (a, b) in h.loss().iter().zip(h1.loss()) {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "{}",
                engine.name()
            );
        }
        for (a, b) in m.params().iter().zip(m1.params()) {
            let e = a
                .iter()
                .zip(b.iter())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(e <= 1e-5, "{}: weights differ by {e}", engine.name());
        }
    }
}

/// The same through the command line: `lcjit fit compiled.h5 --x xs.npy --y ys.npy
/// --epochs 2 --batch-size 4 --no-shuffle`, with the history and the weights written to
/// files and read back.
#[test]
fn golden_training_through_lcjit_fit() {
    let tmp = std::env::temp_dir().join(format!("lcjit-fit-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    let mut checked = 0;
    let mut failures = Vec::new();
    let (golden, grid) = (bundled_root(), grid_root());
    let chosen = [
        (&golden, "case_0000"),
        (&golden, "case_0015"),
        (&golden, "case_0105"),
        (&golden, "model_mini_deepface"),
        (&golden, "model_gpnet_like"),
        (&golden, "model_mini_jet"),
        // Built as tf-keras's unit tests build LC layers: implementation 2 with l2
        // kernel, bias and activity regularizers; max_norm constraints; the
        // implementation-equivalence model trained with RMSprop from logits.
        (&grid, "lc1d_cl_valid_i2_reg"),
        (&grid, "lc2d_cf_same_i2_reg"),
        (&grid, "lc1d_cf_same_i2_maxnorm"),
        (&grid, "impl_w6_cf_i2"),
    ];
    for (root, name) in chosen {
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
        // Every stored tensor in Keras layout (implementation-2 masked entries included).
        let ours = io::read_npz(&w).expect("our weights");
        let keras = io::read_npz(&case.join("after.npz")).expect("after.npz");
        if ours.len() != keras.len() {
            failures.push(format!(
                "{name}: {} tensors, Keras has {}",
                ours.len(),
                keras.len()
            ));
        }
        for (k, b) in &keras {
            let s = b.iter().fold(1f32, |m, v| m.max(v.abs()));
            match ours.iter().find(|(n, _)| n == k) {
                Some((_, a)) if a.shape() == b.shape() => {
                    if a.iter()
                        .zip(b.iter())
                        .any(|(x, y)| (x - y).abs() > 1e-3 * s)
                    {
                        failures.push(format!("{name}: {k} differs from after.npz"));
                    }
                }
                _ => failures.push(format!("{name}: {k} missing or of another shape")),
            }
        }
        checked += 1;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, chosen.len());
}

/// A model trained on the JIT and saved as `.h5` and `.keras` reloads in lcjit with the
/// same weights and identical predictions (tf-keras loading them is checked in
/// `save_tf_keras`).
#[test]
fn trained_models_reload_identically() {
    let root = bundled_root();
    let tmp = std::env::temp_dir().join(format!("lcjit-trained-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    for name in [
        "case_0003",
        "model_mini_jet",
        "model_mini_yolo",
        "case_0108",
    ] {
        let case = root.join(name);
        let (model, _) = train(&case, 0, Engine::Jit).expect("train");
        let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let want = model.predict(&x).expect("predict");
        for ext in ["h5", "keras"] {
            let out = tmp.join(format!("{name}.{ext}"));
            model.save(&out).expect("save");
            let back = Model::load(&out).expect("reload");
            assert_eq!(back.params(), model.params(), "{name}.{ext}: weights");
            let got = back.predict(&x).expect("predict");
            assert_eq!(got, want, "{name}.{ext}: predictions");
            assert!(
                back.training_config().is_some(),
                "{name}.{ext}: training_config"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
