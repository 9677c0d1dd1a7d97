//! Dense layers in the loop IR: `y[m, u] = act(Σ_i x[m, i]·K[i, u] + bias[u])` over every
//! row `m` of the flattened leading axes (batch included).
//!
//! Schedule: a register tile of `RT rows × UT units` accumulators. When `units` is a
//! multiple of 4 the unit axis is `Vector(4)` with `UT` up to 16 and `RT·UT/4 ≤ 12`
//! f32x4 accumulators (the x64 register budget), so each kernel row vector `K[i, tile]`
//! loaded (contiguous over units) is reused by `RT` rows and each broadcast `x[m, i]` by
//! `UT/4` vectors. Otherwise the unit axis is unrolled (`UT` the largest divisor of
//! `units` up to 8, `RT·UT ≤ 12`). The reduction over `i` is a serial loop in order, like
//! the reference. The parallel loop runs over unit tiles when there are at least two,
//! otherwise over row tiles; rows that do not fill a tile get a second nest with a smaller
//! tile (fresh variables). Bias and elementwise activations are fused into the store;
//! softmax-like activations store into a temporary and run [`softmax_kernel`].

use super::activation::{apply, is_elementwise, softmax_kernel};
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{Activation, Dense, NodeId};
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LocalId, LoopKind,
    Stmt, Var,
};

/// The register tile: `(vectorised, UT units per tile, RT rows per tile)`.
pub fn register_tile(units: usize, rows: usize) -> (bool, usize, usize) {
    if units.is_multiple_of(4) {
        let ut = [16, 12, 8, 4]
            .into_iter()
            .find(|t| units.is_multiple_of(*t))
            .unwrap_or(4);
        (true, ut, (12 / (ut / 4)).clamp(1, 6).min(rows))
    } else {
        let ut = (1..=8)
            .rev()
            .find(|t| units.is_multiple_of(*t))
            .unwrap_or(1);
        (false, ut, (12 / ut).clamp(1, 4).min(rows))
    }
}

/// Everything a tile body needs.
struct Plan {
    x: BufId,
    k: BufId,
    bias: Option<BufId>,
    z: BufId,
    n_in: usize,
    units: usize,
    ut: usize,
    ukind: LoopKind,
    acc: LocalId,
    act: Activation,
}

impl Plan {
    /// One tile: rows `row0 + r` for `r < rt`, units `u0 + uu` for `uu < ut`.
    /// `tag` makes the names of the tile's fresh variables distinct in printouts.
    fn tile(
        &self,
        kb: &mut KernelBuilder,
        tag: &str,
        row0: Affine,
        rt: usize,
        u0: Affine,
    ) -> Result<Vec<Stmt>> {
        let i = kb.var(&format!("i{tag}"));
        let (r_i, u_i) = (kb.var(&format!("r{tag}i")), kb.var(&format!("u{tag}i")));
        let (r_a, u_a) = (kb.var(&format!("r{tag}a")), kb.var(&format!("u{tag}a")));
        let (r_s, u_s) = (kb.var(&format!("r{tag}s")), kb.var(&format!("u{tag}s")));
        let ut = self.ut;
        let acc_at = |r: Var, u: Var| Affine::var(r).scale(ut as i64).plus_term(u, 1);
        let row = |r: Var| row0.clone().plus_term(r, 1);
        let unit = |u: Var| u0.clone().plus_term(u, 1);
        let rows = |r: Var, u: Var, s: Stmt| {
            for_(
                r,
                rt as u64,
                LoopKind::Unroll(rt as u32),
                vec![for_(u, ut as u64, self.ukind, vec![s])],
            )
        };
        let init = rows(
            r_i,
            u_i,
            Stmt::SetLocal {
                local: self.acc,
                index: acc_at(r_i, u_i),
                value: Expr::Const(0.0),
            },
        );
        // acc[r, u] += x[row, i] · K[i, unit]
        let update = rows(
            r_a,
            u_a,
            Stmt::SetLocal {
                local: self.acc,
                index: acc_at(r_a, u_a),
                value: fma(
                    load(self.x, row(r_a).scale(self.n_in as i64).plus_term(i, 1)),
                    load(
                        self.k,
                        Affine::var(i)
                            .scale(self.units as i64)
                            .plus_affine(&unit(u_a)),
                    ),
                    load_local(self.acc, acc_at(r_a, u_a)),
                ),
            },
        );
        let mut z = load_local(self.acc, acc_at(r_s, u_s));
        if let Some(bias) = self.bias {
            z = bin(BinOp::Add, z, load(bias, unit(u_s)));
        }
        let value = apply(&self.act, z)
            .ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
        let store = rows(
            r_s,
            u_s,
            Stmt::Store {
                buf: self.z,
                index: row(r_s).scale(self.units as i64).plus_affine(&unit(u_s)),
                value,
            },
        );
        Ok(vec![
            init,
            for_(i, self.n_in as u64, LoopKind::Serial, vec![update]),
            store,
        ])
    }
}

