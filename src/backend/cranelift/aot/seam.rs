//! The differential-test executor behind [`crate::backend::Backend::Aot`]: a loop-IR
//! module compiled the way `lcjit aot` compiles it, run in this process over the
//! caller's buffer table, so that the object-file path can be checked against the JIT on
//! any program the runtime builds (forward, gradient phases, cuts) without a C harness.
//!
//! [`SeamLibrary::build`] defines every kernel with `codegen::define_kernels` (the JIT's
//! code for the host ISA with `is_pic` and the same FMA decision, as `--target host`)
//! into a relocatable object made by cranelift-object, plus one exported entry
//!
//! ```c
//! void lcjit_seam_run(float *const *bufs, int64_t threads);
//! ```
//!
//! which calls the kernels in order over `bufs` (one base pointer per module buffer)
//! through the drivers' own sequencer (`driver::run::emit_run_kernels`): a parallel
//! kernel with enough work runs as the JIT's `min(threads, extent)` chunks, one after
//! another on the calling thread (the libraries have no thread pool: `NAME_create`'s
//! `threads` is reserved, and they run on the calling thread). The object is linked into
//! a shared library with the system `cc -shared` in a private temporary directory
//! (mode 0700) and loaded with `dlopen` (`RTLD_NOW | RTLD_LOCAL`, so libraries of
//! several programs do not see each other's symbols).
//!
//! Invariants: the library is unloaded and its directory removed when the
//! [`SeamLibrary`] drops, which cannot happen during a call (`run_args` borrows it); the
//! entry is only called with a buffer table checked against the module's buffer lengths
//! (`runtime::BufferLayout::table`), the module having been verified, so the kernels' unchecked
//! accesses stay in bounds. For tests and tools only: engines never choose it.

use std::ffi::{c_void, CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cranelift_codegen::ir::{types, InstBuilder};
use cranelift_module::{default_libcall_names, Linkage, Module as ClifModule};
use cranelift_object::{ObjectBuilder, ObjectModule};

use super::super::codegen::define_kernels;
use super::super::isa::CodegenOptions;
use super::super::runtime::BufferLayout;
use super::driver::env::Definer;
use super::driver::run::{emit_run_kernels, MAX_SPLIT_THREADS};
use super::{cc_shared, target};
use crate::error::{Error, Result};
use crate::loop_ir::{verify::verify, BufArg, Module};

/// The entry's symbol.
const ENTRY: &str = "lcjit_seam_run";

/// The entry's ABI (see the module docs).
type EntryFn = unsafe extern "C" fn(*const *mut f32, i64);

/// A module compiled to an object, linked and loaded (see the module docs).
pub(crate) struct SeamLibrary {
    /// The `dlopen` handle (closed on drop).
    handle: *mut c_void,
    entry: EntryFn,
    /// The private directory holding the library (removed on drop).
    dir: PathBuf,
    buffers: BufferLayout,
    clif: String,
    asm: String,
    compile_ms: f64,
}

// SAFETY: the library's code is immutable once loaded and the entry is reentrant: the
// kernels keep no state and touch only the buffers of the call (the same argument as for
// `CompiledModule`). The handle is used only by `Drop`, which has exclusive access.
unsafe impl Send for SeamLibrary {}
// SAFETY: as for `Send`: `&self` only reads the entry pointer and the buffer lengths.
unsafe impl Sync for SeamLibrary {}

/// A fresh private directory under the system temporary directory.
fn private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    static N: AtomicUsize = AtomicUsize::new(0);
    let base = std::env::temp_dir();
    for _ in 0..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir = base.join(format!(
            "lcjit-seam-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, e)),
        }
    }
    Err(Error::internal("aot seam: no fresh temporary directory"))
}

