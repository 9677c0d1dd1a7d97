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
//! Addresses (`base + 4·Σ coef·dyn`, the constant part folded into the load offset) are
//! built in `addr.rs`, each partial sum hoisted to the loop that last changes it. Loads
//! are cached per structured scope (loop body, guarded body), so unrolled copies share
//! them; a store invalidates the cached loads of its buffer, and entering a loop
//! invalidates those of every buffer the loop stores to.

use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{
    types, AbiParam, Block, BlockArg, Function, Inst, InstBuilder, Type, Value,
};
use cranelift_codegen::isa::TargetFrontendConfig;
use cranelift_frontend::{FunctionBuilder, FunctionBuilderContext};

use super::addr::{mem_flags, Frame, Scope};
use super::prescan::{
    local_uses_var, mark_bufs, plan_locals, sets_locals, stored_bufs, LocalStore,
};
use super::wide_call::{stmt_key, WideCalls};
use crate::error::{Error, Result};
use crate::loop_ir::{Affine, Dtype, Kernel, LoopKind, Module, Stmt, Var};

/// Vector loops up to this extent (4 `f32x4` steps) are fully unrolled.
const VECTOR_UNROLL_MAX: u64 = 16;

/// Kernels with more `f32x4` accumulators than this re-load vector operands per use.
/// x64 has 16 xmm registers and Cranelift's fma always overwrites a multiplicand (notes
/// §0.4), so a tile of 12 accumulators + 4 cached weight vectors + the broadcast + the
/// FMA's copy of it needs 18 and spilled 3 accumulators every step (DeepFace L4, batch
/// 32); re-loading lets each load fold into its FMA as a memory operand (14 registers,
/// one micro-fused load+FMA, L1-resident data).
const FOLD_LOADS_ABOVE_ACCS: usize = 8;

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
    /// Lanes `stride` elements apart: gathered by a load, scattered by a store.
    Strided(i64),
}

/// Builds one kernel's function.
pub(super) struct Emitter<'a, 'f> {
    pub b: FunctionBuilder<'f>,
    pub kernel: &'a Kernel,
    pub use_fma: bool,
    pub ptr_ty: Type,
    pub bases: Vec<Option<Value>>,
    /// How each module buffer stores its elements (16-bit buffers are widened on load).
    pub dtypes: Vec<Dtype>,
    /// An unused instruction at the end of the entry block: constants hoisted out of
    /// every loop are inserted before it ([`Emitter::entry_const`]).
    pub entry_anchor: Inst,
    /// The hoisted constants, by bits and type.
    pub entry_consts: std::collections::HashMap<(u32, Type), Value>,
    pub binds: Vec<Option<Bind>>,
    /// The enclosing vector loop's variable.
    pub vector_var: Option<Var>,
    pub locals: Vec<LocalStore>,
    pub scopes: Vec<Scope>,
    /// Enclosing counted loops, outermost first (address hoisting, `addr.rs`).
    pub frames: Vec<Frame>,
    /// Re-load `f32x4` values per use instead of caching them in registers, so x64 folds
    /// each load into its FMA as a memory operand (see `fold_vector_loads`).
    pub fold_vector_loads: bool,
    /// The microkernels replacing `wide` loops (`wide_call.rs`).
    pub wide: &'a WideCalls,
}

/// The error for a broken emitter invariant in `kernel`.
pub(super) fn ice(kernel: &Kernel, msg: impl std::fmt::Display) -> Error {
    Error::internal(format!("kernel {}: codegen: {msg}", kernel.name))
}

