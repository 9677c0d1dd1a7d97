//! The execution seam: [`Program`], a verified loop-IR module prepared to run over a
//! buffer table ([`BufArg`], one entry per module buffer), by the interpreter or by
//! Cranelift-compiled native code, behind one type and one [`Program::run`].
//!
//! Every caller that runs loop IR (the runtime's forward and gradient programs, the
//! compiled optimizer update, the roofline probes) goes through [`prepare`]; which
//! executor an engine name means is decided once, in [`crate::runtime::Engine::backend`].
//! Nothing outside this module names the interpreter or the JIT. The third way to run a
//! program, ahead-of-time object code with a C driver ([`aot`], `lcjit aot`), runs the
//! same kernels outside lcjit; its tests check it against [`Program`].
//!
//! Invariant: only verified loop-IR modules are prepared ([`prepare`] runs the verifier
//! for both executors), because the generated code does no bounds checks; the interpreter
//! checks every access anyway and is the definition the JIT is tested against.

pub mod cranelift;
pub mod guard;

pub use self::cranelift::aot;
pub use self::cranelift::{host_has_fma, CodegenOptions, CompiledModule, OptLevel};
use crate::error::Result;
pub use self::guard::{checked_mode, enable_checked_mode};
pub use crate::loop_ir::BufArg;
use crate::loop_ir::{interp, verify::verify, Module};

/// Which executor runs a loop-IR program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The checked loop-IR interpreter.
    Interp,
    /// Native code compiled by Cranelift (f32x4, threads).
    Jit,
}

/// A loop-IR module ready to run (see the module docs).
pub struct Program {
    module: Module,
    native: Option<CompiledModule>,
    /// Native runs go through [`guard::run_checked`] (checked mode was on at `prepare`).
    checked: bool,
}

/// Prepares `module` for `backend`: verifies it, and for the JIT compiles every kernel
/// with `opts`.
pub fn prepare(backend: Backend, module: &Module, opts: &CodegenOptions) -> Result<Program> {
    let native = match backend {
        Backend::Jit => Some(CompiledModule::compile(module, opts)?),
        Backend::Interp => {
            verify(module)?;
            None
        }
    };
    Ok(Program {
        module: module.clone(),
        checked: native.is_some() && checked_mode(),
        native,
    })
}

impl Program {
    /// Runs every kernel in order over `bufs` (one per module buffer, each exactly as long
    /// as the module says; read-only buffers may be shared slices), on up to `threads`
    /// threads for native code. Results are bitwise identical for any thread count, and
    /// equal to the interpreter's when the JIT fuses multiply-adds. In checked mode
    /// ([`guard`]) native code runs over guarded copies of the buffers.
    pub fn run(&self, bufs: &mut [BufArg], threads: usize) -> Result<()> {
        match &self.native {
            Some(native) if self.checked => {
                guard::run_checked(bufs, |args| native.run_args(args, threads))
            }
            Some(native) => native.run_args(bufs, threads),
            None => interp::run(&self.module, bufs),
        }
    }

    /// The program's module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Which executor runs it.
    pub fn backend(&self) -> Backend {
        match self.native {
            Some(_) => Backend::Jit,
            None => Backend::Interp,
        }
    }

    /// Code generation time in milliseconds (0 for the interpreter).
    pub fn compile_ms(&self) -> f64 {
        self.native.as_ref().map_or(0.0, CompiledModule::compile_ms)
    }

    /// The optimised CLIF (`clif: true`) or the machine-code listing of every kernel,
    /// for native programs prepared with `keep_text` (empty otherwise).
    pub fn listing(&self, clif: bool) -> &str {
        match (&self.native, clif) {
            (Some(n), true) => n.clif_text(),
            (Some(n), false) => n.asm_text(),
            (None, _) => "",
        }
    }
}
