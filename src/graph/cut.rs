//! Cutting a graph at inner layers: a new graph whose outputs are named nodes, as
//! `keras.Model(model.inputs, [layer.output, …])` builds one.
//!
//! Invariants of a [`Cut`]:
//! - its graph keeps every model input (in the model's order, so callers pass the same
//!   inputs as to the whole model) and exactly the nodes the requested outputs depend on,
//!   in the source's topological order; nothing after the requested layers is left;
//! - its outputs are the requested nodes, each once, in the order first requested;
//! - `param_map[i]` is the source-graph id of the cut graph's parameter `i`, and the cut
//!   parameter has the source's spec (shape, layout, initializer), so a model's weights
//!   are passed through by index without copies;
//! - a node's output is the same value as in the whole graph: activations are part of a
//!   layer's op, so a layer with a fused activation yields its activated output, as
//!   Keras's `layer.output` does.

use super::{Graph, NodeId, ParamId};
use crate::error::{Error, Result};
use ndarray::ArrayD;

/// How many existing layer names an unknown-name error lists before eliding.
const NAMES_SHOWN: usize = 8;

/// A graph cut at some of its nodes (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct Cut {
    /// The cut graph.
    pub graph: Graph,
    /// Source-graph id of each cut node (`node_map[i]` for cut node `i`).
    pub node_map: Vec<NodeId>,
    /// Source-graph id of each cut parameter (`param_map[i]` for cut parameter `i`).
    pub param_map: Vec<ParamId>,
}

impl Cut {
    /// The cut graph's parameters picked from the source graph's `params` (copies; the
    /// compiled engines bind the source arrays through [`Cut::param_map`] instead).
    pub fn select_params(&self, params: &[ArrayD<f32>]) -> Result<Vec<ArrayD<f32>>> {
        self.param_map
            .iter()
            .map(|&p| {
                params
                    .get(p)
                    .cloned()
                    .ok_or_else(|| Error::internal("cut: parameter list shorter than the graph"))
            })
            .collect()
    }
}

/// The node ids of the layers called `names`, in the order given.
///
/// An unknown name is an [`Error::Usage`] naming it and listing some of the layers that
/// exist, so a user who mistyped `fc7` for `F7` sees the right spelling.
pub fn resolve(graph: &Graph, names: &[&str]) -> Result<Vec<NodeId>> {
    names
        .iter()
        .map(|&name| {
            graph
                .node_by_name(name)
                .ok_or_else(|| unknown_layer(graph, name))
        })
        .collect()
}

/// The error for a layer name the graph does not have.
fn unknown_layer(graph: &Graph, name: &str) -> Error {
    let all: Vec<&str> = graph.nodes.iter().map(|n| n.name.as_str()).collect();
    // Show the first layers and the last ones: the inner layers users want are usually
    // near the end (embeddings before the classifier).
    let shown = if all.len() <= NAMES_SHOWN {
        all.join(", ")
    } else {
        let head = &all[..NAMES_SHOWN / 2];
        let tail = &all[all.len() - NAMES_SHOWN / 2..];
        format!(
            "{}, …, {} ({} layers)",
            head.join(", "),
            tail.join(", "),
            all.len()
        )
    };
    Error::Usage {
        detail: format!(
            "model '{}' has no layer named '{name}' (its layers: {shown})",
            graph.name
        ),
    }
}

/// Cuts `graph` at the layers called `names`: the returned graph computes exactly their
/// outputs (each once, in the order first named) from the model's inputs.
///
/// Errors: [`Error::Usage`] for an unknown name (see [`resolve`]) or an empty list.
pub fn outputs_at(graph: &Graph, names: &[&str]) -> Result<Cut> {
    if names.is_empty() {
        return Err(Error::Usage {
            detail: "no output layer named".into(),
        });
    }
    let mut outputs: Vec<NodeId> = Vec::new();
    for id in resolve(graph, names)? {
        if !outputs.contains(&id) {
            outputs.push(id);
        }
    }
    cut_nodes(graph, &outputs)
}

