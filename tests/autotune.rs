//! Autotuning (issue 12, item 3): every schedule family it may choose for an LC layer
//! computes the same bits, and the tuned model's outputs are the untuned model's; the
//! choices are cached by layer key, CPU and threads in a file that a second model reads
//! instead of timing; a budget too small to time anything keeps the defaults and writes
//! nothing; a cache file that is not one is refused with an error naming it.
//!
//! Families forced on random single LC layers (F from 1 to 17, both data formats,
//! strides, dilation, `same`/`valid`, 1D and 2D, batches with and without whole vectors
//! of rows) must each be followed (the kernel's schedule line is the candidate's) and
//! agree with the default family bit for bit on the JIT at 1 and 2 threads and on the
//! interpreter (on FMA hosts; within `1e-6` of the interpreter elsewhere).

use lcjit::backend::Backend;
use lcjit::graph::{Graph, Op};
use lcjit::lower::schedule::lc::{layer_key, Plans};
use lcjit::lower::Target;
use lcjit::runtime::tune::{Autotune, Decided};
use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

mod common;

use common::lc_spec::{graph, Spec};

fn input(model: &Model, batch: usize, seed: u64) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    common::random(&shape, seed)
}

/// Runs the lowered forward program of `g` (plans in `target`) on `backend` and returns
/// its output and the forward kernel's schedule line.
fn run(
    g: &Graph,
    model: &Model,
    x: &ArrayD<f32>,
    target: &Target,
    backend: Backend,
    threads: usize,
) -> (Vec<f32>, String) {
    let batch = x.shape()[0];
    let lowered = lcjit::lower::lower_forward_for(g, batch, target.clone()).expect("lower");
    let m = &lowered.module;
    let schedule = m
        .kernels
        .iter()
        .find(|k| k.name.ends_with(".forward"))
        .and_then(|k| k.schedule.clone())
        .unwrap_or_default();
    let xs: Vec<f32> = x.iter().copied().collect();
    (
        common::lowered::run(&lowered, model, &xs, backend, threads),
        schedule,
    )
}

/// Forces every candidate family of `sp` at `batch` and compares them.
fn check(sp: &Spec, batch: usize, seed: u64) -> Result<usize, TestCaseError> {
    let Some(g) = graph(sp) else {
        return Ok(0);
    };
    let node = g.outputs[0];
    let Op::LocallyConnected(l) = &g.nodes[node].op else {
        return Err(TestCaseError::fail("not an LC layer"));
    };
    let tier = lcjit::WideTier::Auto.resolve().expect("tier");
    let base = Target {
        tier,
        ..Target::default()
    };
    let model = Model::from_graph(g.clone(), seed).expect("model");
    let x = input(&model, batch, seed);
    let candidates =
        lcjit::lower::lc::forward_candidates(&g, node, l, batch, &base).expect("candidates");
    prop_assert!(!candidates.is_empty());
    let key = layer_key(&g, node, l, batch, tier, lcjit::loop_ir::Dtype::F32);
    let (want, _) = run(&g, &model, &x, &base, Backend::Interp, 1);
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let fma = lcjit::backend::host_has_fma();
    for (i, (plan, text)) in candidates.iter().enumerate() {
        let mut plans = Plans::default();
        plans.insert(key.clone(), *plan);
        let target = Target {
            plans: Some(Arc::new(plans)),
            ..base.clone()
        };
        if i == 0 {
            let (_, default) = run(&g, &model, &x, &base, Backend::Interp, 1);
            prop_assert_eq!(&default, text, "the first candidate is the default");
        }
        let (interp, followed) = run(&g, &model, &x, &target, Backend::Interp, 1);
        prop_assert_eq!(&followed, text, "{} was not followed", plan);
        prop_assert!(
            interp
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{}: interpreter differs from the default family's",
            text
        );
        for threads in [1, 2] {
            let (jit, _) = run(&g, &model, &x, &target, Backend::Jit, threads);
            let err = jit
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            prop_assert!(err <= 1e-6 * scale, "{}: jit vs interp {}", text, err);
            if fma {
                prop_assert!(
                    jit.iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{}: jit ({} threads) differs bitwise",
                    text,
                    threads
                );
            }
        }
    }
    Ok(candidates.len())
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        1usize..3,
        any::<bool>(),
        (6usize..40, 4usize..12),
        1usize..5,
        prop::sample::select(vec![1usize, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 17]),
        1usize..6,
        1usize..3,
        1usize..3,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(Spec::from_parts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn every_family_computes_the_same_bits(
        sp in spec(),
        batch in prop::sample::select(vec![1usize, 3, 4, 8, 12, 16, 32]),
        seed in 0u64..1000,
    ) {
        check(&sp, batch, seed)?;
    }
}

/// Layers with several families at once: F = 6 channels_first (positions, batch lanes,
/// filters), F = 16 channels_last at batch 32 (wide filters where the host has a wide
/// tier, batch lanes, filters).
#[test]
fn layers_with_several_families_agree() {
    let a = Spec {
        rank: 1,
        cl: false,
        spatial: vec![41],
        c: 3,
        f: 6,
        k: 4,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    };
    let b = Spec {
        rank: 2,
        cl: true,
        spatial: vec![9, 10],
        c: 4,
        f: 16,
        k: 3,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    };
    assert!(check(&a, 32, 3).expect("agree") >= 3);
    assert!(check(&b, 32, 4).expect("agree") >= 2);
    // channels_first with several channels: the wide filters tile reads a channels_last
    // copy of the input.
    let cf = Spec { cl: false, ..b };
    assert!(check(&cf, 32, 5).expect("agree") >= 2);
    let g = graph(&cf).expect("graph");
    let tier = lcjit::WideTier::Auto.resolve().expect("tier");
    let lowered = lcjit::lower::lower_forward_for(
        &g,
        32,
        Target {
            tier,
            ..Target::default()
        },
    )
    .expect("lower");
    let names: Vec<&str> = lowered
        .module
        .kernels
        .iter()
        .map(|k| k.name.as_str())
        .collect();
    let copies = names
        .iter()
        .any(|n| n.ends_with(".forward_x_channels_last"));
    assert_eq!(copies, tier.is_some(), "{names:?}");
}

fn compiled(model: &Arc<Model>, autotune: Option<Autotune>, batch: usize) -> CompiledModel {
    CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine: Engine::Jit,
            threads: 2,
            max_batch: batch,
            autotune,
            ..Default::default()
        },
    )
    .expect("compile")
}

