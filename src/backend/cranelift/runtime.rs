//! [`CompiledModule`]: compiles every kernel of a verified loop-IR module into one
//! `JITModule`, owns that JIT memory (freed on drop), and runs the kernels in order,
//! splitting each parallel kernel's loop into contiguous chunks across the persistent
//! worker threads of [`super::pool`] (no thread is started per call once warmed up).
//!
//! Invariants: the kernel function pointers never leave this struct except for the
//! duration of a `run_args` call, which hands them to pool workers and waits for every
//! chunk before returning (so freeing the JIT memory in `Drop` cannot leave a dangling
//! pointer callable); the only `unsafe` blocks are the pointer cast after finalisation,
//! the kernel calls in `pool::BufPtrs::call` (bounds proved by the verifier for the buffer
//! lengths `run_args` checks) and `free_memory` in `Drop`.

use std::sync::Mutex;
use std::time::Instant;

use cranelift_jit::{JITBuilder, JITModule};
use cranelift_module::{default_libcall_names, Linkage};

use super::codegen::define_kernels;
use super::emit::KernelShape;
use super::isa::{host_isa, resolve_fma, CodegenOptions};
use crate::error::{Error, Result};
use crate::loop_ir::{verify::verify, BufArg, Dtype, Module};

#[cfg(not(feature = "rayon-pool"))]
use super::pool::Lease;
use super::pool::{chunk, BufPtrs, KernelFn};
#[cfg(feature = "rayon-pool")]
use super::pool_rayon::Lease;

/// Owns the JIT memory and frees it when dropped.
///
/// `JITModule` is `Send` but not `Sync` (it keeps a `RefCell` symbol cache). It sits in a
/// `Mutex` that is never locked: that makes [`CompiledModule`] `Sync` without `unsafe`,
/// and it is sound because nothing ever reaches the module through `&self`.
struct JitOwner(Option<JITModule>);

impl Drop for JitOwner {
    fn drop(&mut self) {
        if let Some(m) = self.0.take() {
            // SAFETY: `free_memory` requires that no function of the module is running or
            // called afterwards. The function pointers live only inside the
            // `CompiledModule` that owns this `JitOwner` (or nowhere yet, when compilation
            // failed); `run_args` borrows the module and waits for every chunk it handed
            // to pool workers before returning, so once we are being dropped no call is in flight and none can
            // start.
            unsafe { m.free_memory() }
        }
    }
}

/// One compiled kernel.
struct CompiledKernel {
    name: String,
    shape: KernelShape,
    func: KernelFn,
    /// Statement executions per call (see [`work_of`]).
    work: u64,
}

/// Below this many statement executions a parallel kernel runs on the calling thread.
///
/// With scoped threads (one `spawn` per chunk per call) this was `1 << 18`: starting a
/// thread cost tens of microseconds on a quiet machine and milliseconds on a loaded one
/// (`mortality_smoother`, 25 k multiply-adds, took 0.05 ms on one thread and 4 ms on two
/// while the other core was busy). With the persistent pool a split costs one wake-up of a
/// parked worker, so the threshold is 4× lower; it still pays: splitting every kernel
/// (threshold 0) made `mortality_smoother` at batch 1 slower on the loaded 2-core test
/// machine (median 0.056 ms against 0.039 ms over 11 runs, though its best run was
/// faster), while thresholds from `1 << 14` to `1 << 18` measured the same within noise
/// on the `snp_lc1d` and `mortality_smoother` workloads.
pub(super) const PARALLEL_MIN_WORK: u64 = 1 << 16;

/// Statement executions of one call of `kernel`: every store or local update weighted by
/// the trip counts of its enclosing loops (guards counted as always taken).
pub(super) fn work_of(kernel: &crate::loop_ir::Kernel) -> u64 {
    fn walk(stmts: &[crate::loop_ir::Stmt], trips: u64) -> u64 {
        use crate::loop_ir::Stmt;
        stmts
            .iter()
            .map(|s| match s {
                Stmt::For { extent, body, .. } => walk(body, trips.saturating_mul(*extent)),
                Stmt::If { body, .. } => walk(body, trips),
                Stmt::Store { .. } | Stmt::SetLocal { .. } => trips,
            })
            .fold(0u64, |a, b| a.saturating_add(b))
    }
    walk(&kernel.body, 1)
}

