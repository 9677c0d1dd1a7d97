//! Gradient programs: the forward pass keeping what the backward pass reads, then
//! reverse-mode kernels giving the gradient of `sum(y₀ · dy)` — in inference mode
//! (Dropout is the identity, BatchNormalization uses its moving statistics; `lcjit grad`)
//! or in training mode ([`Mode::Training`]: host-drawn Dropout masks, batch statistics;
//! `fit`).
//!
//! [`lower_gradients`] lowers the forward pass node by node as [`super::lower_forward`]
//! does, except that a layer with a fused non-linear activation is lowered as the linear
//! layer writing its pre-activation `z` and a separate activation kernel writing `y`, so
//! the backward pass can form `dz = act'(z) ⊙ dy`. It then visits the nodes in reverse
//! topological order; each layer's `backward` function (next to its `forward`, one file
//! per layer kind) reads the gradient of its output and writes gradients of its inputs
//! and parameters.
//!
//! Invariants every backward lowering keeps:
//! - a tensor obtained from [`Cx::grad_input`] is written completely (zeros included) by
//!   the kernels the lowering appends, and nothing else writes it;
//! - a parameter-gradient buffer from [`Cx::dparam`] is written completely;
//! - parallel loops never run over the batch when they reduce over it, so that the sum
//!   order, and the bits, do not depend on the thread count.
//!
//! A node whose output feeds several consumers gets one gradient tensor per consumer;
//! they are summed (in consumer order, reversed) by one kernel when the node is reached.
//! Parameters that receive no gradient (non-trainable ones, or unused) are zero-filled.
//!
//! The result is two modules over one buffer table: `forward` (phase 1, writes the
//! outputs) and `backward` (phase 2, reads the cotangent). A training step runs phase 1,
//! computes the loss gradient on the host, writes it to the cotangent buffer and runs
//! phase 2 over the same buffers.

use super::in_place::InPlaceRule;
use super::{
    activation, dense, forward_node, lc, merge, norm_train, plan, shape, tensor_buf, Cx, TensorId,
    TENSOR_BASE,
};
use crate::error::{Error, Result};
use crate::graph::{Activation, NodeId, Op};
use crate::loop_ir::{
    for_, Affine, BinOp, BufId, BufRole, Buffer, Expr, KernelBuilder, LoopKind, Module, Stmt,
};

/// A lowered gradient program (see the module docs).
#[derive(Clone, Debug)]
pub struct LoweredGrad {
    /// Phase 1: the forward pass (all buffers of the program).
    pub forward: Module,
    /// Phase 2: the backward pass (the same buffers).
    pub backward: Module,
    /// Buffer of each graph input.
    pub input_bufs: Vec<BufId>,
    /// Buffer of each graph output.
    pub output_bufs: Vec<BufId>,
    /// Buffer of each graph parameter.
    pub param_bufs: Vec<BufId>,
    /// The cotangent of output 0 (read by phase 2).
    pub cotangent_buf: BufId,
    /// Gradient of each graph input; `None` in training mode for an input no layer
    /// gives a gradient (it is zero: rather than a kernel filling a buffer with zeros
    /// each step that the run then copies out, the runtime returns zeroed arrays).
    pub dinput_bufs: Vec<Option<BufId>>,
    /// Gradient of each graph parameter (canonical layout).
    pub dparam_bufs: Vec<BufId>,
    /// Training mode: `(node, mask buffer)` of each Dropout with a rate above 0, in node
    /// order (the mask of the `k`-th is `BufRole::Aux(k)`).
    pub dropout_masks: Vec<(NodeId, BufId)>,
    /// Training mode: `(node, batch mean, batch variance)` of each BatchNorm, in node
    /// order, written by phase 1.
    pub batch_stats: Vec<(NodeId, BufId, BufId)>,
    /// Training mode: each activity-regularized layer, in node order (see
    /// [`ActivityBufs`]).
    pub activity: Vec<ActivityBufs>,
    /// Per graph parameter: whether the backward pass updates it in place (see
    /// [`super::in_place`]; its gradient buffer is then empty).
    pub updated: Vec<bool>,
    /// The hyper buffer of the in-place updates, if any.
    pub hyper_buf: Option<BufId>,
    /// The mode the program was lowered in.
    pub mode: Mode,
    /// Batch size the program is specialised to.
    pub batch: usize,
}

