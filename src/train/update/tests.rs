//! Unit tests of the flavour-specific parts of a step that `tests/train_update.rs` does not
//! combine: chained clipping (`optimizer_v2`: clipvalue then a norm clip; Keras 2: norm
//! then value), tf-keras Nadam's per-parameter running product and Ftrl, on the host
//! against hand-computed values and on the compiled engines bit for bit.

use super::super::optimizer::{Algorithm, Flavor, Optimizer, OptimizerConfig};
use crate::runtime::Engine;
use crate::train::schedule::LearningRate;
use ndarray::{arr1, ArrayD};

fn config(algorithm: Algorithm, flavor: Flavor) -> OptimizerConfig {
    OptimizerConfig {
        name: "t".into(),
        algorithm,
        learning_rate: LearningRate::Constant(1.0),
        flavor,
        clipnorm: None,
        clipvalue: None,
        global_clipnorm: None,
        weight_decay: None,
        decay: 0.0,
    }
}

const SGD: Algorithm = Algorithm::Sgd {
    momentum: 0.0,
    nesterov: false,
};

fn nadam() -> Algorithm {
    Algorithm::Nadam {
        beta_1: 0.8,
        beta_2: 0.9,
        epsilon: 1e-3,
        schedule_decay: 1.0,
    }
}

fn v(x: &[f32]) -> ArrayD<f32> {
    arr1(x).into_dyn()
}

/// One host step of plain SGD (lr 1) from zero weights: the applied gradient, negated.
fn sgd_applied(c: OptimizerConfig, g: &[f32]) -> Vec<f32> {
    let mut p = vec![v(&vec![0.0; g.len()])];
    Optimizer::new(c)
        .step(&mut p, &[v(g)], &[true])
        .expect("step");
    p[0].iter().map(|x| -x).collect()
}

#[test]
fn legacy_clips_by_value_then_by_norm() {
    let g = [3.0, -4.0, 0.5];
    let mut c = config(SGD, Flavor::Legacy);
    (c.clipvalue, c.clipnorm) = (Some(1.0), Some(1.0));
    // clamp → (1, −1, 0.5), norm 1.5 → ×1/1.5.
    let clamped = [1.0f32, -1.0, 0.5];
    let n = clamped.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = clamped.iter().map(|x| x * 1.0 / n).collect();
    assert_eq!(sgd_applied(c.clone(), &g), want);
    // tf-keras applies clipnorm alone: the norm of the raw gradient.
    c.flavor = Flavor::TfKeras;
    let n = g.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = g.iter().map(|x| x * 1.0 / n).collect();
    assert_eq!(sgd_applied(c, &g), want);
}

#[test]
fn multi_backend_clips_by_norm_then_by_value() {
    let g = [3.0, -4.0, 0.5];
    let mut c = config(SGD, Flavor::MultiBackend);
    (c.clipvalue, c.clipnorm) = (Some(0.5), Some(2.0));
    let n = g.iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = g.iter().map(|x| (x * 2.0 / n).clamp(-0.5, 0.5)).collect();
    assert_eq!(sgd_applied(c, &g), want);
}

/// tf-keras Nadam in Keras's first trace: at step 0 parameter 1 of 2 reuses the product
/// parameter 0 made (`1 + k == 2`); in the second trace both multiply.
#[test]
fn tf_keras_nadam_product_per_parameter() {
    let run = |trace: u64| {
        let mut o = Optimizer::new(config(nadam(), Flavor::TfKeras));
        o.set_keras_trace(trace);
        let mut p = vec![v(&[0.0]), v(&[0.0])];
        o.step(&mut p, &[v(&[0.5]), v(&[0.5])], &[true, true])
            .expect("step");
        (p[0][0], p[1][0])
    };
    let u1 = 0.8f32 * (1.0 - 0.5 * 0.96f32.powf(1.0));
    let u2 = 0.8f32 * (1.0 - 0.5 * 0.96f32.powf(2.0));
    let step = |up: f32| {
        // The host's operations: m, v from zero; v̂ = v/(1 − β2^1).
        let (g, m, v) = (0.5f32, 0.5f32 * (1.0 - 0.8f32), 0.25f32 * (1.0 - 0.9f32));
        let m_hat = u2 * m / (1.0 - up * u2) + (1.0 - u1) * g / (1.0 - up);
        -(m_hat * 1.0) / ((v / (1.0 - 0.9f32.powf(1.0))).sqrt() + 1e-3)
    };
    assert_eq!(run(0), (step(u1), step(u1)));
    assert_eq!(run(1), (step(u1), step(u1 * u1)));
}

