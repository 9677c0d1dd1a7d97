//! Lossless implementation-2 kernels (issue 9 item 1).
//!
//! - Every golden model converted by lcjit to `.h5` and `.keras` stores every tensor of
//!   its source file bit for bit (implementation-2 kernels with their masked entries, as
//!   loaded), read back with `lcjit::io`.
//! - Training keeps what training does not change: the masked entries of an
//!   unregularized, unconstrained implementation-2 kernel and every tensor of a frozen
//!   layer are bit for bit the loaded ones; trained golden cases match Keras's `after.npz`
//!   in the full implementation-2 layout, masked entries included.
//! - `tests/data/impl2/` (made by its `make.py` with tf-keras 2.21): implementation-2
//!   LC1D/LC2D layers, channels_last and channels_first, with an L2 kernel regularizer and
//!   a MaxNorm kernel constraint, trained by Keras (SGD with momentum, Adam, plain SGD),
//!   and one with neither trained by AdamW (weight decay moves the masked entries);
//!   lcjit reproduces the loss history (1e-4) and every weight after training (1e-3),
//!   masked entries included, on every engine and through `lcjit fit`.
//! - A model initialized without weights draws the whole implementation-2 tensor with the
//!   fans of its Keras shape, masked entries included, and keeps them through clone,
//!   `with_graph`, `set_params` and `get_weights`/`set_weights`.

use lcjit::graph::Op;
use lcjit::io::{self, KerasWeights};
use lcjit::train::{fit_compiled, parse_training_config, FitOptions, History, Optimizer};
use lcjit::{CompileOptions, Engine, LoadOptions, Model};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn dirs_with(root: &Path, file: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .expect("test data directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join(file).is_file())
        .collect();
    dirs.sort();
    dirs
}

fn name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string()
}

/// A fresh, empty directory, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("lcjit-impl2-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Tmp(dir)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// One layer's weights: `(layer, [(weight, value)])`.
type Layer = (String, Vec<(String, ArrayD<f32>)>);

/// The layers that have weights, in file order.
fn with_weights(w: &KerasWeights) -> Vec<Layer> {
    w.layers
        .iter()
        .filter(|l| !l.weights.is_empty())
        .map(|l| (l.layer.clone(), l.weights.clone()))
        .collect()
}

/// Asserts that `got` holds every tensor of `want` bit for bit, layer by layer and weight
/// by weight in file order (`.keras` archives name layers and weights differently, so
/// only `.h5` names are compared); returns the number of tensors compared.
fn assert_same_tensors(what: &str, want: &KerasWeights, got: &KerasWeights, names: bool) -> usize {
    let (want, got) = (with_weights(want), with_weights(got));
    assert_eq!(want.len(), got.len(), "{what}: layers with weights");
    let mut n = 0;
    for ((wl, ww), (gl, gw)) in want.iter().zip(&got) {
        if names {
            assert_eq!(wl, gl, "{what}: layer order");
        }
        assert_eq!(ww.len(), gw.len(), "{what}: layer {wl}: weight count");
        for ((wn, wa), (gn, ga)) in ww.iter().zip(gw) {
            if names {
                assert_eq!(wn, gn, "{what}: layer {wl}: weight order");
            }
            assert_eq!(wa.shape(), ga.shape(), "{what}: {wl}/{wn}: shape");
            assert!(bits(wa) == bits(ga), "{what}: {wl}/{wn}: values differ");
            n += 1;
        }
    }
    n
}

/// Implementation-2 kernels of `model`: `(parameter, layer name)`.
fn impl2_kernels(model: &Model) -> Vec<(usize, String)> {
    (0..model.graph().params.len())
        .filter(|&p| model.off_mask(p).is_some())
        .map(|p| {
            let spec = &model.graph().params[p];
            (p, model.graph().nodes[spec.node].name.clone())
        })
        .collect()
}

