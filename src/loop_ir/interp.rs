//! The loop-IR interpreter: the living definition of what a [`Module`] means.
//!
//! It runs kernels in order, loops in program order (schedules are ignored: they never
//! change the meaning), and checks every access, so it needs no `unsafe` and reports an
//! out-of-bounds access as an internal error instead of trusting the verifier.
//! Transcendentals use [`super::math`], the same sequences the JIT emits.

use super::{math, BinOp, BufArg, CmpOp, Dtype, Expr, Kernel, Module, Stmt, UnOp};
use crate::error::{Error, Result};

/// A buffer table the interpreter can run over: owned vectors (tests, tools) or the
/// [`BufArg`] table every executor takes.
pub trait Buffers {
    /// Element `idx` of buffer `i` as f32 (widened where the buffer is stored in 16
    /// bits): `None` when there is no buffer `i`, `Some(Err(len))` when `idx` is out of
    /// its bounds.
    fn read(&self, i: usize, idx: i64) -> Option<std::result::Result<f32, usize>>;
    /// Number of elements of buffer `i`.
    fn len_of(&self, i: usize) -> Option<usize>;
    /// How buffer `i` is stored (f32 unless bound as 16-bit data).
    fn dtype_of(&self, i: usize) -> Option<Dtype> {
        self.len_of(i).map(|_| Dtype::F32)
    }
    /// Buffer `i` for writing (`None` when absent or bound read-only).
    fn buf_mut(&mut self, i: usize) -> Option<&mut [f32]>;
    /// Number of buffers.
    fn count(&self) -> usize;
}

/// `s[idx]`, or `Err(len)`.
fn element<T: Copy>(s: &[T], idx: i64) -> std::result::Result<T, usize> {
    usize::try_from(idx)
        .ok()
        .and_then(|i| s.get(i).copied())
        .ok_or(s.len())
}