/// How a training program exposes an activity-regularized layer to the host: phase 1
/// leaves the layer's post-activation output in `value` (its own buffer, role
/// [`BufRole::Kept`], or the model output's); the host computes the penalty's gradient
/// and binds it as cotangent `cotangent_index`, which phase 2 sums into the layer's
/// output gradient with the consumers' contributions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActivityBufs {
    /// The layer.
    pub node: NodeId,
    /// Its forward value after phase 1.
    pub value: BufId,
    /// The cotangent role index (`BufRole::Cotangent(cotangent_index)`, 1 and up).
    pub cotangent_index: usize,
}

impl Cx<'_> {
    /// The forward value of `node`'s output (after its activation).
    pub fn value(&self, node: NodeId) -> Result<BufId> {
        self.node_tensor[node]
            .map(tensor_buf)
            .ok_or_else(|| Error::internal(format!("node {node} has no forward value")))
    }

    /// A fresh tensor for the gradient contribution of `node` to its input `k`; the
    /// caller's kernels must write all of it.
    pub fn grad_input(&mut self, node: NodeId, k: usize) -> Result<BufId> {
        let src = self.input_node(node, k)?;
        let len = self.batch * self.graph.nodes[src].shape.iter().product::<usize>();
        self.tensor_len.push(len);
        let t = self.tensor_len.len() - 1;
        self.grad_parts[src].push(t);
        Ok(tensor_buf(t))
    }

    /// Whether the gradient with respect to `node`'s input `k` is wanted. Only layers
    /// whose `dx` is expensive (LC, Conv, Dense) ask; the others always provide it.
    pub fn wants_grad(&self, node: NodeId, k: usize) -> bool {
        let Ok(src) = self.input_node(node, k) else {
            return true;
        };
        !(self.skip_input_grads && matches!(self.graph.nodes[src].op, Op::Input))
    }

    /// Passes `dy` (a tensor buffer) unchanged as the gradient contribution of `node` to
    /// its input `k` (layers that only reinterpret memory).
    pub fn grad_alias(&mut self, node: NodeId, k: usize, dy: BufId) -> Result<()> {
        let src = self.input_node(node, k)?;
        if dy < TENSOR_BASE {
            return Err(Error::internal("grad_alias of a non-tensor buffer"));
        }
        self.grad_parts[src].push((dy - TENSOR_BASE) as TensorId);
        Ok(())
    }

    /// The buffer for the gradient of `node`'s parameter `name`; the caller's kernels
    /// must write all of it.
    pub fn dparam(&mut self, node: NodeId, name: &str) -> Result<BufId> {
        let p = self.param_id(node, name)?;
        let slot = self
            .dparam_bufs
            .get_mut(p)
            .ok_or_else(|| Error::internal("dparam outside a gradient program"))?;
        slot.1 = true;
        Ok(slot.0)
    }

    /// The id of `node`'s parameter `name`.
    pub(super) fn param_id(&self, node: NodeId, name: &str) -> Result<crate::graph::ParamId> {
        self.graph.nodes[node]
            .params
            .iter()
            .copied()
            .find(|&p| self.graph.params[p].name == name)
            .ok_or_else(|| Error::internal(format!("node {node} has no parameter {name}")))
    }

    fn input_node(&self, node: NodeId, k: usize) -> Result<NodeId> {
        self.graph.nodes[node]
            .inputs
            .get(k)
            .copied()
            .ok_or_else(|| Error::internal(format!("node {node} has no input {k}")))
    }

    /// The gradient of `node`'s output: its one contribution, or the sum of several
    /// (one kernel), or `None` when no gradient reaches it.
    fn finish_grad(&mut self, node: NodeId) -> Option<BufId> {
        let parts = std::mem::take(&mut self.grad_parts[node]);
        match parts.as_slice() {
            [] => None,
            [t] => Some(tensor_buf(*t)),
            _ => {
                let len = self.tensor_len[parts[0]];
                let dst = self.temp(len);
                let srcs: Vec<BufId> = parts.iter().map(|&t| tensor_buf(t)).collect();
                let name = format!("{}.grad_sum", self.graph.nodes[node].name);
                sum_kernel(self, &name, self.batch, len / self.batch, &srcs, dst);
                Some(dst)
            }
        }
    }
}

