//! The schedules of the LC gradient kernels `dK`, `db` and `dx` (a part of
//! `schedule/lc.rs`, whose types and helpers they share): vector axis, register tiles,
//! row merging, gather segments, each chosen from the layer's geometry and the batch
//! size. Invariant: whatever is chosen, each gradient element is summed in one fixed
//! order (`dK`, `db`: batch rows in order from zero; `dx`: taps, then filters), so a
//! schedule changes speed, never results, and the parallel loop writes disjoint
//! elements.

use std::fmt;

use crate::graph::{LocallyConnected, Padding};
use crate::loop_ir::micro::{Tier, Wide};
use crate::loop_ir::LoopKind;

use super::{
    divisor_upto, interior, kind_text, reduction_kind, reduction_kind_upto, Lanes, VectorAxis,
    WIDE_MIN_BATCH, WIDE_ROWS,
};
use crate::lower::lc::Geo;

/// The `dK` kernel's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LcKernelGrad {
    /// The lanes' axis.
    pub vec: VectorAxis,
    /// Filters per register tile (`FT`, divides `F`).
    pub ft: usize,
    /// Patch entries per register tile (`TQ`, divides the run); under
    /// [`VectorAxis::Positions`] the channels per tile (divides `C`).
    pub tq: usize,
    /// Taps of the last axis per register tile under [`VectorAxis::Positions`]
    /// (divides its kernel extent); 1 otherwise.
    pub tt: usize,
    /// With [`VectorAxis::Positions`]: which output positions of the last axis run in
    /// lanes (the others one at a time, guarded).
    pub lanes: Option<Lanes>,
    /// The layer's spatial rank.
    pub rank: usize,
    /// Whether the last tap axis and the channels form one run (as in the forward).
    pub merge: bool,
    /// Length of the patch run one tile loop walks (`kw·C` merged, else `C`).
    pub run: usize,
    /// Schedule of the batch loop (the reduction).
    pub reduction: LoopKind,
    /// The wide loop running the batch reduction of the register tile, when the schedule
    /// gives it to a SIMD tier (`reduction` is then its f32x4 form).
    pub wide: Option<Wide>,
    /// A channels_first layer whose tile reads channels_last copies of its input and of
    /// `dz`, so that the filters fill the lanes (see [`kernel_grad`]).
    pub cl_copies: bool,
}

impl LcKernelGrad {
    /// The batch loop's kind: the wide loop, or the f32x4 reduction.
    pub fn batch_kind(&self) -> LoopKind {
        self.wide.map_or(self.reduction, LoopKind::Wide)
    }

    /// The loop kind of the filter loop of a register tile.
    pub fn filter_kind(&self) -> LoopKind {
        match self.vec {
            VectorAxis::Filters => LoopKind::Vector(4),
            VectorAxis::Scalar | VectorAxis::Positions | VectorAxis::Batch => {
                LoopKind::Unroll(self.ft as u32)
            }
        }
    }
}

impl LcKernelGrad {
    /// Whether the parallel loop is the one over position blocks (rank-1 layers under
    /// [`VectorAxis::Positions`]) rather than the first output axis.
    pub fn par_blocks(&self) -> bool {
        self.lanes.is_some() && self.rank == 1
    }
}

impl fmt::Display for LcKernelGrad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ln) = &self.lanes {
            return write!(
                f,
                "lc.dk(vec=positions, tile={}x{}x{}x{}, lanes=[{}, {}), par={}, reduce={})",
                self.tt,
                self.tq,
                self.ft,
                ln.width,
                ln.lo,
                ln.tail_start(),
                if self.par_blocks() { "blocks" } else { "o0" },
                kind_text(self.reduction),
            );
        }
        write!(
            f,
            "lc.dk(vec={}, tile={}x{}, par=o0, merge={}, reduce={}",
            self.vec,
            self.tq,
            self.ft,
            if self.merge { "row" } else { "none" },
            kind_text(self.reduction),
        )?;
        if self.cl_copies {
            f.write_str(", x,dz=channels_last")?;
        }
        match self.wide {
            Some(w) => write!(f, ", {w})"),
            None => f.write_str(")"),
        }
    }
}

