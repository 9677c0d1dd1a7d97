//! Tests of the Cranelift back end: every kernel shape is compiled and run, and the
//! buffers are compared with the loop-IR interpreter bit for bit (NaN matches any NaN)
//! when the JIT fuses multiply-adds like the interpreter does.
//!
//! Invariant: every module built here passes `loop_ir::verify` unless a test says it
//! must not.

use super::{CodegenOptions, CompiledModule, OptLevel};
use crate::loop_ir::{
    bin, fma, for_, interp, load, load_local, un, Affine, BinOp, BufRole, Buffer, CmpOp, Expr,
    Kernel, KernelBuilder, LoopKind, Module, Stmt, UnOp,
};

fn buf(name: &str, len: usize, role: BufRole) -> Buffer {
    Buffer {
        name: name.into(),
        len,
        role,
        dtype: crate::loop_ir::Dtype::F32,
    }
}

fn v(x: u32) -> Affine {
    Affine::var(x)
}

fn store(b: u32, index: Affine, value: Expr) -> Stmt {
    Stmt::Store {
        buf: b,
        index,
        value,
    }
}

fn set_local(local: u32, index: Affine, value: Expr) -> Stmt {
    Stmt::SetLocal {
        local,
        index,
        value,
    }
}

/// Deterministic test data with negatives, large magnitudes and zeros.
fn data(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            ((s % 20_001) as f32 - 10_000.0) / 2_500.0
        })
        .collect()
}

fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// Runs `module` with the interpreter and the JIT (at every opt level and the given
/// thread counts) from the same initial buffers, and compares.
fn check(module: &Module, init: &[Vec<f32>], threads: &[usize]) {
    let mut want = init.to_vec();
    interp::run(module, &mut want).expect("interpreter");
    for opt_level in [OptLevel::None, OptLevel::Speed] {
        let opts = CodegenOptions {
            opt_level,
            ..Default::default()
        };
        let cm = CompiledModule::compile(module, &opts).expect("compile");
        for &t in threads {
            let mut got = init.to_vec();
            let mut slices: Vec<&mut [f32]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
            cm.run(&mut slices, t).expect("run");
            for (bi, (g, w)) in got.iter().zip(&want).enumerate() {
                for (i, (&g, &w)) in g.iter().zip(w).enumerate() {
                    let ok = if cm.uses_fma() {
                        same_bits(g, w)
                    } else {
                        same_bits(g, w) || (g - w).abs() <= 1e-5 * w.abs().max(1.0)
                    };
                    assert!(
                        ok,
                        "{opt_level:?} threads {t}: buffer {bi}[{i}]: jit {g:e} ({:#x}) interp {w:e} ({:#x})",
                        g.to_bits(),
                        w.to_bits()
                    );
                }
            }
        }
    }
}

fn module(buffers: Vec<Buffer>, kernels: Vec<Kernel>) -> Module {
    Module {
        name: "t".into(),
        buffers,
        kernels,
    }
}

#[test]
fn scalar_loop_and_partial_unroll() {
    // y[i] = x[i]·w[i] + b[0] (serial); z[i] = x[i] − 1 (Unroll(4) over 20: a loop of 5
    // steps with 4 copies).
    let mut kb = KernelBuilder::new("scalar");
    let (i, j) = (kb.var("i"), kb.var("j"));
    let k = kb.finish(vec![
        for_(
            i,
            37,
            LoopKind::Serial,
            vec![store(
                3,
                v(i),
                fma(load(0, v(i)), load(1, v(i)), load(2, Affine::constant(0))),
            )],
        ),
        for_(
            j,
            20,
            LoopKind::Unroll(4),
            vec![store(
                4,
                v(j).plus(3),
                bin(BinOp::Sub, load(0, v(j).plus(17)), Expr::Const(1.0)),
            )],
        ),
    ]);
    let m = module(
        vec![
            buf("x", 37, BufRole::Input(0)),
            buf("w", 37, BufRole::Param(0)),
            buf("b", 1, BufRole::Param(1)),
            buf("y", 37, BufRole::Output(0)),
            buf("z", 23, BufRole::Output(1)),
        ],
        vec![k],
    );
    let init = vec![
        data(37, 1),
        data(37, 2),
        data(1, 3),
        vec![0.0; 37],
        vec![0.0; 23],
    ];
    check(&m, &init, &[1]);
}

