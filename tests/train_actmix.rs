//! Golden cases of activity regularizers and mixed-precision dtype policies
//! (`tests/data/actmix/make.py`, tf-keras 2.21): every case goes through `lcjit run`,
//! `lcjit grad` and `lcjit fit` on the JIT engine, and through the library on every
//! engine, within `1e-4 · max(1, max|ref|)` for outputs and gradients and `1e-3` for the
//! loss history and the weights after `fit(batch_size=4, epochs=2, shuffle=False)`.
//! `lcjit convert` keeps a layer's mixed policy in the saved configuration.

use lcjit::train::{fit_compiled, parse_training_config, FitOptions, Optimizer};
use lcjit::{io, CompileOptions, CompiledModel, Engine, Model};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

const CASES: [&str; 7] = [
    "act_lc1d_l2",
    "act_lc1d_l1",
    "act_lc2d_l2",
    "act_lc1d_out",
    "mixed16_lc1d",
    "mixed16_lc2d",
    "mixedbf16_lc1d",
];

const ENGINES: [Engine; 3] = [Engine::Jit, Engine::Interp, Engine::Reference];

fn case_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/actmix")
        .join(name)
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lcjit-actmix-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// `max|a − b| / max(1, max|b|)`.
fn err(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) -> f64 {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let scale = b.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (*x as f64 - *y as f64).abs())
        .fold(0f64, f64::max)
        / scale
}

