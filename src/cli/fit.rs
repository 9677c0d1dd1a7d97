//! `lcjit fit`: train a model as Keras's `fit` does, with Keras's callbacks given as
//! `key=value` lists (`--early-stopping monitor=val_loss,patience=2`), any subset of
//! keys, Keras's defaults for the rest. An unknown key or a bad value is a usage error
//! naming the flag and key; a monitor that is never logged is only warned about, as
//! Keras does, with the keys that exist.
//!
//! The callbacks run in this order: TerminateOnNaN, ReduceLROnPlateau, EarlyStopping,
//! ModelCheckpoint, CSVLogger (so the CSV log and the history include `lr`).

use super::{load, Engine};
use clap::Args;
use lcjit::train::{
    callbacks::plot_history_svg, CSVLogger, Callback, EarlyStopping, EarlyStoppingConfig, Metric,
    Mode, ModelCheckpoint, ModelCheckpointConfig, ReduceLROnPlateau, ReduceLROnPlateauConfig,
    SaveFreq, TerminateOnNaN,
};
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
}

/// A usage error about `flag`.
fn usage(flag: &str, detail: impl std::fmt::Display) -> Error {
    Error::Usage {
        detail: format!("--{flag}: {detail}"),
    }
}

/// `key=value` pairs of a callback spec; each key must be one of `known`.
fn pairs<'s>(flag: &str, spec: &'s str, known: &[&str]) -> Result<Vec<(&'s str, &'s str)>> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| usage(flag, format!("'{item}' is not key=value")))?;
        let k = k.trim();
        if !known.contains(&k) {
            return Err(usage(
                flag,
                format!("unknown key '{k}' (keys: {})", known.join(", ")),
            ));
        }
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(usage(flag, format!("key '{k}' given twice")));
        }
        out.push((k, v.trim()));
    }
    Ok(out)
}

/// Typed values of a callback spec, each error naming the flag and key.
struct Value<'a> {
    flag: &'a str,
    key: &'a str,
    text: &'a str,
}

impl Value<'_> {
    fn bad(&self, what: &str) -> Error {
        usage(
            self.flag,
            format!("{}='{}' is not {what}", self.key, self.text),
        )
    }

    fn count(&self) -> Result<usize> {
        self.text
            .parse()
            .map_err(|_| self.bad("a whole number ≥ 0"))
    }

    fn number(&self) -> Result<f64> {
        match self.text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(self.bad("a finite number")),
        }
    }

    fn flag(&self) -> Result<bool> {
        match self.text {
            "true" | "True" | "1" => Ok(true),
            "false" | "False" | "0" => Ok(false),
            _ => Err(self.bad("true or false")),
        }
    }

    fn mode(&self) -> Result<Mode> {
        Mode::parse(self.text).ok_or_else(|| self.bad("auto, min or max"))
    }

    fn monitor(&self) -> Result<String> {
        if self.text.is_empty() {
            return Err(self.bad("a logged quantity's name"));
        }
        Ok(self.text.to_string())
    }
}

fn values<'a>(flag: &'a str, spec: &'a str, known: &[&str]) -> Result<Vec<Value<'a>>> {
    Ok(pairs(flag, spec, known)?
        .into_iter()
        .map(|(key, text)| Value { flag, key, text })
        .collect())
}

fn early_stopping(spec: &str) -> Result<EarlyStopping> {
    let known = [
        "monitor",
        "min_delta",
        "patience",
        "mode",
        "baseline",
        "restore_best_weights",
        "start_from_epoch",
        "verbose",
    ];
    let mut c = EarlyStoppingConfig::default();
    for v in values("early-stopping", spec, &known)? {
        match v.key {
            "monitor" => c.monitor = v.monitor()?,
            "min_delta" => c.min_delta = v.number()?,
            "patience" => c.patience = v.count()?,
            "mode" => c.mode = v.mode()?,
            "baseline" if v.text == "None" => c.baseline = None,
            "baseline" => c.baseline = Some(v.number()?),
            "restore_best_weights" => c.restore_best_weights = v.flag()?,
            "start_from_epoch" => c.start_from_epoch = v.count()?,
            _ => c.verbose = v.flag()?,
        }
    }
    Ok(EarlyStopping::new(c))
}

