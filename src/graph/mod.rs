//! The graph IR: typed layer nodes in topological order with inferred shapes and
//! parameter specifications in canonical layout.
//!
//! Invariants (established by [`Graph::add`], checked again by [`verify::verify`]):
//! - nodes are in topological order: every input of node `i` has an index `< i`;
//! - node names are unique;
//! - `Node::shape` is the per-sample output shape (batch axis excluded), every entry ≥ 1;
//! - every parameter of a node is listed in `Node::params`, in Keras's weight order
//!   (kernel, bias; gamma, beta, moving_mean, moving_variance).
//!
//! Canonical parameter layouts (what [`crate::Model::params`] holds and every back end reads):
//! - LocallyConnected kernel: `(P, Q, F)`, Keras implementation 1: `P` output positions
//!   row-major, `Q = prod(kernel)·C` patch entries in the input's memory order
//!   (channels_last: `(taps…, c)`, channels_first: `(c, taps…)`), `F` filters. With `same`
//!   padding, taps that fall outside the input have zero weights.
//! - LocallyConnected bias: the per-sample output shape (channels_last `(out…, F)`,
//!   channels_first `(F, out…)`): Keras's `(out…, F)` bias reshaped, which is exactly the
//!   channels_first quirk of keras-lc-semantics §3.3, so the bias adds elementwise.
//! - Dense: kernel `(in, units)`, bias `(units,)`.
//! - Conv: kernel `(k…, C/groups, F)`, bias `(F,)` (the Keras layout).
//! - BatchNormalization: `gamma`, `beta`, `moving_mean`, `moving_variance`, each `(C,)`.

pub mod cut;
pub mod geometry;
pub mod infer;
pub mod layout;
pub mod layout_lc;
pub mod ops;
pub mod print;
pub mod svg;
pub mod verify;

use crate::error::{Error, Result};
use crate::size;
pub use ops::*;

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;
/// Index of a parameter in [`Graph::params`].
pub type ParamId = usize;

pub use crate::budget::default_memory_budget;

/// One layer of the graph.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The Keras layer name (unique).
    pub name: String,
    /// What the layer computes.
    pub op: Op,
    /// Producer nodes, in call order.
    pub inputs: Vec<NodeId>,
    /// Per-sample output shape.
    pub shape: Vec<usize>,
    /// Parameters, in Keras weight order.
    pub params: Vec<ParamId>,
    /// The layer's dtype policy (float32 unless the configuration says otherwise).
    pub policy: DtypePolicy,
}

/// Description of one weight.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// Owning node.
    pub node: NodeId,
    /// Keras weight name (`kernel`, `bias`, `gamma`, `moving_mean`…).
    pub name: String,
    /// Shape in canonical layout (see the module docs).
    pub shape: Vec<usize>,
    /// Shape in the Keras file layout of the owning layer.
    pub keras_shape: Vec<usize>,
    /// Whether an optimizer updates it (false for BatchNorm moving statistics).
    pub trainable: bool,
    /// How it is initialized without a weights file.
    pub initializer: Initializer,
    /// Regularizer, if any.
    pub regularizer: Option<Regularizer>,
    /// Constraint, if any.
    pub constraint: Option<Constraint>,
}

impl ParamSpec {
    /// Number of elements in canonical layout.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the parameter has no elements (never true for a built graph).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A model as a graph of typed layer nodes.
#[derive(Clone, Debug, PartialEq)]
pub struct Graph {
    /// Model name.
    pub name: String,
    /// Nodes in topological order.
    pub nodes: Vec<Node>,
    /// Input nodes (each an [`Op::Input`]), in the model's input order.
    pub inputs: Vec<NodeId>,
    /// Output nodes, in the model's output order.
    pub outputs: Vec<NodeId>,
    /// Parameters of all nodes.
    pub params: Vec<ParamSpec>,
    /// Memory budget in bytes enforced while nodes are added.
    pub memory_budget: u64,
}

impl Graph {
    /// An empty graph with the default memory budget ([`default_memory_budget`]).
    pub fn new(name: impl Into<String>) -> Self {
        Self::with_budget(name, default_memory_budget())
    }

    /// An empty graph with a memory budget in bytes.
    pub fn with_budget(name: impl Into<String>, memory_budget: u64) -> Self {
        Graph {
            name: name.into(),
            nodes: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            params: Vec::new(),
            memory_budget,
        }
    }

