//! The one error type of lcjit.
//!
//! Variants are grouped by the stage that raises them (files, configuration, graph
//! construction, weights, running). Every user-facing variant carries the file, layer and
//! field it is about, so that the command-line tool can print a single line that names
//! what is wrong. [`Error::Internal`] is distinct: it marks a bug in lcjit itself (a
//! verifier failure, a broken invariant), never bad input.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in lcjit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- files -------------------------------------------------------------------------
    /// A file could not be opened, read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its contents are not a valid file of the expected format
    /// (truncated, corrupt, wrong kind of file, unsupported element type).
    #[error("{}: not a valid {format} file: {detail}", path.display())]
    Format {
        /// The file.
        path: PathBuf,
        /// The expected format (`npy`, `npz`, `HDF5`, `.keras`, `JSON`).
        format: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A file name whose extension lcjit does not know how to read or write.
    #[error("{}: unsupported file type (expected {expected})", path.display())]
    UnsupportedFile {
        /// The file.
        path: PathBuf,
        /// The extensions accepted here.
        expected: &'static str,
    },

    // ---- configuration -----------------------------------------------------------------
    /// The model configuration is not JSON, or not a Keras model.
    #[error("{source_name}: {detail}")]
    Config {
        /// Where the configuration came from (file name or `<memory>`).
        source_name: String,
        /// What is wrong.
        detail: String,
    },
    /// A field of one layer's configuration is missing or has an unsupported value.
    #[error("{source_name}: layer '{layer}': field '{field}': {detail}")]
    LayerConfig {
        /// Where the configuration came from.
        source_name: String,
        /// The layer name.
        layer: String,
        /// The configuration key.
        field: String,
        /// What is wrong.
        detail: String,
    },
    /// A layer class lcjit does not implement.
    #[error("{source_name}: layer '{layer}': unknown layer class '{class_name}'")]
    UnknownLayer {
        /// Where the configuration came from.
        source_name: String,
        /// The layer name.
        layer: String,
        /// The Keras class name.
        class_name: String,
    },

    // ---- graph construction --------------------------------------------------------------
    /// Shape inference rejected a layer (kernel larger than its input, mismatched merge…).
    #[error("{}layer '{layer}': {detail}", prefix(source_name))]
    Shape {
        /// Where the configuration came from (empty when built in code).
        source_name: String,
        /// The layer name.
        layer: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor or weight would exceed the configured memory budget.
    #[error(
        "{}layer '{layer}': {what} needs {} bytes, over the memory budget of {budget} bytes \
         (--memory-budget)",
        prefix(source_name),
        needed(*bytes)
    )]
    Budget {
        /// Where the configuration came from (empty when built in code).
        source_name: String,
        /// The layer name.
        layer: String,
        /// Which tensor (output, kernel…).
        what: String,
        /// Bytes it would take.
        bytes: u128,
        /// The budget in force.
        budget: u64,
    },
    /// Reading a file would exceed the memory budget: the file itself, an archive entry
    /// or an HDF5 dataset, judged by its declared size before it is read or inflated.
    #[error(
        "{}: {what} needs {} bytes, over the memory budget of {budget} bytes (--memory-budget)",
        path.display(),
        needed(*bytes)
    )]
    FileBudget {
        /// The file.
        path: PathBuf,
        /// What would be read (the file, `entry 'w.npy'`, `dataset 'dense/kernel:0'`).
        what: String,
        /// Bytes it would take (see [`crate::budget::OVERFLOW_BYTES`]).
        bytes: u128,
        /// The budget in force.
        budget: u64,
    },
    /// The graph's structure is wrong (duplicate names, unknown inbound layers, cycles).
    #[error("{source_name}: {detail}")]
    Graph {
        /// Where the configuration came from.
        source_name: String,
        /// What is wrong.
        detail: String,
    },

    // ---- weights -------------------------------------------------------------------------
    /// A weight is missing, unexpected or of the wrong shape.
    #[error("{source_name}: layer '{layer}': weight '{weight}': {detail}")]
    Weights {
        /// The weights file.
        source_name: String,
        /// The layer name.
        layer: String,
        /// The weight name (`kernel`, `bias`, `gamma`…).
        weight: String,
        /// What is wrong.
        detail: String,
    },

    // ---- running -------------------------------------------------------------------------
    /// The input given to `predict` does not match the model.
    #[error("input: {detail}")]
    Input {
        /// What is wrong.
        detail: String,
    },
    /// A command-line usage error not caught by the argument parser.
    #[error("{detail}")]
    Usage {
        /// What is wrong.
        detail: String,
    },
    /// The user interrupted a run (Ctrl-C between training steps, seen by a callback);
    /// `fit` keeps the weights of the last finished step.
    #[error("interrupted: {detail}")]
    Interrupted {
        /// Where the run stopped.
        detail: String,
    },
    /// A resume state (`lcjit fit --resume`) that cannot continue this run: corrupt,
    /// written by another lcjit, or for another model, data or set of options.
    #[error("{}resume state: field '{field}': {detail}", prefix(source_name))]
    Resume {
        /// The state file (empty for a state held in memory).
        source_name: String,
        /// The field of the state concerned (`fingerprint.batch_size`, `optimizer.slots`…).
        field: String,
        /// What is wrong.
        detail: String,
    },

    /// An external program lcjit needs is missing or failed: the system C compiler that
    /// links shared libraries (`lcjit aot --output X.so`, the ahead-of-time test
    /// executor), or the dynamic loader that loads one.
    #[error("{detail}")]
    Tool {
        /// The program (`cc`, `$CC`, `dlopen`).
        tool: String,
        /// What failed and what to do about it.
        detail: String,
    },

    // ---- lcjit bugs ----------------------------------------------------------------------
    /// An internal invariant failed: a bug in lcjit, not in the input.
    #[error("internal compiler error: {detail}")]
    Internal {
        /// What failed.
        detail: String,
    },
}

