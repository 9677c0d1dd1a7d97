//! Pre-passes over a kernel's statements that the emitter needs before it writes code:
//! which buffers are touched or stored, whether a vector loop indexes locals, and the
//! register layout of every local tile ([`LocalStore`]).
//!
//! Invariant: a local that is ever accessed as `f32x4` lanes gets groups aligned so that
//! every such access starts a group, over all values of the fully unrolled variables;
//! inconsistent alignments are an `Error::Internal` (the emitter never falls back to
//! memory).

use cranelift_codegen::ir::types;
use cranelift_frontend::{FunctionBuilder, Variable};

use super::emit::ice;
use crate::error::Result;
use crate::loop_ir::{Affine, BufId, Expr, Kernel, LoopKind, Stmt, Var};

/// Where a local tile lives.
pub(super) enum LocalStore {
    /// One `f32` variable per element (no vector access).
    Scalar(Vec<Variable>),
    /// `f32x4` variables; element `e` is lane `(e + shift) % 4` of group `(e + shift) / 4`.
    Groups { shift: i64, vars: Vec<Variable> },
}

/// Marks every buffer `stmts` load or store.
pub(super) fn mark_bufs(stmts: &[Stmt], used: &mut [bool]) {
    fn expr(e: &Expr, used: &mut [bool]) {
        match e {
            Expr::Load { buf, .. } => {
                if let Some(u) = used.get_mut(*buf as usize) {
                    *u = true;
                }
            }
            Expr::Const(_) | Expr::LoadLocal { .. } => {}
            Expr::Unary(_, a) => expr(a, used),
            Expr::Binary(_, a, b) => {
                expr(a, used);
                expr(b, used);
            }
            Expr::Fma(a, b, c) => [a, b, c].into_iter().for_each(|x| expr(x, used)),
            Expr::Select { a, b, t, f, .. } => [a, b, t, f].into_iter().for_each(|x| expr(x, used)),
        }
    }
    for s in stmts {
        match s {
            Stmt::For { body, .. } | Stmt::If { body, .. } => mark_bufs(body, used),
            Stmt::Store { buf, value, .. } => {
                if let Some(u) = used.get_mut(*buf as usize) {
                    *u = true;
                }
                expr(value, used);
            }
            Stmt::SetLocal { value, .. } => expr(value, used),
        }
    }
}

/// Lists every buffer `stmts` store to.
pub(super) fn stored_bufs(stmts: &[Stmt], out: &mut Vec<BufId>) {
    for s in stmts {
        match s {
            Stmt::For { body, .. } | Stmt::If { body, .. } => stored_bufs(body, out),
            Stmt::Store { buf, .. } => out.push(*buf),
            Stmt::SetLocal { .. } => {}
        }
    }
}

/// Whether `stmts` write a local anywhere.
pub(super) fn sets_locals(stmts: &[Stmt]) -> bool {
    stmts.iter().any(|s| match s {
        Stmt::For { body, .. } | Stmt::If { body, .. } => sets_locals(body),
        Stmt::Store { .. } => false,
        Stmt::SetLocal { .. } => true,
    })
}

/// Whether `stmts` index a local with `v` (such vector loops must be fully unrolled).
pub(super) fn local_uses_var(stmts: &[Stmt], v: Var) -> bool {
    fn expr(e: &Expr, v: Var) -> bool {
        match e {
            Expr::LoadLocal { index, .. } => index.coef(v) != 0,
            Expr::Const(_) | Expr::Load { .. } => false,
            Expr::Unary(_, a) => expr(a, v),
            Expr::Binary(_, a, b) => expr(a, v) || expr(b, v),
            Expr::Fma(a, b, c) => expr(a, v) || expr(b, v) || expr(c, v),
            Expr::Select { a, b, t, f, .. } => [a, b, t, f].iter().any(|x| expr(x, v)),
        }
    }
    stmts.iter().any(|s| match s {
        Stmt::For { body, .. } | Stmt::If { body, .. } => local_uses_var(body, v),
        Stmt::Store { value, .. } => expr(value, v),
        Stmt::SetLocal { index, value, .. } => index.coef(v) != 0 || expr(value, v),
    })
}

