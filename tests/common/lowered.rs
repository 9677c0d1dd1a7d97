//! Running a lowered forward program directly on an executor (no [`lcjit::CompiledModel`]
//! in between), for tests that choose the lowering's [`lcjit::lower::Target`] themselves:
//! forced schedule families (`autotune.rs`), fusion on or off (`fusion.rs`).

use lcjit::backend::{self, Backend, BufArg, CodegenOptions};
use lcjit::loop_ir::BufRole;
use lcjit::lower::Lowered;
use lcjit::Model;

/// Output 0 of `lowered` run on `backend` with `threads` threads over input `x` and
/// `model`'s parameters.
pub fn run(
    lowered: &Lowered,
    model: &Model,
    x: &[f32],
    backend: Backend,
    threads: usize,
) -> Vec<f32> {
    let m = &lowered.module;
    let program = backend::prepare(backend, m, &CodegenOptions::default()).expect("prepare");
    let params: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|p| p.iter().copied().collect())
        .collect();
    let mut owned: Vec<Vec<f32>> = m
        .buffers
        .iter()
        .map(|b| match &b.role {
            BufRole::Input(_) | BufRole::Param(_) | BufRole::Const(_) => Vec::new(),
            _ => vec![0.0; b.len],
        })
        .collect();
    let mut args: Vec<BufArg> = m
        .buffers
        .iter()
        .zip(owned.iter_mut())
        .map(|(b, o)| match &b.role {
            BufRole::Input(_) => BufArg::Read(x),
            BufRole::Param(i) => BufArg::Read(&params[*i]),
            BufRole::Const(v) => BufArg::Read(v),
            _ => BufArg::Write(o.as_mut_slice()),
        })
        .collect();
    program.run(&mut args, threads).expect("run");
    drop(args);
    owned.swap_remove(lowered.output_bufs[0] as usize)
}