/// Lowers the forward pass of Dense node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, d: &Dense) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let out_shape = n.shape.clone();
    let in_shape = cx.graph.nodes[n.inputs[0]].shape.clone();
    let n_in = *in_shape
        .last()
        .ok_or_else(|| Error::internal(format!("dense '{name}': scalar input")))?;
    let units = d.units;
    let rows = cx.batch * in_shape[..in_shape.len() - 1].iter().product::<usize>();
    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    let bias = if d.use_bias {
        Some(cx.param(node, "bias")?)
    } else {
        None
    };
    let elementwise = is_elementwise(&d.activation);
    let y = cx.output(node);
    let z = if elementwise {
        y
    } else {
        cx.temp(rows * units)
    };
    let (vec, ut, rt) = register_tile(units, rows);
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let plan = Plan {
        x,
        k,
        bias,
        z,
        n_in,
        units,
        ut,
        ukind: if vec {
            LoopKind::Vector(4)
        } else {
            LoopKind::Unroll(ut as u32)
        },
        acc: kb.local("acc", rt * ut),
        act: if elementwise {
            d.activation.clone()
        } else {
            Activation::Linear
        },
    };
    let (n_ut, n_rt, rem) = (units / ut, rows / rt, rows % rt);
    let ut_v = kb.var("ut");
    let rt_v = kb.var("rt");
    let u0 = Affine::var(ut_v).scale(ut as i64);
    let row0 = Affine::var(rt_v).scale(rt as i64);
    let rem0 = Affine::constant((n_rt * rt) as i64);
    let nest = if n_ut >= 2 {
        // Parallel over unit tiles; every row tile (and the remainder) inside.
        let mut body = vec![for_(
            rt_v,
            n_rt as u64,
            LoopKind::Serial,
            plan.tile(&mut kb, "", row0, rt, u0.clone())?,
        )];
        if rem > 0 {
            body.extend(plan.tile(&mut kb, "_r", rem0, rem, u0)?);
        }
        vec![for_(ut_v, n_ut as u64, LoopKind::Parallel, body)]
    } else {
        // Parallel over row tiles. The remainder rows are one more iteration of the same
        // parallel loop, selected by guards: the back end requires a parallel loop to be
        // a kernel's only top-level statement.
        let main = vec![for_(
            ut_v,
            n_ut as u64,
            LoopKind::Serial,
            plan.tile(&mut kb, "", row0, rt, u0)?,
        )];
        let mut body = Vec::new();
        let extent = if rem > 0 { n_rt + 1 } else { n_rt };
        if rem > 0 {
            body.push(Stmt::If {
                conds: vec![(Affine::var(rt_v), 0, n_rt as i64)],
                body: main,
            });
            let ut_r = kb.var("ut_r");
            let tail = plan.tile(&mut kb, "_r", rem0, rem, Affine::var(ut_r).scale(ut as i64))?;
            body.push(Stmt::If {
                conds: vec![(Affine::var(rt_v), n_rt as i64, n_rt as i64 + 1)],
                body: vec![for_(ut_r, n_ut as u64, LoopKind::Serial, tail)],
            });
        } else {
            body = main;
        }
        vec![for_(rt_v, extent as u64, LoopKind::Parallel, body)]
    };
    let mut reads = vec![x, k];
    reads.extend(bias);
    cx.push(kb.finish(nest), &reads, &[z]);
    if !elementwise {
        let (axis, log) = match d.activation {
            Activation::Softmax { axis } => (axis, false),
            _ => (-1, true),
        };
        let r = out_shape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis } as usize;
        softmax_kernel(cx, &name, &out_shape, axis, log, z, y);
    }
    Ok(())
}
