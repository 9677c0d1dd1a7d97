//! The loop-IR verifier: proves every load and store in bounds and rejects ill-formed
//! programs, listing all violations.
//!
//! The JIT emits unchecked memory accesses; this verifier is what makes that safe. Bounds
//! are proved by interval arithmetic: each loop variable ranges over `[0, extent)`, and
//! inside an `If` a guarded affine expression `g` ranges over `[lo, hi)`. When an index
//! contains `m·g` exactly (every term of `g` scaled by the same `m`), that part is bounded
//! by the guard instead of by the loop ranges, which is how clipped windows and padding
//! are proved safe.
//!
//! Structural rules: variables are bound once and used only inside their loop; only a
//! kernel's top-level loop may be `Parallel`, and then it is the kernel's only top-level
//! statement (each thread runs a contiguous range of its iterations); `Vector(w)` loops are innermost, have
//! extents divisible by `w`, and carry no `If` on their variable; in buffer loads their
//! variable may have any coefficient (0 broadcast, 1 contiguous lanes, other strided
//! lanes: a gather), in buffer stores any non-zero one (1 contiguous, other a scatter
//! to distinct elements), in local tiles only 0 or 1 (1 in the local stores); `Unroll(n)`
//! extents are divisible by `n`; local tiles are indexed only by `Vector` variables and
//! fully unrolled variables, so they can live in registers.

use super::{Affine, Expr, Kernel, LoopKind, Module, Stmt, Var};
use crate::error::{Error, Result};

/// What is bound at the statement being checked. One scope per kernel is updated in place
/// as the walk enters and leaves loops and guards (never cloned), so verification is
/// linear in the program size even for kernels with many variables.
struct Scope {
    /// Per variable: `Some((extent, kind))` while bound.
    vars: Vec<Option<(u64, LoopKind)>>,
    guards: Vec<(Affine, i64, i64)>,
    in_vector: Option<Var>,
}

/// Interval of `a` with each guard `lo ≤ g < hi` substituted, in the order `guards`
/// yields them, where `a` still holds an exact multiple of `g`, the rest bounded by the
/// loop ranges in `vars`.
fn range_with_guards<'g>(
    a: &Affine,
    vars: &[Option<(u64, LoopKind)>],
    guards: impl Iterator<Item = &'g (Affine, i64, i64)>,
) -> std::result::Result<(i128, i128), String> {
    let mut rest = a.clone();
    let (mut lo, mut hi) = (0i128, 0i128);
    for (g, glo, ghi) in guards {
        let Some(&(v0, c0)) = g.terms.first() else {
            continue;
        };
        let rc = rest.coef(v0);
        if rc == 0 || rc % c0 != 0 {
            continue;
        }
        let m = rc / c0;
        if g.terms.iter().all(|&(v, c)| rest.coef(v) == m * c) {
            rest = rest.plus_affine(&g.clone().scale(-m));
            let (a1, a2) = (m as i128 * *glo as i128, m as i128 * (*ghi as i128 - 1));
            lo += a1.min(a2);
            hi += a1.max(a2);
        }
    }
    lo += rest.offset as i128;
    hi += rest.offset as i128;
    for &(v, c) in &rest.terms {
        let Some(Some((extent, _))) = vars.get(v as usize) else {
            return Err(format!("variable v{v} used outside its loop"));
        };
        let top = c as i128 * (*extent as i128 - 1);
        lo += top.min(0);
        hi += top.max(0);
    }
    Ok((lo, hi))
}

struct Ctx<'a> {
    module: &'a Module,
    kernel: &'a Kernel,
    errs: Vec<String>,
    bound: Vec<bool>,
}

