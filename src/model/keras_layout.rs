//! A model's weights one by one in Keras's own layout, as `layer.get_weights()` /
//! `model.get_weights()` return them: LC kernels in the layout of their layer's
//! `implementation`, implementation-2 kernels whole (the canonical kernel's connected
//! entries merged with the off-mask entries the model keeps beside it).
//!
//! The list order is the order of `graph().params`: layer by layer in model order, each
//! layer's weights in Keras's weight order (kernel, bias; gamma, beta, moving_mean,
//! moving_variance), which is the order of tf-keras's `model.get_weights()` for the
//! models lcjit loads. This is the surface a Python binding wraps one to one.

use super::Model;
use crate::error::{Error, Result};
use crate::graph::{layout, ParamId};
use ndarray::ArrayD;

impl Model {
    /// The entries of implementation-2 kernel `param` outside its connectivity mask, in
    /// row-major order of the Keras tensor (keras-lc-semantics §2.3); `None` for every
    /// other parameter.
    pub fn off_mask(&self, param: ParamId) -> Option<&[f32]> {
        self.off_mask.get(param).and_then(|o| o.as_deref())
    }

    /// Every parameter's off-mask entries, parallel to [`Model::params`].
    pub fn off_masks(&self) -> &[Option<Vec<f32>>] {
        &self.off_mask
    }

    /// Replaces the off-mask entries of implementation-2 kernel `param`. Errors
    /// ([`Error::Weights`]) when `param` is not such a kernel or the length is not
    /// [`layout::off_mask_len`].
    pub fn set_off_mask(&mut self, param: ParamId, values: Vec<f32>) -> Result<()> {
        let (layer, weight) = self.weight_names(param)?;
        let err = |detail: String| Error::Weights {
            source_name: "set_off_mask".into(),
            layer: layer.clone(),
            weight: weight.clone(),
            detail,
        };
        match self.off_mask.get_mut(param) {
            Some(Some(slot)) if slot.len() == values.len() => {
                *slot = values;
                Ok(())
            }
            Some(Some(slot)) => Err(err(format!(
                "{} off-mask entries given, the kernel has {}",
                values.len(),
                slot.len()
            ))),
            _ => Err(err("not an implementation-2 kernel".into())),
        }
    }

    /// Weight `param` in the Keras file layout of its layer, as `get_weights()` returns
    /// it (implementation-2 kernels with their off-mask entries).
    pub fn keras_weight(&self, param: ParamId) -> Result<ArrayD<f32>> {
        let canonical = self
            .params
            .get(param)
            .ok_or_else(|| Error::internal(format!("parameter {param} does not exist")))?;
        let off = self.off_mask.get(param).and_then(|o| o.as_deref());
        layout::canonical_to_keras_merged(&self.graph, param, canonical, off)
            .map_err(Error::internal)
    }

    /// Every weight in Keras layout, in the order of `graph().params` (tf-keras's
    /// `model.get_weights()`).
    pub fn get_weights(&self) -> Result<Vec<ArrayD<f32>>> {
        (0..self.params.len())
            .map(|p| self.keras_weight(p))
            .collect()
    }

    /// Replaces every weight from Keras-layout arrays in the order of
    /// [`Model::get_weights`] (tf-keras's `model.set_weights()`); implementation-2
    /// kernels bring their off-mask entries. Errors ([`Error::Weights`], naming layer and
    /// weight) on a wrong count or shape; nothing is changed on error.
    pub fn set_weights(&mut self, weights: Vec<ArrayD<f32>>) -> Result<()> {
        if weights.len() != self.params.len() {
            return Err(Error::Weights {
                source_name: "set_weights".into(),
                layer: "*".into(),
                weight: "*".into(),
                detail: format!(
                    "{} arrays given, the model has {} weights",
                    weights.len(),
                    self.params.len()
                ),
            });
        }
        let mut params = Vec::with_capacity(weights.len());
        let mut off_mask = Vec::with_capacity(weights.len());
        for (pid, w) in weights.into_iter().enumerate() {
            let (c, o) = layout::keras_to_canonical_split(&self.graph, pid, w).map_err(|d| {
                let (layer, weight) = self.weight_names(pid).unwrap_or_default();
                Error::Weights {
                    source_name: "set_weights".into(),
                    layer,
                    weight,
                    detail: d,
                }
            })?;
            params.push(c);
            off_mask.push(o);
        }
        self.params = params;
        self.off_mask = off_mask;
        Ok(())
    }

    /// `(layer name, weight name)` of parameter `param`.
    fn weight_names(&self, param: ParamId) -> Result<(String, String)> {
        let spec = self
            .graph
            .params
            .get(param)
            .ok_or_else(|| Error::internal(format!("parameter {param} does not exist")))?;
        let layer = self
            .graph
            .nodes
            .get(spec.node)
            .map(|n| n.name.clone())
            .unwrap_or_default();
        Ok((layer, spec.name.clone()))
    }
}
