//! BatchNormalization in training mode in the loop IR: batch statistics, normalization
//! with them, and the backward pass through them (forward and backward side by side; the
//! inference-mode layer is in [`super::norm`]).
//!
//! The tensor is viewed as `(outer, C, inner)` with the batch folded into `outer`.
//! Statistics (`mean`, then the biased `var = mean((x − mean)²)`, as `tf.nn.moments` and
//! the fused kernel normalize with) are per channel: one kernel whose parallel loop runs
//! over channels and sums `outer × inner` elements serially in order, so the result does
//! not depend on the thread count. They land in two buffers of the program that the host
//! reads after phase 1 to update the moving statistics
//! ([`crate::reference::norm::moving_averages`], which knows the fused/non-fused rule).
//! The reference sums in f64; these sums are f32 (a relative difference of order
//! `n·2⁻²⁴` for `n` elements per channel, far inside the training tolerance).
//!
//! Backward (`x̂ = (x − mean)/σ`, `σ = sqrt(var + ε)`, `n = outer·inner`):
//! `dβ = Σ dy`, `dγ = Σ dy·x̂`, `dx = γ/σ · (dy − Σdy/n − x̂·Σ(dy·x̂)/n)`. The per-channel
//! factors `σ`, `γ/σ`, `Σdy/n` and `Σ(dy·x̂)/n` are computed once per channel by small
//! kernels into program buffers, not per element: the same operations on the same values,
//! so the same bits, without a square root and three divisions per element.
//!
//! Schedule: channels last (`inner == 1`) with `C` a multiple of 4 — the common case of a
//! BatchNorm after a Conv, Dense or LocallyConnected layer — runs four channels per
//! `Vector(4)` lane group: the sums keep one accumulator lane per channel, each summing
//! its channel serially in order (the order of the scalar schedule, so the same bits), and
//! the elementwise `dx` loads contiguous lanes. Otherwise the sums are scalar per channel
//! and `dx` follows the inference schedule ([`super::norm`]: `Vector(4)` over `inner`
//! when a multiple of 4).

use super::Cx;
use crate::error::Result;
use crate::graph::{BatchNorm, NodeId};
use crate::loop_ir::{
    bin, for_, load, load_local, un, Affine, BinOp, BufId, BufRole, Buffer, Expr, KernelBuilder,
    LoopKind, Stmt, UnOp,
};

/// `(outer, C, inner)` of node `node`'s (batched) tensor.
fn view(cx: &Cx, node: NodeId, bn: &BatchNorm) -> (usize, usize, usize) {
    let shape = &cx.graph.nodes[node].shape;
    let c = shape[bn.axis];
    let outer = cx.batch * shape[..bn.axis].iter().product::<usize>();
    let inner: usize = shape[bn.axis + 1..].iter().product();
    (outer, c, inner)
}

/// A program buffer of `len` elements that the memory plan never shares.
fn own_buffer(cx: &mut Cx, name: String, len: usize) -> BufId {
    cx.buffers.push(Buffer {
        name,
        len,
        role: BufRole::Scratch,
        dtype: crate::loop_ir::Dtype::F32,
    });
    (cx.buffers.len() - 1) as BufId
}

/// The lanes of the channel-vectorised schedule (module docs), or `None` for scalar
/// channels.
fn channel_lanes(c: usize, inner: usize) -> Option<usize> {
    (inner == 1 && c.is_multiple_of(4)).then_some(4)
}

/// A summand of a per-channel sum, built from the element index and the channel index.
type Term<'a> = &'a dyn Fn(&Affine, &Affine) -> Expr;

