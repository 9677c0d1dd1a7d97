//! The naive reference path: per-layer forward passes on ndarray, from the Keras formulas.
// TEMPORARY compile stubs (replaced by the reference branch).
use crate::error::Result;
use crate::graph::Graph;
use ndarray::ArrayD;
/// x
pub fn forward(_g: &Graph, _p: &[ArrayD<f32>], _i: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
    todo!()
}
