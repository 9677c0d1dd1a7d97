//! Conversion of weights between Keras file layouts and the canonical layout of the graph
//! IR (see the `graph` module docs), including LocallyConnected implementations 1, 2, 3.

use super::{Graph, ParamId};
use ndarray::ArrayD;

/// Converts a weight from its Keras file layout (`ParamSpec::keras_shape`) to canonical
/// layout (`ParamSpec::shape`). The caller has checked the shape. Errors are a detail
/// string that the caller wraps with file, layer and weight names.
pub fn keras_to_canonical(
    graph: &Graph,
    param: ParamId,
    keras: ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    let _ = (graph, param, keras);
    Err("layout conversion not built yet".into())
}

/// Converts a canonical weight back to the Keras file layout of its layer (masked entries
/// of implementation 2 are zero).
pub fn canonical_to_keras(
    graph: &Graph,
    param: ParamId,
    canonical: &ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    let _ = (graph, param, canonical);
    Err("layout conversion not built yet".into())
}
