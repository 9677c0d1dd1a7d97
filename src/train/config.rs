//! Training configuration: Keras `training_config` (legacy `.h5`) and `compile_config`
//! (`.keras`) JSON to [`OptimizerConfig`], [`Loss`] and metrics, plus the strings the
//! command line passes (`--optimizer NAME|JSON`, `--loss NAME`).
//!
//! Optimizer flavour: `is_legacy_optimizer: false` → tf-keras rules; `true` → legacy
//! `optimizer_v2`; key absent → multi-backend Keras 1/2.0–2.3 if the config has `lr`,
//! else legacy: tf.keras ≤ 2.10 files, and tf-keras ≥ 2.11's
//! `keras.optimizers.legacy.*`, whose `get_config` writes no such key (tf-keras's own
//! `optimizers.deserialize` reads a missing key as legacy, `optimizers/__init__.py`). Unknown names and unsupported options (`use_ema`,
//! several outputs, a non-default reduction) are [`Error::Config`] naming the field.

use super::loss::Loss;
use super::metrics::Metric;
use super::optimizer::{Algorithm, Flavor, OptimizerConfig};
use super::schedule::LearningRate;
use crate::error::{Error, Result};
use serde_json::Value;

/// What `compile()` set up.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingSetup {
    /// The optimizer.
    pub optimizer: OptimizerConfig,
    /// The loss.
    pub loss: Loss,
    /// Metrics, resolved against the loss (`accuracy` → its concrete kind).
    pub metrics: Vec<Metric>,
}

fn cfg_err(source: &str, field: &str, detail: impl std::fmt::Display) -> Error {
    Error::Config {
        source_name: source.to_string(),
        detail: format!("field '{field}': {detail}"),
    }
}

/// Parses a `training_config` or `compile_config` value.
pub fn parse_training_config(v: &Value, source: &str) -> Result<TrainingSetup> {
    let opt = v
        .get("optimizer_config")
        .or_else(|| v.get("optimizer"))
        .ok_or_else(|| cfg_err(source, "optimizer_config", "missing"))?;
    let optimizer = parse_optimizer_value(opt, source)?;
    let loss_v = v
        .get("loss")
        .ok_or_else(|| cfg_err(source, "loss", "missing"))?;
    let loss = parse_loss_value(loss_v, source)?;
    if let Some(w) = v.get("loss_weights").filter(|w| !w.is_null()) {
        let single = w.as_f64().map(|x| x == 1.0).unwrap_or(false)
            || w.as_array()
                .map(|a| a.len() == 1 && a[0].as_f64() == Some(1.0))
                .unwrap_or(false);
        if !single {
            return Err(cfg_err(source, "loss_weights", format!("unsupported: {w}")));
        }
    }
    let metrics = parse_metrics(v, source)?;
    Ok(TrainingSetup {
        optimizer,
        loss,
        metrics,
    })
}

/// The metrics of a `training_config` / `compile_config`: `metrics` then
/// `weighted_metrics` (without sample weights they compute the same; a weighted metric
/// whose name is taken is logged as `weighted_<name>`, as `compile_utils` renames it), each
/// a string or a serialized metric, nested per output as `.h5` files store them.
pub fn parse_metrics(v: &Value, source: &str) -> Result<Vec<Metric>> {
    let mut metrics = Vec::new();
    if let Some(m) = v.get("metrics") {
        collect_metrics(m, source, &mut metrics)?;
    }
    let mut weighted = Vec::new();
    if let Some(m) = v.get("weighted_metrics") {
        collect_metrics(m, source, &mut weighted)?;
    }
    for w in weighted {
        let w = if metrics.iter().any(|m| m.name() == w.name()) {
            Metric::new(format!("weighted_{}", w.name()), w.kind().clone())
        } else {
            w
        };
        metrics.push(w);
    }
    for (i, m) in metrics.iter().enumerate() {
        if metrics[..i].iter().any(|o| o.name() == m.name()) {
            return Err(cfg_err(
                source,
                "metrics",
                format!("two metrics are named '{}'", m.name()),
            ));
        }
    }
    Ok(metrics)
}

