//! Mixed-precision dtype policies in the loop IR: a layer whose policy computes in
//! float16 (`mixed_float16`) or bfloat16 (`mixed_bfloat16`) is lowered as TF runs it on
//! the CPU, by rounding f32 values to the compute dtype (`round_f16` / `round_bf16`) at
//! the points where TF's ops produce a result in that dtype.
//!
//! Measured with tf 2.21 on the CPU (tests/data/actmix/make.py's notes): `MatMul` and
//! `BatchMatMulV2` in float16 and bfloat16 give exactly `round(f32 product of the rounded
//! operands)` (f32 accumulation, one rounding of the result); `BiasAdd` gives
//! `round(a + b)`; relu and tanh give the rounded f32 result. So the forward pass of an
//! LC, Dense or Conv layer under such a policy is
//! `y = round(act(round(round(Σ round(x)·round(K)) + round(b))))`: inputs and weights
//! are rounded by kernels this module appends (once per tensor and dtype, shared by the
//! backward pass, which therefore differentiates with respect to the rounded values as
//! TF does: the gradient of a cast is the cast gradient), and the layer's store applies
//! [`epilogue`]. Float32 layers lower exactly as before (no kernel, no rounding).
//!
//! Not emulated (float32 inside, measured residual ≤ 1 unit in the last place of the
//! compute dtype): other layer kinds under a mixed policy (they read already-rounded
//! values; Flatten and the other shape layers are exact), a softmax fused into a mixed
//! layer, the per-op roundings of non-relu activation gradients (one rounding of the
//! f32 result here). The backward pass of an emulated layer rounds as TF's float16 ops
//! do: the incoming gradient (the cast's gradient), `dK` and dense `db` (f32 sum, one
//! rounding), the LC `db` in float16 (sequential, [`sequential_batch_sum`]) and the LC
//! `dx` as `AddN` of per-window parts ([`lc_dx_scatter`]). The reference engine does not
//! emulate mixed policies: it computes them in float32.

use super::{Cx, TensorId, TENSOR_BASE};
use crate::error::{Error, Result};
use crate::graph::{Activation, ComputeDtype, NodeId, Op};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, un, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind,
    Stmt, UnOp,
};

/// The rounding op of a compute dtype (`None` for float32).
pub fn round_op(c: ComputeDtype) -> Option<UnOp> {
    match c {
        ComputeDtype::Float32 => None,
        ComputeDtype::Float16 => Some(UnOp::RoundF16),
        ComputeDtype::BFloat16 => Some(UnOp::RoundBf16),
    }
}

/// The value a layer stores for one output element: `act(acc + bias)`, and under a mixed
/// compute dtype `round(act(round(round(acc) + bias)))` (`bias` already rounded).
/// `None` for an activation that is not elementwise.
pub fn epilogue(
    compute: ComputeDtype,
    acc: Expr,
    bias: Option<Expr>,
    act: &Activation,
) -> Option<Expr> {
    let Some(r) = round_op(compute) else {
        let z = match bias {
            Some(b) => bin(BinOp::Add, acc, b),
            None => acc,
        };
        return super::activation::apply(act, z);
    };
    let mut z = un(r, acc);
    if let Some(b) = bias {
        z = un(r, bin(BinOp::Add, z, b));
    }
    let y = super::activation::apply(act, z)?;
    Some(if *act == Activation::Linear {
        y
    } else {
        un(r, y)
    })
}

/// Whether `op` is lowered with the mixed-precision rules of this module.
fn emulated(op: &Op) -> bool {
    matches!(op, Op::LocallyConnected(_) | Op::Dense(_) | Op::Conv(_))
}

/// Appends `dst[i] = op(src[i])` for `i < len`.
pub fn round_into(cx: &mut Cx, src: BufId, dst: BufId, len: usize, op: UnOp, name: &str) {
    let mut kb = KernelBuilder::new(name);
    let i = kb.var("i");
    let kind = if len.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let store = Stmt::Store {
        buf: dst,
        index: Affine::var(i),
        value: un(op, load(src, Affine::var(i))),
    };
    let k = kb.finish(vec![for_(i, len as u64, kind, vec![store])]);
    cx.push(k, &[src], &[dst]);
}

