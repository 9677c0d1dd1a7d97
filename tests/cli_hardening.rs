//! The command-line tool on unusual but valid input, on misleading-message cases, on
//! outputs that are devices or FIFOs, and under SIGINT/SIGTERM: identity models run on
//! every engine; rejections name what the user wrote; `/dev/null` and FIFOs are written in
//! place, never replaced; an interrupted `fit` keeps the weights of its last finished step
//! and leaves no temporary file behind.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod common;

use common::TestDir as Tmp;

impl Tmp {
    fn json(&self, name: &str, v: &Value) -> String {
        std::fs::write(self.path(name), v.to_string()).expect("write");
        self.arg(name)
    }
    fn npy(&self, name: &str, a: &ndarray::ArrayD<f32>) -> String {
        ndarray_npy::write_npy(self.path(name), a).expect("write npy");
        self.arg(name)
    }
}

fn lcjit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(args)
        .output()
        .expect("spawn lcjit")
}

/// Asserts exit 2 and one `error:` line containing every needle.
fn rejects(args: &[&str], needles: &[&str]) -> String {
    let out = lcjit(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("note:")).collect();
    assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
    for n in needles {
        assert!(lines[0].contains(n), "{args:?}: '{}' lacks '{n}'", lines[0]);
    }
    stderr
}

fn input_layer(name: &str, shape: &[usize]) -> Value {
    let mut s = vec![Value::Null];
    s.extend(shape.iter().map(|&d| json!(d)));
    json!({"class_name": "InputLayer", "config": {"batch_input_shape": s, "dtype": "float32", "name": name}})
}

fn sequential(layers: Vec<Value>) -> Value {
    json!({"class_name": "Sequential", "config": {"name": "m", "layers": layers},
           "keras_version": "2.15.0", "backend": "tensorflow"})
}

fn dense(name: &str, units: usize, extra: Value) -> Value {
    let mut cfg = json!({"name": name, "units": units, "activation": "linear", "use_bias": true});
    if let (Some(c), Some(e)) = (cfg.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    json!({"class_name": "Dense", "config": cfg})
}

#[test]
fn out_of_range_softmax_axis_is_reported_as_written() {
    let t = Tmp::new("hard-softmax");
    let m = t.json(
        "sm.json",
        &sequential(vec![
            input_layer("x", &[4]),
            json!({"class_name": "Softmax", "config": {"name": "sm", "axis": 99}}),
        ]),
    );
    let e = rejects(&["summary", &m], &["sm", "axis 99", "rank 2"]);
    assert!(!e.contains("axis 98"), "{e}");
}

#[test]
fn constraint_axis_error_names_layer_and_weight() {
    let t = Tmp::new("hard-constraint");
    let maxnorm = json!({"class_name": "MaxNorm", "config": {"max_value": 2.0, "axis": 5}});
    let m = t.json(
        "c.json",
        &sequential(vec![
            input_layer("x", &[4]),
            dense("d", 3, json!({"kernel_constraint": maxnorm})),
        ]),
    );
    rejects(&["summary", &m], &["'d'", "kernel", "axis 5", "[4, 3]"]);
}

#[test]
fn fit_target_shape_error_gives_whole_shapes() {
    let t = Tmp::new("hard-fit_y");
    let m = t.json(
        "m.json",
        &sequential(vec![input_layer("x", &[4]), dense("d", 3, json!({}))]),
    );
    let x = t.npy("x.npy", &ndarray::ArrayD::zeros(ndarray::IxDyn(&[10, 4])));
    let y = t.npy("y.npy", &ndarray::ArrayD::zeros(ndarray::IxDyn(&[10, 7])));
    let e = rejects(
        &[
            "fit",
            &m,
            "--x",
            &x,
            "--y",
            &y,
            "--batch-size",
            "4",
            "--quiet",
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
        ],
        &["[10, 7]", "[10, 3]"],
    );
    assert!(!e.contains("[4, 7]"), "{e}");
}

#[test]
fn identity_model_runs_on_every_engine() {
    let t = Tmp::new("hard-identity");
    let model = json!({"class_name": "Functional", "config": {"name": "id",
        "layers": [{"class_name": "InputLayer", "name": "x", "inbound_nodes": [],
                    "config": {"batch_input_shape": [null, 3], "dtype": "float32", "name": "x"}}],
        "input_layers": [["x", 0, 0]], "output_layers": [["x", 0, 0]]},
        "keras_version": "2.15.0", "backend": "tensorflow"});
    let m = t.json("id.json", &model);
    let xs = ndarray::ArrayD::from_shape_vec(
        ndarray::IxDyn(&[2, 3]),
        vec![1.0f32, -2.0, 3.5, 0.0, 5.0, -6.0],
    )
    .expect("shape");
    let x = t.npy("x.npy", &xs);
    for engine in ["jit", "interp", "reference"] {
        let y = t.path(&format!("y_{engine}.npy"));
        let ys = y.to_string_lossy().to_string();
        let out = lcjit(&[
            "run", &m, "--input", &x, "--output", &ys, "--engine", engine,
        ]);
        assert!(
            out.status.success(),
            "{engine}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: ndarray::ArrayD<f32> = ndarray_npy::read_npy(&y).expect("read");
        assert_eq!(got, xs, "{engine}");
    }
}

#[test]
fn summary_never_runs_an_initializer() {
    let t = Tmp::new("hard-ortho");
    let ortho = json!({"class_name": "Orthogonal", "config": {"gain": 1.0, "seed": null}});
    let m = t.json(
        "o.json",
        &sequential(vec![
            input_layer("x", &[8000]),
            dense(
                "big",
                8000,
                json!({"use_bias": false, "kernel_initializer": ortho}),
            ),
        ]),
    );
    let start = Instant::now();
    let out = lcjit(&["summary", &m]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("64,000,000"));
    // Running it needs the weights: refused at once, naming the layer.
    let x = t.npy("x.npy", &ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 8000])));
    let y = t.path("y.npy").to_string_lossy().to_string();
    rejects(
        &["run", &m, "--input", &x, "--output", &y],
        &["'big'", "Orthogonal"],
    );
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
}