/// Parses the `--metrics m1,m2` option (Keras metric names, see
/// [`super::metrics::KNOWN_NAMES`]).
pub fn parse_metrics_arg(s: &str) -> Result<Vec<Metric>> {
    let metrics = s
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(Metric::parse_arg)
        .collect::<Result<Vec<_>>>()?;
    for (i, m) in metrics.iter().enumerate() {
        if metrics[..i].iter().any(|o| o.name() == m.name()) {
            return Err(Error::Usage {
                detail: format!("--metrics: '{}' is given twice", m.name()),
            });
        }
    }
    Ok(metrics)
}

fn collect_metrics(m: &Value, source: &str, out: &mut Vec<Metric>) -> Result<()> {
    match m {
        Value::Null => Ok(()),
        Value::Array(items) => items
            .iter()
            .try_for_each(|x| collect_metrics(x, source, out)),
        // One output's metrics keyed by output name (a single-output model).
        Value::Object(o) if !o.contains_key("class_name") && o.len() == 1 => {
            collect_metrics(o.values().next().unwrap_or(&Value::Null), source, out)
        }
        other => {
            out.push(Metric::from_config(other).map_err(|e| cfg_err(source, "metrics", e))?);
            Ok(())
        }
    }
}

/// Parses a loss: a name (`"mse"`, `"categorical_crossentropy"`…) or a serialized loss
/// object `{"class_name": "BinaryCrossentropy", "config": {"from_logits": …}}`.
pub fn parse_loss_value(v: &Value, source: &str) -> Result<Loss> {
    match v {
        Value::String(s) => loss_by_name(s, &Value::Null)
            .ok_or_else(|| cfg_err(source, "loss", format!("unknown loss '{s}'"))),
        Value::Object(o) if o.contains_key("class_name") => {
            let class = o.get("class_name").and_then(Value::as_str).unwrap_or("");
            let c = o.get("config").unwrap_or(&Value::Null);
            if let Some(r) = c.get("reduction").and_then(Value::as_str) {
                if !matches!(r, "auto" | "sum_over_batch_size") {
                    return Err(cfg_err(
                        source,
                        "loss.reduction",
                        format!("unsupported reduction '{r}'"),
                    ));
                }
            }
            if let Some(a) = c.get("axis").and_then(Value::as_i64) {
                if a != -1 {
                    return Err(cfg_err(
                        source,
                        "loss.axis",
                        format!("unsupported axis {a} (only -1)"),
                    ));
                }
            }
            loss_by_name(class, c)
                .ok_or_else(|| cfg_err(source, "loss", format!("unknown loss class '{class}'")))
        }
        Value::Object(o) if o.len() == 1 => {
            parse_loss_value(o.values().next().unwrap_or(&Value::Null), source)
        }
        Value::Array(a) if a.len() == 1 => parse_loss_value(&a[0], source),
        other => Err(cfg_err(
            source,
            "loss",
            format!("unsupported (several outputs?): {other}"),
        )),
    }
}

/// Parses the `--loss NAME` option.
pub fn parse_loss_arg(s: &str) -> Result<Loss> {
    let t = s.trim();
    if t.starts_with('{') {
        let v: Value = serde_json::from_str(t).map_err(|e| cfg_err("--loss", "loss", e))?;
        return parse_loss_value(&v, "--loss");
    }
    parse_loss_value(&Value::String(t.to_string()), "--loss")
}

fn loss_by_name(name: &str, c: &Value) -> Option<Loss> {
    let f = |k: &str, d: f32| {
        c.get(k)
            .and_then(Value::as_f64)
            .map(|x| x as f32)
            .unwrap_or(d)
    };
    let b = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let key: String = name
        .rsplit('>')
        .next()
        .unwrap_or(name)
        .to_ascii_lowercase()
        .replace('_', "");
    Some(match key.as_str() {
        "mse" | "meansquarederror" => Loss::MeanSquaredError,
        "mae" | "meanabsoluteerror" => Loss::MeanAbsoluteError,
        "mape" | "meanabsolutepercentageerror" => Loss::MeanAbsolutePercentageError,
        "msle" | "meansquaredlogarithmicerror" => Loss::MeanSquaredLogarithmicError,
        "huber" | "huberloss" => Loss::Huber {
            delta: f("delta", 1.0),
        },
        "logcosh" => Loss::LogCosh,
        "binarycrossentropy" | "bce" => Loss::BinaryCrossentropy {
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing", 0.0),
        },
        "categoricalcrossentropy" | "cce" => Loss::CategoricalCrossentropy {
            from_logits: b("from_logits"),
            label_smoothing: f("label_smoothing", 0.0),
        },
        "sparsecategoricalcrossentropy" => Loss::SparseCategoricalCrossentropy {
            from_logits: b("from_logits"),
        },
        "kld" | "kldivergence" | "kullbackleiblerdivergence" => Loss::KlDivergence,
        "poisson" => Loss::Poisson,
        "cosinesimilarity" | "cosineproximity" => Loss::CosineSimilarity,
        "hinge" => Loss::Hinge,
        "squaredhinge" => Loss::SquaredHinge,
        "categoricalhinge" => Loss::CategoricalHinge,
        _ => return None,
    })
}

