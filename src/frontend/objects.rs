//! Keras objects nested in layer configurations: activations (by name or as layer
//! objects), initializers, regularizers and constraints, in every dialect
//! (keras-lc-semantics §4 and §8).
//!
//! Objects are accepted as strings (`"glorot_uniform"`, `"l2"`, `"max_norm"`), as
//! `{"class_name", "config"}` dicts with or without `module` / `registered_name`, and as
//! Keras 1 `{"name": …, <kwargs>}` dicts. Fan rules of variance-scaling initializers are
//! left to the initializer code: this module only produces typed values.

use serde_json::{Map, Value};

use super::value::{show, Cfg};
use super::Dialect;
use crate::error::Result;
use crate::graph::{Activation, Constraint, Distribution, FanMode, Initializer, Regularizer};

/// Lower-cases a Keras class or function name and drops underscores and a `V2` suffix,
/// so that `GlorotUniform`, `glorot_uniform` and `GlorotUniformV2` compare equal.
fn norm(name: &str) -> String {
    let n: String = name
        .chars()
        .filter(|c| *c != '_')
        .flat_map(char::to_lowercase)
        .collect();
    n.strip_suffix("v2").map(str::to_string).unwrap_or(n)
}

/// The class name and config object of an object dict (`{"class_name", "config"}`), or of a
/// Keras 1 dict (`{"name", <kwargs>}`, the dict itself being the config).
fn class_and_config<'a>(
    cfg: &Cfg<'a>,
    field: &str,
    v: &'a Value,
) -> Result<(&'a str, Option<&'a Map<String, Value>>)> {
    let obj = v.as_object().ok_or_else(|| {
        cfg.err(
            field,
            format!("expected a string or an object, got {}", show(v)),
        )
    })?;
    if let Some(c) = obj.get("class_name") {
        let class = cfg.string(field, c)?;
        let config = match obj.get("config") {
            None | Some(Value::Null) => None,
            Some(Value::Object(m)) => Some(m),
            Some(other) => {
                return Err(cfg.err(
                    field,
                    format!("config of {class} is not an object: {}", show(other)),
                ))
            }
        };
        Ok((class, config))
    } else if let Some(n) = obj.get("name") {
        Ok((cfg.string(field, n)?, Some(obj)))
    } else {
        Err(cfg.err(field, format!("object without class_name: {}", show(v))))
    }
}

// ---- activations -------------------------------------------------------------------------

/// An activation by its Keras function name (§8.4); `None`/`null` is linear.
pub fn activation_name(cfg: &Cfg, field: &str, name: &str) -> Result<Activation> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "linear" | "none" | "" => Activation::Linear,
        "relu" => Activation::Relu {
            alpha: 0.0,
            max_value: None,
            threshold: 0.0,
        },
        "sigmoid" => Activation::Sigmoid,
        "tanh" => Activation::Tanh,
        "softmax" | "softmax_v2" => Activation::Softmax { axis: -1 },
        "log_softmax" => Activation::LogSoftmax,
        "elu" => Activation::Elu { alpha: 1.0 },
        "selu" => Activation::Selu,
        "softplus" => Activation::Softplus,
        "softsign" => Activation::Softsign,
        "hard_sigmoid" => Activation::HardSigmoid,
        "exponential" => Activation::Exponential,
        "swish" | "silu" => Activation::Swish,
        "gelu" => Activation::Gelu { approximate: false },
        "relu6" => Activation::Relu6,
        "mish" => Activation::Mish,
        "leaky_relu" => Activation::LeakyRelu { alpha: 0.2 },
        _ => return Err(cfg.err(field, format!("unknown activation '{name}'"))),
    })
}

