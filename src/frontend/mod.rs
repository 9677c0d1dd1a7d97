//! Keras model configurations (tf-keras 2.x, Keras 2.0–2.3, Keras 1) to the graph IR.
//!
//! [`parse_model_json`] reads the text of `model.to_json()` (or a `config.json`);
//! [`parse_model_value`] does the same from an already parsed value (configurations
//! embedded in `.h5` / `.keras` files). Both handle the envelope
//! `{"class_name", "config", "keras_version"?, "backend"?}`, detect the [`Dialect`],
//! build `Sequential` (list or `{name, layers}` config, with or without a leading
//! `InputLayer`) and `Functional` / `Model` graphs (layers in any order, topologically
//! sorted), and turn every layer into a typed [`crate::graph::Op`] (see [`layers`]).
//!
//! Unknown keys are ignored everywhere. Every unsupported value is an error naming the
//! source, the layer and the field; nothing panics on user data.
//!
//! `dtype`: layers may declare `"float32"` or the mixed-precision policies
//! `mixed_float16` / `mixed_bfloat16` (a name or a `Policy` object): variables are float32
//! under those policies, so weights load unchanged, and the layer computes as Keras does
//! in the policy's compute dtype (the node's [`crate::graph::DtypePolicy`]; the lowering
//! and the reference round to it). Any other dtype is rejected.
//!
//! Dialect detection: `keras_version` `1.x` → [`Dialect::Keras1`]; `2.0`–`2.3` without a
//! `-tf` suffix → [`Dialect::Keras2`] (multi-backend Keras); everything else (`x.y.z-tf`,
//! `2.4`+, which is tf.keras) → [`Dialect::TfKeras`]. Without a version, Keras 1 argument
//! names (`nb_filter`, `output_dim`, `border_mode`, `dim_ordering`, `init`…) or a list
//! Sequential config with such names select Keras 1, otherwise tf-keras.

pub mod layers;
pub mod objects;
pub mod serialize;
pub mod value;

mod functional;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::graph::{Graph, NodeId};
use value::{show, Cfg, MAX_SIZE};

/// A parsed model configuration.
#[derive(Clone, Debug)]
pub struct ParsedModel {
    /// The model as a graph with inferred shapes and parameters.
    pub graph: Graph,
    /// Which Keras wrote the configuration.
    pub dialect: Dialect,
    /// The envelope's `keras_version`, if any.
    pub keras_version: Option<String>,
}

/// Which Keras produced the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// tf.keras (TF 1.x/2.x, Keras 2.4–2.15) and tf-keras 2.15+.
    TfKeras,
    /// Multi-backend Keras 2.0–2.3.
    Keras2,
    /// Keras 1.x.
    Keras1,
}

/// Parses `model.to_json()` text of any dialect. `source_name` (file name) is put in
/// every error; `memory_budget` goes to [`Graph::with_budget`].
pub fn parse_model_json(text: &str, source_name: &str, memory_budget: u64) -> Result<ParsedModel> {
    let v: Value = serde_json::from_str(text).map_err(|e| Error::Config {
        source_name: source_name.to_string(),
        detail: format!("not valid JSON: {e}"),
    })?;
    parse_model_value(&v, source_name, memory_budget)
}

/// Same as [`parse_model_json`] from an already parsed value (used for configurations
/// embedded in `.h5` / `.keras` files).
pub fn parse_model_value(v: &Value, source_name: &str, memory_budget: u64) -> Result<ParsedModel> {
    parse_value(v, source_name, memory_budget).map_err(|e| e.in_source(source_name))
}

fn parse_value(v: &Value, source_name: &str, memory_budget: u64) -> Result<ParsedModel> {
    let config_err = |detail: String| Error::Config {
        source_name: source_name.to_string(),
        detail,
    };
    let not_model = |what: String| {
        config_err(format!(
            "top level is not a Keras model ({what}; expected an object with class_name Sequential, Functional or Model)"
        ))
    };
    let obj = v
        .as_object()
        .ok_or_else(|| not_model(format!("found {}", kind_of(v))))?;
    let class = match obj.get("class_name") {
        Some(Value::String(s)) => s.as_str(),
        Some(other) => return Err(not_model(format!("class_name is {}", show(other)))),
        None => return Err(not_model("no class_name".into())),
    };
    let keras_version = obj
        .get("keras_version")
        .and_then(Value::as_str)
        .map(str::to_string);
    let config = obj.get("config").filter(|c| !c.is_null());
    let config = config.ok_or_else(|| config_err(format!("{class} model has no config")))?;
    let dialect = detect_dialect(keras_version.as_deref(), config);
    let ctx = Ctx {
        src: source_name,
        dialect,
        version: keras_version.as_deref(),
        budget: memory_budget,
    };
    let graph = match class {
        "Sequential" => sequential(&ctx, config)?,
        "Functional" | "Model" => functional::build(&ctx, config)?,
        other => return Err(not_model(format!("class_name '{other}'"))),
    };
    Ok(ParsedModel {
        graph,
        dialect,
        keras_version,
    })
}

