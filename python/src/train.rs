//! Training from Python: `compile`, `fit`, `evaluate` and the pieces of a custom loop
//! (`compute_gradients`, `apply_gradients`, `train_step`), all on lcjit's trainer.
//!
//! Invariants: the optimizer (its slots and step count) lives in [`Training`] and
//! persists across `fit` calls and custom steps, as a Keras optimizer does, until the next
//! `compile`; `fit` trains a copy of the model with the interpreter detached and stores
//! the result back (also when interrupted: the weights of the last finished step);
//! gradients cross the boundary in Keras layout, keyed `<layer>/<weight>`.

use crate::callbacks::{self, Context, Raised};
use crate::model::{lock, NativeModel};
use crate::{f32_owned, to_numpy, to_py, IntoPy};
use lcjit::graph::layout::{canonical_to_keras_merged, keras_to_canonical_split};
use lcjit::train::{
    Callback, FitOptions, Loss, Metric, Optimizer, OptimizerConfig, ProgressSink, Trainer,
    TrainingSetup,
};
use lcjit::Model;
use ndarray::{ArrayD, IxDyn};
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// Optimizer, loss and metrics of a compiled model, and the custom-loop trainer.
pub(crate) struct Training {
    config: OptimizerConfig,
    loss: Loss,
    metrics: Vec<Metric>,
    /// The optimizer when no trainer holds it.
    optimizer: Option<Optimizer>,
    /// The custom-loop trainer (holds the optimizer while it exists).
    trainer: Option<Trainer>,
}

impl Training {
    fn new(setup: TrainingSetup) -> Self {
        Training {
            optimizer: Some(Optimizer::new(setup.optimizer.clone())),
            config: setup.optimizer,
            loss: setup.loss,
            metrics: setup.metrics,
            trainer: None,
        }
    }

    /// The optimizer, taken back from the trainer if it holds it.
    fn take_optimizer(&mut self) -> Optimizer {
        if let Some(t) = self.trainer.take() {
            return t.optimizer;
        }
        self.optimizer
            .take()
            .unwrap_or_else(|| Optimizer::new(self.config.clone()))
    }
}

fn usage(detail: impl Into<String>) -> PyErr {
    to_py(lcjit::Error::Usage {
        detail: detail.into(),
    })
}

/// A random seed for `seed=None` (Keras shuffles differently on every unseeded run).
fn fresh_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

impl NativeModel {
    /// Takes the training state out (compiled, or parsed from the file's
    /// `training_config`), with the model it trains.
    fn take_training(&self) -> PyResult<(Arc<Model>, Training)> {
        let mut st = lock(&self.state)?;
        let model = st.model.clone();
        if let Some(t) = st.training.take() {
            return Ok((model, t));
        }
        let Some(tc) = model.training_config() else {
            return Err(usage(
                "the model is not compiled: call model.compile(optimizer=..., loss=...) \
                 (its file has no training configuration)",
            ));
        };
        let setup = lcjit::train::parse_training_config(tc, "training_config").py()?;
        Ok((model, Training::new(setup)))
    }

    fn put_training(&self, t: Training) -> PyResult<()> {
        lock(&self.state)?.training = Some(t);
        Ok(())
    }

    /// Runs `f` on the trainer of a custom loop (created on first use).
    fn with_trainer<R: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&Model, &mut Trainer) -> lcjit::Result<R> + Send,
    ) -> PyResult<R> {
        let (model, mut training) = self.take_training()?;
        let compile = self.compile_options(32);
        let result = py.detach(|| -> lcjit::Result<R> {
            if training.trainer.is_none() {
                let opt = training.take_optimizer();
                training.trainer = Some(Trainer::new(&model, opt, &training.loss, &compile, 0)?);
            }
            match training.trainer.as_mut() {
                Some(t) => f(&model, t),
                None => Err(lcjit::Error::internal("trainer missing")),
            }
        });
        self.put_training(training)?;
        result.py()
    }
}

/// Gradients of the extended parameter list, named and in Keras layout.
fn named(
    model: &Model,
    trainer: &Trainer,
    grads: &[ArrayD<f32>],
) -> lcjit::Result<Vec<(String, ArrayD<f32>)>> {
    let g = model.graph();
    let ext = trainer.extended();
    let n = ext.graph_len();
    let mut out = Vec::new();
    for (pid, spec) in g.params.iter().enumerate() {
        if !spec.trainable {
            continue;
        }
        let off = ext
            .owners()
            .iter()
            .position(|&o| o == pid)
            .and_then(|k| grads.get(n + k))
            .and_then(|a| a.as_slice());
        let keras =
            canonical_to_keras_merged(g, pid, &grads[pid], off).map_err(lcjit::Error::internal)?;
        out.push((format!("{}/{}", g.nodes[spec.node].name, spec.name), keras));
    }
    Ok(out)
}

