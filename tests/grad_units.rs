//! Unit checks of the reference backward pass where finite differences cannot look:
//! tie-breaking of max pooling and Maximum/Minimum merges (the first maximum in window
//! order gets the gradient, as TensorFlow's), derivative values at kinks, zero gradients
//! of BatchNorm's moving statistics, and `activation_derivative` on a grid.

use lcjit::graph::*;
use lcjit::reference::activation_grad::activation_derivative;
use lcjit::reference::activation_scalar;
use lcjit::reference::backward::gradients;
use lcjit::Model;
use ndarray::{array, ArrayD, IxDyn};

fn one_layer(shape: &[usize], op: Op) -> Graph {
    let mut g = Graph::new("t");
    let x = g.add_input("x", shape.to_vec()).unwrap();
    let y = g.add("layer", op, &[x]).unwrap();
    g.outputs.push(y);
    g
}

#[test]
fn max_pooling_routes_to_the_first_maximum() {
    // 1D, pool 3 stride 1 valid, one channel: windows [0..3), [1..4), [2..5).
    let g = one_layer(
        &[5, 1],
        Op::Pool(Pool {
            kind: PoolKind::Max,
            rank: 1,
            pool: vec![3],
            strides: vec![1],
            padding: Padding::Valid,
            data_format: DataFormat::ChannelsLast,
        }),
    );
    let x = array![[[2.0f32], [7.0], [7.0], [1.0], [7.0]]].into_dyn();
    let dy = array![[[1.0f32], [10.0], [100.0]]].into_dyn();
    let (dx, _) = gradients(&g, &[], &[x], &dy).unwrap();
    // Window 0 → x[1]; window 1 → x[1]; window 2 → x[2] (first of the tied 7s).
    assert_eq!(
        dx[0],
        array![[[0.0f32], [11.0], [100.0], [0.0], [0.0]]].into_dyn()
    );
    // Global max is tf.reduce_max, whose gradient shares dy among the tied maxima:
    // (1/3)·3 each.
    let g = one_layer(
        &[5, 1],
        Op::GlobalPool {
            kind: PoolKind::Max,
            rank: 1,
            data_format: DataFormat::ChannelsLast,
            keepdims: false,
        },
    );
    let x = array![[[2.0f32], [7.0], [7.0], [1.0], [7.0]]].into_dyn();
    let (dx, _) = gradients(&g, &[], &[x], &array![[3.0f32]].into_dyn()).unwrap();
    assert_eq!(
        dx[0],
        array![[[0.0f32], [1.0], [1.0], [0.0], [1.0]]].into_dyn()
    );
}

