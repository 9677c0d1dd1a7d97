//! The LC forward schedule with lanes over batch rows ([`VectorAxis::Batch`]): when it
//! is chosen ([`batch_lanes`]) and how its tile is shaped wherever it can run
//! ([`batch_rows_in_lanes`], which autotuning may force).
//!
//! Invariant: the tile's lanes are whole vectors of batch rows (the batch a multiple of
//! 4), and each output sums its taps in the patch order, as under every forward schedule.

use super::{divisor_upto, reduction_kind, Geo, LcForward, VectorAxis};
use crate::graph::LocallyConnected;
use crate::loop_ir::micro::{Tier, Wide};

/// Most bytes of one output position's weights (`Q·F` floats) for lanes over batch
/// rows: each batch tile walks them once, and past this they would not stay in the L2
/// between tiles (the filters schedule blocks channels there instead).
const BATCH_LANE_MAX_POSITION_BYTES: usize = 256 << 10;

/// Fewest multiply-adds per input element (`Q·F·P / X`) for lanes over batch rows where
/// lanes over filters are vectorised too (`F % 4 == 0`): the input's transpose moves
/// every element twice more, which only pays where each element feeds many products.
/// Measured at batch 32, one thread, AVX-512 host (`examples/perf_lc_grad`):
/// genomics_lc1d (F = 4, 8 per element) went from 1.55 ms to 0.64 (transpose) + 0.60,
/// and with 2 threads from 0.93 to 0.59 + 0.70, bound by memory either way;
/// lc2d_f12_f6's F = 12 layer (101 per element) went from 31.9 ms to 2.4 + 9.3.
const BATCH_LANE_MIN_REUSE: usize = 32;

/// The schedule with lanes over batch rows, when it applies: the filters cannot fill the
/// lanes (`F` not a multiple of 4, where the filters tile falls to scalar code), or fill
/// them poorly (`F < 8`, or under a wide tier `F` not a multiple of its registers'
/// lanes, where the filters tile stays f32x4) while each input element feeds at least
/// [`BATCH_LANE_MIN_REUSE`] products; the batch is a multiple of 4 (whole vectors of
/// rows), and one position's weights fit the L2.
///
/// The kernel reads the input transposed to `xT[e·B + b] = x[b, e]` (`e` the flat
/// per-sample index, `lc/forward.rs`), so each tap's rows are one vector load shared by
/// the tile's filters, and each kernel element is one broadcast shared by its rows: a
/// tile of `FT` filters × `TB` rows loads `FT` scalars and `TB/4` vectors per `FT·TB/4`
/// multiply-adds, where the filters tile of `F = 4` needs a broadcast per multiply-add.
/// Each output element sums its taps in the same order as under every other forward
/// schedule, so the bits are the same. Measured on lc2d_f12_f6 at batch 32 (one
/// thread, AVX-512 host, two runs): its F = 6 layer (scalar tiles before) 16.0 and 21.0
/// ms → 1.9 and 1.7 ms with the transpose, its F = 12 layer (f32x4 filters before) 31.9
/// → 14.2 and 11.7 ms.
///
/// f32x4: 8 accumulators, `TB = 8` rows (4 when the batch is not a multiple of 8) ×
/// the largest divisor of `F` that fits. Under a wide tier (no `same` padding: the
/// microkernel needs a perfect nest) the lanes are two registers of rows when the batch
/// allows, else one, and the filters fill the remaining registers, as the `dx` batch
/// schedule ([`super::input_grad`]).
pub(super) fn batch_lanes(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    half: bool,
) -> Option<LcForward> {
    let scalar_alternative = !g.f.is_multiple_of(4);
    let poor_lanes = g.f < 8 || tier.is_some_and(|t| !g.f.is_multiple_of(t.lanes()));
    let reuse = (g.q * g.f * g.p) / (g.x_sample as usize).max(1);
    let few = scalar_alternative || (poor_lanes && reuse >= BATCH_LANE_MIN_REUSE);
    if !few || g.q * g.f * 4 > BATCH_LANE_MAX_POSITION_BYTES {
        return None;
    }
    batch_rows_in_lanes(g, l, batch, tier, half)
}

/// The batch-lanes schedule wherever its lanes can run: f32 weights (the tile
/// broadcasts kernel elements as stored) and whole vectors of batch rows.
pub(super) fn batch_rows_in_lanes(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    half: bool,
) -> Option<LcForward> {
    if half || batch < 4 || !batch.is_multiple_of(4) {
        return None;
    }
    let last = g.rank - 1;
    let merge = g.cl && l.dilation[last] == 1 && !g.guarded;
    let red_extent = if merge { l.kernel[last] * g.c } else { g.c };
    let wide = tier.filter(|_| !g.guarded).and_then(|t| {
        let lanes = t.lanes();
        let width = [2 * lanes, lanes]
            .into_iter()
            .find(|w| batch.is_multiple_of(*w))?;
        let rows = (1..=t.registers()).rev().find(|r| t.fits(*r, width))?;
        Some((divisor_upto(g.f, rows), width, t))
    });
    let (ft, tb) = match wide {
        Some((ft, w, _)) => (ft, w),
        None => {
            let tb = if batch.is_multiple_of(8) { 8 } else { 4 };
            (divisor_upto(g.f, 8 / (tb / 4)), tb)
        }
    };
    Some(LcForward {
        vec: VectorAxis::Batch,
        tb,
        ft,
        cblock: None,
        merge,
        reduction: reduction_kind(red_extent as u64),
        lanes: None,
        rank: g.rank,
        wide: wide.map(|(_, _, t)| Wide::new(t)),
        x_cl: false,
    })
}
