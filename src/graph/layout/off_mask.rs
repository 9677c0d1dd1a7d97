//! Layout conversion of a whole Keras weight, implementation-2 masked entries included:
//! the Keras tensor splits into the canonical kernel (what every engine reads) and the
//! off-mask entries (a flat `Vec<f32>` in row-major order of the Keras tensor, see
//! [`crate::graph::layout_lc::LcGeometry::split_off_mask`]), and the two merge back into
//! exactly the tensor that was split. For every other weight the off-mask part is `None`
//! and these are [`super::keras_to_canonical`] / [`super::canonical_to_keras`].

use super::{canonical_to_keras, flat, keras_to_canonical, lc_kernel_geometry};
use crate::graph::{Graph, ParamId};
use ndarray::ArrayD;

/// `Some(number of off-mask entries)` for an implementation-2 LocallyConnected kernel,
/// `None` for any other parameter.
pub fn off_mask_len(graph: &Graph, param: ParamId) -> Result<Option<usize>, String> {
    Ok(lc_kernel_geometry(graph, param)?
        .filter(|g| g.implementation() == 2)
        .map(|g| g.off_mask_len()))
}

/// Converts a weight from its Keras file layout to canonical layout, returning the
/// off-mask entries of an implementation-2 kernel beside it (`None` for other weights).
pub fn keras_to_canonical_split(
    graph: &Graph,
    param: ParamId,
    keras: ArrayD<f32>,
) -> Result<(ArrayD<f32>, Option<Vec<f32>>), String> {
    let geom = lc_kernel_geometry(graph, param)?.filter(|g| g.implementation() == 2);
    let off = match geom {
        Some(g) => {
            let spec = &graph.params[param];
            if keras.shape() != spec.keras_shape.as_slice() {
                return Err(format!(
                    "expected kernel shape {:?}, found {:?}",
                    spec.keras_shape,
                    keras.shape()
                ));
            }
            let data = flat(&keras);
            let slice = data
                .as_slice()
                .ok_or("internal: standard-layout array is not contiguous")?;
            Some(g.split_off_mask(slice)?)
        }
        None => None,
    };
    Ok((keras_to_canonical(graph, param, keras)?, off))
}

/// Converts a canonical weight back to its Keras file layout with the off-mask entries
/// `off` of an implementation-2 kernel in place (`None`: zeros there, as
/// [`canonical_to_keras`]). `off` given for any other weight is an error.
pub fn canonical_to_keras_merged(
    graph: &Graph,
    param: ParamId,
    canonical: &ArrayD<f32>,
    off: Option<&[f32]>,
) -> Result<ArrayD<f32>, String> {
    let mut keras = canonical_to_keras(graph, param, canonical)?;
    let Some(off) = off else {
        return Ok(keras);
    };
    let geom = lc_kernel_geometry(graph, param)?
        .filter(|g| g.implementation() == 2)
        .ok_or_else(|| {
            format!(
                "internal: off-mask entries given for '{}', which is not an implementation-2 kernel",
                graph.params[param].name
            )
        })?;
    let slice = keras
        .as_slice_mut()
        .ok_or("internal: converted kernel is not contiguous")?;
    geom.merge_off_mask(slice, off)?;
    Ok(keras)
}
