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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::ops::*;
    use ndarray::IxDyn;

    fn lc(rank: usize, padding: Padding, df: DataFormat, imp: u8) -> LocallyConnected {
        let (k, s) = if rank == 1 {
            (vec![3], vec![2])
        } else {
            (vec![3, 2], vec![1, 2])
        };
        LocallyConnected {
            rank,
            filters: 3,
            kernel: k,
            strides: s,
            dilation: vec![1; rank],
            padding,
            data_format: df,
            activation: Activation::Linear,
            use_bias: true,
            implementation: imp,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        }
    }

    /// Any Keras tensor (masked entries arbitrary) splits into canonical + off-mask and
    /// merges back bit for bit; the off-mask entries are exactly the ones the canonical
    /// layout drops (a round trip through it zeroes them and nothing else).
    #[test]
    fn split_and_merge_are_inverse_for_every_layout() {
        let mut cases = 0;
        for df in [DataFormat::ChannelsLast, DataFormat::ChannelsFirst] {
            for pad in [Padding::Valid, Padding::Same] {
                for (rank, input) in [(1, vec![9, 2]), (2, vec![6, 5, 2])] {
                    for imp in 1..=3u8 {
                        let input = match df {
                            DataFormat::ChannelsLast => input.clone(),
                            DataFormat::ChannelsFirst => {
                                let mut v = vec![input[input.len() - 1]];
                                v.extend(&input[..input.len() - 1]);
                                v
                            }
                        };
                        if imp == 1 && pad == Padding::Same {
                            continue;
                        }
                        let mut g = Graph::new("t");
                        let x = g.add_input("x", input).unwrap();
                        let id = g
                            .add("lc", Op::LocallyConnected(lc(rank, pad, df, imp)), &[x])
                            .unwrap();
                        let kp = g.nodes[id].params[0];
                        let shape = g.params[kp].keras_shape.clone();
                        let n: usize = shape.iter().product();
                        let keras = ArrayD::from_shape_vec(
                            IxDyn(&shape),
                            (0..n).map(|i| i as f32 + 0.5).collect(),
                        )
                        .unwrap();
                        let (canon, off) = keras_to_canonical_split(&g, kp, keras.clone()).unwrap();
                        let len = off_mask_len(&g, kp).unwrap();
                        assert_eq!(off.as_ref().map(Vec::len), len);
                        let back =
                            canonical_to_keras_merged(&g, kp, &canon, off.as_deref()).unwrap();
                        if imp == 3 {
                            // Implementation 3 holds connected weights only.
                            assert!(off.is_none());
                            assert_eq!(back, keras);
                            continue;
                        }
                        if imp == 1 {
                            assert!(off.is_none());
                            continue;
                        }
                        assert_eq!(back, keras, "{df:?} {pad:?} rank {rank}");
                        let zeroed = canonical_to_keras(&g, kp, &canon).unwrap();
                        let dropped: Vec<f32> = keras
                            .iter()
                            .zip(zeroed.iter())
                            .filter(|(_, z)| **z == 0.0)
                            .map(|(k, _)| *k)
                            .collect();
                        assert_eq!(Some(dropped), off, "{df:?} {pad:?} rank {rank}");
                        let bias = g.nodes[id].params[1];
                        let b = ArrayD::zeros(IxDyn(&g.params[bias].shape));
                        assert!(canonical_to_keras_merged(&g, bias, &b, None).is_ok());
                        assert!(canonical_to_keras_merged(&g, bias, &b, Some(&[])).is_err());
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 8);
    }
}
