//! A fixed amount of JIT training work for instruction counting on a shared machine
//! (the training-step counterpart of `count_lc.rs`): compiles each workload once, runs
//! one warm-up step and then `COUNT_REPS` training steps as `lcjit bench --train` times
//! them (training mode, mean squared error against zeros, the compiled Adam update).
//! Under `valgrind --tool=callgrind`, the per-step instruction count is
//! `(Ir(REPS = n) − Ir(REPS = 0)) / n`, independent of whatever else the machine runs.
//!
//! With `COUNT_KERNELS=backward_dk,backward_dx` the kernels of the training-mode
//! gradient programs (forward phase, then backward) whose names contain one of the
//! comma-separated parts are instead compiled alone and run `COUNT_REPS` times each
//! (after one warm-up) over buffers allocated once, so one kernel's count is the
//! difference of two such runs; each kernel's fastest run is printed too, and with
//! `COUNT_PRINT=1` its loop IR.
//!
//! With `COUNT_NO_STEP=1` no step runs (the forward program is compiled, the gradient
//! and update programs are not): `Ir(REPS = 0) − Ir(NO_STEP) − one step` is then the
//! cost of compiling the gradient and update programs (the first step compiles them).
//!
//! Run with `COUNT_MODELS=genomics_lc1d:32 COUNT_REPS=4 valgrind --tool=callgrind
//! target/release/examples/count_train` (workloads from `tests/data/workloads`;
//! `COUNT_THREADS` defaults to 1).

use lcjit::backend::{CodegenOptions, CompiledModule};
use lcjit::loop_ir::{BufRole, Module};
use lcjit::train::Loss;
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(default)
}

/// `n` deterministic values in `[-0.5, 0.5)`.
fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// `reps + 1` training steps of `compiled` on `x` (the first a warm-up); returns a
/// checksum of the final weights.
fn train_steps(compiled: &lcjit::CompiledModel, x: &ArrayD<f32>, reps: usize) -> f64 {
    let graph = compiled.model().graph();
    let trainable: Vec<bool> = graph.params.iter().map(|p| p.trainable).collect();
    let mut params = compiled.model().params().to_vec();
    // The same step `lcjit bench` times.
    let mut opt = lcjit::bench::train_step_optimizer();
    let mut rng = lcjit::init::Rng::new(0);
    let (engine, threads) = (compiled.options().engine, compiled.options().threads);
    for _ in 0..=reps {
        let run = compiled
            .run_gradients_in(
                &params,
                std::slice::from_ref(x),
                Some(&mut rng),
                &mut |outs| {
                    let y = outs.first().expect("an output");
                    Ok(Loss::MeanSquaredError
                        .value_and_grad(&ArrayD::zeros(y.raw_dim()), y)?
                        .1)
                },
            )
            .expect("gradients");
        opt.step_compiled(&mut params, &run.dparams, &trainable, engine, threads)
            .expect("update");
        compiled.recycle_gradients(x.shape()[0], run.dparams);
    }
    params
        .iter()
        .flat_map(|p| p.iter())
        .map(|v| f64::from(*v))
        .sum()
}

/// Runs the kernels of `m` named by `parts`, each compiled alone, `reps + 1` times.
fn kernels(m: &Module, bufs: &mut [Vec<f32>], parts: &[&str], threads: usize, reps: usize) {
    for k in m
        .kernels
        .iter()
        .filter(|k| parts.iter().any(|p| k.name.contains(p)))
    {
        let one = Module {
            name: m.name.clone(),
            buffers: m.buffers.clone(),
            kernels: vec![k.clone()],
        };
        if std::env::var_os("COUNT_PRINT").is_some() {
            print!("{}", lcjit::loop_ir::print::kernel_text(&one, k));
        }
        let native = CompiledModule::compile(&one, &CodegenOptions::default()).expect("compile");
        let mut times = Vec::with_capacity(reps + 1);
        for _ in 0..=reps {
            let mut args: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
            let t = std::time::Instant::now();
            native.run(&mut args, threads).expect("run");
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        // The fastest of the timed runs (the warm-up excluded): a rough ranking of the
        // kernels on a noisy machine; the instruction counts are the exact figures.
        let best = times[1..].iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "  kernel {}: {reps} runs after one warm-up, fastest {best:.1} µs",
            k.name
        );
    }
}

fn main() {
    let spec = std::env::var("COUNT_MODELS").unwrap_or_else(|_| "genomics_lc1d:32".into());
    let reps = env_usize("COUNT_REPS", 1);
    let threads = env_usize("COUNT_THREADS", 1);
    let only = std::env::var("COUNT_KERNELS").ok();
    for item in spec.split(',') {
        let (name, batch) = item.split_once(':').expect("model:batch");
        let batch: usize = batch.parse().expect("batch");
        let path = format!(
            "{}/tests/data/workloads/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let model = Arc::new(lcjit::Model::load(&path).expect("load"));
        let mut shape = vec![batch];
        shape.extend_from_slice(model.input_shape());
        if let Some(only) = &only {
            let parts: Vec<&str> = only.split(',').collect();
            let lowered = lcjit::lower::grad::lower_gradients_in(
                model.graph(),
                batch,
                lcjit::lower::grad::Mode::Training,
            )
            .expect("lower");
            let mut bufs: Vec<Vec<f32>> = lowered
                .forward
                .buffers
                .iter()
                .enumerate()
                .map(|(i, b)| match &b.role {
                    BufRole::Const(d) => d.clone(),
                    _ => values(b.len, i),
                })
                .collect();
            println!("{name} batch {batch}:");
            kernels(&lowered.forward, &mut bufs, &parts, threads, reps);
            kernels(&lowered.backward, &mut bufs, &parts, threads, reps);
            continue;
        }
        let compiled = lcjit::CompiledModel::new(
            model.clone(),
            lcjit::CompileOptions {
                engine: lcjit::Engine::Jit,
                threads,
                max_batch: batch,
                ..Default::default()
            },
        )
        .expect("compile");
        let n: usize = shape.iter().product();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), values(n, 0)).expect("input");
        if std::env::var("COUNT_NO_STEP").is_ok() {
            println!("{name} batch {batch}: compiled, no step");
            continue;
        }
        let sum = train_steps(&compiled, &x, reps);
        println!("{name} batch {batch}: {reps} steps after one warm-up (checksum {sum:.6e})");
    }
}