/// What every builder needs to know about the whole configuration.
pub(crate) struct Ctx<'a> {
    /// Source name for errors.
    pub src: &'a str,
    /// Detected dialect.
    pub dialect: Dialect,
    /// `keras_version`.
    pub version: Option<&'a str>,
    /// Memory budget for the graph.
    pub budget: u64,
}

impl<'a> Ctx<'a> {
    /// The configuration of one layer.
    pub fn cfg(&self, layer: &'a str, map: Option<&'a Map<String, Value>>) -> Cfg<'a> {
        Cfg::new(self.src, layer, map, self.dialect, self.version)
    }

    /// A structural (graph) error.
    pub fn graph_err(&self, detail: impl Into<String>) -> Error {
        Error::Graph {
            source_name: self.src.to_string(),
            detail: detail.into(),
        }
    }

    /// A top-level configuration error.
    pub fn config_err(&self, detail: impl Into<String>) -> Error {
        Error::Config {
            source_name: self.src.to_string(),
            detail: detail.into(),
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keras 1 argument names that never appear in Keras 2 / tf-keras layer configs.
const KERAS1_KEYS: &[&str] = &[
    "nb_filter",
    "output_dim",
    "border_mode",
    "dim_ordering",
    "init",
    "subsample",
    "subsample_length",
    "filter_length",
    "nb_row",
    "input_dtype",
    "W_regularizer",
];

fn detect_dialect(version: Option<&str>, config: &Value) -> Dialect {
    if let Some(v) = version {
        if v.contains("-tf") {
            return Dialect::TfKeras;
        }
        let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
        match (parts.next().flatten(), parts.next().flatten()) {
            (Some(1), _) => return Dialect::Keras1,
            (Some(2), Some(m)) if m <= 3 => return Dialect::Keras2,
            (Some(_), _) => return Dialect::TfKeras,
            _ => {}
        }
    }
    let layers = match config {
        Value::Array(l) => Some(l),
        Value::Object(m) => m.get("layers").and_then(Value::as_array),
        _ => None,
    };
    let keras1 = layers.is_some_and(|ls| {
        ls.iter().any(|l| {
            l.get("config")
                .and_then(Value::as_object)
                .is_some_and(|c| KERAS1_KEYS.iter().any(|k| c.contains_key(*k)))
        })
    });
    if keras1 {
        Dialect::Keras1
    } else {
        Dialect::TfKeras
    }
}

/// Class name, layer name and config object of one entry of a `layers` list.
pub(crate) type LayerEntry<'a> = (&'a str, String, Option<&'a Map<String, Value>>);

/// Class name, layer name and config object of a layer entry
/// `{"class_name", "config", "name"?}`; `index` names anonymous entries.
pub(crate) fn layer_entry<'a>(ctx: &Ctx, entry: &'a Value, index: usize) -> Result<LayerEntry<'a>> {
    let obj = entry.as_object().ok_or_else(|| {
        ctx.config_err(format!("layer #{index} is not an object: {}", show(entry)))
    })?;
    let class = obj
        .get("class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| ctx.config_err(format!("layer #{index} has no class_name")))?;
    let config = match obj.get("config") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            return Err(ctx.config_err(format!(
                "layer #{index} ({class}): config is not an object: {}",
                show(other)
            )))
        }
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .or_else(|| config.and_then(|c| c.get("name")).and_then(Value::as_str))
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}_{index}", class.to_ascii_lowercase()));
    Ok((class, name, config))
}

/// Per-sample dimensions of a shape list; `skip_batch` drops the first entry (which must
/// be `null` or a positive integer).
pub(crate) fn shape_list(
    cfg: &Cfg,
    field: &str,
    v: &Value,
    skip_batch: bool,
) -> Result<Vec<usize>> {
    let items = v
        .as_array()
        .ok_or_else(|| cfg.err(field, format!("expected a list, got {}", show(v))))?;
    let dims = if skip_batch {
        let Some((batch, rest)) = items.split_first() else {
            return Err(cfg.err(
                field,
                "is empty (expected the batch size then the per-sample shape)",
            ));
        };
        if !batch.is_null() {
            cfg.size(field, batch).map_err(|_| {
                cfg.err(
                    field,
                    format!("batch size {} must be null or an integer >= 1", show(batch)),
                )
            })?;
        }
        rest
    } else {
        &items[..]
    };
    if dims.is_empty() {
        return Err(cfg.err(field, "has no per-sample dimensions"));
    }
    let mut shape = Vec::with_capacity(dims.len());
    for (i, d) in dims.iter().enumerate() {
        if d.is_null() {
            return Err(cfg.err(
                field,
                format!("per-sample dimension {i} is unknown (null) in {}; lcjit needs a fully defined input shape", show(v)),
            ));
        }
        let n = cfg.int(field, d)?;
        if n < 1 || n as u64 > MAX_SIZE {
            return Err(cfg.err(
                field,
                format!("dimension {n} in {} is not in 1..={MAX_SIZE}", show(v)),
            ));
        }
        shape.push(n as usize);
    }
    Ok(shape)
}

