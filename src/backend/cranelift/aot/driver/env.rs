//! What every generated driver function shares: the libc imports, the static error
//! messages and error buffer, the data objects, and small CLIF helpers (data addresses,
//! calls, the error writer, freeing a handle), plus [`Definer`], which declares and
//! defines one exported function.
//!
//! Invariant: every data object and import is declared once per object ([`declare_env`]);
//! functions refer to them through [`Env`].

use cranelift_codegen::ir::{
    types, AbiParam, InstBuilder, MemFlagsData, Signature, Type, UserFuncName, Value,
};
use cranelift_codegen::Context;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};
use cranelift_module::{DataDescription, DataId, FuncId, Linkage, Module as ClifModule};

use super::DriverSpec;
use crate::error::{Error, Result};

/// Size of the static error-message buffer.
const ERR_LEN: usize = 512;

pub(super) fn module_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("aot driver: cranelift {what}: {e}"))
}

/// The libc functions the driver imports.
pub(super) struct Imports {
    pub calloc: FuncId,
    pub malloc: FuncId,
    pub free: FuncId,
    pub memcpy: FuncId,
    pub memset: FuncId,
    pub memcmp: FuncId,
    pub fopen: FuncId,
    pub fread: FuncId,
    pub fclose: FuncId,
    pub strncat: FuncId,
}

