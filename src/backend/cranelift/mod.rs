//! The Cranelift back end: loop IR → CLIF → native code, plus the multi-threaded runner.
//!
//! Files:
//! - `isa.rs`: host ISA construction (flags, opt level, verifier) and the FMA decision;
//! - `emit.rs`: one kernel → one CLIF function (statements, loops, guards, locals);
//! - `addr.rs`: address arithmetic with loop-invariant hoisting, and loads;
//! - `expr.rs`: expressions, scalar (`f32`) or lane-wise (`f32x4`);
//! - `prescan.rs`: pre-passes (buffers used/stored, local tile layouts);
//! - `math.rs`: the transcendental op sequences of [`crate::loop_ir::math`] in CLIF;
//! - `wide.rs`: AVX2/AVX-512 microkernels of `wide(tier)` register tiles, assembled with
//!   iced-x86; `wide_call.rs`: which wide loops get one, and the call from the kernel;
//! - `codegen.rs`: every kernel of a module into any Cranelift module (JIT or object);
//! - `runtime.rs`: [`CompiledModule`] (owns the JIT memory) and the thread split;
//! - `pool.rs`: the persistent worker threads (process-wide cache of teams) that run the
//!   chunks of parallel kernels (`pool_rayon.rs`: rayon's pool in its place, feature
//!   `rayon-pool`, kept to re-measure the choice);
//! - `aot/`: ahead-of-time objects with a generated C-ABI driver (`lcjit aot`), and the
//!   same kernels linked and loaded in-process behind [`crate::backend::Backend::Aot`]
//!   (the differential-test executor, `aot/seam.rs`).
//!
//! Kernel ABI (one for all kernels): `extern "C" fn(bufs: *const *mut f32, start: i64,
//! end: i64)`. `bufs[i]` is the base of module buffer `i`. A *parallel* kernel's body is
//! exactly one top-level `Parallel` loop, and a call runs its iterations `start..end`
//! (`start < end`). A *serial* kernel has no top-level parallel loop and is called once
//! with `(0, 1)`; the bounds are ignored. Kernels mixing a parallel loop with other
//! top-level statements are rejected with [`crate::Error::Internal`].

mod addr;
pub mod aot;
mod codegen;
mod emit;
mod expr;
mod isa;
mod math;
mod pool;
#[cfg(feature = "rayon-pool")]
mod pool_rayon;
mod prescan;
mod runtime;
mod wide;
mod wide_call;

pub use crate::loop_ir::BufArg;
pub use isa::{host_has_fma, host_has_tier, CodegenOptions, OptLevel};
pub use runtime::CompiledModule;

#[cfg(test)]
mod tests;
