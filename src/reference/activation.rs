//! Activations, exactly as Keras defines them (keras-lc-semantics §8.4, tf-keras 2.x).
//!
//! Elementwise activations are evaluated in f64 and rounded once to f32, so each result is
//! the correctly rounded value of the Keras formula up to the few-ulp error of the f64
//! helpers: this is the accuracy target later JIT polynomials are tested against. The
//! softmax-like activations work along one axis of a batched tensor, in f32 as Keras does
//! (stable form: the maximum is subtracted first).

use crate::graph::Activation;
use ndarray::{ArrayD, Axis};

/// SELU's `alpha` (Keras constant).
pub const SELU_ALPHA: f64 = 1.673_263_242_354_377_2;
/// SELU's `scale` (Keras constant).
pub const SELU_SCALE: f64 = 1.050_700_987_355_480_5;

/// Applies one activation to a batched tensor (softmax-like ones along their axis; axes
/// count the per-sample shape, so add 1 for the batch axis).
///
/// A softmax axis outside the per-sample rank (shape inference rejects such graphs) fills
/// `x` with NaN rather than panicking, so the mistake cannot go unnoticed.
pub fn apply_activation(a: &Activation, x: &mut ArrayD<f32>) {
    match a {
        Activation::Linear => {}
        Activation::Softmax { axis } => along_axis(x, *axis, softmax_lane),
        Activation::LogSoftmax => along_axis(x, -1, log_softmax_lane),
        _ => x.mapv_inplace(|v| activation_scalar(a, v)),
    }
}

/// Scalar activation (for elementwise ones), exposed so later JIT code can test its
/// polynomials against it.
///
/// NaN maps to NaN. The softmax-like activations are not elementwise; for them this
/// returns their value on an axis of length 1 (softmax 1, log-softmax 0).
pub fn activation_scalar(a: &Activation, x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let xd = f64::from(x);
    match a {
        Activation::Linear => x,
        Activation::Relu {
            alpha,
            max_value,
            threshold,
        } => relu(x, *alpha, *max_value, *threshold),
        // 1 / (1 + e^{−x})
        Activation::Sigmoid => sigmoid(xd) as f32,
        Activation::Tanh => xd.tanh() as f32,
        Activation::Softmax { .. } => 1.0,
        Activation::LogSoftmax => 0.0,
        // x for x > 0, alpha·(e^x − 1) otherwise
        Activation::Elu { alpha } => {
            if x > 0.0 {
                x
            } else {
                (f64::from(*alpha) * xd.exp_m1()) as f32
            }
        }
        // scale · elu(x, alpha) with Keras's constants
        Activation::Selu => {
            let e = if xd > 0.0 {
                xd
            } else {
                SELU_ALPHA * xd.exp_m1()
            };
            (SELU_SCALE * e) as f32
        }
        // ln(1 + e^x), stable: max(x, 0) + ln(1 + e^{−|x|})
        Activation::Softplus => softplus(xd) as f32,
        // x / (1 + |x|)
        Activation::Softsign => (xd / (1.0 + xd.abs())) as f32,
        // clip(0.2·x + 0.5, 0, 1), in f32 as tf-keras computes it
        Activation::HardSigmoid => {
            crate::loop_ir::interp::min(crate::loop_ir::interp::relu(0.2f32 * x + 0.5), 1.0)
        }
        Activation::Exponential => xd.exp() as f32,
        // x · sigmoid(x)
        Activation::Swish => (xd * sigmoid(xd)) as f32,
        // exact: x·Φ(x) = 0.5·x·(1 + erf(x/√2)) = 0.5·x·erfc(−x/√2) (no cancellation)
        Activation::Gelu { approximate: false } => {
            (0.5 * xd * erfc(-xd * std::f64::consts::FRAC_1_SQRT_2)) as f32
        }
        // approximate: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        Activation::Gelu { approximate: true } => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            (0.5 * xd * (1.0 + (c * (xd + 0.044715 * xd * xd * xd)).tanh())) as f32
        }
        // min(max(x, 0), 6)
        Activation::Relu6 => crate::loop_ir::interp::min(crate::loop_ir::interp::relu(x), 6.0),
        // x · tanh(softplus(x))
        Activation::Mish => (xd * softplus(xd).tanh()) as f32,
        // x for x ≥ 0, alpha·x otherwise
        Activation::LeakyRelu { alpha } => {
            if x >= 0.0 {
                x
            } else {
                alpha * x
            }
        }
    }
}

