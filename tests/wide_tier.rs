//! The wide tier (issue 12 item 6): register tiles whose reduction runs in an AVX2 or
//! AVX-512 microkernel (`wide(tier)` loops, `backend/cranelift/wide.rs`). Every executor
//! must give the same bits for the same program: the interpreter, the JIT calling the
//! microkernels (1 and 2 threads), the JIT emitting the same wide loops as f32x4 loops
//! (`CodegenOptions::f32x4_only`, what a CPU without the tier runs) and the
//! ahead-of-time object (whose microkernels are the same bytes); and the f32x4 schedule
//! (`WideTier::Off`, another tile) sums in the same order, so it equals them too.
//! Random LC layers (filters that fill 8- and 16-lane registers, 1D and 2D, both
//! formats, strides, dilation, batches with remainder tiles, f32/bf16/f16 weights), the
//! Keras golden cases at a batch that gets wide tiles, and the workloads.

use lcjit::backend::{self, Backend, BufArg, CodegenOptions, Program};
use lcjit::loop_ir::micro::Tier;
use lcjit::loop_ir::{BufRole, Dtype, LoopKind, Module, Stmt};
use lcjit::{io, CompileOptions, CompiledModel, Engine, Model, WideTier};
use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;
use common::lc_spec::{graph, Spec};

/// The tiers this CPU runs (the tests of the others are the f32x4 fallback's).
fn host_tiers() -> Vec<Tier> {
    [Tier::Avx2, Tier::Avx512]
        .into_iter()
        .filter(|t| backend::host_has_tier(*t))
        .collect()
}

fn has_wide(m: &Module) -> bool {
    fn walk(s: &[Stmt]) -> bool {
        s.iter().any(|s| match s {
            Stmt::For {
                kind: LoopKind::Wide(_),
                ..
            } => true,
            Stmt::For { body, .. } | Stmt::If { body, .. } => walk(body),
            _ => false,
        })
    }
    m.kernels.iter().any(|k| walk(&k.body))
}

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

fn compiled(
    model: &Arc<Model>,
    engine: Engine,
    threads: usize,
    batch: usize,
    dtype: Dtype,
    wide: WideTier,
) -> CompiledModel {
    CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine,
            threads,
            max_batch: batch,
            weights_dtype: dtype,
            wide,
        },
    )
    .expect("compile")
}