/// Per-channel sums over `(outer, inner)` in order: `dst_k[ch] = (Σ term_k) · scale_k`,
/// each channel summed serially in element order, on every schedule.
fn channel_sums(
    cx: &mut Cx,
    name: String,
    (outer, c, inner): (usize, usize, usize),
    sums: &[(BufId, f32, Term)],
    reads: &[BufId],
) {
    let mut kb = KernelBuilder::new(name);
    let lanes = channel_lanes(c, inner);
    if let Some(w) = lanes {
        kb.schedule(format!(
            "channels in Vector({w}) lanes, one accumulator each"
        ));
    }
    // The parallel loop runs over channels, or over groups of `w` channels.
    let cb = kb.var("c");
    let blocks = lanes.map_or(c, |w| c / w);
    // Each statement on the accumulators sits in a lane loop of its own (a variable is
    // bound once): `(channel index, accumulator index, wrapper)`.
    let lane = |kb: &mut KernelBuilder| -> (Affine, Affine, Box<dyn Fn(Stmt) -> Stmt>) {
        match lanes {
            Some(w) => {
                let l = kb.var("l");
                (
                    Affine::var(cb).scale(w as i64).plus_term(l, 1),
                    Affine::var(l),
                    Box::new(move |st| for_(l, w as u64, LoopKind::Vector(w as u32), vec![st])),
                )
            }
            None => (Affine::var(cb), Affine::constant(0), Box::new(|st| st)),
        }
    };
    let mut body = Vec::new();
    for (dst, scale, term) in sums {
        let acc = kb.local("sum", lanes.unwrap_or(1));
        let (_, at, wrap) = lane(&mut kb);
        body.push(wrap(Stmt::SetLocal {
            local: acc,
            index: at,
            value: Expr::Const(0.0),
        }));
        let o = kb.var("o");
        let i = kb.var("i");
        let (ch, at, wrap) = lane(&mut kb);
        let idx = Affine::var(o)
            .scale((c * inner) as i64)
            .plus_affine(&ch.clone().scale(inner as i64))
            .plus_term(i, 1);
        body.push(for_(
            o,
            outer as u64,
            LoopKind::Serial,
            vec![for_(
                i,
                inner as u64,
                LoopKind::Serial,
                vec![wrap(Stmt::SetLocal {
                    local: acc,
                    index: at.clone(),
                    value: bin(BinOp::Add, load_local(acc, at), term(&idx, &ch)),
                })],
            )],
        ));
        let (ch, at, wrap) = lane(&mut kb);
        body.push(wrap(Stmt::Store {
            buf: *dst,
            index: ch,
            value: bin(BinOp::Mul, load_local(acc, at), Expr::Const(*scale)),
        }));
    }
    let nest = for_(cb, blocks as u64, LoopKind::Parallel, body);
    let writes: Vec<BufId> = sums.iter().map(|s| s.0).collect();
    cx.push(kb.finish(vec![nest]), reads, &writes);
}

/// A per-channel value, built from the channel index.
type ChannelValue<'a> = &'a dyn Fn(&Affine) -> Expr;

/// A kernel storing `value(ch)` into each `(dst, value)` for every channel: the
/// per-channel factors of the backward pass (C elements, serial).
fn per_channel(
    cx: &mut Cx,
    name: String,
    c: usize,
    stores: &[(BufId, ChannelValue)],
    reads: &[BufId],
) {
    let mut kb = KernelBuilder::new(name);
    let ch = kb.var("c");
    let body = stores
        .iter()
        .map(|(dst, value)| Stmt::Store {
            buf: *dst,
            index: Affine::var(ch),
            value: value(&Affine::var(ch)),
        })
        .collect();
    let nest = for_(ch, c as u64, LoopKind::Serial, body);
    let writes: Vec<BufId> = stores.iter().map(|s| s.0).collect();
    cx.push(kb.finish(vec![nest]), reads, &writes);
}

/// Lowers the training-mode forward pass of BatchNorm node `node`: batch statistics, then
/// the normalization with them. Returns the statistics buffers `(mean, var)`.
pub fn forward(cx: &mut Cx, node: NodeId, bn: &BatchNorm) -> Result<(BufId, BufId)> {
    let name = cx.graph.nodes[node].name.clone();
    let v = view(cx, node, bn);
    let (outer, c, inner) = v;
    let n = (outer * inner) as f32;
    let x = cx.input(node, 0)?;
    let mean = own_buffer(cx, format!("{name}.batch_mean"), c);
    let var = own_buffer(cx, format!("{name}.batch_var"), c);
    channel_sums(
        cx,
        format!("{name}.batch_mean"),
        v,
        &[(mean, 1.0 / n, &|idx, _| load(x, idx.clone()))],
        &[x],
    );
    let dev = |idx: &Affine, ch: &Affine| {
        let d = bin(BinOp::Sub, load(x, idx.clone()), load(mean, ch.clone()));
        bin(BinOp::Mul, d.clone(), d)
    };
    channel_sums(
        cx,
        format!("{name}.batch_var"),
        v,
        &[(var, 1.0 / n, &dev)],
        &[x],
    );
    super::norm::normalize(cx, node, bn, mean, var)?;
    cx.saved[node] = vec![mean, var];
    Ok((mean, var))
}

