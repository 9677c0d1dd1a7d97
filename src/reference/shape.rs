//! Layers that only move data: ZeroPadding, Cropping, Flatten, Reshape, Permute.
//!
//! These are not performance-critical, so they use ndarray's slicing and axis
//! permutation directly; every formula is in terms of the batched shape `(B, per-sample…)`.

use super::split_batched;
use crate::error::{Error, Result};
use crate::graph::infer::join_channels;
use crate::graph::DataFormat;
use ndarray::{ArrayD, IxDyn, Slice};

/// The batched axis of spatial axis `a` in `df` order.
fn spatial_axis(a: usize, df: DataFormat) -> usize {
    match df {
        DataFormat::ChannelsLast => 1 + a,
        DataFormat::ChannelsFirst => 2 + a,
    }
}

/// ZeroPadding: `y[b, i + before, c] = x[b, i, c]` along every spatial axis, zero
/// elsewhere.
pub(super) fn zero_padding(
    rank: usize,
    pads: &[(usize, usize)],
    df: DataFormat,
    x: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let (batch, sp, c) = split_batched(x.shape(), rank, df)?;
    let out_sp: Vec<usize> = sp.iter().zip(pads).map(|(n, (a, b))| n + a + b).collect();
    let mut shape = vec![batch];
    shape.extend_from_slice(&join_channels(&out_sp, c, df));
    let mut y = ArrayD::<f32>::zeros(IxDyn(&shape));
    // The interior y[:, before_a .. before_a + n_a, :] receives x.
    y.slice_each_axis_mut(|ax| {
        let d = ax.axis.index();
        match (0..rank).find(|&a| spatial_axis(a, df) == d) {
            Some(a) => Slice::from(pads[a].0..pads[a].0 + sp[a]),
            None => Slice::from(..),
        }
    })
    .assign(x);
    Ok(y)
}

/// Cropping: `y[b, i, c] = x[b, i + before, c]` for `i < n − before − after`.
pub(super) fn cropping(
    rank: usize,
    crops: &[(usize, usize)],
    df: DataFormat,
    x: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    let (_, sp, _) = split_batched(x.shape(), rank, df)?;
    for (n, (a, b)) in sp.iter().zip(crops) {
        if a + b >= *n {
            return Err(Error::internal("reference cropping: crops everything"));
        }
    }
    Ok(x.slice_each_axis(|ax| {
        let d = ax.axis.index();
        match (0..rank).find(|&a| spatial_axis(a, df) == d) {
            Some(a) => Slice::from(crops[a].0..sp[a] - crops[a].1),
            None => Slice::from(..),
        }
    })
    .to_owned())
}

/// Flatten to `(B, n)` in row-major order. For channels_first Keras first moves the
/// channel axis last: `(B, C, s…)` → `(B, s…, C)` (permutation `[0, 2, …, r−1, 1]`), then
/// flattens.
pub(super) fn flatten(df: DataFormat, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let batch = x.shape().first().copied().unwrap_or(0);
    let n: usize = x.shape().iter().skip(1).product();
    let view = match df {
        DataFormat::ChannelsLast => x.view(),
        DataFormat::ChannelsFirst => {
            let r = x.ndim();
            let mut perm = vec![0];
            perm.extend(2..r);
            if r > 1 {
                perm.push(1);
            }
            x.view().permuted_axes(IxDyn(&perm))
        }
    };
    reshape_view(view, &[batch, n])
}

/// Reshape to `(B, target…)` in row-major order; `target` is the node's inferred shape
/// (the `-1` already resolved).
pub(super) fn reshape(target: &[usize], x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let mut shape = vec![x.shape().first().copied().unwrap_or(0)];
    shape.extend_from_slice(target);
    reshape_view(x.view(), &shape)
}

/// Permute with Keras's 1-based per-sample `dims`: output axis `j + 1` is input axis
/// `dims[j]` (the batch axis stays first).
pub(super) fn permute(dims: &[usize], x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let mut perm = vec![0];
    perm.extend_from_slice(dims);
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..x.ndim()).collect::<Vec<_>>() {
        return Err(Error::internal(
            "reference permute: dims are not a permutation",
        ));
    }
    Ok(x.view()
        .permuted_axes(IxDyn(&perm))
        .as_standard_layout()
        .into_owned())
}

