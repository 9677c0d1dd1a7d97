//! Convolutions (Conv1D/Conv2D; TF `valid`/`same`/`causal`; strides; dilation; groups;
//! both data formats) in the loop IR, forward and backward.
//!
//! `y[b, o, f] = act(bias[f] + Σ_{t, cl} x[b, o·s − pad + t·d, g·Cg + cl] · W[t, cl, f])`
//! with `g = f / Fg`, `W` of shape `(k…, Cg, F)` shared by every position, and
//! `pad = tf_pad_before(...)` per axis.
//!
//! Forward schedule, following [`super::lc`]: a parallel loop over the first output axis,
//! serial loops over the other output axes, then per batch tile a serial loop over groups
//! and over filter tiles within the group (so a tile never straddles groups and the input
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
//!
//! Backward ([`backward`], given `dz`, the gradient of the pre-activation):
//! - `dW[t, cl, f] = Σ_{o, b} x[b, i(o, t), g·Cg + cl] · dz[b, o, f]`: a register tile of
//!   `CT channels × FT filters` (filters in `Vector(4)` lanes as in the forward pass) per
//!   tap, channel tile, group and filter tile, summed over the output positions and then
//!   the batch, in order; the longest of those outer loops is the parallel one, so no
//!   parallel loop reduces over the batch;
//! - `db[f] = Σ_{b, o} dz[b, o, f]` (rows in order);
//! - `dx`: per batch row (parallel) the row is zeroed, then every output position, tap
//!   and channel tile in order adds `Σ_f W[t, cl, f] · dz[b, o, f]` (filters in order) to
//!   `dx[b, i(o, t), g·Cg + cl]` — a scatter confined to the row, so threads never share an
//!   element. With channels_last data and `Cg` a multiple of 4 the channels are
//!   `Vector(4)` lanes and the kernel is first transposed to `(k…, F, Cg)` (a scratch
//!   tensor) so that `W[t, ·, f]` is contiguous over channels.
//!
//! Taps in the padding are skipped by the same guards as in the forward pass. The
//! geometry both directions share (sizes, TF padding, affine tap/input/output indices)
//! is in the `geom` submodule.

mod geom;

use super::activation::{is_elementwise, softmax_kernel};
use super::dense::bias_backward;
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{Activation, Conv, NodeId};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind, Stmt,
    Var,
};
use geom::{flat, Geom};

/// A tile over an axis of `n` elements: `(vectorised, tile)`. `Vector(4)` lanes (tile 16,
/// 12, 8 or 4) when the axis is contiguous and `n` a multiple of 4, else the largest
/// divisor of `n` up to 8 (unrolled).
fn lane_tile(contiguous: bool, n: usize) -> (bool, usize) {
    if contiguous && n.is_multiple_of(4) {
        let t = [16, 12, 8, 4]
            .into_iter()
            .find(|t| n.is_multiple_of(*t))
            .unwrap_or(4);
        (true, t)
    } else {
        (false, divisor_up_to(n, 8))
    }
}

