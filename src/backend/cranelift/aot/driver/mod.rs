//! The generated C-ABI driver of an ahead-of-time library, written in CLIF next to the
//! kernels: `NAME_create`, `NAME_predict`, `NAME_destroy`, `NAME_last_error`, the length,
//! shape, batch and parameter queries, and `NAME_gradients` in a library built with
//! gradients (the header, `header.rs`, documents them for C callers).
//!
//! Memory plan (invariants the functions rely on):
//! - a handle is one `calloc`'d array of `nbuf + 2` pointer words (plus `gnbuf + 1` with
//!   gradients, below): words `0..nbuf` are
//!   the kernel ABI's buffer table (`bufs[i]` = base of loop-IR buffer `i`), word `nbuf`
//!   the arena, word `nbuf + 1` the weights block loaded from a file (NULL when the
//!   embedded weights are used); `destroy` frees exactly these three blocks (four with
//!   gradients);
//! - the arena holds every writable buffer (activations, outputs; each at a 64-byte
//!   aligned offset) and a zero-padded input buffer for a final partial chunk; it is
//!   allocated once in `create` and reused by every `predict` (the JIT's buffer pool does
//!   the same: kernels never rely on buffers being zero);
//! - parameter buffers point into the embedded read-only weights or into the loaded
//!   block, constant buffers into an embedded read-only block; neither is ever written
//!   (the loop-IR verifier rejects stores to read-only buffers);
//! - `predict` binds the input buffer to the caller's rows for each full chunk of the
//!   compiled batch and to the padded copy for the last partial chunk, runs every kernel
//!   once over its whole extent (one thread), and copies only valid output rows out.
//!   Rows are computed independently and the JIT's results do not depend on its thread
//!   count, so every row equals what the JIT computes for it in a batch of the compiled
//!   size, bit for bit — and what lcjit's own `predict` computes, which runs a final
//!   partial batch with a program for its size: every schedule sums each row in the same
//!   order at any batch size (`tests/run_batched.rs`);
//! - with gradients ([`GradSpec`]), words `nbuf + 2 .. nbuf + 2 + gnbuf` are the buffer
//!   table of the gradient program and word `nbuf + 2 + gnbuf` its arena (every writable
//!   buffer of the gradient program, then `batch × out_len` zeros bound to the cotangent
//!   during phase 1, which does not read it — the runtime binds zeros too); `create`
//!   allocates it only for such a library, `destroy` frees it as well. The gradient
//!   program's parameters and constants share the forward program's blocks;
//! - `gradients` binds the input buffer to `x`, runs phase 1's kernels, binds the
//!   cotangent to `dy`, runs phase 2's kernels (each once over its whole extent, one
//!   thread, as the JIT's result does not depend on the thread count) and copies the
//!   input gradient and every parameter gradient (graph order, canonical layout, back to
//!   back) out; it requires the compiled batch, since parameter gradients are sums over
//!   the batch;
//! - failures write a NUL-terminated reason into a static 512-byte buffer returned by
//!   `NAME_last_error` (shared by all handles; not thread-safe).
//!
//! The weights file is validated against the exact header `weights::expected_header`
//! computes for this model (embedded here) and must end right after the last float.

//!
//! Files: `env.rs` (imports, data objects, messages, CLIF helpers, [`env::Definer`]),
//! `create.rs` (`NAME_create`), `run.rs` (`NAME_predict`, `NAME_gradients` and the one
//! kernel sequencer, shared with the test executor `aot::seam`), `queries.rs` (lengths,
//! shapes, parameter queries, `NAME_last_error`, `NAME_destroy`).

mod create;
pub(super) mod env;
mod queries;
pub(super) mod run;

use cranelift_codegen::ir::types;
use cranelift_module::Module as ClifModule;

use super::super::codegen::DefinedKernel;
use crate::error::{Error, Result};

/// How one loop-IR program's buffer table is bound (the forward program's, or the
/// gradient program's): which buffers live in the handle's arena, which point into the
/// weights block and which into the constants block. The input (and cotangent) buffers
/// are bound per call.
pub(super) struct Table<'a> {
    /// Number of loop-IR buffers.
    pub nbuf: usize,
    /// Writable buffers: (buffer index, length in floats).
    pub writable: Vec<(usize, usize)>,
    /// Parameter buffers: (buffer index, byte offset in the weights block).
    pub params: Vec<(usize, usize)>,
    /// Constant buffers: (buffer index, contents).
    pub consts: Vec<(usize, &'a [f32])>,
    /// The buffer of `Cotangent(0)`, if the program has one (gradient programs).
    pub cotangent: Option<usize>,
}

/// Everything the driver needs to know about the program.
pub(super) struct DriverSpec<'a> {
    /// Symbol prefix (a C identifier).
    pub name: &'a str,
    /// The forward program's buffer table.
    pub table: Table<'a>,
    /// The input and output buffers.
    pub input_buf: usize,
    /// See `input_buf`.
    pub output_buf: usize,
    /// Compiled batch.
    pub batch: usize,
    /// Floats per sample of the input / output.
    pub in_len: usize,
    /// See `in_len`.
    pub out_len: usize,
    /// Per-sample shapes.
    pub in_shape: &'a [usize],
    /// See `in_shape`.
    pub out_shape: &'a [usize],
    /// Embedded weights (little-endian f32, canonical order), if any.
    pub embedded: Option<Vec<u8>>,
    /// Total weight bytes.
    pub weight_bytes: usize,
    /// The exact header a weights file must start with.
    pub weights_header: Vec<u8>,
    /// Floats of each parameter (graph order).
    pub param_lens: &'a [usize],
    /// `layer/weight` of each parameter (graph order).
    pub param_names: &'a [String],
    /// The gradient program, when the library exports `NAME_gradients`.
    pub grad: Option<GradSpec<'a>>,
}

