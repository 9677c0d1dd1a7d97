//! Activations in the loop IR: elementwise ones as expressions that other lowerings fuse
//! into their stores, softmax and log-softmax as a reduction kernel, and the standalone
//! `Activation` layer.
//!
//! The formulas are Keras's (keras-lc-semantics §8.4); transcendentals are the loop IR's
//! polynomial `UnOp`s.

use super::Cx;
use crate::error::Result;
use crate::graph::{Activation, NodeId};
use crate::loop_ir::{
    bin, for_, lanes_with_tail, load, load_local, un, Affine, BinOp, BufId, CmpOp, Expr,
    KernelBuilder, LoopKind, Stmt, UnOp,
};

fn c(v: f32) -> Expr {
    Expr::Const(v)
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

/// Whether the activation acts elementwise (everything but softmax-like ones).
pub fn is_elementwise(a: &Activation) -> bool {
    !matches!(a, Activation::Softmax { .. } | Activation::LogSoftmax)
}

/// The expression of an elementwise activation applied to `x` (`x` may be duplicated, so
/// pass a cheap expression such as a load). `None` for softmax-like activations.
pub fn apply(a: &Activation, x: Expr) -> Option<Expr> {
    use Activation as A;
    let softplus = |x: Expr| {
        bin(
            BinOp::Add,
            un(UnOp::Relu, x.clone()),
            un(
                UnOp::Log,
                bin(
                    BinOp::Add,
                    c(1.0),
                    un(UnOp::Exp, un(UnOp::Neg, un(UnOp::Abs, x))),
                ),
            ),
        )
    };
    let elu = |x: Expr, alpha: f32| {
        select(
            CmpOp::Gt,
            x.clone(),
            c(0.0),
            x.clone(),
            bin(
                BinOp::Mul,
                c(alpha),
                bin(BinOp::Sub, un(UnOp::Exp, x), c(1.0)),
            ),
        )
    };
    Some(match a {
        A::Linear => x,
        A::Relu {
            alpha,
            max_value,
            threshold,
        } => {
            // tf-keras `backend.relu`, operation for operation (see
            // `reference::activation`): NaN propagates and a thresholded relu of −∞ is
            // `−∞ · 0 = NaN`, as in Keras.
            let mut pos = if *threshold != 0.0 {
                bin(
                    BinOp::Mul,
                    x.clone(),
                    select(CmpOp::Gt, x.clone(), c(*threshold), c(1.0), c(0.0)),
                )
            } else {
                un(UnOp::Relu, x.clone())
            };
            if let Some(m) = max_value {
                // backend.clip raises max_value to 0 when it is below.
                pos = bin(BinOp::Min, bin(BinOp::Max, pos, c(0.0)), c(m.max(0.0)));
            }
            if *alpha != 0.0 {
                let neg = un(UnOp::Relu, bin(BinOp::Add, un(UnOp::Neg, x), c(*threshold)));
                pos = bin(BinOp::Sub, pos, bin(BinOp::Mul, c(*alpha), neg));
            }
            pos
        }
        A::Sigmoid => un(UnOp::Sigmoid, x),
        A::Tanh => un(UnOp::Tanh, x),
        A::Elu { alpha } => elu(x, *alpha),
        A::Selu => bin(BinOp::Mul, c(1.050_701), elu(x, 1.673_263_2)),
        A::Softplus => softplus(x),
        A::Softsign => bin(
            BinOp::Div,
            x.clone(),
            bin(BinOp::Add, c(1.0), un(UnOp::Abs, x)),
        ),
        A::HardSigmoid => bin(
            BinOp::Min,
            un(
                UnOp::Relu,
                bin(BinOp::Add, bin(BinOp::Mul, c(0.2), x), c(0.5)),
            ),
            c(1.0),
        ),
        A::Exponential => un(UnOp::Exp, x),
        A::Swish => bin(BinOp::Mul, x.clone(), un(UnOp::Sigmoid, x)),
        A::Gelu { approximate: false } => bin(
            BinOp::Mul,
            bin(BinOp::Mul, c(0.5), x.clone()),
            bin(
                BinOp::Add,
                c(1.0),
                un(
                    UnOp::Erf,
                    bin(BinOp::Mul, x, c(std::f32::consts::FRAC_1_SQRT_2)),
                ),
            ),
        ),
        A::Gelu { approximate: true } => {
            let x3 = bin(BinOp::Mul, bin(BinOp::Mul, x.clone(), x.clone()), x.clone());
            let inner = bin(
                BinOp::Mul,
                c(0.797_884_6),
                bin(BinOp::Add, x.clone(), bin(BinOp::Mul, c(0.044_715), x3)),
            );
            bin(
                BinOp::Mul,
                bin(BinOp::Mul, c(0.5), x),
                bin(BinOp::Add, c(1.0), un(UnOp::Tanh, inner)),
            )
        }
        A::Relu6 => bin(BinOp::Min, un(UnOp::Relu, x), c(6.0)),
        A::Mish => bin(BinOp::Mul, x.clone(), un(UnOp::Tanh, softplus(x))),
        A::LeakyRelu { alpha } => select(
            CmpOp::Gt,
            x.clone(),
            c(0.0),
            x.clone(),
            bin(BinOp::Mul, c(*alpha), x),
        ),
        A::Softmax { .. } | A::LogSoftmax => return None,
    })
}

/// Appends a softmax (or log-softmax) kernel over axis `axis` (per-sample, resolved) of
/// a tensor of per-sample `shape`, reading `src` and writing `dst`.
pub fn softmax_kernel(
    cx: &mut Cx,
    name: &str,
    shape: &[usize],
    axis: usize,
    log: bool,
    src: BufId,
    dst: BufId,
) {
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let per_sample = outer * len * inner;
    let mut kb = KernelBuilder::new(format!("{name}.softmax"));
    let b = kb.var("b");
    let o = kb.var("o");
    let i = kb.var("i");
    let (l1, l2, l3) = (kb.var("l"), kb.var("l2"), kb.var("l3"));
    let m = kb.local("max", 1);
    let s = kb.local("sum", 1);
    let zero = Affine::constant(0);
    let at = |l| {
        Affine::var(b)
            .scale(per_sample as i64)
            .plus_term(o, (len * inner) as i64)
            .plus_term(l, inner as i64)
            .plus_term(i, 1)
    };
    let shifted = |l| bin(BinOp::Sub, load(src, at(l)), load_local(m, zero.clone()));
    let out = if log {
        bin(
            BinOp::Sub,
            shifted(l3),
            un(UnOp::Log, load_local(s, zero.clone())),
        )
    } else {
        bin(
            BinOp::Div,
            un(UnOp::Exp, shifted(l3)),
            load_local(s, zero.clone()),
        )
    };
    let body = vec![
        Stmt::SetLocal {
            local: m,
            index: zero.clone(),
            value: c(f32::NEG_INFINITY),
        },
        for_(
            l1,
            len as u64,
            LoopKind::Serial,
            vec![Stmt::SetLocal {
                local: m,
                index: zero.clone(),
                value: bin(BinOp::Max, load_local(m, zero.clone()), load(src, at(l1))),
            }],
        ),
        Stmt::SetLocal {
            local: s,
            index: zero.clone(),
            value: c(0.0),
        },
        for_(
            l2,
            len as u64,
            LoopKind::Serial,
            vec![Stmt::SetLocal {
                local: s,
                index: zero.clone(),
                value: bin(
                    BinOp::Add,
                    load_local(s, zero.clone()),
                    un(UnOp::Exp, shifted(l2)),
                ),
            }],
        ),
        for_(
            l3,
            len as u64,
            LoopKind::Serial,
            vec![Stmt::Store {
                buf: dst,
                index: at(l3),
                value: out,
            }],
        ),
    ];
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(
            o,
            outer as u64,
            LoopKind::Serial,
            vec![for_(i, inner as u64, LoopKind::Serial, body)],
        )],
    );
    cx.push(kb.finish(vec![nest]), &[src], &[dst]);
}

