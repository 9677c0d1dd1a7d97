//! The register tile of the `dx` gather (see the parent module): `TB` batch rows ×
//! `TC` channels of accumulators, each a scalar, an f32x4 over filters (partial sums
//! over `f mod 4`, added up at the store) or `width` lanes over input positions of the
//! last axis; or, under lanes over batch rows, `TC` channels × `width` rows (no row
//! loop: the rows are the lanes). Invariant: accumulator and scratch elements are
//! indexed by the tile's unrolled row and channel variables and its lane variable only,
//! so they can live in registers.

use super::Span;
use crate::loop_ir::micro::Wide;
use crate::loop_ir::{
    bin, for_, load_local, Affine, BinOp, Expr, KernelBuilder, LocalId, LoopKind, Stmt, Var,
};
use crate::lower::lc::Geo;
use crate::lower::lc_backward::tile2;
use crate::lower::schedule::lc::VectorAxis;

/// A batch-and-channel tile of the `dx` gather: rows `b..b+tb`, channels `c..c+tc`,
/// each accumulator `lanes` wide: over filters (4, summed at the store), over input
/// positions of the last axis, over batch rows (then `tb` is 1 and the rows are
/// `b..b+lanes`), or one scalar.
pub(super) struct Tile {
    pub(super) b: Affine,
    pub(super) c: Affine,
    pub(super) tb: usize,
    pub(super) tc: usize,
    pub(super) lanes: usize,
    /// The lanes' axis.
    pub(super) axis: VectorAxis,
    /// The batch size (the row stride of the transposed output gradient under
    /// [`VectorAxis::Batch`]).
    pub(super) batch: usize,
    /// The wide loop of an unguarded tap nest (lanes over batch rows only).
    pub(super) wide: Option<Wide>,
}

impl Tile {
    pub(super) fn lanes(&self) -> i64 {
        self.lanes as i64
    }

    /// Whether the lanes hold partial sums over filters.
    pub(super) fn filters(&self) -> bool {
        self.lanes > 1 && self.axis == VectorAxis::Filters
    }

    /// Whether the lanes run over input positions.
    pub(super) fn positions(&self) -> bool {
        self.axis == VectorAxis::Positions
    }

    /// Whether the lanes run over batch rows.
    pub(super) fn batch_lanes(&self) -> bool {
        self.axis == VectorAxis::Batch
    }

    /// Whether each lane is its own `dx` element (stored without a horizontal sum).
    pub(super) fn per_lane(&self) -> bool {
        self.positions() || self.batch_lanes()
    }

    /// The batch row of tile row `bb` and lane `lane`.
    pub(super) fn row(&self, bb: Var, lane: Option<Var>) -> Affine {
        match lane {
            Some(v) if self.batch_lanes() => self.b.clone().plus_term(v, 1),
            _ => self.b.clone().plus_term(bb, 1),
        }
    }

    /// Element of the output gradient `dz` for row `bb`, lane `lane`, output position
    /// `p` and filter `f`: `dz[b, p, f]` in the layer's layout, or under lanes over
    /// batch rows the transposed `dzT[(p·F + f)·B + b]`.
    pub(super) fn dz_at(
        &self,
        g: &Geo,
        bb: Var,
        lane: Option<Var>,
        p: &Affine,
        f: &Affine,
    ) -> Affine {
        let b = self.row(bb, lane);
        if self.batch_lanes() {
            return p
                .clone()
                .scale((g.f * self.batch) as i64)
                .plus_affine(&f.clone().scale(self.batch as i64))
                .plus_affine(&b);
        }
        g.z_index(&b, p, f)
    }

    /// The index `i'` along span `a` of lane `lane` (only a span in lanes moves).
    pub(super) fn along(&self, a: &Span, lane: Option<Var>) -> Affine {
        match lane {
            Some(v) if a.width > 1 => a.i.clone().plus_term(v, 1),
            _ => a.i.clone(),
        }
    }

    /// `for bb in 0..tb unroll { for cc in 0..tc unroll { [for lane in 0..4 vector] { st } } }`
    /// (the lane loop when vectorised and `lanes`). Under lanes over batch rows there is
    /// no `bb` loop (the shape of a wide register tile: channels, then lanes), and `st`'s
    /// `bb` is a variable no loop binds, which the tile's index functions ignore.
    pub(super) fn each(
        &self,
        kb: &mut KernelBuilder,
        lanes: bool,
        st: impl Fn(Var, Var, Option<Var>) -> Stmt,
    ) -> Stmt {
        let (bb, cc) = (kb.var("bb"), kb.var("cc"));
        let inner = if self.lanes > 1 && lanes {
            let lane = kb.var("lane");
            let n = self.lanes as u64;
            for_(lane, n, LoopKind::Vector(4), vec![st(bb, cc, Some(lane))])
        } else {
            st(bb, cc, None)
        };
        if self.batch_lanes() {
            return for_(
                cc,
                self.tc as u64,
                LoopKind::Unroll(self.tc as u32),
                vec![inner],
            );
        }
        let unroll = |n: usize| (n, LoopKind::Unroll(n as u32));
        let ((nb, kb_), (nc, kc)) = (unroll(self.tb), unroll(self.tc));
        tile2((bb, nb, kb_), (cc, nc, kc), inner)
    }

    /// Accumulator element of row `bb`, channel `cc` (and lane).
    pub(super) fn acc_at(&self, bb: Var, cc: Var, lane: Option<Var>) -> Affine {
        if self.batch_lanes() {
            let a = Affine::var(cc).scale(self.lanes());
            return lane.map_or(a.clone(), |v| a.plus_term(v, 1));
        }
        let a = Affine::var(bb)
            .scale(self.tc as i64)
            .plus_term(cc, 1)
            .scale(self.lanes());
        lane.map_or(a.clone(), |v| a.plus_term(v, 1))
    }

    /// Element of the scratch rows `(i0, b, c, lane)` for row `bb`, channel `cc`, with
    /// `stride` lanes per element: the schedule's widest tile, the same for every tile
    /// of the kernel. Scaling by this tile's own lanes made a 1-lane border tile of
    /// iteration `i0` share scratch with an 8-lane tile of another `i0` (a race between
    /// threads that checked mode caught).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn scratch_at(
        &self,
        g: &Geo,
        batch: usize,
        stride: usize,
        i0: Var,
        bb: Var,
        cc: Var,
        lane: Option<Var>,
    ) -> Affine {
        let a = Affine::var(i0)
            .scale(batch as i64)
            .plus_affine(&self.b)
            .plus_term(bb, 1)
            .scale(g.c as i64)
            .plus_affine(&self.c)
            .plus_term(cc, 1)
            .scale(stride as i64);
        lane.map_or(a.clone(), |v| a.plus_term(v, 1))
    }

    /// The value stored for accumulator `(bb, cc)`: over filters the sum of its lanes,
    /// `(l0 + l1) + (l2 + l3)`; over positions or batch rows lane `lane`.
    pub(super) fn lane_sum(&self, acc: LocalId, bb: Var, cc: Var, lane: Option<Var>) -> Expr {
        if self.per_lane() {
            return load_local(acc, self.acc_at(bb, cc, lane));
        }
        let at = |j: i64| load_local(acc, self.acc_at(bb, cc, None).plus(j));
        if self.filters() {
            bin(
                BinOp::Add,
                bin(BinOp::Add, at(0), at(1)),
                bin(BinOp::Add, at(2), at(3)),
            )
        } else {
            at(0)
        }
    }
}
