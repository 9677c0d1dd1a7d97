//! Locally connected layers (1D, 2D, 3D; both data formats; `valid` and Keras's clipped
//! `same`; strides; dilation) in the loop IR.
//!
//! Forward, as DESIGN.md §3 prescribes: a parallel loop over the first output axis and
//! serial loops over the others (never unrolled over positions), around a fixed-shape
//! nest over the patch. Filters are vectorised four lanes at a time when the output is
//! channels_last and `F` is a multiple of 4, with a register tile of
//! `TB batch rows × FT filters` accumulators (at most 12 f32x4, under the x64 budget), so
//! each weight vector loaded is reused across the batch tile. Bias and activation are
//! fused into the store. Taps outside the input (`same` padding) are skipped by guards
//! that the verifier uses to prove the loads in bounds.
//!
//! The backward pass lives in `lc_backward.rs` (re-exported here as [`backward`]) and
//! shares this file's geometry (`Geo`, `tap_pos`, `tap_loops`).

use super::activation::{is_elementwise, softmax_kernel};
pub use super::lc_backward::backward;
use super::Cx;
use crate::error::{Error, Result};
use crate::graph::geometry::lc_window_start;
use crate::graph::infer::split_channels;
use crate::graph::{DataFormat, LocallyConnected, NodeId, Padding};
use crate::loop_ir::{
    fma, for_, load, load_local, Affine, Expr, KernelBuilder, LoopKind, Stmt, Var,
};

/// Products of the trailing sizes: `strides(v)[a] = Π v[a+1..]`.
fn trailing(v: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; v.len()];
    for a in (0..v.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * v[a + 1] as i64;
    }
    s
}

/// The register tile: `(vectorised, FT filters per tile, TB batch rows per tile)`.
///
/// Vectorised: 8 f32x4 accumulators, as TB = 4 rows × FT = 8 filters (2 vectors) when
/// F % 8 == 0, else 8 rows × 1 vector. Measured (on-CPU time, one thread,
/// `examples/perf_lc.rs`), DeepFace L4–L6 at batch 32: 4×8 118–126 ms, 6×8 116–124 ms
/// (spills 3 registers), 8×4 125–131 ms, 2×16 130–137 ms, 3×16 140–144 ms (12
/// accumulators force re-loading each weight vector per FMA to stay under 16
/// registers; the extra loads cost more than the reuse gains), 3×8 140 ms. The x64
/// fma overwrites one multiplicand, so a weight vector and a broadcast kept in
/// registers cost one `movdqa` per reuse (notes §0.4); 4×8 keeps 8 accumulators, 2
/// weight vectors, the broadcast and its copy in 12 registers with no spills, and
/// divides the usual batch sizes (no remainder tile). Below batch 4 the layer is
/// memory-bound: the widest filter tile reads each position's weights in one contiguous
/// pass (DeepFace batch 1: 1.04× the streaming time).
fn tile(cl: bool, f: usize, batch: usize) -> (bool, usize, usize) {
    if cl && f.is_multiple_of(4) && batch < 4 {
        let ft = [16, 12, 8, 4]
            .into_iter()
            .find(|t| f.is_multiple_of(*t))
            .unwrap_or(4);
        (true, ft, (12 / (ft / 4)).clamp(1, 4).min(batch))
    } else if cl && f.is_multiple_of(4) {
        let ft = if f.is_multiple_of(8) { 8 } else { 4 };
        let tb = (32 / ft).clamp(1, 8).min(batch);
        (true, ft, tb)
    } else {
        let ft = (1..=8).rev().find(|t| f.is_multiple_of(*t)).unwrap_or(1);
        let tb = (12 / ft).clamp(1, 4).min(batch);
        (false, ft, tb)
    }
}

/// The geometry of one LC layer, shared by its forward and backward lowerings. Strides
/// are in elements of the flat per-sample buffers.
pub(super) struct Geo {
    pub(super) rank: usize,
    pub(super) cl: bool,
    pub(super) c: usize,
    pub(super) f: usize,
    pub(super) q: usize,
    pub(super) p: usize,
    pub(super) in_sp: Vec<usize>,
    pub(super) out_sp: Vec<usize>,
    pub(super) x_stride: Vec<i64>,
    pub(super) x_sample: i64,
    pub(super) k_stride: Vec<i64>,
    pub(super) o_stride: Vec<i64>,
    pub(super) pad: Vec<i64>,
}