/// The rounding op of node `id`'s backward pass: `Some` for an emulated layer under a
/// mixed policy.
pub fn backward_round(cx: &Cx, id: NodeId) -> Option<UnOp> {
    let node = &cx.graph.nodes[id];
    round_op(node.policy.compute).filter(|_| emulated(&node.op))
}

/// A fresh tensor of `len` elements holding `src` rounded by `op`.
pub fn rounded_copy(cx: &mut Cx, src: BufId, len: usize, op: UnOp, layer: &str) -> BufId {
    let dst = cx.temp(len);
    round_into(cx, src, dst, len, op, &format!("{layer}.dy.round"));
    dst
}

/// `db[e] = round(…round(round(dz[0, e]) + dz[1, e])… + dz[B−1, e])` for `e < n`:
/// a float16 sum over the batch in row order, rounded after each addition.
fn sequential_batch_sum(cx: &mut Cx, dz: BufId, db: BufId, n: usize, op: UnOp, name: &str) {
    let mut kb = KernelBuilder::new(name);
    let (e0, b, e) = (kb.var("e0"), kb.var("b"), kb.var("e"));
    let kind = if n.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let zero = for_(
        e0,
        n as u64,
        kind,
        vec![Stmt::Store {
            buf: db,
            index: Affine::var(e0),
            value: Expr::Const(0.0),
        }],
    );
    let add = for_(
        b,
        cx.batch as u64,
        LoopKind::Serial,
        vec![for_(
            e,
            n as u64,
            kind,
            vec![Stmt::Store {
                buf: db,
                index: Affine::var(e),
                value: un(
                    op,
                    bin(
                        BinOp::Add,
                        load(db, Affine::var(e)),
                        load(dz, Affine::var(e).plus_term(b, n as i64)),
                    ),
                ),
            }],
        )],
    );
    cx.push(kb.finish(vec![zero, add]), &[dz, db], &[db]);
}

/// Whether [`lc_dx_scatter`] reproduces TF's input gradient of `l`: implementation 1
/// (one slice per output position), channels_last, valid padding.
fn scatter_applies(l: &crate::graph::LocallyConnected) -> bool {
    l.implementation == 1
        && l.data_format == crate::graph::DataFormat::ChannelsLast
        && l.padding == crate::graph::Padding::Valid
}

