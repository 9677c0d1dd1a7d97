//! The transcendental functions of the loop IR, as the exact sequences of f32 operations
//! (multiply, fused multiply-add, round-to-nearest, float↔int conversion, bit shifts,
//! compare-and-select) that the Cranelift back end emits lane-wise.
//!
//! The interpreter calls these functions, so the interpreter and the JIT compute the same
//! bits whenever the JIT has FMA. Accuracy, measured against f64 in the tests below:
//! `exp` ≤ 2 ulp on [−87, 88], exact at ±∞ and rounded gradually into the subnormals; `ln` ≤ 2 ulp on normal positive inputs; `tanh` and
//! `sigmoid` ≤ 2e-7 absolute error, `erf` ≤ 5e-7 (relative error grows only where the result is tiny,
//! which the 1e-4·max(1, |ref|) tolerance of the golden tests absorbs).

/// Smallest positive normal half, `2^-14`: below it halves are multiples of `2^-24`.
pub const F16_MIN_NORMAL: f32 = 6.103_515_6e-5;
/// Magnitudes from here round to ±∞ in half precision (halfway between the largest
/// half, 65504, and 65536).
pub const F16_OVERFLOW: f32 = 65520.0;

/// `x as f16 as f32` with round to nearest even (what TF's `Cast` to `float16` does):
/// normal halves by rounding away the 13 low mantissa bits of the f32 (`+ 0xFFF + lsb`,
/// the carry moving into the exponent when the mantissa overflows); half subnormals,
/// multiples of `2^-24`, by `(|x| + 0.75) − 0.75` (in `[0.75, 1)` the f32 spacing is
/// exactly `2^-24`, so that sum rounds `|x|` to nearest even); `|x| ≥ 65520` to ±∞;
/// NaN unchanged. The JIT emits the same operations lane-wise, as selects.
pub fn round_f16(x: f32) -> f32 {
    let u = x.to_bits();
    let sign = u & 0x8000_0000;
    let a = x.abs();
    let normal = u.wrapping_add(0x0FFF + ((u >> 13) & 1)) & !0x1FFF;
    let sub = ((a + 0.75) - 0.75).to_bits() | sign;
    let r = if a < F16_MIN_NORMAL { sub } else { normal };
    let r = if a >= F16_OVERFLOW {
        0x7F80_0000 | sign
    } else {
        r
    };
    if x.is_nan() {
        x
    } else {
        f32::from_bits(r)
    }
}

/// `x as bf16 as f32` with round to nearest even (Eigen's `bfloat16` conversion): the
/// 16 low mantissa bits rounded away (`+ 0x7FFF + lsb`; near the f32 maximum the carry
/// gives ±∞, as the conversion does); NaN unchanged.
pub fn round_bf16(x: f32) -> f32 {
    let u = x.to_bits();
    let r = u.wrapping_add(0x7FFF + ((u >> 16) & 1)) & 0xFFFF_0000;
    if x.is_nan() {
        x
    } else {
        f32::from_bits(r)
    }
}

/// An IEEE half (bits `h`) widened to f32, exactly, in the sequence the JIT emits
/// lane-wise, with no subnormal float operand anywhere (x86 takes a microcode assist of
/// ~100 cycles per subnormal operand) and five constants (an unrolled LC tile keeps them
/// in registers beside its accumulators): the 15 magnitude bits moved to the f32 exponent
/// and mantissa (`<< 13`) and the exponent rebiased by `+ 112 << 23`, which is the value
/// `f` for normal halves; zero and subnormal halves (exponent 0) give
/// `f = 2^-15 + m·2^-25` there, so `2·(f − 2^-15) = m·2^-24` (both steps exact), and they
/// are the ones with `f − 2^-15 < 2^-15`; exponent 31 (±∞, NaN) gives `f ≥ 2^16`, and
/// gets the f32 exponent 255 with the mantissa kept; the sign is put back last.
pub fn widen_f16(h: u16) -> f32 {
    let h = u32::from(h);
    let mag = h & 0x7FFF;
    let sign = h ^ mag;
    let bits = (mag << 13) + F16_NORMAL_BIAS;
    let f = f32::from_bits(bits);
    let d = f - F16_HALF_MIN_NORMAL;
    let r = if f >= F16_SPECIAL {
        bits | 0x7F80_0000
    } else if d < F16_HALF_MIN_NORMAL {
        (d + d).to_bits()
    } else {
        bits
    };
    f32::from_bits(r | (sign << 16))
}

