//! Reading and writing files: `.npy`, `.npz`, HDF5 (`.h5`) and `.keras` archives.
//!
//! Every reader takes a path and returns `f32` arrays (ndarray's `ArrayD`, standard layout)
//! or Keras weights grouped by layer. Invariants shared by all of them:
//!
//! * Nothing read from a file can make lcjit panic or allocate more than the file really
//!   holds: sizes claimed by headers are checked against the bytes present first.
//! * A file that cannot be opened or read is [`Error::Io`]; a file whose contents are wrong
//!   (truncated, corrupt, wrong kind) is [`Error::Format`]. Both name the file, and the
//!   detail names the entry, dataset or attribute concerned.
//! * Writers are atomic: they write a temporary file in the destination's directory and
//!   rename it over the destination only once it is complete, so a failure never leaves a
//!   half-written file behind (see [`write_atomic`]).
//!
//! The formats live in [`npy`] (`.npy`/`.npz`), [`h5`] (Keras's legacy HDF5 layout) and
//! [`keras_archive`] (tf-keras `.keras` zip archives).

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ndarray::ArrayD;

use crate::error::{Error, Result};

pub mod h5;
pub mod keras_archive;
pub mod npy;

pub use h5::{read_h5, write_h5_weights, H5Model};
pub use keras_archive::read_keras_archive;
pub use npy::{read_npy, read_npz, write_npy, write_npz};

/// Weights of one Keras layer, in the layer's own weight order.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerWeights {
    /// The layer's name (`locally_connected2d_1`, `dense`…).
    pub layer: String,
    /// `(name, value)` per weight. The name is the bare weight name (`kernel`, `bias`,
    /// `gamma`, `moving_mean`…) without the layer path prefix or the `:0` suffix; for
    /// `.keras` archives, whose weights carry no names, it is the index (`"0"`, `"1"`…).
    pub weights: Vec<(String, ArrayD<f32>)>,
}

/// Weights of a model grouped by layer, in file order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KerasWeights {
    /// One entry per layer, in the order the file lists them. Layers without weights
    /// are kept (with an empty list) where the file lists them.
    pub layers: Vec<LayerWeights>,
}

impl KerasWeights {
    /// The weights of the layer called `name`, if the file has it.
    pub fn layer(&self, name: &str) -> Option<&LayerWeights> {
        self.layers.iter().find(|l| l.layer == name)
    }
}

/// Reads a weights `.npz` whose keys are `<layer>/<weight>` (e.g.
/// `locally_connected2d_1/kernel`), grouping weights by layer in order of first
/// appearance and keeping each layer's weights in archive order.
///
/// A key without `/` is an [`Error::Format`]: such an archive is not a weights file
/// (an input batch or a gradient file, say).
pub fn read_weights_npz(path: &Path) -> Result<KerasWeights> {
    let entries = read_npz(path)?;
    let mut layers: Vec<LayerWeights> = Vec::new();
    for (key, array) in entries {
        let Some((layer, weight)) = key.split_once('/') else {
            return Err(Error::format(
                path,
                "npz",
                format!("key '{key}' is not of the form '<layer>/<weight>'"),
            ));
        };
        if layer.is_empty() || weight.is_empty() {
            return Err(Error::format(
                path,
                "npz",
                format!("key '{key}' has an empty layer or weight name"),
            ));
        }
        // Layers are few, so a linear search keeps the order without a side index.
        match layers.iter_mut().find(|l| l.layer == layer) {
            Some(l) => l.weights.push((weight.to_owned(), array)),
            None => layers.push(LayerWeights {
                layer: layer.to_owned(),
                weights: vec![(weight.to_owned(), array)],
            }),
        }
    }
    Ok(KerasWeights { layers })
}

/// Writes `path` atomically: `write` fills a temporary file in the same directory, which
/// is flushed, synced and renamed over `path` only if `write` succeeds.
///
/// The temporary file is removed on failure. Staying in the same directory keeps the
/// rename on one file system, where it replaces the destination in one step.
pub(crate) fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<fs::File>) -> io::Result<()>,
{
    let tmp = temp_sibling(path)?;
    let result = (|| {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        w.flush()?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        // Best effort: the temporary may not exist if creating it failed.
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A fresh temporary name next to `path`: `.<name>.<pid>.<n>.tmp`.
fn temp_sibling(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        Error::io(
            path,
            io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"),
        )
    })?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.{n}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}
