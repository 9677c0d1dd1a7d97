//! The Cranelift side of the wide tier: which `wide(tier)` loops of a kernel get a
//! microkernel ([`plan_wide`], run before the kernel is emitted), and the call that
//! replaces such a loop in the kernel ([`Emitter::wide_call`]).
//!
//! A wide loop runs as a microkernel only when code generation allows it
//! ([`super::CodegenOptions::f32x4_only`] unset), multiply-adds are fused (the microkernel always
//! fuses), the target ISA has the tier's features and the System V convention, and the
//! assembler accepts the nest; otherwise the emitter runs it as a serial f32x4 loop, which
//! computes the same bits. Microkernels are defined in the same Cranelift module as the
//! kernels (`define_function_bytes`), so the JIT and object files carry the same code.

use std::collections::HashMap;

use cranelift_codegen::ir::{
    types, AbiParam, ExtFuncData, ExternalName, FuncRef, Function, InstBuilder, Signature,
    StackSlotData, StackSlotKind, UserExternalName,
};
use cranelift_codegen::isa::{CallConv, TargetIsa};
use cranelift_module::{Linkage, Module as ClifModule};

use super::codegen::clif_err;
use super::emit::{ice, Emitter};
use super::prescan::LocalStore;
use super::wide::assemble;
use crate::error::Result;
use crate::loop_ir::micro::{match_nest, zeroes_tile, MicroNest, Tier};
use crate::loop_ir::{Dtype, Kernel, LoopKind, Module, Stmt};

/// One microkernel call: the function, the nest it runs, and whether the statement
/// before the nest zeroes its tile (then the tile is not stored for the call: the
/// microkernel starts from zeroed registers).
pub(super) struct WideCall {
    pub f: FuncRef,
    pub nest: MicroNest,
    pub zero: bool,
}

/// The microkernels of one kernel, by the address of the `wide` statement they replace.
pub(super) type WideCalls = HashMap<usize, WideCall>;

/// The key of a statement in [`WideCalls`]: its address inside the kernel being emitted
/// (stable while the kernel is borrowed; unrolled copies of a body share it).
pub(super) fn stmt_key(s: &Stmt) -> usize {
    std::ptr::from_ref(s) as usize
}

/// Whether `isa` executes `tier`'s instructions. Cranelift 0.135 has no F16C flag; the
/// AVX2 microkernels' half-precision loads (`vcvtph2ps`) take it as implied by AVX2, as
/// on every AVX2 CPU (F16C came earlier: Intel Ivy Bridge, AMD Piledriver), and the
/// host's tier is checked for it too ([`super::host_has_tier`]).
pub(super) fn isa_has(isa: &dyn TargetIsa, tier: Tier) -> bool {
    let flag = |name: &str| {
        isa.isa_flags()
            .iter()
            .any(|v| v.name == name && v.as_bool() == Some(true))
    };
    isa.default_call_conv() == CallConv::SystemV
        && match tier {
            Tier::Avx2 => flag("has_avx2") && flag("has_fma"),
            Tier::Avx512 => flag("has_avx512f"),
        }
}