/// The activation of an activation-like layer class (`ReLU`, `LeakyReLU`, `ELU`,
/// `Softmax`, `Activation`) from its config. `Softmax`'s axis is returned as written
/// (Keras counting, batch axis included for non-negative values); the caller resolves it.
pub fn activation_layer(cfg: &Cfg, class: &str) -> Result<Option<Activation>> {
    Ok(Some(match class {
        "Activation" => match cfg.get("activation") {
            Some(v) => activation(cfg, "activation", Some(v))?,
            None => return Err(cfg.err("activation", "missing")),
        },
        "ReLU" => {
            let max_value = match cfg.get("max_value") {
                Some(v) => Some(cfg.float("max_value", v)?),
                None => None,
            };
            if let Some(m) = max_value {
                if m < 0.0 {
                    return Err(cfg.err("max_value", format!("{m} must be >= 0")));
                }
            }
            let alpha = match cfg.pick(&["negative_slope", "alpha"]) {
                Some((k, v)) => cfg.float(k, v)?,
                None => 0.0,
            };
            Activation::Relu {
                alpha,
                max_value,
                threshold: cfg.float_or("threshold", 0.0)?,
            }
        }
        "LeakyReLU" => {
            let alpha = match cfg.pick(&["alpha", "negative_slope"]) {
                Some((k, v)) => cfg.float(k, v)?,
                None => 0.3,
            };
            Activation::LeakyRelu { alpha }
        }
        "ELU" => Activation::Elu {
            alpha: cfg.float_or("alpha", 1.0)?,
        },
        "Softmax" => {
            let axis = match cfg.get("axis") {
                Some(v) => cfg.axis("axis", v)?,
                None => -1,
            };
            Activation::Softmax { axis }
        }
        _ => return Ok(None),
    }))
}

/// A layer's `activation` value: a name, `null` (linear), or a nested layer object such
/// as `{"class_name": "LeakyReLU", "config": {"alpha": 0.1}}`.
pub fn activation(cfg: &Cfg, field: &str, v: Option<&Value>) -> Result<Activation> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(Activation::Linear);
    };
    if let Some(name) = v.as_str() {
        return activation_name(cfg, field, name);
    }
    let (class, config) = class_and_config(cfg, field, v)?;
    if class == "function" {
        // Keras 3 style `{"class_name": "function", "config": "relu"}`.
        if let Some(name) = v.get("config").and_then(Value::as_str) {
            return activation_name(cfg, field, name);
        }
    }
    let sub = match config {
        Some(m) => cfg.with_map(m),
        None => Cfg::new(cfg.src, cfg.layer, None, cfg.dialect, cfg.version),
    };
    match activation_layer(&sub, class) {
        Ok(Some(Activation::Softmax { axis })) if axis != -1 => Err(cfg.err(
            field,
            format!("a Softmax activation object with axis {axis} is not supported (only -1)"),
        )),
        Ok(Some(a)) => Ok(a),
        Ok(None) => activation_name(cfg, field, class)
            .map_err(|_| cfg.err(field, format!("unknown activation object '{class}'"))),
        Err(e) => Err(e),
    }
}

// ---- initializers ------------------------------------------------------------------------

/// Distribution of a `VarianceScaling` "normal": uncorrected truncated normal for Keras
/// 2.0.x/2.1.x (multi-backend), untruncated for Keras 1, corrected truncated normal otherwise.
fn vs_normal(cfg: &Cfg) -> Distribution {
    match cfg.dialect {
        Dialect::Keras1 => Distribution::UntruncatedNormal,
        Dialect::Keras2 => match cfg.version {
            Some(v) if v.starts_with("2.0") || v.starts_with("2.1") => {
                Distribution::TruncatedNormalUncorrected
            }
            _ => Distribution::TruncatedNormal,
        },
        Dialect::TfKeras => Distribution::TruncatedNormal,
    }
}

fn vs(scale: f32, mode: FanMode, distribution: Distribution) -> Initializer {
    Initializer::VarianceScaling {
        scale,
        mode,
        distribution,
    }
}

