//! Keras metrics by name, as stateful accumulators over batches (Keras's
//! `Metric.update_state` / `result` / `reset_state`), with tf-keras 2.21's semantics.
//!
//! A [`Metric`] is what the user chose: a [`MetricKind`] (the formula and its options) and
//! the name Keras logs for it. Names follow `compile_utils.MetricsContainer`: a string
//! naming a metric function logs under that very string (`'mae'` → `mae`,
//! `'mean_absolute_error'` → `mean_absolute_error`), a string naming a metric class logs
//! under the class's default name (`'AUC'` → `auc`), a serialized metric object under its
//! `config.name`. `'accuracy'`/`'acc'` and `'crossentropy'`/`'ce'` (any case) are resolved
//! at the first batch from the shapes, as `_get_metric_object` does: binary if the output's
//! last dimension is 1, sparse if the targets have a lower rank (or a last dimension of 1
//! against a wider output), categorical otherwise — the loss plays no part.
//!
//! A [`MetricState`] accumulates one metric. Mean-type metrics are Keras's
//! `MeanMetricWrapper`: the per-sample values (the formula reduced over the last axis)
//! summed and divided by their count, in f64 here (Keras accumulates in f32; the
//! difference is far below the 1e-4 tolerance). AUC accumulates Keras's confusion
//! matrices ([`auc`]). Cross-entropy metrics follow `backend._get_logits`: when the model's
//! output came from a softmax or sigmoid, Keras computes every cross-entropy from the
//! activation's input with the `from_logits` formula; [`MetricState::update_with_logits`]
//! takes those logits.

pub mod auc;
mod names;

pub use auc::{AucConfig, AucCurve, AucSummation};
pub use names::KNOWN_NAMES;

use super::loss::Loss;
use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};

/// The formula of a metric, with its options.
#[derive(Clone, Debug, PartialEq)]
pub enum MetricKind {
    /// `'accuracy'` / `'acc'`: binary, sparse or categorical accuracy by the shapes.
    Accuracy,
    /// `'crossentropy'` / `'ce'`: binary, sparse or categorical cross-entropy by the shapes.
    Crossentropy,
    /// `keras.metrics.Accuracy`: elementwise `y_true == y_pred`, mean over every element.
    Equal,
    /// `mean((p > threshold) == t, axis=-1)`.
    BinaryAccuracy {
        /// Decision threshold (0.5 by default).
        threshold: f32,
    },
    /// `argmax(p) == argmax(t)` (first index among ties, as `tf.math.argmax`).
    CategoricalAccuracy,
    /// `argmax(p) == t` with integer labels.
    SparseCategoricalAccuracy,
    /// One-hot targets: is the true class among the `k` largest predictions
    /// (`tf.math.in_top_k`: classes tied with the k-th all count).
    TopKCategoricalAccuracy {
        /// How many of the largest predictions count.
        k: usize,
    },
    /// [`MetricKind::TopKCategoricalAccuracy`] with integer labels.
    SparseTopKCategoricalAccuracy {
        /// How many of the largest predictions count.
        k: usize,
    },
    /// `sqrt(mean((p − t)²))` over every element.
    RootMeanSquaredError,
    /// `Σ l2_normalize(t)·l2_normalize(p)` over the last axis (`l2_normalize` divides by
    /// `sqrt(max(Σx², 1e-12))`), averaged over samples.
    CosineSimilarity,
    /// A Keras loss function as a metric, averaged over samples (mae, mse, mape, msle,
    /// logcosh, the cross-entropies, kld, poisson, the hinges).
    Mean(Loss),
    /// Area under the ROC or PR curve (`keras.metrics.AUC`).
    Auc(AucConfig),
}

/// A metric as chosen by the user: its formula and the name Keras logs it under.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    name: String,
    kind: MetricKind,
}

impl Metric {
    /// A metric of `kind` logged as `name`.
    pub fn new(name: impl Into<String>, kind: MetricKind) -> Metric {
        Metric {
            name: name.into(),
            kind,
        }
    }

