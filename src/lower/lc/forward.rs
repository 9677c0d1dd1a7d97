//! The forward emitter of the locally connected layers: it follows the
//! [`LcForward`] schedule chosen in `schedule/lc.rs` and decides nothing itself.
//!
//! Shape of the kernel: a parallel loop over the first output axis and serial loops over
//! the others, then per batch nest (full tiles of `TB` rows, and a remainder tile) a
//! loop over filter tiles around the register tile `acc[TB × FT]`: zeroed, updated by
//! the reduction over the patch (taps, channels), stored with bias and activation
//! fused. The channel-blocked order (`cblock`) instead walks every filter tile over one
//! channel block at a time, with the partial sums going through the output row. The
//! positions schedule (lanes over output positions, for few or odd filters and
//! channels_first outputs) is emitted by `positions.rs`. Under lanes over batch rows the
//! same nest runs with the tile transposed (filters its unrolled rows, batch rows its
//! vector lanes) over the input copied to `xT[e·B + b]` by `{name}.forward_x_rows`.
//!
//! Invariants: both orders perform the same operations in the same order per output
//! element (bitwise the same sums); every tap outside the input is skipped by a guard
//! the verifier uses to prove the loads in bounds.

mod inputs;
mod positions;

use inputs::{input, laid_out, residual_operand};

use super::{merge_terms, tap_loops, tap_pos, Geo};
use crate::error::{Error, Result};
use crate::graph::{Activation, ComputeDtype, LocallyConnected, NodeId};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LocalId, LoopKind,
    Stmt, Var,
};
use crate::lower::activation::{is_elementwise, softmax_kernel};
use crate::lower::schedule::lc::{self as sched, reduction_kind, LcForward};
use crate::lower::Cx;

/// Lowers the forward pass of LC node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, l: &LocallyConnected) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let out_shape = n.shape.clone();
    let (g, x) = input(cx, node, l)?;
    let residual = residual_operand(cx, node)?;
    let k = cx.param(node, "kernel")?;
    let bias = if l.use_bias {
        Some(cx.param(node, "bias")?)
    } else {
        None
    };
    let elementwise = is_elementwise(&l.activation);
    let y = cx.output(node);
    let z = if elementwise {
        y
    } else {
        cx.temp(cx.batch * g.p * g.f)
    };
    // Keyed by the layer as the graph has it: a gradient program lowers it with its
    // activation split off (`l` linear), under the inference program's key.
    let keyed = match &cx.graph.nodes[node].op {
        crate::graph::Op::LocallyConnected(o) => o,
        _ => l,
    };
    let plan = cx.plans.as_ref().and_then(|p| {
        p.get(&sched::layer_key(
            cx.graph, node, keyed, cx.batch, cx.tier, cx.weights,
        ))
    });
    let half = cx.weights != crate::loop_ir::Dtype::F32;
    let s = sched::forward(&g, l, cx.batch, cx.tier, half, plan);
    let (x, g) = laid_out(cx, (node, &name), x, g, &s);
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    // Under the positions schedule the last axis is walked by the segments of
    // `positions.rs`, so only the leading axes get a position variable here.
    let outer = if s.lanes.is_some() {
        g.rank - 1
    } else {
        g.rank
    };
    let o: Vec<Var> = (0..outer).map(|a| kb.var(&format!("o{a}"))).collect();
    let width = s.lanes.map_or(1, |ln| ln.width);
    let acc = kb.local("acc", s.tb * s.ft * width);
    let acc1 = s
        .lanes
        .filter(|ln| ln.lo > 0 || ln.tail_start() < ln.out)
        .map(|_| kb.local("acc1", s.tb * s.ft));
    let em = Emit {
        l,
        g: &g,
        s: &s,
        o,
        x,
        k,
        bias,
        z,
        acc,
        act: if elementwise {
            l.activation.clone()
        } else {
            Activation::Linear
        },
        compute: cx.compute,
        residual: residual.map(|(_, r, lc_first)| (r, lc_first)),
    };
    let mut nest = Vec::new();
    if let Some(ln) = &s.lanes {
        nest = em.positions_body(&mut kb, ln, acc, acc1, cx.batch)?;
    } else {
        for (ni, (b_base, ntiles, tb)) in s.batch_nests(cx.batch).into_iter().enumerate() {
            nest.push(em.nest(&mut kb, ni, b_base, ntiles, tb, cx.batch)?);
        }
    }
    for ax in (0..outer).rev() {
        let kind = if ax == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(em.o[ax], g.out_sp[ax] as u64, kind, nest)];
    }
    let mut reads = vec![x, k];
    reads.extend(bias);
    reads.extend(residual.map(|(_, r, _)| r));
    kb.schedule(s.to_string());
    cx.push(kb.finish(nest), &reads, &[z]);
    if let Some((add, _, lc_first)) = residual {
        // The Add's output is this kernel's.
        cx.alias(add, if lc_first { 0 } else { 1 })?;
    }
    if !elementwise {
        let (axis, log) = match l.activation {
            Activation::Softmax { axis } => (axis, false),
            _ => (-1, true),
        };
        let r = out_shape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis } as usize;
        softmax_kernel(cx, &name, &out_shape, axis, log, z, y);
    }
    Ok(())
}

