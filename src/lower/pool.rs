//! Max/average pooling (TensorFlow `valid`/`same`) and global pooling in the loop IR.
//!
//! Pooling: a parallel loop over the first output axis, serial loops over the other output
//! axes and the batch, then a tile of channels held in a local accumulator: `Vector(4)`
//! over up to 16 contiguous channels when the data is channels_last and `C` is a multiple
//! of 4, otherwise one channel at a time. The window taps are serial loops; with `same`
//! padding each tap is guarded by `0 ≤ o·s − pad + t < n` (the affine expression scaled
//! into the index, so the verifier proves the load in bounds), which also gives TF's
//! semantics: padding never contributes. Max starts from −∞ and takes
//! `max(x, acc)` (a NaN input leaves the accumulator, like `f32::max`); average divides the
//! in-bounds sum by the number of in-bounds taps, a compile-time count per output position
//! (a constant when every window is full, else a `Const` buffer indexed by position).
//!
//! Global pooling: a parallel loop over the batch, a tile of channels as above, and a
//! serial loop over all spatial positions; the mean divides by their count.

use super::shape::row_major;
use super::Cx;
use crate::error::Result;
use crate::graph::geometry::tf_pad_before;
use crate::graph::infer::split_channels;
use crate::graph::{DataFormat, NodeId, Padding, Pool, PoolKind};
use crate::loop_ir::{
    bin, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind, Stmt, Var,
};

/// Channel tile: `(kind of the channel loop, channels per tile)`.
fn channel_tile(cl: bool, c: usize) -> (LoopKind, usize) {
    if cl && c.is_multiple_of(4) {
        let ct = [16, 12, 8, 4]
            .into_iter()
            .find(|t| c.is_multiple_of(*t))
            .unwrap_or(4);
        (LoopKind::Vector(4), ct)
    } else {
        // A one-element tile under a fully unrolled loop keeps the local a register.
        (LoopKind::Unroll(1), 1)
    }
}

/// What average pooling divides by.
#[derive(Clone, Copy)]
enum Divisor {
    /// Every window is full: the window size.
    Const(f32),
    /// A `Const` buffer of in-bounds tap counts, one per output position.
    Counts(BufId),
}

/// Number of in-bounds taps of window `o` on one axis.
fn taps_in_bounds(o: usize, k: usize, s: usize, pad: usize, n: usize) -> usize {
    (0..k)
        .filter(|&t| {
            let i = (o * s + t) as i64 - pad as i64;
            i >= 0 && i < n as i64
        })
        .count()
}

/// Where channel `ch` of spatial offset `sp` (both affine) lives in one sample.
fn chan_index(cl: bool, sp: Affine, ch: Affine, c: usize, n_sp: usize) -> Affine {
    if cl {
        sp.scale(c as i64).plus_affine(&ch)
    } else {
        ch.scale(n_sp as i64).plus_affine(&sp)
    }
}

/// Lowers MaxPooling/AveragePooling node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, pl: &Pool) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let in_shape = cx.graph.nodes[n.inputs[0]].shape.clone();
    let (in_sp, c) = split_channels(&name, &in_shape, pl.rank, pl.data_format)?;
    let (out_sp, _) = split_channels(&name, &n.shape, pl.rank, pl.data_format)?;
    let cl = pl.data_format == DataFormat::ChannelsLast;
    let rank = pl.rank;
    let pad: Vec<usize> = (0..rank)
        .map(|a| tf_pad_before(in_sp[a], pl.pool[a], pl.strides[a], 1, pl.padding))
        .collect();
    let (n_in, n_out) = (
        in_sp.iter().product::<usize>(),
        out_sp.iter().product::<usize>(),
    );
    let (is, os) = (row_major(&in_sp), row_major(&out_sp));
    let x = cx.input(node, 0)?;
    let y = cx.output(node);

    // Divisors of average pooling, per output position.
    let divisor = if pl.kind == PoolKind::Average {
        let mut counts = vec![0f32; n_out];
        let mut full = true;
        for (p, slot) in counts.iter_mut().enumerate() {
            let mut cnt = 1;
            for a in 0..rank {
                let o = (p / os[a] as usize) % out_sp[a];
                let t = taps_in_bounds(o, pl.pool[a], pl.strides[a], pad[a], in_sp[a]);
                full &= t == pl.pool[a];
                cnt *= t;
            }
            *slot = cnt as f32;
        }
        if full {
            Some(Divisor::Const(pl.pool.iter().product::<usize>() as f32))
        } else {
            Some(Divisor::Counts(
                cx.constant(&format!("{name}.count"), counts),
            ))
        }
    } else {
        None
    };

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
    let b = kb.var("b");
    let cti = kb.var("ct");
    let (cc_i, cc_u, cc_s) = (kb.var("c_i"), kb.var("c_u"), kb.var("c_s"));
    let (ckind, ct) = channel_tile(cl, c);
    let acc = kb.local("acc", ct);
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let p_aff = o
        .iter()
        .zip(&os)
        .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));
    let pos = |a: usize| {
        Affine::var(o[a])
            .scale(pl.strides[a] as i64)
            .plus_term(t[a], 1)
            .plus(-(pad[a] as i64))
    };
    let sp_in = (0..rank).fold(Affine::constant(0), |acc, a| {
        acc.plus_affine(&pos(a).scale(is[a]))
    });
    let x_at = |cc: Var| {
        Affine::var(b)
            .scale((n_in * c) as i64)
            .plus_affine(&chan_index(cl, sp_in.clone(), ch(cc), c, n_in))
    };
    let y_at = |cc: Var| {
        Affine::var(b)
            .scale((n_out * c) as i64)
            .plus_affine(&chan_index(cl, p_aff.clone(), ch(cc), c, n_out))
    };
    let (init, op) = match pl.kind {
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
    let update = set(
        cc_u,
        bin(op, load(x, x_at(cc_u)), load_local(acc, Affine::var(cc_u))),
    );
    let mut taps = vec![update];
    for a in (0..rank).rev() {
        if pl.padding != Padding::Valid {
            taps = vec![Stmt::If {
                conds: vec![(pos(a), 0, in_sp[a] as i64)],
                body: taps,
            }];
        }
        taps = vec![for_(t[a], pl.pool[a] as u64, LoopKind::Serial, taps)];
    }
    let mut result = load_local(acc, Affine::var(cc_s));
    match divisor {
        Some(Divisor::Const(k)) => result = bin(BinOp::Div, result, Expr::Const(k)),
        Some(Divisor::Counts(buf)) => result = bin(BinOp::Div, result, load(buf, p_aff.clone())),
        None => {}
    }
    let store = for_(
        cc_s,
        ct as u64,
        ckind,
        vec![Stmt::Store {
            buf: y,
            index: y_at(cc_s),
            value: result,
        }],
    );
    let mut body = vec![set(cc_i, Expr::Const(init))];
    body.extend(taps);
    body.push(store);
    let mut nest = vec![for_(
        b,
        cx.batch as u64,
        LoopKind::Serial,
        vec![for_(cti, (c / ct) as u64, LoopKind::Serial, body)],
    )];
    for a in (0..rank).rev() {
        let kind = if a == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(o[a], out_sp[a] as u64, kind, nest)];
    }
    let mut reads: Vec<BufId> = vec![x];
    if let Some(Divisor::Counts(buf)) = divisor {
        reads.push(buf);
    }
    cx.push(kb.finish(nest), &reads, &[y]);
    Ok(())
}

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
