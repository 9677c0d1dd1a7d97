//! Host ISA construction for the JIT: shared Cranelift flags, the optimisation level, the
//! IR verifier switch and the decision whether `Fma` becomes a fused `fma` instruction.
//!
//! Invariants: `is_pic` is always `false` (cranelift-jit 0.135 asserts it);
//! `use_colocated_libcalls` is `false` (the JIT cannot guarantee short-range relocations);
//! the verifier runs exactly in debug builds.

use cranelift_codegen::isa::OwnedTargetIsa;
use cranelift_codegen::settings::{self, Configurable};

use crate::error::{Error, Result};
use crate::loop_ir::micro::Tier;

/// Cranelift's mid-end level for a whole compiled module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum OptLevel {
    /// No mid-end: the CLIF is lowered in the order the emitter wrote it.
    ///
    /// Default. Measured (the criterion bench `benches/codegen.rs` repeats the comparison
    /// on real workloads; `lcjit ir --stage clif|asm` shows the code) on an LC-like kernel:
    /// 256 parallel positions, a serial reduction of 96, a fully unrolled batch tile of 4
    /// × 12 filters (3 `f32x4`), i.e. 12 vector accumulators, one thread, best of 9
    /// batches, 2 shared cores, test profile. `none`: 58.6–63.9 µs/call (≈37–40 GFLOP/s),
    /// compile 0.9–1.3 ms; `speed`: 60.4–65.3 µs/call (≈36–39 GFLOP/s), compile
    /// 0.9–1.1 ms. Run time is a tie within the noise, but the VCode shows why `none`
    /// is the safer default: at `speed` the mid-end hoists all loads of the reduction
    /// body to its top and sinks the FMAs, so 5 accumulators spill and reload every
    /// iteration; at `none` (source order: load, splat, FMAs per batch row) only 2 do.
    /// The gap widens with bigger unrolled tiles (cranelift notes §3.6). The emitter
    /// already does the GVN that matters here (scoped address and load caches).
    #[default]
    None,
    /// The e-graph mid-end (GVN, LICM, constant folding, redundant-load elimination).
    Speed,
}

impl OptLevel {
    fn flag(self) -> &'static str {
        match self {
            OptLevel::None => "none",
            OptLevel::Speed => "speed",
        }
    }
}

/// Options of [`super::CompiledModule::compile`].
#[derive(Clone, Debug, Default)]
pub struct CodegenOptions {
    /// Cranelift optimisation level for every kernel.
    pub opt_level: OptLevel,
    /// Whether `Fma` (and the multiply-adds of the transcendental sequences) become a
    /// fused `fma` instruction. `None` = host detection: fused exactly when the hardware
    /// has it (x86-64 with AVX and FMA; always on aarch64). `Some(true)` on a host without
    /// FMA still computes the fused result, through a slow `fmaf` libcall per lane.
    /// `Some(false)` emits `fmul` + `fadd` (two roundings: not bitwise equal to the
    /// interpreter, which always fuses).
    pub use_fma: Option<bool>,
    /// Emit every `wide(tier)` loop as its f32x4 loop instead of the tier's microkernel
    /// (`wide_call.rs`): the differential check of the wide tier, and what a target
    /// without the tier gets anyway. Both compute the same bits.
    pub f32x4_only: bool,
    /// Keep the optimised CLIF text and the machine-code listing of every kernel
    /// ([`super::CompiledModule::clif_text`], [`super::CompiledModule::asm_text`]).
    pub keep_text: bool,
}

/// Whether the host executes a fused multiply-add natively (as Cranelift's lowering
/// decides it: x64 needs AVX *and* FMA, see cranelift notes §2.3).
pub fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(target_arch = "aarch64")]
    {
        true
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// Whether this CPU runs the microkernels of `tier` (`wide.rs`): AVX2 needs FMA too (its
/// multiply-adds) and F16C (its half-precision loads); AVX-512 needs AVX-512F.
pub fn host_has_tier(tier: Tier) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        match tier {
            Tier::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            Tier::Avx512 => std::is_x86_feature_detected!("avx512f"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = tier;
        false
    }
}

/// The FMA decision for `opts`.
pub fn resolve_fma(opts: &CodegenOptions) -> bool {
    opts.use_fma.unwrap_or_else(host_has_fma)
}

fn flag_err(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("cranelift: cannot configure the ISA: {e}"))
}

/// The shared Cranelift flags for `opts`; `is_pic` is `false` for the JIT (cranelift-jit
/// 0.135 asserts it) and `true` for relocatable objects (`aot`), which changes only how
/// symbols are addressed, never the arithmetic.
pub(super) fn shared_flags(opts: &CodegenOptions, is_pic: bool) -> Result<settings::Flags> {
    let mut flags = settings::builder();
    flags
        .set("opt_level", opts.opt_level.flag())
        .map_err(flag_err)?;
    flags
        .set("is_pic", if is_pic { "true" } else { "false" })
        .map_err(flag_err)?;
    flags
        .set("use_colocated_libcalls", "false")
        .map_err(flag_err)?;
    // The verifier costs 30–40 % of compile time (notes §0.14): on in debug builds and
    // tests, where it catches emitter bugs, off in release.
    flags
        .set(
            "enable_verifier",
            if cfg!(debug_assertions) {
                "true"
            } else {
                "false"
            },
        )
        .map_err(flag_err)?;
    Ok(settings::Flags::new(flags))
}

/// The host ISA with every detected feature, configured from `opts`.
pub fn host_isa(opts: &CodegenOptions) -> Result<OwnedTargetIsa> {
    let isa = cranelift_native::builder()
        .map_err(|e| Error::internal(format!("cranelift: unsupported host: {e}")))?;
    isa.finish(shared_flags(opts, false)?)
        .map_err(|e| Error::internal(format!("cranelift: cannot build the host ISA: {e}")))
}
