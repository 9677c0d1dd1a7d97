//! 16-bit weights (`CompileOptions::weights_dtype`, `--weights-dtype bf16|f16`): on every
//! Keras golden case, the JIT (1 and 2 threads) equals the interpreter bit for bit, the
//! reference engine (which computes with the rounded weights) agrees with the interpreter
//! as closely as for f32 weights, and the outputs stay within 1e-2 relative
//! (`max|y − keras| / max(1, max|keras|)`, the golden tests' measure) of tf-keras's
//! float32 figures; gradients and training refuse the option.

mod common;
use common::{golden_cases as cases, load_case as load, rel_err};
use lcjit::loop_ir::Dtype;
use lcjit::{io, CompileOptions, CompiledModel, Engine, Model};
use ndarray::ArrayD;
use std::path::Path;
use std::sync::Arc;

fn bits(a: &ArrayD<f32>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn predict(
    model: &Arc<Model>,
    engine: Engine,
    threads: usize,
    dtype: Dtype,
    x: &ArrayD<f32>,
) -> ArrayD<f32> {
    let opts = CompileOptions {
        engine,
        threads,
        max_batch: x.shape()[0],
        weights_dtype: dtype,
        ..Default::default()
    };
    CompiledModel::new(model.clone(), opts)
        .and_then(|c| c.predict(x))
        .unwrap_or_else(|e| panic!("{} {}: {e}", engine.name(), dtype.name()))
}

#[test]
fn every_golden_case_runs_with_16_bit_weights_within_1e_2_of_keras() {
    let mut worst = [(0f32, String::new()), (0f32, String::new())];
    for case in cases() {
        let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let want = io::read_npy(&case.join("y.npy")).expect("y.npy");
        let model = load(&case);
        let name = case
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (k, dtype) in [Dtype::Bf16, Dtype::F16].into_iter().enumerate() {
            let interp = predict(&model, Engine::Interp, 1, dtype, &x);
            let reference = predict(&model, Engine::Reference, 1, dtype, &x);
            let jit1 = predict(&model, Engine::Jit, 1, dtype, &x);
            let jit2 = predict(&model, Engine::Jit, 2, dtype, &x);
            assert_eq!(bits(&jit1), bits(&jit2), "{name} {}: threads", dtype.name());
            if lcjit::backend::host_has_fma() {
                assert_eq!(
                    bits(&jit1),
                    bits(&interp),
                    "{name} {}: jit vs interp",
                    dtype.name()
                );
            }
            let r = rel_err(&interp, &reference);
            assert!(
                r <= 1e-4,
                "{name} {}: interp vs reference {r:e}",
                dtype.name()
            );
            let e = rel_err(&jit1, &want);
            assert!(e <= 1e-2, "{name} {}: {e:e} from tf-keras", dtype.name());
            if e >= worst[k].0 {
                worst[k] = (e, name.clone());
            }
        }
    }
    println!(
        "largest error against tf-keras float32: bf16 {:.2e} ({}), f16 {:.2e} ({})",
        worst[0].0, worst[0].1, worst[1].0, worst[1].1
    );
}

/// The option changes what is stored, not the model's own weights: f32 predictions of the
/// same model afterwards are unchanged, and a 16-bit program's IR shows its 16-bit buffers.
#[test]
fn the_option_marks_lc_and_dense_kernels_only() {
    let case = cases().into_iter().next().expect("a case");
    let model = load(&case);
    let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
    let before = predict(&model, Engine::Jit, 1, Dtype::F32, &x);
    let cm = CompiledModel::new(
        model.clone(),
        CompileOptions {
            engine: Engine::Jit,
            threads: 1,
            max_batch: x.shape()[0],
            weights_dtype: Dtype::Bf16,
            ..Default::default()
        },
    )
    .expect("compile");
    let lowered = cm.lowered(x.shape()[0]).expect("lowered");
    let graph = model.graph();
    for b in &lowered.module.buffers {
        let want = match b.role {
            lcjit::loop_ir::BufRole::Param(p) if lcjit::lower::weights::stored_16bit(graph, p) => {
                Dtype::Bf16
            }
            _ => Dtype::F32,
        };
        assert_eq!(b.dtype, want, "{}", b.name);
    }
    assert!(lowered
        .module
        .buffers
        .iter()
        .any(|b| b.dtype == Dtype::Bf16));
    let text = lcjit::loop_ir::print::module_text(&lowered.module);
    assert!(text.contains(": bf16["), "{text}");
    let after = predict(&model, Engine::Jit, 1, Dtype::F32, &x);
    assert_eq!(bits(&before), bits(&after));
}

#[test]
fn gradients_refuse_16_bit_weights() {
    let case = cases().into_iter().next().expect("a case");
    let model = load(&case);
    let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
    for engine in [Engine::Jit, Engine::Reference] {
        let cm = CompiledModel::new(
            model.clone(),
            CompileOptions {
                engine,
                threads: 1,
                max_batch: x.shape()[0],
                weights_dtype: Dtype::F16,
                ..Default::default()
            },
        )
        .expect("compile");
        let y = cm.predict(&x).expect("predict");
        let err = cm
            .gradients(std::slice::from_ref(&x), &y)
            .expect_err("must refuse");
        assert!(err.to_string().contains("inference option"), "{err}");
    }
}

/// A module that widens `h` (65,536 halves: every bit pattern) into `y` with each load
/// shape the code generator has: contiguous f32x4 lanes, scalar, strided lanes (a
/// gather) and a broadcast.
fn widening_module(dtype: Dtype) -> lcjit::loop_ir::Module {
    use lcjit::loop_ir::{for_, load, Affine, BufRole, Buffer, KernelBuilder, LoopKind, Stmt};
    const N: usize = 1 << 16;
    let mut h = Buffer::new("h", N, BufRole::Param(0));
    h.dtype = dtype;
    let ys = (0..4).map(|k| Buffer::new(format!("y{k}"), N, BufRole::Output(k)));
    let mut kernels = Vec::new();
    // y0: contiguous lanes; y1: scalar; y2: lane l of row i from h[i + 16384·l]; y3:
    // h[i] broadcast over 4 lanes (of rows 0..16384).
    for (k, (vector, stride, broadcast)) in [
        (true, 1, false),
        (false, 1, false),
        (true, 16384, false),
        (true, 1, true),
    ]
    .into_iter()
    .enumerate()
    {
        let mut kb = KernelBuilder::new(format!("widen{k}"));
        let i = kb.var("i");
        let l = kb.var("l");
        let (src, dst) = if broadcast {
            (Affine::var(i), Affine::var(i).scale(4).plus_term(l, 1))
        } else if stride == 1 {
            let a = Affine::var(i).scale(4).plus_term(l, 1);
            (a.clone(), a)
        } else {
            (
                Affine::var(i).plus_term(l, stride),
                Affine::var(i).scale(4).plus_term(l, 1),
            )
        };
        let kind = if vector {
            LoopKind::Vector(4)
        } else {
            LoopKind::Serial
        };
        let body = vec![for_(
            i,
            (N / 4) as u64,
            LoopKind::Serial,
            vec![for_(
                l,
                4,
                kind,
                vec![Stmt::Store {
                    buf: 1 + k as u32,
                    index: dst,
                    value: load(0, src),
                }],
            )],
        )];
        kernels.push(kb.finish(body));
    }
    lcjit::loop_ir::Module {
        name: "widen".into(),
        buffers: std::iter::once(h).chain(ys).collect(),
        kernels,
    }
}

/// Every half and bfloat16 bit pattern widens to the same bits on the interpreter, the
/// JIT, checked mode's guarded copies and the ahead-of-time object code, in every load
/// shape, and (NaN aside, whose payload only has to stay a NaN) to the `half` crate's
/// conversion.
#[test]
fn every_16_bit_pattern_widens_identically_on_every_executor() {
    use lcjit::backend::{prepare, Backend, BufArg, CodegenOptions};
    const N: usize = 1 << 16;
    let h: Vec<u16> = (0..=u16::MAX).collect();
    for dtype in [Dtype::Bf16, Dtype::F16] {
        let m = widening_module(dtype);
        let mut results = Vec::new();
        let mut backends = vec![Backend::Interp, Backend::Jit];
        if cfg!(unix) {
            backends.push(Backend::Aot);
        }
        for backend in backends {
            let program = prepare(backend, &m, &CodegenOptions::default())
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            let mut ys = vec![vec![f32::NAN; N]; 4];
            let mut args = vec![BufArg::ReadHalf(&h, dtype)];
            args.extend(ys.iter_mut().map(|y| BufArg::Write(y.as_mut_slice())));
            program
                .run(&mut args, 2)
                .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
            drop(args);
            results.push((backend, ys));
        }
        let (_, first) = &results[0];
        for (backend, ys) in &results {
            for (k, y) in ys.iter().enumerate() {
                let same = y
                    .iter()
                    .zip(&first[k])
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "{} {backend:?}: output {k} differs", dtype.name());
            }
        }
        let want = |bits: u16| match dtype {
            Dtype::Bf16 => half::bf16::from_bits(bits).to_f32(),
            _ => half::f16::from_bits(bits).to_f32(),
        };
        for (i, &got) in first[0].iter().enumerate() {
            let w = want(i as u16);
            assert!(
                got.to_bits() == w.to_bits() || (got.is_nan() && w.is_nan()),
                "{} {i:#06x}: {got:e} vs {w:e}",
                dtype.name()
            );
            assert_eq!(first[1][i].to_bits(), got.to_bits());
            // y2 row i lane l holds h[i + 16384·l]; y3 row i holds h[i] in every lane.
            let (row, lane) = (i / 4, i % 4);
            assert_eq!(
                first[2][i].to_bits(),
                first[0][row + 16384 * lane].to_bits()
            );
            assert_eq!(first[3][i].to_bits(), first[0][row].to_bits());
        }
        // A 16-bit buffer bound as f32 data (or the reverse) is refused, not misread.
        let program = prepare(Backend::Jit, &m, &CodegenOptions::default()).expect("jit");
        let wrong = vec![0f32; N];
        let mut ys = vec![vec![0f32; N]; 4];
        let mut args = vec![BufArg::Read(&wrong)];
        args.extend(ys.iter_mut().map(|y| BufArg::Write(y.as_mut_slice())));
        assert!(program.run(&mut args, 1).is_err());
    }
}

