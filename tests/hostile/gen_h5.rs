//! Hostile Keras `.h5` files: datasets declared huge with nothing stored, a userblock
//! (valid, and must load), soft links where datasets and groups should be, broken
//! attributes, truncations.

use super::gen::{args, bad, dense_json, ok};
use super::Case;
use hdf5_pure::{AttrValue, FileBuilder};
use std::fs;
use std::path::Path;

fn put(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(dir.join(name), bytes).expect("writing a corpus file");
}

fn run_model(m: &str) -> Vec<String> {
    args(&["run", m, "--input", "@x.npy", "--output", "%y.npy"])
}

fn case(name: &str, args: Vec<String>, expect: super::Expect) -> Case {
    Case {
        name: name.to_owned(),
        args,
        expect,
    }
}

/// How the kernel dataset of [`keras_h5`] is written.
enum Kernel {
    /// `(4, 3)` floats, as Keras writes it.
    Good,
    /// `(rows, 3)` zeros, chunked: more than a small budget admits.
    Rows(u64),
    /// Strings instead of numbers.
    Strings,
    /// `(3, 4)`: the wrong shape.
    Transposed,
    /// Absent although `weight_names` lists it.
    Missing,
}

/// A full-model Keras `.h5` of the dense model, written with hdf5-pure.
fn keras_h5(userblock: u64, kernel: Kernel, config: &str, layer_names: AttrValue) -> Vec<u8> {
    let mut fb = FileBuilder::new();
    if userblock > 0 {
        fb.with_userblock(userblock);
    }
    let text = |s: &str| AttrValue::VarLenString(s.to_owned());
    fb.set_attr("model_config", text(config));
    fb.set_attr("keras_version", text("2.21.0"));
    fb.set_attr("backend", text("tensorflow"));
    let mut mw = fb.create_group("model_weights");
    mw.set_attr("layer_names", layer_names);
    let mut g = mw.create_group("d");
    g.set_attr(
        "weight_names",
        AttrValue::VarLenStringArray(vec!["d/kernel:0".into(), "d/bias:0".into()]),
    );
    let mut scope = g.create_group("d");
    match kernel {
        Kernel::Good => {
            scope
                .create_dataset("kernel:0")
                .with_f32_data(&[0.5; 12])
                .with_shape(&[4, 3]);
        }
        Kernel::Transposed => {
            scope
                .create_dataset("kernel:0")
                .with_f32_data(&[0.5; 12])
                .with_shape(&[3, 4]);
        }
        Kernel::Rows(rows) => {
            scope
                .create_dataset("kernel:0")
                .with_f32_data(&vec![0.0; rows as usize * 3])
                .with_shape(&[rows, 3])
                .with_chunks(&[64, 3]);
        }
        Kernel::Strings => {
            scope
                .create_dataset("kernel:0")
                .with_vlen_strings(&["a", "b"]);
        }
        Kernel::Missing => {}
    }
    scope
        .create_dataset("bias:0")
        .with_f32_data(&[0.0; 3])
        .with_shape(&[3]);
    g.add_group(scope.finish());
    mw.add_group(g.finish());
    fb.add_group(mw.finish());
    fb.finish().expect("building an HDF5 image")
}

fn names(v: &[&str]) -> AttrValue {
    AttrValue::VarLenStringArray(v.iter().map(|s| s.to_string()).collect())
}

