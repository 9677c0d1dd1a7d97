//! The roofline probes of the wide tier, with the same assembler and call path as a
//! model's tiles:
//!
//! - the FMA rate its microkernels reach on this machine, measured with a `wide(tier)`
//!   register tile over L1-resident operands. The tile is `rows` × one register of
//!   lanes: `rows` independent accumulator chains (enough to cover the FMA latency on two
//!   ports), one vector load and `rows` broadcast operands per step, as in the LC tiles.
//!   It is the rate of the microkernel shape, so a model's tile is measured against what
//!   that shape can do here;
//! - the read bandwidth its loads reach over a buffer far beyond the caches: the shape of
//!   a batch-1 LC tile (one row, four registers of filters, the weights streamed with the
//!   prefetch hint the LC schedule gives). Full-width loads keep more cache lines in
//!   flight than f32x4 ones: on the AVX-512 Xeon of the performance issue a plain C
//!   reading loop measured 15–18 GB/s with 128-bit loads and 21–29 GB/s with 512-bit ones
//!   and a prefetch (2 threads, 536 MB), and deepface_l4_l6's first layer streams 251 MB
//!   at 31 GB/s at batch 1. A batch-1 forward pass that uses the wide tier is measured
//!   against this rate, not the f32x4 probe's.

use super::{median_ms, probe_module, CHUNKS};
use crate::backend::{self, Backend, BufArg, CodegenOptions};
use crate::error::Result;
use crate::loop_ir::micro::{Tier, Wide};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, Expr, KernelBuilder, LoopKind, Module, Stmt,
};

/// The measured rates of a wide tier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WideRate {
    /// The tier.
    pub tier: Tier,
    /// FMA rate in GFLOP/s (an FMA counts 2 flops per lane).
    pub gflops: f64,
    /// Read bandwidth of its streaming tile in GB/s (10^9 bytes per second).
    pub read_gbps: f64,
}

/// Rows of the probe's tile: all but one register (the shared vector; AVX2 also keeps
/// its broadcast in a register).
fn rows(tier: Tier) -> usize {
    (1..=tier.registers())
        .rev()
        .find(|&r| tier.fits(r, tier.lanes()))
        .unwrap_or(1)
}

/// Per chunk: `iters` steps of a `rows × lanes` tile.
fn probe(tier: Tier, iters: u64) -> Module {
    let (r, l) = (rows(tier) as u64, tier.lanes() as u64);
    let mut kb = KernelBuilder::new("probe.wide");
    let (t, i, u, v, ui, vi, us, vs) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("r"),
        kb.var("f"),
        kb.var("ri"),
        kb.var("fi"),
        kb.var("rs"),
        kb.var("fs"),
    );
    let acc = kb.local("acc", (r * l) as usize);
    let at = |u, v| Affine::var(u).scale(l as i64).plus_term(v, 1);
    let tile = |u, v, st| {
        for_(
            u,
            r,
            LoopKind::Unroll(r as u32),
            vec![for_(v, l, LoopKind::Vector(4), vec![st])],
        )
    };
    let body = vec![
        tile(
            ui,
            vi,
            Stmt::SetLocal {
                local: acc,
                index: at(ui, vi),
                value: Expr::Const(1.0),
            },
        ),
        for_(
            i,
            iters,
            LoopKind::Wide(Wide::new(tier)),
            vec![tile(
                u,
                v,
                Stmt::SetLocal {
                    local: acc,
                    index: at(u, v),
                    value: fma(
                        load(0, Affine::var(u)),
                        load(0, Affine::var(v)),
                        load_local(acc, at(u, v)),
                    ),
                },
            )],
        ),
        tile(
            us,
            vs,
            Stmt::Store {
                buf: 1,
                index: Affine::var(t)
                    .scale((r * l) as i64)
                    .plus_affine(&at(us, vs)),
                value: load_local(acc, at(us, vs)),
            },
        ),
    ];
    probe_module(
        (r.max(l)) as usize,
        CHUNKS * (r * l) as usize,
        kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)]),
    )
}

/// Prefetch distances (elements past each vector read) the streaming probe tries; the
/// best counts. 0, and 8 KiB ahead (the distance that read fastest in the C loop above;
/// the LC schedule's next-position distance is 25–83 KiB on deepface_l4_l6).
const STREAM_PREFETCH: [i64; 2] = [0, 2048];

