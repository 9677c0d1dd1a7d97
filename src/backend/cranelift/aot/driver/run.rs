//! The driver functions that run kernels: `NAME_predict`, `NAME_gradients`, and
//! [`emit_run_kernels`], the one place generated code calls kernels in order (also used
//! by the test executor's entry, `aot::seam`).
//!
//! Partition: with a thread count, a parallel kernel whose work reaches
//! [`PARALLEL_MIN_WORK`] runs as `n = min(threads, extent)` contiguous chunks
//! `[t·E/n, (t+1)·E/n)`, the JIT's partition (`pool::chunk`), one after another on the
//! calling thread; the libraries' own functions pass no thread count and run each kernel
//! once over its whole extent. Either way every iteration computes what it computes on
//! the JIT, so results are bitwise the JIT's at any thread count.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, MemFlagsData, Value};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::Module as ClifModule;

use super::super::super::codegen::DefinedKernel;
use super::super::super::emit::KernelShape;
use super::super::super::runtime::PARALLEL_MIN_WORK;
use super::env::{call, gv, set_error, Env, Msg};
use super::{DriverSpec, GradSpec, Layout};
use crate::error::{Error, Result};

/// Largest thread count a generated entry partitions for; more are treated as this many
/// (only [`MAX_SPLIT_EXTENT`]-bounded products `t · extent` are computed).
pub(in super::super) const MAX_SPLIT_THREADS: u64 = 1 << 16;
/// Largest extent of a kernel split by a thread count (so `t · extent` fits 64 bits).
const MAX_SPLIT_EXTENT: u64 = 1 << 47;

/// Calls `kernels` in order over the buffer table at `table`. With `threads` (an `i64`
/// in `1..=MAX_SPLIT_THREADS`), parallel kernels with enough work run in the JIT's
/// chunks (see the module docs); without, each runs once over its whole extent.
pub(in super::super) fn emit_run_kernels<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    table: Value,
    kernels: &[DefinedKernel],
    threads: Option<Value>,
) -> Result<()> {
    for k in kernels {
        let extent = match k.shape {
            KernelShape::Serial => 1,
            KernelShape::Parallel(e) => e,
        };
        if let (Some(t), KernelShape::Parallel(_)) = (threads, k.shape) {
            if k.work >= PARALLEL_MIN_WORK {
                emit_split(m, b, table, k, extent, t)?;
                continue;
            }
        }
        let s = b.ins().iconst(types::I64, 0);
        let e = b.ins().iconst(types::I64, extent as i64); // ≤ i64::MAX (classify)
        call(m, b, k.id, &[table, s, e]);
    }
    Ok(())
}

/// One parallel kernel in `min(threads, extent)` chunks (see [`emit_run_kernels`]).
fn emit_split<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    table: Value,
    k: &DefinedKernel,
    extent: u64,
    threads: Value,
) -> Result<()> {
    if extent > MAX_SPLIT_EXTENT {
        return Err(Error::internal(format!(
            "aot: kernel {}: extent {extent} too large to partition",
            k.name
        )));
    }
    let i64t = types::I64;
    let ev = b.ins().iconst(i64t, extent as i64);
    let n = b.ins().umin(threads, ev);
    let (header, body, done) = (b.create_block(), b.create_block(), b.create_block());
    b.append_block_param(header, i64t);
    let zero = b.ins().iconst(i64t, 0);
    b.ins().jump(header, &[BlockArg::Value(zero)]);
    b.switch_to_block(header);
    let t = b.block_params(header)[0];
    let end = b.ins().icmp(IntCC::UnsignedGreaterThanOrEqual, t, n);
    b.ins().brif(end, done, &[], body, &[]);
    b.switch_to_block(body);
    let t1 = b.ins().iadd_imm_s(t, 1);
    let lo = b.ins().imul(t, ev);
    let lo = b.ins().udiv(lo, n);
    let hi = b.ins().imul(t1, ev);
    let hi = b.ins().udiv(hi, n);
    call(m, b, k.id, &[table, lo, hi]);
    b.ins().jump(header, &[BlockArg::Value(t1)]);
    b.switch_to_block(done);
    Ok(())
}

