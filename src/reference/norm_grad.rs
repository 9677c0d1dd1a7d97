//! BatchNormalization backward pass at inference (moving statistics are constants):
//! with `sd = sqrt(moving_variance + epsilon)` per channel,
//!
//! ```text
//! dx = dy · gamma / sd     dgamma = Σ dy · (x − mean) / sd     dbeta = Σ dy
//! ```
//!
//! sums running over every index but the channel; the moving statistics get no gradient.

use super::{from_vec, slice_of};
use crate::error::{Error, Result};
use crate::graph::BatchNorm;
use ndarray::ArrayD;

/// Gradients `(dx, dgamma, dbeta)` of one batch normalization.
pub(super) fn backward(
    bn: &BatchNorm,
    x: &ArrayD<f32>,
    gamma: Option<&ArrayD<f32>>,
    mean: &ArrayD<f32>,
    var: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> Result<(ArrayD<f32>, ArrayD<f32>, ArrayD<f32>)> {
    let ax = bn.axis + 1;
    let shape = x.shape().to_vec();
    let c = *shape
        .get(ax)
        .ok_or_else(|| Error::internal("reference batch_norm backward: axis"))?;
    let ok = |p: Option<&ArrayD<f32>>| p.is_none_or(|p| p.shape() == [c]);
    if !(ok(gamma) && ok(Some(mean)) && ok(Some(var))) || dy.shape() != shape.as_slice() {
        return Err(Error::internal("reference batch_norm backward: shapes"));
    }
    let outer: usize = shape[..ax].iter().product();
    let inner: usize = shape[ax + 1..].iter().product();
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let dyc = dy.as_standard_layout();
    let dys = slice_of(&dyc)?;
    let to_vec = |p: &ArrayD<f32>| p.iter().copied().collect::<Vec<f32>>();
    let gs = gamma.map(to_vec);
    let (ms, vs) = (to_vec(mean), to_vec(var));
    let mut dx = vec![0.0f32; xs.len()];
    let mut dg = vec![0.0f32; c];
    let mut db = vec![0.0f32; c];
    for o in 0..outer {
        for ch in 0..c {
            let g = gs.as_ref().map_or(1.0, |g| g[ch]);
            let sd = (vs[ch] + bn.epsilon).sqrt();
            for i in 0..inner {
                let k = (o * c + ch) * inner + i;
                dx[k] = dys[k] * g / sd;
                dg[ch] += dys[k] * ((xs[k] - ms[ch]) / sd);
                db[ch] += dys[k];
            }
        }
    }
    Ok((
        from_vec(&shape, dx)?,
        from_vec(&[c], dg)?,
        from_vec(&[c], db)?,
    ))
}
