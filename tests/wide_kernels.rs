//! The wide tier beyond the LC forward pass (see `wide_tier.rs`): the gradient
//! programs (forward phase and `dK` with wide tiles), Dense layers, and ahead-of-time
//! objects, which carry the same microkernels. Every executor gives the same bits.

use lcjit::backend::{self, Backend, CodegenOptions};
use lcjit::loop_ir::Dtype;
use lcjit::{Engine, Model, WideTier};
use ndarray::ArrayD;
use proptest::prelude::*;
use std::sync::Arc;

mod common;
use common::lc_spec::{graph, Spec};
use common::wide::*;

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

    /// The gradient programs (forward phase, `dK` and, at batches filling whole
    /// registers, `dx` with wide tiles): the wide JIT on 1 and 2 threads and the f32x4
    /// JIT equal the interpreter bit for bit.
    #[test]
    fn wide_gradients_equal_the_interpreter(
        sp in wide_spec(),
        batch in prop::sample::select(vec![4usize, 5, 8, 9, 12, 16, 18, 24, 32]),
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

/// The schedule line of the backward kernel of `g` whose name ends in `suffix`, lowered
/// for `tier` at `batch` in `mode`, and whether the forward phase has wide loops.
fn backward_schedule(
    g: &lcjit::graph::Graph,
    batch: usize,
    mode: lcjit::lower::grad::Mode,
    tier: lcjit::loop_ir::micro::Tier,
    suffix: &str,
) -> (String, bool) {
    let l = lcjit::lower::grad::lower_gradients_for(g, batch, mode, Some(tier)).expect("lower");
    let k = l
        .backward
        .kernels
        .iter()
        .find(|k| k.name.ends_with(suffix))
        .expect("kernel");
    (k.schedule.clone().unwrap_or_default(), has_wide(&l.forward))
}

/// deepface-like layers get wide `dK` tiles on a CPU with a tier, and wide `dx` tiles
/// (lanes over batch rows) at a batch of 32.
#[test]
fn kernel_gradients_get_wide_tiles() {
    use lcjit::lower::grad::Mode;
    let sp = Spec {
        spatial: vec![12, 12],
        c: 16,
        f: 16,
        ..wide_layer()
    };
    let g = graph(&sp).expect("graph");
    for tier in host_tiers() {
        let (dk, forward) = backward_schedule(&g, 8, Mode::Training, tier, "backward_dk");
        assert!(dk.contains(&format!("wide({tier}")), "{tier}: {dk}");
        assert!(forward, "{tier}: forward phase");
        let (dx, _) = backward_schedule(&g, 32, Mode::Inference, tier, "backward_dx");
        let rows = if tier.lanes() == 16 { 8 } else { 4 };
        let want = format!("lc.dx(vec=batch, tile={rows}x{}", 2 * tier.lanes());
        assert!(dx.starts_with(&want), "{tier}: {dx}");
        assert!(dx.contains(&format!("wide({tier}")), "{tier}: {dx}");
    }
}

/// One Dense layer of `units` tanh units over `inputs` inputs, weights and biases drawn
/// from [-0.5, 0.5].
fn tanh_dense(inputs: usize, units: usize) -> lcjit::graph::Graph {
    use lcjit::graph::{Activation, Dense, Op, WeightOptions};
    let op = Op::Dense(Dense {
        units,
        activation: Activation::Tanh,
        use_bias: true,
        kernel_initializer: common::uniform(-0.5, 0.5),
        bias_initializer: common::uniform(-0.5, 0.5),
        options: WeightOptions::default(),
    });
    common::one(&[inputs], op)
}

/// Dense layers at 8 or more rows whose units fill wide registers get wide tiles (with
/// a remainder row tile, and the matrix-vector schedule's input blocks from 512
/// inputs on); every executor agrees bit for bit, on 16-bit weights too.
#[test]
fn dense_tiles_are_wide_and_agree() {
    for (inputs, units, batch, dtype) in [
        (37, 16, 8, Dtype::F32),
        (64, 32, 19, Dtype::F32),
        (600, 48, 12, Dtype::Bf16),
        (20, 40, 9, Dtype::F16),
        (70, 8, 16, Dtype::F32),
    ] {
        let g = tanh_dense(inputs, units);
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

/// A Dense layer whose inputs do not fill the tier's registers runs `dx` as
/// `dxᵀ = K·dzᵀ` with the batch rows as the product's units (a wide tile) where the
/// transposes are cheaper than the kernel's (genomics_lc1d's 3996 × 64 at batch 32);
/// otherwise as `dz·Kᵀ`. Either way the gradients equal the interpreter's and the
/// f32x4 JIT's bit for bit.
#[test]
fn dense_input_gradients_with_rows_in_lanes_agree() {
    use lcjit::lower::grad::Mode;
    for (inputs, units, batch) in [(3996, 64, 32), (999, 40, 16), (300, 20, 32), (301, 64, 12)] {
        let g = tanh_dense(inputs, units);
        for tier in host_tiers() {
            // (Inference mode: the program of `lcjit grad`, which takes the input's
            // gradient too.)
            let l = lcjit::lower::grad::lower_gradients_for(&g, batch, Mode::Inference, Some(tier))
                .expect("lower");
            let transposed = l
                .backward
                .kernels
                .iter()
                .any(|k| k.name.ends_with("backward_dx_t.forward"));
            let want = !inputs.is_multiple_of(tier.lanes())
                && batch.is_multiple_of(tier.lanes())
                && batch * (units + inputs) < inputs * units;
            assert_eq!(transposed, want, "{inputs}x{units} at {batch} under {tier}");
        }
        let model = Arc::new(Model::from_graph(g, 5).expect("model"));
        let x = input(&model, batch, 9);
        let y = model.predict(&x).expect("reference");
        let dy = y.mapv(|v| (v * 5.0).cos());
        let want = grads(&model, Engine::Interp, 1, WideTier::Auto, &x, &dy);
        let off = grads(&model, Engine::Jit, 2, WideTier::Off, &x, &dy);
        assert!(
            want.iter().zip(&off).all(|(a, b)| same_bits(a, b)),
            "{inputs}x{units}: f32x4 JIT"
        );
        for threads in [1, 2] {
            let got = grads(&model, Engine::Jit, threads, WideTier::Auto, &x, &dy);
            assert!(
                want.iter().zip(&got).all(|(a, b)| same_bits(a, b)),
                "{inputs}x{units}: wide JIT, {threads} threads"
            );
        }
    }
}

/// The ahead-of-time object carries the same microkernels (defined as function bytes in
/// the object, like the kernels): a wide program run from the linked object equals the
/// JIT's bit for bit, forward (f32 and f16 weights) and the gradient program's phases.
/// Needs `cc` (the AOT tests' rule: skipped with a note without one, unless
/// `LCJIT_REQUIRE_CROSS=1`).
#[test]
fn aot_objects_run_the_same_microkernels() {
    if !common::cc_or_skip() {
        return;
    }
    let model =
        Arc::new(Model::from_graph(graph(&wide_layer()).expect("graph"), 9).expect("model"));
    let params: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|p| p.iter().copied().collect())
        .collect();
    for (batch, dtype) in [(8, Dtype::F32), (1, Dtype::F16)] {
        let x: Vec<f32> = input(&model, batch, 4).iter().copied().collect();
        let halves: Vec<Vec<u16>> = params
            .iter()
            .map(|p| lcjit::lower::weights::narrow(p.iter().copied(), Dtype::F16))
            .collect();
        let c = compiled(&model, Engine::Jit, 1, batch, dtype, WideTier::Auto);
        let prepared = c.prepared(batch).expect("prepared");
        let module = prepared.program.module();
        assert_eq!(has_wide(module), !host_tiers().is_empty());
        let object =
            backend::prepare(Backend::Aot, module, &CodegenOptions::default()).expect("aot");
        for threads in [1, 2] {
            let want = run(&prepared.program, &x, &params, &halves, threads);
            let got = run(&object, &x, &params, &halves, threads);
            assert!(
                bits_eq(&want, &got),
                "batch {batch} {dtype:?}, {threads} threads"
            );
        }
    }
}
