//! Verifier of the graph IR invariants listed in the `graph` module docs.
//!
//! [`Graph::add`](super::Graph::add) establishes the invariants one node at a time; the
//! verifier re-checks a whole graph (after deserialization, hand construction or a pass)
//! and reports every violation it finds, not just the first. A failure is an internal
//! error: it means lcjit built a broken graph.

use super::infer::infer;
use super::ops::Op;
use super::Graph;
use crate::error::{Error, Result};
use std::collections::HashSet;

/// Checks topological order, unique names, inputs and outputs, shapes (re-inferred) and
/// parameter ownership. Returns all violations in one [`Error::Internal`].
pub fn verify(g: &Graph) -> Result<()> {
    let mut errs = Vec::new();
    let mut names = HashSet::new();
    for (id, n) in g.nodes.iter().enumerate() {
        if !names.insert(n.name.as_str()) {
            errs.push(format!("%{id}: duplicate name '{}'", n.name));
        }
        for &i in &n.inputs {
            if i >= id {
                errs.push(format!(
                    "%{id} '{}': input %{i} is not earlier in the order",
                    n.name
                ));
            }
        }
        if errs.is_empty() {
            match &n.op {
                Op::Input => {
                    if !g.inputs.contains(&id) {
                        errs.push(format!(
                            "%{id} '{}': input node not listed as graph input",
                            n.name
                        ));
                    }
                }
                op => {
                    let shapes: Vec<Vec<usize>> =
                        n.inputs.iter().map(|&i| g.nodes[i].shape.clone()).collect();
                    match infer(&n.name, op, &shapes) {
                        Ok(inf) => {
                            if inf.shape != n.shape {
                                errs.push(format!(
                                    "%{id} '{}': shape {:?} but inference gives {:?}",
                                    n.name, n.shape, inf.shape
                                ));
                            }
                            if inf.params.len() != n.params.len() {
                                errs.push(format!("%{id} '{}': wrong parameter count", n.name));
                            }
                            for (p, ip) in n.params.iter().zip(&inf.params) {
                                match g.params.get(*p) {
                                    Some(spec) if spec.node == id && spec.shape == ip.shape => {}
                                    _ => errs.push(format!(
                                        "%{id} '{}': parameter {p} does not match '{}'",
                                        n.name, ip.name
                                    )),
                                }
                            }
                        }
                        Err(e) => errs.push(format!("%{id}: {e}")),
                    }
                }
            }
        }
    }
    for &o in g.inputs.iter().chain(&g.outputs) {
        if o >= g.nodes.len() {
            errs.push(format!("graph input/output %{o} does not exist"));
        }
    }
    if g.outputs.is_empty() {
        errs.push("graph has no outputs".into());
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "graph verifier: {}",
            errs.join("; ")
        )))
    }
}