impl Buffers for [Vec<f32>] {
    fn read(&self, i: usize, idx: i64) -> Option<std::result::Result<f32, usize>> {
        self.get(i).map(|b| element(b, idx))
    }
    fn len_of(&self, i: usize) -> Option<usize> {
        self.get(i).map(Vec::len)
    }
    fn buf_mut(&mut self, i: usize) -> Option<&mut [f32]> {
        self.get_mut(i).map(Vec::as_mut_slice)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Buffers for Vec<Vec<f32>> {
    fn read(&self, i: usize, idx: i64) -> Option<std::result::Result<f32, usize>> {
        self.as_slice().read(i, idx)
    }
    fn len_of(&self, i: usize) -> Option<usize> {
        self.as_slice().len_of(i)
    }
    fn buf_mut(&mut self, i: usize) -> Option<&mut [f32]> {
        self.as_mut_slice().buf_mut(i)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl Buffers for [BufArg<'_>] {
    fn read(&self, i: usize, idx: i64) -> Option<std::result::Result<f32, usize>> {
        Some(match self.get(i)? {
            BufArg::Read(r) => element(r, idx),
            BufArg::Write(w) => element(w, idx),
            BufArg::ReadHalf(h, dtype) => element(h, idx).map(|x| dtype.widen(x)),
        })
    }
    fn len_of(&self, i: usize) -> Option<usize> {
        self.get(i).map(BufArg::len)
    }
    fn dtype_of(&self, i: usize) -> Option<Dtype> {
        self.get(i).map(|b| match b {
            BufArg::ReadHalf(_, d) => *d,
            BufArg::Read(_) | BufArg::Write(_) => Dtype::F32,
        })
    }
    fn buf_mut(&mut self, i: usize) -> Option<&mut [f32]> {
        self.get_mut(i).and_then(BufArg::as_mut_slice)
    }
    fn count(&self) -> usize {
        self.len()
    }
}

struct Frame<'a> {
    kernel: &'a Kernel,
    vars: Vec<i64>,
    locals: Vec<Vec<f32>>,
}

fn oob(kernel: &Kernel, what: &str, idx: i64, len: usize) -> Error {
    Error::internal(format!(
        "kernel {}: {what} index {idx} out of bounds (len {len})",
        kernel.name
    ))
}

/// Evaluates one expression.
fn eval<B: Buffers + ?Sized>(e: &Expr, f: &Frame, bufs: &B) -> Result<f32> {
    Ok(match e {
        Expr::Const(c) => *c,
        Expr::Load { buf, index } => {
            let i = index.eval(&f.vars);
            bufs.read(*buf as usize, i)
                .ok_or_else(|| {
                    Error::internal(format!("kernel {}: no buffer {buf}", f.kernel.name))
                })?
                .map_err(|len| oob(f.kernel, "load", i, len))?
        }
        Expr::LoadLocal { local, index } => {
            let i = index.eval(&f.vars);
            let l = f.locals.get(*local as usize).ok_or_else(|| {
                Error::internal(format!("kernel {}: no local {local}", f.kernel.name))
            })?;
            *usize::try_from(i)
                .ok()
                .and_then(|i| l.get(i))
                .ok_or_else(|| oob(f.kernel, "local", i, l.len()))?
        }
        Expr::Unary(op, a) => {
            let a = eval(a, f, bufs)?;
            match op {
                UnOp::Neg => -a,
                UnOp::Abs => a.abs(),
                UnOp::Sqrt => a.sqrt(),
                UnOp::Relu => relu(a),
                UnOp::Exp => math::exp(a),
                UnOp::Log => math::ln(a),
                UnOp::Tanh => math::tanh(a),
                UnOp::Sigmoid => math::sigmoid(a),
                UnOp::Erf => math::erf(a),
                UnOp::RoundF16 => math::round_f16(a),
                UnOp::RoundBf16 => math::round_bf16(a),
            }
        }
        Expr::Binary(op, a, b) => {
            let (a, b) = (eval(a, f, bufs)?, eval(b, f, bufs)?);
            match op {
                BinOp::Add => a + b,
                BinOp::Sub => a - b,
                BinOp::Mul => a * b,
                BinOp::Div => a / b,
                BinOp::Max => max(a, b),
                BinOp::Min => min(a, b),
            }
        }
        Expr::Fma(a, b, c) => eval(a, f, bufs)?.mul_add(eval(b, f, bufs)?, eval(c, f, bufs)?),
        Expr::Select {
            cmp,
            a,
            b,
            t,
            f: fe,
        } => {
            let (a, b) = (eval(a, f, bufs)?, eval(b, f, bufs)?);
            let take = match cmp {
                CmpOp::Lt => a < b,
                CmpOp::Le => a <= b,
                CmpOp::Gt => a > b,
                CmpOp::Ge => a >= b,
            };
            if take {
                eval(t, f, bufs)?
            } else {
                eval(fe, f, bufs)?
            }
        }
    })
}

/// `max(x, 0)` propagating NaN: `x < 0 ? 0 : x` (NaN and `-0` pass through). The JIT
/// emits it as one `maxps 0, x`.
pub fn relu(x: f32) -> f32 {
    if x < 0.0 {
        0.0
    } else {
        x
    }
}

/// `max(a, b)` propagating NaN: `b` when `b` is NaN, else `a < b ? b : a` (which keeps a
/// NaN `a`; ties give `a`). The JIT emits exactly this (see `backend::cranelift::math`).
pub fn max(a: f32, b: f32) -> f32 {
    if b.is_nan() || a < b {
        b
    } else {
        a
    }
}

/// `min(a, b)` propagating NaN: `b` when `b` is NaN, else `b < a ? b : a`.
pub fn min(a: f32, b: f32) -> f32 {
    if b.is_nan() || b < a {
        b
    } else {
        a
    }
}

fn exec<B: Buffers + ?Sized>(stmts: &[Stmt], f: &mut Frame, bufs: &mut B) -> Result<()> {
    for s in stmts {
        match s {
            Stmt::For {
                var, extent, body, ..
            } => {
                for i in 0..*extent {
                    let slot = f.vars.get_mut(*var as usize).ok_or_else(|| {
                        Error::internal(format!("kernel {}: no var {var}", f.kernel.name))
                    })?;
                    *slot = i as i64;
                    exec(body, f, bufs)?;
                }
            }
            Stmt::If { conds, body } => {
                if conds.iter().all(|(a, lo, hi)| {
                    let v = a.eval(&f.vars);
                    *lo <= v && v < *hi
                }) {
                    exec(body, f, bufs)?;
                }
            }
            Stmt::Store { buf, index, value } => {
                let v = eval(value, f, bufs)?;
                let i = index.eval(&f.vars);
                let b = bufs.buf_mut(*buf as usize).ok_or_else(|| {
                    Error::internal(format!(
                        "kernel {}: no writable buffer {buf}",
                        f.kernel.name
                    ))
                })?;
                let len = b.len();
                *usize::try_from(i)
                    .ok()
                    .and_then(|i| b.get_mut(i))
                    .ok_or_else(|| oob(f.kernel, "store", i, len))? = v;
            }
            Stmt::SetLocal {
                local,
                index,
                value,
            } => {
                let v = eval(value, f, bufs)?;
                let i = index.eval(&f.vars);
                let kernel = f.kernel;
                let l = f.locals.get_mut(*local as usize).ok_or_else(|| {
                    Error::internal(format!("kernel {}: no local {local}", kernel.name))
                })?;
                let len = l.len();
                *usize::try_from(i)
                    .ok()
                    .and_then(|i| l.get_mut(i))
                    .ok_or_else(|| oob(kernel, "local", i, len))? = v;
            }
        }
    }
    Ok(())
}

/// Runs one kernel over `bufs` (indexed by [`super::BufId`]).
pub fn run_kernel<B: Buffers + ?Sized>(kernel: &Kernel, bufs: &mut B) -> Result<()> {
    let mut frame = Frame {
        kernel,
        vars: vec![0; kernel.vars as usize],
        locals: kernel.locals.iter().map(|l| vec![0.0; l.len]).collect(),
    };
    exec(&kernel.body, &mut frame, bufs)
}

/// Runs every kernel of `module` in order. `bufs[i]` must have `module.buffers[i].len`
/// elements; read-only bindings ([`BufArg::Read`]) are read in place, never copied.
pub fn run<B: Buffers + ?Sized>(module: &Module, bufs: &mut B) -> Result<()> {
    if bufs.count() != module.buffers.len()
        || module
            .buffers
            .iter()
            .enumerate()
            .any(|(i, d)| bufs.len_of(i) != Some(d.len) || bufs.dtype_of(i) != Some(d.dtype))
    {
        return Err(Error::internal(
            "interpreter: buffers do not match the module",
        ));
    }
    for k in &module.kernels {
        run_kernel(k, bufs)?;
    }
    Ok(())
}
