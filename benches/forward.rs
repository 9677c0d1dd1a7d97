//! Criterion benchmarks on the workloads of `tests/data/workloads` (weights from the
//! initializers, seed 0): compile time of the forward program, and the forward pass at
//! batch 1 and 32 on the JIT, the loop interpreter (only where it finishes in seconds)
//! and the reference path, with throughput in samples.
//!
//! Only workloads whose layers all lower to the loop IR are compiled; the others are
//! reported on the reference path alone.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use std::path::Path;
use std::sync::Arc;

const WORKLOADS: &[&str] = &[
    "seed_lc1d",
    "seed_lc2d",
    "snp_lc1d",
    "mortality_smoother",
    "deepface_l4_l6",
    "genomics_lc1d",
    "jet_image",
    "cifar_local",
    "yolo_local",
    "deepface",
];
/// Workloads small enough for the interpreter.
const INTERP_OK: &[&str] = &["seed_lc1d", "mortality_smoother"];

fn models() -> Vec<(&'static str, Arc<Model>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/workloads");
    WORKLOADS
        .iter()
        .filter_map(|name| {
            Model::load(dir.join(format!("{name}.json")))
                .ok()
                .map(|m| (*name, Arc::new(m)))
        })
        .collect()
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile_forward");
    group.sample_size(10);
    for (name, model) in models() {
        if lcjit::lower::lower_forward(model.graph(), 1).is_err() {
            continue;
        }
        group.bench_function(name, |b| {
            b.iter(|| {
                let lowered = lcjit::lower::lower_forward(model.graph(), 1).expect("lower");
                lcjit::backend::CompiledModule::compile(&lowered.module, &Default::default())
                    .expect("compile")
            })
        });
    }
    group.finish();
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    group.sample_size(10);
    for (name, model) in models() {
        for batch in [1usize, 32] {
            let mut shape = vec![batch];
            shape.extend_from_slice(model.input_shape());
            let x = ArrayD::from_elem(IxDyn(&shape), 0.5f32);
            group.throughput(Throughput::Elements(batch as u64));
            for engine in [Engine::Jit, Engine::Interp, Engine::Reference] {
                if engine == Engine::Interp && !(batch == 1 && INTERP_OK.contains(&name)) {
                    continue;
                }
                let opts = CompileOptions {
                    engine,
                    threads: threads(),
                    max_batch: batch,
                    ..Default::default()
                };
                let Ok(compiled) = CompiledModel::new(model.clone(), opts) else {
                    continue;
                };
                let id = BenchmarkId::new(format!("{name}/{}", engine.name()), batch);
                group.bench_with_input(id, &x, |b, x| b.iter(|| compiled.predict(x)));
            }
        }
    }
    group.finish();
}

criterion_group!(benches, compile, forward);
criterion_main!(benches);