/// A two-layer model whose layers both have a choice at batch 8.
fn two_layer_model() -> Arc<Model> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/workloads/lc2d_f12_f6.json"
    );
    Arc::new(Model::load(path).expect("workload"))
}

#[test]
fn tuned_models_compute_the_same_bits_and_cache_their_choices() {
    let dir = common::TestDir::new("autotune-cache");
    let cache = dir.path("tune.json");
    let model = two_layer_model();
    let batch = 8;
    let x = input(&model, batch, 11);
    let plain = compiled(&model, None, batch).predict(&x).expect("untuned");
    let tune = Autotune {
        budget: Duration::from_secs(20),
        cache: Some(cache.clone()),
    };
    let first = compiled(&model, Some(tune.clone()), batch);
    let t = first.tuning(batch).expect("tuning").expect("tuned");
    assert_eq!(t.trials.len(), 2, "{t:?}");
    assert!(
        t.trials.iter().all(|tr| tr.decided == Decided::Measured),
        "{t:?}"
    );
    assert!(t
        .trials
        .iter()
        .all(|tr| tr.ms.iter().all(|m| m.is_some_and(|v| v > 0.0))));
    let y = first.predict(&x).expect("tuned");
    assert!(y
        .iter()
        .zip(plain.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
    let text = std::fs::read_to_string(&cache).expect("cache written");
    assert!(text.contains("\"lcjit-tune\""), "{text}");
    // A second model reads the choices instead of timing.
    let second = compiled(&model, Some(tune), batch);
    let t2 = second.tuning(batch).expect("tuning").expect("tuned");
    assert!(
        t2.trials.iter().all(|tr| tr.decided == Decided::Cached),
        "{t2:?}"
    );
    let chosen =
        |t: &lcjit::runtime::tune::Tuning| t.trials.iter().map(|tr| tr.chosen).collect::<Vec<_>>();
    assert_eq!(chosen(&t), chosen(&t2));
    assert_eq!(*t.plans, *t2.plans);
    let y2 = second.predict(&x).expect("cached");
    assert!(y2
        .iter()
        .zip(plain.iter())
        .all(|(a, b)| a.to_bits() == b.to_bits()));
}

/// Gradient programs follow the tuned forward families too (the layers' keys are the
/// inference program's, activation and all): the same bits as untuned.
#[test]
fn tuned_gradients_are_the_untuned_bits() {
    let model = two_layer_model();
    let batch = 8;
    let x = input(&model, batch, 12);
    let tune = Autotune {
        budget: Duration::from_secs(20),
        cache: None,
    };
    let plain = compiled(&model, None, batch);
    let tuned = compiled(&model, Some(tune), batch);
    let y = plain.predict(&x).expect("predict");
    let dy = common::random(y.shape(), 13);
    let (gx0, gp0) = plain
        .gradients(std::slice::from_ref(&x), &dy)
        .expect("untuned");
    let (gx1, gp1) = tuned
        .gradients(std::slice::from_ref(&x), &dy)
        .expect("tuned");
    let t = tuned.tuning(batch).expect("tuning").expect("tuned");
    assert!(
        t.trials.iter().all(|tr| tr.decided == Decided::Measured),
        "{t:?}"
    );
    let same = |a: &[ArrayD<f32>], b: &[ArrayD<f32>]| {
        a.len() == b.len()
            && a.iter().zip(b).all(|(p, q)| {
                p.iter()
                    .zip(q.iter())
                    .all(|(u, v)| u.to_bits() == v.to_bits())
            })
    };
    assert!(same(&gx0, &gx1) && same(&gp0, &gp1));
    // A forced family reaches the gradient program's forward kernel, whose layer the
    // program lowers with its activation split off.
    let g = model.graph();
    let tier = lcjit::WideTier::Auto.resolve().expect("tier");
    let mut plans = Plans::default();
    for (id, n) in g.nodes.iter().enumerate() {
        if let Op::LocallyConnected(l) = &n.op {
            let key = layer_key(g, id, l, batch, tier, lcjit::loop_ir::Dtype::F32);
            plans.insert(key, lcjit::lower::schedule::lc::ForwardPlan::Filters);
        }
    }
    let mode = lcjit::lower::grad::Mode::Training;
    let forced =
        lcjit::lower::grad::lower_gradients_planned(g, batch, mode, tier, Some(Arc::new(plans)))
            .expect("lower");
    let schedules: Vec<String> = forced
        .forward
        .kernels
        .iter()
        .filter(|k| k.name.ends_with(".forward"))
        .filter_map(|k| k.schedule.clone())
        .filter(|s| s.starts_with("lc.forward"))
        .collect();
    assert_eq!(schedules.len(), 2, "{schedules:?}");
    assert!(
        schedules
            .iter()
            .all(|s| !s.contains("wide") && !s.contains("vec=batch")),
        "{schedules:?}"
    );
}

#[test]
fn a_zero_budget_keeps_the_defaults_and_writes_nothing() {
    let dir = common::TestDir::new("autotune-zero");
    let cache = dir.path("tune.json");
    let model = two_layer_model();
    let tune = Autotune {
        budget: Duration::ZERO,
        cache: Some(cache.clone()),
    };
    let c = compiled(&model, Some(tune), 4);
    let t = c.tuning(4).expect("tuning").expect("tuned");
    assert!(!t.trials.is_empty());
    assert!(t.trials.iter().all(|tr| tr.decided == Decided::OutOfBudget));
    assert!(t.plans.is_empty());
    assert!(!cache.exists());
}

#[test]
fn a_cache_that_is_not_one_is_refused_by_name() {
    let dir = common::TestDir::new("autotune-bad");
    let cache = dir.path("tune.json");
    std::fs::write(
        &cache,
        "{\"format\": \"lcjit-tune\", \"version\": 7, \"entries\": []}",
    )
    .expect("write");
    let model = two_layer_model();
    let e = CompiledModel::new(
        model,
        CompileOptions {
            engine: Engine::Jit,
            max_batch: 4,
            autotune: Some(Autotune {
                budget: Duration::from_secs(1),
                cache: Some(cache.clone()),
            }),
            ..Default::default()
        },
    )
    .err()
    .expect("refused");
    assert!(matches!(e, lcjit::Error::Format { .. }), "{e}");
    assert!(e.to_string().contains("tune.json"), "{e}");
    assert_eq!(
        std::fs::read_to_string(&cache).expect("kept"),
        "{\"format\": \"lcjit-tune\", \"version\": 7, \"entries\": []}"
    );
}
