//! Layers that only move data — ZeroPadding, Cropping, Flatten, Reshape, Permute — and
//! the data-movement kernel builder they (and Concatenate) share.
//!
//! A data-movement kernel is a parallel loop over the batch around one or more *transfer*
//! nests `dst[b·S_d + off_d + Σ i_a·cd_a] = src[b·S_s + off_s + Σ i_a·cs_a]` (or a
//! constant), run in order within each batch row. Adjacent axes that are contiguous in
//! both source and destination are merged first, so the innermost loop is as long as
//! possible; it is `Vector(4)` when its extent is a multiple of 4, its destination
//! coefficient is 1 and its source coefficient 0 or 1 (the verifier's lane rules),
//! otherwise serial. Every index is affine with non-negative coefficients over loops of
//! the transferred extents, so the verifier proves it in bounds directly.
//!
//! Reinterpretations (Reshape, Flatten of channels_last data or of channels_first data
//! with one channel or no spatial extent) alias their input — except when the node is a
//! graph output, which gets a tensor of its own (the memory plan gives each tensor one
//! role); then they copy. An output that is itself a graph input, or listed twice, is
//! copied by `Cx::finish_forward`.

mod transpose;

pub(in crate::lower) use transpose::{transpose_into, transposed, transposed_per_sample};

use super::Cx;
use crate::error::{Error, Result};
use crate::graph::{DataFormat, NodeId, Op};
use crate::loop_ir::{for_, load, Affine, BufId, Expr, KernelBuilder, LoopKind, Stmt, Var};

/// Row-major strides of `shape`: `strides[a] = Π shape[a+1..]`.
pub(super) fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1] as i64;
    }
    s
}

/// One side of a transfer: `buf[b·sample + offset + Σ i_a·coef_a]`.
#[derive(Clone, Debug)]
pub(super) struct Side {
    /// Buffer.
    pub buf: BufId,
    /// Elements per batch row.
    pub sample: i64,
    /// Constant offset within a row.
    pub offset: i64,
    /// Coefficient of each transferred axis.
    pub coef: Vec<i64>,
}

/// One transfer nest: `dst = src` (or `dst = 0` without a source) over `extents`.
#[derive(Clone, Debug)]
pub(super) struct Transfer {
    /// Trip count of each axis (outermost first).
    pub extents: Vec<usize>,
    /// Source, or `None` to store zeros.
    pub src: Option<Side>,
    /// Destination.
    pub dst: Side,
}

impl Transfer {
    /// Merges adjacent axes that are contiguous in both source and destination, and drops
    /// axes of extent 1 (they contribute nothing to any index).
    fn collapsed(&self) -> Transfer {
        let mut t = Transfer {
            extents: Vec::new(),
            src: self.src.clone().map(|s| Side { coef: vec![], ..s }),
            dst: Side {
                coef: vec![],
                ..self.dst.clone()
            },
        };
        for a in 0..self.extents.len() {
            let (e, cd) = (self.extents[a], self.dst.coef[a]);
            let cs = self.src.as_ref().map_or(0, |s| s.coef[a]);
            if e == 1 {
                continue;
            }
            if let Some(&last) = t.extents.last() {
                let ld = *t.dst.coef.last().unwrap_or(&0);
                let ls = t.src.as_ref().and_then(|s| s.coef.last().copied());
                let src_ok = ls.is_none_or(|ls| ls == cs * e as i64);
                if ld == cd * e as i64 && src_ok {
                    let n = t.extents.len() - 1;
                    t.extents[n] = last * e;
                    t.dst.coef[n] = cd;
                    if let Some(s) = t.src.as_mut() {
                        s.coef[n] = cs;
                    }
                    continue;
                }
            }
            t.extents.push(e);
            t.dst.coef.push(cd);
            if let Some(s) = t.src.as_mut() {
                s.coef.push(cs);
            }
        }
        t
    }

