//! `fit` on a tiny linear model `y = x·w + b` whose gradients are computed by hand.

use lcjit::graph::ops::{Initializer, Regularizer};
use lcjit::graph::ParamSpec;
use lcjit::train::*;
use ndarray::{ArrayD, Axis, IxDyn};

fn spec(name: &str, shape: &[usize], reg: Option<Regularizer>) -> ParamSpec {
    ParamSpec {
        node: 0,
        name: name.into(),
        shape: shape.to_vec(),
        keras_shape: shape.to_vec(),
        trainable: true,
        initializer: Initializer::Zeros,
        regularizer: reg,
        constraint: None,
    }
}

/// 10 samples, 2 features, y = 2·x0 − 3·x1 + 0.5.
fn data() -> (ArrayD<f32>, ArrayD<f32>) {
    let xs: Vec<f32> = (0..20).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
    let x = ArrayD::from_shape_vec(IxDyn(&[10, 2]), xs).unwrap();
    let y = x
        .map_axis(Axis(1), |r| 2.0 * r[0] - 3.0 * r[1] + 0.5)
        .insert_axis(Axis(1))
        .into_dyn();
    (x, y)
}

fn predict(p: &[ArrayD<f32>], x: &ArrayD<f32>) -> ArrayD<f32> {
    let w = p[0].clone().into_dimensionality::<ndarray::Ix2>().unwrap();
    let x2 = x.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
    (x2.dot(&w) + p[1][[0]]).into_dyn()
}

fn run(
    batch: usize,
    split: f32,
    epochs: usize,
    lr: f32,
    reg: Option<Regularizer>,
) -> (Vec<ArrayD<f32>>, History) {
    run_with(batch, split, epochs, lr, reg, &mut [])
}

fn run_with(
    batch: usize,
    split: f32,
    epochs: usize,
    lr: f32,
    reg: Option<Regularizer>,
    callbacks: &mut [&mut dyn Callback],
) -> (Vec<ArrayD<f32>>, History) {
    run_opts(batch, split, epochs, lr, reg, callbacks, false)
}