/// The input gradient of an implementation-1 LC layer as TF computes it in a narrow
/// dtype: per output position `p` the window's gradient `round(Σ_f dz[b, p, f]·K[p, q, f])`
/// (the batch matmul's, f32 accumulation), placed by the slice's gradient and summed
/// over the positions by `AddN` in that dtype, rounding after every addition, in position
/// order (measured: bit-exact on the 1-D golden case; the 2-D case is within 3.1e-5,
/// TF's order there is not row-major). Overwrites
/// `dx` completely; batch rows in parallel, positions in order within a row.
fn lc_dx_scatter(
    cx: &mut Cx,
    id: NodeId,
    l: &crate::graph::LocallyConnected,
    dz: BufId,
    dx: BufId,
    op: UnOp,
    name: &str,
) -> Result<()> {
    let graph = cx.graph;
    let node = &graph.nodes[id];
    let src = *node
        .inputs
        .first()
        .ok_or_else(|| Error::internal("LC without input"))?;
    let (ins, outs) = (&graph.nodes[src].shape, &node.shape);
    let r = l.rank;
    if ins.len() != r + 1 || outs.len() != r + 1 {
        return Err(Error::internal("LC shapes do not match its rank"));
    }
    let (c, f) = (ins[r], outs[r]);
    let n_in: usize = ins.iter().product();
    let p_all: usize = outs[..r].iter().product();
    let q_all = l.kernel.iter().product::<usize>() * c;
    let k = cx.param(id, "kernel")?;
    let mut kb = KernelBuilder::new(format!("{name}.scatter"));
    let b = kb.var("b");
    let e = kb.var("e");
    let o: Vec<_> = (0..r).map(|a| kb.var(&format!("o{a}"))).collect();
    let t: Vec<_> = (0..r).map(|a| kb.var(&format!("t{a}"))).collect();
    let cv = kb.var("c");
    let fv = kb.var("f");
    let acc = kb.local("acc", 1);
    let zero_at = Affine::constant(0);
    let out_at = |a: usize| Affine::var(o[a]);
    let mut p_aff = Affine::constant(0);
    let mut q_aff = Affine::constant(0);
    let mut x_aff = Affine::constant(0);
    for a in 0..r {
        p_aff = p_aff.scale(outs[a] as i64).plus_affine(&out_at(a));
        q_aff = q_aff.scale(l.kernel[a] as i64).plus_term(t[a], 1);
        let i = out_at(a)
            .scale(l.strides[a] as i64)
            .plus_term(t[a], l.dilation[a] as i64);
        x_aff = x_aff.scale(ins[a] as i64).plus_affine(&i);
    }
    let q_aff = q_aff.scale(c as i64).plus_term(cv, 1);
    let x_at = x_aff
        .scale(c as i64)
        .plus_term(cv, 1)
        .plus_term(b, n_in as i64);
    let dz_at = p_aff
        .clone()
        .scale(f as i64)
        .plus_term(fv, 1)
        .plus_term(b, (p_all * f) as i64);
    let k_at = p_aff
        .scale((q_all * f) as i64)
        .plus_affine(&q_aff.scale(f as i64))
        .plus_term(fv, 1);
    let dot = vec![
        Stmt::SetLocal {
            local: acc,
            index: zero_at.clone(),
            value: Expr::Const(0.0),
        },
        for_(
            fv,
            f as u64,
            LoopKind::Serial,
            vec![Stmt::SetLocal {
                local: acc,
                index: zero_at.clone(),
                value: fma(
                    load(dz, dz_at),
                    load(k, k_at),
                    load_local(acc, zero_at.clone()),
                ),
            }],
        ),
        Stmt::Store {
            buf: dx,
            index: x_at.clone(),
            value: un(
                op,
                bin(BinOp::Add, load(dx, x_at), un(op, load_local(acc, zero_at))),
            ),
        },
    ];
    let mut body = vec![for_(cv, c as u64, LoopKind::Serial, dot)];
    for a in (0..r).rev() {
        body = vec![for_(t[a], l.kernel[a] as u64, LoopKind::Serial, body)];
    }
    for a in (0..r).rev() {
        body = vec![for_(o[a], outs[a] as u64, LoopKind::Serial, body)];
    }
    let zero = for_(
        e,
        n_in as u64,
        LoopKind::Serial,
        vec![Stmt::Store {
            buf: dx,
            index: Affine::var(e).plus_term(b, n_in as i64),
            value: Expr::Const(0.0),
        }],
    );
    body.insert(0, zero);
    let nest = for_(b, cx.batch as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[dz, k, dx], &[dx]);
    Ok(())
}

impl Cx<'_> {
    /// The tensor holding `src` (a buffer of `len` elements) rounded by `op`, appending
    /// the rounding kernel on first use.
    fn rounded(&mut self, src: BufId, len: usize, op: UnOp, name: &str) -> BufId {
        if let Some(&(_, _, t)) = self.rounded.iter().find(|(s, o, _)| *s == src && *o == op) {
            return TENSOR_BASE + t as u32;
        }
        let dst = self.temp(len);
        round_into(self, src, dst, len, op, name);
        self.rounded
            .push((src, op, (dst - TENSOR_BASE) as TensorId));
        dst
    }
}

