//! The hostile corpus: writes every file of it into a directory, deterministically, and
//! returns the cases that run `lcjit` over them, each with its expected exit code, the
//! error variant its message belongs to, and a fragment the one-line message must hold.
//!
//! Argument conventions: `@name` is a file of the corpus directory, `%name` a path in
//! the case's scratch directory (for outputs). Files git cannot hold (symbolic links to
//! devices, FIFOs, archives of 150,000 entries) are made here too, at test time.

use super::images::*;
use super::{Case, Expect};
use serde_json::{json, Value};
use std::fs;
use std::path::Path;

/// The small valid model every file case runs: 4 inputs, a Dense layer of 3 units.
pub fn dense_json() -> Value {
    seq(
        &[4],
        &[json!({"class_name": "Dense", "config": {"name": "d", "units": 3}})],
    )
}

/// A Sequential model over an input of per-sample shape `input`.
pub fn seq(input: &[u64], layers: &[Value]) -> Value {
    let mut shape = vec![Value::Null];
    shape.extend(input.iter().map(|&d| json!(d)));
    let mut all = vec![
        json!({"class_name": "InputLayer", "config": {"name": "in", "batch_input_shape": shape}}),
    ];
    all.extend_from_slice(layers);
    json!({"class_name": "Sequential", "keras_version": "2.21.0", "config": {"name": "s", "layers": all}})
}

/// Writes `bytes` to `dir/name`.
fn put(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(dir.join(name), bytes).expect("writing a corpus file");
}

/// `lcjit run` of the dense model on input file `x` (a corpus name).
fn run_input(x: &str) -> Vec<String> {
    args(&["run", "@dense.json", "--input", x, "--output", "%y.npy"])
}

/// `lcjit run` of model file `m` on the good input.
fn run_model(m: &str) -> Vec<String> {
    args(&["run", m, "--input", "@x.npy", "--output", "%y.npy"])
}

/// `lcjit run` of the dense model with weights file `w`.
fn run_weights(w: &str) -> Vec<String> {
    args(&[
        "run",
        "@dense.json",
        "--weights",
        w,
        "--input",
        "@x.npy",
        "--output",
        "%y.npy",
    ])
}

pub fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn case(name: &str, args: Vec<String>, expect: Expect) -> Case {
    Case {
        name: name.to_owned(),
        args,
        expect,
    }
}

/// Bad input: exit 2, a message of `variant` holding `fragment`.
pub fn bad(variant: &str, fragment: &str) -> Expect {
    Expect::Refused {
        variant: variant.to_owned(),
        fragment: fragment.to_owned(),
    }
}

/// Valid (if unusual) input: exit 0.
pub fn ok() -> Expect {
    Expect::Success
}

/// Writes the whole corpus into `dir` and returns its cases.
pub fn generate(dir: &Path) -> Vec<Case> {
    let mut cases = Vec::new();
    base_files(dir);
    npy_cases(dir, &mut cases);
    npy_other_commands(&mut cases);
    special_files(dir, &mut cases);
    super::gen_archives::npz_cases(dir, &mut cases);
    super::gen_archives::keras_cases(dir, &mut cases);
    super::gen_h5::h5_cases(dir, &mut cases);
    super::gen_models::config_cases(dir, &mut cases);
    super::gen_models::cli_cases(&mut cases);
    cases
}

/// The valid files the cases share.
fn base_files(dir: &Path) {
    put(dir, "dense.json", dense_json().to_string());
    let x: Vec<f32> = (0..8).map(|i| i as f32 / 8.0).collect();
    put(dir, "x.npy", npy_f32(&[2, 4], &x));
    put(dir, "y.npy", npy_f32(&[2, 3], &[0.5; 6]));
    put(dir, "dy.npy", npy_f32(&[2, 3], &[1.0; 6]));
    let m = lcjit::Model::from_json_str(
        &dense_json().to_string(),
        "dense.json",
        &lcjit::LoadOptions::default(),
    )
    .expect("the dense model loads");
    m.save(&dir.join("dense.h5")).expect("save h5");
    m.save(&dir.join("dense.keras")).expect("save keras");
    m.save_weights(&dir.join("dense_w.npz")).expect("save npz");
    m.save_weights(&dir.join("dense_w.h5"))
        .expect("save weights h5");
}

