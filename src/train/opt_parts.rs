//! Pieces of an optimizer step shared by the host update ([`super::optimizer`]) and the
//! compiled one ([`super::update`]), so both paths use the same state and the same
//! per-step scalars: the per-parameter slot arrays and which of them each rule keeps
//! (with their initial values), the scalars of one step, and the gradient-clipping plan
//! (norms are reductions, computed here on the host in one fixed order for both paths).

use super::optimizer::{Algorithm, Flavor, OptimizerConfig};
use ndarray::ArrayD;

/// Per-parameter optimizer state: up to three slot arrays, created lazily with the
/// parameter's shape (standard layout). Which rule uses which slot: [`slot_inits`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Slots {
    pub a: Option<ArrayD<f32>>,
    pub b: Option<ArrayD<f32>>,
    pub c: Option<ArrayD<f32>>,
}

impl Slots {
    /// The three slots, in order `a, b, c`.
    pub fn all_mut(&mut self) -> [&mut Option<ArrayD<f32>>; 3] {
        [&mut self.a, &mut self.b, &mut self.c]
    }

    /// The three slots, in order `a, b, c`.
    pub fn all(&self) -> [Option<&ArrayD<f32>>; 3] {
        [self.a.as_ref(), self.b.as_ref(), self.c.as_ref()]
    }

    /// Creates every slot `inits` names that does not exist yet (the same arrays the host
    /// update creates on first use).
    pub fn ensure(&mut self, inits: [Option<f32>; 3], like: &ArrayD<f32>) {
        for (s, init) in self.all_mut().into_iter().zip(inits) {
            if let Some(init) = init {
                slot(s, like, init);
            }
        }
    }
}

/// Slot `s`, created as `like`-shaped array of `init` on first use.
pub(crate) fn slot<'a>(
    s: &'a mut Option<ArrayD<f32>>,
    like: &ArrayD<f32>,
    init: f32,
) -> &'a mut ArrayD<f32> {
    s.get_or_insert_with(|| ArrayD::from_elem(like.raw_dim(), init))
}

/// The initial value of each slot (`a, b, c`) the update rule keeps; `None` for a slot
/// it never touches. Must agree with the slots the host update creates.
pub(crate) fn slot_inits(alg: &Algorithm, flavor: Flavor) -> [Option<f32>; 3] {
    let z = Some(0.0);
    match *alg {
        Algorithm::Sgd { momentum, nesterov } => {
            if momentum == 0.0 && !nesterov {
                [None; 3]
            } else {
                [z, None, None]
            }
        }
        Algorithm::Adam { amsgrad, .. } => [z, z, if amsgrad { z } else { None }],
        Algorithm::Adamax { .. } | Algorithm::Nadam { .. } | Algorithm::Adadelta { .. } => {
            [z, z, None]
        }
        Algorithm::RmsProp {
            momentum, centered, ..
        } => [
            z,
            if centered { z } else { None },
            if momentum > 0.0 { z } else { None },
        ],
        // Keras fills the accumulator with `initial_accumulator_value` in every flavour.
        Algorithm::Ftrl {
            initial_accumulator_value,
            ..
        } => [Some(initial_accumulator_value), z, None],
        Algorithm::Adagrad {
            initial_accumulator_value,
            ..
        } => [
            Some(if flavor == Flavor::MultiBackend {
                0.0
            } else {
                initial_accumulator_value
            }),
            None,
            None,
        ],
    }
}

/// Nadam's per-step scalars for one parameter: `u_t`, `u_{t+1}`, the running product
/// `Π u` this parameter sees and `Π u · u_{t+1}`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct NadamScalars {
    pub u_t: f32,
    pub u_t1: f32,
    pub up: f32,
    pub up1: f32,
}

/// The scalars of one step, computed once on the host.
#[derive(Clone, Debug)]
pub(crate) struct StepScalars {
    /// Learning rate after schedule and legacy decay.
    pub lr: f32,
    /// `iterations + 1`.
    pub t: f32,
    /// Nadam: per trainable parameter (index `k`), in update order (empty for other
    /// rules). The legacy flavours share one value per step; tf-keras's may differ per
    /// parameter (see `Optimizer::set_keras_trace`).
    pub nadam: Vec<NadamScalars>,
    /// Nadam's running product after this step (unchanged for other rules).
    pub u_product: f32,
}

/// Adam's step size `lr·sqrt(1 − β2^t)/(1 − β1^t)`.
pub(crate) fn adam_alpha(lr: f32, t: f32, beta_1: f32, beta_2: f32) -> f32 {
    lr * (1.0 - beta_2.powf(t)).sqrt() / (1.0 - beta_1.powf(t))
}

/// Ftrl's L2 strength with β folded in, `l2 + β/(2·lr)` (tf-keras `update_step` and
/// optimizer_v2 `_resource_apply_dense` alike).
pub(crate) fn ftrl_l2(l2: f32, beta: f32, lr: f32) -> f32 {
    l2 + beta / (2.0 * lr)
}

