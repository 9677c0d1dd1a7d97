//! One function per Keras layer class: a layer's configuration (any dialect) to a typed
//! graph [`Op`].
//!
//! Keras 1 argument names (`nb_filter`, `filter_length`, `nb_row`/`nb_col`, `subsample`,
//! `border_mode`, `dim_ordering`, `init`, `W_regularizer`, `bias`, `output_dim`, `p`…)
//! are accepted next to the Keras 2 names in every dialect; dialect rules only decide
//! what is legal (LocallyConnected `same` padding) and what defaults mean.

use serde_json::Value;

use super::objects::{activation, activation_layer, constraint_at, initializer_or, regularizer_at};
use super::value::{show, Cfg};
use super::Dialect;
use crate::error::{Error, Result};
use crate::graph::infer::resolve_keras_axis;
use crate::graph::{
    BatchNorm, ComputeDtype, Conv, DataFormat, Dense, Distribution, DtypePolicy, FanMode,
    Initializer, LocallyConnected, MergeKind, Op, Padding, Pool, PoolKind, WeightOptions,
};

/// Keras's default kernel initializer, `glorot_uniform`.
fn glorot_uniform() -> Initializer {
    Initializer::VarianceScaling {
        scale: 1.0,
        mode: FanMode::FanAvg,
        distribution: Distribution::Uniform,
    }
}

/// A layer's `dtype` (and Keras 1 `input_dtype`): `"float32"` or a float32-variable
/// mixed-precision policy (`mixed_float16`, `mixed_bfloat16`), as a name or a tf-keras
/// `Policy` object; anything else (float64, float16 variables…) is an error. The last
/// key present wins (`input_dtype` only appears in Keras 1 configs, which have no
/// policies).
pub fn check_dtype(cfg: &Cfg) -> Result<DtypePolicy> {
    let mut policy = DtypePolicy::default();
    for key in ["dtype", "input_dtype"] {
        let Some(v) = cfg.get(key) else { continue };
        let (name, as_object) = match v {
            Value::String(s) => (s.as_str(), false),
            Value::Object(o) => (
                o.get("config")
                    .and_then(|c| c.get("name"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        cfg.err(key, format!("unrecognized dtype policy {}", show(v)))
                    })?,
                true,
            ),
            _ => return Err(cfg.err(key, format!("unrecognized dtype {}", show(v)))),
        };
        let compute = match name {
            "float32" => ComputeDtype::Float32,
            "mixed_float16" => ComputeDtype::Float16,
            "mixed_bfloat16" => ComputeDtype::BFloat16,
            _ => {
                return Err(cfg.err(
                    key,
                    format!(
                        "dtype '{name}' is not supported (lcjit has float32 variables: float32, mixed_float16 or mixed_bfloat16)"
                    ),
                ))
            }
        };
        policy = DtypePolicy { compute, as_object };
    }
    Ok(policy)
}

/// `data_format` / Keras 1 `dim_ordering`; `null` or absent → channels_last.
pub fn data_format(cfg: &Cfg) -> Result<DataFormat> {
    let Some((k, v)) = cfg.pick(&["data_format", "dim_ordering"]) else {
        return Ok(DataFormat::ChannelsLast);
    };
    match cfg.string(k, v)? {
        "channels_last" | "tf" | "default" => Ok(DataFormat::ChannelsLast),
        "channels_first" | "th" => Ok(DataFormat::ChannelsFirst),
        other => Err(cfg.err(k, format!("unknown data format '{other}'"))),
    }
}

/// `padding` / Keras 1 `border_mode` among `allowed` (lower-cased first, except Keras 1).
fn padding(cfg: &Cfg, allowed: &[Padding]) -> Result<Padding> {
    let Some((k, v)) = cfg.pick(&["padding", "border_mode"]) else {
        return Ok(Padding::Valid);
    };
    let s = cfg.string(k, v)?;
    let s = if cfg.dialect == Dialect::Keras1 {
        s.to_string()
    } else {
        s.to_ascii_lowercase()
    };
    let p = match s.as_str() {
        "valid" => Padding::Valid,
        "same" => Padding::Same,
        "causal" => Padding::Causal,
        _ => return Err(cfg.err(k, format!("unknown padding '{s}'"))),
    };
    if !allowed.contains(&p) {
        return Err(cfg.err(k, format!("padding '{s}' is not supported by this layer")));
    }
    Ok(p)
}

