//! The optimizer update as a compiled loop nest: one loop-IR [`Module`] per (optimizer
//! rule, parameter shapes, trainable flags, engine) that updates every trainable
//! parameter in one program, run by [`super::Optimizer::step_compiled`] on the JIT or the
//! interpreter. The host update ([`super::Optimizer::step`]) is the oracle, and the two
//! agree bit for bit (see *Exactness*).
//!
//! # Program
//!
//! Per trainable parameter of `n > 0` elements, elementwise kernels over its flat
//! (standard-layout) data:
//! - `update.p<i>` (when `n ≥ 256`): a `Parallel` loop over blocks of 256 elements, each
//!   a serial loop over 64 `Vector(4)` groups;
//! - `update.p<i>.tail` (when `n mod 256 > 0`): serial; `Vector(4)` groups over the
//!   multiple-of-4 part of the remainder, then a scalar loop over the last `n mod 4`.
//!
//! Every kernel runs the same element program: load the gradient and clip it, apply
//! decoupled weight decay to the weight, compute the new slot values and the new weight
//! into local registers (in the host's operation order), then store them.
//!
//! # Buffers (role convention)
//!
//! - `Input(0)`, `hyper`: the per-step scalars, filled on the host each step, so one
//!   program serves every step: `[0]` the learning rate (after schedule and legacy
//!   decay); then the rule's scalars (Adam: `α = lr·sqrt(1−β2^t)/(1−β1^t)`; Adamax:
//!   `1 − β1^t`; Ftrl: `l2 + β/(2·lr)`; Nadam: `u_{t+1}, 1 − u_t, 1 − β2^t`, then per trainable parameter `k`
//!   `1 − Πu_k·u_{t+1}, 1 − Πu_k`, since tf-keras's running product may differ between
//!   parameters of one step, see `Optimizer::set_keras_trace`); then the clipping
//!   scalars (`clipnorm`: `max(‖g_k‖, clipnorm)` per trainable tensor `k`;
//!   multi-backend `clipnorm`: `(clipnorm, global norm)` when clipping, else `(1, 1)`;
//!   `global_clipnorm`: the scale). `clipvalue` (a clamp before the norm clip for
//!   `optimizer_v2`, after it for multi-backend Keras, alone for tf-keras), the weight
//!   decay and the rule's constant hyperparameters (`1 − β1`, `ρ`, `ε`…) are constants
//!   of the program.
//! - Per trainable parameter, in parameter order: the weight (`Output(j)`, written in
//!   place), its gradient (`Input(j)`, read-only) and the slot arrays the rule keeps, in
//!   slot order (`Output(j)`, written in place). `Output` and `Input` indices count up
//!   over the writable and read-only buffers respectively.
//!
//! Norms are reductions: they are computed on the host, in the host step's summation
//! order, by the same code (`ClipPlan`), and only the resulting scalars enter the
//! program. Non-trainable parameters have no buffers and are never touched.
//!
//! # Exactness
//!
//! The host update is plain Rust (no FMA contraction), and the program uses no
//! `Expr::Fma`: every element computes the same IEEE-754 single-precision operations on
//! the same values in the same order (`+ − × ÷`, `sqrt`, negation and `|x|` are
//! correctly rounded or exact on the interpreter and on Cranelift's `f32`/`f32x4`
//! lowering), and the scalars that need `powf` come from the host. `f32::clamp` and
//! `f32::max` (maxNum: a NaN operand yields the other one) are written as selects with
//! the same NaN behaviour. Hence parameters and slots are bitwise equal to the host step
//! for any thread count (no ulp bound is needed). The only latitude is where Rust itself
//! leaves it: the sign of a zero returned by `f32::max(+0, −0)`, which the rules never
//! meet (amsgrad's `v` and Adamax's `|g|` are never −0), and the payload and sign of a
//! NaN: with NaN or ∞ in the data both paths give NaN in exactly the same elements, but
//! the NaN bits may differ (`tests/train_update.rs` compares NaN as equal to NaN).
//!
//! # Cost
//!
//! One pass over each array (Adam: read `w, g, m, v`, write `w, m, v`), against the host's
//! gradient copy plus a pass per statement group; the interpreter copies every buffer in
//! and out and is meant for checking. `examples/perf_update.rs` measures it: Adam over
//! the DeepFace L4–L6 tensors scaled to 18.6 M floats, 2 shared cores, min of 10 steps:
//! host 71 ms, JIT 25 ms on one thread, 20 ms on two (≈ 26 GB/s: memory bound) with the
//! machine lightly loaded; host 103–120 ms, JIT 42–45 ms on one thread and 49–52 ms on
//! two when the other core is busy. Compiling the program takes 2–9 ms.

