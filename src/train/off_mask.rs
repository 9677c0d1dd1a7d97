//! Training the entries of implementation-2 kernels outside the connectivity mask, as
//! Keras does (keras-lc-semantics §2.3, §6).
//!
//! In Keras the masked entries are part of the kernel variable: the data gradient of an
//! entry outside the mask is exactly zero (`kernel * mask` is what the layer multiplies),
//! but the kernel's regularizer adds its gradient there, the optimizer updates them with
//! their own slots (momentum, Adam moments…) and decoupled weight decay, and the kernel's
//! constraint sees the whole tensor (MaxNorm norms along the axes of the dense Keras
//! shape, masked entries included).
//!
//! Design: the trainer treats the off-mask entries of such a kernel as one more trainable
//! parameter, appended after the graph's parameters. [`OffMaskParams`] builds the extended
//! parameter list and its [`ParamTable`]: each extra entry has the spec of its kernel
//! (same layer and weight name, same regularizer and constraint) with the flat shape
//! `(off-mask length,)`. So, with no change to the fit loop or the optimizer:
//! - the gradient step (compiled or reference) sees only the graph's parameters and the
//!   extras get a zero data gradient ([`OffMaskParams::grads`]);
//! - [`ParamTable::regularize`] adds `l1·Σ|w| + l2·Σw²` and its elementwise gradient for
//!   the extras too: the penalty is a sum, so canonical part + off-mask part is the
//!   penalty of the whole Keras tensor;
//! - the optimizer keeps slots for the extras as for any parameter and applies weight
//!   decay to them (the same rule Keras applies to the whole variable);
//! - [`ParamTable::constrain`] recognises an extra (a spec past the graph's parameters with
//!   the layer and weight of an implementation-2 kernel) and constrains the kernel merged
//!   with it in the Keras layout, then splits the result again.
//!
//! The compiled forward and backward programs never see the extras, so they are exactly
//! as fast as before. Extras are only added when they can change: the kernel is
//! trainable and has a regularizer or a constraint, or the optimizer applies weight
//! decay. Otherwise every supported update rule leaves them as they are (a zero gradient
//! from zero slots moves nothing), so they stay exactly as loaded at no cost.
//!
//! One combination is refused rather than computed differently from Keras: per-tensor
//! `clipnorm` (tf-keras and legacy optimizers) on a regularized implementation-2 kernel,
//! where Keras clips by the norm of the whole kernel gradient, which here is split over two
//! parameters.

use super::optimizer::{Flavor, OptimizerConfig};
use super::regularize::ParamTable;
use crate::error::{Error, Result};
use crate::graph::{Graph, ParamId, ParamSpec};
use crate::model::Model;
use ndarray::{ArrayD, IxDyn};

/// The extended parameter list of a training run: the graph's parameters, then the
/// off-mask entries of the implementation-2 kernels that training can change.
#[derive(Clone, Debug)]
pub struct OffMaskParams {
    /// Specs of the graph's parameters followed by one spec per extra.
    specs: Vec<ParamSpec>,
    /// For each extra, the kernel it belongs to.
    owners: Vec<ParamId>,
    /// Number of graph parameters (the index of the first extra).
    graph_len: usize,
}

