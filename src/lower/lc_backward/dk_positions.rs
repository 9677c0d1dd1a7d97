//! The positions schedule of the LC kernel gradient (`lc.dk(vec=positions)`, chosen by
//! `schedule::lc::kernel_grad_positions`): the f32x4 lanes hold consecutive output
//! positions of the last spatial axis, for layers whose filters cannot fill them (few
//! or odd filters, channels_first).
//!
//! `dK[p, q, f] = Σ_b x[b, patch(p, q)] · dz[b, p, f]`. The last output axis is split
//! as [`Lanes`] says: an interior run of blocks of `width` positions whose taps all lie
//! inside the input (no guard: the input operand of 4 positions is one f32x4 load, or a
//! gather when it is strided, and the verifier bounds it by the loop ranges), and a head
//! and a tail of single positions with the usual clipped-tap guards. The register tile
//! is `TT taps × TQ channels × FT filters × width positions`; `dK` of 4 positions is
//! stored with a scatter (positions are `Q·F` apart), once per element.
//!
//! Invariants: every element's sum runs over the batch rows in order from zero, as in
//! the other `dK` schedules, in every segment, so the result does not depend on which
//! segment or thread computes it; an iteration of the parallel loop writes only the
//! weights of its own positions. Taps clipped by `same` padding get zero gradients: the
//! positions' weight blocks are zeroed first wherever a tap can be clipped.

use super::super::lc::{tap_loops, Geo};
use super::super::schedule::lc::{Lanes, LcKernelGrad};
use super::super::Cx;
use crate::graph::{LocallyConnected, Padding};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, BufId, Expr, KernelBuilder, LocalId, LoopKind, Stmt, Var,
};

/// One segment of the last output axis: positions `pos + lane` for lane in `0..width`.
struct Seg {
    /// The segment's first position of the current iteration (without the lane).
    pos: Affine,
    /// Lanes per iteration: a multiple of 4 (vector) or 1 (single position, guarded).
    width: usize,
    /// The register tile.
    acc: LocalId,
    /// Variable-name suffix.
    tag: &'static str,
}

/// What every segment of one `dK` kernel shares.
struct DkCx<'a> {
    l: &'a LocallyConnected,
    g: &'a Geo,
    s: &'a LcKernelGrad,
    /// Position variables of the leading output axes.
    o: Vec<Var>,
    bufs: [BufId; 3],
    batch: usize,
}

/// The variables of one register tile: last-axis tap, channel, filter, lane.
type TileVars = [Var; 4];

/// Lowers `dK` under the positions schedule `s` with lanes `ln` (see the module docs).
pub(super) fn kernel_grad(
    cx: &mut Cx,
    name: &str,
    (l, g): (&LocallyConnected, &Geo),
    bufs: [BufId; 3],
    s: &LcKernelGrad,
    ln: &Lanes,
) {
    let mut kb = KernelBuilder::new(format!("{name}.backward_dk"));
    kb.schedule(s.to_string());
    let last = g.rank - 1;
    let o: Vec<Var> = (0..last).map(|a| kb.var(&format!("o{a}"))).collect();
    let acc = kb.local("acc", s.tt * s.tq * s.ft * ln.width);
    let single = ln.lo > 0 || ln.tail_start() < ln.out;
    let acc1 = single.then(|| kb.local("acc1", s.tq * s.ft));
    let d = DkCx {
        l,
        g,
        s,
        o,
        bufs,
        batch: cx.batch,
    };
    let jb = kb.var("ob");
    let vseg = Seg {
        pos: Affine::var(jb).scale(ln.width as i64).plus(ln.lo as i64),
        width: ln.width,
        acc,
        tag: "v",
    };
    let vec_body = d.segment(&mut kb, &vseg);
    let (mut head, mut tail) = (Vec::new(), Vec::new());
    if let Some(acc1) = acc1 {
        let ts = ln.tail_start();
        for (lo, hi, tag, out) in [(0, ln.lo, "h", &mut head), (ts, ln.out, "t", &mut tail)] {
            if lo < hi {
                let j = kb.var(&format!("o{tag}"));
                let seg = Seg {
                    pos: Affine::var(j).plus(lo as i64),
                    width: 1,
                    acc: acc1,
                    tag,
                };
                let body = d.segment(&mut kb, &seg);
                out.push(for_(j, (hi - lo) as u64, LoopKind::Serial, body));
            }
        }
    }
    let nest = if s.par_blocks() {
        let blocks = ln.blocks as i64;
        let mut body = Vec::new();
        if !head.is_empty() {
            body.push(Stmt::If {
                conds: vec![(Affine::var(jb), 0, 1)],
                body: head,
            });
        }
        body.extend(vec_body);
        if !tail.is_empty() {
            body.push(Stmt::If {
                conds: vec![(Affine::var(jb), blocks - 1, blocks)],
                body: tail,
            });
        }
        vec![for_(jb, ln.blocks as u64, LoopKind::Parallel, body)]
    } else {
        let mut nest = head;
        nest.push(for_(jb, ln.blocks as u64, LoopKind::Serial, vec_body));
        nest.extend(tail);
        for ax in (0..last).rev() {
            let kind = if ax == 0 {
                LoopKind::Parallel
            } else {
                LoopKind::Serial
            };
            nest = vec![for_(d.o[ax], g.out_sp[ax] as u64, kind, nest)];
        }
        nest
    };
    let [x, dz, dk] = bufs;
    cx.push(kb.finish(nest), &[x, dz, dk], &[dk]);
}

