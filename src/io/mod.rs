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
//! * Nothing is read beyond the memory budget ([`crate::budget`]): every reader has a
//!   `*_within(path, budget)` form (the plain form uses the default budget); a file must
//!   be a regular file after following links (never a device, FIFO or directory, whose
//!   size says nothing about what a read returns), and its size, each archive entry's
//!   declared uncompressed size and each HDF5 dataset's declared size are checked against
//!   the budget before anything is read, inflated or allocated, and reads are capped at
//!   the checked size. A refusal is [`Error::FileBudget`], naming the file and entry.
//! * Writers are atomic: they write a temporary file in the destination's directory and
//!   rename it over the destination only once it is complete, so a failure never leaves a
//!   half-written file behind (see `write_atomic`).
//!
//! The formats live in [`npy`] (`.npy`/`.npz`), [`h5`] (Keras's legacy HDF5 layout),
//! [`keras_archive`] (tf-keras `.keras` zip archives) and [`resume`] (the resume state
//! of an interrupted `lcjit fit`).

use std::fs;
use std::io::{self, BufWriter};
use std::path::Path;

use ndarray::ArrayD;

use crate::error::{Error, Result};

pub mod h5;
pub mod keras_archive;
pub mod npy;
pub mod resume;
pub mod tune_cache;

pub use h5::{read_h5, read_h5_within, write_h5_weights, H5Model};
pub use keras_archive::{read_keras_archive, read_keras_archive_within};
pub use npy::{read_npy, read_npy_within, read_npz, read_npz_within, write_npy, write_npz};
pub use resume::{read_resume_state, read_resume_state_within, write_resume_state};

/// A JSON text parsed into `serde_json::Value`s takes up to this many times its size;
/// a configuration is admitted when this multiple of its size fits the budget.
pub const JSON_PARSE_FACTOR: u64 = 4;

/// Opens `path` for reading after checking that it is a regular file (links followed)
/// of at most `limit` bytes; returns the file and its size.
///
/// A device (`/dev/zero`), FIFO or directory is refused before it is opened: opening a
/// FIFO blocks, and reading a device never ends. The check is repeated on the opened
/// handle, so a path swapped in between is caught too.
pub(crate) fn open_regular(path: &Path, limit: u64) -> Result<(fs::File, u64)> {
    let not_regular = |kind: &str| {
        Error::io(
            path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not a regular file ({kind}): lcjit reads only regular files"),
            ),
        )
    };
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(file_kind(&meta)));
    }
    let file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(file_kind(&meta)));
    }
    let len = meta.len();
    if len > limit {
        return Err(Error::file_budget(
            path,
            "reading the file",
            u128::from(len),
            limit,
        ));
    }
    Ok((file, len))
}

/// What kind of non-regular file `meta` describes, for messages.
#[cfg(not(unix))]
fn file_kind(meta: &fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "a directory"
    } else {
        "not a plain file"
    }
}

/// What kind of non-regular file `meta` describes, for messages.
#[cfg(unix)]
fn file_kind(meta: &fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a plain file"
    }
}

/// Reads the whole regular file at `path` of at most `limit` bytes (see
/// [`open_regular`]); the read itself is capped, so a file growing meanwhile cannot
/// push it past the limit.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let (file, len) = open_regular(path, limit)?;
    let mut buf = Vec::with_capacity(crate::size::to_usize(len).unwrap_or(0));
    file.take(len)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(path, e))?;
    Ok(buf)
}

/// Reads a UTF-8 text file (a JSON configuration) within `budget`: its size times
/// [`JSON_PARSE_FACTOR`] must fit, since it is parsed right after.
pub fn read_text_within(path: &Path, budget: u64) -> Result<String> {
    let bytes = read_regular(path, budget / JSON_PARSE_FACTOR).map_err(|e| match e {
        Error::FileBudget { path, bytes, .. } => Error::FileBudget {
            path,
            what: format!("parsing the file (up to {JSON_PARSE_FACTOR}× its size)"),
            bytes: bytes.saturating_mul(u128::from(JSON_PARSE_FACTOR)),
            budget,
        },
        other => other,
    })?;
    String::from_utf8(bytes).map_err(|_| Error::format(path, "JSON", "file is not UTF-8 text"))
}

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
    read_weights_npz_within(path, crate::budget::default_memory_budget())
}

