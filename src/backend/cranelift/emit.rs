//! One loop-IR kernel → one CLIF function: statements, loops, guards, locals and address
//! arithmetic (expressions are in `expr.rs`).
//!
//! Invariants relied on (all established by `loop_ir::verify`, which runs first):
//! every access is in bounds, so loads and stores carry no checks; every loop has extent
//! ≥ 1, so loops are bottom-tested (a parallel call always has `start < end`, which the
//! runtime guarantees); vector loops are innermost and their variable appears with
//! coefficient 0 or 1; local indices use only vector and fully unrolled variables, so
//! every local element is a compile-time-known Cranelift `Variable`.
//!
//! Loop variables are bound to `dyn + off`: `dyn` an i64 SSA value (a loop's induction
//! variable) or absent, `off` a constant. Fully unrolled loops bind only `off`; partially
//! unrolled loops bind `iv + k` for copy `k`; vector loops bind the index of lane 0.
//! Addresses (`base + 4·Σ coef·dyn`, the constant part folded into the load offset) and
//! loads are cached per structured scope (loop body, guarded body), so unrolled copies
//! share them; a store invalidates the cached loads of its buffer, and entering a loop
//! invalidates those of every buffer the loop stores to.

use std::collections::HashMap;

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, AbiParam, Block, BlockArg, Function, InstBuilder, Type, Value};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::prescan::{local_uses_var, mark_bufs, plan_locals, stored_bufs, LocalStore};
use crate::error::{Error, Result};
use crate::loop_ir::{Affine, BufId, Kernel, LoopKind, Module, Stmt, Var};

/// Vector loops up to this extent (4 `f32x4` steps) are fully unrolled.
const VECTOR_UNROLL_MAX: u64 = 16;

/// How a kernel is called (see the ABI in `mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum KernelShape {
    /// Body is one top-level `Parallel` loop of this extent; called per chunk.
    Parallel(u64),
    /// No parallel loop; called once with `(0, 1)`.
    Serial,
}

/// Classifies `kernel`, rejecting a parallel loop mixed with other top-level statements.
pub(super) fn classify(kernel: &Kernel) -> Result<KernelShape> {
    let is_par = |s: &Stmt| {
        matches!(
            s,
            Stmt::For {
                kind: LoopKind::Parallel,
                ..
            }
        )
    };
    match kernel.body.as_slice() {
        [Stmt::For {
            kind: LoopKind::Parallel,
            extent,
            ..
        }] if i64::try_from(*extent).is_ok() => Ok(KernelShape::Parallel(*extent)),
        [Stmt::For {
            kind: LoopKind::Parallel,
            ..
        }] => Err(Error::internal(format!(
            "kernel {}: parallel extent exceeds i64",
            kernel.name
        ))),
        body if body.iter().any(is_par) => Err(Error::internal(format!(
            "kernel {}: a parallel loop must be the only top-level statement",
            kernel.name
        ))),
        _ => Ok(KernelShape::Serial),
    }
}

/// The value of a loop variable: `dyn + off`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bind {
    pub dyn_: Option<Value>,
    pub off: i64,
}

/// How a load's value is shaped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Shape {
    Scalar,
    Splat,
    Vector,
}

type Terms = Vec<(Value, i64)>;

#[derive(Default)]
struct Scope {
    addrs: HashMap<(BufId, Terms), Value>,
    loads: HashMap<(BufId, Terms, i64, Shape), Value>,
}

/// Builds one kernel's function.
pub(super) struct Emitter<'a, 'f> {
    pub b: FunctionBuilder<'f>,
    pub kernel: &'a Kernel,
    pub use_fma: bool,
    ptr_ty: Type,
    bases: Vec<Option<Value>>,
    binds: Vec<Option<Bind>>,
    /// The enclosing vector loop's variable.
    pub vector_var: Option<Var>,
    pub locals: Vec<LocalStore>,
    scopes: Vec<Scope>,
}

/// The error for a broken emitter invariant in `kernel`.
pub(super) fn ice(kernel: &Kernel, msg: impl std::fmt::Display) -> Error {
    Error::internal(format!("kernel {}: codegen: {msg}", kernel.name))
}

