//! The reference backward pass: reverse-mode gradients of `sum(outputs[0] · dy)` through
//! the naive forward layers, in inference mode (Dropout is the identity, BatchNorm uses
//! its moving statistics, which are constants); [`super::train`] runs the same reverse
//! sweep after a training-mode forward pass (batch statistics, Dropout masks).
//!
//! [`gradients`] runs the forward pass keeping every node's output, then visits the nodes
//! in reverse topological order, each turning the gradient of its output into gradients
//! of its inputs and parameters; a node that feeds several consumers accumulates their
//! contributions. Layers with a fused activation recompute their pre-activation `z` (the
//! same layer with a linear activation) and back-propagate `dz = act'(z) ⊙ dy` (or the
//! softmax Jacobian) into the layer's own backward pass. Parameter gradients are in
//! canonical layout; [`crate::graph::layout::canonical_to_keras`] maps them to the Keras
//! layout, since gradients are linear in the weights.

use super::activation_grad::activation_backward;
use super::train::Recorded;
use super::{
    check_graph, check_inputs, check_params, conv, conv_grad, dense, dense_grad, internal, lc,
    lc_grad, merge_grad, norm_grad, param, pool_grad, run_node, shape_grad,
};
use crate::error::{Error, Result};
use crate::graph::{Activation, Graph, Node, NodeId, Op, ParamId};
use ndarray::{ArrayD, IxDyn, Zip};

/// `(d inputs, d params)`: one gradient per graph input, then one per parameter.
pub type Gradients = (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>);

/// `(dx, dkernel, dbias)` of a layer with a kernel and an optional bias.
pub(super) type KernelGrads = (ArrayD<f32>, ArrayD<f32>, Option<ArrayD<f32>>);

/// Gradients of `sum(outputs[0] · dy)` (inference mode: Dropout identity, BatchNorm on
/// moving statistics) with respect to every input and every parameter (canonical layout;
/// non-trainable parameters such as BN moving statistics get zero gradients).
///
/// Returns `(d inputs, d params)`: one array per graph input, shaped like that input, and
/// one per `graph.params` entry, shaped like its canonical value. Inputs and parameters
/// that do not influence the first output get zeros.
///
/// Errors: [`Error::Input`] when the inputs do not match the graph (as in
/// [`super::forward`]) or `dy` does not have the shape of the first output `(B, out…)`;
/// [`Error::Internal`] when the parameters do not match `graph.params` or the graph
/// breaks its invariants.
pub fn gradients(
    graph: &Graph,
    params: &[ArrayD<f32>],
    inputs: &[ArrayD<f32>],
    dy: &ArrayD<f32>,
) -> Result<Gradients> {
    let batch = check_inputs(graph, inputs)?;
    check_params(graph, params)?;
    check_graph(graph)?;
    let values = forward_values(graph, batch, inputs, &mut |_, node, xs| {
        run_node(graph, params, node, xs)
    })?;
    reverse(graph, params, &values, &[], dy, &[])
}

/// How [`forward_values`] computes a non-input node: `(id, node, its inputs' values)` →
/// its output.
pub(super) type RunNode<'r> = dyn FnMut(NodeId, &Node, &[&ArrayD<f32>]) -> Result<ArrayD<f32>> + 'r;

/// Runs the forward pass on checked inputs, keeping every node's output: input nodes take
/// their array, every other node `run(id, node, its inputs' values)`, whose result must
/// have the shape `(batch, node.shape…)`.
pub(super) fn forward_values(
    graph: &Graph,
    batch: usize,
    inputs: &[ArrayD<f32>],
    run: &mut RunNode<'_>,
) -> Result<Vec<ArrayD<f32>>> {
    let mut values: Vec<ArrayD<f32>> = Vec::with_capacity(graph.nodes.len());
    for (id, node) in graph.nodes.iter().enumerate() {
        let y = if matches!(node.op, Op::Input) {
            let pos = graph
                .inputs
                .iter()
                .position(|&i| i == id)
                .ok_or_else(|| internal(node, "input node is not listed in graph.inputs"))?;
            inputs
                .get(pos)
                .map(|x| x.as_standard_layout().into_owned())
                .ok_or_else(|| internal(node, "missing input array"))?
        } else {
            let xs = node_inputs(&values, node)?;
            run(id, node, &xs)?
        };
        let mut want = vec![batch];
        want.extend_from_slice(&node.shape);
        if y.shape() != want.as_slice() {
            return Err(internal(
                node,
                &format!("computed shape {:?}, expected {want:?}", y.shape()),
            ));
        }
        values.push(y);
    }
    Ok(values)
}

