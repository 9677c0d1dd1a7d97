//! Backward pass of the locally connected layers (DESIGN.md §3), sharing the forward's
//! geometry ([`super::lc::Geo`]). Given `dz`, the gradient of the pre-activation output:
//!
//! - `dK[p, q, f] = Σ_b x[b, patch(p, q)] · dz[b, p, f]`: parallel over the first output
//!   axis (an iteration writes only its positions' weights), around a register tile of
//!   `TQ patch entries × FT filters` accumulated over the batch in order; vectorised over
//!   filters (broadcast input, contiguous `dz`) when channels_last and `F % 4 == 0`.
//!   Taps outside the input (`same`) get zeros. Few or odd filters and channels_first
//!   vectorise over output positions instead (`lc_backward/dk_positions.rs`).
//!   In a training step that applies the optimizer in place ([`super::in_place`]), each
//!   iteration of the parallel loop accumulates its positions' gradients one position
//!   at a time into its own cache-resident block `dK[o0, q, f]` of a scratch tensor and
//!   applies the rule to the position's weights and slots right after; this kernel then
//!   runs after `dx`, which reads the weights before they change.
//! - `dbias = Σ_b dz[b]` in the per-sample output layout: parallel over blocks of it,
//!   each summed in a register tile, with a remainder block.
//! - `dx` as a gather: parallel over the first input axis; every input element sums the
//!   (output position, tap) pairs whose window covers it, enumerated by affine indices
//!   and guards (see [`Residue`]), so no two iterations write the same element and the
//!   sums do not depend on the thread count. Vectorised over filters (lanes hold partial
//!   sums over `f mod 4`, added up at the store) when channels_last and `F % 4 == 0`, or
//!   over input positions of the last axis when `dz` is contiguous along them
//!   (channels_first or one filter; rank 1 then runs blocks of positions in parallel).
//!   Interior input segments run without guards; in 2D/3D the accumulators go through
//!   a per-thread scratch row between tap rows; taps are walked so that kernel rows
//!   ascend (see `GatherCx::position` and [`Residue::tap`] for the measurements).
//!
//! Every schedule choice (vector axis, tiles, merging, segments) is made in
//! `schedule/lc.rs`; the emitters here follow it.
//!
//! channels_last layers with several filters not a multiple of 4 and several channels
//! or strides keep scalar tiles where neither operand is contiguous along positions.
//! Whatever the schedule, each element's sum runs in the same order (`dK`, `db`: batch
//! rows in order; `dx`: taps, then filters), so schedules change speed, not results.

use super::in_place::{InPlaceRule, UpdateBufs};
use super::lc::{geometry, tap_loops, tap_pos, Geo};
use super::schedule::lc as sched;
use super::shape::transposed_per_sample;
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{LocallyConnected, NodeId, Padding};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LocalId, LoopKind,
    Stmt, Var,
};

/// Lowers the backward pass of LC node `node` given `dz`, the gradient of its
/// pre-activation output: writes `dK`, `dbias` (if any) and the input gradient.
pub fn backward(cx: &mut Cx, node: NodeId, l: &LocallyConnected, dz: BufId) -> Result<()> {
    let g = geometry(cx, node, l)?;
    let name = cx.graph.nodes[node].name.clone();
    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    // The kernel is updated in place only by the register-tile schedule (whose position
    // blocks complete their gradient one after another), after `dx` has read it.
    let s = sched::kernel_grad(&g, l, cx.batch, cx.tier);
    let fused = match s.lanes {
        None => cx.update_in_place(node, "kernel")?,
        Some(_) => None,
    };
    let dk = match fused {
        Some(u) => DkOut::InPlace(u, cx.temp(g.out_sp[0] * g.q * g.f)),
        None => DkOut::Grad(cx.dparam(node, "kernel")?),
    };
    // A channels_first layer's `dK` tile reads channels_last copies of x and `dz`.
    // The forward kernel's copy of x is reused when it made one.
    let (gk, xk, dzk) = if s.cl_copies {
        let (batch, spatial) = (cx.batch, g.in_sp.iter().product::<usize>());
        let xc = match cx.x_channels_last.get(&node) {
            Some(&xc) => xc,
            None => {
                let xc = format!("{name}.backward_dk_x_channels_last");
                transposed_per_sample(cx, &xc, x, batch, g.c, spatial)
            }
        };
        let zc = format!("{name}.backward_dk_dz_channels_last");
        let zc = transposed_per_sample(cx, &zc, dz, batch, g.f, g.p);
        let gk = g.clone().with_x_channels_last().with_z_channels_last();
        (gk, xc, zc)
    } else {
        (g.clone(), x, dz)
    };
    if fused.is_none() {
        kernel_grad(cx, &name, (l, &gk, &s), [xk, dzk], dk)?;
    }
    if l.use_bias {
        let db = cx.dparam(node, "bias")?;
        bias_grad(cx, &name, &g, dz, db);
    }
    if cx.wants_grad(node, 0) {
        let dx = cx.grad_input(node, 0)?;
        input_grad(cx, &name, l, &g, [k, dz, dx]);
    }
    if fused.is_some() {
        kernel_grad(cx, &name, (l, &gk, &s), [xk, dzk], dk)?;
    }
    Ok(())
}