/// `.npy` inputs: headers that lie, types lcjit does not take, truncations.
fn npy_cases(dir: &Path, cases: &mut Vec<Case>) {
    let f4 = |shape: &str, data: &[u8]| npy("<f4", false, shape, data);
    let refused: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "zero_beside_huge",
            f4("(0, 1099511627776, 1099511627776)", &[]),
            bad("Format", "too large"),
        ),
        (
            "huge_beside_zero",
            f4("(4611686018427387904, 0)", &[]),
            bad("Format", "too large"),
        ),
        (
            "zero_beside_max",
            f4("(0, 9223372036854775807)", &[]),
            bad("Format", "too large"),
        ),
        (
            "zero_three_huge",
            f4("(0, 4294967296, 4294967296, 4294967296)", &[]),
            bad("Format", "too large"),
        ),
        (
            "zero_samples",
            f4("(0, 4)", &[]),
            bad("Input", "expects shape"),
        ),
        (
            "huge_1d_no_data",
            f4("(1099511627776,)", &[]),
            bad("Format", "truncated data"),
        ),
        (
            "huge_rows_no_data",
            f4("(1000000000000, 4)", &[]),
            bad("Format", "truncated data"),
        ),
        (
            "product_2_64",
            f4("(2147483648, 2147483648, 4)", &[]),
            bad("Format", "too large"),
        ),
        (
            "product_wraps_to_small",
            f4("(4611686018427387905, 4)", &[0; 16]),
            bad("Format", "too large"),
        ),
        (
            "truncated_data",
            f4("(8, 4)", &[0; 16]),
            bad("Format", "truncated data"),
        ),
        (
            "extra_bytes",
            f4("(2, 4)", &[0; 40]),
            bad("Format", "extra bytes"),
        ),
        (
            "negative_dim",
            f4("(-1, 4)", &[0; 16]),
            bad("Format", "header"),
        ),
        (
            "float_dim",
            f4("(2.5, 4)", &[0; 40]),
            bad("Format", "header"),
        ),
        ("shape_not_tuple", f4("7", &[0; 4]), bad("Format", "header")),
        (
            "shape_string",
            f4("'big'", &[0; 4]),
            bad("Format", "header"),
        ),
        (
            "complex",
            npy("<c8", false, "(2, 4)", &[0; 64]),
            bad("Format", "unsupported element type"),
        ),
        (
            "unicode",
            npy("<U3", false, "(2, 4)", &[0; 96]),
            bad("Format", "unsupported element type"),
        ),
        (
            "object",
            npy("|O", false, "(2, 4)", &[0; 64]),
            bad("Format", "unsupported element type"),
        ),
        (
            "half",
            npy("<f2", false, "(2, 4)", &[0; 16]),
            bad("Format", "unsupported element type"),
        ),
        (
            "datetime",
            npy("<M8[s]", false, "(2, 4)", &[0; 64]),
            bad("Format", "element type"),
        ),
        (
            "wrong_rank",
            npy_f32(&[8], &[0.0; 8]),
            bad("Input", "expects shape"),
        ),
        (
            "wrong_width",
            npy_f32(&[2, 5], &[0.0; 10]),
            bad("Input", "expects shape"),
        ),
        (
            "rank_64",
            f4(&format!("({})", vec!["1"; 64].join(", ")), &[0; 4]),
            bad("Input", "expects shape"),
        ),
        (
            "bool_bad_byte",
            npy("|b1", false, "(2, 4)", &[7; 8]),
            bad("Format", "npy"),
        ),
    ];
    for (name, bytes, expect) in refused {
        let file = format!("npy_{name}.npy");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npy_{name}"),
            run_input(&format!("@{file}")),
            expect,
        ));
    }
    let raw: Vec<(&str, Vec<u8>)> = vec![
        ("missing_descr", npy_raw("{'fortran_order': False, 'shape': (2, 4), }", &[0; 32])),
        ("missing_shape", npy_raw("{'descr': '<f4', 'fortran_order': False, }", &[0; 32])),
        ("not_a_dict", npy_raw("[1, 2, 3]", &[0; 32])),
        ("garbage_dict", npy_raw("{{{{{{{{", &[0; 32])),
        ("deep_nesting", npy_raw(&format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}2{}, }}", "(".repeat(20000), ",)".repeat(20000)), &[])),
        ("structured", npy_raw("{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (2, 2), }", &[0; 32])),
        // Found by fuzzing: brackets that never close make ndarray-npy's parser
        // backtrack exponentially in their depth (this one would run for hours).
        ("unclosed_nesting_25", npy_raw(&format!("{{{}", "('<f4',{'a':".repeat(12)), &[0; 8])),
    ];
    for (name, bytes) in raw {
        let file = format!("npy_{name}.npy");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npy_{name}"),
            run_input(&format!("@{file}")),
            bad("Format", "not a valid npy file"),
        ));
    }
    // Headers broken at the byte level.
    let good = npy_f32(&[2, 4], &[1.0; 8]);
    let mut bad_magic = good.clone();
    bad_magic[1] = b'X';
    let mut version9 = good.clone();
    version9[6] = 9;
    let mut v2_huge = b"\x93NUMPY\x02\x00".to_vec();
    v2_huge.extend_from_slice(&u32::MAX.to_le_bytes());
    v2_huge.extend_from_slice(b"{'descr': '<f4'");
    let mut v1_long = good[..8].to_vec();
    v1_long.extend_from_slice(&u16::MAX.to_le_bytes());
    v1_long.extend_from_slice(&good[10..]);
    for (name, bytes) in [
        ("bad_magic", bad_magic),
        ("version_9", version9),
        ("v2_header_4gib", v2_huge),
        ("v1_header_too_long", v1_long),
        ("text", b"hello, this is not numpy at all".to_vec()),
    ] {
        let file = format!("npy_{name}.npy");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npy_{name}"),
            run_input(&format!("@{file}")),
            bad("Format", "not a valid npy file"),
        ));
    }
    for cut in [0usize, 1, 6, 8, 9, 10, 40, 64, 80, 90, 95] {
        let file = format!("npy_cut_{cut}.npy");
        put(dir, &file, &good[..cut.min(good.len() - 1)]);
        cases.push(case(
            &format!("npy_cut_{cut}"),
            run_input(&format!("@{file}")),
            bad("Format", "not a valid npy file"),
        ));
    }
    // Valid but unusual: every one runs.
    let mut be = Vec::new();
    for i in 0..8 {
        be.extend_from_slice(&(i as f32).to_be_bytes());
    }
    let fortran_data: Vec<u8> = (0..8).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let nan_inf: Vec<u8> = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MIN,
        f32::MAX,
        1e-45,
        0.0,
    ]
    .iter()
    .flat_map(|v| v.to_le_bytes())
    .collect();
    let mut v2 = b"\x93NUMPY\x02\x00".to_vec();
    let dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }";
    let mut padded = dict.to_owned();
    while !(12 + padded.len() + 1).is_multiple_of(64) {
        padded.push(' ');
    }
    padded.push('\n');
    v2.extend_from_slice(&(padded.len() as u32).to_le_bytes());
    v2.extend_from_slice(padded.as_bytes());
    v2.extend_from_slice(&[0; 32]);
    let valid: Vec<(&str, Vec<u8>)> = vec![
        ("big_endian", npy(">f4", false, "(2, 4)", &be)),
        ("fortran", npy("<f4", true, "(2, 4)", &fortran_data)),
        ("f64", npy("<f8", false, "(2, 4)", &[0; 64])),
        ("i8", npy("|i1", false, "(2, 4)", &[255; 8])),
        ("u64", npy("<u8", false, "(2, 4)", &[255; 64])),
        (
            "bool",
            npy("|b1", false, "(2, 4)", &[1, 0, 1, 0, 1, 0, 1, 0]),
        ),
        ("nan_inf", npy("<f4", false, "(2, 4)", &nan_inf)),
        ("version_2", v2),
        ("one_sample", npy_f32(&[1, 4], &[1.0; 4])),
        ("many_samples", npy_f32(&[1000, 4], &[0.25; 4000])),
    ];
    for (name, bytes) in valid {
        let file = format!("npy_ok_{name}.npy");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("npy_ok_{name}"),
            run_input(&format!("@{file}")),
            ok(),
        ));
    }
}