pub fn h5_cases(dir: &Path, cases: &mut Vec<Case>) {
    let config = dense_json().to_string();
    let d = || names(&["d"]);
    let list: Vec<(&str, Vec<u8>, super::Expect)> = vec![
        ("hdf5pure_valid", keras_h5(0, Kernel::Good, &config, d()), ok()),
        ("userblock_512", keras_h5(512, Kernel::Good, &config, d()), ok()),
        ("userblock_4096", keras_h5(4096, Kernel::Good, &config, d()), ok()),
        ("chunked_4000_rows", keras_h5(0, Kernel::Rows(4000), &config, d()), bad("Weights", "expected shape")),
        ("kernel_strings", keras_h5(0, Kernel::Strings, &config, d()), bad("Format", "not numeric")),
        ("kernel_transposed", keras_h5(0, Kernel::Transposed, &config, d()), bad("Weights", "expected shape")),
        ("kernel_missing", keras_h5(0, Kernel::Missing, &config, d()), bad("Format", "kernel:0")),
        ("layer_names_numbers", keras_h5(0, Kernel::Good, &config, AttrValue::I64Array(vec![1, 2])), bad("Format", "layer_names")),
        ("layer_names_unknown_group", keras_h5(0, Kernel::Good, &config, names(&["d", "ghost"])), bad("Format", "ghost")),
        ("config_not_json", keras_h5(0, Kernel::Good, "{not json", d()), bad("Format", "model_config")),
        ("config_dense_2_40", keras_h5(0, Kernel::Good, &super::gen::seq(&[4], &[serde_json::json!({"class_name": "Dense", "config": {"name": "d", "units": 1u64 << 40}})]).to_string(), d()), bad("LayerConfig", "absurdly large")),
    ];
    for (name, bytes, expect) in list {
        let file = format!("h5_{name}.h5");
        put(dir, &file, bytes);
        cases.push(case(
            &format!("h5_{name}"),
            run_model(&format!("@{file}")),
            expect,
        ));
    }
    // The dataset is judged by its declared size against what the file left of the
    // budget, before it is read.
    let small = args(&[
        "--memory-budget",
        "80K",
        "run",
        "@h5_chunked_4000_rows.h5",
        "--input",
        "@x.npy",
        "--output",
        "%y.npy",
    ]);
    cases.push(case(
        "h5_dataset_over_budget",
        small,
        bad("FileBudget", "dataset 'model_weights/d/d/kernel:0'"),
    ));
    cases.push(case("h5_saved_valid", run_model("@dense.h5"), ok()));
    cases.push(case(
        "h5_weights_only_as_model",
        run_model("@dense_w.h5"),
        bad("Format", "model_config"),
    ));
    cases.push(case(
        "h5_weights_only_valid",
        args(&[
            "run",
            "@dense.json",
            "--weights",
            "@dense_w.h5",
            "--input",
            "@x.npy",
            "--output",
            "%y.npy",
        ]),
        ok(),
    ));
    let good = fs::read(dir.join("dense.h5")).expect("dense.h5");
    for cut in [0usize, 8, 100, 500, 1000, 2000] {
        let file = format!("h5_cut_{cut}.h5");
        put(dir, &file, &good[..cut.min(good.len() - 1)]);
        cases.push(case(
            &format!("h5_cut_{cut}"),
            run_model(&format!("@{file}")),
            bad("Format", "HDF5"),
        ));
    }
    put(dir, "h5_text.h5", b"this is not an HDF5 file".repeat(40));
    cases.push(case(
        "h5_text",
        run_model("@h5_text.h5"),
        bad("Format", "HDF5"),
    ));
    soft_links(dir, cases);
}

/// Soft links in an h5py-written (old-style, symbol-table) Keras file: where a dataset
/// is (pointing at its sibling, or at itself) and where a layer group is.
fn soft_links(dir: &Path, cases: &mut Vec<Case>) {
    let golden =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden/case_0001/model.h5");
    let bytes = fs::read(golden).expect("golden model.h5");
    // Symbol-table nodes: "SNOD", version, reserved, count, then 40-byte entries (name
    // offset, object header address, cache type, reserved, scratch).
    let snods: Vec<usize> = (0..bytes.len().saturating_sub(4))
        .filter(|&i| &bytes[i..i + 4] == b"SNOD")
        .collect();
    let entry = |b: &[u8], node: usize, k: usize| -> (usize, u64, u32) {
        let at = node + 8 + 40 * k;
        let off = u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let cache = u32::from_le_bytes(b[at + 16..at + 20].try_into().expect("4"));
        (at, off, cache)
    };
    let soften = |b: &mut Vec<u8>, at: usize, target_name_offset: u64| {
        b[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        b[at + 16..at + 20].copy_from_slice(&2u32.to_le_bytes());
        b[at + 24..at + 28].copy_from_slice(&(target_name_offset as u32).to_le_bytes());
    };
    // A node with two datasets (cache type 0): link the first to the second, and to itself.
    let pair = snods.iter().copied().find(|&n| {
        u16::from_le_bytes([bytes[n + 6], bytes[n + 7]]) == 2 && entry(&bytes, n, 0).2 == 0
    });
    let group = snods.iter().copied().find(|&n| entry(&bytes, n, 0).2 == 1);
    let mut variants: Vec<(&str, Vec<u8>)> = Vec::new();
    if let Some(n) = pair {
        let (at0, _, _) = entry(&bytes, n, 0);
        let (_, off1, _) = entry(&bytes, n, 1);
        let mut b = bytes.clone();
        soften(&mut b, at0, off1);
        variants.push(("soft_link_to_sibling", b));
        let (_, off0, _) = entry(&bytes, n, 0);
        let mut b = bytes.clone();
        soften(&mut b, at0, off0);
        variants.push(("soft_link_to_itself", b));
    }
    if let Some(n) = group {
        let (at, off, _) = entry(&bytes, n, 0);
        let mut b = bytes.clone();
        soften(&mut b, at, off);
        variants.push(("soft_link_group", b));
    }
    assert!(variants.len() == 3, "the golden file's layout changed");
    for (name, b) in variants {
        let file = format!("h5_{name}.h5");
        put(dir, &file, b);
        cases.push(case(
            &format!("h5_{name}"),
            args(&["summary", &format!("@{file}")]),
            bad("Format", "link"),
        ));
    }
    // An undefined address where a dataset's object header should be.
    let mut b = bytes.clone();
    if let Some(n) = pair {
        let (at, _, _) = entry(&bytes, n, 0);
        b[at + 8..at + 16].copy_from_slice(&u64::MAX.to_le_bytes());
    }
    put(dir, "h5_undefined_address.h5", b);
    cases.push(case(
        "h5_undefined_address",
        args(&["summary", "@h5_undefined_address.h5"]),
        bad("Format", "HDF5"),
    ));
}
