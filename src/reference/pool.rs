//! Max/average pooling (TensorFlow semantics) and global pooling.
//!
//! For batch `b`, output position `o` and channel `c`, over the window taps `t` whose input
//! index `o·s − pad + t` lies in `[0, n)` on every axis (`pad = tf_pad_before(...)`: 0 for
//! `valid`, TF's `floor(total/2)` for `same`):
//!
//! ```text
//! max:     y[b, o, c] = max_t x[b, o·s − pad + t, c]
//! average: y[b, o, c] = (Σ_t x[b, o·s − pad + t, c]) / (number of in-bounds taps)
//! ```
//!
//! Padding never contributes: TF's `same` max pooling ignores it and its average pooling
//! divides by the in-bounds count only. Global pooling reduces over all spatial positions.

use super::{from_vec, ravel, slice_of, split_batched, unravel};
use crate::error::{Error, Result};
use crate::graph::geometry::{output_len, tf_pad_before};
use crate::graph::infer::join_channels;
use crate::graph::{DataFormat, Pool, PoolKind};
use ndarray::ArrayD;

/// Output size and the in-bounds input taps of every window of a pooling layer.
pub(super) struct Windows {
    /// Output spatial sizes.
    pub out_sp: Vec<usize>,
    /// Flat input spatial indices of the in-bounds taps of each output position, in
    /// window (row-major tap) order; never empty.
    pub taps: Vec<Vec<usize>>,
}

/// The windows of `pl` over an input of spatial sizes `in_sp`: input index
/// `o·s − pad + t` on each axis with TF's `pad` (0 for `valid`), taps outside the input
/// dropped (they neither win a max nor count in an average).
// Axis-indexed geometry reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
pub(super) fn windows(pl: &Pool, in_sp: &[usize]) -> Result<Windows> {
    let rank = pl.rank;
    let mut out_sp = Vec::with_capacity(rank);
    let mut pad = Vec::with_capacity(rank);
    for a in 0..rank {
        let (n, k, s) = (in_sp[a], pl.pool[a], pl.strides[a]);
        let o = output_len(n, k, s, 1, pl.padding)
            .ok_or_else(|| Error::internal("reference pool: empty output"))?;
        out_sp.push(o);
        pad.push(tf_pad_before(n, k, s, 1, pl.padding) as i64);
    }
    let n_pos: usize = out_sp.iter().product();
    let mut o = vec![0usize; rank];
    let mut taps = Vec::with_capacity(n_pos);
    for p in 0..n_pos {
        unravel(p, &out_sp, &mut o);
        // Per axis, the in-bounds input range of this window; the window is their
        // product in row-major (= tap) order. Computed from the bounds, never by visiting
        // every tap, so a window far larger than the input costs the input's size.
        let ranges: Vec<(usize, usize)> = (0..rank)
            .map(|a| {
                let start = (o[a] * pl.strides[a]) as i128 - i128::from(pad[a]);
                let lo = start.max(0);
                let hi = (start + pl.pool[a] as i128).min(in_sp[a] as i128);
                (lo as usize, hi.max(lo) as usize)
            })
            .collect();
        let sizes: Vec<usize> = ranges.iter().map(|r| r.1 - r.0).collect();
        let count: usize = sizes.iter().product();
        if count == 0 {
            return Err(Error::internal(
                "reference pool: window without input elements",
            ));
        }
        let mut window = Vec::with_capacity(count);
        let (mut t, mut i) = (vec![0usize; rank], vec![0usize; rank]);
        for tt in 0..count {
            unravel(tt, &sizes, &mut t);
            for a in 0..rank {
                i[a] = ranges[a].0 + t[a];
            }
            window.push(ravel(&i, in_sp));
        }
        taps.push(window);
    }
    Ok(Windows { out_sp, taps })
}

