//! The reference forward and backward passes in training mode (Keras `training=True`),
//! as one training step of `model.fit` runs them.
//!
//! Two layers behave differently from inference:
//!
//! - **BatchNormalization** normalizes with the batch mean and the biased batch variance
//!   over every axis but its own (`norm::moments`); its backward pass goes
//!   through those statistics (`norm_grad::train_backward`), and the step
//!   produces new moving statistics (`norm::moving_averages`, where the fused
//!   and non-fused paths of tf-keras differ in the variance they average).
//! - **Dropout / SpatialDropout** multiply by a random mask drawn from a seeded
//!   generator (`dropout::dropout_mask`); the backward pass reuses the mask.
//!
//! Every other layer runs as in [`super::forward`]. [`forward_training`] keeps every
//! node's output and what those two layers need, so that [`TrainingPass::gradients`]
//! runs the shared reverse sweep of [`super::backward`] once the loss gradient is known.
//! Activity regularizers: [`TrainingPass::activity_penalties`] gives the step's penalty
//! and each regularized layer's output gradient ([`super::activity`]), which
//! [`TrainingPass::gradients_with`] sums into the sweep.
//! The moving-statistic updates are returned, not applied: they are non-trainable
//! parameters that the caller assigns after the optimizer step.

use super::activity::{penalty_array, regularized_nodes, ActivityScale};
use super::backward::{forward_values, param_id, reverse, Gradients};
use super::dropout::dropout_mask;
use super::norm::{moments, moving_averages, normalize, uses_fused_kernel, Moments};
use super::{check_graph, check_inputs, check_params, internal, param, run_node};
use crate::error::Result;
use crate::graph::{Graph, Node, NodeId, Op, ParamId};
use crate::init::Rng;
use ndarray::ArrayD;

/// `(node, d loss / d node output)` pairs summed into a reverse sweep.
pub type OutputGrads = Vec<(NodeId, ArrayD<f32>)>;

/// What a training-mode forward pass keeps for a node's backward pass.
#[derive(Clone, Debug)]
pub(super) enum Recorded {
    /// Nothing beyond the node's inputs and output (every layer that trains as it infers).
    Nothing,
    /// BatchNormalization: the batch statistics it normalized with.
    Moments(Moments),
    /// Dropout: the mask (`0` or `1 / (1 − rate)`) its input was multiplied by.
    Mask(ArrayD<f32>),
}

/// A training-mode forward pass over one batch, kept for its backward pass.
#[derive(Clone, Debug)]
pub struct TrainingPass<'a> {
    graph: &'a Graph,
    params: &'a [ArrayD<f32>],
    /// Every node's output.
    values: Vec<ArrayD<f32>>,
    /// Per node, what its backward pass needs beyond `values`.
    recorded: Vec<Recorded>,
    /// New values of non-trainable parameters (BatchNorm moving statistics).
    updates: Vec<(ParamId, ArrayD<f32>)>,
}

/// Runs `graph` in training mode on batched inputs: BatchNormalization on batch
/// statistics, Dropout with masks drawn from `rng` (in node order, one draw per element
/// of each Dropout's noise shape), everything else as [`super::forward`].
///
/// Errors as [`super::forward`]: [`Error::Input`](crate::Error::Input) for inputs that do not match the graph,
/// [`Error::Internal`](crate::Error::Internal) for parameters that do not match `graph.params` or a graph that
/// breaks its invariants.
pub fn forward_training<'a>(
    graph: &'a Graph,
    params: &'a [ArrayD<f32>],
    inputs: &[ArrayD<f32>],
    rng: &mut Rng,
) -> Result<TrainingPass<'a>> {
    let batch = check_inputs(graph, inputs)?;
    check_params(graph, params)?;
    check_graph(graph)?;
    let mut recorded = vec![Recorded::Nothing; graph.nodes.len()];
    let mut updates = Vec::new();
    let values = forward_values(graph, batch, inputs, &mut |id, node, xs| {
        let (y, rec) = train_node(graph, params, node, xs, rng, &mut updates)?;
        if let Some(slot) = recorded.get_mut(id) {
            *slot = rec;
        }
        Ok(y)
    })?;
    Ok(TrainingPass {
        graph,
        params,
        values,
        recorded,
        updates,
    })
}

