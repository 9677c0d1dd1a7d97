//! Optimizers with tf-keras 2.21's update rules, elementwise in float32.
//!
//! Three flavours ([`Flavor`]) differ in a few places:
//! - [`Flavor::TfKeras`]: `keras.optimizers.*` of tf-keras ≥ 2.11 (`is_legacy_optimizer:
//!   false`), `tf_keras/src/optimizers/{sgd,adam,rmsprop,…}.py`. Per step: learning rate
//!   from the schedule at `iterations`; clip (`clipnorm` per tensor, else
//!   `global_clipnorm`, else `clipvalue`); weight decay `w −= w·wd·lr`; `update_step`
//!   per variable; `iterations += 1`; constraints (applied by the caller, in Keras
//!   layout).
//! - [`Flavor::Legacy`]: `optimizer_v2` (`keras.optimizers.legacy.*`; a saved config
//!   without an `is_legacy_optimizer` key, or with `true`): `lr / (1 + decay·iterations)`,
//!   clipping chained (`clipvalue`, then `clipnorm` or `global_clipnorm`), and the TF
//!   kernels' formulas where the rule calls `training_ops.*`; it differs from tf-keras
//!   in Adagrad's `ε` (outside the square root), RMSprop's `ε` with momentum 0 (outside)
//!   and Nadam's momentum schedule `0.96^(schedule_decay·t)` (see `host.rs`).
//! - [`Flavor::MultiBackend`]: Keras 1 / 2.0–2.3: as legacy, plus RMSprop's `ε` outside
//!   the square root for any momentum, Adagrad accumulators starting at 0, and
//!   `clipnorm` taken over the global norm of all gradients, before `clipvalue`.
//!
//! State is kept per parameter in canonical layout (every rule is elementwise).

use super::opt_parts::{slot_inits, ClipPlan, NadamScalars, Slots, StepScalars};
use super::update::CompiledUpdate;
use crate::error::{Error, Result};
use crate::runtime::Engine;
use crate::train::schedule::LearningRate;
use ndarray::ArrayD;
use std::sync::Arc;

/// Which Keras implementation's update rules to follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// tf-keras ≥ 2.11 `keras.optimizers.*`.
    TfKeras,
    /// `optimizer_v2` / `keras.optimizers.legacy.*`.
    Legacy,
    /// Keras 1 and multi-backend Keras 2.0–2.3.
    MultiBackend,
}

/// The update rule and its hyperparameters.
#[derive(Clone, Debug, PartialEq)]
pub enum Algorithm {
    /// `m = μm − lr·g; w += m` (Nesterov: `w += μm − lr·g`); plain `w −= lr·g` when μ = 0.
    Sgd {
        /// Momentum μ.
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
    },
    /// Adam / AdamW (AdamW = Adam with `weight_decay`).
    Adam {
        /// β1.
        beta_1: f32,
        /// β2.
        beta_2: f32,
        /// ε.
        epsilon: f32,
        /// AMSGrad variant.
        amsgrad: bool,
    },
    /// Adamax.
    Adamax {
        /// β1.
        beta_1: f32,
        /// β2.
        beta_2: f32,
        /// ε.
        epsilon: f32,
    },
    /// Nadam.
    Nadam {
        /// β1.
        beta_1: f32,
        /// β2.
        beta_2: f32,
        /// ε.
        epsilon: f32,
        /// Exponent factor of the momentum schedule (1 in tf-keras ≥ 2.11, 0.004 before).
        schedule_decay: f32,
    },
    /// RMSprop.
    RmsProp {
        /// ρ.
        rho: f32,
        /// Momentum.
        momentum: f32,
        /// ε.
        epsilon: f32,
        /// Centered variant.
        centered: bool,
    },
    /// Adagrad.
    Adagrad {
        /// Initial accumulator value.
        initial_accumulator_value: f32,
        /// ε.
        epsilon: f32,
    },
    /// Adadelta.
    Adadelta {
        /// ρ.
        rho: f32,
        /// ε.
        epsilon: f32,
    },
    /// FTRL-proximal (`Ftrl`).
    Ftrl {
        /// `learning_rate_power` p ≤ 0 (`n^(−p)` scales the step); the compiled update
        /// supports −0.5 (Keras's default, a square root) and 0.
        learning_rate_power: f32,
        /// Initial accumulator value.
        initial_accumulator_value: f32,
        /// `l1_regularization_strength`.
        l1: f32,
        /// `l2_regularization_strength`.
        l2: f32,
        /// `l2_shrinkage_regularization_strength`.
        l2_shrinkage: f32,
        /// β (added to the L2 strength as `β / (2·lr)`).
        beta: f32,
    },
}

