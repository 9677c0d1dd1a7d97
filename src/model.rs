//! The user-facing model: a graph plus its weights in canonical layout, loaded from any
//! supported file, with `predict` on the reference path.
//!
//! Invariants: `params[i]` always has the canonical shape of `graph.params[i]` (checked
//! when weights are set), so back ends can index it without further checks; `off_mask[i]`
//! is `Some` exactly for the implementation-2 LC kernels, holding the entries of the Keras
//! tensor outside the connectivity mask (length [`layout::off_mask_len`], row-major order
//! of the Keras tensor), kept exactly as loaded or initialized and written back on save.
//! They live beside the canonical kernel, never in it, so no engine ever reads them; the
//! trainer updates them as Keras does (see [`crate::train::off_mask`]).

use crate::error::{Error, Result};
use crate::frontend::{self, Dialect};
use crate::graph::{self, layout, Graph};
use crate::io::{self, KerasWeights, LayerWeights};
use crate::{init, reference};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};

mod keras_layout;

/// Options for loading a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The memory budget in bytes (see [`crate::budget`]): files read, weights, and
    /// every tensor at the batch used must fit. Default: derived from the machine's
    /// available memory ([`crate::budget::default_memory_budget`]).
    pub memory_budget: u64,
    /// Seed of the initializers when the model file carries no weights.
    pub seed: u64,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            memory_budget: crate::budget::default_memory_budget(),
            seed: 0,
        }
    }
}

/// Where a model's current weights came from.
#[derive(Clone, Debug, PartialEq)]
pub enum WeightsOrigin {
    /// Drawn from the layers' initializers with this seed.
    Initialized {
        /// The seed.
        seed: u64,
    },
    /// Read from this file.
    File(PathBuf),
}

/// A loaded Keras model.
#[derive(Clone, Debug)]
pub struct Model {
    graph: Graph,
    params: Vec<ArrayD<f32>>,
    off_mask: Vec<Option<Vec<f32>>>,
    training_config: Option<serde_json::Value>,
    dialect: Dialect,
    origin: WeightsOrigin,
}

fn ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn parse_training_config(text: Option<String>, path: &Path) -> Result<Option<serde_json::Value>> {
    match text {
        None => Ok(None),
        Some(t) => serde_json::from_str(&t)
            .map(Some)
            .map_err(|e| Error::format(path, "HDF5", format!("training_config is not JSON: {e}"))),
    }
}

