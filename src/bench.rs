//! Benchmarks: flop counts, the machine's roofline measured with Cranelift-generated probe
//! kernels, and timing of a model on every engine (`lcjit bench`).
//!
//! The roofline is what *this backend* can reach on this machine: a streaming kernel that
//! reads a buffer much larger than the caches with f32x4 loads (read bandwidth), and a
//! kernel of 12 independent f32x4 FMA chains per thread (FMA rate). Both are written in
//! the loop IR and compiled like any model, so they share the model's code generator.

use crate::backend::{CodegenOptions, CompiledModule};
use crate::error::Result;
use crate::graph::{Graph, Op};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, BinOp, BufRole, Buffer, Expr, KernelBuilder, LoopKind,
    Module, Stmt,
};
use std::time::Instant;

/// Floating-point operations (multiply and add counted separately) of one forward pass.
/// Only the layers whose cost is a dot product are counted (LC, Dense, Conv); clipped
/// `same` taps are counted as if present, as tf-keras's implementation-1 math does them.
pub fn forward_flops(graph: &Graph, batch: usize) -> u64 {
    let mut total = 0u64;
    for n in &graph.nodes {
        let per_sample: u64 = match &n.op {
            Op::LocallyConnected(_) | Op::Dense(_) | Op::Conv(_) => n
                .params
                .iter()
                .filter(|&&p| graph.params[p].name == "kernel")
                .map(|&p| {
                    let k = &graph.params[p];
                    match &n.op {
                        // Each kernel element is used once per sample.
                        Op::LocallyConnected(_) => k.len() as u64,
                        // Once per sample and leading position.
                        Op::Dense(d) => {
                            let rows: usize = n.shape.iter().product::<usize>() / d.units;
                            (k.len() * rows) as u64
                        }
                        // Once per output position.
                        Op::Conv(c) => {
                            let positions: usize = n.shape.iter().product::<usize>() / c.filters;
                            (k.len() * positions) as u64
                        }
                        _ => 0,
                    }
                })
                .sum::<u64>(),
            _ => 0,
        };
        total += 2 * per_sample * batch as u64;
    }
    total
}

/// Bytes of all weights (canonical layout).
pub fn weight_bytes(graph: &Graph) -> u64 {
    graph.params.iter().map(|p| 4 * p.len() as u64).sum()
}

/// Median of `reps` timings of `f`, in milliseconds, after one warm-up call.
pub fn median_ms(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps.max(1));
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(|a, b| a.total_cmp(b));
    Ok(t[t.len() / 2])
}

/// What the probes measured.
#[derive(Clone, Copy, Debug)]
pub struct Roofline {
    /// Read bandwidth in GB/s (10^9 bytes per second).
    pub read_gbps: f64,
    /// f32x4 FMA rate in GFLOP/s (an FMA counts 2 flops per lane).
    pub fma_gflops: f64,
}

/// Chunks the probes split their work into (more than any thread count used here).
const CHUNKS: usize = 64;

fn stream_probe(len: usize) -> Module {
    let chunk = len / CHUNKS;
    let mut kb = KernelBuilder::new("probe.stream");
    let (t, i, u, v, u2, v2, u3, v3) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("u"),
        kb.var("v"),
        kb.var("u2"),
        kb.var("v2"),
        kb.var("u3"),
        kb.var("v3"),
    );
    let acc = kb.local("acc", 16);
    let at = |u, v| Affine::var(u).scale(4).plus_term(v, 1);
    let body = vec![
        for_(u2, 4, LoopKind::Unroll(4), vec![for_(v2, 4, LoopKind::Vector(4), vec![
            Stmt::SetLocal {
                local: acc,
                index: at(u2, v2),
                value: Expr::Const(0.0),
            },
        ])]),
        for_(i, (chunk / 16) as u64, LoopKind::Serial, vec![for_(
            u,
            4,
            LoopKind::Unroll(4),
            vec![for_(v, 4, LoopKind::Vector(4), vec![Stmt::SetLocal {
                local: acc,
                index: at(u, v),
                value: crate::loop_ir::bin(
                    BinOp::Add,
                    load_local(acc, at(u, v)),
                    load(
                        0,
                        Affine::var(t)
                            .scale(chunk as i64)
                            .plus_term(i, 16)
                            .plus_term(u, 4)
                            .plus_term(v, 1),
                    ),
                ),
            }])],
        )]),
        for_(u3, 4, LoopKind::Unroll(4), vec![for_(v3, 4, LoopKind::Vector(4), vec![
            Stmt::Store {
                buf: 1,
                index: Affine::var(t).scale(16).plus_term(u3, 4).plus_term(v3, 1),
                value: load_local(acc, at(u3, v3)),
            },
        ])]),
    ];
    Module {
        name: "probe".into(),
        buffers: vec![
            Buffer {
                name: "x".into(),
                len,
                role: BufRole::Input(0),
            },
            Buffer {
                name: "y".into(),
                len: CHUNKS * 16,
                role: BufRole::Output(0),
            },
        ],
        kernels: vec![kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)])],
    }
}

