//! [`NativeModel`]: a loaded model, its compiled prediction programs and its training
//! state, shared by the Python object and the callbacks of a running `fit`.
//!
//! Invariants: the weights live in one `Arc<Model>` inside [`State`]; a change of weights
//! from Python replaces them (copy on write, so a prediction running on another thread
//! keeps the weights it started with) and drops the compiled programs, which hold the
//! `Arc` they were compiled with; programs are compiled once per batch size and engine and
//! reused by every later call. The mutex is held only to read or swap these handles,
//! never while native code runs, so two threads predict in parallel.

use crate::{f32_array, to_numpy, to_py, IntoPy};
use lcjit::io::{KerasWeights, LayerWeights};
use lcjit::{CompileOptions, CompiledModel, Engine, LoadOptions, Model};
use ndarray::ArrayD;
use numpy::PyArrayDyn;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// What a model object holds; see the module docs.
pub(crate) struct State {
    /// The model and its current weights.
    pub model: Arc<Model>,
    /// Prediction programs by batch size.
    pub compiled: HashMap<usize, Arc<CompiledModel>>,
    /// Optimizer, loss and metrics once compiled (or taken from the file).
    pub training: Option<crate::train::Training>,
    /// Bumped by every change of weights made from Python (a callback's `set_weights`
    /// during `fit` is found this way).
    pub version: u64,
}

impl State {
    /// Replaces the model (new weights): programs compiled for the old one are dropped.
    pub fn replace(&mut self, model: Model) {
        self.compiled.clear();
        self.model = Arc::new(model);
        self.version += 1;
    }

    /// The model to change in place: programs are dropped first so that the `Arc` is
    /// unique and nothing is copied (unless a prediction is running meanwhile).
    pub fn model_mut(&mut self) -> &mut Model {
        self.compiled.clear();
        self.version += 1;
        Arc::make_mut(&mut self.model)
    }
}

/// The base class of `lcjit.Model`: a Keras model loaded by lcjit.
#[pyclass(subclass, module = "lcjit._native")]
pub struct NativeModel {
    pub(crate) state: Arc<Mutex<State>>,
    pub(crate) engine: Engine,
    pub(crate) threads: usize,
    pub(crate) budget: u64,
    /// How LC and Dense kernels are stored for prediction (`weights_dtype=`).
    pub(crate) weights_dtype: lcjit::loop_ir::Dtype,
    /// The SIMD tier past f32x4 of the compiled programs (`wide=`).
    pub(crate) wide: lcjit::WideTier,
    /// Autotuning of the JIT's forward schedules (`autotune=`, `tune_cache=`).
    pub(crate) autotune: Option<lcjit::runtime::tune::Autotune>,
}

/// Locks a state (a poisoned lock means a panic elsewhere: an internal error).
pub(crate) fn lock(state: &Mutex<State>) -> PyResult<MutexGuard<'_, State>> {
    state
        .lock()
        .map_err(|_| to_py(lcjit::Error::internal("model state lock poisoned")))
}

/// `x` as one array per model input: a sequence of arrays for a model with several
/// inputs, else the array itself.
fn inputs<'py>(
    x: &Bound<'py, PyAny>,
    count: usize,
) -> PyResult<Vec<numpy::PyReadonlyArrayDyn<'py, f32>>> {
    let seq = x
        .cast::<PyList>()
        .map(|l| l.as_sequence().clone())
        .ok()
        .or_else(|| x.cast::<PyTuple>().map(|t| t.as_sequence().clone()).ok());
    match seq {
        Some(s) if count > 1 => (0..s.len()?)
            .map(|i| f32_array(&s.get_item(i)?, &format!("x[{i}]")))
            .collect(),
        _ if count > 1 => Err(to_py(lcjit::Error::Input {
            detail: format!("the model has {count} inputs: pass a list of {count} arrays"),
        })),
        _ => Ok(vec![f32_array(x, "x")?]),
    }
}

impl NativeModel {
    /// The current model (a shared handle: cheap).
    pub(crate) fn snapshot(&self) -> PyResult<Arc<Model>> {
        Ok(lock(&self.state)?.model.clone())
    }