use std::borrow::Cow;

use ndarray::ArrayD;

use super::opt_parts::{adam_alpha, ftrl_l2, slot_inits, ClipPlan, NormClip, Slots, StepScalars};
use super::optimizer::{Algorithm, Flavor, OptimizerConfig};
use crate::backend::{BufArg, Program};
use crate::error::{Error, Result};
use crate::loop_ir::{
    bin, for_, load, load_local, un, Affine, BinOp, BufId, BufRole, Buffer, CmpOp, Expr,
    KernelBuilder, LoopKind, Module, Stmt, UnOp,
};
use crate::runtime::Engine;

/// Elements per iteration of a parameter's parallel loop.
const BLOCK: usize = 256;
/// Index of the learning rate in the hyper buffer.
const H_LR: usize = 0;
/// Index of the rule's first scalar in the hyper buffer.
const H_RULE: usize = 1;

/// The norm clip of the program; the per-step values come from the hyper buffer.
#[derive(Clone, Copy, Debug, PartialEq)]
enum NormKind {
    None,
    /// `g·cn / d_k` (`cn` constant, `d_k` per step).
    PerTensor(f32),
    /// `g·a / b` (per step).
    MultiBackend,
    /// `g·s` (per step).
    Scale,
}

/// How the program clips gradients (the shape of `ClipPlan`): `clamp(−pre, pre)`, the
/// norm clip, `clamp(−post, post)`; the clamp bounds are constants.
#[derive(Clone, Copy, Debug, PartialEq)]
struct ClipKind {
    pre: Option<f32>,
    norm: NormKind,
    post: Option<f32>,
}

impl ClipKind {
    /// The kind `config` asks for (the same rules as `ClipPlan::new`).
    fn of(config: &OptimizerConfig) -> ClipKind {
        let cn = config.clipnorm.filter(|&v| v > 0.0);
        let gc = config.global_clipnorm.filter(|&v| v > 0.0);
        let cv = config.clipvalue.filter(|&v| v > 0.0);
        let norm = match (cn, gc) {
            (Some(_), _) if config.flavor == Flavor::MultiBackend => NormKind::MultiBackend,
            (Some(cn), _) => NormKind::PerTensor(cn),
            (None, Some(_)) => NormKind::Scale,
            (None, None) => NormKind::None,
        };
        let (pre, post) = match (config.flavor, norm) {
            (Flavor::TfKeras, NormKind::None) => (cv, None),
            (Flavor::TfKeras, _) => (None, None),
            (Flavor::Legacy, _) => (cv, None),
            (Flavor::MultiBackend, _) => (None, cv),
        };
        ClipKind { pre, norm, post }
    }

    /// Hyper-buffer entries for `trainable` trainable tensors.
    fn hyper_len(self, trainable: usize) -> usize {
        match self.norm {
            NormKind::None => 0,
            NormKind::PerTensor(_) => trainable,
            NormKind::MultiBackend => 2,
            NormKind::Scale => 1,
        }
    }

    /// Whether `plan` has this shape (the same clamp bounds, bit for bit).
    fn fits(self, plan: &ClipPlan) -> bool {
        let same = |a: Option<f32>, b: Option<f32>| a.map(f32::to_bits) == b.map(f32::to_bits);
        same(self.pre, plan.pre) && same(self.post, plan.post)
    }
}