/// Where the kernel gradient goes.
#[derive(Clone, Copy, Debug)]
enum DkOut {
    /// The gradient buffer, `dK[p, q, f]`.
    Grad(BufId),
    /// The in-place update of the kernel: each parallel iteration (first output axis
    /// `o0`) accumulates its positions' gradients one at a time in its own block of the
    /// scratch tensor `dK[o0, q, f]`, which stays in cache, and applies the rule to it.
    InPlace(UpdateBufs, BufId),
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
fn kernel_grad(
    cx: &mut Cx,
    name: &str,
    (l, g, s): (&LocallyConnected, &Geo, &sched::LcKernelGrad),
    [x, dz]: [BufId; 2],
    out: DkOut,
) -> Result<()> {
    let dk = match out {
        DkOut::Grad(dk) => dk,
        DkOut::InPlace(_, scratch) => scratch,
    };
    if let Some(ln) = &s.lanes {
        dk_positions::kernel_grad(cx, name, (l, g), [x, dz, dk], s, ln);
        return Ok(());
    }
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
    // The block the gradient of position `p` goes to.
    let pk = match out {
        DkOut::Grad(_) => p.clone(),
        DkOut::InPlace(..) => Affine::var(o[0]),
    };
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
    let k_at = |qq: Var, ff: Var| g.k_index(&pk, &taps, &run_at(qq), &f_of(ff));
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
    let per_tile = vec![init, for_(b, batch, s.batch_kind(), vec![update]), store];
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
                index: pk.clone().scale(qf as i64).plus_term(e, 1),
                value: Expr::Const(0.0),
            }],
        ));
    }
    body.extend(tap_loops(l, g, &o, &t, tap_axes, tiles));
    if let DkOut::InPlace(u, _) = out {
        let rule = cx
            .in_place
            .ok_or_else(|| Error::internal("in-place kernel update without a rule"))?;
        let qf = g.q * g.f;
        body.extend(update_block(&mut kb, rule, &u, (dk, pk), p, qf)?);
    }
    cx.push(kb.finish(position_nest(g, &o, body)), &[x, dz, dk], &[dk]);
    Ok(())
}

