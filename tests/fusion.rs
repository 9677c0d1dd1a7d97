//! Fusion of ZeroPadding and residual Add into LC kernels (`lower/fuse.rs`, issue 12
//! item 2): random residual stacks `x → ZeroPadding → LC → Add(·, x)` (1D and 2D, both
//! data formats where Keras has them, asymmetric zeros, F = C so the Add's shapes match,
//! LC first or second in the Add, activations), plus the shapes that must not fuse (the
//! padded tensor also read by another layer, an LC that is a model output, a three-input
//! Add). The fused program must give the unfused program's bits on the JIT (1 and 2
//! threads) and the interpreter, agree with the reference path, and have fewer kernels
//! exactly when something fused.

use lcjit::backend::Backend;
use lcjit::graph::{
    Activation, DataFormat, Graph, LocallyConnected, MergeKind, NodeId, Op, Padding, WeightOptions,
};
use lcjit::lower::Target;
use lcjit::Model;
use proptest::prelude::*;

mod common;

use common::uniform;

/// One residual block's shape.
#[derive(Clone, Debug)]
struct Block {
    rank: usize,
    cl: bool,
    side: usize,
    c: usize,
    k: usize,
    /// Zeros before each axis (the rest of `k - 1` after).
    before: usize,
    lc_first: bool,
    relu: bool,
    /// 0: fusable; 1: the padding also feeds a second LC whose output is added too;
    /// 2: the LC is also a model output; 3: a three-input Add.
    variant: u8,
}

fn lc(rank: usize, f: usize, k: usize, df: DataFormat, relu: bool) -> Op {
    Op::LocallyConnected(LocallyConnected {
        rank,
        filters: f,
        kernel: vec![k; rank],
        strides: vec![1; rank],
        dilation: vec![1; rank],
        padding: Padding::Valid,
        data_format: df,
        activation: if relu {
            Activation::Relu {
                alpha: 0.0,
                max_value: None,
                threshold: 0.0,
            }
        } else {
            Activation::Tanh
        },
        use_bias: true,
        implementation: 1,
        kernel_initializer: uniform(-0.5, 0.5),
        bias_initializer: uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    })
}

fn graph(b: &Block) -> Option<Graph> {
    let df = if b.cl {
        DataFormat::ChannelsLast
    } else {
        DataFormat::ChannelsFirst
    };
    let mut shape = vec![b.side; b.rank];
    if b.rank == 2 {
        shape[1] += 1;
    }
    if b.cl {
        shape.push(b.c);
    } else {
        shape.insert(0, b.c);
    }
    let mut g = Graph::new("residual");
    let x = g.add_input("x", shape).ok()?;
    let after = b.k - 1 - b.before;
    let pad = g
        .add(
            "pad",
            Op::ZeroPadding {
                rank: b.rank,
                pads: vec![(b.before, after); b.rank],
                data_format: df,
            },
            &[x],
        )
        .ok()?;
    let y = g.add("lc", lc(b.rank, b.c, b.k, df, b.relu), &[pad]).ok()?;
    let add = |g: &mut Graph, ins: &[NodeId]| g.add("add", Op::Merge(MergeKind::Add), ins);
    let out = match b.variant {
        1 => {
            let y2 = g
                .add("lc2", lc(b.rank, b.c, b.k, df, !b.relu), &[pad])
                .ok()?;
            let s = add(&mut g, &[y, x]).ok()?;
            g.add("add2", Op::Merge(MergeKind::Add), &[s, y2]).ok()?
        }
        3 => add(&mut g, &[y, x, x]).ok()?,
        _ if b.lc_first => add(&mut g, &[y, x]).ok()?,
        _ => add(&mut g, &[x, y]).ok()?,
    };
    g.outputs = if b.variant == 2 {
        vec![out, y]
    } else {
        vec![out]
    };
    Some(g)
}

/// Output 0 of the forward program of `g` on `backend`, and its kernels' names.
fn run(
    g: &Graph,
    model: &Model,
    x: &[f32],
    batch: usize,
    unfused: bool,
    backend: Backend,
    threads: usize,
) -> (Vec<f32>, Vec<String>) {
    let target = Target {
        tier: lcjit::WideTier::Auto.resolve().expect("tier"),
        unfused,
        ..Target::default()
    };
    let lowered = lcjit::lower::lower_forward_for(g, batch, target).expect("lower");
    let m = &lowered.module;
    let names = m.kernels.iter().map(|k| k.name.clone()).collect();
    (
        common::lowered::run(&lowered, model, x, backend, threads),
        names,
    )
}

