//! The naive reference path: per-layer forward passes on ndarray, written straight from the
//! Keras formulas (see `keras-lc-semantics.md`), never through lcjit's IRs.
//!
//! This is the oracle the JIT and the loop-IR interpreter are checked against, so every
//! layer is a plain nested loop with an explicit index formula and a comment giving the
//! Keras formula it implements. Arithmetic is f32 with f32 accumulation, like Keras; only
//! the transcendental helpers of [`activation`] work in f64 internally.
//!
//! # Safety of indexing
//!
//! [`forward`] checks everything that comes from the caller before it computes anything:
//! the graph is re-checked by shape inference (so every op's spatial vectors have `rank`
//! entries, every size is ≥ 1 and every node's shape follows from its inputs), the inputs
//! must have shape `(B, node.shape…)` with one `B ≥ 1`, and every parameter must have the
//! canonical shape of its [`ParamSpec`](crate::graph::ParamSpec). Each layer function then
//! re-derives its output shape from its input's shape and its op, and indexes raw
//! row-major slices with offsets that are in bounds by construction of those shapes. A
//! layer whose result does not have the node's shape is reported as [`Error::Internal`].

pub mod activation;
pub mod activation_grad;
pub mod activity;
pub mod backward;
mod conv;
mod conv_grad;
mod dense;
mod dense_grad;
pub mod dropout;
pub mod fd;
mod lc;
mod lc_grad;
mod merge;
mod merge_grad;
pub(crate) mod norm;
mod norm_grad;
mod pool;
mod pool_grad;
mod shape;
mod shape_grad;
pub mod train;

pub use activation::{activation_scalar, apply_activation};

use crate::error::{Error, Result};
use crate::graph::infer::infer;
use crate::graph::{Activation, Graph, Node, Op};
use ndarray::{ArrayBase, ArrayD, Data, IxDyn};

/// Runs the graph on batched inputs (each `(B, per-sample shape…)`), returning one array
/// per graph output. `params[i]` is the canonical value of `graph.params[i]`.
///
/// Errors: [`Error::Input`] when the number of inputs or an input's shape does not match
/// the graph (every input must be `(B, node.shape…)` with the same `B ≥ 1`);
/// [`Error::Internal`] when the parameters do not match `graph.params` (the weight loader
/// checks them against the same specs, so a mismatch here is a bug) or the graph breaks
/// its own invariants.
pub fn forward(
    graph: &Graph,
    params: &[ArrayD<f32>],
    inputs: &[ArrayD<f32>],
) -> Result<Vec<ArrayD<f32>>> {
    let batch = check_inputs(graph, inputs)?;
    check_params(graph, params)?;
    check_graph(graph)?;

    // last_use[i]: index of the last node that reads node i's output; graph outputs live
    // until the end.
    let n = graph.nodes.len();
    let mut last_use: Vec<usize> = (0..n).collect();
    for (i, node) in graph.nodes.iter().enumerate() {
        for &j in &node.inputs {
            last_use[j] = last_use[j].max(i);
        }
    }
    for &o in &graph.outputs {
        last_use[o] = usize::MAX;
    }

    let mut values: Vec<Option<ArrayD<f32>>> = vec![None; n];
    let mut next_input = 0;
    for (id, node) in graph.nodes.iter().enumerate() {
        let y = if matches!(node.op, Op::Input) {
            let pos = graph
                .inputs
                .iter()
                .position(|&i| i == id)
                .ok_or_else(|| internal(node, "input node is not listed in graph.inputs"))?;
            next_input += 1;
            inputs
                .get(pos)
                .cloned()
                .ok_or_else(|| internal(node, "missing input array"))?
        } else {
            let mut xs = Vec::with_capacity(node.inputs.len());
            for &j in &node.inputs {
                let x = values
                    .get(j)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| internal(node, &format!("input {j} is not available")))?;
                xs.push(x);
            }
            run_node(graph, params, node, &xs)?
        };
        let mut want = vec![batch];
        want.extend_from_slice(&node.shape);
        if y.shape() != want.as_slice() {
            return Err(internal(
                node,
                &format!("computed shape {:?}, expected {want:?}", y.shape()),
            ));
        }
        values[id] = Some(y);
        for &j in &node.inputs {
            if last_use[j] == id {
                values[j] = None;
            }
        }
        if last_use[id] == id {
            values[id] = None;
        }
    }
    if next_input != graph.inputs.len() {
        return Err(Error::internal(
            "graph.inputs lists a node that is not an input",
        ));
    }
    graph
        .outputs
        .iter()
        .map(|&o| {
            values
                .get(o)
                .and_then(Option::as_ref)
                .cloned()
                .ok_or_else(|| Error::internal(format!("output node {o} was not computed")))
        })
        .collect()
}

