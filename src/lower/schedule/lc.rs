//! The schedules of the locally connected layers: forward, `dK`, `db` and `dx`, all
//! chosen here (the gradient kernels' in the child module `lc/backward.rs`) from the
//! layer's geometry, the batch size and the target (the SIMD tier past f32x4 and the
//! weights' storage type), with the measurements that justify each choice. The emitters
//! (`lower/lc.rs`, `lower/lc_backward.rs`, `lower/lc_backward/gather.rs`) follow these
//! structs and decide nothing themselves; a wide tile ([`wide_tile`]) is a choice like
//! any other, recorded in the schedule line and in its `wide(tier)` loop.
//!
//! Invariants: tile sizes divide the extents they tile (`ft | F`, `tq | run`,
//! `tc | C`), except the batch tile, whose remainder rows get one narrower nest
//! ([`LcForward::batch_nests`]); a vectorised tile's lane axis holds 4 contiguous
//! elements of every vector operand.

use std::fmt;

use crate::graph::LocallyConnected;
use crate::loop_ir::micro::{Tier, Wide};
use crate::loop_ir::LoopKind;

use super::super::lc::Geo;

/// Which axis the f32x4 lanes of a kernel's register tile run along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorAxis {
    /// No vector lanes: scalar tiles.
    Scalar,
    /// Four consecutive filters (`F % 4 == 0`; a channels_first output is stored and
    /// its bias read with lanes `P` elements apart, once per output element).
    Filters,
    /// Four consecutive output positions along the last spatial axis (see [`Lanes`]).
    Positions,
    /// Consecutive batch rows: the `dx` gather, which reads the output gradient
    /// transposed to `[p, f, b]` so that a tile's rows are one vector (see
    /// [`input_grad`]), and the forward pass of few or odd filters, which reads the
    /// input transposed to `[e, b]` (see [`batch_lanes`]).
    Batch,
}

impl fmt::Display for VectorAxis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            VectorAxis::Scalar => "scalar",
            VectorAxis::Filters => "filters",
            VectorAxis::Positions => "positions",
            VectorAxis::Batch => "batch",
        })
    }
}

/// The forward kernel's schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LcForward {
    /// The lanes' axis.
    pub vec: VectorAxis,
    /// Batch rows per register tile (`TB`, at most the batch; under
    /// [`VectorAxis::Batch`] a multiple of 4 dividing the batch: the tile's lanes).
    pub tb: usize,
    /// Filters per register tile (`FT`, divides `F`; under [`VectorAxis::Batch`] the
    /// tile's rows, each kernel element broadcast to every lane).
    pub ft: usize,
    /// Channel block length of the channel-blocked loop order (see [`block_channels`]).
    pub cblock: Option<usize>,
    /// Whether the last tap axis and the channels form one reduction loop (see
    /// [`LcForward::merge`]).
    pub merge: bool,
    /// Schedule of the innermost reduction loop (see [`reduction_kind`]).
    pub reduction: LoopKind,
    /// With [`VectorAxis::Positions`]: which positions of the last axis run in lanes.
    pub lanes: Option<Lanes>,
    /// The layer's spatial rank.
    pub rank: usize,
    /// The wide loop (SIMD tier, prefetch distance) whose microkernel runs the register
    /// tile's reduction (see [`wide_tile`]); `None`: f32x4.
    pub wide: Option<Wide>,
    /// A channels_first layer reading a channels_last copy of its input (see
    /// `wide_filters`).
    pub x_cl: bool,
}

/// The split of the last output axis under [`VectorAxis::Positions`]: positions
/// `lo..lo + blocks·width` run in blocks of `width` (a multiple of 4) lanes, with every
/// tap inside the input (no guard); the head `0..lo` and the tail up to `out` run one
/// position at a time, guarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lanes {
    /// First vectorised position.
    pub lo: usize,
    /// Number of vector blocks (≥ 1).
    pub blocks: usize,
    /// Positions per block (4, 8, 12 or 16: `width / 4` f32x4 per accumulator row).
    pub width: usize,
    /// Extent of the last output axis.
    pub out: usize,
}

impl Lanes {
    /// First position of the scalar tail.
    pub fn tail_start(&self) -> usize {
        self.lo + self.blocks * self.width
    }
}

