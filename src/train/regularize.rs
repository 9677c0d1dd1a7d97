//! Weight regularizers and weight constraints (keras-lc-semantics §6, §8.2, §8.3).
//!
//! Regularization loss `l1·Σ|w| + l2·Σw²` (each term skipped when its factor is 0) and
//! its gradient `l1·sign(w) + 2·l2·w` are computed on the canonical tensor. That equals
//! Keras's value on the Keras-layout tensor for every weight except the kernel of a
//! LocallyConnected layer with `implementation=2`: Keras regularizes its whole dense
//! masked kernel, masked (never connected) entries included. A table built by
//! [`super::off_mask::OffMaskParams`] lists those entries as extra parameters after the
//! graph's, with the kernel's regularizer: the penalty is a sum, so the two parts add up
//! to Keras's value and each gets its elementwise gradient.
//!
//! Constraints act on the Keras-layout tensor ([`ParamTable::constrain`] converts
//! canonical → Keras, applies, converts back); `ε = 1e-7`. An implementation-2 kernel
//! whose off-mask entries are in the table is constrained merged with them: the whole
//! dense tensor, as Keras's constraint sees its variable.

use super::loss::EPS;
use crate::error::{Error, Result};
use crate::graph::layout::{
    canonical_to_keras, canonical_to_keras_merged, keras_to_canonical, keras_to_canonical_split,
};
use crate::graph::ops::{Constraint, Regularizer};
use crate::graph::{Graph, ParamSpec};
use ndarray::{ArrayD, IxDyn};

/// Regularization loss of `w` and its gradient.
pub fn regularization(reg: &Regularizer, w: &ArrayD<f32>) -> (f64, ArrayD<f32>) {
    let (l1, l2) = (reg.l1, reg.l2);
    let mut loss = 0f64;
    if l1 != 0.0 {
        loss += l1 as f64 * w.iter().map(|&x| (x as f64).abs()).sum::<f64>();
    }
    if l2 != 0.0 {
        loss += l2 as f64 * w.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    }
    let grad = w.mapv(|x| {
        let s = if x > 0.0 {
            1.0
        } else if x < 0.0 {
            -1.0
        } else {
            0.0
        };
        l1 * s + 2.0 * l2 * x
    });
    (loss, grad)
}

/// Applies `c` in place to a tensor in Keras layout.
pub fn apply_constraint(c: &Constraint, w: &mut ArrayD<f32>) -> Result<()> {
    match c {
        Constraint::NonNeg => {
            w.mapv_inplace(|x| if x >= 0.0 { x } else { 0.0 });
            Ok(())
        }
        Constraint::MaxNorm { max_value, axis } => {
            let m = *max_value as f64;
            scale_by_norm(w, axis, |n| n.clamp(0.0, m) / (EPS as f64 + n))
        }
        Constraint::UnitNorm { axis } => scale_by_norm(w, axis, |n| 1.0 / (EPS as f64 + n)),
        Constraint::MinMaxNorm {
            min_value,
            max_value,
            rate,
            axis,
        } => {
            let (lo, hi, r) = (*min_value as f64, *max_value as f64, *rate as f64);
            scale_by_norm(w, axis, |n| {
                (r * n.clamp(lo, hi) + (1.0 - r) * n) / (EPS as f64 + n)
            })
        }
        Constraint::Radial => radial(w),
    }
}

