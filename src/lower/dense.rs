//! Dense layers in the loop IR: `y[m, u] = act(Σ_i x[m, i]·K[i, u] + bias[u])` over every
//! row `m` of the flattened leading axes (batch included).
//!
//! Schedule: a register tile of `RT rows × UT units` accumulators. When `units` is a
//! multiple of 4 the unit axis is `Vector(4)` with `UT` up to 16 and `RT·UT/4 ≤ 12`
//! f32x4 accumulators (the x64 register budget), so each kernel row vector `K[i, tile]`
//! loaded (contiguous over units) is reused by `RT` rows and each broadcast `x[m, i]` by
//! `UT/4` vectors. Otherwise the unit axis is unrolled (`UT` the largest divisor of
//! `units` up to 8, `RT·UT ≤ 12`). The reduction over `i` is a serial loop in order, like
//! the reference; from `GEMV_MIN_IN` inputs on it runs over the matrix-vector schedule's
//! fixed input blocks (each summed from 0, the block sums added in order, then the bias),
//! so both schedules give the same bits and a row's result does not depend on the batch
//! size (which picks the schedule) nor on the thread count. The parallel loop runs over unit tiles when there are at least two,
//! otherwise over row tiles; rows that do not fill a tile get a second nest with a smaller
//! tile (fresh variables). Bias and elementwise activations are fused into the store;
//! softmax-like activations store into a temporary and run [`softmax_kernel`]. On a
//! target with a SIMD tier past f32x4, tiles of at least 8 rows whose units fill whole
//! registers run their reduction in the tier's microkernel. The tiles are chosen in
//! `schedule/dense.rs`.