impl DkCx<'_> {
    /// One iteration of a segment: zero the weight blocks whose taps can be clipped, then
    /// per tap of the leading axes, tap tile, channel tile and filter tile: zero the
    /// register tile, accumulate over the batch, store.
    fn segment(&self, kb: &mut KernelBuilder, seg: &Seg) -> Vec<Stmt> {
        let (g, l, s) = (self.g, self.l, self.s);
        let last = g.rank - 1;
        let name = |kb: &mut KernelBuilder, n: &str| kb.var(&format!("{n}{}", seg.tag));
        let t: Vec<Var> = (0..g.rank).map(|a| name(kb, &format!("t{a}"))).collect();
        let (cv, fv, b) = (name(kb, "cv"), name(kb, "fv"), name(kb, "b"));
        let mut four = |n: &str| -> TileVars {
            ["ti", "ci", "fi", "l"].map(|v| kb.var(&format!("{v}{n}{}", seg.tag)))
        };
        let (init, upd, st) = (four("i"), four("a"), four("s"));
        let vector = seg.width > 1;
        let tt = if vector { s.tt } else { 1 };
        let c = TileCx {
            d: self,
            seg,
            t: t.clone(),
            cv,
            fv,
            tt,
        };
        let zero = c.tile(
            init,
            Stmt::SetLocal {
                local: seg.acc,
                index: c.acc_at(init),
                value: Expr::Const(0.0),
            },
        );
        let update = c.tile(
            upd,
            Stmt::SetLocal {
                local: seg.acc,
                index: c.acc_at(upd),
                value: fma(
                    load(self.bufs[0], c.x_at(b, upd)),
                    load(self.bufs[1], c.z_at(b, upd)),
                    load_local(seg.acc, c.acc_at(upd)),
                ),
            },
        );
        let store = c.tile(
            st,
            Stmt::Store {
                buf: self.bufs[2],
                index: c.k_at(st),
                value: load_local(seg.acc, c.acc_at(st)),
            },
        );
        let per_tile = vec![
            zero,
            for_(b, self.batch as u64, s.reduction, vec![update]),
            store,
        ];
        let mut red = vec![for_(
            cv,
            (g.c / s.tq) as u64,
            LoopKind::Serial,
            vec![for_(fv, (g.f / s.ft) as u64, LoopKind::Serial, per_tile)],
        )];
        if !vector && l.padding == Padding::Same {
            red = vec![Stmt::If {
                conds: vec![(
                    c.last_tap_pos(Affine::var(t[last])),
                    0,
                    g.in_sp[last] as i64,
                )],
                body: red,
            }];
        }
        let kw = l.kernel[last] / tt;
        let mut body = Vec::new();
        // Clipped taps (any axis of a single position; the leading axes of a block) keep
        // zero gradients.
        if l.padding == Padding::Same && (!vector || g.rank > 1) {
            let e = name(kb, "e");
            let n = (seg.width * g.q * g.f) as u64;
            let kind = if n.is_multiple_of(4) {
                LoopKind::Vector(4)
            } else {
                LoopKind::Serial
            };
            let p0 = g.position(&c.o_at(None));
            body.push(for_(
                e,
                n,
                kind,
                vec![Stmt::Store {
                    buf: self.bufs[2],
                    index: p0.scale((g.q * g.f) as i64).plus_term(e, 1),
                    value: Expr::Const(0.0),
                }],
            ));
        }
        let red = vec![for_(t[last], kw as u64, LoopKind::Serial, red)];
        body.extend(tap_loops(l, g, &self.o, &t, last, red));
        body
    }
}

