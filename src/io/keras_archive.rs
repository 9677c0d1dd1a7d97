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

use std::io;
use std::path::Path;

use super::h5::Allowance;
use super::npy::{io_in_archive, read_entry, zip_error};
use super::{KerasWeights, LayerWeights, JSON_PARSE_FACTOR};
use crate::error::{Error, Result};

/// The format name used in errors.
const KERAS: &str = ".keras";
/// The model configuration entry.
const CONFIG: &str = "config.json";
/// The weights entry.
const WEIGHTS: &str = "model.weights.h5";

/// Reads a tf-keras `.keras` archive.
///
/// Returns the text of `config.json` (verbatim), the text of its top-level
/// `compile_config` value (`None` if absent or `null`; re-serialized by serde_json, so
/// compact and with object keys sorted, but the same JSON value), and the layer weights
/// as described in the module documentation. A corrupt or truncated archive, a missing entry or a broken
/// `model.weights.h5` is an [`Error::Format`].
pub fn read_keras_archive(path: &Path) -> Result<(String, Option<String>, KerasWeights)> {
    read_keras_archive_within(path, crate::budget::default_memory_budget())
}

/// [`read_keras_archive`] within `budget` bytes: the archive must be a regular file;
/// `config.json` is admitted when its declared uncompressed size times
/// [`super::JSON_PARSE_FACTOR`] fits, `model.weights.h5` when its declared size fits
/// what is left, and its datasets as in [`super::read_h5_within`]; each is checked
/// before it is inflated, and inflating stops at the declared size. Other entries are
/// never read.
pub fn read_keras_archive_within(
    path: &Path,
    budget: u64,
) -> Result<(String, Option<String>, KerasWeights)> {
    let (file, _) = super::open_regular(path, budget)?;
    let mut archive = zip::ZipArchive::new(io::BufReader::new(file))
        .map_err(|e| zip_error(path, KERAS, "reading the zip directory", e))?;

    let config_bytes = entry_bytes(path, &mut archive, CONFIG, budget, JSON_PARSE_FACTOR)?;
    let config = String::from_utf8(config_bytes)
        .map_err(|_| Error::format(path, KERAS, format!("{CONFIG} is not UTF-8 text")))?;
    let parsed: serde_json::Value = serde_json::from_str(&config)
        .map_err(|e| Error::format(path, KERAS, format!("{CONFIG} is not valid JSON: {e}")))?;
    let compile_config = match parsed.get("compile_config") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v.to_string()),
    };
    drop(parsed);

    // The configuration text stays (it is returned); its parse tree is gone.
    let left = budget.saturating_sub(config.len() as u64);
    let weights_bytes = entry_bytes(path, &mut archive, WEIGHTS, left, 1)?;
    let mut allowance = Allowance {
        budget,
        left: left - weights_bytes.len() as u64,
    };
    let weights = read_weights_h5(path, weights_bytes, &mut allowance)?;
    Ok((config, compile_config, weights))
}

/// The bytes of entry `name`, admitted when `factor` times its declared size fits
/// `budget`; a missing entry is a [`Error::Format`].
fn entry_bytes<R: io::Read + io::Seek>(
    path: &Path,
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    budget: u64,
    factor: u64,
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
    let need = u128::from(entry.size()) * u128::from(factor);
    if need > u128::from(budget) {
        let how = if factor > 1 {
            format!(" (up to {factor}× once parsed)")
        } else {
            String::new()
        };
        return Err(Error::file_budget(
            path,
            format!("entry '{name}' of {} bytes uncompressed{how}", entry.size()),
            need,
            budget,
        ));
    }
    read_entry(&mut entry).map_err(|e| io_in_archive(path, KERAS, &format!("reading {name}"), e))
}

