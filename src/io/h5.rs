//! Keras's legacy HDF5 files (`model.save("m.h5")`, `model.save_weights("w.h5")`), read
//! and written with hdf5-pure.
//!
//! Layout (tf-keras 2.x `hdf5_format`), all strings variable-length:
//!
//! ```text
//! /                         attrs: model_config, training_config?, keras_version, backend
//! /model_weights            attrs: layer_names = [layer…], keras_version, backend
//! /model_weights/<layer>    attrs: weight_names = ["<layer>/kernel:0", …]
//! /model_weights/<layer>/<layer>/kernel:0    the dataset (its path is the weight name)
//! ```
//!
//! A weights-only file has the `model_weights` content at the root and no `model_config`.
//!
//! Quirks handled here (DESIGN.md §6):
//! * a layer without weights stores `weight_names` as an *empty float64 array*;
//! * an attribute too large for an object header is split by Keras into `name0`,
//!   `name1`, … and is reassembled;
//! * layers are reached only through `layer_names` and the paths `weight_names` gives,
//!   never by walking groups, because a damaged file can hold group cycles;
//! * the whole file is read before hdf5-pure sees it, so a missing file is [`Error::Io`]
//!   and every hdf5-pure failure (a truncated file fails on the first read past its end,
//!   not on open) is an [`Error::Format`] naming the object being read.

use std::collections::HashMap;
use std::path::Path;

use hdf5_pure::{AttrValue, DType, FileBuilder};
use ndarray::{ArrayD, IxDyn};

use super::{KerasWeights, LayerWeights};
use crate::error::{Error, Result};
use crate::size;

/// The format name used in errors.
const HDF5: &str = "HDF5";
/// `keras_version` written into new files: the tf-keras release the golden files came from.
const KERAS_VERSION: &str = "2.21.0";
/// `backend` written into new files.
const BACKEND: &str = "tensorflow";

/// What a Keras HDF5 file holds.
#[derive(Clone, Debug, PartialEq)]
pub struct H5Model {
    /// The root attribute `model_config` (the model's JSON), absent in weights-only files.
    pub model_config: Option<String>,
    /// The root attribute `training_config` (optimizer and loss JSON), present in files
    /// saved after `compile()`.
    pub training_config: Option<String>,
    /// The layer weights, in `layer_names` order (layers without weights included).
    pub weights: KerasWeights,
}

/// Reads a Keras legacy HDF5 file: a full model (`model_config` plus `model_weights`) or
/// a weights-only file (`layer_names` at the root).
///
/// Weight names are reduced to the bare name (`kernel`, `moving_mean`…). Optimizer
/// weights are not read.
pub fn read_h5(path: &Path) -> Result<H5Model> {
    read_h5_within(path, crate::budget::default_memory_budget())
}

/// [`read_h5`] within `budget` bytes: the file (a regular file, read whole) and every
/// dataset's declared size — its stored bytes and the `f32` array they become — must
/// fit, each dataset checked before it is read (a chunked dataset declared huge with no
/// chunks written is refused by its declaration, not filled in).
pub fn read_h5_within(path: &Path, budget: u64) -> Result<H5Model> {
    let bytes = super::read_regular(path, budget)?;
    let mut allowance = Allowance {
        budget,
        left: budget - bytes.len() as u64,
    };
    read_h5_bytes(path, bytes, &mut allowance)
}

/// What is left of a memory budget while a file's datasets are read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Allowance {
    /// The whole budget (for messages).
    pub(crate) budget: u64,
    /// Bytes still free.
    pub(crate) left: u64,
}

/// Why a dataset could not be read.
#[derive(Debug)]
pub(crate) enum DatasetError {
    /// The file is wrong: the detail of an [`Error::Format`].
    Format(String),
    /// The dataset's declared size is over what is left of the budget.
    Budget {
        /// Its declared shape.
        shape: Vec<u64>,
        /// The bytes it needs (stored plus `f32`).
        bytes: u128,
    },
}

