//! Functional / Model configurations: ordering, inbound-node forms, multiple inputs and
//! outputs, and structural errors.

use lcjit::frontend::{parse_model_value, Dialect, ParsedModel};
use lcjit::graph::{default_memory_budget, Op};
use lcjit::{Error, Result};
use serde_json::{json, Value};

fn parse_v(v: &Value) -> Result<ParsedModel> {
    parse_model_value(v, "test.json", default_memory_budget())
}

fn op_of(m: &ParsedModel, name: &str) -> Op {
    let id = m.graph.node_by_name(name).expect("node");
    m.graph.nodes[id].op.clone()
}

fn assert_graph_err(r: Result<ParsedModel>, needles: &[&str]) {
    let e = r.expect_err("expected an error");
    let msg = e.to_string();
    assert!(matches!(e, Error::Graph { .. }), "{e:?}");
    for n in needles {
        assert!(msg.contains(n), "{msg} lacks {n}");
    }
}

fn functional(layers: Value, inputs: Value, outputs: Value) -> Value {
    json!({"class_name": "Functional", "keras_version": "2.21.0",
        "config": {"name": "f", "layers": layers, "input_layers": inputs, "output_layers": outputs}})
}

fn input(name: &str, shape: Value) -> Value {
    json!({"class_name": "InputLayer", "name": name, "config": {"name": name, "batch_input_shape": shape}, "inbound_nodes": []})
}

fn layer(class: &str, name: &str, config: Value, from: &[&str]) -> Value {
    let refs: Vec<Value> = from.iter().map(|f| json!([f, 0, 0, {}])).collect();
    let mut c = config;
    c["name"] = json!(name);
    json!({"class_name": class, "name": name, "config": c, "inbound_nodes": [refs]})
}

#[test]
fn functional_out_of_order_with_two_inputs() {
    let v = functional(
        json!([
            layer("Concatenate", "cat", json!({"axis": -1}), &["d1", "d2"]),
            layer("Dense", "d2", json!({"units": 2}), &["b"]),
            input("b", json!([null, 4])),
            layer("Dense", "d1", json!({"units": 3}), &["a"]),
            input("a", json!([null, 5])),
        ]),
        json!([["a", 0, 0], ["b", 0, 0]]),
        json!(["cat", 0, 0]),
    );
    let m = parse_v(&v).unwrap();
    let g = &m.graph;
    assert_eq!(g.nodes[g.inputs[0]].name, "a");
    assert_eq!(g.nodes[g.inputs[1]].name, "b");
    assert_eq!(g.nodes[g.outputs[0]].shape, vec![5]);
    assert_eq!(op_of(&m, "cat"), Op::Concatenate { axis: 0 });
}

#[test]
fn functional_dict_form_inbound_nodes() {
    let hist = |n: &str| json!({"class_name": "__keras_tensor__", "config": {"shape": [null, 4], "dtype": "float32", "keras_history": [n, 0, 0]}});
    let v = functional(
        json!([
            input("x", json!([null, 4])),
            {"class_name": "Dense", "name": "d", "config": {"name": "d", "units": 4}, "inbound_nodes": [{"args": [hist("x")], "kwargs": {}}]},
            {"class_name": "Add", "name": "add", "config": {"name": "add"}, "inbound_nodes": [{"args": [[hist("x"), hist("d")]], "kwargs": {}}]},
        ]),
        json!([["x", 0, 0]]),
        json!([["add", 0, 0]]),
    );
    let m = parse_v(&v).unwrap();
    assert_eq!(m.graph.nodes[m.graph.outputs[0]].inputs.len(), 2);
}