/// Parses the `--optimizer NAME|JSON` option: a Keras string name (tf-keras defaults) or
/// JSON, either `{"class_name": …, "config": {…}}` or a flat config with `name`.
pub fn parse_optimizer_arg(s: &str) -> Result<OptimizerConfig> {
    let t = s.trim();
    if t.starts_with('{') {
        let v: Value =
            serde_json::from_str(t).map_err(|e| cfg_err("--optimizer", "optimizer", e))?;
        return parse_optimizer_value(&v, "--optimizer");
    }
    let v = serde_json::json!({"class_name": t, "config": {"is_legacy_optimizer": false}});
    parse_optimizer_value(&v, "--optimizer")
}

/// Parses a serialized optimizer (`optimizer_config` of a training config).
pub fn parse_optimizer_value(v: &Value, source: &str) -> Result<OptimizerConfig> {
    let (class, c) = match v.get("class_name").and_then(Value::as_str) {
        Some(class) => (
            class.to_string(),
            v.get("config").cloned().unwrap_or(Value::Null),
        ),
        None => {
            let name = v
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| cfg_err(source, "optimizer", "no 'class_name' or 'name'"))?;
            (name.to_string(), v.clone())
        }
    };
    let class = class.rsplit('>').next().unwrap_or(&class).to_string();
    let flavor = match c.get("is_legacy_optimizer").and_then(Value::as_bool) {
        Some(false) => Flavor::TfKeras,
        Some(true) => Flavor::Legacy,
        None if c.get("lr").is_some() => Flavor::MultiBackend,
        None => Flavor::Legacy,
    };
    let field = |k: &str| format!("optimizer.{k}");
    let num = |k: &str, d: f32| -> Result<f32> {
        match c.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(x) => x
                .as_f64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                .map(|x| x as f32)
                .ok_or_else(|| cfg_err(source, &field(k), format!("not a number: {x}"))),
        }
    };
    let opt_num = |k: &str| -> Result<Option<f32>> {
        match c.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => num(k, 0.0).map(Some),
        }
    };
    let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    if flag("use_ema") {
        return Err(cfg_err(
            source,
            "optimizer.use_ema",
            "exponential moving average of weights is not supported",
        ));
    }
    let key = class.to_ascii_lowercase();
    let eps = num("epsilon", 1e-7)?;
    let (algorithm, default_lr) = match key.as_str() {
        "sgd" => (
            Algorithm::Sgd {
                momentum: num("momentum", 0.0)?,
                nesterov: flag("nesterov"),
            },
            0.01,
        ),
        "adam" | "adamw" if flag("adaptive_epsilon") => {
            // `epsilon · sqrt(1 − β2^t)` (tf_keras/src/optimizers/adam.py): tf-keras
            // never writes the flag into a saved config, so only a hand-written one has it.
            return Err(cfg_err(
                source,
                "optimizer.adaptive_epsilon",
                "Adam's adaptive epsilon is not supported",
            ));
        }
        "adam" | "adamw" => (
            Algorithm::Adam {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: eps,
                amsgrad: flag("amsgrad"),
            },
            0.001,
        ),
        "adamax" => (
            Algorithm::Adamax {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: eps,
            },
            // 0.002 is Keras 2's default; tf-keras's and optimizer_v2's is 0.001
            // (legacy/adamax.py, legacy/nadam.py `__init__`).
            if flavor == Flavor::MultiBackend {
                0.002
            } else {
                0.001
            },
        ),
        "nadam" => (
            Algorithm::Nadam {
                beta_1: num("beta_1", 0.9)?,
                beta_2: num("beta_2", 0.999)?,
                epsilon: eps,
                // tf-keras ≥ 2.11 has no schedule decay (`0.96^t`). optimizer_v2 writes
                // its schedule decay as `decay`, but its constructor replaces any
                // `decay` with `kwargs.pop("schedule_decay", 0.004)`
                // (`legacy/nadam.py`, `__init__`), so a loaded config runs with
                // `schedule_decay` or 0.004, never with `decay`; Keras 2 writes
                // `schedule_decay`.
                schedule_decay: if flavor == Flavor::TfKeras {
                    1.0
                } else {
                    num("schedule_decay", 0.004)?
                },
            },
            if flavor == Flavor::MultiBackend {
                0.002
            } else {
                0.001
            },
        ),
        "rmsprop" => (
            Algorithm::RmsProp {
                rho: num("rho", 0.9)?,
                momentum: num("momentum", 0.0)?,
                epsilon: eps,
                centered: flag("centered"),
            },
            0.001,
        ),
        "adagrad" => (
            Algorithm::Adagrad {
                initial_accumulator_value: num("initial_accumulator_value", 0.1)?,
                epsilon: eps,
            },
            if flavor == Flavor::MultiBackend {
                0.01
            } else {
                0.001
            },
        ),
        "adadelta" => (
            Algorithm::Adadelta {
                rho: num("rho", 0.95)?,
                epsilon: eps,
            },
            if flavor == Flavor::MultiBackend {
                1.0
            } else {
                0.001
            },
        ),
        "ftrl" => {
            let p = num("learning_rate_power", -0.5)?;
            let nonneg = |k: &str, d: f32| -> Result<f32> {
                let v = num(k, d)?;
                if v >= 0.0 {
                    Ok(v)
                } else {
                    // Keras's constructor refuses these too (ftrl.py `__init__`).
                    Err(cfg_err(source, &field(k), format!("must be ≥ 0, got {v}")))
                }
            };
            if p > 0.0 {
                return Err(cfg_err(
                    source,
                    "optimizer.learning_rate_power",
                    format!("must be ≤ 0, got {p}"),
                ));
            }
            (
                Algorithm::Ftrl {
                    learning_rate_power: p,
                    initial_accumulator_value: nonneg("initial_accumulator_value", 0.1)?,
                    l1: nonneg("l1_regularization_strength", 0.0)?,
                    l2: nonneg("l2_regularization_strength", 0.0)?,
                    l2_shrinkage: nonneg("l2_shrinkage_regularization_strength", 0.0)?,
                    beta: nonneg("beta", 0.0)?,
                },
                0.001,
            )
        }
        _ => {
            return Err(cfg_err(
                source,
                "optimizer.class_name",
                format!("unknown optimizer '{class}'"),
            ))
        }
    };
    let learning_rate = match c.get("learning_rate").or_else(|| c.get("lr")) {
        None | Some(Value::Null) => LearningRate::Constant(default_lr),
        Some(x) => LearningRate::from_json(x, source)?,
    };
    let mut weight_decay = opt_num("weight_decay")?;
    if key == "adamw" && weight_decay.is_none() {
        weight_decay = Some(0.004);
    }
    let clipnorm = opt_num("clipnorm")?;
    let global_clipnorm = opt_num("global_clipnorm")?;
    if clipnorm.is_some() && global_clipnorm.is_some() {
        return Err(cfg_err(
            source,
            "optimizer.clipnorm",
            "at most one of clipnorm and global_clipnorm",
        ));
    }
    Ok(OptimizerConfig {
        name: class.clone(),
        algorithm,
        learning_rate,
        flavor,
        clipnorm,
        clipvalue: opt_num("clipvalue")?,
        global_clipnorm,
        weight_decay: if flavor == Flavor::TfKeras {
            weight_decay
        } else {
            None
        },
        decay: if key == "nadam" {
            0.0
        } else {
            num("decay", 0.0)?
        },
    })
}