impl LcForward {
    /// The batch nests `(first row, tiles, rows per tile)`: full tiles of `tb` rows, and
    /// one narrower tile for the remainder rows when `tb` does not divide the batch.
    pub fn batch_nests(&self, batch: usize) -> Vec<(usize, usize, usize)> {
        let tiles = batch / self.tb;
        let mut nests = vec![(0usize, tiles, self.tb)];
        if !batch.is_multiple_of(self.tb) {
            nests.push((tiles * self.tb, 1, batch % self.tb));
        }
        nests
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

    /// The loop kind of the row loop of a register tile of `rows` rows (`TB`, or the
    /// remainder tile's): the lanes under [`VectorAxis::Batch`], else unrolled.
    pub fn row_kind(&self, rows: usize) -> LoopKind {
        match self.vec {
            VectorAxis::Batch => LoopKind::Vector(4),
            _ => LoopKind::Unroll(rows as u32),
        }
    }

    /// Whether the parallel loop is the one over position blocks (rank-1 layers under
    /// [`VectorAxis::Positions`]) rather than the first output axis.
    pub fn par_blocks(&self) -> bool {
        self.lanes.is_some() && self.rank == 1
    }
}

impl fmt::Display for LcForward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ln) = &self.lanes {
            return write!(
                f,
                "lc.forward(vec=positions, tile={}x{}x{}, lanes=[{}, {}), par={}, reduce={})",
                self.tb,
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
            "lc.forward(vec={}, tile={}x{}, par=o0, cblock={}, merge={}, reduce={}",
            self.vec,
            self.tb,
            self.ft,
            self.cblock.map_or("none".into(), |c| c.to_string()),
            if self.merge { "row" } else { "none" },
            kind_text(self.reduction),
        )?;
        if self.x_cl {
            f.write_str(", x=channels_last")?;
        }
        match self.wide {
            Some(w) => write!(f, ", {w})"),
            None => f.write_str(")"),
        }
    }
}

/// `serial`, `unroll(n)`, … as in the loop IR printer.
pub(super) fn kind_text(k: LoopKind) -> String {
    match k {
        LoopKind::Serial => "serial".into(),
        LoopKind::Parallel => "parallel".into(),
        LoopKind::Vector(w) => format!("vector({w})"),
        LoopKind::Unroll(u) => format!("unroll({u})"),
        LoopKind::Wide(w) => w.to_string(),
    }
}

/// The forward schedule of an LC layer of geometry `g` at batch size `batch`, on a
/// target with the SIMD tier `tier` past f32x4 (if any), with the kernel stored in 16
/// bits or not (`half`): the family `plan` when autotuning chose one and it applies
/// here (see [`plan`]), else the first of positions, batch lanes, wide filters and
/// filters whose conditions hold.
pub(in crate::lower) fn forward(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    half: bool,
    plan: Option<ForwardPlan>,
) -> LcForward {
    if let Some(s) = plan.and_then(|p| plan::planned(p, g, l, batch, tier, half)) {
        return s;
    }
    if let Some(s) = positions(g, l, batch) {
        return s;
    }
    if let Some(s) = batch_lanes(g, l, batch, tier, half) {
        return s;
    }
    if let Some(s) = tier.and_then(|t| wide_filters(g, l, batch, t, half)) {
        return s;
    }
    filters(g, l, batch)
}

/// The filters schedule with a wide register tile under `tier`, when [`wide_tile`]
/// gives one.
fn wide_filters(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Tier,
    half: bool,
) -> Option<LcForward> {
    let (ft, tb, cblock) = wide_tile(g, batch, tier, half)?;
    let last = g.rank - 1;
    // A layer whose per-position weights need channel blocking (`cblock`) keeps the
    // blocked order, its channel-block loop wide (see [`wide_tile`]).
    let merge = cblock.is_none() && g.cl && l.dilation[last] == 1;
    let red_extent = match cblock {
        Some(c) => c,
        None if merge => l.kernel[last] * g.c,
        None => g.c,
    };
    Some(LcForward {
        vec: VectorAxis::Filters,
        tb,
        ft,
        cblock,
        merge,
        reduction: reduction_kind(red_extent as u64),
        lanes: None,
        rank: g.rank,
        // The next output position's weights (`K[p + 1]`, `Q·F` elements on) stream
        // in while this position's first batch tile computes. Measured on
        // deepface_l4_l6 at batch 32 (2 threads, AVX-512, 16 rows): 32.7 → 28.0 ms
        // and 38.7 → 30.6 ms in two runs; without it the first batch tile of every
        // position waits on memory and the later ones compute from cache, so the
        // two never overlap.
        // The blocked order walks a position's weights once per batch tile, block
        // by block: no single next position to prefetch.
        wide: Some(Wide {
            tier,
            prefetch: if cblock.is_some() {
                0
            } else {
                (g.q * g.f) as i64
            },
        }),
        // A channels_first input with several channels is read through a channels_last
        // copy: the tile broadcasts one input element per row and channel, and in the
        // layer's own order consecutive channels lie a whole plane apart (one cache line
        // per broadcast). Measured on seed_lc2d_keras1 (C = 64, F = 32) at batch 32, 2
        // threads, AVX-512: its second layer took 15.9 ms with the planar reads against
        // 4.6 ms for the channels_last layer of seed_lc2d.
        x_cl: !g.cl && g.c > 1,
    })
}

