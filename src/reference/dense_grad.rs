//! Dense backward pass. With `dz` the gradient of the pre-activation
//! `z[m, u] = Σ_i x[m, i]·K[i, u] + bias[u]` (`m` over every leading index):
//!
//! ```text
//! dx[m, i] = Σ_u dz[m, u]·K[i, u]    dK[i, u] = Σ_m x[m, i]·dz[m, u]    dbias[u] = Σ_m dz[m, u]
//! ```

use super::backward::KernelGrads;
use super::{from_vec, slice_of};
use crate::error::{Error, Result};
use crate::graph::Dense;
use ndarray::ArrayD;

/// Gradients of one dense layer: `(dx, dkernel, dbias)` (`dbias` when it has a bias).
pub(super) fn backward(
    d: &Dense,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    dz: &ArrayD<f32>,
) -> Result<KernelGrads> {
    let n_in = x.shape().last().copied().unwrap_or(0);
    let n_u = d.units;
    let rows = x.len().checked_div(n_in).unwrap_or(0);
    if kernel.shape() != [n_in, n_u] || dz.len() != rows * n_u {
        return Err(Error::internal("reference dense backward: shapes"));
    }
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let dzc = dz.as_standard_layout();
    let dzs = slice_of(&dzc)?;
    let mut dx = vec![0.0f32; rows * n_in];
    let mut dk = vec![0.0f32; n_in * n_u];
    let mut db = vec![0.0f32; n_u];
    for m in 0..rows {
        let g = &dzs[m * n_u..][..n_u];
        for i in 0..n_in {
            let krow = &ks[i * n_u..][..n_u];
            dx[m * n_in + i] = krow.iter().zip(g).map(|(w, v)| w * v).sum();
            let xv = xs[m * n_in + i];
            for (a, &v) in dk[i * n_u..][..n_u].iter_mut().zip(g) {
                *a += xv * v;
            }
        }
        for (a, &v) in db.iter_mut().zip(g) {
            *a += v;
        }
    }
    let dx = from_vec(x.shape(), dx)?;
    let dk = from_vec(&[n_in, n_u], dk)?;
    let db = if d.use_bias {
        Some(from_vec(&[n_u], db)?)
    } else {
        None
    };
    Ok((dx, dk, db))
}
