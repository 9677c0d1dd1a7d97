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
//! - with gradients (`GradSpec`), words `nbuf + 2 .. nbuf + 2 + gnbuf` are the buffer
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

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, BlockArg, InstBuilder, MemFlagsData, Signature, StackSlotData, StackSlotKind,
    Type, UserFuncName, Value,
};
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module as ClifModule};

use super::super::codegen::DefinedKernel;
use super::super::emit::KernelShape;
use crate::error::{Error, Result};

/// Size of the static error-message buffer.
const ERR_LEN: usize = 512;

/// Everything the driver needs to know about the program.
pub(super) struct DriverSpec<'a> {
    /// Symbol prefix (a C identifier).
    pub name: &'a str,
    /// Number of loop-IR buffers.
    pub nbuf: usize,
    /// Writable buffers: (buffer index, length in floats).
    pub writable: Vec<(usize, usize)>,
    /// Parameter buffers: (buffer index, byte offset in the weights block).
    pub params: Vec<(usize, usize)>,
    /// Constant buffers: (buffer index, contents).
    pub consts: Vec<(usize, &'a [f32])>,
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
    /// Number of loop-IR buffers (phase 1 and phase 2 share them).
    pub nbuf: usize,
    /// Writable buffers: (buffer index, length in floats).
    pub writable: Vec<(usize, usize)>,
    /// Parameter buffers: (buffer index, byte offset in the weights block).
    pub params: Vec<(usize, usize)>,
    /// Constant buffers: (buffer index, contents).
    pub consts: Vec<(usize, &'a [f32])>,
    /// The input buffer (bound to `x`).
    pub input_buf: usize,
    /// The cotangent of the output (bound to `dy` in phase 2).
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

fn module_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("aot driver: cranelift {what}: {e}"))
}

/// The libc functions the driver imports.
struct Imports {
    calloc: FuncId,
    malloc: FuncId,
    free: FuncId,
    memcpy: FuncId,
    memset: FuncId,
    memcmp: FuncId,
    fopen: FuncId,
    fread: FuncId,
    fclose: FuncId,
    strncat: FuncId,
}

/// Error messages (static strings in the object).
#[derive(Clone, Copy)]
enum Msg {
    Threads,
    Oom,
    NoWeights,
    Open,
    Magic,
    Version,
    Mismatch,
    Truncated,
    Trailing,
    Null,
    GradNull,
    GradBatch,
}

const MESSAGES: [(Msg, &str); 12] = [
    (Msg::Threads, "threads must be at least 1"),
    (Msg::Oom, "out of memory"),
    (
        Msg::NoWeights,
        "this library has no embedded weights: pass the path of its weights file",
    ),
    (Msg::Open, "cannot open the weights file"),
    (Msg::Magic, "not an lcjit weights file (bad magic)"),
    (Msg::Version, "unsupported weights file version"),
    (
        Msg::Mismatch,
        "parameter count or sizes do not match this model",
    ),
    (Msg::Truncated, "truncated weights file"),
    (Msg::Trailing, "unexpected data after the parameters"),
    (Msg::Null, "predict: null handle, input or output pointer"),
    (
        Msg::GradNull,
        "gradients: null handle, x, dy, dx or dparams pointer",
    ),
    (
        Msg::GradBatch,
        "gradients: batch must equal the compiled batch (NAME_batch())",
    ),
];

/// The body builder of one driver function (module, builder, the function's arguments).
type Body<'a, M> = dyn Fn(&mut M, &mut FunctionBuilder, &[Value]) -> Result<()> + 'a;

/// Symbols shared by the driver's functions.
struct Env {
    ptr: Type,
    imp: Imports,
    err: DataId,
    sep: DataId,
    rb: DataId,
    hdr: DataId,
    weights: Option<DataId>,
    consts: Option<DataId>,
    msgs: Vec<DataId>,
}

fn sig<M: ClifModule>(m: &M, params: &[Type], ret: Option<Type>) -> Signature {
    let mut s = m.make_signature();
    s.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    s.returns.extend(ret.map(AbiParam::new));
    s
}

