//! `NAME_create`: allocates a handle and its arenas, binds the buffer tables to the
//! arenas, the weights (embedded, or read and validated from a file) and the constants.
//! Failures jump to one block that records the reason, closes the file and frees
//! whatever was allocated (see the module docs of [`super`]).

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, Block, BlockArg, InstBuilder, MemFlagsData, StackSlotData, StackSlotKind, Value,
};
use cranelift_frontend::{FunctionBuilder, Variable};
use cranelift_module::Module as ClifModule;

use super::env::{call, free_handle, gv, res, set_error, Env, Msg};
use super::{DriverSpec, Layout};
use crate::error::{Error, Result};

/// The state of a `create` being emitted: the failure block and the variables it reads.
struct Create<'a> {
    env: &'a Env,
    /// `fail(msg, with_path)`.
    fail: Block,
    /// The handle (0 until allocated).
    vh: Variable,
    /// The open weights file (0 when none).
    vf: Variable,
    /// The weights path argument.
    path: Value,
}

impl Create<'_> {
    /// Branches to `fail` with `msg` unless `ok` is non-zero; continues in a new block.
    fn check<M: ClifModule>(
        &self,
        m: &mut M,
        b: &mut FunctionBuilder,
        ok: Value,
        msg: Msg,
        with_path: bool,
    ) {
        let next = b.create_block();
        let mv = gv(m, b, self.env, self.env.msg(msg));
        let wp = b.ins().iconst(types::I32, i64::from(with_path));
        let args = [BlockArg::Value(mv), BlockArg::Value(wp)];
        b.ins().brif(ok, next, &[], self.fail, &args);
        b.switch_to_block(next);
    }

    /// `calloc(bytes, 1)` stored at handle word `word` and checked; returns the block.
    fn arena<M: ClifModule>(
        &self,
        m: &mut M,
        b: &mut FunctionBuilder,
        h: Value,
        bytes: usize,
        word: usize,
    ) -> Result<Value> {
        let p = self.env.ptr;
        let ab = b.ins().iconst(p, bytes as i64);
        let one = b.ins().iconst(p, 1);
        let arena = res(call(m, b, self.env.imp.calloc, &[ab, one]))?;
        b.ins()
            .store(MemFlagsData::trusted(), arena, h, (8 * word) as i32);
        self.check(m, b, arena, Msg::Oom, false);
        Ok(arena)
    }
}

/// Stores `base + off` into handle word `word0 + buf` for every `(buf, off)`.
fn bind_words(
    b: &mut FunctionBuilder,
    h: Value,
    base: Value,
    word0: usize,
    list: &[(usize, usize)],
) {
    for &(buf, off) in list {
        let q = b.ins().iadd_imm_s(base, off as i64);
        b.ins()
            .store(MemFlagsData::trusted(), q, h, (8 * (word0 + buf)) as i32);
    }
}

/// `create`; see the module docs of [`super`].
pub(super) fn emit_create<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    spec: &DriverSpec,
    a: &[Value],
    layout: &Layout,
) -> Result<()> {
    let p = env.ptr;
    let (path, threads) = (a[0], a[1]);
    let (vh, vf) = (b.declare_var(p), b.declare_var(p));
    let zero = b.ins().iconst(p, 0);
    b.def_var(vh, zero);
    b.def_var(vf, zero);
    let fail = b.create_block();
    b.append_block_param(fail, p);
    b.append_block_param(fail, types::I32);
    let c = Create {
        env,
        fail,
        vh,
        vf,
        path,
    };

    let ok = b
        .ins()
        .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, threads, 1);
    c.check(m, b, ok, Msg::Threads, false);
    let words = b.ins().iconst(p, layout.words as i64);
    let eight = b.ins().iconst(p, 8);
    let h = res(call(m, b, env.imp.calloc, &[words, eight]))?;
    b.def_var(vh, h);
    c.check(m, b, h, Msg::Oom, false);
    let arena = c.arena(m, b, h, layout.arena_bytes, spec.table.nbuf)?;
    bind_words(b, h, arena, 0, &layout.writable);
    if let Some(g) = &spec.grad {
        let garena = c.arena(m, b, h, layout.garena_bytes, layout.gbase + g.table.nbuf)?;
        bind_words(b, h, garena, layout.gbase, &layout.grad_writable);
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
            let mv = gv(m, b, env, env.msg(Msg::NoWeights));
            let wp = b.ins().iconst(types::I32, 0);
            let args = [BlockArg::Value(mv), BlockArg::Value(wp)];
            b.ins().jump(fail, &args);
        }
    }

    b.switch_to_block(file);
    let block = emit_read_weights(m, b, &c, spec, h)?;
    b.ins().jump(bind, &[BlockArg::Value(block)]);

    b.switch_to_block(bind);
    let base = b.block_params(bind)[0];
    bind_words(b, h, base, 0, &spec.table.params);
    if let Some(g) = &spec.grad {
        bind_words(b, h, base, layout.gbase, &g.table.params);
    }
    if let Some(cid) = env.consts {
        let cb = gv(m, b, env, cid);
        bind_words(b, h, cb, 0, &env.const_offs);
        bind_words(b, h, cb, layout.gbase, &env.grad_const_offs);
    }
    b.ins().return_(&[h]);
    emit_create_fail(m, b, &c, layout);
    Ok(())
}

