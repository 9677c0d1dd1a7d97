//! Convolutions (Conv1D/Conv2D; TF `valid`/`same`/`causal`; strides; dilation; groups;
//! both data formats) in the loop IR.
//!
//! `y[b, o, f] = act(bias[f] + Σ_{t, cl} x[b, o·s − pad + t·d, g·Cg + cl] · W[t, cl, f])`
//! with `g = f / Fg`, `W` of shape `(k…, Cg, F)` shared by every position, and
//! `pad = tf_pad_before(...)` per axis.
//!
//! Schedule, following [`super::lc`]: a parallel loop over the first output axis, serial
//! loops over the other output axes, then per batch tile a serial loop over groups and
//! over filter tiles within the group (so a tile never straddles groups and the input
//! channel `g·Cg + cl` stays affine), a register tile of `TB rows × FT filters`
//! accumulators, and serial loops over the taps and the group's channels. With
//! channels_last data and `Fg` a multiple of 4 the filter axis is `Vector(4)` (FT up to
//! 16, at most 12 f32x4 accumulators): each weight vector `W[t, cl, tile]` is contiguous
//! and reused by the TB rows. Otherwise the filter axis is unrolled (scalar fallback,
//! also for channels_first, whose output is not contiguous over filters). Taps in the
//! padding (`same`, `causal`) are skipped by guards on `o·s − pad + t·d`, the expression
//! scaled into the load's index, so the verifier proves the load in bounds. Batch rows
//! that do not fill a tile get a second nest with fresh variables. Bias and elementwise
//! activations are fused into the store; softmax-like ones go through a temporary and
//! [`softmax_kernel`].

use super::activation::{apply, is_elementwise, softmax_kernel};
use super::shape::row_major;
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::geometry::tf_pad_before;
use crate::graph::infer::split_channels;
use crate::graph::{Activation, Conv, DataFormat, NodeId, Padding};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, Expr, KernelBuilder, LoopKind, Stmt, Var,
};

/// The register tile for `fg` filters per group: `(vectorised, FT, TB)`.
pub fn register_tile(cl: bool, fg: usize, batch: usize) -> (bool, usize, usize) {
    if cl && fg.is_multiple_of(4) {
        let ft = [16, 12, 8, 4]
            .into_iter()
            .find(|t| fg.is_multiple_of(*t))
            .unwrap_or(4);
        (true, ft, (12 / (ft / 4)).clamp(1, 4).min(batch))
    } else {
        let ft = (1..=8).rev().find(|t| fg.is_multiple_of(*t)).unwrap_or(1);
        (false, ft, (12 / ft).clamp(1, 4).min(batch))
    }
}

