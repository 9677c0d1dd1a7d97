//! `model.evaluate`: the loss and metrics of a model over a dataset, in batches, as
//! tf-keras 2.21's `Model.evaluate` / `test_step` computes them.
//!
//! Per batch (`test_step`): the inference-mode forward pass; the data loss
//! (`sum_over_batch_size`); plus `model.losses` — the weight regularization (the same
//! every batch) and each activity regularizer `reg(layer output) / batch size`
//! (`base_layer._handle_activity_regularization`, which runs in inference calls too);
//! the loss logged is Keras's `Mean` metric updated with `sample_weight = batch size`, so
//! a smaller last batch counts less. Every metric accumulates over all batches
//! ([`MetricState`]).
//!
//! When the output comes from a softmax or sigmoid, Keras computes every cross-entropy —
//! the loss and cross-entropy metrics — from the activation's input with the
//! `from_logits` formula (`backend._get_logits`, which looks only at the output tensor,
//! not at which cross-entropy asks). [`Evaluator`] therefore runs a program whose output
//! is the logits, applies the activation on the host for everything else, and returns
//! the outputs of inner layers with activity regularizers beside it (the output layer's
//! own activity regularizer sees the activated output).
//!
//! [`evaluate_batches_with`] is the engine-independent core (the fit loop's validation
//! can use it); [`evaluate`] and [`evaluate_compiled`] run a model.

use super::loss::{Loss, OutputActivation};
use super::metrics::{conform_targets, crossentropy_on_logits, Metric, MetricState};
use super::model_fit::{logits_graph, predictions};
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use crate::graph::ops::Regularizer;
use crate::graph::{NodeId, Op};
use crate::model::Model;
use crate::runtime::{CompileOptions, CompiledModel, Engine};
use ndarray::{ArrayD, Axis};
use std::sync::Arc;

/// What `evaluate` returns: `(name, value)` pairs in Keras's order (`loss` first, then
/// each metric as compiled), as `model.evaluate(..., return_dict=True)`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Logs(pub Vec<(String, f64)>);

impl Logs {
    /// The value logged under `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }

    /// The names in order.
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Keras's progress-bar form: `loss: 0.1234 - mae: 0.5678` (`Progbar`: `%.4f` when
    /// `|v| > 1e-3`, else `%.4e`; non-finite values as Python prints them).
    pub fn keras_line(&self) -> String {
        self.0
            .iter()
            .map(|(n, v)| {
                if v.is_nan() {
                    format!("{n}: nan")
                } else if v.is_infinite() {
                    format!("{n}: {}", if *v > 0.0 { "inf" } else { "-inf" })
                } else if v.abs() > 1e-3 {
                    format!("{n}: {v:.4}")
                } else {
                    format!("{n}: {}", exp4(*v))
                }
            })
            .collect::<Vec<_>>()
            .join(" - ")
    }

    /// One line of JSON, `{"loss": …, "mae": …}`, in Keras's order at full precision
    /// (non-finite values as `null`, which JSON cannot represent otherwise). Each key and
    /// value is written by serde_json; the object is assembled here because serde_json's
    /// map sorts its keys.
    pub fn to_json_line(&self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(n, v)| {
                let key = serde_json::Value::String(n.clone()).to_string();
                format!("{key}: {}", serde_json::json!(v))
            })
            .collect();
        format!("{{{}}}", fields.join(", "))
    }
}

/// `%.4e` as Python prints it (`1.2346e+03`).
fn exp4(v: f64) -> String {
    let s = format!("{v:.4e}");
    match s.split_once('e') {
        Some((m, e)) => {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            format!("{m}e{sign}{digits:0>2}")
        }
        None => s,
    }
}

/// Options of [`evaluate`] (Keras `evaluate` arguments and the engine).
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluateOptions {
    /// Samples per batch (Keras's default 32; the last batch may be smaller).
    pub batch_size: usize,
    /// Engine of the forward pass.
    pub engine: Engine,
    /// Worker threads (≥ 1).
    pub threads: usize,
}

impl Default for EvaluateOptions {
    fn default() -> Self {
        EvaluateOptions {
            batch_size: 32,
            engine: Engine::Jit,
            threads: 1,
        }
    }
}

/// What one batch's forward pass gives evaluation.
#[derive(Clone, Debug)]
pub struct BatchOutput {
    /// The model's output (what the metrics see).
    pub y_pred: ArrayD<f32>,
    /// The logits of a softmax/sigmoid output, from which cross-entropies are computed.
    pub logits: Option<ArrayD<f32>>,
    /// The batch's activity regularization loss (already divided by the batch size).
    pub activity_loss: f64,
}