/// Appends an elementwise kernel `dst = act(src)` over a tensor of per-sample `shape`.
pub fn elementwise_kernel(
    cx: &mut Cx,
    name: &str,
    a: &Activation,
    shape: &[usize],
    src: BufId,
    dst: BufId,
) {
    let n: usize = shape.iter().product();
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let b = kb.var("b");
    let e = kb.var("e");
    let idx = Affine::var(b).scale(n as i64).plus_term(e, 1);
    let value = apply(a, load(src, idx.clone())).unwrap_or(Expr::Const(f32::NAN));
    let tail = kb.var("e_t");
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        lanes_with_tail(
            e,
            tail,
            n,
            vec![Stmt::Store {
                buf: dst,
                index: idx,
                value,
            }],
        ),
    );
    cx.push(kb.finish(vec![nest]), &[src], &[dst]);
}

/// Lowers an `Activation` (or ReLU/LeakyReLU/ELU/Softmax) layer.
pub fn forward(cx: &mut Cx, node: NodeId, a: &Activation) -> Result<()> {
    let src = cx.input(node, 0)?;
    let dst = cx.output(node);
    let n = &cx.graph.nodes[node];
    let (name, shape) = (n.name.clone(), n.shape.clone());
    layer_kernel(cx, &name, a, &shape, src, dst);
    Ok(())
}