use super::activation::{is_elementwise, softmax_kernel};
use super::schedule::dense::{register_tile, wide_tile};
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{Activation, Dense, NodeId};
use crate::loop_ir::micro::Wide;
use crate::loop_ir::{
    bin, fma, for_, load, load_local, Affine, BinOp, BufId, Expr, KernelBuilder, LocalId, LoopKind,
    Stmt, Var,
};

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
    /// Compute dtype the stores round to (see [`super::mixed`]).
    compute: crate::graph::ComputeDtype,
    /// `Some((blk, nb))`: sum the inputs in the [`gemv`] schedule's blocks (see
    /// [`gemv_blocks`]) so that both schedules give the same bits.
    blocks: Option<(usize, usize)>,
    /// The wide loop running each tile's reduction (see `schedule::dense::wide_tile`).
    wide: Option<Wide>,
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
        let ut = self.ut;
        let acc_at = |r: Var, u: Var| Affine::var(r).scale(ut as i64).plus_term(u, 1);
        let row = |r: Var| row0.clone().plus_term(r, 1);
        let unit = |u: Var| u0.clone().plus_term(u, 1);
        let out_at = |r: Var, u: Var| row(r).scale(self.units as i64).plus_affine(&unit(u));
        let rows = |r: Var, u: Var, s: Stmt| {
            for_(
                r,
                rt as u64,
                LoopKind::Unroll(rt as u32),
                vec![for_(u, ut as u64, self.ukind, vec![s])],
            )
        };
        // acc = 0, then acc[r, u] += x[row, i] · K[i, unit] for inputs `i = base + j`,
        // `j < len`, in order. `t` tags the fresh variables.
        let accumulate = |kb: &mut KernelBuilder, t: &str, base: Affine, len: usize| {
            let j = kb.var(&format!("i{tag}{t}"));
            let (r_i, u_i) = (
                kb.var(&format!("r{tag}{t}i")),
                kb.var(&format!("u{tag}{t}i")),
            );
            let (r_a, u_a) = (
                kb.var(&format!("r{tag}{t}a")),
                kb.var(&format!("u{tag}{t}a")),
            );
            let input = base.plus_term(j, 1);
            let init = rows(
                r_i,
                u_i,
                Stmt::SetLocal {
                    local: self.acc,
                    index: acc_at(r_i, u_i),
                    value: Expr::Const(0.0),
                },
            );
            let update = rows(
                r_a,
                u_a,
                Stmt::SetLocal {
                    local: self.acc,
                    index: acc_at(r_a, u_a),
                    value: fma(
                        load(self.x, row(r_a).scale(self.n_in as i64).plus_affine(&input)),
                        load(
                            self.k,
                            input.scale(self.units as i64).plus_affine(&unit(u_a)),
                        ),
                        load_local(self.acc, acc_at(r_a, u_a)),
                    ),
                },
            );
            let kind = self.wide.map_or(LoopKind::Serial, LoopKind::Wide);
            vec![init, for_(j, len as u64, kind, vec![update])]
        };
        let epilogue = |sum: Expr, u_s: Var| {
            super::mixed::epilogue(
                self.compute,
                sum,
                self.bias.map(|b| load(b, unit(u_s))),
                &self.act,
            )
            .ok_or_else(|| Error::internal("non-elementwise activation fused"))
        };
        // The tile's final store: bias and activation applied to the finished sum.
        let (r_s, u_s) = (kb.var(&format!("r{tag}s")), kb.var(&format!("u{tag}s")));
        let store = |sum: Expr| -> Result<Stmt> {
            let value = epilogue(sum, u_s)?;
            Ok(rows(
                r_s,
                u_s,
                Stmt::Store {
                    buf: self.z,
                    index: out_at(r_s, u_s),
                    value,
                },
            ))
        };
        let Some((blk, nb)) = self.blocks else {
            // One accumulation over all inputs in order.
            let mut out = accumulate(kb, "", Affine::constant(0), self.n_in);
            out.push(store(load_local(self.acc, acc_at(r_s, u_s)))?);
            return Ok(out);
        };
        // The matrix-vector schedule's order: each block summed from 0, the block sums
        // added in order to a running total kept in `z` (starting from 0), then the bias
        // and activation.
        let (r_z, u_z) = (kb.var(&format!("r{tag}z")), kb.var(&format!("u{tag}z")));
        let mut out = vec![rows(
            r_z,
            u_z,
            Stmt::Store {
                buf: self.z,
                index: out_at(r_z, u_z),
                value: Expr::Const(0.0),
            },
        )];
        let add_block = |kb: &mut KernelBuilder, t: &str, base: Affine, len: usize| {
            let mut s = accumulate(kb, t, base, len);
            let (r_b, u_b) = (
                kb.var(&format!("r{tag}{t}b")),
                kb.var(&format!("u{tag}{t}b")),
            );
            s.push(rows(
                r_b,
                u_b,
                Stmt::Store {
                    buf: self.z,
                    index: out_at(r_b, u_b),
                    value: bin(
                        BinOp::Add,
                        load(self.z, out_at(r_b, u_b)),
                        load_local(self.acc, acc_at(r_b, u_b)),
                    ),
                },
            ));
            s
        };
        let full = self.n_in / blk;
        let bv = kb.var(&format!("blk{tag}"));
        let body = add_block(kb, "", Affine::var(bv).scale(blk as i64), blk);
        out.push(for_(bv, full as u64, LoopKind::Serial, body));
        if full < nb {
            let last = self.n_in - full * blk;
            out.extend(add_block(
                kb,
                "_l",
                Affine::constant((full * blk) as i64),
                last,
            ));
        }
        out.push(store(load(self.z, out_at(r_s, u_s)))?);
        Ok(out)
    }
}

/// What the forward and backward lowerings of one Dense node share: its name, the
/// product's `n_in` inputs, `units` and `rows` (the batch times the input's leading
/// axes), and the input and kernel buffers.
struct Operands {
    name: String,
    n_in: usize,
    units: usize,
    rows: usize,
    x: BufId,
    k: BufId,
}

/// The [`Operands`] of Dense node `node`.
fn operands(cx: &Cx, node: NodeId, d: &Dense) -> Result<Operands> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let in_shape = &cx.graph.nodes[n.inputs[0]].shape;
    let n_in = *in_shape
        .last()
        .ok_or_else(|| Error::internal(format!("dense '{name}': scalar input")))?;
    let rows = cx.batch * in_shape[..in_shape.len() - 1].iter().product::<usize>();
    Ok(Operands {
        n_in,
        units: d.units,
        rows,
        x: cx.input(node, 0)?,
        k: cx.param(node, "kernel")?,
        name,
    })
}

/// Lowers the forward pass of Dense node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, d: &Dense) -> Result<()> {
    let out_shape = cx.graph.nodes[node].shape.clone();
    let Operands {
        name,
        n_in,
        units,
        rows,
        x,
        k,
    } = operands(cx, node, d)?;
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
    product(cx, &name, d, [x, k, z], bias, n_in, units, rows)?;
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