/// `predict`'s argument check: `h == 0 || (n != 0 && (x == 0 || y == 0))` records the
/// error and returns -1; continues in a new block otherwise.
fn check_predict_args<M: ClifModule>(m: &mut M, b: &mut FunctionBuilder, env: &Env, a: &[Value]) {
    let (h, x, n, y) = (a[0], a[1], a[2], a[3]);
    let (bad, start) = (b.create_block(), b.create_block());
    let h0 = b.ins().icmp_imm_s(IntCC::Equal, h, 0);
    let x0 = b.ins().icmp_imm_s(IntCC::Equal, x, 0);
    let y0 = b.ins().icmp_imm_s(IntCC::Equal, y, 0);
    let nz = b.ins().icmp_imm_s(IntCC::NotEqual, n, 0);
    let xy0 = b.ins().bor(x0, y0);
    let data0 = b.ins().band(nz, xy0);
    let is_bad = b.ins().bor(h0, data0);
    b.ins().brif(is_bad, bad, &[], start, &[]);
    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msg(Msg::Null));
    set_error(m, b, env, None, mv);
    let r = b.ins().iconst(types::I32, -1);
    b.ins().return_(&[r]);
    b.switch_to_block(start);
}

/// `predict`: chunks of the compiled batch; see the module docs of [`super`].
pub(super) fn emit_predict<M: ClifModule>(
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
    check_predict_args(m, b, env, a);
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
    let arena = b.ins().load(p, fl, h, (8 * spec.table.nbuf) as i32);
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
    emit_run_kernels(m, b, h, kernels, None)?;
    let outp = b.ins().load(p, fl, h, (8 * spec.output_buf) as i32);
    let bytes = b.ins().imul_imm_s(rows, out_row);
    call(m, b, env.imp.memcpy, &[yout, outp, bytes]);
    let next = b.ins().iadd(done, rows);
    b.ins().jump(header, &[BlockArg::Value(next)]);
    Ok(())
}

/// `gradients`' argument checks (null pointers, the batch): a failure records its
/// reason and returns -1; continues in a new block otherwise.
fn check_gradient_args<M: ClifModule>(
    m: &mut M,
    b: &mut FunctionBuilder,
    env: &Env,
    batch: usize,
    a: &[Value],
) {
    let (h, x, dy, n, dx, dp) = (a[0], a[1], a[2], a[3], a[4], a[5]);
    let fail = b.create_block();
    b.append_block_param(fail, env.ptr);
    let mut any0 = b.ins().icmp_imm_s(IntCC::Equal, h, 0);
    for v in [x, dy, dx, dp] {
        let z = b.ins().icmp_imm_s(IntCC::Equal, v, 0);
        any0 = b.ins().bor(any0, z);
    }
    let (bad, next) = (b.create_block(), b.create_block());
    b.ins().brif(any0, bad, &[], next, &[]);
    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msg(Msg::GradNull));
    b.ins().jump(fail, &[BlockArg::Value(mv)]);
    b.switch_to_block(next);
    let (bad, run) = (b.create_block(), b.create_block());
    let wrong = b.ins().icmp_imm_s(IntCC::NotEqual, n, batch as i64);
    b.ins().brif(wrong, bad, &[], run, &[]);
    b.switch_to_block(bad);
    let mv = gv(m, b, env, env.msg(Msg::GradBatch));
    b.ins().jump(fail, &[BlockArg::Value(mv)]);

    b.switch_to_block(fail);
    let msg = b.block_params(fail)[0];
    set_error(m, b, env, None, msg);
    let r = b.ins().iconst(types::I32, -1);
    b.ins().return_(&[r]);
    b.switch_to_block(run);
}

/// `gradients`: one run of the gradient program at the compiled batch; see the module
/// docs of [`super`].
pub(super) fn emit_gradients<M: ClifModule>(
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
    let (h, x, dy, dx, dp) = (a[0], a[1], a[2], a[4], a[5]);
    check_gradient_args(m, b, env, spec.batch, a);
    let gword = |buf: usize| (8 * (layout.gbase + buf)) as i32;
    let garena = b.ins().load(p, fl, h, gword(g.table.nbuf));
    let zeros = b.ins().iadd_imm_s(garena, layout.zero_off as i64);
    b.ins().store(fl, x, h, gword(g.input_buf));
    b.ins().store(fl, zeros, h, gword(g.cotangent_buf));
    let table = b.ins().iadd_imm_s(h, (8 * layout.gbase) as i64);
    emit_run_kernels(m, b, table, g.forward, None)?;
    b.ins().store(fl, dy, h, gword(g.cotangent_buf));
    emit_run_kernels(m, b, table, g.backward, None)?;
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
