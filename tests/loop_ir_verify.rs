//! The loop-IR verifier rejects ill-formed programs and lists every violation: out-of-bounds
//! accesses, variables bound twice or used outside their loop, misplaced parallel loops,
//! illegal vector loops, stores to read-only buffers, locals that cannot live in registers.

use lcjit::loop_ir::{
    for_, load, load_local, verify::verify, Affine, BufRole, Buffer, Expr, KernelBuilder, LoopKind,
    Module, Stmt,
};

fn module(kernel: lcjit::loop_ir::Kernel) -> Module {
    Module {
        name: "t".into(),
        buffers: vec![
            Buffer {
                name: "x".into(),
                len: 16,
                role: BufRole::Input(0),
                dtype: lcjit::loop_ir::Dtype::F32,
            },
            Buffer {
                name: "y".into(),
                len: 16,
                role: BufRole::Output(0),
                dtype: lcjit::loop_ir::Dtype::F32,
            },
        ],
        kernels: vec![kernel],
    }
}

fn rejected(m: &Module) -> String {
    match verify(m) {
        Err(lcjit::Error::Internal { detail }) => detail,
        other => panic!("expected a verifier error, got {other:?}"),
    }
}

#[test]
fn accepts_a_well_formed_program() {
    let mut kb = KernelBuilder::new("ok");
    let (i, v) = (kb.var("i"), kb.var("v"));
    let idx = Affine::var(i).scale(4).plus_term(v, 1);
    let k = kb.finish(vec![for_(
        i,
        4,
        LoopKind::Parallel,
        vec![for_(
            v,
            4,
            LoopKind::Vector(4),
            vec![Stmt::Store {
                buf: 1,
                index: idx.clone(),
                value: load(0, idx),
            }],
        )],
    )]);
    assert!(verify(&module(k)).is_ok());
}

#[test]
fn rejects_out_of_bounds_and_lists_every_violation() {
    let mut kb = KernelBuilder::new("oob");
    let i = kb.var("i");
    let k = kb.finish(vec![for_(
        i,
        17,
        LoopKind::Serial,
        vec![
            Stmt::Store {
                buf: 1,
                index: Affine::var(i),
                value: load(0, Affine::var(i).plus(-1)),
            },
            Stmt::Store {
                buf: 0,
                index: Affine::constant(0),
                value: Expr::Const(1.0),
            },
        ],
    )]);
    let e = rejected(&module(k));
    assert!(e.contains("3 problem"), "{e}");
    assert!(e.contains("outside [0, 16)"), "{e}");
    assert!(e.contains("read-only"), "{e}");
}

#[test]
fn rejects_structural_errors() {
    // A variable bound twice, used outside its loop, a nested parallel loop, a vector loop
    // with a bad extent and a strided store, and a local indexed by a serial loop.
    let mut kb = KernelBuilder::new("bad");
    let (i, j, v) = (kb.var("i"), kb.var("j"), kb.var("v"));
    let acc = kb.local("acc", 4);
    let k = kb.finish(vec![
        for_(
            i,
            2,
            LoopKind::Serial,
            vec![
                for_(i, 2, LoopKind::Parallel, vec![]),
                for_(
                    v,
                    6,
                    LoopKind::Vector(4),
                    vec![Stmt::Store {
                        buf: 1,
                        index: Affine::constant(0),
                        value: Expr::Const(0.0),
                    }],
                ),
                Stmt::SetLocal {
                    local: acc,
                    index: Affine::var(i),
                    value: load_local(acc, Affine::constant(0)),
                },
            ],
        ),
        Stmt::Store {
            buf: 1,
            index: Affine::var(j),
            value: Expr::Const(0.0),
        },
    ]);
    let e = rejected(&module(k));
    for needle in [
        "bound twice",
        "not a top-level loop",
        "not a multiple of 4",
        "lanes would collide",
        "neither a vector nor a fully unrolled loop",
        "outside its loop",
    ] {
        assert!(e.contains(needle), "missing '{needle}' in: {e}");
    }
}

#[test]
fn guards_prove_clipped_windows() {
    // y[i] = x[i + t - 1] for taps inside the input only: in bounds thanks to the guard.
    let mut kb = KernelBuilder::new("guard");
    let (i, t) = (kb.var("i"), kb.var("t"));
    let pos = Affine::var(i).plus_term(t, 1).plus(-1);
    let body = |guarded: bool| {
        let store = Stmt::Store {
            buf: 1,
            index: Affine::var(i),
            value: load(0, pos.clone()),
        };
        let inner = if guarded {
            vec![Stmt::If {
                conds: vec![(pos.clone(), 0, 16)],
                body: vec![store],
            }]
        } else {
            vec![store]
        };
        vec![for_(
            i,
            16,
            LoopKind::Serial,
            vec![for_(t, 3, LoopKind::Serial, inner)],
        )]
    };
    let mut kb2 = KernelBuilder::new("guard");
    let _ = (kb2.var("i"), kb2.var("t"));
    assert!(verify(&module(kb.finish(body(true)))).is_ok());
    assert!(rejected(&module(kb2.finish(body(false)))).contains("outside [0, 16)"));
}