/// Reads the layer weights of a `model.weights.h5` image (see the module documentation).
fn read_weights_h5(path: &Path, bytes: Vec<u8>, allowance: &mut Allowance) -> Result<KerasWeights> {
    let bad = |detail: String| Error::format(path, "HDF5", format!("{WEIGHTS}: {detail}"));
    let file = super::h5::open_image(bytes).map_err(&bad)?;
    let root_groups = file.root().groups().map_err(|e| {
        bad(format!(
            "listing the root group: {}",
            super::h5::object_error(e)
        ))
    })?;
    let list = ["layers", "_layer_checkpoint_dependencies"]
        .into_iter()
        .find(|name| root_groups.iter().any(|g| g == name))
        .ok_or_else(|| bad("no 'layers' group".to_owned()))?;
    let layer_names = file
        .group(list)
        .and_then(|g| g.groups())
        .map_err(|e| bad(format!("listing '{list}': {}", super::h5::object_error(e))))?;

    let mut layers = Vec::with_capacity(layer_names.len());
    for layer in layer_names {
        let layer_path = format!("{list}/{layer}");
        let children = file
            .group(&layer_path)
            .and_then(|g| g.groups())
            .map_err(|e| {
                bad(format!(
                    "listing '{layer_path}': {}",
                    super::h5::object_error(e)
                ))
            })?;
        let mut weights = Vec::new();
        if children.iter().any(|c| c == "vars") {
            let vars_path = format!("{layer_path}/vars");
            let names = file
                .group(&vars_path)
                .and_then(|g| g.datasets())
                .map_err(|e| {
                    bad(format!(
                        "listing '{vars_path}': {}",
                        super::h5::object_error(e)
                    ))
                })?;
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
                let array = super::h5::read_dataset(&file, &ds_path, allowance).map_err(|e| {
                    e.into_error(path, &format!("{WEIGHTS}: "), &ds_path, allowance)
                })?;
                weights.push((name, array));
            }
        }
        layers.push(LayerWeights { layer, weights });
    }
    Ok(KerasWeights { layers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_dir;
    use hdf5_pure::FileBuilder;
    use std::fs;
    use std::io::Write;

    const CONFIG_JSON: &str = r#"{"class_name": "Sequential", "config": {"name": "s", "layers": []}, "compile_config": {"loss": "mse", "optimizer": "sgd"}}"#;

    /// A `model.weights.h5` laid out as tf-keras's `saving_lib` writes it.
    fn weights_h5(list: &str) -> Vec<u8> {
        let mut fb = FileBuilder::new();
        let root_vars = fb.create_group("vars");
        fb.add_group(root_vars.finish());
        let mut layers = fb.create_group(list);
        // A layer with more than ten variables checks numeric (not text) ordering.
        let specs: [(&str, usize); 3] = [
            ("locally_connected2d", 2),
            ("input_layer", 0),
            ("dense", 12),
        ];
        for (name, count) in specs {
            let mut g = layers.create_group(name);
            let mut vars = g.create_group("vars");
            for i in 0..count {
                vars.create_dataset(&i.to_string())
                    .with_f32_data(&[i as f32, -(i as f32), 0.5])
                    .with_shape(&[1, 3]);
            }
            g.add_group(vars.finish());
            layers.add_group(g.finish());
        }
        fb.add_group(layers.finish());
        let mut opt = fb.create_group("optimizer");
        let mut vars = opt.create_group("vars");
        vars.create_dataset("0").with_i64_data(&[7]);
        opt.add_group(vars.finish());
        fb.add_group(opt.finish());
        fb.finish().expect("building model.weights.h5")
    }

    fn zip_bytes(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zw = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, bytes) in entries {
            zw.start_file(*name, opts).expect("start entry");
            zw.write_all(bytes).expect("entry data");
        }
        zw.finish().expect("finish zip").into_inner()
    }

    fn good_archive() -> Vec<u8> {
        let h5 = weights_h5("layers");
        zip_bytes(&[
            ("metadata.json", br#"{"keras_version": "2.21.0"}"#),
            ("config.json", CONFIG_JSON.as_bytes()),
            ("model.weights.h5", &h5),
        ])
    }

    fn format_detail(r: Result<(String, Option<String>, KerasWeights)>, what: &str) -> String {
        match r {
            Err(Error::Format { detail, .. }) => detail,
            other => panic!("{what}: expected a Format error, got {other:?}"),
        }
    }

    #[test]
    fn reads_config_compile_config_and_layer_vars() {
        let dir = test_dir("keras-good");
        let p = dir.join("m.keras");
        fs::write(&p, good_archive()).expect("write");
        let (config, compile, weights) = read_keras_archive(&p).expect("read");
        assert_eq!(config, CONFIG_JSON);
        let compile: serde_json::Value =
            serde_json::from_str(&compile.expect("compile_config")).expect("JSON");
        assert_eq!(compile["loss"], "mse");

        let mut names: Vec<&str> = weights.layers.iter().map(|l| l.layer.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, ["dense", "input_layer", "locally_connected2d"]);
        assert!(weights
            .layer("input_layer")
            .expect("input")
            .weights
            .is_empty());
        let dense = weights.layer("dense").expect("dense");
        let order: Vec<&str> = dense.weights.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            order,
            ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11"]
        );
        for (i, (_, a)) in dense.weights.iter().enumerate() {
            assert_eq!(a.shape(), [1, 3]);
            assert_eq!(a[[0, 0]], i as f32);
        }
        assert_eq!(
            weights
                .layer("locally_connected2d")
                .expect("lc")
                .weights
                .len(),
            2
        );
    }

    #[test]
    fn keras3_list_name_and_null_compile_config() {
        let dir = test_dir("keras-k3");
        let h5 = weights_h5("_layer_checkpoint_dependencies");
        let p = dir.join("m.keras");
        let config = r#"{"class_name": "Sequential", "compile_config": null}"#;
        fs::write(
            &p,
            zip_bytes(&[
                ("config.json", config.as_bytes()),
                ("model.weights.h5", &h5),
            ]),
        )
        .expect("write");
        let (text, compile, weights) = read_keras_archive(&p).expect("read");
        assert_eq!(text, config);
        assert_eq!(compile, None);
        assert_eq!(weights.layers.len(), 3);
    }

    #[test]
    fn broken_archives_are_format_errors() {
        let dir = test_dir("keras-broken");
        let p = dir.join("m.keras");
        let h5 = weights_h5("layers");
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            (
                "not a zip",
                b"PK but not really a zip archive".to_vec(),
                "zip",
            ),
            (
                "no config",
                zip_bytes(&[("model.weights.h5", &h5)]),
                "no config.json",
            ),
            (
                "no weights",
                zip_bytes(&[("config.json", b"{}")]),
                "no model.weights.h5",
            ),
            (
                "config not JSON",
                zip_bytes(&[("config.json", b"{not json"), ("model.weights.h5", &h5)]),
                "not valid JSON",
            ),
            (
                "weights not HDF5",
                zip_bytes(&[("config.json", b"{}"), ("model.weights.h5", b"garbage")]),
                "model.weights.h5",
            ),
            (
                "truncated HDF5",
                zip_bytes(&[
                    ("config.json", b"{}"),
                    ("model.weights.h5", &h5[..h5.len() - 10]),
                ]),
                "truncated file",
            ),
            (
                "no layers",
                zip_bytes(&[
                    ("config.json", b"{}"),
                    (
                        "model.weights.h5",
                        &FileBuilder::new().finish().expect("h5"),
                    ),
                ]),
                "no 'layers' group",
            ),
        ];
        for (what, bytes, needle) in cases {
            fs::write(&p, &bytes).expect("write");
            let d = format_detail(read_keras_archive(&p), what);
            assert!(d.contains(needle), "{what}: {d}");
        }

        // Non-numeric variable names.
        let mut fb = FileBuilder::new();
        let mut layers = fb.create_group("layers");
        let mut g = layers.create_group("dense");
        let mut vars = g.create_group("vars");
        vars.create_dataset("kernel").with_f32_data(&[1.0]);
        g.add_group(vars.finish());
        layers.add_group(g.finish());
        fb.add_group(layers.finish());
        let bad = fb.finish().expect("h5");
        fs::write(
            &p,
            zip_bytes(&[("config.json", b"{}"), ("model.weights.h5", &bad)]),
        )
        .expect("write");
        let d = format_detail(read_keras_archive(&p), "named vars");
        assert!(d.contains("layers/dense/vars/kernel"), "{d}");

        let e = read_keras_archive(&dir.join("missing.keras")).expect_err("missing");
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn truncated_and_flipped_archives_never_panic() {
        let dir = test_dir("keras-cut");
        let p = dir.join("m.keras");
        let bytes = good_archive();
        for len in (0..bytes.len()).step_by(13) {
            fs::write(&p, &bytes[..len]).expect("write");
            format_detail(read_keras_archive(&p), &format!("cut to {len}"));
        }
        for pos in (0..bytes.len()).step_by(11) {
            let mut b = bytes.clone();
            b[pos] ^= 0xa5;
            fs::write(&p, &b).expect("write");
            if let Err(e) = read_keras_archive(&p) {
                assert!(matches!(e, Error::Format { .. }), "flip at {pos}: {e}");
            }
        }
    }
}