/// Keras `backend.relu(x, alpha, max_value, threshold)` (tf-keras), operation for
/// operation in f32:
///
/// ```text
/// neg = relu(−x + threshold)                       (when alpha ≠ 0)
/// pos = threshold ≠ 0 ? x · (x > threshold ? 1 : 0) : relu(x)
/// pos = clip(pos, 0, max(max_value, 0))           (when capped)
/// y   = pos − alpha · neg                         (when alpha ≠ 0)
/// ```
///
/// `relu`, `clip` propagate NaN (`tf.nn.relu`, `tf.maximum`); `−∞ · 0` makes a thresholded
/// relu of `−∞` NaN, as in Keras.
fn relu(x: f32, alpha: f32, max_value: Option<f32>, threshold: f32) -> f32 {
    use crate::loop_ir::interp::{max, min, relu as r};
    let mut pos = if threshold != 0.0 {
        x * if x > threshold { 1.0 } else { 0.0 }
    } else {
        r(x)
    };
    if let Some(m) = max_value {
        // backend.clip raises max_value to min_value when it is below it.
        pos = min(max(pos, 0.0), m.max(0.0));
    }
    if alpha != 0.0 {
        pos - alpha * r(-x + threshold)
    } else {
        pos
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `2/√π`.
const TWO_OVER_SQRT_PI: f64 = std::f64::consts::FRAC_2_SQRT_PI;

/// The error function, to within a few ulp in f64.
///
/// For `|x| ≤ 3` the everywhere-convergent series with positive terms (Abramowitz &
/// Stegun 7.1.6) `erf(x) = 2/√π · e^{−x²} · Σ_n 2ⁿ x^{2n+1} / (1·3·…·(2n+1))`; beyond, via
/// [`erfc`]'s continued fraction.
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x.abs() <= 3.0 {
        erf_series(x)
    } else if x > 0.0 {
        1.0 - erfc_cf(x)
    } else {
        erfc_cf(-x) - 1.0
    }
}

/// The complementary error function `1 − erf(x)`, accurate in relative terms also in the
/// tails (`erfc(6) ≈ 2.15e−17`).
///
/// For `x > 1.5` the continued fraction (A&S 7.1.14)
/// `erfc(x) = e^{−x²}/√π · 1/(x + (1/2)/(x + 1/(x + (3/2)/(x + 2/(x + …)))))`, evaluated
/// backwards from a fixed depth; `erfc(−x) = 2 − erfc(x)`; `1 − erf(x)` otherwise (where
/// the cancellation costs at most a few ulp, since `erfc(1.5) ≈ 0.034`).
pub fn erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x > 1.5 {
        erfc_cf(x)
    } else if x < -1.5 {
        2.0 - erfc_cf(-x)
    } else {
        1.0 - erf_series(x)
    }
}

fn erf_series(x: f64) -> f64 {
    // term_n = 2ⁿ x^{2n+1} / (2n+1)!!, term_n = term_{n−1} · 2x² / (2n+1).
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() && n < 200.0 {
        n += 1.0;
        term *= 2.0 * x2 / (2.0 * n + 1.0);
        sum += term;
    }
    TWO_OVER_SQRT_PI * (-x2).exp() * sum
}

/// erfc by continued fraction, for `x > 1.5` only (where 250 levels give full f64
/// precision; checked against CPython's `math.erfc` in the tests).
fn erfc_cf(x: f64) -> f64 {
    let mut t = x;
    for n in (1..=250).rev() {
        t = x + (f64::from(n) * 0.5) / t;
    }
    (-x * x).exp() / (std::f64::consts::PI.sqrt() * t)
}

/// Applies `f` to every 1-D lane of `x` along the per-sample axis `axis` (negative from
/// the end), i.e. batched axis `axis + 1`.
fn along_axis(x: &mut ArrayD<f32>, axis: i64, f: fn(&mut [f32])) {
    let per_sample = x.ndim() as i64 - 1;
    let a = if axis < 0 { axis + per_sample } else { axis };
    if a < 0 || a >= per_sample {
        x.fill(f32::NAN);
        return;
    }
    let ax = Axis(a as usize + 1);
    let mut buf = Vec::new();
    for mut lane in x.lanes_mut(ax) {
        buf.clear();
        buf.extend(lane.iter().copied());
        f(&mut buf);
        lane.iter_mut().zip(&buf).for_each(|(d, s)| *d = *s);
    }
}

/// `softmax(v)_i = e^{v_i − max v} / Σ_j e^{v_j − max v}`, in f32, as TensorFlow's Eigen
/// kernel: a NaN or `+∞` makes the whole lane NaN, a `−∞` entry gives 0, an all-`−∞` lane
/// NaN. (oneDNN's softmax, which TensorFlow uses on some hosts, returns 0 instead of NaN
/// at the finite entries of a lane holding NaN or `+∞`; lcjit follows the reference
/// kernel.)
fn softmax_lane(v: &mut [f32]) {
    let m = v
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, super::pool::nan_max);
    let mut sum = 0.0f32;
    for e in v.iter_mut() {
        *e = (*e - m).exp();
        sum += *e;
    }
    for e in v.iter_mut() {
        *e /= sum;
    }
}

