//! Global max/average pooling (1D/2D/3D, both data formats), forward and backward.
//!
//! Forward: a parallel loop over the batch, a tile of channels (see [`channel_tile`]) and a
//! serial loop over all spatial positions; the mean divides by their count. `keepdims`
//! does not change the memory order of the `(B, C)` result.
//!
//! Backward ([`global_backward`]): batch rows in parallel, every `dx` element stored once.
//! The mean gives `dy / n` to every position (the sample walked in memory order, the
//! contiguous axis in `Vector(4)` lanes when a multiple of 4). The max follows
//! `tf.reduce_max`'s gradient (Keras's global max pooling is `reduce_max`), not
//! `MaxPoolGrad`'s: a first pass counts the positions equal to the maximum `y`, a second
//! stores `(x == y) / count · dy` in that order, so ties share `dy` evenly and a NaN
//! maximum (no position equal to it) gives `0 / 0 · dy` = NaN everywhere, as TensorFlow
//! does. The count is an f32 sum, exact up to 2^24 tied positions.

use super::{chan_index, channel_tile, select, zero_locals};
use crate::error::Result;
use crate::graph::infer::split_channels;
use crate::graph::{DataFormat, NodeId, PoolKind};
use crate::loop_ir::{
    bin, for_, load, load_local, Affine, BinOp, BufId, CmpOp, Expr, KernelBuilder, LoopKind, Stmt,
    Var,
};
use crate::lower::Cx;

/// Lowers GlobalMax/GlobalAveragePooling node `node` (`keepdims` does not change the
/// memory order of the `(B, C)` result).
pub fn global(
    cx: &mut Cx,
    node: NodeId,
    kind: PoolKind,
    rank: usize,
    df: DataFormat,
) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let in_shape = cx.graph.nodes[n.inputs[0]].shape.clone();
    let (in_sp, c) = split_channels(&name, &in_shape, rank, df)?;
    let cl = df == DataFormat::ChannelsLast;
    let n_in: usize = in_sp.iter().product();
    let x = cx.input(node, 0)?;
    let y = cx.output(node);

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let b = kb.var("b");
    let cti = kb.var("ct");
    let sp = kb.var("sp");
    let (cc_i, cc_u, cc_s) = (kb.var("c_i"), kb.var("c_u"), kb.var("c_s"));
    let (ckind, ct) = channel_tile(cl, c);
    let acc = kb.local("acc", ct);
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let (init, op) = match kind {
        PoolKind::Max => (f32::NEG_INFINITY, BinOp::Max),
        PoolKind::Average => (0.0, BinOp::Add),
    };
    let set = |cc: Var, value: Expr| {
        for_(
            cc,
            ct as u64,
            ckind,
            vec![Stmt::SetLocal {
                local: acc,
                index: Affine::var(cc),
                value,
            }],
        )
    };
    let x_at = Affine::var(b)
        .scale((n_in * c) as i64)
        .plus_affine(&chan_index(cl, Affine::var(sp), ch(cc_u), c, n_in));
    let update = set(
        cc_u,
        bin(op, load(x, x_at), load_local(acc, Affine::var(cc_u))),
    );
    let mut result = load_local(acc, Affine::var(cc_s));
    if kind == PoolKind::Average {
        result = bin(BinOp::Div, result, Expr::Const(n_in as f32));
    }
    let store = for_(
        cc_s,
        ct as u64,
        ckind,
        vec![Stmt::Store {
            buf: y,
            index: Affine::var(b).scale(c as i64).plus_affine(&ch(cc_s)),
            value: result,
        }],
    );
    let body = vec![
        set(cc_i, Expr::Const(init)),
        for_(sp, n_in as u64, LoopKind::Serial, vec![update]),
        store,
    ];
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(cti, (c / ct) as u64, LoopKind::Serial, body)],
    );
    cx.push(kb.finish(vec![nest]), &[x], &[y]);
    Ok(())
}

