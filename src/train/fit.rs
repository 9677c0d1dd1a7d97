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
//! In-place updates ([`StepFns::in_place`], the compiled engines): the step's backward
//! pass updates the parameters its kernels accept ([`crate::lower::in_place`]), with the
//! scalars of this step fixed before it runs, and returns no gradient for them; the
//! optimizer then updates the others, so the weights are bitwise those of the separate
//! update. Regularized parameters always take the separate update (their gradient gets
//! the penalty's on the host first). Under `stop_on_non_finite`, a non-finite loss stops
//! the step after the forward pass, before anything is updated, as before; a finite loss
//! with a non-finite gradient is only seen after the in-place update, so that stop
//! restores the weights of the epoch's start.
//!
//! Callbacks ([`super::callbacks`]) are called as `Model.fit` calls them, and the
//! returned [`History`] is Keras's (every logged key, in Keras's order).
//!
//! Interruptions ([`crate::interrupt::interrupted`], raised by SIGINT/SIGTERM under
//! `lcjit fit`) are noticed after each step and before each epoch: `fit` returns
//! [`Error::Interrupted`] with the weights of the last finished step and, when
//! [`FitOptions::resume`] asks for it, leaves a [`super::resume::ResumeState`] from which
//! a later `fit` continues exactly (see [`super::resume`]).
//!
//! Non-finite values: like Keras, nothing special happens. A NaN or infinite loss is
//! recorded and training goes on unless [`super::callbacks::TerminateOnNaN`] stops it
//! (after that batch's update, as in Keras); no copy of the weights is kept to undo a
//! step, so an update that makes a weight non-finite shows in the next batch's loss,
//! which is where TerminateOnNaN catches it.

use super::callbacks::progbar::Progbar;
use super::callbacks::{Callback, Control, FitParams, Logs, SaveFn};
use super::loss::Loss;
use super::metrics::MetricState;
use super::optimizer::{Optimizer, PendingUpdate};
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use crate::graph::ParamId;
use data::{check_validation, epoch_order, split_validation, SplitMix};
use ndarray::{ArrayD, Axis};
use std::io::{IsTerminal, Write};

pub use super::callbacks::History;
pub use data::epoch_orders;

mod data;
mod options;
mod resumption;

pub use options::{
    FitOptions, InPlaceStep, InPlaceStepFn, PredictFn, ProgressSink, RandomnessFn, RecycleFn,
    StepFn, StepFns, StepOutput,
};

/// The mutable state callbacks act on, lent to them as a [`Control`].
struct Run<'r, 'c> {
    params: &'r mut [ArrayD<f32>],
    optimizer: &'r mut Optimizer,
    save: Option<&'c mut SaveFn<'c>>,
    stop: Option<String>,
    warnings: Vec<String>,
    fit_params: FitParams,
    /// With `stop_on_non_finite`: the weights at the start of the running epoch (one
    /// copy per epoch, into the same allocations), restored when an update overflows.
    epoch_start: Vec<ArrayD<f32>>,
    /// The running epoch (for messages).
    epoch: usize,
}

impl<'r, 'c> Run<'r, 'c> {
    /// The state of a run about to start.
    fn new(
        params: &'r mut [ArrayD<f32>],
        optimizer: &'r mut Optimizer,
        save: Option<&'c mut SaveFn<'c>>,
        opts: &FitOptions,
        steps: usize,
    ) -> Self {
        let fit_params = FitParams {
            epochs: opts.epochs,
            steps,
            verbose: opts.verbose,
        };
        Run {
            params,
            optimizer,
            save,
            stop: None,
            warnings: Vec::new(),
            fit_params,
            epoch_start: Vec::new(),
            epoch: 0,
        }
    }

    /// Notes the running epoch and, with `stop_on_non_finite`, copies the weights at
    /// its start (or at the resumed step): one copy per epoch, not per step, into the
    /// previous epoch's allocations; what an overflowing update falls back to.
    fn keep_epoch_start(&mut self, epoch: usize, opts: &FitOptions) {
        self.epoch = epoch;
        if !opts.stop_on_non_finite {
            return;
        }
        if self.epoch_start.len() == self.params.len() {
            for (kept, p) in self.epoch_start.iter_mut().zip(self.params.iter()) {
                kept.assign(p);
            }
        } else {
            self.epoch_start = self.params.to_vec();
        }
    }

