//! Merge and Concatenate backward passes (see [`super::merge`]).
//!
//! Add: every input gets `dy`; Subtract: `dy`, `−dy`; Average: `dy / n`; Multiply: `dy`
//! times the product of the other inputs (in TF's order, see the code); Maximum/Minimum: `dy` goes to the winning
//! input, the first one on ties (Keras folds `tf.maximum` left to right and TF's gradient
//! goes to its first argument on ties); Concatenate: `dy` split along the axis.

use crate::error::{Error, Result};
use crate::graph::MergeKind;
use ndarray::{ArrayD, Axis, Slice, Zip};

/// Gradients of an elementwise merge with respect to each of its inputs.
pub(super) fn merge_backward(
    kind: MergeKind,
    xs: &[&ArrayD<f32>],
    dy: &ArrayD<f32>,
) -> Result<Vec<ArrayD<f32>>> {
    let n = xs.len();
    if n == 0 || xs.iter().any(|x| x.shape() != dy.shape()) {
        return Err(Error::internal("reference merge backward: shapes"));
    }
    match kind {
        MergeKind::Add => Ok(vec![dy.clone(); n]),
        MergeKind::Subtract => {
            if n != 2 {
                return Err(Error::internal("reference subtract backward: two inputs"));
            }
            Ok(vec![dy.clone(), dy.mapv(|v| -v)])
        }
        MergeKind::Average => Ok(vec![dy.mapv(|v| v / n as f32); n]),
        MergeKind::Multiply if n == 1 => Ok(vec![dy.clone()]),
        MergeKind::Multiply => {
            // TF's chain rule through Keras's left fold `out_k = out_{k−1} · x_k`:
            // `dx_k = out_{k−1} · g_k`, `g_{k−1} = g_k · x_k`, `dx_0 = g_0`, with
            // `g_{n−1} = dy` — linear in the number of inputs.
            let mut prefix = Vec::with_capacity(n);
            prefix.push(xs[0].clone());
            for x in &xs[1..n - 1] {
                let mut p = prefix[prefix.len() - 1].clone();
                Zip::from(&mut p).and(*x).for_each(|a, &b| *a *= b);
                prefix.push(p);
            }
            let mut out = vec![ArrayD::zeros(dy.raw_dim()); n];
            let mut g = dy.clone();
            for k in (1..n).rev() {
                let mut d = prefix[k - 1].clone();
                Zip::from(&mut d).and(&g).for_each(|a, &b| *a *= b);
                out[k] = d;
                Zip::from(&mut g).and(xs[k]).for_each(|a, &b| *a *= b);
            }
            out[0] = g;
            Ok(out)
        }
        MergeKind::Maximum | MergeKind::Minimum => {
            // winner[k]: index of the input that produced output element k.
            let mut best = xs[0].clone();
            let mut winner = ArrayD::<usize>::zeros(dy.raw_dim());
            for (j, x) in xs.iter().enumerate().skip(1) {
                Zip::from(&mut best)
                    .and(&mut winner)
                    .and(*x)
                    .for_each(|b, w, &v| {
                        let wins = match kind {
                            MergeKind::Maximum => v > *b,
                            _ => v < *b,
                        };
                        if wins {
                            *b = v;
                            *w = j;
                        }
                    });
            }
            Ok((0..n)
                .map(|i| {
                    let mut g = dy.clone();
                    Zip::from(&mut g).and(&winner).for_each(|a, &w| {
                        if w != i {
                            *a = 0.0;
                        }
                    });
                    g
                })
                .collect())
        }
    }
}

/// Concatenate backward: `dy` split along per-sample axis `axis` into the inputs' sizes.
pub(super) fn concatenate_backward(
    axis: usize,
    xs: &[&ArrayD<f32>],
    dy: &ArrayD<f32>,
) -> Result<Vec<ArrayD<f32>>> {
    let ax = axis + 1;
    let mut start = 0;
    let mut out = Vec::with_capacity(xs.len());
    for x in xs {
        let len = *x
            .shape()
            .get(ax)
            .ok_or_else(|| Error::internal("reference concatenate backward: axis"))?;
        if start + len > dy.shape().get(ax).copied().unwrap_or(0) {
            return Err(Error::internal("reference concatenate backward: sizes"));
        }
        out.push(
            dy.slice_axis(Axis(ax), Slice::from(start..start + len))
                .to_owned(),
        );
        start += len;
    }
    Ok(out)
}
