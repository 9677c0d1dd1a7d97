//! Wide microkernels: the machine code of a `wide(avx2|avx512)` register-tile reduction
//! (see [`crate::loop_ir::micro`]), assembled with iced-x86 and called by the
//! Cranelift-compiled kernel through one function pointer.
//!
//! ABI (System V, every register used is caller-saved): `fn(bcast: *const f32,
//! vector: *const T, acc: *mut f32)`, where `bcast` and `vector` point at the operands'
//! elements with every variable of the nest at 0 (the caller's kernel folds the outer
//! loops into them), `T` is the vector operand's storage type, and `acc` points at the
//! accumulator tile's element `(row 0, lane 0)`, laid out as the loop IR indexes it
//! (`row_stride` elements between rows). The microkernel loads the tile (or zeroes it,
//! when the statement before the nest sets it to zero), runs the whole
//! reduction nest in loop order, stores the tile back and clears the upper register
//! halves (`vzeroupper`) before returning. With a prefetch distance it also hints, once
//! per cache line of each step's vector operands, the line that many elements further on
//! into L2 (`prefetcht1`: never faults, changes nothing but timing).
//!
//! Invariants: the code reads exactly the elements the loop IR's nest reads, in the same
//! order per accumulator element (one fused multiply-add per product, the reduction
//! loops' order), so its results are bitwise the interpreter's; it has no relocations
//! and only relative branches, so the same bytes serve the JIT and object files; every
//! displacement and step is range-checked here, and a nest that does not fit (too deep,
//! offsets past 32 bits) is reported so the caller emits the f32x4 loop instead.

use iced_x86::code_asm::registers::gpr64::{r10, r11, r8, r9, rax, rcx, rdi, rdx, rsi};
use iced_x86::code_asm::registers::ymm::*;
use iced_x86::code_asm::registers::zmm::*;
use iced_x86::code_asm::{
    byte_ptr, dword_bcst, dword_ptr, xmmword_ptr, ymmword_ptr, zmmword_ptr, AsmRegister64,
    AsmRegisterYmm, AsmRegisterZmm, CodeAssembler,
};

use crate::loop_ir::micro::{MicroNest, Tier};
use crate::loop_ir::Dtype;

/// Most unrolled copies of the innermost reduction loop's body.
const UNROLL_MAX: u64 = 8;

const ZMM: [AsmRegisterZmm; 32] = [
    zmm0, zmm1, zmm2, zmm3, zmm4, zmm5, zmm6, zmm7, zmm8, zmm9, zmm10, zmm11, zmm12, zmm13, zmm14,
    zmm15, zmm16, zmm17, zmm18, zmm19, zmm20, zmm21, zmm22, zmm23, zmm24, zmm25, zmm26, zmm27,
    zmm28, zmm29, zmm30, zmm31,
];
const YMM: [AsmRegisterYmm; 16] = [
    ymm0, ymm1, ymm2, ymm3, ymm4, ymm5, ymm6, ymm7, ymm8, ymm9, ymm10, ymm11, ymm12, ymm13, ymm14,
    ymm15,
];
/// Loop counters, outermost reduction loop first.
const COUNTERS: [AsmRegister64; 5] = [rax, rcx, r8, r9, r10];

/// Why a nest gets no microkernel (the caller then emits the f32x4 loop).
pub(super) type Refusal = String;

/// One reduction loop as the machine code walks it: trip count and the pointer steps
/// (bytes) of one iteration.
#[derive(Clone, Copy, Debug)]
struct Level {
    extent: u64,
    bcast_step: i64,
    vector_step: i64,
}

/// The constants of one microkernel.
struct Plan {
    tier: Tier,
    dtype: Dtype,
    rows: usize,
    /// Registers per row.
    regs: usize,
    /// Bytes between consecutive rows of the tile.
    acc_row: i64,
    /// Bytes between the broadcast operands of consecutive rows.
    bcast_row: i64,
    levels: Vec<Level>,
    unroll: u64,
    /// Bytes past each vector operand read to prefetch into L2 (0: none).
    prefetch: i64,
    /// Start from zeroed accumulators instead of loading the tile.
    zero: bool,
}

fn bytes(elems: i64, size: i64) -> Result<i64, Refusal> {
    elems
        .checked_mul(size)
        .filter(|b| i32::try_from(*b).is_ok())
        .ok_or_else(|| "an offset does not fit 32 bits".to_string())
}