/// The `dK` schedule: vectorised over filters (broadcast input, contiguous `dz`) when
/// channels_last and `F % 4 == 0`; a register tile of `TQ patch entries × FT filters`:
/// vectorised 8 f32x4 accumulators, as in the forward (see [`tile`]); scalar up to 12
/// `f32` accumulators.
///
/// Under a SIMD tier (see [`wide_kernel_grad`]) the tile is `TQ` patch entries × whole
/// registers of filters, and its batch reduction runs in the tier's microkernel.
pub(in crate::lower) fn kernel_grad(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
) -> LcKernelGrad {
    // channels_first with `F % 4 == 0`: the tile reads channels_last copies of x and
    // `dz` (one transpose of each) and runs as the channels_last tile. Measured on
    // seed_lc2d_keras1 (C = 64, F = 32) at batch 32, one thread, AVX-512: its second
    // layer's `dK` took 49 ms with lanes over positions.
    let cl_copies = !g.cl && g.f.is_multiple_of(4) && batch >= WIDE_MIN_BATCH;
    let vec = (g.cl || cl_copies) && g.f.is_multiple_of(4);
    if !vec {
        if let Some(s) = kernel_grad_positions(g, l, batch) {
            return s;
        }
    }
    let last = g.rank - 1;
    // As in the forward: a channels_last patch row without padding guard or dilation is
    // one contiguous run of `kw·C` floats in x and in dK, walked by one loop.
    let merge = g.cl && l.dilation[last] == 1 && l.padding == Padding::Valid;
    let run = if merge { l.kernel[last] * g.c } else { g.c };
    let (ft, tq) = if vec {
        let ft = if g.f.is_multiple_of(8) { 8 } else { 4 };
        (ft, divisor_upto(run, 32 / ft))
    } else {
        let ft = divisor_upto(g.f, 4);
        (ft, divisor_upto(run, (12 / ft).min(4)))
    };
    let s = LcKernelGrad {
        vec: if vec {
            VectorAxis::Filters
        } else {
            VectorAxis::Scalar
        },
        ft,
        tq,
        tt: 1,
        lanes: None,
        rank: g.rank,
        merge,
        run,
        reduction: reduction_kind(batch as u64),
        wide: None,
        cl_copies,
    };
    match tier.and_then(|t| wide_kernel_grad(g, &s, batch, t)) {
        Some(w) => w,
        None => s,
    }
}

/// The `dK` tile under `tier`, when it applies: vectorised over filters, a batch long
/// enough to be compute-bound (as the forward's [`super::WIDE_MIN_BATCH`]), filters
/// filling whole registers; `TQ` is the largest divisor of the run with a tile that
/// fits the registers, up to [`super::WIDE_ROWS`] rows. No prefetch: each tile reads
/// `dz` rows that the tiles before it have brought into cache.
fn wide_kernel_grad(g: &Geo, s: &LcKernelGrad, batch: usize, tier: Tier) -> Option<LcKernelGrad> {
    let w = tier.lanes();
    if s.vec != VectorAxis::Filters || batch < WIDE_MIN_BATCH || !g.f.is_multiple_of(w) {
        return None;
    }
    let tq = (1..=WIDE_ROWS.min(s.run))
        .rev()
        .find(|&r| s.run.is_multiple_of(r) && tier.fits(r, w))?;
    Some(LcKernelGrad {
        ft: w,
        tq,
        wide: Some(Wide::new(tier)),
        ..s.clone()
    })
}

/// Batch-loop unroll of the positions `dK` tile: its body (up to 8 FMAs and their
/// loads) already amortises the loop overhead. Measured on GpNet's four layers at batch
/// 32 (callgrind): unrolling by 16 instead cost 15.5 M more instructions of compilation
/// to save 0.25 M per training step (13.40 M → 13.15 M).
const POSITIONS_BATCH_UNROLL: u64 = 8;

/// Batch-loop unroll of the `db` blocks (8 f32x4 adds per row already); each block's
/// remainder chunks repeat the loop. Measured as above: unrolling by 16 cost 24.5 M
/// more instructions of compilation to save 0.16 M per step (1.84 M → 1.68 M).
const BIAS_BATCH_UNROLL: u64 = 4;