    /// The nest for batch row variable `b`, with fresh loop variables from `kb`. A
    /// contiguous innermost axis runs in f32x4 lanes; when its extent is not a multiple
    /// of 4, its first `⌊e/4⌋·4` elements do and the rest follow in a scalar tail loop
    /// (a ZeroPadding of genomic_residual_lc1d's 44 314 SNPs was a scalar copy).
    fn nest(&self, kb: &mut KernelBuilder, b: Var) -> Vec<Stmt> {
        let t = self.collapsed();
        let vars: Vec<Var> = (0..t.extents.len())
            .map(|a| kb.var(&format!("i{a}")))
            .collect();
        let last = vars.len().wrapping_sub(1);
        // The index of side `s` with the innermost variable's place taken by `inner`.
        let index = |s: &Side, inner: &Affine| {
            vars.iter().zip(&s.coef).enumerate().fold(
                Affine::var(b).scale(s.sample).plus(s.offset),
                |acc, (a, (&v, &c))| {
                    if a == last {
                        acc.plus_affine(&inner.clone().scale(c))
                    } else {
                        acc.plus_term(v, c)
                    }
                },
            )
        };
        let store = |inner: &Affine| Stmt::Store {
            buf: t.dst.buf,
            index: index(&t.dst, inner),
            value: match &t.src {
                Some(s) => load(s.buf, index(s, inner)),
                None => Expr::Const(0.0),
            },
        };
        let Some(&inner_var) = vars.last() else {
            return vec![store(&Affine::constant(0))];
        };
        let e = t.extents[last];
        let contiguous =
            t.dst.coef[last] == 1 && t.src.as_ref().is_none_or(|s| matches!(s.coef[last], 0 | 1));
        let main = if contiguous { e / 4 * 4 } else { 0 };
        let mut stmts = Vec::new();
        if main > 0 {
            stmts.push(for_(
                inner_var,
                main as u64,
                LoopKind::Vector(4),
                vec![store(&Affine::var(inner_var))],
            ));
        }
        if main < e {
            let (v, off) = if main == 0 {
                (inner_var, 0)
            } else {
                (kb.var(&format!("i{last}t")), main as i64)
            };
            stmts.push(for_(
                v,
                (e - main) as u64,
                LoopKind::Serial,
                vec![store(&Affine::var(v).plus(off))],
            ));
        }
        for (a, &v) in vars.iter().enumerate().rev().skip(1) {
            stmts = vec![for_(v, t.extents[a] as u64, LoopKind::Serial, stmts)];
        }
        stmts
    }
}

/// Appends one kernel running `transfers` in order for every batch row (rows in
/// parallel: each row's transfers only touch that row of their destination).
pub(super) fn transfer_kernel(cx: &mut Cx, name: &str, transfers: &[Transfer]) {
    let mut kb = KernelBuilder::new(name);
    let b = kb.var("b");
    let body: Vec<Stmt> = transfers.iter().flat_map(|t| t.nest(&mut kb, b)).collect();
    let reads: Vec<BufId> = transfers
        .iter()
        .filter_map(|t| t.src.as_ref().map(|s| s.buf))
        .collect();
    let mut writes: Vec<BufId> = transfers.iter().map(|t| t.dst.buf).collect();
    writes.dedup();
    let nest = for_(b, cx.batch as u64, LoopKind::Parallel, body);
    cx.push(kb.finish(vec![nest]), &reads, &writes);
}

/// A transfer that copies a whole per-sample tensor of `n` elements unchanged.
fn flat_copy(src: BufId, dst: BufId, n: usize) -> Transfer {
    let side = |buf| Side {
        buf,
        sample: n as i64,
        offset: 0,
        coef: vec![1],
    };
    Transfer {
        extents: vec![n],
        src: Some(side(src)),
        dst: side(dst),
    }
}

/// Makes `node` a view of its input, or a flat copy of it when `node` is a graph output.
pub fn alias_or_copy(cx: &mut Cx, node: NodeId) -> Result<()> {
    if !cx.graph.outputs.contains(&node) {
        return cx.alias(node, 0);
    }
    let n = &cx.graph.nodes[node];
    let (name, len) = (n.name.clone(), n.shape.iter().product::<usize>());
    let src = cx.input(node, 0)?;
    let dst = cx.output(node);
    transfer_kernel(cx, &format!("{name}.copy"), &[flat_copy(src, dst, len)]);
    Ok(())
}