/// `(127 − 15) << 23`: moves a half's exponent field, shifted into place, to f32's bias.
pub const F16_NORMAL_BIAS: u32 = 112 << 23;
/// `2^-15`, half the smallest normal half.
pub const F16_HALF_MIN_NORMAL: f32 = 3.051_757_8e-5;
/// `2^16`: rebiased, a half with exponent 31 (±∞, NaN) is at least this.
pub const F16_SPECIAL: f32 = 65536.0;

/// `x` stored as IEEE half bits, rounded to nearest even (what [`round_f16`] computes;
/// NaN stays NaN).
pub fn narrow_f16(x: f32) -> u16 {
    half::f16::from_f32(x).to_bits()
}

/// `x` stored as bfloat16 bits, rounded to nearest even (what [`round_bf16`] computes;
/// NaN stays NaN).
pub fn narrow_bf16(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// Lower clamp of [`exp`]'s argument: `n = −150` there, so `p·2^n` rounds to 0 (and the
/// subnormal results above it are gradual underflow, one rounding in the last multiply).
pub const EXP_LO: f32 = -104.0;
/// Upper clamp of [`exp`]'s argument: `n = 128` there and `p > 1`, so `p·2^n` overflows to
/// `+∞`, as `e^x` does from 88.73 on.
pub const EXP_HI: f32 = 88.8;

/// `e^x`: range reduction `x = n·ln2 + r`, a degree-7 polynomial in `r`, and `2^n` as
/// the product of two powers of two built from exponent bits. Inputs are clamped to
/// `[−104, 88.8]`, a range whose ends already give 0 and `+∞`, so `e^{±∞}` is exact and NaN
/// passes through (`clamp` keeps NaN, the integer conversion of NaN is 0, the result NaN).
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_LO, EXP_HI);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_HI, x);
    let r = (-n).mul_add(LN2_LO, r);
    // Taylor coefficients 1/k!, Horner with FMA.
    let mut p = 1.0 / 5040.0f32;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n for n in [-150, 128]: split in two factors (each in [-75, 64], a normal f32) so
    // both ends stay representable; the final product rounds once into the subnormals.
    let n = n as i32;
    let n1 = n >> 1;
    let n2 = n - n1;
    let s1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let s2 = f32::from_bits(((n2 + 127) as u32) << 23);
    p * s1 * s2
}

/// `ln(x)` for `x > 0`: `x = m·2^e` with `m` in `[√½, √2)`, then a polynomial of
/// `f = m − 1` (Cephes `logf` coefficients). `x ≤ 0` gives NaN or −∞ as usual.
pub fn ln(x: f32) -> f32 {
    if x.is_nan() || x < 0.0 {
        return f32::NAN;
    }
    if x == 0.0 {
        return f32::NEG_INFINITY;
    }
    if x.is_infinite() {
        return x;
    }
    // Subnormals: scale up first (exact).
    let (x, bias) = if x < f32::MIN_POSITIVE {
        (x * 8_388_608.0, -23.0f32)
    } else {
        (x, 0.0)
    };
    let bits = x.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32 + bias;
    let mut m = f32::from_bits((bits & 0x007f_ffff) | 0x3f80_0000);
    if m > std::f32::consts::SQRT_2 {
        m *= 0.5;
        e += 1.0;
    }
    let f = m - 1.0;
    let z = f * f;
    let mut p = 7.037_683_6e-2f32;
    for c in [
        -1.151_461e-1,
        1.167_699_9e-1,
        -1.242_014_1e-1,
        1.424_932_3e-1,
        -1.666_805_8e-1,
        2.000_071_5e-1,
        -2.499_999_4e-1,
        3.333_333e-1,
    ] {
        p = p.mul_add(f, c);
    }
    let y = p * f * z;
    let y = e.mul_add(-2.121_944_4e-4, y);
    let y = (-0.5f32).mul_add(z, y);
    let r = f + y;
    e.mul_add(0.693_359_4, r)
}

/// `tanh(x) = sign(x)·(1 − 2/(e^{2|x|} + 1))`.
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let e = exp(2.0 * a);
    let t = 1.0 - 2.0 / (e + 1.0);
    if x < 0.0 {
        -t
    } else {
        t
    }
}

