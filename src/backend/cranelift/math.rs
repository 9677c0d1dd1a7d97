//! Float helpers over one value shape (scalar `f32` or lane-wise `f32x4`) and the
//! transcendental functions of [`crate::loop_ir::math`] as CLIF op sequences.
//!
//! Invariant: every sequence here performs the same IEEE operations, in the same order and
//! with the same constants, as the Rust function it mirrors in `loop_ir/math.rs` (and
//! `relu`/`max`/`min` as in `loop_ir/interp.rs`). With fused multiply-add enabled, JIT and
//! interpreter therefore agree bit for bit. Branches of the Rust code become selects:
//! both sides are computed (float ops never trap) and the condition picks lane-wise.
//! Keep this file in sync with `loop_ir/math.rs` when either changes.

use cranelift_codegen::ir::condcodes::FloatCC;
use cranelift_codegen::ir::{types, InstBuilder, MemFlagsData, Type, Value};
use cranelift_frontend::FunctionBuilder;

/// An instruction emitter for one shape: `f32` (`vector == false`) or `f32x4`.
pub(super) struct Fx<'a, 'f> {
    /// The function being built.
    pub b: &'a mut FunctionBuilder<'f>,
    /// `f32x4` lanes when true, scalar `f32` otherwise.
    pub vector: bool,
    /// Emit `fma` (one rounding) rather than `fmul` + `fadd`.
    pub use_fma: bool,
}

impl Fx<'_, '_> {
    /// The float type of this shape.
    pub fn fty(&self) -> Type {
        if self.vector {
            types::F32X4
        } else {
            types::F32
        }
    }

    fn ity(&self) -> Type {
        if self.vector {
            types::I32X4
        } else {
            types::I32
        }
    }

    /// A float constant (splat in vector shape).
    pub fn k(&mut self, c: f32) -> Value {
        let s = self.b.ins().f32const(c);
        if self.vector {
            self.b.ins().splat(types::F32X4, s)
        } else {
            s
        }
    }

    /// An i32 constant (splat in vector shape).
    fn ik(&mut self, c: i32) -> Value {
        let s = self.b.ins().iconst(types::I32, i64::from(c));
        if self.vector {
            self.b.ins().splat(types::I32X4, s)
        } else {
            s
        }
    }

    /// A scalar shift amount (CLIF shifts take a scalar amount even for vectors).
    fn sh(&mut self, n: i64) -> Value {
        self.b.ins().iconst(types::I32, n)
    }

    /// `a + b`.
    pub fn add(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fadd(a, b)
    }
    /// `a - b`.
    pub fn sub(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fsub(a, b)
    }
    /// `a * b`.
    pub fn mul(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fmul(a, b)
    }
    /// `a / b`.
    pub fn div(&mut self, a: Value, b: Value) -> Value {
        self.b.ins().fdiv(a, b)
    }
    /// `-a`.
    pub fn neg(&mut self, a: Value) -> Value {
        self.b.ins().fneg(a)
    }
    /// `|a|`.
    pub fn abs(&mut self, a: Value) -> Value {
        self.b.ins().fabs(a)
    }
    /// `sqrt(a)`.
    pub fn sqrt(&mut self, a: Value) -> Value {
        self.b.ins().sqrt(a)
    }

    /// `a·b + c`: fused when enabled, else `fmul` + `fadd` (two roundings).
    pub fn fma(&mut self, a: Value, b: Value, c: Value) -> Value {
        if self.use_fma {
            self.b.ins().fma(a, b, c)
        } else {
            let m = self.b.ins().fmul(a, b);
            self.b.ins().fadd(m, c)
        }
    }

    /// The condition `a cc b` (an `i8` for scalars, an `i32x4` lane mask for vectors).
    pub fn cmp(&mut self, cc: FloatCC, a: Value, b: Value) -> Value {
        self.b.ins().fcmp(cc, a, b)
    }

    /// `c1 || c2` for conditions from [`Fx::cmp`].
    fn or(&mut self, c1: Value, c2: Value) -> Value {
        self.b.ins().bor(c1, c2)
    }

