//! Max/average pooling (TensorFlow `valid`/`same`) in the loop IR, forward and backward;
//! global pooling in the `global_pool` submodule ([`global`], [`global_backward`]).
//!
//! Pooling: a parallel loop over the first output axis, serial loops over the other output
//! axes and the batch, then a tile of channels held in a local accumulator: `Vector(4)`
//! over up to 16 contiguous channels when the data is channels_last and `C` is a multiple
//! of 4, otherwise one channel at a time. The window taps are serial loops; with `same`
//! padding each tap is guarded by `0 ≤ o·s − pad + t < n` (the affine expression scaled
//! into the index, so the verifier proves the load in bounds), which also gives TF's
//! semantics: padding never contributes. Max starts from `−FLT_MAX` and takes
//! `x > acc ? x : acc`, as TensorFlow's `MaxPool` kernel does: a NaN tap is ignored, and a
//! window of NaN and `−∞` only gives `−FLT_MAX` (not the propagating [`BinOp::Max`], see
//! the loop IR's notes on NaN); average divides the
//! in-bounds sum by the number of in-bounds taps, a compile-time count per output position
//! (a constant when every window is full, else a `Const` buffer indexed by position).
//!
//! Backward ([`backward`]): a parallel loop over the batch; each row of `dx` is written
//! completely by its own iteration. Average pooling adds `dy / count` to every in-bounds
//! tap of each window (the row zeroed first, windows in output order). Max pooling sends
//! `dy` to the tap TensorFlow's `MaxPoolGrad` picks (its argmax starts at the window's
//! first tap and moves to each later tap strictly greater than the current one, so a NaN
//! first tap keeps it): with `y` the forward maximum (which ignores NaN inputs), a first
//! pass over the window notes whether any tap equals `y` (none does only when every tap
//! is NaN or `−∞`) and whether the first tap is NaN, and a second pass gives `dy` to the
//! first tap with `x ≥ y`, or to the very first tap when none matched or it was NaN,
//! tracked by per-lane flags in locals (`Select`s, no branches). Global max pooling
//! follows `tf.reduce_max`'s gradient instead (see `global_pool`).

mod global_pool;

pub use global_pool::{global, global_backward};

use super::shape::row_major;
use super::Cx;
use crate::error::Result;
use crate::graph::geometry::tf_pad_before;
use crate::graph::infer::split_channels;
use crate::graph::{DataFormat, NodeId, Padding, Pool, PoolKind};
use crate::loop_ir::{
    bin, for_, load, load_local, Affine, BinOp, BufId, CmpOp, Expr, KernelBuilder, LocalId,
    LoopKind, Stmt, Var,
};

/// Channel tile: `(kind of the channel loop, channels per tile)`.
fn channel_tile(cl: bool, c: usize) -> (LoopKind, usize) {
    if cl && c.is_multiple_of(4) {
        let ct = [16, 12, 8, 4]
            .into_iter()
            .find(|t| c.is_multiple_of(*t))
            .unwrap_or(4);
        (LoopKind::Vector(4), ct)
    } else {
        // A one-element tile under a fully unrolled loop keeps the local a register.
        (LoopKind::Unroll(1), 1)
    }
}

/// What average pooling divides by.
#[derive(Clone, Copy)]
enum Divisor {
    /// Every window is full: the window size.
    Const(f32),
    /// A `Const` buffer of in-bounds tap counts, one per output position.
    Counts(BufId),
}

/// Number of in-bounds taps of window `o` on one axis: the taps `t < k` with
/// `0 ≤ o·s − pad + t < n`, counted without visiting them (`k` may be huge).
fn taps_in_bounds(o: usize, k: usize, s: usize, pad: usize, n: usize) -> usize {
    let start = (o * s) as i128 - pad as i128;
    let lo = start.max(0);
    let hi = (start + k as i128).min(n as i128);
    (hi - lo).max(0) as usize
}

