//! The element program of the compiled update: per parameter, the kernels that apply the
//! optimizer's rule to every element, in exactly the host's operation order (see the
//! parent module's docs).

use super::*;
use crate::train::optimizer::eps_outside_root;

/// Builds the element program of one parameter.
pub(super) struct Rule<'a> {
    pub(super) config: &'a OptimizerConfig,
    pub(super) clip: ClipKind,
    pub(super) h_clip: usize,
    /// Index among the trainable parameters.
    pub(super) k: usize,
    /// The hyper buffer.
    pub(super) hyper: BufId,
    pub(super) pb: ParamBufs,
}

/// Statements of one element being built: buffer index `ix`, local lane `lane`.
struct Elem<'k> {
    kb: &'k mut KernelBuilder,
    ix: Affine,
    lane: Affine,
    out: Vec<Stmt>,
    /// Buffers read so far, and the local holding each one's element.
    loaded: Vec<(BufId, Expr)>,
}

impl Elem<'_> {
    /// Loads `buf[ix]` of each buffer of `bufs` once into a local register: the rules
    /// read the weight and each slot several times, and the code generator does not
    /// merge repeated loads. Every rule stores a buffer only after its last read, so the
    /// values are the same.
    fn preload(&mut self, bufs: &[(BufId, String)]) {
        for (b, name) in bufs {
            let e = self.let_(name, load(*b, self.ix.clone()));
            self.loaded.push((*b, e));
        }
    }

    /// `buf[ix]` (its preloaded local, else a load).
    fn buf(&self, b: BufId) -> Expr {
        match self.loaded.iter().find(|(k, _)| *k == b) {
            Some((_, e)) => e.clone(),
            None => load(b, self.ix.clone()),
        }
    }

    /// Computes `e` once into a fresh local register and returns its read.
    fn let_(&mut self, name: &str, e: Expr) -> Expr {
        let l = self.kb.local(name, 4);
        self.out.push(Stmt::SetLocal {
            local: l,
            index: self.lane.clone(),
            value: e,
        });
        load_local(l, self.lane.clone())
    }

    /// `buf[ix] = e`.
    fn store(&mut self, b: BufId, e: Expr) {
        self.out.push(Stmt::Store {
            buf: b,
            index: self.ix.clone(),
            value: e,
        });
    }
}

fn k(c: f32) -> Expr {
    Expr::Const(c)
}
fn add(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Add, a, b)
}
fn sub(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Sub, a, b)
}
fn mul(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Mul, a, b)
}
fn div(a: Expr, b: Expr) -> Expr {
    bin(BinOp::Div, a, b)
}
fn neg(a: Expr) -> Expr {
    un(UnOp::Neg, a)
}
fn sqrt(a: Expr) -> Expr {
    un(UnOp::Sqrt, a)
}
fn select(cmp: CmpOp, a: Expr, b: Expr, t: Expr, f: Expr) -> Expr {
    Expr::Select {
        cmp,
        a: Box::new(a),
        b: Box::new(b),
        t: Box::new(t),
        f: Box::new(f),
    }
}

/// `f32::max(a, b)` (maxNum: a NaN operand yields the other): `a` is not NaN exactly when
/// `a ≥ a`; then `a < b ? b : a` (which gives `a` when `b` is NaN).
fn maxnum(a: Expr, b: Expr) -> Expr {
    let inner = select(CmpOp::Lt, a.clone(), b.clone(), b.clone(), a.clone());
    select(CmpOp::Ge, a.clone(), a, inner, b)
}

/// `f32::clamp(x, −c, c)`: `if x < −c { −c }`, then `if x > c { c }` (NaN passes).
fn clamp(e: &mut Elem, x: Expr, c: f32) -> Expr {
    let lo = e.let_("g_lo", select(CmpOp::Lt, x.clone(), k(-c), k(-c), x));
    select(CmpOp::Gt, lo.clone(), k(c), k(c), lo)
}