/// `lcjit run --weights-dtype bf16|f16` on a golden case: the output is within 1e-2 of
/// tf-keras's and equals the library's 16-bit prediction bit for bit.
#[test]
fn lcjit_run_takes_weights_dtype() {
    let case = cases().into_iter().next().expect("a case");
    let model_file = case.join("model.h5");
    assert!(model_file.exists(), "{}", model_file.display());
    let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
    let want = io::read_npy(&case.join("y.npy")).expect("y.npy");
    let dir = std::env::temp_dir().join(format!("lcjit-w16-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    for (flag, dtype) in [("bf16", Dtype::Bf16), ("f16", Dtype::F16)] {
        let out = dir.join(format!("y_{flag}.npy"));
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_lcjit"))
            .arg("run")
            .arg(&model_file)
            .arg("--input")
            .arg(case.join("x.npy"))
            .arg("--output")
            .arg(&out)
            .args(["--weights-dtype", flag])
            .status()
            .expect("lcjit run");
        assert!(status.success(), "{flag}");
        let y = io::read_npy(&out).expect("output");
        assert!(rel_err(&y, &want) <= 1e-2, "{flag}");
        let lib = predict(&load(&case), Engine::Jit, 1, dtype, &x);
        assert_eq!(bits(&y), bits(&lib), "{flag}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every bundled workload (weights from its initializers, seed 0; a uniform input in
/// [0, 1) at batch 2): the JIT's output with bf16 and f16 weights against its f32 output,
/// within 1e-2 relative. Prints the table (`--nocapture`).
#[test]
fn every_workload_stays_within_1e_2_of_f32() {
    let mut rows = Vec::new();
    for name in common::workload_names() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/workloads")
            .join(&name);
        let model = Arc::new(Model::load(&path).expect("workload"));
        let mut shape = vec![2];
        shape.extend_from_slice(model.input_shape());
        let x = common::random(&shape, 11).mapv(|v| v.abs().min(1.0));
        let f32_out = predict(&model, Engine::Jit, 2, Dtype::F32, &x);
        let mut errs = Vec::new();
        for dtype in [Dtype::Bf16, Dtype::F16] {
            let y = predict(&model, Engine::Jit, 2, dtype, &x);
            let e = rel_err(&y, &f32_out);
            assert!(e <= 1e-2, "{name} {}: {e:e} from f32", dtype.name());
            // Also without the floor of 1 (the outputs of some workloads are tiny).
            let top = f32_out.iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = y
                .iter()
                .zip(f32_out.iter())
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            errs.push((e, diff / top));
        }
        rows.push(format!(
            "{name:<28} bf16 {:.2e} ({:.2e})  f16 {:.2e} ({:.2e})",
            errs[0].0, errs[0].1, errs[1].0, errs[1].1
        ));
    }
    println!(
        "16-bit weights against f32, max|y16 − y32| / max(1, max|y32|) \
         (and / max|y32|):"
    );
    for r in rows {
        println!("  {r}");
    }
}

/// Inner-layer outputs (`predict_outputs`, programs of the model cut at those layers) with
/// 16-bit weights: the JIT equals the interpreter, and the reference agrees, on every
/// golden case with more than one layer.
#[test]
fn inner_layer_outputs_with_16_bit_weights() {
    let mut checked = 0;
    for case in cases() {
        let model = load(&case);
        let names: Vec<String> = model.graph().nodes[1..]
            .iter()
            .map(|n| n.name.clone())
            .collect();
        if names.len() < 2 {
            continue;
        }
        let x = io::read_npy(&case.join("x.npy")).expect("x.npy");
        let layers: Vec<&str> = names.iter().map(String::as_str).collect();
        let run = |engine| {
            let opts = CompileOptions {
                engine,
                threads: 2,
                max_batch: x.shape()[0],
                weights_dtype: Dtype::Bf16,
                ..Default::default()
            };
            CompiledModel::new(model.clone(), opts)
                .and_then(|c| c.predict_outputs(&[x.view()], &layers, x.shape()[0]))
                .unwrap_or_else(|e| panic!("{}: {e}", case.display()))
        };
        let (jit, interp, reference) = (
            run(Engine::Jit),
            run(Engine::Interp),
            run(Engine::Reference),
        );
        for ((j, i), r) in jit.iter().zip(&interp).zip(&reference) {
            if lcjit::backend::host_has_fma() {
                assert_eq!(bits(&j.1), bits(&i.1), "{} {}", case.display(), j.0);
            }
            let e = rel_err(&i.1, &r.1);
            assert!(e <= 1e-4, "{} {}: {e:e}", case.display(), j.0);
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} multi-layer cases");
}
