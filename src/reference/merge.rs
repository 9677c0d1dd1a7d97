//! Merge layers: elementwise Add, Subtract, Multiply, Average, Maximum, Minimum, and
//! Concatenate.
//!
//! Keras: `Add: y = x_1 + … + x_n`, `Subtract: y = x_1 − x_2`, `Multiply: y = x_1 ·…· x_n`,
//! `Average: y = (x_1 + … + x_n) / n`, `Maximum`/`Minimum` elementwise over the inputs
//! (all of one shape), in input order; `Concatenate` joins along per-sample axis `axis`,
//! i.e. batched axis `axis + 1`.

use crate::error::{Error, Result};
use crate::graph::MergeKind;
use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

/// Elementwise merge of the (equally shaped) inputs.
pub(super) fn merge(kind: MergeKind, xs: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let (first, rest) = xs
        .split_first()
        .ok_or_else(|| Error::internal("reference merge: no inputs"))?;
    if rest.is_empty() || rest.iter().any(|x| x.shape() != first.shape()) {
        return Err(Error::internal("reference merge: input shapes"));
    }
    if kind == MergeKind::Subtract && rest.len() != 1 {
        return Err(Error::internal(
            "reference subtract: needs exactly two inputs",
        ));
    }
    let mut y = (*first).clone();
    for x in rest {
        Zip::from(&mut y).and(*x).for_each(|a, &b| {
            *a = match kind {
                MergeKind::Add | MergeKind::Average => *a + b,
                MergeKind::Subtract => *a - b,
                MergeKind::Multiply => *a * b,
                // tf.maximum / tf.minimum: NaN propagates.
                MergeKind::Maximum => super::pool::nan_max(*a, b),
                MergeKind::Minimum => super::pool::nan_min(*a, b),
            }
        });
    }
    if kind == MergeKind::Average {
        let n = xs.len() as f32;
        y.mapv_inplace(|v| v / n);
    }
    Ok(y)
}

/// Concatenation along per-sample axis `axis`.
pub(super) fn concatenate(axis: usize, xs: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let views: Vec<ArrayViewD<'_, f32>> = xs.iter().map(|x| x.view()).collect();
    ndarray::concatenate(Axis(axis + 1), &views)
        .map_err(|e| Error::internal(format!("reference concatenate: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::forward as run;
    use crate::graph::*;
    use ndarray::{array, ArrayD};

    fn two_inputs(shape_a: &[usize], shape_b: &[usize], op: Op) -> Graph {
        let mut g = Graph::new("t");
        let a = g.add_input("a", shape_a.to_vec()).unwrap();
        let b = g.add_input("b", shape_b.to_vec()).unwrap();
        let y = g.add("m", op, &[a, b]).unwrap();
        g.outputs.push(y);
        g
    }

    #[test]
    fn elementwise_merges() {
        let a = array![[1.0f32, -2.0, 3.0]].into_dyn();
        let b = array![[4.0f32, 5.0, -6.0]].into_dyn();
        let cases: [(MergeKind, [f32; 3]); 6] = [
            (MergeKind::Add, [5.0, 3.0, -3.0]),
            (MergeKind::Subtract, [-3.0, -7.0, 9.0]),
            (MergeKind::Multiply, [4.0, -10.0, -18.0]),
            (MergeKind::Average, [2.5, 1.5, -1.5]),
            (MergeKind::Maximum, [4.0, 5.0, 3.0]),
            (MergeKind::Minimum, [1.0, -2.0, -6.0]),
        ];
        for (kind, want) in cases {
            let g = two_inputs(&[3], &[3], Op::Merge(kind));
            let y = run(&g, &[], &[a.clone(), b.clone()]).unwrap().remove(0);
            assert_eq!(y.iter().copied().collect::<Vec<_>>(), want, "{kind:?}");
        }
    }

    #[test]
    fn concatenate_along_a_per_sample_axis() {
        // (B=2, 2, 1) ++ (B=2, 2, 2) along per-sample axis 1 → (2, 2, 3).
        let a = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 2, 1]), |ix| (10 * ix[0] + ix[1]) as f32);
        let b = ArrayD::from_shape_fn(ndarray::IxDyn(&[2, 2, 2]), |ix| {
            (100 + 10 * ix[0] + 2 * ix[1] + ix[2]) as f32
        });
        let g = two_inputs(&[2, 1], &[2, 2], Op::Concatenate { axis: 1 });
        let y = run(&g, &[], &[a, b]).unwrap().remove(0);
        let want = array![
            [[0.0f32, 100.0, 101.0], [1.0, 102.0, 103.0]],
            [[10.0, 110.0, 111.0], [11.0, 112.0, 113.0]]
        ]
        .into_dyn();
        assert_eq!(y, want);
    }
}
