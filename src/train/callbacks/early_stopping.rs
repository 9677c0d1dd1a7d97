//! [`EarlyStopping`]: stop when a monitored quantity stops improving (tf-keras 2.21).
//!
//! Exactly Keras's rules: `min_delta` is taken by absolute value and signed by the mode;
//! an epoch improves when `current ∓ min_delta` beats `best`; the wait counter is
//! incremented first and reset only when the epoch beats `best` **and** the `baseline`
//! (if any); training stops when `wait ≥ patience` on an epoch other than the first;
//! epochs before `start_from_epoch` (and epochs whose logs lack the monitor) are not
//! looked at. With `restore_best_weights` the weights of the first monitored epoch are
//! kept at once (so a run that never improves restores those), then those of every
//! improving epoch, and they are restored at the end of training whether or not it
//! stopped early (tf-keras 2.21's `on_train_end`).

use super::{
    monitored, required, Callback, CallbackState, Control, Logs, Mode, Monitor, StateValue,
};
use crate::error::{Error, Result};
use ndarray::ArrayD;

/// Arguments of [`EarlyStopping`], Keras's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct EarlyStoppingConfig {
    /// Quantity to watch (default `val_loss`).
    pub monitor: String,
    /// Smallest change that counts as an improvement (its absolute value is used).
    pub min_delta: f64,
    /// Epochs without improvement before stopping.
    pub patience: usize,
    /// Direction; `Auto` is `Max` for monitors ending in `acc`, `accuracy` or `auc`.
    pub mode: Mode,
    /// A value the monitor must beat for the wait counter to reset.
    pub baseline: Option<f64>,
    /// Restore the weights of the best epoch at the end of training.
    pub restore_best_weights: bool,
    /// Epochs to wait before monitoring starts.
    pub start_from_epoch: usize,
    /// Print when stopping and restoring.
    pub verbose: bool,
}

impl Default for EarlyStoppingConfig {
    fn default() -> Self {
        EarlyStoppingConfig {
            monitor: "val_loss".into(),
            min_delta: 0.0,
            patience: 0,
            mode: Mode::Auto,
            baseline: None,
            restore_best_weights: false,
            start_from_epoch: 0,
            verbose: false,
        }
    }
}

/// Keras's `EarlyStopping` callback.
#[derive(Clone, Debug)]
pub struct EarlyStopping {
    /// The arguments.
    pub config: EarlyStoppingConfig,
    monitor: Monitor,
    wait: usize,
    stopped_epoch: usize,
    best: f64,
    best_epoch: usize,
    best_weights: Option<Vec<ArrayD<f32>>>,
    warned: bool,
}

impl EarlyStopping {
    /// The callback for `config`.
    pub fn new(config: EarlyStoppingConfig) -> Self {
        let m = &config.monitor;
        let greater = match config.mode {
            Mode::Min => false,
            Mode::Max => true,
            Mode::Auto => m.ends_with("acc") || m.ends_with("accuracy") || m.ends_with("auc"),
        };
        let monitor = Monitor {
            greater,
            on_reference: false,
            min_delta: config.min_delta.abs(),
        };
        EarlyStopping {
            config,
            monitor,
            wait: 0,
            stopped_epoch: 0,
            best: monitor.worst(),
            best_epoch: 0,
            best_weights: None,
            warned: false,
        }
    }

    /// The epoch (0-based) training stopped after; 0 if it did not stop (as Keras).
    pub fn stopped_epoch(&self) -> usize {
        self.stopped_epoch
    }

    /// The best epoch seen (0-based).
    pub fn best_epoch(&self) -> usize {
        self.best_epoch
    }

    /// The best monitored value seen (±∞ before any).
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Epochs counted since the last reset of the wait counter.
    pub fn wait(&self) -> usize {
        self.wait
    }

    /// Whether higher values are better for this monitor and mode.
    pub fn maximizes(&self) -> bool {
        self.monitor.greater
    }
}

impl Callback for EarlyStopping {
    fn on_train_begin(&mut self, _ctl: &mut Control<'_>) -> Result<()> {
        // Allow instances to be re-used, as Keras.
        self.wait = 0;
        self.stopped_epoch = 0;
        self.best = self.monitor.worst();
        self.best_weights = None;
        self.best_epoch = 0;
        Ok(())
    }

    fn on_epoch_end(&mut self, epoch: usize, logs: &mut Logs, ctl: &mut Control<'_>) -> Result<()> {
        let who = "Early stopping";
        let Some(current) = monitored(logs, &self.config.monitor, who, &mut self.warned, ctl)
        else {
            return Ok(());
        };
        if epoch < self.config.start_from_epoch {
            return Ok(());
        }
        if self.config.restore_best_weights && self.best_weights.is_none() {
            // Restore the weights after the first epoch if no progress is ever made.
            self.best_weights = Some(ctl.weights().to_vec());
            self.best_epoch = epoch;
        }
        self.wait += 1;
        if self.monitor.improves(current, self.best) {
            self.best = current;
            self.best_epoch = epoch;
            if self.config.restore_best_weights {
                self.best_weights = Some(ctl.weights().to_vec());
            }
            // Only restart the wait if the epoch beats the baseline as well.
            if self
                .config
                .baseline
                .is_none_or(|b| self.monitor.improves(current, b))
            {
                self.wait = 0;
            }
            return Ok(());
        }
        if self.wait >= self.config.patience && epoch > 0 {
            self.stopped_epoch = epoch;
            ctl.stop_training(format!(
                "EarlyStopping: {} did not improve for {} epoch(s); stopped after epoch {}, \
                 best epoch {}",
                self.config.monitor,
                self.wait,
                epoch + 1,
                self.best_epoch + 1
            ));
        }
        Ok(())
    }