/// Opens, validates and reads the weights file at `c.path` into a `malloc`'d block
/// (stored in handle word `nbuf + 1`), which it returns; every failure goes to `c.fail`.
fn emit_read_weights<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    c: &Create,
    spec: &DriverSpec,
    h: Value,
) -> Result<Value> {
    let (env, p) = (c.env, c.env.ptr);
    let hdr_len = spec.weights_header.len();
    let slot = b.create_sized_stack_slot(StackSlotData::new(
        StackSlotKind::ExplicitSlot,
        u32::try_from(hdr_len.max(16))
            .map_err(|_| Error::internal("aot driver: weights header too large"))?,
        4,
    ));
    let rb = gv(m, b, env, env.rb);
    let f = res(call(m, b, env.imp.fopen, &[c.path, rb]))?;
    b.def_var(c.vf, f);
    c.check(m, b, f, Msg::Open, true);
    let buf = b.ins().stack_addr(p, slot, 0);
    let expect = gv(m, b, env, env.hdr);
    // fread(dst, 1, len, f) == len, else fail(msg)
    let read =
        |m: &mut M, b: &mut FunctionBuilder, dst: Value, len: usize, msg: Msg| -> Result<()> {
            let one = b.ins().iconst(p, 1);
            let n = b.ins().iconst(p, len as i64);
            let f = b.use_var(c.vf);
            let got = res(call(m, b, env.imp.fread, &[dst, one, n, f]))?;
            let ok = b.ins().icmp_imm_s(IntCC::Equal, got, len as i64);
            c.check(m, b, ok, msg, true);
            Ok(())
        };
    // memcmp(buf + at, expect + at, len) == 0, else fail(msg)
    let same =
        |m: &mut M, b: &mut FunctionBuilder, at: usize, len: usize, msg: Msg| -> Result<()> {
            let x = b.ins().iadd_imm_s(buf, at as i64);
            let y = b.ins().iadd_imm_s(expect, at as i64);
            let n = b.ins().iconst(p, len as i64);
            let r = res(call(m, b, env.imp.memcmp, &[x, y, n]))?;
            let ok = b.ins().icmp_imm_s(IntCC::Equal, r, 0);
            c.check(m, b, ok, msg, true);
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
    let word = (8 * (spec.table.nbuf + 1)) as i32;
    b.ins().store(MemFlagsData::trusted(), block, h, word);
    c.check(m, b, block, Msg::Oom, false);
    if spec.weight_bytes > 0 {
        read(m, b, block, spec.weight_bytes, Msg::Truncated)?;
    }
    // Nothing may follow the last float.
    let one = b.ins().iconst(p, 1);
    let f = b.use_var(c.vf);
    let got = res(call(m, b, env.imp.fread, &[buf, one, one, f]))?;
    let ok = b.ins().icmp_imm_s(IntCC::Equal, got, 0);
    c.check(m, b, ok, Msg::Trailing, true);
    let f = b.use_var(c.vf);
    call(m, b, env.imp.fclose, &[f]);
    Ok(block)
}

/// The failure block: records the reason (prefixed by the path when asked), closes the
/// file, frees the handle and returns NULL.
fn emit_create_fail<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    c: &Create,
    layout: &Layout,
) {
    let env = c.env;
    b.switch_to_block(c.fail);
    let msg = b.block_params(c.fail)[0];
    let with_path = b.block_params(c.fail)[1];
    let (pfx, plain, join) = (b.create_block(), b.create_block(), b.create_block());
    b.ins().brif(with_path, pfx, &[], plain, &[]);
    b.switch_to_block(pfx);
    set_error(m, b, env, Some(c.path), msg);
    b.ins().jump(join, &[]);
    b.switch_to_block(plain);
    set_error(m, b, env, None, msg);
    b.ins().jump(join, &[]);
    b.switch_to_block(join);
    let (close, after_close) = (b.create_block(), b.create_block());
    let f = b.use_var(c.vf);
    b.ins().brif(f, close, &[], after_close, &[]);
    b.switch_to_block(close);
    call(m, b, env.imp.fclose, &[f]);
    b.ins().jump(after_close, &[]);
    b.switch_to_block(after_close);
    let (free, done) = (b.create_block(), b.create_block());
    let h = b.use_var(c.vh);
    b.ins().brif(h, free, &[], done, &[]);
    b.switch_to_block(free);
    free_handle(m, b, env, h, &layout.free_words);
    b.ins().jump(done, &[]);
    b.switch_to_block(done);
    let null = b.ins().iconst(env.ptr, 0);
    b.ins().return_(&[null]);
}
