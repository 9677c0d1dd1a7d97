//! Saving models back to Keras files: [`Model::save`] and [`Model::save_weights`].
//!
//! The model configuration is always written in the tf-keras 2.x dialect
//! ([`crate::frontend::serialize::to_keras_json`]), so saving a Keras 1 or Keras 2 model
//! converts it. Weights are written in the Keras file layout of each layer
//! ([`Model::keras_weights`]): locally connected kernels in the layout of the layer's
//! `implementation` (1, 2 or 3); implementation-2 kernels whole, with the entries outside
//! the connectivity mask the model kept from its file or its initializer.
//!
//! Formats, chosen by the file extension:
//! * `.h5` / `.hdf5`: Keras's legacy HDF5 layout ([`crate::io::write_h5_weights`]), a full
//!   model (`model.save`) or, from [`Model::save_weights`], weights only;
//! * `.keras`: a tf-keras saving-format-v3 zip of `config.json` (the model, plus
//!   `compile_config` when the model has a training configuration), `metadata.json` and
//!   `model.weights.h5`, whose layer groups are named `layers/<snake_case class>[_n]/vars/<i>`
//!   as tf-keras `saving_lib` names them;
//! * `.npz`: weights only, keys `<layer>/<weight>`.
//!
//! Every file is written atomically (a temporary file renamed over the destination).

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use hdf5_pure::FileBuilder;
use serde_json::{json, Value};

use crate::error::{Error, Result};
use crate::frontend::serialize::{to_keras_json, KERAS_VERSION};
use crate::graph::{Activation, Graph, Op};
use crate::io::{self, KerasWeights};
use crate::Model;

/// The lower-cased extension of `path`.
fn ext(path: &Path) -> String {
    path.extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase()
}

impl Model {
    /// Saves the whole model, chosen by extension: `.h5` (legacy full model: config,
    /// training configuration if any, weights), `.keras` (tf-keras zip archive) or `.npz`
    /// (weights only, keys `<layer>/<weight>`). Any other extension is
    /// [`Error::UnsupportedFile`].
    ///
    /// ```no_run
    /// let model = lcjit::Model::load("keras1.json")?;
    /// model.save("model.keras".as_ref())?; // converted to tf-keras
    /// # Ok::<(), lcjit::Error>(())
    /// ```
    pub fn save(&self, path: &Path) -> Result<()> {
        match ext(path).as_str() {
            "h5" | "hdf5" => {
                let config = self.config_text(path)?;
                let training = self.training_config().map(Value::to_string);
                io::write_h5_weights(
                    path,
                    Some(&config),
                    training.as_deref(),
                    &self.keras_weights()?,
                )
            }
            "keras" => self.save_keras(path),
            "npz" => self.save_npz(path),
            _ => Err(Error::UnsupportedFile {
                path: path.to_path_buf(),
                expected: ".h5, .keras or .npz",
            }),
        }
    }

    /// Saves the weights only: `.h5` (what Keras's `save_weights` writes) or `.npz`
    /// (keys `<layer>/<weight>`). Any other extension is [`Error::UnsupportedFile`].
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        match ext(path).as_str() {
            "h5" | "hdf5" => io::write_h5_weights(path, None, None, &self.keras_weights()?),
            "npz" => self.save_npz(path),
            _ => Err(Error::UnsupportedFile {
                path: path.to_path_buf(),
                expected: ".h5 or .npz",
            }),
        }
    }

    /// The model configuration as JSON text, refusing what Keras cannot express.
    fn config_text(&self, path: &Path) -> Result<String> {
        check_representable(self.graph(), path)?;
        Ok(to_keras_json(self.graph()).to_string())
    }

    fn save_npz(&self, path: &Path) -> Result<()> {
        let weights = self.keras_weights()?;
        let entries: Vec<(String, ndarray::ArrayD<f32>)> = weights
            .layers
            .into_iter()
            .flat_map(|l| {
                let layer = l.layer;
                l.weights
                    .into_iter()
                    .map(move |(w, a)| (format!("{layer}/{w}"), a))
            })
            .collect();
        io::write_npz(path, &entries)
    }

    fn save_keras(&self, path: &Path) -> Result<()> {
        check_representable(self.graph(), path)?;
        let mut config = to_keras_json(self.graph());
        if let Value::Object(m) = &mut config {
            // saving_lib locates the model class through `module`.
            let functional = m.get("class_name").and_then(Value::as_str) == Some("Functional");
            let module = if functional {
                "tf_keras.src.engine.functional"
            } else {
                "keras"
            };
            m.insert("module".into(), json!(module));
            m.insert("registered_name".into(), Value::Null);
            if let Some(tc) = self.training_config() {
                m.insert("compile_config".into(), tc.clone());
            }
        }
        let metadata = json!({"keras_version": KERAS_VERSION, "date_saved": date_saved()});
        let weights = archive_weights_h5(self.graph(), &self.keras_weights()?)
            .map_err(|d| Error::format(path, ".keras", format!("model.weights.h5: {d}")))?;
        let entries: [(&str, Vec<u8>); 3] = [
            ("metadata.json", metadata.to_string().into_bytes()),
            ("config.json", config.to_string().into_bytes()),
            ("model.weights.h5", weights),
        ];
        io::write_atomic(path, |w| {
            let mut zw = zip::ZipWriter::new(w);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            for (name, bytes) in &entries {
                zw.start_file(*name, opts).map_err(std::io::Error::other)?;
                zw.write_all(bytes)?;
            }
            zw.finish().map_err(std::io::Error::other)?;
            Ok(())
        })
    }
}

