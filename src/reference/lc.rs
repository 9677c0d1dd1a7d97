//! LocallyConnected1D/2D/3D forward pass in the canonical (implementation 1) layout.
//!
//! Keras (keras-lc-semantics §3.1, §3.3, §3.4), for batch `b`, output position `p`
//! (row-major over the output's spatial axes) and filter `f`:
//!
//! ```text
//! z[b, p, f] = Σ_q x[b, tap(p, q)] · K[p, q, f]        y = act(z + bias)
//! ```
//!
//! where `q` enumerates the patch in the input's memory order: `q = t·C + c` for
//! channels_last and `q = c·T + t` for channels_first, `t` being the row-major index of
//! the kernel tap `(t_0, …)` among `T = prod(kernel)` taps. Along spatial axis `a` the tap
//! reads input index `start_a + t_a·dilation_a`, with `start_a = o_a·s_a` (`valid`) or
//! `o_a·s_a − floor(dk_a/2)` (Keras LC `same`, clipped windows); taps outside `[0, n_a)` do
//! not exist (their canonical weights are zero) and are skipped, never read. The canonical
//! bias has the per-sample output shape, so it adds elementwise (this already contains the
//! channels_first bias reshape of §3.3).

use super::{apply_activation, from_vec, slice_of, split_batched, tap_input, unravel};
use crate::error::{Error, Result};
use crate::graph::geometry::{lc_window_start, output_len};
use crate::graph::infer::join_channels;
use crate::graph::{DataFormat, LocallyConnected};
use ndarray::ArrayD;

