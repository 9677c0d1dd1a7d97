//! Address arithmetic and loads: affine indices under the current loop bindings become
//! `base + size·Σ coef·iv` plus an immediate byte offset (`size` is 4 for f32 buffers, 2
//! for 16-bit weights, which loads widen to f32 with integer SIMD), with loop-invariant code motion
//! done here (the mid-end is off by default, see `isa.rs`).
//!
//! Hoisting: every loop pushes a [`Frame`] whose *anchor* is an unused instruction at the
//! top of its header block. An address `base + Σ coef_d·iv_d` is built outermost-first as
//! a chain of partial sums; the partial sum ending at loop depth `d` depends only on the
//! induction variables of loops `0..=d`, so it is inserted just before loop `d`'s anchor
//! and computed once per iteration of that loop, and cached in its frame so every access
//! (and every unrolled copy) sharing the prefix reuses it. Measured reason: before this,
//! the DeepFace L4 reduction step (12 FMAs) recomputed both addresses from all six loop
//! variables every iteration (≈ 20 integer instructions per step).
//!
//! Loads are cached per structured scope (loop body, guarded body) so unrolled copies
//! share them, except `f32x4` loads in kernels with a big accumulator tile (see
//! [`Emitter::fold_vector_loads`]).

use std::collections::HashMap;

use cranelift_codegen::cursor::{Cursor, FuncCursor};
use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, Inst, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

use super::emit::{ice, Emitter, Shape};
use crate::error::Result;
use crate::loop_ir::{Affine, BufId, Dtype};

/// `(value, coefficient)` terms of an index under the current bindings.
pub(super) type Terms = Vec<(Value, i64)>;

/// Cached loads of one structured scope.
#[derive(Default)]
pub(super) struct Scope {
    pub loads: HashMap<(BufId, Terms, i64, Shape), Value>,
}

/// One enclosing counted loop: its induction variable, where loop-invariant address
/// parts are inserted, and the partial sums already computed there.
pub(super) struct Frame {
    pub iv: Value,
    pub anchor: Inst,
    pub addrs: HashMap<(BufId, Terms), Value>,
}

/// `k·v` emitted with the instruction builder `$ins` (re-evaluated per instruction):
/// nothing for 1, a shift for powers of two (as the mid-end would do at `speed`).
macro_rules! scaled {
    ($ins:expr, $v:expr, $k:expr) => {{
        let (v, k): (Value, i64) = ($v, $k);
        if k == 1 {
            v
        } else if k > 0 && k.count_ones() == 1 {
            $ins.ishl_imm_u(v, i64::from(k.trailing_zeros()))
        } else {
            $ins.imul_imm_s(v, k)
        }
    }};
}

