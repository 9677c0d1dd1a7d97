//! A fixed amount of JIT forward work for instruction counting on a shared machine:
//! compiles each workload once (one thread), runs one warm-up call and then `REPS`
//! forward calls, and prints nothing timing-related. Under
//! `valgrind --tool=callgrind`, the per-call instruction count of the compiled kernels
//! is `(Ir(REPS = n) − Ir(REPS = 0)) / n`, independent of whatever else the machine runs.
//! Run with `COUNT_MODELS=seed_lc2d_keras1:32 COUNT_REPS=4 valgrind --tool=callgrind
//! target/release/examples/count_lc` (workloads from `tests/data/workloads`).

use std::sync::Arc;

fn main() {
    let spec = std::env::var("COUNT_MODELS").unwrap_or_else(|_| "mortality_smoother:1".into());
    let reps: usize = std::env::var("COUNT_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
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
        let mut sum = 0f64;
        for _ in 0..=reps {
            let y = compiled.predict(&x).expect("predict");
            sum += y.iter().map(|v| f64::from(*v)).sum::<f64>();
        }
        println!("{name} batch {batch}: {reps} calls after one warm-up (checksum {sum:.6e})");
    }
}