/// A kernel size for `rank` axes: `kernel_size`, or Keras 1 `filter_length` /
/// `nb_row` + `nb_col`.
fn kernel_size(cfg: &Cfg, rank: usize) -> Result<Vec<usize>> {
    if let Some((k, v)) = cfg.pick(&["kernel_size", "filter_length"]) {
        return cfg.sizes(k, v, rank);
    }
    if rank == 2 && (cfg.get("nb_row").is_some() || cfg.get("nb_col").is_some()) {
        return Ok(vec![cfg.req_size(&["nb_row"])?, cfg.req_size(&["nb_col"])?]);
    }
    Err(cfg.err("kernel_size", "missing"))
}

/// Per-axis sizes under the first present of `keys`, or `default` repeated.
fn sizes_or(cfg: &Cfg, keys: &[&str], rank: usize, default: usize) -> Result<Vec<usize>> {
    match cfg.pick(keys) {
        Some((k, v)) => cfg.sizes(k, v, rank),
        None => Ok(vec![default; rank]),
    }
}

/// Regularizers and constraints under Keras 2 or Keras 1 names.
fn weight_options(cfg: &Cfg, kernel: &str, bias: &str) -> Result<WeightOptions> {
    let (kr, br) = (
        format!("{kernel}_regularizer"),
        format!("{bias}_regularizer"),
    );
    let (kc, bc) = (format!("{kernel}_constraint"), format!("{bias}_constraint"));
    Ok(WeightOptions {
        kernel_regularizer: regularizer_at(cfg, &[&kr, "W_regularizer"])?,
        bias_regularizer: regularizer_at(cfg, &[&br, "b_regularizer"])?,
        activity_regularizer: regularizer_at(cfg, &["activity_regularizer"])?,
        kernel_constraint: constraint_at(cfg, &[&kc, "W_constraint"])?,
        bias_constraint: constraint_at(cfg, &[&bc, "b_constraint"])?,
    })
}

/// Kernel and bias initializers (`init` in Keras 1; bias always zeros there).
fn initializers(cfg: &Cfg) -> Result<(Initializer, Initializer)> {
    let k = initializer_or(cfg, &["kernel_initializer", "init"], glorot_uniform())?;
    let b = initializer_or(cfg, &["bias_initializer"], Initializer::Zeros)?;
    Ok((k, b))
}

/// LocallyConnected1D/2D/3D (3D and `dilation_rate` are lcjit extensions).
pub fn locally_connected(cfg: &Cfg, rank: usize) -> Result<LocallyConnected> {
    let filters = cfg.req_size(&["filters", "nb_filter"])?;
    let kernel = kernel_size(cfg, rank)?;
    let strides = sizes_or(cfg, &["strides", "subsample_length", "subsample"], rank, 1)?;
    let dilation = sizes_or(cfg, &["dilation_rate"], rank, 1)?;
    let implementation = match cfg.get("implementation") {
        None => 1,
        Some(v) => match cfg.int("implementation", v)? {
            i @ 1..=3 => i as u8,
            i => return Err(cfg.err("implementation", format!("unknown implementation {i}"))),
        },
    };
    let padding = padding(cfg, &[Padding::Valid, Padding::Same])?;
    if padding == Padding::Same {
        let field = if cfg.get("padding").is_some() {
            "padding"
        } else {
            "border_mode"
        };
        if cfg.dialect != Dialect::TfKeras {
            return Err(cfg.err(
                field,
                "padding 'same' is not supported by LocallyConnected layers in Keras 1/2 (only 'valid')",
            ));
        }
        if implementation == 1 {
            return Err(cfg.err(
                field,
                "padding 'same' requires implementation 2 or 3 (Keras rejects it with implementation 1)",
            ));
        }
    }
    // Keras 2.0–2.4 LocallyConnected1D ignores data_format (keras-lc-semantics §4.2).
    let data_format = if cfg.dialect == Dialect::Keras2 && rank == 1 {
        DataFormat::ChannelsLast
    } else {
        data_format(cfg)?
    };
    let (kernel_initializer, mut bias_initializer) = initializers(cfg)?;
    if cfg.version == Some("2.0.0") {
        // Keras 2.0.0 serialized the kernel initializer as the bias one (§4.2).
        bias_initializer = Initializer::Zeros;
    }
    Ok(LocallyConnected {
        rank,
        filters,
        kernel,
        strides,
        dilation,
        padding,
        data_format,
        activation: activation(cfg, "activation", cfg.get("activation"))?,
        use_bias: cfg.bool_or(&["use_bias", "bias"], true)?,
        implementation,
        kernel_initializer,
        bias_initializer,
        options: weight_options(cfg, "kernel", "bias")?,
    })
}

