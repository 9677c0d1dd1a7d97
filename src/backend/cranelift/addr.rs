//! Address arithmetic and loads: affine indices under the current loop bindings become
//! `base + 4·Σ coef·iv` plus an immediate byte offset, with loop-invariant code motion
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
use cranelift_codegen::ir::{types, Inst, InstBuilder, MemFlagsData, Value};

use super::emit::{ice, Emitter, Shape};
use crate::error::Result;
use crate::loop_ir::{Affine, BufId};

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

    /// The address and immediate byte offset of element `Σ terms + c` of `buf`.
    pub(super) fn addr(&mut self, buf: BufId, terms: &Terms, c: i64) -> Result<(Value, i32)> {
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
                    let a = self.add_scaled(depth, addr, v, 4 * k);
                    if let Some(d) = depth {
                        self.frames[d].addrs.insert(key, a);
                    }
                    a
                }
            };
        }
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
            Shape::Strided(stride) => {
                // Gather: lane i from element `index + stride·i`.
                let flags = mem_flags(shape);
                let s = self.b.ins().load(types::F32, flags, addr, off);
                let mut v = self.b.ins().scalar_to_vector(types::F32X4, s);
                for i in 1..4u8 {
                    let (a, o) = self.lane_addr(addr, off, stride, i)?;
                    let s = self.b.ins().load(types::F32, flags, a, o);
                    v = self.b.ins().insertlane(v, s, i);
                }
                v
            }
        };
        if cache {
            if let Some(sc) = self.scopes.last_mut() {
                sc.loads.insert(key, v);
            }
        }
        Ok(v)
    }
}

impl Emitter<'_, '_> {
    /// Address and immediate offset of lane `i` of a strided access whose lane 0 is at
    /// `addr + off` and whose lanes are `stride` elements apart.
    pub(super) fn lane_addr(
        &mut self,
        addr: Value,
        off: i32,
        stride: i64,
        i: u8,
    ) -> Result<(Value, i32)> {
        let bytes = stride
            .checked_mul(4 * i64::from(i))
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