/// The resolved per-sample axis of a softmax-like activation on `shape`.
fn softmax_axis(a: &Activation, shape: &[usize]) -> usize {
    let ax = match a {
        Activation::Softmax { axis } => *axis,
        _ => -1,
    };
    let r = shape.len() as i64;
    (if ax < 0 { ax + r } else { ax }).clamp(0, (r - 1).max(0)) as usize
}

/// Appends the kernel of activation `a` as a layer: `dst = a(src)` over per-sample
/// `shape` (softmax-like activations along their axis).
pub fn layer_kernel(
    cx: &mut Cx,
    name: &str,
    a: &Activation,
    shape: &[usize],
    src: BufId,
    dst: BufId,
) {
    if !is_elementwise(a) && !shape.is_empty() {
        let log = matches!(a, Activation::LogSoftmax);
        softmax_kernel(cx, name, shape, softmax_axis(a, shape), log, src, dst);
    } else {
        elementwise_kernel(cx, name, a, shape, src, dst);
    }
}

/// Backward pass of an `Activation` layer: `dx = act'(x) ⊙ dy` (or the softmax
/// Jacobian product), given the gradient `dy` of its output.
pub fn backward(cx: &mut Cx, node: NodeId, a: &Activation, dy: BufId) -> Result<()> {
    if *a == Activation::Linear {
        return cx.grad_alias(node, 0, dy);
    }
    let x = cx.input(node, 0)?;
    let y = cx.value(node)?;
    let dx = cx.grad_input(node, 0)?;
    let n = &cx.graph.nodes[node];
    let (name, shape) = (n.name.clone(), n.shape.clone());
    backward_kernel(cx, &name, a, &shape, x, y, dy, dx);
    Ok(())
}

