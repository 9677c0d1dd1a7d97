//! The training loop, generic over how gradients are computed.
//!
//! Per batch, as tf-keras 2.21's `Model.train_step`: the step closure returns the data
//! loss (`sum_over_batch_size`) and its gradients at the current weights; the weight
//! regularization loss (same weights) is added to the loss and its gradient to the
//! gradients; the optimizer updates the trainable weights; constraints are applied in
//! Keras layout; then the non-trainable weights the step updated (BatchNorm moving
//! statistics, [`StepOutput::updates`]) are assigned — in Keras those updates run inside
//! the training-mode forward pass, on variables the optimizer never touches, so the order
//! does not matter. The epoch loss is Keras's `Mean` metric updated with
//! `sample_weight = batch size` (`compile_utils.LossesContainer.__call__`): a mean over
//! batches weighted by their size, so a smaller last batch counts less.
//!
//! Validation data is given explicitly or split off: `validation_split` takes the last
//! fraction of the data before shuffling, like `data_adapter.train_validation_split`
//! (`split_at = floor(n·(1 − split))`). The validation loss is `model.evaluate`'s: per
//! batch the data loss plus the regularization loss (tf-keras's `test_step` calls
//! `compute_loss`, which adds `model.losses`), averaged over batches weighted by size.
//!
//! Callbacks ([`super::callbacks`]) are called as `Model.fit` calls them, and the
//! returned [`History`] is Keras's (every logged key, in Keras's order).
//!
//! Non-finite values: like Keras, nothing special happens. A NaN or infinite loss is
//! recorded and training goes on unless [`super::callbacks::TerminateOnNaN`] stops it
//! (after that batch's update, as in Keras); no copy of the weights is kept to undo a
//! step, so an update that makes a weight non-finite shows in the next batch's loss,
//! which is where TerminateOnNaN catches it.

use super::callbacks::progbar::Progbar;
use super::callbacks::{Callback, Control, FitParams, Logs, SaveFn};
use super::evaluate::BatchOutput;
use super::loss::Loss;
use super::metrics::{Metric, MetricState};
use super::optimizer::Optimizer;
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use crate::graph::ParamId;
use data::{check_validation, epoch_order, split_validation, SplitMix};
use ndarray::{ArrayD, Axis};
use std::io::{IsTerminal, Write};

pub use super::callbacks::History;
pub use data::epoch_orders;

mod data;
mod resumption;

/// Options of [`fit`] (Keras `fit` arguments).
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
    /// [`super::fit_model`]); the fixed default makes runs reproducible.
    pub seed: u64,
    /// Where the optimizer update runs: `None` on the host ([`Optimizer::step`]),
    /// `Some((engine, threads))` as a compiled loop nest over all parameters
    /// ([`Optimizer::step_compiled`]; bitwise the same result).
    pub update: Option<(crate::Engine, usize)>,
    /// Stop before a step whose loss or gradient is not finite, so the weights stay those
    /// of the last finite step (found by a scan of the gradients; no copy of the weights).
    /// Off by default, as in Keras, where training runs on through a NaN loss unless the
    /// `TerminateOnNaN` callback stops it (after the non-finite update). `lcjit fit` turns
    /// it on, because a diverged run would otherwise write NaN weights over the user's
    /// file.
    pub stop_on_non_finite: bool,
    /// Resuming: leave a [`super::resume::ResumeState`] behind when interrupted, or
    /// continue from one (see [`super::resume`]). The default does neither.
    pub resume: super::resume::Resume,
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

/// `(params, x) → predictions` in inference mode, with the logits of a softmax/sigmoid
/// output and the batch's activity penalty when the trainer has them (Keras's
/// `test_step` computes cross-entropies from the logits and adds the activity losses).
pub type PredictFn<'c> = dyn FnMut(&[ArrayD<f32>], &ArrayD<f32>) -> Result<BatchOutput> + 'c;

/// The functions [`fit`] calls: the trainer's side of the loop.
pub struct StepFns<'c> {
    /// The training step.
    pub step: &'c mut StepFn<'c>,
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

/// The mutable state callbacks act on, lent to them as a [`Control`].
struct Run<'r, 'c> {
    params: &'r mut [ArrayD<f32>],
    optimizer: &'r mut Optimizer,
    save: Option<&'c mut SaveFn<'c>>,
    stop: Option<String>,
    warnings: Vec<String>,
    fit_params: FitParams,
}