/// Backward pass of a training-mode BatchNorm through its batch statistics, given the
/// gradient `dy` of its output.
pub fn backward(cx: &mut Cx, node: NodeId, bn: &BatchNorm, dy: BufId) -> Result<()> {
    let name = cx.graph.nodes[node].name.clone();
    let v = view(cx, node, bn);
    let (outer, c, inner) = v;
    let n = (outer * inner) as f32;
    let (mean, var) = match cx.saved[node].as_slice() {
        [m, s] => (*m, *s),
        _ => {
            return Err(crate::error::Error::internal(format!(
                "batch norm '{name}': no batch statistics saved"
            )))
        }
    };
    let x = cx.input(node, 0)?;
    // σ per channel, once (the same `sqrt(var + ε)` the forward pass divides by).
    let sd = own_buffer(cx, format!("{name}.sd"), c);
    per_channel(
        cx,
        format!("{name}.backward_sd"),
        c,
        &[(sd, &|ch| {
            un(
                UnOp::Sqrt,
                bin(BinOp::Add, load(var, ch.clone()), Expr::Const(bn.epsilon)),
            )
        })],
        &[var],
    );
    let xhat = |idx: &Affine, ch: &Affine| {
        bin(
            BinOp::Div,
            bin(BinOp::Sub, load(x, idx.clone()), load(mean, ch.clone())),
            load(sd, ch.clone()),
        )
    };
    let sum_dy = own_buffer(cx, format!("{name}.sum_dy"), c);
    let sum_dy_xhat = own_buffer(cx, format!("{name}.sum_dy_xhat"), c);
    let dy_xhat = |idx: &Affine, ch: &Affine| bin(BinOp::Mul, load(dy, idx.clone()), xhat(idx, ch));
    channel_sums(
        cx,
        format!("{name}.backward_sums"),
        v,
        &[
            (sum_dy, 1.0, &|idx, _| load(dy, idx.clone())),
            (sum_dy_xhat, 1.0, &dy_xhat),
        ],
        &[x, dy, mean, sd],
    );
    for (param, sum, on) in [
        ("beta", sum_dy, bn.center),
        ("gamma", sum_dy_xhat, bn.scale),
    ] {
        if on {
            let d = cx.dparam(node, param)?;
            per_channel(
                cx,
                format!("{name}.backward_d{param}"),
                c,
                &[(d, &|ch| load(sum, ch.clone()))],
                &[sum],
            );
        }
    }
    let gamma = if bn.scale {
        Some(cx.param(node, "gamma")?)
    } else {
        None
    };
    // γ/σ, Σdy/n and Σ(dy·x̂)/n per channel, once.
    let scale = own_buffer(cx, format!("{name}.dx_scale"), c);
    let mean_dy = own_buffer(cx, format!("{name}.mean_dy"), c);
    let mean_dy_xhat = own_buffer(cx, format!("{name}.mean_dy_xhat"), c);
    let g = |ch: &Affine| gamma.map_or(Expr::Const(1.0), |g| load(g, ch.clone()));
    let per_n =
        |buf: BufId| move |ch: &Affine| bin(BinOp::Div, load(buf, ch.clone()), Expr::Const(n));
    let mut reads = vec![sd, sum_dy, sum_dy_xhat];
    reads.extend(gamma);
    per_channel(
        cx,
        format!("{name}.backward_factors"),
        c,
        &[
            (scale, &|ch| bin(BinOp::Div, g(ch), load(sd, ch.clone()))),
            (mean_dy, &per_n(sum_dy)),
            (mean_dy_xhat, &per_n(sum_dy_xhat)),
        ],
        &reads,
    );
    let dx = cx.grad_input(node, 0)?;
    let view = super::norm::View::new(cx, node, bn)?;
    let mut kb = KernelBuilder::new(format!("{name}.backward_dx"));
    let vars = [kb.var("b"), kb.var("o"), kb.var("c"), kb.var("i")];
    let [b, o, ch, i] = vars;
    let ch = Affine::var(ch);
    let idx = view.at(b, o, ch.clone(), i);
    let centered = bin(
        BinOp::Sub,
        bin(BinOp::Sub, load(dy, idx.clone()), load(mean_dy, ch.clone())),
        bin(BinOp::Mul, xhat(&idx, &ch), load(mean_dy_xhat, ch.clone())),
    );
    let value = bin(BinOp::Mul, load(scale, ch), centered);
    let store = Stmt::Store {
        buf: dx,
        index: idx,
        value,
    };
    let nest = view.nest(cx.batch, vars, store);
    cx.push(
        kb.finish(vec![nest]),
        &[x, dy, mean, sd, scale, mean_dy, mean_dy_xhat],
        &[dx],
    );
    Ok(())
}