/// Refuses graphs with a value no Keras configuration can express (a hand-built graph
/// with the tanh-approximated GELU); everything the front end reads can be saved.
fn check_representable(graph: &Graph, path: &Path) -> Result<()> {
    for node in &graph.nodes {
        let act = match &node.op {
            Op::LocallyConnected(l) => Some(&l.activation),
            Op::Dense(d) => Some(&d.activation),
            Op::Conv(c) => Some(&c.activation),
            Op::Activation(a) => Some(a),
            _ => None,
        };
        if let Some(Activation::Gelu { approximate: true }) = act {
            return Err(Error::LayerConfig {
                source_name: path.display().to_string(),
                layer: node.name.clone(),
                field: "activation".into(),
                detail: "the tanh-approximated GELU has no tf-keras configuration".into(),
            });
        }
    }
    Ok(())
}

/// tf-keras `to_snake_case` of a class name (`LocallyConnected2D` → `locally_connected2d`).
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::new();
    for (i, &ch) in chars.iter().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|c| c.is_ascii_lowercase());
            if prev.is_ascii_lowercase() || next_lower {
                out.push('_');
            }
        }
        out.push(ch.to_ascii_lowercase());
    }
    out
}

/// The `layers/` group name of every node, as tf-keras `saving_lib` names the members of
/// `model.layers`: the snake-cased class, numbered `_1`, `_2`… per class in model order.
pub(crate) fn archive_keys(graph: &Graph) -> Vec<String> {
    let mut used: HashMap<String, usize> = HashMap::new();
    graph
        .nodes
        .iter()
        .map(|n| {
            let class = match &n.op {
                // Activation nodes may be written as ReLU/LeakyReLU/ELU/Softmax layers.
                Op::Activation(_) => crate::frontend::serialize::layer_class(n),
                op => op.kind_name(),
            };
            let base = snake_case(&class);
            let count = used.entry(base.clone()).or_insert(0);
            let key = if *count == 0 {
                base.clone()
            } else {
                format!("{base}_{count}")
            };
            *count += 1;
            key
        })
        .collect()
}

/// The `model.weights.h5` image of a `.keras` archive: `layers/<key>/vars/<i>` per
/// layer (an empty `vars` for layers without weights) and the model's own empty `vars`.
fn archive_weights_h5(
    graph: &Graph,
    weights: &KerasWeights,
) -> std::result::Result<Vec<u8>, String> {
    let keys = archive_keys(graph);
    let mut fb = FileBuilder::new();
    let mut layers = fb.create_group("layers");
    for (node, key) in graph.nodes.iter().zip(&keys) {
        let mut g = layers.create_group(key);
        let mut vars = g.create_group("vars");
        if let Some(l) = weights.layer(&node.name) {
            for (i, (_, a)) in l.weights.iter().enumerate() {
                let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
                let data: Vec<f32> = a.iter().copied().collect();
                vars.create_dataset(&i.to_string())
                    .with_f32_data(&data)
                    .with_shape(&shape);
            }
        }
        g.add_group(vars.finish());
        layers.add_group(g.finish());
    }
    fb.add_group(layers.finish());
    let top_vars = fb.create_group("vars");
    fb.add_group(top_vars.finish());
    fb.finish().map_err(|e| format!("serializing HDF5: {e}"))
}

/// The current UTC time as tf-keras writes `date_saved`: `YYYY-MM-DD@HH:MM:SS`.
fn date_saved() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}@{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Year, month and day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_snake_case() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(snake_case("LocallyConnected2D"), "locally_connected2d");
        assert_eq!(snake_case("BatchNormalization"), "batch_normalization");
        assert_eq!(snake_case("LeakyReLU"), "leaky_re_lu");
        assert_eq!(snake_case("ReLU"), "re_lu");
    }
}