#[test]
fn vector_loops_broadcast_and_contiguous() {
    // y[i, j] = x[i]·w[j] + 0.5 with j a vector loop of 32 (a loop) and of 8 (unrolled).
    let mut out = Vec::new();
    for (n, name) in [(32u64, "long"), (8, "short")] {
        let mut kb = KernelBuilder::new(name);
        let (i, j) = (kb.var("i"), kb.var("j"));
        let y = if n == 32 { 2 } else { 3 };
        out.push(kb.finish(vec![for_(
            i,
            5,
            LoopKind::Serial,
            vec![for_(
                j,
                n,
                LoopKind::Vector(4),
                vec![store(
                    y,
                    v(i).scale(n as i64).plus_affine(&v(j)),
                    fma(load(0, v(i)), load(1, v(j)), Expr::Const(0.5)),
                )],
            )],
        )]));
    }
    let m = module(
        vec![
            buf("x", 5, BufRole::Input(0)),
            buf("w", 32, BufRole::Param(0)),
            buf("y", 160, BufRole::Output(0)),
            buf("y2", 40, BufRole::Output(1)),
        ],
        out,
    );
    let init = vec![data(5, 4), data(32, 5), vec![0.0; 160], vec![0.0; 40]];
    check(&m, &init, &[1]);
}

/// A LocallyConnected1D-like kernel: parallel over positions, a serial reduction over
/// window × channels, an unrolled batch tile × vector filters accumulating in a local
/// tile, and bias + relu fused into the store.
fn lc_module(p: u64, bt: u64, f: u64, kc: u64) -> Module {
    let (pi, fi) = (p as i64, f as i64);
    let l = p + kc; // input length (window of kc starting at p)
    let mut kb = KernelBuilder::new("lc");
    let (vp, vb0, vf0, vr, vb1, vf1, vb2, vf2) = (
        kb.var("p"),
        kb.var("b0"),
        kb.var("f0"),
        kb.var("r"),
        kb.var("b1"),
        kb.var("f1"),
        kb.var("b2"),
        kb.var("f2"),
    );
    let acc = kb.local("acc", (bt * f) as usize);
    let tile = |b: u32, fv: u32| v(b).scale(fi).plus_affine(&v(fv));
    let k = kb.finish(vec![for_(
        vp,
        p,
        LoopKind::Parallel,
        vec![
            for_(
                vb0,
                bt,
                LoopKind::Unroll(bt as u32),
                vec![for_(
                    vf0,
                    f,
                    LoopKind::Vector(4),
                    vec![set_local(acc, tile(vb0, vf0), Expr::Const(0.0))],
                )],
            ),
            for_(
                vr,
                kc,
                LoopKind::Serial,
                vec![for_(
                    vb1,
                    bt,
                    LoopKind::Unroll(bt as u32),
                    vec![for_(
                        vf1,
                        f,
                        LoopKind::Vector(4),
                        vec![set_local(
                            acc,
                            tile(vb1, vf1),
                            fma(
                                load(
                                    0,
                                    v(vb1)
                                        .scale(l as i64)
                                        .plus_affine(&v(vp))
                                        .plus_affine(&v(vr)),
                                ),
                                load(
                                    1,
                                    v(vp)
                                        .scale(kc as i64 * fi)
                                        .plus_affine(&v(vr).scale(fi))
                                        .plus_affine(&v(vf1)),
                                ),
                                load_local(acc, tile(vb1, vf1)),
                            ),
                        )],
                    )],
                )],
            ),
            for_(
                vb2,
                bt,
                LoopKind::Unroll(bt as u32),
                vec![for_(
                    vf2,
                    f,
                    LoopKind::Vector(4),
                    vec![store(
                        3,
                        v(vb2)
                            .scale(pi * fi)
                            .plus_affine(&v(vp).scale(fi))
                            .plus_affine(&v(vf2)),
                        un(
                            UnOp::Relu,
                            bin(
                                BinOp::Add,
                                load_local(acc, tile(vb2, vf2)),
                                load(2, v(vp).scale(fi).plus_affine(&v(vf2))),
                            ),
                        ),
                    )],
                )],
            ),
        ],
    )]);
    module(
        vec![
            buf("x", (bt * l) as usize, BufRole::Input(0)),
            buf("w", (p * kc * f) as usize, BufRole::Param(0)),
            buf("bias", (p * f) as usize, BufRole::Param(1)),
            buf("y", (bt * p * f) as usize, BufRole::Output(0)),
        ],
        vec![k],
    )
}