/// Lowers the forward pass of Conv node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, cv: &Conv) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let out_shape = n.shape.clone();
    let in_shape = cx.graph.nodes[n.inputs[0]].shape.clone();
    let rank = cv.rank;
    let (in_sp, c) = split_channels(&name, &in_shape, rank, cv.data_format)?;
    let (out_sp, f) = split_channels(&name, &out_shape, rank, cv.data_format)?;
    let cl = cv.data_format == DataFormat::ChannelsLast;
    let groups = cv.groups;
    let (cg, fg) = (c / groups, f / groups);
    let (n_in, n_pos) = (
        in_sp.iter().product::<usize>(),
        out_sp.iter().product::<usize>(),
    );
    let pad: Vec<i64> = (0..rank)
        .map(|a| {
            tf_pad_before(
                in_sp[a],
                cv.kernel[a],
                cv.strides[a],
                cv.dilation[a],
                cv.padding,
            ) as i64
        })
        .collect();
    // Element strides of a spatial axis and of a channel within one input sample.
    let sp_stride = row_major(&in_sp);
    let (x_sp, x_ch): (Vec<i64>, i64) = if cl {
        (sp_stride.iter().map(|s| s * c as i64).collect(), 1)
    } else {
        (sp_stride, n_in as i64)
    };
    let k_stride = row_major(&cv.kernel);
    let o_stride = row_major(&out_sp);

    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    let bias = if cv.use_bias {
        Some(cx.param(node, "bias")?)
    } else {
        None
    };
    let elementwise = is_elementwise(&cv.activation);
    let y = cx.output(node);
    let z = if elementwise {
        y
    } else {
        cx.temp(cx.batch * n_pos * f)
    };
    let act = if elementwise {
        cv.activation.clone()
    } else {
        Activation::Linear
    };

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let batch = cx.batch;
    let (vec, ft, tb) = register_tile(cl, fg, batch);
    let fkind = if vec {
        LoopKind::Vector(4)
    } else {
        LoopKind::Unroll(ft as u32)
    };
    let acc = kb.local("acc", tb * ft);
    let p_aff = o
        .iter()
        .zip(&o_stride)
        .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));

    let mut nests = vec![(0usize, batch / tb, tb)];
    if !batch.is_multiple_of(tb) {
        nests.push(((batch / tb) * tb, 1, batch % tb));
    }
    let mut inner = Vec::new();
    for (ni, (b_base, ntiles, tb)) in nests.into_iter().enumerate() {
        let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}_{ni}"))).collect();
        let bt = kb.var(&format!("bt{ni}"));
        let gv = kb.var(&format!("g{ni}"));
        let fti = kb.var(&format!("ft{ni}"));
        let clv = kb.var(&format!("c{ni}"));
        let (bb_i, ff_i) = (kb.var(&format!("bb{ni}")), kb.var(&format!("f{ni}")));
        let (bb_a, ff_a) = (kb.var(&format!("bb{ni}a")), kb.var(&format!("f{ni}a")));
        let (bb_s, ff_s) = (kb.var(&format!("bb{ni}s")), kb.var(&format!("f{ni}s")));
        let b_of = |bb: Var| {
            Affine::constant(b_base as i64)
                .plus_term(bt, tb as i64)
                .plus_term(bb, 1)
        };
        // Filter g·Fg + tile·FT + ff.
        let f_of = |ff: Var| {
            Affine::var(gv)
                .scale(fg as i64)
                .plus_term(fti, ft as i64)
                .plus_term(ff, 1)
        };
        let acc_at = |bb: Var, ff: Var| Affine::var(bb).scale(ft as i64).plus_term(ff, 1);
        let tile = |bb: Var, ff: Var, s: Stmt| {
            for_(
                bb,
                tb as u64,
                LoopKind::Unroll(tb as u32),
                vec![for_(ff, ft as u64, fkind, vec![s])],
            )
        };
        let init = tile(
            bb_i,
            ff_i,
            Stmt::SetLocal {
                local: acc,
                index: acc_at(bb_i, ff_i),
                value: Expr::Const(0.0),
            },
        );
        // Input position of tap t on axis a: o·s − pad + t·d.
        let pos = |a: usize| {
            Affine::var(o[a])
                .scale(cv.strides[a] as i64)
                .plus_term(t[a], cv.dilation[a] as i64)
                .plus(-pad[a])
        };
        let x_at = (0..rank).fold(
            b_of(bb_a).scale((n_in * c) as i64).plus_affine(
                &Affine::var(gv)
                    .scale(cg as i64)
                    .plus_term(clv, 1)
                    .scale(x_ch),
            ),
            |acc, a| acc.plus_affine(&pos(a).scale(x_sp[a])),
        );
        let taps_flat = t
            .iter()
            .zip(&k_stride)
            .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));
        let k_at = taps_flat
            .scale(cg as i64)
            .plus_term(clv, 1)
            .scale(f as i64)
            .plus_affine(&f_of(ff_a));
        let update = tile(
            bb_a,
            ff_a,
            Stmt::SetLocal {
                local: acc,
                index: acc_at(bb_a, ff_a),
                value: fma(
                    load(x, x_at),
                    load(k, k_at),
                    load_local(acc, acc_at(bb_a, ff_a)),
                ),
            },
        );
        let mut taps = vec![for_(clv, cg as u64, LoopKind::Serial, vec![update])];
        for a in (0..rank).rev() {
            if cv.padding != Padding::Valid {
                taps = vec![Stmt::If {
                    conds: vec![(pos(a), 0, in_sp[a] as i64)],
                    body: taps,
                }];
            }
            taps = vec![for_(t[a], cv.kernel[a] as u64, LoopKind::Serial, taps)];
        }
        let y_at = if cl {
            b_of(bb_s)
                .scale((n_pos * f) as i64)
                .plus_affine(&p_aff.clone().scale(f as i64))
                .plus_affine(&f_of(ff_s))
        } else {
            b_of(bb_s)
                .scale((n_pos * f) as i64)
                .plus_affine(&f_of(ff_s).scale(n_pos as i64))
                .plus_affine(&p_aff)
        };
        let mut zval = load_local(acc, acc_at(bb_s, ff_s));
        if let Some(bias) = bias {
            zval = bin(BinOp::Add, zval, load(bias, f_of(ff_s)));
        }
        let value =
            apply(&act, zval).ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
        let store = tile(
            bb_s,
            ff_s,
            Stmt::Store {
                buf: z,
                index: y_at,
                value,
            },
        );
        let mut body = vec![init];
        body.extend(taps);
        body.push(store);
        let f_loop = for_(
            gv,
            groups as u64,
            LoopKind::Serial,
            vec![for_(fti, (fg / ft) as u64, LoopKind::Serial, body)],
        );
        inner.push(for_(bt, ntiles as u64, LoopKind::Serial, vec![f_loop]));
    }
    let mut nest = inner;
    for a in (0..rank).rev() {
        let kind = if a == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(o[a], out_sp[a] as u64, kind, nest)];
    }
    let mut reads = vec![x, k];
    reads.extend(bias);
    cx.push(kb.finish(nest), &reads, &[z]);
    if !elementwise {
        let (axis, log) = match cv.activation {
            Activation::Softmax { axis } => (axis, false),
            _ => (-1, true),
        };
        let r = out_shape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis } as usize;
        softmax_kernel(cx, &name, &out_shape, axis, log, z, y);
    }
    Ok(())
}
