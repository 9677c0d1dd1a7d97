//! Keras metric names: the strings `keras.metrics.get` accepts (module-level functions and
//! their aliases, logged under the string itself; classes, logged under their default
//! name) and serialized metric objects (`{"class_name", "config"}` with `config.name`).
//!
//! Spellings are case-sensitive as Keras's module lookup is, except `accuracy`/`acc` and
//! `crossentropy`/`ce`, which `compile_utils` matches in any case. `'auc'` is an lcjit
//! alias of the `AUC` class (tf-keras rejects the lower-case string).

use super::auc::{AucConfig, AucCurve, AucSummation};
use super::{Metric, MetricKind};
use crate::train::loss::Loss;
use serde_json::Value;

/// Every metric string lcjit accepts.
pub const KNOWN_NAMES: &[&str] = &[
    "accuracy",
    "acc",
    "crossentropy",
    "ce",
    "binary_accuracy",
    "categorical_accuracy",
    "sparse_categorical_accuracy",
    "top_k_categorical_accuracy",
    "sparse_top_k_categorical_accuracy",
    "mae",
    "mean_absolute_error",
    "mse",
    "mean_squared_error",
    "mape",
    "mean_absolute_percentage_error",
    "msle",
    "mean_squared_logarithmic_error",
    "cosine_similarity",
    "cosine_proximity",
    "logcosh",
    "log_cosh",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "kullback_leibler_divergence",
    "poisson",
    "hinge",
    "squared_hinge",
    "categorical_hinge",
    "auc",
    "AUC",
    "Accuracy",
    "BinaryAccuracy",
    "CategoricalAccuracy",
    "SparseCategoricalAccuracy",
    "TopKCategoricalAccuracy",
    "SparseTopKCategoricalAccuracy",
    "MeanAbsoluteError",
    "MeanSquaredError",
    "RootMeanSquaredError",
    "MeanAbsolutePercentageError",
    "MeanSquaredLogarithmicError",
    "CosineSimilarity",
    "LogCoshError",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "KLDivergence",
    "Poisson",
    "Hinge",
    "SquaredHinge",
    "CategoricalHinge",
];

const BCE: Loss = Loss::BinaryCrossentropy {
    from_logits: false,
    label_smoothing: 0.0,
};
const CCE: Loss = Loss::CategoricalCrossentropy {
    from_logits: false,
    label_smoothing: 0.0,
};
const SCCE: Loss = Loss::SparseCategoricalCrossentropy { from_logits: false };

/// A metric function of `keras.metrics` by its name or alias (also the `fn` of a
/// serialized `MeanMetricWrapper`).
fn function(name: &str) -> Option<MetricKind> {
    use MetricKind as K;
    Some(match name {
        "accuracy" => K::Equal,
        "binary_accuracy" => K::BinaryAccuracy { threshold: 0.5 },
        "categorical_accuracy" => K::CategoricalAccuracy,
        "sparse_categorical_accuracy" => K::SparseCategoricalAccuracy,
        "top_k_categorical_accuracy" => K::TopKCategoricalAccuracy { k: 5 },
        "sparse_top_k_categorical_accuracy" => K::SparseTopKCategoricalAccuracy { k: 5 },
        "mae" | "MAE" | "mean_absolute_error" => K::Mean(Loss::MeanAbsoluteError),
        "mse" | "MSE" | "mean_squared_error" => K::Mean(Loss::MeanSquaredError),
        "mape" | "MAPE" | "mean_absolute_percentage_error" => {
            K::Mean(Loss::MeanAbsolutePercentageError)
        }
        "msle" | "MSLE" | "mean_squared_logarithmic_error" => {
            K::Mean(Loss::MeanSquaredLogarithmicError)
        }
        "cosine_similarity" | "cosine_proximity" => K::CosineSimilarity,
        "logcosh" | "log_cosh" => K::Mean(Loss::LogCosh),
        "binary_crossentropy" => K::Mean(BCE),
        "categorical_crossentropy" => K::Mean(CCE),
        "sparse_categorical_crossentropy" => K::Mean(SCCE),
        // `kl_divergence` is what tf-keras writes as the `fn` of 'kullback_leibler_divergence'.
        "kullback_leibler_divergence" | "kl_divergence" => K::Mean(Loss::KlDivergence),
        "poisson" => K::Mean(Loss::Poisson),
        "hinge" => K::Mean(Loss::Hinge),
        "squared_hinge" => K::Mean(Loss::SquaredHinge),
        "categorical_hinge" => K::Mean(Loss::CategoricalHinge),
        _ => return None,
    })
}

