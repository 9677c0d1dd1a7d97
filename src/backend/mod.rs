//! Native back ends for the loop IR.
//!
//! Today there is one: [`cranelift`], which compiles every kernel of a verified
//! [`crate::loop_ir::Module`] to machine code with Cranelift's JIT and runs the kernels
//! multi-threaded, or ahead of time into an object file with a C driver ([`aot`]). The main types are re-exported here so callers write
//! `backend::CompiledModule`.
//!
//! Invariant: only verified loop-IR modules reach code generation
//! ([`CompiledModule::compile`] runs the verifier itself), because the generated code does
//! no bounds checks.

pub mod cranelift;

pub use self::cranelift::aot;
pub use self::cranelift::{host_has_fma, BufArg, CodegenOptions, CompiledModule, OptLevel};