    /// Puts back the weights kept at the epoch's start (under `stop_on_non_finite`).
    fn restore_epoch_start(&mut self) {
        for (p, kept) in self.params.iter_mut().zip(&self.epoch_start) {
            p.assign(kept);
        }
    }

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
        mut in_place,
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
    let mut run = Run::new(params, optimizer, save, opts, steps);
    let trainable = table.trainable();
    let sink = opts.progress.as_ref();
    let data = resumption::Data::new(table, loss, (xs, ys), validation, opts);
    let (fingerprint, start) =
        resumption::begin(&mut run, &data, randomness.as_deref_mut(), callbacks)?;
    let resumption::Start {
        epoch: first,
        mut hist,
        mut rng,
        mut acc,
    } = start;
    let mut last = Logs::new();
    for epoch in first..opts.epochs {
        run.keep_epoch_start(epoch, opts);
        let resumed = acc.take().filter(|a| a.steps_done > 0);
        let rng_at_start = rng.as_ref().map(|r| r.0);
        let at = resumption::At {
            epoch,
            rng_at_start,
            fingerprint: fingerprint.as_ref(),
        };
        let mut bar = opts.verbose.then(|| Progbar::new(steps, terminal));
        let end = if crate::interrupt::interrupted() {
            // Between epochs (a signal during the last validation): a fresh epoch's state.
            EpochEnd::Interrupted(EpochAcc::fresh(opts))
        } else {
            if resumed.is_none() {
                run.each(callbacks, |cb, ctl| cb.on_epoch_begin(epoch, ctl))?;
            }
            if opts.verbose && opts.epochs > 1 {
                show(sink, Some(format!("Epoch {}/{}\n", epoch + 1, opts.epochs)));
            }
            let order = epoch_order(train_n, rng.as_mut());
            let batches = Batches::new(xs, ys, &order, opts.batch_size);
            let mut epoch_run = EpochRun {
                table,
                trainable: &trainable,
                opts,
                recycle: recycle.as_deref_mut(),
                in_place: in_place.as_deref_mut(),
            };
            let acc_in = resumed.unwrap_or_else(|| EpochAcc::fresh(opts));
            epoch_run.train(&mut run, &batches, step, callbacks, bar.as_mut(), acc_in)?
        };
        let mut logs = match end {
            EpochEnd::Done(logs) => logs,
            EpochEnd::Interrupted(acc) => {
                let rnd = randomness.as_deref_mut();
                return Err(at.interrupted(&mut run, &acc, &hist, rnd, callbacks, opts));
            }
        };
        if let Some((vx, vy)) = val {
            let pf = predict
                .as_deref_mut()
                .ok_or_else(|| Error::internal("validation needs a predict function"))?;
            let found = validate(run.params, table, loss, vx, vy, opts, pf)?;
            found
                .iter()
                .for_each(|(k, v)| logs.set(&format!("val_{k}"), v));
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

impl<'d> Batches<'d> {
    fn new(xs: &'d ArrayD<f32>, ys: &'d ArrayD<f32>, order: &'d [usize], size: usize) -> Self {
        Batches {
            xs,
            ys,
            order,
            size,
        }
    }

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
    in_place: Option<&'e mut InPlaceStepFn<'c>>,
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
        let stop = self.opts.stop_on_non_finite;
        let (out, pending) = match self.in_place.as_deref_mut() {
            Some(f) => match f(run.params, run.optimizer, xb, yb, stop)? {
                InPlaceStep::Stopped(loss) => {
                    let total = loss + self.table.regularize(run.params, None)?;
                    run.stop = Some(non_finite(total));
                    return Ok(total);
                }
                InPlaceStep::Ran(out, pending) => (*out, Some(pending)),
            },
            None => (step(run.params, xb, yb)?, None),
        };
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
        let finite =
            !self.opts.stop_on_non_finite || ((out.loss + reg).is_finite() && all_finite(&grads));
        if !finite {
            if pending.as_ref().is_some_and(PendingUpdate::updated_any) {
                // Some weights were updated in place already: the epoch's start is the
                // last state known finite.
                run.restore_epoch_start();
                run.stop = Some(format!(
                    "the loss or its gradient became non-finite (loss {}); the weights of \
                     the start of epoch {} are restored",
                    out.loss + reg,
                    run.epoch + 1
                ));
            } else {
                run.stop = Some(non_finite(out.loss + reg));
            }
            return Ok(out.loss + reg);
        }
        if let Some(yp) = &out.y_pred {
            for st in states.iter_mut() {
                st.update(yb, yp)?;
            }
        }
        match (self.opts.update, pending) {
            (Some((engine, threads)), Some(p)) => {
                let t = self.trainable;
                run.optimizer
                    .finish_in_place(run.params, &grads, t, p, engine, threads)?
            }
            (Some((engine, threads)), None) => {
                run.optimizer
                    .step_compiled(run.params, &grads, self.trainable, engine, threads)?
            }
            (None, None) => run.optimizer.step(run.params, &grads, self.trainable)?,
            (None, Some(_)) => {
                return Err(Error::internal(
                    "an in-place step without a compiled update",
                ))
            }
        }
        self.table.constrain(run.params)?;
        for (pid, value) in out.updates {
            run.params[pid] = value;
        }
        if self.opts.stop_on_non_finite && !all_finite(run.params) {
            // A finite gradient whose update overflowed float32 (a huge learning rate):
            // the step's inputs are gone, so fall back to the epoch's start.
            run.restore_epoch_start();
            run.stop = Some(format!(
                "an update overflowed float32 in epoch {}; the weights of the start of \
                 that epoch (the last finite ones kept) are restored",
                run.epoch + 1
            ));
        }
        if let Some(r) = self.recycle.as_deref_mut() {
            r(xb.shape()[0], grads);
        }
        Ok(out.loss + reg)
    }
}

/// The stop message of a non-finite loss or gradient seen before the update.
fn non_finite(loss: f64) -> String {
    format!(
        "the loss or its gradient became non-finite (loss {loss}); the weights of the last \
         finite step are kept"
    )
}

/// Whether every element of every array is finite.
fn all_finite(arrays: &[ArrayD<f32>]) -> bool {
    arrays.iter().all(|a| a.iter().all(|v| v.is_finite()))
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
