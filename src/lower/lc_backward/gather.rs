//! The input gradient of a locally connected layer as a gather (see the parent module's
//! docs): for every input element, the (output position, tap) pairs whose window covers
//! it, enumerated per residue of the input index modulo the stride.
//!
//! Under the positions schedule the lanes hold `width` consecutive indices `i'` of one
//! residue class of the last axis, taken only from interior segments (every tap of each
//! lane reaches an output, so the lanes need no guard): lane `l` reaches output `o + l`
//! by the same tap, so `dz` is one load per row and the kernel one gather per tap,
//! filter and channel. Invariant: each element sums its taps (ascending kernel rows),
//! then filters, in the same order in every segment, lane or scalar.

use super::super::lc::{reduction_kind, Geo};
use super::super::schedule::lc as sched;
use super::super::Cx;
use tile::Tile;

mod tile;
mod transpose;
use crate::graph::LocallyConnected;
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, BufId, Expr, KernelBuilder, LocalId, LoopKind, Stmt, Var,
};

/// The input indices `i = s·i' + r` of one residue `r` modulo the stride along one axis,
/// and the taps that reach them: `t0 + j·step` for `j in 0..count`, from output
/// `i' + c0 − j·dstep` (an input index is covered by output `o` and tap `t` when
/// `o·s − pad + t·d = i`; for a fixed residue this holds for an arithmetic progression
/// of taps, and `o` is then affine in `(i', j)`). Outputs outside `[0, O)` are guarded.
/// The loops count `u = count − 1 − j` (see [`Residue::tap`]).
#[derive(Clone, Copy, Debug)]
struct Residue {
    r: i64,
    /// Number of input indices with this residue.
    n: usize,
    t0: i64,
    step: i64,
    count: usize,
    c0: i64,
    dstep: i64,
}

impl Residue {
    /// The tap of loop counter `u`. Taps are walked from the last one, so that the
    /// outputs, and the kernel rows read, ascend in memory: the hardware prefetchers
    /// then keep up (DeepFace L4 `dx`, one thread: 123 ms walking down, 107 ms up).
    fn tap(&self, u: Var) -> Affine {
        let last = self.t0 + self.step * (self.count as i64 - 1);
        Affine::var(u).scale(-self.step).plus(last)
    }

