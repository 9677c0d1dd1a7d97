//! Loads a Keras model (`.json`, `.h5` or `.keras`), compiles it and prints every stage:
//! the summary, the graph IR, the loop IR with its schedule, the Cranelift IR and the
//! machine code, then checks the JIT against the reference path.
//!
//! `cargo run --release --example print_ir -- tests/data/keras-golden/model_mini_deepface/model.h5`

use lcjit::backend::{CodegenOptions, CompiledModule};
use lcjit::{graph, loop_ir, lower, CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

fn main() -> Result<(), lcjit::Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keras-golden/model_mini_deepface/model.h5"
        )
        .to_string()
    });
    let model = Arc::new(Model::load(&path)?);
    println!("==== summary\n{}", model.summary());
    println!("==== graph IR\n{}", graph::print::graph_text(model.graph()));
    let lowered = lower::lower_forward(model.graph(), 1)?;
    println!(
        "==== loop IR (batch 1)\n{}",
        loop_ir::print::module_text(&lowered.module)
    );
    let opts = CodegenOptions {
        keep_text: true,
        ..Default::default()
    };
    let native = CompiledModule::compile(&lowered.module, &opts)?;
    println!("==== Cranelift IR\n{}", native.clif_text());
    println!("==== machine code\n{}", native.asm_text());
    println!(
        "compiled in {:.2} ms (FMA: {})",
        native.compile_ms(),
        native.uses_fma()
    );

    let jit = CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine: Engine::Jit,
            threads: 2,
            max_batch: 1,
            ..Default::default()
        },
    )?;
    let mut shape = vec![1];
    shape.extend_from_slice(model.input_shape());
    let x = ArrayD::from_elem(IxDyn(&shape), 0.5f32);
    let (a, b) = (jit.predict(&x)?, model.predict(&x)?);
    let err = a
        .iter()
        .zip(b.iter())
        .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
    println!("JIT vs reference: max |difference| = {err:.3e}");
    Ok(())
}
