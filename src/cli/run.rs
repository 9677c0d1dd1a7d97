//! `lcjit run`: predict with a model over an input `.npy`.

use super::{load, Engine};
use clap::Args;
use lcjit::{io, Error, LoadOptions, Result};
use std::path::PathBuf;
use std::time::Instant;

/// Arguments of `lcjit run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz with keys <layer>/<weight>); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input batch as .npy, shaped (batch, input shape…).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the output .npy.
    #[arg(long)]
    pub output: PathBuf,
    /// Execution engine.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: Engine,
    /// Worker threads (≥ 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the initializers when no weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `lcjit run`.
pub fn run(a: RunArgs, budget: u64) -> Result<()> {
    let RunArgs {
        model,
        weights,
        input,
        output,
        engine,
        threads,
        seed,
    } = a;
    if threads == 0 {
        return Err(Error::Usage {
            detail: "--threads must be at least 1".into(),
        });
    }
    let lib_engine = engine.lib();
    let opts = LoadOptions {
        memory_budget: budget,
        seed,
    };
    let m = load(&model, weights.as_deref(), &opts)?;
    let x = io::read_npy(&input)?;
    m.check_inputs(std::slice::from_ref(&x))?;
    let compiled = lcjit::CompiledModel::new(
        std::sync::Arc::new(m),
        lcjit::CompileOptions {
            engine: lib_engine,
            threads,
            max_batch: x.shape().first().copied().unwrap_or(1).max(1),
        },
    )?;
    let t = Instant::now();
    let y = compiled.predict(&x)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    io::write_npy(&output, &y)?;
    eprintln!(
        "ran {} on {:?} with the {} engine in {ms:.1} ms; wrote {} {:?}",
        model.display(),
        x.shape(),
        format!("{engine:?}").to_lowercase(),
        output.display(),
        y.shape()
    );
    Ok(())
}