/// The extended gradient list from named Keras-layout gradients.
fn unnamed(
    model: &Model,
    trainer: &Trainer,
    mut named: HashMap<String, ArrayD<f32>>,
) -> lcjit::Result<Vec<ArrayD<f32>>> {
    let g = model.graph();
    let ext = trainer.extended();
    let mut grads: Vec<ArrayD<f32>> = g
        .params
        .iter()
        .map(|s| ArrayD::zeros(IxDyn(&s.shape)))
        .collect();
    let mut extras: Vec<ArrayD<f32>> = Vec::new();
    for &owner in ext.owners() {
        let len = model.off_mask(owner).map_or(0, <[f32]>::len);
        extras.push(ArrayD::zeros(IxDyn(&[len])));
    }
    for (pid, spec) in g.params.iter().enumerate() {
        if !spec.trainable {
            continue;
        }
        let key = format!("{}/{}", g.nodes[spec.node].name, spec.name);
        let Some(keras) = named.remove(&key) else {
            return Err(lcjit::Error::Usage {
                detail: format!("apply_gradients: no gradient for '{key}'"),
            });
        };
        let (canon, off) =
            keras_to_canonical_split(g, pid, keras).map_err(|e| lcjit::Error::Weights {
                source_name: "apply_gradients".into(),
                layer: g.nodes[spec.node].name.clone(),
                weight: spec.name.clone(),
                detail: e,
            })?;
        grads[pid] = canon;
        if let (Some(k), Some(off)) = (ext.owners().iter().position(|&o| o == pid), off) {
            extras[k] = ArrayD::from_shape_vec(IxDyn(&[off.len()]), off)
                .map_err(|e| lcjit::Error::internal(e.to_string()))?;
        }
    }
    if let Some(extra) = named.keys().next() {
        return Err(lcjit::Error::Usage {
            detail: format!("apply_gradients: '{extra}' is not a trainable weight of the model"),
        });
    }
    grads.extend(extras);
    Ok(grads)
}

/// Progress text to a Python callable (`sys.stdout.write`, so a notebook shows it).
fn sink(write: Py<PyAny>, dynamic: bool) -> ProgressSink {
    ProgressSink {
        write: Arc::new(move |text: &str| {
            Python::attach(|py| {
                // A failing stream must not stop training: the text is dropped.
                let _ = write.bind(py).call1((text,));
            })
        }),
        dynamic,
    }
}

type NamedArrays<'py> = Vec<(String, Bound<'py, PyArrayDyn<f32>>)>;

#[pymethods]
impl NativeModel {
    /// Sets optimizer, loss and metrics from their Keras JSON forms (names or serialized
    /// dicts); the optimizer starts fresh, as after Keras's `compile`.
    #[pyo3(signature = (optimizer, loss, metrics = None))]
    fn compile_json(&self, optimizer: &str, loss: &str, metrics: Option<&str>) -> PyResult<()> {
        let parse = |what: &str, text: &str| -> PyResult<serde_json::Value> {
            serde_json::from_str(text).map_err(|e| usage(format!("compile: {what}: {e}")))
        };
        let mut tc = serde_json::json!({
            "optimizer_config": parse("optimizer", optimizer)?,
            "loss": parse("loss", loss)?,
        });
        if let Some(m) = metrics {
            tc["metrics"] = parse("metrics", m)?;
        }
        let setup = lcjit::train::parse_training_config(&tc, "compile").py()?;
        let mut st = lock(&self.state)?;
        st.training = Some(Training::new(setup));
        st.model_mut().set_training_config(Some(tc));
        Ok(())
    }

    /// Names of the compiled metrics (Keras's log keys), empty when not compiled.
    fn metric_names(&self) -> PyResult<Vec<String>> {
        let st = lock(&self.state)?;
        Ok(st
            .training
            .as_ref()
            .map(|t| t.metrics.iter().map(|m| m.name().to_string()).collect())
            .unwrap_or_default())
    }

