//! The callback flags of `lcjit fit`: Keras's callbacks given as `key=value` lists
//! (`--early-stopping monitor=val_loss,patience=2`), any subset of keys, Keras's defaults
//! for the rest. An unknown key or a bad value is a usage error naming the flag and key.

use super::fit::FitArgs;
use lcjit::train::{
    CSVLogger, Callback, EarlyStopping, EarlyStoppingConfig, Mode, ModelCheckpoint,
    ModelCheckpointConfig, ReduceLROnPlateau, ReduceLROnPlateauConfig, SaveFreq, TerminateOnNaN,
};
use lcjit::{Error, Result};

/// A usage error about `flag`.
pub(super) fn usage(flag: &str, detail: impl std::fmt::Display) -> Error {
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
pub(super) fn callbacks(a: &FitArgs) -> Result<Vec<Box<dyn Callback>>> {
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
