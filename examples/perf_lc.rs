//! On-CPU timing of the JIT forward pass of the LC workloads, for schedule experiments on
//! a shared machine. Wall-clock medians swing by 2× when other jobs share the two cores;
//! this measures the calling thread's own CPU time (`/proc/thread-self/schedstat`, ns)
//! with one worker thread, which is immune to time slicing (not to SMT or cache
//! sharing). Run with `cargo run --release --example perf_lc`
//! (`PERF_MODELS=deepface_l4_l6:32,seed_lc2d:32` selects workloads).

use std::sync::Arc;

fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let spec = std::env::var("PERF_MODELS")
        .unwrap_or_else(|_| "deepface_l4_l6:32,seed_lc2d:32,snp_lc1d:32".into());
    for item in spec.split(',') {
        let (name, batch) = item.split_once(':').expect("model:batch");
        let batch: usize = batch.parse().expect("batch");
        let path = format!(
            "{}/tests/data/workloads/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let model = Arc::new(lcjit::Model::load(&path).expect("load"));
        let compiled = lcjit::CompiledModel::new(
            model.clone(),
            lcjit::CompileOptions {
                engine: lcjit::Engine::Jit,
                threads: 1,
                max_batch: batch,
                ..Default::default()
            },
        )
        .expect("compile");
        let mut shape = vec![batch];
        shape.extend_from_slice(model.input_shape());
        let n: usize = shape.iter().product();
        let x = ndarray::ArrayD::from_shape_vec(
            ndarray::IxDyn(&shape),
            (0..n)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
                .collect(),
        )
        .expect("input");
        // The scheduler updates a thread's run time at ticks and switches (ms
        // granularity), so each sample repeats the forward pass for ≥ ~150 ms.
        let t = std::time::Instant::now();
        compiled.predict(&x).expect("warm-up");
        let reps = (0.15 / t.elapsed().as_secs_f64()).ceil().max(1.0) as u64;
        let mut best = u64::MAX;
        for _ in 0..5 {
            let t = thread_cpu_ns();
            for _ in 0..reps {
                compiled.predict(&x).expect("predict");
            }
            best = best.min((thread_cpu_ns() - t) / reps);
        }
        let gflop = lcjit::bench::forward_flops(model.graph(), batch) as f64 / 1e9;
        let ms = best as f64 / 1e6;
        println!(
            "{name} batch {batch}: best on-CPU {ms:.2} ms, {:.1} GFLOP/s (1 thread)",
            gflop / (ms / 1e3)
        );
    }
}