/// An initializer by string or object (§8.1). Keras 1 names (`normal`, `uniform`,
/// untruncated `glorot_normal`/`he_normal`, `orthogonal` with gain 1.1) apply in the
/// Keras 1 dialect.
pub fn initializer(cfg: &Cfg, field: &str, v: &Value) -> Result<Initializer> {
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), None),
        _ => class_and_config(cfg, field, v)?,
    };
    let c = match config {
        Some(m) => cfg.with_map(m),
        None => Cfg::new(cfg.src, cfg.layer, None, cfg.dialect, cfg.version),
    };
    let sub = |k: &str| format!("{field}.{k}");
    let num = |k: &str, d: f32| -> Result<f32> {
        match c.get(k) {
            Some(x) => c.float(&sub(k), x),
            None => Ok(d),
        }
    };
    let k1 = cfg.dialect == Dialect::Keras1;
    let normal = vs_normal(cfg);
    let n = norm(class);
    Ok(match n.as_str() {
        "zeros" | "zero" => Initializer::Zeros,
        "ones" | "one" => Initializer::Ones,
        "constant" => Initializer::Constant(num("value", 0.0)?),
        "randomnormal" | "normal" => Initializer::RandomNormal {
            mean: num("mean", 0.0)?,
            stddev: num("stddev", if k1 { num("scale", 0.05)? } else { 0.05 })?,
        },
        "randomuniform" | "uniform" => {
            let s = num("scale", 0.05)?;
            Initializer::RandomUniform {
                minval: num("minval", -s)?,
                maxval: num("maxval", s)?,
            }
        }
        "truncatednormal" => Initializer::TruncatedNormal {
            mean: num("mean", 0.0)?,
            stddev: num("stddev", 0.05)?,
        },
        "glorotuniform" => vs(1.0, FanMode::FanAvg, Distribution::Uniform),
        "glorotnormal" => vs(1.0, FanMode::FanAvg, normal),
        "heuniform" => vs(2.0, FanMode::FanIn, Distribution::Uniform),
        "henormal" => vs(2.0, FanMode::FanIn, normal),
        "lecununiform" => vs(1.0, FanMode::FanIn, Distribution::Uniform),
        "lecunnormal" => vs(1.0, FanMode::FanIn, normal),
        "variancescaling" => {
            let scale = num("scale", 1.0)?;
            if scale <= 0.0 {
                return Err(cfg.err(&sub("scale"), format!("{scale} must be > 0")));
            }
            let mode = match c.get("mode") {
                None => FanMode::FanIn,
                Some(m) => match c.string(&sub("mode"), m)?.to_ascii_lowercase().as_str() {
                    "fan_in" => FanMode::FanIn,
                    "fan_out" => FanMode::FanOut,
                    "fan_avg" => FanMode::FanAvg,
                    other => return Err(cfg.err(&sub("mode"), format!("unknown mode '{other}'"))),
                },
            };
            let distribution = match c.get("distribution") {
                None => {
                    if cfg.dialect == Dialect::Keras2 {
                        normal
                    } else {
                        Distribution::TruncatedNormal
                    }
                }
                Some(d) => match c
                    .string(&sub("distribution"), d)?
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "normal" => normal,
                    "truncated_normal" => Distribution::TruncatedNormal,
                    "untruncated_normal" => Distribution::UntruncatedNormal,
                    "uniform" => Distribution::Uniform,
                    other => {
                        return Err(cfg.err(
                            &sub("distribution"),
                            format!("unknown distribution '{other}'"),
                        ))
                    }
                },
            };
            vs(scale, mode, distribution)
        }
        "orthogonal" => Initializer::Orthogonal {
            gain: num("gain", num("scale", if k1 { 1.1 } else { 1.0 })?)?,
        },
        "identity" => Initializer::Identity {
            gain: num("gain", num("scale", 1.0)?)?,
        },
        _ => return Err(cfg.err(field, format!("unknown initializer '{class}'"))),
    })
}

/// An initializer under the first present of `keys`, or `default`.
pub fn initializer_or(cfg: &Cfg, keys: &[&str], default: Initializer) -> Result<Initializer> {
    match cfg.pick(keys) {
        Some((k, v)) => initializer(cfg, k, v),
        None => Ok(default),
    }
}

// ---- regularizers ------------------------------------------------------------------------

