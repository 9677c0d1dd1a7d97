//! Differential tests of the LC forward schedules for small and odd filter counts
//! (`vec=positions`, issue 12): random single LC layers with F ∈ 1..9, channels_first
//! and channels_last, strides, dilation, `same`/`valid`, 1D and 2D, long enough rows
//! that the position lanes, the guarded head and the tail all occur. The JIT (1 and 2
//! threads) must equal the interpreter bit for bit on FMA hosts, and the interpreter
//! must agree with the reference path to `1e-5 · max(1, max|ref|)`.

use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::sync::Arc;

mod common;

use common::lc_spec::{graph, spec, Spec};

fn input(model: &Model, batch: usize, seed: u64) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let mut rng = lcjit::init::Rng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(&shape),
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
    )
    .expect("shape")
}

/// Runs `sp` at `batch` on the reference, the interpreter and the JIT (1 and 2 threads)
/// and compares them; returns the forward kernel's schedule line.
fn check(sp: &Spec, batch: usize, seed: u64) -> Result<String, TestCaseError> {
    let Some(g) = graph(sp) else {
        return Ok(String::new());
    };
    let lowered = lcjit::lower::lower_forward(&g, batch).expect("lower");
    let schedule = lowered
        .module
        .kernels
        .iter()
        .find(|k| k.name.ends_with(".forward"))
        .and_then(|k| k.schedule.clone())
        .unwrap_or_default();
    let model = Arc::new(Model::from_graph(g, seed).expect("model"));
    let x = input(&model, batch, seed);
    let want = model.predict(&x).expect("reference");
    let interp = CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine: Engine::Interp,
            threads: 1,
            max_batch: batch,
            ..Default::default()
        },
    )
    .expect("compile interp");
    let got = interp.predict(&x).expect("interp");
    prop_assert_eq!(got.shape(), want.shape());
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    prop_assert!(err <= 1e-5 * scale, "{schedule}: interp vs reference {err}");
    for threads in [1, 2] {
        let jit = CompiledModel::new(
            model.clone(),
            CompileOptions {
                engine: Engine::Jit,
                threads,
                max_batch: batch,
                ..Default::default()
            },
        )
        .expect("compile jit");
        let y = jit.predict(&x).expect("jit");
        let err = y
            .iter()
            .zip(got.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        prop_assert!(err <= 1e-6 * scale, "{schedule}: jit vs interp {err}");
        if lcjit::backend::host_has_fma() {
            prop_assert!(
                y.iter()
                    .zip(got.iter())
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: jit differs from interp bitwise",
                schedule
            );
        }
    }
    Ok(schedule)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn small_filter_schedules_agree(sp in spec(), batch in 1usize..11, seed in 0u64..1000) {
        check(&sp, batch, seed)?;
    }
}

/// The shapes the positions schedule is for (few or odd filters with channels_first or
/// one-channel channels_last input, stride 1) get it, in 1D and 2D, at batch 1 and at a
/// batch with a remainder tile; channels_first with `F % 4 == 0` vectorises over
/// filters (strided stores); a strided channels_last layer with several channels and
/// odd filters keeps scalar tiles. All agree with the reference and the interpreter.
#[test]
fn schedules_are_chosen_by_shape_and_agree() {
    let base = Spec {
        rank: 1,
        cl: false,
        spatial: vec![37],
        c: 3,
        f: 1,
        k: 5,
        s: 1,
        d: 1,
        same: true,
        bias: true,
    };
    let cases = [
        (base.clone(), "vec=positions"),
        (
            Spec {
                f: 3,
                same: false,
                ..base.clone()
            },
            "vec=positions",
        ),
        (
            Spec {
                cl: true,
                c: 1,
                f: 2,
                d: 2,
                ..base.clone()
            },
            "vec=positions",
        ),
        (
            Spec {
                rank: 2,
                spatial: vec![9, 23],
                f: 6,
                ..base.clone()
            },
            "vec=positions",
        ),
        (
            Spec {
                f: 8,
                ..base.clone()
            },
            "vec=filters",
        ),
        (
            Spec {
                cl: true,
                s: 2,
                ..base.clone()
            },
            "vec=scalar",
        ),
    ];
    for (sp, want) in cases {
        for batch in [1, 11] {
            let schedule = check(&sp, batch, 7).expect("agree");
            assert!(
                schedule.contains(want),
                "{sp:?} at batch {batch}: {schedule}, wanted {want}"
            );
        }
    }
}