/// Hyper-buffer entries of the rule's per-step scalars for `trainable` trainable
/// parameters.
fn rule_hyper_len(alg: &Algorithm, trainable: usize) -> usize {
    match alg {
        Algorithm::Adam { .. } | Algorithm::Adamax { .. } | Algorithm::Ftrl { .. } => 1,
        Algorithm::Nadam { .. } => 3 + 2 * trainable,
        _ => 0,
    }
}

/// Names of the slots `a, b, c` of a rule, for the printer.
fn slot_names(alg: &Algorithm) -> [&'static str; 3] {
    match alg {
        Algorithm::Sgd { .. } => ["momentum", "-", "-"],
        Algorithm::Adam { .. } => ["m", "v", "vhat"],
        Algorithm::Adamax { .. } => ["m", "u", "-"],
        Algorithm::Nadam { .. } => ["m", "v", "-"],
        Algorithm::RmsProp { .. } => ["v", "mean_g", "momentum"],
        Algorithm::Adagrad { .. } => ["acc", "-", "-"],
        Algorithm::Adadelta { .. } => ["acc_g", "acc_dx", "-"],
        Algorithm::Ftrl { .. } => ["accumulator", "linear", "-"],
    }
}

/// What the program depends on: the rule (not the learning rate, which is per step),
/// the engine and, per parameter, its length when trainable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    engine: Engine,
    rule: String,
    lens: Vec<Option<usize>>,
}

impl Key {
    fn new(config: &OptimizerConfig, lens: &[Option<usize>], engine: Engine) -> Key {
        // Debug text compares floats by value and NaN equal to NaN.
        let rule = format!(
            "{:?} {:?} {:?} {:?} {:?} {:?}",
            config.algorithm,
            config.flavor,
            config.clipnorm,
            config.clipvalue,
            config.global_clipnorm,
            config.weight_decay
        );
        Key {
            engine,
            rule,
            lens: lens.to_vec(),
        }
    }
}

/// The buffers of one updated parameter.
#[derive(Clone, Copy, Debug)]
struct ParamBufs {
    w: BufId,
    g: BufId,
    slots: [Option<BufId>; 3],
}

/// A compiled optimizer update (see the module docs). Immutable once built; `Send +
/// Sync`, shared by clones of its [`super::Optimizer`].
pub struct CompiledUpdate {
    key: Key,
    module: Module,
    /// The prepared program (`None` only while lowering, before [`CompiledUpdate::build`]
    /// prepares it).
    program: Option<Program>,
    /// Per parameter: its buffers, when it is trainable and not empty.
    params: Vec<Option<ParamBufs>>,
    clip: ClipKind,
    /// Index of the first clipping scalar in the hyper buffer.
    h_clip: usize,
    trainable: usize,
}

impl std::fmt::Debug for CompiledUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledUpdate")
            .field("engine", &self.key.engine)
            .field("module", &self.module.name)
            .field("buffers", &self.module.buffers.len())
            .field("kernels", &self.module.kernels.len())
            .finish()
    }
}

impl CompiledUpdate {
    /// Lowers (and for [`Engine::Jit`], compiles) the update of `config` for parameters
    /// whose lengths are `lens` (`None`: not trainable).
    pub fn build(
        config: &OptimizerConfig,
        lens: &[Option<usize>],
        engine: Engine,
    ) -> Result<CompiledUpdate> {
        if engine.is_reference() {
            return Err(Error::Usage {
                detail: "the reference engine updates on the host (Optimizer::step)".into(),
            });
        }
        let mut up = lower(config, lens)?;
        up.key = Key::new(config, lens, engine);
        up.program = Some(engine.prepare(&up.module)?);
        Ok(up)
    }

    /// Whether this program is the update of `config` for `lens` on `engine`.
    pub fn matches(
        &self,
        config: &OptimizerConfig,
        lens: &[Option<usize>],
        engine: Engine,
    ) -> bool {
        self.key == Key::new(config, lens, engine)
    }