    /// `c ? t : f` for a condition from [`Fx::cmp`]. Vectors use `bitselect` on the mask
    /// bitcast to `f32x4` (same lane count, so no endianness flag is needed); x64 turns
    /// `bitselect(fcmp lt y x, x, y)` into one `maxps`/`minps`.
    pub fn pick(&mut self, c: Value, t: Value, f: Value) -> Value {
        if self.vector {
            let m = self.b.ins().bitcast(types::F32X4, MemFlagsData::new(), c);
            self.b.ins().bitselect(m, t, f)
        } else {
            self.b.ins().select(c, t, f)
        }
    }

    /// `a cc b ? t : f`.
    pub fn sel(&mut self, cc: FloatCC, a: Value, b: Value, t: Value, f: Value) -> Value {
        let c = self.cmp(cc, a, b);
        self.pick(c, t, f)
    }

    /// `x < 0 ? 0 : x` (interp `relu`, NaN passes through), written so that x64 emits
    /// one `maxps 0, x` (`maxps` returns its second operand when either is NaN).
    pub fn relu(&mut self, x: Value) -> Value {
        let z = self.k(0.0);
        self.max_nan_free(x, z)
    }

    /// Interp `max`: `b` when `b` is NaN, else `a < b ? b : a`. When the lowering knows
    /// `b` is not NaN (a constant) it calls [`Fx::max_nan_free`] instead, one `maxps`.
    pub fn max(&mut self, a: Value, b: Value) -> Value {
        let m = self.max_nan_free(a, b);
        self.nan_wins(b, m)
    }

    /// Interp `min`: `b` when `b` is NaN, else `b < a ? b : a`.
    pub fn min(&mut self, a: Value, b: Value) -> Value {
        let m = self.min_nan_free(a, b);
        self.nan_wins(b, m)
    }

    /// `a < b ? b : a`: interp `max` when `b` is not NaN (a NaN `a` passes through). The
    /// operand order matches Cranelift's `maxps b, a` pattern (`bitselect(fcmp lt y x, x,
    /// y)` with `x = b`, `y = a`).
    pub fn max_nan_free(&mut self, a: Value, b: Value) -> Value {
        self.sel(FloatCC::LessThan, a, b, b, a)
    }

    /// `b < a ? b : a`: interp `min` when `b` is not NaN; Cranelift's `minps b, a`
    /// pattern (`bitselect(fcmp lt x y, x, y)` with `x = b`, `y = a`).
    pub fn min_nan_free(&mut self, a: Value, b: Value) -> Value {
        self.sel(FloatCC::LessThan, b, a, b, a)
    }

    /// `b` is NaN ? `b` : `m` (`cmpunordps` and a blend).
    fn nan_wins(&mut self, b: Value, m: Value) -> Value {
        self.sel(FloatCC::Unordered, b, b, b, m)
    }

    /// `loop_ir::math::exp`.
    pub fn exp(&mut self, x: Value) -> Value {
        // f32::clamp: `if x < lo { lo }` then `if x > hi { hi }` (NaN passes through).
        let lo = self.k(crate::loop_ir::math::EXP_LO);
        let hi = self.k(crate::loop_ir::math::EXP_HI);
        let x = self.sel(FloatCC::LessThan, x, lo, lo, x);
        let x = self.sel(FloatCC::GreaterThan, x, hi, hi, x);
        let log2e = self.k(std::f32::consts::LOG2_E);
        let t = self.mul(x, log2e);
        let n = self.b.ins().nearest(t);
        let nn = self.neg(n);
        let hi_c = self.k(0.693_145_75);
        let r = self.fma(nn, hi_c, x);
        let lo_c = self.k(1.428_606_8e-6);
        let r = self.fma(nn, lo_c, r);
        let mut p = self.k(1.0 / 5040.0f32);
        for c in [
            1.0 / 720.0f32,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            let c = self.k(c);
            p = self.fma(p, r, c);
        }
        // 2^n in two factors, built from exponent bits (`n as i32` saturates, NaN → 0).
        let ity = self.ity();
        let ni = self.b.ins().fcvt_to_sint_sat(ity, n);
        let one = self.sh(1);
        let n1 = self.b.ins().sshr(ni, one);
        let n2 = self.b.ins().isub(ni, n1);
        let s1 = self.pow2(n1);
        let s2 = self.pow2(n2);
        let ps = self.mul(p, s1);
        self.mul(ps, s2)
    }

