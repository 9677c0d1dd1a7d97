//! The execution seam: [`Program`], a verified loop-IR module prepared to run over a
//! buffer table ([`BufArg`], one entry per module buffer), by the interpreter, by
//! Cranelift-compiled native code, or by the same native code built ahead of time as an
//! object file, behind one type and one [`Program::run`].
//!
//! Every caller that runs loop IR (the runtime's forward and gradient programs, the
//! compiled optimizer update, the roofline probes) goes through [`prepare`]; which
//! executor an engine name means is decided once, in [`crate::runtime::Engine::backend`],
//! which maps engines to [`Backend::Interp`] and [`Backend::Jit`] only. Nothing outside
//! this module names the interpreter or the JIT.
//!
//! Ahead-of-time code ([`aot`], `lcjit aot`) runs the JIT's kernels outside lcjit, behind
//! a generated C driver. [`Backend::Aot`] is its differential-test executor: it builds a
//! program's kernels into an object exactly as `lcjit aot --target host` does, links it
//! with the system `cc` and loads it, so tests run any program the runtime builds
//! (forward, both gradient phases) through the object-file path over the same buffer
//! table as the JIT and compare bit for bit (`tests/aot_seam.rs`); the C-ABI libraries
//! themselves are checked by C harnesses (`tests/aot.rs`).
//!
//! Invariant: only verified loop-IR modules are prepared ([`prepare`] runs the verifier
//! for every executor), because the generated code does no bounds checks; the
//! interpreter checks every access anyway and is the definition the JIT is tested
//! against.

pub mod cranelift;
pub mod guard;

pub use self::cranelift::aot;
pub use self::cranelift::{host_has_fma, host_has_tier, CodegenOptions, CompiledModule, OptLevel};
pub use self::guard::{checked_mode, enable_checked_mode};
use crate::error::Result;
pub use crate::loop_ir::BufArg;
use crate::loop_ir::{interp, verify::verify, Module};

/// Which executor runs a loop-IR program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The checked loop-IR interpreter.
    Interp,
    /// Native code compiled by Cranelift (f32x4, threads).
    Jit,
    /// The differential-test executor of the ahead-of-time path: the JIT's kernels for
    /// the host, compiled into a relocatable object (cranelift-object, as
    /// `lcjit aot --target host`) with a generated entry that runs them in order,
    /// linked into a shared library by the system `cc -shared` in a private temporary
    /// directory (removed when the [`Program`] drops) and loaded with `dlopen`. Parallel
    /// kernels run in the JIT's chunks for the thread count, one after another on the
    /// calling thread, so results equal the JIT's bit for bit at any thread count.
    /// For tests and tools: no [`crate::Engine`] maps to it. Unix only; needs a C
    /// compiler ([`crate::Error::Tool`] without one).
    Aot,
}

/// How a [`Program`] runs.
enum Exec {
    Interp,
    Jit(Box<CompiledModule>),
    #[cfg(unix)]
    Aot(Box<aot::seam::SeamLibrary>),
}

/// A loop-IR module ready to run (see the module docs).
pub struct Program {
    module: Module,
    exec: Exec,
    /// Native runs go through [`guard::run_checked`] (checked mode was on at `prepare`).
    checked: bool,
}

/// Prepares `module` for `backend`: verifies it, and for the JIT or the ahead-of-time
/// executor compiles every kernel with `opts`.
pub fn prepare(backend: Backend, module: &Module, opts: &CodegenOptions) -> Result<Program> {
    let exec = match backend {
        Backend::Jit => Exec::Jit(Box::new(CompiledModule::compile(module, opts)?)),
        Backend::Interp => {
            verify(module)?;
            Exec::Interp
        }
        #[cfg(unix)]
        Backend::Aot => Exec::Aot(Box::new(aot::seam::SeamLibrary::build(module, opts)?)),
        #[cfg(not(unix))]
        Backend::Aot => {
            return Err(crate::Error::Usage {
                detail: "the ahead-of-time test executor needs dlopen (Unix)".into(),
            })
        }
    };
    Ok(Program {
        module: module.clone(),
        checked: !matches!(exec, Exec::Interp) && checked_mode(),
        exec,
    })
}

impl Program {
    /// Runs every kernel in order over `bufs` (one per module buffer, each exactly as long
    /// as the module says; read-only buffers may be shared slices), on up to `threads`
    /// threads for the JIT (in the JIT's chunks on the calling thread for
    /// [`Backend::Aot`]). Results are bitwise identical for any thread count and
    /// between the JIT and [`Backend::Aot`], and equal to the interpreter's when the
    /// native code fuses multiply-adds. In checked mode ([`guard`]) native code runs
    /// over guarded copies of the buffers.
    pub fn run(&self, bufs: &mut [BufArg], threads: usize) -> Result<()> {
        if self.checked {
            return guard::run_checked(bufs, |args| self.run_unchecked(args, threads));
        }
        self.run_unchecked(bufs, threads)
    }

    /// [`Program::run`] over `bufs` as given.
    fn run_unchecked(&self, bufs: &mut [BufArg], threads: usize) -> Result<()> {
        match &self.exec {
            Exec::Jit(native) => native.run_args(bufs, threads),
            Exec::Interp => interp::run(&self.module, bufs),
            #[cfg(unix)]
            Exec::Aot(lib) => lib.run_args(bufs, threads),
        }
    }

    /// The program's module.
    pub fn module(&self) -> &Module {
        &self.module
    }

    /// Which executor runs it.
    pub fn backend(&self) -> Backend {
        match self.exec {
            Exec::Jit(_) => Backend::Jit,
            Exec::Interp => Backend::Interp,
            #[cfg(unix)]
            Exec::Aot(_) => Backend::Aot,
        }
    }

    /// Code generation time in milliseconds (0 for the interpreter; for
    /// [`Backend::Aot`] including the link and the load).
    pub fn compile_ms(&self) -> f64 {
        match &self.exec {
            Exec::Jit(n) => n.compile_ms(),
            Exec::Interp => 0.0,
            #[cfg(unix)]
            Exec::Aot(lib) => lib.compile_ms(),
        }
    }

    /// The optimised CLIF (`clif: true`) or the machine-code listing of every kernel,
    /// for native programs prepared with `keep_text` (empty otherwise).
    pub fn listing(&self, clif: bool) -> &str {
        match (&self.exec, clif) {
            (Exec::Jit(n), true) => n.clif_text(),
            (Exec::Jit(n), false) => n.asm_text(),
            #[cfg(unix)]
            (Exec::Aot(lib), true) => lib.clif_text(),
            #[cfg(unix)]
            (Exec::Aot(lib), false) => lib.asm_text(),
            (Exec::Interp, _) => "",
        }
    }

    /// The private directory holding a [`Backend::Aot`] program's shared library
    /// (removed when the program drops); `None` for the other executors.
    pub fn library_dir(&self) -> Option<&std::path::Path> {
        match &self.exec {
            #[cfg(unix)]
            Exec::Aot(lib) => Some(lib.dir()),
            _ => None,
        }
    }
}
