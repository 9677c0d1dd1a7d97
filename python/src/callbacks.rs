//! Keras callbacks from Python for a native `fit`.
//!
//! `lcjit.callbacks.EarlyStopping` and the other built-ins carry a `_lcjit_native`
//! specification and run as lcjit's own callbacks (no Python per batch). Any other object
//! with Keras's callback methods (`on_epoch_end(epoch, logs)`, `on_train_batch_end(batch,
//! logs)`, …, or the `on_batch_*` aliases) runs through [`PyCallback`], which takes the
//! interpreter for each call. One [`Interrupt`] hook always runs last: it turns Ctrl-C
//! (a pending `KeyboardInterrupt`) and `model.stop_training = True` into a stop between
//! batches.
//!
//! What a Python callback sees of the model: before each hook it implements, the trained
//! weights are published into the model object, so `self.model.get_weights()`,
//! `predict` and `save` see the weights of the moment, as in Keras. Publishing copies
//! every weight, so only hooks the object implements are called (a callback without
//! batch hooks costs nothing per batch). A callback that calls `set_weights` changes the
//! weights training continues from. An exception raised by a callback stops `fit`
//! between steps and is raised by `fit`, the weights of the last finished step kept.

use crate::model::State;
use lcjit::train::callbacks::{Control, Logs};
use lcjit::train::{
    CSVLogger, Callback, EarlyStopping, EarlyStoppingConfig, LearningRateScheduler, Mode,
    ModelCheckpoint, ModelCheckpointConfig, ReduceLROnPlateau, ReduceLROnPlateauConfig, SaveFreq,
    TerminateOnNaN,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex};

/// A callback `fit` can run with the interpreter detached.
pub(crate) type Boxed = Box<dyn Callback + Send>;

/// The Python exception that stopped a `fit`, if one did.
#[derive(Default)]
pub(crate) struct Raised(Mutex<Option<PyErr>>);

impl Raised {
    /// Keeps `e` (the first one wins) and returns the error that stops `fit`.
    fn keep(&self, e: PyErr, where_: &str) -> lcjit::Error {
        if let Ok(mut slot) = self.0.lock() {
            slot.get_or_insert(e);
        }
        lcjit::Error::Interrupted {
            detail: format!("a Python exception in {where_}"),
        }
    }

    /// The kept exception.
    pub fn take(&self) -> Option<PyErr> {
        self.0.lock().ok().and_then(|mut s| s.take())
    }
}

/// What the adapters share: the model object and its state, the exception slot.
#[derive(Clone)]
pub(crate) struct Context {
    pub model: Arc<Py<PyAny>>,
    pub state: Arc<Mutex<State>>,
    pub raised: Arc<Raised>,
    /// Number of graph parameters (the trainer's list may append off-mask entries).
    pub graph_len: usize,
}

impl Context {
    /// Stops training when the Python model's `stop_training` is true (Keras's flag).
    fn check_stop(&self, py: Python<'_>, ctl: &mut Control<'_>) {
        let stop = self
            .model
            .bind(py)
            .getattr("stop_training")
            .and_then(|v| v.is_truthy())
            .unwrap_or(false);
        if stop && !ctl.stop_requested() {
            ctl.stop_training("model.stop_training was set by a callback");
        }
    }
}

/// Builds the callbacks of one `fit` from Python objects, plus the [`Interrupt`] hook.
pub(crate) fn build(
    py: Python<'_>,
    objects: &[Bound<'_, PyAny>],
    ctx: &Context,
    params: (usize, usize, bool),
) -> PyResult<Vec<Boxed>> {
    let mut out: Vec<Boxed> = Vec::new();
    let fit_params = PyDict::new(py);
    fit_params.set_item("epochs", params.0)?;
    fit_params.set_item("steps", params.1)?;
    fit_params.set_item("verbose", u8::from(params.2))?;
    for obj in objects {
        if let Ok(spec) = obj.getattr("_lcjit_native") {
            out.push(native(&spec.call0()?, ctx)?);
            continue;
        }
        if obj.hasattr("set_model")? {
            obj.call_method1("set_model", (ctx.model.bind(py),))?;
        } else {
            // A plain object: give it `.model` as Keras's base class would (ignored
            // where the object does not allow new attributes).
            let _ = obj.setattr("model", ctx.model.bind(py));
        }
        if obj.hasattr("set_params")? {
            obj.call_method1("set_params", (fit_params.clone(),))?;
        }
        let active: Vec<String> = py
            .import("lcjit.callbacks")?
            .getattr("_active_hooks")?
            .call1((obj,))?
            .extract()?;
        out.push(Box::new(PyCallback {
            obj: obj.clone().unbind(),
            ctx: ctx.clone(),
            published: None,
            active,
        }));
    }
    out.push(Box::new(Interrupt { ctx: ctx.clone() }));
    Ok(out)
}

/// Reads the keyword arguments of a built-in's specification.
struct Spec<'py> {
    kind: String,
    cfg: Bound<'py, PyDict>,
}

