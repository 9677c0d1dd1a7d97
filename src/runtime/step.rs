//! The training step whose backward kernels also update parameters in place
//! ([`CompiledModel::run_training_step`], see [`crate::lower::in_place`]): the optimizer
//! rule runs inside the kernel that completes a parameter's gradient, so that gradient
//! is never written out and read back.
//!
//! The caller's parameter and slot arrays are bound to the program's `Updated` and `Slot`
//! buffers for the run (their storage moves in and back, no copy) and are back in the
//! caller's hands whatever the outcome. Parameters the program does not update in place
//! (the rule does not accept them, or their kernel cannot apply it) come back with their
//! gradients as [`CompiledModel::run_gradients_in`] returns them; for the others the run
//! returns an empty array.

use super::cache::{CacheKey, Cached};
use super::grad::{GradRun, Phases, PreparedGrad, StepCotangentFn};
use super::{writable_index, CompiledModel};
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::loop_ir::BufRole;
use crate::lower::grad::{lower_training_step_planned, Mode};
use crate::lower::in_place::InPlaceRule;
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// The optimizer storage a training step updates in place.
pub struct InPlace<'a> {
    /// The rule.
    pub rule: &'a dyn InPlaceRule,
    /// The step's scalars: the rule's hyper buffer.
    pub hyper: &'a [f32],
    /// Per graph parameter, its slots `a, b, c`: the slots the rule keeps
    /// ([`InPlaceRule::slots`]) must exist, shaped like the parameter, for every
    /// parameter the program updates.
    pub slots: Vec<[&'a mut Option<ArrayD<f32>>; 3]>,
}

impl CompiledModel {
    /// The training-mode gradient program for `batch` rows that applies `rule` in place
    /// (cached per rule).
    pub fn prepared_step(&self, batch: usize, rule: &dyn InPlaceRule) -> Result<Arc<PreparedGrad>> {
        self.check_f32_weights()?;
        let key = step_key(batch, rule);
        if let Some(Cached::Gradient(p)) = self.programs.get(&key) {
            return Ok(p);
        }
        let t = std::time::Instant::now();
        let graph = self.model.graph();
        let tier = self.opts.wide.resolve()?;
        let plans = self.tuning(batch)?.map(|t| t.plans.clone());
        let lowered = lower_training_step_planned(graph, batch, tier, rule, plans)?;
        let prepared = if lowered.updated.iter().any(|&u| u) {
            Arc::new(self.prepare_grad(lowered, t)?)
        } else {
            // No kernel applies the rule: the plain training program is this one (one
            // compilation, shared).
            self.prepared_grad_in(batch, Mode::Training)?
        };
        self.programs
            .insert(key, Cached::Gradient(prepared.clone()))?;
        Ok(prepared)
    }

    /// Which graph parameters the training step at `batch` updates in place under
    /// `rule` (preparing its program).
    pub fn updated_in_place(&self, batch: usize, rule: &dyn InPlaceRule) -> Result<Vec<bool>> {
        if self.opts.engine.is_reference() {
            return Ok(vec![false; self.model.graph().params.len()]);
        }
        Ok(self.prepared_step(batch, rule)?.lowered.updated.clone())
    }