    /// Worker threads of this model's programs.
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Compile options for `batch` rows.
    pub(crate) fn compile_options(&self, batch: usize) -> CompileOptions {
        CompileOptions {
            engine: self.engine,
            threads: self.threads,
            max_batch: batch,
            weights_dtype: self.weights_dtype,
            wide: self.wide,
            autotune: self.autotune.clone(),
        }
    }

    /// The prediction program for `batch` rows (compiled once, with the interpreter
    /// detached).
    fn compiled(&self, py: Python<'_>, batch: usize) -> PyResult<Arc<CompiledModel>> {
        let model = {
            let st = lock(&self.state)?;
            if let Some(c) = st.compiled.get(&batch) {
                return Ok(c.clone());
            }
            st.model.clone()
        };
        let opts = self.compile_options(batch);
        let compiled = Arc::new(py.detach(|| CompiledModel::new(model.clone(), opts)).py()?);
        let mut st = lock(&self.state)?;
        // Keep it only if the weights did not change meanwhile.
        if Arc::ptr_eq(&st.model, &model) {
            st.compiled.insert(batch, compiled.clone());
        }
        Ok(compiled)
    }

    /// Weights grouped by layer, from one flat list in Keras's `get_weights` order.
    fn group(model: &Model, weights: Vec<ArrayD<f32>>) -> PyResult<KerasWeights> {
        let g = model.graph();
        let expected: usize = g.nodes.iter().map(|n| n.params.len()).sum();
        if weights.len() != expected {
            return Err(to_py(lcjit::Error::Usage {
                detail: format!(
                    "set_weights: {} arrays given, the model has {expected} weights",
                    weights.len()
                ),
            }));
        }
        let mut it = weights.into_iter();
        let layers = g
            .nodes
            .iter()
            .map(|n| LayerWeights {
                layer: n.name.clone(),
                weights: n
                    .params
                    .iter()
                    .zip(it.by_ref())
                    .map(|(&p, w)| (g.params[p].name.clone(), w))
                    .collect(),
            })
            .collect();
        Ok(KerasWeights { layers })
    }
}

