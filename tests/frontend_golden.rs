//! Every golden Keras configuration and every workload parses, with Keras's output shape
//! and parameter count.

use std::fs;
use std::path::{Path, PathBuf};

use lcjit::frontend::{parse_model_json, Dialect, ParsedModel};
use lcjit::graph::default_memory_budget;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

fn parse_file(p: &Path) -> ParsedModel {
    let text = fs::read_to_string(p).unwrap();
    let name = p.display().to_string();
    parse_model_json(&text, &name, default_memory_budget())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn golden_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = fs::read_dir(data().join("keras-golden"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.json").exists())
        .collect();
    dirs.sort();
    dirs
}

fn check_against_case(dir: &Path, m: &ParsedModel, which: &str) {
    let case: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
    let g = &m.graph;
    assert_eq!(g.outputs.len(), 1, "{dir:?} {which}");
    let out = &g.nodes[g.outputs[0]].shape;
    let want: Vec<usize> = case["output_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(out, &want, "{dir:?} {which}: output shape");
    assert_eq!(
        g.keras_param_count() as u64,
        case["params"].as_u64().unwrap(),
        "{dir:?} {which}: params"
    );
    if let Some(inp) = case.get("input_shape").and_then(|v| v.as_array()) {
        let want: Vec<usize> = inp.iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(
            g.nodes[g.inputs[0]].shape, want,
            "{dir:?} {which}: input shape"
        );
    }
}

#[test]
fn golden_model_json() {
    let dirs = golden_dirs();
    assert!(dirs.len() >= 40);
    for dir in dirs {
        let m = parse_file(&dir.join("model.json"));
        assert_eq!(m.dialect, Dialect::TfKeras);
        check_against_case(&dir, &m, "model.json");
    }
}

#[test]
fn golden_keras1_json() {
    let mut n = 0;
    for dir in golden_dirs() {
        let p = dir.join("keras1.json");
        if !p.exists() {
            continue;
        }
        n += 1;
        let k1 = parse_file(&p);
        assert_eq!(k1.dialect, Dialect::Keras1, "{p:?}");
        check_against_case(&dir, &k1, "keras1.json");
        let k2 = parse_file(&dir.join("model.json"));
        let shapes = |m: &ParsedModel| {
            m.graph
                .params
                .iter()
                .map(|p| {
                    (
                        m.graph.nodes[p.node].name.clone(),
                        p.name.clone(),
                        p.keras_shape.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(shapes(&k1), shapes(&k2), "{p:?}: parameter shapes");
    }
    assert!(n >= 10);
}

#[test]
fn workloads() {
    let mut n = 0;
    for e in fs::read_dir(data().join("workloads")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|s| s.to_str()) != Some("json") {
            continue;
        }
        n += 1;
        let m = parse_file(&p);
        let name = p.file_name().unwrap().to_str().unwrap();
        let count = m.graph.keras_param_count();
        match name {
            "deepface.json" => assert_eq!(count, 137_774_071),
            "seed_lc2d_keras1.json" => {
                assert_eq!(m.dialect, Dialect::Keras1);
                assert_eq!(count, 16_088_576);
                assert_eq!(m.graph.nodes[m.graph.outputs[0]].shape, vec![32, 28, 28]);
            }
            "seed_lc2d.json" => assert_eq!(count, 16_088_576),
            "seed_lc1d.json" => assert_eq!(count, 86_720),
            "snp_lc1d.json" => assert_eq!(count, 1_249_808),
            "genomics_lc1d.json" => assert_eq!(count, 755_925),
            "deepface_l4_l6.json" => assert_eq!(count, 73_454_256),
            // Implementation 3 with `same` padding stores only in-range taps: per axis
            // 2 + 5·3 + 2 = 19 taps, so 19²·1024·256 kernel entries (not the 115,668,480
            // the workloads README quotes), + 7·7·256 bias + Dense 12544·1470 + 1470.
            "yolo_local.json" => assert_eq!(count, 19 * 19 * 1024 * 256 + 12_544 + 18_441_150),
            "cifar_local.json" => assert_eq!(count, 3_672_906),
            "jet_image.json" => assert_eq!(count, 244_017),
            "mortality_smoother.json" => assert_eq!(count, 26_000),
            // GpNet: four LC1D(1 filter) over 44,314 SNPs, kernels 2..5, + Dense(1).
            "genomic_residual_lc1d.json" => {
                assert_eq!(count, 44_314 * (2 + 3 + 4 + 5) + 4 * 44_314 + 44_315);
                assert_eq!(count, 841_967);
            }
            "lc2d_f12_f6.json" => assert_eq!(count, 15_685_392),
            _ => {}
        }
    }
    assert!(n >= 13);
}
