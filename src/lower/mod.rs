//! Lowering of the graph IR to the loop IR, and the memory plan.
//!
//! [`lower_forward`] turns a graph, for one batch size, into a [`Module`]: one or more
//! kernels per layer (one file per layer kind in this directory, forward and backward side
//! by side), buffers for inputs, outputs and parameters, and *slots* for intermediate
//! activations. Layers that only reinterpret memory (Flatten of channels_last data,
//! Reshape, Dropout at inference) alias their input instead of copying. The memory plan
//! gives two activations the same slot when their lifetimes (from the kernel that writes
//! them to the last kernel that reads them) do not overlap, so nothing is allocated per
//! call beyond one set of slots. [`grad`] builds gradient programs on the same context and
//! memory plan (activations the backward pass reads simply live longer).
//!
//! Invariants of the result: it passes `loop_ir::verify`; `param_bufs[i]` holds graph
//! parameter `i` in canonical layout; tensor layouts are the graph's (row-major, batch
//! first).

pub mod activation;
pub mod conv;
pub mod dense;
pub mod fuse;
pub mod grad;
pub mod in_place;
pub mod lc;
mod lc_backward;
pub mod merge;
pub mod mixed;
pub mod norm;
pub mod norm_train;
pub mod pool;
pub mod schedule;
pub mod shape;
pub mod weights;

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId, Op};
use crate::loop_ir::micro::Tier;
use crate::loop_ir::{BufId, BufRole, Buffer, Kernel, Module};

/// A logical tensor (one per node output, shared by aliasing nodes).
pub type TensorId = usize;

/// The lowered program and how graph values map to its buffers.
#[derive(Clone, Debug)]
pub struct Lowered {
    /// The program.
    pub module: Module,
    /// Buffer of each graph input, in graph input order.
    pub input_bufs: Vec<BufId>,
    /// Buffer of each graph output, in graph output order.
    pub output_bufs: Vec<BufId>,
    /// Buffer of each graph parameter (`graph.params[i]`).
    pub param_bufs: Vec<BufId>,
    /// Batch size the module is specialised to.
    pub batch: usize,
}

/// Per-layer lowering context.
pub struct Cx<'g> {
    /// The graph.
    pub graph: &'g Graph,
    /// Batch size.
    pub batch: usize,
    node_tensor: Vec<Option<TensorId>>,
    tensor_len: Vec<usize>,
    /// Kernels with the tensors they read and write (for liveness).
    kernels: Vec<(Kernel, Vec<TensorId>, Vec<TensorId>)>,
    param_bufs: Vec<BufId>,
    buffers: Vec<Buffer>,
    /// Gradient programs only (see [`grad`]): per node, the tensors whose sum is the
    /// gradient of its output.
    grad_parts: Vec<Vec<TensorId>>,
    /// Gradient programs only: the buffer of each parameter's gradient, and whether a
    /// backward kernel wrote it.
    dparam_bufs: Vec<(BufId, bool)>,
    /// Training programs only: per node, the buffers the training-mode forward pass left
    /// for its backward pass (a Dropout mask, BatchNorm batch statistics).
    saved: Vec<Vec<BufId>>,
    /// Training programs: gradients of the model inputs are not needed (nothing learns
    /// them), so layers reading a model input skip their `dx`.
    skip_input_grads: bool,
    /// The tensor of each graph output, set by [`Cx::finish_forward`]: the output node's
    /// own tensor, or a copy when that tensor is a graph input or an earlier output.
    output_tensors: Vec<TensorId>,
    /// The compute dtype of the layer being lowered forward (see [`mixed`]): the dtype
    /// its stores round to.
    compute: crate::graph::ComputeDtype,
    /// Rounded copies made by [`mixed::with_policy`]: `(source buffer, op, tensor)`.
    rounded: Vec<(BufId, crate::loop_ir::UnOp, TensorId)>,
    /// The SIMD tier past f32x4 the schedules may use (`None`: f32x4 only).
    pub tier: Option<Tier>,
    /// How LC and Dense kernels will be stored (see [`Target::weights`]).
    pub weights: crate::loop_ir::Dtype,
    /// Autotuned forward schedule families (see [`Target::plans`]).
    pub plans: Option<std::sync::Arc<schedule::lc::Plans>>,
    /// Inference programs: the neighbours fused into LC kernels ([`fuse`]; none in
    /// gradient programs).
    pub fusion: fuse::Fusion,
    /// Per LC node: the channels_last copy of its input its forward kernel read, which
    /// the backward pass of a gradient program reads too instead of copying again.
    pub x_channels_last: std::collections::HashMap<NodeId, BufId>,
    /// Training programs: the optimizer rule backward kernels may apply in place (see
    /// [`in_place`]).
    pub in_place: Option<&'g dyn in_place::InPlaceRule>,
    /// The hyper buffer of the in-place updates, once one is asked for.
    hyper: Option<BufId>,
    /// Per graph parameter: whether a backward kernel updates it in place.
    updated: Vec<bool>,
}

