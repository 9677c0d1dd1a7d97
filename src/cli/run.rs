//! `lcjit run`: predict with a model over an input `.npy`, batch by batch.
//!
//! The input is memory-mapped when it is a little-endian f32 C-order file (read into
//! memory otherwise, with a note), the model is compiled once for `--batch-size`, and
//! the batches stream through it: with one output (the model's or one `--output-layer`)
//! the rows go straight into the `.npy` file as they are computed, so memory is bounded
//! by one batch; several outputs go to an `.npz` with one key per layer name, held in
//! memory until written (bounded by the outputs, never by a copy of the input).

use super::{load, Engine};
use clap::Args;
use lcjit::io::npy::stream::{NpyInput, NpyWriter};
use lcjit::{io, Error, LoadOptions, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Arguments of `lcjit run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz with keys <layer>/<weight>); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Input samples as .npy, shaped (samples, input shape…).
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write: .npy for one output, .npz (one key per layer name) for several.
    #[arg(long)]
    pub output: PathBuf,
    /// Samples per batch: the model is compiled once for it and the input streams
    /// through (Keras's predict batch_size; the last batch may be smaller).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Write the output of this layer instead of the model's (repeatable; layers after
    /// the named ones are not computed).
    #[arg(long = "output-layer", value_name = "NAME")]
    pub output_layers: Vec<String>,
    /// Execution engine.
    #[arg(long, value_enum, default_value = "jit")]
    pub engine: Engine,
    /// Worker threads (≥ 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Seed of the initializers when no weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Store LC and Dense kernels in 16 bits (bf16 or f16, rounded to nearest even and
    /// widened in registers): batch-1 inference streams half the bytes; outputs change
    /// by the rounding (about 1e-3 relative for bf16, 1e-4 for f16 on the golden cases).
    #[arg(long, value_enum, default_value = "f32")]
    pub weights_dtype: super::WeightsDtype,
    /// SIMD tier past f32x4 for compute-bound register tiles (batch >= 4): AVX-512 or
    /// AVX2 microkernels; every choice computes the same bits.
    #[arg(long, value_enum, default_value = "auto")]
    pub wide: super::Wide,
    /// Autotune the JIT's forward schedules on this machine before running (the same
    /// outputs, bit for bit; see `lcjit bench --tune`).
    #[arg(long)]
    pub tune: bool,
    #[command(flatten)]
    pub tune_opts: super::TuneArgs,
}

/// Runs `lcjit run`.
pub fn run(a: RunArgs, budget: u64) -> Result<()> {
    if a.threads == 0 || a.batch_size == 0 {
        return Err(Error::Usage {
            detail: "--threads and --batch-size must be at least 1".into(),
        });
    }
    for (i, name) in a.output_layers.iter().enumerate() {
        if a.output_layers[..i].contains(name) {
            return Err(Error::Usage {
                detail: format!("--output-layer '{name}' is given twice"),
            });
        }
    }
    let opts = LoadOptions {
        memory_budget: budget,
        seed: a.seed,
    };
    let m = load(&a.model, a.weights.as_deref(), &opts)?;
    let input = NpyInput::open_within(&a.input, budget)?;
    if let Some(note) = input.note() {
        eprintln!("note: {note}");
    }
    let x = input.view()?;
    let compiled = lcjit::CompiledModel::new(
        std::sync::Arc::new(m),
        lcjit::CompileOptions {
            engine: a.engine,
            threads: a.threads,
            max_batch: a.batch_size,
            weights_dtype: a.weights_dtype.into(),
            wide: a.wide.into(),
            autotune: a.tune_opts.autotune(a.tune),
        },
    )?;
    let layers: Vec<&str> = a.output_layers.iter().map(String::as_str).collect();
    let outputs = compiled
        .output_shapes(&layers)
        .map_err(|e| in_model(e, &a.model))?;
    let inputs = std::slice::from_ref(&x);
    let t = Instant::now();
    match output_kind(&a.output, &outputs)? {
        Kind::Npy => {
            let mut shape = vec![x.shape().first().copied().unwrap_or(0)];
            shape.extend_from_slice(&outputs[0].1);
            let mut w = NpyWriter::create(&a.output, &shape)?;
            compiled.predict_into(inputs, &layers, a.batch_size, &mut |b| {
                w.write(b.data[0])?;
                input.release_rows_before(b.start + b.rows)
            })?;
            w.finish()?;
        }
        Kind::Npz => {
            let mut ys = lcjit::runtime::Collector::default();
            compiled.predict_into(inputs, &layers, a.batch_size, &mut |b| {
                ys.add(b)?;
                input.release_rows_before(b.start + b.rows)
            })?;
            io::write_npz(&a.output, &ys.into_arrays()?)?;
        }
    }
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let written: Vec<String> = outputs
        .iter()
        .map(|(name, s)| format!("{name} {s:?}"))
        .collect();
    eprintln!(
        "ran {} on {:?} ({}) in batches of {} with the {} engine in {ms:.1} ms; wrote {}: {}",
        a.model.display(),
        x.shape(),
        if input.is_mapped() {
            "memory-mapped"
        } else {
            "in memory"
        },
        a.batch_size,
        a.engine.name(),
        a.output.display(),
        written.join(", ")
    );
    Ok(())
}

/// The output file's format.
enum Kind {
    Npy,
    Npz,
}

/// `.npy` for exactly one output, `.npz` for any number; anything else is a usage error
/// — except an existing character device or FIFO (`/dev/null`, `/dev/stdout`, a named
/// pipe), which has no extension to go by and is written in place: `.npy` for one
/// output, `.npz` for several.
fn output_kind(path: &Path, outputs: &[(String, Vec<usize>)]) -> Result<Kind> {
    use std::os::unix::fs::FileTypeExt;
    let mut ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !matches!(ext.as_str(), "npy" | "npz") {
        if let Ok(m) = std::fs::metadata(path) {
            let ft = m.file_type();
            if ft.is_char_device() || ft.is_fifo() {
                ext = if outputs.len() == 1 { "npy" } else { "npz" }.into();
            }
        }
    }
    let names = || {
        outputs
            .iter()
            .map(|(n, _)| format!("'{n}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match ext.as_str() {
        "npy" if outputs.len() == 1 => Ok(Kind::Npy),
        "npy" => Err(Error::Usage {
            detail: format!(
                "--output {}: {} outputs ({}) need an .npz file (one key per layer)",
                path.display(),
                outputs.len(),
                names()
            ),
        }),
        "npz" => Ok(Kind::Npz),
        _ => Err(Error::UnsupportedFile {
            path: path.to_path_buf(),
            expected: ".npy (one output) or .npz",
        }),
    }
}

/// Names the model file in an unknown-layer error of `--output-layer`.
fn in_model(e: Error, model: &Path) -> Error {
    match e {
        Error::Usage { detail } => Error::Usage {
            detail: format!("{}: --output-layer: {detail}", model.display()),
        },
        other => other,
    }
}
