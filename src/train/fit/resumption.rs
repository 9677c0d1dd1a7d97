//! The resume plumbing of [`super::fit`]: where a run starts ([`Start`], fresh or from a
//! [`ResumeState`]) and what an interrupted run leaves behind ([`At::interrupted`]).
//!
//! Invariant: [`restore`] checks everything that can be wrong with a state (fingerprint,
//! position, parameter shapes, accumulators, callback states, optimizer slots) before it
//! changes the parameters or the optimizer, so a refused state leaves them as they were.

use super::{EpochAcc, FitOptions, RandomnessFn, Run, SplitMix};
use crate::error::{Error, Result};
use crate::train::callbacks::{Callback, History};
use crate::train::loss::Loss;
use crate::train::regularize::ParamTable;
use crate::train::resume::{
    callback_kinds, fingerprint, EpochAccumulators, Fingerprint, ResumeState, RunFacts,
};
use ndarray::ArrayD;

/// Where the epoch loop starts.
pub(super) struct Start {
    /// The first epoch to run.
    pub epoch: usize,
    /// The epochs finished before it.
    pub hist: History,
    /// The shuffle generator as it stands at the start of `epoch`.
    pub rng: Option<SplitMix>,
    /// The accumulators of a resumed epoch (taken by its first iteration).
    pub acc: Option<EpochAcc>,
}

impl Start {
    /// A run from its beginning.
    pub fn fresh(opts: &FitOptions) -> Start {
        Start {
            epoch: 0,
            hist: History::new(),
            rng: opts.shuffle.map(SplitMix),
            acc: None,
        }
    }
}

/// What the run trains on, for its fingerprint.
pub(super) struct Data<'a> {
    pub table: &'a ParamTable<'a>,
    pub loss: &'a Loss,
    pub xs: &'a ArrayD<f32>,
    pub ys: &'a ArrayD<f32>,
    pub validation: Option<(&'a ArrayD<f32>, &'a ArrayD<f32>)>,
    pub opts: &'a FitOptions,
}

impl<'a> Data<'a> {
    /// The data and options of a run.
    pub fn new(
        table: &'a ParamTable<'a>,
        loss: &'a Loss,
        (xs, ys): (&'a ArrayD<f32>, &'a ArrayD<f32>),
        validation: Option<(&'a ArrayD<f32>, &'a ArrayD<f32>)>,
        opts: &'a FitOptions,
    ) -> Self {
        Data {
            table,
            loss,
            xs,
            ys,
            validation,
            opts,
        }
    }
}

/// Starts the run: the fingerprint (when resuming or capturing) and where the epoch
/// loop starts — from [`FitOptions::resume`]'s state ([`restore`]) or from the beginning
/// (after `on_train_begin`).
pub(super) fn begin(
    run: &mut Run,
    data: &Data,
    randomness: Option<&mut RandomnessFn>,
    callbacks: &mut [&mut dyn Callback],
) -> Result<(Option<Fingerprint>, Start)> {
    let opts = data.opts;
    let fingerprint = opts.resume.active().then(|| {
        fingerprint(&RunFacts {
            params: run.params,
            table: data.table,
            optimizer: &run.optimizer.config,
            loss: data.loss,
            xs: data.xs,
            ys: data.ys,
            validation: data.validation,
            opts,
            callbacks: callback_kinds(callbacks),
        })
    });
    let start = match (&opts.resume.from, &fingerprint) {
        (Some(state), Some(print)) => restore(state, print, run, randomness, callbacks, opts)?,
        _ => {
            run.each(callbacks, |cb, ctl| cb.on_train_begin(ctl))?;
            Start::fresh(opts)
        }
    };
    Ok((fingerprint, start))
}

