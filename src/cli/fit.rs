//! `lcjit fit`: train a model as Keras's `fit` does, with Keras's callbacks given as
//! `key=value` lists (`--early-stopping monitor=val_loss,patience=2`), any subset of
//! keys, Keras's defaults for the rest. An unknown key or a bad value is a usage error
//! naming the flag and key; a monitor that is never logged is only warned about, as
//! Keras does, with the keys that exist.
//!
//! The callbacks run in this order: TerminateOnNaN, ReduceLROnPlateau, EarlyStopping,
//! ModelCheckpoint, CSVLogger (so the CSV log and the history include `lr`); their flags
//! are parsed in `fit_callbacks`.
//!
//! SIGINT/SIGTERM stop training after the running step: the weights of that step are
//! written where the finished run would write them, and a resume state
//! ([`lcjit::train::resume`]) goes to `--resume-state` (by default beside the first
//! output, `<file>.resume`). `lcjit fit <same arguments> --resume <state>` then finishes
//! the run exactly as if it had never stopped; a state for another model, data or options
//! is refused naming the field that differs.

use super::fit_callbacks::{callbacks, usage};
use super::{load, Engine};
use clap::Args;
use lcjit::train::{callbacks::plot_history_svg, Callback, Metric, Resume, ResumeSlot};
use lcjit::{io, Error, LoadOptions, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// Metrics by Keras name, comma-separated (e.g. mae,accuracy); default: the file's.
    #[arg(long)]
    pub metrics: Option<String>,
    /// Fraction of the data, from the end, held out for validation.
    #[arg(long, default_value_t = 0.0)]
    pub validation_split: f32,
    /// Validation inputs (.npy); with --validation-y, replaces --validation-split.
    #[arg(long)]
    pub validation_x: Option<PathBuf>,
    /// Validation targets (.npy).
    #[arg(long)]
    pub validation_y: Option<PathBuf>,
    /// EarlyStopping: monitor=val_loss,patience=0,min_delta=0,mode=auto,baseline=X,
    /// restore_best_weights=false,start_from_epoch=0,verbose=0 (any subset).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "KEY=VALUE,…")]
    pub early_stopping: Option<String>,
    /// ReduceLROnPlateau: monitor=val_loss,factor=0.1,patience=10,mode=auto,
    /// min_delta=0.0001,cooldown=0,min_lr=0,verbose=0 (any subset).
    #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "KEY=VALUE,…")]
    pub reduce_lr_on_plateau: Option<String>,
    /// ModelCheckpoint: PATH[,monitor=val_loss,save_best_only=false,save_weights_only=false,
    /// mode=auto,save_freq=epoch,initial_value_threshold=X,verbose=0]; PATH may hold
    /// {epoch:02d}, {val_loss:.4f}… (Python format).
    #[arg(long, value_name = "PATH[,KEY=VALUE,…]")]
    pub checkpoint: Option<String>,
    /// CSVLogger: one row per epoch (epoch, then the logged keys sorted).
    #[arg(long)]
    pub csv_log: Option<PathBuf>,
    /// TerminateOnNaN: stop after a batch whose loss is NaN or infinite.
    #[arg(long)]
    pub terminate_on_nan: bool,
    /// Draw the loss, validation and metric curves per epoch (.svg).
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the trained weights (.npz or .h5).
    #[arg(long)]
    pub save_weights: Option<PathBuf>,
    /// Write the trained model (.h5 or .keras).
    #[arg(long)]
    pub save_model: Option<PathBuf>,
    /// Write the history: .json (Keras's history dict), .csv (a table) or .npy (the loss).
    #[arg(long)]
    pub history: Option<PathBuf>,
    /// Execution engine: compiled gradient programs (jit, interp) or the reference.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: Engine,
    /// Worker threads (≥ 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress on stderr.
    #[arg(long)]
    pub quiet: bool,
    /// Where an interrupted run (SIGINT/SIGTERM) writes the state --resume continues
    /// from. Default: beside --save-weights, else --save-model, else the model file,
    /// with `.resume` appended.
    #[arg(long, value_name = "PATH")]
    pub resume_state: Option<PathBuf>,
    /// Continue the interrupted run whose state is PATH; give the same arguments as the
    /// interrupted run (anything else is refused naming the field). The result is the
    /// uninterrupted run's, bit for bit.
    #[arg(long, value_name = "PATH")]
    pub resume: Option<PathBuf>,
}

impl FitArgs {
    /// Where an interrupted run writes its resume state.
    fn resume_state_path(&self) -> PathBuf {
        if let Some(p) = &self.resume_state {
            return p.clone();
        }
        let beside = [&self.save_weights, &self.save_model]
            .into_iter()
            .flatten()
            .next()
            .unwrap_or(&self.model);
        let mut name = beside.as_os_str().to_owned();
        name.push(".resume");
        PathBuf::from(name)
    }
}

