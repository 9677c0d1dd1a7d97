//! Activity regularization in a training step: the penalty a layer's
//! `activity_regularizer` adds to the loss, computed on the layer's post-activation output,
//! and its gradient with respect to that output.
//!
//! Keras's rules (keras-lc-semantics.md §6):
//! - tf.keras / tf-keras (`base_layer._handle_activity_regularization`): the penalty is
//!   `divide_no_nan(reg(y), B)`, divided by the batch size ([`ActivityScale::PerSample`]);
//! - Keras 2 multi-backend and Keras 1 add `reg(y)` undivided ([`ActivityScale::Sum`]);
//!   Keras ≤ 1.1 only in the training phase, which is the only place lcjit adds it.
//!
//! With `reg(y) = l1·Σ|y| + l2·Σy²` the gradient is `(l1·sign(y) + 2·l2·y) / d`
//! (`d` the divisor, `sign(0) = 0` as TF's `Abs` gradient). Every engine's training step
//! uses these functions: the reference trainer adds the gradients into its reverse sweep,
//! the compiled ones bind them as extra cotangents of the gradient program (see
//! [`crate::lower::grad`]). `lcjit grad` (inference mode, no losses) never adds them.
//! Invariant: the penalty is a sum in f64 over the output in row-major order, so every
//! engine reports the same value for the same output.

use crate::graph::{Graph, NodeId, Regularizer};
use ndarray::ArrayD;

/// How a dialect scales the activity penalty.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActivityScale {
    /// tf-keras: divided by the batch size.
    PerSample,
    /// Keras 2 multi-backend and Keras 1: not divided.
    Sum,
}

impl ActivityScale {
    /// The scale of a model read in `dialect`.
    pub fn of(dialect: crate::frontend::Dialect) -> Self {
        match dialect {
            crate::frontend::Dialect::TfKeras => ActivityScale::PerSample,
            crate::frontend::Dialect::Keras2 | crate::frontend::Dialect::Keras1 => {
                ActivityScale::Sum
            }
        }
    }

    /// What the penalty of a batch of `batch` rows is divided by (`divide_no_nan`: an
    /// empty batch has penalty 0, see [`penalty`]).
    pub fn divisor(self, batch: usize) -> f32 {
        match self {
            ActivityScale::PerSample => batch as f32,
            ActivityScale::Sum => 1.0,
        }
    }
}

/// Every node with an activity regularizer, in node order.
pub fn regularized_nodes(graph: &Graph) -> Vec<(NodeId, Regularizer)> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter_map(|(id, n)| n.op.activity_regularizer().map(|r| (id, r)))
        .collect()
}

/// The penalty `reg(y) / divisor` and its gradient with respect to `y` (same length).
/// A divisor of 0 gives 0 and zero gradients (`divide_no_nan`).
pub fn penalty(reg: Regularizer, y: &[f32], divisor: f32) -> (f64, Vec<f32>) {
    if divisor == 0.0 {
        return (0.0, vec![0.0; y.len()]);
    }
    let (mut l1, mut l2) = (0f64, 0f64);
    for &v in y {
        l1 += (v as f64).abs();
        l2 += (v as f64) * (v as f64);
    }
    let mut value = 0.0;
    if reg.l1 != 0.0 {
        value += reg.l1 as f64 * l1;
    }
    if reg.l2 != 0.0 {
        value += reg.l2 as f64 * l2;
    }
    let (a, b) = (reg.l1 / divisor, 2.0 * reg.l2 / divisor);
    let grad = y
        .iter()
        .map(|&v| {
            let sign = if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                0.0
            };
            a * sign + b * v
        })
        .collect();
    (value / divisor as f64, grad)
}

/// [`penalty`] on an array: the value and the gradient shaped like `y`.
pub fn penalty_array(reg: Regularizer, y: &ArrayD<f32>, divisor: f32) -> (f64, ArrayD<f32>) {
    let flat: Vec<f32> = y.iter().copied().collect();
    let (v, g) = penalty(reg, &flat, divisor);
    let g = ArrayD::from_shape_vec(y.raw_dim(), g).unwrap_or_else(|_| ArrayD::zeros(y.raw_dim()));
    (v, g)
}

/// The gradient with respect to the logits `z` of a penalty whose gradient with respect
/// to `y = act(z)` is `gy`, for the output activations a loss computed from logits
/// strips (softmax over the last axis, sigmoid); `y` is that activation's value. A
/// training step on logits (see [`crate::train`]) adds this to the loss gradient.
pub fn through_output_activation(softmax: bool, y: &ArrayD<f32>, gy: &ArrayD<f32>) -> ArrayD<f32> {
    if !softmax {
        return ndarray::Zip::from(y)
            .and(gy)
            .map_collect(|&y, &g| g * y * (1.0 - y));
    }
    let mut gz = gy.clone();
    let last = ndarray::Axis(y.ndim().saturating_sub(1));
    for (mut gl, yl) in gz.lanes_mut(last).into_iter().zip(y.lanes(last)) {
        let dot: f32 = gl.iter().zip(yl.iter()).map(|(g, y)| g * y).sum();
        gl.zip_mut_with(&yl, |g, &y| *g = y * (*g - dot));
    }
    gz
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_l2_penalty_and_gradient() {
        let reg = Regularizer { l1: 0.5, l2: 0.25 };
        let (v, g) = penalty(reg, &[1.0, -2.0, 0.0], 2.0);
        // (0.5·3 + 0.25·5) / 2
        assert!((v - 1.375).abs() < 1e-12);
        assert_eq!(g, vec![(0.5 + 0.5) / 2.0, (-0.5 - 1.0) / 2.0, 0.0]);
        let (v, g) = penalty(reg, &[1.0], 0.0);
        assert_eq!((v, g), (0.0, vec![0.0]));
    }
}