/// Appends `dst = Σ srcs` (zeros when `srcs` is empty) over `rows × row_len` elements,
/// rows in parallel.
pub fn sum_kernel(
    cx: &mut Cx,
    name: &str,
    rows: usize,
    row_len: usize,
    srcs: &[BufId],
    dst: BufId,
) {
    let mut kb = KernelBuilder::new(name);
    let r = kb.var("r");
    let e = kb.var("e");
    let idx = Affine::var(r).scale(row_len as i64).plus_term(e, 1);
    let body = if srcs.is_empty() {
        vec![Stmt::Store {
            buf: dst,
            index: idx,
            value: Expr::Const(0.0),
        }]
    } else {
        // Left to right in chunks, so a tensor with thousands of consumers gives no deep
        // expression.
        super::merge::fold_chain(dst, &idx, BinOp::Add, srcs, |v| v)
    };
    let kind = if row_len.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let nest = for_(
        r,
        rows as u64,
        LoopKind::Parallel,
        vec![for_(e, row_len as u64, kind, body)],
    );
    cx.push(kb.finish(vec![nest]), srcs, &[dst]);
}

/// The layer with its fused activation replaced by `linear`, and that activation, for a
/// layer whose activation is not linear.
fn split_activation(op: &Op) -> Option<(Op, Activation)> {
    let mut linear = op.clone();
    let slot = match &mut linear {
        Op::LocallyConnected(l) => &mut l.activation,
        Op::Dense(d) => &mut d.activation,
        Op::Conv(c) => &mut c.activation,
        _ => return None,
    };
    if *slot == Activation::Linear {
        return None;
    }
    let act = std::mem::replace(slot, Activation::Linear);
    Some((linear, act))
}

/// Lowers the gradient program of `graph` for a batch of `batch` rows (see the module
/// docs).
pub fn lower_gradients(graph: &crate::graph::Graph, batch: usize) -> Result<LoweredGrad> {
    lower_gradients_in(graph, batch, Mode::Inference)
}

/// Which behaviour layers with a training mode have in a gradient program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Dropout is the identity, BatchNorm uses its moving statistics (`lcjit grad`).
    Inference,
    /// A training step: Dropout multiplies by host-drawn masks (`Aux` buffers, one per
    /// Dropout with a rate above 0, in node order), BatchNorm normalizes with batch
    /// statistics and leaves them in [`LoweredGrad::batch_stats`]; the gradients of the
    /// model inputs are zeros unless a cheap layer provides them (LC, Conv and Dense
    /// layers reading a model input skip their `dx`: nothing learns it).
    Training,
}

/// [`lower_gradients`] in either [`Mode`].
pub fn lower_gradients_in(
    graph: &crate::graph::Graph,
    batch: usize,
    mode: Mode,
) -> Result<LoweredGrad> {
    lower_gradients_for(graph, batch, mode, None)
}

/// [`lower_gradients_in`] for a target with the SIMD tier `tier` (see
/// [`super::lower_forward_for`]): same results, wider register tiles.
pub fn lower_gradients_for(
    graph: &crate::graph::Graph,
    batch: usize,
    mode: Mode,
    tier: Option<crate::loop_ir::micro::Tier>,
) -> Result<LoweredGrad> {
    lower_gradients_with(graph, batch, mode, tier, None, None)
}

/// [`lower_gradients_for`] with the LC forward schedule families autotuning chose
/// ([`super::Target::plans`]; the same bits).
pub fn lower_gradients_planned(
    graph: &crate::graph::Graph,
    batch: usize,
    mode: Mode,
    tier: Option<crate::loop_ir::micro::Tier>,
    plans: Option<std::sync::Arc<super::schedule::lc::Plans>>,
) -> Result<LoweredGrad> {
    lower_gradients_with(graph, batch, mode, tier, None, plans)
}