/// The per-sample axis of spatial axis `a` in `df` order.
fn spatial_dim(a: usize, df: DataFormat) -> usize {
    match df {
        DataFormat::ChannelsLast => a,
        DataFormat::ChannelsFirst => a + 1,
    }
}

/// A one-input node's name, input and output per-sample shapes, and buffers.
struct Io {
    name: String,
    inp: Vec<usize>,
    out: Vec<usize>,
    src: BufId,
    dst: BufId,
}

/// The [`Io`] of `node` (allocates its output tensor).
fn io(cx: &mut Cx, node: NodeId) -> Result<Io> {
    let n = &cx.graph.nodes[node];
    let (name, out) = (n.name.clone(), n.shape.clone());
    let inp = cx.graph.nodes[n.inputs[0]].shape.clone();
    let src = cx.input(node, 0)?;
    let dst = cx.output(node);
    Ok(Io {
        name,
        inp,
        out,
        src,
        dst,
    })
}

/// ZeroPadding: zero the output row, then copy the input into its interior
/// (`y[…, i_a + before_a, …] = x[…, i_a, …]`).
pub fn zero_padding(
    cx: &mut Cx,
    node: NodeId,
    pads: &[(usize, usize)],
    df: DataFormat,
) -> Result<()> {
    let Io {
        name,
        inp,
        out,
        src,
        dst,
    } = io(cx, node)?;
    let t = zero_padding_transfers(&inp, &out, pads, df, src, dst);
    transfer_kernel(cx, &format!("{name}.forward"), &t);
    Ok(())
}

fn zero_padding_transfers(
    inp: &[usize],
    out: &[usize],
    pads: &[(usize, usize)],
    df: DataFormat,
    src: BufId,
    dst: BufId,
) -> Vec<Transfer> {
    let (is, os) = (row_major(inp), row_major(out));
    let n_out: usize = out.iter().product();
    let offset = pads
        .iter()
        .enumerate()
        .map(|(a, p)| p.0 as i64 * os[spatial_dim(a, df)])
        .sum();
    let zero = Transfer {
        extents: vec![n_out],
        src: None,
        dst: Side {
            buf: dst,
            sample: n_out as i64,
            offset: 0,
            coef: vec![1],
        },
    };
    let copy = Transfer {
        extents: inp.to_vec(),
        src: Some(Side {
            buf: src,
            sample: inp.iter().product::<usize>() as i64,
            offset: 0,
            coef: is,
        }),
        dst: Side {
            buf: dst,
            sample: n_out as i64,
            offset,
            coef: os,
        },
    };
    vec![zero, copy]
}

/// Cropping: `y[…, i_a, …] = x[…, i_a + before_a, …]` over the output.
pub fn cropping(cx: &mut Cx, node: NodeId, crops: &[(usize, usize)], df: DataFormat) -> Result<()> {
    let Io {
        name,
        inp,
        out,
        src,
        dst,
    } = io(cx, node)?;
    let t = cropping_transfers(&inp, &out, crops, df, src, dst);
    transfer_kernel(cx, &format!("{name}.forward"), &t);
    Ok(())
}

fn cropping_transfers(
    inp: &[usize],
    out: &[usize],
    crops: &[(usize, usize)],
    df: DataFormat,
    src: BufId,
    dst: BufId,
) -> Vec<Transfer> {
    let (is, os) = (row_major(inp), row_major(out));
    let offset = crops
        .iter()
        .enumerate()
        .map(|(a, c)| c.0 as i64 * is[spatial_dim(a, df)])
        .sum();
    vec![Transfer {
        extents: out.to_vec(),
        src: Some(Side {
            buf: src,
            sample: inp.iter().product::<usize>() as i64,
            offset,
            coef: is,
        }),
        dst: Side {
            buf: dst,
            sample: out.iter().product::<usize>() as i64,
            offset: 0,
            coef: os,
        },
    }]
}

