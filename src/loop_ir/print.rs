//! Deterministic text printer of the loop IR.
//!
//! The schedule is shown on every loop (`parallel`, `vector(4)`, `unroll(3)`), indices are
//! printed as affine expressions in the loop variables' names, and floats use Rust's
//! shortest round-trip form, so the text is stable enough for golden files. A kernel whose
//! lowering recorded its schedule shows it on a `schedule …` line under its header.

use super::{Affine, BinOp, BufRole, CmpOp, Expr, Kernel, LoopKind, Module, Stmt, UnOp};
use std::fmt::Write as _;

/// `3·i + j + 5` style text of an affine index.
pub fn affine_text(a: &Affine, names: &[String]) -> String {
    let mut parts = Vec::new();
    for &(v, c) in &a.terms {
        let name = names
            .get(v as usize)
            .cloned()
            .unwrap_or_else(|| format!("v{v}"));
        parts.push(match c {
            1 => name,
            -1 => format!("-{name}"),
            c => format!("{c}·{name}"),
        });
    }
    if a.offset != 0 || parts.is_empty() {
        parts.push(a.offset.to_string());
    }
    parts.join(" + ").replace("+ -", "- ")
}

fn expr_text(e: &Expr, m: &Module, k: &Kernel) -> String {
    let n = &k.var_names;
    match e {
        Expr::Const(c) => format!("{c:?}"),
        Expr::Load { buf, index } => {
            let name = m
                .buffers
                .get(*buf as usize)
                .map(|b| b.name.as_str())
                .unwrap_or("?");
            format!("{name}[{}]", affine_text(index, n))
        }
        Expr::LoadLocal { local, index } => {
            let name = k
                .locals
                .get(*local as usize)
                .map(|l| l.name.as_str())
                .unwrap_or("?");
            format!("{name}[{}]", affine_text(index, n))
        }
        Expr::Unary(op, a) => {
            let f = match op {
                UnOp::Neg => "neg",
                UnOp::Abs => "abs",
                UnOp::Sqrt => "sqrt",
                UnOp::Relu => "relu",
                UnOp::Exp => "exp",
                UnOp::Log => "log",
                UnOp::Tanh => "tanh",
                UnOp::Sigmoid => "sigmoid",
                UnOp::Erf => "erf",
                UnOp::RoundF16 => "round_f16",
                UnOp::RoundBf16 => "round_bf16",
            };
            format!("{f}({})", expr_text(a, m, k))
        }
        Expr::Binary(op, a, b) => {
            let (a, b) = (expr_text(a, m, k), expr_text(b, m, k));
            match op {
                BinOp::Add => format!("({a} + {b})"),
                BinOp::Sub => format!("({a} - {b})"),
                BinOp::Mul => format!("{a} * {b}"),
                BinOp::Div => format!("{a} / {b}"),
                BinOp::Max => format!("max({a}, {b})"),
                BinOp::Min => format!("min({a}, {b})"),
            }
        }
        Expr::Fma(a, b, c) => format!(
            "fma({}, {}, {})",
            expr_text(a, m, k),
            expr_text(b, m, k),
            expr_text(c, m, k)
        ),
        Expr::Select { cmp, a, b, t, f } => {
            let op = match cmp {
                CmpOp::Lt => "<",
                CmpOp::Le => "<=",
                CmpOp::Gt => ">",
                CmpOp::Ge => ">=",
            };
            format!(
                "select({} {op} {}, {}, {})",
                expr_text(a, m, k),
                expr_text(b, m, k),
                expr_text(t, m, k),
                expr_text(f, m, k)
            )
        }
    }
}

fn stmts_text(out: &mut String, stmts: &[Stmt], m: &Module, k: &Kernel, depth: usize) {
    let pad = "  ".repeat(depth);
    let n = &k.var_names;
    for s in stmts {
        match s {
            Stmt::For {
                var,
                extent,
                kind,
                body,
            } => {
                let name = n
                    .get(*var as usize)
                    .cloned()
                    .unwrap_or_else(|| format!("v{var}"));
                let sched = match kind {
                    LoopKind::Serial => String::new(),
                    LoopKind::Parallel => " parallel".into(),
                    LoopKind::Vector(w) => format!(" vector({w})"),
                    LoopKind::Unroll(u) => format!(" unroll({u})"),
                    LoopKind::Wide(w) => format!(" {w}"),
                };
                let _ = writeln!(out, "{pad}for {name} in 0..{extent}{sched}");
                stmts_text(out, body, m, k, depth + 1);
            }
            Stmt::If { conds, body } => {
                let c: Vec<String> = conds
                    .iter()
                    .map(|(a, lo, hi)| format!("{lo} <= {} < {hi}", affine_text(a, n)))
                    .collect();
                let _ = writeln!(out, "{pad}if {}", c.join(" and "));
                stmts_text(out, body, m, k, depth + 1);
            }
            Stmt::Store { buf, index, value } => {
                let name = m
                    .buffers
                    .get(*buf as usize)
                    .map(|b| b.name.as_str())
                    .unwrap_or("?");
                let _ = writeln!(
                    out,
                    "{pad}{name}[{}] = {}",
                    affine_text(index, n),
                    expr_text(value, m, k)
                );
            }
            Stmt::SetLocal {
                local,
                index,
                value,
            } => {
                let name = k
                    .locals
                    .get(*local as usize)
                    .map(|l| l.name.as_str())
                    .unwrap_or("?");
                let _ = writeln!(
                    out,
                    "{pad}{name}[{}] = {}",
                    affine_text(index, n),
                    expr_text(value, m, k)
                );
            }
        }
    }
}

/// One kernel as text.
pub fn kernel_text(m: &Module, k: &Kernel) -> String {
    let mut s = String::new();
    let locals: Vec<String> = k
        .locals
        .iter()
        .map(|l| format!("{}: f32[{}]", l.name, l.len))
        .collect();
    let _ = writeln!(
        s,
        "kernel {}  # locals: {}",
        k.name,
        if locals.is_empty() {
            "none".into()
        } else {
            locals.join(", ")
        }
    );
    if let Some(sched) = &k.schedule {
        let _ = writeln!(s, "  schedule {sched}");
    }
    stmts_text(&mut s, &k.body, m, k, 1);
    s
}

/// The whole module as text: buffers, then kernels in order.
pub fn module_text(m: &Module) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "module {}", m.name);
    for (i, b) in m.buffers.iter().enumerate() {
        let role = match &b.role {
            BufRole::Input(i) => format!("input {i}"),
            BufRole::Output(i) => format!("output {i}"),
            BufRole::Param(i) => format!("param {i}"),
            BufRole::Const(_) => "const".into(),
            BufRole::Scratch => "scratch".into(),
            BufRole::Cotangent(i) => format!("cotangent {i}"),
            BufRole::GradInput(i) => format!("grad input {i}"),
            BufRole::GradParam(i) => format!("grad param {i}"),
            BufRole::Aux(i) => format!("aux {i}"),
            BufRole::Kept(i) => format!("kept {i}"),
            BufRole::Updated(i) => format!("updated param {i}"),
            BufRole::Slot(i, j) => format!("slot {j} of param {i}"),
            BufRole::Hyper => "hyper".into(),
        };
        let _ = writeln!(
            s,
            "  buffer %{i} {}: {}[{}] {role}",
            b.name,
            b.dtype.name(),
            b.len
        );
    }
    for k in &m.kernels {
        s.push('\n');
        s.push_str(&kernel_text(m, k));
    }
    s
}
