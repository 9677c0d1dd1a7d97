//! Compiled gradients: [`CompiledModel::gradients`] and the training step that `fit`
//! runs on the JIT and interpreter engines.
//!
//! A gradient program (see [`crate::lower::grad`]) is two modules over one buffer table.
//! A call binds the inputs, the parameters and the cotangent, runs phase 1 (forward),
//! hands the outputs to the caller's loss (which returns the cotangent), runs phase 2
//! (backward) over the same buffers and reads the gradients. Gradient programs are not
//! split into `max_batch` chunks: a batch is one program, so parameter gradients are one
//! sum in a fixed order and identical for any thread count.

use super::cache::{CacheKey, Cached};
use super::{execute, flat, fresh_buffers, writable_index, Bind, CompiledModel};
use crate::backend::Program;
use crate::error::{Error, Result};
use crate::init::Rng;
use crate::lower::grad::{lower_gradients_planned, LoweredGrad, Mode};
use crate::reference;
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

/// Given the model outputs of a run, returns the gradient of the first output (the loss
/// gradient of a training step, or a fixed cotangent).
pub type CotangentFn<'a> = dyn FnMut(&[ArrayD<f32>]) -> Result<ArrayD<f32>> + 'a;

/// [`CotangentFn`] of a training step that may end after the forward pass: `None` stops
/// the step there (nothing is updated).
pub type StepCotangentFn<'a> = dyn FnMut(&[ArrayD<f32>]) -> Result<Option<ArrayD<f32>>> + 'a;

/// A gradient program for one batch size, and its native code for the JIT.
pub struct PreparedGrad {
    /// The lowered program.
    pub lowered: LoweredGrad,
    /// Phase 1 (forward) and phase 2 (backward), prepared for the engine.
    pub programs: (Program, Program),
    /// Lowering plus code generation time in milliseconds.
    pub compile_ms: f64,
}

/// Result of one gradient run: the model outputs, then `(d inputs, d params)` with
/// parameter gradients in canonical layout.
pub struct GradRun {
    /// Model outputs (forward pass of the run).
    pub outputs: Vec<ArrayD<f32>>,
    /// Gradient of each model input.
    pub dinputs: Vec<ArrayD<f32>>,
    /// Gradient of each graph parameter (canonical layout).
    pub dparams: Vec<ArrayD<f32>>,
    /// Training mode: new values of non-trainable parameters (BatchNorm moving
    /// statistics), in node order; empty in inference mode.
    pub updates: Vec<(crate::graph::ParamId, ArrayD<f32>)>,
    /// Training mode: the activity-regularization penalty of the step (every layer's
    /// `activity_regularizer` on its output, scaled by the model's dialect, see
    /// [`reference::activity`]), whose gradient the backward pass included; 0 in
    /// inference mode.
    pub activity_loss: f64,
}

impl CompiledModel {
    /// The inference-mode gradient program for `batch` rows (lowered and compiled once,
    /// then cached).
    pub fn prepared_grad(&self, batch: usize) -> Result<Arc<PreparedGrad>> {
        self.prepared_grad_in(batch, Mode::Inference)
    }

    /// The gradient program for `batch` rows in `mode` (cached).
    pub fn prepared_grad_in(&self, batch: usize, mode: Mode) -> Result<Arc<PreparedGrad>> {
        self.check_f32_weights()?;
        let graph = self.model.graph();
        self.programs
            .gradient(CacheKey::Gradient(batch, mode, None), || {
                let t = std::time::Instant::now();
                let tier = self.opts.wide.resolve()?;
                let plans = self.tuning(batch)?.map(|t| t.plans.clone());
                let lowered = lower_gradients_planned(graph, batch, mode, tier, plans)?;
                self.prepare_grad(lowered, t)
            })
    }

