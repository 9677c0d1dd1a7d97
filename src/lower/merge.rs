//! Merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum) and Concatenate in
//! the loop IR.
//!
//! Merges are one elementwise kernel: a parallel loop over the batch around a loop over
//! the per-sample elements (`Vector(4)` when their count is a multiple of 4), folding the
//! inputs left to right in input order exactly as the reference does (`Average` divides
//! the sum by the input count at the end). Concatenate is one data-movement kernel (see
//! [`super::shape`]) with one transfer per input into its slice of the output: viewing
//! each tensor as `(outer, axis·inner)`, input `k` lands at column offset
//! `(Σ_{j<k} len_j)·inner`, and the `len_k·inner` columns are contiguous on both sides.

use super::shape::{transfer_kernel, Side, Transfer};
use super::Cx;
use crate::error::Result;
use crate::graph::{MergeKind, NodeId};
use crate::loop_ir::{
    bin, for_, lanes_with_tail, load, un, Affine, BinOp, BufId, CmpOp, Expr, KernelBuilder,
    LoopKind, Stmt, UnOp, Var,
};

/// Lowers an elementwise merge of node `node`'s inputs.
pub fn forward(cx: &mut Cx, node: NodeId, kind: MergeKind) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, len, arity) = (
        n.name.clone(),
        n.shape.iter().product::<usize>(),
        n.inputs.len(),
    );
    let srcs = (0..arity)
        .map(|k| cx.input(node, k))
        .collect::<Result<Vec<_>>>()?;
    let dst = cx.output(node);
    let idx = Affine::var(0).scale(len as i64).plus_term(1, 1);
    let op = match kind {
        MergeKind::Add | MergeKind::Average => BinOp::Add,
        MergeKind::Subtract => BinOp::Sub,
        MergeKind::Multiply => BinOp::Mul,
        MergeKind::Maximum => BinOp::Max,
        MergeKind::Minimum => BinOp::Min,
    };
    let chain = fold_chain(dst, &idx, op, &srcs, |v| {
        if kind == MergeKind::Average {
            bin(BinOp::Div, v, Expr::Const(arity as f32))
        } else {
            v
        }
    });
    push_chunked(
        cx,
        &format!("{name}.forward"),
        len,
        chain,
        FOLD_KERNEL,
        &srcs,
        &[dst],
    );
    Ok(())
}

/// Statements of a fold chain per kernel: 8 × [`FOLD_CHUNK`] loads.
const FOLD_KERNEL: usize = 8;
/// Statements of a chained backward pass per kernel.
const CHAIN_KERNEL: usize = 96;

/// Pushes `body` (statements over variables 0 = batch row, 1 = element, all state in
/// memory) as kernels of at most `per_kernel` statements, in order, each
/// `for b (parallel) { for e { … } }`. Splitting between any two statements keeps the
/// meaning (each element's statements still run in order), and bounds the size of every
/// function the JIT compiles and the buffers it keeps live, whatever the merge's arity.
fn push_chunked(
    cx: &mut Cx,
    name: &str,
    len: usize,
    body: Vec<Stmt>,
    per_kernel: usize,
    reads: &[BufId],
    writes: &[BufId],
) {
    let parts = body.len().div_ceil(per_kernel.max(1));
    let mut rest = body.into_iter();
    for k in 0..parts {
        let chunk: Vec<Stmt> = rest.by_ref().take(per_kernel.max(1)).collect();
        let kname = if parts == 1 {
            name.to_string()
        } else {
            format!("{name}.{k}")
        };
        let mut kb = KernelBuilder::new(kname);
        let b = kb.var("b");
        let e = kb.var("e");
        let nest = elementwise(&mut kb, cx.batch, len, b, e, chunk);
        cx.push(kb.finish(vec![nest]), reads, writes);
    }
}

/// Loads folded into one expression at most; longer folds continue through `dst`.
pub const FOLD_CHUNK: usize = 32;

/// Stores `dst[idx] = finish(srcs[0] op srcs[1] op … )`, folded left to right, as a chain
/// of statements of at most [`FOLD_CHUNK`] loads each: the first stores the fold of its
/// chunk, each next one reloads `dst[idx]` and folds its chunk on (the same f32
/// operations in the same order as one long expression, so the same bits), and the last
/// applies `finish`. Expression depth stays bounded however many inputs a merge has,
/// so no recursive walker of the loop IR (printer, verifier, interpreter, code
/// generator) can exhaust the stack. `srcs` must not be empty and must not contain `dst`.
pub fn fold_chain(
    dst: BufId,
    idx: &Affine,
    op: BinOp,
    srcs: &[BufId],
    finish: impl Fn(Expr) -> Expr,
) -> Vec<Stmt> {
    let chunks: Vec<&[BufId]> = srcs.chunks(FOLD_CHUNK).collect();
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(k, chunk)| {
            let mut loads = chunk.iter().map(|&s| load(s, idx.clone()));
            let first = if k == 0 {
                loads.next().unwrap_or(Expr::Const(0.0))
            } else {
                load(dst, idx.clone())
            };
            let value = loads.fold(first, |acc, x| bin(op, acc, x));
            Stmt::Store {
                buf: dst,
                index: idx.clone(),
                value: if k == last { finish(value) } else { value },
            }
        })
        .collect()
}

