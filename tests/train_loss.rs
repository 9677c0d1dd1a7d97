//! Losses: values against hand-computed numbers, gradients against central finite
//! differences (in f64 around f32 inputs).

use lcjit::train::Loss;
use ndarray::{ArrayD, IxDyn};

fn arr(shape: &[usize], v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

fn all_losses() -> Vec<Loss> {
    vec![
        Loss::MeanSquaredError,
        Loss::MeanAbsoluteError,
        Loss::MeanAbsolutePercentageError,
        Loss::MeanSquaredLogarithmicError,
        Loss::Huber { delta: 0.3 },
        Loss::LogCosh,
        Loss::BinaryCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        },
        Loss::BinaryCrossentropy {
            from_logits: true,
            label_smoothing: 0.1,
        },
        Loss::CategoricalCrossentropy {
            from_logits: false,
            label_smoothing: 0.0,
        },
        Loss::CategoricalCrossentropy {
            from_logits: true,
            label_smoothing: 0.2,
        },
        Loss::KlDivergence,
        Loss::Poisson,
        Loss::CosineSimilarity,
        Loss::Hinge,
        Loss::SquaredHinge,
        Loss::CategoricalHinge,
    ]
}

/// Central differences of the loss value, compared with the analytic gradient.
fn check_fd(loss: &Loss, t: &ArrayD<f32>, p: &ArrayD<f32>) {
    let (_, g) = loss.value_and_grad(t, p).unwrap();
    let h = 1e-3f32;
    for i in 0..p.len() {
        let mut pp = p.clone();
        let mut pm = p.clone();
        pp.as_slice_mut().unwrap()[i] += h;
        pm.as_slice_mut().unwrap()[i] -= h;
        let fd = (loss.value(t, &pp).unwrap() - loss.value(t, &pm).unwrap())
            / ((pp.as_slice().unwrap()[i] - pm.as_slice().unwrap()[i]) as f64);
        let an = g.as_slice().unwrap()[i] as f64;
        assert!(
            (fd - an).abs() <= 2e-3 * (1.0 + fd.abs()),
            "{loss:?} element {i}: finite difference {fd}, analytic {an}"
        );
    }
}

#[test]
fn gradients_match_finite_differences() {
    // Probabilities away from the clip bounds and kinks; 2 samples × 2 positions × 3.
    let t = arr(
        &[2, 2, 3],
        &[0., 1., 0., 1., 0., 0., 0., 0., 1., 0., 1., 0.],
    );
    let p = arr(
        &[2, 2, 3],
        &[
            0.2, 0.5, 0.3, 0.6, 0.15, 0.25, 0.1, 0.35, 0.55, 0.45, 0.4, 0.15,
        ],
    );
    for loss in all_losses() {
        check_fd(&loss, &t, &p);
    }
    // Regression targets for the error losses.
    let t2 = arr(&[3, 2], &[0.5, -1.2, 2.0, 0.3, 1.5, -0.7]);
    let p2 = arr(&[3, 2], &[0.9, -0.2, 1.1, 0.35, 1.0, 0.4]);
    for loss in [
        Loss::MeanSquaredError,
        Loss::MeanAbsoluteError,
        Loss::Huber { delta: 0.5 },
        Loss::LogCosh,
        Loss::MeanAbsolutePercentageError,
        Loss::CosineSimilarity,
    ] {
        check_fd(&loss, &t2, &p2);
    }
    // Sparse categorical cross-entropy, probabilities and logits.
    let lab = arr(&[2, 2], &[1., 0., 2., 1.]);
    for from_logits in [false, true] {
        check_fd(
            &Loss::SparseCategoricalCrossentropy { from_logits },
            &lab,
            &p,
        );
    }
}

#[test]
fn hand_computed_values() {
    let t = arr(&[2, 2], &[0., 1., 1., 0.]);
    let p = arr(&[2, 2], &[0.25, 0.5, 0.75, 1.0]);
    // mse: ((0.0625 + 0.25)/2 + (0.0625 + 1)/2)/2
    let v = Loss::MeanSquaredError.value(&t, &p).unwrap();
    assert!((v - (0.3125 / 2.0 + 1.0625 / 2.0) / 2.0).abs() < 1e-7);
    // bce: p = 1.0 is clipped to 1 − 1e-7 and log(1 − p + ε) uses ε again (tf-keras).
    let e = 1e-7f32 as f64;
    let hi = (1.0f32 - 1e-7) as f64;
    let row0 = -((1.0f64 - 0.25 + e).ln() + (0.5 + e).ln()) / 2.0;
    let row1 = -((0.75 + e).ln() + (1.0 - hi + e).ln()) / 2.0;
    let v = Loss::BinaryCrossentropy {
        from_logits: false,
        label_smoothing: 0.0,
    }
    .value(&t, &p)
    .unwrap();
    assert!((v - (row0 + row1) / 2.0).abs() < 1e-6, "{v}");
    // The clipped element gets no gradient.
    let (_, g) = Loss::BinaryCrossentropy {
        from_logits: false,
        label_smoothing: 0.0,
    }
    .value_and_grad(&t, &p)
    .unwrap();
    assert_eq!(g[[1, 1]], 0.0);
    // cce on probabilities renormalizes rows: p = [0.2, 0.6] → q = [0.25, 0.75].
    let t = arr(&[1, 2], &[0., 1.]);
    let p = arr(&[1, 2], &[0.2, 0.6]);
    let v = Loss::CategoricalCrossentropy {
        from_logits: false,
        label_smoothing: 0.0,
    }
    .value(&t, &p)
    .unwrap();
    assert!((v + 0.75f64.ln()).abs() < 1e-7);
    // Logit cce: -log softmax([1, 2])[1] = log(1 + e^-1).
    let p = arr(&[1, 2], &[1.0, 2.0]);
    let v = Loss::CategoricalCrossentropy {
        from_logits: true,
        label_smoothing: 0.0,
    }
    .value(&t, &p)
    .unwrap();
    assert!((v - (1.0 + (-1.0f64).exp()).ln()).abs() < 1e-7);
    // Hinge converts {0,1} labels to {−1,1}: t = [−1, 1], p = [0.5, 0.5] → mean(1.5, 0.5).
    let p = arr(&[1, 2], &[0.5, 0.5]);
    assert!((Loss::Hinge.value(&t, &p).unwrap() - 1.0).abs() < 1e-7);
}

#[test]
fn shape_mismatch_is_an_error() {
    let t = arr(&[2, 2], &[0.; 4]);
    let p = arr(&[2, 3], &[0.; 6]);
    assert!(Loss::MeanSquaredError.value_and_grad(&t, &p).is_err());
    let lab = arr(&[2], &[0., 5.]);
    assert!(Loss::SparseCategoricalCrossentropy { from_logits: true }
        .value_and_grad(&lab, &p)
        .is_err());
}