/// Runs one non-input node on its (batched) inputs.
fn run_node(
    graph: &Graph,
    params: &[ArrayD<f32>],
    node: &Node,
    xs: &[&ArrayD<f32>],
) -> Result<ArrayD<f32>> {
    let one = || match xs {
        [x] => Ok(*x),
        _ => Err(internal(node, "expects exactly one input")),
    };
    let p = |name: &str| param(graph, params, node, name);
    match &node.op {
        Op::Input => Err(internal(node, "input node reached run_node")),
        Op::LocallyConnected(l) => {
            let bias = if l.use_bias { Some(p("bias")?) } else { None };
            lc::forward(l, one()?, p("kernel")?, bias)
        }
        Op::Dense(d) => {
            let bias = if d.use_bias { Some(p("bias")?) } else { None };
            dense::forward(d, one()?, p("kernel")?, bias)
        }
        Op::Conv(c) => {
            let bias = if c.use_bias { Some(p("bias")?) } else { None };
            conv::forward(c, one()?, p("kernel")?, bias)
        }
        Op::Pool(pl) => pool::pool(pl, one()?),
        Op::GlobalPool {
            kind,
            rank,
            data_format,
            keepdims,
        } => pool::global_pool(*kind, *rank, *data_format, *keepdims, one()?),
        Op::ZeroPadding {
            rank,
            pads,
            data_format,
        } => shape::zero_padding(*rank, pads, *data_format, one()?),
        Op::Cropping {
            rank,
            crops,
            data_format,
        } => shape::cropping(*rank, crops, *data_format, one()?),
        Op::Flatten { data_format } => shape::flatten(*data_format, one()?),
        Op::Reshape { .. } => shape::reshape(&node.shape, one()?),
        Op::Permute { dims } => shape::permute(dims, one()?),
        Op::Dropout { .. } => Ok(one()?.clone()),
        Op::BatchNorm(bn) => {
            let gamma = if bn.scale { Some(p("gamma")?) } else { None };
            let beta = if bn.center { Some(p("beta")?) } else { None };
            norm::batch_norm(
                bn,
                one()?,
                gamma,
                beta,
                p("moving_mean")?,
                p("moving_variance")?,
            )
        }
        Op::Activation(a) => {
            let mut y = one()?.clone();
            apply_activation(a, &mut y);
            Ok(y)
        }
        Op::Merge(kind) => merge::merge(*kind, xs),
        Op::Concatenate { axis } => merge::concatenate(*axis, xs),
    }
}

/// The value of the parameter called `name` of `node`.
fn param<'a>(
    graph: &Graph,
    params: &'a [ArrayD<f32>],
    node: &Node,
    name: &str,
) -> Result<&'a ArrayD<f32>> {
    node.params
        .iter()
        .find(|&&id| graph.params.get(id).is_some_and(|s| s.name == name))
        .and_then(|&id| params.get(id))
        .ok_or_else(|| internal(node, &format!("has no parameter '{name}'")))
}

/// Checks the inputs against the graph and returns the batch size.
fn check_inputs(graph: &Graph, inputs: &[ArrayD<f32>]) -> Result<usize> {
    if inputs.len() != graph.inputs.len() {
        return Err(Error::Input {
            detail: format!(
                "the model has {} input(s), got {} array(s)",
                graph.inputs.len(),
                inputs.len()
            ),
        });
    }
    let mut batch = None;
    for (k, (x, &id)) in inputs.iter().zip(&graph.inputs).enumerate() {
        let node = graph
            .nodes
            .get(id)
            .ok_or_else(|| Error::internal(format!("input node {id} does not exist")))?;
        let ok = x.ndim() == node.shape.len() + 1 && x.shape()[1..] == node.shape[..];
        if !ok {
            return Err(Error::Input {
                detail: format!(
                    "input {k} ('{}') has shape {:?}, expected (batch, {})",
                    node.name,
                    x.shape(),
                    dims(&node.shape)
                ),
            });
        }
        let b = x.shape()[0];
        if b == 0 {
            return Err(Error::Input {
                detail: format!("input {k} ('{}') has an empty batch", node.name),
            });
        }
        match batch {
            None => batch = Some(b),
            Some(b0) if b0 != b => {
                return Err(Error::Input {
                    detail: format!(
                        "input {k} ('{}') has batch size {b}, but input 0 has {b0}",
                        node.name
                    ),
                })
            }
            Some(_) => {}
        }
    }
    batch.ok_or_else(|| Error::Input {
        detail: "the model has no inputs".into(),
    })
}