/// `1 / (1 + e^{−x})`.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `erf(x)`: Abramowitz & Stegun 7.1.26 on `|x|` with the sign restored (absolute error
/// ≤ 1.5e-7 in exact arithmetic, ≤ 5e-7 in f32).
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / 0.327_591_1f32.mul_add(a, 1.0);
    let mut p = 1.061_405_4f32;
    p = p.mul_add(t, -1.453_152_1);
    p = p.mul_add(t, 1.421_413_7);
    p = p.mul_add(t, -0.284_496_74);
    p = p.mul_add(t, 0.254_829_6);
    let y = 1.0 - p * t * exp(-a * a);
    if x < 0.0 {
        -y
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit patterns covering every exponent, mantissa edges (ties, carries) and specials.
    fn patterns() -> impl Iterator<Item = f32> {
        (0u32..=0xFFFF)
            .flat_map(|hi| {
                [
                    0u32, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFF, 0x3000, 0x7FFF, 0x8000, 0x8001, 0xFFFF,
                ]
                .into_iter()
                .map(move |lo| (hi << 16) | lo)
            })
            .map(f32::from_bits)
    }

    #[test]
    fn round_f16_is_the_half_conversion() {
        for x in patterns() {
            let want = half::f16::from_f32(x).to_f32();
            let got = round_f16(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e} ({:#x}): {got:e} vs {want:e}",
                x.to_bits()
            );
        }
    }

    #[test]
    fn round_bf16_is_the_bfloat16_conversion() {
        for x in patterns() {
            let want = half::bf16::from_f32(x).to_f32();
            let got = round_bf16(x);
            assert!(
                got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()),
                "{x:e}: {got:e} vs {want:e}"
            );
        }
    }

    fn ulp_diff(a: f32, b: f64) -> f64 {
        let b32 = b as f32;
        let ulp = (f32::from_bits(b32.abs().to_bits() + 1) - b32.abs()) as f64;
        ((a as f64) - b).abs() / ulp
    }

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            worst = worst.max(ulp_diff(exp(x), (x as f64).exp()));
            x += 0.0137;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn ln_is_within_two_ulp() {
        let mut worst = 0.0f64;
        let mut x = 1e-30f32;
        while x < 1e30 {
            worst = worst.max(ulp_diff(ln(x), (x as f64).ln()));
            x *= 1.0137;
        }
        assert!(worst <= 2.0, "worst {worst} ulp");
        assert!(ln(-1.0).is_nan());
        assert_eq!(ln(0.0), f32::NEG_INFINITY);
    }

    #[test]
    fn tanh_sigmoid_erf_absolute_error() {
        let mut x = -12.0f32;
        while x < 12.0 {
            let xd = x as f64;
            assert!((tanh(x) as f64 - xd.tanh()).abs() < 2e-7, "tanh {x}");
            assert!(
                (sigmoid(x) as f64 - 1.0 / (1.0 + (-xd).exp())).abs() < 2e-7,
                "sigmoid {x}"
            );
            x += 0.0173;
        }
        // erf reference values (Abramowitz & Stegun tables).
        for (x, want) in [
            (0.5f32, 0.520_499_877_8f64),
            (1.0, 0.842_700_792_9),
            (2.0, 0.995_322_265),
        ] {
            assert!((erf(x) as f64 - want).abs() < 5e-7);
            assert!((erf(-x) as f64 + want).abs() < 5e-7);
        }
    }

    #[test]
    fn widen_f16_is_the_half_conversion_for_every_half() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = widen_f16(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#06x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#06x}");
            }
        }
        assert_eq!(F16_HALF_MIN_NORMAL, 2f32.powi(-15));
        assert_eq!(F16_SPECIAL, 2f32.powi(16));
    }

    #[test]
    fn narrowing_then_widening_is_rounding() {
        let xs = [
            0.0f32,
            -0.0,
            1.0,
            -2.5e-7,
            3.1e-5,
            65519.0,
            65520.0,
            1e30,
            -1e-40,
            f32::MAX,
        ];
        for &x in xs.iter().chain(&[0.1f32, 1.0 / 3.0, -7.77e-3]) {
            assert_eq!(
                widen_f16(narrow_f16(x)).to_bits(),
                round_f16(x).to_bits(),
                "{x}"
            );
            let b = f32::from_bits(u32::from(narrow_bf16(x)) << 16);
            assert_eq!(b.to_bits(), round_bf16(x).to_bits(), "{x}");
        }
        assert!(widen_f16(narrow_f16(f32::NAN)).is_nan());
        assert!(f32::from_bits(u32::from(narrow_bf16(f32::NAN)) << 16).is_nan());
    }
}