/// Runs `lower` (the forward or backward lowering of node `id`) with the node's inputs
/// and parameters replaced by their rounded copies when the node computes in a mixed
/// dtype; in the forward pass (`forward`) the layer's stores round as [`epilogue`] says.
pub fn with_policy<T>(
    cx: &mut Cx,
    id: NodeId,
    forward: bool,
    lower: impl FnOnce(&mut Cx) -> Result<T>,
) -> Result<T> {
    with_policy_dz(cx, id, forward, None, lower)
}

/// [`with_policy`]; in the backward pass `dz` is the gradient of the layer's
/// pre-activation output (for the float16 bias gradient).
pub fn with_policy_dz<T>(
    cx: &mut Cx,
    id: NodeId,
    forward: bool,
    dz: Option<BufId>,
    lower: impl FnOnce(&mut Cx) -> Result<T>,
) -> Result<T> {
    let graph = cx.graph;
    let node = &graph.nodes[id];
    let op = match round_op(node.policy.compute) {
        Some(op) if emulated(&node.op) => op,
        _ => return lower(cx),
    };
    let mut params = Vec::new();
    for &p in &node.params {
        let b = cx.param_bufs[p];
        let name = format!("{}.{}.round", node.name, graph.params[p].name);
        let r = cx.rounded(b, graph.params[p].len(), op, &name);
        params.push((p, b));
        cx.param_bufs[p] = r;
    }
    let mut inputs = Vec::new();
    for (k, &src) in node.inputs.iter().enumerate() {
        let t = cx.node_tensor[src]
            .ok_or_else(|| Error::internal(format!("node {src} has no forward value")))?;
        let len = cx.batch * graph.nodes[src].shape.iter().product::<usize>();
        let name = format!("{}.input{k}.round", node.name);
        let r = cx.rounded(TENSOR_BASE + t as u32, len, op, &name);
        inputs.push((src, t));
        cx.node_tensor[src] = Some((r - TENSOR_BASE) as TensorId);
    }
    if forward {
        cx.compute = node.policy.compute;
    }
    let parts: Vec<usize> = node
        .inputs
        .iter()
        .map(|&src| cx.grad_parts[src].len())
        .collect();
    let out = lower(cx);
    cx.compute = ComputeDtype::Float32;
    if !forward && out.is_ok() {
        // TF's float16 backward ops round their results: the weight gradients
        // (`MatMul`, `BiasAddGrad`: f32 accumulation, one rounding) and the input
        // gradients (one rounding of the f32 sum here; TF rounds each window's part and
        // adds the parts in float16, which differs where windows overlap).
        for &p in &node.params {
            if let Some(&(b, true)) = cx.dparam_bufs.get(p) {
                let spec = &graph.params[p];
                let name = format!("{}.d{}.round", node.name, spec.name);
                match (&node.op, dz) {
                    // LC's bias is added by broadcasting (`x + reshape(bias)`), whose
                    // gradient is a float16 `Sum` over the batch: sequential, rounded
                    // after every addition (bfloat16 sums in f32, one rounding).
                    (Op::LocallyConnected(_), Some(dz))
                        if spec.name == "bias" && op == UnOp::RoundF16 =>
                    {
                        sequential_batch_sum(cx, dz, b, spec.len(), op, &name)
                    }
                    _ => round_into(cx, b, b, spec.len(), op, &name),
                }
            }
        }
        for (k, (&src, &before)) in node.inputs.iter().zip(&parts).enumerate() {
            let new: Vec<TensorId> = cx.grad_parts[src][before..].to_vec();
            for t in new {
                let b = TENSOR_BASE + t as u32;
                let len = cx.tensor_len[t];
                let name = format!("{}.dx{k}.round", node.name);
                match (&node.op, dz) {
                    (Op::LocallyConnected(l), Some(dz)) if scatter_applies(l) => {
                        lc_dx_scatter(cx, id, l, dz, b, op, &name)?
                    }
                    _ => round_into(cx, b, b, len, op, &name),
                }
            }
        }
    }
    for (src, t) in inputs.into_iter().rev() {
        cx.node_tensor[src] = Some(t);
    }
    for (p, b) in params {
        cx.param_bufs[p] = b;
    }
    out
}