/// Checks the parameter values against `graph.params`.
fn check_params(graph: &Graph, params: &[ArrayD<f32>]) -> Result<()> {
    if params.len() != graph.params.len() {
        return Err(Error::internal(format!(
            "the graph has {} parameters, got {} arrays",
            graph.params.len(),
            params.len()
        )));
    }
    for (i, (v, spec)) in params.iter().zip(&graph.params).enumerate() {
        if v.shape() != spec.shape.as_slice() {
            let layer = graph.nodes.get(spec.node).map_or("?", |n| n.name.as_str());
            return Err(Error::internal(format!(
                "parameter {i} ('{layer}/{}') has shape {:?}, expected canonical shape {:?}",
                spec.name,
                v.shape(),
                spec.shape
            )));
        }
    }
    Ok(())
}

/// Re-checks the graph invariants the layer functions rely on, by running shape inference
/// again on every node.
fn check_graph(graph: &Graph) -> Result<()> {
    for (id, node) in graph.nodes.iter().enumerate() {
        if matches!(node.op, Op::Input) {
            if !node.inputs.is_empty() || node.shape.contains(&0) {
                return Err(internal(node, "malformed input node"));
            }
            continue;
        }
        let mut in_shapes = Vec::with_capacity(node.inputs.len());
        for &j in &node.inputs {
            if j >= id {
                return Err(internal(node, "nodes are not in topological order"));
            }
            in_shapes.push(graph.nodes[j].shape.clone());
        }
        let inferred = infer(&node.name, &node.op, &in_shapes)
            .map_err(|e| internal(node, &format!("shape inference fails: {e}")))?;
        // Shape inference checks the axis of an Activation layer's softmax, but not of a
        // softmax fused into LC/Dense/Conv.
        let fused = match &node.op {
            Op::LocallyConnected(l) => Some(&l.activation),
            Op::Dense(d) => Some(&d.activation),
            Op::Conv(c) => Some(&c.activation),
            _ => None,
        };
        if let Some(Activation::Softmax { axis }) = fused {
            let r = node.shape.len() as i64;
            if !(-r..r).contains(axis) {
                return Err(internal(
                    node,
                    &format!("softmax axis {axis} is out of range"),
                ));
            }
        }
        if inferred.shape != node.shape {
            return Err(internal(node, "shape disagrees with shape inference"));
        }
        if inferred.params.len() != node.params.len() {
            return Err(internal(
                node,
                "parameter count disagrees with shape inference",
            ));
        }
        for (spec, &pid) in inferred.params.iter().zip(&node.params) {
            let stored = graph
                .params
                .get(pid)
                .ok_or_else(|| internal(node, &format!("parameter {pid} does not exist")))?;
            if stored.name != spec.name || stored.shape != spec.shape {
                return Err(internal(node, "parameter disagrees with shape inference"));
            }
        }
    }
    for &o in &graph.outputs {
        if o >= graph.nodes.len() {
            return Err(Error::internal(format!("output node {o} does not exist")));
        }
    }
    Ok(())
}

fn internal(node: &Node, detail: &str) -> Error {
    Error::internal(format!("reference: layer '{}': {detail}", node.name))
}