/// The f32x4 filters schedule (scalar tiles when `F % 4 != 0`): it applies to every
/// layer.
fn filters(g: &Geo, l: &LocallyConnected, batch: usize) -> LcForward {
    let (vec, ft, tb) = tile(g.f, batch);
    let vec = if vec {
        VectorAxis::Filters
    } else {
        VectorAxis::Scalar
    };
    // The reduction's innermost loop. When the patch row is contiguous (channels_last,
    // dilation 1 and no padding guard on the last axis), the last tap axis and the
    // channels form one run of `kw·C` floats in both x and the kernel, so they become
    // one loop `m = t_last·C + c` (same summation order, hence bitwise the same sums).
    // Measured reason: with C = 16 (DeepFace) or C = 3/4 (seed_lc2d, snp_lc1d) the
    // channel loop alone is too short to amortise the loop overhead and the
    // accumulator rotation moves (one `movdqa` per accumulator per iteration: x64's
    // fma writes a multiplicand register, cranelift notes §0.4).
    let last = g.rank - 1;
    let merge = g.cl && l.dilation[last] == 1 && !g.guarded;
    let red_extent = if merge { l.kernel[last] * g.c } else { g.c };
    let cblock = block_channels(g, ft, vec == VectorAxis::Filters && !merge);
    let reduction = reduction_kind(cblock.unwrap_or(red_extent) as u64);
    LcForward {
        vec,
        tb,
        ft,
        cblock,
        merge,
        reduction,
        lanes: None,
        rank: g.rank,
        wide: None,
        x_cl: false,
    }
}

/// Batch rows per wide register tile (at most; fewer when the batch or the registers are
/// smaller). Measured on deepface_l4_l6 at batch 32 (2 threads, AVX-512, F = 16: one
/// register per row), medians of two runs: 4 rows 44.0/39.7 ms, 8 rows 37.0/34.1, 12
/// rows 39.6/32.8, 16 rows 31.5/30.0, 24 rows 32.0/31.1. More rows load each weight
/// vector fewer times per multiply-add (one vector and 16 broadcasts per 16 FMAs).
pub(in crate::lower) const WIDE_ROWS: usize = 16;

/// Smallest batch whose tiles always go to the wide tier (compute-bound). Below it a
/// layer streams its weights, and the microkernel pays only where its call is amortised
/// or its loads are cheaper: see [`WIDE_MIN_PATCH`].
pub(super) const WIDE_MIN_BATCH: usize = 4;

/// Below [`WIDE_MIN_BATCH`], the shortest patch (reduction) that gets a wide tile with
/// f32 weights; 16-bit weights always do (one `vcvtph2ps` or `vpmovzxwd`+shift per
/// register against 4–14 f32x4 instructions). Measured at batch 1, 2 threads, AVX-512
/// (medians, one run, f32x4 → wide): deepface_l4_l6 (patches 1296, 784, 400) f32 14.1 →
/// 9.0 ms (the prefetch streams the next position: 32.7 GB/s, above the 21 GB/s the
/// single-stream probe reads), bf16 8.6 → 3.9, f16 27.6 → 3.8. With every patch wide,
/// short ones lost (each call stores and reloads the tile): seed_lc2d (patches 27 and
/// 576) f32 1.63 → 2.32, snp_lc1d (96, 256) f32 0.080 → 0.106; with this threshold
/// they measured 1.66 → 1.35 and 0.076 → 0.074, and with f16 weights 4.70 → 0.66 and
/// 0.355 → 0.043.
pub(super) const WIDE_MIN_PATCH: usize = 384;