/// How a lowered layer refers to a tensor before slots are assigned: tensor ids are
/// encoded as buffer ids `TENSOR_BASE + t` and rewritten by the memory plan.
const TENSOR_BASE: u32 = 1 << 30;

impl<'g> Cx<'g> {
    /// Buffer id standing for input `k` of `node`.
    pub fn input(&self, node: NodeId, k: usize) -> Result<BufId> {
        let src = *self.graph.nodes[node]
            .inputs
            .get(k)
            .ok_or_else(|| Error::internal(format!("node {node} has no input {k}")))?;
        let t = self.node_tensor[src].ok_or_else(|| Error::internal("input not lowered yet"))?;
        Ok(TENSOR_BASE + t as u32)
    }

    /// A fresh tensor for the output of `node`, returned as its buffer id.
    pub fn output(&mut self, node: NodeId) -> BufId {
        let len = self.batch * self.graph.nodes[node].shape.iter().product::<usize>();
        self.tensor_len.push(len);
        let t = self.tensor_len.len() - 1;
        self.node_tensor[node] = Some(t);
        TENSOR_BASE + t as u32
    }

    /// A fresh intermediate tensor of `len` elements that belongs to no node.
    pub fn temp(&mut self, len: usize) -> BufId {
        self.tensor_len.push(len);
        TENSOR_BASE + (self.tensor_len.len() - 1) as u32
    }

    /// Makes `node`'s output the same tensor as its input `k` (a view, no copy).
    pub fn alias(&mut self, node: NodeId, k: usize) -> Result<()> {
        let src = self.graph.nodes[node].inputs[k];
        self.node_tensor[node] = self.node_tensor[src];
        Ok(())
    }

    /// Buffer of `node`'s parameter named `name`.
    pub fn param(&self, node: NodeId, name: &str) -> Result<BufId> {
        self.graph.nodes[node]
            .params
            .iter()
            .find(|&&p| self.graph.params[p].name == name)
            .map(|&p| self.param_bufs[p])
            .ok_or_else(|| Error::internal(format!("node {node} has no parameter {name}")))
    }

    /// A constant buffer.
    pub fn constant(&mut self, name: &str, data: Vec<f32>) -> BufId {
        self.buffers.push(Buffer {
            name: name.to_string(),
            len: data.len(),
            role: BufRole::Const(data),
            dtype: crate::loop_ir::Dtype::F32,
        });
        (self.buffers.len() - 1) as BufId
    }

    /// Appends a kernel; reads and writes are derived from its buffer ids.
    pub fn push(&mut self, kernel: Kernel, reads: &[BufId], writes: &[BufId]) {
        let tensors = |ids: &[BufId]| {
            ids.iter()
                .filter(|&&b| b >= TENSOR_BASE)
                .map(|&b| (b - TENSOR_BASE) as usize)
                .collect::<Vec<_>>()
        };
        self.kernels.push((kernel, tensors(reads), tensors(writes)));
    }
}

/// Lowers the forward pass of `graph` for a batch of `batch` rows, for any target
/// (f32x4 schedules only).
pub fn lower_forward(graph: &Graph, batch: usize) -> Result<Lowered> {
    lower_forward_for(graph, batch, Target::default())
}