/// One segment's tile: its tap, channel-tile and filter-tile variables.
struct TileCx<'a, 'd> {
    d: &'a DkCx<'d>,
    seg: &'a Seg,
    /// Tap variables; the last one counts tap tiles of `tt` taps.
    t: Vec<Var>,
    cv: Var,
    fv: Var,
    tt: usize,
}

impl TileCx<'_, '_> {
    /// `for tap (unrolled) { for channel (unrolled) { for filter (unrolled) { for lane { st } } } }`.
    fn tile(&self, [ti, ci, fi, ln]: TileVars, st: Stmt) -> Stmt {
        let s = self.d.s;
        let lane_kind = if self.seg.width > 1 {
            LoopKind::Vector(4)
        } else {
            LoopKind::Unroll(1)
        };
        let un = |v: Var, n: usize, body: Stmt| {
            for_(v, n as u64, LoopKind::Unroll(n as u32), vec![body])
        };
        let lanes = for_(ln, self.seg.width as u64, lane_kind, vec![st]);
        un(ti, self.tt, un(ci, s.tq, un(fi, s.ft, lanes)))
    }

    /// Register-tile element of `(tap, channel, filter, lane)`.
    fn acc_at(&self, [ti, ci, fi, ln]: TileVars) -> Affine {
        let s = self.d.s;
        Affine::var(ti)
            .scale(s.tq as i64)
            .plus_term(ci, 1)
            .scale(s.ft as i64)
            .plus_term(fi, 1)
            .scale(self.seg.width as i64)
            .plus_term(ln, 1)
    }

    /// Output coordinates of lane `ln` (the segment's first position without one).
    fn o_at(&self, ln: Option<Var>) -> Vec<Affine> {
        let mut o: Vec<Affine> = self.d.o.iter().map(|&v| Affine::var(v)).collect();
        let pos = self.seg.pos.clone();
        o.push(ln.map_or(pos.clone(), |v| pos.plus_term(v, 1)));
        o
    }

    /// The last axis's tap of tile tap `ti`.
    fn last_tap(&self, ti: Var) -> Affine {
        let last = self.d.g.rank - 1;
        Affine::var(self.t[last])
            .scale(self.tt as i64)
            .plus_term(ti, 1)
    }

    /// Input index along the last axis of the segment's first position and tap `tap`.
    fn last_tap_pos(&self, tap: Affine) -> Affine {
        let (l, g) = (self.d.l, self.d.g);
        let last = g.rank - 1;
        self.seg
            .pos
            .clone()
            .scale(l.strides[last] as i64)
            .plus_affine(&tap.scale(l.dilation[last] as i64))
            .plus(-g.pad[last])
    }

    /// The taps of every axis for tile tap `ti`.
    fn taps(&self, ti: Var) -> Vec<Affine> {
        let last = self.d.g.rank - 1;
        let mut taps: Vec<Affine> = self.t[..last].iter().map(|&v| Affine::var(v)).collect();
        taps.push(self.last_tap(ti));
        taps
    }

    fn channel(&self, ci: Var) -> Affine {
        Affine::var(self.cv)
            .scale(self.d.s.tq as i64)
            .plus_term(ci, 1)
    }

    fn filter(&self, fi: Var) -> Affine {
        Affine::var(self.fv)
            .scale(self.d.s.ft as i64)
            .plus_term(fi, 1)
    }

    /// `x[b, patch(p(lane), q(tap, channel))]`.
    fn x_at(&self, b: Var, [ti, ci, _, ln]: TileVars) -> Affine {
        let (l, g) = (self.d.l, self.d.g);
        let last = g.rank - 1;
        let mut sp: Vec<Affine> = (0..last)
            .map(|a| super::super::lc::tap_pos(l, g, self.d.o[a], self.t[a], a))
            .collect();
        let stride = l.strides[last] as i64;
        sp.push(self.last_tap_pos(self.last_tap(ti)).plus_term(ln, stride));
        g.x_index(&Affine::var(b), &sp, &self.channel(ci))
    }

    /// `dz[b, p(lane), filter]`.
    fn z_at(&self, b: Var, [_, _, fi, ln]: TileVars) -> Affine {
        let g = self.d.g;
        let p = g.position(&self.o_at(Some(ln)));
        g.z_index(&Affine::var(b), &p, &self.filter(fi))
    }

    /// `dK[p(lane), q(tap, channel), filter]`.
    fn k_at(&self, [ti, ci, fi, ln]: TileVars) -> Affine {
        let g = self.d.g;
        let p = g.position(&self.o_at(Some(ln)));
        g.k_index(&p, &self.taps(ti), &self.channel(ci), &self.filter(fi))
    }
}