/// An optimizer's full configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerConfig {
    /// Keras class name as given (`SGD`, `Adam`, `AdamW`…), for messages.
    pub name: String,
    /// Update rule.
    pub algorithm: Algorithm,
    /// Learning rate.
    pub learning_rate: LearningRate,
    /// Which implementation's rules.
    pub flavor: Flavor,
    /// Per-tensor gradient norm clip.
    pub clipnorm: Option<f32>,
    /// Elementwise gradient clip.
    pub clipvalue: Option<f32>,
    /// Global gradient norm clip.
    pub global_clipnorm: Option<f32>,
    /// Decoupled weight decay (`w −= w·wd·lr` before the update).
    pub weight_decay: Option<f32>,
    /// Legacy inverse-time decay of the learning rate (`lr / (1 + decay·t)`).
    pub decay: f32,
}

/// Everything an [`Optimizer`] has learnt while training, apart from its configuration:
/// what a resumed run must start from to take the very steps the uninterrupted run takes
/// ([`Optimizer::export_state`], [`Optimizer::restore_state`]).
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// Updates applied so far.
    pub iterations: u64,
    /// The slot arrays of each parameter (`a, b, c`, see [`Optimizer::slots`]); empty
    /// before the first step.
    pub slots: Vec<[Option<ArrayD<f32>>; 3]>,
    /// Nadam's running product of the momentum schedule (1 for the other rules).
    pub u_product: f32,
    /// The Keras trace Nadam's counter follows ([`Optimizer::set_keras_trace`]).
    pub keras_trace: u64,
    /// The learning rate in force when it is a constant (callbacks such as
    /// ReduceLROnPlateau change it); `None` for a schedule, which nothing changes.
    pub constant_learning_rate: Option<f32>,
}

/// An optimizer with its state.
///
/// Two ways to apply a step share that state (slot arrays, `iterations`, Nadam's running
/// product), so they may be mixed freely: [`Optimizer::step`] on the host and
/// [`Optimizer::step_compiled`] as one compiled loop-IR program ([`super::update`]).
#[derive(Clone, Debug)]
pub struct Optimizer {
    /// The configuration.
    pub config: OptimizerConfig,
    /// Updates applied so far (Keras `optimizer.iterations`).
    pub iterations: u64,
    slots: Vec<Slots>,
    u_product: f32,
    /// tf-keras Nadam: which trace of Keras's train function runs the steps
    /// ([`Optimizer::set_keras_trace`]).
    keras_trace: u64,
    /// The compiled update of the last [`Optimizer::step_compiled`] (rebuilt when the
    /// engine, the rule or the parameter shapes change).
    compiled: Option<Arc<CompiledUpdate>>,
}

impl Optimizer {
    /// A fresh optimizer (no state, `iterations = 0`).
    pub fn new(config: OptimizerConfig) -> Self {
        Optimizer {
            config,
            iterations: 0,
            slots: Vec::new(),
            u_product: 1.0,
            keras_trace: 0,
            compiled: None,
        }
    }