fn lc_init(m: &Module) -> Vec<Vec<f32>> {
    m.buffers
        .iter()
        .enumerate()
        .map(|(i, b)| match b.role {
            BufRole::Output(_) => vec![0.0; b.len],
            _ => data(b.len, 10 + i as u32),
        })
        .collect()
}

#[test]
fn lc_kernel_matches_for_every_thread_count() {
    let m = lc_module(13, 2, 8, 12);
    check(&m, &lc_init(&m), &[1, 2, 3, 7]);
}

#[test]
fn lc_kernel_with_long_vector_loop_and_odd_tile() {
    // 3 batch rows × 20 filters (5 vector groups, fully unrolled because a local uses it).
    let m = lc_module(5, 3, 20, 4);
    check(&m, &lc_init(&m), &[1, 2]);
}

#[test]
fn if_guarded_clipped_window() {
    // Padded 1D convolution: y[p] = Σ_k [0 <= p+k−2 < 10] x[p+k−2]·w[k], scalar with a
    // scalar local, and a vector version over 8 filters (x broadcast, w contiguous).
    let mut kb = KernelBuilder::new("pad");
    let (p, k) = (kb.var("p"), kb.var("k"));
    let acc = kb.local("acc", 8);
    let idx = v(p).plus_affine(&v(k)).plus(-2);
    let scalar = kb.finish(vec![for_(
        p,
        12,
        LoopKind::Parallel,
        vec![
            set_local(acc, Affine::constant(0), Expr::Const(0.0)),
            for_(
                k,
                5,
                LoopKind::Serial,
                vec![Stmt::If {
                    conds: vec![(idx.clone(), 0, 10)],
                    body: vec![set_local(
                        acc,
                        Affine::constant(0),
                        fma(
                            load(0, idx.clone()),
                            load(1, v(k).scale(8)),
                            load_local(acc, Affine::constant(0)),
                        ),
                    )],
                }],
            ),
            store(2, v(p), load_local(acc, Affine::constant(0))),
        ],
    )]);
    let mut kb = KernelBuilder::new("pad_vec");
    let (p, k, f2, f3) = (kb.var("p"), kb.var("k"), kb.var("f2"), kb.var("f3"));
    let acc = kb.local("acc", 8);
    let idx = v(p).plus_affine(&v(k)).plus(-2);
    let vector = kb.finish(vec![for_(
        p,
        12,
        LoopKind::Parallel,
        vec![
            for_(
                k,
                5,
                LoopKind::Unroll(5),
                vec![Stmt::If {
                    conds: vec![(idx.clone(), 0, 10)],
                    body: vec![for_(
                        f2,
                        8,
                        LoopKind::Vector(4),
                        vec![set_local(
                            acc,
                            v(f2),
                            fma(
                                load(0, idx.clone()),
                                load(1, v(k).scale(8).plus_affine(&v(f2))),
                                load_local(acc, v(f2)),
                            ),
                        )],
                    )],
                }],
            ),
            for_(
                f3,
                8,
                LoopKind::Vector(4),
                vec![
                    store(3, v(p).scale(8).plus_affine(&v(f3)), load_local(acc, v(f3))),
                    set_local(acc, v(f3), Expr::Const(0.0)),
                ],
            ),
        ],
    )]);
    let m = module(
        vec![
            buf("x", 10, BufRole::Input(0)),
            buf("w", 40, BufRole::Param(0)),
            buf("y", 12, BufRole::Output(0)),
            buf("yv", 96, BufRole::Output(1)),
        ],
        vec![scalar, vector],
    );
    let init = vec![data(10, 7), data(40, 8), vec![0.0; 12], vec![0.0; 96]];
    check(&m, &init, &[1, 3]);
}