/// What the schedules may assume of the machine and of how the weights will be stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Target {
    /// The SIMD tier past f32x4 the machine has (`None`: f32x4 only).
    pub tier: Option<Tier>,
    /// How LC and Dense kernels will be stored ([`weights::store_weights`]): a 16-bit
    /// kernel is widened in one instruction by a wide microkernel and in 4 to 14 by the
    /// f32x4 code, which moves the schedules' choice at small batches.
    pub weights: crate::loop_ir::Dtype,
    /// Forward schedule families chosen by autotuning ([`crate::tune`]), by layer key;
    /// layers without one get the default schedule. Every family computes the same
    /// bits.
    pub plans: Option<std::sync::Arc<schedule::lc::Plans>>,
    /// Lower every layer on its own, fusing nothing into LC kernels ([`fuse`]): the
    /// same values, more kernels (for differential tests and inspection).
    pub unfused: bool,
}

/// [`lower_forward`] for `target`: the schedules may then give register tiles to wide
/// microkernels ([`crate::loop_ir::micro`]). The program computes the same bits on every
/// executor and target either way.
pub fn lower_forward_for(graph: &Graph, batch: usize, target: Target) -> Result<Lowered> {
    let mut cx = Cx::new(graph, batch)?;
    cx.tier = target.tier;
    cx.weights = target.weights;
    if !target.unfused {
        cx.fusion = fuse::plan(graph, batch, cx.tier, cx.weights);
    }
    cx.plans = target.plans;
    for id in 0..graph.nodes.len() {
        // A fused node is lowered by the LC layer it was fused into.
        if !cx.fusion.is_absorbed(id) {
            mixed::with_policy(&mut cx, id, true, |cx| forward_node(cx, id))?;
        }
    }
    cx.finish_forward()?;
    let (lowered, _) = plan(cx, &[])?;
    Ok(lowered)
}

impl<'g> Cx<'g> {
    /// A context with one buffer per graph parameter and no tensors yet.
    fn new(graph: &'g Graph, batch: usize) -> Result<Cx<'g>> {
        if batch == 0 {
            return Err(Error::Input {
                detail: "batch size must be at least 1".into(),
            });
        }
        // Every buffer below is sized `batch × shape` without further checks: the
        // budget, computed with the checked helpers of `crate::size`, bounds them all
        // (a batch whose outputs overflow or exceed it is refused here).
        crate::budget::check_run(graph, batch, false)?;
        let mut buffers = Vec::new();
        let mut param_bufs = Vec::new();
        for (i, p) in graph.params.iter().enumerate() {
            let node = &graph.nodes[p.node].name;
            buffers.push(Buffer {
                name: format!("{node}.{}", p.name),
                len: p.len(),
                role: BufRole::Param(i),
                dtype: crate::loop_ir::Dtype::F32,
            });
            param_bufs.push((buffers.len() - 1) as BufId);
        }
        Ok(Cx {
            graph,
            batch,
            node_tensor: vec![None; graph.nodes.len()],
            tensor_len: Vec::new(),
            kernels: Vec::new(),
            param_bufs,
            buffers,
            grad_parts: vec![Vec::new(); graph.nodes.len()],
            dparam_bufs: Vec::new(),
            saved: vec![Vec::new(); graph.nodes.len()],
            skip_input_grads: false,
            output_tensors: Vec::new(),
            compute: crate::graph::ComputeDtype::Float32,
            rounded: Vec::new(),
            tier: None,
            weights: crate::loop_ir::Dtype::F32,
            plans: None,
            fusion: fuse::Fusion::default(),
            x_channels_last: std::collections::HashMap::new(),
            in_place: None,
            hyper: None,
            updated: vec![false; graph.params.len()],
        })
    }
}

/// Lowers the forward pass of one node (its inputs are lowered already).
fn forward_node(cx: &mut Cx, id: NodeId) -> Result<()> {
    let graph = cx.graph;
    match &graph.nodes[id].op {
        Op::Input => {
            cx.output(id);
        }
        Op::LocallyConnected(l) => lc::forward(cx, id, l)?,
        Op::Dropout { .. } => shape::alias_or_copy(cx, id)?,
        Op::Activation(a) => activation::forward(cx, id, a)?,
        Op::Dense(d) => dense::forward(cx, id, d)?,
        Op::Conv(c) => conv::forward(cx, id, c)?,
        Op::Pool(p) => pool::forward(cx, id, p)?,
        Op::GlobalPool {
            kind,
            rank,
            data_format,
            ..
        } => pool::global(cx, id, *kind, *rank, *data_format)?,
        Op::ZeroPadding {
            pads, data_format, ..
        } => shape::zero_padding(cx, id, pads, *data_format)?,
        Op::Cropping {
            crops, data_format, ..
        } => shape::cropping(cx, id, crops, *data_format)?,
        Op::Flatten { data_format } => shape::flatten(cx, id, *data_format)?,
        Op::Reshape { .. } => shape::alias_or_copy(cx, id)?,
        Op::Permute { dims } => shape::permute(cx, id, dims)?,
        Op::BatchNorm(bn) => norm::forward(cx, id, bn)?,
        Op::Merge(kind) => merge::forward(cx, id, *kind)?,
        Op::Concatenate { axis } => merge::concatenate(cx, id, *axis)?,
    }
    Ok(())
}

impl Cx<'_> {
    /// Fixes the tensor of each graph output after the forward pass: a tensor holds one
    /// role, so an output whose tensor is a graph input (an identity model, or a view
    /// such as Reshape of the input) or an earlier output gets a copy of its own.
    pub fn finish_forward(&mut self) -> Result<()> {
        let graph = self.graph;
        let mut taken: Vec<TensorId> = Vec::new();
        for &n in &graph.inputs {
            taken.extend(self.node_tensor[n]);
        }
        let mut outs = Vec::with_capacity(graph.outputs.len());
        for &n in &graph.outputs {
            let t = self.node_tensor[n].ok_or_else(|| Error::internal("output without tensor"))?;
            let t = if taken.contains(&t) {
                let len = self.tensor_len[t];
                let dst = self.temp(len);
                let name = format!("{}.output_copy", graph.nodes[n].name);
                grad::sum_kernel(
                    self,
                    &name,
                    self.batch,
                    len / self.batch,
                    &[tensor_buf(t)],
                    dst,
                );
                (dst - TENSOR_BASE) as TensorId
            } else {
                t
            };
            taken.push(t);
            outs.push(t);
        }
        self.output_tensors = outs;
        Ok(())
    }
}

