//! `lcjit summary`, `lcjit convert` and `lcjit ir`: read a model and show or rewrite it.

use super::{load, Pass, Stage};
use clap::Args;
use lcjit::{LoadOptions, Model, Result};
use std::path::PathBuf;

/// Arguments of `lcjit summary`.
#[derive(Args, Debug)]
pub struct SummaryArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
}

/// Runs `lcjit summary`.
pub fn summary(a: SummaryArgs, budget: u64) -> Result<()> {
    let SummaryArgs { model } = a;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: 0,
    };
    // The graph alone: summary never draws initial weights (see `Model::load_graph`).
    let g = Model::load_graph(&model, &opts)?;
    print!("{}", lcjit::graph::print::summary(&g));
    Ok(())
}

/// Arguments of `lcjit convert`.
#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Weights file (.h5 or .npz with keys <layer>/<weight>); overrides the model's.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Where to write: .h5 (legacy full model), .keras (archive) or .npz (weights only).
    #[arg(long)]
    pub output: PathBuf,
}

/// Runs `lcjit convert`.
pub fn convert(a: ConvertArgs, budget: u64) -> Result<()> {
    let ConvertArgs {
        model,
        weights,
        output,
    } = a;
    let opts = LoadOptions {
        memory_budget: budget,
        seed: 0,
    };
    let m = load(&model, weights.as_deref(), &opts)?;
    m.save(&output)?;
    eprintln!(
        "converted {} ({:?} dialect) to {}",
        model.display(),
        m.dialect(),
        output.display()
    );
    Ok(())
}

/// Arguments of `lcjit ir`.
#[derive(Args, Debug)]
pub struct IrArgs {
    /// Model file: .json (any Keras dialect), .h5 or .keras.
    pub model: PathBuf,
    /// Which representation: the graph IR as text, Graphviz DOT or an SVG picture, or
    /// the loop IR.
    #[arg(long, value_enum, default_value = "graph")]
    pub stage: Stage,
    /// Batch size the loop IR is specialised to.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Which program (loops, clif, asm): the forward pass, or the gradient program
    /// (its forward phase keeping activations, then the backward phase).
    #[arg(long, value_enum, default_value = "forward")]
    pub pass: Pass,
    /// How the forward program stores LC and Dense kernels (as `lcjit run
    /// --weights-dtype`; 16-bit buffers print as `bf16[…]` / `f16[…]`).
    #[arg(long, value_enum, default_value = "f32")]
    pub weights_dtype: super::WeightsDtype,
    /// SIMD tier past f32x4 the schedules may use (as `lcjit run --wide`;
    /// default off, so the printed program is the same on every machine). Wide loops
    /// print as `wide(avx512)`.
    #[arg(long, value_enum, default_value = "off")]
    pub wide: super::Wide,
}

/// Runs `lcjit ir`.
pub fn ir(a: IrArgs, budget: u64) -> Result<()> {
    let IrArgs {
        model,
        stage,
        batch,
        pass,
        weights_dtype,
        wide,
    } = a;
    if pass == Pass::Backward && weights_dtype != super::WeightsDtype::F32 {
        return Err(lcjit::Error::Usage {
            detail: "--weights-dtype applies to the forward program (gradients need float32 \
                     weights)"
                .into(),
        });
    }
    let opts = LoadOptions {
        memory_budget: budget,
        seed: 0,
    };
    let m = Model::load_with(&model, &opts)?;
    let program = || -> Result<lcjit::loop_ir::Module> {
        // The program's buffers are sized for the batch: refuse one over the budget
        // before lowering computes them.
        lcjit::budget::check_run(m.graph(), batch, pass == Pass::Backward)?;
        Ok(match pass {
            Pass::Forward => {
                let tier = lcjit::WideTier::from(wide).resolve()?;
                let target = lcjit::lower::Target {
                    tier,
                    weights: weights_dtype.into(),
                    plans: None,
                    unfused: false,
                };
                let mut l = lcjit::lower::lower_forward_for(m.graph(), batch, target)?;
                lcjit::lower::weights::store_weights(&mut l, m.graph(), weights_dtype.into());
                l.module
            }
            Pass::Backward => {
                let tier = lcjit::WideTier::from(wide).resolve()?;
                let g = lcjit::lower::grad::lower_gradients_for(
                    m.graph(),
                    batch,
                    lcjit::lower::grad::Mode::Inference,
                    tier,
                )?;
                let mut all = g.forward;
                all.kernels.extend(g.backward.kernels);
                all
            }
        })
    };
    match stage {
        Stage::Graph => print!("{}", lcjit::graph::print::graph_text(m.graph())),
        Stage::Dot => print!("{}", lcjit::graph::print::graph_dot(m.graph())),
        Stage::Svg => print!("{}", lcjit::graph::svg::graph_svg(m.graph())),
        Stage::Loops => print!("{}", lcjit::loop_ir::print::module_text(&program()?)),
        Stage::Clif | Stage::Asm => {
            let opts = lcjit::backend::CodegenOptions {
                keep_text: true,
                ..Default::default()
            };
            let program =
                lcjit::backend::prepare(lcjit::backend::Backend::Jit, &program()?, &opts)?;
            print!("{}", program.listing(matches!(stage, Stage::Clif)));
        }
    }
    Ok(())
}