/// Dense (Keras 1 `output_dim`).
pub fn dense(cfg: &Cfg) -> Result<Dense> {
    let (kernel_initializer, bias_initializer) = initializers(cfg)?;
    Ok(Dense {
        units: cfg.req_size(&["units", "output_dim"])?,
        activation: activation(cfg, "activation", cfg.get("activation"))?,
        use_bias: cfg.bool_or(&["use_bias", "bias"], true)?,
        kernel_initializer,
        bias_initializer,
        options: weight_options(cfg, "kernel", "bias")?,
    })
}

/// Conv1D/Conv2D and the Keras 1 Convolution / AtrousConvolution classes.
pub fn conv(cfg: &Cfg, rank: usize) -> Result<Conv> {
    let filters = cfg.req_size(&["filters", "nb_filter"])?;
    let groups = cfg.size_or(&["groups"], 1)?;
    if !filters.is_multiple_of(groups) {
        return Err(cfg.err(
            "groups",
            format!("filters {filters} is not divisible by groups {groups}"),
        ));
    }
    let allowed: &[Padding] = if rank == 1 {
        &[Padding::Valid, Padding::Same, Padding::Causal]
    } else {
        &[Padding::Valid, Padding::Same]
    };
    let (kernel_initializer, bias_initializer) = initializers(cfg)?;
    Ok(Conv {
        rank,
        filters,
        kernel: kernel_size(cfg, rank)?,
        strides: sizes_or(cfg, &["strides", "subsample_length", "subsample"], rank, 1)?,
        dilation: sizes_or(cfg, &["dilation_rate", "atrous_rate"], rank, 1)?,
        padding: padding(cfg, allowed)?,
        data_format: data_format(cfg)?,
        groups,
        activation: activation(cfg, "activation", cfg.get("activation"))?,
        use_bias: cfg.bool_or(&["use_bias", "bias"], true)?,
        kernel_initializer,
        bias_initializer,
        options: weight_options(cfg, "kernel", "bias")?,
    })
}

/// MaxPooling / AveragePooling 1D/2D; `strides: null` means the pool size.
pub fn pool(cfg: &Cfg, kind: PoolKind, rank: usize) -> Result<Pool> {
    let pool = sizes_or(cfg, &["pool_size", "pool_length"], rank, 2)?;
    let strides = match cfg.pick(&["strides", "stride"]) {
        Some((k, v)) => cfg.sizes(k, v, rank)?,
        None => pool.clone(),
    };
    Ok(Pool {
        kind,
        rank,
        pool,
        strides,
        padding: padding(cfg, &[Padding::Valid, Padding::Same])?,
        data_format: data_format(cfg)?,
    })
}

