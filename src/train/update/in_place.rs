//! The optimizer rule of the compiled update as an [`InPlaceRule`]: the same element
//! program ([`Rule::element`]), run by a backward kernel on a cache-resident block of the
//! gradient instead of by the update program on the whole gradient (see
//! [`crate::lower::in_place`]). Parameters it updates are bitwise equal to the separate
//! update's result: the gradient, the step's scalars and every operation are the same.
//!
//! Rules that need the whole gradient before the first element (a norm clip: `clipnorm`,
//! `global_clipnorm`) or per-parameter step scalars (Nadam's running products) are not
//! offered in place; for them [`InPlaceUpdate::new`] returns `None` and every parameter
//! goes through the separate update.

use super::rule::Rule;
use super::*;
use crate::lower::in_place::{InPlaceRule, UpdateBufs};

/// The in-place form of an optimizer's rule for one model's parameters.
#[derive(Clone, Debug)]
pub struct InPlaceUpdate {
    config: OptimizerConfig,
    /// Per graph parameter: whether the rule may update it in place.
    accepts: Vec<bool>,
    /// [`InPlaceRule::key`], made once.
    key: String,
}

impl InPlaceUpdate {
    /// The rule of `config` for the parameters `accepts` marks (trainable ones whose
    /// gradient reaches the optimizer unchanged: no regularizer adds to it), or `None`
    /// when the rule cannot run in place (see the module docs).
    pub fn new(config: &OptimizerConfig, accepts: Vec<bool>) -> Option<InPlaceUpdate> {
        let fits = ClipKind::of(config).norm == NormKind::None
            && !matches!(config.algorithm, Algorithm::Nadam { .. })
            && accepts.iter().any(|&a| a);
        // Debug text compares floats by value (as the update program's key does).
        let key = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {accepts:?}",
            config.algorithm,
            config.flavor,
            config.clipnorm,
            config.clipvalue,
            config.global_clipnorm,
            config.weight_decay,
        );
        fits.then(|| InPlaceUpdate {
            config: config.clone(),
            accepts,
            key,
        })
    }

    /// The hyper buffer of the step with scalars `s`.
    pub(crate) fn hyper(&self, s: &StepScalars) -> Result<Vec<f32>> {
        let mut h = vec![0.0f32; self.hyper_len()];
        let mut put = |i: usize, v: f32| -> Result<()> {
            *h.get_mut(i)
                .ok_or_else(|| Error::internal("in-place update: hyper index out of range"))? = v;
            Ok(())
        };
        put(H_LR, s.lr)?;
        // Nadam is never in place, so the trainable count does not enter.
        rule_scalars(&self.config, s, 0, &mut put)?;
        Ok(h)
    }
}

impl InPlaceRule for InPlaceUpdate {
    fn accepts(&self, p: crate::graph::ParamId) -> bool {
        self.accepts.get(p).copied().unwrap_or(false)
    }

    fn slots(&self) -> [Option<&'static str>; 3] {
        let inits = slot_inits(&self.config.algorithm, self.config.flavor);
        let names = slot_names(&self.config.algorithm);
        [0, 1, 2].map(|j| inits[j].map(|_| names[j]))
    }

    fn hyper_len(&self) -> usize {
        H_RULE + rule_hyper_len(&self.config.algorithm, 0)
    }

    fn element(
        &self,
        kb: &mut KernelBuilder,
        bufs: &UpdateBufs,
        grad: (BufId, Affine),
        w_ix: Affine,
        lane: Affine,
    ) -> Result<Vec<Stmt>> {
        let rule = Rule {
            config: &self.config,
            clip: ClipKind::of(&self.config),
            h_clip: self.hyper_len(),
            k: 0,
            hyper: bufs.hyper,
            pb: ParamBufs {
                w: bufs.w,
                g: grad.0,
                slots: bufs.slots,
            },
        };
        rule.element(kb, w_ix, grad.1, lane)
    }

    fn key(&self) -> &str {
        &self.key
    }
}
