//! The positions schedule of the LC forward (`vec=positions`, chosen by
//! `schedule::lc::positions`): the f32x4 lanes hold consecutive output positions of the
//! last spatial axis, for layers whose filters cannot fill them (few or odd filters,
//! channels_first outputs).
//!
//! The last axis is split as [`Lanes`] says: an interior run of blocks of `width`
//! positions whose taps all lie inside the input (no guard, so the input row is one
//! f32x4 load per batch row and tap, and the verifier bounds it by the loop ranges), and
//! a head and a tail of single positions with the usual clipped-tap guards. The kernel
//! operand `K[p, q, f]` of 4 positions is gathered (positions are `Q·F` apart in the
//! canonical layout), once per filter and tap, and reused by the tile's batch rows.
//! Outputs and biases are stored/loaded contiguously (channels_first) or strided
//! (channels_last, a scatter/gather).
//!
//! Invariants: per output element the sum runs over channels, then taps in ascending
//! order, starting from zero, in every segment, so the result does not depend on which
//! segment (or thread) computes it.

use super::Emit;
use crate::error::Result;
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, Expr, KernelBuilder, LocalId, LoopKind, Stmt, Var,
};
use crate::lower::lc::tap_loops;
use crate::lower::schedule::lc::{reduction_kind, Lanes};

/// One segment of the last axis: position `pos + lane` for lane in `0..width`.
struct Seg {
    /// The segment's first position of the current iteration (without the lane).
    pos: Affine,
    /// Lanes per iteration: a multiple of 4 (vector) or 1 (scalar, guarded).
    width: usize,
    /// The register tile.
    acc: LocalId,
    /// Variable-name suffix.
    tag: &'static str,
}

impl Seg {
    fn vector(&self) -> bool {
        self.width > 1
    }

    fn lane_kind(&self) -> LoopKind {
        if self.vector() {
            LoopKind::Vector(4)
        } else {
            LoopKind::Unroll(1)
        }
    }
}

impl Emit<'_> {
    /// The kernel body below the loops over the leading axes: the head, the vector
    /// blocks and the tail of the last axis. With `par_blocks` (rank 1) the block loop is
    /// the parallel loop and the head and tail run in its first and last iterations.
    pub(super) fn positions_body(
        &self,
        kb: &mut KernelBuilder,
        ln: &Lanes,
        acc: LocalId,
        acc1: Option<LocalId>,
        batch: usize,
    ) -> Result<Vec<Stmt>> {
        let jb = kb.var("ob");
        let vseg = Seg {
            pos: Affine::var(jb).scale(ln.width as i64).plus(ln.lo as i64),
            width: ln.width,
            acc,
            tag: "v",
        };
        let vec_body = self.segment(kb, &vseg, batch)?;
        let mut head = Vec::new();
        let mut tail = Vec::new();
        if let Some(acc1) = acc1 {
            if ln.lo > 0 {
                let j = kb.var("oh");
                let seg = Seg {
                    pos: Affine::var(j),
                    width: 1,
                    acc: acc1,
                    tag: "h",
                };
                head.push(for_(
                    j,
                    ln.lo as u64,
                    LoopKind::Serial,
                    self.segment(kb, &seg, batch)?,
                ));
            }
            let ts = ln.tail_start();
            if ts < ln.out {
                let j = kb.var("ot");
                let seg = Seg {
                    pos: Affine::var(j).plus(ts as i64),
                    width: 1,
                    acc: acc1,
                    tag: "t",
                };
                tail.push(for_(
                    j,
                    (ln.out - ts) as u64,
                    LoopKind::Serial,
                    self.segment(kb, &seg, batch)?,
                ));
            }
        }
        let blocks = ln.blocks as i64;
        if self.s.par_blocks() {
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
            return Ok(vec![for_(jb, ln.blocks as u64, LoopKind::Parallel, body)]);
        }
        let mut out = head;
        out.push(for_(jb, ln.blocks as u64, LoopKind::Serial, vec_body));
        out.extend(tail);
        Ok(out)
    }

    /// The batch nests of one segment iteration.
    fn segment(&self, kb: &mut KernelBuilder, seg: &Seg, batch: usize) -> Result<Vec<Stmt>> {
        let mut out = Vec::new();
        for (ni, nest) in self.s.batch_nests(batch).into_iter().enumerate() {
            out.push(self.seg_nest(kb, seg, ni, nest)?);
        }
        Ok(out)
    }

    /// One batch nest `(first row, tiles, rows per tile)` of a segment: per batch tile
    /// and filter tile, zero the tile, reduce over (taps, channels) in the patch order,
    /// store with bias and activation.
    fn seg_nest(
        &self,
        kb: &mut KernelBuilder,
        seg: &Seg,
        ni: usize,
        (b_base, ntiles, tb): (usize, usize, usize),
    ) -> Result<Stmt> {
        let mut name = |n: &str| kb.var(&format!("{n}{}{ni}", seg.tag));
        let t: Vec<Var> = (0..self.g.rank).map(|a| name(&format!("t{a}"))).collect();
        let (bt, fti, cv) = (name("bt"), name("ft"), name("c"));
        let mut three = |n: &str| {
            [
                name(&format!("bb{n}")),
                name(&format!("f{n}")),
                name(&format!("l{n}")),
            ]
        };
        let (init, upd, st) = (three("i"), three("a"), three("s"));
        let c = SegCx {
            em: self,
            seg,
            t,
            bt,
            fti,
            cv,
            b_base,
            tb,
        };
        let zero = c.tile3(
            init,
            Stmt::SetLocal {
                local: seg.acc,
                index: c.acc_at(init),
                value: Expr::Const(0.0),
            },
        );
        let mut body = vec![zero];
        body.extend(c.reduction(upd));
        body.push(c.store(st)?);
        Ok(for_(
            bt,
            ntiles as u64,
            LoopKind::Serial,
            vec![for_(
                fti,
                (self.g.f / self.s.ft) as u64,
                LoopKind::Serial,
                body,
            )],
        ))
    }
}

