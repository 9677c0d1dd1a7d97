//! `lcjit convert` through the binary: a Keras 1 model with its weights to `.h5`, `.keras`
//! and `.npz`, each loaded back with the same predictions; bad input exits with code 2
//! and one `error:` line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lcjit::{io, Model};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/keras-golden")
        .join(rel)
}

fn tmp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lcjit-convert-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn lcjit(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("run lcjit")
}

fn path(s: &str) -> PathBuf {
    PathBuf::from(s)
}

#[test]
fn convert_keras1_with_weights_to_every_format() {
    let dir = tmp_dir("ok");
    let k1 = data("case_0101/keras1.json");
    let w = data("case_0101/weights.npz");
    let x = io::read_npy(&data("case_0101/x.npy")).expect("x");
    let mut original = Model::load(&k1).expect("load");
    original.load_weights(&w).expect("weights");
    let want = original.predict(&x).expect("predict");
    for ext in ["h5", "keras", "npz"] {
        let out = dir.join(format!("m.{ext}"));
        let o = lcjit(&[
            &path("convert"),
            &k1,
            &path("--weights"),
            &w,
            &path("--output"),
            &out,
        ]);
        assert!(
            o.status.success(),
            "convert to .{ext}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let back = if ext == "npz" {
            let mut m = Model::load(&k1).expect("load");
            m.load_weights(&out).expect("converted npz");
            m
        } else {
            Model::load(&out).expect("converted model")
        };
        assert_eq!(back.predict(&x).expect("predict"), want, ".{ext}");
    }
    // A converted file converts again (tf-keras to tf-keras).
    let again = dir.join("again.keras");
    let o = lcjit(&[
        &path("convert"),
        &dir.join("m.h5"),
        &path("--output"),
        &again,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = Model::load(&again).expect("load");
    assert_eq!(m.predict(&x).expect("predict"), want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Asserts exit code 2 and one `error:` line on stderr containing every needle.
fn rejects(args: &[&Path], needles: &[&str]) {
    let o = lcjit(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {err}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: '{n}' not in {err}");
    }
}

#[test]
fn convert_rejects_bad_input() {
    let dir = tmp_dir("bad");
    let model = data("case_0001/model.h5");
    let c = path("convert");
    let o = path("--output");
    rejects(
        &[&c, &model, &o, &dir.join("m.txt")],
        &["m.txt", "unsupported"],
    );
    rejects(
        &[&c, &dir.join("missing.h5"), &o, &dir.join("m.h5")],
        &["missing.h5"],
    );
    rejects(
        &[&c, &model, &o, &dir.join("no/such/dir/m.keras")],
        &["m.keras"],
    );
    // Weights of another model.
    let other = data("case_0002/weights.npz");
    rejects(
        &[
            &c,
            &model,
            &path("--weights"),
            &other,
            &o,
            &dir.join("m.h5"),
        ],
        &["weights.npz"],
    );
    // A weights-only file is not a model.
    let weights_only = dir.join("w.h5");
    Model::load(&model)
        .expect("load")
        .save_weights(&weights_only)
        .expect("save_weights");
    rejects(
        &[&c, &weights_only, &o, &dir.join("m.keras")],
        &["w.h5", "weights-only"],
    );
    rejects(&[&c, &model], &["--output"]);
    // Nothing was written by the failed conversions.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["w.h5"]);
    let _ = std::fs::remove_dir_all(&dir);
}