/// A metric string (`keras.metrics.get` semantics, see the module doc).
pub(super) fn by_string(name: &str) -> Option<Metric> {
    let lower = name.to_ascii_lowercase();
    if matches!(lower.as_str(), "accuracy" | "acc") {
        return Some(Metric::new(name, MetricKind::Accuracy));
    }
    if matches!(lower.as_str(), "crossentropy" | "ce") {
        return Some(Metric::new(name, MetricKind::Crossentropy));
    }
    if let Some(kind) = function(name) {
        return Some(Metric::new(name, kind));
    }
    if name == "auc" {
        return Some(Metric::new("auc", MetricKind::Auc(AucConfig::default())));
    }
    class(name, &Value::Null).ok().flatten()
}

/// A metric class with its config (`Ok(None)`: not a class lcjit knows), logged under
/// `config.name` or the class's default name.
fn class(class_name: &str, c: &Value) -> Result<Option<Metric>, String> {
    use MetricKind as K;
    let num = |k: &str, d: f64| c.get(k).and_then(Value::as_f64).unwrap_or(d);
    let flag = |k: &str| c.get(k).and_then(Value::as_bool).unwrap_or(false);
    let k_of = || -> Result<usize, String> {
        let k = num("k", 5.0);
        if k >= 1.0 && k.fract() == 0.0 {
            Ok(k as usize)
        } else {
            Err(format!("'k' must be a positive integer, found {k}"))
        }
    };
    let (default, kind) = match class_name {
        "Accuracy" => ("accuracy", K::Equal),
        "BinaryAccuracy" => (
            "binary_accuracy",
            K::BinaryAccuracy {
                threshold: num("threshold", 0.5) as f32,
            },
        ),
        "CategoricalAccuracy" => ("categorical_accuracy", K::CategoricalAccuracy),
        "SparseCategoricalAccuracy" => {
            ("sparse_categorical_accuracy", K::SparseCategoricalAccuracy)
        }
        "TopKCategoricalAccuracy" => (
            "top_k_categorical_accuracy",
            K::TopKCategoricalAccuracy { k: k_of()? },
        ),
        "SparseTopKCategoricalAccuracy" => (
            "sparse_top_k_categorical_accuracy",
            K::SparseTopKCategoricalAccuracy { k: k_of()? },
        ),
        "MeanAbsoluteError" => ("mean_absolute_error", K::Mean(Loss::MeanAbsoluteError)),
        "MeanSquaredError" => ("mean_squared_error", K::Mean(Loss::MeanSquaredError)),
        "RootMeanSquaredError" => ("root_mean_squared_error", K::RootMeanSquaredError),
        "MeanAbsolutePercentageError" => (
            "mean_absolute_percentage_error",
            K::Mean(Loss::MeanAbsolutePercentageError),
        ),
        "MeanSquaredLogarithmicError" => (
            "mean_squared_logarithmic_error",
            K::Mean(Loss::MeanSquaredLogarithmicError),
        ),
        "CosineSimilarity" => {
            let axis = num("axis", -1.0);
            if axis != -1.0 {
                return Err(format!(
                    "CosineSimilarity: only axis -1 is supported, found {axis}"
                ));
            }
            ("cosine_similarity", K::CosineSimilarity)
        }
        "LogCoshError" => ("logcosh", K::Mean(Loss::LogCosh)),
        "BinaryCrossentropy" => (
            "binary_crossentropy",
            K::Mean(Loss::BinaryCrossentropy {
                from_logits: flag("from_logits"),
                label_smoothing: num("label_smoothing", 0.0) as f32,
            }),
        ),
        "CategoricalCrossentropy" => (
            "categorical_crossentropy",
            K::Mean(Loss::CategoricalCrossentropy {
                from_logits: flag("from_logits"),
                label_smoothing: num("label_smoothing", 0.0) as f32,
            }),
        ),
        "SparseCategoricalCrossentropy" => {
            if c.get("ignore_class").is_some_and(|v| !v.is_null()) {
                return Err(
                    "SparseCategoricalCrossentropy: 'ignore_class' is not supported".into(),
                );
            }
            (
                "sparse_categorical_crossentropy",
                K::Mean(Loss::SparseCategoricalCrossentropy {
                    from_logits: flag("from_logits"),
                }),
            )
        }
        "KLDivergence" => ("kullback_leibler_divergence", K::Mean(Loss::KlDivergence)),
        "Poisson" => ("poisson", K::Mean(Loss::Poisson)),
        "Hinge" => ("hinge", K::Mean(Loss::Hinge)),
        "SquaredHinge" => ("squared_hinge", K::Mean(Loss::SquaredHinge)),
        "CategoricalHinge" => ("categorical_hinge", K::Mean(Loss::CategoricalHinge)),
        "AUC" => ("auc", K::Auc(auc_config(c)?)),
        _ => return Ok(None),
    };
    let name = c.get("name").and_then(Value::as_str).unwrap_or(default);
    Ok(Some(Metric::new(name, kind)))
}

