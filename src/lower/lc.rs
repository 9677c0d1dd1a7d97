//! Locally connected layers (1D, 2D, 3D; both data formats; `valid` and Keras's clipped
//! `same`; strides; dilation) in the loop IR.
//!
//! Forward, as DESIGN.md §3 prescribes: a parallel loop over the first output axis and
//! serial loops over the others, around a fixed-shape
//! nest over the patch. Filters are vectorised four lanes at a time when `F` is a
//! multiple of 4 (either data format), with a register tile of
//! `TB batch rows × FT filters` accumulators (at most 12 f32x4, under the x64 budget), so
//! each weight vector loaded is reused across the batch tile. Bias and activation are
//! fused into the store. Taps outside the input (`same` padding) are skipped by guards
//! that the verifier uses to prove the loads in bounds. When `F` is not a multiple of 4
//! and consecutive output positions read consecutive inputs, the lanes run over output
//! positions instead (`lc/forward/positions.rs`); otherwise, for few or odd filters at
//! batches that are multiples of 4, over batch rows, reading the input transposed
//! (`xT[e·B + b]`, a copy kernel before the layer's).
//!
//! Every choice of how (vector axis, tile, channel blocking, row merging, unrolling) is
//! made in `schedule/lc.rs`; the forward emitter (`lc/forward.rs`) follows it. The
//! backward pass lives in `lc_backward.rs` (re-exported here as [`backward`]) and
//! shares this file's geometry (`Geo`, `tap_pos`, `tap_loops`).

pub use super::lc_backward::backward;
use super::Cx;
use crate::error::Result;
use crate::graph::geometry::lc_window_start;
use crate::graph::infer::split_channels;
use crate::graph::{DataFormat, Graph, LocallyConnected, NodeId, Padding};
use crate::loop_ir::{for_, Affine, LoopKind, Stmt, Var};

/// Products of the trailing sizes: `strides(v)[a] = Π v[a+1..]`.
fn trailing(v: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; v.len()];
    for a in (0..v.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * v[a + 1] as i64;
    }
    s
}

/// The geometry of one LC layer, shared by its forward and backward lowerings. Strides
/// are in elements of the flat per-sample buffers.
#[derive(Clone)]
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
    /// Whether the input is read in channels_last order: the layer's own format, or a
    /// channels_first layer reading a channels_last copy of its input
    /// ([`Geo::with_x_channels_last`]).
    pub(super) x_cl: bool,
    /// Whether the output (or its gradient `dz`) is indexed in channels_last order: the
    /// layer's own format, or a channels_last copy of a channels_first `dz`
    /// ([`Geo::with_z_channels_last`]).
    pub(super) z_cl: bool,
    pub(super) x_sample: i64,
    pub(super) k_stride: Vec<i64>,
    pub(super) o_stride: Vec<i64>,
    pub(super) pad: Vec<i64>,
    /// Whether some taps fall outside the input (`same` padding, or zero padding fused
    /// into the layer, see [`super::fuse`]): the tap loops then carry guards.
    pub(super) guarded: bool,
}

/// The geometry of LC node `node` (input and output shapes from the graph).
pub(super) fn geometry(cx: &Cx, node: NodeId, l: &LocallyConnected) -> Result<Geo> {
    geometry_in(cx.graph, node, l)
}

/// [`geometry`] of a node of `graph`.
fn geometry_in(graph: &Graph, node: NodeId, l: &LocallyConnected) -> Result<Geo> {
    let n = &graph.nodes[node];
    geometry_padded(graph, node, l, &graph.nodes[n.inputs[0]].shape, &[])
}

