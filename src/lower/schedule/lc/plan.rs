//! The families of LC forward schedules that autotuning ([`crate::tune`]) chooses
//! between: each family is one of the builders of `schedule/lc.rs` without the
//! conditions under which [`super::forward`] would pick it by itself, so a measurement
//! on the machine can overrule the measured-elsewhere heuristics.
//!
//! Invariants: a family is offered only where its emitter can run the layer (the
//! builder's legality conditions still hold: whole vectors of batch rows, contiguous
//! positions for position lanes, a wide tier that fits the filters); every family sums
//! each output's taps in the same order, so a forced family computes the same bits as
//! the default schedule (tested in `tests/autotune.rs`).

use std::collections::BTreeMap;
use std::fmt;

use super::{batch_rows_in_lanes, filters, forward, positions_lanes, wide_filters, Geo, LcForward};
use crate::graph::{Graph, LocallyConnected, NodeId};
use crate::loop_ir::micro::Tier;
use crate::loop_ir::Dtype;

/// A family of LC forward schedules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ForwardPlan {
    /// Lanes over output positions of the last axis.
    Positions,
    /// Lanes over batch rows, over the input transposed.
    Batch,
    /// Lanes over filters in a wide (AVX2 / AVX-512) register tile.
    WideFilters,
    /// Lanes over filters in f32x4 (scalar tiles when `F % 4 != 0`).
    Filters,
}

impl ForwardPlan {
    /// Every family, in the order candidates are listed.
    pub const ALL: [ForwardPlan; 4] = [
        ForwardPlan::Positions,
        ForwardPlan::Batch,
        ForwardPlan::WideFilters,
        ForwardPlan::Filters,
    ];

    /// The family's name in tuning caches and reports.
    pub fn name(self) -> &'static str {
        match self {
            ForwardPlan::Positions => "positions",
            ForwardPlan::Batch => "batch",
            ForwardPlan::WideFilters => "wide-filters",
            ForwardPlan::Filters => "filters",
        }
    }

    /// The family named `name` (as [`ForwardPlan::name`] writes it).
    pub fn parse(name: &str) -> Option<ForwardPlan> {
        ForwardPlan::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for ForwardPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The schedule of family `p` for this layer, batch and target, when the family can
/// run it.
pub(super) fn planned(
    p: ForwardPlan,
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    half: bool,
) -> Option<LcForward> {
    match p {
        ForwardPlan::Positions => positions_lanes(g, l, batch),
        ForwardPlan::Batch => batch_rows_in_lanes(g, l, batch, tier, half),
        ForwardPlan::WideFilters => tier.and_then(|t| wide_filters(g, l, batch, t, half)),
        ForwardPlan::Filters => Some(filters(g, l, batch)),
    }
}

/// The distinct schedules autotuning may time for this layer: the default first (the
/// family [`forward`] picks without a plan), then every other family that applies and
/// gives a different schedule.
pub(in crate::lower) fn candidates(
    g: &Geo,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    half: bool,
) -> Vec<(ForwardPlan, LcForward)> {
    let default = forward(g, l, batch, tier, half, None);
    let mut out: Vec<(ForwardPlan, LcForward)> = Vec::new();
    for p in ForwardPlan::ALL {
        let Some(s) = planned(p, g, l, batch, tier, half) else {
            continue;
        };
        if out.iter().any(|(_, o)| *o == s) {
            continue;
        }
        if s == default {
            out.insert(0, (p, s));
        } else {
            out.push((p, s));
        }
    }
    out
}

/// Forward families chosen by autotuning, by layer key ([`layer_key`]): what the
/// lowering of a tuned model reads (through [`crate::lower::Target::plans`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plans(BTreeMap<String, ForwardPlan>);

impl Plans {
    /// The family chosen for the layer with key `key`.
    pub fn get(&self, key: &str) -> Option<ForwardPlan> {
        self.0.get(key).copied()
    }

    /// Records the family of `key`.
    pub fn insert(&mut self, key: String, plan: ForwardPlan) {
        self.0.insert(key, plan);
    }

    /// Number of layer keys with a family.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no family is recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `(key, family)` pairs, by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, ForwardPlan)> {
        self.0.iter().map(|(k, p)| (k.as_str(), *p))
    }
}

/// The key under which a layer's tuned family is stored: everything the forward
/// schedule and its speed depend on (shapes, window, data format, fused activation,
/// bias, dtype policy, batch, SIMD tier, weight storage), and nothing else (not the
/// layer's name or initializers), so equal layers of different models share it.
pub fn layer_key(
    graph: &Graph,
    node: NodeId,
    l: &LocallyConnected,
    batch: usize,
    tier: Option<Tier>,
    weights: Dtype,
) -> String {
    let n = &graph.nodes[node];
    let in_shape = n
        .inputs
        .first()
        .map(|&i| graph.nodes[i].shape.clone())
        .unwrap_or_default();
    format!(
        "lc{} in={:?} out={:?} k={:?} s={:?} d={:?} pad={:?} fmt={:?} act={:?} bias={} policy={:?} batch={} tier={} weights={:?}",
        l.rank,
        in_shape,
        n.shape,
        l.kernel,
        l.strides,
        l.dilation,
        l.padding,
        l.data_format,
        l.activation,
        l.use_bias,
        n.policy,
        batch,
        tier.map_or("f32x4", |t| t.name()),
        weights,
    )
}