    /// Resolves a Keras metric string (a function or class name of `keras.metrics`, see
    /// [`KNOWN_NAMES`]). `None` if unknown. `_loss` is not consulted: tf-keras resolves
    /// `'accuracy'` from the shapes at the first batch, not from the loss.
    pub fn parse(name: &str, _loss: &Loss) -> Option<Metric> {
        names::by_string(name)
    }

    /// [`Metric::parse`] with an error listing the known names.
    pub fn parse_arg(name: &str) -> Result<Metric> {
        names::by_string(name.trim()).ok_or_else(|| Error::Usage {
            detail: format!(
                "unknown metric '{}' (known: {})",
                name.trim(),
                KNOWN_NAMES.join(", ")
            ),
        })
    }

    /// A metric from its Keras serialization: a string, or `{"class_name": …, "config":
    /// {…}}` (a metric class with its options, or `MeanMetricWrapper` with `fn`). The
    /// error says what is wrong (unknown class, unsupported option).
    pub fn from_config(v: &serde_json::Value) -> std::result::Result<Metric, String> {
        names::from_config(v)
    }

    /// The name Keras logs (the history key; `val_` + it for validation).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The formula.
    pub fn kind(&self) -> &MetricKind {
        &self.kind
    }

    /// A fresh accumulator of this metric.
    pub fn state(&self) -> MetricState {
        MetricState {
            metric: self.clone(),
            resolved: None,
            sum: 0.0,
            count: 0.0,
            confusion: None,
        }
    }
}

/// The running state of one metric over the batches seen since it was made (or reset).
#[derive(Clone, Debug)]
pub struct MetricState {
    metric: Metric,
    /// The concrete kind, fixed at the first batch (`accuracy` and `crossentropy`).
    resolved: Option<MetricKind>,
    sum: f64,
    count: f64,
    confusion: Option<auc::Confusion>,
}

impl MetricState {
    /// The metric accumulated.
    pub fn metric(&self) -> &Metric {
        &self.metric
    }

    /// Adds one batch: `y_true` as given by the user (same shape as `y_pred`, a rank-1
    /// vector for a `(n, 1)` output, or one class index per row for the sparse kinds),
    /// `y_pred` the model's output.
    pub fn update(&mut self, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Result<()> {
        self.update_with_logits(y_true, y_pred, None)
    }

    /// [`MetricState::update`] with the logits of a softmax/sigmoid output, from which
    /// Keras computes cross-entropy metrics (`backend._get_logits`).
    pub fn update_with_logits(
        &mut self,
        y_true: &ArrayD<f32>,
        y_pred: &ArrayD<f32>,
        logits: Option<&ArrayD<f32>>,
    ) -> Result<()> {
        let kind = match &self.resolved {
            Some(k) => k.clone(),
            None => {
                let k = resolve(&self.metric.kind, y_true.shape(), y_pred.shape());
                self.resolved = Some(k.clone());
                k
            }
        };
        let name = &self.metric.name;
        if let MetricKind::Auc(cfg) = &kind {
            let t = same_shape(name, y_true, y_pred)?;
            let c = self.confusion.get_or_insert_with(|| cfg.confusion());
            return cfg.update(c, &t, y_pred);
        }
        let (s, n) = batch_sum(name, &kind, y_true, y_pred, logits)?;
        self.sum += s;
        self.count += n;
        Ok(())
    }

    /// The value over everything added so far (NaN before the first batch).
    pub fn result(&self) -> f64 {
        if let (Some(MetricKind::Auc(cfg)), Some(c)) = (&self.resolved, &self.confusion) {
            return cfg.result(c);
        }
        if self.count <= 0.0 {
            return f64::NAN;
        }
        let mean = self.sum / self.count;
        match self.resolved {
            Some(MetricKind::RootMeanSquaredError) => mean.sqrt(),
            _ => mean,
        }
    }

    /// Forgets every batch (Keras's `reset_state`; the resolved kind stays, as in Keras).
    pub fn reset(&mut self) {
        self.sum = 0.0;
        self.count = 0.0;
        self.confusion = None;
    }
}

/// A [`MetricState`] as plain values, for a resume state: the sums, how `accuracy` or
/// `crossentropy` was resolved, and AUC's confusion counts, all exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSnapshot {
    /// The metric's logged name.
    pub name: String,
    /// How the kind was fixed at the first batch: `binary`, `sparse`, `categorical` (for
    /// `accuracy` and `crossentropy`), `as_given` (every other kind); `None` before it.
    pub resolution: Option<String>,
    /// Sum of the per-sample values.
    pub sum: f64,
    /// Their count.
    pub count: f64,
    /// AUC's counts per threshold (tp, fp, tn, fn), once a batch was added.
    pub confusion: Option<[Vec<f64>; 4]>,
}

