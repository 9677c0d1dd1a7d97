//! The ahead-of-time path through the execution seam: the programs the runtime builds
//! (`CompiledModel::prepared` for the forward program, `CompiledModel::prepared_grad`
//! for the two gradient phases) are prepared again with `Backend::Aot` (their kernels in
//! a relocatable object, linked by `cc -shared`, loaded with dlopen) and run over the
//! same buffer table as the JIT's: every writable buffer must equal the JIT's bit for
//! bit, at 1 and 2 threads. Forward programs of every Keras golden case and every
//! workload (the two largest included: with the seam no weights are embedded, the
//! parameters are the caller's buffers), gradient programs of every golden case.
//! Without `cc` the tests print a note and pass, unless `LCJIT_REQUIRE_CROSS=1`.

mod common;
use common::cc_or_skip;
use lcjit::backend::{self, Backend, BufArg, CodegenOptions, Program};
use lcjit::loop_ir::{BufRole, Module};
use lcjit::{io, CompileOptions, CompiledModel, Engine, LoadOptions, Model};
use ndarray::ArrayD;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

fn golden_cases() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data("keras-golden"))
        .expect("golden dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.h5").exists() && p.join("x.npy").exists())
        .collect();
    v.sort();
    assert!(v.len() >= 40, "golden cases missing");
    v
}

/// `n` deterministic floats in [-1, 1) from `seed`.
fn noise(n: usize, seed: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i + 31 * seed) * 7919 % 1000) as f32) / 500.0 - 1.0)
        .collect()
}

/// The read-only data of a program's buffer table, by role.
struct ReadOnly<'a> {
    inputs: Vec<Vec<f32>>,
    params: &'a [ArrayD<f32>],
    cotangents: Vec<Vec<f32>>,
}

impl ReadOnly<'_> {
    fn get<'b>(&'b self, role: &'b BufRole, len: usize) -> &'b [f32] {
        let s: &[f32] = match role {
            BufRole::Input(i) => &self.inputs[*i],
            BufRole::Param(k) => self.params[*k].as_slice().expect("standard layout"),
            BufRole::Cotangent(i) => &self.cotangents[*i],
            BufRole::Const(v) => v,
            r => panic!("unexpected read-only role {r:?}"),
        };
        assert_eq!(s.len(), len, "{role:?}: length");
        s
    }
}

/// Zeroed storage for every writable buffer of `m`, in buffer order.
fn writable(m: &Module) -> Vec<Vec<f32>> {
    m.buffers
        .iter()
        .filter(|b| !b.role.is_read_only())
        .map(|b| vec![0.0; b.len])
        .collect()
}

/// Runs `program` over the table of `read` (read-only buffers) and `owned` (writable).
fn run(program: &Program, read: &ReadOnly, owned: &mut [Vec<f32>], threads: usize) {
    let m = program.module();
    let mut w = owned.iter_mut();
    let mut args: Vec<BufArg> = m
        .buffers
        .iter()
        .map(|b| {
            if b.role.is_read_only() {
                BufArg::Read(read.get(&b.role, b.len))
            } else {
                BufArg::Write(w.next().expect("writable buffer"))
            }
        })
        .collect();
    program.run(&mut args, threads).expect("run");
}

/// Asserts every writable buffer of `a` equals `b`'s bit for bit.
fn same_bits(label: &str, m: &Module, a: &[Vec<f32>], b: &[Vec<f32>]) {
    let names = m.buffers.iter().filter(|b| !b.role.is_read_only());
    for ((x, y), buf) in a.iter().zip(b).zip(names) {
        let diff = x
            .iter()
            .zip(y)
            .position(|(p, q)| p.to_bits() != q.to_bits());
        assert!(
            diff.is_none(),
            "{label}: buffer {} ({:?}) differs at {}: aot {} jit {}",
            buf.name,
            buf.role,
            diff.unwrap_or(0),
            x[diff.unwrap_or(0)],
            y[diff.unwrap_or(0)]
        );
    }
}

fn aot(module: &Module) -> Program {
    let p = backend::prepare(Backend::Aot, module, &CodegenOptions::default()).expect("aot");
    assert_eq!(p.backend(), Backend::Aot);
    p
}

fn jit_model(model: &Model, batch: usize) -> CompiledModel {
    CompiledModel::new(
        Arc::new(model.clone()),
        CompileOptions {
            engine: Engine::Jit,
            threads: 1,
            max_batch: batch,
            ..Default::default()
        },
    )
    .expect("jit")
}

