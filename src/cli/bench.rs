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
        batch,
        threads,
        &engines,
        !no_probe,
        train,
    )?;
    if json {
        println!("{}", report.json()?);
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