/// Appends `z = act(x·K + b)` for `rows × n_in` times `n_in × units` with the schedule
/// that suits the shape: the streaming matrix-vector product for one row (or few rows of
/// a large kernel whose units do not fill vectors), otherwise the register tile. `d`'s
/// activation is fused when elementwise (softmax-like ones are left to the caller).
#[allow(clippy::too_many_arguments)]
fn product(
    cx: &mut Cx,
    name: &str,
    d: &Dense,
    [x, k, z]: [BufId; 3],
    bias: Option<BufId>,
    n_in: usize,
    units: usize,
    rows: usize,
) -> Result<()> {
    let elementwise = is_elementwise(&d.activation);
    let big = n_in * units * 4 >= 1 << 20;
    if n_in >= GEMV_MIN_IN && (rows == 1 || (big && !units.is_multiple_of(4) && rows <= 64)) {
        let act = if elementwise {
            d.activation.clone()
        } else {
            Activation::Linear
        };
        gemv(cx, name, [x, k, z], bias, n_in, units, rows, &act)
    } else {
        tiled(cx, name, d, [x, k, z], bias, n_in, units, rows, elementwise)
    }
}

/// Inputs at least this long use the streaming matrix-vector schedule at one row.
const GEMV_MIN_IN: usize = 256;
/// Fixed number of input blocks of the matrix-vector schedule. Fixed (not per thread), so
/// the summation order, and the result, is the same for any thread count.
const GEMV_BLOCKS: usize = 16;

/// The input blocks `(blk, nb)` of the matrix-vector schedule: `nb` blocks of `blk`
/// inputs, the last one possibly shorter. The register-tiled schedule sums in the same
/// blocks when `n_in >= GEMV_MIN_IN`, so a row's result does not depend on which
/// schedule (chosen from the row count) computes it, hence not on the batch size.
fn gemv_blocks(n_in: usize) -> (usize, usize) {
    let nb = GEMV_BLOCKS.min(n_in);
    let blk = n_in.div_ceil(nb);
    (blk, n_in.div_ceil(blk))
}

/// Few rows and a large kernel: `y = act(x·K + b)` as a memory-bound streaming product.
/// Kernel 1 splits the inputs into [`GEMV_BLOCKS`] contiguous blocks (parallel) and, for
/// each input `i` of a block, adds `x[r, i]·K[i, :]` to the block's partial row of every
/// row `r` — one contiguous pass over the weights, each weight row reused from L1 by all
/// rows, partial rows in L2. Kernel 2 adds the partial rows in block order, the bias, and
/// the activation. Used at one row, and for kernels of 1 MiB or more whose unit count is
/// not a multiple of 4 (no f32x4 register tile): the register-tiled schedule walks `K`
/// one narrow column strip at a time with a stride of `units` floats, which ran 6× slower
/// than the reference path on YOLO's 12544×1470 classifier at batch 1 and 3× slower at
/// batch 32 (TLB and prefetch misses).
#[allow(clippy::too_many_arguments)]
fn gemv(
    cx: &mut Cx,
    name: &str,
    [x, k, z]: [crate::loop_ir::BufId; 3],
    bias: Option<crate::loop_ir::BufId>,
    n_in: usize,
    units: usize,
    rows: usize,
    act: &Activation,
) -> Result<()> {
    let nb = gemv_blocks(n_in).1;
    let part = cx.temp(nb * rows * units);
    // Kernel 1: part[b, u] = Σ_{i in block b} x[i]·K[i, u].
    let blocks = if rows * units <= GEMV_REGISTERS {
        blocks_in_registers(name, [x, k, part], n_in, units, rows)
    } else {
        blocks_in_memory(name, [x, k, part], n_in, units, rows)
    };
    cx.push(blocks, &[x, k], &[part]);
    gemv_sum(cx, name, part, z, bias, units, rows, nb, act)
}