/// The compiled update equals the host step bit for bit on chained clips, per-parameter
/// Nadam scalars and Ftrl, over several steps.
#[test]
fn compiled_matches_host_on_chains_nadam_ftrl() {
    let mut cases = Vec::new();
    for (flavor, gc) in [
        (Flavor::Legacy, false),
        (Flavor::Legacy, true),
        (Flavor::MultiBackend, false),
    ] {
        let mut c = config(
            Algorithm::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            flavor,
        );
        c.clipvalue = Some(0.3);
        if gc {
            c.global_clipnorm = Some(0.7);
        } else {
            c.clipnorm = Some(0.7);
        }
        cases.push((c, 0));
    }
    for trace in [0, 1, 2] {
        cases.push((config(nadam(), Flavor::TfKeras), trace));
    }
    for (p, l2_shrinkage, flavor) in [
        (-0.5, 0.0, Flavor::Legacy),
        (-0.5, 0.05, Flavor::TfKeras),
        (0.0, 0.05, Flavor::Legacy),
    ] {
        let mut c = config(
            Algorithm::Ftrl {
                learning_rate_power: p,
                initial_accumulator_value: 0.1,
                l1: 0.05,
                l2: 0.01,
                l2_shrinkage,
                beta: 0.1,
            },
            flavor,
        );
        c.learning_rate = LearningRate::Constant(0.1);
        c.weight_decay = Some(0.02); // applies to the tf-keras flavour only
        cases.push((c, 0));
    }
    let shapes = [3usize, 300, 8];
    for (c, trace) in cases {
        for engine in [Engine::Interp, Engine::Jit] {
            let mut host = Optimizer::new(c.clone());
            let mut comp = Optimizer::new(c.clone());
            host.set_keras_trace(trace);
            comp.set_keras_trace(trace);
            let init: Vec<ArrayD<f32>> = shapes
                .iter()
                .map(|&n| v(&(0..n).map(|i| (i as f32 * 0.37).sin()).collect::<Vec<_>>()))
                .collect();
            let (mut ph, mut pc) = (init.clone(), init);
            for s in 0..5 {
                let gs: Vec<ArrayD<f32>> = shapes
                    .iter()
                    .map(|&n| {
                        v(&(0..n)
                            .map(|i| ((i + 7 * s) as f32 * 0.91).cos() * (1.0 + s as f32))
                            .collect::<Vec<_>>())
                    })
                    .collect();
                let tr = [true; 3];
                host.step(&mut ph, &gs, &tr).expect("host step");
                comp.step_compiled(&mut pc, &gs, &tr, engine, 2)
                    .expect("compiled step");
                for (k, (a, b)) in ph.iter().zip(&pc).enumerate() {
                    let same = a
                        .iter()
                        .zip(b.iter())
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{c:?} trace {trace} {engine:?}: step {s}, param {k}");
                    for (sa, sb) in host.slots(k).into_iter().zip(comp.slots(k)) {
                        assert_eq!(sa, sb, "{c:?} trace {trace} {engine:?}: slots");
                    }
                }
            }
        }
    }
}

/// Ftrl's compiled update refuses a power it cannot express; the host update runs it.
#[test]
fn ftrl_other_powers_run_on_the_host_only() {
    let c = config(
        Algorithm::Ftrl {
            learning_rate_power: -0.25,
            initial_accumulator_value: 0.1,
            l1: 0.0,
            l2: 0.0,
            l2_shrinkage: 0.0,
            beta: 0.0,
        },
        Flavor::TfKeras,
    );
    let g = [v(&[0.5, -0.25])];
    let mut p = vec![v(&[1.0, 2.0])];
    Optimizer::new(c.clone())
        .step(&mut p, &g, &[true])
        .expect("host step");
    // n' = 0.1 + g², z = g − (n'^¼ − 0.1^¼)/lr·w, w = −z/(n'^¼/lr) (l1 = l2 = 0).
    for (i, (&w0, &gi)) in [1.0f32, 2.0].iter().zip(&[0.5f32, -0.25]).enumerate() {
        let n = 0.1f32 + gi * gi;
        let z = gi - (n.powf(0.25) - 0.1f32.powf(0.25)) / 1.0 * w0;
        assert_eq!(p[0][i], (0.0 - z) / (n.powf(0.25) / 1.0 + 2.0 * 0.0));
    }
    let mut p = vec![v(&[1.0, 2.0])];
    let e = Optimizer::new(c).step_compiled(&mut p, &g, &[true], Engine::Interp, 1);
    assert!(matches!(e, Err(crate::Error::Usage { .. })), "{e:?}");
}
