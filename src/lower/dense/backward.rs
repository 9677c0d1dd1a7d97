//! The backward pass of Dense layers: `dx` (as `dz·Kᵀ`, or as `dxᵀ = K·dzᵀ` with the
//! batch rows in a wide tile's lanes), `dK = xᵀ·dz` and `db`, each through the forward
//! product of `dense.rs` on transposed operands, so they get its register tiles and its
//! summation order.
//!
//! Invariant: no loop that reduces over rows is parallel, so the gradients do not depend
//! on the thread count; both forms of `dx` sum the same products in the same order.

use super::{operands, product, wide_tile, Operands};
use crate::error::Result;
use crate::graph::{Activation, Dense, NodeId};
use crate::loop_ir::{bin, for_, load, Affine, BinOp, BufId, Expr, KernelBuilder, LoopKind, Stmt};
use crate::lower::shape::{transpose_into, transposed};
use crate::lower::Cx;

/// Backward pass of Dense node `node` given `dz`, the gradient of its pre-activation
/// output (rows `m` of the flattened leading axes):
/// `dx[m, i] = Σ_u dz[m, u]·K[i, u]` (rows in parallel, `u` in order),
/// `dK[i, u] = Σ_m x[m, i]·dz[m, u]` (the product `xᵀ·dz`),
/// `db[u] = Σ_m dz[m, u]`. No loop that reduces over rows is parallel, so the result does
/// not depend on the thread count.
pub fn backward(cx: &mut Cx, node: NodeId, d: &Dense, dz: BufId) -> Result<()> {
    let Operands {
        name,
        n_in,
        units,
        rows,
        x,
        k,
    } = operands(cx, node, d)?;
    if cx.wants_grad(node, 0) {
        let dx = cx.grad_input(node, 0)?;
        if input_grad_rows_in_lanes(cx.tier, n_in, units, rows) {
            // dxᵀ = K·dzᵀ: the forward product of K (its rows the inputs) with the
            // transposed output gradient, whose units are the batch rows, so that a
            // wide tile applies where the inputs do not fill its registers; then dx is
            // dxᵀ transposed back. The same products summed over `u` in the same order
            // as the form below, so the same bits.
            let dzt = transposed(
                cx,
                &format!("{name}.dz_transpose"),
                dz,
                rows,
                units,
                ["m", "u"],
            );
            let dxt = cx.temp(n_in * rows);
            product(
                cx,
                &format!("{name}.backward_dx_t"),
                &linear(d, rows),
                [k, dzt, dxt],
                None,
                units,
                rows,
                n_in,
            )?;
            transpose_into(
                cx,
                &format!("{name}.backward_dx_rows"),
                [dxt, dx],
                n_in,
                rows,
                ["m", "i"],
            );
        } else {
            // dx = dz·Kᵀ: the forward product of dz with the transposed kernel (one
            // transfer pass over K), so it gets the forward's register tile or
            // streaming schedule.
            let kt = transposed(
                cx,
                &format!("{name}.kernel_transpose"),
                k,
                n_in,
                units,
                ["u", "i"],
            );
            product(
                cx,
                &format!("{name}.backward_dx"),
                &linear(d, n_in),
                [dz, kt, dx],
                None,
                units,
                n_in,
                rows,
            )?;
        }
    }

    // dK = xᵀ·dz: the forward product of the transposed input with dz (one pass over
    // x), so it gets the forward's register tiles, wide ones included, instead of
    // accumulating each kernel row in memory. Under the register tiles each element
    // still sums the rows `m` in order from zero; a layer with one input and at least
    // 256 rows takes the matrix-vector schedule, whose fixed blocks are the same for any
    // thread count. Measured on genomics_lc1d's 3996×64 Dense at batch 32, 2 threads:
    // 1.28 ms accumulating in memory, 0.62 ms as f32x4 tiles, 0.16 ms wide (plus
    // 0.07 ms for the transpose).
    let dk = cx.dparam(node, "kernel")?;
    let xt = transposed(
        cx,
        &format!("{name}.input_transpose"),
        x,
        rows,
        n_in,
        ["i", "m"],
    );
    product(
        cx,
        &format!("{name}.backward_dw"),
        &linear(d, units),
        [xt, dz, dk],
        None,
        rows,
        units,
        n_in,
    )?;

    if d.use_bias {
        let db = cx.dparam(node, "bias")?;
        bias_backward(cx, &name, dz, db, rows, units);
    }
    Ok(())
}

/// `d` as a linear layer of `units` units without bias (the products of the backward
/// pass).
fn linear(d: &Dense, units: usize) -> Dense {
    Dense {
        units,
        activation: Activation::Linear,
        use_bias: false,
        ..d.clone()
    }
}

/// Whether `dx` runs as `dxᵀ = K·dzᵀ` (see [`backward`]): under a wide tier, when the
/// direct product `dz·Kᵀ` gets no wide tile (its units, the layer's `n_in` inputs, do
/// not fill the tier's registers) and the transposed one does (its units are the
/// `rows`), and the transposes it moves (`rows·(units + n_in)` elements) are fewer
/// than the kernel's (`n_in·units`). Measured on genomics_lc1d's 3996 × 64 Dense at
/// batch 32 (`examples/perf_lc_grad`, AVX-512 host, two runs each): one thread,
/// on-CPU time, the kernel's transpose and the f32x4 product 0.34 + 1.17 and
/// 0.35 + 1.14 ms, this form's wide product and transpose back 0.11 + 0.11 and
/// 0.11 + 0.10 ms (`dzᵀ` under 0.01 ms); two threads 0.90 and 1.82 ms against 0.41
/// and 0.67 ms.
fn input_grad_rows_in_lanes(
    tier: Option<crate::loop_ir::micro::Tier>,
    n_in: usize,
    units: usize,
    rows: usize,
) -> bool {
    tier.is_some_and(|t| {
        wide_tile(n_in, rows, t).is_none()
            && wide_tile(rows, n_in, t).is_some()
            && rows * (units + n_in) < n_in * units
    })
}

/// `db[u] = Σ_m dz[m, u]` over `rows` rows of `units` (one serial kernel: the sum order
/// is the rows' order).
pub fn bias_backward(cx: &mut Cx, name: &str, dz: BufId, db: BufId, rows: usize, units: usize) {
    let lanes = if units.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let mut kb = KernelBuilder::new(format!("{name}.backward_db"));
    let (m, u, u2) = (kb.var("m"), kb.var("u"), kb.var("u2"));
    let body = vec![
        for_(
            u2,
            units as u64,
            lanes,
            vec![Stmt::Store {
                buf: db,
                index: Affine::var(u2),
                value: Expr::Const(0.0),
            }],
        ),
        for_(
            m,
            rows as u64,
            LoopKind::Serial,
            vec![for_(
                u,
                units as u64,
                lanes,
                vec![Stmt::Store {
                    buf: db,
                    index: Affine::var(u),
                    value: bin(
                        BinOp::Add,
                        load(db, Affine::var(u)),
                        load(dz, Affine::var(m).scale(units as i64).plus_term(u, 1)),
                    ),
                }],
            )],
        ),
    ];
    cx.push(kb.finish(body), &[dz, db], &[db]);
}