/// Emits `kernel` into `func` (whose signature is set here: `(ptr, i64, i64)`), with fused
/// multiply-adds or not and the microkernels of its wide loops (`wide_call.rs`).
pub(super) fn emit_kernel(
    func: &mut Function,
    fbc: &mut FunctionBuilderContext,
    module: &Module,
    kernel: &Kernel,
    shape: KernelShape,
    (use_fma, wide): (bool, &WideCalls),
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
    let vector_accs: usize = locals
        .iter()
        .map(|l| match l {
            LocalStore::Groups { vars, .. } => vars.len(),
            LocalStore::Scalar(_) => 0,
        })
        .sum();
    // Anchor for constants hoisted into the entry block (dead if none is).
    let entry_anchor = b.ins().iconst(types::I32, 0);
    let entry_anchor = b
        .func
        .dfg
        .value_def(entry_anchor)
        .inst()
        .ok_or_else(|| ice(kernel, "entry anchor"))?;
    let mut em = Emitter {
        b,
        kernel,
        use_fma,
        ptr_ty,
        bases,
        dtypes: module.buffers.iter().map(|b| b.dtype).collect(),
        entry_anchor,
        entry_consts: std::collections::HashMap::new(),
        binds: vec![None; kernel.vars as usize],
        vector_var: None,
        locals,
        scopes: vec![Scope::default()],
        frames: Vec::new(),
        fold_vector_loads: vector_accs > FOLD_LOADS_ABOVE_ACCS,
        wide,
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
                // The microkernel replacing this loop, if it is a wide loop that has one.
                let wide_call = match kind {
                    LoopKind::Wide(_) => self.wide.get(&stmt_key(s)),
                    _ => None,
                };
                match *kind {
                    LoopKind::Wide(_) if wide_call.is_some() => {
                        if let Some(call) = wide_call {
                            self.wide_call(call)?;
                        }
                    }
                    // A wide loop without a microkernel is the serial loop it heads.
                    LoopKind::Serial | LoopKind::Wide(_) => {
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
                let v = self.expr(value, shape != Shape::Scalar)?;
                let (terms, c) = self.split(index)?;
                let (addr, off) = self.addr(*buf, &terms, c)?;
                let flags = mem_flags(shape);
                if let Shape::Strided(stride) = shape {
                    // Scatter: lane i to element `index + stride·i` (distinct elements,
                    // the verifier rejects stride 0), in lane order.
                    for i in 0..4u8 {
                        let (a, o) = self.lane_addr(addr, off, stride, 4, i)?;
                        let x = self.b.ins().extractlane(v, i);
                        self.b.ins().store(flags, x, a, o);
                    }
                } else {
                    self.b.ins().store(flags, v, addr, off);
                }
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

    /// Shape of a store in the current context: vector lanes inside a vector loop,
    /// contiguous (coefficient 1) or strided (a scatter; local tiles reject it).
    fn store_shape(&self, index: &Affine) -> Result<Shape> {
        match self.vector_var {
            None => Ok(Shape::Scalar),
            Some(v) => match index.coef(v) {
                1 => Ok(Shape::Vector),
                0 => Err(ice(
                    self.kernel,
                    format!("store in vector loop v{v} that does not depend on it"),
                )),
                c => Ok(Shape::Strided(c)),
            },
        }
    }

    /// `for var in start..end step` with `copies` replicated bodies (`var = iv + k`).
    /// The caller guarantees at least one iteration.
    ///
    /// Loops that update locals are top-tested (`header: brif iv < end, body, exit`;
    /// `body: …; jump header(iv + step)`), others bottom-tested. Reason: x64 lowering
    /// folds a load into its FMA only if the load's value has one use *transitively*
    /// (Cranelift's `ValueUseState` propagates "multiple uses" to every operand of a
    /// pure instruction). In a bottom-tested loop the last FMA of each accumulator chain
    /// feeds both the back-edge and the code after the loop, which marks the whole chain
    /// and all its loads as multi-use, so no weight load was folded (one extra `vmovups`
    /// per FMA in DeepFace L4). Top-tested, the chain ends in the single back-edge jump
    /// and the code after the loop reads the header's block parameters instead.
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
        let top_test = sets_locals(body);
        let header = self.b.create_block();
        let iv = self.b.append_block_param(header, types::I64);
        let exit = self.b.create_block();
        self.b.ins().jump(header, &[BlockArg::Value(start)]);
        self.b.switch_to_block(header);
        if top_test {
            let more = self.less_than(iv, end);
            let body_block = self.b.create_block();
            self.b.ins().brif(more, body_block, &[], exit, &[]);
            self.b.seal_block(body_block);
            self.b.switch_to_block(body_block);
        }
        // Anchor for hoisted address arithmetic: an unused constant (not lowered) at the
        // top of the body, before which loop-invariant partial sums are inserted.
        let anchor_val = self.b.ins().iconst(types::I64, 0);
        let anchor = self
            .b
            .func
            .dfg
            .value_def(anchor_val)
            .inst()
            .ok_or_else(|| ice(self.kernel, "anchor without instruction"))?;
        self.frames.push(Frame {
            iv,
            anchor,
            addrs: Default::default(),
        });
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
        self.frames.pop();
        let next = self.b.ins().iadd_imm_s(iv, step);
        if top_test {
            self.b.ins().jump(header, &[BlockArg::Value(next)]);
        } else {
            let more = self.less_than(next, end);
            self.b
                .ins()
                .brif(more, header, &[BlockArg::Value(next)], exit, &[]);
        }
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        Ok(())
    }

    /// `v < end` (signed).
    fn less_than(&mut self, v: Value, end: LoopEnd) -> Value {
        match end {
            LoopEnd::Const(e) => self.b.ins().icmp_imm_s(IntCC::SignedLessThan, v, e),
            LoopEnd::Dyn(e) => self.b.ins().icmp(IntCC::SignedLessThan, v, e),
        }
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
}