/// Kernel 1 of [`gemv`] with the partial rows in `part` itself (too many to keep in
/// registers: YOLO's classifier has 1470 units).
fn blocks_in_memory(
    name: &str,
    [x, k, part]: [BufId; 3],
    n_in: usize,
    units: usize,
    rows: usize,
) -> crate::loop_ir::Kernel {
    let (blk, nb) = gemv_blocks(n_in);
    let u4 = units - units % 4;
    let mut kb = KernelBuilder::new(format!("{name}.forward.blocks"));
    let (bv, iv) = (kb.var("blk"), kb.var("i"));
    let (rz, ra) = (kb.var("rz"), kb.var("r"));
    let (u0, u1, u2, u3) = (kb.var("u"), kb.var("ur"), kb.var("ua"), kb.var("uar"));
    let prow_r = |r: Var, u: Affine| {
        Affine::var(bv)
            .scale((rows * units) as i64)
            .plus_term(r, units as i64)
            .plus_affine(&u)
    };
    let zero = |u: Var, off: i64, n: usize, kind: LoopKind| {
        for_(
            u,
            n as u64,
            kind,
            vec![Stmt::Store {
                buf: part,
                index: prow_r(rz, Affine::var(u).plus(off)),
                value: Expr::Const(0.0),
            }],
        )
    };
    let upd = |u: Var, off: i64, n: usize, kind: LoopKind, row: Affine| {
        let uu = Affine::var(u).plus(off);
        for_(
            u,
            n as u64,
            kind,
            vec![Stmt::Store {
                buf: part,
                index: prow_r(ra, uu.clone()),
                value: fma(
                    load(x, row.clone().plus_term(ra, n_in as i64)),
                    load(k, row.clone().scale(units as i64).plus_affine(&uu)),
                    load(part, prow_r(ra, uu)),
                ),
            }],
        )
    };
    let mut zeros = Vec::new();
    let mut per_row = Vec::new();
    let row = Affine::var(bv).scale(blk as i64).plus_term(iv, 1);
    if u4 > 0 {
        zeros.push(zero(u0, 0, u4, LoopKind::Vector(4)));
        per_row.push(upd(u2, 0, u4, LoopKind::Vector(4), row.clone()));
    }
    if units > u4 {
        zeros.push(zero(u1, u4 as i64, units - u4, LoopKind::Serial));
        per_row.push(upd(
            u3,
            u4 as i64,
            units - u4,
            LoopKind::Serial,
            row.clone(),
        ));
    }
    let mut body = vec![for_(rz, rows as u64, LoopKind::Serial, zeros)];
    let inner = vec![for_(ra, rows as u64, LoopKind::Serial, per_row)];
    body.push(for_(
        iv,
        blk as u64,
        LoopKind::Serial,
        last_block_guard(row, n_in, inner),
    ));
    kb.finish(vec![for_(bv, nb as u64, LoopKind::Parallel, body)])
}

/// `body` of a block's input `row`, guarded when the last block is shorter than the
/// others (rows past `n_in` skipped).
fn last_block_guard(row: Affine, n_in: usize, body: Vec<Stmt>) -> Vec<Stmt> {
    let (blk, nb) = gemv_blocks(n_in);
    if nb * blk == n_in {
        body
    } else {
        vec![Stmt::If {
            conds: vec![(row, 0, n_in as i64)],
            body,
        }]
    }
}

/// Partial sums of at most this many floats (`rows · units`) stay in registers over a
/// block of the matrix-vector schedule ([`blocks_in_registers`]).
const GEMV_REGISTERS: usize = 16;

/// Kernel 1 of [`gemv`] when a block's partial rows fit in registers (a Dense layer of a
/// few units over a long flattened input, as genomic-prediction networks end): the same
/// sums in the same order, accumulated in a register tile and stored once per block.
/// Accumulating in `part` itself made every multiply-add wait for the previous one's
/// store: GpNet-like `Dense(1)` over 50 k inputs took 0.14 ms on one thread.
fn blocks_in_registers(
    name: &str,
    [x, k, part]: [BufId; 3],
    n_in: usize,
    units: usize,
    rows: usize,
) -> crate::loop_ir::Kernel {
    let (blk, nb) = gemv_blocks(n_in);
    let mut kb = KernelBuilder::new(format!("{name}.forward.blocks"));
    let (bv, iv) = (kb.var("blk"), kb.var("i"));
    let (rz, ra, rs) = (kb.var("rz"), kb.var("r"), kb.var("rs"));
    let (uz, ua, us) = (kb.var("uz"), kb.var("u"), kb.var("us"));
    let acc = kb.local("acc", rows * units);
    let at = |r: Var, u: Var| Affine::var(r).scale(units as i64).plus_term(u, 1);
    let unit_kind = if units.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Unroll(units as u32)
    };
    let tile = |r: Var, u: Var, st: Stmt| {
        for_(
            r,
            rows as u64,
            LoopKind::Unroll(rows as u32),
            vec![for_(u, units as u64, unit_kind, vec![st])],
        )
    };
    let row = Affine::var(bv).scale(blk as i64).plus_term(iv, 1);
    let update = vec![tile(
        ra,
        ua,
        Stmt::SetLocal {
            local: acc,
            index: at(ra, ua),
            value: fma(
                load(x, row.clone().plus_term(ra, n_in as i64)),
                load(k, row.clone().scale(units as i64).plus_term(ua, 1)),
                load_local(acc, at(ra, ua)),
            ),
        },
    )];
    let update = last_block_guard(row, n_in, update);
    let body = vec![
        tile(
            rz,
            uz,
            Stmt::SetLocal {
                local: acc,
                index: at(rz, uz),
                value: Expr::Const(0.0),
            },
        ),
        for_(iv, blk as u64, LoopKind::Serial, update),
        tile(
            rs,
            us,
            Stmt::Store {
                buf: part,
                index: Affine::var(bv)
                    .scale((rows * units) as i64)
                    .plus_affine(&at(rs, us)),
                value: load_local(acc, at(rs, us)),
            },
        ),
    ];
    kb.finish(vec![for_(bv, nb as u64, LoopKind::Parallel, body)])
}

