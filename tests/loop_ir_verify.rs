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