/// Shapes `(y_true, y_pred)` that make [`resolve`] choose each resolution.
const RESOLUTIONS: [(&str, &[usize], &[usize]); 3] = [
    ("binary", &[1, 1], &[1, 1]),
    ("sparse", &[1], &[1, 2]),
    ("categorical", &[1, 2], &[1, 2]),
];

impl MetricState {
    /// The state as plain values (see [`MetricSnapshot`]).
    pub fn snapshot(&self) -> MetricSnapshot {
        let kind = &self.metric.kind;
        let resolution = self.resolved.as_ref().map(|r| {
            let by_shape = matches!(kind, MetricKind::Accuracy | MetricKind::Crossentropy);
            RESOLUTIONS
                .iter()
                .find(|(_, t, p)| by_shape && resolve(kind, t, p) == *r)
                .map_or("as_given", |(tag, _, _)| tag)
                .to_string()
        });
        MetricSnapshot {
            name: self.metric.name.clone(),
            resolution,
            sum: self.sum,
            count: self.count,
            confusion: self
                .confusion
                .as_ref()
                .map(|c| c.counts().map(<[f64]>::to_vec)),
        }
    }

    /// Takes over `snap`, taken from a state of the same metric; a snapshot of another
    /// metric, an unknown resolution or confusion counts for other thresholds are an
    /// [`Error::Resume`] naming the field.
    pub fn restore(&mut self, snap: &MetricSnapshot) -> Result<()> {
        let kind = &self.metric.kind;
        if snap.name != self.metric.name {
            return Err(Error::resume(
                "name",
                format!(
                    "'{}', this run's metric is '{}'",
                    snap.name, self.metric.name
                ),
            ));
        }
        let resolved = match snap.resolution.as_deref() {
            None => None,
            Some("as_given") => Some(kind.clone()),
            Some(tag) => match RESOLUTIONS.iter().find(|(t, _, _)| *t == tag) {
                Some((_, t, p)) => Some(resolve(kind, t, p)),
                None => return Err(Error::resume("resolution", format!("unknown '{tag}'"))),
            },
        };
        let confusion = match (&snap.confusion, &resolved) {
            (None, _) => None,
            (Some(c), Some(MetricKind::Auc(cfg))) => {
                let n = cfg.thresholds().0.len();
                if c.iter().any(|v| v.len() != n) {
                    return Err(Error::resume(
                        "confusion",
                        format!("counts are not {n} per list, one per threshold"),
                    ));
                }
                Some(auc::Confusion::from_counts(c.clone()))
            }
            (Some(_), _) => {
                return Err(Error::resume(
                    "confusion",
                    "confusion counts for a metric that is not an AUC",
                ))
            }
        };
        self.resolved = resolved;
        self.sum = snap.sum;
        self.count = snap.count;
        self.confusion = confusion;
        Ok(())
    }
}