impl<'f> Emitter<'_, 'f> {
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

    /// `Σ scale·coef·value` as i64 at the current position.
    pub(super) fn int_sum(&mut self, terms: &Terms, scale: i64) -> Value {
        let mut acc: Option<Value> = None;
        for &(v, coef) in terms {
            let t = scaled!(self.b.ins(), v, coef * scale);
            acc = Some(match acc {
                Some(a) => self.b.ins().iadd(a, t),
                None => t,
            });
        }
        acc.unwrap_or_else(|| self.b.ins().iconst(types::I64, 0))
    }

    /// Frame index of the loop whose induction variable is `v`.
    fn depth_of(&self, v: Value) -> Option<usize> {
        self.frames.iter().rposition(|f| f.iv == v)
    }

    /// `acc + k·v` (pointer-typed), inserted before loop `depth`'s anchor, or at the
    /// current position when `v` is not a known induction variable.
    fn add_scaled(&mut self, depth: Option<usize>, acc: Value, v: Value, k: i64) -> Value {
        let ptr_ty = self.ptr_ty;
        match depth.map(|d| self.frames[d].anchor) {
            Some(anchor) => {
                let mut pos = FuncCursor::new(self.b.func).at_inst(anchor);
                let mut t = scaled!(pos.ins(), v, k);
                if ptr_ty != types::I64 {
                    t = pos.ins().ireduce(ptr_ty, t);
                }
                pos.ins().iadd(acc, t)
            }
            None => {
                let mut t = scaled!(self.b.ins(), v, k);
                if ptr_ty != types::I64 {
                    t = self.b.ins().ireduce(ptr_ty, t);
                }
                self.b.ins().iadd(acc, t)
            }
        }
    }

    /// Bytes per element of `buf`.
    fn elem_bytes(&self, buf: BufId) -> i64 {
        self.dtypes
            .get(buf as usize)
            .map_or(4, |d| d.bytes() as i64)
    }

    /// The address and immediate byte offset of element `Σ terms + c` of `buf`.
    pub(super) fn addr(&mut self, buf: BufId, terms: &Terms, c: i64) -> Result<(Value, i32)> {
        let size = self.elem_bytes(buf);
        let base = self
            .bases
            .get(buf as usize)
            .copied()
            .flatten()
            .ok_or_else(|| ice(self.kernel, format!("buffer {buf} has no base pointer")))?;
        // Outermost loop first; unknown values (none today) last, at the current position.
        let mut ordered: Vec<(Option<usize>, Value, i64)> = terms
            .iter()
            .map(|&(v, k)| (self.depth_of(v), v, k))
            .collect();
        ordered.sort_by_key(|t| t.0.unwrap_or(usize::MAX));
        let mut addr = base;
        let mut prefix: Terms = Vec::with_capacity(ordered.len());
        for (depth, v, k) in ordered {
            prefix.push((v, k));
            let key = (buf, prefix.clone());
            let hit = depth.and_then(|d| self.frames[d].addrs.get(&key).copied());
            addr = match hit {
                Some(a) => a,
                None => {
                    let a = self.add_scaled(depth, addr, v, size * k);
                    if let Some(d) = depth {
                        self.frames[d].addrs.insert(key, a);
                    }
                    a
                }
            };
        }
        let bytes = c
            .checked_mul(size)
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

    /// A (cached) load of `buf[Σ terms + c]` in `shape`.
    pub(super) fn load(&mut self, buf: BufId, index: &Affine, shape: Shape) -> Result<Value> {
        let (terms, c) = self.split(index)?;
        let key = (buf, terms, c, shape);
        let cache = !(shape == Shape::Vector && self.fold_vector_loads);
        if cache {
            if let Some(v) = self.scopes.iter().rev().find_map(|s| s.loads.get(&key)) {
                return Ok(*v);
            }
        }
        let (addr, off) = self.addr(buf, &key.1, c)?;
        let dtype = self.dtypes.get(buf as usize).copied().unwrap_or_default();
        let v = if dtype == Dtype::F32 {
            self.load_f32(addr, off, shape)?
        } else {
            self.load_half(addr, off, shape, dtype)?
        };
        if cache {
            if let Some(sc) = self.scopes.last_mut() {
                sc.loads.insert(key, v);
            }
        }
        Ok(v)
    }

    /// An f32 load at `addr + off` in `shape`.
    fn load_f32(&mut self, addr: Value, off: i32, shape: Shape) -> Result<Value> {
        Ok(match shape {
            Shape::Scalar => self.b.ins().load(types::F32, mem_flags(shape), addr, off),
            Shape::Vector => self.b.ins().load(types::F32X4, mem_flags(shape), addr, off),
            Shape::Splat => {
                let s = self
                    .b
                    .ins()
                    .load(types::F32, mem_flags(Shape::Scalar), addr, off);
                self.b.ins().splat(types::F32X4, s)
            }
            Shape::Strided(stride) => {
                let flags = mem_flags(shape);
                self.gather(addr, off, stride, 4, types::F32X4, |b, a, o| {
                    b.ins().load(types::F32, flags, a, o)
                })?
            }
        })
    }

    /// Gather: a vector of type `vty` whose lane `i` is the element `stride·i` elements
    /// of `size` bytes after `addr + off`, each read by `read` (a scalar load).
    fn gather(
        &mut self,
        addr: Value,
        off: i32,
        stride: i64,
        size: i64,
        vty: Type,
        read: impl Fn(&mut FunctionBuilder<'f>, Value, i32) -> Value,
    ) -> Result<Value> {
        let s = read(&mut self.b, addr, off);
        let mut v = self.b.ins().scalar_to_vector(vty, s);
        for i in 1..4u8 {
            let (a, o) = self.lane_addr(addr, off, stride, size, i)?;
            let s = read(&mut self.b, a, o);
            v = self.b.ins().insertlane(v, s, i);
        }
        Ok(v)
    }

    /// A 16-bit load at `addr + off` in `shape`, widened to f32 (lanes): the halves are
    /// zero-extended into i32 lanes (`uload16x4` for contiguous lanes, one `pmovzxwd`
    /// on x64) and widened as the interpreter's [`Dtype::widen`] does, lane-wise: a
    /// shift for bfloat16, [`Emitter::widen_f16`] for halves.
    fn load_half(&mut self, addr: Value, off: i32, shape: Shape, dtype: Dtype) -> Result<Value> {
        let flags = mem_flags(shape);
        let bits = match shape {
            Shape::Scalar | Shape::Splat => self.b.ins().uload16(types::I32, flags, addr, off),
            Shape::Vector => self.b.ins().uload16x4(flags, addr, off),
            Shape::Strided(stride) => {
                self.gather(addr, off, stride, 2, types::I32X4, |b, a, o| {
                    b.ins().uload16(types::I32, flags, a, o)
                })?
            }
        };
        let vector = matches!(shape, Shape::Vector | Shape::Strided(_));
        let f = match dtype {
            Dtype::Bf16 => {
                let s16 = self.b.ins().iconst(types::I32, 16);
                let u = self.b.ins().ishl(bits, s16);
                let fty = if vector { types::F32X4 } else { types::F32 };
                self.b.ins().bitcast(fty, MemFlagsData::new(), u)
            }
            Dtype::F16 | Dtype::F32 => self.widen_f16(bits, vector),
        };
        Ok(if shape == Shape::Splat {
            self.b.ins().splat(types::F32X4, f)
        } else {
            f
        })
    }
}

impl Emitter<'_, '_> {
    /// `loop_ir::math::widen_f16` of half bits zero-extended into i32 (lanes): the
    /// branches as compares and selects, the float operations exact ones on normal
    /// numbers. Its five constants are hoisted into the kernel's entry block
    /// ([`Emitter::entry_const`]): an unrolled LC tile widens 64 weight vectors per step,
    /// and materialising the splats for each made f16 weights 5× slower than bf16; with
    /// seven constants the tile's accumulators spilled.
    fn widen_f16(&mut self, h: Value, vector: bool) -> Value {
        use crate::loop_ir::math::{F16_HALF_MIN_NORMAL, F16_NORMAL_BIAS, F16_SPECIAL};
        let (ity, fty) = if vector {
            (types::I32X4, types::F32X4)
        } else {
            (types::I32, types::F32)
        };
        let flags = MemFlagsData::new();
        let mag_mask = self.entry_const(0x7FFF, ity);
        let mag = self.b.ins().band(h, mag_mask);
        let sign = self.b.ins().bxor(h, mag);
        let s13 = self.b.ins().iconst(types::I32, 13);
        let shifted = self.b.ins().ishl(mag, s13);
        let bias = self.entry_const(F16_NORMAL_BIAS, ity);
        let bits = self.b.ins().iadd(shifted, bias);
        let f = self.b.ins().bitcast(fty, flags, bits);
        let half_min = self.entry_const(F16_HALF_MIN_NORMAL.to_bits(), fty);
        let d = self.b.ins().fsub(f, half_min);
        let sub = self.b.ins().fadd(d, d);
        let is_sub = self.b.ins().fcmp(FloatCC::LessThan, d, half_min);
        let r = self.pick(vector, is_sub, sub, f);
        let exp_all = self.entry_const(0x7F80_0000, ity);
        let special = self.b.ins().bor(bits, exp_all);
        let special = self.b.ins().bitcast(fty, flags, special);
        let limit = self.entry_const(F16_SPECIAL.to_bits(), fty);
        let is_special = self.b.ins().fcmp(FloatCC::GreaterThanOrEqual, f, limit);
        let r = self.pick(vector, is_special, special, r);
        let r = self.b.ins().bitcast(ity, flags, r);
        let s16 = self.b.ins().iconst(types::I32, 16);
        let sign = self.b.ins().ishl(sign, s16);
        let r = self.b.ins().bor(r, sign);
        self.b.ins().bitcast(fty, flags, r)
    }

    /// `c ? t : f` on floats (lanes) for a condition from `fcmp`: `bitselect` on the
    /// lane mask (bitcast to f32x4) for vectors, `select` on the flag for scalars.
    fn pick(&mut self, vector: bool, c: Value, t: Value, f: Value) -> Value {
        if vector {
            let m = self.b.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
            self.b.ins().bitselect(m, t, f)
        } else {
            self.b.ins().select(c, t, f)
        }
    }

    /// The constant with bits `bits` of type `ty` (`i32`, `f32`, or their 4-lane
    /// splats), defined once in the kernel's entry block (which dominates every use)
    /// and cached.
    pub(super) fn entry_const(&mut self, bits: u32, ty: Type) -> Value {
        if let Some(v) = self.entry_consts.get(&(bits, ty)) {
            return *v;
        }
        let mut pos = FuncCursor::new(self.b.func).at_inst(self.entry_anchor);
        let scalar = if ty.lane_type() == types::F32 {
            pos.ins().f32const(f32::from_bits(bits))
        } else {
            pos.ins().iconst(types::I32, i64::from(bits))
        };
        let v = if ty.is_vector() {
            pos.ins().splat(ty, scalar)
        } else {
            scalar
        };
        self.entry_consts.insert((bits, ty), v);
        v
    }
}

impl Emitter<'_, '_> {
    /// Address and immediate offset of lane `i` of a strided access whose lane 0 is at
    /// `addr + off` and whose lanes are `stride` elements of `size` bytes apart.
    pub(super) fn lane_addr(
        &mut self,
        addr: Value,
        off: i32,
        stride: i64,
        size: i64,
        i: u8,
    ) -> Result<(Value, i32)> {
        let bytes = stride
            .checked_mul(size * i64::from(i))
            .and_then(|b| b.checked_add(i64::from(off)))
            .ok_or_else(|| ice(self.kernel, "lane offset overflow"))?;
        Ok(match i32::try_from(bytes) {
            Ok(o) => (addr, o),
            Err(_) => (self.b.ins().iadd_imm_s(addr, bytes), 0),
        })
    }
}

/// Memory flags: scalar f32 accesses are naturally aligned (`trusted` = notrap +
/// aligned); `f32x4` accesses are only 4-byte aligned, so they are `notrap` but not
/// `aligned` (which would promise 16 bytes and allow aligned-only memory operands).
pub(super) fn mem_flags(shape: Shape) -> MemFlagsData {
    match shape {
        Shape::Vector => MemFlagsData::new().with_notrap(),
        Shape::Scalar | Shape::Splat | Shape::Strided(_) => MemFlagsData::trusted(),
    }
}
