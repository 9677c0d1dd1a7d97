//! Streaming prediction: any number of samples through a model compiled once for a batch
//! size, and the outputs of inner layers ([`CompiledModel::predict_outputs`],
//! [`CompiledModel::predict_into`]).
//!
//! Samples are taken `batch_size` at a time as views of the caller's arrays (a
//! memory-mapped `.npy` works as well as an array in memory: a batch of a C-order input
//! is a contiguous slice and is never copied), run, and handed to a sink batch by batch,
//! so the memory a call needs is one batch's activations plus whatever the sink keeps.
//!
//! The last partial batch runs in a program compiled once for its own size (and cached),
//! not padded to `batch_size`: padding would compute up to `batch_size − 1` rows for
//! nothing on every call (32× the work for one sample at the default size), while a
//! program costs milliseconds to compile once. Each row of a batch is computed in the
//! same order whatever the batch size (the schedules tile rows, they never mix them), so
//! a sample's output does not depend on the batch it falls in; `tests/run_batched.rs`
//! checks this bit for bit on the JIT.
//!
//! Inner layers: naming layers cuts the graph at them ([`crate::graph::cut`]) and the cut
//! is compiled as its own program, so nothing after them runs. The cut binds the model's
//! weights by index (`Cut::param_map`), without copying them. A requested model input is
//! answered from the input itself.

use super::{flat, CompiledModel};
use crate::error::{Error, Result};
use crate::graph::cut::{self, Cut};
use crate::graph::{Graph, NodeId, Op};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use std::borrow::Cow;
use std::sync::Arc;

/// One batch of results, as [`CompiledModel::predict_into`] hands it to its sink.
#[derive(Debug)]
pub struct OutputBatch<'a> {
    /// Index of the batch's first sample in the whole input.
    pub start: usize,
    /// Samples in this batch (the batch size, or fewer for the last one).
    pub rows: usize,
    /// Samples in the whole input.
    pub total: usize,
    /// Names of the outputs (layer names), in the order requested.
    pub names: &'a [String],
    /// Per-sample shape of each output (batch axis excluded).
    pub shapes: &'a [Vec<usize>],
    /// Each output's values for this batch: `rows × prod(shape)` floats, row-major.
    pub data: &'a [&'a [f32]],
}

/// Where each requested output comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// Model input `k`, passed through.
    Input(usize),
    /// Output `j` of the program.
    Program(usize),
}

/// What one streaming call computes: the program's graph and how to assemble the
/// requested outputs from it.
struct Target {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    sources: Vec<Source>,
    /// `None`: the whole model; `Some`: the model cut at some nodes. Absent entirely
    /// (`program: false`) when every requested output is a model input.
    cut: Option<Arc<Cut>>,
    program: bool,
}

impl Target {
    fn graph<'a>(&'a self, model: &'a Graph) -> &'a Graph {
        self.cut.as_ref().map_or(model, |c| &c.graph)
    }

    fn key(&self) -> super::ProgramKey {
        self.cut.as_ref().map(|c| {
            c.graph
                .outputs
                .iter()
                .map(|&o| c.node_map[o])
                .collect::<Vec<NodeId>>()
        })
    }
}

/// Accumulates streamed batches into whole output arrays (allocated at the first batch,
/// at the final size, so nothing is concatenated or copied twice): a sink for
/// [`CompiledModel::predict_into`] that keeps everything, as
/// [`CompiledModel::predict_outputs`] does.
#[derive(Debug, Default)]
pub struct Collector {
    outputs: Vec<(String, ArrayD<f32>)>,
}

impl Collector {
    /// Copies one batch into place.
    pub fn add(&mut self, b: &OutputBatch<'_>) -> Result<()> {
        if self.outputs.is_empty() {
            for (name, shape) in b.names.iter().zip(b.shapes) {
                let mut full = vec![b.total];
                full.extend_from_slice(shape);
                self.outputs
                    .push((name.clone(), ArrayD::zeros(IxDyn(&full))));
            }
        }
        for ((_, out), (data, shape)) in self.outputs.iter_mut().zip(b.data.iter().zip(b.shapes)) {
            let row: usize = shape.iter().product();
            let dst = out
                .as_slice_mut()
                .and_then(|s| s.get_mut(b.start * row..(b.start + b.rows) * row))
                .ok_or_else(|| Error::internal("streamed batch outside the output"))?;
            if dst.len() != data.len() {
                return Err(Error::internal("streamed batch has the wrong size"));
            }
            dst.copy_from_slice(data);
        }
        Ok(())
    }

    /// The finished outputs, in the order requested.
    pub fn into_arrays(self) -> Result<Vec<(String, ArrayD<f32>)>> {
        if self.outputs.is_empty() {
            return Err(Error::internal("prediction produced no batch"));
        }
        Ok(self.outputs)
    }
}