/// Row-major reshape of a view into a new owned array.
fn reshape_view(v: ndarray::ArrayViewD<'_, f32>, shape: &[usize]) -> Result<ArrayD<f32>> {
    v.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(shape))
        .map_err(|e| Error::internal(format!("reference reshape to {shape:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use super::super::lc::tests::one_layer;
    use crate::graph::*;
    use ndarray::{array, ArrayD, IxDyn};

    fn run_on(op: Op, x: ArrayD<f32>) -> ArrayD<f32> {
        let g = one_layer(&x.shape()[1..], op);
        run(&g, &[], &[x]).unwrap().remove(0)
    }

    #[test]
    fn flatten_channels_first_moves_channels_last() {
        // (B=1, C=2, H=2, W=2): x[c, h, w] = 100c + 10h + w.
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 2, 2]), |ix| {
            (100 * ix[1] + 10 * ix[2] + ix[3]) as f32
        });
        let cf = run_on(
            Op::Flatten {
                data_format: DataFormat::ChannelsFirst,
            },
            x.clone(),
        );
        assert_eq!(
            cf,
            array![[0.0f32, 100.0, 1.0, 101.0, 10.0, 110.0, 11.0, 111.0]].into_dyn()
        );
        let cl = run_on(
            Op::Flatten {
                data_format: DataFormat::ChannelsLast,
            },
            x,
        );
        assert_eq!(
            cl,
            array![[0.0f32, 1.0, 10.0, 11.0, 100.0, 101.0, 110.0, 111.0]].into_dyn()
        );
    }

    #[test]
    fn permute_and_reshape() {
        let x = ArrayD::from_shape_fn(IxDyn(&[2, 2, 3]), |ix| {
            (100 * ix[0] + 10 * ix[1] + ix[2]) as f32
        });
        let y = run_on(Op::Permute { dims: vec![2, 1] }, x.clone());
        assert_eq!(y.shape(), [2, 3, 2]);
        assert_eq!(y[[1, 2, 0]], 102.0);
        assert_eq!(y[[1, 2, 1]], 112.0);
        let y = run_on(
            Op::Reshape {
                target: vec![-1, 2],
            },
            x,
        );
        assert_eq!(y.shape(), [2, 3, 2]);
        assert_eq!(
            y.iter().copied().collect::<Vec<_>>()[..6],
            [0.0, 1.0, 2.0, 10.0, 11.0, 12.0]
        );
    }

    #[test]
    fn zero_padding_and_cropping() {
        // (B=1, 2, 3, C=1) channels_last; pad rows (1, 0), cols (0, 2).
        let x = array![[[[1.0f32], [2.0], [3.0]], [[4.0], [5.0], [6.0]]]].into_dyn();
        let op = Op::ZeroPadding {
            rank: 2,
            pads: vec![(1, 0), (0, 2)],
            data_format: DataFormat::ChannelsLast,
        };
        let y = run_on(op, x.clone());
        assert_eq!(y.shape(), [1, 3, 5, 1]);
        let flat: Vec<f32> = y.iter().copied().collect();
        assert_eq!(
            flat,
            [0., 0., 0., 0., 0., 1., 2., 3., 0., 0., 4., 5., 6., 0., 0.]
        );
        // Cropping channels_first on (B=1, C=2, 3): crop (1, 1) leaves the middle element.
        let x = array![[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]]].into_dyn();
        let op = Op::Cropping {
            rank: 1,
            crops: vec![(1, 1)],
            data_format: DataFormat::ChannelsFirst,
        };
        assert_eq!(run_on(op, x), array![[[2.0f32], [5.0]]].into_dyn());
        // ZeroPadding1D channels_first pads the last axis.
        let x = array![[[1.0f32, 2.0]]].into_dyn();
        let op = Op::ZeroPadding {
            rank: 1,
            pads: vec![(2, 1)],
            data_format: DataFormat::ChannelsFirst,
        };
        assert_eq!(
            run_on(op, x),
            array![[[0.0f32, 0.0, 1.0, 2.0, 0.0]]].into_dyn()
        );
    }
}