/// Defines a microkernel in `m` for every wide loop of `kernel` that gets one (see the
/// module docs), named `{name}w{j}`, and imports each into `func`.
pub(super) fn plan_wide<M: ClifModule>(
    m: &mut M,
    func: &mut Function,
    module: &Module,
    kernel: &Kernel,
    enabled: bool,
    name: &str,
) -> Result<WideCalls> {
    let mut calls = WideCalls::new();
    if !enabled {
        return Ok(calls);
    }
    let mut nests = Vec::new();
    wide_stmts(&kernel.body, &mut nests);
    for (s, prev) in nests {
        let Ok(nest) = match_nest(s) else {
            continue; // the verifier has rejected it already
        };
        let zero = prev.is_some_and(|p| zeroes_tile(p, &nest));
        let dtype_of = |buf: u32| {
            module
                .buffers
                .get(buf as usize)
                .map_or(Dtype::F32, |b| b.dtype)
        };
        let dtype = dtype_of(nest.vector.buf);
        // The broadcast operand is read as f32 (the schedules give 16-bit storage to
        // kernels, which are the vector operand); any other nest keeps its f32x4 code.
        if dtype_of(nest.bcast.buf) != Dtype::F32 || !isa_has(m.isa(), nest.tier) {
            continue;
        }
        let Ok(code) = assemble(&nest, dtype, zero) else {
            continue;
        };
        let ptr = m.isa().pointer_type();
        let mut sig = Signature::new(CallConv::SystemV);
        sig.params.extend([AbiParam::new(ptr); 3]);
        let id = m
            .declare_function(&format!("{name}w{}", calls.len()), Linkage::Local, &sig)
            .map_err(|e| clif_err(&kernel.name, "declare a microkernel", e))?;
        m.define_function_bytes(id, 64, &code, &[])
            .map_err(|e| clif_err(&kernel.name, "define a microkernel", e))?;
        // Not colocated: the call goes through the function's absolute address, so it
        // holds wherever the JIT places the microkernel.
        let sig = func.import_signature(sig);
        let user = func.declare_imported_user_function(UserExternalName::new(0, id.as_u32()));
        let f = func.import_function(ExtFuncData {
            name: ExternalName::user(user),
            signature: sig,
            colocated: false,
            patchable: false,
        });
        calls.insert(stmt_key(s), WideCall { f, nest, zero });
    }
    Ok(calls)
}

/// Every `wide` loop of `stmts`, in program order, with the statement before it.
fn wide_stmts<'a>(stmts: &'a [Stmt], out: &mut Vec<(&'a Stmt, Option<&'a Stmt>)>) {
    for (i, s) in stmts.iter().enumerate() {
        match s {
            Stmt::For {
                kind: LoopKind::Wide(_),
                ..
            } => out.push((s, i.checked_sub(1).map(|p| &stmts[p]))),
            Stmt::For { body, .. } | Stmt::If { body, .. } => wide_stmts(body, out),
            Stmt::Store { .. } | Stmt::SetLocal { .. } => {}
        }
    }
}

impl Emitter<'_, '_> {
    /// Runs a wide nest through its microkernel: the operands' first elements under the
    /// current bindings, the accumulator tile through a stack slot (the tile's f32x4
    /// variables are stored before the call, unless it starts from zero, and read back
    /// after it).
    pub(super) fn wide_call(&mut self, call: &WideCall) -> Result<()> {
        let (f, nest) = (call.f, &call.nest);
        let mut args = Vec::with_capacity(3);
        for op in [&nest.bcast, &nest.vector] {
            let (terms, c) = self.split(&nest.outer(&op.at))?;
            let (addr, off) = self.addr(op.buf, &terms, c)?;
            args.push(self.b.ins().iadd_imm_s(addr, i64::from(off)));
        }
        let (shift, vars) = match self.locals.get(nest.local as usize) {
            Some(LocalStore::Groups { shift, vars }) => (*shift, vars.clone()),
            _ => {
                return Err(ice(
                    self.kernel,
                    "a wide nest's tile is not in f32x4 groups",
                ))
            }
        };
        let size = u32::try_from(16 * vars.len())
            .map_err(|_| ice(self.kernel, "a wide nest's tile is too large"))?;
        let slot = self.b.create_sized_stack_slot(StackSlotData::new(
            StackSlotKind::ExplicitSlot,
            size,
            4,
        ));
        for (g, v) in vars.iter().enumerate().filter(|_| !call.zero) {
            let x = self.b.use_var(*v);
            self.b
                .ins()
                .stack_store(self.ptr_ty, x, slot, 16 * g as i32);
        }
        // Element e of the tile is lane (e + shift) % 4 of group (e + shift) / 4, i.e.
        // at byte 4·(e + shift) of the slot.
        let first = 4 * (shift + nest.local_at.offset);
        let first = i32::try_from(first).map_err(|_| ice(self.kernel, "tile offset"))?;
        args.push(self.b.ins().stack_addr(self.ptr_ty, slot, first));
        self.b.ins().call(f, &args);
        for (g, v) in vars.iter().enumerate() {
            let x = self
                .b
                .ins()
                .stack_load(self.ptr_ty, types::F32X4, slot, 16 * g as i32);
            self.b.def_var(*v, x);
        }
        Ok(())
    }
}
