//! Timing of the JIT gradient program of the LC workloads: forward-only `predict`, the
//! whole `CompiledModel::gradients` call, and each kernel of the gradient program run
//! alone on preallocated buffers (what the lowering decides, without the runtime's
//! per-call buffer allocation and result copies). The ideal step is
//! `3 × forward flops / measured FMA rate` (forward, dK and dx each cost one forward's
//! flops). Run with `cargo run --release --example perf_lc_grad`. Environment:
//! - `PERF_MODELS=deepface_l4_l6:32,seed_lc2d:8`: workloads (or `path.json:batch`);
//! - `PERF_THREADS=2`: threads; with 1, kernels are timed by the thread's on-CPU time
//!   (immune to time slicing on a shared machine), else by median wall time (the
//!   whole-call timings are always median wall times);
//! - `PERF_REPS=5`: timed repetitions;
//! - `PERF_HUGE=1`: back the kernel buffers with transparent huge pages;
//! - `PERF_ONLY=L4.backward_dx`: time only the kernels so named (no roofline or
//!   whole-call timings);
//! - `PERF_ASM=L4.backward_dx`: print the machine code of the kernels so named;
//! - `PERF_WIDE=off`: lower the kernels for f32x4 only (default: the host's wide tier,
//!   as `CompileOptions::wide`'s `auto` does);
//! - `PERF_INPUT_GRADS=1`: time the program of `lcjit grad` (gradients of the model
//!   inputs too) instead of a training step's;
//! - `PERF_IN_PLACE=1`: time the training step's program that applies the benchmark's
//!   Adam inside the LC kernel-gradient kernels (`lower::in_place`); without it the
//!   update is `examples/perf_update`'s separate program; `PERF_SGD=1`: SGD with
//!   momentum 0.9 instead of Adam (an update bound by memory traffic, where Adam's
//!   square root and division make its f32x4 update partly bound by arithmetic).

use lcjit::backend::{CodegenOptions, CompiledModule};
use lcjit::loop_ir::{BufRole, Module};
use ndarray::{ArrayD, IxDyn};
use std::sync::Arc;

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.into())
}

/// Advises the kernel to back `[ptr, ptr + bytes)` with transparent huge pages.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut f32, bytes: usize) {
    extern "C" {
        fn madvise(addr: *mut std::ffi::c_void, len: usize, advice: i32) -> i32;
    }
    const MADV_HUGEPAGE: i32 = 14;
    let start = (ptr as usize).next_multiple_of(4096);
    let end = ptr as usize + bytes;
    if end > start {
        // SAFETY: advice only, on whole pages inside the caller's allocation.
        let rc = unsafe { madvise(start as *mut _, (end - start) & !4095, MADV_HUGEPAGE) };
        assert_eq!(rc, 0, "madvise");
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_: *mut f32, _: usize) {}

/// `len` deterministic values, in memory advised for transparent huge pages when
/// `PERF_HUGE` is set (to tell TLB misses apart from other costs: on DeepFace L4 they
/// were worth ~4% of `dx`).
fn buffer(len: usize, seed: usize) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    if std::env::var("PERF_HUGE").is_ok() && len >= 1 << 19 {
        advise_huge_pages(v.as_mut_ptr(), 4 * len);
    }
    v.extend((0..len).map(|i| (((i + seed) * 7919) % 1000) as f32 / 1000.0 - 0.5));
    v
}

fn filled(shape: &[usize], seed: usize) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), buffer(n, seed)).expect("shape")
}