/// Per chunk of `len / CHUNKS` elements of buffer 0: a `1 × 4·lanes` tile that
/// multiplies the chunk's first element by every element of the chunk, once, adding
/// into four independent accumulator registers.
fn stream_probe(tier: Tier, len: usize, prefetch: i64) -> Module {
    let chunk = (len / CHUNKS) as i64;
    let l = 4 * tier.lanes() as u64;
    let mut kb = KernelBuilder::new("probe.wide_stream");
    let (t, i, u, v, ui, vi, us, vs) = (
        kb.var("t"),
        kb.var("i"),
        kb.var("r"),
        kb.var("f"),
        kb.var("ri"),
        kb.var("fi"),
        kb.var("rs"),
        kb.var("fs"),
    );
    let acc = kb.local("acc", l as usize);
    let tile = |u, v, st| {
        for_(
            u,
            1,
            LoopKind::Unroll(1),
            vec![for_(v, l, LoopKind::Vector(4), vec![st])],
        )
    };
    let first = Affine::var(t).scale(chunk);
    let body = vec![
        tile(
            ui,
            vi,
            Stmt::SetLocal {
                local: acc,
                index: Affine::var(vi),
                value: Expr::Const(0.0),
            },
        ),
        for_(
            i,
            chunk as u64 / l,
            LoopKind::Wide(Wide { tier, prefetch }),
            vec![tile(
                u,
                v,
                Stmt::SetLocal {
                    local: acc,
                    index: Affine::var(v),
                    value: fma(
                        load(0, first.clone()),
                        load(0, first.clone().plus_term(i, l as i64).plus_term(v, 1)),
                        load_local(acc, Affine::var(v)),
                    ),
                },
            )],
        ),
        tile(
            us,
            vs,
            Stmt::Store {
                buf: 1,
                index: Affine::var(t).scale(l as i64).plus_term(vs, 1),
                value: load_local(acc, Affine::var(vs)),
            },
        ),
    ];
    probe_module(
        len,
        CHUNKS * l as usize,
        kb.finish(vec![for_(t, CHUNKS as u64, LoopKind::Parallel, body)]),
    )
}

/// The best read bandwidth of [`stream_probe`] over `x` (GB/s) with `threads` threads.
fn stream_gbps(tier: Tier, x: &mut [f32], threads: usize) -> Result<f64> {
    let mut best = 0.0f64;
    for prefetch in STREAM_PREFETCH {
        let module = stream_probe(tier, x.len(), prefetch);
        let program = backend::prepare(Backend::Jit, &module, &CodegenOptions::default())?;
        let mut y = vec![0.0f32; CHUNKS * 4 * tier.lanes()];
        let ms = median_ms(5, || {
            program.run(&mut [BufArg::Write(x), BufArg::Write(&mut y)], threads)
        })?;
        best = best.max((4 * x.len()) as f64 / (ms * 1e-3) / 1e9);
    }
    Ok(best)
}

/// The rates of the widest tier this CPU has, with `threads` threads (`None` without
/// one); `x` is the streaming buffer (far beyond the caches, a multiple of
/// [`CHUNKS`] · 64 elements).
pub fn wide_rate(threads: usize, x: &mut [f32]) -> Result<Option<WideRate>> {
    let Some(tier) = [Tier::Avx512, Tier::Avx2]
        .into_iter()
        .find(|t| backend::host_has_tier(*t))
    else {
        return Ok(None);
    };
    let iters = 100_000u64;
    let module = probe(tier, iters);
    let program = backend::prepare(Backend::Jit, &module, &CodegenOptions::default())?;
    let (r, l) = (rows(tier), tier.lanes());
    let mut c = vec![1e-7f32; r.max(l)];
    let mut y = vec![0.0f32; CHUNKS * r * l];
    let ms = median_ms(5, || {
        program.run(&mut [BufArg::Write(&mut c), BufArg::Write(&mut y)], threads)
    })?;
    let flops = (CHUNKS * r * l) as f64 * iters as f64 * 2.0;
    Ok(Some(WideRate {
        tier,
        gflops: flops / (ms * 1e-3) / 1e9,
        read_gbps: stream_gbps(tier, x, threads)?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The streaming probe computes what its loop IR says, on every tier (the
    /// microkernel where the CPU has the tier, f32x4 code elsewhere), with and without
    /// its prefetch: per chunk and lane, the chunk's first element times each element
    /// that lane reads, summed (small integers, so every sum is exact).
    #[test]
    fn stream_probe_sums_each_lane_of_its_chunk() {
        for tier in [Tier::Avx2, Tier::Avx512] {
            for prefetch in STREAM_PREFETCH {
                let l = 4 * tier.lanes();
                let (steps, chunk) = (8, 8 * l);
                let mut x: Vec<f32> = (0..CHUNKS * chunk).map(|j| (j % 7) as f32).collect();
                let module = stream_probe(tier, x.len(), prefetch);
                crate::loop_ir::verify::verify(&module).expect("verifies");
                let program = backend::prepare(Backend::Jit, &module, &CodegenOptions::default())
                    .expect("compiles");
                let mut y = vec![0.0f32; CHUNKS * l];
                program
                    .run(&mut [BufArg::Write(&mut x), BufArg::Write(&mut y)], 2)
                    .expect("runs");
                for t in 0..CHUNKS {
                    for v in 0..l {
                        let want: f32 = (0..steps)
                            .map(|i| x[t * chunk] * x[t * chunk + i * l + v])
                            .sum();
                        assert_eq!(y[t * l + v], want, "{tier} chunk {t} lane {v}");
                    }
                }
            }
        }
    }
}