#[pymethods]
impl NativeModel {
    /// Loads a model: `kind="path"` reads a `.h5`, `.keras` or `.json` file (any Keras
    /// dialect), `kind="json"` parses `source` as a model configuration.
    #[new]
    #[pyo3(signature = (source, *, kind = "path", weights = None, engine = "jit", threads = None, memory_budget = None, seed = 0, weights_dtype = "f32", wide = "auto", autotune = None, tune_cache = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        source: String,
        kind: &str,
        weights: Option<std::path::PathBuf>,
        engine: &str,
        threads: Option<usize>,
        memory_budget: Option<u64>,
        seed: u64,
        weights_dtype: &str,
        wide: &str,
        autotune: Option<&Bound<'_, PyAny>>,
        tune_cache: Option<String>,
    ) -> PyResult<Self> {
        // `True` is the command line's default budget (3 s), `False` off.
        let seconds = match autotune.map(|a| (a, a.cast::<pyo3::types::PyBool>())) {
            None => 0.0,
            Some((_, Ok(b))) if b.is_true() => 3.0,
            Some((_, Ok(_))) => 0.0,
            Some((a, Err(_))) => a.extract::<f64>()?,
        };
        let autotune = tune_options(seconds, tune_cache)?;
        let engine = crate::engine(engine)?;
        let weights_dtype = crate::weights_dtype(weights_dtype)?;
        let wide = lcjit::WideTier::parse(wide).py()?;
        // A tier this CPU lacks is refused here, not at the first prediction.
        wide.resolve().py()?;
        let threads = threads.unwrap_or_else(|| CompileOptions::default().threads);
        if threads == 0 {
            return Err(to_py(lcjit::Error::Usage {
                detail: "threads must be at least 1".into(),
            }));
        }
        let opts = LoadOptions {
            memory_budget: memory_budget.unwrap_or(LoadOptions::default().memory_budget),
            seed,
        };
        let budget = opts.memory_budget;
        let json = match kind {
            "path" => false,
            "json" => true,
            other => {
                return Err(to_py(lcjit::Error::Usage {
                    detail: format!("kind must be 'path' or 'json', not '{other}'"),
                }))
            }
        };
        let model = py
            .detach(move || -> lcjit::Result<Model> {
                let mut m = if json {
                    Model::from_json_str(&source, "<json>", &opts)?
                } else {
                    Model::load_with(&source, &opts)?
                };
                if let Some(w) = weights {
                    m.load_weights(w)?;
                }
                Ok(m)
            })
            .py()?;
        Ok(NativeModel {
            state: Arc::new(Mutex::new(State {
                model: Arc::new(model),
                compiled: HashMap::new(),
                training: None,
                version: 0,
            })),
            engine,
            threads,
            budget,
            weights_dtype,
            wide,
            autotune,
        })
    }

    /// The SIMD tier past f32x4 the compiled programs may use: `auto`, `off`, `avx2` or
    /// `avx512` (as given; `auto` takes the widest this CPU has).
    #[getter]
    fn wide(&self) -> &'static str {
        self.wide.name()
    }

    /// The autotuning budget in seconds (0: off).
    #[getter]
    fn autotune(&self) -> f64 {
        self.autotune
            .as_ref()
            .map_or(0.0, |a| a.budget.as_secs_f64())
    }

    /// The autotuning cache file (`None`: none, or autotuning off).
    #[getter]
    fn tune_cache(&self) -> Option<String> {
        self.autotune
            .as_ref()
            .and_then(|a| a.cache.as_ref())
            .map(|p| p.display().to_string())
    }

    /// How LC and Dense kernels are stored for prediction: `f32`, `bf16` or `f16`.
    #[getter]
    fn weights_dtype(&self) -> &'static str {
        self.weights_dtype.name()
    }

    /// The engine name (`jit`, `interp` or `reference`).
    #[getter]
    fn engine(&self) -> &'static str {
        self.engine.name()
    }

    /// Worker threads.
    #[getter(threads)]
    fn threads_py(&self) -> usize {
        self.threads
    }

    /// The memory budget in bytes.
    #[getter]
    fn memory_budget(&self) -> u64 {
        self.budget
    }

    /// The model's name.
    #[getter]
    fn name(&self) -> PyResult<String> {
        Ok(self.snapshot()?.graph().name.clone())
    }

    /// Per-sample shapes of the inputs.
    #[getter]
    fn input_shapes(&self) -> PyResult<Vec<Vec<usize>>> {
        let m = self.snapshot()?;
        let g = m.graph();
        Ok(g.inputs.iter().map(|&i| g.nodes[i].shape.clone()).collect())
    }

    /// Per-sample shapes of the outputs.
    #[getter]
    fn output_shapes(&self) -> PyResult<Vec<Vec<usize>>> {
        let m = self.snapshot()?;
        let g = m.graph();
        Ok(g.outputs
            .iter()
            .map(|&i| g.nodes[i].shape.clone())
            .collect())
    }

    /// The Keras summary table.
    fn summary_text(&self) -> PyResult<String> {
        Ok(self.snapshot()?.summary())
    }

    /// The model configuration in the tf-keras dialect (`model.to_json()`).
    fn to_json(&self) -> PyResult<String> {
        Ok(lcjit::frontend::serialize::to_keras_json(self.snapshot()?.graph()).to_string())
    }

    /// The training configuration as JSON text, if any.
    fn training_config_json(&self) -> PyResult<Option<String>> {
        Ok(self.snapshot()?.training_config().map(|v| v.to_string()))
    }

    /// Per layer: `(name, class, output shape, trainable, weight names, parameter count)`.
    #[allow(clippy::type_complexity)]
    fn layer_info(&self) -> PyResult<Vec<(String, String, Vec<usize>, bool, Vec<String>, usize)>> {
        let m = self.snapshot()?;
        let g = m.graph();
        Ok(g.nodes
            .iter()
            .map(|n| {
                let trainable =
                    n.params.is_empty() || n.params.iter().any(|&p| g.params[p].trainable);
                let names = n.params.iter().map(|&p| g.params[p].name.clone()).collect();
                let count = n
                    .params
                    .iter()
                    .map(|&p| g.params[p].keras_shape.iter().product::<usize>())
                    .sum();
                (
                    n.name.clone(),
                    n.op.kind_name(),
                    n.shape.clone(),
                    trainable,
                    names,
                    count,
                )
            })
            .collect())
    }

    /// Every weight in Keras layout, in `model.get_weights()` order (per layer, in the
    /// layer's weight order); `layer` restricts to one layer.
    #[pyo3(signature = (layer = None))]
    fn get_weights<'py>(
        &self,
        py: Python<'py>,
        layer: Option<&str>,
    ) -> PyResult<Vec<Bound<'py, PyArrayDyn<f32>>>> {
        let m = self.snapshot()?;
        let kw = py.detach(|| m.keras_weights()).py()?;
        if let Some(name) = layer {
            if kw.layer(name).is_none() {
                return Err(unknown_layer(&m, name));
            }
        }
        Ok(kw
            .layers
            .into_iter()
            .filter(|l| layer.is_none_or(|n| n == l.layer))
            .flat_map(|l| l.weights.into_iter().map(|(_, w)| w))
            .map(|w| to_numpy(py, w))
            .collect())
    }

    /// Replaces every weight (Keras layout, `get_weights` order), or one layer's.
    #[pyo3(signature = (weights, layer = None))]
    fn set_weights(
        &self,
        py: Python<'_>,
        weights: Vec<Bound<'_, PyAny>>,
        layer: Option<&str>,
    ) -> PyResult<()> {
        let arrays = weights
            .iter()
            .enumerate()
            .map(|(i, w)| crate::f32_owned(w, &format!("weights[{i}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let current = self.snapshot()?;
        let arrays = match layer {
            None => arrays,
            Some(name) => {
                // Splice this layer's arrays into the full list.
                let kw = current.keras_weights().py()?;
                let Some(found) = kw.layer(name) else {
                    return Err(unknown_layer(&current, name));
                };
                if found.weights.len() != arrays.len() {
                    return Err(to_py(lcjit::Error::Usage {
                        detail: format!(
                            "layer '{name}': set_weights: {} arrays given, the layer has {}",
                            arrays.len(),
                            found.weights.len()
                        ),
                    }));
                }
                let mut new = arrays.into_iter();
                kw.layers
                    .into_iter()
                    .flat_map(|l| {
                        let mine = l.layer == name;
                        l.weights
                            .into_iter()
                            .map(|(_, w)| w)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .map(move |w| (mine, w))
                    })
                    .map(|(mine, w)| if mine { new.next().unwrap_or(w) } else { w })
                    .collect()
            }
        };
        let grouped = Self::group(&current, arrays)?;
        let mut model = (*current).clone();
        py.detach(|| model.set_keras_weights(&grouped, "set_weights"))
            .py()?;
        lock(&self.state)?.replace(model);
        Ok(())
    }

    /// Replaces every weight from a `.h5` or `.npz` file.
    fn load_weights(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let mut model = (*self.snapshot()?).clone();
        py.detach(|| model.load_weights(path)).py()?;
        lock(&self.state)?.replace(model);
        Ok(())
    }

    /// Predictions for every sample of `x`, `batch_size` at a time: one `(name, array)`
    /// per requested layer (`outputs` empty: the model's outputs).
    #[pyo3(signature = (x, batch_size = 32, outputs = Vec::new()))]
    fn predict_outputs<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        batch_size: usize,
        outputs: Vec<String>,
    ) -> PyResult<Vec<(String, Bound<'py, PyArrayDyn<f32>>)>> {
        if batch_size == 0 {
            return Err(to_py(lcjit::Error::Usage {
                detail: "batch_size must be at least 1".into(),
            }));
        }
        let count = self.snapshot()?.graph().inputs.len();
        let arrays = inputs(x, count)?;
        let views: Vec<_> = arrays.iter().map(|a| a.as_array()).collect();
        let compiled = self.compiled(py, batch_size)?;
        let names: Vec<&str> = outputs.iter().map(String::as_str).collect();
        let result = py
            .detach(|| compiled.predict_outputs(&views, &names, batch_size))
            .py()?;
        Ok(result
            .into_iter()
            .map(|(n, a)| (n, to_numpy(py, a)))
            .collect())
    }

    /// Saves the whole model (`.h5`, `.keras`, or `.npz` weights).
    fn save(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let m = self.snapshot()?;
        py.detach(|| m.save(&path)).py()
    }

    /// Saves the weights (`.h5` or `.npz`).
    fn save_weights(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
        let m = self.snapshot()?;
        py.detach(|| m.save_weights(&path)).py()
    }

    /// Gradient of `sum(y · dy)` in inference mode: `(dx, [(name, grad)])` with names
    /// `<layer>/<weight>` and gradients in Keras layout.
    #[allow(clippy::type_complexity)]
    fn gradients<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        dy: &Bound<'py, PyAny>,
    ) -> PyResult<(
        Bound<'py, PyArrayDyn<f32>>,
        Vec<(String, Bound<'py, PyArrayDyn<f32>>)>,
    )> {
        let x = crate::f32_owned(x, "x")?;
        let dy = crate::f32_owned(dy, "dy")?;
        let batch = x.shape().first().copied().unwrap_or(1).max(1);
        let compiled = self.compiled(py, batch)?;
        let mut named = py.detach(|| compiled.gradients_keras(&x, &dy)).py()?;
        let pos = named.iter().position(|(n, _)| n == "x");
        let dx = match pos {
            Some(i) => named.remove(i).1,
            None => return Err(to_py(lcjit::Error::internal("no input gradient"))),
        };
        Ok((
            to_numpy(py, dx),
            named
                .into_iter()
                .map(|(n, a)| (n, to_numpy(py, a)))
                .collect(),
        ))
    }
}

/// The usage error for a layer name the model does not have.
pub(crate) fn unknown_layer(m: &Model, name: &str) -> PyErr {
    let names: Vec<&str> = m.graph().nodes.iter().map(|n| n.name.as_str()).collect();
    to_py(lcjit::Error::Usage {
        detail: format!("no layer named '{name}' (layers: {})", names.join(", ")),
    })
}

/// What `lcjit ir` prints for `stage`.
pub(crate) fn ir(m: &Model, stage: &str, batch: usize, backward: bool) -> lcjit::Result<String> {
    let program = || -> lcjit::Result<lcjit::loop_ir::Module> {
        Ok(if backward {
            let g = lcjit::lower::grad::lower_gradients(m.graph(), batch)?;
            let mut all = g.forward;
            all.kernels.extend(g.backward.kernels);
            all
        } else {
            lcjit::lower::lower_forward(m.graph(), batch)?.module
        })
    };
    if batch == 0 {
        return Err(lcjit::Error::Usage {
            detail: "ir: batch must be at least 1".into(),
        });
    }
    Ok(match stage {
        "graph" => lcjit::graph::print::graph_text(m.graph()),
        "dot" => lcjit::graph::print::graph_dot(m.graph()),
        "svg" => lcjit::graph::svg::graph_svg(m.graph()),
        "loops" => lcjit::loop_ir::print::module_text(&program()?),
        "clif" | "asm" => {
            let opts = lcjit::backend::CodegenOptions {
                keep_text: true,
                ..Default::default()
            };
            let program =
                lcjit::backend::prepare(lcjit::backend::Backend::Jit, &program()?, &opts)?;
            program.listing(stage == "clif").to_string()
        }
        other => {
            return Err(lcjit::Error::Usage {
                detail: format!(
                    "unknown stage '{other}' (expected graph, dot, svg, loops, clif or asm)"
                ),
            })
        }
    })
}

/// The autotuning options of `autotune=` (a budget in seconds; 0 is off) and
/// `tune_cache=` (a path; `None` the default file, `""` none).
fn tune_options(
    budget_s: f64,
    cache: Option<String>,
) -> PyResult<Option<lcjit::runtime::tune::Autotune>> {
    if !(0.0..=86_400.0).contains(&budget_s) {
        return Err(to_py(lcjit::Error::Usage {
            detail: format!("autotune must be a budget in seconds from 0 to 86400, not {budget_s}"),
        }));
    }
    if budget_s == 0.0 {
        return Ok(None);
    }
    Ok(Some(lcjit::runtime::tune::Autotune {
        budget: std::time::Duration::from_secs_f64(budget_s),
        cache: match cache {
            None => lcjit::runtime::tune::default_cache_path(),
            Some(c) if c.is_empty() => None,
            Some(c) => Some(std::path::PathBuf::from(c)),
        },
    }))
}