fn same_bits(a: &ArrayD<f32>, b: &ArrayD<f32>) -> bool {
    a.shape() == b.shape()
        && a.iter()
            .zip(b.iter())
            .all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Runs `program` over a table whose inputs are `x`, parameters `params` (16-bit
/// buffers get their narrowed copies) and writable buffers zeroed; returns the
/// writable buffers.
fn run(
    program: &Program,
    x: &[f32],
    params: &[Vec<f32>],
    halves: &[Vec<u16>],
    threads: usize,
) -> Vec<Vec<f32>> {
    let m = program.module();
    let mut owned: Vec<Vec<f32>> = m
        .buffers
        .iter()
        .filter(|b| !b.role.is_read_only())
        .map(|b| vec![0.0; b.len])
        .collect();
    let mut w = owned.iter_mut();
    let mut args: Vec<BufArg> = m
        .buffers
        .iter()
        .map(|b| match &b.role {
            BufRole::Input(_) => BufArg::Read(x),
            BufRole::Param(k) if b.dtype != Dtype::F32 => BufArg::ReadHalf(&halves[*k], b.dtype),
            BufRole::Param(k) => BufArg::Read(&params[*k]),
            BufRole::Const(v) => BufArg::Read(v),
            _ => BufArg::Write(w.next().expect("writable")),
        })
        .collect();
    program.run(&mut args, threads).expect("run");
    drop(args);
    owned
}

/// One random LC layer with filters that fill wide registers, checked on every
/// executor (see the module docs). Returns whether a wide loop was scheduled.
fn check(sp: &Spec, batch: usize, seed: u64, dtype: Dtype) -> Result<bool, TestCaseError> {
    let Some(g) = graph(sp) else {
        return Ok(false);
    };
    let model = Arc::new(Model::from_graph(g, seed).expect("model"));
    let x = input(&model, batch, seed);
    let interp = compiled(&model, Engine::Interp, 1, batch, dtype, WideTier::Auto)
        .predict(&x)
        .expect("interp");
    let off = compiled(&model, Engine::Jit, 1, batch, dtype, WideTier::Off)
        .predict(&x)
        .expect("off");
    prop_assert!(
        same_bits(&off, &interp),
        "f32x4 schedule differs from the interpreter"
    );
    let mut any = false;
    for tier in host_tiers() {
        let cm = compiled(&model, Engine::Jit, 1, batch, dtype, WideTier::Only(tier));
        let prepared = cm.prepared(batch).expect("prepared");
        let module = prepared.program.module().clone();
        any |= has_wide(&module);
        for threads in [1, 2] {
            let mut c = compiled(
                &model,
                Engine::Jit,
                threads,
                batch,
                dtype,
                WideTier::Only(tier),
            );
            c.set_threads(threads).expect("threads");
            let y = c.predict(&x).expect("jit");
            prop_assert!(
                same_bits(&y, &interp),
                "{tier}, {threads} threads: differs from the interpreter ({:?})",
                sp
            );
        }
        // The same wide program with every wide loop emitted as f32x4 code.
        let params: Vec<Vec<f32>> = model
            .params()
            .iter()
            .map(|p| p.iter().copied().collect())
            .collect();
        let halves: Vec<Vec<u16>> = params
            .iter()
            .map(|p| {
                lcjit::lower::weights::narrow(
                    p.iter().copied(),
                    if dtype == Dtype::F32 {
                        Dtype::Bf16
                    } else {
                        dtype
                    },
                )
            })
            .collect();
        let xs: Vec<f32> = x.iter().copied().collect();
        let fallback = backend::prepare(
            Backend::Jit,
            &module,
            &CodegenOptions {
                f32x4_only: true,
                ..Default::default()
            },
        )
        .expect("f32x4 only");
        let want = run(&prepared.program, &xs, &params, &halves, 2);
        let got = run(&fallback, &xs, &params, &halves, 1);
        prop_assert!(
            bits_eq(&want, &got),
            "{tier}: f32x4 emission of the wide loops differs"
        );
    }
    Ok(any)
}

fn bits_eq(a: &[Vec<f32>], b: &[Vec<f32>]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        })
}