fn run_opts(
    batch: usize,
    split: f32,
    epochs: usize,
    lr: f32,
    reg: Option<Regularizer>,
    callbacks: &mut [&mut dyn Callback],
    stop_on_non_finite: bool,
) -> (Vec<ArrayD<f32>>, History) {
    let (x, y) = data();
    let specs = vec![spec("kernel", &[2, 1], reg), spec("bias", &[1], None)];
    let table = ParamTable {
        specs: &specs,
        graph: None,
    };
    let mut params = vec![ArrayD::zeros(IxDyn(&[2, 1])), ArrayD::zeros(IxDyn(&[1]))];
    let mut o = Optimizer::new(parse_optimizer_arg(&format!(r#"{{"class_name":"SGD","config":{{"learning_rate":{lr},"is_legacy_optimizer":false}}}}"#)).unwrap());
    let loss = Loss::MeanSquaredError;
    let mut step = |p: &[ArrayD<f32>], xb: &ArrayD<f32>, yb: &ArrayD<f32>| {
        let yp = predict(p, xb);
        let (l, dy) = loss.value_and_grad(yb, &yp)?;
        let dy2 = dy.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
        let x2 = xb.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
        let gw = x2.t().dot(&dy2).into_dyn();
        let gb = ArrayD::from_elem(IxDyn(&[1]), dy.sum());
        Ok(StepOutput {
            loss: l,
            grads: vec![gw, gb],
            y_pred: Some(yp),
            updates: Vec::new(),
        })
    };
    let mut pred = |p: &[ArrayD<f32>], x: &ArrayD<f32>| {
        Ok(BatchOutput {
            y_pred: predict(p, x),
            logits: None,
            activity_loss: 0.0,
        })
    };
    let opts = FitOptions {
        epochs,
        batch_size: batch,
        validation_split: split,
        metrics: vec![Metric::parse_arg("mae").expect("metric")],
        verbose: true,
        stop_on_non_finite,
        ..Default::default()
    };
    let h = fit(
        &mut params,
        &table,
        &mut o,
        &loss,
        &x,
        &y,
        None,
        &opts,
        StepFns {
            step: &mut step,
            in_place: None,
            predict: Some(&mut pred),
            save: None,
            recycle: None,
            randomness: None,
        },
        callbacks,
    )
    .unwrap();
    (params, h)
}

#[test]
fn converges_to_the_optimum() {
    for batch in [2, 5, 3, 4, 10] {
        let (p, h) = run(batch, 0.0, 300, 0.1, None);
        assert!(
            (p[0][[0, 0]] - 2.0).abs() < 1e-3 && (p[0][[1, 0]] + 3.0).abs() < 1e-3,
            "batch {batch}: {p:?}"
        );
        assert!((p[1][0] - 0.5).abs() < 1e-3);
        assert!(h.loss()[0] > *h.loss().last().unwrap() && h.stopped.is_none());
    }
}

#[test]
fn epoch_loss_is_batch_size_weighted() {
    // One epoch with SGD lr 0: every batch sees zero weights, loss = mean over samples.
    let (_, y) = data();
    let (_, h) = run(4, 0.0, 1, 0.0, None);
    let full = y.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / 10.0;
    assert!(
        (h.loss()[0] - full).abs() < 1e-6,
        "{} vs {full}",
        h.loss()[0]
    );
    assert!(
        (h.get("mae").unwrap()[0] - y.iter().map(|&v| v.abs() as f64).sum::<f64>() / 10.0).abs()
            < 1e-6
    );
}

#[test]
fn regularization_enters_loss_and_gradient() {
    let reg = Regularizer { l1: 0.0, l2: 0.01 };
    let (p, h) = run(5, 0.0, 400, 0.1, Some(reg));
    let (p0, _) = run(5, 0.0, 400, 0.1, None);
    // L2 shrinks the kernel toward 0.
    assert!(p[0][[0, 0]].abs() < p0[0][[0, 0]].abs());
    let w: f64 = p[0].iter().map(|&v| (v as f64).powi(2)).sum();
    assert!(*h.loss().last().unwrap() > 0.01 * w * 0.99);
}

#[test]
fn validation_split_takes_the_tail() {
    let (_, h) = run(4, 0.2, 3, 0.1, None);
    assert_eq!(h.get("val_loss").unwrap().len(), 3);
    assert_eq!(
        h.keys().collect::<Vec<_>>(),
        ["loss", "mae", "val_loss", "val_mae"]
    );
    // Training on 8 samples: lr 0 gives the mean over the first 8 only.
    let (_, y) = data();
    let (_, h0) = run(3, 0.2, 1, 0.0, None);
    let head = y.iter().take(8).map(|&v| (v as f64).powi(2)).sum::<f64>() / 8.0;
    let tail = y.iter().skip(8).map(|&v| (v as f64).powi(2)).sum::<f64>() / 2.0;
    assert!(
        (h0.loss()[0] - head).abs() < 1e-6 && (h0.get("val_loss").unwrap()[0] - tail).abs() < 1e-6
    );
}

/// A diverging run: like Keras, nothing stops it by default (the history records the
/// non-finite losses, no weights are copied or restored); TerminateOnNaN stops after the
/// first batch whose running loss is not finite, that batch's update applied, and the
/// epoch is still recorded (validation and `on_epoch_end` run, as in Keras).
#[test]
fn non_finite_loss_runs_on_unless_terminate_on_nan() {
    let (_, h) = run(2, 0.0, 200, 1e3, None);
    assert!(h.stopped.is_none(), "{:?}", h.stopped);
    assert_eq!(h.loss().len(), 200);
    assert!(!h.loss().last().unwrap().is_finite());
    let mut tn = TerminateOnNaN::new();
    let (_, h) = run_with(2, 0.0, 200, 1e3, None, &mut [&mut tn]);
    let stopped = h.stopped.clone().expect("stopped");
    assert!(stopped.starts_with("TerminateOnNaN"), "{stopped}");
    let n = h.loss().len();
    assert!(n < 200 && !h.loss()[n - 1].is_finite());
    assert!(
        h.loss()[..n - 1].iter().all(|l| l.is_finite()),
        "{:?}",
        h.loss()
    );
}

/// `stop_on_non_finite` (what `lcjit fit` sets): the first step whose loss or gradient
/// is not finite is not applied, so the weights stay those of the last finite step; the
/// same run without it ends with non-finite weights.
#[test]
fn stop_on_non_finite_keeps_the_last_finite_weights() {
    let finite = |p: &[ArrayD<f32>]| p.iter().all(|a| a.iter().all(|v| v.is_finite()));
    let (p, h) = run_opts(2, 0.0, 200, 1e3, None, &mut [], true);
    let why = h.stopped.clone().expect("stopped");
    assert!(why.contains("non-finite"), "{why}");
    assert!(h.loss().len() < 200, "{}", h.loss().len());
    assert!(finite(&p), "{p:?}");
    let (p, _) = run_opts(2, 0.0, 200, 1e3, None, &mut [], false);
    assert!(!finite(&p), "{p:?}");
}

/// A step's `updates` (new values of non-trainable parameters, like BatchNorm moving
/// statistics) are assigned after every optimizer step; an update of a trainable parameter, or one of the wrong shape, is an internal
/// error.
#[test]
fn step_updates_assign_non_trainable_parameters() {
    let (x, y) = data();
    let mut counter = spec("count", &[1], None);
    counter.trainable = false;
    let specs = vec![
        spec("kernel", &[2, 1], None),
        spec("bias", &[1], None),
        counter,
    ];
    let table = ParamTable {
        specs: &specs,
        graph: None,
    };
    let sgd = r#"{"class_name":"SGD","config":{"learning_rate":0.1,"is_legacy_optimizer":false}}"#;
    let train = |update: usize, shape: &[usize]| {
        let mut params = vec![
            ArrayD::zeros(IxDyn(&[2, 1])),
            ArrayD::zeros(IxDyn(&[1])),
            ArrayD::zeros(IxDyn(&[1])),
        ];
        let mut o = Optimizer::new(parse_optimizer_arg(sgd).unwrap());
        let mut step = |p: &[ArrayD<f32>], xb: &ArrayD<f32>, yb: &ArrayD<f32>| {
            let yp = predict(p, xb);
            let (l, dy) = Loss::MeanSquaredError.value_and_grad(yb, &yp)?;
            let dy2 = dy.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
            let x2 = xb.clone().into_dimensionality::<ndarray::Ix2>().unwrap();
            let grads = vec![
                x2.t().dot(&dy2).into_dyn(),
                ArrayD::from_elem(IxDyn(&[1]), dy.sum()),
                ArrayD::zeros(IxDyn(&[1])),
            ];
            let next = ArrayD::from_elem(IxDyn(shape), p[2][[0]] + 1.0);
            Ok(StepOutput {
                loss: l,
                grads,
                y_pred: None,
                updates: vec![(update, next)],
            })
        };
        let opts = FitOptions {
            epochs: 2,
            batch_size: 4,
            ..Default::default()
        };
        let cb = StepFns {
            step: &mut step,
            in_place: None,
            predict: None,
            save: None,
            recycle: None,
            randomness: None,
        };
        fit(
            &mut params,
            &table,
            &mut o,
            &Loss::MeanSquaredError,
            &x,
            &y,
            None,
            &opts,
            cb,
            &mut [],
        )
        .map(|_| params)
    };
    // 10 samples in batches of 4: 3 steps per epoch, 2 epochs.
    let p = train(2, &[1]).unwrap();
    assert_eq!(p[2][[0]], 6.0);
    assert!(
        p[0].iter().any(|&v| v != 0.0),
        "the trainable weights still train"
    );
    assert!(train(0, &[2, 1]).is_err_and(|e| e.is_internal()));
    assert!(train(2, &[2]).is_err_and(|e| e.is_internal()));
    assert!(train(3, &[1]).is_err_and(|e| e.is_internal()));
}
