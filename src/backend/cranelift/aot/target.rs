//! Target selection for ahead-of-time objects: `host` (the JIT's ISA: every detected
//! feature, the same FMA decision, so results are bitwise the JIT's), an x86-64
//! micro-architecture level (`x86_64`, `x86_64-v2`, `x86_64-v3`, `x86_64-v4`, mapped to
//! Cranelift's presets on `x86_64-unknown-linux-gnu`), or any target triple Cranelift was
//! built for (`aarch64-unknown-linux-gnu`, via `cranelift_codegen::isa::lookup`).
//!
//! Invariants: objects are always position independent (`is_pic`), which changes symbol
//! addressing only; only 64-bit little-endian targets are accepted (the driver's `size_t`
//! is `i64` and the weights file is read without byte swapping).

use std::str::FromStr;

use cranelift_codegen::isa::{self, OwnedTargetIsa};
use cranelift_codegen::settings::Configurable;
use target_lexicon::{Architecture, Endianness, PointerWidth, Triple};

use super::super::isa::{host_has_fma, shared_flags, CodegenOptions};
use crate::error::{Error, Result};

/// A compilation target and its FMA decision.
pub(super) struct Target {
    pub isa: OwnedTargetIsa,
    pub use_fma: bool,
}

fn usage(detail: String) -> Error {
    Error::Usage { detail }
}

/// Builds the ISA for `target` (see the module docs).
pub(super) fn target_isa(target: &str, opts: &CodegenOptions) -> Result<Target> {
    let flags = shared_flags(opts, true)?;
    if target == "host" {
        let b = cranelift_native::builder()
            .map_err(|e| Error::internal(format!("cranelift: unsupported host: {e}")))?;
        let isa = b
            .finish(flags)
            .map_err(|e| Error::internal(format!("cranelift: cannot build the host ISA: {e}")))?;
        return Ok(Target {
            isa,
            use_fma: opts.use_fma.unwrap_or_else(host_has_fma),
        });
    }
    let level = match target {
        "x86_64" | "x86-64" => Some(None),
        "x86_64-v2" | "x86-64-v2" => Some(Some("x86-64-v2")),
        "x86_64-v3" | "x86-64-v3" => Some(Some("x86-64-v3")),
        "x86_64-v4" | "x86-64-v4" => Some(Some("x86-64-v4")),
        _ => None,
    };
    let triple_text = if level.is_some() {
        "x86_64-unknown-linux-gnu"
    } else {
        target
    };
    let triple = Triple::from_str(triple_text).map_err(|e| {
        usage(format!(
            "--target '{target}': not a target triple ({e}); expected host, x86_64, \
             x86_64-v2, x86_64-v3, x86_64-v4 or a triple such as aarch64-unknown-linux-gnu"
        ))
    })?;
    if triple.pointer_width() != Ok(PointerWidth::U64)
        || triple.endianness() != Ok(Endianness::Little)
    {
        return Err(usage(format!(
            "--target '{target}': only 64-bit little-endian targets are supported"
        )));
    }
    let mut b = isa::lookup(triple.clone()).map_err(|e| {
        usage(format!(
            "--target '{target}': no code generator for it in this lcjit ({e})"
        ))
    })?;
    if let Some(Some(preset)) = level {
        b.enable(preset)
            .map_err(|e| Error::internal(format!("cranelift: preset {preset}: {e}")))?;
        // The levels' definitions include flags Cranelift 0.135's presets leave off:
        // AVX from v3 on (so its fused multiply-adds, which need AVX and FMA, were never
        // used) and AVX-512F in v4 (the presets set only DQ and VL), by which the wide
        // tier's AVX-512 microkernels are chosen.
        let implied: &[&str] = match preset {
            "x86-64-v3" => &["has_avx"],
            "x86-64-v4" => &["has_avx", "has_avx512f"],
            _ => &[],
        };
        for flag in implied {
            b.enable(flag)
                .map_err(|e| Error::internal(format!("cranelift: {flag}: {e}")))?;
        }
    }
    let isa = b
        .finish(flags)
        .map_err(|e| usage(format!("--target '{target}': cannot build the ISA: {e}")))?;
    // The JIT's rule on the target: fused exactly when the hardware has it.
    let native_fma = match triple.architecture {
        Architecture::Aarch64(_) => true,
        Architecture::X86_64 => {
            let on = |name: &str| {
                isa.isa_flags()
                    .iter()
                    .any(|v| v.name == name && v.as_bool() == Some(true))
            };
            on("has_avx") && on("has_fma")
        }
        _ => false,
    };
    Ok(Target {
        isa,
        use_fma: opts.use_fma.unwrap_or(native_fma),
    })
}