/// The calling thread's CPU time in ns (`/proc/thread-self/schedstat`).
fn thread_cpu_ns() -> u64 {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Milliseconds per call of `f`: with one thread the best on-CPU time of `reps` calls
/// (immune to time slicing on a shared machine; one thread runs on the caller), else
/// the median wall time.
fn measure(threads: usize, reps: usize, mut f: impl FnMut() -> lcjit::Result<()>) -> f64 {
    if threads > 1 {
        return lcjit::bench::median_ms(reps, f).expect("run");
    }
    // The scheduler accounts run time at ticks (ms granularity): each sample repeats
    // the call for ≥ ~150 ms.
    let t = std::time::Instant::now();
    f().expect("warm-up");
    let inner = (0.15 / t.elapsed().as_secs_f64().max(1e-6)).ceil().max(1.0) as u64;
    (0..reps.max(1))
        .map(|_| {
            let t = thread_cpu_ns();
            for _ in 0..inner {
                f().expect("run");
            }
            (thread_cpu_ns() - t) as f64 / 1e6 / inner as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Milliseconds per kernel of `m`, each run alone over `bufs`.
fn kernel_times(
    m: &Module,
    bufs: &mut [Vec<f32>],
    threads: usize,
    reps: usize,
) -> Vec<(String, f64)> {
    let opts = CodegenOptions::default();
    m.kernels
        .iter()
        .filter(|k| std::env::var("PERF_ONLY").map_or(true, |s| k.name.contains(&s)))
        .map(|k| {
            let one = Module {
                name: m.name.clone(),
                buffers: m.buffers.clone(),
                kernels: vec![k.clone()],
            };
            let asm = std::env::var("PERF_ASM").is_ok_and(|s| k.name.contains(&s));
            let opts = CodegenOptions {
                keep_text: asm,
                ..opts.clone()
            };
            let native = CompiledModule::compile(&one, &opts).expect("compile kernel");
            if asm {
                println!("{}", native.asm_text());
            }
            let ms = measure(threads, reps, || {
                let mut args: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                native.run(&mut args, threads)
            });
            (k.name.clone(), ms)
        })
        .collect()
}

fn main() {
    let spec = env_or("PERF_MODELS", "deepface_l4_l6:32");
    let threads: usize = env_or("PERF_THREADS", "2").parse().expect("PERF_THREADS");
    let reps: usize = env_or("PERF_REPS", "5").parse().expect("PERF_REPS");
    let only = std::env::var("PERF_ONLY").is_ok();
    let roof = if only {
        lcjit::bench::Roofline {
            read_gbps: f64::NAN,
            fma_gflops: f64::NAN,
            wide: None,
        }
    } else {
        lcjit::bench::roofline(threads).expect("roofline")
    };
    println!(
        "roofline ({threads} threads): {:.1} GFLOP/s FMA, {:.1} GB/s read",
        roof.fma_gflops, roof.read_gbps
    );
    for item in spec.split(',') {
        let (name, batch) = item.split_once(':').expect("model:batch");
        let batch: usize = batch.parse().expect("batch");
        let path = if name.ends_with(".json") {
            name.to_string()
        } else {
            format!(
                "{}/tests/data/workloads/{name}.json",
                env!("CARGO_MANIFEST_DIR")
            )
        };
        let model = Arc::new(lcjit::Model::load(&path).expect("load"));
        let graph = model.graph().clone();
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
        let mut xs = vec![batch];
        xs.extend_from_slice(model.input_shape());
        let x = filled(&xs, 0);
        let mut ys = vec![batch];
        ys.extend_from_slice(&graph.nodes[graph.outputs[0]].shape);
        let dy = filled(&ys, 1);
        if !only {
            let p = match compiled.prepared_grad(batch) {
                Ok(p) => p,
                Err(e) => {
                    println!("{name}: no compiled gradient program: {e}");
                    continue;
                }
            };
            let kernels = p.lowered.forward.kernels.len() + p.lowered.backward.kernels.len();
            println!(
                "gradient program: {kernels} kernels, lowered and compiled in {:.0} ms",
                p.compile_ms
            );
        }
        let (fwd, grad) = if only {
            (f64::NAN, f64::NAN)
        } else {
            (
                lcjit::bench::median_ms(reps, || compiled.predict(&x).map(|_| ()))
                    .expect("predict"),
                lcjit::bench::median_ms(reps, || {
                    compiled
                        .gradients(std::slice::from_ref(&x), &dy)
                        .map(|_| ())
                })
                .expect("gradients"),
            )
        };
        let flops = lcjit::bench::forward_flops(&graph, batch) as f64;
        let ideal = 3.0 * flops / (roof.fma_gflops * 1e9) * 1e3;
        println!(
            "{name} batch {batch}, {threads} threads: forward {fwd:.1} ms, gradients() {grad:.1} ms \
             (ideal step {ideal:.1} ms: {:.2}×)",
            grad / ideal
        );

        // Kernel by kernel, on buffers allocated once.
        let tier = if env_or("PERF_WIDE", "auto") == "off" {
            None
        } else {
            lcjit::WideTier::Auto.resolve().expect("host tier")
        };
        // The in-place form of the benchmark's Adam, for every trainable parameter.
        let accepts = graph.params.iter().map(|p| p.trainable).collect();
        let mut opt = lcjit::bench::train_step_optimizer();
        if std::env::var("PERF_SGD").is_ok() {
            opt.config.algorithm = lcjit::train::Algorithm::Sgd {
                momentum: 0.9,
                nesterov: false,
            };
        }
        let rule = opt.in_place_rule(accepts);
        let lowered = match (&rule, std::env::var("PERF_IN_PLACE").is_ok()) {
            (Some(rule), true) => {
                lcjit::lower::grad::lower_training_step(&graph, batch, tier, rule)
            }
            _ => lcjit::lower::grad::lower_gradients_for(
                &graph,
                batch,
                if std::env::var("PERF_INPUT_GRADS").is_ok() {
                    lcjit::lower::grad::Mode::Inference
                } else {
                    lcjit::lower::grad::Mode::Training
                },
                tier,
            ),
        }
        .expect("lower");
        let mut bufs: Vec<Vec<f32>> = lowered
            .forward
            .buffers
            .iter()
            .enumerate()
            .map(|(i, b)| match &b.role {
                BufRole::Const(d) => d.clone(),
                // Adam's scalars at a small learning rate, non-negative second moments.
                BufRole::Hyper => vec![1e-6; b.len],
                BufRole::Slot(..) => buffer(b.len, i).iter().map(|v| v.abs()).collect(),
                _ => buffer(b.len, i),
            })
            .collect();
        let mut total = 0.0;
        for (phase, m) in [
            ("forward", &lowered.forward),
            ("backward", &lowered.backward),
        ] {
            let mut sum = 0.0;
            for (k, ms) in kernel_times(m, &mut bufs, threads, reps) {
                println!("  {phase:8} {k:32} {ms:8.2} ms");
                sum += ms;
            }
            println!("  {phase:8} {:32} {sum:8.2} ms", "total");
            total += sum;
        }
        println!(
            "  kernels total {total:.1} ms ({:.2}× the ideal step)",
            total / ideal
        );
    }
}
