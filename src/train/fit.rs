//! The training loop, generic over how gradients are computed.
//!
//! Per batch, as tf-keras 2.21's `Model.train_step`: the step closure returns the data
//! loss (`sum_over_batch_size`) and its gradients at the current weights; the weight
//! regularization loss (same weights) is added to the loss and its gradient to the
//! gradients; the optimizer updates the trainable weights; constraints are applied in
//! Keras layout; then the non-trainable weights the step updated (BatchNorm moving
//! statistics, [`StepOutput::updates`]) are assigned — in Keras those updates run inside
//! the training-mode forward pass, on variables the optimizer never touches, so the order
//! does not matter. The epoch loss is Keras's `Mean` metric updated with
//! `sample_weight = batch size` (`compile_utils.LossesContainer.__call__`): a mean over
//! batches weighted by their size, so a smaller last batch counts less.
//! `validation_split` takes the last fraction of the data before shuffling, like
//! `data_adapter.train_validation_split` (`split_at = floor(n·(1 − split))`).

use super::loss::Loss;
use super::metrics::{Metric, MetricState};
use super::optimizer::Optimizer;
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use crate::graph::ParamId;
use ndarray::{ArrayD, Axis};
use std::io::{IsTerminal, Write};

/// Options of [`fit`] (Keras `fit` arguments).
#[derive(Clone, Debug, PartialEq)]
pub struct FitOptions {
    /// Passes over the data.
    pub epochs: usize,
    /// Samples per batch (the last batch may be smaller).
    pub batch_size: usize,
    /// `None`: no shuffling (`shuffle=False`); `Some(seed)`: a new permutation per epoch.
    pub shuffle: Option<u64>,
    /// Fraction of the data, taken from the end, held out for validation.
    pub validation_split: f32,
    /// Metrics to report.
    pub metrics: Vec<Metric>,
    /// Print a line per epoch (and a progress bar on a terminal) to stderr.
    pub verbose: bool,
    /// Seed of the training-mode randomness the step draws (Dropout masks in
    /// [`super::fit_model`]); the fixed default makes runs reproducible.
    pub seed: u64,
    /// Where the optimizer update runs: `None` on the host ([`Optimizer::step`]),
    /// `Some((engine, threads))` as a compiled loop nest over all parameters
    /// ([`Optimizer::step_compiled`]; bitwise the same result).
    pub update: Option<(crate::Engine, usize)>,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            epochs: 1,
            batch_size: 32,
            shuffle: None,
            validation_split: 0.0,
            metrics: Vec::new(),
            verbose: false,
            seed: 0,
            update: None,
        }
    }
}

/// What the gradient side returns for one batch.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// Data loss of the batch (`sum_over_batch_size`), activity regularization included.
    pub loss: f64,
    /// Gradient of `loss` for every parameter (zeros or anything for non-trainable ones).
    pub grads: Vec<ArrayD<f32>>,
    /// The batch's predictions, if metrics are wanted.
    pub y_pred: Option<ArrayD<f32>>,
    /// New values of non-trainable parameters computed by the step (BatchNorm moving
    /// statistics), assigned after the optimizer step. A trainable parameter here is an
    /// error: those belong to the optimizer.
    pub updates: Vec<(ParamId, ArrayD<f32>)>,
}

/// The closures [`fit`] calls.
pub struct FitCallbacks<'c> {
    /// `(params, x batch, y batch) → loss and gradients` at those params.
    #[allow(clippy::type_complexity)]
    pub step: &'c mut dyn FnMut(&[ArrayD<f32>], &ArrayD<f32>, &ArrayD<f32>) -> Result<StepOutput>,
    /// `(params, x) → predictions`, inference mode; needed for validation.
    #[allow(clippy::type_complexity)]
    pub predict: Option<&'c mut dyn FnMut(&[ArrayD<f32>], &ArrayD<f32>) -> Result<ArrayD<f32>>>,
}

