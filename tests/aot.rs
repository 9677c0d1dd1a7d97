//! `lcjit aot`: objects built for the host, linked with a small C driver (compiled with
//! `cc` here, run as a subprocess over raw f32 files), predict bit for bit what the JIT
//! (`CompiledModel`, `Engine::Jit`) predicts, on every Keras golden case and every
//! workload, for a compiled batch of 1 and for 3 rows through a compiled batch of 2 (a
//! zero-padded partial chunk); workloads over 10 M parameters use the weights-file mode,
//! and the two largest (deepface, yolo_local: 134–138 M parameters, over 500 MB of
//! weights each) only the compiled batch of 2, to keep the time and memory modest. Also: the weights-file mode and its validation,
//! `.a` and `.so` outputs, exported symbols, CLI errors, x86-64 level targets and, with
//! `aarch64-linux-gnu-gcc` and `qemu-aarch64` on PATH, aarch64 objects run under qemu
//! (golden tolerance). Without the cross tools that test prints a note and passes,
//! unless `LCJIT_REQUIRE_CROSS=1`. Libraries built with gradients: `NAME_gradients`
//! equals `CompiledModel::gradients` (JIT) bit for bit and Keras's `grads.npz` within
//! the golden tolerance on a sample of golden cases, with the parameter queries.

