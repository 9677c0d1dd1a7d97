//! Learning-rate callbacks: [`ReduceLROnPlateau`] and [`LearningRateScheduler`]
//! (tf-keras 2.21). Both log the learning rate as `lr` at the end of every epoch (the
//! rate the epoch ran with, before any reduction), which is how `lr` enters Keras's
//! history. The rate is Keras's float32 variable: reductions are computed in float32 as
//! NumPy 2 does (`np.float32 · python float` stays float32).

use super::{
    monitored, required, Callback, CallbackState, Control, Logs, Mode, Monitor, StateValue,
};
use crate::error::{Error, Result};

/// Arguments of [`ReduceLROnPlateau`], Keras's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ReduceLROnPlateauConfig {
    /// Quantity to watch (default `val_loss`).
    pub monitor: String,
    /// `new_lr = lr · factor`; must be below 1.
    pub factor: f64,
    /// Epochs without improvement before reducing.
    pub patience: usize,
    /// Direction; `Auto` is `Max` when the monitor's name contains `acc`.
    pub mode: Mode,
    /// Improvement threshold, used as given (`current < best − min_delta` in min mode).
    pub min_delta: f64,
    /// Epochs after a reduction during which no improvement is waited for.
    pub cooldown: usize,
    /// Lower bound of the rate.
    pub min_lr: f64,
    /// Print each reduction.
    pub verbose: bool,
}

impl Default for ReduceLROnPlateauConfig {
    fn default() -> Self {
        ReduceLROnPlateauConfig {
            monitor: "val_loss".into(),
            factor: 0.1,
            patience: 10,
            mode: Mode::Auto,
            min_delta: 1e-4,
            cooldown: 0,
            min_lr: 0.0,
            verbose: false,
        }
    }
}

/// Keras's `ReduceLROnPlateau` callback.
#[derive(Clone, Debug)]
pub struct ReduceLROnPlateau {
    /// The arguments.
    pub config: ReduceLROnPlateauConfig,
    monitor: Monitor,
    best: f64,
    wait: usize,
    cooldown_counter: usize,
    warned: bool,
}

impl ReduceLROnPlateau {
    /// The callback for `config`; a `factor ≥ 1` is refused, as Keras does.
    pub fn new(config: ReduceLROnPlateauConfig) -> Result<Self> {
        if config.factor >= 1.0 || config.factor.is_nan() {
            return Err(Error::Usage {
                detail: format!(
                    "ReduceLROnPlateau does not support a factor >= 1.0. Got {}",
                    config.factor
                ),
            });
        }
        let greater = match config.mode {
            Mode::Min => false,
            Mode::Max => true,
            Mode::Auto => config.monitor.contains("acc"),
        };
        let monitor = Monitor {
            greater,
            on_reference: true,
            min_delta: config.min_delta,
        };
        Ok(ReduceLROnPlateau {
            config,
            monitor,
            best: monitor.worst(),
            wait: 0,
            cooldown_counter: 0,
            warned: false,
        })
    }

    fn in_cooldown(&self) -> bool {
        self.cooldown_counter > 0
    }

    /// The best monitored value seen.
    pub fn best(&self) -> f64 {
        self.best
    }

    /// Reduces the rate if it is above `min_lr` (float32 arithmetic, as Keras's).
    fn reduce(&mut self, epoch: usize, ctl: &mut Control<'_>) -> Result<()> {
        let old = ctl.learning_rate();
        let min_lr = self.config.min_lr as f32;
        if old > min_lr {
            let new = (old * self.config.factor as f32).max(min_lr);
            ctl.set_learning_rate(new)?;
            if self.config.verbose {
                eprintln!(
                    "\nEpoch {}: ReduceLROnPlateau reducing learning rate to {}.",
                    epoch + 1,
                    super::format::python_f32(new)
                );
            }
            self.cooldown_counter = self.config.cooldown;
            self.wait = 0;
        }
        Ok(())
    }
}