/// Applies `rule` to the `qf` weights of output position `p`, whose gradient block is
/// `grad[pk·qf ..][..qf]`: `Vector(4)` groups, then a serial remainder.
fn update_block(
    kb: &mut KernelBuilder,
    rule: &dyn InPlaceRule,
    u: &UpdateBufs,
    (grad, pk): (BufId, Affine),
    p: Affine,
    qf: usize,
) -> Result<Vec<Stmt>> {
    let (wb, gb) = (p.scale(qf as i64), pk.scale(qf as i64));
    let mut out = Vec::new();
    let groups = qf / 4;
    if groups > 0 {
        let (j, ln) = (kb.var("uj"), kb.var("ul"));
        let at = |b: &Affine| b.clone().plus_term(j, 4).plus_term(ln, 1);
        let body = rule.element(kb, u, (grad, at(&gb)), at(&wb), Affine::var(ln))?;
        let group = for_(ln, 4, LoopKind::Vector(4), body);
        out.push(for_(j, groups as u64, LoopKind::Serial, vec![group]));
    }
    let rem = qf % 4;
    if rem > 0 {
        let t = kb.var("ut");
        let base = (4 * groups) as i64;
        let at = |b: &Affine| b.clone().plus(base).plus_term(t, 1);
        let body = rule.element(kb, u, (grad, at(&gb)), at(&wb), Affine::constant(0))?;
        out.push(for_(t, rem as u64, LoopKind::Serial, body));
    }
    Ok(out)
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
/// bias layout in both data formats), in blocks of it in parallel, each summed over the
/// batch rows in order in a register tile; the remainder after the last full block in
/// the last iteration.
fn bias_grad(cx: &mut Cx, name: &str, g: &Geo, dz: BufId, db: BufId) {
    let s = sched::bias_grad(g, cx.batch);
    let mut kb = KernelBuilder::new(format!("{name}.backward_db"));
    kb.schedule(s.to_string());
    let j = kb.var("j");
    let acc = kb.local("acc", s.blk);
    let run = BiasRun {
        dz,
        db,
        acc,
        n: g.p * g.f,
        batch: cx.batch,
        reduction: s.reduction,
    };
    let base = Affine::var(j).scale(s.blk as i64);
    let mut body = run.chunk(&mut kb, &base, s.blk, s.kind);
    if s.rem > 0 {
        let at = Affine::constant((s.blocks * s.blk) as i64);
        let lanes = s.rem / 4 * 4;
        let mut tail = Vec::new();
        if lanes > 0 {
            tail.extend(run.chunk(&mut kb, &at, lanes, LoopKind::Vector(4)));
        }
        let one = s.rem - lanes;
        if one > 0 {
            let at = at.plus(lanes as i64);
            tail.extend(run.chunk(&mut kb, &at, one, LoopKind::Unroll(one as u32)));
        }
        let last = s.blocks as i64 - 1;
        body.push(Stmt::If {
            conds: vec![(Affine::var(j), last, last + 1)],
            body: tail,
        });
    }
    let nest = for_(j, s.blocks as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &[dz, db], &[db]);
}

/// What the chunks of one `db` kernel share.
struct BiasRun {
    dz: BufId,
    db: BufId,
    acc: LocalId,
    /// Elements per sample (`P·F`).
    n: usize,
    batch: usize,
    reduction: LoopKind,
}

impl BiasRun {
    /// `dbias[base + e] = Σ_b dz[b, base + e]` for `e in 0..len` (loop kind `kind`):
    /// zero the tile, add the batch rows in order, store.
    fn chunk(
        &self,
        kb: &mut KernelBuilder,
        base: &Affine,
        len: usize,
        kind: LoopKind,
    ) -> Vec<Stmt> {
        let (e0, b, e, e1) = (kb.var("e0"), kb.var("b"), kb.var("e"), kb.var("e1"));
        let at = |v: Var| base.clone().plus_term(v, 1);
        vec![
            for_(
                e0,
                len as u64,
                kind,
                vec![Stmt::SetLocal {
                    local: self.acc,
                    index: Affine::var(e0),
                    value: Expr::Const(0.0),
                }],
            ),
            for_(
                b,
                self.batch as u64,
                self.reduction,
                vec![for_(
                    e,
                    len as u64,
                    kind,
                    vec![Stmt::SetLocal {
                        local: self.acc,
                        index: Affine::var(e),
                        value: bin(
                            BinOp::Add,
                            load_local(self.acc, Affine::var(e)),
                            load(self.dz, at(e).plus_term(b, self.n as i64)),
                        ),
                    }],
                )],
            ),
            for_(
                e1,
                len as u64,
                kind,
                vec![Stmt::Store {
                    buf: self.db,
                    index: at(e1),
                    value: load_local(self.acc, Affine::var(e1)),
                }],
            ),
        ]
    }
}

mod dk_positions;
mod gather;
use gather::input_grad;
