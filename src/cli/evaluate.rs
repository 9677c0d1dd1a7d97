//! `lcjit evaluate`: the loss and metrics of a model over a dataset, as Keras's
//! `model.evaluate` (see `lcjit::train::evaluate`). Loss and metrics default to the
//! file's `training_config`, like `fit`; the result is printed as Keras's progress bar
//! shows it (`loss: 0.1234 - mae: 0.5678`) or, with `--json`, as one JSON object.

use super::{load, Engine};
use clap::Args;
use lcjit::train::{self, EvaluateOptions};
use lcjit::{io, Error, LoadOptions, Result};
use std::path::PathBuf;

/// Arguments of `lcjit evaluate`.
#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Inputs (.npy), shaped (samples, input shape…).
    #[arg(long)]
    pub x: PathBuf,
    /// Targets (.npy), one per sample.
    #[arg(long)]
    pub y: PathBuf,
    /// Samples per batch (Keras's default 32).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Loss name (e.g. mse) or its Keras JSON config; default: the file's training_config.
    #[arg(long)]
    pub loss: Option<String>,
    /// Comma-separated Keras metric names (e.g. mae,accuracy,AUC); default: the file's
    /// training_config.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Print one JSON object {"loss": …, "<metric>": …} at full precision.
    #[arg(long)]
    pub json: bool,
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

/// Runs `lcjit evaluate`.
pub fn evaluate(a: EvaluateArgs, budget: u64) -> Result<()> {
    if a.threads == 0 || a.batch_size == 0 {
        return Err(Error::Usage {
            detail: "--threads and --batch-size must be at least 1".into(),
        });
    }
    // Bad option values fail before any file is read.
    let metrics_arg = a
        .metrics
        .as_deref()
        .map(train::parse_metrics_arg)
        .transpose()?;
    let loss_arg = a.loss.as_deref().map(train::parse_loss_arg).transpose()?;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: a.seed,
    };
    let m = load(&a.model, a.weights.as_deref(), &opts)?;
    let name = a.model.display().to_string();
    let tc = m.training_config();
    let loss = match (loss_arg, tc.and_then(|t| t.get("loss"))) {
        (Some(l), _) => l,
        (None, Some(v)) if !v.is_null() => train::config::parse_loss_value(v, &name)?,
        (None, _) => {
            return Err(Error::Usage {
                detail: format!("{name} has no loss in a training_config: give --loss"),
            })
        }
    };
    let metrics = match (metrics_arg, tc) {
        (Some(ms), _) => ms,
        (None, Some(t)) => train::parse_metrics(t, &name)?,
        (None, None) => Vec::new(),
    };
    let xs = io::read_npy_within(&a.x, budget)?;
    let ys = io::read_npy_within(&a.y, budget)?;
    let (nx, ny) = (xs.shape().first().copied(), ys.shape().first().copied());
    if nx != ny || nx.unwrap_or(0) == 0 {
        return Err(Error::Usage {
            detail: format!(
                "{} has {} samples and {} has {}: they must have the same non-zero number",
                a.x.display(),
                nx.unwrap_or(0),
                a.y.display(),
                ny.unwrap_or(0)
            ),
        });
    }
    m.check_inputs(std::slice::from_ref(&xs))?;
    let eval_opts = EvaluateOptions {
        batch_size: a.batch_size,
        engine: a.engine,
        threads: a.threads,
    };
    let logs = train::evaluate(&m, &loss, &metrics, &xs, &ys, &eval_opts)?;
    if a.json {
        println!("{}", logs.to_json_line());
    } else {
        println!("{}", logs.keras_line());
    }
    Ok(())
}