/// The geometry of LC node `node` (input and output shapes from the graph).
pub(super) fn geometry(cx: &Cx, node: NodeId, l: &LocallyConnected) -> Result<Geo> {
    let n = &cx.graph.nodes[node];
    let in_shape = &cx.graph.nodes[n.inputs[0]].shape;
    let (in_sp, c) = split_channels(&n.name, in_shape, l.rank, l.data_format)?;
    let (out_sp, f) = split_channels(&n.name, &n.shape, l.rank, l.data_format)?;
    let cl = l.data_format == DataFormat::ChannelsLast;
    let x_stride: Vec<i64> = trailing(&in_sp)
        .iter()
        .map(|s| if cl { s * c as i64 } else { *s })
        .collect();
    let pad: Vec<i64> = (0..l.rank)
        .map(|a| -lc_window_start(0, l.kernel[a], l.strides[a], l.dilation[a], l.padding))
        .collect();
    Ok(Geo {
        rank: l.rank,
        cl,
        c,
        f,
        q: l.kernel.iter().product::<usize>() * c,
        p: out_sp.iter().product(),
        x_sample: (in_sp.iter().product::<usize>() * c) as i64,
        k_stride: trailing(&l.kernel),
        o_stride: trailing(&out_sp),
        in_sp,
        out_sp,
        x_stride,
        pad,
    })
}

impl Geo {
    /// Flat index of `x[b, sp…, ch]` (input memory order) from per-axis input indices.
    pub(super) fn x_index(&self, b: &Affine, sp: &[Affine], ch: &Affine) -> Affine {
        let ch_stride = if self.cl {
            1
        } else {
            self.in_sp.iter().product::<usize>() as i64
        };
        sp.iter().zip(&self.x_stride).fold(
            b.clone()
                .scale(self.x_sample)
                .plus_affine(&ch.clone().scale(ch_stride)),
            |acc, (s, &st)| acc.plus_affine(&s.clone().scale(st)),
        )
    }

    /// Flat output position `p = Σ o_a·ostride_a`.
    pub(super) fn position(&self, o: &[Affine]) -> Affine {
        o.iter()
            .zip(&self.o_stride)
            .fold(Affine::constant(0), |acc, (v, &s)| {
                acc.plus_affine(&v.clone().scale(s))
            })
    }

    /// Flat index of `K[p, q(taps, ch), f]` in the canonical `(P, Q, F)` layout, `q` in
    /// the input's memory order.
    pub(super) fn k_index(&self, p: &Affine, taps: &[Affine], ch: &Affine, f: &Affine) -> Affine {
        let tap = taps
            .iter()
            .zip(&self.k_stride)
            .fold(Affine::constant(0), |acc, (t, &s)| {
                acc.plus_affine(&t.clone().scale(s))
            });
        let q = if self.cl {
            tap.scale(self.c as i64).plus_affine(ch)
        } else {
            tap.plus_affine(&ch.clone().scale((self.q / self.c) as i64))
        };
        p.clone()
            .scale((self.q * self.f) as i64)
            .plus_affine(&q.scale(self.f as i64))
            .plus_affine(f)
    }

    /// Flat index of `z[b, p, f]` (channels_last) or `z[b, f, p]` (channels_first).
    pub(super) fn z_index(&self, b: &Affine, p: &Affine, f: &Affine) -> Affine {
        let (pp, ff) = if self.cl {
            (p.clone().scale(self.f as i64), f.clone())
        } else {
            (p.clone(), f.clone().scale(self.p as i64))
        };
        b.clone()
            .scale((self.p * self.f) as i64)
            .plus_affine(&pp)
            .plus_affine(&ff)
    }
}

