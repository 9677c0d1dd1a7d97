//! Golden text of the graph IR, of the forward loop IR (batch 1) and of the gradient
//! program (batch 2, `lcjit ir --stage loops --pass backward --batch 2`) for the small
//! test models, in `ir/<case>/graph.txt`, `loops.txt` and `backward.txt`.
//! A change to the front end or the printer shows up as a reviewable diff there; rewrite
//! the files with `BLESS=1 cargo test --release --test ir_golden`.

use lcjit::Model;
use std::path::Path;

#[test]
fn graph_ir_text_matches_the_goldens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(root.join("tests/data/keras-golden"))
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.json").exists())
        .collect();
    cases.sort();
    let mut diffs = Vec::new();
    for case in &cases {
        let name = case.file_name().and_then(|n| n.to_str()).expect("name");
        let model = Model::load(case.join("model.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let graph = lcjit::graph::print::graph_text(model.graph());
        let lowered = lcjit::lower::lower_forward(model.graph(), 1)
            .unwrap_or_else(|e| panic!("{name}: lowering failed: {e}"));
        let loops = lcjit::loop_ir::print::module_text(&lowered.module);
        // The gradient program (batch 2, so batch reductions show): both phases.
        let grad = lcjit::lower::grad::lower_gradients(model.graph(), 2)
            .unwrap_or_else(|e| panic!("{name}: gradient lowering failed: {e}"));
        let mut program = grad.forward;
        program.kernels.extend(grad.backward.kernels);
        let backward = lcjit::loop_ir::print::module_text(&program);
        for (file, text) in [
            ("graph.txt", graph),
            ("loops.txt", loops),
            ("backward.txt", backward),
        ] {
            let path = root.join("ir").join(name).join(file);
            if bless {
                std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                std::fs::write(&path, &text).expect("write golden");
            } else {
                match std::fs::read_to_string(&path) {
                    Ok(want) if want == text => {}
                    Ok(_) => diffs.push(format!("{name}: {file} differs from {}", path.display())),
                    Err(_) => diffs.push(format!("{name}: {} is missing", path.display())),
                }
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{}\n(re-bless with BLESS=1 if intended)",
        diffs.join("\n")
    );
}

/// Golden text of the backward phase of a training step that applies Adam in place
/// (`lower::in_place`, batch 4) for two small models: which kernels update which weights
/// and slots, and the element program after each kernel-gradient block. In
/// `ir/<case>/in_place.txt`; re-bless with `BLESS=1`.
#[test]
fn in_place_training_step_text_matches_the_goldens() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bless = std::env::var_os("BLESS").is_some();
    let mut diffs = Vec::new();
    for name in ["model_mini_deepface", "model_mini_genomics"] {
        let case = root.join("tests/data/keras-golden").join(name);
        let model = Model::load(case.join("model.json")).unwrap_or_else(|e| panic!("{name}: {e}"));
        let accepts = model.graph().params.iter().map(|p| p.trainable).collect();
        let rule = lcjit::bench::train_step_optimizer()
            .in_place_rule(accepts)
            .expect("Adam runs in place");
        let step = lcjit::lower::grad::lower_training_step(model.graph(), 4, None, &rule)
            .unwrap_or_else(|e| panic!("{name}: lowering failed: {e}"));
        assert!(
            step.updated.iter().any(|&u| u),
            "{name}: nothing updated in place"
        );
        let text = lcjit::loop_ir::print::module_text(&step.backward);
        let path = root.join("ir").join(name).join("in_place.txt");
        if bless {
            std::fs::write(&path, &text).expect("write golden");
        } else {
            match std::fs::read_to_string(&path) {
                Ok(want) if want == text => {}
                Ok(_) => diffs.push(format!("{name}: differs from {}", path.display())),
                Err(_) => diffs.push(format!("{name}: {} is missing", path.display())),
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{}\n(re-bless with BLESS=1 if intended)",
        diffs.join("\n")
    );
}
