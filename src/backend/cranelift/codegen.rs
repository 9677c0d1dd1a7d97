//! Kernel compilation shared by the JIT ([`super::CompiledModule`]) and the ahead-of-time
//! object writer ([`super::aot`]): every kernel of a verified loop-IR module becomes one
//! function of any `cranelift_module::Module` (a `JITModule` or an `ObjectModule`).
//!
//! Invariants: the caller has run the loop-IR verifier on `module` (the generated code
//! has no bounds checks); the machine code of a kernel depends only on the module, the
//! ISA and the FMA decision, so the JIT and an object built for the same ISA flags
//! compute bitwise identical results.

use cranelift_codegen::ir::UserFuncName;
use cranelift_frontend::FunctionBuilderContext;
use cranelift_module::{FuncId, Linkage, Module as ClifModule};

use super::emit::{classify, emit_kernel, KernelShape};
use super::runtime::work_of;
use super::wide_call::plan_wide;
use crate::error::{Error, Result};
use crate::loop_ir::Module;

/// One kernel defined in a Cranelift module.
pub(super) struct DefinedKernel {
    /// The function's id in the Cranelift module.
    pub id: FuncId,
    /// How it is called.
    pub shape: KernelShape,
    /// The loop-IR kernel's name.
    pub name: String,
    /// Statement executions per call ([`super::runtime::work_of`]): a parallel kernel is
    /// split across threads only from [`super::runtime::PARALLEL_MIN_WORK`].
    pub work: u64,
}

/// Everything [`define_kernels`] produced.
pub(super) struct Defined {
    /// One entry per kernel, in run order.
    pub kernels: Vec<DefinedKernel>,
    /// Optimised CLIF of every kernel (empty unless asked for).
    pub clif: String,
    /// VCode listing of every kernel (empty unless asked for).
    pub asm: String,
}

/// The error for a Cranelift failure on `kernel`.
pub(super) fn clif_err(kernel: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("kernel {kernel}: cranelift {what}: {e}"))
}

/// Declares and defines every kernel of `module` in `m`, named `{prefix}{index}` with
/// `linkage`, in the kernel ABI of [`super`], and the microkernels of its `wide` loops
/// when `wide` (see `wide_call.rs`). Does not finalize.
pub(super) fn define_kernels<M: ClifModule>(
    m: &mut M,
    module: &Module,
    use_fma: bool,
    wide: bool,
    keep_text: bool,
    prefix: &str,
    linkage: Linkage,
) -> Result<Defined> {
    let mut ctx = m.make_context();
    let mut fbc = FunctionBuilderContext::new();
    let (mut clif, mut asm) = (String::new(), String::new());
    let mut kernels = Vec::with_capacity(module.kernels.len());
    for (i, kernel) in module.kernels.iter().enumerate() {
        let shape = classify(kernel)?;
        m.clear_context(&mut ctx);
        // Microkernels always fuse, so they run only where the f32x4 code fuses too.
        let name = format!("{prefix}{i}");
        let calls = plan_wide(m, &mut ctx.func, module, kernel, wide && use_fma, &name)?;
        emit_kernel(
            &mut ctx.func,
            &mut fbc,
            module,
            kernel,
            shape,
            (use_fma, &calls),
            m.target_config(),
        )?;
        let id = m
            .declare_function(&name, linkage, &ctx.func.signature)
            .map_err(|e| clif_err(&kernel.name, "declare", e))?;
        ctx.func.name = UserFuncName::user(0, id.as_u32());
        ctx.set_disasm(keep_text);
        m.define_function(id, &mut ctx)
            .map_err(|e| clif_err(&kernel.name, "compile", e))?;
        if keep_text {
            // After `define_function`, `ctx.func` holds the optimised CLIF.
            clif.push_str(&format!(
                "; kernel {}\n{}\n",
                kernel.name,
                ctx.func.display()
            ));
            let vcode = ctx.compiled_code().and_then(|c| c.vcode.clone());
            asm.push_str(&format!(
                "; kernel {}\n{}\n",
                kernel.name,
                vcode.unwrap_or_default()
            ));
        }
        kernels.push(DefinedKernel {
            id,
            shape,
            name: kernel.name.clone(),
            work: work_of(kernel),
        });
    }
    m.clear_context(&mut ctx);
    Ok(Defined { kernels, clif, asm })
}