    /// `f32::from_bits(((n + 127) as u32) << 23)`.
    fn pow2(&mut self, n: Value) -> Value {
        let bias = self.ik(127);
        let e = self.b.ins().iadd(n, bias);
        let s = self.sh(23);
        let bits = self.b.ins().ishl(e, s);
        let fty = self.fty();
        self.b.ins().bitcast(fty, MemFlagsData::new(), bits)
    }

    /// `loop_ir::math::ln`.
    pub fn ln(&mut self, x: Value) -> Value {
        // Subnormals: scale up first (exact).
        let minpos = self.k(f32::MIN_POSITIVE);
        let small = self.cmp(FloatCC::LessThan, x, minpos);
        let scale = self.k(8_388_608.0);
        let xs = self.mul(x, scale);
        let xs = self.pick(small, xs, x);
        let (b23, b0) = (self.k(-23.0), self.k(0.0));
        let bias = self.pick(small, b23, b0);
        let ity = self.ity();
        let bits = self.b.ins().bitcast(ity, MemFlagsData::new(), xs);
        let s23 = self.sh(23);
        let ex = self.b.ins().ushr(bits, s23);
        let k127 = self.ik(127);
        let ex = self.b.ins().isub(ex, k127);
        let fty = self.fty();
        let e = self.b.ins().fcvt_from_sint(fty, ex);
        let e = self.add(e, bias);
        let mant = self.ik(0x007f_ffff);
        let one_bits = self.ik(0x3f80_0000);
        let mb = self.b.ins().band(bits, mant);
        let mb = self.b.ins().bor(mb, one_bits);
        let m = self.b.ins().bitcast(fty, MemFlagsData::new(), mb);
        let sqrt2 = self.k(std::f32::consts::SQRT_2);
        let big = self.cmp(FloatCC::GreaterThan, m, sqrt2);
        let half = self.k(0.5);
        let m2 = self.mul(m, half);
        let m = self.pick(big, m2, m);
        let one = self.k(1.0);
        let e2 = self.add(e, one);
        let e = self.pick(big, e2, e);
        let f = self.sub(m, one);
        let z = self.mul(f, f);
        let mut p = self.k(7.037_683_6e-2);
        // Same f32 values as loop_ir/math.rs (clippy-truncated literals parse identically).
        for c in [
            -1.151_461e-1_f32,
            1.167_699_9e-1,
            -1.242_014_1e-1,
            1.424_932_3e-1,
            -1.666_805_8e-1,
            2.000_071_5e-1,
            -2.499_999_4e-1,
            3.333_333e-1,
        ] {
            let c = self.k(c);
            p = self.fma(p, f, c);
        }
        let pf = self.mul(p, f);
        let y = self.mul(pf, z);
        let c1 = self.k(-2.121_944_4e-4);
        let y = self.fma(e, c1, y);
        let mhalf = self.k(-0.5);
        let y = self.fma(mhalf, z, y);
        let r = self.add(f, y);
        let ln2 = self.k(0.693_359_4);
        let res = self.fma(e, ln2, r);
        // Special cases, applied in reverse order of the Rust early returns so the first
        // matching one wins: +∞ → x, ±0 → −∞, NaN or negative → NaN.
        let inf = self.k(f32::INFINITY);
        let is_inf = self.cmp(FloatCC::Equal, x, inf);
        let res = self.pick(is_inf, x, res);
        let zero = self.k(0.0);
        let ninf = self.k(f32::NEG_INFINITY);
        let is_zero = self.cmp(FloatCC::Equal, x, zero);
        let res = self.pick(is_zero, ninf, res);
        let nan = self.cmp(FloatCC::Unordered, x, x);
        let neg = self.cmp(FloatCC::LessThan, x, zero);
        let bad = self.or(nan, neg);
        let qnan = self.k(f32::NAN);
        self.pick(bad, qnan, res)
    }