/// The forward program of `model` for `x`'s batch, as the runtime builds it: the JIT's
/// and the object's over the same table, at 1 and 2 threads.
fn check_forward(label: &str, model: &Model, x: Vec<f32>, batch: usize) {
    let cm = jit_model(model, batch);
    let prepared = cm.prepared(batch).expect("prepared");
    let jit = &prepared.program;
    assert_eq!(jit.backend(), Backend::Jit);
    let m = jit.module();
    let object = aot(m);
    let read = ReadOnly {
        inputs: vec![x],
        params: model.params(),
        cotangents: Vec::new(),
    };
    for threads in [1, 2] {
        let mut want = writable(m);
        run(jit, &read, &mut want, threads);
        let mut got = writable(m);
        run(&object, &read, &mut got, threads);
        same_bits(&format!("{label} threads {threads}"), m, &got, &want);
    }
}

/// The inference-mode gradient program of `model` for `x`'s batch (phase 1 with a zero
/// cotangent, phase 2 with `dy`), JIT against the object, at 1 and 2 threads.
fn check_gradients(label: &str, model: &Model, x: Vec<f32>, dy: Vec<f32>, batch: usize) {
    let cm = jit_model(model, batch);
    let g = cm.prepared_grad(batch).expect("prepared_grad");
    let (f, b) = (&g.programs.0, &g.programs.1);
    let (fo, bo) = (aot(f.module()), aot(b.module()));
    let mut read = ReadOnly {
        inputs: vec![x],
        params: model.params(),
        cotangents: vec![vec![0.0; dy.len()]],
    };
    for threads in [1, 2] {
        read.cotangents[0].fill(0.0);
        let (mut want, mut got) = (writable(f.module()), writable(f.module()));
        run(f, &read, &mut want, threads);
        run(&fo, &read, &mut got, threads);
        same_bits(
            &format!("{label} phase 1, {threads} threads"),
            f.module(),
            &got,
            &want,
        );
        read.cotangents[0].copy_from_slice(&dy);
        run(b, &read, &mut want, threads);
        run(&bo, &read, &mut got, threads);
        same_bits(
            &format!("{label} phase 2, {threads} threads"),
            b.module(),
            &got,
            &want,
        );
    }
}

#[test]
fn golden_forward_and_gradient_programs_equal_the_jit() {
    if !cc_or_skip() {
        return;
    }
    let t = Instant::now();
    let cases = golden_cases();
    let mut grads = 0;
    for case in &cases {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(case.join("model.h5")).expect("load");
        let x = io::read_npy(&case.join("x.npy")).expect("x");
        let batch = x.shape()[0];
        let xs: Vec<f32> = x.iter().copied().collect();
        check_forward(&label, &model, xs.clone(), batch);
        let dy = match io::read_npy(&case.join("dy.npy")) {
            Ok(dy) => dy.iter().copied().collect(),
            Err(_) => {
                let out: usize = model.graph().nodes[model.graph().outputs[0]]
                    .shape
                    .iter()
                    .product();
                noise(batch * out, 7)
            }
        };
        check_gradients(&label, &model, xs, dy, batch);
        grads += 1;
    }
    eprintln!(
        "aot seam: {} golden forward programs and {grads} gradient programs equal the JIT \
         bit for bit at 1 and 2 threads ({:.1} s)",
        cases.len(),
        t.elapsed().as_secs_f64()
    );
}

#[test]
fn every_workload_forward_program_equals_the_jit() {
    if !cc_or_skip() {
        return;
    }
    let names = common::workload_names();
    assert!(
        names.iter().any(|n| n == "deepface.json") && names.iter().any(|n| n == "yolo_local.json")
    );
    for name in &names {
        let t = Instant::now();
        let model = Model::load_with(data("workloads").join(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let batch = 2;
        let n = batch * model.input_shape().iter().product::<usize>();
        check_forward(name, &model, noise(n, 1), batch);
        eprintln!(
            "aot seam: {name} equal ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn the_library_is_removed_when_the_program_drops() {
    if !cc_or_skip() {
        return;
    }
    let model = Model::load(data("keras-golden/case_0000/model.h5")).expect("load");
    let cm = jit_model(&model, 1);
    let prepared = cm.prepared(1).expect("prepared");
    let object = aot(prepared.program.module());
    let dir = object.library_dir().expect("library dir").to_path_buf();
    assert!(dir.join("libprogram.so").exists());
    assert!(prepared.program.library_dir().is_none());
    drop(object);
    assert!(!dir.exists(), "{} left behind", dir.display());
}