/// 12 independent f32x4 FMA chains per chunk, `iters` times.
fn fma_probe(iters: u64) -> Module {
    let mut kb = KernelBuilder::new("probe.fma");
    let (t, i, u, v, u2, v2, u3, v3) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("u"),
        kb.var("v"),
        kb.var("u2"),
        kb.var("v2"),
        kb.var("u3"),
        kb.var("v3"),
    );
    let acc = kb.local("acc", 48);
    let at = |u, v| Affine::var(u).scale(4).plus_term(v, 1);
    let body = vec![
        for_(u2, 12, LoopKind::Unroll(12), vec![for_(v2, 4, LoopKind::Vector(4), vec![
            Stmt::SetLocal {
                local: acc,
                index: at(u2, v2),
                value: Expr::Const(1.0),
            },
        ])]),
        for_(i, iters, LoopKind::Serial, vec![for_(u, 12, LoopKind::Unroll(12), vec![for_(
            v,
            4,
            LoopKind::Vector(4),
            vec![Stmt::SetLocal {
                local: acc,
                index: at(u, v),
                value: fma(
                    load_local(acc, at(u, v)),
                    load(0, Affine::constant(0)),
                    load(0, Affine::constant(1)),
                ),
            }],
        )])]),
        for_(u3, 12, LoopKind::Unroll(12), vec![for_(v3, 4, LoopKind::Vector(4), vec![
            Stmt::Store {
                buf: 1,
                index: Affine::var(t).scale(48).plus_term(u3, 4).plus_term(v3, 1),
                value: load_local(acc, at(u3, v3)),
            },
        ])]),
    ];
    Module {
        name: "probe".into(),
        buffers: vec![
            Buffer {
                name: "c".into(),
                len: 2,
                role: BufRole::Input(0),
            },
            Buffer {
                name: "y".into(),
                len: CHUNKS * 48,
                role: BufRole::Output(0),
            },
        ],
        kernels: vec![kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)])],
    }
}

/// Measures read bandwidth (over a 512 MiB buffer) and the FMA rate with `threads`
/// threads.
pub fn roofline(threads: usize) -> Result<Roofline> {
    let opts = CodegenOptions::default();
    let len = 128 << 20; // 512 MiB of f32, far beyond any cache
    let stream = CompiledModule::compile(&stream_probe(len), &opts)?;
    let mut x = vec![1.0f32; len];
    let mut y = vec![0.0f32; CHUNKS * 16];
    let ms = median_ms(5, || stream.run(&mut [&mut x, &mut y], threads))?;
    let read_gbps = (4 * len) as f64 / (ms * 1e-3) / 1e9;
    drop(x);
    let iters = 200_000u64;
    let fmas = CompiledModule::compile(&fma_probe(iters), &opts)?;
    let mut c = vec![0.999_999f32, 1e-7];
    let mut y = vec![0.0f32; CHUNKS * 48];
    let ms = median_ms(5, || fmas.run(&mut [&mut c, &mut y], threads))?;
    let flops = CHUNKS as f64 * iters as f64 * 48.0 * 2.0;
    Ok(Roofline {
        read_gbps,
        fma_gflops: flops / (ms * 1e-3) / 1e9,
    })
}
