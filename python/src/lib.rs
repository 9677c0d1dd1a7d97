//! `lcjit._native`: the extension module behind the `lcjit` Python package.
//!
//! The Python package (`python/lcjit/`) holds the Keras-shaped surface (`lcjit.load`,
//! `lcjit.Model`, `lcjit.callbacks`, the exception classes); this module holds what runs
//! natively: [`model::NativeModel`], the base class of `lcjit.Model`, and a few functions.
//! It exposes the lcjit library, it does not re-implement it: loading, prediction,
//! training, callbacks, evaluation and saving are the crate's own.
//!
//! Invariants: no Rust panic crosses into Python (every fallible call returns `PyResult`;
//! lcjit errors become the `lcjit.errors` class of their stage with the same message);
//! native work runs with the interpreter detached (`Python::detach`), so other Python
//! threads run meanwhile; arrays come in as views of C-contiguous float32 numpy arrays
//! (converted only when they are not that already) and go out as numpy arrays that take
//! ownership of the result without a copy.
#![deny(missing_docs)]

mod callbacks;
mod model;
mod train;

use ndarray::ArrayD;
use numpy::{IntoPyArray, PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

/// The Python exception for an lcjit error: the `lcjit.errors` class of its stage, with
/// the library's message (which names file, layer and field).
pub(crate) fn to_py(e: lcjit::Error) -> PyErr {
    use lcjit::Error as E;
    let class = match &e {
        E::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => "MissingFileError",
        E::Io { .. } | E::Format { .. } | E::UnsupportedFile { .. } => "FileError",
        E::Config { .. } | E::LayerConfig { .. } | E::UnknownLayer { .. } => "ConfigError",
        E::Shape { .. } | E::Graph { .. } => "ShapeError",
        E::Budget { .. } | E::FileBudget { .. } => "BudgetError",
        E::Weights { .. } => "WeightsError",
        E::Input { .. } => "InputError",
        E::Usage { .. } | E::Tool { .. } | E::Resume { .. } => "UsageError",
        E::Interrupted { .. } => "InterruptedError",
        E::Internal { .. } => "InternalError",
    };
    let message = e.to_string();
    Python::attach(|py| {
        match py
            .import("lcjit.errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.call1((message.clone(),)))
        {
            Ok(value) => PyErr::from_value(value),
            Err(err) => err,
        }
    })
}

/// `Result` of the lcjit library into `PyResult`.
pub(crate) trait IntoPy<T> {
    /// Converts the error with [`to_py`].
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for lcjit::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// A C-contiguous float32 view of any array-like: the object itself when it is one
/// already (no copy), else `numpy.ascontiguousarray(obj, dtype=float32)`.
pub(crate) fn f32_array<'py>(
    obj: &Bound<'py, PyAny>,
    what: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, f32>> {
    if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, f32>>() {
        if a.is_c_contiguous() {
            return Ok(a);
        }
    }
    let py = obj.py();
    let np = py.import("numpy")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", np.getattr("float32")?)?;
    let converted = np
        .getattr("ascontiguousarray")?
        .call((obj,), Some(&kwargs))
        .map_err(|e| {
            to_py(lcjit::Error::Input {
                detail: format!("{what} is not convertible to a float32 array: {e}"),
            })
        })?;
    converted.extract::<PyReadonlyArrayDyn<'py, f32>>()
}

/// An owned copy of an array-like as float32 (for data the trainer keeps).
pub(crate) fn f32_owned(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<ArrayD<f32>> {
    Ok(f32_array(obj, what)?.as_array().to_owned())
}

/// A numpy array owning `a`'s buffer.
pub(crate) fn to_numpy(py: Python<'_>, a: ArrayD<f32>) -> Bound<'_, PyArrayDyn<f32>> {
    a.into_pyarray(py)
}

/// Parses a `weights_dtype=` name.
pub(crate) fn weights_dtype(name: &str) -> PyResult<lcjit::loop_ir::Dtype> {
    use lcjit::loop_ir::Dtype;
    match name {
        "f32" | "float32" => Ok(Dtype::F32),
        "bf16" | "bfloat16" => Ok(Dtype::Bf16),
        "f16" | "float16" => Ok(Dtype::F16),
        other => Err(to_py(lcjit::Error::Usage {
            detail: format!("weights_dtype must be 'f32', 'bf16' or 'f16', not '{other}'"),
        })),
    }
}

/// Parses an engine name.
pub(crate) fn engine(name: &str) -> PyResult<lcjit::Engine> {
    lcjit::Engine::parse(name).py()
}

/// The loop IR, graph text, DOT or SVG of a model file's graph (what `lcjit ir` prints).
#[pyfunction]
#[pyo3(signature = (model, stage = "loops", batch = 1, backward = false))]
fn ir_text(
    py: Python<'_>,
    model: &model::NativeModel,
    stage: &str,
    batch: usize,
    backward: bool,
) -> PyResult<String> {
    let m = model.snapshot()?;
    py.detach(move || model::ir(&m, stage, batch, backward))
        .py()
}

/// `lcjit bench` on a model: its JSON report as text.
#[pyfunction]
#[pyo3(signature = (model, batch = 32, threads = None, engines = vec!["jit".to_string()], train = false, probe = false))]
fn bench_json(
    py: Python<'_>,
    model: &model::NativeModel,
    batch: usize,
    threads: Option<usize>,
    engines: Vec<String>,
    train: bool,
    probe: bool,
) -> PyResult<String> {
    let m = model.snapshot()?;
    let weights_dtype = model.weights_dtype;
    let wide = model.wide;
    let autotune = model.autotune.clone();
    let threads = threads.unwrap_or_else(|| model.threads());
    let engines = engines
        .iter()
        .map(|e| engine(e))
        .collect::<PyResult<Vec<_>>>()?;
    if batch == 0 || threads == 0 {
        return Err(to_py(lcjit::Error::Usage {
            detail: "bench: batch and threads must be at least 1".into(),
        }));
    }
    py.detach(move || {
        let run = lcjit::bench::BenchRun {
            batch,
            threads,
            engines: &engines,
            probe,
            train,
            weights_dtype,
            wide,
            separate_update: false,
            autotune,
        };
        let report = lcjit::bench::bench_model("model", m, &run)?;
        report.json()
    })
    .py()
}

/// The sample order of each of `epochs` epochs over `n` samples, as `fit` draws them
/// with `shuffle=True, seed=seed` (`None`: unshuffled, `0..n` every epoch): for loops
/// that must see the same batches as `fit`.
#[pyfunction]
#[pyo3(signature = (n, epochs, seed = None))]
fn epoch_orders(n: usize, epochs: usize, seed: Option<u64>) -> Vec<Vec<usize>> {
    lcjit::train::fit::epoch_orders(n, epochs, seed)
}

/// The extension module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::NativeModel>()?;
    m.add_function(wrap_pyfunction!(ir_text, m)?)?;
    m.add_function(wrap_pyfunction!(bench_json, m)?)?;
    m.add_function(wrap_pyfunction!(epoch_orders, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
