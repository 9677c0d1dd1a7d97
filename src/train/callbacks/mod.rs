//! Keras callbacks (tf-keras 2.21 `callbacks.py`): the [`Callback`] trait the training
//! loop calls, the [`Control`] a callback acts through, the [`Logs`] it reads, and the
//! built-ins — [`EarlyStopping`], [`ModelCheckpoint`], [`ReduceLROnPlateau`],
//! [`LearningRateScheduler`], [`CSVLogger`], [`TerminateOnNaN`] — plus [`History`], the
//! record `fit` returns.
//!
//! Order of calls, as `Model.fit` makes them: `on_train_begin`; per epoch
//! `on_epoch_begin`, per batch `on_train_batch_begin` / `on_train_batch_end` (after the
//! optimizer step; the logs hold the epoch's running `loss` and metrics), then validation,
//! then `on_epoch_end` with the epoch's logs (`loss`, metrics, `val_…`), which a callback
//! may extend (ReduceLROnPlateau adds `lr`); then `on_train_end`. Callbacks run in the
//! order given; the history records an epoch's logs after all of them (Keras appends its
//! `History` callback last), so keys they add appear in the history. A stop requested in
//! a batch hook ends the epoch after that batch (validation and `on_epoch_end` still
//! run, as in Keras); one requested in `on_epoch_end` ends training after that epoch.
//!
//! Invariant: a callback changes training only through [`Control`] (stop, learning rate,
//! weights, saving); everything it is told is a copy or a shared borrow.

mod checkpoint;
mod early_stopping;
mod format;
mod history;
mod loggers;
mod plot;
pub(crate) mod progbar;
mod reduce_lr;
mod state;

pub use checkpoint::{ModelCheckpoint, ModelCheckpointConfig, SaveFreq};
pub use early_stopping::{EarlyStopping, EarlyStoppingConfig};
pub use format::{format_path, python_float};
pub use history::History;
pub use loggers::{CSVLogger, TerminateOnNaN};
pub use plot::plot_history_svg;
pub use reduce_lr::{LearningRateScheduler, ReduceLROnPlateau, ReduceLROnPlateauConfig};
pub use state::{CallbackState, StateValue};

use super::optimizer::Optimizer;
use super::schedule::LearningRate;
use crate::error::{Error, Result};
use ndarray::ArrayD;
use std::path::Path;

/// The values of one batch or epoch, by name, in the order Keras logs them (`loss`, each
/// metric, `val_loss`, each `val_` metric, then whatever callbacks add, such as `lr`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logs {
    entries: Vec<(String, f64)>,
}

impl Logs {
    /// No values.
    pub fn new() -> Self {
        Logs::default()
    }

    /// The value of `key`, if logged.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.entries.iter().find(|(k, _)| k == key).map(|e| e.1)
    }

    /// Sets `key` (replacing its value in place, or appending it).
    pub fn set(&mut self, key: &str, value: f64) {
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    /// `(key, value)` pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is logged.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys joined with `,` (what Keras's warnings about a missing monitor list).
    pub fn key_list(&self) -> String {
        self.keys().collect::<Vec<_>>().join(",")
    }
}

/// Whether a monitored quantity should go down or up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Decide from the monitor's name (each callback has its own rule, as in Keras).
    Auto,
    /// Lower is better.
    Min,
    /// Higher is better.
    Max,
}

impl Mode {
    /// Parses `auto`, `min` or `max`.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "auto" => Some(Mode::Auto),
            "min" => Some(Mode::Min),
            "max" => Some(Mode::Max),
            _ => None,
        }
    }
}

/// Fixed facts about the run, as Keras's `callback.params`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FitParams {
    /// Epochs asked for.
    pub epochs: usize,
    /// Batches per epoch.
    pub steps: usize,
    /// Whether `fit` prints progress.
    pub verbose: bool,
}

/// Writes the current weights to a file: `(weights, path, weights_only)`. Provided by
/// the trainer, which knows the model the weights belong to.
pub type SaveFn<'a> = dyn FnMut(&[ArrayD<f32>], &Path, bool) -> Result<()> + 'a;

