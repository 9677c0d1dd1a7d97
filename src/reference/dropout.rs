//! Dropout and SpatialDropout in training mode, with a seeded generator.
//!
//! tf-keras (`layers/regularization/dropout.py` → `tf.nn.dropout`): an element is kept
//! when a uniform draw on `[0, 1)` is `≥ rate`, kept values are scaled by
//! `1 / (1 − rate)`, dropped ones are 0; a rate of 0 is the identity (no draw at all).
//! SpatialDropout draws one value per `(sample, channel)` and broadcasts it over the
//! spatial axes (noise shape `(B, 1…, C)` channels_last, `(B, C, 1…)` channels_first).
//!
//! The draws come from [`crate::init::Rng`] (xoshiro256**), one per element of the noise
//! shape in row-major order, so a seed fixes every mask; Keras's own masks (TF's Philox
//! streams, seeded from the global seed and per-op seeds) are not reproduced. The mask is
//! returned so that the backward pass multiplies by the same values.

use super::from_vec;
use crate::error::{Error, Result};
use crate::graph::DataFormat;
use crate::init::Rng;
use ndarray::ArrayD;

/// The dropout mask of a batched input of `shape`: every element `0` or `1 / (1 − rate)`,
/// shaped like the input, or `None` for a rate of 0 (the identity, no draws).
///
/// `spatial` is the spatial rank of a SpatialDropout (`shape` must then have rank
/// `spatial + 2`). Errors: [`Error::Internal`] for a rate outside `[0, 1)` or a shape
/// that does not fit `spatial` (shape inference rules both out).
pub fn dropout_mask(
    rate: f32,
    spatial: Option<usize>,
    data_format: DataFormat,
    shape: &[usize],
    rng: &mut Rng,
) -> Result<Option<ArrayD<f32>>> {
    match dropout_mask_vec(rate, spatial, data_format, shape, rng)? {
        Some(mask) => from_vec(shape, mask).map(Some),
        None => Ok(None),
    }
}

/// [`dropout_mask`] as a row-major vector: what the compiled training step hands its
/// kernels, without building an array and copying it out again.
///
/// The draws are those of [`Rng::uniform`] compared with `rate`, done on the integers:
/// `uniform() = (x >> 11) · 2⁻⁵³` scales exactly, so `uniform() ≥ rate` holds exactly when
/// `x >> 11 ≥ ⌈rate · 2⁵³⌉` (an integer is at least a real when it is at least its
/// ceiling). The masks are bitwise those of the float comparison, at a third of its cost
/// (the mask of a genomics Dropout over 512 k elements was 16 % of a training step).
pub fn dropout_mask_vec(
    rate: f32,
    spatial: Option<usize>,
    data_format: DataFormat,
    shape: &[usize],
    rng: &mut Rng,
) -> Result<Option<Vec<f32>>> {
    dropout_mask_threads(rate, spatial, data_format, shape, rng, 1)
}

/// [`dropout_mask_vec`] drawn on up to `threads` threads: the same values (see
/// [`draw_all`]). The compiled training step draws its masks so, with its own thread
/// count.
pub fn dropout_mask_threads(
    rate: f32,
    spatial: Option<usize>,
    data_format: DataFormat,
    shape: &[usize],
    rng: &mut Rng,
    threads: usize,
) -> Result<Option<Vec<f32>>> {
    if !(0.0..1.0).contains(&rate) {
        return Err(Error::internal(format!(
            "reference dropout: rate {rate} is not in [0, 1)"
        )));
    }
    if rate == 0.0 {
        return Ok(None);
    }
    // tf.nn.dropout: scale = 1 / (1 − rate), applied to the kept values.
    let scale = 1.0 / (1.0 - rate);
    // Exact: rate is an f32, so rate · 2⁵³ is an f64 without rounding, below 2⁵³.
    let threshold = (f64::from(rate) * (1u64 << 53) as f64).ceil() as u64;
    let Some(r) = spatial else {
        let n: usize = shape.iter().product();
        return Ok(Some(draw_all(n, rng, scale, threshold, threads)));
    };
    if shape.len() != r + 2 {
        return Err(Error::internal(format!(
            "reference dropout: SpatialDropout{r}D on a batched shape {shape:?}"
        )));
    }
    // One draw per (sample, channel), row-major over the noise shape, broadcast over
    // the spatial axes: a row-major walk over (B, S, C) channels_last or (B, C, S)
    // channels_first, S the product of the spatial sizes.
    let b = shape[0];
    let (c, s) = match data_format {
        DataFormat::ChannelsLast => (shape[r + 1], shape[1..=r].iter().product::<usize>()),
        DataFormat::ChannelsFirst => (shape[1], shape[2..].iter().product::<usize>()),
    };
    let noise = draw_all(b * c, rng, scale, threshold, threads);
    let mut mask = Vec::with_capacity(b * c * s);
    for row in noise.chunks(c.max(1)).take(b) {
        match data_format {
            DataFormat::ChannelsLast => (0..s).for_each(|_| mask.extend_from_slice(row)),
            DataFormat::ChannelsFirst => row
                .iter()
                .for_each(|&v| mask.extend(std::iter::repeat_n(v, s))),
        }
    }
    Ok(Some(mask))
}

