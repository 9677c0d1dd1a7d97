//! Saving round trips: every golden model saved as `.h5`, `.keras` and `.npz` and read
//! back by lcjit predicts bit for bit what the original did, with the same weights; Keras 1
//! configurations are converted to tf-keras files; and the serialized configuration of
//! every golden model and workload parses back to an equal graph.

use std::path::{Path, PathBuf};

use lcjit::frontend::{parse_model_value, serialize::to_keras_json, Dialect};
use lcjit::graph::default_memory_budget;
use lcjit::{io, Error, Model};
use ndarray::ArrayD;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(data("keras-golden"))
        .expect("golden data directory")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.join("model.h5").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 40,
        "expected the golden cases, found {}",
        dirs.len()
    );
    dirs
}

/// A fresh, empty directory, removed when dropped.
struct Tmp(PathBuf);

impl Tmp {
    fn new(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("lcjit-save-{}-{tag}", std::process::id()));
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

fn name(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("?")
        .to_string()
}

fn bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// Asserts that `b` predicts bit for bit what `a` does on `x` and has the same weights.
fn assert_same_model(what: &str, a: &Model, b: &Model, x: &ArrayD<f32>) {
    assert_eq!(a.graph(), b.graph(), "{what}: graph");
    let ya = a.predict(x).expect("predict original");
    let yb = b.predict(x).expect("predict reloaded");
    assert_eq!(ya.shape(), yb.shape(), "{what}: output shape");
    assert!(bits(&ya) == bits(&yb), "{what}: predictions differ");
    let wa = a.keras_weights().expect("weights of original");
    let wb = b.keras_weights().expect("weights of reloaded");
    assert!(wa == wb, "{what}: keras_weights differ");
}

#[test]
fn every_golden_model_round_trips_through_h5_keras_and_npz() {
    let tmp = Tmp::new("golden");
    for dir in golden_dirs() {
        let case = name(&dir);
        let model = Model::load(dir.join("model.h5")).expect("load model.h5");
        let x = io::read_npy(&dir.join("x.npy")).expect("x.npy");
        for ext in ["h5", "keras"] {
            let out = tmp.0.join(format!("{case}.{ext}"));
            model.save(&out).expect("save");
            let back = Model::load(&out).unwrap_or_else(|e| panic!("{case}.{ext}: reload: {e}"));
            assert_eq!(back.dialect(), Dialect::TfKeras, "{case}.{ext}");
            assert_same_model(&format!("{case}.{ext}"), &model, &back, &x);
        }
        let npz = tmp.0.join(format!("{case}.npz"));
        model.save(&npz).expect("save npz");
        let mut back = Model::load(dir.join("model.json")).expect("load model.json");
        back.load_weights(&npz).expect("load saved npz");
        assert_same_model(&format!("{case}.npz"), &model, &back, &x);

        // Weights-only files load into the same model.
        for ext in ["h5", "npz"] {
            let w = tmp.0.join(format!("{case}-weights.{ext}"));
            model.save_weights(&w).expect("save_weights");
            let mut back = Model::load(dir.join("model.json")).expect("load model.json");
            back.load_weights(&w).expect("load saved weights");
            assert_same_model(&format!("{case}-weights.{ext}"), &model, &back, &x);
            if ext == "h5" {
                let e = Model::load(&w).expect_err("a weights-only .h5 is not a model");
                assert!(matches!(e, Error::Format { .. }), "{e}");
            }
        }
    }
}

#[test]
fn training_configs_are_kept() {
    let tmp = Tmp::new("compiled");
    let mut seen = 0;
    for dir in golden_dirs() {
        let compiled = dir.join("compiled.h5");
        if !compiled.is_file() {
            continue;
        }
        seen += 1;
        let model = Model::load(&compiled).expect("load compiled.h5");
        let tc = model
            .training_config()
            .expect("compiled.h5 has a training_config");
        for ext in ["h5", "keras"] {
            let out = tmp.0.join(format!("{}.{ext}", name(&dir)));
            model.save(&out).expect("save");
            let back = Model::load(&out).expect("reload");
            assert_eq!(back.training_config(), Some(tc), "{}", out.display());
        }
    }
    assert!(seen > 0, "no compiled.h5 among the golden cases");
}

#[test]
fn keras1_models_convert_to_tf_keras_files() {
    let tmp = Tmp::new("keras1");
    let mut seen = 0;
    for dir in golden_dirs() {
        let k1 = dir.join("keras1.json");
        if !k1.is_file() {
            continue;
        }
        seen += 1;
        let case = name(&dir);
        let mut model = Model::load(&k1).expect("load keras1.json");
        assert_eq!(model.dialect(), Dialect::Keras1, "{case}");
        model
            .load_weights(dir.join("weights.npz"))
            .expect("weights.npz");
        let x = io::read_npy(&dir.join("x.npy")).expect("x.npy");
        for ext in ["h5", "keras"] {
            let out = tmp.0.join(format!("{case}.{ext}"));
            model.save(&out).expect("save");
            let back = Model::load(&out).expect("reload");
            assert_eq!(back.dialect(), Dialect::TfKeras, "{case}.{ext}");
            assert_same_model(&format!("{case} keras1 -> {ext}"), &model, &back, &x);
        }
    }
    assert!(seen >= 10, "expected the Keras 1 cases, found {seen}");
}

/// `to_keras_json` of the graph parsed from `path` parses back to an equal graph.
fn assert_config_round_trips(path: &Path) {
    let text = std::fs::read_to_string(path).expect("read config");
    let src = path.display().to_string();
    let parsed = lcjit::frontend::parse_model_json(&text, &src, default_memory_budget())
        .unwrap_or_else(|e| panic!("{e}"));
    let json = to_keras_json(&parsed.graph);
    assert_eq!(json["keras_version"], "2.21.0", "{src}");
    assert_eq!(json["backend"], "tensorflow", "{src}");
    let back = parse_model_value(&json, "<serialized>", default_memory_budget())
        .unwrap_or_else(|e| panic!("{src}: serialized config does not parse: {e}\n{json}"));
    assert_eq!(back.dialect, Dialect::TfKeras, "{src}");
    assert!(
        back.graph == parsed.graph,
        "{src}: graphs differ\noriginal: {:#?}\nserialized: {:#?}",
        parsed.graph,
        back.graph
    );
    // Serializing is deterministic.
    assert_eq!(to_keras_json(&back.graph), json, "{src}");
}

#[test]
fn serialized_configs_parse_back_to_equal_graphs() {
    let mut n = 0;
    for dir in golden_dirs() {
        for file in ["model.json", "keras1.json"] {
            let p = dir.join(file);
            if p.is_file() {
                assert_config_round_trips(&p);
                n += 1;
            }
        }
    }
    let workloads: Vec<PathBuf> = std::fs::read_dir(data("workloads"))
        .expect("workloads")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    assert!(workloads.len() >= 10, "expected the workloads");
    for p in &workloads {
        assert_config_round_trips(p);
        n += 1;
    }
    assert!(n >= 60, "only {n} configs checked");
}

#[test]
fn sequential_and_functional_envelopes() {
    let seq = data("keras-golden/case_0001/model.json");
    let m = Model::load(&seq).expect("load");
    let json = to_keras_json(m.graph());
    assert_eq!(json["class_name"], "Sequential");
    let layers = json["config"]["layers"].as_array().expect("layers");
    assert_eq!(layers[0]["class_name"], "InputLayer");
    for l in layers {
        assert_eq!(l["module"], "keras.layers");
        assert!(l["registered_name"].is_null());
        assert!(l.get("inbound_nodes").is_none());
    }
    let f = Model::load(data("keras-golden/model_gpnet_like/model.json")).expect("load");
    let json = to_keras_json(f.graph());
    assert_eq!(json["class_name"], "Functional");
    let layers = json["config"]["layers"].as_array().expect("layers");
    assert!(layers.iter().all(|l| l.get("inbound_nodes").is_some()));
    assert!(json["config"]["input_layers"].is_array());
    // The golden Functional model's own config, key for key, on the keys Keras reads.
    let original: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(data("keras-golden/model_gpnet_like/model.json")).expect("read"),
    )
    .expect("json");
    let orig_layers = original["config"]["layers"].as_array().expect("layers");
    assert_eq!(orig_layers.len(), layers.len());
    for (a, b) in orig_layers.iter().zip(layers) {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(a["class_name"], b["class_name"]);
        assert_eq!(a["inbound_nodes"], b["inbound_nodes"], "{}", a["name"]);
    }
    assert_eq!(
        original["config"]["input_layers"],
        json["config"]["input_layers"]
    );
    assert_eq!(
        original["config"]["output_layers"],
        json["config"]["output_layers"]
    );
}

#[test]
fn unsupported_extensions_are_refused() {
    let tmp = Tmp::new("ext");
    let m = Model::load(data("keras-golden/case_0001/model.h5")).expect("load");
    for name in ["m.json", "m.txt", "m"] {
        let e = m.save(&tmp.0.join(name)).expect_err("unsupported");
        assert!(matches!(e, Error::UnsupportedFile { .. }), "{e}");
    }
    let e = m
        .save_weights(&tmp.0.join("w.keras"))
        .expect_err("unsupported");
    assert!(matches!(e, Error::UnsupportedFile { .. }), "{e}");
    let e = m
        .save(&tmp.0.join("no/such/dir/m.keras"))
        .expect_err("missing directory");
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert_eq!(std::fs::read_dir(&tmp.0).expect("list").count(), 0);
}