/// Runs one pooling layer on a batched input `x`.
pub(super) fn pool(pl: &Pool, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let (batch, in_sp, c) = split_batched(x.shape(), pl.rank, pl.data_format)?;
    let Windows { out_sp, taps } = windows(pl, &in_sp)?;
    let n_in: usize = in_sp.iter().product();
    let n_pos: usize = out_sp.iter().product();

    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    // Flat offset of (b, spatial sp, channel ch) in the input.
    let at = |b: usize, sp: usize, ch: usize| match pl.data_format {
        DataFormat::ChannelsLast => (b * n_in + sp) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_in + sp,
    };

    let mut y = vec![0.0f32; batch * n_pos * c];
    for (p, window) in taps.iter().enumerate() {
        for b in 0..batch {
            for ch in 0..c {
                let v = match pl.kind {
                    // TF's MaxPool: start from −FLT_MAX, take strictly greater taps
                    // (NaN ignored).
                    PoolKind::Max => window
                        .iter()
                        .map(|&sp| xs[at(b, sp, ch)])
                        .fold(f32::MIN, |m, v| if v > m { v } else { m }),
                    PoolKind::Average => {
                        let sum: f32 = window.iter().map(|&sp| xs[at(b, sp, ch)]).sum();
                        sum / window.len() as f32
                    }
                };
                let off = match pl.data_format {
                    DataFormat::ChannelsLast => p * c + ch,
                    DataFormat::ChannelsFirst => ch * n_pos + p,
                };
                y[b * n_pos * c + off] = v;
            }
        }
    }
    let mut shape = vec![batch];
    shape.extend_from_slice(&join_channels(&out_sp, c, pl.data_format));
    from_vec(&shape, y)
}

/// `tf.maximum(a, b)`: NaN when either is NaN (as the loop IR's `max`).
pub(super) fn nan_max(a: f32, b: f32) -> f32 {
    crate::loop_ir::interp::max(a, b)
}

/// `tf.minimum(a, b)`: NaN when either is NaN.
pub(super) fn nan_min(a: f32, b: f32) -> f32 {
    crate::loop_ir::interp::min(a, b)
}