/// The input shape an `InputLayer` declares (`batch_input_shape`, Keras 3 `batch_shape`).
pub(crate) fn input_layer_shape(cfg: &Cfg) -> Result<Vec<usize>> {
    layers::check_dtype(cfg)?;
    if cfg.get("sparse").and_then(Value::as_bool) == Some(true) {
        return Err(cfg.err("sparse", "sparse inputs are not supported"));
    }
    if cfg.get("ragged").and_then(Value::as_bool) == Some(true) {
        return Err(cfg.err("ragged", "ragged inputs are not supported"));
    }
    match cfg.pick(&["batch_input_shape", "batch_shape"]) {
        Some((k, v)) => shape_list(cfg, k, v, true),
        None => Err(cfg.err(
            "batch_input_shape",
            "missing (the input shape must be known)",
        )),
    }
}

/// The input shape the first layer of a Sequential model declares, if any:
/// `batch_input_shape` / `batch_shape`, `input_shape`, Keras 1 `input_length` + `input_dim`.
fn declared_input_shape(cfg: &Cfg) -> Result<Option<Vec<usize>>> {
    if let Some((k, v)) = cfg.pick(&["batch_input_shape", "batch_shape"]) {
        return shape_list(cfg, k, v, true).map(Some);
    }
    if let Some(v) = cfg.get("input_shape") {
        return shape_list(cfg, "input_shape", v, false).map(Some);
    }
    if let Some(v) = cfg.get("input_dim") {
        let dim = cfg.size("input_dim", v)?;
        return Ok(Some(match cfg.get("input_length") {
            Some(l) => vec![cfg.size("input_length", l)?, dim],
            None => vec![dim],
        }));
    }
    Ok(None)
}

fn sequential(ctx: &Ctx, config: &Value) -> Result<Graph> {
    let (name, layer_list, build_shape) = match config {
        Value::Array(l) => ("sequential", l, None),
        Value::Object(m) => {
            let name = m
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("sequential");
            let layers = m
                .get("layers")
                .and_then(Value::as_array)
                .ok_or_else(|| ctx.config_err("Sequential config has no 'layers' list"))?;
            (
                name,
                layers,
                m.get("build_input_shape").filter(|v| !v.is_null()),
            )
        }
        other => {
            return Err(ctx.config_err(format!(
                "Sequential config is {}, expected a list or an object",
                kind_of(other)
            )))
        }
    };
    let mut graph = Graph::with_budget(name, ctx.budget);
    let mut seen = std::collections::HashSet::new();
    let mut prev: Option<NodeId> = None;
    for (i, entry) in layer_list.iter().enumerate() {
        let (class, lname, map) = layer_entry(ctx, entry, i)?;
        if !seen.insert(lname.clone()) {
            return Err(ctx.graph_err(format!("duplicate layer name '{lname}'")));
        }
        let cfg = ctx.cfg(&lname, map);
        if class == "InputLayer" {
            if prev.is_some() {
                return Err(ctx.graph_err(format!(
                    "InputLayer '{lname}' is not the first layer of the Sequential model"
                )));
            }
            let shape = input_layer_shape(&cfg)?;
            prev = Some(graph.add_input(&lname, shape)?);
            continue;
        }
        let input = match prev {
            Some(p) => p,
            None => {
                let shape = match declared_input_shape(&cfg)? {
                    Some(s) => s,
                    None => match build_shape {
                        Some(b) => shape_list(&cfg, "build_input_shape", b, true)?,
                        None => {
                            return Err(cfg.err(
                                "batch_input_shape",
                                "missing: the first layer of a Sequential model must declare its input shape",
                            ))
                        }
                    },
                };
                let input_name = format!("{lname}_input");
                seen.insert(input_name.clone());
                graph.add_input(&input_name, shape)?
            }
        };
        let in_shapes = vec![graph.nodes[input].shape.clone()];
        let op = layers::layer_op(&cfg, class, &in_shapes)?;
        let id = graph.add(&lname, op, &[input])?;
        apply_trainable(&mut graph, id, &cfg)?;
        prev = Some(id);
    }
    match prev {
        Some(p) if !graph.nodes[p].inputs.is_empty() || graph.nodes.len() == 1 => {
            graph.outputs = vec![p];
            Ok(graph)
        }
        _ => Err(ctx.config_err(format!("Sequential model '{name}' has no layers"))),
    }
}

#[cfg(test)]
mod tests;

/// A layer config's `trainable: false` (Keras's frozen layer) marks every weight of node
/// `id` non-trainable: `fit` leaves them alone, `lcjit grad` omits them, and a frozen
/// BatchNorm runs in inference mode during training ([`Graph::is_frozen`]).
fn apply_trainable(graph: &mut Graph, id: NodeId, cfg: &Cfg) -> Result<()> {
    // The dtype policy travels with the same per-layer keys.
    graph.nodes[id].policy = layers::check_dtype(cfg)?;
    if !cfg.bool_or(&["trainable"], true)? {
        let params = graph.nodes[id].params.clone();
        for p in params {
            if let Some(spec) = graph.params.get_mut(p) {
                spec.trainable = false;
            }
        }
    }
    Ok(())
}