/// `(before, after)` pairs for ZeroPadding / Cropping: an int, a pair (1D: before/after;
/// 2D: symmetric per axis), a pair of pairs, Keras 1's 4-list `(top, bottom, left,
/// right)` or dict `{top_pad, bottom_pad, left_pad, right_pad}`.
fn pairs(cfg: &Cfg, field: &str, v: &Value, rank: usize) -> Result<Vec<(usize, usize)>> {
    let pair = |x: &Value| -> Result<(usize, usize)> {
        match x {
            Value::Array(p) if p.len() == 2 => {
                Ok((cfg.count(field, &p[0])?, cfg.count(field, &p[1])?))
            }
            Value::Array(_) => Err(cfg.err(field, format!("expected a pair, got {}", show(x)))),
            _ => {
                let n = cfg.count(field, x)?;
                Ok((n, n))
            }
        }
    };
    match v {
        Value::Array(items) if rank == 1 && items.len() == 2 => Ok(vec![(
            cfg.count(field, &items[0])?,
            cfg.count(field, &items[1])?,
        )]),
        Value::Array(items) if rank == 2 && items.len() == 4 => {
            let n: Vec<usize> = items
                .iter()
                .map(|x| cfg.count(field, x))
                .collect::<Result<_>>()?;
            Ok(vec![(n[0], n[1]), (n[2], n[3])])
        }
        Value::Array(items) if items.len() == rank => items.iter().map(pair).collect(),
        Value::Array(_) => Err(cfg.err(field, format!("expected {rank} entries, got {}", show(v)))),
        Value::Object(m) if rank == 1 => {
            let c = cfg.with_map(m);
            let g = |k: &str| -> Result<usize> {
                match c.get(k) {
                    Some(x) => cfg.count(field, x),
                    None => Ok(0),
                }
            };
            Ok(vec![(g("left_pad")?, g("right_pad")?)])
        }
        Value::Object(m) if rank == 2 => {
            let c = cfg.with_map(m);
            let g = |k: &str| -> Result<usize> {
                match c.get(k) {
                    Some(x) => cfg.count(field, x),
                    None => Ok(0),
                }
            };
            Ok(vec![
                (g("top_pad")?, g("bottom_pad")?),
                (g("left_pad")?, g("right_pad")?),
            ])
        }
        _ => Ok(vec![pair(v)?; rank]),
    }
}

/// ZeroPadding1D/2D or Cropping1D/2D.
fn pad_or_crop(cfg: &Cfg, rank: usize, crop: bool) -> Result<Op> {
    let key = if crop { "cropping" } else { "padding" };
    let default = if crop && rank == 2 { 0 } else { 1 };
    let v = match cfg.get(key) {
        Some(v) => pairs(cfg, key, v, rank)?,
        None => vec![(default, default); rank],
    };
    let data_format = if rank == 1 {
        DataFormat::ChannelsLast
    } else {
        data_format(cfg)?
    };
    Ok(if crop {
        Op::Cropping {
            rank,
            crops: v,
            data_format,
        }
    } else {
        Op::ZeroPadding {
            rank,
            pads: v,
            data_format,
        }
    })
}

/// Dropout rate (`rate`, Keras 1 `p`).
fn rate(cfg: &Cfg) -> Result<f32> {
    let (k, v) = cfg.require(&["rate", "p"])?;
    let r = cfg.float(k, v)?;
    if !(0.0..1.0).contains(&r) {
        return Err(cfg.err(k, format!("rate {r} must be in [0, 1)")));
    }
    Ok(r)
}