/// The wide register tile `(FT, TB)` and channel block of the filters schedule under `tier`, when it
/// applies: the batch is compute-bound, the filters fill whole registers, and the
/// reduction is one perfect nest the microkernel walks ([`crate::loop_ir::micro`]):
/// every tap inside the input (no `same` guards) in the plain order, or the channel
/// block of the blocked order (YOLO's local layer: 9.4 MB per position), whose loop is
/// inside the guards. Two registers of filters per row when `F` allows, sharing each broadcast
/// input between them (fewer loads per multiply-add), with as many rows as fit the
/// registers up to [`WIDE_ROWS`].
fn wide_tile(
    g: &Geo,
    batch: usize,
    tier: Tier,
    half: bool,
) -> Option<(usize, usize, Option<usize>)> {
    let w = tier.lanes();
    let small = batch < WIDE_MIN_BATCH;
    if (small && !half && g.q < WIDE_MIN_PATCH) || !g.f.is_multiple_of(w) {
        return None;
    }
    let rows = |ft: usize| (1..=WIDE_ROWS.min(batch)).rev().find(|&r| tier.fits(r, ft));
    let ft = if small {
        // Few rows: more registers of filters per row give independent FMA chains.
        [4 * w, 2 * w, w]
            .into_iter()
            .find(|&c| g.f.is_multiple_of(c) && tier.fits(batch, c))
            .unwrap_or(w)
    } else if g.f.is_multiple_of(2 * w) && rows(2 * w).is_some_and(|r| r >= 4) {
        2 * w
    } else {
        w
    };
    let tb = rows(ft)?;
    // Under `same` padding the plain order's reduction has guards between its tap loops
    // (no perfect nest); the channel-blocked order's block loop sits inside them.
    let cblock = block_channels(g, ft, true);
    if g.guarded && cblock.is_none() {
        return None;
    }
    Some((ft, tb, cblock))
}

/// The positions schedule, when it applies: the filters cannot fill the lanes
/// (`F % 4 != 0`) and consecutive output positions of the last
/// axis read consecutive input elements (stride 1, and channels_first input or one
/// channel), so the input operand is one f32x4 load per batch row and tap, and the
/// kernel operand (`K[p, q, f]`, positions `Q·F` apart) one gather per filter and tap,
/// shared by the `TB` rows of the tile. The tile is `TB` rows × `FT` filters × `width`
/// positions with at most 8 f32x4 accumulators (as the filters tile, see [`tile`]):
/// rows first (each row reuses the gathered kernel vector), then filters, then more
/// positions (independent FMA chains at batch 1).
fn positions(g: &Geo, l: &LocallyConnected, batch: usize) -> Option<LcForward> {
    if g.f.is_multiple_of(4) {
        return None;
    }
    positions_lanes(g, l, batch)
}

/// The positions schedule wherever its lanes can run: consecutive output positions of
/// the last axis read consecutive input elements, and the interior holds a block.
fn positions_lanes(g: &Geo, l: &LocallyConnected, batch: usize) -> Option<LcForward> {
    let last = g.rank - 1;
    let contiguous = l.strides[last] == 1 && (!g.cl || g.c == 1);
    if !contiguous {
        return None;
    }
    let tb = batch.clamp(1, 8);
    let ft = divisor_upto(g.f, (8 / tb).max(1));
    let (lo, hi) = interior(g, l, last);
    let width = 4 * (8 / (tb * ft)).clamp(1, 4);
    // Narrower blocks when the interior is short, so that most positions still run in
    // lanes.
    let width = (4..=width)
        .rev()
        .step_by(4)
        .find(|w| (hi - lo) / w >= 2)
        .unwrap_or(4);
    let blocks = (hi - lo) / width;
    if blocks == 0 {
        return None;
    }
    let kw = l.kernel[last];
    Some(LcForward {
        vec: VectorAxis::Positions,
        tb,
        ft,
        cblock: None,
        merge: false,
        reduction: reduction_kind(kw as u64),
        lanes: Some(Lanes {
            lo,
            blocks,
            width,
            out: g.out_sp[last],
        }),
        rank: g.rank,
        wide: None,
        x_cl: false,
    })
}

/// The output positions `[lo, hi)` along axis `a` whose every tap lies inside the input.
pub(super) fn interior(g: &Geo, l: &LocallyConnected, a: usize) -> (usize, usize) {
    let (s, d, k) = (
        l.strides[a] as i64,
        l.dilation[a] as i64,
        l.kernel[a] as i64,
    );
    let (pad, n, out) = (g.pad[a], g.in_sp[a] as i64, g.out_sp[a] as i64);
    // o·s − pad ≥ 0 and o·s + (k−1)·d − pad ≤ n − 1.
    let lo = if pad > 0 { (pad + s - 1) / s } else { 0 }.min(out);
    let top = n - 1 + pad - (k - 1) * d;
    let hi = if top < 0 { 0 } else { (top / s + 1).min(out) }.max(lo);
    (lo as usize, hi as usize)
}