/// Lowers the forward pass of LC node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, l: &LocallyConnected) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let name = n.name.clone();
    let out_shape = n.shape.clone();
    let g = geometry(cx, node, l)?;
    let cl = g.cl;
    let x = cx.input(node, 0)?;
    let k = cx.param(node, "kernel")?;
    let bias = if l.use_bias {
        Some(cx.param(node, "bias")?)
    } else {
        None
    };
    let elementwise = is_elementwise(&l.activation);
    let y = cx.output(node);
    let z = if elementwise {
        y
    } else {
        cx.temp(cx.batch * g.p * g.f)
    };

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let o: Vec<Var> = (0..g.rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let (vec, ft, tb) = tile(cl, g.f, cx.batch);
    let acc = kb.local("acc", tb * ft);
    let batch = cx.batch;
    let act = if elementwise {
        l.activation.clone()
    } else {
        crate::graph::Activation::Linear
    };

    let mut inner = Vec::new();
    let tiles = batch / tb;
    let mut nests = vec![(0usize, tiles, tb)];
    if !batch.is_multiple_of(tb) {
        nests.push((tiles * tb, 1, batch % tb));
    }
    for (ni, (b_base, ntiles, tb)) in nests.into_iter().enumerate() {
        let t: Vec<Var> = (0..g.rank).map(|a| kb.var(&format!("t{a}"))).collect();
        let bt = kb.var(&format!("bt{ni}"));
        let fti = kb.var(&format!("ft{ni}"));
        let cv = kb.var(&format!("c{ni}"));
        let (bb_i, ff_i) = (kb.var(&format!("bb{ni}")), kb.var(&format!("f{ni}")));
        let (bb_a, ff_a) = (kb.var(&format!("bb{ni}a")), kb.var(&format!("f{ni}a")));
        let (bb_s, ff_s) = (kb.var(&format!("bb{ni}s")), kb.var(&format!("f{ni}s")));
        let fkind = if vec {
            LoopKind::Vector(4)
        } else {
            LoopKind::Unroll(ft as u32)
        };
        let b_of = |bb: Var| {
            Affine::constant(b_base as i64)
                .plus_term(bt, tb as i64)
                .plus_term(bb, 1)
        };
        let f_of = |ff: Var| Affine::var(fti).scale(ft as i64).plus_term(ff, 1);
        let acc_at = |bb: Var, ff: Var| Affine::var(bb).scale(ft as i64).plus_term(ff, 1);
        // p = Σ o_a·ostride_a.
        let p_aff = o
            .iter()
            .zip(&g.o_stride)
            .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));
        let init = for_(
            bb_i,
            tb as u64,
            LoopKind::Unroll(tb as u32),
            vec![for_(
                ff_i,
                ft as u64,
                fkind,
                vec![Stmt::SetLocal {
                    local: acc,
                    index: acc_at(bb_i, ff_i),
                    value: Expr::Const(0.0),
                }],
            )],
        );
        // Input element of tap t at position o for batch row bb and channel c.
        let x_at = {
            let mut a = b_of(bb_a).scale(g.x_sample);
            if !g.cl {
                a = a.plus_term(cv, g.in_sp.iter().product::<usize>() as i64);
            } else {
                a = a.plus_term(cv, 1);
            }
            for ax in 0..g.rank {
                a = a.plus_affine(&tap_pos(l, &g, o[ax], t[ax], ax).scale(g.x_stride[ax]));
            }
            a
        };
        let q_aff = {
            let taps = t
                .iter()
                .zip(&g.k_stride)
                .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s));
            if g.cl {
                taps.scale(g.c as i64).plus_term(cv, 1)
            } else {
                taps.plus_term(cv, (g.q / g.c) as i64)
            }
        };
        let k_at = p_aff
            .clone()
            .scale((g.q * g.f) as i64)
            .plus_affine(&q_aff.scale(g.f as i64))
            .plus_affine(&f_of(ff_a));
        // The reduction's innermost loop. When the patch row is contiguous (channels_last,
        // dilation 1 and no padding guard on the last axis), the last tap axis and the
        // channels form one run of `kw·C` floats in both x and the kernel, so they become
        // one loop `m = t_last·C + c` (same summation order, hence bitwise the same sums).
        // Measured reason: with C = 16 (DeepFace) or C = 3/4 (seed_lc2d, snp_lc1d) the
        // channel loop alone is too short to amortise the loop overhead and the
        // accumulator rotation moves (one `movdqa` per accumulator per iteration: x64's
        // fma writes a multiplicand register, cranelift notes §0.4).
        let last = g.rank - 1;
        let merge = g.cl && l.dilation[last] == 1 && l.padding != Padding::Same;
        let (red_var, red_extent, x_at, k_at) = if merge {
            let m = kb.var(&format!("m{ni}"));
            (
                m,
                (l.kernel[last] * g.c) as u64,
                merge_terms(&x_at, t[last], cv, g.c as i64, m),
                merge_terms(&k_at, t[last], cv, g.c as i64, m),
            )
        } else {
            (cv, g.c as u64, x_at, k_at)
        };
        let update = for_(
            bb_a,
            tb as u64,
            LoopKind::Unroll(tb as u32),
            vec![for_(
                ff_a,
                ft as u64,
                fkind,
                vec![Stmt::SetLocal {
                    local: acc,
                    index: acc_at(bb_a, ff_a),
                    value: fma(
                        load(x, x_at.clone()),
                        load(k, k_at.clone()),
                        load_local(acc, acc_at(bb_a, ff_a)),
                    ),
                }],
            )],
        );
        let taps = vec![for_(
            red_var,
            red_extent,
            reduction_kind(red_extent),
            vec![update],
        )];
        let tap_axes = if merge { last } else { g.rank };
        let taps = tap_loops(l, &g, &o, &t, tap_axes, taps);
        // y[b, p, f] (channels_last) or y[b, f, p] (channels_first); bias likewise.
        let (y_at, bias_at) = if g.cl {
            (
                b_of(bb_s)
                    .scale((g.p * g.f) as i64)
                    .plus_affine(&p_aff.clone().scale(g.f as i64))
                    .plus_affine(&f_of(ff_s)),
                p_aff.clone().scale(g.f as i64).plus_affine(&f_of(ff_s)),
            )
        } else {
            (
                b_of(bb_s)
                    .scale((g.p * g.f) as i64)
                    .plus_affine(&f_of(ff_s).scale(g.p as i64))
                    .plus_affine(&p_aff),
                f_of(ff_s).scale(g.p as i64).plus_affine(&p_aff),
            )
        };
        let value = super::mixed::epilogue(
            cx.compute,
            load_local(acc, acc_at(bb_s, ff_s)),
            bias.map(|b| load(b, bias_at.clone())),
            &act,
        )
        .ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
        let store = for_(
            bb_s,
            tb as u64,
            LoopKind::Unroll(tb as u32),
            vec![for_(
                ff_s,
                ft as u64,
                fkind,
                vec![Stmt::Store {
                    buf: z,
                    index: y_at.clone(),
                    value,
                }],
            )],
        );
        let cb_len = block_channels(&g, ft, vec && !merge);
        if let Some(cbl) = cb_len {
            // Channel-blocked schedule (see `block_channels`): the filter-tile loop moves
            // inside a (taps, channel block) loop and the accumulators go through the
            // output row between blocks. Same operations in the same order as below.
            let cb = kb.var(&format!("cb{ni}"));
            let fb = kb.var(&format!("fb{ni}"));
            let (bb_l, ff_l) = (kb.var(&format!("bb{ni}l")), kb.var(&format!("f{ni}l")));
            let (bb_w, ff_w) = (kb.var(&format!("bb{ni}w")), kb.var(&format!("f{ni}w")));
            let (fz, bb_z, ff_z) = (
                kb.var(&format!("fz{ni}")),
                kb.var(&format!("bb{ni}z")),
                kb.var(&format!("f{ni}z")),
            );
            let (fo, ci) = (kb.var(&format!("fo{ni}")), kb.var(&format!("ci{ni}")));
            let with = |a: &Affine, fvar: Var, bb: Var, ff: Var| {
                // Rename the tile variables of an index built for (fti, bb_s, ff_s).
                let a = a
                    .clone()
                    .plus_term(fti, -a.coef(fti))
                    .plus_term(fvar, a.coef(fti));
                let a = a
                    .clone()
                    .plus_term(bb_s, -a.coef(bb_s))
                    .plus_term(bb, a.coef(bb_s));
                a.clone()
                    .plus_term(ff_s, -a.coef(ff_s))
                    .plus_term(ff, a.coef(ff_s))
            };
            let tile_loop = |bb: Var, ff: Var, st: Stmt| {
                for_(
                    bb,
                    tb as u64,
                    LoopKind::Unroll(tb as u32),
                    vec![for_(ff, ft as u64, fkind, vec![st])],
                )
            };
            let zero = for_(
                fz,
                (g.f / ft) as u64,
                LoopKind::Serial,
                vec![tile_loop(
                    bb_z,
                    ff_z,
                    Stmt::Store {
                        buf: z,
                        index: with(&y_at, fz, bb_z, ff_z),
                        value: Expr::Const(0.0),
                    },
                )],
            );
            let chan = |a: &Affine, fvar: Var| {
                // c = cb·CB + ci, and the tile's filter variable.
                let cc = a.coef(cv);
                let a = a
                    .clone()
                    .plus_term(cv, -cc)
                    .plus_term(cb, cc * cbl as i64)
                    .plus_term(ci, cc);
                a.clone()
                    .plus_term(fti, -a.coef(fti))
                    .plus_term(fvar, a.coef(fti))
            };
            let x_blk = chan(&x_at, fb);
            let k_blk = chan(&k_at, fb);
            let upd = for_(
                bb_a,
                tb as u64,
                LoopKind::Unroll(tb as u32),
                vec![for_(
                    ff_a,
                    ft as u64,
                    fkind,
                    vec![Stmt::SetLocal {
                        local: acc,
                        index: acc_at(bb_a, ff_a),
                        value: fma(
                            load(x, x_blk),
                            load(k, k_blk),
                            load_local(acc, acc_at(bb_a, ff_a)),
                        ),
                    }],
                )],
            );
            let per_tile = vec![
                tile_loop(
                    bb_l,
                    ff_l,
                    Stmt::SetLocal {
                        local: acc,
                        index: acc_at(bb_l, ff_l),
                        value: load(z, with(&y_at, fb, bb_l, ff_l)),
                    },
                ),
                for_(ci, cbl as u64, reduction_kind(cbl as u64), vec![upd]),
                tile_loop(
                    bb_w,
                    ff_w,
                    Stmt::Store {
                        buf: z,
                        index: with(&y_at, fb, bb_w, ff_w),
                        value: load_local(acc, acc_at(bb_w, ff_w)),
                    },
                ),
            ];
            let red = vec![for_(
                cb,
                (g.c / cbl) as u64,
                LoopKind::Serial,
                vec![for_(fb, (g.f / ft) as u64, LoopKind::Serial, per_tile)],
            )];
            let red = tap_loops(l, &g, &o, &t, g.rank, red);
            let fin = super::mixed::epilogue(
                cx.compute,
                load(z, with(&y_at, fo, bb_s, ff_s)),
                bias.map(|b| load(b, with(&bias_at, fo, bb_s, ff_s))),
                &act,
            )
            .ok_or_else(|| Error::internal("non-elementwise activation fused"))?;
            let finish = for_(
                fo,
                (g.f / ft) as u64,
                LoopKind::Serial,
                vec![tile_loop(
                    bb_s,
                    ff_s,
                    Stmt::Store {
                        buf: z,
                        index: with(&y_at, fo, bb_s, ff_s),
                        value: fin,
                    },
                )],
            );
            let _ = (init, taps, store);
            let mut body = vec![zero];
            body.extend(red);
            body.push(finish);
            inner.push(for_(bt, ntiles as u64, LoopKind::Serial, body));
            continue;
        }
        let mut body = vec![init];
        body.extend(taps);
        body.push(store);
        let f_loop = for_(fti, (g.f / ft) as u64, LoopKind::Serial, body);
        inner.push(for_(bt, ntiles as u64, LoopKind::Serial, vec![f_loop]));
    }
    let mut nest = inner;
    for ax in (0..g.rank).rev() {
        let kind = if ax == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(o[ax], g.out_sp[ax] as u64, kind, nest)];
    }
    let mut reads = vec![x, k];
    reads.extend(bias);
    cx.push(kb.finish(nest), &reads, &[z]);
    if !elementwise {
        let (axis, log) = match l.activation {
            crate::graph::Activation::Softmax { axis } => (axis, false),
            _ => (-1, true),
        };
        let r = out_shape.len() as i64;
        let axis = if axis < 0 { axis + r } else { axis } as usize;
        softmax_kernel(cx, &name, &out_shape, axis, log, z, y);
    }
    Ok(())
}

