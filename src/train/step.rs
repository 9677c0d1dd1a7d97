//! One training step as a value: [`StepModel`] (the gradient program of a model's
//! training step and the loss between its phases, the step [`super::fit_compiled`] runs
//! per batch) and [`Trainer`], the same step driven by hand — `compute_gradients` then
//! `apply_gradients` — for custom and data-parallel training loops.
//!
//! What tf-keras does that this reproduces: the loss of a softmax/sigmoid output with a
//! probability cross-entropy is computed from the logits, so the step model is the graph
//! with its output activation made linear (see [`super::model_fit`]); an activity penalty
//! of the output layer is on the activated output, so the loss closure adds it. Dropout
//! masks come from one generator seeded once per step model, drawn in the order batches
//! run.
//!
//! Invariant of [`Trainer`]: `apply_gradients(compute_gradients(x, y))` is exactly one
//! step of `fit` on the batch `(x, y)` (same loss, same regularization, same optimizer
//! update, constraints and BatchNorm moving statistics, in the same order), so a loop of
//! them reproduces `fit` with `shuffle=False` bit for bit.

use super::fit::StepOutput;
use super::loss::{Loss, OutputActivation};
use super::model_fit::{check_trainable, logits_graph, predictions};
use super::off_mask::OffMaskParams;
use super::optimizer::Optimizer;
use crate::error::{Error, Result};
use crate::graph::{Graph, ParamId, Regularizer};
use crate::init::Rng;
use crate::lower::in_place::InPlaceRule;
use crate::model::Model;
use crate::reference::activity::ActivityScale;
use crate::runtime::grad::{GradRun, StepCotangentFn};
use crate::runtime::step::InPlace;
use crate::runtime::{CompileOptions, CompiledModel};
use ndarray::ArrayD;
use std::sync::Arc;

/// The compiled training step of a model: forward, loss, backward.
pub struct StepModel {
    compiled: CompiledModel,
    loss: Loss,
    kind: OutputActivation,
    on_logits: bool,
    output_activity: Option<Regularizer>,
    scale: ActivityScale,
    want_predictions: bool,
    rng: Rng,
}

impl StepModel {
    /// The step of `model` under `loss` on the engine of `compile`; Dropout masks drawn
    /// from `seed`; `want_predictions`: return the batch's predictions (for metrics).
    pub fn new(
        model: &Model,
        loss: &Loss,
        compile: &CompileOptions,
        seed: u64,
        want_predictions: bool,
    ) -> Result<StepModel> {
        let graph = model.graph();
        let (kind, logits) = logits_graph(graph);
        let (mut step_graph, step_loss, on_logits) = match loss.for_output_activation(kind) {
            Some(l) => (logits, l, true),
            None => (graph.clone(), loss.clone(), false),
        };
        // The step graph's output is the logits; an activity penalty of the output layer
        // is on its activated output, so the loss closure adds it.
        let output_activity = match (on_logits, graph.outputs.first()) {
            (true, Some(&out)) => step_graph.nodes[out]
                .op
                .activity_regularizer_mut()
                .and_then(Option::take),
            _ => None,
        };
        let compiled =
            CompiledModel::new(Arc::new(model.with_graph(step_graph)?), compile.clone())?;
        Ok(StepModel {
            compiled,
            loss: step_loss,
            kind,
            on_logits,
            output_activity,
            scale: ActivityScale::of(model.dialect()),
            want_predictions,
            rng: Rng::new(seed),
        })
    }

    /// Loss (activity penalties included, weight regularization not) and gradients of
    /// the graph's parameters at `params` on the batch `(x, y)`, in training mode.
    pub fn step(
        &mut self,
        params: &[ArrayD<f32>],
        x: &ArrayD<f32>,
        y: &ArrayD<f32>,
    ) -> Result<StepOutput> {
        let inputs = std::slice::from_ref(x);
        let (_, out) = self.run(y, false, |compiled, rng, cot| {
            compiled
                .run_gradients_in(params, inputs, Some(rng), &mut |o| {
                    cot(o).and_then(|d| d.ok_or_else(|| Error::internal("step stopped")))
                })
                .map(Some)
        })?;
        out.ok_or_else(|| Error::internal("training step stopped without a reason"))
    }

    /// Which graph parameters [`StepModel::step_in_place`] at `batch` updates under
    /// `rule`.
    pub fn updated_in_place(&self, batch: usize, rule: &dyn InPlaceRule) -> Result<Vec<bool>> {
        self.compiled.updated_in_place(batch, rule)
    }

    /// [`StepModel::step`] whose backward pass also applies `in_place` to the parameters
    /// [`StepModel::updated_in_place`] names (their gradients come back empty). With
    /// `stop_on_non_finite`, a non-finite loss ends the step after the forward pass with
    /// nothing updated: `(loss, None)`.
    pub fn step_in_place(
        &mut self,
        params: &mut [ArrayD<f32>],
        x: &ArrayD<f32>,
        y: &ArrayD<f32>,
        in_place: InPlace<'_>,
        stop_on_non_finite: bool,
    ) -> Result<(f64, Option<StepOutput>)> {
        let inputs = std::slice::from_ref(x);
        self.run(y, stop_on_non_finite, |compiled, rng, cot| {
            compiled.run_training_step(params, inputs, rng, in_place, cot)
        })
    }

