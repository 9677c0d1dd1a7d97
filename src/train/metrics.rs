//! Keras metrics by name, as stateful accumulators over the batches of an epoch
//! (Keras's `Metric.update_state` / `result`).
//!
//! A [`Metric`] is the choice (resolved from a Keras name against the loss, as
//! `compile_utils.MetricsContainer` does); a [`MetricState`] accumulates it over batches.
//! Mean-type metrics are Keras's `MeanMetricWrapper`: the per-sample value summed and
//! divided by the number of samples, in f64 here (Keras accumulates in f32; the
//! difference is far below the 1e-4 tolerance).

use super::loss::Loss;
use crate::error::{Error, Result};
use ndarray::ArrayD;

/// A metric reported per epoch (a running mean over samples, as Keras's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// `accuracy` whose kind depends on the output's last dimension (1: binary).
    Accuracy,
    /// `mean((p > 0.5) == t, axis=-1)`.
    BinaryAccuracy,
    /// `argmax(p) == argmax(t)`.
    CategoricalAccuracy,
    /// `argmax(p) == t`.
    SparseCategoricalAccuracy,
    /// Mean absolute error.
    MeanAbsoluteError,
    /// Mean squared error.
    MeanSquaredError,
}

impl Metric {
    /// Resolves a Keras metric name against the loss (`accuracy` follows the loss as in
    /// `compile_utils.MetricsContainer._get_metric_object`). `None` if unknown.
    pub fn parse(name: &str, loss: &Loss) -> Option<Metric> {
        Some(match name {
            "accuracy" | "acc" => match loss {
                Loss::BinaryCrossentropy { .. } => Metric::BinaryAccuracy,
                Loss::CategoricalCrossentropy { .. } => Metric::CategoricalAccuracy,
                Loss::SparseCategoricalCrossentropy { .. } => Metric::SparseCategoricalAccuracy,
                _ => Metric::Accuracy,
            },
            "binary_accuracy" => Metric::BinaryAccuracy,
            "categorical_accuracy" => Metric::CategoricalAccuracy,
            "sparse_categorical_accuracy" => Metric::SparseCategoricalAccuracy,
            "mae" | "mean_absolute_error" => Metric::MeanAbsoluteError,
            "mse" | "mean_squared_error" => Metric::MeanSquaredError,
            _ => return None,
        })
    }

    /// The name Keras reports.
    pub fn name(&self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::BinaryAccuracy => "binary_accuracy",
            Metric::CategoricalAccuracy => "categorical_accuracy",
            Metric::SparseCategoricalAccuracy => "sparse_categorical_accuracy",
            Metric::MeanAbsoluteError => "mae",
            Metric::MeanSquaredError => "mse",
        }
    }

    /// `(sum over samples, number of samples)` of a mean-type metric on one batch.
    fn batch(&self, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Result<(f64, f64)> {
        let c = y_pred.shape().last().copied().unwrap_or(1).max(1);
        let p: Vec<f32> = y_pred.iter().copied().collect();
        let t: Vec<f32> = y_true.iter().copied().collect();
        let rows = p.len() / c;
        let sparse = matches!(self, Metric::SparseCategoricalAccuracy);
        if (sparse && t.len() != rows) || (!sparse && t.len() != p.len()) {
            return Err(Error::Input {
                detail: format!(
                    "metric {}: y_true shape {:?} does not fit prediction shape {:?}",
                    self.name(),
                    y_true.shape(),
                    y_pred.shape()
                ),
            });
        }
        let argmax = |r: &[f32]| {
            let mut best = 0;
            for (i, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = i;
                }
            }
            best
        };
        let kind = match self {
            Metric::Accuracy if c == 1 => Metric::BinaryAccuracy,
            Metric::Accuracy => Metric::CategoricalAccuracy,
            m => *m,
        };
        let mut sum = 0f64;
        for r in 0..rows {
            let pr = &p[r * c..(r + 1) * c];
            sum += match kind {
                Metric::SparseCategoricalAccuracy => (argmax(pr) as f32 == t[r]) as u8 as f64,
                Metric::CategoricalAccuracy => {
                    (argmax(pr) == argmax(&t[r * c..(r + 1) * c])) as u8 as f64
                }
                _ => {
                    let tr = &t[r * c..(r + 1) * c];
                    let s: f64 = pr
                        .iter()
                        .zip(tr)
                        .map(|(&p, &t)| match kind {
                            Metric::BinaryAccuracy => ((p > 0.5) as u8 as f32 == t) as u8 as f64,
                            Metric::MeanAbsoluteError => (p as f64 - t as f64).abs(),
                            _ => (p as f64 - t as f64).powi(2),
                        })
                        .sum();
                    s / c as f64
                }
            };
        }
        Ok((sum, rows as f64))
    }
}

impl Metric {
    /// A fresh accumulator of this metric.
    pub fn state(&self) -> MetricState {
        MetricState {
            metric: *self,
            sum: 0.0,
            count: 0.0,
        }
    }
}

/// The running state of one metric over the batches seen since it was made (or reset).
#[derive(Clone, Debug)]
pub struct MetricState {
    metric: Metric,
    sum: f64,
    count: f64,
}

impl MetricState {
    /// The metric accumulated.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Adds one batch (`y_true`, `y_pred` of the model's output shape; sparse targets one
    /// class index per row).
    pub fn update(&mut self, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Result<()> {
        let (s, c) = self.metric.batch(y_true, y_pred)?;
        self.sum += s;
        self.count += c;
        Ok(())
    }

    /// The value over everything added so far (NaN before the first batch).
    pub fn result(&self) -> f64 {
        if self.count > 0.0 {
            self.sum / self.count
        } else {
            f64::NAN
        }
    }

    /// Forgets every batch (Keras's `reset_state`).
    pub fn reset(&mut self) {
        self.sum = 0.0;
        self.count = 0.0;
    }
}
