//! Every Keras golden case (`tests/data/keras-golden/*/`, `model.h5`) through the loop IR:
//! lowered for its batch, run by the interpreter with two threads, it matches Keras's
//! `y.npy` (`max|y − ref| ≤ 1e-4 · max(1, max|ref|)`) and the reference path (1e-5 on the
//! same scale).

use lcjit::{io, CompileOptions, CompiledModel, Engine, Model};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("golden directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("x.npy").exists() && p.join("model.h5").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases found");
    v
}

/// `max|a − b| / max(1, max|b|)`.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(1f32, |m, &v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn every_golden_case_matches_keras_through_the_interpreter() {
    let mut failures = Vec::new();
    let cases = cases();
    for case in &cases {
        let result = (|| -> lcjit::Result<(f32, f32)> {
            let x = io::read_npy(&case.join("x.npy"))?;
            let want = io::read_npy(&case.join("y.npy"))?;
            let model = Arc::new(Model::load(case.join("model.h5"))?);
            let reference = model.predict(&x)?;
            let batch = x.shape()[0];
            let compiled = CompiledModel::new(
                model,
                CompileOptions {
                    engine: Engine::Interp,
                    threads: 2,
                    max_batch: batch,
                    ..Default::default()
                },
            )?;
            let got = compiled.predict(&x)?;
            if got.shape() != want.shape() {
                return Err(lcjit::Error::internal(format!(
                    "shape {:?} vs {:?}",
                    got.shape(),
                    want.shape()
                )));
            }
            Ok((rel_err(&got, &want), rel_err(&got, &reference)))
        })();
        match result {
            Ok((keras, reference)) if keras <= 1e-4 && reference <= 1e-5 => {}
            Ok((keras, reference)) => failures.push(format!(
                "{}: error {keras:e} vs Keras, {reference:e} vs reference",
                case.display()
            )),
            Err(e) => failures.push(format!("{}: {e}", case.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