/// Backward pass of GlobalMax/GlobalAveragePooling node `node` given `dy` (`(B, C)` in
/// memory; see the module docs).
pub fn global_backward(
    cx: &mut Cx,
    node: NodeId,
    kind: PoolKind,
    rank: usize,
    df: DataFormat,
    dy: BufId,
) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let in_shape = cx.graph.nodes[n.inputs[0]].shape.clone();
    let (in_sp, c) = split_channels(&name, &in_shape, rank, df)?;
    let cl = df == DataFormat::ChannelsLast;
    let n_in: usize = in_sp.iter().product();
    let x = cx.input(node, 0)?;
    let dx = cx.grad_input(node, 0)?;
    let mut kb = KernelBuilder::new(format!("{name}.backward"));
    let b = kb.var("b");
    let sample = Affine::var(b).scale((n_in * c) as i64);
    let dy_row = Affine::var(b).scale(c as i64);
    if kind == PoolKind::Average {
        // The sample as (outer, inner) with `inner` contiguous.
        let (outer, inner) = if cl { (n_in, c) } else { (c, n_in) };
        let (u, v) = (kb.var("u"), kb.var("v"));
        let ch = if cl { v } else { u };
        let store = Stmt::Store {
            buf: dx,
            index: sample.plus_term(u, inner as i64).plus_term(v, 1),
            value: bin(
                BinOp::Div,
                load(dy, dy_row.plus_term(ch, 1)),
                Expr::Const(n_in as f32),
            ),
        };
        let vkind = if inner.is_multiple_of(4) {
            LoopKind::Vector(4)
        } else {
            LoopKind::Serial
        };
        let row = for_(
            u,
            outer as u64,
            LoopKind::Serial,
            vec![for_(v, inner as u64, vkind, vec![store])],
        );
        let nest = for_(b, cx.batch as u64, LoopKind::Parallel, vec![row]);
        cx.push(kb.finish(vec![nest]), &[dy], &[dx]);
        return Ok(());
    }
    let ym = cx.value(node)?;
    let cti = kb.var("ct");
    let (ckind, ct) = channel_tile(cl, c);
    let count = kb.local("count", ct);
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let lanes = |cc: Var, body: Vec<Stmt>| for_(cc, ct as u64, ckind, body);
    let x_at = |sp: Var, cc: Var| {
        sample
            .clone()
            .plus_affine(&chan_index(cl, Affine::var(sp), ch(cc), c, n_in))
    };
    let y_at = |cc: Var| dy_row.clone().plus_affine(&ch(cc));
    // `x == y` as 1/0 (ordered: 0 when either is NaN), from the two comparisons the
    // loop IR has.
    let equal = |sp: Var, cc: Var| {
        let (xv, yv) = (load(x, x_at(sp, cc)), load(ym, y_at(cc)));
        select(
            CmpOp::Ge,
            xv.clone(),
            yv.clone(),
            select(CmpOp::Le, xv, yv, Expr::Const(1.0), Expr::Const(0.0)),
            Expr::Const(0.0),
        )
    };
    let (c0, sp1, c1) = (kb.var("c0"), kb.var("sp"), kb.var("c1"));
    let (sp2, c2) = (kb.var("sp_2"), kb.var("c2"));
    let tally = Stmt::SetLocal {
        local: count,
        index: Affine::var(c1),
        value: bin(
            BinOp::Add,
            load_local(count, Affine::var(c1)),
            equal(sp1, c1),
        ),
    };
    // `tf.reduce_max`'s gradient, in its order: `(indicator / count) · dy`.
    let share = Stmt::Store {
        buf: dx,
        index: x_at(sp2, c2),
        value: bin(
            BinOp::Mul,
            bin(
                BinOp::Div,
                equal(sp2, c2),
                load_local(count, Affine::var(c2)),
            ),
            load(dy, y_at(c2)),
        ),
    };
    let tile = vec![
        lanes(c0, zero_locals(&[count], c0)),
        for_(
            sp1,
            n_in as u64,
            LoopKind::Serial,
            vec![lanes(c1, vec![tally])],
        ),
        for_(
            sp2,
            n_in as u64,
            LoopKind::Serial,
            vec![lanes(c2, vec![share])],
        ),
    ];
    let per_row = vec![for_(cti, (c / ct) as u64, LoopKind::Serial, tile)];
    let nest = for_(b, cx.batch as u64, LoopKind::Parallel, per_row);
    cx.push(kb.finish(vec![nest]), &[x, ym, dy], &[dx]);
    Ok(())
}
