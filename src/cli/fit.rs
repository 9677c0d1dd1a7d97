//! `lcjit fit`: train a model as Keras's `fit` does.

use super::{load, Engine};
use clap::Args;
use lcjit::{io, Error, LoadOptions, Result};
use std::path::PathBuf;

/// Arguments of `lcjit fit`.
#[derive(Args, Debug)]
pub struct FitArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Training inputs (.npy).
    #[arg(long)]
    pub x: PathBuf,
    /// Training targets (.npy).
    #[arg(long)]
    pub y: PathBuf,
    /// Passes over the data.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Samples per batch.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Keep the data order (Keras shuffle=False).
    #[arg(long)]
    pub no_shuffle: bool,
    /// Seed of the shuffle and the Dropout masks (and of the initializers when no
    /// weights are given).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Optimizer name (e.g. adam) or its Keras JSON config.
    #[arg(long)]
    pub optimizer: Option<String>,
    /// Loss name (e.g. mse) or its Keras JSON config.
    #[arg(long)]
    pub loss: Option<String>,
    /// Fraction of the data, from the end, held out for validation.
    #[arg(long, default_value_t = 0.0)]
    pub validation_split: f32,
    /// Write the trained weights (.npz or .h5).
    #[arg(long)]
    pub save_weights: Option<PathBuf>,
    /// Write the trained model (.h5 or .keras).
    #[arg(long)]
    pub save_model: Option<PathBuf>,
    /// Write the loss per epoch (.npy).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Execution engine: compiled gradient programs (jit, interp) or the reference.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: Engine,
    /// Worker threads (≥ 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No per-epoch progress on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs `lcjit fit`.
pub fn fit(a: FitArgs, budget: u64) -> Result<()> {
    let FitArgs {
        model,
        weights,
        x,
        y,
        epochs,
        batch_size,
        no_shuffle,
        seed,
        optimizer,
        loss,
        validation_split,
        save_weights,
        save_model,
        history,
        engine,
        threads,
        quiet,
    } = a;
    if threads == 0 || batch_size == 0 {
        return Err(Error::Usage {
            detail: "--threads and --batch-size must be at least 1".into(),
        });
    }
    if !(0.0..1.0).contains(&validation_split) {
        return Err(Error::Usage {
            detail: "--validation-split must be in [0, 1)".into(),
        });
    }
    let opts = LoadOptions {
        memory_budget: budget,
        seed,
    };
    let mut m = load(&model, weights.as_deref(), &opts)?;
    let name = model.display().to_string();
    let from_file = m
        .training_config()
        .map(|tc| lcjit::train::parse_training_config(tc, &name))
        .transpose()?;
    let opt_cfg = match (&optimizer, &from_file) {
        (Some(o), _) => lcjit::train::parse_optimizer_arg(o)?,
        (None, Some(s)) => s.optimizer.clone(),
        (None, None) => {
            return Err(Error::Usage {
                detail: format!("{name} has no training_config: give --optimizer"),
            })
        }
    };
    let loss_fn = match (&loss, &from_file) {
        (Some(l), _) => lcjit::train::parse_loss_arg(l)?,
        (None, Some(s)) => s.loss.clone(),
        (None, None) => {
            return Err(Error::Usage {
                detail: format!("{name} has no training_config: give --loss"),
            })
        }
    };
    let xs = io::read_npy(&x)?;
    let ys = io::read_npy(&y)?;
    m.check_inputs(std::slice::from_ref(&xs))?;
    let fit_opts = lcjit::train::FitOptions {
        epochs,
        batch_size,
        shuffle: if no_shuffle { None } else { Some(seed) },
        validation_split,
        metrics: from_file.map(|s| s.metrics).unwrap_or_default(),
        verbose: !quiet,
        seed,
        update: None,
    };
    let mut opt = lcjit::train::Optimizer::new(opt_cfg);
    let compile = lcjit::CompileOptions {
        engine: engine.lib(),
        threads,
        max_batch: batch_size,
    };
    let h = lcjit::train::fit_compiled(&mut m, &mut opt, &loss_fn, &xs, &ys, &fit_opts, &compile)?;
    if let Some(p) = history {
        let arr = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&[h.loss.len()]),
            h.loss.iter().map(|&v| v as f32).collect(),
        )
        .map_err(|e| Error::internal(e.to_string()))?;
        io::write_npy(&p, &arr)?;
    }
    if let Some(p) = save_weights {
        m.save_weights(&p)?;
    }
    if let Some(p) = save_model {
        m.save(&p)?;
    }
    if let Some(reason) = h.stopped {
        eprintln!("note: training stopped early: {reason}");
    }
    Ok(())
}