    /// tf-keras ≥ 2.11 Nadam only: which trace of Keras's train function (0 = the first)
    /// runs the next steps; the default 0 is what `load_model(file).fit(…)` does with
    /// full batches.
    ///
    /// Why it matters: `tf_keras/src/optimizers/nadam.py`, `update_step`, caches the
    /// running product `Π u` with a Python counter (`_u_product_counter`) compared with
    /// `iterations + 2` inside `tf.cond`. In `fit` the update runs in a traced
    /// `tf.function`, so the counter is read once per variable *while tracing* (and
    /// incremented by tracing the `false_fn`): variable `k` of `N` trainable ones
    /// (update order) compares with the constant `1 + N·trace + k`. At step `i` it
    /// multiplies `Π u` by `u_t` again unless that constant equals `i + 2`, and every
    /// variable uses the product as it stands after the previous variable's update.
    /// `trace` counts the traces before the one that runs: 0 when the optimizer was
    /// built before `fit` (`load_model` restores it), 1 when `fit` builds it (a trace
    /// that creates variables is traced twice). A smaller last batch does not retrace
    /// (Keras's dataset has an unknown batch dimension; measured with tf-keras 2.21: the
    /// counter advances by `N` once per trace). Eager `apply_gradients` follows the
    /// documented rule (one multiplication per step); no setting reproduces that.
    pub fn set_keras_trace(&mut self, trace: u64) {
        self.keras_trace = trace;
    }

    /// The learning rate the next step uses.
    pub fn current_learning_rate(&self) -> f32 {
        let lr = self.config.learning_rate.at(self.iterations);
        if self.config.flavor != Flavor::TfKeras
            && self.config.decay > 0.0
            && !matches!(self.config.algorithm, Algorithm::Nadam { .. })
        {
            lr / (1.0 + self.config.decay * self.iterations as f32)
        } else {
            lr
        }
    }

    /// The slot arrays parameter `param` has so far (`a, b, c`; which ones a rule keeps:
    /// SGD momentum `a`; Adam `m, v, v̂`; Adamax `m, u`; Nadam `m, v`; RMSprop `v`,
    /// centered mean `a`, momentum; Adagrad accumulator; Adadelta `E[g²], E[Δx²]`; Ftrl
    /// accumulator, linear).
    pub fn slots(&self, param: usize) -> [Option<&ArrayD<f32>>; 3] {
        self.slots.get(param).map(Slots::all).unwrap_or([None; 3])
    }

    /// A copy of the state (see [`OptimizerState`]).
    pub fn export_state(&self) -> OptimizerState {
        OptimizerState {
            iterations: self.iterations,
            slots: self
                .slots
                .iter()
                .map(|s| [s.a.clone(), s.b.clone(), s.c.clone()])
                .collect(),
            u_product: self.u_product,
            keras_trace: self.keras_trace,
            constant_learning_rate: match self.config.learning_rate {
                LearningRate::Constant(lr) => Some(lr),
                _ => None,
            },
        }
    }

    /// Takes over `state` (exported from an optimizer of the same configuration) for
    /// parameters of the shapes of `params`. A state that does not fit — slots for another
    /// number of parameters or of another shape, a constant rate for a schedule — is an
    /// [`Error::Resume`] naming the field, and the optimizer is left unchanged.
    pub fn restore_state(&mut self, state: OptimizerState, params: &[ArrayD<f32>]) -> Result<()> {
        if !state.slots.is_empty() && state.slots.len() != params.len() {
            return Err(Error::resume(
                "optimizer.slots",
                format!(
                    "slots for {} parameters, the model has {}",
                    state.slots.len(),
                    params.len()
                ),
            ));
        }
        for (i, (slots, p)) in state.slots.iter().zip(params).enumerate() {
            for (j, s) in slots.iter().enumerate() {
                if let Some(s) = s.as_ref().filter(|s| s.shape() != p.shape()) {
                    return Err(Error::resume(
                        format!("optimizer.slots[{i}][{j}]"),
                        format!("shape {:?}, the parameter's is {:?}", s.shape(), p.shape()),
                    ));
                }
            }
        }
        let constant = matches!(self.config.learning_rate, LearningRate::Constant(_));
        match state.constant_learning_rate {
            Some(lr) if constant => self.config.learning_rate = LearningRate::Constant(lr),
            None if !constant => {}
            _ => {
                return Err(Error::resume(
                    "optimizer.learning_rate",
                    "a constant rate and a schedule do not mix (another optimizer)",
                ))
            }
        }
        self.iterations = state.iterations;
        self.slots = state
            .slots
            .into_iter()
            .map(|[a, b, c]| Slots { a, b, c })
            .collect();
        self.u_product = state.u_product;
        self.keras_trace = state.keras_trace;
        Ok(())
    }