fn wide_spec() -> impl Strategy<Value = Spec> {
    (
        1usize..3,
        any::<bool>(),
        (6usize..30, 4usize..9),
        1usize..5,
        prop::sample::select(vec![8usize, 16, 24, 32, 48, 64]),
        1usize..5,
        1usize..3,
        1usize..3,
        prop::bool::weighted(0.15),
        any::<bool>(),
    )
        .prop_map(|(rank, cl, (n1, n2), c, f, k, s, d, same, bias)| Spec {
            rank,
            cl,
            spatial: if rank == 1 {
                vec![n1]
            } else {
                vec![n2, n2 + 1]
            },
            c,
            f,
            k,
            s,
            d,
            same,
            bias,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn wide_tiles_equal_every_other_executor(
        sp in wide_spec(),
        batch in 1usize..21,
        seed in 0u64..1000,
        dtype in prop::sample::select(vec![Dtype::F32, Dtype::Bf16, Dtype::F16]),
    ) {
        check(&sp, batch, seed, dtype)?;
    }
}

/// Shapes that must get a wide tile on a CPU with a tier do, in 1D and 2D, both
/// formats, with remainder rows, and every 16-bit type.
#[test]
fn wide_tiles_are_scheduled_and_agree() {
    let base = Spec {
        rank: 2,
        cl: true,
        spatial: vec![9, 10],
        c: 3,
        f: 16,
        k: 3,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    };
    let variants = [
        base.clone(),
        Spec {
            cl: false,
            ..base.clone()
        },
        Spec {
            rank: 1,
            spatial: vec![40],
            f: 32,
            ..base.clone()
        },
        Spec {
            s: 2,
            d: 2,
            f: 48,
            ..base.clone()
        },
        Spec {
            f: 8,
            ..base.clone()
        },
    ];
    for sp in &variants {
        for (batch, dtype) in [
            (4, Dtype::F32),
            (9, Dtype::F32),
            (13, Dtype::Bf16),
            (8, Dtype::F16),
        ] {
            let wide = check(sp, batch, 7, dtype).expect("agree");
            let expect = host_tiers().iter().any(|t| sp.f.is_multiple_of(t.lanes()));
            assert_eq!(wide, expect, "{sp:?} at batch {batch}: wide loop scheduled");
        }
    }
    // `same` padding keeps the guarded f32x4 nest; below batch 4 a short patch with
    // f32 weights streams them with f32x4 code.
    for (sp, batch) in [
        (
            Spec {
                same: true,
                ..base.clone()
            },
            8,
        ),
        (base.clone(), 1),
    ] {
        assert!(
            !check(&sp, batch, 3, Dtype::F32).expect("agree"),
            "{sp:?}: no wide loop"
        );
    }
    // Below batch 4, 16-bit weights and long patches (16 channels × 5 × 5 = 400) do get
    // wide tiles, several registers of filters per row.
    let long = Spec {
        c: 16,
        k: 5,
        f: 64,
        ..base.clone()
    };
    for (sp, batch, dtype) in [
        (base.clone(), 1, Dtype::F16),
        (base.clone(), 3, Dtype::Bf16),
        (long.clone(), 1, Dtype::F32),
        (long, 2, Dtype::F16),
    ] {
        let wide = check(&sp, batch, 5, dtype).expect("agree");
        assert_eq!(
            wide,
            !host_tiers().is_empty(),
            "{sp:?} at batch {batch} {dtype:?}"
        );
    }
}

fn golden_cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("x.npy").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 40, "golden cases missing");
    v
}

fn load(case: &Path) -> Arc<Model> {
    let m = if case.join("model.h5").exists() {
        Model::load(case.join("model.h5")).expect("model.h5")
    } else {
        let mut m = Model::load(case.join("model.json")).expect("model.json");
        m.load_weights(case.join("weights.npz"))
            .expect("weights.npz");
        m
    };
    Arc::new(m)
}

/// Every Keras golden case at batch 12 (its rows repeated): the JIT with the host's
/// widest tier, on 1 and 2 threads, and the f32x4 JIT equal the interpreter bit for bit;
/// on a CPU with a tier, the cases whose LC layers fill wide registers get wide loops.
#[test]
fn golden_cases_agree_with_wide_tiles() {
    let mut wide_cases = Vec::new();
    for case in golden_cases() {
        let x0 = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let n0 = x0.shape()[0];
        let batch = 12;
        let mut shape = x0.shape().to_vec();
        shape[0] = batch;
        let per: usize = x0.len() / n0;
        let flat: Vec<f32> = x0.iter().copied().collect();
        let data: Vec<f32> = (0..batch)
            .flat_map(|r| {
                let row = &flat[(r % n0) * per..(r % n0 + 1) * per];
                row.iter()
                    .map(move |v| v * (1.0 + r as f32 / 64.0))
                    .collect::<Vec<_>>()
            })
            .collect();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), data).expect("shape");
        let model = load(&case);
        let interp = compiled(&model, Engine::Interp, 1, batch, Dtype::F32, WideTier::Auto)
            .predict(&x)
            .expect("interp");
        let cm = compiled(&model, Engine::Jit, 1, batch, Dtype::F32, WideTier::Auto);
        if has_wide(cm.prepared(batch).expect("prepared").program.module()) {
            wide_cases.push(case.display().to_string());
        }
        for threads in [1, 2] {
            let mut c = compiled(
                &model,
                Engine::Jit,
                threads,
                batch,
                Dtype::F32,
                WideTier::Auto,
            );
            c.set_threads(threads).expect("threads");
            let y = c.predict(&x).expect("jit");
            assert!(
                same_bits(&y, &interp),
                "{}: wide JIT, {threads} threads",
                case.display()
            );
        }
        let off = compiled(&model, Engine::Jit, 2, batch, Dtype::F32, WideTier::Off)
            .predict(&x)
            .expect("off");
        assert!(same_bits(&off, &interp), "{}: f32x4 JIT", case.display());
    }
    // The golden cases' LC layers have few filters (or `same` padding), so this
    // checks that the tier leaves them as they were; the tier itself is exercised by
    // the random layers above and the workloads below.
    eprintln!("golden cases with wide loops: {}", wide_cases.len());
}

