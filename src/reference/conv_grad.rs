//! Conv1D/Conv2D backward pass (TensorFlow semantics; see [`super::conv`]). With `dz` the
//! gradient of the pre-activation and `i(o, t) = o·s − pad + t·d` the input index a tap
//! reads (taps in the padding do not contribute):
//!
//! ```text
//! dW[t, cl, f]          = Σ_{b, o} x[b, i(o, t), g·C_g + cl] · dz[b, o, f]   (g = f / F_g)
//! dbias[f]              = Σ_{b, o} dz[b, o, f]
//! dx[b, i(o, t), g·C_g + cl] += W[t, cl, f] · dz[b, o, f]                    (scatter)
//! ```

use super::backward::KernelGrads;
use super::{from_vec, slice_of, split_batched, tap_input, unravel};
use crate::error::{Error, Result};
use crate::graph::geometry::{output_len, tf_pad_before};
use crate::graph::{Conv, DataFormat};
use ndarray::ArrayD;

/// Gradients of one convolution: `(dx, dkernel, dbias)` (`dbias` when it has a bias).
// Axis-indexed geometry reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
pub(super) fn backward(
    cv: &Conv,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    dz: &ArrayD<f32>,
) -> Result<KernelGrads> {
    let rank = cv.rank;
    let (batch, in_sp, c) = split_batched(x.shape(), rank, cv.data_format)?;
    let mut out_sp = Vec::with_capacity(rank);
    let mut pad = Vec::with_capacity(rank);
    for a in 0..rank {
        let (n, k, s, d) = (in_sp[a], cv.kernel[a], cv.strides[a], cv.dilation[a]);
        let o = output_len(n, k, s, d, cv.padding)
            .ok_or_else(|| Error::internal("reference conv backward: empty output"))?;
        out_sp.push(o);
        pad.push(tf_pad_before(n, k, s, d, cv.padding) as i64);
    }
    let n_f = cv.filters;
    let groups = cv.groups.max(1);
    let (cg, fg) = (c / groups, n_f / groups);
    let n_in: usize = in_sp.iter().product();
    let n_pos: usize = out_sp.iter().product();
    let n_taps: usize = cv.kernel.iter().product();
    let mut k_shape = cv.kernel.clone();
    k_shape.extend_from_slice(&[cg, n_f]);
    if kernel.shape() != k_shape.as_slice() || dz.len() != batch * n_pos * n_f {
        return Err(Error::internal("reference conv backward: shapes"));
    }
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let dzc = dz.as_standard_layout();
    let dzs = slice_of(&dzc)?;
    let x_at = |b: usize, sp: usize, ch: usize| match cv.data_format {
        DataFormat::ChannelsLast => (b * n_in + sp) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_in + sp,
    };
    let z_at = |b: usize, p: usize, f: usize| match cv.data_format {
        DataFormat::ChannelsLast => (b * n_pos + p) * n_f + f,
        DataFormat::ChannelsFirst => (b * n_f + f) * n_pos + p,
    };

    let mut dx = vec![0.0f32; xs.len()];
    let mut dk = vec![0.0f32; ks.len()];
    let mut db = vec![0.0f32; n_f];
    let (mut o, mut t, mut start) = (vec![0usize; rank], vec![0usize; rank], vec![0i64; rank]);
    for p in 0..n_pos {
        unravel(p, &out_sp, &mut o);
        for b in 0..batch {
            for (f, g) in db.iter_mut().enumerate() {
                *g += dzs[z_at(b, p, f)];
            }
        }
        for a in 0..rank {
            start[a] = (o[a] * cv.strides[a]) as i64 - pad[a];
        }
        for tt in 0..n_taps {
            unravel(tt, &cv.kernel, &mut t);
            let Some(sp) = tap_input(&start, &t, &cv.dilation, &in_sp) else {
                continue;
            };
            for b in 0..batch {
                for f in 0..n_f {
                    let g = dzs[z_at(b, p, f)];
                    let grp = f / fg.max(1);
                    for cl in 0..cg {
                        let xi = x_at(b, sp, grp * cg + cl);
                        let wi = (tt * cg + cl) * n_f + f;
                        dk[wi] += xs[xi] * g;
                        dx[xi] += ks[wi] * g;
                    }
                }
            }
        }
    }
    let dx = from_vec(x.shape(), dx)?;
    let dk = from_vec(&k_shape, dk)?;
    let db = if cv.use_bias {
        Some(from_vec(&[n_f], db)?)
    } else {
        None
    };
    Ok((dx, dk, db))
}