/// Runs one locally connected layer on a batched input `x`.
///
/// `kernel` is `(P, Q, F)` and `bias` has the per-sample output shape (both checked
/// here; the indexing below is in bounds once these shapes hold).
// Axis-indexed geometry reads best with explicit indices.
#[allow(clippy::needless_range_loop)]
pub(super) fn forward(
    l: &LocallyConnected,
    x: &ArrayD<f32>,
    kernel: &ArrayD<f32>,
    bias: Option<&ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
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
        .ok_or_else(|| Error::internal("reference LC: empty output"))?;
        out_sp.push(o);
    }
    let n_in: usize = in_sp.iter().product(); // input spatial positions
    let n_pos: usize = out_sp.iter().product(); // P
    let n_taps: usize = l.kernel.iter().product(); // T
    let n_q = n_taps * c; // Q
    let n_f = l.filters; // F
    let out_shape = join_channels(&out_sp, n_f, l.data_format);
    if kernel.shape() != [n_pos, n_q, n_f] {
        return Err(Error::internal(format!(
            "reference LC: kernel {:?}, expected {:?}",
            kernel.shape(),
            [n_pos, n_q, n_f]
        )));
    }
    if let Some(bv) = bias {
        if bv.shape() != out_shape.as_slice() {
            return Err(Error::internal("reference LC: bias shape"));
        }
    }

    let x = x.as_standard_layout();
    let xs = slice_of(&x)?;
    let k = kernel.as_standard_layout();
    let ks = slice_of(&k)?;
    let bias = bias.map(|b| b.as_standard_layout());
    let bs = bias.as_ref().map(slice_of).transpose()?;

    let mut y = vec![0.0f32; batch * n_pos * n_f];
    let mut o = vec![0usize; rank]; // output position multi-index
    let mut t = vec![0usize; rank]; // tap multi-index
    let mut start = vec![0i64; rank]; // first input index of the window, per axis
                                      // tap_at[tt]: flat input spatial index read by tap tt at the current position, or None
                                      // when the tap falls outside the input ('same' borders).
    let mut tap_at: Vec<Option<usize>> = vec![None; n_taps];
    let mut acc = vec![0.0f32; n_f];
    for p in 0..n_pos {
        unravel(p, &out_sp, &mut o);
        for a in 0..rank {
            // input index = window start + t_a · dilation_a
            start[a] = lc_window_start(o[a], l.kernel[a], l.strides[a], l.dilation[a], l.padding);
        }
        for (tt, slot) in tap_at.iter_mut().enumerate() {
            unravel(tt, &l.kernel, &mut t);
            *slot = tap_input(&start, &t, &l.dilation, &in_sp);
        }
        for b in 0..batch {
            acc.fill(0.0);
            for q in 0..n_q {
                // q → (tap, channel) in the input's memory order (§2.2).
                let (tt, ch) = match l.data_format {
                    DataFormat::ChannelsLast => (q / c, q % c),
                    DataFormat::ChannelsFirst => (q % n_taps, q / n_taps),
                };
                let Some(sp) = tap_at[tt] else { continue };
                let xv = match l.data_format {
                    DataFormat::ChannelsLast => xs[(b * n_in + sp) * c + ch],
                    DataFormat::ChannelsFirst => xs[(b * c + ch) * n_in + sp],
                };
                // K[p, q, :]
                let krow = &ks[(p * n_q + q) * n_f..][..n_f];
                for (a, &w) in acc.iter_mut().zip(krow) {
                    *a += xv * w;
                }
            }
            for (f, &z) in acc.iter().enumerate() {
                // Per-sample output offset: (p, f) channels_last, (f, p) channels_first;
                // the canonical bias has that same per-sample layout.
                let off = match l.data_format {
                    DataFormat::ChannelsLast => p * n_f + f,
                    DataFormat::ChannelsFirst => f * n_pos + p,
                };
                let bias_v = bs.map_or(0.0, |bs| bs[off]);
                y[b * n_pos * n_f + off] = z + bias_v;
            }
        }
    }

    let mut shape = vec![batch];
    shape.extend_from_slice(&out_shape);
    let mut y = from_vec(&shape, y)?;
    apply_activation(&l.activation, &mut y);
    Ok(y)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::forward as run;
    use super::super::test_util::{assert_close, pseudo_random};
    use crate::graph::*;
    use ndarray::{array, ArrayD, IxDyn};

    /// An LC layer with Keras defaults except what the test sets.
    pub fn lc_op(
        rank: usize,
        filters: usize,
        kernel: &[usize],
        df: DataFormat,
    ) -> LocallyConnected {
        LocallyConnected {
            rank,
            filters,
            kernel: kernel.to_vec(),
            strides: vec![1; rank],
            dilation: vec![1; rank],
            padding: Padding::Valid,
            data_format: df,
            activation: Activation::Linear,
            use_bias: true,
            implementation: 1,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        }
    }

    /// A one-layer graph `input → op`.
    pub fn one_layer(input: &[usize], op: Op) -> Graph {
        let mut g = Graph::new("t");
        let x = g.add_input("x", input.to_vec()).unwrap();
        let y = g.add("layer", op, &[x]).unwrap();
        g.outputs.push(y);
        g
    }

    /// §3.3 worked example: filter 0 all ones, filter 1 `K[p, q, 1] = 10^q`.
    fn worked_example(df: DataFormat, x: ArrayD<f32>, bias: ArrayD<f32>) -> ArrayD<f32> {
        let shape = x.shape()[1..].to_vec();
        let g = one_layer(&shape, Op::LocallyConnected(lc_op(1, 2, &[2], df)));
        let kernel = ArrayD::from_shape_fn(IxDyn(&[3, 4, 2]), |ix| {
            if ix[2] == 0 {
                1.0
            } else {
                10f32.powi(ix[1] as i32)
            }
        });
        run(&g, &[kernel, bias], &[x]).unwrap().remove(0)
    }

    #[test]
    fn worked_example_channels_last() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 4, 2]), |ix| (2 * ix[1] + ix[2]) as f32);
        let bias = array![[100.0f32, 200.0], [300.0, 400.0], [500.0, 600.0]].into_dyn();
        let y = worked_example(DataFormat::ChannelsLast, x, bias);
        let want = array![[[106.0f32, 3410.0], [314.0, 5832.0], [522.0, 8254.0]]].into_dyn();
        assert_eq!(y, want);
    }

    #[test]
    fn worked_example_channels_first() {
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 4]), |ix| (4 * ix[1] + ix[2]) as f32);
        // Canonical channels_first bias = Keras bias (L_out, F) flat-reshaped to (F, L_out).
        let keras_bias = array![[100.0f32, 200.0], [300.0, 400.0], [500.0, 600.0]];
        let bias = keras_bias.into_shape_with_order((2, 3)).unwrap().into_dyn();
        let y = worked_example(DataFormat::ChannelsFirst, x, bias);
        let want = array![[[110.0f32, 214.0, 318.0], [5810.0, 7021.0, 8232.0]]].into_dyn();
        assert_eq!(y, want);
    }

    #[test]
    fn same_padding_clips_windows() {
        // n=8, k=3, s=2, same: windows [-1,2), [1,4), [3,6), [5,8) (§3.4). C=1, F=1,
        // K[p, t, 0] = 10^t so each output spells the taps it read; x[l] = l + 1.
        for df in [DataFormat::ChannelsLast, DataFormat::ChannelsFirst] {
            let mut op = lc_op(1, 1, &[3], df);
            op.strides = vec![2];
            op.padding = Padding::Same;
            op.use_bias = false;
            let shape = if df == DataFormat::ChannelsLast {
                [8, 1]
            } else {
                [1, 8]
            };
            let g = one_layer(&shape, Op::LocallyConnected(op));
            assert_eq!(
                g.nodes[1].shape,
                if df == DataFormat::ChannelsLast {
                    [4, 1]
                } else {
                    [1, 4]
                }
            );
            // Canonical layout: the out-of-range tap 0 of position 0 has weight zero.
            let kernel = ArrayD::from_shape_fn(IxDyn(&[4, 3, 1]), |ix| {
                if ix[0] == 0 && ix[1] == 0 {
                    0.0
                } else {
                    10f32.powi(ix[1] as i32)
                }
            });
            let x = ArrayD::from_shape_fn(IxDyn(&[1, shape[0], shape[1]]), |ix| {
                (ix[1] + ix[2] + 1) as f32
            });
            let y = run(&g, &[kernel], &[x]).unwrap().remove(0);
            // Position 0 reads x[0], x[1] at taps 1, 2: 10·1 + 100·2 = 210.
            // Position o ≥ 1 reads x[2o−1], x[2o], x[2o+1]: (2o) + 10(2o+1) + 100(2o+2).
            let want = [
                210.0f32,
                2.0 + 30.0 + 400.0,
                4.0 + 50.0 + 600.0,
                6.0 + 70.0 + 800.0,
            ];
            assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
        }
    }

    #[test]
    fn dilation_and_3d_follow_the_tap_formula() {
        // LC3D, channels_last, kernel (2,1,2), dilation (2,1,1), strides (1,1,2),
        // input (5,2,5,2): compare against a direct evaluation of the §3.1 formula.
        let mut op = lc_op(3, 3, &[2, 1, 2], DataFormat::ChannelsLast);
        op.dilation = vec![2, 1, 1];
        op.strides = vec![1, 1, 2];
        let g = one_layer(&[5, 2, 5, 2], Op::LocallyConnected(op));
        let out = g.nodes[1].shape.clone();
        assert_eq!(out, [3, 2, 2, 3]);
        let kernel = pseudo_random(&[12, 8, 3], 1);
        let bias = pseudo_random(&out, 2);
        let x = pseudo_random(&[2, 5, 2, 5, 2], 3);
        let y = run(
            &g,
            &[kernel.clone(), bias.clone()],
            std::slice::from_ref(&x),
        )
        .unwrap()
        .remove(0);
        let want = ArrayD::from_shape_fn(IxDyn(&[2, 3, 2, 2, 3]), |ix| {
            let (b, i, j, l, f) = (ix[0], ix[1], ix[2], ix[3], ix[4]);
            let p = (i * 2 + j) * 2 + l;
            let mut z = bias[[i, j, l, f]];
            for t0 in 0..2 {
                for t2 in 0..2 {
                    for c in 0..2 {
                        let q = (t0 * 2 + t2) * 2 + c;
                        z += x[[b, i + 2 * t0, j, 2 * l + t2, c]] * kernel[[p, q, f]];
                    }
                }
            }
            z
        });
        assert_close(&y, &want, 1e-6);
    }

    #[test]
    fn channels_first_equals_channels_last_with_permuted_patch_order() {
        // LC2D same, kernel (3,2), strides (2,1), dilation (1,2), C=2, F=3 on 5×6: the
        // channels_first layer with K_cf[p, c·T + t, f] = K_cl[p, t·C + c, f] and the
        // transposed bias computes the channels_last result with channels moved first.
        let (c, n_taps, f) = (2, 6, 3);
        let make = |df| {
            let mut op = lc_op(2, f, &[3, 2], df);
            op.strides = vec![2, 1];
            op.dilation = vec![1, 2];
            op.padding = Padding::Same;
            op.activation = Activation::Elu { alpha: 1.0 };
            one_layer(
                &crate::graph::infer::join_channels(&[5, 6], c, df),
                Op::LocallyConnected(op),
            )
        };
        let (gl, gf) = (
            make(DataFormat::ChannelsLast),
            make(DataFormat::ChannelsFirst),
        );
        assert_eq!(gl.nodes[1].shape, [3, 6, 3]);
        let k_cl = pseudo_random(&[18, n_taps * c, f], 20);
        let b_cl = pseudo_random(&[3, 6, f], 21);
        let k_cf = ArrayD::from_shape_fn(IxDyn(&[18, n_taps * c, f]), |ix| {
            let (ch, t) = (ix[1] / n_taps, ix[1] % n_taps);
            k_cl[[ix[0], t * c + ch, ix[2]]]
        });
        let b_cf = b_cl.view().permuted_axes(IxDyn(&[2, 0, 1])).to_owned();
        let x = pseudo_random(&[2, 5, 6, c], 22);
        let y_cl = run(&gl, &[k_cl, b_cl], std::slice::from_ref(&x))
            .unwrap()
            .remove(0);
        let x_cf = x.permuted_axes(IxDyn(&[0, 3, 1, 2]));
        let y_cf = run(&gf, &[k_cf, b_cf], &[x_cf]).unwrap().remove(0);
        let y_cf_as_cl = y_cf.permuted_axes(IxDyn(&[0, 2, 3, 1])).to_owned();
        assert_close(&y_cf_as_cl, &y_cl, 1e-6);
    }

    fn conv_op(kernel: &[usize], strides: &[usize], filters: usize, df: DataFormat) -> Conv {
        Conv {
            rank: kernel.len(),
            filters,
            kernel: kernel.to_vec(),
            strides: strides.to_vec(),
            dilation: vec![1; kernel.len()],
            padding: Padding::Valid,
            data_format: df,
            groups: 1,
            activation: Activation::Linear,
            use_bias: true,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        }
    }

    #[test]
    fn lc2d_with_tiled_kernel_equals_conv2d() {
        // §3.5: kernel (3,2), strides (2,3), C=3, F=4, input 9×11, both formats.
        let (kh, kw, c, f) = (3, 2, 3, 4);
        for df in [DataFormat::ChannelsLast, DataFormat::ChannelsFirst] {
            let in_shape = crate::graph::infer::join_channels(&[9, 11], c, df);
            let conv = one_layer(&in_shape, Op::Conv(conv_op(&[kh, kw], &[2, 3], f, df)));
            let mut op = lc_op(2, f, &[kh, kw], df);
            op.strides = vec![2, 3];
            op.activation = Activation::Tanh;
            let lc = one_layer(&in_shape, Op::LocallyConnected(op));
            let out = lc.nodes[1].shape.clone();
            assert_eq!(out, conv.nodes[1].shape);
            let wc = pseudo_random(&[kh, kw, c, f], 10);
            let bc = pseudo_random(&[f], 11);
            let n_pos = 4 * 4;
            let k1 = ArrayD::from_shape_fn(IxDyn(&[n_pos, kh * kw * c, f]), |ix| {
                let q = ix[1];
                let (tap, ch) = match df {
                    DataFormat::ChannelsLast => (q / c, q % c),
                    DataFormat::ChannelsFirst => (q % (kh * kw), q / (kh * kw)),
                };
                wc[[tap / kw, tap % kw, ch, ix[2]]]
            });
            // Canonical bias: bc[f] wherever the output channel is f.
            let b1 = ArrayD::from_shape_fn(IxDyn(&out), |ix| match df {
                DataFormat::ChannelsLast => bc[[ix[2]]],
                DataFormat::ChannelsFirst => bc[[ix[0]]],
            });
            let mut x_shape = vec![3];
            x_shape.extend_from_slice(&in_shape);
            let x = pseudo_random(&x_shape, 12);
            let y_lc = run(&lc, &[k1, b1], std::slice::from_ref(&x))
                .unwrap()
                .remove(0);
            let mut y_conv = run(&conv, &[wc, bc], &[x]).unwrap().remove(0);
            y_conv.mapv_inplace(f32::tanh);
            assert_close(&y_lc, &y_conv, 1e-5);
        }
    }
}