fn data<M: ClifModule>(
    m: &mut M,
    name: &str,
    writable: bool,
    contents: Option<Vec<u8>>,
    zeros: usize,
    align: u64,
) -> Result<DataId> {
    let id = m
        .declare_data(name, Linkage::Local, writable, false)
        .map_err(|e| module_err("declare data", e))?;
    let mut d = DataDescription::new();
    match contents {
        Some(c) => d.define(c.into_boxed_slice()),
        None => d.define_zeroinit(zeros),
    }
    d.set_align(align);
    m.define_data(id, &d)
        .map_err(|e| module_err("define data", e))?;
    Ok(id)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Emits the driver's functions into `m`, calling `kernels` in order.
pub(super) fn emit_driver<M: ClifModule>(
    m: &mut M,
    spec: &DriverSpec,
    kernels: &[DefinedKernel],
) -> Result<()> {
    let ptr = m.target_config().pointer_type();
    if ptr != types::I64 {
        return Err(Error::Usage {
            detail: "aot: only 64-bit targets are supported".into(),
        });
    }
    let p = ptr;
    let i32t = types::I32;
    let import = |m: &mut M, name: &str, params: &[Type], ret: Option<Type>| {
        let s = sig(m, params, ret);
        m.declare_function(name, Linkage::Import, &s)
            .map_err(|e| module_err("import", e))
    };
    let imp = Imports {
        calloc: import(m, "calloc", &[p, p], Some(p))?,
        malloc: import(m, "malloc", &[p], Some(p))?,
        free: import(m, "free", &[p], None)?,
        memcpy: import(m, "memcpy", &[p, p, p], Some(p))?,
        memset: import(m, "memset", &[p, i32t, p], Some(p))?,
        memcmp: import(m, "memcmp", &[p, p, p], Some(i32t))?,
        fopen: import(m, "fopen", &[p, p], Some(p))?,
        fread: import(m, "fread", &[p, p, p, p], Some(p))?,
        fclose: import(m, "fclose", &[p], Some(i32t))?,
        strncat: import(m, "strncat", &[p, p, p], Some(p))?,
    };
    let n = spec.name;
    let err = data(m, &format!("{n}__err"), true, None, ERR_LEN, 16)?;
    let sep = data(m, &format!("{n}__sep"), false, Some(cstr(": ")), 0, 1)?;
    let rb = data(m, &format!("{n}__rb"), false, Some(cstr("rb")), 0, 1)?;
    let hdr = data(
        m,
        &format!("{n}__header"),
        false,
        Some(spec.weights_header.clone()),
        0,
        16,
    )?;
    let weights = match &spec.embedded {
        Some(w) => {
            let mut w = w.clone();
            w.resize(w.len().max(16), 0);
            Some(data(m, &format!("{n}__weights"), false, Some(w), 0, 64)?)
        }
        None => None,
    };
    let mut const_bytes = Vec::new();
    let mut const_offs = Vec::new();
    let mut grad_const_offs = Vec::new();
    let grad_consts = spec.grad.as_ref().map_or(&[][..], |g| &g.consts[..]);
    for (list, offs) in [
        (&spec.consts[..], &mut const_offs),
        (grad_consts, &mut grad_const_offs),
    ] {
        for (buf, vals) in list {
            while const_bytes.len() % 64 != 0 {
                const_bytes.push(0);
            }
            offs.push((*buf, const_bytes.len()));
            for v in vals.iter() {
                const_bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let consts = if const_bytes.is_empty() {
        None
    } else {
        Some(data(
            m,
            &format!("{n}__consts"),
            false,
            Some(const_bytes),
            0,
            64,
        )?)
    };
    let mut msgs = Vec::with_capacity(MESSAGES.len());
    for (i, (_, text)) in MESSAGES.iter().enumerate() {
        let text = text.replace("NAME_", &format!("{n}_"));
        let text = text.replace(
            "compiled batch (",
            &format!("compiled batch {} (", spec.batch),
        );
        msgs.push(data(
            m,
            &format!("{n}__msg{i}"),
            false,
            Some(cstr(&text)),
            0,
            1,
        )?);
    }
    let env = Env {
        ptr,
        imp,
        err,
        sep,
        rb,
        hdr,
        weights,
        consts,
        msgs,
    };
    let mut fbc = FunctionBuilderContext::new();
    let mut ctx = m.make_context();

    // Layout of the arena: writable buffers, then the padded input.
    let align64 = |x: usize| x.div_ceil(64) * 64;
    let mut arena = 0usize;
    let mut writable = Vec::new();
    for &(buf, len) in &spec.writable {
        writable.push((buf, arena));
        arena = align64(arena + 4 * len);
    }
    let pad_off = arena;
    // The handle's words (see the module docs).
    let nbuf = spec.nbuf;
    let gbase = nbuf + 2;
    let gnbuf = spec.grad.as_ref().map_or(0, |g| g.nbuf);
    let mut free_words = vec![nbuf, nbuf + 1];
    if spec.grad.is_some() {
        free_words.push(gbase + gnbuf);
    }
    let words = gbase + spec.grad.as_ref().map_or(0, |g| g.nbuf + 1);
    // Layout of the gradient arena: writable buffers, then the zero cotangent.
    let mut grad_writable = Vec::new();
    let mut garena = 0usize;
    if let Some(g) = &spec.grad {
        for &(buf, len) in &g.writable {
            grad_writable.push((buf, garena));
            garena = align64(garena + 4 * len);
        }
    }
    let zero_off = garena;
    let garena_bytes = align64(zero_off + 4 * spec.batch * spec.out_len).max(64);
    let layout = Layout {
        words,
        free_words: &free_words,
        gbase,
        garena_bytes,
        grad_writable: &grad_writable,
        const_offs: &const_offs,
        grad_const_offs: &grad_const_offs,
        zero_off,
    };

    let mut define = |m: &mut M,
                      name: String,
                      params: &[Type],
                      ret: Option<Type>,
                      body: &Body<'_, M>|
     -> Result<()> {
        m.clear_context(&mut ctx);
        ctx.func.signature = sig(m, params, ret);
        let id = m
            .declare_function(&name, Linkage::Export, &ctx.func.signature)
            .map_err(|e| module_err("declare", e))?;
        ctx.func.name = UserFuncName::user(1, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut fbc);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let args = b.block_params(entry).to_vec();
            body(m, &mut b, &args)?;
            b.seal_all_blocks();
            b.finalize(m.target_config());
        }
        m.define_function(id, &mut ctx)
            .map_err(|e| module_err(&format!("define {name}"), e))?;
        Ok(())
    };

    // size_t NAME_input_len(void), NAME_output_len(void), NAME_batch(void)
    for (suffix, value) in [
        ("input_len", spec.in_len),
        ("output_len", spec.out_len),
        ("batch", spec.batch),
    ] {
        define(m, format!("{n}_{suffix}"), &[], Some(p), &|_, b, _| {
            let v = b.ins().iconst(p, value as i64);
            b.ins().return_(&[v]);
            Ok(())
        })?;
    }
    // int NAME_input_shape(size_t *dims), NAME_output_shape(size_t *dims)
    for (suffix, shape) in [
        ("input_shape", spec.in_shape),
        ("output_shape", spec.out_shape),
    ] {
        define(m, format!("{n}_{suffix}"), &[p], Some(i32t), &|_, b, a| {
            let (fill, done) = (b.create_block(), b.create_block());
            b.ins().brif(a[0], fill, &[], done, &[]);
            b.switch_to_block(fill);
            for (k, &d) in shape.iter().enumerate() {
                let v = b.ins().iconst(p, d as i64);
                b.ins()
                    .store(MemFlagsData::trusted(), v, a[0], (8 * k) as i32);
            }
            b.ins().jump(done, &[]);
            b.switch_to_block(done);
            let r = b.ins().iconst(i32t, shape.len() as i64);
            b.ins().return_(&[r]);
            Ok(())
        })?;
    }
    // const char *NAME_last_error(NAME_t *)
    define(m, format!("{n}_last_error"), &[p], Some(p), &|m, b, _| {
        let e = gv(m, b, &env, env.err);
        b.ins().return_(&[e]);
        Ok(())
    })?;
    // void NAME_destroy(NAME_t *)
    define(m, format!("{n}_destroy"), &[p], None, &|m, b, a| {
        let (free, done) = (b.create_block(), b.create_block());
        b.ins().brif(a[0], free, &[], done, &[]);
        b.switch_to_block(free);
        free_handle(m, b, &env, a[0], &free_words);
        b.ins().jump(done, &[]);
        b.switch_to_block(done);
        b.ins().return_(&[]);
        Ok(())
    })?;
    // NAME_t *NAME_create(const char *weights_path_or_NULL, int threads)
    define(m, format!("{n}_create"), &[p, i32t], Some(p), &|m, b, a| {
        emit_create(m, b, &env, spec, a, &writable, &layout)
    })?;
    // int NAME_predict(NAME_t *, const float *x, size_t batch, float *y)
    define(
        m,
        format!("{n}_predict"),
        &[p, p, p, p],
        Some(i32t),
        &|m, b, a| emit_predict(m, b, &env, spec, a, kernels, pad_off),
    )?;
    // size_t NAME_param_count(void)
    let count = spec.param_lens.len();
    define(m, format!("{n}_param_count"), &[], Some(p), &|_, b, _| {
        let v = b.ins().iconst(p, count as i64);
        b.ins().return_(&[v]);
        Ok(())
    })?;
    // size_t NAME_param_len(size_t i): 0 when i is out of range.
    let mut len_table = Vec::with_capacity(8 * count.max(1));
    for &l in spec.param_lens {
        len_table.extend_from_slice(&(l as u64).to_le_bytes());
    }
    len_table.resize(len_table.len().max(8), 0);
    let lens_id = data(m, &format!("{n}__param_lens"), false, Some(len_table), 0, 8)?;
    // const char *NAME_param_name(size_t i): NULL when i is out of range.
    let mut names = Vec::new();
    let mut name_offs = Vec::with_capacity(8 * count.max(1));
    for s in spec.param_names {
        name_offs.extend_from_slice(&(names.len() as u64).to_le_bytes());
        names.extend_from_slice(&cstr(&s.replace('\0', "")));
    }
    names.resize(names.len().max(1), 0);
    name_offs.resize(name_offs.len().max(8), 0);
    let names_id = data(m, &format!("{n}__param_names"), false, Some(names), 0, 1)?;
    let name_offs_id = data(
        m,
        &format!("{n}__param_name_offs"),
        false,
        Some(name_offs),
        0,
        8,
    )?;
    for (suffix, table, add_base) in [
        ("param_len", lens_id, None),
        ("param_name", name_offs_id, Some(names_id)),
    ] {
        define(m, format!("{n}_{suffix}"), &[p], Some(p), &|m, b, a| {
            let (inside, outside) = (b.create_block(), b.create_block());
            let ok = b
                .ins()
                .icmp_imm_s(IntCC::UnsignedLessThan, a[0], count as i64);
            b.ins().brif(ok, inside, &[], outside, &[]);
            b.switch_to_block(outside);
            let z = b.ins().iconst(p, 0);
            b.ins().return_(&[z]);
            b.switch_to_block(inside);
            let t = gv(m, b, &env, table);
            let o = b.ins().imul_imm_s(a[0], 8);
            let at = b.ins().iadd(t, o);
            let v = b.ins().load(p, MemFlagsData::trusted(), at, 0);
            let v = match add_base {
                Some(base) => {
                    let base = gv(m, b, &env, base);
                    b.ins().iadd(base, v)
                }
                None => v,
            };
            b.ins().return_(&[v]);
            Ok(())
        })?;
    }
    // int NAME_gradients(NAME_t *, const float *x, const float *dy, size_t batch,
    //                    float *dx, float *dparams)
    if let Some(g) = &spec.grad {
        define(
            m,
            format!("{n}_gradients"),
            &[p, p, p, p, p, p],
            Some(i32t),
            &|m, b, a| emit_gradients(m, b, &env, spec, g, a, &layout),
        )?;
    }
    Ok(())
}

/// Where the handle keeps what (see the module docs).
struct Layout<'a> {
    /// Pointer words of a handle.
    words: usize,
    /// The words `destroy` frees.
    free_words: &'a [usize],
    /// First word of the gradient program's buffer table (its arena follows it).
    gbase: usize,
    /// Bytes of the gradient arena.
    garena_bytes: usize,
    /// Gradient program's writable buffers: (buffer, offset in its arena).
    grad_writable: &'a [(usize, usize)],
    /// Forward program's constant buffers: (buffer, offset in the constants block).
    const_offs: &'a [(usize, usize)],
    /// Gradient program's constant buffers: (buffer, offset in the constants block).
    grad_const_offs: &'a [(usize, usize)],
    /// Offset of the zero cotangent in the gradient arena.
    zero_off: usize,
}

/// The address of data object `id`.
fn gv<M: ClifModule>(m: &mut M, b: &mut FunctionBuilder, env: &Env, id: DataId) -> Value {
    let g = m.declare_data_in_func(id, b.func);
    b.ins().symbol_value(env.ptr, g)
}

/// Calls `id` and returns its first result, if any.
fn call<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    id: FuncId,
    args: &[Value],
) -> Option<Value> {
    let f = m.declare_func_in_func(id, b.func);
    let c = b.ins().call(f, args);
    b.inst_results(c).first().copied()
}

fn res(v: Option<Value>) -> Result<Value> {
    v.ok_or_else(|| Error::internal("aot driver: call without result"))
}

/// Frees a non-NULL handle's arena, loaded weights and the handle itself.
fn free_handle<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    h: Value,
    words: &[usize],
) {
    let fl = MemFlagsData::trusted();
    for &w in words {
        let q = b.ins().load(env.ptr, fl, h, (8 * w) as i32);
        call(m, b, env.imp.free, &[q]);
    }
    call(m, b, env.imp.free, &[h]);
}