#[test]
fn golden_models_convert_to_h5_and_keras_bit_for_bit() {
    let tmp = Tmp::new("convert");
    let (mut tensors, mut impl2) = (0, 0);
    let dirs = dirs_with(&data("keras-golden"), "model.h5");
    assert!(dirs.len() >= 40, "golden cases: {}", dirs.len());
    for dir in dirs {
        let case = name(&dir);
        let source = io::read_h5(&dir.join("model.h5"))
            .expect("read model.h5")
            .weights;
        let model = Model::load(dir.join("model.h5")).expect("load model.h5");
        impl2 += impl2_kernels(&model).len();
        let h5 = tmp.0.join(format!("{case}.h5"));
        model.save(&h5).expect("save .h5");
        let back = io::read_h5(&h5).expect("read converted .h5").weights;
        tensors += assert_same_tensors(&format!("{case} .h5"), &source, &back, true);
        let keras = tmp.0.join(format!("{case}.keras"));
        model.save(&keras).expect("save .keras");
        let (_, _, back) = io::read_keras_archive(&keras).expect("read converted .keras");
        tensors += assert_same_tensors(&format!("{case} .keras"), &source, &back, false);
    }
    assert!(
        impl2 >= 15,
        "only {impl2} implementation-2 kernels converted"
    );
    assert!(tensors > 300, "only {tensors} tensors compared");
}