/// What a caller's buffer table must look like for one module: each buffer's length, and
/// which buffers no kernel stores to (inputs, parameters, constants: the verifier rejects
/// stores to them), which may therefore be passed as shared slices. Shared by the JIT and
/// the ahead-of-time test executor (`aot::seam`).
pub(super) struct BufferLayout {
    lens: Vec<usize>,
    read_only: Vec<bool>,
    dtypes: Vec<Dtype>,
}

impl BufferLayout {
    /// The layout of `module`'s buffers.
    pub(super) fn of(module: &Module) -> BufferLayout {
        BufferLayout {
            lens: module.buffers.iter().map(|b| b.len).collect(),
            read_only: module
                .buffers
                .iter()
                .map(|b| b.role.is_read_only())
                .collect(),
            dtypes: module.buffers.iter().map(|b| b.dtype).collect(),
        }
    }

    /// The kernel ABI's buffer table for `bufs` (one per module buffer): checks the
    /// count, every length, and that only read-only buffers are passed shared.
    pub(super) fn table(&self, bufs: &mut [BufArg]) -> Result<Vec<*mut f32>> {
        if bufs.len() != self.lens.len() {
            return Err(Error::internal(format!(
                "run: {} buffers given, the module has {}",
                bufs.len(),
                self.lens.len()
            )));
        }
        let mut ptrs: Vec<*mut f32> = Vec::with_capacity(bufs.len());
        for (i, (b, &len)) in bufs.iter_mut().zip(&self.lens).enumerate() {
            let bound = match b {
                BufArg::ReadHalf(_, d) => *d,
                BufArg::Read(_) | BufArg::Write(_) => Dtype::F32,
            };
            if self.dtypes.get(i) != Some(&bound) {
                return Err(Error::internal(format!(
                    "run: buffer {i} was passed as {} data, the module stores it otherwise",
                    bound.name()
                )));
            }
            let (n, p) = match b {
                BufArg::Read(r) => {
                    if !self.read_only[i] {
                        return Err(Error::internal(format!(
                            "run: buffer {i} is written by the module but was passed read-only"
                        )));
                    }
                    // Never written through: the verifier rejects stores to read-only
                    // buffers.
                    (r.len(), r.as_ptr() as *mut f32)
                }
                BufArg::Write(w) => (w.len(), w.as_mut_ptr()),
                // 16-bit data: the kernels address it with 2-byte elements and only
                // load from it (read-only, as above); the table's pointer type is nominal.
                BufArg::ReadHalf(h, _) => {
                    if !self.read_only[i] {
                        return Err(Error::internal(format!(
                            "run: buffer {i} is written by the module but was passed read-only"
                        )));
                    }
                    (h.len(), h.as_ptr() as *mut f32)
                }
            };
            if n != len {
                return Err(Error::internal(format!(
                    "run: buffer {i} has {n} elements, the module expects {len}"
                )));
            }
            ptrs.push(p);
        }
        Ok(ptrs)
    }
}

/// A compiled module: owns the JIT code (freed on drop) and one function per kernel.
///
/// `Send + Sync`: the kernels are reentrant machine code without hidden state (they touch
/// only the buffers passed to [`CompiledModule::run`]), their pointers are plain `fn`
/// pointers, and the `JITModule` is only touched on drop (see `JitOwner`).
pub struct CompiledModule {
    kernels: Vec<CompiledKernel>,
    buffers: BufferLayout,
    /// Largest extent of a parallel kernel that is split across threads (work at least
    /// [`PARALLEL_MIN_WORK`]); sizes the worker team, so asking for more threads than any
    /// kernel can use starts no idle workers.
    split_extent: u64,
    use_fma: bool,
    clif: String,
    asm: String,
    compile_ms: f64,
    // Last: dropped after everything else, frees the code.
    _jit: Mutex<JitOwner>,
}

fn jit_err(kernel: &str, what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("kernel {kernel}: cranelift {what}: {e}"))
}

