//! Optimizers against hand-written tf-keras formulas, schedules, constraints and the
//! training configs of every golden `compiled.h5`.

use lcjit::graph::ops::Constraint;
use lcjit::train::*;
use ndarray::{ArrayD, IxDyn};

fn a(v: &[f32]) -> ArrayD<f32> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

fn opt(json: &str) -> Optimizer {
    Optimizer::new(parse_optimizer_arg(json).unwrap())
}

#[test]
fn adam_matches_formula() {
    let mut o =
        opt(r#"{"class_name":"Adam","config":{"learning_rate":0.01,"is_legacy_optimizer":false}}"#);
    let mut p = vec![a(&[1.0, -2.0])];
    let (mut m, mut v, mut w) = ([0f32; 2], [0f32; 2], [1.0f32, -2.0]);
    let gs = [[0.5f32, -0.1], [0.2, 0.3], [-0.4, 0.05]];
    for (k, g) in gs.iter().enumerate() {
        o.step(&mut p, &[a(g)], &[true]).unwrap();
        let t = (k + 1) as f32;
        let alpha = 0.01 * (1.0 - 0.999f32.powf(t)).sqrt() / (1.0 - 0.9f32.powf(t));
        for i in 0..2 {
            m[i] += (g[i] - m[i]) * (1.0 - 0.9);
            v[i] += (g[i] * g[i] - v[i]) * (1.0 - 0.999);
            w[i] -= m[i] * alpha / (v[i].sqrt() + 1e-7);
        }
        for i in 0..2 {
            assert!(
                (p[0][i] - w[i]).abs() < 1e-6,
                "step {k}: {} vs {}",
                p[0][i],
                w[i]
            );
        }
    }
    assert_eq!(o.iterations, 3);
}

#[test]
fn rmsprop_epsilon_placement_by_flavor() {
    // tf-keras: lr·g/sqrt(v + ε); Keras 2 multi-backend: lr·g/(sqrt(v) + ε).
    let g = 1e-4f32;
    let v = 0.1 * g * g;
    let mut o = opt(
        r#"{"class_name":"RMSprop","config":{"learning_rate":0.01,"epsilon":1e-7,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    assert!((p[0][0] + 0.01 * g / (v + 1e-7).sqrt()).abs() < 1e-9);
    let mut o = opt(
        r#"{"class_name":"RMSprop","config":{"lr":0.01,"rho":0.9,"epsilon":1e-7,"decay":0.0}}"#,
    );
    assert_eq!(o.config.flavor, Flavor::MultiBackend);
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    assert!((p[0][0] + 0.01 * g / (v.sqrt() + 1e-7)).abs() < 1e-9);
}

#[test]
fn sgd_momentum_nesterov_clip_and_trainable() {
    let mut o = opt(
        r#"{"class_name":"SGD","config":{"learning_rate":0.1,"momentum":0.9,"nesterov":true,"clipvalue":1.0,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[0.0]), a(&[5.0])];
    o.step(&mut p, &[a(&[2.0]), a(&[1.0])], &[true, false])
        .unwrap();
    // g clipped to 1: m = −0.1; w += −0.1 + 0.9·(−0.1)
    assert!((p[0][0] + 0.19).abs() < 1e-7);
    assert_eq!(p[1][0], 5.0);
    o.step(&mut p, &[a(&[1.0]), a(&[1.0])], &[true, false])
        .unwrap();
    // m = −0.1 + 0.9·(−0.1) = −0.19; w += −0.1 + 0.9·(−0.19)
    assert!((p[0][0] - (-0.19 - 0.1 - 0.171)).abs() < 1e-6);
}

#[test]
fn adamw_weight_decay_and_clipnorm() {
    let mut o = opt(
        r#"{"class_name":"AdamW","config":{"learning_rate":0.1,"weight_decay":0.5,"clipnorm":1.0,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[2.0, 0.0])];
    o.step(&mut p, &[a(&[3.0, 4.0])], &[true]).unwrap();
    // w ← w − w·wd·lr, then Adam with g clipped to norm 1 ([0.6, 0.8]); first Adam step
    // moves by lr·g/(|g| + ε·…) ≈ lr·sign(g).
    assert!((p[0][0] - (2.0 - 0.1 - 0.1)).abs() < 1e-5, "{}", p[0][0]);
    assert!((p[0][1] + 0.1).abs() < 1e-5);
}

#[test]
fn adagrad_adadelta_adamax_nadam_first_steps() {
    let g = 0.5f32;
    let mut o = opt(
        r#"{"class_name":"Adagrad","config":{"learning_rate":0.1,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    assert!((p[0][0] + 0.1 * g / (0.1 + g * g + 1e-7f32).sqrt()).abs() < 1e-7);
    let mut o = opt(
        r#"{"class_name":"Adadelta","config":{"learning_rate":1.0,"rho":0.95,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    let ag = 0.05 * g * g;
    assert!((p[0][0] + (1e-7f32).sqrt() * g / (ag + 1e-7).sqrt()).abs() < 1e-7);
    let mut o = opt(
        r#"{"class_name":"Adamax","config":{"learning_rate":0.1,"is_legacy_optimizer":false}}"#,
    );
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    assert!((p[0][0] + 0.1 * (0.1 * g) / (0.1 * (g + 1e-7))).abs() < 1e-6);
    let mut o =
        opt(r#"{"class_name":"Nadam","config":{"learning_rate":0.1,"is_legacy_optimizer":false}}"#);
    let mut p = vec![a(&[0.0])];
    o.step(&mut p, &[a(&[g])], &[true]).unwrap();
    let (u1, u2) = (
        0.9 * (1.0 - 0.5 * 0.96f32),
        0.9 * (1.0 - 0.5 * 0.96f32.powi(2)),
    );
    let m = 0.1 * g;
    let mh = u2 * m / (1.0 - u1 * u2) + (1.0 - u1) * g / (1.0 - u1);
    let vh = 0.001 * g * g / (1.0 - 0.999);
    assert!((p[0][0] + 0.1 * mh / (vh.sqrt() + 1e-7)).abs() < 1e-6);
}

#[test]
fn schedules() {
    let lr = |s: &str| LearningRate::from_json(&serde_json::from_str(s).unwrap(), "t").unwrap();
    let e = lr(
        r#"{"module":"keras.optimizers.schedules","class_name":"ExponentialDecay","config":{"initial_learning_rate":0.1,"decay_steps":10,"decay_rate":0.5,"staircase":false}}"#,
    );
    assert!((e.at(10) - 0.05).abs() < 1e-7 && (e.at(5) - 0.1 * 0.5f32.sqrt()).abs() < 1e-7);
    let pw = lr(
        r#"{"class_name":"PiecewiseConstantDecay","config":{"boundaries":[2,4],"values":[1.0,0.5,0.1]}}"#,
    );
    assert_eq!(
        [pw.at(0), pw.at(2), pw.at(3), pw.at(4), pw.at(5)],
        [1.0, 1.0, 0.5, 0.5, 0.1]
    );
    let it = lr(
        r#"{"class_name":"InverseTimeDecay","config":{"initial_learning_rate":1.0,"decay_steps":2,"decay_rate":1.0,"staircase":true}}"#,
    );
    assert_eq!([it.at(1), it.at(2), it.at(5)], [1.0, 0.5, 1.0 / 3.0]);
    let c = lr(
        r#"{"class_name":"CosineDecay","config":{"initial_learning_rate":1.0,"decay_steps":10,"alpha":0.1}}"#,
    );
    assert!((c.at(5) - 0.55).abs() < 1e-6 && (c.at(20) - 0.1).abs() < 1e-6);
    let w = lr(
        r#"{"class_name":"CosineDecay","config":{"initial_learning_rate":0.0,"decay_steps":10,"alpha":0.0,"warmup_target":1.0,"warmup_steps":4}}"#,
    );
    assert!((w.at(2) - 0.5).abs() < 1e-7 && (w.at(9) - 0.5).abs() < 1e-6);
    assert!(
        LearningRate::from_json(&serde_json::json!({"class_name":"Nope","config":{}}), "t")
            .is_err()
    );
}

#[test]
fn constraints() {
    let mut w = ArrayD::from_elem(IxDyn(&[3, 2, 2]), 2.0f32);
    apply_constraint(
        &Constraint::MaxNorm {
            max_value: 1.0,
            axis: vec![0],
        },
        &mut w,
    )
    .unwrap();
    let expect = 2.0 / (12f32.sqrt() + 1e-7);
    // Norm over axis 0 of three 2.0s is sqrt(12); keras-lc-semantics §6 value.
    let expect_axis0 = 2.0 * 1.0 / (12f32.sqrt() + 1e-7);
    assert!(
        w.iter().all(|&x| (x - expect_axis0).abs() < 1e-6),
        "{w:?} {expect}"
    );
    let mut w = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![3.0, -1.0, 4.0, 2.0]).unwrap();
    apply_constraint(&Constraint::UnitNorm { axis: vec![-1] }, &mut w).unwrap();
    assert!((w[[0, 0]] - 3.0 / (10f32.sqrt() + 1e-7)).abs() < 1e-6);
    apply_constraint(&Constraint::NonNeg, &mut w).unwrap();
    assert_eq!(w[[0, 1]], 0.0);
    let mut r =
        ArrayD::from_shape_vec(IxDyn(&[4, 4, 1, 1]), (0..16).map(|x| x as f32).collect()).unwrap();
    apply_constraint(&Constraint::Radial, &mut r).unwrap();
    assert_eq!(
        (
            r[[1, 1, 0, 0]],
            r[[2, 2, 0, 0]],
            r[[0, 0, 0, 0]],
            r[[3, 1, 0, 0]]
        ),
        (5.0, 5.0, 15.0, 15.0)
    );
    let mut bad = ArrayD::from_elem(IxDyn(&[3, 2, 2]), 1.0f32);
    assert!(apply_constraint(&Constraint::Radial, &mut bad).is_err());
}

#[test]
fn golden_training_configs_parse() {
    let mut n = 0;
    for entry in std::fs::read_dir("tests/data/keras-golden").unwrap() {
        let dir = entry.unwrap().path();
        let h5 = dir.join("compiled.h5");
        if !h5.exists() {
            continue;
        }
        let text = lcjit::io::read_h5(&h5).unwrap().training_config.unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let setup = parse_training_config(&v, &h5.display().to_string()).unwrap();
        let case: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("case.json")).unwrap()).unwrap();
        let tr = &case["training"];
        assert_eq!(setup.optimizer.flavor, Flavor::TfKeras);
        assert_eq!(
            setup.optimizer.name,
            tr["optimizer"]["name"].as_str().unwrap()
        );
        let lr: f32 = tr["optimizer"]["learning_rate"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(setup.optimizer.learning_rate, LearningRate::Constant(lr));
        assert_eq!(
            setup.loss,
            parse_loss_arg(tr["loss"].as_str().unwrap()).unwrap()
        );
        n += 1;
    }
    assert!(n >= 20, "only {n} training cases");
    let bad = serde_json::json!({"loss": "nope", "optimizer_config": {"class_name": "SGD", "config": {}}});
    let e = parse_training_config(&bad, "x").unwrap_err().to_string();
    assert!(e.contains("'loss'"), "{e}");
    assert!(parse_optimizer_arg("adam").is_ok() && parse_optimizer_arg("frobnicate").is_err());
}