/// The geometry of LC node `node` reading an input of shape `in_shape` through zeros
/// `before` it on each spatial axis (and as many after as make up the layer's own input
/// shape): a ZeroPadding layer fused into it ([`super::fuse`]); no zeros for `[]`.
pub(super) fn geometry_padded(
    graph: &Graph,
    node: NodeId,
    l: &LocallyConnected,
    in_shape: &[usize],
    before: &[usize],
) -> Result<Geo> {
    let n = &graph.nodes[node];
    let (in_sp, c) = split_channels(&n.name, in_shape, l.rank, l.data_format)?;
    let (out_sp, f) = split_channels(&n.name, &n.shape, l.rank, l.data_format)?;
    let cl = l.data_format == DataFormat::ChannelsLast;
    let x_stride: Vec<i64> = trailing(&in_sp)
        .iter()
        .map(|s| if cl { s * c as i64 } else { *s })
        .collect();
    let pad: Vec<i64> = (0..l.rank)
        .map(|a| {
            let fused = before.get(a).map_or(0, |&b| b as i64);
            fused - lc_window_start(0, l.kernel[a], l.strides[a], l.dilation[a], l.padding)
        })
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
        x_cl: cl,
        z_cl: cl,
        pad,
        // A fused padding guards even with no zeros before: its zeros after are taps
        // past the input's end.
        guarded: l.padding == Padding::Same || !before.is_empty(),
    })
}

/// The forward schedules autotuning may time for LC node `node` of `graph` at `batch`
/// rows on `target` ([`super::schedule::lc::plan`]), default first, each with the text
/// the loop IR prints for it.
pub fn forward_candidates(
    graph: &Graph,
    node: NodeId,
    l: &LocallyConnected,
    batch: usize,
    target: &super::Target,
) -> Result<Vec<(super::schedule::lc::ForwardPlan, String)>> {
    let g = geometry_in(graph, node, l)?;
    let half = target.weights != crate::loop_ir::Dtype::F32;
    Ok(
        super::schedule::lc::plan::candidates(&g, l, batch, target.tier, half)
            .into_iter()
            .map(|(p, s)| (p, s.to_string()))
            .collect(),
    )
}

impl Geo {
    /// This geometry reading its input from a channels_last copy (`x[b, sp…, c]`); the
    /// kernel, output and bias keep the layer's own layout.
    pub(super) fn with_x_channels_last(self) -> Geo {
        let c = self.c as i64;
        Geo {
            x_cl: true,
            x_stride: trailing(&self.in_sp).iter().map(|s| s * c).collect(),
            ..self
        }
    }

    /// This geometry reading `z` (the output gradient) from a channels_last copy
    /// (`dz[b, p, f]`).
    pub(super) fn with_z_channels_last(self) -> Geo {
        Geo { z_cl: true, ..self }
    }

    /// Flat index of `x[b, sp…, ch]` (input memory order) from per-axis input indices.
    pub(super) fn x_index(&self, b: &Affine, sp: &[Affine], ch: &Affine) -> Affine {
        let ch_stride = if self.x_cl {
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
        let (pp, ff) = if self.z_cl {
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

mod forward;
pub(super) use super::schedule::lc::reduction_kind;
pub use forward::forward;

/// Input index along axis `ax` of tap `t` of the window at output `o`:
/// `o·s + t·d − pad` (may fall outside the input under `same` padding).
pub(super) fn tap_pos(l: &LocallyConnected, g: &Geo, o: Var, t: Var, ax: usize) -> Affine {
    Affine::var(o)
        .scale(l.strides[ax] as i64)
        .plus_term(t, l.dilation[ax] as i64)
        .plus(-g.pad[ax])
}

/// Wraps `body` in the tap loops of the first `axes` spatial axes (outermost first),
/// each guarded when taps can fall outside the input ([`Geo::guarded`]) so that clipped
/// taps are skipped and the verifier
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
        if g.guarded {
            body = vec![Stmt::If {
                conds: vec![(tap_pos(l, g, o[ax], t[ax], ax), 0, g.in_sp[ax] as i64)],
                body,
            }];
        }
        body = vec![for_(t[ax], l.kernel[ax] as u64, LoopKind::Serial, body)];
    }
    body
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

/// The forward filters tile of a layer with `filters` filters: `(vectorised over
/// filters, FT, TB)` (see [`super::schedule::lc::tile`]).
pub fn register_tile(filters: usize, batch: usize) -> (bool, usize, usize) {
    super::schedule::lc::tile(filters, batch)
}
