//! `keras.metrics.AUC` (tf-keras 2.21, single label): confusion matrices at fixed
//! thresholds accumulated over batches, and the area under the ROC, PR or PR-gain curve
//! by Riemann sums (interpolation, minoring, majoring) or, for PR with interpolation,
//! Davis & Goadrich's formula (`interpolate_pr_auc`).
//!
//! Thresholds: `[−ε, 1/(T−1), …, (T−2)/(T−1), 1+ε]` with `ε = 1e-7`, or the user's sorted
//! list between `−ε` and `1+ε`. Evenly spaced thresholds use Keras's bucket method
//! (`_update_confusion_matrix_variables_optimized`): predictions clipped to `[0, 1]`, bucket
//! `max(ceil(p·(T−1)) − 1, 0)` computed in f32 as TensorFlow does, and a prediction is
//! positive at every threshold up to its bucket — so a prediction exactly on a threshold
//! counts as negative there, as `p > t`. Other thresholds compare `p > t` in f32 (no
//! clipping, as Keras's general path). Targets count as positive when non-zero. Every
//! element of the batch is one example (no multi-label).

use crate::error::{Error, Result};
use ndarray::ArrayD;

/// `backend.epsilon()`.
const EPS: f64 = 1e-7;

/// Which curve the area is taken under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AucCurve {
    /// Recall against false-positive rate.
    Roc,
    /// Precision against recall.
    Pr,
    /// Precision gain against recall gain.
    PrGain,
}

impl AucCurve {
    /// Keras's spelling (`ROC`, `PR`, `PR_GAIN`, any case).
    pub fn parse(s: &str) -> Option<AucCurve> {
        match s.to_ascii_uppercase().as_str() {
            "ROC" => Some(AucCurve::Roc),
            "PR" => Some(AucCurve::Pr),
            "PR_GAIN" | "PRGAIN" => Some(AucCurve::PrGain),
            _ => None,
        }
    }
}

/// How the area is summed between thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AucSummation {
    /// Mean of the two heights (PR: Davis & Goadrich interpolation).
    Interpolation,
    /// The smaller height.
    Minoring,
    /// The larger height.
    Majoring,
}

impl AucSummation {
    /// Keras's spelling (`interpolation`, `minoring`, `majoring`).
    pub fn parse(s: &str) -> Option<AucSummation> {
        match s.to_ascii_lowercase().as_str() {
            "interpolation" => Some(AucSummation::Interpolation),
            "minoring" => Some(AucSummation::Minoring),
            "majoring" => Some(AucSummation::Majoring),
            _ => None,
        }
    }
}

/// The options of an AUC metric (Keras's defaults: 200 thresholds, ROC, interpolation).
#[derive(Clone, Debug, PartialEq)]
pub struct AucConfig {
    /// Number of thresholds when `thresholds` is `None` (> 1).
    pub num_thresholds: usize,
    /// The curve.
    pub curve: AucCurve,
    /// The summation.
    pub summation: AucSummation,
    /// Explicit thresholds in `[0, 1]` (Keras adds `−ε` and `1+ε` around them).
    pub thresholds: Option<Vec<f64>>,
    /// Apply a sigmoid to the predictions first.
    pub from_logits: bool,
}

impl Default for AucConfig {
    fn default() -> Self {
        AucConfig {
            num_thresholds: 200,
            curve: AucCurve::Roc,
            summation: AucSummation::Interpolation,
            thresholds: None,
            from_logits: false,
        }
    }
}

/// Accumulated confusion matrices, one entry per threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Confusion {
    tp: Vec<f64>,
    fp: Vec<f64>,
    tn: Vec<f64>,
    fn_: Vec<f64>,
}

impl Confusion {
    /// The counts per threshold: true positives, false positives, true negatives, false
    /// negatives (what a resume state keeps).
    pub fn counts(&self) -> [&[f64]; 4] {
        [&self.tp, &self.fp, &self.tn, &self.fn_]
    }

    /// Confusion matrices from [`Confusion::counts`]' four lists (of equal length).
    pub fn from_counts([tp, fp, tn, fn_]: [Vec<f64>; 4]) -> Confusion {
        Confusion { tp, fp, tn, fn_ }
    }
}

