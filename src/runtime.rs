//! Compiled models: a [`Model`] prepared for one engine, thread count and maximum batch.
//!
//! Programs are specialised to their batch size; a [`CompiledModel`] lowers (and for the
//! JIT, compiles) once per batch size it sees, caches the result, and splits batches
//! larger than `max_batch` into chunks. It is `Send + Sync`: the cache is behind a mutex
//! and every call gets its own activation buffers, so many threads may predict at once.

use crate::error::{Error, Result};
use crate::loop_ir::{interp, BufRole};
use crate::lower::{lower_forward, Lowered};
use crate::model::Model;
use ndarray::{ArrayD, Axis, IxDyn};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Which engine runs a model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Engine {
    /// The naive per-layer reference path (the oracle).
    Reference,
    /// The loop-IR interpreter (checked, no unsafe).
    Interp,
}

impl Engine {
    /// Parses `reference` / `interp`.
    pub fn parse(s: &str) -> Result<Engine> {
        match s {
            "reference" => Ok(Engine::Reference),
            "interp" => Ok(Engine::Interp),
            other => Err(Error::Usage {
                detail: format!("unknown engine '{other}' (expected reference or interp)"),
            }),
        }
    }
}

/// How to compile a model.
#[derive(Clone, Debug)]
pub struct CompileOptions {
    /// Engine.
    pub engine: Engine,
    /// Worker threads (≥ 1).
    pub threads: usize,
    /// Largest batch run in one go; larger batches are split.
    pub max_batch: usize,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            engine: Engine::Interp,
            threads: 1,
            max_batch: 32,
        }
    }
}

/// A model prepared for one engine.
pub struct CompiledModel {
    model: Arc<Model>,
    opts: CompileOptions,
    cache: Mutex<HashMap<usize, Arc<Lowered>>>,
}

impl CompiledModel {
    /// Prepares `model`; lowering happens here for `max_batch` so that errors (a layer the
    /// engine cannot run) surface at once.
    pub fn new(model: Arc<Model>, opts: CompileOptions) -> Result<CompiledModel> {
        if opts.threads == 0 || opts.max_batch == 0 {
            return Err(Error::Usage {
                detail: "threads and max_batch must be at least 1".into(),
            });
        }
        let cm = CompiledModel {
            model,
            opts,
            cache: Mutex::new(HashMap::new()),
        };
        if cm.opts.engine != Engine::Reference {
            cm.lowered(cm.opts.max_batch)?;
        }
        Ok(cm)
    }

    /// The lowered program for `batch` rows (cached).
    pub fn lowered(&self, batch: usize) -> Result<Arc<Lowered>> {
        let mut cache = self
            .cache
            .lock()
            .map_err(|_| Error::internal("compiled-model cache poisoned"))?;
        if let Some(l) = cache.get(&batch) {
            return Ok(l.clone());
        }
        let l = Arc::new(lower_forward(self.model.graph(), batch)?);
        cache.insert(batch, l.clone());
        Ok(l)
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Runs the model on a batch and returns its first output.
    pub fn predict(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut outs = self.predict_many(std::slice::from_ref(x))?;
        if outs.is_empty() {
            return Err(Error::internal("model produced no output"));
        }
        Ok(outs.swap_remove(0))
    }

    /// Runs the model on one batch per input and returns every output.
    pub fn predict_many(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.model.check_inputs(inputs)?;
        if self.opts.engine == Engine::Reference {
            return self.model.predict_many(inputs);
        }
        let batch = inputs.first().map(|x| x.shape()[0]).unwrap_or(0);
        let mut chunks: Vec<Vec<ArrayD<f32>>> = Vec::new();
        let mut start = 0;
        while start < batch {
            let n = (batch - start).min(self.opts.max_batch);
            let part: Vec<ArrayD<f32>> = inputs
                .iter()
                .map(|x| x.slice_axis(Axis(0), (start..start + n).into()).to_owned())
                .collect();
            chunks.push(self.run_chunk(&part, n)?);
            start += n;
        }
        let n_out = self.model.graph().outputs.len();
        (0..n_out)
            .map(|o| {
                let views: Vec<_> = chunks.iter().map(|c| c[o].view()).collect();
                ndarray::concatenate(Axis(0), &views).map_err(|e| Error::internal(e.to_string()))
            })
            .collect()
    }

    fn run_chunk(&self, inputs: &[ArrayD<f32>], batch: usize) -> Result<Vec<ArrayD<f32>>> {
        let lowered = self.lowered(batch)?;
        let m = &lowered.module;
        let params = self.model.params();
        let mut bufs: Vec<Vec<f32>> = Vec::with_capacity(m.buffers.len());
        for b in &m.buffers {
            bufs.push(match &b.role {
                BufRole::Input(i) => {
                    let x = inputs
                        .get(*i)
                        .ok_or_else(|| Error::internal("missing input buffer"))?;
                    x.as_standard_layout().iter().copied().collect()
                }
                BufRole::Param(i) => {
                    let p = params
                        .get(*i)
                        .ok_or_else(|| Error::internal("missing param"))?;
                    p.as_standard_layout().iter().copied().collect()
                }
                BufRole::Const(v) => v.clone(),
                BufRole::Output(_) | BufRole::Scratch => vec![0.0; b.len],
            });
        }
        interp::run(m, &mut bufs)?;
        let graph = self.model.graph();
        lowered
            .output_bufs
            .iter()
            .zip(&graph.outputs)
            .map(|(&b, &node)| {
                let mut shape = vec![batch];
                shape.extend_from_slice(&graph.nodes[node].shape);
                let data = std::mem::take(&mut bufs[b as usize]);
                ArrayD::from_shape_vec(IxDyn(&shape), data)
                    .map_err(|e| Error::internal(e.to_string()))
            })
            .collect()
    }
}