/// Lowers Concatenate along per-sample axis `axis`.
pub fn concatenate(cx: &mut Cx, node: NodeId, axis: usize) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, out) = (n.name.clone(), n.shape.clone());
    let in_shapes: Vec<Vec<usize>> = n
        .inputs
        .iter()
        .map(|&i| cx.graph.nodes[i].shape.clone())
        .collect();
    let srcs = (0..in_shapes.len())
        .map(|k| cx.input(node, k))
        .collect::<Result<Vec<_>>>()?;
    let dst = cx.output(node);
    let outer: usize = out[..axis].iter().product();
    let inner: usize = out[axis + 1..].iter().product();
    let out_cols = (out[axis] * inner) as i64;
    let mut transfers = Vec::new();
    let mut at = 0usize;
    for (s, src) in in_shapes.iter().zip(srcs) {
        let cols = s[axis] * inner;
        transfers.push(Transfer {
            extents: vec![outer, cols],
            src: Some(Side {
                buf: src,
                sample: (outer * cols) as i64,
                offset: 0,
                coef: vec![cols as i64, 1],
            }),
            dst: Side {
                buf: dst,
                sample: outer as i64 * out_cols,
                offset: (at * inner) as i64,
                coef: vec![out_cols, 1],
            },
        });
        at += s[axis];
    }
    transfer_kernel(cx, &format!("{name}.forward"), &transfers);
    Ok(())
}

/// Backward pass of an elementwise merge, given the gradient `dy` of its output (as the
/// reference, `reference::merge_grad`): Add passes `dy` to every input; Subtract `dy`
/// and `−dy`; Average `dy / n`. Multiply, Maximum and Minimum follow TensorFlow's chain
/// rule back through Keras's left fold `out_k = op(out_{k−1}, x_k)` (see [`chain_backward`]),
/// so Maximum/Minimum send `dy` to the input that won the fold — the first one on ties.
pub fn backward(cx: &mut Cx, node: NodeId, kind: MergeKind, dy: BufId) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, len, arity) = (
        n.name.clone(),
        n.shape.iter().product::<usize>(),
        n.inputs.len(),
    );
    let xs = (0..arity)
        .map(|k| cx.input(node, k))
        .collect::<Result<Vec<_>>>()?;
    if matches!(
        kind,
        MergeKind::Multiply | MergeKind::Maximum | MergeKind::Minimum
    ) && arity > 1
    {
        return chain_backward(cx, node, kind, dy, &xs);
    }
    for i in 0..arity {
        if matches!(
            kind,
            MergeKind::Add | MergeKind::Multiply | MergeKind::Maximum | MergeKind::Minimum
        ) || (kind == MergeKind::Subtract && i == 0)
        {
            cx.grad_alias(node, i, dy)?;
            continue;
        }
        let dx = cx.grad_input(node, i)?;
        let mut kb = KernelBuilder::new(format!("{name}.backward_{i}"));
        let b = kb.var("b");
        let e = kb.var("e");
        let idx = Affine::var(b).scale(len as i64).plus_term(e, 1);
        let g = load(dy, idx.clone());
        let value = match kind {
            MergeKind::Average => bin(BinOp::Div, g, Expr::Const(arity as f32)),
            _ => un(UnOp::Neg, g),
        };
        let store = Stmt::Store {
            buf: dx,
            index: idx,
            value,
        };
        let nest = elementwise(&mut kb, cx.batch, len, b, e, vec![store]);
        cx.push(kb.finish(vec![nest]), &[dy], &[dx]);
    }
    Ok(())
}

/// `for b (parallel) { for e (f32x4 lanes, scalar tail: [`lanes_with_tail`]) { body } }`.
fn elementwise(
    kb: &mut KernelBuilder,
    batch: usize,
    len: usize,
    b: Var,
    e: Var,
    body: Vec<Stmt>,
) -> Stmt {
    let tail = kb.var("e_t");
    for_(
        b,
        batch as u64,
        LoopKind::Parallel,
        lanes_with_tail(e, tail, len, body),
    )
}