fn check(b: &Block, batch: usize, seed: u64) -> Result<(), TestCaseError> {
    let Some(g) = graph(b) else {
        return Ok(());
    };
    let model = Model::from_graph(g.clone(), seed).expect("model");
    let mut shape = vec![batch];
    shape.extend_from_slice(model.input_shape());
    let xa = common::random(&shape, seed);
    let x: Vec<f32> = xa.iter().copied().collect();
    let (want, plain_kernels) = run(&g, &model, &x, batch, true, Backend::Interp, 1);
    let (fused, fused_kernels) = run(&g, &model, &x, batch, false, Backend::Interp, 1);
    let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits());
    prop_assert!(same(&fused, &want), "{:?}: fused interpreter differs", b);
    // Variants 0 and 1 fuse the (first) Add, 2 and 3 no Add; the padding fuses unless
    // that would cost the layer its wide tier (the microkernels need guard-free taps).
    let tier = lcjit::WideTier::Auto.resolve().expect("tier");
    let plan = lcjit::lower::fuse::plan(&g, batch, tier, lcjit::loop_ir::Dtype::F32);
    let adds = plan.residual.iter().flatten().count();
    prop_assert_eq!(
        adds,
        usize::from(b.variant <= 1),
        "{:?}: residual fusions",
        b
    );
    if tier.is_none() {
        prop_assert!(
            plan.padded.iter().flatten().count() >= 1,
            "{:?}: padding not fused",
            b
        );
    }
    for (id, node) in g.nodes.iter().enumerate() {
        let own = format!("{}.forward", node.name);
        let absorbed = plan.absorbed[id];
        prop_assert_eq!(
            fused_kernels.contains(&own),
            !absorbed && plain_kernels.contains(&own),
            "{:?}: kernel {} (absorbed {})",
            b,
            own,
            absorbed
        );
    }
    let reference = model.predict(&xa).expect("reference");
    let scale = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = reference
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    prop_assert!(err <= 1e-5 * scale, "{:?}: interp vs reference {}", b, err);
    for threads in [1, 2] {
        let (plain, _) = run(&g, &model, &x, batch, true, Backend::Jit, threads);
        let (jit, _) = run(&g, &model, &x, batch, false, Backend::Jit, threads);
        prop_assert!(
            same(&jit, &plain),
            "{:?}: fused JIT differs from unfused",
            b
        );
        if lcjit::backend::host_has_fma() {
            prop_assert!(same(&jit, &want), "{:?}: JIT differs from interpreter", b);
        }
    }
    Ok(())
}

fn block() -> impl Strategy<Value = Block> {
    (
        1usize..3,
        any::<bool>(),
        5usize..30,
        1usize..6,
        2usize..6,
        0usize..6,
    )
        .prop_flat_map(|(rank, cl, side, c, k, v)| {
            (
                Just((rank, cl || rank == 1, side, c, k)),
                0..k,
                any::<bool>(),
                any::<bool>(),
                Just(v.min(3) as u8),
            )
        })
        .prop_map(
            |((rank, cl, side, c, k), before, lc_first, relu, variant)| Block {
                rank,
                cl,
                side,
                c,
                k,
                before,
                lc_first,
                relu,
                variant,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn fused_residual_blocks_compute_the_unfused_bits(
        b in block(),
        batch in prop::sample::select(vec![1usize, 3, 4, 8, 32]),
        seed in 0u64..1000,
    ) {
        check(&b, batch, seed)?;
    }
}

/// genomic_residual_lc1d (four `ZeroPadding1D → LocallyConnected1D(F = 1) → Add`
/// blocks): 8 kernels fewer (no padding or Add kernel), the same bits.
#[test]
fn the_genomic_residual_workload_fuses_its_blocks() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/workloads/genomic_residual_lc1d.json"
    );
    let model = Model::load(path).expect("workload");
    let g = model.graph().clone();
    for batch in [1, 8] {
        let mut shape = vec![batch];
        shape.extend_from_slice(model.input_shape());
        let x: Vec<f32> = common::random(&shape, 5).iter().copied().collect();
        let (plain, k_plain) = run(&g, &model, &x, batch, true, Backend::Jit, 2);
        let (fused, k_fused) = run(&g, &model, &x, batch, false, Backend::Jit, 2);
        assert_eq!(
            k_plain.len() - k_fused.len(),
            8,
            "{k_plain:?} → {k_fused:?}"
        );
        assert!(k_fused
            .iter()
            .all(|k| !k.contains("pad") && !k.starts_with("add")));
        assert!(plain
            .iter()
            .zip(&fused)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}
