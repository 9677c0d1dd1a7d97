//! Fusion of cheap neighbours into the locally connected kernel of inference programs
//! (issue 12, item 2), decided once per program by [`plan`] before lowering:
//!
//! - a **ZeroPadding** layer whose every consumer is an LC layer of its data format with
//!   `valid` padding is not materialised: those layers read its input directly, the
//!   zeros becoming index arithmetic (an offset of the window and guards on the taps, as
//!   under `same` padding; [`super::lc::geometry_padded`]);
//! - a two-input **Add** whose one operand is an LC layer's output, read by nothing
//!   else, and whose other operand is computed before that layer, is done in the LC
//!   kernel's store (`y = act(acc + bias) + r`), the Add's output being the LC kernel's
//!   (an alias, no kernel).
//!
//! So genomic models of the form `ZeroPadding → LC → Add` (residual blocks) write each
//! activation once and read it once.
//!
//! Invariants: fusion never changes a value (the zeros contribute no product and the
//! guards skip exactly them; the addition is the Add's own, `a + b == b + a` in IEEE
//! arithmetic); it applies to float32-policy layers only (mixed policies round between
//! the layers); a layer that is a program output, or that a layer other than the fused
//! one reads, is never absorbed; gradient programs do not fuse (their backward pass reads
//! the unfused activations). A padding is fused only where the layer's schedule keeps its
//! wide tier (the filters schedule's microkernel needs a guard-free reduction).

use crate::graph::{ComputeDtype, Graph, MergeKind, NodeId, Op, Padding};
use crate::loop_ir::micro::Tier;
use crate::loop_ir::Dtype;

use super::activation::is_elementwise;
use super::lc::geometry_padded;
use super::schedule::lc as sched;

/// What [`plan`] fused, by node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fusion {
    /// Per LC node: the Add done in its store, and the Add's other operand.
    pub residual: Vec<Option<(NodeId, NodeId)>>,
    /// Per LC node: the ZeroPadding node it reads through, with the zeros before each
    /// spatial axis.
    pub padded: Vec<Option<(NodeId, Vec<usize>)>>,
    /// Nodes lowered as part of another (no kernel of their own).
    pub absorbed: Vec<bool>,
}

impl Fusion {
    /// Whether `node` is lowered by the LC layer it was fused into.
    pub fn is_absorbed(&self, node: NodeId) -> bool {
        self.absorbed.get(node).copied().unwrap_or(false)
    }

    /// The Add fused into LC node `node`'s store, and the Add's other operand.
    pub fn residual(&self, node: NodeId) -> Option<(NodeId, NodeId)> {
        self.residual.get(node).copied().flatten()
    }

    /// The ZeroPadding LC node `node` reads through, and its zeros before each axis.
    pub fn padded(&self, node: NodeId) -> Option<&(NodeId, Vec<usize>)> {
        self.padded.get(node).and_then(Option::as_ref)
    }
}

/// The fusions of the forward program of `graph` at `batch` rows for the SIMD tier
/// `tier` with weights stored as `weights` (see the module docs).
pub fn plan(graph: &Graph, batch: usize, tier: Option<Tier>, weights: Dtype) -> Fusion {
    let n = graph.nodes.len();
    let mut consumers: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for (id, node) in graph.nodes.iter().enumerate() {
        for &i in &node.inputs {
            if let Some(c) = consumers.get_mut(i) {
                c.push(id);
            }
        }
    }
    let mut f = Fusion {
        residual: vec![None; n],
        padded: vec![None; n],
        absorbed: vec![false; n],
    };
    let f32_policy = |id: NodeId| graph.nodes[id].policy.compute == ComputeDtype::Float32;
    let internal = |id: NodeId| !graph.outputs.contains(&id);
    for (pad, node) in graph.nodes.iter().enumerate() {
        let Op::ZeroPadding {
            pads, data_format, ..
        } = &node.op
        else {
            continue;
        };
        let before: Vec<usize> = pads.iter().map(|p| p.0).collect();
        let fusable = |c: &NodeId| match &graph.nodes[*c].op {
            Op::LocallyConnected(l) => {
                l.padding == Padding::Valid
                    && l.data_format == *data_format
                    && f32_policy(*c)
                    && graph.nodes[*c].inputs == [pad]
                    && keeps_tier(graph, *c, pad, &before, batch, tier, weights)
            }
            _ => false,
        };
        if internal(pad) && !consumers[pad].is_empty() && consumers[pad].iter().all(fusable) {
            for &c in &consumers[pad] {
                f.padded[c] = Some((pad, before.clone()));
            }
            f.absorbed[pad] = true;
        }
    }
    for (id, node) in graph.nodes.iter().enumerate() {
        let Op::LocallyConnected(l) = &node.op else {
            continue;
        };
        let ([add], true) = (consumers[id].as_slice(), internal(id) && f32_policy(id)) else {
            continue;
        };
        let a = &graph.nodes[*add];
        let other = a.inputs.iter().copied().find(|&i| i != id);
        let shaped = |i: NodeId| graph.nodes[i].shape == node.shape;
        if let (Op::Merge(MergeKind::Add), 2, Some(other)) = (&a.op, a.inputs.len(), other) {
            if other < id
                && shaped(other)
                && shaped(*add)
                && f32_policy(*add)
                && is_elementwise(&l.activation)
            {
                f.residual[id] = Some((*add, other));
                f.absorbed[*add] = true;
            }
        }
    }
    f
}

/// Whether LC node `id`, reading ZeroPadding node `pad`'s input through `before` zeros,
/// gets a forward schedule as wide as without the fusion.
fn keeps_tier(
    graph: &Graph,
    id: NodeId,
    pad: NodeId,
    before: &[usize],
    batch: usize,
    tier: Option<Tier>,
    weights: Dtype,
) -> bool {
    let Op::LocallyConnected(l) = &graph.nodes[id].op else {
        return false;
    };
    let Some(&src) = graph.nodes[pad].inputs.first() else {
        return false;
    };
    let half = weights != Dtype::F32;
    let plain = geometry_padded(graph, id, l, &graph.nodes[pad].shape, &[]);
    let fused = geometry_padded(graph, id, l, &graph.nodes[src].shape, before);
    match (plain, fused) {
        (Ok(p), Ok(q)) => {
            let a = sched::forward(&p, l, batch, tier, half, None);
            let b = sched::forward(&q, l, batch, tier, half, None);
            a.wide.is_some() == b.wide.is_some()
        }
        _ => false,
    }
}
