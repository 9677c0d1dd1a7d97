//! Shared helpers of the wide-tier tests (`wide_tier.rs`, `wide_kernels.rs`): the
//! CPU's tiers, programs with wide loops, compiled models with a tier, bitwise
//! comparisons, a buffer-table runner for prepared programs, and the random LC layers
//! whose filters fill wide registers.

use super::lc_spec::Spec;
use lcjit::backend::{self, BufArg, Program};
use lcjit::loop_ir::micro::Tier;
use lcjit::loop_ir::{BufRole, Dtype, LoopKind, Module, Stmt};
use lcjit::{CompileOptions, CompiledModel, Engine, Model, WideTier};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::sync::Arc;

/// The tiers this CPU runs (the tests of the others are the f32x4 fallback's).
pub fn host_tiers() -> Vec<Tier> {
    [Tier::Avx2, Tier::Avx512]
        .into_iter()
        .filter(|t| backend::host_has_tier(*t))
        .collect()
}

pub fn has_wide(m: &Module) -> bool {
    fn walk(s: &[Stmt]) -> bool {
        s.iter().any(|s| match s {
            Stmt::For {
                kind: LoopKind::Wide(_),
                ..
            } => true,
            Stmt::For { body, .. } | Stmt::If { body, .. } => walk(body),
            _ => false,
        })
    }
    m.kernels.iter().any(|k| walk(&k.body))
}

pub fn input(model: &Model, batch: usize, seed: u64) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    super::random(&shape, seed)
}

pub fn compiled(
    model: &Arc<Model>,
    engine: Engine,
    threads: usize,
    batch: usize,
    dtype: Dtype,
    wide: WideTier,
) -> CompiledModel {
    CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine,
            threads,
            max_batch: batch,
            weights_dtype: dtype,
            wide,
            autotune: None,
        },
    )
    .expect("compile")
}

pub fn same_bits(a: &ArrayD<f32>, b: &ArrayD<f32>) -> bool {
    a.shape() == b.shape()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `program` over a table whose inputs are `x`, parameters `params` (16-bit
/// buffers get their narrowed copies) and writable buffers zeroed; returns the
/// writable buffers.
pub fn run(
    program: &Program,
    x: &[f32],
    params: &[Vec<f32>],
    halves: &[Vec<u16>],
    threads: usize,
) -> Vec<Vec<f32>> {
    let m = program.module();
    let mut owned: Vec<Vec<f32>> = m
        .buffers
        .iter()
        .filter(|b| !b.role.is_read_only())
        .map(|b| vec![0.0; b.len])
        .collect();
    let mut w = owned.iter_mut();
    let mut args: Vec<BufArg> = m
        .buffers
        .iter()
        .map(|b| match &b.role {
            BufRole::Input(_) => BufArg::Read(x),
            BufRole::Param(k) if b.dtype != Dtype::F32 => BufArg::ReadHalf(&halves[*k], b.dtype),
            BufRole::Param(k) => BufArg::Read(&params[*k]),
            BufRole::Const(v) => BufArg::Read(v),
            _ => BufArg::Write(w.next().expect("writable")),
        })
        .collect();
    program.run(&mut args, threads).expect("run");
    drop(args);
    owned
}

pub fn bits_eq(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

pub fn wide_spec() -> impl Strategy<Value = Spec> {
    (
        1usize..3,
        any::<bool>(),
        (6usize..30, 4usize..9),
        1usize..5,
        prop::sample::select(vec![8usize, 16, 24, 32, 48, 64]),
        1usize..5,
        1usize..3,
        1usize..3,
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(Spec::from_parts)
}

/// One LC layer whose 32 filters fill wide registers (2-D, channels_last, 9×8×4 input,
/// 3×3 taps): the layer of the tests that look at the compiled code.
pub fn wide_layer() -> Spec {
    Spec {
        rank: 2,
        cl: true,
        spatial: vec![9, 8],
        c: 4,
        f: 32,
        k: 3,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    }
}