impl Error {
    /// Whether the error is lcjit's fault rather than the input's.
    pub fn is_internal(&self) -> bool {
        matches!(self, Error::Internal { .. })
    }

    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A malformed file of `format` at `path`.
    pub fn format(path: impl Into<PathBuf>, format: &'static str, detail: impl ToString) -> Self {
        Error::Format {
            path: path.into(),
            format,
            detail: detail.to_string(),
        }
    }

    /// A shape error in `layer`.
    pub fn shape(layer: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Shape {
            source_name: String::new(),
            layer: layer.into(),
            detail: detail.into(),
        }
    }

    /// Names the configuration file of a graph-construction error that lacks it.
    pub fn in_source(self, name: &str) -> Self {
        match self {
            Error::Shape {
                source_name,
                layer,
                detail,
            } if source_name.is_empty() => Error::Shape {
                source_name: name.to_string(),
                layer,
                detail,
            },
            Error::Budget {
                source_name,
                layer,
                what,
                bytes,
                budget,
            } if source_name.is_empty() => Error::Budget {
                source_name: name.to_string(),
                layer,
                what,
                bytes,
                budget,
            },
            Error::Graph {
                source_name,
                detail,
            } if source_name.is_empty() => Error::Graph {
                source_name: name.to_string(),
                detail,
            },
            other => other,
        }
    }

    /// A refusal to read `what` of the file at `path`: `bytes` are over `budget`.
    pub fn file_budget(
        path: impl Into<PathBuf>,
        what: impl Into<String>,
        bytes: u128,
        budget: u64,
    ) -> Self {
        Error::FileBudget {
            path: path.into(),
            what: what.into(),
            bytes,
            budget,
        }
    }

    /// A resume state's `field` is unusable (see [`Error::Resume`]); the file is named
    /// later with [`Error::in_resume_file`].
    pub fn resume(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Resume {
            source_name: String::new(),
            field: field.into(),
            detail: detail.into(),
        }
    }

    /// Names the state file of an [`Error::Resume`] that lacks it and puts `scope`
    /// (`callbacks[1]`) before its field; other errors are returned unchanged.
    pub fn in_resume_file(self, file: &str, scope: &str) -> Self {
        match self {
            Error::Resume {
                source_name,
                field,
                detail,
            } => Error::Resume {
                source_name: if source_name.is_empty() {
                    file.to_string()
                } else {
                    source_name
                },
                field: if scope.is_empty() {
                    field
                } else {
                    format!("{scope}.{field}")
                },
                detail,
            },
            other => other,
        }
    }

    /// An internal error.
    pub fn internal(detail: impl Into<String>) -> Self {
        Error::Internal {
            detail: detail.into(),
        }
    }
}

/// A byte count of a refusal: sizes beyond 64 bits come from overflowing products and
/// are printed as a bound, not as a made-up number.
fn needed(bytes: u128) -> String {
    if bytes > u128::from(u64::MAX) {
        format!("more than {}", u64::MAX)
    } else {
        bytes.to_string()
    }
}

fn prefix(source: &str) -> String {
    if source.is_empty() {
        String::new()
    } else {
        format!("{source}: ")
    }
}
