//! Host vs compiled optimizer update time, Adam (tf-keras flavour):
//! `Optimizer::step` on the host against `Optimizer::step_compiled` on the JIT with 1 and
//! `PERF_THREADS` (default 2) threads, for two parameter sets: the six tensors of the
//! DeepFace L4–L6 workload shrunk proportionally (flat) to `PERF_FLOATS` floats in total
//! (default 18.6 M), then the workload's own parameters (73.5 M floats; `PERF_FULL=0`
//! skips them). Wall-clock milliseconds per step, min and median of `PERF_REPS` steps
//! (default 10) after one warm-up step that creates the slots (and compiles the program);
//! the compile time is measured separately, and the host and JIT results are checked to
//! be bitwise equal. Run with `cargo run --release --example perf_update`
//! (`PERF_CLIP=norm` adds per-tensor `clipnorm`; `PERF_SGD=1` times SGD with momentum 0.9
//! instead of Adam).

use std::time::Instant;

use lcjit::train::update::CompiledUpdate;
use lcjit::train::{Algorithm, Flavor, LearningRate, Optimizer, OptimizerConfig};
use lcjit::Engine;
use ndarray::{ArrayD, IxDyn};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `reps` steps after one warm-up and returns (min, median) ms per step.
fn time_steps(reps: usize, mut step: impl FnMut()) -> (f64, f64) {
    step();
    let mut ms: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            step();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    ms.sort_by(f64::total_cmp);
    (ms[0], ms[ms.len() / 2])
}

/// Deterministic gradients of magnitude ≤ 1e-3 shaped like `params`.
fn gradients(params: &[ArrayD<f32>]) -> Vec<ArrayD<f32>> {
    params
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut k = i as u32;
            p.mapv(|_| {
                k = k.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (k >> 8) as f32 / (1u32 << 24) as f32 * 2e-3 - 1e-3
            })
        })
        .collect()
}

fn bench(
    label: &str,
    config: &OptimizerConfig,
    params: &[ArrayD<f32>],
    reps: usize,
    threads: usize,
) {
    let n: usize = params.iter().map(|p| p.len()).sum();
    let grads = gradients(params);
    let trainable = vec![true; params.len()];
    println!(
        "{label}: {} tensors, {n} floats ({:.1} M), {} + {} steps",
        params.len(),
        n as f64 / 1e6,
        1,
        reps
    );
    let lens: Vec<Option<usize>> = params.iter().map(|p| Some(p.len())).collect();
    let t = Instant::now();
    let program = CompiledUpdate::build(config, &lens, Engine::Jit).expect("build");
    println!(
        "  compile (lower + verify + Cranelift): {:.1} ms, {} kernels",
        t.elapsed().as_secs_f64() * 1e3,
        program.module().kernels.len()
    );

    let mut host_p = params.to_vec();
    let mut host_o = Optimizer::new(config.clone());
    let (min, med) = time_steps(reps, || {
        host_o
            .step(&mut host_p, &grads, &trainable)
            .expect("host step");
    });
    println!("  host step             : min {min:8.2} ms  median {med:8.2} ms");

    let mut last = None;
    for t in [1, threads] {
        let mut p = params.to_vec();
        let mut o = Optimizer::new(config.clone());
        let (min, med) = time_steps(reps, || {
            o.step_compiled(&mut p, &grads, &trainable, Engine::Jit, t)
                .expect("compiled step");
        });
        println!("  jit step, {t} thread(s): min {min:8.2} ms  median {med:8.2} ms");
        last = Some((p, o.iterations));
        if threads == 1 {
            break;
        }
    }
    if let Some((p, it)) = last {
        let equal = it == host_o.iterations
            && p.iter()
                .zip(&host_p)
                .all(|(a, b)| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        println!("  host and jit parameters bitwise equal after {it} steps: {equal}");
    }
}

fn main() {
    let reps = env_usize("PERF_REPS", 10).max(1);
    let threads = env_usize("PERF_THREADS", 2).max(1);
    let target = env_usize("PERF_FLOATS", 18_600_000);
    let clip = std::env::var("PERF_CLIP").is_ok_and(|v| v == "norm");
    let path = format!(
        "{}/tests/data/workloads/deepface_l4_l6.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let model = lcjit::Model::load(&path).expect("load the workload");
    let config = OptimizerConfig {
        name: "Adam".into(),
        algorithm: if std::env::var("PERF_SGD").is_ok() {
            Algorithm::Sgd {
                momentum: 0.9,
                nesterov: false,
            }
        } else {
            Algorithm::Adam {
                beta_1: 0.9,
                beta_2: 0.999,
                epsilon: 1e-7,
                amsgrad: false,
            }
        },
        learning_rate: LearningRate::Constant(1e-3),
        flavor: Flavor::TfKeras,
        clipnorm: clip.then_some(1.0),
        clipvalue: None,
        global_clipnorm: None,
        weight_decay: None,
        decay: 0.0,
    };
    let clip_text = if clip { " + clipnorm" } else { "" };
    // The workload's tensors shrunk proportionally (flat) to `PERF_FLOATS` in total.
    let total: usize = model.params().iter().map(|p| p.len()).sum();
    let scaled: Vec<ArrayD<f32>> = model
        .params()
        .iter()
        .map(|p| {
            let len = ((p.len() as f64 * target as f64 / total as f64).round() as usize).max(1);
            ArrayD::from_shape_fn(IxDyn(&[len]), |i| (i[0] % 97) as f32 * 1e-3 - 0.05)
        })
        .collect();
    bench(
        &format!("Adam{clip_text}, DeepFace L4-L6 tensors scaled"),
        &config,
        &scaled,
        reps,
        threads,
    );
    if std::env::var("PERF_FULL").map_or(true, |v| v != "0") {
        bench(
            &format!("Adam{clip_text}, DeepFace L4-L6 parameters"),
            &config,
            model.params(),
            reps,
            threads,
        );
    }
}