/// BatchNormalization; `rank` is the input's per-sample rank.
pub fn batch_norm(cfg: &Cfg, rank: usize) -> Result<BatchNorm> {
    if let Some(v) = cfg.get("mode") {
        if cfg.int("mode", v)? != 0 {
            return Err(cfg.err(
                "mode",
                format!(
                    "Keras 1 BatchNormalization mode {} is not supported (only 0)",
                    show(v)
                ),
            ));
        }
    }
    if cfg.bool_or(&["renorm"], false)? {
        return Err(cfg.err("renorm", "batch renormalization is not supported"));
    }
    if let Some(v) = cfg.get("virtual_batch_size") {
        return Err(cfg.err(
            "virtual_batch_size",
            format!("{} is not supported", show(v)),
        ));
    }
    let axis = match cfg.get("axis") {
        Some(v) => cfg.axis("axis", v)?,
        None => -1,
    };
    let axis = resolve_keras_axis(cfg.layer, axis, rank, true).map_err(|e| cfg.about("axis", e))?;
    let momentum = cfg.float_or("momentum", 0.99)?;
    let epsilon = cfg.float_or("epsilon", 1e-3)?;
    if epsilon <= 0.0 {
        return Err(cfg.err("epsilon", format!("{epsilon} must be > 0")));
    }
    Ok(BatchNorm {
        axis,
        epsilon,
        momentum,
        center: cfg.bool_or(&["center"], true)?,
        scale: cfg.bool_or(&["scale"], true)?,
        initializers: [
            initializer_or(cfg, &["gamma_initializer", "gamma_init"], Initializer::Ones)?,
            initializer_or(cfg, &["beta_initializer", "beta_init"], Initializer::Zeros)?,
            initializer_or(cfg, &["moving_mean_initializer"], Initializer::Zeros)?,
            initializer_or(cfg, &["moving_variance_initializer"], Initializer::Ones)?,
        ],
        options: WeightOptions {
            kernel_regularizer: regularizer_at(cfg, &["gamma_regularizer"])?,
            bias_regularizer: regularizer_at(cfg, &["beta_regularizer"])?,
            activity_regularizer: None,
            kernel_constraint: constraint_at(cfg, &["gamma_constraint"])?,
            bias_constraint: constraint_at(cfg, &["beta_constraint"])?,
        },
    })
}

/// Concatenation axis (Keras counting, batch axis 0), resolved on the first input.
fn concat_axis(cfg: &Cfg, key: &str, in_shapes: &[Vec<usize>]) -> Result<usize> {
    let axis = match cfg.get(key) {
        Some(v) => cfg.axis(key, v)?,
        None => -1,
    };
    let rank = in_shapes.first().map_or(0, Vec::len);
    resolve_keras_axis(cfg.layer, axis, rank, true).map_err(|e| cfg.about(key, e))
}