    /// The output reached from input index `i'` by the tap of loop counter `u`.
    fn output(&self, i: &Affine, u: Var) -> Affine {
        let first = self.c0 - self.dstep * (self.count as i64 - 1);
        i.clone().plus(first).plus_term(u, self.dstep)
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// The residues of input axis `a` (see [`Residue`]).
fn residues(l: &LocallyConnected, g: &Geo, a: usize) -> Vec<Residue> {
    let n = g.in_sp[a] as i64;
    let (k, s, d) = (
        l.kernel[a] as i64,
        l.strides[a] as i64,
        l.dilation[a] as i64,
    );
    let pad = g.pad[a];
    let gg = gcd(s, d);
    let step = s / gg;
    (0..s.min(n))
        .map(|r| {
            let t0 = (0..k).find(|t| (r + pad - t * d).rem_euclid(s) == 0);
            let (t0, count) = match t0 {
                Some(t0) => (t0, ((k - 1 - t0) / step + 1) as usize),
                None => (0, 0),
            };
            Residue {
                r,
                n: ((n - r + s - 1) / s) as usize,
                t0,
                step,
                count,
                c0: (r + pad - t0 * d).div_euclid(s),
                dstep: d / gg,
            }
        })
        .collect()
}

/// The input gradient as a gather (see the module docs).
pub(super) fn input_grad(cx: &mut Cx, name: &str, l: &LocallyConnected, g: &Geo, bufs: [BufId; 3]) {
    let [k, dz, dx] = bufs;
    let mut kb = KernelBuilder::new(format!("{name}.backward_dx"));
    let res: Vec<Vec<Residue>> = (0..g.rank).map(|a| residues(l, g, a)).collect();
    // Interior segments need no guards, at the price of one copy of the position code
    // per segment: split only while the copies stay few.
    let copies: usize = (0..g.rank)
        .map(|a| {
            res[a]
                .iter()
                .map(|r| segments(g, a, r, true).len())
                .sum::<usize>()
        })
        .product();
    let s = sched::input_grad(g, l, cx.batch, copies, cx.tier);
    kb.schedule(s.to_string());
    let (tc, tb, segmented) = (s.tc, s.tb, s.segmented);
    let lanes = match s.vec {
        sched::VectorAxis::Filters => 4,
        sched::VectorAxis::Positions | sched::VectorAxis::Batch => s.width,
        sched::VectorAxis::Scalar => 1,
    };
    let batch_lanes = s.vec == sched::VectorAxis::Batch;
    // Lanes over batch rows read the output gradient transposed.
    let dz = if batch_lanes {
        transpose::batch_rows(cx, name, g, dz)
    } else {
        dz
    };
    let acc = kb.local("acc", tb * tc * lanes);
    let n0 = g.in_sp[0].div_ceil(l.strides[0]) as i64;
    // Per input index of the parallel axis: the accumulators of one position between
    // tap rows (2D and 3D, see `GatherCx::position`). Lanes over batch rows keep every
    // tap in the tile (one microkernel per position; each kernel element is read once).
    let scratch =
        (g.rank >= 2 && !batch_lanes).then(|| cx.temp(n0 as usize * cx.batch * g.c * lanes));
    let i0 = kb.var("i0");
    let mut gx = GatherCx {
        kb: &mut kb,
        l,
        g,
        bufs: [k, dz, dx],
        acc,
        axis: s.vec,
        width: s.width,
        tc,
        tb,
        batch: cx.batch,
        segmented,
        scratch,
        wide: s.wide,
        edge: s.edge,
    };
    if s.vec == sched::VectorAxis::Positions && g.rank == 1 {
        let nest = gx.blocks_1d(&res[0], n0);
        let (mut reads, writes) = (vec![k, dz], vec![dx]);
        reads.extend(scratch);
        cx.push(kb.finish(vec![nest]), &reads, &writes);
        return;
    }
    let mut body = Vec::new();
    for r0 in &res[0] {
        for (lo, hi, interior) in segments(g, 0, r0, segmented) {
            let here = Span {
                i: Affine::var(i0),
                var: i0,
                lo,
                hi,
                res: *r0,
                interior,
                width: 1,
            };
            let nest = gx.axes(&res, vec![here]);
            if lo == 0 && hi == n0 {
                body.extend(nest);
            } else {
                body.push(Stmt::If {
                    conds: vec![(Affine::var(i0), lo, hi)],
                    body: nest,
                });
            }
        }
    }
    let nest = for_(i0, n0 as u64, LoopKind::Parallel, body);
    let (mut reads, mut writes) = (vec![k, dz], vec![dx]);
    reads.extend(scratch);
    writes.extend(scratch);
    cx.push(kb.finish(vec![nest]), &reads, &writes);
}

/// The segments `[lo, hi)` of the indices `i'` of residue `r` along axis `a`, and
/// whether each is interior: every tap of the progression then reaches an output in
/// `[0, O)`, so it needs no guard. Without `split`, one (guarded) segment.
fn segments(g: &Geo, a: usize, r: &Residue, split: bool) -> Vec<(i64, i64, bool)> {
    let n = r.n as i64;
    if !split || r.count == 0 {
        return vec![(0, n, false)];
    }
    // o = i' + c0 − u·dstep ∈ [0, O) for all u in 0..count.
    let lo = (r.dstep * (r.count as i64 - 1) - r.c0).clamp(0, n);
    let hi = (g.out_sp[a] as i64 - r.c0).clamp(lo, n);
    if lo == hi {
        return vec![(0, n, false)];
    }
    [(0, lo, false), (lo, hi, true), (hi, n, false)]
        .into_iter()
        .filter(|(a, b, _)| a < b)
        .collect()
}

/// One input axis of a gather nest: `i'` (the index within the residue class, in
/// `[lo, hi)`), bound by loop variable `var`.
#[derive(Clone, Debug)]
struct Span {
    i: Affine,
    var: Var,
    lo: i64,
    hi: i64,
    res: Residue,
    interior: bool,
    /// Input positions in lanes (`i + lane`, the last axis under the positions
    /// schedule), else 1.
    width: usize,
}

/// `[min, max]` of `a` when each `(var, lo, hi)` of `ranges` lies in `[lo, hi]`; `None`
/// when `a` has another variable.
fn bounds(a: &Affine, ranges: &[(Var, i64, i64)]) -> Option<(i64, i64)> {
    a.terms
        .iter()
        .try_fold((a.offset, a.offset), |(mn, mx), &(v, c)| {
            let &(_, lo, hi) = ranges.iter().find(|r| r.0 == v)?;
            Some((mn + (c * lo).min(c * hi), mx + (c * lo).max(c * hi)))
        })
}

/// State of the `dx` gather lowering.
struct GatherCx<'a, 'b> {
    kb: &'b mut KernelBuilder,
    l: &'a LocallyConnected,
    g: &'a Geo,
    bufs: [BufId; 3],
    acc: LocalId,
    /// The lanes' axis of the schedule.
    axis: sched::VectorAxis,
    /// Positions per vector block under the positions schedule.
    width: usize,
    tc: usize,
    tb: usize,
    batch: usize,
    /// Whether input axes are split into interior and border segments.
    segmented: bool,
    /// Accumulators between tap rows (2D and 3D).
    scratch: Option<BufId>,
    /// The wide loop of unguarded tap nests (lanes over batch rows).
    wide: Option<crate::loop_ir::micro::Wide>,
    /// The `(channels, rows)` tile of guarded positions under lanes over batch rows.
    edge: (usize, usize),
}

impl GatherCx<'_, '_> {
    /// The loops over the remaining input axes (one nest per residue and segment),
    /// given the axes chosen so far.
    fn axes(&mut self, res: &[Vec<Residue>], chosen: Vec<Span>) -> Vec<Stmt> {
        let a = chosen.len();
        if a == self.g.rank {
            return self.position(&chosen);
        }
        let mut out = Vec::new();
        let lanes = self.axis == sched::VectorAxis::Positions && a + 1 == self.g.rank;
        let w = self.width as i64;
        for r in &res[a] {
            for (lo, hi, interior) in segments(self.g, a, r, self.segmented) {
                // Under positions, an interior segment runs in blocks of `w` lanes and
                // its remainder one position at a time.
                let blocks = if lanes && interior { (hi - lo) / w } else { 0 };
                let mut pieces = vec![(lo, hi, 1)];
                if blocks > 0 {
                    pieces = vec![(lo, lo + blocks * w, w), (lo + blocks * w, hi, 1)];
                }
                for (plo, phi, pw) in pieces.into_iter().filter(|p| p.0 < p.1) {
                    let v = self.kb.var(&format!("i{a}"));
                    let n = (phi - plo) / pw;
                    let mut next = chosen.clone();
                    next.push(Span {
                        i: Affine::var(v).scale(pw).plus(plo),
                        var: v,
                        lo: 0,
                        hi: n,
                        res: *r,
                        interior,
                        width: pw as usize,
                    });
                    let body = self.axes(res, next);
                    out.push(for_(v, n as u64, LoopKind::Serial, body));
                }
            }
        }
        out
    }

    /// The batch and channel tiles, `for cb { for bt { body } }`, of `tc` channels and
    /// (batch rows in tiles of `TB`, or under lanes over batch rows of `lanes`, plus a
    /// remainder tile), with `body` given the tile.
    fn tiles(
        &mut self,
        (tc, lanes): (usize, usize),
        mut body: impl FnMut(&mut KernelBuilder, &Tile) -> Vec<Stmt>,
    ) -> Vec<Stmt> {
        // Under lanes over batch rows a tile's rows are its `lanes` (which divide the
        // batch), and `tb` is 1.
        let rows = if self.axis == sched::VectorAxis::Batch {
            lanes
        } else {
            self.tb
        };
        let mut nests = vec![(0usize, self.batch / rows, self.tb)];
        if !self.batch.is_multiple_of(rows) {
            nests.push((self.batch / rows * rows, 1, self.batch % rows));
        }
        let mut out = Vec::new();
        for (base, ntiles, tb) in nests {
            let (bt, cb) = (self.kb.var("bt"), self.kb.var("cb"));
            let tile = Tile {
                b: Affine::var(bt).scale(rows as i64).plus(base as i64),
                c: Affine::var(cb).scale(tc as i64),
                tb,
                tc,
                lanes,
                axis: self.axis,
                batch: self.batch,
                wide: self.wide,
            };
            let inner = body(self.kb, &tile);
            out.push(for_(
                cb,
                (self.g.c / tc) as u64,
                LoopKind::Serial,
                vec![for_(bt, ntiles as u64, LoopKind::Serial, inner)],
            ));
        }
        out
    }

    /// Computes and stores `dx[b, i, c]` for all `b` and `c` at one input position.
    ///
    /// Accumulators are `TB × TC` lane groups: lane `l` sums the products of filters
    /// `f ≡ l (mod 4)` (one lane when not vectorised), added up at the store. In 2D and
    /// 3D the tap loop of the first axis runs outside the channel and batch tiles, and
    /// the accumulators go through this thread's scratch row between its iterations,
    /// so one tile's kernel rows (`kw` taps × `TC·F` floats) stay in L1 across the batch
    /// tiles. Measured on DeepFace L4 (one thread): with every tap inside the tiles the
    /// kernel rows of all 81 taps, `Q·F` floats apart, fell into few L1 sets and were
    /// re-read from L2 by every batch tile (0.22 L1 misses per FMA under cachegrind,
    /// 0.03 split); the same loop shape reached 44 GFLOP/s on cache-resident data with
    /// 81 taps at those strides against 64 with 9, and the kernel 107 ms split against
    /// 128 unsplit.
    fn position(&mut self, at: &[Span]) -> Vec<Stmt> {
        let g = self.g;
        let (acc, scratch, bufs) = (self.acc, self.scratch, self.bufs);
        let covered = at.iter().all(|a| a.res.count > 0);
        let split = covered && scratch.is_some();
        let scratch = scratch.unwrap_or(bufs[2]); // used only when split
        let outer: Vec<Var> = if split {
            vec![self.kb.var("u0")]
        } else {
            Vec::new()
        };
        let (batch, strides) = (self.batch, &self.l.strides);
        let tile = match self.axis {
            sched::VectorAxis::Filters => (self.tc, 4),
            sched::VectorAxis::Batch if at.iter().all(|a| a.interior) => (self.tc, self.width),
            sched::VectorAxis::Batch => self.edge,
            _ => (self.tc, at[at.len() - 1].width),
        };
        // Lanes per scratch element: the widest tile of the schedule, as the scratch
        // buffer is sized (every tile of an iteration `i0` stays in its own row).
        let stride = match self.axis {
            sched::VectorAxis::Filters => 4,
            sched::VectorAxis::Positions | sched::VectorAxis::Batch => self.width,
            sched::VectorAxis::Scalar => 1,
        };
        let pass = |kb: &mut KernelBuilder, t: &Tile, first: bool, last: bool| {
            let mut body = vec![t.each(kb, true, |bb, cc, lane| Stmt::SetLocal {
                local: acc,
                index: t.acc_at(bb, cc, lane),
                value: if split && !first {
                    load(
                        scratch,
                        t.scratch_at(g, batch, stride, at[0].var, bb, cc, lane),
                    )
                } else {
                    Expr::Const(0.0)
                },
            })];
            if covered && !(split && first) && !(split && last) {
                body.extend(gather_taps(kb, g, at, &outer, t, bufs, acc));
            }
            body.push(t.each(kb, !last || t.per_lane(), |bb, cc, lane| {
                if split && !last {
                    Stmt::Store {
                        buf: scratch,
                        index: t.scratch_at(g, batch, stride, at[0].var, bb, cc, lane),
                        value: load_local(acc, t.acc_at(bb, cc, lane)),
                    }
                } else {
                    let sp: Vec<Affine> = at
                        .iter()
                        .zip(strides)
                        .map(|(a, &s)| t.along(a, lane).scale(s as i64).plus(a.res.r))
                        .collect();
                    Stmt::Store {
                        buf: bufs[2],
                        index: g.x_index(&t.row(bb, lane), &sp, &t.c.clone().plus_term(cc, 1)),
                        value: t.lane_sum(acc, bb, cc, lane),
                    }
                }
            }));
            body
        };
        if !split {
            return self.tiles(tile, |kb, t| pass(kb, t, true, true));
        }
        // Zero the scratch row, accumulate tap row by tap row, then sum it into dx.
        let mut out = self.tiles(tile, |kb, t| pass(kb, t, true, false));
        let rows = self.tiles(tile, |kb, t| pass(kb, t, false, false));
        let row = if at[0].interior {
            rows
        } else {
            let o0 = at[0].res.output(&at[0].i, outer[0]);
            vec![Stmt::If {
                conds: vec![(o0, 0, g.out_sp[0] as i64)],
                body: rows,
            }]
        };
        out.push(for_(
            outer[0],
            at[0].res.count as u64,
            LoopKind::Serial,
            row,
        ));
        out.extend(self.tiles(tile, |kb, t| pass(kb, t, false, true)));
        out
    }

    /// The rank-1 positions nest: a parallel loop over blocks of `width` input indices
    /// `i'` (of every residue); per residue, the blocks wholly inside its interior
    /// segment run in lanes, and the other indices of a block (borders, the interior's
    /// ends) one at a time under the usual segment guards. An iteration writes only its
    /// block's inputs.
    fn blocks_1d(&mut self, res0: &[Residue], n0: i64) -> Stmt {
        let w = self.width as i64;
        let jb = self.kb.var("ib");
        let mut body = Vec::new();
        for r in res0 {
            for (lo, hi, interior) in segments(self.g, 0, r, self.segmented) {
                let (vlo, vhi) = if interior {
                    ((lo + w - 1) / w, hi / w)
                } else {
                    (0, 0)
                };
                let mut singles = vec![(lo, hi)];
                if vlo < vhi {
                    let span = Span {
                        i: Affine::var(jb).scale(w),
                        var: jb,
                        lo: vlo,
                        hi: vhi,
                        res: *r,
                        interior,
                        width: self.width,
                    };
                    body.push(Stmt::If {
                        conds: vec![(Affine::var(jb), vlo, vhi)],
                        body: self.position(&[span]),
                    });
                    singles = vec![(lo, vlo * w), (vhi * w, hi)];
                }
                for (plo, phi) in singles.into_iter().filter(|p| p.0 < p.1) {
                    let e = self.kb.var("ie");
                    let i = Affine::var(jb).scale(w).plus_term(e, 1);
                    let span = Span {
                        i: i.clone(),
                        var: e,
                        lo: 0,
                        hi: w,
                        res: *r,
                        interior,
                        width: 1,
                    };
                    let one = vec![Stmt::If {
                        conds: vec![(i, plo, phi)],
                        body: self.position(&[span]),
                    }];
                    body.push(Stmt::If {
                        conds: vec![(Affine::var(jb), plo / w, (phi + w - 1) / w)],
                        body: vec![for_(e, w as u64, LoopKind::Serial, one)],
                    });
                }
            }
        }
        for_(jb, ((n0 + w - 1) / w) as u64, LoopKind::Parallel, body)
    }
}

/// The tap loops of the axes after `outer` (whose tap variables are already bound)
/// around the tile's update `acc += K[p, q(t, c), f] · dz[b, p, f]` over the filters:
/// one tap counter `u_a` per axis (see [`Residue`]), its output guarded to `[0, O_a)`
/// unless the axis is interior.
fn gather_taps(
    kb: &mut KernelBuilder,
    g: &Geo,
    at: &[Span],
    outer: &[Var],
    t: &Tile,
    [k, dz, _]: [BufId; 3],
    acc: LocalId,
) -> Vec<Stmt> {
    let mut u = outer.to_vec();
    for a in outer.len()..g.rank {
        u.push(kb.var(&format!("u{a}")));
    }
    let o: Vec<Affine> = at
        .iter()
        .zip(&u)
        .map(|(a, &v)| a.res.output(&a.i, v))
        .collect();
    let taps: Vec<Affine> = at.iter().zip(&u).map(|(a, &v)| a.res.tap(v)).collect();
    // The output position of a lane: over positions, lane `l` of input `i' + l` reaches
    // output `o + l` by the same tap.
    let p_at = |lane: Option<Var>| {
        let p = g.position(&o);
        match lane {
            Some(v) if t.positions() => p.plus_term(v, 1),
            _ => p,
        }
    };
    let fg = kb.var("fg");
    let f_at = |lane: Option<Var>| match lane {
        Some(v) if t.filters() => Affine::var(fg).scale(4).plus_term(v, 1),
        _ => Affine::var(fg),
    };
    let upd = t.each(kb, true, |bb, cc, lane| Stmt::SetLocal {
        local: acc,
        index: t.acc_at(bb, cc, lane),
        value: fma(
            load(
                k,
                g.k_index(
                    &p_at(lane),
                    &taps,
                    &t.c.clone().plus_term(cc, 1),
                    &f_at(lane),
                ),
            ),
            load(dz, t.dz_at(g, bb, lane, &p_at(lane), &f_at(lane))),
            load_local(acc, t.acc_at(bb, cc, lane)),
        ),
    });
    let p = g.position(&o);
    let f_ext = if t.filters() { g.f / 4 } else { g.f } as u64;
    let update = for_(fg, f_ext, reduction_kind(f_ext), vec![upd]);
    // The kernel index mixes u into p and into q, which the verifier cannot bound
    // through the `o` guards; a guard on its position-and-tap part (implied by them)
    // does, unless every axis is interior and the loop ranges alone keep it in bounds.
    let zero = Affine::constant(0);
    let k_pt = g.k_index(&p, &taps, &zero, &zero);
    let last_lane = if t.positions() { t.lanes() - 1 } else { 0 };
    let k_rest = g
        .k_index(
            &Affine::constant(last_lane),
            &vec![zero.clone(); g.rank],
            &Affine::constant(g.c as i64 - 1),
            &Affine::constant(g.f as i64 - 1),
        )
        .offset;
    let k_len = (g.p * g.q * g.f) as i64;
    let ranges: Vec<(Var, i64, i64)> = at
        .iter()
        .map(|a| (a.var, a.lo, a.hi - 1))
        .chain(
            at.iter()
                .zip(&u)
                .map(|(a, &v)| (v, 0, a.res.count as i64 - 1)),
        )
        .collect();
    let in_bounds = at.iter().all(|a| a.interior)
        && bounds(&k_pt, &ranges).is_some_and(|(mn, mx)| mn >= 0 && mx + k_rest < k_len);
    let mut nest = if in_bounds {
        vec![update]
    } else {
        vec![Stmt::If {
            conds: vec![(k_pt, 0, k_len - k_rest)],
            body: vec![update],
        }]
    };
    for ax in (outer.len()..g.rank).rev() {
        if !at[ax].interior {
            nest = vec![Stmt::If {
                conds: vec![(o[ax].clone(), 0, g.out_sp[ax] as i64)],
                body: nest,
            }];
        }
        nest = vec![for_(u[ax], at[ax].res.count as u64, LoopKind::Serial, nest)];
    }
    // An unguarded nest is a register-tile reduction over the taps and filters: the
    // schedule's wide loop heads it.
    if let (true, Some(w), [Stmt::For { kind, .. }]) = (in_bounds, t.wide, nest.as_mut_slice()) {
        *kind = LoopKind::Wide(w);
    }
    nest
}
