//! Cranelift `opt_level` for the compiled kernels, measured (the choice in
//! `backend/cranelift/isa.rs` rests on this): compile time and forward time of real
//! workloads with `OptLevel::None` and `OptLevel::Speed`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lcjit::backend::{CodegenOptions, CompiledModule, OptLevel};
use std::path::Path;

fn opt_levels(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/workloads");
    let mut compile = c.benchmark_group("opt_level_compile");
    compile.sample_size(10);
    let mut cases = Vec::new();
    for (name, batch) in [
        ("deepface_l4_l6", 32usize),
        ("seed_lc2d", 32),
        ("snp_lc1d", 32),
    ] {
        let Ok(model) = lcjit::Model::load(dir.join(format!("{name}.json"))) else {
            continue;
        };
        let Ok(lowered) = lcjit::lower::lower_forward(model.graph(), batch) else {
            continue;
        };
        for opt_level in [OptLevel::None, OptLevel::Speed] {
            let opts = CodegenOptions {
                opt_level,
                ..Default::default()
            };
            compile.bench_function(BenchmarkId::new(name, format!("{opt_level:?}")), |b| {
                b.iter(|| CompiledModule::compile(&lowered.module, &opts).expect("compile"))
            });
            cases.push((name, opt_level, lowered.module.clone(), opts));
        }
    }
    compile.finish();
    let mut run = c.benchmark_group("opt_level_forward_b32");
    run.sample_size(10);
    for (name, opt_level, module, opts) in cases {
        let native = CompiledModule::compile(&module, &opts).expect("compile");
        let mut bufs: Vec<Vec<f32>> = module.buffers.iter().map(|b| vec![0.5; b.len]).collect();
        run.bench_function(BenchmarkId::new(name, format!("{opt_level:?}")), |b| {
            b.iter(|| {
                let mut s: Vec<&mut [f32]> = bufs.iter_mut().map(|v| v.as_mut_slice()).collect();
                native.run(&mut s, 2).expect("run")
            })
        });
    }
    run.finish();
}

criterion_group!(benches, opt_levels);
criterion_main!(benches);