    /// Checks the arguments of a step and resets the state when the number of
    /// parameters changed; returns the indices of the trainable parameters.
    fn begin(
        &mut self,
        params: &[ArrayD<f32>],
        grads: &[ArrayD<f32>],
        trainable: &[bool],
    ) -> Result<Vec<usize>> {
        if params.len() != grads.len() || params.len() != trainable.len() {
            return Err(Error::internal(format!(
                "optimizer step: {} params, {} gradients, {} trainable flags",
                params.len(),
                grads.len(),
                trainable.len()
            )));
        }
        for (i, (p, g)) in params.iter().zip(grads).enumerate() {
            if trainable[i] && p.shape() != g.shape() {
                return Err(Error::internal(format!(
                    "optimizer step: gradient {i} has shape {:?}, parameter {:?}",
                    g.shape(),
                    p.shape()
                )));
            }
        }
        if self.slots.len() != params.len() {
            self.slots = vec![Slots::default(); params.len()];
        }
        Ok((0..params.len()).filter(|&i| trainable[i]).collect())
    }

    /// The scalars of the next step for `n` trainable parameters (nothing is committed).
    fn scalars(&self, n: usize) -> StepScalars {
        let lr = self.current_learning_rate();
        let t = self.iterations as f32 + 1.0;
        let mut nadam = Vec::new();
        let mut u_product = self.u_product;
        if let Algorithm::Nadam {
            beta_1,
            schedule_decay,
            ..
        } = self.config.algorithm
        {
            let u_t = beta_1 * (1.0 - 0.5 * 0.96f32.powf(schedule_decay * t));
            let u_t1 = beta_1 * (1.0 - 0.5 * 0.96f32.powf(schedule_decay * (t + 1.0)));
            let at = |up: f32| NadamScalars {
                u_t,
                u_t1,
                up,
                up1: up * u_t1,
            };
            if self.config.flavor == Flavor::TfKeras {
                // Keras's traced counter (see `set_keras_trace`): parameter k multiplies
                // unless 1 + N·trace + k == iterations + 2.
                let step = self.iterations.saturating_add(2);
                let base = (n as u64)
                    .saturating_mul(self.keras_trace)
                    .saturating_add(1);
                for k in 0..n as u64 {
                    if base.saturating_add(k) != step {
                        u_product *= u_t;
                    }
                    nadam.push(at(u_product));
                }
            } else {
                // optimizer_v2 / Keras 2: `m_schedule_new = m_cache · m_t` once per step
                // (legacy/nadam.py, `_prepare_local`).
                u_product *= u_t;
                nadam = vec![at(u_product); n];
            }
        }
        StepScalars {
            lr,
            t,
            nadam,
            u_product,
        }
    }

    /// Commits a finished step.
    fn finish(&mut self, s: &StepScalars) {
        self.u_product = s.u_product;
        self.iterations += 1;
    }

    /// One update of every trainable parameter from its gradient, on the host.
    pub fn step(
        &mut self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
        trainable: &[bool],
    ) -> Result<()> {
        let idx = self.begin(params, grads, trainable)?;
        let s = self.scalars(idx.len());
        let mut gs: Vec<ArrayD<f32>> = idx.iter().map(|&i| grads[i].clone()).collect();
        let plan = ClipPlan::new(&self.config, &gs.iter().collect::<Vec<_>>());
        for (k, g) in gs.iter_mut().enumerate() {
            plan.apply(k, g);
        }
        if let (Some(wd), Flavor::TfKeras) = (self.config.weight_decay, self.config.flavor) {
            for &i in &idx {
                params[i].mapv_inplace(|w| w - w * wd * s.lr);
            }
        }
        for (k, &i) in idx.iter().enumerate() {
            host::update(
                &self.config.algorithm,
                self.config.flavor,
                &s,
                k,
                &mut params[i],
                &gs[k],
                &mut self.slots[i],
            );
        }
        self.finish(&s);
        Ok(())
    }