#[test]
fn maximum_and_minimum_route_to_the_first_winner() {
    for (kind, want) in [
        (
            MergeKind::Maximum,
            [[1.0f32, 0.0, 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        ),
        (
            MergeKind::Minimum,
            [[0.0f32, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ),
    ] {
        let mut g = Graph::new("t");
        let ins: Vec<_> = (0..3)
            .map(|k| g.add_input(&format!("x{k}"), vec![3]).unwrap())
            .collect();
        let y = g.add("m", Op::Merge(kind), &ins).unwrap();
        g.outputs.push(y);
        // Element 2 is a three-way tie: input 0 wins.
        let xs = [
            array![[2.0f32, 0.0, 5.0]].into_dyn(),
            array![[1.0f32, 3.0, 5.0]].into_dyn(),
            array![[1.0f32, 3.0, 5.0]].into_dyn(),
        ];
        let (dx, _) = gradients(&g, &[], &xs, &array![[1.0f32, 1.0, 1.0]].into_dyn()).unwrap();
        for (d, w) in dx.iter().zip(want) {
            assert_eq!(d.iter().copied().collect::<Vec<_>>(), w, "{kind:?}");
        }
    }
}

#[test]
fn derivatives_at_kinks_follow_tensorflow() {
    let relu = |alpha, max_value, threshold| Activation::Relu {
        alpha,
        max_value,
        threshold,
    };
    let d = |a: &Activation, x: f32| activation_derivative(a, x, activation_scalar(a, x));
    assert_eq!(d(&relu(0.0, None, 0.0), 0.0), 0.0);
    assert_eq!(d(&relu(0.0, None, 0.0), 1e-6), 1.0);
    assert_eq!(d(&relu(0.2, None, 0.0), 0.0), 0.2);
    assert_eq!(d(&relu(0.2, None, 0.0), -3.0), 0.2);
    assert_eq!(d(&relu(0.5, None, 1.0), 0.5), 0.5);
    assert_eq!(d(&relu(0.5, None, 1.0), 1.0), 0.0);
    assert_eq!(d(&relu(0.5, None, 1.0), 2.0), 1.0);
    assert_eq!(d(&relu(0.1, Some(2.0), 0.0), 3.0), 0.0);
    assert_eq!(d(&relu(0.1, Some(2.0), 0.0), 1.0), 1.0);
    assert_eq!(d(&relu(0.1, Some(2.0), 0.0), -1.0), 0.1);
    assert_eq!(d(&relu(0.0, None, -1.0), -0.5), 1.0);
    assert_eq!(d(&relu(0.0, Some(4.0), -1.0), -0.5), 0.0);
    assert_eq!(d(&Activation::Relu6, 6.5), 0.0);
    assert_eq!(d(&Activation::Relu6, 5.5), 1.0);
    assert_eq!(d(&Activation::HardSigmoid, 2.0), 0.2);
    assert_eq!(d(&Activation::HardSigmoid, 3.0), 0.0);
    assert_eq!(d(&Activation::HardSigmoid, -3.0), 0.0);
    assert_eq!(d(&Activation::LeakyRelu { alpha: 0.3 }, 0.0), 0.3);
    assert_eq!(d(&Activation::Elu { alpha: 0.5 }, 0.0), 0.5);
    assert_eq!(d(&Activation::Softmax { axis: -1 }, 0.3), 0.0);
    assert!(d(&Activation::Tanh, f32::NAN).is_nan());
}

#[test]
fn activation_derivative_matches_differences_of_activation_scalar() {
    use Activation::*;
    let acts = [
        Sigmoid,
        Tanh,
        Elu { alpha: 0.7 },
        Selu,
        Softplus,
        Softsign,
        Exponential,
        Swish,
        Gelu { approximate: false },
        Gelu { approximate: true },
        Mish,
        LeakyRelu { alpha: 0.1 },
        HardSigmoid,
        Relu6,
    ];
    for a in &acts {
        for i in -60..=60 {
            let x = i as f64 * 0.1 + 0.013; // never on a kink
            let h = 1e-3;
            let f = |v: f64| f64::from(activation_scalar(a, v as f32));
            let fd = (f(x + h) - f(x - h)) / (2.0 * h);
            let d = f64::from(activation_derivative(a, x as f32, f(x) as f32));
            let tol = 2e-3 * d.abs().max(1.0) + 1e-3 * f(x).abs();
            assert!((d - fd).abs() <= tol, "{a:?} at {x}: {d} vs {fd}");
        }
    }
}

#[test]
fn batch_norm_moving_statistics_get_zero_gradients() {
    let op = Op::BatchNorm(BatchNorm {
        axis: 1,
        epsilon: 1e-3,
        momentum: 0.99,
        center: true,
        scale: true,
        initializers: [
            Initializer::Constant(2.0),
            Initializer::Constant(0.5),
            Initializer::Constant(0.25),
            Initializer::Constant(4.0),
        ],
        options: WeightOptions::default(),
    });
    let model = Model::from_graph(one_layer(&[2, 3], op), 0).unwrap();
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 2, 3]), |ix| (ix[1] * 3 + ix[2]) as f32);
    let dy = ArrayD::from_elem(IxDyn(&[2, 2, 3]), 1.0f32);
    let (dx, dp) = gradients(model.graph(), model.params(), &[x], &dy).unwrap();
    let sd = (4.0f32 + 1e-3).sqrt();
    assert!(dx[0].iter().all(|&v| (v - 2.0 / sd).abs() < 1e-6));
    assert_eq!(dp[1], ArrayD::from_elem(IxDyn(&[3]), 4.0f32)); // dbeta = Σ dy
    assert!(dp[2].iter().all(|&v| v == 0.0) && dp[3].iter().all(|&v| v == 0.0));
    assert!(!model.graph().params[2].trainable && !model.graph().params[3].trainable);
}