/// The message of the last `dlopen`/`dlsym` failure.
fn dl_error() -> String {
    // SAFETY: `dlerror` returns NULL or a NUL-terminated string valid until the next dl*
    // call on this thread; it is copied at once.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        "unknown error".into()
    } else {
        // SAFETY: non-NULL, NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// Compiles `module` into a relocatable object with the seam entry.
fn object(module: &Module, opts: &CodegenOptions) -> Result<(Vec<u8>, String, String)> {
    let target = target::target_isa("host", opts)?;
    let builder = ObjectBuilder::new(target.isa, "lcjit_seam", default_libcall_names())
        .map_err(|e| Error::internal(format!("aot seam: object builder: {e}")))?;
    let mut obj = ObjectModule::new(builder);
    let defined = define_kernels(
        &mut obj,
        module,
        target.use_fma,
        !opts.f32x4_only,
        opts.keep_text,
        "lcjit_seam_k",
        Linkage::Local,
    )?;
    let p = obj.target_config().pointer_type();
    let mut def = Definer::new(&obj);
    def.define(&mut obj, ENTRY, &[p, types::I64], None, &|m, b, a| {
        emit_run_kernels(m, b, a[0], &defined.kernels, Some(a[1]))?;
        b.ins().return_(&[]);
        Ok(())
    })?;
    let bytes = obj
        .finish()
        .emit()
        .map_err(|e| Error::internal(format!("aot seam: cannot write the object: {e}")))?;
    Ok((bytes, defined.clif, defined.asm))
}

/// Loads the shared library at `path` and finds the entry.
fn load(path: &Path) -> Result<(*mut c_void, EntryFn)> {
    let tool = |detail: String| Error::Tool {
        tool: "dlopen".into(),
        detail,
    };
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::internal("aot seam: NUL in the temporary path"))?;
    // SAFETY: `c` is a NUL-terminated path; loading runs no constructors of ours (the
    // object has none) and the library imports only libc.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if handle.is_null() {
        return Err(tool(format!(
            "{}: cannot load the linked test library ({}); is the temporary directory \
             (TMPDIR) mounted noexec?",
            path.display(),
            dl_error()
        )));
    }
    let name = CString::new(ENTRY).map_err(|_| Error::internal("aot seam: entry name"))?;
    // SAFETY: `handle` is a live handle from `dlopen`, `name` NUL-terminated.
    let sym = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if sym.is_null() {
        let e = dl_error();
        // SAFETY: `handle` is live and nothing from it is in use.
        unsafe { libc::dlclose(handle) };
        return Err(tool(format!("{}: no {ENTRY} ({e})", path.display())));
    }
    // SAFETY: `lcjit_seam_run` was defined by `object` with the signature `(ptr, i64)`
    // in the host's C calling convention: exactly `EntryFn`.
    let entry = unsafe { std::mem::transmute::<*mut c_void, EntryFn>(sym) };
    Ok((handle, entry))
}

impl SeamLibrary {
    /// Verifies `module`, compiles it (see the module docs), links it with the system
    /// C compiler ([`Error::Tool`] if there is none) and loads it.
    pub(crate) fn build(module: &Module, opts: &CodegenOptions) -> Result<SeamLibrary> {
        verify(module)?;
        let t0 = Instant::now();
        let (bytes, clif, asm) = object(module, opts)?;
        let dir = private_dir()?;
        let obj = dir.join("program.o");
        let lib = dir.join("libprogram.so");
        let loaded = std::fs::write(&obj, &bytes)
            .map_err(|e| Error::io(&obj, e))
            .and_then(|()| cc_shared(&obj, &lib, &lib))
            .and_then(|()| load(&lib));
        let (handle, entry) = match loaded {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let _ = std::fs::remove_file(&obj);
        Ok(SeamLibrary {
            handle,
            entry,
            dir,
            buffers: BufferLayout::of(module),
            clif,
            asm,
            compile_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Runs every kernel in order over `bufs` (checked as for the JIT), parallel kernels
    /// in the JIT's chunks for `threads` (0 counts as 1).
    pub(crate) fn run_args(&self, bufs: &mut [BufArg], threads: usize) -> Result<()> {
        let ptrs = self.buffers.table(bufs)?;
        let threads = (threads as u64).clamp(1, MAX_SPLIT_THREADS) as i64;
        // SAFETY: the entry runs the verified module's kernels over `ptrs`, one pointer
        // per module buffer, each to exactly as many floats as the module declares
        // (checked by `BufferLayout::table`), read-only ones never written (the verifier
        // rejects stores to them); `bufs` outlives the call.
        unsafe { (self.entry)(ptrs.as_ptr(), threads) };
        Ok(())
    }

    /// Object build, link and load time in milliseconds.
    pub(crate) fn compile_ms(&self) -> f64 {
        self.compile_ms
    }

    /// Optimised CLIF of every kernel (empty unless `keep_text`).
    pub(crate) fn clif_text(&self) -> &str {
        &self.clif
    }

    /// VCode listing of every kernel (empty unless `keep_text`).
    pub(crate) fn asm_text(&self) -> &str {
        &self.asm
    }

    /// The directory holding the library (removed on drop).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for SeamLibrary {
    fn drop(&mut self) {
        // SAFETY: no call is in flight (`run_args` borrows `self`) and the entry pointer
        // dies with `self`.
        unsafe { libc::dlclose(self.handle) };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
