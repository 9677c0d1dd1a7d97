//! The command-line interface: the argument types (one module per subcommand, each
//! with its `Args` struct and the function that runs it) and the dispatch. Everything
//! here is glue over the library; no model logic lives in the tool.

mod aot;
mod bench;
mod evaluate;
mod fit;
mod fit_callbacks;
mod grad;
mod inspect;
mod run;

use clap::{Parser, Subcommand, ValueEnum};
use lcjit::{LoadOptions, Model, Result};
use std::path::Path;

/// Compile and run Keras models built around locally connected layers.
#[derive(Parser, Debug)]
#[command(name = "lcjit", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Refuse files, models and runs needing more than this many bytes (suffix K, M or
    /// G): weights, every layer's output at the batch used, training state, and what a
    /// file would make lcjit read or inflate. Default: three quarters of the available
    /// memory, at most half the address-space limit.
    #[arg(long, global = true, value_parser = parse_bytes)]
    pub memory_budget: Option<u64>,
    /// Checked mode (for debugging lcjit itself): native code runs over buffers between
    /// inaccessible guard pages, twice, so an out-of-bounds access faults at once; slow.
    /// Same as LCJIT_CHECKED=1.
    #[arg(long, global = true)]
    pub checked: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print a Keras-style summary: layers, output shapes, parameter counts.
    Summary(inspect::SummaryArgs),
    /// Convert a model (any supported dialect and file) to a tf-keras .h5, .keras or .npz file.
    Convert(inspect::ConvertArgs),
    /// Print an intermediate representation of a model.
    Ir(inspect::IrArgs),
    /// Run a model on an input batch and write its output.
    Run(run::RunArgs),
    /// Time a model on each engine and compare with the machine's measured limits.
    Bench(bench::BenchArgs),
    /// Write the gradient of sum(y · dy) (inference mode) for the input and every trainable
    /// weight: key `x` and `<layer>/<weight>` in the Keras layout of the model's file.
    Grad(grad::GradArgs),
    /// Train a model as Keras's fit does; optimizer and loss default to the file's
    /// training_config.
    Fit(Box<fit::FitArgs>),
    /// Loss and metrics of a model over a dataset, as Keras's evaluate; loss and metrics
    /// default to the file's training_config.
    Evaluate(evaluate::EvaluateArgs),
    /// Compile a model ahead of time into a C library (.o, .a or .so) and header: predict
    /// from C, C++, Rust or Go with no lcjit at run time.
    Aot(aot::AotArgs),
}

/// Programs shown by `lcjit ir`.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Pass {
    /// The inference program.
    Forward,
    /// The gradient program of `sum(y · dy)`.
    Backward,
}

/// Execution engines: the library's own type (its names and help are defined once, in
/// [`lcjit::Engine`]).
pub use lcjit::Engine;

/// `--weights-dtype`: how LC and Dense kernels are stored for inference.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum WeightsDtype {
    /// float32, as in the model.
    F32,
    /// bfloat16 (8-bit mantissa, f32's range).
    Bf16,
    /// IEEE half precision (11-bit mantissa, magnitudes up to 65504).
    F16,
}

impl From<WeightsDtype> for lcjit::loop_ir::Dtype {
    fn from(d: WeightsDtype) -> Self {
        match d {
            WeightsDtype::F32 => lcjit::loop_ir::Dtype::F32,
            WeightsDtype::Bf16 => lcjit::loop_ir::Dtype::Bf16,
            WeightsDtype::F16 => lcjit::loop_ir::Dtype::F16,
        }
    }
}

/// `--wide`: the SIMD tier past f32x4 for compute-bound register tiles.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Wide {
    /// The widest tier this CPU has (AVX-512F, else AVX2 with FMA), or none.
    Auto,
    /// f32x4 only.
    Off,
    /// AVX2 microkernels (8 lanes); refused on a CPU without AVX2, FMA and F16C.
    Avx2,
    /// AVX-512 microkernels (16 lanes); refused on a CPU without AVX-512F.
    Avx512,
}

impl From<Wide> for lcjit::WideTier {
    fn from(w: Wide) -> Self {
        use lcjit::loop_ir::micro::Tier;
        match w {
            Wide::Auto => lcjit::WideTier::Auto,
            Wide::Off => lcjit::WideTier::Off,
            Wide::Avx2 => lcjit::WideTier::Only(Tier::Avx2),
            Wide::Avx512 => lcjit::WideTier::Only(Tier::Avx512),
        }
    }
}