fn small_model(t: &Tmp) -> (String, String) {
    let m = t.json(
        "m.json",
        &sequential(vec![input_layer("x", &[4]), dense("d", 2, json!({}))]),
    );
    let x = t.npy("x.npy", &ndarray::ArrayD::ones(ndarray::IxDyn(&[3, 4])));
    (m, x)
}

#[test]
fn output_onto_dev_null_writes_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let t = Tmp::new("hard-devnull");
    let (m, x) = small_model(&t);
    let out = lcjit(&["run", &m, "--input", &x, "--output", "/dev/null"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata("/dev/null").expect("meta");
    assert!(meta.file_type().is_char_device());
    // A directory is refused, not replaced.
    let d = t.path("dir.npy");
    std::fs::create_dir(&d).expect("mkdir");
    rejects(
        &["run", &m, "--input", &x, "--output", &d.to_string_lossy()],
        &["directory"],
    );
    assert!(d.is_dir());
}

#[test]
fn output_onto_a_fifo_streams_into_it() {
    use std::os::unix::fs::FileTypeExt;
    let t = Tmp::new("hard-fifo");
    let (m, x) = small_model(&t);
    let fifo = t.path("pipe.npy");
    let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).expect("path");
    // SAFETY: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).expect("read fifo"))
    };
    let out = lcjit(&[
        "run",
        &m,
        "--input",
        &x,
        "--output",
        &fifo.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = reader.join().expect("reader");
    assert!(bytes.starts_with(b"\x93NUMPY"), "{} bytes", bytes.len());
    let meta = std::fs::metadata(&fifo).expect("meta");
    assert!(meta.file_type().is_fifo());
    assert!(t.debris().is_empty(), "{:?}", t.debris());
}

/// A `fit` long enough to be interrupted: many epochs of a small model, saving weights.
fn long_fit(t: &Tmp) -> (Vec<String>, PathBuf) {
    let m = t.json(
        "m.json",
        &sequential(vec![input_layer("x", &[16]), dense("d", 16, json!({}))]),
    );
    let x = t.npy(
        "x.npy",
        &ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[64, 16]), |i| (i[0] + i[1]) as f32 * 0.01),
    );
    let y = t.npy(
        "y.npy",
        &ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[64, 16]), |i| {
            (i[0] * i[1]) as f32 * 0.001
        }),
    );
    let w = t.path("w.npz");
    let args = vec![
        "fit".to_string(),
        m,
        "--x".into(),
        x,
        "--y".into(),
        y,
        "--epochs".into(),
        "1000000".into(),
        "--batch-size".into(),
        "8".into(),
        "--quiet".into(),
        "--engine".into(),
        "interp".into(),
        "--save-weights".into(),
        w.to_string_lossy().to_string(),
        "--optimizer".into(),
        "sgd".into(),
        "--loss".into(),
        "mse".into(),
    ];
    (args, w)
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    // SAFETY: sending a signal to our own child process by its id.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

