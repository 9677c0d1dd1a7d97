//! Derivatives of every [`Activation`], exactly as the forward pass in [`super::activation`]
//! defines them (keras-lc-semantics §8.4).
//!
//! Elementwise derivatives are evaluated in f64 from the pre-activation `x` (and rounded
//! once to f32). At the kinks of the piecewise functions the value follows TensorFlow's
//! registered gradients: `relu` has slope 0 at its threshold, `leaky_relu` slope `alpha`
//! at 0, clipping (`max_value`, `hard_sigmoid`) passes the gradient at the clip bounds.
//! Softmax-like activations are not elementwise; [`activation_backward`] applies their
//! Jacobian along the activation axis.

use super::activation::{erfc, SELU_ALPHA, SELU_SCALE};
use crate::error::{Error, Result};
use crate::graph::Activation;
use ndarray::{ArrayD, Axis, Zip};

/// Derivative `d act(x) / dx` of an elementwise activation at pre-activation `x`, whose
/// forward value is `y = act(x)` (`y` is accepted for symmetry; the derivative is computed
/// from `x` in f64).
///
/// Softmax and log-softmax are not elementwise: for them this returns their derivative
/// on an axis of length 1, which is 0 (both are constant there). NaN maps to NaN.
pub fn activation_derivative(a: &Activation, x: f32, y: f32) -> f32 {
    let _ = y;
    if x.is_nan() {
        return x;
    }
    let xd = f64::from(x);
    let d = match a {
        Activation::Linear => 1.0,
        Activation::Relu {
            alpha,
            max_value,
            threshold,
        } => return relu_derivative(x, *alpha, *max_value, *threshold),
        // s·(1 − s)
        Activation::Sigmoid => {
            let s = sigmoid(xd);
            s * (1.0 - s)
        }
        // 1 − tanh²
        Activation::Tanh => {
            let t = xd.tanh();
            1.0 - t * t
        }
        Activation::Softmax { .. } | Activation::LogSoftmax => 0.0,
        // 1 for x > 0, alpha·e^x otherwise
        Activation::Elu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                f64::from(*alpha) * xd.exp()
            }
        }
        Activation::Selu => {
            if xd > 0.0 {
                SELU_SCALE
            } else {
                SELU_SCALE * SELU_ALPHA * xd.exp()
            }
        }
        // d softplus = sigmoid
        Activation::Softplus => sigmoid(xd),
        // 1 / (1 + |x|)²
        Activation::Softsign => {
            let d = 1.0 + xd.abs();
            1.0 / (d * d)
        }
        // 0.2 where 0 ≤ 0.2x + 0.5 ≤ 1 (tf clip passes the bounds), 0 outside
        Activation::HardSigmoid => {
            let v = 0.2f32 * x + 0.5;
            if (0.0..=1.0).contains(&v) {
                0.2
            } else {
                0.0
            }
        }
        Activation::Exponential => xd.exp(),
        // s + x·s·(1 − s)
        Activation::Swish => {
            let s = sigmoid(xd);
            s + xd * s * (1.0 - s)
        }
        // Φ(x) + x·φ(x)
        Activation::Gelu { approximate: false } => {
            let cdf = 0.5 * erfc(-xd * std::f64::consts::FRAC_1_SQRT_2);
            let pdf = (-0.5 * xd * xd).exp() / (2.0 * std::f64::consts::PI).sqrt();
            cdf + xd * pdf
        }
        // u = c(x + 0.044715x³), t = tanh u: 0.5(1 + t) + 0.5x(1 − t²)·c(1 + 3·0.044715x²)
        Activation::Gelu { approximate: true } => {
            let c = (2.0 / std::f64::consts::PI).sqrt();
            let t = (c * (xd + 0.044715 * xd * xd * xd)).tanh();
            0.5 * (1.0 + t) + 0.5 * xd * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * xd * xd)
        }
        // tf relu6 gradient: 1 on (0, 6)
        Activation::Relu6 => {
            if x > 0.0 && x < 6.0 {
                1.0
            } else {
                0.0
            }
        }
        // tanh(sp) + x·(1 − tanh²(sp))·sigmoid(x), sp = softplus(x)
        Activation::Mish => {
            let t = softplus(xd).tanh();
            t + xd * (1.0 - t * t) * sigmoid(xd)
        }
        // tf leaky_relu gradient: 1 for x > 0, alpha otherwise
        Activation::LeakyRelu { alpha } => {
            if x > 0.0 {
                1.0
            } else {
                f64::from(*alpha)
            }
        }
    };
    d as f32
}