/// The concrete kind of `accuracy` / `crossentropy` for these shapes
/// (`compile_utils.MetricsContainer._get_metric_object`); other kinds unchanged.
fn resolve(kind: &MetricKind, y_true: &[usize], y_pred: &[usize]) -> MetricKind {
    let last = |s: &[usize]| s.last().copied().unwrap_or(1);
    let binary = last(y_pred) == 1;
    let sparse = y_true.len() < y_pred.len() || (last(y_true) == 1 && last(y_pred) > 1);
    match kind {
        MetricKind::Accuracy if binary => MetricKind::BinaryAccuracy { threshold: 0.5 },
        MetricKind::Accuracy if sparse => MetricKind::SparseCategoricalAccuracy,
        MetricKind::Accuracy => MetricKind::CategoricalAccuracy,
        MetricKind::Crossentropy if binary => MetricKind::Mean(Loss::BinaryCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        }),
        MetricKind::Crossentropy if sparse => {
            MetricKind::Mean(Loss::SparseCategoricalCrossentropy { from_logits: false })
        }
        MetricKind::Crossentropy => MetricKind::Mean(Loss::CategoricalCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        }),
        k => k.clone(),
    }
}

/// The `from_logits` form of a cross-entropy, which Keras uses on a softmax/sigmoid
/// output whatever the configured `from_logits` (`backend._get_logits`); `None` for
/// every other loss.
pub(crate) fn crossentropy_on_logits(loss: &Loss) -> Option<Loss> {
    match loss {
        Loss::BinaryCrossentropy {
            label_smoothing, ..
        } => Some(Loss::BinaryCrossentropy {
            from_logits: true,
            label_smoothing: *label_smoothing,
        }),
        Loss::CategoricalCrossentropy {
            label_smoothing, ..
        } => Some(Loss::CategoricalCrossentropy {
            from_logits: true,
            label_smoothing: *label_smoothing,
        }),
        Loss::SparseCategoricalCrossentropy { .. } => {
            Some(Loss::SparseCategoricalCrossentropy { from_logits: true })
        }
        _ => None,
    }
}

/// `y_true` in the shape of `y_pred` when it holds as many elements and differs only by
/// axes of length 1 (Keras's `match_dtype_and_rank` and `squeeze_or_expand_dimensions`:
/// a `(n,)` target for a `(n, 1)` output); an input error naming `what` otherwise.
pub fn conform_targets(
    what: &str,
    y_true: &ArrayD<f32>,
    y_pred: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    same_shape(what, y_true, y_pred)
}

fn same_shape(what: &str, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    if y_true.shape() == y_pred.shape() {
        return Ok(y_true.clone());
    }
    let strip = |s: &[usize]| -> Vec<usize> { s.iter().copied().filter(|&d| d != 1).collect() };
    if y_true.len() == y_pred.len() && strip(y_true.shape()) == strip(y_pred.shape()) {
        let flat: Vec<f32> = y_true.iter().copied().collect();
        return ArrayD::from_shape_vec(IxDyn(y_pred.shape()), flat)
            .map_err(|e| Error::internal(e.to_string()));
    }
    Err(mismatch(what, y_true, y_pred))
}

