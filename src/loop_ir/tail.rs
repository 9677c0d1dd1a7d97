//! Vector loops over lengths that 4 does not divide: f32x4 lanes over the first
//! `⌊n/4⌋·4` elements and a scalar tail loop running the same body, shifted, over the
//! rest ([`lanes_with_tail`]).
//!
//! Invariant: every element runs the same statements, in the same order, as under one
//! serial loop.

use super::{for_, Affine, Expr, LoopKind, Stmt, Var};

/// `stmts` with variable `from` replaced by `to + offset` in every index and condition
/// (the tail loop of a vectorised loop whose extent is not a multiple of 4 runs the same
/// body from element `offset` on).
fn shift_var(stmts: &[Stmt], from: Var, to: Var, offset: i64) -> Vec<Stmt> {
    let aff = |a: &Affine| {
        let c = a.coef(from);
        a.clone()
            .plus_term(from, -c)
            .plus_term(to, c)
            .plus(c * offset)
    };
    fn expr(e: &Expr, aff: &dyn Fn(&Affine) -> Affine) -> Expr {
        let bx = |e: &Expr| Box::new(expr(e, aff));
        match e {
            Expr::Const(v) => Expr::Const(*v),
            Expr::Load { buf, index } => Expr::Load {
                buf: *buf,
                index: aff(index),
            },
            Expr::LoadLocal { local, index } => Expr::LoadLocal {
                local: *local,
                index: aff(index),
            },
            Expr::Unary(op, a) => Expr::Unary(*op, bx(a)),
            Expr::Binary(op, a, b) => Expr::Binary(*op, bx(a), bx(b)),
            Expr::Fma(a, b, c) => Expr::Fma(bx(a), bx(b), bx(c)),
            Expr::Select { cmp, a, b, t, f } => Expr::Select {
                cmp: *cmp,
                a: bx(a),
                b: bx(b),
                t: bx(t),
                f: bx(f),
            },
        }
    }
    fn stmt(s: &Stmt, aff: &dyn Fn(&Affine) -> Affine) -> Stmt {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => Stmt::For {
                var: *var,
                extent: *extent,
                kind: *kind,
                body: body.iter().map(|s| stmt(s, aff)).collect(),
            },
            Stmt::If { conds, body } => Stmt::If {
                conds: conds.iter().map(|(a, lo, hi)| (aff(a), *lo, *hi)).collect(),
                body: body.iter().map(|s| stmt(s, aff)).collect(),
            },
            Stmt::Store { buf, index, value } => Stmt::Store {
                buf: *buf,
                index: aff(index),
                value: expr(value, aff),
            },
            Stmt::SetLocal {
                local,
                index,
                value,
            } => Stmt::SetLocal {
                local: *local,
                index: aff(index),
                value: expr(value, aff),
            },
        }
    }
    stmts.iter().map(|s| stmt(s, &aff)).collect()
}

/// `for e in 0..len { body }` over a contiguous axis: f32x4 lanes over its first
/// `⌊len/4⌋·4` elements and, when 4 does not divide `len`, a scalar tail loop over the
/// rest (variable `tail`, the body shifted by [`shift_var`]). Every element runs the same
/// statements in the same order as a serial loop.
pub fn lanes_with_tail(e: Var, tail: Var, len: usize, body: Vec<Stmt>) -> Vec<Stmt> {
    let main = len / 4 * 4;
    if main == len {
        return vec![for_(e, len as u64, LoopKind::Vector(4), body)];
    }
    if main == 0 {
        return vec![for_(e, len as u64, LoopKind::Serial, body)];
    }
    let shifted = shift_var(&body, e, tail, main as i64);
    vec![
        for_(e, main as u64, LoopKind::Vector(4), body),
        for_(tail, (len - main) as u64, LoopKind::Serial, shifted),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loop_ir::{load, KernelBuilder};

    /// Ten elements: lanes over 0..8, then the tail's body reads and writes 8 + t.
    #[test]
    fn the_tail_runs_the_body_shifted() {
        let mut kb = KernelBuilder::new("t");
        let (e, t) = (kb.var("e"), kb.var("t"));
        let (src, dst): (crate::loop_ir::BufId, crate::loop_ir::BufId) = (0, 1);
        let body = vec![Stmt::Store {
            buf: dst,
            index: Affine::var(e).plus(3),
            value: load(src, Affine::var(e).scale(2)),
        }];
        let loops = lanes_with_tail(e, t, 10, body.clone());
        let want_tail = Stmt::Store {
            buf: dst,
            index: Affine::var(t).plus(11),
            value: load(src, Affine::var(t).scale(2).plus(16)),
        };
        assert_eq!(
            loops,
            vec![
                for_(e, 8, LoopKind::Vector(4), body.clone()),
                for_(t, 2, LoopKind::Serial, vec![want_tail]),
            ]
        );
        assert_eq!(lanes_with_tail(e, t, 8, body.clone()).len(), 1);
        assert_eq!(
            lanes_with_tail(e, t, 3, body.clone()),
            vec![for_(e, 3, LoopKind::Serial, body)]
        );
    }
}