/// Emits `kernel` into `func` (whose signature is set here: `(ptr, i64, i64)`).
pub(super) fn emit_kernel(
    func: &mut Function,
    fbc: &mut FunctionBuilderContext,
    module: &Module,
    kernel: &Kernel,
    shape: KernelShape,
    use_fma: bool,
    cfg: TargetFrontendConfig,
) -> Result<()> {
    let ptr_ty = cfg.pointer_type();
    func.signature.params.clear();
    func.signature.returns.clear();
    func.signature.params.push(AbiParam::new(ptr_ty));
    func.signature.params.push(AbiParam::new(types::I64));
    func.signature.params.push(AbiParam::new(types::I64));
    let mut b = FunctionBuilder::new(func, fbc);
    let entry = b.create_block();
    b.append_block_params_for_function_params(entry);
    b.switch_to_block(entry);
    b.seal_block(entry);
    let params = b.block_params(entry).to_vec();
    let (bufs, start, end) = (params[0], params[1], params[2]);

    // Base pointers of the buffers this kernel touches, loaded once in the entry block.
    let mut used = vec![false; module.buffers.len()];
    mark_bufs(&kernel.body, &mut used);
    let flags = cranelift_codegen::ir::MemFlagsData::trusted().with_readonly();
    let mut bases = vec![None; used.len()];
    for (i, u) in used.iter().enumerate() {
        if *u {
            let off = i32::try_from(i * ptr_ty.bytes() as usize)
                .map_err(|_| ice(kernel, "too many buffers"))?;
            bases[i] = Some(b.ins().load(ptr_ty, flags, bufs, off));
        }
    }

    let locals = plan_locals(&mut b, kernel)?;
    let mut em = Emitter {
        b,
        kernel,
        use_fma,
        ptr_ty,
        bases,
        binds: vec![None; kernel.vars as usize],
        vector_var: None,
        locals,
        scopes: vec![Scope::default()],
    };
    em.zero_locals();
    match shape {
        KernelShape::Parallel(_) => {
            let Some(Stmt::For { var, body, .. }) = kernel.body.first() else {
                return Err(ice(kernel, "parallel kernel without its loop"));
            };
            em.counted_loop(*var, start, LoopEnd::Dyn(end), 1, 1, false, body)?;
        }
        KernelShape::Serial => em.stmts(&kernel.body)?,
    }
    em.b.ins().return_(&[]);
    em.b.finalize(cfg);
    Ok(())
}

/// The end bound of a counted loop.
#[derive(Clone, Copy)]
pub(super) enum LoopEnd {
    Const(i64),
    Dyn(Value),
}