/// The autotuning options shared by the commands that compile for a machine.
#[derive(clap::Args, Debug, Clone)]
pub struct TuneArgs {
    /// Autotuning time budget per model and batch size, in milliseconds (compiling the
    /// candidates included; layers found in the cache cost nothing).
    #[arg(long, default_value_t = 3000)]
    pub tune_budget_ms: u64,
    /// Autotuning cache file (default: $LCJIT_TUNE_CACHE, else
    /// $XDG_CACHE_HOME/lcjit/tune.json, else ~/.cache/lcjit/tune.json).
    #[arg(long)]
    pub tune_cache: Option<std::path::PathBuf>,
    /// Autotune without reading or writing a cache file.
    #[arg(long, conflicts_with = "tune_cache")]
    pub no_tune_cache: bool,
}

impl TuneArgs {
    /// The autotuning options, when `on`.
    pub fn autotune(&self, on: bool) -> Option<lcjit::runtime::tune::Autotune> {
        on.then(|| lcjit::runtime::tune::Autotune {
            budget: std::time::Duration::from_millis(self.tune_budget_ms),
            cache: if self.no_tune_cache {
                None
            } else {
                self.tune_cache
                    .clone()
                    .or_else(lcjit::runtime::tune::default_cache_path)
            },
        })
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Stage {
    /// Graph IR text.
    Graph,
    /// Graph IR as Graphviz DOT.
    Dot,
    /// The layer graph as an SVG picture (name, class and output shape per layer).
    Svg,
    /// Loop IR (forward pass) with its schedule.
    Loops,
    /// Cranelift IR of every kernel, after optimisation.
    Clif,
    /// Machine code of every kernel (post-register-allocation listing).
    Asm,
}

pub fn parse_bytes(s: &str) -> std::result::Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("'{s}' is not a byte count (e.g. 512M, 16G)"))
}

pub fn load(model: &Path, weights: Option<&Path>, opts: &LoadOptions) -> Result<Model> {
    let mut m = Model::load_with(model, opts)?;
    if let Some(w) = weights {
        m.load_weights(w)?;
    } else if let lcjit::WeightsOrigin::Initialized { seed } = m.weights_origin() {
        eprintln!(
            "note: {} carries no weights; initialized from its initializers with seed {seed}",
            model.display()
        );
    }
    Ok(m)
}

/// Runs the command line's command (the default job without one).
pub fn run(cli: Cli) -> Result<()> {
    let budget = cli
        .memory_budget
        .unwrap_or_else(lcjit::budget::default_memory_budget);
    if cli.checked {
        lcjit::backend::enable_checked_mode();
    }
    // A refusal raised after loading (a budget at the batch size) names the model file.
    let model = match &cli.command {
        Some(Command::Summary(a)) => Some(a.model.clone()),
        Some(Command::Convert(a)) => Some(a.model.clone()),
        Some(Command::Ir(a)) => Some(a.model.clone()),
        Some(Command::Run(a)) => Some(a.model.clone()),
        Some(Command::Bench(a)) => Some(a.model.clone()),
        Some(Command::Grad(a)) => Some(a.model.clone()),
        Some(Command::Fit(a)) => Some(a.model.clone()),
        Some(Command::Evaluate(a)) => Some(a.model.clone()),
        Some(Command::Aot(a)) => Some(a.model.clone()),
        None => None,
    };
    let result = dispatch(cli.command, budget);
    match model {
        Some(m) => result.map_err(|e| e.in_source(&m.display().to_string())),
        None => result,
    }
}

/// Runs one command.
fn dispatch(command: Option<Command>, budget: u64) -> Result<()> {
    match command {
        None => crate::default_job::run(budget),
        Some(Command::Summary(a)) => inspect::summary(a, budget),
        Some(Command::Convert(a)) => inspect::convert(a, budget),
        Some(Command::Ir(a)) => inspect::ir(a, budget),
        Some(Command::Run(a)) => run::run(a, budget),
        Some(Command::Bench(a)) => bench::bench(a, budget),
        Some(Command::Grad(a)) => grad::grad(a, budget),
        Some(Command::Fit(a)) => fit::fit(*a, budget),
        Some(Command::Evaluate(a)) => evaluate::evaluate(a, budget),
        Some(Command::Aot(a)) => aot::aot(a, budget),
    }
}