/// The same hostile inputs through the commands that read `.npy` whole.
fn npy_other_commands(cases: &mut Vec<Case>) {
    let files = [
        ("zero_beside_huge", bad("Format", "too large")),
        ("huge_1d_no_data", bad("Format", "truncated data")),
        ("truncated_data", bad("Format", "truncated data")),
        ("deep_nesting", bad("Format", "not a valid npy file")),
    ];
    for (name, expect) in files {
        let x = format!("@npy_{name}.npy");
        let fit = args(&[
            "fit",
            "@dense.json",
            "--x",
            &x,
            "--y",
            "@y.npy",
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
            "--quiet",
        ]);
        let fit_y = args(&[
            "fit",
            "@dense.json",
            "--x",
            "@x.npy",
            "--y",
            &x,
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
            "--quiet",
        ]);
        let eval = args(&[
            "evaluate",
            "@dense.json",
            "--x",
            &x,
            "--y",
            "@y.npy",
            "--loss",
            "mse",
        ]);
        let grad = args(&[
            "grad",
            "@dense.json",
            "--input",
            &x,
            "--cotangent",
            "@dy.npy",
            "--output",
            "%g.npz",
        ]);
        cases.push(case(&format!("fit_x_{name}"), fit, expect.clone()));
        cases.push(case(&format!("fit_y_{name}"), fit_y, expect.clone()));
        cases.push(case(&format!("evaluate_x_{name}"), eval, expect.clone()));
        cases.push(case(&format!("grad_x_{name}"), grad, expect));
    }
}