/// The training-mode program of [`lower_gradients_for`] whose backward kernels also
/// apply `rule` to the parameters it accepts, where the kernel allows it (see
/// [`super::in_place`]; [`LoweredGrad::updated`] tells which).
pub fn lower_training_step(
    graph: &crate::graph::Graph,
    batch: usize,
    tier: Option<crate::loop_ir::micro::Tier>,
    rule: &dyn InPlaceRule,
) -> Result<LoweredGrad> {
    lower_gradients_with(graph, batch, Mode::Training, tier, Some(rule), None)
}

/// [`lower_training_step`] with autotuned LC forward schedule families (see
/// [`lower_gradients_planned`]).
pub fn lower_training_step_planned(
    graph: &crate::graph::Graph,
    batch: usize,
    tier: Option<crate::loop_ir::micro::Tier>,
    rule: &dyn InPlaceRule,
    plans: Option<std::sync::Arc<super::schedule::lc::Plans>>,
) -> Result<LoweredGrad> {
    lower_gradients_with(graph, batch, Mode::Training, tier, Some(rule), plans)
}

fn lower_gradients_with(
    graph: &crate::graph::Graph,
    batch: usize,
    mode: Mode,
    tier: Option<crate::loop_ir::micro::Tier>,
    in_place: Option<&dyn InPlaceRule>,
    plans: Option<std::sync::Arc<super::schedule::lc::Plans>>,
) -> Result<LoweredGrad> {
    let mut cx = Cx::new(graph, batch)?;
    cx.tier = tier;
    cx.plans = plans;
    cx.in_place = in_place;
    cx.skip_input_grads = mode == Mode::Training;
    for (i, p) in graph.params.iter().enumerate() {
        cx.buffers.push(Buffer {
            name: format!("d.{}.{}", graph.nodes[p.node].name, p.name),
            len: p.len(),
            role: BufRole::GradParam(i),
            dtype: crate::loop_ir::Dtype::F32,
        });
        cx.dparam_bufs
            .push(((cx.buffers.len() - 1) as BufId, false));
    }
    // Phase 1.
    let mut dropout_masks = Vec::new();
    let mut batch_stats = Vec::new();
    let mut preact: Vec<Option<(BufId, Activation)>> = vec![None; graph.nodes.len()];
    for (id, slot) in preact.iter_mut().enumerate() {
        match split_activation(&graph.nodes[id].op) {
            Some((linear, act)) => {
                super::mixed::with_policy(&mut cx, id, true, |cx| lower_linear(cx, id, &linear))?;
                let z = cx.value(id)?;
                let y = cx.output(id);
                let n = &graph.nodes[id];
                let name = format!("{}.activation", n.name);
                match super::mixed::round_op(n.policy.compute) {
                    // Mixed precision: the activation's result is rounded too.
                    Some(op) => {
                        let a = cx.temp(cot_len_of(&cx, id));
                        activation::layer_kernel(&mut cx, &name, &act, &n.shape, z, a);
                        let len = cot_len_of(&cx, id);
                        super::mixed::round_into(&mut cx, a, y, len, op, &format!("{name}.round"));
                    }
                    _ => activation::layer_kernel(&mut cx, &name, &act, &n.shape, z, y),
                }
                *slot = Some((z, act));
            }
            None => match (&graph.nodes[id].op, mode) {
                (Op::Dropout { rate, .. }, Mode::Training) if *rate > 0.0 => {
                    let mask = shape::dropout_forward(&mut cx, id, dropout_masks.len())?;
                    dropout_masks.push((id, mask));
                }
                (Op::BatchNorm(bn), Mode::Training) if !graph.is_frozen(id) => {
                    let (mean, var) = norm_train::forward(&mut cx, id, bn)?;
                    batch_stats.push((id, mean, var));
                }
                _ => super::mixed::with_policy(&mut cx, id, true, |cx| forward_node(cx, id))?,
            },
        }
    }
    cx.finish_forward()?;
    let n_forward = cx.kernels.len();
    // Phase 2.
    let &out = graph.outputs.first().ok_or_else(|| Error::Input {
        detail: "the model has no outputs".into(),
    })?;
    let cot_len = batch * graph.nodes[out].shape.iter().product::<usize>();
    let cot = cx.temp(cot_len);
    cx.grad_parts[out].push((cot - TENSOR_BASE) as TensorId);
    let activity_parts = if mode == Mode::Training {
        activity_cotangents(&mut cx)?
    } else {
        Vec::new()
    };
    for id in (0..graph.nodes.len()).rev() {
        let node = &graph.nodes[id];
        if matches!(node.op, Op::Input) {
            continue;
        }
        let Some(mut dy) = cx.finish_grad(id) else {
            continue;
        };
        let mixed = super::mixed::backward_round(&cx, id);
        if let Some(op) = mixed {
            // The cast of the gradient arriving from a consumer (idempotent when the
            // consumer computes in the same dtype).
            let len = cot_len_of(&cx, id);
            dy = super::mixed::rounded_copy(&mut cx, dy, len, op, &node.name);
        }
        if let Some((z, act)) = &preact[id] {
            let dz = cx.temp(cot_len_of(&cx, id));
            let y = cx.value(id)?;
            activation::backward_kernel(&mut cx, &node.name, act, &node.shape, *z, y, dy, dz);
            dy = dz;
            if let Some(op) = mixed {
                let len = cot_len_of(&cx, id);
                super::mixed::round_into(
                    &mut cx,
                    dz,
                    dz,
                    len,
                    op,
                    &format!("{}.dz.round", node.name),
                );
            }
        }
        match &node.op {
            Op::Dropout { .. } if !cx.saved[id].is_empty() => {
                shape::dropout_backward(&mut cx, id, dy)?
            }
            Op::BatchNorm(bn) if !cx.saved[id].is_empty() => {
                norm_train::backward(&mut cx, id, bn, dy)?
            }
            _ => super::mixed::with_policy_dz(&mut cx, id, false, Some(dy), |cx| {
                backward_node(cx, id, dy)
            })?,
        }
    }
    // Gradients of the inputs: their own buffers (a copy when the tensor is shared).
    let mut extra = vec![((cot - TENSOR_BASE) as TensorId, BufRole::Cotangent(0))];
    // Activity penalties: the value the host reads (unless it is a model output) and
    // the cotangent it binds.
    let mut activity_slots = Vec::new(); // (node, index in `extra` or output k, cot index)
    for (k, &(id, value, c)) in activity_parts.iter().enumerate() {
        let output = graph
            .outputs
            .iter()
            .position(|&o| cx.node_tensor[o] == Some(value))
            .filter(|&o| cx.output_tensors.get(o) == Some(&value));
        let at = match output {
            Some(o) => Err(o),
            None => {
                extra.push((value, BufRole::Kept(k)));
                Ok(extra.len() - 1)
            }
        };
        extra.push((c, BufRole::Cotangent(k + 1)));
        activity_slots.push((id, at, k + 1));
    }
    // Per input, its index in `extra` (None: a zero gradient nothing computes).
    let mut dinput_slots = Vec::with_capacity(graph.inputs.len());
    for (i, &n) in graph.inputs.iter().enumerate() {
        if cx.skip_input_grads && cx.grad_parts[n].is_empty() {
            dinput_slots.push(None);
            continue;
        }
        let len = batch * graph.nodes[n].shape.iter().product::<usize>();
        let owned = match cx.grad_parts[n].as_slice() {
            [t] => extra.iter().all(|(e, _)| e != t),
            _ => false,
        };
        let t = if owned {
            cx.grad_parts[n][0]
        } else {
            let srcs: Vec<BufId> = cx.grad_parts[n].iter().map(|&t| tensor_buf(t)).collect();
            let dst = cx.temp(len);
            let name = format!("{}.grad", graph.nodes[n].name);
            sum_kernel(&mut cx, &name, batch, len / batch, &srcs, dst);
            (dst - TENSOR_BASE) as TensorId
        };
        extra.push((t, BufRole::GradInput(i)));
        dinput_slots.push(Some(extra.len() - 1));
    }
    // Parameters without a gradient, and non-trainable ones, get zeros.
    for (p, spec) in graph.params.iter().enumerate() {
        let (buf, written) = cx.dparam_bufs[p];
        if !written || !spec.trainable {
            let name = format!("{}.{}.zero_grad", graph.nodes[spec.node].name, spec.name);
            sum_kernel(&mut cx, &name, 1, spec.len(), &[], buf);
        }
    }
    let dparam_bufs: Vec<BufId> = cx.dparam_bufs.iter().map(|d| d.0).collect();
    let (updated, hyper_buf) = (cx.updated.clone(), cx.hyper);
    let (lowered, bufs) = plan(cx, &extra)?;
    let activity = activity_slots
        .into_iter()
        .map(|(node, at, cotangent_index)| {
            let value = match at {
                Ok(i) => bufs.get(i).copied(),
                Err(o) => lowered.output_bufs.get(o).copied(),
            };
            value
                .map(|value| ActivityBufs {
                    node,
                    value,
                    cotangent_index,
                })
                .ok_or_else(|| Error::internal("activity buffer missing"))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut forward = lowered.module;
    let mut backward = forward.clone();
    backward.kernels = forward.kernels.split_off(n_forward);
    backward.name = format!("{}.backward", forward.name);
    Ok(LoweredGrad {
        forward,
        backward,
        input_bufs: lowered.input_bufs,
        output_bufs: lowered.output_bufs,
        param_bufs: lowered.param_bufs,
        cotangent_buf: bufs[0],
        dinput_bufs: dinput_slots
            .iter()
            .map(|slot| slot.and_then(|i| bufs.get(i).copied()))
            .collect(),
        dparam_bufs,
        dropout_masks,
        batch_stats,
        activity,
        mode,
        batch,
        updated,
        hyper_buf,
    })
}

/// For every activity-regularized layer: a cotangent tensor pushed first into the
/// layer's output-gradient parts. Returns `(node, value tensor, cotangent tensor)`.
fn activity_cotangents(cx: &mut Cx) -> Result<Vec<(NodeId, TensorId, TensorId)>> {
    let graph = cx.graph;
    let mut parts = Vec::new();
    for (id, node) in graph.nodes.iter().enumerate() {
        if node.op.activity_regularizer().is_none() {
            continue;
        }
        let value = cx.node_tensor[id]
            .ok_or_else(|| Error::internal(format!("node {id} has no forward value")))?;
        let c = cx.temp(cot_len_of(cx, id));
        let t = (c - TENSOR_BASE) as TensorId;
        cx.grad_parts[id].push(t);
        parts.push((id, value, t));
    }
    Ok(parts)
}

fn cot_len_of(cx: &Cx, node: NodeId) -> usize {
    cx.batch * cx.graph.nodes[node].shape.iter().product::<usize>()
}

/// Lowers the forward pass of a layer whose activation was split off.
fn lower_linear(cx: &mut Cx, id: NodeId, op: &Op) -> Result<()> {
    match op {
        Op::LocallyConnected(l) => super::lc::forward(cx, id, l),
        Op::Dense(d) => super::dense::forward(cx, id, d),
        Op::Conv(c) => super::conv::forward(cx, id, c),
        _ => Err(Error::internal(
            "lower_linear on a layer without activation",
        )),
    }
}

/// The backward lowering of one node, given the gradient `dy` of its (pre-activation)
/// output.
fn backward_node(cx: &mut Cx, id: NodeId, dy: BufId) -> Result<()> {
    let graph = cx.graph;
    let node = &graph.nodes[id];
    match &node.op {
        Op::Input => Ok(()),
        Op::Dense(d) => dense::backward(cx, id, d, dy),
        Op::LocallyConnected(l) => lc::backward(cx, id, l, dy),
        Op::Activation(a) => activation::backward(cx, id, a, dy),
        Op::Merge(kind) => merge::backward(cx, id, *kind, dy),
        Op::Concatenate { axis } => merge::concatenate_backward(cx, id, *axis, dy),
        Op::Conv(c) => super::conv::backward(cx, id, c, dy),
        Op::Pool(p) => super::pool::backward(cx, id, p, dy),
        Op::GlobalPool {
            kind,
            rank,
            data_format,
            ..
        } => super::pool::global_backward(cx, id, *kind, *rank, *data_format, dy),
        Op::BatchNorm(bn) => super::norm::backward(cx, id, bn, dy),
        Op::Dropout { .. } | Op::Reshape { .. } => cx.grad_alias(id, 0, dy),
        Op::Flatten { .. } | Op::ZeroPadding { .. } | Op::Cropping { .. } | Op::Permute { .. } => {
            shape::backward(cx, id, dy)
        }
    }
}
