//! Keras model configurations (tf-keras 2.x, Keras 2.0–2.4, Keras 1) to the graph IR.
// TEMPORARY compile stubs (replaced by the frontend branch).
use crate::error::Result;
use crate::graph::Graph;
/// x
pub struct ParsedModel {
    /// x
    pub graph: Graph,
    /// x
    pub dialect: Dialect,
    /// x
    pub keras_version: Option<String>,
}
/// x
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// x
    TfKeras,
    /// x
    Keras2,
    /// x
    Keras1,
}
/// x
pub fn parse_model_json(_t: &str, _s: &str, _b: u64) -> Result<ParsedModel> {
    todo!()
}
/// x
pub fn parse_model_value(_v: &serde_json::Value, _s: &str, _b: u64) -> Result<ParsedModel> {
    todo!()
}