/// The largest divisor of `n` that is at most `max` (1 at least).
fn divisor_up_to(n: usize, max: usize) -> usize {
    (1..=max.max(1))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

/// The register tile for `fg` filters per group: `(vectorised, FT, TB)`.
pub fn register_tile(cl: bool, fg: usize, batch: usize) -> (bool, usize, usize) {
    let (vec, ft) = lane_tile(cl, fg);
    let tb = if vec { 12 / (ft / 4) } else { 12 / ft };
    (vec, ft, tb.clamp(1, 4).min(batch))
}

/// Lowers the forward pass of Conv node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, cv: &Conv) -> Result<()> {
    let gm = Geom::new(cx, node, cv)?;
    let (name, rank, cg, fg) = (gm.name.clone(), gm.rank, gm.cg, gm.fg);
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
        cx.temp(cx.batch * gm.n_pos * gm.f)
    };
    let act = if elementwise {
        cv.activation.clone()
    } else {
        Activation::Linear
    };

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let batch = cx.batch;
    let (vec, ft, tb) = register_tile(gm.cl, fg, batch);
    let fkind = if vec {
        LoopKind::Vector(4)
    } else {
        LoopKind::Unroll(ft as u32)
    };
    let acc = kb.local("acc", tb * ft);

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
        let ch = Affine::var(gv).scale(cg as i64).plus_term(clv, 1);
        let x_at = gm.x_at(cv, b_of(bb_a), &o, &t, ch);
        let k_at = flat(&t, &gm.k_stride)
            .scale(cg as i64)
            .plus_term(clv, 1)
            .scale(gm.f as i64)
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
        let chans = vec![for_(clv, cg as u64, LoopKind::Serial, vec![update])];
        let taps = gm.guarded(cv, &t, &cv.kernel, &o, &t, chans);
        let value = super::mixed::epilogue(
            cx.compute,
            load_local(acc, acc_at(bb_s, ff_s)),
            bias.map(|b| load(b, f_of(ff_s))),
            &act,
        )
        .ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
        let store = tile(
            bb_s,
            ff_s,
            Stmt::Store {
                buf: z,
                index: gm.y_at(b_of(bb_s), &o, f_of(ff_s)),
                value,
            },
        );
        let mut body = vec![init];
        body.extend(taps);
        body.push(store);
        let f_loop = for_(
            gv,
            gm.groups as u64,
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
        nest = vec![for_(o[a], gm.out_sp[a] as u64, kind, nest)];
    }
    let mut reads = vec![x, k];
    reads.extend(bias);
    cx.push(kb.finish(nest), &reads, &[z]);
    if !elementwise {
        let out_shape = cx.graph.nodes[node].shape.clone();
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

/// Backward pass of Conv node `node` given `dz`, the gradient of its pre-activation
/// output: `dW`, `db` and `dx` (see the module docs for the schedules).
pub fn backward(cx: &mut Cx, node: NodeId, cv: &Conv, dz: BufId) -> Result<()> {
    let gm = Geom::new(cx, node, cv)?;
    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    let dk = cx.dparam(node, "kernel")?;
    kernel_grad(cx, &gm, cv, x, dz, dk);
    if cv.use_bias {
        let db = cx.dparam(node, "bias")?;
        if gm.cl {
            let rows = cx.batch * gm.n_pos;
            bias_backward(cx, &gm.name, dz, db, rows, gm.f);
        } else {
            bias_grad_channels_first(cx, &gm, dz, db);
        }
    }
    if cx.wants_grad(node, 0) {
        let dx = cx.grad_input(node, 0)?;
        input_grad(cx, &gm, cv, k, dz, dx);
    }
    Ok(())
}

/// `dW[t, cl, f] = Σ_{o, b} x[b, i(o, t), g·Cg + cl] · dz[b, o, f]`, one register tile of
/// `CT channels × FT filters` at a time.
fn kernel_grad(cx: &mut Cx, gm: &Geom, cv: &Conv, x: BufId, dz: BufId, dk: BufId) {
    let (rank, cg, fg) = (gm.rank, gm.cg, gm.fg);
    let (vec, ft) = lane_tile(gm.cl, fg);
    let ct = divisor_up_to(cg, if vec { 12 / (ft / 4) } else { 12 / ft });
    let fkind = if vec {
        LoopKind::Vector(4)
    } else {
        LoopKind::Unroll(ft as u32)
    };
    let mut kb = KernelBuilder::new(format!("{}.backward_dw", gm.name));
    let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
    let (cti, gv, fti) = (kb.var("ct"), kb.var("g"), kb.var("ft"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let b = kb.var("b");
    let (cc_i, ff_i) = (kb.var("cc"), kb.var("ff"));
    let (cc_a, ff_a) = (kb.var("cc_a"), kb.var("ff_a"));
    let (cc_s, ff_s) = (kb.var("cc_s"), kb.var("ff_s"));
    let acc = kb.local("acc", ct * ft);
    let acc_at = |cc: Var, ff: Var| Affine::var(cc).scale(ft as i64).plus_term(ff, 1);
    let cl_of = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let f_of = |ff: Var| {
        Affine::var(gv)
            .scale(fg as i64)
            .plus_term(fti, ft as i64)
            .plus_term(ff, 1)
    };
    let tile = |cc: Var, ff: Var, s: Stmt| {
        for_(
            cc,
            ct as u64,
            LoopKind::Unroll(ct as u32),
            vec![for_(ff, ft as u64, fkind, vec![s])],
        )
    };
    let init = tile(
        cc_i,
        ff_i,
        Stmt::SetLocal {
            local: acc,
            index: acc_at(cc_i, ff_i),
            value: Expr::Const(0.0),
        },
    );
    let ch = Affine::var(gv).scale(cg as i64).plus_affine(&cl_of(cc_a));
    let update = tile(
        cc_a,
        ff_a,
        Stmt::SetLocal {
            local: acc,
            index: acc_at(cc_a, ff_a),
            value: fma(
                load(x, gm.x_at(cv, Affine::var(b), &o, &t, ch)),
                load(dz, gm.y_at(Affine::var(b), &o, f_of(ff_a))),
                load_local(acc, acc_at(cc_a, ff_a)),
            ),
        },
    );
    let rows = vec![for_(b, cx.batch as u64, LoopKind::Serial, vec![update])];
    let sums = gm.guarded(cv, &o, &gm.out_sp, &o, &t, rows);
    let dk_at = flat(&t, &gm.k_stride)
        .scale(cg as i64)
        .plus_affine(&cl_of(cc_s))
        .scale(gm.f as i64)
        .plus_affine(&f_of(ff_s));
    let store = tile(
        cc_s,
        ff_s,
        Stmt::Store {
            buf: dk,
            index: dk_at,
            value: load_local(acc, acc_at(cc_s, ff_s)),
        },
    );
    let mut body = vec![init];
    body.extend(sums);
    body.push(store);
    // The loops around a tile, outermost first; each writes its own part of dW, so the
    // longest one can run in parallel.
    let mut loops: Vec<(Var, usize)> = t.iter().copied().zip(cv.kernel.iter().copied()).collect();
    loops.extend([(cti, cg / ct), (gv, gm.groups), (fti, fg / ft)]);
    let longest = loops
        .iter()
        .enumerate()
        .fold(0, |best, (i, l)| if l.1 > loops[best].1 { i } else { best });
    let (pv, pe) = loops.remove(longest);
    for &(v, e) in loops.iter().rev() {
        body = vec![for_(v, e as u64, LoopKind::Serial, body)];
    }
    let nest = for_(pv, pe as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[x, dz], &[dk]);
}

/// `db[f] = Σ_{b, p} dz[b, f, p]` for channels_first data (filters in parallel).
fn bias_grad_channels_first(cx: &mut Cx, gm: &Geom, dz: BufId, db: BufId) {
    let mut kb = KernelBuilder::new(format!("{}.backward_db", gm.name));
    let (fv, b, p) = (kb.var("f"), kb.var("b"), kb.var("p"));
    let acc = kb.local("acc", 1);
    let zero = Affine::constant(0);
    let at = Affine::var(b)
        .scale((gm.f * gm.n_pos) as i64)
        .plus_term(fv, gm.n_pos as i64)
        .plus_term(p, 1);
    let body = vec![
        Stmt::SetLocal {
            local: acc,
            index: zero.clone(),
            value: Expr::Const(0.0),
        },
        for_(
            b,
            cx.batch as u64,
            LoopKind::Serial,
            vec![for_(
                p,
                gm.n_pos as u64,
                LoopKind::Serial,
                vec![Stmt::SetLocal {
                    local: acc,
                    index: zero.clone(),
                    value: bin(BinOp::Add, load_local(acc, zero.clone()), load(dz, at)),
                }],
            )],
        ),
        Stmt::Store {
            buf: db,
            index: Affine::var(fv),
            value: load_local(acc, zero),
        },
    ];
    let nest = for_(fv, gm.f as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[dz], &[db]);
}

/// `dx`: per batch row (parallel), zeros, then `dx[b, i(o, t), g·Cg + cl] +=
/// Σ_f W[t, cl, f]·dz[b, o, f]` over positions, taps, groups and channel tiles in order.
fn input_grad(cx: &mut Cx, gm: &Geom, cv: &Conv, k: BufId, dz: BufId, dx: BufId) {
    let (rank, cg, fg, f) = (gm.rank, gm.cg, gm.fg, gm.f);
    let (vec, ct) = lane_tile(gm.cl, cg);
    let ckind = if vec {
        LoopKind::Vector(4)
    } else {
        LoopKind::Unroll(ct as u32)
    };
    // The vector path reads the kernel transposed to (taps, F, Cg).
    let w = if vec {
        let wt = cx.temp(cv.kernel.iter().product::<usize>() * f * cg);
        transpose_kernel(cx, gm, cv, k, wt);
        wt
    } else {
        k
    };
    let mut kb = KernelBuilder::new(format!("{}.backward_dx", gm.name));
    let (b, e) = (kb.var("b"), kb.var("e"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
    let (gv, cti, fl) = (kb.var("g"), kb.var("ct"), kb.var("fl"));
    let (cc_i, cc_a, cc_s) = (kb.var("cc"), kb.var("cc_a"), kb.var("cc_s"));
    let acc = kb.local("acc", ct);
    let cl_of = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let x_at = |cc: Var| {
        let ch = Affine::var(gv).scale(cg as i64).plus_affine(&cl_of(cc));
        gm.x_at(cv, Affine::var(b), &o, &t, ch)
    };
    let f_aff = Affine::var(gv).scale(fg as i64).plus_term(fl, 1);
    let taps = flat(&t, &gm.k_stride);
    let w_at = |cc: Var| {
        if vec {
            let row = taps.clone().scale(f as i64).plus_affine(&f_aff);
            row.scale(cg as i64).plus_affine(&cl_of(cc))
        } else {
            let row = taps.clone().scale(cg as i64).plus_affine(&cl_of(cc));
            row.scale(f as i64).plus_affine(&f_aff)
        }
    };
    let lanes = |cc: Var, s: Stmt| for_(cc, ct as u64, ckind, vec![s]);
    let acc_get = |cc: Var| load_local(acc, Affine::var(cc));
    let set = |cc: Var, value: Expr| Stmt::SetLocal {
        local: acc,
        index: Affine::var(cc),
        value,
    };
    let update = fma(
        load(w, w_at(cc_a)),
        load(dz, gm.y_at(Affine::var(b), &o, f_aff.clone())),
        acc_get(cc_a),
    );
    let tile = vec![
        lanes(cc_i, set(cc_i, load(dx, x_at(cc_i)))),
        for_(
            fl,
            fg as u64,
            LoopKind::Serial,
            vec![lanes(cc_a, set(cc_a, update))],
        ),
        lanes(
            cc_s,
            Stmt::Store {
                buf: dx,
                index: x_at(cc_s),
                value: acc_get(cc_s),
            },
        ),
    ];
    let per_tap = vec![for_(
        gv,
        gm.groups as u64,
        LoopKind::Serial,
        vec![for_(cti, (cg / ct) as u64, LoopKind::Serial, tile)],
    )];
    let mut scatter = gm.guarded(cv, &t, &cv.kernel, &o, &t, per_tap);
    for a in (0..rank).rev() {
        scatter = vec![for_(o[a], gm.out_sp[a] as u64, LoopKind::Serial, scatter)];
    }
    let row = gm.n_in * gm.c;
    let zkind = if row.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let mut body = vec![for_(
        e,
        row as u64,
        zkind,
        vec![Stmt::Store {
            buf: dx,
            index: Affine::var(b).scale(row as i64).plus_term(e, 1),
            value: Expr::Const(0.0),
        }],
    )];
    body.extend(scatter);
    let nest = for_(b, cx.batch as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[w, dz, dx], &[dx]);
}

/// `wt[t, f, cl] = W[t, cl, f]` (taps in parallel).
fn transpose_kernel(cx: &mut Cx, gm: &Geom, cv: &Conv, k: BufId, wt: BufId) {
    let (cg, f) = (gm.cg as i64, gm.f as i64);
    let mut kb = KernelBuilder::new(format!("{}.backward_wt", gm.name));
    let (tv, fv, cl) = (kb.var("t"), kb.var("f"), kb.var("c"));
    let store = Stmt::Store {
        buf: wt,
        index: Affine::var(tv)
            .scale(f)
            .plus_term(fv, 1)
            .scale(cg)
            .plus_term(cl, 1),
        value: load(
            k,
            Affine::var(tv)
                .scale(cg)
                .plus_term(cl, 1)
                .scale(f)
                .plus_term(fv, 1),
        ),
    };
    let nest = for_(
        tv,
        cv.kernel.iter().product::<usize>() as u64,
        LoopKind::Parallel,
        vec![for_(
            fv,
            f as u64,
            LoopKind::Serial,
            vec![for_(cl, cg as u64, LoopKind::Serial, vec![store])],
        )],
    );
    cx.push(kb.finish(vec![nest]), &[k], &[wt]);
}