/// What every nest of one forward kernel shares.
struct Emit<'a> {
    l: &'a LocallyConnected,
    g: &'a Geo,
    s: &'a LcForward,
    /// Output position variables, one per spatial axis.
    o: Vec<Var>,
    x: BufId,
    k: BufId,
    bias: Option<BufId>,
    /// Where the pre-softmax (or final) output goes.
    z: BufId,
    acc: LocalId,
    /// The activation fused into the store (linear before a softmax kernel).
    act: Activation,
    compute: ComputeDtype,
    /// A fused residual Add: its other operand, and whether the LC output is the Add's
    /// first operand (see `lower/fuse.rs`).
    residual: Option<(BufId, bool)>,
}

/// The variables of one batch nest's register tile: `_i` init, `_a` update, `_s` store.
struct Tile {
    b_base: usize,
    tb: usize,
    t: Vec<Var>,
    bt: Var,
    fti: Var,
    cv: Var,
    bb_i: Var,
    ff_i: Var,
    bb_a: Var,
    ff_a: Var,
    bb_s: Var,
    ff_s: Var,
}

/// The affine indices of one nest, in the tile variables.
struct Indices {
    /// `x[b(bb_a), tap position, c]`.
    x_at: Affine,
    /// `K[p, q(t, c), f(ff_a)]`.
    k_at: Affine,
    /// `y[b(bb_s), p, f(ff_s)]` in the output's layout.
    y_at: Affine,
    /// `bias[p, f(ff_s)]` in the output's per-sample layout.
    bias_at: Affine,
}

impl Tile {
    /// Batch row of tile row `bb`.
    fn b_of(&self, bb: Var) -> Affine {
        Affine::constant(self.b_base as i64)
            .plus_term(self.bt, self.tb as i64)
            .plus_term(bb, 1)
    }

    /// Filter of tile column `ff`.
    fn f_of(&self, ft: usize, ff: Var) -> Affine {
        Affine::var(self.fti).scale(ft as i64).plus_term(ff, 1)
    }
}