/// Decides each local's layout. A local read or written as lanes of a vector loop gets
/// `f32x4` groups aligned so that every vector access starts a group; the alignment is
/// the residue mod 4 of the lane-0 index over all values of the unrolled variables.
pub(super) fn plan_locals(b: &mut FunctionBuilder, kernel: &Kernel) -> Result<Vec<LocalStore>> {
    // residues[l]: bit r set when some vector access of local l starts at ≡ r (mod 4).
    let mut residues = vec![0u8; kernel.locals.len()];
    let mut extents = vec![0u64; kernel.vars as usize];
    collect_residues(&kernel.body, &mut extents, None, &mut residues);
    let mut out = Vec::with_capacity(kernel.locals.len());
    for (l, local) in kernel.locals.iter().enumerate() {
        let len = local.len as i64;
        out.push(match residues[l] {
            0 => LocalStore::Scalar((0..len).map(|_| b.declare_var(types::F32)).collect()),
            m if m.count_ones() == 1 => {
                let r = m.trailing_zeros() as i64;
                let shift = (4 - r) % 4;
                let groups = (len + shift + 3) / 4;
                LocalStore::Groups {
                    shift,
                    vars: (0..groups).map(|_| b.declare_var(types::F32X4)).collect(),
                }
            }
            _ => {
                return Err(ice(
                    kernel,
                    format!(
                        "local {} is accessed as vectors at inconsistent alignments",
                        local.name
                    ),
                ))
            }
        });
    }
    Ok(out)
}

fn collect_residues(stmts: &[Stmt], ext: &mut Vec<u64>, vec_var: Option<Var>, res: &mut [u8]) {
    fn residues_of(a: &Affine, ext: &[u64], v: Var) -> u8 {
        let mut set: u8 = 1 << a.offset.rem_euclid(4);
        for &(u, c) in &a.terms {
            if u == v {
                continue;
            }
            let n = ext.get(u as usize).copied().unwrap_or(1).min(4);
            let mut next = 0u8;
            for r in 0..4 {
                if set & (1 << r) != 0 {
                    for k in 0..n as i64 {
                        next |= 1 << (r + c * k).rem_euclid(4);
                    }
                }
            }
            set = next;
        }
        set
    }
    fn expr(e: &Expr, ext: &[u64], vv: Option<Var>, res: &mut [u8]) {
        match e {
            Expr::LoadLocal { local, index } => {
                if let (Some(v), Some(r)) = (vv, res.get_mut(*local as usize)) {
                    if index.coef(v) == 1 {
                        *r |= residues_of(index, ext, v);
                    }
                }
            }
            Expr::Const(_) | Expr::Load { .. } => {}
            Expr::Unary(_, a) => expr(a, ext, vv, res),
            Expr::Binary(_, a, b) => {
                expr(a, ext, vv, res);
                expr(b, ext, vv, res);
            }
            Expr::Fma(a, b, c) => [a, b, c].into_iter().for_each(|x| expr(x, ext, vv, res)),
            Expr::Select { a, b, t, f, .. } => {
                [a, b, t, f].into_iter().for_each(|x| expr(x, ext, vv, res))
            }
        }
    }
    for s in stmts {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                if let Some(e) = ext.get_mut(*var as usize) {
                    *e = *extent;
                }
                let vv = if matches!(kind, LoopKind::Vector(_)) {
                    Some(*var)
                } else {
                    vec_var
                };
                collect_residues(body, ext, vv, res);
            }
            Stmt::If { body, .. } => collect_residues(body, ext, vec_var, res),
            Stmt::Store { value, .. } => expr(value, ext, vec_var, res),
            Stmt::SetLocal {
                local,
                index,
                value,
            } => {
                expr(value, ext, vec_var, res);
                if let (Some(v), Some(r)) = (vec_var, res.get_mut(*local as usize)) {
                    if index.coef(v) == 1 {
                        *r |= residues_of(index, ext, v);
                    }
                }
            }
        }
    }
}
