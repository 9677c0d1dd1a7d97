//! The reference backward pass against Keras: for every golden case, the gradient of
//! `sum(y · dy)` (inference mode) with respect to the input and every trainable weight,
//! converted to Keras layout, matches `grads.npz` (`tests/data/keras-golden` and
//! `tests/data/keras-grid`) with
//! `max|g − ref| ≤ 1e-4 · max(1, max|ref|)`, and every key of `grads.npz` is matched.

mod common;
use common::rel_err;
use lcjit::graph::layout::canonical_to_keras;
use lcjit::reference::backward::gradients;
use lcjit::{io, Model};
use ndarray::ArrayD;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn cases() -> Vec<PathBuf> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut v: Vec<PathBuf> = ["keras-golden", "keras-grid"]
        .iter()
        .flat_map(|d| std::fs::read_dir(data.join(d)).expect("golden directory"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("grads.npz").exists())
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no golden cases found");
    v
}

#[test]
fn gradients_match_keras_on_every_golden_case() {
    let mut worst = (0f32, String::new());
    let (mut n_cases, mut n_keys) = (0, 0);
    let mut failures = Vec::new();
    for case in cases() {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(case.join("model.h5")).expect("load model.h5");
        let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let dy = io::read_npy(&case.join("dy.npy")).expect("dy.npy");
        let graph = model.graph();
        assert_eq!(graph.inputs.len(), 1, "{label}: one input expected");
        let (dxs, dps) = gradients(graph, model.params(), std::slice::from_ref(&x), &dy)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut ours: BTreeMap<String, ArrayD<f32>> = BTreeMap::new();
        ours.insert("x".into(), dxs[0].clone());
        for (pid, (spec, g)) in graph.params.iter().zip(&dps).enumerate() {
            if !spec.trainable {
                continue;
            }
            let key = format!("{}/{}", graph.nodes[spec.node].name, spec.name);
            let keras =
                canonical_to_keras(graph, pid, g).unwrap_or_else(|e| panic!("{label}: {key}: {e}"));
            ours.insert(key, keras);
        }
        let refs = io::read_npz(&case.join("grads.npz")).expect("grads.npz");
        assert_eq!(
            refs.len(),
            ours.len(),
            "{label}: grads.npz has keys {:?}, we have {:?}",
            refs.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>()
        );
        for (key, r) in &refs {
            let key = key.trim_end_matches(".npy");
            let g = ours
                .get(key)
                .unwrap_or_else(|| panic!("{label}: no gradient for key '{key}'"));
            let e = rel_err(g, r);
            n_keys += 1;
            if e > worst.0 {
                worst = (e, format!("{label} {key}"));
            }
            if e > 1e-4 {
                failures.push(format!("{label} {key}: rel error {e:.3e}"));
            }
        }
        n_cases += 1;
    }
    println!(
        "{n_cases} cases, {n_keys} keys, worst rel error {:.3e} ({})",
        worst.0, worst.1
    );
    assert!(failures.is_empty(), "failures:\n{}", failures.join("\n"));
}
