//! Resuming an interrupted `fit` exactly: [`ResumeState`], everything the run had at the
//! interruption, and [`Resume`], the [`super::FitOptions`] field that asks `fit` to leave
//! that state behind when it is interrupted ([`ResumeSlot`]) or to continue from one.
//!
//! An interruption ([`crate::interrupt::interrupted`]) is noticed between steps and at the
//! start of an epoch, so the state is that of a step boundary: the parameters (trainable
//! and not), the optimizer's state, the position (epoch, steps done in it), the shuffle
//! generator as it stood at the start of that epoch (the epoch's order is drawn again,
//! identically), the generator of the Dropout masks, the epoch's running loss and metric
//! accumulators, the history so far, the warnings, and the state of each stateful
//! callback. Continuing from it replays nothing and skips nothing.
//!
//! Invariant: a resumed run equals the uninterrupted one bit for bit — weights, optimizer
//! state, history and callback effects — provided it is given the same model, data and
//! options. That proviso is checked: the state carries a [`Fingerprint`] of what must
//! match (parameter shapes, data shapes and contents, batch size, epochs, optimizer and
//! loss configuration, seed, shuffle, validation, metrics, callbacks), and a resume with
//! anything else is refused with an [`Error::Resume`] naming the field. The file form is
//! written and read by [`crate::io::resume`].

use super::callbacks::{Callback, CallbackState, History};
use super::loss::Loss;
use super::metrics::MetricSnapshot;
use super::optimizer::{OptimizerConfig, OptimizerState};
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use ndarray::ArrayD;
use std::sync::{Arc, Mutex};

/// What must match between the interrupted run and the one that resumes it: `(field,
/// value)` pairs in a fixed order, the values as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fingerprint(pub Vec<(String, String)>);

impl Fingerprint {
    /// Checks that `this_run` (the resuming run's fingerprint) equals `self` (the
    /// state's); the first difference is an [`Error::Resume`] naming the field.
    pub fn check(&self, this_run: &Fingerprint) -> Result<()> {
        let short = |s: &str| -> String {
            let mut t: String = s.chars().take(160).collect();
            if t.len() < s.len() {
                t.push('…');
            }
            t
        };
        for (key, mine) in &this_run.0 {
            match self.0.iter().find(|(k, _)| k == key) {
                Some((_, theirs)) if theirs == mine => {}
                Some((_, theirs)) => {
                    return Err(Error::resume(
                        format!("fingerprint.{key}"),
                        format!(
                            "the state was written for {}, this run has {}",
                            short(theirs),
                            short(mine)
                        ),
                    ))
                }
                None => return Err(Error::resume(format!("fingerprint.{key}"), "missing")),
            }
        }
        if let Some((key, _)) = self
            .0
            .iter()
            .find(|(k, _)| !this_run.0.iter().any(|m| &m.0 == k))
        {
            return Err(Error::resume(
                format!("fingerprint.{key}"),
                "unknown to this lcjit",
            ));
        }
        Ok(())
    }
}

/// The running loss and metrics of the interrupted epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct EpochAccumulators {
    /// Steps of the epoch finished (0: the epoch had not begun).
    pub steps_done: usize,
    /// Σ batch loss × batch size.
    pub loss_sum: f64,
    /// Σ batch size.
    pub loss_count: f64,
    /// Each metric's running state, in the order of [`super::FitOptions::metrics`].
    pub metrics: Vec<MetricSnapshot>,
}

/// Everything an interrupted `fit` had at a step boundary (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct ResumeState {
    /// Where the state was read from (empty when it never was in a file), for messages.
    pub source_name: String,
    /// What the resuming run must match.
    pub fingerprint: Fingerprint,
    /// The epoch (0-based) under way.
    pub epoch: usize,
    /// The shuffle generator's state at the start of that epoch (`None`: no shuffle).
    pub shuffle_state: Option<u64>,
    /// The state of the generator of the training randomness (Dropout masks) after the
    /// last finished step (`None` when the trainer has none).
    pub randomness: Option<[u64; 4]>,
    /// Every parameter, in the trainer's order.
    pub params: Vec<ArrayD<f32>>,
    /// The optimizer's state.
    pub optimizer: OptimizerState,
    /// The epoch's running accumulators (and how far it got).
    pub accumulators: EpochAccumulators,
    /// The epochs finished so far.
    pub history: History,
    /// Warnings reported so far.
    pub warnings: Vec<String>,
    /// The state of each callback, in the order `fit` was given them (`None` for a
    /// stateless one).
    pub callbacks: Vec<Option<CallbackState>>,
}