impl Run<'_, '_> {
    /// Calls `f` on every callback in order, each with a fresh [`Control`].
    fn each(
        &mut self,
        callbacks: &mut [&mut dyn Callback],
        mut f: impl FnMut(&mut dyn Callback, &mut Control<'_>) -> Result<()>,
    ) -> Result<()> {
        for cb in callbacks.iter_mut() {
            let mut ctl = Control {
                weights: &mut *self.params,
                optimizer: &mut *self.optimizer,
                saver: match self.save {
                    Some(ref mut s) => Some(&mut **s),
                    None => None,
                },
                stop: &mut self.stop,
                warnings: &mut self.warnings,
                params: self.fit_params,
            };
            f(&mut **cb, &mut ctl)?;
        }
        Ok(())
    }
}

/// Trains `params` in place and returns Keras's history. `validation`, if given,
/// overrides `validation_split`. `callbacks` are called in order (see
/// [`super::callbacks`]). An interruption ([`crate::interrupt::interrupted`]) ends the
/// run between steps with [`Error::Interrupted`], the weights those of the last finished
/// step; with [`FitOptions::resume`] it leaves a resume state, or the run continues one.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    params: &mut [ArrayD<f32>],
    table: &ParamTable,
    optimizer: &mut Optimizer,
    loss: &Loss,
    xs: &ArrayD<f32>,
    ys: &ArrayD<f32>,
    validation: Option<(&ArrayD<f32>, &ArrayD<f32>)>,
    opts: &FitOptions,
    fns: StepFns,
    callbacks: &mut [&mut dyn Callback],
) -> Result<History> {
    let (train_n, split) = split_validation(xs, ys, validation, opts)?;
    let val = validation.or(split.as_ref().map(|(a, b)| (a, b)));
    if let Some((vx, vy)) = val {
        check_validation(vx, vy)?;
    }
    let StepFns {
        step,
        mut predict,
        save,
        mut recycle,
        mut randomness,
    } = fns;
    let steps = train_n.div_ceil(opts.batch_size);
    let terminal = match &opts.progress {
        Some(sink) => sink.dynamic,
        None => std::io::stderr().is_terminal(),
    };
    let fingerprint = opts.resume.active().then(|| {
        super::resume::fingerprint(&super::resume::RunFacts {
            params,
            table,
            optimizer: &optimizer.config,
            loss,
            xs,
            ys,
            validation,
            opts,
            callbacks: super::resume::callback_kinds(callbacks),
        })
    });
    let mut run = Run {
        params,
        optimizer,
        save,
        stop: None,
        warnings: Vec::new(),
        fit_params: FitParams {
            epochs: opts.epochs,
            steps,
            verbose: opts.verbose,
        },
    };
    let trainable = table.trainable();
    let sink = opts.progress.as_ref();
    let start = match (&opts.resume.from, &fingerprint) {
        (Some(state), Some(print)) => resumption::restore(
            state,
            print,
            &mut run,
            randomness.as_deref_mut(),
            callbacks,
            opts,
        )?,
        _ => {
            run.each(callbacks, |cb, ctl| cb.on_train_begin(ctl))?;
            resumption::Start::fresh(opts)
        }
    };
    let resumption::Start {
        epoch: first,
        mut hist,
        mut rng,
        mut acc,
    } = start;
    let mut last = Logs::new();
    for epoch in first..opts.epochs {
        let resumed = acc.take().filter(|a| a.steps_done > 0);
        let rng_at_start = rng.as_ref().map(|r| r.0);
        let at = resumption::At {
            epoch,
            rng_at_start,
            fingerprint: fingerprint.as_ref(),
        };
        if crate::interrupt::interrupted() {
            // Between epochs (a signal during the last validation): the state of a fresh
            // epoch.
            let fresh = EpochAcc::fresh(opts);
            return Err(at.interrupted(
                &mut run,
                &fresh,
                &hist,
                randomness.as_deref_mut(),
                callbacks,
                opts,
            ));
        }
        if resumed.is_none() {
            run.each(callbacks, |cb, ctl| cb.on_epoch_begin(epoch, ctl))?;
        }
        if opts.verbose && opts.epochs > 1 {
            show(sink, Some(format!("Epoch {}/{}\n", epoch + 1, opts.epochs)));
        }
        let mut bar = opts.verbose.then(|| Progbar::new(steps, terminal));
        let order = epoch_order(train_n, rng.as_mut());
        let batches = Batches {
            xs,
            ys,
            order: &order,
            size: opts.batch_size,
        };
        let mut epoch_run = EpochRun {
            table,
            trainable: &trainable,
            opts,
            recycle: recycle.as_deref_mut(),
        };
        let acc_in = resumed.unwrap_or_else(|| EpochAcc::fresh(opts));
        let mut logs =
            match epoch_run.train(&mut run, &batches, step, callbacks, bar.as_mut(), acc_in)? {
                EpochEnd::Done(logs) => logs,
                EpochEnd::Interrupted(acc) => {
                    return Err(at.interrupted(
                        &mut run,
                        &acc,
                        &hist,
                        randomness.as_deref_mut(),
                        callbacks,
                        opts,
                    ))
                }
            };
        if let Some((vx, vy)) = val {
            let pf = predict
                .as_deref_mut()
                .ok_or_else(|| Error::internal("validation needs a predict function"))?;
            for (k, v) in validate(run.params, table, loss, vx, vy, opts, pf)?.iter() {
                logs.set(&format!("val_{k}"), v);
            }
        }
        run.each(callbacks, |cb, ctl| cb.on_epoch_end(epoch, &mut logs, ctl))?;
        hist.record(epoch, &logs);
        if let Some(b) = bar.as_mut() {
            show(sink, b.update(steps, &logs, true));
        }
        last = logs;
        if run.stop.is_some() {
            break;
        }
    }
    run.each(callbacks, |cb, ctl| cb.on_train_end(&last, ctl))?;
    hist.stopped = run.stop;
    hist.warnings = run.warnings;
    Ok(hist)
}