/// Derivative of Keras `backend.relu(x, alpha, max_value, threshold)` (see
/// `activation::relu`): the kept part has slope 1 where `x` exceeds the threshold (and
/// 0) and, with a cap, does not exceed the cap; the leaky part adds `alpha` below the
/// threshold. Plain `leaky_relu` (no cap, threshold 0) has slope `alpha` at 0, as TF's.
fn relu_derivative(x: f32, alpha: f32, max_value: Option<f32>, threshold: f32) -> f32 {
    if max_value.is_none() && threshold == 0.0 && alpha != 0.0 {
        return if x > 0.0 { 1.0 } else { alpha };
    }
    let lower = if threshold != 0.0 { threshold } else { 0.0 };
    let kept = if x > lower { x } else { 0.0 };
    let mut pos = if x > lower { 1.0 } else { 0.0 };
    if let Some(m) = max_value {
        // clip_by_value(kept, 0, max(m, 0)): slope passes only inside the closed range.
        if kept < 0.0 || kept > m.max(0.0) {
            pos = 0.0;
        }
    }
    let neg = if alpha != 0.0 && x < threshold {
        alpha
    } else {
        0.0
    };
    pos + neg
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// Backward pass of an activation on a batched tensor: given the pre-activation `x`, the
/// forward result `y = act(x)` and the gradient `dy` with respect to `y`, returns the
/// gradient with respect to `x`.
///
/// Softmax along `axis`: `dx = y ⊙ (dy − Σ_axis dy·y)`; log-softmax along the last axis:
/// `dx = dy − softmax(x) · Σ_axis dy` with `softmax(x) = e^y`. Errors
/// ([`Error::Internal`]) when the shapes differ or a softmax axis is out of range.
pub fn activation_backward(
    a: &Activation,
    x: &ArrayD<f32>,
    y: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    if x.shape() != y.shape() || x.shape() != dy.shape() {
        return Err(Error::internal("reference activation backward: shapes"));
    }
    match a {
        Activation::Linear => Ok(dy.clone()),
        Activation::Softmax { axis } => {
            let ax = batched_axis(*axis, x.ndim())?;
            let mut dx = dy.clone();
            for (mut d, yl) in dx.lanes_mut(ax).into_iter().zip(y.lanes(ax)) {
                let dot: f32 = d.iter().zip(yl.iter()).map(|(g, v)| g * v).sum();
                d.iter_mut()
                    .zip(yl.iter())
                    .for_each(|(g, &v)| *g = v * (*g - dot));
            }
            Ok(dx)
        }
        Activation::LogSoftmax => {
            let ax = batched_axis(-1, x.ndim())?;
            let mut dx = dy.clone();
            for (mut d, yl) in dx.lanes_mut(ax).into_iter().zip(y.lanes(ax)) {
                let sum: f32 = d.iter().sum();
                d.iter_mut()
                    .zip(yl.iter())
                    .for_each(|(g, &v)| *g -= v.exp() * sum);
            }
            Ok(dx)
        }
        _ => {
            let mut dx = dy.clone();
            Zip::from(&mut dx)
                .and(x)
                .and(y)
                .for_each(|g, &xv, &yv| *g *= activation_derivative(a, xv, yv));
            Ok(dx)
        }
    }
}

/// Batched axis of a per-sample (possibly negative) activation axis.
fn batched_axis(axis: i64, ndim: usize) -> Result<Axis> {
    let per_sample = ndim as i64 - 1;
    let a = if axis < 0 { axis + per_sample } else { axis };
    if a < 0 || a >= per_sample {
        return Err(Error::internal(format!(
            "reference activation backward: softmax axis {axis} out of range"
        )));
    }
    Ok(Axis(a as usize + 1))
}
