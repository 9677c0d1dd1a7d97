//! BatchNormalization at inference, on the moving statistics.
//!
//! Keras: `y = (x − moving_mean) / sqrt(moving_variance + epsilon) · gamma + beta`, with
//! every statistic indexed by the channel along `axis` (a per-sample axis, so batched axis
//! `axis + 1`); `gamma` is 1 without `scale`, `beta` 0 without `center`.

use super::{from_vec, slice_of};
use crate::error::{Error, Result};
use crate::graph::BatchNorm;
use ndarray::ArrayD;

/// Runs one batch normalization on a batched input `x` (parameter shapes `(C,)` checked
/// here).
pub(super) fn batch_norm(
    bn: &BatchNorm,
    x: &ArrayD<f32>,
    gamma: Option<&ArrayD<f32>>,
    beta: Option<&ArrayD<f32>>,
    mean: &ArrayD<f32>,
    var: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let ax = bn.axis + 1; // batched axis
    let shape = x.shape().to_vec();
    let c = *shape
        .get(ax)
        .ok_or_else(|| Error::internal("reference batch_norm: axis out of range"))?;
    let ok = |p: Option<&ArrayD<f32>>| p.is_none_or(|p| p.shape() == [c]);
    if !(ok(gamma) && ok(beta) && ok(Some(mean)) && ok(Some(var))) {
        return Err(Error::internal("reference batch_norm: parameter shapes"));
    }
    // x viewed as (outer, C, inner): outer = prod(shape[..ax]), inner = prod(shape[ax+1..]).
    let outer: usize = shape[..ax].iter().product();
    let inner: usize = shape[ax + 1..].iter().product();

    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    // The (C,) statistics in logical order (small, so copied).
    let to_vec = |p: &ArrayD<f32>| p.iter().copied().collect::<Vec<f32>>();
    let gs = gamma.map(to_vec);
    let bs = beta.map(to_vec);
    let (ms, vs) = (to_vec(mean), to_vec(var));

    let mut y = vec![0.0f32; xs.len()];
    for o in 0..outer {
        for ch in 0..c {
            let gamma = gs.as_ref().map_or(1.0, |g| g[ch]);
            let beta = bs.as_ref().map_or(0.0, |b| b[ch]);
            let sd = (vs[ch] + bn.epsilon).sqrt();
            for i in 0..inner {
                let k = (o * c + ch) * inner + i;
                // (x − mean) / sqrt(var + eps) · gamma + beta
                y[k] = (xs[k] - ms[ch]) / sd * gamma + beta;
            }
        }
    }
    from_vec(&shape, y)
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use super::super::lc::tests::one_layer;
    use crate::graph::*;
    use ndarray::array;

    fn bn_op(axis: usize, scale: bool, center: bool) -> Op {
        Op::BatchNorm(BatchNorm {
            axis,
            epsilon: 0.25,
            momentum: 0.99,
            center,
            scale,
            initializers: [
                Initializer::Ones,
                Initializer::Zeros,
                Initializer::Zeros,
                Initializer::Ones,
            ],
            options: WeightOptions::default(),
        })
    }

    #[test]
    fn batch_norm_on_moving_statistics() {
        // (B=1, C=2, L=2), axis 0 (channels_first), var + eps = 4 and 1 → sd 2 and 1.
        let x = array![[[1.0f32, 5.0], [2.0, -2.0]]].into_dyn();
        let g = one_layer(&[2, 2], bn_op(0, true, true));
        let names: Vec<_> = g.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["gamma", "beta", "moving_mean", "moving_variance"]);
        let params = [
            array![10.0f32, 3.0].into_dyn(),  // gamma
            array![0.5f32, -1.0].into_dyn(),  // beta
            array![1.0f32, 0.0].into_dyn(),   // mean
            array![3.75f32, 0.75].into_dyn(), // variance
        ];
        let y = run(&g, &params, std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        assert_eq!(y, array![[[0.5f32, 20.5], [5.0, -7.0]]].into_dyn());
        // Without gamma and beta: (x − mean) / sd only; params are looked up by name.
        let g = one_layer(&[2, 2], bn_op(0, false, false));
        let y = run(&g, &params[2..], &[x]).unwrap().remove(0);
        assert_eq!(y, array![[[0.0f32, 2.0], [2.0, -2.0]]].into_dyn());
    }

    #[test]
    fn batch_norm_on_the_last_axis_with_only_beta() {
        let x = array![[[1.0f32, 5.0], [2.0, -2.0]]].into_dyn();
        let g = one_layer(&[2, 2], bn_op(1, false, true));
        let params = [
            array![1.0f32, 2.0].into_dyn(),   // beta
            array![1.0f32, 1.0].into_dyn(),   // mean
            array![3.75f32, 0.75].into_dyn(), // variance
        ];
        let y = run(&g, &params, &[x]).unwrap().remove(0);
        assert_eq!(y, array![[[1.0f32, 6.0], [1.5, -1.0]]].into_dyn());
    }
}