impl<'f> Emitter<'_, 'f> {
    /// Every local starts at zero at kernel entry, as in the interpreter.
    fn zero_locals(&mut self) {
        let zero = self.b.ins().f32const(0.0);
        let mut zv = None;
        for l in 0..self.locals.len() {
            match &self.locals[l] {
                LocalStore::Scalar(vars) => {
                    for &v in vars.clone().iter() {
                        self.b.def_var(v, zero);
                    }
                }
                LocalStore::Groups { vars, .. } => {
                    let z = *zv.get_or_insert_with(|| self.b.ins().splat(types::F32X4, zero));
                    for &v in vars.clone().iter() {
                        self.b.def_var(v, z);
                    }
                }
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt]) -> Result<()> {
        stmts.iter().try_for_each(|s| self.stmt(s))
    }

    fn bind(&mut self, v: Var, bind: Option<Bind>) -> Result<()> {
        let slot = self
            .binds
            .get_mut(v as usize)
            .ok_or_else(|| ice(self.kernel, format!("unknown variable v{v}")))?;
        *slot = bind;
        Ok(())
    }

    fn stmt(&mut self, s: &Stmt) -> Result<()> {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let extent = i64::try_from(*extent).map_err(|_| ice(self.kernel, "huge extent"))?;
                match *kind {
                    LoopKind::Serial => {
                        let z = self.b.ins().iconst(types::I64, 0);
                        self.counted_loop(*var, z, LoopEnd::Const(extent), 1, 1, false, body)?
                    }
                    LoopKind::Parallel => {
                        return Err(ice(self.kernel, "parallel loop below the top level"))
                    }
                    LoopKind::Unroll(n) if i64::from(n) == extent => {
                        for k in 0..extent {
                            self.bind(*var, Some(Bind { dyn_: None, off: k }))?;
                            self.stmts(body)?;
                        }
                        self.bind(*var, None)?;
                    }
                    LoopKind::Unroll(n) => {
                        let z = self.b.ins().iconst(types::I64, 0);
                        let n = i64::from(n.max(1));
                        self.counted_loop(*var, z, LoopEnd::Const(extent), n, n, false, body)?
                    }
                    LoopKind::Vector(4) => {
                        if extent <= VECTOR_UNROLL_MAX as i64 || local_uses_var(body, *var) {
                            self.vector_var = Some(*var);
                            for g in 0..extent / 4 {
                                self.bind(
                                    *var,
                                    Some(Bind {
                                        dyn_: None,
                                        off: 4 * g,
                                    }),
                                )?;
                                self.stmts(body)?;
                            }
                            self.vector_var = None;
                            self.bind(*var, None)?;
                        } else {
                            let z = self.b.ins().iconst(types::I64, 0);
                            self.counted_loop(*var, z, LoopEnd::Const(extent), 4, 1, true, body)?
                        }
                    }
                    LoopKind::Vector(w) => {
                        return Err(ice(self.kernel, format!("vector width {w} (only 4)")))
                    }
                }
            }
            Stmt::If { conds, body } => self.guarded(conds, body)?,
            Stmt::Store { buf, index, value } => {
                let shape = self.store_shape(index)?;
                let v = self.expr(value, shape == Shape::Vector)?;
                let (terms, c) = self.split(index)?;
                let (addr, off) = self.addr(*buf, &terms, c)?;
                let flags = mem_flags(shape);
                self.b.ins().store(flags, v, addr, off);
                for sc in &mut self.scopes {
                    sc.loads.retain(|k, _| k.0 != *buf);
                }
            }
            Stmt::SetLocal {
                local,
                index,
                value,
            } => {
                let shape = self.store_shape(index)?;
                let v = self.expr(value, shape == Shape::Vector)?;
                self.set_local(*local, index, shape, v)?;
            }
        }
        Ok(())
    }

    /// Shape of a store in the current context: vector lanes inside a vector loop.
    fn store_shape(&self, index: &Affine) -> Result<Shape> {
        match self.vector_var {
            None => Ok(Shape::Scalar),
            Some(v) if index.coef(v) == 1 => Ok(Shape::Vector),
            Some(v) => Err(ice(
                self.kernel,
                format!("store in vector loop v{v} without coefficient 1"),
            )),
        }
    }

    /// `for var in start..end step` with `copies` replicated bodies (`var = iv + k`),
    /// bottom-tested: the caller guarantees at least one iteration.
    #[allow(clippy::too_many_arguments)]
    fn counted_loop(
        &mut self,
        var: Var,
        start: Value,
        end: LoopEnd,
        step: i64,
        copies: i64,
        vector: bool,
        body: &[Stmt],
    ) -> Result<()> {
        let mut stored = Vec::new();
        stored_bufs(body, &mut stored);
        for sc in &mut self.scopes {
            sc.loads.retain(|k, _| !stored.contains(&k.0));
        }
        let header = self.b.create_block();
        let iv = self.b.append_block_param(header, types::I64);
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[BlockArg::Value(start)]);
        self.b.switch_to_block(header);
        self.scopes.push(Scope::default());
        if vector {
            self.vector_var = Some(var);
        }
        for k in 0..copies {
            self.bind(
                var,
                Some(Bind {
                    dyn_: Some(iv),
                    off: k,
                }),
            )?;
            self.stmts(body)?;
        }
        if vector {
            self.vector_var = None;
        }
        self.bind(var, None)?;
        self.scopes.pop();
        let next = self.b.ins().iadd_imm_s(iv, step);
        let more = match end {
            LoopEnd::Const(e) => self.b.ins().icmp_imm_s(IntCC::SignedLessThan, next, e),
            LoopEnd::Dyn(e) => self.b.ins().icmp(IntCC::SignedLessThan, next, e),
        };
        self.b
            .ins()
            .brif(more, header, &[BlockArg::Value(next)], exit, &[]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        Ok(())
    }

    /// `if all(lo <= a < hi) { body }`; conditions known at compile time are folded.
    fn guarded(&mut self, conds: &[(Affine, i64, i64)], body: &[Stmt]) -> Result<()> {
        let mut test: Option<Value> = None;
        for (a, lo, hi) in conds {
            let (terms, c) = self.split(a)?;
            if terms.is_empty() {
                if c < *lo || c >= *hi {
                    return Ok(()); // statically false: no code at all
                }
                continue;
            }
            let v = self.int_sum(&terms, 1);
            let v = self.b.ins().iadd_imm_s(v, c);
            let ge = self
                .b
                .ins()
                .icmp_imm_s(IntCC::SignedGreaterThanOrEqual, v, *lo);
            let lt = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, *hi);
            let both = self.b.ins().band(ge, lt);
            test = Some(match test {
                Some(t) => self.b.ins().band(t, both),
                None => both,
            });
        }
        let Some(test) = test else {
            self.scopes.push(Scope::default());
            self.stmts(body)?;
            self.scopes.pop();
            return Ok(());
        };
        let then: Block = self.b.create_block();
        let merge = self.b.create_block();
        self.b.ins().brif(test, then, &[], merge, &[]);
        self.b.seal_block(then);
        self.b.switch_to_block(then);
        self.scopes.push(Scope::default());
        self.stmts(body)?;
        self.scopes.pop();
        self.b.ins().jump(merge, &[]);
        self.b.seal_block(merge);
        self.b.switch_to_block(merge);
        Ok(())
    }

    /// Splits `a` under the current bindings into dynamic terms and a constant.
    pub(super) fn split(&self, a: &Affine) -> Result<(Terms, i64)> {
        let mut c = a.offset;
        let mut terms: Terms = Vec::new();
        for &(v, coef) in &a.terms {
            let bind = self
                .binds
                .get(v as usize)
                .copied()
                .flatten()
                .ok_or_else(|| ice(self.kernel, format!("variable v{v} used unbound")))?;
            c += coef * bind.off;
            if let Some(d) = bind.dyn_ {
                match terms.iter_mut().find(|t| t.0 == d) {
                    Some(t) => t.1 += coef,
                    None => terms.push((d, coef)),
                }
            }
        }
        terms.retain(|t| t.1 != 0);
        Ok((terms, c))
    }

    /// `Σ scale·coef·value` as i64 (multiplications by powers of two become shifts, as
    /// the mid-end would do at `speed`).
    fn int_sum(&mut self, terms: &Terms, scale: i64) -> Value {
        let mut acc: Option<Value> = None;
        for &(v, coef) in terms {
            let k = coef * scale;
            let t = if k == 1 {
                v
            } else if k > 0 && k.count_ones() == 1 {
                self.b.ins().ishl_imm_u(v, i64::from(k.trailing_zeros()))
            } else {
                self.b.ins().imul_imm_s(v, k)
            };
            acc = Some(match acc {
                Some(a) => self.b.ins().iadd(a, t),
                None => t,
            });
        }
        acc.unwrap_or_else(|| self.b.ins().iconst(types::I64, 0))
    }

    /// The address and immediate byte offset of element `Σ terms + c` of `buf`.
    pub(super) fn addr(&mut self, buf: BufId, terms: &Terms, c: i64) -> Result<(Value, i32)> {
        let base = self
            .bases
            .get(buf as usize)
            .copied()
            .flatten()
            .ok_or_else(|| ice(self.kernel, format!("buffer {buf} has no base pointer")))?;
        let mut addr = if terms.is_empty() {
            base
        } else if let Some(a) = self.cached_addr(buf, terms) {
            a
        } else {
            let off = self.int_sum(terms, 4);
            let off = if self.ptr_ty == types::I64 {
                off
            } else {
                self.b.ins().ireduce(self.ptr_ty, off)
            };
            let a = self.b.ins().iadd(base, off);
            if let Some(sc) = self.scopes.last_mut() {
                sc.addrs.insert((buf, terms.clone()), a);
            }
            a
        };
        let bytes = c
            .checked_mul(4)
            .ok_or_else(|| ice(self.kernel, "offset overflow"))?;
        let off = match i32::try_from(bytes) {
            Ok(o) => o,
            Err(_) => {
                addr = self.b.ins().iadd_imm_s(addr, bytes);
                0
            }
        };
        Ok((addr, off))
    }

    fn cached_addr(&self, buf: BufId, terms: &Terms) -> Option<Value> {
        let key = (buf, terms.clone());
        self.scopes
            .iter()
            .rev()
            .find_map(|s| s.addrs.get(&key).copied())
    }

    /// A (cached) load of `buf[Σ terms + c]` in `shape`.
    pub(super) fn load(&mut self, buf: BufId, index: &Affine, shape: Shape) -> Result<Value> {
        let (terms, c) = self.split(index)?;
        let key = (buf, terms, c, shape);
        if let Some(v) = self.scopes.iter().rev().find_map(|s| s.loads.get(&key)) {
            return Ok(*v);
        }
        let (addr, off) = self.addr(buf, &key.1, c)?;
        let v = match shape {
            Shape::Scalar => self.b.ins().load(types::F32, mem_flags(shape), addr, off),
            Shape::Vector => self.b.ins().load(types::F32X4, mem_flags(shape), addr, off),
            Shape::Splat => {
                let s = self
                    .b
                    .ins()
                    .load(types::F32, mem_flags(Shape::Scalar), addr, off);
                self.b.ins().splat(types::F32X4, s)
            }
        };
        if let Some(sc) = self.scopes.last_mut() {
            sc.loads.insert(key, v);
        }
        Ok(v)
    }
}

/// Memory flags: scalar f32 accesses are naturally aligned (`trusted` = notrap +
/// aligned); `f32x4` accesses are only 4-byte aligned, so they are `notrap` but not
/// `aligned` (which would promise 16 bytes and allow aligned-only memory operands).
fn mem_flags(shape: Shape) -> cranelift_codegen::ir::MemFlagsData {
    use cranelift_codegen::ir::MemFlagsData;
    match shape {
        Shape::Vector => MemFlagsData::new().with_notrap(),
        Shape::Scalar | Shape::Splat => MemFlagsData::trusted(),
    }
}
