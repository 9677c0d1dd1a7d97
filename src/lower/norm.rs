//! BatchNormalization at inference in the loop IR, forward and backward.
//!
//! `y = (x − mean[c]) / sqrt(var[c] + eps) · gamma[c] + beta[c]`, evaluated per element in
//! the reference's operation order (so results agree bit for bit up to the `Sqrt`), with
//! the statistics read from the parameter buffers at run time: nothing is folded from
//! parameter values at lowering time, so the module stays valid when weights change.
//! `gamma` is absent without `scale` and `beta` without `center` (the multiply and add are
//! then skipped).
//!
//! Schedule: the tensor is viewed as `(B, outer, C, inner)`; a parallel loop over the batch
//! wraps serial loops over `outer` and `C` and an innermost loop over `inner`
//! (`Vector(4)` when a multiple of 4, statistics broadcast). When `inner == 1` (channels
//! last) the channel loop is innermost instead and is vectorised over `C` when `C` is a
//! multiple of 4, the statistics then loaded as contiguous lanes.
//!
//! Backward ([`backward`]; the moving statistics are constants and get no gradient):
//! `dx = dy · gamma / sd` with the forward schedule, and one kernel for
//! `dgamma[c] = Σ dy · ((x − mean) / sd)` and `dbeta[c] = Σ dy` (each only when the
//! parameter exists), parallel over channels (tiles of `Vector(4)` lanes when channels
//! are innermost and a multiple of 4), the sums serial over batch, `outer` and `inner` in
//! order — the reference's order, so no parallel loop reduces over the batch.

use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{BatchNorm, NodeId};
use crate::loop_ir::{
    bin, for_, load, load_local, un, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind, Stmt,
    UnOp, Var,
};

/// The tensor of a BatchNorm node viewed as `(B, outer, C, inner)`.
pub(super) struct View {
    name: String,
    c: usize,
    outer: usize,
    inner: usize,
}

impl View {
    pub(super) fn new(cx: &Cx, node: NodeId, bn: &BatchNorm) -> Result<View> {
        let n = &cx.graph.nodes[node];
        let c = *n.shape.get(bn.axis).ok_or_else(|| {
            Error::internal(format!("batch norm '{}': axis out of range", n.name))
        })?;
        Ok(View {
            name: n.name.clone(),
            c,
            outer: n.shape[..bn.axis].iter().product(),
            inner: n.shape[bn.axis + 1..].iter().product(),
        })
    }

    /// Flat index of element `(b, o, ch, i)`.
    pub(super) fn at(&self, b: Var, o: Var, ch: Affine, i: Var) -> Affine {
        Affine::var(b)
            .scale((self.outer * self.c * self.inner) as i64)
            .plus_term(o, (self.c * self.inner) as i64)
            .plus_affine(&ch.scale(self.inner as i64))
            .plus_term(i, 1)
    }

    /// The elementwise nest around `store` (see the module docs for the schedule).
    pub(super) fn nest(&self, batch: usize, [b, o, ch, i]: [Var; 4], store: Stmt) -> Stmt {
        let body = if self.inner == 1 {
            // Channels innermost: i has extent 1 and sits outside.
            for_(
                i,
                1,
                LoopKind::Serial,
                vec![for_(ch, self.c as u64, vec_or_serial(self.c), vec![store])],
            )
        } else {
            for_(
                ch,
                self.c as u64,
                LoopKind::Serial,
                vec![for_(
                    i,
                    self.inner as u64,
                    vec_or_serial(self.inner),
                    vec![store],
                )],
            )
        };
        for_(
            b,
            batch as u64,
            LoopKind::Parallel,
            vec![for_(o, self.outer as u64, LoopKind::Serial, vec![body])],
        )
    }
}

fn vec_or_serial(e: usize) -> LoopKind {
    if e.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    }
}

/// `sqrt(var[ch] + eps)`.
fn std_dev(var: BufId, ch: Affine, eps: f32) -> Expr {
    un(UnOp::Sqrt, bin(BinOp::Add, load(var, ch), Expr::Const(eps)))
}

/// Lowers the forward pass of BatchNorm node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, bn: &BatchNorm) -> Result<()> {
    let mean = cx.param(node, "moving_mean")?;
    let var = cx.param(node, "moving_variance")?;
    normalize(cx, node, bn, mean, var)
}

/// Appends the normalization of node `node`'s input with the per-channel statistics in
/// buffers `mean` and `var` (the moving statistics at inference, the batch statistics in
/// training mode, see [`super::norm_train`]), writing the node's output.
pub fn normalize(cx: &mut Cx, node: NodeId, bn: &BatchNorm, mean: BufId, var: BufId) -> Result<()> {
    let view = View::new(cx, node, bn)?;
    let x = cx.input(node, 0)?;
    let gamma = if bn.scale {
        Some(cx.param(node, "gamma")?)
    } else {
        None
    };
    let beta = if bn.center {
        Some(cx.param(node, "beta")?)
    } else {
        None
    };
    let y = cx.output(node);

    let mut kb = KernelBuilder::new(format!("{}.forward", view.name));
    let vars = [kb.var("b"), kb.var("o"), kb.var("c"), kb.var("i")];
    let [b, o, ch, i] = vars;
    let at = view.at(b, o, Affine::var(ch), i);
    let stat = |buf| load(buf, Affine::var(ch));
    // (x − mean) / sqrt(var + eps) · gamma + beta
    let mut value = bin(
        BinOp::Div,
        bin(BinOp::Sub, load(x, at.clone()), stat(mean)),
        std_dev(var, Affine::var(ch), bn.epsilon),
    );
    if let Some(g) = gamma {
        value = bin(BinOp::Mul, value, stat(g));
    }
    if let Some(bt) = beta {
        value = bin(BinOp::Add, value, stat(bt));
    }
    let store = Stmt::Store {
        buf: y,
        index: at,
        value,
    };
    let nest = view.nest(cx.batch, vars, store);
    let mut reads = vec![x, mean, var];
    reads.extend(gamma);
    reads.extend(beta);
    cx.push(kb.finish(vec![nest]), &reads, &[y]);
    Ok(())
}