/// Multiply/Maximum/Minimum backward in one kernel whose size is linear in the number of
/// inputs `n` (TensorFlow's gradient of Keras's fold, step by step). Per element:
///
/// 1. `dx_k ← out_{k−1}` for `k ≥ 1` (the forward prefixes `out_0 = x_0`,
///    `out_k = op(out_{k−1}, x_k)`, recomputed with the forward's operation);
/// 2. `g ← dy` (held in `dx_0`), then for `k = n−1 … 1`: Multiply
///    `dx_k ← out_{k−1} · g`, `g ← g · x_k`; Maximum (Minimum) with
///    `c = out_{k−1} ≥ x_k` (`≤`, TF's `MaximumGrad` mask): `dx_k ← c ? 0 : g`,
///    `g ← c ? g : 0` (through a scratch tensor); finally `dx_0 = g`.
fn chain_backward(
    cx: &mut Cx,
    node: NodeId,
    kind: MergeKind,
    dy: BufId,
    xs: &[BufId],
) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, len) = (n.name.clone(), n.shape.iter().product::<usize>());
    let dxs = (0..xs.len())
        .map(|k| cx.grad_input(node, k))
        .collect::<Result<Vec<_>>>()?;
    let idx = Affine::var(0).scale(len as i64).plus_term(1, 1);
    let at = |buf: BufId| load(buf, idx.clone());
    let set = |buf: BufId, value: Expr| Stmt::Store {
        buf,
        index: idx.clone(),
        value,
    };
    let (op, cmp) = match kind {
        MergeKind::Maximum => (BinOp::Max, CmpOp::Ge),
        MergeKind::Minimum => (BinOp::Min, CmpOp::Le),
        _ => (BinOp::Mul, CmpOp::Ge),
    };
    let mut body = vec![set(dxs[1], at(xs[0]))];
    for k in 2..xs.len() {
        body.push(set(dxs[k], bin(op, at(dxs[k - 1]), at(xs[k - 1]))));
    }
    body.push(set(dxs[0], at(dy)));
    let scratch = (kind != MergeKind::Multiply).then(|| cx.temp(cx.batch * len));
    for k in (1..xs.len()).rev() {
        let g = at(dxs[0]);
        match scratch {
            None => {
                body.push(set(dxs[k], bin(BinOp::Mul, at(dxs[k]), g.clone())));
                body.push(set(dxs[0], bin(BinOp::Mul, g, at(xs[k]))));
            }
            Some(t) => {
                let pick = |yes: Expr, no: Expr| Expr::Select {
                    cmp,
                    a: Box::new(at(dxs[k])),
                    b: Box::new(at(xs[k])),
                    t: Box::new(yes),
                    f: Box::new(no),
                };
                body.push(set(t, pick(g.clone(), Expr::Const(0.0))));
                body.push(set(dxs[k], pick(Expr::Const(0.0), g)));
                body.push(set(dxs[0], at(t)));
            }
        }
    }
    let mut reads = xs.to_vec();
    reads.push(dy);
    let mut writes = dxs.clone();
    writes.extend(scratch);
    push_chunked(
        cx,
        &format!("{name}.backward"),
        len,
        body,
        CHAIN_KERNEL,
        &reads,
        &writes,
    );
    Ok(())
}

/// Backward pass of Concatenate: each input's gradient is its slice of `dy` (the forward
/// transfers with source and destination swapped).
pub fn concatenate_backward(cx: &mut Cx, node: NodeId, axis: usize, dy: BufId) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, out) = (n.name.clone(), n.shape.clone());
    let in_shapes: Vec<Vec<usize>> = n
        .inputs
        .iter()
        .map(|&i| cx.graph.nodes[i].shape.clone())
        .collect();
    let outer: usize = out[..axis].iter().product();
    let inner: usize = out[axis + 1..].iter().product();
    let out_cols = (out[axis] * inner) as i64;
    let mut transfers = Vec::new();
    let mut at = 0usize;
    for (k, s) in in_shapes.iter().enumerate() {
        let dx = cx.grad_input(node, k)?;
        let cols = s[axis] * inner;
        transfers.push(Transfer {
            extents: vec![outer, cols],
            src: Some(Side {
                buf: dy,
                sample: outer as i64 * out_cols,
                offset: (at * inner) as i64,
                coef: vec![out_cols, 1],
            }),
            dst: Side {
                buf: dx,
                sample: (outer * cols) as i64,
                offset: 0,
                coef: vec![cols as i64, 1],
            },
        });
        at += s[axis];
    }
    transfer_kernel(cx, &format!("{name}.backward"), &transfers);
    Ok(())
}
