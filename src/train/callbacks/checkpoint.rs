//! [`ModelCheckpoint`]: save the model or its weights during training (tf-keras 2.21).
//!
//! The path is a Python format string over `epoch` (1-based), `batch` (batch saving)
//! and the logged values (`w.{epoch:02d}-{val_loss:.4f}.h5`), formatted as
//! `str.format` does ([`super::format_path`]). With `save_best_only` a file is written
//! only when the monitor beats the best so far (no `min_delta`; mode `auto` maximizes
//! monitors containing `acc` or starting with `fmeasure`, ModelCheckpoint's own rule);
//! a missing monitor skips the save with a warning. Files are written by the trainer's
//! save function — the model's own writers, atomic, format by extension (`.h5`,
//! `.keras`, `.npz` for a model; `.h5`, `.npz` for weights) — and missing parent
//! directories are created, as Keras does.

use super::{format_path, required, Callback, CallbackState, Control, Logs, Mode, StateValue};
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// When [`ModelCheckpoint`] saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaveFreq {
    /// At the end of every epoch (Keras's `"epoch"`).
    Epoch,
    /// Every this many batches (Keras's integer `save_freq`).
    Batches(usize),
}

/// Arguments of [`ModelCheckpoint`], Keras's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelCheckpointConfig {
    /// Path pattern (Python `str.format` over `epoch`, `batch` and the logs).
    pub filepath: String,
    /// Quantity compared for `save_best_only` (default `val_loss`).
    pub monitor: String,
    /// Save only when the monitor improves.
    pub save_best_only: bool,
    /// Save the weights only (else the whole model).
    pub save_weights_only: bool,
    /// Direction of the monitor.
    pub mode: Mode,
    /// When to save.
    pub save_freq: SaveFreq,
    /// The value to beat before the first save (`initial_value_threshold`).
    pub initial_value_threshold: Option<f64>,
    /// Print each save.
    pub verbose: bool,
}

impl ModelCheckpointConfig {
    /// Keras's defaults for `filepath`.
    pub fn new(filepath: impl Into<String>) -> Self {
        ModelCheckpointConfig {
            filepath: filepath.into(),
            monitor: "val_loss".into(),
            save_best_only: false,
            save_weights_only: false,
            mode: Mode::Auto,
            save_freq: SaveFreq::Epoch,
            initial_value_threshold: None,
            verbose: false,
        }
    }
}

/// Keras's `ModelCheckpoint` callback.
#[derive(Clone, Debug)]
pub struct ModelCheckpoint {
    /// The arguments.
    pub config: ModelCheckpointConfig,
    greater: bool,
    best: f64,
    epoch: usize,
    batches_since_save: usize,
    last_batch: Option<usize>,
    warned: bool,
    saved: Vec<PathBuf>,
}

impl ModelCheckpoint {
    /// The callback for `config`. The pattern's extension must be one the model writers
    /// know (checked now rather than after the first epoch); `Batches(0)` is refused.
    pub fn new(config: ModelCheckpointConfig) -> Result<Self> {
        let ext = Path::new(&config.filepath)
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let known: &[&str] = if config.save_weights_only {
            &["h5", "hdf5", "npz"]
        } else {
            &["h5", "hdf5", "keras", "npz"]
        };
        if !known.contains(&ext.as_str()) {
            return Err(Error::UnsupportedFile {
                path: PathBuf::from(&config.filepath),
                expected: if config.save_weights_only {
                    ".h5 or .npz (checkpoint with save_weights_only)"
                } else {
                    ".h5, .keras or .npz (checkpoint)"
                },
            });
        }
        if config.save_freq == SaveFreq::Batches(0) {
            return Err(Error::Usage {
                detail: "ModelCheckpoint: save_freq must be at least 1 batch".into(),
            });
        }
        let m = &config.monitor;
        let greater = match config.mode {
            Mode::Min => false,
            Mode::Max => true,
            Mode::Auto => m.contains("acc") || m.starts_with("fmeasure"),
        };
        let worst = if greater {
            f64::NEG_INFINITY
        } else {
            f64::INFINITY
        };
        Ok(ModelCheckpoint {
            best: config.initial_value_threshold.unwrap_or(worst),
            config,
            greater,
            epoch: 0,
            batches_since_save: 0,
            last_batch: None,
            warned: false,
            saved: Vec::new(),
        })
    }

    /// Every file written so far, in order.
    pub fn saved(&self) -> &[PathBuf] {
        &self.saved
    }

    /// The best monitored value seen (`save_best_only`).
    pub fn best(&self) -> f64 {
        self.best
    }

