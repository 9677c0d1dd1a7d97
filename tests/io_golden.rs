//! The io readers against every golden Keras case: `model.h5` / `compiled.h5` must hold
//! exactly the weights of `weights.npz` (same layers, names and bits), and every `.npy`
//! and `.npz` must read.

use std::path::{Path, PathBuf};

use lcjit::io::{read_h5, read_npy, read_npz, read_weights_npz, write_h5_weights, KerasWeights};
use ndarray::ArrayD;

fn golden_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("golden data directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 40,
        "expected the golden cases, found {}",
        dirs.len()
    );
    dirs
}

fn bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that `h5` (all layers, some without weights) holds exactly the weights of `npz`.
fn assert_same_weights(what: &Path, h5: &KerasWeights, npz: &KerasWeights) {
    let with_weights: Vec<_> = h5.layers.iter().filter(|l| !l.weights.is_empty()).collect();
    let h5_names: Vec<&str> = with_weights.iter().map(|l| l.layer.as_str()).collect();
    let npz_names: Vec<&str> = npz.layers.iter().map(|l| l.layer.as_str()).collect();
    assert_eq!(h5_names, npz_names, "{}: layer names", what.display());
    for (a, b) in with_weights.iter().zip(&npz.layers) {
        let an: Vec<&str> = a.weights.iter().map(|(n, _)| n.as_str()).collect();
        let bn: Vec<&str> = b.weights.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(an, bn, "{}: weight names of {}", what.display(), a.layer);
        for ((n, x), (_, y)) in a.weights.iter().zip(&b.weights) {
            assert_eq!(
                x.shape(),
                y.shape(),
                "{}: {}/{n} shape",
                what.display(),
                a.layer
            );
            assert!(
                bits(x) == bits(y),
                "{}: {}/{n} values differ",
                what.display(),
                a.layer
            );
        }
    }
}

#[test]
fn golden_h5_files_match_weights_npz() {
    let mut compiled = 0;
    for dir in golden_dirs() {
        let npz = read_weights_npz(&dir.join("weights.npz")).expect("weights.npz");
        assert!(!npz.layers.is_empty(), "{}: no weights", dir.display());

        let model = dir.join("model.h5");
        let m = read_h5(&model).unwrap_or_else(|e| panic!("{e}"));
        let config = m.model_config.as_deref().expect("model_config");
        let json: serde_json::Value = serde_json::from_str(config).expect("model_config JSON");
        assert!(json.get("class_name").is_some(), "{}", model.display());
        assert_same_weights(&model, &m.weights, &npz);

        let path = dir.join("compiled.h5");
        if path.exists() {
            compiled += 1;
            let c = read_h5(&path).unwrap_or_else(|e| panic!("{e}"));
            let tc = c.training_config.as_deref().expect("training_config");
            let tc: serde_json::Value = serde_json::from_str(tc).expect("training_config JSON");
            assert!(tc.get("loss").is_some(), "{}", path.display());
            let mc = c.model_config.as_deref().expect("model_config");
            serde_json::from_str::<serde_json::Value>(mc).expect("model_config JSON");
            assert_same_weights(&path, &c.weights, &npz);
        }
    }
    assert!(compiled > 0, "no compiled.h5 among the golden cases");
}

#[test]
fn golden_npy_and_npz_files_read() {
    for dir in golden_dirs() {
        let x = read_npy(&dir.join("x.npy")).unwrap_or_else(|e| panic!("{e}"));
        let y = read_npy(&dir.join("y.npy")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!x.is_empty() && !y.is_empty(), "{}", dir.display());
        assert!(x.is_standard_layout());
        let dy = read_npy(&dir.join("dy.npy")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(dy.shape(), y.shape(), "{}", dir.display());
        let grads = read_npz(&dir.join("grads.npz")).unwrap_or_else(|e| panic!("{e}"));
        let gx = grads
            .iter()
            .find(|(k, _)| k == "x")
            .expect("grads.npz key x");
        assert_eq!(gx.1.shape(), x.shape(), "{}", dir.display());
        for extra in ["xs.npy", "ys.npy", "history.npy"] {
            let p = dir.join(extra);
            if p.exists() {
                read_npy(&p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
        let after = dir.join("after.npz");
        if after.exists() {
            read_weights_npz(&after).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

#[test]
fn golden_weights_survive_an_h5_round_trip() {
    let tmp = std::env::temp_dir().join(format!("lcjit-io-golden-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("temp dir");
    for dir in golden_dirs() {
        let m = read_h5(&dir.join("model.h5")).expect("model.h5");
        let full = tmp.join("full.h5");
        write_h5_weights(&full, m.model_config.as_deref(), None, &m.weights).expect("write");
        let back = read_h5(&full).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.model_config, m.model_config);
        assert_eq!(back.training_config, None);
        assert_eq!(back.weights, m.weights, "{}", dir.display());

        let only = tmp.join("weights.h5");
        write_h5_weights(&only, None, None, &m.weights).expect("write");
        let back = read_h5(&only).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.model_config, None);
        assert_eq!(back.weights, m.weights, "{}", dir.display());
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