/// The evaluation loop over `(x, y)` in batches of `batch_size`: `predict` runs one batch;
/// `weight_regularization` is added to every batch's loss (Keras adds the regularizers
/// of the current weights in each `test_step`).
pub fn evaluate_batches_with(
    predict: &mut dyn FnMut(&ArrayD<f32>) -> Result<BatchOutput>,
    loss: &Loss,
    metrics: &[Metric],
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    batch_size: usize,
    weight_regularization: f64,
) -> Result<Logs> {
    let n = check_data(x, y, batch_size)?;
    check_names(metrics)?;
    let mut states: Vec<MetricState> = metrics.iter().map(Metric::state).collect();
    let (mut sum, mut count) = (0f64, 0f64);
    for start in (0..n).step_by(batch_size) {
        let r = start..(start + batch_size).min(n);
        let xb = x.slice_axis(Axis(0), r.clone().into()).to_owned();
        let yb = y.slice_axis(Axis(0), r.clone().into()).to_owned();
        let out = predict(&xb)?;
        let data = batch_loss(loss, &yb, &out)?;
        sum += (data + weight_regularization + out.activity_loss) * r.len() as f64;
        count += r.len() as f64;
        for st in states.iter_mut() {
            st.update_with_logits(&yb, &out.y_pred, out.logits.as_ref())?;
        }
    }
    let mut logs = vec![("loss".to_string(), sum / count)];
    logs.extend(
        states
            .iter()
            .map(|s| (s.metric().name().to_string(), s.result())),
    );
    Ok(Logs(logs))
}

/// [`evaluate_batches_with`] for a `predict` that returns the output alone (no logits, no
/// activity regularization).
pub fn evaluate_batches(
    predict: &mut dyn FnMut(&ArrayD<f32>) -> Result<ArrayD<f32>>,
    loss: &Loss,
    metrics: &[Metric],
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    batch_size: usize,
    weight_regularization: f64,
) -> Result<Logs> {
    let mut wrapped = |xb: &ArrayD<f32>| -> Result<BatchOutput> {
        Ok(BatchOutput {
            y_pred: predict(xb)?,
            logits: None,
            activity_loss: 0.0,
        })
    };
    evaluate_batches_with(
        &mut wrapped,
        loss,
        metrics,
        x,
        y,
        batch_size,
        weight_regularization,
    )
}

/// The data loss of one batch, from the logits for a cross-entropy when there are some.
fn batch_loss(loss: &Loss, y: &ArrayD<f32>, out: &BatchOutput) -> Result<f64> {
    let (l, p) = match (&out.logits, crossentropy_on_logits(loss)) {
        (Some(z), Some(l)) => (l, z),
        _ => (loss.clone(), &out.y_pred),
    };
    if matches!(l, Loss::SparseCategoricalCrossentropy { .. }) {
        return l.value(y, p);
    }
    l.value(&conform_targets("loss", y, p)?, p)
}

fn check_data(x: &ArrayD<f32>, y: &ArrayD<f32>, batch_size: usize) -> Result<usize> {
    let usage = |detail: String| Error::Usage { detail };
    if batch_size == 0 {
        return Err(usage("batch size must be at least 1".into()));
    }
    let n = x.shape().first().copied().unwrap_or(0);
    let ny = y.shape().first().copied().unwrap_or(0);
    if n != ny || n == 0 || y.ndim() == 0 {
        return Err(usage(format!(
            "x has {n} samples and y has {ny}: evaluation needs the same non-zero number"
        )));
    }
    Ok(n)
}

/// Keras refuses two metrics with the same name (`_set_metric_names`); so does lcjit,
/// since the logs are keyed by name.
fn check_names(metrics: &[Metric]) -> Result<()> {
    for (i, m) in metrics.iter().enumerate() {
        if m.name() == "loss" || metrics[..i].iter().any(|o| o.name() == m.name()) {
            return Err(Error::Usage {
                detail: format!(
                    "found two metrics with the name '{}': every metric needs a unique name",
                    m.name()
                ),
            });
        }
    }
    Ok(())
}

/// Where an activity regularizer reads its layer's output.
#[derive(Clone, Debug)]
enum ActivitySource {
    /// The model's (activated) output.
    Output,
    /// Extra output `k` of the evaluation program (an inner layer).
    Extra(usize),
}

/// The evaluation program of a model: a compiled forward pass that returns the logits
/// (for a softmax/sigmoid output) and the outputs of inner layers with activity
/// regularizers, and the host work that turns them into a [`BatchOutput`].
pub struct Evaluator {
    program: CompiledModel,
    kind: OutputActivation,
    on_logits: bool,
    activity: Vec<(ActivitySource, Regularizer)>,
}

impl Evaluator {
    /// Builds (and for the JIT compiles) the evaluation program of `model`.
    pub fn new(model: &Model, compile: &CompileOptions) -> Result<Evaluator> {
        let graph = model.graph();
        if graph.inputs.len() != 1 || graph.outputs.len() != 1 {
            return Err(Error::Usage {
                detail: "evaluate needs a model with one input and one output".into(),
            });
        }
        let out = graph.outputs[0];
        let (kind, logits) = logits_graph(graph);
        let on_logits = kind != OutputActivation::Other;
        let mut g = if on_logits { logits } else { graph.clone() };
        let mut activity = Vec::new();
        for (id, node) in graph.nodes.iter().enumerate() {
            let Some(reg) = activity_regularizer(&node.op) else {
                continue;
            };
            let source = if id == out {
                ActivitySource::Output
            } else {
                g.outputs.push(id as NodeId);
                ActivitySource::Extra(g.outputs.len() - 1)
            };
            activity.push((source, *reg));
        }
        let program = CompiledModel::new(Arc::new(model.with_graph(g)?), compile.clone())?;
        Ok(Evaluator {
            program,
            kind,
            on_logits,
            activity,
        })
    }