impl CompiledModel {
    /// Predicts the outputs of the layers called `layers` (the model's own outputs when
    /// `layers` is empty) for every sample of `inputs`, `batch_size` samples at a time
    /// (Keras's `predict(x, batch_size=…)`; 32 is Keras's default).
    ///
    /// `inputs` are the model's inputs in order, each `(N, input shape…)` with the same
    /// `N`; views of memory-mapped files work (see [`crate::io::npy::stream::NpyInput`]).
    /// Returns one `(layer name, (N, output shape…))` pair per distinct requested layer,
    /// in the order first requested: what `keras.Model(model.inputs, [layer.output …])
    /// .predict(x)` returns. Layers after the requested ones are not computed, and a
    /// layer with a fused activation gives its activated output, as in Keras.
    ///
    /// Errors: [`Error::Usage`] for an unknown layer name (the message lists existing
    /// names) or a zero batch size; [`Error::Input`] for inputs that do not fit the model.
    pub fn predict_outputs(
        &self,
        inputs: &[ArrayViewD<'_, f32>],
        layers: &[&str],
        batch_size: usize,
    ) -> Result<Vec<(String, ArrayD<f32>)>> {
        let mut outs = Collector::default();
        self.predict_into(inputs, layers, batch_size, &mut |b| outs.add(b))?;
        outs.into_arrays()
    }

    /// [`CompiledModel::predict_outputs`] without keeping the results: each batch's
    /// outputs go to `sink` as soon as they are computed (e.g. to be written to a file),
    /// in sample order, so memory stays bounded by one batch. An error from `sink` stops
    /// the prediction and is returned.
    pub fn predict_into(
        &self,
        inputs: &[ArrayViewD<'_, f32>],
        layers: &[&str],
        batch_size: usize,
        sink: &mut dyn FnMut(&OutputBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        self.stream(self.model.params(), inputs, layers, batch_size, sink)
    }

    /// [`CompiledModel::predict_into`] with other values of the model's parameters
    /// (canonical layout, one array per graph parameter): one compiled model serves a
    /// model whose weights change (training, `set_weights`) without recompiling.
    pub fn predict_into_with(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayViewD<'_, f32>],
        layers: &[&str],
        batch_size: usize,
        sink: &mut dyn FnMut(&OutputBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        self.stream(params, inputs, layers, batch_size, sink)
    }

    /// Names and per-sample shapes of what [`CompiledModel::predict_outputs`] returns
    /// for `layers` (the model's outputs when empty), without running anything.
    pub fn output_shapes(&self, layers: &[&str]) -> Result<Vec<(String, Vec<usize>)>> {
        let t = self.target(layers)?;
        Ok(t.names.into_iter().zip(t.shapes).collect())
    }

    /// The streaming core behind every prediction, with explicit parameter values.
    pub(crate) fn stream(
        &self,
        params: &[ArrayD<f32>],
        inputs: &[ArrayViewD<'_, f32>],
        layers: &[&str],
        batch_size: usize,
        sink: &mut dyn FnMut(&OutputBatch<'_>) -> Result<()>,
    ) -> Result<()> {
        if batch_size == 0 {
            return Err(Error::Usage {
                detail: "the batch size must be at least 1".into(),
            });
        }
        let total = check_views(self.model.graph(), inputs)?;
        self.check_params(params)?;
        let target = self.target(layers)?;
        // The reference engine takes whole arrays: pick the cut's weights once per call.
        let ref_params: Option<Cow<[ArrayD<f32>]>> = match (&target.cut, self.opts.engine) {
            (_, e) if !e.is_reference() => None,
            (None, _) => Some(self.reference_params(params)),
            (Some(c), _) => Some(Cow::Owned(c.select_params(&self.reference_params(params))?)),
        };
        // The compiled engines' parameter data, bound once per call (16-bit weights of
        // parameters other than the model's own are narrowed here, not per batch).
        let bound = match (&ref_params, &target.cut) {
            (Some(_), _) => None,
            (None, None) => Some(self.bind_params(params, &(0..params.len()).collect::<Vec<_>>())),
            (None, Some(c)) => Some(self.bind_params(params, &c.param_map)),
        };
        let mut start = 0;
        while start < total {
            let rows = batch_size.min(total - start);
            let part: Vec<ArrayViewD<f32>> = inputs
                .iter()
                .map(|x| x.slice_axis(Axis(0), (start..start + rows).into()))
                .collect();
            let flat_in: Vec<Cow<[f32]>> = part.iter().map(flat).collect();
            let mut deliver = |program_outs: &[&[f32]]| -> Result<()> {
                let data: Vec<&[f32]> = target
                    .sources
                    .iter()
                    .map(|s| match *s {
                        Source::Input(k) => flat_in.get(k).map(|c| &**c),
                        Source::Program(j) => program_outs.get(j).copied(),
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| Error::internal("output source missing"))?;
                sink(&OutputBatch {
                    start,
                    rows,
                    total,
                    names: &target.names,
                    shapes: &target.shapes,
                    data: &data,
                })
            };
            if !target.program {
                deliver(&[])?;
            } else if let Some(rp) = &ref_params {
                let owned: Vec<ArrayD<f32>> = part.iter().map(|v| v.to_owned()).collect();
                let graph = target.graph(self.model.graph());
                // The reference may return an output in another memory order (a layer that
                // passes a permuted or repeated input through): deliver row-major copies
                // of those, as every compiled engine does. Found by the structural fuzzer
                // (an Average merge of one tensor three times, cut at inner layers).
                let outs: Vec<ArrayD<f32>> = crate::reference::forward(graph, rp, &owned)?
                    .into_iter()
                    .map(|a| {
                        if a.is_standard_layout() {
                            a
                        } else {
                            a.as_standard_layout().into_owned()
                        }
                    })
                    .collect();
                let slices: Vec<&[f32]> = outs
                    .iter()
                    .map(|a| {
                        a.as_slice()
                            .ok_or_else(|| Error::internal("non-standard output"))
                    })
                    .collect::<Result<_>>()?;
                deliver(&slices)?;
            } else {
                let graph = target.graph(self.model.graph());
                let prepared = self.prepared_for(&target.key(), graph, rows)?;
                let bound = bound
                    .as_ref()
                    .ok_or_else(|| Error::internal("parameters not bound"))?;
                self.run_prepared(&prepared, bound, &flat_in, |outs| deliver(outs))?;
            }
            start += rows;
        }
        Ok(())
    }

    /// Resolves `layers` into a program and the place of each requested output in it.
    fn target(&self, layers: &[&str]) -> Result<Target> {
        let graph = self.model.graph();
        let nodes: Vec<NodeId> = if layers.is_empty() {
            graph.outputs.clone()
        } else {
            let mut distinct = Vec::new();
            for id in cut::resolve(graph, layers)? {
                if !distinct.contains(&id) {
                    distinct.push(id);
                }
            }
            distinct
        };
        let names = nodes.iter().map(|&n| graph.nodes[n].name.clone()).collect();
        let shapes = nodes
            .iter()
            .map(|&n| graph.nodes[n].shape.clone())
            .collect();
        if layers.is_empty() {
            return Ok(Target {
                names,
                shapes,
                sources: (0..nodes.len()).map(Source::Program).collect(),
                cut: None,
                program: true,
            });
        }
        // A program cannot output its own input buffer: inputs are passed through.
        let mut sources = Vec::with_capacity(nodes.len());
        let mut computed = Vec::new();
        for &n in &nodes {
            match graph.nodes[n].op {
                Op::Input => {
                    let k = graph.inputs.iter().position(|&i| i == n);
                    sources.push(Source::Input(
                        k.ok_or_else(|| Error::internal("input node not listed"))?,
                    ));
                }
                _ => {
                    sources.push(Source::Program(computed.len()));
                    computed.push(n);
                }
            }
        }
        let cut = if computed.is_empty() {
            None
        } else {
            Some(self.cut(&computed)?)
        };
        Ok(Target {
            names,
            shapes,
            sources,
            program: cut.is_some(),
            cut,
        })
    }

    /// The model cut at `outputs` (cached).
    fn cut(&self, outputs: &[NodeId]) -> Result<Arc<Cut>> {
        let mut cuts = self
            .cuts
            .lock()
            .map_err(|_| Error::internal("cut cache poisoned"))?;
        if let Some(c) = cuts.get(outputs) {
            return Ok(c.clone());
        }
        let c = Arc::new(cut::cut_nodes(self.model.graph(), outputs)?);
        cuts.insert(outputs.to_vec(), c.clone());
        Ok(c)
    }
}

/// Checks count and shapes of batched input views against the graph's inputs; returns
/// the number of samples.
fn check_views(graph: &Graph, inputs: &[ArrayViewD<'_, f32>]) -> Result<usize> {
    if inputs.len() != graph.inputs.len() {
        return Err(Error::Input {
            detail: format!(
                "the model has {} inputs, {} given",
                graph.inputs.len(),
                inputs.len()
            ),
        });
    }
    let mut batch = None;
    for (x, &id) in inputs.iter().zip(&graph.inputs) {
        let node = &graph.nodes[id];
        let shape = x.shape();
        if shape.len() != node.shape.len() + 1 || shape[1..] != node.shape[..] || shape[0] == 0 {
            return Err(Error::Input {
                detail: format!(
                    "input '{}' expects shape (batch, {}), got {shape:?}",
                    node.name,
                    node.shape
                        .iter()
                        .map(|d| d.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        match batch {
            None => batch = Some(shape[0]),
            Some(b) if b != shape[0] => {
                return Err(Error::Input {
                    detail: format!("inputs have different batch sizes ({b} and {})", shape[0]),
                })
            }
            _ => {}
        }
    }
    batch.ok_or_else(|| Error::Input {
        detail: "no input given".into(),
    })
}
