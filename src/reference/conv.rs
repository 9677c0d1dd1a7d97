//! Conv1D/Conv2D forward pass (TensorFlow semantics, weights shared across positions).
//!
//! For batch `b`, output position `o` (multi-index over the output's spatial axes) and
//! filter `f` in group `g = f / (F/groups)`:
//!
//! ```text
//! y[b, o, f] = act(bias[f] + Σ_{t, cl} x[b, o·s − pad + t·d, g·(C/groups) + cl] · W[t, cl, f])
//! ```
//!
//! with `W` of shape `(k…, C/groups, F)`, `pad = tf_pad_before(...)` per axis (0 for
//! `valid`, TF's `floor(total/2)` for `same`, `d·(k−1)` for Conv1D `causal`), and input
//! indices outside `[0, n)` reading the zero padding (skipped).

use super::{apply_activation, from_vec, slice_of, split_batched, tap_input, unravel};
use crate::error::{Error, Result};
use crate::graph::geometry::{output_len, tf_pad_before};
use crate::graph::infer::join_channels;
use crate::graph::{Conv, DataFormat};
use ndarray::ArrayD;

/// Runs one convolution on a batched input `x`; `kernel` is `(k…, C/groups, F)`, `bias`
/// is `(F,)` (both checked here).
// Axis-indexed geometry reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
pub(super) fn forward(
    cv: &Conv,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    let rank = cv.rank;
    let (batch, in_sp, c) = split_batched(x.shape(), rank, cv.data_format)?;
    let mut out_sp = Vec::with_capacity(rank);
    let mut pad = Vec::with_capacity(rank);
    for a in 0..rank {
        let (n, k, s, d) = (in_sp[a], cv.kernel[a], cv.strides[a], cv.dilation[a]);
        let o = output_len(n, k, s, d, cv.padding)
            .ok_or_else(|| Error::internal("reference conv: empty output"))?;
        out_sp.push(o);
        pad.push(tf_pad_before(n, k, s, d, cv.padding) as i64);
    }
    let n_f = cv.filters;
    let groups = cv.groups;
    let (cg, fg) = (c / groups, n_f / groups); // channels and filters per group
    let n_in: usize = in_sp.iter().product();
    let n_pos: usize = out_sp.iter().product();
    let n_taps: usize = cv.kernel.iter().product();
    let mut k_shape = cv.kernel.clone();
    k_shape.extend_from_slice(&[cg, n_f]);
    if kernel.shape() != k_shape.as_slice() || cg * groups != c || fg * groups != n_f {
        return Err(Error::internal(format!(
            "reference conv: kernel {:?}, expected {k_shape:?}",
            kernel.shape()
        )));
    }
    if bias.is_some_and(|b| b.shape() != [n_f]) {
        return Err(Error::internal("reference conv: bias shape"));
    }

    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let bias = bias.map(|b| b.as_standard_layout());
    let bs = bias.as_ref().map(slice_of).transpose()?;

    let mut y = vec![0.0f32; batch * n_pos * n_f];
    let mut o = vec![0usize; rank];
    let mut t = vec![0usize; rank];
    let mut start = vec![0i64; rank];
    // tap_at[tt]: flat input spatial index read by tap tt, or None inside the padding.
    let mut tap_at: Vec<Option<usize>> = vec![None; n_taps];
    let mut acc = vec![0.0f32; n_f];
    for p in 0..n_pos {
        unravel(p, &out_sp, &mut o);
        for a in 0..rank {
            // input index = o·s − pad + t·d
            start[a] = (o[a] * cv.strides[a]) as i64 - pad[a];
        }
        for (tt, slot) in tap_at.iter_mut().enumerate() {
            unravel(tt, &cv.kernel, &mut t);
            *slot = tap_input(&start, &t, &cv.dilation, &in_sp);
        }
        for b in 0..batch {
            acc.fill(0.0);
            for (tt, sp) in tap_at.iter().enumerate() {
                let Some(sp) = *sp else { continue };
                for g in 0..groups {
                    for cl in 0..cg {
                        let ch = g * cg + cl;
                        let xv = match cv.data_format {
                            DataFormat::ChannelsLast => xs[(b * n_in + sp) * c + ch],
                            DataFormat::ChannelsFirst => xs[(b * c + ch) * n_in + sp],
                        };
                        // W[t, cl, f] for the filters f of group g.
                        let wrow = &ks[(tt * cg + cl) * n_f..][..n_f];
                        let range = g * fg..(g + 1) * fg;
                        for (a, &w) in acc[range.clone()].iter_mut().zip(&wrow[range]) {
                            *a += xv * w;
                        }
                    }
                }
            }
            for (f, &z) in acc.iter().enumerate() {
                let off = match cv.data_format {
                    DataFormat::ChannelsLast => p * n_f + f,
                    DataFormat::ChannelsFirst => f * n_pos + p,
                };
                y[b * n_pos * n_f + off] = z + bs.map_or(0.0, |bs| bs[f]);
            }
        }
    }

    let mut shape = vec![batch];
    shape.extend_from_slice(&join_channels(&out_sp, n_f, cv.data_format));
    let mut y = from_vec(&shape, y)?;
    apply_activation(&cv.activation, &mut y);
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use super::super::lc::tests::one_layer;
    use super::super::test_util::{assert_close, pseudo_random};
    use crate::graph::*;
    use ndarray::{array, ArrayD, IxDyn};

    fn conv1d(k: usize, s: usize, d: usize, padding: Padding, groups: usize, f: usize) -> Op {
        Op::Conv(Conv {
            rank: 1,
            filters: f,
            kernel: vec![k],
            strides: vec![s],
            dilation: vec![d],
            padding,
            data_format: DataFormat::ChannelsLast,
            groups,
            activation: Activation::Linear,
            use_bias: false,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        })
    }

    fn run1(op: Op, x: &[f32], w: ArrayD<f32>) -> Vec<f32> {
        let g = one_layer(&[x.len(), 1], op);
        let x = ArrayD::from_shape_vec(IxDyn(&[1, x.len(), 1]), x.to_vec()).unwrap();
        run(&g, &[w], &[x])
            .unwrap()
            .remove(0)
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn conv1d_paddings_by_hand() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        let w = array![[[1.0f32]], [[10.0]], [[100.0]]].into_dyn(); // (3, 1, 1)
                                                                    // valid: y[o] = x[o] + 10x[o+1] + 100x[o+2]
        assert_eq!(
            run1(conv1d(3, 1, 1, Padding::Valid, 1, 1), &x, w.clone()),
            [321.0, 432.0, 543.0]
        );
        // same, n=5, s=2: out 3, total pad = (3−1)·2 + 3 − 5 = 2, before 1.
        assert_eq!(
            run1(conv1d(3, 2, 1, Padding::Same, 1, 1), &x, w.clone()),
            [210.0, 432.0, 54.0]
        );
        // same with n=4, k=2, s=1: total 1, before 0: the last window is [3, 5).
        let w2 = array![[[1.0f32]], [[10.0]]].into_dyn();
        assert_eq!(
            run1(conv1d(2, 1, 1, Padding::Same, 1, 1), &x[..4], w2.clone()),
            [21.0, 32.0, 43.0, 4.0]
        );
        // causal, dilation 2: y[o] = x[o−4] + 10x[o−2] + 100x[o].
        assert_eq!(
            run1(conv1d(3, 1, 2, Padding::Causal, 1, 1), &x, w),
            [100.0, 200.0, 310.0, 420.0, 531.0]
        );
    }

    #[test]
    fn grouped_conv_uses_its_own_channels() {
        // C=4, groups=2, F=2: filter 0 sees channels 0,1; filter 1 sees channels 2,3.
        let g = one_layer(&[1, 4], conv1d(1, 1, 1, Padding::Valid, 2, 2));
        let w = array![[[1.0f32, 100.0], [10.0, 1000.0]]].into_dyn(); // (1, 2, 2)
        let x = array![[[1.0f32, 2.0, 3.0, 4.0]]].into_dyn();
        let y = run(&g, &[w], &[x]).unwrap().remove(0);
        assert_eq!(y, array![[[21.0f32, 4300.0]]].into_dyn());
    }

    #[test]
    fn conv2d_same_channels_first_matches_channels_last() {
        let make = |df| {
            Op::Conv(Conv {
                rank: 2,
                filters: 3,
                kernel: vec![3, 2],
                strides: vec![2, 1],
                dilation: vec![1, 2],
                padding: Padding::Same,
                data_format: df,
                groups: 1,
                activation: Activation::Linear,
                use_bias: true,
                kernel_initializer: Initializer::Zeros,
                bias_initializer: Initializer::Zeros,
                options: WeightOptions::default(),
            })
        };
        let gl = one_layer(&[6, 5, 2], make(DataFormat::ChannelsLast));
        let gf = one_layer(&[2, 6, 5], make(DataFormat::ChannelsFirst));
        let w = pseudo_random(&[3, 2, 2, 3], 1);
        let b = pseudo_random(&[3], 2);
        let x = pseudo_random(&[2, 6, 5, 2], 3);
        let yl = run(&gl, &[w.clone(), b.clone()], std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        let xf = x.permuted_axes(IxDyn(&[0, 3, 1, 2]));
        let yf = run(&gf, &[w, b], &[xf]).unwrap().remove(0);
        assert_close(
            &yf.permuted_axes(IxDyn(&[0, 2, 3, 1])).to_owned(),
            &yl,
            1e-6,
        );
    }
}
