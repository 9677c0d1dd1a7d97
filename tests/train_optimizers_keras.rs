//! Every optimizer flavour against tf-keras 2.21 (`tests/data/optimizers/make.py`): the
//! legacy `optimizer_v2` classes (`keras.optimizers.legacy.*`, saved without an
//! `is_legacy_optimizer` key) and the current ones (`is_legacy_optimizer: false`), each
//! training the same small LocallyConnected1D → Flatten → Dense model for 3 epochs
//! (batch 4, no shuffle, MSE) from the case's `model.h5`, whose `training_config` names
//! the optimizer. One test per case, on the JIT (compiled gradient program and compiled
//! optimizer update, two threads) and on the reference engine (host update); loss history
//! and final weights must match Keras's to `1e-4 · max(1, max|ref|)`.
//!
//! Why 1e-4 holds after 9 steps: the model is tiny (164 weights), the hyperparameters
//! keep every rule well conditioned (ε = 1e-3 where a rule has one), and lcjit and
//! TensorFlow differ only in float32 summation order and in how a few formulas are
//! associated (e.g. TF's kernels `ms += (g² − ms)(1 − ρ)` against `ρ·ms + (1 − ρ)·g²`,
//! Adadelta's `rsqrt`), a few ulps. Measured: at most 1.2e-7 on any case and engine
//! (Adadelta's weights), against 1e-3 to 1e-1 for the rules this suite caught wrong
//! (legacy RMSprop with momentum 0, legacy chained clipping, tf-keras Nadam's traced
//! product).
//!
//! `cli_fit_matches_keras` runs one case through `lcjit fit` to prove the command-line path.

use lcjit::train::{fit_compiled, parse_training_config, FitOptions, History, Optimizer};
use lcjit::{io, CompileOptions, Engine, Model};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

/// Tolerance on histories and weights, relative to `max(1, max|ref|)`.
const TOL: f64 = 1e-4;
const EPOCHS: usize = 3;
const BATCH: usize = 4;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/optimizers")
}

fn npy(name: &str) -> ArrayD<f32> {
    let p = root().join(name);
    io::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Trains case `case` on `engine` as Keras did (`trace`: see
/// `Optimizer::set_keras_trace`); the compiled engines also run the compiled optimizer
/// update.
fn train(case: &str, engine: Engine, trace: u64) -> (Model, History) {
    let dir = root().join(case);
    let file = dir.join("model.h5");
    let mut model = Model::load(&file).unwrap_or_else(|e| panic!("{case}: {e}"));
    let tc = model
        .training_config()
        .cloned()
        .unwrap_or_else(|| panic!("{case}: model.h5 has no training_config"));
    let setup = parse_training_config(&tc, &file.display().to_string())
        .unwrap_or_else(|e| panic!("{case}: {e}"));
    let mut opt = Optimizer::new(setup.optimizer);
    opt.set_keras_trace(trace);
    let opts = FitOptions {
        epochs: EPOCHS,
        batch_size: BATCH,
        shuffle: None,
        update: (engine != Engine::Reference).then_some((engine, 2)),
        stop_on_non_finite: false,
        ..FitOptions::default()
    };
    let compile = CompileOptions {
        engine,
        threads: 2,
        max_batch: BATCH,
        ..Default::default()
    };
    let history = fit_compiled(
        &mut model,
        &mut opt,
        &setup.loss,
        &npy("x.npy"),
        &npy("y.npy"),
        None,
        &opts,
        &compile,
        &mut [],
    )
    .unwrap_or_else(|e| panic!("{case} ({}): {e}", engine.name()));
    (model, history)
}

/// Largest scaled difference of `got` from `want` (infinite when a value is not finite
/// or the lengths differ).
fn scaled_err(got: impl Iterator<Item = f64>, want: &[f64]) -> f64 {
    let got: Vec<f64> = got.collect();
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            if g.is_finite() {
                (g - w).abs()
            } else {
                f64::INFINITY
            }
        })
        .fold(0f64, f64::max)
        / scale
}

/// The scaled error of a loss history against the case's `history.npy`.
fn history_err(case: &str, loss: &[f64]) -> f64 {
    let want: Vec<f64> = io::read_npy(&root().join(case).join("history.npy"))
        .expect("history.npy")
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    scaled_err(loss.iter().copied(), &want)
}

