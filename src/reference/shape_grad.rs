//! Backward passes of the layers that only move data (see [`super::shape`]): each is the
//! adjoint of its forward index map.
//!
//! ZeroPadding → crop the interior of `dy`; Cropping → zero-pad `dy` back; Flatten and
//! Reshape → reshape `dy` to the input shape (channels_first Flatten: reshape to the
//! channels-last order, then move the channel axis back); Permute → inverse permutation.

use super::shape::{cropping, zero_padding};
use crate::error::{Error, Result};
use crate::graph::DataFormat;
use ndarray::{ArrayD, IxDyn};

/// ZeroPadding backward: `dx = dy[b, before .. before + n, c]`, i.e. cropping `dy`.
pub(super) fn zero_padding_backward(
    rank: usize,
    pads: &[(usize, usize)],
    df: DataFormat,
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    cropping(rank, pads, df, dy)
}

/// Cropping backward: `dy` zero-padded by the crops.
pub(super) fn cropping_backward(
    rank: usize,
    crops: &[(usize, usize)],
    df: DataFormat,
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    zero_padding(rank, crops, df, dy)
}

/// Flatten backward to the input shape `x_shape` (batched).
pub(super) fn flatten_backward(
    df: DataFormat,
    x_shape: &[usize],
    dy: &ArrayD<f32>,
) -> Result<ArrayD<f32>> {
    match df {
        DataFormat::ChannelsLast => reshape_to(x_shape, dy),
        DataFormat::ChannelsFirst => {
            // Forward: (B, C, s…) → permute [0, 2, …, r−1, 1] → flatten.
            let r = x_shape.len();
            if r < 2 {
                return reshape_to(x_shape, dy);
            }
            let mut permuted = vec![x_shape[0]];
            permuted.extend_from_slice(&x_shape[2..]);
            permuted.push(x_shape[1]);
            let g = reshape_to(&permuted, dy)?;
            // Inverse permutation: [0, r−1, 1, …, r−2].
            let mut inv = vec![0, r - 1];
            inv.extend(1..r - 1);
            Ok(g.permuted_axes(IxDyn(&inv))
                .as_standard_layout()
                .into_owned())
        }
    }
}

/// Reshape backward (also Flatten channels_last): `dy` in row-major order, reshaped.
pub(super) fn reshape_to(x_shape: &[usize], dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    dy.as_standard_layout()
        .into_owned()
        .into_shape_with_order(IxDyn(x_shape))
        .map_err(|e| Error::internal(format!("reference reshape backward: {e}")))
}

/// Permute backward: output axis `j + 1` is input axis `dims[j]`, so input axis
/// `dims[j]` receives `dy`'s axis `j + 1`.
pub(super) fn permute_backward(dims: &[usize], dy: &ArrayD<f32>) -> Result<ArrayD<f32>> {
    let n = dy.ndim();
    if n == 0 {
        return Err(Error::internal(
            "reference permute backward: scalar gradient",
        ));
    }
    let mut inv = vec![usize::MAX; n];
    inv[0] = 0;
    for (j, &d) in dims.iter().enumerate() {
        match inv.get_mut(d) {
            Some(slot) if d != 0 => *slot = j + 1,
            _ => return Err(Error::internal("reference permute backward: bad dims")),
        }
    }
    if inv.contains(&usize::MAX) {
        return Err(Error::internal("reference permute backward: bad dims"));
    }
    Ok(dy
        .view()
        .permuted_axes(IxDyn(&inv))
        .as_standard_layout()
        .into_owned())
}