/// Prints a progress update, if any, to `sink` or stderr.
fn show(sink: Option<&ProgressSink>, text: Option<String>) {
    if let (Some(s), Some(t)) = (sink, &text) {
        (s.write)(t);
        return;
    }
    if let Some(t) = text {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(t.as_bytes());
        let _ = err.flush();
    }
}

/// The training samples of one epoch, in batches.
struct Batches<'d> {
    xs: &'d ArrayD<f32>,
    ys: &'d ArrayD<f32>,
    order: &'d [usize],
    size: usize,
}

impl Batches<'_> {
    fn count(&self) -> usize {
        self.order.len().div_ceil(self.size)
    }

    /// Batch `b`'s inputs and targets.
    fn get(&self, b: usize) -> (ArrayD<f32>, ArrayD<f32>) {
        let idx = &self.order[b * self.size..((b + 1) * self.size).min(self.order.len())];
        (self.xs.select(Axis(0), idx), self.ys.select(Axis(0), idx))
    }
}

/// What one epoch of training reads.
struct EpochRun<'e, 'c> {
    table: &'e ParamTable<'e>,
    trainable: &'e [bool],
    opts: &'e FitOptions,
    recycle: Option<&'e mut RecycleFn<'c>>,
}

/// The running loss and metrics of an epoch, and how many of its steps are done.
struct EpochAcc {
    steps_done: usize,
    loss_sum: f64,
    loss_count: f64,
    metrics: Vec<MetricState>,
}

impl EpochAcc {
    /// Before the first step of an epoch.
    fn fresh(opts: &FitOptions) -> Self {
        EpochAcc {
            steps_done: 0,
            loss_sum: 0.0,
            loss_count: 0.0,
            metrics: opts.metrics.iter().map(|m| m.state()).collect(),
        }
    }
}

/// How an epoch's batches ended.
enum EpochEnd {
    /// All ran (or a callback stopped training): the epoch's logs.
    Done(Logs),
    /// Interrupted after `steps_done` steps: the accumulators at that point.
    Interrupted(EpochAcc),
}

impl EpochRun<'_, '_> {
    /// Runs the batches from `acc.steps_done` on (until a callback stops training, or an
    /// interruption) and returns the epoch's logs: the size-weighted mean loss and the
    /// metrics.
    fn train(
        &mut self,
        run: &mut Run,
        batches: &Batches,
        step: &mut StepFn,
        callbacks: &mut [&mut dyn Callback],
        mut bar: Option<&mut Progbar>,
        mut acc: EpochAcc,
    ) -> Result<EpochEnd> {
        for b in acc.steps_done..batches.count() {
            run.each(callbacks, |cb, ctl| cb.on_train_batch_begin(b, ctl))?;
            let (xb, yb) = batches.get(b);
            let total = self.step(run, step, &xb, &yb, &mut acc.metrics)?;
            let n = xb.shape()[0] as f64;
            acc.loss_sum += total * n;
            acc.loss_count += n;
            acc.steps_done = b + 1;
            let logs = self.logs(acc.loss_sum / acc.loss_count, &acc.metrics);
            run.each(callbacks, |cb, ctl| cb.on_train_batch_end(b, &logs, ctl))?;
            if let Some(p) = bar.as_deref_mut() {
                show(self.opts.progress.as_ref(), p.update(b + 1, &logs, false));
            }
            if run.stop.is_some() {
                // A stop ends the epoch here (validation and `on_epoch_end` still run,
                // as in Keras), also when an interruption came with it.
                break;
            }
            if crate::interrupt::interrupted() {
                // SIGINT/SIGTERM under `lcjit fit`: stop between steps; the caller keeps
                // the weights of this last finished step (and its resume state).
                return Ok(EpochEnd::Interrupted(acc));
            }
        }
        let logs = self.logs(acc.loss_sum / acc.loss_count.max(1.0), &acc.metrics);
        Ok(EpochEnd::Done(logs))
    }