/// Backward pass of BatchNorm node `node` at inference given `dy` (see the module docs).
/// `moving_mean` and `moving_variance` get no gradient here (the driver zero-fills them).
pub fn backward(cx: &mut Cx, node: NodeId, bn: &BatchNorm, dy: BufId) -> Result<()> {
    let view = View::new(cx, node, bn)?;
    let x = cx.input(node, 0)?;
    let gamma = if bn.scale {
        Some(cx.param(node, "gamma")?)
    } else {
        None
    };
    let mean = cx.param(node, "moving_mean")?;
    let var = cx.param(node, "moving_variance")?;

    // dx = dy · gamma / sd, elementwise.
    let dx = cx.grad_input(node, 0)?;
    let mut kb = KernelBuilder::new(format!("{}.backward_dx", view.name));
    let vars = [kb.var("b"), kb.var("o"), kb.var("c"), kb.var("i")];
    let [b, o, ch, i] = vars;
    let at = view.at(b, o, Affine::var(ch), i);
    let mut value = load(dy, at.clone());
    if let Some(g) = gamma {
        value = bin(BinOp::Mul, value, load(g, Affine::var(ch)));
    }
    let value = bin(BinOp::Div, value, std_dev(var, Affine::var(ch), bn.epsilon));
    let store = Stmt::Store {
        buf: dx,
        index: at,
        value,
    };
    let nest = view.nest(cx.batch, vars, store);
    let mut reads = vec![dy, var];
    reads.extend(gamma);
    cx.push(kb.finish(vec![nest]), &reads, &[dx]);

    let dgamma = if bn.scale {
        Some(cx.dparam(node, "gamma")?)
    } else {
        None
    };
    let dbeta = if bn.center {
        Some(cx.dparam(node, "beta")?)
    } else {
        None
    };
    if dgamma.is_none() && dbeta.is_none() {
        return Ok(());
    }
    // dgamma, dbeta: channel tiles in parallel, sums serial over (b, outer, inner).
    let (ckind, ct) = if view.inner == 1 && view.c.is_multiple_of(4) {
        let ct = [16, 12, 8, 4]
            .into_iter()
            .find(|t| view.c.is_multiple_of(*t))
            .unwrap_or(4);
        (LoopKind::Vector(4), ct)
    } else {
        (LoopKind::Unroll(1), 1)
    };
    let mut kb = KernelBuilder::new(format!("{}.backward_dparams", view.name));
    let (cti, b, o, i) = (kb.var("ct"), kb.var("b"), kb.var("o"), kb.var("i"));
    let (cc_i, cc_a, cc_s) = (kb.var("cc"), kb.var("cc_a"), kb.var("cc_s"));
    let (acc_g, acc_b) = (kb.local("acc_g", ct), kb.local("acc_b", ct));
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let lanes = |cc: Var, body: Vec<Stmt>| for_(cc, ct as u64, ckind, body);
    let set = |local, cc: Var, value| Stmt::SetLocal {
        local,
        index: Affine::var(cc),
        value,
    };
    let sum = |local, cc: Var, term| {
        set(
            local,
            cc,
            bin(BinOp::Add, load_local(local, Affine::var(cc)), term),
        )
    };
    let (mut init, mut update, mut store) = (Vec::new(), Vec::new(), Vec::new());
    let dy_at = load(dy, view.at(b, o, ch(cc_a), i));
    let mut parts = Vec::new();
    if let Some(dg) = dgamma {
        // dy · ((x − mean) / sd)
        let xhat = bin(
            BinOp::Div,
            bin(
                BinOp::Sub,
                load(x, view.at(b, o, ch(cc_a), i)),
                load(mean, ch(cc_a)),
            ),
            std_dev(var, ch(cc_a), bn.epsilon),
        );
        parts.push((acc_g, dg, bin(BinOp::Mul, dy_at.clone(), xhat)));
    }
    if let Some(db) = dbeta {
        parts.push((acc_b, db, dy_at));
    }
    for (acc, dst, term) in parts {
        init.push(set(acc, cc_i, Expr::Const(0.0)));
        update.push(sum(acc, cc_a, term));
        store.push(Stmt::Store {
            buf: dst,
            index: ch(cc_s),
            value: load_local(acc, Affine::var(cc_s)),
        });
    }
    let rows = for_(
        b,
        cx.batch as u64,
        LoopKind::Serial,
        vec![for_(
            o,
            view.outer as u64,
            LoopKind::Serial,
            vec![for_(
                i,
                view.inner as u64,
                LoopKind::Serial,
                vec![lanes(cc_a, update)],
            )],
        )],
    );
    let body = vec![lanes(cc_i, init), rows, lanes(cc_s, store)];
    let nest = for_(cti, (view.c / ct) as u64, LoopKind::Parallel, body);
    let writes: Vec<BufId> = dgamma.into_iter().chain(dbeta).collect();
    cx.push(kb.finish(vec![nest]), &[x, dy, mean, var], &writes);
    Ok(())
}