mod common;
use lcjit::backend::aot::{self, AotOptions, WeightsMode};
use lcjit::{io, CompileOptions, CompiledModel, Engine, LoadOptions, Model};
use ndarray::{ArrayD, Axis, IxDyn};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The C test driver: `drv x.f32 y.f32 rows [weights|-]` → exit 0 and y, or exit 3 with
/// `create failed: <reason>` on stderr.
const DRIVER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"
int main(int argc, char **argv) {
  if (argc < 4) return 2;
  const char *w = (argc > 4 && strcmp(argv[4], "-") != 0) ? argv[4] : NULL;
  size_t n = strtoul(argv[3], NULL, 10);
  model_t *h = model_create(w, 1);
  if (!h) { fprintf(stderr, "create failed: %s\n", model_last_error(NULL)); return 3; }
  size_t il = model_input_len(), ol = model_output_len();
  float *x = malloc(n * il * 4 + 4), *y = malloc(n * ol * 4 + 4);
  FILE *f = fopen(argv[1], "rb");
  if (!f || fread(x, 4, n * il, f) != n * il) { fprintf(stderr, "cannot read x\n"); return 4; }
  fclose(f);
  if (model_predict(h, x, n, y) != 0) {
    fprintf(stderr, "predict failed: %s\n", model_last_error(h)); return 5;
  }
  if (model_predict(NULL, x, n, y) != -1) { fprintf(stderr, "NULL handle accepted\n"); return 6; }
  size_t d[MODEL_MAX_RANK];
  int r = model_input_shape(d);
  size_t p = 1;
  for (int i = 0; i < r; i++) p *= d[i];
  if (p != il) { fprintf(stderr, "input shape does not multiply to input_len\n"); return 7; }
  r = model_output_shape(d);
  p = 1;
  for (int i = 0; i < r; i++) p *= d[i];
  if (p != ol) { fprintf(stderr, "output shape does not multiply to output_len\n"); return 7; }
  f = fopen(argv[2], "wb");
  if (!f || fwrite(y, 4, n * ol, f) != n * ol) { fprintf(stderr, "cannot write y\n"); return 4; }
  fclose(f);
  model_destroy(h);
  model_destroy(NULL);
  free(x); free(y);
  return 0;
}
"#;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// A fresh scratch directory (removed by `Drop`).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "lcjit-aot-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        Scratch(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run_ok(cmd: &mut Command, what: &str) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn write_f32(path: &Path, v: impl Iterator<Item = f32>) {
    let bytes: Vec<u8> = v.flat_map(f32::to_le_bytes).collect();
    std::fs::write(path, bytes).expect("write f32");
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// Compiles the C program `source` (saved as `dir/{exe}.c`, next to `model.h`) with
/// `lib` (object, archive or shared library) into `dir/{exe}`, with `cc` (or another C
/// compiler).
fn link_c(dir: &Scratch, exe: &str, source: &str, lib: &Path, cc: &str) -> PathBuf {
    let src = dir.path(&format!("{exe}.c"));
    std::fs::write(&src, source).expect("driver source");
    let exe = dir.path(exe);
    let mut cmd = Command::new(cc);
    cmd.arg("-O1")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .arg(lib);
    if lib.extension().is_some_and(|e| e == "so") {
        cmd.arg(format!("-Wl,-rpath,{}", dir.0.display()));
    }
    cmd.arg("-lm");
    run_ok(&mut cmd, &format!("{cc} {}", exe.display()));
    exe
}

/// The predict driver ([`DRIVER_C`]) linked with `lib`.
fn link_driver(dir: &Scratch, lib: &Path, cc: &str) -> PathBuf {
    link_c(dir, "drv", DRIVER_C, lib, cc)
}

/// The command running `exe` (under `runner`, if any) with `args`.
fn command(runner: &[&str], exe: &Path, args: &[&std::ffi::OsStr]) -> Command {
    let mut cmd = match runner.split_first() {
        Some((r, rest)) => {
            let mut c = Command::new(r);
            c.args(rest).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.args(args);
    cmd
}

/// The predict driver `exe` on `rows` rows of `dir/x.f32` into `dir/y.f32`, with the
/// weights file `weights` (or `-`: the embedded weights).
fn driver_command(
    dir: &Scratch,
    exe: &Path,
    runner: &[&str],
    rows: usize,
    weights: Option<&Path>,
) -> Command {
    let (xp, yp) = (dir.path("x.f32"), dir.path("y.f32"));
    let rows = rows.to_string();
    let w = weights.map_or_else(|| "-".into(), |w| w.as_os_str().to_owned());
    command(
        runner,
        exe,
        &[xp.as_os_str(), yp.as_os_str(), rows.as_ref(), w.as_os_str()],
    )
}

/// Runs the predict driver `exe` (optionally under `runner`) on `x`'s rows; returns the
/// output floats.
fn run_driver(
    dir: &Scratch,
    exe: &Path,
    runner: &[&str],
    x: &ArrayD<f32>,
    weights: Option<&Path>,
) -> Vec<f32> {
    write_f32(&dir.path("x.f32"), x.iter().copied());
    let mut cmd = driver_command(dir, exe, runner, x.shape()[0], weights);
    run_ok(&mut cmd, &format!("driver {}", exe.display()));
    read_f32(&dir.path("y.f32"))
}

/// Writes `opts`' library for `model` as `dir/model.o` + `dir/model.h` (and the weights
/// file `dir/model.lcw` in file mode); returns the object path.
fn build_object(dir: &Scratch, model: &Model, opts: &AotOptions) -> PathBuf {
    let art = aot::compile_object(model, opts).expect("compile_object");
    let obj = dir.path("model.o");
    aot::write_library(&art, &obj, &dir.path("model.h")).expect("write library");
    if let Some(w) = &art.weights_file {
        aot::write_atomic(&dir.path("model.lcw"), w).expect("weights file");
    }
    obj
}

/// The JIT for `model` (shared, not copied) at `max_batch` `batch`, one thread.
fn jit_model(model: &Arc<Model>, batch: usize) -> CompiledModel {
    CompiledModel::new(
        Arc::clone(model),
        CompileOptions {
            engine: Engine::Jit,
            threads: 1,
            max_batch: batch,
            ..Default::default()
        },
    )
    .expect("jit")
}

fn jit(model: &Model, batch: usize, x: &ArrayD<f32>) -> ArrayD<f32> {
    let cm = jit_model(&Arc::new(model.clone()), batch);
    cm.predict(x).expect("jit predict")
}

/// The first `rows` rows of `x`, cycling when `x` has fewer.
fn rows(x: &ArrayD<f32>, rows: usize) -> ArrayD<f32> {
    let n = x.shape()[0];
    let idx: Vec<usize> = (0..rows).map(|i| i % n).collect();
    x.select(Axis(0), &idx)
}

fn bits_equal(a: &[f32], b: &ArrayD<f32>) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(p, q)| p.to_bits() == q.to_bits())
}

/// Host object vs JIT, for each `(compiled batch, rows)` of `runs` (rows of `x`,
/// cycled); `file` selects the weights-file mode. Panics on a difference.
fn check_runs(
    label: &str,
    model: &Arc<Model>,
    x: &ArrayD<f32>,
    file: bool,
    runs: &[(usize, usize)],
) {
    for &(batch, n) in runs {
        let dir = Scratch::new("case");
        let xs = rows(x, n);
        let opts = AotOptions {
            batch,
            weights: if file {
                WeightsMode::File
            } else {
                WeightsMode::Embedded
            },
            ..AotOptions::default()
        };
        let obj = build_object(&dir, model, &opts);
        let exe = link_driver(&dir, &obj, "cc");
        let w = file.then(|| dir.path("model.lcw"));
        let got = run_driver(&dir, &exe, &[], &xs, w.as_deref());
        drop(dir);
        // Every row goes through the batch-`batch` program (a partial chunk padded with
        // zero rows), so compare with the JIT running the same padded chunks.
        let cm = jit_model(model, batch);
        let want = cm.predict(&pad_rows(&xs, batch)).expect("jit predict");
        let want: Vec<f32> = want.iter().copied().collect();
        let out_len: usize = want.len() / n.div_ceil(batch).max(1) / batch;
        assert_eq!(got.len(), n * out_len, "{label}: output length");
        assert!(
            got.iter()
                .zip(&want)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{label}: compiled batch {batch}, {n} rows: the object's output differs from the JIT's"
        );
        // lcjit's own predict runs a final partial chunk with a program for its size;
        // a row's result does not depend on the batch it runs in (tests/run_batched.rs),
        // so the padded chunk gives the same bits.
        let own = cm.predict(&xs).expect("jit predict");
        assert!(
            got.iter()
                .zip(own.iter())
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{label}: compiled batch {batch}, {n} rows: differs from the JIT's own predict"
        );
    }
}

/// [`check_runs`] for a compiled batch of 1 over all of `x` and of 2 over 3 rows.
fn check_bitwise(label: &str, model: &Model, x: &ArrayD<f32>, file: bool) {
    let model = Arc::new(model.clone());
    check_runs(label, &model, x, file, &[(1, x.shape()[0]), (2, 3)]);
}

/// `x` with zero rows appended up to a multiple of `batch`.
fn pad_rows(x: &ArrayD<f32>, batch: usize) -> ArrayD<f32> {
    let n = x.shape()[0];
    let padded = n.div_ceil(batch) * batch;
    let mut shape = x.shape().to_vec();
    shape[0] = padded;
    let mut v: Vec<f32> = x.iter().copied().collect();
    v.resize(x.len() / n.max(1) * padded, 0.0);
    ArrayD::from_shape_vec(IxDyn(&shape), v).expect("pad")
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

fn cc_or_skip() -> bool {
    if have("cc") {
        return true;
    }
    assert!(
        std::env::var("LCJIT_REQUIRE_CROSS").as_deref() != Ok("1"),
        "cc is required"
    );
    eprintln!("note: no cc on PATH; aot link tests skipped");
    false
}

#[test]
fn golden_cases_equal_the_jit_bit_for_bit() {
    if !cc_or_skip() {
        return;
    }
    let cases = golden_cases();
    for case in &cases {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(case.join("model.h5")).expect("load");
        let x = io::read_npy(&case.join("x.npy")).expect("x");
        check_bitwise(&label, &model, &x, false);
    }
    eprintln!(
        "aot: {} golden cases bitwise equal to the JIT (compiled batch 1 and 2)",
        cases.len()
    );
}

/// Every workload, one model in memory at a time. Over 10 M parameters the weights go
/// to a file instead of a 300–550 MB object; the two largest (deepface, yolo_local) run
/// only the compiled batch of 2 over 3 rows (a full and a zero-padded chunk).
#[test]
fn workloads_equal_the_jit_bit_for_bit() {
    if !cc_or_skip() {
        return;
    }
    let names = common::workload_names();
    for largest in ["deepface.json", "yolo_local.json"] {
        assert!(names.iter().any(|n| n == largest), "{largest} missing");
    }
    for name in &names {
        let t = std::time::Instant::now();
        let model = Model::load_with(data("workloads").join(name), &LoadOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let params: usize = model.params().iter().map(|a| a.len()).sum();
        let mut shape = vec![2];
        shape.extend_from_slice(model.input_shape());
        let n: usize = shape.iter().product();
        let x = ArrayD::from_shape_vec(
            IxDyn(&shape),
            (0..n)
                .map(|i| ((i * 7919 % 1000) as f32) / 500.0 - 1.0)
                .collect(),
        )
        .expect("x");
        let model = Arc::new(model);
        let runs: &[(usize, usize)] = if params > 100_000_000 {
            &[(2, 3)]
        } else {
            &[(1, 2), (2, 3)]
        };
        check_runs(name, &model, &x, params > 10_000_000, runs);
        eprintln!(
            "aot: {name} ({params} parameters) bitwise equal to the JIT ({:.1} s)",
            t.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn weights_file_mode_and_its_validation() {
    if !cc_or_skip() {
        return;
    }
    let case = data("keras-golden/case_0001");
    let model = Model::load(case.join("model.h5")).expect("load");
    let x = io::read_npy(&case.join("x.npy")).expect("x");
    check_bitwise("case_0001 (weights file)", &model, &x, true);

    let dir = Scratch::new("wfile");
    let opts = AotOptions {
        batch: 2,
        weights: WeightsMode::File,
        ..AotOptions::default()
    };
    let obj = build_object(&dir, &model, &opts);
    let exe = link_driver(&dir, &obj, "cc");
    let good = std::fs::read(dir.path("model.lcw")).expect("weights");
    // The Rust reader round-trips the file.
    let params = aot::weights::read(&dir.path("model.lcw")).expect("read weights");
    assert_eq!(params.len(), model.params().len());
    for (p, a) in params.iter().zip(model.params()) {
        assert!(p
            .iter()
            .zip(a.iter())
            .all(|(u, v)| u.to_bits() == v.to_bits()));
    }
    let fails = |bytes: Option<&[u8]>, expect: &str| {
        let path = dir.path("bad.lcw");
        let _ = std::fs::remove_file(&path);
        if let Some(b) = bytes {
            std::fs::write(&path, b).expect("write bad");
        }
        std::fs::write(
            dir.path("x.f32"),
            vec![0u8; 4 * model.input_shape().iter().product::<usize>()],
        )
        .expect("x");
        let w = (!expect.contains("no embedded")).then_some(path.as_path());
        let out = driver_command(&dir, &exe, &[], 1, w)
            .output()
            .expect("run driver");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{expect}: {err}");
        assert!(err.contains(expect), "expected '{expect}' in: {err}");
        if bytes.is_some() || expect.contains("cannot open") {
            assert!(err.contains("bad.lcw: "), "the path is named: {err}");
        }
    };
    fails(None, "no embedded weights");
    fails(None, "cannot open the weights file");
    fails(Some(b"short"), "bad magic");
    let mut b = good.clone();
    b[0] = b'X';
    fails(Some(&b), "bad magic");
    let mut b = good.clone();
    b[8] = 2;
    fails(Some(&b), "version");
    let mut b = good.clone();
    b[16] ^= 1;
    fails(Some(&b), "do not match this model");
    fails(Some(&good[..good.len() - 4]), "truncated");
    let mut b = good.clone();
    b.push(0);
    fails(Some(&b), "unexpected data after the parameters");
    // Another model's weights file.
    let other = Model::load(data("keras-golden/case_0002/model.h5")).expect("load");
    let ow: Vec<Vec<f32>> = other
        .params()
        .iter()
        .map(|a| a.iter().copied().collect())
        .collect();
    fails(Some(&aot::weights::encode(&ow)), "do not match this model");

    // An embedded library also accepts a weights file (here with every weight halved).
    let dir2 = Scratch::new("override");
    let obj = build_object(&dir2, &model, &AotOptions::default());
    let exe = link_driver(&dir2, &obj, "cc");
    let halved: Vec<Vec<f32>> = model
        .params()
        .iter()
        .map(|a| a.iter().map(|v| v * 0.5).collect())
        .collect();
    let wpath = dir2.path("half.lcw");
    std::fs::write(&wpath, aot::weights::encode(&halved)).expect("write");
    let got = run_driver(&dir2, &exe, &[], &x, Some(&wpath));
    let mut m2 = model.clone();
    m2.set_params(model.params().iter().map(|a| a.mapv(|v| v * 0.5)).collect())
        .expect("set params");
    assert!(bits_equal(&got, &jit(&m2, 1, &x)), "weights file override");
}

fn lcjit_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lcjit"))
}

#[test]
fn static_and_shared_libraries_and_exported_symbols() {
    if !cc_or_skip() {
        return;
    }
    let case = data("keras-golden/case_0005");
    let model = Model::load(case.join("model.h5")).expect("load");
    let x = io::read_npy(&case.join("x.npy")).expect("x");
    let want = jit(&model, 2, &x);
    for ext in ["a", "so"] {
        let dir = Scratch::new(ext);
        let lib = dir.path(&format!("libmodel.{ext}"));
        run_ok(
            lcjit_bin()
                .arg("aot")
                .arg(case.join("model.h5"))
                .arg("--output")
                .arg(&lib)
                .arg("--header")
                .arg(dir.path("model.h"))
                .arg("--batch")
                .arg("2"),
            &format!("lcjit aot .{ext}"),
        );
        let exe = link_driver(&dir, &lib, "cc");
        let got = run_driver(&dir, &exe, &[], &x, None);
        assert!(bits_equal(&got, &want), ".{ext}: differs from the JIT");
        if ext == "so" && have("nm") {
            let out = run_ok(
                Command::new("nm").arg("-D").arg("--defined-only").arg(&lib),
                "nm -D",
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let funcs: Vec<&str> = text
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("T"))
                .filter_map(|l| l.split_whitespace().nth(2))
                .collect();
            assert!(!funcs.is_empty(), "{text}");
            assert!(
                funcs.iter().all(|s| s.starts_with("model_")),
                ".so exports more than model_*: {funcs:?}"
            );
        }
        if have("c++") {
            // The header is valid C++ too (extern "C").
            let cpp = dir.path("t.cpp");
            std::fs::write(
                &cpp,
                "#include \"model.h\"\nint main() { return (int)model_input_len() * 0; }\n",
            )
            .expect("cpp");
            run_ok(
                Command::new("c++")
                    .arg("-o")
                    .arg(dir.path("tcpp"))
                    .arg(&cpp)
                    .arg(&lib)
                    .arg(format!("-Wl,-rpath,{}", dir.0.display())),
                "c++ with the header",
            );
        }
    }
}

#[test]
fn only_name_symbols_are_global() {
    if !have("nm") {
        assert!(
            std::env::var("LCJIT_REQUIRE_CROSS").as_deref() != Ok("1"),
            "nm required"
        );
        eprintln!("note: no nm on PATH; symbol test skipped");
        return;
    }
    let model = Model::load(data("keras-golden/case_0003/model.h5")).expect("load");
    let dir = Scratch::new("nm");
    let opts = AotOptions {
        name: "net7".into(),
        ..AotOptions::default()
    };
    let art = aot::compile_object(&model, &opts).expect("compile");
    let obj = dir.path("net.o");
    aot::write_library(&art, &obj, &dir.path("net.h")).expect("write");
    let out = run_ok(
        Command::new("nm").arg("-g").arg("--defined-only").arg(&obj),
        "nm",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let syms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    let mut sorted = syms.clone();
    sorted.sort();
    let mut expect: Vec<String> = aot::EXPORTS.iter().map(|e| format!("net7_{e}")).collect();
    expect.sort();
    assert_eq!(sorted, expect, "global defined symbols:\n{text}");
    let header = std::fs::read_to_string(dir.path("net.h")).expect("header");
    for e in &expect {
        assert!(
            header.contains(&format!(" {e}(")) || header.contains(&format!("*{e}(")),
            "{e} undocumented"
        );
    }
    assert!(header.contains("#ifndef NET7_LCJIT_H") && header.contains("extern \"C\""));
}

#[test]
fn cli_errors_exit_2_and_name_the_problem() {
    let dir = Scratch::new("cli");
    let model = data("keras-golden/case_0000/model.h5");
    let h = dir.path("m.h");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--output".into(), dir.path("m.txt").display().to_string()],
            "m.txt",
        ),
        (
            vec![
                "--output".into(),
                dir.path("m.o").display().to_string(),
                "--name".into(),
                "9bad".into(),
            ],
            "--name",
        ),
        (
            vec![
                "--output".into(),
                dir.path("m.o").display().to_string(),
                "--batch".into(),
                "0".into(),
            ],
            "--batch",
        ),
        (
            vec![
                "--output".into(),
                dir.path("m.o").display().to_string(),
                "--target".into(),
                "nonsense-cpu".into(),
            ],
            "--target",
        ),
        (
            vec![
                "--output".into(),
                dir.path("m.o").display().to_string(),
                "--target".into(),
                "riscv32-unknown-linux-gnu".into(),
            ],
            "64-bit",
        ),
        (
            vec![
                "--output".into(),
                dir.path("m.o").display().to_string(),
                "--embed-weights".into(),
                "--weights-file".into(),
                dir.path("w").display().to_string(),
            ],
            "cannot be used with",
        ),
    ];
    for (args, expect) in cases {
        let out = lcjit_bin()
            .arg("aot")
            .arg(&model)
            .arg("--header")
            .arg(&h)
            .args(&args)
            .output()
            .expect("lcjit");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.starts_with("error: ") && err.contains(expect),
            "{args:?}: {err}"
        );
    }
    // A missing model file is named.
    let out = lcjit_bin()
        .arg("aot")
        .arg(dir.path("nope.h5"))
        .arg("--output")
        .arg(dir.path("m.o"))
        .arg("--header")
        .arg(&h)
        .output()
        .expect("lcjit");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope.h5"));
    // Nothing was written by the failing runs.
    assert!(!dir.path("m.o").exists() && !h.exists());
    // Success writes exactly the requested files (no temporaries left behind).
    run_ok(
        lcjit_bin()
            .arg("aot")
            .arg(&model)
            .arg("--output")
            .arg(dir.path("m.o"))
            .arg("--header")
            .arg(&h)
            .arg("--weights-file")
            .arg(dir.path("m.lcw")),
        "lcjit aot",
    );
    let mut files: Vec<String> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(files, ["m.h", "m.lcw", "m.o"]);
}

fn golden_ok(label: &str, got: &[f32], want: &ArrayD<f32>) -> f32 {
    assert_eq!(got.len(), want.len(), "{label}: length");
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want.iter())
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        err <= 1e-4 * scale,
        "{label}: max error {err} (scale {scale})"
    );
    err
}

#[test]
fn x86_64_levels_run_on_the_host() {
    if !cfg!(target_arch = "x86_64") || !cc_or_skip() {
        return;
    }
    let case = data("keras-golden/case_0007");
    let model = Model::load(case.join("model.h5")).expect("load");
    let x = io::read_npy(&case.join("x.npy")).expect("x");
    let y = io::read_npy(&case.join("y.npy")).expect("y");
    let mut levels = vec!["x86_64", "x86_64-v2"];
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        levels.push("x86_64-v3");
        if std::is_x86_feature_detected!("avx512f") {
            levels.push("x86_64-v4");
        }
    }
    for level in levels {
        let dir = Scratch::new("level");
        let opts = AotOptions {
            target: level.into(),
            ..AotOptions::default()
        };
        let obj = build_object(&dir, &model, &opts);
        let exe = link_driver(&dir, &obj, "cc");
        let got = run_driver(&dir, &exe, &[], &x, None);
        golden_ok(level, &got, &y);
    }
}

/// `AotOptions::wide` is resolved for the target, not the host: x86-64-v3 and v4
/// objects carry AVX2 and AVX-512 microkernels (symbols `NAME__k<i>w<j>`) under `auto`,
/// the baseline level none, and a tier the target lacks is refused.
#[test]
fn wide_tiers_follow_the_target() {
    use lcjit::loop_ir::micro::Tier;
    let model = Model::load(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/workloads/seed_lc2d.json"),
    )
    .expect("load");
    let object = |target: &str, wide: lcjit::WideTier| {
        let opts = AotOptions {
            target: target.into(),
            batch: 16,
            wide,
            ..AotOptions::default()
        };
        aot::compile_object(&model, &opts)
    };
    let microkernels = |bytes: &[u8]| {
        bytes
            .windows(10)
            .filter(|w| w.starts_with(b"model__k") && w[9] == b'w')
            .count()
    };
    for (target, some) in [("x86_64-v4", true), ("x86_64-v3", true), ("x86_64", false)] {
        let art = object(target, lcjit::WideTier::Auto).expect("object");
        assert_eq!(microkernels(&art.object) > 0, some, "{target}");
        let off = object(target, lcjit::WideTier::Off).expect("object");
        assert_eq!(microkernels(&off.object), 0, "{target} with wide off");
    }
    match object("x86_64", lcjit::WideTier::Only(Tier::Avx512)) {
        Err(lcjit::Error::Usage { detail }) => {
            assert!(detail.contains("--wide avx512"), "{detail}")
        }
        other => panic!("expected a usage error, got {:?}", other.map(|a| a.triple)),
    }
}

#[test]
fn aarch64_objects_under_qemu() {
    let tools = have("aarch64-linux-gnu-gcc") && have("qemu-aarch64");
    if !tools {
        assert!(
            std::env::var("LCJIT_REQUIRE_CROSS").as_deref() != Ok("1"),
            "LCJIT_REQUIRE_CROSS=1 but aarch64-linux-gnu-gcc or qemu-aarch64 is missing"
        );
        eprintln!("note: aarch64-linux-gnu-gcc or qemu-aarch64 missing; aarch64 aot test skipped");
        return;
    }
    let cases = golden_cases();
    // Every fourth case: ≥ 10 cases spread over the set.
    let sample: Vec<&PathBuf> = cases.iter().step_by(4).collect();
    assert!(sample.len() >= 10);
    let mut worst = 0f32;
    for case in &sample {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let model = Model::load(case.join("model.h5")).expect("load");
        let x = io::read_npy(&case.join("x.npy")).expect("x");
        let y = io::read_npy(&case.join("y.npy")).expect("y");
        for (batch, file) in [(1usize, false), (2, true)] {
            let dir = Scratch::new("arm");
            let opts = AotOptions {
                target: "aarch64-unknown-linux-gnu".into(),
                batch,
                weights: if file {
                    WeightsMode::File
                } else {
                    WeightsMode::Embedded
                },
                ..AotOptions::default()
            };
            let obj = build_object(&dir, &model, &opts);
            let exe = link_driver(&dir, &obj, "aarch64-linux-gnu-gcc");
            let w = file.then(|| dir.path("model.lcw"));
            let got = run_driver(
                &dir,
                &exe,
                &["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"],
                &x,
                w.as_deref(),
            );
            let scale = y.iter().fold(1f32, |m, v| m.max(v.abs()));
            worst =
                worst.max(golden_ok(&format!("{label} aarch64 batch {batch}"), &got, &y) / scale);
        }
    }
    eprintln!(
        "aot: {} golden cases on aarch64 under qemu within tolerance; max relative error {worst:e}",
        sample.len()
    );
}

/// The C gradient driver: `gdrv x.f32 dy.f32 batch dx.f32 dparams.f32 names.txt` → exit 0,
/// `dx`, the flat `dparams` and one `name<TAB>len` line per parameter; checks the error
/// paths (other batch, NULL pointer) and that a second call gives the same bits.
const GRAD_DRIVER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"
static float *readf(const char *p, size_t n) {
  float *v = malloc(n * 4 + 4);
  FILE *f = fopen(p, "rb");
  if (!v || !f || fread(v, 4, n, f) != n) { fprintf(stderr, "cannot read %s\n", p); exit(4); }
  fclose(f);
  return v;
}
static void writef(const char *p, const float *v, size_t n) {
  FILE *f = fopen(p, "wb");
  if (!f || fwrite(v, 4, n, f) != n) { fprintf(stderr, "cannot write %s\n", p); exit(4); }
  fclose(f);
}
int main(int argc, char **argv) {
  if (argc < 7) return 2;
  size_t n = strtoul(argv[3], NULL, 10);
  model_t *h = model_create(NULL, 1);
  if (!h) { fprintf(stderr, "create failed: %s\n", model_last_error(NULL)); return 3; }
  size_t il = model_input_len(), ol = model_output_len(), np = model_param_count();
  size_t total = 0;
  FILE *nf = fopen(argv[6], "w");
  if (!nf) return 4;
  for (size_t i = 0; i < np; i++) {
    if (!model_param_name(i)) { fprintf(stderr, "NULL name %zu\n", i); return 8; }
    fprintf(nf, "%s\t%zu\n", model_param_name(i), model_param_len(i));
    total += model_param_len(i);
  }
  fclose(nf);
  if (model_param_name(np) != NULL || model_param_len(np) != 0) {
    fprintf(stderr, "out-of-range parameter queries\n"); return 8;
  }
  float *x = readf(argv[1], n * il), *dy = readf(argv[2], n * ol);
  float *dx = malloc(n * il * 4 + 4), *dp = malloc(total * 4 + 4);
  float *dx2 = malloc(n * il * 4 + 4), *dp2 = malloc(total * 4 + 4);
  if (model_gradients(h, x, dy, n + 1, dx, dp) != -1 ||
      !strstr(model_last_error(NULL), "compiled batch")) {
    fprintf(stderr, "other batch accepted: %s\n", model_last_error(NULL)); return 9;
  }
  if (model_gradients(h, x, NULL, n, dx, dp) != -1 || model_gradients(NULL, x, dy, n, dx, dp) != -1) {
    fprintf(stderr, "NULL accepted\n"); return 9;
  }
  if (model_gradients(h, x, dy, n, dx, dp) != 0) {
    fprintf(stderr, "gradients failed: %s\n", model_last_error(h)); return 5;
  }
  /* A predict in between must not disturb the gradient program's buffers. */
  float *y = malloc(n * ol * 4 + 4);
  if (model_predict(h, x, n, y) != 0) return 5;
  if (model_gradients(h, x, dy, n, dx2, dp2) != 0) return 5;
  if (memcmp(dx, dx2, n * il * 4) != 0 || memcmp(dp, dp2, total * 4) != 0) {
    fprintf(stderr, "a second call differs\n"); return 10;
  }
  writef(argv[4], dx, n * il);
  writef(argv[5], dp, total);
  model_destroy(h);
  free(x); free(dy); free(dx); free(dp); free(dx2); free(dp2); free(y);
  return 0;
}
"#;

/// Golden cases with Keras gradients, every `len / 12`-th (at least 10 of them).
fn gradient_sample() -> Vec<PathBuf> {
    let all: Vec<PathBuf> = golden_cases()
        .into_iter()
        .filter(|c| c.join("grads.npz").exists() && c.join("dy.npy").exists())
        .collect();
    let step = (all.len() / 12).max(1);
    let v: Vec<PathBuf> = all.into_iter().step_by(step).collect();
    assert!(v.len() >= 10, "too few golden cases with gradients");
    v
}

/// Builds `case`'s library with gradients (at the batch of `x.npy`; through the CLI as
/// a `.a` when `cli`), runs the gradient driver and checks it against the JIT (bitwise)
/// and Keras (golden tolerance). Returns the number of gradients compared.
fn check_gradients(case: &Path, cli: bool) -> usize {
    let label = case.file_name().unwrap().to_string_lossy().to_string();
    let model = Model::load(case.join("model.h5")).expect("load");
    let x = io::read_npy(&case.join("x.npy")).expect("x");
    let dy = io::read_npy(&case.join("dy.npy")).expect("dy");
    let batch = x.shape()[0];
    let dir = Scratch::new("grad");
    let lib = if cli {
        let lib = dir.path("libmodel.a");
        run_ok(
            lcjit_bin()
                .arg("aot")
                .arg(case.join("model.h5"))
                .arg("--gradients")
                .arg("--output")
                .arg(&lib)
                .arg("--header")
                .arg(dir.path("model.h"))
                .arg("--batch")
                .arg(batch.to_string()),
            &format!("{label}: lcjit aot --gradients"),
        );
        lib
    } else {
        let opts = AotOptions {
            batch,
            gradients: true,
            ..AotOptions::default()
        };
        build_object(&dir, &model, &opts)
    };
    let header = std::fs::read_to_string(dir.path("model.h")).expect("header");
    assert!(header.contains("int model_gradients(model_t *h"), "{label}");
    let exe = link_c(&dir, "gdrv", GRAD_DRIVER_C, &lib, "cc");
    let (xp, dyp, dxp, dpp, np) = (
        dir.path("x.f32"),
        dir.path("dy.f32"),
        dir.path("dx.f32"),
        dir.path("dp.f32"),
        dir.path("names.txt"),
    );
    write_f32(&xp, x.iter().copied());
    write_f32(&dyp, dy.iter().copied());
    let rows = batch.to_string();
    let args = [&xp, &dyp, Path::new(&rows), &dxp, &dpp, &np].map(|p| p.as_os_str());
    run_ok(
        &mut command(&[], &exe, &args),
        &format!("{label}: gradient driver"),
    );
    let dx = read_f32(&dxp);
    let dp = read_f32(&dpp);
    let names = std::fs::read_to_string(&np).expect("names");

    let cm = jit_model(&Arc::new(model.clone()), batch);
    let (jdx, jdp) = cm
        .gradients(std::slice::from_ref(&x), &dy)
        .unwrap_or_else(|e| panic!("{label}: jit gradients: {e}"));
    assert!(
        bits_equal(&dx, &jdx[0]),
        "{label}: dx differs from the JIT's"
    );
    let graph = model.graph();
    let lines: Vec<&str> = names.lines().collect();
    assert_eq!(lines.len(), graph.params.len(), "{label}: param_count");
    let refs = io::read_npz(&case.join("grads.npz")).expect("grads.npz");
    let refs: std::collections::BTreeMap<String, ArrayD<f32>> = refs
        .into_iter()
        .map(|(k, v)| (k.trim_end_matches(".npy").to_string(), v))
        .collect();
    let keras_ok = |key: &str, g: &ArrayD<f32>| {
        let r = refs
            .get(key)
            .unwrap_or_else(|| panic!("{label}: grads.npz has no '{key}'"));
        assert_eq!(g.shape(), r.shape(), "{label} {key}: shape");
        let scale = r.iter().fold(1f32, |m, v| m.max(v.abs()));
        let err = g
            .iter()
            .zip(r.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            err <= 1e-4 * scale,
            "{label} {key}: max error {err} from Keras (scale {scale})"
        );
    };
    let dxa = ArrayD::from_shape_vec(IxDyn(x.shape()), dx).expect("dx");
    keras_ok("x", &dxa);
    let mut compared = 1;
    let mut off = 0;
    for (pid, (spec, line)) in graph.params.iter().zip(&lines).enumerate() {
        let key = format!("{}/{}", graph.nodes[spec.node].name, spec.name);
        let (name, len) = line.rsplit_once('\t').expect("name line");
        assert_eq!(name, key, "{label}: param_name({pid})");
        let len: usize = len.parse().expect("len");
        assert_eq!(len, spec.len(), "{label}: param_len({pid})");
        let g = &dp[off..off + len];
        off += len;
        assert!(
            bits_equal(g, &jdp[pid]),
            "{label} {key}: gradient differs from the JIT's"
        );
        if !spec.trainable {
            assert!(g.iter().all(|v| *v == 0.0), "{label} {key}: not zeros");
            continue;
        }
        let canon = ArrayD::from_shape_vec(IxDyn(&spec.shape), g.to_vec()).expect("shape");
        let keras = lcjit::graph::layout::canonical_to_keras(graph, pid, &canon)
            .unwrap_or_else(|e| panic!("{label} {key}: {e}"));
        keras_ok(&key, &keras);
        compared += 1;
    }
    assert_eq!(off, dp.len(), "{label}: dparams length");
    compared
}

#[test]
fn gradients_equal_the_jit_bit_for_bit_and_keras() {
    if !cc_or_skip() {
        return;
    }
    let cases = gradient_sample();
    let mut n = 0;
    for (i, case) in cases.iter().enumerate() {
        n += check_gradients(case, i == 0);
    }
    eprintln!(
        "aot: {} golden cases, {n} gradients bitwise equal to the JIT and within tolerance of Keras",
        cases.len()
    );

    // Exports: the gradient entry point only when asked for.
    let model = Model::load(cases[0].join("model.h5")).expect("load");
    for gradients in [false, true] {
        let opts = AotOptions {
            gradients,
            ..AotOptions::default()
        };
        let art = aot::compile_object(&model, &opts).expect("compile");
        let want = aot::EXPORTS.len() + usize::from(gradients);
        assert_eq!(art.exports.len(), want);
        assert_eq!(
            art.exports.contains(&"model_gradients".to_string()),
            gradients
        );
        assert_eq!(art.header.contains("model_gradients("), gradients);
        assert!(art.header.contains("model_param_name("));
    }
}