/// `--metrics m1,m2` resolved against the loss (None: not given).
fn metrics(spec: Option<&str>, loss: &lcjit::train::Loss) -> Result<Option<Vec<Metric>>> {
    let Some(spec) = spec else {
        return Ok(None);
    };
    let names = spec.split(',').map(str::trim).filter(|s| !s.is_empty());
    names
        .map(|n| {
            Metric::parse(n, loss).ok_or_else(|| usage("metrics", format!("unknown metric '{n}'")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Writes the state of an interrupted run and says how to continue it.
fn write_resume_state(a: &FitArgs, state: &lcjit::train::ResumeState) -> Result<()> {
    let path = a.resume_state_path();
    io::write_resume_state(&path, state)?;
    eprintln!(
        "lcjit: training state saved to {}; continue with the same arguments plus \
         --resume {}",
        path.display(),
        shell_word(&path)
    );
    Ok(())
}

/// `path` as one shell word (quoted when it holds anything but safe characters).
fn shell_word(path: &Path) -> String {
    let s = path.to_string_lossy();
    let safe = |c: char| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Checks the flags that need no file.
fn check_args(a: &FitArgs) -> Result<()> {
    if a.threads == 0 || a.batch_size == 0 {
        return Err(Error::Usage {
            detail: "--threads and --batch-size must be at least 1".into(),
        });
    }
    if !(0.0..1.0).contains(&a.validation_split) {
        return Err(Error::Usage {
            detail: "--validation-split must be in [0, 1)".into(),
        });
    }
    if a.validation_x.is_some() != a.validation_y.is_some() {
        return Err(Error::Usage {
            detail: "--validation-x and --validation-y go together".into(),
        });
    }
    if let Some(p) = &a.plot {
        if p.extension().and_then(|e| e.to_str()) != Some("svg") {
            return Err(Error::UnsupportedFile {
                path: p.clone(),
                expected: ".svg (--plot)",
            });
        }
    }
    Ok(())
}

/// Runs `lcjit fit`.
pub fn fit(a: FitArgs, budget: u64) -> Result<()> {
    check_args(&a)?;
    // Parse every callback before the (possibly slow) model load.
    let mut boxed = callbacks(&a)?;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: a.seed,
    };
    let mut m = load(&a.model, a.weights.as_deref(), &opts)?;
    let name = a.model.display().to_string();
    let from_file = m
        .training_config()
        .map(|tc| lcjit::train::parse_training_config(tc, &name))
        .transpose()?;
    let opt_cfg = match (&a.optimizer, &from_file) {
        (Some(o), _) => lcjit::train::parse_optimizer_arg(o)?,
        (None, Some(s)) => s.optimizer.clone(),
        (None, None) => {
            return Err(Error::Usage {
                detail: format!("{name} has no training_config: give --optimizer"),
            })
        }
    };
    let loss_fn = match (&a.loss, &from_file) {
        (Some(l), _) => lcjit::train::parse_loss_arg(l)?,
        (None, Some(s)) => s.loss.clone(),
        (None, None) => {
            return Err(Error::Usage {
                detail: format!("{name} has no training_config: give --loss"),
            })
        }
    };
    let chosen = metrics(a.metrics.as_deref(), &loss_fn)?;
    // A state to continue from, read before the data (a bad one is refused sooner).
    let from = match &a.resume {
        Some(p) => Some(Arc::new(io::read_resume_state_within(p, budget)?)),
        None => None,
    };
    let slot = ResumeSlot::new();
    let xs = io::read_npy_within(&a.x, budget)?;
    let ys = io::read_npy_within(&a.y, budget)?;
    m.check_inputs(std::slice::from_ref(&xs))?;
    let val = match (&a.validation_x, &a.validation_y) {
        (Some(vx), Some(vy)) => {
            let vx = io::read_npy_within(vx, budget)?;
            m.check_inputs(std::slice::from_ref(&vx))?;
            Some((vx, io::read_npy_within(vy, budget)?))
        }
        _ => None,
    };
    let fit_opts = lcjit::train::FitOptions {
        epochs: a.epochs,
        batch_size: a.batch_size,
        shuffle: if a.no_shuffle { None } else { Some(a.seed) },
        validation_split: a.validation_split,
        metrics: chosen.unwrap_or_else(|| from_file.map(|s| s.metrics).unwrap_or_default()),
        verbose: !a.quiet,
        progress: None,
        seed: a.seed,
        update: None,
        stop_on_non_finite: true,
        resume: Resume {
            from,
            capture: Some(slot.clone()),
        },
    };
    let mut opt = lcjit::train::Optimizer::new(opt_cfg);
    let compile = lcjit::CompileOptions {
        engine: a.engine,
        threads: a.threads,
        max_batch: a.batch_size,
        ..Default::default()
    };
    let mut cbs: Vec<&mut dyn Callback> = boxed
        .iter_mut()
        .map(|b| b.as_mut() as &mut dyn Callback)
        .collect();
    // SIGINT/SIGTERM during training stop it after the running step (see
    // `lcjit::interrupt`); a second signal aborts at once, removing partial files.
    let cooperative = lcjit::interrupt::cooperative();
    let result = lcjit::train::fit_compiled(
        &mut m,
        &mut opt,
        &loss_fn,
        &xs,
        &ys,
        val.as_ref().map(|(x, y)| (x, y)),
        &fit_opts,
        &compile,
        &mut cbs,
    );
    drop(cooperative);
    let h = match result {
        Ok(h) => h,
        Err(e @ lcjit::Error::Interrupted { .. }) => {
            // The model holds the weights of the last finished step: write them where
            // the finished run would have, and the state to continue from, then report
            // the interruption.
            if let Some(p) = &a.save_weights {
                m.save_weights(p)?;
            }
            if let Some(p) = &a.save_model {
                m.save(p)?;
            }
            if let Some(state) = slot.take() {
                write_resume_state(&a, &state)?;
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    if let Some(p) = &a.history {
        h.write(p)?;
    }
    if let Some(p) = &a.plot {
        plot_history_svg(&h, p)?;
    }
    if let Some(p) = &a.save_weights {
        m.save_weights(p)?;
    }
    if let Some(p) = &a.save_model {
        m.save(p)?;
    }
    if let Some(reason) = h.stopped {
        eprintln!("note: training stopped early: {reason}");
    }
    Ok(())
}