/// Inputs that exercise every branch of the transcendental sequences.
fn op_inputs() -> Vec<f32> {
    let mut x = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        -0.5,
        2.0,
        -3.75,
        10.0,
        -10.0,
        88.0,
        89.0,
        -87.0,
        -100.0,
        1e30,
        -1e30,
        1e-40,
        -1e-40,
        f32::MIN_POSITIVE,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.5e-5,
        1.41,
        std::f32::consts::SQRT_2,
        f32::from_bits(std::f32::consts::SQRT_2.to_bits() + 1),
        std::f32::consts::FRAC_1_SQRT_2,
        1e-3,
        7.0,
    ];
    x.extend(data(64 - x.len(), 99));
    x
}

#[test]
fn every_op_scalar_and_vector() {
    let n = 64u64;
    let unops = [
        UnOp::Neg,
        UnOp::Abs,
        UnOp::Sqrt,
        UnOp::Relu,
        UnOp::Exp,
        UnOp::Log,
        UnOp::Tanh,
        UnOp::Sigmoid,
        UnOp::Erf,
        UnOp::RoundF16,
        UnOp::RoundBf16,
    ];
    let binops = [
        BinOp::Add,
        BinOp::Sub,
        BinOp::Mul,
        BinOp::Div,
        BinOp::Max,
        BinOp::Min,
    ];
    let cmps = [CmpOp::Lt, CmpOp::Le, CmpOp::Gt, CmpOp::Ge];
    let mut exprs: Vec<Box<dyn Fn(Affine) -> Expr>> = Vec::new();
    for op in unops {
        exprs.push(Box::new(move |i| un(op, load(0, i))));
    }
    for op in binops {
        exprs.push(Box::new(move |i: Affine| {
            bin(op, load(0, i.clone()), load(1, i))
        }));
    }
    for cmp in cmps {
        exprs.push(Box::new(move |i: Affine| Expr::Select {
            cmp,
            a: Box::new(load(0, i.clone())),
            b: Box::new(load(1, i.clone())),
            t: Box::new(load(1, i)),
            f: Box::new(Expr::Const(-2.5)),
        }));
    }
    exprs.push(Box::new(|i: Affine| {
        fma(load(0, i.clone()), load(1, i), Expr::Const(0.25))
    }));
    let mut kernels = Vec::new();
    let mut buffers = vec![
        buf("x", n as usize, BufRole::Input(0)),
        buf("y", n as usize, BufRole::Input(1)),
    ];
    for (e, make) in exprs.iter().enumerate() {
        for kind in [LoopKind::Serial, LoopKind::Vector(4)] {
            let out = buffers.len() as u32;
            buffers.push(buf(
                &format!("o{e}{kind:?}"),
                n as usize,
                BufRole::Output(out as usize),
            ));
            let mut kb = KernelBuilder::new(format!("op{e}_{kind:?}"));
            let i = kb.var("i");
            kernels.push(kb.finish(vec![for_(i, n, kind, vec![store(out, v(i), make(v(i)))])]));
        }
    }
    let m = module(buffers, kernels);
    let mut init: Vec<Vec<f32>> = m.buffers.iter().map(|b| vec![0.0; b.len]).collect();
    init[0] = op_inputs();
    init[1] = op_inputs().into_iter().rev().collect();
    check(&m, &init, &[1]);
}

#[test]
fn repeated_compiles_free_memory() {
    let m = lc_module(4, 2, 8, 3);
    let init = lc_init(&m);
    for _ in 0..100 {
        let cm = CompiledModule::compile(&m, &CodegenOptions::default()).expect("compile");
        let mut bufs = init.clone();
        let mut s: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
        cm.run(&mut s, 2).expect("run");
    }
}

