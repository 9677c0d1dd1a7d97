//! The job `lcjit` runs without arguments (`cargo run --release`): load the bundled
//! DeepFace L4–L6 model (its config is compiled into the binary), summarize it, predict a
//! batch, and check a bundled Keras golden case against what tf-keras computed.

use lcjit::{io, Error, LoadOptions, Model, Result};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use std::time::Instant;

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

/// Runs the default job.
pub fn run(memory_budget: u64) -> Result<()> {
    let opts = LoadOptions {
        memory_budget,
        seed: 0,
    };
    let t = Instant::now();
    let model = Model::from_json_str(DEFAULT_MODEL, "deepface_l4_l6.json (bundled)", &opts)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    println!("lcjit: bundled model deepface_l4_l6 (weights from its initializers, seed 0)\n");
    print!("{}", model.summary());
    let x = input_for(&model, 1)?;
    let t = Instant::now();
    let y = model.predict(&x)?;
    let run_ms = t.elapsed().as_secs_f64() * 1e3;
    let mean = y.iter().map(|&v| v as f64).sum::<f64>() / y.len().max(1) as f64;
    let max = y.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    println!("\nload + initialize: {load_ms:.0} ms");
    println!(
        "predict, batch 1, reference engine: {run_ms:.0} ms -> output {:?}, mean {mean:.5}, max {max:.5}",
        y.shape()
    );

    let dir = Path::new(GOLDEN_CASE);
    if dir.join("model.h5").exists() {
        let m = Model::load_with(dir.join("model.h5"), &opts)?;
        let x = io::read_npy(&dir.join("x.npy"))?;
        let want = io::read_npy(&dir.join("y.npy"))?;
        let got = m.predict(&x)?;
        if got.shape() != want.shape() {
            return Err(Error::internal(format!(
                "golden check: shape {:?} vs Keras {:?}",
                got.shape(),
                want.shape()
            )));
        }
        let scale = want.iter().fold(1f32, |m, &v| m.max(v.abs()));
        let err = got
            .iter()
            .zip(want.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        let ok = err <= 1e-4 * scale;
        println!(
            "golden check (tf-keras model_mini_deepface, model.h5): max|y - keras| = {err:.2e} (limit {:.1e}) {}",
            1e-4 * scale,
            if ok { "OK" } else { "FAILED" }
        );
        if !ok {
            return Err(Error::internal("golden check failed"));
        }
    }
    Ok(())
}