/// [`outputs_at`] by node ids (each must exist; duplicates are kept as given).
pub fn cut_nodes(graph: &Graph, outputs: &[NodeId]) -> Result<Cut> {
    let n = graph.nodes.len();
    if outputs.iter().any(|&o| o >= n) {
        return Err(Error::internal("cut: output node does not exist"));
    }
    // Nodes are topologically ordered, so one backward sweep marks every ancestor.
    let mut live = vec![false; n];
    for &o in outputs {
        live[o] = true;
    }
    for &i in &graph.inputs {
        live[i] = true;
    }
    for id in (0..n).rev() {
        if live[id] {
            for &i in &graph.nodes[id].inputs {
                live[i] = true;
            }
        }
    }
    let mut new_id: Vec<Option<NodeId>> = vec![None; n];
    let mut cut = Graph::with_budget(graph.name.clone(), graph.memory_budget);
    let mut node_map = Vec::new();
    let mut param_map = Vec::new();
    for (id, node) in graph.nodes.iter().enumerate().filter(|(id, _)| live[*id]) {
        let this = cut.nodes.len();
        let mut node = node.clone();
        node.inputs = node
            .inputs
            .iter()
            .map(|&i| new_id[i].ok_or_else(|| Error::internal("cut: input not kept")))
            .collect::<Result<_>>()?;
        for p in node.params.iter_mut() {
            let mut spec = graph.params[*p].clone();
            spec.node = this;
            param_map.push(*p);
            *p = cut.params.len();
            cut.params.push(spec);
        }
        cut.nodes.push(node);
        new_id[id] = Some(this);
        node_map.push(id);
    }
    let remap = |ids: &[NodeId]| -> Result<Vec<NodeId>> {
        ids.iter()
            .map(|&i| new_id[i].ok_or_else(|| Error::internal("cut: node not kept")))
            .collect()
    };
    cut.inputs = remap(&graph.inputs)?;
    cut.outputs = remap(outputs)?;
    super::verify::verify(&cut)?;
    Ok(Cut {
        graph: cut,
        node_map,
        param_map,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Activation, Dense, Initializer, Op, WeightOptions};

    fn dense(units: usize, activation: Activation) -> Op {
        Op::Dense(Dense {
            units,
            activation,
            use_bias: true,
            kernel_initializer: Initializer::Zeros,
            bias_initializer: Initializer::Zeros,
            options: WeightOptions::default(),
        })
    }

    /// x → a → b → c, and a → d (a side branch).
    fn branchy() -> Graph {
        let mut g = Graph::new("branchy");
        let x = g.add_input("x", vec![4]).expect("input");
        let a = g.add("a", dense(3, Activation::Linear), &[x]).expect("a");
        let b = g.add("b", dense(2, Activation::Tanh), &[a]).expect("b");
        let c = g.add("c", dense(5, Activation::Linear), &[b]).expect("c");
        let d = g.add("d", dense(6, Activation::Linear), &[a]).expect("d");
        g.outputs = vec![c, d];
        g
    }

    #[test]
    fn cut_keeps_only_ancestors_and_maps_params() {
        let g = branchy();
        let cut = outputs_at(&g, &["b"]).expect("cut");
        let names: Vec<&str> = cut.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["x", "a", "b"]);
        assert_eq!(cut.node_map, [0, 1, 2]);
        assert_eq!(cut.graph.outputs, [2]);
        // a.kernel, a.bias, b.kernel, b.bias are source parameters 0..4.
        assert_eq!(cut.param_map, [0, 1, 2, 3]);
        for (i, &p) in cut.param_map.iter().enumerate() {
            assert_eq!(cut.graph.params[i].shape, g.params[p].shape);
            assert_eq!(cut.graph.params[i].name, g.params[p].name);
        }
    }

    #[test]
    fn cut_of_a_side_branch_skips_the_main_line() {
        let g = branchy();
        let cut = outputs_at(&g, &["d", "a", "d"]).expect("cut");
        let names: Vec<&str> = cut.graph.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["x", "a", "d"]);
        // Outputs once each, in the order first named.
        assert_eq!(cut.graph.outputs, [2, 1]);
        assert_eq!(cut.node_map, [0, 1, 4]);
        assert_eq!(cut.param_map, [0, 1, 6, 7]);
    }

    #[test]
    fn unknown_layer_is_a_usage_error_listing_names() {
        let g = branchy();
        let e = outputs_at(&g, &["b", "fc7"]).expect_err("unknown");
        let text = e.to_string();
        assert!(matches!(e, Error::Usage { .. }), "{e:?}");
        assert!(
            text.contains("'fc7'") && text.contains("a, b, c, d"),
            "{text}"
        );
        assert!(outputs_at(&g, &[]).is_err());
    }
}