/// Nested guards sharing a variable: the index `4·(i + t) + l` is bounded by the outer
/// guard on `i + t`, which the inner guard on `2·i` (substituted first, innermost
/// first) would take `i` from; the verifier tries each guard first. A guard that does
/// not bound the index still leaves it rejected.
#[test]
fn guards_sharing_a_variable_are_tried_in_each_order() {
    let build = |outer_hi: i64| {
        let mut kb = KernelBuilder::new("nested");
        let (i, t, l) = (kb.var("i"), kb.var("t"), kb.var("l"));
        let load_at = Affine::var(i).plus_term(t, 1).scale(4).plus_term(l, 1);
        let store = Stmt::Store {
            buf: 1,
            index: Affine::var(l),
            value: load(0, load_at),
        };
        let inner = Stmt::If {
            conds: vec![(Affine::var(i).scale(2), 0, 9)],
            body: vec![for_(l, 4, LoopKind::Serial, vec![store])],
        };
        let outer = Stmt::If {
            conds: vec![(Affine::var(i).plus_term(t, 1), 0, outer_hi)],
            body: vec![inner],
        };
        module(kb.finish(vec![for_(
            i,
            6,
            LoopKind::Serial,
            vec![for_(t, 2, LoopKind::Serial, vec![outer])],
        )]))
    };
    assert!(verify(&build(4)).is_ok());
    assert!(rejected(&build(5)).contains("outside [0, 16)"));
}

#[test]
fn rejects_16_bit_buffers_that_are_written() {
    let mut m = module({
        let mut kb = KernelBuilder::new("store16");
        let i = kb.var("i");
        kb.finish(vec![for_(
            i,
            16,
            LoopKind::Serial,
            vec![Stmt::Store {
                buf: 1,
                index: Affine::var(i),
                value: load(0, Affine::var(i)),
            }],
        )])
    });
    m.buffers[1].dtype = lcjit::loop_ir::Dtype::Bf16;
    let e = rejected(&m);
    assert!(e.contains("stored in bf16 but is not read-only"), "{e}");
    // Read-only 16-bit buffers are fine to load from.
    m.buffers[1].dtype = lcjit::loop_ir::Dtype::F32;
    m.buffers[0].dtype = lcjit::loop_ir::Dtype::F16;
    assert!(verify(&m).is_ok());
}

/// A wide nest (see `loop_ir::micro`): `for t wide(tier) { for r unroll { for f vector(4)
/// { acc[16·r + f] = fma(x[r + t], x[f], acc[16·r + f]) } } }`, with `rows` rows and
/// the update built by `update` from (bcast, vector, acc) indices.
fn wide_nest(
    tier: lcjit::loop_ir::micro::Tier,
    rows: u64,
    update: impl Fn(Affine, Affine, Affine) -> Stmt,
) -> Module {
    let mut kb = KernelBuilder::new("wide");
    let (t, r, f) = (kb.var("t"), kb.var("r"), kb.var("f"));
    let acc = kb.local("acc", 16 * rows as usize);
    let at = Affine::var(r).scale(16).plus_term(f, 1);
    let body = update(Affine::var(r).plus_term(t, 1), Affine::var(f), at);
    let _ = acc;
    let k = kb.finish(vec![for_(
        t,
        1,
        LoopKind::Wide(lcjit::loop_ir::micro::Wide::new(tier)),
        vec![for_(
            r,
            rows,
            LoopKind::Unroll(rows as u32),
            vec![for_(f, 16, LoopKind::Vector(4), vec![body])],
        )],
    )]);
    module(k)
}

fn fma_update(b: Affine, v: Affine, at: Affine) -> Stmt {
    Stmt::SetLocal {
        local: 0,
        index: at.clone(),
        value: lcjit::loop_ir::fma(load(0, b), load(0, v), load_local(0, at)),
    }
}

#[test]
fn checks_the_shape_of_wide_nests() {
    use lcjit::loop_ir::micro::Tier;
    // Well formed, under both tiers.
    for tier in [Tier::Avx2, Tier::Avx512] {
        let m = wide_nest(tier, 2, fma_update);
        assert!(verify(&m).is_ok(), "{tier}: {:?}", verify(&m));
        assert!(lcjit::loop_ir::print::module_text(&m).contains(&format!("wide({tier})")));
    }
    let cases: Vec<(&str, Module)> = vec![
        (
            "does not fit",
            // 12 rows × 2 ymm + 2 shared + 1 broadcast > 16 registers.
            wide_nest(Tier::Avx2, 12, fma_update),
        ),
        (
            "contiguous in the lanes and shared by the rows",
            wide_nest(Tier::Avx512, 2, |b, v, at| {
                fma_update(b.clone(), v.plus_affine(&b), at)
            }),
        ),
        (
            "fused multiply-add",
            wide_nest(Tier::Avx512, 2, |b, _, at| Stmt::SetLocal {
                local: 0,
                index: at,
                value: load(0, b),
            }),
        ),
        (
            "add to the element it sets",
            wide_nest(Tier::Avx512, 2, |b, v, at| Stmt::SetLocal {
                local: 0,
                index: at.clone(),
                value: lcjit::loop_ir::fma(
                    load(0, b),
                    load(0, v),
                    load_local(0, at.plus_term(0, 1)),
                ),
            }),
        ),
        (
            "one accumulator update",
            wide_nest(Tier::Avx512, 2, |b, v, at| Stmt::If {
                conds: vec![(Affine::constant(0), 0, 1)],
                body: vec![fma_update(b, v, at)],
            }),
        ),
    ];
    for (want, m) in cases {
        let e = rejected(&m);
        assert!(
            e.contains("wide loop") && e.contains(want),
            "want '{want}': {e}"
        );
    }
}