/// Appends `dz = act'(z) ⊙ dy` for an activation with pre-activation `z`, value `y` and
/// output gradient `dy`, over per-sample `shape`. Softmax along its axis:
/// `dz = y ⊙ (dy − Σ dy·y)`; log-softmax: `dz = dy − e^y · Σ dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward_kernel(
    cx: &mut Cx,
    name: &str,
    a: &Activation,
    shape: &[usize],
    z: BufId,
    y: BufId,
    dy: BufId,
    dz: BufId,
) {
    if is_elementwise(a) || shape.is_empty() {
        let n: usize = shape.iter().product();
        let mut kb = KernelBuilder::new(format!("{name}.act_backward"));
        let b = kb.var("b");
        let e = kb.var("e");
        let idx = Affine::var(b).scale(n as i64).plus_term(e, 1);
        let value = bin(
            BinOp::Mul,
            derivative(a, load(z, idx.clone())),
            load(dy, idx.clone()),
        );
        let store = Stmt::Store {
            buf: dz,
            index: idx,
            value,
        };
        let tail = kb.var("e_t");
        let nest = for_(
            b,
            cx.batch as u64,
            LoopKind::Parallel,
            lanes_with_tail(e, tail, n, vec![store]),
        );
        cx.push(kb.finish(vec![nest]), &[z, dy], &[dz]);
        return;
    }
    let log = matches!(a, Activation::LogSoftmax);
    let axis = softmax_axis(a, shape);
    let outer: usize = shape[..axis].iter().product();
    let len = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let per_sample = outer * len * inner;
    let mut kb = KernelBuilder::new(format!("{name}.softmax_backward"));
    let b = kb.var("b");
    let o = kb.var("o");
    let i = kb.var("i");
    let (l1, l2) = (kb.var("l"), kb.var("l2"));
    let s = kb.local("dot", 1);
    let zero = Affine::constant(0);
    let at = |l| {
        Affine::var(b)
            .scale(per_sample as i64)
            .plus_term(o, (len * inner) as i64)
            .plus_term(l, inner as i64)
            .plus_term(i, 1)
    };
    let term = if log {
        load(dy, at(l1))
    } else {
        bin(BinOp::Mul, load(dy, at(l1)), load(y, at(l1)))
    };
    let out = if log {
        bin(
            BinOp::Sub,
            load(dy, at(l2)),
            bin(
                BinOp::Mul,
                un(UnOp::Exp, load(y, at(l2))),
                load_local(s, zero.clone()),
            ),
        )
    } else {
        bin(
            BinOp::Mul,
            load(y, at(l2)),
            bin(BinOp::Sub, load(dy, at(l2)), load_local(s, zero.clone())),
        )
    };
    let body = vec![
        Stmt::SetLocal {
            local: s,
            index: zero.clone(),
            value: c(0.0),
        },
        for_(
            l1,
            len as u64,
            LoopKind::Serial,
            vec![Stmt::SetLocal {
                local: s,
                index: zero.clone(),
                value: bin(BinOp::Add, load_local(s, zero.clone()), term),
            }],
        ),
        for_(
            l2,
            len as u64,
            LoopKind::Serial,
            vec![Stmt::Store {
                buf: dz,
                index: at(l2),
                value: out,
            }],
        ),
    ];
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(
            o,
            outer as u64,
            LoopKind::Serial,
            vec![for_(i, inner as u64, LoopKind::Serial, body)],
        )],
    );
    cx.push(kb.finish(vec![nest]), &[y, dy], &[dz]);
}

fn and_in(x: &Expr, cmp: CmpOp, bound: f32, then: Expr) -> Expr {
    select(cmp, x.clone(), c(bound), then, c(0.0))
}