    /// `loop_ir::math::tanh`.
    pub fn tanh(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let two = self.k(2.0);
        let a2 = self.mul(two, a);
        let e = self.exp(a2);
        let one = self.k(1.0);
        let e1 = self.add(e, one);
        let q = self.div(two, e1);
        let t = self.sub(one, q);
        let nt = self.neg(t);
        let zero = self.k(0.0);
        self.sel(FloatCC::LessThan, x, zero, nt, t)
    }

    /// The i32 bits of a float value (lane-wise for vectors).
    fn bits(&mut self, x: Value) -> Value {
        let ity = self.ity();
        self.b.ins().bitcast(ity, MemFlagsData::new(), x)
    }

    /// The float whose bits are `u`.
    fn float_of_bits(&mut self, u: Value) -> Value {
        let fty = self.fty();
        self.b.ins().bitcast(fty, MemFlagsData::new(), u)
    }

    /// `u + add + ((u >> shift) & 1)` with the low `shift` bits cleared: round to
    /// nearest even on the bit pattern (wrapping, as the Rust code).
    fn round_bits(&mut self, u: Value, shift: i64, add: i32) -> Value {
        let s = self.sh(shift);
        let lsb = self.b.ins().ushr(u, s);
        let one = self.ik(1);
        let lsb = self.b.ins().band(lsb, one);
        let k = self.ik(add);
        let t = self.b.ins().iadd(u, k);
        let t = self.b.ins().iadd(t, lsb);
        let mask = self.ik(!((1i32 << shift) - 1));
        self.b.ins().band(t, mask)
    }

    /// `loop_ir::math::round_f16`, the branches as selects.
    pub fn round_f16(&mut self, x: Value) -> Value {
        let u = self.bits(x);
        let sign_mask = self.ik(i32::MIN);
        let sign = self.b.ins().band(u, sign_mask);
        let a = self.abs(x);
        let normal = self.round_bits(u, 13, 0x0FFF);
        let normal = self.float_of_bits(normal);
        let k = self.k(0.75);
        let t = self.add(a, k);
        let t = self.sub(t, k);
        let tb = self.bits(t);
        let sub = self.b.ins().bor(tb, sign);
        let sub = self.float_of_bits(sub);
        let min_normal = self.k(crate::loop_ir::math::F16_MIN_NORMAL);
        let r = self.sel(FloatCC::LessThan, a, min_normal, sub, normal);
        let inf = self.ik(0x7F80_0000);
        let inf = self.b.ins().bor(inf, sign);
        let inf = self.float_of_bits(inf);
        let big = self.k(crate::loop_ir::math::F16_OVERFLOW);
        let r = self.sel(FloatCC::GreaterThanOrEqual, a, big, inf, r);
        self.sel(FloatCC::Unordered, x, x, x, r)
    }

    /// `loop_ir::math::round_bf16`.
    pub fn round_bf16(&mut self, x: Value) -> Value {
        let u = self.bits(x);
        let r = self.round_bits(u, 16, 0x7FFF);
        let r = self.float_of_bits(r);
        self.sel(FloatCC::Unordered, x, x, x, r)
    }

    /// `loop_ir::math::sigmoid`.
    pub fn sigmoid(&mut self, x: Value) -> Value {
        let nx = self.neg(x);
        let e = self.exp(nx);
        let one = self.k(1.0);
        let d = self.add(one, e);
        self.div(one, d)
    }

    /// `loop_ir::math::erf`.
    pub fn erf(&mut self, x: Value) -> Value {
        let a = self.abs(x);
        let (c, one) = (self.k(0.327_591_1), self.k(1.0));
        let d = self.fma(c, a, one);
        let t = self.div(one, d);
        let mut p = self.k(1.061_405_4);
        for c in [-1.453_152_1f32, 1.421_413_7, -0.284_496_74, 0.254_829_6] {
            let c = self.k(c);
            p = self.fma(p, t, c);
        }
        let na = self.neg(a);
        let aa = self.mul(na, a);
        let e = self.exp(aa);
        let pt = self.mul(p, t);
        let pte = self.mul(pt, e);
        let y = self.sub(one, pte);
        let ny = self.neg(y);
        let zero = self.k(0.0);
        self.sel(FloatCC::LessThan, x, zero, ny, y)
    }
}