/// The inference-mode gradient program of a library built with gradients (its own
/// buffer table; see the module docs).
pub(super) struct GradSpec<'a> {
    /// Its buffer table (phase 1 and phase 2 share it).
    pub table: Table<'a>,
    /// The input buffer (bound to `x`).
    pub input_buf: usize,
    /// The cotangent of the output (zeros in phase 1, bound to `dy` in phase 2).
    pub cotangent_buf: usize,
    /// The gradient of the input.
    pub dinput_buf: usize,
    /// The gradient of each parameter (graph order, canonical layout).
    pub dparam_bufs: Vec<usize>,
    /// Phase 1's kernels, in run order.
    pub forward: &'a [DefinedKernel],
    /// Phase 2's kernels, in run order.
    pub backward: &'a [DefinedKernel],
}

/// Where the handle keeps what (see the module docs).
struct Layout {
    /// Pointer words of a handle.
    words: usize,
    /// The words `destroy` frees.
    free_words: Vec<usize>,
    /// Forward program's writable buffers: (buffer, offset in the arena).
    writable: Vec<(usize, usize)>,
    /// Bytes of the arena.
    arena_bytes: usize,
    /// Offset of the zero-padded input in the arena.
    pad_off: usize,
    /// First word of the gradient program's buffer table (its arena follows it).
    gbase: usize,
    /// Bytes of the gradient arena.
    garena_bytes: usize,
    /// Gradient program's writable buffers: (buffer, offset in its arena).
    grad_writable: Vec<(usize, usize)>,
    /// Offset of the zero cotangent in the gradient arena.
    zero_off: usize,
}

fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// Lays `list`'s buffers out back to back at 64-byte aligned offsets: (buffer, offset)
/// and the end.
fn pack(list: &[(usize, usize)]) -> (Vec<(usize, usize)>, usize) {
    let mut end = 0usize;
    let mut out = Vec::with_capacity(list.len());
    for &(buf, len) in list {
        out.push((buf, end));
        end = align64(end + 4 * len);
    }
    (out, end)
}

impl Layout {
    fn of(spec: &DriverSpec) -> Layout {
        // The arena: writable buffers, then the padded input.
        let (writable, pad_off) = pack(&spec.table.writable);
        let nbuf = spec.table.nbuf;
        let gbase = nbuf + 2;
        let gnbuf = spec.grad.as_ref().map_or(0, |g| g.table.nbuf);
        let mut free_words = vec![nbuf, nbuf + 1];
        if spec.grad.is_some() {
            free_words.push(gbase + gnbuf);
        }
        // The gradient arena: writable buffers, then the zero cotangent.
        let grad_list = spec
            .grad
            .as_ref()
            .map_or(&[][..], |g| &g.table.writable[..]);
        let (grad_writable, zero_off) = pack(grad_list);
        Layout {
            words: gbase + spec.grad.as_ref().map_or(0, |g| g.table.nbuf + 1),
            free_words,
            writable,
            arena_bytes: align64(pad_off + 4 * spec.batch * spec.in_len).max(64),
            pad_off,
            gbase,
            garena_bytes: align64(zero_off + 4 * spec.batch * spec.out_len).max(64),
            grad_writable,
            zero_off,
        }
    }
}

/// Emits the driver's functions into `m`, calling `kernels` in order.
pub(super) fn emit_driver<M: ClifModule>(
    m: &mut M,
    spec: &DriverSpec,
    kernels: &[DefinedKernel],
) -> Result<()> {
    let p = m.target_config().pointer_type();
    if p != types::I64 {
        return Err(Error::Usage {
            detail: "aot: only 64-bit targets are supported".into(),
        });
    }
    let env = env::declare_env(m, spec)?;
    let layout = Layout::of(spec);
    let mut def = env::Definer::new(m);
    let n = spec.name;
    queries::emit_queries(m, &mut def, &env, spec, &layout)?;
    // NAME_t *NAME_create(const char *weights_path_or_NULL, int threads)
    def.define(
        m,
        &format!("{n}_create"),
        &[p, types::I32],
        Some(p),
        &|m, b, a| create::emit_create(m, b, &env, spec, a, &layout),
    )?;
    // int NAME_predict(NAME_t *, const float *x, size_t batch, float *y)
    def.define(
        m,
        &format!("{n}_predict"),
        &[p; 4],
        Some(types::I32),
        &|m, b, a| run::emit_predict(m, b, &env, spec, a, kernels, layout.pad_off),
    )?;
    // int NAME_gradients(NAME_t *, const float *x, const float *dy, size_t batch,
    //                    float *dx, float *dparams)
    if let Some(g) = &spec.grad {
        let name = format!("{n}_gradients");
        def.define(m, &name, &[p; 6], Some(types::I32), &|m, b, a| {
            run::emit_gradients(m, b, &env, spec, g, a, &layout)
        })?;
    }
    Ok(())
}