impl OffMaskParams {
    /// The extended list for training `model` with an optimizer configured as `optimizer`.
    /// Errors ([`Error::Usage`]) for per-tensor `clipnorm` on a regularized
    /// implementation-2 kernel (see the module docs).
    pub fn new(model: &Model, optimizer: &OptimizerConfig) -> Result<Self> {
        let graph = model.graph();
        let decays =
            optimizer.flavor == Flavor::TfKeras && optimizer.weight_decay.is_some_and(|w| w != 0.0);
        let per_tensor_clip =
            optimizer.flavor != Flavor::MultiBackend && optimizer.clipnorm.is_some_and(|c| c > 0.0);
        let mut specs = graph.params.clone();
        let mut owners = Vec::new();
        for (pid, spec) in graph.params.iter().enumerate() {
            let Some(off) = model.off_mask(pid) else {
                continue;
            };
            let moves = spec.regularizer.is_some() || spec.constraint.is_some() || decays;
            if !spec.trainable || !moves {
                continue;
            }
            if per_tensor_clip && spec.regularizer.is_some() {
                let layer = graph.nodes.get(spec.node).map_or("?", |n| n.name.as_str());
                return Err(Error::Usage {
                    detail: format!(
                        "layer '{layer}': clipnorm on the regularized implementation-2 kernel is not supported (Keras clips by the norm of the whole dense kernel gradient); use global_clipnorm or clipvalue"
                    ),
                });
            }
            specs.push(ParamSpec {
                shape: vec![off.len()],
                keras_shape: vec![off.len()],
                trainable: true,
                ..spec.clone()
            });
            owners.push(pid);
        }
        Ok(OffMaskParams {
            specs,
            owners,
            graph_len: graph.params.len(),
        })
    }

    /// Number of graph parameters; the extras follow them.
    pub fn graph_len(&self) -> usize {
        self.graph_len
    }

    /// The kernel each extra belongs to, in the order of the extras.
    pub fn owners(&self) -> &[ParamId] {
        &self.owners
    }

    /// The table the fit loop regularizes and constrains with (`graph` is the model's).
    pub fn table<'a>(&'a self, graph: &'a Graph) -> ParamTable<'a> {
        ParamTable {
            specs: &self.specs,
            graph: Some(graph),
        }
    }

    /// The initial values: the model's canonical parameters, then each extra's off-mask
    /// entries as a 1-D array.
    pub fn params(&self, model: &Model) -> Result<Vec<ArrayD<f32>>> {
        let mut params = model.params().to_vec();
        for &pid in &self.owners {
            let off = model
                .off_mask(pid)
                .ok_or_else(|| Error::internal("off-mask entries disappeared"))?;
            params.push(flat_array(off.to_vec())?);
        }
        Ok(params)
    }

    /// The gradients of the graph's parameters extended with a zero data gradient for
    /// every extra (the regularizer adds its part later).
    pub fn grads(&self, mut graph_grads: Vec<ArrayD<f32>>) -> Vec<ArrayD<f32>> {
        for spec in &self.specs[self.graph_len.min(self.specs.len())..] {
            graph_grads.push(ArrayD::zeros(IxDyn(&spec.shape)));
        }
        graph_grads
    }

    /// Writes trained values (as [`OffMaskParams::params`] laid them out) back into
    /// `model`.
    pub fn store(&self, model: &mut Model, mut params: Vec<ArrayD<f32>>) -> Result<()> {
        if params.len() != self.specs.len() {
            return Err(Error::internal(format!(
                "{} trained tensors for {} parameters",
                params.len(),
                self.specs.len()
            )));
        }
        let extras = params.split_off(self.graph_len);
        model.set_params(params)?;
        for (&pid, off) in self.owners.iter().zip(extras) {
            model.set_off_mask(pid, off.into_iter().collect())?;
        }
        Ok(())
    }
}

/// The weight regularization loss of `model` as Keras adds it to its loss (`sum(model.losses)`
/// without activity terms): every regularized weight, the off-mask entries of
/// implementation-2 kernels included (what `evaluate` and a validation loss add).
pub fn regularization_loss(model: &Model) -> Result<f64> {
    let mut total = ParamTable::from_graph(model.graph()).regularize(model.params(), None)?;
    for (pid, spec) in model.graph().params.iter().enumerate() {
        if let (Some(reg), Some(off)) = (&spec.regularizer, model.off_mask(pid)) {
            total += super::regularize::regularization(reg, &flat_array(off.to_vec())?).0;
        }
    }
    Ok(total)
}

/// A 1-D array over `v`.
pub(crate) fn flat_array(v: Vec<f32>) -> Result<ArrayD<f32>> {
    let n = v.len();
    ArrayD::from_shape_vec(IxDyn(&[n]), v).map_err(|e| Error::internal(e.to_string()))
}