/// `log_softmax(v)_i = v_i − max v − ln Σ_j e^{v_j − max v}`, in f32.
fn log_softmax_lane(v: &mut [f32]) {
    let m = v
        .iter()
        .copied()
        .fold(f32::NEG_INFINITY, super::pool::nan_max);
    let sum: f32 = v.iter().map(|e| (e - m).exp()).sum();
    let ln = sum.ln();
    for e in v.iter_mut() {
        *e = *e - m - ln;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, IxDyn};

    fn close(a: f32, b: f64, rel: f64) {
        let err = (f64::from(a) - b).abs();
        assert!(err <= rel * b.abs().max(1e-30), "{a} vs {b}: error {err}");
    }

    #[test]
    fn erf_and_erfc_match_known_values() {
        // Reference values from CPython's math.erf / math.erfc.
        let cases = [
            (1e-3, 0.0011283787909692365, 0.9988716212090307),
            (0.1, 0.1124629160182849, 0.8875370839817152),
            (0.5, 0.5204998778130465, 0.4795001221869535),
            (1.0, 0.8427007929497149, 0.15729920705028513),
            (1.5, 0.9661051464753108, 0.033894853524689274),
            (1.6, 0.976348383344644, 0.023651616655355985),
            (2.0, 0.9953222650189527, 0.004677734981047265),
            (3.0, 0.9999779095030014, 2.2090496998585438e-05),
            (3.5, 0.9999992569016276, 7.430983723414128e-07),
            (4.0, 0.9999999845827421, 1.541725790028002e-08),
            (5.0, 0.9999999999984626, 1.5374597944280351e-12),
            (6.0, 1.0, 2.1519736712498916e-17),
        ];
        for (x, e, c) in cases {
            assert!((erf(x) - e).abs() <= 1e-15, "erf({x}) = {}", erf(x));
            assert!((erf(-x) + e).abs() <= 1e-15, "erf(-{x})");
            assert!((erfc(x) - c).abs() <= 1e-13 * c, "erfc({x}) = {}", erfc(x));
            assert!((erfc(-x) - (2.0 - c)).abs() <= 1e-15, "erfc(-{x})");
        }
        assert_eq!(erf(0.0), 0.0);
        assert_eq!(erfc(40.0), 0.0);
        assert_eq!(erf(f64::INFINITY), 1.0);
    }

    #[test]
    fn gelu_matches_known_values() {
        let exact = Activation::Gelu { approximate: false };
        let approx = Activation::Gelu { approximate: true };
        let cases = [
            (-5.0, -1.4332578593959731e-06, -2.2917961972623857e-07),
            (-3.0, -0.004049694094890287, -0.0036373920817729943),
            (-1.0, -0.15865525393145707, -0.15880800939172324),
            (-0.5, -0.15426876936299344, -0.15428599017485606),
            (0.5, 0.34573123063700656, 0.34571400982514394),
            (1.0, 0.8413447460685429, 0.8411919906082768),
            (2.0, 1.9544997361036416, 1.954597694087775),
            (10.0, 10.0, 10.0),
        ];
        for (x, e, a) in cases {
            close(activation_scalar(&exact, x), e, 1e-7);
            close(activation_scalar(&approx, x), a, 1e-7);
        }
        assert!(activation_scalar(&exact, -10.0).abs() < 1e-20);
    }

    #[test]
    fn elementwise_activations_match_keras_formulas() {
        use Activation::*;
        let relu = Relu {
            alpha: 0.0,
            max_value: None,
            threshold: 0.0,
        };
        assert_eq!(activation_scalar(&relu, -2.0), 0.0);
        assert_eq!(activation_scalar(&relu, 3.5), 3.5);
        assert_eq!(activation_scalar(&Linear, -7.25), -7.25);
        close(activation_scalar(&Sigmoid, 0.0), 0.5, 1e-7);
        close(activation_scalar(&Sigmoid, 2.0), 0.8807970779778823, 1e-7);
        close(
            activation_scalar(&Sigmoid, -100.0),
            3.720075976020836e-44,
            5e-2,
        );
        close(activation_scalar(&Tanh, 0.5), 0.46211715726000974, 1e-7);
        close(
            activation_scalar(&Elu { alpha: 1.0 }, -1.0),
            -0.6321205588285577,
            1e-7,
        );
        close(
            activation_scalar(&Elu { alpha: 0.5 }, -2.0),
            -0.43233235838169365,
            1e-7,
        );
        assert_eq!(activation_scalar(&Elu { alpha: 1.0 }, 2.0), 2.0);
        close(activation_scalar(&Selu, -1.0), -1.1113307378125625, 1e-7);
        close(activation_scalar(&Selu, 2.0), 2.101401974710961, 1e-7);
        close(activation_scalar(&Softplus, 100.0), 100.0, 1e-7);
        close(
            activation_scalar(&Softplus, 0.0),
            std::f64::consts::LN_2,
            1e-7,
        );
        close(
            activation_scalar(&Softplus, -20.0),
            2.061153620314381e-09,
            1e-6,
        );
        close(activation_scalar(&Softsign, 3.0), 0.75, 1e-7);
        close(activation_scalar(&Softsign, -1.0), -0.5, 1e-7);
        assert_eq!(activation_scalar(&HardSigmoid, 1.0), 0.7);
        assert_eq!(activation_scalar(&HardSigmoid, 3.0), 1.0);
        assert_eq!(activation_scalar(&HardSigmoid, -2.6), 0.0);
        close(
            activation_scalar(&Exponential, 1.0),
            std::f64::consts::E,
            1e-7,
        );
        close(activation_scalar(&Swish, 1.0), 0.7310585786300049, 1e-7);
        close(activation_scalar(&Swish, -2.0), -0.23840584404423515, 1e-7);
        assert_eq!(activation_scalar(&Relu6, 7.0), 6.0);
        assert_eq!(activation_scalar(&Relu6, -1.0), 0.0);
        assert_eq!(activation_scalar(&Relu6, 2.5), 2.5);
        close(activation_scalar(&Mish, 1.0), 0.8650983882673103, 1e-7);
        close(activation_scalar(&Mish, -1.0), -0.30340146137410895, 1e-7);
        close(
            activation_scalar(&LeakyRelu { alpha: 0.2 }, -3.0),
            -0.6,
            1e-7,
        );
        assert_eq!(activation_scalar(&LeakyRelu { alpha: 0.2 }, 3.0), 3.0);
        assert!(activation_scalar(&Tanh, f32::NAN).is_nan());
    }

    #[test]
    fn relu_with_alpha_cap_and_threshold_follows_keras_backend() {
        let r = |alpha, max_value, threshold, x| {
            activation_scalar(
                &Activation::Relu {
                    alpha,
                    max_value,
                    threshold,
                },
                x,
            )
        };
        // Leaky part below the threshold: alpha·(x − threshold).
        assert_eq!(r(0.5, None, 1.0, -1.0), -1.0);
        assert_eq!(r(0.5, None, 1.0, 1.0), 0.0); // x == threshold → 0 (strict >)
        assert_eq!(r(0.5, None, 1.0, 3.0), 3.0);
        // Cap.
        assert_eq!(r(0.0, Some(2.0), 0.0, 5.0), 2.0);
        assert_eq!(r(0.1, Some(2.0), 0.0, -5.0), -0.5);
        // Negative threshold without a cap keeps negative x above it.
        assert_eq!(r(0.0, None, -1.0, -0.5), -0.5);
        // ...but a cap clips the kept part at 0, as backend.clip(x, 0, max) does.
        assert_eq!(r(0.0, Some(4.0), -1.0, -0.5), 0.0);
        // Plain leaky relu.
        assert_eq!(r(0.3, None, 0.0, -2.0), -0.6);
    }

    #[test]
    fn softmax_and_log_softmax_along_axes() {
        // (B=1, 2, 3); softmax over the last axis and over per-sample axis 0.
        let x = array![[[1.0f32, 2.0, 3.0], [0.0, 0.0, 1000.0]]].into_dyn();
        let mut y = x.clone();
        apply_activation(&Activation::Softmax { axis: -1 }, &mut y);
        let e = [1.0f64, 1.0f64.exp(), 2.0f64.exp()];
        let s: f64 = e.iter().sum();
        for (j, ej) in e.iter().enumerate() {
            close(y[[0, 0, j]], ej / s, 1e-6);
        }
        assert_eq!(y[[0, 1, 2]], 1.0);
        assert_eq!(y[[0, 1, 0]], 0.0);
        let mut z = x.clone();
        apply_activation(&Activation::Softmax { axis: 0 }, &mut z);
        close(z[[0, 0, 0]], 1.0f64.exp() / (1.0 + 1.0f64.exp()), 1e-6);
        assert_eq!(z[[0, 0, 2]], 0.0);
        assert_eq!(z[[0, 1, 2]], 1.0);
        let mut l = x.clone();
        apply_activation(&Activation::LogSoftmax, &mut l);
        close(l[[0, 0, 2]], (e[2] / s).ln(), 1e-6);
        assert_eq!(l[[0, 1, 2]], 0.0);
        assert_eq!(l[[0, 1, 0]], -1000.0);
        let mut bad = ArrayD::<f32>::zeros(IxDyn(&[1, 2]));
        apply_activation(&Activation::Softmax { axis: 1 }, &mut bad);
        assert!(bad.iter().all(|v| v.is_nan()));
    }
}
