//! Unit tests of the front end: golden configurations, workloads and bad inputs.

use super::*;

const BUDGET: u64 = crate::graph::DEFAULT_MEMORY_BUDGET;

fn parse(text: &str) -> Result<ParsedModel> {
    parse_model_json(text, "test.json", BUDGET)
}

#[test]
fn smoke() {
    let m = parse(r#"{"class_name":"Sequential","config":[{"class_name":"Dense","config":{"name":"d","units":3,"batch_input_shape":[null,4]}}]}"#).unwrap();
    assert_eq!(m.graph.nodes.len(), 2);
}