/// A regularizer: `null` → none; strings `l1`, `l2`, `l1_l2`, Keras 1 `l1l2`,
/// `activity_l1`…; objects `L1`, `L2`, `L1L2`; Keras 1 `L1L2Regularizer`,
/// `WeightRegularizer`, `ActivityRegularizer`.
pub fn regularizer(cfg: &Cfg, field: &str, v: Option<&Value>) -> Result<Option<Regularizer>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), None),
        _ => class_and_config(cfg, field, v)?,
    };
    let from_string = config.is_none();
    let c = match config {
        Some(m) => cfg.with_map(m),
        None => Cfg::new(cfg.src, cfg.layer, None, cfg.dialect, cfg.version),
    };
    let num = |k: &str, d: f32| -> Result<f32> {
        let r = match c.get(k) {
            Some(x) => c.float(&format!("{field}.{k}"), x)?,
            None => d,
        };
        if r < 0.0 {
            return Err(cfg.err(field, format!("{k} = {r} must be >= 0")));
        }
        Ok(r)
    };
    let n = norm(class);
    let n = n.strip_prefix("activity").unwrap_or(&n);
    let d = if from_string { 0.01 } else { 0.0 };
    let r = match n {
        "l1" => Regularizer {
            l1: num("l1", num("l", 0.01)?)?,
            l2: 0.0,
        },
        "l2" => Regularizer {
            l1: 0.0,
            l2: num("l2", num("l", 0.01)?)?,
        },
        "l1l2" => Regularizer {
            l1: num("l1", d)?,
            l2: num("l2", d)?,
        },
        "l1l2regularizer" | "weightregularizer" | "regularizer" => Regularizer {
            l1: num("l1", 0.0)?,
            l2: num("l2", 0.0)?,
        },
        _ => return Err(cfg.err(field, format!("unknown regularizer '{class}'"))),
    };
    Ok(Some(r))
}

/// The regularizer under the first present of `keys`.
pub fn regularizer_at(cfg: &Cfg, keys: &[&str]) -> Result<Option<Regularizer>> {
    match cfg.pick(keys) {
        Some((k, v)) => regularizer(cfg, k, Some(v)),
        None => Ok(None),
    }
}

// ---- constraints -------------------------------------------------------------------------

/// A constraint: `null` → none; `MaxNorm`, `NonNeg`, `UnitNorm`, `MinMaxNorm`,
/// `RadialConstraint` by object or snake_case string, Keras 1 dicts (`m`, `low`, `high`).
pub fn constraint(cfg: &Cfg, field: &str, v: Option<&Value>) -> Result<Option<Constraint>> {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let (class, config) = match v {
        Value::String(s) => (s.as_str(), None),
        _ => class_and_config(cfg, field, v)?,
    };
    let c = match config {
        Some(m) => cfg.with_map(m),
        None => Cfg::new(cfg.src, cfg.layer, None, cfg.dialect, cfg.version),
    };
    let num = |keys: &[&str], d: f32| -> Result<f32> {
        match c.pick(keys) {
            Some((k, x)) => c.float(&format!("{field}.{k}"), x),
            None => Ok(d),
        }
    };
    let axis = || -> Result<Vec<i64>> {
        match c.get("axis") {
            Some(x) => c.axes(&format!("{field}.axis"), x),
            None => Ok(vec![0]),
        }
    };
    Ok(Some(match norm(class).as_str() {
        "maxnorm" => Constraint::MaxNorm {
            max_value: num(&["max_value", "m"], 2.0)?,
            axis: axis()?,
        },
        "nonneg" => Constraint::NonNeg,
        "unitnorm" => Constraint::UnitNorm { axis: axis()? },
        "minmaxnorm" => {
            let min_value = num(&["min_value", "low"], 0.0)?;
            let max_value = num(&["max_value", "high"], 1.0)?;
            if min_value > max_value {
                return Err(cfg.err(
                    field,
                    format!("min_value {min_value} > max_value {max_value}"),
                ));
            }
            Constraint::MinMaxNorm {
                min_value,
                max_value,
                rate: num(&["rate"], 1.0)?,
                axis: axis()?,
            }
        }
        "radialconstraint" => Constraint::Radial,
        _ => return Err(cfg.err(field, format!("unknown constraint '{class}'"))),
    }))
}

/// The constraint under the first present of `keys`.
pub fn constraint_at(cfg: &Cfg, keys: &[&str]) -> Result<Option<Constraint>> {
    match cfg.pick(keys) {
        Some((k, v)) => constraint(cfg, k, Some(v)),
        None => Ok(None),
    }
}