impl Ctx<'_> {
    fn err(&mut self, msg: String) {
        self.errs
            .push(format!("kernel {}: {msg}", self.kernel.name));
    }

    /// Interval `[min, max]` of `a` under `scope`, or an error string: the intersection
    /// of the bound from loop ranges alone and the bounds with guards substituted, each
    /// guard first in turn and then the others innermost first. Each bound is sound and
    /// each is tight for different indices: a guard substituted first takes the
    /// variables it shares with a later one, as the `dx` gather's kernel-range guard
    /// `8·i0` takes `i0` from the output guard `i0 + u0` of an index
    /// `16·(i0 + u0) + …`. An empty intersection means the guards never all hold.
    fn range(&self, a: &Affine, scope: &Scope) -> std::result::Result<(i128, i128), String> {
        let (mut lo, mut hi) = range_with_guards(a, &scope.vars, [].iter())?;
        let g = &scope.guards;
        for first in (0..g.len()).rev() {
            let order = std::iter::once(&g[first]).chain(
                g.iter()
                    .enumerate()
                    .rev()
                    .filter(|(j, _)| *j != first)
                    .map(|(_, x)| x),
            );
            let (l, h) = range_with_guards(a, &scope.vars, order)?;
            lo = lo.max(l);
            hi = hi.min(h);
        }
        Ok((lo, hi))
    }

    /// Bounds of index `a` of a `len`-element buffer or local, and its use of the vector
    /// variable: `local` tiles take coefficient 0 or 1 (1 when stored to), buffers any
    /// coefficient in loads (strided lanes are gathered) and a non-zero one in stores.
    fn check_index(
        &mut self,
        what: &str,
        a: &Affine,
        len: usize,
        scope: &Scope,
        store: bool,
        local: bool,
    ) {
        match self.range(a, scope) {
            Ok((lo, hi)) => {
                if lo < 0 || hi >= len as i128 {
                    self.err(format!(
                        "{what} index {} ranges over [{lo}, {hi}], outside [0, {len})",
                        super::print::affine_text(a, &self.kernel.var_names)
                    ));
                }
            }
            Err(e) => self.err(format!("{what}: {e}")),
        }
        if let Some(v) = scope.in_vector {
            let c = a.coef(v);
            if !local {
                if store && c == 0 {
                    self.err(format!(
                        "{what} inside vector loop v{v} does not depend on it (lanes would collide)"
                    ));
                }
            } else if store && c != 1 {
                self.err(format!(
                    "{what} inside vector loop v{v} must have coefficient 1 on it (has {c})"
                ));
            } else if !store && c != 0 && c != 1 {
                self.err(format!(
                    "{what} uses vector variable v{v} with coefficient {c} (only 0 or 1)"
                ));
            }
        }
    }

    fn check_local_index(&mut self, local: u32, a: &Affine, scope: &Scope, store: bool) {
        let Some(l) = self.kernel.locals.get(local as usize) else {
            self.err(format!("local {local} does not exist"));
            return;
        };
        let len = l.len;
        for &(v, _) in &a.terms {
            match scope.vars.get(v as usize) {
                Some(Some((_, LoopKind::Vector(_)))) => {}
                Some(Some((e, LoopKind::Unroll(n)))) if *e == *n as u64 => {}
                _ => self.err(format!(
                    "local {local} indexed by v{v}, which is neither a vector nor a fully unrolled loop"
                )),
            }
        }
        self.check_index(&format!("local {local}"), a, len, scope, store, true);
    }

    fn expr(&mut self, e: &Expr, scope: &Scope) {
        match e {
            Expr::Const(_) => {}
            Expr::Load { buf, index } => match self.module.buffers.get(*buf as usize) {
                Some(b) => {
                    let len = b.len;
                    self.check_index(
                        &format!("load of buffer {buf}"),
                        index,
                        len,
                        scope,
                        false,
                        false,
                    )
                }
                None => self.err(format!("buffer {buf} does not exist")),
            },
            Expr::LoadLocal { local, index } => self.check_local_index(*local, index, scope, false),
            Expr::Unary(_, a) => self.expr(a, scope),
            Expr::Binary(_, a, b) => {
                self.expr(a, scope);
                self.expr(b, scope);
            }
            Expr::Fma(a, b, c) => {
                self.expr(a, scope);
                self.expr(b, scope);
                self.expr(c, scope);
            }
            Expr::Select { a, b, t, f, .. } => {
                for x in [a, b, t, f] {
                    self.expr(x, scope);
                }
            }
        }
    }

    fn stmts(&mut self, stmts: &[Stmt], scope: &mut Scope, top: bool) {
        for s in stmts {
            match s {
                Stmt::For {
                    var,
                    extent,
                    kind,
                    body,
                } => {
                    let v = *var as usize;
                    if v >= self.bound.len() {
                        self.err(format!("loop variable v{var} is not declared"));
                        continue;
                    }
                    if self.bound[v] {
                        self.err(format!("loop variable v{var} is bound twice"));
                    }
                    self.bound[v] = true;
                    if *extent == 0 {
                        self.err(format!("loop v{var} has extent 0"));
                    }
                    if scope.in_vector.is_some() {
                        self.err(format!("loop v{var} is nested inside a vector loop"));
                    }
                    if let LoopKind::Wide(_) = kind {
                        if let Err(why) = super::micro::match_nest(s) {
                            self.err(format!("wide loop v{var}: {why}"));
                        }
                    }
                    match kind {
                        LoopKind::Parallel if !top => {
                            self.err(format!("parallel loop v{var} is not a top-level loop"))
                        }
                        LoopKind::Vector(w) | LoopKind::Unroll(w)
                            if *w == 0 || extent % *w as u64 != 0 =>
                        {
                            self.err(format!(
                                "loop v{var}: extent {extent} is not a multiple of {w}"
                            ))
                        }
                        _ => {}
                    }
                    let (outer_var, outer_vector) = (scope.vars[v], scope.in_vector);
                    scope.vars[v] = Some((*extent, *kind));
                    if let LoopKind::Vector(_) = kind {
                        scope.in_vector = Some(*var);
                    }
                    self.stmts(body, scope, false);
                    scope.vars[v] = outer_var;
                    scope.in_vector = outer_vector;
                }
                Stmt::If { conds, body } => {
                    let depth = scope.guards.len();
                    for (a, _, _) in conds {
                        if let Some(v) = scope.in_vector {
                            if a.coef(v) != 0 {
                                self.err(format!("condition depends on vector variable v{v}"));
                            }
                        }
                        if let Err(e) = self.range(a, scope) {
                            self.err(format!("condition: {e}"));
                        }
                    }
                    // Conditions are ranged without one another (as written), then all
                    // guard the body.
                    scope
                        .guards
                        .extend(conds.iter().map(|(a, lo, hi)| (a.clone(), *lo, *hi)));
                    self.stmts(body, scope, false);
                    scope.guards.truncate(depth);
                }
                Stmt::Store { buf, index, value } => {
                    self.expr(value, scope);
                    match self.module.buffers.get(*buf as usize) {
                        Some(b) => {
                            let len = b.len;
                            // Inputs, parameters and constants are passed to native code
                            // as shared slices: no store may reach them.
                            if b.role.is_read_only() {
                                self.err(format!("store to read-only buffer {buf} ({})", b.name));
                            }
                            self.check_index(
                                &format!("store to buffer {buf}"),
                                index,
                                len,
                                scope,
                                true,
                                false,
                            )
                        }
                        None => self.err(format!("buffer {buf} does not exist")),
                    }
                }
                Stmt::SetLocal {
                    local,
                    index,
                    value,
                } => {
                    self.expr(value, scope);
                    self.check_local_index(*local, index, scope, true);
                }
            }
        }
    }
}