/// Where an interrupted `fit` leaves its [`ResumeState`]: a shared cell the caller keeps
/// a clone of and [`ResumeSlot::take`]s after `fit` returned [`Error::Interrupted`].
#[derive(Clone, Default)]
pub struct ResumeSlot(Arc<Mutex<Option<ResumeState>>>);

impl ResumeSlot {
    /// An empty slot.
    pub fn new() -> Self {
        ResumeSlot::default()
    }

    /// The state left by an interrupted run, if any (the slot is empty afterwards).
    pub fn take(&self) -> Option<ResumeState> {
        self.lock().take()
    }

    /// Leaves `state` in the slot (replacing an older one).
    pub fn put(&self, state: ResumeState) {
        *self.lock() = Some(state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ResumeState>> {
        // A panic elsewhere cannot leave the Option itself half-written.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl std::fmt::Debug for ResumeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeSlot")
            .field("filled", &self.lock().is_some())
            .finish()
    }
}

impl PartialEq for ResumeSlot {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// How `fit` takes part in resuming (the default: not at all, as Keras).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resume {
    /// Continue the interrupted run this state was taken from (its fingerprint must match
    /// this run's).
    pub from: Option<Arc<ResumeState>>,
    /// On an interruption, leave the state here before returning
    /// [`Error::Interrupted`].
    pub capture: Option<ResumeSlot>,
}

impl Resume {
    /// Whether `fit` needs the fingerprint (resuming or capturing).
    pub fn active(&self) -> bool {
        self.from.is_some() || self.capture.is_some()
    }
}

/// Each callback's state kind, as the fingerprint lists them (`-`: stateless).
pub(crate) fn callback_kinds(callbacks: &[&mut dyn Callback]) -> Vec<String> {
    callbacks
        .iter()
        .map(|c| c.export_state().map_or("-".to_string(), |s| s.kind))
        .collect()
}

/// What a fingerprint is computed from (see [`fingerprint`]).
pub(crate) struct RunFacts<'a> {
    pub params: &'a [ArrayD<f32>],
    pub table: &'a ParamTable<'a>,
    pub optimizer: &'a OptimizerConfig,
    pub loss: &'a Loss,
    pub xs: &'a ArrayD<f32>,
    pub ys: &'a ArrayD<f32>,
    pub validation: Option<(&'a ArrayD<f32>, &'a ArrayD<f32>)>,
    pub opts: &'a super::FitOptions,
    /// Each callback's state kind (`-` for a stateless one).
    pub callbacks: Vec<String>,
}

/// The fingerprint of a run (see [`Fingerprint`]). Data enter by shape and by a 64-bit
/// FNV-1a hash of their values' bits, so a resume on other data of the same shape is
/// refused too.
pub(crate) fn fingerprint(f: &RunFacts<'_>) -> Fingerprint {
    let mut out = Vec::new();
    let mut put = |k: &str, v: String| out.push((k.to_string(), v));
    let model: Vec<String> = f
        .params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let spec = f.table.specs.get(i);
            format!(
                "{}{:?}{}",
                spec.map_or("?", |s| s.name.as_str()),
                p.shape(),
                if spec.is_some_and(|s| s.trainable) {
                    ""
                } else {
                    " frozen"
                }
            )
        })
        .collect();
    put("model", model.join(", "));
    put("x", format!("{:?}", f.xs.shape()));
    put("y", format!("{:?}", f.ys.shape()));
    put("data", format!("{:016x}", hash(&[f.xs, f.ys])));
    let val = match f.validation {
        Some((vx, vy)) => format!(
            "x {:?}, y {:?}, data {:016x}",
            vx.shape(),
            vy.shape(),
            hash(&[vx, vy])
        ),
        None => format!("split {}", f.opts.validation_split),
    };
    put("validation", val);
    put("batch_size", f.opts.batch_size.to_string());
    put("epochs", f.opts.epochs.to_string());
    put("shuffle", format!("{:?}", f.opts.shuffle));
    put("seed", f.opts.seed.to_string());
    let metrics: Vec<&str> = f.opts.metrics.iter().map(|m| m.name()).collect();
    put("metrics", metrics.join(","));
    put("loss", format!("{:?}", f.loss));
    put("optimizer", format!("{:?}", f.optimizer));
    put("stop_on_non_finite", f.opts.stop_on_non_finite.to_string());
    put("callbacks", f.callbacks.join(","));
    Fingerprint(out)
}

/// FNV-1a over the bits of every value of `arrays`, in logical order.
fn hash(arrays: &[&ArrayD<f32>]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for a in arrays {
        for v in a.iter() {
            for b in v.to_bits().to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    h
}