/// One batch nest of one segment: its tile, tap and channel variables.
struct SegCx<'a, 'e> {
    em: &'a Emit<'e>,
    seg: &'a Seg,
    t: Vec<Var>,
    bt: Var,
    fti: Var,
    cv: Var,
    b_base: usize,
    tb: usize,
}

impl SegCx<'_, '_> {
    /// Batch row of tile row `bb`.
    fn b_of(&self, bb: Var) -> Affine {
        Affine::constant(self.b_base as i64)
            .plus_term(self.bt, self.tb as i64)
            .plus_term(bb, 1)
    }

    /// Filter of tile column `ff`.
    fn f_of(&self, ff: Var) -> Affine {
        Affine::var(self.fti)
            .scale(self.em.s.ft as i64)
            .plus_term(ff, 1)
    }

    /// Register-tile element of `(row, filter, lane)`.
    fn acc_at(&self, [bb, ff, ln]: [Var; 3]) -> Affine {
        let (ft, w) = (self.em.s.ft, self.seg.width);
        Affine::var(bb)
            .scale((ft * w) as i64)
            .plus_term(ff, w as i64)
            .plus_term(ln, 1)
    }

    /// Output coordinates of lane `ln`.
    fn o_at(&self, ln: Var) -> Vec<Affine> {
        let last = self.em.g.rank - 1;
        (0..=last)
            .map(|a| {
                if a == last {
                    self.seg.pos.clone().plus_term(ln, 1)
                } else {
                    Affine::var(self.em.o[a])
                }
            })
            .collect()
    }

    /// `for row (unrolled) { for filter (unrolled) { for lane { st } } }`.
    fn tile3(&self, [bb, ff, ln]: [Var; 3], st: Stmt) -> Stmt {
        let ft = self.em.s.ft;
        for_(
            bb,
            self.tb as u64,
            LoopKind::Unroll(self.tb as u32),
            vec![for_(
                ff,
                ft as u64,
                LoopKind::Unroll(ft as u32),
                vec![for_(
                    ln,
                    self.seg.width as u64,
                    self.seg.lane_kind(),
                    vec![st],
                )],
            )],
        )
    }

    /// The reduction over (taps, channels) around the tile update with
    /// the `(row, filter, lane)` variables `upd`.
    fn reduction(&self, upd: [Var; 3]) -> Vec<Stmt> {
        let (g, l, em) = (self.em.g, self.em.l, self.em);
        let last = g.rank - 1;
        let [bb, ff, ln] = upd;
        let o = self.o_at(ln);
        let sp: Vec<Affine> = (0..g.rank)
            .map(|a| {
                o[a].clone()
                    .scale(l.strides[a] as i64)
                    .plus_term(self.t[a], l.dilation[a] as i64)
                    .plus(-g.pad[a])
            })
            .collect();
        let taps: Vec<Affine> = self.t.iter().map(|&x| Affine::var(x)).collect();
        let ch = Affine::var(self.cv);
        let x_at = g.x_index(&self.b_of(bb), &sp, &ch);
        let k_at = g.k_index(&g.position(&o), &taps, &ch, &self.f_of(ff));
        let acc = self.seg.acc;
        let red = vec![self.tile3(
            upd,
            Stmt::SetLocal {
                local: acc,
                index: self.acc_at(upd),
                value: fma(
                    load(em.x, x_at),
                    load(em.k, k_at),
                    load_local(acc, self.acc_at(upd)),
                ),
            },
        )];
        // Channels inside the last tap axis: the patch order `(taps, channel)` of every
        // other forward schedule, so each output sums its products in the same order
        // (bitwise the same result, whichever schedule autotuning picks).
        let mut red = vec![for_(self.cv, g.c as u64, reduction_kind(g.c as u64), red)];
        if !self.seg.vector() {
            // The single position's last-axis tap, clipped as in the plain schedule.
            let at = self
                .seg
                .pos
                .clone()
                .scale(l.strides[last] as i64)
                .plus_term(self.t[last], l.dilation[last] as i64)
                .plus(-g.pad[last]);
            red = vec![Stmt::If {
                conds: vec![(at, 0, g.in_sp[last] as i64)],
                body: red,
            }];
        }
        let kw = l.kernel[last] as u64;
        red = vec![for_(self.t[last], kw, em.s.reduction, red)];
        tap_loops(l, g, &em.o, &self.t, last, red)
    }

    /// The tile's store with bias and activation, `(row, filter, lane)` variables `st`.
    fn store(&self, st: [Var; 3]) -> Result<Stmt> {
        let g = self.em.g;
        let [bb, ff, ln] = st;
        let p = g.position(&self.o_at(ln));
        let y_at = g.z_index(&self.b_of(bb), &p, &self.f_of(ff));
        let value = self.em.epilogue(
            load_local(self.seg.acc, self.acc_at(st)),
            g.z_index(&Affine::constant(0), &p, &self.f_of(ff)),
            &y_at,
        )?;
        Ok(self.tile3(
            st,
            Stmt::Store {
                buf: self.em.z,
                index: y_at,
                value,
            },
        ))
    }
}
