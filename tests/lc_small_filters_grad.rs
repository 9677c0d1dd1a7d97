//! Differential tests of the LC gradient schedules for small and odd filter counts and
//! channels_first (`dK`, `db`, `dx` with `vec=positions`, vectorised bias blocks,
//! issue 12): random single LC layers with F ∈ 1..9, channels_first and channels_last,
//! strides, dilation, `same`/`valid`, 1D and 2D, batch 1 and larger, long enough rows
//! that the position lanes, the guarded head and the tail all occur. The gradients of
//! `sum(y · dy)` from the JIT (1 and 2 threads) must equal the interpreter's bit for bit
//! on FMA hosts, and the interpreter's must agree with the reference backward pass to
//! `1e-4 · max(1, max|ref|)` per array.

use lcjit::{CompileOptions, CompiledModel, Engine, Model};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::sync::Arc;

mod common;

use common::lc_spec::{graph, spec, Spec};

fn random(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut rng = lcjit::init::Rng::new(seed);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(
        IxDyn(shape),
        (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect(),
    )
    .expect("shape")
}

/// `max|a − b| / max(1, max|b|)`.
fn rel_err(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    let scale = b.iter().fold(1f32, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b.iter())
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn bits(arrays: &[ArrayD<f32>]) -> Vec<Vec<u32>> {
    arrays
        .iter()
        .map(|a| a.iter().map(|v| v.to_bits()).collect())
        .collect()
}

/// The gradients `(d inputs, d params)` of `model` on `engine`.
fn grads(
    model: &Arc<Model>,
    engine: Engine,
    threads: usize,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> (Vec<ArrayD<f32>>, Vec<ArrayD<f32>>) {
    let compiled = CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine,
            threads,
            max_batch: x.shape()[0],
            ..Default::default()
        },
    )
    .expect("compile");
    compiled
        .gradients(std::slice::from_ref(x), dy)
        .expect("gradients")
}

/// Runs `sp` at `batch` on the reference, the interpreter and the JIT (1 and 2 threads)
/// and compares their gradients; returns the schedule lines of the LC gradient kernels.
fn check(sp: &Spec, batch: usize, seed: u64) -> Result<String, TestCaseError> {
    let Some(g) = graph(sp) else {
        return Ok(String::new());
    };
    let lowered = lcjit::lower::grad::lower_gradients(&g, batch).expect("lower");
    let schedules: Vec<String> = lowered
        .backward
        .kernels
        .iter()
        .filter_map(|k| k.schedule.clone())
        .collect();
    let schedules = schedules.join("; ");
    let model = Arc::new(Model::from_graph(g, seed).expect("model"));
    let graph = model.graph().clone();
    let mut xs = vec![batch];
    xs.extend_from_slice(model.input_shape());
    let x = random(&xs, seed);
    let mut ys = vec![batch];
    ys.extend_from_slice(&graph.nodes[graph.outputs[0]].shape);
    let dy = random(&ys, seed + 1);
    let (want_dx, want_dp) = lcjit::reference::backward::gradients(
        &graph,
        model.params(),
        std::slice::from_ref(&x),
        &dy,
    )
    .expect("reference");
    let (dx, dp) = grads(&model, Engine::Interp, 1, &x, &dy);
    let interp: Vec<ArrayD<f32>> = dx.iter().chain(&dp).cloned().collect();
    let want: Vec<&ArrayD<f32>> = want_dx.iter().chain(&want_dp).collect();
    prop_assert_eq!(interp.len(), want.len());
    for (i, (a, w)) in interp.iter().zip(&want).enumerate() {
        prop_assert_eq!(a.shape(), w.shape());
        let e = rel_err(a, w);
        prop_assert!(
            e <= 1e-4,
            "{}: gradient {} interp vs reference {}",
            schedules,
            i,
            e
        );
    }
    for threads in [1, 2] {
        let (dx, dp) = grads(&model, Engine::Jit, threads, &x, &dy);
        let jit: Vec<ArrayD<f32>> = dx.into_iter().chain(dp).collect();
        for (i, (a, w)) in jit.iter().zip(&interp).enumerate() {
            let e = rel_err(a, w);
            prop_assert!(
                e <= 1e-5,
                "{}: gradient {} jit vs interp {}",
                schedules,
                i,
                e
            );
        }
        if lcjit::backend::host_has_fma() {
            prop_assert!(
                bits(&jit) == bits(&interp),
                "{} ({} threads): jit differs from interp bitwise",
                schedules,
                threads
            );
        }
    }
    Ok(schedules)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn small_filter_gradients_agree(
        sp in spec(),
        batch in prop_oneof![Just(1usize), 2usize..11],
        seed in 0u64..1000,
    ) {
        check(&sp, batch, seed)?;
    }
}

/// The shapes the positions schedules are for get them, in 1D and 2D, at batch 1 and at
/// a batch with a remainder tile, and agree with the reference and the interpreter:
/// GpNet-like layers (one filter and channel, channels_last, stride 1), channels_first
/// with odd and with multiple-of-4 filters (strided and dilated too; from batch 4 the
/// latter's `dK` runs over channels_last copies), `same` padding (guarded head and
/// tail); a strided channels_last layer with several channels and odd filters keeps
/// scalar tiles.
#[test]
fn gradient_schedules_are_chosen_by_shape_and_agree() {
    let base = Spec {
        rank: 1,
        cl: true,
        spatial: vec![41],
        c: 1,
        f: 1,
        k: 5,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    };
    let pos = ["lc.dk(vec=positions", "lc.dx(vec=positions"];
    let cf8 = Spec {
        cl: false,
        c: 2,
        f: 8,
        s: 2,
        same: true,
        ..base.clone()
    };
    let cases: [(Spec, &[&str]); 8] = [
        (base.clone(), &pos),
        (
            Spec {
                same: true,
                d: 2,
                ..base.clone()
            },
            &pos,
        ),
        (
            Spec {
                cl: false,
                c: 3,
                f: 3,
                ..base.clone()
            },
            &pos,
        ),
        (cf8.clone(), &pos),
        // From batch 4, channels_first filters that fill the lanes take the filters
        // `dK` tile over channels_last copies of x and `dz`.
        (
            cf8.clone(),
            &[
                "lc.dk(vec=filters",
                "x,dz=channels_last",
                "lc.dx(vec=positions",
            ],
        ),
        (
            Spec {
                rank: 2,
                cl: false,
                spatial: vec![9, 23],
                c: 2,
                f: 6,
                k: 3,
                same: true,
                ..base.clone()
            },
            &pos,
        ),
        (
            Spec {
                rank: 2,
                spatial: vec![7, 30],
                f: 1,
                k: 2,
                s: 2,
                d: 2,
                ..base.clone()
            },
            &pos,
        ),
        (
            Spec {
                c: 3,
                f: 3,
                s: 2,
                ..base.clone()
            },
            &["lc.dk(vec=scalar", "lc.dx(vec=scalar"],
        ),
    ];
    for (i, (sp, want)) in cases.into_iter().enumerate() {
        // Cases 3 and 4 are one layer: positions below batch 4, copies from it.
        let batches: &[usize] = match i {
            3 => &[1, 3],
            4 => &[11],
            _ => &[1, 11],
        };
        for &batch in batches {
            let schedules = check(&sp, batch, 7).expect("agree");
            for w in want {
                assert!(
                    schedules.contains(w),
                    "{sp:?} at batch {batch}: {schedules}, wanted {w}"
                );
            }
        }
    }
}