/// Permute with Keras's 1-based `dims`: output axis `j` is input axis `dims[j] − 1`, so
/// the copy walks the output in order and reads the input with the permuted strides.
pub fn permute(cx: &mut Cx, node: NodeId, dims: &[usize]) -> Result<()> {
    let Io {
        name,
        inp,
        out,
        src,
        dst,
    } = io(cx, node)?;
    let t = permute_transfers(&inp, &out, dims, src, dst);
    transfer_kernel(cx, &format!("{name}.forward"), &t);
    Ok(())
}

fn permute_transfers(
    inp: &[usize],
    out: &[usize],
    dims: &[usize],
    src: BufId,
    dst: BufId,
) -> Vec<Transfer> {
    let is = row_major(inp);
    let coef: Vec<i64> = dims.iter().map(|&d| is[d - 1]).collect();
    let n: i64 = out.iter().product::<usize>() as i64;
    vec![Transfer {
        extents: out.to_vec(),
        src: Some(Side {
            buf: src,
            sample: n,
            offset: 0,
            coef,
        }),
        dst: Side {
            buf: dst,
            sample: n,
            offset: 0,
            coef: row_major(out),
        },
    }]
}

/// Flatten: a view for channels_last data (or when moving channels last changes
/// nothing), otherwise a copy walking `(spatial…, C)` in order and reading `(C, spatial…)`.
pub fn flatten(cx: &mut Cx, node: NodeId, df: DataFormat) -> Result<()> {
    let inp = cx.graph.nodes[cx.graph.nodes[node].inputs[0]].shape.clone();
    if flatten_is_view(&inp, df) {
        return alias_or_copy(cx, node);
    }
    let Io {
        name,
        inp,
        src,
        dst,
        ..
    } = io(cx, node)?;
    let t = flatten_transfers(&inp, src, dst);
    transfer_kernel(cx, &format!("{name}.forward"), &t);
    Ok(())
}

/// Whether Flatten of per-sample `inp` in `df` order only reinterprets memory.
fn flatten_is_view(inp: &[usize], df: DataFormat) -> bool {
    let spatial: usize = inp.iter().skip(1).product();
    df == DataFormat::ChannelsLast || inp.len() <= 1 || inp[0] == 1 || spatial == 1
}

fn flatten_transfers(inp: &[usize], src: BufId, dst: BufId) -> Vec<Transfer> {
    let is = row_major(inp);
    // Walk order (s_1…, C): extents and input strides of those axes.
    let mut extents: Vec<usize> = inp[1..].to_vec();
    extents.push(inp[0]);
    let mut coef: Vec<i64> = is[1..].to_vec();
    coef.push(is[0]);
    let n: i64 = inp.iter().product::<usize>() as i64;
    let t = Transfer {
        dst: Side {
            buf: dst,
            sample: n,
            offset: 0,
            coef: row_major(&extents),
        },
        extents,
        src: Some(Side {
            buf: src,
            sample: n,
            offset: 0,
            coef,
        }),
    };
    vec![t]
}

