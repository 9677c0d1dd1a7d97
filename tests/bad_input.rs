//! Every kind of bad input gets exit code 2 and exactly one `error: …` line on stderr that
//! names what is wrong (file, layer, field), never a panic or an abort.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("lcjit-bad-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Tmp(d)
    }
    fn file(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, bytes).expect("write temp file");
        p
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs lcjit and asserts exit 2 with one `error:` line containing every needle.
fn rejects(args: &[&str], needles: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("spawn lcjit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(out.status.code(), Some(2), "args {args:?}: stderr {stderr}");
    assert_eq!(
        lines.len(),
        1,
        "args {args:?}: expected one line, got {stderr}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(
            lines[0].to_lowercase().contains(&n.to_lowercase()),
            "args {args:?}: '{}' does not mention '{n}'",
            lines[0]
        );
    }
}

fn summary_rejects(tmp: &Tmp, name: &str, config: &str, needles: &[&str]) {
    let p = tmp.file(name, config);
    let ps = p.to_string_lossy().to_string();
    rejects(&["summary", &ps], &[&[name][..], needles].concat());
}

fn seed_lc1d() -> Value {
    let text = std::fs::read_to_string(data("workloads/seed_lc1d.json")).expect("workload");
    serde_json::from_str(&text).expect("json")
}

/// The config of layer `i` of a Sequential model.
fn layer(v: &mut Value, i: usize) -> &mut Value {
    &mut v["config"]["layers"][i]["config"]
}

#[test]
fn malformed_json_is_rejected() {
    let t = Tmp::new("json");
    summary_rejects(&t, "empty.json", "", &[]);
    summary_rejects(
        &t,
        "trunc.json",
        r#"{"class_name": "Sequential", "config": {"lay"#,
        &[],
    );
    summary_rejects(&t, "garbage.json", "\u{1}\u{2} not json", &[]);
    summary_rejects(&t, "array.json", "[1, 2, 3]", &["model"]);
    summary_rejects(
        &t,
        "layer.json",
        r#"{"class_name": "Dense", "config": {"units": 3}}"#,
        &["Dense"],
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    summary_rejects(&t, "deep.json", &deep, &[]);
}

/// An edit of a config value.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn bad_layer_configs_name_layer_and_field() {
    let t = Tmp::new("layers");
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "unknown_class.json",
            Box::new(|v| v["config"]["layers"][1]["class_name"] = json!("Frobnicate")),
            vec!["Frobnicate"],
        ),
        (
            "zero_filters.json",
            Box::new(|v| layer(v, 1)["filters"] = json!(0)),
            vec!["filters"],
        ),
        (
            "neg_filters.json",
            Box::new(|v| layer(v, 1)["filters"] = json!(-4)),
            vec!["filters"],
        ),
        (
            "huge_filters.json",
            Box::new(|v| layer(v, 1)["filters"] = json!(1_000_000_000_000u64)),
            vec![],
        ),
        (
            "big_kernel.json",
            Box::new(|v| layer(v, 1)["kernel_size"] = json!([40])),
            vec![],
        ),
        (
            "zero_stride.json",
            Box::new(|v| layer(v, 1)["strides"] = json!([0])),
            vec!["strides"],
        ),
        (
            "bad_padding.json",
            Box::new(|v| layer(v, 1)["padding"] = json!("reflect")),
            vec!["padding"],
        ),
        (
            "bad_format.json",
            Box::new(|v| layer(v, 1)["data_format"] = json!("channels_middle")),
            vec!["data_format"],
        ),
        (
            "bad_activation.json",
            Box::new(|v| layer(v, 1)["activation"] = json!("wiggle")),
            vec!["activation"],
        ),
        (
            "bad_impl.json",
            Box::new(|v| layer(v, 1)["implementation"] = json!(7)),
            vec!["implementation"],
        ),
        (
            "no_input_shape.json",
            Box::new(|v| {
                v["config"]["layers"].as_array_mut().map(|l| l.remove(0));
                if let Some(o) = layer(v, 0).as_object_mut() {
                    o.remove("batch_input_shape");
                }
            }),
            vec![],
        ),
        (
            "partial_input_shape.json",
            Box::new(|v| layer(v, 0)["batch_input_shape"] = json!([null, null, 32])),
            vec!["batch_input_shape"],
        ),
        (
            "dup_names.json",
            Box::new(|v| layer(v, 2)["name"] = layer(v, 1)["name"].clone()),
            vec!["duplicate"],
        ),
    ];
    for (name, edit, needles) in cases {
        let mut v = seed_lc1d();
        edit(&mut v);
        summary_rejects(&t, name, &v.to_string(), &needles);
    }
}

#[test]
fn memory_budget_is_enforced_before_allocating() {
    let w = data("workloads/seed_lc2d.json");
    rejects(
        &["summary", &w.to_string_lossy(), "--memory-budget", "1M"],
        &["budget"],
    );
}

#[test]
fn functional_graph_errors() {
    let t = Tmp::new("functional");
    let text =
        std::fs::read_to_string(data("keras-golden/model_gpnet_like/model.json")).expect("json");
    let base: Value = serde_json::from_str(&text).expect("json");
    let mut unknown = base.clone();
    unknown["config"]["layers"][1]["inbound_nodes"] = json!([[["no_such_layer", 0, 0, {}]]]);
    summary_rejects(
        &t,
        "unknown_inbound.json",
        &unknown.to_string(),
        &["no_such_layer"],
    );
    let mut cycle = base.clone();
    let second = cycle["config"]["layers"][2]["name"].clone();
    cycle["config"]["layers"][1]["inbound_nodes"] = json!([[[second, 0, 0, {}]]]);
    summary_rejects(&t, "cycle.json", &cycle.to_string(), &["cycle"]);
}

