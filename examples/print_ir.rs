//! Loads a Keras model (`.json`, `.h5` or `.keras`) and prints its summary and graph IR.
//!
//! `cargo run --release --example print_ir -- tests/data/keras-golden/model_mini_deepface/model.h5`

fn main() -> Result<(), lcjit::Error> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/keras-golden/model_mini_deepface/model.h5"
        )
        .to_string()
    });
    let model = lcjit::Model::load(&path)?;
    print!("{}", model.summary());
    println!();
    print!("{}", lcjit::graph::print::graph_text(model.graph()));
    Ok(())
}
