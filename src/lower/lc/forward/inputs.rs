//! What the LC forward kernel reads, and in which layout: its input (or a fused
//! ZeroPadding's input, `lower/fuse.rs`), a fused residual Add's other operand, and the
//! copies its schedule reads instead of the input (channels_last, or batch rows in lanes).
//!
//! Invariant: the copies are transposes only (every element moves exactly), and the
//! geometry returned describes the buffer returned.

use super::super::{geometry, geometry_padded, Geo};
use crate::error::Result;
use crate::graph::{LocallyConnected, NodeId};
use crate::loop_ir::BufId;
use crate::lower::schedule::lc::{self as sched, LcForward};
use crate::lower::shape::{transposed, transposed_per_sample};
use crate::lower::Cx;

/// The layer's geometry and input buffer: its own input, or under a fused ZeroPadding
/// the padding's input, the zeros becoming guards (see `lower/fuse.rs`).
pub(super) fn input(cx: &Cx, node: NodeId, l: &LocallyConnected) -> Result<(Geo, BufId)> {
    match cx.fusion.padded(node) {
        Some((pad, before)) => {
            let src = cx.graph.nodes[*pad].inputs[0];
            let shape = &cx.graph.nodes[src].shape;
            Ok((
                geometry_padded(cx.graph, node, l, shape, before)?,
                cx.input(*pad, 0)?,
            ))
        }
        None => Ok((geometry(cx, node, l)?, cx.input(node, 0)?)),
    }
}

/// A residual Add fused into the layer's store: the Add, its other operand's buffer,
/// and whether the layer's output is the Add's first operand.
pub(super) fn residual_operand(cx: &Cx, node: NodeId) -> Result<Option<(NodeId, BufId, bool)>> {
    let Some((add, other)) = cx.fusion.residual(node) else {
        return Ok(None);
    };
    let ins = &cx.graph.nodes[add].inputs;
    let k = ins.iter().position(|&i| i == other).unwrap_or(0);
    Ok(Some((add, cx.input(add, k)?, k == 1)))
}

/// The input as schedule `s` reads it: a channels_first input through a channels_last
/// copy (`x_cl`, see `schedule/lc.rs::wide_filters`), and under lanes over batch rows
/// transposed to `xT[e·B + b]` (one vector per tap's rows); with the geometry of that
/// layout.
pub(super) fn laid_out(
    cx: &mut Cx,
    (node, name): (NodeId, &str),
    x: BufId,
    g: Geo,
    s: &LcForward,
) -> (BufId, Geo) {
    let batch = cx.batch;
    let (x, g) = if s.x_cl {
        let spatial = g.in_sp.iter().product::<usize>();
        let copy = format!("{name}.forward_x_channels_last");
        let xc = transposed_per_sample(cx, &copy, x, batch, g.c, spatial);
        cx.x_channels_last.insert(node, xc);
        (xc, g.with_x_channels_last())
    } else {
        (x, g)
    };
    if s.vec != sched::VectorAxis::Batch {
        return (x, g);
    }
    // `x` as a `B × X` matrix (`e` the flat per-sample index).
    let per_sample = g.x_sample as usize;
    let rows = format!("{name}.forward_x_rows");
    (transposed(cx, &rows, x, batch, per_sample, ["e", "b"]), g)
}