/// Every workload at batch 8: the JIT with the host's widest tier equals the f32x4 JIT
/// bit for bit (the interpreter is too slow for the largest; the f32x4 JIT equals it on
/// every workload in `workloads.rs`).
#[test]
fn workloads_agree_with_wide_tiles() {
    let mut wide = 0;
    for name in common::workload_names() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/workloads")
            .join(&name);
        let model = Arc::new(Model::load(&path).expect("workload"));
        let batch = 8;
        let x = input(&model, batch, 5);
        let cm = compiled(&model, Engine::Jit, 2, batch, Dtype::F32, WideTier::Auto);
        wide += usize::from(has_wide(
            cm.prepared(batch).expect("prepared").program.module(),
        ));
        let y = cm.predict(&x).expect("wide");
        let off = compiled(&model, Engine::Jit, 2, batch, Dtype::F32, WideTier::Off)
            .predict(&x)
            .expect("off");
        assert!(
            same_bits(&y, &off),
            "{name}: wide JIT differs from the f32x4 JIT"
        );
    }
    if !host_tiers().is_empty() {
        assert!(
            wide >= 2,
            "too few workloads exercise the wide tier ({wide})"
        );
    }
}

/// A tier the CPU lacks is refused with a usage error, and `Off` never schedules one.
#[test]
fn tier_choice_is_checked() {
    for t in [Tier::Avx2, Tier::Avx512] {
        let r = WideTier::Only(t).resolve();
        if backend::host_has_tier(t) {
            assert_eq!(r.expect("resolve"), Some(t));
        } else {
            let e = r.expect_err("refused").to_string();
            assert!(e.contains(t.name()), "{e}");
        }
    }
    assert_eq!(WideTier::Off.resolve().expect("off"), None);
}

/// The gradients `(d inputs, d params)` of `model` on `engine` with `wide`.
fn grads(
    model: &Arc<Model>,
    engine: Engine,
    threads: usize,
    wide: WideTier,
    x: &ArrayD<f32>,
    dy: &ArrayD<f32>,
) -> Vec<ArrayD<f32>> {
    let c = compiled(model, engine, threads, x.shape()[0], Dtype::F32, wide);
    let (dx, dp) = c.gradients(std::slice::from_ref(x), dy).expect("gradients");
    dx.into_iter().chain(dp).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// The gradient programs (forward phase and `dK` with wide tiles): the wide JIT on 1
    /// and 2 threads and the f32x4 JIT equal the interpreter bit for bit.
    #[test]
    fn wide_gradients_equal_the_interpreter(
        sp in wide_spec(),
        batch in 4usize..19,
        seed in 0u64..1000,
    ) {
        let Some(g) = graph(&sp) else {
            return Ok(());
        };
        let model = Arc::new(Model::from_graph(g, seed).expect("model"));
        let x = input(&model, batch, seed);
        let y = model.predict(&x).expect("reference");
        let dy = y.mapv(|v| (v * 7.0).sin());
        let want = grads(&model, Engine::Interp, 1, WideTier::Auto, &x, &dy);
        let off = grads(&model, Engine::Jit, 2, WideTier::Off, &x, &dy);
        prop_assert!(want.iter().zip(&off).all(|(a, b)| same_bits(a, b)), "f32x4 JIT");
        for threads in [1, 2] {
            let got = grads(&model, Engine::Jit, threads, WideTier::Auto, &x, &dy);
            prop_assert!(want.iter().zip(&got).all(|(a, b)| same_bits(a, b)), "wide JIT, {} threads ({:?})", threads, sp);
        }
    }
}

