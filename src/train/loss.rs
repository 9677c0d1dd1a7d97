//! Keras losses: value and gradient with respect to the prediction.
//!
//! Every formula is tf-keras 2.21's (`tf_keras/losses.py` and `tf_keras/backend.py`),
//! including its clipping with `ε = 1e-7` (`backend.epsilon()`), and every gradient is the
//! one TensorFlow's autodiff takes through those ops: `clip_by_value` passes the gradient
//! on `[lo, hi]` inclusive, `maximum(x, y)` passes it to `x` when `x ≥ y`, `abs` has
//! gradient `sign` (0 at 0), `reduce_max` splits it equally among tied maxima.
//!
//! Reduction is Keras's `sum_over_batch_size`: the per-sample loss function reduces the
//! last axis (mean or sum, as Keras does for that loss), and the result is averaged over
//! every remaining element (batch and any further axes).
//!
//! Note on cross-entropies in `fit`: when a tf-keras model's output comes from a
//! `softmax` / `sigmoid` activation, `backend._get_logits` silently replaces the
//! probabilities by the activation's input and uses the `from_logits` formula (no
//! clipping). [`Loss::for_output_activation`] gives that substitute loss; the gradient
//! side must then start the backward pass at the logits.

use crate::error::{Error, Result};
use ndarray::{ArrayD, IxDyn};

/// `backend.epsilon()`, as the float32 constant TensorFlow uses.
pub(crate) const EPS: f32 = 1e-7;

/// A Keras loss with its configuration.
#[derive(Clone, Debug, PartialEq)]
pub enum Loss {
    /// `mean((p − t)², axis=-1)` (`mse`).
    MeanSquaredError,
    /// `mean(|p − t|, axis=-1)` (`mae`).
    MeanAbsoluteError,
    /// `100·mean(|(t − p) / max(|t|, ε)|, axis=-1)` (`mape`).
    MeanAbsolutePercentageError,
    /// `mean((log(max(p, ε)+1) − log(max(t, ε)+1))², axis=-1)` (`msle`).
    MeanSquaredLogarithmicError,
    /// Huber loss with threshold `delta`, mean over the last axis.
    Huber {
        /// Threshold between the quadratic and the linear part.
        delta: f32,
    },
    /// `mean(x + softplus(−2x) − log 2, axis=-1)` with `x = p − t`.
    LogCosh,
    /// Binary cross-entropy, mean over the last axis.
    BinaryCrossentropy {
        /// Whether the prediction is logits.
        from_logits: bool,
        /// Smoothing of the labels toward 0.5.
        label_smoothing: f32,
    },
    /// Categorical cross-entropy over the last axis.
    CategoricalCrossentropy {
        /// Whether the prediction is logits.
        from_logits: bool,
        /// Smoothing of the labels toward `1/C`.
        label_smoothing: f32,
    },
    /// Categorical cross-entropy with integer class labels.
    SparseCategoricalCrossentropy {
        /// Whether the prediction is logits.
        from_logits: bool,
    },
    /// `Σ t·log(t/p)` over the last axis, both clipped to `[ε, 1]`.
    KlDivergence,
    /// `mean(p − t·log(p + ε), axis=-1)`.
    Poisson,
    /// `−Σ normalize(t)·normalize(p)` over the last axis.
    CosineSimilarity,
    /// `mean(max(1 − t·p, 0), axis=-1)`; labels in {0,1} become {−1,1}.
    Hinge,
    /// `mean(max(1 − t·p, 0)², axis=-1)`; labels in {0,1} become {−1,1}.
    SquaredHinge,
    /// `max(max((1−t)·p) − Σ t·p + 1, 0)` over the last axis.
    CategoricalHinge,
}

/// The activation that produced a model's output, as far as the loss cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputActivation {
    /// Softmax along the last axis.
    Softmax,
    /// Elementwise sigmoid.
    Sigmoid,
    /// Anything else.
    Other,
}