fn lcjit(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("run lcjit");
    assert!(
        out.status.success(),
        "lcjit {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn npz(path: &Path) -> Vec<(String, ArrayD<f32>)> {
    io::read_npz(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn npy(path: &Path) -> ArrayD<f32> {
    io::read_npy(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every array of `want` is in `got` within `tol`.
fn check_arrays(
    got: &[(String, ArrayD<f32>)],
    want: &[(String, ArrayD<f32>)],
    tol: f64,
    what: &str,
) {
    for (k, w) in want {
        let g = got.iter().find(|(n, _)| n == k).unwrap_or_else(|| {
            panic!(
                "{what}: no '{k}' (have {:?})",
                got.iter().map(|g| &g.0).collect::<Vec<_>>()
            )
        });
        let e = err(&g.1, w, &format!("{what} {k}"));
        assert!(e <= tol, "{what}: '{k}' off by {e:.3e}");
    }
}

fn check_history(got: &[f64], case: &Path, what: &str) {
    let want = npy(&case.join("history.npy"));
    assert_eq!(got.len(), want.len(), "{what}: epochs");
    let scale = want.iter().fold(1f64, |m, v| m.max(v.abs() as f64));
    for (g, w) in got.iter().zip(want.iter()) {
        let e = (g - *w as f64).abs() / scale;
        assert!(
            e <= 1e-3,
            "{what}: history {got:?} vs {want} (off by {e:.3e})"
        );
    }
}

#[test]
fn command_line_run_grad_fit() {
    for name in CASES {
        let case = case_dir(name);
        let tmp = scratch(name);
        let model = case.join("compiled.h5");
        let (y, g, h, w) = (
            tmp.join("y.npy"),
            tmp.join("g.npz"),
            tmp.join("h.npy"),
            tmp.join("w.npz"),
        );
        let os = |s: &str| std::ffi::OsString::from(s);
        lcjit(&[
            os("run").as_os_str(),
            model.as_os_str(),
            os("--input").as_os_str(),
            case.join("x.npy").as_os_str(),
            os("--output").as_os_str(),
            y.as_os_str(),
        ]);
        let e = err(&npy(&y), &npy(&case.join("y.npy")), name);
        assert!(e <= 1e-4, "{name}: run off by {e:.3e}");
        lcjit(&[
            os("grad").as_os_str(),
            model.as_os_str(),
            os("--input").as_os_str(),
            case.join("x.npy").as_os_str(),
            os("--cotangent").as_os_str(),
            case.join("dy.npy").as_os_str(),
            os("--output").as_os_str(),
            g.as_os_str(),
        ]);
        check_arrays(&npz(&g), &npz(&case.join("grads.npz")), 1e-4, name);
        lcjit(&[
            os("fit").as_os_str(),
            model.as_os_str(),
            os("--x").as_os_str(),
            case.join("xs.npy").as_os_str(),
            os("--y").as_os_str(),
            case.join("ys.npy").as_os_str(),
            os("--epochs").as_os_str(),
            os("2").as_os_str(),
            os("--batch-size").as_os_str(),
            os("4").as_os_str(),
            os("--no-shuffle").as_os_str(),
            os("--quiet").as_os_str(),
            os("--history").as_os_str(),
            h.as_os_str(),
            os("--save-weights").as_os_str(),
            w.as_os_str(),
        ]);
        let hist: Vec<f64> = npy(&h).iter().map(|&v| v as f64).collect();
        check_history(&hist, &case, name);
        check_arrays(&npz(&w), &npz(&case.join("after.npz")), 1e-3, name);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}

#[test]
fn library_on_every_engine() {
    for name in CASES {
        let case = case_dir(name);
        let x = npy(&case.join("x.npy"));
        let dy = npy(&case.join("dy.npy"));
        let want_y = npy(&case.join("y.npy"));
        let want_g = npz(&case.join("grads.npz"));
        // The reference engine computes mixed policies in float32 (not emulated).
        let engines: &[Engine] = if name.starts_with("mixed") {
            &ENGINES[..2]
        } else {
            &ENGINES
        };
        for &engine in engines {
            let what = format!("{name} on {engine:?}");
            let model = Model::load(case.join("compiled.h5")).expect("load");
            let opts = CompileOptions {
                engine,
                threads: 2,
                max_batch: 32,
                ..Default::default()
            };
            let jit = CompiledModel::new(Arc::new(model.clone()), opts.clone()).expect("compile");
            let y = jit.predict(&x).expect("predict");
            let e = err(&y, &want_y, &what);
            assert!(e <= 1e-4, "{what}: predict off by {e:.3e}");
            let g = jit.gradients_keras(&x, &dy).expect("gradients");
            check_arrays(&g, &want_g, 1e-4, &what);

            let mut model = model;
            let tc = model.training_config().cloned().expect("training_config");
            let setup = parse_training_config(&tc, &what).expect("training config");
            let (mut optimizer, loss) = (Optimizer::new(setup.optimizer), setup.loss);
            let xs = npy(&case.join("xs.npy"));
            let ys = npy(&case.join("ys.npy"));
            let fit = FitOptions {
                epochs: 2,
                batch_size: 4,
                ..FitOptions::default()
            };
            let h = fit_compiled(
                &mut model,
                &mut optimizer,
                &loss,
                &xs,
                &ys,
                None,
                &fit,
                &opts,
                &mut [],
            )
            .expect("fit");
            check_history(h.loss(), &case, &what);
            let after: Vec<(String, ArrayD<f32>)> = model
                .keras_weights()
                .expect("weights")
                .layers
                .iter()
                .flat_map(|l| {
                    l.weights
                        .iter()
                        .map(|(n, a)| (format!("{}/{n}", l.layer), a.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            check_arrays(&after, &npz(&case.join("after.npz")), 1e-3, &what);
        }
    }
}

/// `lcjit convert` writes each layer's dtype policy back as it was read (tf-keras's
/// `Policy` object), and the converted model still computes in that policy.
#[test]
fn convert_keeps_the_mixed_policy() {
    for name in ["mixed16_lc1d", "mixedbf16_lc1d"] {
        let case = case_dir(name);
        let tmp = scratch(&format!("convert-{name}"));
        let out = tmp.join("out.h5");
        lcjit(&[
            std::ffi::OsStr::new("convert"),
            case.join("compiled.h5").as_os_str(),
            std::ffi::OsStr::new("--output"),
            out.as_os_str(),
        ]);
        let policy = if name.starts_with("mixed16") {
            "mixed_float16"
        } else {
            "mixed_bfloat16"
        };
        let converted = Model::load(&out).expect("converted model loads");
        let policies: Vec<&str> = converted
            .graph()
            .nodes
            .iter()
            .map(|n| n.policy.name())
            .collect();
        assert!(policies.contains(&policy), "{name}: {policies:?}");
        let bytes = std::fs::read(&out).expect("read");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(policy) && text.contains("\"Policy\""),
            "{name}: no {policy} Policy in the saved config"
        );
        let x = npy(&case.join("x.npy"));
        let jit =
            CompiledModel::new(Arc::new(converted), CompileOptions::default()).expect("compile");
        let e = err(
            &jit.predict(&x).expect("predict"),
            &npy(&case.join("y.npy")),
            name,
        );
        assert!(e <= 1e-4, "{name}: converted model off by {e:.3e}");
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
