//! Training: Keras losses, regularizers, constraints, optimizers, learning-rate
//! schedules, `training_config` parsing, callbacks, a `fit` loop generic over how
//! gradients are computed, and `evaluate` — all matching tf-keras 2.21 (and the legacy / multi-backend optimizers
//! where a configuration asks for them).
//!
//! ```no_run
//! # use lcjit::train::*;
//! # fn demo(model: &lcjit::Model) -> lcjit::Result<()> {
//! if let Some(tc) = model.training_config() {
//!     let setup = parse_training_config(tc, "model.h5")?;
//!     let mut opt = Optimizer::new(setup.optimizer);
//! }
//! # Ok(()) }
//! ```

pub mod callbacks;
pub mod compiled_fit;
pub mod config;
pub mod evaluate;
pub mod fit;
pub mod loss;
pub mod metrics;
pub mod model_fit;
pub mod off_mask;
mod opt_parts;
pub mod optimizer;
pub mod regularize;
pub mod resume;
pub mod schedule;
pub mod step;
pub mod update;

pub use callbacks::{
    CSVLogger, Callback, Control, EarlyStopping, EarlyStoppingConfig, LearningRateScheduler, Mode,
    ModelCheckpoint, ModelCheckpointConfig, ReduceLROnPlateau, ReduceLROnPlateauConfig, SaveFreq,
    TerminateOnNaN,
};
pub use compiled_fit::fit_compiled;
pub use config::{
    parse_loss_arg, parse_metrics, parse_metrics_arg, parse_optimizer_arg, parse_training_config,
    TrainingSetup,
};
pub use evaluate::{
    evaluate, evaluate_batches, evaluate_batches_with, evaluate_compiled, BatchOutput,
    EvaluateOptions, Evaluator, Logs,
};
pub use fit::{
    epoch_orders, fit, FitOptions, History, ProgressSink, RandomnessFn, StepFns, StepOutput,
};
pub use loss::{Loss, OutputActivation};
pub use metrics::{Metric, MetricKind, MetricSnapshot, MetricState};
pub use model_fit::{check_trainable, fit_model};
pub use off_mask::{regularization_loss, OffMaskParams};
pub use optimizer::{Algorithm, Flavor, Optimizer, OptimizerConfig, OptimizerState};
pub use regularize::{apply_constraint, regularization, ParamTable};
pub use resume::{EpochAccumulators, Fingerprint, Resume, ResumeSlot, ResumeState};
pub use schedule::LearningRate;
pub use step::{StepModel, Trainer};