impl Loss {
    /// The loss tf-keras actually computes when the output comes from `act`: a
    /// probability cross-entropy after softmax / sigmoid becomes its `from_logits` form
    /// (`backend._get_logits`); the caller then feeds logits and backpropagates from
    /// them. `None` when nothing changes.
    pub fn for_output_activation(&self, act: OutputActivation) -> Option<Loss> {
        match (self, act) {
            (
                Loss::BinaryCrossentropy {
                    from_logits: false,
                    label_smoothing,
                },
                OutputActivation::Sigmoid,
            ) => Some(Loss::BinaryCrossentropy {
                from_logits: true,
                label_smoothing: *label_smoothing,
            }),
            (
                Loss::CategoricalCrossentropy {
                    from_logits: false,
                    label_smoothing,
                },
                OutputActivation::Softmax,
            ) => Some(Loss::CategoricalCrossentropy {
                from_logits: true,
                label_smoothing: *label_smoothing,
            }),
            (
                Loss::SparseCategoricalCrossentropy { from_logits: false },
                OutputActivation::Softmax,
            ) => Some(Loss::SparseCategoricalCrossentropy { from_logits: true }),
            _ => None,
        }
    }

    /// The loss averaged over the batch (`sum_over_batch_size`) and its gradient with
    /// respect to `y_pred`. Shapes must match (sparse: `y_true` is `y_pred`'s shape
    /// without the last axis, or with a last axis of 1).
    pub fn value_and_grad(
        &self,
        y_true: &ArrayD<f32>,
        y_pred: &ArrayD<f32>,
    ) -> Result<(f64, ArrayD<f32>)> {
        let shape = y_pred.shape().to_vec();
        let c = shape.last().copied().unwrap_or(1).max(1);
        let n_total = y_pred.len();
        if n_total == 0 {
            return Err(input("empty prediction"));
        }
        let rows = n_total / c;
        let p = y_pred.as_standard_layout();
        let p = p
            .as_slice()
            .ok_or_else(|| Error::internal("non-contiguous"))?;
        let t = y_true.as_standard_layout();
        let t = t
            .as_slice()
            .ok_or_else(|| Error::internal("non-contiguous"))?;
        if let Loss::SparseCategoricalCrossentropy { from_logits } = self {
            if t.len() != rows {
                return Err(input(format!(
                    "sparse labels: expected {rows} labels for prediction shape {shape:?}, found shape {:?}",
                    y_true.shape()
                )));
            }
            let (v, g) = sparse_cce(t, p, c, *from_logits)?;
            return finish(v, g, rows, &shape);
        }
        if y_true.shape() != y_pred.shape() {
            return Err(input(format!(
                "y_true shape {:?} differs from prediction shape {shape:?}",
                y_true.shape()
            )));
        }
        let mut g = vec![0f64; n_total];
        let mut total = 0f64;
        let cf = c as f64;
        let eps = EPS as f64;
        match self {
            Loss::MeanSquaredError => {
                total =
                    elementwise_mean(t, p, cf, &mut g, |t, p| ((p - t) * (p - t), 2.0 * (p - t)))
            }
            Loss::MeanAbsoluteError => {
                total = elementwise_mean(t, p, cf, &mut g, |t, p| ((p - t).abs(), sign(p - t)))
            }
            Loss::MeanAbsolutePercentageError => {
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    let den = t.abs().max(eps);
                    (100.0 * ((t - p) / den).abs(), 100.0 * sign(p - t) / den)
                })
            }
            Loss::MeanSquaredLogarithmicError => {
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    let pm = p.max(eps);
                    let a = (pm + 1.0).ln();
                    let b = (t.max(eps) + 1.0).ln();
                    let pass = if p >= eps { 1.0 } else { 0.0 };
                    ((a - b) * (a - b), 2.0 * (a - b) / (pm + 1.0) * pass)
                })
            }
            Loss::Huber { delta } => {
                let d = *delta as f64;
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    let e = p - t;
                    if e.abs() <= d {
                        (0.5 * e * e, e)
                    } else {
                        (d * e.abs() - 0.5 * d * d, d * sign(e))
                    }
                })
            }
            Loss::LogCosh => {
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    let x = p - t;
                    (x + softplus(-2.0 * x) - std::f64::consts::LN_2, x.tanh())
                })
            }
            Loss::Poisson => {
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    (p - t * (p + eps).ln(), 1.0 - t / (p + eps))
                })
            }
            Loss::BinaryCrossentropy {
                from_logits,
                label_smoothing,
            } => {
                let ls = *label_smoothing as f64;
                let lo = EPS as f64;
                let hi = (1.0f32 - EPS) as f64;
                total = if *from_logits {
                    elementwise_mean(t, p, cf, &mut g, |t, x| {
                        let t = t * (1.0 - ls) + 0.5 * ls;
                        let v = x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
                        (v, sigmoid(x) - t)
                    })
                } else {
                    elementwise_mean(t, p, cf, &mut g, |t, p| {
                        let t = t * (1.0 - ls) + 0.5 * ls;
                        let pc = p.clamp(lo, hi);
                        let v = -(t * (pc + eps).ln() + (1.0 - t) * (1.0 - pc + eps).ln());
                        let pass = if (lo..=hi).contains(&p) { 1.0 } else { 0.0 };
                        (v, pass * (-t / (pc + eps) + (1.0 - t) / (1.0 - pc + eps)))
                    })
                }
            }
            Loss::Hinge | Loss::SquaredHinge => {
                let binary = t.iter().all(|&v| v == 0.0 || v == 1.0);
                let squared = matches!(self, Loss::SquaredHinge);
                total = elementwise_mean(t, p, cf, &mut g, |t, p| {
                    let t = if binary { 2.0 * t - 1.0 } else { t };
                    let h = 1.0 - t * p;
                    let m = h.max(0.0);
                    let dm = if h >= 0.0 { -t } else { 0.0 };
                    if squared {
                        (m * m, 2.0 * m * dm)
                    } else {
                        (m, dm)
                    }
                })
            }
            _ => {
                for r in 0..rows {
                    let range = r * c..(r + 1) * c;
                    total += row_loss(self, &t[range.clone()], &p[range.clone()], &mut g[range]);
                }
            }
        }
        finish(total, g, rows, &shape)
    }

    /// The loss value only (see [`Loss::value_and_grad`]).
    pub fn value(&self, y_true: &ArrayD<f32>, y_pred: &ArrayD<f32>) -> Result<f64> {
        Ok(self.value_and_grad(y_true, y_pred)?.0)
    }
}