#[test]
fn interrupted_fit_keeps_its_weights_and_leaves_no_debris() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let t = Tmp::new(&format!("hard-sig{sig}"));
        let (args, w) = long_fit(&t);
        let child = Command::new(env!("CARGO_BIN_EXE_lcjit"))
            .args(&args)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(1500));
        signal(&child, sig);
        let out = child.wait_with_output().expect("wait");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(128 + sig), "{stderr}");
        assert!(stderr.contains("interrupted"), "{stderr}");
        let weights =
            ndarray_npy::NpzReader::new(std::fs::File::open(&w).expect("weights written"))
                .expect("npz")
                .names()
                .expect("names");
        assert!(!weights.is_empty());
        assert!(t.debris().is_empty(), "{:?}", t.debris());
    }
}

#[test]
fn a_second_signal_aborts_and_still_leaves_no_debris() {
    let t = Tmp::new("hard-abort");
    let (args, _) = long_fit(&t);
    let child = Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .args(&args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..2 {
        signal(&child, libc::SIGINT);
    }
    let out = child.wait_with_output().expect("wait");
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.debris().is_empty(), "{:?}", t.debris());
}

/// A diverging `lcjit fit` (SGD with a learning rate of 10^6, whose updates overflow
/// float32 from finite gradients) stops and writes finite weights (the epoch's start),
/// not infinities.
#[test]
fn diverging_fit_writes_finite_weights() {
    let t = Tmp::new("hard-diverge");
    let m = t.json(
        "m.json",
        &sequential(vec![input_layer("x", &[4]), dense("d", 2, json!({}))]),
    );
    let x = t.npy(
        "x.npy",
        &ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[16, 4]), |i| (i[0] + i[1]) as f32),
    );
    let y = t.npy(
        "y.npy",
        &ndarray::ArrayD::from_elem(ndarray::IxDyn(&[16, 2]), 1e3f32),
    );
    let w = t.path("w.npz");
    let out = lcjit(&[
        "fit",
        &m,
        "--x",
        &x,
        "--y",
        &y,
        "--epochs",
        "50",
        "--batch-size",
        "4",
        "--quiet",
        "--optimizer",
        r#"{"class_name":"SGD","config":{"learning_rate":1e6}}"#,
        "--loss",
        "mse",
        "--save-weights",
        &w.to_string_lossy(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("stopped early") && stderr.contains("overflowed"),
        "{stderr}"
    );
    let mut npz =
        ndarray_npy::NpzReader::new(std::fs::File::open(&w).expect("weights")).expect("npz");
    let names = npz.names().expect("names");
    assert_eq!(names.len(), 2, "{names:?}");
    for name in names {
        let a: ndarray::ArrayD<f32> = npz.by_name(&name).expect("array");
        assert!(a.iter().all(|v| v.is_finite()), "{name}: {a:?}");
        assert!(a.iter().any(|&v| v != 0.0), "{name}: never trained");
    }
    assert!(t.debris().is_empty(), "{:?}", t.debris());
}