/// The positions schedule of `dK`, when the filters cannot fill the lanes
/// (channels_first, or `F % 4 != 0`) and at least one operand is contiguous along output
/// positions of the last axis: the input (stride 1, and channels_first or one channel)
/// or `dz` (channels_first or one filter); the other is gathered, once per batch row and
/// shared by the tile's filters (input) or taps and channels (`dz`). The sums run over
/// the batch in order, as in every other `dK` schedule.
///
/// The tile is `TT` last-axis taps × `TQ` channels × `FT` filters × `width` positions,
/// at most 8 f32x4 accumulators: taps first (one unaligned input load each, the `dz`
/// vector reused by all of them), then channels, filters, and more positions. Measured
/// on GpNet's four layers (one filter and channel, kernel 2–5, 44 k positions) at batch
/// 32 with callgrind: 54.1 M instructions per training step with scalar `1×1` tiles,
/// 13.4 M with positions.
fn kernel_grad_positions(g: &Geo, l: &LocallyConnected, batch: usize) -> Option<LcKernelGrad> {
    let last = g.rank - 1;
    let x_contiguous = l.strides[last] == 1 && (!g.cl || g.c == 1);
    let dz_contiguous = !g.cl || g.f == 1;
    if !x_contiguous && !dz_contiguous {
        return None;
    }
    let kw = l.kernel[last];
    let tt = divisor_upto(kw, 8);
    let tq = divisor_upto(g.c, 8 / tt);
    let ft = divisor_upto(g.f, 8 / (tt * tq));
    let (lo, hi) = interior(g, l, last);
    let width = 4 * (8 / (tt * tq * ft)).clamp(1, 4);
    let width = (4..=width)
        .rev()
        .step_by(4)
        .find(|w| (hi - lo) / w >= 2)
        .unwrap_or(4);
    let blocks = (hi - lo) / width;
    if blocks == 0 {
        return None;
    }
    Some(LcKernelGrad {
        vec: VectorAxis::Positions,
        ft,
        tq,
        tt,
        lanes: Some(Lanes {
            lo,
            blocks,
            width,
            out: g.out_sp[last],
        }),
        rank: g.rank,
        merge: false,
        run: g.c,
        reduction: reduction_kind_upto(batch as u64, POSITIONS_BATCH_UNROLL),
        wide: None,
        cl_copies: false,
    })
}

/// The `db` kernel's schedule: `dbias[e] = Σ_b dz[b, e]` in parallel blocks of `blk`
/// elements of the per-sample output, each summed over the batch rows in a register
/// tile (`blk` f32 lanes) and stored once; the `rem` elements after the last full block
/// run in the last iteration (their multiple of 4 in lanes, the rest one by one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LcBiasGrad {
    /// Elements per parallel block (≤ 32; a multiple of 4 unless `P·F < 4`).
    pub blk: usize,
    /// Number of full blocks (≥ 1).
    pub blocks: usize,
    /// Elements after the last full block (`P·F mod blk`).
    pub rem: usize,
    /// The loop kind over a block's elements.
    pub kind: LoopKind,
    /// Schedule of the batch loop.
    pub reduction: LoopKind,
}

impl fmt::Display for LcBiasGrad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "lc.db(block={}, tail={}, par=blocks, lanes={}, reduce={})",
            self.blk,
            self.rem,
            kind_text(self.kind),
            kind_text(self.reduction),
        )
    }
}

/// The `db` schedule: blocks of 32 elements (8 f32x4 accumulators, the register budget
/// of the other LC kernels), fewer when the output is smaller, with a remainder instead
/// of a block length that must divide `P·F`. Measured on GpNet (`P·F` = 44,314 = 2 ×
/// 22,157, where the old divisor rule gave scalar blocks of 2 summed through memory),
/// four layers at batch 32 with callgrind: 52.6 M instructions per training step
/// before, 1.8 M after. The sum order per element (batch rows in order from
/// zero) is the one of the old schedule, so the results are bitwise unchanged.
pub(in crate::lower) fn bias_grad(g: &Geo, batch: usize) -> LcBiasGrad {
    let n = g.p * g.f;
    let reduction = reduction_kind_upto(batch as u64, BIAS_BATCH_UNROLL);
    if n < 4 {
        return LcBiasGrad {
            blk: n,
            blocks: 1,
            rem: 0,
            kind: LoopKind::Unroll(n as u32),
            reduction,
        };
    }
    let blk = [32, 16, 8, 4].into_iter().find(|b| *b <= n).unwrap_or(4);
    LcBiasGrad {
        blk,
        blocks: n / blk,
        rem: n % blk,
        kind: LoopKind::Vector(4),
        reduction,
    }
}

