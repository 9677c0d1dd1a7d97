//! Reading and writing files: `.npy`, `.npz`, HDF5 (`.h5`) and `.keras` archives.
// TEMPORARY compile stubs (replaced by the io branch).
use crate::error::Result;
use ndarray::ArrayD;
use std::path::Path;
/// x
pub struct LayerWeights {
    /// x
    pub layer: String,
    /// x
    pub weights: Vec<(String, ArrayD<f32>)>,
}
/// x
pub struct KerasWeights {
    /// x
    pub layers: Vec<LayerWeights>,
}
/// x
pub struct H5Model {
    /// x
    pub model_config: Option<String>,
    /// x
    pub training_config: Option<String>,
    /// x
    pub weights: KerasWeights,
}
/// x
pub fn read_npy(_path: &Path) -> Result<ArrayD<f32>> {
    todo!()
}
/// x
pub fn write_npy(_path: &Path, _a: &ArrayD<f32>) -> Result<()> {
    todo!()
}
/// x
pub fn read_npz(_path: &Path) -> Result<Vec<(String, ArrayD<f32>)>> {
    todo!()
}
/// x
pub fn write_npz(_path: &Path, _e: &[(String, ArrayD<f32>)]) -> Result<()> {
    todo!()
}
/// x
pub fn read_h5(_path: &Path) -> Result<H5Model> {
    todo!()
}
/// x
pub fn read_weights_npz(_path: &Path) -> Result<KerasWeights> {
    todo!()
}
/// x
pub fn read_keras_archive(_path: &Path) -> Result<(String, Option<String>, KerasWeights)> {
    todo!()
}