/// Writes `msg` (optionally prefixed by `path: `) into the error buffer.
fn set_error<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    path: Option<Value>,
    msg: Value,
) {
    let e = gv(m, b, env, env.err);
    let zero = b.ins().iconst(types::I8, 0);
    b.ins().store(MemFlagsData::trusted(), zero, e, 0);
    if let Some(path) = path {
        let n = b.ins().iconst(env.ptr, 400);
        call(m, b, env.imp.strncat, &[e, path, n]);
        let s = gv(m, b, env, env.sep);
        let n = b.ins().iconst(env.ptr, 2);
        call(m, b, env.imp.strncat, &[e, s, n]);
    }
    let n = b.ins().iconst(env.ptr, 100);
    call(m, b, env.imp.strncat, &[e, msg, n]);
}

/// `create`: see the module docs. Failures jump to one block that records the reason,
/// closes the file and frees whatever was allocated.
fn emit_create<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    spec: &DriverSpec,
    a: &[Value],
    writable: &[(usize, usize)],
    layout: &Layout,
) -> Result<()> {
    let p = env.ptr;
    let fl = MemFlagsData::trusted();
    let (path, threads) = (a[0], a[1]);
    let nbuf = spec.nbuf;
    let vh = b.declare_var(p);
    let vf = b.declare_var(p);
    let zero = b.ins().iconst(p, 0);
    b.def_var(vh, zero);
    b.def_var(vf, zero);
    // fail(msg, with_path)
    let fail = b.create_block();
    b.append_block_param(fail, p);
    b.append_block_param(fail, types::I32);
    // Branches to `fail` with `msg` unless `ok` is non-zero; continues in a new block.
    let check = |m: &mut M, b: &mut FunctionBuilder, ok: Value, msg: Msg, with_path: bool| {
        let next = b.create_block();
        let mv = gv(m, b, env, env.msgs[msg as usize]);
        let wp = b.ins().iconst(types::I32, i64::from(with_path));
        b.ins().brif(
            ok,
            next,
            &[],
            fail,
            &[BlockArg::Value(mv), BlockArg::Value(wp)],
        );
        b.switch_to_block(next);
    };

    let ok = b
        .ins()
        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, threads, 1);
    check(m, b, ok, Msg::Threads, false);
    let words = b.ins().iconst(p, layout.words as i64);
    let eight = b.ins().iconst(p, 8);
    let h = res(call(m, b, env.imp.calloc, &[words, eight]))?;
    b.def_var(vh, h);
    check(m, b, h, Msg::Oom, false);
    let arena_bytes = spec_arena(spec);
    let ab = b.ins().iconst(p, arena_bytes as i64);
    let one = b.ins().iconst(p, 1);
    let arena = res(call(m, b, env.imp.calloc, &[ab, one]))?;
    b.ins().store(fl, arena, h, (8 * nbuf) as i32);
    check(m, b, arena, Msg::Oom, false);
    for &(buf, off) in writable {
        let q = b.ins().iadd_imm_s(arena, off as i64);
        b.ins().store(fl, q, h, (8 * buf) as i32);
    }
    if let Some(g) = &spec.grad {
        let ab = b.ins().iconst(p, layout.garena_bytes as i64);
        let one = b.ins().iconst(p, 1);
        let garena = res(call(m, b, env.imp.calloc, &[ab, one]))?;
        b.ins()
            .store(fl, garena, h, (8 * (layout.gbase + g.nbuf)) as i32);
        check(m, b, garena, Msg::Oom, false);
        for &(buf, off) in layout.grad_writable {
            let q = b.ins().iadd_imm_s(garena, off as i64);
            b.ins().store(fl, q, h, (8 * (layout.gbase + buf)) as i32);
        }
    }
    let bind = b.create_block();
    b.append_block_param(bind, p);
    let (file, embedded) = (b.create_block(), b.create_block());
    b.ins().brif(path, file, &[], embedded, &[]);

    b.switch_to_block(embedded);
    match env.weights {
        Some(w) => {
            let base = gv(m, b, env, w);
            b.ins().jump(bind, &[BlockArg::Value(base)]);
        }
        None => {
            let mv = gv(m, b, env, env.msgs[Msg::NoWeights as usize]);
            let wp = b.ins().iconst(types::I32, 0);
            b.ins()
                .jump(fail, &[BlockArg::Value(mv), BlockArg::Value(wp)]);
        }
    }

    b.switch_to_block(file);
    let hdr_len = spec.weights_header.len();
    let slot = b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        u32::try_from(hdr_len.max(16))
            .map_err(|_| Error::internal("aot driver: weights header too large"))?,
        4,
    ));
    let rb = gv(m, b, env, env.rb);
    let f = res(call(m, b, env.imp.fopen, &[path, rb]))?;
    b.def_var(vf, f);
    check(m, b, f, Msg::Open, true);
    let buf = b.ins().stack_addr(p, slot, 0);
    let expect = gv(m, b, env, env.hdr);
    // fread(buf + at, 1, len, f) == len, else fail(msg)
    let read =
        |m: &mut M, b: &mut FunctionBuilder, dst: Value, len: usize, msg: Msg| -> Result<()> {
            let one = b.ins().iconst(p, 1);
            let n = b.ins().iconst(p, len as i64);
            let f = b.use_var(vf);
            let got = res(call(m, b, env.imp.fread, &[dst, one, n, f]))?;
            let ok = b.ins().icmp_imm_s(IntCC::Equal, got, len as i64);
            check(m, b, ok, msg, true);
            Ok(())
        };
    // memcmp(buf + at, expect + at, len) == 0, else fail(msg)
    let same =
        |m: &mut M, b: &mut FunctionBuilder, at: usize, len: usize, msg: Msg| -> Result<()> {
            let x = b.ins().iadd_imm_s(buf, at as i64);
            let y = b.ins().iadd_imm_s(expect, at as i64);
            let n = b.ins().iconst(p, len as i64);
            let c = res(call(m, b, env.imp.memcmp, &[x, y, n]))?;
            let ok = b.ins().icmp_imm_s(IntCC::Equal, c, 0);
            check(m, b, ok, msg, true);
            Ok(())
        };
    read(m, b, buf, 16, Msg::Magic)?;
    same(m, b, 0, 8, Msg::Magic)?;
    same(m, b, 8, 4, Msg::Version)?;
    same(m, b, 12, 4, Msg::Mismatch)?;
    if hdr_len > 16 {
        let dst = b.ins().iadd_imm_s(buf, 16);
        read(m, b, dst, hdr_len - 16, Msg::Truncated)?;
        same(m, b, 16, hdr_len - 16, Msg::Mismatch)?;
    }
    let wb = b.ins().iconst(p, spec.weight_bytes.max(1) as i64);
    let block = res(call(m, b, env.imp.malloc, &[wb]))?;
    b.ins().store(fl, block, h, (8 * (nbuf + 1)) as i32);
    check(m, b, block, Msg::Oom, false);
    if spec.weight_bytes > 0 {
        read(m, b, block, spec.weight_bytes, Msg::Truncated)?;
    }
    {
        // Nothing may follow the last float.
        let one = b.ins().iconst(p, 1);
        let f = b.use_var(vf);
        let got = res(call(m, b, env.imp.fread, &[buf, one, one, f]))?;
        let ok = b.ins().icmp_imm_s(IntCC::Equal, got, 0);
        check(m, b, ok, Msg::Trailing, true);
    }
    let f = b.use_var(vf);
    call(m, b, env.imp.fclose, &[f]);
    b.ins().jump(bind, &[BlockArg::Value(block)]);

    b.switch_to_block(bind);
    let base = b.block_params(bind)[0];
    for &(buf, off) in &spec.params {
        let q = b.ins().iadd_imm_s(base, off as i64);
        b.ins().store(fl, q, h, (8 * buf) as i32);
    }
    if let Some(g) = &spec.grad {
        for &(buf, off) in &g.params {
            let q = b.ins().iadd_imm_s(base, off as i64);
            b.ins().store(fl, q, h, (8 * (layout.gbase + buf)) as i32);
        }
    }
    if let Some(c) = env.consts {
        let cb = gv(m, b, env, c);
        for &(buf, off) in layout.const_offs {
            let q = b.ins().iadd_imm_s(cb, off as i64);
            b.ins().store(fl, q, h, (8 * buf) as i32);
        }
        for &(buf, off) in layout.grad_const_offs {
            let q = b.ins().iadd_imm_s(cb, off as i64);
            b.ins().store(fl, q, h, (8 * (layout.gbase + buf)) as i32);
        }
    }
    b.ins().return_(&[h]);

    // The failure path.
    b.switch_to_block(fail);
    let msg = b.block_params(fail)[0];
    let with_path = b.block_params(fail)[1];
    let (pfx, plain, join) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().brif(with_path, pfx, &[], plain, &[]);
    b.switch_to_block(pfx);
    set_error(m, b, env, Some(path), msg);
    b.ins().jump(join, &[]);
    b.switch_to_block(plain);
    set_error(m, b, env, None, msg);
    b.ins().jump(join, &[]);
    b.switch_to_block(join);
    let (close, after_close) = (b.create_block(), b.create_block());
    let f = b.use_var(vf);
    b.ins().brif(f, close, &[], after_close, &[]);
    b.switch_to_block(close);
    call(m, b, env.imp.fclose, &[f]);
    b.ins().jump(after_close, &[]);
    b.switch_to_block(after_close);
    let (free, done) = (b.create_block(), b.create_block());
    let h = b.use_var(vh);
    b.ins().brif(h, free, &[], done, &[]);
    b.switch_to_block(free);
    free_handle(m, b, env, h, layout.free_words);
    b.ins().jump(done, &[]);
    b.switch_to_block(done);
    let null = b.ins().iconst(p, 0);
    b.ins().return_(&[null]);
    Ok(())
}