/// Multiplies every element by `f(‖w‖)`, the L2 norm taken over `axis` (keepdims).
fn scale_by_norm(w: &mut ArrayD<f32>, axis: &[i64], f: impl Fn(f64) -> f64) -> Result<()> {
    let shape = w.shape().to_vec();
    let rank = shape.len() as i64;
    let mut reduced = vec![false; shape.len()];
    for &a in axis {
        let a2 = if a < 0 { a + rank } else { a };
        if !(0..rank).contains(&a2) {
            return Err(Error::Input {
                detail: format!("constraint axis {a} out of range for weight of shape {shape:?}"),
            });
        }
        reduced[a2 as usize] = true;
    }
    // Key of each element: its index with the reduced coordinates dropped.
    let keep_strides = {
        let mut s = vec![0usize; shape.len()];
        let mut acc = 1;
        for d in (0..shape.len()).rev() {
            if !reduced[d] {
                s[d] = acc;
                acc *= shape[d];
            }
        }
        s
    };
    let n_keys: usize = shape
        .iter()
        .zip(&reduced)
        .filter(|(_, &r)| !r)
        .map(|(&d, _)| d)
        .product();
    let key = |idx: &IxDyn| -> usize { (0..shape.len()).map(|d| idx[d] * keep_strides[d]).sum() };
    let mut sums = vec![0f64; n_keys.max(1)];
    for (idx, &x) in w.indexed_iter() {
        sums[key(&idx)] += (x as f64) * (x as f64);
    }
    // TF computes the norm in float32: sqrt of the f32 sum.
    let factors: Vec<f32> = sums
        .iter()
        .map(|&s| f((s as f32).sqrt() as f64) as f32)
        .collect();
    for (idx, x) in w.indexed_iter_mut() {
        *x *= factors[key(&idx)];
    }
    Ok(())
}

/// tf-keras `RadialConstraint`: rank 4 `(h, h, in, out)`; each `(h, h)` slice becomes
/// concentric square rings taken from the diagonal.
fn radial(w: &mut ArrayD<f32>) -> Result<()> {
    let s = w.shape().to_vec();
    if s.len() != 4 || s[0] != s[1] {
        return Err(Error::Input {
            detail: format!(
                "RadialConstraint needs a rank-4 weight (h, h, in, out), found shape {s:?}"
            ),
        });
    }
    let h = s[0];
    let start = h / 2;
    if start == 0 {
        return Ok(());
    }
    for ci in 0..s[2] {
        for k in 0..s[3] {
            let at = |w: &ArrayD<f32>, i: usize| w[[i, i, ci, k]];
            let centre = at(w, start - 1);
            let mut new = vec![vec![0f32; h]; h];
            for (y, row) in new.iter_mut().enumerate() {
                for (x, v) in row.iter_mut().enumerate() {
                    // Distance of (y, x) from the centre block, in rings.
                    let d = if h % 2 == 1 {
                        y.abs_diff(start).max(x.abs_diff(start))
                    } else {
                        let dy = if y < start { start - 1 - y } else { y - start };
                        let dx = if x < start { start - 1 - x } else { x - start };
                        dy.max(dx)
                    };
                    // Odd h: ring d takes kernel[s+d-1]; even h: kernel[s+d].
                    *v = match (d, h % 2) {
                        (0, _) => centre,
                        (d, 1) => at(w, start + d - 1),
                        (d, _) => at(w, start + d),
                    };
                }
            }
            for (y, row) in new.iter().enumerate() {
                for (x, &v) in row.iter().enumerate() {
                    w[[y, x, ci, k]] = v;
                }
            }
        }
    }
    Ok(())
}

/// The parameters as training sees them: trainability, regularizers, constraints, and
/// the layout conversion constraints need.
#[derive(Clone, Copy, Debug)]
pub struct ParamTable<'g> {
    /// One spec per parameter, in the order of the parameter vector.
    pub specs: &'g [ParamSpec],
    /// The graph, for Keras-layout conversion of constrained LC kernels (`None`: every
    /// constrained weight is taken to be in Keras layout already).
    pub graph: Option<&'g Graph>,
}

impl<'g> ParamTable<'g> {
    /// The table of a graph's parameters.
    pub fn from_graph(graph: &'g Graph) -> Self {
        ParamTable {
            specs: &graph.params,
            graph: Some(graph),
        }
    }

    /// Which parameters the optimizer updates.
    pub fn trainable(&self) -> Vec<bool> {
        self.specs.iter().map(|s| s.trainable).collect()
    }

    /// Total regularization loss of `params`; adds its gradient into `grads`.
    pub fn regularize(
        &self,
        params: &[ArrayD<f32>],
        grads: Option<&mut [ArrayD<f32>]>,
    ) -> Result<f64> {
        check_len(self.specs.len(), params.len())?;
        let mut total = 0.0;
        let mut grads = grads;
        for (i, (spec, w)) in self.specs.iter().zip(params).enumerate() {
            let Some(reg) = &spec.regularizer else {
                continue;
            };
            let (l, g) = regularization(reg, w);
            total += l;
            if let Some(gs) = grads.as_deref_mut() {
                let gi = gs
                    .get_mut(i)
                    .ok_or_else(|| Error::internal("gradient count"))?;
                if gi.shape() != g.shape() {
                    return Err(Error::internal(format!(
                        "gradient of '{}' has shape {:?}, weight {:?}",
                        spec.name,
                        gi.shape(),
                        g.shape()
                    )));
                }
                *gi += &g;
            }
        }
        Ok(total)
    }