impl Callback for ReduceLROnPlateau {
    fn on_train_begin(&mut self, _ctl: &mut Control<'_>) -> Result<()> {
        self.best = self.monitor.worst();
        self.cooldown_counter = 0;
        self.wait = 0;
        Ok(())
    }

    // The learning rate it set lives in the optimizer, whose state the resume keeps.
    fn export_state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("ReduceLROnPlateau");
        s.set("config", StateValue::Text(format!("{:?}", self.config)))
            .set("best", StateValue::Float(self.best))
            .set("wait", StateValue::Count(self.wait as u64))
            .set(
                "cooldown_counter",
                StateValue::Count(self.cooldown_counter as u64),
            )
            .set("warned", StateValue::Flag(self.warned));
        Some(s)
    }

    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        let s = required(state, "ReduceLROnPlateau")?;
        s.expect_config(&format!("{:?}", self.config))?;
        let (best, wait) = (s.float("best")?, s.count("wait")?);
        let (cooldown, warned) = (s.count("cooldown_counter")?, s.flag("warned")?);
        self.best = best;
        self.wait = wait;
        self.cooldown_counter = cooldown;
        self.warned = warned;
        Ok(())
    }

    fn on_epoch_end(&mut self, epoch: usize, logs: &mut Logs, ctl: &mut Control<'_>) -> Result<()> {
        logs.set("lr", ctl.learning_rate() as f64);
        let who = "Learning rate reduction is";
        let Some(current) = monitored(logs, &self.config.monitor, who, &mut self.warned, ctl)
        else {
            return Ok(());
        };
        if self.in_cooldown() {
            self.cooldown_counter -= 1;
            self.wait = 0;
        }
        if self.monitor.improves(current, self.best) {
            self.best = current;
            self.wait = 0;
        } else if !self.in_cooldown() {
            self.wait += 1;
            if self.wait >= self.config.patience {
                self.reduce(epoch, ctl)?;
            }
        }
        Ok(())
    }
}

/// Keras's `LearningRateScheduler`: at the start of every epoch the rate becomes
/// `schedule(epoch, current_rate)` (epoch 0-based; the rate as a double, as Python's
/// float; stored as float32).
pub struct LearningRateScheduler<F: FnMut(usize, f64) -> f64> {
    schedule: F,
    /// Print each new rate.
    pub verbose: bool,
}

impl<F: FnMut(usize, f64) -> f64> LearningRateScheduler<F> {
    /// The callback for `schedule`.
    pub fn new(schedule: F) -> Self {
        LearningRateScheduler {
            schedule,
            verbose: false,
        }
    }
}

impl<F: FnMut(usize, f64) -> f64> Callback for LearningRateScheduler<F> {
    fn on_epoch_begin(&mut self, epoch: usize, ctl: &mut Control<'_>) -> Result<()> {
        let lr = (self.schedule)(epoch, ctl.learning_rate() as f64);
        if !lr.is_finite() {
            return Err(Error::Usage {
                detail: format!(
                    "LearningRateScheduler: the schedule returned {lr} for epoch {epoch}"
                ),
            });
        }
        ctl.set_learning_rate(lr as f32)?;
        if self.verbose {
            eprintln!(
                "\nEpoch {}: LearningRateScheduler setting learning rate to {}.",
                epoch + 1,
                super::format::python_float(lr)
            );
        }
        Ok(())
    }

