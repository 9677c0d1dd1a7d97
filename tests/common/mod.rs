//! Shared harness of the compiled-gradient tests: a graph's gradients of `sum(y · dy)`
//! from the JIT and the loop-IR interpreter (two threads) must agree with the reference
//! backward pass to `1e-4 · max(1, max|ref|)` per array (the golden tolerance; the
//! lowered programs sum in other orders and use polynomial transcendentals), and the JIT
//! must be bitwise identical with one and with two threads. Also the list of the bundled
//! workloads, which several test files walk, and the scratch directory of the
//! command-line tests ([`TestDir`]).

#![allow(dead_code)]

pub mod lc_spec;
pub mod lowered;
pub mod wide;

use lcjit::graph::{Activation, Graph, Initializer};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// Uniform initializer on `[lo, hi)`.
pub fn uniform(lo: f32, hi: f32) -> Initializer {
    Initializer::RandomUniform {
        minval: lo,
        maxval: hi,
    }
}

/// Plain ReLU.
pub fn relu() -> Activation {
    Activation::Relu {
        alpha: 0.0,
        max_value: None,
        threshold: 0.0,
    }
}

/// Deterministic values in `[-1, 1)`.
pub fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = lcjit::init::Rng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
    )
    .expect("shape")
}

/// A graph `input(shape) → op`, with the op as output.
pub fn one(shape: &[usize], op: lcjit::graph::Op) -> Graph {
    let mut g = Graph::new("t");
    let x = g.add_input("x", shape.to_vec()).expect("input");
    let y = g.add("y", op, &[x]).expect("layer");
    g.outputs.push(y);
    g
}

fn max_err(a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str) -> f32 {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Checks the compiled gradients of `g` (weights from seed 7) for each batch size.
pub fn check_gradients(g: Graph, what: &str, batches: &[usize]) {
    let model = Arc::new(Model::from_graph(g, 7).unwrap_or_else(|e| panic!("{what}: {e}")));
    let graph = model.graph().clone();
    for &batch in batches {
        let inputs: Vec<ArrayD<f32>> = graph
            .inputs
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut s = vec![batch];
                s.extend_from_slice(&graph.nodes[n].shape);
                random(&s, 100 + i as u64 + 10 * batch as u64)
            })
            .collect();
        let mut ys = vec![batch];
        ys.extend_from_slice(&graph.nodes[graph.outputs[0]].shape);
        let dy = random(&ys, 999 + batch as u64);
        let (want_dx, want_dp) =
            lcjit::reference::backward::gradients(&graph, model.params(), &inputs, &dy)
                .unwrap_or_else(|e| panic!("{what}: reference: {e}"));
        let mut jit_bits: Option<Vec<Vec<u32>>> = None;
        for (engine, threads) in [(Engine::Interp, 2), (Engine::Jit, 2), (Engine::Jit, 1)] {
            let label = format!(
                "{what} (batch {batch}, {}, {threads} threads)",
                engine.name()
            );
            let compiled = CompiledModel::new(
                model.clone(),
                CompileOptions {
                    engine,
                    threads,
                    max_batch: batch,
                    ..Default::default()
                },
            )
            .unwrap_or_else(|e| panic!("{label}: {e}"));
            let (dx, dp) = compiled
                .gradients(&inputs, &dy)
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            for (i, (g, w)) in dx.iter().zip(&want_dx).enumerate() {
                let e = max_err(g, w, &label);
                assert!(e <= 1e-4, "{label}: d input {i}: error {e}");
            }
            for (p, (g, w)) in dp.iter().zip(&want_dp).enumerate() {
                let e = max_err(g, w, &label);
                let name = &graph.params[p].name;
                assert!(e <= 1e-4, "{label}: d {name}: error {e}");
            }
            if engine == Engine::Jit {
                let bits: Vec<Vec<u32>> = dx
                    .iter()
                    .chain(&dp)
                    .map(|a| a.iter().map(|v| v.to_bits()).collect())
                    .collect();
                match &jit_bits {
                    None => jit_bits = Some(bits),
                    Some(b) => assert!(*b == bits, "{label}: bits differ across thread counts"),
                }
            }
        }
    }
}

/// File names (`*.json`) of the bundled workloads in `tests/data/workloads`, sorted.
pub fn workload_names() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/workloads");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("workloads")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

/// A fresh directory under the system's temporary directory for one test (named by the
/// test's tag and the process id), removed when dropped.
pub struct TestDir(pub std::path::PathBuf);

impl TestDir {
    /// Creates (or empties) the directory of `tag`.
    pub fn new(tag: &str) -> TestDir {
        let d = std::env::temp_dir().join(format!("lcjit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        TestDir(d)
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }

    /// The path of `name` as a command-line argument.
    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_string_lossy().to_string()
    }

    /// Names in the directory that look like temporaries (`*.tmp`): what an interrupted
    /// or failed write must not leave behind.
    pub fn debris(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .expect("read dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".tmp"))
            .collect()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `max|a − b| / max(1, max|b|)`: the golden tests' error measure (the shapes must agree).
pub fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape(), "shape mismatch");
    let scale = b.iter().fold(1f32, |m, &v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// The Keras golden cases (`tests/data/keras-golden`, `keras-grid`): every directory
/// with an `x.npy`, sorted.
pub fn golden_cases() -> Vec<std::path::PathBuf> {
    let mut v: Vec<std::path::PathBuf> = ["keras-golden", "keras-grid"]
        .iter()
        .flat_map(|d| {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data")
                .join(d);
            std::fs::read_dir(dir).expect("golden directory")
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("x.npy").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 48, "golden cases missing");
    v
}

/// The case's model, from `model.h5` or `model.json` + `weights.npz`.
pub fn load_case(case: &std::path::Path) -> Arc<Model> {
    let m = if case.join("model.h5").exists() {
        Model::load(case.join("model.h5")).expect("model.h5")
    } else {
        let mut m = Model::load(case.join("model.json")).expect("model.json");
        m.load_weights(case.join("weights.npz"))
            .expect("weights.npz");
        m
    };
    Arc::new(m)
}

/// Whether a C compiler (`$CC` or `cc`) is on the PATH, for the tests that link object
/// files; without one they print a note and pass, unless `LCJIT_REQUIRE_CROSS=1`.
pub fn cc_or_skip() -> bool {
    let have = std::process::Command::new("sh")
        .arg("-c")
        .arg("command -v ${CC:-cc}")
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        assert!(
            std::env::var("LCJIT_REQUIRE_CROSS").as_deref() != Ok("1"),
            "cc is required"
        );
        eprintln!("note: no cc on PATH; object-file tests skipped");
    }
    have
}