impl Emit<'_> {
    /// The loop over the batch tiles of one nest (rows `b_base..`, `ntiles` tiles of `tb`).
    fn nest(
        &self,
        kb: &mut KernelBuilder,
        ni: usize,
        b_base: usize,
        ntiles: usize,
        tb: usize,
        batch: usize,
    ) -> Result<Stmt> {
        let t: Vec<Var> = (0..self.g.rank).map(|a| kb.var(&format!("t{a}"))).collect();
        let bt = kb.var(&format!("bt{ni}"));
        let fti = kb.var(&format!("ft{ni}"));
        let cv = kb.var(&format!("c{ni}"));
        let (bb_i, ff_i) = (kb.var(&format!("bb{ni}")), kb.var(&format!("f{ni}")));
        let (bb_a, ff_a) = (kb.var(&format!("bb{ni}a")), kb.var(&format!("f{ni}a")));
        let (bb_s, ff_s) = (kb.var(&format!("bb{ni}s")), kb.var(&format!("f{ni}s")));
        let tile = Tile {
            b_base,
            tb,
            t,
            bt,
            fti,
            cv,
            bb_i,
            ff_i,
            bb_a,
            ff_a,
            bb_s,
            ff_s,
        };
        let ix = self.indices(&tile, batch);
        let body = match self.s.cblock {
            Some(cbl) => self.blocked(kb, ni, &tile, &ix, cbl)?,
            None => self.plain(kb, ni, &tile, &ix)?,
        };
        Ok(for_(bt, ntiles as u64, LoopKind::Serial, body))
    }

    /// `p = Σ o_a·ostride_a`.
    fn position(&self) -> Affine {
        self.o
            .iter()
            .zip(&self.g.o_stride)
            .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s))
    }

    /// The x, kernel, output and bias indices of a nest.
    fn indices(&self, tl: &Tile, batch: usize) -> Indices {
        let (g, l) = (self.g, self.l);
        let p_aff = self.position();
        // The per-sample element `e` of the tap; then `x[b·X + e]`, or `xT[e·B + b]`
        // under lanes over batch rows.
        let mut e_at = if g.x_cl {
            Affine::var(tl.cv)
        } else {
            Affine::var(tl.cv).scale(g.in_sp.iter().product::<usize>() as i64)
        };
        for ax in 0..g.rank {
            e_at = e_at.plus_affine(&tap_pos(l, g, self.o[ax], tl.t[ax], ax).scale(g.x_stride[ax]));
        }
        let x_at = if self.s.vec == sched::VectorAxis::Batch {
            e_at.scale(batch as i64).plus_affine(&tl.b_of(tl.bb_a))
        } else {
            tl.b_of(tl.bb_a).scale(g.x_sample).plus_affine(&e_at)
        };
        let taps =
            tl.t.iter()
                .zip(&g.k_stride)
                .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));
        let q_aff = if g.cl {
            taps.scale(g.c as i64).plus_term(tl.cv, 1)
        } else {
            taps.plus_term(tl.cv, (g.q / g.c) as i64)
        };
        let ft = self.s.ft;
        let k_at = p_aff
            .clone()
            .scale((g.q * g.f) as i64)
            .plus_affine(&q_aff.scale(g.f as i64))
            .plus_affine(&tl.f_of(ft, tl.ff_a));
        let (y_at, bias_at) = if g.cl {
            (
                tl.b_of(tl.bb_s)
                    .scale((g.p * g.f) as i64)
                    .plus_affine(&p_aff.clone().scale(g.f as i64))
                    .plus_affine(&tl.f_of(ft, tl.ff_s)),
                p_aff
                    .clone()
                    .scale(g.f as i64)
                    .plus_affine(&tl.f_of(ft, tl.ff_s)),
            )
        } else {
            (
                tl.b_of(tl.bb_s)
                    .scale((g.p * g.f) as i64)
                    .plus_affine(&tl.f_of(ft, tl.ff_s).scale(g.p as i64))
                    .plus_affine(&p_aff),
                tl.f_of(ft, tl.ff_s).scale(g.p as i64).plus_affine(&p_aff),
            )
        };
        Indices {
            x_at,
            k_at,
            y_at,
            bias_at,
        }
    }

    /// `for bb in 0..tb (unrolled) { for ff in 0..FT (filter kind) { st } }`; under
    /// lanes over batch rows the filters are the tile's rows and the batch rows its
    /// lanes: `for ff in 0..FT (unrolled) { for bb in 0..tb (vector) { st } }`.
    fn tile_loop(&self, tb: usize, bb: Var, ff: Var, st: Stmt) -> Stmt {
        let s = self.s;
        if s.vec == sched::VectorAxis::Batch {
            return for_(
                ff,
                s.ft as u64,
                s.filter_kind(),
                vec![for_(bb, tb as u64, s.row_kind(tb), vec![st])],
            );
        }
        for_(
            bb,
            tb as u64,
            s.row_kind(tb),
            vec![for_(ff, s.ft as u64, s.filter_kind(), vec![st])],
        )
    }

    /// Element of the register tile for row `bb` and filter column `ff` (for filter
    /// `ff` and lane `bb` under lanes over batch rows).
    fn acc_at(&self, bb: Var, ff: Var) -> Affine {
        match self.s.vec {
            sched::VectorAxis::Batch => Affine::var(ff).scale(self.s.tb as i64).plus_term(bb, 1),
            _ => acc_at(self.s.ft, bb, ff),
        }
    }

    /// `acc[bb, ff] = fma(x, K, acc[bb, ff])` (`fma(K, xT, acc)` under lanes over batch
    /// rows: the microkernel's broadcast operand first; the product is the same).
    fn update(&self, tb: usize, bb: Var, ff: Var, x_at: Affine, k_at: Affine) -> Stmt {
        let at = self.acc_at(bb, ff);
        let (xl, kl) = (load(self.x, x_at), load(self.k, k_at));
        let (a, b) = if self.s.vec == sched::VectorAxis::Batch {
            (kl, xl)
        } else {
            (xl, kl)
        };
        self.tile_loop(
            tb,
            bb,
            ff,
            Stmt::SetLocal {
                local: self.acc,
                index: at.clone(),
                value: fma(a, b, load_local(self.acc, at)),
            },
        )
    }

    /// The value stored at `y_at`: `acc` (or `partial`) plus bias, activated and rounded
    /// to the compute dtype, plus a fused residual's element (in the Add's operand order).
    fn epilogue(&self, partial: Expr, bias_at: Affine, y_at: &Affine) -> Result<Expr> {
        let v = crate::lower::mixed::epilogue(
            self.compute,
            partial,
            self.bias.map(|b| load(b, bias_at)),
            &self.act,
        )
        .ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
        Ok(match self.residual {
            Some((r, true)) => bin(BinOp::Add, v, load(r, y_at.clone())),
            Some((r, false)) => bin(BinOp::Add, load(r, y_at.clone()), v),
            None => v,
        })
    }

    /// The plain order: per filter tile, zero the tile, reduce over the patch, store.
    fn plain(
        &self,
        kb: &mut KernelBuilder,
        ni: usize,
        tl: &Tile,
        ix: &Indices,
    ) -> Result<Vec<Stmt>> {
        let (g, l, s) = (self.g, self.l, self.s);
        let init = self.tile_loop(
            tl.tb,
            tl.bb_i,
            tl.ff_i,
            Stmt::SetLocal {
                local: self.acc,
                index: self.acc_at(tl.bb_i, tl.ff_i),
                value: Expr::Const(0.0),
            },
        );
        let last = g.rank - 1;
        let (red_var, red_extent, x_at, k_at) = if s.merge {
            let m = kb.var(&format!("m{ni}"));
            (
                m,
                (l.kernel[last] * g.c) as u64,
                merge_terms(&ix.x_at, tl.t[last], tl.cv, g.c as i64, m),
                merge_terms(&ix.k_at, tl.t[last], tl.cv, g.c as i64, m),
            )
        } else {
            (tl.cv, g.c as u64, ix.x_at.clone(), ix.k_at.clone())
        };
        let update = self.update(tl.tb, tl.bb_a, tl.ff_a, x_at, k_at);
        let taps = vec![for_(red_var, red_extent, s.reduction, vec![update])];
        let tap_axes = if s.merge { last } else { g.rank };
        let mut taps = tap_loops(l, g, &self.o, &tl.t, tap_axes, taps);
        // Under a tier the schedule has made the reduction one perfect nest (no guards):
        // its outermost loop heads the microkernel.
        if let (Some(w), [Stmt::For { kind, .. }]) = (s.wide, taps.as_mut_slice()) {
            *kind = LoopKind::Wide(w);
        }
        let value = self.epilogue(
            load_local(self.acc, self.acc_at(tl.bb_s, tl.ff_s)),
            ix.bias_at.clone(),
            &ix.y_at,
        )?;
        let store = self.tile_loop(
            tl.tb,
            tl.bb_s,
            tl.ff_s,
            Stmt::Store {
                buf: self.z,
                index: ix.y_at.clone(),
                value,
            },
        );
        let mut body = vec![init];
        body.extend(taps);
        body.push(store);
        Ok(vec![for_(
            tl.fti,
            (g.f / s.ft) as u64,
            LoopKind::Serial,
            body,
        )])
    }

    /// The channel-blocked order (see `schedule::lc::block_channels`): the filter-tile
    /// loop moves inside a (taps, channel block) loop and the accumulators go through
    /// the output row between blocks. Same operations in the same order as [`Self::plain`].
    fn blocked(
        &self,
        kb: &mut KernelBuilder,
        ni: usize,
        tl: &Tile,
        ix: &Indices,
        cbl: usize,
    ) -> Result<Vec<Stmt>> {
        let (g, s, z, tb) = (self.g, self.s, self.z, tl.tb);
        let cb = kb.var(&format!("cb{ni}"));
        let fb = kb.var(&format!("fb{ni}"));
        let (bb_l, ff_l) = (kb.var(&format!("bb{ni}l")), kb.var(&format!("f{ni}l")));
        let (bb_w, ff_w) = (kb.var(&format!("bb{ni}w")), kb.var(&format!("f{ni}w")));
        let (fz, bb_z, ff_z) = (
            kb.var(&format!("fz{ni}")),
            kb.var(&format!("bb{ni}z")),
            kb.var(&format!("f{ni}z")),
        );
        let (fo, ci) = (kb.var(&format!("fo{ni}")), kb.var(&format!("ci{ni}")));
        // Renames the tile variables of an index built for (fti, bb_s, ff_s).
        let with = |a: &Affine, fvar: Var, bb: Var, ff: Var| {
            rename(&rename(&rename(a, tl.fti, fvar), tl.bb_s, bb), tl.ff_s, ff)
        };
        let ftiles = (g.f / s.ft) as u64;
        let zero = for_(
            fz,
            ftiles,
            LoopKind::Serial,
            vec![self.tile_loop(
                tb,
                bb_z,
                ff_z,
                Stmt::Store {
                    buf: z,
                    index: with(&ix.y_at, fz, bb_z, ff_z),
                    value: Expr::Const(0.0),
                },
            )],
        );
        // c = cb·CB + ci, and the tile's filter variable.
        let chan = |a: &Affine| {
            let cc = a.coef(tl.cv);
            let a = a
                .clone()
                .plus_term(tl.cv, -cc)
                .plus_term(cb, cc * cbl as i64)
                .plus_term(ci, cc);
            rename(&a, tl.fti, fb)
        };
        let upd = self.update(tb, tl.bb_a, tl.ff_a, chan(&ix.x_at), chan(&ix.k_at));
        let per_tile = vec![
            self.tile_loop(
                tb,
                bb_l,
                ff_l,
                Stmt::SetLocal {
                    local: self.acc,
                    index: self.acc_at(bb_l, ff_l),
                    value: load(z, with(&ix.y_at, fb, bb_l, ff_l)),
                },
            ),
            for_(
                ci,
                cbl as u64,
                self.s
                    .wide
                    .map_or(reduction_kind(cbl as u64), LoopKind::Wide),
                vec![upd],
            ),
            self.tile_loop(
                tb,
                bb_w,
                ff_w,
                Stmt::Store {
                    buf: z,
                    index: with(&ix.y_at, fb, bb_w, ff_w),
                    value: load_local(self.acc, self.acc_at(bb_w, ff_w)),
                },
            ),
        ];
        let red = vec![for_(
            cb,
            (g.c / cbl) as u64,
            LoopKind::Serial,
            vec![for_(fb, ftiles, LoopKind::Serial, per_tile)],
        )];
        let red = tap_loops(self.l, g, &self.o, &tl.t, g.rank, red);
        let fin = self.epilogue(
            load(z, with(&ix.y_at, fo, tl.bb_s, tl.ff_s)),
            with(&ix.bias_at, fo, tl.bb_s, tl.ff_s),
            &with(&ix.y_at, fo, tl.bb_s, tl.ff_s),
        )?;
        let finish = for_(
            fo,
            ftiles,
            LoopKind::Serial,
            vec![self.tile_loop(
                tb,
                tl.bb_s,
                tl.ff_s,
                Stmt::Store {
                    buf: z,
                    index: with(&ix.y_at, fo, tl.bb_s, tl.ff_s),
                    value: fin,
                },
            )],
        );
        let mut body = vec![zero];
        body.extend(red);
        body.push(finish);
        Ok(body)
    }
}

/// Element of the filters-lane register tile for row `bb` and filter column `ff`.
fn acc_at(ft: usize, bb: Var, ff: Var) -> Affine {
    Affine::var(bb).scale(ft as i64).plus_term(ff, 1)
}

/// `a` with variable `from` replaced by `to` (same coefficient).
fn rename(a: &Affine, from: Var, to: Var) -> Affine {
    a.clone()
        .plus_term(from, -a.coef(from))
        .plus_term(to, a.coef(from))
}