/// Fewest draws that [`draw_all`] splits over threads (below, a thread's start costs
/// more than it saves).
const SPLIT_MIN: usize = 1 << 16;

/// `n` mask values (`scale` where the draw's top 53 bits reach `threshold`, else 0) in
/// stream order from `rng`, which is left `n` draws on.
///
/// From [`SPLIT_MIN`] draws and with `threads > 1`, the stream is cut into `threads`
/// consecutive pieces, each drawn on its own thread from the state a jump
/// ([`Rng::jumped`]) gives: the same values in the same places as one sequential pass.
/// Why: xoshiro's step is a chain of about 18 dependent instructions per value, and the
/// 512 k-element mask of genomics_lc1d at batch 32 took 2.2–2.9 ms on one thread (a
/// fifth of its training step); four streams interleaved on one thread, or in SIMD
/// lanes, measured no faster (the compiler spilled their states). A piece whose thread
/// the OS refuses is drawn on the calling thread afterwards.
fn draw_all(n: usize, rng: &mut Rng, scale: f32, threshold: u64, threads: usize) -> Vec<f32> {
    let keep = move |x: u64| if x >> 11 >= threshold { scale } else { 0.0 };
    let mut out = vec![0f32; n];
    let pieces = if n >= SPLIT_MIN { threads.max(1) } else { 1 };
    if pieces == 1 {
        out.iter_mut().for_each(|v| *v = keep(rng.next_u64()));
        return out;
    }
    let len = n.div_ceil(pieces);
    let fill = move |piece: &mut [f32], mut r: Rng| {
        piece.iter_mut().for_each(|v| *v = keep(r.next_u64()));
    };
    let mut refused = Vec::new();
    std::thread::scope(|sc| {
        let mut chunks = out.chunks_mut(len).enumerate();
        let first = chunks.next();
        for (p, piece) in chunks {
            let r = rng.jumped((p * len) as u64);
            let spawned = std::thread::Builder::new()
                .name("lcjit-dropout".into())
                .spawn_scoped(sc, move || fill(piece, r));
            if spawned.is_err() {
                refused.push(p);
            }
        }
        if let Some((_, piece)) = first {
            fill(piece, rng.clone());
        }
    });
    // The pieces of refused threads, drawn here once the others' borrows have ended.
    for p in refused {
        let end = ((p + 1) * len).min(n);
        fill(&mut out[p * len..end], rng.jumped((p * len) as u64));
    }
    *rng = rng.jumped(n as u64);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CL: DataFormat = DataFormat::ChannelsLast;
    const CF: DataFormat = DataFormat::ChannelsFirst;

    #[test]
    fn masks_are_deterministic_per_seed_and_scaled() {
        let mask = |seed| {
            dropout_mask(0.3, None, CL, &[4, 50], &mut Rng::new(seed))
                .unwrap()
                .unwrap()
        };
        let a = mask(7);
        assert_eq!(a, mask(7), "same seed, same mask");
        assert_ne!(a, mask(8), "another seed, another mask");
        let scale = 1.0 / (1.0 - 0.3f32);
        assert!(a.iter().all(|&v| v == 0.0 || v == scale));
        let kept = a.iter().filter(|&&v| v != 0.0).count() as f64 / a.len() as f64;
        assert!((kept - 0.7).abs() < 0.1, "kept fraction {kept}");
        // Consecutive masks from one generator differ (the stream advances).
        let mut rng = Rng::new(7);
        let m1 = dropout_mask(0.3, None, CL, &[4, 50], &mut rng).unwrap();
        let m2 = dropout_mask(0.3, None, CL, &[4, 50], &mut rng).unwrap();
        assert_eq!(m1.as_ref(), Some(&a));
        assert_ne!(m1, m2);
    }

    /// The integer threshold keeps exactly the elements the float comparison
    /// `uniform() >= rate` keeps, at rates where rounding could differ.
    #[test]
    fn integer_threshold_equals_the_float_comparison() {
        let rates = [1e-8f32, 0.1, 0.2, 0.3, 0.5, 1.0 / 3.0, 0.75, 0.99999994];
        for (k, &rate) in rates.iter().enumerate() {
            let scale = 1.0 / (1.0 - rate);
            let mut rng = Rng::new(k as u64);
            let want: Vec<f32> = (0..4096)
                .map(|_| {
                    if rng.uniform() >= f64::from(rate) {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            let got = dropout_mask_vec(rate, None, CL, &[4, 1024], &mut Rng::new(k as u64))
                .unwrap()
                .unwrap();
            assert_eq!(got, want, "rate {rate}");
        }
        // At the boundary itself: a draw of exactly ⌈rate·2⁵³⌉ is kept, one below is not.
        let rate = 0.3f32;
        let t = (f64::from(rate) * (1u64 << 53) as f64).ceil();
        assert!(t * (1.0 / (1u64 << 53) as f64) >= f64::from(rate));
        assert!((t - 1.0) * (1.0 / (1u64 << 53) as f64) < f64::from(rate));
    }

    /// The spatial masks broadcast each (sample, channel) draw as a walk over the array's
    /// multi-indices would.
    #[test]
    fn spatial_masks_broadcast_the_noise_row_major() {
        for (df, shape, ch_axis) in [(CL, [2, 3, 4, 5], 3), (CF, [2, 5, 3, 4], 1)] {
            let m = dropout_mask(0.5, Some(2), df, &shape, &mut Rng::new(9))
                .unwrap()
                .unwrap();
            let mut rng = Rng::new(9);
            let noise = dropout_mask_vec(0.5, None, CL, &[2, 5], &mut rng)
                .unwrap()
                .unwrap();
            for (ix, &v) in m.indexed_iter() {
                assert_eq!(v, noise[ix[0] * 5 + ix[ch_axis]], "{df:?} at {ix:?}");
            }
        }
    }

    /// Masks drawn on several threads are exactly the sequential draws, and leave the
    /// generator where the sequential draws would (sizes around the split threshold,
    /// pieces that do not divide the mask, SpatialDropout's noise).
    #[test]
    fn threaded_masks_are_the_sequential_ones() {
        for n in [SPLIT_MIN - 1, SPLIT_MIN, SPLIT_MIN + 3, 200_003] {
            for threads in [2, 3, 4] {
                let mut seq = Rng::new(n as u64);
                let want = dropout_mask_vec(0.25, None, CL, &[1, n], &mut seq)
                    .unwrap()
                    .unwrap();
                let mut rng = Rng::new(n as u64);
                let got = dropout_mask_threads(0.25, None, CL, &[1, n], &mut rng, threads)
                    .unwrap()
                    .unwrap();
                assert!(got == want, "n = {n}, {threads} threads: masks differ");
                assert_eq!(rng.state(), seq.state(), "n = {n}: generator state");
            }
        }
        let shape = [SPLIT_MIN + 1, 2, 3];
        let mut seq = Rng::new(5);
        let want = dropout_mask(0.5, Some(1), CL, &shape, &mut seq).unwrap();
        let mut rng = Rng::new(5);
        let got = dropout_mask_threads(0.5, Some(1), CL, &shape, &mut rng, 2).unwrap();
        assert_eq!(got.as_deref(), want.as_ref().and_then(|a| a.as_slice()));
        assert_eq!(rng.state(), seq.state());
    }

    #[test]
    fn rate_zero_is_the_identity_and_draws_nothing() {
        let mut rng = Rng::new(1);
        assert_eq!(
            dropout_mask(0.0, None, CL, &[2, 3], &mut rng).unwrap(),
            None
        );
        assert_eq!(rng.next_u64(), Rng::new(1).next_u64());
        assert!(dropout_mask(1.0, None, CL, &[2, 3], &mut rng).is_err());
        assert!(dropout_mask(-0.1, None, CL, &[2, 3], &mut rng).is_err());
    }

    #[test]
    fn spatial_masks_drop_whole_channels() {
        // SpatialDropout2D channels_last (B=3, H=4, W=5, C=6) and channels_first.
        for (df, shape, ch_axis) in [(CL, [3, 4, 5, 6], 3), (CF, [3, 6, 4, 5], 1)] {
            let m = dropout_mask(0.5, Some(2), df, &shape, &mut Rng::new(3))
                .unwrap()
                .unwrap();
            for (ix, &v) in m.indexed_iter() {
                let mut first = ix.clone();
                for a in 1..4 {
                    if a != ch_axis {
                        first[a] = 0;
                    }
                }
                assert_eq!(v, m[first], "{df:?}: constant over space");
            }
            let kept = m.iter().filter(|&&v| v != 0.0).count();
            assert!(kept > 0 && kept < m.len());
        }
        assert!(dropout_mask(0.5, Some(2), CL, &[3, 4, 6], &mut Rng::new(3)).is_err());
    }
}
