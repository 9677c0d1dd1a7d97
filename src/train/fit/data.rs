//! The data side of [`super::fit`]: checking the data and options, splitting off the
//! validation set (Keras's `train_validation_split`) and the sample order of each epoch
//! (a SplitMix64 shuffle whose whole state is one `u64`, so a resume state can restart
//! an epoch's order exactly).

use crate::error::{Error, Result};
use ndarray::{ArrayD, Axis};

/// Checks the options and data, and splits off `validation_split` when no validation
/// data is given: the number of training samples and the split-off set.
#[allow(clippy::type_complexity)]
pub(super) fn split_validation(
    xs: &ArrayD<f32>,
    ys: &ArrayD<f32>,
    validation: Option<(&ArrayD<f32>, &ArrayD<f32>)>,
    opts: &super::FitOptions,
) -> Result<(usize, Option<(ArrayD<f32>, ArrayD<f32>)>)> {
    let usage = |d: String| Error::Usage { detail: d };
    if opts.batch_size == 0 {
        return Err(usage("batch size must be at least 1".into()));
    }
    let n = xs.shape().first().copied().unwrap_or(0);
    if ys.shape().first().copied() != Some(n) || n == 0 {
        return Err(usage(format!(
            "x has {n} samples, y has {}: need the same non-zero number",
            samples(ys)
        )));
    }
    if !(0.0..1.0).contains(&opts.validation_split) {
        return Err(usage(format!(
            "validation split {} is not in [0, 1)",
            opts.validation_split
        )));
    }
    if validation.is_some() || opts.validation_split == 0.0 {
        return Ok((n, None));
    }
    // The split as the decimal the user wrote (0.2f32 → 0.2), then Keras's floor.
    let split: f64 = opts.validation_split.to_string().parse().unwrap_or(0.0);
    let at = (n as f64 * (1.0 - split)).floor() as usize;
    if at == 0 || at == n {
        return Err(usage(format!(
            "validation split {} of {n} samples leaves an empty training or validation set",
            opts.validation_split
        )));
    }
    let vx = xs.slice_axis(Axis(0), (at..n).into()).to_owned();
    let vy = ys.slice_axis(Axis(0), (at..n).into()).to_owned();
    Ok((at, Some((vx, vy))))
}

/// The number of samples of `a` in words (a 0-d array has none).
fn samples(a: &ArrayD<f32>) -> String {
    match a.shape().first() {
        Some(n) => n.to_string(),
        None => "no sample axis (a scalar)".into(),
    }
}

/// Validation inputs and targets must hold the same non-zero number of samples.
pub(super) fn check_validation(vx: &ArrayD<f32>, vy: &ArrayD<f32>) -> Result<()> {
    let n = vx.shape().first().copied().unwrap_or(0);
    if vy.shape().first().copied() != Some(n) || n == 0 {
        return Err(Error::Usage {
            detail: format!(
                "validation x has {n} samples, validation y has {}: need the same non-zero \
                 number",
                samples(vy)
            ),
        });
    }
    Ok(())
}

/// The sample order of each of `epochs` epochs over `n` training samples, exactly as
/// [`fit`] draws them with `shuffle: seed` (`None`: `0..n` every epoch): for custom and
/// data-parallel loops that must see the batches `fit` sees.
pub fn epoch_orders(n: usize, epochs: usize, seed: Option<u64>) -> Vec<Vec<usize>> {
    let mut rng = seed.map(SplitMix);
    (0..epochs).map(|_| epoch_order(n, rng.as_mut())).collect()
}

/// The sample order of one epoch: `0..n`, shuffled when a generator is given.
pub(super) fn epoch_order(n: usize, rng: Option<&mut SplitMix>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if let Some(r) = rng {
        for i in (1..n).rev() {
            let j = (r.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
    }
    order
}

/// SplitMix64: a small deterministic generator for shuffling.
pub(super) struct SplitMix(pub(super) u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