/// The taps `[lo, hi)` of one axis that can reach the input from some window: `t` is in
/// bounds for window `o` when `pad − o·s ≤ t < n + pad − o·s`, so over the windows
/// `o < out` only `pad − (out−1)·s ≤ t < n + pad` (and `0 ≤ t < k`) can be. The tap
/// loops run over this range, so a window far larger than its input (`pool_size`
/// 2^31 on a length-4 input) costs the input's length, not the window's.
fn tap_range(k: usize, s: usize, pad: usize, n: usize, out: usize) -> (usize, usize) {
    let lo = (pad as i128 - (out.saturating_sub(1) as i128) * s as i128).max(0);
    let hi = (n as i128 + pad as i128).min(k as i128);
    (lo as usize, (hi.max(lo)) as usize)
}

/// Where channel `ch` of spatial offset `sp` (both affine) lives in one sample.
fn chan_index(cl: bool, sp: Affine, ch: Affine, c: usize, n_sp: usize) -> Affine {
    if cl {
        sp.scale(c as i64).plus_affine(&ch)
    } else {
        ch.scale(n_sp as i64).plus_affine(&sp)
    }
}

/// Geometry of one pooling layer, shared by the forward and backward lowerings.
struct Geom {
    name: String,
    rank: usize,
    cl: bool,
    c: usize,
    in_sp: Vec<usize>,
    out_sp: Vec<usize>,
    /// TF padding before the first element, per axis.
    pad: Vec<usize>,
    /// Per axis, the taps `[lo, hi)` the tap loops visit (see [`tap_range`]).
    taps: Vec<(usize, usize)>,
    n_in: usize,
    n_out: usize,
    /// Row-major strides of the input and output spatial axes.
    is: Vec<i64>,
    os: Vec<i64>,
}

impl Geom {
    fn new(cx: &Cx, node: NodeId, pl: &Pool) -> Result<Geom> {
        let n = &cx.graph.nodes[node];
        let name = n.name.clone();
        let in_shape = &cx.graph.nodes[n.inputs[0]].shape;
        let (in_sp, c) = split_channels(&name, in_shape, pl.rank, pl.data_format)?;
        let (out_sp, _) = split_channels(&name, &n.shape, pl.rank, pl.data_format)?;
        let pad: Vec<usize> = (0..pl.rank)
            .map(|a| tf_pad_before(in_sp[a], pl.pool[a], pl.strides[a], 1, pl.padding))
            .collect();
        let taps = (0..pl.rank)
            .map(|a| tap_range(pl.pool[a], pl.strides[a], pad[a], in_sp[a], out_sp[a]))
            .collect();
        Ok(Geom {
            taps,
            name,
            rank: pl.rank,
            cl: pl.data_format == DataFormat::ChannelsLast,
            c,
            pad,
            n_in: in_sp.iter().product(),
            n_out: out_sp.iter().product(),
            is: row_major(&in_sp),
            os: row_major(&out_sp),
            in_sp,
            out_sp,
        })
    }

    /// Flat output position of the output multi-index `o`.
    fn p_at(&self, o: &[Var]) -> Affine {
        o.iter()
            .zip(&self.os)
            .fold(Affine::constant(0), |acc, (&v, &s)| acc.plus_term(v, s))
    }

    /// Input position `o·s − pad + (lo + t)` on axis `a` (`t` counts from the first
    /// visited tap `lo`).
    fn pos(&self, pl: &Pool, a: usize, o: &[Var], t: &[Var]) -> Affine {
        Affine::var(o[a])
            .scale(pl.strides[a] as i64)
            .plus_term(t[a], 1)
            .plus(self.taps[a].0 as i64 - self.pad[a] as i64)
    }

    /// Flat index of input element (row `b`, tap `t` of window `o`, channel `ch`).
    fn x_at(&self, pl: &Pool, b: Var, o: &[Var], t: &[Var], ch: Affine) -> Affine {
        let sp = (0..self.rank).fold(Affine::constant(0), |acc, a| {
            acc.plus_affine(&self.pos(pl, a, o, t).scale(self.is[a]))
        });
        Affine::var(b)
            .scale((self.n_in * self.c) as i64)
            .plus_affine(&chan_index(self.cl, sp, ch, self.c, self.n_in))
    }

    /// Flat index of output element (row `b`, window `o`, channel `ch`).
    fn y_at(&self, b: Var, o: &[Var], ch: Affine) -> Affine {
        Affine::var(b)
            .scale((self.n_out * self.c) as i64)
            .plus_affine(&chan_index(self.cl, self.p_at(o), ch, self.c, self.n_out))
    }