/// Per-epoch results, as Keras's `History.history`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Training loss per epoch (regularization included).
    pub loss: Vec<f64>,
    /// Training metrics per epoch, by name.
    pub metrics: Vec<(String, Vec<f64>)>,
    /// Validation loss per epoch (empty without validation data).
    pub val_loss: Vec<f64>,
    /// Validation metrics per epoch.
    pub val_metrics: Vec<(String, Vec<f64>)>,
    /// Why training stopped early (a non-finite loss or weight), if it did.
    pub stopped: Option<String>,
}

/// Trains `params` in place. `validation`, if given, overrides `validation_split`.
#[allow(clippy::too_many_arguments)]
pub fn fit(
    params: &mut [ArrayD<f32>],
    table: &ParamTable,
    optimizer: &mut Optimizer,
    loss: &Loss,
    xs: &ArrayD<f32>,
    ys: &ArrayD<f32>,
    validation: Option<(&ArrayD<f32>, &ArrayD<f32>)>,
    opts: &FitOptions,
    cb: FitCallbacks,
) -> Result<History> {
    let usage = |d: String| Error::Usage { detail: d };
    if opts.batch_size == 0 {
        return Err(usage("batch size must be at least 1".into()));
    }
    let n = xs.shape().first().copied().unwrap_or(0);
    if ys.shape().first().copied() != Some(n) || n == 0 {
        return Err(usage(format!(
            "x has {n} samples, y has {:?}: need the same non-zero number",
            ys.shape().first()
        )));
    }
    if !(0.0..1.0).contains(&opts.validation_split) {
        return Err(usage(format!(
            "validation split {} is not in [0, 1)",
            opts.validation_split
        )));
    }
    let (train_n, split_val) = if validation.is_none() && opts.validation_split > 0.0 {
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
        (at, Some((vx, vy)))
    } else {
        (n, None)
    };
    let val: Option<(&ArrayD<f32>, &ArrayD<f32>)> =
        validation.or(split_val.as_ref().map(|(a, b)| (a, b)));
    let trainable = table.trainable();
    let mut hist = History {
        metrics: opts
            .metrics
            .iter()
            .map(|m| (m.name().to_string(), Vec::new()))
            .collect(),
        val_metrics: opts
            .metrics
            .iter()
            .map(|m| (format!("val_{}", m.name()), Vec::new()))
            .collect(),
        ..Default::default()
    };
    let mut rng = opts.shuffle.map(SplitMix);
    let batches = train_n.div_ceil(opts.batch_size);
    let bar = opts.verbose && std::io::stderr().is_terminal();
    let FitCallbacks { step, mut predict } = cb;
    'epochs: for epoch in 0..opts.epochs {
        let mut order: Vec<usize> = (0..train_n).collect();
        if let Some(r) = rng.as_mut() {
            for i in (1..train_n).rev() {
                let j = (r.next() % (i as u64 + 1)) as usize;
                order.swap(i, j);
            }
        }
        let (mut lsum, mut lcount) = (0f64, 0f64);
        let mut mstate: Vec<MetricState> = opts.metrics.iter().map(|m| m.state()).collect();
        for b in 0..batches {
            let idx = &order[b * opts.batch_size..((b + 1) * opts.batch_size).min(train_n)];
            let xb = xs.select(Axis(0), idx);
            let yb = ys.select(Axis(0), idx);
            let out = step(params, &xb, &yb)?;
            let mut grads = out.grads;
            if grads.len() != params.len() {
                return Err(Error::internal(format!(
                    "gradient step returned {} gradients for {} parameters",
                    grads.len(),
                    params.len()
                )));
            }
            check_updates(&out.updates, params, &trainable)?;
            let reg = table.regularize(params, Some(&mut grads))?;
            let total = out.loss + reg;
            if let Some(yp) = &out.y_pred {
                for st in mstate.iter_mut() {
                    st.update(&yb, yp)?;
                }
            }
            lsum += total * idx.len() as f64;
            lcount += idx.len() as f64;
            if !total.is_finite() {
                hist.stopped = Some(format!(
                    "epoch {}, batch {}: loss is {total}",
                    epoch + 1,
                    b + 1
                ));
                hist.loss.push(lsum / lcount);
                break 'epochs;
            }
            let before = params.to_vec();
            match opts.update {
                Some((engine, threads)) => {
                    optimizer.step_compiled(params, &grads, &trainable, engine, threads)?
                }
                None => optimizer.step(params, &grads, &trainable)?,
            }
            table.constrain(params)?;
            for (pid, value) in out.updates {
                params[pid] = value;
            }
            if params.iter().any(|p| p.iter().any(|v| !v.is_finite())) {
                params.clone_from_slice(&before);
                hist.stopped = Some(format!(
                    "epoch {}, batch {}: update made a weight non-finite",
                    epoch + 1,
                    b + 1
                ));
                hist.loss.push(lsum / lcount);
                break 'epochs;
            }
            if bar {
                let w = 30 * (b + 1) / batches;
                eprint!(
                    "\rEpoch {}/{} [{}{}] {}/{} loss: {:.6}",
                    epoch + 1,
                    opts.epochs,
                    "=".repeat(w),
                    " ".repeat(30 - w),
                    b + 1,
                    batches,
                    lsum / lcount
                );
                let _ = std::io::stderr().flush();
            }
        }
        hist.loss.push(lsum / lcount);
        for (k, st) in mstate.iter().enumerate() {
            hist.metrics[k].1.push(st.result());
        }
        let mut line = format!(
            "Epoch {}/{} - loss: {:.6}",
            epoch + 1,
            opts.epochs,
            lsum / lcount
        );
        for (name, v) in &hist.metrics {
            if let Some(x) = v.last() {
                line += &format!(" - {name}: {x:.6}");
            }
        }
        if let Some((vx, vy)) = val {
            let pf = predict
                .as_mut()
                .ok_or_else(|| usage("validation needs a predict function".into()))?;
            let (mut vsum, mut vcount) = (0f64, 0f64);
            let mut vm: Vec<MetricState> = opts.metrics.iter().map(|m| m.state()).collect();
            let vn = vx.shape().first().copied().unwrap_or(0);
            let reg = table.regularize(params, None)?;
            for s in (0..vn).step_by(opts.batch_size) {
                let r = s..(s + opts.batch_size).min(vn);
                let xb = vx.slice_axis(Axis(0), r.clone().into()).to_owned();
                let yb = vy.slice_axis(Axis(0), r.clone().into()).to_owned();
                let yp = pf(params, &xb)?;
                vsum += (loss.value(&yb, &yp)? + reg) * r.len() as f64;
                vcount += r.len() as f64;
                for st in vm.iter_mut() {
                    st.update(&yb, &yp)?;
                }
            }
            hist.val_loss.push(vsum / vcount.max(1.0));
            line += &format!(" - val_loss: {:.6}", vsum / vcount.max(1.0));
            for (k, st) in vm.iter().enumerate() {
                let v = st.result();
                hist.val_metrics[k].1.push(v);
                line += &format!(" - {}: {v:.6}", hist.val_metrics[k].0);
            }
        }
        if opts.verbose {
            if bar {
                eprint!("\r\x1b[K");
            }
            eprintln!("{line}");
        }
    }
    if let (Some(why), true) = (&hist.stopped, opts.verbose) {
        eprintln!("stopped: {why} (weights of the last finite step kept)");
    }
    Ok(hist)
}

/// Checks that every update of a step targets an existing non-trainable parameter with
/// the parameter's shape.
fn check_updates(
    updates: &[(ParamId, ArrayD<f32>)],
    params: &[ArrayD<f32>],
    trainable: &[bool],
) -> Result<()> {
    for (pid, value) in updates {
        let (Some(p), Some(&t)) = (params.get(*pid), trainable.get(*pid)) else {
            return Err(Error::internal(format!(
                "training step updated parameter {pid}, which does not exist"
            )));
        };
        if t {
            return Err(Error::internal(format!(
                "training step assigned trainable parameter {pid} (the optimizer updates those)"
            )));
        }
        if p.shape() != value.shape() {
            return Err(Error::internal(format!(
                "training step updated parameter {pid} with shape {:?}, expected {:?}",
                value.shape(),
                p.shape()
            )));
        }
    }
    Ok(())
}

/// SplitMix64: a small deterministic generator for shuffling.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