impl Plan {
    fn new(nest: &MicroNest, dtype: Dtype, zero: bool) -> Result<Plan, Refusal> {
        let esz = dtype.bytes() as i64;
        if nest.reduction.len() > COUNTERS.len() {
            return Err(format!("more than {} reduction loops", COUNTERS.len()));
        }
        let levels = nest
            .reduction
            .iter()
            .map(|l| {
                Ok(Level {
                    extent: l.extent,
                    bcast_step: bytes(nest.bcast.at.coef(l.var), 4)?,
                    vector_step: bytes(nest.vector.at.coef(l.var), esz)?,
                })
            })
            .collect::<Result<Vec<_>, Refusal>>()?;
        if levels.iter().any(|l| i32::try_from(l.extent).is_err()) {
            return Err("a reduction loop longer than 2^31".into());
        }
        let inner = levels.last().map_or(1, |l| l.extent);
        let unroll = (1..=UNROLL_MAX.min(inner))
            .rev()
            .find(|u| inner.is_multiple_of(*u))
            .unwrap_or(1);
        let plan = Plan {
            tier: nest.tier,
            dtype,
            rows: nest.rows.extent as usize,
            regs: nest.lanes.extent as usize / nest.tier.lanes(),
            acc_row: bytes(nest.row_stride(), 4)?,
            bcast_row: bytes(nest.bcast.at.coef(nest.rows.var), 4)?,
            levels,
            unroll,
            // A distance past 32 bits is dropped (it is a hint), and so is any hint whose
            // displacement would not fit (see `step`).
            prefetch: nest
                .prefetch
                .checked_mul(esz)
                .filter(|b| i32::try_from(*b).is_ok())
                .unwrap_or(0),
            zero,
        };
        // Every displacement of the unrolled body and of the tile must fit 32 bits.
        let last = plan.levels.last().copied();
        // The largest displacement magnitude: each term at its extreme.
        let span = |step: i64, row: i64, rows: usize| {
            (unroll as i64 - 1).checked_mul(step.abs()).and_then(|a| {
                (rows as i64 - 1)
                    .checked_mul(row.abs())
                    .and_then(|b| a.checked_add(b))
            })
        };
        for d in [
            last.and_then(|l| span(l.bcast_step, plan.bcast_row, plan.rows)),
            last.and_then(|l| span(l.vector_step, 0, 1)),
            span(0, plan.acc_row, plan.rows),
        ] {
            match d {
                Some(d) if i32::try_from(d + 64 * plan.regs as i64).is_ok() => {}
                _ => return Err("a displacement does not fit 32 bits".into()),
            }
        }
        Ok(plan)
    }
}

/// Assembles the microkernel of `nest`, whose vector operand is stored as `dtype`; with
/// `zero`, it starts from a zeroed tile instead of loading it.
pub(super) fn assemble(nest: &MicroNest, dtype: Dtype, zero: bool) -> Result<Vec<u8>, Refusal> {
    let plan = Plan::new(nest, dtype, zero)?;
    let mut a = CodeAssembler::new(64).map_err(asm_err)?;
    Asm {
        a: &mut a,
        p: &plan,
    }
    .kernel()
    .map_err(asm_err)?;
    a.assemble(0).map_err(asm_err)
}

fn asm_err(e: iced_x86::IcedError) -> Refusal {
    format!("iced-x86: {e}")
}

type R = Result<(), iced_x86::IcedError>;

/// The assembler and the plan it follows.
struct Asm<'a> {
    a: &'a mut CodeAssembler,
    p: &'a Plan,
}