    /// `body` inside the serial loops over the window taps `t` that can reach the input,
    /// each guarded (with `same` padding) by `0 ≤ o·s − pad + lo + t < n`.
    fn taps(&self, pl: &Pool, o: &[Var], t: &[Var], mut body: Vec<Stmt>) -> Vec<Stmt> {
        for a in (0..self.rank).rev() {
            if pl.padding != Padding::Valid {
                body = vec![Stmt::If {
                    conds: vec![(self.pos(pl, a, o, t), 0, self.in_sp[a] as i64)],
                    body,
                }];
            }
            let (lo, hi) = self.taps[a];
            body = vec![for_(t[a], (hi - lo) as u64, LoopKind::Serial, body)];
        }
        body
    }

    /// What average pooling divides by (`None` for max pooling); a `Const` buffer named
    /// `name` when some window is clipped.
    fn divisor(&self, cx: &mut Cx, pl: &Pool, name: &str) -> Option<Divisor> {
        if pl.kind != PoolKind::Average {
            return None;
        }
        let mut counts = vec![0f32; self.n_out];
        let mut full = true;
        for (p, slot) in counts.iter_mut().enumerate() {
            let mut cnt = 1;
            for a in 0..self.rank {
                let o = (p / self.os[a] as usize) % self.out_sp[a];
                let t = taps_in_bounds(o, pl.pool[a], pl.strides[a], self.pad[a], self.in_sp[a]);
                full &= t == pl.pool[a];
                cnt *= t;
            }
            *slot = cnt as f32;
        }
        Some(if full {
            Divisor::Const(pl.pool.iter().product::<usize>() as f32)
        } else {
            Divisor::Counts(cx.constant(name, counts))
        })
    }
}

/// `value / divisor` of window `p`.
fn divide(value: Expr, divisor: Option<Divisor>, p: Affine) -> Expr {
    match divisor {
        Some(Divisor::Const(k)) => bin(BinOp::Div, value, Expr::Const(k)),
        Some(Divisor::Counts(buf)) => bin(BinOp::Div, value, load(buf, p)),
        None => value,
    }
}