/// deepface-like layers get wide `dK` tiles on a CPU with a tier.
#[test]
fn kernel_gradients_get_wide_tiles() {
    let sp = Spec {
        rank: 2,
        cl: true,
        spatial: vec![12, 12],
        c: 16,
        f: 16,
        k: 3,
        s: 1,
        d: 1,
        same: false,
        bias: true,
    };
    let g = graph(&sp).expect("graph");
    for tier in host_tiers() {
        let l = lcjit::lower::grad::lower_gradients_for(
            &g,
            8,
            lcjit::lower::grad::Mode::Training,
            Some(tier),
        )
        .expect("lower");
        let dk = l
            .backward
            .kernels
            .iter()
            .find(|k| k.name.ends_with("backward_dk"))
            .expect("dk kernel");
        assert!(
            dk.schedule
                .as_deref()
                .unwrap_or("")
                .contains(&format!("wide({tier}")),
            "{:?}",
            dk.schedule
        );
        assert!(has_wide(&l.forward), "{tier}: forward phase");
    }
}

/// Dense layers at 8 or more rows whose units fill wide registers get wide tiles (with
/// a remainder row tile, and the matrix-vector schedule's input blocks from 512
/// inputs on); every executor agrees bit for bit, on 16-bit weights too.
#[test]
fn dense_tiles_are_wide_and_agree() {
    use lcjit::graph::{Activation, Dense, Op, WeightOptions};
    for (inputs, units, batch, dtype) in [
        (37, 16, 8, Dtype::F32),
        (64, 32, 19, Dtype::F32),
        (600, 48, 12, Dtype::Bf16),
        (20, 40, 9, Dtype::F16),
        (70, 8, 16, Dtype::F32),
    ] {
        let op = Op::Dense(Dense {
            units,
            activation: Activation::Tanh,
            use_bias: true,
            kernel_initializer: common::uniform(-0.5, 0.5),
            bias_initializer: common::uniform(-0.5, 0.5),
            options: WeightOptions::default(),
        });
        let g = common::one(&[inputs], op);
        let model = Arc::new(Model::from_graph(g, 11).expect("model"));
        let x = input(&model, batch, 3);
        let interp = compiled(&model, Engine::Interp, 1, batch, dtype, WideTier::Auto)
            .predict(&x)
            .expect("interp");
        let off = compiled(&model, Engine::Jit, 2, batch, dtype, WideTier::Off)
            .predict(&x)
            .expect("off");
        assert!(same_bits(&off, &interp), "{inputs}x{units}: f32x4 JIT");
        for tier in host_tiers() {
            let c = compiled(&model, Engine::Jit, 2, batch, dtype, WideTier::Only(tier));
            let module = c
                .prepared(batch)
                .expect("prepared")
                .program
                .module()
                .clone();
            assert_eq!(
                has_wide(&module),
                units.is_multiple_of(tier.lanes()),
                "{inputs}x{units} {tier}: wide loop scheduled"
            );
            let y = c.predict(&x).expect("wide");
            assert!(same_bits(&y, &interp), "{inputs}x{units} {tier}: wide JIT");
        }
    }
}