    /// Adds a model input with a per-sample shape.
    pub fn add_input(&mut self, name: &str, shape: Vec<usize>) -> Result<NodeId> {
        if shape.contains(&0) {
            return Err(Error::shape(
                name,
                format!("input shape {shape:?} has a zero dimension"),
            ));
        }
        self.check_name(name)?;
        self.check_budget(name, "output", &shape)?;
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.to_string(),
            op: Op::Input,
            inputs: Vec::new(),
            shape,
            params: Vec::new(),
            policy: DtypePolicy::default(),
        });
        self.inputs.push(id);
        Ok(id)
    }

    /// Adds a layer: infers its output shape and parameters from its inputs, checks the
    /// memory budget, and returns its id. Errors name the layer.
    pub fn add(&mut self, name: &str, op: Op, inputs: &[NodeId]) -> Result<NodeId> {
        self.check_name(name)?;
        if matches!(op, Op::Input) {
            return Err(Error::internal("Graph::add called with Op::Input"));
        }
        let mut in_shapes = Vec::with_capacity(inputs.len());
        for &i in inputs {
            let node = self.nodes.get(i).ok_or_else(|| {
                Error::internal(format!("layer '{name}': input node {i} does not exist"))
            })?;
            in_shapes.push(node.shape.clone());
        }
        let inferred = infer::infer(name, &op, &in_shapes)?;
        for p in &inferred.params {
            check_constraint_axes(name, p)?;
        }
        self.check_budget(name, "output", &inferred.shape)?;
        // All weights together, in canonical layout and (held while a file is loaded) in
        // the file's layout.
        let mut total = 0u64;
        let mut file_total = 0u64;
        let overflow = |what: &str| self.budget_error(name, what, crate::budget::OVERFLOW_BYTES);
        for p in self.params.iter().chain(&inferred.params) {
            total = size::f32_bytes(&p.shape)
                .and_then(|b| size::add64(total, b))
                .map_err(|_| overflow("all weights"))?;
            file_total = size::f32_bytes(&p.keras_shape)
                .and_then(|b| size::add64(file_total, b))
                .map_err(|_| overflow("all weights (file layout)"))?;
        }
        for p in &inferred.params {
            self.check_budget(name, &p.name, &p.shape)?;
            self.check_budget(name, &format!("{} (file layout)", p.name), &p.keras_shape)?;
        }
        for (what, bytes) in [
            ("all weights", total),
            ("all weights (file layout)", file_total),
        ] {
            if bytes > self.memory_budget {
                return Err(self.budget_error(name, what, u128::from(bytes)));
            }
        }
        let id = self.nodes.len();
        let mut params = Vec::with_capacity(inferred.params.len());
        for mut p in inferred.params {
            p.node = id;
            params.push(self.params.len());
            self.params.push(p);
        }
        self.nodes.push(Node {
            name: name.to_string(),
            op,
            inputs: inputs.to_vec(),
            shape: inferred.shape,
            params,
            policy: DtypePolicy::default(),
        });
        Ok(id)
    }

    /// Looks a node up by name.
    pub fn node_by_name(&self, name: &str) -> Option<NodeId> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Total number of parameter elements (Keras's "Total params" counts file-layout
    /// elements; see [`Graph::keras_param_count`]).
    pub fn param_count(&self) -> usize {
        self.params.iter().map(|p| p.len()).sum()
    }

    /// Whether layer `node` is frozen (Keras `trainable: false`): it has weights that would
    /// learn and none of them does. BatchNorm's moving statistics never learn, so a
    /// BatchNorm without `gamma` and `beta` never counts as frozen. Frozen BatchNorm runs
    /// in inference mode during training, as in tf-keras 2.x.
    pub fn is_frozen(&self, node: NodeId) -> bool {
        let Some(n) = self.nodes.get(node) else {
            return false;
        };
        let learnable: Vec<&ParamSpec> = n
            .params
            .iter()
            .filter_map(|&p| self.params.get(p))
            .filter(|s| !s.name.starts_with("moving_"))
            .collect();
        !learnable.is_empty() && learnable.iter().all(|s| !s.trainable)
    }

    /// Parameter count as Keras reports it (file layout, implementation 2 masks included).
    pub fn keras_param_count(&self) -> usize {
        self.params
            .iter()
            .map(|p| p.keras_shape.iter().product::<usize>())
            .sum()
    }

    fn check_name(&self, name: &str) -> Result<()> {
        if self.node_by_name(name).is_some() {
            return Err(Error::Graph {
                source_name: String::new(),
                detail: format!("duplicate layer name '{name}'"),
            });
        }
        Ok(())
    }

    fn check_budget(&self, layer: &str, what: &str, shape: &[usize]) -> Result<()> {
        let bytes = size::f32_bytes(shape).map_or(crate::budget::OVERFLOW_BYTES, u128::from);
        if bytes > u128::from(self.memory_budget) {
            return Err(self.budget_error(layer, what, bytes));
        }
        Ok(())
    }

    fn budget_error(&self, layer: &str, what: &str, bytes: u128) -> Error {
        Error::Budget {
            source_name: String::new(),
            layer: layer.to_string(),
            what: what.to_string(),
            bytes,
            budget: self.memory_budget,
        }
    }
}

/// A constraint's `axis` list must name axes of the weight's Keras shape (negative from
/// the end): checked when the layer is added, so the error names the layer and weight
/// instead of surfacing mid-`fit`.
fn check_constraint_axes(layer: &str, p: &ParamSpec) -> Result<()> {
    let axes = match &p.constraint {
        Some(Constraint::MaxNorm { axis, .. })
        | Some(Constraint::UnitNorm { axis })
        | Some(Constraint::MinMaxNorm { axis, .. }) => axis,
        _ => return Ok(()),
    };
    let rank = p.keras_shape.len() as i64;
    match axes.iter().find(|&&a| !(-rank..rank).contains(&a)) {
        Some(a) => Err(Error::shape(
            layer,
            format!(
                "constraint of weight '{}': axis {a} is out of range for its shape {:?}",
                p.name, p.keras_shape
            ),
        )),
        None => Ok(()),
    }
}
