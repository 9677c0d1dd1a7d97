//! An optimizer step split around a training step that updates some parameters in place
//! (see [`crate::lower::in_place`]): [`Optimizer::begin_in_place`] fixes the step's
//! scalars and creates the slots the gradient program will update; after the run,
//! [`Optimizer::finish_in_place`] updates the other trainable parameters with the same
//! scalars (the separate update program) and counts the step. Together they are one
//! [`Optimizer::step_compiled`], bit for bit.

use super::*;
use crate::train::update::InPlaceUpdate;

/// The part of a step still to run after the gradient program updated some parameters in
/// place (from [`Optimizer::begin_in_place`]).
#[derive(Debug)]
pub struct PendingUpdate {
    scalars: StepScalars,
    /// Per parameter: updated in place by the gradient program.
    updated: Vec<bool>,
}

impl PendingUpdate {
    /// Whether the gradient program updated any parameter in place.
    pub fn updated_any(&self) -> bool {
        self.updated.iter().any(|&u| u)
    }
}

impl Optimizer {
    /// The in-place form of this optimizer's rule for the parameters `accepts` marks
    /// (trainable, no regularizer adding to the gradient), or `None` when the rule needs
    /// the whole gradient first (see [`InPlaceUpdate::new`]).
    pub fn in_place_rule(&self, accepts: Vec<bool>) -> Option<InPlaceUpdate> {
        InPlaceUpdate::new(&self.config, accepts)
    }

    /// Starts a step whose update of the parameters `updated` marks runs in the gradient
    /// program under `rule`: creates their slots (shaped like them) and returns the hyper
    /// buffer the program reads, with the rest of the step.
    pub fn begin_in_place(
        &mut self,
        params: &[ArrayD<f32>],
        trainable: &[bool],
        updated: Vec<bool>,
        rule: &InPlaceUpdate,
    ) -> Result<(Vec<f32>, PendingUpdate)> {
        if params.len() != trainable.len() || updated.len() > params.len() {
            return Err(Error::internal(format!(
                "in-place optimizer step: {} params, {} trainable flags, {} updated flags",
                params.len(),
                trainable.len(),
                updated.len()
            )));
        }
        if self.slots.len() != params.len() {
            self.slots = vec![Slots::default(); params.len()];
        }
        let inits = slot_inits(&self.config.algorithm, self.config.flavor);
        for (i, &u) in updated.iter().enumerate() {
            if u && !trainable[i] {
                return Err(Error::internal(
                    "in-place update of a non-trainable parameter",
                ));
            }
            if u {
                self.slots[i].ensure(inits, &params[i]);
            }
        }
        let scalars = self.scalars(trainable.iter().filter(|&&t| t).count());
        let hyper = rule.hyper(&scalars)?;
        Ok((hyper, PendingUpdate { scalars, updated }))
    }

    /// The slots of every parameter, to bind to a gradient program
    /// ([`crate::runtime::step::InPlace::slots`]).
    pub fn slot_refs(&mut self) -> Vec<[&mut Option<ArrayD<f32>>; 3]> {
        self.slots.iter_mut().map(Slots::all_mut).collect()
    }

    /// Ends the step `pending` began: the compiled update of every trainable parameter
    /// that was not updated in place, from `grads` (empty arrays stand for the others),
    /// then the step is counted.
    pub fn finish_in_place(
        &mut self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
        trainable: &[bool],
        pending: PendingUpdate,
        engine: Engine,
        threads: usize,
    ) -> Result<()> {
        let rest: Vec<bool> = trainable
            .iter()
            .enumerate()
            .map(|(i, &t)| t && !pending.updated.get(i).copied().unwrap_or(false))
            .collect();
        let idx = self.begin(params, grads, &rest)?;
        if !idx.is_empty() {
            let s = &pending.scalars;
            self.update_compiled(params, grads, (&rest, &idx), s, engine, threads)?;
        }
        self.finish(&pending.scalars);
        Ok(())
    }
}