    /// One training step (see [`CompiledModel::run_gradients_in`]) that also applies
    /// `in_place.rule` to the parameters [`CompiledModel::updated_in_place`] names:
    /// `params` and their slots are updated by the backward pass. `cotangent` returning
    /// `None` ends the step after the forward pass with nothing updated (`Ok(None)`).
    pub fn run_training_step(
        &self,
        params: &mut [ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        rng: &mut Rng,
        in_place: InPlace<'_>,
        cotangent: &mut StepCotangentFn,
    ) -> Result<Option<GradRun>> {
        if self.opts.engine.is_reference() {
            return Err(Error::Usage {
                detail: "the reference engine does not update parameters in the gradient \
                         program (Optimizer::step updates on the host)"
                    .into(),
            });
        }
        self.model.check_inputs(inputs)?;
        self.check_params(params)?;
        let batch = inputs.first().map(|x| x.shape()[0]).unwrap_or(0);
        let prepared = self.prepared_step(batch, in_place.rule)?;
        let l = &prepared.lowered;
        if let Some(h) = l.hyper_buf {
            let want = l.forward.buffers[h as usize].len;
            if in_place.hyper.len() != want {
                return Err(Error::internal(format!(
                    "in-place step: hyper buffer of {} floats, the program reads {want}",
                    in_place.hyper.len()
                )));
            }
        }
        let mut slots = in_place.slots;
        // Every array is checked before any is moved, so a refusal leaves them in place.
        let mut plan: Vec<(usize, Target)> = Vec::new();
        for (b, buf) in l.forward.buffers.iter().enumerate() {
            let target = match buf.role {
                BufRole::Updated(i) => Target::Param(i),
                BufRole::Slot(i, j) => Target::Slot(i, j),
                _ => continue,
            };
            let len = match target {
                Target::Param(i) => params.get(i).map(ArrayD::len),
                Target::Slot(i, j) => slots.get(i).and_then(|s| s[j].as_ref()).map(ArrayD::len),
            };
            if len != Some(buf.len) {
                return Err(Error::internal(format!(
                    "in-place step: buffer {} has {} floats, the bound array {len:?}",
                    buf.name, buf.len
                )));
            }
            plan.push((writable_index(&l.forward, b as u32), target));
        }
        let mut bound: Vec<(usize, Vec<f32>)> = Vec::with_capacity(plan.len());
        let mut shapes = Vec::with_capacity(plan.len());
        for &(w, target) in &plan {
            let a = match target {
                Target::Param(i) => std::mem::replace(&mut params[i], empty()),
                Target::Slot(i, j) => slots[i][j].take().unwrap_or_else(empty),
            };
            shapes.push(a.shape().to_vec());
            bound.push((w, into_flat(a)));
        }
        let program = Phases {
            prepared: &prepared,
            key: step_key(batch, in_place.rule),
            hyper: in_place.hyper,
        };
        let run = self.run_phases(&program, params, inputs, Some(rng), &mut bound, cotangent);
        // The storage goes back to its owners whatever the run's outcome (the lengths
        // are the ones taken, so the shapes fit).
        let mut back = Ok(());
        for ((&(_, target), (_, data)), shape) in plan.iter().zip(bound).zip(shapes) {
            let a = match ArrayD::from_shape_vec(IxDyn(&shape), data) {
                Ok(a) => a,
                Err(e) => {
                    back = Err(Error::internal(format!("in-place step: {e}")));
                    continue;
                }
            };
            match target {
                Target::Param(i) => params[i] = a,
                Target::Slot(i, j) => *slots[i][j] = Some(a),
            }
        }
        back?;
        run
    }
}

/// The cache key of the training step at `batch` under `rule`.
fn step_key(batch: usize, rule: &dyn InPlaceRule) -> CacheKey {
    CacheKey::Gradient(batch, Mode::Training, Some(rule.key().to_string()))
}

/// What an `Updated` or `Slot` buffer is bound to.
#[derive(Clone, Copy, Debug)]
enum Target {
    Param(usize),
    Slot(usize, usize),
}

/// The placeholder of an array whose storage is bound to a program.
fn empty() -> ArrayD<f32> {
    ArrayD::zeros(IxDyn(&[0]))
}

/// The elements of `a` in standard order, moved out without a copy when its storage is
/// already that.
fn into_flat(a: ArrayD<f32>) -> Vec<f32> {
    if !a.is_standard_layout() {
        return a.iter().copied().collect();
    }
    let n = a.len();
    let (v, offset) = a.into_raw_vec_and_offset();
    let at = offset.unwrap_or(0);
    if at == 0 && v.len() == n {
        return v;
    }
    v.get(at..at + n).map(<[f32]>::to_vec).unwrap_or_default()
}