fn dims(shape: &[usize]) -> String {
    shape
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ---- helpers shared by the layer files --------------------------------------------------

/// The row-major data of a standard-layout array (callers pass `as_standard_layout()`).
pub(crate) fn slice_of<S: Data<Elem = f32>>(a: &ArrayBase<S, IxDyn>) -> Result<&[f32]> {
    a.as_slice()
        .ok_or_else(|| Error::internal("reference: array is not in standard layout"))
}

/// Wraps row-major data of `shape` into an array.
pub(crate) fn from_vec(shape: &[usize], data: Vec<f32>) -> Result<ArrayD<f32>> {
    ArrayD::from_shape_vec(IxDyn(shape), data)
        .map_err(|e| Error::internal(format!("reference: building output {shape:?}: {e}")))
}

/// Row-major multi-index of flat index `flat` within `dims` (written into `out`).
pub(crate) fn unravel(mut flat: usize, dims: &[usize], out: &mut [usize]) {
    for (o, &d) in out.iter_mut().zip(dims).rev() {
        *o = flat % d;
        flat /= d;
    }
}

/// Row-major flat index of a multi-index within `dims`.
pub(crate) fn ravel(idx: &[usize], dims: &[usize]) -> usize {
    idx.iter().zip(dims).fold(0, |acc, (&i, &d)| acc * d + i)
}

/// The input element a window tap reads: on each axis `a`, input index
/// `start[a] + t[a]·dilation[a]` where `start` is the window's first (possibly negative)
/// index; the row-major flat spatial index, or `None` when the tap falls outside the input
/// (padding, or a clipped LC `same` window). Shared by every windowed layer and gradient.
pub(crate) fn tap_input(
    start: &[i64],
    t: &[usize],
    dilation: &[usize],
    in_sp: &[usize],
) -> Option<usize> {
    let mut flat = 0usize;
    for a in 0..in_sp.len() {
        let ia = start[a] + (t[a] * dilation[a]) as i64;
        if ia < 0 || ia >= in_sp[a] as i64 {
            return None;
        }
        flat = flat * in_sp[a] + ia as usize;
    }
    Some(flat)
}

/// Splits a batched shape `(B, per-sample…)` of spatial rank `rank` into
/// `(B, spatial sizes, channels)`.
pub(crate) fn split_batched(
    shape: &[usize],
    rank: usize,
    df: crate::graph::DataFormat,
) -> Result<(usize, Vec<usize>, usize)> {
    let (&b, per_sample) = shape
        .split_first()
        .ok_or_else(|| Error::internal("reference: array without a batch axis"))?;
    let (spatial, c) = crate::graph::infer::split_channels("reference", per_sample, rank, df)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok((b, spatial, c))
}

#[cfg(test)]
pub(crate) mod test_util {
    use ndarray::ArrayD;

    /// Asserts `max|a − b| ≤ tol · max(1, max|b|)` and equal shapes.
    pub fn assert_close(a: &ArrayD<f32>, b: &ArrayD<f32>, tol: f32) {
        assert_eq!(a.shape(), b.shape(), "shapes differ");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b.iter())
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            diff <= tol * scale,
            "max diff {diff} > {tol} * {scale}\n{a}\nvs\n{b}"
        );
    }

    /// Deterministic pseudo-random values in [-1, 1).
    pub fn pseudo_random(shape: &[usize], seed: u64) -> ArrayD<f32> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ArrayD::from_shape_simple_fn(ndarray::IxDyn(shape), || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / ((1u64 << 23) as f32) - 1.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::forward;
    use super::lc::tests::{lc_op, one_layer};
    use crate::error::Error;
    use crate::graph::*;
    use ndarray::{array, ArrayD, IxDyn};

    fn relu() -> Activation {
        Activation::Relu {
            alpha: 0.0,
            max_value: None,
            threshold: 0.0,
        }
    }

    #[test]
    fn bad_inputs_are_input_errors_and_bad_params_internal() {
        let g = one_layer(
            &[4, 2],
            Op::LocallyConnected(lc_op(1, 2, &[2], DataFormat::ChannelsLast)),
        );
        let k = ArrayD::zeros(IxDyn(&[3, 4, 2]));
        let b = ArrayD::zeros(IxDyn(&[3, 2]));
        let params = [k.clone(), b.clone()];
        let x = ArrayD::zeros(IxDyn(&[2, 4, 2]));
        assert!(forward(&g, &params, std::slice::from_ref(&x)).is_ok());
        let is_input = |r: crate::Result<Vec<ArrayD<f32>>>| matches!(r, Err(Error::Input { .. }));
        assert!(is_input(forward(&g, &params, &[])));
        assert!(is_input(forward(&g, &params, &[x.clone(), x.clone()])));
        assert!(is_input(forward(
            &g,
            &params,
            &[ArrayD::zeros(IxDyn(&[2, 4, 3]))]
        )));
        assert!(is_input(forward(
            &g,
            &params,
            &[ArrayD::zeros(IxDyn(&[4, 2]))]
        )));
        assert!(is_input(forward(
            &g,
            &params,
            &[ArrayD::zeros(IxDyn(&[0, 4, 2]))]
        )));
        let r = forward(&g, std::slice::from_ref(&k), std::slice::from_ref(&x));
        assert!(r.is_err_and(|e| e.is_internal()));
        let r = forward(
            &g,
            &[k, ArrayD::zeros(IxDyn(&[2, 3]))],
            std::slice::from_ref(&x),
        );
        assert!(r.is_err_and(|e| e.is_internal()));
        // A graph whose node shape was tampered with is caught before anything runs.
        let mut bad = g.clone();
        bad.nodes[1].shape = vec![3, 3];
        assert!(forward(&bad, &params, std::slice::from_ref(&x)).is_err_and(|e| e.is_internal()));
        // A fused softmax with an impossible axis is refused by shape inference, as a
        // user error naming the axis (a structural fuzz finding: it reached the
        // reference as an internal error).
        let mut op = lc_op(1, 2, &[2], DataFormat::ChannelsLast);
        op.activation = Activation::Softmax { axis: 2 };
        let mut g = Graph::new("t");
        let input = g.add_input("x", vec![4, 2]).unwrap();
        let r = g.add("layer", Op::LocallyConnected(op), &[input]);
        assert!(
            matches!(&r, Err(Error::Shape { detail, .. }) if detail.contains("axis 2")),
            "{r:?}"
        );
    }

    #[test]
    fn two_inputs_must_share_the_batch_size() {
        let mut g = Graph::new("t");
        let a = g.add_input("a", vec![2]).unwrap();
        let b = g.add_input("b", vec![2]).unwrap();
        let y = g.add("add", Op::Merge(MergeKind::Add), &[a, b]).unwrap();
        g.outputs.push(y);
        let r = forward(
            &g,
            &[],
            &[ArrayD::zeros(IxDyn(&[1, 2])), ArrayD::zeros(IxDyn(&[2, 2]))],
        );
        assert!(matches!(r, Err(Error::Input { .. })));
    }

    #[test]
    fn branching_graph_with_several_outputs() {
        // x → relu → a;  x → dense(−x) → b;  a + b;  outputs: [sum, a, x].
        let mut g = Graph::new("t");
        let x = g.add_input("x", vec![3]).unwrap();
        let a = g.add("a", Op::Activation(relu()), &[x]).unwrap();
        let dense = Dense {
            units: 3,
            activation: Activation::Linear,
            use_bias: false,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        };
        let b = g.add("b", Op::Dense(dense), &[x]).unwrap();
        let d = g
            .add(
                "drop",
                Op::Dropout {
                    rate: 0.5,
                    spatial: None,
                    data_format: DataFormat::ChannelsLast,
                },
                &[b],
            )
            .unwrap();
        let s = g.add("sum", Op::Merge(MergeKind::Add), &[a, d]).unwrap();
        g.outputs = vec![s, a, x];
        let minus_eye =
            ArrayD::from_shape_fn(IxDyn(&[3, 3]), |ix| if ix[0] == ix[1] { -1.0 } else { 0.0 });
        let xv = array![[1.0f32, -2.0, 3.0], [-4.0, 5.0, 0.5]].into_dyn();
        let ys = forward(&g, &[minus_eye], std::slice::from_ref(&xv)).unwrap();
        assert_eq!(ys.len(), 3);
        // relu(x) − x = max(−x, 0)
        assert_eq!(
            ys[0],
            array![[0.0f32, 2.0, 0.0], [4.0, 0.0, 0.0]].into_dyn()
        );
        assert_eq!(
            ys[1],
            array![[1.0f32, 0.0, 3.0], [0.0, 5.0, 0.5]].into_dyn()
        );
        assert_eq!(ys[2], xv);
    }

    #[test]
    fn non_standard_layout_inputs_are_accepted() {
        let g = one_layer(
            &[2, 3],
            Op::Flatten {
                data_format: DataFormat::ChannelsLast,
            },
        );
        let x = ArrayD::from_shape_fn(IxDyn(&[1, 3, 2]), |ix| (10 * ix[1] + ix[2]) as f32);
        let xt = x.permuted_axes(IxDyn(&[0, 2, 1])); // logical (1, 2, 3), column-major data
        let y = forward(&g, &[], &[xt]).unwrap().remove(0);
        assert_eq!(y, array![[0.0f32, 10.0, 20.0, 1.0, 11.0, 21.0]].into_dyn());
    }
}