/// Lowers MaxPooling/AveragePooling node `node`.
pub fn forward(cx: &mut Cx, node: NodeId, pl: &Pool) -> Result<()> {
    let gm = Geom::new(cx, node, pl)?;
    let (name, rank, c) = (gm.name.clone(), gm.rank, gm.c);
    let x = cx.input(node, 0)?;
    let y = cx.output(node);
    let divisor = gm.divisor(cx, pl, &format!("{name}.count"));

    let mut kb = KernelBuilder::new(format!("{name}.forward"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
    let b = kb.var("b");
    let cti = kb.var("ct");
    let (cc_i, cc_u, cc_s) = (kb.var("c_i"), kb.var("c_u"), kb.var("c_s"));
    let (ckind, ct) = channel_tile(gm.cl, c);
    let acc = kb.local("acc", ct);
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let init = match pl.kind {
        PoolKind::Max => f32::MIN,
        PoolKind::Average => 0.0,
    };
    let set = |cc: Var, value: Expr| {
        for_(
            cc,
            ct as u64,
            ckind,
            vec![Stmt::SetLocal {
                local: acc,
                index: Affine::var(cc),
                value,
            }],
        )
    };
    let tap = load(x, gm.x_at(pl, b, &o, &t, ch(cc_u)));
    let held = load_local(acc, Affine::var(cc_u));
    let update = set(
        cc_u,
        match pl.kind {
            // `acc < x ? x : acc`: NaN taps ignored (one `maxps x, acc` on x64).
            PoolKind::Max => select(CmpOp::Lt, held.clone(), tap.clone(), tap, held),
            PoolKind::Average => bin(BinOp::Add, tap, held),
        },
    );
    let taps = gm.taps(pl, &o, &t, vec![update]);
    let result = divide(load_local(acc, Affine::var(cc_s)), divisor, gm.p_at(&o));
    let store = for_(
        cc_s,
        ct as u64,
        ckind,
        vec![Stmt::Store {
            buf: y,
            index: gm.y_at(b, &o, ch(cc_s)),
            value: result,
        }],
    );
    let mut body = vec![set(cc_i, Expr::Const(init))];
    body.extend(taps);
    body.push(store);
    let mut nest = vec![for_(
        b,
        cx.batch as u64,
        LoopKind::Serial,
        vec![for_(cti, (c / ct) as u64, LoopKind::Serial, body)],
    )];
    for a in (0..rank).rev() {
        let kind = if a == 0 {
            LoopKind::Parallel
        } else {
            LoopKind::Serial
        };
        nest = vec![for_(o[a], gm.out_sp[a] as u64, kind, nest)];
    }
    let mut reads: Vec<BufId> = vec![x];
    if let Some(Divisor::Counts(buf)) = divisor {
        reads.push(buf);
    }
    cx.push(kb.finish(nest), &reads, &[y]);
    Ok(())
}

/// Max-pooling backward, first pass, one lane: `any = 1` where tap value `x` reaches the
/// window maximum `ym`; `lead` records the window's first tap (0 before it, then 1 for a
/// number, 2 for NaN: `x ≥ x` is false only for NaN).
fn note_reached([any, lead]: [LocalId; 2], cc: Var, x: Expr, ym: Expr) -> Vec<Stmt> {
    let lane = Affine::var(cc);
    let kind = select(
        CmpOp::Ge,
        x.clone(),
        x.clone(),
        Expr::Const(1.0),
        Expr::Const(2.0),
    );
    vec![
        Stmt::SetLocal {
            local: lead,
            index: lane.clone(),
            value: select(
                CmpOp::Gt,
                load_local(lead, lane.clone()),
                Expr::Const(0.0),
                load_local(lead, lane.clone()),
                kind,
            ),
        },
        Stmt::SetLocal {
            local: any,
            index: lane.clone(),
            value: select(CmpOp::Ge, x, ym, Expr::Const(1.0), load_local(any, lane)),
        },
    ]
}

/// Max-pooling backward, second pass, one lane: `dst[at] = base + (dy at the first
/// eligible tap, else 0)`, where a tap is eligible when its value `x ≥ ym`, when no tap
/// reached `ym` (`any = 0`) or when the first tap was NaN (`lead = 2`): TensorFlow's
/// `MaxPoolGrad` keeps a NaN first tap as the window's argmax. `found` records that the
/// window's gradient was given.
fn give_first(
    [any, lead, found]: [LocalId; 3],
    cc: Var,
    [x, ym, dy]: [Expr; 3],
    dst: BufId,
    at: Affine,
    base: Option<Expr>,
) -> Vec<Stmt> {
    let lane = Affine::var(cc);
    let not_any = bin(BinOp::Sub, Expr::Const(1.0), load_local(any, lane.clone()));
    let nan_lead = bin(BinOp::Sub, load_local(lead, lane.clone()), Expr::Const(1.0));
    let fallback = bin(BinOp::Max, not_any, nan_lead);
    let eligible = select(CmpOp::Ge, x, ym, Expr::Const(1.0), fallback);
    let found_now = load_local(found, lane.clone());
    let mut value = select(
        CmpOp::Gt,
        eligible.clone(),
        found_now.clone(),
        dy,
        Expr::Const(0.0),
    );
    if let Some(base) = base {
        value = bin(BinOp::Add, base, value);
    }
    vec![
        Stmt::Store {
            buf: dst,
            index: at,
            value,
        },
        Stmt::SetLocal {
            local: found,
            index: lane,
            value: bin(BinOp::Max, found_now, eligible),
        },
    ]
}

/// `if a (cmp) b { t } else { f }`.
fn select(cmp: CmpOp, a: Expr, b: Expr, t: Expr, f: Expr) -> Expr {
    Expr::Select {
        cmp,
        a: Box::new(a),
        b: Box::new(b),
        t: Box::new(t),
        f: Box::new(f),
    }
}

/// `local[cc] = 0` for each local.
fn zero_locals(locals: &[LocalId], cc: Var) -> Vec<Stmt> {
    locals
        .iter()
        .map(|&local| Stmt::SetLocal {
            local,
            index: Affine::var(cc),
            value: Expr::Const(0.0),
        })
        .collect()
}

/// Backward pass of MaxPooling/AveragePooling node `node` given `dy` (see the module
/// docs): batch rows in parallel, each row of `dx` zeroed and then accumulated window by
/// window in output order.
pub fn backward(cx: &mut Cx, node: NodeId, pl: &Pool, dy: BufId) -> Result<()> {
    let gm = Geom::new(cx, node, pl)?;
    let (name, rank, c) = (gm.name.clone(), gm.rank, gm.c);
    let x = cx.input(node, 0)?;
    let ym = cx.value(node)?;
    let dx = cx.grad_input(node, 0)?;
    let divisor = gm.divisor(cx, pl, &format!("{name}.dcount"));

    let mut kb = KernelBuilder::new(format!("{name}.backward"));
    let (b, e) = (kb.var("b"), kb.var("e"));
    let o: Vec<Var> = (0..rank).map(|a| kb.var(&format!("o{a}"))).collect();
    let cti = kb.var("ct");
    let (ckind, ct) = channel_tile(gm.cl, c);
    let ch = |cc: Var| Affine::var(cti).scale(ct as i64).plus_term(cc, 1);
    let lanes = |cc: Var, body: Vec<Stmt>| for_(cc, ct as u64, ckind, body);
    let mut reads = vec![x, dy, dx];
    let mut window = Vec::new();
    match pl.kind {
        PoolKind::Average => {
            let t: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
            let cc = kb.var("c");
            let at = gm.x_at(pl, b, &o, &t, ch(cc));
            let share = divide(load(dy, gm.y_at(b, &o, ch(cc))), divisor, gm.p_at(&o));
            let store = Stmt::Store {
                buf: dx,
                index: at.clone(),
                value: bin(BinOp::Add, load(dx, at), share),
            };
            window = gm.taps(pl, &o, &t, vec![lanes(cc, vec![store])]);
            if let Some(Divisor::Counts(buf)) = divisor {
                reads.push(buf);
            }
        }
        PoolKind::Max => {
            let flags = [
                kb.local("any", ct),
                kb.local("lead", ct),
                kb.local("found", ct),
            ];
            let c0 = kb.var("c0");
            window.push(lanes(c0, zero_locals(&flags, c0)));
            let t1: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}"))).collect();
            let c1 = kb.var("c1");
            let pass1 = note_reached(
                [flags[0], flags[1]],
                c1,
                load(x, gm.x_at(pl, b, &o, &t1, ch(c1))),
                load(ym, gm.y_at(b, &o, ch(c1))),
            );
            window.extend(gm.taps(pl, &o, &t1, vec![lanes(c1, pass1)]));
            let t2: Vec<Var> = (0..rank).map(|a| kb.var(&format!("t{a}_2"))).collect();
            let c2 = kb.var("c2");
            let at = gm.x_at(pl, b, &o, &t2, ch(c2));
            let y_at = gm.y_at(b, &o, ch(c2));
            let pass2 = give_first(
                flags,
                c2,
                [load(x, at.clone()), load(ym, y_at.clone()), load(dy, y_at)],
                dx,
                at.clone(),
                Some(load(dx, at)),
            );
            window.extend(gm.taps(pl, &o, &t2, vec![lanes(c2, pass2)]));
            reads.push(ym);
        }
    }
    let mut scatter = vec![for_(cti, (c / ct) as u64, LoopKind::Serial, window)];
    for a in (0..rank).rev() {
        scatter = vec![for_(o[a], gm.out_sp[a] as u64, LoopKind::Serial, scatter)];
    }
    let mut body = vec![zero_row(dx, b, e, gm.n_in * c)];
    body.extend(scatter);
    let nest = for_(b, cx.batch as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &reads, &[dx]);
    Ok(())
}

/// `buf[b·row + e] = 0` for every `e < row`.
fn zero_row(buf: BufId, b: Var, e: Var, row: usize) -> Stmt {
    let kind = if row.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let store = Stmt::Store {
        buf,
        index: Affine::var(b).scale(row as i64).plus_term(e, 1),
        value: Expr::Const(0.0),
    };
    for_(e, row as u64, kind, vec![store])
}
