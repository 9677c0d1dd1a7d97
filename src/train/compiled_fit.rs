//! Training on the compiled engines: [`fit_compiled`] is [`super::fit_model`] with the
//! step's forward and backward passes run by a gradient program (JIT or loop-IR
//! interpreter, see [`crate::runtime::grad`]) instead of the reference path.
//!
//! The step model is the same graph with its output activation made linear when the loss
//! is computed from logits (as tf-keras does, see [`super::model_fit`]); the loss and its
//! gradient are computed on the host between phase 1 and phase 2 of the program. The
//! optimizer update runs on the host ([`super::optimizer`]). Gradient programs are
//! compiled once per batch size (the last partial batch of an epoch gets its own), in
//! training mode: Dropout masks come from the same seeded generator, drawn in the same
//! order, as the reference trainer's, and BatchNorm normalizes with batch statistics
//! whose moving averages the step returns as updates. Activity penalties (see
//! [`crate::reference::activity`]) are added to the step's loss by the gradient run,
//! except the output layer's when the loss is computed from logits: that one is on the
//! activated output, so the loss closure adds it and its gradient through the
//! activation.

use super::callbacks::Callback;
use super::evaluate::{BatchOutput, Evaluator};
use super::fit::{fit, FitOptions, History, StepFns, StepOutput};
use super::loss::Loss;
use super::model_fit::{check_trainable, logits_graph, predictions};
use super::off_mask::OffMaskParams;
use super::optimizer::Optimizer;
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::model::Model;
use crate::runtime::{CompileOptions, CompiledModel};
use ndarray::ArrayD;
use std::sync::Arc;

/// Trains `model` in place as `model.fit(xs, ys, validation_data=validation,
/// callbacks=callbacks, …)` does in tf-keras, on the engine of `compile` (the reference
/// engine is [`super::fit_model`]); returns Keras's history. Callbacks that save
/// (ModelCheckpoint) write this model with the weights of the moment.
#[allow(clippy::too_many_arguments)]
pub fn fit_compiled(
    model: &mut Model,
    optimizer: &mut Optimizer,
    loss: &Loss,
    xs: &ArrayD<f32>,
    ys: &ArrayD<f32>,
    validation: Option<(&ArrayD<f32>, &ArrayD<f32>)>,
    opts: &FitOptions,
    compile: &CompileOptions,
    callbacks: &mut [&mut dyn Callback],
) -> Result<History> {
    let graph = model.graph().clone();
    check_trainable(&graph)?;
    let (kind, logits) = logits_graph(&graph);
    let (mut step_graph, step_loss, on_logits) = match loss.for_output_activation(kind) {
        Some(l) => (logits, l, true),
        None => (graph.clone(), loss.clone(), false),
    };
    // The step graph's output is the logits; an activity penalty of the output layer is
    // on its activated output, so the loss closure adds it (`output_activity`).
    let output_activity = match (on_logits, graph.outputs.first()) {
        (true, Some(&out)) => step_graph.nodes[out]
            .op
            .activity_regularizer_mut()
            .and_then(Option::take),
        _ => None,
    };
    let scale = crate::reference::activity::ActivityScale::of(model.dialect());
    let want_metrics = !opts.metrics.is_empty();
    let copts = CompileOptions {
        max_batch: opts.batch_size.max(1),
        ..compile.clone()
    };
    let step_model = CompiledModel::new(Arc::new(model.with_graph(step_graph)?), copts.clone())?;
    // Validation as `evaluate` runs it: logits for cross-entropies, activity penalties.
    let evaluator = Evaluator::new(model, &copts)?;
    // Graph parameters, then the off-mask entries training changes (see `off_mask`).
    let extended = OffMaskParams::new(model, &optimizer.config)?;
    let n = extended.graph_len();
    let mut params: Vec<ArrayD<f32>> = extended.params(model)?;
    let table = extended.table(&graph);
    // One generator for the whole fit, as the reference trainer: the same masks.
    let mut rng = Rng::new(opts.seed);
    let mut step = |p: &[ArrayD<f32>], x: &ArrayD<f32>, y: &ArrayD<f32>| -> Result<StepOutput> {
        let mut value = 0.0;
        let mut y_pred = None;
        let inputs = std::slice::from_ref(x);
        let run = step_model.run_gradients_in(&p[..n], inputs, Some(&mut rng), &mut |outs| {
            let z = outs
                .first()
                .ok_or_else(|| Error::internal("model produced no output"))?;
            let (v, mut dz) = step_loss.value_and_grad(y, z)?;
            value = v;
            let yp = (want_metrics || output_activity.is_some())
                .then(|| predictions(kind, on_logits, z));
            if let (Some(reg), Some(yp)) = (output_activity, &yp) {
                use crate::reference::activity::{penalty_array, through_output_activation};
                let b = z.shape().first().copied().unwrap_or(0);
                let (pv, gy) = penalty_array(reg, yp, scale.divisor(b));
                let softmax = kind == super::loss::OutputActivation::Softmax;
                dz = dz + through_output_activation(softmax, yp, &gy);
                value += pv;
            }
            y_pred = if want_metrics { yp } else { None };
            Ok(dz)
        })?;
        Ok(StepOutput {
            loss: value + run.activity_loss,
            grads: extended.grads(run.dparams),
            y_pred,
            updates: run.updates,
        })
    };
    let mut predict =
        |p: &[ArrayD<f32>], x: &ArrayD<f32>| -> Result<BatchOutput> { evaluator.batch(&p[..n], x) };
    // The gradient program's weight-sized outputs go back to its pool after the update
    // (the off-mask gradients appended by `extended.grads` are dropped).
    let mut recycle = |batch: usize, mut grads: Vec<ArrayD<f32>>| {
        grads.truncate(n);
        step_model.recycle_gradients(batch, grads);
    };
    // The update runs compiled on the same engine (bitwise the host's result).
    let opts = &FitOptions {
        update: Some((compile.engine, compile.threads)),
        ..opts.clone()
    };
    let target = &mut *model;
    let mut save = |p: &[ArrayD<f32>], path: &std::path::Path, weights_only: bool| {
        target.set_params(p.to_vec())?;
        if weights_only {
            target.save_weights(path)
        } else {
            target.save(path)
        }
    };
    let history = fit(
        &mut params,
        &table,
        optimizer,
        loss,
        xs,
        ys,
        validation,
        opts,
        StepFns {
            step: &mut step,
            predict: Some(&mut predict),
            save: Some(&mut save),
            recycle: Some(&mut recycle),
        },
        callbacks,
    )?;
    extended.store(model, params)?;
    Ok(history)
}