    /// Prepares both phases of `lowered` for the engine; `t`: when lowering began.
    pub(super) fn prepare_grad(
        &self,
        lowered: LoweredGrad,
        t: std::time::Instant,
    ) -> Result<PreparedGrad> {
        let engine = self.opts.engine;
        let programs = (
            engine.prepare(&lowered.forward)?,
            engine.prepare(&lowered.backward)?,
        );
        Ok(PreparedGrad {
            lowered,
            programs,
            compile_ms: t.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Refuses gradients of a model compiled with 16-bit weights: they are an inference
    /// option (training updates f32 weights; a gradient of the rounded model would not be
    /// the gradient of the weights being trained).
    pub(super) fn check_f32_weights(&self) -> Result<()> {
        match self.opts.weights_dtype {
            crate::loop_ir::Dtype::F32 => Ok(()),
            d => Err(Error::Usage {
                detail: format!(
                    "weights stored in {} are an inference option: gradients and training \
                     need float32 weights (leave weights_dtype at f32)",
                    d.name()
                ),
            }),
        }
    }

    /// Gradients of `sum(y₀ · dy)` in inference mode with respect to every input and
    /// every parameter (canonical layout), with the model's own parameters.
    pub fn gradients(
        &self,
        inputs: &[ArrayD<f32>],
        dy: &ArrayD<f32>,
    ) -> Result<reference::backward::Gradients> {
        let params = self.model.params().to_vec();
        let run = self.run_gradients(&params, inputs, &mut |_| Ok(dy.clone()))?;
        Ok((run.dinputs, run.dparams))
    }

    /// Gives the storage of a run's parameter gradients back for the next run of the same
    /// batch size, so that steady-state training steps allocate (and page-fault) nothing
    /// as large as the weights. Arrays that do not fit are dropped.
    pub fn recycle_gradients(&self, batch: usize, dparams: Vec<ArrayD<f32>>) {
        if self.opts.engine.is_reference() {
            return;
        }
        let Some(mut pool) = self.programs.pool() else {
            return;
        };
        let Some((key, owned)) = pool.iter_mut().find(|(k, o)| {
            matches!(k, CacheKey::Gradient(b, ..) if *b == batch) && o.iter().any(Vec::is_empty)
        }) else {
            return;
        };
        let Some(Cached::Gradient(prepared)) = self.programs.get(key) else {
            return;
        };
        let l = &prepared.lowered;
        for (&b, a) in l.dparam_bufs.iter().zip(dparams) {
            let i = writable_index(&l.forward, b);
            let want = l.forward.buffers[b as usize].len;
            if let Some(slot) = owned.get_mut(i) {
                if slot.is_empty() && a.len() == want && a.is_standard_layout() {
                    *slot = a.into_raw_vec_and_offset().0;
                }
            }
        }
    }

    /// Storage for a gradient run: pooled buffers (any moved-out one re-allocated) or
    /// fresh ones.
    fn take_grad_buffers(&self, key: &CacheKey, m: &crate::loop_ir::Module) -> Vec<Vec<f32>> {
        let pooled = self.programs.pool().and_then(|mut pool| {
            // Prefer an entry without holes.
            let i = pool
                .iter()
                .position(|(k, o)| k == key && o.iter().all(|v| !v.is_empty()))
                .or_else(|| pool.iter().position(|(k, _)| k == key))?;
            Some(pool.swap_remove(i).1)
        });
        let Some(mut owned) = pooled else {
            return fresh_buffers(m);
        };
        // Buffers the caller binds stay empty in the pool.
        let lens = m
            .buffers
            .iter()
            .filter(|b| !b.role.is_read_only())
            .map(|b| if b.role.is_bound() { 0 } else { b.len });
        for (v, len) in owned.iter_mut().zip(lens) {
            if v.len() != len {
                *v = vec![0.0; len];
            }
        }
        owned
    }

    /// [`CompiledModel::gradients`] for one input, named as `lcjit grad` writes them
    /// (see [`crate::Model::named_gradients`]).
    pub fn gradients_keras(
        &self,
        x: &ArrayD<f32>,
        dy: &ArrayD<f32>,
    ) -> Result<Vec<(String, ArrayD<f32>)>> {
        let (dx, dparams) = self.gradients(std::slice::from_ref(x), dy)?;
        self.model.named_gradients(dx, &dparams)
    }

    /// Runs the forward pass with `params`, asks `cotangent` for the gradient of the
    /// first output given the outputs, and runs the backward pass: the engine's training
    /// step. Errors: [`Error::Input`] for inputs or a cotangent of the wrong shape.
    pub fn run_gradients(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        cotangent: &mut CotangentFn,
    ) -> Result<GradRun> {
        self.run_gradients_in(params, inputs, None, cotangent)
    }

    /// [`CompiledModel::run_gradients`] in training mode when `rng` is given: Dropout
    /// masks are drawn from `rng` (as the reference trainer draws them, node by node),
    /// BatchNorm uses batch statistics, and [`GradRun::updates`] holds the new moving
    /// statistics.
    pub fn run_gradients_in(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        rng: Option<&mut Rng>,
        cotangent: &mut CotangentFn,
    ) -> Result<GradRun> {
        self.model.check_inputs(inputs)?;
        self.check_params(params)?;
        let graph = self.model.graph();
        let batch = inputs.first().map(|x| x.shape()[0]).unwrap_or(0);
        let check_dy = |dy: &ArrayD<f32>| check_cotangent(graph, batch, dy);
        let scale = reference::activity::ActivityScale::of(self.model.dialect());
        self.check_f32_weights()?;
        if self.opts.engine.is_reference() {
            if let Some(rng) = rng {
                let pass = reference::train::forward_training(graph, params, inputs, rng)?;
                let outputs: Vec<ArrayD<f32>> = (0..graph.outputs.len())
                    .filter_map(|k| pass.output(k).cloned())
                    .collect();
                let dy = cotangent(&outputs)?;
                check_dy(&dy)?;
                let (activity_loss, extra) = pass.activity_penalties(scale)?;
                let (dinputs, dparams) = pass.gradients_with(&dy, &extra)?;
                return Ok(GradRun {
                    outputs,
                    dinputs,
                    dparams,
                    updates: pass.into_updates(),
                    activity_loss,
                });
            }
            let outputs = reference::forward(graph, params, inputs)?;
            let dy = cotangent(&outputs)?;
            check_dy(&dy)?;
            let (dinputs, dparams) = reference::backward::gradients(graph, params, inputs, &dy)?;
            return Ok(GradRun {
                outputs,
                dinputs,
                dparams,
                updates: Vec::new(),
                activity_loss: 0.0,
            });
        }
        let mode = if rng.is_some() {
            Mode::Training
        } else {
            Mode::Inference
        };
        let prepared = self.prepared_grad_in(batch, mode)?;
        let key = CacheKey::Gradient(batch, mode, None);
        let program = Phases {
            prepared: &prepared,
            key,
            hyper: &[],
        };
        let run = self.run_phases(&program, params, inputs, rng, &mut Vec::new(), &mut |o| {
            cotangent(o).map(Some)
        })?;
        run.ok_or_else(|| Error::internal("gradient run stopped without a reason"))
    }

    /// Runs a prepared gradient program: phase 1, `cotangent` (`None`: stop there, and
    /// return `None`), phase 2. `bound` holds the storage of the writable buffers the
    /// caller binds (`(writable index, data)`, see [`crate::loop_ir::BufRole::is_bound`]):
    /// it is bound for the run and handed back in `bound` whatever the outcome.
    pub(super) fn run_phases(
        &self,
        program: &Phases,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        rng: Option<&mut Rng>,
        bound: &mut [(usize, Vec<f32>)],
        cotangent: &mut StepCotangentFn,
    ) -> Result<Option<GradRun>> {
        let l = &program.prepared.lowered;
        let mut owned = self.take_grad_buffers(&program.key, &l.forward);
        let swap = |owned: &mut [Vec<f32>], bound: &mut [(usize, Vec<f32>)]| -> Result<()> {
            for (i, data) in bound.iter_mut() {
                let slot = owned
                    .get_mut(*i)
                    .ok_or_else(|| Error::internal("bound buffer out of range"))?;
                std::mem::swap(slot, data);
            }
            Ok(())
        };
        let run = swap(&mut owned, bound)
            .and_then(|()| self.phases(program, params, inputs, rng, &mut owned, cotangent));
        // Back to the caller before anything else can fail.
        let back = swap(&mut owned, bound);
        self.programs.give_back(program.key.clone(), owned);
        back?;
        run
    }

    /// Phase 1, the cotangent, phase 2, over `owned` (see [`CompiledModel::run_phases`]).
    fn phases(
        &self,
        program: &Phases,
        params: &[ArrayD<f32>],
        inputs: &[ArrayD<f32>],
        rng: Option<&mut Rng>,
        owned: &mut [Vec<f32>],
        cotangent: &mut StepCotangentFn,
    ) -> Result<Option<GradRun>> {
        let graph = self.model.graph();
        let l = &program.prepared.lowered;
        let batch = l.batch;
        let out_shape = |node: usize| {
            let mut s = vec![batch];
            s.extend_from_slice(&graph.nodes[node].shape);
            s
        };
        let masks = match rng {
            Some(rng) => dropout_masks(graph, batch, &l.dropout_masks, rng, self.opts.threads)?,
            None => Vec::new(),
        };
        let aux: Vec<&[f32]> = masks.iter().map(|m| m.as_slice()).collect();
        let inputs_flat: Vec<std::borrow::Cow<[f32]>> = inputs.iter().map(flat).collect();
        let params_flat: Vec<std::borrow::Cow<[f32]>> = params.iter().map(flat).collect();
        let (phase1, phase2) = &program.prepared.programs;
        let take = |owned: &[Vec<f32>], buf: u32, shape: Vec<usize>| -> Result<ArrayD<f32>> {
            let data = owned
                .get(writable_index(&l.forward, buf))
                .cloned()
                .ok_or_else(|| Error::internal("gradient buffer missing"))?;
            ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::internal(e.to_string()))
        };
        // Phase 1 does not read the cotangents; their buffers are bound to zeros.
        let unused = unused_cotangents(&l.forward);
        let unused_refs: Vec<&[f32]> = unused.iter().map(Vec::as_slice).collect();
        let bind = Bind {
            inputs: &inputs_flat,
            params: &params_flat,
            half: &[],
            cotangents: &unused_refs,
            aux: &aux,
            hyper: program.hyper,
        };
        execute(phase1, &bind, owned, self.opts.threads)?;
        let outputs = l
            .output_bufs
            .iter()
            .zip(&graph.outputs)
            .map(|(&b, &n)| take(owned, b, out_shape(n)))
            .collect::<Result<Vec<_>>>()?;
        let updates = moving_statistics(graph, params, l, owned, batch)?;
        let Some(dy) = cotangent(&outputs)? else {
            return Ok(None);
        };
        check_cotangent(graph, batch, &dy)?;
        let dy_flat = flat(&dy);
        let scale = reference::activity::ActivityScale::of(self.model.dialect());
        let mut activity_loss = 0.0;
        let mut penalties = Vec::with_capacity(l.activity.len());
        for a in &l.activity {
            let y = owned
                .get(writable_index(&l.forward, a.value))
                .ok_or_else(|| Error::internal("activity value buffer missing"))?;
            let reg = graph.nodes[a.node]
                .op
                .activity_regularizer()
                .ok_or_else(|| Error::internal("activity buffers of an unregularized layer"))?;
            let n = batch * graph.nodes[a.node].shape.iter().product::<usize>();
            let (v, g) =
                reference::activity::penalty(reg, y.get(..n).unwrap_or(y), scale.divisor(batch));
            activity_loss += v;
            penalties.push((a.cotangent_index, g));
        }
        let mut cot: Vec<&[f32]> = vec![&*dy_flat];
        for (k, g) in &penalties {
            if *k != cot.len() {
                return Err(Error::internal("activity cotangents out of order"));
            }
            cot.push(g);
        }
        let bind = Bind {
            inputs: &inputs_flat,
            params: &params_flat,
            half: &[],
            cotangents: &cot,
            aux: &aux,
            hyper: program.hyper,
        };
        execute(phase2, &bind, owned, self.opts.threads)?;
        let dinputs = l
            .dinput_bufs
            .iter()
            .zip(inputs)
            .map(|(&b, x)| match b {
                Some(b) => take(owned, b, x.shape().to_vec()),
                // Zeroed by the allocator (calloc: fresh pages are free, reused ones one
                // memset), instead of a zero-filling kernel and a copy out of its buffer.
                None => Ok(ArrayD::zeros(x.raw_dim())),
            })
            .collect::<Result<Vec<_>>>()?;
        // Parameter gradients move out of the buffers without a copy (they are as large
        // as the weights); `recycle_gradients` hands the storage back. A parameter updated
        // in place has no gradient: an empty array stands for it.
        let mut dparams = Vec::with_capacity(l.dparam_bufs.len());
        for ((&b, s), &updated) in l.dparam_bufs.iter().zip(&graph.params).zip(&l.updated) {
            if updated {
                dparams.push(ArrayD::zeros(IxDyn(&[0])));
                continue;
            }
            let data = owned
                .get_mut(writable_index(&l.forward, b))
                .map(std::mem::take)
                .ok_or_else(|| Error::internal("gradient buffer missing"))?;
            dparams.push(
                ArrayD::from_shape_vec(IxDyn(&s.shape), data)
                    .map_err(|e| Error::internal(e.to_string()))?,
            );
        }
        Ok(Some(GradRun {
            outputs,
            dinputs,
            dparams,
            updates,
            activity_loss,
        }))
    }
}

/// A prepared gradient program as one run binds it.
pub(super) struct Phases<'a> {
    /// The program.
    pub prepared: &'a PreparedGrad,
    /// Its cache key (the buffer pool's too).
    pub key: CacheKey,
    /// The hyper buffer of its in-place updates (empty without).
    pub hyper: &'a [f32],
}

/// Refuses a cotangent that is not shaped like the first output at `batch` rows.
fn check_cotangent(graph: &crate::graph::Graph, batch: usize, dy: &ArrayD<f32>) -> Result<()> {
    let mut want = vec![batch];
    if let Some(&out) = graph.outputs.first() {
        want.extend_from_slice(&graph.nodes[out].shape);
    }
    if dy.shape() != want.as_slice() {
        return Err(Error::Input {
            detail: format!(
                "the cotangent has shape {:?}, expected the first output's shape {want:?}",
                dy.shape()
            ),
        });
    }
    Ok(())
}

/// Zeros for every cotangent buffer of `m`, by cotangent index (phase 1 reads none).
fn unused_cotangents(m: &crate::loop_ir::Module) -> Vec<Vec<f32>> {
    let mut out: Vec<Vec<f32>> = Vec::new();
    for b in &m.buffers {
        if let crate::loop_ir::BufRole::Cotangent(i) = b.role {
            if out.len() <= i {
                out.resize(i + 1, Vec::new());
            }
            out[i] = vec![0.0; b.len];
        }
    }
    out
}

/// The dropout masks of a training step, drawn node by node from `rng` exactly as
/// [`reference::train::forward_training`] draws them (on up to `threads` threads: the
/// same values).
fn dropout_masks(
    graph: &crate::graph::Graph,
    batch: usize,
    nodes: &[(crate::graph::NodeId, u32)],
    rng: &mut Rng,
    threads: usize,
) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(nodes.len());
    for &(id, _) in nodes {
        let node = &graph.nodes[id];
        let crate::graph::Op::Dropout {
            rate,
            spatial,
            data_format,
        } = &node.op
        else {
            return Err(Error::internal("dropout mask of a non-Dropout node"));
        };
        let mut shape = vec![batch];
        shape.extend_from_slice(&node.shape);
        let mask = reference::dropout::dropout_mask_threads(
            *rate,
            *spatial,
            *data_format,
            &shape,
            rng,
            threads,
        )?
        .ok_or_else(|| Error::internal("dropout mask of a rate-0 Dropout"))?;
        out.push(mask);
    }
    Ok(out)
}