/// Longest unroll of the reduction loop. Measured: DeepFace L4 (12 accumulators) body of
/// 16 steps is ~200 FMAs, ~2 KB of code, well inside L1i.
const REDUCTION_UNROLL_MAX: u64 = 16;

/// The reduction loop's schedule: fully unrolled up to [`REDUCTION_UNROLL_MAX`],
/// otherwise unrolled by its largest divisor up to that, so each loop iteration carries
/// many FMAs per compare/branch and per accumulator rotation.
pub(super) fn reduction_kind(extent: u64) -> LoopKind {
    let u = (1..=REDUCTION_UNROLL_MAX.min(extent))
        .rev()
        .find(|u| extent.is_multiple_of(*u))
        .unwrap_or(1);
    match u {
        1 if extent > 1 => LoopKind::Serial,
        u => LoopKind::Unroll(u as u32),
    }
}

/// Input index along axis `ax` of tap `t` of the window at output `o`:
/// `o·s + t·d − pad` (may fall outside the input under `same` padding).
pub(super) fn tap_pos(l: &LocallyConnected, g: &Geo, o: Var, t: Var, ax: usize) -> Affine {
    Affine::var(o)
        .scale(l.strides[ax] as i64)
        .plus_term(t, l.dilation[ax] as i64)
        .plus(-g.pad[ax])
}