/// Backward pass of a data-movement layer (Flatten, ZeroPadding, Cropping, Permute) given
/// the gradient `dy` of its output: each forward copy `y[f(i)] = x[g(i)]` becomes
/// `dx[g(i)] = dy[f(i)]` (the maps are injective, so this writes each element once),
/// after zeroing `dx` when the forward pass does not read all of `x` (Cropping). Views
/// pass `dy` through.
pub fn backward(cx: &mut Cx, node: NodeId, dy: BufId) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, out) = (n.name.clone(), n.shape.clone());
    let inp = cx.graph.nodes[n.inputs[0]].shape.clone();
    let op = n.op.clone();
    if let Op::Flatten { data_format } = op {
        if flatten_is_view(&inp, data_format) {
            return cx.grad_alias(node, 0, dy);
        }
    }
    let dx = cx.grad_input(node, 0)?;
    let (forward, covers) = match &op {
        Op::Flatten { .. } => (flatten_transfers(&inp, dx, dy), true),
        Op::ZeroPadding {
            pads, data_format, ..
        } => (
            zero_padding_transfers(&inp, &out, pads, *data_format, dx, dy),
            true,
        ),
        Op::Cropping {
            crops, data_format, ..
        } => (
            cropping_transfers(&inp, &out, crops, *data_format, dx, dy),
            false,
        ),
        Op::Permute { dims } => (permute_transfers(&inp, &out, dims, dx, dy), true),
        other => {
            return Err(Error::internal(format!(
                "shape::backward of {}",
                other.kind_name()
            )))
        }
    };
    let n_in: usize = inp.iter().product();
    let mut ts = Vec::new();
    if !covers {
        ts.push(Transfer {
            extents: vec![n_in],
            src: None,
            dst: Side {
                buf: dx,
                sample: n_in as i64,
                offset: 0,
                coef: vec![1],
            },
        });
    }
    for t in forward {
        if let Some(src) = t.src {
            ts.push(Transfer {
                extents: t.extents,
                src: Some(t.dst),
                dst: src,
            });
        }
    }
    transfer_kernel(cx, &format!("{name}.backward"), &ts);
    Ok(())
}

/// `dst = a ⊙ m` elementwise over `batch × n` elements (rows in parallel).
fn masked_kernel(cx: &mut Cx, name: String, n: usize, a: BufId, m: BufId, dst: BufId) {
    let mut kb = KernelBuilder::new(name);
    let b = kb.var("b");
    let e = kb.var("e");
    let idx = Affine::var(b).scale(n as i64).plus_term(e, 1);
    let lanes = if n.is_multiple_of(4) {
        LoopKind::Vector(4)
    } else {
        LoopKind::Serial
    };
    let store = Stmt::Store {
        buf: dst,
        index: idx.clone(),
        value: crate::loop_ir::bin(
            crate::loop_ir::BinOp::Mul,
            load(a, idx.clone()),
            load(m, idx),
        ),
    };
    let nest = for_(
        b,
        cx.batch as u64,
        LoopKind::Parallel,
        vec![for_(e, n as u64, lanes, vec![store])],
    );
    cx.push(kb.finish(vec![nest]), &[a, m], &[dst]);
}

/// Dropout in training mode: `y = x ⊙ mask`, where the mask (`0` or `1/(1 − rate)` per
/// element, drawn on the host from the step's seeded generator, see
/// [`crate::reference::dropout::dropout_mask`]) is the read-only buffer `Aux(k)` of the
/// program. Returns the mask buffer.
pub fn dropout_forward(cx: &mut Cx, node: NodeId, k: usize) -> Result<BufId> {
    let n = &cx.graph.nodes[node];
    let (name, len) = (n.name.clone(), n.shape.iter().product::<usize>());
    cx.buffers.push(crate::loop_ir::Buffer {
        name: format!("{name}.mask"),
        len: cx.batch * len,
        role: crate::loop_ir::BufRole::Aux(k),
        dtype: crate::loop_ir::Dtype::F32,
    });
    let mask = (cx.buffers.len() - 1) as BufId;
    let x = cx.input(node, 0)?;
    let y = cx.output(node);
    masked_kernel(cx, format!("{name}.forward"), len, x, mask, y);
    cx.saved[node] = vec![mask];
    Ok(mask)
}

/// Backward pass of a training-mode Dropout: `dx = dy ⊙ mask`.
pub fn dropout_backward(cx: &mut Cx, node: NodeId, dy: BufId) -> Result<()> {
    let n = &cx.graph.nodes[node];
    let (name, len) = (n.name.clone(), n.shape.iter().product::<usize>());
    let &[mask] = cx.saved[node].as_slice() else {
        return Err(Error::internal(format!("dropout '{name}': no mask saved")));
    };
    let dx = cx.grad_input(node, 0)?;
    masked_kernel(cx, format!("{name}.backward"), len, dy, mask, dx);
    Ok(())
}