/// `lcjit convert` itself on the golden cases with implementation-2 kernels.
#[test]
fn lcjit_convert_keeps_masked_entries() {
    let tmp = Tmp::new("cli-convert");
    let mut checked = 0;
    for dir in dirs_with(&data("keras-golden"), "model.h5") {
        let model = Model::load(dir.join("model.h5")).expect("load");
        if impl2_kernels(&model).is_empty() {
            continue;
        }
        let source = io::read_h5(&dir.join("model.h5")).expect("read").weights;
        for ext in ["h5", "keras"] {
            let out = tmp.0.join(format!("{}.{ext}", name(&dir)));
            let st = std::process::Command::new(env!("CARGO_BIN_EXE_lcjit"))
                .arg("convert")
                .arg(dir.join("model.h5"))
                .arg("--output")
                .arg(&out)
                .status()
                .expect("run lcjit");
            assert!(st.success(), "lcjit convert {}", dir.display());
            let back = if ext == "h5" {
                io::read_h5(&out).expect("read").weights
            } else {
                io::read_keras_archive(&out).expect("read").2
            };
            assert_same_tensors(&out.display().to_string(), &source, &back, ext == "h5");
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases");
}

fn fit_opts(epochs: usize, batch_size: usize) -> FitOptions {
    FitOptions {
        epochs,
        batch_size,
        shuffle: None,
        validation_split: 0.0,
        metrics: Vec::new(),
        verbose: false,
        progress: None,
        seed: 0,
        update: None,
        stop_on_non_finite: false,
        resume: Default::default(),
    }
}

/// Trains `model` with its own training configuration on `engine`.
fn train(model: &mut Model, case: &Path, epochs: usize, batch: usize, engine: Engine) -> History {
    let tc = model.training_config().cloned().expect("training_config");
    let setup = parse_training_config(&tc, "case").expect("training config");
    let xs = io::read_npy(&case.join("xs.npy")).expect("xs");
    let ys = io::read_npy(&case.join("ys.npy")).expect("ys");
    let mut opt = Optimizer::new(setup.optimizer.clone());
    let compile = CompileOptions {
        engine,
        threads: 2,
        max_batch: batch,
        ..Default::default()
    };
    fit_compiled(
        model,
        &mut opt,
        &setup.loss,
        &xs,
        &ys,
        None,
        &fit_opts(epochs, batch),
        &compile,
        &mut [],
    )
    .expect("fit")
}

/// Largest `max|a−b| / max(1, max|b|)` over the model's weights in Keras layout against
/// `after.npz` (implementation-2 kernels with their masked entries); the worst key.
fn weight_error(model: &Model, after: &Path) -> (f64, String) {
    let want = io::read_weights_npz(after).expect("after.npz");
    let mut worst = (0f64, String::new());
    for (pid, got) in model.get_weights().expect("get_weights").iter().enumerate() {
        let spec = &model.graph().params[pid];
        let layer = &model.graph().nodes[spec.node].name;
        let w = want
            .layer(layer)
            .and_then(|l| l.weights.iter().find(|(n, _)| *n == spec.name))
            .map(|(_, a)| a)
            .unwrap_or_else(|| panic!("{layer}/{} missing from after.npz", spec.name));
        assert_eq!(got.shape(), w.shape(), "{layer}/{}", spec.name);
        let scale = w.iter().fold(1f32, |m, v| m.max(v.abs()));
        let e = got
            .iter()
            .zip(w.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let e = f64::from(e / scale);
        if e > worst.0 || e.is_nan() {
            worst = (e, format!("{layer}/{}", spec.name));
        }
    }
    worst
}

fn has_dropout(model: &Model) -> bool {
    model
        .graph()
        .nodes
        .iter()
        .any(|n| matches!(n.op, Op::Dropout { rate, .. } if rate > 0.0))
}

/// Golden training cases with implementation-2 kernels, trained as Keras did: every weight
/// in the full Keras layout matches `after.npz` (masked entries included: NonNeg
/// constrains them in Keras too), and the masked entries of a kernel without regularizer
/// or constraint are bit for bit those loaded (Keras leaves them too).
#[test]
fn trained_golden_cases_keep_keras_masked_entries() {
    let mut checked = 0;
    for case in dirs_with(&data("keras-golden"), "compiled.h5") {
        let loaded = Model::load(case.join("compiled.h5")).expect("load compiled.h5");
        let kernels = impl2_kernels(&loaded);
        if kernels.is_empty() || has_dropout(&loaded) {
            continue;
        }
        for engine in [Engine::Reference, Engine::Jit] {
            let mut model = loaded.clone();
            train(&mut model, &case, 2, 4, engine);
            let (e, key) = weight_error(&model, &case.join("after.npz"));
            assert!(
                e <= 1e-3,
                "{} ({}): {key} off by {e:.2e}",
                name(&case),
                engine.name()
            );
            for (pid, layer) in &kernels {
                let spec = &loaded.graph().params[*pid];
                if spec.regularizer.is_none() && spec.constraint.is_none() {
                    assert!(
                        model.off_mask(*pid) == loaded.off_mask(*pid),
                        "{}: {layer}: untouched masked entries changed",
                        name(&case)
                    );
                }
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 6,
        "only {checked} training cases with implementation 2"
    );
}

/// A frozen implementation-2 layer (Keras `trainable: false`) comes out of training with
/// every tensor bit for bit as loaded, while the rest of the model trains.
#[test]
fn frozen_impl2_layer_is_kept_bit_for_bit() {
    let case = data("impl2/case_lc2d_first_sgd");
    let h5 = io::read_h5(&case.join("model.h5")).expect("read model.h5");
    let mut config: serde_json::Value =
        serde_json::from_str(h5.model_config.as_deref().expect("model_config")).expect("JSON");
    let layers = config["config"]["layers"].as_array_mut().expect("layers");
    let lc = layers
        .iter_mut()
        .find(|l| l["config"]["name"] == "lc")
        .expect("layer lc");
    lc["config"]["trainable"] = serde_json::Value::Bool(false);
    let mut model = Model::from_json_str(&config.to_string(), "frozen", &LoadOptions::default())
        .expect("parse");
    model
        .set_keras_weights(&h5.weights, "model.h5")
        .expect("weights");
    let tc: serde_json::Value =
        serde_json::from_str(h5.training_config.as_deref().expect("training_config")).expect("tc");
    let setup = parse_training_config(&tc, "model.h5").expect("setup");
    let before = model.keras_weights().expect("weights");
    let xs = io::read_npy(&case.join("xs.npy")).expect("xs");
    let ys = io::read_npy(&case.join("ys.npy")).expect("ys");
    let mut opt = Optimizer::new(setup.optimizer);
    let compile = CompileOptions {
        engine: Engine::Jit,
        threads: 1,
        max_batch: 4,
        ..Default::default()
    };
    fit_compiled(
        &mut model,
        &mut opt,
        &setup.loss,
        &xs,
        &ys,
        None,
        &fit_opts(2, 4),
        &compile,
        &mut [],
    )
    .expect("fit");
    let after = model.keras_weights().expect("weights");
    let lc_before = before.layer("lc").expect("lc");
    let lc_after = after.layer("lc").expect("lc");
    for ((n, a), (_, b)) in lc_before.weights.iter().zip(&lc_after.weights) {
        assert!(bits(a) == bits(b), "frozen lc/{n} changed");
    }
    let dense = |w: &KerasWeights| w.layer("dense").expect("dense").weights[0].1.clone();
    assert!(
        bits(&dense(&before)) != bits(&dense(&after)),
        "dense did not train"
    );
}

fn impl2_cases() -> Vec<PathBuf> {
    let cases = dirs_with(&data("impl2"), "model.h5");
    assert_eq!(cases.len(), 5, "tests/data/impl2 cases");
    cases
}

/// Largest scaled difference of a loss history from Keras's `history.npy`.
fn history_error(case: &Path, loss: &[f64]) -> f64 {
    let want = io::read_npy(&case.join("history.npy")).expect("history.npy");
    assert_eq!(want.len(), loss.len(), "{}: epochs", case.display());
    let scale = want.iter().fold(1f64, |m, &v| m.max(f64::from(v).abs()));
    want.iter()
        .zip(loss)
        .map(|(&w, &g)| (g - f64::from(w)).abs() / scale)
        .fold(
            0f64,
            |m, e| if e.is_nan() { f64::INFINITY } else { m.max(e) },
        )
}

/// Every engine reproduces Keras's training of a regularized, MaxNorm-constrained
/// implementation-2 layer (and of an unregularized one under AdamW's weight decay):
/// history to 1e-4, every weight (masked entries included) to 1e-3.
#[test]
fn impl2_regularized_constrained_training_matches_tf_keras() {
    for case in impl2_cases() {
        let loaded = Model::load(case.join("model.h5")).expect("load model.h5");
        let pid = impl2_kernels(&loaded)[0].0;
        let spec = &loaded.graph().params[pid];
        let decay_only = name(&case).ends_with("adamw");
        assert_eq!(
            spec.regularizer.is_none() && spec.constraint.is_none(),
            decay_only,
            "{}",
            name(&case)
        );
        for engine in [Engine::Reference, Engine::Jit, Engine::Interp] {
            let what = format!("{} ({})", name(&case), engine.name());
            let mut model = loaded.clone();
            let h = train(&mut model, &case, 3, 4, engine);
            let he = history_error(&case, h.loss());
            assert!(
                he <= 1e-4,
                "{what}: history off by {he:.2e}: {:?}",
                h.loss()
            );
            let (we, key) = weight_error(&model, &case.join("after.npz"));
            assert!(we <= 1e-3, "{what}: {key} off by {we:.2e}");
            eprintln!("{what}: history {he:.2e}, weights {we:.2e} ({key})");
            let moved = model
                .off_mask(pid)
                .zip(loaded.off_mask(pid))
                .is_some_and(|(a, b)| a != b);
            assert!(moved, "{what}: masked entries were not trained");
        }
    }
}

/// The same through the command line: `lcjit fit` with the file's training
/// configuration, `--save-model` and `--history`.
#[test]
fn lcjit_fit_trains_masked_entries_like_keras() {
    let tmp = Tmp::new("cli-fit");
    let case = data("impl2/case_lc1d_first_adam");
    let (out, hist) = (tmp.0.join("trained.h5"), tmp.0.join("history.npy"));
    let st = std::process::Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .arg("fit")
        .arg(case.join("model.h5"))
        .args(["--x".as_ref(), case.join("xs.npy").as_os_str()])
        .args(["--y".as_ref(), case.join("ys.npy").as_os_str()])
        .args([
            "--epochs",
            "3",
            "--batch-size",
            "4",
            "--no-shuffle",
            "--quiet",
        ])
        .args(["--save-model".as_ref(), out.as_os_str()])
        .args(["--history".as_ref(), hist.as_os_str()])
        .status()
        .expect("run lcjit");
    assert!(st.success(), "lcjit fit failed");
    let h = io::read_npy(&hist).expect("history");
    let loss: Vec<f64> = h.iter().map(|&v| f64::from(v)).collect();
    let he = history_error(&case, &loss);
    assert!(he <= 1e-4, "history off by {he:.2e}");
    let trained = Model::load(&out).expect("load trained.h5");
    let (we, key) = weight_error(&trained, &case.join("after.npz"));
    assert!(we <= 1e-3, "{key} off by {we:.2e}");
}

/// Initialization draws the whole implementation-2 tensor (Keras's fans of its shape,
/// masked entries included); the entries survive clone, `with_graph`, `set_params` and a
/// `get_weights`/`set_weights` round trip, and `set_off_mask` checks its input.
#[test]
fn initialized_masked_entries_are_drawn_and_kept() {
    let h5 = io::read_h5(&data("impl2/case_lc2d_last_adam/model.h5")).expect("read");
    let config = h5.model_config.expect("model_config");
    let model = Model::from_json_str(&config, "init", &LoadOptions::default()).expect("init");
    let (pid, _) = impl2_kernels(&model)[0].clone();
    let spec = &model.graph().params[pid];
    // glorot_uniform over (H, W, C, OH, OW, F): fan_in = H·W·C·OH·OW, fan_out = H·W·C·OH·F.
    let k = &spec.keras_shape;
    let r: usize = k[..k.len() - 2].iter().product();
    let (fi, fo) = ((r * k[k.len() - 2]) as f64, (r * k[k.len() - 1]) as f64);
    let limit = (6.0 / (fi + fo)).sqrt() as f32;
    let full = model.keras_weight(pid).expect("keras weight");
    let max = full.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max <= limit && max > 0.9 * limit,
        "max {max}, limit {limit}"
    );
    let off = model.off_mask(pid).expect("off-mask entries");
    assert!(!off.is_empty() && off.iter().all(|&v| v != 0.0 && v.abs() <= limit));
    assert_eq!(off.len() + spec.len(), full.len());

    let weights = model.get_weights().expect("get_weights");
    let mut other = Model::from_json_str(
        &config,
        "other",
        &LoadOptions {
            seed: 9,
            ..Default::default()
        },
    )
    .expect("init");
    assert!(
        other.off_mask(pid) != model.off_mask(pid),
        "seeds give other draws"
    );
    other.set_weights(weights.clone()).expect("set_weights");
    assert_eq!(other.off_mask(pid), model.off_mask(pid));
    assert_eq!(other.get_weights().expect("get_weights"), weights);

    let clone = model.with_graph(model.graph().clone()).expect("with_graph");
    assert_eq!(clone.off_mask(pid), model.off_mask(pid));
    let mut reset = model.clone();
    reset
        .set_params(model.params().to_vec())
        .expect("set_params");
    assert_eq!(reset.get_weights().expect("get_weights"), weights);
    assert!(reset.set_off_mask(pid, vec![0.0; off.len() + 1]).is_err());
    assert!(reset.set_off_mask(pid + 1, vec![]).is_err());
    reset
        .set_off_mask(pid, vec![0.5; off.len()])
        .expect("set_off_mask");
    let merged = reset.keras_weight(pid).expect("keras weight");
    assert_eq!(merged.iter().filter(|&&v| v == 0.5).count(), off.len());
    let mut wrong = weights;
    wrong[pid] = ArrayD::zeros(ndarray::IxDyn(&[3]));
    let e = reset.set_weights(wrong).unwrap_err().to_string();
    assert!(e.contains("lc") && e.contains("kernel"), "{e}");
}

/// The penalty of a model includes the masked entries of its implementation-2 kernels, and
/// per-tensor `clipnorm` on such a regularized kernel is refused with a clear error (Keras
/// clips by the norm of the whole kernel gradient).
#[test]
fn penalty_counts_masked_entries_and_clipnorm_is_refused() {
    use lcjit::train::{regularization, regularization_loss, ParamTable};
    let case = data("impl2/case_lc2d_last_adam");
    let model = Model::load(case.join("model.h5")).expect("load");
    let pid = impl2_kernels(&model)[0].0;
    let reg = model.graph().params[pid].regularizer.expect("regularizer");
    let full = model.keras_weight(pid).expect("kernel");
    let want = regularization(&reg, &full).0;
    let canonical_only = ParamTable::from_graph(model.graph())
        .regularize(model.params(), None)
        .expect("penalty");
    let got = regularization_loss(&model).expect("penalty");
    assert!((got - want).abs() <= 1e-9 * want, "{got} vs {want}");
    assert!(
        canonical_only < 0.9 * want,
        "masked entries should carry part of the penalty"
    );

    let tc = model.training_config().cloned().expect("training_config");
    let mut setup = parse_training_config(&tc, "model.h5").expect("setup");
    setup.optimizer.clipnorm = Some(1.0);
    let xs = io::read_npy(&case.join("xs.npy")).expect("xs");
    let ys = io::read_npy(&case.join("ys.npy")).expect("ys");
    let mut m = model.clone();
    let e = fit_compiled(
        &mut m,
        &mut Optimizer::new(setup.optimizer),
        &setup.loss,
        &xs,
        &ys,
        None,
        &fit_opts(1, 4),
        &CompileOptions::default(),
        &mut [],
    )
    .unwrap_err();
    assert!(matches!(e, lcjit::Error::Usage { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("'lc'") && msg.contains("clipnorm"), "{msg}");
}