/// [`read_weights_npz`] within a memory budget (see [`read_npz_within`]).
pub fn read_weights_npz_within(path: &Path, budget: u64) -> Result<KerasWeights> {
    let entries = read_npz_within(path, budget)?;
    let mut layers: Vec<LayerWeights> = Vec::new();
    // Layer name → index in `layers`: an archive of 100,000 layers groups in linear time.
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
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
        match index.get(layer).and_then(|&i| layers.get_mut(i)) {
            Some(l) => l.weights.push((weight.to_owned(), array)),
            None => {
                index.insert(layer.to_owned(), layers.len());
                layers.push(LayerWeights {
                    layer: layer.to_owned(),
                    weights: vec![(weight.to_owned(), array)],
                });
            }
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
    // One implementation for every output: see `crate::write_file` (temporaries removed on
    // error and on SIGINT/SIGTERM, devices and FIFOs written in place, never replaced).
    crate::write_file::write_atomic(path, write)
}

/// A fresh, empty directory for one test: `<temp>/lcjit-io-<pid>-<name>`.
#[cfg(test)]
pub(crate) fn test_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lcjit-io-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("creating a test directory");
    dir
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::IxDyn;
    use std::io::Write;

    fn arr(shape: &[usize], start: f32) -> ArrayD<f32> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| start + i as f32).collect())
            .expect("shape matches")
    }

    #[test]
    fn weights_npz_groups_by_layer_in_first_appearance_order() {
        let dir = test_dir("weights-npz");
        let p = dir.join("w.npz");
        let entries = vec![
            ("lc/kernel".to_owned(), arr(&[2, 3], 0.0)),
            ("bn/gamma".to_owned(), arr(&[3], 1.0)),
            ("lc/bias".to_owned(), arr(&[3], 2.0)),
            ("bn/moving_mean".to_owned(), arr(&[3], 3.0)),
        ];
        write_npz(&p, &entries).expect("write");
        let w = read_weights_npz(&p).expect("read");
        let names: Vec<_> = w.layers.iter().map(|l| l.layer.as_str()).collect();
        assert_eq!(names, ["lc", "bn"]);
        let lc = w.layer("lc").expect("lc");
        assert_eq!(lc.weights[0].0, "kernel");
        assert_eq!(lc.weights[1].0, "bias");
        assert_eq!(lc.weights[1].1, entries[2].1);
        assert_eq!(w.layer("bn").expect("bn").weights[1].0, "moving_mean");
    }

    #[test]
    fn weights_npz_key_without_slash_is_a_format_error() {
        let dir = test_dir("weights-npz-bad");
        let p = dir.join("g.npz");
        write_npz(&p, &[("x".to_owned(), arr(&[1], 0.0))]).expect("write");
        let e = read_weights_npz(&p).expect_err("no layer in key");
        assert!(matches!(e, Error::Format { .. }), "{e}");
        assert!(e.to_string().contains("'x'"), "{e}");
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporary() {
        let dir = test_dir("atomic");
        let p = dir.join("a.npy");
        fs::write(&p, b"old").expect("seed");
        write_npy(&p, &arr(&[4], 0.0)).expect("write");
        assert_eq!(read_npy(&p).expect("read"), arr(&[4], 0.0));
        let names: Vec<_> = fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["a.npy"]);
    }

    #[test]
    fn failed_write_keeps_the_old_file_and_cleans_up() {
        let dir = test_dir("atomic-fail");
        let p = dir.join("keep.npy");
        fs::write(&p, b"old").expect("seed");
        let e = write_atomic(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("simulated failure"))
        })
        .expect_err("must fail");
        assert!(matches!(e, Error::Io { .. }), "{e}");
        assert_eq!(fs::read(&p).expect("read"), b"old");
        assert_eq!(fs::read_dir(&dir).expect("list").count(), 1);
    }

    #[test]
    fn write_into_a_missing_directory_is_an_io_error() {
        let dir = test_dir("atomic-missing");
        let p = dir.join("no/such/dir/a.npz");
        let e = write_npz(&p, &[]).expect_err("no directory");
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}