impl Asm<'_> {
    fn kernel(&mut self) -> R {
        if self.p.zero {
            self.zero_tile()?;
        } else {
            self.tile(false)?;
        }
        self.level(0)?;
        self.tile(true)?;
        self.a.vzeroupper()?;
        self.a.ret()
    }

    /// Accumulator register `(row, reg)`; the shared vectors follow the accumulators,
    /// then (AVX2) the broadcast.
    fn acc(&self, row: usize, reg: usize) -> usize {
        row * self.p.regs + reg
    }

    fn shared(&self, reg: usize) -> usize {
        self.p.rows * self.p.regs + reg
    }

    fn bcast_reg(&self) -> usize {
        self.p.rows * self.p.regs + self.p.regs
    }

    /// Zeroes every accumulator register (`+0.0` in every lane).
    fn zero_tile(&mut self) -> R {
        for row in 0..self.p.rows {
            for reg in 0..self.p.regs {
                let r = self.acc(row, reg);
                match self.p.tier {
                    Tier::Avx512 => self.a.vpxord(ZMM[r], ZMM[r], ZMM[r])?,
                    Tier::Avx2 => self.a.vxorps(YMM[r], YMM[r], YMM[r])?,
                }
            }
        }
        Ok(())
    }

    /// Loads (`store == false`) or stores the accumulator tile at `[rdx]`.
    fn tile(&mut self, store: bool) -> R {
        let width = 4 * self.p.tier.lanes() as i64;
        for row in 0..self.p.rows {
            for reg in 0..self.p.regs {
                let off = (row as i64 * self.p.acc_row + reg as i64 * width) as i32;
                let r = self.acc(row, reg);
                match (self.p.tier, store) {
                    (Tier::Avx512, false) => self.a.vmovups(ZMM[r], zmmword_ptr(rdx + off))?,
                    (Tier::Avx512, true) => self.a.vmovups(zmmword_ptr(rdx + off), ZMM[r])?,
                    (Tier::Avx2, false) => self.a.vmovups(YMM[r], ymmword_ptr(rdx + off))?,
                    (Tier::Avx2, true) => self.a.vmovups(ymmword_ptr(rdx + off), YMM[r])?,
                }
            }
        }
        Ok(())
    }

    /// Reduction loop `i` and everything inside it. Each iteration of loop `i` moves the
    /// operand pointers by exactly its steps: the inner loops' total movement is taken
    /// back at the end of each iteration.
    fn level(&mut self, i: usize) -> R {
        let lv = self.p.levels[i];
        let last = i + 1 == self.p.levels.len();
        let copies = if last { self.p.unroll } else { 1 };
        let ctr = COUNTERS[i];
        self.a.mov(ctr, (lv.extent / copies) as i64)?;
        let mut top = self.a.create_label();
        self.a.set_label(&mut top)?;
        let (db, dv) = if last {
            for k in 0..copies {
                self.step(k as i64 * lv.bcast_step, k as i64 * lv.vector_step)?;
            }
            (
                copies as i64 * lv.bcast_step,
                copies as i64 * lv.vector_step,
            )
        } else {
            self.level(i + 1)?;
            let inner = self.p.levels[i + 1];
            let n = inner.extent as i64;
            (
                lv.bcast_step - n * inner.bcast_step,
                lv.vector_step - n * inner.vector_step,
            )
        };
        self.advance(rdi, db)?;
        self.advance(rsi, dv)?;
        self.a.dec(ctr)?;
        self.a.jne(top)
    }

    /// `reg += by` (bytes); steps past 32 bits go through `r11`.
    fn advance(&mut self, reg: AsmRegister64, by: i64) -> R {
        match i32::try_from(by) {
            Ok(0) => Ok(()),
            Ok(b) => self.a.add(reg, b),
            Err(_) => {
                self.a.mov(r11, by)?;
                self.a.add(reg, r11)
            }
        }
    }

    /// One product step of every accumulator: the shared vectors at `[rsi + vo]`, the
    /// broadcasts at `[rdi + bo + row·bcast_row]`.
    fn step(&mut self, bo: i64, vo: i64) -> R {
        let p = self.p;
        let vbytes = (p.tier.lanes() * p.dtype.bytes()) as i64;
        for reg in 0..p.regs {
            let off = (vo + reg as i64 * vbytes) as i32;
            let s = self.shared(reg);
            match (p.tier, p.dtype) {
                (Tier::Avx512, Dtype::F32) => self.a.vmovups(ZMM[s], zmmword_ptr(rsi + off))?,
                (Tier::Avx512, Dtype::Bf16) => {
                    self.a.vpmovzxwd(ZMM[s], ymmword_ptr(rsi + off))?;
                    self.a.vpslld(ZMM[s], ZMM[s], 16)?;
                }
                (Tier::Avx512, Dtype::F16) => self.a.vcvtph2ps(ZMM[s], ymmword_ptr(rsi + off))?,
                (Tier::Avx2, Dtype::F32) => self.a.vmovups(YMM[s], ymmword_ptr(rsi + off))?,
                (Tier::Avx2, Dtype::Bf16) => {
                    self.a.vpmovzxwd(YMM[s], xmmword_ptr(rsi + off))?;
                    self.a.vpslld(YMM[s], YMM[s], 16)?;
                }
                (Tier::Avx2, Dtype::F16) => self.a.vcvtph2ps(YMM[s], xmmword_ptr(rsi + off))?,
            }
        }
        if p.prefetch != 0 {
            // One hint per cache line of this step's shared vectors.
            let lines = (p.regs as i64 * vbytes + 63) / 64;
            for line in 0..lines {
                if let Ok(off) = i32::try_from(vo + 64 * line + p.prefetch) {
                    self.a.prefetcht1(byte_ptr(rsi + off))?;
                }
            }
        }
        for row in 0..p.rows {
            let off = (bo + row as i64 * p.bcast_row) as i32;
            match p.tier {
                Tier::Avx512 => {
                    for reg in 0..p.regs {
                        let (acc, s) = (self.acc(row, reg), self.shared(reg));
                        self.a
                            .vfmadd231ps(ZMM[acc], ZMM[s], dword_bcst(rdi + off))?;
                    }
                }
                Tier::Avx2 => {
                    let b = self.bcast_reg();
                    self.a.vbroadcastss(YMM[b], dword_ptr(rdi + off))?;
                    for reg in 0..p.regs {
                        let (acc, s) = (self.acc(row, reg), self.shared(reg));
                        self.a.vfmadd231ps(YMM[acc], YMM[s], YMM[b])?;
                    }
                }
            }
        }
        Ok(())
    }
}