fn reduce_lr(spec: &str) -> Result<ReduceLROnPlateau> {
    let flag = "reduce-lr-on-plateau";
    let known = [
        "monitor",
        "factor",
        "patience",
        "mode",
        "min_delta",
        "cooldown",
        "min_lr",
        "verbose",
    ];
    let mut c = ReduceLROnPlateauConfig::default();
    for v in values(flag, spec, &known)? {
        match v.key {
            "monitor" => c.monitor = v.monitor()?,
            "factor" => c.factor = v.number()?,
            "patience" => c.patience = v.count()?,
            "mode" => c.mode = v.mode()?,
            "min_delta" => c.min_delta = v.number()?,
            "cooldown" => c.cooldown = v.count()?,
            "min_lr" => c.min_lr = v.number()?,
            _ => c.verbose = v.flag()?,
        }
    }
    ReduceLROnPlateau::new(c).map_err(|e| usage(flag, e))
}

fn checkpoint(spec: &str) -> Result<ModelCheckpoint> {
    let flag = "checkpoint";
    let (path, rest) = spec.split_once(',').unwrap_or((spec, ""));
    if path.trim().is_empty() || path.contains('=') {
        return Err(usage(flag, "the first item must be the file path"));
    }
    let known = [
        "monitor",
        "save_best_only",
        "save_weights_only",
        "mode",
        "save_freq",
        "initial_value_threshold",
        "verbose",
    ];
    let mut c = ModelCheckpointConfig::new(path.trim());
    for v in values(flag, rest, &known)? {
        match v.key {
            "monitor" => c.monitor = v.monitor()?,
            "save_best_only" => c.save_best_only = v.flag()?,
            "save_weights_only" => c.save_weights_only = v.flag()?,
            "mode" => c.mode = v.mode()?,
            "save_freq" if v.text == "epoch" => c.save_freq = SaveFreq::Epoch,
            "save_freq" => match v.count()? {
                0 => return Err(v.bad("'epoch' or a number of batches ≥ 1")),
                n => c.save_freq = SaveFreq::Batches(n),
            },
            "initial_value_threshold" => c.initial_value_threshold = Some(v.number()?),
            _ => c.verbose = v.flag()?,
        }
    }
    ModelCheckpoint::new(c).map_err(|e| usage(flag, e))
}

/// The callbacks the flags ask for, in the documented order.
fn callbacks(a: &FitArgs) -> Result<Vec<Box<dyn Callback>>> {
    let mut out: Vec<Box<dyn Callback>> = Vec::new();
    if a.terminate_on_nan {
        out.push(Box::new(TerminateOnNaN::new()));
    }
    if let Some(s) = &a.reduce_lr_on_plateau {
        out.push(Box::new(reduce_lr(s)?));
    }
    if let Some(s) = &a.early_stopping {
        out.push(Box::new(early_stopping(s)?));
    }
    if let Some(s) = &a.checkpoint {
        out.push(Box::new(checkpoint(s)?));
    }
    if let Some(p) = &a.csv_log {
        out.push(Box::new(CSVLogger::new(p)));
    }
    Ok(out)
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
    };
    let mut opt = lcjit::train::Optimizer::new(opt_cfg);
    let compile = lcjit::CompileOptions {
        engine: a.engine,
        threads: a.threads,
        max_batch: a.batch_size,
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
            // the finished run would have, then report the interruption.
            if let Some(p) = &a.save_weights {
                m.save_weights(p)?;
            }
            if let Some(p) = &a.save_model {
                m.save(p)?;
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
