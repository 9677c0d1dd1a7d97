//! Backward pass of the locally connected layers (DESIGN.md §3), sharing the forward's
//! geometry ([`super::lc::Geo`]). Given `dz`, the gradient of the pre-activation output:
//!
//! - `dK[p, q, f] = Σ_b x[b, patch(p, q)] · dz[b, p, f]`: parallel over the first output
//!   axis (an iteration writes only its positions' weights), around a register tile of
//!   `TQ patch entries × FT filters` accumulated over the batch in order; vectorised over
//!   filters (broadcast input, contiguous `dz`) when channels_last and `F % 4 == 0`.
//!   Taps outside the input (`same`) get zeros.
//! - `dbias = Σ_b dz[b]` in the per-sample output layout: parallel over blocks of it.
//! - `dx` as a gather: parallel over the first input axis; every input element sums the
//!   (output position, tap) pairs whose window covers it, enumerated by affine indices
//!   and guards (see [`Residue`]), so no two iterations write the same element and the
//!   sums do not depend on the thread count. Vectorised over filters (lanes hold partial
//!   sums over `f mod 4`, added up at the store) when channels_last and `F % 4 == 0`.
//!   Interior input segments run without guards; in 2D/3D the accumulators go through
//!   a per-thread scratch row between tap rows; taps are walked so that kernel rows
//!   ascend (see `GatherCx::position` and [`Residue::tap`] for the measurements).
//!
//! Every schedule choice (vector axis, tiles, merging, segments) is made in
//! `schedule/lc.rs`; the emitters here follow it.
//!
//! channels_first and `F % 4 != 0` use scalar tiles: `dz` is strided along filters
//! there, so neither dK nor dx has a contiguous vector operand.

use super::lc::{geometry, tap_loops, tap_pos, Geo};
use super::schedule::lc as sched;
use super::Cx;
use crate::error::Result;
use crate::graph::{LocallyConnected, NodeId, Padding};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind, Stmt,
    Var,
};

/// Lowers the backward pass of LC node `node` given `dz`, the gradient of its
/// pre-activation output: writes `dK`, `dbias` (if any) and the input gradient.
pub fn backward(cx: &mut Cx, node: NodeId, l: &LocallyConnected, dz: BufId) -> Result<()> {
    let g = geometry(cx, node, l)?;
    let name = cx.graph.nodes[node].name.clone();
    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    let dk = cx.dparam(node, "kernel")?;
    kernel_grad(cx, &name, l, &g, [x, dz, dk]);
    if l.use_bias {
        let db = cx.dparam(node, "bias")?;
        bias_grad(cx, &name, &g, dz, db);
    }
    if cx.wants_grad(node, 0) {
        let dx = cx.grad_input(node, 0)?;
        input_grad(cx, &name, l, &g, [k, dz, dx]);
    }
    Ok(())
}

/// `for v0 in 0..e0 (k0) { for v1 in 0..e1 (k1) { body } }`.
fn tile2(v0: (Var, usize, LoopKind), v1: (Var, usize, LoopKind), body: Stmt) -> Stmt {
    for_(
        v0.0,
        v0.1 as u64,
        v0.2,
        vec![for_(v1.0, v1.1 as u64, v1.2, vec![body])],
    )
}