/// The register tile: `(vectorised, FT filters per tile, TB batch rows per tile)`.
///
/// Both data formats vectorise over filters when `F % 4 == 0`: the kernel operand is
/// contiguous in `f` either way, and channels_first only makes the once-per-element
/// output store (and bias load) strided.
///
/// Vectorised: 8 f32x4 accumulators, as TB = 4 rows × FT = 8 filters (2 vectors) when
/// F % 8 == 0, else 8 rows × 1 vector. Measured (on-CPU time, one thread,
/// `examples/perf_lc.rs`), DeepFace L4–L6 at batch 32: 4×8 118–126 ms, 6×8 116–124 ms
/// (spills 3 registers), 8×4 125–131 ms, 2×16 130–137 ms, 3×16 140–144 ms (12
/// accumulators force re-loading each weight vector per FMA to stay under 16
/// registers; the extra loads cost more than the reuse gains), 3×8 140 ms. The x64
/// fma overwrites one multiplicand, so a weight vector and a broadcast kept in
/// registers cost one `movdqa` per reuse (notes §0.4); 4×8 keeps 8 accumulators, 2
/// weight vectors, the broadcast and its copy in 12 registers with no spills, and
/// divides the usual batch sizes (no remainder tile). Below batch 4 the layer is
/// memory-bound: the widest filter tile reads each position's weights in one contiguous
/// pass (DeepFace batch 1: 1.04× the streaming time).
pub fn tile(f: usize, batch: usize) -> (bool, usize, usize) {
    if f.is_multiple_of(4) && batch < 4 {
        let ft = [16, 12, 8, 4]
            .into_iter()
            .find(|t| f.is_multiple_of(*t))
            .unwrap_or(4);
        (true, ft, (12 / (ft / 4)).clamp(1, 4).min(batch))
    } else if f.is_multiple_of(4) {
        let ft = if f.is_multiple_of(8) { 8 } else { 4 };
        let tb = (32 / ft).clamp(1, 8).min(batch);
        (true, ft, tb)
    } else {
        let ft = (1..=8).rev().find(|t| f.is_multiple_of(*t)).unwrap_or(1);
        let tb = (12 / ft).clamp(1, 4).min(batch);
        (false, ft, tb)
    }
}

/// Channel block length when one position's weights are too large to stay in cache while
/// the register tile walks them once per filter tile (`F/FT ≥ 2` passes over `Q·F`
/// floats with a stride of `F`): then the reduction is cut into blocks of up to 64
/// channels (≤ 64·F floats per tap, L2-resident) and every filter tile runs over a block
/// before the next block is read. Measured on YOLO's local layer (C = 1024, F = 256,
/// 9.4 MB of weights per position) at batch 1, where the unblocked walk ran slower than
/// the reference path. `None` when blocking does not apply.
fn block_channels(g: &Geo, ft: usize, vectorised_unmerged: bool) -> Option<usize> {
    let passes = g.f / ft.max(1);
    let bytes = g.q * g.f * 4;
    if !vectorised_unmerged || passes < 2 || bytes < 1 << 20 {
        return None;
    }
    (2..=64).rev().find(|b| g.c.is_multiple_of(*b))
}

/// Longest unroll of the reduction loop. Measured: DeepFace L4 (12 accumulators) body of
/// 16 steps is ~200 FMAs, ~2 KB of code, well inside L1i.
const REDUCTION_UNROLL_MAX: u64 = 16;

/// The reduction loop's schedule: fully unrolled up to [`REDUCTION_UNROLL_MAX`],
/// otherwise unrolled by its largest divisor up to that, so each loop iteration carries
/// many FMAs per compare/branch and per accumulator rotation.
pub fn reduction_kind(extent: u64) -> LoopKind {
    reduction_kind_upto(extent, REDUCTION_UNROLL_MAX)
}

/// [`reduction_kind`] with at most `max` unrolled iterations.
pub fn reduction_kind_upto(extent: u64, max: u64) -> LoopKind {
    let u = (1..=max.min(extent))
        .rev()
        .find(|u| extent.is_multiple_of(*u))
        .unwrap_or(1);
    match u {
        1 if extent > 1 => LoopKind::Serial,
        u => LoopKind::Unroll(u as u32),
    }
}

/// Largest divisor of `n` that is at most `max` (≥ 1).
pub fn divisor_upto(n: usize, max: usize) -> usize {
    (1..=max.max(1))
        .rev()
        .find(|d| n.is_multiple_of(*d))
        .unwrap_or(1)
}

mod backward;
mod batch;
pub mod plan;

pub(in crate::lower) use backward::{bias_grad, input_grad, kernel_grad};
pub use backward::{LcBiasGrad, LcInputGrad, LcKernelGrad, MAX_GATHER_NESTS};
use batch::{batch_lanes, batch_rows_in_lanes};
pub use plan::{layer_key, ForwardPlan, Plans};