    /// Keras's `fit`; returns `(history items, epochs, warnings, stop reason)`.
    #[pyo3(signature = (model, x, y, batch_size, epochs, verbose, callbacks, validation_split, validation_data, shuffle, seed, progress = None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn fit_native(
        &self,
        py: Python<'_>,
        model: Bound<'_, PyAny>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        batch_size: usize,
        epochs: usize,
        verbose: u8,
        callbacks: Vec<Bound<'_, PyAny>>,
        validation_split: f32,
        validation_data: Option<(Bound<'_, PyAny>, Bound<'_, PyAny>)>,
        shuffle: bool,
        seed: Option<u64>,
        progress: Option<(Py<PyAny>, bool)>,
    ) -> PyResult<(
        Vec<(String, Vec<f64>)>,
        Vec<usize>,
        Vec<String>,
        Option<String>,
    )> {
        if batch_size == 0 {
            return Err(usage("batch_size must be at least 1"));
        }
        let xs = f32_owned(x, "x")?;
        let ys = f32_owned(y, "y")?;
        let val = match &validation_data {
            Some((vx, vy)) => Some((
                f32_owned(vx, "validation x")?,
                f32_owned(vy, "validation y")?,
            )),
            None => None,
        };
        let (shared, mut training) = self.take_training()?;
        let mut trained = (*shared).clone();
        drop(shared);
        let ctx = Context {
            model: Arc::new(model.unbind()),
            state: self.state.clone(),
            raised: Arc::new(Raised::default()),
            graph_len: trained.graph().params.len(),
        };
        let n = xs.shape().first().copied().unwrap_or(0);
        let steps = n.div_ceil(batch_size);
        let mut cbs = match callbacks::build(py, &callbacks, &ctx, (epochs, steps, verbose > 0)) {
            Ok(c) => c,
            Err(e) => {
                self.put_training(training)?;
                return Err(e);
            }
        };
        let seed = seed.unwrap_or_else(fresh_seed);
        let opts = FitOptions {
            epochs,
            batch_size,
            shuffle: shuffle.then_some(seed),
            validation_split,
            metrics: training.metrics.clone(),
            verbose: verbose > 0,
            progress: progress.map(|(write, dynamic)| sink(write, dynamic)),
            seed,
            update: None,
            stop_on_non_finite: false,
            resume: Default::default(),
        };
        let compile = self.compile_options(batch_size);
        let mut optimizer = training.take_optimizer();
        let loss = training.loss.clone();
        let result = py.detach(|| {
            let mut refs: Vec<&mut dyn Callback> = cbs
                .iter_mut()
                .map(|b| b.as_mut() as &mut dyn Callback)
                .collect();
            let val = val.as_ref().map(|(a, b)| (a, b));
            lcjit::train::fit_compiled(
                &mut trained,
                &mut optimizer,
                &loss,
                &xs,
                &ys,
                val,
                &opts,
                &compile,
                &mut refs,
            )
        });
        training.optimizer = Some(optimizer);
        {
            let mut st = lock(&self.state)?;
            st.training = Some(training);
            if matches!(result, Ok(_) | Err(lcjit::Error::Interrupted { .. })) {
                st.replace(trained);
            }
        }
        let history = match result {
            Ok(h) => h,
            Err(e) => return Err(ctx.raised.take().unwrap_or_else(|| to_py(e))),
        };
        let items = history
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect();
        Ok((
            items,
            history.epochs().to_vec(),
            history.warnings.clone(),
            history.stopped.clone(),
        ))
    }

    /// Keras's `evaluate`: `(name, value)` for the loss and each compiled metric.
    #[pyo3(signature = (x, y, batch_size = 32))]
    fn evaluate_native(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        y: &Bound<'_, PyAny>,
        batch_size: usize,
    ) -> PyResult<Vec<(String, f64)>> {
        if batch_size == 0 {
            return Err(usage("batch_size must be at least 1"));
        }
        let xs = f32_owned(x, "x")?;
        let ys = f32_owned(y, "y")?;
        let (model, training) = self.take_training()?;
        let (loss, metrics) = (training.loss.clone(), training.metrics.clone());
        self.put_training(training)?;
        let opts = lcjit::train::EvaluateOptions {
            batch_size,
            engine: self.engine,
            threads: self.threads,
        };
        let logs = py
            .detach(|| lcjit::train::evaluate(&model, &loss, &metrics, &xs, &ys, &opts))
            .py()?;
        Ok(logs.0)
    }

    /// Loss of the batch and the gradient of every trainable weight (Keras layout), as
    /// one step of `fit` computes them.
    fn compute_gradients<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        y: &Bound<'py, PyAny>,
    ) -> PyResult<(f64, NamedArrays<'py>)> {
        let xs = f32_owned(x, "x")?;
        let ys = f32_owned(y, "y")?;
        let (loss, grads) = self.with_trainer(py, |model, t| {
            let params = t.extended().params(model)?;
            let (loss, grads) = t.compute_gradients(&params, &xs, &ys)?;
            Ok((loss, named(model, t, &grads)?))
        })?;
        Ok((
            loss,
            grads
                .into_iter()
                .map(|(k, a)| (k, to_numpy(py, a)))
                .collect(),
        ))
    }

    /// The optimizer step with named Keras-layout gradients (what `compute_gradients`
    /// returns, or their average over workers), then constraints and BatchNorm
    /// statistics of the last `compute_gradients`.
    fn apply_gradients(
        &self,
        py: Python<'_>,
        grads: Vec<(String, Bound<'_, PyAny>)>,
    ) -> PyResult<()> {
        let mut map = HashMap::new();
        for (k, v) in &grads {
            let a = f32_owned(v, &format!("gradient '{k}'"))?;
            if map.insert(k.clone(), a).is_some() {
                return Err(usage(format!("apply_gradients: '{k}' given twice")));
            }
        }
        let model = self.with_trainer(py, |model, t| {
            let grads = unnamed(model, t, map)?;
            let mut params = t.extended().params(model)?;
            t.apply_gradients(&mut params, &grads)?;
            let mut m = model.clone();
            t.extended().store(&mut m, params)?;
            Ok(m)
        })?;
        lock(&self.state)?.replace(model);
        Ok(())
    }
}