/// Verifies every kernel of `module`; all violations are listed in one
/// [`Error::Internal`].
pub fn verify(module: &Module) -> Result<()> {
    let mut errs = Vec::new();
    // 16-bit storage is a read-only format (stores are rejected below with every other
    // store to a read-only buffer).
    for (i, b) in module.buffers.iter().enumerate() {
        if b.dtype != crate::loop_ir::Dtype::F32 && !b.role.is_read_only() {
            errs.push(format!(
                "buffer {i} ({}) is stored in {} but is not read-only",
                b.name,
                b.dtype.name()
            ));
        }
    }
    for kernel in &module.kernels {
        let mut ctx = Ctx {
            module,
            kernel,
            errs: Vec::new(),
            bound: vec![false; kernel.vars as usize],
        };
        if kernel.var_names.len() != kernel.vars as usize {
            ctx.err("variable names do not match the variable count".into());
        }
        let mut scope = Scope {
            vars: vec![None; kernel.vars as usize],
            guards: Vec::new(),
            in_vector: None,
        };
        let parallel = kernel.body.iter().any(|s| {
            matches!(
                s,
                Stmt::For {
                    kind: LoopKind::Parallel,
                    ..
                }
            )
        });
        if parallel && kernel.body.len() != 1 {
            ctx.err("a parallel loop must be the kernel's only top-level statement".into());
        }
        ctx.stmts(&kernel.body, &mut scope, true);
        errs.extend(ctx.errs);
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "loop IR verifier found {} problem(s): {}",
            errs.len(),
            errs.join("; ")
        )))
    }
}