/// New moving statistics of every training-mode BatchNorm, from the batch statistics
/// phase 1 left in the program's buffers (the update rule, fused or not, is the
/// reference's).
fn moving_statistics(
    graph: &crate::graph::Graph,
    params: &[ArrayD<f32>],
    l: &LoweredGrad,
    owned: &[Vec<f32>],
    batch: usize,
) -> Result<Vec<(crate::graph::ParamId, ArrayD<f32>)>> {
    use reference::norm::{moving_averages, uses_fused_kernel, Moments};
    let mut updates = Vec::new();
    for &(id, mean, var) in &l.batch_stats {
        let node = &graph.nodes[id];
        let crate::graph::Op::BatchNorm(bn) = &node.op else {
            return Err(Error::internal("batch statistics of a non-BatchNorm node"));
        };
        let read = |b: u32| {
            owned
                .get(writable_index(&l.forward, b))
                .cloned()
                .ok_or_else(|| Error::internal("batch statistics buffer missing"))
        };
        let c = node.shape.get(bn.axis).copied().unwrap_or(1).max(1);
        let count = batch * node.shape.iter().product::<usize>() / c;
        let m = Moments {
            mean: read(mean)?,
            var: read(var)?,
            count,
        };
        let pid = |name: &str| {
            node.params
                .iter()
                .copied()
                .find(|&p| graph.params[p].name == name)
                .ok_or_else(|| Error::internal(format!("batch norm without {name}")))
        };
        let (mm, mv) = (pid("moving_mean")?, pid("moving_variance")?);
        let fused = uses_fused_kernel(bn, node.shape.len() + 1);
        let (new_mean, new_var) = moving_averages(bn, fused, &params[mm], &params[mv], &m)?;
        updates.push((mm, new_mean));
        updates.push((mv, new_var));
    }
    Ok(updates)
}
