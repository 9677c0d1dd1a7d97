//! The host update rules ([`update`]): one parameter's step in plain Rust, the oracle
//! of the compiled update (`train/update/rule.rs` mirrors every expression's operation
//! order). Each rule follows the Keras source named beside it; where the legacy path
//! calls a TF kernel (`training_ops.cc`) the kernel's formula is the reference.

use super::{eps_outside_root, Algorithm, Flavor};
use crate::train::opt_parts::{
    adam_alpha, ftrl_l2, slot, slot_inits, NadamScalars, Slots, StepScalars,
};
use ndarray::{ArrayD, Zip};

/// `Ftrl`'s `n^(−p)`: `sqrt(n)` for p = −0.5 (what the TF kernels special-case), 1 for
/// p = 0, else `powf`.
pub(crate) fn ftrl_root(n: f32, p: f32) -> f32 {
    if p == -0.5 {
        n.sqrt()
    } else if p == 0.0 {
        1.0
    } else {
        n.powf(-p)
    }
}

/// One step of `alg` on parameter `w` (trainable index `k`) with gradient `g`.
pub(super) fn update(
    alg: &Algorithm,
    flavor: Flavor,
    s: &StepScalars,
    k: usize,
    w: &mut ArrayD<f32>,
    g: &ArrayD<f32>,
    slots: &mut Slots,
) {
    let (lr, t, s, nadam) = (s.lr, s.t, slots, &s.nadam);
    match *alg {
        Algorithm::Sgd { momentum, nesterov } => {
            if momentum == 0.0 && !nesterov {
                Zip::from(w).and(g).for_each(|w, &g| *w += -g * lr);
                return;
            }
            let m = slot(&mut s.a, g, 0.0);
            Zip::from(w).and(m).and(g).for_each(|w, m, &g| {
                *m = -g * lr + *m * momentum;
                if nesterov {
                    *w += -g * lr + *m * momentum;
                } else {
                    *w += *m;
                }
            });
        }
        Algorithm::Adam {
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
        } => {
            let alpha = adam_alpha(lr, t, beta_1, beta_2);
            let m = slot(&mut s.a, g, 0.0);
            let v = slot(&mut s.b, g, 0.0);
            Zip::from(&mut *m).and(&mut *v).and(g).for_each(|m, v, &g| {
                *m += (g - *m) * (1.0 - beta_1);
                *v += (g * g - *v) * (1.0 - beta_2);
            });
            if amsgrad {
                let vh = slot(&mut s.c, g, 0.0);
                Zip::from(&mut *vh)
                    .and(&*v)
                    .for_each(|vh, &v| *vh = vh.max(v));
                Zip::from(w)
                    .and(&*m)
                    .and(&*vh)
                    .for_each(|w, &m, &v| *w -= (m * alpha) / (v.sqrt() + epsilon));
            } else {
                Zip::from(w)
                    .and(&*m)
                    .and(&*v)
                    .for_each(|w, &m, &v| *w -= (m * alpha) / (v.sqrt() + epsilon));
            }
        }
        Algorithm::Adamax {
            beta_1,
            beta_2,
            epsilon,
        } => {
            let b1p = beta_1.powf(t);
            let m = slot(&mut s.a, g, 0.0);
            let u = slot(&mut s.b, g, 0.0);
            Zip::from(w).and(m).and(u).and(g).for_each(|w, m, u, &g| {
                *m += (g - *m) * (1.0 - beta_1);
                *u = (beta_2 * *u).max(g.abs());
                *w -= (lr * *m) / ((1.0 - b1p) * (*u + epsilon));
            });
        }
        Algorithm::Nadam {
            beta_1,
            beta_2,
            epsilon,
            ..
        } => {
            let Some(&NadamScalars { u_t, u_t1, up, up1 }) = nadam.get(k) else {
                return; // `scalars` makes one entry per trainable parameter
            };
            let b2p = beta_2.powf(t);
            let m = slot(&mut s.a, g, 0.0);
            let v = slot(&mut s.b, g, 0.0);
            Zip::from(w).and(m).and(v).and(g).for_each(|w, m, v, &g| {
                *m += (g - *m) * (1.0 - beta_1);
                *v += (g * g - *v) * (1.0 - beta_2);
                let m_hat = u_t1 * *m / (1.0 - up1) + (1.0 - u_t) * g / (1.0 - up);
                let v_hat = *v / (1.0 - b2p);
                *w -= (m_hat * lr) / (v_hat.sqrt() + epsilon);
            });
        }
        Algorithm::RmsProp {
            rho,
            momentum,
            epsilon,
            centered,
        } => {
            let v = slot(&mut s.a, g, 0.0);
            Zip::from(&mut *v)
                .and(g)
                .for_each(|v, &g| *v = rho * *v + (1.0 - rho) * (g * g));
            let mut den = v.clone();
            if centered {
                let ag = slot(&mut s.b, g, 0.0);
                Zip::from(&mut *ag)
                    .and(g)
                    .for_each(|a, &g| *a = rho * *a + (1.0 - rho) * g);
                Zip::from(&mut den).and(&*ag).for_each(|d, &a| *d -= a * a);
            }
            let inc = |g: f32, d: f32| {
                if eps_outside_root(flavor, momentum) {
                    lr * g / (d.sqrt() + epsilon)
                } else {
                    lr * g / (d + epsilon).sqrt()
                }
            };
            if momentum > 0.0 {
                let mo = slot(&mut s.c, g, 0.0);
                Zip::from(w)
                    .and(mo)
                    .and(g)
                    .and(&den)
                    .for_each(|w, mo, &g, &d| {
                        *mo = momentum * *mo + inc(g, d);
                        *w -= *mo;
                    });
            } else {
                Zip::from(w)
                    .and(g)
                    .and(&den)
                    .for_each(|w, &g, &d| *w -= inc(g, d));
            }
        }
        Algorithm::Adagrad {
            initial_accumulator_value,
            epsilon,
        } => {
            let init = slot_inits(alg, flavor)[0].unwrap_or(initial_accumulator_value);
            let acc = slot(&mut s.a, g, init);
            Zip::from(w).and(acc).and(g).for_each(|w, a, &g| {
                *a += g * g;
                *w -= match flavor {
                    Flavor::TfKeras => lr * g / (*a + epsilon).sqrt(),
                    _ => lr * g / (a.sqrt() + epsilon),
                };
            });
        }
        Algorithm::Adadelta { rho, epsilon } => {
            let ag = slot(&mut s.a, g, 0.0);
            let ad = slot(&mut s.b, g, 0.0);
            Zip::from(w)
                .and(ag)
                .and(ad)
                .and(g)
                .for_each(|w, ag, ad, &g| {
                    *ag = rho * *ag + (1.0 - rho) * g * g;
                    let dv = -(*ad + epsilon).sqrt() * g / (*ag + epsilon).sqrt();
                    *ad = rho * *ad + (1.0 - rho) * dv * dv;
                    *w += lr * dv;
                });
        }
        Algorithm::Ftrl {
            learning_rate_power: p,
            l1,
            l2,
            l2_shrinkage,
            beta,
            ..
        } => {
            // tf_keras/src/optimizers/ftrl.py `update_step`; legacy/ftrl.py calls
            // ResourceApplyFtrl(V2) (`training_ops.cc`), the same values: with
            // `|z| ≤ l1` both give 0, else `(l1·sign(z) − z)/q` = `(clamp(z) − z)/q`.
            let init = slot_inits(alg, flavor)[0].unwrap_or(0.0);
            let l2a = ftrl_l2(l2, beta, lr);
            let acc = slot(&mut s.a, g, init);
            let lin = slot(&mut s.b, g, 0.0);
            Zip::from(w)
                .and(acc)
                .and(lin)
                .and(g)
                .for_each(|w, a, z, &g| {
                    let gs = if l2_shrinkage > 0.0 {
                        g + (2.0 * l2_shrinkage) * *w
                    } else {
                        g
                    };
                    let na = *a + g * g;
                    let rn = ftrl_root(na, p);
                    *z += gs - (rn - ftrl_root(*a, p)) / lr * *w;
                    let q = rn / lr + 2.0 * l2a;
                    // `clip_by_value(z, −l1, l1)` without `f32::clamp`'s panic on l1 < 0.
                    let lo = if *z < -l1 { -l1 } else { *z };
                    let c = if lo > l1 { l1 } else { lo };
                    *w = (c - *z) / q;
                    *a = na;
                });
        }
    }
}