/// `dK[p, q, f] = Σ_b x[b, patch(p, q)] · dz[b, p, f]` (see the module docs).
fn kernel_grad(cx: &mut Cx, name: &str, l: &LocallyConnected, g: &Geo, [x, dz, dk]: [BufId; 3]) {
    let s = sched::kernel_grad(g, l, cx.batch);
    let mut kb = KernelBuilder::new(format!("{name}.backward_dk"));
    kb.schedule(s.to_string());
    let o: Vec<Var> = (0..g.rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let t: Vec<Var> = (0..g.rank).map(|a| kb.var(&format!("t{a}"))).collect();
    let last = g.rank - 1;
    let (merge, run, ft, tq) = (s.merge, s.run, s.ft, s.tq);
    let acc = kb.local("acc", tq * ft);
    let (ct, fti, b) = (kb.var("ct"), kb.var("ft"), kb.var("b"));
    let (q_i, f_i) = (kb.var("qi"), kb.var("fi"));
    let (q_a, f_a) = (kb.var("qa"), kb.var("fa"));
    let (q_s, f_s) = (kb.var("qs"), kb.var("fs"));
    let fkind = s.filter_kind();
    let qkind = LoopKind::Unroll(tq as u32);
    let oa: Vec<Affine> = o.iter().map(|&v| Affine::var(v)).collect();
    let p = g.position(&oa);
    let f_of = |ff: Var| Affine::var(fti).scale(ft as i64).plus_term(ff, 1);
    let acc_at = |qq: Var, ff: Var| Affine::var(qq).scale(ft as i64).plus_term(ff, 1);
    // A merged run index `m = t_last·C + c` stands for the channel with the last tap
    // taken as 0: x and dK then advance by one per step of `m` across the whole row.
    let run_at = |qq: Var| Affine::var(ct).scale(tq as i64).plus_term(qq, 1);
    let sp: Vec<Affine> = (0..g.rank)
        .map(|a| {
            if merge && a == last {
                Affine::var(o[a]).scale(l.strides[a] as i64).plus(-g.pad[a])
            } else {
                tap_pos(l, g, o[a], t[a], a)
            }
        })
        .collect();
    let taps: Vec<Affine> = (0..g.rank)
        .map(|a| {
            if merge && a == last {
                Affine::constant(0)
            } else {
                Affine::var(t[a])
            }
        })
        .collect();
    let x_at = |qq: Var| g.x_index(&Affine::var(b), &sp, &run_at(qq));
    let k_at = |qq: Var, ff: Var| g.k_index(&p, &taps, &run_at(qq), &f_of(ff));
    let z_at = |ff: Var| g.z_index(&Affine::var(b), &p, &f_of(ff));

    let init = tile2(
        (q_i, tq, qkind),
        (f_i, ft, fkind),
        Stmt::SetLocal {
            local: acc,
            index: acc_at(q_i, f_i),
            value: Expr::Const(0.0),
        },
    );
    let update = tile2(
        (q_a, tq, qkind),
        (f_a, ft, fkind),
        Stmt::SetLocal {
            local: acc,
            index: acc_at(q_a, f_a),
            value: fma(
                load(x, x_at(q_a)),
                load(dz, z_at(f_a)),
                load_local(acc, acc_at(q_a, f_a)),
            ),
        },
    );
    let store = tile2(
        (q_s, tq, qkind),
        (f_s, ft, fkind),
        Stmt::Store {
            buf: dk,
            index: k_at(q_s, f_s),
            value: load_local(acc, acc_at(q_s, f_s)),
        },
    );
    let batch = cx.batch as u64;
    let per_tile = vec![init, for_(b, batch, s.reduction, vec![update]), store];
    let tiles = vec![for_(
        ct,
        (run / tq) as u64,
        LoopKind::Serial,
        vec![for_(fti, (g.f / ft) as u64, LoopKind::Serial, per_tile)],
    )];
    let tap_axes = if merge { last } else { g.rank };
    let mut body = Vec::new();
    if l.padding != Padding::Valid {
        // Clipped taps have no input: their weights get zero gradients. The whole block
        // of the position is zeroed first (it stays in cache for the writes that follow).
        let e = kb.var("e");
        let qf = (g.q * g.f) as u64;
        let kind = if qf.is_multiple_of(4) {
            LoopKind::Vector(4)
        } else {
            LoopKind::Serial
        };
        body.push(for_(
            e,
            qf,
            kind,
            vec![Stmt::Store {
                buf: dk,
                index: p.clone().scale(qf as i64).plus_term(e, 1),
                value: Expr::Const(0.0),
            }],
        ));
    }
    body.extend(tap_loops(l, g, &o, &t, tap_axes, tiles));
    cx.push(kb.finish(position_nest(g, &o, body)), &[x, dz, dk], &[dk]);
}

/// The loops over output positions around `body`: the first axis parallel.
fn position_nest(g: &Geo, o: &[Var], body: Vec<Stmt>) -> Vec<Stmt> {
    let mut nest = body;
    for ax in (0..g.rank).rev() {
        let kind = if ax == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(o[ax], g.out_sp[ax] as u64, kind, nest)];
    }
    nest
}

/// `dbias[e] = Σ_b dz[b, e]` over the per-sample output layout (which is the canonical
/// bias layout in both data formats), in blocks of it in parallel, batch rows in order.
fn bias_grad(cx: &mut Cx, name: &str, g: &Geo, dz: BufId, db: BufId) {
    let n = g.p * g.f;
    let s = sched::bias_grad(g);
    let (blk, kind) = (s.blk, s.kind);
    let mut kb = KernelBuilder::new(format!("{name}.backward_db"));
    kb.schedule(s.to_string());
    let (j, e0, b, e) = (kb.var("j"), kb.var("e0"), kb.var("b"), kb.var("e"));
    let at = |v: Var| Affine::var(j).scale(blk as i64).plus_term(v, 1);
    let body = vec![
        for_(
            e0,
            blk as u64,
            kind,
            vec![Stmt::Store {
                buf: db,
                index: at(e0),
                value: Expr::Const(0.0),
            }],
        ),
        for_(
            b,
            cx.batch as u64,
            LoopKind::Serial,
            vec![for_(
                e,
                blk as u64,
                kind,
                vec![Stmt::Store {
                    buf: db,
                    index: at(e),
                    value: bin(
                        BinOp::Add,
                        load(db, at(e)),
                        load(dz, at(e).plus_term(b, n as i64)),
                    ),
                }],
            )],
        ),
    ];
    let nest = for_(j, (n / blk) as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[dz, db], &[db]);
}

mod gather;
use gather::input_grad;
