//! Batched (streaming) prediction and inner-layer outputs, through the library and
//! `lcjit run`, against tf-keras figures (`tests/data/inner/make.py`: a small
//! DeepFace-like model and what `keras.Model(inputs, layer.output).predict` gives for
//! its F7 embedding and its LocallyConnected2D layer) and against the reference engine
//! run on the cut graph. Also: `lcjit bench --json` parses as JSON with every field.

use lcjit::graph::cut;
use lcjit::{io, CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// A fresh directory for one test, removed afterwards.
struct Tmp(PathBuf);
impl Tmp {
    fn new(tag: &str) -> Tmp {
        let d = std::env::temp_dir().join(format!("lcjit-batched-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Tmp(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lcjit(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("spawn lcjit")
}

fn lcjit_ok(args: &[&str]) {
    let out = lcjit(args);
    assert!(
        out.status.success(),
        "lcjit {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts exit 2 with one `error:` line (notes aside) containing every needle.
fn lcjit_rejects(args: &[&str], needles: &[&str]) {
    let out = lcjit(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "'{}' lacks '{n}'", lines[0]);
    }
}

/// `max|a−b| / max(1, max|b|)`, the project's comparison with Keras.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn bits_equal(a: &ArrayD<f32>, b: &ArrayD<f32>) -> bool {
    a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn compiled(model: Model, engine: Engine, max_batch: usize) -> CompiledModel {
    CompiledModel::new(
        Arc::new(model),
        CompileOptions {
            engine,
            threads: 2,
            max_batch,
            ..Default::default()
        },
    )
    .expect("compile")
}

fn expected(key: &str) -> ArrayD<f32> {
    io::read_npz(&data("inner/expected.npz"))
        .expect("expected.npz")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, a)| a)
        .unwrap_or_else(|| panic!("expected.npz has no '{key}'"))
}

fn pseudo_random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let n: usize = shape.iter().product();
    let v = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    ArrayD::from_shape_vec(IxDyn(shape), v).expect("shape")
}

#[test]
fn inner_outputs_match_tf_keras_on_every_engine() {
    let model = Model::load(data("inner/model.h5")).expect("model.h5");
    let x = io::read_npy(&data("inner/x.npy")).expect("x.npy");
    for engine in [Engine::Jit, Engine::Interp, Engine::Reference] {
        let cm = compiled(model.clone(), engine, 32);
        let outs = cm
            .predict_outputs(&[x.view()], &["F7", "L4", "F8", "F7"], 32)
            .expect("predict_outputs");
        let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["F7", "L4", "F8"], "one entry per distinct layer");
        for (name, y) in &outs {
            let err = rel_err(y, &expected(name));
            assert!(err <= 1e-4, "{name} on {engine:?}: relative error {err}");
        }
        // The model's own output, through the same streaming path.
        let y = cm
            .predict_outputs(&[x.view()], &[], 32)
            .expect("model output");
        assert_eq!(y[0].0, "F8");
        assert!(rel_err(&y[0].1, &expected("F8")) <= 1e-4);
    }
}

#[test]
fn inner_outputs_equal_the_reference_path_on_the_cut_graph() {
    let model = Model::load(data("inner/model.h5")).expect("model.h5");
    let x = io::read_npy(&data("inner/x.npy")).expect("x.npy");
    let cm = compiled(model.clone(), Engine::Jit, 32);
    for layers in [
        &["F7"][..],
        &["L4"],
        &["M2", "C1"],
        &["flatten"],
        &["input", "F7"],
    ] {
        let c = cut::outputs_at(model.graph(), layers).expect("cut");
        // Nothing after the last requested layer survives the cut.
        let last = layers
            .iter()
            .map(|l| model.graph().node_by_name(l).expect("layer"))
            .max()
            .expect("one layer");
        assert!(c.node_map.iter().all(|&n| n <= last), "{layers:?}");
        let params = c.select_params(model.params()).expect("params");
        let want = lcjit::reference::forward(&c.graph, &params, std::slice::from_ref(&x))
            .expect("reference on the cut graph");
        let got = cm
            .predict_outputs(&[x.view()], layers, 32)
            .expect("predict_outputs");
        assert_eq!(got.len(), want.len());
        for ((name, g), w) in got.iter().zip(&want) {
            let err = rel_err(g, w);
            assert!(
                err <= 1e-4,
                "{name}: relative error {err} against the reference"
            );
        }
    }
    // A requested model input is the input itself.
    let got = cm
        .predict_outputs(&[x.view()], &["input"], 32)
        .expect("input");
    assert!(bits_equal(&got[0].1, &x));
}

#[test]
fn streaming_is_bitwise_the_batch_at_once_on_the_jit() {
    // Row results do not depend on the batch they fall in: every batch size, with full
    // and partial last batches, gives the bits of one batch of all 70 samples.
    let model = Model::load(data("inner/model.h5")).expect("model.h5");
    let x = io::read_npy(&data("inner/x.npy")).expect("x.npy");
    let cm = compiled(model, Engine::Jit, 70);
    let at_once = cm
        .predict_outputs(&[x.view()], &["L4", "F7", "F8"], 70)
        .expect("one batch");
    for batch in [1, 7, 32, 69] {
        let streamed = cm
            .predict_outputs(&[x.view()], &["L4", "F7", "F8"], batch)
            .expect("streamed");
        for ((name, a), (_, b)) in streamed.iter().zip(&at_once) {
            assert!(bits_equal(a, b), "{name} at batch {batch} differs");
        }
    }
    // predict() chunks by max_batch into the same bits.
    let y_full = cm.predict(&x).expect("predict");
    let cm32 = compiled(
        Model::load(data("inner/model.h5")).expect("model.h5"),
        Engine::Jit,
        32,
    );
    assert!(bits_equal(&cm32.predict(&x).expect("chunked"), &y_full));
    assert!(bits_equal(&at_once[2].1, &y_full));
}

#[test]
fn sink_sees_batches_in_order_and_can_stop() {
    let model = Model::load(data("inner/model.h5")).expect("model.h5");
    let x = io::read_npy(&data("inner/x.npy")).expect("x.npy");
    let cm = compiled(model, Engine::Jit, 32);
    let mut seen = Vec::new();
    cm.predict_into(&[x.view()], &["F7"], 32, &mut |b| {
        assert_eq!(
            (b.total, b.names.len(), b.shapes[0].as_slice()),
            (70, 1, &[16][..])
        );
        assert_eq!(b.data[0].len(), b.rows * 16);
        seen.push((b.start, b.rows));
        Ok(())
    })
    .expect("stream");
    assert_eq!(seen, [(0, 32), (32, 32), (64, 6)]);
    let mut calls = 0;
    let e = cm
        .predict_into(&[x.view()], &[], 32, &mut |_| {
            calls += 1;
            Err(lcjit::Error::Usage {
                detail: "stop".into(),
            })
        })
        .expect_err("the sink's error stops the stream");
    assert_eq!((calls, e.to_string()), (1, "stop".to_string()));
    // Errors: unknown layer (named, with existing names), zero batch, wrong input.
    let e = cm
        .predict_outputs(&[x.view()], &["F9"], 32)
        .expect_err("F9");
    let text = e.to_string();
    assert!(text.contains("'F9'") && text.contains("F7"), "{text}");
    assert!(cm.predict_outputs(&[x.view()], &["F7"], 0).is_err());
    let bad = ArrayD::<f32>::zeros(IxDyn(&[4, 12, 12, 2]));
    let e = cm
        .predict_outputs(&[bad.view()], &["F7"], 32)
        .expect_err("shape");
    assert!(matches!(e, lcjit::Error::Input { .. }), "{e}");
}

#[test]
fn cli_run_writes_inner_layers_to_npz_and_one_to_npy() {
    let t = Tmp::new("cli");
    let model = data("inner/model.h5");
    let (model, x) = (model.to_str().expect("utf8"), data("inner/x.npy"));
    let x = x.to_str().expect("utf8");
    let npz = t.path("inner.npz");
    lcjit_ok(&[
        "run",
        model,
        "--input",
        x,
        "--output",
        npz.to_str().expect("utf8"),
        "--output-layer",
        "F7",
        "--output-layer",
        "L4",
    ]);
    let got = io::read_npz(&npz).expect("npz");
    let keys: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["F7", "L4"]);
    for (k, v) in &got {
        assert!(rel_err(v, &expected(k)) <= 1e-4, "{k}");
    }
    for engine in ["jit", "interp", "reference"] {
        let npy = t.path(&format!("f7-{engine}.npy"));
        lcjit_ok(&[
            "run",
            model,
            "--input",
            x,
            "--output",
            npy.to_str().expect("utf8"),
            "--output-layer",
            "F7",
            "--batch-size",
            "7",
            "--engine",
            engine,
        ]);
        let y = io::read_npy(&npy).expect("npy");
        assert!(rel_err(&y, &expected("F7")) <= 1e-4, "{engine}");
    }
    // A non-f32 input is read into memory (with a note) and gives the same result.
    let x64 = t.path("x64.npy");
    let xs = io::read_npy(Path::new(x)).expect("x");
    ndarray_npy::write_npy(&x64, &xs.mapv(f64::from)).expect("f64 input");
    let y64 = t.path("y64.npy");
    let out = lcjit(&[
        "run",
        model,
        "--input",
        x64.to_str().expect("utf8"),
        "--output",
        y64.to_str().expect("utf8"),
    ]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not memory-mapped"));
    assert!(rel_err(&io::read_npy(&y64).expect("y64"), &expected("F8")) <= 1e-4);
}

#[test]
fn cli_run_rejects_unknown_layers_and_several_outputs_to_npy() {
    let t = Tmp::new("cli-bad");
    let model = data("inner/model.h5");
    let (model, x) = (model.to_str().expect("utf8"), data("inner/x.npy"));
    let x = x.to_str().expect("utf8");
    let npy = t.path("y.npy");
    let npy = npy.to_str().expect("utf8");
    lcjit_rejects(
        &[
            "run",
            model,
            "--input",
            x,
            "--output",
            npy,
            "--output-layer",
            "F9",
        ],
        &["model.h5", "--output-layer", "'F9'", "F7"],
    );
    lcjit_rejects(
        &[
            "run",
            model,
            "--input",
            x,
            "--output",
            npy,
            "--output-layer",
            "F7",
            "--output-layer",
            "L4",
        ],
        &["y.npy", "'F7', 'L4'", ".npz"],
    );
    lcjit_rejects(
        &[
            "run",
            model,
            "--input",
            x,
            "--output",
            npy,
            "--output-layer",
            "F7",
            "--output-layer",
            "F7",
        ],
        &["'F7'", "twice"],
    );
    lcjit_rejects(
        &[
            "run",
            model,
            "--input",
            x,
            "--output",
            npy,
            "--batch-size",
            "0",
        ],
        &["--batch-size"],
    );
    // Nothing is left behind by a failed run.
    assert!(!Path::new(npy).exists());
    assert_eq!(std::fs::read_dir(&t.0).expect("list").count(), 0);
}

#[test]
fn cli_run_batch_32_equals_batch_at_once_on_10000_samples() {
    let t = Tmp::new("cli-10k");
    let x = pseudo_random(&[10_000, 10, 32], 3);
    let xp = t.path("x.npy");
    io::write_npy(&xp, &x).expect("input");
    let model = data("workloads/seed_lc1d.json");
    let model = model.to_str().expect("utf8");
    let xs = xp.to_str().expect("utf8");
    let y32 = t.path("y32.npy");
    let yall = t.path("yall.npy");
    lcjit_ok(&[
        "run",
        model,
        "--input",
        xs,
        "--output",
        y32.to_str().expect("utf8"),
        "--batch-size",
        "32",
        "--threads",
        "2",
    ]);
    lcjit_ok(&[
        "run",
        model,
        "--input",
        xs,
        "--output",
        yall.to_str().expect("utf8"),
        "--batch-size",
        "10000",
        "--threads",
        "2",
    ]);
    let (a, b) = (
        std::fs::read(&y32).expect("y32"),
        std::fs::read(&yall).expect("yall"),
    );
    assert!(a == b, "batch-32 and batch-at-once outputs differ");
    // And both are the model's output (reference engine, its own batch).
    let m = Model::load(data("workloads/seed_lc1d.json")).expect("model");
    let head = x.slice_axis(ndarray::Axis(0), (0..64).into()).to_owned();
    let want = m.predict(&head).expect("reference");
    let y = io::read_npy(&y32).expect("y");
    let got = y.slice_axis(ndarray::Axis(0), (0..64).into()).to_owned();
    assert!(rel_err(&got, &want) <= 1e-4);
}

#[test]
fn bench_json_parses_with_every_field() {
    let out = lcjit(&[
        "bench",
        data("workloads/seed_lc1d.json").to_str().expect("utf8"),
        "--json",
        "--no-probe",
        "--engines",
        "jit",
        "--batch",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    assert_eq!(text.lines().count(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).expect("bench --json is JSON");
    assert_eq!(v["model"], "seed_lc1d");
    assert_eq!(v["batch"], 2);
    assert_eq!(v["params"], 86_720);
    for key in ["threads", "weight_bytes"] {
        assert!(v[key].as_u64().is_some_and(|n| n > 0), "{key}: {text}");
    }
    // The traffic bound's bytes: the weights, the input read once, and every layer's
    // output (batch 2) written and read once.
    let model = Model::load(data("workloads/seed_lc1d.json")).expect("model");
    let g = model.graph();
    let per_row = |id: usize| 4 * g.nodes[id].shape.iter().product::<usize>() as u64;
    let layers: u64 = (0..g.nodes.len())
        .filter(|id| !g.inputs.contains(id))
        .map(|id| 2 * 2 * per_row(id))
        .sum();
    let inputs: u64 = g.inputs.iter().map(|&id| 2 * per_row(id)).sum();
    let weights = v["weight_bytes"].as_u64().expect("weight_bytes");
    assert_eq!(
        v["traffic_bytes"].as_u64(),
        Some(weights + inputs + layers),
        "{text}"
    );
    assert!(
        v["flops"]["forward"].as_u64().is_some_and(|n| n > 0),
        "{text}"
    );
    assert!(v["flops"]["train_step"].is_null(), "{text}");
    assert!(v["compile_ms"]["forward"].as_f64().is_some(), "{text}");
    assert!(v["compile_ms"]["backward"].is_null(), "{text}");
    assert!(
        v["forward_ms"]["jit"].as_f64().is_some_and(|ms| ms > 0.0),
        "{text}"
    );
    for e in ["interp", "reference"] {
        assert!(v["forward_ms"][e].is_null(), "{text}");
        assert!(v["train_step_ms"][e].is_null(), "{text}");
    }
    assert!(v["train_step_ms"]["jit"].is_null(), "{text}");
    assert!(
        v["gbps"].as_f64().is_some() && v["gflops"].as_f64().is_some(),
        "{text}"
    );
    let rl = v["roofline"].as_object().expect("roofline object");
    assert!(
        rl["read_gbps"].is_null() && rl["fma_gflops"].is_null(),
        "{text}"
    );
}

/// A Sequential model over `input` (per-sample shape) with Dense layers `(units,
/// activation)`: seed-0 weights, biases drawn too so that they are not all zero.
fn dense_stack(input: &[usize], layers: &[(usize, &str)]) -> Model {
    let shape: Vec<serde_json::Value> = std::iter::once(serde_json::Value::Null)
        .chain(input.iter().map(|&d| serde_json::json!(d)))
        .collect();
    let mut ls = vec![serde_json::json!({
        "class_name": "InputLayer",
        "config": {"batch_input_shape": shape, "dtype": "float32", "name": "input"}
    })];
    for (n, (units, act)) in layers.iter().enumerate() {
        ls.push(serde_json::json!({
            "class_name": "Dense",
            "config": {
                "name": format!("dense_{n}"), "units": units, "activation": act,
                "use_bias": true, "dtype": "float32", "trainable": true,
                "kernel_initializer": {"class_name": "GlorotUniform", "config": {"seed": null}},
                "bias_initializer": {"class_name": "RandomUniform",
                    "config": {"minval": -0.5, "maxval": 0.5, "seed": null}}
            }
        }));
    }
    let config = serde_json::json!({
        "class_name": "Sequential",
        "config": {"name": "dense_stack", "layers": ls}
    });
    Model::from_json_str(
        &config.to_string(),
        "dense_stack",
        &lcjit::LoadOptions::default(),
    )
    .expect("dense stack")
}

/// Every row's bits at batch sizes 1, 2, 3 and 32 (with partial last batches) and at one
/// or two threads are those of one batch of 32 on the JIT; with `interp`, the
/// interpreter gives the same bits too.
fn assert_batch_invariant(tag: &str, model: Model, interp: bool) {
    let shape: Vec<usize> = std::iter::once(32)
        .chain(model.input_shape().iter().copied())
        .collect();
    let x = pseudo_random(&shape, 11);
    let cm = compiled(model.clone(), Engine::Jit, 32);
    let at_once = cm.predict_outputs(&[x.view()], &[], 32).expect("batch 32");
    for batch in [1, 2, 3] {
        let got = cm.predict_outputs(&[x.view()], &[], batch).expect("batch");
        for ((name, a), (_, b)) in got.iter().zip(&at_once) {
            if let Some(row) = (0..32).find(|&r| {
                !bits_equal(
                    &a.index_axis(ndarray::Axis(0), r).to_owned(),
                    &b.index_axis(ndarray::Axis(0), r).to_owned(),
                )
            }) {
                panic!("{tag}: {name} row {row} differs at batch {batch} from batch 32");
            }
        }
    }
    let one_thread = CompiledModel::new(
        Arc::new(model.clone()),
        CompileOptions {
            engine: Engine::Jit,
            threads: 1,
            max_batch: 32,
            ..Default::default()
        },
    )
    .expect("compile");
    for batch in [1, 32] {
        let got = one_thread
            .predict_outputs(&[x.view()], &[], batch)
            .expect("one thread");
        assert!(
            bits_equal(&got[0].1, &at_once[0].1),
            "{tag}: one thread at batch {batch} differs"
        );
    }
    if interp {
        let ci = compiled(model, Engine::Interp, 32);
        for batch in [1, 32] {
            let got = ci.predict_outputs(&[x.view()], &[], batch).expect("interp");
            assert!(
                bits_equal(&got[0].1, &at_once[0].1),
                "{tag}: the interpreter at batch {batch} differs from the JIT"
            );
        }
    }
}

#[test]
fn dense_rows_are_bitwise_the_same_at_any_batch_size() {
    // Inputs ≥ 256 (GEMV_MIN_IN): the streaming matrix-vector schedule at one row (and
    // for few rows of a kernel ≥ 1 MiB with units % 4 != 0, like YOLO's classifier), the
    // register tile otherwise; both sum in the same input blocks. 1024 inputs: 16 blocks
    // of 64; 258 inputs: 15 blocks of 17 and one of 3.
    let model = dense_stack(&[1024], &[(258, "relu"), (12, "tanh"), (7, "softmax")]);
    assert_batch_invariant("1024→258→12→7", model, true);
    let model = dense_stack(&[300], &[(260, "linear"), (257, "sigmoid"), (5, "linear")]);
    assert_batch_invariant("300→260→257→5", model, true);
    // Rows of a rank-3 input: several rows per sample.
    let model = dense_stack(&[3, 270], &[(9, "relu"), (16, "linear")]);
    assert_batch_invariant("3×270→9→16", model, true);
}

#[test]
fn workloads_are_bitwise_the_same_at_any_batch_size() {
    // deepface.json and yolo_local.json are left out for time (their Dense layers are
    // the cases of the test above).
    let dir = data("workloads");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .expect("workloads")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".json") && n != "deepface.json" && n != "yolo_local.json")
        .collect();
    names.sort();
    assert!(names.len() >= 9, "{names:?}");
    for name in names {
        let model = Model::load(dir.join(&name)).expect("workload");
        assert_batch_invariant(&name, model, false);
    }
}

/// `set_threads` changes the thread count of later runs without recompiling: the same
/// compiled program gives bitwise the same output on 1, 2 and 3 threads, and 0 threads
/// is a usage error.
#[test]
fn set_threads_reuses_the_program_and_keeps_the_bits() {
    let model = Model::load(data("inner/model.h5")).expect("model.h5");
    let x = pseudo_random(&[8, 12, 12, 3], 11);
    for engine in [Engine::Jit, Engine::Interp] {
        let mut cm = compiled(model.clone(), engine, 8);
        cm.set_threads(1).expect("1 thread");
        let before = cm.prepared(8).expect("program");
        let want = cm.predict(&x).expect("1 thread");
        for t in [2, 3] {
            cm.set_threads(t).expect("threads");
            assert_eq!(cm.options().threads, t);
            let y = cm.predict(&x).expect("predict");
            assert!(
                bits_equal(&y, &want),
                "{engine:?}: {t} threads differ from 1"
            );
        }
        let after = cm.prepared(8).expect("program");
        assert!(Arc::ptr_eq(&before, &after), "{engine:?}: recompiled");
        let err = cm.set_threads(0).expect_err("0 threads");
        assert!(err.to_string().contains("at least 1"), "{err}");
        assert_eq!(cm.options().threads, 3, "a refused count changes nothing");
    }
}