impl<'py> Spec<'py> {
    fn get<T: for<'a> FromPyObjectOwned<'a>>(&self, key: &str) -> PyResult<Option<T>> {
        match self.cfg.get_item(key)? {
            Some(v) if !v.is_none() => Ok(Some(v.extract::<T>().map_err(|_| {
                crate::to_py(lcjit::Error::Usage {
                    detail: format!("{}: argument '{key}' has the wrong type", self.kind),
                })
            })?)),
            _ => Ok(None),
        }
    }

    fn mode(&self) -> PyResult<Option<Mode>> {
        match self.get::<String>("mode")? {
            None => Ok(None),
            Some(m) => Mode::parse(&m).map(Some).ok_or_else(|| {
                crate::to_py(lcjit::Error::Usage {
                    detail: format!(
                        "{}: mode must be 'auto', 'min' or 'max', not '{m}'",
                        self.kind
                    ),
                })
            }),
        }
    }

    fn verbose(&self) -> PyResult<bool> {
        Ok(self.get::<i64>("verbose")?.unwrap_or(0) > 0)
    }
}

use pyo3::conversion::FromPyObjectOwned;

/// One of lcjit's built-in callbacks from its Python specification `(kind, kwargs)`.
fn native(spec: &Bound<'_, PyAny>, ctx: &Context) -> PyResult<Boxed> {
    let (kind, cfg): (String, Bound<'_, PyDict>) = spec.extract()?;
    let s = Spec { kind, cfg };
    let usage = |e: lcjit::Error| crate::to_py(e);
    Ok(match s.kind.as_str() {
        "EarlyStopping" => {
            let mut c = EarlyStoppingConfig::default();
            if let Some(v) = s.get("monitor")? {
                c.monitor = v;
            }
            c.min_delta = s.get("min_delta")?.unwrap_or(c.min_delta);
            c.patience = s.get("patience")?.unwrap_or(c.patience);
            c.mode = s.mode()?.unwrap_or(c.mode);
            c.baseline = s.get("baseline")?;
            c.restore_best_weights = s.get("restore_best_weights")?.unwrap_or(false);
            c.start_from_epoch = s.get("start_from_epoch")?.unwrap_or(0);
            c.verbose = s.verbose()?;
            Box::new(EarlyStopping::new(c))
        }
        "ReduceLROnPlateau" => {
            let mut c = ReduceLROnPlateauConfig::default();
            if let Some(v) = s.get("monitor")? {
                c.monitor = v;
            }
            c.factor = s.get("factor")?.unwrap_or(c.factor);
            c.patience = s.get("patience")?.unwrap_or(c.patience);
            c.mode = s.mode()?.unwrap_or(c.mode);
            c.min_delta = s.get("min_delta")?.unwrap_or(c.min_delta);
            c.cooldown = s.get("cooldown")?.unwrap_or(c.cooldown);
            c.min_lr = s.get("min_lr")?.unwrap_or(c.min_lr);
            c.verbose = s.verbose()?;
            Box::new(ReduceLROnPlateau::new(c).map_err(usage)?)
        }
        "ModelCheckpoint" => {
            let path: String = s.get("filepath")?.unwrap_or_default();
            let mut c = ModelCheckpointConfig::new(path);
            if let Some(v) = s.get("monitor")? {
                c.monitor = v;
            }
            c.save_best_only = s.get("save_best_only")?.unwrap_or(false);
            c.save_weights_only = s.get("save_weights_only")?.unwrap_or(false);
            c.mode = s.mode()?.unwrap_or(c.mode);
            c.initial_value_threshold = s.get("initial_value_threshold")?;
            c.verbose = s.verbose()?;
            let freq = s.cfg.get_item("save_freq")?;
            c.save_freq = match freq {
                None => SaveFreq::Epoch,
                Some(f) if f.extract::<String>().is_ok_and(|t| t == "epoch") => SaveFreq::Epoch,
                Some(f) => match f.extract::<usize>() {
                    Ok(n) if n > 0 => SaveFreq::Batches(n),
                    _ => {
                        return Err(usage(lcjit::Error::Usage {
                            detail: "ModelCheckpoint: save_freq must be 'epoch' or an integer ≥ 1"
                                .into(),
                        }))
                    }
                },
            };
            Box::new(ModelCheckpoint::new(c).map_err(usage)?)
        }
        "CSVLogger" => {
            let name: String = s.get("filename")?.unwrap_or_default();
            let mut c = CSVLogger::new(name);
            if let Some(sep) = s.get::<String>("separator")? {
                let mut chars = sep.chars();
                match (chars.next(), chars.next()) {
                    (Some(ch), None) => c.separator = ch,
                    _ => {
                        return Err(usage(lcjit::Error::Usage {
                            detail: "CSVLogger: separator must be one character".into(),
                        }))
                    }
                }
            }
            c.append = s.get("append")?.unwrap_or(false);
            Box::new(c)
        }
        "TerminateOnNaN" => Box::new(TerminateOnNaN::new()),
        "LearningRateScheduler" => {
            let schedule: Py<PyAny> = s
                .cfg
                .get_item("schedule")?
                .ok_or_else(|| {
                    usage(lcjit::Error::Usage {
                        detail: "LearningRateScheduler: schedule is required".into(),
                    })
                })?
                .unbind();
            let raised = ctx.raised.clone();
            let mut cb = LearningRateScheduler::new(move |epoch: usize, lr: f64| {
                Python::attach(|py| {
                    match schedule
                        .bind(py)
                        .call1((epoch, lr))
                        .and_then(|v| v.extract::<f64>())
                    {
                        Ok(v) => v,
                        Err(e) => {
                            raised.keep(e, "the learning-rate schedule");
                            f64::NAN
                        }
                    }
                })
            });
            cb.verbose = s.verbose()?;
            Box::new(cb)
        }
        other => {
            return Err(usage(lcjit::Error::Usage {
                detail: format!("unknown built-in callback '{other}'"),
            }))
        }
    })
}

/// A Python object with Keras's callback methods.
struct PyCallback {
    obj: Py<PyAny>,
    ctx: Context,
    /// The state's weight version after our last publication (to see `set_weights`).
    published: Option<u64>,
    /// The hooks the object implements (see `lcjit.callbacks._active_hooks`); only
    /// these are called, each after publishing the weights.
    active: Vec<String>,
}

/// Which of a hook's arguments Keras passes.
enum Args<'l> {
    /// `(logs)`.
    Logs(&'l Logs),
    /// `(index, logs)`.
    Indexed(usize, &'l Logs),
    /// `(epoch, logs)` whose changes come back (on_epoch_end).
    Returned(usize, &'l mut Logs),
}

impl PyCallback {
    /// Writes the trained weights into the model object (see the module docs).
    fn publish(&mut self, ctl: &Control<'_>) -> lcjit::Result<()> {
        let mut st = lock_state(&self.ctx.state)?;
        let n = self.ctx.graph_len.min(ctl.weights().len());
        st.model_mut().set_params(ctl.weights()[..n].to_vec())?;
        self.published = Some(st.version);
        Ok(())
    }

    /// Takes weights set from Python since the last publication into training.
    fn adopt(&mut self, ctl: &mut Control<'_>) -> lcjit::Result<()> {
        let st = lock_state(&self.ctx.state)?;
        if self.published.is_none_or(|v| v == st.version) {
            return Ok(());
        }
        let n = self.ctx.graph_len.min(ctl.weights().len());
        let mut w = st.model.params().to_vec();
        w.extend_from_slice(&ctl.weights()[n..]);
        self.published = Some(st.version);
        drop(st);
        ctl.set_weights(&w)
    }

    fn call(&mut self, ctl: &mut Control<'_>, names: &[&str], args: Args<'_>) -> lcjit::Result<()> {
        let Some(name) = names
            .iter()
            .find(|n| self.active.iter().any(|a| a == **n))
            .copied()
        else {
            return Ok(());
        };
        self.publish(ctl)?;
        let raised = self.ctx.raised.clone();
        Python::attach(|py| -> lcjit::Result<()> {
            let obj = self.obj.bind(py);
            let run = || -> PyResult<()> {
                let dict = PyDict::new(py);
                let (index, logs): (Option<usize>, &Logs) = match &args {
                    Args::Logs(l) => (None, l),
                    Args::Indexed(i, l) => (Some(*i), l),
                    Args::Returned(i, l) => (Some(*i), l),
                };
                for (k, v) in logs.iter() {
                    dict.set_item(k, v)?;
                }
                match index {
                    Some(i) => obj.call_method1(name, (i, dict.clone()))?,
                    None => obj.call_method1(name, (dict.clone(),))?,
                };
                if let Args::Returned(_, logs) = args {
                    for (k, v) in dict.iter() {
                        if let (Ok(k), Ok(v)) = (k.extract::<String>(), v.extract::<f64>()) {
                            logs.set(&k, v);
                        }
                    }
                }
                Ok(())
            };
            run().map_err(|e| raised.keep(e, &format!("callback method {name}")))?;
            self.ctx.check_stop(py, ctl);
            Ok(())
        })?;
        self.adopt(ctl)
    }
}

fn lock_state(state: &Mutex<State>) -> lcjit::Result<std::sync::MutexGuard<'_, State>> {
    state
        .lock()
        .map_err(|_| lcjit::Error::internal("model state lock poisoned"))
}

impl Callback for PyCallback {
    fn on_train_begin(&mut self, ctl: &mut Control<'_>) -> lcjit::Result<()> {
        let logs = Logs::new();
        self.call(ctl, &["on_train_begin"], Args::Logs(&logs))
    }

    fn on_epoch_begin(&mut self, epoch: usize, ctl: &mut Control<'_>) -> lcjit::Result<()> {
        let logs = Logs::new();
        self.call(ctl, &["on_epoch_begin"], Args::Indexed(epoch, &logs))
    }

    fn on_train_batch_begin(&mut self, batch: usize, ctl: &mut Control<'_>) -> lcjit::Result<()> {
        let logs = Logs::new();
        let names = ["on_train_batch_begin", "on_batch_begin"];
        self.call(ctl, &names, Args::Indexed(batch, &logs))
    }

    fn on_train_batch_end(
        &mut self,
        batch: usize,
        logs: &Logs,
        ctl: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        let names = ["on_train_batch_end", "on_batch_end"];
        self.call(ctl, &names, Args::Indexed(batch, logs))
    }

    fn on_epoch_end(
        &mut self,
        epoch: usize,
        logs: &mut Logs,
        ctl: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        self.call(ctl, &["on_epoch_end"], Args::Returned(epoch, logs))
    }

    fn on_train_end(&mut self, logs: &Logs, ctl: &mut Control<'_>) -> lcjit::Result<()> {
        self.call(ctl, &["on_train_end"], Args::Logs(logs))
    }
}

/// Ctrl-C and `model.stop_training` between batches (always the last callback).
struct Interrupt {
    ctx: Context,
}

impl Interrupt {
    fn check(&self, ctl: &mut Control<'_>, batch: Option<usize>) -> lcjit::Result<()> {
        Python::attach(|py| {
            if let Err(e) = py.check_signals() {
                let at = batch.map_or("an epoch".to_string(), |b| format!("batch {b}"));
                return Err(self.ctx.raised.keep(e, &format!("fit, after {at}")));
            }
            self.ctx.check_stop(py, ctl);
            Ok(())
        })
    }
}

impl Callback for Interrupt {
    fn on_train_batch_end(
        &mut self,
        batch: usize,
        _logs: &Logs,
        ctl: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        self.check(ctl, Some(batch))
    }

    fn on_epoch_end(
        &mut self,
        _epoch: usize,
        _logs: &mut Logs,
        ctl: &mut Control<'_>,
    ) -> lcjit::Result<()> {
        self.check(ctl, None)
    }
}