/// Continues from `state`: checks it against this run (`print`, the options, the
/// parameters) and restores the parameters, the optimizer, the training randomness,
/// the warnings and each callback's state (their `on_train_resume` replaces
/// `on_train_begin`). Every refusal is an [`Error::Resume`] naming the state's file and
/// field.
fn restore(
    state: &ResumeState,
    print: &Fingerprint,
    run: &mut Run,
    randomness: Option<&mut RandomnessFn>,
    callbacks: &mut [&mut dyn Callback],
    opts: &FitOptions,
) -> Result<Start> {
    let file = state.source_name.as_str();
    let scoped = |scope: &str| {
        let scope = scope.to_string();
        move |e: Error| e.in_resume_file(file, &scope)
    };
    state.fingerprint.check(print).map_err(scoped(""))?;
    let fail =
        |field: &str, detail: String| Err(Error::resume(field, detail).in_resume_file(file, ""));
    let (epochs, steps) = (run.fit_params.epochs, run.fit_params.steps);
    let acc = &state.accumulators;
    if state.epoch >= epochs || acc.steps_done > steps {
        return fail(
            "position",
            format!(
                "epoch {} after {} steps, but the run has {epochs} epochs of {steps} steps",
                state.epoch + 1,
                acc.steps_done
            ),
        );
    }
    if state.params.len() != run.params.len() {
        let n = run.params.len();
        return fail(
            "params",
            format!("{} arrays, the model has {n}", state.params.len()),
        );
    }
    for (i, (p, q)) in state.params.iter().zip(run.params.iter()).enumerate() {
        if p.shape() != q.shape() {
            let detail = format!("shape {:?}, the model's is {:?}", p.shape(), q.shape());
            return fail(&format!("params[{i}]"), detail);
        }
    }
    if state.shuffle_state.is_some() != opts.shuffle.is_some() {
        let detail = "a shuffle generator's state must be there exactly when the run shuffles";
        return fail("shuffle_state", detail.into());
    }
    if state.randomness.is_some() != randomness.is_some() {
        let detail = "kept for a step that draws none, or missing for one that does";
        return fail("randomness", detail.into());
    }
    // The fingerprint made sure these are the state's metrics, by name and order.
    let metrics = EpochAcc::fresh(opts).metrics;
    let mut fresh = Vec::new();
    for (i, snap) in acc.metrics.iter().enumerate() {
        let mut m = metrics
            .get(i)
            .cloned()
            .ok_or_else(|| Error::resume("accumulators.metrics", "more metrics than this run's"))
            .map_err(scoped(""))?;
        m.restore(snap)
            .map_err(scoped(&format!("accumulators.metrics[{i}]")))?;
        fresh.push(m);
    }
    if fresh.len() != metrics.len() {
        return fail(
            "accumulators.metrics",
            "fewer metrics than this run's".into(),
        );
    }
    if state.callbacks.len() != callbacks.len() {
        let detail = format!(
            "{} callbacks, this run has {}",
            state.callbacks.len(),
            callbacks.len()
        );
        return fail("callbacks", detail);
    }
    let mut i = 0;
    run.each(callbacks, |cb, ctl| {
        let r = cb
            .on_train_resume(state.callbacks[i].as_ref(), ctl)
            .map_err(scoped(&format!("callbacks[{i}]")));
        i += 1;
        r
    })?;
    run.optimizer
        .restore_state(state.optimizer.clone(), &state.params)
        .map_err(scoped(""))?;
    run.params.clone_from_slice(&state.params);
    if let (Some(s), Some(f)) = (state.randomness, randomness) {
        f(Some(s));
    }
    run.warnings = state.warnings.clone();
    Ok(Start {
        epoch: state.epoch,
        hist: state.history.clone(),
        rng: state.shuffle_state.map(SplitMix),
        acc: Some(EpochAcc {
            steps_done: acc.steps_done,
            loss_sum: acc.loss_sum,
            loss_count: acc.loss_count,
            metrics: fresh,
        }),
    })
}

/// The point of an interruption.
pub(super) struct At<'a> {
    /// The epoch under way.
    pub epoch: usize,
    /// The shuffle generator's state at the start of that epoch.
    pub rng_at_start: Option<u64>,
    /// The run's fingerprint (present when resuming or capturing).
    pub fingerprint: Option<&'a Fingerprint>,
}

impl At<'_> {
    /// Leaves the run's state in the capture slot, if asked for, and returns the
    /// interruption error.
    pub fn interrupted(
        &self,
        run: &mut Run,
        acc: &EpochAcc,
        hist: &History,
        randomness: Option<&mut RandomnessFn>,
        callbacks: &[&mut dyn Callback],
        opts: &FitOptions,
    ) -> Error {
        if let (Some(slot), Some(print)) = (&opts.resume.capture, self.fingerprint) {
            slot.put(ResumeState {
                source_name: String::new(),
                fingerprint: print.clone(),
                epoch: self.epoch,
                shuffle_state: self.rng_at_start,
                randomness: randomness.map(|f| f(None)),
                params: run.params.to_vec(),
                optimizer: run.optimizer.export_state(),
                accumulators: EpochAccumulators {
                    steps_done: acc.steps_done,
                    loss_sum: acc.loss_sum,
                    loss_count: acc.loss_count,
                    metrics: acc.metrics.iter().map(|m| m.snapshot()).collect(),
                },
                history: hist.clone(),
                warnings: run.warnings.clone(),
                callbacks: callbacks.iter().map(|c| c.export_state()).collect(),
            });
        }
        let epochs = run.fit_params.epochs;
        let detail = if acc.steps_done == 0 {
            format!(
                "training stopped before epoch {} of {epochs}",
                self.epoch + 1
            )
        } else {
            format!(
                "training stopped after step {} of {} in epoch {} of {epochs}",
                acc.steps_done,
                run.fit_params.steps,
                self.epoch + 1
            )
        };
        Error::Interrupted { detail }
    }
}