    fn on_epoch_end(
        &mut self,
        _epoch: usize,
        logs: &mut Logs,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        logs.set("lr", ctl.learning_rate() as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::drive;
    use super::*;

    fn lrs(config: ReduceLROnPlateauConfig, values: &[f64]) -> Vec<f64> {
        let mut cb = ReduceLROnPlateau::new(config).expect("config");
        let d = drive(&mut cb, "loss", values);
        d.lrs.into_iter().map(|l| l.expect("lr logged")).collect()
    }

    fn cfg(patience: usize) -> ReduceLROnPlateauConfig {
        ReduceLROnPlateauConfig {
            monitor: "loss".into(),
            factor: 0.5,
            patience,
            ..Default::default()
        }
    }

    const F: f64 = 0.1f32 as f64;
    const H: f64 = 0.05f32 as f64;
    const Q: f64 = 0.025f32 as f64;

    /// The logged rate is the one the epoch ran with; patience 0 and 1 both reduce on the
    /// first epoch that does not improve (wait is incremented before the test).
    #[test]
    fn patience_zero_and_one_reduce_on_first_plateau() {
        let v = [1.0, 0.9, 0.95, 0.8, 0.85, 0.86];
        let want = vec![F, F, F, H, H, Q];
        assert_eq!(lrs(cfg(0), &v), want);
        assert_eq!(lrs(cfg(1), &v), want);
        assert_eq!(lrs(cfg(2), &v), vec![F, F, F, F, F, F]);
    }

    /// min_delta is used as given: in min mode the monitor must fall below best − min_delta.
    #[test]
    fn min_delta_margin() {
        let c = ReduceLROnPlateauConfig {
            min_delta: 0.2,
            ..cfg(1)
        };
        // 1.0 best; 0.9 not < 0.8: reduce; 0.5 < 0.8 improves.
        assert_eq!(lrs(c, &[1.0, 0.9, 0.5, 0.45]), vec![F, F, H, H]);
    }

    /// Cooldown: after a reduction, `cooldown` epochs pass with the wait held at 0; the
    /// counter is decremented before the improvement test of the same epoch.
    #[test]
    fn cooldown_holds_the_wait() {
        let c = ReduceLROnPlateauConfig {
            cooldown: 2,
            ..cfg(1)
        };
        // e1 reduces (cooldown 2); e2: counter → 1, still cooling; e3: counter → 0, wait 1
        // → reduce.
        assert_eq!(lrs(c, &[1.0, 2.0, 2.0, 2.0, 2.0]), vec![F, F, H, H, Q]);
    }

    /// min_lr bounds the rate, and a rate at the bound is left alone.
    #[test]
    fn min_lr_bound() {
        let c = ReduceLROnPlateauConfig {
            min_lr: 0.04,
            ..cfg(0)
        };
        let m = 0.04f32 as f64;
        assert_eq!(lrs(c, &[1.0, 2.0, 2.0, 2.0, 2.0]), vec![F, F, H, m, m]);
    }

    /// Auto mode maximizes names containing `acc` (ReduceLROnPlateau's own rule).
    #[test]
    fn auto_mode_and_factor() {
        let c = ReduceLROnPlateauConfig {
            monitor: "val_mean_acc_x".into(),
            ..cfg(0)
        };
        assert!(ReduceLROnPlateau::new(c).expect("ok").monitor.greater);
        assert!(ReduceLROnPlateau::new(ReduceLROnPlateauConfig {
            factor: 1.0,
            ..cfg(0)
        })
        .is_err());
        let c = ReduceLROnPlateauConfig {
            mode: Mode::Max,
            ..cfg(0)
        };
        assert_eq!(lrs(c, &[1.0, 2.0, 1.5]), vec![F, F, F]);
    }

    /// The scheduler sets the rate at epoch begin and logs it at epoch end.
    #[test]
    fn scheduler_sets_and_logs() {
        let mut cb = LearningRateScheduler::new(|epoch, lr| if epoch < 2 { lr } else { lr / 2.0 });
        let d = drive(&mut cb, "loss", &[1.0, 1.0, 1.0, 1.0]);
        let got: Vec<f64> = d.lrs.into_iter().map(|l| l.expect("lr")).collect();
        assert_eq!(got, vec![F, F, H, Q]);
        let mut bad = LearningRateScheduler::new(|_, _| f64::NAN);
        super::super::test_util::with_control(1, |ctl| {
            assert!(bad.on_epoch_begin(0, ctl).is_err());
        });
    }
}