impl DatasetError {
    /// The error about dataset `ds_path` of the file at `path`; `inside` prefixes the
    /// dataset's name (the archive entry of a `.keras`, or nothing).
    pub(crate) fn into_error(
        self,
        path: &Path,
        inside: &str,
        ds_path: &str,
        allowance: &Allowance,
    ) -> Error {
        match self {
            DatasetError::Format(d) => {
                Error::format(path, HDF5, format!("{inside}dataset '{ds_path}': {d}"))
            }
            DatasetError::Budget { shape, bytes } => Error::file_budget(
                path,
                format!("{inside}dataset '{ds_path}' (declared shape {shape:?}) with the data before it"),
                bytes.saturating_add(u128::from(allowance.budget - allowance.left)),
                allowance.budget,
            ),
        }
    }
}

/// [`read_h5`] on a file image already in memory; `path` is only used in errors.
pub(crate) fn read_h5_bytes(
    path: &Path,
    bytes: Vec<u8>,
    allowance: &mut Allowance,
) -> Result<H5Model> {
    let bad = |detail: String| Error::format(path, HDF5, detail);
    let file = open_image(bytes).map_err(&bad)?;
    let root_attrs = file
        .root()
        .attrs()
        .map_err(|e| bad(format!("root attributes: {}", object_error(e))))?;
    let model_config = string_attr(&root_attrs, "model_config").map_err(|d| bad(d.clone()))?;
    let training_config =
        string_attr(&root_attrs, "training_config").map_err(|d| bad(d.clone()))?;

    // A full model keeps its weights in `model_weights`; `save_weights` puts them at the
    // root. Deciding by `layer_names` also accepts a full model saved without weights.
    let (prefix, weight_attrs) =
        if root_attrs.contains_key("layer_names") || root_attrs.contains_key("layer_names0") {
            ("", root_attrs)
        } else {
            let group = file.group("model_weights").map_err(|e| {
                bad(format!(
                "no 'layer_names' attribute at the root and no readable 'model_weights' group: {}",
                object_error(e)
            ))
            })?;
            let attrs = group.attrs().map_err(|e| {
                bad(format!(
                    "attributes of 'model_weights': {}",
                    object_error(e)
                ))
            })?;
            ("model_weights/", attrs)
        };
    let where_names = format!("{}layer_names", prefix);
    let layer_names = string_list_attr(&weight_attrs, "layer_names")
        .map_err(|d| bad(format!("attribute '{where_names}': {d}")))?
        .ok_or_else(|| bad(format!("missing attribute '{where_names}'")))?;

    let mut layers = Vec::with_capacity(layer_names.len());
    for layer in layer_names {
        let group_path = format!("{prefix}{layer}");
        let group = file
            .group(&group_path)
            .map_err(|e| bad(format!("layer group '{group_path}': {}", object_error(e))))?;
        let attrs = group
            .attrs()
            .map_err(|e| bad(format!("attributes of '{group_path}': {}", object_error(e))))?;
        let weight_names = string_list_attr(&attrs, "weight_names")
            .map_err(|d| bad(format!("attribute '{group_path}/weight_names': {d}")))?
            .unwrap_or_default();
        let bare = bare_names(&layer, &weight_names);
        let mut weights = Vec::with_capacity(weight_names.len());
        for (full, name) in weight_names.iter().zip(bare) {
            let ds_path = format!("{group_path}/{full}");
            let array = read_dataset(&file, &ds_path, allowance)
                .map_err(|e| e.into_error(path, "", &ds_path, allowance))?;
            weights.push((name, array));
        }
        layers.push(LayerWeights { layer, weights });
    }
    Ok(H5Model {
        model_config,
        training_config,
        weights: KerasWeights { layers },
    })
}

