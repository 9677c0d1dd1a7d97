//! The public types of [`super::fit`]'s interface: its options ([`FitOptions`], with the
//! progress destination [`ProgressSink`]) and the functions a trainer lends it
//! ([`StepFns`]: the step, validation predictions, saving, gradient recycling and the
//! training randomness).

use super::super::callbacks::SaveFn;
use super::super::evaluate::BatchOutput;
use super::super::metrics::Metric;
use super::super::optimizer::{Optimizer, PendingUpdate};
use crate::error::Result;
use crate::graph::ParamId;
use ndarray::ArrayD;

/// Options of [`super::fit`] (Keras `fit` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per batch (the last batch may be smaller); also the validation batch.
    pub batch_size: usize,
    /// `None`: no shuffling (`shuffle=False`); `Some(seed)`: a new permutation per epoch.
    pub shuffle: Option<u64>,
    /// Fraction of the data, taken from the end, held out for validation (ignored when
    /// validation data is given).
    pub validation_split: f32,
    /// Metrics to report (`loss` always is).
    pub metrics: Vec<Metric>,
    /// Print progress to stderr as Keras does: a bar per epoch on a terminal, one line
    /// per epoch elsewhere.
    pub verbose: bool,
    /// Where progress goes with `verbose`: `None` to stderr (a redrawn bar on a
    /// terminal, one line per epoch elsewhere); `Some` to that sink, a bar when it says
    /// it is dynamic (Keras's `verbose=1` on a console) and one line per epoch otherwise
    /// (`verbose=2`).
    pub progress: Option<ProgressSink>,
    /// Seed of the training-mode randomness the step draws (Dropout masks in
    /// [`crate::train::fit_model`]); the fixed default makes runs reproducible.
    pub seed: u64,
    /// Where the optimizer update runs: `None` on the host ([`crate::train::Optimizer::step`]),
    /// `Some((engine, threads))` as a compiled loop nest over all parameters
    /// ([`crate::train::Optimizer::step_compiled`]; bitwise the same result).
    pub update: Option<(crate::Engine, usize)>,
    /// Stop before a step whose loss or gradient is not finite, so the weights stay those
    /// of the last finite step (found by a scan of the gradients; no copy of the weights);
    /// and when a finite gradient's update overflows float32 (a huge learning rate),
    /// restore the weights of the epoch's start (one copy per epoch, counted in the
    /// memory budget) and stop. Off by default, as in Keras, where training runs on
    /// through a NaN loss unless the `TerminateOnNaN` callback stops it (after the
    /// non-finite update). `lcjit fit` turns it on, because a diverged run would
    /// otherwise write NaN weights over the user's file.
    pub stop_on_non_finite: bool,
    /// Resuming: leave a [`crate::train::resume::ResumeState`] behind when interrupted, or
    /// continue from one (see [`crate::train::resume`]). The default does neither.
    pub resume: crate::train::resume::Resume,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: None,
            validation_split: 0.0,
            metrics: Vec::new(),
            verbose: false,
            progress: None,
            seed: 0,
            update: None,
            stop_on_non_finite: false,
            resume: Default::default(),
        }
    }
}

/// A destination for `fit`'s progress display (e.g. Python's `sys.stdout`, where a
/// notebook shows it): `write` receives each piece of text as Keras would print it
/// (`\r` redraws included); `dynamic` asks for the redrawn bar.
#[derive(Clone)]
pub struct ProgressSink {
    /// Writes one piece of progress text.
    pub write: std::sync::Arc<dyn Fn(&str) + Send + Sync>,
    /// Redraw a bar in place (a console) rather than one line per epoch.
    pub dynamic: bool,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink")
            .field("dynamic", &self.dynamic)
            .finish_non_exhaustive()
    }
}

impl PartialEq for ProgressSink {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.write, &other.write) && self.dynamic == other.dynamic
    }
}

/// What the gradient side returns for one batch.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// Data loss of the batch (`sum_over_batch_size`), activity regularization included.
    pub loss: f64,
    /// Gradient of `loss` for every parameter (zeros or anything for non-trainable ones).
    pub grads: Vec<ArrayD<f32>>,
    /// The batch's predictions, if metrics are wanted.
    pub y_pred: Option<ArrayD<f32>>,
    /// New values of non-trainable parameters computed by the step (BatchNorm moving
    /// statistics), assigned after the optimizer step. A trainable parameter here is an
    /// error: those belong to the optimizer.
    pub updates: Vec<(ParamId, ArrayD<f32>)>,
}

/// `(params, x batch, y batch) → loss and gradients` at those params.
pub type StepFn<'c> =
    dyn FnMut(&[ArrayD<f32>], &ArrayD<f32>, &ArrayD<f32>) -> Result<StepOutput> + 'c;

/// What an in-place step did (see [`InPlaceStepFn`]).
#[derive(Debug)]
pub enum InPlaceStep {
    /// The forward pass gave this non-finite loss under `stop_on_non_finite`; nothing
    /// was updated.
    Stopped(f64),
    /// The step ran: its output (empty gradients for the parameters its backward pass
    /// updated in place) and the rest of the optimizer step.
    Ran(Box<StepOutput>, PendingUpdate),
}

/// `(params, optimizer, x batch, y batch, stop_on_non_finite)` → a training step whose
/// backward pass updated some parameters in place (see [`crate::lower::in_place`]).
pub type InPlaceStepFn<'c> = dyn FnMut(
        &mut [ArrayD<f32>],
        &mut Optimizer,
        &ArrayD<f32>,
        &ArrayD<f32>,
        bool,
    ) -> Result<InPlaceStep>
    + 'c;

/// `(params, x) → predictions` in inference mode, with the logits of a softmax/sigmoid
/// output and the batch's activity penalty when the trainer has them (Keras's
/// `test_step` computes cross-entropies from the logits and adds the activity losses).
pub type PredictFn<'c> = dyn FnMut(&[ArrayD<f32>], &ArrayD<f32>) -> Result<BatchOutput> + 'c;

/// The functions [`super::fit`] calls: the trainer's side of the loop.
pub struct StepFns<'c> {
    /// The training step.
    pub step: &'c mut StepFn<'c>,
    /// The training step with the optimizer update of some parameters fused into its
    /// backward pass, used instead of `step` when given (the compiled engines).
    pub in_place: Option<&'c mut InPlaceStepFn<'c>>,
    /// Predictions for validation (needed when there is validation data).
    pub predict: Option<&'c mut PredictFn<'c>>,
    /// Writes the current weights to a file for callbacks ([`Control::save`]), when the
    /// trainer knows the model they belong to.
    pub save: Option<&'c mut SaveFn<'c>>,
    /// Takes back a step's gradients once the update has used them, so the trainer can
    /// reuse their weight-sized storage for the next step instead of allocating it anew
    /// (e.g. [`crate::CompiledModel::recycle_gradients`]); `None` drops them.
    pub recycle: Option<&'c mut RecycleFn<'c>>,
    /// Reads the state of the step's training randomness (the Dropout masks' generator),
    /// after setting it when given one: what a resume state keeps so that a resumed run
    /// draws the masks the uninterrupted one draws. `None`: the step draws nothing.
    pub randomness: Option<&'c mut RandomnessFn<'c>>,
}

/// `Some(state)` sets the generator's state; the state after that is returned.
pub type RandomnessFn<'c> = dyn FnMut(Option<[u64; 4]>) -> [u64; 4] + 'c;

/// `(batch size, gradients)`: storage handed back after the optimizer step.
pub type RecycleFn<'c> = dyn FnMut(usize, Vec<ArrayD<f32>>) + 'c;
