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
    bin, for_, load, load_local, un, Affine, BinOp, BufId, CmpOp, Expr, KernelBuilder, LoopKind,
    Stmt, UnOp,
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
            if *alpha == 0.0 && *threshold == 0.0 {
                let r = un(UnOp::Relu, x);
                match max_value {
                    Some(m) => bin(BinOp::Min, r, c(*m)),
                    None => r,
                }
            } else {
                let pos = match max_value {
                    Some(m) => bin(BinOp::Min, x.clone(), c(*m)),
                    None => x.clone(),
                };
                let neg = bin(
                    BinOp::Mul,
                    c(*alpha),
                    bin(BinOp::Sub, x.clone(), c(*threshold)),
                );
                select(CmpOp::Gt, x, c(*threshold), pos, neg)
            }
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
    let kind = if n.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(
            e,
            n as u64,
            kind,
            vec![Stmt::Store {
                buf: dst,
                index: idx,
                value,
            }],
        )],
    );
    cx.push(kb.finish(vec![nest]), &[src], &[dst]);
}

/// Lowers an `Activation` (or ReLU/LeakyReLU/ELU/Softmax) layer.
pub fn forward(cx: &mut Cx, node: NodeId, a: &Activation) -> Result<()> {
    let src = cx.input(node, 0)?;
    let dst = cx.output(node);
    let n = &cx.graph.nodes[node];
    let (name, shape) = (n.name.clone(), n.shape.clone());
    match a {
        Activation::Softmax { .. } | Activation::LogSoftmax if !shape.is_empty() => {
            let ax = match a {
                Activation::Softmax { axis } => *axis,
                _ => -1,
            };
            let r = shape.len() as i64;
            let axis = if ax < 0 { ax + r } else { ax } as usize;
            softmax_kernel(
                cx,
                &name,
                &shape,
                axis,
                matches!(a, Activation::LogSoftmax),
                src,
                dst,
            );
        }
        _ => elementwise_kernel(cx, &name, a, &shape, src, dst),
    }
    Ok(())
}
