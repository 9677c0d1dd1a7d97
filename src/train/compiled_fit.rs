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
use super::fit::{fit, FitOptions, History, InPlaceStep, StepFns, StepOutput};
use super::loss::Loss;
use super::model_fit::check_trainable;
use super::off_mask::OffMaskParams;
use super::optimizer::Optimizer;
use super::step::StepModel;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::model::Model;
use crate::runtime::step::InPlace;
use crate::runtime::CompileOptions;
use ndarray::ArrayD;

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
    check_trainable(model.graph())?;
    // Weights, outputs, gradients and optimizer state at the compiled batch, before
    // any of them is allocated (first: a model that cannot be trained here at all is
    // refused for that, whatever the targets).
    if opts.batch_size > 0 {
        crate::budget::check_fit(model.graph(), opts.batch_size, opts.stop_on_non_finite)?;
    }
    check_targets(model.graph(), loss, "y", ys)?;
    if let Some((_, vy)) = validation {
        check_targets(model.graph(), loss, "validation y", vy)?;
    }
    let copts = CompileOptions {
        max_batch: opts.batch_size.max(1),
        ..compile.clone()
    };
    let mut step_model = StepModel::new(model, loss, &copts, opts.seed, !opts.metrics.is_empty())?;
    // Validation as `evaluate` runs it: logits for cross-entropies, activity penalties.
    let evaluator = Evaluator::new(model, &copts)?;
    // Graph parameters, then the off-mask entries training changes (see `off_mask`).
    let extended = OffMaskParams::new(model, &optimizer.config)?;
    let n = extended.graph_len();
    let mut params: Vec<ArrayD<f32>> = extended.params(model)?;
    let graph = model.graph().clone();
    let table = extended.table(&graph);
    let step_cell = std::cell::RefCell::new(&mut step_model);
    let mut step = |p: &[ArrayD<f32>], x: &ArrayD<f32>, y: &ArrayD<f32>| -> Result<StepOutput> {
        let mut out = step_cell.borrow_mut().step(&p[..n], x, y)?;
        out.grads = extended.grads(std::mem::take(&mut out.grads));
        Ok(out)
    };
    // The update of the parameters whose gradient reaches the optimizer unchanged (no
    // regularizer adds to it) runs in their backward kernels where the rule allows it.
    let trainable = table.trainable();
    let accepts: Vec<bool> = (0..n)
        .map(|i| trainable[i] && table.specs[i].regularizer.is_none())
        .collect();
    let rule = match compile.engine.is_reference() {
        true => None,
        false => optimizer.in_place_rule(accepts),
    };
    let mut in_place = |p: &mut [ArrayD<f32>],
                        opt: &mut Optimizer,
                        x: &ArrayD<f32>,
                        y: &ArrayD<f32>,
                        stop: bool|
     -> Result<InPlaceStep> {
        let rule = rule
            .as_ref()
            .ok_or_else(|| Error::internal("in-place step without a rule"))?;
        let mut s = step_cell.borrow_mut();
        let mut updated = s.updated_in_place(x.shape()[0], rule)?;
        updated.resize(p.len(), false);
        let (hyper, pending) = opt.begin_in_place(p, &trainable, updated, rule)?;
        let mut slots = opt.slot_refs();
        slots.truncate(n);
        let in_place = InPlace {
            rule,
            hyper: &hyper,
            slots,
        };
        match s.step_in_place(&mut p[..n], x, y, in_place, stop)? {
            (loss, None) => Ok(InPlaceStep::Stopped(loss)),
            (_, Some(mut out)) => {
                out.grads = extended.grads(std::mem::take(&mut out.grads));
                Ok(InPlaceStep::Ran(Box::new(out), pending))
            }
        }
    };
    let mut predict =
        |p: &[ArrayD<f32>], x: &ArrayD<f32>| -> Result<BatchOutput> { evaluator.batch(&p[..n], x) };
    // The gradient program's weight-sized outputs go back to its pool after the update
    // (the off-mask gradients appended by `extended.grads` are dropped).
    let mut recycle = |batch: usize, mut grads: Vec<ArrayD<f32>>| {
        grads.truncate(n);
        step_cell.borrow().recycle(batch, grads);
    };
    // The Dropout masks' generator, kept in and restored from a resume state.
    let mut randomness = |set: Option<[u64; 4]>| {
        let mut s = step_cell.borrow_mut();
        if let Some(state) = set {
            s.set_randomness(state);
        }
        s.randomness()
    };
    // The update runs compiled on the same engine (bitwise the host's result).
    let opts = &FitOptions {
        update: Some((compile.engine, compile.threads)),
        ..opts.clone()
    };
    let target = std::cell::RefCell::new(&mut *model);
    let mut save = |p: &[ArrayD<f32>], path: &std::path::Path, weights_only: bool| {
        let mut target = target.borrow_mut();
        target.set_params(p[..n].to_vec())?;
        if weights_only {
            target.save_weights(path)
        } else {
            target.save(path)
        }
    };
    let result = fit(
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
            in_place: match rule {
                Some(_) => Some(&mut in_place),
                None => None,
            },
            predict: Some(&mut predict),
            save: Some(&mut save),
            recycle: Some(&mut recycle),
            randomness: Some(&mut randomness),
        },
        callbacks,
    );
    // An interruption comes between steps: keep the weights of the last finished one.
    if matches!(result, Ok(_) | Err(Error::Interrupted { .. })) {
        extended.store(&mut target.borrow_mut(), params)?;
    }
    result
}

/// The targets must fit the model's output as a whole, checked before training so the
/// message gives the whole shapes (a per-batch check would report the batch slice):
/// `(N, *output)`, or for sparse labels `N` times the output's rows.
fn check_targets(graph: &Graph, loss: &Loss, what: &str, ys: &ArrayD<f32>) -> Result<()> {
    let Some(&out) = graph.outputs.first() else {
        return Ok(());
    };
    let out = &graph.nodes[out].shape;
    let (n, per) = match ys.shape().split_first() {
        Some((&n, per)) => (n, per),
        None => (0, &[][..]),
    };
    let mut want = vec![n];
    want.extend_from_slice(out);
    let fits = match loss {
        Loss::SparseCategoricalCrossentropy { .. } => {
            let rows: usize = out[..out.len().saturating_sub(1)].iter().product();
            per.iter().product::<usize>() == rows
        }
        _ => per == out.as_slice(),
    };
    if fits {
        return Ok(());
    }
    let detail = match loss {
        Loss::SparseCategoricalCrossentropy { .. } => format!(
            "{what} of shape {:?} does not fit the model's output {want:?}: sparse labels \
             need {} per sample",
            ys.shape(),
            out[..out.len().saturating_sub(1)].iter().product::<usize>()
        ),
        _ => format!(
            "{what} of shape {:?} does not fit the model's output: expected {want:?}",
            ys.shape()
        ),
    };
    // Data that does not fit the model is an input error, as the per-batch loss check
    // reports it (Python: `InputError`).
    Err(Error::Input { detail })
}