    /// The loop-IR program.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// The hyper buffer of one step.
    pub(crate) fn hyper(
        &self,
        config: &OptimizerConfig,
        s: &StepScalars,
        plan: &ClipPlan,
    ) -> Result<Vec<f32>> {
        let len = self
            .module
            .buffers
            .first()
            .map(|b| b.len)
            .ok_or_else(|| Error::internal("compiled update without its hyper buffer"))?;
        let mut h = vec![0.0f32; len];
        let mut put = |i: usize, v: f32| -> Result<()> {
            *h.get_mut(i)
                .ok_or_else(|| Error::internal("compiled update: hyper index out of range"))? = v;
            Ok(())
        };
        put(H_LR, s.lr)?;
        rule_scalars(config, s, self.trainable, &mut put)?;
        match (self.clip.norm, &plan.norm) {
            _ if !self.clip.fits(plan) => {
                return Err(Error::internal(
                    "compiled update: clipping plan does not match the program",
                ))
            }
            (NormKind::None, NormClip::None) => {}
            (NormKind::PerTensor(_), NormClip::PerTensor { d, .. })
                if d.len() == self.trainable =>
            {
                for (k, &v) in d.iter().enumerate() {
                    put(self.h_clip + k, v)?;
                }
            }
            (NormKind::MultiBackend, NormClip::MultiBackend(p)) => {
                // No clipping this step: `g·1/1 = g` exactly.
                let (a, b) = p.unwrap_or((1.0, 1.0));
                put(self.h_clip, a)?;
                put(self.h_clip + 1, b)?;
            }
            (NormKind::Scale, NormClip::Scale(v)) => put(self.h_clip, *v)?,
            _ => {
                return Err(Error::internal(
                    "compiled update: clipping plan does not match the program",
                ))
            }
        }
        Ok(h)
    }

    /// Runs one step in place: `params` and the slot arrays of `slots` (which must exist
    /// for every updated parameter) are written, `grads` and `hyper` read.
    pub(crate) fn run(
        &self,
        params: &mut [ArrayD<f32>],
        grads: &[ArrayD<f32>],
        slots: &mut [Slots],
        hyper: &[f32],
        threads: usize,
    ) -> Result<()> {
        let n = self.params.len();
        if params.len() != n || grads.len() != n || slots.len() != n {
            return Err(Error::internal(format!(
                "compiled update for {n} parameters given {} parameters, {} gradients, {} slot sets",
                params.len(),
                grads.len(),
                slots.len()
            )));
        }
        for (p, pb) in params.iter_mut().zip(&self.params) {
            if pb.is_some() && !p.is_standard_layout() {
                *p = p.as_standard_layout().into_owned();
            }
        }
        let gflat: Vec<Option<Cow<[f32]>>> = grads
            .iter()
            .zip(&self.params)
            .map(|(g, pb)| pb.map(|_| flat(g)))
            .collect();
        let mut args: Vec<BufArg> = Vec::with_capacity(self.module.buffers.len());
        args.push(BufArg::Read(hyper));
        let not_flat = || Error::internal("compiled update: array not contiguous");
        for (((p, g), s), pb) in params
            .iter_mut()
            .zip(&gflat)
            .zip(slots.iter_mut())
            .zip(&self.params)
        {
            let (Some(pb), Some(g)) = (pb, g) else {
                continue;
            };
            args.push(BufArg::Write(p.as_slice_mut().ok_or_else(not_flat)?));
            args.push(BufArg::Read(g));
            for (slot, want) in s.all_mut().into_iter().zip(pb.slots) {
                if want.is_none() {
                    continue;
                }
                let arr = slot
                    .as_mut()
                    .ok_or_else(|| Error::internal("compiled update: optimizer slot missing"))?;
                if !arr.is_standard_layout() {
                    *arr = arr.as_standard_layout().into_owned();
                }
                args.push(BufArg::Write(arr.as_slice_mut().ok_or_else(not_flat)?));
            }
        }
        self.program
            .as_ref()
            .ok_or_else(|| Error::internal("compiled update: program not prepared"))?
            .run(&mut args, threads)
    }
}