/// Bytes of the arena (see the module docs), as `emit_driver` lays it out.
fn spec_arena(spec: &DriverSpec) -> usize {
    let align64 = |x: usize| x.div_ceil(64) * 64;
    let mut arena = 0usize;
    for &(_, len) in &spec.writable {
        arena = align64(arena + 4 * len);
    }
    align64(arena + 4 * spec.batch * spec.in_len).max(64)
}

/// `predict`: chunks of the compiled batch; see the module docs.
fn emit_predict<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    spec: &DriverSpec,
    a: &[Value],
    kernels: &[DefinedKernel],
    pad_off: usize,
) -> Result<()> {
    let p = env.ptr;
    let fl = MemFlagsData::trusted();
    let (h, x, n, y) = (a[0], a[1], a[2], a[3]);
    let (bad, start) = (b.create_block(), b.create_block());
    // bad = h == 0 || (n != 0 && (x == 0 || y == 0))
    let h0 = b.ins().icmp_imm_s(IntCC::Equal, h, 0);
    let x0 = b.ins().icmp_imm_s(IntCC::Equal, x, 0);
    let y0 = b.ins().icmp_imm_s(IntCC::Equal, y, 0);
    let nz = b.ins().icmp_imm_s(IntCC::NotEqual, n, 0);
    let xy0 = b.ins().bor(x0, y0);
    let data0 = b.ins().band(nz, xy0);
    let is_bad = b.ins().bor(h0, data0);
    b.ins().brif(is_bad, bad, &[], start, &[]);

    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msgs[Msg::Null as usize]);
    set_error(m, b, env, None, mv);
    let r = b.ins().iconst(types::I32, -1);
    b.ins().return_(&[r]);

    b.switch_to_block(start);
    let header = b.create_block();
    b.append_block_param(header, p);
    let zero = b.ins().iconst(p, 0);
    b.ins().jump(header, &[BlockArg::Value(zero)]);

    b.switch_to_block(header);
    let done = b.block_params(header)[0];
    let (finish, body) = (b.create_block(), b.create_block());
    let all = b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, done, n);
    b.ins().brif(all, finish, &[], body, &[]);
    b.switch_to_block(finish);
    let r = b.ins().iconst(types::I32, 0);
    b.ins().return_(&[r]);

    b.switch_to_block(body);
    let rem = b.ins().isub(n, done);
    let in_row = (4 * spec.in_len) as i64;
    let out_row = (4 * spec.out_len) as i64;
    let xo = b.ins().imul_imm_s(done, in_row);
    let xin = b.ins().iadd(x, xo);
    let yo = b.ins().imul_imm_s(done, out_row);
    let yout = b.ins().iadd(y, yo);
    let (full, partial, run) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(run, p);
    let is_full = b
        .ins()
        .icmp_imm_s(IntCC::UnsignedGreaterThanOrEqual, rem, spec.batch as i64);
    b.ins().brif(is_full, full, &[], partial, &[]);

    b.switch_to_block(full);
    b.ins().store(fl, xin, h, (8 * spec.input_buf) as i32);
    let rows = b.ins().iconst(p, spec.batch as i64);
    b.ins().jump(run, &[BlockArg::Value(rows)]);

    b.switch_to_block(partial);
    let arena = b.ins().load(p, fl, h, (8 * spec.nbuf) as i32);
    let pad = b.ins().iadd_imm_s(arena, pad_off as i64);
    let z = b.ins().iconst(types::I32, 0);
    let all_bytes = b.ins().iconst(p, in_row * spec.batch as i64);
    call(m, b, env.imp.memset, &[pad, z, all_bytes]);
    let bytes = b.ins().imul_imm_s(rem, in_row);
    call(m, b, env.imp.memcpy, &[pad, xin, bytes]);
    b.ins().store(fl, pad, h, (8 * spec.input_buf) as i32);
    b.ins().jump(run, &[BlockArg::Value(rem)]);

    b.switch_to_block(run);
    let rows = b.block_params(run)[0];
    for k in kernels {
        let end = match k.shape {
            KernelShape::Serial => 1,
            KernelShape::Parallel(e) => e as i64, // ≤ i64::MAX (classify)
        };
        let s = b.ins().iconst(types::I64, 0);
        let e = b.ins().iconst(types::I64, end);
        call(m, b, k.id, &[h, s, e]);
    }
    let outp = b.ins().load(p, fl, h, (8 * spec.output_buf) as i32);
    let bytes = b.ins().imul_imm_s(rows, out_row);
    call(m, b, env.imp.memcpy, &[yout, outp, bytes]);
    let next = b.ins().iadd(done, rows);
    b.ins().jump(header, &[BlockArg::Value(next)]);
    Ok(())
}