/// The `dx` gather's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LcInputGrad {
    /// The lanes' axis (filters: lanes hold partial sums over `f mod 4`).
    pub vec: VectorAxis,
    /// Channels per register tile (`TC`, divides `C`).
    pub tc: usize,
    /// Batch rows per register tile (`TB`).
    pub tb: usize,
    /// Whether interior input segments get unguarded copies of the position code.
    pub segmented: bool,
    /// The layer's spatial rank (rank 1 under positions: the parallel loop runs over
    /// blocks of `width` input positions).
    pub rank: usize,
    /// Under [`VectorAxis::Positions`]: input positions (of one residue class of the
    /// last axis) per vector block, a multiple of 4; under [`VectorAxis::Batch`]: batch
    /// rows per tile (whole registers of the tier); 1 otherwise.
    pub width: usize,
    /// The wide loop running the taps and filters of an interior position's register
    /// tile (under [`VectorAxis::Batch`] only).
    pub wide: Option<Wide>,
    /// Under [`VectorAxis::Batch`]: the `(channels, batch rows)` tile of the positions
    /// whose taps are guarded (borders, and every position under `same` padding), which
    /// run as f32x4 code: at most 8 accumulators, as the 16 registers of f32x4 code
    /// allow (a wide tile there spilled every accumulator: `dx` of `seed_lc2d` took
    /// 17.9 ms against 24.6 ms for the f32x4 schedule). Each lane sums in the same order
    /// in either tile.
    pub edge: (usize, usize),
}

impl fmt::Display for LcInputGrad {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.vec == VectorAxis::Positions {
            return write!(
                f,
                "lc.dx(vec=positions, tile={}x{}x{}, par={}, segments={})",
                self.tb,
                self.tc,
                self.width,
                if self.rank == 1 { "blocks" } else { "i0" },
                if self.segmented { "split" } else { "guarded" },
            );
        }
        if self.vec == VectorAxis::Batch {
            write!(
                f,
                "lc.dx(vec=batch, tile={}x{}, edge={}x{}, par=i0, segments={}",
                self.tc,
                self.width,
                self.edge.0,
                self.edge.1,
                if self.segmented { "split" } else { "guarded" },
            )?;
            return match self.wide {
                Some(w) => write!(f, ", {w})"),
                None => f.write_str(")"),
            };
        }
        write!(
            f,
            "lc.dx(vec={}, tile={}x{}, par=i0, segments={})",
            self.vec,
            self.tb,
            self.tc,
            if self.segmented { "split" } else { "guarded" },
        )
    }
}

/// The `dx` schedule. The register tile `(TC channels, TB batch rows)`: vectorised
/// (lanes over filters) 8 f32x4 accumulators, as 2 rows × 4 channels (measured on
/// DeepFace L4, one thread: 2×4 131 ms, 4×2 150, 8×1 159, 1×8 158, 2×2 158; 3×4 = 12
/// accumulators spilled, 220); scalar: up to 12 `f32`. `copies` is how many copies of
/// the per-position code splitting off the interior segments would make: split only
/// while they stay few ([`MAX_GATHER_NESTS`]).
///
/// Positions (lanes over 4 input positions of one residue class of the last axis, see
/// `lc_backward/gather.rs`) when the filters cannot fill the lanes and `dz` is
/// contiguous along output positions (channels_first or one filter): the kernel operand
/// is then gathered once per tap, filter and channel and shared by the `TB` rows, `dz`
/// is one f32x4 load per row, and `dx` is stored per lane without a horizontal sum. The
/// tile is `TB rows × TC channels × width positions`, at most 8 f32x4 accumulators, rows
/// first (each reuses the gathered kernel vector). Only interior segments (every tap
/// reaching an output) at least `width` long run in lanes. Measured on GpNet's four
/// layers at batch 32 with callgrind: 109.1 M instructions per training step with
/// scalar `8×1` tiles, 41.3 M with positions.
///
/// Otherwise, at batches that are a multiple of 4, the lanes run over batch rows
/// ([`batch_input_grad`]), under a wide tier in microkernels.
pub(in crate::lower) fn input_grad(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    copies: usize,
    tier: Option<Tier>,
) -> LcInputGrad {
    let vec = g.cl && g.f.is_multiple_of(4);
    let tc = divisor_upto(g.c, 4);
    let segmented = copies <= MAX_GATHER_NESTS;
    let last = g.rank - 1;
    let dz_contiguous = !g.cl || g.f == 1;
    let lanes_fit = g.in_sp[last].div_ceil(l.strides[last]) >= 8;
    // Filters that fill the lanes (channels_first with `F % 4 == 0`) take lanes over
    // batch rows where they apply: seed_lc2d_keras1's second layer (C = 64, F = 32) at
    // batch 32, one thread, AVX-512: 130 ms with positions.
    let few = !g.f.is_multiple_of(4) || !batch.is_multiple_of(4);
    if !vec
        && (few || batch_input_grad(g, l, batch, segmented, tier).is_none())
        && dz_contiguous
        && segmented
        && lanes_fit
    {
        let tb = batch.clamp(1, 8);
        let tc = divisor_upto(g.c, (8 / tb).max(1));
        return LcInputGrad {
            vec: VectorAxis::Positions,
            tc,
            tb,
            segmented,
            rank: g.rank,
            width: 4 * (8 / (tb * tc)).clamp(1, 4),
            wide: None,
            edge: (tc, tb),
        };
    }
    if let Some(s) = batch_input_grad(g, l, batch, segmented, tier) {
        return s;
    }
    let budget = if vec { 8 } else { 12 };
    LcInputGrad {
        vec: if vec {
            VectorAxis::Filters
        } else {
            VectorAxis::Scalar
        },
        tc,
        tb: (budget / tc).clamp(1, 8).min(batch),
        segmented,
        rank: g.rank,
        width: 1,
        wide: None,
        edge: (tc, 1),
    }
}