    /// Runs one step through `run` (given the compiled step, the masks' generator and
    /// the loss as a cotangent function); returns the loss and the output, `None` when
    /// the step stopped on a non-finite loss (`stop_on_non_finite`).
    fn run(
        &mut self,
        y: &ArrayD<f32>,
        stop_on_non_finite: bool,
        run: impl FnOnce(&CompiledModel, &mut Rng, &mut StepCotangentFn) -> Result<Option<GradRun>>,
    ) -> Result<(f64, Option<StepOutput>)> {
        let mut value = 0.0;
        let mut y_pred = None;
        let (kind, on_logits, scale) = (self.kind, self.on_logits, self.scale);
        let (loss, output_activity) = (&self.loss, self.output_activity);
        let want = self.want_predictions;
        let run = run(&self.compiled, &mut self.rng, &mut |outs| {
            let z = outs
                .first()
                .ok_or_else(|| Error::internal("model produced no output"))?;
            let (v, mut dz) = loss.value_and_grad(y, z)?;
            value = v;
            let yp = (want || output_activity.is_some()).then(|| predictions(kind, on_logits, z));
            if let (Some(reg), Some(yp)) = (output_activity, &yp) {
                use crate::reference::activity::{penalty_array, through_output_activation};
                let b = z.shape().first().copied().unwrap_or(0);
                let (pv, gy) = penalty_array(reg, yp, scale.divisor(b));
                let softmax = kind == OutputActivation::Softmax;
                dz = dz + through_output_activation(softmax, yp, &gy);
                value += pv;
            }
            y_pred = if want { yp } else { None };
            Ok((!stop_on_non_finite || value.is_finite()).then_some(dz))
        })?;
        let Some(run) = run else {
            return Ok((value, None));
        };
        let out = StepOutput {
            loss: value + run.activity_loss,
            grads: run.dparams,
            y_pred,
            updates: run.updates,
        };
        Ok((out.loss, Some(out)))
    }

    /// The state of the generator the Dropout masks are drawn from (see
    /// [`Rng::state`]), for a resume state.
    pub fn randomness(&self) -> [u64; 4] {
        self.rng.state()
    }

    /// Continues the Dropout masks' stream from `state` (taken by
    /// [`StepModel::randomness`]).
    pub fn set_randomness(&mut self, state: [u64; 4]) {
        self.rng = Rng::from_state(state);
    }

    /// Hands a step's graph-parameter gradients back to the program's buffer pool.
    pub fn recycle(&self, batch: usize, grads: Vec<ArrayD<f32>>) {
        self.compiled.recycle_gradients(batch, grads);
    }
}

/// The pieces of `fit`'s step for a loop written by hand: gradients of a batch at the
/// current weights, then the optimizer update with them.
pub struct Trainer {
    graph: Graph,
    step: StepModel,
    extended: OffMaskParams,
    /// The optimizer (its slots and step count persist across steps).
    pub optimizer: Optimizer,
    compile: CompileOptions,
    /// BatchNorm moving statistics of the last `compute_gradients`, assigned by the next
    /// `apply_gradients`.
    pending: Vec<(ParamId, ArrayD<f32>)>,
}

impl Trainer {
    /// A trainer of `model` with `optimizer` and `loss` on the engine of `compile`;
    /// Dropout masks drawn from `seed`.
    pub fn new(
        model: &Model,
        optimizer: Optimizer,
        loss: &Loss,
        compile: &CompileOptions,
        seed: u64,
    ) -> Result<Trainer> {
        check_trainable(model.graph())?;
        let extended = OffMaskParams::new(model, &optimizer.config)?;
        Ok(Trainer {
            graph: model.graph().clone(),
            step: StepModel::new(model, loss, compile, seed, false)?,
            extended,
            optimizer,
            compile: compile.clone(),
            pending: Vec::new(),
        })
    }

    /// The trainer's parameter list for `model`: the graph's parameters, then the
    /// off-mask entries training changes ([`OffMaskParams`]).
    pub fn extended(&self) -> &OffMaskParams {
        &self.extended
    }

    /// Loss of the batch (data loss, activity and weight regularization, as Keras's
    /// `train_step` reports it) and the gradient of every parameter of the extended list
    /// (weight regularization included); the step's BatchNorm statistics are kept for
    /// [`Trainer::apply_gradients`].
    pub fn compute_gradients(
        &mut self,
        params: &[ArrayD<f32>],
        x: &ArrayD<f32>,
        y: &ArrayD<f32>,
    ) -> Result<(f64, Vec<ArrayD<f32>>)> {
        let n = self.extended.graph_len();
        if params.len() < n {
            return Err(Error::internal("trainer: too few parameters"));
        }
        let out = self.step.step(&params[..n], x, y)?;
        let mut grads = self.extended.grads(out.grads);
        let table = self.extended.table(&self.graph);
        let reg = table.regularize(params, Some(&mut grads))?;
        self.pending = out.updates;
        Ok((out.loss + reg, grads))
    }

    /// The optimizer update with `grads` (as [`Trainer::compute_gradients`] returns them,
    /// or their average over workers), then the constraints, then the BatchNorm moving
    /// statistics of the last `compute_gradients`.
    pub fn apply_gradients(
        &mut self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
    ) -> Result<()> {
        if grads.len() != params.len()
            || grads
                .iter()
                .zip(params.iter())
                .any(|(g, p)| g.shape() != p.shape())
        {
            return Err(Error::Usage {
                detail: format!(
                    "apply_gradients: {} gradients given for {} weights, or a shape differs",
                    grads.len(),
                    params.len()
                ),
            });
        }
        let table = self.extended.table(&self.graph);
        let trainable = table.trainable();
        let (engine, threads) = (self.compile.engine, self.compile.threads);
        self.optimizer
            .step_compiled(params, grads, &trainable, engine, threads)?;
        table.constrain(params)?;
        for (pid, value) in std::mem::take(&mut self.pending) {
            if let Some(p) = params.get_mut(pid) {
                *p = value;
            }
        }
        Ok(())
    }
}
