//! The job `lcjit` runs without arguments (`cargo run --release`): load the bundled
//! DeepFace L4–L6 model (its config is compiled into the binary), summarize it, compile
//! it with the JIT, check the JIT against the reference path, print the benchmark table,
//! and check a bundled Keras golden case against what tf-keras computed.

use lcjit::{io, CompileOptions, CompiledModel, Engine, Error, LoadOptions, Model, Result};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use std::sync::Arc;

/// DeepFace's three locally connected layers, as written by tf-keras 2.21.
const DEFAULT_MODEL: &str = include_str!("../tests/data/workloads/deepface_l4_l6.json");
/// A Keras golden case (mini DeepFace, produced by tf-keras), when run from the source tree.
const GOLDEN_CASE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/data/keras-golden/model_mini_deepface"
);

fn input_for(model: &Model, batch: usize) -> Result<ArrayD<f32>> {
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let mut rng = lcjit::init::Rng::new(42);
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.uniform() as f32).collect();
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::internal(e.to_string()))
}

/// `max|a − b| / max(1, max|b|)`.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(1f32, |m, &v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// Runs the default job.
pub fn run(memory_budget: u64) -> Result<()> {
    let opts = LoadOptions {
        memory_budget,
        seed: 0,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = Arc::new(Model::from_json_str(
        DEFAULT_MODEL,
        "deepface_l4_l6.json (bundled)",
        &opts,
    )?);
    println!("lcjit: bundled model deepface_l4_l6 (weights from its initializers, seed 0)\n");
    print!("{}", model.summary());

    let jit = CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine: Engine::Jit,
            threads,
            max_batch: 1,
            ..Default::default()
        },
    )?;
    let x = input_for(&model, 1)?;
    let y_jit = jit.predict(&x)?;
    let y_ref = model.predict(&x)?;
    let err = rel_err(&y_jit, &y_ref);
    println!(
        "\nJIT vs reference, batch 1: max relative error {err:.2e} ({})",
        if err <= 1e-5 { "OK" } else { "MISMATCH" }
    );
    if err > 1e-5 {
        return Err(Error::internal("JIT and reference disagree"));
    }
    println!();
    for batch in [1, 32] {
        let report = lcjit::bench::bench_model(
            "deepface_l4_l6",
            model.clone(),
            &lcjit::bench::BenchRun {
                batch,
                threads,
                engines: &[Engine::Jit, Engine::Reference],
                probe: batch == 1,
                train: batch == 32,
                weights_dtype: lcjit::loop_ir::Dtype::F32,
                wide: lcjit::WideTier::Auto,
                separate_update: false,
                autotune: None,
            },
        )?;
        println!("{}", report.table());
    }

    let dir = Path::new(GOLDEN_CASE);
    if dir.join("model.h5").exists() {
        let m = Arc::new(Model::load_with(dir.join("model.h5"), &opts)?);
        let x = io::read_npy(&dir.join("x.npy"))?;
        let want = io::read_npy(&dir.join("y.npy"))?;
        let batch = x.shape().first().copied().unwrap_or(1);
        let (engine, got) = match CompiledModel::new(
            m.clone(),
            CompileOptions {
                engine: Engine::Jit,
                threads,
                max_batch: batch,
                ..Default::default()
            },
        ) {
            Ok(c) => ("jit", c.predict(&x)?),
            Err(Error::Usage { .. }) => ("reference", m.predict(&x)?),
            Err(e) => return Err(e),
        };
        if got.shape() != want.shape() {
            return Err(Error::internal(format!(
                "golden check: shape {:?} vs Keras {:?}",
                got.shape(),
                want.shape()
            )));
        }
        let err = rel_err(&got, &want);
        println!(
            "golden check (tf-keras model_mini_deepface, model.h5, {engine} engine): max relative error {err:.2e} (limit 1e-4) {}",
            if err <= 1e-4 { "OK" } else { "FAILED" }
        );
        if err > 1e-4 {
            return Err(Error::internal("golden check failed"));
        }
    }
    Ok(())
}