    /// `loss` then each metric, as Keras's logs.
    fn logs(&self, loss: f64, states: &[MetricState]) -> Logs {
        let mut logs = Logs::new();
        logs.set("loss", loss);
        for (m, st) in self.opts.metrics.iter().zip(states) {
            logs.set(m.name(), st.result());
        }
        logs
    }

    /// One training step on a batch; returns its loss with regularization.
    fn step(
        &mut self,
        run: &mut Run,
        step: &mut StepFn,
        xb: &ArrayD<f32>,
        yb: &ArrayD<f32>,
        states: &mut [MetricState],
    ) -> Result<f64> {
        let out = step(run.params, xb, yb)?;
        let mut grads = out.grads;
        if grads.len() != run.params.len() {
            return Err(Error::internal(format!(
                "gradient step returned {} gradients for {} parameters",
                grads.len(),
                run.params.len()
            )));
        }
        check_updates(&out.updates, run.params, self.trainable)?;
        let reg = self.table.regularize(run.params, Some(&mut grads))?;
        // Divergence under `stop_on_non_finite`: a non-finite loss or gradient would make
        // the weights non-finite. Stop before the update, so the weights stay those of
        // the last finite step (a scan, no copy of the weights).
        let finite = !self.opts.stop_on_non_finite
            || ((out.loss + reg).is_finite()
                && grads.iter().all(|g| g.iter().all(|v| v.is_finite())));
        if !finite {
            run.stop = Some(format!(
                "the loss or its gradient became non-finite (loss {}); the weights of the \
                 last finite step are kept",
                out.loss + reg
            ));
            return Ok(out.loss + reg);
        }
        if let Some(yp) = &out.y_pred {
            for st in states.iter_mut() {
                st.update(yb, yp)?;
            }
        }
        match self.opts.update {
            Some((engine, threads)) => {
                run.optimizer
                    .step_compiled(run.params, &grads, self.trainable, engine, threads)?
            }
            None => run.optimizer.step(run.params, &grads, self.trainable)?,
        }
        self.table.constrain(run.params)?;
        for (pid, value) in out.updates {
            run.params[pid] = value;
        }
        if let Some(r) = self.recycle.as_deref_mut() {
            r(xb.shape()[0], grads);
        }
        Ok(out.loss + reg)
    }
}

/// `model.evaluate` on `(vx, vy)` in batches ([`super::evaluate::evaluate_batches_with`]):
/// `loss` (data loss plus regularization, size-weighted over batches) and each metric.
fn validate(
    params: &[ArrayD<f32>],
    table: &ParamTable,
    loss: &Loss,
    vx: &ArrayD<f32>,
    vy: &ArrayD<f32>,
    opts: &FitOptions,
    predict: &mut PredictFn,
) -> Result<Logs> {
    let reg = table.regularize(params, None)?;
    let mut at_params = |xb: &ArrayD<f32>| predict(params, xb);
    let found = super::evaluate::evaluate_batches_with(
        &mut at_params,
        loss,
        &opts.metrics,
        vx,
        vy,
        opts.batch_size,
        reg,
    )?;
    let mut logs = Logs::new();
    for (k, v) in &found.0 {
        logs.set(k, *v);
    }
    Ok(logs)
}

/// Checks that every update of a step targets an existing non-trainable parameter with
/// the parameter's shape.
fn check_updates(
    updates: &[(ParamId, ArrayD<f32>)],
    params: &[ArrayD<f32>],
    trainable: &[bool],
) -> Result<()> {
    for (pid, value) in updates {
        let (Some(p), Some(&t)) = (params.get(*pid), trainable.get(*pid)) else {
            return Err(Error::internal(format!(
                "training step updated parameter {pid}, which does not exist"
            )));
        };
        if t {
            return Err(Error::internal(format!(
                "training step assigned trainable parameter {pid} (the optimizer updates those)"
            )));
        }
        if p.shape() != value.shape() {
            return Err(Error::internal(format!(
                "training step updated parameter {pid} with shape {:?}, expected {:?}",
                value.shape(),
                p.shape()
            )));
        }
    }
    Ok(())
}