/// Opens an HDF5 file image, refusing one shorter than its superblock says.
///
/// hdf5-pure opens a truncated file happily and fails only on the first read past the
/// end, or not at all when the lost tail held nothing lcjit reads. The HDF5 C library
/// compares the superblock's end-of-file address with the file's size on open; this does
/// the same, so truncation is reported as such, up front.
pub(crate) fn open_image(bytes: Vec<u8>) -> std::result::Result<hdf5_pure::File, String> {
    let found = bytes.len() as u64;
    let file = hdf5_pure::File::from_bytes(bytes).map_err(|e| e.to_string())?;
    let sb = file.superblock();
    // An undefined address (all ones) means the writer did not record the end. The
    // stored end-of-file address is absolute (the HDF5 C library writes the relative end
    // plus the base address): adding the base again would refuse every file with a
    // userblock as truncated.
    if sb.eof_address != u64::MAX {
        let expected = sb.eof_address;
        if found < expected {
            return Err(format!(
                "truncated file (expected {expected} bytes, found {found})"
            ));
        }
    }
    Ok(file)
}

/// Reads a numeric dataset as `f32` (values converted from the stored type), after
/// checking its declared size against `allowance` (which it then uses up).
pub(crate) fn read_dataset(
    file: &hdf5_pure::File,
    ds_path: &str,
    allowance: &mut Allowance,
) -> std::result::Result<ArrayD<f32>, DatasetError> {
    let fmt = |e: hdf5_pure::Error| DatasetError::Format(object_error(e));
    let ds = file.dataset(ds_path).map_err(fmt)?;
    let dtype = ds.dtype().map_err(fmt)?;
    let numeric = matches!(
        dtype,
        DType::F32
            | DType::F64
            | DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64
    );
    if !numeric {
        return Err(DatasetError::Format(format!(
            "element type {dtype} is not numeric"
        )));
    }
    let declared = ds.shape().map_err(fmt)?;
    let too_large = || DatasetError::Budget {
        shape: declared.clone(),
        bytes: crate::budget::OVERFLOW_BYTES,
    };
    let shape = declared
        .iter()
        .map(|&d| size::to_usize(d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| too_large())?;
    let item = ds.element_size().map_err(fmt)?.max(1);
    size::representable(&shape, item).map_err(|_| too_large())?;
    let n = size::elems(&shape).map_err(|_| too_large())?;
    let out = size::bytes_of_elems(n, 4).map_err(|_| too_large())?;
    // The stored values and their f32 copy exist together while converting.
    let need = size::bytes_of_elems(n, item)
        .and_then(|raw| size::add64(raw, out))
        .map_err(|_| too_large())?;
    if need > allowance.left {
        return Err(DatasetError::Budget {
            shape: declared,
            bytes: u128::from(need),
        });
    }
    let data = ds.read_f32().map_err(fmt)?;
    allowance.left -= out;
    ArrayD::from_shape_vec(IxDyn(&shape), data)
        .map_err(|e| DatasetError::Format(format!("data does not match shape {shape:?}: {e}")))
}

/// The message of an hdf5-pure error met while resolving or reading an object.
///
/// A soft or external link has no object header of its own; hdf5-pure follows the
/// undefined address (all ones) such a link stores in an old-style group and reports a
/// read of 2^64 − 1 bytes. That is said plainly instead.
pub(crate) fn object_error(e: hdf5_pure::Error) -> String {
    let text = e.to_string();
    if text.contains("path not found") {
        // New-style groups keep soft and external links as link messages, which
        // hdf5-pure passes over when it looks a name up.
        return format!(
            "{text} (absent, or a soft or external link: lcjit reads only objects \
             stored in the file itself)"
        );
    }
    if text.contains(&u64::MAX.to_string()) || text.contains("ffffffffffffffff") {
        "not an object stored in this file (a soft or external link, or a damaged \
         address): lcjit reads only objects stored in the file itself"
            .to_owned()
    } else {
        text
    }
}

/// Bare weight names for a layer's `weight_names`: `"lc/kernel:0"` → `"kernel"`.
///
/// The `:N` suffix and the scope path are dropped. Should that make two names of one
/// layer equal (weights of nested sub-layers), the layer's names keep their scope path
/// (only the leading `<layer>/` is dropped), so every name stays unique.
fn bare_names(layer: &str, full: &[String]) -> Vec<String> {
    let without_suffix = |n: &str| -> String {
        match n.rsplit_once(':') {
            Some((head, tail)) if !tail.is_empty() && tail.bytes().all(|b| b.is_ascii_digit()) => {
                head.to_owned()
            }
            _ => n.to_owned(),
        }
    };
    let last: Vec<String> = full
        .iter()
        .map(|n| {
            let n = without_suffix(n);
            n.rsplit('/').next().unwrap_or(&n).to_owned()
        })
        .collect();
    let unique = last
        .iter()
        .enumerate()
        .all(|(i, n)| !last.iter().take(i).any(|m| m == n));
    if unique {
        return last;
    }
    full.iter()
        .map(|n| {
            let n = without_suffix(n);
            n.strip_prefix(layer)
                .and_then(|r| r.strip_prefix('/'))
                .map(str::to_owned)
                .unwrap_or(n)
        })
        .collect()
}

/// A string attribute, `None` if absent.
fn string_attr(
    attrs: &HashMap<String, AttrValue>,
    name: &str,
) -> std::result::Result<Option<String>, String> {
    match attrs.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| format!("attribute '{name}' is a {}, not a string", v.type_name())),
    }
}