#[test]
fn text_and_errors() {
    fn assert_sync<T: Send + Sync>() {}
    assert_sync::<CompiledModule>();
    let m = lc_module(4, 1, 4, 2);
    let opts = CodegenOptions {
        keep_text: true,
        ..Default::default()
    };
    let cm = CompiledModule::compile(&m, &opts).expect("compile");
    assert!(cm.clif_text().contains("function"), "{}", cm.clif_text());
    assert!(!cm.asm_text().is_empty());
    assert!(cm.compile_ms() >= 0.0);
    // Wrong buffer count and length.
    let mut bufs = lc_init(&m);
    let mut s: Vec<&mut [f32]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
    assert!(cm.run(&mut s[..3], 1).unwrap_err().is_internal());
    let mut short = lc_init(&m);
    short[0].pop();
    let mut s: Vec<&mut [f32]> = short.iter_mut().map(|b| b.as_mut_slice()).collect();
    assert!(cm.run(&mut s, 1).is_err());
    // Unverified input (out-of-bounds store) is refused.
    let mut kb = KernelBuilder::new("oob");
    let i = kb.var("i");
    let bad = module(
        vec![buf("y", 4, BufRole::Output(0))],
        vec![kb.finish(vec![for_(
            i,
            5,
            LoopKind::Serial,
            vec![store(0, v(i), Expr::Const(1.0))],
        )])],
    );
    assert!(CompiledModule::compile(&bad, &CodegenOptions::default()).is_err());
    // A parallel loop mixed with another top-level statement is an internal error.
    let mut kb = KernelBuilder::new("mixed");
    let (i, j) = (kb.var("i"), kb.var("j"));
    let mixed = module(
        vec![buf("y", 4, BufRole::Output(0))],
        vec![kb.finish(vec![
            for_(
                i,
                4,
                LoopKind::Parallel,
                vec![store(0, v(i), Expr::Const(1.0))],
            ),
            for_(
                j,
                4,
                LoopKind::Serial,
                vec![store(0, v(j), Expr::Const(2.0))],
            ),
        ])],
    );
    let err = CompiledModule::compile(&mixed, &CodegenOptions::default()).err();
    assert!(err.is_some_and(|e| e.is_internal()));
}

#[test]
fn fma_choice_is_observable() {
    // Host detection fuses on this project's machines; forcing fmul+fadd must still be
    // close to the interpreter but (for a 12-term reduction) not bitwise equal everywhere,
    // which shows the bitwise comparisons above are sensitive.
    let m = lc_module(13, 2, 8, 12);
    let init = lc_init(&m);
    let mut want = init.clone();
    interp::run(&m, &mut want).expect("interpreter");
    let opts = CodegenOptions {
        use_fma: Some(false),
        ..Default::default()
    };
    let cm = CompiledModule::compile(&m, &opts).expect("compile");
    assert!(!cm.uses_fma());
    let mut got = init.clone();
    let mut s: Vec<&mut [f32]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
    cm.run(&mut s, 2).expect("run");
    let (g, w) = (&got[3], &want[3]);
    assert!(g
        .iter()
        .zip(w)
        .all(|(g, w)| (g - w).abs() <= 1e-4 * w.abs().max(1.0)));
    assert!(g.iter().zip(w).any(|(g, w)| g.to_bits() != w.to_bits()));
    assert!(w.iter().any(|&x| x > 0.0));
    let fused = CompiledModule::compile(&m, &CodegenOptions::default()).expect("compile");
    assert_eq!(fused.uses_fma(), super::isa::host_has_fma());
}

/// An LC kernel large enough (work ≥ `PARALLEL_MIN_WORK`) that `run` really splits it.
fn big_lc_module(p: u64, bt: u64, f: u64, kc: u64) -> Module {
    let m = lc_module(p, bt, f, kc);
    assert!(super::runtime::work_of(&m.kernels[0]) >= super::runtime::PARALLEL_MIN_WORK);
    m
}

#[test]
fn split_lc_kernel_matches_for_every_thread_count() {
    let m = big_lc_module(257, 3, 16, 24);
    check(&m, &lc_init(&m), &[1, 2, 3, 5, 8, 16, 300]);
}

