//! The benchmark workloads (`tests/data/workloads`, real configs written by tf-keras and
//! Keras 1) load, summarize with Keras's counts, and run on the reference path.

mod common;

use lcjit::{CompileOptions, CompiledModel, Engine, LoadOptions, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

fn workload(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/workloads")
        .join(name)
}

#[test]
fn deepface_summary_reports_keras_counts_and_shapes() {
    let out = Command::new(env!("CARGO_BIN_EXE_lcjit"))
        .arg("summary")
        .arg(workload("deepface.json"))
        .output()
        .expect("spawn lcjit");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Total params: 137,774,071"), "{text}");
    // Keras's output shapes of the locally connected layers L4–L6 and the classifier.
    for shape in [
        "(None, 55, 55, 16)",
        "(None, 25, 25, 16)",
        "(None, 21, 21, 16)",
        "(None, 8631)",
    ] {
        assert!(text.contains(shape), "missing {shape} in\n{text}");
    }
}

#[test]
fn every_workload_loads_and_runs() {
    let names = common::workload_names();
    assert!(names.len() >= 11);
    for name in names {
        let model = Model::load_with(workload(&name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut shape = vec![1];
        shape.extend_from_slice(model.input_shape());
        let x = ArrayD::from_elem(IxDyn(&shape), 0.5f32);
        let y = model.predict(&x).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out_node = model.graph().outputs[0];
        assert_eq!(
            &y.shape()[1..],
            model.graph().nodes[out_node].shape.as_slice(),
            "{name}"
        );
        assert!(y.iter().all(|v| v.is_finite()), "{name}: non-finite output");
        // The JIT runs every workload and agrees with the reference path.
        let jit = CompiledModel::new(
            Arc::new(model),
            CompileOptions {
                engine: Engine::Jit,
                threads: 2,
                max_batch: 1,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let yj = jit.predict(&x).unwrap_or_else(|e| panic!("{name}: {e}"));
        let scale = y.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = yj
            .iter()
            .zip(y.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err <= 1e-5 * scale, "{name}: jit vs reference {err}");
    }
}

#[test]
fn lcjit_ir_prints_every_stage_for_every_workload() {
    for name in common::workload_names() {
        for (stage, needle) in [
            ("graph", "graph "),
            ("dot", "digraph"),
            ("loops", "kernel "),
            ("clif", "function"),
            ("asm", "; kernel"),
        ] {
            let out = Command::new(env!("CARGO_BIN_EXE_lcjit"))
                .args(["ir"])
                .arg(workload(&name))
                .args(["--stage", stage])
                .output()
                .expect("spawn lcjit");
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && text.contains(needle),
                "{name} --stage {stage}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