impl Rule<'_> {
    /// The kernels of parameter `i` of `n > 0` elements (see the module docs).
    pub(super) fn kernels(&self, i: usize, n: usize) -> Result<Vec<crate::loop_ir::Kernel>> {
        let mut out = Vec::new();
        let blocks = n / BLOCK;
        if blocks > 0 {
            let mut kb = KernelBuilder::new(format!("update.p{i}"));
            let (c, j, l) = (kb.var("c"), kb.var("j"), kb.var("l"));
            let ix = Affine::var(c)
                .scale(BLOCK as i64)
                .plus_term(j, 4)
                .plus_term(l, 1);
            let body = self.element(&mut kb, ix.clone(), ix, Affine::var(l))?;
            let group = for_(l, 4, LoopKind::Vector(4), body);
            let block = for_(j, (BLOCK / 4) as u64, LoopKind::Serial, vec![group]);
            out.push(kb.finish(vec![for_(
                c,
                blocks as u64,
                LoopKind::Parallel,
                vec![block],
            )]));
        }
        let base = blocks * BLOCK;
        let rem = n - base;
        if rem > 0 {
            let mut kb = KernelBuilder::new(format!("update.p{i}.tail"));
            let mut stmts = Vec::new();
            let groups = rem / 4;
            if groups > 0 {
                let (j, l) = (kb.var("j"), kb.var("l"));
                let ix = Affine::constant(base as i64)
                    .plus_term(j, 4)
                    .plus_term(l, 1);
                let body = self.element(&mut kb, ix.clone(), ix, Affine::var(l))?;
                let group = for_(l, 4, LoopKind::Vector(4), body);
                stmts.push(for_(j, groups as u64, LoopKind::Serial, vec![group]));
            }
            let last = rem - 4 * groups;
            if last > 0 {
                let t = kb.var("t");
                let ix = Affine::constant((base + 4 * groups) as i64).plus_term(t, 1);
                let body = self.element(&mut kb, ix.clone(), ix, Affine::constant(0))?;
                stmts.push(for_(t, last as u64, LoopKind::Serial, body));
            }
            out.push(kb.finish(stmts));
        }
        Ok(out)
    }

    /// Hyper-buffer scalar `i` (a broadcast in vector loops).
    fn h(&self, i: usize) -> Expr {
        load(self.hyper, Affine::constant(i as i64))
    }

    fn slot(&self, j: usize) -> Result<BufId> {
        self.pb.slots[j].ok_or_else(|| Error::internal("compiled update: slot buffer missing"))
    }

    /// The statements updating one element: every expression mirrors the host update's
    /// operation order (`optimizer.rs`, `opt_parts.rs`) exactly.
    /// `g_ix` indexes the gradient buffer, `ix` the weight and the slots (the same index
    /// in the update program; a cache-resident block of the gradient when the update runs
    /// inside a backward kernel).
    pub(super) fn element(
        &self,
        kb: &mut KernelBuilder,
        ix: Affine,
        g_ix: Affine,
        lane: Affine,
    ) -> Result<Vec<Stmt>> {
        let mut e = Elem {
            kb,
            ix,
            lane,
            out: Vec::new(),
            loaded: Vec::new(),
        };
        let pb = self.pb;
        let lr = self.h(H_LR);
        // Clipping in `ClipPlan::apply`'s order: clamp, norm clip, clamp.
        let mut g = e.let_("g_in", load(pb.g, g_ix));
        // The values before the step, named after their buffers (`w_old`, `m_old`…).
        let names = slot_names(&self.config.algorithm);
        let mut old = vec![(pb.w, "w_old".to_string())];
        for (slot, name) in pb.slots.iter().zip(names) {
            if let Some(b) = slot {
                old.push((*b, format!("{name}_old")));
            }
        }
        e.preload(&old);
        if let Some(cv) = self.clip.pre {
            let c = clamp(&mut e, g, cv);
            g = e.let_("g_pre", c);
        }
        g = match self.clip.norm {
            NormKind::None => g,
            NormKind::PerTensor(cn) => {
                e.let_("g", div(mul(g, k(cn)), self.h(self.h_clip + self.k)))
            }
            NormKind::MultiBackend => e.let_(
                "g",
                div(mul(g, self.h(self.h_clip)), self.h(self.h_clip + 1)),
            ),
            NormKind::Scale => e.let_("g", mul(g, self.h(self.h_clip))),
        };
        if let Some(cv) = self.clip.post {
            let c = clamp(&mut e, g, cv);
            g = e.let_("g_post", c);
        }
        let w0 = e.buf(pb.w);
        let w = match (self.config.weight_decay, self.config.flavor) {
            // w − w·wd·lr
            (Some(wd), Flavor::TfKeras) => {
                e.let_("w", sub(w0.clone(), mul(mul(w0, k(wd)), lr.clone())))
            }
            _ => w0,
        };
        let new_w = match self.config.algorithm {
            Algorithm::Sgd { momentum, nesterov } => {
                if momentum == 0.0 && !nesterov {
                    // w + (−g)·lr
                    add(w, mul(neg(g), lr))
                } else {
                    let mb = self.slot(0)?;
                    // m = (−g)·lr + m·μ
                    let m = e.let_(
                        "m",
                        add(mul(neg(g.clone()), lr.clone()), mul(e.buf(mb), k(momentum))),
                    );
                    e.store(mb, m.clone());
                    if nesterov {
                        add(w, add(mul(neg(g), lr), mul(m, k(momentum))))
                    } else {
                        add(w, m)
                    }
                }
            }
            Algorithm::Adam {
                beta_1,
                beta_2,
                epsilon,
                amsgrad,
            } => {
                let (mb, vb) = (self.slot(0)?, self.slot(1)?);
                // m + (g − m)·(1 − β1); v + (g·g − v)·(1 − β2)
                let m = e.let_(
                    "m",
                    add(e.buf(mb), mul(sub(g.clone(), e.buf(mb)), k(1.0 - beta_1))),
                );
                let v = e.let_(
                    "v",
                    add(
                        e.buf(vb),
                        mul(sub(mul(g.clone(), g), e.buf(vb)), k(1.0 - beta_2)),
                    ),
                );
                e.store(mb, m.clone());
                e.store(vb, v.clone());
                let den = if amsgrad {
                    let hb = self.slot(2)?;
                    let old = e.let_("vhat_old", e.buf(hb));
                    let vh = e.let_("vhat", maxnum(old, v));
                    e.store(hb, vh.clone());
                    vh
                } else {
                    v
                };
                // w − (m·α)/(sqrt(v) + ε)
                sub(w, div(mul(m, self.h(H_RULE)), add(sqrt(den), k(epsilon))))
            }
            Algorithm::Adamax {
                beta_1,
                beta_2,
                epsilon,
            } => {
                let (mb, ub) = (self.slot(0)?, self.slot(1)?);
                let m = e.let_(
                    "m",
                    add(e.buf(mb), mul(sub(g.clone(), e.buf(mb)), k(1.0 - beta_1))),
                );
                // max(β2·u, |g|)
                let bu = e.let_("b2u", mul(k(beta_2), e.buf(ub)));
                let ag = e.let_("abs_g", un(UnOp::Abs, g));
                let u = e.let_("u", maxnum(bu, ag));
                e.store(mb, m.clone());
                e.store(ub, u.clone());
                // w − (lr·m)/((1 − β1^t)·(u + ε))
                sub(w, div(mul(lr, m), mul(self.h(H_RULE), add(u, k(epsilon)))))
            }
            Algorithm::Nadam {
                beta_1,
                beta_2,
                epsilon,
                ..
            } => {
                let (mb, vb) = (self.slot(0)?, self.slot(1)?);
                let m = e.let_(
                    "m",
                    add(e.buf(mb), mul(sub(g.clone(), e.buf(mb)), k(1.0 - beta_1))),
                );
                let v = e.let_(
                    "v",
                    add(
                        e.buf(vb),
                        mul(sub(mul(g.clone(), g.clone()), e.buf(vb)), k(1.0 - beta_2)),
                    ),
                );
                e.store(mb, m.clone());
                e.store(vb, v.clone());
                // u_{t+1}·m/(1 − Πu_k·u_{t+1}) + (1 − u_t)·g/(1 − Πu_k)
                let own = H_RULE + 3 + 2 * self.k;
                let m_hat = e.let_(
                    "m_hat",
                    add(
                        div(mul(self.h(H_RULE), m), self.h(own)),
                        div(mul(self.h(H_RULE + 1), g), self.h(own + 1)),
                    ),
                );
                // v/(1 − β2^t)
                let v_hat = div(v, self.h(H_RULE + 2));
                // w − (m̂·lr)/(sqrt(v̂) + ε)
                sub(w, div(mul(m_hat, lr), add(sqrt(v_hat), k(epsilon))))
            }
            Algorithm::RmsProp {
                rho,
                momentum,
                epsilon,
                centered,
            } => {
                let vb = self.slot(0)?;
                // ρ·v + (1 − ρ)·(g·g)
                let v = e.let_(
                    "v",
                    add(
                        mul(k(rho), e.buf(vb)),
                        mul(k(1.0 - rho), mul(g.clone(), g.clone())),
                    ),
                );
                e.store(vb, v.clone());
                let den = if centered {
                    let ab = self.slot(1)?;
                    let a = e.let_(
                        "mean_g",
                        add(mul(k(rho), e.buf(ab)), mul(k(1.0 - rho), g.clone())),
                    );
                    e.store(ab, a.clone());
                    e.let_("den", sub(v, mul(a.clone(), a)))
                } else {
                    v
                };
                // Where ε goes: `eps_outside_root` (cites the Keras sources).
                let inc = if eps_outside_root(self.config.flavor, momentum) {
                    // lr·g/(sqrt(d) + ε)
                    div(mul(lr, g), add(sqrt(den), k(epsilon)))
                } else {
                    // lr·g/sqrt(d + ε)
                    div(mul(lr, g), sqrt(add(den, k(epsilon))))
                };
                if momentum > 0.0 {
                    let ob = self.slot(2)?;
                    let mo = e.let_("mo", add(mul(k(momentum), e.buf(ob)), inc));
                    e.store(ob, mo.clone());
                    sub(w, mo)
                } else {
                    sub(w, inc)
                }
            }
            Algorithm::Adagrad { epsilon, .. } => {
                let ab = self.slot(0)?;
                let a = e.let_("acc", add(e.buf(ab), mul(g.clone(), g.clone())));
                e.store(ab, a.clone());
                sub(
                    w,
                    match self.config.flavor {
                        Flavor::TfKeras => div(mul(lr, g), sqrt(add(a, k(epsilon)))),
                        _ => div(mul(lr, g), add(sqrt(a), k(epsilon))),
                    },
                )
            }
            Algorithm::Ftrl {
                learning_rate_power: p,
                l1,
                l2_shrinkage,
                ..
            } => {
                let (ab, zb) = (self.slot(0)?, self.slot(1)?);
                // n^(−p) as `host::ftrl_root` (no pow in the loop IR).
                let root = |x: Expr| -> Result<Expr> {
                    if p == -0.5 {
                        Ok(sqrt(x))
                    } else if p == 0.0 {
                        Ok(k(1.0))
                    } else {
                        Err(Error::Usage {
                            detail: format!(
                                "the compiled Ftrl update supports learning_rate_power \
                                 -0.5 and 0, not {p} (use the host update)"
                            ),
                        })
                    }
                };
                // g + (2·l2_shrinkage)·w
                let gs = if l2_shrinkage > 0.0 {
                    e.let_(
                        "g_shrunk",
                        add(g.clone(), mul(k(2.0 * l2_shrinkage), w.clone())),
                    )
                } else {
                    g.clone()
                };
                let na = e.let_("accum_new", add(e.buf(ab), mul(g.clone(), g)));
                let rn = e.let_("root_new", root(na.clone())?);
                // z + (gs − ((root(n') − root(n))/lr)·w)
                let step = div(sub(rn.clone(), root(e.buf(ab))?), lr.clone());
                let z = e.let_("linear", add(e.buf(zb), sub(gs, mul(step, w))));
                // root(n')/lr + 2·(l2 + β/(2·lr))
                let q = e.let_("quadratic", add(div(rn, lr), mul(k(2.0), self.h(H_RULE))));
                let c = clamp(&mut e, z.clone(), l1);
                e.store(ab, na);
                e.store(zb, z.clone());
                // (clamp(z, −l1, l1) − z)/q
                div(sub(c, z), q)
            }
            Algorithm::Adadelta { rho, epsilon } => {
                let (gb, db) = (self.slot(0)?, self.slot(1)?);
                // ρ·E[g²] + (1 − ρ)·g·g
                let ag = e.let_(
                    "acc_g",
                    add(
                        mul(k(rho), e.buf(gb)),
                        mul(mul(k(1.0 - rho), g.clone()), g.clone()),
                    ),
                );
                // −sqrt(E[Δx²] + ε)·g / sqrt(E[g²] + ε)
                let dv = e.let_(
                    "dx",
                    div(
                        mul(neg(sqrt(add(e.buf(db), k(epsilon)))), g),
                        sqrt(add(ag.clone(), k(epsilon))),
                    ),
                );
                let ad = e.let_(
                    "acc_dx",
                    add(
                        mul(k(rho), e.buf(db)),
                        mul(mul(k(1.0 - rho), dv.clone()), dv.clone()),
                    ),
                );
                e.store(gb, ag);
                e.store(db, ad);
                add(w, mul(lr, dv))
            }
        };
        e.store(pb.w, new_w);
        Ok(e.out)
    }
}