    /// Whether this model needs more than its plain output for evaluation (logits or
    /// inner layer outputs).
    pub fn needs_program(model: &Model) -> bool {
        let graph = model.graph();
        logits_graph(graph).0 != OutputActivation::Other
            || graph
                .nodes
                .iter()
                .any(|n| activity_regularizer(&n.op).is_some())
    }

    /// Runs one batch with the weights `params` (canonical layout).
    pub fn batch(&self, params: &[ArrayD<f32>], x: &ArrayD<f32>) -> Result<BatchOutput> {
        let outs = self.program.predict_with(params, std::slice::from_ref(x))?;
        let z = outs
            .first()
            .ok_or_else(|| Error::internal("evaluation program produced no output"))?;
        let y_pred = predictions(self.kind, self.on_logits, z);
        let batch = x.shape().first().copied().unwrap_or(0);
        let mut activity_loss = 0.0;
        for (source, reg) in &self.activity {
            let v = match source {
                ActivitySource::Output => &y_pred,
                ActivitySource::Extra(k) => outs
                    .get(*k)
                    .ok_or_else(|| Error::internal("evaluation program lost an output"))?,
            };
            // divide_no_nan(reg(y), batch)
            if batch > 0 {
                activity_loss += activity_value(reg, v) / batch as f64;
            }
        }
        Ok(BatchOutput {
            logits: self.on_logits.then(|| z.clone()),
            y_pred,
            activity_loss,
        })
    }
}

/// The activity regularizer of a layer, if it has one.
fn activity_regularizer(op: &Op) -> Option<&Regularizer> {
    match op {
        Op::LocallyConnected(l) => l.options.activity_regularizer.as_ref(),
        Op::Dense(d) => d.options.activity_regularizer.as_ref(),
        Op::Conv(c) => c.options.activity_regularizer.as_ref(),
        _ => None,
    }
}

/// `l1·Σ|y| + l2·Σy²` over the whole batch output (each term skipped when its factor is 0).
fn activity_value(reg: &Regularizer, y: &ArrayD<f32>) -> f64 {
    let mut v = 0.0;
    if reg.l1 != 0.0 {
        v += reg.l1 as f64 * y.iter().map(|&a| (a as f64).abs()).sum::<f64>();
    }
    if reg.l2 != 0.0 {
        v += reg.l2 as f64 * y.iter().map(|&a| (a as f64).powi(2)).sum::<f64>();
    }
    v
}

/// `model.evaluate(x, y, batch_size)` with the model's current weights.
pub fn evaluate(
    model: &Model,
    loss: &Loss,
    metrics: &[Metric],
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    opts: &EvaluateOptions,
) -> Result<Logs> {
    check_data(x, y, opts.batch_size)?;
    let compile = CompileOptions {
        engine: opts.engine,
        threads: opts.threads,
        max_batch: opts.batch_size,
        ..Default::default()
    };
    let ev = Evaluator::new(model, &compile)?;
    let params = model.params();
    let reg = ParamTable::from_graph(model.graph()).regularize(params, None)?;
    let mut predict = |xb: &ArrayD<f32>| ev.batch(params, xb);
    evaluate_batches_with(&mut predict, loss, metrics, x, y, opts.batch_size, reg)
}

/// [`evaluate`] on an already compiled model (its engine and threads; batches of
/// `batch_size`). The compiled program is used as it is when the model's plain output is
/// all evaluation needs; otherwise the evaluation program is compiled beside it.
pub fn evaluate_compiled(
    compiled: &CompiledModel,
    loss: &Loss,
    metrics: &[Metric],
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    batch_size: usize,
) -> Result<Logs> {
    check_data(x, y, batch_size)?;
    let model = compiled.model();
    let params = model.params();
    let reg = ParamTable::from_graph(model.graph()).regularize(params, None)?;
    if Evaluator::needs_program(model) {
        let compile = CompileOptions {
            max_batch: batch_size,
            ..compiled.options().clone()
        };
        let ev = Evaluator::new(model, &compile)?;
        let mut predict = |xb: &ArrayD<f32>| ev.batch(params, xb);
        return evaluate_batches_with(&mut predict, loss, metrics, x, y, batch_size, reg);
    }
    let mut predict = |xb: &ArrayD<f32>| compiled.predict(xb);
    evaluate_batches(&mut predict, loss, metrics, x, y, batch_size, reg)
}
