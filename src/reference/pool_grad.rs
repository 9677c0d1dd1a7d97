//! Pooling backward passes (see [`super::pool`]).
//!
//! Max pooling sends each output's gradient to the tap TensorFlow's `MaxPoolGrad` picks:
//! the first in-bounds tap (row-major), replaced by each later tap strictly greater than
//! the current pick — so ties go to the first, NaN taps never win, and a NaN first tap
//! keeps the gradient. Average pooling spreads it evenly over the in-bounds taps
//! (`dy / count`). Global max pooling is `tf.reduce_max` in Keras, whose gradient is
//! `(x == y) / count · dy` (ties share; a NaN maximum gives NaN everywhere); global
//! average gives `dy / n`.

use super::pool::{windows, Windows};
use super::{from_vec, slice_of, split_batched};
use crate::error::{Error, Result};
use crate::graph::{DataFormat, Pool, PoolKind};
use ndarray::ArrayD;

/// `dx` of one pooling layer from its input `x` and the output gradient `dy`.
pub(super) fn pool_backward(pl: &Pool, x: &ArrayD<f32>, dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let (batch, in_sp, c) = split_batched(x.shape(), pl.rank, pl.data_format)?;
    let Windows { out_sp, taps } = windows(pl, &in_sp)?;
    let n_in: usize = in_sp.iter().product();
    let n_pos: usize = out_sp.iter().product();
    if dy.len() != batch * n_pos * c {
        return Err(Error::internal("reference pool backward: shapes"));
    }
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let dyc = dy.as_standard_layout();
    let dys = slice_of(&dyc)?;
    let at = |b: usize, sp: usize, ch: usize| match pl.data_format {
        DataFormat::ChannelsLast => (b * n_in + sp) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_in + sp,
    };
    let y_at = |b: usize, p: usize, ch: usize| match pl.data_format {
        DataFormat::ChannelsLast => (b * n_pos + p) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_pos + p,
    };
    let mut dx = vec![0.0f32; xs.len()];
    for (p, window) in taps.iter().enumerate() {
        for b in 0..batch {
            for ch in 0..c {
                let g = dys[y_at(b, p, ch)];
                match pl.kind {
                    PoolKind::Max => {
                        let sp = window_argmax(window.iter().map(|&sp| (sp, xs[at(b, sp, ch)])));
                        dx[at(b, sp, ch)] += g;
                    }
                    PoolKind::Average => {
                        let share = g / window.len() as f32;
                        for &sp in window {
                            dx[at(b, sp, ch)] += share;
                        }
                    }
                }
            }
        }
    }
    from_vec(x.shape(), dx)
}

/// `dx` of a global pooling layer (`dy` is `(B, C)` or, with keepdims, `(B, 1…, C)` /
/// `(B, C, 1…)`: the same memory order).
pub(super) fn global_pool_backward(
    kind: PoolKind,
    rank: usize,
    df: DataFormat,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let (batch, in_sp, c) = split_batched(x.shape(), rank, df)?;
    let n_in: usize = in_sp.iter().product();
    if dy.len() != batch * c {
        return Err(Error::internal("reference global pool backward: shapes"));
    }
    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let dyc = dy.as_standard_layout();
    let dys = slice_of(&dyc)?;
    let at = |b: usize, sp: usize, ch: usize| match df {
        DataFormat::ChannelsLast => (b * n_in + sp) * c + ch,
        DataFormat::ChannelsFirst => (b * c + ch) * n_in + sp,
    };
    let mut dx = vec![0.0f32; xs.len()];
    for b in 0..batch {
        for ch in 0..c {
            let g = dys[b * c + ch];
            match kind {
                PoolKind::Max => {
                    let y = (0..n_in).fold(f32::NEG_INFINITY, |m, sp| {
                        let v = xs[at(b, sp, ch)];
                        if v.is_nan() || m.is_nan() {
                            f32::NAN
                        } else {
                            m.max(v)
                        }
                    });
                    let hit = |sp: usize| if xs[at(b, sp, ch)] == y { 1.0 } else { 0.0 };
                    let count: f32 = (0..n_in).map(hit).sum();
                    for sp in 0..n_in {
                        dx[at(b, sp, ch)] = hit(sp) / count * g;
                    }
                }
                PoolKind::Average => {
                    for sp in 0..n_in {
                        dx[at(b, sp, ch)] = g / n_in as f32;
                    }
                }
            }
        }
    }
    from_vec(x.shape(), dx)
}

/// The tap of a pooling window that receives the gradient: TensorFlow's `MaxPoolGrad`
/// argmax (the first tap, then each later tap strictly greater than the current pick);
/// the first key for an empty window.
fn window_argmax(mut items: impl Iterator<Item = (usize, f32)>) -> usize {
    let Some(mut best) = items.next() else {
        return 0;
    };
    for (k, v) in items {
        if best.1 < v {
            best = (k, v);
        }
    }
    best.0
}