/// `sqrt(Σ x²)` in iteration order, of `x` clamped to `±pre` first when given.
fn norm(g: &ArrayD<f32>, pre: Option<f32>) -> f32 {
    sum_sq(g, pre).sqrt()
}

/// `Σ x²` in iteration order (of `x.clamp(−pre, pre)` when `pre` is given).
fn sum_sq(g: &ArrayD<f32>, pre: Option<f32>) -> f32 {
    match pre {
        Some(c) => g
            .iter()
            .map(|&x| x.clamp(-c, c))
            .map(|x| x * x)
            .sum::<f32>(),
        None => g.iter().map(|&x| x * x).sum::<f32>(),
    }
}

/// `sqrt(Σ_tensors Σ x²)`: per-tensor sums in iteration order, then their sum.
fn global_norm(gs: &[&ArrayD<f32>], pre: Option<f32>) -> f32 {
    gs.iter().map(|g| sum_sq(g, pre)).sum::<f32>().sqrt()
}

/// The norm-based part of a clipping plan.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NormClip {
    /// No norm clipping.
    None,
    /// `tf.clip_by_norm`: `x·cn / d[k]` with `d[k] = max(‖g_k‖, cn)`.
    PerTensor {
        /// `clipnorm`.
        cn: f32,
        /// Per trainable tensor `max(‖g_k‖, cn)`.
        d: Vec<f32>,
    },
    /// Multi-backend `clipnorm` (global norm): `x·cn / gn` when `gn ≥ cn`, else nothing.
    MultiBackend(Option<(f32, f32)>),
    /// `tf.clip_by_global_norm`: `x·scale`, `scale = gc / max(global_norm, gc)`.
    Scale(f32),
}

/// How one step clips the gradients of the trainable parameters (index `k` counts
/// trainable parameters only): an optional `clamp(−cv, cv)` before the norm clip, the
/// norm clip, an optional clamp after it. A setting ≤ 0 is off. Which apply depends on
/// the flavour:
/// - tf-keras ≥ 2.11 applies exactly one, `clipnorm` before `global_clipnorm` before
///   `clipvalue` (`tf_keras/src/optimizers/optimizer.py`, `_clip_gradients`);
/// - `optimizer_v2` chains them: `clipvalue`, then `clipnorm`, then `global_clipnorm`
///   (`legacy/optimizer_v2.py`, `_transform_unaggregated_gradients`: `_clipvalue_fn`,
///   `_clipnorm_fn`, `_global_clipnorm_fn` in that order), so the norms are those of
///   the value-clipped gradients;
/// - multi-backend Keras 2 (`optimizers.py`, `get_gradients`) clips by the global norm
///   first, then by value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ClipPlan {
    /// `clipvalue` applied before the norm clip.
    pub pre: Option<f32>,
    /// The norm clip.
    pub norm: NormClip,
    /// `clipvalue` applied after the norm clip.
    pub post: Option<f32>,
}

impl ClipPlan {
    /// The plan of `config` for the gradients `gs` of the trainable parameters.
    pub fn new(config: &OptimizerConfig, gs: &[&ArrayD<f32>]) -> ClipPlan {
        let cn = config.clipnorm.filter(|&v| v > 0.0);
        let gc = config.global_clipnorm.filter(|&v| v > 0.0);
        let cv = config.clipvalue.filter(|&v| v > 0.0);
        let (pre, post) = match config.flavor {
            Flavor::TfKeras => (None, None),
            Flavor::Legacy => (cv, None),
            Flavor::MultiBackend => (None, cv),
        };
        let norm = if let Some(cn) = cn {
            if config.flavor == Flavor::MultiBackend {
                let gn = global_norm(gs, None);
                NormClip::MultiBackend((gn >= cn).then_some((cn, gn)))
            } else {
                NormClip::PerTensor {
                    cn,
                    d: gs.iter().map(|g| norm(g, pre).max(cn)).collect(),
                }
            }
        } else if let Some(gc) = gc {
            NormClip::Scale(gc / global_norm(gs, pre).max(gc))
        } else {
            NormClip::None
        };
        match (config.flavor, &norm) {
            // One clip only: the value clip when no norm clip is set.
            (Flavor::TfKeras, NormClip::None) => ClipPlan {
                pre: cv,
                norm,
                post: None,
            },
            _ => ClipPlan { pre, norm, post },
        }
    }

    /// Clips `g`, the gradient of trainable parameter `k`, in place.
    pub fn apply(&self, k: usize, g: &mut ArrayD<f32>) {
        if let Some(c) = self.pre {
            g.mapv_inplace(|x| x.clamp(-c, c));
        }
        match &self.norm {
            NormClip::None | NormClip::MultiBackend(None) => {}
            NormClip::PerTensor { cn, d } => {
                let d = d.get(k).copied().unwrap_or(*cn);
                g.mapv_inplace(|x| x * cn / d);
            }
            NormClip::MultiBackend(Some((cn, gn))) => g.mapv_inplace(|x| x * cn / gn),
            NormClip::Scale(s) => g.mapv_inplace(|x| x * s),
        }
        if let Some(c) = self.post {
            g.mapv_inplace(|x| x.clamp(-c, c));
        }
    }
}