/// GlobalMax/GlobalAveragePooling: `y[b, c] = max_sp x[b, sp, c]` or the mean over all
/// spatial positions; with `keepdims` the spatial axes stay with size 1.
pub(super) fn global_pool(
    kind: PoolKind,
    rank: usize,
    df: DataFormat,
    keepdims: bool,
    x: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let (batch, in_sp, c) = split_batched(x.shape(), rank, df)?;
    let n_in: usize = in_sp.iter().product();
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let mut y = vec![0.0f32; batch * c];
    for b in 0..batch {
        for ch in 0..c {
            let vals = (0..n_in).map(|sp| match df {
                DataFormat::ChannelsLast => xs[(b * n_in + sp) * c + ch],
                DataFormat::ChannelsFirst => xs[(b * c + ch) * n_in + sp],
            });
            y[b * c + ch] = match kind {
                // `reduce_max`: NaN propagates.
                PoolKind::Max => vals.fold(f32::NEG_INFINITY, nan_max),
                PoolKind::Average => vals.sum::<f32>() / n_in as f32,
            };
        }
    }
    // With keepdims the per-sample shape is (1…, C) or (C, 1…): the same memory order.
    let mut shape = vec![batch];
    if keepdims {
        shape.extend_from_slice(&join_channels(&vec![1; rank], c, df));
    } else {
        shape.push(c);
    }
    from_vec(&shape, y)
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use super::super::lc::tests::one_layer;
    use crate::graph::*;
    use ndarray::{array, ArrayD, IxDyn};

    fn pool_op(
        kind: PoolKind,
        pool: &[usize],
        strides: &[usize],
        padding: Padding,
        df: DataFormat,
    ) -> Op {
        Op::Pool(Pool {
            kind,
            rank: pool.len(),
            pool: pool.to_vec(),
            strides: strides.to_vec(),
            padding,
            data_format: df,
        })
    }

    fn run_on(op: Op, x: ArrayD<f32>) -> ArrayD<f32> {
        let g = one_layer(&x.shape()[1..], op);
        run(&g, &[], &[x]).unwrap().remove(0)
    }

    #[test]
    fn pool1d_valid_and_same_by_hand() {
        let x = array![[[1.0f32], [5.0], [2.0], [-3.0], [4.0]]].into_dyn(); // (1, 5, 1)
        let cl = DataFormat::ChannelsLast;
        let max = |k, s, p| run_on(pool_op(PoolKind::Max, &[k], &[s], p, cl), x.clone());
        let avg = |k, s, p| run_on(pool_op(PoolKind::Average, &[k], &[s], p, cl), x.clone());
        let v = |a: ArrayD<f32>| a.iter().copied().collect::<Vec<_>>();
        // valid k=2 s=2: windows [0,2), [2,4).
        assert_eq!(v(max(2, 2, Padding::Valid)), [5.0, 2.0]);
        assert_eq!(v(avg(2, 2, Padding::Valid)), [3.0, -0.5]);
        // same k=2 s=2, n=5: out 3, total (3−1)·2 + 2 − 5 = 1, before 0: last window [4, 6).
        assert_eq!(v(max(2, 2, Padding::Same)), [5.0, 2.0, 4.0]);
        assert_eq!(v(avg(2, 2, Padding::Same)), [3.0, -0.5, 4.0]);
        // same k=3 s=1: before 1; borders average over 2 elements only.
        assert_eq!(
            v(avg(3, 1, Padding::Same)),
            [3.0, 8.0 / 3.0, 4.0 / 3.0, 1.0, 0.5]
        );
        assert_eq!(v(max(3, 1, Padding::Same)), [5.0, 5.0, 5.0, 4.0, 4.0]);
    }

    #[test]
    fn pool2d_same_channels_first_by_hand() {
        // (1, C=2, 3, 3); pool 2×2 stride 2 same: out 2×2, pad before 0, windows clipped.
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 3, 3]), |ix| {
            (ix[1] * 100 + ix[2] * 3 + ix[3]) as f32
        });
        let op = |kind| {
            pool_op(
                kind,
                &[2, 2],
                &[2, 2],
                Padding::Same,
                DataFormat::ChannelsFirst,
            )
        };
        let y = run_on(op(PoolKind::Average), x.clone());
        let want = array![[
            [[2.0f32, 3.5], [6.5, 8.0]],
            [[102.0, 103.5], [106.5, 108.0]]
        ]]
        .into_dyn();
        assert_eq!(y, want);
        let y = run_on(op(PoolKind::Max), x);
        let want = array![[
            [[4.0f32, 5.0], [7.0, 8.0]],
            [[104.0, 105.0], [107.0, 108.0]]
        ]]
        .into_dyn();
        assert_eq!(y, want);
    }

    #[test]
    fn global_pools_with_and_without_keepdims() {
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 2, 2, 3]), |ix| {
            (ix[0] * 1000 + ix[1] * 20 + ix[2] * 10 + ix[3]) as f32
        });
        let gp = |kind, keepdims, df| Op::GlobalPool {
            kind,
            rank: 2,
            data_format: df,
            keepdims,
        };
        let y = run_on(
            gp(PoolKind::Average, false, DataFormat::ChannelsLast),
            x.clone(),
        );
        assert_eq!(
            y,
            array![[15.0f32, 16.0, 17.0], [1015.0, 1016.0, 1017.0]].into_dyn()
        );
        let y = run_on(gp(PoolKind::Max, true, DataFormat::ChannelsLast), x.clone());
        assert_eq!(y.shape(), [2, 1, 1, 3]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            [30.0, 31.0, 32.0, 1030.0, 1031.0, 1032.0]
        );
        // channels_first: C = 2 (axis 1), spatial (2, 3).
        let y = run_on(gp(PoolKind::Max, true, DataFormat::ChannelsFirst), x);
        assert_eq!(y.shape(), [2, 2, 1, 1]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>(),
            [12.0, 32.0, 1012.0, 1032.0]
        );
    }
}