/// Puts the rule's per-step scalars of `s` for `trainable` trainable parameters into the
/// hyper buffer (from index [`H_RULE`]).
fn rule_scalars(
    config: &OptimizerConfig,
    s: &StepScalars,
    trainable: usize,
    put: &mut dyn FnMut(usize, f32) -> Result<()>,
) -> Result<()> {
    match config.algorithm {
        Algorithm::Adam { beta_1, beta_2, .. } => {
            put(H_RULE, adam_alpha(s.lr, s.t, beta_1, beta_2))?
        }
        Algorithm::Adamax { beta_1, .. } => put(H_RULE, 1.0 - beta_1.powf(s.t))?,
        Algorithm::Ftrl { l2, beta, .. } => put(H_RULE, ftrl_l2(l2, beta, s.lr))?,
        Algorithm::Nadam { beta_2, .. } => {
            if s.nadam.len() != trainable {
                return Err(Error::internal(
                    "compiled update: Nadam scalars for another parameter count",
                ));
            }
            if let Some(first) = s.nadam.first() {
                put(H_RULE, first.u_t1)?;
                put(H_RULE + 1, 1.0 - first.u_t)?;
            }
            put(H_RULE + 2, 1.0 - beta_2.powf(s.t))?;
            for (k, n) in s.nadam.iter().enumerate() {
                put(H_RULE + 3 + 2 * k, 1.0 - n.up1)?;
                put(H_RULE + 4 + 2 * k, 1.0 - n.up)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A contiguous row-major copy of `a` unless it already is one.
fn flat(a: &ArrayD<f32>) -> Cow<'_, [f32]> {
    match a.as_slice() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(a.iter().copied().collect()),
    }
}

/// Lowers the update (buffers and kernels; no key, no native code yet).
fn lower(config: &OptimizerConfig, lens: &[Option<usize>]) -> Result<CompiledUpdate> {
    let clip = ClipKind::of(config);
    let trainable = lens.iter().filter(|l| l.is_some()).count();
    let h_clip = H_RULE + rule_hyper_len(&config.algorithm, trainable);
    let mut module = Module {
        name: format!("update.{}", config.name),
        buffers: vec![Buffer {
            name: "hyper".into(),
            len: h_clip + clip.hyper_len(trainable),
            role: BufRole::Input(0),
            dtype: crate::loop_ir::Dtype::F32,
        }],
        kernels: Vec::new(),
    };
    let (mut n_in, mut n_out) = (1usize, 0usize);
    let mut push = |m: &mut Module, name: String, len: usize, write: bool| -> BufId {
        let role = if write {
            n_out += 1;
            BufRole::Output(n_out - 1)
        } else {
            n_in += 1;
            BufRole::Input(n_in - 1)
        };
        m.buffers.push(Buffer::new(name, len, role));
        (m.buffers.len() - 1) as BufId
    };
    let inits = slot_inits(&config.algorithm, config.flavor);
    let names = slot_names(&config.algorithm);
    let mut params = Vec::with_capacity(lens.len());
    let mut k = 0usize;
    for (i, len) in lens.iter().enumerate() {
        let Some(n) = *len else {
            params.push(None);
            continue;
        };
        k += 1;
        if n == 0 {
            params.push(None);
            continue;
        }
        let w = push(&mut module, format!("w{i}"), n, true);
        let g = push(&mut module, format!("grad{i}"), n, false);
        let mut slots = [None; 3];
        for ((slot, init), name) in slots.iter_mut().zip(inits).zip(names) {
            if init.is_some() {
                *slot = Some(push(&mut module, format!("{name}{i}"), n, true));
            }
        }
        let pb = ParamBufs { w, g, slots };
        let cx = Rule {
            config,
            clip,
            h_clip,
            k: k - 1,
            hyper: 0,
            pb,
        };
        module.kernels.extend(cx.kernels(i, n)?);
        params.push(Some(pb));
    }
    Ok(CompiledUpdate {
        key: Key::new(config, lens, Engine::Interp),
        module,
        program: None,
        params,
        clip,
        h_clip,
        trainable,
    })
}

mod in_place;
mod rule;
pub use in_place::InPlaceUpdate;
use rule::Rule;

#[cfg(test)]
mod tests;