    fn save(
        &mut self,
        epoch: usize,
        batch: Option<usize>,
        logs: &Logs,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        let path = PathBuf::from(format_path(
            &self.config.filepath,
            epoch + 1,
            batch.map(|b| b + 1),
            logs,
        )?);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        if path.is_dir() {
            return Err(Error::Usage {
                detail: format!(
                    "Please specify a non-directory filepath for ModelCheckpoint. Filepath used \
                     is an existing directory: {}",
                    path.display()
                ),
            });
        }
        let verbose = self.config.verbose;
        if self.config.save_best_only {
            let Some(current) = logs.get(&self.config.monitor) else {
                if !self.warned {
                    self.warned = true;
                    ctl.warn(format!(
                        "Can save best model only with {} available, skipping. Available \
                         metrics are: {}",
                        self.config.monitor,
                        logs.key_list()
                    ));
                }
                return Ok(());
            };
            let better = if self.greater {
                current > self.best
            } else {
                current < self.best
            };
            if !better {
                if verbose {
                    eprintln!(
                        "\nEpoch {}: {} did not improve from {:.5}",
                        epoch + 1,
                        self.config.monitor,
                        self.best
                    );
                }
                return Ok(());
            }
            if verbose {
                eprintln!(
                    "\nEpoch {}: {} improved from {:.5} to {current:.5}, saving model to {}",
                    epoch + 1,
                    self.config.monitor,
                    self.best,
                    path.display()
                );
            }
            self.best = current;
        } else if verbose {
            eprintln!("\nEpoch {}: saving model to {}", epoch + 1, path.display());
        }
        ctl.save(&path, self.config.save_weights_only)?;
        self.saved.push(path);
        Ok(())
    }
}

impl Callback for ModelCheckpoint {
    fn export_state(&self) -> Option<CallbackState> {
        let mut s = CallbackState::new("ModelCheckpoint");
        s.set("config", StateValue::Text(format!("{:?}", self.config)))
            .set("best", StateValue::Float(self.best))
            .set("epoch", StateValue::Count(self.epoch as u64))
            .set(
                "batches_since_save",
                StateValue::Count(self.batches_since_save as u64),
            )
            .set(
                "last_batch",
                self.last_batch
                    .map_or(StateValue::Absent, |b| StateValue::Count(b as u64)),
            )
            .set("warned", StateValue::Flag(self.warned))
            .set(
                "saved",
                StateValue::Texts(
                    self.saved
                        .iter()
                        .map(|p| p.to_string_lossy().into_owned())
                        .collect(),
                ),
            );
        Some(s)
    }

    fn on_train_resume(
        &mut self,
        state: Option<&CallbackState>,
        _ctl: &mut Control<'_>,
    ) -> Result<()> {
        let s = required(state, "ModelCheckpoint")?;
        s.expect_config(&format!("{:?}", self.config))?;
        let best = s.float("best")?;
        let epoch = s.count("epoch")?;
        let since = s.count("batches_since_save")?;
        let last_batch = s.opt_count("last_batch")?;
        let warned = s.flag("warned")?;
        let saved = s.opt_texts("saved")?.unwrap_or_default();
        self.best = best;
        self.epoch = epoch;
        self.batches_since_save = since;
        self.last_batch = last_batch;
        self.warned = warned;
        self.saved = saved.iter().map(PathBuf::from).collect();
        Ok(())
    }

    fn on_epoch_begin(&mut self, epoch: usize, _ctl: &mut Control<'_>) -> Result<()> {
        self.epoch = epoch;
        Ok(())
    }

    fn on_train_batch_end(
        &mut self,
        batch: usize,
        logs: &Logs,
        ctl: &mut Control<'_>,
    ) -> Result<()> {
        let SaveFreq::Batches(n) = self.config.save_freq else {
            return Ok(());
        };
        // Keras's _should_save_on_batch: a batch index not above the last one starts a
        // new epoch.
        let add = match self.last_batch {
            Some(last) if batch > last => batch - last,
            _ => batch + 1,
        };
        self.batches_since_save += add;
        self.last_batch = Some(batch);
        if self.batches_since_save >= n {
            self.batches_since_save = 0;
            self.save(self.epoch, Some(batch), logs, ctl)?;
        }
        Ok(())
    }

    fn on_epoch_end(&mut self, epoch: usize, logs: &mut Logs, ctl: &mut Control<'_>) -> Result<()> {
        if self.config.save_freq == SaveFreq::Epoch {
            self.save(epoch, None, logs, ctl)?;
        }
        Ok(())
    }
}