/// A list-of-strings attribute as Keras's `load_attributes_from_hdf5_group` reads it:
/// `name` itself, or the chunks `name0`, `name1`, … Keras splits a long list into.
/// An empty numeric array (how Keras stores an empty list) is an empty list.
fn string_list_attr(
    attrs: &HashMap<String, AttrValue>,
    name: &str,
) -> std::result::Result<Option<Vec<String>>, String> {
    if let Some(v) = attrs.get(name) {
        return strings_of(v).map(Some);
    }
    let mut out: Option<Vec<String>> = None;
    // Chunk numbers are consecutive from 0; the attribute count bounds the loop.
    for chunk in 0..attrs.len() {
        match attrs.get(&format!("{name}{chunk}")) {
            Some(v) => out.get_or_insert_with(Vec::new).extend(strings_of(v)?),
            None => break,
        }
    }
    Ok(out)
}

/// The strings of one attribute value (see [`string_list_attr`]).
fn strings_of(v: &AttrValue) -> std::result::Result<Vec<String>, String> {
    if let Some(s) = v.as_strings() {
        return Ok(s.to_vec());
    }
    let empty_numeric = v.to_f64s().is_some_and(|x| x.is_empty())
        || v.to_i64s().is_some_and(|x| x.is_empty())
        || v.to_u64s().is_some_and(|x| x.is_empty());
    if empty_numeric {
        Ok(Vec::new())
    } else {
        Err(format!("expected strings, found {}", v.type_name()))
    }
}

