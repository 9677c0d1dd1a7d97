//! tf-keras `.keras` archives (`model.save("m.keras")`, Keras saving format v3).
//!
//! The archive is a zip holding `config.json` (the serialized model, possibly with a
//! top-level `compile_config`), `metadata.json` (version and date, ignored here) and
//! `model.weights.h5`. tf-keras 2.x `saving_lib` writes that HDF5 file by walking the
//! model's attributes: every Keras object gets a group at its attribute path with a
//! `vars` subgroup whose datasets are named `"0"`, `"1"`, … in the order of
//! `layer.trainable_weights + layer.non_trainable_weights`. The layers of a model sit in
//! its `layers` list, and list members are named after their *class*, snake-cased and
//! deduplicated (`layers/locally_connected2d/vars/0`, `layers/dense_1/vars/1`), not after
//! the layer's `name`. So this reader returns, per child group of `layers`:
//!
//! * the child's name as the layer name (class-derived for tf-keras; some writers use the
//!   layer's own name), in the HDF5 file's link order, which for h5py-written files is
//!   byte-wise name order, not model order: callers match layers to `config.json`;
//! * the datasets of its `vars` group in numeric order, named `"0"`, `"1"`, … (a layer
//!   without `vars` or with an empty one has no weights).
//!
//! Objects nested inside a layer (`layers/<name>/<attribute>/vars`), the model's own
//! `vars`, and the optimizer's state (`optimizer/vars`) are not read. Early Keras 3
//! releases named the list `_layer_checkpoint_dependencies`; that name is accepted when
//! `layers` is absent. The walk is one level deep by construction, so a damaged file
//! with group cycles cannot make it loop.

use std::fs;
use std::io;
use std::path::Path;

use super::npy::{io_in_archive, read_entry, zip_error};
use super::{KerasWeights, LayerWeights};
use crate::error::{Error, Result};

/// The format name used in errors.
const KERAS: &str = ".keras";
/// The model configuration entry.
const CONFIG: &str = "config.json";
/// The weights entry.
const WEIGHTS: &str = "model.weights.h5";

/// Reads a tf-keras `.keras` archive.
///
/// Returns the text of `config.json`, the text of its top-level `compile_config` value
/// (`None` if absent or `null`), and the layer weights as described in the module
/// documentation. A corrupt or truncated archive, a missing entry or a broken
/// `model.weights.h5` is an [`Error::Format`].
pub fn read_keras_archive(path: &Path) -> Result<(String, Option<String>, KerasWeights)> {
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| zip_error(path, KERAS, "reading the zip directory", e))?;

    let config_bytes = entry_bytes(path, &mut archive, CONFIG)?;
    let config = String::from_utf8(config_bytes)
        .map_err(|_| Error::format(path, KERAS, format!("{CONFIG} is not UTF-8 text")))?;
    let parsed: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| Error::format(path, KERAS, format!("{CONFIG} is not valid JSON: {e}")))?;
    let compile_config = match parsed.get("compile_config") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.to_string()),
    };

    let weights_bytes = entry_bytes(path, &mut archive, WEIGHTS)?;
    let weights = read_weights_h5(path, weights_bytes)?;
    Ok((config, compile_config, weights))
}

/// The bytes of entry `name`; a missing entry is a [`Error::Format`].
fn entry_bytes<R: io::Read + io::Seek>(
    path: &Path,
    archive: &mut zip::ZipArchive<R>,
    name: &str,
) -> Result<Vec<u8>> {
    let mut entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::format(
                path,
                KERAS,
                format!("no {name} in the archive"),
            ));
        }
        Err(e) => return Err(zip_error(path, KERAS, &format!("opening {name}"), e)),
    };
    read_entry(&mut entry).map_err(|e| io_in_archive(path, KERAS, &format!("reading {name}"), e))
}

/// Reads the layer weights of a `model.weights.h5` image (see the module documentation).
fn read_weights_h5(path: &Path, bytes: Vec<u8>) -> Result<KerasWeights> {
    let bad = |detail: String| Error::format(path, "HDF5", format!("{WEIGHTS}: {detail}"));
    let file = super::h5::open_image(bytes).map_err(&bad)?;
    let root_groups = file
        .root()
        .groups()
        .map_err(|e| bad(format!("listing the root group: {e}")))?;
    let list = ["layers", "_layer_checkpoint_dependencies"]
        .into_iter()
        .find(|name| root_groups.iter().any(|g| g == name))
        .ok_or_else(|| bad("no 'layers' group".to_owned()))?;
    let layer_names = file
        .group(list)
        .and_then(|g| g.groups())
        .map_err(|e| bad(format!("listing '{list}': {e}")))?;

    let mut layers = Vec::with_capacity(layer_names.len());
    for layer in layer_names {
        let layer_path = format!("{list}/{layer}");
        let children = file
            .group(&layer_path)
            .and_then(|g| g.groups())
            .map_err(|e| bad(format!("listing '{layer_path}': {e}")))?;
        let mut weights = Vec::new();
        if children.iter().any(|c| c == "vars") {
            let vars_path = format!("{layer_path}/vars");
            let names = file
                .group(&vars_path)
                .and_then(|g| g.datasets())
                .map_err(|e| bad(format!("listing '{vars_path}': {e}")))?;
            let mut numbered = Vec::with_capacity(names.len());
            for name in names {
                let index: usize = name.parse().map_err(|_| {
                    bad(format!(
                        "'{vars_path}/{name}': variable names must be numbers"
                    ))
                })?;
                numbered.push((index, name));
            }
            numbered.sort();
            for (_, name) in numbered {
                let ds_path = format!("{vars_path}/{name}");
                let array = super::h5::read_dataset(&file, &ds_path)
                    .map_err(|d| bad(format!("dataset '{ds_path}': {d}")))?;
                weights.push((name, array));
            }
        }
        layers.push(LayerWeights { layer, weights });
    }
    Ok(KerasWeights { layers })
}
