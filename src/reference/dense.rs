//! Dense forward pass: a matrix product on the last axis, any leading axes.
//!
//! Keras: `y[…, u] = act(Σ_i x[…, i] · K[i, u] + bias[u])` with `K` of shape
//! `(in, units)` and `bias` of shape `(units,)`.

use super::{apply_activation, from_vec, slice_of};
use crate::error::{Error, Result};
use crate::graph::Dense;
use ndarray::ArrayD;

/// Runs one dense layer on a batched input `x` (shapes of `kernel` and `bias` checked
/// here).
pub(super) fn forward(
    d: &Dense,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    let (&n_in, lead) = x
        .shape()
        .split_last()
        .ok_or_else(|| Error::internal("reference dense: scalar input"))?;
    let n_u = d.units;
    if kernel.shape() != [n_in, n_u] || bias.is_some_and(|b| b.shape() != [n_u]) {
        return Err(Error::internal("reference dense: parameter shapes"));
    }
    let rows: usize = lead.iter().product(); // every leading index (batch included)

    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let bias = bias.map(|b| b.as_standard_layout());
    let bs = bias.as_ref().map(slice_of).transpose()?;

    let mut y = vec![0.0f32; rows * n_u];
    for m in 0..rows {
        let acc = &mut y[m * n_u..][..n_u];
        for i in 0..n_in {
            // acc[u] += x[m, i] · K[i, u]
            let xv = xs[m * n_in + i];
            let krow = &ks[i * n_u..][..n_u];
            for (a, &w) in acc.iter_mut().zip(krow) {
                *a += xv * w;
            }
        }
        if let Some(bs) = bs {
            for (a, &bv) in acc.iter_mut().zip(bs) {
                *a += bv;
            }
        }
    }

    let mut shape = lead.to_vec();
    shape.push(n_u);
    let mut y = from_vec(&shape, y)?;
    apply_activation(&d.activation, &mut y);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use super::super::lc::tests::one_layer;
    use crate::graph::*;
    use ndarray::array;

    #[test]
    fn dense_on_the_last_axis_with_leading_axes() {
        let op = Op::Dense(Dense {
            units: 2,
            activation: Activation::Relu {
                alpha: 0.0,
                max_value: None,
                threshold: 0.0,
            },
            use_bias: true,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        });
        let g = one_layer(&[2, 3], op);
        let k = array![[1.0f32, -1.0], [10.0, -10.0], [100.0, -100.0]].into_dyn();
        let b = array![0.5f32, 1000.0].into_dyn();
        let x = array![[[1.0f32, 2.0, 3.0], [0.0, 0.0, -1.0]]].into_dyn();
        let y = run(&g, &[k, b], &[x]).unwrap().remove(0);
        // row 0: 321 + 0.5, −321 + 1000; row 1: −100 + 0.5 → relu 0, 100 + 1000.
        assert_eq!(y, array![[[321.5f32, 679.0], [0.0, 1100.0]]].into_dyn());
    }
}
