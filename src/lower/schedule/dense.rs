//! The register tiles of Dense layers (see `lower/dense.rs`): the f32x4 tile, and the
//! wide tile when the target has a SIMD tier past f32x4.
//!
//! Invariant: `UT` divides the units; a tile's rows are at most the rows of the product
//! (the remainder rows get a narrower tile in the emitter).

use crate::loop_ir::micro::Tier;

/// The register tile: `(vectorised, UT units per tile, RT rows per tile)`.
pub fn register_tile(units: usize, rows: usize) -> (bool, usize, usize) {
    if units.is_multiple_of(4) {
        let ut = [16, 12, 8, 4]
            .into_iter()
            .find(|t| units.is_multiple_of(*t))
            .unwrap_or(4);
        (true, ut, (12 / (ut / 4)).clamp(1, 6).min(rows))
    } else {
        let ut = (1..=8)
            .rev()
            .find(|t| units.is_multiple_of(*t))
            .unwrap_or(1);
        (false, ut, (12 / ut).clamp(1, 4).min(rows))
    }
}

/// Smallest row count whose tiles go to a wide tier: fewer rows stream the kernel
/// (memory-bound), where wider registers do not help.
const WIDE_MIN_ROWS: usize = 8;

/// The register tile under `tier`, `(UT, RT)`, when it applies: enough rows, and units
/// filling whole registers (two per row when that leaves at least 4 rows).
pub fn wide_tile(units: usize, rows: usize, tier: Tier) -> Option<(usize, usize)> {
    let w = tier.lanes();
    if rows < WIDE_MIN_ROWS || !units.is_multiple_of(w) {
        return None;
    }
    // At most as many rows as the LC forward's wide tiles (`schedule/lc.rs`).
    let fit = |ut: usize| {
        (1..=super::lc::WIDE_ROWS.min(rows))
            .rev()
            .find(|&r| tier.fits(r, ut))
    };
    let ut = if units.is_multiple_of(2 * w) && fit(2 * w).is_some_and(|r| r >= 4) {
        2 * w
    } else {
        w
    };
    Some((ut, fit(ut)?))
}