/// The reverse sweep from `dy` (the gradient of the first output) given every node's
/// forward value; `recorded[id]` (missing entries: nothing) is what a training-mode
/// forward pass kept for node `id` (batch statistics, a Dropout mask). Returns
/// `(d inputs, d params)` as [`gradients`]. `extra` adds further gradients of node
/// outputs (activity-regularization penalties, see [`super::activity`]): each is summed
/// into its node's output gradient before the consumers' contributions.
pub(super) fn reverse(
    graph: &Graph,
    params: &[ArrayD<f32>],
    values: &[ArrayD<f32>],
    recorded: &[Recorded],
    dy: &ArrayD<f32>,
    extra: &[(NodeId, ArrayD<f32>)],
) -> Result<Gradients> {
    let &out = graph.outputs.first().ok_or_else(|| Error::Input {
        detail: "the model has no outputs".into(),
    })?;
    let out_value = values
        .get(out)
        .ok_or_else(|| Error::internal(format!("output node {out} was not computed")))?;
    if dy.shape() != out_value.shape() {
        return Err(Error::Input {
            detail: format!(
                "dy has shape {:?}, expected the first output's shape {:?}",
                dy.shape(),
                out_value.shape()
            ),
        });
    }

    let mut grads: Vec<Option<ArrayD<f32>>> = vec![None; graph.nodes.len()];
    for (id, g) in extra {
        let node = graph
            .nodes
            .get(*id)
            .ok_or_else(|| Error::internal(format!("extra gradient of unknown node {id}")))?;
        if values.get(*id).map(|v| v.shape()) != Some(g.shape()) {
            return Err(internal(node, "extra output gradient has a wrong shape"));
        }
        accumulate(&mut grads[*id], g.clone(), node)?;
    }
    accumulate(
        &mut grads[out],
        dy.as_standard_layout().into_owned(),
        &graph.nodes[out],
    )?;
    let mut dparams: Vec<ArrayD<f32>> = graph
        .params
        .iter()
        .map(|s| ArrayD::zeros(IxDyn(&s.shape)))
        .collect();
    for id in (0..graph.nodes.len()).rev() {
        let node = &graph.nodes[id];
        if matches!(node.op, Op::Input) {
            continue;
        }
        let Some(g) = grads[id].take() else { continue };
        let xs = node_inputs(values, node)?;
        let rec = recorded.get(id).unwrap_or(&Recorded::Nothing);
        let (dxs, dps) = node_backward(graph, params, node, &xs, &values[id], rec, &g)?;
        if dxs.len() != node.inputs.len() {
            return Err(internal(
                node,
                "backward returned the wrong number of inputs",
            ));
        }
        for (&j, dx) in node.inputs.iter().zip(dxs) {
            accumulate(&mut grads[j], dx, node)?;
        }
        for (name, dp) in dps {
            let pid = param_id(graph, node, name)?;
            if dparams[pid].shape() != dp.shape() {
                return Err(internal(
                    node,
                    &format!("gradient of '{name}' has a wrong shape"),
                ));
            }
            if graph.params[pid].trainable {
                dparams[pid] = dp;
            }
        }
    }

    let mut dinputs = Vec::with_capacity(graph.inputs.len());
    for &id in &graph.inputs {
        let g = match grads.get_mut(id).and_then(Option::take) {
            Some(g) => g,
            None => values
                .get(id)
                .map(|x| ArrayD::zeros(x.raw_dim()))
                .ok_or_else(|| Error::internal(format!("input node {id} was not computed")))?,
        };
        dinputs.push(g);
    }
    Ok((dinputs, dparams))
}

/// The stored outputs of a node's inputs.
fn node_inputs<'a>(values: &'a [ArrayD<f32>], node: &Node) -> Result<Vec<&'a ArrayD<f32>>> {
    node.inputs
        .iter()
        .map(|&j| {
            values
                .get(j)
                .ok_or_else(|| internal(node, &format!("input {j} is not available")))
        })
        .collect()
}

/// Adds `dx` into a gradient slot.
fn accumulate(slot: &mut Option<ArrayD<f32>>, dx: ArrayD<f32>, node: &Node) -> Result<()> {
    match slot {
        None => *slot = Some(dx),
        Some(acc) => {
            if acc.shape() != dx.shape() {
                return Err(internal(node, "input gradient has a wrong shape"));
            }
            Zip::from(acc).and(&dx).for_each(|a, &b| *a += b);
        }
    }
    Ok(())
}

/// The id of the parameter called `name` of `node`.
pub(super) fn param_id(graph: &Graph, node: &Node, name: &str) -> Result<ParamId> {
    node.params
        .iter()
        .copied()
        .find(|&id| graph.params.get(id).is_some_and(|s| s.name == name))
        .ok_or_else(|| internal(node, &format!("has no parameter '{name}'")))
}