fn mismatch(what: &str, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Error {
    Error::Input {
        detail: format!(
            "metric {what}: targets of shape {:?} do not fit predictions of shape {:?}",
            y_true.shape(),
            y_pred.shape()
        ),
    }
}

/// `(sum of the per-sample values, their count)` of a mean-type metric on one batch.
fn batch_sum(
    name: &str,
    kind: &MetricKind,
    y_true: &ArrayD<f32>,
    y_pred: &ArrayD<f32>,
    logits: Option<&ArrayD<f32>>,
) -> Result<(f64, f64)> {
    let c = y_pred.shape().last().copied().unwrap_or(1).max(1);
    let rows = y_pred.len() / c;
    let p = y_pred.as_standard_layout();
    let p = p
        .as_slice()
        .ok_or_else(|| Error::internal("non-contiguous"))?;
    let sparse_kind = matches!(
        kind,
        MetricKind::SparseCategoricalAccuracy
            | MetricKind::SparseTopKCategoricalAccuracy { .. }
            | MetricKind::Mean(Loss::SparseCategoricalCrossentropy { .. })
    );
    let t: Vec<f32> = if sparse_kind {
        if y_true.len() != rows {
            return Err(mismatch(name, y_true, y_pred));
        }
        y_true.iter().copied().collect()
    } else {
        same_shape(name, y_true, y_pred)?.iter().copied().collect()
    };
    let row = |r: usize| &p[r * c..(r + 1) * c];
    let per_row =
        |f: &dyn Fn(usize) -> f64| -> (f64, f64) { ((0..rows).map(f).sum(), rows as f64) };
    Ok(match kind {
        MetricKind::Mean(loss) => {
            let (loss, yp) = match (logits, crossentropy_on_logits(loss)) {
                (Some(z), Some(l)) => (l, z),
                _ => (loss.clone(), y_pred),
            };
            let tt = ArrayD::from_shape_vec(
                if sparse_kind {
                    IxDyn(&[rows])
                } else {
                    IxDyn(yp.shape())
                },
                t,
            )
            .map_err(|e| Error::internal(e.to_string()))?;
            (loss.value(&tt, yp)? * rows as f64, rows as f64)
        }
        MetricKind::Equal => (
            p.iter().zip(&t).filter(|(a, b)| a == b).count() as f64,
            p.len() as f64,
        ),
        MetricKind::BinaryAccuracy { threshold } => per_row(&|r| {
            let hits = row(r)
                .iter()
                .zip(&t[r * c..(r + 1) * c])
                .filter(|(&p, &t)| ((p > *threshold) as u8 as f32) == t)
                .count();
            hits as f64 / c as f64
        }),
        MetricKind::CategoricalAccuracy => {
            per_row(&|r| (argmax(row(r)) == argmax(&t[r * c..(r + 1) * c])) as u8 as f64)
        }
        MetricKind::SparseCategoricalAccuracy => {
            per_row(&|r| (argmax(row(r)) as f32 == t[r]) as u8 as f64)
        }
        MetricKind::TopKCategoricalAccuracy { k } => per_row(&|r| {
            let target = argmax(&t[r * c..(r + 1) * c]) as i64;
            in_top_k(row(r), target, *k) as u8 as f64
        }),
        MetricKind::SparseTopKCategoricalAccuracy { k } => {
            per_row(&|r| in_top_k(row(r), t[r] as i64, *k) as u8 as f64)
        }
        MetricKind::RootMeanSquaredError => (
            p.iter()
                .zip(&t)
                .map(|(&p, &t)| (p as f64 - t as f64).powi(2))
                .sum(),
            p.len() as f64,
        ),
        MetricKind::CosineSimilarity => per_row(&|r| cosine(&t[r * c..(r + 1) * c], row(r))),
        MetricKind::Accuracy | MetricKind::Crossentropy | MetricKind::Auc(_) => {
            return Err(Error::internal(format!("metric {name}: kind not resolved")))
        }
    })
}

/// Index of the first largest value (`tf.math.argmax`).
fn argmax(r: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in r.iter().enumerate() {
        if v > r[best] {
            best = i;
        }
    }
    best
}

/// `tf.math.in_top_k`: the target's prediction is finite and fewer than `k` classes
/// score strictly higher; a target outside the classes is never in the top k.
fn in_top_k(row: &[f32], target: i64, k: usize) -> bool {
    let Some(&v) = usize::try_from(target).ok().and_then(|t| row.get(t)) else {
        return false;
    };
    v.is_finite() && row.iter().filter(|&&x| x > v).count() < k
}

/// Cosine of two rows with `tf.linalg.l2_normalize`'s `max(Σx², 1e-12)`.
fn cosine(t: &[f32], p: &[f32]) -> f64 {
    let norm = |v: &[f32]| {
        let s: f64 = v.iter().map(|&x| (x as f64).powi(2)).sum();
        1.0 / s.max(1e-12).sqrt()
    };
    let dot: f64 = t.iter().zip(p).map(|(&a, &b)| a as f64 * b as f64).sum();
    dot * norm(t) * norm(p)
}