/// `gradients`: one run of the gradient program at the compiled batch; see the module
/// docs.
fn emit_gradients<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    spec: &DriverSpec,
    g: &GradSpec,
    a: &[Value],
    layout: &Layout,
) -> Result<()> {
    let p = env.ptr;
    let fl = MemFlagsData::trusted();
    let (h, x, dy, n, dx, dp) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let fail = b.create_block();
    b.append_block_param(fail, p);
    // Null pointers.
    let mut any0 = b.ins().icmp_imm_s(IntCC::Equal, h, 0);
    for v in [x, dy, dx, dp] {
        let z = b.ins().icmp_imm_s(IntCC::Equal, v, 0);
        any0 = b.ins().bor(any0, z);
    }
    let (bad, next) = (b.create_block(), b.create_block());
    b.ins().brif(any0, bad, &[], next, &[]);
    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msgs[Msg::GradNull as usize]);
    b.ins().jump(fail, &[BlockArg::Value(mv)]);
    b.switch_to_block(next);
    // The batch.
    let (bad, run) = (b.create_block(), b.create_block());
    let wrong = b.ins().icmp_imm_s(IntCC::NotEqual, n, spec.batch as i64);
    b.ins().brif(wrong, bad, &[], run, &[]);
    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msgs[Msg::GradBatch as usize]);
    b.ins().jump(fail, &[BlockArg::Value(mv)]);

    b.switch_to_block(fail);
    let msg = b.block_params(fail)[0];
    set_error(m, b, env, None, msg);
    let r = b.ins().iconst(types::I32, -1);
    b.ins().return_(&[r]);

    b.switch_to_block(run);
    let gword = |buf: usize| (8 * (layout.gbase + buf)) as i32;
    let garena = b.ins().load(p, fl, h, gword(g.nbuf));
    let zeros = b.ins().iadd_imm_s(garena, layout.zero_off as i64);
    b.ins().store(fl, x, h, gword(g.input_buf));
    b.ins().store(fl, zeros, h, gword(g.cotangent_buf));
    let table = b.ins().iadd_imm_s(h, (8 * layout.gbase) as i64);
    let run_all = |m: &mut M, b: &mut FunctionBuilder, kernels: &[DefinedKernel]| {
        for k in kernels {
            let end = match k.shape {
                KernelShape::Serial => 1,
                KernelShape::Parallel(e) => e as i64, // ≤ i64::MAX (classify)
            };
            let s = b.ins().iconst(types::I64, 0);
            let e = b.ins().iconst(types::I64, end);
            call(m, b, k.id, &[table, s, e]);
        }
    };
    run_all(m, b, g.forward);
    b.ins().store(fl, dy, h, gword(g.cotangent_buf));
    run_all(m, b, g.backward);
    let src = b.ins().load(p, fl, h, gword(g.dinput_buf));
    let bytes = b.ins().iconst(p, (4 * spec.batch * spec.in_len) as i64);
    call(m, b, env.imp.memcpy, &[dx, src, bytes]);
    let mut off = 0usize;
    for (&buf, &len) in g.dparam_bufs.iter().zip(spec.param_lens) {
        if len > 0 {
            let src = b.ins().load(p, fl, h, gword(buf));
            let dst = b.ins().iadd_imm_s(dp, (4 * off) as i64);
            let bytes = b.ins().iconst(p, (4 * len) as i64);
            call(m, b, env.imp.memcpy, &[dst, src, bytes]);
        }
        off += len;
    }
    let r = b.ins().iconst(types::I32, 0);
    b.ins().return_(&[r]);
    Ok(())
}