/// Placeholder buffer id of tensor `t` (rewritten by the memory plan).
fn tensor_buf(t: TensorId) -> BufId {
    TENSOR_BASE + t as BufId
}

/// The memory plan: assigns every tensor a buffer (input, output, one of the `extra`
/// roles, or a shared slot) and rewrites the kernels' placeholder buffer ids. Returns the
/// buffer of each `extra` tensor, in order.
fn plan(cx: Cx, extra: &[(TensorId, BufRole)]) -> Result<(Lowered, Vec<BufId>)> {
    let Cx {
        graph,
        batch,
        node_tensor,
        tensor_len,
        kernels,
        param_bufs,
        mut buffers,
        output_tensors,
        ..
    } = cx;
    let nt = tensor_len.len();
    let tensor_of =
        |n: NodeId| node_tensor[n].ok_or_else(|| Error::internal("node without tensor"));
    let mut role: Vec<Option<BufRole>> = vec![None; nt];
    let mut fixed: Vec<Option<BufId>> = vec![None; nt];
    let mut input_bufs = Vec::new();
    for (i, &n) in graph.inputs.iter().enumerate() {
        role[tensor_of(n)?] = Some(BufRole::Input(i));
    }
    let mut output_bufs = Vec::new();
    if output_tensors.len() != graph.outputs.len() {
        return Err(Error::internal("plan before finish_forward"));
    }
    for (i, &t) in output_tensors.iter().enumerate() {
        if role[t].is_some() {
            return Err(Error::internal(format!("output {i} shares its tensor")));
        }
        role[t] = Some(BufRole::Output(i));
    }
    for (t, r) in extra {
        match role.get_mut(*t) {
            Some(slot @ None) => *slot = Some(r.clone()),
            _ => return Err(Error::internal(format!("tensor {t} has two roles"))),
        }
    }
    for t in 0..nt {
        if let Some(r) = role[t].clone() {
            buffers.push(Buffer {
                name: match &r {
                    BufRole::Input(i) => format!("x{i}"),
                    BufRole::Cotangent(i) => format!("dy{i}"),
                    BufRole::GradInput(i) => format!("dx{i}"),
                    BufRole::Kept(i) => format!("kept{i}"),
                    _ => format!("y{}", output_bufs.len()),
                },
                len: tensor_len[t],
                role: r.clone(),
                dtype: crate::loop_ir::Dtype::F32,
            });
            let b = (buffers.len() - 1) as BufId;
            fixed[t] = Some(b);
            match r {
                BufRole::Input(_) => input_bufs.push((t, b)),
                BufRole::Output(_) => output_bufs.push((t, b)),
                _ => {}
            }
        }
    }
    let extra_bufs = extra
        .iter()
        .map(|(t, _)| fixed[*t].ok_or_else(|| Error::internal("extra tensor without buffer")))
        .collect::<Result<Vec<_>>>()?;
    // Lifetimes in kernel indices: [first write, last read].
    let mut first = vec![usize::MAX; nt];
    let mut last = vec![0usize; nt];
    for (k, (_, reads, writes)) in kernels.iter().enumerate() {
        for &t in writes.iter().chain(reads) {
            first[t] = first[t].min(k);
            last[t] = last[t].max(k);
        }
    }
    // Greedy slot assignment in order of first use.
    let mut slots: Vec<(BufId, usize)> = Vec::new(); // (buffer, free after kernel index)
    let mut order: Vec<usize> = (0..nt)
        .filter(|&t| fixed[t].is_none() && first[t] != usize::MAX)
        .collect();
    order.sort_by_key(|&t| first[t]);
    for t in order {
        let reuse = slots
            .iter_mut()
            .find(|(_, free_after)| *free_after < first[t]);
        let b = match reuse {
            Some((b, free_after)) => {
                *free_after = last[t];
                let buf = &mut buffers[*b as usize];
                buf.len = buf.len.max(tensor_len[t]);
                *b
            }
            None => {
                buffers.push(Buffer {
                    name: format!("slot{}", slots.len()),
                    len: tensor_len[t],
                    role: BufRole::Scratch,
                    dtype: crate::loop_ir::Dtype::F32,
                });
                let b = (buffers.len() - 1) as BufId;
                slots.push((b, last[t]));
                b
            }
        };
        fixed[t] = Some(b);
    }
    let mut module = Module {
        name: graph.name.clone(),
        buffers,
        kernels: Vec::new(),
    };
    for (mut k, _, _) in kernels {
        let mut bad = false;
        remap_kernel(&mut k, &mut |b| {
            if b >= TENSOR_BASE {
                match fixed.get((b - TENSOR_BASE) as usize).copied().flatten() {
                    Some(nb) => nb,
                    None => {
                        bad = true;
                        b
                    }
                }
            } else {
                b
            }
        });
        if bad {
            return Err(Error::internal(format!(
                "kernel {} uses an unplanned tensor",
                k.name
            )));
        }
        module.kernels.push(k);
    }
    crate::loop_ir::verify::verify(&module)?;
    input_bufs.sort_by_key(|&(t, _)| graph.inputs.iter().position(|&n| node_tensor[n] == Some(t)));
    output_bufs.sort_by_key(|&(t, _)| output_tensors.iter().position(|&o| o == t));
    Ok((
        Lowered {
            module,
            input_bufs: input_bufs.into_iter().map(|x| x.1).collect(),
            output_bufs: output_bufs.into_iter().map(|x| x.1).collect(),
            param_bufs,
            batch,
        },
        extra_bufs,
    ))
}

