//! The roofline probe of the wide tier: the FMA rate its microkernels reach on this
//! machine, measured with a `wide(tier)` register tile over L1-resident operands (the
//! same assembler and call path as a model's tiles).
//!
//! The tile is `rows` × one register of lanes: `rows` independent accumulator chains
//! (enough to cover the FMA latency on two ports), one vector load and `rows`
//! broadcast operands per step, as in the LC tiles. It is the rate of the microkernel
//! shape, so a model's tile is measured against what that shape can do here.

use super::{median_ms, probe_module, CHUNKS};
use crate::backend::{self, Backend, BufArg, CodegenOptions};
use crate::error::Result;
use crate::loop_ir::micro::{Tier, Wide};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, Expr, KernelBuilder, LoopKind, Module, Stmt,
};

/// The measured FMA rate of a wide tier.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WideRate {
    /// The tier.
    pub tier: Tier,
    /// FMA rate in GFLOP/s (an FMA counts 2 flops per lane).
    pub gflops: f64,
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

/// The FMA rate of the widest tier this CPU has, with `threads` threads (`None`
/// without one).
pub fn wide_rate(threads: usize) -> Result<Option<WideRate>> {
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
    }))
}