/// `Σ f(t, p).0 / cf` over the elements, with `g[i] = f(t[i], p[i]).1 / cf`: the
/// elementwise losses' mean over the last axis (value `f.0`, derivative `f.1`). Generic so that each loss's formula is
/// inlined into the loop instead of a `dyn Fn` call per element (the host loss was about
/// 1 ms of seed_lc2d's 32 ms training step, 800 k outputs; the same bits either way).
fn elementwise_mean(
    t: &[f32],
    p: &[f32],
    cf: f64,
    g: &mut [f64],
    f: impl Fn(f64, f64) -> (f64, f64),
) -> f64 {
    let mut s = 0.0;
    for ((&t, &p), g) in t.iter().zip(p).zip(g.iter_mut()) {
        let (v, d) = f(t as f64, p as f64);
        s += v / cf;
        *g = d / cf;
    }
    s
}

/// Divides the summed value and gradient by the number of rows.
fn finish(total: f64, g: Vec<f64>, rows: usize, shape: &[usize]) -> Result<(f64, ArrayD<f32>)> {
    let scale = 1.0 / rows as f64;
    let gv: Vec<f32> = g.iter().map(|&v| (v * scale) as f32).collect();
    let ga =
        ArrayD::from_shape_vec(IxDyn(shape), gv).map_err(|e| Error::internal(e.to_string()))?;
    Ok((total * scale, ga))
}