/// Writes `weights` in Keras's legacy HDF5 layout, atomically.
///
/// With `model_config` the file is a full model (`model.save`): root attributes
/// `model_config`, `training_config` (if given), `keras_version`, `backend`, and the
/// weights in group `model_weights`. Without it the file is what `save_weights` writes:
/// the layer groups and `layer_names` at the root. Each layer's `weight_names` are
/// `"<layer>/<weight>:0"` with the dataset at `<layer>/<layer>/<weight>:0`; a layer
/// without weights gets an empty float64 `weight_names`, as Keras writes it.
pub fn write_h5_weights(
    path: &Path,
    model_config: Option<&str>,
    training_config: Option<&str>,
    weights: &KerasWeights,
) -> Result<()> {
    // HDF5 link names cannot hold '/', and '.' or '' name no object: refuse them before
    // writing rather than produce a file Keras cannot load.
    let link_ok = |n: &str| !n.is_empty() && n != "." && !n.contains('/');
    for (i, l) in weights.layers.iter().enumerate() {
        if !link_ok(&l.layer) {
            return Err(weights_error(
                path,
                &l.layer,
                "",
                "not a valid HDF5 group name",
            ));
        }
        if weights.layers.iter().take(i).any(|m| m.layer == l.layer) {
            return Err(weights_error(path, &l.layer, "", "layer listed twice"));
        }
        for (j, (w, _)) in l.weights.iter().enumerate() {
            if !link_ok(w) {
                return Err(weights_error(
                    path,
                    &l.layer,
                    w,
                    "not a valid HDF5 dataset name",
                ));
            }
            if l.weights.iter().take(j).any(|(v, _)| v == w) {
                return Err(weights_error(path, &l.layer, w, "weight listed twice"));
            }
        }
    }

    let mut fb = FileBuilder::new();
    let layer_names =
        AttrValue::VarLenStringArray(weights.layers.iter().map(|l| l.layer.clone()).collect());
    let text = |s: &str| AttrValue::VarLenString(s.to_owned());
    match model_config {
        Some(config) => {
            fb.set_attr("model_config", text(config));
            if let Some(tc) = training_config {
                fb.set_attr("training_config", text(tc));
            }
            fb.set_attr("keras_version", text(KERAS_VERSION));
            fb.set_attr("backend", text(BACKEND));
            let mut mw = fb.create_group("model_weights");
            mw.set_attr("layer_names", layer_names);
            mw.set_attr("keras_version", text(KERAS_VERSION));
            mw.set_attr("backend", text(BACKEND));
            for l in &weights.layers {
                let g = layer_group(mw.create_group(&l.layer), l);
                mw.add_group(g);
            }
            // tf-keras writes the model's own (here: no) weights beside the layers.
            let top = LayerWeights {
                layer: "top_level_model_weights".to_owned(),
                weights: Vec::new(),
            };
            if weights.layer(&top.layer).is_none() {
                let g = layer_group(mw.create_group(&top.layer), &top);
                mw.add_group(g);
            }
            fb.add_group(mw.finish());
        }
        None => {
            if let Some(tc) = training_config {
                fb.set_attr("training_config", text(tc));
            }
            fb.set_attr("layer_names", layer_names);
            fb.set_attr("keras_version", text(KERAS_VERSION));
            fb.set_attr("backend", text(BACKEND));
            for l in &weights.layers {
                let g = layer_group(fb.create_group(&l.layer), l);
                fb.add_group(g);
            }
        }
    }
    super::write_atomic(path, |w| {
        fb.finish_to(w)
            .map_err(|e| std::io::Error::other(format!("serializing HDF5: {e}")))
    })
}

/// An [`Error::Weights`] about `layer`/`weight` of the file being written.
fn weights_error(path: &Path, layer: &str, weight: &str, detail: &str) -> Error {
    Error::Weights {
        source_name: path.display().to_string(),
        layer: layer.to_owned(),
        weight: weight.to_owned(),
        detail: detail.to_owned(),
    }
}

/// Fills a layer's group: `weight_names` and the datasets under the nested `<layer>` group.
fn layer_group(mut g: hdf5_pure::GroupBuilder, l: &LayerWeights) -> hdf5_pure::FinishedGroup {
    if l.weights.is_empty() {
        g.set_attr("weight_names", AttrValue::F64Array(Vec::new()));
        return g.finish();
    }
    g.set_attr(
        "weight_names",
        AttrValue::VarLenStringArray(
            l.weights
                .iter()
                .map(|(w, _)| format!("{}/{w}:0", l.layer))
                .collect(),
        ),
    );
    let mut scope = g.create_group(&l.layer);
    for (w, a) in &l.weights {
        let shape: Vec<u64> = a.shape().iter().map(|&d| d as u64).collect();
        // `iter` walks logical (C) order whatever the array's memory layout.
        let data: Vec<f32> = a.iter().copied().collect();
        scope
            .create_dataset(&format!("{w}:0"))
            .with_f32_data(&data)
            .with_shape(&shape);
    }
    g.add_group(scope.finish());
    g.finish()
}

#[cfg(test)]
#[path = "h5_tests.rs"]
mod tests;
