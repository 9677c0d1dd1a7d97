//! What every trainer shares about a model: which models it can train
//! ([`check_trainable`]), the logits graph of the step, the predictions batch metrics see,
//! and [`fit_model`], the trainer on the reference engine (the oracle of the compiled ones,
//! see [`super::compiled_fit`]).
//!
//! What tf-keras does that this reproduces: the loss of a softmax/sigmoid output with a
//! probability cross-entropy is computed from the logits (`backend._get_logits`), so the
//! step runs a copy of the graph whose output activation is linear and backpropagates from
//! the logits. The step runs in training mode ([`crate::reference::train`] on the reference
//! engine): BatchNormalization normalizes with batch statistics, backpropagates through
//! them and returns new moving statistics (assigned after the optimizer step, see
//! [`super::StepOutput::updates`]); Dropout multiplies by masks drawn from a generator
//! seeded with [`FitOptions::seed`] — one stream for the whole `fit`, so a seed fixes every
//! mask, but Keras's own masks (TF's Philox streams) are not reproduced. The history loss
//! is the training-mode loss, as Keras's; validation and predictions run in inference mode
//! (moving statistics, no Dropout). Not supported (a clear error, never a silent
//! difference): multi-output models.

use super::callbacks::Callback;
use super::fit::{FitOptions, History};
use super::loss::{Loss, OutputActivation};
use super::optimizer::Optimizer;
use crate::error::{Error, Result};
use crate::graph::{Activation, Graph, Op};
use crate::model::Model;
use crate::runtime::{CompileOptions, Engine};
use ndarray::ArrayD;

/// Checks that the reference training step can train `graph` as Keras would (exactly,
/// except for Dropout masks: same distribution, another random stream). Activity
/// regularizers train on every engine (see [`crate::reference::activity`]).
pub fn check_trainable(graph: &Graph) -> Result<()> {
    if graph.inputs.len() != 1 || graph.outputs.len() != 1 {
        return Err(Error::Usage {
            detail: "training needs a model with one input and one output".into(),
        });
    }
    Ok(())
}

/// The model's predictions for the batch metrics, from the step's output `z`: the output
/// activation applied when the step ran on logits (`on_logits`), else `z` itself.
pub(super) fn predictions(kind: OutputActivation, on_logits: bool, z: &ArrayD<f32>) -> ArrayD<f32> {
    if !on_logits {
        return z.clone();
    }
    match kind {
        OutputActivation::Sigmoid => z.mapv(|v| 1.0 / (1.0 + (-v).exp())),
        OutputActivation::Softmax => {
            let mut p = z.clone();
            let last = ndarray::Axis(p.ndim().saturating_sub(1));
            for mut lane in p.lanes_mut(last) {
                let m = lane.fold(f32::NEG_INFINITY, |a, &b| a.max(b));
                lane.mapv_inplace(|v| (v - m).exp());
                let s = lane.sum();
                lane.mapv_inplace(|v| v / s);
            }
            p
        }
        OutputActivation::Other => z.clone(),
    }
}

/// The output activation and a copy of `graph` whose output activation is linear.
pub(super) fn logits_graph(graph: &Graph) -> (OutputActivation, Graph) {
    let mut g = graph.clone();
    let Some(&out) = g.outputs.first() else {
        return (OutputActivation::Other, g);
    };
    let slot = match &mut g.nodes[out].op {
        Op::LocallyConnected(l) => Some(&mut l.activation),
        Op::Dense(d) => Some(&mut d.activation),
        Op::Conv(c) => Some(&mut c.activation),
        Op::Activation(a) => Some(a),
        _ => None,
    };
    let kind = match slot {
        Some(a) => {
            let rank = graph.nodes[out].shape.len() as i64;
            let kind = match a {
                Activation::Softmax { axis } if *axis == -1 || *axis == rank - 1 => {
                    OutputActivation::Softmax
                }
                Activation::Sigmoid => OutputActivation::Sigmoid,
                _ => OutputActivation::Other,
            };
            if kind != OutputActivation::Other {
                *a = Activation::Linear;
            }
            kind
        }
        None => OutputActivation::Other,
    };
    (kind, g)
}

/// Trains `model` in place with `optimizer` and `loss` on the reference path, as
/// `model.fit(xs, ys, …)` does in tf-keras; returns the history. The same trainer as the
/// compiled engines ([`super::fit_compiled`]) with the reference engine's step: the naive
/// training-mode forward and backward passes and the host optimizer update.
#[allow(clippy::too_many_arguments)]
pub fn fit_model(
    model: &mut Model,
    optimizer: &mut Optimizer,
    loss: &Loss,
    xs: &ArrayD<f32>,
    ys: &ArrayD<f32>,
    validation: Option<(&ArrayD<f32>, &ArrayD<f32>)>,
    opts: &FitOptions,
    callbacks: &mut [&mut dyn Callback],
) -> Result<History> {
    let compile = CompileOptions {
        engine: Engine::Reference,
        threads: 1,
        max_batch: opts.batch_size.max(1),
        ..Default::default()
    };
    super::fit_compiled(
        model, optimizer, loss, xs, ys, validation, opts, &compile, callbacks,
    )
}