/// The worst scaled weight error (with the weight's name) of a trained model against
/// the case's `after.npz`.
fn weight_err(case: &str, model: &Model) -> (f64, String) {
    let after = io::read_weights_npz(&root().join(case).join("after.npz")).expect("after.npz");
    let mut expected = model.clone();
    expected
        .set_keras_weights(&after, "after.npz")
        .expect("after.npz fits the model");
    let (mut worst, mut name) = (0f64, String::new());
    for (pid, (g, w)) in model.params().iter().zip(expected.params()).enumerate() {
        let want: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
        let e = scaled_err(g.iter().map(|&v| f64::from(v)), &want);
        if e > worst || e.is_nan() {
            let spec = &model.graph().params[pid];
            let layer = &model.graph().nodes[spec.node].name;
            (worst, name) = (e, format!("{layer}/{}", spec.name));
        }
    }
    (worst, name)
}

/// Trains `case` on the JIT and on the reference engine and checks both against Keras.
fn check(case: &str, trace: u64) {
    for engine in [Engine::Jit, Engine::Reference] {
        let (model, history) = train(case, engine, trace);
        let h = history_err(case, history.loss());
        let (w, worst) = weight_err(case, &model);
        eprintln!(
            "{case} ({}): history {h:.1e}, weights {w:.1e}",
            engine.name()
        );
        assert!(
            h <= TOL && w <= TOL,
            "{case} ({}): history error {h:.2e}, weight error {w:.2e} ({worst}); \
             lcjit history {:?}",
            engine.name(),
            history.loss()
        );
    }
}

/// One test per case: `name` or `name = trace` (the Keras trace the case ran in, 0 when
/// not given).
macro_rules! cases {
    ($($name:ident $(= $trace:expr)?),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check(stringify!($name), 0 $(+ $trace)?);
            }
        )*

        /// Every case directory has a test above (a new case in `make.py` must get one).
        #[test]
        fn every_case_has_a_test() {
            let mut listed = vec![$(stringify!($name)),*];
            listed.sort_unstable();
            let mut found: Vec<String> = std::fs::read_dir(root())
                .expect("tests/data/optimizers")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("model.h5").exists())
                .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(String::from))
                .collect();
            found.sort_unstable();
            assert_eq!(found, listed);
        }
    };
}

cases!(
    legacy_sgd,
    legacy_sgd_momentum,
    legacy_sgd_nesterov,
    legacy_rmsprop,
    legacy_rmsprop_momentum,
    legacy_rmsprop_centered,
    legacy_rmsprop_centered_momentum,
    legacy_adam,
    legacy_adam_amsgrad,
    legacy_adagrad,
    legacy_adadelta,
    legacy_adamax,
    legacy_nadam,
    legacy_ftrl,
    legacy_ftrl_shrinkage,
    legacy_sgd_momentum_decay,
    legacy_rmsprop_decay,
    legacy_sgd_clip,
    legacy_ftrl_power0,
    current_sgd,
    current_sgd_momentum,
    current_sgd_nesterov,
    current_rmsprop,
    current_rmsprop_momentum,
    current_rmsprop_centered,
    current_rmsprop_centered_momentum,
    current_adam,
    current_adam_amsgrad,
    current_adagrad,
    current_adadelta,
    current_adamax,
    current_nadam,
    current_ftrl,
    current_ftrl_shrinkage,
    current_adamw,
    // make.py trains this one in memory after compile(): `fit` builds the optimizer, so
    // Keras traces its train function twice and runs the second trace.
    current_nadam_fresh = 1,
);

/// `lcjit fit` on the legacy RMSprop case (the rule this suite was written for): the
/// history and the weights it writes match Keras's.
#[test]
fn cli_fit_matches_keras() {
    let case = "legacy_rmsprop";
    let dir = root().join(case);
    let out = std::env::temp_dir().join(format!("lcjit_opt_cli_{}", std::process::id()));
    std::fs::create_dir_all(&out).expect("temp dir");
    let (h_path, w_path) = (out.join("h.npy"), out.join("w.npz"));
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .arg("fit")
        .arg(dir.join("model.h5"))
        .arg("--x")
        .arg(root().join("x.npy"))
        .arg("--y")
        .arg(root().join("y.npy"))
        .args([
            "--no-shuffle",
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--quiet",
        ])
        .arg("--history")
        .arg(&h_path)
        .arg("--save-weights")
        .arg(&w_path)
        .output()
        .expect("run lcjit");
    assert!(
        status.status.success(),
        "lcjit fit failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    let got_h = io::read_npy(&h_path).expect("history written");
    let got: Vec<f64> = got_h.iter().map(|&v| f64::from(v)).collect();
    let h = history_err(case, &got);
    assert!(h <= TOL, "lcjit fit: history error {h:.2e}: {got_h:?}");
    let mut model = Model::load(dir.join("model.h5")).expect("model.h5");
    model.load_weights(&w_path).expect("weights written");
    let (w, worst) = weight_err(case, &model);
    assert!(w <= TOL, "lcjit fit: weight error {w:.2e} ({worst})");
    std::fs::remove_dir_all(&out).ok();
}
