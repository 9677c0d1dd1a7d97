//! `lcjit grad`: gradients of `sum(y · dy)` for the input and every trainable weight.

use super::{load, Engine};
use clap::Args;
use lcjit::{io, Error, LoadOptions, Result};
use std::path::PathBuf;

/// Arguments of `lcjit grad`.
#[derive(Args, Debug)]
pub struct GradArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz with keys <layer>/<weight>); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input batch as .npy, shaped (batch, input shape…).
    #[arg(long)]
    pub input: PathBuf,
    /// Cotangent dy as .npy, shaped like the model's output.
    #[arg(long)]
    pub cotangent: PathBuf,
    /// Where to write the gradients (.npz).
    #[arg(long)]
    pub output: PathBuf,
    /// Execution engine: compiled backward programs (jit, interp) or the reference.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: Engine,
    /// Worker threads (≥ 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the initializers when no weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Runs `lcjit grad`.
pub fn grad(a: GradArgs, budget: u64) -> Result<()> {
    let GradArgs {
        model,
        weights,
        input,
        cotangent,
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
    if output.extension().and_then(|e| e.to_str()) != Some("npz") {
        return Err(Error::UnsupportedFile {
            path: output,
            expected: ".npz",
        });
    }
    let opts = LoadOptions {
        memory_budget: budget,
        seed,
    };
    let m = load(&model, weights.as_deref(), &opts)?;
    let x = io::read_npy_within(&input, budget)?;
    let dy = io::read_npy_within(&cotangent, budget)?;
    m.check_inputs(std::slice::from_ref(&x))?;
    lcjit::budget::check_run(m.graph(), x.shape().first().copied().unwrap_or(1), true)?;
    let compiled = lcjit::CompiledModel::new(
        std::sync::Arc::new(m),
        lcjit::CompileOptions {
            engine,
            threads,
            max_batch: 1,
            ..Default::default()
        },
    )?;
    let grads = compiled.gradients_keras(&x, &dy)?;
    io::write_npz(&output, &grads)?;
    eprintln!(
        "wrote {} gradients of {} to {}",
        grads.len(),
        model.display(),
        output.display()
    );
    Ok(())
}