impl CompiledModule {
    /// Compiles every kernel of `module`. Runs [`crate::loop_ir::verify::verify`] first
    /// and refuses unverified input (the generated code has no bounds checks).
    pub fn compile(module: &Module, opts: &CodegenOptions) -> Result<CompiledModule> {
        verify(module)?;
        let t0 = Instant::now();
        let use_fma = resolve_fma(opts);
        let isa = host_isa(opts)?;
        let mut owner = JitOwner(Some(JITModule::new(JITBuilder::with_isa(
            isa,
            default_libcall_names(),
        ))));
        let jit = owner
            .0
            .as_mut()
            .ok_or_else(|| Error::internal("cranelift: JIT module missing"))?;
        let defined = define_kernels(
            jit,
            module,
            use_fma,
            !opts.f32x4_only,
            opts.keep_text,
            "k",
            Linkage::Local,
        )?;
        let (clif, asm) = (defined.clif, defined.asm);
        let declared = defined.kernels;
        jit.finalize_definitions()
            .map_err(|e| jit_err(&module.name, "finalize", e))?;
        let mut kernels = Vec::with_capacity(declared.len());
        for k in declared {
            let ptr = jit.get_finalized_function(k.id);
            if ptr.is_null() {
                return Err(jit_err(&k.name, "finalize", "null function pointer"));
            }
            // SAFETY: `ptr` is the entry of a finalized function whose signature
            // `emit_kernel` set to `(ptr, i64, i64) -> ()` in the ISA's default calling
            // convention, which is the C convention of this host: exactly `KernelFn`.
            let func = unsafe { std::mem::transmute::<*const u8, KernelFn>(ptr) };
            kernels.push(CompiledKernel {
                name: k.name,
                shape: k.shape,
                func,
                work: k.work,
            });
        }
        let split_extent = kernels
            .iter()
            .filter(|k| k.work >= PARALLEL_MIN_WORK)
            .filter_map(|k| match k.shape {
                KernelShape::Parallel(extent) => Some(extent),
                KernelShape::Serial => None,
            })
            .max()
            .unwrap_or(1);
        Ok(CompiledModule {
            split_extent,
            kernels,
            buffers: BufferLayout::of(module),
            use_fma,
            clif,
            asm,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
            _jit: Mutex::new(owner),
        })
    }

    /// Runs all kernels in order over `bufs` (one slice per module buffer, each exactly
    /// `module.buffers[i].len` long), using up to `threads` threads (0 counts as 1) for
    /// each parallel kernel. Results are bitwise identical for any thread count: an
    /// iteration computes the same thing whichever thread runs it.
    pub fn run(&self, bufs: &mut [&mut [f32]], threads: usize) -> Result<()> {
        let mut args: Vec<BufArg> = bufs.iter_mut().map(|b| BufArg::Write(b)).collect();
        self.run_args(&mut args, threads)
    }

    /// Like [`CompiledModule::run`], but read-only buffers (inputs, parameters,
    /// constants) may be passed as shared slices, so weights need not be copied or
    /// locked per call.
    pub fn run_args(&self, bufs: &mut [BufArg], threads: usize) -> Result<()> {
        let ptrs = self.buffers.table(bufs)?;
        let ptrs = BufPtrs(ptrs.as_ptr());
        let threads = threads.max(1);
        // Checked out at the first kernel that needs helpers, returned when `lease` drops
        // at the end of this call (after every dispatch has finished).
        let mut lease: Option<Lease> = None;
        for k in &self.kernels {
            match k.shape {
                KernelShape::Serial => ptrs.call(k.func, 0, 1),
                KernelShape::Parallel(extent) => {
                    let n = if k.work < PARALLEL_MIN_WORK {
                        1
                    } else {
                        (threads as u64).min(extent).max(1)
                    };
                    if n == 1 {
                        ptrs.call(k.func, 0, extent as i64); // extent ≤ i64::MAX (classify)
                        continue;
                    }
                    // Enough workers for the widest split of this module (n ≤ that).
                    let widest = (threads as u64).min(self.split_extent).max(n);
                    let lease =
                        lease.get_or_insert_with(|| Lease::get(widest.saturating_sub(1) as usize));
                    match lease.team() {
                        Some(team) => team.run(k.func, ptrs, extent, n),
                        None => {
                            for t in 0..n {
                                ptrs.call(k.func, chunk(t, extent, n), chunk(t + 1, extent, n));
                            }
                        }
                    }
                }
            }
        }
        drop(lease);
        Ok(())
    }

    /// Optimised CLIF of every kernel (empty unless `keep_text`).
    pub fn clif_text(&self) -> &str {
        &self.clif
    }

    /// Post-register-allocation machine code (VCode listing) of every kernel (empty unless
    /// `keep_text`).
    pub fn asm_text(&self) -> &str {
        &self.asm
    }

    /// Wall time of [`CompiledModule::compile`] after verification, in milliseconds.
    pub fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    /// Whether `Fma` compiled to a fused multiply-add (then results equal the
    /// interpreter's bit for bit).
    pub fn uses_fma(&self) -> bool {
        self.use_fma
    }

    /// Names of the compiled kernels, in run order.
    pub fn kernel_names(&self) -> impl Iterator<Item = &str> {
        self.kernels.iter().map(|k| k.name.as_str())
    }
}