impl Model {
    /// Loads a model from `.json` (any Keras dialect), `.h5` (legacy full model) or
    /// `.keras`. Files without weights (JSON) are initialized with seed 0.
    ///
    /// ```no_run
    /// let model = lcjit::Model::load("model.h5")?;
    /// let x = ndarray::ArrayD::<f32>::zeros(ndarray::IxDyn(&[1, 32, 32, 3]));
    /// let y = model.predict(&x)?;
    /// println!("{}", model.summary());
    /// # Ok::<(), lcjit::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, &LoadOptions::default())
    }

    /// Loads a model with explicit options.
    pub fn load_with(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let name = path.display().to_string();
        match ext(path).as_str() {
            "json" => {
                let text = io::read_text_within(path, opts.memory_budget)?;
                Self::from_json_str(&text, &name, opts)
            }
            "h5" | "hdf5" => {
                let h5 = io::read_h5_within(path, opts.memory_budget)?;
                let Some(config) = h5.model_config else {
                    return Err(Error::format(
                        path,
                        "HDF5",
                        "no model_config attribute (a weights-only file: pass it with --weights)",
                    ));
                };
                let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| {
                    Error::format(path, "HDF5", format!("model_config is not JSON: {e}"))
                })?;
                let parsed = frontend::parse_model_value(&v, &name, opts.memory_budget)?;
                let mut model = Model::initialized(parsed.graph, parsed.dialect, opts.seed)?;
                model.training_config = parse_training_config(h5.training_config, path)?;
                model.set_keras_weights(&h5.weights, &name)?;
                model.origin = WeightsOrigin::File(path.to_path_buf());
                Ok(model)
            }
            "keras" => {
                let (config, compile, weights) =
                    io::read_keras_archive_within(path, opts.memory_budget)?;
                let v: serde_json::Value = serde_json::from_str(&config).map_err(|e| {
                    Error::format(path, ".keras", format!("config.json is not JSON: {e}"))
                })?;
                let parsed = frontend::parse_model_value(&v, &name, opts.memory_budget)?;
                let mut model = Model::initialized(parsed.graph, parsed.dialect, opts.seed)?;
                model.training_config = parse_training_config(compile, path)?;
                model.set_keras_weights(&weights, &name)?;
                model.origin = WeightsOrigin::File(path.to_path_buf());
                Ok(model)
            }
            _ => Err(Error::UnsupportedFile {
                path: path.to_path_buf(),
                expected: ".json, .h5 or .keras",
            }),
        }
    }

    /// The verified layer graph of a model file, without drawing or reading its weights
    /// into parameters: what `lcjit summary` needs. (Initializing could cost far more than
    /// reading: an Orthogonal kernel is cubic in its size.)
    pub fn load_graph(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Graph> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let config = match ext(path).as_str() {
            "json" => {
                let text = io::read_text_within(path, opts.memory_budget)?;
                let parsed = frontend::parse_model_json(&text, &name, opts.memory_budget)?;
                graph::verify::verify(&parsed.graph)?;
                return Ok(parsed.graph);
            }
            "h5" | "hdf5" => io::read_h5_within(path, opts.memory_budget)?
                .model_config
                .ok_or_else(|| {
                    Error::format(
                        path,
                        "HDF5",
                        "no model_config attribute (a weights-only file)",
                    )
                })?,
            "keras" => io::read_keras_archive_within(path, opts.memory_budget)?.0,
            _ => {
                return Err(Error::UnsupportedFile {
                    path: path.to_path_buf(),
                    expected: ".json, .h5 or .keras",
                })
            }
        };
        let v: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| Error::format(path, "model", format!("configuration is not JSON: {e}")))?;
        let parsed = frontend::parse_model_value(&v, &name, opts.memory_budget)?;
        graph::verify::verify(&parsed.graph)?;
        Ok(parsed.graph)
    }

    /// Parses a JSON configuration held in memory; weights are initialized with
    /// `opts.seed`.
    pub fn from_json_str(text: &str, source_name: &str, opts: &LoadOptions) -> Result<Model> {
        let parsed = frontend::parse_model_json(text, source_name, opts.memory_budget)?;
        Model::initialized(parsed.graph, parsed.dialect, opts.seed)
    }

    /// A model over `graph` with weights drawn from its initializers.
    pub fn from_graph(graph: Graph, seed: u64) -> Result<Model> {
        Model::initialized(graph, Dialect::TfKeras, seed)
    }

    /// This model's weights over another graph with the same parameters (e.g. the same
    /// layers with a different output activation). Errors ([`Error::Internal`]) when the
    /// parameter lists differ.
    pub fn with_graph(&self, graph: Graph) -> Result<Model> {
        if graph.params != self.graph.params {
            return Err(Error::internal("with_graph: the graphs' parameters differ"));
        }
        graph::verify::verify(&graph)?;
        Ok(Model {
            graph,
            ..self.clone()
        })
    }

    fn initialized(graph: Graph, dialect: Dialect, seed: u64) -> Result<Model> {
        graph::verify::verify(&graph)?;
        // Keras 1 computes initializer fans differently for LC kernels (§8.1).
        let fan_rule = match dialect {
            Dialect::Keras1 => init::fans_keras1,
            _ => init::fans,
        };
        let (params, off_mask) = init::initialize_keras(&graph, seed, fan_rule)?;
        Ok(Model {
            graph,
            params,
            off_mask,
            training_config: None,
            dialect,
            origin: WeightsOrigin::Initialized { seed },
        })
    }

    /// Replaces all weights from a `.h5` (full model or `save_weights`) or `.npz` file
    /// (keys `<layer>/<weight>`, Keras layout).
    pub fn load_weights(&mut self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let budget = self.graph.memory_budget;
        let weights = match ext(path).as_str() {
            "h5" | "hdf5" => io::read_h5_within(path, budget)?.weights,
            "npz" => io::read_weights_npz_within(path, budget)?,
            _ => {
                return Err(Error::UnsupportedFile {
                    path: path.to_path_buf(),
                    expected: ".h5 or .npz",
                })
            }
        };
        self.set_keras_weights(&weights, &name)?;
        self.origin = WeightsOrigin::File(path.to_path_buf());
        Ok(())
    }

    /// Sets every weight from Keras-layout arrays grouped by layer (implementation-2
    /// kernels whole: their off-mask entries are kept beside the canonical kernel). Every
    /// layer with weights must be present with exactly its weights; nothing is changed on
    /// error.
    pub fn set_keras_weights(&mut self, weights: &KerasWeights, source_name: &str) -> Result<()> {
        let werr = |layer: &str, weight: &str, detail: String| Error::Weights {
            source_name: source_name.to_string(),
            layer: layer.to_string(),
            weight: weight.to_string(),
            detail,
        };
        let with_params: Vec<usize> = (0..self.graph.nodes.len())
            .filter(|&i| !self.graph.nodes[i].params.is_empty())
            .collect();
        let file_layers: Vec<&LayerWeights> = weights
            .layers
            .iter()
            .filter(|l| !l.weights.is_empty())
            .collect();
        // `.keras` archives name layer groups after their classes (`dense`, `dense_1`, …
        // in model order), not after the layers, and their weights by index. An archive
        // whose groups are all class-derived keys of this model is matched by those keys
        // (a layer that happens to be called `dense` must not switch it to names: its
        // other groups would then be "unknown layers"); otherwise groups are matched by
        // layer name, and as a last resort by order.
        let class_keys = crate::save::archive_keys(&self.graph);
        // Name indexes, so that matching is linear in the file's and the model's layers.
        let class_set: std::collections::HashSet<&str> =
            class_keys.iter().map(String::as_str).collect();
        let node_names: std::collections::HashSet<&str> =
            self.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        let file_by_name: std::collections::HashMap<&str, &LayerWeights> = file_layers
            .iter()
            .rev() // the first of duplicate names wins, as a linear search would find it
            .map(|l| (l.layer.as_str(), *l))
            .collect();
        let archive = file_layers.iter().all(|l| {
            l.weights
                .iter()
                .all(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        });
        let all_class = file_layers
            .iter()
            .all(|l| class_set.contains(l.layer.as_str()));
        let by_name = !(archive && all_class)
            && file_layers
                .iter()
                .any(|l| node_names.contains(l.layer.as_str()));
        let by_class = !by_name && all_class;
        for l in &file_layers {
            if by_name && !node_names.contains(l.layer.as_str()) {
                let w = l.weights.first().map(|w| w.0.as_str()).unwrap_or("?");
                return Err(werr(
                    &l.layer,
                    w,
                    "the model has no layer of this name".into(),
                ));
            }
        }
        if !by_name && !by_class && file_layers.len() != with_params.len() {
            return Err(Error::Weights {
                source_name: source_name.to_string(),
                layer: "*".into(),
                weight: "*".into(),
                detail: format!(
                    "{} layers with weights in the file, {} in the model",
                    file_layers.len(),
                    with_params.len()
                ),
            });
        }
        let mut new_params = self.params.clone();
        let mut new_off = self.off_mask.clone();
        for (k, &nid) in with_params.iter().enumerate() {
            let node = &self.graph.nodes[nid];
            let entry = if by_name {
                file_by_name.get(node.name.as_str()).copied()
            } else if by_class {
                file_by_name.get(class_keys[nid].as_str()).copied()
            } else {
                file_layers.get(k).copied()
            };
            let Some(entry) = entry else {
                let w = &self.graph.params[node.params[0]].name;
                return Err(werr(&node.name, w, "missing from the weights file".into()));
            };
            let positional = entry
                .weights
                .iter()
                .all(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
            for (wi, &pid) in node.params.iter().enumerate() {
                let spec = &self.graph.params[pid];
                let found = if positional {
                    entry.weights.get(wi)
                } else {
                    entry
                        .weights
                        .iter()
                        .find(|(n, _)| canonical_weight_name(n, &node.name) == spec.name)
                };
                let Some((_, arr)) = found else {
                    return Err(werr(
                        &node.name,
                        &spec.name,
                        "missing from the weights file".into(),
                    ));
                };
                if arr.shape() != spec.keras_shape.as_slice() {
                    return Err(werr(
                        &node.name,
                        &spec.name,
                        format!(
                            "expected shape {:?}, found {:?}",
                            spec.keras_shape,
                            arr.shape()
                        ),
                    ));
                }
                (new_params[pid], new_off[pid]) =
                    layout::keras_to_canonical_split(&self.graph, pid, arr.clone())
                        .map_err(|d| werr(&node.name, &spec.name, d))?;
            }
            if entry.weights.len() != node.params.len() {
                let extra = entry
                    .weights
                    .iter()
                    .map(|(n, _)| canonical_weight_name(n, &node.name))
                    .find(|n| !node.params.iter().any(|&p| self.graph.params[p].name == *n))
                    .unwrap_or_else(|| "?".into());
                return Err(werr(
                    &node.name,
                    &extra,
                    format!(
                        "the file has {} weights for this layer, the model expects {}",
                        entry.weights.len(),
                        node.params.len()
                    ),
                ));
            }
        }
        self.params = new_params;
        self.off_mask = new_off;
        Ok(())
    }

    /// All weights in Keras file layout, grouped by layer (for saving), implementation-2
    /// kernels with their off-mask entries.
    pub fn keras_weights(&self) -> Result<KerasWeights> {
        let mut layers = Vec::new();
        for node in &self.graph.nodes {
            let mut weights = Vec::new();
            for &pid in &node.params {
                let arr = self.keras_weight(pid)?;
                weights.push((self.graph.params[pid].name.clone(), arr));
            }
            layers.push(LayerWeights {
                layer: node.name.clone(),
                weights,
            });
        }
        Ok(KerasWeights { layers })
    }

    /// The graph IR.
    pub fn graph(&self) -> &Graph {
        &self.graph
    }

    /// Weights in canonical layout, parallel to `graph().params`.
    pub fn params(&self) -> &[ArrayD<f32>] {
        &self.params
    }

    /// Replaces every weight (canonical layout; shapes must match `graph().params`). The
    /// off-mask entries of implementation-2 kernels are not part of the canonical layout
    /// and stay as they are ([`Model::set_off_mask`] replaces them).
    pub fn set_params(&mut self, params: Vec<ArrayD<f32>>) -> Result<()> {
        if params.len() != self.params.len()
            || params
                .iter()
                .zip(&self.graph.params)
                .any(|(p, s)| p.shape() != s.shape.as_slice())
        {
            return Err(Error::internal("set_params: shapes do not match the graph"));
        }
        self.params = params;
        Ok(())
    }

    /// The `training_config` of an `.h5`/`.keras` file, if any.
    pub fn training_config(&self) -> Option<&serde_json::Value> {
        self.training_config.as_ref()
    }

    /// Replaces the training configuration (`training_config` of an `.h5`, the
    /// `compile_config` of a `.keras`), e.g. after a `compile` that chose optimizer, loss
    /// and metrics; `None` removes it.
    pub fn set_training_config(&mut self, config: Option<serde_json::Value>) {
        self.training_config = config;
    }

    /// Which Keras dialect the configuration was written in.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Where the weights came from.
    pub fn weights_origin(&self) -> &WeightsOrigin {
        &self.origin
    }

    /// A Keras-style summary table.
    pub fn summary(&self) -> String {
        graph::print::summary(&self.graph)
    }

    /// Per-sample input shape of the first input.
    pub fn input_shape(&self) -> &[usize] {
        self.graph
            .inputs
            .first()
            .map(|&i| self.graph.nodes[i].shape.as_slice())
            .unwrap_or(&[])
    }

    /// Runs the model on a batch `(B, input shape…)` on the reference path and returns
    /// its first output.
    pub fn predict(&self, x: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let mut outs = self.predict_many(std::slice::from_ref(x))?;
        if outs.is_empty() {
            return Err(Error::internal("model produced no output"));
        }
        Ok(outs.swap_remove(0))
    }

    /// Runs the model on one batch per input and returns every output.
    pub fn predict_many(&self, inputs: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.check_inputs(inputs)?;
        let batch = inputs.first().and_then(|x| x.shape().first()).copied();
        crate::budget::check_run(&self.graph, batch.unwrap_or(1), false)?;
        reference::forward(&self.graph, &self.params, inputs)
    }

    /// Gradient of `sum(y · dy)` (inference mode) on the reference path, keyed as Keras
    /// names them: `x` for the input and `<layer>/<weight>` for every trainable weight, in
    /// the Keras file layout of its layer.
    pub fn gradients_keras(
        &self,
        x: &ArrayD<f32>,
        dy: &ArrayD<f32>,
    ) -> Result<Vec<(String, ArrayD<f32>)>> {
        let inputs = std::slice::from_ref(x);
        self.check_inputs(inputs)?;
        let (dx, dparams) = reference::backward::gradients(&self.graph, &self.params, inputs, dy)?;
        self.named_gradients(dx, &dparams)
    }

    /// Names gradients as `lcjit grad` writes them: `x` for the (first) input, then
    /// `<layer>/<weight>` for every trainable weight, converted to the Keras layout of
    /// its layer (gradients are linear in the weights, so the layout map applies).
    pub fn named_gradients(
        &self,
        dx: Vec<ArrayD<f32>>,
        dparams: &[ArrayD<f32>],
    ) -> Result<Vec<(String, ArrayD<f32>)>> {
        let mut out = Vec::with_capacity(dparams.len() + 1);
        if let Some(d) = dx.into_iter().next() {
            out.push(("x".to_string(), d));
        }
        for (pid, g) in dparams.iter().enumerate() {
            let spec = &self.graph.params[pid];
            if !spec.trainable {
                continue;
            }
            let keras = layout::canonical_to_keras(&self.graph, pid, g).map_err(Error::internal)?;
            out.push((
                format!("{}/{}", self.graph.nodes[spec.node].name, spec.name),
                keras,
            ));
        }
        Ok(out)
    }

    /// Checks count, rank and sizes of batched inputs against the model's inputs.
    pub fn check_inputs(&self, inputs: &[ArrayD<f32>]) -> Result<()> {
        if inputs.len() != self.graph.inputs.len() {
            return Err(Error::Input {
                detail: format!(
                    "the model has {} inputs, {} given",
                    self.graph.inputs.len(),
                    inputs.len()
                ),
            });
        }
        let mut batch = None;
        for (x, &id) in inputs.iter().zip(&self.graph.inputs) {
            let node = &self.graph.nodes[id];
            let shape = x.shape();
            if shape.len() != node.shape.len() + 1 || shape[1..] != node.shape[..] || shape[0] == 0
            {
                return Err(Error::Input {
                    detail: format!(
                        "input '{}' expects shape (batch, {}), got {:?}",
                        node.name,
                        node.shape
                            .iter()
                            .map(|d| d.to_string())
                            .collect::<Vec<_>>()
                            .join(", "),
                        shape
                    ),
                });
            }
            if *batch.get_or_insert(shape[0]) != shape[0] {
                return Err(Error::Input {
                    detail: "inputs have different batch sizes".into(),
                });
            }
        }
        Ok(())
    }
}

/// Maps a weight name from a file to the graph's name: strips `layer/` prefixes and `:0`
/// suffixes and translates Keras 1 names (`<layer>_W` → kernel, `<layer>_b` → bias,
/// `running_mean`/`running_std` → moving statistics).
pub fn canonical_weight_name(name: &str, layer: &str) -> String {
    let base = name.rsplit('/').next().unwrap_or(name);
    let base = base.split(':').next().unwrap_or(base);
    let base = base.strip_prefix(&format!("{layer}_")).unwrap_or(base);
    match base {
        "W" => "kernel".into(),
        "b" => "bias".into(),
        "running_mean" => "moving_mean".into(),
        "running_std" => "moving_variance".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_keys_follow_tf_keras_snake_case() {
        use crate::save::snake_case;
        assert_eq!(snake_case("LocallyConnected2D"), "locally_connected2d");
        assert_eq!(snake_case("BatchNormalization"), "batch_normalization");
        assert_eq!(snake_case("Conv2D"), "conv2d");
        assert_eq!(snake_case("Dense"), "dense");
        assert_eq!(snake_case("MaxPooling2D"), "max_pooling2d");
    }

    #[test]
    fn weight_names_from_every_dialect() {
        assert_eq!(canonical_weight_name("lc/kernel:0", "lc"), "kernel");
        assert_eq!(canonical_weight_name("bias", "lc"), "bias");
        assert_eq!(canonical_weight_name("dense_1_W", "dense_1"), "kernel");
        assert_eq!(canonical_weight_name("dense_1_b:0", "dense_1"), "bias");
        assert_eq!(
            canonical_weight_name("bn/moving_mean:0", "bn"),
            "moving_mean"
        );
    }
}