impl TrainingPass<'_> {
    /// The value of graph output `k` (training mode), if the graph has that many.
    pub fn output(&self, k: usize) -> Option<&ArrayD<f32>> {
        self.graph
            .outputs
            .get(k)
            .and_then(|&id| self.values.get(id))
    }

    /// Gradients of `sum(outputs[0] · dy)` through this training-mode pass, as
    /// [`super::backward::gradients`] returns them: `(d inputs, d params)`, canonical
    /// layout, zeros for non-trainable parameters.
    ///
    /// Errors: [`Error::Input`](crate::Error::Input) when `dy` does not have the shape of the first output.
    pub fn gradients(&self, dy: &ArrayD<f32>) -> Result<Gradients> {
        self.gradients_with(dy, &[])
    }

    /// [`Self::gradients`] with further gradients of node outputs summed into the
    /// sweep: `extra` holds `(node, d loss / d output)` pairs, e.g. the activity
    /// penalties of [`Self::activity_penalties`].
    pub fn gradients_with(
        &self,
        dy: &ArrayD<f32>,
        extra: &[(NodeId, ArrayD<f32>)],
    ) -> Result<Gradients> {
        reverse(
            self.graph,
            self.params,
            &self.values,
            &self.recorded,
            dy,
            extra,
        )
    }

    /// The training-mode output of node `id`.
    pub fn value(&self, id: NodeId) -> Option<&ArrayD<f32>> {
        self.values.get(id)
    }

    /// The activity-regularization penalty of this pass (the sum over every layer with
    /// an `activity_regularizer`, on its post-activation output, scaled as `scale` says)
    /// and each such layer's output gradient, for [`Self::gradients_with`].
    pub fn activity_penalties(&self, scale: ActivityScale) -> Result<(f64, OutputGrads)> {
        let mut total = 0.0;
        let mut grads = Vec::new();
        for (id, reg) in regularized_nodes(self.graph) {
            let y = self
                .values
                .get(id)
                .ok_or_else(|| crate::Error::internal(format!("node {id} was not computed")))?;
            let batch = y.shape().first().copied().unwrap_or(0);
            let (v, g) = penalty_array(reg, y, scale.divisor(batch));
            total += v;
            grads.push((id, g));
        }
        Ok((total, grads))
    }

    /// The new values of the non-trainable parameters this step updates (BatchNorm
    /// `moving_mean` and `moving_variance`), in node order.
    pub fn updates(&self) -> &[(ParamId, ArrayD<f32>)] {
        &self.updates
    }

    /// [`Self::updates`], by value.
    pub fn into_updates(self) -> Vec<(ParamId, ArrayD<f32>)> {
        self.updates
    }
}

/// One node in training mode: its output and what its backward pass needs; BatchNorm
/// pushes its moving-statistic updates.
fn train_node(
    graph: &Graph,
    params: &[ArrayD<f32>],
    node: &Node,
    xs: &[&ArrayD<f32>],
    rng: &mut Rng,
    updates: &mut Vec<(ParamId, ArrayD<f32>)>,
) -> Result<(ArrayD<f32>, Recorded)> {
    let one = || match xs {
        [x] => Ok(*x),
        _ => Err(internal(node, "expects exactly one input")),
    };
    let p = |name: &str| param(graph, params, node, name);
    match &node.op {
        // A frozen BatchNorm (`trainable: false`) runs in inference mode, as tf-keras 2.x.
        Op::BatchNorm(_)
            if graph
                .nodes
                .iter()
                .position(|n| std::ptr::eq(n, node))
                .is_some_and(|id| graph.is_frozen(id)) =>
        {
            Ok((run_node(graph, params, node, xs)?, Recorded::Nothing))
        }
        Op::BatchNorm(bn) => {
            let x = one()?;
            let gamma = if bn.scale { Some(p("gamma")?) } else { None };
            let beta = if bn.center { Some(p("beta")?) } else { None };
            let m = moments(bn, x)?;
            let y = normalize(bn, x, gamma, beta, &m.mean, &m.var)?;
            let fused = uses_fused_kernel(bn, x.ndim());
            let (mean, var) =
                moving_averages(bn, fused, p("moving_mean")?, p("moving_variance")?, &m)?;
            updates.push((param_id(graph, node, "moving_mean")?, mean));
            updates.push((param_id(graph, node, "moving_variance")?, var));
            Ok((y, Recorded::Moments(m)))
        }
        Op::Dropout {
            rate,
            spatial,
            data_format,
        } => {
            let x = one()?;
            match dropout_mask(*rate, *spatial, *data_format, x.shape(), rng)? {
                Some(mask) => Ok((x * &mask, Recorded::Mask(mask))),
                None => Ok((x.clone(), Recorded::Nothing)),
            }
        }
        _ => Ok((run_node(graph, params, node, xs)?, Recorded::Nothing)),
    }
}