/// `d act(z) / dz` of an elementwise activation as an expression of `z` (a cheap
/// expression such as a load; it is duplicated). At the kinks it follows TensorFlow's
/// registered gradients, as the reference (`reference::activation_grad`) does: `relu`
/// has slope 0 at its threshold, `leaky_relu` slope `alpha` at 0, clipping passes the
/// gradient at the clip bounds. Softmax-like activations give 0 (their derivative on an
/// axis of length 1).
pub fn derivative(a: &Activation, z: Expr) -> Expr {
    use Activation as A;
    let sig = |z: Expr| un(UnOp::Sigmoid, z);
    let one_minus = |v: Expr| bin(BinOp::Sub, c(1.0), v);
    match a {
        A::Linear => c(1.0),
        A::Relu {
            alpha,
            max_value,
            threshold,
        } => {
            if max_value.is_none() && *threshold == 0.0 && *alpha != 0.0 {
                return select(CmpOp::Gt, z, c(0.0), c(1.0), c(*alpha));
            }
            // Kept part: slope 1 where z > threshold (and, with a cap m, 0 ≤ z ≤ max(m, 0)).
            let lower = *threshold;
            let mut pos = c(1.0);
            if let Some(m) = max_value {
                pos = and_in(&z, CmpOp::Le, m.max(0.0), pos);
                pos = and_in(&z, CmpOp::Ge, 0.0, pos);
            }
            let pos = and_in(&z, CmpOp::Gt, lower, pos);
            if *alpha != 0.0 {
                let neg = select(CmpOp::Lt, z, c(*threshold), c(*alpha), c(0.0));
                bin(BinOp::Add, pos, neg)
            } else {
                pos
            }
        }
        A::Sigmoid => {
            let s = sig(z);
            bin(BinOp::Mul, s.clone(), one_minus(s))
        }
        A::Tanh => {
            let t = un(UnOp::Tanh, z);
            one_minus(bin(BinOp::Mul, t.clone(), t))
        }
        A::Softmax { .. } | A::LogSoftmax => c(0.0),
        A::Elu { alpha } => select(
            CmpOp::Gt,
            z.clone(),
            c(0.0),
            c(1.0),
            bin(BinOp::Mul, c(*alpha), un(UnOp::Exp, z)),
        ),
        A::Selu => {
            let (scale, alpha) = (1.050_701_f32, 1.673_263_2_f32);
            select(
                CmpOp::Gt,
                z.clone(),
                c(0.0),
                c(scale),
                bin(BinOp::Mul, c(scale * alpha), un(UnOp::Exp, z)),
            )
        }
        A::Softplus => sig(z),
        A::Softsign => {
            let d = bin(BinOp::Add, c(1.0), un(UnOp::Abs, z));
            bin(BinOp::Div, c(1.0), bin(BinOp::Mul, d.clone(), d))
        }
        A::HardSigmoid => {
            let v = bin(BinOp::Add, bin(BinOp::Mul, c(0.2), z), c(0.5));
            and_in(&v, CmpOp::Ge, 0.0, and_in(&v, CmpOp::Le, 1.0, c(0.2)))
        }
        A::Exponential => un(UnOp::Exp, z),
        A::Swish => {
            let s = sig(z.clone());
            bin(
                BinOp::Add,
                s.clone(),
                bin(BinOp::Mul, bin(BinOp::Mul, z, s.clone()), one_minus(s)),
            )
        }
        A::Gelu { approximate: false } => {
            let cdf = bin(
                BinOp::Mul,
                c(0.5),
                bin(
                    BinOp::Add,
                    c(1.0),
                    un(
                        UnOp::Erf,
                        bin(BinOp::Mul, z.clone(), c(std::f32::consts::FRAC_1_SQRT_2)),
                    ),
                ),
            );
            let pdf = bin(
                BinOp::Mul,
                c(0.398_942_3),
                un(
                    UnOp::Exp,
                    bin(BinOp::Mul, c(-0.5), bin(BinOp::Mul, z.clone(), z.clone())),
                ),
            );
            bin(BinOp::Add, cdf, bin(BinOp::Mul, z, pdf))
        }
        A::Gelu { approximate: true } => {
            let k = 0.797_884_6_f32; // sqrt(2/π)
            let z2 = bin(BinOp::Mul, z.clone(), z.clone());
            let u = bin(
                BinOp::Mul,
                c(k),
                bin(
                    BinOp::Add,
                    z.clone(),
                    bin(
                        BinOp::Mul,
                        c(0.044_715),
                        bin(BinOp::Mul, z2.clone(), z.clone()),
                    ),
                ),
            );
            let t = un(UnOp::Tanh, u);
            let left = bin(BinOp::Mul, c(0.5), bin(BinOp::Add, c(1.0), t.clone()));
            let right = bin(
                BinOp::Mul,
                bin(
                    BinOp::Mul,
                    bin(BinOp::Mul, c(0.5), z),
                    one_minus(bin(BinOp::Mul, t.clone(), t)),
                ),
                bin(
                    BinOp::Mul,
                    c(k),
                    bin(BinOp::Add, c(1.0), bin(BinOp::Mul, c(3.0 * 0.044_715), z2)),
                ),
            );
            bin(BinOp::Add, left, right)
        }
        A::Relu6 => and_in(&z, CmpOp::Gt, 0.0, and_in(&z, CmpOp::Lt, 6.0, c(1.0))),
        A::Mish => {
            let sp = bin(
                BinOp::Add,
                un(UnOp::Relu, z.clone()),
                un(
                    UnOp::Log,
                    bin(
                        BinOp::Add,
                        c(1.0),
                        un(UnOp::Exp, un(UnOp::Neg, un(UnOp::Abs, z.clone()))),
                    ),
                ),
            );
            let t = un(UnOp::Tanh, sp);
            bin(
                BinOp::Add,
                t.clone(),
                bin(
                    BinOp::Mul,
                    bin(
                        BinOp::Mul,
                        z.clone(),
                        one_minus(bin(BinOp::Mul, t.clone(), t)),
                    ),
                    sig(z),
                ),
            )
        }
        A::LeakyRelu { alpha } => select(CmpOp::Gt, z, c(0.0), c(1.0), c(*alpha)),
    }
}