/// The options of a serialized `AUC`.
fn auc_config(c: &Value) -> Result<AucConfig, String> {
    let d = AucConfig::default();
    if c.get("multi_label").and_then(Value::as_bool) == Some(true) {
        return Err("AUC: multi_label=True is not supported".into());
    }
    if c.get("label_weights").is_some_and(|v| !v.is_null()) {
        return Err("AUC: label_weights are not supported".into());
    }
    let curve = match c.get("curve").and_then(Value::as_str) {
        None => d.curve,
        Some(s) => AucCurve::parse(s).ok_or_else(|| format!("AUC: unknown curve '{s}'"))?,
    };
    let summation = match c.get("summation_method").and_then(Value::as_str) {
        None => d.summation,
        Some(s) => {
            AucSummation::parse(s).ok_or_else(|| format!("AUC: unknown summation_method '{s}'"))?
        }
    };
    let thresholds = match c.get("thresholds") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| {
                    v.as_f64()
                        .ok_or_else(|| format!("AUC: threshold {v} is not a number"))
                })
                .collect::<Result<Vec<f64>, String>>()?,
        ),
        Some(v) => return Err(format!("AUC: thresholds must be a list, found {v}")),
    };
    let num_thresholds = match c.get("num_thresholds") {
        None | Some(Value::Null) => d.num_thresholds,
        Some(v) => match v.as_u64() {
            Some(n) if n > 1 => n as usize,
            _ => {
                return Err(format!(
                    "AUC: num_thresholds must be an integer > 1, found {v}"
                ))
            }
        },
    };
    Ok(AucConfig {
        num_thresholds,
        curve,
        summation,
        thresholds,
        from_logits: c
            .get("from_logits")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}

/// A serialized metric: a string, `MeanMetricWrapper` with `fn`, or a metric class.
pub(super) fn from_config(v: &Value) -> Result<Metric, String> {
    match v {
        Value::String(s) => by_string(s).ok_or_else(|| unknown(s)),
        Value::Object(o) => {
            let raw = o.get("class_name").and_then(Value::as_str).unwrap_or("");
            // Registered names may carry a package prefix ("Custom>AUC").
            let class_name = raw.rsplit('>').next().unwrap_or(raw);
            let c = o.get("config").unwrap_or(&Value::Null);
            if class_name == "MeanMetricWrapper" {
                let f = c.get("fn").and_then(Value::as_str).unwrap_or("");
                let kind = function(f)
                    .ok_or_else(|| format!("MeanMetricWrapper: unknown metric function '{f}'"))?;
                let name = c.get("name").and_then(Value::as_str).unwrap_or(f);
                return Ok(Metric::new(name, kind));
            }
            class(class_name, c)?.ok_or_else(|| unknown(class_name))
        }
        other => Err(format!(
            "a metric must be a name or a serialized metric, found {other}"
        )),
    }
}

fn unknown(name: &str) -> String {
    format!(
        "unknown metric '{name}' (known: {})",
        KNOWN_NAMES.join(", ")
    )
}
