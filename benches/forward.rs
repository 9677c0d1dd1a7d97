//! Forward-pass benchmarks on the workloads of `tests/data/workloads` (weights from the
//! initializers, seed 0), batch 1 and 32, reference engine. The compiled engines join these
//! groups as they land, so every speed-up is measured in one run against the oracle.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lcjit::Model;
use ndarray::{ArrayD, IxDyn};
use std::path::Path;

const WORKLOADS: &[&str] = &[
    "seed_lc1d",
    "seed_lc2d",
    "snp_lc1d",
    "mortality_smoother",
    "deepface_l4_l6",
];

fn forward(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/workloads");
    let mut group = c.benchmark_group("forward_reference");
    group.sample_size(10);
    for name in WORKLOADS {
        let Ok(model) = Model::load(dir.join(format!("{name}.json"))) else {
            continue;
        };
        for batch in [1usize, 32] {
            let mut shape = vec![batch];
            shape.extend_from_slice(model.input_shape());
            let x = ArrayD::from_elem(IxDyn(&shape), 0.5f32);
            group.throughput(Throughput::Elements(batch as u64));
            group.bench_with_input(BenchmarkId::new(*name, batch), &x, |b, x| {
                b.iter(|| model.predict(x))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
