//! Conversion of weights between Keras file layouts and the canonical layout of the graph
//! IR (see the `graph` module docs), including LocallyConnected implementations 1, 2, 3.
//!
//! - LocallyConnected kernel: see [`super::layout_lc`] (implementation 1 is the canonical
//!   layout; 2 and 3 are gathered from / scattered to their connected entries).
//! - LocallyConnected bias: a plain row-major reshape between Keras's `(out…, F)` and the
//!   canonical per-sample output shape; for channels_first this is Keras's bias quirk
//!   (keras-lc-semantics §3.3), not a transpose.
//! - Every other weight: the canonical layout is the Keras layout (shape check only).

use super::layout_lc::LcGeometry;
use super::{Graph, Node, Op, ParamId, ParamSpec};
use ndarray::{ArrayD, IxDyn};

/// What a parameter's layout conversion needs: its spec and, for an LC kernel, the
/// layer geometry (checked against the spec's shapes).
enum Target<'g> {
    LcKernel(&'g ParamSpec, LcGeometry),
    Reshape(&'g ParamSpec),
}

fn target(graph: &Graph, param: ParamId) -> Result<Target<'_>, String> {
    let spec = graph
        .params
        .get(param)
        .ok_or_else(|| format!("parameter {param} does not exist"))?;
    let node: &Node = graph.nodes.get(spec.node).ok_or_else(|| {
        format!(
            "parameter '{}' belongs to missing node {}",
            spec.name, spec.node
        )
    })?;
    let same_count =
        spec.shape.iter().product::<usize>() == spec.keras_shape.iter().product::<usize>();
    match &node.op {
        Op::LocallyConnected(lc) if spec.name == "kernel" => {
            let input = node
                .inputs
                .first()
                .and_then(|&i| graph.nodes.get(i))
                .ok_or_else(|| format!("layer '{}' has no input node", node.name))?;
            let geom = LcGeometry::new(lc, &input.shape)?;
            if geom.canonical_kernel_shape() != spec.shape || geom.keras_kernel_shape()? != spec.keras_shape {
                return Err(format!(
                    "internal: kernel shapes of layer '{}' disagree: graph has canonical {:?} / Keras {:?}, geometry gives {:?} / {:?}",
                    node.name,
                    spec.shape,
                    spec.keras_shape,
                    geom.canonical_kernel_shape(),
                    geom.keras_kernel_shape()?
                ));
            }
            Ok(Target::LcKernel(spec, geom))
        }
        Op::LocallyConnected(_) if spec.name == "bias" && same_count => Ok(Target::Reshape(spec)),
        Op::LocallyConnected(_) => Err(format!(
            "no layout conversion for weight '{}' of locally connected layer '{}' (canonical {:?}, Keras {:?})",
            spec.name, node.name, spec.shape, spec.keras_shape
        )),
        _ if spec.shape == spec.keras_shape => Ok(Target::Reshape(spec)),
        _ => Err(format!(
            "no layout conversion for weight '{}' of layer '{}' ({}): canonical {:?} differs from Keras {:?}",
            spec.name,
            node.name,
            node.op.kind_name(),
            spec.shape,
            spec.keras_shape
        )),
    }
}

fn check_shape(what: &str, found: &[usize], expected: &[usize]) -> Result<(), String> {
    if found != expected {
        return Err(format!(
            "expected {what} shape {expected:?}, found {found:?}"
        ));
    }
    Ok(())
}

/// Row-major data of `a` (copied only if `a` is not in standard layout).
fn flat<'a>(a: &'a ArrayD<f32>) -> ndarray::CowArray<'a, f32, IxDyn> {
    a.as_standard_layout()
}

fn from_vec(shape: &[usize], v: Vec<f32>) -> Result<ArrayD<f32>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), v).map_err(|e| format!("internal: {e}"))
}

/// Converts a weight from its Keras file layout (`ParamSpec::keras_shape`) to canonical
/// layout (`ParamSpec::shape`). Errors (wrong shape: "expected shape …, found …";
/// inconsistent graph) are a detail string that the caller wraps with file, layer and
/// weight names.
pub fn keras_to_canonical(
    graph: &Graph,
    param: ParamId,
    keras: ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    match target(graph, param)? {
        Target::LcKernel(spec, geom) => {
            check_shape("kernel", keras.shape(), &spec.keras_shape)?;
            let data = flat(&keras);
            let slice = data
                .as_slice()
                .ok_or("internal: standard-layout array is not contiguous")?;
            from_vec(&spec.shape, geom.kernel_to_canonical(slice)?)
        }
        Target::Reshape(spec) => {
            check_shape(&spec.name, keras.shape(), &spec.keras_shape)?;
            keras
                .into_shape_clone(IxDyn(&spec.shape))
                .map_err(|e| format!("internal: {e}"))
        }
    }
}

/// Converts a canonical weight back to the Keras file layout of its layer (masked entries
/// of implementation 2 are zero).
pub fn canonical_to_keras(
    graph: &Graph,
    param: ParamId,
    canonical: &ArrayD<f32>,
) -> Result<ArrayD<f32>, String> {
    match target(graph, param)? {
        Target::LcKernel(spec, geom) => {
            check_shape("canonical kernel", canonical.shape(), &spec.shape)?;
            let data = flat(canonical);
            let slice = data
                .as_slice()
                .ok_or("internal: standard-layout array is not contiguous")?;
            from_vec(&spec.keras_shape, geom.kernel_to_keras(slice)?)
        }
        Target::Reshape(spec) => {
            check_shape(
                &format!("canonical {}", spec.name),
                canonical.shape(),
                &spec.shape,
            )?;
            canonical
                .to_shape(IxDyn(&spec.keras_shape))
                .map(|a| a.into_owned())
                .map_err(|e| format!("internal: {e}"))
        }
    }
}