/// Runs `cm` on `init` with `threads` threads and returns the buffers.
fn run_once(cm: &CompiledModule, init: &[Vec<f32>], threads: usize) -> Vec<Vec<f32>> {
    let mut got = init.to_vec();
    let mut s: Vec<&mut [f32]> = got.iter_mut().map(|b| b.as_mut_slice()).collect();
    cm.run(&mut s, threads).expect("run");
    got
}

fn bits(b: &[Vec<f32>]) -> Vec<Vec<u32>> {
    b.iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

#[test]
fn concurrent_runs_on_two_modules_both_progress() {
    use std::sync::{mpsc, Arc};
    use std::time::Duration;
    let mods = [big_lc_module(257, 3, 16, 24), big_lc_module(301, 2, 16, 40)];
    let mut jobs = Vec::new();
    for m in &mods {
        let cm = Arc::new(CompiledModule::compile(m, &CodegenOptions::default()).expect("compile"));
        let init = Arc::new(lc_init(m));
        let want = Arc::new(bits(&run_once(&cm, &init, 1)));
        jobs.push((cm, init, want));
    }
    // Two callers per module (one pair on each module at the same time, and two callers
    // sharing one module), with different thread counts.
    let (tx, rx) = mpsc::channel();
    let plan = [(0, 2), (1, 2), (0, 3), (1, 5)];
    for (caller, &(which, threads)) in plan.iter().enumerate() {
        let (cm, init, want) = jobs[which].clone();
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut ok = true;
            for _ in 0..60 {
                ok &= bits(&run_once(&cm, &init, threads)) == *want;
            }
            let _ = tx.send((caller, ok));
        });
    }
    drop(tx);
    let mut done = vec![false; plan.len()];
    for _ in 0..plan.len() {
        // A deadlock (or one caller starving the others) fails here instead of hanging.
        let (caller, ok) = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("every concurrent caller finishes");
        assert!(ok, "caller {caller}: results differ from one thread");
        done[caller] = true;
    }
    assert!(done.iter().all(|&d| d));
}

#[test]
fn calls_reuse_the_pool_threads() {
    let m = big_lc_module(257, 3, 16, 24);
    let cm = CompiledModule::compile(&m, &CodegenOptions::default()).expect("compile");
    let init = lc_init(&m);
    let want = bits(&run_once(&cm, &init, 2));
    let before = super::pool::workers_started();
    for _ in 0..100 {
        assert_eq!(bits(&run_once(&cm, &init, 2)), want);
    }
    // Scoped threads would have started 100; other tests running at the same time may
    // start a few teams of their own.
    let started = super::pool::workers_started() - before;
    assert!(
        started < 40,
        "{started} worker threads started for 100 calls"
    );
}

/// A kernel in Rust with the JIT kernels' ABI: stores `start` (the first iteration of the
/// chunk) into every element `start..end` of buffer 0, so the buffer shows the partition.
unsafe extern "C" fn mark_chunks(bufs: *const *mut f32, start: i64, end: i64) {
    // SAFETY: the test passes one buffer of `extent` elements and `Team::run` calls with
    // `0 ≤ start < end ≤ extent`; chunks are disjoint, so no two threads write one element.
    unsafe {
        let y = *bufs;
        for i in start..end {
            *y.add(i as usize) = start as f32;
        }
    }
}

#[test]
fn partition_is_fixed_even_when_workers_fail_to_start() {
    use super::pool::{chunk, BufPtrs, Team};
    for (wanted, started) in [(3, 3), (3, 1), (3, 0), (7, 2), (1, 1)] {
        let team = Team::start(wanted, started);
        for n in 1..=9u64 {
            for extent in [n, n + 1, 10, 97, 1000] {
                let mut y = vec![-1.0f32; extent as usize];
                let ptrs = [y.as_mut_ptr()];
                team.run(mark_chunks, BufPtrs(ptrs.as_ptr()), extent, n);
                for t in 0..n {
                    let (a, b) = (chunk(t, extent, n), chunk(t + 1, extent, n));
                    assert!(
                        y[a as usize..b as usize].iter().all(|&v| v == a as f32),
                        "workers {wanted} (started {started}), n {n}, extent {extent}: chunk {t}"
                    );
                }
            }
        }
    }
}