/// The op of a non-input layer of `class` whose inputs have per-sample shapes `in_shapes`.
pub fn layer_op(cfg: &Cfg, class: &str, in_shapes: &[Vec<usize>]) -> Result<Op> {
    check_dtype(cfg)?;
    let rank0 = in_shapes.first().map_or(0, Vec::len);
    let merge = |k| Ok(Op::Merge(k));
    match class {
        "LocallyConnected1D" => Ok(Op::LocallyConnected(locally_connected(cfg, 1)?)),
        "LocallyConnected2D" => Ok(Op::LocallyConnected(locally_connected(cfg, 2)?)),
        "LocallyConnected3D" => Ok(Op::LocallyConnected(locally_connected(cfg, 3)?)),
        "Dense" => Ok(Op::Dense(dense(cfg)?)),
        "Conv1D" | "Convolution1D" | "AtrousConvolution1D" => Ok(Op::Conv(conv(cfg, 1)?)),
        "Conv2D" | "Convolution2D" | "AtrousConvolution2D" => Ok(Op::Conv(conv(cfg, 2)?)),
        "MaxPooling1D" | "MaxPool1D" => Ok(Op::Pool(pool(cfg, PoolKind::Max, 1)?)),
        "MaxPooling2D" | "MaxPool2D" => Ok(Op::Pool(pool(cfg, PoolKind::Max, 2)?)),
        "AveragePooling1D" | "AvgPool1D" => Ok(Op::Pool(pool(cfg, PoolKind::Average, 1)?)),
        "AveragePooling2D" | "AvgPool2D" => Ok(Op::Pool(pool(cfg, PoolKind::Average, 2)?)),
        "GlobalAveragePooling1D"
        | "GlobalAvgPool1D"
        | "GlobalAveragePooling2D"
        | "GlobalAvgPool2D"
        | "GlobalMaxPooling1D"
        | "GlobalMaxPool1D"
        | "GlobalMaxPooling2D"
        | "GlobalMaxPool2D" => Ok(Op::GlobalPool {
            kind: if class.starts_with("GlobalMax") {
                PoolKind::Max
            } else {
                PoolKind::Average
            },
            rank: if class.ends_with("1D") { 1 } else { 2 },
            data_format: data_format(cfg)?,
            keepdims: cfg.bool_or(&["keepdims"], false)?,
        }),
        "ZeroPadding1D" => pad_or_crop(cfg, 1, false),
        "ZeroPadding2D" => pad_or_crop(cfg, 2, false),
        "Cropping1D" => pad_or_crop(cfg, 1, true),
        "Cropping2D" => pad_or_crop(cfg, 2, true),
        "Flatten" => Ok(Op::Flatten {
            data_format: data_format(cfg)?,
        }),
        "Reshape" => {
            let (k, v) = cfg.require(&["target_shape"])?;
            let items = v
                .as_array()
                .ok_or_else(|| cfg.err(k, format!("expected a list, got {}", show(v))))?;
            let mut target = Vec::with_capacity(items.len());
            for x in items {
                let t = cfg.int(k, x)?;
                if t != -1 && (t < 1 || t as u64 > super::value::MAX_SIZE) {
                    return Err(cfg.err(k, format!("invalid target size {t}")));
                }
                target.push(t);
            }
            Ok(Op::Reshape { target })
        }
        "Permute" => {
            let (k, v) = cfg.require(&["dims"])?;
            let items = v
                .as_array()
                .ok_or_else(|| cfg.err(k, format!("expected a list, got {}", show(v))))?;
            let dims = items
                .iter()
                .map(|x| cfg.size(k, x))
                .collect::<Result<_>>()?;
            Ok(Op::Permute { dims })
        }
        "Dropout" => Ok(Op::Dropout {
            rate: rate(cfg)?,
            spatial: None,
            data_format: DataFormat::ChannelsLast,
        }),
        "SpatialDropout1D" | "SpatialDropout2D" => {
            let r = if class == "SpatialDropout1D" { 1 } else { 2 };
            Ok(Op::Dropout {
                rate: rate(cfg)?,
                spatial: Some(r),
                data_format: if r == 1 {
                    DataFormat::ChannelsLast
                } else {
                    data_format(cfg)?
                },
            })
        }
        "BatchNormalization" => Ok(Op::BatchNorm(batch_norm(cfg, rank0)?)),
        "Add" => merge(MergeKind::Add),
        "Subtract" => merge(MergeKind::Subtract),
        "Multiply" => merge(MergeKind::Multiply),
        "Average" => merge(MergeKind::Average),
        "Maximum" => merge(MergeKind::Maximum),
        "Minimum" => merge(MergeKind::Minimum),
        "Concatenate" => Ok(Op::Concatenate {
            axis: concat_axis(cfg, "axis", in_shapes)?,
        }),
        "Merge" => keras1_merge(cfg, in_shapes),
        _ => match activation_layer(cfg, class)? {
            Some(crate::graph::Activation::Softmax { axis }) => {
                let a = resolve_keras_axis(cfg.layer, axis, rank0, true)
                    .map_err(|e| cfg.about("axis", e))?;
                Ok(Op::Activation(crate::graph::Activation::Softmax {
                    axis: a as i64,
                }))
            }
            Some(a) => Ok(Op::Activation(a)),
            None => Err(Error::UnknownLayer {
                source_name: cfg.src.to_string(),
                layer: cfg.layer.to_string(),
                class_name: class.to_string(),
            }),
        },
    }
}

/// Keras 1 functional `Merge` layer with a string `mode`.
fn keras1_merge(cfg: &Cfg, in_shapes: &[Vec<usize>]) -> Result<Op> {
    if cfg.get("layers").is_some() {
        return Err(cfg.err(
            "layers",
            "a Keras 1 Merge of nested models is not supported",
        ));
    }
    let (k, v) = cfg.require(&["mode"])?;
    Ok(match cfg.string(k, v)? {
        "sum" => Op::Merge(MergeKind::Add),
        "mul" => Op::Merge(MergeKind::Multiply),
        "ave" => Op::Merge(MergeKind::Average),
        "max" => Op::Merge(MergeKind::Maximum),
        "concat" => Op::Concatenate {
            axis: concat_axis(cfg, "concat_axis", in_shapes)?,
        },
        other => return Err(cfg.err(k, format!("Merge mode '{other}' is not supported"))),
    })
}
