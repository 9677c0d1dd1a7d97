//! LocallyConnected1D/2D/3D backward pass in the canonical (implementation 1) layout.
//!
//! With `dz` the gradient of the pre-activation `z[b, p, f] = Σ_q x[b, tap(p, q)]·K[p, q, f]
//! + bias[p, f]` (see [`super::lc`] for `tap`):
//!
//! ```text
//! dK[p, q, f]  = Σ_b x[b, tap(p, q)] · dz[b, p, f]       (0 where the tap does not exist)
//! dbias[p, f]  = Σ_b dz[b, p, f]                          (per-sample output layout)
//! dx[b, i, c]  = Σ_{(p, t): tap(p, t) = i} Σ_f K[p, q(t, c), f] · dz[b, p, f]
//! ```
//!
//! `dx` is a gather (DESIGN §3): for every input position the output positions whose
//! window covers it are enumerated per axis (`i_a = start_a(o_a) + t_a·d_a`), so every
//! element of `dx` is written once.

use super::backward::KernelGrads;
use super::{from_vec, slice_of, split_batched, tap_input, unravel};
use crate::error::{Error, Result};
use crate::graph::geometry::{lc_window_start, output_len};
use crate::graph::{DataFormat, LocallyConnected};
use ndarray::ArrayD;

/// Gradients of one LC layer: `(dx, dkernel, dbias)` from the input `x`, the canonical
/// kernel and `dz`, the gradient of the pre-activation (output shape). `dbias` is `Some`
/// when the layer has a bias.
// Axis-indexed geometry reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
pub(super) fn backward(
    l: &LocallyConnected,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    dz: &ArrayD<f32>,
) -> Result<KernelGrads> {
    let rank = l.rank;
    let (batch, in_sp, c) = split_batched(x.shape(), rank, l.data_format)?;
    let mut out_sp = Vec::with_capacity(rank);
    for a in 0..rank {
        let o = output_len(
            in_sp[a],
            l.kernel[a],
            l.strides[a],
            l.dilation[a],
            l.padding,
        )
        .ok_or_else(|| Error::internal("reference LC backward: empty output"))?;
        out_sp.push(o);
    }
    let n_in: usize = in_sp.iter().product();
    let n_pos: usize = out_sp.iter().product();
    let n_taps: usize = l.kernel.iter().product();
    let n_q = n_taps * c;
    let n_f = l.filters;
    if kernel.shape() != [n_pos, n_q, n_f] || dz.len() != batch * n_pos * n_f {
        return Err(Error::internal("reference LC backward: shapes"));
    }
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let dzc = dz.as_standard_layout();
    let dzs = slice_of(&dzc)?;
    // Flat offsets of x[b, sp, ch] and of dz[b, p, f] in memory order.
    let x_at = |b: usize, sp: usize, ch: usize| match l.data_format {
        DataFormat::ChannelsLast => (b * n_in + sp) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_in + sp,
    };
    let z_at = |b: usize, p: usize, f: usize| match l.data_format {
        DataFormat::ChannelsLast => (b * n_pos + p) * n_f + f,
        DataFormat::ChannelsFirst => (b * n_f + f) * n_pos + p,
    };
    // q of (tap tt, channel ch) in the input's memory order.
    let q_of = |tt: usize, ch: usize| match l.data_format {
        DataFormat::ChannelsLast => tt * c + ch,
        DataFormat::ChannelsFirst => ch * n_taps + tt,
    };

    // cover[a][i]: the (o_a, t_a) pairs whose tap reads input index i on axis a.
    let mut cover: Vec<Vec<Vec<(usize, usize)>>> = Vec::with_capacity(rank);
    for a in 0..rank {
        let mut lists = vec![Vec::new(); in_sp[a]];
        for o in 0..out_sp[a] {
            let start = lc_window_start(o, l.kernel[a], l.strides[a], l.dilation[a], l.padding);
            for t in 0..l.kernel[a] {
                let i = start + (t * l.dilation[a]) as i64;
                if i >= 0 && (i as usize) < in_sp[a] {
                    lists[i as usize].push((o, t));
                }
            }
        }
        cover.push(lists);
    }

    // dK and dbias: one pass over positions and existing taps.
    let mut dk = vec![0.0f32; n_pos * n_q * n_f];
    let mut db = vec![0.0f32; n_pos * n_f];
    let mut o = vec![0usize; rank];
    let mut t = vec![0usize; rank];
    let mut start = vec![0i64; rank];
    let mut i = vec![0usize; rank];
    for p in 0..n_pos {
        unravel(p, &out_sp, &mut o);
        for a in 0..rank {
            start[a] = lc_window_start(o[a], l.kernel[a], l.strides[a], l.dilation[a], l.padding);
        }
        for tt in 0..n_taps {
            unravel(tt, &l.kernel, &mut t);
            let Some(sp) = tap_input(&start, &t, &l.dilation, &in_sp) else {
                continue;
            };
            for ch in 0..c {
                let row = &mut dk[(p * n_q + q_of(tt, ch)) * n_f..][..n_f];
                for b in 0..batch {
                    let xv = xs[x_at(b, sp, ch)];
                    for (f, g) in row.iter_mut().enumerate() {
                        *g += xv * dzs[z_at(b, p, f)];
                    }
                }
            }
        }
        for f in 0..n_f {
            // The canonical bias has the per-sample output layout.
            let off = match l.data_format {
                DataFormat::ChannelsLast => p * n_f + f,
                DataFormat::ChannelsFirst => f * n_pos + p,
            };
            db[off] = (0..batch).map(|b| dzs[z_at(b, p, f)]).sum();
        }
    }

    // dx: gather over the (position, tap) pairs covering each input position.
    let mut dx = vec![0.0f32; xs.len()];
    let mut pairs: Vec<(usize, usize)> = Vec::new(); // (p, tt)
    for sp in 0..n_in {
        unravel(sp, &in_sp, &mut i);
        covering_pairs(&cover, &i, &out_sp, &l.kernel, &mut pairs);
        for b in 0..batch {
            for ch in 0..c {
                let mut acc = 0.0f32;
                for &(p, tt) in &pairs {
                    let krow = &ks[(p * n_q + q_of(tt, ch)) * n_f..][..n_f];
                    for (f, &w) in krow.iter().enumerate() {
                        acc += w * dzs[z_at(b, p, f)];
                    }
                }
                dx[x_at(b, sp, ch)] = acc;
            }
        }
    }

    let dx = from_vec(x.shape(), dx)?;
    let dk = from_vec(&[n_pos, n_q, n_f], dk)?;
    let db = if l.use_bias {
        Some(from_vec(&dz.shape()[1..], db)?)
    } else {
        None
    };
    Ok((dx, dk, db))
}