/// Loss of one row (last axis) for the losses that sum over it; writes the row gradient.
fn row_loss(loss: &Loss, t: &[f32], p: &[f32], g: &mut [f64]) -> f64 {
    let c = p.len();
    let eps = EPS as f64;
    let lo = eps;
    let hi = (1.0f32 - EPS) as f64;
    match loss {
        Loss::CategoricalCrossentropy {
            from_logits,
            label_smoothing,
        } => {
            let ls = *label_smoothing as f64;
            let tt: Vec<f64> = t
                .iter()
                .map(|&v| v as f64 * (1.0 - ls) + ls / c as f64)
                .collect();
            if *from_logits {
                let mx = p.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
                let se: f64 = p.iter().map(|&x| (x as f64 - mx).exp()).sum();
                let lse = mx + se.ln();
                let tsum: f64 = tt.iter().sum();
                let mut v = 0.0;
                for i in 0..c {
                    let x = p[i] as f64;
                    v += tt[i] * (lse - x);
                    g[i] = ((x - lse).exp()) * tsum - tt[i];
                }
                v
            } else {
                let s: f64 = p.iter().map(|&x| x as f64).sum();
                let q: Vec<f64> = p.iter().map(|&x| x as f64 / s).collect();
                let mut v = 0.0;
                let mut dq = vec![0.0; c];
                for i in 0..c {
                    let qc = q[i].clamp(lo, hi);
                    v -= tt[i] * qc.ln();
                    dq[i] = if (lo..=hi).contains(&q[i]) {
                        -tt[i] / qc
                    } else {
                        0.0
                    };
                }
                let dot: f64 = (0..c).map(|i| dq[i] * q[i]).sum();
                for i in 0..c {
                    g[i] = (dq[i] - dot) / s;
                }
                v
            }
        }
        Loss::KlDivergence => {
            let mut v = 0.0;
            for i in 0..c {
                let tc = (t[i] as f64).clamp(eps, 1.0);
                let pv = p[i] as f64;
                let pc = pv.clamp(eps, 1.0);
                v += tc * (tc / pc).ln();
                g[i] = if (eps..=1.0).contains(&pv) {
                    -tc / pc
                } else {
                    0.0
                };
            }
            v
        }
        Loss::CosineSimilarity => {
            let st: f64 = t.iter().map(|&x| (x as f64).powi(2)).sum();
            let sp: f64 = p.iter().map(|&x| (x as f64).powi(2)).sum();
            let rt = 1.0 / st.max(1e-12).sqrt();
            let rp = 1.0 / sp.max(1e-12).sqrt();
            let dot: f64 = (0..c).map(|i| t[i] as f64 * rt * p[i] as f64).sum();
            let live = if sp >= 1e-12 { 1.0 } else { 0.0 };
            for i in 0..c {
                let tn = t[i] as f64 * rt;
                g[i] = -(tn * rp) + dot * rp.powi(3) * p[i] as f64 * live;
            }
            -dot * rp
        }
        Loss::CategoricalHinge => {
            let pos: f64 = (0..c).map(|i| t[i] as f64 * p[i] as f64).sum();
            let vals: Vec<f64> = (0..c).map(|i| (1.0 - t[i] as f64) * p[i] as f64).collect();
            let neg = vals.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let h = neg - pos + 1.0;
            let ties = vals.iter().filter(|&&v| v == neg).count() as f64;
            for i in 0..c {
                g[i] = if h >= 0.0 {
                    let dn = if vals[i] == neg {
                        (1.0 - t[i] as f64) / ties
                    } else {
                        0.0
                    };
                    dn - t[i] as f64
                } else {
                    0.0
                };
            }
            h.max(0.0)
        }
        _ => 0.0,
    }
}

/// Sparse categorical cross-entropy: per-row sums (not yet averaged).
fn sparse_cce(t: &[f32], p: &[f32], c: usize, from_logits: bool) -> Result<(f64, Vec<f64>)> {
    let mut g = vec![0f64; p.len()];
    let mut total = 0.0;
    let lo = EPS as f64;
    let hi = (1.0f32 - EPS) as f64;
    for (r, &label) in t.iter().enumerate() {
        if !(label >= 0.0 && (label as usize) < c && label.fract() == 0.0) {
            return Err(input(format!(
                "sparse label {label} is not a class index in 0..{c}"
            )));
        }
        let l = label as usize;
        let row = &p[r * c..(r + 1) * c];
        let gr = &mut g[r * c..(r + 1) * c];
        if from_logits {
            let mx = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let lse = mx + row.iter().map(|&x| (x as f64 - mx).exp()).sum::<f64>().ln();
            total += lse - row[l] as f64;
            for i in 0..c {
                gr[i] = (row[i] as f64 - lse).exp() - if i == l { 1.0 } else { 0.0 };
            }
        } else {
            // log(clip(p)) fed to sparse_softmax_cross_entropy_with_logits.
            let pc: Vec<f64> = row.iter().map(|&x| (x as f64).clamp(lo, hi)).collect();
            let s: f64 = pc.iter().sum();
            total += s.ln() - pc[l].ln();
            for i in 0..c {
                let pass = if (lo..=hi).contains(&(row[i] as f64)) {
                    1.0
                } else {
                    0.0
                };
                gr[i] = pass * (1.0 / s - if i == l { 1.0 / pc[l] } else { 0.0 });
            }
        }
    }
    Ok((total, g))
}

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn input(detail: impl Into<String>) -> Error {
    Error::Input {
        detail: format!("loss: {}", detail.into()),
    }
}
