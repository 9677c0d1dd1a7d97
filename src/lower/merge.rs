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
use crate::loop_ir::{bin, for_, load, Affine, BinOp, Expr, KernelBuilder, LoopKind, Stmt};

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
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let b = kb.var("b");
    let e = kb.var("e");
    let idx = Affine::var(b).scale(len as i64).plus_term(e, 1);
    let op = match kind {
        MergeKind::Add | MergeKind::Average => BinOp::Add,
        MergeKind::Subtract => BinOp::Sub,
        MergeKind::Multiply => BinOp::Mul,
        MergeKind::Maximum => BinOp::Max,
        MergeKind::Minimum => BinOp::Min,
    };
    let mut value = load(srcs[0], idx.clone());
    for &s in &srcs[1..] {
        value = bin(op, value, load(s, idx.clone()));
    }
    if kind == MergeKind::Average {
        value = bin(BinOp::Div, value, Expr::Const(arity as f32));
    }
    let kind = if len.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let store = Stmt::Store {
        buf: dst,
        index: idx,
        value,
    };
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(e, len as u64, kind, vec![store])],
    );
    cx.push(kb.finish(vec![nest]), &srcs, &[dst]);
    Ok(())
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