/// The `dx` schedule with lanes over batch rows, chosen at every batch that is a
/// multiple of 4 for layers with at most [`MAX_BATCH_LANE_TAPS`] taps per input element
/// (unless the positions schedule applies), under every tier, so that
/// `dx` has the same bits whatever the machine. A tile is `TC` channels × `width` batch
/// rows of one input position; each product broadcasts one kernel element (shared by
/// the rows) against a vector of the transposed output gradient `dzT[p, f, b]` (shared
/// by the channels). Every lane is one `dx` element summing its taps, then filters, in
/// the scalar order: no lane partial sums and no horizontal sum at the store, and each
/// kernel element is read once per input position that reaches it.
///
/// Under a wide tier whose registers the batch fills, the taps and filters of an
/// interior position run in one microkernel: `width` is two registers when the batch
/// allows (one vector load feeds `2·TC` multiply-adds), else one, and the channels fill
/// the remaining registers. Otherwise, and at guarded positions (`edge`), the tile is 4
/// channels × 8 rows (or 8 × 4) of f32x4 code.
///
/// Measured with `examples/perf_lc_grad` at batch 32, 2 threads, f32x4 code against the
/// lanes-over-filters schedule in the same run: seed_lc2d's second layer 12.9 ms
/// against 23.2, deepface_l4_l6 L5 15.1 against 16.8 and L6 4.5 against 5.3,
/// lc2d_f12_f6's F = 6 layer 2.4 against 18.6, seed_lc2d_keras1 (channels_first) 21
/// against 89; with AVX-512 microkernels seed_lc2d 7.4 ms, L5 8.6, L6 3.2.
fn batch_input_grad(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    segmented: bool,
    tier: Option<Tier>,
) -> Option<LcInputGrad> {
    let taps: usize = l
        .kernel
        .iter()
        .zip(&l.strides)
        .map(|(k, s)| k.div_ceil(*s))
        .product();
    if batch == 0 || !batch.is_multiple_of(4) || taps > MAX_BATCH_LANE_TAPS {
        return None;
    }
    // Edges: 4 channels × 8 rows (2 f32x4 per channel), as the batch allows.
    let edge_rows = if batch.is_multiple_of(8) { 8 } else { 4 };
    let edge = (divisor_upto(g.c, 8 / (edge_rows / 4)), edge_rows);
    let wide = tier.and_then(|tier| {
        let lanes = tier.lanes();
        let width = [2 * lanes, lanes]
            .into_iter()
            .find(|w| batch.is_multiple_of(*w))?;
        let rows = (1..=tier.registers())
            .rev()
            .find(|r| tier.fits(*r, width))?;
        Some((divisor_upto(g.c, rows), width, tier))
    });
    let (tc, width) = wide.map_or(edge, |(tc, w, _)| (tc, w));
    Some(LcInputGrad {
        vec: VectorAxis::Batch,
        tc,
        tb: 1,
        segmented,
        rank: g.rank,
        width,
        wide: wide.map(|(_, _, t)| Wide::new(t)),
        edge,
    })
}

/// Most taps reaching one input element (`Π ⌈k_a / s_a⌉`) for lanes over batch rows.
/// Each tap reads its kernel rows at another output position, so an input position's
/// tile walks that many streams at once: DeepFace L4's `dx` (81 taps, 9×9; only
/// `lcjit grad` computes it, as L4 reads the model input) took 136 ms as f32x4 code and
/// 164 ms with AVX-512 microkernels on one thread, against 124 ms for lanes over
/// filters, whose split tap rows walk 9 streams; its L6 (25 taps) and L5 (16) gained.
pub const MAX_BATCH_LANE_TAPS: usize = 32;

/// Most copies of the per-position gather code in one `dx` kernel.
pub const MAX_GATHER_NESTS: usize = 64;
