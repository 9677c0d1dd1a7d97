//! `lcjit bench`: time a model on each engine against the machine's measured limits.

use super::load;
use clap::Args;
use lcjit::{Error, LoadOptions, Result};
use std::path::PathBuf;

/// Arguments of `lcjit bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz); without one the initializers are used (seed 0).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Batch size.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Comma-separated engines to time.
    #[arg(long, default_value = "jit,reference")]
    pub engines: String,
    /// Also time a training step (forward, backward, Adam update) on every engine.
    #[arg(long)]
    pub train: bool,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Skip the roofline probe (faster).
    #[arg(long)]
    pub no_probe: bool,
    /// Store LC and Dense kernels in 16 bits for the forward pass (bf16 or f16,
    /// widened in registers: half the bytes streamed at batch 1). Training steps stay f32.
    #[arg(long, value_enum, default_value = "f32")]
    pub weights_dtype: super::WeightsDtype,
    /// SIMD tier past f32x4 for compute-bound register tiles (batch >= 4): AVX-512 or
    /// AVX2 microkernels; every choice computes the same bits.
    #[arg(long, value_enum, default_value = "auto")]
    pub wide: super::Wide,
    /// Time the training step with the whole optimizer update as its own program, instead
    /// of updating LC kernels inside their gradient kernels as fit does (for comparison).
    #[arg(long)]
    pub separate_update: bool,
    /// Autotune the JIT's forward schedules first: time each locally connected layer's
    /// candidate schedules on this machine and keep the fastest (the same bits either
    /// way); the table lists every candidate's time. Choices are cached by layer shape,
    /// CPU and threads (see --tune-cache).
    #[arg(long)]
    pub tune: bool,
    #[command(flatten)]
    pub tune_opts: super::TuneArgs,
}

/// Runs `lcjit bench`.
pub fn bench(a: BenchArgs, budget: u64) -> Result<()> {
    let BenchArgs {
        model,
        weights,
        batch,
        threads,
        engines,
        train,
        json,
        no_probe,
        weights_dtype,
        wide,
        separate_update,
        tune,
        tune_opts,
    } = a;
    let threads =
        threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || batch == 0 {
        return Err(Error::Usage {
            detail: "--threads and --batch must be at least 1".into(),
        });
    }
    let engines = engines
        .split(',')
        .map(|e| lcjit::Engine::parse(e.trim()))
        .collect::<Result<Vec<_>>>()?;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: 0,
    };
    let m = load(&model, weights.as_deref(), &opts)?;
    lcjit::budget::check_run(m.graph(), batch, train)?;
    let name = model
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("model")
        .to_string();
    let report = lcjit::bench::bench_model(
        &name,
        std::sync::Arc::new(m),
        &lcjit::bench::BenchRun {
            batch,
            threads,
            engines: &engines,
            probe: !no_probe,
            train,
            weights_dtype: weights_dtype.into(),
            wide: wide.into(),
            separate_update,
            autotune: tune_opts.autotune(tune),
        },
    )?;
    if json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