    /// [`Optimizer::step`] as one compiled program over all trainable parameters
    /// ([`super::update`]), bitwise equal to the host step. `Engine::Reference` runs the
    /// host step; `Interp` and `Jit` build the program on first use (and again when the
    /// rule, the engine or the parameter shapes change) and keep it in the optimizer.
    /// `threads` (0 counts as 1) splits large parameters across threads (JIT only).
    /// Parameters in non-standard memory layout are replaced by standard-layout copies
    /// with the same values.
    pub fn step_compiled(
        &mut self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
        trainable: &[bool],
        engine: Engine,
        threads: usize,
    ) -> Result<()> {
        if engine.is_reference() {
            return self.step(params, grads, trainable);
        }
        let idx = self.begin(params, grads, trainable)?;
        let s = self.scalars(idx.len());
        self.update_compiled(params, grads, (trainable, &idx), &s, engine, threads)?;
        self.finish(&s);
        Ok(())
    }

    /// The compiled update with the step's scalars `s` of the trainable parameters `idx`
    /// (`trainable` as flags); nothing is committed.
    fn update_compiled(
        &mut self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
        (trainable, idx): (&[bool], &[usize]),
        s: &StepScalars,
        engine: Engine,
        threads: usize,
    ) -> Result<()> {
        let lens: Vec<Option<usize>> = params
            .iter()
            .zip(trainable)
            .map(|(p, &t)| t.then_some(p.len()))
            .collect();
        let program = match &self.compiled {
            Some(c) if c.matches(&self.config, &lens, engine) => c.clone(),
            _ => {
                let c = Arc::new(CompiledUpdate::build(&self.config, &lens, engine)?);
                self.compiled = Some(c.clone());
                c
            }
        };
        let inits = slot_inits(&self.config.algorithm, self.config.flavor);
        for &i in idx {
            self.slots[i].ensure(inits, &grads[i]);
        }
        let gs: Vec<&ArrayD<f32>> = idx.iter().map(|&i| &grads[i]).collect();
        let plan = ClipPlan::new(&self.config, &gs);
        let hyper = program.hyper(&self.config, s, &plan)?;
        program.run(params, grads, &mut self.slots, &hyper, threads)
    }
}

/// Whether RMSprop adds `ε` outside the square root, `lr·g/(sqrt(d) + ε)`, rather than
/// inside, `lr·g/sqrt(d + ε)` (`d` = `v`, or `v − ḡ²` when centered):
/// - tf-keras ≥ 2.11: inside, always (`tf_keras/src/optimizers/rmsprop.py`,
///   `update_step`: `denominator = velocity + self.epsilon`, `rsqrt(denominator)`);
/// - `optimizer_v2` (`legacy/rmsprop.py`, `_resource_apply_dense`): with momentum > 0
///   the TF kernels `ResourceApply(Centered)RMSProp` (`training_ops.cc`:
///   `mom = mom·momentum + grad·lr / sqrt(ms [− mg²] + ε)`), inside; with momentum 0 the
///   Python path `var − lr·g / (sqrt(denom_t) + ε)`, outside;
/// - multi-backend Keras 2: outside (`lr * g / (K.sqrt(new_a) + self.epsilon)`).
pub(crate) fn eps_outside_root(flavor: Flavor, momentum: f32) -> bool {
    match flavor {
        Flavor::TfKeras => false,
        Flavor::Legacy => momentum <= 0.0,
        Flavor::MultiBackend => true,
    }
}

mod host;
mod in_place;
pub use in_place::PendingUpdate;