/// What a callback may do to the training run: stop it, read and set the learning rate,
/// read and replace the weights, save them, report a warning.
pub struct Control<'a> {
    pub(crate) weights: &'a mut [ArrayD<f32>],
    pub(crate) optimizer: &'a mut Optimizer,
    pub(crate) saver: Option<&'a mut SaveFn<'a>>,
    pub(crate) stop: &'a mut Option<String>,
    pub(crate) warnings: &'a mut Vec<String>,
    pub(crate) params: FitParams,
}

impl<'a> Control<'a> {
    /// A control over `weights` and `optimizer` outside a `fit` (for driving callbacks by
    /// hand, as in a custom loop); the stop request and warnings land in `stop` and
    /// `warnings`.
    pub fn new(
        weights: &'a mut [ArrayD<f32>],
        optimizer: &'a mut Optimizer,
        saver: Option<&'a mut SaveFn<'a>>,
        stop: &'a mut Option<String>,
        warnings: &'a mut Vec<String>,
        params: FitParams,
    ) -> Self {
        Control {
            weights,
            optimizer,
            saver,
            stop,
            warnings,
            params,
        }
    }

    /// Asks `fit` to stop (Keras's `model.stop_training = True`); `reason` ends up in
    /// [`History::stopped`].
    pub fn stop_training(&mut self, reason: impl Into<String>) {
        *self.stop = Some(reason.into());
    }

    /// Whether a stop has been asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.is_some()
    }

    /// The run's fixed parameters.
    pub fn params(&self) -> FitParams {
        self.params
    }

    /// The learning rate, as Keras's `optimizer.lr` reads it: the constant, or for a
    /// schedule its value at the last step taken (at step 0 before any).
    pub fn learning_rate(&self) -> f32 {
        let o = &self.optimizer;
        o.config.learning_rate.at(o.iterations.saturating_sub(1))
    }

    /// Sets a constant learning rate for the next steps (float32, as Keras's variable).
    /// An optimizer built on a schedule refuses, as tf-keras does.
    pub fn set_learning_rate(&mut self, lr: f32) -> Result<()> {
        if !matches!(
            self.optimizer.config.learning_rate,
            LearningRate::Constant(_)
        ) {
            return Err(Error::Usage {
                detail: format!(
                    "optimizer {}: its learning rate is a schedule, which a callback cannot set \
                     (give a float learning_rate to let callbacks change it)",
                    self.optimizer.config.name
                ),
            });
        }
        if !lr.is_finite() || lr < 0.0 {
            return Err(Error::Usage {
                detail: format!("learning rate {lr} set by a callback is not a finite value ≥ 0"),
            });
        }
        self.optimizer.config.learning_rate = LearningRate::Constant(lr);
        Ok(())
    }

    /// Every weight of the model (trainable and not), in the trainer's order.
    pub fn weights(&self) -> &[ArrayD<f32>] {
        self.weights
    }

    /// Replaces every weight (Keras's `model.set_weights`): the same number of tensors
    /// with the same shapes.
    pub fn set_weights(&mut self, weights: &[ArrayD<f32>]) -> Result<()> {
        if weights.len() != self.weights.len() {
            return Err(Error::Usage {
                detail: format!(
                    "set_weights: {} tensors given, the model has {}",
                    weights.len(),
                    self.weights.len()
                ),
            });
        }
        for (i, (w, new)) in self.weights.iter().zip(weights).enumerate() {
            if w.shape() != new.shape() {
                return Err(Error::Usage {
                    detail: format!(
                        "set_weights: tensor {i} has shape {:?}, the model's is {:?}",
                        new.shape(),
                        w.shape()
                    ),
                });
            }
        }
        self.weights.clone_from_slice(weights);
        Ok(())
    }

    /// Saves the current weights to `path` (the whole model, or only its weights), with
    /// the model's own writers (atomic; format by extension).
    pub fn save(&mut self, path: &Path, weights_only: bool) -> Result<()> {
        match self.saver.as_mut() {
            Some(save) => save(self.weights, path, weights_only),
            None => Err(Error::Usage {
                detail: format!(
                    "{}: this training loop cannot save the model (no save function)",
                    path.display()
                ),
            }),
        }
    }

    /// Reports a warning (printed on stderr by `fit` and kept in [`History::warnings`]).
    pub fn warn(&mut self, message: impl Into<String>) {
        let m = message.into();
        eprintln!("warning: {m}");
        self.warnings.push(m);
    }
}