/// Paths that are not regular files: devices, FIFOs, directories, dangling links.
fn special_files(dir: &Path, cases: &mut Vec<Case>) {
    use std::os::unix::fs::symlink;
    let link = |target: &str, name: &str| {
        let _ = fs::remove_file(dir.join(name));
        symlink(target, dir.join(name)).expect("symlink");
    };
    let fifo = |name: &str| {
        let p = dir.join(name);
        let _ = fs::remove_file(&p);
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: mkfifo reads the NUL-terminated path and nothing else.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo {}", p.display());
    };
    let not_regular = || bad("Io", "not a regular file");
    for ext in ["npy", "npz", "h5", "keras", "json"] {
        link("/dev/zero", &format!("zero.{ext}"));
        link("/dev/urandom", &format!("urandom.{ext}"));
        fifo(&format!("fifo.{ext}"));
        let d = dir.join(format!("dir.{ext}"));
        fs::create_dir_all(&d).expect("dir");
        link(&format!("nowhere.{ext}"), &format!("dangling.{ext}"));
        link(&format!("loop_b.{ext}"), &format!("loop_a.{ext}"));
        link(&format!("loop_a.{ext}"), &format!("loop_b.{ext}"));
    }
    for kind in ["zero", "urandom", "fifo", "dir"] {
        cases.push(case(
            &format!("{kind}_as_input_npy"),
            run_input(&format!("@{kind}.npy")),
            not_regular(),
        ));
        cases.push(case(
            &format!("{kind}_as_weights_npz"),
            run_weights(&format!("@{kind}.npz")),
            not_regular(),
        ));
        cases.push(case(
            &format!("{kind}_as_model_h5"),
            run_model(&format!("@{kind}.h5")),
            not_regular(),
        ));
        cases.push(case(
            &format!("{kind}_as_model_keras"),
            run_model(&format!("@{kind}.keras")),
            not_regular(),
        ));
        cases.push(case(
            &format!("{kind}_as_model_json"),
            args(&["summary", &format!("@{kind}.json")]),
            not_regular(),
        ));
    }
    cases.push(case(
        "zero_as_fit_x",
        args(&[
            "fit",
            "@dense.json",
            "--x",
            "@zero.npy",
            "--y",
            "@y.npy",
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
        ]),
        not_regular(),
    ));
    cases.push(case(
        "zero_as_weights_h5",
        run_weights("@zero.h5"),
        not_regular(),
    ));
    for kind in ["dangling", "loop_a"] {
        cases.push(case(
            &format!("{kind}_as_input_npy"),
            run_input(&format!("@{kind}.npy")),
            bad("Io", ""),
        ));
        cases.push(case(
            &format!("{kind}_as_model_h5"),
            run_model(&format!("@{kind}.h5")),
            bad("Io", ""),
        ));
    }
    cases.push(case(
        "missing_input",
        run_input("@no_such_file.npy"),
        bad("Io", "No such file"),
    ));
    // A valid input over a small budget: refused from its size, before it is read.
    put(dir, "y1000.npy", npy_f32(&[1000, 3], &[0.0; 3000]));
    let fit_many = |budget: &str| {
        args(&[
            "--memory-budget",
            budget,
            "fit",
            "@dense.json",
            "--x",
            "@npy_ok_many_samples.npy",
            "--y",
            "@y1000.npy",
            "--optimizer",
            "sgd",
            "--loss",
            "mse",
            "--quiet",
        ])
    };
    cases.push(case(
        "fit_x_over_budget",
        fit_many("20K"),
        bad("FileBudget", "npy_ok_many_samples.npy"),
    ));
    cases.push(case("fit_under_budget", fit_many("1M"), ok()));
}