/// Error messages (static strings in the object).
#[derive(Clone, Copy)]
pub(super) enum Msg {
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

/// Symbols shared by the driver's functions.
pub(super) struct Env {
    pub ptr: Type,
    pub imp: Imports,
    pub err: DataId,
    pub sep: DataId,
    pub rb: DataId,
    pub hdr: DataId,
    pub weights: Option<DataId>,
    /// The constants block and each constant buffer's offset in it: the forward
    /// program's, then the gradient program's.
    pub consts: Option<DataId>,
    pub const_offs: Vec<(usize, usize)>,
    pub grad_const_offs: Vec<(usize, usize)>,
    msgs: Vec<DataId>,
}

impl Env {
    /// The data object of `msg`.
    pub fn msg(&self, msg: Msg) -> DataId {
        self.msgs[msg as usize]
    }
}

/// A signature of the target's default calling convention.
pub(in super::super) fn sig<M: ClifModule>(m: &M, params: &[Type], ret: Option<Type>) -> Signature {
    let mut s = m.make_signature();
    s.params.extend(params.iter().map(|&t| AbiParam::new(t)));
    s.returns.extend(ret.map(AbiParam::new));
    s
}

/// Declares and defines a local data object: `contents`, or `zeros` zero bytes.
pub(super) fn data<M: ClifModule>(
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

pub(super) fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn declare_imports<M: ClifModule>(m: &mut M, p: Type) -> Result<Imports> {
    let i32t = types::I32;
    let import = |m: &mut M, name: &str, params: &[Type], ret: Option<Type>| {
        let s = sig(m, params, ret);
        m.declare_function(name, Linkage::Import, &s)
            .map_err(|e| module_err("import", e))
    };
    Ok(Imports {
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
    })
}

/// The constants of both programs in one block, each at a 64-byte aligned offset:
/// (block, forward offsets, gradient offsets).
#[allow(clippy::type_complexity)]
fn constants_block(spec: &DriverSpec) -> (Vec<u8>, Vec<(usize, usize)>, Vec<(usize, usize)>) {
    let mut bytes = Vec::new();
    let (mut fwd, mut grad) = (Vec::new(), Vec::new());
    let grad_consts = spec.grad.as_ref().map_or(&[][..], |g| &g.table.consts[..]);
    for (list, offs) in [(&spec.table.consts[..], &mut fwd), (grad_consts, &mut grad)] {
        for (buf, vals) in list {
            while bytes.len() % 64 != 0 {
                bytes.push(0);
            }
            offs.push((*buf, bytes.len()));
            for v in vals.iter() {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    (bytes, fwd, grad)
}

/// Declares the imports and data objects of the driver of `spec`.
pub(super) fn declare_env<M: ClifModule>(m: &mut M, spec: &DriverSpec) -> Result<Env> {
    let ptr = m.target_config().pointer_type();
    let imp = declare_imports(m, ptr)?;
    let n = spec.name;
    let err = data(m, &format!("{n}__err"), true, None, ERR_LEN, 16)?;
    let sep = data(m, &format!("{n}__sep"), false, Some(cstr(": ")), 0, 1)?;
    let rb = data(m, &format!("{n}__rb"), false, Some(cstr("rb")), 0, 1)?;
    let header = Some(spec.weights_header.clone());
    let hdr = data(m, &format!("{n}__header"), false, header, 0, 16)?;
    let weights = match &spec.embedded {
        Some(w) => {
            let mut w = w.clone();
            w.resize(w.len().max(16), 0);
            Some(data(m, &format!("{n}__weights"), false, Some(w), 0, 64)?)
        }
        None => None,
    };
    let (const_bytes, const_offs, grad_const_offs) = constants_block(spec);
    let consts = if const_bytes.is_empty() {
        None
    } else {
        let name = format!("{n}__consts");
        Some(data(m, &name, false, Some(const_bytes), 0, 64)?)
    };
    let mut msgs = Vec::with_capacity(MESSAGES.len());
    for (i, (_, text)) in MESSAGES.iter().enumerate() {
        let text = text.replace("NAME_", &format!("{n}_"));
        let batch = format!("compiled batch {} (", spec.batch);
        let text = text.replace("compiled batch (", &batch);
        let name = format!("{n}__msg{i}");
        msgs.push(data(m, &name, false, Some(cstr(&text)), 0, 1)?);
    }
    Ok(Env {
        ptr,
        imp,
        err,
        sep,
        rb,
        hdr,
        weights,
        consts,
        const_offs,
        grad_const_offs,
        msgs,
    })
}

/// The body builder of one function (module, builder, the function's arguments).
pub(in super::super) type Body<'a, M> =
    dyn Fn(&mut M, &mut FunctionBuilder, &[Value]) -> Result<()> + 'a;

/// Declares and defines exported functions, reusing one context.
pub(in super::super) struct Definer {
    ctx: Context,
    fbc: FunctionBuilderContext,
}

impl Definer {
    pub fn new<M: ClifModule>(m: &M) -> Definer {
        Definer {
            ctx: m.make_context(),
            fbc: FunctionBuilderContext::new(),
        }
    }

    /// Defines the exported function `name(params) -> ret` with `body`.
    pub fn define<M: ClifModule>(
        &mut self,
        m: &mut M,
        name: &str,
        params: &[Type],
        ret: Option<Type>,
        body: &Body<'_, M>,
    ) -> Result<()> {
        let ctx = &mut self.ctx;
        m.clear_context(ctx);
        ctx.func.signature = sig(m, params, ret);
        let id = m
            .declare_function(name, Linkage::Export, &ctx.func.signature)
            .map_err(|e| module_err("declare", e))?;
        ctx.func.name = UserFuncName::user(1, id.as_u32());
        {
            let mut b = FunctionBuilder::new(&mut ctx.func, &mut self.fbc);
            let entry = b.create_block();
            b.append_block_params_for_function_params(entry);
            b.switch_to_block(entry);
            let args = b.block_params(entry).to_vec();
            body(m, &mut b, &args)?;
            b.seal_all_blocks();
            b.finalize(m.target_config());
        }
        m.define_function(id, ctx)
            .map_err(|e| module_err(&format!("define {name}"), e))
    }
}

/// The address of data object `id`.
pub(super) fn gv<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    id: DataId,
) -> Value {
    let g = m.declare_data_in_func(id, b.func);
    b.ins().symbol_value(env.ptr, g)
}

/// Calls `id` and returns its first result, if any.
pub(in super::super) fn call<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    id: FuncId,
    args: &[Value],
) -> Option<Value> {
    let f = m.declare_func_in_func(id, b.func);
    let c = b.ins().call(f, args);
    b.inst_results(c).first().copied()
}

pub(super) fn res(v: Option<Value>) -> Result<Value> {
    v.ok_or_else(|| Error::internal("aot driver: call without result"))
}

/// Frees a non-NULL handle's blocks (the pointer words `words`) and the handle itself.
pub(super) fn free_handle<M: ClifModule>(
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
pub(super) fn set_error<M: ClifModule>(
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