/// A hook into `fit`, with Keras's `Callback` methods. Every method defaults to doing
/// nothing; errors abort training and are returned by `fit`.
pub trait Callback {
    /// Before the first epoch.
    fn on_train_begin(&mut self, _ctl: &mut Control<'_>) -> Result<()> {
        Ok(())
    }

    /// At the start of epoch `epoch` (0-based).
    fn on_epoch_begin(&mut self, _epoch: usize, _ctl: &mut Control<'_>) -> Result<()> {
        Ok(())
    }

    /// Before batch `batch` (0-based within the epoch).
    fn on_train_batch_begin(&mut self, _batch: usize, _ctl: &mut Control<'_>) -> Result<()> {
        Ok(())
    }

    /// After batch `batch` has updated the weights; `logs` holds the epoch's running
    /// `loss` and metrics.
    fn on_train_batch_end(
        &mut self,
        _batch: usize,
        _logs: &Logs,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// After epoch `epoch` and its validation; `logs` may be extended.
    fn on_epoch_end(
        &mut self,
        _epoch: usize,
        _logs: &mut Logs,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        Ok(())
    }

    /// After the last epoch; `logs` are the last epoch's (empty if none ran).
    fn on_train_end(&mut self, _logs: &Logs, _ctl: &mut Control<'_>) -> Result<()> {
        Ok(())
    }

    /// What this callback must carry across an interrupted `fit` (kept in the resume
    /// state, see [`crate::train::resume`]); `None`, the default, for a callback that
    /// keeps nothing from one call to the next.
    fn export_state(&self) -> Option<CallbackState> {
        None
    }

    /// Called instead of [`Callback::on_train_begin`] when `fit` resumes an interrupted
    /// run, with what [`Callback::export_state`] returned at the interruption. A stateful
    /// callback takes its state back; the default (a stateless callback) runs
    /// `on_train_begin` and refuses a state it cannot use.
    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        match state {
            None => self.on_train_begin(ctl),
            Some(s) => Err(Error::resume(
                "kind",
                format!("a state of {}, this run's callback keeps none", s.kind),
            )),
        }
    }
}

/// The state a stateful callback's [`Callback::on_train_resume`] needs, or an error
/// saying it is missing.
pub(crate) fn required<'s>(
    state: Option<&'s CallbackState>,
    kind: &str,
) -> Result<&'s CallbackState> {
    let s = state.ok_or_else(|| {
        Error::resume(
            "kind",
            format!("no state kept, this run's callback is {kind}"),
        )
    })?;
    s.expect_kind(kind)?;
    Ok(s)
}

/// A monitored quantity's improvement test, in the two forms Keras writes it (the same
/// up to rounding, which matters for equal-looking values): EarlyStopping's
/// `monitor_op(current − signed_min_delta, reference)` and ReduceLROnPlateau's
/// `current < reference − min_delta` (min) / `current > reference + min_delta` (max).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Monitor {
    /// `true`: higher is better.
    pub greater: bool,
    /// Improvement threshold (EarlyStopping passes `|min_delta|`, ReduceLROnPlateau the
    /// value as given, as Keras does).
    pub min_delta: f64,
    /// `true`: ReduceLROnPlateau's form (the threshold moves the reference).
    pub on_reference: bool,
}

impl Monitor {
    /// The worst possible value (`best` before any epoch).
    pub fn worst(&self) -> f64 {
        if self.greater {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        }
    }

    /// Whether `current` improves on `reference` by more than `min_delta` (false for NaN).
    pub fn improves(&self, current: f64, reference: f64) -> bool {
        let d = self.min_delta;
        match (self.greater, self.on_reference) {
            (false, false) => current + d < reference,
            (true, false) => current - d > reference,
            (false, true) => current < reference - d,
            (true, true) => current > reference + d,
        }
    }
}

/// The value of `monitor` in `logs`, or a warning naming the keys that exist (Keras
/// warns on every such epoch; `warned` makes it once per run, which says the same).
pub(crate) fn monitored(
    logs: &Logs,
    monitor: &str,
    who: &str,
    warned: &mut bool,
    ctl: &mut Control<'_>,
) -> Option<f64> {
    let v = logs.get(monitor);
    if v.is_none() && !*warned {
        *warned = true;
        ctl.warn(format!(
            "{who} conditioned on metric `{monitor}` which is not available. \
             Available metrics are: {}",
            logs.key_list()
        ));
    }
    v
}

#[cfg(test)]
pub(crate) mod test_util;