#[test]
fn functional_structure_errors() {
    let x = input("x", json!([null, 4]));
    // Unknown inbound layer.
    let v = functional(
        json!([x, layer("Dense", "d", json!({"units": 2}), &["ghost"])]),
        json!([["x", 0, 0]]),
        json!([["d", 0, 0]]),
    );
    assert_graph_err(parse_v(&v), &["'d'", "'ghost'", "test.json"]);
    // Cycle.
    let v = functional(
        json!([
            x,
            layer("Dense", "p", json!({"units": 4}), &["q"]),
            layer("Dense", "q", json!({"units": 4}), &["p"])
        ]),
        json!([["x", 0, 0]]),
        json!([["q", 0, 0]]),
    );
    assert_graph_err(parse_v(&v), &["cycle through layers", "p", "q"]);
    // Shared layer (two inbound nodes).
    let mut shared = layer("Dense", "s", json!({"units": 4}), &["x"]);
    shared["inbound_nodes"] = json!([[["x", 0, 0, {}]], [["s", 0, 0, {}]]]);
    let v = functional(
        json!([x, shared]),
        json!([["x", 0, 0]]),
        json!([["s", 1, 0]]),
    );
    assert_graph_err(parse_v(&v), &["'s'", "shared layers are not supported"]);
    // Duplicate names.
    let v = functional(
        json!([
            x,
            layer("Dense", "d", json!({"units": 2}), &["x"]),
            layer("Dense", "d", json!({"units": 2}), &["x"])
        ]),
        json!([["x", 0, 0]]),
        json!([["d", 0, 0]]),
    );
    assert_graph_err(parse_v(&v), &["duplicate layer name 'd'", "test.json"]);
    // Output that does not exist.
    let v = functional(json!([x]), json!([["x", 0, 0]]), json!([["nope", 0, 0]]));
    assert_graph_err(parse_v(&v), &["output_layers", "'nope'"]);
    // Sequential duplicate names.
    let v = json!({"class_name": "Sequential", "config": {"layers": [
        {"class_name": "Dense", "config": {"name": "d", "units": 2, "batch_input_shape": [null, 3]}},
        {"class_name": "Dense", "config": {"name": "d", "units": 2}}]}});
    assert_graph_err(parse_v(&v), &["duplicate layer name 'd'"]);
}

#[test]
fn functional_merge_shape_mismatch_names_layer() {
    let v = functional(
        json!([
            input("a", json!([null, 4])),
            input("b", json!([null, 5])),
            layer("Add", "add", json!({}), &["a", "b"])
        ]),
        json!([["a", 0, 0], ["b", 0, 0]]),
        json!([["add", 0, 0]]),
    );
    let e = parse_v(&v).unwrap_err();
    assert!(
        matches!(e, Error::Shape { ref layer, .. } if layer == "add"),
        "{e:?}"
    );
}

#[test]
fn keras1_model_with_merge_and_three_element_refs() {
    let v = json!({"class_name": "Model", "keras_version": "1.2.2", "config": {"name": "model_1",
        "layers": [
            {"name": "input_1", "class_name": "InputLayer", "config": {"batch_input_shape": [null, 10, 5],
                "input_dtype": "float32", "sparse": false, "name": "input_1"}, "inbound_nodes": []},
            {"name": "lc", "class_name": "LocallyConnected1D", "config": {"name": "lc", "nb_filter": 5,
                "filter_length": 1, "init": "glorot_uniform", "activation": "linear", "border_mode": "valid",
                "subsample_length": 1, "W_regularizer": null, "bias": true, "input_dim": null, "input_length": null},
                "inbound_nodes": [[["input_1", 0, 0]]]},
            {"name": "m", "class_name": "Merge", "config": {"name": "m", "mode": "concat", "concat_axis": 1,
                "layers": null}, "inbound_nodes": [[["input_1", 0, 0], ["lc", 0, 0]]]},
            {"name": "s", "class_name": "Merge", "config": {"name": "s", "mode": "sum"},
                "inbound_nodes": [[["input_1", 0, 0], ["lc", 0, 0]]]}],
        "input_layers": [["input_1", 0, 0]], "output_layers": [["m", 0, 0], ["s", 0, 0]]}});
    let m = parse_v(&v).unwrap();
    assert_eq!(m.dialect, Dialect::Keras1);
    assert_eq!(m.graph.name, "model_1");
    assert_eq!(op_of(&m, "m"), Op::Concatenate { axis: 0 });
    let g = &m.graph;
    assert_eq!(g.outputs.len(), 2);
    assert_eq!(g.nodes[g.outputs[0]].shape, vec![20, 5]);
    assert_eq!(g.nodes[g.outputs[1]].shape, vec![10, 5]);
}

#[test]
fn layer_never_called_and_unlisted_input() {
    let v = functional(
        json!([input("x", json!([null, 4])), {"class_name": "Dense", "name": "d", "config": {"units": 2}, "inbound_nodes": []}]),
        json!([["x", 0, 0]]),
        json!([["x", 0, 0]]),
    );
    assert_graph_err(parse_v(&v), &["'d'", "no inbound nodes"]);
    let v = functional(
        json!([
            input("x", json!([null, 4])),
            input("y", json!([null, 4])),
            layer("Add", "a", json!({}), &["x", "y"])
        ]),
        json!([["x", 0, 0]]),
        json!([["a", 0, 0]]),
    );
    assert_graph_err(parse_v(&v), &["'y'", "input_layers"]);
}