fn remap_kernel(k: &mut Kernel, f: &mut dyn FnMut(BufId) -> BufId) {
    use crate::loop_ir::{Expr, Stmt};
    fn expr(e: &mut Expr, f: &mut dyn FnMut(BufId) -> BufId) {
        match e {
            Expr::Load { buf, .. } => *buf = f(*buf),
            Expr::Const(_) | Expr::LoadLocal { .. } => {}
            Expr::Unary(_, a) => expr(a, f),
            Expr::Binary(_, a, b) => {
                expr(a, f);
                expr(b, f);
            }
            Expr::Fma(a, b, c) => {
                expr(a, f);
                expr(b, f);
                expr(c, f);
            }
            Expr::Select { a, b, t, f: g, .. } => {
                expr(a, f);
                expr(b, f);
                expr(t, f);
                expr(g, f);
            }
        }
    }
    fn stmts(s: &mut [Stmt], f: &mut dyn FnMut(BufId) -> BufId) {
        for st in s {
            match st {
                Stmt::For { body, .. } | Stmt::If { body, .. } => stmts(body, f),
                Stmt::Store { buf, value, .. } => {
                    *buf = f(*buf);
                    expr(value, f);
                }
                Stmt::SetLocal { value, .. } => expr(value, f),
            }
        }
    }
    stmts(&mut k.body, f);
}