/// Wraps `body` in the tap loops of the first `axes` spatial axes (outermost first),
/// each guarded under `same` padding so that clipped taps are skipped and the verifier
/// can prove the input loads in bounds.
pub(super) fn tap_loops(
    l: &LocallyConnected,
    g: &Geo,
    o: &[Var],
    t: &[Var],
    axes: usize,
    mut body: Vec<Stmt>,
) -> Vec<Stmt> {
    for ax in (0..axes).rev() {
        if l.padding == Padding::Same {
            body = vec![Stmt::If {
                conds: vec![(tap_pos(l, g, o[ax], t[ax], ax), 0, g.in_sp[ax] as i64)],
                body,
            }];
        }
        body = vec![for_(t[ax], l.kernel[ax] as u64, LoopKind::Serial, body)];
    }
    body
}

/// Channel block length when one position's weights are too large to stay in cache while
/// the register tile walks them once per filter tile (`F/FT ≥ 2` passes over `Q·F`
/// floats with a stride of `F`): then the reduction is cut into blocks of up to 64
/// channels (≤ 64·F floats per tap, L2-resident) and every filter tile runs over a block
/// before the next block is read. Measured on YOLO's local layer (C = 1024, F = 256,
/// 9.4 MB of weights per position) at batch 1, where the unblocked walk ran slower than
/// the reference path. `None` when blocking does not apply.
fn block_channels(g: &Geo, ft: usize, vectorised_unmerged: bool) -> Option<usize> {
    let passes = g.f / ft.max(1);
    let bytes = g.q * g.f * 4;
    if !vectorised_unmerged || passes < 2 || bytes < 1 << 20 {
        return None;
    }
    (2..=64).rev().find(|b| g.c.is_multiple_of(*b))
}

/// `a` with its terms `C·a_c·t + a_c·c` replaced by `a_c·m` (`m = t·C + c`); `a` must
/// carry them in that ratio (true for the x and kernel indices of a contiguous row).
fn merge_terms(a: &Affine, t: Var, c: Var, ch: i64, m: Var) -> Affine {
    let ac = a.coef(c);
    debug_assert_eq!(a.coef(t), ch * ac, "merge_terms: indices not contiguous");
    a.clone()
        .plus_term(t, -a.coef(t))
        .plus_term(c, -ac)
        .plus_term(m, ac)
}

/// A zero-based index helper for tests: the batch-row tile chosen for a layer.
pub fn register_tile(cl: bool, filters: usize, batch: usize) -> (bool, usize, usize) {
    tile(cl, filters, batch)
}