impl AucConfig {
    /// The thresholds as Keras builds them (f32, as the variable dtype), and whether they
    /// are evenly spaced (Keras's `is_evenly_distributed_thresholds` on the inner list).
    pub fn thresholds(&self) -> (Vec<f32>, bool) {
        let inner: Vec<f64> = match &self.thresholds {
            Some(t) => {
                let mut t = t.clone();
                t.sort_by(f64::total_cmp);
                t
            }
            None => {
                let n = self.num_thresholds;
                (0..n.saturating_sub(2))
                    .map(|i| (i + 1) as f64 / (n - 1) as f64)
                    .collect()
            }
        };
        let even = match &self.thresholds {
            None => true,
            Some(_) => {
                let all: Vec<f64> = std::iter::once(0.0)
                    .chain(inner.iter().copied())
                    .chain(std::iter::once(1.0))
                    .collect();
                let m = all.len();
                m >= 3
                    && all.iter().enumerate().all(|(i, &t)| {
                        let e = (i as f32 / (m - 1) as f32) as f64;
                        (t - e).abs() <= EPS + 1e-5 * e.abs()
                    })
            }
        };
        let all = std::iter::once(0.0 - EPS)
            .chain(inner)
            .chain(std::iter::once(1.0 + EPS))
            .map(|t| t as f32)
            .collect();
        (all, even)
    }

    /// Empty confusion matrices for these thresholds.
    pub fn confusion(&self) -> Confusion {
        let n = self.thresholds().0.len();
        Confusion {
            tp: vec![0.0; n],
            fp: vec![0.0; n],
            tn: vec![0.0; n],
            fn_: vec![0.0; n],
        }
    }

    /// Adds a batch (`y_true` already in the shape of `y_pred`).
    pub fn update(
        &self,
        c: &mut Confusion,
        y_true: &ArrayD<f32>,
        y_pred: &ArrayD<f32>,
    ) -> Result<()> {
        let (th, even) = self.thresholds();
        let n = th.len();
        if c.tp.len() != n {
            return Err(Error::internal(
                "AUC state has another number of thresholds",
            ));
        }
        let preds = y_pred.iter().map(|&p| {
            if self.from_logits {
                1.0 / (1.0 + (-p).exp())
            } else {
                p
            }
        });
        for (&t, p) in y_true.iter().zip(preds) {
            let positive = t != 0.0;
            // Thresholds at index < `above` see this prediction as positive.
            let above = if even {
                let p = p.clamp(0.0, 1.0);
                let bucket = ((p * (n - 1) as f32).ceil() - 1.0).max(0.0);
                bucket as usize + 1
            } else {
                th.iter().take_while(|&&x| p > x).count()
            };
            let above = above.min(n);
            for i in 0..n {
                let pos = i < above;
                match (positive, pos) {
                    (true, true) => c.tp[i] += 1.0,
                    (true, false) => c.fn_[i] += 1.0,
                    (false, true) => c.fp[i] += 1.0,
                    (false, false) => c.tn[i] += 1.0,
                }
            }
        }
        Ok(())
    }

    /// The area under the curve for the matrices so far (`AUC.result`).
    pub fn result(&self, c: &Confusion) -> f64 {
        let n = c.tp.len();
        if n < 2 {
            return 0.0;
        }
        if self.curve == AucCurve::Pr && self.summation == AucSummation::Interpolation {
            return interpolate_pr(c);
        }
        let (x, y): (Vec<f64>, Vec<f64>) = (0..n)
            .map(|i| {
                let (tp, fp, tn, fn_) = (c.tp[i], c.fp[i], c.tn[i], c.fn_[i]);
                let recall = div(tp, tp + fn_);
                match self.curve {
                    AucCurve::Roc => (div(fp, fp + tn), recall),
                    AucCurve::Pr => (recall, div(tp, tp + fp)),
                    AucCurve::PrGain => {
                        let s = div(tp + fn_, fp + tn);
                        let (rg, pg) = if tp == 0.0 {
                            (0.0, 1.0)
                        } else {
                            (1.0 - s * div(fn_, tp), 1.0 - s * div(fp, tp))
                        };
                        (rg.max(0.0), pg)
                    }
                }
            })
            .unzip();
        (0..n - 1)
            .map(|i| {
                let h = match self.summation {
                    AucSummation::Interpolation => (y[i] + y[i + 1]) / 2.0,
                    AucSummation::Minoring => y[i].min(y[i + 1]),
                    AucSummation::Majoring => y[i].max(y[i + 1]),
                };
                (x[i] - x[i + 1]) * h
            })
            .sum()
    }
}

/// `tf.math.divide_no_nan`.
fn div(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

/// `AUC.interpolate_pr_auc`.
fn interpolate_pr(c: &Confusion) -> f64 {
    let n = c.tp.len();
    let p: Vec<f64> = (0..n).map(|i| c.tp[i] + c.fp[i]).collect();
    (0..n - 1)
        .map(|i| {
            let dtp = c.tp[i] - c.tp[i + 1];
            let dp = p[i] - p[i + 1];
            let slope = div(dtp, dp.max(0.0));
            let intercept = c.tp[i + 1] - slope * p[i + 1];
            let ratio = if p[i] > 0.0 && p[i + 1] > 0.0 {
                div(p[i], p[i + 1].max(0.0))
            } else {
                1.0
            };
            div(
                slope * (dtp + intercept * ratio.ln()),
                (c.tp[i + 1] + c.fn_[i + 1]).max(0.0),
            )
        })
        .sum()
}