/// Kernel 2 of [`gemv`]: `y[u] = act(Σ_b part[b, u] + bias[u])`, blocks in order.
#[allow(clippy::too_many_arguments)]
fn gemv_sum(
    cx: &mut Cx,
    name: &str,
    part: BufId,
    z: BufId,
    bias: Option<BufId>,
    units: usize,
    rows: usize,
    nb: usize,
    act: &Activation,
) -> Result<()> {
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let (pr, pu, u, bj) = (kb.var("pr"), kb.var("pu"), kb.var("u"), kb.var("b"));
    let acc = kb.local("acc", 1);
    let z0 = Affine::constant(0);
    let body = vec![
        Stmt::SetLocal {
            local: acc,
            index: z0.clone(),
            value: Expr::Const(0.0),
        },
        for_(
            bj,
            nb as u64,
            LoopKind::Serial,
            vec![Stmt::SetLocal {
                local: acc,
                index: z0.clone(),
                value: bin(
                    BinOp::Add,
                    load_local(acc, z0.clone()),
                    load(
                        part,
                        Affine::var(bj)
                            .scale((rows * units) as i64)
                            .plus_term(pr, units as i64)
                            .plus_term(pu, 1),
                    ),
                ),
            }],
        ),
        Stmt::Store {
            buf: z,
            index: Affine::var(pr).scale(units as i64).plus_term(pu, 1),
            value: super::mixed::epilogue(
                cx.compute,
                load_local(acc, z0.clone()),
                bias.map(|b| load(b, Affine::var(pu))),
                act,
            )
            .ok_or_else(|| Error::internal("softmax fused into a matrix-vector kernel"))?,
        },
    ];
    let _ = u;
    let mut reads = vec![part];
    reads.extend(bias);
    cx.push(
        kb.finish(vec![for_(
            pr,
            rows as u64,
            LoopKind::Parallel,
            vec![for_(pu, units as u64, LoopKind::Serial, body)],
        )]),
        &reads,
        &[z],
    );
    Ok(())
}

/// Rows ≥ 2 (or short inputs): the register-tiled schedule.
#[allow(clippy::too_many_arguments)]
fn tiled(
    cx: &mut Cx,
    name: &str,
    d: &Dense,
    [x, k, z]: [crate::loop_ir::BufId; 3],
    bias: Option<crate::loop_ir::BufId>,
    n_in: usize,
    units: usize,
    rows: usize,
    elementwise: bool,
) -> Result<()> {
    let wide = cx
        .tier
        .and_then(|t| wide_tile(units, rows, t).map(|(ut, rt)| (t, ut, rt)));
    let (vec, ut, rt) = match wide {
        Some((_, ut, rt)) => (true, ut, rt),
        None => register_tile(units, rows),
    };
    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    if let Some((t, ut, rt)) = wide {
        kb.schedule(format!("dense.forward(tile={rt}x{ut}, {})", Wide::new(t)));
    }
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
        compute: cx.compute,
        act: if elementwise {
            d.activation.clone()
        } else {
            Activation::Linear
        },
        blocks: (n_in >= GEMV_MIN_IN).then(|| gemv_blocks(n_in)),
        wide: wide.map(|(t, ..)| Wide::new(t)),
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
    if plan.blocks.is_some() {
        // The running block total lives in `z`.
        reads.push(z);
    }
    cx.push(kb.finish(nest), &reads, &[z]);
    Ok(())
}

mod backward;
pub use backward::{backward, bias_backward};