    fn export_state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("EarlyStopping");
        s.set("config", StateValue::Text(format!("{:?}", self.config)))
            .set("wait", StateValue::Count(self.wait as u64))
            .set(
                "stopped_epoch",
                StateValue::Count(self.stopped_epoch as u64),
            )
            .set("best", StateValue::Float(self.best))
            .set("best_epoch", StateValue::Count(self.best_epoch as u64))
            .set("warned", StateValue::Flag(self.warned))
            .set(
                "has_best_weights",
                StateValue::Flag(self.best_weights.is_some()),
            );
        s.arrays = self.best_weights.clone().unwrap_or_default();
        Some(s)
    }

    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        let s = required(state, "EarlyStopping")?;
        s.expect_config(&format!("{:?}", self.config))?;
        let best_weights = if s.flag("has_best_weights")? {
            let n = ctl.weights().len();
            let fits = s.arrays.len() == n
                && s.arrays
                    .iter()
                    .zip(ctl.weights())
                    .all(|(a, w)| a.shape() == w.shape());
            if !fits {
                return Err(Error::resume(
                    "best_weights",
                    format!(
                        "{} arrays that are not the model's {n} weights",
                        s.arrays.len()
                    ),
                ));
            }
            Some(s.arrays.clone())
        } else {
            None
        };
        self.wait = s.count("wait")?;
        self.stopped_epoch = s.count("stopped_epoch")?;
        self.best = s.float("best")?;
        self.best_epoch = s.count("best_epoch")?;
        self.warned = s.flag("warned")?;
        self.best_weights = best_weights;
        Ok(())
    }

    fn on_train_end(&mut self, _logs: &Logs, ctl: &mut Control<'_>) -> Result<()> {
        if self.stopped_epoch > 0 && self.config.verbose {
            eprintln!("Epoch {}: early stopping", self.stopped_epoch + 1);
        }
        if let (true, Some(w)) = (self.config.restore_best_weights, &self.best_weights) {
            if self.config.verbose {
                eprintln!(
                    "Restoring model weights from the end of the best epoch: {}.",
                    self.best_epoch + 1
                );
            }
            ctl.set_weights(w)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::{drive, Driven};
    use super::*;

    fn run(config: EarlyStoppingConfig, monitor: &str, values: &[f64]) -> (Driven, EarlyStopping) {
        let mut es = EarlyStopping::new(config);
        let d = drive(&mut es, monitor, values);
        (d, es)
    }

    fn cfg(patience: usize) -> EarlyStoppingConfig {
        EarlyStoppingConfig {
            monitor: "val_loss".into(),
            patience,
            ..Default::default()
        }
    }

    /// patience 0: wait becomes 1 on the first non-improving epoch, which stops.
    #[test]
    fn patience_zero_stops_on_first_worse_epoch() {
        let (d, es) = run(cfg(0), "val_loss", &[1.0, 0.9, 0.95, 0.5]);
        assert_eq!(d.epochs_run, 3);
        assert_eq!(
            (es.stopped_epoch(), es.best_epoch(), es.best()),
            (2, 1, 0.9)
        );
    }

    /// patience 2: two epochs without improvement; an equal value is no improvement.
    #[test]
    fn patience_counts_non_improving_epochs() {
        let (d, es) = run(cfg(2), "val_loss", &[1.0, 0.8, 0.8, 0.7, 0.75, 0.9, 0.1]);
        assert_eq!(d.epochs_run, 6);
        assert_eq!((es.stopped_epoch(), es.best_epoch()), (5, 3));
    }

    /// The first epoch never stops (Keras checks `epoch > 0`), even when it does not
    /// improve and patience is 0.
    #[test]
    fn first_epoch_never_stops() {
        // Epoch 0: NaN improves on nothing, wait 1 ≥ 0 but epoch 0; epoch 1 improves
        // (wait 0); epoch 2 does not: wait 1 → stop.
        let (d, es) = run(cfg(0), "val_loss", &[f64::NAN, 2.0, 3.0, 0.0]);
        assert_eq!(
            (d.epochs_run, es.stopped_epoch(), es.best_epoch()),
            (3, 2, 1)
        );
    }

    /// min_delta is an absolute threshold, signed by the mode: in min mode an epoch must
    /// be lower than best − |min_delta|.
    #[test]
    fn min_delta_needs_a_margin() {
        let c = EarlyStoppingConfig {
            min_delta: -0.1, // Keras takes abs()
            ..cfg(1)
        };
        // 1.0 (best), 0.95 (not < 0.9: wait 1 ≥ 1 → stop at epoch 1).
        let (d, es) = run(c.clone(), "val_loss", &[1.0, 0.95, 0.5]);
        assert_eq!((d.epochs_run, es.best()), (2, 1.0));
        // 0.85 < 0.9 improves.
        let (d, es) = run(c, "val_loss", &[1.0, 0.85, 0.8]);
        assert_eq!((d.epochs_run, es.best(), es.best_epoch()), (3, 0.85, 1));
    }

    /// auto mode maximizes accuracy-like names (endswith acc/accuracy/auc) and max mode
    /// subtracts min_delta before comparing.
    #[test]
    fn auto_mode_follows_the_name() {
        for (name, greater) in [
            ("val_accuracy", true),
            ("acc", true),
            ("val_auc", true),
            ("val_loss", false),
            ("val_acc_top", false),
            ("auc_x", false),
        ] {
            let es = EarlyStopping::new(EarlyStoppingConfig {
                monitor: name.into(),
                ..Default::default()
            });
            assert_eq!(es.maximizes(), greater, "{name}");
        }
        let c = EarlyStoppingConfig {
            monitor: "val_accuracy".into(),
            min_delta: 0.05,
            patience: 1,
            ..Default::default()
        };
        // 0.5, 0.54 (not > 0.55: stop).
        let (d, es) = run(c.clone(), "val_accuracy", &[0.5, 0.54, 0.9]);
        assert_eq!((d.epochs_run, es.best()), (2, 0.5));
        let c = EarlyStoppingConfig {
            mode: Mode::Min,
            ..c
        };
        let (d, _) = run(c, "val_accuracy", &[0.5, 0.54, 0.9]);
        assert_eq!(d.epochs_run, 2);
    }

    /// A baseline the monitor never beats: best still follows the values, but the wait
    /// counter never resets, so the first non-improving epoch after `patience` epochs
    /// stops (an improving epoch returns before the stop test, as in Keras).
    #[test]
    fn baseline_must_be_beaten_to_reset_wait() {
        let c = EarlyStoppingConfig {
            baseline: Some(0.5),
            ..cfg(3)
        };
        // wait 1, 2, 3 on improving epochs, 4 on epoch 3 → stop there.
        let (d, es) = run(c.clone(), "val_loss", &[1.0, 0.9, 0.8, 0.85, 0.6]);
        assert_eq!((d.epochs_run, es.best(), es.best_epoch()), (4, 0.8, 2));
        // Without the baseline the same values run on (wait is 1 at epoch 3).
        let (d, _) = run(cfg(3), "val_loss", &[1.0, 0.9, 0.8, 0.85, 0.6]);
        assert_eq!(d.epochs_run, 5);
        // Beating the baseline resets it: 0.4 resets, then 3 non-improving epochs.
        let (d, _) = run(c, "val_loss", &[1.0, 0.4, 0.45, 0.46, 0.47, 0.48]);
        assert_eq!(d.epochs_run, 5);
    }

    /// Epochs before start_from_epoch are ignored entirely (not even best weights).
    #[test]
    fn start_from_epoch_ignores_warm_up() {
        let c = EarlyStoppingConfig {
            start_from_epoch: 2,
            restore_best_weights: true,
            ..cfg(0)
        };
        // Epochs 0, 1 ignored (0.1 would be best); epoch 2 first monitored; 3 worse → stop.
        let (d, es) = run(c, "val_loss", &[0.1, 0.2, 0.5, 0.6, 0.01]);
        assert_eq!((d.epochs_run, es.best(), es.best_epoch()), (4, 0.5, 2));
        // The weights restored are those after epoch 2 (the driver's weights count epochs).
        assert_eq!(d.final_weight, 3.0);
    }

    /// restore_best_weights restores at the end even when training did not stop early
    /// (tf-keras 2.21), and keeps the first monitored epoch's weights when nothing improves
    /// after it.
    #[test]
    fn restores_best_weights_at_train_end() {
        let c = EarlyStoppingConfig {
            restore_best_weights: true,
            ..cfg(10)
        };
        let (d, es) = run(c.clone(), "val_loss", &[1.0, 0.5, 0.7, 0.8]);
        assert_eq!((d.epochs_run, es.stopped_epoch()), (4, 0));
        assert_eq!(d.final_weight, 2.0, "weights after epoch 1 (the best)");
        // NaN never improves (comparisons are false): the first monitored epoch's weights
        // are the ones restored.
        let (d, _) = run(c, "val_loss", &[f64::NAN, f64::NAN, f64::NAN]);
        assert_eq!((d.epochs_run, d.final_weight), (3, 1.0));
    }

    /// A missing monitor warns once, naming the keys that exist, and never stops.
    #[test]
    fn missing_monitor_warns() {
        let (d, _) = run(cfg(0), "loss", &[1.0, 2.0, 3.0]);
        assert_eq!(d.epochs_run, 3);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("`val_loss`") && d.warnings[0].contains("loss"));
    }
}
