//! Pooling backward passes (see [`super::pool`]).
//!
//! Max pooling sends each output's gradient to the FIRST maximum of its window in window
//! order (row-major over the in-bounds taps), as TensorFlow's `MaxPoolGrad` does; average
//! pooling spreads it evenly over the in-bounds taps (`dy / count`). Global pooling: the
//! first maximum over all spatial positions, or `dy / n`.

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
                    let sp = first_max((0..n_in).map(|sp| (sp, xs[at(b, sp, ch)])));
                    dx[at(b, sp, ch)] += g;
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

/// The tap of a pooling window that receives the gradient, as the forward pass defines
/// the window's maximum (TensorFlow's MaxPool: start from −FLT_MAX, take strictly greater
/// taps, so NaN taps are skipped): the first tap equal to that maximum, else (a window of
/// only NaN and −inf taps, whose output is −FLT_MAX) the first tap, as the compiled
/// engines route it.
fn window_argmax(items: impl Iterator<Item = (usize, f32)>) -> usize {
    let items: Vec<(usize, f32)> = items.collect();
    let m = items
        .iter()
        .fold(f32::MIN, |m, &(_, v)| if v > m { v } else { m });
    items
        .iter()
        .find(|&&(_, v)| v == m)
        .or(items.first())
        .map_or(0, |&(k, _)| k)
}

/// The key of the first (strictly) largest value; the first key for an empty or all-NaN
/// sequence.
fn first_max(items: impl Iterator<Item = (usize, f32)>) -> usize {
    let mut best: Option<(usize, f32)> = None;
    for (k, v) in items {
        match best {
            None => best = Some((k, v)),
            Some((_, bv)) if v > bv || (bv.is_nan() && !v.is_nan()) => best = Some((k, v)),
            Some(_) => {}
        }
    }
    best.map_or(0, |(k, _)| k)
}
