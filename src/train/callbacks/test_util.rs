//! A driver for the callbacks' unit tests: runs a callback through epochs whose logs hold
//! one monitored value each, with a one-element weight that counts the epochs (it is
//! `epoch + 1` when `on_epoch_end` sees it), and an SGD optimizer at learning rate 0.1.

use super::{Callback, Control, FitParams, Logs};
use crate::train::optimizer::{Algorithm, Flavor, Optimizer, OptimizerConfig};
use crate::train::schedule::LearningRate;
use ndarray::{ArrayD, IxDyn};

/// What a driven run did.
pub(crate) struct Driven {
    /// Epochs run before the callback stopped training (or all of them).
    pub epochs_run: usize,
    /// The weight after `on_train_end` (restored weights show here).
    pub final_weight: f32,
    /// Warnings the callback reported.
    pub warnings: Vec<String>,
    /// `lr` in each epoch's logs after `on_epoch_end`, if the callback logged it.
    pub lrs: Vec<Option<f64>>,
}

/// An SGD optimizer with a constant learning rate.
pub(crate) fn sgd(lr: f32) -> Optimizer {
    Optimizer::new(OptimizerConfig {
        name: "SGD".into(),
        algorithm: Algorithm::Sgd {
            momentum: 0.0,
            nesterov: false,
        },
        learning_rate: LearningRate::Constant(lr),
        flavor: Flavor::TfKeras,
        clipnorm: None,
        clipvalue: None,
        global_clipnorm: None,
        weight_decay: None,
        decay: 0.0,
    })
}

/// Runs `cb` over `values.len()` epochs whose logs are `{key: values[epoch]}`.
pub(crate) fn drive(cb: &mut dyn Callback, key: &str, values: &[f64]) -> Driven {
    let mut weights = vec![ArrayD::zeros(IxDyn(&[1]))];
    let mut opt = sgd(0.1);
    let mut stop = None;
    let mut warnings = Vec::new();
    let params = FitParams {
        epochs: values.len(),
        steps: 1,
        verbose: false,
    };
    let mut lrs = Vec::new();
    let mut epochs_run = 0;
    let mut last = Logs::new();
    {
        let mut ctl = Control::new(
            &mut weights,
            &mut opt,
            None,
            &mut stop,
            &mut warnings,
            params,
        );
        cb.on_train_begin(&mut ctl).expect("train begin");
        for (epoch, &v) in values.iter().enumerate() {
            cb.on_epoch_begin(epoch, &mut ctl).expect("epoch begin");
            ctl.weights[0][[0]] = epoch as f32 + 1.0;
            let mut logs = Logs::new();
            logs.set(key, v);
            cb.on_epoch_end(epoch, &mut logs, &mut ctl)
                .expect("epoch end");
            lrs.push(logs.get("lr"));
            epochs_run += 1;
            last = logs;
            if ctl.stop_requested() {
                break;
            }
        }
        cb.on_train_end(&last, &mut ctl).expect("train end");
    }
    Driven {
        epochs_run,
        final_weight: weights[0][[0]],
        warnings,
        lrs,
    }
}

/// Calls `f` with a [`Control`] over a one-element weight and [`sgd`]`(0.1)`, for
/// `steps` batches in one epoch; returns the stop reason `f` left, if any.
pub(crate) fn with_control(steps: usize, f: impl FnOnce(&mut Control<'_>)) -> Option<String> {
    let mut weights = vec![ArrayD::zeros(IxDyn(&[1]))];
    let mut opt = sgd(0.1);
    let (mut stop, mut warnings) = (None, Vec::new());
    let params = FitParams {
        epochs: 1,
        steps,
        verbose: false,
    };
    let mut ctl = Control::new(
        &mut weights,
        &mut opt,
        None,
        &mut stop,
        &mut warnings,
        params,
    );
    f(&mut ctl);
    stop
}