#[test]
fn weight_file_errors() {
    let t = Tmp::new("weights");
    let case = data("keras-golden/case_0001");
    let model = case.join("model.json").to_string_lossy().to_string();
    let x = case.join("x.npy").to_string_lossy().to_string();
    let out = t.0.join("y.npy").to_string_lossy().to_string();
    let entries = lcjit::io::read_npz(&case.join("weights.npz")).expect("npz");
    let first_key = entries[0].0.clone();
    let (layer_name, weight_name) = first_key.split_once('/').expect("key");

    let missing: Vec<_> = entries[1..].to_vec();
    let p = t.0.join("missing.npz");
    lcjit::io::write_npz(&p, &missing).expect("write");
    rejects(
        &[
            "run",
            &model,
            "--weights",
            &p.to_string_lossy(),
            "--input",
            &x,
            "--output",
            &out,
        ],
        &[layer_name, weight_name, "missing"],
    );

    let mut extra = entries.clone();
    extra.push((format!("{layer_name}/surplus"), entries[0].1.clone()));
    let p = t.0.join("extra.npz");
    lcjit::io::write_npz(&p, &extra).expect("write");
    rejects(
        &[
            "run",
            &model,
            "--weights",
            &p.to_string_lossy(),
            "--input",
            &x,
            "--output",
            &out,
        ],
        &[layer_name],
    );

    let mut wrong = entries.clone();
    wrong[0].1 = ndarray::ArrayD::zeros(ndarray::IxDyn(&[3, 1]));
    let p = t.0.join("wrong.npz");
    lcjit::io::write_npz(&p, &wrong).expect("write");
    rejects(
        &[
            "run",
            &model,
            "--weights",
            &p.to_string_lossy(),
            "--input",
            &x,
            "--output",
            &out,
        ],
        &[layer_name, weight_name, "shape"],
    );
}

#[test]
fn corrupt_and_missing_files() {
    let t = Tmp::new("corrupt");
    let case = data("keras-golden/case_0001");
    let model = case.join("model.json").to_string_lossy().to_string();
    let x = case.join("x.npy").to_string_lossy().to_string();
    let out = t.0.join("y.npy").to_string_lossy().to_string();
    let truncate = |src: &Path, name: &str| {
        let bytes = std::fs::read(src).expect("read");
        t.file(name, &bytes[..bytes.len() / 2])
            .to_string_lossy()
            .to_string()
    };
    let npz = truncate(&case.join("weights.npz"), "w.npz");
    rejects(
        &[
            "run",
            &model,
            "--weights",
            &npz,
            "--input",
            &x,
            "--output",
            &out,
        ],
        &["w.npz"],
    );
    let h5 = truncate(&case.join("model.h5"), "m.h5");
    rejects(&["summary", &h5], &["m.h5"]);
    let npy = truncate(&case.join("x.npy"), "x.npy");
    rejects(
        &["run", &model, "--input", &npy, "--output", &out],
        &["x.npy"],
    );
    let garbage = t
        .file("g.keras", b"PK\x03\x04 this is not a zip")
        .to_string_lossy()
        .to_string();
    rejects(&["summary", &garbage], &["g.keras"]);
    let garbage_h5 = t
        .file("g.h5", b"\x89HDF\r\n\x1a\n garbage")
        .to_string_lossy()
        .to_string();
    rejects(&["summary", &garbage_h5], &["g.h5"]);
    rejects(
        &["summary", "/no/such/model.json"],
        &["/no/such/model.json"],
    );
    rejects(
        &["run", &model, "--input", "/no/such/x.npy", "--output", &out],
        &["/no/such/x.npy"],
    );
    rejects(
        &["summary", &t.file("model.txt", "{}").to_string_lossy()],
        &["model.txt"],
    );
}

#[test]
fn inputs_of_the_wrong_shape_or_rank() {
    let t = Tmp::new("inputs");
    let case = data("keras-golden/case_0001");
    let model = case.join("model.h5").to_string_lossy().to_string();
    let out = t.0.join("y.npy").to_string_lossy().to_string();
    let x = lcjit::io::read_npy(&case.join("x.npy")).expect("x");
    let flat = x
        .clone()
        .into_shape_with_order(ndarray::IxDyn(&[x.len()]))
        .expect("reshape");
    let p = t.0.join("rank.npy");
    lcjit::io::write_npy(&p, &flat).expect("write");
    rejects(
        &[
            "run",
            &model,
            "--input",
            &p.to_string_lossy(),
            "--output",
            &out,
        ],
        &["input", "shape"],
    );
    let mut shape = x.shape().to_vec();
    let last = shape.len() - 1;
    shape[last] += 1;
    let p = t.0.join("size.npy");
    lcjit::io::write_npy(&p, &ndarray::ArrayD::zeros(ndarray::IxDyn(&shape))).expect("write");
    rejects(
        &[
            "run",
            &model,
            "--input",
            &p.to_string_lossy(),
            "--output",
            &out,
        ],
        &["input", "shape"],
    );
    rejects(
        &[
            "run",
            &model,
            "--input",
            &p.to_string_lossy(),
            "--output",
            &out,
            "--threads",
            "0",
        ],
        &["threads"],
    );
    rejects(
        &["run", &model, "--input", &p.to_string_lossy()],
        &["--output"],
    );
}
