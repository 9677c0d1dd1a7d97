//! `lcjit aot`: the forward program compiled ahead of time into a C library (`.o`, `.a`
//! or `.so`) plus header, optionally with a separate weights file
//! (see `lcjit::backend::aot`).

use super::load;
use clap::Args;
use lcjit::backend::aot::{self, AotOptions, OutputKind, WeightsMode};
use lcjit::{Error, LoadOptions, Result};
use std::path::PathBuf;

/// Arguments of `lcjit aot`.
#[derive(Args, Debug)]
pub struct AotArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz with keys <layer>/<weight>); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// The library to write: .o (object), .a (static archive) or .so (shared, linked by cc).
    #[arg(long)]
    pub output: PathBuf,
    /// The C header to write.
    #[arg(long)]
    pub header: PathBuf,
    /// Compiled batch: predict runs any number of samples in chunks of it.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Symbol prefix of the C API (NAME_create, NAME_predict, …); a C identifier.
    #[arg(long, default_value = "model")]
    pub name: String,
    /// host (default; the JIT's code), x86_64, x86_64-v2, x86_64-v3, x86_64-v4, or a
    /// target triple such as aarch64-unknown-linux-gnu.
    #[arg(long, default_value = "host")]
    pub target: String,
    /// Embed the weights in the library (the default).
    #[arg(long, conflicts_with = "weights_file")]
    pub embed_weights: bool,
    /// Write the weights to this file instead of embedding them; NAME_create takes its path.
    #[arg(long, value_name = "PATH")]
    pub weights_file: Option<PathBuf>,
    /// Also compile the inference-mode gradient program and export NAME_gradients: the
    /// gradient of sum(y·dy) w.r.t. the input and every parameter (canonical layout,
    /// see NAME_param_name), for exactly the compiled batch.
    #[arg(long)]
    pub gradients: bool,
    /// Seed of the initializers when no weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// SIMD tier past f32x4 for compute-bound register tiles, for the target: auto takes
    /// the widest the target has (x86_64-v4: avx512, x86_64-v3: avx2, host: this CPU's);
    /// a tier the target lacks is refused. Every choice computes the same bits.
    #[arg(long, value_enum, default_value_t = super::Wide::Auto)]
    pub wide: super::Wide,
}

/// Runs `lcjit aot`.
pub fn aot(a: AotArgs, budget: u64) -> Result<()> {
    if a.batch == 0 {
        return Err(Error::Usage {
            detail: "--batch must be at least 1".into(),
        });
    }
    OutputKind::of(&a.output)?;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: a.seed,
    };
    let m = load(&a.model, a.weights.as_deref(), &opts)?;
    lcjit::budget::check_run(m.graph(), a.batch, a.gradients)?;
    let aopts = AotOptions {
        name: a.name,
        batch: a.batch,
        target: a.target,
        weights: if a.weights_file.is_some() {
            WeightsMode::File
        } else {
            WeightsMode::Embedded
        },
        model_label: a
            .model
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().to_string()),
        gradients: a.gradients,
        wide: a.wide.into(),
        ..AotOptions::default()
    };
    let art = aot::compile_object(&m, &aopts)?;
    if let (Some(path), Some(bytes)) = (&a.weights_file, &art.weights_file) {
        aot::write_atomic(path, bytes)?;
    }
    aot::write_library(&art, &a.output, &a.header)?;
    eprintln!(
        "wrote {} and {} ({}, {} functions {}_*)",
        a.output.display(),
        a.header.display(),
        art.triple,
        art.exports.len(),
        art.name
    );
    Ok(())
}