/// Named parameter gradients of one node.
type ParamGrads = Vec<(&'static str, ArrayD<f32>)>;

/// Backward pass of one node: gradients of its inputs (in input order) and of its
/// parameters (by name), given its inputs `xs`, its output `y`, what a training-mode
/// forward pass recorded for it (`rec`) and the gradient `g` of its output.
fn node_backward(
    graph: &Graph,
    params: &[ArrayD<f32>],
    node: &Node,
    xs: &[&ArrayD<f32>],
    y: &ArrayD<f32>,
    rec: &Recorded,
    g: &ArrayD<f32>,
) -> Result<(Vec<ArrayD<f32>>, ParamGrads)> {
    let one = || match xs {
        [x] => Ok(*x),
        _ => Err(internal(node, "expects exactly one input")),
    };
    let p = |name: &str| param(graph, params, node, name);
    // Kernel-and-bias layers: (dx, dkernel, dbias) → the node's gradients.
    let kb = |(dx, dk, db): KernelGrads| {
        let mut ps: ParamGrads = vec![("kernel", dk)];
        if let Some(db) = db {
            ps.push(("bias", db));
        }
        (vec![dx], ps)
    };
    Ok(match &node.op {
        Op::Input => (Vec::new(), Vec::new()),
        Op::LocallyConnected(l) => {
            let x = one()?;
            let k = p("kernel")?;
            let bias = if l.use_bias { Some(p("bias")?) } else { None };
            let dz = fused_dz(&l.activation, y, g, || {
                let mut lin = l.clone();
                lin.activation = Activation::Linear;
                lc::forward(&lin, x, k, bias)
            })?;
            kb(lc_grad::backward(l, x, k, &dz)?)
        }
        Op::Dense(d) => {
            let x = one()?;
            let k = p("kernel")?;
            let bias = if d.use_bias { Some(p("bias")?) } else { None };
            let dz = fused_dz(&d.activation, y, g, || {
                let mut lin = d.clone();
                lin.activation = Activation::Linear;
                dense::forward(&lin, x, k, bias)
            })?;
            kb(dense_grad::backward(d, x, k, &dz)?)
        }
        Op::Conv(c) => {
            let x = one()?;
            let k = p("kernel")?;
            let bias = if c.use_bias { Some(p("bias")?) } else { None };
            let dz = fused_dz(&c.activation, y, g, || {
                let mut lin = c.clone();
                lin.activation = Activation::Linear;
                conv::forward(&lin, x, k, bias)
            })?;
            kb(conv_grad::backward(c, x, k, &dz)?)
        }
        Op::Pool(pl) => (vec![pool_grad::pool_backward(pl, one()?, g)?], Vec::new()),
        Op::GlobalPool {
            kind,
            rank,
            data_format,
            ..
        } => (
            vec![pool_grad::global_pool_backward(
                *kind,
                *rank,
                *data_format,
                one()?,
                g,
            )?],
            Vec::new(),
        ),
        Op::ZeroPadding {
            rank,
            pads,
            data_format,
        } => (
            vec![shape_grad::zero_padding_backward(
                *rank,
                pads,
                *data_format,
                g,
            )?],
            Vec::new(),
        ),
        Op::Cropping {
            rank,
            crops,
            data_format,
        } => (
            vec![shape_grad::cropping_backward(
                *rank,
                crops,
                *data_format,
                g,
            )?],
            Vec::new(),
        ),
        Op::Flatten { data_format } => (
            vec![shape_grad::flatten_backward(
                *data_format,
                one()?.shape(),
                g,
            )?],
            Vec::new(),
        ),
        Op::Reshape { .. } => (vec![shape_grad::reshape_to(one()?.shape(), g)?], Vec::new()),
        Op::Permute { dims } => (vec![shape_grad::permute_backward(dims, g)?], Vec::new()),
        Op::Dropout { .. } => match rec {
            // The forward pass multiplied by the mask: so does the backward pass.
            Recorded::Mask(mask) if mask.shape() == g.shape() => (vec![g * mask], Vec::new()),
            Recorded::Mask(_) => return Err(internal(node, "dropout mask has a wrong shape")),
            _ => (vec![g.clone()], Vec::new()),
        },
        Op::BatchNorm(bn) => {
            let gamma = if bn.scale { Some(p("gamma")?) } else { None };
            let (dx, dgamma, dbeta) = match rec {
                Recorded::Moments(m) => norm_grad::train_backward(bn, one()?, gamma, m, g)?,
                _ => norm_grad::backward(
                    bn,
                    one()?,
                    gamma,
                    p("moving_mean")?,
                    p("moving_variance")?,
                    g,
                )?,
            };
            let mut ps: ParamGrads = Vec::new();
            if bn.scale {
                ps.push(("gamma", dgamma));
            }
            if bn.center {
                ps.push(("beta", dbeta));
            }
            (vec![dx], ps)
        }
        Op::Activation(a) => (vec![activation_backward(a, one()?, y, g)?], Vec::new()),
        Op::Merge(kind) => (merge_grad::merge_backward(*kind, xs, g)?, Vec::new()),
        Op::Concatenate { axis } => (merge_grad::concatenate_backward(*axis, xs, g)?, Vec::new()),
    })
}

/// `dz` of a layer with a fused activation: `g` itself for a linear activation, otherwise
/// the activation's backward pass at the recomputed pre-activation `z`.
fn fused_dz(
    a: &Activation,
    y: &ArrayD<f32>,
    g: &ArrayD<f32>,
    pre_activation: impl FnOnce() -> Result<ArrayD<f32>>,
) -> Result<ArrayD<f32>> {
    if matches!(a, Activation::Linear) {
        return Ok(g.clone());
    }
    let z = pre_activation()?;
    activation_backward(a, &z, y, g)
}