    /// Applies every trainable parameter's constraint, in Keras layout. Entries past the
    /// graph's parameters (off-mask entries, see [`super::off_mask`]) are constrained
    /// together with their kernel.
    pub fn constrain(&self, params: &mut [ArrayD<f32>]) -> Result<()> {
        check_len(self.specs.len(), params.len())?;
        let graph_len = self
            .graph
            .map_or(self.specs.len(), |g| g.params.len().min(self.specs.len()));
        for (i, spec) in self.specs.iter().enumerate().take(graph_len) {
            let (Some(c), true) = (&spec.constraint, spec.trainable) else {
                continue;
            };
            if let (Some(j), Some(g)) = (self.off_mask_entry(i, graph_len), self.graph) {
                let (head, tail) = params.split_at_mut(graph_len);
                constrain_merged(g, i, c, &mut head[i], &mut tail[j - graph_len])?;
                continue;
            }
            let w = &mut params[i];
            if matches!(c, Constraint::NonNeg) {
                apply_constraint(c, w)?;
                continue;
            }
            let needs_layout = spec.shape != spec.keras_shape;
            match (needs_layout, self.graph) {
                (false, _) => {
                    // Same element order; constrain on the Keras shape.
                    let mut k = w
                        .clone()
                        .into_shape_clone(IxDyn(&spec.keras_shape))
                        .map_err(|e| Error::internal(e.to_string()))?;
                    apply_constraint(c, &mut k)?;
                    *w = k
                        .into_shape_clone(IxDyn(&spec.shape))
                        .map_err(|e| Error::internal(e.to_string()))?;
                }
                (true, Some(g)) => {
                    let mut k = canonical_to_keras(g, i, w).map_err(Error::internal)?;
                    apply_constraint(c, &mut k)?;
                    *w = keras_to_canonical(g, i, k).map_err(Error::internal)?;
                }
                (true, None) => {
                    return Err(Error::internal(format!(
                        "constraint on '{}' needs the graph for its Keras layout",
                        spec.name
                    )))
                }
            }
        }
        Ok(())
    }
}

impl ParamTable<'_> {
    /// The index of the off-mask entries of kernel `i` in this table, if listed: the
    /// entry past the graph's parameters with the same layer and weight name.
    fn off_mask_entry(&self, i: usize, graph_len: usize) -> Option<usize> {
        let spec = &self.specs[i];
        (graph_len..self.specs.len())
            .find(|&j| self.specs[j].node == spec.node && self.specs[j].name == spec.name)
    }
}

/// Constrains kernel `pid` merged with its off-mask entries `off` in the Keras layout of
/// the implementation-2 kernel, then splits the result back into both.
fn constrain_merged(
    graph: &Graph,
    pid: usize,
    c: &Constraint,
    w: &mut ArrayD<f32>,
    off: &mut ArrayD<f32>,
) -> Result<()> {
    let off_std = off.as_standard_layout();
    let off_slice = off_std
        .as_slice()
        .ok_or_else(|| Error::internal("off-mask entries are not contiguous"))?;
    let mut k =
        canonical_to_keras_merged(graph, pid, w, Some(off_slice)).map_err(Error::internal)?;
    apply_constraint(c, &mut k)?;
    let (canonical, new_off) = keras_to_canonical_split(graph, pid, k).map_err(Error::internal)?;
    let new_off = new_off.ok_or_else(|| Error::internal("kernel lost its off-mask entries"))?;
    *w = canonical;
    *off = super::off_mask::flat_array(new_off)?;
    Ok(())
}

fn check_len(specs: usize, params: usize) -> Result<()> {
    if specs != params {
        return Err(Error::internal(format!(
            "{params} parameter tensors for {specs} parameter specs"
        )));
    }
    Ok(())
}