/// All `(p, tt)` (flat output position, flat tap) whose tap reads input multi-index `i`:
/// the Cartesian product of the per-axis lists `cover[a][i_a]`, in row-major order.
fn covering_pairs(
    cover: &[Vec<Vec<(usize, usize)>>],
    i: &[usize],
    out_sp: &[usize],
    kernel: &[usize],
    pairs: &mut Vec<(usize, usize)>,
) {
    pairs.clear();
    pairs.push((0, 0));
    for (a, lists) in cover.iter().enumerate() {
        let list = &lists[i[a]];
        let mut next = Vec::with_capacity(pairs.len() * list.len());
        for &(p, tt) in pairs.iter() {
            for &(o, t) in list {
                next.push((p * out_sp[a] + o, tt * kernel[a] + t));
            }
        }
        *pairs = next;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{assert_close, pseudo_random};
    use super::*;
    use crate::graph::infer::join_channels;
    use crate::graph::{Activation, Initializer, Padding, WeightOptions};
    use ndarray::IxDyn;

    fn op(
        kernel: &[usize],
        strides: &[usize],
        dilation: &[usize],
        padding: Padding,
        df: DataFormat,
    ) -> LocallyConnected {
        LocallyConnected {
            rank: kernel.len(),
            filters: 3,
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilation: dilation.to_vec(),
            padding,
            data_format: df,
            activation: Activation::Linear,
            use_bias: true,
            implementation: 1,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        }
    }

    /// dx by a naive scatter: every (b, p, q, f) adds K[p, q, f]·dz[b, p, f] to the input
    /// element its tap reads, written from the forward formula with ndarray indexing.
    #[allow(clippy::needless_range_loop)]
    fn scatter_dx(
        l: &LocallyConnected,
        x_shape: &[usize],
        k: &ArrayD<f32>,
        dz: &ArrayD<f32>,
    ) -> ArrayD<f32> {
        let (batch, in_sp, c) = split_batched(x_shape, l.rank, l.data_format).unwrap();
        let (_, out_sp, n_f) = split_batched(dz.shape(), l.rank, l.data_format).unwrap();
        let n_taps: usize = l.kernel.iter().product();
        let mut dx = ArrayD::<f32>::zeros(IxDyn(x_shape));
        let (mut o, mut t) = (vec![0; l.rank], vec![0; l.rank]);
        for p in 0..out_sp.iter().product() {
            unravel(p, &out_sp, &mut o);
            for tt in 0..n_taps {
                unravel(tt, &l.kernel, &mut t);
                let mut idx = Vec::new();
                for a in 0..l.rank {
                    let s =
                        lc_window_start(o[a], l.kernel[a], l.strides[a], l.dilation[a], l.padding);
                    idx.push(s + (t[a] * l.dilation[a]) as i64);
                }
                if idx
                    .iter()
                    .zip(&in_sp)
                    .any(|(&v, &n)| v < 0 || v >= n as i64)
                {
                    continue;
                }
                for b in 0..batch {
                    for ch in 0..c {
                        for f in 0..n_f {
                            let (xi, zi, q) = match l.data_format {
                                DataFormat::ChannelsLast => {
                                    let mut xi = vec![b];
                                    xi.extend(idx.iter().map(|&v| v as usize));
                                    xi.push(ch);
                                    let mut zi = vec![b];
                                    zi.extend_from_slice(&o);
                                    zi.push(f);
                                    (xi, zi, tt * c + ch)
                                }
                                DataFormat::ChannelsFirst => {
                                    let mut xi = vec![b, ch];
                                    xi.extend(idx.iter().map(|&v| v as usize));
                                    let mut zi = vec![b, f];
                                    zi.extend_from_slice(&o);
                                    (xi, zi, ch * n_taps + tt)
                                }
                            };
                            dx[IxDyn(&xi)] += k[[p, q, f]] * dz[IxDyn(&zi)];
                        }
                    }
                }
            }
        }
        dx
    }

    #[test]
    fn dx_gather_equals_naive_scatter() {
        // (input spatial, kernel, strides, dilation, padding)
        type Case = (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, Padding);
        let cases: Vec<Case> = vec![
            (vec![7], vec![3], vec![1], vec![1], Padding::Valid),
            (vec![8], vec![3], vec![2], vec![1], Padding::Same),
            (vec![9], vec![2], vec![1], vec![3], Padding::Same),
            (
                vec![5, 6],
                vec![3, 2],
                vec![2, 1],
                vec![1, 2],
                Padding::Same,
            ),
            (
                vec![6, 5],
                vec![2, 3],
                vec![3, 2],
                vec![1, 1],
                Padding::Valid,
            ),
            (
                vec![4, 3, 5],
                vec![2, 1, 3],
                vec![1, 2, 2],
                vec![2, 1, 1],
                Padding::Same,
            ),
        ];
        let mut seed = 1;
        for (sp, k, s, d, pad) in cases {
            for df in [DataFormat::ChannelsLast, DataFormat::ChannelsFirst] {
                let l = op(&k, &s, &d, pad, df);
                let c = 2;
                let mut x_shape = vec![2];
                x_shape.extend(join_channels(&sp, c, df));
                let out_sp: Vec<usize> = (0..sp.len())
                    .map(|a| output_len(sp[a], k[a], s[a], d[a], pad).unwrap())
                    .collect();
                let n_pos: usize = out_sp.iter().product();
                let mut z_shape = vec![2];
                z_shape.extend(join_channels(&out_sp, 3, df));
                seed += 3;
                let x = pseudo_random(&x_shape, seed);
                let kernel = pseudo_random(&[n_pos, k.iter().product::<usize>() * c, 3], seed + 1);
                let dz = pseudo_random(&z_shape, seed + 2);
                let (dx, dk, db) = backward(&l, &x, &kernel, &dz).unwrap();
                let want = scatter_dx(&l, &x_shape, &kernel, &dz);
                assert_close(&dx, &want, 1e-5);
                assert_eq!(dk.shape(), kernel.shape());
                assert_eq!(db.unwrap().shape(), &z_shape[1..]);
            }
        }
    }
}
